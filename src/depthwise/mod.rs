//! Direct kernels for depthwise convolution (`C/groups = 1`: every filter reads one input
//! channel), for all three passes.
//!
//! Lowered to GEMM, a depthwise layer is one GEMM per channel with a single row and an
//! `R·S` reduction: nothing for a cache-blocked kernel to block. Here each channel plane is
//! processed directly.
//!
//! **Stride 1** (the common case) becomes a 1-D problem. The input plane is copied into a
//! zero-padded buffer of width `Wp = W + 2·pad_w`; then output pixel `(p, q)`, stored at
//! flat index `t = p·Wp + q`, reads tap `(r, s)` at `t + r·dil_h·Wp + s·dil_w`, a fixed
//! offset. So
//!
//! - forward: `y_flat[t] = b + Σ_taps w[tap] · xpad[t + offset[tap]]`, a correlation over
//!   the flattened plane with long, border-free vectors ([`correlate_flat`]); the `Wp − Q`
//!   junk columns per row are computed and dropped;
//! - input delta: the same correlation of the shifted, zero-padded `dy` plane with the
//!   flipped kernel;
//! - weight gradient: `dw[tap] += Σ_t dy_flat[t] · xpad[t + offset[tap]]`, one dot product
//!   per tap over the flattened plane ([`dot_flat`]).
//!
//! The commonest depthwise layer, 3×3 with stride 1 and no dilation, has its own AVX-512
//! and AVX2 kernels ([`rows3`]) for all three passes: AVX-512 reads the planes directly
//! (with masked loads at the edges), AVX2 a zero-padded copy of each; each input row
//! they load serves three output rows.
//!
//! Other strides use straightforward loops on the padded plane (forward) or the scatter
//! form (backward). Channel multipliers (`K = m·C`) are handled: output channel `k` reads
//! input channel `k / m`. Parallelism is over channel planes; every sum has a fixed order,
//! so results do not depend on the thread count.

mod rows3;

pub use rows3::Rows3;
use rows3::Rows3Layer;

use crate::activation::{Activation, apply_in_place};
use crate::conv::Write;
use crate::element::Element;
use crate::parallel::*;
use crate::scratch::{Scratch, take};
use crate::shape::ConvGeometry;
use crate::simd::madd;

/// Width of the register block of the flat kernels.
const LANES: usize = 16;

// The weight gradient keeps LANES partial sums per tap, in the layout the 3×3 kernel adds to.
const _: () = assert!(LANES == rows3::SUM_BLOCK);

fn unit_stride(geo: &ConvGeometry) -> bool {
    geo.h.stride == 1 && geo.w.stride == 1
}

/// Whether the direct kernels suit this layer's padding. They copy each plane into a
/// zero-padded buffer; a padding far beyond the kernel (legal: only the kernel must fit)
/// would make that buffer much larger than the data, so such layers take the GEMM path,
/// which never materializes the padding. The bound allows 4× the input and output planes.
///
/// The scratch of any pass ([`scratch_len`]) is at most 7 padded planes, plus for the
/// weight gradient `FILTER_BLOCK·(taps + 1)·LANES` lane sums, at most 256 more (the taps
/// fit in the padded plane); it must also be addressable in bytes (`f64`), so
/// [`Conv2d::workspace`](crate::Conv2d::workspace) cannot overflow even for valid plans
/// with astronomically large planes.
pub(crate) fn padding_is_moderate(geo: &ConvGeometry) -> bool {
    let (hp, wp) = padded_dims(geo);
    let limit = (geo.in_plane + geo.out_plane)
        .saturating_mul(4)
        .saturating_add(1024);
    let addressable = |padded: usize| {
        padded
            .checked_mul((7 + 2 * FILTER_BLOCK * LANES) * size_of::<f64>())
            .is_some_and(|bytes| bytes <= isize::MAX as usize)
    };
    hp.checked_mul(wp)
        .is_some_and(|padded| padded <= limit && addressable(padded))
}

/// Size of the zero-padded input plane: `(H + 2·pad_h) × (W + 2·pad_w)`.
fn padded_dims(geo: &ConvGeometry) -> (usize, usize) {
    (
        geo.h.input + 2 * geo.h.padding,
        geo.w.input + 2 * geo.w.padding,
    )
}

/// A task's scratch, zeroed on first use. Later uses overwrite the same positions, so
/// the zeros of the padding (and of junk columns) survive from plane to plane.
struct Planes<T: Element> {
    buffer: Scratch<T>,
    zeroed: bool,
}

impl<T: Element> Planes<T> {
    fn new(len: usize) -> Self {
        Planes {
            buffer: take(len),
            zeroed: false,
        }
    }

    /// The buffer, zero-filled the first time it is asked for.
    fn get(&mut self) -> &mut [T] {
        if !self.zeroed {
            self.buffer.fill(T::ZERO);
            self.zeroed = true;
        }
        &mut self.buffer
    }
}

crate::dispatch! {
    /// Copies `src` (rows of `src_w`) into `dst` (rows of `dst_w`), moved down by `shift_h`
    /// rows and right by `shift_w` columns; what falls outside `dst` is dropped. Positions of
    /// `dst` not covered keep their contents. Rows are copied with inline vector moves
    /// ([`copy_exact`](crate::simd::copy_exact)): a `memcpy` call per row of a small plane
    /// cost as much as the convolution itself.
    fn place<T: Element>(
        src: &[T],
        src_w: usize,
        dst: &mut [T],
        dst_w: usize,
        shift_h: isize,
        shift_w: isize,
    ) = place_body;
}

#[inline(always)]
fn place_body<T: Element, const FMA: bool>(
    src: &[T],
    src_w: usize,
    dst: &mut [T],
    dst_w: usize,
    shift_h: isize,
    shift_w: isize,
) {
    // Source columns c with 0 <= c + shift_w < dst_w.
    let c0 = (-shift_w).max(0) as usize;
    let c1 = ((dst_w as isize - shift_w).max(0) as usize).min(src_w);
    if c0 >= c1 {
        return;
    }
    for (r, row) in src.chunks_exact(src_w).enumerate() {
        let target = r as isize + shift_h;
        if target < 0 {
            continue;
        }
        // The last destination row may be partial (a flat buffer that ends mid-row).
        let start = target as usize * dst_w + (c0 as isize + shift_w) as usize;
        if start >= dst.len() {
            break;
        }
        let len = (c1 - c0).min(dst.len() - start);
        crate::simd::copy_exact(&mut dst[start..start + len], &row[c0..c0 + len]);
    }
}

/// Flat offsets of the taps in a plane of width `width`: `r·dil_h·width + s·dil_w`.
fn tap_offsets(geo: &ConvGeometry, width: usize) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(geo.taps);
    for r in 0..geo.h.kernel {
        for s in 0..geo.w.kernel {
            offsets.push(r * geo.h.dilation * width + s * geo.w.dilation);
        }
    }
    offsets
}

/// Elements of the scratch one task of `pass` uses (padded plane plus flat output), for
/// [`Conv2d::workspace`](crate::Conv2d::workspace).
pub(crate) fn scratch_len(geo: &ConvGeometry, pass: crate::Pass) -> usize {
    let (hp, wp) = padded_dims(geo);
    let (p, q) = (geo.h.output, geo.w.output);
    match pass {
        crate::Pass::Forward => {
            let general = if unit_stride(geo) {
                hp * wp + (p - 1) * wp + q
            } else {
                phased_len(geo)
            };
            // The 3×3 row kernel's padded copy, in the same buffer.
            general.max(Rows3Layer::of(geo).map_or(0, |layer| layer.padded_len()))
        }
        crate::Pass::BackwardData if unit_stride(geo) => {
            if let Some(layer) = rows3_input_delta(geo) {
                return layer.padded_len();
            }
            let (eh, ew) = (
                (geo.h.kernel - 1) * geo.h.dilation,
                (geo.w.kernel - 1) * geo.w.dilation,
            );
            (geo.h.input + eh) * (geo.w.input + ew)
                + (geo.h.input - 1) * (geo.w.input + ew)
                + geo.w.input
        }
        crate::Pass::BackwardData => 0,
        crate::Pass::BackwardWeights => {
            let general = hp * wp + (p - 1) * wp + q;
            let rows3 = Rows3Layer::of(geo).map_or(0, |layer| layer.padded_len());
            general.max(rows3) + FILTER_BLOCK * (geo.taps + 1) * LANES
        }
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
    let (hp, wp) = padded_dims(geo);
    let q = geo.w.output;
    let (pad_h, pad_w) = (geo.h.padding as isize, geo.w.padding as isize);
    let offsets = tap_offsets(geo, wp);
    let multiplier = geo.filters_per_group;
    let rows3 = Rows3Layer::of(geo);
    y.par_chunks_exact_mut(geo.out_plane)
        .enumerate()
        .for_each_init(
            || Planes::<T>::new(scratch_len(geo, crate::Pass::Forward)),
            |planes, (plane, y_plane)| {
                let (n, k) = (plane / geo.out_channels, plane % geo.out_channels);
                let c = k / multiplier;
                let x_plane = &x[(n * geo.in_channels + c) * geo.in_plane..][..geo.in_plane];
                let w_k = &w[k * geo.taps..][..geo.taps];
                let b = bias.map_or(T::ZERO, |b| b[k]);
                if let Some(layer) = &rows3
                    && T::rows3(layer, x_plane, w_k, b, y_plane, false, planes.get())
                {
                    apply_in_place(act, y_plane);
                    return;
                }
                if !unit_stride(geo) {
                    let phased = &mut planes.get()[..phased_len(geo)];
                    place_phased(geo, x_plane, phased);
                    correlate_phased(geo, phased, w_k, b, y_plane);
                    apply_in_place(act, y_plane);
                    return;
                }
                let (padded, rest) = planes.get().split_at_mut(hp * wp);
                place(x_plane, geo.w.input, padded, wp, pad_h, pad_w);
                {
                    // The flat output's rows of `wp` (the buffer may be longer: it also
                    // holds the row kernel's padded copy where that runs).
                    let flat = &mut rest[..(geo.h.output - 1) * wp + q];
                    correlate_flat(padded, &offsets, w_k, b, flat);
                    for (oh, row) in y_plane.chunks_exact_mut(q).enumerate() {
                        row.copy_from_slice(&flat[oh * wp..][..q]);
                    }
                    apply_in_place(act, y_plane);
                }
            },
        );
}

/// The 3×3 row kernel's sizes where it computes the input delta of `geo`: one filter per
/// channel (it writes `dx`, it cannot add filters' contributions to it), a layer of its
/// kind, and a CPU it runs on.
fn rows3_input_delta(geo: &ConvGeometry) -> Option<Rows3Layer> {
    if geo.filters_per_group != 1 || !unit_stride(geo) || !rows3::available() {
        return None;
    }
    Rows3Layer::for_input_delta(geo)
}

/// Input delta, plane by plane; `write` stores each finished plane (see [`Write::into`]).
pub(crate) fn backward_data<T: Element>(
    geo: &ConvGeometry,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    write: Write,
) {
    if !unit_stride(geo) {
        return backward_data_scatter(geo, dy, w, dx, write);
    }
    // dx[ih][iw] = Σ_{r,s} w[r][s] · dy[ih + pad_h − r·dil_h][iw + pad_w − s·dil_w].
    // With dy shifted by ((R−1)·dil_h − pad_h, (S−1)·dil_w − pad_w) into a zeroed plane of
    // width wq = W + (S−1)·dil_w, tap (r, s) sits at the flat offset of the flipped tap.
    let (eh, ew) = (
        (geo.h.kernel - 1) * geo.h.dilation,
        (geo.w.kernel - 1) * geo.w.dilation,
    );
    let (hq, wq) = (geo.h.input + eh, geo.w.input + ew);
    let (shift_h, shift_w) = (
        eh as isize - geo.h.padding as isize,
        ew as isize - geo.w.padding as isize,
    );
    let multiplier = geo.filters_per_group;
    // The same correlation by the 3×3 row kernel, from each dy plane (AVX2: its padded
    // copy in the task's buffer) with the flipped filter.
    if let Some(layer) = rows3_input_delta(geo) {
        dx.par_chunks_exact_mut(geo.in_plane)
            .zip(dy.par_chunks_exact(geo.out_plane))
            .enumerate()
            .for_each_init(
                || take::<T>(layer.padded_len()),
                |padded, (plane, (dx_plane, dy_plane))| {
                    let k = plane % geo.out_channels;
                    let mut flipped = [T::ZERO; 9];
                    for (f, &v) in flipped.iter_mut().zip(w[k * 9..][..9].iter().rev()) {
                        *f = v;
                    }
                    // Accumulating, the kernel adds its finished sums to dx itself.
                    let accumulate = write == Write::Accumulate;
                    if accumulate {
                        crate::conv::prefetch(dx_plane);
                    }
                    let done = T::rows3(
                        &layer,
                        dy_plane,
                        &flipped,
                        T::ZERO,
                        dx_plane,
                        accumulate,
                        padded,
                    );
                    debug_assert!(done, "rows3_available said yes");
                },
            );
        return;
    }
    let flipped: Vec<usize> = tap_offsets(geo, wq).into_iter().rev().collect();
    dx.par_chunks_exact_mut(geo.in_plane)
        .enumerate()
        .for_each_init(
            || Planes::<T>::new(scratch_len(geo, crate::Pass::BackwardData)),
            |planes, (plane, dx_plane)| {
                let (n, c) = (plane / geo.in_channels, plane % geo.in_channels);
                let (shifted, flat) = planes.get().split_at_mut(hq * wq);
                write.into(dx_plane, |dx_plane| {
                    for m in 0..multiplier {
                        let k = c * multiplier + m;
                        let dy_plane =
                            &dy[(n * geo.out_channels + k) * geo.out_plane..][..geo.out_plane];
                        place(dy_plane, geo.w.output, shifted, wq, shift_h, shift_w);
                        correlate_flat(
                            shifted,
                            &flipped,
                            &w[k * geo.taps..][..geo.taps],
                            T::ZERO,
                            flat,
                        );
                        for (ih, row) in dx_plane.chunks_exact_mut(geo.w.input).enumerate() {
                            let src = &flat[ih * wq..][..geo.w.input];
                            if m == 0 {
                                row.copy_from_slice(src);
                            } else {
                                for (d, s) in row.iter_mut().zip(src) {
                                    *d += *s;
                                }
                            }
                        }
                    }
                });
            },
        );
}

/// Input delta for strided layers: the adjoint scatter, one `axpy` per (output row, tap).
fn backward_data_scatter<T: Element>(
    geo: &ConvGeometry,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    write: Write,
) {
    let multiplier = geo.filters_per_group;
    let (ha, wa) = (&geo.h, &geo.w);
    dx.par_chunks_exact_mut(geo.in_plane)
        .enumerate()
        .for_each(|(plane, dx_plane)| {
            write.into(dx_plane, |dx_plane| {
                let (n, c) = (plane / geo.in_channels, plane % geo.in_channels);
                dx_plane.fill(T::ZERO);
                for m in 0..multiplier {
                    let k = c * multiplier + m;
                    let dy_plane =
                        &dy[(n * geo.out_channels + k) * geo.out_plane..][..geo.out_plane];
                    let w_k = &w[k * geo.taps..][..geo.taps];
                    for (oh, dy_row) in dy_plane.chunks_exact(wa.output).enumerate() {
                        for r in 0..ha.kernel {
                            let (lo, hi) = ha.valid_outputs(r);
                            if oh < lo || oh >= hi {
                                continue;
                            }
                            let dx_row =
                                &mut dx_plane[ha.input_index(oh, r) * wa.input..][..wa.input];
                            for (s, &wv) in w_k[r * wa.kernel..][..wa.kernel].iter().enumerate() {
                                let (a, b) = wa.valid_outputs(s);
                                if a < b {
                                    let start = wa.input_index(a, s);
                                    for (d, &v) in dx_row[start..]
                                        .iter_mut()
                                        .step_by(wa.stride)
                                        .zip(&dy_row[a..b])
                                    {
                                        *d += wv * v;
                                    }
                                }
                            }
                        }
                    }
                }
            })
        });
}

/// Filters per task of the weight gradient. A task walks the batch once for all of them,
/// so it reads `FILTER_BLOCK` consecutive planes of `x` and of `dy` per image: runs long
/// enough for the stream prefetchers, where one plane per image was not.
const FILTER_BLOCK: usize = 8;

pub(crate) fn backward_weights<T: Element>(
    geo: &ConvGeometry,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
    db: Option<&mut [T]>,
    write: Write,
) {
    let init = || Planes::<T>::new(scratch_len(geo, crate::Pass::BackwardWeights));
    let block = geo.taps * FILTER_BLOCK;
    match db {
        Some(db) => dw
            .par_chunks_mut(block)
            .zip(db.par_chunks_mut(FILTER_BLOCK))
            .enumerate()
            .for_each_init(init, |planes, (i, (dw, db))| {
                weight_gradient_block(geo, x, dy, i * FILTER_BLOCK, planes, dw, Some(db), write);
            }),
        None => dw
            .par_chunks_mut(block)
            .enumerate()
            .for_each_init(init, |planes, (i, dw)| {
                weight_gradient_block(geo, x, dy, i * FILTER_BLOCK, planes, dw, None, write);
            }),
    }
}

/// The weight (and bias) gradient of the filters `first..first + dw.len() / taps`: for
/// each image, for each filter, one pass over its planes. Each filter's sums run over the
/// images in order, whatever the blocks, so the bits do not depend on the thread count.
/// The sums are finished in scratch and stored into `dw` and `db` once, by `write`.
#[allow(clippy::too_many_arguments)]
fn weight_gradient_block<T: Element>(
    geo: &ConvGeometry,
    x: &[T],
    dy: &[T],
    first: usize,
    planes: &mut Planes<T>,
    dw: &mut [T],
    mut db: Option<&mut [T]>,
    write: Write,
) {
    let (hp, wp) = padded_dims(geo);
    let q = geo.w.output;
    let (pad_h, pad_w) = (geo.h.padding as isize, geo.w.padding as isize);
    let offsets = tap_offsets(geo, wp);
    let flat_len = (geo.h.output - 1) * wp + q;
    let filters = dw.len() / geo.taps;
    let x_plane = |n: usize, k: usize| {
        let c = k / geo.filters_per_group;
        &x[(n * geo.in_channels + c) * geo.in_plane..][..geo.in_plane]
    };
    let dy_plane =
        |n: usize, k: usize| &dy[(n * geo.out_channels + k) * geo.out_plane..][..geo.out_plane];
    // Per filter LANES partial sums per tap and for the bias, carried over the whole batch
    // and reduced once at the end; then the padded input plane and dy laid out with the
    // padded plane's row stride (wp), its junk columns zero (the 3×3 row kernel: its
    // padded copy).
    let (lanes, work) = planes
        .get()
        .split_at_mut(FILTER_BLOCK * (geo.taps + 1) * LANES);
    let lanes = &mut lanes[..filters * (geo.taps + 1) * LANES];
    lanes.fill(T::ZERO);
    let rows3 = Rows3Layer::of(geo).filter(|_| rows3::available());
    let (padded, rest) = work.split_at_mut(if rows3.is_some() { 0 } else { hp * wp });
    let (dy_flat, rows3_scratch) = rest.split_at_mut(if rows3.is_some() { 0 } else { flat_len });
    for n in 0..geo.batch {
        for (f, lanes) in lanes.chunks_exact_mut((geo.taps + 1) * LANES).enumerate() {
            let k = first + f;
            if let Some(layer) = &rows3 {
                let done = T::rows3_weight_gradient(
                    layer,
                    x_plane(n, k),
                    dy_plane(n, k),
                    lanes,
                    db.is_some(),
                    rows3_scratch,
                );
                debug_assert!(done, "rows3::available said yes");
                continue;
            }
            place(x_plane(n, k), geo.w.input, padded, wp, pad_h, pad_w);
            if unit_stride(geo) {
                let (tap_lanes, bias_lanes) = lanes.split_at_mut(geo.taps * LANES);
                let bias_lanes = if db.is_some() {
                    bias_lanes
                } else {
                    &mut [][..]
                };
                place(dy_plane(n, k), q, dy_flat, wp, 0, 0);
                dot_flat(dy_flat, padded, &offsets, tap_lanes, bias_lanes);
            } else {
                // Strided: running totals per tap and for the bias, over the images in
                // order, in the first `taps + 1` of the filter's (otherwise unused) lanes.
                let (tap_totals, bias_total) = lanes.split_at_mut(geo.taps);
                dot_strided(
                    dy_plane(n, k),
                    q,
                    padded,
                    wp,
                    [geo.h.stride, geo.w.stride],
                    &offsets,
                    tap_totals,
                );
                if db.is_some() {
                    bias_total[0] += crate::simd::sum(dy_plane(n, k));
                }
            }
        }
    }
    for (f, lanes) in lanes.chunks_exact((geo.taps + 1) * LANES).enumerate() {
        let dw_f = &mut dw[f * geo.taps..][..geo.taps];
        if unit_stride(geo) {
            let (tap_lanes, bias_lanes) = lanes.split_at(geo.taps * LANES);
            for (d, l) in dw_f.iter_mut().zip(tap_lanes.chunks_exact(LANES)) {
                write.put(d, crate::simd::sum(l));
            }
            if let Some(db) = db.as_deref_mut() {
                write.put(&mut db[f], crate::simd::sum(bias_lanes));
            }
        } else {
            write.put_all(dw_f, &lanes[..geo.taps]);
            if let Some(db) = db.as_deref_mut() {
                write.put(&mut db[f], lanes[geo.taps]);
            }
        }
    }
}

crate::dispatch! {
    /// `out[t] = init + Σ_i weights[i] · src[t + offsets[i]]` for every `t` in `out`
    /// (`src` must extend `max(offsets)` past `out`).
    fn correlate_flat<T: Element>(src: &[T], offsets: &[usize], weights: &[T], init: T, out: &mut [T]) = correlate_flat_body;
}

#[inline(always)]
fn correlate_flat_body<T: Element, const FMA: bool>(
    src: &[T],
    offsets: &[usize],
    weights: &[T],
    init: T,
    out: &mut [T],
) {
    /// Output blocks per pass: independent FMA chains, so the taps' multiply-adds are not
    /// serialized on one accumulator's latency.
    const BLOCKS: usize = 4;
    let n = out.len();
    let mut t = 0;
    while t + BLOCKS * LANES <= n {
        let mut acc = [[init; LANES]; BLOCKS];
        for (&off, &wv) in offsets.iter().zip(weights) {
            for (b, block) in acc.iter_mut().enumerate() {
                let at = t + off + b * LANES;
                let s: &[T; LANES] = src[at..at + LANES]
                    .try_into()
                    .expect("a block of LANES elements");
                *block = axpy_lanes::<T, FMA>(*block, wv, s);
            }
        }
        for (b, block) in acc.iter().enumerate() {
            out[t + b * LANES..][..LANES].copy_from_slice(block);
        }
        t += BLOCKS * LANES;
    }
    while t + LANES <= n {
        let mut acc = [init; LANES];
        for (&off, &wv) in offsets.iter().zip(weights) {
            let s: &[T; LANES] = src[t + off..t + off + LANES]
                .try_into()
                .expect("a block of LANES elements");
            acc = axpy_lanes::<T, FMA>(acc, wv, s);
        }
        out[t..t + LANES].copy_from_slice(&acc);
        t += LANES;
    }
    for (i, o) in out.iter_mut().enumerate().skip(t) {
        let mut acc = init;
        for (&off, &wv) in offsets.iter().zip(weights) {
            acc = madd::<T, FMA>(wv, src[i + off], acc);
        }
        *o = acc;
    }
}

/// `acc + a · x` on a whole register block.
#[inline(always)]
fn axpy_lanes<T: Element, const FMA: bool>(acc: [T; LANES], a: T, x: &[T; LANES]) -> [T; LANES] {
    std::array::from_fn(|j| madd::<T, FMA>(a, x[j], acc[j]))
}

/// Elements of the column phases of a padded plane ([`correlate_phased`]): [`phases`]
/// phases of `H + 2·pad_h` rows of `⌈(W + 2·pad_w) / stride_w⌉`.
fn phased_len(geo: &ConvGeometry) -> usize {
    let (hp, wp) = padded_dims(geo);
    phases(geo) * hp * wp.div_ceil(geo.w.stride)
}

/// Column phases that hold any column: `min(stride_w, W + 2·pad_w)` (a stride wider than
/// the padded row leaves the other phases empty; allocating them would cost `stride_w`
/// planes).
fn phases(geo: &ConvGeometry) -> usize {
    geo.w.stride.min(padded_dims(geo).1)
}

crate::dispatch! {
    /// Copies the `H × W` plane `x` into the column phases of its zero-padded plane:
    /// `phased[ph][row][j]` = padded element `(row, j·sw + ph)` (`sw` the column stride),
    /// `phased_len` elements. Only the plane's own positions are written: the padding keeps
    /// the zeros the task's buffer was filled with ([`Planes`]). Stride 2 deinterleaves
    /// pairs of columns (vectorized); other strides copy each phase's columns with a step.
    fn place_phased<T: Element>(geo: &ConvGeometry, x: &[T], phased: &mut [T]) = place_phased_body;
}

#[inline(always)]
fn place_phased_body<T: Element, const FMA: bool>(geo: &ConvGeometry, x: &[T], phased: &mut [T]) {
    let (hp, wp) = padded_dims(geo);
    let (sw, w) = (geo.w.stride, geo.w.input);
    let wq = wp.div_ceil(sw);
    let (pad_h, pad_w) = (geo.h.padding, geo.w.padding);
    let plane = hp * wq;
    if sw == 2 && phases(geo) == 2 {
        // Input column iw = 2j + e (parity e) is padded column c = pad_w + e + 2j: phase
        // (pad_w + e) mod 2, column (pad_w + e) / 2 + j.
        let (phase0, phase1) = phased.split_at_mut(plane);
        for (ih, x_row) in x.chunks_exact(w).enumerate() {
            let row = (pad_h + ih) * wq;
            let (c0, c1) = (pad_w, pad_w + 1);
            let (even, odd) = if pad_w % 2 == 0 {
                (
                    &mut phase0[row + c0 / 2..row + wq],
                    &mut phase1[row + c1 / 2..row + wq],
                )
            } else {
                (
                    &mut phase1[row + c0 / 2..row + wq],
                    &mut phase0[row + c1 / 2..row + wq],
                )
            };
            let pairs = x_row.chunks_exact(2);
            let last = pairs.remainder().first().copied();
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                *e = pair[0];
                *o = pair[1];
            }
            if let Some(v) = last {
                even[w / 2] = v;
            }
        }
        return;
    }
    for (ih, x_row) in x.chunks_exact(w).enumerate() {
        let row = (pad_h + ih) * wq;
        for (iw, &v) in x_row.iter().enumerate() {
            let c = pad_w + iw;
            phased[(c % sw) * plane + row + c / sw] = v;
        }
    }
}

crate::dispatch! {
    /// The strided correlation `out[oh][ow] = init + Σ_taps w · padded[oh·sh + r·dh][ow·sw +
    /// s·dw]` from the column phases of the padded plane ([`place_phased`]), where each tap's
    /// inputs for a row of outputs are one run (phase `s·dw mod sw`, from column
    /// `⌊s·dw / sw⌋`). The plane starts at `init` and gets one multiply-add per tap over
    /// each output row, the taps in order: per output the same operations as a loop over
    /// its taps, in whole-row vector steps instead of a strided gather per output (on a
    /// MobileNet-sized stride-2 layer, 3 × 3 over 56 × 56, the gather ran at 1.7 GFLOP/s).
    fn correlate_phased<T: Element>(geo: &ConvGeometry, phased: &[T], weights: &[T], init: T, out: &mut [T]) = correlate_phased_body;
}

/// The multiply-adds are not fused on any path (the same bits everywhere).
#[inline(always)]
fn correlate_phased_body<T: Element, const FMA: bool>(
    geo: &ConvGeometry,
    phased: &[T],
    weights: &[T],
    init: T,
    out: &mut [T],
) {
    let (hp, wp) = padded_dims(geo);
    let (sh, sw) = (geo.h.stride, geo.w.stride);
    let wq = wp.div_ceil(sw);
    let q = geo.w.output;
    // Tap by tap over the whole plane (each output still gets its taps in order): one
    // division per tap, for where its run starts in `phased` for output row 0.
    out.fill(init);
    let taps = (0..geo.h.kernel).flat_map(|r| (0..geo.w.kernel).map(move |s| (r, s)));
    for ((r, s), &wv) in taps.zip(weights) {
        let col = s * geo.w.dilation;
        let start = ((col % sw) * hp + r * geo.h.dilation) * wq + col / sw;
        for (oh, row) in out.chunks_exact_mut(q).enumerate() {
            let at = start + oh * sh * wq;
            for (o, &v) in row.iter_mut().zip(&phased[at..at + q]) {
                *o += wv * v;
            }
        }
    }
}

crate::dispatch! {
    /// `lanes[i·LANES + j] += Σ_{t ≡ j mod LANES} a[t] · src[t + offsets[i]]`: each tap's
    /// dot product as LANES partial sums, which the caller carries across images and
    /// reduces once. With `bias_lanes` of LANES elements (empty: skipped), also
    /// `bias_lanes[j] += Σ_{t ≡ j} a[t]`.
    fn dot_flat<T: Element>(
        a: &[T],
        src: &[T],
        offsets: &[usize],
        lanes: &mut [T],
        bias_lanes: &mut [T],
    ) = dot_flat_body;
}

#[inline(always)]
fn dot_flat_body<T: Element, const FMA: bool>(
    a: &[T],
    src: &[T],
    offsets: &[usize],
    lanes: &mut [T],
    bias_lanes: &mut [T],
) {
    /// Taps per pass over `a`: independent accumulator chains that share each load of `a`.
    /// Three divides the 9 taps of a 3×3 kernel (four would compute 3 dummy sums of 12).
    const TAPS: usize = 3;
    let n = a.len();
    let mut scratch = [[T::ZERO; LANES]; TAPS];
    for (group, (offs, sums)) in offsets
        .chunks(TAPS)
        .zip(lanes.chunks_mut(TAPS * LANES))
        .enumerate()
    {
        // A short last group repeats its first tap; those sums go to `scratch`.
        let off: [usize; TAPS] = std::array::from_fn(|i| offs.get(i).copied().unwrap_or(offs[0]));
        let b: [&[T]; TAPS] = std::array::from_fn(|i| &src[off[i]..off[i] + n]);
        let (mut sums, mut spare) = (sums.chunks_exact_mut(LANES), scratch.iter_mut());
        let out: [&mut [T; LANES]; TAPS] = std::array::from_fn(|_| match sums.next() {
            Some(s) => s.try_into().expect("LANES partial sums"),
            None => spare.next().expect("TAPS spare blocks"),
        });
        // Named accumulators, updated by value: as an indexed array, or with references
        // taken to them, LLVM kept them on the stack and stored them on every step.
        let mut acc = [*out[0], *out[1], *out[2]];
        let mut bias = [T::ZERO; LANES];
        if group == 0 && bias_lanes.len() == LANES {
            (acc, bias) = dot_group::<T, FMA, true>(a, b, acc, bias);
            for (d, s) in bias_lanes.iter_mut().zip(bias) {
                *d += s;
            }
        } else {
            (acc, _) = dot_group::<T, FMA, false>(a, b, acc, bias);
        }
        for (o, l) in out.into_iter().zip(acc) {
            *o = l;
        }
    }
}

/// One pass of [`dot_flat`] over `a` for three taps (`b[i]` = the source at tap `i`'s
/// offset), the whole blocks and then the tail; with `BIAS`, also the sums of `a`.
#[inline(always)]
fn dot_group<T: Element, const FMA: bool, const BIAS: bool>(
    a: &[T],
    b: [&[T]; 3],
    acc: [[T; LANES]; 3],
    bias: [T; LANES],
) -> ([[T; LANES]; 3], [T; LANES]) {
    let n = a.len();
    let full = n - n % LANES;
    let [mut l0, mut l1, mut l2] = acc;
    let mut bias = bias;
    for t in (0..full).step_by(LANES) {
        let x: &[T; LANES] = a[t..t + LANES]
            .try_into()
            .expect("a block of LANES elements");
        let y = |i: usize| -> &[T; LANES] {
            b[i][t..t + LANES]
                .try_into()
                .expect("a block of LANES elements")
        };
        l0 = fma_lanes::<T, FMA>(l0, x, y(0));
        l1 = fma_lanes::<T, FMA>(l1, x, y(1));
        l2 = fma_lanes::<T, FMA>(l2, x, y(2));
        if BIAS {
            bias = std::array::from_fn(|j| bias[j] + x[j]);
        }
    }
    let mut acc = [l0, l1, l2];
    for (l, b) in acc.iter_mut().zip(b) {
        for (j, (x, y)) in a[full..].iter().zip(&b[full..]).enumerate() {
            l[j] = madd::<T, FMA>(*x, *y, l[j]);
        }
    }
    if BIAS {
        for (j, x) in a[full..].iter().enumerate() {
            bias[j] += *x;
        }
    }
    (acc, bias)
}

/// `acc + x ⊙ y` on whole register blocks (by value, so the block lives in registers).
#[inline(always)]
fn fma_lanes<T: Element, const FMA: bool>(
    acc: [T; LANES],
    x: &[T; LANES],
    y: &[T; LANES],
) -> [T; LANES] {
    std::array::from_fn(|j| madd::<T, FMA>(x[j], y[j], acc[j]))
}

/// Strided weight gradient on a padded plane (rare: no flat form): `out[i] += Σ_{p,q}
/// dy[p][q] · src[p·stride_h·width + q·stride_w + offsets[i]]`.
fn dot_strided<T: Element>(
    dy: &[T],
    dy_w: usize,
    src: &[T],
    width: usize,
    stride: [usize; 2],
    offsets: &[usize],
    out: &mut [T],
) {
    for (&off, o) in offsets.iter().zip(out.iter_mut()) {
        let mut acc = T::ZERO;
        for (oh, row) in dy.chunks_exact(dy_w).enumerate() {
            let base = oh * stride[0] * width + off;
            for (ow, &d) in row.iter().enumerate() {
                acc += d * src[base + ow * stride[1]];
            }
        }
        *o += acc;
    }
}

#[cfg(test)]
mod tests {
    use super::{Planes, correlate_phased, phased_len, place_phased};
    use crate::shape::{Conv2dSpec, ConvGeometry};

    /// The phased strided forward gives, bit for bit, each output's taps added in order
    /// to `init` one by one (`acc += w · x`), over column strides 1, 2 and 3 and wider
    /// than the padded row, odd and even paddings and widths, dilation 1 and 2, and
    /// non-square kernels, on every instruction-set path (`CONVGEMM_ISA`).
    #[test]
    fn phased_correlation_is_the_per_output_sum() {
        let mut seed = 0xFACE_u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (h, w, k, stride, pad, dil) in [
            (9, 9, [3, 3], [2, 2], [1, 1], [1, 1]),
            (10, 11, [3, 3], [2, 2], [0, 2], [1, 1]),
            (12, 13, [3, 2], [2, 3], [1, 1], [1, 2]),
            (7, 16, [5, 5], [3, 2], [2, 2], [1, 1]),
            (8, 7, [1, 3], [1, 2], [0, 1], [1, 1]),
            (9, 6, [3, 3], [2, 1], [1, 1], [1, 1]),
            (5, 3, [3, 3], [2, 7], [0, 0], [1, 1]),
            (6, 1, [3, 1], [1, 2], [1, 0], [1, 1]),
        ] {
            let spec = Conv2dSpec {
                batch: 1,
                in_channels: 1,
                in_h: h,
                in_w: w,
                out_channels: 1,
                kernel: k,
                stride,
                padding: pad,
                dilation: dil,
                groups: 1,
            };
            let geo = ConvGeometry::new(&spec).unwrap();
            let x: Vec<f32> = (0..h * w).map(|_| next()).collect();
            let weights: Vec<f32> = (0..geo.taps).map(|_| next()).collect();
            let init = next();
            let mut planes = Planes::<f32>::new(phased_len(&geo));
            let phased = &mut planes.get()[..phased_len(&geo)];
            place_phased(&geo, &x, phased);
            let mut out = vec![f32::NAN; geo.out_plane];
            correlate_phased(&geo, phased, &weights, init, &mut out);
            let (p, q) = (geo.h.output, geo.w.output);
            for oh in 0..p {
                for ow in 0..q {
                    let mut acc = init;
                    for r in 0..k[0] {
                        for s in 0..k[1] {
                            let ih = (oh * stride[0] + r * dil[0]) as isize - pad[0] as isize;
                            let iw = (ow * stride[1] + s * dil[1]) as isize - pad[1] as isize;
                            let inside =
                                (0..h as isize).contains(&ih) && (0..w as isize).contains(&iw);
                            let v = if inside {
                                x[ih as usize * w + iw as usize]
                            } else {
                                0.0
                            };
                            acc += weights[r * k[1] + s] * v;
                        }
                    }
                    assert_eq!(
                        out[oh * q + ow].to_bits(),
                        acc.to_bits(),
                        "{h}×{w} k {k:?} stride {stride:?} pad {pad:?} dil {dil:?}: ({oh}, {ow})"
                    );
                }
            }
        }
    }
}
