//! LoRA training on any engine: [`LoraEngine`] wraps an engine holding the frozen base
//! weights and trains only low-rank adapters ([`lab_core::lora`]). The wrapped engine runs
//! the forward and backward at the merged weights `W + s·B·A`; each update projects its
//! weight gradient onto the adapters, steps AdamW on them alone and merges again. With
//! PEFT's initialisation (B = 0) the merged weights start as the base, which is then also
//! the frozen reference: the adapters switched off.
//!
//! This is the plain way, not the fast one: the wrapped engine still computes the full
//! weight gradient and holds the merged weights beside the base. It is the twin a fused
//! LoRA kernel is to be checked against.

use lab_core::config::GptConfig;
use lab_core::engine::{AdamWConfig, Engine, EngineFuture, ForwardOut, TokenBatch};
use lab_core::lora::LoraConfig;
use lab_core::{LabError, Result};

/// An engine whose trainable parameters are LoRA adapters on a frozen base.
pub struct LoraEngine<E> {
    inner: E,
    lora: LoraConfig,
    base: Vec<f32>,
    initial: Vec<f32>,
    adapters: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl<E: Engine> LoraEngine<E> {
    /// Adapt `inner`'s current weights, which become the frozen base, with `adapters`
    /// (for example [`LoraConfig::init`]).
    pub fn new(mut inner: E, lora: LoraConfig, adapters: Vec<f32>) -> Result<LoraEngine<E>> {
        let base = inner.params();
        let merged = lora.merged(inner.config(), &base, &adapters)?;
        inner.set_params(&merged)?;
        // only the adapted weights' gradients are read (projected onto the adapters)
        let frozen = lora.frozen_tensors(inner.config());
        inner.freeze(&frozen)?;
        let n = adapters.len();
        Ok(LoraEngine {
            inner,
            lora,
            base,
            initial: adapters.clone(),
            adapters,
            m: vec![0.0; n],
            v: vec![0.0; n],
        })
    }

    pub fn lora(&self) -> &LoraConfig {
        &self.lora
    }

    /// The adapters as trained so far (the layout of [`LoraConfig::tensors`]).
    pub fn adapters(&self) -> &[f32] {
        &self.adapters
    }

    /// The frozen base weights.
    pub fn base(&self) -> &[f32] {
        &self.base
    }

    fn merge(&mut self) -> Result<()> {
        let merged = self.lora.merged(self.inner.config(), &self.base, &self.adapters)?;
        self.inner.set_params_keep_optimizer(&merged)
    }
}

impl<E: Engine> Engine for LoraEngine<E> {
    fn config(&self) -> &GptConfig {
        self.inner.config()
    }

    fn name(&self) -> String {
        format!(
            "{} + LoRA (r {}, α {}, {})",
            self.inner.name(),
            self.lora.rank,
            self.lora.alpha,
            self.lora.targets.join(", ")
        )
    }

    /// The merged weights.
    fn params(&self) -> Vec<f32> {
        self.inner.params()
    }

    /// `params` become the base and the adapters start again from their first values, with
    /// fresh moments: a new run from these weights.
    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        if params.len() != self.base.len() {
            return Err(LabError::shape(format!(
                "{} parameters given, the model has {}",
                params.len(),
                self.base.len()
            )));
        }
        self.base = params.to_vec();
        self.adapters = self.initial.clone();
        self.m.fill(0.0);
        self.v.fill(0.0);
        let merged = self.lora.merged(self.inner.config(), &self.base, &self.adapters)?;
        self.inner.set_params(&merged)
    }

    /// Other weights scored for a moment (the reference's, for `eval/kl_sampled`); the next
    /// update merges base and adapters again, so the caller puts the policy back first.
    fn set_params_keep_optimizer(&mut self, params: &[f32]) -> Result<()> {
        self.inner.set_params_keep_optimizer(params)
    }

    fn forward(&mut self, batch: &TokenBatch) -> Result<ForwardOut> {
        self.inner.forward(batch)
    }

    fn logits(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.inner.logits(batch)
    }

    fn hidden_states(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.inner.hidden_states(batch)
    }

    fn backward(&mut self, d_seq_logps: &[f32]) -> Result<()> {
        self.inner.backward(d_seq_logps)
    }

    /// The gradient with respect to the merged weights (the adapters' is its projection).
    fn grads(&self) -> Vec<f32> {
        self.inner.grads()
    }

    /// AdamW on the adapters alone, from the projection of the weight gradient.
    fn adamw_step(&mut self, opt: &AdamWConfig, step: u32) -> Result<()> {
        if step == 0 {
            return Err(LabError::param("step", "AdamW steps count from 1"));
        }
        let cfg = *self.inner.config();
        let grads = self.lora.project_grads(&cfg, &self.adapters, &self.inner.grads())?;
        opt.update(&mut self.adapters, &grads, &mut self.m, &mut self.v, step);
        self.merge()
    }

    // train_step and its async forms keep the trait's defaults (forward, the loss's
    // gradient, backward, then the adamw_step above); the reads go to the wrapped engine.

    fn forwards_async<'a>(
        &'a mut self,
        batches: &'a [TokenBatch],
    ) -> EngineFuture<'a, Vec<ForwardOut>> {
        self.inner.forwards_async(batches)
    }

    fn forward_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, ForwardOut> {
        self.inner.forward_async(batch)
    }

    fn logits_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, Vec<f32>> {
        self.inner.logits_async(batch)
    }

    fn hidden_states_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, Vec<f32>> {
        self.inner.hidden_states_async(batch)
    }

    fn params_async(&self) -> EngineFuture<'_, Vec<f32>> {
        self.inner.params_async()
    }
}
