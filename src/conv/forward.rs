//! Forward pass: `y[n, g] = W_g · im2col(x[n, g]) + b`.
//!
//! Per image, per pixel tile, per group: im2col fills a bounded column tile
//! (`(C/groups)·R·S × len`), one GEMM writes the `K/groups × len` block of `y` in place
//! (row stride `P·Q`), and the bias and activation are applied while that block is still in cache. A
//! pointwise layer (1×1, stride 1, no padding) skips im2col: the input planes are the
//! column matrix.
//!
//! Parallelism: over images when `N ≥ 2`. A single image is split into pixel tiles that
//! run in parallel, each into its own output block, copied into `y` afterwards.

use crate::parallel::*;

use crate::activation::{Activation, apply_in_place};
use crate::element::Element;
use crate::gemm::{MatMut, MatRef, gemm};
use crate::im2col::im2col;
use crate::scratch::take;
use crate::shape::ConvGeometry;
use crate::tiling::{aligned_zeros, tile_len, tiles};

/// Where a tile's output goes: `K` rows of `len` values, `row_stride` apart, starting at
/// `offset` in `data`.
struct OutTile<'a, T> {
    data: &'a mut [T],
    offset: usize,
    row_stride: usize,
}

/// Minimum number of pixel tiles a single image is split into, so that several threads
/// share it.
const SINGLE_IMAGE_TILES: usize = 8;

/// Pixels per tile.
fn tile_for(geo: &ConvGeometry, elem_size: usize) -> usize {
    let min_tiles = if geo.batch == 1 {
        SINGLE_IMAGE_TILES
    } else {
        1
    };
    tile_len(geo.col_rows, elem_size, geo.out_plane, min_tiles)
}

/// Elements of the column buffer each task allocates.
pub(crate) fn column_buffer_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    if geo.is_pointwise() {
        0
    } else {
        geo.col_rows * tile_for(geo, elem_size)
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
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    let tile = tile_for(geo, size_of::<T>());
    let col_len = column_buffer_len(geo, size_of::<T>());
    if geo.batch == 1 {
        let tile_list: Vec<(usize, usize)> = tiles(geo.out_plane, tile).collect();
        let blocks: Vec<_> = tile_list
            .par_iter()
            .map_init(
                || take::<T>(col_len),
                |col, &(pix0, len)| {
                    let mut block = aligned_zeros::<T>(geo.out_channels * len);
                    let out = OutTile {
                        data: &mut block,
                        offset: 0,
                        row_stride: len,
                    };
                    forward_tile(geo, x, w, bias, act, out, pix0, len, col);
                    block
                },
            )
            .collect();
        for (&(pix0, len), block) in tile_list.iter().zip(&blocks) {
            for (y_row, b_row) in y
                .chunks_exact_mut(geo.out_plane)
                .zip(block.chunks_exact(len))
            {
                y_row[pix0..pix0 + len].copy_from_slice(b_row);
            }
        }
        return;
    }
    y.par_chunks_exact_mut(y_image)
        .zip(x.par_chunks_exact(x_image))
        .for_each_init(
            || take::<T>(col_len),
            |col, (y_n, x_n)| {
                for (pix0, len) in tiles(geo.out_plane, tile) {
                    let out = OutTile {
                        data: &mut *y_n,
                        offset: pix0,
                        row_stride: geo.out_plane,
                    };
                    forward_tile(geo, x_n, w, bias, act, out, pix0, len, col);
                }
            },
        );
}

/// Computes output pixels `pix0 .. pix0 + len` of one image, all groups.
#[allow(clippy::too_many_arguments)]
fn forward_tile<T: Element>(
    geo: &ConvGeometry,
    x_n: &[T],
    w: &[T],
    bias: Option<&[T]>,
    act: Activation,
    out: OutTile<'_, T>,
    pix0: usize,
    len: usize,
    col: &mut [T],
) {
    let (cg, kg, rows) = (geo.channels_per_group, geo.filters_per_group, geo.col_rows);
    for g in 0..geo.groups {
        let x_g = &x_n[g * cg * geo.in_plane..][..cg * geo.in_plane];
        let w_g = MatRef::row_major(&w[g * kg * rows..][..kg * rows], kg, rows, rows);
        let b = if geo.is_pointwise() {
            MatRef::row_major(&x_g[pix0..], cg, len, geo.in_plane)
        } else {
            let col = &mut col[..rows * len];
            im2col(geo, x_g, pix0, len, col);
            MatRef::row_major(&*col, rows, len, len)
        };
        let y_g = &mut out.data[out.offset + g * kg * out.row_stride..];
        gemm(
            T::ONE,
            w_g,
            b,
            T::ZERO,
            MatMut::row_major(&mut *y_g, kg, len, out.row_stride),
        );
        // Epilogue, while the block is in cache: bias, then the activation, row by row.
        if bias.is_some() || act != Activation::Identity {
            for k in 0..kg {
                let row = &mut y_g[k * out.row_stride..][..len];
                if let Some(bias) = bias {
                    let b = bias[g * kg + k];
                    for v in row.iter_mut() {
                        *v += b;
                    }
                }
                apply_in_place(act, row);
            }
        }
    }
}
