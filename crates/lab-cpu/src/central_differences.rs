//! The gradient check the tests of [`crate::model`] and [`crate::reference`] share: an
//! analytic gradient against central differences, in f64.

/// h of the central difference.
const H: f64 = 1e-6;
/// |analytic − numeric| ≤ ABS + REL·|numeric|: central differences in f64 with h = 1e-6
/// are good to ~1e-9 on these O(1) functions.
const ABS: f64 = 1e-7;
const REL: f64 = 1e-6;

/// Check `analytic` = ∂loss/∂x at every index of `x`.
pub fn check(name: &str, x: &mut [f64], analytic: &[f64], loss: &mut dyn FnMut(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let mut worst = 0.0f64;
    for i in 0..x.len() {
        let x0 = x[i];
        x[i] = x0 + H;
        let up = loss(x);
        x[i] = x0 - H;
        let down = loss(x);
        x[i] = x0;
        let numeric = (up - down) / (2.0 * H);
        let err = (analytic[i] - numeric).abs();
        assert!(
            err <= ABS + REL * numeric.abs(),
            "{name}[{i}]: analytic {} numeric {numeric} (err {err:e})",
            analytic[i]
        );
        worst = worst.max(err);
    }
    eprintln!("{name}: max abs diff {worst:e} over {} entries", x.len());
}
