//! 2-D max and average pooling, forward and backward: the `upsample` of the delta rule
//! `delta_l = upsample(col2im(W_{l+1}ᵀ · delta_{l+1})) ⊙ f'(a_l)`.
//!
//! Semantics are PyTorch's `max_pool2d` / `avg_pool2d` in floor mode: for input `x`
//! (`N·C·H·W`) the output `y` is `N·C·P·Q` with
//! `P = (H + 2·padding[0] − kernel[0]) / stride[0] + 1`, likewise `Q`. Padding is at most
//! half the kernel, so every window holds at least one input element.
//!
//! - max: `y[p, q]` is the largest input in the window (padding counts as −∞), and
//!   `argmax[p, q]` its flat index `h·W + w` into the input plane. Ties go to the first
//!   maximum in row-major window order; a NaN wins over any number (the first NaN).
//!   Backward routes each `dy[p, q]` to `dx[argmax[p, q]]` and leaves every other `dx` 0.
//! - average: `y[p, q] = Σ window / d`, where `d = kernel[0]·kernel[1]` when padding is
//!   counted (`count_include_pad`, PyTorch's default) and the number of input elements in
//!   the window otherwise. Backward adds `dy[p, q] / d` to every input of the window.
//!
//! Each plan validates its spec once; calls check buffer lengths (and, for the max
//! backward, every argmax index). The passes run over `(image, channel)` planes in the
//! caller's rayon pool; each plane is computed by one task in a fixed order, so results
//! are bit-identical whatever the number of threads.

use crate::element::Element;
use crate::error::{ConvError, check_len};
use crate::parallel::*;
use crate::shape::{Axis, checked_product, nonzero};

/// The shape of a 2-D pooling layer, with PyTorch's `max_pool2d` / `avg_pool2d`
/// semantics in floor mode.
///
/// Layouts: `x` and `dx` are `N·C·H·W`, `y`, `dy` and the max-pool `argmax` are `N·C·P·Q`,
/// all contiguous row-major, where `P = (H + 2·padding[0] − kernel[0]) / stride[0] + 1`
/// and likewise `Q` along the width. For PyTorch's default stride, set `stride = kernel`.
///
/// ```
/// use convgemm::{MaxPool2d, Pool2dSpec};
/// let pool = MaxPool2d::new(Pool2dSpec { batch: 8, channels: 16, in_h: 8, in_w: 8,
///     kernel: [2, 2], stride: [2, 2], padding: [0, 0] })?;
/// assert_eq!(pool.output_dims(), [8, 16, 4, 4]);
/// # Ok::<(), convgemm::ConvError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dSpec {
    /// Batch size `N`.
    pub batch: usize,
    /// Channels `C` (the same for input and output).
    pub channels: usize,
    /// Input height `H`.
    pub in_h: usize,
    /// Input width `W`.
    pub in_w: usize,
    /// Window size `[height, width]`.
    pub kernel: [usize; 2],
    /// Stride `[height, width]`.
    pub stride: [usize; 2],
    /// Padding on both sides `[top = bottom, left = right]`, at most half the kernel.
    pub padding: [usize; 2],
}

/// A validated pooling shape: what every pass reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PoolGeometry {
    batch: usize,
    channels: usize,
    /// Height axis (H, kernel, P).
    h: Axis,
    /// Width axis (W, kernel, Q).
    w: Axis,
    /// `H·W`.
    in_plane: usize,
    /// `P·Q`.
    out_plane: usize,
    /// `N·C·H·W`.
    x_len: usize,
    /// `N·C·P·Q`.
    y_len: usize,
}

impl PoolGeometry {
    fn new(spec: &Pool2dSpec) -> Result<PoolGeometry, ConvError> {
        nonzero("batch", spec.batch)?;
        nonzero("channels", spec.channels)?;
        nonzero("in_h", spec.in_h)?;
        nonzero("in_w", spec.in_w)?;
        nonzero("kernel[0]", spec.kernel[0])?;
        nonzero("kernel[1]", spec.kernel[1])?;
        nonzero("stride[0]", spec.stride[0])?;
        nonzero("stride[1]", spec.stride[1])?;
        for (axis, padding, kernel) in [
            ("height", spec.padding[0], spec.kernel[0]),
            ("width", spec.padding[1], spec.kernel[1]),
        ] {
            if padding > kernel / 2 {
                return Err(ConvError::PaddingTooLarge {
                    axis,
                    padding,
                    kernel,
                });
            }
        }
        let h = Axis::new(
            "height",
            spec.in_h,
            spec.kernel[0],
            spec.stride[0],
            spec.padding[0],
            1,
        )?;
        let w = Axis::new(
            "width",
            spec.in_w,
            spec.kernel[1],
            spec.stride[1],
            spec.padding[1],
            1,
        )?;
        let x_len = checked_product(
            "x",
            &[
                ("N", spec.batch),
                ("C", spec.channels),
                ("H", spec.in_h),
                ("W", spec.in_w),
            ],
        )?;
        let y_len = checked_product(
            "y",
            &[
                ("N", spec.batch),
                ("C", spec.channels),
                ("P", h.output),
                ("Q", w.output),
            ],
        )?;
        // Both divide a product checked above, so neither overflows.
        let in_plane = spec.in_h * spec.in_w;
        let out_plane = h.output * w.output;
        Ok(PoolGeometry {
            batch: spec.batch,
            channels: spec.channels,
            h,
            w,
            in_plane,
            out_plane,
            x_len,
            y_len,
        })
    }

    fn input_dims(&self) -> [usize; 4] {
        [self.batch, self.channels, self.h.input, self.w.input]
    }

    fn output_dims(&self) -> [usize; 4] {
        [self.batch, self.channels, self.h.output, self.w.output]
    }

    /// `x` and `dx` hold `N·C·H·W` elements.
    fn check_x(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        check_len(buffer, len, self.x_len, || {
            format!(
                "N {} × C {} × H {} × W {}",
                self.batch, self.channels, self.h.input, self.w.input
            )
        })
    }

    /// `y`, `dy` and `argmax` hold `N·C·P·Q` elements.
    fn check_y(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        check_len(buffer, len, self.y_len, || {
            format!(
                "N {} × C {} × P {} × Q {}",
                self.batch, self.channels, self.h.output, self.w.output
            )
        })
    }

    /// Input elements in the windows of output row `p` (or column, for the width axis)
    /// when padding is not counted.
    fn window_count(axis: &Axis, o: usize) -> usize {
        // In padded coordinates the window is start .. start + kernel and the input is
        // padding .. padding + input; validation keeps start + kernel <= input + 2·padding.
        let start = o * axis.stride;
        let lo = start.max(axis.padding);
        let hi = (start + axis.kernel).min(axis.padding + axis.input);
        hi - lo
    }
}

/// A validated 2-D max pooling plan, PyTorch's `max_pool2d` in floor mode (shapes and
/// layouts in [`Pool2dSpec`]).
///
/// `y[p, q]` is the largest input in its window (padding counts as −∞, so it never wins)
/// and `argmax[p, q]` that input's flat index `h·W + w` in its plane. Ties go to the
/// first maximum in row-major window order; a NaN wins over any number (the first NaN).
/// The backward pass routes each `dy[p, q]` to `dx[argmax[p, q]]`. Calls run over
/// `(image, channel)` planes in the caller's rayon pool, bit-identical for any number of
/// threads.
///
/// ```
/// use convgemm::{MaxPool2d, Pool2dSpec};
/// let pool = MaxPool2d::new(Pool2dSpec { batch: 1, channels: 1, in_h: 2, in_w: 4,
///     kernel: [2, 2], stride: [2, 2], padding: [0, 0] })?;
/// let x = [1.0f32, 5.0, 2.0, 2.0,
///          3.0, 0.0, 1.0, 0.0];
/// let (mut y, mut argmax) = ([0.0f32; 2], [0u32; 2]);
/// pool.forward(&x, &mut y, &mut argmax)?;
/// assert_eq!((y, argmax), ([5.0, 2.0], [1, 2])); // a tie: the first 2 wins
///
/// let mut dx = [9.0f32; 8];
/// pool.backward(&[10.0, 20.0], &argmax, &mut dx)?; // the "upsample"
/// assert_eq!(dx, [0.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
/// # Ok::<(), convgemm::ConvError>(())
/// ```
#[derive(Clone, Debug)]
pub struct MaxPool2d {
    spec: Pool2dSpec,
    geo: PoolGeometry,
}

impl MaxPool2d {
    /// Validates `spec` and builds the plan.
    ///
    /// # Errors
    /// [`ConvError::ZeroSize`] for a zero size or stride;
    /// [`ConvError::PaddingTooLarge`] when a padding exceeds half its kernel;
    /// [`ConvError::KernelTooLarge`] when the window exceeds the padded input;
    /// [`ConvError::TooLarge`] when a buffer size overflows or exceeds `isize::MAX` bytes;
    /// [`ConvError::PlaneTooLarge`] when `H·W > 2^32`, so an argmax would not fit a `u32`.
    pub fn new(spec: Pool2dSpec) -> Result<MaxPool2d, ConvError> {
        let geo = PoolGeometry::new(&spec)?;
        if geo.in_plane - 1 > u32::MAX as usize {
            return Err(ConvError::PlaneTooLarge {
                in_h: spec.in_h,
                in_w: spec.in_w,
            });
        }
        Ok(MaxPool2d { spec, geo })
    }

    /// The spec this plan was built from.
    pub fn spec(&self) -> &Pool2dSpec {
        &self.spec
    }

    /// Input dimensions `[N, C, H, W]`.
    pub fn input_dims(&self) -> [usize; 4] {
        self.geo.input_dims()
    }

    /// Output dimensions `[N, C, P, Q]`.
    pub fn output_dims(&self) -> [usize; 4] {
        self.geo.output_dims()
    }

    /// Forward pass: `y` gets each window's maximum, `argmax` its flat index into the
    /// input plane (`h·W + w`, the first maximum in row-major window order).
    ///
    /// - `x`: input, `N·C·H·W`;
    /// - `y`: output, `N·C·P·Q`, overwritten;
    /// - `argmax`: `N·C·P·Q`, overwritten; keep it for [`MaxPool2d::backward`].
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length.
    pub fn forward<T: Element>(
        &self,
        x: &[T],
        y: &mut [T],
        argmax: &mut [u32],
    ) -> Result<(), ConvError> {
        let geo = &self.geo;
        geo.check_x("x", x.len())?;
        geo.check_y("y", y.len())?;
        geo.check_y("argmax", argmax.len())?;
        y.par_chunks_exact_mut(geo.out_plane)
            .zip(argmax.par_chunks_exact_mut(geo.out_plane))
            .zip(x.par_chunks_exact(geo.in_plane))
            .for_each(|((y, argmax), x)| max_forward_plane(geo, x, y, argmax));
        Ok(())
    }

    /// Backward pass, the "upsample": `dx` is zeroed, then each `dy` is added at its
    /// argmax (where windows overlap, an input can receive several).
    ///
    /// - `dy`: gradient with respect to `y`, `N·C·P·Q`;
    /// - `argmax`: the indices [`MaxPool2d::forward`] wrote, `N·C·P·Q`;
    /// - `dx`: `N·C·H·W`, overwritten.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length;
    /// [`ConvError::InvalidValue`] if an argmax index is not below `H·W` (then `dx` is
    /// left unchanged).
    pub fn backward<T: Element>(
        &self,
        dy: &[T],
        argmax: &[u32],
        dx: &mut [T],
    ) -> Result<(), ConvError> {
        let geo = &self.geo;
        geo.check_y("dy", dy.len())?;
        geo.check_y("argmax", argmax.len())?;
        geo.check_x("dx", dx.len())?;
        if let Some(i) = argmax.iter().position(|&a| a as usize >= geo.in_plane) {
            let plane = i / geo.out_plane;
            return Err(ConvError::InvalidValue {
                what: format!(
                    "argmax[{i}] = {} (image {}, channel {}) is outside its input plane; \
                     expected an index < H {} × W {} = {}",
                    argmax[i],
                    plane / geo.channels,
                    plane % geo.channels,
                    geo.h.input,
                    geo.w.input,
                    geo.in_plane
                ),
            });
        }
        dx.par_chunks_exact_mut(geo.in_plane)
            .zip(dy.par_chunks_exact(geo.out_plane))
            .zip(argmax.par_chunks_exact(geo.out_plane))
            .for_each(|((dx, dy), argmax)| {
                dx.fill(T::ZERO);
                for (&g, &a) in dy.iter().zip(argmax) {
                    dx[a as usize] += g;
                }
            });
        Ok(())
    }
}

/// A validated 2-D average pooling plan, PyTorch's `avg_pool2d` in floor mode (shapes and
/// layouts in [`Pool2dSpec`]).
///
/// `y[p, q] = Σ window / d`, where `d = kernel[0]·kernel[1]` with `count_include_pad`
/// (PyTorch's default) and the number of input elements in the window without. The
/// backward pass adds `dy[p, q] / d` to every input of the window. Calls run over
/// `(image, channel)` planes in the caller's rayon pool, bit-identical for any number of
/// threads.
///
/// ```
/// use convgemm::{AvgPool2d, Pool2dSpec};
/// let spec = Pool2dSpec { batch: 1, channels: 1, in_h: 2, in_w: 2,
///     kernel: [2, 2], stride: [1, 1], padding: [1, 1] };
/// let x = [4.0f64, 8.0, 12.0, 16.0];
/// let mut y = [0.0f64; 9];
/// AvgPool2d::new(spec, true)?.forward(&x, &mut y)?; // divide by 2·2 always
/// assert_eq!(y[0], 1.0);
/// AvgPool2d::new(spec, false)?.forward(&x, &mut y)?; // divide by the inputs in the window
/// assert_eq!(y[0], 4.0);
/// # Ok::<(), convgemm::ConvError>(())
/// ```
#[derive(Clone, Debug)]
pub struct AvgPool2d {
    spec: Pool2dSpec,
    geo: PoolGeometry,
    count_include_pad: bool,
}

impl AvgPool2d {
    /// Validates `spec` and builds the plan. With `count_include_pad` (PyTorch's default)
    /// every window's sum is divided by `kernel[0]·kernel[1]`; without, by the number of
    /// input (non-padding) elements in the window.
    ///
    /// # Errors
    /// [`ConvError::ZeroSize`] for a zero size or stride;
    /// [`ConvError::PaddingTooLarge`] when a padding exceeds half its kernel;
    /// [`ConvError::KernelTooLarge`] when the window exceeds the padded input;
    /// [`ConvError::TooLarge`] when a buffer size overflows or exceeds `isize::MAX` bytes.
    pub fn new(spec: Pool2dSpec, count_include_pad: bool) -> Result<AvgPool2d, ConvError> {
        let geo = PoolGeometry::new(&spec)?;
        Ok(AvgPool2d {
            spec,
            geo,
            count_include_pad,
        })
    }

    /// The spec this plan was built from.
    pub fn spec(&self) -> &Pool2dSpec {
        &self.spec
    }

    /// Whether padding counts in each window's divisor.
    pub fn count_include_pad(&self) -> bool {
        self.count_include_pad
    }

    /// Input dimensions `[N, C, H, W]`.
    pub fn input_dims(&self) -> [usize; 4] {
        self.geo.input_dims()
    }

    /// Output dimensions `[N, C, P, Q]`.
    pub fn output_dims(&self) -> [usize; 4] {
        self.geo.output_dims()
    }

    /// Forward pass: `y[p, q]` = the window's sum divided by its divisor.
    ///
    /// - `x`: input, `N·C·H·W`;
    /// - `y`: output, `N·C·P·Q`, overwritten.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length.
    pub fn forward<T: Element>(&self, x: &[T], y: &mut [T]) -> Result<(), ConvError> {
        let geo = &self.geo;
        geo.check_x("x", x.len())?;
        geo.check_y("y", y.len())?;
        y.par_chunks_exact_mut(geo.out_plane)
            .zip(x.par_chunks_exact(geo.in_plane))
            .for_each(|(y, x)| {
                y.fill(T::ZERO);
                for_each_tap(geo, |x_index, y_index| y[y_index] += x[x_index]);
                for (i, v) in y.iter_mut().enumerate() {
                    *v = *v / self.divisor(i);
                }
            });
        Ok(())
    }

    /// Backward pass: `dx` is zeroed, then each `dy[p, q]` divided by its window's divisor
    /// is added to every input of the window.
    ///
    /// - `dy`: gradient with respect to `y`, `N·C·P·Q`;
    /// - `dx`: `N·C·H·W`, overwritten.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length.
    pub fn backward<T: Element>(&self, dy: &[T], dx: &mut [T]) -> Result<(), ConvError> {
        let geo = &self.geo;
        geo.check_y("dy", dy.len())?;
        geo.check_x("dx", dx.len())?;
        dx.par_chunks_exact_mut(geo.in_plane)
            .zip(dy.par_chunks_exact(geo.out_plane))
            .for_each_init(
                || vec![T::ZERO; geo.out_plane],
                |share, (dx, dy)| {
                    for (i, (s, &g)) in share.iter_mut().zip(dy).enumerate() {
                        *s = g / self.divisor(i);
                    }
                    dx.fill(T::ZERO);
                    for_each_tap(geo, |x_index, y_index| dx[x_index] += share[y_index]);
                },
            );
        Ok(())
    }

    /// The divisor of the window of output `i = p·Q + q` in its plane.
    fn divisor<T: Element>(&self, i: usize) -> T {
        let (h, w) = (&self.geo.h, &self.geo.w);
        let count = if self.count_include_pad {
            h.kernel * w.kernel
        } else {
            let (p, q) = (i / w.output, i % w.output);
            PoolGeometry::window_count(h, p) * PoolGeometry::window_count(w, q)
        };
        // Rounds only for windows of more than 2^24 (f32) or 2^53 (f64) elements.
        T::from_f64(count as f64)
    }
}

/// Calls `f(x_index, y_index)` for every (input, output) pair of one plane where the input
/// lies in the output's window (padding skipped), kernel tap by kernel tap in row-major
/// order, so each output sees its window's inputs in row-major order.
#[inline(always)]
fn for_each_tap(geo: &PoolGeometry, mut f: impl FnMut(usize, usize)) {
    let (h, w) = (&geo.h, &geo.w);
    for i in 0..h.kernel {
        let (p_lo, p_hi) = h.valid_outputs(i);
        for j in 0..w.kernel {
            let (q_lo, q_hi) = w.valid_outputs(j);
            for p in p_lo..p_hi {
                let x_row = h.input_index(p, i) * w.input;
                let y_row = p * w.output;
                for q in q_lo..q_hi {
                    f(x_row + w.input_index(q, j), y_row + q);
                }
            }
        }
    }
}

/// Max pooling of one plane: `x` is `H·W`, `y` and `argmax` are `P·Q`.
fn max_forward_plane<T: Element>(geo: &PoolGeometry, x: &[T], y: &mut [T], argmax: &mut [u32]) {
    let (h, w) = (&geo.h, &geo.w);
    // Start every window at −∞ with its first input element as argmax (PyTorch's start),
    // so a window of −∞ inputs reports that element.
    for p in 0..h.output {
        let first_h = (p * h.stride).saturating_sub(h.padding);
        for q in 0..w.output {
            let first_w = (q * w.stride).saturating_sub(w.padding);
            y[p * w.output + q] = T::NEG_INFINITY;
            // Validation keeps H·W <= 2^32, so every index fits a u32.
            argmax[p * w.output + q] = (first_h * w.input + first_w) as u32;
        }
    }
    // Strictly greater: the first maximum in window order stays. NaN != NaN marks a NaN,
    // which replaces a number but not an earlier NaN.
    #[allow(clippy::eq_op)]
    let is_nan = |v: T| v != v;
    for_each_tap(geo, |x_index, y_index| {
        let (v, best) = (x[x_index], y[y_index]);
        if v > best || (is_nan(v) && !is_nan(best)) {
            y[y_index] = v;
            argmax[y_index] = x_index as u32;
        }
    });
}
