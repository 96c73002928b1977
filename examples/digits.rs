//! A two-convolution network trained on 8×8 handwritten digits, every layer from
//! convgemm's public API:
//!
//! ```text
//! x 1×8×8 → conv 3×3 (16, pad 1) → relu → max pool 2×2 → conv 3×3 (32, pad 1) → relu
//!         → max pool 2×2 → fc 128→64 → relu → fc 64→32 → relu → fc 32→10 → softmax
//! ```
//!
//! The backward pass is the delta rule layer by layer:
//! `delta_l = upsample(col2im(W_{l+1}ᵀ · delta_{l+1})) ⊙ f'(a_l)`, i.e.
//! `Conv2d::backward_data` (col2im of `Wᵀ · delta`), then `MaxPool2d::backward` (the
//! upsample), then `Activation::backward_in_place` (`⊙ f'`), then
//! `Conv2d::backward_weights` for the layer's own gradient.
//!
//! ```sh
//! cargo run --release --example digits
//! ```
//!
//! It prints a finite-difference check of the whole network's gradient (f64), then one
//! line per epoch (f32 training, Adam, fixed seed, fixed 80/20 train/test split), and the
//! final test accuracy last. The data (1797 images, UCI, CC BY 4.0) is embedded from
//! `data/digits.csv.gz`; see `data/README.md`.

use std::io::Read;
use std::time::Instant;

use convgemm::{Activation, Conv2d, Conv2dSpec, ConvError, Element, Linear, MaxPool2d, Pool2dSpec};

/// Pixels per image.
pub const PIXELS: usize = 64;
/// Digit classes.
pub const CLASSES: usize = 10;
/// The seed of the split, the initialization and the batch order.
pub const SEED: u64 = 2024;

/// The 1797 digits: `images` holds `n × 64` intensities scaled to [0, 1], row-major.
pub struct Dataset {
    pub images: Vec<f64>,
    pub labels: Vec<usize>,
}

/// Decompresses and parses the embedded CSV (64 pixel values 0..16, then the label).
pub fn load_digits() -> Result<Dataset, String> {
    let gz: &[u8] = include_bytes!("../data/digits.csv.gz");
    let mut csv = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut csv)
        .map_err(|e| format!("data/digits.csv.gz: {e}"))?;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (line_no, line) in csv.lines().enumerate() {
        let values: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("digits.csv line {}: {e}", line_no + 1))?;
        if values.len() != PIXELS + 1 || values[PIXELS] < 0.0 || values[PIXELS] > 9.0 {
            return Err(format!(
                "digits.csv line {}: expected 64 pixels and a label 0..9",
                line_no + 1
            ));
        }
        images.extend(values[..PIXELS].iter().map(|v| v / 16.0));
        labels.push(values[PIXELS] as usize);
    }
    Ok(Dataset { images, labels })
}

/// SplitMix64: a seeded generator, so every run sees the same split, weights and batches.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
    }
}

/// The fixed split: a seeded shuffle of all indices, the first 80% to train.
pub fn split(n: usize) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(SEED).shuffle(&mut order);
    let test = order.split_off(n * 4 / 5);
    (order, test)
}

/// The parameter tensors, in the order they sit in one flat vector: name, length, fan-in
/// (0 for biases).
pub const TENSORS: [(&str, usize, usize); 10] = [
    ("conv1.w", 16 * 9, 9),
    ("conv1.b", 16, 0),
    ("conv2.w", 32 * 16 * 9, 16 * 9),
    ("conv2.b", 32, 0),
    ("fc1.w", 64 * 128, 128),
    ("fc1.b", 64, 0),
    ("fc2.w", 32 * 64, 64),
    ("fc2.b", 32, 0),
    ("fc3.w", CLASSES * 32, 32),
    ("fc3.b", CLASSES, 0),
];

/// Total number of parameters.
pub fn param_count() -> usize {
    TENSORS.iter().map(|t| t.1).sum()
}

/// He-uniform weights (`±√(6 / fan_in)`), biases uniform in ±0.05 (non-zero, so no
/// pre-activation sits exactly on the ReLU kink over the blank background).
pub fn init_params<T: Element>(seed: u64) -> Vec<T> {
    let mut rng = Rng::new(seed);
    let mut p = Vec::with_capacity(param_count());
    for &(_, len, fan_in) in &TENSORS {
        let bound = if fan_in == 0 {
            0.05
        } else {
            (6.0 / fan_in as f64).sqrt()
        };
        p.extend((0..len).map(|_| T::from_f64(bound * rng.unit())));
    }
    p
}

/// The flat parameter vector cut into its tensors.
fn tensors<T>(mut v: &[T]) -> [&[T]; 10] {
    TENSORS.map(|(_, len, _)| {
        let (head, tail) = v.split_at(len);
        v = tail;
        head
    })
}

/// The flat gradient vector cut into its tensors.
fn tensors_mut<T>(mut v: &mut [T]) -> [&mut [T]; 10] {
    TENSORS.map(|(_, len, _)| {
        let (head, tail) = std::mem::take(&mut v).split_at_mut(len);
        v = tail;
        head
    })
}

/// The layer plans for one batch size and the buffers of one forward and backward pass.
/// Names follow the delta rule: `a*` are activations (after ReLU, in place), `p*` pooled
/// outputs, `d*` their gradients.
pub struct Net<T> {
    pub batch: usize,
    conv1: Conv2d,
    pool1: MaxPool2d,
    conv2: Conv2d,
    pool2: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    a1: Vec<T>,
    p1: Vec<T>,
    arg1: Vec<u32>,
    a2: Vec<T>,
    p2: Vec<T>,
    arg2: Vec<u32>,
    h1: Vec<T>,
    h2: Vec<T>,
    /// Logits after [`Net::forward`], their gradient after [`Net::loss`].
    z: Vec<T>,
    d_a1: Vec<T>,
    d_p1: Vec<T>,
    d_a2: Vec<T>,
    d_p2: Vec<T>,
    d_h1: Vec<T>,
    d_h2: Vec<T>,
}

impl<T: Element> Net<T> {
    pub fn new(batch: usize) -> Result<Net<T>, ConvError> {
        let conv = |c, k, hw| {
            Conv2d::new(Conv2dSpec {
                batch,
                in_channels: c,
                in_h: hw,
                in_w: hw,
                out_channels: k,
                kernel: [3, 3],
                padding: [1, 1],
                ..Default::default()
            })
        };
        let pool = |c, hw| {
            MaxPool2d::new(Pool2dSpec {
                batch,
                channels: c,
                in_h: hw,
                in_w: hw,
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0],
            })
        };
        let zeros = |n: usize| vec![T::ZERO; batch * n];
        Ok(Net {
            batch,
            conv1: conv(1, 16, 8)?,
            pool1: pool(16, 8)?,
            conv2: conv(16, 32, 4)?,
            pool2: pool(32, 4)?,
            fc1: Linear::new(batch, 128, 64)?,
            fc2: Linear::new(batch, 64, 32)?,
            fc3: Linear::new(batch, 32, CLASSES)?,
            a1: zeros(16 * 64),
            p1: zeros(16 * 16),
            arg1: vec![0; batch * 16 * 16],
            a2: zeros(32 * 16),
            p2: zeros(128),
            arg2: vec![0; batch * 128],
            h1: zeros(64),
            h2: zeros(32),
            z: zeros(CLASSES),
            d_a1: zeros(16 * 64),
            d_p1: zeros(16 * 16),
            d_a2: zeros(32 * 16),
            d_p2: zeros(128),
            d_h1: zeros(64),
            d_h2: zeros(32),
        })
    }

    /// Forward pass of `batch` images (`x`: `batch × 64`), leaving the logits in `self.z`.
    pub fn forward(&mut self, params: &[T], x: &[T]) -> Result<(), ConvError> {
        let relu = Activation::Relu;
        let [c1w, c1b, c2w, c2b, f1w, f1b, f2w, f2b, f3w, f3b] = tensors(params);
        self.conv1.forward(x, c1w, Some(c1b), &mut self.a1)?;
        relu.forward_in_place(&mut self.a1);
        self.pool1.forward(&self.a1, &mut self.p1, &mut self.arg1)?;
        self.conv2.forward(&self.p1, c2w, Some(c2b), &mut self.a2)?;
        relu.forward_in_place(&mut self.a2);
        self.pool2.forward(&self.a2, &mut self.p2, &mut self.arg2)?;
        // N·32·2·2 in NCHW is N rows of 128 features: the flatten is free.
        self.fc1.forward(&self.p2, f1w, Some(f1b), &mut self.h1)?;
        relu.forward_in_place(&mut self.h1);
        self.fc2.forward(&self.h1, f2w, Some(f2b), &mut self.h2)?;
        relu.forward_in_place(&mut self.h2);
        self.fc3.forward(&self.h2, f3w, Some(f3b), &mut self.z)
    }

    /// Mean softmax cross-entropy of the logits against `labels` (summed in f64) and the
    /// number of correct predictions; replaces the logits by the loss gradient
    /// `(softmax − onehot) / batch`.
    pub fn loss(&mut self, labels: &[usize]) -> (f64, usize) {
        let (mut loss, mut correct) = (0.0, 0);
        let scale = T::from_f64(1.0 / self.batch as f64);
        for (z, &label) in self.z.chunks_exact_mut(CLASSES).zip(labels) {
            let (best, max) =
                z.iter().enumerate().fold(
                    (0, z[0]),
                    |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                );
            correct += usize::from(best == label);
            // log-sum-exp with the maximum subtracted, so no exp overflows.
            let shifted_label = z[label] - max;
            let mut sum = T::ZERO;
            for v in z.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            loss += (sum.ln() - shifted_label).to_f64();
            for (i, v) in z.iter_mut().enumerate() {
                let onehot = if i == label { T::ONE } else { T::ZERO };
                *v = (*v / sum - onehot) * scale;
            }
        }
        (loss / self.batch as f64, correct)
    }

    /// Backward pass after [`Net::forward`] and [`Net::loss`] on the same `x`: writes the
    /// gradient of the mean loss with respect to every parameter into `grad`.
    pub fn backward(&mut self, params: &[T], x: &[T], grad: &mut [T]) -> Result<(), ConvError> {
        let relu = Activation::Relu;
        let [_, _, c2w, _, f1w, _, f2w, _, f3w, _] = tensors(params);
        let [
            g_c1w,
            g_c1b,
            g_c2w,
            g_c2b,
            g_f1w,
            g_f1b,
            g_f2w,
            g_f2b,
            g_f3w,
            g_f3b,
        ] = tensors_mut(grad);
        // Fully connected layers: delta = (Wᵀ · delta_next) ⊙ f'(a).
        self.fc3
            .backward_weights(&self.h2, &self.z, g_f3w, Some(g_f3b))?;
        self.fc3.backward_data(&self.z, f3w, &mut self.d_h2)?;
        relu.backward_in_place(&self.h2, &mut self.d_h2)?;
        self.fc2
            .backward_weights(&self.h1, &self.d_h2, g_f2w, Some(g_f2b))?;
        self.fc2.backward_data(&self.d_h2, f2w, &mut self.d_h1)?;
        relu.backward_in_place(&self.h1, &mut self.d_h1)?;
        self.fc1
            .backward_weights(&self.p2, &self.d_h1, g_f1w, Some(g_f1b))?;
        self.fc1.backward_data(&self.d_h1, f1w, &mut self.d_p2)?;
        // conv2: delta_2 = upsample(fc1 delta) ⊙ f'(a_2).
        self.pool2
            .backward(&self.d_p2, &self.arg2, &mut self.d_a2)?;
        relu.backward_in_place(&self.a2, &mut self.d_a2)?;
        self.conv2
            .backward_weights(&self.p1, &self.d_a2, g_c2w, Some(g_c2b))?;
        // conv1: delta_1 = upsample(col2im(W_2ᵀ · delta_2)) ⊙ f'(a_1).
        self.conv2.backward_data(&self.d_a2, c2w, &mut self.d_p1)?;
        self.pool1
            .backward(&self.d_p1, &self.arg1, &mut self.d_a1)?;
        relu.backward_in_place(&self.a1, &mut self.d_a1)?;
        self.conv1
            .backward_weights(x, &self.d_a1, g_c1w, Some(g_c1b))
    }
}

/// Adam (β₁ 0.9, β₂ 0.999, ε 1e-8) over the flat parameter vector.
pub struct Adam {
    lr: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    pub fn new(lr: f64, len: usize) -> Adam {
        Adam {
            lr,
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    pub fn step<T: Element>(&mut self, params: &mut [T], grad: &[T]) {
        let (b1, b2) = (0.9f64, 0.999f64);
        self.t += 1;
        let lr = self.lr * (1.0 - b2.powi(self.t)).sqrt() / (1.0 - b1.powi(self.t));
        for ((p, g), (m, v)) in params
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            let g = g.to_f64();
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= T::from_f64(lr * *m / (v.sqrt() + 1e-8));
        }
    }
}

/// Copies the images `indices` of `data` into `x` (`len × 64`) and their labels.
pub fn gather<T: Element>(
    data: &Dataset,
    indices: &[usize],
    x: &mut Vec<T>,
    labels: &mut Vec<usize>,
) {
    x.clear();
    labels.clear();
    for &i in indices {
        x.extend(
            data.images[i * PIXELS..(i + 1) * PIXELS]
                .iter()
                .map(|&v| T::from_f64(v)),
        );
        labels.push(data.labels[i]);
    }
}

/// One training step on the images `indices`: forward, loss, backward, Adam. Returns the
/// batch's mean loss.
pub fn train_step<T: Element>(
    net: &mut Net<T>,
    data: &Dataset,
    indices: &[usize],
    params: &mut [T],
    grad: &mut [T],
    adam: &mut Adam,
) -> Result<f64, ConvError> {
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    gather(data, indices, &mut x, &mut labels);
    net.forward(params, &x)?;
    let (loss, _) = net.loss(&labels);
    net.backward(params, &x, grad)?;
    adam.step(params, grad);
    Ok(loss)
}

/// Mean loss and accuracy over `indices`, in one batch of that size.
pub fn evaluate<T: Element>(
    net: &mut Net<T>,
    data: &Dataset,
    indices: &[usize],
    params: &[T],
) -> Result<(f64, usize), ConvError> {
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    gather(data, indices, &mut x, &mut labels);
    net.forward(params, &x)?;
    Ok(net.loss(&labels))
}

/// Central finite differences of the whole network's loss in f64, on `images`, for
/// `per_tensor` evenly spaced parameters of every tensor (all of a smaller one), from the
/// same initialization as training. Returns the largest relative error
/// `|g − fd| / max(|g|, |fd|, 1e-4)` and how many parameters were checked.
///
/// With step `h = 1e-5` the difference quotient carries a rounding error of about
/// `ε·|loss| / h ≈ 5e-11` and a truncation error of `h²/6` times the loss's third
/// derivative (about 1e-11 here); the 1e-4 floor keeps that absolute noise on near-zero
/// gradients from reading as a large relative error (at most 1e-6). A wrong index or a
/// missing term gives relative errors near 1.
pub fn gradient_check(
    data: &Dataset,
    images: &[usize],
    per_tensor: usize,
) -> Result<(f64, usize), ConvError> {
    let h = 1e-5;
    let mut params: Vec<f64> = init_params(SEED);
    let mut net = Net::<f64>::new(images.len())?;
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    gather(data, images, &mut x, &mut labels);
    let mut grad = vec![0.0; params.len()];
    net.forward(&params, &x)?;
    net.loss(&labels);
    net.backward(&params, &x, &mut grad)?;
    let (mut worst, mut checked, mut start) = (0.0f64, 0, 0);
    for &(_, len, _) in &TENSORS {
        let step = len.div_ceil(per_tensor);
        for i in (start..start + len).step_by(step) {
            let saved = params[i];
            params[i] = saved + h;
            net.forward(&params, &x)?;
            let plus = net.loss(&labels).0;
            params[i] = saved - h;
            net.forward(&params, &x)?;
            let minus = net.loss(&labels).0;
            params[i] = saved;
            let fd = (plus - minus) / (2.0 * h);
            let err = (grad[i] - fd).abs() / grad[i].abs().max(fd.abs()).max(1e-4);
            worst = worst.max(err);
            checked += 1;
        }
        start += len;
    }
    Ok((worst, checked))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const EPOCHS: usize = 15;
    const BATCH: usize = 32;
    const LR: f64 = 2e-3;
    let start = Instant::now();
    let data = load_digits()?;
    let (train, test) = split(data.labels.len());
    println!(
        "digits: {} images of 8×8, {} train / {} test (fixed split, seed {SEED})",
        data.labels.len(),
        train.len(),
        test.len()
    );
    println!(
        "network: conv 3×3 1→16, relu, max pool 2×2, conv 3×3 16→32, relu, max pool 2×2, \
         fc 128→64, relu, fc 64→32, relu, fc 32→10, softmax cross-entropy; {} parameters",
        param_count()
    );

    let (err, checked) = gradient_check(&data, &train[..4], 24)?;
    println!(
        "gradient check (f64, 4 images, {checked} parameters, central differences): \
         max relative error {err:.1e}"
    );
    if err.is_nan() || err > 1e-5 {
        return Err(format!("gradient check failed: relative error {err:e}").into());
    }

    let mut params: Vec<f32> = init_params(SEED);
    let mut grad = vec![0.0f32; params.len()];
    let mut adam = Adam::new(LR, params.len());
    let mut net = Net::<f32>::new(BATCH)?;
    let mut train_eval = Net::<f32>::new(train.len())?;
    let mut test_eval = Net::<f32>::new(test.len())?;
    let mut rng = Rng::new(SEED + 1);
    let mut order = train.clone();
    let batches = train.len() / BATCH; // the remainder waits for the next shuffle
    let (mut test_acc, mut test_correct) = (0.0, 0);
    for epoch in 1..=EPOCHS {
        let t0 = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for (b, indices) in order.chunks_exact(BATCH).enumerate() {
            loss_sum += train_step(&mut net, &data, indices, &mut params, &mut grad, &mut adam)?;
            let done = (b + 1) * 30 / batches;
            eprint!(
                "\r[{}{}] {}/{batches}",
                "#".repeat(done),
                ".".repeat(30 - done),
                b + 1
            );
        }
        eprint!("\r{:50}\r", "");
        let (_, train_correct) = evaluate(&mut train_eval, &data, &train, &params)?;
        test_correct = evaluate(&mut test_eval, &data, &test, &params)?.1;
        test_acc = 100.0 * test_correct as f64 / test.len() as f64;
        println!(
            "epoch {epoch:2}/{EPOCHS}  loss {:.4}  train {:6.2}%  test {test_acc:6.2}%  {:.2} s",
            loss_sum / batches as f64,
            100.0 * train_correct as f64 / train.len() as f64,
            t0.elapsed().as_secs_f64()
        );
    }
    println!(
        "final test accuracy: {test_acc:.2}% ({test_correct}/{} digits, {EPOCHS} epochs, {:.1} s in all)",
        test.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
