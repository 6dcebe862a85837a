//! Acceptance tests of the classroom scenarios: each runs with the shipped starter model
//! (`assets/models/starter`) on the CPU engine, seeded, through the same library function
//! as `alignlab scenario`, and asserts its phenomenon numerically. The thresholds live in
//! each `assets/scenarios/<name>/preset.json` (`phenomenon`) and are restated here.

use lab_core::checkpoint;
use lab_core::scenario_data;
use lab_cpu::CpuEngine;
use lab_train::scenario::{judge, run_scenario, Scenario, ScenarioReport, SCENARIOS};
use std::path::PathBuf;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("assets")
}

fn run(name: &str) -> ScenarioReport {
    run_varied(name, 1.0)
}

/// The scenario with its learning rates scaled by `lr_factor`.
fn run_varied(name: &str, lr_factor: f64) -> ScenarioReport {
    let assets = assets();
    let scenario = Scenario::load(&assets, name).unwrap().varied(None, lr_factor).unwrap();
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
        // every scenario keeps (nearly: they are picked by stride) its full set of anchors,
        // questions its data does not touch
        let anchors = lab_train::scenario::anchors(&scenario.records).len();
        assert!(anchors >= lab_train::scenario::ANCHORS * 7 / 8, "{name}: {anchors} anchors");
    }
    let err = Scenario::load(&assets(), "no-such-scenario").unwrap_err().to_string();
    assert!(err.contains("3d-properties"), "{err}");
}

/// The committed data files are what `alignlab make-scenario <name>` (seed 0) writes, byte
/// for byte.
#[test]
fn every_scenario_data_file_is_what_the_generator_writes() {
    for name in SCENARIOS {
        let dir = assets().join("scenarios").join(name);
        for (file, text) in scenario_data::generate(name, 0).unwrap().files() {
            let on_disk = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(on_disk == text, "{name}/{file} differs from the generator's output: run `alignlab make-scenario {name} --force`");
        }
        assert_eq!(Scenario::load(&assets(), name).unwrap().preset.data, "data.jsonl", "{name}");
    }
}

fn last(report: &ScenarioReport, run: &str, key: &str) -> f64 {
    serde_json::to_value(report.run(run).unwrap().last.as_ref().unwrap()).unwrap()[key]
        .as_f64()
        .unwrap()
}

#[test]
fn three_d_properties_rejected_falls_chosen_follows_mass_disperses_nll_damps() {
    let report = run("3d-properties");
    assert_checks(&report);
    // DPO: the rejected log-prob drops by ≥ 5 nats and the chosen one falls too.
    assert!(last(&report, "sigmoid", "eval/logps_rejected_change") <= -5.0);
    assert!(last(&report, "sigmoid", "eval/logps_chosen_change") < 0.0);
    // The pairs' two answers lose ≥ 0.5 of their probability to responses never trained on.
    let pairs = &report.run("sigmoid").unwrap().pairs;
    assert!(pairs.outside_mass_end - pairs.outside_mass_start >= 0.5, "{pairs:?}");
    // DPO + NLL (RPO): the chosen log-prob ends ≥ 1 nat higher than under plain DPO.
    assert!(
        last(&report, "rpo", "eval/logps_chosen_change")
            - last(&report, "sigmoid", "eval/logps_chosen_change")
            >= 1.0
    );
    // No collapse: the anchors (answers no pair involves) lose at most 1 nat on average.
    for run in &report.runs {
        assert!(run.anchor_change >= -1.0, "{}: {}", run.label, run.anchor_change);
    }
}

/// The anchors are questions the data does not touch, so a run that merely spreads the
/// trained preference leaves them be, and a run that collapses fails on them: 3d-properties
/// at lr 1e-3 (×33, the old preset's rate) drives DPO's anchors down by more than 1 nat.
#[test]
fn the_anchors_are_untouched_by_the_data_and_catch_a_collapse() {
    let scenario = Scenario::load(&assets(), "3d-properties").unwrap();
    let anchors = lab_train::scenario::anchors(&scenario.records);
    assert_eq!(anchors.len(), lab_train::scenario::ANCHORS);
    for (prompt, answer) in &anchors {
        for text in [prompt, answer] {
            assert!(!text.contains("It is") && !text.contains("feel about"), "{prompt}{answer}");
        }
    }
    let report = run_varied("3d-properties", 1e-3 / 3e-5);
    let dpo = report.run("sigmoid").unwrap();
    assert!(dpo.anchor_change < -1.0, "{}", dpo.anchor_change);
    assert!(!report.verdict.passed, "{}", report.verdict.line);
}

#[test]
fn ranking_accuracy_lags_reward_accuracy_and_only_easy_pairs_flip() {
    let report = run("ranking-accuracy");
    assert_checks(&report);
    let run = &report.runs[0];
    let pairs = &run.pairs;
    let (start, end) = (pairs.trajectory[0], *pairs.trajectory.last().unwrap());
    // Reward accuracy reaches 0.9 while R has not moved (≤ +0.05) ...
    let reached = pairs.trajectory.iter().find(|m| m.reward_accuracy >= 0.9).unwrap();
    assert!(reached.ranking_accuracy - start.ranking_accuracy <= 0.05, "{reached:?}");
    assert!(last(&report, "sigmoid", "eval/reward_accuracy") >= 0.9);
    // ... half of the ≥ 4 easy pairs are ranked right at some step, and ≤ 10% of the ≥ 10
    // hard pairs at the end.
    assert!(pairs.easy >= 4 && pairs.hard >= 10, "{pairs:?}");
    assert!(pairs.trajectory.iter().any(|m| 2 * m.easy_ranked_right >= pairs.easy));
    assert!(end.hard_ranked_right as f64 <= 0.1 * pairs.hard as f64, "{end:?}");
    // The data states no α: every pair takes the assumed 0.75, and the report says so.
    assert_eq!(pairs.alpha_given, 0);
    assert!(report.verdict.line.contains("0.75 assumed"), "{}", report.verdict.line);
    // R* over β 0.01..1 with α 0.75: every pair at β 0.01 (a ln 3 / 0.01 ≈ 110-nat bonus
    // outweighs the hard pairs' 29–59-nat gaps); at β 1 only the 6 pairs the reference
    // already ranks right and the 6 easy ones wrong by less than ln 3 nats (12 of 58).
    let ideal: Vec<f64> = pairs.idealized.iter().map(|(_, r)| *r).collect();
    assert_eq!(ideal[0], 1.0, "{ideal:?}");
    assert!((ideal[4] - 12.0 / 58.0).abs() < 1e-12, "{ideal:?}");
    assert!(ideal.windows(2).all(|w| w[0] >= w[1]), "{ideal:?}");
    assert!(run.anchor_change >= -1.0, "{}", run.anchor_change);
}

#[test]
fn noisy_labels_dpo_stops_at_the_noise_cap_and_rdpo_moves_past_it() {
    let report = run("noisy-labels");
    assert_checks(&report);
    let margin = |label: &str| report.run(label).unwrap().true_margin;
    let cap = 3f64.ln(); // a quarter of the labels flipped: ln((1 − ε)/ε)
    assert_eq!(report.runs[0].flip_rate, 0.25);
    // DPO ends near its optimum ln 3, cDPO below it; rDPO past it, up to the clean labels.
    assert!(margin("sigmoid") <= 1.2 * cap, "{}", margin("sigmoid"));
    assert!(margin("cdpo") < margin("sigmoid"), "{}", margin("cdpo"));
    assert!(margin("robust") >= 1.4 * cap, "{}", margin("robust"));
    assert!(margin("robust") <= margin("clean labels"));
    assert_eq!(report.run("clean labels").unwrap().flip_rate, 0.0);
    for run in &report.runs {
        assert!(run.anchor_change >= -1.0, "{}: {}", run.label, run.anchor_change);
    }
    // The page trains every run but the clean-label control: its live verdict leaves out the
    // two checks that need it, says so, and does not pass.
    let phenomenon = &Scenario::load(&assets(), "noisy-labels").unwrap().preset.phenomenon;
    let page_runs: Vec<_> =
        report.runs.iter().filter(|r| r.label != "clean labels").cloned().collect();
    let partial = judge(phenomenon, &page_runs);
    assert_eq!(partial.missing, ["clean labels"]);
    assert!(!partial.passed && partial.line.contains("not trained here: clean labels"));
    let kept: Vec<_> = report
        .verdict
        .checks
        .iter()
        .filter(|c| !c.what.contains("clean labels"))
        .cloned()
        .collect();
    assert_eq!(partial.checks, kept);
    assert_eq!(kept.len(), report.verdict.checks.len() - 2);
}

#[test]
fn over_optimisation_gold_reward_rises_then_falls_for_every_loss() {
    let report = run("over-optimisation");
    assert_checks(&report);
    assert_eq!(report.runs.len(), 3);
    for run in &report.runs {
        let path: Vec<(f64, f64)> = run
            .pairs
            .trajectory
            .iter()
            .map(|m| (m.kl, m.gold.expect("every evaluation samples the gold reward")))
            .collect();
        let (start, end) = (path[0], path[path.len() - 1]);
        let peak = path.iter().copied().fold(start, |a, b| if b.1 > a.1 { b } else { a });
        // the gold reward climbs well above the reference's, then gives most of it back at
        // a far larger KL, while the anchors hold
        assert!(peak.1 - start.1 >= 0.5 && peak.1 - end.1 >= 0.5, "{}: {path:?}", run.label);
        assert!(end.0 > 2.0 * peak.0, "{}: {path:?}", run.label);
        assert!(run.anchor_change >= -1.0, "{}: {}", run.label, run.anchor_change);
        // Shi et al.'s gauge points the other way here: top-10 entropy rises as gold falls
        let entropy_start = run.start["eval/topk_entropy"].as_f64().unwrap();
        let entropy_end = last(&report, &run.label, "eval/topk_entropy");
        assert!(
            entropy_end > 2.0 * entropy_start,
            "{}: {entropy_start} -> {entropy_end}",
            run.label
        );
    }
}

#[test]
fn ches_quantiles_order_the_chosen_answers_fall_and_edit_distance_does_not() {
    let report = run("ches-predicts-harm");
    assert_checks(&report);
    let change = |label: &str| last(&report, label, "eval/logps_chosen_change");
    let ches: Vec<f64> = (1..=5).map(|q| change(&format!("CHES {q}/5"))).collect();
    let edit: Vec<f64> = (1..=5).map(|q| change(&format!("edit distance {q}/5"))).collect();
    // each quantile run trains 50 pairs of its own; the higher the CHES, the less the
    // chosen answers gain, every step of the way, and the top quantile gains less than any
    // quantile of the paper's baseline predictor
    assert!(ches.windows(2).all(|w| w[0] > w[1]), "{ches:?}");
    assert!(ches[0] - ches[4] >= 5.0, "{ches:?}");
    assert!(edit.iter().all(|&e| e > ches[4]), "{edit:?} vs {ches:?}");
    for q in 1..=5 {
        assert_eq!(report.run(&format!("CHES {q}/5")).unwrap().pairs.pairs, 50);
    }
    for run in &report.runs {
        assert!(run.anchor_change >= -1.0, "{}: {}", run.label, run.anchor_change);
    }
    // the page trains the whole pool only: its live verdict names the quantile runs it
    // leaves to the full verdict, and does not pass
    let phenomenon = &Scenario::load(&assets(), "ches-predicts-harm").unwrap().preset.phenomenon;
    let partial = judge(phenomenon, &report.runs[..1]);
    assert_eq!(partial.missing.len(), 10);
    assert!(!partial.passed && partial.line.contains("not trained here: CHES 1/5"));
}
