//! # convgemm
//!
//! CPU 2-D convolution that trains: forward, input delta and weight gradient, lowered to
//! im2col plus a cache-blocked GEMM, parallel with rayon, checked against a naive
//! reference. Semantics are PyTorch's `conv2d` (cross-correlation, stride, padding,
//! dilation, groups) and its gradients.
//!
//! For input `x` (`N·C·H·W`), weights `W` (`K·(C/groups)·R·S`) and output `y`
//! (`N·K·P·Q`), per image and group:
//!
//! - forward: `col = im2col(x)`, `y = W · col + b`;
//! - input delta: `dcol = Wᵀ · dy`, `dx = col2im(dcol)` (a scatter-add of the
//!   overlapping windows);
//! - weight gradient: `dW = Σ_images dy · colᵀ`, `db = Σ dy`.
//!
//! ```
//! use convgemm::{Conv2d, Conv2dSpec, reference};
//! let spec = Conv2dSpec { batch: 1, in_channels: 2, in_h: 5, in_w: 5, out_channels: 3,
//!     kernel: [3, 3], stride: [2, 2], padding: [1, 1], ..Default::default() };
//! let conv = Conv2d::new(spec)?;
//! let x: Vec<f64> = (0..50).map(|i| i as f64).collect();
//! let w: Vec<f64> = (0..54).map(|i| (i % 7) as f64 - 3.0).collect();
//! let mut y = vec![0.0; conv.output_dims().iter().product()];
//! conv.forward(&x, &w, None, &mut y)?;
//! let mut y_ref = vec![0.0; y.len()];
//! reference::conv2d_forward(&spec, &x, &w, None, &mut y_ref)?;
//! assert_eq!(y, y_ref); // small integers: every sum is exact
//! # Ok::<(), convgemm::ConvError>(())
//! ```
//!
//! ## Modules, in the order the algorithm reads
//! - [`Conv2dSpec`] and the shape rules (`shape`), validated once into a [`Conv2d`] plan;
//! - `im2col` / `col2im` (the lowering), the GEMM wrapper (`gemm`), the work split
//!   (`tiling`);
//! - the three passes (`conv`);
//! - the rest of the backward chain (`delta_l = upsample(col2im(W_{l+1}ᵀ · delta_{l+1}))
//!   ⊙ f'(a_l)`): [`MaxPool2d`] / [`AvgPool2d`] (`pool`), [`Activation`] (`activation`)
//!   and the fully connected [`Linear`] (`linear`);
//! - [`reference`](mod@reference): naive loops, the ground truth;
//! - [`ConvError`]: every failure, never a panic.
#![warn(missing_docs)]

mod activation;
mod blocked;
mod conv;
mod depthwise;
mod element;
mod error;
mod gemm;
mod im2col;
mod linear;
#[cfg(feature = "ndarray")]
pub mod ndarray;
mod parallel;
mod pool;
pub mod reference;
mod scratch;
mod shape;
mod simd;
mod tiling;

pub use activation::Activation;
pub use conv::{Conv2d, Pass, Workspace};
pub use element::Element;
pub use error::ConvError;
pub use linear::Linear;
pub use pool::{AvgPool2d, MaxPool2d, Pool2dSpec};
pub use shape::Conv2dSpec;
pub use simd::isa_name;

#[doc(hidden)]
pub use blocked::testing as __blocked_testing;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
