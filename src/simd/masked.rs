//! Masked vector loads and stores for kernels that read or write partial rows: the lane
//! masks of a run of columns, and AVX2 forms with the AVX-512 argument order (`mask`
//! first for loads, second for stores), so one kernel macro can serve both.

/// Lanes `i` of a block starting at column `start` with `0 <= start + i < width`, as a
/// bit mask (`lanes` at most 16).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
pub(crate) fn column_mask(start: isize, width: usize, lanes: usize) -> u16 {
    let first = (-start).clamp(0, lanes as isize) as u32;
    let end = (width as isize - start).clamp(0, lanes as isize) as u32;
    if first >= end {
        return 0;
    }
    let upto = |n: u32| if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
    upto(end) & !upto(first)
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::*;

/// The AVX2 forms.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// AVX2 masks: a vector whose lane `i` has its sign bit set where bit `i` is.
    #[target_feature(enable = "avx2")]
    pub(crate) fn mask_f32x8(bits: u16) -> __m256i {
        let lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let set = _mm256_and_si256(_mm256_set1_epi32(i32::from(bits)), lane_bits);
        _mm256_cmpeq_epi32(set, lane_bits)
    }

    /// As [`mask_f32x8`] for f64's 4 lanes.
    #[target_feature(enable = "avx2")]
    pub(crate) fn mask_f64x4(bits: u16) -> __m256i {
        let lane_bits = _mm256_setr_epi64x(1, 2, 4, 8);
        let set = _mm256_and_si256(_mm256_set1_epi64x(i64::from(bits)), lane_bits);
        _mm256_cmpeq_epi64(set, lane_bits)
    }

    /// A masked store with the AVX-512 argument order, for one element type. AMD's
    /// `vmaskmovps` store is microcoded (at one per block it made the depthwise row
    /// kernel slower than the padded copy and unmasked loads of the general path): full
    /// blocks take a plain store, a partial one lane by lane.
    macro_rules! masked_store {
        ($name:ident, $t:ty, $v:ty, $lanes:literal, $movemask:ident, $cast:ident, $storeu:ident) => {
            #[doc = concat!("Stores the lanes of `v` that `mask` enables (", stringify!($t), ").")]
            ///
            /// # Safety
            /// AVX2; the enabled lanes of `p` are valid for writes.
            #[target_feature(enable = "avx2")]
            pub(crate) unsafe fn $name(p: *mut $t, mask: __m256i, v: $v) {
                let lanes = $movemask($cast(mask));
                if lanes == (1 << $lanes) - 1 {
                    // SAFETY: the caller's contract, all lanes enabled.
                    unsafe { $storeu(p, v) }
                } else {
                    let mut tmp = [0.0; $lanes];
                    // SAFETY: `tmp` holds one vector.
                    unsafe { $storeu(tmp.as_mut_ptr(), v) };
                    for (i, &value) in tmp.iter().enumerate() {
                        if lanes & (1 << i) != 0 {
                            // SAFETY: the caller's contract, lane `i` enabled.
                            unsafe { *p.add(i) = value };
                        }
                    }
                }
            }
        };
    }
    masked_store!(
        store_f32x8,
        f32,
        __m256,
        8,
        _mm256_movemask_ps,
        _mm256_castsi256_ps,
        _mm256_storeu_ps
    );
    masked_store!(
        store_f64x4,
        f64,
        __m256d,
        4,
        _mm256_movemask_pd,
        _mm256_castsi256_pd,
        _mm256_storeu_pd
    );

    /// `_mm256_maskload_ps` with the AVX-512 argument order.
    ///
    /// # Safety
    /// AVX2; the enabled lanes of `p` are valid for reads.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn load_f32x8(mask: __m256i, p: *const f32) -> __m256 {
        // SAFETY: the caller's contract; disabled lanes are not accessed.
        unsafe { _mm256_maskload_ps(p, mask) }
    }

    /// `_mm256_maskload_pd` with the AVX-512 argument order.
    ///
    /// # Safety
    /// AVX2; the enabled lanes of `p` are valid for reads.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn load_f64x4(mask: __m256i, p: *const f64) -> __m256d {
        // SAFETY: the caller's contract; disabled lanes are not accessed.
        unsafe { _mm256_maskload_pd(p, mask) }
    }
}

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
