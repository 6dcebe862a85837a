//! Parity with real TRL: `fixtures/trl_golden.json` holds what TRL 1.16.0 computes (float64,
//! its own `DPOTrainer._compute_loss`, `CPOTrainer.cpo_loss`, `ORPOTrainer.odds_ratio_loss`)
//! on fixed inputs; `fixtures/trl_golden.py` produced it. Every number here must agree to
//! 1e-9 relative (plus 1e-12 absolute for values near 0): losses, the scalar loss, rewards,
//! and the gradients of the scalar loss w.r.t. all four log-prob arrays.

use lab_core::loss::{
    evaluate_trl_losses, mixed_loss, paired_loss, LossKind, LossMix, LossOut, LossParams, PairLogps,
};
use serde_json::Value;

const TOL_REL: f64 = 1e-9;
const TOL_ABS: f64 = 1e-12;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/trl_golden.json")).expect("fixture parses")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// Max abs difference, after asserting each entry is within tolerance.
fn assert_close(what: &str, got: &[f64], want: &[f64]) -> f64 {
    assert_close_tol(what, got, want, TOL_REL)
}

fn assert_close_tol(what: &str, got: &[f64], want: &[f64], tol_rel: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut max_diff: f64 = 0.0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let diff = (g - w).abs();
        assert!(
            diff <= tol_rel * w.abs() + TOL_ABS,
            "{what}[{i}]: ours {g} vs TRL {w} (diff {diff:e})"
        );
        max_diff = max_diff.max(diff);
    }
    max_diff
}

struct Case {
    pc: Vec<f64>,
    pr: Vec<f64>,
    rc: Vec<f64>,
    rr: Vec<f64>,
    lc: Vec<f64>,
    lr: Vec<f64>,
    params: LossParams,
}

impl Case {
    fn from(input: &Value) -> Case {
        let p = &input["params"];
        let label_smoothing = p["label_smoothing"].as_f64().unwrap();
        Case {
            pc: floats(&input["policy_chosen_logps"]),
            pr: floats(&input["policy_rejected_logps"]),
            rc: floats(&input["reference_chosen_logps"]),
            rr: floats(&input["reference_rejected_logps"]),
            lc: floats(&input["chosen_lengths"]),
            lr: floats(&input["rejected_lengths"]),
            params: LossParams {
                beta: p["beta"].as_f64().unwrap(),
                label_smoothing,
                simpo_gamma: p["simpo_gamma"].as_f64().unwrap(),
                discopop_tau: p["discopop_tau"].as_f64().unwrap(),
                // TRL's exo_pair reads its ε from label_smoothing
                exo_epsilon: if label_smoothing > 0.0 { label_smoothing } else { 1e-3 },
                ..LossParams::default()
            },
        }
    }
    fn view(&self) -> PairLogps<'_> {
        PairLogps {
            policy_chosen: &self.pc,
            policy_rejected: &self.pr,
            reference_chosen: &self.rc,
            reference_rejected: &self.rr,
            chosen_lengths: &self.lc,
            rejected_lengths: &self.lr,
        }
    }
}

fn assert_gradients(what: &str, ours: &LossOut, trl: &Value) -> f64 {
    [
        assert_close(
            &format!("{what} d_policy_chosen"),
            &ours.d_policy_chosen,
            &floats(&trl["d_policy_chosen"]),
        ),
        assert_close(
            &format!("{what} d_policy_rejected"),
            &ours.d_policy_rejected,
            &floats(&trl["d_policy_rejected"]),
        ),
        assert_close(
            &format!("{what} d_reference_chosen"),
            &ours.d_reference_chosen,
            &floats(&trl["d_reference_chosen"]),
        ),
        assert_close(
            &format!("{what} d_reference_rejected"),
            &ours.d_reference_rejected,
            &floats(&trl["d_reference_rejected"]),
        ),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

#[test]
fn fixture_was_made_with_trl_1_16() {
    assert_eq!(fixture()["trl_version"], "1.16.0");
}

/// The CLI entry point reproduces TRL's per-pair losses, scalar loss and rewards for all 15
/// DPO loss types (exo_pair only where TRL accepts it, label_smoothing > 0).
#[test]
fn cli_matches_trl_dpo_trainer_for_all_fifteen_loss_types() {
    let fx = fixture();
    let mut checked = 0;
    for (c, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let ours = evaluate_trl_losses(&case["input"]).unwrap();
        for kind in LossKind::TRL_DPO {
            let Some(trl) = case["trl"].get(kind.name()) else { continue };
            let mine = &ours[kind.name()];
            let what = format!("case {c} {kind}");
            let max = [
                assert_close(
                    &format!("{what} losses"),
                    &floats(&mine["losses"]),
                    &floats(&trl["losses"]),
                ),
                assert_close(
                    &format!("{what} loss"),
                    &[mine["loss"].as_f64().unwrap()],
                    &[trl["loss"].as_f64().unwrap()],
                ),
                assert_close(
                    &format!("{what} chosen_rewards"),
                    &floats(&mine["chosen_rewards"]),
                    &floats(&trl["chosen_rewards"]),
                ),
                assert_close(
                    &format!("{what} rejected_rewards"),
                    &floats(&mine["rejected_rewards"]),
                    &floats(&trl["rejected_rewards"]),
                ),
            ]
            .into_iter()
            .fold(0.0, f64::max);
            println!("{what}: max abs diff {max:e}");
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        15 * 4 - 1,
        "every loss type of every case, less exo_pair at label_smoothing 0"
    );
}

/// Our analytic gradients equal TRL's autograd gradients of the scalar loss.
#[test]
fn gradients_match_trl_autograd() {
    let fx = fixture();
    for (c, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let x = Case::from(&case["input"]);
        for kind in LossKind::TRL_DPO {
            let Some(trl) = case["trl"].get(kind.name()) else { continue };
            let ours = paired_loss(kind, &x.params, &x.view()).unwrap();
            let max = assert_gradients(&format!("case {c} {kind}"), &ours, trl);
            println!("case {c} {kind}: gradient max abs diff {max:e}");
        }
    }
}

/// RPO as TRL 1.x spells it: loss_type=["sigmoid","sft"], loss_weights=[1, 0.5].
#[test]
fn rpo_mix_matches_trl_multi_loss() {
    let fx = fixture();
    let mix = LossMix::parse("sigmoid+0.5*sft").unwrap();
    for (c, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let x = Case::from(&case["input"]);
        let trl = &case["trl"]["sigmoid+0.5*sft"];
        let ours = mixed_loss(&mix, &x.params, &x.view()).unwrap();
        assert_close(&format!("case {c} rpo loss"), &[ours.loss], &[trl["loss"].as_f64().unwrap()]);
        assert_close(
            &format!("case {c} rpo chosen_rewards"),
            &ours.chosen_rewards,
            &floats(&trl["chosen_rewards"]),
        );
        assert_gradients(&format!("case {c} rpo"), &ours, trl);
    }
}

/// SimPO and CPO against `CPOTrainer.cpo_loss` (the preference term; CPO with cpo_alpha = 0 so
/// no NLL is added), ORPO's odds-ratio term against `ORPOTrainer.odds_ratio_loss` (TRL's
/// `losses` there are β·logσ(log odds); ours are NLL − that). TRL's `odds_ratio_loss` casts
/// the log-probs to float32 (`.float()`) before computing, so ORPO agrees only to float32
/// precision: 1e-6 relative.
#[test]
fn simpo_cpo_orpo_match_trl_trainers() {
    let fx = fixture();
    for (c, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let x = Case::from(&case["input"]);
        let trl = &case["trl"];

        let simpo = paired_loss(LossKind::Simpo, &x.params, &x.view()).unwrap();
        assert_close(
            &format!("case {c} simpo losses"),
            &simpo.losses,
            &floats(&trl["cpo_trainer_simpo"]["losses"]),
        );
        assert_close(
            &format!("case {c} simpo chosen_rewards"),
            &simpo.chosen_rewards,
            &floats(&trl["cpo_trainer_simpo"]["chosen_rewards"]),
        );
        assert_close(
            &format!("case {c} simpo rejected_rewards"),
            &simpo.rejected_rewards,
            &floats(&trl["cpo_trainer_simpo"]["rejected_rewards"]),
        );

        let no_nll = LossParams { cpo_alpha: 0.0, ..x.params };
        let cpo = paired_loss(LossKind::Cpo, &no_nll, &x.view()).unwrap();
        assert_close(
            &format!("case {c} cpo losses"),
            &cpo.losses,
            &floats(&trl["cpo_trainer_sigmoid"]["losses"]),
        );
        assert_close(
            &format!("case {c} cpo chosen_rewards"),
            &cpo.chosen_rewards,
            &floats(&trl["cpo_trainer_sigmoid"]["chosen_rewards"]),
        );

        let orpo = paired_loss(LossKind::Orpo, &x.params, &x.view()).unwrap();
        let nll = paired_loss(LossKind::Sft, &x.params, &x.view()).unwrap().loss;
        let odds_term: Vec<f64> = orpo.losses.iter().map(|l| nll - l).collect();
        assert_close_tol(
            &format!("case {c} orpo odds-ratio term"),
            &odds_term,
            &floats(&trl["orpo_odds_ratio"]["losses"]),
            1e-6,
        );
        assert_close_tol(
            &format!("case {c} orpo chosen_rewards"),
            &orpo.chosen_rewards,
            &floats(&trl["orpo_odds_ratio"]["chosen_rewards"]),
            1e-6,
        );
        assert_close_tol(
            &format!("case {c} orpo rejected_rewards"),
            &orpo.rejected_rewards,
            &floats(&trl["orpo_odds_ratio"]["rejected_rewards"]),
            1e-6,
        );
    }
}

/// `alignlab losses` prints CPOTrainer's and ORPOTrainer's terms under TRL's names with TRL's
/// numbers (ORPO to float32 precision, as above).
#[test]
fn the_losses_command_prints_trl_trainer_terms_with_trl_numbers() {
    let fx = fixture();
    for (c, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let ours = lab_core::loss::evaluate_trl_losses(&case["input"]).unwrap();
        for (name, tol) in [
            ("cpo_trainer_simpo", TOL_REL),
            ("cpo_trainer_sigmoid", TOL_REL),
            ("orpo_odds_ratio", 1e-6),
        ] {
            for field in ["losses", "chosen_rewards"] {
                assert_close_tol(
                    &format!("case {c} {name} {field}"),
                    &floats(&ours[name][field]),
                    &floats(&case["trl"][name][field]),
                    tol,
                );
            }
        }
        for name in ["cdpo", "simpo", "cpo", "orpo", "dove"] {
            assert!(ours[name]["loss"].is_f64(), "case {c}: no {name}");
        }
    }
}
