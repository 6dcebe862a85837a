//! Model checkpoints: `model.safetensors` with Hugging Face GPT-2 tensor names and layout,
//! an HF-style `config.json`, and the model's `tokenizer.json`, so a trained policy can be opened
//! by `transformers.GPT2LMHeadModel.from_pretrained` as well as by alignlab.
//!
//! HF's GPT-2 stores its linear layers as `Conv1D` with weights (in, out); our flat layout
//! stores (out, in), so matrices are transposed on the way out and back in.
//!
//! Loading trusts nothing in the files: `config.json` is read within a size limit and its
//! sizes within [`GptConfig::validate`]'s bounds; `model.safetensors` must be a regular file
//! whose header (read alone, within [`MAX_HEADER_BYTES`]) names every tensor the config
//! needs with the right shape and dtype and whose length is what the header declares. Only
//! then are the weights allocated and read, so no file can make the loader ask for memory
//! its contents do not justify, and every error names the file and the tensor or field.

use crate::config::{GptConfig, ParamLayout};
use crate::error::{LabError, Result};
use crate::tokenizer::{self, Tokenizer};
use crate::{files, json};
use safetensors::tensor::{Dtype, Metadata, TensorView};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    /// Half the size; what the shipped starter model uses.
    F16,
    /// bfloat16: f32's range with 8 bits of mantissa, as many hub checkpoints are stored.
    Bf16,
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

/// Values as little-endian bytes of `dtype`.
pub(crate) fn encode_values(values: &[f32], dtype: StorageDtype) -> Vec<u8> {
    match dtype {
        StorageDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StorageDtype::F16 => {
            values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()
        }
        StorageDtype::Bf16 => {
            values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()
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
        StorageDtype::Bf16 => Dtype::BF16,
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

/// Largest safetensors header read: the format's own limit (100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where one tensor the config needs lies in the data section, checked against the config.
struct Located {
    tensor: HfTensor,
    dtype: StorageDtype,
    /// Byte range in the data section (after the 8-byte length and the header).
    start: usize,
    len: usize,
}

/// The header's length from the file's first 8 bytes, checked against the limit and the
/// file's size.
fn header_len(prefix: &[u8], file_len: u64) -> Result<usize> {
    let Some(len_bytes) = prefix.get(..8) else {
        return Err(LabError::parse(format!(
            "not a safetensors file: {file_len} bytes, shorter than the 8-byte header length"
        )));
    };
    let n = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(LabError::parse(format!(
            "not a safetensors file: it declares a header of {n} bytes, over the limit of \
             {MAX_HEADER_BYTES}"
        )));
    }
    if 8 + n > file_len {
        return Err(LabError::parse(format!(
            "not a safetensors file (or a truncated one): it declares a header of {n} bytes but \
             has {file_len} bytes in all"
        )));
    }
    Ok(n as usize)
}

/// Parse the JSON header (the format checks that tensors are contiguous and that each
/// one's byte range fits its dtype and shape, with overflow-checked arithmetic). A tensor
/// named twice is refused rather than one of the two silently kept.
fn parse_header(header: &[u8]) -> Result<Metadata> {
    let text = std::str::from_utf8(header).map_err(|e| {
        LabError::parse(format!("not a safetensors file: header is not UTF-8: {e}"))
    })?;
    let bad =
        |e: serde_json::Error| LabError::parse(format!("not a safetensors file: bad header: {e}"));
    json::parse_unique_raw(text).map_err(bad)?;
    serde_json::from_str::<Metadata>(text).map_err(bad)
}

/// Check that the file is exactly as long as its header says, so that no tensor reaches past
/// its end and nothing follows the last one.
fn check_file_len(header_len: usize, metadata: &Metadata, file_len: u64) -> Result<()> {
    let declared = 8 + header_len as u64 + metadata.data_len() as u64;
    if declared != file_len {
        return Err(LabError::parse(format!(
            "its header declares {declared} bytes in all but the file has {file_len}; it is \
             truncated or has data after the last tensor"
        )));
    }
    Ok(())
}

/// Find every tensor the config needs, with our names or HF's `transformer.` ones, and check
/// its shape and dtype. Nothing is read or allocated for the data yet.
fn locate(cfg: &GptConfig, metadata: &Metadata) -> Result<Vec<Located>> {
    hf_tensors(cfg)
        .into_iter()
        .map(|t| {
            let info = metadata
                .info(&t.name)
                .or_else(|| metadata.info(&format!("transformer.{}", t.name)))
                .ok_or_else(|| LabError::parse(format!("tensor {:?} is missing", t.name)))?;
            let want: Vec<usize> =
                if t.transposed { vec![t.ours[1], t.ours[0]] } else { t.ours.clone() };
            if info.shape != want {
                return Err(LabError::parse(format!(
                    "tensor {:?} has shape {:?}, config.json implies {:?}",
                    t.name, info.shape, want
                )));
            }
            let dtype = match info.dtype {
                Dtype::F32 => StorageDtype::F32,
                Dtype::F16 => StorageDtype::F16,
                Dtype::BF16 => StorageDtype::Bf16,
                other => {
                    return Err(LabError::parse(format!(
                        "tensor {:?} has dtype {other:?}; only F32, F16 and BF16 are supported",
                        t.name
                    )))
                }
            };
            let (start, end) = info.data_offsets;
            Ok(Located { tensor: t, dtype, start, len: end - start })
        })
        .collect()
}

/// Little-endian bytes of `dtype` as f32 values.
pub(crate) fn decode_values(bytes: &[u8], dtype: StorageDtype) -> Vec<f32> {
    match dtype {
        StorageDtype::F32 => {
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        StorageDtype::F16 => {
            bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        StorageDtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// Decode one tensor's bytes into its place in the flat parameters, undoing HF's Conv1D
/// transpose.
fn decode_into(params: &mut [f32], loc: &Located, bytes: &[u8]) {
    let values = decode_values(bytes, loc.dtype);
    let t = &loc.tensor;
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

/// The first non-finite parameter, named by its tensor.
fn check_finite(cfg: &GptConfig, params: &[f32]) -> Result<()> {
    let Some(bad) = params.iter().position(|p| !p.is_finite()) else { return Ok(()) };
    let name = hf_tensors(cfg)
        .into_iter()
        .find(|t| (t.offset..t.offset + t.ours.iter().product::<usize>()).contains(&bad))
        .map_or_else(|| format!("parameter {bad}"), |t| format!("tensor {:?}", t.name));
    Err(LabError::parse(format!("{name} holds {}; every weight must be finite", params[bad])))
}

/// Read flat parameters from safetensors bytes, accepting F32, F16 or BF16 and names with or
/// without HF's `transformer.` prefix. The config is validated and every tensor it needs is
/// found and checked (shape, dtype, the file's length) before the parameters are allocated.
/// Errors are [`LabError::Parse`] naming the tensor; the caller adds the file.
pub fn from_safetensors(cfg: &GptConfig, bytes: &[u8]) -> Result<Vec<f32>> {
    cfg.validate()?;
    let n = header_len(bytes, bytes.len() as u64)?;
    let metadata = parse_header(&bytes[8..8 + n])?;
    check_file_len(n, &metadata, bytes.len() as u64)?;
    let located = locate(cfg, &metadata)?;
    let data = &bytes[8 + n..];
    let mut params = vec![0.0f32; cfg.layout().total];
    for loc in &located {
        // In range: the header's offsets are contiguous from 0 to the data's length.
        let Some(bytes) = data.get(loc.start..loc.start + loc.len) else {
            return Err(LabError::parse(format!("tensor {:?} lies past the end", loc.tensor.name)));
        };
        decode_into(&mut params, loc, bytes);
    }
    check_finite(cfg, &params)?;
    Ok(params)
}

/// Write `model.safetensors`, `config.json` and the tokenizer's files into `dir` (created
/// if needed).
pub fn save_dir(dir: &Path, model: &ModelFiles, dtype: StorageDtype) -> Result<()> {
    let ModelFiles { config: cfg, params, tokenizer } = model;
    check_vocab(cfg, tokenizer)?;
    let bytes = to_safetensors(cfg, params, dtype)?;
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir.display().to_string(), e))?;
    let write = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(|e| LabError::io(path.display().to_string(), e))
    };
    let config = serde_json::to_vec_pretty(&cfg.to_hf_json(tokenizer.eot()))
        .expect("JSON values always serialize");
    write("model.safetensors", &bytes)?;
    write("config.json", &config)?;
    tokenizer.save_dir(dir)
}

/// What a model directory holds: the architecture, the weights in our flat layout, and the
/// tokenizer the weights read.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub config: GptConfig,
    pub params: Vec<f32>,
    pub tokenizer: Tokenizer,
}

/// Read and check a `config.json`: at most [`files::MAX_JSON_BYTES`], strict JSON (no
/// repeated key), the GPT-2 fields within [`GptConfig::validate`]'s bounds. Errors name
/// the file and the field.
pub fn read_config(path: &Path) -> Result<GptConfig> {
    let name = files::display_name(path);
    let text = files::read_text(path, files::MAX_JSON_BYTES)?;
    let value = json::parse_unique(&text).map_err(|e| e.in_file(&name))?;
    GptConfig::from_hf_json(&value).map_err(|e| e.in_file(&name))
}

/// Read the weights `cfg` needs from a `model.safetensors` file. The file must be a
/// regular file; its header is read (at most [`MAX_HEADER_BYTES`]) and checked against the
/// config and the file's length before anything is allocated for the weights, then only the
/// tensors the config needs are read (an HF file's extra tensors are skipped). Errors name
/// the file and the tensor.
pub fn read_safetensors(path: &Path, cfg: &GptConfig) -> Result<Vec<f32>> {
    let name = files::display_name(path);
    let io = |e: std::io::Error| LabError::io(&name, e);
    let in_file = |e: LabError| e.in_file(&name);
    cfg.validate()?;
    files::check_regular(path)?;
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut prefix = Vec::with_capacity(8);
    (&mut file).take(8).read_to_end(&mut prefix).map_err(io)?;
    let n = header_len(&prefix, file_len).map_err(in_file)?;
    // n is at most MAX_HEADER_BYTES and at most the file's length.
    let mut header = vec![0u8; n];
    file.read_exact(&mut header).map_err(io)?;
    let metadata = parse_header(&header).map_err(in_file)?;
    check_file_len(n, &metadata, file_len).map_err(in_file)?;
    let located = locate(cfg, &metadata).map_err(in_file)?;
    let data_start = 8 + n as u64;
    let mut params = vec![0.0f32; cfg.layout().total];
    let mut bytes = Vec::new();
    for loc in &located {
        bytes.resize(loc.len, 0);
        file.seek(SeekFrom::Start(data_start + loc.start as u64)).map_err(io)?;
        file.read_exact(&mut bytes).map_err(io)?;
        decode_into(&mut params, loc, &bytes);
    }
    check_finite(cfg, &params).map_err(in_file)?;
    Ok(params)
}

/// The tokenizer a model directory states, checked against its config before any weight
/// is read:
/// - `tokenizer.json` of alignlab's character tokenizer, or a Hugging Face byte-level BPE
///   (`model.type` "BPE", GPT-2's pre-tokenizer and decoder);
/// - without `tokenizer.json`, GPT-2's `vocab.json` + `merges.txt`;
/// - with none of these, the character tokenizer when the vocabulary is its 96 ids
///   (checkpoints from before tokenizers were stated).
///
/// The tokenizer's ids must be exactly the config's `vocab_size`: a model is never read
/// with a tokenizer whose ids mean something else.
pub fn read_tokenizer(dir: &Path, cfg: &GptConfig) -> Result<Tokenizer> {
    let stated = ["tokenizer.json", "vocab.json", "merges.txt"];
    if !stated.iter().any(|file| dir.join(file).exists()) {
        if cfg.vocab == tokenizer::VOCAB_SIZE {
            return Ok(Tokenizer::Char);
        }
        return Err(LabError::parse(format!(
            "missing: config.json's vocabulary of {} tokens is not the character \
             tokenizer's {}, and there is no vocab.json + merges.txt, so no tokenizer \
             alignlab has can read this model",
            cfg.vocab,
            tokenizer::VOCAB_SIZE
        ))
        .in_file(&files::display_name(&dir.join("tokenizer.json"))));
    }
    let tokenizer = Tokenizer::from_path(dir)?;
    let source = if dir.join("tokenizer.json").exists() { "tokenizer.json" } else { "vocab.json" };
    check_vocab(cfg, &tokenizer).map_err(|e| e.in_file(&files::display_name(&dir.join(source))))?;
    Ok(tokenizer)
}

/// The config's vocabulary must be the tokenizer's ids, one for one.
fn check_vocab(cfg: &GptConfig, tokenizer: &Tokenizer) -> Result<()> {
    if cfg.vocab == tokenizer.vocab_size() {
        return Ok(());
    }
    Err(LabError::parse(format!(
        "the {} tokenizer has {} ids but config.json's vocab_size is {}; a model is read \
         only with the tokenizer it was trained with",
        tokenizer.kind(),
        tokenizer.vocab_size(),
        cfg.vocab
    )))
}

/// Load a model directory written by [`save_dir`] or laid out as a Hugging Face GPT-2
/// checkpoint: [`read_config`] on `config.json`, [`read_tokenizer`], then
/// [`read_safetensors`] on `model.safetensors`.
pub fn load_dir(dir: &Path) -> Result<ModelFiles> {
    let config = read_config(&dir.join("config.json"))?;
    let tokenizer = read_tokenizer(dir, &config)?;
    let params = read_safetensors(&dir.join("model.safetensors"), &config)?;
    Ok(ModelFiles { config, params, tokenizer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_is_read_only_with_its_own_tokenizer() {
        let dir = std::env::temp_dir().join(format!("alignlab-tok-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ours = GptConfig { vocab: 96, ctx: 8, d_model: 8, n_layer: 1, n_head: 1 };
        let gpt2 = GptConfig { vocab: 50257, ..ours };
        // no tokenizer files: the character tokenizer when the vocabulary is 96
        assert_eq!(read_tokenizer(&dir, &ours).unwrap(), Tokenizer::Char);
        let err = read_tokenizer(&dir, &gpt2).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json") && err.contains("50257"), "{err}");
        // our description: only with vocab 96
        Tokenizer::Char.save_dir(&dir).unwrap();
        assert_eq!(read_tokenizer(&dir, &ours).unwrap(), Tokenizer::Char);
        let err = read_tokenizer(&dir, &gpt2).unwrap_err().to_string();
        assert!(err.contains("character tokenizer has 96 ids") && err.contains("50257"), "{err}");
        // GPT-2's own tokenizer.json is read as BPE, and only with its 50257 ids
        let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/tokenizers/gpt2");
        let bpe = crate::bpe::Bpe::from_gpt2_files(
            &assets.join("vocab.json"),
            &assets.join("merges.txt"),
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer.json"), bpe.to_tokenizer_json()).unwrap();
        let read = read_tokenizer(&dir, &gpt2).unwrap();
        assert_eq!((read.kind(), read.vocab_size(), read.eot()), ("byte-level BPE", 50257, 50256));
        let err = read_tokenizer(&dir, &ours).unwrap_err().to_string();
        assert!(err.contains("BPE tokenizer has 50257 ids") && err.contains("is 96"), "{err}");
        // vocab.json + merges.txt without tokenizer.json: the same tokenizer
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        std::fs::copy(assets.join("vocab.json"), dir.join("vocab.json")).unwrap();
        std::fs::copy(assets.join("merges.txt"), dir.join("merges.txt")).unwrap();
        assert_eq!(read_tokenizer(&dir, &gpt2).unwrap(), read);
        let _ = std::fs::remove_dir_all(&dir);
    }

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
        // bf16 keeps 8 bits of mantissa: within 2⁻⁸ of each weight, relatively
        let bf16_back =
            from_safetensors(&cfg, &to_safetensors(&cfg, &params, StorageDtype::Bf16).unwrap())
                .unwrap();
        for (a, b) in params.iter().zip(&bf16_back) {
            assert!((a - b).abs() <= a.abs() / 256.0, "bf16 round trip {a} -> {b}");
        }
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

    const SMALL: GptConfig = GptConfig { vocab: 96, ctx: 4, d_model: 4, n_layer: 1, n_head: 1 };

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("alignlab-checkpoint-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A model folder of `cfg` whose `config.json` is `config` and whose weights are `weights`.
    fn folder(name: &str, config: &serde_json::Value, weights: &[u8]) -> std::path::PathBuf {
        let dir = scratch(name);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::write(dir.join("model.safetensors"), weights).unwrap();
        dir
    }

    fn small_weights() -> Vec<u8> {
        to_safetensors(&SMALL, &crate::config::init_params(&SMALL, 1), StorageDtype::F32).unwrap()
    }

    fn load_err(dir: &Path) -> String {
        load_dir(dir).unwrap_err().to_string()
    }

    #[test]
    fn a_saved_folder_loads_back() {
        let dir = scratch("saved");
        let params = crate::config::init_params(&SMALL, 1);
        let model = ModelFiles { config: SMALL, params, tokenizer: Tokenizer::Char };
        save_dir(&dir, &model, StorageDtype::F32).unwrap();
        assert_eq!(load_dir(&dir).unwrap(), model);
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_refused_not_read_forever() {
        for file in ["config.json", "model.safetensors"] {
            let dir = folder("device", &SMALL.to_hf_json(0), &small_weights());
            std::fs::remove_file(dir.join(file)).unwrap();
            std::os::unix::fs::symlink("/dev/zero", dir.join(file)).unwrap();
            let err = load_err(&dir);
            assert!(err.contains(file) && err.contains("not a regular file"), "{err}");
        }
    }

    #[test]
    fn config_errors_name_config_json_and_the_field() {
        let mut config = SMALL.to_hf_json(0);
        config["vocab_size"] = serde_json::json!(1_000_000_000u64);
        let dir = folder("config", &config, &small_weights());
        let err = load_err(&dir);
        let path = dir.join("config.json").display().to_string();
        assert!(
            err.starts_with(&format!("{path}, field \"vocab_size\": 1000000000 is over")),
            "{err}"
        );
        config["vocab_size"] = serde_json::json!(10);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let err = load_err(&dir);
        assert!(err.contains("vocabulary of 10") && err.contains("tokenizer's 96"), "{err}");
        std::fs::write(dir.join("config.json"), "{\"n_head\": 1, \"n_head\": 2}").unwrap();
        let err = load_err(&dir);
        assert!(err.starts_with(&format!("{path}, line 1: duplicate key")), "{err}");
    }

    #[test]
    fn weight_errors_name_the_file_and_the_tensor() {
        let mut config = SMALL.to_hf_json(0);
        config["n_positions"] = serde_json::json!(8);
        let dir = folder("shape", &config, &small_weights());
        let path = dir.join("model.safetensors").display().to_string();
        assert_eq!(
            load_err(&dir),
            format!("{path}: tensor \"wpe.weight\" has shape [4, 4], config.json implies [8, 4]")
        );
        // a config of 1000 layers against a file of one: the missing tensor, found from the
        // header alone
        let mut config = SMALL.to_hf_json(0);
        config["n_layer"] = serde_json::json!(1000);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        assert_eq!(load_err(&dir), format!("{path}: tensor \"h.1.ln_1.weight\" is missing"));
    }

    #[test]
    fn the_file_length_must_match_the_header() {
        let good = small_weights();
        let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "truncated"),
            ([good.as_slice(), b"extra"].concat(), "after the last tensor"),
            (good[..8 + n / 2].to_vec(), "it declares a header of"),
            ([&5u64.to_le_bytes()[..], b"{abcd"].concat(), "bad header"),
            ([&2u64.to_le_bytes()[..], b"\xff}"].concat(), "header is not UTF-8"),
            ((u64::MAX).to_le_bytes().to_vec(), "over the limit"),
            ([&(1u64 << 20).to_le_bytes()[..], b"{}"].concat(), "has 10 bytes in all"),
            (b"abc".to_vec(), "shorter than the 8-byte header length"),
            ([&13u64.to_le_bytes()[..], b"{\"a\":1,\"a\":2}"].concat(), "duplicate key \"a\""),
            (Vec::new(), "shorter than the 8-byte header length"),
        ];
        for (bytes, want) in cases {
            let err = from_safetensors(&SMALL, &bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
            let dir = folder("length", &SMALL.to_hf_json(0), &bytes);
            let err = load_err(&dir);
            assert!(err.contains("model.safetensors") && err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn hf_prefixes_and_extra_tensors_are_accepted_other_dtypes_are_not() {
        let params = crate::config::init_params(&SMALL, 2);
        let ours = small_weights();
        let file = safetensors::SafeTensors::deserialize(&ours).unwrap();
        let mask = vec![0u8; 4 * 16];
        let mut views: Vec<(String, TensorView)> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (format!("transformer.{name}"), view))
            .collect();
        views.push((
            "transformer.h.0.attn.bias".into(),
            TensorView::new(Dtype::F32, vec![1, 1, 4, 4], &mask).unwrap(),
        ));
        let hf = safetensors::serialize(views.clone(), None).unwrap();
        assert_eq!(from_safetensors(&SMALL, &hf).unwrap(), crate::config::init_params(&SMALL, 1));
        let dir = folder("hf", &SMALL.to_hf_json(0), &hf);
        assert_eq!(load_dir(&dir).unwrap().params, crate::config::init_params(&SMALL, 1));
        assert_ne!(params, crate::config::init_params(&SMALL, 1));
        // the same bytes declared as I32
        let ints: Vec<(String, TensorView)> = views
            .into_iter()
            .map(|(name, v)| {
                let dtype = if name.ends_with("ln_f.bias") { Dtype::I32 } else { v.dtype() };
                (name, TensorView::new(dtype, v.shape().to_vec(), v.data()).unwrap())
            })
            .collect();
        let err = from_safetensors(&SMALL, &safetensors::serialize(ints, None).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"ln_f.bias\" has dtype I32"), "{err}");
    }

    #[test]
    fn non_finite_weights_are_named_by_tensor() {
        let l = SMALL.layout();
        let mut params = crate::config::init_params(&SMALL, 1);
        params[l.lnfw + 1] = f32::NAN;
        let bytes = to_safetensors(&SMALL, &params, StorageDtype::F32).unwrap();
        let err = from_safetensors(&SMALL, &bytes).unwrap_err().to_string();
        assert!(err.contains("\"ln_f.weight\" holds NaN"), "{err}");
    }

    #[test]
    fn an_unchecked_config_is_an_error_not_a_panic() {
        let huge = GptConfig { d_model: 1 << 62, ..SMALL };
        assert!(from_safetensors(&huge, &small_weights()).is_err());
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
