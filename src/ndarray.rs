//! The three convolution passes on [`ndarray`](https://docs.rs/ndarray) arrays (feature
//! `ndarray`, off by default).
//!
//! Layouts are the slice API's, as 4-D arrays in standard layout (contiguous row-major,
//! "C order"):
//!
//! | array | shape |
//! |---|---|
//! | input `x`, input delta `dx` | `[N, C, H, W]` ([`Conv2d::input_dims`]) |
//! | weights `w`, weight gradient `dw` | `[K, C/groups, R, S]` ([`Conv2d::weight_dims`]) |
//! | output `y`, output delta `dy` | `[N, K, P, Q]` ([`Conv2d::output_dims`]) |
//! | bias, bias gradient `db` | `[K]` |
//!
//! A standard-layout view goes straight to the slice API: no copy, in or out. Each function
//! validates the spec (as [`Conv2d::new`]), then checks every array's shape against it and
//! its layout; a mismatch is a [`ConvError`], never a panic:
//!
//! - [`ConvError::ArrayShape`] when an array's shape is not the one the spec gives;
//! - [`ConvError::NotStandardLayout`] when an array is transposed, strided or reversed.
//!   `.as_standard_layout()` copies such an array into standard layout.
//!
//! The functions that return new arrays ([`conv2d`], [`conv2d_backward_data`],
//! [`conv2d_backward_weights`]) allocate them; the `*_into` forms write into views the
//! caller owns, e.g. one slice of a larger buffer, and the `*_accumulate` forms add the
//! gradients to such views (gradient accumulation, branches that share an input).
//!
//! ```
//! use convgemm::Conv2dSpec;
//! use convgemm::ndarray::{conv2d, conv2d_backward_data, conv2d_backward_weights};
//! use ndarray::{Array1, Array4};
//!
//! let spec = Conv2dSpec { batch: 2, in_channels: 3, in_h: 8, in_w: 8, out_channels: 4,
//!     kernel: [3, 3], padding: [1, 1], ..Default::default() };
//! let x = Array4::<f32>::ones((2, 3, 8, 8)); // N, C, H, W
//! let w = Array4::<f32>::from_elem((4, 3, 3, 3), 0.5); // K, C, R, S
//! let b = Array1::<f32>::zeros(4);
//! let y = conv2d(&x.view(), &w.view(), Some(b.view()), &spec)?;
//! assert_eq!(y.shape(), &[2, 4, 8, 8]);
//! assert_eq!(y[[0, 0, 4, 4]], 0.5 * 27.0); // an interior pixel: 3·3·3 taps
//!
//! let dy = Array4::<f32>::ones(y.raw_dim());
//! let dx = conv2d_backward_data(&dy.view(), &w.view(), &spec)?;
//! let (dw, db) = conv2d_backward_weights(&x.view(), &dy.view(), &spec, true)?;
//! assert_eq!((dx.shape(), dw.shape()), (x.shape(), w.shape()));
//! assert_eq!(db.unwrap()[0], 2.0 * 8.0 * 8.0);
//!
//! // A transposed view is an error, not a hidden copy or a panic.
//! let mut xt = x.view();
//! xt.swap_axes(2, 3); // the same shape (H = W), but column-major planes
//! let err = conv2d(&xt, &w.view(), None, &spec).unwrap_err();
//! assert!(matches!(err, convgemm::ConvError::NotStandardLayout { array: "x", .. }));
//! # Ok::<(), convgemm::ConvError>(())
//! ```

use ::ndarray::{
    Array1, Array4, ArrayView, ArrayView1, ArrayView4, ArrayViewMut, ArrayViewMut1, ArrayViewMut4,
    Dimension,
};

use crate::conv::Conv2d;
use crate::element::Element;
use crate::error::ConvError;
use crate::shape::Conv2dSpec;

const INPUT_AXES: &str = "[N, C, H, W]";
const WEIGHT_AXES: &str = "[K, C/groups, R, S]";
const OUTPUT_AXES: &str = "[N, K, P, Q]";
const BIAS_AXES: &str = "[K]";

/// Forward pass: `y = conv2d(x, w) + bias`, returned as a new array.
///
/// - `x`: input, `[N, C, H, W]`;
/// - `w`: weights, `[K, C/groups, R, S]`;
/// - `bias`: `[K]`, added to every pixel of each output channel, or `None`;
/// - returns `y`, `[N, K, P, Q]`.
///
/// All in standard layout, with the dimensions `spec` gives.
///
/// # Errors
/// Those of [`Conv2d::new`] for an invalid spec; [`ConvError::ArrayShape`] or
/// [`ConvError::NotStandardLayout`] for an array of the wrong shape or layout.
pub fn conv2d<T: Element>(
    x: &ArrayView4<'_, T>,
    w: &ArrayView4<'_, T>,
    bias: Option<ArrayView1<'_, T>>,
    spec: &Conv2dSpec,
) -> Result<Array4<T>, ConvError> {
    let conv = Conv2d::new(*spec)?;
    let mut y = Array4::from_elem(conv.output_dims(), T::ZERO);
    forward(&conv, x, w, bias, y.view_mut())?;
    Ok(y)
}

/// Forward pass into a caller's array: `y = conv2d(x, w) + bias`.
///
/// As [`conv2d`], with `y` (`[N, K, P, Q]`, standard layout) overwritten. On an error `y`
/// is left untouched.
///
/// # Errors
/// As [`conv2d`], `y` included.
pub fn conv2d_into<T: Element>(
    x: &ArrayView4<'_, T>,
    w: &ArrayView4<'_, T>,
    bias: Option<ArrayView1<'_, T>>,
    spec: &Conv2dSpec,
    y: ArrayViewMut4<'_, T>,
) -> Result<(), ConvError> {
    forward(&Conv2d::new(*spec)?, x, w, bias, y)
}

/// Input delta: `dx = col2im(Wᵀ · dy)`, the gradient of the loss with respect to `x`,
/// returned as a new array.
///
/// - `dy`: gradient with respect to the output, `[N, K, P, Q]`;
/// - `w`: weights, `[K, C/groups, R, S]`;
/// - returns `dx`, `[N, C, H, W]`.
///
/// # Errors
/// As [`conv2d`].
pub fn conv2d_backward_data<T: Element>(
    dy: &ArrayView4<'_, T>,
    w: &ArrayView4<'_, T>,
    spec: &Conv2dSpec,
) -> Result<Array4<T>, ConvError> {
    let conv = Conv2d::new(*spec)?;
    let mut dx = Array4::from_elem(conv.input_dims(), T::ZERO);
    backward_data(&conv, dy, w, dx.view_mut())?;
    Ok(dx)
}

/// Input delta into a caller's array.
///
/// As [`conv2d_backward_data`], with `dx` (`[N, C, H, W]`, standard layout) overwritten.
/// On an error `dx` is left untouched.
///
/// # Errors
/// As [`conv2d`], `dx` included.
pub fn conv2d_backward_data_into<T: Element>(
    dy: &ArrayView4<'_, T>,
    w: &ArrayView4<'_, T>,
    spec: &Conv2dSpec,
    dx: ArrayViewMut4<'_, T>,
) -> Result<(), ConvError> {
    backward_data(&Conv2d::new(*spec)?, dy, w, dx)
}

/// Weight gradient: `dw = Σ_n dy · im2col(x)ᵀ` and, when `with_bias`, `db = Σ_{n,p,q} dy`,
/// returned as new arrays.
///
/// - `x`: input, `[N, C, H, W]`;
/// - `dy`: gradient with respect to the output, `[N, K, P, Q]`;
/// - returns `dw`, `[K, C/groups, R, S]`, and `db`, `[K]` (`None` unless `with_bias`).
///
/// # Errors
/// As [`conv2d`].
#[allow(clippy::type_complexity)]
pub fn conv2d_backward_weights<T: Element>(
    x: &ArrayView4<'_, T>,
    dy: &ArrayView4<'_, T>,
    spec: &Conv2dSpec,
    with_bias: bool,
) -> Result<(Array4<T>, Option<Array1<T>>), ConvError> {
    let conv = Conv2d::new(*spec)?;
    let mut dw = Array4::from_elem(conv.weight_dims(), T::ZERO);
    let mut db = with_bias.then(|| Array1::from_elem(conv.output_dims()[1], T::ZERO));
    backward_weights(
        &conv,
        x,
        dy,
        dw.view_mut(),
        db.as_mut().map(|b| b.view_mut()),
    )?;
    Ok((dw, db))
}

/// Weight gradient into a caller's arrays.
///
/// As [`conv2d_backward_weights`], with `dw` (`[K, C/groups, R, S]`) and, if given, `db`
/// (`[K]`) overwritten, both in standard layout. On an error neither is touched.
///
/// # Errors
/// As [`conv2d`], `dw` and `db` included.
pub fn conv2d_backward_weights_into<T: Element>(
    x: &ArrayView4<'_, T>,
    dy: &ArrayView4<'_, T>,
    spec: &Conv2dSpec,
    dw: ArrayViewMut4<'_, T>,
    db: Option<ArrayViewMut1<'_, T>>,
) -> Result<(), ConvError> {
    backward_weights(&Conv2d::new(*spec)?, x, dy, dw, db)
}

/// Input delta added to a caller's array: `dx += col2im(Wᵀ · dy)`
/// ([`Conv2d::backward_data_accumulate`]: each element becomes `dx + g`, with `g` the bits
/// [`conv2d_backward_data`] gives). Shapes as [`conv2d_backward_data_into`]; on an error
/// `dx` is left untouched.
///
/// # Errors
/// As [`conv2d`], `dx` included.
pub fn conv2d_backward_data_accumulate<T: Element>(
    dy: &ArrayView4<'_, T>,
    w: &ArrayView4<'_, T>,
    spec: &Conv2dSpec,
    dx: ArrayViewMut4<'_, T>,
) -> Result<(), ConvError> {
    backward_data_with(&Conv2d::new(*spec)?, dy, w, dx, true)
}

/// Weight gradient added to a caller's arrays: `dw += Σ_n dy · im2col(x)ᵀ` and, if `db`
/// is given, `db += Σ_{n,p,q} dy` ([`Conv2d::backward_weights_accumulate`], for gradient
/// accumulation over micro-batches). Shapes as [`conv2d_backward_weights_into`]; on an
/// error neither array is touched.
///
/// # Errors
/// As [`conv2d`], `dw` and `db` included.
pub fn conv2d_backward_weights_accumulate<T: Element>(
    x: &ArrayView4<'_, T>,
    dy: &ArrayView4<'_, T>,
    spec: &Conv2dSpec,
    dw: ArrayViewMut4<'_, T>,
    db: Option<ArrayViewMut1<'_, T>>,
) -> Result<(), ConvError> {
    backward_weights_with(&Conv2d::new(*spec)?, x, dy, dw, db, true)
}

fn forward<T: Element>(
    conv: &Conv2d,
    x: &ArrayView4<'_, T>,
    w: &ArrayView4<'_, T>,
    bias: Option<ArrayView1<'_, T>>,
    mut y: ArrayViewMut4<'_, T>,
) -> Result<(), ConvError> {
    let k = conv.output_dims()[1];
    let x = as_slice("x", x, &conv.input_dims(), INPUT_AXES)?;
    let w = as_slice("w", w, &conv.weight_dims(), WEIGHT_AXES)?;
    let bias = match &bias {
        Some(b) => Some(as_slice("bias", b, &[k], BIAS_AXES)?),
        None => None,
    };
    let y = as_slice_mut("y", &mut y, &conv.output_dims(), OUTPUT_AXES)?;
    conv.forward(x, w, bias, y)
}

fn backward_data<T: Element>(
    conv: &Conv2d,
    dy: &ArrayView4<'_, T>,
    w: &ArrayView4<'_, T>,
    dx: ArrayViewMut4<'_, T>,
) -> Result<(), ConvError> {
    backward_data_with(conv, dy, w, dx, false)
}

fn backward_data_with<T: Element>(
    conv: &Conv2d,
    dy: &ArrayView4<'_, T>,
    w: &ArrayView4<'_, T>,
    mut dx: ArrayViewMut4<'_, T>,
    accumulate: bool,
) -> Result<(), ConvError> {
    let dy = as_slice("dy", dy, &conv.output_dims(), OUTPUT_AXES)?;
    let w = as_slice("w", w, &conv.weight_dims(), WEIGHT_AXES)?;
    let dx = as_slice_mut("dx", &mut dx, &conv.input_dims(), INPUT_AXES)?;
    if accumulate {
        conv.backward_data_accumulate(dy, w, dx)
    } else {
        conv.backward_data(dy, w, dx)
    }
}

fn backward_weights<T: Element>(
    conv: &Conv2d,
    x: &ArrayView4<'_, T>,
    dy: &ArrayView4<'_, T>,
    dw: ArrayViewMut4<'_, T>,
    db: Option<ArrayViewMut1<'_, T>>,
) -> Result<(), ConvError> {
    backward_weights_with(conv, x, dy, dw, db, false)
}

fn backward_weights_with<T: Element>(
    conv: &Conv2d,
    x: &ArrayView4<'_, T>,
    dy: &ArrayView4<'_, T>,
    mut dw: ArrayViewMut4<'_, T>,
    mut db: Option<ArrayViewMut1<'_, T>>,
    accumulate: bool,
) -> Result<(), ConvError> {
    let k = conv.output_dims()[1];
    let x = as_slice("x", x, &conv.input_dims(), INPUT_AXES)?;
    let dy = as_slice("dy", dy, &conv.output_dims(), OUTPUT_AXES)?;
    let dw = as_slice_mut("dw", &mut dw, &conv.weight_dims(), WEIGHT_AXES)?;
    let db = match &mut db {
        Some(b) => Some(as_slice_mut("db", b, &[k], BIAS_AXES)?),
        None => None,
    };
    if accumulate {
        conv.backward_weights_accumulate(x, dy, dw, db)
    } else {
        conv.backward_weights(x, dy, dw, db)
    }
}

/// Checks the shape, then borrows the elements of a standard-layout array as a slice.
fn as_slice<'a, T, D: Dimension>(
    array: &'static str,
    a: &'a ArrayView<'_, T, D>,
    expected: &[usize],
    axes: &'static str,
) -> Result<&'a [T], ConvError> {
    check_shape(array, a.shape(), expected, axes)?;
    a.as_slice()
        .ok_or_else(|| layout_error(array, a.shape(), a.strides()))
}

/// As [`as_slice`], mutably.
fn as_slice_mut<'a, T, D: Dimension>(
    array: &'static str,
    a: &'a mut ArrayViewMut<'_, T, D>,
    expected: &[usize],
    axes: &'static str,
) -> Result<&'a mut [T], ConvError> {
    check_shape(array, a.shape(), expected, axes)?;
    let (shape, strides) = (a.shape().to_vec(), a.strides().to_vec());
    a.as_slice_mut()
        .ok_or_else(|| layout_error(array, &shape, &strides))
}

fn check_shape(
    array: &'static str,
    actual: &[usize],
    expected: &[usize],
    axes: &'static str,
) -> Result<(), ConvError> {
    if actual == expected {
        Ok(())
    } else {
        Err(ConvError::ArrayShape {
            array,
            actual: actual.to_vec(),
            expected: expected.to_vec(),
            axes,
        })
    }
}

fn layout_error(array: &'static str, shape: &[usize], strides: &[isize]) -> ConvError {
    // Row-major strides; the shape passed `check_shape`, so its product fits in `isize`.
    let mut expected_strides = vec![1isize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        expected_strides[i] = expected_strides[i + 1].saturating_mul(shape[i + 1] as isize);
    }
    ConvError::NotStandardLayout {
        array,
        shape: shape.to_vec(),
        strides: strides.to_vec(),
        expected_strides,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::ndarray::{Array, Array4, s};

    fn spec() -> Conv2dSpec {
        Conv2dSpec {
            batch: 2,
            in_channels: 4,
            in_h: 7,
            in_w: 6,
            out_channels: 6,
            kernel: [3, 2],
            stride: [2, 1],
            padding: [1, 1],
            dilation: [1, 2],
            groups: 2,
        }
    }

    /// Small integers, so every f32 sum is exact and results compare bit for bit.
    fn ints<T: Element>(dims: [usize; 4], seed: usize) -> Array4<T> {
        Array::from_shape_fn(dims, |(a, b, c, d)| {
            T::from_f64(((a * 7 + b * 5 + c * 3 + d + seed) % 7) as f64 - 3.0)
        })
    }

    fn matches_slice_api<T: Element>() {
        let spec = spec();
        let conv = Conv2d::new(spec).unwrap();
        let x = ints::<T>(conv.input_dims(), 1);
        let w = ints::<T>(conv.weight_dims(), 2);
        let dy = ints::<T>(conv.output_dims(), 3);
        let bias = Array1::from_shape_fn(6, |k| T::from_f64(k as f64));

        let y = conv2d(&x.view(), &w.view(), Some(bias.view()), &spec).unwrap();
        let mut y_ref = vec![T::ZERO; y.len()];
        let (xs, ws, dys) = (
            x.as_slice().unwrap(),
            w.as_slice().unwrap(),
            dy.as_slice().unwrap(),
        );
        conv.forward(xs, ws, bias.as_slice(), &mut y_ref).unwrap();
        assert_eq!(y.shape(), &conv.output_dims());
        assert_eq!(y.as_slice().unwrap(), &y_ref[..]);
        assert!(y.iter().filter(|v| **v != T::ZERO).count() > y.len() / 2);

        let dx = conv2d_backward_data(&dy.view(), &w.view(), &spec).unwrap();
        let mut dx_ref = vec![T::ZERO; dx.len()];
        conv.backward_data(dys, ws, &mut dx_ref).unwrap();
        assert_eq!(dx.as_slice().unwrap(), &dx_ref[..]);

        let (dw, db) = conv2d_backward_weights(&x.view(), &dy.view(), &spec, true).unwrap();
        let (mut dw_ref, mut db_ref) = (vec![T::ZERO; dw.len()], vec![T::ZERO; 6]);
        conv.backward_weights(xs, dys, &mut dw_ref, Some(&mut db_ref))
            .unwrap();
        assert_eq!(dw.as_slice().unwrap(), &dw_ref[..]);
        assert_eq!(db.unwrap().as_slice().unwrap(), &db_ref[..]);
        let (_, no_db) = conv2d_backward_weights(&x.view(), &dy.view(), &spec, false).unwrap();
        assert!(no_db.is_none());
    }

    #[test]
    fn bit_identical_to_the_slice_api_f32() {
        matches_slice_api::<f32>();
    }

    #[test]
    fn bit_identical_to_the_slice_api_f64() {
        matches_slice_api::<f64>();
    }

    /// The accumulating forms add exactly the overwriting results (small integers: exact).
    #[test]
    fn accumulate_forms_add_the_gradients() {
        let spec = spec();
        let conv = Conv2d::new(spec).unwrap();
        let x = ints::<f32>(conv.input_dims(), 1);
        let w = ints::<f32>(conv.weight_dims(), 2);
        let dy = ints::<f32>(conv.output_dims(), 3);
        let dx = conv2d_backward_data(&dy.view(), &w.view(), &spec).unwrap();
        let (dw, db) = conv2d_backward_weights(&x.view(), &dy.view(), &spec, true).unwrap();
        let db = db.unwrap();

        let mut dx_acc = ints::<f32>(conv.input_dims(), 4);
        let dx_want = &dx_acc + &dx;
        conv2d_backward_data_accumulate(&dy.view(), &w.view(), &spec, dx_acc.view_mut()).unwrap();
        assert_eq!(dx_acc, dx_want);

        let mut dw_acc = ints::<f32>(conv.weight_dims(), 5);
        let mut db_acc = Array1::from_shape_fn(6, |k| k as f32 - 2.0);
        let (dw_want, db_want) = (&dw_acc + &dw, &db_acc + &db);
        conv2d_backward_weights_accumulate(
            &x.view(),
            &dy.view(),
            &spec,
            dw_acc.view_mut(),
            Some(db_acc.view_mut()),
        )
        .unwrap();
        assert_eq!((dw_acc, db_acc), (dw_want, db_want));
    }

    #[test]
    fn into_forms_write_in_place_into_sub_views() {
        let spec = spec();
        let conv = Conv2d::new(spec).unwrap();
        let x = ints::<f64>(conv.input_dims(), 1);
        let w = ints::<f64>(conv.weight_dims(), 2);
        let y = conv2d(&x.view(), &w.view(), None, &spec).unwrap();

        // One batch-slice of a larger buffer is still in standard layout.
        let [n, k, p, q] = conv.output_dims();
        let mut big = Array4::from_elem((n + 2, k, p, q), 9.0);
        let before = big.as_ptr();
        conv2d_into(
            &x.view(),
            &w.view(),
            None,
            &spec,
            big.slice_mut(s![1..n + 1, .., .., ..]),
        )
        .unwrap();
        assert_eq!(big.as_ptr(), before);
        assert_eq!(big.slice(s![1..n + 1, .., .., ..]), y);
        assert!(big.slice(s![0, .., .., ..]).iter().all(|&v| v == 9.0));
        assert!(big.slice(s![n + 1, .., .., ..]).iter().all(|&v| v == 9.0));

        // Inputs sliced the same way are read in place.
        let mut xbig = Array4::zeros((n + 1, 4, 7, 6));
        xbig.slice_mut(s![1.., .., .., ..]).assign(&x);
        let y2 = conv2d(&xbig.slice(s![1.., .., .., ..]), &w.view(), None, &spec).unwrap();
        assert_eq!(y2, y);

        let dy = ints::<f64>(conv.output_dims(), 3);
        let mut dx = Array4::zeros(conv.input_dims());
        conv2d_backward_data_into(&dy.view(), &w.view(), &spec, dx.view_mut()).unwrap();
        assert_eq!(
            dx,
            conv2d_backward_data(&dy.view(), &w.view(), &spec).unwrap()
        );
        let mut dw = Array4::zeros(conv.weight_dims());
        let mut db = Array1::zeros(k);
        conv2d_backward_weights_into(
            &x.view(),
            &dy.view(),
            &spec,
            dw.view_mut(),
            Some(db.view_mut()),
        )
        .unwrap();
        let (dw2, db2) = conv2d_backward_weights(&x.view(), &dy.view(), &spec, true).unwrap();
        assert_eq!((dw, Some(db)), (dw2, db2));
    }

    #[test]
    fn wrong_shape_is_an_error_with_the_expected_shape() {
        let spec = spec();
        let x = Array4::<f32>::zeros((2, 4, 7, 5));
        let w = Array4::<f32>::zeros((6, 2, 3, 2));
        let err = conv2d(&x.view(), &w.view(), None, &spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x has shape [2, 4, 7, 5], expected [2, 4, 7, 6] = [N, C, H, W] of the spec"
        );
        let x = Array4::<f32>::zeros((2, 4, 7, 6));
        let bias = Array1::<f32>::zeros(5);
        let err = conv2d(&x.view(), &w.view(), Some(bias.view()), &spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bias has shape [5], expected [6] = [K] of the spec"
        );
        let w = Array4::<f32>::zeros((6, 4, 3, 2)); // C instead of C/groups
        let err = conv2d_backward_data(&Array4::zeros((2, 6, 4, 6)).view(), &w.view(), &spec)
            .unwrap_err();
        assert_eq!(
            err,
            ConvError::ArrayShape {
                array: "w",
                actual: vec![6, 4, 3, 2],
                expected: vec![6, 2, 3, 2],
                axes: "[K, C/groups, R, S]",
            }
        );
    }

    #[test]
    fn non_standard_layout_is_an_error_and_outputs_stay_untouched() {
        let spec = Conv2dSpec {
            batch: 1,
            in_channels: 2,
            in_h: 3,
            in_w: 3,
            out_channels: 2,
            kernel: [3, 3],
            ..Default::default()
        };
        // Square, so the transpose has the right shape but the wrong strides.
        let x = Array4::<f64>::zeros((1, 2, 3, 3));
        let w = Array4::<f64>::zeros((2, 2, 3, 3));
        let mut xt = x.view();
        xt.swap_axes(2, 3);
        let err = conv2d(&xt, &w.view(), None, &spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x with shape [1, 2, 3, 3] has strides [18, 9, 1, 3], expected [18, 9, 3, 1] \
             (standard layout: contiguous row-major; `.as_standard_layout()` copies into it)"
        );
        // ... and the copy it suggests works.
        assert!(conv2d(&xt.as_standard_layout().view(), &w.view(), None, &spec).is_ok());

        let bias = Array1::<f64>::zeros(4);
        let err = conv2d(&x.view(), &w.view(), Some(bias.slice(s![..;2])), &spec).unwrap_err();
        assert!(matches!(
            err,
            ConvError::NotStandardLayout { array: "bias", .. }
        ));
        let reversed = bias.slice(s![..2;-1]);
        let err = conv2d(&x.view(), &w.view(), Some(reversed), &spec).unwrap_err();
        assert!(matches!(
            err,
            ConvError::NotStandardLayout { array: "bias", .. }
        ));

        let mut dw = Array4::<f64>::from_elem((2, 2, 3, 3), 7.0);
        let mut dwt = dw.view_mut();
        dwt.swap_axes(0, 1);
        let dy = Array4::<f64>::ones((1, 2, 1, 1));
        let err =
            conv2d_backward_weights_into(&x.view(), &dy.view(), &spec, dwt, None).unwrap_err();
        assert!(matches!(
            err,
            ConvError::NotStandardLayout { array: "dw", .. }
        ));
        assert!(dw.iter().all(|&v| v == 7.0));
    }

    /// The README shows the module example as `ignore` (its examples also run without
    /// the feature); this keeps the two from drifting apart.
    #[test]
    fn readme_example_is_the_module_example() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## ndarray\n")
            .nth(1)
            .expect("README has ## ndarray");
        let block = section
            .split("```rust,ignore\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("## ndarray has a rust,ignore block");
        let module = include_str!("ndarray.rs");
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                module.contains(&format!("//! {line}\n")),
                "README line missing from the module example: {line}"
            );
        }
    }

    #[test]
    fn invalid_spec_is_the_plan_error() {
        let spec = Conv2dSpec {
            groups: 3,
            ..spec()
        };
        let x = Array4::<f32>::zeros((2, 4, 7, 6));
        let w = Array4::<f32>::zeros((6, 2, 3, 2));
        let err = conv2d(&x.view(), &w.view(), None, &spec).unwrap_err();
        assert!(matches!(err, ConvError::GroupsMismatch { .. }));
        let err = conv2d(&x.view(), &w.view(), None, &Conv2dSpec::default()).unwrap_err();
        assert_eq!(err, ConvError::ZeroSize { field: "batch" });
    }
}
