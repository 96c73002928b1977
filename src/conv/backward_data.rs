//! Input delta: `dcol = W_gᵀ · dy[n, g]`, then `dx[n, g] = col2im(dcol)`.
//!
//! `W_gᵀ` is the weight matrix read with swapped strides (no transpose copy). Per image,
//! per pixel tile, per group, the GEMM writes a bounded `dcol` tile and col2im
//! scatter-adds its overlapping windows into the zeroed `dx`. A pointwise layer writes
//! the GEMM result straight into `dx`.
//!
//! Parallelism: over images when `N ≥ 2`; a single image is split into channel blocks,
//! whose `dx` planes are disjoint.

use crate::parallel::*;

use crate::element::Element;
use crate::gemm::{MatMut, MatRef, gemm};
use crate::im2col::col2im;
use crate::scratch::take;
use crate::shape::ConvGeometry;
use crate::tiling::{tile_len, tiles};

/// A single image's channels of one group are split into at most this many blocks.
const SINGLE_IMAGE_BLOCKS: usize = 8;

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

/// Elements of the column buffer each task allocates.
pub(crate) fn column_buffer_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    tile_and_buffer(geo, elem_size).1
}

pub(crate) fn backward_data<T: Element>(geo: &ConvGeometry, dy: &[T], w: &[T], dx: &mut [T]) {
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    let cg = geo.channels_per_group;
    let (tile, buffer_len) = tile_and_buffer(geo, size_of::<T>());
    if geo.batch == 1 {
        let block = channel_block(geo);
        dx.par_chunks_exact_mut(cg * geo.in_plane)
            .enumerate()
            .for_each(|(g, dx_g)| {
                dx_g.par_chunks_mut(block * geo.in_plane)
                    .enumerate()
                    .for_each_init(
                        || take::<T>(buffer_len),
                        |dcol, (b, dx_block)| {
                            dx_block.fill(T::ZERO);
                            let c0 = b * block;
                            let channels = dx_block.len() / geo.in_plane;
                            for (pix0, len) in tiles(geo.out_plane, tile) {
                                backward_data_tile(
                                    geo, dy, w, g, c0, channels, dx_block, pix0, len, dcol,
                                );
                            }
                        },
                    );
            });
        return;
    }
    dx.par_chunks_exact_mut(x_image)
        .zip(dy.par_chunks_exact(y_image))
        .for_each_init(
            || take::<T>(buffer_len),
            |dcol, (dx_n, dy_n)| {
                dx_n.fill(T::ZERO);
                for (pix0, len) in tiles(geo.out_plane, tile) {
                    for (g, dx_g) in dx_n.chunks_exact_mut(cg * geo.in_plane).enumerate() {
                        backward_data_tile(geo, dy_n, w, g, 0, cg, dx_g, pix0, len, dcol);
                    }
                }
            },
        );
}

/// Adds the contribution of output pixels `pix0 .. pix0 + len` of one image to input
/// channels `c0 .. c0 + channels` of group `g` (`dx_planes` holds exactly those planes).
#[allow(clippy::too_many_arguments)]
fn backward_data_tile<T: Element>(
    geo: &ConvGeometry,
    dy_n: &[T],
    w: &[T],
    g: usize,
    c0: usize,
    channels: usize,
    dx_planes: &mut [T],
    pix0: usize,
    len: usize,
    dcol: &mut [T],
) {
    let (kg, col_rows, taps) = (geo.filters_per_group, geo.col_rows, geo.taps);
    let rows = channels * taps;
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
    if geo.is_pointwise() {
        // Each pixel of a pointwise layer is written by exactly one tile.
        let dst = MatMut::row_major(&mut dx_planes[pix0..], rows, len, geo.in_plane);
        gemm(T::ONE, w_t, dy_g, T::ZERO, dst);
    } else {
        let dcol = &mut dcol[..rows * len];
        gemm(
            T::ONE,
            w_t,
            dy_g,
            T::ZERO,
            MatMut::row_major(&mut *dcol, rows, len, len),
        );
        col2im(geo, dcol, pix0, len, dx_planes);
    }
}
