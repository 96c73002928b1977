//! Weight gradient: `dW_g = Σ_n dy[n, g] · im2col(x[n, g])ᵀ`, `db[k] = Σ_n Σ_pixels dy[n, k]`.
//!
//! Work is split by a fixed partition that depends only on the shape, never on the
//! thread count:
//!
//! - images into at most [`MAX_IMAGE_CHUNKS`] contiguous chunks; each chunk accumulates
//!   its own partial `dW` (GEMM with beta = 1 over its images and pixel tiles, in order);
//! - for small batches of ungrouped layers, also the input channels into blocks, so a
//!   single image still feeds several threads; each block owns a column range of `dW`
//!   and im2cols only its own channels.
//!
//! The partials are then summed in chunk order. So every result is bit-identical whatever
//! rayon pool runs the call.
//!
//! On the blocked GEMM with moderate padding, each task copies its channels of an image
//! into padded planes and one GEMM per image and group adds `dy · colᵀ` into its partial
//! `dW`, packing `colᵀ` straight from the planes ([`PaddedIm2colTB`]): no column matrix.
//! Otherwise, per pixel tile, im2col fills a column tile and one GEMM adds `col · dyᵀ`
//! into the partial `dWᵀ`. Either way both operands run along the pixels, the reduction:
//! the blocked GEMM packs them with in-register block transposes
//! ([`blocked::transpose`](crate::blocked::transpose)).
//!
//! Layers with few taps (`C·R·S ≤ 32`, stride 1) skip all this: their gradient is a few
//! hundred dot products, computed directly by [`small_filter`](super::small_filter).

use crate::blocked::{StridedA, gemm_packed};
use crate::element::Element;
use crate::gemm::{MatMut, MatRef, gemm, use_blocked};
use crate::im2col::{PaddedIm2colTB, PaddedLayout, PlaneLayout, im2col, pad_planes, split_phases};
use crate::parallel::*;
use crate::scratch::{Slot, take, take_from};
use crate::shape::ConvGeometry;
use crate::simd::sum;
use crate::tiling::{partition, tile_len, tiles};

/// Most partial sums over images (each as large as the `dW` columns it covers).
///
/// Each partial costs memory and one pass of the final sum; four keep two cores evenly
/// busy (two chunks each) while the reduction stays a small fraction of the GEMM work.
pub(crate) const MAX_IMAGE_CHUNKS: usize = 4;

/// Target number of tasks: image chunks times channel blocks.
const TARGET_TASKS: usize = 8;

/// The fixed partition of one call.
struct Split {
    image_chunks: usize,
    /// Channel blocks per group (1 unless the layer is ungrouped and the batch small).
    channel_blocks: usize,
    /// Channels per block (the last block may be smaller).
    block_channels: usize,
    /// Pixels per tile.
    tile: usize,
}

fn split(geo: &ConvGeometry, elem_size: usize) -> Split {
    let image_chunks = geo.batch.min(MAX_IMAGE_CHUNKS);
    let cg = geo.channels_per_group;
    let wanted = if geo.groups == 1 {
        let blocks = TARGET_TASKS.div_ceil(image_chunks);
        // An even number of tasks (3 chunks: 4 blocks, not 3), so two threads share them
        // evenly. N = 3 on 2 threads: resnet_3x3_56 157 → 179 GFLOP/s, resnet_3x3_28
        // 176 → 191, resnet_1x1_14 174 → 200; equal on 1 thread.
        blocks + (image_chunks * blocks) % 2
    } else {
        1
    };
    let block_channels = cg.div_ceil(wanted.min(cg));
    let channel_blocks = cg.div_ceil(block_channels);
    let tile = tile_len(block_channels * geo.taps, elem_size, geo.out_plane, 1);
    Split {
        image_chunks,
        channel_blocks,
        block_channels,
        tile,
    }
}

/// Elements of the column buffer each task allocates.
/// The padded layout the blocked GEMM packs `colᵀ` from ([`PaddedIm2colTB`]): whenever
/// it is the engine, the layer needs im2col and the padding is moderate. Then no column
/// tile exists; each task holds its channels' padded planes.
fn padded_layout(geo: &ConvGeometry) -> Option<PaddedLayout> {
    if use_blocked() && !geo.is_pointwise() {
        PaddedLayout::new(geo)
    } else {
        None
    }
}

pub(crate) fn column_buffer_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    let s = split(geo, elem_size);
    if geo.is_pointwise() || padded_layout(geo).is_some() {
        0
    } else {
        s.block_channels * geo.taps * s.tile
    }
}

/// Elements of the phase-split copy of one block's channels (0 when dense).
pub(crate) fn phased_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    if let Some(padded) = padded_layout(geo) {
        return padded.buffer_len(split(geo, elem_size).block_channels);
    }
    let layout = PlaneLayout::for_lowering(geo);
    if layout.is_dense() {
        0
    } else {
        split(geo, elem_size).block_channels * layout.channel_len
    }
}

/// Elements of one task's partial sums: its `dW` block for every group, then `db`.
fn task_partial_len(geo: &ConvGeometry, s: &Split) -> usize {
    geo.groups * geo.filters_per_group * s.block_channels * geo.taps + geo.out_channels
}

/// Elements of all partial sums of a call.
pub(crate) fn partial_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    let s = split(geo, elem_size);
    s.image_chunks * s.channel_blocks * task_partial_len(geo, &s)
}

pub(crate) fn backward_weights<T: Element>(
    geo: &ConvGeometry,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    let s = split(geo, size_of::<T>());
    let (cg, kg, taps) = (geo.channels_per_group, geo.filters_per_group, geo.taps);
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    let layout = PlaneLayout::for_lowering(geo);
    let padded = padded_layout(geo);
    let col_len = column_buffer_len(geo, size_of::<T>());
    let want_db = db.is_some();
    let chunks: Vec<_> = partition(geo.batch, s.image_chunks).collect();
    let tasks: Vec<(usize, usize)> = (0..s.image_chunks)
        .flat_map(|i| (0..s.channel_blocks).map(move |b| (i, b)))
        .collect();

    // Each task: the partial dW of (image chunk, channel block) for every group, laid out
    // [group][filter][block rows], plus (block 0 only) the partial db, in its own slice of
    // one buffer that the calling thread keeps between calls.
    let stride = task_partial_len(geo, &s);
    let mut partials = take_from::<T>(Slot::Partials, tasks.len() * stride);
    partials
        .par_chunks_mut(stride)
        .zip(tasks.par_iter())
        .for_each_init(
            || take::<T>(col_len + phased_len(geo, size_of::<T>())),
            |buffers, (part, &(chunk, block))| {
                let (col, phased) = buffers.split_at_mut(col_len);
                let c0 = block * s.block_channels;
                let channels = s.block_channels.min(cg - c0);
                let rows = channels * taps;
                let (dw_part, rest) = part.split_at_mut(geo.groups * kg * rows);
                let db_part = &mut rest[..if want_db && block == 0 {
                    geo.out_channels
                } else {
                    0
                }];
                db_part.fill(T::ZERO);
                let first_image = chunks[chunk].start;
                for n in chunks[chunk].clone() {
                    let x_n = &x[n * x_image..][..x_image];
                    let dy_n = &dy[n * y_image..][..y_image];
                    for g in 0..geo.groups {
                        let dense = &x_n[(g * cg + c0) * geo.in_plane..][..channels * geo.in_plane];
                        if let Some(padded) = &padded {
                            // dW_g (kg × rows) = dy_g (kg × pixels) · colᵀ, colᵀ packed
                            // straight from padded planes; the first image overwrites.
                            let planes = &mut phased[..padded.buffer_len(channels)];
                            pad_planes(geo, padded, dense, planes);
                            let b = PaddedIm2colTB {
                                geo,
                                layout: padded,
                                planes,
                                channels,
                            };
                            let dy_g = &dy_n[g * kg * geo.out_plane..][..kg * geo.out_plane];
                            let a =
                                StridedA(MatRef::row_major(dy_g, kg, geo.out_plane, geo.out_plane));
                            let dw_g = &mut dw_part[g * kg * rows..][..kg * rows];
                            let beta = if n == first_image { T::ZERO } else { T::ONE };
                            let c = MatMut::row_major(dw_g, kg, rows, rows);
                            gemm_packed(T::ONE, &a, &b, beta, c);
                            continue;
                        }
                        let planes: &[T] = if layout.is_dense() {
                            dense
                        } else {
                            let phased = &mut phased[..channels * layout.channel_len];
                            split_phases(geo, &layout, dense, phased);
                            phased
                        };
                        for (pix0, len) in tiles(geo.out_plane, s.tile) {
                            // The first (image, tile) of the chunk overwrites the partial.
                            let beta = if n == first_image && pix0 == 0 {
                                T::ZERO
                            } else {
                                T::ONE
                            };
                            let col_view = if geo.is_pointwise() {
                                MatRef::row_major(&planes[pix0..], rows, len, geo.in_plane)
                            } else {
                                let col = &mut col[..rows * len];
                                im2col(geo, &layout, planes, pix0, len, col);
                                MatRef::row_major(&*col, rows, len, len)
                            };
                            // dW_gᵀ (rows × kg) = col (rows × len) · dy_gᵀ (len × kg).
                            let dy_t = MatRef {
                                data: &dy_n[g * kg * geo.out_plane + pix0..],
                                rows: len,
                                cols: kg,
                                row_stride: 1,
                                col_stride: geo.out_plane,
                            };
                            let dw_t = MatMut {
                                data: &mut dw_part[g * kg * rows..][..kg * rows],
                                rows,
                                cols: kg,
                                row_stride: 1,
                                col_stride: rows,
                            };
                            gemm(T::ONE, col_view, dy_t, beta, dw_t);
                        }
                    }
                    for (k, acc) in db_part.iter_mut().enumerate() {
                        *acc += sum(&dy_n[k * geo.out_plane..][..geo.out_plane]);
                    }
                }
            },
        );

    // Fixed-order reduction: every dW element is partial(chunk 0) + partial(chunk 1) + ...
    let row_len = cg * taps;
    dw.par_chunks_exact_mut(row_len)
        .enumerate()
        .for_each(|(k_global, dw_row)| {
            let (g, k) = (k_global / kg, k_global % kg);
            for block in 0..s.channel_blocks {
                let c0 = block * s.block_channels;
                let rows = s.block_channels.min(cg - c0) * taps;
                let dst = &mut dw_row[c0 * taps..][..rows];
                for chunk in 0..s.image_chunks {
                    let part = &partials[(chunk * s.channel_blocks + block) * stride..]
                        [(g * kg + k) * rows..][..rows];
                    if chunk == 0 {
                        dst.copy_from_slice(part);
                    } else {
                        for (d, p) in dst.iter_mut().zip(part) {
                            *d += *p;
                        }
                    }
                }
            }
        });
    if let Some(db) = db {
        for (k, out) in db.iter_mut().enumerate() {
            let mut sum = T::ZERO;
            for chunk in 0..s.image_chunks {
                sum += partials[chunk * s.channel_blocks * stride
                    + geo.groups * kg * s.block_channels.min(cg) * taps..][k];
            }
            *out = sum;
        }
    }
}
