//! The element types the crate computes with: `f32` and `f64`.
//!
//! Everything in convgemm is written once, generic over [`Element`]. The trait is sealed:
//! its hidden supertrait carries the per-type kernels (the GEMM entry point of
//! matrixmultiply, and the `wide` SIMD vector the element-wise kernels use), so only the
//! two float types can implement it.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A floating-point element type: `f32` or `f64` (sealed).
pub trait Element:
    Copy
    + Send
    + Sync
    + 'static
    + Default
    + Debug
    + Display
    + PartialEq
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
    + sealed::Kernels
    + crate::scratch::ThreadBuffer
    + crate::blocked::Engine
    + crate::depthwise::Rows3
    + crate::conv::DirectKernel
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// Negative infinity (the padding value of max pooling).
    const NEG_INFINITY: Self;
    /// Machine epsilon of the type.
    const EPSILON: Self;
    /// Converts from `f64`, rounding to nearest for `f32`.
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Larger of two values (`NaN` handling as `f32::max`).
    fn max(self, other: Self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// `e^self`.
    fn exp(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// `self · a + b` with one rounding.
    fn mul_add(self, a: Self, b: Self) -> Self;
}

pub(crate) mod sealed {
    use std::ops::{Add, Mul, Sub};

    /// Per-type kernels. Not nameable outside the crate, which seals [`super::Element`].
    pub trait Kernels: Sized {
        /// The `wide` SIMD vector of this type (`f32x8`, `f64x4`), for element-wise kernels.
        type Simd: Lanes<Self>;

        /// `C = alpha · A · B + beta · C` on strided matrices (A is m×k, B is k×n, C is
        /// m×n; strides in elements).
        ///
        /// # Safety
        /// Every element addressed by the dimensions and strides must lie inside the
        /// allocation behind each pointer, and C must not overlap A or B. If `beta` is 0,
        /// C is not read.
        #[allow(clippy::too_many_arguments)]
        unsafe fn gemm_raw(
            m: usize,
            k: usize,
            n: usize,
            alpha: Self,
            a: *const Self,
            rsa: isize,
            csa: isize,
            b: *const Self,
            rsb: isize,
            csb: isize,
            beta: Self,
            c: *mut Self,
            rsc: isize,
            csc: isize,
        );
    }

    /// A `wide` vector of [`Lanes::LANES`] elements of `T`: the operations the element-wise
    /// kernels (activations) are written with.
    ///
    /// Every operation is the IEEE-754 operation applied lane by lane (no fused
    /// multiply-add), so a kernel gives the same bits as a scalar loop doing the same
    /// operations in the same order; that is what lets a kernel handle its tail with
    /// scalar code and be tested bit for bit.
    pub trait Lanes<T>:
        Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
    {
        /// Elements per vector.
        const LANES: usize;
        /// All lanes equal to `v`.
        fn splat(v: T) -> Self;
        /// The first `LANES` elements of `s`. Panics if `s` is shorter (a bug in a kernel:
        /// they only pass `chunks_exact(LANES)`).
        fn load(s: &[T]) -> Self;
        /// Writes the lanes to the first `LANES` elements of `s` (same contract as `load`).
        fn store(self, s: &mut [T]);
        /// Per lane: `if a > b { if_true } else { if_false }` (false when either is NaN).
        fn select_gt(a: Self, b: Self, if_true: Self, if_false: Self) -> Self;
    }
}

macro_rules! impl_element {
    ($t:ident, $gemm:path, $simd:ident, $lanes:literal) => {
        impl Element for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            const EPSILON: Self = $t::EPSILON;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn max(self, other: Self) -> Self {
                $t::max(self, other)
            }
            #[inline]
            fn abs(self) -> Self {
                $t::abs(self)
            }
            #[inline]
            fn exp(self) -> Self {
                $t::exp(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                $t::tanh(self)
            }
            #[inline]
            fn ln(self) -> Self {
                $t::ln(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                $t::mul_add(self, a, b)
            }
        }

        impl sealed::Lanes<$t> for wide::$simd {
            const LANES: usize = $lanes;
            #[inline(always)]
            fn splat(v: $t) -> Self {
                wide::$simd::splat(v)
            }
            #[inline(always)]
            fn load(s: &[$t]) -> Self {
                let lanes: &[$t; $lanes] = s.first_chunk().expect("a full chunk of lanes");
                wide::$simd::new(*lanes)
            }
            #[inline(always)]
            fn store(self, s: &mut [$t]) {
                let lanes: &mut [$t; $lanes] = s.first_chunk_mut().expect("a full chunk of lanes");
                *lanes = self.to_array();
            }
            #[inline(always)]
            fn select_gt(a: Self, b: Self, if_true: Self, if_false: Self) -> Self {
                a.simd_gt(b).select(if_true, if_false)
            }
        }

        impl sealed::Kernels for $t {
            type Simd = wide::$simd;

            #[inline]
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: the caller upholds matrixmultiply's contract (see the trait doc):
                // all addressed elements are in bounds and C does not alias A or B.
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}

impl_element!(f32, matrixmultiply::sgemm, f32x8, 8);
impl_element!(f64, matrixmultiply::dgemm, f64x4, 4);
