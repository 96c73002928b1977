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
//! **Other strides** reduce to the same flat kernels by splitting the padded plane into
//! stride phases ([`phases`]): the forward and the weight gradient run on the phase
//! planes, the input delta computes each phase of `dx` as a unit-stride correlation of
//! `dy` with the taps that reach it and interleaves them. The 3×3 stride-2 layer skips the
//! phase planes on AVX-512 in all three passes ([`stride2`]: rows read in place, even and
//! odd columns split or interleaved in registers). Channel multipliers (`K = m·C`) are
//! handled: output channel `k` reads input channel `k / m`. Parallelism is over channel
//! planes; every sum has a fixed order, so results do not depend on the thread count.

mod phases;
mod rows3;
mod stride2;

use phases::Phases;
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
/// The scratch of any pass ([`scratch_len`]) is at most 13 padded planes (the strided
/// input delta's; the other passes take at most 7), plus for the
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
            .checked_mul((13 + 2 * FILTER_BLOCK * LANES) * size_of::<f64>())
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

/// Elements of the scratch one task of `pass` uses (the padded plane, split into its
/// stride phases, plus the flat output; none where a kernel reads the planes in place),
/// for [`Conv2d::workspace`](crate::Conv2d::workspace).
pub(crate) fn scratch_len(geo: &ConvGeometry, pass: crate::Pass) -> usize {
    let phases = Phases::of(geo);
    let general = phases.len() + phases.flat_len(geo);
    // The 3×3 row kernel's padded copy, in the same buffer.
    let rows3 = Rows3Layer::of(geo).map_or(0, |layer| layer.padded_len());
    // The stride-2 kernels read the planes in place: no scratch but the weight
    // gradient's sums.
    let stride2 = Rows3Layer::of_stride2(geo).is_some() && stride2::available();
    match pass {
        crate::Pass::Forward if stride2 => 0,
        crate::Pass::Forward => general.max(rows3),
        crate::Pass::BackwardData if stride2_input_delta(geo).is_some() => 0,
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
        crate::Pass::BackwardData => phases::backward_data_scratch_len(geo),
        crate::Pass::BackwardWeights => {
            let planes = if stride2 { 0 } else { general.max(rows3) };
            planes + FILTER_BLOCK * (geo.taps + 1) * LANES
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
    let q = geo.w.output;
    let phases = Phases::of(geo);
    let offsets = phases.tap_offsets(geo);
    let (width, flat_len) = (phases.width(), phases.flat_len(geo));
    let multiplier = geo.filters_per_group;
    let rows3 = Rows3Layer::of(geo);
    let stride2 = Rows3Layer::of_stride2(geo);
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
                if let Some(layer) = &stride2
                    && T::rows3_stride2(layer, x_plane, w_k, b, y_plane)
                {
                    apply_in_place(act, y_plane);
                    return;
                }
                let (phased, rest) = planes.get().split_at_mut(phases.len());
                phases.place(x_plane, phased);
                // The flat output's rows of `width` (the buffer may be longer: it also
                // holds the row kernel's padded copy where that runs).
                let flat = &mut rest[..flat_len];
                correlate_flat(phased, &offsets, w_k, b, flat);
                for (oh, row) in y_plane.chunks_exact_mut(q).enumerate() {
                    row.copy_from_slice(&flat[oh * width..][..q]);
                }
                apply_in_place(act, y_plane);
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

/// The stride-2 kernel's sizes where it computes the input delta of `geo`: one filter per
/// channel (it writes each `dx` plane from one `dy` plane), 3×3 stride 2, and AVX-512.
fn stride2_input_delta(geo: &ConvGeometry) -> Option<Rows3Layer> {
    if geo.filters_per_group != 1 || !stride2::available() {
        return None;
    }
    Rows3Layer::of_stride2(geo)
}

/// Input delta, plane by plane; `write` stores each finished plane (see [`Write::into`]).
pub(crate) fn backward_data<T: Element>(
    geo: &ConvGeometry,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    write: Write,
) {
    if let Some(layer) = stride2_input_delta(geo) {
        dx.par_chunks_exact_mut(geo.in_plane)
            .zip(dy.par_chunks_exact(geo.out_plane))
            .enumerate()
            .for_each(|(plane, (dx_plane, dy_plane))| {
                let k = plane % geo.out_channels;
                let accumulate = write == Write::Accumulate;
                let w_k = &w[k * 9..][..9];
                let done =
                    T::rows3_stride2_input_delta(&layer, dy_plane, w_k, dx_plane, accumulate);
                debug_assert!(done, "stride2::available said yes");
            });
        return;
    }
    if !unit_stride(geo) {
        return phases::backward_data(geo, dy, w, dx, write);
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
    let q = geo.w.output;
    let phases = Phases::of(geo);
    let offsets = phases.tap_offsets(geo);
    let flat_len = phases.flat_len(geo);
    let filters = dw.len() / geo.taps;
    let x_plane = |n: usize, k: usize| {
        let c = k / geo.filters_per_group;
        &x[(n * geo.in_channels + c) * geo.in_plane..][..geo.in_plane]
    };
    let dy_plane =
        |n: usize, k: usize| &dy[(n * geo.out_channels + k) * geo.out_plane..][..geo.out_plane];
    // Per filter LANES partial sums per tap and for the bias, carried over the whole batch
    // and reduced once at the end; then the padded input plane split into its stride
    // phases and dy laid out in rows of the phase width, its junk columns zero (the 3×3
    // row kernel: its padded copy).
    let (lanes, work) = planes
        .get()
        .split_at_mut(FILTER_BLOCK * (geo.taps + 1) * LANES);
    let lanes = &mut lanes[..filters * (geo.taps + 1) * LANES];
    lanes.fill(T::ZERO);
    let rows3 = Rows3Layer::of(geo).filter(|_| rows3::available());
    let stride2 = Rows3Layer::of_stride2(geo).filter(|_| stride2::available());
    let direct = rows3.is_some() || stride2.is_some();
    let (phased, rest) = work.split_at_mut(if direct { 0 } else { phases.len() });
    let (dy_flat, rows3_scratch) = rest.split_at_mut(if direct { 0 } else { flat_len });
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
            if let Some(layer) = &stride2 {
                let done = T::rows3_stride2_weight_gradient(
                    layer,
                    x_plane(n, k),
                    dy_plane(n, k),
                    lanes,
                    db.is_some(),
                );
                debug_assert!(done, "stride2::available said yes");
                continue;
            }
            phases.place(x_plane(n, k), phased);
            let (tap_lanes, bias_lanes) = lanes.split_at_mut(geo.taps * LANES);
            let bias_lanes = if db.is_some() {
                bias_lanes
            } else {
                &mut [][..]
            };
            place(dy_plane(n, k), q, dy_flat, phases.width(), 0, 0);
            dot_flat(dy_flat, phased, &offsets, tap_lanes, bias_lanes);
        }
    }
    for (f, lanes) in lanes.chunks_exact((geo.taps + 1) * LANES).enumerate() {
        let dw_f = &mut dw[f * geo.taps..][..geo.taps];
        let (tap_lanes, bias_lanes) = lanes.split_at(geo.taps * LANES);
        for (d, l) in dw_f.iter_mut().zip(tap_lanes.chunks_exact(LANES)) {
            write.put(d, crate::simd::sum(l));
        }
        if let Some(db) = db.as_deref_mut() {
            write.put(&mut db[f], crate::simd::sum(bias_lanes));
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

/// Helpers of the 3×3 kernels' unit tests ([`rows3`], [`stride2`]).
#[cfg(test)]
mod kernel_tests {
    use crate::element::Element;
    use crate::shape::{Conv2dSpec, ConvGeometry};

    /// Uniform noise in [-1, 1) from a linear congruential generator.
    pub(super) fn random<T: Element>(mut seed: u64) -> impl FnMut() -> T {
        move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            T::from_f64(((seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0)
        }
    }

    /// The geometry of one `h × w` plane, one channel, 3 × 3, padding `pad`, `stride`.
    pub(super) fn plane_geometry(h: usize, w: usize, pad: usize, stride: usize) -> ConvGeometry {
        let spec = Conv2dSpec {
            batch: 1,
            in_channels: 1,
            in_h: h,
            in_w: w,
            out_channels: 1,
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [pad, pad],
            ..Default::default()
        };
        ConvGeometry::new(&spec).unwrap()
    }

    /// The sizes of one 3×3 plane: input `[H, W]`, output `[P, Q]`, padding, stride.
    pub(super) struct Plane {
        pub(super) input: [usize; 2],
        pub(super) output: [usize; 2],
        pub(super) pad: usize,
        pub(super) stride: usize,
    }

    /// Checks a weight-gradient kernel's tap sums (`sums`, in blocks of
    /// [`super::rows3::SUM_BLOCK`], started from `start`) against the definition: tap
    /// `(r, s)` adds `Σ dy[oh][ow] · x[stride·oh + r − pad][stride·ow + s − pad]`, block 9
    /// the bias sums `Σ dy` where `bias` (else it is untouched). `lanes` is the number of
    /// partial sums per tap the kernel keeps, `epsilon` the unit roundoff of `T`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn assert_tap_sums<T: Element>(
        plane: &Plane,
        x: &[T],
        dy: &[T],
        start: &[T],
        sums: &[T],
        bias: bool,
        lanes: usize,
        epsilon: f64,
    ) {
        const BLOCK: usize = super::rows3::SUM_BLOCK;
        let Plane {
            input: [h, w],
            output: [p, q],
            pad,
            stride,
        } = *plane;
        // Lanes a kernel does not use keep their start values on both sides.
        let total = |v: &[T], tap: usize| -> f64 {
            v[tap * BLOCK..][..BLOCK].iter().map(|e| e.to_f64()).sum()
        };
        for tap in 0..10 {
            if tap == 9 && !bias {
                assert_eq!(total(sums, 9), total(start, 9), "bias sums untouched");
                continue;
            }
            let (r, s) = (tap / 3, tap % 3);
            let mut want = total(start, tap);
            let mut magnitude = want.abs();
            for oh in 0..p {
                for ow in 0..q {
                    let d = dy[oh * q + ow].to_f64();
                    let (ih, iw) = (
                        (stride * oh + r) as isize - pad as isize,
                        (stride * ow + s) as isize - pad as isize,
                    );
                    let v = if tap == 9 {
                        1.0
                    } else if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                        0.0
                    } else {
                        x[ih as usize * w + iw as usize].to_f64()
                    };
                    want += d * v;
                    magnitude += (d * v).abs();
                }
            }
            let got = total(sums, tap);
            // Each tap's sum: `p·q` products and `lanes` partial sums added, each addition
            // rounding by at most ε times the magnitude of all terms.
            let bound = epsilon * (p * q + lanes) as f64 * magnitude;
            assert!(
                (got - want).abs() <= bound,
                "{h}×{w} pad {pad} stride {stride}: tap {tap}: {got} vs {want}"
            );
        }
    }
}
