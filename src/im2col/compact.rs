//! AVX-512 packing of panel rows from padded planes with two-source permutes.
//!
//! A packed row of the forward's B panel holds `NR` consecutive output pixels of one tap
//! row `(c, r, s)`: pieces of one to three output rows, each a contiguous run of the
//! padded planes, with the padding columns of the plane rows between them. The portable
//! packer copies run by run; a 28-pixel-wide plane splits a 32-column panel into runs of
//! 28 and 4, and that packer moved about 2 elements per cycle (7% of resnet_3x3_28's
//! forward). Here each half of the panel (`L` lanes: 16 f32, 8 f64) whose pixels lie
//! within `2·L` consecutive plane elements is one masked load of each of the two vectors
//! there and one `vpermt2ps`/`vpermt2pd` per tap row, which drops the padding columns
//! between the runs. The lane map depends only on the pixels, not on the tap (a tap adds
//! the same offset to every pixel), so it is built once per panel and reused by every row.

use crate::element::Element;

/// Fewest tap rows for which building a [`HalfPanel`] pays: LeNet's first layer (25 rows
/// of one channel) packed 3% slower with permutes than run by run.
/// (2 in the unit tests, whose tap blocks are 5 rows.)
pub(super) const MIN_ROWS: usize = if cfg!(test) { 2 } else { 32 };

/// The pixels of one half panel as positions in a plane: lane `i < valid` takes element
/// `lo + idx[i]` (past the tap's offset); the `span` elements from `lo` hold them all.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct HalfPanel {
    lo: usize,
    span: usize,
    valid: usize,
    idx: [u32; 16],
}

impl HalfPanel {
    /// The map of `offsets` (increasing plane positions, at most `lanes` of them, at
    /// least one), if they fit in two vectors of `lanes` elements.
    pub(super) fn new(offsets: impl Iterator<Item = usize>, lanes: usize) -> Option<HalfPanel> {
        let mut idx = [0u32; 16];
        let (mut lo, mut valid, mut last) = (0, 0, 0);
        for (i, off) in offsets.enumerate() {
            if i >= lanes.min(16) {
                return None;
            }
            if i == 0 {
                lo = off;
            }
            let rel = off.checked_sub(lo)?;
            if rel >= 2 * lanes || (i > 0 && off <= last) {
                return None;
            }
            idx[i] = rel as u32;
            (valid, last) = (i + 1, off);
        }
        (valid > 0).then_some(HalfPanel {
            lo,
            span: last - lo + 1,
            valid,
            idx,
        })
    }
}

/// Writes `dst[kk·nr + at + i] = planes[taps[kk] + half.lo + half.idx[i]]` for every row
/// `kk < taps.len()` and lane `i < half.valid`, and zero in the other lanes up to
/// `at + L` (`L` = 64 bytes of `T`). Returns `false`, having written nothing, where the
/// CPU has no AVX-512 or `T` has no kernel here; the caller then copies run by run.
///
/// Panics if a row's elements (`taps[kk] + half.lo + half.span`) lie past `planes`, or
/// the lanes past `dst` or `nr`.
pub(super) fn pack_half<T: Element>(
    planes: &[T],
    taps: &[usize],
    half: &HalfPanel,
    dst: &mut [T],
    nr: usize,
    at: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::any::TypeId;
        if crate::simd::isa() != crate::simd::Isa::Avx512 || taps.is_empty() {
            return false;
        }
        let lanes = 64 / size_of::<T>();
        let max_tap = taps.iter().copied().max().unwrap_or(0);
        assert!(
            max_tap + half.lo + half.span <= planes.len()
                && at + lanes <= nr
                && (taps.len() - 1) * nr + at + lanes <= dst.len()
                && half.valid <= lanes
                && half.span <= 2 * lanes,
            "pack_half: views out of bounds"
        );
        // SAFETY (both arms): `T` is the type named (so the casts reinterpret nothing),
        // the bounds were checked above (the kernels load only `lo .. lo + span` past
        // each tap and store `lanes` elements at `kk·nr + at`), and `isa()` reported
        // AVX-512F.
        if TypeId::of::<T>() == TypeId::of::<f32>() {
            let planes = unsafe { &*(planes as *const [T] as *const [f32]) };
            let dst = unsafe { &mut *(dst as *mut [T] as *mut [f32]) };
            unsafe { avx512::rows_f32(planes, taps, half, dst, nr, at) };
            return true;
        }
        if TypeId::of::<T>() == TypeId::of::<f64>() {
            let planes = unsafe { &*(planes as *const [T] as *const [f64]) };
            let dst = unsafe { &mut *(dst as *mut [T] as *mut [f64]) };
            unsafe { avx512::rows_f64(planes, taps, half, dst, nr, at) };
            return true;
        }
    }
    let _ = (planes, taps, half, dst, nr, at);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::HalfPanel;

    /// The low `n` bits set (`n` at most 16).
    fn low_bits(n: usize) -> u16 {
        if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
    }

    macro_rules! rows_kernel {
        ($name:ident, $t:ty, $lanes:literal, $mask:ty, idx = $idx:expr,
         load = $load:ident, perm = $perm:ident, store = $store:ident) => {
            /// [`super::pack_half`] for this type.
            ///
            /// # Safety
            /// The CPU has AVX-512F; `taps[kk] + half.lo + half.span <= planes.len()` for
            /// every `kk`, `half.span <= 2·L`, and `dst` holds `kk·nr + at + L` elements
            /// for every row (`L` lanes).
            #[target_feature(enable = "avx512f")]
            pub(super) unsafe fn $name(
                planes: &[$t],
                taps: &[usize],
                half: &HalfPanel,
                dst: &mut [$t],
                nr: usize,
                at: usize,
            ) {
                const L: usize = $lanes;
                let idx: __m512i = $idx(&half.idx);
                let first = low_bits(half.span.min(L)) as $mask;
                let second = low_bits(half.span.saturating_sub(L)) as $mask;
                let keep = low_bits(half.valid) as $mask;
                for (kk, &tap) in taps.iter().enumerate() {
                    let src = planes.as_ptr().wrapping_add(tap + half.lo);
                    // SAFETY: the masked lanes are elements `tap + lo + j` with
                    // `j < span`, inside `planes` (the caller's bound); masked-off lanes
                    // are never accessed. The store is `L` elements at `kk·nr + at`,
                    // inside `dst`.
                    unsafe {
                        let a = $load(first, src);
                        let b = $load(second, src.wrapping_add(L));
                        let row = $perm(keep, a, idx, b);
                        $store(dst.as_mut_ptr().add(kk * nr + at), row);
                    }
                }
            }
        };
    }

    rows_kernel!(
        rows_f32,
        f32,
        16,
        u16,
        // SAFETY: `idx` is 16 u32, one 512-bit load.
        idx = |idx: &[u32; 16]| unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) },
        load = _mm512_maskz_loadu_ps,
        perm = _mm512_maskz_permutex2var_ps,
        store = _mm512_storeu_ps
    );

    rows_kernel!(
        rows_f64,
        f64,
        8,
        u8,
        // SAFETY: the first 8 u32 of `idx`, one 256-bit load, widened to 8 u64.
        idx = |idx: &[u32; 16]| unsafe {
            _mm512_cvtepu32_epi64(_mm256_loadu_si256(idx.as_ptr().cast()))
        },
        load = _mm512_maskz_loadu_pd,
        perm = _mm512_maskz_permutex2var_pd,
        store = _mm512_storeu_pd
    );
}
