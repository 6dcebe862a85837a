//! Acceptance tests of the classroom scenarios: each runs with the shipped starter model
//! (`assets/models/starter`) on the CPU engine, seeded, through the same library function
//! as `alignlab scenario`, and asserts its phenomenon numerically. The thresholds live in
//! each `assets/scenarios/<name>/preset.json` (`phenomenon`) and are restated here.

use lab_core::checkpoint;
use lab_cpu::CpuEngine;
use lab_train::scenario::{run_scenario, Scenario, ScenarioReport, SCENARIOS};
use std::path::PathBuf;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("assets")
}

fn run(name: &str) -> ScenarioReport {
    let assets = assets();
    let scenario = Scenario::load(&assets, name).unwrap();
    let (cfg, params) = checkpoint::load_dir(&assets.join("models").join("starter")).unwrap();
    let report = run_scenario(&scenario, || CpuEngine::new(cfg, params.clone()), |_, _| {}).unwrap();
    eprintln!("{name}: {}", report.verdict.line);
    report
}

/// Every check of the verdict, each a number against its preset threshold.
fn assert_checks(report: &ScenarioReport) {
    for check in &report.verdict.checks {
        assert!(check.ok, "{}: {} = {} must be {} ({})", report.scenario, check.what, check.value, check.must_be, report.verdict.line);
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

#[test]
fn three_d_properties_rejected_falls_chosen_follows_nll_damps() {
    let report = run("3d-properties");
    assert_checks(&report);
    let value = |run: &str, key: &str| serde_json::to_value(report.run(run).unwrap().last.as_ref().unwrap()).unwrap()[key].as_f64().unwrap();
    // DPO: the rejected log-prob drops by ≥ 10 nats and the chosen one falls too.
    assert!(value("sigmoid", "eval/logps_rejected_change") <= -10.0);
    assert!(value("sigmoid", "eval/logps_chosen_change") < 0.0);
    // DPO + NLL (RPO): the chosen log-prob ends ≥ 1 nat higher than under plain DPO.
    assert!(value("rpo", "eval/logps_chosen_change") - value("sigmoid", "eval/logps_chosen_change") >= 1.0);
}

#[test]
fn noisy_labels_robust_keeps_higher_heldout_ranking_accuracy() {
    let report = run("noisy-labels");
    assert_checks(&report);
    let held = |label: &str| report.run(label).unwrap().heldout.as_ref().unwrap().ranking_accuracy();
    // 25% flipped labels: robust's held-out R exceeds sigmoid's by ≥ 0.1.
    assert!(held("robust") - held("sigmoid") >= 0.1, "robust {} vs sigmoid {}", held("robust"), held("sigmoid"));
}

#[test]
fn ranking_accuracy_stays_low_while_reward_accuracy_climbs() {
    let report = run("ranking-accuracy");
    assert_checks(&report);
    let last = serde_json::to_value(report.runs[0].last.as_ref().unwrap()).unwrap();
    let start = &report.runs[0].start;
    // Reward accuracy ≥ 0.9, R rises by ≤ 0.15, R* − R ≥ 0.5.
    assert!(last["eval/reward_accuracy"].as_f64().unwrap() >= 0.9);
    assert!(last["eval/ranking_accuracy"].as_f64().unwrap() - start["eval/ranking_accuracy"].as_f64().unwrap() <= 0.15);
    assert!(last["eval/alignment_gap"].as_f64().unwrap() >= 0.5);
}
