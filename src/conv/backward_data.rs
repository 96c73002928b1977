//! Input delta: `dcol = W_gᵀ · dy[n, g]`, then `dx[n, g] = col2im(dcol)`.
//!
//! `W_gᵀ` is the weight matrix read with swapped strides (no transpose copy). Per image,
//! per pixel tile, per group, the GEMM writes a bounded `dcol` tile and col2im
//! scatter-adds its overlapping windows into zeroed, zero-padded planes (unclamped
//! vector adds; the padding absorbs the taps that fall outside the image), whose image
//! part becomes `dx` at the end. A pointwise layer writes the GEMM result straight into
//! `dx`.
//!
//! Parallelism: over images when `N ≥ 2`; a single image is split into channel blocks,
//! whose `dx` planes are disjoint (sharing one packed copy of `dy`, [`prepacks_dy`]).
//!
//! Batched stride-1 layers whose rows have few junk columns instead run the input delta
//! as a forward convolution of `dy` with the flipped, transposed filters ([`transposed`]):
//! the forward reads its column matrix in place, so neither `dy` packing nor col2im
//! remains.

use crate::parallel::*;

use super::{Write, forward};
use crate::activation::Activation;
use crate::blocked::{
    PrepackedA, PrepackedB, StridedA, StridedB, gemm_packed, prepacked_b_len, prepacked_len,
};
use crate::element::Element;
use crate::gemm::{MatMut, MatRef, gemm, use_blocked};
use crate::im2col::{PaddedLayout, PlaneLayout, col2im, col2im_padded, merge_phases, unpad_planes};
use crate::scratch::{Slot, take, take_from};
use crate::shape::{Axis, Conv2dSpec, ConvGeometry};
use crate::simd::{self, add_assign};
use crate::tiling::{PREPACKED_B_BYTES, tile_len, tiles};

/// A single image's channels of one group are split into at most this many blocks.
const SINGLE_IMAGE_BLOCKS: usize = 8;

/// `Wᵀ` packed once for all of a batched call's GEMMs ([`PrepackedA`]).
type PackedWeights<'a, T> = PrepackedA<'a, T, StridedA<'a, T>>;

/// A single image's `dy` packed once for all of its channel blocks' GEMMs ([`PrepackedB`]).
type PackedDy<'a, T> = PrepackedB<'a, T, StridedB<'a, T>>;

/// Channels per block: all of a group's channels, or for a single image a fixed split.
fn channel_block(geo: &ConvGeometry) -> usize {
    let cg = geo.channels_per_group;
    if geo.batch == 1 {
        cg.div_ceil(SINGLE_IMAGE_BLOCKS)
    } else {
        cg
    }
}

/// (pixels per tile, elements of the per-task `dcol` buffer).
fn tile_and_buffer(geo: &ConvGeometry, elem_size: usize) -> (usize, usize) {
    let rows = channel_block(geo) * geo.taps;
    let tile = tile_len(rows, elem_size, geo.out_plane, 1);
    (tile, if geo.is_pointwise() { 0 } else { rows * tile })
}

/// The scratch of an input-delta call, in elements: (per task, its `dcol` tile and
/// accumulation planes; per call, the packed operand it holds: all of `Wᵀ` for a batched,
/// ungrouped layer on the blocked GEMM, or a single image's packed `dy`). For the
/// transposed forward, that forward's needs plus the flipped filters. Where
/// [`forward::leftover_images`] hands images to [`single_image`], the larger of the two
/// routes' needs (they run one after the other).
pub(crate) fn scratch_lens<T: Element>(geo: &ConvGeometry) -> (usize, usize) {
    if let Some(t) = transposed(geo) {
        let (task, call) = forward::scratch_lens::<T>(&t);
        // The flipped filters, then the transposed forward's packed copy of them.
        return (task, geo.w_len + call);
    }
    let (tile, dcol_len) = tile_and_buffer(geo, size_of::<T>());
    let packed_dy = |g: &ConvGeometry| {
        if prepacks_dy::<T>(g) && tile >= g.out_plane {
            prepacked_b_len::<T>(simd::isa(), g.out_channels, g.out_plane)
        } else {
            0
        }
    };
    let task = dcol_len + phased_len(geo);
    let call = if prepacks(geo) {
        prepacked_len::<T>(simd::isa(), geo.col_rows, geo.out_channels)
    } else {
        packed_dy(geo)
    };
    if geo.batch == 1 || forward::leftover_images(geo) == 0 {
        return (task, call);
    }
    let one = geo.with_batch(1);
    let task1 = single_image_scratch_len(&one, tile);
    (task.max(task1), call.max(packed_dy(&one)))
}

/// Elements of the accumulation buffer each task allocates: padded planes of a block's
/// channels ([`PaddedLayout`]), else the phase-split planes of a strided layer (0 when
/// dense, or pointwise: written in place).
fn phased_len(geo: &ConvGeometry) -> usize {
    if geo.is_pointwise() {
        return 0;
    }
    if let Some(padded) = PaddedLayout::new(geo) {
        return padded.buffer_len(channel_block(geo));
    }
    let layout = PlaneLayout::for_lowering(geo);
    if layout.is_dense() {
        0
    } else {
        channel_block(geo) * layout.channel_len
    }
}

/// Whether a call packs `Wᵀ` once for all its GEMMs (batched, ungrouped, blocked GEMM).
fn prepacks(geo: &ConvGeometry) -> bool {
    use_blocked() && geo.groups == 1 && geo.batch > 1
}

/// Whether a single image packs `dy` once for all its channel blocks (blocked GEMM,
/// ungrouped, the whole plane in one tile, at most [`PREPACKED_B_BYTES`] packed); each
/// block's GEMM would otherwise pack all of `dy` again. batch1_3x3_14 (8 blocks), best
/// of 3 alternated: 94.3 → 95.3 GFLOP/s on 1 thread, equal on 2.
fn prepacks_dy<T: Element>(geo: &ConvGeometry) -> bool {
    let len = prepacked_b_len::<T>(simd::isa(), geo.out_channels, geo.out_plane);
    use_blocked()
        && geo.batch == 1
        && geo.groups == 1
        && tile_and_buffer(geo, size_of::<T>()).0 >= geo.out_plane
        && len.saturating_mul(size_of::<T>()) <= PREPACKED_B_BYTES
}

pub(crate) fn backward_data<T: Element>(
    geo: &ConvGeometry,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    write: Write,
) {
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    if let Some(t) = transposed(geo) {
        // Held by the calling thread while the forward's tasks hold their column buffers.
        let mut w_t = take_from::<T>(Slot::Partials, geo.w_len);
        flip_weights(geo, w, &mut w_t);
        if write == Write::Overwrite {
            return forward::forward(&t, dy, &w_t, None, Activation::Identity, dx);
        }
        // Accumulating: a few images at a time into scratch, then added. An image's
        // forward has the same bits in any batch (`forward_per_image_bits_equal_the_batch`
        // in tests/identities.rs), and the route was chosen above for the whole batch.
        // One image per thread, but at least two: a single image takes the forward's
        // slower single-image route (resnet_3x3_56, 1 thread: 0.84 of the overwriting
        // call with one image at a time).
        let images = threads().max(2).min(geo.batch);
        let mut delta = take_from::<T>(Slot::Delta, images * x_image);
        for (dx, dy) in dx
            .chunks_mut(images * x_image)
            .zip(dy.chunks(images * y_image))
        {
            let delta = &mut delta[..dx.len()];
            let t = t.with_batch(dx.len() / x_image);
            forward::forward(&t, dy, &w_t, None, Activation::Identity, delta);
            dx.par_chunks_mut(x_image)
                .zip(delta.par_chunks(x_image))
                .for_each(|(dx, delta)| add_assign(dx, delta));
        }
        return;
    }
    let cg = geo.channels_per_group;
    let (tile, dcol_len) = tile_and_buffer(geo, size_of::<T>());
    let scratch_len = dcol_len + phased_len(geo);
    if geo.batch == 1 {
        return single_image(geo, dy, w, dx, tile, write);
    }
    let leftover = forward::leftover_images(geo);
    if leftover > 0 {
        // As the forward: the images that divide evenly among the threads one per task,
        // then each leftover one split across them, with the batched call's pixel tiles
        // so that every `dx` element adds its terms in the same order either way.
        let full = geo.batch - leftover;
        let (dy_full, dy_rest) = dy.split_at(full * y_image);
        let (dx_full, dx_rest) = dx.split_at_mut(full * x_image);
        backward_data(&geo.with_batch(full), dy_full, w, dx_full, write);
        let one = geo.with_batch(1);
        for (dy_n, dx_n) in dy_rest
            .chunks_exact(y_image)
            .zip(dx_rest.chunks_exact_mut(x_image))
        {
            single_image(&one, dy_n, w, dx_n, tile, write);
        }
        return;
    }
    // An ungrouped layer multiplies every image by the same Wᵀ: pack it once.
    let w_t = StridedA(MatRef {
        data: w,
        rows: geo.col_rows,
        cols: geo.out_channels,
        row_stride: 1,
        col_stride: geo.col_rows,
    });
    let packed = prepacks(geo).then(|| PrepackedA::new(simd::isa(), &w_t));
    dx.par_chunks_exact_mut(x_image)
        .zip(dy.par_chunks_exact(y_image))
        .for_each_init(
            || take::<T>(scratch_len),
            |scratch, (dx_n, dy_n)| {
                for (g, dx_g) in dx_n.chunks_exact_mut(cg * geo.in_plane).enumerate() {
                    let operands = Operands {
                        w,
                        packed_w: packed.as_ref(),
                        packed_dy: None,
                    };
                    write.into(dx_g, |dx_g| {
                        backward_data_block(geo, dy_n, operands, g, 0, dx_g, tile, scratch)
                    });
                }
            },
        );
}

/// Elements of the scratch each task of [`single_image`] takes with pixel tiles of `tile`.
fn single_image_scratch_len(geo: &ConvGeometry, tile: usize) -> usize {
    let dcol = if geo.is_pointwise() {
        0
    } else {
        channel_block(geo) * geo.taps * tile
    };
    dcol + phased_len(geo)
}

/// One image (`geo.batch == 1`), its channels split into [`SINGLE_IMAGE_BLOCKS`] blocks
/// per group that run in parallel, each over all output pixels in tiles of `tile`.
fn single_image<T: Element>(
    geo: &ConvGeometry,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    tile: usize,
    write: Write,
) {
    let cg = geo.channels_per_group;
    let block = channel_block(geo);
    let scratch_len = single_image_scratch_len(geo, tile);
    let dy_mat = StridedB(MatRef::row_major(
        dy,
        geo.out_channels,
        geo.out_plane,
        geo.out_plane,
    ));
    // Used only where a tile is the whole plane.
    let packed_dy = (prepacks_dy::<T>(geo) && tile >= geo.out_plane)
        .then(|| PrepackedB::new(simd::isa(), &dy_mat));
    dx.par_chunks_exact_mut(cg * geo.in_plane)
        .enumerate()
        .for_each(|(g, dx_g)| {
            dx_g.par_chunks_mut(block * geo.in_plane)
                .enumerate()
                .for_each_init(
                    || take::<T>(scratch_len),
                    |scratch, (b, dx_block)| {
                        let operands = Operands {
                            w,
                            packed_w: None,
                            packed_dy: packed_dy.as_ref(),
                        };
                        let c0 = b * block;
                        write.into(dx_block, |dx_block| {
                            backward_data_block(geo, dy, operands, g, c0, dx_block, tile, scratch)
                        });
                    },
                );
        });
}

/// Computes input channels `c0 ..` of group `g` of one image (`dx_planes` holds exactly
/// those planes, dense, overwritten) from all of that image's output pixels, tile by tile.
/// Each `dcol` tile is scatter-added into zeroed padded planes (no clamping; see
/// [`col2im_padded`]) whose image part is copied into `dx_planes` at the end; where the
/// padding is too large for that, into `dx_planes` directly (clamped runs), or for a
/// strided layer into a phase-split buffer interleaved into `dx_planes` at the end.
#[allow(clippy::too_many_arguments)]
fn backward_data_block<T: Element>(
    geo: &ConvGeometry,
    dy_n: &[T],
    operands: Operands<'_, '_, T>,
    g: usize,
    c0: usize,
    dx_planes: &mut [T],
    tile: usize,
    scratch: &mut [T],
) {
    let channels = dx_planes.len() / geo.in_plane;
    let rows = channels * geo.taps;
    let product = |pix0: usize, len: usize, dst: MatMut<'_, T>| {
        tile_product(geo, dy_n, operands, g, c0, rows, pix0, len, dst)
    };
    if geo.is_pointwise() {
        // Each pixel of a pointwise layer is written by exactly one tile.
        for (pix0, len) in tiles(geo.out_plane, tile) {
            let dst = MatMut::row_major(&mut dx_planes[pix0..], rows, len, geo.in_plane);
            product(pix0, len, dst);
        }
        return;
    }
    let (dcol, acc) = scratch.split_at_mut(rows * tile);
    if let Some(padded) = PaddedLayout::new(geo) {
        let planes = &mut acc[..padded.buffer_len(channels)];
        planes.fill(T::ZERO);
        for (pix0, len) in tiles(geo.out_plane, tile) {
            let dcol = &mut dcol[..rows * len];
            product(pix0, len, MatMut::row_major(&mut *dcol, rows, len, len));
            col2im_padded(geo, &padded, dcol, pix0, len, planes);
        }
        unpad_planes(geo, &padded, planes, dx_planes);
        return;
    }
    let layout = PlaneLayout::for_lowering(geo);
    let target: &mut [T] = if layout.is_dense() {
        &mut *dx_planes
    } else {
        &mut acc[..channels * layout.channel_len]
    };
    target.fill(T::ZERO);
    for (pix0, len) in tiles(geo.out_plane, tile) {
        let dcol = &mut dcol[..rows * len];
        product(pix0, len, MatMut::row_major(&mut *dcol, rows, len, len));
        col2im(geo, &layout, dcol, pix0, len, target);
    }
    if !layout.is_dense() {
        merge_phases(
            geo,
            &layout,
            &acc[..channels * layout.channel_len],
            dx_planes,
        );
    }
}

/// The weights of an input-delta GEMM, and what a call packed once for all of them.
#[derive(Clone, Copy)]
struct Operands<'p, 'a, T: Element> {
    w: &'a [T],
    /// All of `Wᵀ` (batched, ungrouped).
    packed_w: Option<&'p PackedWeights<'a, T>>,
    /// All of a single image's `dy` ([`prepacks_dy`]).
    packed_dy: Option<&'p PackedDy<'a, T>>,
}

/// `dst = W_g[:, c0·R·S ..]ᵀ · dy[n, g][:, pix0 .. pix0 + len]`: the `rows` column-matrix
/// rows of input channels `c0 ..` of group `g` over output pixels `pix0 .. pix0 + len`.
#[allow(clippy::too_many_arguments)]
fn tile_product<T: Element>(
    geo: &ConvGeometry,
    dy_n: &[T],
    operands: Operands<'_, '_, T>,
    g: usize,
    c0: usize,
    rows: usize,
    pix0: usize,
    len: usize,
    dst: MatMut<'_, T>,
) {
    let (kg, col_rows, taps) = (geo.filters_per_group, geo.col_rows, geo.taps);
    let w = operands.w;
    // W_g[:, c0·taps ..]ᵀ: element (i, k) = w[(g·kg + k)·col_rows + c0·taps + i].
    let w_t = MatRef {
        data: &w[g * kg * col_rows + c0 * taps..],
        rows,
        cols: kg,
        row_stride: 1,
        col_stride: col_rows,
    };
    let dy_g = MatRef::row_major(
        &dy_n[g * kg * geo.out_plane + pix0..],
        kg,
        len,
        geo.out_plane,
    );
    // `packed_w` is all of Wᵀ: used when this block is all of it (ungrouped, all
    // channels). `packed_dy` is all of dy: used when the tile is all of it.
    let packed_w = operands
        .packed_w
        .filter(|_| c0 == 0 && rows == geo.col_rows);
    let packed_dy = operands
        .packed_dy
        .filter(|_| g == 0 && pix0 == 0 && len == geo.out_plane);
    match (packed_w, packed_dy) {
        (Some(p), _) => gemm_packed(T::ONE, p, &StridedB(dy_g), T::ZERO, dst),
        (None, Some(d)) => gemm_packed(T::ONE, &StridedA(w_t), d, T::ZERO, dst),
        (None, None) => gemm(T::ONE, w_t, dy_g, T::ZERO, dst),
    }
}

/// The input delta of a stride-1 layer as a forward convolution, where that is faster:
/// `dy` (`K` channels) padded by `dil·(R − 1) − pad` and correlated with the flipped,
/// transposed filters ([`flip_weights`]) is `dx`. It skips this module's `dy` packing and
/// col2im. Taken with at least 16 input channels per group where that forward
/// - reads its column matrix in place ([`forward::takes_wide_path`]: batched, rows with
///   few junk columns). 1 thread / 2 threads, best of 3 alternated: resnet_3x3_56 95 →
///   101 / 173 → 198 GFLOP/s, dilated_3x3 96 → 98 / 190 → 195, a 1×9 layer over 4000
///   samples 95 → 105 / 190 → 207;
/// - or packs it from padded planes ([`forward::takes_padded_path`]), when the input
///   plane is at most 1/16 larger than the output plane (the transposed forward computes
///   `H·W` outputs where this module's GEMM computes `P·Q` columns: LeNet's unpadded
///   layers were 3–12× slower) and the layer has at least as many input channels as
///   filters per group (the transposed GEMM's rows): resnet_3x3_28 103.4 → 107.3 /
///   207 → 211, 16 channels on 28×28 69 → 77, 64 on 14×14 (N = 32) 88 → 97, 256 on
///   7×7 74 → 76; 32 channels to 64 filters on 14×14 was 5% slower, hence the last
///   condition;
/// - or runs by pixel tiles ([`forward::takes_pixel_tiles`], batched): `benches/ab.sh`,
///   3 rounds, 1 / 2 threads: resnet_3x3_28 1.09 / 1.06, resnet_3x3_56 1.05 / 1.06,
///   resnet_3x3_s2's transposed layer (stride 1 on 28 × 28) 1.05 / 1.04.
fn transposed(geo: &ConvGeometry) -> Option<ConvGeometry> {
    let padding = |a: &Axis| {
        (a.kernel - 1)
            .checked_mul(a.dilation)?
            .checked_sub(a.padding)
    };
    if geo.h.stride != 1 || geo.w.stride != 1 || geo.channels_per_group < 16 {
        return None;
    }
    let spec = Conv2dSpec {
        batch: geo.batch,
        in_channels: geo.out_channels,
        in_h: geo.h.output,
        in_w: geo.w.output,
        out_channels: geo.in_channels,
        kernel: [geo.h.kernel, geo.w.kernel],
        stride: [1, 1],
        padding: [padding(&geo.h)?, padding(&geo.w)?],
        dilation: [geo.h.dilation, geo.w.dilation],
        groups: geo.groups,
    };
    let t = ConvGeometry::new(&spec).ok()?;
    // The transposed layer's output is exactly dx.
    debug_assert!(t.h.output == geo.h.input && t.w.output == geo.w.input);
    let same_plane = geo.in_plane.saturating_mul(16) <= geo.out_plane.saturating_mul(17);
    let packed = same_plane
        && geo.channels_per_group >= geo.filters_per_group
        && forward::takes_padded_path(&t);
    // Pixel tiles only for a batch: a single image's transposed forward (flipping and
    // packing 2.4 MB of filters for batch1_3x3_14) ran 0.93–0.97 of the GEMM below on
    // the Intel host B, 0.69 on the Zen 4 host (`benches/ab.sh`, 5 rounds, 1 and 2
    // threads, with the single-image padding in parallel). Not profiled; the likely cost
    // is the flip, which copies 9-element runs at a 9 KB stride out of L2. Without the
    // flip (each task packing its panel from `w` with the taps in the filters' order and
    // the tap table reversed) it ran 1.027 at 1 thread and 0.978–0.996 at 2 (Zen 4,
    // 5–6 rounds; the panels' 32 × 9 block transposes 6 % of the call, the padded `dy`
    // read across both cores): not kept.
    // Not for 1 × 1 filters, whose input delta is a GEMM with no col2im: resnet_1x1_14's
    // transposed forward by pixel tiles ran 86.6 GFLOP/s against its 105 (1 thread).
    let pixels = geo.batch > 1 && !geo.is_pointwise() && forward::takes_pixel_tiles(&t);
    let fast = pixels || forward::takes_wide_path(&t) || packed;
    (t.h.output == geo.h.input && t.w.output == geo.w.input && fast).then_some(t)
}

/// `w_t[g·cg + c][k][r][s] = w[g·kg + k][c][R−1−r][S−1−s]`: the filters of the transposed
/// convolution ([`transposed`]).
fn flip_weights<T: Element>(geo: &ConvGeometry, w: &[T], w_t: &mut [T]) {
    let (cg, kg, taps) = (geo.channels_per_group, geo.filters_per_group, geo.taps);
    // One task per filter of the transposed layer (`g·cg + c`): plain copies, in parallel
    // since the calling thread does this before the forward's tasks start.
    w_t.par_chunks_exact_mut(kg * taps)
        .enumerate()
        .for_each(|(gc, dst)| {
            let (g, c) = (gc / cg, gc % cg);
            for (k, dst) in dst.chunks_exact_mut(taps).enumerate() {
                let src = &w[((g * kg + k) * cg + c) * taps..][..taps];
                for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        });
}
