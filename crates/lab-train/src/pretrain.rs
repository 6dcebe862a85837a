//! Pretraining the starter policy: supervised fine-tuning from scratch on the synthetic
//! corpus (`lab_core::corpus`), on any [`Engine`].
//!
//! The loss is the token-mean next-token NLL over every token after the BOS (prompt and
//! completion alike, so the model also learns what questions look like):
//! `L = −Σ_rows seq_logp / Σ_rows scored tokens`. The engines back-propagate
//! d(loss)/d(seq_logp) per row, which is the same `−1 / scored tokens` for every row.
//! AdamW with a linear warm-up and a cosine decay to a tenth of the peak rate.

use lab_core::corpus::Example;
use lab_core::data::encode_example;
use lab_core::engine::{AdamWConfig, Engine, TokenBatch};
use lab_core::rng::Rng;
use lab_core::sample::{generate, SampleConfig};
use lab_core::tokenizer::Tokenizer;
use lab_core::{LabError, Result};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq)]
pub struct PretrainConfig {
    pub steps: u32,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warm-up steps.
    pub warmup: u32,
    /// Batch order.
    pub seed: u64,
    /// Log a progress record every this many steps.
    pub log_every: u32,
}

impl PretrainConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(LabError::param("lr", format!("{} must be a finite number > 0", self.lr)));
        }
        if self.batch_size == 0 {
            return Err(LabError::param("batch_size", "must be at least 1"));
        }
        if self.log_every == 0 {
            return Err(LabError::param("log_every", "must be at least 1"));
        }
        Ok(())
    }

    /// Warm-up, then cosine decay from `lr` to `lr / 10`.
    pub fn lr_at(&self, step: u32) -> f32 {
        if step < self.warmup {
            return self.lr * (step + 1) as f32 / self.warmup as f32;
        }
        let span = (self.steps.saturating_sub(self.warmup)).max(1) as f32;
        let progress = ((step - self.warmup) as f32 / span).min(1.0);
        let floor = self.lr / 10.0;
        floor + 0.5 * (self.lr - floor) * (1.0 + (std::f32::consts::PI * progress).cos())
    }
}

/// One progress record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PretrainProgress {
    pub step: u32,
    /// Token-mean NLL (nats) averaged over the steps since the last record.
    pub loss: f64,
    pub lr: f64,
    pub tokens_seen: u64,
}

/// What a pretraining run ends with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PretrainSummary {
    pub steps: u32,
    pub examples: usize,
    pub tokens_seen: u64,
    /// Token-mean NLL over the last logging window.
    pub final_loss: f64,
    /// Fraction of fixed-answer probe questions whose greedy answer is exactly right.
    pub probe_accuracy: f64,
    pub probes: usize,
}

/// Train `engine` on `examples` (encoded with `tokenizer`, each scored from the token after
/// the BOS). Calls
/// `on_progress` every `log_every` steps; stops early, between two steps, once `stop`
/// returns true (the summary's `steps` says how many were done).
pub fn pretrain<E: Engine>(
    engine: &mut E,
    tokenizer: &Tokenizer,
    examples: &[Example],
    config: &PretrainConfig,
    mut on_progress: impl FnMut(&PretrainProgress),
    stop: impl Fn() -> bool,
) -> Result<PretrainSummary> {
    config.validate()?;
    if examples.is_empty() {
        return Err(LabError::param("corpus", "is empty"));
    }
    let ctx = engine.config().ctx;
    let rows: Vec<Vec<u32>> = examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            encode_example(tokenizer, &ex.prompt, &ex.completion, ctx)
                .map(|(tokens, _)| tokens)
                .map_err(|e| LabError::parse(format!("corpus example {i}: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut rng = Rng::new(config.seed);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut cursor = order.len();
    let mut tokens_seen = 0u64;
    let (mut window_loss, mut window_steps) = (0.0f64, 0u32);
    let mut last_loss = f64::NAN;
    let mut steps_done = 0;
    for step in 0..config.steps {
        if stop() {
            break;
        }
        let mut batch_rows = Vec::with_capacity(config.batch_size);
        while batch_rows.len() < config.batch_size.min(rows.len()) {
            if cursor >= order.len() {
                rng.shuffle(&mut order);
                cursor = 0;
            }
            batch_rows.push((rows[order[cursor]].clone(), 1usize));
            cursor += 1;
        }
        let batch = TokenBatch::from_rows(&batch_rows)?;
        let scored: usize = batch.scored_lengths().iter().sum();
        let out = engine.forward(&batch)?;
        let loss = -out.seq_logps.iter().map(|&v| v as f64).sum::<f64>() / scored as f64;
        if !loss.is_finite() {
            return Err(LabError::Engine {
                msg: format!(
                    "pretraining step {}: the loss is {loss} (learning rate {} too high?)",
                    step + 1,
                    config.lr
                ),
            });
        }
        engine.backward(&vec![-1.0 / scored as f32; batch.batch])?;
        let lr = config.lr_at(step);
        engine.adamw_step(&AdamWConfig { lr, ..AdamWConfig::default() }, step + 1)?;
        tokens_seen += scored as u64;
        window_loss += loss;
        window_steps += 1;
        if (step + 1) % config.log_every == 0 || step + 1 == config.steps {
            last_loss = window_loss / window_steps as f64;
            on_progress(&PretrainProgress {
                step: step + 1,
                loss: last_loss,
                lr: lr as f64,
                tokens_seen,
            });
            (window_loss, window_steps) = (0.0, 0);
        }
        steps_done = step + 1;
    }
    if window_steps > 0 {
        last_loss = window_loss / window_steps as f64;
    }
    let (probe_accuracy, probes) = probe_accuracy(engine, tokenizer, examples)?;
    Ok(PretrainSummary {
        steps: steps_done,
        examples: examples.len(),
        tokens_seen,
        final_loss: last_loss,
        probe_accuracy,
        probes,
    })
}

/// The questions the corpus answers one way only (every occurrence has the same
/// completion), as (prompt, answer), sorted, thinned evenly to at most `max`.
pub fn fixed_answer_questions(examples: &[Example], max: usize) -> Vec<(&str, &str)> {
    let mut seen = std::collections::HashMap::<&str, Vec<&str>>::new();
    for ex in examples {
        seen.entry(ex.prompt.as_str()).or_default().push(ex.completion.as_str());
    }
    let mut probes: Vec<(&str, &str)> = seen
        .iter()
        .filter(|(_, c)| c.iter().all(|x| *x == c[0]))
        .map(|(p, c)| (*p, c[0]))
        .collect();
    probes.sort();
    let stride = probes.len().div_ceil(max.max(1)).max(1);
    probes.into_iter().step_by(stride).collect()
}

/// Greedy answers to the fixed-answer questions ([`fixed_answer_questions`]), at most 200
/// of them: the fraction exactly right, and how many were asked.
pub fn probe_accuracy<E: Engine>(
    engine: &mut E,
    tokenizer: &Tokenizer,
    examples: &[Example],
) -> Result<(f64, usize)> {
    let probes = fixed_answer_questions(examples, 200);
    let mut right = 0;
    let mut rng = Rng::new(0);
    for (prompt, answer) in &probes {
        let mut ids = vec![tokenizer.eot()];
        ids.extend(tokenizer.encode(prompt)?);
        let got = generate(
            engine,
            &ids,
            tokenizer.eot(),
            &SampleConfig { temperature: 0.0, top_k: 0, max_new_tokens: answer.len() + 2 },
            &mut rng,
        )?;
        right += usize::from(tokenizer.decode(&got) == *answer);
    }
    Ok((right as f64 / probes.len().max(1) as f64, probes.len()))
}
