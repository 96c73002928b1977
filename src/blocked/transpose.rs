//! Transposing copies: the packing of an operand whose packed rows run across its memory.
//!
//! Packing B reads `nr` consecutive columns per packed row. When those columns are each
//! contiguous (a transposed view: `row_stride == 1`, as the weight gradient's `colᵀ` and
//! the `dy` it meets are), element-by-element packing reads `nr` streams one element at
//! a time. These kernels instead load `L` consecutive elements of `L` columns as `L`
//! vectors, transpose the `L × L` block in registers, and store `L` packed row pieces:
//! the classic unpack / shuffle / lane-permute network, `L = 8` for f32 and `L = 4` for
//! f64 (256-bit AVX, which every AVX2 and AVX-512 CPU has).

use crate::simd::Isa;

/// Where each contiguous source column of a [`transpose`] starts.
pub trait ColumnStarts: Copy {
    /// Offset of column `j` in the source slice.
    fn start(self, j: usize) -> usize;
}

/// Columns `stride` apart: column `j` starts at `j · stride`.
#[derive(Clone, Copy)]
pub(crate) struct Strided(pub usize);

impl ColumnStarts for Strided {
    #[inline(always)]
    fn start(self, j: usize) -> usize {
        j * self.0
    }
}

/// Columns anywhere: column `j` starts at `starts[j]` (the taps of a padded image).
#[derive(Clone, Copy)]
pub(crate) struct Listed<'a>(pub &'a [usize]);

impl ColumnStarts for Listed<'_> {
    #[inline(always)]
    fn start(self, j: usize) -> usize {
        self.0[j]
    }
}

/// `dst[i·ds + j] = src[at.start(j) + i]` for `i < rows`, `j < cols`: the `cols`
/// contiguous source columns (`rows` elements each) become `rows` rows of `dst`.
///
/// Blocks of `L × L` go through [`Transpose::transpose_blocks`] where the path has a
/// kernel; the edges, and every element on the portable path, are copied one by one.
pub(crate) fn transpose<T: Transpose, C: ColumnStarts>(
    isa: Isa,
    src: &[T],
    at: C,
    rows: usize,
    cols: usize,
    dst: &mut [T],
    ds: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    let in_bounds = (0..cols).all(|j| at.start(j) + rows <= src.len());
    assert!(
        in_bounds && (rows - 1) * ds + cols <= dst.len(),
        "transpose: views out of bounds"
    );
    let (mut block_rows, mut block_cols) = T::transpose_blocks(isa, src, at, rows, cols, dst, ds);
    // Edges of at least one block: the kernel again on the last `L` rows (columns), which
    // overlap the blocks before them and write the same values there. A run of 28 pixels
    // (24 + 4) had its last rows copied one element at a time, 3% of a weight gradient.
    // These are sub-views of the view checked above: rows `rows − L ..< rows`, columns
    // `cols − L ..< cols`.
    let l = T::LANES;
    if block_rows > 0 && block_rows < rows {
        let (r0, c) = (rows - l, block_cols);
        T::transpose_blocks(isa, &src[r0..], at, l, c, &mut dst[r0 * ds..], ds);
        block_rows = rows;
    }
    if block_cols > 0 && block_cols < cols {
        let moved = Moved(at, cols - l);
        let dst = &mut dst[cols - l..];
        T::transpose_blocks(isa, src, moved, block_rows / l * l, l, dst, ds);
        if block_rows % l != 0 {
            let r0 = rows - l;
            T::transpose_blocks(isa, &src[r0..], moved, l, l, &mut dst[r0 * ds..], ds);
        }
        block_cols = cols;
    }
    // Whatever is left (fewer rows or columns than a block): the bottom rows, then the
    // right columns, one element at a time.
    for i in block_rows..rows {
        for j in 0..cols {
            dst[i * ds + j] = src[at.start(j) + i];
        }
    }
    for i in 0..block_rows {
        for j in block_cols..cols {
            dst[i * ds + j] = src[at.start(j) + i];
        }
    }
}

/// The columns of `at` from `first` on: column `j` is `at`'s column `first + j`.
#[derive(Clone, Copy)]
struct Moved<C>(C, usize);

impl<C: ColumnStarts> ColumnStarts for Moved<C> {
    #[inline(always)]
    fn start(self, j: usize) -> usize {
        self.0.start(self.1 + j)
    }
}

/// The per-type block kernels behind [`transpose`].
pub trait Transpose: Copy {
    /// Rows and columns of the kernel's blocks.
    const LANES: usize;

    /// Transposes the largest block `rows' × cols'` (multiples of the kernel's `L`) that
    /// fits, as [`transpose`] specifies, and returns `(rows', cols')`; `(0, 0)` when `isa`
    /// has no kernel. The caller has checked that both views are in bounds.
    fn transpose_blocks<C: ColumnStarts>(
        isa: Isa,
        src: &[Self],
        at: C,
        rows: usize,
        cols: usize,
        dst: &mut [Self],
        ds: usize,
    ) -> (usize, usize);
}

macro_rules! impl_transpose {
    ($t:ty, $lanes:literal, $kernel:ident) => {
        impl Transpose for $t {
            const LANES: usize = $lanes;

            fn transpose_blocks<C: ColumnStarts>(
                isa: Isa,
                src: &[$t],
                at: C,
                rows: usize,
                cols: usize,
                dst: &mut [$t],
                ds: usize,
            ) -> (usize, usize) {
                let (br, bc) = (rows / $lanes * $lanes, cols / $lanes * $lanes);
                if isa == Isa::Scalar || br == 0 || bc == 0 {
                    return (0, 0);
                }
                #[cfg(target_arch = "x86_64")]
                {
                    // SAFETY: AVX is part of both the AVX2 and the AVX-512 paths, which
                    // `isa` reports only on CPUs that have them; the caller checked that
                    // rows `< rows` of columns `< cols` (and the transposed `dst`) are in
                    // bounds, and the kernel touches only the blocks inside `br × bc`.
                    unsafe { $kernel(src.as_ptr(), at, br, bc, dst.as_mut_ptr(), ds) };
                    (br, bc)
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (src, at, dst, ds);
                    (0, 0)
                }
            }
        }
    };
}

impl_transpose!(f32, 8, transpose_f32_avx);
impl_transpose!(f64, 4, transpose_f64_avx);

/// Bytes ahead of the block being read that [`prefetch_ahead`] fetches in each column.
const PREFETCH_BYTES: usize = 1024;

/// Blocks down each column from which a call prefetches ([`prefetch_ahead`]): shorter
/// columns are no streams, and a fetch a kilobyte past their end reads lines the call
/// never uses. (LeNet's second layer, whose weight gradient transposes runs of 8 pixels,
/// measured the same either way: 0.979–0.989 against 0.986 for two copies of one build.)
const STREAM_BLOCKS: usize = 8;

/// Fetches the line [`PREFETCH_BYTES`] past element `i0` of columns `j0 .. j0 + lanes`,
/// on every `every`-th block of a column (one line covers that many blocks). Long
/// columns are read a block at a time across `lanes` streams, more than the hardware
/// prefetcher follows from memory: the weight gradient's `dy` rows (packed by
/// `WideDyT`), 3.2 MB per image on the ResNet stem, stalled the loads here. Past a
/// column's end the fetch is wasted, never a fault (only an address is formed).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_ahead<T, C: ColumnStarts>(
    src: *const T,
    at: C,
    j0: usize,
    lanes: usize,
    i0: usize,
    every: usize,
) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    if !(i0 / lanes).is_multiple_of(every) {
        return;
    }
    for j in 0..lanes {
        let ahead = src
            .wrapping_add(at.start(j0 + j) + i0)
            .cast::<i8>()
            .wrapping_add(PREFETCH_BYTES);
        // SAFETY: SSE is part of x86-64; a prefetch only hints at an address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead) };
    }
}

/// 8 × 8 f32 blocks over `rows × cols` (multiples of 8).
///
/// # Safety
/// AVX available; `src[at.start(j) + i]` readable and `dst[i·ds + j]` writable for
/// `i < rows`, `j < cols`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_f32_avx<C: ColumnStarts>(
    src: *const f32,
    at: C,
    rows: usize,
    cols: usize,
    dst: *mut f32,
    ds: usize,
) {
    use std::arch::x86_64::*;
    let streams = rows >= STREAM_BLOCKS * 8;
    for j0 in (0..cols).step_by(8) {
        for i0 in (0..rows).step_by(8) {
            if streams {
                prefetch_ahead(src, at, j0, 8, i0, 2);
            }
            // SAFETY: column j0 + j, elements i0 .. i0 + 8, inside the caller's bounds.
            let r: [__m256; 8] =
                std::array::from_fn(|j| unsafe { _mm256_loadu_ps(src.add(at.start(j0 + j) + i0)) });
            // Pairs, then quads, then the 128-bit halves: out[i] holds element i of
            // every input vector.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (i, v) in out.into_iter().enumerate() {
                // SAFETY: row i0 + i, columns j0 .. j0 + 8, inside the caller's bounds.
                unsafe { _mm256_storeu_ps(dst.add((i0 + i) * ds + j0), v) };
            }
        }
    }
}

/// 4 × 4 f64 blocks over `rows × cols` (multiples of 4).
///
/// # Safety
/// As [`transpose_f32_avx`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_f64_avx<C: ColumnStarts>(
    src: *const f64,
    at: C,
    rows: usize,
    cols: usize,
    dst: *mut f64,
    ds: usize,
) {
    use std::arch::x86_64::*;
    let streams = rows >= STREAM_BLOCKS * 4;
    for j0 in (0..cols).step_by(4) {
        for i0 in (0..rows).step_by(4) {
            if streams {
                prefetch_ahead(src, at, j0, 4, i0, 2);
            }
            // SAFETY: column j0 + j, elements i0 .. i0 + 4, inside the caller's bounds.
            let r: [__m256d; 4] =
                std::array::from_fn(|j| unsafe { _mm256_loadu_pd(src.add(at.start(j0 + j) + i0)) });
            let t0 = _mm256_unpacklo_pd(r[0], r[1]);
            let t1 = _mm256_unpackhi_pd(r[0], r[1]);
            let t2 = _mm256_unpacklo_pd(r[2], r[3]);
            let t3 = _mm256_unpackhi_pd(r[2], r[3]);
            let out = [
                _mm256_permute2f128_pd::<0x20>(t0, t2),
                _mm256_permute2f128_pd::<0x20>(t1, t3),
                _mm256_permute2f128_pd::<0x31>(t0, t2),
                _mm256_permute2f128_pd::<0x31>(t1, t3),
            ];
            for (i, v) in out.into_iter().enumerate() {
                // SAFETY: row i0 + i, columns j0 .. j0 + 4, inside the caller's bounds.
                unsafe { _mm256_storeu_pd(dst.add((i0 + i) * ds + j0), v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape around the block sizes, on every path this CPU has, against the
    /// definition; destination elements outside the transposed view stay untouched.
    #[test]
    fn matches_the_definition() {
        let mut isas = vec![Isa::Scalar];
        if crate::simd::detect() != Isa::Scalar {
            isas.push(Isa::Avx2);
        }
        for isa in isas {
            for rows in 0..20 {
                for cols in 0..20 {
                    let (ss, ds) = (rows + 3, cols + 5);
                    let src: Vec<f32> = (0..ss * cols.max(1)).map(|v| v as f32).collect();
                    let mut dst = vec![-1.0f32; ds * rows.max(1)];
                    transpose(isa, &src, Strided(ss), rows, cols, &mut dst, ds);
                    for i in 0..rows.max(1) {
                        for j in 0..ds {
                            let want = if i < rows && j < cols {
                                src[j * ss + i]
                            } else {
                                -1.0
                            };
                            assert_eq!(dst[i * ds + j], want, "{isa:?} {rows}x{cols} at {i},{j}");
                        }
                    }
                    let src: Vec<f64> = src.iter().map(|&v| v as f64).collect();
                    let mut dst = vec![-1.0f64; ds * rows.max(1)];
                    transpose(isa, &src, Strided(ss), rows, cols, &mut dst, ds);
                    for i in 0..rows {
                        for j in 0..cols {
                            assert_eq!(dst[i * ds + j], src[j * ss + i]);
                        }
                    }
                }
            }
        }
    }
}
