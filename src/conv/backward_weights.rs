//! Weight gradient: `dW_g = Σ_n dy[n, g] · im2col(x[n, g])ᵀ`, `db[k] = Σ_n Σ_pixels dy[n, k]`.
//!
//! The work items are (image, pixel tile) pairs in a fixed order. They are split into a
//! fixed number of contiguous chunks ([`MAX_PARTIALS`] at most, independent of the thread
//! count); each chunk accumulates its own `dW` and `db` partial (GEMM with beta = 1), and
//! the partials are summed in chunk order. So every result is bit-identical whatever
//! rayon pool runs the call.

use crate::parallel::*;

use crate::element::Element;
use crate::gemm::{MatMut, MatRef, gemm};
use crate::im2col::im2col;
use crate::shape::ConvGeometry;
use crate::tiling::{MAX_PARTIALS, aligned_zeros, partition, tile_len, tiles};

/// Pixels per tile: at least enough tiles that a small batch still fills the partials.
fn tile_for(geo: &ConvGeometry, elem_size: usize) -> usize {
    tile_len(
        geo.col_rows,
        elem_size,
        geo.out_plane,
        MAX_PARTIALS.div_ceil(geo.batch),
    )
}

/// Number of partial sums (each `w_len + K` elements) a call allocates.
pub(crate) fn partial_count(geo: &ConvGeometry, elem_size: usize) -> usize {
    let items = geo.batch * geo.out_plane.div_ceil(tile_for(geo, elem_size));
    MAX_PARTIALS.min(items)
}

/// Elements of the column buffer each task allocates.
pub(crate) fn column_buffer_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    if geo.is_pointwise() {
        0
    } else {
        geo.col_rows * tile_for(geo, elem_size)
    }
}

pub(crate) fn backward_weights<T: Element>(
    geo: &ConvGeometry,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: Option<&mut [T]>,
) {
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = geo.out_channels * geo.out_plane;
    let (cg, kg, rows) = (geo.channels_per_group, geo.filters_per_group, geo.col_rows);
    let tile = tile_for(geo, size_of::<T>());
    let tile_list: Vec<(usize, usize)> = tiles(geo.out_plane, tile).collect();
    let items = geo.batch * tile_list.len();
    let chunks: Vec<_> = partition(items, MAX_PARTIALS.min(items)).collect();
    let want_db = db.is_some();

    let partials: Vec<_> = chunks
        .par_iter()
        .map_init(
            || aligned_zeros::<T>(column_buffer_len(geo, size_of::<T>())),
            |col, range| {
                let mut dw_part = aligned_zeros::<T>(geo.w_len);
                let mut db_part = aligned_zeros::<T>(if want_db { geo.out_channels } else { 0 });
                for (i, item) in range.clone().enumerate() {
                    let n = item / tile_list.len();
                    let (pix0, len) = tile_list[item % tile_list.len()];
                    let x_n = &x[n * x_image..][..x_image];
                    let dy_n = &dy[n * y_image..][..y_image];
                    let beta = if i == 0 { T::ZERO } else { T::ONE };
                    for g in 0..geo.groups {
                        let x_g = &x_n[g * cg * geo.in_plane..][..cg * geo.in_plane];
                        let dy_g = MatRef::row_major(
                            &dy_n[g * kg * geo.out_plane + pix0..],
                            kg,
                            len,
                            geo.out_plane,
                        );
                        let col_t = if geo.is_pointwise() {
                            MatRef::row_major(&x_g[pix0..], cg, len, geo.in_plane).t()
                        } else {
                            let col = &mut col[..rows * len];
                            im2col(geo, x_g, pix0, len, col);
                            MatRef::row_major(&*col, rows, len, len).t()
                        };
                        let dw_g = MatMut::row_major(
                            &mut dw_part[g * kg * rows..][..kg * rows],
                            kg,
                            rows,
                            rows,
                        );
                        gemm(T::ONE, dy_g, col_t, beta, dw_g);
                    }
                    if want_db {
                        for (k, acc) in db_part.iter_mut().enumerate() {
                            *acc += dy_n[k * geo.out_plane + pix0..][..len]
                                .iter()
                                .copied()
                                .sum::<T>();
                        }
                    }
                }
                (dw_part, db_part)
            },
        )
        .collect();

    // Fixed-order reduction: partial 0 + partial 1 + ... for every element.
    let dw_parts: Vec<&[T]> = partials.iter().map(|(p, _)| &p[..]).collect();
    sum_in_order(dw, &dw_parts);
    if let Some(db) = db {
        let db_parts: Vec<&[T]> = partials.iter().map(|(_, p)| &p[..]).collect();
        sum_in_order(db, &db_parts);
    }
}

/// `out[i] = parts[0][i] + parts[1][i] + ...`, left to right.
fn sum_in_order<T: Element>(out: &mut [T], parts: &[&[T]]) {
    const BLOCK: usize = 4096;
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, out_block)| {
            let mut parts = parts.iter();
            match parts.next() {
                Some(first) => out_block.copy_from_slice(&first[b * BLOCK..][..out_block.len()]),
                None => out_block.fill(T::ZERO),
            }
            for part in parts {
                for (o, p) in out_block.iter_mut().zip(&part[b * BLOCK..]) {
                    *o += *p;
                }
            }
        });
}
