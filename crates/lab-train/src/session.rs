//! [`Session`]: one training run. See the crate docs for what a step does.
//!
//! Each engine call comes in two forms: blocking (`step`, `new`, `evaluate`: the CLI, the
//! tests, native GPU) and awaitable (`step_async`, `new_async`, `evaluate_async`: the
//! browser, where a GPU readback can only be awaited). Both run the same async code; a
//! [`Drive`] says which engine calls it makes, and the blocking form polls it once, which
//! completes because every blocking call's result is at hand.

use crate::examples::{EncodedRow, Examples};
use lab_core::data::Record;
use lab_core::engine::{poll_once, AdamWConfig, Engine, ForwardOut, Rows, StepLoss, TokenBatch};
use lab_core::experiment::ExperimentConfig;
use lab_core::loss::{DataShape, LossMix, LossParams};
use lab_core::metrics;
use lab_core::rng::Rng;
use lab_core::sample::{sample_batch, SampleConfig};
use lab_core::tokenizer::Tokenizer;
use lab_core::{LabError, Result};
use serde::Serialize;
use std::future::Future;
use std::ops::Range;

/// Rows per engine call when evaluating the whole dataset.
const EVAL_CHUNK_ROWS: usize = 64;
/// Automatic evaluation spacing: about this many rows evaluated per step on average.
const EVAL_ROWS_PER_STEP: usize = 256;
/// The most reference logits a session keeps for `eval/kl` (4M f32, 16 MiB): the logits of
/// every predicting position of the data when they fit, else of a fixed subset. The same
/// bound caps the logits of one engine call while measuring it.
pub const KL_CACHE_FLOATS: usize = 1 << 22;
/// Seeds the subset of `eval/kl` and the prompts of `eval/kl_sampled`: fixed, so that every
/// run on the same data measures the same positions and samples the same prompts.
const KL_SEED: u64 = 0x6b6c_6d65_7465_7200;
/// Prompts sampled, as one batch, for `eval/kl_sampled`.
pub const KL_SAMPLE_PROMPTS: usize = 16;
/// New tokens at most in a sample for `eval/kl_sampled` (fewer when EOT comes first or the
/// context is full).
pub const KL_SAMPLE_MAX_TOKENS: usize = 32;
/// `eval/kl_sampled` is estimated at every this many evaluations (and at the final step) of
/// a run from an experiment: sampling costs about as much as a few training steps.
pub const KL_SAMPLED_EVERY: u32 = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub loss: LossMix,
    pub params: LossParams,
    pub optimizer: AdamWConfig,
    /// Pairs (or unpaired examples, or rankings) per step.
    pub batch_size: usize,
    pub seed: u64,
    /// Evaluate the whole dataset every this many steps; 0 = automatic (every step up to
    /// [`EVAL_ROWS_PER_STEP`] rows, then spaced to about that many rows per step). Steps in
    /// between carry the last instruments (their `eval/step` says from when).
    pub eval_every: u32,
    /// A step that is always evaluated, the run's last (0: none).
    pub final_step: u32,
    /// Estimate `eval/kl_sampled` at every this many evaluations and at `final_step`, and at
    /// each [`Session::evaluate`] (0: never). Blocking sessions only: the async calls (the
    /// browser) leave it out.
    pub kl_sampled_every: u32,
}

impl SessionConfig {
    /// The session settings of an experiment (validated).
    pub fn from_experiment(experiment: &ExperimentConfig) -> Result<SessionConfig> {
        let loss = experiment.validate()?;
        let optimizer = AdamWConfig {
            lr: experiment.lr as f32,
            weight_decay: experiment.weight_decay as f32,
            ..AdamWConfig::default()
        };
        Ok(SessionConfig {
            loss,
            params: experiment.params,
            optimizer,
            batch_size: experiment.batch_size,
            seed: experiment.seed,
            eval_every: experiment.eval_every,
            final_step: experiment.steps,
            kl_sampled_every: KL_SAMPLED_EVERY,
        })
    }

    /// Reject invalid settings before anything is computed.
    pub fn validate(&self) -> Result<DataShape> {
        let shape = self.loss.data_shape()?;
        for (kind, weight) in &self.loss.terms {
            self.params.validate(*kind)?;
            if !weight.is_finite() {
                return Err(LabError::param(
                    "loss weight",
                    format!("weight of {} is {weight}", kind.name()),
                ));
            }
        }
        let lr = self.optimizer.lr;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(LabError::param("lr", format!("{lr} must be a finite number > 0")));
        }
        if self.batch_size == 0 {
            return Err(LabError::param("batch_size", "must be at least 1"));
        }
        Ok(shape)
    }
    /// The likely cause of a run whose loss or weights stopped being finite, for its
    /// message: each setting above its usual range (learning rate above 1e-2, β above 10, a
    /// loss weight above 10 in size), or a numerical overflow when every setting is usual.
    pub fn divergence_cause(&self) -> String {
        let mut causes = Vec::new();
        if self.optimizer.lr > 1e-2 {
            causes.push(format!(
                "the learning rate {:e} is high (usual: 1e-6 to 1e-3)",
                self.optimizer.lr
            ));
        }
        if self.params.beta > 10.0 {
            causes.push(format!("β {:e} is high (usual: 0.01 to 1)", self.params.beta));
        }
        for (kind, weight) in &self.loss.terms {
            if weight.abs() > 10.0 {
                causes.push(format!("the weight {weight} of {} is large", kind.name()));
            }
        }
        if causes.is_empty() {
            "a numerical overflow with usual settings; try a lower learning rate".to_string()
        } else {
            format!("likely cause: {}", causes.join("; "))
        }
    }
}

/// A training example as the session holds it: which rows, best first.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    rows: Range<usize>,
    alpha: f64,
    desirable: bool,
    record: usize,
}

/// What the pairs table shows for one preference pair (paired data only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairStats {
    /// Index of the record in the dataset.
    pub record: usize,
    pub ches: f64,
    pub ches_normalized: f64,
    /// Chen et al. 2024 thm. 4.1: the pair is ranked right iff its DPO loss ≤ this.
    pub flip_threshold: f64,
    pub reference_chosen: f64,
    pub reference_rejected: f64,
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    /// β·(ρw − ρl) now.
    pub margin: f64,
    pub chosen_len: usize,
    pub rejected_len: usize,
    pub alpha: f64,
}

/// The metrics of one step. Batch metrics use TRL's names and are taken before the
/// update; `eval/*` instruments cover the whole dataset after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub step: u32,
    pub loss: f64,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    #[serde(flatten)]
    pub eval: Instruments,
}

impl StepRecord {
    /// Batch metrics as TRL reduces them (means over the batch); `eval` is filled after the
    /// update.
    fn from_batch(
        step: u32,
        loss: f64,
        [rewards_chosen, rewards_rejected]: [&[f64]; 2],
        accuracy: f64,
        [logps_chosen, logps_rejected]: [&[f64]; 2],
    ) -> Self {
        let (chosen, rejected) = (metrics::mean(rewards_chosen), metrics::mean(rewards_rejected));
        StepRecord {
            step,
            loss,
            rewards_chosen: chosen,
            rewards_rejected: rejected,
            rewards_margins: chosen - rejected,
            rewards_accuracies: accuracy,
            logps_chosen: metrics::mean(logps_chosen),
            logps_rejected: metrics::mean(logps_rejected),
            eval: Instruments::default(),
        }
    }
}

/// TRL's `rewards/accuracies`: the fraction of pairs whose chosen reward is strictly higher.
fn pairwise_accuracy(chosen: &[f64], rejected: &[f64]) -> f64 {
    metrics::mean(
        &chosen.iter().zip(rejected).map(|(c, r)| f64::from(u8::from(c > r))).collect::<Vec<_>>(),
    )
}

/// The dataset-wide instruments (see docs/losses-and-metrics.md).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Instruments {
    /// The step these were computed after (0: the reference).
    #[serde(rename = "eval/step")]
    pub step: u32,
    /// R: fraction of pairs with πθ(yw) ≥ πθ(yl) (Chen et al. 2024, def. 2.3).
    #[serde(rename = "eval/ranking_accuracy", skip_serializing_if = "Option::is_none")]
    pub ranking_accuracy: Option<f64>,
    /// R̃: the same with length-normalised log-probs.
    #[serde(rename = "eval/ranking_accuracy_normalized", skip_serializing_if = "Option::is_none")]
    pub ranking_accuracy_normalized: Option<f64>,
    /// R*: idealized ranking accuracy from the reference and α (Chen et al. 2024, cor. 3.3).
    #[serde(rename = "eval/idealized_ranking_accuracy", skip_serializing_if = "Option::is_none")]
    pub idealized_ranking_accuracy: Option<f64>,
    /// R* − R.
    #[serde(rename = "eval/alignment_gap", skip_serializing_if = "Option::is_none")]
    pub alignment_gap: Option<f64>,
    /// Fraction of pairs with β·ρw > β·ρl over the whole dataset.
    #[serde(rename = "eval/reward_accuracy", skip_serializing_if = "Option::is_none")]
    pub reward_accuracy: Option<f64>,
    /// Mean change of log πθ(yw) since step 0 (the preferred responses; desirable ones for KTO).
    #[serde(rename = "eval/logps_chosen_change")]
    pub logps_chosen_change: f64,
    /// Mean change of log πθ(yl) since step 0.
    #[serde(rename = "eval/logps_rejected_change")]
    pub logps_rejected_change: f64,
    /// Fraction of pairs whose chosen log-prob fell below its start while the margin grew
    /// (likelihood displacement, Razin et al. 2024).
    #[serde(rename = "eval/displaced_fraction", skip_serializing_if = "Option::is_none")]
    pub displaced_fraction: Option<f64>,
    /// Exact per-token KL(πθ‖πref) over the whole vocabulary, teacher-forced on the data's
    /// responses: the mean over the predicting positions of the rows [`KL_CACHE_FLOATS`]
    /// allows (all of them on small data), nats per token. 0 at step 0.
    #[serde(rename = "eval/kl")]
    pub kl: f64,
    /// Sequence-level KL estimate: the mean of log πθ(y|x) − log πref(y|x) over samples
    /// y ~ πθ of [`KL_SAMPLE_PROMPTS`] fixed prompts, nats per sequence. Only where
    /// [`SessionConfig::kl_sampled_every`] asks for it, on a blocking session (absent
    /// otherwise, and always in the browser).
    #[serde(rename = "eval/kl_sampled", skip_serializing_if = "Option::is_none")]
    pub kl_sampled: Option<f64>,
    /// Mean top-10 entropy (bits) over the preferred responses' positions (Shi et al. 2024:
    /// falling warns of likelihood over-optimisation).
    #[serde(rename = "eval/topk_entropy")]
    pub topk_entropy: f64,
}

pub struct Session<E: Engine> {
    engine: E,
    config: SessionConfig,
    shape: DataShape,
    rows: Vec<EncodedRow>,
    groups: Vec<Group>,
    /// Per row: log πref, computed once from the starting weights.
    reference_logps: Vec<f64>,
    /// Per row: log πθ at the last evaluation.
    policy_logps: Vec<f64>,
    pair_stats: Vec<PairStats>,
    kl: KlMeter,
    rng: Rng,
    order: Vec<usize>,
    cursor: usize,
    steps_done: u32,
    last_instruments: Instruments,
}

/// What the policy is compared with for `eval/kl` and `eval/kl_sampled`.
struct KlMeter {
    /// (row, n): `eval/kl` covers the first n predicting positions of each of these rows (see
    /// [`kl_positions`]), in row order.
    positions: Vec<(usize, usize)>,
    /// The reference's logits at those positions, V a position, in the same order.
    reference_logits: Vec<f32>,
    /// The prompts sampled for `eval/kl_sampled` (BOS included).
    prompts: Vec<Vec<u32>>,
    /// The tokenizer's end token, which ends a sample.
    eot: u32,
    /// The reference weights, swapped in to score the samples (blocking sessions that
    /// estimate `eval/kl_sampled` only).
    reference_params: Option<Vec<f32>>,
}

/// Per-row results of a forward pass over many rows.
struct Scores {
    seq_logps: Vec<f64>,
    topk_entropy: Vec<f64>,
}

/// Which engine calls a session's shared async code makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// The synchronous calls: every await inside completes at once.
    Blocking,
    /// The `_async` twins: awaits may wait for the GPU.
    Async,
}

impl Drive {
    async fn forwards<E: Engine>(
        self,
        engine: &mut E,
        batches: &[TokenBatch],
    ) -> Result<Vec<ForwardOut>> {
        match self {
            Drive::Blocking => batches.iter().map(|batch| engine.forward(batch)).collect(),
            Drive::Async => engine.forwards_async(batches).await,
        }
    }

    async fn train_step<E: Engine>(
        self,
        engine: &mut E,
        batch: &TokenBatch,
        loss: &StepLoss<'_>,
        opt: &AdamWConfig,
        step: u32,
    ) -> Result<ForwardOut> {
        match self {
            Drive::Blocking => engine.train_step(batch, loss, opt, step),
            Drive::Async => engine.train_step_async(batch, loss, opt, step).await,
        }
    }

    /// A step, then the forwards of an evaluation with the updated weights (in the browser
    /// all submitted before any is awaited).
    async fn train_step_then_forwards<E: Engine>(
        self,
        engine: &mut E,
        batch: &TokenBatch,
        loss: &StepLoss<'_>,
        opt: &AdamWConfig,
        step: u32,
        batches: &[TokenBatch],
    ) -> Result<(ForwardOut, Vec<ForwardOut>)> {
        match self {
            Drive::Blocking => {
                let out = engine.train_step(batch, loss, opt, step)?;
                Ok((out, self.forwards(engine, batches).await?))
            }
            Drive::Async => {
                engine.train_step_then_forwards_async(batch, loss, opt, step, batches).await
            }
        }
    }

    async fn logits<E: Engine>(self, engine: &mut E, batch: &TokenBatch) -> Result<Vec<f32>> {
        match self {
            Drive::Blocking => engine.logits(batch),
            Drive::Async => engine.logits_async(batch).await,
        }
    }

    async fn hidden_states<E: Engine>(
        self,
        engine: &mut E,
        batch: &TokenBatch,
    ) -> Result<Vec<f32>> {
        match self {
            Drive::Blocking => engine.hidden_states(batch),
            Drive::Async => engine.hidden_states_async(batch).await,
        }
    }
}

/// Run a [`Drive::Blocking`] future: it never waits, so one poll completes it.
fn complete_now<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    poll_once(future).unwrap_or_else(|| Err(LabError::Engine { msg: "a blocking session call had to wait (a bug: blocking calls never await anything pending)".into() }))
}

fn batch_of(rows: &[&EncodedRow]) -> Result<TokenBatch> {
    let owned: Vec<(Vec<u32>, usize)> =
        rows.iter().map(|r| (r.tokens.clone(), r.first_scored)).collect();
    TokenBatch::from_rows(&owned)
}

/// Every row, in batches of at most [`EVAL_CHUNK_ROWS`].
fn chunk_batches(rows: &[EncodedRow]) -> Result<Vec<TokenBatch>> {
    rows.chunks(EVAL_CHUNK_ROWS)
        .map(|chunk| batch_of(&chunk.iter().collect::<Vec<&EncodedRow>>()))
        .collect()
}

/// The scores of every row from the forwards of its [`chunk_batches`].
fn scores_of(outs: &[ForwardOut]) -> Scores {
    let mut scores = Scores { seq_logps: Vec::new(), topk_entropy: Vec::new() };
    for out in outs {
        scores.seq_logps.extend(out.seq_logps.iter().map(|&v| v as f64));
        scores.topk_entropy.extend(out.topk_entropy.iter().map(|&v| v as f64));
    }
    scores
}

/// The positions `eval/kl` covers, as (row, n): the first n positions predicting a
/// completion token of the row (positions `first_scored − 1 ..`, whose logits give the
/// log-probs of `seq_logps`). All of them when their logits fit in `cap` floats; otherwise
/// rows in a fixed pseudo-random order until the cap is reached, the last one cut short.
fn kl_positions(rows: &[EncodedRow], vocab: usize, cap: usize) -> Vec<(usize, usize)> {
    let mut left = cap / vocab.max(1);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    if rows.iter().map(EncodedRow::completion_len).sum::<usize>() > left {
        Rng::new(KL_SEED).shuffle(&mut order);
    }
    let mut picked = Vec::new();
    for r in order {
        let n = rows[r].completion_len().min(left);
        if n == 0 {
            break;
        }
        picked.push((r, n));
        left -= n;
    }
    picked.sort_unstable();
    picked
}

/// The logits at `positions` ([`kl_positions`]), V a position, in their order; engine calls
/// of at most [`EVAL_CHUNK_ROWS`] rows and about [`KL_CACHE_FLOATS`] logits.
async fn logits_at<E: Engine>(
    engine: &mut E,
    rows: &[EncodedRow],
    positions: &[(usize, usize)],
    drive: Drive,
) -> Result<Vec<f32>> {
    let (vocab, ctx) = (engine.config().vocab, engine.config().ctx);
    let per_call = (KL_CACHE_FLOATS / (ctx * vocab).max(1)).clamp(1, EVAL_CHUNK_ROWS);
    let mut out = Vec::with_capacity(positions.iter().map(|&(_, n)| n * vocab).sum());
    for chunk in positions.chunks(per_call) {
        let batch = batch_of(&chunk.iter().map(|&(r, _)| &rows[r]).collect::<Vec<_>>())?;
        let logits = drive.logits(engine, &batch).await?; // (B, T, V)
        for (b, &(r, n)) in chunk.iter().enumerate() {
            let first = b * batch.seq_len + rows[r].first_scored - 1;
            out.extend_from_slice(&logits[first * vocab..(first + n) * vocab]);
        }
    }
    Ok(out)
}

/// Up to [`KL_SAMPLE_PROMPTS`] distinct prompts of the data (each group's), a fixed
/// pseudo-random choice.
fn kl_prompts(rows: &[EncodedRow], groups: &[Group]) -> Vec<Vec<u32>> {
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for group in groups {
        let row = &rows[group.rows.start];
        let prompt = &row.tokens[..row.first_scored];
        if !prompts.iter().any(|p| p == prompt) {
            prompts.push(prompt.to_vec());
        }
    }
    Rng::new(KL_SEED).shuffle(&mut prompts);
    prompts.truncate(KL_SAMPLE_PROMPTS);
    prompts
}

async fn score_rows<E: Engine>(
    engine: &mut E,
    rows: &[EncodedRow],
    drive: Drive,
) -> Result<Scores> {
    Ok(scores_of(&drive.forwards(engine, &chunk_batches(rows)?).await?))
}

impl<E: Engine> Session<E> {
    /// Start a run: the engine's current weights become both the policy and the frozen
    /// reference; `tokenizer` is the model's (it encodes the records). Fails, changing
    /// nothing, if the config or the data is invalid.
    pub fn new(
        engine: E,
        tokenizer: &Tokenizer,
        records: &[Record],
        config: SessionConfig,
    ) -> Result<Self> {
        Self::with_lines(engine, tokenizer, records, None, config)
    }

    /// As [`Session::new`], with the records' line numbers (from
    /// [`crate::examples::record_lines`]) so data errors name the line.
    pub fn with_lines(
        engine: E,
        tokenizer: &Tokenizer,
        records: &[Record],
        lines: Option<&[usize]>,
        config: SessionConfig,
    ) -> Result<Self> {
        complete_now(Self::start(engine, tokenizer, records, lines, config, Drive::Blocking))
    }

    /// [`Session::new`] on the engine's async calls (the browser's GPU engine).
    pub async fn new_async(
        engine: E,
        tokenizer: &Tokenizer,
        records: &[Record],
        config: SessionConfig,
    ) -> Result<Self> {
        Self::start(engine, tokenizer, records, None, config, Drive::Async).await
    }

    async fn start(
        mut engine: E,
        tokenizer: &Tokenizer,
        records: &[Record],
        lines: Option<&[usize]>,
        config: SessionConfig,
        drive: Drive,
    ) -> Result<Self> {
        let shape = config.validate()?;
        let ctx = engine.config().ctx;
        let examples = Examples::encode(tokenizer, records, lines, shape, ctx)?;
        let mut rows = Vec::new();
        let mut groups = Vec::new();
        let mut push = |members: Vec<EncodedRow>, alpha: f64, desirable: bool, record: usize| {
            let start = rows.len();
            rows.extend(members);
            groups.push(Group { rows: start..rows.len(), alpha, desirable, record });
        };
        match examples {
            Examples::Paired(pairs) => pairs
                .into_iter()
                .for_each(|p| push(vec![p.chosen, p.rejected], p.alpha, true, p.record)),
            Examples::Unpaired(items) => {
                items.into_iter().for_each(|u| push(vec![u.row], 1.0, u.desirable, u.record))
            }
            Examples::Ranked(lists) => {
                lists.into_iter().for_each(|r| push(r.rows, 1.0, true, r.record))
            }
        }
        let reference = score_rows(&mut engine, &rows, drive).await?;
        let pair_stats = if shape == DataShape::Paired {
            Self::pair_stats_at_start(
                &mut engine,
                &rows,
                &groups,
                &reference.seq_logps,
                config.params.beta,
                drive,
            )
            .await?
        } else {
            Vec::new()
        };
        let vocab = engine.config().vocab;
        let positions = kl_positions(&rows, vocab, KL_CACHE_FLOATS);
        let kl = KlMeter {
            reference_logits: logits_at(&mut engine, &rows, &positions, drive).await?,
            positions,
            prompts: kl_prompts(&rows, &groups),
            eot: tokenizer.eot(),
            reference_params: (drive == Drive::Blocking && config.kl_sampled_every > 0)
                .then(|| engine.params()),
        };
        let rng = Rng::new(config.seed);
        let mut session = Session {
            engine,
            shape,
            order: (0..groups.len()).collect(),
            cursor: usize::MAX,
            rows,
            groups,
            policy_logps: reference.seq_logps.clone(),
            reference_logps: reference.seq_logps,
            pair_stats,
            kl,
            rng,
            steps_done: 0,
            config,
            last_instruments: Instruments::default(),
        };
        session.last_instruments = session.instruments_from(&Scores {
            seq_logps: session.reference_logps.clone(),
            topk_entropy: reference.topk_entropy,
        });
        // the policy is the reference: both KLs are 0 by definition
        session.last_instruments.kl_sampled = session.kl.reference_params.as_ref().map(|_| 0.0);
        Ok(session)
    }

    /// CHES and flip thresholds come from the starting model, as in Razin et al. and Chen
    /// et al.: they predict what training will do to each pair.
    async fn pair_stats_at_start(
        engine: &mut E,
        rows: &[EncodedRow],
        groups: &[Group],
        reference: &[f64],
        beta: f64,
        drive: Drive,
    ) -> Result<Vec<PairStats>> {
        let c = engine.config().d_model;
        let mut stats = Vec::with_capacity(groups.len());
        for chunk in groups.chunks(EVAL_CHUNK_ROWS / 2) {
            let refs: Vec<&EncodedRow> =
                chunk.iter().flat_map(|g| g.rows.clone().map(|r| &rows[r])).collect();
            let batch = batch_of(&refs)?;
            let hidden = drive.hidden_states(engine, &batch).await?; // (B, T, C)
            let t = batch.seq_len;
            for (k, group) in chunk.iter().enumerate() {
                let (w, l) = (&rows[group.rows.start], &rows[group.rows.start + 1]);
                let row_hidden = |i: usize| &hidden[i * t * c..(i + 1) * t * c];
                let ches = metrics::ches(
                    row_hidden(2 * k),
                    w.first_scored,
                    w.tokens.len(),
                    row_hidden(2 * k + 1),
                    l.first_scored,
                    l.tokens.len(),
                    c,
                );
                let (rw, rl) = (reference[group.rows.start], reference[group.rows.start + 1]);
                stats.push(PairStats {
                    record: group.record,
                    ches: ches.ches,
                    ches_normalized: ches.ches_normalized,
                    flip_threshold: metrics::flip_threshold(rw, rl, beta),
                    reference_chosen: rw,
                    reference_rejected: rl,
                    policy_chosen: rw,
                    policy_rejected: rl,
                    margin: 0.0,
                    chosen_len: w.completion_len(),
                    rejected_len: l.completion_len(),
                    alpha: group.alpha,
                });
            }
        }
        Ok(stats)
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut E {
        &mut self.engine
    }

    /// End the run and hand back its engine (to start another run on it with `set_params`).
    pub fn into_engine(self) -> E {
        self.engine
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn steps_done(&self) -> u32 {
        self.steps_done
    }

    /// Per-pair statistics (empty unless the data is paired), updated at each step.
    pub fn pairs(&self) -> &[PairStats] {
        &self.pair_stats
    }

    /// The instruments at the last evaluation (step 0: the reference itself).
    pub fn instruments(&self) -> &Instruments {
        &self.last_instruments
    }

    /// Per-row reference and current policy log-probs, in dataset order.
    pub fn row_logps(&self) -> (&[f64], &[f64]) {
        (&self.reference_logps, &self.policy_logps)
    }

    /// The next `batch_size` groups: a seeded shuffle per epoch, wrapping across epochs.
    fn next_batch(&mut self) -> Vec<usize> {
        let n = self.groups.len();
        let want = self.config.batch_size.min(n);
        let mut picked = Vec::with_capacity(want);
        while picked.len() < want {
            if self.cursor >= n {
                self.rng.shuffle(&mut self.order);
                self.cursor = 0;
            }
            let candidate = self.order[self.cursor];
            self.cursor += 1;
            if !picked.contains(&candidate) {
                picked.push(candidate);
            }
        }
        picked
    }

    fn lengths(&self, rows: &[usize]) -> Vec<f64> {
        rows.iter().map(|&r| self.rows[r].completion_len() as f64).collect()
    }

    /// One optimisation step; returns its metrics.
    pub fn step(&mut self) -> Result<StepRecord> {
        complete_now(self.run_step(Drive::Blocking))
    }

    /// [`Session::step`] on the engine's async calls (the browser's GPU engine); the same
    /// numbers.
    pub async fn step_async(&mut self) -> Result<StepRecord> {
        self.run_step(Drive::Async).await
    }

    async fn run_step(&mut self, drive: Drive) -> Result<StepRecord> {
        let picked = self.next_batch();
        // The batch's rows in engine order: TRL concatenates all chosen rows, then all
        // rejected rows; an unpaired batch is one row per example; a ranked one its lists
        // one after another, best first.
        let rows: Vec<usize> = match self.shape {
            DataShape::Paired => {
                let chosen = picked.iter().map(|&g| self.groups[g].rows.start);
                chosen.chain(picked.iter().map(|&g| self.groups[g].rows.start + 1)).collect()
            }
            DataShape::Unpaired => picked.iter().map(|&g| self.groups[g].rows.start).collect(),
            DataShape::Ranked => picked.iter().flat_map(|&g| self.groups[g].rows.clone()).collect(),
        };
        let desirable: Vec<bool> = picked.iter().map(|&g| self.groups[g].desirable).collect();
        let sizes: Vec<usize> = picked.iter().map(|&g| self.groups[g].rows.len()).collect();
        let batch = self.batch_of_rows(&rows)?;
        let reference: Vec<f64> = rows.iter().map(|&r| self.reference_logps[r]).collect();
        let lengths = self.lengths(&rows);
        let loss = StepLoss {
            mix: &self.config.loss,
            params: &self.config.params,
            rows: match self.shape {
                DataShape::Paired => Rows::Pairs,
                DataShape::Unpaired => Rows::Unpaired(&desirable),
                DataShape::Ranked => Rows::Ranked(&sizes),
            },
            reference: &reference,
            lengths: &lengths,
        };
        let step = self.steps_done + 1;
        // the engine takes the whole step (the GPU engine evaluates the loss's gradient on
        // the device), and the evaluation of the dataset after it when one is due (submitted
        // together: one round trip); the record is computed here, in f64, from the step's
        // log-probs
        let evaluate = step.is_multiple_of(self.eval_every()) || step == self.config.final_step;
        let (out, evaluation) = if evaluate {
            let batches = chunk_batches(&self.rows)?;
            let (out, outs) = drive
                .train_step_then_forwards(
                    &mut self.engine,
                    &batch,
                    &loss,
                    &self.config.optimizer,
                    step,
                    &batches,
                )
                .await?;
            (out, Some(scores_of(&outs)))
        } else {
            (
                drive
                    .train_step(&mut self.engine, &batch, &loss, &self.config.optimizer, step)
                    .await?,
                None,
            )
        };
        let logps: Vec<f64> = out.seq_logps.iter().map(|&v| f64::from(v)).collect();
        let mut record = match self.shape {
            DataShape::Paired => {
                let lo = loss.paired(&logps)?;
                let (pc, pr) = logps.split_at(picked.len());
                let accuracy = pairwise_accuracy(&lo.chosen_rewards, &lo.rejected_rewards);
                StepRecord::from_batch(
                    step,
                    lo.loss,
                    [&lo.chosen_rewards, &lo.rejected_rewards],
                    accuracy,
                    [pc, pr],
                )
            }
            DataShape::Unpaired => {
                let lo = loss.unpaired(&logps)?;
                let side = |want: bool, values: &[f64]| {
                    values
                        .iter()
                        .zip(&desirable)
                        .filter(|(_, &d)| d == want)
                        .map(|(v, _)| *v)
                        .collect::<Vec<f64>>()
                };
                let (rewards_chosen, rewards_rejected) =
                    (side(true, &lo.rewards), side(false, &lo.rewards));
                // Unpaired: accurate when desirable examples out-reward undesirable ones on average.
                let accuracy = f64::from(u8::from(
                    metrics::mean(&rewards_chosen) > metrics::mean(&rewards_rejected),
                ));
                StepRecord::from_batch(
                    step,
                    lo.loss,
                    [&rewards_chosen, &rewards_rejected],
                    accuracy,
                    [&side(true, &logps), &side(false, &logps)],
                )
            }
            DataShape::Ranked => {
                let (lo, policy) = loss.ranked(&logps)?;
                // Report the best vs the worst response of each list as chosen vs rejected.
                let best: Vec<f64> = lo.rewards.iter().map(|r| r[0]).collect();
                let worst: Vec<f64> = lo.rewards.iter().map(|r| r[r.len() - 1]).collect();
                let logps_best: Vec<f64> = policy.iter().map(|p| p[0]).collect();
                let logps_worst: Vec<f64> = policy.iter().map(|p| p[p.len() - 1]).collect();
                StepRecord::from_batch(
                    step,
                    lo.loss,
                    [&best, &worst],
                    pairwise_accuracy(&best, &worst),
                    [&logps_best, &logps_worst],
                )
            }
        };
        self.steps_done += 1;
        record.eval = match evaluation {
            Some(scores) => {
                let kl = self.exact_kl(drive).await?;
                let every = self.config.kl_sampled_every;
                let sample = drive == Drive::Blocking
                    && every > 0
                    && (step == self.config.final_step
                        || step.is_multiple_of(self.eval_every().saturating_mul(every)));
                let kl_sampled = if sample { self.sampled_kl()? } else { None };
                self.take_scores(scores, kl, kl_sampled)
            }
            None => self.last_instruments.clone(),
        };
        Ok(record)
    }

    /// `eval/kl`: the mean over the covered positions of KL(πθ‖πref) over the vocabulary,
    /// from the policy's logits now and the reference's kept at the start.
    async fn exact_kl(&mut self, drive: Drive) -> Result<f64> {
        let policy = logits_at(&mut self.engine, &self.rows, &self.kl.positions, drive).await?;
        let vocab = self.engine.config().vocab;
        let per_position: Vec<f64> = policy
            .chunks(vocab)
            .zip(self.kl.reference_logits.chunks(vocab))
            .map(|(p, r)| metrics::kl_from_logits(p, r))
            .collect();
        Ok(metrics::mean(&per_position))
    }

    /// `eval/kl_sampled` (blocking): sample every prompt from the policy as one batch
    /// (temperature 1, the same random stream each time, so that successive estimates
    /// differ by what the policy did, not by fresh noise), score the samples under the
    /// policy, swap the reference weights in to score them again, and put the policy back,
    /// its optimizer state untouched. None when the session keeps no reference weights.
    fn sampled_kl(&mut self) -> Result<Option<f64>> {
        let Some(reference) = &self.kl.reference_params else {
            return Ok(None);
        };
        let cfg = SampleConfig { temperature: 1.0, top_k: 0, max_new_tokens: KL_SAMPLE_MAX_TOKENS };
        let mut rng = Rng::new(self.config.seed ^ KL_SEED);
        let samples =
            sample_batch(&mut self.engine, &self.kl.prompts, self.kl.eot, &cfg, &mut rng)?;
        let rows: Vec<(Vec<u32>, usize)> = self
            .kl
            .prompts
            .iter()
            .zip(samples)
            .map(|(prompt, sample)| ([prompt.as_slice(), &sample].concat(), prompt.len()))
            .collect();
        let batch = TokenBatch::from_rows(&rows)?;
        let policy = self.engine.forward(&batch)?.seq_logps;
        let current = self.engine.params();
        if current.len() != reference.len() {
            return Err(LabError::Engine {
                msg: format!("read {} policy weights, expected {}", current.len(), reference.len()),
            });
        }
        self.engine.set_params_keep_optimizer(reference)?;
        let scored = self.engine.forward(&batch);
        self.engine.set_params_keep_optimizer(&current)?;
        let log_ratios: Vec<f64> = policy
            .iter()
            .zip(scored?.seq_logps)
            .map(|(&p, r)| f64::from(p) - f64::from(r))
            .collect();
        Ok(Some(metrics::mean(&log_ratios)))
    }

    fn batch_of_rows(&self, rows: &[usize]) -> Result<TokenBatch> {
        let refs: Vec<&EncodedRow> = rows.iter().map(|&r| &self.rows[r]).collect();
        batch_of(&refs)
    }

    /// Steps between evaluations of the whole dataset ([`SessionConfig::eval_every`], the
    /// automatic choice resolved).
    pub fn eval_every(&self) -> u32 {
        match self.config.eval_every {
            0 => self.rows.len().div_ceil(EVAL_ROWS_PER_STEP).max(1) as u32,
            every => every,
        }
    }

    /// Score the whole dataset with the current policy and update the instruments (the KLs
    /// included: `eval/kl_sampled` when [`SessionConfig::kl_sampled_every`] is not 0) and the
    /// pairs table.
    pub fn evaluate(&mut self) -> Result<Instruments> {
        complete_now(self.run_evaluate(Drive::Blocking))
    }

    /// [`Session::evaluate`] on the engine's async calls.
    pub async fn evaluate_async(&mut self) -> Result<Instruments> {
        self.run_evaluate(Drive::Async).await
    }

    async fn run_evaluate(&mut self, drive: Drive) -> Result<Instruments> {
        let scores = score_rows(&mut self.engine, &self.rows, drive).await?;
        let kl = self.exact_kl(drive).await?;
        let kl_sampled = match drive {
            Drive::Blocking if self.config.kl_sampled_every > 0 => self.sampled_kl()?,
            _ => None,
        };
        Ok(self.take_scores(scores, kl, kl_sampled))
    }

    /// The pairs table and the instruments from an evaluation's scores of every row and
    /// its KLs.
    fn take_scores(&mut self, scores: Scores, kl: f64, kl_sampled: Option<f64>) -> Instruments {
        self.policy_logps = scores.seq_logps.clone();
        let beta = self.config.params.beta;
        for (stats, group) in self.pair_stats.iter_mut().zip(&self.groups) {
            stats.policy_chosen = self.policy_logps[group.rows.start];
            stats.policy_rejected = self.policy_logps[group.rows.start + 1];
            stats.margin = beta
                * ((stats.policy_chosen - stats.reference_chosen)
                    - (stats.policy_rejected - stats.reference_rejected));
        }
        self.last_instruments =
            Instruments { step: self.steps_done, kl, kl_sampled, ..self.instruments_from(&scores) };
        self.last_instruments.clone()
    }

    fn instruments_from(&self, scores: &Scores) -> Instruments {
        // The preferred row of each group: chosen, the best of a ranking, or a desirable example.
        let preferred: Vec<usize> =
            self.groups.iter().filter(|g| g.desirable).map(|g| g.rows.start).collect();
        let dispreferred: Vec<usize> = match self.shape {
            DataShape::Unpaired => {
                self.groups.iter().filter(|g| !g.desirable).map(|g| g.rows.start).collect()
            }
            _ => self.groups.iter().map(|g| g.rows.end - 1).collect(),
        };
        let change = |rows: &[usize]| {
            metrics::mean(
                &rows
                    .iter()
                    .map(|&r| scores.seq_logps[r] - self.reference_logps[r])
                    .collect::<Vec<_>>(),
            )
        };
        let at = |values: &[f64], rows: &[usize]| {
            metrics::mean(&rows.iter().map(|&r| values[r]).collect::<Vec<_>>())
        };
        let mut out = Instruments {
            logps_chosen_change: change(&preferred),
            logps_rejected_change: change(&dispreferred),
            topk_entropy: at(&scores.topk_entropy, &preferred),
            ..Instruments::default()
        };
        if self.shape == DataShape::Paired {
            let pick = |rows: &[usize], values: &[f64]| {
                rows.iter().map(|&r| values[r]).collect::<Vec<f64>>()
            };
            let (pc, pr) =
                (pick(&preferred, &scores.seq_logps), pick(&dispreferred, &scores.seq_logps));
            let (rc, rr) = (
                pick(&preferred, &self.reference_logps),
                pick(&dispreferred, &self.reference_logps),
            );
            let lc: Vec<f64> =
                preferred.iter().map(|&r| self.rows[r].completion_len() as f64).collect();
            let lr: Vec<f64> =
                dispreferred.iter().map(|&r| self.rows[r].completion_len() as f64).collect();
            let alpha: Vec<f64> = self.groups.iter().map(|g| g.alpha).collect();
            let beta = self.config.params.beta;
            let ranking = metrics::ranking_accuracy(&pc, &pr);
            let idealized = metrics::idealized_ranking_accuracy(&rc, &rr, &alpha, beta);
            out.ranking_accuracy = Some(ranking);
            out.ranking_accuracy_normalized =
                Some(metrics::ranking_accuracy_normalized(&pc, &pr, &lc, &lr));
            out.idealized_ranking_accuracy = Some(idealized);
            out.alignment_gap = Some(metrics::alignment_gap(idealized, ranking));
            out.reward_accuracy =
                Some(metrics::trl_metrics(beta, &pc, &pr, &rc, &rr).rewards_accuracies);
            let displaced: Vec<f64> = (0..pc.len())
                .map(|i| {
                    f64::from(u8::from(
                        metrics::displacement(rc[i], pc[i], rr[i], pr[i]).chosen_fell,
                    ))
                })
                .collect();
            out.displaced_fraction = Some(metrics::mean(&displaced));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(query: &str) -> SessionConfig {
        SessionConfig::from_experiment(&ExperimentConfig::from_query(query).unwrap()).unwrap()
    }

    #[test]
    fn kl_covers_every_position_that_fits_and_a_fixed_subset_beyond() {
        // completion lengths 3, 5, 2, 4 (first scored at 2, rows of 5, 7, 4, 6 tokens)
        let rows: Vec<EncodedRow> = [5, 7, 4, 6]
            .into_iter()
            .map(|len| EncodedRow { tokens: vec![0; len], first_scored: 2 })
            .collect();
        let v = 10;
        assert_eq!(kl_positions(&rows, v, 140), [(0, 3), (1, 5), (2, 2), (3, 4)]);
        let capped = kl_positions(&rows, v, 95);
        assert_eq!(capped.iter().map(|&(_, n)| n).sum::<usize>(), 9, "{capped:?}");
        assert!(capped.windows(2).all(|w| w[0].0 < w[1].0), "in row order: {capped:?}");
        let cut = capped.iter().filter(|&&(r, n)| n < rows[r].completion_len()).count();
        assert!(cut <= 1, "only the last row taken is cut short: {capped:?}");
        assert_eq!(kl_positions(&rows, v, 95), capped, "the same subset every time");
        assert_eq!(kl_positions(&rows, v, 5), [], "no room for one position");
    }

    #[test]
    fn a_divergence_is_blamed_on_the_settings_out_of_their_usual_range_only() {
        let cause = config("lr=0.5").divergence_cause();
        assert!(cause.contains("learning rate 5e-1") && !cause.contains('β'), "{cause}");
        let cause = config("lr=0.0001&beta=50").divergence_cause();
        assert!(cause.contains("β 5e1") && !cause.contains("learning rate"), "{cause}");
        let cause = config("loss=sigmoid%2B20*sft").divergence_cause();
        assert!(cause.contains("weight 20 of sft") && !cause.contains('β'), "{cause}");
        let cause = config("lr=0.0001").divergence_cause();
        assert!(cause.contains("numerical overflow with usual settings"), "{cause}");
    }
}
