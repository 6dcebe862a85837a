//! The engine interface: what `lab-train` needs from a GPT implementation. `lab-cpu` is the
//! reference implementation; `lab-gpu` implements the same trait on WebGPU.
//!
//! Conventions (both engines, every test):
//! - A batch is B rows of T token ids, row-major (B, T), right-padded with `EOT`.
//! - `score_mask[b, t] = 1` when token `t` of row `b` is a completion token whose
//!   log-prob counts, i.e. `log p(tokens[b,t] | tokens[b,<t])`; position 0 is never scored.
//! - The sequence log-prob of row b is Σ_t score_mask[b,t] · logp[b,t].
//! - `backward` receives d(loss)/d(sequence log-prob) per row; every loss in the zoo is a
//!   function of the sequence log-probs (and lengths), so this is the only gradient the
//!   engines need.
//! - Every call that returns numbers has an `_async` twin. In the browser a GPU readback
//!   can only be awaited, so code that must run there (`lab-train`'s `step_async`, the web
//!   worker) uses the twins; an engine whose results are at hand (the CPU engine) keeps the
//!   default twins, which return the synchronous call's result, already complete.

use crate::config::GptConfig;
use crate::error::{LabError, Result};
use crate::loss::{
    kto_loss, mixed_loss, plackett_luce_loss, DataShape, LossMix, LossOut, LossParams, PairLogps,
    RankedLogps, RankedLossOut, UnpairedLogps, UnpairedLossOut,
};
use std::future::Future;
use std::pin::Pin;

/// The future an `_async` engine call returns: boxed so that `dyn Engine` stays possible,
/// and not `Send`, because WebGPU handles in the browser are not.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

/// Poll `future` once: its output if it is ready, else None. The CPU engine's async calls
/// (and a blocking session's) never wait, so one poll completes them; this is how native
/// code runs them without an executor.
pub fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    match std::pin::pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq_len: usize,
    /// (B, T) token ids.
    pub tokens: Vec<u32>,
    /// (B, T) 1.0 where the token is scored, 0.0 elsewhere.
    pub score_mask: Vec<f32>,
}

impl TokenBatch {
    /// Build a batch from rows of (tokens, first scored position); rows are right-padded
    /// to the longest row with id 0 (any id would do: padding is never scored and, being
    /// after the row, never attended to).
    pub fn from_rows(rows: &[(Vec<u32>, usize)]) -> Result<TokenBatch> {
        let batch = rows.len();
        let seq_len = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        let mut tokens = vec![0; batch * seq_len];
        let mut score_mask = vec![0.0; batch * seq_len];
        for (b, (row, first_scored)) in rows.iter().enumerate() {
            if *first_scored == 0 || *first_scored > row.len() {
                return Err(LabError::shape(format!(
                    "row {b}: first scored position {first_scored} must be in 1..={}",
                    row.len()
                )));
            }
            tokens[b * seq_len..b * seq_len + row.len()].copy_from_slice(row);
            score_mask[b * seq_len + first_scored..b * seq_len + row.len()].fill(1.0);
        }
        Ok(TokenBatch { batch, seq_len, tokens, score_mask })
    }

    /// Number of scored tokens per row.
    pub fn scored_lengths(&self) -> Vec<usize> {
        self.score_mask
            .chunks(self.seq_len.max(1))
            .map(|row| row.iter().filter(|&&m| m > 0.0).count())
            .collect()
    }

    /// Check the batch fits the model.
    pub fn check(&self, cfg: &GptConfig) -> Result<()> {
        if self.tokens.len() != self.batch * self.seq_len
            || self.score_mask.len() != self.tokens.len()
        {
            return Err(LabError::shape(format!(
                "batch of {}x{} has {} tokens and {} mask entries",
                self.batch,
                self.seq_len,
                self.tokens.len(),
                self.score_mask.len()
            )));
        }
        if self.seq_len > cfg.ctx {
            return Err(LabError::shape(format!(
                "sequence length {} exceeds the model's context {}",
                self.seq_len, cfg.ctx
            )));
        }
        if let Some(bad) = self.tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(LabError::shape(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                cfg.vocab
            )));
        }
        Ok(())
    }
}

/// What a forward pass returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOut {
    /// (B, T) log p(token | prefix) at scored positions, 0 elsewhere.
    pub token_logps: Vec<f32>,
    /// (B) Σ of scored token log-probs.
    pub seq_logps: Vec<f32>,
    /// (B) mean over scored positions of the top-10 entropy (bits) of the predicting
    /// distribution (Shi et al. 2024); 0 for rows with no scored token.
    pub topk_entropy: Vec<f32>,
    /// (B) mean over scored positions of the top-10 probability mass (no instrument reports
    /// it: on a 96-symbol vocabulary it stays near 1, see docs/losses-and-metrics.md).
    pub topk_mass: Vec<f32>,
}

/// Optimizer settings (AdamW, decoupled weight decay, as torch.optim.AdamW).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamWConfig {
    /// One in-place AdamW update of `params` from `grads` with the moments `m` and `v`
    /// (`step` counts from 1): decoupled decay p ← p·(1 − lr·wd), then
    /// p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε), torch's single-tensor
    /// arithmetic. Serial; the CPU engine runs it on chunks in parallel.
    pub fn update(
        &self,
        params: &mut [f32],
        grads: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        step: u32,
    ) {
        let bias_correction1 = 1.0 - self.beta1.powi(step as i32);
        let bias_correction2_sqrt = (1.0 - self.beta2.powi(step as i32)).sqrt();
        let step_size = self.lr / bias_correction1;
        let decay = 1.0 - self.lr * self.weight_decay;
        for i in 0..params.len() {
            m[i] = self.beta1 * m[i] + (1.0 - self.beta1) * grads[i];
            v[i] = self.beta2 * v[i] + (1.0 - self.beta2) * grads[i] * grads[i];
            let denom = v[i].sqrt() / bias_correction2_sqrt + self.eps;
            params[i] = params[i] * decay - step_size * (m[i] / denom);
        }
    }
}

impl Default for AdamWConfig {
    /// TRL/transformers defaults (weight decay 0), learning rate to be set by the caller.
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// How a training batch's rows make up the loss's groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rows<'a> {
    /// P chosen completions, then their P rejected ones (TRL's order): the paired losses.
    Pairs,
    /// One completion a row, desirable or not (KTO).
    Unpaired(&'a [bool]),
    /// Ranked lists (best first) of these sizes, one after another (Plackett–Luce).
    Ranked(&'a [usize]),
}

/// A training step's loss and what it reads besides the policy's sequence log-probs: the
/// inputs of [`Engine::train_step`]. Per-row arrays follow the batch's rows.
#[derive(Debug, Clone, Copy)]
pub struct StepLoss<'a> {
    /// The loss; KTO and Plackett–Luce are single terms (their weight is not applied).
    pub mix: &'a LossMix,
    pub params: &'a LossParams,
    pub rows: Rows<'a>,
    /// Per row, the reference sequence log-prob.
    pub reference: &'a [f64],
    /// Per row, the completion length (scored tokens), > 0.
    pub lengths: &'a [f64],
}

impl StepLoss<'_> {
    /// Check the shapes against a batch of `rows` rows and the mix against the parameters
    /// and the rows (the checks the loss functions make that do not need the policy's
    /// log-probs).
    pub fn check(&self, rows: usize) -> Result<()> {
        let shape = self.mix.data_shape()?;
        let wanted = match self.rows {
            Rows::Pairs => DataShape::Paired,
            Rows::Unpaired(_) => DataShape::Unpaired,
            Rows::Ranked(_) => DataShape::Ranked,
        };
        if shape != wanted {
            return Err(LabError::param(
                "loss",
                format!(
                    "{} takes {shape:?} data, but the batch's rows are {wanted:?}",
                    self.mix.name()
                ),
            ));
        }
        match self.rows {
            Rows::Pairs if rows == 0 || !rows.is_multiple_of(2) => {
                return Err(LabError::shape(format!("a step on pairs needs an even, non-zero number of rows (P chosen, then P rejected), got {rows}")));
            }
            Rows::Unpaired(desirable) if desirable.len() != rows || rows == 0 => {
                return Err(LabError::shape(format!(
                    "{} desirable flags for a batch of {rows} rows",
                    desirable.len()
                )));
            }
            Rows::Ranked(sizes)
                if sizes.iter().sum::<usize>() != rows
                    || sizes.is_empty()
                    || sizes.iter().any(|&k| k < 2) =>
            {
                return Err(LabError::shape(format!(
                    "ranked lists of sizes {sizes:?} (each at least 2) for a batch of {rows} rows"
                )));
            }
            _ => {}
        }
        for (name, values) in [("reference", self.reference), ("lengths", self.lengths)] {
            if values.len() != rows {
                return Err(LabError::shape(format!(
                    "{} {name} values for a batch of {rows} rows",
                    values.len()
                )));
            }
            if let Some(i) =
                values.iter().position(|v| !v.is_finite() || (name == "lengths" && *v <= 0.0))
            {
                return Err(LabError::param(
                    name,
                    format!(
                        "row {i} is {}; every value must be finite (and a length > 0)",
                        values[i]
                    ),
                ));
            }
        }
        for &(kind, _) in &self.mix.terms {
            self.params.validate(kind)?;
        }
        Ok(())
    }

    /// A paired loss ([`Rows::Pairs`]) on the policy's (2P) sequence log-probs, in f64, by
    /// `mixed_loss`.
    pub fn paired(&self, seq_logps: &[f64]) -> Result<LossOut> {
        let p = seq_logps.len() / 2;
        let x = PairLogps {
            policy_chosen: &seq_logps[..p],
            policy_rejected: &seq_logps[p..],
            reference_chosen: &self.reference[..p],
            reference_rejected: &self.reference[p..],
            chosen_lengths: &self.lengths[..p],
            rejected_lengths: &self.lengths[p..],
        };
        mixed_loss(self.mix, self.params, &x)
    }

    /// KTO ([`Rows::Unpaired`]) on the policy's sequence log-probs, in f64.
    pub fn unpaired(&self, seq_logps: &[f64]) -> Result<UnpairedLossOut> {
        let Rows::Unpaired(desirable) = self.rows else {
            return Err(LabError::param("loss", "the batch's rows are not unpaired examples"));
        };
        kto_loss(
            self.params,
            &UnpairedLogps {
                policy: seq_logps,
                reference: self.reference,
                lengths: self.lengths,
                desirable,
            },
        )
    }

    /// Plackett–Luce ([`Rows::Ranked`]) on the policy's sequence log-probs, in f64; also
    /// returns the policy's log-probs split into the lists.
    pub fn ranked(&self, seq_logps: &[f64]) -> Result<(RankedLossOut, Vec<Vec<f64>>)> {
        let Rows::Ranked(sizes) = self.rows else {
            return Err(LabError::param("loss", "the batch's rows are not ranked lists"));
        };
        let split = |values: &[f64]| {
            let mut at = 0;
            sizes
                .iter()
                .map(|&k| {
                    at += k;
                    values[at - k..at].to_vec()
                })
                .collect::<Vec<Vec<f64>>>()
        };
        let (policy, reference) = (split(seq_logps), split(self.reference));
        Ok((
            plackett_luce_loss(
                self.params,
                &RankedLogps { policy: &policy, reference: &reference },
            )?,
            policy,
        ))
    }

    /// The loss and d(loss)/d(seq_logp) per row for the backward; an error naming the step
    /// when the loss or its gradient is not finite (the step must then leave the model as it
    /// was).
    pub fn gradient(&self, seq_logps: &[f32], step: u32) -> Result<(f64, Vec<f32>)> {
        self.check(seq_logps.len())?;
        if seq_logps.iter().any(|v| !v.is_finite()) {
            return Err(not_finite(step));
        }
        let logps: Vec<f64> = seq_logps.iter().map(|&v| f64::from(v)).collect();
        let (loss, d): (f64, Vec<f64>) = match self.rows {
            Rows::Pairs => {
                let out = self.paired(&logps)?;
                (out.loss, out.d_policy_chosen.into_iter().chain(out.d_policy_rejected).collect())
            }
            Rows::Unpaired(_) => {
                let out = self.unpaired(&logps)?;
                (out.loss, out.d_policy)
            }
            Rows::Ranked(_) => {
                let out = self.ranked(&logps)?.0;
                (out.loss, out.d_policy.into_iter().flatten().collect())
            }
        };
        let d: Vec<f32> = d.into_iter().map(|v| v as f32).collect();
        if !loss.is_finite() || d.iter().any(|v| !v.is_finite()) {
            return Err(not_finite(step));
        }
        Ok((loss, d))
    }
}

/// [`Engine::train_step`] with the loss on the CPU: forward, [`StepLoss::gradient`],
/// backward, AdamW (the trait's default, and an engine's fallback).
pub fn train_step_in_parts<E: Engine + ?Sized>(
    engine: &mut E,
    batch: &TokenBatch,
    loss: &StepLoss,
    opt: &AdamWConfig,
    step: u32,
) -> Result<ForwardOut> {
    loss.check(batch.batch)?;
    let out = engine.forward(batch)?;
    let (_, d) = loss.gradient(&out.seq_logps, step)?;
    engine.backward(&d)?;
    engine.adamw_step(opt, step)?;
    Ok(out)
}

/// [`train_step_in_parts`] on the engine's awaitable forward.
pub fn train_step_in_parts_async<'a, E: Engine + ?Sized>(
    engine: &'a mut E,
    batch: &'a TokenBatch,
    loss: &'a StepLoss<'a>,
    opt: &'a AdamWConfig,
    step: u32,
) -> EngineFuture<'a, ForwardOut> {
    Box::pin(async move {
        loss.check(batch.batch)?;
        let out = engine.forward_async(batch).await?;
        let (_, d) = loss.gradient(&out.seq_logps, step)?;
        engine.backward(&d)?;
        engine.adamw_step(opt, step)?;
        Ok(out)
    })
}

/// The error of a step whose loss or gradient is not finite; the step changed nothing.
pub fn not_finite(step: u32) -> LabError {
    LabError::NotFinite { step }
}

/// How close one engine's numbers are to the reference engine's: the largest absolute
/// error against a tolerance that scales with the reference's size, `rel · max|want| + abs`
/// (the GPU parity tests' and the GPU bench's `--parity` measure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closeness {
    /// max |got − want| (infinite when a value is NaN or the lengths differ).
    pub max_abs_err: f32,
    /// Where the largest error is.
    pub at: usize,
    pub tol: f32,
    /// max |want|.
    pub scale: f32,
}

impl Closeness {
    pub fn of(got: &[f32], want: &[f32], rel: f32, abs: f32) -> Closeness {
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let mut close = Closeness {
            max_abs_err: if got.len() == want.len() { 0.0 } else { f32::INFINITY },
            at: 0,
            tol: rel * scale + abs,
            scale,
        };
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (g - w).abs();
            if err > close.max_abs_err || err.is_nan() {
                close.max_abs_err = if err.is_nan() { f32::INFINITY } else { err };
                close.at = i;
            }
        }
        close
    }

    pub fn ok(&self) -> bool {
        self.max_abs_err <= self.tol
    }
}

/// K for the top-k instruments (Shi et al. 2024 use k = 10).
pub const TOPK: usize = 10;

pub trait Engine {
    fn config(&self) -> &GptConfig;
    /// A short description for logs and the page ("cpu (2 threads)", "NVIDIA H100 / Vulkan").
    fn name(&self) -> String;

    /// The flat parameters (llm.c layout, [`crate::config::ParamLayout`]).
    fn params(&self) -> Vec<f32>;
    /// Replace the parameters and reset the optimizer state.
    fn set_params(&mut self, params: &[f32]) -> Result<()>;
    /// Replace the parameters and leave the optimizer state (AdamW's moments) as it is: a
    /// session scores other weights in the middle of a run (the reference's, for
    /// `eval/kl_sampled`) and then puts the policy back, and training continues as if
    /// nothing happened.
    fn set_params_keep_optimizer(&mut self, params: &[f32]) -> Result<()>;

    /// Forward pass; keeps the activations for a following `backward` on the same batch.
    fn forward(&mut self, batch: &TokenBatch) -> Result<ForwardOut>;
    /// (B, T, V) logits of a batch (parity tests and sampling).
    fn logits(&mut self, batch: &TokenBatch) -> Result<Vec<f32>>;
    /// (B, T, C) last-layer hidden states after the final LayerNorm (CHES).
    fn hidden_states(&mut self, batch: &TokenBatch) -> Result<Vec<f32>>;

    /// Back-propagate d(loss)/d(seq_logp) (one per row) through the last `forward`,
    /// overwriting the gradient buffer.
    fn backward(&mut self, d_seq_logps: &[f32]) -> Result<()>;
    /// Parameter tensors (by their names in `ParamLayout::tensors`) whose gradient the
    /// caller never reads, such as a LoRA base's: an engine may skip computing them, and
    /// their gradient then reads zero. The default computes every gradient.
    fn freeze(&mut self, _tensors: &[&str]) -> Result<()> {
        Ok(())
    }
    /// The flat gradient of the last `backward` (parity tests).
    fn grads(&self) -> Vec<f32>;
    /// One AdamW update from the current gradients; `step` counts from 1.
    fn adamw_step(&mut self, opt: &AdamWConfig, step: u32) -> Result<()>;

    /// One training step: forward, the loss's gradient, backward and AdamW; returns the
    /// forward's outputs (the log-probs before the update). By default the loss is
    /// evaluated on the CPU between `forward` and `backward`; the GPU engine evaluates it on
    /// the device, so that the whole step is one submission. A non-finite loss is an error
    /// ([`not_finite`]) and leaves the model and the optimizer as they were.
    fn train_step(
        &mut self,
        batch: &TokenBatch,
        loss: &StepLoss,
        opt: &AdamWConfig,
        step: u32,
    ) -> Result<ForwardOut> {
        train_step_in_parts(self, batch, loss, opt, step)
    }

    /// [`Engine::train_step`], awaitable.
    fn train_step_async<'a>(
        &'a mut self,
        batch: &'a TokenBatch,
        loss: &'a StepLoss<'a>,
        opt: &'a AdamWConfig,
        step: u32,
    ) -> EngineFuture<'a, ForwardOut> {
        train_step_in_parts_async(self, batch, loss, opt, step)
    }

    /// Forwards of several batches (an evaluation in chunks); the GPU engine submits them all
    /// before it waits for any (one round trip instead of one a batch). By default one after
    /// another. The last one is what a following `backward` uses.
    fn forwards_async<'a>(
        &'a mut self,
        batches: &'a [TokenBatch],
    ) -> EngineFuture<'a, Vec<ForwardOut>> {
        Box::pin(async move {
            let mut outs = Vec::with_capacity(batches.len());
            for batch in batches {
                outs.push(self.forward_async(batch).await?);
            }
            Ok(outs)
        })
    }

    /// [`Engine::train_step`], then forwards of `batches` with the updated weights (the
    /// evaluation after a step); the GPU engine submits them all before it waits for any.
    /// By default one after another. A failed step is an error after the forwards ran.
    fn train_step_then_forwards_async<'a>(
        &'a mut self,
        batch: &'a TokenBatch,
        loss: &'a StepLoss<'a>,
        opt: &'a AdamWConfig,
        step: u32,
        batches: &'a [TokenBatch],
    ) -> EngineFuture<'a, (ForwardOut, Vec<ForwardOut>)> {
        Box::pin(async move {
            let out = self.train_step_async(batch, loss, opt, step).await?;
            Ok((out, self.forwards_async(batches).await?))
        })
    }

    /// [`Engine::forward`], awaitable (the only way to read a GPU result in the browser).
    fn forward_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, ForwardOut> {
        Box::pin(std::future::ready(self.forward(batch)))
    }
    /// [`Engine::logits`], awaitable.
    fn logits_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, Vec<f32>> {
        Box::pin(std::future::ready(self.logits(batch)))
    }
    /// [`Engine::hidden_states`], awaitable.
    fn hidden_states_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, Vec<f32>> {
        Box::pin(std::future::ready(self.hidden_states(batch)))
    }
    /// [`Engine::params`], awaitable; unlike `params`, a failed readback is an error.
    fn params_async(&self) -> EngineFuture<'_, Vec<f32>> {
        Box::pin(std::future::ready(Ok(self.params())))
    }
}

/// A boxed engine is an engine, so binaries can pick CPU or GPU at run time
/// (`Session<Box<dyn Engine>>`).
impl<E: Engine + ?Sized> Engine for Box<E> {
    fn config(&self) -> &GptConfig {
        (**self).config()
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn params(&self) -> Vec<f32> {
        (**self).params()
    }
    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        (**self).set_params(params)
    }
    fn set_params_keep_optimizer(&mut self, params: &[f32]) -> Result<()> {
        (**self).set_params_keep_optimizer(params)
    }
    fn forward(&mut self, batch: &TokenBatch) -> Result<ForwardOut> {
        (**self).forward(batch)
    }
    fn logits(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        (**self).logits(batch)
    }
    fn hidden_states(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        (**self).hidden_states(batch)
    }
    fn backward(&mut self, d_seq_logps: &[f32]) -> Result<()> {
        (**self).backward(d_seq_logps)
    }
    fn freeze(&mut self, tensors: &[&str]) -> Result<()> {
        (**self).freeze(tensors)
    }
    fn grads(&self) -> Vec<f32> {
        (**self).grads()
    }
    fn adamw_step(&mut self, opt: &AdamWConfig, step: u32) -> Result<()> {
        (**self).adamw_step(opt, step)
    }
    fn train_step(
        &mut self,
        batch: &TokenBatch,
        loss: &StepLoss,
        opt: &AdamWConfig,
        step: u32,
    ) -> Result<ForwardOut> {
        (**self).train_step(batch, loss, opt, step)
    }
    fn train_step_async<'a>(
        &'a mut self,
        batch: &'a TokenBatch,
        loss: &'a StepLoss<'a>,
        opt: &'a AdamWConfig,
        step: u32,
    ) -> EngineFuture<'a, ForwardOut> {
        (**self).train_step_async(batch, loss, opt, step)
    }
    fn forward_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, ForwardOut> {
        (**self).forward_async(batch)
    }
    fn forwards_async<'a>(
        &'a mut self,
        batches: &'a [TokenBatch],
    ) -> EngineFuture<'a, Vec<ForwardOut>> {
        (**self).forwards_async(batches)
    }
    fn train_step_then_forwards_async<'a>(
        &'a mut self,
        batch: &'a TokenBatch,
        loss: &'a StepLoss<'a>,
        opt: &'a AdamWConfig,
        step: u32,
        batches: &'a [TokenBatch],
    ) -> EngineFuture<'a, (ForwardOut, Vec<ForwardOut>)> {
        (**self).train_step_then_forwards_async(batch, loss, opt, step, batches)
    }
    fn logits_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, Vec<f32>> {
        (**self).logits_async(batch)
    }
    fn hidden_states_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, Vec<f32>> {
        (**self).hidden_states_async(batch)
    }
    fn params_async(&self) -> EngineFuture<'_, Vec<f32>> {
        (**self).params_async()
    }
}

#[cfg(test)]
mod tests {
    use super::Closeness;

    #[test]
    fn closeness_scales_its_tolerance_with_the_reference_and_flags_nan() {
        let close = Closeness::of(&[1.0, -2.0001, 3.0], &[1.0, -2.0, 3.0], 1e-4, 1e-6);
        assert_eq!((close.at, close.scale), (1, 3.0));
        assert!((close.tol - 3.01e-4).abs() < 1e-9 && close.ok(), "{close:?}");
        let far = Closeness::of(&[1.0, -2.01, 3.0], &[1.0, -2.0, 3.0], 1e-4, 1e-6);
        assert!(!far.ok());
        let nan = Closeness::of(&[1.0, f32::NAN], &[1.0, 2.0], 1e-4, 1e-6);
        assert_eq!((nan.max_abs_err, nan.at), (f32::INFINITY, 1));
        assert!(!Closeness::of(&[1.0], &[1.0, 2.0], 1e-4, 1e-6).ok(), "lengths differ");
    }
}
