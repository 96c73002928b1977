//! Every pass against the naive reference, on the named battery and on seeded random
//! specs, in f64 and f32, with the tolerance rule of `common::assert_within` and, on
//! small-integer data, bit for bit.

mod common;
use common::*;
use convgemm::{Conv2d, Conv2dSpec, reference};

#[test]
fn battery_f64_against_reference() {
    for (i, case) in battery().iter().enumerate() {
        for bias in [false, true] {
            check_against_reference::<f64>(case.name, &case.spec, bias, 100 + i as u64);
        }
    }
}

#[test]
fn battery_f32_against_reference() {
    for (i, case) in battery().iter().enumerate() {
        for bias in [false, true] {
            check_against_reference::<f32>(case.name, &case.spec, bias, 200 + i as u64);
        }
    }
}

#[test]
fn battery_exact_on_small_integers() {
    for (i, case) in battery().iter().enumerate() {
        check_exact::<f32>(case.name, &case.spec, 300 + i as u64);
        check_exact::<f64>(case.name, &case.spec, 400 + i as u64);
    }
}

/// `count` seeded specs from `spec_of`, each in f64 against the reference (tolerance
/// rule) and in f32 bit for bit on small integers; data seeds from `data_seed` (f64) and
/// `data_seed + 4000` (f32).
fn check_random_specs(
    label: &str,
    seed: u64,
    count: u64,
    data_seed: u64,
    spec_of: fn(&mut Rng) -> Conv2dSpec,
) {
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let spec = spec_of(&mut rng);
        let name = format!("{label} #{i} {spec:?}");
        check_against_reference::<f64>(&name, &spec, i % 2 == 0, data_seed + i);
        check_exact::<f32>(&name, &spec, data_seed + 4000 + i);
    }
}

#[test]
fn random_specs_against_reference() {
    check_random_specs("random", 0xC0FFEE, 400, 1000, random_spec);
}

#[test]
fn random_depthwise_specs_against_reference() {
    check_random_specs("random depthwise", 0xD3E9, 300, 9000, random_depthwise_spec);
}

/// The outputs are not trivially zero: each has exactly the reference's non-zero pattern
/// size, and that is not empty (so a kernel that writes nothing cannot match a reference
/// that happens to be small). Zeros are legitimate where no window reads an input or a
/// tap only ever reads padding, hence the comparison with the reference.
#[test]
fn outputs_are_not_mostly_zero() {
    let nz = |v: &[f32]| v.iter().filter(|a| **a != 0.0).count();
    for (i, case) in battery().iter().enumerate() {
        let conv = Conv2d::new(case.spec).unwrap();
        let spec = &case.spec;
        let (xl, wl, yl, _) = lens(&conv);
        let mut rng = Rng::new(i as u64);
        let (x, w, dy): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (rng.floats(xl), rng.floats(wl), rng.floats(yl));
        let (mut y, mut y_ref) = (vec![0.0; yl], vec![0.0; yl]);
        conv.forward(&x, &w, None, &mut y).unwrap();
        reference::conv2d_forward(spec, &x, &w, None, &mut y_ref).unwrap();
        let (mut dx, mut dx_ref) = (vec![0.0; xl], vec![0.0; xl]);
        conv.backward_data(&dy, &w, &mut dx).unwrap();
        reference::conv2d_backward_data(spec, &dy, &w, &mut dx_ref).unwrap();
        let (mut dw, mut dw_ref) = (vec![0.0; wl], vec![0.0; wl]);
        conv.backward_weights(&x, &dy, &mut dw, None).unwrap();
        reference::conv2d_backward_weights(spec, &x, &dy, &mut dw_ref, None).unwrap();
        for (what, fast, refr) in [
            ("y", &y, &y_ref),
            ("dx", &dx, &dx_ref),
            ("dw", &dw, &dw_ref),
        ] {
            assert_eq!(nz(fast), nz(refr), "{}: {what} non-zero count", case.name);
            assert!(nz(refr) > 0, "{}: {what} all zero", case.name);
        }
        assert_not_mostly_zero(case.name, &y);
    }
}
