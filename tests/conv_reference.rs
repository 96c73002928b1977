//! Every pass against the naive reference, on the named battery and on seeded random
//! specs, in f64 and f32, with the tolerance rule of `common::assert_within` and, on
//! small-integer data, bit for bit.

mod common;
use common::*;
use convgemm::{Conv2d, reference};

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

#[test]
fn random_specs_against_reference() {
    let mut rng = Rng::new(0xC0FFEE);
    for i in 0..400 {
        let spec = random_spec(&mut rng);
        let name = format!("random #{i} {spec:?}");
        check_against_reference::<f64>(&name, &spec, i % 2 == 0, 1000 + i);
        check_exact::<f32>(&name, &spec, 5000 + i);
    }
}

#[test]
fn random_depthwise_specs_against_reference() {
    let mut rng = Rng::new(0xD3E9);
    for i in 0..300 {
        let spec = random_depthwise_spec(&mut rng);
        let name = format!("random depthwise #{i} {spec:?}");
        check_against_reference::<f64>(&name, &spec, i % 2 == 0, 9000 + i);
        check_exact::<f32>(&name, &spec, 13000 + i);
    }
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
