//! The page's settings as one serializable value, and its URL form.
//!
//! The experiment (loss, hyper-parameters, seed, scenario) round-trips through
//! `lab_core::experiment::ExperimentConfig::to_query`/`from_query`; the page adds two keys of
//! its own: `compare`, the losses of the optional second and third runs, and `engine`
//! (`auto`, `webgpu` or `cpu`). A shared link therefore reproduces every run on the page.

use lab_core::experiment::{link_escape, link_unescape, ExperimentConfig};
use lab_core::loss::LossMix;
use lab_core::{LabError, Result};
use lab_train::scenario::{Preset, Variant};
use serde::{Deserialize, Serialize};

/// At most this many runs are drawn side by side (the main run and two compared ones).
pub const MAX_RUNS: usize = 3;

/// Which engine trains. `Auto`: WebGPU on a hardware adapter, else the CPU engine compiled
/// to wasm (a software adapter such as SwiftShader is far slower than the CPU engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    #[default]
    Auto,
    Webgpu,
    Cpu,
}

impl EngineChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Webgpu => "webgpu",
            EngineChoice::Cpu => "cpu",
        }
    }

    pub fn parse(text: &str) -> Result<EngineChoice> {
        match text {
            "auto" => Ok(EngineChoice::Auto),
            "webgpu" => Ok(EngineChoice::Webgpu),
            "cpu" => Ok(EngineChoice::Cpu),
            other => {
                Err(LabError::param("engine", format!("{other:?} is not auto, webgpu or cpu")))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UiState {
    pub experiment: ExperimentConfig,
    /// The compared runs, same data and start: a loss (`LossMix` spec form), then any
    /// settings of its own as `;key=value` in the link's keys (`robust;beta=0.5;label_smoothing=0.25`).
    pub compare: Vec<String>,
    /// The engine the link asks for (read when the page opens).
    #[serde(default)]
    pub engine: EngineChoice,
}

/// `%XX`-escape everything but unreserved characters (the loss specs hold `+`).
impl UiState {
    /// The query string (no `?`).
    pub fn to_query(&self) -> String {
        let mut query = self.experiment.to_query();
        if !self.compare.is_empty() {
            query.push_str("&compare=");
            query.push_str(&link_escape(&self.compare.join(",")));
        }
        if self.engine != EngineChoice::Auto {
            query.push_str("&engine=");
            query.push_str(self.engine.as_str());
        }
        query
    }

    /// Parse a query string; errors name the bad setting, as `ExperimentConfig::from_query`'s do.
    pub fn from_query(query: &str) -> Result<UiState> {
        let mut rest = Vec::new();
        let mut compare = Vec::new();
        let mut engine = EngineChoice::Auto;
        for part in query.trim_start_matches('?').split('&').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("compare", value)) => {
                    compare = link_unescape(value, "compare")?
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                }
                Some(("engine", value)) => engine = EngineChoice::parse(value)?,
                _ => rest.push(part),
            }
        }
        let state =
            UiState { experiment: ExperimentConfig::from_query(&rest.join("&"))?, compare, engine };
        state.validate()?;
        Ok(state)
    }

    /// Every run's loss must parse, and there are at most [`MAX_RUNS`] runs.
    pub fn validate(&self) -> Result<()> {
        self.experiment.validate()?;
        if self.compare.len() + 1 > MAX_RUNS {
            return Err(LabError::param(
                "compare",
                format!("at most {} compared runs", MAX_RUNS - 1),
            ));
        }
        for entry in &self.compare {
            self.run_experiment(entry)?;
        }
        Ok(())
    }

    /// The experiment of a compared run: the main one with the entry's loss and overrides.
    pub fn run_experiment(&self, entry: &str) -> Result<ExperimentConfig> {
        let mut parts = entry.split(';');
        let loss = parts.next().unwrap_or("").trim();
        LossMix::parse(loss).map_err(|e| LabError::param("compare", format!("{entry:?}: {e}")))?;
        // the main run's settings, each key once (the link form refuses a key given twice),
        // with the entry's loss and overrides in place of the main run's
        let mut settings: Vec<(String, String)> =
            self.experiment.link_pairs().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let mut set = |key: &str, value: String| {
            match settings.iter_mut().find(|(k, _)| k == key) {
                Some(setting) => setting.1 = value,
                None => settings.push((key.to_string(), value)),
            };
        };
        set("loss", loss.to_string());
        let mut overridden: Vec<&str> = Vec::new();
        for part in parts.map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                LabError::param("compare", format!("{entry:?}: {part:?} is not key=value"))
            })?;
            let key = key.trim();
            if matches!(key, "loss" | "scenario" | "compare") {
                return Err(LabError::param(
                    "compare",
                    format!("{entry:?}: {key} cannot differ between runs"),
                ));
            }
            if overridden.contains(&key) {
                return Err(LabError::param("compare", format!("{entry:?}: {key} given twice")));
            }
            overridden.push(key);
            set(key, value.trim().to_string());
        }
        let query: Vec<String> =
            settings.iter().map(|(k, v)| format!("{k}={}", link_escape(v))).collect();
        let query = query.join("&");
        ExperimentConfig::from_query(&query)
            .map_err(|e| LabError::param("compare", format!("{entry:?}: {e}")))
    }

    /// Every run's experiment, the main run first.
    pub fn experiments(&self) -> Result<Vec<ExperimentConfig>> {
        self.validate()?;
        let mut out = vec![self.experiment.clone()];
        for entry in &self.compare {
            out.push(self.run_experiment(entry)?);
        }
        Ok(out)
    }
}

/// The compared runs a scenario's preset lists, as the page's `compare` entries: the loss
/// of each variant with the settings it changes (a variant trained on the clean labels
/// trains on other data, so it is not a compared run).
pub fn preset_compare(preset: &Preset) -> Vec<String> {
    let base = preset.experiment.link_pairs();
    let mut out = Vec::new();
    for variant in preset.variants.iter().filter(|v| v.same_data()) {
        let experiment = variant.experiment(&preset.experiment);
        let mut entry = experiment.loss.clone();
        for (key, value) in experiment.link_pairs() {
            if key != "loss" && !base.contains(&(key, value.clone())) {
                entry.push_str(&format!(";{key}={value}"));
            }
        }
        out.push(entry);
    }
    out.truncate(MAX_RUNS - 1);
    out
}

/// The preset's runs that the page's runs are, in order, if they are: the scenario's own
/// data, every pair kept, the preset's compared runs, and the preset's settings but for
/// the seed and the learning rate (the robustness sweep varies those two).
pub fn preset_runs(
    preset: &Preset,
    experiment: &ExperimentConfig,
    compare: &[String],
    own_data: bool,
) -> Option<Vec<Variant>> {
    let free =
        |e: &ExperimentConfig| ExperimentConfig { scenario: None, seed: 0, lr: 0.0, ..e.clone() };
    let same = own_data
        && free(experiment) == free(&preset.experiment)
        && compare == preset_compare(preset).as_slice();
    same.then(|| {
        preset.runs().into_iter().filter(|v| v.same_data()).take(1 + compare.len()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each shipped scenario's name and preset.
    fn shipped_presets() -> Vec<(&'static str, Preset)> {
        let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
        lab_train::scenario::SCENARIOS
            .iter()
            .map(|&name| {
                let path = assets.join("scenarios").join(name).join("preset.json");
                (name, serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
            })
            .collect()
    }

    /// Each shipped scenario's compared runs, through the page's link and back, are the
    /// runs `alignlab scenario` trains.
    #[test]
    fn a_scenario_s_compared_runs_are_the_runs_the_cli_trains() {
        for (name, preset) in shipped_presets() {
            let state = UiState {
                experiment: preset.experiment.clone(),
                compare: preset_compare(&preset),
                ..UiState::default()
            };
            let back = UiState::from_query(&state.to_query()).unwrap();
            let runs = back.experiments().unwrap();
            let want: Vec<ExperimentConfig> = preset
                .variants
                .iter()
                .filter(|v| v.same_data())
                .take(MAX_RUNS - 1)
                .map(|v| v.experiment(&preset.experiment))
                .collect();
            assert_eq!(runs[0], preset.experiment, "{name}");
            assert_eq!(&runs[1..], want.as_slice(), "{name}: {:?}", state.compare);
        }
    }

    /// The page judges its runs live only while they are the preset's: through the link,
    /// with another seed or learning rate, but not with another β, other compared runs,
    /// dropped pairs or other data.
    #[test]
    fn the_page_s_runs_are_the_preset_s_only_with_its_settings() {
        for (name, preset) in shipped_presets() {
            let state = UiState {
                experiment: ExperimentConfig {
                    scenario: Some(name.to_string()),
                    ..preset.experiment.clone()
                },
                compare: preset_compare(&preset),
                ..UiState::default()
            };
            let back = UiState::from_query(&state.to_query()).unwrap();
            let runs = preset_runs(&preset, &back.experiment, &back.compare, true).unwrap();
            let labels: Vec<&str> = runs.iter().map(|v| v.label.as_str()).collect();
            let want: Vec<String> =
                preset.runs().into_iter().filter(|v| v.same_data()).map(|v| v.label).collect();
            assert_eq!(labels, want, "{name}");
            let mut moved = back.experiment.clone();
            (moved.seed, moved.lr) = (4, moved.lr * 3.0);
            assert!(preset_runs(&preset, &moved, &back.compare, true).is_some(), "{name}");
            assert!(preset_runs(&preset, &back.experiment, &back.compare, false).is_none());
            let mut other = back.experiment.clone();
            other.params.beta *= 2.0;
            assert!(preset_runs(&preset, &other, &back.compare, true).is_none(), "{name}");
            let fewer = &back.compare[..back.compare.len().saturating_sub(1)];
            if fewer.len() < back.compare.len() {
                assert!(preset_runs(&preset, &back.experiment, fewer, true).is_none(), "{name}");
            }
        }
    }

    #[test]
    fn round_trips_compared_runs_and_the_experiment() {
        let mut state =
            UiState { compare: vec!["ipo".into(), "sigmoid+0.5*sft".into()], ..Default::default() };
        state.experiment.params.beta = 0.3;
        state.experiment.seed = 7;
        state.experiment.scenario = Some("3d-properties".into());
        let query = state.to_query();
        assert!(query.contains("compare=ipo,sigmoid%2B0.5*sft"), "{query}");
        assert_eq!(UiState::from_query(&format!("?{query}")).unwrap(), state);
    }

    #[test]
    fn the_engine_choice_round_trips_and_a_bad_one_is_named() {
        let state = UiState { engine: EngineChoice::Webgpu, ..Default::default() };
        assert!(state.to_query().ends_with("&engine=webgpu"), "{}", state.to_query());
        assert_eq!(UiState::from_query(&state.to_query()).unwrap(), state);
        assert!(!UiState::default().to_query().contains("engine"));
        let err = UiState::from_query("engine=gpu").unwrap_err().to_string();
        assert!(err.contains("engine") && err.contains("\"gpu\""), "{err}");
    }

    #[test]
    fn bad_compared_loss_is_named() {
        let err = UiState::from_query("loss=sigmoid&compare=dpo").unwrap_err().to_string();
        assert!(err.contains("compare"), "{err}");
        let err = UiState::from_query("compare=ipo,hinge,robust").unwrap_err().to_string();
        assert!(err.contains("at most 2"), "{err}");
        let err = UiState::from_query("compare=robust%3Bbeta%3D-1").unwrap_err().to_string();
        assert!(err.contains("beta"), "{err}");
        let err =
            UiState::from_query("compare=robust%3Bbeta%3D1%3Bbeta%3D2").unwrap_err().to_string();
        assert!(err.contains("beta given twice"), "{err}");
    }

    #[test]
    fn a_compared_run_keeps_its_own_settings() {
        let state = UiState {
            compare: vec!["robust;beta=0.5;label_smoothing=0.25".into()],
            ..Default::default()
        };
        let back = UiState::from_query(&state.to_query()).unwrap();
        assert_eq!(back, state);
        let runs = back.experiments().unwrap();
        assert_eq!(runs[1].loss, "robust");
        assert_eq!(runs[1].params.beta, 0.5);
        assert_eq!(runs[1].params.label_smoothing, 0.25);
        assert_eq!(runs[1].lr, runs[0].lr);
        assert_eq!(runs[0].params.label_smoothing, 0.0);
    }
}
