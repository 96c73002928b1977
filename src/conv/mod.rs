//! The convolution plan [`Conv2d`] and its three passes.
//!
//! | pass | math | module |
//! |---|---|---|
//! | forward | `y = W · im2col(x) + b` | [`forward`] |
//! | input delta | `dx = col2im(Wᵀ · dy)` | [`backward_data`] |
//! | weight gradient | `dW = Σ_n dy · im2col(x)ᵀ`, `db = Σ dy` | [`backward_weights`] |
//!
//! One GEMM per image, group and pixel tile, with the crate's cache-blocked GEMM
//! ([`crate::blocked`]; matrixmultiply on the portable path). Two kinds of layer go
//! direct instead: depthwise layers ([`crate::depthwise`], all passes) and the weight
//! gradient of layers with few taps ([`small_filter`]).

mod backward_data;
mod backward_weights;
mod forward;
mod small_filter;

use crate::activation::Activation;
use crate::depthwise;
use crate::element::Element;
use crate::error::ConvError;
use crate::shape::{Conv2dSpec, ConvGeometry};

/// One of the three passes of a convolution layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// [`Conv2d::forward`].
    Forward,
    /// [`Conv2d::backward_data`].
    BackwardData,
    /// [`Conv2d::backward_weights`].
    BackwardWeights,
}

/// The scratch memory one call of a pass allocates (see [`Conv2d::workspace`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workspace {
    /// Bytes of scratch each worker task holds: the im2col / col2im tile (about 1 MiB; 0
    /// for pointwise layers and where im2col is fused into the GEMM's packing) plus a
    /// zero-padded or phase-split copy of the image's (or channel block's) input planes,
    /// or of the input delta being accumulated, where the pass uses one. Each thread keeps its buffer for the next call.
    pub column_bytes_per_task: usize,
    /// Bytes of the weight-gradient partial sums ([`Pass::BackwardWeights`] only): one
    /// `dw` plus `db` per image chunk, at most 4.
    pub partial_bytes: usize,
    /// Bytes of the weights packed once per call for the GEMM (forward and input delta of
    /// batched, ungrouped layers on the SIMD paths): about the size of `w`; twice that
    /// where the input delta runs as a transposed forward (the flipped filters, then their
    /// packed copy). For a single image's input delta (ungrouped, SIMD paths) it is
    /// instead `dy`, packed once for its threads, at most 2 MiB. The calling thread keeps
    /// the buffers for the next call.
    pub packed_weight_bytes: usize,
}

/// A validated 2-D convolution plan: build it once per layer shape, call its passes many
/// times.
///
/// `Conv2d` is `Send + Sync` and cheap to share (a few dozen words, no buffers). Each call
/// checks only the lengths of the buffers it is given; everything else was validated by
/// [`Conv2d::new`]. Calls run in the caller's rayon pool (the global one unless the caller
/// installs another) and allocate only bounded per-task buffers: about 1 MiB of column
/// tile, or a zero-padded copy of one image's input planes (of a channel block's, for the
/// weight gradient), per task, plus, held by the calling thread, up to 4 weight-sized
/// partial sums for the weight gradient or one packed copy of the weights (or of a single
/// image's `dy`) for the other passes (see [`Conv2d::workspace`]). Results are
/// bit-identical whatever the number of threads.
///
/// ```
/// use convgemm::{Conv2d, Conv2dSpec};
/// let conv = Conv2d::new(Conv2dSpec { batch: 2, in_channels: 3, in_h: 8, in_w: 8,
///     out_channels: 4, kernel: [3, 3], padding: [1, 1], ..Default::default() })?;
/// let [n, k, p, q] = conv.output_dims();
/// let x = vec![1.0f32; 2 * 3 * 8 * 8];
/// let w = vec![0.5f32; conv.weight_dims().iter().product()];
/// let mut y = vec![0.0f32; n * k * p * q];
/// conv.forward(&x, &w, None, &mut y)?;
/// assert_eq!(y[(0 * k + 0) * p * q + 1 * q + 1], 0.5 * 27.0); // an interior pixel: 3·3·3 taps
/// # Ok::<(), convgemm::ConvError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Conv2d {
    spec: Conv2dSpec,
    geo: ConvGeometry,
    algorithm: Algorithm,
}

/// How a plan computes its passes; chosen once, in [`Conv2d::new`], by [`Algorithm::choose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    /// im2col (or the input itself, for pointwise layers) plus a GEMM; the weight
    /// gradient of layers with few taps by direct dot products ([`small_filter`]).
    Gemm,
    /// Direct per-plane kernels ([`crate::depthwise`]).
    Depthwise,
}

impl Algorithm {
    /// Depthwise layers (one input channel per group, several groups) go direct: their
    /// GEMMs would have a single row per group and nothing to block; unless their padding
    /// is far larger than the planes ([`depthwise::padding_is_moderate`]). Everything else,
    /// including `groups = 1` layers with one input channel, is a GEMM with at least `K`
    /// rows.
    fn choose(geo: &ConvGeometry) -> Algorithm {
        if geo.channels_per_group == 1 && geo.groups > 1 && depthwise::padding_is_moderate(geo) {
            Algorithm::Depthwise
        } else {
            Algorithm::Gemm
        }
    }
}

impl Conv2d {
    /// Validates `spec` and builds the plan.
    ///
    /// # Errors
    /// [`ConvError::ZeroSize`] for a zero size, stride, dilation or groups;
    /// [`ConvError::GroupsMismatch`] when groups does not divide both channel counts;
    /// [`ConvError::KernelTooLarge`] when the dilated kernel exceeds the padded input;
    /// [`ConvError::TooLarge`] when a buffer size overflows or exceeds `isize::MAX` bytes.
    pub fn new(spec: Conv2dSpec) -> Result<Conv2d, ConvError> {
        let geo = ConvGeometry::new(&spec)?;
        Ok(Conv2d {
            spec,
            geo,
            algorithm: Algorithm::choose(&geo),
        })
    }

    /// The spec this plan was built from.
    pub fn spec(&self) -> &Conv2dSpec {
        &self.spec
    }

    /// Output dimensions `[N, K, P, Q]`.
    pub fn output_dims(&self) -> [usize; 4] {
        [
            self.geo.batch,
            self.geo.out_channels,
            self.geo.h.output,
            self.geo.w.output,
        ]
    }

    /// Weight dimensions `[K, C / groups, R, S]`.
    pub fn weight_dims(&self) -> [usize; 4] {
        [
            self.geo.out_channels,
            self.geo.channels_per_group,
            self.geo.h.kernel,
            self.geo.w.kernel,
        ]
    }

    /// Input dimensions `[N, C, H, W]`.
    pub fn input_dims(&self) -> [usize; 4] {
        [
            self.geo.batch,
            self.geo.in_channels,
            self.geo.h.input,
            self.geo.w.input,
        ]
    }

    /// Floating-point operations of one pass, `2·N·K·(C/groups)·R·S·P·Q` (the same count
    /// for all three passes; bias excluded).
    pub fn flops(&self) -> u64 {
        self.geo.flops()
    }

    /// The scratch memory one call of `pass` allocates with element type `T`.
    pub fn workspace<T: Element>(&self, pass: Pass) -> Workspace {
        let elem = size_of::<T>();
        if self.algorithm == Algorithm::Depthwise {
            return Workspace {
                column_bytes_per_task: depthwise::scratch_len(&self.geo, pass).saturating_mul(elem),
                partial_bytes: 0,
                packed_weight_bytes: 0,
            };
        }
        let (col, partials, packed) = match pass {
            Pass::Forward => {
                let (task, call) = forward::scratch_lens::<T>(&self.geo);
                (task, 0, call)
            }
            Pass::BackwardData => {
                let (task, call) = backward_data::scratch_lens::<T>(&self.geo);
                (task, 0, call)
            }
            Pass::BackwardWeights if small_filter::applies(&self.geo, elem) => (
                small_filter::scratch_len(&self.geo, elem),
                small_filter::partial_len(&self.geo),
                0,
            ),
            Pass::BackwardWeights => (
                backward_weights::column_buffer_len(&self.geo, elem)
                    + backward_weights::phased_len(&self.geo, elem),
                backward_weights::partial_len(&self.geo, elem),
                0,
            ),
        };
        Workspace {
            // Validation bounds these products; saturating keeps that a local fact.
            column_bytes_per_task: col.saturating_mul(elem),
            partial_bytes: partials.saturating_mul(elem),
            packed_weight_bytes: packed.saturating_mul(elem),
        }
    }

    /// Forward pass: `y = conv2d(x, w) + bias`.
    ///
    /// - `x`: input, `N·C·H·W`;
    /// - `w`: weights, `K·(C/groups)·R·S`;
    /// - `bias`: `K` values added to every pixel of each output channel, or `None`;
    /// - `y`: output, `N·K·P·Q`, overwritten.
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
        self.forward_activated(x, w, bias, Activation::Identity, y)
    }

    /// Forward pass with a fused epilogue: `y = f(conv2d(x, w) + bias)`.
    ///
    /// The bias and the activation `f` are applied to each output block right after its
    /// GEMM, while it is still in cache, so a conv + bias + relu layer writes its output
    /// once and never reads it back. Shapes as [`Conv2d::forward`]; for the backward pass,
    /// [`Activation::backward_in_place`] takes the `y` this call leaves.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length.
    pub fn forward_activated<T: Element>(
        &self,
        x: &[T],
        w: &[T],
        bias: Option<&[T]>,
        activation: Activation,
        y: &mut [T],
    ) -> Result<(), ConvError> {
        self.geo.check_x("x", x.len())?;
        self.geo.check_w("w", w.len())?;
        if let Some(b) = bias {
            self.geo.check_bias("bias", b.len())?;
        }
        self.geo.check_y("y", y.len())?;
        match self.algorithm {
            Algorithm::Gemm => forward::forward(&self.geo, x, w, bias, activation, y),
            Algorithm::Depthwise => depthwise::forward(&self.geo, x, w, bias, activation, y),
        }
        Ok(())
    }

    /// Input delta: `dx = col2im(Wᵀ · dy)`, the gradient of the loss with respect to `x`.
    ///
    /// - `dy`: gradient with respect to the output, `N·K·P·Q`;
    /// - `w`: weights, `K·(C/groups)·R·S`;
    /// - `dx`: `N·C·H·W`, overwritten.
    ///
    /// # Errors
    /// [`ConvError::BufferLength`] if a buffer has the wrong length.
    pub fn backward_data<T: Element>(
        &self,
        dy: &[T],
        w: &[T],
        dx: &mut [T],
    ) -> Result<(), ConvError> {
        self.geo.check_y("dy", dy.len())?;
        self.geo.check_w("w", w.len())?;
        self.geo.check_x("dx", dx.len())?;
        match self.algorithm {
            Algorithm::Gemm => backward_data::backward_data(&self.geo, dy, w, dx),
            Algorithm::Depthwise => depthwise::backward_data(&self.geo, dy, w, dx),
        }
        Ok(())
    }

    /// Weight gradient: `dw = Σ_n dy · im2col(x)ᵀ` and, if given, `db = Σ_{n,p,q} dy`.
    ///
    /// - `x`: input, `N·C·H·W`;
    /// - `dy`: gradient with respect to the output, `N·K·P·Q`;
    /// - `dw`: `K·(C/groups)·R·S`, overwritten;
    /// - `db`: `K`, overwritten, or `None`.
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
        self.geo.check_x("x", x.len())?;
        self.geo.check_y("dy", dy.len())?;
        self.geo.check_w("dw", dw.len())?;
        if let Some(b) = &db {
            self.geo.check_bias("db", b.len())?;
        }
        match self.algorithm {
            Algorithm::Gemm if small_filter::applies(&self.geo, size_of::<T>()) => {
                small_filter::backward_weights(&self.geo, x, dy, dw, db)
            }
            Algorithm::Gemm => backward_weights::backward_weights(&self.geo, x, dy, dw, db),
            Algorithm::Depthwise => depthwise::backward_weights(&self.geo, x, dy, dw, db),
        }
        Ok(())
    }
}
