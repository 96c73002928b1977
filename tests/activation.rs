//! Activations: the SIMD kernels against the plain scalar loop for every length 0..=67
//! (every vector tail of f32x8 and f64x4), the derivatives against central finite
//! differences, and the error cases.

mod common;
use common::*;
use convgemm::{Activation, ConvError, Element};

const ALL: [Activation; 6] = [
    Activation::Identity,
    Activation::Relu,
    Activation::LeakyRelu(0.1),
    Activation::LeakyRelu(0.0),
    Activation::Sigmoid,
    Activation::Tanh,
];

/// The plain forward loop, written from the formulas.
fn plain_forward<T: Element>(act: Activation, a: T) -> T {
    match act {
        Activation::Identity => a,
        Activation::Relu => {
            if a < T::ZERO {
                T::ZERO
            } else {
                a
            }
        }
        Activation::LeakyRelu(s) => {
            if a > T::ZERO {
                a
            } else {
                T::from_f64(s) * a
            }
        }
        Activation::Sigmoid => T::ONE / (T::ONE + (-a).exp()),
        Activation::Tanh => a.tanh(),
    }
}

/// The plain fused-delta loop: `g · f'(a)` with `f'` read from `y = f(a)`.
fn plain_delta<T: Element>(act: Activation, y: T, g: T) -> T {
    match act {
        Activation::Identity => g,
        Activation::Relu => {
            if y > T::ZERO {
                g
            } else {
                T::ZERO
            }
        }
        Activation::LeakyRelu(s) => {
            if y > T::ZERO {
                g
            } else {
                T::from_f64(s) * g
            }
        }
        Activation::Sigmoid => g * (y * (T::ONE - y)),
        Activation::Tanh => g * (T::ONE - y * y),
    }
}

/// Inputs in [-4, 4) with exact zeros and a few signed zeros mixed in, so both branches of
/// every select and the kink are hit in each vector.
fn inputs<T: Element>(rng: &mut Rng, len: usize) -> Vec<T> {
    (0..len)
        .map(|i| match i % 7 {
            3 => T::ZERO,
            5 => -T::ZERO,
            _ => T::from_f64(4.0 * rng.unit()),
        })
        .collect()
}

/// The kernels do the same IEEE operations as the plain loop (lane by lane, no fused
/// multiply-add), so the results must agree bit for bit at every length: a wrong tail,
/// a lane left unwritten or a shifted load shows up as a difference.
fn kernels_match_plain_loop<T: Element>() {
    let mut rng = Rng::new(42);
    for act in ALL {
        for len in 0..=67 {
            let a: Vec<T> = inputs(&mut rng, len);
            let g: Vec<T> = rng.floats(len);

            let mut y = a.clone();
            act.forward_in_place(&mut y);
            let y_plain: Vec<T> = a.iter().map(|&v| plain_forward(act, v)).collect();
            let bits_equal = |u: &[T], v: &[T]| {
                // to_f64 is exact, so equal f64 bits mean equal T bits (signed zeros too).
                u.len() == v.len()
                    && u.iter()
                        .zip(v)
                        .all(|(p, q)| p.to_f64().to_bits() == q.to_f64().to_bits())
            };
            assert!(
                bits_equal(&y, &y_plain),
                "{act:?} forward, len {len}: {y:?} vs {y_plain:?}"
            );

            let mut delta = g.clone();
            act.backward_in_place(&y, &mut delta).unwrap();
            let delta_plain: Vec<T> = y
                .iter()
                .zip(&g)
                .map(|(&y, &g)| plain_delta(act, y, g))
                .collect();
            assert!(
                bits_equal(&delta, &delta_plain),
                "{act:?} backward, len {len}: {delta:?} vs {delta_plain:?}"
            );
        }
    }
}

#[test]
fn kernels_match_plain_loop_f32() {
    kernels_match_plain_loop::<f32>();
}

#[test]
fn kernels_match_plain_loop_f64() {
    kernels_match_plain_loop::<f64>();
}

/// `backward_in_place(f(a), 1)` is `f'(a)`; compare with `(f(a + h) − f(a − h)) / 2h` in
/// f64. With `h = 1e-5` the truncation error is `h²/6·|f'''| ≤ 2e-11` (|f'''| ≤ 1 for
/// sigmoid, ≤ 2 for tanh) and the rounding error `ε·|f|/h ≤ 2e-11` (|f| ≤ 1 for sigmoid
/// and tanh, ≤ 4 for the rest, whose differences are exact anyway); 1e-9 is fifty times
/// their sum. Inputs stay 1e-3 away from the ReLU kink, so no step crosses it.
#[test]
fn derivatives_match_finite_differences() {
    let h = 1e-5;
    let mut rng = Rng::new(7);
    let a: Vec<f64> = (0..200)
        .map(|_| {
            let v = 4.0 * rng.unit();
            if v.abs() < 1e-3 { 0.5 } else { v }
        })
        .collect();
    for act in [
        Activation::LeakyRelu(0.3),
        Activation::Relu,
        Activation::Identity,
        Activation::Sigmoid,
        Activation::Tanh,
    ] {
        let f = |v: f64| {
            let mut x = [v];
            act.forward_in_place(&mut x);
            x[0]
        };
        let mut y = a.clone();
        act.forward_in_place(&mut y);
        let mut grad = vec![1.0; a.len()];
        act.backward_in_place(&y, &mut grad).unwrap();
        for (i, &v) in a.iter().enumerate() {
            let fd = (f(v + h) - f(v - h)) / (2.0 * h);
            assert!(
                (fd - grad[i]).abs() <= 1e-9,
                "{act:?} at {v}: f' = {} but finite difference {fd}",
                grad[i]
            );
        }
    }
}

#[test]
fn forward_values_and_extremes() {
    let mut v = [0.0f32, -1000.0, 1000.0, f32::NAN];
    Activation::Sigmoid.forward_in_place(&mut v);
    assert_eq!(&v[..3], &[0.5, 0.0, 1.0]);
    assert!(v[3].is_nan());
    let mut v = [0.0f64, -1000.0, 1000.0, 0.5];
    Activation::Tanh.forward_in_place(&mut v);
    assert_eq!(v, [0.0, -1.0, 1.0, 0.5f64.tanh()]);
    // ReLU and leaky ReLU pass NaN through, in the vector part and in the tail.
    for len in [3, 8, 11] {
        let mut v = vec![f32::NAN; len];
        Activation::Relu.forward_in_place(&mut v);
        assert!(v.iter().all(|x| x.is_nan()));
        Activation::LeakyRelu(0.2).forward_in_place(&mut v);
        assert!(v.iter().all(|x| x.is_nan()));
    }
    // Forward in place accepts any slope; identity changes nothing.
    let mut v = [-2.0f64, 3.0];
    Activation::LeakyRelu(-0.5).forward_in_place(&mut v);
    assert_eq!(v, [1.0, 3.0]);
    Activation::Identity.forward_in_place(&mut v);
    assert_eq!(v, [1.0, 3.0]);
}

#[test]
fn backward_errors() {
    let y = [0.5f32; 10];
    let mut g = [1.0f32; 9];
    let err = Activation::Relu.backward_in_place(&y, &mut g).unwrap_err();
    assert!(matches!(err, ConvError::BufferLength { .. }));
    assert_eq!(
        err.to_string(),
        "grad has 9 elements, expected 10 = the length of y, 10"
    );
    assert_eq!(g, [1.0; 9], "grad written despite the error");

    let mut g = [1.0f32; 10];
    for slope in [-0.1, f64::NAN] {
        let err = Activation::LeakyRelu(slope)
            .backward_in_place(&y, &mut g)
            .unwrap_err();
        assert!(matches!(err, ConvError::InvalidValue { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "leaky_relu slope {slope} cannot be differentiated from the output; \
                 expected a slope >= 0, so that the output's sign is the input's"
            )
        );
    }
    assert_eq!(g, [1.0; 10]);
    Activation::LeakyRelu(0.0)
        .backward_in_place(&y, &mut g)
        .unwrap();
}
