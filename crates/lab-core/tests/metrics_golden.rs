//! The instruments against hand-computed values (the arithmetic is in the comments).

use lab_core::metrics::*;

const TOL: f64 = 1e-12;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOL * (1.0 + b.abs())
}

#[test]
fn trl_metrics_golden() {
    // β = 0.5; ρw = [−10+11, −20+18] = [1, −2]; ρl = [−12+10, −15+17] = [−2, 2]
    // βρw = [0.5, −1] → −0.25; βρl = [−1, 1] → 0; margins [1.5, −2] → −0.25; acc [1, 0] → 0.5
    let m = trl_metrics(0.5, &[-10.0, -20.0], &[-12.0, -15.0], &[-11.0, -18.0], &[-10.0, -17.0]);
    assert!(close(m.rewards_chosen, -0.25), "{m:?}");
    assert!(close(m.rewards_rejected, 0.0), "{m:?}");
    assert!(close(m.rewards_margins, -0.25), "{m:?}");
    assert!(close(m.rewards_accuracies, 0.5), "{m:?}");
    assert!(close(m.logps_chosen, -15.0), "{m:?}");
    assert!(close(m.logps_rejected, -13.5), "{m:?}");
    let j = m.to_json();
    for (key, want) in [
        ("rewards/chosen", -0.25),
        ("rewards/rejected", 0.0),
        ("rewards/margins", -0.25),
        ("rewards/accuracies", 0.5),
        ("logps/chosen", -15.0),
        ("logps/rejected", -13.5),
    ] {
        assert!(close(j[key].as_f64().unwrap(), want), "{key}: {j}");
    }
    assert_eq!(j.as_object().unwrap().len(), 6);
    // Equal rewards are not counted as correct (TRL uses a strict >).
    assert_eq!(trl_metrics(1.0, &[-1.0], &[-1.0], &[0.0], &[0.0]).rewards_accuracies, 0.0);
}

#[test]
fn reward_accuracy_and_ranking_accuracy_disagree() {
    // The policy still prefers the rejected answer (−10 < −5), so R = 0, but relative to a
    // reference that disliked it far more (ρw = 10 > ρl = 1) the reward accuracy is 1.
    let (pc, pr, rc, rr) = ([-10.0], [-5.0], [-20.0], [-6.0]);
    assert_eq!(trl_metrics(0.1, &pc, &pr, &rc, &rr).rewards_accuracies, 1.0);
    assert_eq!(ranking_accuracy(&pc, &pr), 0.0);
}

#[test]
fn ranking_accuracy_golden() {
    // ≥ counts ties: [−1 ≥ −2, −3 ≥ −3, −5 ≥ −4] → 2/3
    assert!(close(ranking_accuracy(&[-1.0, -3.0, -5.0], &[-2.0, -3.0, -4.0]), 2.0 / 3.0));
    assert_eq!(ranking_accuracy(&[], &[]), 0.0);
    // R̃: −10/5 = −2 ≥ −6/2 = −3 although −10 < −6; second pair −4/4 = −1 < −2/4 = −0.5
    let r_norm =
        ranking_accuracy_normalized(&[-10.0, -4.0], &[-6.0, -2.0], &[5.0, 4.0], &[2.0, 4.0]);
    assert!(close(r_norm, 0.5), "{r_norm}");
    assert_eq!(ranking_accuracy(&[-10.0, -4.0], &[-6.0, -2.0]), 0.0);
}

#[test]
fn idealized_ranking_accuracy_golden() {
    // α = 0.5: ln(α/(1−α)) = 0, so R* = mean 1[rw − rl > 0]; an equal reference gives 0.
    assert_eq!(idealized_ranking_accuracy(&[-7.0], &[-7.0], &[0.5], 0.1), 0.0);
    assert_eq!(
        idealized_ranking_accuracy(&[-7.0, -6.0, -8.0], &[-7.0, -7.0, -7.0], &[0.5; 3], 0.1),
        1.0 / 3.0
    );
    // α = 1 → 1 − 1e-3: ln(999)/0.1 = 69.068; −50 + 69.07 > 0 → 1, −70 + 69.07 < 0 → 0.
    assert_eq!(idealized_ranking_accuracy(&[-50.0, -70.0], &[0.0, 0.0], &[1.0, 1.0], 0.1), 0.5);
    assert_eq!(idealized_ranking_accuracy(&[-69.0, -69.1], &[0.0, 0.0], &[1.0, 1.0], 0.1), 0.5);
    // β = 1e-3, α = 0.9: (α/(1−α))^{1/β} = 9^1000 overflows f64, the log form does not:
    // ln 9 / 1e-3 = 2197.22; −2000 + 2197 > 0 → 1, −2300 + 2197 < 0 → 0.
    assert_eq!(
        idealized_ranking_accuracy(&[-2000.0, -2300.0], &[0.0, 0.0], &[0.9, 0.9], 1e-3),
        0.5
    );
}

#[test]
fn alignment_gap_is_idealized_minus_ranking() {
    assert!(close(alignment_gap(0.9, 0.35), 0.55));
    assert!(close(alignment_gap(0.2, 0.5), -0.3));
}

#[test]
fn flip_threshold_golden_and_monotone() {
    let ln2 = std::f64::consts::LN_2;
    assert!(close(flip_threshold(-4.0, -4.0, 0.1), ln2));
    // c = rl − rw = −3 − (−1) = −2, β = 1: −log σ(−2) = ln(1 + e²) = 2.1269280110429727
    assert!(close(flip_threshold(-1.0, -3.0, 1.0), 2.126_928_011_042_972_7));
    // c = 10, β = 0.1: −log σ(1) = ln(1 + e⁻¹) = 0.31326168751822286
    assert!(close(flip_threshold(-10.0, 0.0, 0.1), 0.313_261_687_518_222_86));
    // Extremes stay finite: ≈ e^{−1e4} → 0, and ≈ 1e4.
    let tiny = flip_threshold(-1e4, 0.0, 1.0);
    assert!(tiny.is_finite() && (0.0..1e-300).contains(&tiny), "{tiny}");
    assert!(close(flip_threshold(0.0, -1e4, 1.0), 1e4));
    // Increasing in the reference's preference for the chosen answer.
    let mut last = f64::NEG_INFINITY;
    for i in -40..=40 {
        let t = flip_threshold(i as f64 * 0.5, 0.0, 0.3);
        assert!(t > last, "not increasing at {i}: {t} <= {last}");
        last = t;
    }
}

#[test]
fn flip_threshold_decides_ranking_exactly() {
    // Chen et al. thm 4.1: lw ≥ ll  ⇔  L_DPO ≤ −log σ(βc); checked on a grid of pairs.
    let dpo = |beta: f64, lw: f64, ll: f64, rw: f64, rl: f64| {
        let z = beta * ((lw - rw) - (ll - rl));
        (1.0 + (-z).exp()).ln()
    };
    let values = [-9.0, -4.5, -3.0, -1.25, -0.5];
    for beta in [0.1, 0.5, 2.0] {
        for &lw in &values {
            for &ll in &values {
                for &rw in &values {
                    for &rl in &values {
                        let ranked = lw >= ll;
                        let below =
                            dpo(beta, lw, ll, rw, rl) <= flip_threshold(rw, rl, beta) + 1e-12;
                        let strictly_below =
                            dpo(beta, lw, ll, rw, rl) < flip_threshold(rw, rl, beta) - 1e-12;
                        assert!(
                            !strictly_below || ranked,
                            "β={beta} lw={lw} ll={ll} rw={rw} rl={rl}"
                        );
                        assert!(!ranked || below, "β={beta} lw={lw} ll={ll} rw={rw} rl={rl}");
                    }
                }
            }
        }
    }
}

#[test]
fn ches_on_hand_built_rows() {
    // C = 2. Chosen: len 2, first_scored 1 → positions 0..=0 → S⁺ = (1, 2) (row 1 ignored).
    // Rejected: len 2, first_scored 1 → S⁻ = (2, 0).
    // ⟨S⁺,S⁻⟩ = 2, ‖S⁺‖² = 5 → CHES = −3; |y⁺| = |y⁻| = 1 → normalised −3.
    let c = ches(&[1.0, 2.0, 9.0, 9.0], 1, 2, &[2.0, 0.0, 7.0, 7.0], 1, 2, 2);
    assert!(close(c.ches, -3.0) && close(c.ches_normalized, -3.0), "{c:?}");

    // Chosen (T=3): rows (1,2), (3,−1), (100,100); first_scored 1, len 3 → positions 0..=1,
    //   S⁺ = (4, 1), |y⁺| = 2.
    // Rejected (T=5, one padding row): rows (50,50), (1,1), (0,2), (9,9), (−8,−8);
    //   first_scored 2, len 4 → positions 1..=2, S⁻ = (1, 3), |y⁻| = 2.
    // ⟨S⁺,S⁻⟩ = 4 + 3 = 7, ‖S⁺‖² = 17 → CHES = −10; normalised 7/4 − 17/4 = −2.5.
    let chosen = [1.0, 2.0, 3.0, -1.0, 100.0, 100.0];
    let rejected = [50.0, 50.0, 1.0, 1.0, 0.0, 2.0, 9.0, 9.0, -8.0, -8.0];
    let c = ches(&chosen, 1, 3, &rejected, 2, 4, 2);
    assert!(close(c.ches, -10.0) && close(c.ches_normalized, -2.5), "{c:?}");

    // Unequal lengths: chosen as above (|y⁺| = 2), rejected S⁻ = (1,1)+(0,2)+(9,9) = (10, 12)
    // over 3 positions (first_scored 2, len 5): ⟨S⁺,S⁻⟩ = 52, CHES = 35,
    // normalised 52/(2·3) − 17/4 = 8.6667 − 4.25 = 4.416666...
    let c = ches(&chosen, 1, 3, &rejected, 2, 5, 2);
    assert!(close(c.ches, 35.0) && close(c.ches_normalized, 52.0 / 6.0 - 4.25), "{c:?}");

    // Identical sides: CHES is exactly 0.
    let c = ches(&chosen, 1, 3, &chosen, 1, 3, 2);
    assert!(c.ches == 0.0 && c.ches_normalized == 0.0, "{c:?}");
}

#[test]
fn displacement_flags_only_a_falling_chosen_with_a_growing_margin() {
    // chosen −5 → −6, rejected −5 → −9: chosen fell, margin 0 → 3.
    let d = displacement(-5.0, -6.0, -5.0, -9.0);
    assert_eq!((d.d_logp_chosen, d.d_logp_rejected, d.chosen_fell), (-1.0, -4.0, true));
    // chosen fell but the margin shrank (−5 → −6 vs −5 → −5.5).
    assert!(!displacement(-5.0, -6.0, -5.0, -5.5).chosen_fell);
    // chosen rose.
    assert!(!displacement(-5.0, -4.0, -5.0, -9.0).chosen_fell);
}

#[test]
fn top_gainers_sorted_by_gain() {
    // gains: [−1, +1, 0, +3.5, +1]
    let start = [-1.0, -2.0, -3.0, -4.0, -5.0];
    let now = [-2.0, -1.0, -3.0, -0.5, -4.0];
    let top = top_gainers(&start, &now, 3);
    let got: Vec<(usize, f64)> = top.iter().map(|g| (g.index, g.d_logp)).collect();
    assert_eq!(got, vec![(3, 3.5), (1, 1.0), (4, 1.0)]);
    assert_eq!(top_gainers(&start, &now, 99).len(), 5);
    assert!(top_gainers(&start, &now, 0).is_empty());
}

#[test]
fn mean_golden() {
    assert_eq!(mean(&[]), 0.0);
    assert!(close(mean(&[1.0, 2.0, 6.0]), 3.0));
}
