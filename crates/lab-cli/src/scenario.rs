//! `alignlab scenario <name>`: one classroom scenario, headless. Prints the report JSON
//! (runs, final metrics, watched candidates, verdict); exits 0 when the phenomenon
//! appeared, 1 when it did not (the report is still printed), 2 on an error.

use crate::ending::{Ending, Report};
use clap::Args;
use lab_core::checkpoint;
use lab_core::Result;
use lab_cpu::CpuEngine;
use lab_train::scenario::{report_json, run_scenario, Scenario};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct ScenarioArgs {
    /// no-never | refusals | ranking-accuracy | noisy-labels | 3d-properties | length
    name: String,
    /// The assets directory (scenarios/ and models/starter/).
    #[arg(long, default_value = "assets")]
    assets: PathBuf,
    /// The starting (and reference) model; default: <assets>/models/starter.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print each step's metrics to stderr as JSON lines.
    #[arg(long)]
    verbose: bool,
}

pub fn scenario_cmd(args: ScenarioArgs) -> Result<Report> {
    let scenario = Scenario::load(&args.assets, &args.name)?;
    let model_dir =
        args.model.clone().unwrap_or_else(|| args.assets.join("models").join("starter"));
    let (cfg, params) = checkpoint::load_dir(&model_dir)?;
    let started = std::time::Instant::now();
    let verbose = args.verbose;
    let report = run_scenario(
        &scenario,
        || CpuEngine::new(cfg, params.clone()),
        |label, record| {
            if verbose {
                eprintln!("{}", json!({"run": label, "metrics": record}));
            }
        },
    )?;
    let mut out = report_json(&report);
    out["seconds"] = json!(started.elapsed().as_secs_f64());
    let ending = if report.verdict.passed { Ending::Done } else { Ending::VerdictFailed };
    Ok(Report { json: out, ending, message: None })
}
