//! Shape math and validation: [`Conv2dSpec`], the output size rule, and the derived
//! [`ConvGeometry`] that every pass reads.
//!
//! Validation happens once, when a plan is built. It rejects zero sizes, groups that do
//! not divide the channels, kernels that do not fit the padded input, and any size whose
//! product overflows `usize` or whose buffer could not exist (more than `isize::MAX`
//! bytes for the widest element type, `f64`), the passes' scratch buffers included. After
//! it, every index the passes compute is known to be in range, so the kernels can use
//! plain `usize` arithmetic.

use std::ops::Range;

use crate::error::ConvError;
use crate::tiling::{MIN_TILE_PIXELS, PARTIALS_BOUND_FACTOR};

/// The shape of a 2-D convolution, with PyTorch's `conv2d` semantics
/// (cross-correlation, symmetric zero padding, stride, dilation, groups).
///
/// Layouts: `x` is `N·C·H·W`, `w` is `K·(C/groups)·R·S`, `y` and `dy` are `N·K·P·Q`, all
/// contiguous row-major, where
/// `P = (H + 2·padding[0] − dilation[0]·(R − 1) − 1) / stride[0] + 1` and likewise `Q`
/// along the width.
///
/// ```
/// use convgemm::Conv2dSpec;
/// let spec = Conv2dSpec { batch: 8, in_channels: 64, in_h: 56, in_w: 56, out_channels: 64,
///     kernel: [3, 3], padding: [1, 1], ..Default::default() };
/// assert_eq!(spec.stride, [1, 1]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Batch size `N`.
    pub batch: usize,
    /// Input channels `C`.
    pub in_channels: usize,
    /// Input height `H`.
    pub in_h: usize,
    /// Input width `W`.
    pub in_w: usize,
    /// Output channels `K`.
    pub out_channels: usize,
    /// Kernel size `[R, S]` (height, width).
    pub kernel: [usize; 2],
    /// Stride `[height, width]`.
    pub stride: [usize; 2],
    /// Zeros added on both sides: `[top = bottom, left = right]`.
    pub padding: [usize; 2],
    /// Dilation `[height, width]` (1 = dense kernel).
    pub dilation: [usize; 2],
    /// Number of groups; must divide `in_channels` and `out_channels`.
    pub groups: usize,
}

impl Default for Conv2dSpec {
    /// All sizes 0 (to be filled in), stride `[1, 1]`, padding `[0, 0]`, dilation
    /// `[1, 1]`, groups 1.
    fn default() -> Self {
        Conv2dSpec {
            batch: 0,
            in_channels: 0,
            in_h: 0,
            in_w: 0,
            out_channels: 0,
            kernel: [0, 0],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

/// One spatial axis of a sliding-window operation (convolution or pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Axis {
    /// Input extent (H or W).
    pub input: usize,
    /// Kernel extent before dilation (R or S).
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    /// Output extent (P or Q).
    pub output: usize,
}

impl Axis {
    /// Validates one axis and computes its output size.
    pub(crate) fn new(
        name: &'static str,
        input: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Axis, ConvError> {
        let padded_input = padding
            .checked_mul(2)
            .and_then(|p| p.checked_add(input))
            .ok_or_else(|| ConvError::TooLarge {
                what: format!("padded input {name}: {input} + 2 × padding {padding}"),
            })?;
        let kernel_extent = (kernel - 1)
            .checked_mul(dilation)
            .and_then(|e| e.checked_add(1))
            .ok_or_else(|| ConvError::TooLarge {
                what: format!(
                    "dilated kernel {name}: dilation {dilation} × (kernel {kernel} − 1) + 1"
                ),
            })?;
        if kernel_extent > padded_input {
            return Err(ConvError::KernelTooLarge {
                axis: name,
                kernel_extent,
                padded_input,
            });
        }
        let output = (padded_input - kernel_extent) / stride + 1;
        Ok(Axis {
            input,
            kernel,
            stride,
            padding,
            dilation,
            output,
        })
    }

    /// The output positions `lo..hi` whose input index
    /// `o·stride + offset·dilation − padding` falls inside `0..input`, for kernel tap
    /// `offset`. Positions outside the range read padding.
    #[inline]
    pub(crate) fn valid_outputs(&self, offset: usize) -> (usize, usize) {
        let shift = offset * self.dilation; // <= padded_input - 1, no overflow
        let lo = if self.padding > shift {
            (self.padding - shift).div_ceil(self.stride)
        } else {
            0
        };
        let limit = self.input + self.padding; // <= padded_input
        let hi = if limit > shift {
            ((limit - shift - 1) / self.stride + 1).min(self.output)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// The kernel taps `lo..hi` whose input index `o·stride + tap·dilation − padding`
    /// falls inside `0..input` for output position `o < output`: a run, since the index
    /// grows with the tap. The taps outside it read padding (possibly all of them).
    #[inline]
    pub(crate) fn valid_taps(&self, o: usize) -> Range<usize> {
        // o·stride ≤ padded_input − 1 and padding ≤ padded_input: no overflow.
        let start = o * self.stride;
        let lo = if self.padding > start {
            (self.padding - start).div_ceil(self.dilation)
        } else {
            0
        };
        // tap·dilation < input + padding − start.
        let limit = self.input + self.padding;
        let hi = if limit > start {
            (limit - start).div_ceil(self.dilation).min(self.kernel)
        } else {
            0
        };
        lo.min(hi)..hi
    }

    /// Input index of output position `o` at kernel tap `offset`; only meaningful for `o`
    /// inside [`Axis::valid_outputs`].
    #[inline]
    pub(crate) fn input_index(&self, o: usize, offset: usize) -> usize {
        o * self.stride + offset * self.dilation - self.padding
    }
}

/// Multiplies named factors, failing with a message that lists them when the product
/// overflows or a buffer of that many `f64` could not exist.
pub(crate) fn checked_product(what: &str, factors: &[(&str, usize)]) -> Result<usize, ConvError> {
    let describe = || {
        let parts: Vec<String> = factors.iter().map(|(n, v)| format!("{n} {v}")).collect();
        format!("{what}: {}", parts.join(" × "))
    };
    let mut product: usize = 1;
    for &(_, v) in factors {
        product = product
            .checked_mul(v)
            .ok_or_else(|| ConvError::TooLarge { what: describe() })?;
    }
    if product > isize::MAX as usize / std::mem::size_of::<f64>() {
        return Err(ConvError::TooLarge { what: describe() });
    }
    Ok(product)
}

pub(crate) fn nonzero(field: &'static str, value: usize) -> Result<(), ConvError> {
    if value == 0 {
        Err(ConvError::ZeroSize { field })
    } else {
        Ok(())
    }
}

/// Everything a pass needs to know about a validated convolution, derived once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    /// `C / groups`.
    pub channels_per_group: usize,
    /// `K / groups`.
    pub filters_per_group: usize,
    /// Height axis (H, R, P).
    pub h: Axis,
    /// Width axis (W, S, Q).
    pub w: Axis,
    /// `H·W`: one input channel plane.
    pub in_plane: usize,
    /// `P·Q`: one output channel plane (the column count of the column matrix).
    pub out_plane: usize,
    /// `R·S`: taps per channel.
    pub taps: usize,
    /// `(C/groups)·R·S`: rows of the column matrix, the GEMM reduction length.
    pub col_rows: usize,
    /// `N·C·H·W`.
    pub x_len: usize,
    /// `K·(C/groups)·R·S`.
    pub w_len: usize,
    /// `N·K·P·Q`.
    pub y_len: usize,
}

impl ConvGeometry {
    pub(crate) fn new(spec: &Conv2dSpec) -> Result<ConvGeometry, ConvError> {
        nonzero("batch", spec.batch)?;
        nonzero("in_channels", spec.in_channels)?;
        nonzero("in_h", spec.in_h)?;
        nonzero("in_w", spec.in_w)?;
        nonzero("out_channels", spec.out_channels)?;
        nonzero("kernel[0]", spec.kernel[0])?;
        nonzero("kernel[1]", spec.kernel[1])?;
        nonzero("stride[0]", spec.stride[0])?;
        nonzero("stride[1]", spec.stride[1])?;
        nonzero("dilation[0]", spec.dilation[0])?;
        nonzero("dilation[1]", spec.dilation[1])?;
        nonzero("groups", spec.groups)?;
        if !spec.in_channels.is_multiple_of(spec.groups)
            || !spec.out_channels.is_multiple_of(spec.groups)
        {
            return Err(ConvError::GroupsMismatch {
                groups: spec.groups,
                in_channels: spec.in_channels,
                out_channels: spec.out_channels,
            });
        }
        let h = Axis::new(
            "height",
            spec.in_h,
            spec.kernel[0],
            spec.stride[0],
            spec.padding[0],
            spec.dilation[0],
        )?;
        let w = Axis::new(
            "width",
            spec.in_w,
            spec.kernel[1],
            spec.stride[1],
            spec.padding[1],
            spec.dilation[1],
        )?;
        let channels_per_group = spec.in_channels / spec.groups;
        let filters_per_group = spec.out_channels / spec.groups;
        let x_len = checked_product(
            "x",
            &[
                ("N", spec.batch),
                ("C", spec.in_channels),
                ("H", spec.in_h),
                ("W", spec.in_w),
            ],
        )?;
        let w_len = checked_product(
            "w",
            &[
                ("K", spec.out_channels),
                ("C/groups", channels_per_group),
                ("R", spec.kernel[0]),
                ("S", spec.kernel[1]),
            ],
        )?;
        let y_len = checked_product(
            "y",
            &[
                ("N", spec.batch),
                ("K", spec.out_channels),
                ("P", h.output),
                ("Q", w.output),
            ],
        )?;
        // Each factor below divides one of the products checked above, so none overflows.
        let taps = spec.kernel[0] * spec.kernel[1];
        // The scratch a pass allocates must be addressable too, so that
        // `Conv2d::workspace` can report it in bytes: column tiles of at least
        // MIN_TILE_PIXELS columns, and the weight-gradient partial sums.
        checked_product(
            "column tile",
            &[
                ("C/groups × R × S", channels_per_group * taps),
                ("pixels", MIN_TILE_PIXELS),
            ],
        )?;
        checked_product(
            "weight-gradient partial sums",
            &[
                ("partials bound", PARTIALS_BOUND_FACTOR),
                ("K·(C/groups)·R·S + K", w_len + spec.out_channels),
            ],
        )?;
        Ok(ConvGeometry {
            batch: spec.batch,
            in_channels: spec.in_channels,
            out_channels: spec.out_channels,
            groups: spec.groups,
            channels_per_group,
            filters_per_group,
            h,
            w,
            in_plane: spec.in_h * spec.in_w,
            out_plane: h.output * w.output,
            taps,
            col_rows: channels_per_group * taps,
            x_len,
            w_len,
            y_len,
        })
    }

    /// A 1×1 kernel with stride 1 and no padding: the input planes already are the
    /// column matrix, so no im2col is needed.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.taps == 1
            && self.h.stride == 1
            && self.w.stride == 1
            && self.h.padding == 0
            && self.w.padding == 0
    }
}

impl ConvGeometry {
    /// `x` must hold `N·C·H·W` elements.
    pub(crate) fn check_x(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        crate::error::check_len(buffer, len, self.x_len, || {
            format!(
                "N {} × C {} × H {} × W {}",
                self.batch, self.in_channels, self.h.input, self.w.input
            )
        })
    }

    /// `w` must hold `K·(C/groups)·R·S` elements.
    pub(crate) fn check_w(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        crate::error::check_len(buffer, len, self.w_len, || {
            format!(
                "K {} × C/groups {} × R {} × S {}",
                self.out_channels, self.channels_per_group, self.h.kernel, self.w.kernel
            )
        })
    }

    /// `y` must hold `N·K·P·Q` elements.
    pub(crate) fn check_y(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        crate::error::check_len(buffer, len, self.y_len, || {
            format!(
                "N {} × K {} × P {} × Q {}",
                self.batch, self.out_channels, self.h.output, self.w.output
            )
        })
    }

    /// A bias must hold `K` elements.
    pub(crate) fn check_bias(&self, buffer: &'static str, len: usize) -> Result<(), ConvError> {
        crate::error::check_len(buffer, len, self.out_channels, || {
            format!("K {}", self.out_channels)
        })
    }

    /// The same layer over `batch` images (at most this one's, so no length overflows).
    pub(crate) fn with_batch(&self, batch: usize) -> ConvGeometry {
        debug_assert!(batch <= self.batch);
        ConvGeometry {
            batch,
            x_len: batch * self.in_channels * self.in_plane,
            y_len: batch * self.out_channels * self.out_plane,
            ..*self
        }
    }

    /// FLOPs of one pass: `2·N·K·(C/groups)·R·S·P·Q` (saturating).
    pub(crate) fn flops(&self) -> u64 {
        [self.batch, self.out_channels, self.col_rows, self.out_plane]
            .iter()
            .fold(2u64, |acc, &v| acc.saturating_mul(v as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::Axis;

    /// `valid_taps` and `valid_outputs` against the input index itself, over every small
    /// axis (the taps that read padding are exactly those outside the range).
    #[test]
    fn valid_taps_and_outputs_match_the_input_index() {
        for input in 1..9 {
            for kernel in 1..5 {
                for stride in 1..4 {
                    for padding in 0..4 {
                        for dilation in 1..4 {
                            let Ok(axis) = Axis::new("h", input, kernel, stride, padding, dilation)
                            else {
                                continue;
                            };
                            let inside = |o: usize, t: usize| {
                                let i = (o * stride + t * dilation) as isize - padding as isize;
                                (0..input as isize).contains(&i)
                            };
                            for o in 0..axis.output {
                                let taps = axis.valid_taps(o);
                                for t in 0..kernel {
                                    assert_eq!(
                                        taps.contains(&t),
                                        inside(o, t),
                                        "{axis:?} o {o} t {t}"
                                    );
                                }
                            }
                            for t in 0..kernel {
                                let (lo, hi) = axis.valid_outputs(t);
                                for o in 0..axis.output {
                                    assert_eq!(
                                        (lo..hi).contains(&o),
                                        inside(o, t),
                                        "{axis:?} o {o} t {t}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
