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
mod direct_forward;
mod forward;
mod pixel_tiles;
mod small_filter;

pub use direct_forward::DirectKernel;

use crate::activation::Activation;
use crate::depthwise;
use crate::element::Element;
use crate::error::ConvError;
use crate::scratch::{Slot, take_from};
use crate::shape::{Conv2dSpec, ConvGeometry};
use crate::simd::add_assign;

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

/// How a gradient pass stores its result: over the caller's buffer, or added to it.
///
/// `Accumulate` adds the finished gradient `g` of each element to the value already there,
/// `d = d + g`, with `g` computed exactly as for `Overwrite`: the bits are those of an
/// overwriting call into a spare buffer followed by an element-wise add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// `d = g`.
    Overwrite,
    /// `d = d + g`.
    Accumulate,
}

/// Elements an accumulating call reduces at a time on the stack (see [`Write::sum_into`]).
const SUM_BLOCK: usize = 64;

impl Write {
    /// Stores the finished gradient `g` of one element into `d`.
    #[inline(always)]
    pub(crate) fn put<T: Element>(self, d: &mut T, g: T) {
        *d = match self {
            Write::Overwrite => g,
            Write::Accumulate => *d + g,
        };
    }

    /// Stores `g` element by element into `dst` (equal lengths).
    pub(crate) fn put_all<T: Element>(self, dst: &mut [T], g: &[T]) {
        debug_assert_eq!(dst.len(), g.len());
        match self {
            Write::Overwrite => dst.copy_from_slice(g),
            Write::Accumulate => add_assign(dst, g),
        }
    }

    /// Runs `compute` on a buffer of `dst.len()` elements that it overwrites with the
    /// finished result `g`, and stores `g` into `dst`: overwriting hands it `dst` itself;
    /// accumulating, a scratch buffer this thread keeps ([`Slot::Delta`]), added to `dst`
    /// right after, while it is still in cache.
    pub(crate) fn into<T: Element>(self, dst: &mut [T], compute: impl FnOnce(&mut [T])) {
        match self {
            Write::Overwrite => compute(dst),
            Write::Accumulate => {
                if size_of_val(dst) <= PREFETCH_BYTES {
                    prefetch(dst);
                }
                let mut g = take_from::<T>(Slot::Delta, dst.len());
                compute(&mut g);
                add_assign(dst, &g);
            }
        }
    }

    /// Stores into `dst` the fixed-order sum `part(0) + part(1) + … + part(count − 1)`
    /// (element-wise, left to right; each part at least `dst.len()` long, `count ≥ 1`).
    ///
    /// Overwriting sums in place in `dst`; accumulating sums blocks of [`SUM_BLOCK`]
    /// elements on the stack first, so each element's sum has the same bits either way.
    pub(crate) fn sum_into<'a, T: Element + 'a>(
        self,
        dst: &mut [T],
        count: usize,
        part: impl Fn(usize) -> &'a [T],
    ) {
        match self {
            Write::Overwrite => {
                dst.copy_from_slice(&part(0)[..dst.len()]);
                for c in 1..count {
                    for (d, &p) in dst.iter_mut().zip(part(c)) {
                        *d += p;
                    }
                }
            }
            Write::Accumulate => {
                let mut acc = [T::ZERO; SUM_BLOCK];
                for (i, dst) in dst.chunks_mut(SUM_BLOCK).enumerate() {
                    let acc = &mut acc[..dst.len()];
                    acc.copy_from_slice(&part(0)[i * SUM_BLOCK..][..dst.len()]);
                    for c in 1..count {
                        for (a, &p) in acc.iter_mut().zip(&part(c)[i * SUM_BLOCK..]) {
                            *a += p;
                        }
                    }
                    for (d, &a) in dst.iter_mut().zip(&*acc) {
                        *d += a;
                    }
                }
            }
        }
    }
}

/// Largest result [`Write::into`] prefetches before computing it: a few planes' worth,
/// well inside L1. A short result is added back right after it is computed, and the
/// loads of `dst` would otherwise wait on memory at the start of every run (the hardware
/// prefetcher needs a longer stream); a larger one streams. The depthwise input delta's
/// general path, 28 × 28 planes: the add measured 1.10× faster with the prefetch.
const PREFETCH_BYTES: usize = 16 << 10;

/// Starts fetching `v` into the cache, up to [`PREFETCH_BYTES`] of it.
#[inline]
pub(crate) fn prefetch<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = v.as_ptr().cast::<i8>();
        for offset in (0..size_of_val(v).min(PREFETCH_BYTES)).step_by(64) {
            // SAFETY: SSE is part of x86-64; a prefetch only hints at an address (in
            // bounds here) and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
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
    /// im2col (or the input itself, for pointwise layers) plus a GEMM; the forward of
    /// short reductions by register tiles ([`direct_forward`]) and the weight gradient of
    /// layers with few taps by direct dot products ([`small_filter`]).
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
        self.input_delta(dy, w, dx, Write::Overwrite)
    }

    /// Input delta, added to `dx`: `dx += col2im(Wᵀ · dy)`.
    ///
    /// For a layer whose input feeds several branches (a residual connection, a layer
    /// shared across time steps): each branch adds its delta into one buffer. Shapes as
    /// [`Conv2d::backward_data`]. Each element of `dx` becomes `dx + g`, where `g` has the
    /// bits `backward_data` would write: the same as calling it into a spare buffer and
    /// adding, without that buffer. Each task computes its part of the delta (one image,
    /// a channel block of one, or a plane) into a scratch buffer its thread keeps, and
    /// adds it to `dx` while it is still in cache; where the input delta runs as a
    /// transposed forward (stride 1, at least 16 channels per group), the calling thread
    /// keeps one for `max(2, threads)` images instead. So the memory beyond
    /// [`Conv2d::workspace`] is at most one image's `dx` per thread, or that many images.
    /// It costs 0–8 % over `backward_data` on the suite's GEMM layers, 10 % on the
    /// depthwise one (reading the old `dx` is most of it; BENCHMARKS.md).
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
        self.geo.check_y("dy", dy.len())?;
        self.geo.check_w("w", w.len())?;
        self.geo.check_x("dx", dx.len())?;
        match self.algorithm {
            Algorithm::Gemm => backward_data::backward_data(&self.geo, dy, w, dx, write),
            Algorithm::Depthwise => depthwise::backward_data(&self.geo, dy, w, dx, write),
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
        self.weight_gradient(x, dy, dw, db, Write::Overwrite)
    }

    /// Weight gradient, added to `dw` (and `db`): `dw += Σ_n dy · im2col(x)ᵀ`,
    /// `db += Σ_{n,p,q} dy`.
    ///
    /// For gradient accumulation: several batches (micro-batches of one large batch, or
    /// the time steps of a shared layer) add into one gradient before the optimizer step.
    /// Shapes as [`Conv2d::backward_weights`]. Each element becomes `dw + g`, where `g`
    /// has the bits `backward_weights` would write: the same as calling it into a spare
    /// buffer and adding, without that buffer or the extra pass: the add happens where
    /// the pass writes its final sums (where that write is a transpose, through one
    /// `dw`-sized scratch buffer the calling thread keeps). Same speed as
    /// `backward_weights` on the suite (0.98–1.01, BENCHMARKS.md).
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
        self.geo.check_x("x", x.len())?;
        self.geo.check_y("dy", dy.len())?;
        self.geo.check_w("dw", dw.len())?;
        if let Some(b) = &db {
            self.geo.check_bias("db", b.len())?;
        }
        let geo = &self.geo;
        match self.algorithm {
            Algorithm::Gemm if small_filter::applies(geo, size_of::<T>()) => {
                small_filter::backward_weights(geo, x, dy, dw, db, write)
            }
            Algorithm::Gemm => backward_weights::backward_weights(geo, x, dy, dw, db, write),
            Algorithm::Depthwise => depthwise::backward_weights(geo, x, dy, dw, db, write),
        }
        Ok(())
    }
}
