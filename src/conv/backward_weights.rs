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
//! The *wide* form, preferred where it applies ([`wide_layout`]), reads the column matrix
//! in place instead: with the planes row-phased, each tap row of `col` over the flat
//! positions `p·row_len + q` is one run of the planes, so the GEMM computes
//! `dW_gᵀ = col_wide · dy_wideᵀ` with A read in place by rows (no packing) and only `dy`
//! packed, zero at the junk positions ([`WideTapsA`], [`WideDyT`]). Its partials are
//! `dW_gᵀ`, transposed once after the chunks are summed.
//!
//! Layers with few taps (`C·R·S ≤ 32`, stride 1) skip all this: their gradient is a few
//! hundred dot products, computed directly by [`small_filter`](super::small_filter).

use super::Write;
use crate::blocked::transpose::{Strided, transpose};
use crate::blocked::{StridedA, gemm_packed};
use crate::element::Element;
use crate::gemm::{MatMut, MatRef, gemm, use_blocked};
use crate::im2col::{
    PaddedIm2colTB, PaddedLayout, PlaneLayout, WideDyT, WideTapsA, im2col, padded_input,
    split_phases,
};
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

/// Elements one task of the wide form's chunk sum adds (64 KiB of f32).
const SUM_TASK: usize = 1 << 14;

/// Filters (rows of `dW`) one task of the wide form's final transpose writes.
const TRANSPOSE_FILTERS: usize = 16;

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
    let wanted = if wide_layout(geo).is_some() && image_chunks == MAX_IMAGE_CHUNKS {
        // The wide form packs `dy` once per task: splitting the channels would pack it
        // once per block, and enough image chunks keep the threads busy.
        1
    } else if geo.groups == 1 {
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

/// The row-phased layout of the wide form (`dW_gᵀ = col_wide · dy_wideᵀ`, the column
/// matrix read in place: [`WideTapsA`]), when the blocked GEMM is the engine, the layer
/// needs im2col, the junk positions are at most a quarter of the pixels
/// (`row_len ≤ 1.25·Q`) and output rows are at least 16 pixels: `dy`'s rows are packed by
/// block transposes of one output row each, and shorter runs go element by element
/// (batch1_3x3_14, 14 pixels a row, ran 0.87× the pixel-column form; it keeps that).
///
/// Measured on the Intel host, 1 thread, paired medians over 5–6 rounds against the
/// pixel-column form: resnet_3x3_56 1.08–1.20, dilated_3x3 1.09–1.16, resnet_3x3_s2
/// 1.08, resnet_3x3_28 0.96–0.99, audio_1x9 0.93–1.16 (best medians higher in every
/// layer), the ResNet stem 1.44 against `small_filter`. On the second Intel host the
/// pixel-column form measured 0.93 (resnet_3x3_28) and 0.91 (resnet_3x3_s2) of this one.
///
/// At stride 1 the rows share their padding ([`PaddedLayout::with_shared_row_padding`]):
/// `pad_w` junk positions per output row instead of `2·pad_w`, each a product with a
/// zero of `dy` in every tap row. Zen 4, `benches/ab.sh`, 4 rounds, 1 / 2 threads:
/// resnet_3x3_28 (29 positions per 28 pixels instead of 30) 1.033 / 1.032, dilated_3x3
/// 1.028 / 1.027, resnet_3x3_56 1.009, audio_1x9 1.007; resnet_3x3_s2 (stride 2, a
/// control) 0.998.
fn wide_layout(geo: &ConvGeometry) -> Option<PaddedLayout> {
    if !use_blocked() || geo.is_pointwise() {
        return None;
    }
    let layout = if geo.h.stride == 1 && geo.w.stride == 1 {
        PaddedLayout::with_shared_row_padding(geo)
    } else {
        PaddedLayout::with_row_phases(geo)
    };
    layout
        .filter(|layout| layout.row_len.saturating_mul(4) <= geo.w.output.saturating_mul(5))
        .filter(|_| geo.w.output >= 16)
}

/// Whether the weight gradient of `geo` takes the wide form (see [`wide_layout`]).
pub(crate) fn uses_wide_form(geo: &ConvGeometry) -> bool {
    wide_layout(geo).is_some()
}

pub(crate) fn column_buffer_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    let s = split(geo, elem_size);
    if geo.is_pointwise() || wide_layout(geo).is_some() || padded_layout(geo).is_some() {
        0
    } else {
        s.block_channels * geo.taps * s.tile
    }
}

/// Elements of the phase-split copy of one block's channels (0 when dense).
pub(crate) fn phased_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    if let Some(wide) = wide_layout(geo) {
        return wide.copy_len(geo, split(geo, elem_size).block_channels);
    }
    if let Some(padded) = padded_layout(geo) {
        // None where the planes are the input's own (`padded_input`).
        return padded.copy_len(geo, split(geo, elem_size).block_channels);
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
    write: Write,
) {
    let s = split(geo, size_of::<T>());
    let (cg, kg, taps) = (geo.channels_per_group, geo.filters_per_group, geo.taps);
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    let layout = PlaneLayout::for_lowering(geo);
    let wide = wide_layout(geo);
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
                        if let Some(wide) = &wide {
                            // dW_gᵀ (rows × kg) = col_wide (rows × flat) · dy_wideᵀ, the
                            // column matrix read in place; the first image overwrites.
                            let planes = padded_input(geo, wide, dense, phased);
                            let a = WideTapsA {
                                geo,
                                layout: wide,
                                planes,
                                channels,
                            };
                            let b = WideDyT {
                                dy: &dy_n[g * kg * geo.out_plane..][..kg * geo.out_plane],
                                filters: kg,
                                out_w: geo.w.output,
                                out_h: geo.h.output,
                                row_len: wide.row_len,
                            };
                            let dw_t = &mut dw_part[g * kg * rows..][..kg * rows];
                            let beta = if n == first_image { T::ZERO } else { T::ONE };
                            gemm_packed(
                                T::ONE,
                                &a,
                                &b,
                                beta,
                                MatMut::row_major(dw_t, rows, kg, kg),
                            );
                            continue;
                        }
                        if let Some(padded) = &padded {
                            // dW_g (kg × rows) = dy_g (kg × pixels) · colᵀ, colᵀ packed
                            // straight from padded planes; the first image overwrites.
                            let planes = padded_input(geo, padded, dense, phased);
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
    if wide.is_some() {
        // The wide form's partials are dW_gᵀ (rows × kg) per group: summed into chunk 0's
        // in chunk order (contiguous adds), then block-transposed into dW once.
        let (first, later) = partials.split_at_mut(s.channel_blocks * stride);
        for (block, acc) in first.chunks_mut(stride).enumerate() {
            let rows = s.block_channels.min(cg - block * s.block_channels) * taps;
            let acc = &mut acc[..geo.groups * kg * rows];
            // In parallel over ranges of elements: each still adds its chunks in order.
            acc.par_chunks_mut(SUM_TASK)
                .enumerate()
                .for_each(|(i, acc)| {
                    for chunk in 1..s.image_chunks {
                        let part = &later[((chunk - 1) * s.channel_blocks + block) * stride..];
                        for (d, p) in acc.iter_mut().zip(&part[i * SUM_TASK..]) {
                            *d += *p;
                        }
                    }
                });
        }
        let first = &*first;
        let isa = crate::simd::isa();
        // dW[g·kg + k][c0·taps + j] = sum[block][g][j][k]: in parallel over groups of
        // TRANSPOSE_FILTERS filters, each task transposing its columns of every block's
        // sums into its rows of dW (accumulating: through scratch, then added).
        dw.par_chunks_mut(kg * row_len)
            .enumerate()
            .for_each(|(g, dw_g)| {
                dw_g.par_chunks_mut(TRANSPOSE_FILTERS * row_len)
                    .enumerate()
                    .for_each_init(
                        || match write {
                            Write::Overwrite => None,
                            Write::Accumulate => {
                                Some(take::<T>(TRANSPOSE_FILTERS * s.block_channels * taps))
                            }
                        },
                        |scratch, (t, dw_rows)| {
                            let k0 = t * TRANSPOSE_FILTERS;
                            let filters = dw_rows.len() / row_len;
                            for block in 0..s.channel_blocks {
                                let c0 = block * s.block_channels;
                                let rows = s.block_channels.min(cg - c0) * taps;
                                let src = &first[block * stride + g * kg * rows..][..kg * rows];
                                let src = &src[k0..];
                                let dst = &mut dw_rows[c0 * taps..];
                                match scratch.as_deref_mut() {
                                    None => transpose(
                                        isa,
                                        src,
                                        Strided(kg),
                                        filters,
                                        rows,
                                        dst,
                                        row_len,
                                    ),
                                    Some(tmp) => {
                                        let tmp = &mut tmp[..filters * rows];
                                        transpose(isa, src, Strided(kg), filters, rows, tmp, rows);
                                        for (dst, tmp) in
                                            dst.chunks_mut(row_len).zip(tmp.chunks_exact(rows))
                                        {
                                            write.put_all(&mut dst[..rows], tmp);
                                        }
                                    }
                                }
                            }
                        },
                    );
            });
    } else {
        dw.par_chunks_exact_mut(row_len)
            .enumerate()
            .for_each(|(k_global, dw_row)| {
                let (g, k) = (k_global / kg, k_global % kg);
                for block in 0..s.channel_blocks {
                    let c0 = block * s.block_channels;
                    let rows = s.block_channels.min(cg - c0) * taps;
                    let dst = &mut dw_row[c0 * taps..][..rows];
                    write.sum_into(dst, s.image_chunks, |chunk| {
                        &partials[(chunk * s.channel_blocks + block) * stride..]
                            [(g * kg + k) * rows..][..rows]
                    });
                }
            });
    }
    if let Some(db) = db {
        for (k, out) in db.iter_mut().enumerate() {
            let mut sum = T::ZERO;
            for chunk in 0..s.image_chunks {
                sum += partials[chunk * s.channel_blocks * stride
                    + geo.groups * kg * s.block_channels.min(cg) * taps..][k];
            }
            write.put(out, sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Conv2dSpec;

    /// The wide form gives the reference's weight and bias gradients exactly, in f32 and
    /// f64, on small-integer data (every product and partial sum is an integer far below
    /// 2^24, so any order of summation is exact and only a wrong index shows): strides 1
    /// and 2, dilation, groups, a single image (channel blocks) and four or more (one
    /// block per chunk), rows in several A blocks (M = 288 > MC), flat depths in several
    /// `k` blocks, filter counts with partial, narrow and single-column panels.
    #[test]
    fn wide_form_matches_reference_exactly() {
        wide_case::<f32>();
        wide_case::<f64>();
    }

    fn wide_case<T: Element>() {
        let specs = [
            // (batch, C, [H, W], K, kernel, stride, padding, dilation, groups)
            (8, 3, [40, 40], 10, [7, 7], [2, 2], [3, 3], [1, 1], 1),
            (1, 6, [18, 20], 9, [3, 3], [1, 1], [1, 1], [1, 1], 1),
            (3, 4, [20, 36], 12, [3, 3], [1, 1], [2, 2], [2, 2], 2),
            (5, 2, [9, 40], 33, [1, 9], [1, 1], [0, 4], [1, 1], 1),
            (2, 20, [34, 34], 16, [3, 3], [2, 2], [1, 1], [1, 1], 1),
            (4, 32, [20, 20], 8, [3, 3], [1, 1], [1, 1], [1, 1], 1),
        ];
        for (batch, c, [h, w], k, kernel, stride, padding, dilation, groups) in specs {
            let spec = Conv2dSpec {
                batch,
                in_channels: c,
                in_h: h,
                in_w: w,
                out_channels: k,
                kernel,
                stride,
                padding,
                dilation,
                groups,
            };
            let geo = ConvGeometry::new(&spec).unwrap();
            // The form needs the blocked GEMM (off under `CONVGEMM_ISA=scalar`, where
            // this checks the matrixmultiply path instead).
            assert_eq!(uses_wide_form(&geo), use_blocked(), "{spec:?}");
            let small = |i: usize, m: usize| T::from_f64(((i * m) % 5) as f64 - 2.0);
            let x: Vec<T> = (0..batch * c * h * w).map(|i| small(i, 7919)).collect();
            let dy: Vec<T> = (0..batch * k * geo.out_plane)
                .map(|i| small(i, 104_729))
                .collect();
            let (mut want_w, mut want_b) = (vec![T::ZERO; geo.w_len], vec![T::ZERO; k]);
            crate::reference::conv2d_backward_weights(
                &spec,
                &x,
                &dy,
                &mut want_w,
                Some(&mut want_b),
            )
            .unwrap();
            let nan = T::from_f64(f64::NAN);
            let (mut got_w, mut got_b) = (vec![nan; geo.w_len], vec![nan; k]);
            backward_weights(
                &geo,
                &x,
                &dy,
                &mut got_w,
                Some(&mut got_b),
                Write::Overwrite,
            );
            assert!(got_w == want_w, "{spec:?}: dW differs");
            assert!(got_b == want_b, "{spec:?}: db differs");
        }
    }
}
