//! A downstream user of convgemm: a two-layer convolutional network written only against
//! convgemm's public API and its `ndarray` feature, the way an ML crate would use it.
//!
//! `x [N, 2, 9, 9] → conv1 (3×3, pad 1, 4 filters) → ReLU → conv2 (3×3, stride 2, pad 1,
//! 2 groups, 2 filters) → y [N, 2, 5, 5]`, loss `½·Σ (y − target)²`.
//!
//! The tests check the gradients against finite differences, that a few SGD steps learn,
//! that gradients accumulated over micro-batches add up, that the network can be shared
//! across threads, and that every documented error case of the public API is an `Err`,
//! never a panic.

use convgemm::ndarray::{
    conv2d, conv2d_backward_data, conv2d_backward_weights_accumulate, conv2d_backward_weights_into,
};
use convgemm::{Conv2d, Conv2dSpec, ConvError, Element, Pass, Workspace};
use ndarray::{Array1, Array4, ArrayView4, Zip};

// Compile-time check: the plan and every other public type can be shared across threads,
// and the error fits `Box<dyn Error + Send + Sync>` (as `anyhow` and `?` need).
const _: () = {
    const fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Conv2d>();
    send_sync::<Conv2dSpec>();
    send_sync::<Pass>();
    send_sync::<Workspace>();
    send_sync::<ConvError>();
};
#[allow(dead_code)]
fn error_boxes(e: ConvError) -> Box<dyn std::error::Error + Send + Sync + 'static> {
    Box::new(e)
}

/// The network's parameters: weights `[K, C/groups, R, S]` and biases `[K]` per layer.
#[derive(Clone, Debug)]
pub struct TwoLayerNet<T> {
    /// Layer 1: 2 → 4 channels, 3×3, padding 1.
    pub conv1: Conv2dSpec,
    /// Layer 2: 4 → 2 channels, 3×3, stride 2, padding 1, 2 groups.
    pub conv2: Conv2dSpec,
    /// Layer 1 weights, `[4, 2, 3, 3]`.
    pub w1: Array4<T>,
    /// Layer 1 bias, `[4]`.
    pub b1: Array1<T>,
    /// Layer 2 weights, `[2, 2, 3, 3]`.
    pub w2: Array4<T>,
    /// Layer 2 bias, `[2]`.
    pub b2: Array1<T>,
}

/// The gradients of the loss, shaped like the parameters.
#[derive(Clone, Debug)]
pub struct Grads<T> {
    /// `∂L/∂w1`.
    pub dw1: Array4<T>,
    /// `∂L/∂b1`.
    pub db1: Array1<T>,
    /// `∂L/∂w2`.
    pub dw2: Array4<T>,
    /// `∂L/∂b2`.
    pub db2: Array1<T>,
}

/// The activations of one forward pass.
#[derive(Clone, Debug)]
pub struct Activations<T> {
    /// Layer 1 before the ReLU, `[N, 4, 9, 9]`.
    pub pre: Array4<T>,
    /// Layer 1 after the ReLU, `[N, 4, 9, 9]`.
    pub h: Array4<T>,
    /// The output, `[N, 2, 5, 5]`.
    pub y: Array4<T>,
}

/// Deterministic pseudo-random values in `[-scale, scale)`.
pub fn lcg_array<T: Element>(dims: [usize; 4], seed: u64, scale: f64) -> Array4<T> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Array4::from_shape_simple_fn(dims, || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        T::from_f64(((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale)
    })
}

impl<T: Element> TwoLayerNet<T> {
    /// A network for batches of `batch` images of `2 × 9 × 9`.
    pub fn new(batch: usize) -> Result<Self, ConvError> {
        let conv1 = Conv2dSpec {
            batch,
            in_channels: 2,
            in_h: 9,
            in_w: 9,
            out_channels: 4,
            kernel: [3, 3],
            padding: [1, 1],
            ..Default::default()
        };
        let conv2 = Conv2dSpec {
            batch,
            in_channels: 4,
            in_h: 9,
            in_w: 9,
            out_channels: 2,
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            groups: 2,
            ..Default::default()
        };
        // The plan tells the parameter shapes.
        let (p1, p2) = (Conv2d::new(conv1)?, Conv2d::new(conv2)?);
        Ok(TwoLayerNet {
            conv1,
            conv2,
            w1: lcg_array(p1.weight_dims(), 1, 1.0 / 18f64.sqrt()),
            b1: Array1::from_elem(4, T::from_f64(0.1)),
            w2: lcg_array(p2.weight_dims(), 2, 1.0 / 18f64.sqrt()),
            b2: Array1::from_elem(2, T::ZERO),
        })
    }

    /// Forward pass, keeping what the backward pass needs.
    pub fn forward(&self, x: &ArrayView4<'_, T>) -> Result<Activations<T>, ConvError> {
        let pre = conv2d(x, &self.w1.view(), Some(self.b1.view()), &self.conv1)?;
        let h = pre.mapv(|v| v.max(T::ZERO));
        let y = conv2d(
            &h.view(),
            &self.w2.view(),
            Some(self.b2.view()),
            &self.conv2,
        )?;
        Ok(Activations { pre, h, y })
    }

    /// The loss `½·Σ (y − target)²`.
    pub fn loss(
        &self,
        x: &ArrayView4<'_, T>,
        target: &ArrayView4<'_, T>,
    ) -> Result<f64, ConvError> {
        let y = self.forward(x)?.y;
        Ok(half_squared_error(&y.view(), target))
    }

    /// Zero gradients, shaped like the parameters.
    pub fn zero_grads(&self) -> Grads<T> {
        Grads {
            dw1: Array4::from_elem(self.w1.raw_dim(), T::ZERO),
            db1: Array1::from_elem(self.b1.raw_dim(), T::ZERO),
            dw2: Array4::from_elem(self.w2.raw_dim(), T::ZERO),
            db2: Array1::from_elem(self.b2.raw_dim(), T::ZERO),
        }
    }

    /// The loss and its gradient with respect to every parameter (backpropagation).
    pub fn loss_and_grads(
        &self,
        x: &ArrayView4<'_, T>,
        target: &ArrayView4<'_, T>,
    ) -> Result<(f64, Grads<T>), ConvError> {
        let mut g = self.zero_grads();
        let loss = self.backward(x, target, &mut g, false)?;
        Ok((loss, g))
    }

    /// Adds this batch's gradient to `g` and returns its loss: gradient accumulation, for
    /// a batch processed as several micro-batches (each through a network built for the
    /// micro-batch size, with the same parameters) before one optimizer step.
    pub fn accumulate_grads(
        &self,
        x: &ArrayView4<'_, T>,
        target: &ArrayView4<'_, T>,
        g: &mut Grads<T>,
    ) -> Result<f64, ConvError> {
        self.backward(x, target, g, true)
    }

    fn backward(
        &self,
        x: &ArrayView4<'_, T>,
        target: &ArrayView4<'_, T>,
        g: &mut Grads<T>,
        accumulate: bool,
    ) -> Result<f64, ConvError> {
        let Activations { pre, h, y } = self.forward(x)?;
        let loss = half_squared_error(&y.view(), target);
        let mut dy = y;
        Zip::from(&mut dy).and(target).for_each(|d, &t| *d -= t);

        let weight_gradient = if accumulate {
            conv2d_backward_weights_accumulate
        } else {
            conv2d_backward_weights_into
        };
        let (h, dy) = (h.view(), dy.view());
        weight_gradient(
            &h,
            &dy,
            &self.conv2,
            g.dw2.view_mut(),
            Some(g.db2.view_mut()),
        )?;
        let mut dh = conv2d_backward_data(&dy, &self.w2.view(), &self.conv2)?;
        Zip::from(&mut dh).and(&pre).for_each(|d, &p| {
            if p <= T::ZERO {
                *d = T::ZERO;
            }
        });
        weight_gradient(
            x,
            &dh.view(),
            &self.conv1,
            g.dw1.view_mut(),
            Some(g.db1.view_mut()),
        )?;
        Ok(loss)
    }

    /// One SGD step: `θ ← θ − lr·∂L/∂θ`.
    pub fn sgd_step(&mut self, g: &Grads<T>, lr: T) {
        Zip::from(&mut self.w1)
            .and(&g.dw1)
            .for_each(|w, &d| *w -= lr * d);
        Zip::from(&mut self.b1)
            .and(&g.db1)
            .for_each(|w, &d| *w -= lr * d);
        Zip::from(&mut self.w2)
            .and(&g.dw2)
            .for_each(|w, &d| *w -= lr * d);
        Zip::from(&mut self.b2)
            .and(&g.db2)
            .for_each(|w, &d| *w -= lr * d);
    }
}

fn half_squared_error<T: Element>(y: &ArrayView4<'_, T>, target: &ArrayView4<'_, T>) -> f64 {
    Zip::from(y)
        .and(target)
        .fold(0.0, |acc, &a, &b| acc + 0.5 * (a - b).to_f64().powi(2))
}

#[cfg(test)]
mod tests;
