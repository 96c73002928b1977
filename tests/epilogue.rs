//! The fused forward epilogue (`Conv2d::forward_activated`) gives exactly the bits of
//! `forward` followed by `Activation::forward_in_place`: the same element operations,
//! only done while the output block is in cache.

mod common;
use common::*;
use convgemm::{Activation, Conv2d};

#[test]
fn fused_epilogue_equals_forward_then_activation() {
    let activations = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu(0.1),
        Activation::Sigmoid,
        Activation::Tanh,
    ];
    for (i, case) in battery().iter().enumerate() {
        let conv = Conv2d::new(case.spec).unwrap();
        let (xl, wl, yl, kl) = lens(&conv);
        let mut rng = Rng::new(4000 + i as u64);
        let x: Vec<f32> = rng.floats(xl);
        let w: Vec<f32> = rng.floats(wl);
        let b: Vec<f32> = rng.floats(kl);
        for act in activations {
            for bias in [None, Some(&b[..])] {
                let mut fused = vec![0.0f32; yl];
                conv.forward_activated(&x, &w, bias, act, &mut fused)
                    .unwrap();
                let mut plain = vec![0.0f32; yl];
                conv.forward(&x, &w, bias, &mut plain).unwrap();
                act.forward_in_place(&mut plain);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert!(
                    bits(&fused) == bits(&plain),
                    "{}: {act:?}, bias {}",
                    case.name,
                    bias.is_some()
                );
                if act == Activation::Relu {
                    assert!(fused.iter().all(|v| *v >= 0.0));
                    assert!(
                        fused.iter().any(|v| *v > 0.0),
                        "{}: relu output all zero",
                        case.name
                    );
                }
            }
        }
    }
}

#[test]
fn fused_epilogue_checks_lengths() {
    let conv = Conv2d::new(battery()[0].spec).unwrap();
    let (xl, wl, yl, _) = lens(&conv);
    let err = conv
        .forward_activated(
            &vec![0.0f32; xl],
            &vec![0.0; wl],
            Some(&[0.0; 3]),
            Activation::Relu,
            &mut vec![0.0; yl],
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "bias has 3 elements, expected 4 = K 4");
}
