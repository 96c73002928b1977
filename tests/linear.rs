//! The fully connected layer against naive loops (tolerance rule and, on small integers,
//! bit for bit), the adjoint identities, every error case, and thread-count independence.

mod common;
use common::*;
use convgemm::{ConvError, Element, Linear};

/// (N, in, out): ones, primes, sizes around matrixmultiply's register tiles (8×4, 8×8).
const SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (1, 7, 3),
    (5, 1, 9),
    (3, 13, 1),
    (16, 128, 64),
    (9, 17, 33),
    (32, 64, 10),
    (2, 300, 5),
];

/// Naive loops in f64, rounded once: (y, dx, dw, db).
#[allow(clippy::type_complexity)]
fn naive<T: Element>(
    (n, i, o): (usize, usize, usize),
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    dy: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    let f = |v: T| v.to_f64();
    let mut y = vec![T::ZERO; n * o];
    let mut dx = vec![T::ZERO; n * i];
    let mut dw = vec![T::ZERO; o * i];
    let mut db = vec![T::ZERO; o];
    for s in 0..n {
        for k in 0..o {
            let mut acc = b.map_or(0.0, |b| f(b[k]));
            for c in 0..i {
                acc += f(x[s * i + c]) * f(w[k * i + c]);
            }
            y[s * o + k] = T::from_f64(acc);
        }
        for c in 0..i {
            let acc: f64 = (0..o).map(|k| f(dy[s * o + k]) * f(w[k * i + c])).sum();
            dx[s * i + c] = T::from_f64(acc);
        }
    }
    for k in 0..o {
        for c in 0..i {
            let acc: f64 = (0..n).map(|s| f(dy[s * o + k]) * f(x[s * i + c])).sum();
            dw[k * i + c] = T::from_f64(acc);
        }
        db[k] = T::from_f64((0..n).map(|s| f(dy[s * o + k])).sum());
    }
    (y, dx, dw, db)
}

fn run<T: Element>(
    fc: &Linear,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    dy: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    // NaN-filled outputs: each must be overwritten, never read.
    let nan = T::from_f64(f64::NAN);
    let mut y = vec![nan; dy.len()];
    let mut dx = vec![nan; x.len()];
    let mut dw = vec![nan; w.len()];
    let mut db = vec![nan; fc.out_features()];
    fc.forward(x, w, b, &mut y).unwrap();
    fc.backward_data(dy, w, &mut dx).unwrap();
    fc.backward_weights(x, dy, &mut dw, Some(&mut db)).unwrap();
    (y, dx, dw, db)
}

fn check<T: Element>(seed: u64) {
    for (si, &shape) in SHAPES.iter().enumerate() {
        let (n, i, o) = shape;
        let fc = Linear::new(n, i, o).unwrap();
        let mut rng = Rng::new(seed + si as u64);
        let (x, w, b, dy): (Vec<T>, Vec<T>, Vec<T>, Vec<T>) = (
            rng.floats(n * i),
            rng.floats(o * i),
            rng.floats(o),
            rng.floats(n * o),
        );
        let abs = |v: &[T]| v.iter().map(|a| a.abs()).collect::<Vec<T>>();
        for bias in [false, true] {
            let b_opt = bias.then_some(&b[..]);
            let (y, dx, dw, db) = run(&fc, &x, &w, b_opt, &dy);
            let (y_ref, dx_ref, dw_ref, db_ref) = naive(shape, &x, &w, b_opt, &dy);
            let ab = abs(&b);
            let (y_mag, dx_mag, dw_mag, db_mag) = naive(
                shape,
                &abs(&x),
                &abs(&w),
                bias.then_some(&ab[..]),
                &abs(&dy),
            );
            let name = format!("{shape:?} bias {bias}");
            // Reduction lengths: in (+1 for the bias) for y, out for dx, N for dw and db.
            assert_within(&format!("{name} y"), &y, &y_ref, &y_mag, i + 1);
            assert_within(&format!("{name} dx"), &dx, &dx_ref, &dx_mag, o);
            assert_within(&format!("{name} dw"), &dw, &dw_ref, &dw_mag, n);
            assert_within(&format!("{name} db"), &db, &db_ref, &db_mag, n);
            assert_not_mostly_zero(&name, &y);
            assert_not_mostly_zero(&name, &dw);
        }
    }
}

#[test]
fn against_naive_loops_f64() {
    check::<f64>(10);
}

#[test]
fn against_naive_loops_f32() {
    check::<f32>(20);
}

/// Small integers: every sum of these sizes is exact in f32, so the result must equal the
/// naive loop's bit for bit.
#[test]
fn exact_on_small_integers() {
    for (si, &shape) in SHAPES.iter().enumerate() {
        let (n, i, o) = shape;
        let fc = Linear::new(n, i, o).unwrap();
        let mut rng = Rng::new(300 + si as u64);
        let (x, w, b, dy): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) = (
            rng.small_ints(n * i),
            rng.small_ints(o * i),
            rng.small_ints(o),
            rng.small_ints(n * o),
        );
        let fast = run(&fc, &x, &w, Some(&b), &dy);
        let slow = naive(shape, &x, &w, Some(&b), &dy);
        assert!(
            fast == slow,
            "{shape:?}: differs from the naive loop on exact data"
        );
    }
}

/// `<x·Wᵀ, dy> = <x, dy·W> = <W, dyᵀ·x>`: the backward passes are the adjoints of the
/// forward map in x and in W. Each side is the triple sum `Σ x·w·dy` computed as a GEMM of
/// reduction length `in`, `out` or `N` followed by a dot product of length `N·out`,
/// `N·in` or `out·in`; in f64 its error is at most `(sum of those lengths)·ε·M`, where
/// `M = Σ |x|·|w|·|dy|`. The tolerance is that bound for the largest pair, which an index
/// mistake (an O(1) fraction of `M`) exceeds by orders of magnitude.
#[test]
fn adjoint_identities() {
    for (si, &(n, i, o)) in SHAPES.iter().enumerate() {
        let fc = Linear::new(n, i, o).unwrap();
        let mut rng = Rng::new(500 + si as u64);
        let (x, w, dy): (Vec<f64>, Vec<f64>, Vec<f64>) =
            (rng.floats(n * i), rng.floats(o * i), rng.floats(n * o));
        let (y, dx, dw, _) = run(&fc, &x, &w, None, &dy);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        let abs = |v: &[f64]| v.iter().map(|a| a.abs()).collect::<Vec<f64>>();
        let (y_abs, ..) = naive((n, i, o), &abs(&x), &abs(&w), None, &abs(&dy));
        let m = dot(&y_abs, &abs(&dy));
        let tol = ((i + n * o) + (o + n * i) + (n + o * i)) as f64 * f64::EPSILON * m;
        let (lhs, via_x, via_w) = (dot(&y, &dy), dot(&x, &dx), dot(&w, &dw));
        assert!((lhs - via_x).abs() <= tol, "{lhs} vs {via_x}");
        assert!((lhs - via_w).abs() <= tol, "{lhs} vs {via_w}");
    }
}

#[test]
fn invalid_sizes_and_lengths_are_errors() {
    for (args, field) in [
        ((0, 3, 4), "batch"),
        ((2, 0, 4), "in_features"),
        ((2, 3, 0), "out_features"),
    ] {
        let err = Linear::new(args.0, args.1, args.2).unwrap_err();
        assert!(matches!(err, ConvError::ZeroSize { .. }));
        assert_eq!(
            err.to_string(),
            format!("{field} is 0; every size, stride, dilation and groups must be at least 1")
        );
    }
    let big = usize::MAX / 4;
    let err = Linear::new(8, big, 1).unwrap_err();
    assert!(matches!(err, ConvError::TooLarge { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "x: N 8 × in_features {big} does not fit in memory (overflows usize or exceeds isize::MAX bytes)"
        )
    );
    let err = Linear::new(1, 1 << 31, 1 << 31).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("w: out_features 2147483648 × in_features 2147483648")
    );

    let fc = Linear::new(2, 3, 4).unwrap();
    let (x, w, b, y) = (
        vec![0.0f32; 6],
        vec![0.0f32; 12],
        vec![0.0f32; 4],
        vec![0.0f32; 8],
    );
    let cases: Vec<(Result<(), ConvError>, &str)> = vec![
        (
            fc.forward(&x[1..], &w, None, &mut y.clone()),
            "x has 5 elements, expected 6 = N 2 × in_features 3",
        ),
        (
            fc.forward(&x, &w[1..], None, &mut y.clone()),
            "w has 11 elements, expected 12 = out_features 4 × in_features 3",
        ),
        (
            fc.forward(&x, &w, Some(&b[1..]), &mut y.clone()),
            "bias has 3 elements, expected 4 = out_features 4",
        ),
        (
            fc.forward(&x, &w, Some(&b), &mut [0.0; 9]),
            "y has 9 elements, expected 8 = N 2 × out_features 4",
        ),
        (
            fc.backward_data(&y[1..], &w, &mut x.clone()),
            "dy has 7 elements, expected 8 = N 2 × out_features 4",
        ),
        (
            fc.backward_data(&y, &w, &mut [0.0; 2]),
            "dx has 2 elements, expected 6 = N 2 × in_features 3",
        ),
        (
            fc.backward_weights(&x, &y, &mut [0.0; 13], None),
            "dw has 13 elements, expected 12 = out_features 4 × in_features 3",
        ),
        (
            fc.backward_weights(&x, &y, &mut w.clone(), Some(&mut [0.0; 5])),
            "db has 5 elements, expected 4 = out_features 4",
        ),
    ];
    for (result, message) in cases {
        let err = result.unwrap_err();
        assert!(matches!(err, ConvError::BufferLength { .. }));
        assert_eq!(err.to_string(), message);
    }
}

/// Each call is one GEMM on the calling thread: pools of 1 and 3 threads agree bit for bit.
#[test]
fn bit_identical_across_thread_counts() {
    let (n, i, o) = (37, 129, 65);
    let fc = Linear::new(n, i, o).unwrap();
    let mut rng = Rng::new(9);
    let (x, w, b, dy): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) = (
        rng.floats(n * i),
        rng.floats(o * i),
        rng.floats(o),
        rng.floats(n * o),
    );
    let go = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (y, dx, dw, db) = pool.install(|| run(&fc, &x, &w, Some(&b), &dy));
        [y, dx, dw, db].map(|v| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>())
    };
    assert!(go(1) == go(3));
}

/// The accumulating passes add exactly what the overwriting ones write (`old + g`, bit for
/// bit), on random data with reductions (`N` for the weight gradient, `out_features` for
/// the input delta) longer than one of the GEMM's k blocks; a wrong length is an error
/// that leaves the buffers unchanged.
#[test]
fn accumulate_adds_the_overwriting_result_bit_for_bit() {
    for (i, &(n, inf, outf)) in [(3, 5, 2), (600, 70, 40), (17, 300, 520)]
        .iter()
        .enumerate()
    {
        let lin = Linear::new(n, inf, outf).unwrap();
        let mut rng = Rng::new(500 + i as u64);
        let x: Vec<f32> = rng.floats(n * inf);
        let w: Vec<f32> = rng.floats(outf * inf);
        let dy: Vec<f32> = rng.floats(n * outf);
        let (dx0, dw0, db0): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            rng.floats(n * inf),
            rng.floats(outf * inf),
            rng.floats(outf),
        );
        let (mut gx, mut gw, mut gb) = (vec![0.0; n * inf], vec![0.0; outf * inf], vec![0.0; outf]);
        lin.backward_data(&dy, &w, &mut gx).unwrap();
        lin.backward_weights(&x, &dy, &mut gw, Some(&mut gb))
            .unwrap();
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        lin.backward_data_accumulate(&dy, &w, &mut dx).unwrap();
        lin.backward_weights_accumulate(&x, &dy, &mut dw, Some(&mut db))
            .unwrap();
        let plus = |a: &[f32], b: &[f32]| -> Vec<u32> {
            a.iter().zip(b).map(|(a, b)| (a + b).to_bits()).collect()
        };
        let bits = |v: &[f32]| -> Vec<u32> { v.iter().map(|v| v.to_bits()).collect() };
        assert_eq!(bits(&dx), plus(&dx0, &gx), "dx, {n}×{inf}→{outf}");
        assert_eq!(bits(&dw), plus(&dw0, &gw), "dw, {n}×{inf}→{outf}");
        assert_eq!(bits(&db), plus(&db0, &gb), "db, {n}×{inf}→{outf}");
        let before = dw.clone();
        let err = lin
            .backward_weights_accumulate(&x, &dy, &mut dw, Some(&mut db[1..]))
            .unwrap_err();
        assert!(matches!(err, ConvError::BufferLength { .. }), "{err}");
        assert_eq!(dw, before);
    }
}
