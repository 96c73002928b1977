//! Element-wise activations `y = f(a)` and the fused backward step of the delta rule.
//!
//! In the backward chain `delta_l = upsample(col2im(W_{l+1}ᵀ · delta_{l+1})) ⊙ f'(a_l)`
//! this module is the `⊙ f'(a_l)`: [`Activation::backward_in_place`] multiplies an
//! incoming gradient by the derivative in one pass over memory, reading and writing the
//! gradient and reading the activation's output once.
//!
//! Every derivative here can be written in terms of the output `y = f(a)`, so the backward
//! pass takes the output, never the pre-activation `a`: a layer can apply its activation
//! in place and keep only one buffer.
//!
//! | activation | `f(a)` | `f'(a)` from the output `y` |
//! |---|---|---|
//! | [`Identity`](Activation::Identity) | `a` | `1` |
//! | [`Relu`](Activation::Relu) | `max(a, 0)` | `1` if `y > 0`, else `0` |
//! | [`LeakyRelu(s)`](Activation::LeakyRelu) | `a` if `a > 0`, else `s·a` | `1` if `y > 0`, else `s` (needs `s ≥ 0`) |
//! | [`Sigmoid`](Activation::Sigmoid) | `1 / (1 + e^−a)` | `y·(1 − y)` |
//! | [`Tanh`](Activation::Tanh) | `tanh(a)` | `1 − y²` |
//!
//! At the kink `a = 0` of ReLU and leaky ReLU the derivative taken is the left one (`0`,
//! `s`), as PyTorch does. ReLU and leaky ReLU pass NaN through in the forward pass.
//!
//! The kernels are vectorized with `wide` (`f32x8`, `f64x4`) and finish the last
//! `len mod lanes` elements with scalar code doing the same IEEE operations in the same
//! order, so the result does not depend on where the vector part ends. The sigmoid and
//! tanh forward passes call the standard library's `exp` and `tanh` per element. Every
//! call runs on the calling thread.

use crate::element::Element;
use crate::element::sealed::Lanes;
use crate::error::{ConvError, check_len};

/// An element-wise activation function `y = f(a)`.
///
/// The backward pass ([`Activation::backward_in_place`]) takes the output `y`, never the
/// pre-activation `a`: every derivative here is a function of the output.
///
/// | activation | `f(a)` | `f'(a)` from the output `y` |
/// |---|---|---|
/// | [`Identity`](Activation::Identity) | `a` | `1` |
/// | [`Relu`](Activation::Relu) | `max(a, 0)` | `1` if `y > 0`, else `0` |
/// | [`LeakyRelu(s)`](Activation::LeakyRelu) | `a` if `a > 0`, else `s·a` | `1` if `y > 0`, else `s` (needs `s ≥ 0`) |
/// | [`Sigmoid`](Activation::Sigmoid) | `1 / (1 + e^−a)` | `y·(1 − y)` |
/// | [`Tanh`](Activation::Tanh) | `tanh(a)` | `1 − y²` |
///
/// At the kink `a = 0` the derivative taken is the left one (`0`, `s`), as in PyTorch;
/// ReLU and leaky ReLU pass NaN through. The kernels are vectorized with `wide` and run
/// on the calling thread.
///
/// ```
/// use convgemm::Activation;
/// let mut y = vec![-2.0f32, -0.5, 0.0, 1.5];
/// Activation::LeakyRelu(0.1).forward_in_place(&mut y);
/// assert_eq!(y, [-0.2, -0.05, 0.0, 1.5]);
///
/// // Backward: the incoming gradient, multiplied in place by f'(a), read from y = f(a).
/// let mut grad = vec![1.0f32; 4];
/// Activation::LeakyRelu(0.1).backward_in_place(&y, &mut grad)?;
/// assert_eq!(grad, [0.1, 0.1, 0.1, 1.0]);
/// # Ok::<(), convgemm::ConvError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `f(a) = a`.
    Identity,
    /// `f(a) = max(a, 0)`.
    Relu,
    /// `f(a) = a` for `a > 0`, `slope·a` otherwise. The slope is converted to the element
    /// type of each call; the backward pass needs `slope ≥ 0` (see
    /// [`Activation::backward_in_place`]).
    LeakyRelu(f64),
    /// `f(a) = 1 / (1 + e^−a)`.
    Sigmoid,
    /// `f(a) = tanh(a)`.
    Tanh,
}

impl Activation {
    /// Applies the activation in place: `v[i] = f(v[i])`, for a slice of any length.
    pub fn forward_in_place<T: Element>(self, v: &mut [T]) {
        apply_in_place(self, v);
    }

    /// The fused backward step: `grad[i] = grad[i] · f'(a[i])`, with the derivative
    /// computed from the activation's output `y[i] = f(a[i])` (the values
    /// [`Activation::forward_in_place`] left), in one pass.
    ///
    /// On entry `grad` holds the gradient of the loss with respect to `y` (for a conv
    /// layer, the `col2im(W_{l+1}ᵀ · delta_{l+1})` term, upsampled through pooling); on
    /// return it holds the gradient with respect to the pre-activation `a`, the layer's
    /// delta.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if `grad` and `y` differ in length;
    /// [`ConvError::InvalidValue`] for [`Activation::LeakyRelu`] with a negative or NaN
    /// slope: its derivative is then not a function of the output's sign.
    pub fn backward_in_place<T: Element>(self, y: &[T], grad: &mut [T]) -> Result<(), ConvError> {
        check_len("grad", grad.len(), y.len(), || {
            format!("the length of y, {}", y.len())
        })?;
        if let Activation::LeakyRelu(slope) = self
            && (slope.is_nan() || slope < 0.0)
        {
            return Err(ConvError::InvalidValue {
                what: format!(
                    "leaky_relu slope {slope} cannot be differentiated from the output; \
                         expected a slope >= 0, so that the output's sign is the input's"
                ),
            });
        }
        backward_kernel(self, y, grad);
        Ok(())
    }
}

/// `v[i] = f(v[i])` for every element, with no checks: the entry point for a fused
/// bias-and-activation epilogue that runs on one row segment of an output tile while it
/// is still in cache. Inlined, so that the identity (the plain forward) costs its
/// callers no call per segment: the pixel-tile write-back made 32 per chunk, and the
/// empty call's prologue took 0.5–1.3% of a forward's samples.
#[inline]
pub(crate) fn apply_in_place<T: Element>(act: Activation, v: &mut [T]) {
    if !matches!(act, Activation::Identity) {
        apply_nonlinear(act, v);
    }
}

fn apply_nonlinear<T: Element>(act: Activation, v: &mut [T]) {
    let zero = T::ZERO;
    match act {
        Activation::Identity => {}
        Activation::Relu => map_in_place(
            v,
            |a| <T::Simd as Lanes<T>>::select_gt(T::Simd::splat(zero), a, T::Simd::splat(zero), a),
            |a| if zero > a { zero } else { a },
        ),
        Activation::LeakyRelu(slope) => {
            let s = T::from_f64(slope);
            let s_lanes = T::Simd::splat(s);
            map_in_place(
                v,
                |a| <T::Simd as Lanes<T>>::select_gt(a, T::Simd::splat(zero), a, s_lanes * a),
                |a| if a > zero { a } else { s * a },
            )
        }
        Activation::Sigmoid => {
            for a in v {
                *a = T::ONE / (T::ONE + (-*a).exp());
            }
        }
        Activation::Tanh => {
            for a in v {
                *a = a.tanh();
            }
        }
    }
}

/// `grad[i] *= f'(a[i])`, the derivative read from `y[i] = f(a[i])`. Lengths are equal
/// (checked by the caller).
fn backward_kernel<T: Element>(act: Activation, y: &[T], grad: &mut [T]) {
    let (zero, one) = (T::ZERO, T::ONE);
    let (zero_lanes, one_lanes) = (T::Simd::splat(zero), T::Simd::splat(one));
    match act {
        Activation::Identity => {}
        Activation::Relu => zip_in_place(
            y,
            grad,
            |y, g| <T::Simd as Lanes<T>>::select_gt(y, zero_lanes, g, zero_lanes),
            |y, g| if y > zero { g } else { zero },
        ),
        Activation::LeakyRelu(slope) => {
            let s = T::from_f64(slope);
            let s_lanes = T::Simd::splat(s);
            zip_in_place(
                y,
                grad,
                |y, g| <T::Simd as Lanes<T>>::select_gt(y, zero_lanes, g, s_lanes * g),
                |y, g| if y > zero { g } else { s * g },
            )
        }
        Activation::Sigmoid => zip_in_place(
            y,
            grad,
            |y, g| g * (y * (one_lanes - y)),
            |y, g| g * (y * (one - y)),
        ),
        Activation::Tanh => zip_in_place(
            y,
            grad,
            |y, g| g * (one_lanes - y * y),
            |y, g| g * (one - y * y),
        ),
    }
}

/// `v[i] = f(v[i])`: whole vectors with `simd`, the tail with `scalar` (which must do the
/// same operations, so that the split point cannot change a result).
#[inline(always)]
fn map_in_place<T: Element>(
    v: &mut [T],
    simd: impl Fn(T::Simd) -> T::Simd,
    scalar: impl Fn(T) -> T,
) {
    let lanes = <T::Simd as Lanes<T>>::LANES;
    let mut chunks = v.chunks_exact_mut(lanes);
    for chunk in &mut chunks {
        simd(T::Simd::load(chunk)).store(chunk);
    }
    for a in chunks.into_remainder() {
        *a = scalar(*a);
    }
}

/// `g[i] = f(y[i], g[i])`, vector part and scalar tail as [`map_in_place`].
#[inline(always)]
fn zip_in_place<T: Element>(
    y: &[T],
    g: &mut [T],
    simd: impl Fn(T::Simd, T::Simd) -> T::Simd,
    scalar: impl Fn(T, T) -> T,
) {
    let lanes = <T::Simd as Lanes<T>>::LANES;
    let mut g_chunks = g.chunks_exact_mut(lanes);
    let mut y_chunks = y.chunks_exact(lanes);
    for (g_chunk, y_chunk) in (&mut g_chunks).zip(&mut y_chunks) {
        simd(T::Simd::load(y_chunk), T::Simd::load(g_chunk)).store(g_chunk);
    }
    for (g, &y) in g_chunks
        .into_remainder()
        .iter_mut()
        .zip(y_chunks.remainder())
    {
        *g = scalar(y, *g);
    }
}
