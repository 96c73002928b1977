//! A safe, bounds-checked GEMM on strided views: the crate's own blocked GEMM
//! ([`crate::blocked`]) on the AVX-512 and AVX2 paths, matrixmultiply elsewhere.
//!
//! The passes describe each operand as a [`MatRef`] / [`MatMut`]: a slice plus rows,
//! columns and strides (in elements). [`gemm`] checks once per call that every addressed
//! element lies inside its slice, then hands the views to the engine ([`use_blocked`]).
//! Transposes are expressed by swapping strides, never by copying.

use crate::element::Element;

/// Number of elements a strided `rows × cols` view can touch, counted from its start.
#[inline]
pub(crate) fn span(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// A read-only strided matrix view: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major view whose rows are `row_stride` apart.
    pub(crate) fn row_major(data: &'a [T], rows: usize, cols: usize, row_stride: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of this view (no copy: the strides swap).
    pub(crate) fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// A writable strided matrix view, as [`MatRef`].
pub(crate) struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> MatMut<'a, T> {
    /// Panics unless every element the view addresses lies inside its slice. In debug
    /// builds, also unless distinct elements have distinct addresses (one stride must
    /// step over the whole extent of the other), or the result would depend on write
    /// order. Both GEMM entry points check C with this before writing through it.
    pub(crate) fn check_bounds(&self) {
        assert!(
            span(self.rows, self.cols, self.row_stride, self.col_stride) <= self.data.len(),
            "gemm: c out of bounds"
        );
        debug_assert!(
            self.rows <= 1
                || self.cols <= 1
                || self.row_stride >= self.cols * self.col_stride
                || self.col_stride >= self.rows * self.row_stride
        );
    }

    /// A row-major view whose rows are `row_stride` apart.
    pub(crate) fn row_major(
        data: &'a mut [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Self {
        MatMut {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }
}

/// Whether [`gemm`] runs the crate's blocked GEMM: on the AVX-512 and AVX2 paths, where
/// its kernels match or beat matrixmultiply on every shape of `examples/gemm_bench.rs`
/// (see BENCHMARKS-gemm.md). On the scalar path (`CONVGEMM_ISA=scalar`, other ISAs)
/// matrixmultiply stays the engine: its SSE2/NEON kernels beat the portable one.
pub(crate) fn use_blocked() -> bool {
    crate::simd::isa() != crate::simd::Isa::Scalar
}

/// `c = alpha · a · b + beta · c`. If `beta` is zero, `c` is not read (it may hold garbage).
///
/// Panics if the shapes disagree or a view addresses elements outside its slice: both are
/// bugs in this crate, never reachable from a validated plan.
pub(crate) fn gemm<T: Element>(
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: MatMut<'_, T>,
) {
    assert!(
        a.rows == c.rows && a.cols == b.rows && b.cols == c.cols,
        "gemm shape mismatch: a {}x{}, b {}x{}, c {}x{}",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        c.rows,
        c.cols
    );
    assert!(
        span(a.rows, a.cols, a.row_stride, a.col_stride) <= a.data.len(),
        "gemm: a out of bounds"
    );
    assert!(
        span(b.rows, b.cols, b.row_stride, b.col_stride) <= b.data.len(),
        "gemm: b out of bounds"
    );
    c.check_bounds();
    if c.rows == 0 || c.cols == 0 {
        return;
    }
    if use_blocked() {
        crate::blocked::gemm(alpha, a, b, beta, c);
        return;
    }
    // SAFETY: the asserts above prove every element addressed through the three views lies
    // inside its slice; `c` is a unique borrow, so it cannot overlap `a` or `b`. Strides are
    // at most the slice lengths, which are at most isize::MAX, so the casts are lossless.
    unsafe {
        T::gemm_raw(
            c.rows,
            a.cols,
            c.cols,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.data.as_mut_ptr(),
            c.row_stride as isize,
            c.col_stride as isize,
        )
    }
}
