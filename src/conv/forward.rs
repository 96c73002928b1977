//! Forward pass: `y[n, g] = f(W_g · im2col(x[n, g]) + b)`.
//!
//! Per image, per pixel tile, per group: one GEMM writes the `K/groups × len` block of `y`
//! in place (row stride `P·Q`), and the bias and activation are applied while that block
//! is still in cache. Its B operand, the column matrix (`(C/groups)·R·S × len`), comes
//! one of these ways:
//! - blocked GEMM, batched, few junk columns (stride 1, or strided with rows of at least
//!   32 outputs): each image is copied once into padded planes (split into row and
//!   column phases when strided), and the GEMM reads the taps' rows of those planes in
//!   place ([`WideIm2colB`], `forward_wide`): over output pixels straight into `y` where
//!   every panel lies within an output row (`Q` a multiple of the kernel's panel width,
//!   or one row), else over
//!   *wide* columns (`p·row_len + q`, junk columns between output rows) into a `C` tile
//!   whose valid columns are then written to `y`; no B panel is packed but partial ones;
//! - blocked GEMM, batched, moderate padding: each image is copied once into padded planes
//!   ([`PaddedLayout`]) and the GEMM's B panels are packed from them with plain vector
//!   copies ([`PaddedIm2colB`]); the tile is the whole output plane, since no column
//!   matrix exists (the GEMM's own `KC × NC` blocking bounds the packed panels);
//! - blocked GEMM, batched, huge padding: panels packed from the unpadded image
//!   ([`Im2colB`]), clamping every run at the border;
//! - blocked GEMM, a single image, moderate padding: the same padded planes, and one block
//!   of output channels per thread, each padding its own copy and packing its own panels
//!   from it;
//! - otherwise (matrixmultiply, or a single image with huge padding): im2col fills a
//!   bounded column tile;
//!   strided layers first split each image into column phases ([`PlaneLayout`]) so
//!   im2col copies contiguous runs.
//!
//! A pointwise layer (1×1, stride 1, no padding) skips im2col: the input planes are the
//! column matrix. On the AVX-512 path, ungrouped layers with filters a multiple of 32
//! and rows that split into tiles of 14 and 8 pixels (1 × 1 ones included) skip the
//! GEMM too: [`pixel_tiles`] broadcasts each output pixel's inputs from the padded
//! planes against packed filters. A short reduction (`C·R·S` at most 32, stride 1, ungrouped) is not
//! lowered at all: [`direct_forward`] reads its taps from the padded planes into register
//! tiles.
//!
//! Parallelism: over images when `N ≥ 2`. A single image runs the GEMM in parallel over
//! blocks of output channels, whose rows of `y` are disjoint (on the column-tile path it
//! first builds each tile once, in parallel over channel blocks). A batch that does not
//! divide evenly among the threads hands its last one or two images to that single-image
//! path ([`leftover_images`]), so no thread idles for a whole image.

use super::{direct_forward, pixel_tiles};
use crate::activation::{Activation, apply_in_place};
use crate::blocked::{
    PrepackedA, RowsA, StridedA, StridedB, gemm_packed, panel_width, prepacked_len,
};
use crate::element::Element;
use crate::gemm::{MatMut, MatRef, gemm, use_blocked};
use crate::im2col::{
    Im2colB, PaddedIm2colB, PaddedLayout, PlaneLayout, WideIm2colB, im2col, padded_input,
    split_phases,
};
use crate::parallel::*;
use crate::scratch::take;
use crate::shape::ConvGeometry;
use crate::tiling::{aligned_zeros, tile_len, tiles};

/// A single image's output channels (per group) are split into at most this many blocks.
///
/// Each block packs the column matrix (or its tile) itself, so more blocks cost packing
/// work. The column-tile path always uses four, which keeps two cores busy (and four)
/// while that cost stays a few percent of the GEMM; the padded path uses one per thread,
/// up to four.
const SINGLE_IMAGE_FILTER_BLOCKS: usize = 4;

/// A single image's channels (per group) are split into at most this many im2col blocks.
const SINGLE_IMAGE_CHANNEL_BLOCKS: usize = 8;

/// Pixels per tile.
fn tile_for(geo: &ConvGeometry, elem_size: usize) -> usize {
    tile_len(geo.col_rows, elem_size, geo.out_plane, 1)
}

/// Whether a batched forward packs the GEMM's B panels straight from the image
/// ([`Im2colB`]) instead of building a column tile: whenever the crate's blocked GEMM is
/// the engine and the layer needs im2col. (A single image keeps its column tile: its
/// output-channel blocks share it, where fused packing would redo im2col per block.)
fn fused(geo: &ConvGeometry) -> bool {
    use_blocked() && !geo.is_pointwise() && geo.batch > 1
}

/// The padded layout a batched forward packs from, when im2col is fused and the padding
/// is moderate ([`PaddedLayout::new`]): then every packed row is plain copies.
fn padded_layout(geo: &ConvGeometry) -> Option<PaddedLayout> {
    if fused(geo) {
        PaddedLayout::new(geo)
    } else {
        None
    }
}

/// Smallest image (forward FLOPs) [`leftover_images`] splits across threads: below it the
/// split's synchronization outweighs the idle thread (N = 3 on 2 threads: 64 channels on
/// 14 × 14, 14.5 MFLOP, 134 → 160 GFLOP/s; LeNet's second layer, 3.2 MFLOP, 124 → 121; a
/// grouped 64-channel layer on 16 × 16, 4.7 MFLOP, 104 → 96).
const LEFTOVER_MIN_FLOPS: u64 = 1 << 23;

/// Images of a batched call that go to the single-image path: with `T` threads, the
/// `N mod T` left over after each thread took `⌊N/T⌋` images, when there are at most
/// [`SINGLE_IMAGE_FILTER_BLOCKS`]` / 2` of them. One image per task would leave `T − r`
/// threads idle for a whole image; split across all threads, the `r` images take about
/// `r / min(T, 4)` of that time. Only for images of at least [`LEFTOVER_MIN_FLOPS`].
/// N = 3 on 2 threads, best of 3 alternated, GFLOP/s: resnet_3x3_28 159 → 202,
/// resnet_3x3_56 155 → 190, resnet_stem 148 → 189, resnet_3x3_s2 146 → 177, resnet_1x1_14
/// 161 → 203, dilated_3x3 152 → 186, audio_1x9 163 → 195; N = 5: resnet_3x3_28 177 → 205.
/// The split depends on the thread count but no result does: the batched and the
/// single-image paths compute each output with the same operations
/// (`forward_per_image_bits_equal_the_batch` in `tests/identities.rs`).
pub(crate) fn leftover_images(geo: &ConvGeometry) -> usize {
    let threads = threads();
    if threads < 2 || geo.batch <= threads || geo.with_batch(1).flops() < LEFTOVER_MIN_FLOPS {
        return 0;
    }
    let left = geo.batch % threads;
    if left <= SINGLE_IMAGE_FILTER_BLOCKS / 2 {
        left
    } else {
        0
    }
}

/// The scratch of a forward call, in elements: (per task, its column buffer and padded or
/// phase-split copy; per call, the packed operand it holds). Where the call hands
/// [`leftover_images`] to the single-image path, the larger of the two paths' needs
/// (they run one after the other).
pub(crate) fn scratch_lens<T: Element>(geo: &ConvGeometry) -> (usize, usize) {
    if let Some(layout) = direct_forward::layout(geo) {
        return direct_forward::scratch_lens(geo, &layout);
    }
    let lens = |g: &ConvGeometry| {
        (
            column_buffer_len::<T>(g) + phased_len(g),
            packed_weights_len::<T>(g),
        )
    };
    let (task, call) = lens(geo);
    if leftover_images(geo) == 0 {
        return (task, call);
    }
    let (task1, call1) = lens(&geo.with_batch(1));
    (task.max(task1), call.max(call1))
}

/// Elements of the column buffer a task uses (per image for `N ≥ 2`, per call for a single
/// image; none when im2col is fused into the GEMM's packing).
fn column_buffer_len<T: Element>(geo: &ConvGeometry) -> usize {
    let elem_size = size_of::<T>();
    if pixel_tiles::layout(geo).is_some() {
        return 0;
    }
    if let Some(layout) = wide_layout(geo) {
        return if pixel_columns::<T>(geo) {
            0
        } else {
            geo.filters_per_group * wide_tile(geo, &layout, false, elem_size)
        };
    }
    if geo.is_pointwise() || fused(geo) || single_image_padded(geo).is_some() {
        0
    } else {
        geo.col_rows * tile_for(geo, elem_size)
    }
}

/// Elements of the padded or phase-split copy of one image (0 for the dense layout).
fn phased_len(geo: &ConvGeometry) -> usize {
    if let Some(input) = pixel_tiles::layout(geo) {
        return input.copy_len(geo);
    }
    let padded = wide_layout(geo).or_else(|| padded_layout(geo));
    if let Some(padded) = padded.or_else(|| single_image_padded(geo)) {
        // None where the planes are the input's own (`padded_input`).
        return padded.copy_len(geo, geo.in_channels);
    }
    let layout = PlaneLayout::for_lowering(geo);
    if layout.is_dense() {
        0
    } else {
        geo.in_channels * layout.channel_len
    }
}

/// `y = f(conv(x, w) + bias)`: by [`direct_forward`] for the short reductions it takes,
/// else lowered to the GEMM ([`forward_lowered`]).
pub(crate) fn forward<T: Element>(
    geo: &ConvGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    if let Some(layout) = direct_forward::layout(geo) {
        return direct_forward::forward(geo, &layout, x, w, bias, act, y);
    }
    forward_lowered(geo, x, w, bias, act, y)
}

/// [`forward`] by im2col and the GEMM, in one of the ways of the module doc, for any
/// layer.
pub(super) fn forward_lowered<T: Element>(
    geo: &ConvGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    if geo.batch == 1 {
        return forward_single_image(geo, x, w, bias, act, y);
    }
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    let leftover = leftover_images(geo);
    if leftover > 0 {
        // The images that divide evenly among the threads, one per task; then each
        // leftover image split across all of them. Same bits either way (every path
        // computes each output identically), so the thread count still changes none.
        let full = geo.batch - leftover;
        let (x_full, x_rest) = x.split_at(full * x_image);
        let (y_full, y_rest) = y.split_at_mut(full * y_image);
        forward_lowered(&geo.with_batch(full), x_full, w, bias, act, y_full);
        let one = geo.with_batch(1);
        for (x_n, y_n) in x_rest
            .chunks_exact(x_image)
            .zip(y_rest.chunks_exact_mut(y_image))
        {
            forward_single_image(&one, x_n, w, bias, act, y_n);
        }
        return;
    }
    if let Some(layout) = pixel_tiles::layout(geo) {
        return pixel_tiles::forward(geo, &layout, x, w, bias, act, y);
    }
    let layout = PlaneLayout::for_lowering(geo);
    let tile = tile_for(geo, size_of::<T>());
    let col_len = column_buffer_len::<T>(geo);
    if let Some(layout) = wide_layout(geo) {
        return forward_wide(geo, &layout, x, w, bias, act, y);
    }
    if let Some(padded) = padded_layout(geo) {
        return forward_padded(geo, &padded, x, w, bias, act, y);
    }
    let w_mat = weight_matrix(geo, w);
    let packed = prepack(geo, &w_mat);
    y.par_chunks_exact_mut(y_image)
        .zip(x.par_chunks_exact(x_image))
        .for_each_init(
            || take::<T>(col_len + phased_len(geo)),
            |buffer, (y_n, x_n)| {
                let (col, phased) = buffer.split_at_mut(col_len);
                let planes: &[T] = if layout.is_dense() {
                    x_n
                } else {
                    split_phases(geo, &layout, x_n, phased);
                    phased
                };
                let cg = geo.channels_per_group;
                for (pix0, len) in tiles(geo.out_plane, tile) {
                    for g in 0..geo.groups {
                        let b = if fused(geo) {
                            let x_g =
                                &planes[g * cg * layout.channel_len..][..cg * layout.channel_len];
                            Columns::Fused(Im2colB {
                                geo,
                                layout: &layout,
                                planes: x_g,
                                pix0,
                                len,
                            })
                        } else {
                            Columns::Matrix(column_tile(geo, &layout, planes, g, pix0, len, col))
                        };
                        let rows = geo.filters_per_group;
                        let y_g = &mut y_n[g * rows * geo.out_plane..][..rows * geo.out_plane];
                        let packed = packed.as_ref();
                        gemm_rows(geo, w, packed, b, bias, act, g * rows, rows, y_g, pix0, len);
                    }
                }
            },
        );
}

/// Batched forward from padded planes: per image, one copy into [`PaddedLayout`], then
/// per group one GEMM over the whole output plane whose B panels are packed from it.
fn forward_padded<T: Element>(
    geo: &ConvGeometry,
    padded: &PaddedLayout,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    let kg = geo.filters_per_group;
    let w_mat = weight_matrix(geo, w);
    let packed = prepack(geo, &w_mat);
    y.par_chunks_exact_mut(y_image)
        .zip(x.par_chunks_exact(x_image))
        .for_each_init(
            || take::<T>(padded.copy_len(geo, geo.in_channels)),
            |buffer, (y_n, x_n)| {
                let planes = padded_input(geo, padded, x_n, buffer);
                for g in 0..geo.groups {
                    let b = Columns::Padded(PaddedIm2colB::group(geo, padded, planes, g));
                    let y_g = &mut y_n[g * kg * geo.out_plane..][..kg * geo.out_plane];
                    let (packed, out) = (packed.as_ref(), geo.out_plane);
                    gemm_rows(geo, w, packed, b, bias, act, g * kg, kg, y_g, 0, out);
                }
            },
        );
}

/// Bytes of the `C` tile of the wide path ([`forward_wide`]): `K/groups × tile` outputs,
/// junk columns included, kept in L2 across the GEMM's `k` blocks.
const WIDE_C_TILE_BYTES: usize = 256 << 10;

/// The layout of the wide path, when it applies: batched, fused, moderate padding, and
/// at stride 1 `W + 2·pad_w ≤ 17/16·Q` (strided layers: [`strided_wide_layout`]). At
/// stride 1 its rows share their padding
/// ([`PaddedLayout::with_shared_row_padding`]): `pad_w` junk columns per row instead of
/// `2·pad_w`, dilated_3x3 99.3 → 102.2 GFLOP/s and resnet_3x3_56 100.9 → 102.4 on one
/// thread (best of 3 alternated).
///
/// Measured against packing from padded planes ([`forward_padded`]), 1 thread, with
/// unshared padding: resnet_3x3_56 +2–4%, audio_1x9 +4–7%, dilated_3x3 equal; stride 2
/// is equal (resnet_3x3_s2) or slower (the ResNet stem, −8%: its 147 tap rows are
/// scattered over 12 phase planes, more cache lines than the packed panel), hence stride
/// 1 only there; on the Intel hosts the stem gained, see [`strided_wide_layout`].
fn wide_layout(geo: &ConvGeometry) -> Option<PaddedLayout> {
    if !fused(geo) {
        return None;
    }
    if geo.h.stride != 1 || geo.w.stride != 1 {
        return strided_wide_layout(geo);
    }
    // The bound as first measured, on rows of `W + 2·pad_w`: with the shared row padding
    // resnet_3x3_28 (29 columns per 28 outputs) would qualify, but stays 2 % faster packed
    // (107.4 vs 104.9 GFLOP/s; on the second Intel host, with the bound at 18/16, the
    // wide path measured 0.94 of packing, paired over 6 rounds).
    let padded_width = geo.w.input.saturating_add(geo.w.padding.saturating_mul(2));
    if padded_width.saturating_mul(16) > geo.w.output.saturating_mul(17) {
        return None;
    }
    PaddedLayout::with_shared_row_padding(geo)
}

/// Output rows of at least this many pixels for a strided layer's wide path.
const STRIDED_WIDE_MIN_Q: usize = 32;

/// The wide path's layout for a strided layer: rows and columns split into phases
/// ([`PaddedLayout::with_row_phases`]), so the pixels of each tap row are again one flat
/// vector with `row_len − Q` junk columns per output row, when those are at most `Q/16`
/// and output rows hold at least [`STRIDED_WIDE_MIN_Q`] pixels.
///
/// Against packing from padded planes ([`forward_padded`]), paired medians of
/// `benches/ab.sh` (1 thread unless said): the ResNet stem (Q = 112, 115 columns per
/// row) 1.15 on the first Intel host (best 92 → 107 GFLOP/s), 1.05 and 1.08 over 6 rounds
/// each on the second (124 → 139), 1.08 at 2 threads (248 → 272, a control 1.07);
/// resnet_3x3_s2 (Q = 28) 0.86 and 0.90, hence the bound on `Q`: its panels of 32 columns
/// cross a row end, and the in-place rows come from 4 phase planes. On Zen 4 the stem
/// had measured −8 % (see the stride-1 note above), so this choice is the Intel hosts'.
fn strided_wide_layout(geo: &ConvGeometry) -> Option<PaddedLayout> {
    if geo.w.output < STRIDED_WIDE_MIN_Q {
        return None;
    }
    PaddedLayout::with_row_phases(geo)
        .filter(|layout| layout.row_len.saturating_mul(16) <= geo.w.output.saturating_mul(17))
}

/// Whether [`forward`] reads this layer's column matrix in place ([`forward_wide`]).
pub(crate) fn takes_wide_path(geo: &ConvGeometry) -> bool {
    geo.batch > 1 && !takes_pixel_tiles(geo) && wide_layout(geo).is_some()
}

/// Whether [`forward`] runs this layer by pixel tiles ([`pixel_tiles`]), batched or not.
pub(crate) fn takes_pixel_tiles(geo: &ConvGeometry) -> bool {
    pixel_tiles::layout(geo).is_some()
}

/// Whether [`forward`] packs this layer's B panels from padded planes
/// ([`forward_padded`]).
pub(crate) fn takes_padded_path(geo: &ConvGeometry) -> bool {
    geo.batch > 1
        && !takes_pixel_tiles(geo)
        && wide_layout(geo).is_none()
        && padded_layout(geo).is_some()
}

/// Whether the wide path's columns are output pixels only ([`WideIm2colB`] with `Q`
/// columns per row, the GEMM writing `y` directly): where every panel ([`panel_width`]
/// columns: f32 32 on AVX-512, 16 on AVX2) then lies within one output row (`Q` a
/// multiple of it, or a single output row). Elsewhere
/// the columns include the junk between output rows, every panel is read in place into a
/// `C` tile, and its valid columns are copied to `y`. Pixels only against junk columns, 1
/// thread, best of 3 alternated, GFLOP/s: dilated_3x3 (Q = 64) 102.7 → 107.9 (2 threads
/// 204.5 → 217.0), audio_1x9 (one row) 105.9 → 109.2; resnet_3x3_56 (Q = 56: 3 panels
/// in 7 cross a row end and are packed) 103.2 → 100.2, hence the condition. Dilated
/// input delta (a transposed forward) 102.9 → 108.7 (2 threads 204.0 → 216.8).
fn pixel_columns<T: Element>(geo: &ConvGeometry) -> bool {
    geo.h.output == 1 || geo.w.output.is_multiple_of(panel_width::<T>())
}

/// Columns per tile of the wide path: a multiple of 32 (whole GEMM panels).
fn wide_tile(geo: &ConvGeometry, layout: &PaddedLayout, pixels: bool, elem_size: usize) -> usize {
    let by_budget = WIDE_C_TILE_BYTES / (geo.filters_per_group * elem_size).max(1) / 32 * 32;
    let columns = if pixels {
        geo.out_plane
    } else {
        wide_len(geo, layout)
    };
    by_budget.max(32).min(columns)
}

/// Wide columns of an output plane: `(P − 1)·row_len + Q` (the last row needs no junk).
fn wide_len(geo: &ConvGeometry, layout: &PaddedLayout) -> usize {
    geo.h.output.saturating_sub(1) * layout.row_len + geo.w.output
}

/// Batched forward with the GEMM reading the column matrix in place: per image, one copy
/// into row-phased padded planes, then per tile of columns and group one GEMM
/// ([`WideIm2colB`]), either straight into `y` ([`pixel_columns`]; bias and activation
/// then follow on the tile's rows while they are in cache) or into a `C` tile with junk
/// columns whose valid columns go to `y` with the bias and activation. Each output has
/// the packed path's arithmetic, bit for bit.
fn forward_wide<T: Element>(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    forward_wide_columns(geo, layout, pixel_columns::<T>(geo), x, w, bias, act, y)
}

/// [`forward_wide`] with output-pixel columns (`pixels`) or wide ones, whichever the
/// geometry (the tests run both on every shape).
#[allow(clippy::too_many_arguments)]
fn forward_wide_columns<T: Element>(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    pixels: bool,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    let (cg, kg, col_rows) = (geo.channels_per_group, geo.filters_per_group, geo.col_rows);
    let (row_len, out_w) = (layout.row_len, geo.w.output);
    let (row_cols, columns) = if pixels {
        (out_w, geo.out_plane)
    } else {
        (row_len, wide_len(geo, layout))
    };
    let tile = wide_tile(geo, layout, pixels, size_of::<T>());
    let planes_len = layout.copy_len(geo, geo.in_channels);
    let c_tile_len = if pixels { 0 } else { kg * tile };
    let w_mat = weight_matrix(geo, w);
    let packed = prepack(geo, &w_mat);
    y.par_chunks_exact_mut(y_image)
        .zip(x.par_chunks_exact(x_image))
        .for_each_init(
            || take::<T>(planes_len + c_tile_len),
            |buffer, (y_n, x_n)| {
                let (planes, c_tile) = buffer.split_at_mut(planes_len);
                let planes = padded_input(geo, layout, x_n, planes);
                for g in 0..geo.groups {
                    let y_g = &mut y_n[g * kg * geo.out_plane..][..kg * geo.out_plane];
                    for (col0, len) in tiles(columns, tile) {
                        let b = WideIm2colB {
                            geo,
                            layout,
                            planes,
                            channel0: g * cg,
                            channels: cg,
                            row_cols,
                            col0,
                            len,
                        };
                        if pixels {
                            let b = Columns::Wide(b);
                            let k0 = g * kg;
                            gemm_rows(
                                geo,
                                w,
                                packed.as_ref(),
                                b,
                                bias,
                                act,
                                k0,
                                kg,
                                y_g,
                                col0,
                                len,
                            );
                            continue;
                        }
                        let w_g =
                            MatRef::row_major(&w[g * kg * col_rows..], kg, col_rows, col_rows);
                        let c = MatMut::row_major(&mut c_tile[..kg * len], kg, len, len);
                        match packed.as_ref() {
                            Some(p) => gemm_packed(T::ONE, p, &b, T::ZERO, c),
                            None => gemm_packed(T::ONE, &StridedA(w_g), &b, T::ZERO, c),
                        }
                        // The valid columns of each output row the tile touches.
                        let f0 = col0;
                        for (k, c_row) in c_tile[..kg * len].chunks_exact(len).enumerate() {
                            let y_k = &mut y_g[k * geo.out_plane..][..geo.out_plane];
                            let b = bias.map(|b| b[g * kg + k]);
                            let mut row_start = f0 / row_len * row_len;
                            while row_start < f0 + len {
                                let lo = row_start.max(f0);
                                let hi = (row_start + out_w).min(f0 + len);
                                if lo < hi {
                                    let p = row_start / row_len;
                                    let dst = &mut y_k[p * out_w + lo - row_start..][..hi - lo];
                                    let src = &c_row[lo - f0..hi - f0];
                                    match b {
                                        Some(b) => {
                                            for (d, &s) in dst.iter_mut().zip(src) {
                                                *d = s + b;
                                            }
                                        }
                                        None => dst.copy_from_slice(src),
                                    }
                                    apply_in_place(act, dst);
                                }
                                row_start += row_len;
                            }
                        }
                    }
                }
            },
        );
}

/// `W` packed once for all of a batched call's GEMMs ([`PrepackedA`]).
type PackedWeights<'a, T> = PrepackedA<'a, T, StridedA<'a, T>>;

/// `W` as a `K × (C/groups)·R·S` row-major matrix.
fn weight_matrix<'a, T: Element>(geo: &ConvGeometry, w: &'a [T]) -> StridedA<'a, T> {
    StridedA(MatRef::row_major(
        w,
        geo.out_channels,
        geo.col_rows,
        geo.col_rows,
    ))
}

/// Packs `W` once when the blocked GEMM runs a batch of an ungrouped layer: every image
/// (and tile) then multiplies the same packed panels. Grouped layers use a different
/// sub-matrix per group and keep packing per GEMM.
fn prepack<'a, T: Element>(
    geo: &ConvGeometry,
    w: &'a StridedA<'a, T>,
) -> Option<PackedWeights<'a, T>> {
    (use_blocked() && geo.groups == 1).then(|| PrepackedA::new(crate::simd::isa(), w))
}

/// Elements of the packed operand a call holds: all of `W` for a batched, ungrouped layer
/// on the blocked GEMM ([`prepack`]); else none.
fn packed_weights_len<T: Element>(geo: &ConvGeometry) -> usize {
    if pixel_tiles::layout(geo).is_some() {
        pixel_tiles::packed_len(geo)
    } else if use_blocked() && geo.groups == 1 && geo.batch > 1 {
        prepacked_len::<T>(crate::simd::isa(), geo.out_channels, geo.col_rows)
    } else {
        0
    }
}

/// One image: each tile's column matrix is built once (channel blocks in parallel), then
/// blocks of output channels run their GEMMs in parallel.
fn forward_single_image<T: Element>(
    geo: &ConvGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    if let Some(layout) = pixel_tiles::layout(geo) {
        return pixel_tiles::forward_single_image(geo, &layout, x, w, bias, act, y);
    }
    if let Some(padded) = single_image_padded(geo) {
        return forward_single_padded(geo, &padded, x, w, bias, act, y);
    }
    let layout = PlaneLayout::for_lowering(geo);
    let (cg, kg, taps) = (geo.channels_per_group, geo.filters_per_group, geo.taps);
    let phased_storage;
    let planes: &[T] = if layout.is_dense() {
        x
    } else {
        let mut p = aligned_zeros::<T>(phased_len(geo));
        split_phases(geo, &layout, x, &mut p);
        phased_storage = p;
        &phased_storage
    };
    let tile = tile_for(geo, size_of::<T>());
    let mut col = take::<T>(column_buffer_len::<T>(geo));
    let channel_block = cg.div_ceil(SINGLE_IMAGE_CHANNEL_BLOCKS);
    let filter_block = kg
        .div_ceil(SINGLE_IMAGE_FILTER_BLOCKS)
        .next_multiple_of(16)
        .min(kg);
    for (pix0, len) in tiles(geo.out_plane, tile) {
        for g in 0..geo.groups {
            let b = if geo.is_pointwise() {
                let x_g = &planes[g * cg * geo.in_plane..][..cg * geo.in_plane];
                MatRef::row_major(&x_g[pix0..], cg, len, geo.in_plane)
            } else {
                let col = &mut col[..geo.col_rows * len];
                let x_g = &planes[g * cg * layout.channel_len..][..cg * layout.channel_len];
                col.par_chunks_mut(channel_block * taps * len)
                    .zip(x_g.par_chunks(channel_block * layout.channel_len))
                    .for_each(|(col_block, x_block)| {
                        im2col(geo, &layout, x_block, pix0, len, col_block)
                    });
                MatRef::row_major(&*col, geo.col_rows, len, len)
            };
            let y_g = &mut y[g * kg * geo.out_plane..][..kg * geo.out_plane];
            y_g.par_chunks_mut(filter_block * geo.out_plane)
                .enumerate()
                .for_each(|(i, y_block)| {
                    let rows = y_block.len() / geo.out_plane;
                    gemm_rows(
                        geo,
                        w,
                        None,
                        Columns::Matrix(b),
                        bias,
                        act,
                        g * kg + i * filter_block,
                        rows,
                        y_block,
                        pix0,
                        len,
                    );
                });
        }
    }
}

/// The padded layout a single image packs from: blocked GEMM, im2col needed, moderate
/// padding.
fn single_image_padded(geo: &ConvGeometry) -> Option<PaddedLayout> {
    if use_blocked() && !geo.is_pointwise() && geo.batch == 1 {
        PaddedLayout::new(geo)
    } else {
        None
    }
}

/// One image from padded planes: the output channels of each group are split into one
/// block per thread (at most [`SINGLE_IMAGE_FILTER_BLOCKS`]), each a GEMM over the whole
/// plane that packs its B panels from the group's padded planes. Splitting rows does not
/// change a bit of the result.
///
/// Each block pads its own copy of the group's input (its task's column buffer) and packs
/// its own B panels, although the blocks share both: a copy written by one core and read
/// by the other is written again on the next call, and on this machine those writes (to
/// lines the other core holds) ran 3–4× slower than writes to lines it does not, which
/// cost more than the work saved. Pad once and pack the column matrix once for all blocks
/// (`PrepackedB`) against each block padding and packing its own, 2 threads, best of 3
/// alternated, GFLOP/s: batch1_3x3_14 201 → 206, and at batch 1: resnet_3x3_56 172 → 184,
/// resnet_3x3_28 193 → 201, resnet_3x3_s2 156 → 170, dilated_3x3 168 → 180, resnet_stem
/// 173 → 185, audio_1x9 176 → 186, 512 channels on 7×7 118 → 149.
fn forward_single_padded<T: Element>(
    geo: &ConvGeometry,
    padded: &PaddedLayout,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    let (cg, kg) = (geo.channels_per_group, geo.filters_per_group);
    let blocks = threads().clamp(1, SINGLE_IMAGE_FILTER_BLOCKS);
    let filter_block = kg.div_ceil(blocks).next_multiple_of(16).min(kg);
    for g in 0..geo.groups {
        let x_g = &x[g * cg * geo.in_plane..][..cg * geo.in_plane];
        let y_g = &mut y[g * kg * geo.out_plane..][..kg * geo.out_plane];
        y_g.par_chunks_mut(filter_block * geo.out_plane)
            .enumerate()
            .for_each(|(i, y_block)| {
                let mut buffer = take::<T>(padded.copy_len(geo, cg));
                let planes = padded_input(geo, padded, x_g, &mut buffer);
                // The group's channels are all these planes hold: their group 0.
                let b = Columns::Padded(PaddedIm2colB::group(geo, padded, planes, 0));
                let rows = y_block.len() / geo.out_plane;
                let k0 = g * kg + i * filter_block;
                gemm_rows(
                    geo,
                    w,
                    None,
                    b,
                    bias,
                    act,
                    k0,
                    rows,
                    y_block,
                    0,
                    geo.out_plane,
                );
            });
    }
}

/// The column matrix of group `g` for pixels `pix0 .. pix0 + len`: the input itself for a
/// pointwise layer, else im2col into `col`.
#[allow(clippy::too_many_arguments)]
fn column_tile<'a, T: Element>(
    geo: &ConvGeometry,
    layout: &PlaneLayout,
    planes: &'a [T],
    g: usize,
    pix0: usize,
    len: usize,
    col: &'a mut [T],
) -> MatRef<'a, T> {
    let cg = geo.channels_per_group;
    if geo.is_pointwise() {
        let x_g = &planes[g * cg * geo.in_plane..][..cg * geo.in_plane];
        MatRef::row_major(&x_g[pix0..], cg, len, geo.in_plane)
    } else {
        let x_g = &planes[g * cg * layout.channel_len..][..cg * layout.channel_len];
        let col = &mut col[..geo.col_rows * len];
        im2col(geo, layout, x_g, pix0, len, col);
        MatRef::row_major(&*col, geo.col_rows, len, len)
    }
}

/// The B operand of a forward GEMM: a column matrix in memory (or the input itself, for
/// pointwise layers), or the image packed straight into the GEMM's panels.
enum Columns<'a, T: Element> {
    Matrix(MatRef<'a, T>),
    Fused(Im2colB<'a, T>),
    Padded(PaddedIm2colB<'a, T>),
    /// Read in place from padded planes where a panel lies within one output row.
    Wide(WideIm2colB<'a, T>),
}

/// `y_rows[:, pix0..pix0 + len] = f(W[k0..k0 + rows] · b + bias)`, where `y_rows` holds
/// output channels `k0 .. k0 + rows` of one image (row stride `P·Q`), then the epilogue:
/// bias and activation on each row while it is in cache.
///
/// `packed`, when given, is all of `W` packed once ([`prepack`]); it is used when the block
/// is all of `W` (`k0 = 0`, `rows = K`).
#[allow(clippy::too_many_arguments)]
fn gemm_rows<T: Element>(
    geo: &ConvGeometry,
    w: &[T],
    packed: Option<&PackedWeights<'_, T>>,
    b: Columns<'_, T>,
    bias: Option<&[T]>,
    act: Activation,
    k0: usize,
    rows: usize,
    y_rows: &mut [T],
    pix0: usize,
    len: usize,
) {
    let col_rows = geo.col_rows;
    let a = MatRef::row_major(
        &w[k0 * col_rows..][..rows * col_rows],
        rows,
        col_rows,
        col_rows,
    );
    let out = &mut y_rows[pix0..];
    let c = MatMut::row_major(&mut *out, rows, len, geo.out_plane);
    match (b, packed.filter(|_| k0 == 0 && rows == geo.out_channels)) {
        (Columns::Matrix(b), None) => gemm(T::ONE, a, b, T::ZERO, c),
        (Columns::Matrix(b), Some(p)) => gemm_packed(T::ONE, p, &StridedB(b), T::ZERO, c),
        (Columns::Fused(b), None) => gemm_packed(T::ONE, &StridedA(a), &b, T::ZERO, c),
        (Columns::Fused(b), Some(p)) => gemm_packed(T::ONE, p, &b, T::ZERO, c),
        (Columns::Padded(b), None) => gemm_packed(T::ONE, &RowsA(a), &b, T::ZERO, c),
        (Columns::Padded(b), Some(p)) => gemm_packed(T::ONE, p, &b, T::ZERO, c),
        (Columns::Wide(b), None) => gemm_packed(T::ONE, &StridedA(a), &b, T::ZERO, c),
        (Columns::Wide(b), Some(p)) => gemm_packed(T::ONE, p, &b, T::ZERO, c),
    }
    if bias.is_some() || act != Activation::Identity {
        for k in 0..rows {
            let row = &mut out[k * geo.out_plane..][..len];
            if let Some(bias) = bias {
                let b = bias[k0 + k];
                for v in row.iter_mut() {
                    *v += b;
                }
            }
            apply_in_place(act, row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Conv2dSpec;

    /// The wide path (B rows read in place) gives the packed path's bits on every output,
    /// with wide columns (junk dropped) and with output-pixel columns (panels that cross a
    /// row end packed, `Q` = 40, 30, 50, 20 here), with and without bias and activation,
    /// grouped or not, over shapes with several tiles and partial panels.
    #[test]
    fn wide_path_matches_packed_path() {
        let specs = [
            // Q = 64 and a single output row: the shapes that take pixel columns.
            (2, 4, [6, 64], 8, [3, 3], [1, 1], [1, 1], 2),
            (2, 3, [1, 70], 40, [1, 9], [0, 4], [1, 1], 1),
            // K = 64: tiles of 1024 wide columns, (40 − 1)·42 + 40 = 1678 of them.
            (2, 5, [40, 40], 64, [3, 3], [1, 1], [1, 1], 1),
            (2, 4, [23, 30], 6, [3, 5], [2, 2], [2, 1], 2),
            (3, 3, [9, 50], 8, [1, 9], [0, 4], [1, 1], 1),
            // Padding wider than the kernel reaches (3 × 1, pad 1): rows of Q = W + 2
            // elements, not W + pad_w, so a row's outputs stay clear of the next row's.
            (2, 3, [10, 20], 8, [3, 1], [1, 1], [1, 1], 1),
        ];
        // Strided: rows and columns in phases (`strided_wide_layout`), the stem's 7 × 7
        // at stride 2 (Q = 40 in rows of 43, as the stem's 112 in rows of 115),
        // stride 3 × 2 with dilation, and a 1 × 9 at stride 2 over a single output row.
        let strided = [
            (2, 3, [40, 80], 16, [7, 7], [3, 3], [1, 1], [2, 2], 1),
            (2, 4, [31, 75], 6, [3, 3], [2, 1], [2, 1], [3, 2], 2),
            (2, 3, [1, 90], 8, [1, 9], [0, 4], [1, 1], [2, 2], 1),
        ];
        let specs = specs
            .into_iter()
            .map(|(n, c, hw, k, rs, pad, dil, g)| (n, c, hw, k, rs, pad, dil, [1, 1], g))
            .chain(strided);
        for (batch, c, [h, w], k, kernel, padding, dilation, stride, groups) in specs {
            let spec = Conv2dSpec {
                batch,
                in_channels: c,
                in_h: h,
                in_w: w,
                out_channels: k,
                kernel,
                padding,
                dilation,
                stride,
                groups,
            };
            let geo = ConvGeometry::new(&spec).unwrap();
            let wide = if stride == [1, 1] {
                PaddedLayout::with_shared_row_padding(&geo).unwrap()
            } else {
                PaddedLayout::with_row_phases(&geo).unwrap()
            };
            let padded = PaddedLayout::new(&geo).unwrap();
            let x: Vec<f32> = (0..batch * c * h * w)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let wts: Vec<f32> = (0..geo.w_len)
                .map(|i| ((i * 104_729) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let bias: Vec<f32> = (0..k).map(|i| i as f32 * 0.1 - 0.3).collect();
            let y_len = batch * k * geo.out_plane;
            for (b, act) in [
                (None, Activation::Identity),
                (Some(&bias[..]), Activation::Tanh),
            ] {
                let mut want = vec![f32::NAN; y_len];
                forward_padded(&geo, &padded, &x, &wts, b, act, &mut want);
                for pixels in [false, true] {
                    let mut got = vec![f32::NAN; y_len];
                    forward_wide_columns(&geo, &wide, pixels, &x, &wts, b, act, &mut got);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(same, "{spec:?} bias {} pixels {pixels}", b.is_some());
                }
            }
        }
    }
}
