//! Stride phases: a strided depthwise layer as unit-stride problems.
//!
//! With stride `(sh, sw)`, output `(p, q)` reads through tap `(r, s)` the padded input
//! element `(p·sh + r·dh, q·sw + s·dw)`. Split the zero-padded plane by the residues of
//! its rows mod `sh` and of its columns mod `sw` into *phase planes*: phase `(a, b)` holds
//! padded element `(i·sh + a, j·sw + b)` at `(i, j)`, all in rows of `⌈Wp / sw⌉`. Tap
//! `(r, s)` then reads, for output `(p, q)`, element `(p + ⌊r·dh / sh⌋, q + ⌊s·dw / sw⌋)`
//! of phase `(r·dh mod sh, s·dw mod sw)`: a fixed flat offset from `p·⌈Wp / sw⌉ + q`.
//! So the forward and the weight gradient are the unit-stride flat kernels
//! ([`correlate_flat`](super::correlate_flat), [`dot_flat`](super::dot_flat)) on the
//! phase planes, with the outputs (and `dy`) laid out in rows of the phase width. Stride 1
//! is the case of a single phase: the padded plane itself.
//!
//! The input delta splits the other way: `dx` element `(i·sh + a, j·sw + b)` (padded
//! coordinates) gets contributions only from the taps with `r·dh ≡ a (mod sh)` and
//! `s·dw ≡ b (mod sw)`, from `dy` element `(i − ⌊r·dh / sh⌋, j − ⌊s·dw / sw⌋)`. Each
//! phase of `dx` is a unit-stride correlation of the zero-padded `dy` plane with its
//! class of taps ([`backward_data`]); the phases are then interleaved into `dx`.

use super::{Planes, correlate_flat, place};
use crate::conv::Write;
use crate::element::Element;
use crate::parallel::*;
use crate::shape::ConvGeometry;

/// The layout of a plane split into stride phases (see the module docs).
pub(super) struct Phases {
    stride: [usize; 2],
    pad: [usize; 2],
    input_w: usize,
    /// Phases per axis: `min(stride, padded extent)` (a stride longer than the padded
    /// plane leaves the other residues without any element: no plane for them).
    count: [usize; 2],
    /// Rows and columns of each phase plane: `⌈padded extent / stride⌉`.
    rows: usize,
    width: usize,
}

impl Phases {
    pub(super) fn of(geo: &ConvGeometry) -> Phases {
        let (hp, wp) = super::padded_dims(geo);
        let stride = [geo.h.stride, geo.w.stride];
        Phases {
            stride,
            pad: [geo.h.padding, geo.w.padding],
            input_w: geo.w.input,
            count: [stride[0].min(hp), stride[1].min(wp)],
            rows: hp.div_ceil(stride[0]),
            width: wp.div_ceil(stride[1]),
        }
    }

    /// Row length of the phase planes, and of the flat outputs computed from them.
    pub(super) fn width(&self) -> usize {
        self.width
    }

    fn plane_len(&self) -> usize {
        self.rows * self.width
    }

    /// Elements of all the phase planes. At most 4 padded planes: per axis,
    /// `min(stride, padded)·⌈padded / stride⌉ < 2·padded`.
    pub(super) fn len(&self) -> usize {
        self.count[0] * self.count[1] * self.plane_len()
    }

    /// Where padded element `(row, col)` lies in the phase planes.
    fn locate(&self, row: usize, col: usize) -> usize {
        let [sh, sw] = self.stride;
        ((row % sh) * self.count[1] + col % sw) * self.plane_len()
            + (row / sh) * self.width
            + col / sw
    }

    /// The flat offset of each tap `(r, s)`, in order: where output `(0, 0)` reads it.
    /// Output `(p, q)` reads it `p·width + q` further on.
    pub(super) fn tap_offsets(&self, geo: &ConvGeometry) -> Vec<usize> {
        let mut offsets = Vec::with_capacity(geo.taps);
        for r in 0..geo.h.kernel {
            for s in 0..geo.w.kernel {
                offsets.push(self.locate(r * geo.h.dilation, s * geo.w.dilation));
            }
        }
        offsets
    }

    /// Elements of a flat output plane in rows of [`width`](Self::width): `(P − 1)·width
    /// + Q`. Every tap's reads for it stay inside its phase plane (the last output row
    /// reads padded rows below `Hp`, so phase rows below `rows`; likewise the columns).
    pub(super) fn flat_len(&self, geo: &ConvGeometry) -> usize {
        (geo.h.output - 1) * self.width + geo.w.output
    }

    /// Copies the `H × W` plane `x` into its place in the phase planes (`len()` elements).
    /// Only the plane's own positions are written: the padding keeps the zeros the task's
    /// buffer was filled with ([`Planes`]).
    pub(super) fn place<T: Element>(&self, x: &[T], phased: &mut [T]) {
        place_phases(self, x, phased);
    }
}

crate::dispatch! {
    /// [`Phases::place`]: rows copied whole at column stride 1, deinterleaved in pairs at
    /// stride 2 (vectorized), element by element otherwise.
    fn place_phases<T: Element>(phases: &Phases, x: &[T], phased: &mut [T]) = place_phases_body;
}

#[inline(always)]
fn place_phases_body<T: Element, const FMA: bool>(phases: &Phases, x: &[T], phased: &mut [T]) {
    let [pad_h, pad_w] = phases.pad;
    let w = phases.input_w;
    for (ih, x_row) in x.chunks_exact(w).enumerate() {
        let row = pad_h + ih;
        match phases.stride[1] {
            1 => {
                let at = phases.locate(row, pad_w);
                crate::simd::copy_exact(&mut phased[at..at + w], x_row);
            }
            2 if phases.count[1] == 2 => {
                // Input columns 0, 2, 4, … go to one column phase, 1, 3, 5, … to the
                // other, each a run; the two runs lie in different phase planes.
                let (first, second) = (phases.locate(row, pad_w), phases.locate(row, pad_w + 1));
                let (lo, hi) = phased.split_at_mut(first.max(second));
                let (low, high) = (&mut lo[first.min(second)..], &mut hi[..]);
                let (even, odd) = if first < second {
                    (low, high)
                } else {
                    (high, low)
                };
                deinterleave(x_row, even, odd);
            }
            _ => {
                for (iw, &v) in x_row.iter().enumerate() {
                    phased[phases.locate(row, pad_w + iw)] = v;
                }
            }
        }
    }
}

/// `even[j] = src[2j]`, `odd[j] = src[2j + 1]` (`even` and `odd` at least that long).
#[inline(always)]
fn deinterleave<T: Element>(src: &[T], even: &mut [T], odd: &mut [T]) {
    let pairs = src.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
        *e = pair[0];
        *o = pair[1];
    }
    if let Some(v) = last {
        even[src.len() / 2] = v;
    }
}

/// The buffers of the strided input delta ([`backward_data`]) for one layer.
struct DeltaLayout {
    phases: Phases,
    /// Rows and columns `dy` is shifted by in `z`: the largest tap offsets in phase
    /// coordinates, `(⌊(R−1)·dh / sh⌋, ⌊(S−1)·dw / sw⌋)`.
    shift: [usize; 2],
    /// Row length of `z` and of the flat phase planes of `dx`: phase width + `shift[1]`.
    wz: usize,
    /// Elements of `z`: `(phase rows + shift[0])·wz`.
    z_len: usize,
    /// Elements of one flat phase plane of `dx`: `(phase rows − 1)·wz + phase width`.
    flat_len: usize,
    /// Phase planes of `dx`, one per class of taps.
    classes: usize,
}

impl DeltaLayout {
    fn of(geo: &ConvGeometry) -> DeltaLayout {
        let phases = Phases::of(geo);
        let [sh, sw] = phases.stride;
        let shift = [
            (geo.h.kernel - 1) * geo.h.dilation / sh,
            (geo.w.kernel - 1) * geo.w.dilation / sw,
        ];
        let wz = phases.width + shift[1];
        DeltaLayout {
            shift,
            wz,
            z_len: (phases.rows + shift[0]) * wz,
            flat_len: (phases.rows - 1) * wz + phases.width,
            classes: phases.count[0] * phases.count[1],
            phases,
        }
    }

    /// Elements of a task's scratch: `z`, the flat phase planes, and the filter's taps
    /// sorted by class. At most 13 padded planes: `shift[0]` is below the phase rows and
    /// `wz` below twice the phase width, so `z` is under 4 phase planes (each at most a
    /// padded plane) and the flat planes under twice the phase planes (4 padded planes).
    fn scratch_len(&self, geo: &ConvGeometry) -> usize {
        self.z_len + self.classes * self.flat_len + geo.taps
    }
}

/// Scratch elements of one task of the strided input delta.
pub(super) fn backward_data_scratch_len(geo: &ConvGeometry) -> usize {
    DeltaLayout::of(geo).scratch_len(geo)
}

/// The input delta of a strided depthwise layer, plane by plane (see the module docs);
/// `write` stores each finished plane (see [`Write::into`]).
///
/// Per `dx` plane: `dy` is placed, shifted by the largest tap offsets (in phase
/// coordinates), into a zeroed plane `z`; each phase of `dx` is then [`correlate_flat`]
/// of `z` with its class of taps, in tap order, into a flat plane; a class without taps
/// gives zeros. Finally [`interleave`] reads each `dx` row from its phases. With a
/// channel multiplier the filters of a channel add their parts in order.
pub(super) fn backward_data<T: Element>(
    geo: &ConvGeometry,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
    write: Write,
) {
    let layout = DeltaLayout::of(geo);
    let DeltaLayout {
        ref phases,
        shift,
        wz,
        z_len,
        flat_len,
        classes,
    } = layout;
    let [sh, sw] = phases.stride;
    // The taps sorted by class (stable: in tap order within a class), with their offsets
    // in `z`; class `c` holds `bounds[c]..bounds[c + 1]`.
    let mut taps: Vec<(usize, usize, usize)> = Vec::with_capacity(geo.taps);
    for r in 0..geo.h.kernel {
        for s in 0..geo.w.kernel {
            let (row, col) = (r * geo.h.dilation, s * geo.w.dilation);
            let class = (row % sh) * phases.count[1] + col % sw;
            let offset = (shift[0] - row / sh) * wz + (shift[1] - col / sw);
            taps.push((class, r * geo.w.kernel + s, offset));
        }
    }
    taps.sort_by_key(|&(class, _, _)| class);
    let mut bounds = vec![0; classes + 1];
    for &(class, _, _) in &taps {
        bounds[class + 1] += 1;
    }
    for c in 0..classes {
        bounds[c + 1] += bounds[c];
    }
    let offsets: Vec<usize> = taps.iter().map(|&(_, _, offset)| offset).collect();
    let multiplier = geo.filters_per_group;
    let (shift_h, shift_w) = (shift[0] as isize, shift[1] as isize);
    dx.par_chunks_exact_mut(geo.in_plane)
        .enumerate()
        .for_each_init(
            || Planes::<T>::new(layout.scratch_len(geo)),
            |planes, (plane, dx_plane)| {
                let (n, c) = (plane / geo.in_channels, plane % geo.in_channels);
                let (z, rest) = planes.get().split_at_mut(z_len);
                let (flats, weights) = rest.split_at_mut(classes * flat_len);
                write.into(dx_plane, |dx_plane| {
                    for m in 0..multiplier {
                        let k = c * multiplier + m;
                        let dy_plane =
                            &dy[(n * geo.out_channels + k) * geo.out_plane..][..geo.out_plane];
                        let w_k = &w[k * geo.taps..][..geo.taps];
                        for (v, &(_, tap, _)) in weights.iter_mut().zip(&taps) {
                            *v = w_k[tap];
                        }
                        place(dy_plane, geo.w.output, z, wz, shift_h, shift_w);
                        for (class, flat) in flats.chunks_exact_mut(flat_len).enumerate() {
                            let range = bounds[class]..bounds[class + 1];
                            correlate_flat(
                                z,
                                &offsets[range.clone()],
                                &weights[range],
                                T::ZERO,
                                flat,
                            );
                        }
                        interleave(geo, phases, flats, wz, dx_plane, m > 0);
                    }
                });
            },
        );
}

crate::dispatch! {
    /// `dx[ih][iw] = v` (with `add`: `+= v`) for every element, `v` the element of padded
    /// position `(ih + pad_h, iw + pad_w)` in the phases' flat planes (`flat_len` apart,
    /// rows of `wz`, phase `(a, b)` at index `a·count_w + b`). At column stride 2 a row is
    /// two runs interleaved (vectorized); at 1 one run; otherwise element by element.
    fn interleave<T: Element>(
        geo: &ConvGeometry,
        phases: &Phases,
        flats: &[T],
        wz: usize,
        dx: &mut [T],
        add: bool,
    ) = interleave_body;
}

#[inline(always)]
fn interleave_body<T: Element, const FMA: bool>(
    geo: &ConvGeometry,
    phases: &Phases,
    flats: &[T],
    wz: usize,
    dx: &mut [T],
    add: bool,
) {
    if add {
        interleave_rows::<T, true>(geo, phases, flats, wz, dx);
    } else {
        interleave_rows::<T, false>(geo, phases, flats, wz, dx);
    }
}

#[inline(always)]
fn interleave_rows<T: Element, const ADD: bool>(
    geo: &ConvGeometry,
    phases: &Phases,
    flats: &[T],
    wz: usize,
    dx: &mut [T],
) {
    let [sh, sw] = phases.stride;
    let [pad_h, pad_w] = phases.pad;
    let flat_len = flats.len() / (phases.count[0] * phases.count[1]);
    let at = |row: usize, col: usize| {
        ((row % sh) * phases.count[1] + col % sw) * flat_len + (row / sh) * wz + col / sw
    };
    let put = |d: &mut T, v: T| {
        if ADD { *d += v } else { *d = v }
    };
    let w = geo.w.input;
    for (ih, dx_row) in dx.chunks_exact_mut(w).enumerate() {
        let row = pad_h + ih;
        match sw {
            1 => {
                let src = &flats[at(row, pad_w)..][..w];
                for (d, &v) in dx_row.iter_mut().zip(src) {
                    put(d, v);
                }
            }
            2 if phases.count[1] == 2 => {
                // Columns 0, 2, 4, … of the row from one phase, 1, 3, 5, … from the other.
                let even = &flats[at(row, pad_w)..];
                let odd = &flats[at(row, pad_w + 1)..];
                let mut pairs = dx_row.chunks_exact_mut(2);
                for ((pair, &e), &o) in pairs.by_ref().zip(even).zip(odd) {
                    put(&mut pair[0], e);
                    put(&mut pair[1], o);
                }
                if let Some(last) = pairs.into_remainder().first_mut() {
                    put(last, even[w / 2]);
                }
            }
            _ => {
                for (iw, d) in dx_row.iter_mut().enumerate() {
                    put(d, flats[at(row, pad_w + iw)]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::activation::Activation;
    use crate::conv::Write;
    use crate::shape::{Conv2dSpec, ConvGeometry};
    use crate::simd::{Isa, isa, madd};

    /// `acc + w·v`, fused where the crate's kernels fuse it (the x86 vector paths).
    fn step(w: f32, v: f32, acc: f32) -> f32 {
        if cfg!(target_arch = "x86_64") && isa() != Isa::Scalar {
            madd::<f32, true>(w, v, acc)
        } else {
            madd::<f32, false>(w, v, acc)
        }
    }

    /// On strided layers the phased forward gives, bit for bit, each output's taps added
    /// in order to the bias (`acc = acc + w·x`, fused on the vector paths), and the phased
    /// input delta each `dx` element's taps in order from zero (the taps that reach it:
    /// those whose offset has its residues), the filters of a channel (multiplier 2) added
    /// in order. Over column strides 1, 2 and 3 and wider than the padded row, odd and even
    /// paddings and widths, dilation 1 and 2, non-square kernels, on every instruction-set
    /// path (`CONVGEMM_ISA`).
    #[test]
    fn phased_passes_are_the_per_element_sums() {
        let mut seed = 0xFACE_u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (h, w, k, stride, pad, dil, filters) in [
            (9, 9, [3, 3], [2, 2], [1, 1], [1, 1], 1),
            (10, 11, [3, 3], [2, 2], [0, 2], [1, 1], 2),
            (12, 13, [3, 2], [2, 3], [1, 1], [1, 2], 1),
            (7, 16, [5, 5], [3, 2], [2, 2], [1, 1], 1),
            (8, 7, [1, 3], [1, 2], [0, 1], [1, 1], 2),
            (9, 6, [3, 3], [2, 1], [1, 1], [1, 1], 1),
            (5, 3, [3, 3], [2, 7], [0, 0], [1, 1], 1),
            (6, 1, [3, 1], [1, 2], [1, 0], [1, 1], 1),
            (13, 12, [3, 3], [3, 2], [2, 1], [2, 2], 2),
        ] {
            let spec = Conv2dSpec {
                batch: 1,
                in_channels: 1,
                in_h: h,
                in_w: w,
                out_channels: filters,
                kernel: k,
                stride,
                padding: pad,
                dilation: dil,
                groups: 1,
            };
            let geo = ConvGeometry::new(&spec).unwrap();
            let (p, q) = (geo.h.output, geo.w.output);
            let x: Vec<f32> = (0..h * w).map(|_| next()).collect();
            let weights: Vec<f32> = (0..filters * geo.taps).map(|_| next()).collect();
            let bias: Vec<f32> = (0..filters).map(|_| next()).collect();
            let dy: Vec<f32> = (0..filters * p * q).map(|_| next()).collect();
            let case = format!("{h}×{w} k {k:?} stride {stride:?} pad {pad:?} dil {dil:?}");

            let mut y = vec![f32::NAN; filters * p * q];
            super::super::forward(
                &geo,
                &x,
                &weights,
                Some(&bias),
                Activation::Identity,
                &mut y,
            );
            let mut dx = vec![f32::NAN; h * w];
            super::backward_data(&geo, &dy, &weights, &mut dx, Write::Overwrite);

            let input = |ih: isize, iw: isize| {
                let inside = (0..h as isize).contains(&ih) && (0..w as isize).contains(&iw);
                if inside {
                    x[ih as usize * w + iw as usize]
                } else {
                    0.0
                }
            };
            for f in 0..filters {
                let w_f = &weights[f * geo.taps..][..geo.taps];
                for (oh, ow) in (0..p).flat_map(|oh| (0..q).map(move |ow| (oh, ow))) {
                    let mut acc = bias[f];
                    for (r, s) in (0..k[0]).flat_map(|r| (0..k[1]).map(move |s| (r, s))) {
                        let ih = (oh * stride[0] + r * dil[0]) as isize - pad[0] as isize;
                        let iw = (ow * stride[1] + s * dil[1]) as isize - pad[1] as isize;
                        acc = step(w_f[r * k[1] + s], input(ih, iw), acc);
                    }
                    let got = y[(f * p + oh) * q + ow];
                    assert_eq!(got.to_bits(), acc.to_bits(), "{case}: y ({f}, {oh}, {ow})");
                }
            }
            // dy element reached from padded input position `at` through tap offset `tap`
            // on one axis: Some(index, or None outside dy) when the residues match.
            let source = |at: usize, tap: usize, stride: usize, len: usize| {
                let d = at as isize - tap as isize;
                (d.rem_euclid(stride as isize) == 0).then(|| {
                    let o = d.div_euclid(stride as isize);
                    (0..len as isize).contains(&o).then_some(o as usize)
                })
            };
            for (ih, iw) in (0..h).flat_map(|ih| (0..w).map(move |iw| (ih, iw))) {
                let mut total = 0.0f32;
                for f in 0..filters {
                    let mut acc = 0.0f32;
                    for (r, s) in (0..k[0]).flat_map(|r| (0..k[1]).map(move |s| (r, s))) {
                        let rows = source(ih + pad[0], r * dil[0], stride[0], p);
                        let cols = source(iw + pad[1], s * dil[1], stride[1], q);
                        if let (Some(oh), Some(ow)) = (rows, cols) {
                            let v = match (oh, ow) {
                                (Some(oh), Some(ow)) => dy[(f * p + oh) * q + ow],
                                _ => 0.0,
                            };
                            acc = step(weights[f * geo.taps + r * k[1] + s], v, acc);
                        }
                    }
                    total = if f == 0 { acc } else { total + acc };
                }
                let got = dx[ih * w + iw];
                assert_eq!(got.to_bits(), total.to_bits(), "{case}: dx ({ih}, {iw})");
            }
        }
    }
}
