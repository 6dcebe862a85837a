//! The messages between the page and the training worker, as JSON strings.
//!
//! The page owns the settings ([`crate::state::UiState`]); the worker owns the model, the
//! sessions and every number the page shows. Everything numeric the page renders arrives
//! here, computed by `lab-train` and `lab-core` in the worker.

use lab_core::experiment::ExperimentConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// (Re)start every run from the starting weights: run 0 with `experiment.loss`, one more
    /// run per entry of `compare`, all on the same data without the `drop_records`. With
    /// `apply_preset` the scenario's preset replaces the experiment and the compared losses.
    /// `generation` numbers the resets; replies about older ones are stale.
    /// `data`: train on these records (the user's annotations or an imported dataset)
    /// instead of the scenario's or the built-in ones.
    Reset {
        generation: u32,
        experiment: ExperimentConfig,
        compare: Vec<String>,
        drop_records: Vec<usize>,
        apply_preset: bool,
        #[serde(default)]
        data: Option<TrainingData>,
    },
    Play,
    Pause,
    /// One step of every run.
    Step,
    /// Go on from where every run is (a diverged run: its last good step) with these
    /// settings, and play: each run restarts its session from its weights, the reference
    /// kept (so AdamW's moments start again). Same data and number of runs as the reset.
    Continue {
        experiment: ExperimentConfig,
        compare: Vec<String>,
    },
    /// Candidate responses to `prompt` under the reference and run `run`'s policy.
    Inspect {
        prompt: String,
        run: usize,
    },
    /// Sample from the policy of run `run` and from the reference.
    Generate {
        prompt: String,
        run: usize,
        temperature: f32,
        max_new_tokens: usize,
        seed: u64,
    },
    /// The scenario's verdict as `alignlab scenario` gives it: every run of its preset
    /// trained on the CPU engine from the starting weights, then its checks.
    Verdict {
        scenario: String,
    },
    /// Candidate responses to annotate: `n` per prompt from run `run`'s policy and/or the reference.
    Sample {
        prompts: Vec<String>,
        run: usize,
        n: usize,
        from_policy: bool,
        from_reference: bool,
        temperature: f32,
        top_k: usize,
        max_new_tokens: usize,
        seed: u64,
    },
}

/// Records to train on, named for the page (`"my annotations (12)"`, a file name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingData {
    pub label: String,
    /// TRL JSONL.
    pub jsonl: String,
}

/// One run as the page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub label: String,
    pub loss: String,
    /// Each term of the loss: (name, weight, formula, source).
    pub terms: Vec<LossTerm>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossTerm {
    pub name: String,
    pub weight: f64,
    pub formula: String,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ScenarioInfo {
    pub name: String,
    pub title: String,
    pub paper: String,
    pub explanation: String,
}

/// A training example's text, for the pairs table and the prompt picker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairText {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// One row of the pairs table: lab-train's `PairStats` plus whether the policy ranks it
/// right now. `record` indexes the full dataset, dropped pairs included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRow {
    pub record: usize,
    pub ches: f64,
    pub ches_normalized: f64,
    pub flip_threshold: f64,
    pub margin: f64,
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    pub reference_chosen: f64,
    pub reference_rejected: f64,
    /// πθ(yw) ≥ πθ(yl) now (Chen et al. 2024's ranking).
    pub ranked: bool,
}

/// The metrics of one step under TRL's names (`loss`, `rewards/chosen`, ...,
/// `eval/ranking_accuracy`, ...); step 0 holds the instruments of the reference itself.
pub type Metrics = BTreeMap<String, f64>;

/// A metric the page charts, by the name the worker sends it under: `StepRecord`'s
/// serialized names, and `eval/gold`, which the page records from the live verdict. The
/// charts name metrics only through this, so a misspelt key is a compile error, and a test
/// checks every key against a serialized `StepRecord`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Loss,
    RewardsChosen,
    RewardsRejected,
    RewardsMargins,
    LogpsChosenChange,
    LogpsRejectedChange,
    Kl,
    IdealizedRankingAccuracy,
    RankingAccuracy,
    RankingAccuracyNormalized,
    RewardAccuracy,
    TopkEntropy,
    /// The gold reward of the policy's samples (`lab_train::scenario::GoldProbe`).
    Gold,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
        Metric::Loss,
        Metric::RewardsChosen,
        Metric::RewardsRejected,
        Metric::RewardsMargins,
        Metric::LogpsChosenChange,
        Metric::LogpsRejectedChange,
        Metric::Kl,
        Metric::IdealizedRankingAccuracy,
        Metric::RankingAccuracy,
        Metric::RankingAccuracyNormalized,
        Metric::RewardAccuracy,
        Metric::TopkEntropy,
        Metric::Gold,
    ];

    /// Its key in [`Metrics`].
    pub const fn key(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::RewardsChosen => "rewards/chosen",
            Metric::RewardsRejected => "rewards/rejected",
            Metric::RewardsMargins => "rewards/margins",
            Metric::LogpsChosenChange => "eval/logps_chosen_change",
            Metric::LogpsRejectedChange => "eval/logps_rejected_change",
            Metric::Kl => "eval/kl",
            Metric::IdealizedRankingAccuracy => "eval/idealized_ranking_accuracy",
            Metric::RankingAccuracy => "eval/ranking_accuracy",
            Metric::RankingAccuracyNormalized => "eval/ranking_accuracy_normalized",
            Metric::RewardAccuracy => "eval/reward_accuracy",
            Metric::TopkEntropy => "eval/topk_entropy",
            Metric::Gold => "eval/gold",
        }
    }
}

/// A candidate response of the displacement view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub completion: String,
    /// Where it comes from: "chosen", "rejected", "watched", "sampled from the reference", ...
    pub origin: String,
    pub reference_logp: f64,
    pub policy_logp: f64,
    pub reference_prob: f64,
    pub policy_prob: f64,
    /// log πθ − log πref of the whole response.
    pub logp_change: f64,
    /// The largest gain of probability among the candidates.
    pub gained_most: bool,
    /// Per scored token: its label and the change of its log-prob (policy − reference).
    pub tokens: Vec<String>,
    pub token_logp_change: Vec<f64>,
}

/// Worker → page. (`Ready` is large, but each message is built once and serialized.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The runs are ready at step 0.
    Ready {
        generation: u32,
        engine: String,
        /// Why this engine (the fallback banner), if it is not the first choice.
        engine_note: Option<String>,
        model: String,
        experiment: ExperimentConfig,
        compare: Vec<String>,
        runs: Vec<RunInfo>,
        scenario: Option<ScenarioInfo>,
        pairs: Vec<PairText>,
        prompts: Vec<String>,
        dropped: Vec<usize>,
        /// Per run, the step-0 instruments.
        start: Vec<Metrics>,
        table: Vec<PairRow>,
    },
    /// One step of one run.
    Stepped {
        generation: u32,
        run: usize,
        metrics: Metrics,
        /// First step at which the mean chosen log-prob fell below its start (Razin et al.).
        displaced_at: Option<u32>,
        step_ms: f64,
        /// The pairs table of run 0 (sent with run 0's steps).
        table: Option<Vec<PairRow>>,
    },
    Status {
        playing: bool,
        steps_done: u32,
    },
    /// Run `run`'s numbers stopped being finite at `step`: training paused, the run is back
    /// at step `kept` (its weights; the page drops its points after it). `message` names
    /// the step and the likely cause.
    Diverged {
        generation: u32,
        run: usize,
        step: u32,
        kept: u32,
        message: String,
    },
    /// The runs continue (after `ToWorker::Continue`), playing.
    Continued {
        generation: u32,
        runs: Vec<RunInfo>,
        table: Vec<PairRow>,
    },
    Inspected {
        prompt: String,
        run: usize,
        candidates: Vec<Candidate>,
    },
    Generated {
        prompt: String,
        policy: String,
        reference: String,
    },
    /// Candidate sets for the annotate view; `steps` is how far run `run`'s policy had trained.
    Sampled {
        sets: Vec<lab_core::annotate::CandidateSet>,
        run: usize,
        steps: u32,
    },
    /// A scenario's verdict: each check with its value and threshold.
    Verdict {
        scenario: String,
        passed: bool,
        line: String,
        checks: Vec<lab_train::scenario::Check>,
    },
    /// A scenario's checks on the page's own runs as they stand at `step` (sent after each
    /// evaluation while the runs are the preset's); `missing` names the compared runs the
    /// page does not train, whose checks only the full verdict has.
    LiveVerdict {
        generation: u32,
        scenario: String,
        step: u32,
        passed: bool,
        line: String,
        checks: Vec<lab_train::scenario::Check>,
        missing: Vec<String>,
        /// Per run, its gold reward at `step`, where the phenomenon measures one.
        gold: Vec<Option<f64>>,
    },
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_train::{Instruments, StepRecord};

    /// Every charted key is one the worker sends (a serialized `StepRecord` with every
    /// optional instrument present), but `eval/gold`, which only the live verdict brings.
    #[test]
    fn every_charted_metric_is_a_key_the_worker_sends() {
        let record = StepRecord {
            step: 1,
            loss: 0.5,
            rewards_chosen: 0.0,
            rewards_rejected: 0.0,
            rewards_margins: 0.0,
            rewards_accuracies: 0.0,
            logps_chosen: 0.0,
            logps_rejected: 0.0,
            eval: Instruments {
                ranking_accuracy: Some(0.0),
                ranking_accuracy_normalized: Some(0.0),
                idealized_ranking_accuracy: Some(0.0),
                alignment_gap: Some(0.0),
                reward_accuracy: Some(0.0),
                displaced_fraction: Some(0.0),
                kl_sampled: Some(0.0),
                ..Instruments::default()
            },
        };
        let sent = serde_json::to_value(&record).unwrap();
        for metric in Metric::ALL {
            let present = sent.get(metric.key()).is_some();
            assert_eq!(present, metric != Metric::Gold, "{metric:?} ({})", metric.key());
        }
    }
}
