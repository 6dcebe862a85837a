//! The reference engine: GPT-2 forward, backward and AdamW in plain f32 Rust on the CPU,
//! llm.c style, parallel with rayon yet bit-for-bit reproducible.
//!
//! [`model`] holds the fast layers and the generic [`model::Gpt`] (also run in f64 by the
//! gradient tests), [`reference`] the same model written plainly (one sequence, f64, plain
//! loops), the twin the fast kernels are tested against, [`adamw`] the optimizer; this file
//! wires them to [`lab_core::Engine`].

pub mod adamw;
#[cfg(test)]
mod central_differences;
pub mod float;
pub mod model;
pub mod reference;

use lab_core::config::{init_params, GptConfig};
use lab_core::engine::{AdamWConfig, Engine, ForwardOut, TokenBatch};
use lab_core::error::{LabError, Result};
use model::Gpt;

/// GPT-2 on the CPU in f32, with AdamW state.
#[derive(Debug)]
pub struct CpuEngine {
    model: Gpt<f32>,
    /// AdamW first and second moments, flat like the parameters.
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
}

impl CpuEngine {
    /// An engine over `params` (llm.c layout); the length must match the config.
    pub fn new(cfg: GptConfig, params: Vec<f32>) -> Result<CpuEngine> {
        cfg.validate()?;
        check_len(&cfg, params.len())?;
        let total = params.len();
        Ok(CpuEngine {
            model: Gpt::new(cfg, params),
            adam_m: vec![0.0; total],
            adam_v: vec![0.0; total],
        })
    }

    /// An engine with GPT-2 initialisation ([`init_params`]) from `seed`.
    pub fn random(cfg: GptConfig, seed: u64) -> Result<CpuEngine> {
        cfg.validate()?;
        CpuEngine::new(cfg, init_params(&cfg, seed))
    }

    fn run_forward(&mut self, batch: &TokenBatch) -> Result<model::HeadOut<f32>> {
        batch.check(&self.model.cfg)?;
        if batch.batch == 0 || batch.seq_len == 0 {
            return Err(LabError::shape(format!(
                "empty batch ({}x{})",
                batch.batch, batch.seq_len
            )));
        }
        Ok(self.model.forward(&batch.tokens, &batch.score_mask, batch.batch, batch.seq_len))
    }
}

fn check_len(cfg: &GptConfig, len: usize) -> Result<()> {
    let total = cfg.layout().total;
    if len != total {
        return Err(LabError::shape(format!(
            "{len} parameters given, but the config {cfg:?} needs {total}"
        )));
    }
    Ok(())
}

impl Engine for CpuEngine {
    fn config(&self) -> &GptConfig {
        &self.model.cfg
    }

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn params(&self) -> Vec<f32> {
        self.model.params.clone()
    }

    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        self.set_params_keep_optimizer(params)?;
        self.adam_m.fill(0.0);
        self.adam_v.fill(0.0);
        Ok(())
    }

    fn set_params_keep_optimizer(&mut self, params: &[f32]) -> Result<()> {
        check_len(&self.model.cfg, params.len())?;
        self.model.params.copy_from_slice(params);
        self.model.invalidate();
        Ok(())
    }

    fn forward(&mut self, batch: &TokenBatch) -> Result<ForwardOut> {
        let head = self.run_forward(batch)?;
        Ok(ForwardOut {
            token_logps: head.token_logps,
            seq_logps: head.seq_logps,
            topk_entropy: head.topk_entropy,
            topk_mass: head.topk_mass,
        })
    }

    /// Runs a full forward, which also becomes the one a following `backward` uses.
    fn logits(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.run_forward(batch)?;
        Ok(self.model.logits().to_vec())
    }

    /// Runs a full forward, which also becomes the one a following `backward` uses.
    fn hidden_states(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.run_forward(batch)?;
        Ok(self.model.hidden_states().to_vec())
    }

    fn backward(&mut self, d_seq_logps: &[f32]) -> Result<()> {
        let rows = self
            .model
            .last_batch()
            .ok_or_else(|| LabError::Engine { msg: "backward called before forward".into() })?;
        if d_seq_logps.len() != rows {
            return Err(LabError::shape(format!(
                "{} sequence gradients for a forward of {rows} rows",
                d_seq_logps.len()
            )));
        }
        self.model.backward(d_seq_logps);
        Ok(())
    }

    /// Skips the frozen tensors' parameter-gradient products (their gradient reads zero);
    /// the input gradients, which every earlier layer needs, are computed as before.
    fn freeze(&mut self, tensors: &[&str]) -> Result<()> {
        let cfg = self.model.cfg;
        let names: Vec<&str> = cfg.layout().tensors(&cfg).into_iter().map(|t| t.0).collect();
        let mut frozen = [false; 16];
        for tensor in tensors {
            let i = names.iter().position(|n| n == tensor).ok_or_else(|| {
                LabError::param("tensors", format!("no parameter tensor {tensor:?} ({names:?})"))
            })?;
            frozen[i] = true;
        }
        self.model.frozen = frozen;
        Ok(())
    }

    fn grads(&self) -> Vec<f32> {
        self.model.grads.clone()
    }

    fn adamw_step(&mut self, opt: &AdamWConfig, step: u32) -> Result<()> {
        if step == 0 {
            return Err(LabError::param("step", "AdamW steps count from 1"));
        }
        adamw::adamw_update(
            &mut self.model.params,
            &self.model.grads,
            &mut self.adam_m,
            &mut self.adam_v,
            opt,
            step,
        );
        Ok(())
    }
}
