//! The digits example's network, from the example's own code: its whole-network gradient
//! matches finite differences, and a few training steps lower the loss.

#[allow(dead_code)]
#[path = "../examples/digits.rs"]
mod digits;

use digits::*;

/// The same check the example prints (see `gradient_check` for the error analysis: the
/// finite-difference noise is below 1e-6 relative, a wrong term is near 1).
#[test]
fn whole_network_gradient_matches_finite_differences() {
    let data = load_digits().unwrap();
    let (train, _) = split(data.labels.len());
    let (err, checked) = gradient_check(&data, &train[..4], 24).unwrap();
    assert!(checked > 150, "only {checked} parameters checked");
    assert!(err <= 1e-5, "max relative error {err:e}");
}

/// 80 Adam steps on batches of 32 in the fixed training order (a bit under two passes):
/// from an initial loss near ln 10 ≈ 2.3, the mean of the last five batch losses must be
/// below 0.3 times the mean of the first five. The run gives 2.32 → 0.29 (ratio 0.12), so
/// the bound leaves room for other CPUs' rounding but not for a net that does not learn.
#[test]
fn a_few_training_steps_lower_the_loss() {
    let data = load_digits().unwrap();
    let (train, test) = split(data.labels.len());
    assert_eq!((train.len(), test.len()), (1437, 360));
    let mut params: Vec<f32> = init_params(SEED);
    let mut grad = vec![0.0f32; params.len()];
    let mut adam = Adam::new(2e-3, params.len());
    let mut net = Net::<f32>::new(32).unwrap();
    let losses: Vec<f64> = train
        .chunks_exact(32)
        .cycle()
        .take(80)
        .map(|batch| train_step(&mut net, &data, batch, &mut params, &mut grad, &mut adam).unwrap())
        .collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[75..].iter().sum::<f64>() / 5.0;
    assert!(
        first > 1.5,
        "initial loss {first} is not that of an untrained net: {losses:?}"
    );
    assert!(
        last < 0.3 * first,
        "loss did not fall: {first} → {last}: {losses:?}"
    );
}
