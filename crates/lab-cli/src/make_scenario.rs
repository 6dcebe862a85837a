//! `alignlab make-scenario <name|all>`: write a scenario's `data.jsonl`
//! from the seeded generator `lab_core::scenario_data`, or with `--check` verify that the
//! files on disk are exactly what it writes (an error names the first differing line).

use clap::Args;
use lab_core::files::{self, Outputs};
use lab_core::scenario_data::{generate, SCENARIOS};
use lab_core::{LabError, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct MakeScenarioArgs {
    /// 3d-properties | ches-predicts-harm | ranking-accuracy | noisy-labels | over-optimisation | all
    name: String,
    /// The directory the files go to; default: <assets>/scenarios/<name>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The assets directory.
    #[arg(long, default_value = "assets")]
    assets: PathBuf,
    /// The shipped files use seed 0.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compare with the files on disk instead of writing them.
    #[arg(long)]
    check: bool,
    /// Replace files that exist (regenerating the shipped data needs it).
    #[arg(long)]
    force: bool,
}

/// The first line (1-based) where two texts differ, with both versions of it.
fn first_difference(on_disk: &str, generated: &str) -> Option<(usize, String, String)> {
    let (a, b): (Vec<&str>, Vec<&str>) =
        (on_disk.split('\n').collect(), generated.split('\n').collect());
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)).map(|i| {
        (
            i + 1,
            a.get(i).unwrap_or(&"<end of file>").to_string(),
            b.get(i).unwrap_or(&"<end of file>").to_string(),
        )
    })
}

fn one(name: &str, dir: &Path, seed: u64, check: bool, force: bool) -> Result<Value> {
    let data = generate(name, seed)?;
    let mut files = Vec::new();
    let mut outputs = Outputs::new(force);
    if !check && !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir.display().to_string(), e))?;
    }
    for (file, text) in data.files() {
        let path = dir.join(file);
        let shown = path.display().to_string();
        if check {
            let on_disk = files::read_text(&path, lab_core::exchange::MAX_IMPORT_BYTES as u64)?;
            if let Some((line, have, want)) = first_difference(&on_disk, &text) {
                return Err(LabError::parse(format!("differs from `alignlab make-scenario {name} --seed {seed}`: the file has {have:?}, the generator writes {want:?}")).at_line(line).in_file(&shown));
            }
        } else {
            let staged = outputs.file(&path)?;
            std::fs::write(&staged, &text).map_err(|e| LabError::io(&shown, e))?;
        }
        files.push(json!({"path": shown, "records": text.lines().count(), "bytes": text.len()}));
    }
    outputs.commit()?;
    let done = if check { "checked: the files are what the generator writes" } else { "written" };
    Ok(json!({"scenario": name, "seed": seed, "files": files, "result": done}))
}

pub fn make_scenario_cmd(args: MakeScenarioArgs) -> Result<Value> {
    let names: Vec<&str> =
        if args.name == "all" { SCENARIOS.to_vec() } else { vec![args.name.as_str()] };
    if names.len() > 1 && args.out.is_some() {
        return Err(LabError::param("out", "give --out with one scenario name, not with \"all\""));
    }
    let mut reports = Vec::new();
    for name in names {
        let dir = args.out.clone().unwrap_or_else(|| args.assets.join("scenarios").join(name));
        reports.push(one(name, &dir, args.seed, args.check, args.force)?);
    }
    Ok(if reports.len() == 1 { reports.remove(0) } else { json!({"scenarios": reports}) })
}
