//! Classroom scenarios: a dataset, a preset and a phenomenon from a paper that the preset
//! makes appear within a minute of CPU training of the starter model.
//!
//! A scenario is a directory `assets/scenarios/<name>/` with
//! - `data.jsonl`: the training pairs (TRL JSONL plus our fields, see `lab_core::data`),
//!   written by `lab_core::scenario_data` (`alignlab make-scenario`);
//! - `preset.json`: [`Preset`]: title, paper, the experiment (loss, β, lr, steps, seed,
//!   batch size: `lab_core::experiment::ExperimentConfig`), the runs to compare, the
//!   candidate responses to watch, and the phenomenon with the thresholds its verdict
//!   asserts;
//! - `README.md`: one paragraph saying what happens and which paper it comes from.
//!
//! [`run_scenario`] trains every run of the preset from the same starting weights (the
//! starter model, which is also the frozen reference) and checks the phenomenon, and in
//! every run that the anchors (questions the data does not touch) did not collapse; the CLI
//! (`alignlab scenario`) and the acceptance tests (`tests/tests/scenarios.rs`) both call it.

use crate::pretrain::fixed_answer_questions;
use crate::session::{PairStats, Session, SessionConfig, StepRecord};
use lab_core::annotate::Reward;
use lab_core::corpus::word_trigrams;
use lab_core::data::{encode_example, parse_jsonl, Record};
use lab_core::engine::{Engine, TokenBatch};
use lab_core::experiment::ExperimentConfig;
use lab_core::loss::LossParams;
use lab_core::metrics;
use lab_core::rng::Rng;
use lab_core::sample::{sample_batch, SampleConfig};
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
    /// Train on the data with every `"flipped": true` label flipped back (the clean-label
    /// control of a noisy-label scenario). Such a run trains on other data than the page's
    /// compared runs, so the page does not offer it.
    #[serde(default)]
    pub clean_labels: bool,
    /// Train on one quantile of the data only (the runs of a quantile experiment), which
    /// the page does not offer either.
    #[serde(default)]
    pub subset: Option<Subset>,
}

/// The score a quantile experiment splits the pairs by; either way a higher quantile is
/// the one predicted to do more harm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitBy {
    /// The reference's CHES (Razin et al. 2024, def. 2): the chosen and rejected answers'
    /// summed hidden embeddings alike.
    Ches,
    /// The token edit distance between the two answers, smallest last: Razin et al.'s
    /// baseline predictor.
    EditDistance,
}

/// Quantile `quantile` (1 = lowest score) of `of` equal parts of the pairs, ordered by `by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    pub by: SplitBy,
    pub quantile: usize,
    pub of: usize,
}

impl Subset {
    /// "CHES 2/5", "edit distance 5/5".
    pub fn name(&self) -> String {
        let by = match self.by {
            SplitBy::Ches => "CHES",
            SplitBy::EditDistance => "edit distance",
        };
        format!("{by} {}/{}", self.quantile, self.of)
    }
}

impl Variant {
    /// Whether the run trains on the scenario's data as it is (every pair, labels as
    /// given), as the page's compared runs do.
    pub fn same_data(&self) -> bool {
        !self.clean_labels && self.subset.is_none()
    }

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

/// What the verdict asserts, with its thresholds. Every run is also checked against
/// collapse: the mean log-prob of the anchors (answers the phenomenon does not involve)
/// may fall by at most `max_anchor_drop` nats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Phenomenon {
    /// Ranking accuracy lags reward accuracy (Chen et al. 2024). On the training pairs:
    /// reward accuracy reaches `min_reward_accuracy`, and when it first does, ranking
    /// accuracy R has risen by at most `max_ranking_gain`. Pairs flip in the order of their
    /// flip thresholds (thm. 4.1: a pair is ranked right iff its DPO loss is below its
    /// threshold): at some evaluation at least `min_easy_ranked_right` (a fraction) of the
    /// easy pairs (ranked wrong at the start, threshold ≥ `easy_flip_threshold`; at least
    /// `min_easy`) are ranked right (the control: R can move), while at the end at most
    /// `max_hard_ranked_right` of the hard ones (threshold < `hard_flip_threshold`; at
    /// least `min_hard`) are.
    RankingLags {
        min_reward_accuracy: f64,
        max_ranking_gain: f64,
        hard_flip_threshold: f64,
        min_hard: usize,
        max_hard_ranked_right: f64,
        easy_flip_threshold: f64,
        min_easy: usize,
        min_easy_ranked_right: f64,
        max_anchor_drop: f64,
    },
    /// 3D properties (Yan et al. 2024): in the preset's run the rejected log-prob falls by
    /// at least `min_rejected_drop` nats, the chosen one falls too (drastic drop, degraded
    /// chosen likelihood), and the probability of every response other than the pair's two
    /// grows by at least `min_dispersion` (dispersion onto unseen responses); the variant
    /// `damped` (DPO + NLL) keeps the chosen log-prob at least `min_damping` nats higher.
    ThreeD {
        damped: String,
        min_rejected_drop: f64,
        min_dispersion: f64,
        min_damping: f64,
        max_anchor_drop: f64,
    },
    /// Noisy labels (Chowdhury et al. 2024). A fraction ε of every pair's copies have their
    /// label flipped, so DPO's optimum caps the reward margin β·(ρw − ρl) at the noisy
    /// data's own log-odds ln((1 − ε)/ε), while rDPO (the variant `robust`, its ε the
    /// data's) is unbiased for the clean objective, whose optimum has no cap. On the true
    /// labels (the mean β·margin, flipped copies counted the right way round): the preset's
    /// run ends at most `max_noisy_over_cap` times the cap, `robust` at least
    /// `min_robust_over_cap` times it, and no higher than the run on the clean labels (the
    /// variant `clean`: the control that rDPO moves toward clean-label training, not past
    /// it).
    RobustBeatsNoisy {
        robust: String,
        clean: String,
        max_noisy_over_cap: f64,
        min_robust_over_cap: f64,
        max_anchor_drop: f64,
    },
    /// Over-optimisation (Gao et al. 2023; Rafailov et al. 2024 for direct alignment
    /// algorithms): the gold reward — the synthetic annotator's reward `gold` (the rule the
    /// data's labels follow) averaged over `samples_per_prompt` samples of the policy for
    /// every prompt of the data — first rises as the policy moves away from the reference,
    /// then falls as it moves further. In every run: the peak is at least `min_rise` above
    /// the reference's gold reward, and the last evaluation at least `min_fall` below the
    /// peak, at a larger KL (and, as everywhere, the anchors do not collapse: the fall is
    /// on the trained prompts, not everywhere). Each run's gold reward at the KLs `matched_kl` (nats per
    /// token, interpolated) is reported, so the losses are compared at matched KL.
    OverOptimisation {
        gold: String,
        samples_per_prompt: usize,
        min_rise: f64,
        min_fall: f64,
        matched_kl: Vec<f64>,
        max_anchor_drop: f64,
    },
    /// CHES predicts likelihood displacement (Razin et al. 2024, sec. 5, fig. 2): the pairs
    /// are split into `quantiles` equal parts by the reference's CHES and one run trains on
    /// each part alone. The higher the quantile's CHES, the more its chosen answers' log-prob
    /// falls (or the less it rises): Spearman's ρ between quantile and fall is at least
    /// `min_spearman`, in nats and in nats per chosen token (the lower quantiles hold the
    /// longer answers, which would gain more nats for their length alone), and the lowest quantile's chosen change exceeds the highest's by at
    /// least `min_spread` nats. The control is the paper's baseline predictor, the edit
    /// distance between the two answers, split the same way: the highest CHES quantile's
    /// chosen change is at least `min_baseline_gap` nats below that of every edit-distance
    /// quantile, so what CHES finds is not just answers that look alike.
    ChesPredictsHarm {
        quantiles: usize,
        min_spearman: f64,
        min_spread: f64,
        min_baseline_gap: f64,
        max_anchor_drop: f64,
    },
}

impl Phenomenon {
    fn max_anchor_drop(&self) -> f64 {
        match self {
            Phenomenon::RankingLags { max_anchor_drop, .. }
            | Phenomenon::ThreeD { max_anchor_drop, .. }
            | Phenomenon::RobustBeatsNoisy { max_anchor_drop, .. }
            | Phenomenon::OverOptimisation { max_anchor_drop, .. }
            | Phenomenon::ChesPredictsHarm { max_anchor_drop, .. } => *max_anchor_drop,
        }
    }

    /// The quantile runs the phenomenon splits the data into.
    fn subsets(&self) -> Vec<Subset> {
        match self {
            Phenomenon::ChesPredictsHarm { quantiles, .. } => {
                [SplitBy::Ches, SplitBy::EditDistance]
                    .into_iter()
                    .flat_map(|by| {
                        (1..=*quantiles).map(move |quantile| Subset {
                            by,
                            quantile,
                            of: *quantiles,
                        })
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// The labels of the variants the phenomenon compares the preset's run with.
    fn compared(&self) -> Vec<&str> {
        match self {
            Phenomenon::RankingLags { .. }
            | Phenomenon::OverOptimisation { .. }
            | Phenomenon::ChesPredictsHarm { .. } => Vec::new(),
            Phenomenon::ThreeD { damped, .. } => vec![damped.as_str()],
            Phenomenon::RobustBeatsNoisy { robust, clean, .. } => {
                vec![robust.as_str(), clean.as_str()]
            }
        }
    }
}

/// How many anchors each run scores: fixed-answer questions of the pretraining corpus
/// (`lab_train::pretrain::fixed_answer_questions`) that the scenario's data does not involve.
pub const ANCHORS: usize = 32;

/// The β values over which the idealized ranking accuracy R* is reported (min, median,
/// max), as Chen et al. 2024 report it over a range rather than at the training β.
pub const IDEALIZED_BETAS: [f64; 5] = [0.01, 0.03, 0.1, 0.3, 1.0];

/// `preset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub title: String,
    /// The paper the phenomenon comes from.
    pub paper: String,
    /// The training data, relative to the scenario directory.
    pub data: String,
    pub experiment: ExperimentConfig,
    #[serde(default)]
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub watch: Vec<Watch>,
    pub phenomenon: Phenomenon,
}

impl Preset {
    /// Every run of the preset: its own (labelled with its loss), then the variants.
    pub fn runs(&self) -> Vec<Variant> {
        let own = Variant {
            label: self.experiment.loss.clone(),
            loss: None,
            params: None,
            lr: None,
            clean_labels: false,
            subset: None,
        };
        std::iter::once(own).chain(self.variants.iter().cloned()).collect()
    }
}

/// A scenario read from disk.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub dir: PathBuf,
    pub preset: Preset,
    pub explanation: String,
    pub records: Vec<Record>,
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
        for v in &preset.variants {
            if let Some(s) = v.subset {
                if !(1..=s.of).contains(&s.quantile) {
                    return Err(LabError::parse(format!(
                        "variant {:?}: quantile {} is not in 1..={}",
                        v.label, s.quantile, s.of
                    ))
                    .in_file(&preset_name)
                    .in_field("variants"));
                }
            }
        }
        for subset in preset.phenomenon.subsets() {
            if !preset.variants.iter().any(|v| v.subset == Some(subset)) {
                return Err(LabError::parse(format!("no variant trains on {}", subset.name()))
                    .in_file(&preset_name)
                    .in_field("variants"));
            }
        }
        for label in preset.phenomenon.compared() {
            if !preset.variants.iter().any(|v| v.label == label) {
                return Err(LabError::parse(format!("no variant labelled {label:?}"))
                    .in_file(&preset_name)
                    .in_field("phenomenon"));
            }
        }
        let records = read_records(&dir.join(&preset.data))?;
        let explanation = read_text(&dir.join("README.md"))?;
        Ok(Scenario { name: name.to_string(), dir, preset, explanation, records })
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

/// Rows `(prompt, text)` as batches of at most 64; with `eot` the text is a full completion
/// (its end token scored), without it a prefix of one.
fn text_batches(
    tokenizer: &Tokenizer,
    items: &[(&str, &str)],
    eot: bool,
    ctx: usize,
) -> Result<Vec<TokenBatch>> {
    let mut rows = Vec::with_capacity(items.len());
    for (prompt, text) in items {
        let (mut tokens, first) = encode_example(tokenizer, prompt, text, ctx)?;
        if !eot {
            tokens.pop();
        }
        rows.push((tokens, first));
    }
    rows.chunks(64).map(TokenBatch::from_rows).collect()
}

fn summed(outs: &[lab_core::engine::ForwardOut]) -> Vec<f64> {
    outs.iter().flat_map(|out| out.seq_logps.iter().map(|&v| v as f64)).collect()
}

/// Summed log-probs of rows `(prompt, text)` (see [`text_batches`] for `eot`).
pub fn score_texts<E: Engine + ?Sized>(
    engine: &mut E,
    tokenizer: &Tokenizer,
    items: &[(&str, &str)],
    eot: bool,
) -> Result<Vec<f64>> {
    let batches = text_batches(tokenizer, items, eot, engine.config().ctx)?;
    let outs = batches.iter().map(|batch| engine.forward(batch)).collect::<Result<Vec<_>>>()?;
    Ok(summed(&outs))
}

/// [`score_texts`] on the engine's async calls (the browser's GPU engine).
pub async fn score_texts_async<E: Engine + ?Sized>(
    engine: &mut E,
    tokenizer: &Tokenizer,
    items: &[(&str, &str)],
    eot: bool,
) -> Result<Vec<f64>> {
    let batches = text_batches(tokenizer, items, eot, engine.config().ctx)?;
    Ok(summed(&engine.forwards_async(&batches).await?))
}

/// Watched candidates of one prompt, with their log-probs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchedCandidate {
    pub prompt: String,
    pub completion: String,
    pub reference_logp: f64,
    pub policy_logp: f64,
}

/// The training pairs at the end of a run, as Chen et al. 2024 count them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairCounts {
    pub pairs: usize,
    /// Pairs whose `alpha` the data states; the others take `lab_core::data::ASSUMED_ALPHA`.
    pub alpha_given: usize,
    /// Pairs whose flip threshold is below the phenomenon's hard threshold.
    pub hard: usize,
    /// Pairs ranked wrong at the start whose flip threshold is at least the phenomenon's
    /// easy threshold.
    pub easy: usize,
    /// Every evaluation of the run, in order (the first is the reference's).
    pub trajectory: Vec<Moment>,
    /// R* at each of [`IDEALIZED_BETAS`].
    pub idealized: Vec<(f64, f64)>,
    /// Mean over the pairs of the probability of every response but the pair's two,
    /// 1 − π(yw|x) − π(yl|x), under the reference and the policy (dispersion).
    pub outside_mass_start: f64,
    pub outside_mass_end: f64,
    /// Mean length of the chosen answers, in tokens.
    pub chosen_tokens: f64,
}

/// The pairs at one evaluation of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Moment {
    pub step: u32,
    pub reward_accuracy: f64,
    pub ranking_accuracy: f64,
    /// Hard and easy pairs ranked right (see [`PairCounts`]).
    pub hard_ranked_right: usize,
    pub easy_ranked_right: usize,
    /// `eval/kl`: nats per token from the reference.
    pub kl: f64,
    /// The gold reward of the policy's samples, where the phenomenon asks for it
    /// ([`Phenomenon::OverOptimisation`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold: Option<f64>,
}

/// One training run of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub label: String,
    pub loss: String,
    pub steps: u32,
    /// The quantile of the data the run trained on, if only one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<Subset>,
    /// The step-0 instruments and the last step's metrics.
    pub start: Value,
    #[serde(rename = "final")]
    pub last: Option<StepRecord>,
    pub watched: Vec<WatchedCandidate>,
    /// Mean change of the anchors' log-probs since the start (nats; collapse shows here).
    pub anchor_change: f64,
    /// How many anchors were scored (none: the data touches every candidate, and the
    /// verdict fails rather than pass unguarded).
    pub anchors: usize,
    /// Mean β·(ρw − ρl) over the pairs at the end, on the true labels: a pair marked
    /// `"flipped": true` counts with its sign reversed (unless the run trained on the clean
    /// labels).
    pub true_margin: f64,
    /// Fraction of the run's pairs marked `"flipped": true`.
    pub flip_rate: f64,
    pub pairs: PairCounts,
}

/// One numeric check of a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Runs the phenomenon compares with that were not trained (their checks left out).
    pub missing: Vec<String>,
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

/// Mean over the pairs of 1 − π(yw|x) − π(yl|x) from (chosen, rejected) log-probs.
fn outside_mass(chosen: &[f64], rejected: &[f64]) -> f64 {
    let n = chosen.len().max(1) as f64;
    chosen.iter().zip(rejected).map(|(c, r)| 1.0 - c.exp() - r.exp()).sum::<f64>() / n
}

/// The gold reward where the path (evaluations in order) first reaches KL `kl`, linearly
/// interpolated between the two evaluations around it; None if it never does.
fn gold_at_kl(path: &[&Moment], kl: f64) -> Option<f64> {
    path.windows(2).find_map(|w| {
        let (a, b) = (w[0], w[1]);
        let (ga, gb) = (a.gold?, b.gold?);
        (a.kl <= kl && kl <= b.kl && b.kl > a.kl)
            .then(|| ga + (gb - ga) * (kl - a.kl) / (b.kl - a.kl))
    })
}

/// The middle value of a non-empty list.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Whether a record is marked `"flipped": true` (its label is the wrong way round).
fn is_flipped(record: &Record) -> bool {
    matches!(record, Record::Pair(p) if p.extra.get("flipped") == Some(&Value::Bool(true)))
}

/// The records with every flipped pair put the right way round and unmarked.
fn clean_labels(records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .map(|record| match record {
            Record::Pair(p) if is_flipped(record) => {
                let mut p = p.clone();
                std::mem::swap(&mut p.chosen, &mut p.rejected);
                p.extra.remove("flipped");
                Record::Pair(p)
            }
            other => other.clone(),
        })
        .collect()
}

/// The watched candidates of a preset, as (prompt, completion) rows.
pub fn watch_items(preset: &Preset) -> Vec<(String, String)> {
    preset
        .watch
        .iter()
        .flat_map(|w| w.candidates.iter().map(move |c| (w.prompt.clone(), c.clone())))
        .collect()
}

/// The anchors every run is checked on: [`ANCHORS`] fixed-answer questions of the
/// pretraining corpus that the scenario's `records` do not involve, as (prompt, answer)
/// rows. A question is involved when its prompt or its answer shares a run of three words
/// with any prompt or response of the records: training on "I hate rain. It is awful." moves
/// the answer to "Is this happy or sad: I hate cats. It is awful.", which is the trained
/// preference spreading, not a collapse.
pub fn anchors(records: &[Record]) -> Vec<(String, String)> {
    let mut involved = std::collections::HashSet::new();
    let mut add = |text: &str| involved.extend(word_trigrams(text));
    for record in records {
        match record {
            Record::Pair(pair) => {
                let r = pair.render();
                for text in [&r.prompt, &r.chosen, &r.rejected, &r.rejected_prompt] {
                    add(text);
                }
            }
            Record::Unpaired(example) => {
                let (prompt, completion) = example.render();
                add(&prompt);
                add(&completion);
            }
            Record::Ranked(list) => {
                let (prompt, responses) = list.render();
                add(&prompt);
                responses.iter().for_each(|r| add(r));
            }
        }
    }
    let shares = |text: &str| word_trigrams(text).iter().any(|t| involved.contains(t));
    let corpus: Vec<_> = lab_core::corpus::generate(0)
        .into_iter()
        .filter(|ex| !shares(&ex.prompt) && !shares(&ex.completion))
        .collect();
    fixed_answer_questions(&corpus, ANCHORS)
        .into_iter()
        .map(|(q, a)| (q.to_string(), a.to_string()))
        .collect()
}

/// Owned rows as the `(&str, &str)` rows [`score_texts`] takes.
pub fn borrowed(items: &[(String, String)]) -> Vec<(&str, &str)> {
    items.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect()
}

/// What a scenario run keeps while it trains so that it can be reported, and judged, at any
/// step: the reference's scores of the watched candidates and the anchors, the hard and
/// easy pairs, and the evaluations so far. The caller steps the session and scores the texts
/// ([`score_texts`], or its async twin in the browser), so one watch serves both.
pub struct RunWatch {
    label: String,
    loss: String,
    steps: u32,
    subset: Option<Subset>,
    watch_items: Vec<(String, String)>,
    watch_ref: Vec<f64>,
    anchor_ref: Vec<f64>,
    start: Value,
    hard: Vec<usize>,
    easy: Vec<usize>,
    alpha_given: usize,
    /// Per record: marked `"flipped": true` (its label the wrong way round).
    flipped: Vec<bool>,
    trajectory: Vec<Moment>,
    last: Option<StepRecord>,
}

impl RunWatch {
    /// Start watching `session` (at step 0, the reference) training `records` as `variant`
    /// of `preset`; `watch_ref` and `anchor_ref` are the reference's scores of
    /// [`watch_items`] and [`anchors`].
    pub fn begin<E: Engine>(
        session: &Session<E>,
        preset: &Preset,
        variant: &Variant,
        records: &[Record],
        watch_ref: Vec<f64>,
        anchor_ref: Vec<f64>,
    ) -> RunWatch {
        let experiment = variant.experiment(&preset.experiment);
        let (hard_threshold, easy_threshold) = match &preset.phenomenon {
            Phenomenon::RankingLags { hard_flip_threshold, easy_flip_threshold, .. } => {
                (*hard_flip_threshold, *easy_flip_threshold)
            }
            _ => (0.0, f64::INFINITY),
        };
        let stats = session.pairs();
        let pick = |keep: &dyn Fn(&PairStats) -> bool| -> Vec<usize> {
            (0..stats.len()).filter(|&i| keep(&stats[i])).collect()
        };
        let hard = pick(&|p| p.flip_threshold < hard_threshold);
        let easy = pick(&|p| {
            p.reference_chosen < p.reference_rejected && p.flip_threshold >= easy_threshold
        });
        let mut watch = RunWatch {
            label: variant.label.clone(),
            loss: experiment.loss,
            steps: experiment.steps,
            subset: variant.subset,
            watch_items: watch_items(preset),
            watch_ref,
            anchor_ref,
            start: serde_json::to_value(session.instruments()).expect("instruments serialize"),
            hard,
            easy,
            alpha_given: records
                .iter()
                .filter(|r| matches!(r, Record::Pair(p) if p.alpha.is_some()))
                .count(),
            flipped: records.iter().map(is_flipped).collect(),
            trajectory: Vec::new(),
            last: None,
        };
        watch.trajectory.push(watch.moment(session, 0));
        watch
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn moment<E: Engine>(&self, session: &Session<E>, step: u32) -> Moment {
        let stats = session.pairs();
        let right = |set: &[usize]| {
            set.iter().filter(|&&i| stats[i].policy_chosen >= stats[i].policy_rejected).count()
        };
        let eval = session.instruments();
        Moment {
            step,
            reward_accuracy: eval.reward_accuracy.unwrap_or(f64::NAN),
            ranking_accuracy: eval.ranking_accuracy.unwrap_or(f64::NAN),
            hard_ranked_right: right(&self.hard),
            easy_ranked_right: right(&self.easy),
            kl: eval.kl,
            gold: None,
        }
    }

    /// Note the gold reward of the policy's samples at the evaluation just observed.
    pub fn note_gold(&mut self, gold: f64) {
        if let Some(moment) = self.trajectory.last_mut() {
            moment.gold = Some(gold);
        }
    }

    /// Note a step the session took (`record` is what it returned).
    pub fn observe<E: Engine>(&mut self, session: &Session<E>, record: &StepRecord) {
        if record.eval.step == record.step {
            self.trajectory.push(self.moment(session, record.step));
        }
        self.last = Some(record.clone());
    }

    /// The run as it stands; `watch_now` and `anchor_now` are the policy's scores of the
    /// same texts as at the start.
    pub fn report<E: Engine>(
        &self,
        session: &Session<E>,
        watch_now: &[f64],
        anchor_now: &[f64],
    ) -> RunReport {
        let watched = self
            .watch_items
            .iter()
            .zip(self.watch_ref.iter().zip(watch_now))
            .map(|((p, c), (r, n))| WatchedCandidate {
                prompt: p.clone(),
                completion: c.clone(),
                reference_logp: *r,
                policy_logp: *n,
            })
            .collect();
        let anchor_change =
            anchor_now.iter().zip(&self.anchor_ref).map(|(n, r)| n - r).sum::<f64>()
                / self.anchor_ref.len().max(1) as f64;
        let stats = session.pairs();
        let column = |f: fn(&PairStats) -> f64| stats.iter().map(f).collect::<Vec<f64>>();
        let (rc, rr) = (column(|p| p.reference_chosen), column(|p| p.reference_rejected));
        let (pc, pr) = (column(|p| p.policy_chosen), column(|p| p.policy_rejected));
        let alpha = column(|p| p.alpha);
        let pairs = PairCounts {
            pairs: stats.len(),
            alpha_given: self.alpha_given,
            hard: self.hard.len(),
            easy: self.easy.len(),
            trajectory: self.trajectory.clone(),
            idealized: IDEALIZED_BETAS
                .iter()
                .map(|&beta| (beta, metrics::idealized_ranking_accuracy(&rc, &rr, &alpha, beta)))
                .collect(),
            outside_mass_start: outside_mass(&rc, &rr),
            outside_mass_end: outside_mass(&pc, &pr),
            chosen_tokens: metrics::mean(&column(|p| p.chosen_len as f64)),
        };
        let flipped = |record: usize| self.flipped.get(record).copied().unwrap_or(false);
        let true_margin = metrics::mean(
            &stats
                .iter()
                .map(|p| if flipped(p.record) { -p.margin } else { p.margin })
                .collect::<Vec<f64>>(),
        );
        RunReport {
            label: self.label.clone(),
            loss: self.loss.clone(),
            steps: self.steps,
            subset: self.subset,
            start: self.start.clone(),
            last: self.last.clone(),
            watched,
            anchor_change,
            anchors: self.anchor_ref.len(),
            true_margin,
            flip_rate: self.flipped.iter().filter(|&&f| f).count() as f64
                / self.flipped.len().max(1) as f64,
            pairs,
        }
    }
}

/// New tokens at most in a sample scored for the gold reward.
pub const GOLD_MAX_TOKENS: usize = 32;
/// The random stream of the gold-reward samples, the same at every evaluation, so that
/// successive values differ by what the policy did rather than by fresh noise.
const GOLD_SEED: u64 = 0x601d;

/// How a run's gold reward is measured ([`Phenomenon::OverOptimisation`]): the reward, and
/// the prompts sampled, each `per_prompt` times.
pub struct GoldProbe {
    reward: Reward,
    per_prompt: usize,
    /// The distinct prompts of the pairs, encoded for sampling (end token first, as the
    /// examples are).
    prompts: Vec<Vec<u32>>,
}

impl GoldProbe {
    /// The probe the phenomenon asks for, if any, on the prompts of `records`.
    pub fn of(
        phenomenon: &Phenomenon,
        tokenizer: &Tokenizer,
        records: &[Record],
        ctx: usize,
    ) -> Result<Option<GoldProbe>> {
        let Phenomenon::OverOptimisation { gold, samples_per_prompt, .. } = phenomenon else {
            return Ok(None);
        };
        let reward = Reward::parse(gold).map_err(|e| e.in_field("phenomenon.gold"))?;
        let mut texts: Vec<String> = Vec::new();
        for record in records {
            if let Record::Pair(p) = record {
                let prompt = p.render().prompt;
                if !texts.contains(&prompt) {
                    texts.push(prompt);
                }
            }
        }
        let prompts = texts
            .iter()
            .map(|text| {
                let mut ids = vec![tokenizer.eot()];
                ids.extend(tokenizer.encode(text)?);
                if ids.len() + GOLD_MAX_TOKENS > ctx {
                    let msg = format!("prompt {text:?} leaves no room to sample");
                    return Err(LabError::param("gold", msg));
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(GoldProbe { reward, per_prompt: *samples_per_prompt, prompts }))
    }

    /// The gold reward of the policy `engine` holds: the reward of its samples
    /// (temperature 1, at most [`GOLD_MAX_TOKENS`] new tokens, the same random stream
    /// every time), averaged.
    pub fn measure<E: Engine + ?Sized>(
        &self,
        engine: &mut E,
        tokenizer: &Tokenizer,
    ) -> Result<f64> {
        let rows: Vec<Vec<u32>> = self
            .prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), self.per_prompt))
            .collect();
        let cfg = SampleConfig { temperature: 1.0, top_k: 0, max_new_tokens: GOLD_MAX_TOKENS };
        let mut rng = Rng::new(GOLD_SEED);
        let eot = tokenizer.eot();
        let samples = sample_batch(engine, &rows, eot, &cfg, &mut rng)?;
        let scores: Vec<f64> = samples
            .iter()
            .map(|new| {
                let text: Vec<u32> = new.iter().copied().filter(|&t| t != eot).collect();
                self.reward.score(&tokenizer.decode(&text))
            })
            .collect();
        Ok(metrics::mean(&scores))
    }
}

/// The levenshtein distance between two token sequences.
fn edit_distance(a: &[u32], b: &[u32]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(x != y);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Per record, the scores a quantile run's data is split by, from the reference: its CHES
/// and minus the token edit distance between the answers (higher = predicted more harm).
struct SplitScores {
    ches: Vec<f64>,
    alike: Vec<f64>,
}

impl SplitScores {
    fn of<E: Engine>(
        engine: E,
        tokenizer: &Tokenizer,
        records: &[Record],
        experiment: &ExperimentConfig,
    ) -> Result<SplitScores> {
        let session =
            Session::new(engine, tokenizer, records, SessionConfig::from_experiment(experiment)?)?;
        let mut ches = vec![f64::NAN; records.len()];
        for pair in session.pairs() {
            ches[pair.record] = pair.ches;
        }
        let alike = records
            .iter()
            .map(|record| match record {
                Record::Pair(pair) => {
                    let r = pair.render();
                    Ok(-(edit_distance(
                        &tokenizer.encode(&r.chosen)?,
                        &tokenizer.encode(&r.rejected)?,
                    ) as f64))
                }
                _ => Err(LabError::param("data", "a quantile experiment needs preference pairs")),
            })
            .collect::<Result<_>>()?;
        Ok(SplitScores { ches, alike })
    }

    /// The records of one quantile: sorted by the score (ties by position), the
    /// `quantile`-th of `of` equal parts.
    fn pick(&self, records: &[Record], subset: Subset) -> Vec<Record> {
        let score = match subset.by {
            SplitBy::Ches => &self.ches,
            SplitBy::EditDistance => &self.alike,
        };
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
        let n = records.len();
        let (from, to) = ((subset.quantile - 1) * n / subset.of, subset.quantile * n / subset.of);
        order[from..to].iter().map(|&i| records[i].clone()).collect()
    }
}

/// Train one run, on `records`, from a fresh starter engine.
fn train_run<E: Engine>(
    scenario: &Scenario,
    tokenizer: &Tokenizer,
    variant: &Variant,
    records: &[Record],
    anchors: &[(String, String)],
    make_engine: &mut dyn FnMut() -> Result<E>,
    on_step: &mut dyn FnMut(&str, &StepRecord),
) -> Result<RunReport> {
    let preset = &scenario.preset;
    let experiment = variant.experiment(&preset.experiment);
    let config = SessionConfig::from_experiment(&experiment)?;
    let data_name = scenario.dir.join(&preset.data).display().to_string();
    let mut session = Session::new(make_engine()?, tokenizer, records, config)
        .map_err(|e| e.in_file(&data_name))?;
    let (watch_rows, anchor_rows) = (watch_items(preset), borrowed(anchors));
    let score = |session: &mut Session<E>| -> Result<(Vec<f64>, Vec<f64>)> {
        Ok((
            score_texts(session.engine_mut(), tokenizer, &borrowed(&watch_rows), true)?,
            score_texts(session.engine_mut(), tokenizer, &anchor_rows, true)?,
        ))
    };
    let (watch_ref, anchor_ref) = score(&mut session)?;
    let mut watch = RunWatch::begin(&session, preset, variant, records, watch_ref, anchor_ref);
    let ctx = session.engine().config().ctx;
    let gold = GoldProbe::of(&preset.phenomenon, tokenizer, records, ctx)?;
    let note_gold = |session: &mut Session<E>, watch: &mut RunWatch| -> Result<()> {
        if let Some(probe) = &gold {
            watch.note_gold(probe.measure(session.engine_mut(), tokenizer)?);
        }
        Ok(())
    };
    note_gold(&mut session, &mut watch)?;
    for _ in 0..experiment.steps {
        let record = session.step()?;
        on_step(&variant.label, &record);
        watch.observe(&session, &record);
        if record.eval.step == record.step {
            note_gold(&mut session, &mut watch)?;
        }
    }
    let (watch_now, anchor_now) = score(&mut session)?;
    Ok(watch.report(&session, &watch_now, &anchor_now))
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
    let anchors = anchors(&scenario.records);
    let split = if preset.variants.iter().any(|v| v.subset.is_some()) {
        let data_name = scenario.dir.join(&preset.data).display().to_string();
        Some(
            SplitScores::of(make_engine()?, tokenizer, &scenario.records, &preset.experiment)
                .map_err(|e| e.in_file(&data_name))?,
        )
    } else {
        None
    };
    let mut runs = Vec::new();
    for variant in preset.runs() {
        let records = match (&split, variant.subset) {
            (Some(split), Some(subset)) => split.pick(&scenario.records, subset),
            _ if variant.clean_labels => clean_labels(&scenario.records),
            _ => scenario.records.clone(),
        };
        runs.push(train_run(
            scenario,
            tokenizer,
            &variant,
            &records,
            &anchors,
            &mut make_engine,
            &mut on_step,
        )?);
    }
    let verdict = judge(&preset.phenomenon, &runs);
    Ok(ScenarioReport {
        scenario: scenario.name.clone(),
        title: preset.title.clone(),
        paper: preset.paper.clone(),
        experiment: preset.experiment.to_query(),
        runs,
        verdict,
    })
}

fn run_named<'a>(runs: &'a [RunReport], label: &str) -> Option<&'a RunReport> {
    runs.iter().find(|r| r.label == label)
}

/// The verdict on `runs` (the preset's own first). A run the phenomenon compares with
/// that is not among them (the page does not train the clean-label control) is listed in
/// `missing`, and its checks are left out; such a verdict does not pass.
pub fn judge(phenomenon: &Phenomenon, runs: &[RunReport]) -> Verdict {
    let main = &runs[0];
    let mut missing = Vec::new();
    let mut named = |label: &str| {
        let run = run_named(runs, label);
        if run.is_none() {
            missing.push(label.to_string());
        }
        run
    };
    let eval = |run: &RunReport| run.last.as_ref().map(|r| r.eval.clone()).unwrap_or_default();
    let (mut checks, line) = match phenomenon {
        Phenomenon::RankingLags {
            min_reward_accuracy,
            max_ranking_gain,
            hard_flip_threshold,
            min_hard,
            max_hard_ranked_right,
            easy_flip_threshold,
            min_easy,
            min_easy_ranked_right,
            ..
        } => {
            let reward = eval(main).reward_accuracy.unwrap_or(f64::NAN);
            let p = &main.pairs;
            let start = p.trajectory[0];
            let reward_reached =
                p.trajectory.iter().find(|m| m.reward_accuracy >= *min_reward_accuracy);
            let gain_then =
                reward_reached.map_or(f64::NAN, |m| m.ranking_accuracy - start.ranking_accuracy);
            let easy_fraction = |m: &Moment| m.easy_ranked_right as f64 / p.easy.max(1) as f64;
            let easy_best = p.trajectory.iter().map(easy_fraction).fold(0.0, f64::max);
            let easy_reached =
                p.trajectory.iter().find(|m| easy_fraction(m) >= *min_easy_ranked_right);
            let end = p.trajectory.last().copied().unwrap_or(start);
            let hard_end = end.hard_ranked_right as f64 / p.hard.max(1) as f64;
            let ideal: Vec<f64> = p.idealized.iter().map(|(_, r)| *r).collect();
            let (lo, mid, hi) = (
                ideal.iter().copied().fold(f64::INFINITY, f64::min),
                median(&ideal),
                ideal.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            );
            let alpha_note = if p.alpha_given == p.pairs {
                "α from the data".to_string()
            } else {
                format!(
                    "α from the data for {} of {} pairs, {} assumed for the rest",
                    p.alpha_given,
                    p.pairs,
                    lab_core::data::ASSUMED_ALPHA
                )
            };
            let when =
                |m: Option<&Moment>| m.map_or("never".to_string(), |m| format!("step {}", m.step));
            let line = format!(
                "reward accuracy reached {min_reward_accuracy} at {} with ranking accuracy \
                 {:+.2} since the start; {} of {} easy pairs (flip threshold >= \
                 {easy_flip_threshold}) ranked right at {} with {} of {} hard ones (< \
                 {hard_flip_threshold}); at the end reward accuracy {reward:.2}, ranking accuracy {:.2} -> \
                 {:.2}, easy {}/{}, hard {}/{}; idealized R* min/median/max \
                 {lo:.2}/{mid:.2}/{hi:.2} over β {:?} ({alpha_note})",
                when(reward_reached),
                gain_then,
                easy_reached.map_or(0, |m| m.easy_ranked_right),
                p.easy,
                when(easy_reached),
                easy_reached.map_or(0, |m| m.hard_ranked_right),
                p.hard,
                start.ranking_accuracy,
                end.ranking_accuracy,
                end.easy_ranked_right,
                p.easy,
                end.hard_ranked_right,
                p.hard,
                IDEALIZED_BETAS
            );
            (
                vec![
                    at_least("reward accuracy", reward, *min_reward_accuracy),
                    at_most(
                        "ranking accuracy gain when reward accuracy first reached its threshold",
                        gain_then,
                        *max_ranking_gain,
                    ),
                    at_least("hard pairs", p.hard as f64, *min_hard as f64),
                    at_least("easy pairs", p.easy as f64, *min_easy as f64),
                    at_least(
                        "largest fraction of easy pairs ranked right",
                        easy_best,
                        *min_easy_ranked_right,
                    ),
                    at_most(
                        "fraction of hard pairs ranked right at the end",
                        hard_end,
                        *max_hard_ranked_right,
                    ),
                ],
                line,
            )
        }
        Phenomenon::ThreeD { damped, min_rejected_drop, min_dispersion, min_damping, .. } => {
            let change = |run: &RunReport| {
                let e = eval(run);
                (e.logps_chosen_change, e.logps_rejected_change)
            };
            let (chosen, rejected) = change(main);
            let p = &main.pairs;
            let mut line = format!(
                "{}: rejected {rejected:+.1}, chosen {chosen:+.1} nats, mass outside the pairs \
                 {:.2} -> {:.2}",
                main.label, p.outside_mass_start, p.outside_mass_end
            );
            let mut checks = vec![
                at_most("rejected log-prob change", rejected, -min_rejected_drop),
                at_most("chosen log-prob change", chosen, 0.0),
                at_least(
                    "mass outside the pairs, gain",
                    p.outside_mass_end - p.outside_mass_start,
                    *min_dispersion,
                ),
            ];
            if let Some(other) = named(damped) {
                let (chosen_d, rejected_d) = change(other);
                line.push_str(&format!(
                    "; {}: rejected {rejected_d:+.1}, chosen {chosen_d:+.1} nats",
                    other.label
                ));
                checks.push(at_least(
                    "chosen change, damped minus plain",
                    chosen_d - chosen,
                    *min_damping,
                ));
            }
            (checks, line)
        }
        Phenomenon::RobustBeatsNoisy {
            robust,
            clean,
            max_noisy_over_cap,
            min_robust_over_cap,
            ..
        } => {
            let epsilon = main.flip_rate;
            let cap = ((1.0 - epsilon) / epsilon).ln();
            let margins: Vec<String> =
                runs.iter().map(|r| format!("{} {:.2}", r.label, r.true_margin)).collect();
            let line = format!(
                "reward margin on the true labels: {}; {:.0}% of the labels flipped, so DPO's \
                 optimum is ln((1 - ε)/ε) = {cap:.2}",
                margins.join(", "),
                100.0 * epsilon
            );
            let mut checks = vec![at_most(
                &format!("{} margin / ln((1 - ε)/ε)", main.label),
                main.true_margin / cap,
                *max_noisy_over_cap,
            )];
            let robust_run = named(robust);
            if let Some(run) = robust_run {
                checks.push(at_least(
                    &format!("{robust} margin / ln((1 - ε)/ε)"),
                    run.true_margin / cap,
                    *min_robust_over_cap,
                ));
            }
            if let (Some(run), Some(clean_run)) = (robust_run, named(clean)) {
                checks.push(at_most(
                    &format!("{robust} margin minus {clean} margin"),
                    run.true_margin - clean_run.true_margin,
                    0.0,
                ));
            }
            (checks, line)
        }
        Phenomenon::OverOptimisation { min_rise, min_fall, matched_kl, .. } => {
            let mut checks = Vec::new();
            let mut parts = Vec::new();
            for run in runs {
                let path: Vec<&Moment> =
                    run.pairs.trajectory.iter().filter(|m| m.gold.is_some()).collect();
                let gold = |m: &Moment| m.gold.unwrap_or(f64::NAN);
                let (Some(first), Some(last)) = (path.first(), path.last()) else {
                    // never measured: fail rather than pass on no evidence
                    let what = format!("{}: evaluations with a gold reward", run.label);
                    checks.push(at_least(&what, 0.0, 2.0));
                    continue;
                };
                let peak = path.iter().copied().max_by(|a, b| gold(a).total_cmp(&gold(b)));
                let peak = peak.unwrap_or(first);
                let at_kl: Vec<String> = matched_kl
                    .iter()
                    .map(|&kl| gold_at_kl(&path, kl).map_or("-".into(), |g| format!("{g:.2}")))
                    .collect();
                parts.push(format!(
                    "{}: gold {:.2} -> peak {:.2} at step {} (KL {:.2}/token) -> {:.2} at step \
                     {} (KL {:.2}); at KL {:?}: {}",
                    run.label,
                    gold(first),
                    gold(peak),
                    peak.step,
                    peak.kl,
                    gold(last),
                    last.step,
                    last.kl,
                    matched_kl,
                    at_kl.join("/")
                ));
                let name = &run.label;
                checks.extend([
                    at_least(
                        &format!("{name}: gold reward, peak minus start"),
                        gold(peak) - gold(first),
                        *min_rise,
                    ),
                    at_least(
                        &format!("{name}: gold reward, peak minus end"),
                        gold(peak) - gold(last),
                        *min_fall,
                    ),
                    at_least(
                        &format!("{name}: KL at the end minus KL at the peak"),
                        last.kl - peak.kl,
                        0.0,
                    ),
                ]);
            }
            (checks, parts.join("; "))
        }
        Phenomenon::ChesPredictsHarm { min_spearman, min_spread, min_baseline_gap, .. } => {
            // per split, each quantile's run (lowest first) and its chosen log-prob change
            let mut quantile_runs = |by: SplitBy| -> Vec<&RunReport> {
                phenomenon
                    .subsets()
                    .into_iter()
                    .filter(|s| s.by == by)
                    .filter_map(|subset| {
                        let run = runs.iter().find(|r| r.subset == Some(subset));
                        if run.is_none() {
                            missing.push(subset.name());
                        }
                        run
                    })
                    .collect()
            };
            let (ches_runs, edit_runs) =
                (quantile_runs(SplitBy::Ches), quantile_runs(SplitBy::EditDistance));
            let change = |runs: &[&RunReport]| -> Vec<f64> {
                runs.iter().map(|r| eval(r).logps_chosen_change).collect()
            };
            let (ches, edit) = (change(&ches_runs), change(&edit_runs));
            // the lower quantiles hold the longer chosen answers, so the change per token too
            let per_token: Vec<f64> = ches
                .iter()
                .zip(&ches_runs)
                .map(|(c, r)| c / r.pairs.chosen_tokens.max(1.0))
                .collect();
            let tokens: Vec<String> =
                ches_runs.iter().map(|r| format!("{:.1}", r.pairs.chosen_tokens)).collect();
            let rho = |changes: &[f64]| {
                let quantile: Vec<f64> = (1..=changes.len()).map(|q| q as f64).collect();
                let fall: Vec<f64> = changes.iter().map(|c| -c).collect();
                metrics::spearman(&quantile, &fall)
            };
            let list = |changes: &[f64]| {
                changes.iter().map(|c| format!("{c:+.1}")).collect::<Vec<_>>().join(", ")
            };
            let line = format!(
                "chosen log-prob change (nats) by CHES quantile, lowest first: {} (Spearman ρ \
                 of quantile and fall {:.2}); by edit-distance quantile, most different \
                 first: {} (ρ {:.2}); by CHES quantile, the chosen answers' mean tokens {} \
                 and the change per token {} (ρ {:.2})",
                list(&ches),
                rho(&ches),
                list(&edit),
                rho(&edit),
                tokens.join(", "),
                per_token.iter().map(|c| format!("{c:+.2}")).collect::<Vec<_>>().join(", "),
                rho(&per_token)
            );
            let mut checks = Vec::new();
            if let (Some(&lowest), Some(&highest)) = (ches.first(), ches.last()) {
                checks.push(at_least(
                    "Spearman ρ of CHES quantile and the chosen log-prob's fall",
                    rho(&ches),
                    *min_spearman,
                ));
                checks.push(at_least(
                    "Spearman ρ of CHES quantile and the chosen log-prob's fall per token",
                    rho(&per_token),
                    *min_spearman,
                ));
                checks.push(at_least(
                    "chosen change, lowest CHES quantile minus highest",
                    lowest - highest,
                    *min_spread,
                ));
                if !edit.is_empty() {
                    let edit_lowest = edit.iter().copied().fold(f64::INFINITY, f64::min);
                    checks.push(at_least(
                        "chosen change, lowest of the edit-distance quantiles minus highest CHES quantile",
                        edit_lowest - highest,
                        *min_baseline_gap,
                    ));
                }
            }
            (checks, line)
        }
    };
    for run in runs {
        if run.anchors == 0 {
            checks.push(at_least(&format!("{}: anchors scored", run.label), 0.0, 1.0));
        }
        checks.push(at_least(
            &format!("{}: anchor answers' log-prob change (nats)", run.label),
            run.anchor_change,
            -phenomenon.max_anchor_drop(),
        ));
    }
    let passed = missing.is_empty() && checks.iter().all(|c| c.ok);
    let kl: Vec<RunKl> = runs.iter().map(RunKl::of).collect();
    let kl_text: Vec<String> = kl
        .iter()
        .map(|k| match k.kl_sampled {
            Some(sampled) => format!("{} {:.3}/token ({sampled:.2}/sample)", k.run, k.kl),
            None => format!("{} {:.3}/token", k.run, k.kl),
        })
        .collect();
    let anchors: Vec<String> =
        runs.iter().map(|r| format!("{} {:+.2}", r.label, r.anchor_change)).collect();
    let not_here = if missing.is_empty() {
        String::new()
    } else {
        format!("; not trained here: {}", missing.join(", "))
    };
    Verdict {
        passed,
        line: format!(
            "{}: {line}; anchors' log-prob change (nats): {}; KL to the reference (nats): {}{not_here}",
            if passed { "PASS" } else { "FAIL" },
            anchors.join(", "),
            kl_text.join(", ")
        ),
        checks,
        kl,
        missing,
    }
}

/// The report as the CLI prints it.
pub fn report_json(report: &ScenarioReport) -> Value {
    json!(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_core::data::PreferencePair;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 3]), 1);
        assert_eq!(edit_distance(&[], &[4, 5]), 2);
        let bytes = |s: &str| s.bytes().map(u32::from).collect::<Vec<u32>>();
        assert_eq!(edit_distance(&bytes("kitten"), &bytes("sitting")), 3);
        assert_eq!(edit_distance(&bytes("flaw"), &bytes("lawn")), 2);
    }

    #[test]
    fn quantiles_split_the_pairs_by_score_into_equal_disjoint_parts() {
        let records: Vec<Record> = (0..10)
            .map(|i| Record::Pair(PreferencePair::plain("Q", &format!(" a{i}"), " b")))
            .collect();
        // CHES descending with the index; ties in `alike` keep the records' order
        let scores =
            SplitScores { ches: (0..10).map(|i| -(i as f64)).collect(), alike: vec![0.0; 10] };
        let chosen = |part: &[Record]| -> Vec<String> {
            part.iter()
                .map(|r| match r {
                    Record::Pair(p) => p.render().chosen,
                    _ => unreachable!(),
                })
                .collect()
        };
        let by = |by, quantile| scores.pick(&records, Subset { by, quantile, of: 5 });
        assert_eq!(chosen(&by(SplitBy::Ches, 1)), [" a9", " a8"]);
        assert_eq!(chosen(&by(SplitBy::Ches, 5)), [" a1", " a0"]);
        assert_eq!(chosen(&by(SplitBy::EditDistance, 2)), [" a2", " a3"]);
        let all: usize = (1..=5).map(|q| by(SplitBy::Ches, q).len()).sum();
        assert_eq!(all, 10);
    }

    #[test]
    fn a_quantile_experiment_without_all_its_runs_is_refused_by_name() {
        let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
        let shipped = assets.join("scenarios/ches-predicts-harm");
        let dir = std::env::temp_dir().join(format!("alignlab-quantiles-{}", std::process::id()));
        let scenario_dir = dir.join("scenarios/ches-predicts-harm");
        std::fs::create_dir_all(&scenario_dir).unwrap();
        for file in ["data.jsonl", "README.md"] {
            std::fs::copy(shipped.join(file), scenario_dir.join(file)).unwrap();
        }
        let mut preset: Value =
            serde_json::from_str(&std::fs::read_to_string(shipped.join("preset.json")).unwrap())
                .unwrap();
        let write = |preset: &Value| {
            std::fs::write(scenario_dir.join("preset.json"), preset.to_string()).unwrap()
        };
        preset["variants"].as_array_mut().unwrap().remove(2);
        write(&preset);
        let err = Scenario::load(&dir, "ches-predicts-harm").unwrap_err().to_string();
        assert!(err.contains("preset.json") && err.contains("variants"), "{err}");
        assert!(err.contains("no variant trains on CHES 3/5"), "{err}");
        preset["variants"][0]["subset"]["quantile"] = json!(6);
        write(&preset);
        let err = Scenario::load(&dir, "ches-predicts-harm").unwrap_err().to_string();
        assert!(err.contains("quantile 6 is not in 1..=5"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
