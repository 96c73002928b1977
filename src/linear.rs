//! The fully connected layer: each pass is one GEMM.
//!
//! For input `x` (`N × in`, one row per sample), weights `W` (`out × in`, row-major, as
//! PyTorch's `nn.Linear`) and output `y` (`N × out`):
//!
//! | pass | math |
//! |---|---|
//! | forward | `y = x · Wᵀ + b` |
//! | input delta | `dx = dy · W` |
//! | weight gradient | `dW = dyᵀ · x`, `db = Σ_n dy[n, ·]` |
//!
//! Transposes are strides handed to the GEMM, never copies. Every call runs on the calling
//! thread (the crate's cache-blocked GEMM, or matrixmultiply's on the portable path), so
//! results do not depend on any rayon pool.

use crate::conv::Write;
use crate::element::Element;
use crate::error::{ConvError, check_len};
use crate::gemm::{MatMut, MatRef, gemm};
use crate::shape::{checked_product, nonzero};

/// A validated fully connected layer plan: `y = x · Wᵀ + b`.
///
/// Layouts, all contiguous row-major: `x` and `dx` are `N × in_features`, `w` and `dw`
/// are `out_features × in_features`, `y` and `dy` are `N × out_features`, `bias` and `db`
/// are `out_features`. Outputs are overwritten, never accumulated into.
///
/// ```
/// use convgemm::Linear;
/// let fc = Linear::new(2, 3, 2)?;
/// let x = [1.0f32, 2.0, 3.0,
///          4.0, 5.0, 6.0];
/// let w = [1.0f32, 0.0, -1.0,  // out 0
///          0.5, 0.5, 0.5];     // out 1
/// let mut y = [0.0f32; 4];
/// fc.forward(&x, &w, Some(&[10.0, 0.0]), &mut y)?;
/// assert_eq!(y, [8.0, 3.0, 8.0, 7.5]);
/// # Ok::<(), convgemm::ConvError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    batch: usize,
    in_features: usize,
    out_features: usize,
}

impl Linear {
    /// Validates the sizes and builds the plan for `batch` samples of `in_features`
    /// values each, mapped to `out_features` values each.
    ///
    /// # Errors
    /// [`ConvError::ZeroSize`] for a zero size; [`ConvError::TooLarge`] when a buffer size
    /// overflows or exceeds `isize::MAX` bytes.
    pub fn new(batch: usize, in_features: usize, out_features: usize) -> Result<Linear, ConvError> {
        nonzero("batch", batch)?;
        nonzero("in_features", in_features)?;
        nonzero("out_features", out_features)?;
        checked_product("x", &[("N", batch), ("in_features", in_features)])?;
        checked_product(
            "w",
            &[("out_features", out_features), ("in_features", in_features)],
        )?;
        checked_product("y", &[("N", batch), ("out_features", out_features)])?;
        Ok(Linear {
            batch,
            in_features,
            out_features,
        })
    }

    /// Batch size `N`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Values per input sample.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Values per output sample.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Weight dimensions `[out_features, in_features]`.
    pub fn weight_dims(&self) -> [usize; 2] {
        [self.out_features, self.in_features]
    }

    /// Forward pass: `y = x · Wᵀ + bias`.
    ///
    /// - `x`: input, `N × in_features`;
    /// - `w`: weights, `out_features × in_features`;
    /// - `bias`: `out_features` values added to every row of `y`, or `None`;
    /// - `y`: output, `N × out_features`, overwritten.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length.
    pub fn forward<T: Element>(
        &self,
        x: &[T],
        w: &[T],
        bias: Option<&[T]>,
        y: &mut [T],
    ) -> Result<(), ConvError> {
        self.check_x("x", x.len())?;
        self.check_w("w", w.len())?;
        if let Some(b) = bias {
            self.check_bias("bias", b.len())?;
        }
        self.check_y("y", y.len())?;
        let (n, i, o) = (self.batch, self.in_features, self.out_features);
        let beta = match bias {
            Some(b) => {
                for row in y.chunks_exact_mut(o) {
                    row.copy_from_slice(b);
                }
                T::ONE
            }
            None => T::ZERO,
        };
        gemm(
            T::ONE,
            MatRef::row_major(x, n, i, i),
            MatRef::row_major(w, o, i, i).t(),
            beta,
            MatMut::row_major(y, n, o, o),
        );
        Ok(())
    }

    /// Input delta: `dx = dy · W`, the gradient of the loss with respect to `x`.
    ///
    /// - `dy`: gradient with respect to `y`, `N × out_features`;
    /// - `w`: weights, `out_features × in_features`;
    /// - `dx`: `N × in_features`, overwritten.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length.
    pub fn backward_data<T: Element>(
        &self,
        dy: &[T],
        w: &[T],
        dx: &mut [T],
    ) -> Result<(), ConvError> {
        self.input_delta(dy, w, dx, Write::Overwrite)
    }

    /// Input delta, added to `dx`: `dx += dy · W` (an input that feeds several layers).
    /// Each element becomes `dx + g`, with `g` the bits [`Linear::backward_data`] would
    /// write: the product goes to a scratch buffer the thread keeps (`N × in_features`),
    /// then is added.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length; `dx` is then unchanged.
    pub fn backward_data_accumulate<T: Element>(
        &self,
        dy: &[T],
        w: &[T],
        dx: &mut [T],
    ) -> Result<(), ConvError> {
        self.input_delta(dy, w, dx, Write::Accumulate)
    }

    fn input_delta<T: Element>(
        &self,
        dy: &[T],
        w: &[T],
        dx: &mut [T],
        write: Write,
    ) -> Result<(), ConvError> {
        self.check_y("dy", dy.len())?;
        self.check_w("w", w.len())?;
        self.check_x("dx", dx.len())?;
        let (n, i, o) = (self.batch, self.in_features, self.out_features);
        write.into(dx, |dx| {
            gemm(
                T::ONE,
                MatRef::row_major(dy, n, o, o),
                MatRef::row_major(w, o, i, i),
                T::ZERO,
                MatMut::row_major(dx, n, i, i),
            )
        });
        Ok(())
    }

    /// Weight gradient: `dw = dyᵀ · x` and, if given, `db = Σ_n dy[n, ·]` (summed over
    /// samples in order).
    ///
    /// - `x`: input, `N × in_features`;
    /// - `dy`: gradient with respect to `y`, `N × out_features`;
    /// - `dw`: `out_features × in_features`, overwritten;
    /// - `db`: `out_features`, overwritten, or `None`.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length.
    pub fn backward_weights<T: Element>(
        &self,
        x: &[T],
        dy: &[T],
        dw: &mut [T],
        db: Option<&mut [T]>,
    ) -> Result<(), ConvError> {
        self.weight_gradient(x, dy, dw, db, Write::Overwrite)
    }

    /// Weight gradient, added to `dw` (and `db`): `dw += dyᵀ · x`, `db += Σ_n dy[n, ·]`
    /// (gradient accumulation over micro-batches). Each element becomes `old + g`, with
    /// `g` the bits [`Linear::backward_weights`] would write: the product goes to a
    /// scratch buffer the thread keeps (`out_features × in_features`), then is added.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length; `dw` and `db` are then
    /// unchanged.
    pub fn backward_weights_accumulate<T: Element>(
        &self,
        x: &[T],
        dy: &[T],
        dw: &mut [T],
        db: Option<&mut [T]>,
    ) -> Result<(), ConvError> {
        self.weight_gradient(x, dy, dw, db, Write::Accumulate)
    }

    fn weight_gradient<T: Element>(
        &self,
        x: &[T],
        dy: &[T],
        dw: &mut [T],
        db: Option<&mut [T]>,
        write: Write,
    ) -> Result<(), ConvError> {
        self.check_x("x", x.len())?;
        self.check_y("dy", dy.len())?;
        self.check_w("dw", dw.len())?;
        if let Some(b) = &db {
            self.check_bias("db", b.len())?;
        }
        let (n, i, o) = (self.batch, self.in_features, self.out_features);
        write.into(dw, |dw| {
            gemm(
                T::ONE,
                MatRef::row_major(dy, n, o, o).t(),
                MatRef::row_major(x, n, i, i),
                T::ZERO,
                MatMut::row_major(dw, o, i, i),
            )
        });
        if let Some(db) = db {
            write.into(db, |db| {
                db.fill(T::ZERO);
                for row in dy.chunks_exact(o) {
                    for (s, &g) in db.iter_mut().zip(row) {
                        *s += g;
                    }
                }
            });
        }
        Ok(())
    }

    fn check_x(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        check_len(buffer, len, self.batch * self.in_features, || {
            format!("N {} × in_features {}", self.batch, self.in_features)
        })
    }

    fn check_w(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        check_len(buffer, len, self.out_features * self.in_features, || {
            format!(
                "out_features {} × in_features {}",
                self.out_features, self.in_features
            )
        })
    }

    fn check_y(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        check_len(buffer, len, self.batch * self.out_features, || {
            format!("N {} × out_features {}", self.batch, self.out_features)
        })
    }

    fn check_bias(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        check_len(buffer, len, self.out_features, || {
            format!("out_features {}", self.out_features)
        })
    }
}
