//! `alignlab scenario <name>`: one classroom scenario, headless. Prints the report JSON
//! (runs, final metrics, watched candidates, verdict); exits 0 when the phenomenon
//! appeared, 1 when it did not (the report is still printed), 2 on an error.
//!
//! `--sweep` trains the scenario over its robustness grid (training seeds 0–4 × learning
//! rate ×⅓, ×1, ×3) and prints every cell's verdict and the pass rate; it exits 0 when at
//! least 12 of the 15 cells pass. Ctrl-C stops between cells and prints the cells done.

use crate::ending::{Ending, Report};
use crate::interrupt;
use crate::progress::Progress;
use clap::Args;
use lab_core::checkpoint;
use lab_core::{LabError, Result};
use lab_cpu::CpuEngine;
use lab_train::scenario::{
    report_json, run_scenario, Scenario, SWEEP_LR_FACTORS, SWEEP_MIN_PASSES, SWEEP_SEEDS,
};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args)]
pub struct ScenarioArgs {
    /// 3d-properties | ches-predicts-harm | ranking-accuracy | noisy-labels | over-optimisation
    name: String,
    /// The assets directory (scenarios/ and models/starter/).
    #[arg(long, default_value = "assets")]
    assets: PathBuf,
    /// The starting (and reference) model; default: <assets>/models/starter.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Train with this seed instead of the preset's.
    #[arg(long)]
    seed: Option<u64>,
    /// Train with this learning rate instead of the preset's (variants with their own
    /// learning rate keep their ratio to it).
    #[arg(long)]
    lr: Option<f64>,
    /// Run the robustness grid: seeds 0–4 × learning rate ×⅓, ×1, ×3.
    #[arg(long, conflicts_with = "seed")]
    sweep: bool,
    /// Print each step's metrics to stderr as JSON lines.
    #[arg(long)]
    verbose: bool,
}

pub fn scenario_cmd(args: ScenarioArgs) -> Result<Report> {
    let loaded = Scenario::load(&args.assets, &args.name)?;
    let lr_factor = match args.lr {
        Some(lr) if lr.is_finite() && lr > 0.0 => lr / loaded.preset.experiment.lr,
        Some(lr) => return Err(LabError::param("lr", format!("{lr} must be a number > 0"))),
        None => 1.0,
    };
    let scenario = loaded.varied(args.seed, lr_factor)?;
    let model_dir =
        args.model.clone().unwrap_or_else(|| args.assets.join("models").join("starter"));
    let model = checkpoint::load_dir(&model_dir)?;
    let started = std::time::Instant::now();
    let verbose = args.verbose;
    let run = |scenario: &Scenario| {
        run_scenario(
            scenario,
            &model.tokenizer,
            || CpuEngine::new(model.config, model.params.clone()),
            |label, record| {
                if verbose {
                    eprintln!("{}", json!({"run": label, "metrics": record}));
                }
            },
        )
    };
    if !args.sweep {
        let report = run(&scenario)?;
        let mut out = report_json(&report);
        out["seconds"] = json!(started.elapsed().as_secs_f64());
        let ending = if report.verdict.passed { Ending::Done } else { Ending::VerdictFailed };
        return Ok(Report { json: out, ending, message: None });
    }

    interrupt::install();
    let cells = (SWEEP_SEEDS.len() * SWEEP_LR_FACTORS.len()) as u64;
    let mut progress = Progress::new("sweep", "cells", cells);
    let mut grid: Vec<Value> = Vec::new();
    'grid: for &factor in &SWEEP_LR_FACTORS {
        for &seed in &SWEEP_SEEDS {
            if interrupt::requested() {
                break 'grid;
            }
            let cell = scenario.varied(Some(seed), factor)?;
            let report = run(&cell)?;
            grid.push(json!({
                "seed": seed,
                "lr_factor": factor,
                "lr": cell.preset.experiment.lr,
                "passed": report.verdict.passed,
                "line": report.verdict.line,
                "checks": report.verdict.checks,
            }));
            progress.tick(grid.len() as u64, None);
        }
    }
    progress.finish();
    let passes = grid.iter().filter(|c| c["passed"] == json!(true)).count();
    let robust = passes >= SWEEP_MIN_PASSES;
    let json = json!({
        "scenario": scenario.name,
        "experiment": scenario.preset.experiment.to_query(),
        "grid": grid,
        "cells": grid.len(),
        "passed": passes,
        "pass_rate": passes as f64 / grid.len().max(1) as f64,
        "robust": robust,
        "must_pass": format!("{SWEEP_MIN_PASSES} of {cells}"),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let (ending, message) = if (grid.len() as u64) < cells {
        let message = format!("interrupted after {} of {cells} cells", grid.len());
        (Ending::Interrupted, Some(message))
    } else if robust {
        (Ending::Done, None)
    } else {
        let message = format!("passed in {passes} of {cells} cells; {SWEEP_MIN_PASSES} needed");
        (Ending::VerdictFailed, Some(message))
    };
    Ok(Report { json, ending, message })
}
