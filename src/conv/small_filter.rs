//! Weight gradient of layers with few filter taps (`C·R·S` small), by direct dot products.
//!
//! `dW[k][c, r, s] = Σ_n Σ_{p,q} dy[n, k, p, q] · x[n, c, p·stride_h + r·dil_h − pad_h,
//! q·stride_w + s·dil_w − pad_w]`. Lowered to a GEMM this is, per image, a `K × C·R·S`
//! product with a reduction over the `P·Q` pixels: for a first layer (LeNet's 1 × 5 × 5
//! filters, 20 of them; ResNet's 3 × 7 × 7 stem) the GEMM's tiles are partly padding and
//! packing the transposed column matrix costs about as much as a third of the
//! multiply-adds.
//!
//! Here each image is copied into zero-padded planes split into row and column phases
//! ([`PaddedLayout::with_row_phases`], rows of `row_len` elements), and each `dy` plane
//! into rows of the same width (the `row_len − Q` junk columns zero). Then output pixel
//! `(p, q)` sits at flat index `t = p·row_len + q` in `dy`, and reads tap `(c, r, s)` of
//! the input at `t + offset(c, r, s)`, one fixed offset per tap. Every gradient element
//! is a dot product of two flat vectors; [`dot_block`] computes `KB × TB` of them at once
//! (`KB` filters sharing each input load, `TB` taps sharing each `dy` load), in 16-lane
//! accumulators that persist across the images of a task. The flat `dy` is built one
//! band of output rows at a time, so that a band of all `K` planes stays in L2 while
//! every tap block reads it.
//!
//! Parallelism: a fixed number of image chunks, each summing into its own lanes; the
//! chunks' results are added in chunk order. The order of every sum depends only on the
//! shapes, so results do not depend on the thread count.

use super::Write;
use crate::element::Element;
use crate::im2col::{PaddedLayout, pad_planes};
use crate::parallel::*;
use crate::scratch::{Slot, take, take_from};
use crate::shape::ConvGeometry;
use crate::simd::{madd, sum};

/// Lanes of each accumulator (one AVX-512 vector of f32).
const LANES: usize = 16;
/// Filters per block: each input load feeds `KB` accumulators.
const KB: usize = 4;
/// Taps per block: each `dy` load feeds `TB` accumulators; `KB × TB` = 24 accumulators
/// plus the loads fit the 32 vector registers.
const TB: usize = 5;
/// At most this many image chunks (tasks).
const MAX_CHUNKS: usize = 8;

/// Most taps (`C·R·S`) this module takes: its lanes, `K · C·R·S · 16` accumulators, stay
/// under 1 MiB (f32), and past this the GEMM's packing is a small part of its time.
const MAX_TAPS: usize = 160;
/// Most filters: likewise.
const MAX_FILTERS: usize = 64;
/// Bytes of one band of flat `dy` rows (all `K` planes). Each [`dot_block`] call runs
/// over a whole band between loading and storing its accumulators: on ResNet's stem,
/// bands of 256 KiB, 1, 2 and 4 MiB (the whole image) gave 78, 87, 89 and 90 GFLOP/s
/// (1 thread). 2 MiB keeps a task's scratch under 4 MiB.
const BAND_BYTES: usize = 2 << 20;

/// Whether this module computes the weight gradient for `elem_size`-byte elements:
/// ungrouped, moderate padding, at most a quarter more flat positions than pixels (junk
/// columns: `row_len ≤ 1.25·Q`), and
/// - f32: at most [`MAX_TAPS`] taps (`C·R·S`) and [`MAX_FILTERS`] filters;
/// - wider elements: stride 1 and at most 32 taps. The `KB × TB` register block is sized
///   for 16-lane f32 vectors; in f64 it spills, and ResNet's stem ran 15% slower here
///   than through the GEMM.
///
/// Measured, f32, 1 thread: LeNet's first layer (25 taps, 20 filters) about 3× faster
/// than through the GEMM, ResNet's stem (147 taps, 64 filters, stride 2) about 1.25×;
/// LeNet's second layer (500 taps, a 12-wide row for 8 outputs) 3× slower, hence the
/// limits.
pub(crate) fn applies(geo: &ConvGeometry, elem_size: usize) -> bool {
    if geo.col_rows > 32 && super::backward_weights::uses_wide_form(geo) {
        // The GEMM reading the column matrix in place is faster there: the ResNet stem
        // (147 taps) on the Intel host, 1 thread, paired median 1.44 over 5 rounds, best
        // 45.6 → 106.0 GFLOP/s. LeNet's first layer (25 taps) stays here (27–30 against
        // 21–23).
        return false;
    }
    let sized = if elem_size <= 4 {
        geo.col_rows <= MAX_TAPS
    } else {
        geo.col_rows <= 32 && geo.h.stride == 1 && geo.w.stride == 1
    };
    sized
        && geo.groups == 1
        && geo.out_channels <= MAX_FILTERS
        && PaddedLayout::with_row_phases(geo).is_some_and(|layout| {
            layout.row_len.saturating_mul(4) <= geo.w.output.saturating_mul(5)
        })
}

/// Image chunks (tasks): fixed by the batch size alone.
fn chunks(geo: &ConvGeometry) -> usize {
    geo.batch.clamp(1, MAX_CHUNKS)
}

/// The parts of a task's scratch: (padded image, flat `dy` band, lanes), in elements of
/// `elem_size` bytes.
fn scratch_parts(
    geo: &ConvGeometry,
    layout: &PaddedLayout,
    elem_size: usize,
) -> (usize, usize, usize) {
    // The junk columns of the last rows read up to row_len − Q past the last pixel of
    // the last channel, and the rounding of a band up to LANES − 1 more.
    let reach = layout.row_len - geo.w.output + LANES;
    let padded = layout.buffer_len(geo.in_channels) + reach;
    let flat = geo.out_channels * band_flat_len(layout, band_rows(geo, layout, elem_size));
    let lanes = geo.out_channels * geo.col_rows * LANES;
    (padded, flat, lanes)
}

/// Output rows per band of flat `dy`: as many as fit [`BAND_BYTES`], at least one.
fn band_rows(geo: &ConvGeometry, layout: &PaddedLayout, elem_size: usize) -> usize {
    let row_bytes = (geo.out_channels * elem_size).saturating_mul(layout.row_len);
    (BAND_BYTES / row_bytes.max(1)).clamp(1, geo.h.output.max(1))
}

/// Flat length of `rows` output rows of one `dy` plane: `rows · row_len`, rounded up to
/// whole lanes (the rounding is zero, like the junk columns), so the dot products have
/// no tail.
fn band_flat_len(layout: &PaddedLayout, rows: usize) -> usize {
    (rows * layout.row_len).next_multiple_of(LANES)
}

/// Elements of the scratch each task holds.
pub(crate) fn scratch_len(geo: &ConvGeometry, elem_size: usize) -> usize {
    let layout = PaddedLayout::with_row_phases(geo).expect("applies() checked the padding");
    let (padded, flat, lanes) = scratch_parts(geo, &layout, elem_size);
    padded + flat + lanes
}

/// Elements of the per-chunk results (`dw` plus `db`), held by the calling thread.
pub(crate) fn partial_len(geo: &ConvGeometry) -> usize {
    chunks(geo) * (geo.w_len + geo.out_channels)
}

pub(crate) fn backward_weights<T: Element>(
    geo: &ConvGeometry,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: Option<&mut [T]>,
    write: Write,
) {
    let layout = PaddedLayout::with_row_phases(geo).expect("applies() checked the padding");
    let (k_count, taps) = (geo.out_channels, geo.col_rows);
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = k_count * geo.out_plane;
    let (q_count, row_len) = (geo.w.output, layout.row_len);
    // The taps' offsets on the stack (applies() bounds them by MAX_TAPS): no allocation
    // per call.
    let mut offset_table = [0usize; MAX_TAPS];
    let offsets = &mut offset_table[..taps];
    for (row, o) in offsets.iter_mut().enumerate() {
        let (c, tap) = (row / geo.taps, row % geo.taps);
        *o = layout.tap_offset(geo, c, tap / geo.w.kernel, tap % geo.w.kernel);
    }
    let offsets = &*offsets;
    let band = band_rows(geo, &layout, size_of::<T>());
    let (padded_len, flat_total, lanes_len) = scratch_parts(geo, &layout, size_of::<T>());
    let chunk_count = chunks(geo);
    let stride = geo.w_len + k_count;
    let mut partials = take_from::<T>(Slot::Partials, chunk_count * stride);
    partials.par_chunks_mut(stride).enumerate().for_each_init(
        || take::<T>(padded_len + flat_total + lanes_len),
        |scratch, (chunk, part)| {
            let (padded, rest) = scratch.split_at_mut(padded_len);
            let (dy_flat, lanes) = rest.split_at_mut(flat_total);
            lanes.fill(T::ZERO);
            let (dw_part, db_part) = part.split_at_mut(geo.w_len);
            db_part.fill(T::ZERO);
            let images = chunk * geo.batch / chunk_count..(chunk + 1) * geo.batch / chunk_count;
            for n in images {
                let (body, reach) = padded.split_at_mut(layout.buffer_len(geo.in_channels));
                pad_planes(geo, &layout, &x[n * x_image..][..x_image], body);
                reach.fill(T::ZERO);
                let dy_n = &dy[n * y_image..][..y_image];
                for (d, plane) in db_part.iter_mut().zip(dy_n.chunks_exact(geo.out_plane)) {
                    *d += sum(plane);
                }
                for p0 in (0..geo.h.output).step_by(band) {
                    let rows = band.min(geo.h.output - p0);
                    let flat = band_flat_len(&layout, rows);
                    // The band's rows of every dy plane, row_len apart, junk zeroed.
                    for (plane, to) in dy_n
                        .chunks_exact(geo.out_plane)
                        .zip(dy_flat.chunks_exact_mut(flat))
                    {
                        let (body, rounding) = to.split_at_mut(rows * row_len);
                        let src = &plane[p0 * q_count..][..rows * q_count];
                        for (row, dst) in src
                            .chunks_exact(q_count)
                            .zip(body.chunks_exact_mut(row_len))
                        {
                            dst[..q_count].copy_from_slice(row);
                            dst[q_count..].fill(T::ZERO);
                        }
                        rounding.fill(T::ZERO);
                    }
                    let x_band = &padded[p0 * row_len..];
                    for k0 in (0..k_count).step_by(KB) {
                        for t0 in (0..taps).step_by(TB) {
                            dot_block(dy_flat, flat, k0, k_count, x_band, offsets, t0, lanes, taps);
                        }
                    }
                }
            }
            // Each lane vector to one number, in a fixed order.
            for (d, l) in dw_part.iter_mut().zip(lanes.chunks_exact(LANES)) {
                *d = sum(l);
            }
        },
    );
    // Fixed-order reduction over the chunks.
    for (i, d) in dw.iter_mut().enumerate() {
        let mut acc = partials[i];
        for chunk in 1..chunk_count {
            acc += partials[chunk * stride + i];
        }
        write.put(d, acc);
    }
    if let Some(db) = db {
        for (k, d) in db.iter_mut().enumerate() {
            let mut acc = partials[geo.w_len + k];
            for chunk in 1..chunk_count {
                acc += partials[chunk * stride + geo.w_len + k];
            }
            write.put(d, acc);
        }
    }
}

crate::dispatch! {
    /// Adds, for filters `k0 .. k0 + KB` and taps `t0 .. t0 + TB` (clamped to the counts),
    /// `dy_flat[k] ⊙ padded[offsets[tap] ..]` over the whole flat plane into the
    /// accumulator lanes `lanes[(k·taps + tap)·LANES ..]`: lane `j` takes the flat
    /// positions `≡ j (mod LANES)`, in order.
    #[allow(clippy::too_many_arguments)]
    fn dot_block<T: Element>(dy_flat: &[T], flat: usize, k0: usize, k_count: usize, padded: &[T], offsets: &[usize], t0: usize, lanes: &mut [T], taps: usize) = dot_block_body;
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dot_block_body<T: Element, const FMA: bool>(
    dy_flat: &[T],
    flat: usize,
    k0: usize,
    k_count: usize,
    padded: &[T],
    offsets: &[usize],
    t0: usize,
    lanes: &mut [T],
    taps: usize,
) {
    // Out-of-range filters and taps repeat the last valid one; their sums are dropped.
    let ks: [usize; KB] = std::array::from_fn(|i| (k0 + i).min(k_count - 1));
    let ts: [usize; TB] = std::array::from_fn(|j| (t0 + j).min(taps - 1));
    let dys: [&[T]; KB] = std::array::from_fn(|i| &dy_flat[ks[i] * flat..][..flat]);
    let xs: [&[T]; TB] = std::array::from_fn(|j| &padded[offsets[ts[j]]..][..flat]);
    let mut acc = [[[T::ZERO; LANES]; TB]; KB];
    for (i, row) in acc.iter_mut().enumerate() {
        for (j, a) in row.iter_mut().enumerate() {
            let at = (ks[i] * taps + ts[j]) * LANES;
            a.copy_from_slice(&lanes[at..at + LANES]);
        }
    }
    // `flat` is a whole number of lanes (see `band_flat_len`): no tail, so the accumulators
    // live in registers for the whole loop.
    for t in (0..flat).step_by(LANES) {
        let d: [[T; LANES]; KB] =
            std::array::from_fn(|i| dys[i][t..t + LANES].try_into().expect("LANES elements"));
        for (j, x) in xs.iter().enumerate() {
            let xv: &[T; LANES] = x[t..t + LANES].try_into().expect("LANES elements");
            for (i, row) in acc.iter_mut().enumerate() {
                row[j] = std::array::from_fn(|l| madd::<T, FMA>(d[i][l], xv[l], row[j][l]));
            }
        }
    }
    // Store back only the valid (filter, tap) pairs, each once.
    for (i, row) in acc.iter().enumerate() {
        if k0 + i >= k_count {
            break;
        }
        for (j, a) in row.iter().enumerate() {
            if t0 + j >= taps {
                break;
            }
            let at = ((k0 + i) * taps + t0 + j) * LANES;
            lanes[at..at + LANES].copy_from_slice(a);
        }
    }
}
