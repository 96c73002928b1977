//! Direct AVX-512 kernels for the strided depthwise layer of MobileNet-style networks:
//! 3×3, stride 2, dilation 1, all three passes (the input delta with one filter per
//! channel).
//!
//! The general strided path ([`super::phases`]) first copies each input plane into its
//! four stride phases (a deinterleaving copy that waits on the plane's first reads from
//! memory: more than half of the forward's time) and then runs the flat correlation, or
//! the flat dot products of the weight gradient, on them. Here each block of `L` outputs
//! (16 f32, 8 f64) of an output row reads its input row straight from the plane: the
//! `2·L + 1` columns `start .. start + 2·L` it needs
//! (`start = 2·col − pad_w`) come from three masked loads `a`, `b`, `c` (zeros for the
//! columns in the padding; `c` holds one lane), and the three windows, columns
//! `start + s + 2·i` for taps `s` = 0, 1, 2, are formed in registers: the even lanes of
//! `a ‖ b` (`vpermt2ps`), the odd ones, and the even ones shifted by one lane with `c[0]`
//! last. Four output rows are in flight: they read nine input rows, each loaded and
//! split once for the one or two output rows that meet it (rows in the padding are zero
//! vectors).
//!
//! The input delta is written row by row of `dx`: each row meets the kernel rows of one
//! parity, and a block of its columns is the interleave (`vpermt2ps`) of the even
//! columns' sums (taps 0 and 2) and the odd columns' (tap 1), each from one or two `dy`
//! rows. The weight gradient meets the forward's windows with four `dy` rows, adding to
//! per-lane partial sums per tap in the layout of the stride-1 kernel
//! ([`Rows3::rows3_weight_gradient`](super::Rows3::rows3_weight_gradient)).
//!
//! Every output of the forward adds its taps in the general path's order (`r`, then `s`,
//! fused multiply-adds from the bias), so its results are bit-identical to it; the weight
//! gradient's partial sums are grouped by output column, not by flat index as on the
//! phase planes, so its bits differ from theirs within rounding.

#[cfg(target_arch = "x86_64")]
use super::rows3::Rows3Layer;
#[cfg(target_arch = "x86_64")]
use crate::simd::masked::column_mask;

/// Output rows in flight (as in the stride-1 kernels: four FMA chains cover the latency).
#[cfg(target_arch = "x86_64")]
const BLOCKS: usize = 4;

/// The lane indices of the windows in `a ‖ b` (`vpermt2ps`/`vpermt2pd` tables): even
/// lanes (tap 0), odd lanes (tap 1), and, applied to the even window and `c`, the even
/// lanes one further (tap 2).
#[cfg(target_arch = "x86_64")]
const EVEN_F32: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
#[cfg(target_arch = "x86_64")]
const ODD_F32: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];
#[cfg(target_arch = "x86_64")]
const NEXT_F32: [i32; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
#[cfg(target_arch = "x86_64")]
const EVEN_F64: [i64; 8] = [0, 2, 4, 6, 8, 10, 12, 14];
#[cfg(target_arch = "x86_64")]
const ODD_F64: [i64; 8] = [1, 3, 5, 7, 9, 11, 13, 15];
#[cfg(target_arch = "x86_64")]
const NEXT_F64: [i64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// The lanes of the input delta's `e ‖ o` interleaved: the low and high halves of
/// `e[0], o[0], e[1], o[1], …`.
#[cfg(target_arch = "x86_64")]
const LOW_F32: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
#[cfg(target_arch = "x86_64")]
const HIGH_F32: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];
#[cfg(target_arch = "x86_64")]
const LOW_F64: [i64; 8] = [0, 8, 1, 9, 2, 10, 3, 11];
#[cfg(target_arch = "x86_64")]
const HIGH_F64: [i64; 8] = [4, 12, 5, 13, 6, 14, 7, 15];

/// The masks of the three loads of [`windows_f32`] / [`windows_f64`] for the block whose
/// first input column is `start`: `2·lanes + 1` columns, the third load one lane.
#[cfg(target_arch = "x86_64")]
fn window_masks(start: isize, w: usize, lanes: usize) -> [u16; 3] {
    let lanes_i = lanes as isize;
    [
        column_mask(start, w, lanes),
        column_mask(start + lanes_i, w, lanes),
        column_mask(start + 2 * lanes_i, w, lanes) & 1,
    ]
}

/// The index tables of the windows (even, odd, next) as vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn window_tables<I>(even: &[I], odd: &[I], next: &[I]) -> [std::arch::x86_64::__m512i; 3] {
    use std::arch::x86_64::_mm512_loadu_si512;
    assert!(
        [even, odd, next]
            .iter()
            .all(|t| std::mem::size_of_val(*t) == 64)
    );
    // SAFETY: AVX-512F is enabled; each table is 64 bytes (asserted), read unaligned.
    [even, odd, next].map(|t| unsafe { _mm512_loadu_si512(t.as_ptr().cast()) })
}

/// The kernels of one element type.
#[cfg(target_arch = "x86_64")]
macro_rules! stride2_kernel {
    ($name:ident, $grad:ident, $delta:ident, $windows:ident, $t:ty, $v:ty, $lanes:literal, $m:ty,
     tables = ($even:ident, $odd:ident, $next:ident, $low:ident, $high:ident), set1 = $set1:ident, zero = $zero:ident,
     load = $load:ident, store = $store:ident, fma = $fma:ident, permute = $permute:ident,
     add = $add:ident, loadu = $loadu:ident, storeu = $storeu:ident) => {
        /// The three windows (taps `s` = 0, 1, 2: columns `start + s + 2i`) of input row
        /// `ih` of the `H × W` plane `x` (`hw` = `[H, W]`), for the block of outputs whose
        /// first input column is `start`: three masked loads (`masks` from
        /// [`window_masks`]) split by the `tables` of [`window_tables`]; zeros for a row
        /// outside the plane.
        ///
        /// # Safety
        /// The CPU must support AVX-512F; `x` holds `H·W` elements.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn $windows(
            x: &[$t],
            [h, w]: [usize; 2],
            ih: isize,
            start: isize,
            masks: &[$m; 3],
            tables: &[std::arch::x86_64::__m512i; 3],
        ) -> [$v; 3] {
            use std::arch::x86_64::*;
            const L: isize = $lanes;
            let (a, b, c) = if (0..h as isize).contains(&ih) {
                let row = x.as_ptr().wrapping_add(ih as usize * w);
                // SAFETY: AVX-512F is enabled. The enabled lanes are columns
                // `0 <= start + i < w` (the masks) of row `0 <= ih < h`, inside `x` (`h·w`
                // elements, the caller's contract); disabled lanes are not read.
                unsafe {
                    (
                        $load(masks[0], row.wrapping_offset(start)),
                        $load(masks[1], row.wrapping_offset(start + L)),
                        $load(masks[2], row.wrapping_offset(start + 2 * L)),
                    )
                }
            } else {
                ($zero(), $zero(), $zero())
            };
            let w0 = $permute(a, tables[0], b);
            [w0, $permute(a, tables[1], b), $permute(w0, tables[2], c)]
        }

        /// `out[p][q] = init + Σ_{r,s} weights[3·r + s] · xpad[2p + r][2q + s]` over the
        /// zero-padded `H × W` input plane `x` (`layer`'s sizes are the stride-2 layer's,
        /// [`Rows3Layer::of_stride2`]); `out` is the `P × Q` output plane.
        ///
        /// # Safety
        /// The CPU must support AVX-512F. The slices are checked here.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn $name(
            layer: &Rows3Layer,
            x: &[$t],
            weights: &[$t],
            init: $t,
            out: &mut [$t],
        ) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            let Rows3Layer {
                h,
                w,
                p,
                q,
                pad_h,
                pad_w,
            } = *layer;
            let weights: &[$t; 9] = weights.try_into().expect("stride2: 3×3 taps per filter");
            assert!(
                x.len() == h * w && out.len() == p * q,
                "stride2: plane of the wrong size"
            );
            let taps: [_; 9] = std::array::from_fn(|i| $set1(weights[i]));
            let tables = window_tables(&$even, &$odd, &$next);
            // Output row `oh + b` reads input rows `2·(oh + b) + r − pad_h`: the block's
            // rows `t = 2b + r` below `2·BLOCKS + 1`. Each band of input rows is read
            // once, left to right, column block by column block.
            for oh in (0..p).step_by(BLOCKS) {
                for col in (0..q).step_by(L) {
                    let start = 2 * col as isize - pad_w as isize;
                    let masks = window_masks(start, w, L).map(|m| m as $m);
                    let out_mask = column_mask(col as isize, q, L) as $m;
                    // The three windows of the block's input row `t`.
                    let windows = |t: usize| {
                        let ih = (2 * oh + t) as isize - pad_h as isize;
                        // SAFETY: AVX-512F is enabled; `x` is the `h × w` plane (asserted).
                        unsafe { $windows(x, [h, w], ih, start, &masks, &tables) }
                    };
                    // Kernel row `r` of output row `acc` meets the windows `ws`.
                    let add_row = |acc: $v, r: usize, ws: [$v; 3]| {
                        let acc = $fma(taps[3 * r], ws[0], acc);
                        let acc = $fma(taps[3 * r + 1], ws[1], acc);
                        $fma(taps[3 * r + 2], ws[2], acc)
                    };
                    // Output row `b` meets input rows `2b` (r = 0), `2b + 1` and `2b + 2`;
                    // row `2b + 2` is also row `b + 1`'s first. Written with fixed bounds,
                    // so that the loop unrolls and the sums stay in registers.
                    let mut acc = [$set1(init); BLOCKS];
                    acc[0] = add_row(acc[0], 0, windows(0));
                    for b in 0..BLOCKS {
                        acc[b] = add_row(acc[b], 1, windows(2 * b + 1));
                        let shared = windows(2 * b + 2);
                        acc[b] = add_row(acc[b], 2, shared);
                        if b + 1 < BLOCKS {
                            acc[b + 1] = add_row(acc[b + 1], 0, shared);
                        }
                    }
                    for (b, acc) in acc.iter().enumerate().take(p - oh) {
                        let at = out.as_mut_ptr().wrapping_add((oh + b) * q + col);
                        // SAFETY: AVX-512F is enabled. The enabled lanes are columns
                        // `col + i < q` (the mask) of output row `oh + b < p`: inside `out`
                        // (`p·q` elements, asserted).
                        unsafe { $store(at, out_mask, *acc) };
                    }
                }
            }
        }

        /// Adds one image's weight (and bias) gradient of one filter to `sums`, in the
        /// layout of [`Rows3::rows3_weight_gradient`](super::Rows3::rows3_weight_gradient):
        /// `sums[16·(3r + s) + j] += Σ_{p, q ≡ j} dy[p][q] · xpad[2p + r][2q + s]` (`j` below
        /// the vector's lane count), and with `bias`, `sums[16·9 + j] += Σ_{p, q ≡ j}
        /// dy[p][q]`. `x` is the `H × W` input plane, `dy` the `P × Q` output gradient.
        ///
        /// # Safety
        /// The CPU must support AVX-512F. The slices are checked here.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn $grad(
            layer: &Rows3Layer,
            x: &[$t],
            dy: &[$t],
            sums: &mut [$t],
            bias: bool,
        ) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            const SUM_BLOCK: usize = super::rows3::SUM_BLOCK;
            let Rows3Layer {
                h,
                w,
                p,
                q,
                pad_h,
                pad_w,
            } = *layer;
            assert!(
                x.len() == h * w && dy.len() == p * q && sums.len() == 10 * SUM_BLOCK,
                "stride2: plane or sums of the wrong size"
            );
            // SAFETY (all loads and stores of `sums`): AVX-512F is enabled; block `i < 10`
            // spans elements `16·i .. 16·i + L` of `sums` (160 elements, asserted; L ≤ 16).
            let mut acc: [$v; 10] =
                std::array::from_fn(|i| unsafe { $loadu(sums.as_ptr().add(i * SUM_BLOCK)) });
            let tables = window_tables(&$even, &$odd, &$next);
            for oh in (0..p).step_by(BLOCKS) {
                // The block's dy rows: only rows below P take part (the input rows that
                // meet only rows past the plane's end are not read).
                let rows = BLOCKS.min(p - oh);
                for col in (0..q).step_by(L) {
                    let start = 2 * col as isize - pad_w as isize;
                    let masks = window_masks(start, w, L).map(|m| m as $m);
                    let dy_mask = column_mask(col as isize, q, L) as $m;
                    let mut d = [$zero(); BLOCKS];
                    for (b, d) in d.iter_mut().enumerate().take(rows) {
                        // SAFETY: AVX-512F is enabled; the enabled lanes are columns
                        // `col + i < q` of dy row `oh + b < p`, inside `dy` (asserted).
                        *d = unsafe { $load(dy_mask, dy.as_ptr().add((oh + b) * q + col)) };
                        if bias {
                            acc[9] = $add(acc[9], *d);
                        }
                    }
                    // The three windows of the block's input row `t`, as in the forward.
                    let windows = |t: usize| {
                        let ih = (2 * oh + t) as isize - pad_h as isize;
                        // SAFETY: AVX-512F is enabled; `x` is the `h × w` plane (asserted).
                        unsafe { $windows(x, [h, w], ih, start, &masks, &tables) }
                    };
                    // dy row `d` meets the windows `ws` at kernel row `r`: taps `3r + s`.
                    let add_row = |acc: &mut [$v; 10], d: $v, r: usize, ws: [$v; 3]| {
                        for (s, ws) in ws.into_iter().enumerate() {
                            acc[3 * r + s] = $fma(d, ws, acc[3 * r + s]);
                        }
                    };
                    // dy row `b` meets input rows `2b`, `2b + 1`, `2b + 2` (the last also
                    // row `b + 1`'s first), with fixed bounds as in the forward.
                    add_row(&mut acc, d[0], 0, windows(0));
                    for b in 0..BLOCKS {
                        if b < rows {
                            add_row(&mut acc, d[b], 1, windows(2 * b + 1));
                            let shared = windows(2 * b + 2);
                            add_row(&mut acc, d[b], 2, shared);
                            if b + 1 < rows {
                                add_row(&mut acc, d[b + 1], 0, shared);
                            }
                        }
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: see the loads of `sums` above.
                unsafe { $storeu(sums.as_mut_ptr().add(i * SUM_BLOCK), *a) };
            }
        }

        /// The input delta with one filter per channel: `dx[ih][iw] = Σ w[r][s] ·
        /// dy[p][q]` over the taps and outputs with `2p + r − pad_h = ih`, `2q + s − pad_w
        /// = iw`, written into the `H × W` plane `dx` (with `accumulate`, added to it).
        /// `dy` is the `P × Q` output gradient, `weights` the filter's 3 × 3 taps.
        ///
        /// An input row meets kernel rows of one parity (`r` = 0 and 2, or 1), and in
        /// each block of `2·L` input columns starting at an even padded column `2m`, the
        /// even columns take taps `s` = 0 and 2 (`dy` columns `m + i` and `m + i − 1`),
        /// the odd ones tap 1 (`m + i`): two vectors `e`, `o` from one or two `dy` rows,
        /// interleaved into the block by two `vpermt2ps`. Each element adds its terms in
        /// the order `r`, then `s`.
        ///
        /// # Safety
        /// The CPU must support AVX-512F. The slices are checked here.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn $delta(
            layer: &Rows3Layer,
            dy: &[$t],
            weights: &[$t],
            dx: &mut [$t],
            accumulate: bool,
        ) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            let Rows3Layer {
                h,
                w,
                p,
                q,
                pad_h,
                pad_w,
            } = *layer;
            let weights: &[$t; 9] = weights.try_into().expect("stride2: 3×3 taps per filter");
            assert!(
                dy.len() == p * q && dx.len() == h * w,
                "stride2: plane of the wrong size"
            );
            let taps: [_; 9] = std::array::from_fn(|i| $set1(weights[i]));
            // SAFETY: AVX-512F is enabled; each table is 64 bytes, read unaligned.
            let (low, high) = unsafe {
                (
                    _mm512_loadu_si512($low.as_ptr().cast()),
                    _mm512_loadu_si512($high.as_ptr().cast()),
                )
            };
            for ih in 0..h {
                let u = ih + pad_h;
                let dx_row = dx.as_mut_ptr().wrapping_add(ih * w);
                // Blocks of padded columns `2m .. 2m + 2L` covering `pad_w .. pad_w + W`.
                for m in (pad_w / 2..(pad_w + w).div_ceil(2)).step_by(L) {
                    let (d_mask, before_mask) = (
                        column_mask(m as isize, q, L) as $m,
                        column_mask(m as isize - 1, q, L) as $m,
                    );
                    // Adds kernel row `r`'s terms, if its dy row is in the plane.
                    let add_row = |r: usize, (e, o): ($v, $v)| {
                        let Some(row) = u.checked_sub(r).map(|v| v / 2).filter(|&pr| pr < p) else {
                            return (e, o);
                        };
                        let at = dy.as_ptr().wrapping_add(row * q);
                        // SAFETY: AVX-512F is enabled. The enabled lanes are columns
                        // `0 <= m + i (− 1) < q` (the masks) of dy row `row < p`, inside
                        // `dy` (`p·q` elements, asserted).
                        let (d, before) = unsafe {
                            (
                                $load(d_mask, at.wrapping_add(m)),
                                $load(before_mask, at.wrapping_add(m).wrapping_sub(1)),
                            )
                        };
                        let e = $fma(taps[3 * r], d, e);
                        let e = $fma(taps[3 * r + 2], before, e);
                        (e, $fma(taps[3 * r + 1], d, o))
                    };
                    // Kernel rows of the row's parity, in order (constant `r`: the taps
                    // stay in registers).
                    let zero = ($zero(), $zero());
                    let (e, o) = if u % 2 == 0 {
                        add_row(2, add_row(0, zero))
                    } else {
                        add_row(1, zero)
                    };
                    let start = 2 * m as isize - pad_w as isize;
                    let masks = [
                        column_mask(start, w, L) as $m,
                        column_mask(start + L as isize, w, L) as $m,
                    ];
                    for (half, (table, mask)) in [low, high].into_iter().zip(masks).enumerate() {
                        let at = dx_row.wrapping_offset(start + (half * L) as isize);
                        let v = $permute(e, table, o);
                        // SAFETY: AVX-512F is enabled. The enabled lanes are columns
                        // `0 <= start + half·L + i < w` (the mask) of row `ih < h`, inside
                        // `dx` (`h·w` elements, asserted).
                        unsafe {
                            let v = if accumulate {
                                $add($load(mask, at), v)
                            } else {
                                v
                            };
                            $store(at, mask, v);
                        }
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
stride2_kernel!(
    forward_f32_avx512,
    gradient_f32_avx512,
    input_delta_f32_avx512,
    windows_f32,
    f32,
    std::arch::x86_64::__m512,
    16,
    u16,
    tables = (EVEN_F32, ODD_F32, NEXT_F32, LOW_F32, HIGH_F32),
    set1 = _mm512_set1_ps,
    zero = _mm512_setzero_ps,
    load = _mm512_maskz_loadu_ps,
    store = _mm512_mask_storeu_ps,
    fma = _mm512_fmadd_ps,
    permute = _mm512_permutex2var_ps,
    add = _mm512_add_ps,
    loadu = _mm512_loadu_ps,
    storeu = _mm512_storeu_ps
);

#[cfg(target_arch = "x86_64")]
stride2_kernel!(
    forward_f64_avx512,
    gradient_f64_avx512,
    input_delta_f64_avx512,
    windows_f64,
    f64,
    std::arch::x86_64::__m512d,
    8,
    u8,
    tables = (EVEN_F64, ODD_F64, NEXT_F64, LOW_F64, HIGH_F64),
    set1 = _mm512_set1_pd,
    zero = _mm512_setzero_pd,
    load = _mm512_maskz_loadu_pd,
    store = _mm512_mask_storeu_pd,
    fma = _mm512_fmadd_pd,
    permute = _mm512_permutex2var_pd,
    add = _mm512_add_pd,
    loadu = _mm512_loadu_pd,
    storeu = _mm512_storeu_pd
);

#[cfg(target_arch = "x86_64")]
pub(super) use {
    forward_f32_avx512 as forward_f32, forward_f64_avx512 as forward_f64,
    gradient_f32_avx512 as gradient_f32, gradient_f64_avx512 as gradient_f64,
    input_delta_f32_avx512 as input_delta_f32, input_delta_f64_avx512 as input_delta_f64,
};

/// Whether the kernels here run on this CPU (AVX-512).
pub(super) fn available() -> bool {
    cfg!(target_arch = "x86_64") && crate::simd::isa() == crate::simd::Isa::Avx512
}

#[cfg(test)]
mod tests {
    use super::super::kernel_tests::{Plane, assert_tap_sums, plane_geometry, random};
    use super::super::phases::Phases;
    use super::super::rows3::Rows3Layer;
    use crate::element::Element;
    use crate::shape::ConvGeometry;

    /// The kernel gives the phase planes' bits (`Phases::place`, then `correlate_flat`),
    /// on random data: paddings 0–3, even and odd plane sizes, planes narrower than a
    /// vector and wider than two, output heights that are not a multiple of the rows in
    /// flight. Skipped (passes vacuously) on CPUs without AVX-512.
    #[test]
    fn bit_identical_to_the_phase_planes() {
        check::<f32>();
        check::<f64>();
    }

    /// The weight-gradient kernel against the definition (f64 sums over the outputs), with
    /// and without the bias sums, starting from nonzero partial sums as over a batch.
    /// Skipped (passes vacuously) on CPUs without AVX-512.
    #[test]
    fn weight_gradient_matches_the_definition() {
        check_gradient::<f32>(f32::EPSILON as f64);
        check_gradient::<f64>(f64::EPSILON);
    }

    /// `epsilon`: the unit roundoff of `T`.
    fn check_gradient<T: Element>(epsilon: f64) {
        const SUM_BLOCK: usize = super::super::rows3::SUM_BLOCK;
        let mut next = random::<T>(0xD1CE2);
        for (h, w, pad) in SHAPES {
            let (geo, layer) = plane(h, w, pad);
            let (p, q) = (geo.h.output, geo.w.output);
            let x: Vec<T> = (0..h * w).map(|_| next()).collect();
            let dy: Vec<T> = (0..p * q).map(|_| next()).collect();
            let start: Vec<T> = (0..10 * SUM_BLOCK).map(|_| next()).collect();
            for bias in [false, true] {
                let mut sums = start.clone();
                if !T::rows3_stride2_weight_gradient(&layer, &x, &dy, &mut sums, bias) {
                    return;
                }
                // The partial sums per tap: one vector's lanes.
                let lanes = 64 / std::mem::size_of::<T>();
                let sizes = Plane {
                    input: [h, w],
                    output: [p, q],
                    pad,
                    stride: 2,
                };
                assert_tap_sums(&sizes, &x, &dy, &start, &sums, bias, lanes, epsilon);
            }
        }
    }

    /// The input-delta kernel against the definition (f64 sums), writing and accumulating
    /// onto random values. Skipped (passes vacuously) on CPUs without AVX-512.
    #[test]
    fn input_delta_matches_the_definition() {
        check_delta::<f32>(f32::EPSILON as f64);
        check_delta::<f64>(f64::EPSILON);
    }

    /// `epsilon`: the unit roundoff of `T`.
    fn check_delta<T: Element>(epsilon: f64) {
        let mut next = random::<T>(0xDE17A);
        for (h, w, pad) in SHAPES {
            let (geo, layer) = plane(h, w, pad);
            let (p, q) = (geo.h.output, geo.w.output);
            let dy: Vec<T> = (0..p * q).map(|_| next()).collect();
            let weights: Vec<T> = (0..9).map(|_| next()).collect();
            let old: Vec<T> = (0..h * w).map(|_| next()).collect();
            for accumulate in [false, true] {
                let mut dx = if accumulate {
                    old.clone()
                } else {
                    vec![T::from_f64(f64::NAN); h * w]
                };
                if !T::rows3_stride2_input_delta(&layer, &dy, &weights, &mut dx, accumulate) {
                    return;
                }
                for ih in 0..h {
                    for iw in 0..w {
                        let mut want = if accumulate {
                            old[ih * w + iw].to_f64()
                        } else {
                            0.0
                        };
                        let mut magnitude = want.abs();
                        for (tap, wt) in weights.iter().enumerate() {
                            let (u, v) = (ih + pad, iw + pad);
                            let (r, s) = (tap / 3, tap % 3);
                            if u < r || v < s || (u - r) % 2 == 1 || (v - s) % 2 == 1 {
                                continue;
                            }
                            let (oh, ow) = ((u - r) / 2, (v - s) / 2);
                            if oh < p && ow < q {
                                let term = wt.to_f64() * dy[oh * q + ow].to_f64();
                                want += term;
                                magnitude += term.abs();
                            }
                        }
                        let got = dx[ih * w + iw].to_f64();
                        // At most 4 products and the old value: 5 roundings.
                        let bound = 5.0 * epsilon * magnitude;
                        assert!(
                            (got - want).abs() <= bound,
                            "{h}×{w} pad {pad}, accumulate {accumulate}: dx ({ih}, {iw}): \
                             {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Plane sizes `h × w` and paddings: paddings 0–3, even and odd sizes, planes narrower
    /// than a vector and wider than two, output heights that are not a multiple of the
    /// rows in flight.
    const SHAPES: [(usize, usize, usize); 10] = [
        (56, 56, 1),
        (7, 7, 1),
        (8, 9, 0),
        (5, 40, 2),
        (3, 3, 1),
        (13, 70, 1),
        (11, 33, 3),
        (2, 66, 1),
        (3, 66, 0),
        (9, 31, 2),
    ];

    /// One `h × w` plane, 3 × 3, stride 2, padding `pad`: its geometry and the kernels' sizes.
    fn plane(h: usize, w: usize, pad: usize) -> (ConvGeometry, Rows3Layer) {
        let geo = plane_geometry(h, w, pad, 2);
        let layer = Rows3Layer::of_stride2(&geo).unwrap();
        (geo, layer)
    }

    fn check<T: Element>() {
        let mut next = random::<T>(0x572D);
        for (h, w, pad) in SHAPES {
            let (geo, layer) = plane(h, w, pad);
            let (p, q) = (geo.h.output, geo.w.output);
            let x: Vec<T> = (0..h * w).map(|_| next()).collect();
            let weights: Vec<T> = (0..9).map(|_| next()).collect();
            let init = next();
            // The general path: the phase planes and the flat correlation.
            let phases = Phases::of(&geo);
            let mut phased = vec![T::ZERO; phases.len()];
            phases.place(&x, &mut phased);
            let mut flat = vec![T::ZERO; phases.flat_len(&geo)];
            super::super::correlate_flat(
                &phased,
                &phases.tap_offsets(&geo),
                &weights,
                init,
                &mut flat,
            );
            let mut fast = vec![T::from_f64(f64::NAN); p * q];
            if !T::rows3_stride2(&layer, &x, &weights, init, &mut fast) {
                return;
            }
            for oh in 0..p {
                for ow in 0..q {
                    let (got, want) = (fast[oh * q + ow], flat[oh * phases.width() + ow]);
                    assert!(
                        got.to_f64().to_bits() == want.to_f64().to_bits(),
                        "{h}×{w} pad {pad}: output ({oh}, {ow}): {got:?} vs {want:?}"
                    );
                }
            }
        }
    }
}
