//! Model checkpoints: `model.safetensors` with Hugging Face GPT-2 tensor names and layout,
//! an HF-style `config.json`, and our `tokenizer.json`, so a trained policy can be opened
//! by `transformers.GPT2LMHeadModel.from_pretrained` as well as by alignlab.
//!
//! HF's GPT-2 stores its linear layers as `Conv1D` with weights (in, out); our flat layout
//! stores (out, in), so matrices are transposed on the way out and back in.

use crate::config::{GptConfig, ParamLayout};
use crate::error::{LabError, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    /// Half the size; what the shipped starter model uses.
    F16,
}

/// One HF tensor: its name, where it comes from in the flat layout, its HF shape, and
/// whether it is a transposed (Conv1D) matrix of our (rows, cols).
struct HfTensor {
    name: String,
    offset: usize,
    /// Our shape: (rows, cols) for matrices, (n) for vectors.
    ours: Vec<usize>,
    transposed: bool,
}

fn hf_tensors(cfg: &GptConfig) -> Vec<HfTensor> {
    let l = ParamLayout::new(cfg);
    let (v, t, c) = (cfg.vocab, cfg.ctx, cfg.d_model);
    let plain =
        |name: String, offset, ours: Vec<usize>| HfTensor { name, offset, ours, transposed: false };
    let conv = |name: String, offset, rows, cols| HfTensor {
        name,
        offset,
        ours: vec![rows, cols],
        transposed: true,
    };
    let mut out = vec![
        plain("wte.weight".into(), l.wte, vec![v, c]),
        plain("wpe.weight".into(), l.wpe, vec![t, c]),
    ];
    for i in 0..cfg.n_layer {
        let h = format!("h.{i}");
        out.push(plain(format!("{h}.ln_1.weight"), l.ln1w + i * c, vec![c]));
        out.push(plain(format!("{h}.ln_1.bias"), l.ln1b + i * c, vec![c]));
        out.push(conv(format!("{h}.attn.c_attn.weight"), l.qkvw + i * 3 * c * c, 3 * c, c));
        out.push(plain(format!("{h}.attn.c_attn.bias"), l.qkvb + i * 3 * c, vec![3 * c]));
        out.push(conv(format!("{h}.attn.c_proj.weight"), l.attprojw + i * c * c, c, c));
        out.push(plain(format!("{h}.attn.c_proj.bias"), l.attprojb + i * c, vec![c]));
        out.push(plain(format!("{h}.ln_2.weight"), l.ln2w + i * c, vec![c]));
        out.push(plain(format!("{h}.ln_2.bias"), l.ln2b + i * c, vec![c]));
        out.push(conv(format!("{h}.mlp.c_fc.weight"), l.fcw + i * 4 * c * c, 4 * c, c));
        out.push(plain(format!("{h}.mlp.c_fc.bias"), l.fcb + i * 4 * c, vec![4 * c]));
        out.push(conv(format!("{h}.mlp.c_proj.weight"), l.fcprojw + i * 4 * c * c, c, 4 * c));
        out.push(plain(format!("{h}.mlp.c_proj.bias"), l.fcprojb + i * c, vec![c]));
    }
    out.push(plain("ln_f.weight".into(), l.lnfw, vec![c]));
    out.push(plain("ln_f.bias".into(), l.lnfb, vec![c]));
    out
}

fn encode_values(values: &[f32], dtype: StorageDtype) -> Vec<u8> {
    match dtype {
        StorageDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StorageDtype::F16 => {
            values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
        }
    }
}

/// Serialize flat parameters to safetensors bytes (HF GPT-2 names).
pub fn to_safetensors(cfg: &GptConfig, params: &[f32], dtype: StorageDtype) -> Result<Vec<u8>> {
    let layout = cfg.layout();
    if params.len() != layout.total {
        return Err(LabError::shape(format!(
            "{} parameters given, the config needs {}",
            params.len(),
            layout.total
        )));
    }
    let mut blobs = Vec::new();
    for t in hf_tensors(cfg) {
        let len: usize = t.ours.iter().product();
        let src = &params[t.offset..t.offset + len];
        let (values, shape) = if t.transposed {
            let (rows, cols) = (t.ours[0], t.ours[1]);
            let mut out = vec![0.0f32; len];
            for r in 0..rows {
                for col in 0..cols {
                    out[col * rows + r] = src[r * cols + col];
                }
            }
            (out, vec![cols, rows])
        } else {
            (src.to_vec(), t.ours.clone())
        };
        blobs.push((t.name, shape, encode_values(&values, dtype)));
    }
    let st_dtype = match dtype {
        StorageDtype::F32 => Dtype::F32,
        StorageDtype::F16 => Dtype::F16,
    };
    let views = blobs
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| LabError::shape(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
    safetensors::serialize(views, Some(metadata)).map_err(|e| LabError::shape(e.to_string()))
}

/// Read flat parameters from safetensors bytes, accepting F32 or F16 and names with or
/// without HF's `transformer.` prefix. Errors name the missing or mis-shaped tensor.
pub fn from_safetensors(cfg: &GptConfig, bytes: &[u8]) -> Result<Vec<f32>> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| LabError::parse(format!("not a safetensors file: {e}")))?;
    let mut params = vec![0.0f32; cfg.layout().total];
    for t in hf_tensors(cfg) {
        let view = file
            .tensor(&t.name)
            .or_else(|_| file.tensor(&format!("transformer.{}", t.name)))
            .map_err(|_| LabError::parse(format!("tensor {:?} is missing", t.name)))?;
        let want: Vec<usize> =
            if t.transposed { vec![t.ours[1], t.ours[0]] } else { t.ours.clone() };
        if view.shape() != want.as_slice() {
            return Err(LabError::shape(format!(
                "tensor {:?} has shape {:?}, config.json implies {:?}",
                t.name,
                view.shape(),
                want
            )));
        }
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(LabError::parse(format!(
                    "tensor {:?} has dtype {other:?}; only F32 and F16 are supported",
                    t.name
                )))
            }
        };
        let dst = &mut params[t.offset..t.offset + values.len()];
        if t.transposed {
            let (rows, cols) = (t.ours[0], t.ours[1]);
            for col in 0..cols {
                for r in 0..rows {
                    dst[r * cols + col] = values[col * rows + r];
                }
            }
        } else {
            dst.copy_from_slice(&values);
        }
    }
    if let Some(bad) = params.iter().position(|p| !p.is_finite()) {
        return Err(LabError::parse(format!("parameter {bad} is not finite")));
    }
    Ok(params)
}

/// Write `model.safetensors`, `config.json` and `tokenizer.json` into `dir` (created if
/// needed).
pub fn save_dir(dir: &Path, cfg: &GptConfig, params: &[f32], dtype: StorageDtype) -> Result<()> {
    let bytes = to_safetensors(cfg, params, dtype)?;
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir.display().to_string(), e))?;
    let write = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(|e| LabError::io(path.display().to_string(), e))
    };
    let pretty =
        |v: serde_json::Value| serde_json::to_vec_pretty(&v).expect("JSON values always serialize");
    write("model.safetensors", &bytes)?;
    write("config.json", &pretty(cfg.to_hf_json()))?;
    write("tokenizer.json", &pretty(crate::tokenizer::description_json()))
}

/// Load a model directory written by [`save_dir`] (or any HF GPT-2 directory whose
/// vocabulary is ours).
pub fn load_dir(dir: &Path) -> Result<(GptConfig, Vec<f32>)> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| LabError::io(path.display().to_string(), e))
    };
    let config_path = dir.join("config.json").display().to_string();
    let config_json: serde_json::Value = serde_json::from_slice(&read("config.json")?)
        .map_err(|e| LabError::parse(e.to_string()).in_file(&config_path))?;
    let cfg = GptConfig::from_hf_json(&config_json).map_err(|e| e.in_file(&config_path))?;
    let params = from_safetensors(&cfg, &read("model.safetensors")?)
        .map_err(|e| e.in_file(&dir.join("model.safetensors").display().to_string()))?;
    Ok((cfg, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_f32_exactly_and_f16_closely() {
        let cfg = GptConfig { vocab: 96, ctx: 8, d_model: 8, n_layer: 2, n_head: 2 };
        let params = crate::config::init_params(&cfg, 3);
        let back =
            from_safetensors(&cfg, &to_safetensors(&cfg, &params, StorageDtype::F32).unwrap())
                .unwrap();
        assert_eq!(back, params);
        let half_back =
            from_safetensors(&cfg, &to_safetensors(&cfg, &params, StorageDtype::F16).unwrap())
                .unwrap();
        let worst =
            params.iter().zip(&half_back).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "f16 round trip error {worst}");
    }

    #[test]
    fn hf_layout_is_transposed_conv1d() {
        let cfg = GptConfig { vocab: 96, ctx: 4, d_model: 4, n_layer: 1, n_head: 1 };
        let mut params = vec![0.0f32; cfg.layout().total];
        let l = cfg.layout();
        params[l.qkvw + 1] = 7.0; // our qkvw[row 0, col 1]
        let bytes = to_safetensors(&cfg, &params, StorageDtype::F32).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = file.tensor("h.0.attn.c_attn.weight").unwrap();
        assert_eq!(view.shape(), &[4, 12]);
        let idx = 12; // HF [in=1, out=0]
        let got = f32::from_le_bytes(view.data()[idx * 4..idx * 4 + 4].try_into().unwrap());
        assert_eq!(got, 7.0);
    }

    #[test]
    fn missing_tensor_is_named() {
        let cfg = GptConfig { vocab: 96, ctx: 4, d_model: 4, n_layer: 1, n_head: 1 };
        let bigger = GptConfig { n_layer: 2, ..cfg };
        let bytes =
            to_safetensors(&cfg, &crate::config::init_params(&cfg, 0), StorageDtype::F32).unwrap();
        let err = from_safetensors(&bigger, &bytes).unwrap_err().to_string();
        assert!(err.contains("h.1.ln_1.weight"), "{err}");
    }
}
