//! Classroom scenarios: a dataset, a preset and a phenomenon from a paper that the preset
//! makes appear within a minute of CPU training of the starter model.
//!
//! A scenario is a directory `assets/scenarios/<name>/` with
//! - `data.jsonl`: the training pairs (TRL JSONL plus our fields, see `lab_core::data`),
//!   written by `lab_core::scenario_data` (`alignlab make-scenario`);
//! - `preset.json`: [`Preset`]: title, paper, the experiment (loss, β, lr, steps, seed,
//!   batch size: `lab_core::experiment::ExperimentConfig`), the runs to compare, the
//!   candidate responses to watch, an optional held-out file, and the phenomenon with the
//!   thresholds its verdict asserts;
//! - `README.md`: one paragraph saying what happens and which paper it comes from.
//!
//! [`run_scenario`] trains every run of the preset from the same starting weights (the
//! starter model, which is also the frozen reference) and checks the phenomenon; the CLI
//! (`alignlab scenario`) and the acceptance tests (`tests/tests/scenarios.rs`) both call it.

use crate::session::{Session, SessionConfig, StepRecord};
use lab_core::data::{encode_example, parse_jsonl, Record};
use lab_core::engine::{Engine, TokenBatch};
use lab_core::experiment::ExperimentConfig;
use lab_core::loss::LossParams;
use lab_core::tokenizer::Tokenizer;
use lab_core::{LabError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub use lab_core::scenario_data::SCENARIOS;

/// Candidate responses whose log-probs are reported under the reference and the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    pub prompt: String,
    pub candidates: Vec<String>,
}

/// A run to compare with the preset's own (same data, same start), overriding some settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub label: String,
    #[serde(default)]
    pub loss: Option<String>,
    #[serde(default)]
    pub params: Option<LossParams>,
    #[serde(default)]
    pub lr: Option<f64>,
    /// Train without this fraction of the pairs, those with the highest CHES at the start
    /// (Razin et al. 2024's mitigation).
    #[serde(default)]
    pub drop_top_ches: Option<f64>,
}

impl Variant {
    /// The experiment of this run: the preset's, with the loss, parameters and learning
    /// rate the variant sets.
    pub fn experiment(&self, base: &ExperimentConfig) -> ExperimentConfig {
        ExperimentConfig {
            loss: self.loss.clone().unwrap_or_else(|| base.loss.clone()),
            params: self.params.unwrap_or(base.params),
            lr: self.lr.unwrap_or(base.lr),
            ..base.clone()
        }
    }
}

/// What the verdict asserts, with its thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Phenomenon {
    /// Likelihood displacement onto an unseen response (Razin et al. 2024): on `watch[0]`,
    /// p(`gainer`) grows at least `min_gain_ratio`-fold while p(`preferred`) falls.
    Displacement { preferred: String, gainer: String, min_gain_ratio: f64 },
    /// Refusals unlearned (Razin et al. 2024): the mean probability that a held-out prompt's
    /// answer starts with `refusal_prefix` falls by at least `min_drop`; the variant that
    /// drops high-CHES pairs keeps it at least `min_mitigation` higher.
    RefusalDrop { refusal_prefix: String, min_drop: f64, min_mitigation: f64 },
    /// Ranking accuracy stays low (Chen et al. 2024): reward accuracy ≥
    /// `min_reward_accuracy`, R rises by at most `max_ranking_gain`, R* − R ≥ `min_gap`, and
    /// no hard pair is ranked right: a pair whose DPO loss would have to fall below
    /// `hard_flip_threshold` to flip (its flip threshold, Chen et al. thm. 4.1, is smaller).
    RankingStaysLow {
        min_reward_accuracy: f64,
        max_ranking_gain: f64,
        min_gap: f64,
        hard_flip_threshold: f64,
    },
    /// Noisy labels (Chowdhury et al. 2024): the variant `robust` reaches a held-out ranking
    /// accuracy at least `min_margin` above the preset's own run.
    RobustBeatsNoisy { robust: String, min_margin: f64 },
    /// 3D properties (Yan et al. 2024): in the preset's run the rejected log-prob falls by at
    /// least `min_rejected_drop` nats and the chosen one falls too; the variant `damped`
    /// (DPO + NLL) keeps the chosen log-prob at least `min_damping` nats higher.
    ThreeD { damped: String, min_rejected_drop: f64, min_damping: f64 },
    /// Length exploitation (Meng et al. 2024; Dubois et al. 2024): on held-out pairs of a
    /// long and a short answer with the same content, the preset's run raises
    /// log π(long) − log π(short) by at least `min_dpo_shift` nats, at least `min_ratio`
    /// times as much as each of the `normalized` variants.
    LengthExploitation { normalized: Vec<String>, min_dpo_shift: f64, min_ratio: f64 },
}

/// `preset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub title: String,
    /// The paper the phenomenon comes from.
    pub paper: String,
    /// The training data, relative to the scenario directory.
    pub data: String,
    /// Held-out pairs (or, for refusals, held-out prompts as pairs), relative to the directory.
    #[serde(default)]
    pub heldout: Option<String>,
    pub experiment: ExperimentConfig,
    #[serde(default)]
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub watch: Vec<Watch>,
    pub phenomenon: Phenomenon,
}

/// A scenario read from disk.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub dir: PathBuf,
    pub preset: Preset,
    pub explanation: String,
    pub records: Vec<Record>,
    pub heldout: Vec<Record>,
}

fn read_text(path: &Path) -> Result<String> {
    lab_core::files::read_text(path, lab_core::exchange::MAX_IMPORT_BYTES as u64)
}

fn read_records(path: &Path) -> Result<Vec<Record>> {
    parse_jsonl(&read_text(path)?).map_err(|e| e.in_file(&path.display().to_string()))
}

impl Scenario {
    /// Read `<assets>/scenarios/<name>/`; errors name the file and the field.
    pub fn load(assets: &Path, name: &str) -> Result<Scenario> {
        let dir = assets.join("scenarios").join(name);
        if !dir.is_dir() {
            return Err(LabError::param(
                "scenario",
                format!(
                    "no scenario {name:?} in {} (shipped: {})",
                    dir.parent().unwrap_or(&dir).display(),
                    SCENARIOS.join(", ")
                ),
            ));
        }
        let preset_path = dir.join("preset.json");
        let preset_name = preset_path.display().to_string();
        let preset: Preset = lab_core::json::from_str_unique(&read_text(&preset_path)?)
            .map_err(|e| e.in_file(&preset_name))?;
        preset.experiment.validate().map_err(|e| {
            LabError::parse(e.to_string()).in_file(&preset_name).in_field("experiment")
        })?;
        for v in &preset.variants {
            let mut experiment = preset.experiment.clone();
            experiment.loss = v.loss.clone().unwrap_or(experiment.loss);
            experiment.params = v.params.unwrap_or(experiment.params);
            experiment.validate().map_err(|e| {
                LabError::parse(format!("variant {:?}: {e}", v.label))
                    .in_file(&preset_name)
                    .in_field("variants")
            })?;
        }
        let records = read_records(&dir.join(&preset.data))?;
        let heldout = match &preset.heldout {
            Some(file) => read_records(&dir.join(file))?,
            None => Vec::new(),
        };
        let explanation = read_text(&dir.join("README.md"))?;
        Ok(Scenario { name: name.to_string(), dir, preset, explanation, records, heldout })
    }
}

/// The robustness grid of `alignlab scenario --sweep`: training seeds 0–4 × the preset's
/// learning rates scaled by ⅓, 1 and 3. A shipped scenario must pass in at least
/// [`SWEEP_MIN_PASSES`] of its cells, so that what it shows is not one tuned run.
pub const SWEEP_SEEDS: [u64; 5] = [0, 1, 2, 3, 4];
pub const SWEEP_LR_FACTORS: [f64; 3] = [1.0 / 3.0, 1.0, 3.0];
pub const SWEEP_MIN_PASSES: usize = 12;

impl Scenario {
    /// The same scenario trained with another seed (if given) and every learning rate (the
    /// preset's and the variants' own) multiplied by `lr_factor`.
    pub fn varied(&self, seed: Option<u64>, lr_factor: f64) -> Result<Scenario> {
        if !(lr_factor.is_finite() && lr_factor > 0.0) {
            return Err(LabError::param("lr", format!("factor {lr_factor} must be > 0")));
        }
        let mut out = self.clone();
        let experiment = &mut out.preset.experiment;
        experiment.seed = seed.unwrap_or(experiment.seed);
        experiment.lr *= lr_factor;
        for variant in &mut out.preset.variants {
            variant.lr = variant.lr.map(|lr| lr * lr_factor);
        }
        out.preset.experiment.validate()?;
        Ok(out)
    }
}

/// Summed log-probs of rows `(prompt, text)`; with `eot` the text is a full completion
/// (its end token scored), without it a prefix of one.
pub fn score_texts<E: Engine>(
    engine: &mut E,
    tokenizer: &Tokenizer,
    items: &[(&str, &str)],
    eot: bool,
) -> Result<Vec<f64>> {
    let ctx = engine.config().ctx;
    let mut rows = Vec::with_capacity(items.len());
    for (prompt, text) in items {
        let (mut tokens, first) = encode_example(tokenizer, prompt, text, ctx)?;
        if !eot {
            tokens.pop();
        }
        rows.push((tokens, first));
    }
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(64) {
        let result = engine.forward(&TokenBatch::from_rows(chunk)?)?;
        out.extend(result.seq_logps.iter().map(|&v| v as f64));
    }
    Ok(out)
}

/// (chosen, rejected) log-probs of rendered pairs.
fn pair_logps<E: Engine>(
    engine: &mut E,
    tokenizer: &Tokenizer,
    records: &[Record],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut items = Vec::new();
    let rendered: Vec<_> = records
        .iter()
        .filter_map(|r| if let Record::Pair(p) = r { Some(p.render()) } else { None })
        .collect();
    for r in &rendered {
        items.push((r.prompt.as_str(), r.chosen.as_str()));
        items.push((r.rejected_prompt.as_str(), r.rejected.as_str()));
    }
    let scores = score_texts(engine, tokenizer, &items, true)?;
    Ok((
        scores.iter().step_by(2).copied().collect(),
        scores.iter().skip(1).step_by(2).copied().collect(),
    ))
}

/// Watched candidates of one prompt, with their log-probs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchedCandidate {
    pub prompt: String,
    pub completion: String,
    pub reference_logp: f64,
    pub policy_logp: f64,
}

/// Held-out pairs under the reference and the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Heldout {
    pub reference_chosen: Vec<f64>,
    pub reference_rejected: Vec<f64>,
    pub policy_chosen: Vec<f64>,
    pub policy_rejected: Vec<f64>,
}

impl Heldout {
    /// Ranking accuracy R of the policy on the held-out pairs.
    pub fn ranking_accuracy(&self) -> f64 {
        lab_core::metrics::ranking_accuracy(&self.policy_chosen, &self.policy_rejected)
    }
    /// Ranking accuracy of the reference.
    pub fn reference_ranking_accuracy(&self) -> f64 {
        lab_core::metrics::ranking_accuracy(&self.reference_chosen, &self.reference_rejected)
    }
    /// Mean change of log π(chosen) − log π(rejected) since the start, nats.
    pub fn mean_margin_shift(&self) -> f64 {
        let n = self.policy_chosen.len();
        (0..n)
            .map(|i| {
                (self.policy_chosen[i] - self.policy_rejected[i])
                    - (self.reference_chosen[i] - self.reference_rejected[i])
            })
            .sum::<f64>()
            / n.max(1) as f64
    }
}

/// One training run of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub label: String,
    pub loss: String,
    pub steps: u32,
    /// Pairs trained on (fewer than the data when high-CHES pairs were dropped).
    pub pairs: usize,
    /// The step-0 instruments and the last step's metrics.
    pub start: Value,
    #[serde(rename = "final")]
    pub last: Option<StepRecord>,
    pub watched: Vec<WatchedCandidate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout: Option<Heldout>,
    /// Held-out prompts: mean probability that the answer starts with the refusal prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal_probability: Option<(f64, f64)>,
    /// Training pairs: which were ranked right at the end, with their flip thresholds.
    #[serde(skip)]
    pub flip: Vec<(f64, bool)>,
}

/// One numeric check of a verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub what: String,
    pub value: f64,
    /// `>= threshold` or `<= threshold`.
    pub must_be: String,
    pub ok: bool,
}

fn at_least(what: &str, value: f64, threshold: f64) -> Check {
    Check {
        what: what.to_string(),
        value,
        must_be: format!(">= {threshold}"),
        ok: value >= threshold,
    }
}

fn at_most(what: &str, value: f64, threshold: f64) -> Check {
    Check {
        what: what.to_string(),
        value,
        must_be: format!("<= {threshold}"),
        ok: value <= threshold,
    }
}

/// How far a run moved from the reference, at its last step (reported, never judged).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunKl {
    pub run: String,
    /// The final `eval/kl`, nats per token.
    #[serde(rename = "eval/kl")]
    pub kl: f64,
    /// The final `eval/kl_sampled`, nats per sequence.
    #[serde(rename = "eval/kl_sampled", skip_serializing_if = "Option::is_none")]
    pub kl_sampled: Option<f64>,
}

impl RunKl {
    fn of(run: &RunReport) -> RunKl {
        let eval = run.last.as_ref().map(|r| &r.eval);
        RunKl {
            run: run.label.clone(),
            kl: eval.map_or(0.0, |e| e.kl),
            kl_sampled: eval.and_then(|e| e.kl_sampled),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub passed: bool,
    /// The phenomenon's numbers, then each run's KL to the reference.
    pub line: String,
    pub checks: Vec<Check>,
    pub kl: Vec<RunKl>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub title: String,
    pub paper: String,
    pub experiment: String,
    pub runs: Vec<RunReport>,
    pub verdict: Verdict,
}

impl ScenarioReport {
    pub fn run(&self, label: &str) -> Option<&RunReport> {
        self.runs.iter().find(|r| r.label == label)
    }
}

/// Train one run from a fresh starter engine.
fn train_run<E: Engine>(
    scenario: &Scenario,
    tokenizer: &Tokenizer,
    variant: &Variant,
    make_engine: &mut dyn FnMut() -> Result<E>,
    on_step: &mut dyn FnMut(&str, &StepRecord),
) -> Result<RunReport> {
    let preset = &scenario.preset;
    let experiment = variant.experiment(&preset.experiment);
    let config = SessionConfig::from_experiment(&experiment)?;
    let data_name = scenario.dir.join(&preset.data).display().to_string();
    let mut session = Session::new(make_engine()?, tokenizer, &scenario.records, config.clone())
        .map_err(|e| e.in_file(&data_name))?;
    let mut pairs = scenario.records.len();
    if let Some(fraction) = variant.drop_top_ches {
        // Razin et al.'s mitigation: CHES from the starting model, highest first out.
        let mut by_ches: Vec<(f64, usize)> =
            session.pairs().iter().map(|p| (p.ches, p.record)).collect();
        by_ches.sort_by(|a, b| b.0.total_cmp(&a.0));
        let drop = ((fraction * by_ches.len() as f64).round() as usize)
            .min(by_ches.len().saturating_sub(1));
        let dropped: Vec<usize> = by_ches[..drop].iter().map(|(_, r)| *r).collect();
        let kept: Vec<Record> = scenario
            .records
            .iter()
            .enumerate()
            .filter(|(i, _)| !dropped.contains(i))
            .map(|(_, r)| r.clone())
            .collect();
        pairs = kept.len();
        session = Session::new(make_engine()?, tokenizer, &kept, config.clone())?;
    }
    let watch_items: Vec<(&str, &str)> = preset
        .watch
        .iter()
        .flat_map(|w| w.candidates.iter().map(move |c| (w.prompt.as_str(), c.as_str())))
        .collect();
    let watch_ref = score_texts(session.engine_mut(), tokenizer, &watch_items, true)?;
    let heldout_ref = if scenario.heldout.is_empty() {
        None
    } else {
        Some(pair_logps(session.engine_mut(), tokenizer, &scenario.heldout)?)
    };
    let refusal_items: Vec<(String, String)> = match &preset.phenomenon {
        Phenomenon::RefusalDrop { refusal_prefix, .. } => scenario
            .heldout
            .iter()
            .filter_map(|r| {
                if let Record::Pair(p) = r {
                    Some((p.render().prompt, refusal_prefix.clone()))
                } else {
                    None
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    let refusal_probability = |engine: &mut E| -> Result<f64> {
        let items: Vec<(&str, &str)> =
            refusal_items.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        Ok(score_texts(engine, tokenizer, &items, false)?.iter().map(|l| l.exp()).sum::<f64>()
            / items.len().max(1) as f64)
    };
    let refusal_start = if refusal_items.is_empty() {
        None
    } else {
        Some(refusal_probability(session.engine_mut())?)
    };
    let start = serde_json::to_value(session.instruments()).expect("instruments serialize");
    let mut last = None;
    for _ in 0..experiment.steps {
        let record = session.step()?;
        on_step(&variant.label, &record);
        last = Some(record);
    }
    let watch_now = score_texts(session.engine_mut(), tokenizer, &watch_items, true)?;
    let watched = watch_items
        .iter()
        .zip(watch_ref.iter().zip(&watch_now))
        .map(|((p, c), (r, n))| WatchedCandidate {
            prompt: p.to_string(),
            completion: c.to_string(),
            reference_logp: *r,
            policy_logp: *n,
        })
        .collect();
    let heldout = match heldout_ref {
        Some((rc, rr)) => {
            let (pc, pr) = pair_logps(session.engine_mut(), tokenizer, &scenario.heldout)?;
            Some(Heldout {
                reference_chosen: rc,
                reference_rejected: rr,
                policy_chosen: pc,
                policy_rejected: pr,
            })
        }
        None => None,
    };
    let refusal_probability = match refusal_start {
        Some(before) => Some((before, refusal_probability(session.engine_mut())?)),
        None => None,
    };
    let flip = session
        .pairs()
        .iter()
        .map(|p| (p.flip_threshold, p.policy_chosen >= p.policy_rejected))
        .collect();
    Ok(RunReport {
        label: variant.label.clone(),
        loss: experiment.loss,
        steps: experiment.steps,
        pairs,
        start,
        last,
        watched,
        heldout,
        refusal_probability,
        flip,
    })
}

/// Run every run of a scenario from `make_engine()` (the starter model, fresh each time,
/// whose tokenizer is `tokenizer`) and judge the phenomenon. `on_step` sees each step's
/// metrics (label of the run first).
pub fn run_scenario<E: Engine>(
    scenario: &Scenario,
    tokenizer: &Tokenizer,
    mut make_engine: impl FnMut() -> Result<E>,
    mut on_step: impl FnMut(&str, &StepRecord),
) -> Result<ScenarioReport> {
    let preset = &scenario.preset;
    let own = Variant {
        label: preset.experiment.loss.clone(),
        loss: None,
        params: None,
        lr: None,
        drop_top_ches: None,
    };
    let mut runs = vec![train_run(scenario, tokenizer, &own, &mut make_engine, &mut on_step)?];
    for variant in &preset.variants {
        runs.push(train_run(scenario, tokenizer, variant, &mut make_engine, &mut on_step)?);
    }
    let verdict = judge(&preset.phenomenon, &runs)?;
    Ok(ScenarioReport {
        scenario: scenario.name.clone(),
        title: preset.title.clone(),
        paper: preset.paper.clone(),
        experiment: preset.experiment.to_query(),
        runs,
        verdict,
    })
}

fn run_named<'a>(runs: &'a [RunReport], label: &str) -> Result<&'a RunReport> {
    runs.iter().find(|r| r.label == label).ok_or_else(|| {
        LabError::param("phenomenon", format!("no variant labelled {label:?} in the preset"))
    })
}

fn watched_logp(run: &RunReport, completion: &str) -> Result<(f64, f64)> {
    let w = run.watched.iter().find(|w| w.completion == completion).ok_or_else(|| {
        LabError::param("phenomenon", format!("{completion:?} is not a watched candidate"))
    })?;
    Ok((w.reference_logp, w.policy_logp))
}

fn judge(phenomenon: &Phenomenon, runs: &[RunReport]) -> Result<Verdict> {
    let main = &runs[0];
    let instruments = |run: &RunReport, key: &str| -> f64 {
        run.last
            .as_ref()
            .and_then(|r| serde_json::to_value(r).ok())
            .and_then(|v| v.get(key).and_then(|x| x.as_f64()))
            .unwrap_or(f64::NAN)
    };
    let (checks, line) = match phenomenon {
        Phenomenon::Displacement { preferred, gainer, min_gain_ratio } => {
            let (pref_ref, pref_now) = watched_logp(main, preferred)?;
            let (gain_ref, gain_now) = watched_logp(main, gainer)?;
            let ratio = (gain_now - gain_ref).exp();
            let line = format!(
                "p({}) went {:.3} -> {:.3} ({ratio:.1}x) while p({}) went {:.3} -> {:.3}",
                gainer.trim(),
                gain_ref.exp(),
                gain_now.exp(),
                preferred.trim(),
                pref_ref.exp(),
                pref_now.exp()
            );
            (
                vec![
                    at_least(&format!("p({gainer}) now / at start"), ratio, *min_gain_ratio),
                    at_most(&format!("log p({preferred}) change"), pref_now - pref_ref, 0.0),
                ],
                line,
            )
        }
        Phenomenon::RefusalDrop { min_drop, min_mitigation, .. } => {
            let (before, after) = main.refusal_probability.unwrap_or((f64::NAN, f64::NAN));
            let filtered =
                runs.get(1).and_then(|r| r.refusal_probability).map(|(_, a)| a).unwrap_or(f64::NAN);
            let line = format!("held-out refusal probability {before:.2} -> {after:.2} with all pairs, -> {filtered:.2} without the high-CHES pairs");
            (
                vec![
                    at_least("refusal probability drop (all pairs)", before - after, *min_drop),
                    at_least(
                        "filtered minus unfiltered refusal probability",
                        filtered - after,
                        *min_mitigation,
                    ),
                ],
                line,
            )
        }
        Phenomenon::RankingStaysLow {
            min_reward_accuracy,
            max_ranking_gain,
            min_gap,
            hard_flip_threshold,
        } => {
            let r_start = main
                .start
                .get("eval/ranking_accuracy")
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN);
            let (reward, ranking, gap) = (
                instruments(main, "eval/reward_accuracy"),
                instruments(main, "eval/ranking_accuracy"),
                instruments(main, "eval/alignment_gap"),
            );
            let large: Vec<&(f64, bool)> =
                main.flip.iter().filter(|(t, _)| *t < *hard_flip_threshold).collect();
            let flipped = large.iter().filter(|(_, right)| *right).count() as f64;
            let line = format!("reward accuracy {reward:.2}, ranking accuracy {r_start:.2} -> {ranking:.2}, R* - R = {gap:.2}; {flipped} of {} hard pairs (flip threshold < {hard_flip_threshold}) flipped", large.len());
            (
                vec![
                    at_least("reward accuracy", reward, *min_reward_accuracy),
                    at_most("ranking accuracy gain", ranking - r_start, *max_ranking_gain),
                    at_least("alignment gap R* - R", gap, *min_gap),
                    at_least("hard pairs", large.len() as f64, 1.0),
                    at_most("of them ranked right", flipped, 0.0),
                ],
                line,
            )
        }
        Phenomenon::RobustBeatsNoisy { robust, min_margin } => {
            let other = run_named(runs, robust)?;
            let held = |r: &RunReport| {
                r.heldout.as_ref().map(Heldout::ranking_accuracy).unwrap_or(f64::NAN)
            };
            let start =
                main.heldout.as_ref().map(Heldout::reference_ranking_accuracy).unwrap_or(f64::NAN);
            let line = format!(
                "held-out ranking accuracy: reference {start:.2}, {} {:.2}, {} {:.2}",
                main.label,
                held(main),
                other.label,
                held(other)
            );
            (
                vec![at_least(
                    &format!("held-out R of {} minus {}", other.label, main.label),
                    held(other) - held(main),
                    *min_margin,
                )],
                line,
            )
        }
        Phenomenon::ThreeD { damped, min_rejected_drop, min_damping } => {
            let other = run_named(runs, damped)?;
            let (chosen, rejected) = (
                instruments(main, "eval/logps_chosen_change"),
                instruments(main, "eval/logps_rejected_change"),
            );
            let (chosen_d, rejected_d) = (
                instruments(other, "eval/logps_chosen_change"),
                instruments(other, "eval/logps_rejected_change"),
            );
            let line = format!("{}: rejected {rejected:+.1}, chosen {chosen:+.1} nats; {}: rejected {rejected_d:+.1}, chosen {chosen_d:+.1} nats", main.label, other.label);
            (
                vec![
                    at_most("rejected log-prob change", rejected, -min_rejected_drop),
                    at_most("chosen log-prob change", chosen, 0.0),
                    at_least("chosen change, damped minus plain", chosen_d - chosen, *min_damping),
                ],
                line,
            )
        }
        Phenomenon::LengthExploitation { normalized, min_dpo_shift, min_ratio } => {
            let shift = |r: &RunReport| {
                r.heldout.as_ref().map(Heldout::mean_margin_shift).unwrap_or(f64::NAN)
            };
            let dpo = shift(main);
            let mut checks = vec![at_least(
                &format!("{}: held-out long-minus-short shift (nats)", main.label),
                dpo,
                *min_dpo_shift,
            )];
            let mut parts = vec![format!("{} {dpo:+.1}", main.label)];
            for label in normalized {
                let other = shift(run_named(runs, label)?);
                parts.push(format!("{label} {other:+.1}"));
                checks.push(at_least(
                    &format!("{} shift / {label} shift", main.label),
                    dpo / other.max(1e-9),
                    *min_ratio,
                ));
            }
            (
                checks,
                format!("held-out log p(long) - log p(short) moved: {} nats", parts.join(", ")),
            )
        }
    };
    let passed = checks.iter().all(|c| c.ok);
    let kl: Vec<RunKl> = runs.iter().map(RunKl::of).collect();
    let kl_text: Vec<String> = kl
        .iter()
        .map(|k| match k.kl_sampled {
            Some(sampled) => format!("{} {:.3}/token ({sampled:.2}/sample)", k.run, k.kl),
            None => format!("{} {:.3}/token", k.run, k.kl),
        })
        .collect();
    Ok(Verdict {
        passed,
        line: format!(
            "{}: {line}; KL to the reference (nats): {}",
            if passed { "PASS" } else { "FAIL" },
            kl_text.join(", ")
        ),
        checks,
        kl,
    })
}

/// The report as the CLI prints it.
pub fn report_json(report: &ScenarioReport) -> Value {
    json!(report)
}
