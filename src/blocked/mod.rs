//! Our own cache-blocked GEMM: `C = alpha · A · B + beta · C` in the BLIS structure.
//!
//! - [`kernel`]: the microkernel contract ([`Kernel`]: tile `MR × NR`, block sizes
//!   `KC`, `MC`, `NC`, one `unsafe fn kernel`) and the portable kernel;
//! - `avx512`, `avx2`: the `std::arch` microkernels, f32 and f64, with the cache
//!   reasoning behind each block size next to it;
//! - [`pack`]: the [`PackA`] / [`PackB`] seams through which operands enter (a strided
//!   matrix today; a convolution's input image, im2col fused into packing, next);
//! - `prepacked`: [`PrepackedA`], weights packed once per pass call and shared by its
//!   GEMMs;
//! - [`transpose`]: in-register block transposes for packing column-contiguous operands;
//! - `driver`: the five loops, packing into per-thread buffers
//!   ([`scratch::take_packing`](crate::scratch::take_packing)), so a steady-state call
//!   allocates nothing. Three operands skip packing: B rows that lie in memory with unit
//!   column stride (`Kernel::kernel_rows`, the forward's padded planes), A columns that
//!   lie with unit row stride (`Kernel::kernel_strided_a`, `Wᵀ` of a single image's
//!   input delta) and A rows that lie as runs anywhere (`Kernel::kernel_a_rows`, the
//!   weight gradient's column matrix over row-phased padded planes).
//!
//! The kernel is chosen once per call from [`simd::isa`] (`CONVGEMM_ISA` forces a path):
//! AVX-512F, AVX2 + FMA, or the portable kernel.
//!
//! ## Guarantees
//! - `beta == 0`: C is never read (NaN in C does not leak); `beta == 1` accumulates.
//! - Every element of C is summed over `k` in ascending order, in blocks that depend only
//!   on `k`, by the same kernel arithmetic wherever it sits: results are bit-identical
//!   however the caller splits M and N (the passes split them across threads), and for
//!   `C` versus `Cᵀ = Bᵀ · Aᵀ`. They differ between kernel paths (FMA or not, lanes).
//!
//! ## Registers
//! `objdump -d` of the four SIMD kernels shows the accumulators in registers for the whole
//! `k` loop: no stack stores or reloads inside it (see the report in BENCHMARKS-gemm.md).
//! The same holds for the AVX-512 thin forms ([`Kernel::kernel_thin`], the last panel of a
//! row of tiles when it has at most 8 valid columns): their accumulators reach the stack
//! only after the loop, for the per-element epilogue.

pub(crate) mod driver;
pub(crate) mod kernel;
pub(crate) mod pack;
mod prepacked;
pub(crate) mod transpose;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod tests;

pub use driver::RawMatMut;
pub use kernel::Kernel;
pub use pack::{PackA, PackB};
pub(crate) use pack::{RowsA, StridedA, StridedB};
pub(crate) use prepacked::{PrepackedA, PrepackedB, prepacked_b_len, prepacked_len};

use crate::element::Element;
use crate::gemm::{MatMut, MatRef, span};
use crate::simd::{self, Isa};

/// The kernels of one element type, per path (a hidden supertrait of
/// [`Element`], so the generic code can name them).
pub trait Engine: Sized + transpose::Transpose {
    /// AVX-512F kernel (the portable one off x86-64).
    type Avx512: Kernel<Self>;
    /// AVX2 + FMA kernel (the portable one off x86-64).
    type Avx2: Kernel<Self>;
    /// The portable kernel (any CPU).
    type Portable: Kernel<Self>;
}

macro_rules! impl_engine {
    ($t:ty) => {
        impl Engine for $t {
            #[cfg(target_arch = "x86_64")]
            type Avx512 = avx512::Avx512;
            #[cfg(target_arch = "x86_64")]
            type Avx2 = avx2::Avx2;
            #[cfg(not(target_arch = "x86_64"))]
            type Avx512 = kernel::Portable;
            #[cfg(not(target_arch = "x86_64"))]
            type Avx2 = kernel::Portable;
            type Portable = kernel::Portable;
        }
    };
}
impl_engine!(f32);
impl_engine!(f64);

/// Columns of one B panel (the kernel's `NR`) on the path [`simd::isa`] selects: f32 32
/// on AVX-512, 16 on AVX2; f64 half that.
pub(crate) fn panel_width<T: Element>() -> usize {
    match simd::isa() {
        Isa::Avx512 => <T::Avx512 as Kernel<T>>::NR,
        Isa::Avx2 => <T::Avx2 as Kernel<T>>::NR,
        Isa::Scalar => <T::Portable as Kernel<T>>::NR,
    }
}

/// `C = alpha · A · B + beta · C` on strided views, on the path [`simd::isa`] selects.
/// If `beta` is zero, C is not read.
///
/// A C with unit row stride (column-major) is computed as `Cᵀ = Bᵀ · Aᵀ`, so the kernel
/// stores whole vectors; the result is the same bits either way.
///
/// Panics if the shapes disagree or a view addresses elements outside its slice.
pub(crate) fn gemm<T: Element>(
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: MatMut<'_, T>,
) {
    gemm_on(simd::isa(), alpha, a, b, beta, c)
}

/// [`gemm`] on a given path (which must be one [`simd::isa`] could return on this CPU;
/// anything above [`simd::detect`] is clamped down).
pub(crate) fn gemm_on<T: Element>(
    isa: Isa,
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: MatMut<'_, T>,
) {
    assert!(
        span(a.rows, a.cols, a.row_stride, a.col_stride) <= a.data.len(),
        "gemm: a out of bounds"
    );
    assert!(
        span(b.rows, b.cols, b.row_stride, b.col_stride) <= b.data.len(),
        "gemm: b out of bounds"
    );
    if c.col_stride != 1 && c.row_stride == 1 && c.cols > 1 {
        let ct = MatMut {
            data: c.data,
            rows: c.cols,
            cols: c.rows,
            row_stride: c.col_stride,
            col_stride: c.row_stride,
        };
        gemm_packed_on(isa, alpha, &StridedA(b.t()), &StridedB(a.t()), beta, ct);
    } else {
        gemm_packed_on(isa, alpha, &StridedA(a), &StridedB(b), beta, c);
    }
}

/// `C = alpha · A · B + beta · C` with the operands given by their packing
/// ([`PackA`], [`PackB`]): the entry point for fused packing (im2col into B). If `beta`
/// is zero, C is not read.
///
/// Panics if `a.rows() != c.rows`, `a.depth() != b.depth()`, `b.cols() != c.cols` or C
/// addresses elements outside its slice.
pub(crate) fn gemm_packed<T: Element>(
    alpha: T,
    a: &impl PackA<T>,
    b: &impl PackB<T>,
    beta: T,
    c: MatMut<'_, T>,
) {
    gemm_packed_on(simd::isa(), alpha, a, b, beta, c)
}

/// [`gemm_packed`] on a given path (clamped to what the CPU supports).
pub(crate) fn gemm_packed_on<T: Element, A: PackA<T>, B: PackB<T>>(
    isa: Isa,
    alpha: T,
    a: &A,
    b: &B,
    beta: T,
    c: MatMut<'_, T>,
) {
    assert!(
        a.rows() == c.rows && a.depth() == b.depth() && b.cols() == c.cols,
        "gemm shape mismatch: a {}x{}, b {}x{}, c {}x{}",
        a.rows(),
        a.depth(),
        b.depth(),
        b.cols(),
        c.rows,
        c.cols
    );
    c.check_bounds();
    // Strides are at most the slice length, at most isize::MAX: the casts are lossless.
    let raw = RawMatMut {
        ptr: c.data.as_mut_ptr(),
        rows: c.rows,
        cols: c.cols,
        row_stride: c.row_stride as isize,
        col_stride: c.col_stride as isize,
    };
    let isa = isa.min(simd::detect());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: C was checked in bounds above and is a unique borrow (so it overlaps
        // nothing the packers read); `isa` is at most what the CPU reports, so it has
        // AVX-512F.
        Isa::Avx512 => unsafe { run_avx512::<T, T::Avx512, A, B>(alpha, a, b, beta, raw) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; the CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { run_avx2::<T, T::Avx2, A, B>(alpha, a, b, beta, raw) },
        // SAFETY: as above; the portable kernel needs no CPU feature.
        _ => unsafe { driver::gemm::<T, T::Portable, A, B>(alpha, a, b, beta, raw) },
    }
}

/// The driver compiled for AVX-512F (the kernel and packing inline into it).
///
/// # Safety
/// As [`driver::gemm`]; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<T: Element, K: Kernel<T>, A: PackA<T>, B: PackB<T>>(
    alpha: T,
    a: &A,
    b: &B,
    beta: T,
    c: RawMatMut<T>,
) {
    // SAFETY: forwarded from the caller.
    unsafe { driver::gemm::<T, K, A, B>(alpha, a, b, beta, c) }
}

/// The driver compiled for AVX2 + FMA.
///
/// # Safety
/// As [`driver::gemm`]; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<T: Element, K: Kernel<T>, A: PackA<T>, B: PackB<T>>(
    alpha: T,
    a: &A,
    b: &B,
    beta: T,
    c: RawMatMut<T>,
) {
    // SAFETY: forwarded from the caller.
    unsafe { driver::gemm::<T, K, A, B>(alpha, a, b, beta, c) }
}

/// Entry points for the integration tests and the benchmark example; not part of the API.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// `C = alpha · A · B + beta · C` on raw strided slices (A `m × k`, B `k × n`,
    /// C `m × n`, strides in elements) on the named path (`"avx512"`, `"avx2"`,
    /// `"scalar"`, clamped to the CPU; anything else: the `CONVGEMM_ISA` default).
    /// Returns the path that ran. Panics as the crate's GEMM does.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_strided<T: Element>(
        path: &str,
        m: usize,
        k: usize,
        n: usize,
        alpha: T,
        a: &[T],
        a_strides: [usize; 2],
        b: &[T],
        b_strides: [usize; 2],
        beta: T,
        c: &mut [T],
        c_strides: [usize; 2],
    ) -> &'static str {
        let isa = simd::isa_from_name(path).unwrap_or_else(simd::isa);
        let view = |data, rows, cols, [row_stride, col_stride]: [usize; 2]| MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        };
        let c = MatMut {
            data: c,
            rows: m,
            cols: n,
            row_stride: c_strides[0],
            col_stride: c_strides[1],
        };
        gemm_on(
            isa,
            alpha,
            view(a, m, k, a_strides),
            view(b, k, n, b_strides),
            beta,
            c,
        );
        match isa.min(simd::detect()) {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }
}
