//! Weight gradient of layers with few filter taps (`C·R·S` small), by direct dot products.
//!
//! `dW[k][c, r, s] = Σ_n Σ_{p,q} dy[n, k, p, q] · x[n, c, p + r·dil_h − pad_h, q + s·dil_w − pad_w]`
//! for stride 1. Lowered to a GEMM this is, per image, a `K × C·R·S` product with a
//! reduction over the `P·Q` pixels: for a first layer (LeNet's 1 × 5 × 5 filters, 20 of
//! them) the result is a few hundred numbers, the GEMM's tiles are mostly padding and the
//! packing and im2col cost more than the multiply-adds.
//!
//! Here each image is copied into zero-padded planes of width `Wp` ([`PaddedLayout`]) and
//! each `dy` plane into rows of the same width (the `Wp − Q` junk columns zero). Then
//! output pixel `(p, q)` sits at flat index `t = p·Wp + q` in `dy`, and reads tap
//! `(c, r, s)` of the input at `t + offset(c, r, s)`, one fixed offset per tap. Every
//! gradient element is a dot product of two flat vectors; [`dot_block`] computes
//! `KB × TB` of them at once (`KB` filters sharing each input load, `TB` taps sharing each
//! `dy` load), in 16-lane accumulators that persist across the images of a task.
//!
//! Parallelism: a fixed number of image chunks, each summing into its own lanes; the
//! chunks' results are added in chunk order. The order of every sum depends only on the
//! shapes, so results do not depend on the thread count.

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

/// Whether this module computes the weight gradient: ungrouped, stride 1, at most 32 taps
/// (`C·R·S`) and 64 filters, moderate padding. Measured: LeNet's first layer (25 taps,
/// 20 filters) runs about 3× faster than through the GEMM.
pub(crate) fn applies(geo: &ConvGeometry) -> bool {
    geo.groups == 1
        && geo.h.stride == 1
        && geo.w.stride == 1
        && geo.col_rows <= 32
        && geo.out_channels <= 64
        && PaddedLayout::new(geo).is_some()
}

/// Image chunks (tasks): fixed by the batch size alone.
fn chunks(geo: &ConvGeometry) -> usize {
    geo.batch.clamp(1, MAX_CHUNKS)
}

/// The parts of a task's scratch: (padded image, flat `dy` planes, lanes).
fn scratch_parts(geo: &ConvGeometry, layout: &PaddedLayout) -> (usize, usize, usize) {
    // The junk columns of the last rows read up to (S−1)·dil_w past the last channel,
    // and the rounding of the flat length up to LANES − 1 more.
    let reach = (geo.w.kernel - 1) * geo.w.dilation + LANES;
    let padded = layout.buffer_len(geo.in_channels) + reach;
    let flat = geo.out_channels * flat_len(geo);
    let lanes = geo.out_channels * geo.col_rows * LANES;
    (padded, flat, lanes)
}

/// Flat length of one `dy` plane: `P` rows of `Wp`, rounded up to whole lanes (the
/// rounding is zero, like the junk columns), so the dot products have no tail.
fn flat_len(geo: &ConvGeometry) -> usize {
    (geo.h.output * (geo.w.input + 2 * geo.w.padding)).next_multiple_of(LANES)
}

/// Elements of the scratch each task holds.
pub(crate) fn scratch_len(geo: &ConvGeometry) -> usize {
    let layout = PaddedLayout::new(geo).expect("applies() checked the padding");
    let (padded, flat, lanes) = scratch_parts(geo, &layout);
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
) {
    let layout = PaddedLayout::new(geo).expect("applies() checked the padding");
    let (k_count, taps) = (geo.out_channels, geo.col_rows);
    let x_image = geo.in_channels * geo.in_plane;
    let y_image = k_count * geo.out_plane;
    let wp = geo.w.input + 2 * geo.w.padding;
    let (q_count, flat) = (geo.w.output, flat_len(geo));
    let offsets: Vec<usize> = (0..taps)
        .map(|row| {
            let (c, tap) = (row / geo.taps, row % geo.taps);
            let (r, s) = (tap / geo.w.kernel, tap % geo.w.kernel);
            c * layout.channel_len + r * geo.h.dilation * wp + s * geo.w.dilation
        })
        .collect();
    let (padded_len, flat_total, lanes_len) = scratch_parts(geo, &layout);
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
                pad_planes(geo, &layout, &x[n * x_image..][..x_image], padded);
                let dy_n = &dy[n * y_image..][..y_image];
                for (k, (plane, to)) in dy_n
                    .chunks_exact(geo.out_plane)
                    .zip(dy_flat.chunks_exact_mut(flat))
                    .enumerate()
                {
                    let (rows, rounding) = to.split_at_mut(geo.h.output * wp);
                    for (row, dst) in plane.chunks_exact(q_count).zip(rows.chunks_exact_mut(wp)) {
                        dst[..q_count].copy_from_slice(row);
                        dst[q_count..].fill(T::ZERO);
                    }
                    rounding.fill(T::ZERO);
                    db_part[k] += sum(plane);
                }
                for k0 in (0..k_count).step_by(KB) {
                    for t0 in (0..taps).step_by(TB) {
                        dot_block(
                            dy_flat, flat, k0, k_count, padded, &offsets, t0, lanes, taps,
                        );
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
        *d = acc;
    }
    if let Some(db) = db {
        for (k, d) in db.iter_mut().enumerate() {
            let mut acc = partials[geo.w_len + k];
            for chunk in 1..chunk_count {
                acc += partials[chunk * stride + geo.w_len + k];
            }
            *d = acc;
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
    // `flat` is a whole number of lanes (see `flat_len`): no tail, so the accumulators
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
