//! Max and average pooling against naive per-window loops, central finite differences and
//! the adjoint identity; max-pool ties, −∞ and NaN; every error case with its message;
//! bit-identical results in rayon pools of 1 and 3 threads.

mod common;
use common::*;
use convgemm::{AvgPool2d, ConvError, Element, MaxPool2d, Pool2dSpec};

fn spec(
    n: usize,
    c: usize,
    hw: [usize; 2],
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
) -> Pool2dSpec {
    Pool2dSpec {
        batch: n,
        channels: c,
        in_h: hw[0],
        in_w: hw[1],
        kernel: k,
        stride: s,
        padding: p,
    }
}

/// Named shapes, each stressing one thing: overlap, gaps, padding, non-square, 1-D, a
/// window as large as the padded input, a floor that drops the last rows.
fn battery() -> Vec<(&'static str, Pool2dSpec)> {
    vec![
        ("2x2_stride2", spec(2, 3, [8, 8], [2, 2], [2, 2], [0, 0])),
        (
            "3x3_stride2_pad1",
            spec(2, 2, [7, 9], [3, 3], [2, 2], [1, 1]),
        ),
        (
            "3x3_stride1_overlap",
            spec(1, 3, [6, 5], [3, 3], [1, 1], [0, 0]),
        ),
        (
            "3x3_stride1_pad1",
            spec(2, 2, [5, 6], [3, 3], [1, 1], [1, 1]),
        ),
        (
            "stride_gt_kernel",
            spec(2, 2, [11, 10], [2, 2], [3, 4], [0, 0]),
        ),
        (
            "nonsquare_2x4_pad_1x2",
            spec(2, 2, [7, 13], [2, 4], [1, 3], [1, 2]),
        ),
        (
            "floor_drops_rows",
            spec(1, 2, [9, 7], [2, 3], [2, 2], [0, 0]),
        ),
        (
            "kernel_equals_padded",
            spec(2, 3, [4, 3], [6, 5], [1, 1], [1, 1]),
        ),
        ("h1_1d", spec(2, 3, [1, 17], [1, 3], [1, 2], [0, 1])),
        ("kernel_1x1", spec(2, 2, [4, 5], [1, 1], [2, 1], [0, 0])),
        ("5x5_pad2", spec(1, 2, [9, 8], [5, 5], [2, 3], [2, 2])),
    ]
}

/// A random valid spec.
fn random_spec(rng: &mut Rng) -> Pool2dSpec {
    loop {
        let k = [rng.range(1, 4), rng.range(1, 4)];
        let s = spec(
            rng.range(1, 2),
            rng.range(1, 3),
            [rng.range(1, 9), rng.range(1, 9)],
            k,
            [rng.range(1, 3), rng.range(1, 3)],
            [rng.range(0, k[0] / 2), rng.range(0, k[1] / 2)],
        );
        if MaxPool2d::new(s).is_ok() {
            return s;
        }
    }
}

fn out_hw(s: &Pool2dSpec) -> (usize, usize) {
    (
        (s.in_h + 2 * s.padding[0] - s.kernel[0]) / s.stride[0] + 1,
        (s.in_w + 2 * s.padding[1] - s.kernel[1]) / s.stride[1] + 1,
    )
}

fn lens(s: &Pool2dSpec) -> (usize, usize) {
    let (p, q) = out_hw(s);
    (
        s.batch * s.channels * s.in_h * s.in_w,
        s.batch * s.channels * p * q,
    )
}

/// The input positions `(h, w)` of window `(p, q)`, row-major, padding skipped.
fn window(s: &Pool2dSpec, p: usize, q: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for i in 0..s.kernel[0] {
        for j in 0..s.kernel[1] {
            let h = (p * s.stride[0] + i) as isize - s.padding[0] as isize;
            let w = (q * s.stride[1] + j) as isize - s.padding[1] as isize;
            if h >= 0 && w >= 0 && (h as usize) < s.in_h && (w as usize) < s.in_w {
                v.push((h as usize, w as usize));
            }
        }
    }
    v
}

/// Naive max pooling: per window, the first strict maximum in row-major order.
fn ref_max<T: Element>(s: &Pool2dSpec, x: &[T]) -> (Vec<T>, Vec<u32>) {
    let (p_out, q_out) = out_hw(s);
    let (mut y, mut am) = (Vec::new(), Vec::new());
    for plane in x.chunks(s.in_h * s.in_w) {
        for p in 0..p_out {
            for q in 0..q_out {
                let win = window(s, p, q);
                let (mut best, mut arg) = (plane[win[0].0 * s.in_w + win[0].1], win[0]);
                for &(h, w) in &win[1..] {
                    if plane[h * s.in_w + w] > best {
                        best = plane[h * s.in_w + w];
                        arg = (h, w);
                    }
                }
                y.push(best);
                am.push((arg.0 * s.in_w + arg.1) as u32);
            }
        }
    }
    (y, am)
}

/// Naive average pooling in f64, rounded once.
fn ref_avg<T: Element>(s: &Pool2dSpec, include_pad: bool, x: &[T]) -> Vec<T> {
    let (p_out, q_out) = out_hw(s);
    let mut y = Vec::new();
    for plane in x.chunks(s.in_h * s.in_w) {
        for p in 0..p_out {
            for q in 0..q_out {
                let win = window(s, p, q);
                let sum: f64 = win
                    .iter()
                    .map(|&(h, w)| plane[h * s.in_w + w].to_f64())
                    .sum();
                let d = if include_pad {
                    s.kernel[0] * s.kernel[1]
                } else {
                    win.len()
                };
                y.push(T::from_f64(sum / d as f64));
            }
        }
    }
    y
}

/// Naive average-pool backward in f64: each dy / d added to its window.
fn ref_avg_backward<T: Element>(s: &Pool2dSpec, include_pad: bool, dy: &[T]) -> Vec<T> {
    let (p_out, q_out) = out_hw(s);
    let plane = s.in_h * s.in_w;
    let mut dx = vec![0.0f64; s.batch * s.channels * plane];
    for (c, dy_plane) in dy.chunks(p_out * q_out).enumerate() {
        for p in 0..p_out {
            for q in 0..q_out {
                let win = window(s, p, q);
                let d = if include_pad {
                    s.kernel[0] * s.kernel[1]
                } else {
                    win.len()
                };
                for &(h, w) in &win {
                    dx[c * plane + h * s.in_w + w] += dy_plane[p * q_out + q].to_f64() / d as f64;
                }
            }
        }
    }
    dx.into_iter().map(T::from_f64).collect()
}

fn check_max<T: Element>(name: &str, s: &Pool2dSpec, seed: u64) {
    let pool = MaxPool2d::new(*s).unwrap();
    let (xl, yl) = lens(s);
    let mut rng = Rng::new(seed);
    let x: Vec<T> = rng.floats(xl);
    let dy: Vec<T> = rng.floats(yl);
    // Garbage in the outputs: every element must be overwritten.
    let (mut y, mut am) = (vec![T::from_f64(7.0); yl], vec![u32::MAX; yl]);
    pool.forward(&x, &mut y, &mut am).unwrap();
    let (y_ref, am_ref) = ref_max(s, &x);
    // A maximum is one of the inputs, chosen by comparisons only: exact.
    assert!(y == y_ref, "{name}: max forward values");
    assert!(am == am_ref, "{name}: max forward argmax");

    let mut dx = vec![T::from_f64(7.0); xl];
    pool.backward(&dy, &am, &mut dx).unwrap();
    // Naive scatter in f64: an input receives at most kernel-area values, each exact in
    // f64, so the only rounding is the final one (and the fast sum's own, ≤ L·u·Σ|terms|).
    let mut dx_ref = vec![0.0f64; xl];
    let mut dx_mag = vec![0.0f64; xl];
    let (p, q) = out_hw(s);
    for (i, (&g, &a)) in dy.iter().zip(&am_ref).enumerate() {
        let plane = i / (p * q);
        dx_ref[plane * s.in_h * s.in_w + a as usize] += g.to_f64();
        dx_mag[plane * s.in_h * s.in_w + a as usize] += g.to_f64().abs();
    }
    let to_t = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect::<Vec<T>>();
    assert_within(
        &format!("{name} max backward"),
        &dx,
        &to_t(dx_ref),
        &to_t(dx_mag),
        s.kernel[0] * s.kernel[1],
    );
}

fn check_avg<T: Element>(name: &str, s: &Pool2dSpec, include_pad: bool, seed: u64) {
    let pool = AvgPool2d::new(*s, include_pad).unwrap();
    let (xl, yl) = lens(s);
    let mut rng = Rng::new(seed);
    let x: Vec<T> = rng.floats(xl);
    let dy: Vec<T> = rng.floats(yl);
    let abs = |v: &[T]| v.iter().map(|a| a.abs()).collect::<Vec<T>>();
    let area = s.kernel[0] * s.kernel[1];

    let mut y = vec![T::from_f64(7.0); yl];
    pool.forward(&x, &mut y).unwrap();
    // A sum of at most `area` terms, then one division (one more rounding): L = area + 1.
    assert_within(
        &format!("{name} avg forward (pad {include_pad})"),
        &y,
        &ref_avg(s, include_pad, &x),
        &ref_avg(s, include_pad, &abs(&x)),
        area + 1,
    );

    let mut dx = vec![T::from_f64(7.0); xl];
    pool.backward(&dy, &mut dx).unwrap();
    // Each input receives at most `area` shares dy / d, each rounded once: L = area + 1.
    assert_within(
        &format!("{name} avg backward (pad {include_pad})"),
        &dx,
        &ref_avg_backward(s, include_pad, &dy),
        &ref_avg_backward(s, include_pad, &abs(&dy)),
        area + 1,
    );
}

#[test]
fn battery_against_naive_loops() {
    for (i, (name, s)) in battery().iter().enumerate() {
        let seed = 10 + i as u64;
        check_max::<f64>(name, s, seed);
        check_max::<f32>(name, s, seed);
        for pad in [true, false] {
            check_avg::<f64>(name, s, pad, seed);
            check_avg::<f32>(name, s, pad, seed);
        }
    }
}

#[test]
fn random_specs_against_naive_loops() {
    let mut rng = Rng::new(0xB00C);
    for i in 0..300 {
        let s = random_spec(&mut rng);
        let name = format!("random #{i} {s:?}");
        check_max::<f64>(&name, &s, 1000 + i);
        check_max::<f32>(&name, &s, 2000 + i);
        check_avg::<f64>(&name, &s, i % 2 == 0, 3000 + i);
        check_avg::<f32>(&name, &s, i % 2 == 1, 4000 + i);
    }
}

/// Windows that share inputs, and padding: the values prove the path runs, not zeros.
#[test]
fn outputs_are_not_mostly_zero() {
    for (i, (name, s)) in battery().iter().enumerate() {
        let (xl, yl) = lens(s);
        let x: Vec<f64> = Rng::new(i as u64).floats(xl);
        let (mut y, mut am) = (vec![0.0; yl], vec![0; yl]);
        MaxPool2d::new(*s)
            .unwrap()
            .forward(&x, &mut y, &mut am)
            .unwrap();
        assert_not_mostly_zero(name, &y);
        AvgPool2d::new(*s, true)
            .unwrap()
            .forward(&x, &mut y)
            .unwrap();
        assert_not_mostly_zero(name, &y);
    }
}

/// The loss `L = Σ r ⊙ pool(x)` for a fixed random `r`; its gradient is `backward(r)`.
/// Central differences with step `h = 1e-6` in f64: average pooling is linear, so the
/// difference is exact up to rounding, about `ε·|L|/h ≈ 1e-10` relative; max pooling is
/// piecewise linear and exact too unless a step swaps a window's maximum, which needs two
/// random inputs within 1e-6 of each other (the seed is fixed and checked not to). The
/// tolerance 1e-7 is a thousand times the rounding.
#[test]
fn gradients_match_finite_differences() {
    let h = 1e-6;
    for (i, (name, s)) in battery().iter().enumerate() {
        let (xl, yl) = lens(s);
        let mut rng = Rng::new(500 + i as u64);
        let x: Vec<f64> = rng.floats(xl);
        let r: Vec<f64> = rng.floats(yl);
        let max = MaxPool2d::new(*s).unwrap();
        let avg = AvgPool2d::new(*s, false).unwrap();
        let loss = |x: &[f64], which: usize| -> f64 {
            let mut y = vec![0.0; yl];
            if which == 0 {
                max.forward(x, &mut y, &mut vec![0; yl]).unwrap();
            } else {
                avg.forward(x, &mut y).unwrap();
            }
            y.iter().zip(&r).map(|(a, b)| a * b).sum()
        };
        let mut am = vec![0; yl];
        max.forward(&x, &mut vec![0.0; yl], &mut am).unwrap();
        let mut grads = [vec![0.0; xl], vec![0.0; xl]];
        max.backward(&r, &am, &mut grads[0]).unwrap();
        avg.backward(&r, &mut grads[1]).unwrap();
        for (which, grad) in grads.iter().enumerate() {
            for j in 0..xl {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[j] += h;
                xm[j] -= h;
                let fd = (loss(&xp, which) - loss(&xm, which)) / (2.0 * h);
                assert!(
                    (fd - grad[j]).abs() <= 1e-7 * (1.0 + fd.abs()),
                    "{name} pool {which}: dx[{j}] = {} but finite difference {fd}",
                    grad[j]
                );
            }
        }
    }
}

/// `<avg(x), dy> = <x, avg_backward(dy)>`: backward is the adjoint of forward. Both sides
/// are `Σ x·dy/d` over (input, window) pairs, computed as window sums (`area + 1`
/// roundings each) and then a dot product of length `y_len` or `x_len`; in f64 the error is
/// at most `(2·(area + 1) + x_len + y_len)·ε·M` with `M = <avg(|x|), |dy|>`. An indexing
/// mistake moves a side by an O(1) fraction of `M`.
#[test]
fn avg_backward_is_the_adjoint() {
    for (i, (name, s)) in battery().iter().enumerate() {
        let (xl, yl) = lens(s);
        let area = s.kernel[0] * s.kernel[1];
        let mut rng = Rng::new(700 + i as u64);
        let x: Vec<f64> = rng.floats(xl);
        let dy: Vec<f64> = rng.floats(yl);
        let abs = |v: &[f64]| v.iter().map(|a| a.abs()).collect::<Vec<f64>>();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        for pad in [true, false] {
            let pool = AvgPool2d::new(*s, pad).unwrap();
            let (mut y, mut dx, mut y_abs) = (vec![0.0; yl], vec![0.0; xl], vec![0.0; yl]);
            pool.forward(&x, &mut y).unwrap();
            pool.backward(&dy, &mut dx).unwrap();
            pool.forward(&abs(&x), &mut y_abs).unwrap();
            let m = dot(&y_abs, &abs(&dy));
            let tol = (2 * (area + 1) + xl + yl) as f64 * f64::EPSILON * m;
            let (lhs, rhs) = (dot(&y, &dy), dot(&x, &dx));
            assert!(
                (lhs - rhs).abs() <= tol,
                "{name} (pad {pad}): <y, dy> = {lhs} but <x, dx> = {rhs}"
            );
        }
    }
}

#[test]
fn max_ties_pick_the_first_in_row_major_window_order() {
    // All equal: every window reports its first input element.
    let s = spec(1, 1, [4, 5], [3, 3], [1, 2], [1, 1]);
    let pool = MaxPool2d::new(s).unwrap();
    let (xl, yl) = lens(&s);
    let (mut y, mut am) = (vec![0.0f32; yl], vec![0; yl]);
    pool.forward(&vec![2.0f32; xl], &mut y, &mut am).unwrap();
    assert!(y.iter().all(|&v| v == 2.0));
    // Windows start at rows -1, 0, 1, 2 (clamped to 0, 0, 1, 2) and columns -1, 1, 3
    // (clamped to 0, 1, 3).
    let expected: Vec<u32> = [0u32, 0, 1, 2]
        .iter()
        .flat_map(|&h| [0u32, 1, 3].map(move |w| h * 5 + w))
        .collect();
    assert_eq!(am, expected);

    // Two equal maxima in one 2×2 window: the first in row-major order, even when the
    // later one sits in an earlier column.
    let s = spec(1, 1, [2, 2], [2, 2], [2, 2], [0, 0]);
    let pool = MaxPool2d::new(s).unwrap();
    for (x, max, arg) in [
        ([1.0, 5.0, 5.0, 0.0], 5.0, 1),
        ([0.0, 1.0, 5.0, 5.0], 5.0, 2),
        ([5.0, 1.0, 0.0, 5.0], 5.0, 0),
        ([-1.0, -1.0, -2.0, -1.0], -1.0, 0),
        ([0.0, 0.0, 0.0, 0.0], 0.0, 0),
    ] {
        let (mut y, mut am) = ([0.0f64], [9u32]);
        pool.forward(&x, &mut y, &mut am).unwrap();
        assert_eq!((y[0], am[0]), (max, arg), "x = {x:?}");
    }
}

#[test]
fn max_padding_is_minus_infinity_and_nan_propagates() {
    // Negative inputs with padding: the padding (−∞) never wins.
    let s = spec(1, 1, [2, 2], [2, 2], [1, 1], [1, 1]);
    let pool = MaxPool2d::new(s).unwrap();
    let x = [-4.0f64, -3.0, -2.0, -1.0];
    let (mut y, mut am) = (vec![0.0; 9], vec![0; 9]);
    pool.forward(&x, &mut y, &mut am).unwrap();
    assert_eq!(y, [-4.0, -3.0, -3.0, -2.0, -1.0, -1.0, -2.0, -1.0, -1.0]);
    assert_eq!(am, [0, 1, 1, 2, 3, 3, 2, 3, 3]);

    // All −∞: the value is −∞, the argmax the window's first input element.
    let x = [f64::NEG_INFINITY; 4];
    pool.forward(&x, &mut y, &mut am).unwrap();
    assert!(y.iter().all(|&v| v == f64::NEG_INFINITY));
    assert_eq!(am, [0, 0, 1, 0, 0, 1, 2, 2, 3]);

    // A NaN wins its windows; the first NaN when there are two.
    let x = [1.0, f64::NAN, 3.0, f64::NAN];
    pool.forward(&x, &mut y, &mut am).unwrap();
    assert!(y[0] == 1.0 && y[1].is_nan() && y[4].is_nan() && y[6] == 3.0);
    assert_eq!((am[1], am[4], am[5]), (1, 1, 1));
}

fn assert_err(
    result: Result<impl std::fmt::Debug, ConvError>,
    variant: fn(&ConvError) -> bool,
    message: &str,
) {
    let err = result.unwrap_err();
    assert!(variant(&err), "unexpected variant {err:?}");
    assert_eq!(err.to_string(), message);
}

#[test]
fn invalid_specs_are_errors() {
    let good = spec(1, 3, [4, 4], [2, 2], [2, 2], [1, 1]);
    assert!(MaxPool2d::new(good).is_ok());
    type Setter = fn(&mut Pool2dSpec);
    let zero_fields: [(&str, Setter); 8] = [
        ("batch", |s| s.batch = 0),
        ("channels", |s| s.channels = 0),
        ("in_h", |s| s.in_h = 0),
        ("in_w", |s| s.in_w = 0),
        ("kernel[0]", |s| s.kernel[0] = 0),
        ("kernel[1]", |s| s.kernel[1] = 0),
        ("stride[0]", |s| s.stride[0] = 0),
        ("stride[1]", |s| s.stride[1] = 0),
    ];
    for (field, set) in zero_fields {
        let mut s = good;
        set(&mut s);
        let msg =
            format!("{field} is 0; every size, stride, dilation and groups must be at least 1");
        let is_zero = |e: &ConvError| matches!(e, ConvError::ZeroSize { .. });
        assert_err(MaxPool2d::new(s), is_zero, &msg);
        assert_err(AvgPool2d::new(s, true), is_zero, &msg);
    }

    let is_pad = |e: &ConvError| matches!(e, ConvError::PaddingTooLarge { .. });
    let s = spec(1, 1, [8, 8], [3, 4], [1, 1], [2, 1]);
    let msg =
        "padding height 2 is more than half the kernel height 3; expected padding <= kernel / 2";
    assert_err(MaxPool2d::new(s), is_pad, msg);
    assert_err(AvgPool2d::new(s, false), is_pad, msg);
    let s = spec(1, 1, [8, 8], [3, 4], [1, 1], [1, 3]);
    let msg =
        "padding width 3 is more than half the kernel width 4; expected padding <= kernel / 2";
    assert_err(MaxPool2d::new(s), is_pad, msg);

    let is_kernel = |e: &ConvError| matches!(e, ConvError::KernelTooLarge { .. });
    let s = spec(1, 1, [2, 8], [5, 2], [1, 1], [1, 0]);
    let msg = "kernel height with dilation spans 5 but the padded input height is only 4; \
               expected dilation × (kernel − 1) + 1 <= input + 2 × padding";
    assert_err(MaxPool2d::new(s), is_kernel, msg);
    assert_err(AvgPool2d::new(s, true), is_kernel, msg);

    let is_large = |e: &ConvError| matches!(e, ConvError::TooLarge { .. });
    let big = usize::MAX / 2;
    let s = spec(4, 4, [big, 2], [1, 1], [1, 1], [0, 0]);
    let msg = format!(
        "x: N 4 × C 4 × H {big} × W 2 does not fit in memory (overflows usize or exceeds isize::MAX bytes)"
    );
    assert_err(MaxPool2d::new(s), is_large, &msg);
    assert_err(AvgPool2d::new(s, true), is_large, &msg);
    let s = spec(1, 1, [usize::MAX, 1], [2, 1], [1, 1], [1, 0]);
    let msg = format!(
        "padded input height: {} + 2 × padding 1 does not fit in memory (overflows usize or exceeds isize::MAX bytes)",
        usize::MAX
    );
    assert_err(MaxPool2d::new(s), is_large, &msg);

    // The argmax is a u32: a plane of 2^32 positions is fine, one more row is not. Only
    // the plan is built, nothing is allocated.
    assert!(MaxPool2d::new(spec(1, 1, [1 << 16, 1 << 16], [2, 2], [2, 2], [0, 0])).is_ok());
    let is_plane = |e: &ConvError| matches!(e, ConvError::PlaneTooLarge { .. });
    let s = spec(1, 1, [(1 << 16) + 1, 1 << 16], [2, 2], [2, 2], [0, 0]);
    assert_err(
        MaxPool2d::new(s),
        is_plane,
        "input plane H 65537 × W 65536 has more positions than a u32 argmax can index; expected H × W <= 2^32",
    );
    // Average pooling has no argmax, so no such limit.
    assert!(AvgPool2d::new(s, true).is_ok());
}

#[test]
fn wrong_buffer_lengths_are_errors() {
    let s = spec(1, 3, [4, 4], [2, 2], [2, 2], [0, 0]);
    let max = MaxPool2d::new(s).unwrap();
    let avg = AvgPool2d::new(s, true).unwrap();
    let is_len = |e: &ConvError| matches!(e, ConvError::BufferLength { .. });
    let (x, y, am) = (vec![0.0f32; 48], vec![0.0f32; 12], vec![0u32; 12]);
    let x_msg =
        |b: &str, n: usize| format!("{b} has {n} elements, expected 48 = N 1 × C 3 × H 4 × W 4");
    let y_msg =
        |b: &str, n: usize| format!("{b} has {n} elements, expected 12 = N 1 × C 3 × P 2 × Q 2");

    assert_err(
        max.forward(&x[1..], &mut y.clone(), &mut am.clone()),
        is_len,
        &x_msg("x", 47),
    );
    assert_err(
        max.forward(&x, &mut [0.0; 10], &mut am.clone()),
        is_len,
        &y_msg("y", 10),
    );
    assert_err(
        max.forward(&x, &mut y.clone(), &mut [0; 13]),
        is_len,
        &y_msg("argmax", 13),
    );
    assert_err(
        max.backward(&y[1..], &am, &mut x.clone()),
        is_len,
        &y_msg("dy", 11),
    );
    assert_err(
        max.backward(&y, &am[1..], &mut x.clone()),
        is_len,
        &y_msg("argmax", 11),
    );
    assert_err(
        max.backward(&y, &am, &mut [0.0; 49]),
        is_len,
        &x_msg("dx", 49),
    );
    assert_err(
        avg.forward(&x[1..], &mut y.clone()),
        is_len,
        &x_msg("x", 47),
    );
    assert_err(avg.forward(&x, &mut [0.0; 10]), is_len, &y_msg("y", 10));
    assert_err(
        avg.backward(&y[1..], &mut x.clone()),
        is_len,
        &y_msg("dy", 11),
    );
    assert_err(avg.backward(&y, &mut [0.0; 0]), is_len, &x_msg("dx", 0));
}

#[test]
fn out_of_range_argmax_is_an_error_and_leaves_dx_alone() {
    let s = spec(2, 3, [4, 4], [2, 2], [2, 2], [0, 0]);
    let pool = MaxPool2d::new(s).unwrap();
    let dy = vec![1.0f64; 24];
    let mut am = vec![0u32; 24];
    am[17] = 16;
    am[20] = u32::MAX;
    let mut dx = vec![5.0f64; 96];
    let err = pool.backward(&dy, &am, &mut dx).unwrap_err();
    assert!(matches!(err, ConvError::InvalidValue { .. }));
    assert_eq!(
        err.to_string(),
        "argmax[17] = 16 (image 1, channel 1) is outside its input plane; expected an index < H 4 × W 4 = 16"
    );
    assert!(
        dx.iter().all(|&v| v == 5.0),
        "dx was written before the error"
    );
    am[17] = 15;
    let err = pool.backward(&dy, &am, &mut dx).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("argmax[20] = 4294967295 (image 1, channel 2)")
    );
    am[20] = 0;
    pool.backward(&dy, &am, &mut dx).unwrap();
}

/// Each plane is one task computed in a fixed order: pools of 1 and 3 threads agree bit
/// for bit.
#[test]
fn bit_identical_across_thread_counts() {
    let s = spec(4, 5, [13, 11], [3, 3], [2, 2], [1, 1]);
    let (xl, yl) = lens(&s);
    let mut rng = Rng::new(99);
    let x: Vec<f32> = rng.floats(xl);
    let dy: Vec<f32> = rng.floats(yl);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let max = MaxPool2d::new(s).unwrap();
            let avg = AvgPool2d::new(s, false).unwrap();
            let (mut y, mut am, mut dx) = (vec![0.0; yl], vec![0; yl], vec![0.0; xl]);
            max.forward(&x, &mut y, &mut am).unwrap();
            max.backward(&dy, &am, &mut dx).unwrap();
            let (mut ya, mut dxa) = (vec![0.0; yl], vec![0.0; xl]);
            avg.forward(&x, &mut ya).unwrap();
            avg.backward(&dy, &mut dxa).unwrap();
            let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
            (bits(&y), am, bits(&dx), bits(&ya), bits(&dxa))
        })
    };
    assert!(run(1) == run(3));
}
