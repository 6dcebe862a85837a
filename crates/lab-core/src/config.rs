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

    /// Check every size against its bounds ([`MAX_VOCAB`], [`MAX_CTX`], [`MAX_D_MODEL`],
    /// [`MAX_LAYERS`]), C divisible by NH, and the parameter count (computed without
    /// overflow) at most [`MAX_PARAMS`], so that a config read from a file can never ask
    /// for an allocation no machine has. Errors name the setting.
    pub fn validate(&self) -> Result<()> {
        let bounded = [
            ("vocab", self.vocab, MAX_VOCAB),
            ("ctx", self.ctx, MAX_CTX),
            ("d_model", self.d_model, MAX_D_MODEL),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_head", self.n_head, MAX_D_MODEL),
        ];
        for (name, value, max) in bounded {
            if value == 0 {
                return Err(LabError::param(name, "must be at least 1"));
            }
            if value > max {
                return Err(LabError::param(name, format!("{value} is over the limit of {max}")));
            }
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return Err(LabError::param(
                "n_head",
                format!("d_model {} is not divisible by n_head {}", self.d_model, self.n_head),
            ));
        }
        ParamLayout::try_new(self)?;
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    pub fn layout(&self) -> ParamLayout {
        ParamLayout::new(self)
    }

    /// HF `GPT2Config`-style `config.json`; `eot` is the tokenizer's `<|endoftext|>` id (BOS
    /// and EOS, as GPT-2's).
    pub fn to_hf_json(&self, eot: u32) -> serde_json::Value {
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
            "bos_token_id": eot,
            "eos_token_id": eot,
            "torch_dtype": "float32"
        })
    }

    /// Read an HF-style `config.json` (GPT-2 names) and validate it. Every error is a
    /// [`LabError::Parse`] naming the JSON field (`vocab_size`, `n_embd`, ...), so the
    /// caller's [`LabError::in_file`] completes it.
    pub fn from_hf_json(value: &serde_json::Value) -> Result<GptConfig> {
        if !value.is_object() {
            return Err(LabError::parse(format!(
                "expected a JSON object, got {}",
                crate::json::brief(value)
            )));
        }
        // What alignlab's GPT-2 is: an HF config that says otherwise describes another model.
        let text = |name: &str| value.get(name).and_then(|v| v.as_str());
        if let Some(kind) = value.get("model_type") {
            if kind.as_str() != Some("gpt2") {
                return Err(LabError::parse(format!(
                    "{kind} is not a model alignlab runs (it runs GPT-2: \"gpt2\")"
                ))
                .in_field("model_type"));
            }
        }
        if let Some(act) = text("activation_function") {
            if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
                return Err(LabError::parse(format!(
                    "{act:?}: alignlab's GPT-2 uses the tanh GELU (\"gelu_new\")"
                ))
                .in_field("activation_function"));
            }
        }
        if value.get("tie_word_embeddings").and_then(|v| v.as_bool()) == Some(false) {
            return Err(LabError::parse(
                "false: alignlab's GPT-2 ties the LM head to the token embedding",
            )
            .in_field("tie_word_embeddings"));
        }
        let flag = |name: &str| value.get(name).and_then(|v| v.as_bool());
        if flag("scale_attn_weights") == Some(false) {
            return Err(LabError::parse(
                "false: alignlab's GPT-2 scales attention by 1/√head size",
            )
            .in_field("scale_attn_weights"));
        }
        if flag("scale_attn_by_inverse_layer_idx") == Some(true) {
            return Err(LabError::parse(
                "true: alignlab's GPT-2 does not scale attention by the layer index",
            )
            .in_field("scale_attn_by_inverse_layer_idx"));
        }
        if let Some(inner) = value.get("n_inner").filter(|v| !v.is_null()) {
            let n_embd = value.get("n_embd").and_then(|v| v.as_u64());
            if inner.as_u64().zip(n_embd).is_none_or(|(i, c)| i != 4 * c) {
                return Err(LabError::parse(format!(
                    "{inner}: alignlab's GPT-2 has an MLP of 4 × n_embd"
                ))
                .in_field("n_inner"));
            }
        }
        if let Some(eps) = value.get("layer_norm_epsilon").and_then(|v| v.as_f64()) {
            if eps != 1e-5 {
                return Err(LabError::parse(format!(
                    "{eps}: alignlab's GPT-2 normalises with ε = 1e-5"
                ))
                .in_field("layer_norm_epsilon"));
            }
        }
        let field = |name: &str| -> Result<usize> {
            let Some(v) = value.get(name) else {
                return Err(
                    LabError::parse("missing (a positive integer is required)").in_field(name)
                );
            };
            v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                LabError::parse(format!("{v} is not a positive integer")).in_field(name)
            })
        };
        let config = GptConfig {
            vocab: field("vocab_size")?,
            ctx: field("n_positions")?,
            d_model: field("n_embd")?,
            n_layer: field("n_layer")?,
            n_head: field("n_head")?,
        };
        config.validate().map_err(|e| match e {
            LabError::InvalidParam { name, msg } => {
                let hf = HF_NAMES.iter().find(|(ours, _)| *ours == name).map_or("", |(_, hf)| hf);
                if hf.is_empty() {
                    LabError::parse(msg)
                } else {
                    LabError::parse(msg).in_field(hf)
                }
            }
            other => other,
        })?;
        Ok(config)
    }
}

/// Largest vocabulary V a config may have (2²⁰; GPT-2's is 50257).
pub const MAX_VOCAB: usize = 1 << 20;
/// Longest context T (2¹⁶; GPT-2's is 1024).
pub const MAX_CTX: usize = 1 << 16;
/// Widest model C (2¹⁴; GPT-2 XL's is 1600).
pub const MAX_D_MODEL: usize = 1 << 14;
/// Most transformer blocks L (GPT-2 XL has 48).
pub const MAX_LAYERS: usize = 1024;
/// Most parameters (2³¹ floats, 8 GB in f32; GPT-2 XL has 1.56 × 10⁹).
pub const MAX_PARAMS: usize = 1 << 31;

/// Our field names and HF `GPT2Config`'s.
const HF_NAMES: [(&str, &str); 5] = [
    ("vocab", "vocab_size"),
    ("ctx", "n_positions"),
    ("d_model", "n_embd"),
    ("n_layer", "n_layer"),
    ("n_head", "n_head"),
];

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
    /// The layout of a valid config ([`GptConfig::validate`] passed, as every engine
    /// checks before building one).
    ///
    /// # Panics
    /// If the parameter count is over [`MAX_PARAMS`], which `validate` rules out.
    pub fn new(cfg: &GptConfig) -> Self {
        match Self::try_new(cfg) {
            Ok(layout) => layout,
            Err(e) => panic!("ParamLayout::new needs a validated config: {e}"),
        }
    }

    /// The layout, or an error if the parameter count overflows or is over
    /// [`MAX_PARAMS`]; all arithmetic is checked, so no config can make it wrap.
    pub fn try_new(cfg: &GptConfig) -> Result<Self> {
        let (v, t, c, l) = (cfg.vocab, cfg.ctx, cfg.d_model, cfg.n_layer);
        let too_many = || {
            LabError::param(
                "config",
                format!(
                    "vocab {v}, ctx {t}, d_model {c} and n_layer {l} give more than {MAX_PARAMS} \
                     parameters"
                ),
            )
        };
        let mul = |factors: &[usize]| -> Result<usize> {
            factors.iter().try_fold(1usize, |acc, &f| acc.checked_mul(f)).ok_or_else(too_many)
        };
        let sizes = [
            mul(&[v, c])?,
            mul(&[t, c])?,
            mul(&[l, c])?,
            mul(&[l, c])?,
            mul(&[l, 3, c, c])?,
            mul(&[l, 3, c])?,
            mul(&[l, c, c])?,
            mul(&[l, c])?,
            mul(&[l, c])?,
            mul(&[l, c])?,
            mul(&[l, 4, c, c])?,
            mul(&[l, 4, c])?,
            mul(&[l, c, 4, c])?,
            mul(&[l, c])?,
            c,
            c,
        ];
        let mut offsets = [0usize; 17];
        for i in 0..16 {
            offsets[i + 1] = offsets[i].checked_add(sizes[i]).ok_or_else(too_many)?;
        }
        if offsets[16] > MAX_PARAMS {
            return Err(LabError::param(
                "config",
                format!(
                    "vocab {v}, ctx {t}, d_model {c} and n_layer {l} give {} parameters, over the \
                     limit of {MAX_PARAMS}",
                    offsets[16]
                ),
            ));
        }
        Ok(ParamLayout {
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
        })
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

    fn hf(vocab: u64, ctx: u64, d_model: u64, n_layer: u64, n_head: u64) -> serde_json::Value {
        serde_json::json!({"vocab_size": vocab, "n_positions": ctx, "n_embd": d_model,
                           "n_layer": n_layer, "n_head": n_head})
    }

    #[test]
    fn absurd_sizes_are_refused_by_field_before_any_allocation() {
        for (value, field) in [
            (hf(1_000_000_000, 64, 64, 2, 4), "vocab_size"),
            (hf(96, 1_000_000_000_000, 64, 2, 4), "n_positions"),
            (hf(96, 64, 1 << 31, 2, 4), "n_embd"),
            (hf(96, 64, 1 << 62, 2, 4), "n_embd"),
            (hf(96, 64, 64, 100_000, 4), "n_layer"),
            (hf(96, 64, 64, 2, 128), "n_head"),
            (hf(96, 64, 64, 2, 0), "n_head"),
        ] {
            let err = GptConfig::from_hf_json(&value).unwrap_err();
            assert!(
                matches!(&err, LabError::Parse { field: Some(f), .. } if f == field),
                "{field}: {err:?}"
            );
        }
        // each size within its bound, the product over MAX_PARAMS: 2²⁰ · 2¹⁴ = 2³⁴
        let err = GptConfig::from_hf_json(&hf(1 << 20, 64, 1 << 14, 1, 1)).unwrap_err();
        assert!(err.to_string().contains("over the limit of 2147483648"), "{err}");
        let err = GptConfig::from_hf_json(&serde_json::json!({"vocab_size": 1e9})).unwrap_err();
        assert!(err.to_string().contains("is not a positive integer"), "{err}");
        let err = GptConfig::from_hf_json(&serde_json::json!([1, 2])).unwrap_err();
        assert_eq!(err.to_string(), "expected a JSON object, got an array of 2");
    }

    #[test]
    fn layout_arithmetic_is_checked() {
        let huge = GptConfig {
            vocab: usize::MAX,
            ctx: usize::MAX,
            d_model: usize::MAX,
            n_layer: usize::MAX,
            n_head: 1,
        };
        assert!(ParamLayout::try_new(&huge).is_err());
        assert!(huge.validate().is_err());
        // GPT-2 small and XL are within every bound
        for (d_model, n_layer, n_head) in [(768, 12, 12), (1600, 48, 25)] {
            let cfg = GptConfig { vocab: 50257, ctx: 1024, d_model, n_layer, n_head };
            cfg.validate().unwrap();
        }
    }

    #[test]
    fn hf_config_round_trips() {
        let cfg = GptConfig::MEDIUM;
        assert_eq!(GptConfig::from_hf_json(&cfg.to_hf_json(0)).unwrap(), cfg);
        let err = GptConfig::from_hf_json(&serde_json::json!({"vocab_size": 96})).unwrap_err();
        assert!(err.to_string().contains("n_positions"), "{err}");
    }

    /// A config describing a model other than alignlab's GPT-2 is refused naming the field,
    /// never read as if it were one.
    #[test]
    fn a_config_of_another_model_is_refused_by_its_field() {
        let base = GptConfig::TINY.to_hf_json(0);
        for (field, value, says) in [
            ("model_type", serde_json::json!("llama"), "\"llama\" is not a model"),
            ("activation_function", serde_json::json!("relu"), "tanh GELU"),
            ("tie_word_embeddings", serde_json::json!(false), "ties the LM head"),
            ("n_inner", serde_json::json!(100), "4 × n_embd"),
            ("layer_norm_epsilon", serde_json::json!(1e-6), "ε = 1e-5"),
            ("scale_attn_weights", serde_json::json!(false), "1/√head size"),
            ("scale_attn_by_inverse_layer_idx", serde_json::json!(true), "layer index"),
        ] {
            let mut config = base.clone();
            config[field] = value;
            let err = GptConfig::from_hf_json(&config).unwrap_err().to_string();
            assert!(err.contains(&format!("\"{field}\"")) && err.contains(says), "{err}");
        }
        // what transformers writes for GPT-2 is accepted
        let mut hf = base.clone();
        hf["n_inner"] = serde_json::Value::Null;
        hf["activation_function"] = serde_json::json!("gelu_new");
        assert_eq!(GptConfig::from_hf_json(&hf).unwrap(), GptConfig::TINY);
    }
}
