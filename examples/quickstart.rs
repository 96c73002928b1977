//! The crate's main job in one run: a ResNet-sized 3×3 convolution layer (8 images of
//! 64×56×56, 64 filters, padding 1), its three passes timed, and each checked against the
//! naive reference.
//!
//! `cargo run --release --example quickstart`

use std::time::Instant;

use convgemm::{Conv2d, Conv2dSpec, ConvError, reference};

/// SplitMix64 noise in [-1, 1).
fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Median wall time of `runs` calls, in milliseconds.
fn time_ms(runs: usize, mut f: impl FnMut() -> Result<(), ConvError>) -> Result<f64, ConvError> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[runs / 2])
}

/// Largest |a − b| relative to the largest |b|.
fn max_rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    err / scale.max(f64::MIN_POSITIVE)
}

fn main() -> Result<(), ConvError> {
    let spec = Conv2dSpec {
        batch: 8,
        in_channels: 64,
        in_h: 56,
        in_w: 56,
        out_channels: 64,
        kernel: [3, 3],
        padding: [1, 1],
        ..Default::default()
    };
    let conv = Conv2d::new(spec)?;
    let [n, c, h, w] = conv.input_dims();
    let [_, k, p, q] = conv.output_dims();
    println!(
        "layer: x {n}×{c}×{h}×{w}, w {k}×{c}×3×3, y {n}×{k}×{p}×{q}, f32, {} rayon threads",
        rayon::current_num_threads()
    );

    let x = noise(n * c * h * w, 1);
    let weights = noise(conv.weight_dims().iter().product(), 2);
    let bias = noise(k, 3);
    let dy = noise(n * k * p * q, 4);
    let mut y = vec![0.0f32; dy.len()];
    let mut dx = vec![0.0f32; x.len()];
    let mut dw = vec![0.0f32; weights.len()];
    let mut db = vec![0.0f32; k];

    let gflop = conv.flops() as f64 * 1e-9;
    let t_fwd = time_ms(7, || conv.forward(&x, &weights, Some(&bias), &mut y))?;
    let t_bwd_data = time_ms(7, || conv.backward_data(&dy, &weights, &mut dx))?;
    let t_bwd_weights = time_ms(7, || conv.backward_weights(&x, &dy, &mut dw, Some(&mut db)))?;

    println!("checking against the naive reference (a few seconds)...");
    let mut y_ref = vec![0.0f32; y.len()];
    let mut dx_ref = vec![0.0f32; x.len()];
    let mut dw_ref = vec![0.0f32; dw.len()];
    let mut db_ref = vec![0.0f32; k];
    reference::conv2d_forward(&spec, &x, &weights, Some(&bias), &mut y_ref)?;
    reference::conv2d_backward_data(&spec, &dy, &weights, &mut dx_ref)?;
    reference::conv2d_backward_weights(&spec, &x, &dy, &mut dw_ref, Some(&mut db_ref))?;

    // f32 sums of L = 576 (forward, input delta) or N·P·Q = 25088 (weight gradient) terms:
    // the error bound grows like L·ε relative to the terms' magnitude; 1e-4 relative to
    // the largest output is far above what a correct kernel shows (~1e-6) and far below a
    // wrong one.
    let checks = [
        ("forward", max_rel_err(&y, &y_ref), t_fwd),
        ("backward_data", max_rel_err(&dx, &dx_ref), t_bwd_data),
        (
            "backward_weights",
            max_rel_err(&dw, &dw_ref).max(max_rel_err(&db, &db_ref)),
            t_bwd_weights,
        ),
    ];
    println!(
        "{:<17} {:>10} {:>9} {:>16}",
        "pass", "time ms", "GFLOP/s", "max rel error"
    );
    let mut ok = true;
    for (name, err, ms) in checks {
        let pass = err <= 1e-4;
        ok &= pass;
        println!(
            "{name:<17} {ms:>10.2} {:>9.1} {err:>16.2e} {}",
            gflop / (ms * 1e-3),
            if pass { "ok" } else { "FAILED" }
        );
    }
    if ok {
        println!("all three passes match the reference");
        Ok(())
    } else {
        eprintln!("a pass does not match the reference");
        std::process::exit(1)
    }
}
