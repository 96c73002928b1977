//! Forward pass: `y[n, g] = f(W_g · im2col(x[n, g]) + b)`.
//!
//! Per image, per pixel tile, per group: one GEMM writes the `K/groups × len` block of `y`
//! in place (row stride `P·Q`), and the bias and activation are applied while that block
//! is still in cache. Its B operand, the column matrix (`(C/groups)·R·S × len`), comes
//! one of three ways:
//! - blocked GEMM, batched, moderate padding: each image is copied once into padded planes
//!   ([`PaddedLayout`]) and the GEMM's B panels are packed from them with plain vector
//!   copies ([`PaddedIm2colB`]); the tile is the whole output plane, since no column
//!   matrix exists (the GEMM's own `KC × NC` blocking bounds the packed panels);
//! - blocked GEMM, batched, huge padding: panels packed from the unpadded image
//!   ([`Im2colB`]), clamping every run at the border;
//! - blocked GEMM, a single image, moderate padding: the same padded planes, and one block
//!   of output channels per thread, each GEMM packing its own panels from them;
//! - otherwise (matrixmultiply, or a single image with huge padding): im2col fills a
//!   bounded column tile;
//!   strided layers first split each image into column phases ([`PlaneLayout`]) so
//!   im2col copies contiguous runs.
//!
//! A pointwise layer (1×1, stride 1, no padding) skips im2col: the input planes are the
//! column matrix.
//!
//! Parallelism: over images when `N ≥ 2`. A single image runs the GEMM in parallel over
//! blocks of output channels, whose rows of `y` are disjoint (on the column-tile path it
//! first builds each tile once, in parallel over channel blocks).

use crate::activation::{Activation, apply_in_place};
use crate::blocked::{PrepackedA, StridedA, StridedB, gemm_packed, prepacked_len};
use crate::element::Element;
use crate::gemm::{MatMut, MatRef, gemm, use_blocked};
use crate::im2col::{
    Im2colB, PaddedIm2colB, PaddedLayout, PlaneLayout, im2col, pad_planes, split_phases,
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

/// Elements of the column buffer a task uses (per image for `N ≥ 2`, per call for a single
/// image; none when im2col is fused into the GEMM's packing).
pub(crate) fn column_buffer_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    if geo.is_pointwise() || fused(geo) || single_image_padded(geo).is_some() {
        0
    } else {
        geo.col_rows * tile_for(geo, elem_size)
    }
}

/// Elements of the padded or phase-split copy of one image (0 for the dense layout).
pub(crate) fn phased_len(geo: &ConvGeometry) -> usize {
    if let Some(padded) = padded_layout(geo).or_else(|| single_image_padded(geo)) {
        return padded.buffer_len(geo.in_channels);
    }
    let layout = PlaneLayout::for_lowering(geo);
    if layout.is_dense() {
        0
    } else {
        geo.in_channels * layout.channel_len
    }
}

pub(crate) fn forward<T: Element>(
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
    let layout = PlaneLayout::for_lowering(geo);
    let tile = tile_for(geo, size_of::<T>());
    let col_len = column_buffer_len(geo, size_of::<T>());
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
            || take::<T>(padded.buffer_len(geo.in_channels)),
            |planes, (y_n, x_n)| {
                pad_planes(geo, padded, x_n, planes);
                for g in 0..geo.groups {
                    let b = Columns::Padded(PaddedIm2colB::group(geo, padded, planes, g));
                    let y_g = &mut y_n[g * kg * geo.out_plane..][..kg * geo.out_plane];
                    let (packed, out) = (packed.as_ref(), geo.out_plane);
                    gemm_rows(geo, w, packed, b, bias, act, g * kg, kg, y_g, 0, out);
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

/// Elements of the packed weights a call holds ([`prepack`]): all of `W` for a batched,
/// ungrouped layer on the blocked GEMM, else none.
pub(crate) fn packed_weights_len<T: Element>(geo: &ConvGeometry) -> usize {
    if use_blocked() && geo.groups == 1 && geo.batch > 1 {
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
    let mut col = take::<T>(column_buffer_len(geo, size_of::<T>()));
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
/// plane that packs its B panels from the padded planes. Each block packs B itself, so
/// fewer blocks pack less; splitting rows does not change a bit of the result.
fn forward_single_padded<T: Element>(
    geo: &ConvGeometry,
    padded: &PaddedLayout,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    y: &mut [T],
) {
    let kg = geo.filters_per_group;
    let mut planes = take::<T>(padded.buffer_len(geo.in_channels));
    pad_planes(geo, padded, x, &mut planes);
    let blocks = threads().clamp(1, SINGLE_IMAGE_FILTER_BLOCKS);
    let filter_block = kg.div_ceil(blocks).next_multiple_of(16).min(kg);
    for g in 0..geo.groups {
        let y_g = &mut y[g * kg * geo.out_plane..][..kg * geo.out_plane];
        y_g.par_chunks_mut(filter_block * geo.out_plane)
            .enumerate()
            .for_each(|(i, y_block)| {
                let rows = y_block.len() / geo.out_plane;
                let b = Columns::Padded(PaddedIm2colB::group(geo, padded, &planes, g));
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
enum Columns<'a, T> {
    Matrix(MatRef<'a, T>),
    Fused(Im2colB<'a, T>),
    Padded(PaddedIm2colB<'a, T>),
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
        (Columns::Padded(b), None) => gemm_packed(T::ONE, &StridedA(a), &b, T::ZERO, c),
        (Columns::Padded(b), Some(p)) => gemm_packed(T::ONE, p, &b, T::ZERO, c),
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
