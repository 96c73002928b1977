//! The accumulating passes, `backward_data_accumulate` (`dx += delta`) and
//! `backward_weights_accumulate` (`dw += gradient`, `db += bias gradient`), against their
//! contract: each element becomes `old + g`, where `g` has exactly the bits the
//! overwriting pass writes. So the check is bit for bit against the overwriting pass
//! followed by an element-wise add, on random data (any change of summation order in `g`,
//! or an `old` folded into the sums, would show), on every path the passes take, in f32
//! and f64 and in rayon pools of 1, 2 and 3 threads.

mod common;
use common::*;
use convgemm::{Conv2d, Conv2dSpec, ConvError, Element};

/// The battery plus one layer for each route the two passes take on the SIMD paths
/// (named in the comments); on the scalar path the same shapes run its routes.
fn cases() -> Vec<(String, Conv2dSpec)> {
    let one = [1, 1];
    let zero = [0, 0];
    let mut cases: Vec<(String, Conv2dSpec)> = battery()
        .into_iter()
        .map(|c| (c.name.to_string(), c.spec))
        .collect();
    let mut add = |name: &str, s: Conv2dSpec| cases.push((name.to_string(), s));
    // Weight gradient: the wide form (tap rows read in place, partials transposed at the
    // end), with one image (channel blocks) and with four (one block per image chunk).
    add(
        "wide, one image",
        spec(1, 20, [30, 30], 24, [3, 3], one, one, one, 1),
    );
    add(
        "wide, four images",
        spec(4, 16, [20, 20], 40, [3, 3], one, one, one, 1),
    );
    // Weight gradient from padded planes (rows under 16 pixels), pixel-column tiles
    // (pointwise), grouped, and the direct dot products of few taps (C·R·S ≤ 32).
    add(
        "padded planes",
        spec(3, 32, [12, 12], 24, [3, 3], one, one, one, 1),
    );
    add(
        "pointwise",
        spec(3, 96, [14, 14], 80, [1, 1], one, zero, one, 1),
    );
    add(
        "grouped",
        spec(3, 64, [16, 16], 64, [3, 3], one, one, one, 4),
    );
    add(
        "few taps",
        spec(5, 3, [20, 20], 16, [3, 3], one, one, one, 1),
    );
    // Input delta: a transposed forward (stride 1, ≥ 16 channels), phase planes (strided),
    // col2im in place (unpadded), and images left over after an even split of the batch
    // (7 on 2 or 3 threads).
    add(
        "transposed forward",
        spec(7, 64, [20, 20], 32, [3, 3], one, one, one, 1),
    );
    add(
        "strided",
        spec(7, 64, [29, 29], 96, [3, 3], [2, 2], one, one, 1),
    );
    add(
        "unpadded 5x5",
        spec(7, 32, [24, 24], 64, [5, 5], one, zero, one, 1),
    );
    // Depthwise, unit stride and strided (the weight gradient's running totals).
    add(
        "depthwise",
        spec(3, 24, [17, 17], 24, [3, 3], one, one, one, 24),
    );
    add(
        "depthwise, strided",
        spec(3, 16, [21, 21], 32, [5, 5], [2, 2], [2, 2], one, 16),
    );
    // A transposed forward accumulates at least two images, one per thread, at a time:
    // 5 images are chunks of 2 + 2 + 1 on 1 and 2 threads (the last, a single image,
    // takes the forward's single-image route) and of 3 + 2 on 3 threads.
    add(
        "transposed, in chunks",
        spec(5, 128, [24, 24], 8, [3, 3], one, one, one, 1),
    );
    cases
}

fn bits<T: Element>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f64().to_bits()).collect()
}

fn check<T: Element>(name: &str, s: &Conv2dSpec, seed: u64) {
    let conv = Conv2d::new(*s).unwrap();
    let (xl, wl, yl, kl) = lens(&conv);
    let mut rng = Rng::new(seed);
    let x: Vec<T> = rng.floats(xl);
    let w: Vec<T> = rng.floats(wl);
    let dy: Vec<T> = rng.floats(yl);
    let dx_old: Vec<T> = rng.floats(xl);
    let dw_old: Vec<T> = rng.floats(wl);
    let db_old: Vec<T> = rng.floats(kl);

    let mut g_x = vec![T::ZERO; xl];
    let mut g_w = vec![T::ZERO; wl];
    let mut g_b = vec![T::ZERO; kl];
    conv.backward_data(&dy, &w, &mut g_x).unwrap();
    conv.backward_weights(&x, &dy, &mut g_w, Some(&mut g_b))
        .unwrap();
    let plus = |old: &[T], g: &[T]| -> Vec<T> { old.iter().zip(g).map(|(&o, &g)| o + g).collect() };
    let (want_x, want_w, want_b) = (
        plus(&dx_old, &g_x),
        plus(&dw_old, &g_w),
        plus(&db_old, &g_b),
    );

    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (mut dx, mut dw, mut db) = (dx_old.clone(), dw_old.clone(), db_old.clone());
        let mut dw_only = dw_old.clone();
        pool.install(|| {
            conv.backward_data_accumulate(&dy, &w, &mut dx).unwrap();
            conv.backward_weights_accumulate(&x, &dy, &mut dw, Some(&mut db))
                .unwrap();
            conv.backward_weights_accumulate(&x, &dy, &mut dw_only, None)
                .unwrap();
        });
        let at = format!("{name} {s:?}, {} threads", threads);
        assert!(
            bits(&dx) == bits(&want_x),
            "{at}: dx differs from dx + delta"
        );
        assert!(
            bits(&dw) == bits(&want_w),
            "{at}: dw differs from dw + gradient"
        );
        assert!(
            bits(&db) == bits(&want_b),
            "{at}: db differs from db + bias gradient"
        );
        assert!(bits(&dw_only) == bits(&want_w), "{at}: dw (no db) differs");
    }
}

#[test]
fn accumulate_adds_the_overwriting_result_bit_for_bit_f32() {
    for (i, (name, s)) in cases().iter().enumerate() {
        check::<f32>(name, s, 1300 + i as u64);
    }
}

#[test]
fn accumulate_adds_the_overwriting_result_bit_for_bit_f64() {
    for (i, (name, s)) in cases().iter().enumerate() {
        check::<f64>(name, s, 2300 + i as u64);
    }
}

/// Two accumulating calls on the two halves of a batch give the full batch's gradient
/// to rounding (gradient accumulation over micro-batches). The two results sum the same
/// `N·P·Q` products per weight in different groupings, so they differ by at most the
/// rounding of that many terms: `|Δ| ≤ 2·L·ε·Σ|terms|` with `L = N·P·Q`, `Σ|terms|`
/// bounded by the gradient of `|x|` and `|dy|`.
#[test]
fn micro_batches_sum_to_the_batch_gradient() {
    let one = [1, 1];
    let s = spec(6, 16, [18, 18], 24, [3, 3], one, one, one, 1);
    let half = Conv2dSpec { batch: 3, ..s };
    let (conv, conv_half) = (Conv2d::new(s).unwrap(), Conv2d::new(half).unwrap());
    let (xl, wl, yl, kl) = lens(&conv);
    let mut rng = Rng::new(77);
    let x: Vec<f32> = rng.floats(xl);
    let dy: Vec<f32> = rng.floats(yl);
    let (mut dw, mut db) = (vec![0.0f32; wl], vec![0.0f32; kl]);
    conv.backward_weights(&x, &dy, &mut dw, Some(&mut db))
        .unwrap();
    let (mut acc_w, mut acc_b) = (vec![0.0f32; wl], vec![0.0f32; kl]);
    for part in 0..2 {
        let x_part = &x[part * xl / 2..][..xl / 2];
        let dy_part = &dy[part * yl / 2..][..yl / 2];
        conv_half
            .backward_weights_accumulate(x_part, dy_part, &mut acc_w, Some(&mut acc_b))
            .unwrap();
    }
    let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let dya: Vec<f32> = dy.iter().map(|v| v.abs()).collect();
    let (mut mag_w, mut mag_b) = (vec![0.0f32; wl], vec![0.0f32; kl]);
    conv.backward_weights(&xa, &dya, &mut mag_w, Some(&mut mag_b))
        .unwrap();
    let terms = (s.batch * 18 * 18) as f32;
    for (what, got, want, mag) in [("dw", &acc_w, &dw, &mag_w), ("db", &acc_b, &db, &mag_b)] {
        assert_not_mostly_zero(what, want);
        for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
            let tol = 2.0 * terms * f32::EPSILON * m;
            assert!(
                (g - w).abs() <= tol,
                "{what}[{i}]: {g} vs {w} (tol {tol:e})"
            );
        }
    }
}

/// A wrong length is an error naming the buffer, and the buffers are left as they were.
#[test]
fn accumulating_calls_check_lengths_first() {
    let conv = Conv2d::new(spec(2, 3, [8, 8], 4, [3, 3], [1, 1], [1, 1], [1, 1], 1)).unwrap();
    let (xl, wl, yl, kl) = lens(&conv);
    let (x, w, dy) = (vec![1.0f32; xl], vec![1.0f32; wl], vec![1.0f32; yl]);
    let mut dx = vec![2.0f32; xl + 1];
    let err = conv.backward_data_accumulate(&dy, &w, &mut dx).unwrap_err();
    assert!(matches!(err, ConvError::BufferLength { .. }), "{err}");
    assert!(err.to_string().starts_with("dx has"), "{err}");
    assert!(dx.iter().all(|&v| v == 2.0));
    let err = conv
        .backward_data_accumulate(&dy[1..], &w, &mut dx[1..])
        .unwrap_err();
    assert!(err.to_string().starts_with("dy has"), "{err}");

    let (mut dw, mut db) = (vec![3.0f32; wl], vec![3.0f32; kl - 1]);
    let err = conv
        .backward_weights_accumulate(&x, &dy, &mut dw, Some(&mut db))
        .unwrap_err();
    assert!(err.to_string().starts_with("db has"), "{err}");
    assert!(dw.iter().chain(&db).all(|&v| v == 3.0));
    let err = conv
        .backward_weights_accumulate(&x[1..], &dy, &mut dw, None)
        .unwrap_err();
    assert!(err.to_string().starts_with("x has"), "{err}");
}
