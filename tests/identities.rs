//! Checks that pin the backward passes without the reference: adjoint identities, central
//! finite differences, and bit-identical results across rayon pools.

mod common;
use common::*;
use convgemm::{Conv2d, Conv2dSpec};

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn abs_dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum()
}

/// `<forward(x; w), dy> == <x, backward_data(dy; w)>` and
/// `<forward(x; w), dy> == <w, backward_weights(x, dy)>` (no bias), in f64.
///
/// Both sides are the same sum of `N·K·P·Q·(C/groups)·R·S` products regrouped, so they
/// agree to the rounding of that many terms: |lhs − rhs| ≤ 2·L·ε·Σ|terms| with L that
/// count and Σ|terms| bounded by `<|forward|(|x|;|w|), |dy|>`.
#[test]
fn adjoint_identities() {
    let mut cases: Vec<(String, Conv2dSpec)> = battery()
        .into_iter()
        .map(|c| (c.name.to_string(), c.spec))
        .collect();
    let mut rng = Rng::new(77);
    for i in 0..50 {
        cases.push((format!("random #{i}"), random_spec(&mut rng)));
    }
    for (name, spec) in cases {
        let conv = Conv2d::new(spec).unwrap();
        let (xl, wl, yl, _) = lens(&conv);
        let x: Vec<f64> = rng.floats(xl);
        let w: Vec<f64> = rng.floats(wl);
        let dy: Vec<f64> = rng.floats(yl);
        let mut y = vec![0.0; yl];
        let mut dx = vec![0.0; xl];
        let mut dw = vec![0.0; wl];
        conv.forward(&x, &w, None, &mut y).unwrap();
        conv.backward_data(&dy, &w, &mut dx).unwrap();
        conv.backward_weights(&x, &dy, &mut dw, None).unwrap();

        let xa: Vec<f64> = x.iter().map(|v| v.abs()).collect();
        let wa: Vec<f64> = w.iter().map(|v| v.abs()).collect();
        let mut y_abs = vec![0.0; yl];
        conv.forward(&xa, &wa, None, &mut y_abs).unwrap();
        let magnitude = abs_dot(&y_abs, &dy);
        let terms = (yl * wl / spec.out_channels) as f64;
        let tol = 2.0 * terms * f64::EPSILON * magnitude;

        let lhs = dot(&y, &dy);
        let rhs_data = dot(&x, &dx);
        let rhs_weights = dot(&w, &dw);
        assert!(
            (lhs - rhs_data).abs() <= tol,
            "{name}: <Ax, dy> {lhs} vs <x, Aᵀdy> {rhs_data} (tol {tol:e})"
        );
        assert!(
            (lhs - rhs_weights).abs() <= tol,
            "{name}: <Ax, dy> {lhs} vs <w, dW> {rhs_weights} (tol {tol:e})"
        );
    }
}

/// Central finite differences of `L(x, w, b) = <forward(x; w) + b, g>` for every input,
/// weight and bias element of small f64 cases.
///
/// `L` is linear in each variable, so the central difference has no truncation error; the
/// remaining error is cancellation: about `ε·|L|_terms / h` with h = 1e-3, i.e. ≲ 1e-10
/// relative for these sizes. We require 1e-8 relative to the gradient's scale.
#[test]
fn finite_differences() {
    let one = [1, 1];
    let cases = [
        spec(2, 3, [5, 6], 2, [3, 3], one, one, one, 1),
        spec(1, 4, [6, 5], 4, [3, 2], [2, 1], [1, 0], [1, 2], 2),
        spec(2, 2, [1, 9], 3, [1, 3], [1, 2], [0, 2], [1, 2], 1),
        spec(1, 3, [4, 4], 3, [3, 3], one, one, one, 3),
    ];
    let mut rng = Rng::new(5);
    for s in cases {
        let conv = Conv2d::new(s).unwrap();
        let (xl, wl, yl, kl) = lens(&conv);
        let x: Vec<f64> = rng.floats(xl);
        let w: Vec<f64> = rng.floats(wl);
        let b: Vec<f64> = rng.floats(kl);
        let g: Vec<f64> = rng.floats(yl);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; yl];
            conv.forward(x, w, Some(b), &mut y).unwrap();
            dot(&y, &g)
        };
        let mut dx = vec![0.0; xl];
        let mut dw = vec![0.0; wl];
        let mut db = vec![0.0; kl];
        conv.backward_data(&g, &w, &mut dx).unwrap();
        conv.backward_weights(&x, &g, &mut dw, Some(&mut db))
            .unwrap();

        let h = 1e-3;
        let check = |what: &str, analytic: &[f64], perturb: &dyn Fn(usize, f64) -> f64| {
            let scale = analytic.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, a) in analytic.iter().enumerate() {
                let numeric = (perturb(i, h) - perturb(i, -h)) / (2.0 * h);
                assert!(
                    (numeric - a).abs() <= 1e-8 * scale,
                    "{s:?} {what}[{i}]: numeric {numeric} vs analytic {a}"
                );
            }
        };
        check("dx", &dx, &|i, d| {
            let mut xp = x.clone();
            xp[i] += d;
            loss(&xp, &w, &b)
        });
        check("dw", &dw, &|i, d| {
            let mut wp = w.clone();
            wp[i] += d;
            loss(&x, &wp, &b)
        });
        check("db", &db, &|i, d| {
            let mut bp = b.clone();
            bp[i] += d;
            loss(&x, &w, &bp)
        });
    }
}

/// Every pass gives the same bits in rayon pools of 1, 2 and 5 threads (random data, so
/// any change of summation order would show).
#[test]
fn bit_identical_across_thread_counts() {
    let mut cases: Vec<Conv2dSpec> = battery().into_iter().map(|c| c.spec).collect();
    let one = [1, 1];
    cases.push(spec(1, 64, [30, 30], 16, [3, 3], one, one, one, 1)); // one image, many tiles
    cases.push(spec(3, 64, [28, 28], 8, [3, 3], [2, 2], one, one, 1)); // partials from tiles
    cases.push(spec(1, 256, [7, 7], 32, [1, 1], one, [0, 0], one, 1)); // pointwise, one image
    // Images left over after an even split, each split across the threads (7 = 3·2 + 1 =
    // 5 + 2); 14.7 MFLOP per image, above the forward's size floor for that route.
    cases.push(spec(7, 64, [20, 20], 32, [3, 3], one, one, one, 1));
    // The same route for input deltas that are not a transposed forward: strided (phase
    // planes), unpadded 5 × 5 (col2im in place), pointwise.
    cases.push(spec(7, 64, [29, 29], 96, [3, 3], [2, 2], one, one, 1));
    cases.push(spec(7, 32, [24, 24], 64, [5, 5], one, [0, 0], one, 1));
    cases.push(spec(7, 256, [14, 14], 128, [1, 1], one, [0, 0], one, 1));
    for (i, s) in cases.iter().enumerate() {
        let conv = Conv2d::new(*s).unwrap();
        let (xl, wl, yl, kl) = lens(&conv);
        let mut rng = Rng::new(900 + i as u64);
        let x: Vec<f32> = rng.floats(xl);
        let w: Vec<f32> = rng.floats(wl);
        let b: Vec<f32> = rng.floats(kl);
        let dy: Vec<f32> = rng.floats(yl);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut y = vec![0.0f32; yl];
                let mut dx = vec![0.0f32; xl];
                let mut dw = vec![0.0f32; wl];
                let mut db = vec![0.0f32; kl];
                conv.forward(&x, &w, Some(&b), &mut y).unwrap();
                conv.backward_data(&dy, &w, &mut dx).unwrap();
                conv.backward_weights(&x, &dy, &mut dw, Some(&mut db))
                    .unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
                (bits(&y), bits(&dx), bits(&dw), bits(&db))
            })
        };
        let base = run(1);
        for threads in [2, 5] {
            assert!(
                run(threads) == base,
                "{s:?}: results differ between 1 and {threads} threads"
            );
        }
    }
}

/// The forward of a batch gives, image for image, the bits of a batch-1 call on that
/// image (bias and a ReLU fused): the batched paths (in-place wide columns, packing from
/// padded planes, column tiles) and the single-image paths (output channels split across
/// threads) do each output's arithmetic identically. The batched forward relies on this
/// when it hands the images left over after an even split across the threads to the
/// single-image path. The batch runs on one thread, so every image takes a batched path.
#[test]
fn forward_per_image_bits_equal_the_batch() {
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let one = [1, 1];
    let mut cases: Vec<Conv2dSpec> = battery().into_iter().map(|c| c.spec).collect();
    cases.push(spec(3, 64, [28, 28], 64, [3, 3], one, one, one, 1)); // wide path
    cases.push(spec(3, 128, [14, 14], 128, [3, 3], one, one, one, 1)); // padded planes
    cases.push(spec(3, 32, [29, 29], 48, [3, 3], [2, 2], one, one, 1)); // strided
    cases.push(spec(3, 64, [20, 20], 32, [3, 3], one, [2, 2], [2, 2], 1)); // dilated
    cases.push(spec(3, 64, [16, 16], 64, [3, 3], one, one, one, 4)); // grouped
    cases.push(spec(3, 96, [14, 14], 80, [1, 1], one, [0, 0], one, 1)); // pointwise
    cases.push(spec(3, 3, [40, 40], 16, [7, 7], [2, 2], [3, 3], one, 1)); // stem-like
    cases.push(spec(3, 16, [1, 300], 24, [1, 9], one, [0, 4], one, 1)); // audio-like
    for (i, s) in cases.iter().enumerate() {
        let conv = Conv2d::new(*s).unwrap();
        let single = Conv2d::new(Conv2dSpec { batch: 1, ..*s }).unwrap();
        let (xl, wl, yl, kl) = lens(&conv);
        let n = s.batch;
        let mut rng = Rng::new(4400 + i as u64);
        let x: Vec<f32> = rng.floats(xl);
        let w: Vec<f32> = rng.floats(wl);
        let b: Vec<f32> = rng.floats(kl);
        let act = convgemm::Activation::Relu;
        let mut y = vec![0.0f32; yl];
        one_thread.install(|| {
            conv.forward_activated(&x, &w, Some(&b), act, &mut y)
                .unwrap()
        });
        let (x_image, y_image) = (xl / n, yl / n);
        for img in 0..n {
            let mut y1 = vec![0.0f32; y_image];
            let x1 = &x[img * x_image..][..x_image];
            single
                .forward_activated(x1, &w, Some(&b), act, &mut y1)
                .unwrap();
            let batched = &y[img * y_image..][..y_image];
            let same = batched
                .iter()
                .zip(&y1)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{s:?}: image {img} differs from its batch-1 forward");
        }
    }
}
