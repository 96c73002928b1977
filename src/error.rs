//! The one error type of the crate.
//!
//! Every public entry point validates its inputs and returns a [`ConvError`] instead of
//! panicking. Each message names the offending field or buffer, the value it had and
//! what was expected, so a caller can fix the call without reading this crate's source.

use std::fmt;

/// What was wrong with a spec or a call.
///
/// The enum is `#[non_exhaustive]`: new checks may add variants. Match on the variants you
/// handle and keep a wildcard arm; the [`Display`](fmt::Display) text is the message meant
/// for people.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConvError {
    /// A size field that must be at least 1 is 0 (batch, channels, input size, kernel,
    /// stride, dilation or groups).
    ZeroSize {
        /// The spec field, e.g. `"stride[0]"`.
        field: &'static str,
    },
    /// `groups` does not divide `in_channels` or `out_channels`.
    GroupsMismatch {
        /// The spec's `groups`.
        groups: usize,
        /// The spec's `in_channels`.
        in_channels: usize,
        /// The spec's `out_channels` (for pooling, equal to `in_channels`).
        out_channels: usize,
    },
    /// The (dilated) kernel does not fit into the padded input along one axis, so the
    /// output would be empty.
    KernelTooLarge {
        /// `"height"` or `"width"`.
        axis: &'static str,
        /// Kernel extent after dilation: `dilation · (kernel − 1) + 1`.
        kernel_extent: usize,
        /// Input extent after padding: `input + 2 · padding`.
        padded_input: usize,
    },
    /// A padding is larger than a pooling layer allows (at most half the kernel).
    PaddingTooLarge {
        /// `"height"` or `"width"`.
        axis: &'static str,
        /// The padding given.
        padding: usize,
        /// The kernel size along the same axis.
        kernel: usize,
    },
    /// A size computed from the spec does not fit in `usize`, or a buffer of that many
    /// elements could not exist (more than `isize::MAX` bytes).
    TooLarge {
        /// What was being computed, with the factors, e.g. `"x: N 4 × C 3 × H 2^40 × W 2^40"`.
        what: String,
    },
    /// A buffer passed to a call has the wrong number of elements.
    BufferLength {
        /// The parameter name, e.g. `"w"`.
        buffer: &'static str,
        /// The length that was passed.
        actual: usize,
        /// The length the plan requires.
        expected: usize,
        /// How `expected` is made up, e.g. `"K 64 × C/groups 1 × R 3 × S 3"`.
        formula: String,
    },
    /// A max-pooling input plane has more positions than a `u32` argmax can index
    /// (`H·W > 2^32`).
    PlaneTooLarge {
        /// Input height `H`.
        in_h: usize,
        /// Input width `W`.
        in_w: usize,
    },
    /// A value inside a buffer is invalid for the call (for example a max-pool index that
    /// points outside its input plane).
    InvalidValue {
        /// What was wrong, with the position and the allowed range.
        what: String,
    },
    /// An array passed to an `ndarray` function has the wrong shape for the spec.
    ArrayShape {
        /// The parameter name, e.g. `"x"`.
        array: &'static str,
        /// The shape that was passed.
        actual: Vec<usize>,
        /// The shape the spec requires.
        expected: Vec<usize>,
        /// The names of the axes, e.g. `"[N, C, H, W]"`.
        axes: &'static str,
    },
    /// An array passed to an `ndarray` function is not in standard layout (contiguous,
    /// row-major, positive strides), so it cannot be used as a slice without a copy.
    NotStandardLayout {
        /// The parameter name, e.g. `"x"`.
        array: &'static str,
        /// The array's shape.
        shape: Vec<usize>,
        /// The array's strides, in elements.
        strides: Vec<isize>,
        /// The strides of the standard layout for that shape.
        expected_strides: Vec<isize>,
    },
}

impl fmt::Display for ConvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvError::ZeroSize { field } => {
                write!(
                    f,
                    "{field} is 0; every size, stride, dilation and groups must be at least 1"
                )
            }
            ConvError::GroupsMismatch {
                groups,
                in_channels,
                out_channels,
            } => write!(
                f,
                "groups {groups} must divide both in_channels {in_channels} and out_channels {out_channels}"
            ),
            ConvError::KernelTooLarge {
                axis,
                kernel_extent,
                padded_input,
            } => write!(
                f,
                "kernel {axis} with dilation spans {kernel_extent} but the padded input {axis} is only {padded_input}; \
                 expected dilation × (kernel − 1) + 1 <= input + 2 × padding"
            ),
            ConvError::PaddingTooLarge {
                axis,
                padding,
                kernel,
            } => write!(
                f,
                "padding {axis} {padding} is more than half the kernel {axis} {kernel}; expected padding <= kernel / 2"
            ),
            ConvError::TooLarge { what } => {
                write!(
                    f,
                    "{what} does not fit in memory (overflows usize or exceeds isize::MAX bytes)"
                )
            }
            ConvError::BufferLength {
                buffer,
                actual,
                expected,
                formula,
            } => {
                write!(
                    f,
                    "{buffer} has {actual} elements, expected {expected} = {formula}"
                )
            }
            ConvError::PlaneTooLarge { in_h, in_w } => write!(
                f,
                "input plane H {in_h} × W {in_w} has more positions than a u32 argmax can index; \
                 expected H × W <= 2^32"
            ),
            ConvError::InvalidValue { what } => write!(f, "{what}"),
            ConvError::ArrayShape {
                array,
                actual,
                expected,
                axes,
            } => write!(
                f,
                "{array} has shape {actual:?}, expected {expected:?} = {axes} of the spec"
            ),
            ConvError::NotStandardLayout {
                array,
                shape,
                strides,
                expected_strides,
            } => write!(
                f,
                "{array} with shape {shape:?} has strides {strides:?}, expected {expected_strides:?} \
                 (standard layout: contiguous row-major; `.as_standard_layout()` copies into it)"
            ),
        }
    }
}

impl std::error::Error for ConvError {}

/// Checks that `buffer` has exactly `expected` elements.
pub(crate) fn check_len(
    buffer: &'static str,
    actual: usize,
    expected: usize,
    formula: impl FnOnce() -> String,
) -> Result<(), ConvError> {
    if actual == expected {
        Ok(())
    } else {
        Err(ConvError::BufferLength {
            buffer,
            actual,
            expected,
            formula: formula(),
        })
    }
}
