//! Direct AVX-512 and AVX2 kernels for the commonest depthwise layer: 3×3, stride 1,
//! dilation 1. One computes the forward, and the input delta as the same correlation of
//! `dy` with the flipped filter (padding `2 − pad`); the other the weight gradient, the dot
//! products of `dy` with the same shifted windows of the input.
//!
//! The general path ([`super::forward`]) copies each input plane into a zero-padded buffer
//! and then loads one vector per tap and output block, at an offset of one or two
//! elements: 9 loads per 16 outputs, most of them split across two cache lines, and the
//! load ports, not the FMAs, set the pace (about 2.5 cycles per FMA on an L1-resident
//! plane). Here each block of `L` outputs reads its three windows (columns `start + s ..`
//! for taps `s` = 0, 1, 2) straight from the input plane, with masked loads that give 0
//! for columns in the padding (rows in the padding are zero vectors). Four output rows are
//! in flight, so each of the six input rows they read is loaded once for up to three of
//! them, and there is no padded copy:
//!
//! - AVX-512 (`L` = 16 f32, 8 f64): the `2·L` columns `lo`, `hi` from two masked loads,
//!   the windows of taps 1 and 2 by `valign` (`lo[s..] ‖ hi[..s]`) in registers: per 9
//!   FMAs, 3 loads and 3 shuffles instead of 9 split loads;
//! - AVX2 (`L` = 8 f32, 4 f64): three unaligned loads (the 16 registers hold the 9 taps,
//!   4 sums and the 3 windows, no room for shifting), so 9 loads per 27 FMAs, from a
//!   zero-padded copy of the plane in the caller's scratch: no masks, no branches per
//!   row, and a partial last block of columns is computed as the full block ending at the
//!   row's end, overlapping the block before (same sums, same bits). Reading the plane in
//!   place with loads masked at its edges (half the blocks of a 28-wide plane) and a
//!   test per row was 1.3–1.6× slower on Zen 3 (mobilenet_dw, one thread); that form
//!   stays for planes narrower than a vector.
//!
//! The forward does the general path's multiply-adds in the same order, so its results
//! are bit-identical to it.

use crate::shape::ConvGeometry;
#[cfg(target_arch = "x86_64")]
use crate::simd::masked::column_mask;

/// The 3×3 row kernel of one element type (a hidden supertrait of
/// [`Element`](crate::Element), so the generic forward can name it).
pub trait Rows3: Sized {
    /// `out[p][q] = init + Σ_{r,s} weights[3·r + s] · xpad[p + r][q + s]` over the
    /// zero-padded input plane `xpad` (`x` is one `H × W` input plane, `out` one `P × Q`
    /// output plane, `weights` one filter's 3 × 3 taps); with `accumulate`, that sum is
    /// added to `out` instead (`out = out + sum`, one rounding more). `scratch` is the
    /// caller's buffer for the zero-padded copy of `x` the AVX2 kernel reads
    /// ([`Rows3Layer::padded_len`] elements; shorter, that kernel masks its loads
    /// instead). Returns `false`, having written nothing, where the CPU has neither
    /// AVX-512 nor AVX2: the caller then takes the general path.
    fn rows3(
        layer: &Rows3Layer,
        x: &[Self],
        weights: &[Self],
        init: Self,
        out: &mut [Self],
        accumulate: bool,
        scratch: &mut [Self],
    ) -> bool;

    /// The forward of a 3×3 stride-2 layer (`layer` from [`Rows3Layer::of_stride2`]):
    /// `out[p][q] = init + Σ_{r,s} weights[3·r + s] · xpad[2p + r][2q + s]`, with the
    /// general path's bits. Returns `false`, having written nothing, where the CPU has no
    /// AVX-512 (the phase planes then serve, [`super::phases`]).
    fn rows3_stride2(
        layer: &Rows3Layer,
        x: &[Self],
        weights: &[Self],
        init: Self,
        out: &mut [Self],
    ) -> bool;

    /// The input delta of a 3×3 stride-2 layer with one filter per channel (`layer` from
    /// [`Rows3Layer::of_stride2`]): `dx[ih][iw] = Σ weights[3·r + s] · dy[p][q]` over
    /// `2p + r − pad_h = ih`, `2q + s − pad_w = iw`, written into the `H × W` plane `dx`
    /// (with `accumulate`, added to it). Returns `false`, having written nothing, where the
    /// CPU has no AVX-512.
    fn rows3_stride2_input_delta(
        layer: &Rows3Layer,
        dy: &[Self],
        weights: &[Self],
        dx: &mut [Self],
        accumulate: bool,
    ) -> bool;

    /// The weight gradient of a 3×3 stride-2 layer (`layer` from
    /// [`Rows3Layer::of_stride2`]), added to `sums` in the layout of
    /// [`rows3_weight_gradient`](Self::rows3_weight_gradient), with `xpad[2p + r][2q + s]`
    /// for `xpad[p + r][q + s]`. Returns `false`, having changed nothing, where the CPU has
    /// no AVX-512.
    fn rows3_stride2_weight_gradient(
        layer: &Rows3Layer,
        x: &[Self],
        dy: &[Self],
        sums: &mut [Self],
        bias: bool,
    ) -> bool;

    /// Adds one image's weight (and bias) gradient of one filter to `sums`:
    /// `sums[16·(3r + s) + j] += Σ_{p, q ≡ j} dy[p][q] · xpad[p + r][q + s]` for the 9 taps,
    /// and with `bias`, `sums[16·9 + j] += Σ_{p, q ≡ j} dy[p][q]` (`j` below the vector's
    /// lane count; `sums` holds 10 blocks of 16). `x` is the `H × W` input plane, `dy` the
    /// `P × Q` output-gradient plane; `scratch` as for [`Rows3::rows3`]. Returns `false`,
    /// having changed nothing, where the CPU has neither AVX-512 nor AVX2.
    fn rows3_weight_gradient(
        layer: &Rows3Layer,
        x: &[Self],
        dy: &[Self],
        sums: &mut [Self],
        bias: bool,
        scratch: &mut [Self],
    ) -> bool;
}

/// Elements per block of the partial sums of [`Rows3::rows3_weight_gradient`].
pub(crate) const SUM_BLOCK: usize = 16;

/// The sizes [`Rows3::rows3`] needs, for a layer it computes.
#[derive(Clone, Copy, Debug)]
pub struct Rows3Layer {
    /// Input plane `H × W`.
    pub(super) h: usize,
    pub(super) w: usize,
    /// Output plane `P × Q`.
    pub(super) p: usize,
    pub(super) q: usize,
    pub(super) pad_h: usize,
    pub(super) pad_w: usize,
}

impl Rows3Layer {
    /// The layer's sizes if it is of this kernel's kind: 3×3, stride 1, dilation 1.
    pub(crate) fn of(geo: &ConvGeometry) -> Option<Rows3Layer> {
        let ones = |a: &crate::shape::Axis| a.stride == 1 && a.dilation == 1 && a.kernel == 3;
        (ones(&geo.h) && ones(&geo.w)).then_some(Rows3Layer {
            h: geo.h.input,
            w: geo.w.input,
            p: geo.h.output,
            q: geo.w.output,
            pad_h: geo.h.padding,
            pad_w: geo.w.padding,
        })
    }

    /// The layer's sizes if it is of the stride-2 forward kernel's kind
    /// ([`Rows3::rows3_stride2`]): 3×3, stride 2, dilation 1.
    pub(crate) fn of_stride2(geo: &ConvGeometry) -> Option<Rows3Layer> {
        let twos = |a: &crate::shape::Axis| a.stride == 2 && a.dilation == 1 && a.kernel == 3;
        (twos(&geo.h) && twos(&geo.w)).then_some(Rows3Layer {
            h: geo.h.input,
            w: geo.w.input,
            p: geo.h.output,
            q: geo.w.output,
            pad_h: geo.h.padding,
            pad_w: geo.w.padding,
        })
    }

    /// Elements of the zero-padded copy of an input plane the AVX2 forward kernel reads
    /// ([`Rows3::rows3`]'s `scratch`): rows of `W + 2·pad_w`, `pad_h` zero rows above the
    /// plane and below it as many as the last block of [`BLOCKS`] output rows reads.
    pub(crate) fn padded_len(&self) -> usize {
        self.padded_rows().saturating_mul(self.padded_width())
    }

    /// Rows of the padded copy: every block of [`BLOCKS`] output rows reads `BLOCKS + 2`.
    fn padded_rows(&self) -> usize {
        self.p
            .div_ceil(BLOCKS)
            .saturating_mul(BLOCKS)
            .saturating_add(2)
    }

    /// Columns of the padded copy: `W + 2·pad_w = Q + 2`, rounded up so that the windows
    /// of a partial last block of columns (the weight gradient's) stay inside the row.
    fn padded_width(&self) -> usize {
        self.q.next_multiple_of(PADDED_COLUMNS).saturating_add(2)
    }

    /// The sizes of the input delta of a layer of this kind, as a correlation: `dx` is
    /// `dy` padded by `2 − pad` correlated with the flipped filter. None when the padding
    /// exceeds 2 (that correlation would crop).
    pub(crate) fn for_input_delta(geo: &ConvGeometry) -> Option<Rows3Layer> {
        let forward = Rows3Layer::of(geo)?;
        Some(Rows3Layer {
            h: forward.p,
            w: forward.q,
            p: forward.h,
            q: forward.w,
            pad_h: 2usize.checked_sub(forward.pad_h)?,
            pad_w: 2usize.checked_sub(forward.pad_w)?,
        })
    }
}

/// Whether [`Rows3::rows3`] runs here (AVX-512 or AVX2 with FMA), for both element types.
pub(crate) fn available() -> bool {
    cfg!(target_arch = "x86_64") && crate::simd::isa() != crate::simd::Isa::Scalar
}

/// Output rows in flight in the forward kernel: four independent FMA chains hide the FMA
/// latency. (The weight gradient's, `grad_blocks` of `rows3_kernels!`, is 4 on AVX-512
/// and 2 on AVX2: its 10 sums, the `dy` rows and the 3 windows must fit 16 registers;
/// with 4 they spilled and the kernel ran 0.8–0.9× the general path, with 2 it runs
/// 1.13–1.2× it, 1 thread, on mobilenet_dw.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const BLOCKS: usize = 4;

/// The padded copy's rows hold a whole number of vectors of this many columns (the
/// widest AVX2 vector, f32's 8), plus the two the windows reach beyond.
const PADDED_COLUMNS: usize = 8;

/// Adds input row `t`'s three windows to the sums `$acc` of the first `$rows` output
/// rows of a block (the forward): output row `b` meets it at kernel row `r = t − b`, and
/// its taps go in the order `s` = 0, 1, 2.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! forward_row {
    ($fma:ident, $acc:ident, $taps:ident, $t:expr, $rows:expr, $windows:expr) => {{
        let [w0, w1, w2] = $windows;
        let t = $t;
        for b in t.saturating_sub(2)..(t + 1).min($rows) {
            let r = t - b;
            $acc[b] = $fma($taps[3 * r], w0, $acc[b]);
            $acc[b] = $fma($taps[3 * r + 1], w1, $acc[b]);
            $acc[b] = $fma($taps[3 * r + 2], w2, $acc[b]);
        }
    }};
}

/// Adds the products of input row `t`'s three windows with the `dy` rows `$d` of the first
/// `$rows` output rows of a block to the tap sums `$acc` (the weight gradient): `dy` row
/// `b` meets it at kernel row `r = t − b`, taps `3r + s`.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! gradient_row {
    ($fma:ident, $acc:ident, $d:ident, $t:expr, $rows:expr, $windows:expr) => {{
        let [w0, w1, w2] = $windows;
        let t = $t;
        for b in t.saturating_sub(2)..(t + 1).min($rows) {
            let r = t - b;
            $acc[3 * r] = $fma($d[b], w0, $acc[3 * r]);
            $acc[3 * r + 1] = $fma($d[b], w1, $acc[3 * r + 1]);
            $acc[3 * r + 2] = $fma($d[b], w2, $acc[3 * r + 2]);
        }
    }};
}

/// The two kernels of one element type and instruction set, written once: `L` lanes per
/// vector, `$mask` turning a [`column_mask`] into the ISA's load/store mask, `$masks` and
/// `$windows` giving the three windows of an input row for one block of outputs.
macro_rules! rows3_kernels {
    ($t:ty, $feature:literal, $lanes:literal, forward = $name:ident, gradient = $grad:ident,
     mask = $mask:ident, set1 = $set1:ident, zero = $zero:ident, load = $load:ident,
     store = $store:ident, fma = $fma:ident, masks = $masks:ident, windows = $windows:ident,
     add = $add:ident, grad_blocks = $grad_blocks:literal,
     loadu = $loadu:ident, storeu = $storeu:ident) => {
        /// The kernel; see [`Rows3::rows3`].
        ///
        /// # Safety
        #[doc = concat!("The CPU must support ", $feature, ". The slices are checked here.")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(
            layer: &Rows3Layer,
            x: &[$t],
            weights: &[$t],
            init: $t,
            out: &mut [$t],
            accumulate: bool,
        ) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            let Rows3Layer { h, w, p, q, .. } = *layer;
            let (pad_h, pad_w) = (layer.pad_h as isize, layer.pad_w as isize);
            let weights: &[$t; 9] = weights.try_into().expect("rows3: 3×3 taps per filter");
            assert!(
                x.len() == h * w && out.len() == p * q,
                "rows3: plane of the wrong size"
            );
            let taps: [_; 9] = std::array::from_fn(|i| $set1(weights[i]));
            for col in (0..q).step_by(L) {
                let start = col as isize - pad_w;
                let in_masks = $masks(start, w);
                let out_mask = $mask(column_mask(col as isize, q, L));
                // BLOCKS output rows at a time: output row `oh + b` reads input rows
                // `oh + b + r − pad_h`, so the BLOCKS + 2 input rows are each loaded and
                // shifted once and feed up to three output rows. Per output, the taps are
                // added in the order r, s, as in the general path.
                for oh in (0..p).step_by(BLOCKS) {
                    let mut acc = [$set1(init); BLOCKS];
                    for t in 0..BLOCKS + 2 {
                        let ih = (oh + t) as isize - pad_h;
                        let inside = (0..h as isize).contains(&ih);
                        let row = x.as_ptr().wrapping_offset(ih * w as isize);
                        // SAFETY: the ISA is enabled (this function's contract). For a
                        // row `0 <= ih < h` the windows touch only its columns
                        // `0 <= start + i < w` (the masks), inside `x` (`h·w` elements,
                        // asserted); for any other row they touch nothing.
                        let windows = unsafe { $windows(&in_masks, row, start, inside) };
                        forward_row!($fma, acc, taps, t, BLOCKS, windows);
                    }
                    for (b, acc) in acc.iter().enumerate().take(p - oh) {
                        let at = out.as_mut_ptr().wrapping_add((oh + b) * q + col);
                        // SAFETY: the ISA is enabled. The load's and the store's enabled
                        // lanes are columns `col + i < q` (the mask) of output row
                        // `oh + b < p`: inside `out` (`p·q` elements, asserted).
                        unsafe {
                            let sum = if accumulate {
                                $add($load(out_mask, at), *acc)
                            } else {
                                *acc
                            };
                            $store(at, out_mask, sum)
                        };
                    }
                }
            }
        }

        /// The weight-gradient kernel; see [`Rows3::rows3_weight_gradient`].
        ///
        /// # Safety
        #[doc = concat!("The CPU must support ", $feature, ". The slices are checked here.")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $grad(layer: &Rows3Layer, x: &[$t], dy: &[$t], sums: &mut [$t], bias: bool) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            const GRAD_BLOCKS: usize = $grad_blocks;
            let Rows3Layer { h, w, p, q, .. } = *layer;
            let (pad_h, pad_w) = (layer.pad_h as isize, layer.pad_w as isize);
            assert!(
                x.len() == h * w && dy.len() == p * q && sums.len() == 10 * SUM_BLOCK,
                "rows3: plane or sums of the wrong size"
            );
            // SAFETY (all loads and stores of `sums`): the ISA is enabled; block `i < 10`
            // spans elements `16·i .. 16·i + L` of `sums` (160 elements, asserted; L ≤ 16).
            let mut acc: [_; 10] =
                std::array::from_fn(|i| unsafe { $loadu(sums.as_ptr().add(i * SUM_BLOCK)) });
            for col in (0..q).step_by(L) {
                let start = col as isize - pad_w;
                let in_masks = $masks(start, w);
                let dy_mask = $mask(column_mask(col as isize, q, L));
                // Four dy rows at a time: dy row `oh + b` meets input row `oh + b + r −
                // pad_h` at kernel row r, so each of the six input rows is loaded and
                // shifted once for up to three of them.
                for oh in (0..p).step_by(GRAD_BLOCKS) {
                    let mut d = [$zero(); GRAD_BLOCKS];
                    for (b, d) in d.iter_mut().enumerate().take(p - oh) {
                        // SAFETY: the ISA is enabled; the enabled lanes are columns
                        // `col + i < q` of dy row `oh + b < p`, inside `dy` (asserted).
                        *d = unsafe { $load(dy_mask, dy.as_ptr().add((oh + b) * q + col)) };
                        if bias {
                            acc[9] = $add(acc[9], *d);
                        }
                    }
                    for t in 0..GRAD_BLOCKS + 2 {
                        let ih = (oh + t) as isize - pad_h;
                        if !(0..h as isize).contains(&ih) {
                            continue;
                        }
                        let row = x.as_ptr().wrapping_add(ih as usize * w);
                        // SAFETY: as in the forward kernel: the windows touch columns
                        // `0 <= start + i < w` of row `0 <= ih < h`, inside `x`.
                        let windows = unsafe { $windows(&in_masks, row, start, true) };
                        gradient_row!($fma, acc, d, t, GRAD_BLOCKS.min(p - oh), windows);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: see the loads of `sums` above.
                unsafe { $storeu(sums.as_mut_ptr().add(i * SUM_BLOCK), *a) };
            }
        }
    };
}

/// Runs a kernel of [`super::stride2`] and returns `true` where the CPU has AVX-512;
/// `false`, having run nothing, elsewhere.
macro_rules! run_stride2 {
    ($kernel:path, $($arg:ident),*) => {{
        #[cfg(target_arch = "x86_64")]
        if crate::simd::isa() == Isa::Avx512 {
            // SAFETY: `isa()` returns Avx512 only when the CPU reports avx512f.
            unsafe { $kernel($($arg),*) };
            return true;
        }
        let _ = ($($arg),*);
        false
    }};
}

/// The AVX-512 and AVX2 kernels of one element type behind [`Rows3`], chosen by
/// [`isa`](crate::simd::isa).
macro_rules! impl_rows3 {
    ($t:ty, avx512 = ($fwd512:ident, $grad512:ident), avx2 = ($fwd2:ident, $grad2:ident),
     avx2_padded = ($padded:ident, $padded_grad:ident, $padded_lanes:literal),
     stride2 = ($stride2:ident, $stride2_grad:ident, $stride2_delta:ident)) => {
        impl Rows3 for $t {
            fn rows3_stride2_input_delta(
                layer: &Rows3Layer,
                dy: &[$t],
                weights: &[$t],
                dx: &mut [$t],
                accumulate: bool,
            ) -> bool {
                run_stride2!(
                    super::stride2::$stride2_delta,
                    layer,
                    dy,
                    weights,
                    dx,
                    accumulate
                )
            }

            fn rows3_stride2_weight_gradient(
                layer: &Rows3Layer,
                x: &[$t],
                dy: &[$t],
                sums: &mut [$t],
                bias: bool,
            ) -> bool {
                run_stride2!(super::stride2::$stride2_grad, layer, x, dy, sums, bias)
            }

            fn rows3_stride2(
                layer: &Rows3Layer,
                x: &[$t],
                weights: &[$t],
                init: $t,
                out: &mut [$t],
            ) -> bool {
                run_stride2!(super::stride2::$stride2, layer, x, weights, init, out)
            }

            fn rows3(
                layer: &Rows3Layer,
                x: &[$t],
                weights: &[$t],
                init: $t,
                out: &mut [$t],
                accumulate: bool,
                scratch: &mut [$t],
            ) -> bool {
                #[cfg(target_arch = "x86_64")]
                match crate::simd::isa() {
                    // SAFETY: `isa()` returns Avx512 only when the CPU reports avx512f.
                    Isa::Avx512 => unsafe { $fwd512(layer, x, weights, init, out, accumulate) },
                    // SAFETY: `isa()` returns Avx2 only when the CPU reports avx2 and fma.
                    Isa::Avx2
                        if layer.q >= $padded_lanes && scratch.len() >= layer.padded_len() =>
                    unsafe { $padded(layer, x, weights, init, out, accumulate, scratch) },
                    // SAFETY: as above.
                    Isa::Avx2 => unsafe { $fwd2(layer, x, weights, init, out, accumulate) },
                    Isa::Scalar => return false,
                }
                #[cfg(target_arch = "x86_64")]
                return true;
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (layer, x, weights, init, out, accumulate, scratch);
                    false
                }
            }

            fn rows3_weight_gradient(
                layer: &Rows3Layer,
                x: &[$t],
                dy: &[$t],
                sums: &mut [$t],
                bias: bool,
                scratch: &mut [$t],
            ) -> bool {
                #[cfg(target_arch = "x86_64")]
                match crate::simd::isa() {
                    // SAFETY: `isa()` returns Avx512 only when the CPU reports avx512f.
                    Isa::Avx512 => unsafe { $grad512(layer, x, dy, sums, bias) },
                    // SAFETY: `isa()` returns Avx2 only when the CPU reports avx2 and fma.
                    Isa::Avx2 if scratch.len() >= layer.padded_len() => unsafe {
                        $padded_grad(layer, x, dy, sums, bias, scratch)
                    },
                    // SAFETY: as above.
                    Isa::Avx2 => unsafe { $grad2(layer, x, dy, sums, bias) },
                    Isa::Scalar => return false,
                }
                #[cfg(target_arch = "x86_64")]
                return true;
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (layer, x, dy, sums, bias, scratch);
                    false
                }
            }
        }
    };
}

/// The window `lo[S..] ‖ hi[..S]` of two consecutive vectors, and the masks, per ISA.
#[cfg(target_arch = "x86_64")]
mod windows {
    use crate::simd::masked::*;
    use std::arch::x86_64::*;

    /// AVX-512 masks are the lane bits themselves.
    pub(super) fn mask16(bits: u16) -> u16 {
        bits
    }

    /// f64's 8 lanes: the low byte.
    pub(super) fn mask8(bits: u16) -> u8 {
        bits as u8
    }

    /// AVX-512: the masks of the two vectors `lo`, `hi` at `start` and `start + L`.
    pub(super) fn masks_f32x16(start: isize, w: usize) -> [u16; 2] {
        [column_mask(start, w, 16), column_mask(start + 16, w, 16)]
    }

    /// As [`masks_f32x16`] for f64's 8 lanes.
    pub(super) fn masks_f64x8(start: isize, w: usize) -> [u8; 2] {
        [
            column_mask(start, w, 8) as u8,
            column_mask(start + 8, w, 8) as u8,
        ]
    }

    /// The AVX-512 windows function of one element type: the three windows of a row at
    /// `start` (columns `start + s ..`, `s` < 3), from two masked loads (`lo`, `hi`) and
    /// `valign` (`lo[s..] ‖ hi[..s]`); a row outside the plane (`!inside`) gives zeros.
    /// The choice between the loads and zeros is made on `lo`, `hi`, before the shifts:
    /// choosing among the three windows instead (the caller's branch) ran mobilenet_dw's
    /// forward and input delta at 0.90× on Zen 4, and zeroing the masks instead of
    /// branching at 0.80× (1 thread, `benches/ab.sh`).
    macro_rules! avx512_windows {
        ($name:ident, $t:ty, $v:ty, $m:ty, $lanes:literal, $zero:ident, $maskz_loadu:ident,
         $to_int:ident, $from_int:ident, $align:ident) => {
            #[doc = concat!("The three windows of a row at `start` (", stringify!($t), ").")]
            ///
            /// # Safety
            /// AVX-512F; with `inside`, the columns `masks` enable are valid for reads.
            #[target_feature(enable = "avx512f")]
            pub(super) unsafe fn $name(
                masks: &[$m; 2],
                row: *const $t,
                start: isize,
                inside: bool,
            ) -> [$v; 3] {
                let (lo, hi) = if inside {
                    // SAFETY: the caller's contract; disabled lanes are not accessed.
                    unsafe {
                        (
                            $maskz_loadu(masks[0], row.wrapping_offset(start)),
                            $maskz_loadu(masks[1], row.wrapping_offset(start + $lanes)),
                        )
                    }
                } else {
                    // A row outside the plane: zeros, nothing read.
                    ($zero(), $zero())
                };
                let (lo_i, hi_i) = ($to_int(lo), $to_int(hi));
                [
                    lo,
                    $from_int($align::<1>(hi_i, lo_i)),
                    $from_int($align::<2>(hi_i, lo_i)),
                ]
            }
        };
    }
    avx512_windows!(
        windows_f32x16,
        f32,
        __m512,
        u16,
        16,
        _mm512_setzero_ps,
        _mm512_maskz_loadu_ps,
        _mm512_castps_si512,
        _mm512_castsi512_ps,
        _mm512_alignr_epi32
    );
    avx512_windows!(
        windows_f64x8,
        f64,
        __m512d,
        u8,
        8,
        _mm512_setzero_pd,
        _mm512_maskz_loadu_pd,
        _mm512_castpd_si512,
        _mm512_castsi512_pd,
        _mm512_alignr_epi64
    );

    /// AVX2 windows: three (unaligned) loads at `start + s`, masked only where a window
    /// reaches outside the row. (Two loads and shifts across the 128-bit halves, as
    /// AVX-512 does, ran slower than the general path: with 9 taps, 4 sums and the
    /// shifts' temporaries the 16 registers spill.)
    pub(super) struct Windows256 {
        /// All three windows inside the row: plain loads.
        inside: bool,
        masks: [__m256i; 3],
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn masks_f32x8(start: isize, w: usize) -> Windows256 {
        Windows256 {
            inside: start >= 0 && start + 10 <= w as isize,
            masks: std::array::from_fn(|s| mask_f32x8(column_mask(start + s as isize, w, 8))),
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn masks_f64x4(start: isize, w: usize) -> Windows256 {
        Windows256 {
            inside: start >= 0 && start + 6 <= w as isize,
            masks: std::array::from_fn(|s| mask_f64x4(column_mask(start + s as isize, w, 4))),
        }
    }

    /// The AVX2 windows function of one element type.
    macro_rules! avx2_windows {
        ($name:ident, $t:ty, $v:ty, $zero:ident, $loadu:ident, $maskload:ident) => {
            #[doc = concat!("The three windows of a row at `start` (", stringify!($t), ").")]
            ///
            /// # Safety
            /// AVX2; with `inside`, the columns `m` enables are valid for reads.
            #[target_feature(enable = "avx2")]
            pub(super) unsafe fn $name(
                m: &Windows256,
                row: *const $t,
                start: isize,
                inside: bool,
            ) -> [$v; 3] {
                let at = |s: usize| row.wrapping_offset(start + s as isize);
                if !inside {
                    // A row outside the plane: zeros, nothing read.
                    [$zero(); 3]
                } else if m.inside {
                    // SAFETY: the caller's contract: every column of the windows is enabled.
                    unsafe { [$loadu(at(0)), $loadu(at(1)), $loadu(at(2))] }
                } else {
                    // SAFETY: the caller's contract; disabled lanes are not accessed.
                    unsafe { std::array::from_fn(|s| $maskload(at(s), m.masks[s])) }
                }
            }
        };
    }
    avx2_windows!(
        windows_f32x8,
        f32,
        __m256,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_maskload_ps
    );
    avx2_windows!(
        windows_f64x4,
        f64,
        __m256d,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_maskload_pd
    );
}
#[cfg(target_arch = "x86_64")]
use {crate::simd::Isa, crate::simd::masked::*, windows::*};

/// Copies the `H × W` plane `x` into `padded` (rows of [`Rows3Layer::padded_width`]) with
/// `pad_w` zero columns on each side, `pad_h` zero rows above and zero rows below up to
/// [`Rows3Layer::padded_rows`].
/// Inlined into the kernels, so the moves are their vectors; every run is written with
/// fixed-width moves ([`copy_exact`](crate::simd::copy_exact),
/// [`fill_exact`](crate::simd::fill_exact)): with `fill`, the `memset` calls for the
/// short runs of padding took a quarter of the forward's time, as long as the copy itself.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn pad_plane<T: Copy>(layer: &Rows3Layer, x: &[T], zero: T, padded: &mut [T]) {
    use crate::simd::{copy_exact, fill_exact};
    let Rows3Layer {
        h, w, pad_h, pad_w, ..
    } = *layer;
    let wp = layer.padded_width();
    let padded = &mut padded[..layer.padded_len()];
    let (top, rest) = padded.split_at_mut(pad_h * wp);
    fill_exact(top, zero);
    let (middle, bottom) = rest.split_at_mut(h * wp);
    for (row, x_row) in middle.chunks_exact_mut(wp).zip(x.chunks_exact(w)) {
        fill_exact(&mut row[..pad_w], zero);
        copy_exact(&mut row[pad_w..pad_w + w], x_row);
        fill_exact(&mut row[pad_w + w..], zero);
    }
    fill_exact(bottom, zero);
}

/// The AVX2 forward kernel reading a zero-padded copy of the plane (see the module doc),
/// for planes at least one vector wide.
macro_rules! rows3_padded_kernel {
    ($t:ty, $lanes:literal, $name:ident, $grad:ident, set1 = $set1:ident, loadu = $loadu:ident,
     storeu = $storeu:ident, fma = $fma:ident, add = $add:ident, mask = $mask:ident,
     blendv = $blendv:ident, cast = $cast:ident, zero = $zero:ident, load = $load:ident) => {
        /// The kernel; see [`Rows3::rows3`]. `padded` holds at least
        /// [`Rows3Layer::padded_len`] elements.
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA. The slices are checked here.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $name(
            layer: &Rows3Layer,
            x: &[$t],
            weights: &[$t],
            init: $t,
            out: &mut [$t],
            accumulate: bool,
            padded: &mut [$t],
        ) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            let Rows3Layer { h, w, p, q, .. } = *layer;
            let weights: &[$t; 9] = weights.try_into().expect("rows3: 3×3 taps per filter");
            assert!(
                x.len() == h * w
                    && out.len() == p * q
                    && q >= L
                    && padded.len() >= layer.padded_len(),
                "rows3: plane or scratch of the wrong size"
            );
            pad_plane(layer, x, 0.0, padded);
            let wp = layer.padded_width();
            let taps: [_; 9] = std::array::from_fn(|i| $set1(weights[i]));
            for col in (0..q).step_by(L) {
                // A partial last block is the full one ending at column q: its first
                // `col − c` lanes repeat the block before, with the same sums.
                let c = col.min(q - L);
                // Its lanes from column `col` on, the ones the block before did not write.
                let fresh = $cast($mask(column_mask(c as isize - col as isize, q - col, L)));
                for oh in (0..p).step_by(BLOCKS) {
                    let mut acc = [$set1(init); BLOCKS];
                    for t in 0..BLOCKS + 2 {
                        // SAFETY: the ISA is enabled (this function's contract). Padded
                        // row `oh + t` < `padded_rows` (a block of BLOCKS output rows
                        // starts below `p`), columns `c + s .. c + s + L` with s ≤ 2 end
                        // at most at `q + 2 ≤ padded_width` (`c ≤ q − L`): inside
                        // `padded` (asserted at least `padded_len`).
                        let windows = unsafe {
                            let row = padded.as_ptr().add((oh + t) * wp + c);
                            [$loadu(row), $loadu(row.add(1)), $loadu(row.add(2))]
                        };
                        forward_row!($fma, acc, taps, t, BLOCKS, windows);
                    }
                    for (b, acc) in acc.iter().enumerate().take(p - oh) {
                        // SAFETY: the ISA is enabled; columns `c .. c + L ≤ q` of output
                        // row `oh + b < p`: inside `out` (`p·q` elements, asserted).
                        unsafe {
                            let at = out.as_mut_ptr().add((oh + b) * q + c);
                            let sum = if accumulate {
                                // The lanes of the block before hold finished sums.
                                let old = $loadu(at);
                                $blendv(old, $add(old, *acc), fresh)
                            } else {
                                *acc
                            };
                            $storeu(at, sum);
                        }
                    }
                }
            }
        }

        /// The weight-gradient kernel reading a zero-padded copy of the input plane; see
        /// [`Rows3::rows3_weight_gradient`]. The same sums in the same order as the
        /// masked kernel (`rows3_kernels!`), whose row tests it does without: `dy` rows
        /// beyond the plane are not read, and the padded rows are zeros.
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA. The slices are checked here.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $grad(
            layer: &Rows3Layer,
            x: &[$t],
            dy: &[$t],
            sums: &mut [$t],
            bias: bool,
            padded: &mut [$t],
        ) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            const GRAD_BLOCKS: usize = 2;
            let Rows3Layer { h, w, p, q, .. } = *layer;
            assert!(
                x.len() == h * w
                    && dy.len() == p * q
                    && sums.len() == 10 * SUM_BLOCK
                    && padded.len() >= layer.padded_len(),
                "rows3: plane, sums or scratch of the wrong size"
            );
            pad_plane(layer, x, 0.0, padded);
            let wp = layer.padded_width();
            // SAFETY (all loads and stores of `sums`): the ISA is enabled; block `i < 10`
            // spans elements `16·i .. 16·i + L` of `sums` (160 elements, asserted; L ≤ 16).
            let mut acc: [_; 10] =
                std::array::from_fn(|i| unsafe { $loadu(sums.as_ptr().add(i * SUM_BLOCK)) });
            for col in (0..q).step_by(L) {
                let partial = col + L > q;
                let dy_mask = $mask(column_mask(col as isize, q, L));
                for oh in (0..p).step_by(GRAD_BLOCKS) {
                    let mut d = [$zero(); GRAD_BLOCKS];
                    for (b, d) in d.iter_mut().enumerate().take(p - oh) {
                        // SAFETY: the ISA is enabled; the lanes read are columns
                        // `col + i < q` (all of a full block, the mask's of a partial one)
                        // of dy row `oh + b < p`, inside `dy` (asserted).
                        *d = unsafe {
                            let at = dy.as_ptr().add((oh + b) * q + col);
                            if partial {
                                $load(dy_mask, at)
                            } else {
                                $loadu(at)
                            }
                        };
                        if bias {
                            acc[9] = $add(acc[9], *d);
                        }
                    }
                    for t in 0..GRAD_BLOCKS + 2 {
                        // SAFETY: the ISA is enabled. Padded row `oh + t` < `padded_rows`
                        // (GRAD_BLOCKS divides BLOCKS), columns `col + s .. col + s + L`
                        // with s ≤ 2 end at most at `q` rounded up to a vector plus 2,
                        // `padded_width`: inside `padded` (at least `padded_len`).
                        let windows = unsafe {
                            let row = padded.as_ptr().add((oh + t) * wp + col);
                            [$loadu(row), $loadu(row.add(1)), $loadu(row.add(2))]
                        };
                        gradient_row!($fma, acc, d, t, GRAD_BLOCKS.min(p - oh), windows);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: see the loads of `sums` above.
                unsafe { $storeu(sums.as_mut_ptr().add(i * SUM_BLOCK), *a) };
            }
        }
    };
}

rows3_padded_kernel!(
    f32,
    8,
    rows3_padded_f32_avx2,
    rows3_padded_grad_f32_avx2,
    set1 = _mm256_set1_ps,
    loadu = _mm256_loadu_ps,
    storeu = _mm256_storeu_ps,
    fma = _mm256_fmadd_ps,
    add = _mm256_add_ps,
    mask = mask_f32x8,
    blendv = _mm256_blendv_ps,
    cast = _mm256_castsi256_ps,
    zero = _mm256_setzero_ps,
    load = load_f32x8
);
rows3_padded_kernel!(
    f64,
    4,
    rows3_padded_f64_avx2,
    rows3_padded_grad_f64_avx2,
    set1 = _mm256_set1_pd,
    loadu = _mm256_loadu_pd,
    storeu = _mm256_storeu_pd,
    fma = _mm256_fmadd_pd,
    add = _mm256_add_pd,
    mask = mask_f64x4,
    blendv = _mm256_blendv_pd,
    cast = _mm256_castsi256_pd,
    zero = _mm256_setzero_pd,
    load = load_f64x4
);

rows3_kernels!(
    f32,
    "avx512f",
    16,
    forward = rows3_f32_avx512,
    gradient = rows3_grad_f32_avx512,
    mask = mask16,
    set1 = _mm512_set1_ps,
    zero = _mm512_setzero_ps,
    load = _mm512_maskz_loadu_ps,
    store = _mm512_mask_storeu_ps,
    fma = _mm512_fmadd_ps,
    masks = masks_f32x16,
    windows = windows_f32x16,
    add = _mm512_add_ps,
    grad_blocks = 4,
    loadu = _mm512_loadu_ps,
    storeu = _mm512_storeu_ps
);
rows3_kernels!(
    f64,
    "avx512f",
    8,
    forward = rows3_f64_avx512,
    gradient = rows3_grad_f64_avx512,
    mask = mask8,
    set1 = _mm512_set1_pd,
    zero = _mm512_setzero_pd,
    load = _mm512_maskz_loadu_pd,
    store = _mm512_mask_storeu_pd,
    fma = _mm512_fmadd_pd,
    masks = masks_f64x8,
    windows = windows_f64x8,
    add = _mm512_add_pd,
    grad_blocks = 4,
    loadu = _mm512_loadu_pd,
    storeu = _mm512_storeu_pd
);
rows3_kernels!(
    f32,
    "avx2,fma",
    8,
    forward = rows3_f32_avx2,
    gradient = rows3_grad_f32_avx2,
    mask = mask_f32x8,
    set1 = _mm256_set1_ps,
    zero = _mm256_setzero_ps,
    load = load_f32x8,
    store = store_f32x8,
    fma = _mm256_fmadd_ps,
    masks = masks_f32x8,
    windows = windows_f32x8,
    add = _mm256_add_ps,
    grad_blocks = 2,
    loadu = _mm256_loadu_ps,
    storeu = _mm256_storeu_ps
);
rows3_kernels!(
    f64,
    "avx2,fma",
    4,
    forward = rows3_f64_avx2,
    gradient = rows3_grad_f64_avx2,
    mask = mask_f64x4,
    set1 = _mm256_set1_pd,
    zero = _mm256_setzero_pd,
    load = load_f64x4,
    store = store_f64x4,
    fma = _mm256_fmadd_pd,
    masks = masks_f64x4,
    windows = windows_f64x4,
    add = _mm256_add_pd,
    grad_blocks = 2,
    loadu = _mm256_loadu_pd,
    storeu = _mm256_storeu_pd
);
impl_rows3!(
    f32,
    avx512 = (rows3_f32_avx512, rows3_grad_f32_avx512),
    avx2 = (rows3_f32_avx2, rows3_grad_f32_avx2),
    avx2_padded = (rows3_padded_f32_avx2, rows3_padded_grad_f32_avx2, 8),
    stride2 = (forward_f32, gradient_f32, input_delta_f32)
);
impl_rows3!(
    f64,
    avx512 = (rows3_f64_avx512, rows3_grad_f64_avx512),
    avx2 = (rows3_f64_avx2, rows3_grad_f64_avx2),
    avx2_padded = (rows3_padded_f64_avx2, rows3_padded_grad_f64_avx2, 4),
    stride2 = (forward_f64, gradient_f64, input_delta_f64)
);

#[cfg(test)]
mod equal_to_general_path {
    use super::super::kernel_tests::{Plane, assert_tap_sums, plane_geometry, random};
    use super::Rows3Layer;
    use crate::element::Element;
    use crate::shape::ConvGeometry;

    /// The planes the tests run: paddings 0–2, planes narrower and wider than a vector,
    /// output heights that are not a multiple of the rows in flight.
    const SHAPES: [(usize, usize, usize); 9] = [
        (8, 8, 1),
        (7, 37, 1),
        (5, 16, 0),
        (9, 17, 2),
        (3, 3, 0),
        (2, 30, 2),
        (28, 28, 1),
        (6, 9, 1),
        (5, 12, 2),
    ];

    /// One `h × w` plane, 3 × 3, padding `pad`: its geometry and the kernel's sizes.
    fn plane(h: usize, w: usize, pad: usize) -> (ConvGeometry, Rows3Layer) {
        let geo = plane_geometry(h, w, pad, 1);
        let layer = Rows3Layer::of(&geo).unwrap();
        (geo, layer)
    }

    /// The kernel gives the general path's bits (the padded plane and one load per tap,
    /// `correlate_flat`), on random data, for paddings 0–2, planes narrower and wider than a
    /// vector, and output heights that are not a multiple of the rows in flight; writing
    /// and accumulating, with and without the scratch for the padded copy. Skipped
    /// (passes vacuously) on CPUs without AVX2.
    #[test]
    fn bit_identical_to_the_padded_correlation() {
        check::<f32>();
        check::<f64>();
    }

    /// The weight-gradient kernel reading the padded copy (AVX2) gives the masked
    /// kernel's bits, with and without the bias sums, and both match the definition
    /// within rounding: the sums start from nonzero partial sums, as over a batch.
    /// Skipped (passes vacuously) on CPUs without AVX2.
    #[test]
    fn weight_gradient_padded_equals_masked() {
        check_gradient::<f32>(f32::EPSILON as f64);
        check_gradient::<f64>(f64::EPSILON);
    }

    /// `epsilon`: the unit roundoff of `T`.
    fn check_gradient<T: Element>(epsilon: f64) {
        let mut next = random::<T>(0xD1CE);
        for (h, w, pad) in SHAPES {
            let (geo, layer) = plane(h, w, pad);
            let (p, q) = (geo.h.output, geo.w.output);
            let x: Vec<T> = (0..h * w).map(|_| next()).collect();
            let dy: Vec<T> = (0..p * q).map(|_| next()).collect();
            let start: Vec<T> = (0..10 * super::SUM_BLOCK).map(|_| next()).collect();
            for bias in [false, true] {
                let mut results = Vec::new();
                for padded_len in [layer.padded_len(), 0] {
                    let mut scratch = vec![T::from_f64(f64::NAN); padded_len];
                    let mut sums = start.clone();
                    if !T::rows3_weight_gradient(&layer, &x, &dy, &mut sums, bias, &mut scratch) {
                        return;
                    }
                    results.push(sums);
                }
                let bits = |v: &[T]| v.iter().map(|e| e.to_f64().to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&results[0]),
                    bits(&results[1]),
                    "{h}×{w} pad {pad}, bias {bias}"
                );
                // Against the definition.
                let sizes = Plane {
                    input: [h, w],
                    output: [p, q],
                    pad,
                    stride: 1,
                };
                let lanes = super::SUM_BLOCK;
                assert_tap_sums(&sizes, &x, &dy, &start, &results[0], bias, lanes, epsilon);
            }
        }
    }

    fn check<T: Element>() {
        let mut next = random::<T>(0x5EED);
        for (h, w, pad) in SHAPES {
            let (geo, layer) = plane(h, w, pad);
            let x: Vec<T> = (0..h * w).map(|_| next()).collect();
            let weights: Vec<T> = (0..9).map(|_| next()).collect();
            let init = next();
            let (hp, wp) = (h + 2 * pad, w + 2 * pad);
            let (p, q) = (geo.h.output, geo.w.output);
            let mut padded = vec![T::ZERO; hp * wp];
            super::super::place(&x, w, &mut padded, wp, pad as isize, pad as isize);
            let offsets = super::super::tap_offsets(&geo, wp);
            let mut flat = vec![T::ZERO; (p - 1) * wp + q];
            super::super::correlate_flat(&padded, &offsets, &weights, init, &mut flat);
            let old: Vec<T> = (0..geo.out_plane).map(|_| next()).collect();
            // With a scratch for the padded copy (AVX2: the padded kernel where the plane
            // is a vector wide) and without (the masked one); writing and accumulating.
            for padded_len in [layer.padded_len(), 0] {
                let mut scratch = vec![T::from_f64(f64::NAN); padded_len];
                for accumulate in [false, true] {
                    let mut fast = if accumulate {
                        old.clone()
                    } else {
                        vec![T::from_f64(f64::NAN); geo.out_plane]
                    };
                    if !T::rows3(
                        &layer,
                        &x,
                        &weights,
                        init,
                        &mut fast,
                        accumulate,
                        &mut scratch,
                    ) {
                        return;
                    }
                    for oh in 0..p {
                        for ow in 0..q {
                            let sum = flat[oh * wp + ow];
                            let want = if accumulate {
                                old[oh * q + ow] + sum
                            } else {
                                sum
                            };
                            assert_eq!(
                                fast[oh * q + ow].to_f64().to_bits(),
                                want.to_f64().to_bits(),
                                "{h}×{w} pad {pad}, scratch {padded_len}, accumulate \
                                 {accumulate}: output ({oh}, {ow})"
                            );
                        }
                    }
                }
            }
        }
    }
}
