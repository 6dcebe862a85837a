//! Low-rank adapters (LoRA; Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
//! Models", eq. 3) on GPT-2's linear layers, named and laid out as Hugging Face PEFT saves
//! them, so `PeftModel.from_pretrained` opens what alignlab writes and alignlab opens what
//! PEFT writes.
//!
//! A targeted layer with weight W (out, in) computes `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` with
//! A (r, in), B (out, r) and s = α / r (α / √r with `use_rslora`): the effective weight is
//! `W + s·B·A`. PEFT names A `lora_A` and B `lora_B` with exactly these shapes
//! (`nn.Linear(in, r)` and `nn.Linear(r, out)` weights), whatever the base layer's own
//! storage (GPT-2's `Conv1D` keeps W as (in, out)).
//!
//! Because the effective weight is linear in W, an engine that computes the full weight
//! gradient G = ∂L/∂W_eff gives the adapters' gradients by projection,
//! `∂L/∂A = s·Bᵀ·G` and `∂L/∂B = s·G·Aᵀ` ([`LoraConfig::project_grads`]); the frozen
//! reference is the base weights with the adapters off.

use crate::checkpoint::{decode_values, encode_values, StorageDtype};
use crate::config::GptConfig;
use crate::error::{LabError, Result};
use crate::files;
use crate::rng::Rng;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Value};
use std::path::Path;

/// One of GPT-2's four linear layers, by its module path inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraModule {
    /// `attn.c_attn`: the fused query/key/value projection, (3C, C).
    Qkv,
    /// `attn.c_proj`: the attention output projection, (C, C).
    AttnProj,
    /// `mlp.c_fc`: the MLP's expansion, (4C, C).
    Fc,
    /// `mlp.c_proj`: the MLP's projection back, (C, 4C).
    FcProj,
}

impl LoraModule {
    pub const ALL: [LoraModule; 4] =
        [LoraModule::Qkv, LoraModule::AttnProj, LoraModule::Fc, LoraModule::FcProj];

    /// The module's path inside a block, as in Hugging Face's GPT-2.
    pub fn path(self) -> &'static str {
        match self {
            LoraModule::Qkv => "attn.c_attn",
            LoraModule::AttnProj => "attn.c_proj",
            LoraModule::Fc => "mlp.c_fc",
            LoraModule::FcProj => "mlp.c_proj",
        }
    }

    /// (out, in) of the layer's weight.
    pub fn shape(self, c: usize) -> (usize, usize) {
        match self {
            LoraModule::Qkv => (3 * c, c),
            LoraModule::AttnProj => (c, c),
            LoraModule::Fc => (4 * c, c),
            LoraModule::FcProj => (c, 4 * c),
        }
    }

    /// The base weight's name in [`crate::config::ParamLayout::tensors`].
    pub fn base_tensor(self) -> &'static str {
        match self {
            LoraModule::Qkv => "qkvw",
            LoraModule::AttnProj => "attprojw",
            LoraModule::Fc => "fcw",
            LoraModule::FcProj => "fcprojw",
        }
    }

    /// Whether a PEFT `target_modules` entry selects this module: PEFT matches a name equal
    /// to the module's full name or ending in `.` + the entry, so `c_proj` selects both
    /// projections and `mlp.c_proj` only the MLP's.
    fn matched_by(self, target: &str) -> bool {
        let path = self.path();
        path == target || path.ends_with(&format!(".{target}"))
    }
}

/// A or B of one adapted layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// One adapter tensor: its PEFT name, where it lies in the flat adapter parameters, and its
/// shape (rows, cols), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterTensor {
    pub name: String,
    pub layer: usize,
    pub module: LoraModule,
    pub side: Side,
    pub offset: usize,
    pub shape: (usize, usize),
}

/// What PEFT's `LoraConfig` says about the adapters alignlab trains: rank, α, the target
/// modules (PEFT's names: `c_attn`, `c_proj`, `c_fc`, or a full path such as `mlp.c_proj`)
/// and whether the scale is rank-stabilised (α / √r).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub rslora: bool,
}

/// A number the adapter arithmetic runs on: f32 for the engines' weights, f64 for the
/// plain reference model's. Sums are taken in f64 either way.
pub trait Real: Copy + Into<f64> {
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// Largest rank accepted: far above any useful one for GPT-2 (PEFT's examples use 4–64).
pub const MAX_RANK: usize = 1024;

impl LoraConfig {
    /// A checked config. Errors name the field: `r` in 1..=[`MAX_RANK`], `lora_alpha` finite
    /// and > 0, `target_modules` non-empty, each entry selecting at least one of GPT-2's
    /// linear layers.
    pub fn new(rank: usize, alpha: f64, targets: &[&str]) -> Result<LoraConfig> {
        let config = LoraConfig {
            rank,
            alpha,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            rslora: false,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if !(1..=MAX_RANK).contains(&self.rank) {
            return Err(LabError::param("r", format!("{} must be in 1..={MAX_RANK}", self.rank)));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LabError::param("lora_alpha", format!("{} must be > 0", self.alpha)));
        }
        if self.targets.is_empty() {
            return Err(LabError::param(
                "target_modules",
                "name at least one of c_attn, c_proj, c_fc",
            ));
        }
        for target in &self.targets {
            if !LoraModule::ALL.iter().any(|m| m.matched_by(target)) {
                return Err(LabError::param(
                    "target_modules",
                    format!("{target:?} is none of GPT-2's linear layers (c_attn, c_proj, c_fc, or a path such as mlp.c_proj)"),
                ));
            }
        }
        Ok(())
    }

    /// s, the factor of B·A: α / r, or α / √r with rank-stabilised LoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// The adapted layers of a block, in GPT-2's order.
    pub fn modules(&self) -> Vec<LoraModule> {
        LoraModule::ALL
            .into_iter()
            .filter(|m| self.targets.iter().any(|t| m.matched_by(t)))
            .collect()
    }

    /// The base's parameter tensors no adapter reads the gradient of: every tensor but the
    /// adapted layers' weights (an engine may skip them, [`crate::engine::Engine::freeze`]).
    pub fn frozen_tensors(&self, cfg: &GptConfig) -> Vec<&'static str> {
        let adapted: Vec<&str> = self.modules().iter().map(|m| m.base_tensor()).collect();
        cfg.layout()
            .tensors(cfg)
            .into_iter()
            .map(|t| t.0)
            .filter(|name| !adapted.contains(name))
            .collect()
    }

    /// Every adapter tensor, layer by layer, each adapted layer's A then B.
    pub fn tensors(&self, cfg: &GptConfig) -> Vec<AdapterTensor> {
        let (r, mut offset) = (self.rank, 0);
        let mut out = Vec::new();
        for layer in 0..cfg.n_layer {
            for module in self.modules() {
                let (o, i) = module.shape(cfg.d_model);
                for (side, shape, letter) in [(Side::A, (r, i), 'A'), (Side::B, (o, r), 'B')] {
                    out.push(AdapterTensor {
                        name: format!(
                            "base_model.model.transformer.h.{layer}.{}.lora_{letter}.weight",
                            module.path()
                        ),
                        layer,
                        module,
                        side,
                        offset,
                        shape,
                    });
                    offset += shape.0 * shape.1;
                }
            }
        }
        out
    }

    /// How many adapter parameters a model of `cfg` gets.
    pub fn param_count(&self, cfg: &GptConfig) -> usize {
        self.tensors(cfg).iter().map(|t| t.shape.0 * t.shape.1).sum()
    }

    /// PEFT's default initialisation: A uniform in ±1/√in (`kaiming_uniform_` with a = √5),
    /// B zero, so the adapted model starts as the base model.
    pub fn init(&self, cfg: &GptConfig, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut out = vec![0.0f32; self.param_count(cfg)];
        for t in self.tensors(cfg).iter().filter(|t| t.side == Side::A) {
            let bound = 1.0 / (t.shape.1 as f32).sqrt();
            for p in &mut out[t.offset..t.offset + t.shape.0 * t.shape.1] {
                *p = bound * (2.0 * rng.uniform() - 1.0);
            }
        }
        out
    }

    /// Check that `adapters` has this config's length on `cfg`.
    fn check_len<T>(&self, cfg: &GptConfig, adapters: &[T]) -> Result<()> {
        let want = self.param_count(cfg);
        if adapters.len() != want {
            return Err(LabError::shape(format!(
                "{} adapter parameters given, rank {} on {:?} needs {want}",
                adapters.len(),
                self.rank,
                self.targets
            )));
        }
        Ok(())
    }

    /// Each adapted layer: its module, where its base weight starts in the model's
    /// parameters, and where its A and B start in the adapters.
    fn adapted(&self, cfg: &GptConfig) -> Vec<(LoraModule, usize, usize, usize)> {
        let layout = cfg.layout().tensors(cfg);
        let base_offset = |module: LoraModule, layer: usize| {
            let (o, i) = module.shape(cfg.d_model);
            let (_, offset, _) = layout
                .iter()
                .find(|(name, _, _)| *name == module.base_tensor())
                .expect("every adapted layer has a base weight");
            offset + layer * o * i
        };
        self.tensors(cfg)
            .chunks(2)
            .map(|ab| {
                (ab[0].module, base_offset(ab[0].module, ab[0].layer), ab[0].offset, ab[1].offset)
            })
            .collect()
    }

    /// The effective weights `W + s·B·A` of every adapted layer, the rest of `base` as is.
    pub fn merged<T: Real>(&self, cfg: &GptConfig, base: &[T], adapters: &[T]) -> Result<Vec<T>> {
        self.check_len(cfg, adapters)?;
        let (r, s) = (self.rank, self.scale());
        let mut out = base.to_vec();
        for (module, offset, da, db) in self.adapted(cfg) {
            let (oc, ic) = module.shape(cfg.d_model);
            let (a, b) = (&adapters[da..da + r * ic], &adapters[db..db + oc * r]);
            for o in 0..oc {
                for i in 0..ic {
                    let delta: f64 =
                        (0..r).map(|k| b[o * r + k].into() * a[k * ic + i].into()).sum();
                    let w = &mut out[offset + o * ic + i];
                    *w = T::from_f64((*w).into() + s * delta);
                }
            }
        }
        Ok(out)
    }

    /// The adapters' gradients from the full gradient `grads` (the flat layout of the model's
    /// parameters, taken at the merged weights): ∂L/∂A = s·Bᵀ·G and ∂L/∂B = s·G·Aᵀ for each
    /// adapted layer's weight gradient G (out, in).
    pub fn project_grads<T: Real>(
        &self,
        cfg: &GptConfig,
        adapters: &[T],
        grads: &[T],
    ) -> Result<Vec<T>> {
        self.check_len(cfg, adapters)?;
        let (r, s) = (self.rank, self.scale());
        let mut out = vec![T::from_f64(0.0); adapters.len()];
        for (module, offset, da, db) in self.adapted(cfg) {
            let (oc, ic) = module.shape(cfg.d_model);
            let (a, b) = (&adapters[da..da + r * ic], &adapters[db..db + oc * r]);
            let g = &grads[offset..offset + oc * ic];
            for k in 0..r {
                for i in 0..ic {
                    let sum: f64 =
                        (0..oc).map(|o| b[o * r + k].into() * g[o * ic + i].into()).sum();
                    out[da + k * ic + i] = T::from_f64(s * sum);
                }
            }
            for o in 0..oc {
                for k in 0..r {
                    let sum: f64 =
                        (0..ic).map(|i| g[o * ic + i].into() * a[k * ic + i].into()).sum();
                    out[db + o * r + k] = T::from_f64(s * sum);
                }
            }
        }
        Ok(out)
    }

    /// `adapter_model.safetensors` bytes: every adapter tensor under its PEFT name, f32.
    pub fn adapters_to_safetensors(&self, cfg: &GptConfig, adapters: &[f32]) -> Result<Vec<u8>> {
        self.check_len(cfg, adapters)?;
        let blobs: Vec<(AdapterTensor, Vec<u8>)> = self
            .tensors(cfg)
            .into_iter()
            .map(|t| {
                let values = &adapters[t.offset..t.offset + t.shape.0 * t.shape.1];
                let bytes = encode_values(values, StorageDtype::F32);
                (t, bytes)
            })
            .collect();
        let views = blobs
            .iter()
            .map(|(t, bytes)| {
                TensorView::new(Dtype::F32, vec![t.shape.0, t.shape.1], bytes)
                    .map(|view| (t.name.clone(), view))
                    .map_err(|e| LabError::shape(format!("{}: {e}", t.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
        safetensors::serialize(views, Some(metadata)).map_err(|e| LabError::shape(e.to_string()))
    }

    /// Read `adapter_model.safetensors` (PEFT's or ours; f32, f16 or bf16): every tensor this
    /// config names must be there with its shape, and a tensor it does not name is refused by
    /// name rather than dropped.
    pub fn adapters_from_safetensors(&self, cfg: &GptConfig, bytes: &[u8]) -> Result<Vec<f32>> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| LabError::parse(format!("not a safetensors file: {e}")))?;
        let tensors = self.tensors(cfg);
        let mut names = file.names();
        names.sort();
        if let Some(extra) = names.into_iter().find(|n| !tensors.iter().any(|t| t.name == **n)) {
            return Err(LabError::parse(format!(
                "{extra}: not an adapter of rank {} on {:?} (check adapter_config.json)",
                self.rank, self.targets
            )));
        }
        let mut out = vec![0.0f32; self.param_count(cfg)];
        for t in &tensors {
            let view = file
                .tensor(&t.name)
                .map_err(|_| LabError::parse(format!("{}: missing", t.name)))?;
            if view.shape() != [t.shape.0, t.shape.1] {
                return Err(LabError::parse(format!(
                    "{}: shape {:?}, expected {:?}",
                    t.name,
                    view.shape(),
                    [t.shape.0, t.shape.1]
                )));
            }
            let dtype = match view.dtype() {
                Dtype::F32 => StorageDtype::F32,
                Dtype::F16 => StorageDtype::F16,
                Dtype::BF16 => StorageDtype::Bf16,
                other => {
                    return Err(LabError::parse(format!(
                        "{}: dtype {other:?}, expected F32, F16 or BF16",
                        t.name
                    )))
                }
            };
            let values = decode_values(view.data(), dtype);
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(LabError::parse(format!("{}: value {bad} is not finite", t.name)));
            }
            out[t.offset..t.offset + values.len()].copy_from_slice(&values);
        }
        Ok(out)
    }

    /// Write `adapter_model.safetensors` and `adapter_config.json` into `dir` (which exists),
    /// as PEFT's `save_pretrained` does.
    pub fn save_dir(
        &self,
        dir: &Path,
        cfg: &GptConfig,
        adapters: &[f32],
        base: &str,
    ) -> Result<()> {
        let bytes = self.adapters_to_safetensors(cfg, adapters)?;
        for (name, contents) in [
            ("adapter_model.safetensors", bytes),
            ("adapter_config.json", self.adapter_config_json(base).into_bytes()),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, contents)
                .map_err(|e| LabError::io(path.display().to_string(), e))?;
        }
        Ok(())
    }

    /// Read a folder as PEFT's `save_pretrained` writes it: `adapter_config.json` (at most
    /// [`files::MAX_JSON_BYTES`]) and `adapter_model.safetensors` (no larger than its tensors
    /// in f32 and a header need); errors name the file.
    pub fn load_dir(dir: &Path, cfg: &GptConfig) -> Result<(LoraConfig, Vec<f32>)> {
        let config_path = dir.join("adapter_config.json");
        let config_name = config_path.display().to_string();
        let text = files::read_text(&config_path, files::MAX_JSON_BYTES)?;
        let config = LoraConfig::from_adapter_config(&text).map_err(|e| e.in_file(&config_name))?;
        let weights_path = dir.join("adapter_model.safetensors");
        let weights_name = weights_path.display().to_string();
        let limit = 4 * config.param_count(cfg) as u64 + 1_000_000;
        let bytes = files::read_bounded(&weights_path, limit)?;
        let adapters =
            config.adapters_from_safetensors(cfg, &bytes).map_err(|e| e.in_file(&weights_name))?;
        Ok((config, adapters))
    }

    /// `base` with the adapters of folder `dir` ([`LoraConfig::load_dir`]) merged in.
    pub fn merge_dir(dir: &Path, cfg: &GptConfig, base: &[f32]) -> Result<Vec<f32>> {
        let (config, adapters) = LoraConfig::load_dir(dir, cfg)?;
        config.merged(cfg, base, &adapters)
    }

    /// `adapter_config.json` as PEFT writes it for a GPT-2 (`fan_in_fan_out`: its layers are
    /// `Conv1D`), with `base` as `base_model_name_or_path`.
    pub fn adapter_config_json(&self, base: &str) -> String {
        let value = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": self.targets,
            "fan_in_fan_out": true,
            "bias": "none",
            "use_rslora": self.rslora,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "init_lora_weights": true,
            "inference_mode": true,
        });
        serde_json::to_string_pretty(&value).expect("a JSON value serializes") + "\n"
    }

    /// Read PEFT's `adapter_config.json`. What alignlab cannot apply is refused by field
    /// rather than ignored: another `peft_type`, a regex `target_modules`, trained biases,
    /// DoRA, `layers_to_transform`, `modules_to_save`.
    pub fn from_adapter_config(text: &str) -> Result<LoraConfig> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| LabError::parse(format!("not JSON: {e}")))?;
        let field = |name: &str| value.get(name).filter(|v| !v.is_null());
        let err = |name: &str, msg: String| LabError::Parse {
            file: None,
            line: None,
            field: Some(name.to_string()),
            msg,
        };
        match field("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            other => {
                let found = other.map_or("missing".to_string(), |t| format!("{t:?}"));
                return Err(err("peft_type", format!("{found}: only LORA adapters open here")));
            }
        }
        let rank = field("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| err("r", "the rank must be a positive whole number".into()))?;
        let alpha = field("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| err("lora_alpha", "must be a number".into()))?;
        let targets = match field("target_modules") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err("target_modules", "every entry must be a module name".into()))?,
            Some(Value::String(regex)) => {
                return Err(err(
                    "target_modules",
                    format!("{regex:?} is a pattern; list the module names (c_attn, c_proj, c_fc)"),
                ))
            }
            _ => return Err(err("target_modules", "missing: list the adapted modules".into())),
        };
        if let Some(bias) = field("bias").and_then(Value::as_str).filter(|b| *b != "none") {
            return Err(err("bias", format!("{bias:?}: only adapters without trained biases")));
        }
        if field("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(err("use_dora", "DoRA adapters are not supported".into()));
        }
        for unsupported in ["layers_to_transform", "modules_to_save"] {
            if field(unsupported).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
                return Err(err(unsupported, "not supported: adapters on every layer only".into()));
            }
        }
        let config = LoraConfig {
            rank: rank as usize,
            alpha,
            targets,
            rslora: field("use_rslora").and_then(Value::as_bool) == Some(true),
        };
        config.validate().map_err(|e| match e {
            LabError::InvalidParam { name, msg } => err(&name, msg),
            other => other,
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GptConfig {
        GptConfig { vocab: 11, ctx: 8, d_model: 8, n_layer: 2, n_head: 2 }
    }

    #[test]
    fn targets_select_layers_as_peft_matches_them() {
        let both = LoraConfig::new(4, 8.0, &["c_attn", "c_proj"]).unwrap();
        assert_eq!(both.modules(), [LoraModule::Qkv, LoraModule::AttnProj, LoraModule::FcProj]);
        let mlp = LoraConfig::new(4, 8.0, &["mlp.c_proj"]).unwrap();
        assert_eq!(mlp.modules(), [LoraModule::FcProj]);
        assert_eq!(mlp.scale(), 2.0);
        let names: Vec<String> = mlp.tensors(&cfg()).into_iter().map(|t| t.name).collect();
        assert_eq!(names[0], "base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight");
        assert_eq!(names[3], "base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight");
        // A is (r, in), B is (out, r): for mlp.c_proj in = 4C, out = C
        let t = mlp.tensors(&cfg());
        assert_eq!((t[0].shape, t[1].shape), ((4, 32), (8, 4)));
        assert_eq!(mlp.param_count(&cfg()), 2 * (4 * 32 + 8 * 4));
    }

    #[test]
    fn bad_configs_are_refused_by_field() {
        let field_of = |e: LabError| e.to_string();
        assert!(field_of(LoraConfig::new(0, 8.0, &["c_attn"]).unwrap_err()).contains("r"));
        assert!(
            field_of(LoraConfig::new(4, f64::NAN, &["c_attn"]).unwrap_err()).contains("lora_alpha")
        );
        let e = field_of(LoraConfig::new(4, 8.0, &["q_proj"]).unwrap_err());
        assert!(e.contains("target_modules") && e.contains("q_proj"), "{e}");
        assert!(field_of(LoraConfig::new(4, 8.0, &[]).unwrap_err()).contains("target_modules"));
    }

    #[test]
    fn adapter_config_round_trips_and_refuses_what_it_cannot_apply() {
        let config = LoraConfig::new(8, 16.0, &["c_attn", "c_proj", "c_fc"]).unwrap();
        let text = config.adapter_config_json("assets/models/starter");
        assert_eq!(LoraConfig::from_adapter_config(&text).unwrap(), config);
        let with = |key: &str, v: Value| {
            let mut j: Value = serde_json::from_str(&text).unwrap();
            j[key] = v;
            LoraConfig::from_adapter_config(&j.to_string()).unwrap_err().to_string()
        };
        assert!(with("peft_type", json!("IA3")).contains("peft_type"));
        assert!(with("target_modules", json!(".*attn.*")).contains("target_modules"));
        assert!(with("bias", json!("all")).contains("bias"));
        assert!(with("use_dora", json!(true)).contains("use_dora"));
        assert!(with("layers_to_transform", json!([0])).contains("layers_to_transform"));
        assert!(with("r", json!(0)).contains("r"));
        let mut j: Value = serde_json::from_str(&text).unwrap();
        j["use_rslora"] = json!(true);
        let rs = LoraConfig::from_adapter_config(&j.to_string()).unwrap();
        assert!((rs.scale() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn adapters_round_trip_through_safetensors_and_stray_tensors_are_refused() {
        let cfg = cfg();
        let config = LoraConfig::new(3, 6.0, &["c_attn", "c_fc"]).unwrap();
        let mut adapters = config.init(&cfg, 4);
        adapters.iter_mut().enumerate().for_each(|(i, a)| *a += i as f32 * 1e-3);
        let bytes = config.adapters_to_safetensors(&cfg, &adapters).unwrap();
        assert_eq!(config.adapters_from_safetensors(&cfg, &bytes).unwrap(), adapters);
        // the same file read as rank 3 on c_attn only: the c_fc tensors are named
        let narrower = LoraConfig::new(3, 6.0, &["c_attn"]).unwrap();
        let err = narrower.adapters_from_safetensors(&cfg, &bytes).unwrap_err().to_string();
        assert!(err.contains("h.0.mlp.c_fc.lora_A.weight"), "{err}");
        // read as rank 2: a shape mismatch, named
        let other = LoraConfig::new(2, 6.0, &["c_attn", "c_fc"]).unwrap();
        let err = other.adapters_from_safetensors(&cfg, &bytes).unwrap_err().to_string();
        assert!(err.contains("shape"), "{err}");
        assert!(config.adapters_from_safetensors(&cfg, b"nonsense").is_err());
    }

    #[test]
    fn peft_init_starts_at_the_base_model_and_merge_adds_s_b_a() {
        let cfg = cfg();
        let config = LoraConfig::new(2, 4.0, &["c_fc"]).unwrap();
        let base = crate::config::init_params(&cfg, 1);
        let mut adapters = config.init(&cfg, 2);
        assert_eq!(config.merged(&cfg, &base, &adapters).unwrap(), base);
        let t = config.tensors(&cfg);
        assert!(adapters[t[0].offset..t[1].offset].iter().all(|a| a.abs() <= 1.0 / 8f32.sqrt()));
        // one non-zero entry of B (layer 1): W[o, i] gains s · B[o, k] · A[k, i]
        let (a1, b1) = (&t[2], &t[3]);
        adapters[b1.offset + 5 * 2 + 1] = 0.5;
        let merged = config.merged(&cfg, &base, &adapters).unwrap();
        let (_, w, _, _) = config.adapted(&cfg)[1];
        for i in 0..8 {
            let want = base[w + 5 * 8 + i] + 2.0 * 0.5 * adapters[a1.offset + 8 + i];
            assert!((merged[w + 5 * 8 + i] - want).abs() < 1e-6);
        }
        let changed = merged.iter().zip(&base).filter(|(m, b)| m != b).count();
        assert!(changed <= 8, "{changed}");
        assert!(config.merged(&cfg, &base, &adapters[1..]).is_err());
    }
}
