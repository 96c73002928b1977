//! Times burn's CPU convolution (burn 0.22, NdArray backend, f32, NCHW) on the layers of a
//! suite file, the way a burn user runs it: forward `burn::tensor::module::conv2d` on an
//! NdArray device, and the input delta and weight gradient from burn's autodiff
//! (the same tensors, `.autodiff()`), by `backward()` on a loss whose gradient with respect
//! to the convolution's output is a fixed `dy`.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --manifest-path benches/burn_peer/Cargo.toml \
//!     -- [--suite benches/suite.json] [--layers a,b] > burn.jsonl
//! ```
//!
//! What each pass times:
//! - `fwd`: `conv2d(x, w, Some(b), ConvOptions::new(stride, pad, dil, groups))` on the plain
//!   (non-autodiff) NdArray device. NdArray is eager: the output is computed when `conv2d`
//!   returns (its SIMD kernel writes an NHWC buffer and returns it as a permuted NCHW view;
//!   no copy to contiguous NCHW is timed, as none is made).
//! - `bwd_data`: x requires grad, w and b do not. Untimed: `y = conv2d(x, w, Some(b), ..)`
//!   and `loss = (y * dy).sum()`, `dy` untracked. Timed: `loss.backward()` and
//!   `x.grad(&grads)`.
//! - `bwd_weight`: w and b require grad (db is part of the suite's `bwd_weight`), x does
//!   not. Timed: `loss.backward()`, `w.grad(&grads)` and `b.grad(&grads)`.
//!
//! burn's conv2d backward (burn-autodiff `Conv2DWithBias`) computes only the gradients of
//! the tracked inputs, so `bwd_data` does not include the weight gradient nor `bwd_weight`
//! the input delta. The forward is outside the timed region; the timed `backward()` also
//! runs the backward of `sum` and of `y * dy` (one elementwise product of the size of `y`,
//! small next to the convolution). The gradients come from burn-backend's defaults:
//! input delta = NdArray's `conv_transpose2d` (a scalar loop), weight gradient = NdArray's
//! `conv2d` of `xᵀ` with `dyᵀ` (per group when grouped), bias gradient = a sum. No pass
//! goes through a matrix product (burn-ndarray's convolutions are direct), so no BLAS or
//! matmul backend is involved.
//!
//! Threads: burn-ndarray's `multi-threads` feature (burn's `rayon` feature) runs its
//! kernels on rayon's global pool, sized by `RAYON_NUM_THREADS`.
//!
//! One JSON line per layer and pass, in the format of the peers' `bench.py`: `impl`
//! "burn", `layer`, `pass`, `threads`, `ms` (median of at least 7 timed calls after
//! 2 warm-up calls, up to 40 or 0.4 s; a pass whose first call takes over 1 s gets
//! 1 warm-up call and at least 3 timed calls; `reps` gives the count), `gflops`
//! (`2·N·K·(C/groups)·R·S·P·Q` per pass, as the suite defines it). A pass whose first
//! call takes over 60 s is not repeated: its line has `"gflops": null` and an `error`.
//! Before the first layer, one 31 MiB buffer is allocated and freed, so that glibc's malloc
//! serves every layer from its heap (see `prime_allocator`).

#![allow(deprecated)] // burn 0.22 marks the NdArray backend deprecated in favour of Flex.

#[path = "../../peer_common/suite.rs"]
mod peer_suite;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Distribution, Tensor};
use peer_suite::Layer;
use std::time::Instant;

impl Layer {
    /// burn's options: `pad` is per axis, the same on both sides of it.
    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new(self.stride, self.pad, self.dil, self.groups)
    }
}

/// A call slower than this is not repeated: the pass is reported as an error.
const GIVE_UP_MS: f64 = 60_000.0;
/// Calls slower than this get 1 warm-up call and at least 3 timed calls, not 2 and 7.
const SLOW_MS: f64 = 1_000.0;

/// Median of the timed region `f` returns (ms), and the number of timed calls; `Err` with
/// the first call's time if that took over [`GIVE_UP_MS`].
fn time(mut f: impl FnMut() -> f64) -> Result<(f64, usize), f64> {
    let first = f();
    if first > GIVE_UP_MS {
        return Err(first);
    }
    let (warmups, min_reps) = if first > SLOW_MS { (1, 3) } else { (2, 7) };
    for _ in 1..warmups {
        f();
    }
    let (mut runs, start) = (Vec::new(), Instant::now());
    while runs.len() < min_reps || (runs.len() < 40 && start.elapsed().as_secs_f64() < 0.4) {
        runs.push(f());
    }
    runs.sort_by(f64::total_cmp);
    Ok((runs[runs.len() / 2], runs.len()))
}

/// One pass: its name, and a call that returns the milliseconds of its timed region.
type Pass<'a> = (&'static str, Box<dyn FnMut() -> f64 + 'a>);

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn run(l: &Layer, threads: usize) {
    let cg = l.c / l.groups;
    let [p, q] = l.out();
    let plain = Device::ndarray();
    let normal = |sd| Distribution::Normal(0.0, sd);
    let x = Tensor::<4>::random([l.n, l.c, l.h, l.w], normal(1.0), &plain);
    let w = Tensor::<4>::random([l.k, cg, l.r, l.s], normal(0.1), &plain);
    let b = Tensor::<1>::random([l.k], normal(0.1), &plain);
    let dy = Tensor::<4>::random([l.n, l.k, p, q], normal(1.0), &plain);
    assert_eq!(x.dtype(), DType::F32);

    let fwd = || {
        let t = Instant::now();
        let y = conv2d(x.clone(), w.clone(), Some(b.clone()), l.options());
        let ms = ms_since(t);
        assert_eq!(y.dims(), [l.n, l.k, p, q]);
        ms
    };
    // The autodiff passes: `track` says which of x, w, b require grad; the forward and the
    // loss are built untimed, then `backward()` and the gradients' retrieval are timed.
    let backward = |track: [bool; 3]| {
        let leaf = |t: &Tensor<4>, on: bool| {
            let t = t.clone().autodiff();
            if on { t.require_grad() } else { t }
        };
        let (xa, wa) = (leaf(&x, track[0]), leaf(&w, track[1]));
        let ba = b.clone().autodiff();
        let ba = if track[2] { ba.require_grad() } else { ba };
        let dya = dy.clone().autodiff();
        move || {
            let y = conv2d(xa.clone(), wa.clone(), Some(ba.clone()), l.options());
            let loss = (y * dya.clone()).sum();
            let t = Instant::now();
            let grads = loss.backward();
            let dx = track[0].then(|| xa.grad(&grads).expect("dx"));
            let dw = track[1].then(|| wa.grad(&grads).expect("dw"));
            let db = track[2].then(|| ba.grad(&grads).expect("db"));
            let ms = ms_since(t);
            if let Some(dx) = dx {
                assert_eq!(dx.dims(), [l.n, l.c, l.h, l.w]);
            }
            if let Some(dw) = dw {
                assert_eq!(dw.dims(), [l.k, cg, l.r, l.s]);
            }
            if let Some(db) = db {
                assert_eq!(db.dims(), [l.k]);
            }
            ms
        }
    };
    let cases: [Pass; 3] = [
        ("fwd", Box::new(fwd)),
        ("bwd_data", Box::new(backward([true, false, false]))),
        ("bwd_weight", Box::new(backward([false, true, true]))),
    ];
    for (pass, f) in cases {
        let head = format!(
            "{{\"impl\": \"burn\", \"layer\": \"{}\", \"pass\": \"{pass}\", \"threads\": {threads}",
            l.name
        );
        match time(f) {
            Ok((ms, reps)) => println!(
                "{head}, \"ms\": {ms:.4}, \"gflops\": {:.2}, \"reps\": {reps}}}",
                l.flops() / ms / 1e6
            ),
            Err(ms) => println!(
                "{head}, \"ms\": {ms:.4}, \"gflops\": null, \"error\": \"first call over {} s, not repeated\"}}",
                GIVE_UP_MS / 1e3
            ),
        }
    }
}

/// Puts glibc's malloc in the state a long-running program reaches. Freeing a chunk that
/// was mmapped raises malloc's mmap threshold to its size (up to 32 MiB) and the heap trim
/// threshold to twice that; until then, every large tensor of a call is mmapped or the heap
/// trimmed and regrown, and page faults dominate small layers: mobilenet_dw's forward, run
/// first in a process, took 14 ms at 1 thread and 25 at 2 instead of 4–5 ms. Without this,
/// a layer's time would depend on which layers ran before it.
fn prime_allocator() {
    drop(std::hint::black_box(vec![0u8; 31 << 20]));
}

fn main() {
    prime_allocator();
    let threads = rayon::current_num_threads();
    for layer in peer_suite::selected_layers() {
        run(&layer, threads);
    }
}
