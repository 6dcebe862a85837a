//! The model configuration (GPT-2 architecture) and the flat parameter layout shared by
//! every engine.
//!
//! Parameters live in one `Vec<f32>` in the llm.c order below, so the CPU engine, the GPU
//! engine, the burn oracle and the checkpoint writer all agree on where each tensor is.
//! Matrices are stored (out, in) row-major: `y = x · Wᵀ + b`.

use crate::error::{LabError, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size V (96 for the char tokenizer).
    pub vocab: usize,
    /// Maximum sequence length T, the learned position table's size.
    pub ctx: usize,
    /// Channels C.
    pub d_model: usize,
    /// Transformer blocks L.
    pub n_layer: usize,
    /// Attention heads NH; C must divide by it.
    pub n_head: usize,
}

impl GptConfig {
    /// The tiny preset: ~100k parameters, the classroom model.
    pub const TINY: GptConfig =
        GptConfig { vocab: 96, ctx: 64, d_model: 64, n_layer: 2, n_head: 4 };
    /// The medium preset: ~3.2M parameters, the benchmark's upper point.
    pub const MEDIUM: GptConfig =
        GptConfig { vocab: 96, ctx: 128, d_model: 256, n_layer: 4, n_head: 8 };

    pub fn preset(name: &str) -> Result<GptConfig> {
        match name {
            "tiny" => Ok(Self::TINY),
            "medium" => Ok(Self::MEDIUM),
            other => Err(LabError::param(
                "config",
                format!("unknown preset {other:?} (expected \"tiny\" or \"medium\")"),
            )),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab", self.vocab),
            ("ctx", self.ctx),
            ("d_model", self.d_model),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(LabError::param(name, "must be at least 1"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return Err(LabError::param(
                "n_head",
                format!("d_model {} is not divisible by n_head {}", self.d_model, self.n_head),
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    pub fn layout(&self) -> ParamLayout {
        ParamLayout::new(self)
    }

    /// HF `GPT2Config`-style `config.json`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab,
            "n_positions": self.ctx,
            "n_ctx": self.ctx,
            "n_embd": self.d_model,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": null,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": true,
            "bos_token_id": crate::tokenizer::EOT,
            "eos_token_id": crate::tokenizer::EOT,
            "torch_dtype": "float32"
        })
    }

    /// Read an HF-style `config.json` (GPT-2 names), naming the missing field.
    pub fn from_hf_json(value: &serde_json::Value) -> Result<GptConfig> {
        let field =
            |name: &str| -> Result<usize> {
                value.get(name).and_then(|v| v.as_u64()).map(|v| v as usize).ok_or_else(|| {
                    LabError::parse("missing or not a positive integer").in_field(name)
                })
            };
        let config = GptConfig {
            vocab: field("vocab_size")?,
            ctx: field("n_positions")?,
            d_model: field("n_embd")?,
            n_layer: field("n_layer")?,
            n_head: field("n_head")?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Offsets of every tensor in the flat parameter vector, llm.c order:
/// wte (V,C) · wpe (T,C) · ln1w, ln1b (L,C) · qkvw (L,3C,C) · qkvb (L,3C) ·
/// attprojw (L,C,C) · attprojb (L,C) · ln2w, ln2b (L,C) · fcw (L,4C,C) · fcb (L,4C) ·
/// fcprojw (L,C,4C) · fcprojb (L,C) · lnfw, lnfb (C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamLayout {
    pub wte: usize,
    pub wpe: usize,
    pub ln1w: usize,
    pub ln1b: usize,
    pub qkvw: usize,
    pub qkvb: usize,
    pub attprojw: usize,
    pub attprojb: usize,
    pub ln2w: usize,
    pub ln2b: usize,
    pub fcw: usize,
    pub fcb: usize,
    pub fcprojw: usize,
    pub fcprojb: usize,
    pub lnfw: usize,
    pub lnfb: usize,
    pub total: usize,
}

/// One named tensor of the layout: (name, offset, shape).
pub type TensorSpec = (&'static str, usize, Vec<usize>);

impl ParamLayout {
    pub fn new(cfg: &GptConfig) -> Self {
        let (v, t, c, l) = (cfg.vocab, cfg.ctx, cfg.d_model, cfg.n_layer);
        let sizes = [
            v * c,
            t * c,
            l * c,
            l * c,
            l * 3 * c * c,
            l * 3 * c,
            l * c * c,
            l * c,
            l * c,
            l * c,
            l * 4 * c * c,
            l * 4 * c,
            l * c * 4 * c,
            l * c,
            c,
            c,
        ];
        let mut offsets = [0usize; 17];
        for i in 0..16 {
            offsets[i + 1] = offsets[i] + sizes[i];
        }
        ParamLayout {
            wte: offsets[0],
            wpe: offsets[1],
            ln1w: offsets[2],
            ln1b: offsets[3],
            qkvw: offsets[4],
            qkvb: offsets[5],
            attprojw: offsets[6],
            attprojb: offsets[7],
            ln2w: offsets[8],
            ln2b: offsets[9],
            fcw: offsets[10],
            fcb: offsets[11],
            fcprojw: offsets[12],
            fcprojb: offsets[13],
            lnfw: offsets[14],
            lnfb: offsets[15],
            total: offsets[16],
        }
    }

    /// The 16 tensors with names, offsets and shapes (layer-stacked tensors lead with L).
    pub fn tensors(&self, cfg: &GptConfig) -> Vec<TensorSpec> {
        let (v, t, c, l) = (cfg.vocab, cfg.ctx, cfg.d_model, cfg.n_layer);
        vec![
            ("wte", self.wte, vec![v, c]),
            ("wpe", self.wpe, vec![t, c]),
            ("ln1w", self.ln1w, vec![l, c]),
            ("ln1b", self.ln1b, vec![l, c]),
            ("qkvw", self.qkvw, vec![l, 3 * c, c]),
            ("qkvb", self.qkvb, vec![l, 3 * c]),
            ("attprojw", self.attprojw, vec![l, c, c]),
            ("attprojb", self.attprojb, vec![l, c]),
            ("ln2w", self.ln2w, vec![l, c]),
            ("ln2b", self.ln2b, vec![l, c]),
            ("fcw", self.fcw, vec![l, 4 * c, c]),
            ("fcb", self.fcb, vec![l, 4 * c]),
            ("fcprojw", self.fcprojw, vec![l, c, 4 * c]),
            ("fcprojb", self.fcprojb, vec![l, c]),
            ("lnfw", self.lnfw, vec![c]),
            ("lnfb", self.lnfb, vec![c]),
        ]
    }
}

/// GPT-2 initialisation: N(0, 0.02) for matrices and embeddings, N(0, 0.02/√(2L)) for the
/// two residual projections (GPT-2 paper §2.3), zeros for biases, ones for LayerNorm gains.
pub fn init_params(cfg: &GptConfig, seed: u64) -> Vec<f32> {
    let layout = cfg.layout();
    let mut rng = crate::rng::Rng::new(seed);
    let mut params = vec![0.0f32; layout.total];
    let residual_std = 0.02 / ((2 * cfg.n_layer) as f32).sqrt();
    for (name, offset, shape) in layout.tensors(cfg) {
        let len: usize = shape.iter().product();
        let slot = &mut params[offset..offset + len];
        match name {
            "ln1w" | "ln2w" | "lnfw" => slot.fill(1.0),
            "wte" | "wpe" | "qkvw" | "fcw" => {
                slot.iter_mut().for_each(|p| *p = 0.02 * rng.normal())
            }
            "attprojw" | "fcprojw" => {
                slot.iter_mut().for_each(|p| *p = residual_std * rng.normal())
            }
            _ => {}
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_has_about_100k_parameters() {
        let layout = GptConfig::TINY.layout();
        // 96·64 + 64·64 + 2·(12·64² + 13·64) + 2·64
        assert_eq!(layout.total, 96 * 64 + 64 * 64 + 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64);
    }

    #[test]
    fn hf_config_round_trips() {
        let cfg = GptConfig::MEDIUM;
        assert_eq!(GptConfig::from_hf_json(&cfg.to_hf_json()).unwrap(), cfg);
        let err = GptConfig::from_hf_json(&serde_json::json!({"vocab_size": 96})).unwrap_err();
        assert!(err.to_string().contains("n_positions"), "{err}");
    }
}
