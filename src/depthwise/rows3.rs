//! Direct AVX-512 kernels for the commonest depthwise layer: 3×3, stride 1, dilation 1.
//! One computes the forward, and the input delta as the same correlation of `dy` with the
//! flipped filter (padding `2 − pad`); the other the weight gradient, the dot products of
//! `dy` with the same shifted windows of the input.
//!
//! The general path ([`super::forward`]) copies each input plane into a zero-padded buffer
//! and then loads one vector per tap and output block, at an offset of one or two
//! elements: 9 loads per 16 outputs, most of them split across two cache lines, and the
//! load ports, not the FMAs, set the pace (about 2.5 cycles per FMA on an L1-resident
//! plane). Here each block of `L` outputs (16 f32, 8 f64) takes the `2·L` input columns
//! it reads (`lo`, `hi`) straight from the input plane, with masked loads that give 0 for
//! columns in the padding (rows in the padding are zero vectors), and forms the windows
//! of taps 1 and 2 with `valign` (`lo[s..] ‖ hi[..s]`) in registers. Four output rows are
//! in flight, so each of the six input rows they read is loaded and shifted once for up
//! to three of them: per 9 FMAs, 3 loads and 3 shuffles instead of 9 split loads, and no
//! padded copy. The forward does the general path's multiply-adds in the same order, so
//! its results are bit-identical to it.

use crate::shape::ConvGeometry;

/// The 3×3 row kernel of one element type (a hidden supertrait of
/// [`Element`](crate::Element), so the generic forward can name it).
pub trait Rows3: Sized {
    /// `out[p][q] = init + Σ_{r,s} weights[3·r + s] · xpad[p + r][q + s]` over the
    /// zero-padded input plane `xpad` (`x` is one `H × W` input plane, `out` one `P × Q`
    /// output plane, `weights` one filter's 3 × 3 taps); with `accumulate`, that sum is
    /// added to `out` instead (`out = out + sum`, one rounding more). Returns `false`,
    /// having written nothing, where the CPU has no AVX-512: the caller then takes the
    /// general path.
    fn rows3(
        layer: &Rows3Layer,
        x: &[Self],
        weights: &[Self],
        init: Self,
        out: &mut [Self],
        accumulate: bool,
    ) -> bool;

    /// Adds one image's weight (and bias) gradient of one filter to `sums`:
    /// `sums[16·(3r + s) + j] += Σ_{p, q ≡ j} dy[p][q] · xpad[p + r][q + s]` for the 9 taps,
    /// and with `bias`, `sums[16·9 + j] += Σ_{p, q ≡ j} dy[p][q]` (`j` below the vector's
    /// lane count; `sums` holds 10 blocks of 16). `x` is the `H × W` input plane, `dy` the
    /// `P × Q` output-gradient plane. Returns `false`, having changed nothing, where the
    /// CPU has no AVX-512.
    fn rows3_weight_gradient(
        layer: &Rows3Layer,
        x: &[Self],
        dy: &[Self],
        sums: &mut [Self],
        bias: bool,
    ) -> bool;
}

/// Elements per block of the partial sums of [`Rows3::rows3_weight_gradient`].
pub(crate) const SUM_BLOCK: usize = 16;

/// The sizes [`Rows3::rows3`] needs, for a layer it computes.
#[derive(Clone, Copy, Debug)]
pub struct Rows3Layer {
    /// Input plane `H × W`.
    h: usize,
    w: usize,
    /// Output plane `P × Q`.
    p: usize,
    q: usize,
    pad_h: usize,
    pad_w: usize,
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

/// Whether [`Rows3::rows3`] runs here (AVX-512), for both element types.
pub(crate) fn available() -> bool {
    cfg!(target_arch = "x86_64") && crate::simd::isa() == crate::simd::Isa::Avx512
}

/// Lanes `i` of a block starting at column `start` with `0 <= start + i < width`, as a
/// bit mask (`lanes` at most 16).
#[inline(always)]
fn column_mask(start: isize, width: usize, lanes: usize) -> u16 {
    let first = (-start).clamp(0, lanes as isize) as u32;
    let end = (width as isize - start).clamp(0, lanes as isize) as u32;
    if first >= end {
        return 0;
    }
    let upto = |n: u32| if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
    upto(end) & !upto(first)
}

/// Output rows in flight: four independent FMA chains hide the FMA latency.
const BLOCKS: usize = 4;

macro_rules! rows3_kernel {
    ($t:ty, $name:ident, $lanes:literal, $mask:ty,
     set1 = $set1:ident, zero = $zero:ident, load = $load:ident, store = $store:ident,
     fma = $fma:ident, align = $align:ident, to_int = $to_int:ident, from_int = $from_int:ident,
     add = $add:ident, loadu = $loadu:ident, storeu = $storeu:ident, grad = $grad:ident) => {
        /// The kernel; see [`Rows3::rows3`].
        ///
        /// # Safety
        /// The CPU must support AVX-512F. The slices are checked here.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
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
                let lo_mask = column_mask(start, w, L) as $mask;
                let hi_mask = column_mask(start + L as isize, w, L) as $mask;
                let out_mask = column_mask(col as isize, q, L) as $mask;
                // BLOCKS output rows at a time: output row `oh + b` reads input rows
                // `oh + b + r − pad_h`, so the BLOCKS + 2 input rows are each loaded and
                // shifted once and feed up to three output rows. Per output, the taps are
                // added in the order r, s, as in the general path.
                for oh in (0..p).step_by(BLOCKS) {
                    let mut acc = [$set1(init); BLOCKS];
                    for t in 0..BLOCKS + 2 {
                        let ih = (oh + t) as isize - pad_h;
                        let (lo, hi) = if (0..h as isize).contains(&ih) {
                            let row = x.as_ptr().wrapping_add(ih as usize * w);
                            // SAFETY: AVX-512F is enabled (this function's contract). A
                            // masked load touches only its enabled lanes: columns
                            // `start + i` with `0 <= start + i < w` (the masks) of row
                            // `0 <= ih < h`, all inside `x` (`h·w` elements, asserted).
                            unsafe {
                                (
                                    $load(lo_mask, row.wrapping_offset(start)),
                                    $load(hi_mask, row.wrapping_offset(start + L as isize)),
                                )
                            }
                        } else {
                            ($zero(), $zero())
                        };
                        let shifted1 = $from_int($align::<1>($to_int(hi), $to_int(lo)));
                        let shifted2 = $from_int($align::<2>($to_int(hi), $to_int(lo)));
                        for b in t.saturating_sub(2)..(t + 1).min(BLOCKS) {
                            let r = t - b;
                            acc[b] = $fma(taps[3 * r], lo, acc[b]);
                            acc[b] = $fma(taps[3 * r + 1], shifted1, acc[b]);
                            acc[b] = $fma(taps[3 * r + 2], shifted2, acc[b]);
                        }
                    }
                    for (b, acc) in acc.iter().enumerate().take(p - oh) {
                        let at = out.as_mut_ptr().wrapping_add((oh + b) * q + col);
                        // SAFETY: AVX-512F is enabled. The load's and the store's enabled
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
        /// The CPU must support AVX-512F. The slices are checked here.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn $grad(layer: &Rows3Layer, x: &[$t], dy: &[$t], sums: &mut [$t], bias: bool) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            let Rows3Layer { h, w, p, q, .. } = *layer;
            let (pad_h, pad_w) = (layer.pad_h as isize, layer.pad_w as isize);
            assert!(
                x.len() == h * w && dy.len() == p * q && sums.len() == 10 * SUM_BLOCK,
                "rows3: plane or sums of the wrong size"
            );
            // SAFETY (all loads and stores of `sums`): AVX-512F is enabled; block `i < 10`
            // spans elements `16·i .. 16·i + L` of `sums` (160 elements, asserted).
            let mut acc: [_; 10] =
                std::array::from_fn(|i| unsafe { $loadu(sums.as_ptr().add(i * SUM_BLOCK)) });
            for col in (0..q).step_by(L) {
                let start = col as isize - pad_w;
                let lo_mask = column_mask(start, w, L) as $mask;
                let hi_mask = column_mask(start + L as isize, w, L) as $mask;
                let dy_mask = column_mask(col as isize, q, L) as $mask;
                // Four dy rows at a time: dy row `oh + b` meets input row `oh + b + r −
                // pad_h` at kernel row r, so each of the six input rows is loaded and
                // shifted once for up to three of them.
                for oh in (0..p).step_by(BLOCKS) {
                    let mut d = [$zero(); BLOCKS];
                    for (b, d) in d.iter_mut().enumerate().take(p - oh) {
                        // SAFETY: AVX-512F is enabled; the enabled lanes are columns
                        // `col + i < q` of dy row `oh + b < p`, inside `dy` (asserted).
                        *d = unsafe { $load(dy_mask, dy.as_ptr().add((oh + b) * q + col)) };
                        if bias {
                            acc[9] = $add(acc[9], *d);
                        }
                    }
                    for t in 0..BLOCKS + 2 {
                        let ih = (oh + t) as isize - pad_h;
                        if !(0..h as isize).contains(&ih) {
                            continue;
                        }
                        let row = x.as_ptr().wrapping_add(ih as usize * w);
                        // SAFETY: as in the forward kernel: the enabled lanes are columns
                        // `0 <= start + i < w` of row `0 <= ih < h`, inside `x`.
                        let (lo, hi) = unsafe {
                            (
                                $load(lo_mask, row.wrapping_offset(start)),
                                $load(hi_mask, row.wrapping_offset(start + L as isize)),
                            )
                        };
                        let shifted1 = $from_int($align::<1>($to_int(hi), $to_int(lo)));
                        let shifted2 = $from_int($align::<2>($to_int(hi), $to_int(lo)));
                        for b in t.saturating_sub(2)..(t + 1).min(BLOCKS) {
                            let r = t - b;
                            acc[3 * r] = $fma(d[b], lo, acc[3 * r]);
                            acc[3 * r + 1] = $fma(d[b], shifted1, acc[3 * r + 1]);
                            acc[3 * r + 2] = $fma(d[b], shifted2, acc[3 * r + 2]);
                        }
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: see the loads of `sums` above.
                unsafe { $storeu(sums.as_mut_ptr().add(i * SUM_BLOCK), *a) };
            }
        }

        impl Rows3 for $t {
            fn rows3(
                layer: &Rows3Layer,
                x: &[$t],
                weights: &[$t],
                init: $t,
                out: &mut [$t],
                accumulate: bool,
            ) -> bool {
                #[cfg(target_arch = "x86_64")]
                if crate::simd::isa() == crate::simd::Isa::Avx512 {
                    // SAFETY: `isa()` returns Avx512 only when the CPU reports avx512f.
                    unsafe { $name(layer, x, weights, init, out, accumulate) };
                    return true;
                }
                let _ = (layer, x, weights, init, out, accumulate);
                false
            }

            fn rows3_weight_gradient(
                layer: &Rows3Layer,
                x: &[$t],
                dy: &[$t],
                sums: &mut [$t],
                bias: bool,
            ) -> bool {
                #[cfg(target_arch = "x86_64")]
                if crate::simd::isa() == crate::simd::Isa::Avx512 {
                    // SAFETY: `isa()` returns Avx512 only when the CPU reports avx512f.
                    unsafe { $grad(layer, x, dy, sums, bias) };
                    return true;
                }
                let _ = (layer, x, dy, sums, bias);
                false
            }
        }
    };
}

rows3_kernel!(
    f32,
    rows3_f32,
    16,
    u16,
    set1 = _mm512_set1_ps,
    zero = _mm512_setzero_ps,
    load = _mm512_maskz_loadu_ps,
    store = _mm512_mask_storeu_ps,
    fma = _mm512_fmadd_ps,
    align = _mm512_alignr_epi32,
    to_int = _mm512_castps_si512,
    from_int = _mm512_castsi512_ps,
    add = _mm512_add_ps,
    loadu = _mm512_loadu_ps,
    storeu = _mm512_storeu_ps,
    grad = rows3_grad_f32
);
rows3_kernel!(
    f64,
    rows3_f64,
    8,
    u8,
    set1 = _mm512_set1_pd,
    zero = _mm512_setzero_pd,
    load = _mm512_maskz_loadu_pd,
    store = _mm512_mask_storeu_pd,
    fma = _mm512_fmadd_pd,
    align = _mm512_alignr_epi64,
    to_int = _mm512_castpd_si512,
    from_int = _mm512_castsi512_pd,
    add = _mm512_add_pd,
    loadu = _mm512_loadu_pd,
    storeu = _mm512_storeu_pd,
    grad = rows3_grad_f64
);

#[cfg(test)]
mod tests {
    use super::column_mask;

    #[test]
    fn column_masks() {
        assert_eq!(column_mask(0, 28, 16), 0xFFFF);
        assert_eq!(column_mask(-1, 28, 16), 0xFFFE);
        assert_eq!(column_mask(15, 28, 16), 0x1FFF); // columns 15..28
        assert_eq!(column_mask(31, 28, 16), 0);
        assert_eq!(column_mask(-20, 28, 16), 0);
        assert_eq!(column_mask(-2, 3, 8), 0b11100);
        assert_eq!(column_mask(0, 5, 8), 0b11111);
    }
}

#[cfg(test)]
mod equal_to_general_path {
    use super::{Rows3, Rows3Layer};
    use crate::shape::{Conv2dSpec, ConvGeometry};

    /// The kernel gives the general path's bits (the padded plane and one load per tap,
    /// `correlate_flat`), on random data, for paddings 0–2, planes narrower and wider than a
    /// vector, and output heights that are not a multiple of the rows in flight. Skipped
    /// (passes vacuously) on CPUs without AVX-512.
    #[test]
    fn bit_identical_to_the_padded_correlation() {
        let mut seed = 0x5EED_u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for (h, w, pad) in [
            (8, 8, 1),
            (7, 37, 1),
            (5, 16, 0),
            (9, 17, 2),
            (3, 3, 0),
            (2, 30, 2),
            (28, 28, 1),
        ] {
            let spec = Conv2dSpec {
                batch: 1,
                in_channels: 1,
                in_h: h,
                in_w: w,
                out_channels: 1,
                kernel: [3, 3],
                padding: [pad, pad],
                ..Default::default()
            };
            let geo = ConvGeometry::new(&spec).unwrap();
            let layer = Rows3Layer::of(&geo).unwrap();
            let x: Vec<f32> = (0..h * w).map(|_| next()).collect();
            let weights: Vec<f32> = (0..9).map(|_| next()).collect();
            let init = next();
            let mut fast = vec![f32::NAN; geo.out_plane];
            if !f32::rows3(&layer, &x, &weights, init, &mut fast, false) {
                return;
            }
            let (hp, wp) = (h + 2 * pad, w + 2 * pad);
            let (p, q) = (geo.h.output, geo.w.output);
            let mut padded = vec![0.0f32; hp * wp];
            super::super::place(&x, w, &mut padded, wp, pad as isize, pad as isize);
            let offsets = super::super::tap_offsets(&geo, wp);
            let mut flat = vec![0.0f32; (p - 1) * wp + q];
            super::super::correlate_flat(&padded, &offsets, &weights, init, &mut flat);
            for oh in 0..p {
                for ow in 0..q {
                    assert_eq!(
                        fast[oh * q + ow].to_bits(),
                        flat[oh * wp + ow].to_bits(),
                        "{h}×{w} pad {pad}: output ({oh}, {ow})"
                    );
                }
            }
        }
    }
}
