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
use std::future::Future;
use std::pin::Pin;

/// The future an `_async` engine call returns: boxed so that `dyn Engine` stays possible,
/// and not `Send`, because WebGPU handles in the browser are not.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

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
    /// with `EOT` to the longest row.
    pub fn from_rows(rows: &[(Vec<u32>, usize)]) -> Result<TokenBatch> {
        let batch = rows.len();
        let seq_len = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        let mut tokens = vec![crate::tokenizer::EOT; batch * seq_len];
        let mut score_mask = vec![0.0; batch * seq_len];
        for (b, (row, first_scored)) in rows.iter().enumerate() {
            if *first_scored == 0 || *first_scored > row.len() {
                return Err(LabError::shape(format!("row {b}: first scored position {first_scored} must be in 1..={}", row.len())));
            }
            tokens[b * seq_len..b * seq_len + row.len()].copy_from_slice(row);
            score_mask[b * seq_len + first_scored..b * seq_len + row.len()].fill(1.0);
        }
        Ok(TokenBatch { batch, seq_len, tokens, score_mask })
    }

    /// Number of scored tokens per row.
    pub fn scored_lengths(&self) -> Vec<usize> {
        self.score_mask.chunks(self.seq_len.max(1)).map(|row| row.iter().filter(|&&m| m > 0.0).count()).collect()
    }

    /// Check the batch fits the model.
    pub fn check(&self, cfg: &GptConfig) -> Result<()> {
        if self.tokens.len() != self.batch * self.seq_len || self.score_mask.len() != self.tokens.len() {
            return Err(LabError::shape(format!("batch of {}x{} has {} tokens and {} mask entries", self.batch, self.seq_len, self.tokens.len(), self.score_mask.len())));
        }
        if self.seq_len > cfg.ctx {
            return Err(LabError::shape(format!("sequence length {} exceeds the model's context {}", self.seq_len, cfg.ctx)));
        }
        if let Some(bad) = self.tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(LabError::shape(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab)));
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
    /// (B) mean over scored positions of the top-10 probability mass.
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

impl Default for AdamWConfig {
    /// TRL/transformers defaults (weight decay 0), learning rate to be set by the caller.
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
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

    /// Forward pass; keeps the activations for a following `backward` on the same batch.
    fn forward(&mut self, batch: &TokenBatch) -> Result<ForwardOut>;
    /// (B, T, V) logits of a batch (parity tests and sampling).
    fn logits(&mut self, batch: &TokenBatch) -> Result<Vec<f32>>;
    /// (B, T, C) last-layer hidden states after the final LayerNorm (CHES).
    fn hidden_states(&mut self, batch: &TokenBatch) -> Result<Vec<f32>>;

    /// Back-propagate d(loss)/d(seq_logp) (one per row) through the last `forward`,
    /// overwriting the gradient buffer.
    fn backward(&mut self, d_seq_logps: &[f32]) -> Result<()>;
    /// The flat gradient of the last `backward` (parity tests).
    fn grads(&self) -> Vec<f32>;
    /// One AdamW update from the current gradients; `step` counts from 1.
    fn adamw_step(&mut self, opt: &AdamWConfig, step: u32) -> Result<()>;

    /// [`Engine::forward`], awaitable (the only way to read a GPU result in the browser).
    fn forward_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, ForwardOut> {
        Box::pin(std::future::ready(self.forward(batch)))
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
    fn grads(&self) -> Vec<f32> {
        (**self).grads()
    }
    fn adamw_step(&mut self, opt: &AdamWConfig, step: u32) -> Result<()> {
        (**self).adamw_step(opt, step)
    }
    fn forward_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, ForwardOut> {
        (**self).forward_async(batch)
    }
    fn hidden_states_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, Vec<f32>> {
        (**self).hidden_states_async(batch)
    }
    fn params_async(&self) -> EngineFuture<'_, Vec<f32>> {
        (**self).params_async()
    }
}
