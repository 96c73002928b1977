//! The correctness check run before timing: one pass on the layer at batch 1, against the
//! naive reference, with the tolerance rule of `tests/common/mod.rs`.
//!
//! ## The tolerance
//! A sum of `L` products computed in any order with unit roundoff `u = ε/2` is off by at
//! most `(L − 1)·u·Σ|terms|` (Higham, *Accuracy and Stability of Numerical Algorithms*,
//! §3.1; blocking and FMA only lower it). The reference sums in `f64` and rounds once,
//! adding at most `u·Σ|terms|`. So every output element obeys
//! `|fast − ref| ≤ (L + 1)·ε·Σ|terms|` (a factor 2 to spare), where `Σ|terms|` is the
//! reference run on the absolute values of the inputs and `L` the pass's reduction
//! length:
//!
//! | pass | L |
//! |---|---|
//! | fwd | `(C/groups)·R·S + 1` (the bias is one more term) |
//! | bwd_data | `(K/groups)·R·S` |
//! | bwd_weight | `N·P·Q` (here `N = 1`; the bias gradient sums the same pixels) |
//!
//! The check fails when any element exceeds its own bound. It reports
//! `max |fast − ref|` and the largest bound, `(L + 1)·ε·max Σ|terms|`, both divided by
//! `max |ref|`: the max relative error and the tolerance on it. For f32 on the suite that tolerance is about 1e-3 to 1e-5,
//! while a wrong index or a missed tile gives errors of order 1.

use crate::layers::{Buffers, Layer, PassKind};
use convgemm::{Conv2d, Element};

/// The outcome of one check.
pub struct CheckResult {
    /// `max |fast − ref| / max |ref|`.
    pub rel_err: f64,
    /// The tolerance on `rel_err`: `(L + 1)·ε·max Σ|terms| / max |ref|`.
    pub rel_tol: f64,
    /// Whether every element was within its own bound `(L + 1)·ε·Σ|terms|` (which
    /// implies `rel_err <= rel_tol`).
    pub within: bool,
}

impl CheckResult {
    /// Whether every element is within its bound.
    pub fn passed(&self) -> bool {
        self.within && self.rel_err <= self.rel_tol
    }
}

/// The batch of the check: the reference costs one multiply-add per FLOP pair in plain
/// loops, so one image keeps it to well under a second per pass on every suite layer.
pub const CHECK_BATCH: usize = 1;

/// Runs `pass` of `layer` at batch [`CHECK_BATCH`] with convgemm and with the reference
/// (plus the reference on absolute values for the bound), and compares. With
/// `accumulate`, convgemm's accumulating form adds into the zeroed outputs.
pub fn check_pass<T: Element>(
    layer: &Layer,
    pass: PassKind,
    accumulate: bool,
) -> Result<CheckResult, String> {
    let conv = layer.with_batch(CHECK_BATCH.min(layer.conv.spec().batch))?;
    let mut fast = Buffers::<T>::new(&conv, 0x5eed);
    fast.accumulate = accumulate;
    let mut reference = Buffers::<T>::new(&conv, 0x5eed);
    let mut magnitude = reference.abs();
    let fail =
        |what: &str, e: convgemm::ConvError| format!("{} {}: {what}: {e}", layer.name, pass.name());
    fast.run(&conv, pass).map_err(|e| fail("convgemm", e))?;
    reference
        .run_reference(&conv, pass)
        .map_err(|e| fail("reference", e))?;
    magnitude
        .run_reference(&conv, pass)
        .map_err(|e| fail("reference", e))?;
    let mut fast_out = fast.output(pass);
    perturb_for_self_test(&mut fast_out, &reference.output(pass))?;
    Ok(compare(
        &fast_out,
        &reference.output(pass),
        &magnitude.output(pass),
        reduction_len(&conv, pass),
        T::EPSILON.to_f64(),
    ))
}

/// The environment variable that makes the check fail on purpose, to test that a wrong
/// result ends the run (CI does): `CONVGEMM_SUITE_PERTURB=0.01` adds 1% of `max |ref|` to
/// the first element of convgemm's output before the comparison.
pub const PERTURB_VAR: &str = "CONVGEMM_SUITE_PERTURB";

fn perturb_for_self_test<T: Element>(out: &mut [T], reference: &[T]) -> Result<(), String> {
    let Ok(text) = std::env::var(PERTURB_VAR) else {
        return Ok(());
    };
    let amount: f64 = text
        .parse()
        .ok()
        .filter(|a: &f64| a.is_finite())
        .ok_or_else(|| format!("{PERTURB_VAR}: expected a number, got {text:?}"))?;
    if let Some(first) = out.first_mut() {
        *first = T::from_f64(first.to_f64() + amount * max_abs(reference));
    }
    Ok(())
}

/// The reduction length `L` of one output element of `pass` (see the module docs).
pub fn reduction_len(conv: &Conv2d, pass: PassKind) -> usize {
    let [_, cg, r, s] = conv.weight_dims();
    let [n, k, p, q] = conv.output_dims();
    let groups = conv.spec().groups;
    match pass {
        PassKind::Fwd => cg * r * s + 1,
        PassKind::BwdData => k / groups * r * s,
        PassKind::BwdWeight => n * p * q,
    }
}

fn max_abs<T: Element>(v: &[T]) -> f64 {
    v.iter().map(|a| a.to_f64().abs()).fold(0.0, f64::max)
}

/// Compares `fast` with `reference`: every element must be within its own bound
/// `(L + 1)·ε·magnitude`; the reported tolerance is the largest of these bounds.
fn compare<T: Element>(
    fast: &[T],
    reference: &[T],
    magnitude: &[T],
    l: usize,
    eps: f64,
) -> CheckResult {
    let factor = (l as f64 + 1.0) * eps;
    let mut err = 0.0f64;
    let mut within = true;
    for ((f, r), m) in fast.iter().zip(reference).zip(magnitude) {
        let e = (f.to_f64() - r.to_f64()).abs();
        // A NaN compares false here, so it fails.
        within &= e <= factor * m.to_f64();
        err = if e.is_nan() {
            f64::INFINITY
        } else {
            err.max(e)
        };
    }
    let tol = factor * max_abs(magnitude);
    // Relative to the largest reference value; an all-zero reference leaves them absolute.
    let scale = match max_abs(reference) {
        m if m > 0.0 => m,
        _ => 1.0,
    };
    CheckResult {
        rel_err: err / scale,
        rel_tol: tol / scale,
        within,
    }
}
