//! Times candle's CPU convolution (candle-core, f32, NCHW) on the layers of a suite file:
//! forward `conv2d`, and the input delta and weight gradient computed the way candle's
//! own backpropagation computes them (`backprop.rs`, `Op::Conv2D`): `conv_transpose2d` of
//! `dy` with the weights, and `conv2d` of `xᵀ` with `dyᵀ`. Grouped layers run per group,
//! as candle's grouped `conv2d` (chunk, convolve, concatenate) backpropagates.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --manifest-path benches/candle_peer/Cargo.toml \
//!     -- [--suite benches/suite.json] [--layers a,b] > candle.jsonl
//! ```
//!
//! candle's `conv2d` takes one padding for both axes: a layer padded differently per
//! axis (audio_1x9, `[0, 4]`) gets its input zero-padded first (`pad_with_zeros`), and
//! its input delta cropped after (`narrow`), both inside the timed call. Threads: candle
//! parallelizes with rayon's global pool, sized by `RAYON_NUM_THREADS`.
//!
//! One JSON line per layer and pass, in the format of the peers' `bench.py`: `impl`
//! "candle", `layer`, `pass`, `threads`, `ms` (median of at least 7 timed calls after
//! 2 warm-up calls, up to 40 or 0.4 s), `gflops` (`2·N·K·(C/groups)·R·S·P·Q` per pass,
//! as the suite defines it).

#[path = "../../peer_common/suite.rs"]
mod peer_suite;

use candle_core::{Device, Result, Tensor};
use peer_suite::Layer;
use std::time::Instant;

/// The three passes of one group's convolution, candle style. `x`: N × C/g × H × W,
/// `w`: K/g × C/g × R × S, `dy`: N × K/g × P × Q.
struct Passes<'a> {
    layer: &'a Layer,
}

impl Passes<'_> {
    /// Symmetric padding goes to candle; otherwise the input is padded explicitly.
    fn pad_arg(&self) -> usize {
        if self.layer.pad[0] == self.layer.pad[1] {
            self.layer.pad[0]
        } else {
            0
        }
    }

    fn padded(&self, x: &Tensor) -> Result<Tensor> {
        let [ph, pw] = self.layer.pad;
        if ph == pw {
            return Ok(x.clone());
        }
        x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)
    }

    fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let l = self.layer;
        self.padded(x)?
            .conv2d(w, self.pad_arg(), l.stride[0], l.dil[0], 1)
    }

    /// As candle's backprop: `conv_transpose2d` with the output padding that restores H.
    fn input_delta(&self, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
        let l = self.layer;
        let pad = self.pad_arg();
        let [p, _] = l.out();
        let full_h = l.h + 2 * (l.pad[0] - pad);
        let out_size = (p - 1) * l.stride[0] + l.dil[0] * (l.r - 1) + 1 - 2 * pad;
        let dx = dy.conv_transpose2d(w, pad, full_h - out_size, l.stride[0], l.dil[0])?;
        if pad == l.pad[0] && pad == l.pad[1] {
            return Ok(dx);
        }
        let (ph, pw) = (l.pad[0] - pad, l.pad[1] - pad);
        dx.narrow(2, ph, l.h)?.narrow(3, pw, l.w)
    }

    /// As candle's backprop: `(xᵀ ⋆ dyᵀ)ᵀ`, cut to R × S.
    fn weight_gradient(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let l = self.layer;
        let g = self
            .padded(x)?
            .transpose(0, 1)?
            .conv2d(
                &dy.transpose(0, 1)?,
                self.pad_arg(),
                l.dil[0],
                l.stride[0],
                1,
            )?
            .transpose(0, 1)?;
        let (_, _, gr, gs) = g.dims4()?;
        if gr != l.r || gs != l.s {
            return g.narrow(2, 0, l.r)?.narrow(3, 0, l.s);
        }
        Ok(g)
    }
}

/// `f(g)` for every group, concatenated along `dim` (one group: its result as is).
fn per_group(groups: usize, dim: usize, f: impl Fn(usize) -> Result<Tensor>) -> Result<Tensor> {
    if groups == 1 {
        return f(0);
    }
    let parts: Vec<Tensor> = (0..groups).map(f).collect::<Result<_>>()?;
    Tensor::cat(&parts, dim)
}

/// One timed pass.
type Pass<'a> = (&'static str, Box<dyn Fn() -> Result<()> + 'a>);

fn time(f: impl Fn() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let (mut runs, start) = (Vec::new(), Instant::now());
    while runs.len() < 7 || (runs.len() < 40 && start.elapsed().as_secs_f64() < 0.4) {
        let t = Instant::now();
        f()?;
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[runs.len() / 2])
}

fn run(layer: &Layer, threads: usize) -> Result<()> {
    let dev = Device::Cpu;
    let l = layer;
    let cg = l.c / l.groups;
    let [p, q] = l.out();
    let x = Tensor::randn(0f32, 1.0, (l.n, l.c, l.h, l.w), &dev)?;
    let w = Tensor::randn(0f32, 0.1, (l.k, cg, l.r, l.s), &dev)?;
    let dy = Tensor::randn(0f32, 1.0, (l.n, l.k, p, q), &dev)?;
    let passes = Passes { layer: l };
    // Per group, as candle's grouped conv2d and its backpropagation run.
    let xs = x.chunk(l.groups, 1)?;
    let ws = w.chunk(l.groups, 0)?;
    let dys = dy.chunk(l.groups, 1)?;
    let cases: [Pass; 3] = [
        (
            "fwd",
            Box::new(|| {
                let y = if l.groups == 1 || l.pad[0] == l.pad[1] {
                    passes.padded(&x)?.conv2d(
                        &w,
                        passes.pad_arg(),
                        l.stride[0],
                        l.dil[0],
                        l.groups,
                    )?
                } else {
                    per_group(l.groups, 1, |g| passes.forward(&xs[g], &ws[g]))?
                };
                assert_eq!(y.dims4()?, (l.n, l.k, p, q));
                Ok(())
            }),
        ),
        (
            "bwd_data",
            Box::new(|| {
                let dx = per_group(l.groups, 1, |g| passes.input_delta(&dys[g], &ws[g]))?;
                assert_eq!(dx.dims4()?, (l.n, l.c, l.h, l.w));
                Ok(())
            }),
        ),
        (
            "bwd_weight",
            Box::new(|| {
                let dw = per_group(l.groups, 0, |g| passes.weight_gradient(&xs[g], &dys[g]))?;
                assert_eq!(dw.dims4()?, (l.k, cg, l.r, l.s));
                // db, as the suite's bwd_weight includes it.
                dy.sum((0, 2, 3))?;
                Ok(())
            }),
        ),
    ];
    for (pass, f) in cases {
        let ms = time(f)?;
        println!(
            "{{\"impl\": \"candle\", \"layer\": \"{}\", \"pass\": \"{pass}\", \"threads\": {threads}, \"ms\": {ms:.4}, \"gflops\": {:.2}}}",
            l.name,
            l.flops() / ms / 1e6
        );
    }
    Ok(())
}

fn main() {
    let threads = candle_core::utils::get_num_threads();
    for layer in peer_suite::selected_layers() {
        if let Err(e) = run(&layer, threads) {
            eprintln!("{}: {e}", layer.name);
        }
    }
}
