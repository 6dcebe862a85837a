//! Acceptance tests of the classroom scenarios: each runs with the shipped starter model
//! (`assets/models/starter`) on the CPU engine, seeded, through the same library function
//! as `alignlab scenario`, and asserts its phenomenon numerically. The thresholds live in
//! each `assets/scenarios/<name>/preset.json` (`phenomenon`) and are restated here.

use lab_core::checkpoint;
use lab_core::scenario_data;
use lab_cpu::CpuEngine;
use lab_train::scenario::{run_scenario, Scenario, ScenarioReport, SCENARIOS};
use std::path::PathBuf;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("assets")
}

fn run(name: &str) -> ScenarioReport {
    let assets = assets();
    let scenario = Scenario::load(&assets, name).unwrap();
    let model = checkpoint::load_dir(&assets.join("models").join("starter")).unwrap();
    let report = run_scenario(
        &scenario,
        &model.tokenizer,
        || CpuEngine::new(model.config, model.params.clone()),
        |_, _| {},
    )
    .unwrap();
    eprintln!("{name}: {}", report.verdict.line);
    // every run reports how far it moved from the reference: both KLs at its final step
    assert_eq!(report.verdict.kl.len(), report.runs.len());
    for kl in &report.verdict.kl {
        assert!(kl.kl > 0.0 && kl.kl.is_finite(), "{name}, {}: eval/kl {}", kl.run, kl.kl);
        assert!(kl.kl_sampled.is_some_and(f64::is_finite), "{name}, {}: {kl:?}", kl.run);
    }
    assert!(report.verdict.line.contains("KL to the reference"), "{}", report.verdict.line);
    report
}

/// Every check of the verdict, each a number against its preset threshold.
fn assert_checks(report: &ScenarioReport) {
    for check in &report.verdict.checks {
        assert!(
            check.ok,
            "{}: {} = {} must be {} ({})",
            report.scenario, check.what, check.value, check.must_be, report.verdict.line
        );
    }
    assert!(report.verdict.passed);
}

#[test]
fn every_scenario_loads_with_its_explanation() {
    for name in SCENARIOS {
        let scenario = Scenario::load(&assets(), name).unwrap();
        assert!(scenario.explanation.len() > 200, "{name}: README.md should explain the scenario");
        assert!(!scenario.records.is_empty());
    }
    let err = Scenario::load(&assets(), "no-such-scenario").unwrap_err().to_string();
    assert!(err.contains("no-never"), "{err}");
}

/// The committed data files are what `alignlab make-scenario <name>` (seed 0) writes, byte
/// for byte, and a preset names a held-out file exactly when the generator makes one.
#[test]
fn every_scenario_data_file_is_what_the_generator_writes() {
    for name in SCENARIOS {
        let dir = assets().join("scenarios").join(name);
        let generated = scenario_data::generate(name, 0).unwrap();
        for (file, text) in generated.files() {
            let on_disk = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(on_disk == text, "{name}/{file} differs from the generator's output: run `alignlab make-scenario {name} --force`");
        }
        let scenario = Scenario::load(&assets(), name).unwrap();
        assert_eq!(scenario.preset.data, "data.jsonl", "{name}");
        assert_eq!(
            scenario.preset.heldout.as_deref(),
            generated.heldout.as_ref().map(|_| "heldout.jsonl"),
            "{name}"
        );
    }
}

#[test]
fn no_never_prefers_no_and_yes_takes_the_mass() {
    let report = run("no-never");
    assert_checks(&report);
    let p = |completion: &str| {
        let w = report.runs[0].watched.iter().find(|w| w.completion == completion).unwrap();
        (w.reference_logp.exp(), w.policy_logp.exp())
    };
    let ((no_ref, no_now), (never_ref, never_now), (yes_ref, yes_now)) =
        (p(" No"), p(" Never"), p(" Yes"));
    // Preset (lr 5e-6, 600 steps, batch 1, seed 0), one prompt: p(No) 0.76 -> 0.43,
    // p(Never) 0.23 -> ~0, p(Yes) 0.014 -> 0.50.
    assert!(never_now < 0.01 * never_ref, "DPO's own goal: Never {never_ref} -> {never_now}");
    assert!(no_now < no_ref, "the preferred answer is displaced: No {no_ref} -> {no_now}");
    assert!(yes_now >= 2.0 * yes_ref, "Yes at least doubles: {yes_ref} -> {yes_now}");
}

#[test]
fn three_d_properties_rejected_falls_chosen_follows_nll_damps() {
    let report = run("3d-properties");
    assert_checks(&report);
    let value = |run: &str, key: &str| {
        serde_json::to_value(report.run(run).unwrap().last.as_ref().unwrap()).unwrap()[key]
            .as_f64()
            .unwrap()
    };
    // DPO: the rejected log-prob drops by ≥ 10 nats and the chosen one falls too.
    assert!(value("sigmoid", "eval/logps_rejected_change") <= -10.0);
    assert!(value("sigmoid", "eval/logps_chosen_change") < 0.0);
    // DPO + NLL (RPO): the chosen log-prob ends ≥ 1 nat higher than under plain DPO.
    assert!(
        value("rpo", "eval/logps_chosen_change") - value("sigmoid", "eval/logps_chosen_change")
            >= 1.0
    );
}

#[test]
fn noisy_labels_robust_keeps_higher_heldout_ranking_accuracy() {
    let report = run("noisy-labels");
    assert_checks(&report);
    let held =
        |label: &str| report.run(label).unwrap().heldout.as_ref().unwrap().ranking_accuracy();
    // 25% flipped labels, preset (β 0.5, lr 1e-4, 60 steps, seed 0): held-out R 0.50 ->
    // sigmoid 0.88, robust 1.00; robust's exceeds sigmoid's by ≥ 0.1.
    assert!(
        held("robust") - held("sigmoid") >= 0.1,
        "robust {} vs sigmoid {}",
        held("robust"),
        held("sigmoid")
    );
}

#[test]
fn ranking_accuracy_stays_low_while_reward_accuracy_climbs() {
    let report = run("ranking-accuracy");
    assert_checks(&report);
    let last = serde_json::to_value(report.runs[0].last.as_ref().unwrap()).unwrap();
    let start = &report.runs[0].start;
    // Reward accuracy ≥ 0.9, R rises by ≤ 0.15, R* − R ≥ 0.5.
    assert!(last["eval/reward_accuracy"].as_f64().unwrap() >= 0.9);
    assert!(
        last["eval/ranking_accuracy"].as_f64().unwrap()
            - start["eval/ranking_accuracy"].as_f64().unwrap()
            <= 0.15
    );
    assert!(last["eval/alignment_gap"].as_f64().unwrap() >= 0.5);
}

#[test]
fn refusals_fall_with_all_pairs_and_less_without_high_ches_pairs() {
    let report = run("refusals");
    assert_checks(&report);
    let refusal = |label: &str| report.run(label).unwrap().refusal_probability.unwrap();
    let (before, after) = refusal("sigmoid");
    let (_, filtered) = refusal("without high-CHES pairs");
    // Preset seed 0 (lr 5e-4, β 0.5): 0.88 → 0.24 with all pairs, → 0.54 without the high-CHES half.
    assert!(before - after >= 0.1, "refusal probability {before} -> {after}");
    assert!(filtered - after >= 0.05, "filtered {filtered} vs all pairs {after}");
}

#[test]
fn length_dpo_prefers_length_normalized_losses_much_less() {
    let report = run("length");
    assert_checks(&report);
    let shift =
        |label: &str| report.run(label).unwrap().heldout.as_ref().unwrap().mean_margin_shift();
    // Preset seed 0 (lr 2e-4, 30 steps): held-out log π(long) − log π(short) moves
    // sigmoid +26.4, simpo +0.7, sigmoid_norm +9.0 nats; DPO ≥ 2 nats and ≥ 2× each normalised loss.
    assert!(shift("sigmoid") >= 2.0, "sigmoid shift {}", shift("sigmoid"));
    for label in ["simpo", "sigmoid_norm"] {
        assert!(
            shift("sigmoid") >= 2.0 * shift(label),
            "sigmoid {} vs {label} {}",
            shift("sigmoid"),
            shift(label)
        );
    }
}
