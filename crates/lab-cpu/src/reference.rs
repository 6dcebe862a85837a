//! GPT-2 as plainly as it can be written: one sequence at a time, f64, plain loops, one
//! `*_forward` / `*_backward` pair per layer and a model that strings them together in the
//! order of nanoGPT's `model.py`. Nothing here is fast; it is the twin the fast kernels of
//! [`crate::model`] (and, through them, the GPU kernels) are checked against, and its own
//! backward is checked against finite differences.
//!
//! Notation as in [`crate::model`]: T tokens, C channels, NH heads, hs = C / NH, V vocabulary,
//! L layers; matrices are (out, in) row-major and `y = x · Wᵀ + b`. A sequence's activations
//! are `Vec<f64>` of (T, width) rows.

use crate::model::LN_EPS;
use lab_core::config::GptConfig;

/// out = x · Wᵀ + b: out[t, o] = b[o] + Σ_i x[t, i] · w[o, i].
pub fn matmul_forward(x: &[f64], w: &[f64], b: Option<&[f64]>, ic: usize, oc: usize) -> Vec<f64> {
    let t_len = x.len() / ic;
    let mut out = vec![0.0; t_len * oc];
    for t in 0..t_len {
        for o in 0..oc {
            let mut sum = b.map_or(0.0, |b| b[o]);
            for i in 0..ic {
                sum += x[t * ic + i] * w[o * ic + i];
            }
            out[t * oc + o] = sum;
        }
    }
    out
}

/// The gradients of [`matmul_forward`]: returns dx = dout · W; adds doutᵀ · x into `dw` and
/// Σ_t dout into `db`.
pub fn matmul_backward(
    dout: &[f64],
    x: &[f64],
    w: &[f64],
    dw: &mut [f64],
    db: Option<&mut [f64]>,
    ic: usize,
    oc: usize,
) -> Vec<f64> {
    let t_len = x.len() / ic;
    let mut dx = vec![0.0; t_len * ic];
    for t in 0..t_len {
        for o in 0..oc {
            let d = dout[t * oc + o];
            for i in 0..ic {
                dx[t * ic + i] += d * w[o * ic + i];
                dw[o * ic + i] += d * x[t * ic + i];
            }
        }
    }
    if let Some(db) = db {
        for t in 0..t_len {
            for o in 0..oc {
                db[o] += dout[t * oc + o];
            }
        }
    }
    dx
}

/// What a LayerNorm forward keeps for its backward: per row, its mean and 1/√(var + ε).
pub struct NormStats {
    pub mean: Vec<f64>,
    pub rstd: Vec<f64>,
}

/// out = (x − mean) / √(var + ε) · w + b per row (biased variance).
pub fn layernorm_forward(x: &[f64], w: &[f64], b: &[f64], c: usize) -> (Vec<f64>, NormStats) {
    let t_len = x.len() / c;
    let mut out = vec![0.0; x.len()];
    let mut stats = NormStats { mean: vec![0.0; t_len], rstd: vec![0.0; t_len] };
    for t in 0..t_len {
        let row = &x[t * c..(t + 1) * c];
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + LN_EPS).sqrt();
        for i in 0..c {
            out[t * c + i] = (row[i] - mean) * rstd * w[i] + b[i];
        }
        stats.mean[t] = mean;
        stats.rstd[t] = rstd;
    }
    (out, stats)
}

/// The gradients of [`layernorm_forward`]: returns dx; adds into `dw` and `db`.
pub fn layernorm_backward(
    dout: &[f64],
    x: &[f64],
    w: &[f64],
    stats: &NormStats,
    dw: &mut [f64],
    db: &mut [f64],
    c: usize,
) -> Vec<f64> {
    let t_len = x.len() / c;
    let mut dx = vec![0.0; x.len()];
    for t in 0..t_len {
        let (mean, rstd) = (stats.mean[t], stats.rstd[t]);
        let norm = |i: usize| (x[t * c + i] - mean) * rstd;
        let dnorm = |i: usize| w[i] * dout[t * c + i];
        let dnorm_mean = (0..c).map(dnorm).sum::<f64>() / c as f64;
        let dnorm_norm_mean = (0..c).map(|i| dnorm(i) * norm(i)).sum::<f64>() / c as f64;
        for i in 0..c {
            dx[t * c + i] = (dnorm(i) - dnorm_mean - norm(i) * dnorm_norm_mean) * rstd;
            dw[i] += dout[t * c + i] * norm(i);
            db[i] += dout[t * c + i];
        }
    }
    dx
}

/// Causal self-attention over `qkv` rows `[q | k | v]` (each C = NH·hs): per head,
/// att = softmax(q·kᵀ/√hs, future masked), out = att · v. Returns out (T, C) and att
/// (NH, T, T), zero above the diagonal.
pub fn attention_forward(qkv: &[f64], c: usize, nh: usize) -> (Vec<f64>, Vec<f64>) {
    let t_len = qkv.len() / (3 * c);
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let q = |t: usize, h: usize, d: usize| qkv[t * 3 * c + h * hs + d];
    let k = |t: usize, h: usize, d: usize| qkv[t * 3 * c + c + h * hs + d];
    let v = |t: usize, h: usize, d: usize| qkv[t * 3 * c + 2 * c + h * hs + d];
    let mut out = vec![0.0; t_len * c];
    let mut att = vec![0.0; nh * t_len * t_len];
    for h in 0..nh {
        for t in 0..t_len {
            let scores: Vec<f64> = (0..=t)
                .map(|t2| (0..hs).map(|d| q(t, h, d) * k(t2, h, d)).sum::<f64>() * scale)
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for t2 in 0..=t {
                let a = exps[t2] / sum;
                att[(h * t_len + t) * t_len + t2] = a;
                for d in 0..hs {
                    out[t * c + h * hs + d] += a * v(t2, h, d);
                }
            }
        }
    }
    (out, att)
}

/// The gradient of [`attention_forward`] with respect to `qkv`.
pub fn attention_backward(dout: &[f64], qkv: &[f64], att: &[f64], c: usize, nh: usize) -> Vec<f64> {
    let t_len = qkv.len() / (3 * c);
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut dqkv = vec![0.0; qkv.len()];
    let (q_at, k_at, v_at) = (
        |t: usize, h: usize, d: usize| t * 3 * c + h * hs + d,
        |t: usize, h: usize, d: usize| t * 3 * c + c + h * hs + d,
        |t: usize, h: usize, d: usize| t * 3 * c + 2 * c + h * hs + d,
    );
    for h in 0..nh {
        for t in 0..t_len {
            let a = |t2: usize| att[(h * t_len + t) * t_len + t2];
            // out[t] = Σ_t2 a(t2) v[t2]: into da and dv
            let da: Vec<f64> = (0..=t)
                .map(|t2| (0..hs).map(|d| dout[t * c + h * hs + d] * qkv[v_at(t2, h, d)]).sum())
                .collect();
            for t2 in 0..=t {
                for d in 0..hs {
                    dqkv[v_at(t2, h, d)] += a(t2) * dout[t * c + h * hs + d];
                }
            }
            // through the softmax, then the scaled scores q[t] · k[t2]
            let dot: f64 = (0..=t).map(|t2| a(t2) * da[t2]).sum();
            for t2 in 0..=t {
                let dscore = a(t2) * (da[t2] - dot) * scale;
                for d in 0..hs {
                    dqkv[q_at(t, h, d)] += dscore * qkv[k_at(t2, h, d)];
                    dqkv[k_at(t2, h, d)] += dscore * qkv[q_at(t, h, d)];
                }
            }
        }
    }
    dqkv
}

const GELU_SCALE: f64 = 0.797_884_560_802_865_4; // √(2/π)
const GELU_CUBIC: f64 = 0.044715;

/// GPT-2's `gelu_new`: ½ x (1 + tanh(√(2/π) (x + 0.044715 x³))).
pub fn gelu_forward(x: &[f64]) -> Vec<f64> {
    x.iter()
        .map(|&x| 0.5 * x * (1.0 + (GELU_SCALE * (x + GELU_CUBIC * x * x * x)).tanh()))
        .collect()
}

/// dx = dout · gelu'(x).
pub fn gelu_backward(dout: &[f64], x: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(dout)
        .map(|(&x, &dy)| {
            let th = (GELU_SCALE * (x + GELU_CUBIC * x * x * x)).tanh();
            let local = 0.5 * (1.0 + th)
                + 0.5 * x * (1.0 - th * th) * GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
            local * dy
        })
        .collect()
}

/// log p(token | logits row) = logit − log Σ exp(logits).
pub fn log_softmax_at(row: &[f64], token: u32) -> f64 {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    row[token as usize] - lse
}

/// The parameters of [`lab_core::config::ParamLayout`] by name, for one layer or the model.
struct Params<'a> {
    cfg: GptConfig,
    tensors: Vec<&'a [f64]>,
}

impl<'a> Params<'a> {
    fn new(cfg: &GptConfig, flat: &'a [f64]) -> Self {
        let tensors = cfg
            .layout()
            .tensors(cfg)
            .into_iter()
            .map(|(_, offset, shape)| &flat[offset..offset + shape.iter().product::<usize>()])
            .collect();
        Params { cfg: *cfg, tensors }
    }

    /// Tensor `index` of the layout (0 wte … 15 lnfb); layer `l` of a layer-stacked one.
    fn get(&self, index: usize, l: Option<usize>) -> &'a [f64] {
        let t = self.tensors[index];
        match l {
            Some(l) => {
                let per = t.len() / self.cfg.n_layer;
                &t[l * per..(l + 1) * per]
            }
            None => t,
        }
    }
}

/// The same view of a gradient buffer.
fn grad_mut<'a>(
    cfg: &GptConfig,
    flat: &'a mut [f64],
    index: usize,
    l: Option<usize>,
) -> &'a mut [f64] {
    let (_, offset, shape) = cfg.layout().tensors(cfg).swap_remove(index);
    let t = &mut flat[offset..offset + shape.iter().product::<usize>()];
    match l {
        Some(l) => {
            let per = t.len() / cfg.n_layer;
            &mut t[l * per..(l + 1) * per]
        }
        None => t,
    }
}

// Layout indices (lab_core::config::ParamLayout::tensors).
const WTE: usize = 0;
const WPE: usize = 1;
const LN1W: usize = 2;
const LN1B: usize = 3;
const QKVW: usize = 4;
const QKVB: usize = 5;
const ATTPROJW: usize = 6;
const ATTPROJB: usize = 7;
const LN2W: usize = 8;
const LN2B: usize = 9;
const FCW: usize = 10;
const FCB: usize = 11;
const FCPROJW: usize = 12;
const FCPROJB: usize = 13;
const LNFW: usize = 14;
const LNFB: usize = 15;

/// One block's activations, kept for the backward.
struct Block {
    input: Vec<f64>,
    ln1: Vec<f64>,
    ln1_stats: NormStats,
    qkv: Vec<f64>,
    att: Vec<f64>,
    atty: Vec<f64>,
    residual2: Vec<f64>,
    ln2: Vec<f64>,
    ln2_stats: NormStats,
    fch: Vec<f64>,
    fch_gelu: Vec<f64>,
}

/// A forward pass over one sequence, with everything its backward needs.
pub struct Sequence {
    tokens: Vec<u32>,
    blocks: Vec<Block>,
    last: Vec<f64>,
    lnf: Vec<f64>,
    lnf_stats: NormStats,
    /// (T, V) logits.
    pub logits: Vec<f64>,
    /// (T) log p(tokens[t] | tokens[<t]) where mask[t] > 0, else 0.
    pub token_logps: Vec<f64>,
    /// Σ_t mask[t] · token_logps[t].
    pub seq_logp: f64,
}

/// GPT-2's forward over one sequence `tokens` (T ≤ ctx) with the score mask `mask`.
pub fn forward(cfg: &GptConfig, params: &[f64], tokens: &[u32], mask: &[f64]) -> Sequence {
    let p = Params::new(cfg, params);
    let (c, v, nh) = (cfg.d_model, cfg.vocab, cfg.n_head);
    let t_len = tokens.len();
    let (wte, wpe) = (p.get(WTE, None), p.get(WPE, None));
    let mut x = vec![0.0; t_len * c];
    for (t, &tok) in tokens.iter().enumerate() {
        for i in 0..c {
            x[t * c + i] = wte[tok as usize * c + i] + wpe[t * c + i];
        }
    }
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for l in 0..cfg.n_layer {
        let w = |index: usize| p.get(index, Some(l));
        let (ln1, ln1_stats) = layernorm_forward(&x, w(LN1W), w(LN1B), c);
        let qkv = matmul_forward(&ln1, w(QKVW), Some(w(QKVB)), c, 3 * c);
        let (atty, att) = attention_forward(&qkv, c, nh);
        let attproj = matmul_forward(&atty, w(ATTPROJW), Some(w(ATTPROJB)), c, c);
        let residual2: Vec<f64> = x.iter().zip(&attproj).map(|(a, b)| a + b).collect();
        let (ln2, ln2_stats) = layernorm_forward(&residual2, w(LN2W), w(LN2B), c);
        let fch = matmul_forward(&ln2, w(FCW), Some(w(FCB)), c, 4 * c);
        let fch_gelu = gelu_forward(&fch);
        let fcproj = matmul_forward(&fch_gelu, w(FCPROJW), Some(w(FCPROJB)), 4 * c, c);
        let out: Vec<f64> = residual2.iter().zip(&fcproj).map(|(a, b)| a + b).collect();
        let input = std::mem::replace(&mut x, out);
        blocks.push(Block {
            input,
            ln1,
            ln1_stats,
            qkv,
            att,
            atty,
            residual2,
            ln2,
            ln2_stats,
            fch,
            fch_gelu,
        });
    }
    let (lnf, lnf_stats) = layernorm_forward(&x, p.get(LNFW, None), p.get(LNFB, None), c);
    let logits = matmul_forward(&lnf, wte, None, c, v); // the head is tied to wte
    let mut token_logps = vec![0.0; t_len];
    let mut seq_logp = 0.0;
    for t in 1..t_len {
        if mask[t] > 0.0 {
            token_logps[t] = log_softmax_at(&logits[(t - 1) * v..t * v], tokens[t]);
            seq_logp += mask[t] * token_logps[t];
        }
    }
    Sequence {
        tokens: tokens.to_vec(),
        blocks,
        last: x,
        lnf,
        lnf_stats,
        logits,
        token_logps,
        seq_logp,
    }
}

/// The gradient of `d_seq · seq_logp` with respect to every parameter, added into `grads`
/// (the flat layout of `params`).
pub fn backward(
    cfg: &GptConfig,
    params: &[f64],
    seq: &Sequence,
    mask: &[f64],
    d_seq: f64,
    grads: &mut [f64],
) {
    let p = Params::new(cfg, params);
    let (c, v, nh) = (cfg.d_model, cfg.vocab, cfg.n_head);
    let t_len = seq.tokens.len();
    // d seq_logp / d logits[t − 1] = mask[t] · (onehot(tokens[t]) − softmax(logits[t − 1]))
    let mut dlogits = vec![0.0; t_len * v];
    for t in 1..t_len {
        if mask[t] > 0.0 {
            let row = &seq.logits[(t - 1) * v..t * v];
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
            for i in 0..v {
                dlogits[(t - 1) * v + i] = -d_seq * mask[t] * (row[i] - max).exp() / sum;
            }
            dlogits[(t - 1) * v + seq.tokens[t] as usize] += d_seq * mask[t];
        }
    }
    let wte = p.get(WTE, None);
    let dlnf =
        matmul_backward(&dlogits, &seq.lnf, wte, grad_mut(cfg, grads, WTE, None), None, c, v);
    let mut dlnfw = vec![0.0; c];
    let mut dlnfb = vec![0.0; c];
    let mut dx = layernorm_backward(
        &dlnf,
        &seq.last,
        p.get(LNFW, None),
        &seq.lnf_stats,
        &mut dlnfw,
        &mut dlnfb,
        c,
    );
    add(grad_mut(cfg, grads, LNFW, None), &dlnfw);
    add(grad_mut(cfg, grads, LNFB, None), &dlnfb);
    for (l, block) in seq.blocks.iter().enumerate().rev() {
        let w = |index: usize| p.get(index, Some(l));
        let g = |index: usize, len: usize| (index, vec![0.0; len]);
        let (mut dfcprojw, mut dfcprojb) = (g(FCPROJW, 4 * c * c), g(FCPROJB, c));
        let (mut dfcw, mut dfcb) = (g(FCW, 4 * c * c), g(FCB, 4 * c));
        let (mut dln2w, mut dln2b) = (g(LN2W, c), g(LN2B, c));
        let (mut dattprojw, mut dattprojb) = (g(ATTPROJW, c * c), g(ATTPROJB, c));
        let (mut dqkvw, mut dqkvb) = (g(QKVW, 3 * c * c), g(QKVB, 3 * c));
        let (mut dln1w, mut dln1b) = (g(LN1W, c), g(LN1B, c));
        // MLP branch: out = residual2 + fcproj(gelu(fc(ln2(residual2))))
        let dgelu = matmul_backward(
            &dx,
            &block.fch_gelu,
            w(FCPROJW),
            &mut dfcprojw.1,
            Some(&mut dfcprojb.1),
            4 * c,
            c,
        );
        let dfch = gelu_backward(&dgelu, &block.fch);
        let dln2 =
            matmul_backward(&dfch, &block.ln2, w(FCW), &mut dfcw.1, Some(&mut dfcb.1), c, 4 * c);
        let dres2 = layernorm_backward(
            &dln2,
            &block.residual2,
            w(LN2W),
            &block.ln2_stats,
            &mut dln2w.1,
            &mut dln2b.1,
            c,
        );
        add(&mut dx, &dres2);
        // attention branch: residual2 = input + attproj(attention(qkv(ln1(input))))
        let datty = matmul_backward(
            &dx,
            &block.atty,
            w(ATTPROJW),
            &mut dattprojw.1,
            Some(&mut dattprojb.1),
            c,
            c,
        );
        let dqkv = attention_backward(&datty, &block.qkv, &block.att, c, nh);
        let dln1 =
            matmul_backward(&dqkv, &block.ln1, w(QKVW), &mut dqkvw.1, Some(&mut dqkvb.1), c, 3 * c);
        let dinput = layernorm_backward(
            &dln1,
            &block.input,
            w(LN1W),
            &block.ln1_stats,
            &mut dln1w.1,
            &mut dln1b.1,
            c,
        );
        add(&mut dx, &dinput);
        for (index, values) in [
            dfcprojw, dfcprojb, dfcw, dfcb, dln2w, dln2b, dattprojw, dattprojb, dqkvw, dqkvb,
            dln1w, dln1b,
        ] {
            add(grad_mut(cfg, grads, index, Some(l)), &values);
        }
    }
    // the embeddings: token rows (tied with the head) and positions
    for (t, &tok) in seq.tokens.iter().enumerate() {
        let row = &dx[t * c..(t + 1) * c];
        add(&mut grad_mut(cfg, grads, WTE, None)[tok as usize * c..(tok as usize + 1) * c], row);
        add(&mut grad_mut(cfg, grads, WPE, None)[t * c..(t + 1) * c], row);
    }
}

fn add(into: &mut [f64], values: &[f64]) {
    for (a, b) in into.iter_mut().zip(values) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::central_differences::check;
    use crate::model::Gpt;
    use lab_core::rng::Rng;

    /// Ragged sizes on purpose: no dimension is a multiple of a tile or a lane count.
    const RAGGED: GptConfig = GptConfig { vocab: 13, ctx: 11, d_model: 12, n_layer: 2, n_head: 3 };

    fn random_params(cfg: &GptConfig, seed: u64) -> Vec<f64> {
        // GPT-2's init, then every weight nudged so biases and gains are not trivial
        let mut rng = Rng::new(seed);
        lab_core::config::init_params(cfg, seed)
            .iter()
            .map(|&w| f64::from(w) + 0.05 * f64::from(rng.normal()))
            .collect()
    }

    fn batch(cfg: &GptConfig, b: usize, t: usize, seed: u64) -> (Vec<u32>, Vec<f64>) {
        let mut rng = Rng::new(seed);
        let tokens = (0..b * t).map(|_| (rng.uniform_f64() * cfg.vocab as f64) as u32).collect();
        // each row scores from a different position on (ragged prompts)
        let mask = (0..b * t).map(|i| f64::from(u8::from(i % t > 1 + (i / t) % 3))).collect();
        (tokens, mask)
    }

    fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: fast {g} reference {w}");
        }
    }

    /// The fast model of `crate::model` equals this plain one, in f64, on a ragged shape:
    /// logits, token and sequence log-probs, and every parameter's gradient.
    #[test]
    fn the_fast_model_equals_the_plain_one() {
        let cfg = RAGGED;
        let params = random_params(&cfg, 1);
        let (b, t) = (3, 9);
        let (tokens, mask) = batch(&cfg, b, t, 2);
        let d_seq = [0.7, -1.3, 0.4];
        let mut fast = Gpt::new(cfg, params.clone());
        let head = fast.forward(&tokens, &mask, b, t);
        let fast_logits = fast.logits().to_vec();
        fast.backward(&d_seq);
        let mut grads = vec![0.0; params.len()];
        for row in 0..b {
            let (tok, m) = (&tokens[row * t..(row + 1) * t], &mask[row * t..(row + 1) * t]);
            let seq = forward(&cfg, &params, tok, m);
            close(
                "logits",
                &fast_logits[row * t * cfg.vocab..(row + 1) * t * cfg.vocab],
                &seq.logits,
                1e-12,
            );
            close(
                "token_logps",
                &head.token_logps[row * t..(row + 1) * t],
                &seq.token_logps,
                1e-12,
            );
            close("seq_logps", &head.seq_logps[row..row + 1], &[seq.seq_logp], 1e-12);
            backward(&cfg, &params, &seq, m, d_seq[row], &mut grads);
        }
        for (name, offset, shape) in cfg.layout().tensors(&cfg) {
            let len: usize = shape.iter().product();
            close(name, &fast.grads[offset..offset + len], &grads[offset..offset + len], 1e-10);
        }
    }

    /// The plain model's backward against central differences of its forward.
    #[test]
    fn the_plain_backward_matches_finite_differences() {
        let cfg = GptConfig { vocab: 7, ctx: 6, d_model: 6, n_layer: 2, n_head: 2 };
        let mut params = random_params(&cfg, 3);
        let (tokens, mask) = batch(&cfg, 1, 6, 4);
        let seq = forward(&cfg, &params, &tokens, &mask);
        let mut grads = vec![0.0; params.len()];
        backward(&cfg, &params, &seq, &mask, 1.0, &mut grads);
        check("param", &mut params, &grads, &mut |p| forward(&cfg, p, &tokens, &mask).seq_logp);
    }

    fn randn(rng: &mut Rng, len: usize) -> Vec<f64> {
        (0..len).map(|_| f64::from(rng.normal())).collect()
    }

    /// Each fast kernel alone against its twin here, on ragged shapes (sizes that are not
    /// multiples of the register tile, the lane count or the causal block).
    #[test]
    fn each_fast_kernel_equals_its_twin() {
        use crate::model;
        let mut rng = Rng::new(5);
        for (t_len, c, nh) in [(7, 12, 3), (19, 20, 4), (1, 8, 2)] {
            let (ic, oc) = (c, 3 * c + 1);
            let x = randn(&mut rng, t_len * ic);
            let w = randn(&mut rng, oc * ic);
            let b = randn(&mut rng, oc);
            let dout = randn(&mut rng, t_len * oc);
            // matmul: forward (through Wᵀ), input and parameter gradients
            let mut w_t = vec![0.0; ic * oc];
            model::transpose(&mut w_t, &w, ic, oc);
            let mut out = vec![0.0; t_len * oc];
            model::matmul_forward_t(&mut out, &x, &w_t, Some(&b), ic, oc);
            close("matmul_forward", &out, &matmul_forward(&x, &w, Some(&b), ic, oc), 1e-13);
            let (mut dw, mut db) = (vec![0.0; oc * ic], vec![0.0; oc]);
            let dx = matmul_backward(&dout, &x, &w, &mut dw, Some(&mut db), ic, oc);
            let (mut fast_dx, mut fast_dw, mut fast_db) =
                (vec![0.0; t_len * ic], vec![0.0; oc * ic], vec![0.0; oc]);
            model::matmul_backward(
                &mut fast_dx,
                &mut fast_dw,
                Some(&mut fast_db),
                &dout,
                &x,
                &w,
                ic,
                oc,
            );
            close("matmul dx", &fast_dx, &dx, 1e-13);
            close("matmul dw", &fast_dw, &dw, 1e-13);
            close("matmul db", &fast_db, &db, 1e-13);
            let (mut param_dw, mut param_db) = (vec![0.0; oc * ic], vec![0.0; oc]);
            model::matmul_backward_params(&mut param_dw, Some(&mut param_db), 0, &dout, &x, ic, oc);
            close("matmul_backward_params dw", &param_dw, &dw, 1e-13);
            close("matmul_backward_params db", &param_db, &db, 1e-13);

            // layernorm: forward, then the input and parameter gradients
            let (gain, shift, dy) =
                (randn(&mut rng, c), randn(&mut rng, c), randn(&mut rng, t_len * c));
            let xc = randn(&mut rng, t_len * c);
            let (want, stats) = layernorm_forward(&xc, &gain, &shift, c);
            let (mut out, mut mean, mut rstd) =
                (vec![0.0; t_len * c], vec![0.0; t_len], vec![0.0; t_len]);
            model::layernorm_forward(&mut out, &mut mean, &mut rstd, &xc, &gain, &shift, c);
            close("layernorm_forward", &out, &want, 1e-13);
            let (mut dg, mut ds) = (vec![0.0; c], vec![0.0; c]);
            let dxc = layernorm_backward(&dy, &xc, &gain, &stats, &mut dg, &mut ds, c);
            let (mut fast_dxc, mut fast_dg, mut fast_ds) =
                (vec![0.0; t_len * c], vec![0.0; c], vec![0.0; c]);
            model::layernorm_backward(
                &mut fast_dxc,
                &mut fast_dg,
                &mut fast_ds,
                &dy,
                &xc,
                &gain,
                &mean,
                &rstd,
                c,
            );
            close("layernorm dx", &fast_dxc, &dxc, 1e-12);
            close("layernorm dw", &fast_dg, &dg, 1e-12);
            close("layernorm db", &fast_ds, &ds, 1e-12);

            // attention: forward and backward on two batch rows
            let rows = 2;
            let qkv = randn(&mut rng, rows * t_len * 3 * c);
            let datty = randn(&mut rng, rows * t_len * c);
            let hs = c / nh;
            let mut out = vec![0.0; rows * t_len * c];
            let mut att = vec![0.0; rows * nh * t_len * t_len];
            let mut scratch = vec![0.0; rows * model::attention_scratch_len(t_len, hs)];
            model::attention_forward(&mut out, &mut att, &qkv, &mut scratch, t_len, c, nh);
            let mut dqkv = vec![0.0; qkv.len()];
            model::attention_backward(&mut dqkv, &datty, &qkv, &att, &mut scratch, t_len, c, nh);
            for r in 0..rows {
                let qkv_r = &qkv[r * t_len * 3 * c..(r + 1) * t_len * 3 * c];
                let (want_out, want_att) = attention_forward(qkv_r, c, nh);
                close("attention out", &out[r * t_len * c..(r + 1) * t_len * c], &want_out, 1e-13);
                close(
                    "attention att",
                    &att[r * nh * t_len * t_len..(r + 1) * nh * t_len * t_len],
                    &want_att,
                    1e-13,
                );
                let want_dqkv = attention_backward(
                    &datty[r * t_len * c..(r + 1) * t_len * c],
                    qkv_r,
                    &want_att,
                    c,
                    nh,
                );
                close(
                    "attention dqkv",
                    &dqkv[r * t_len * 3 * c..(r + 1) * t_len * 3 * c],
                    &want_dqkv,
                    1e-12,
                );
            }

            // GELU
            let mut out = vec![0.0; t_len * c];
            model::gelu_forward(&mut out, &xc);
            close("gelu_forward", &out, &gelu_forward(&xc), 1e-14);
            let mut dxg = vec![0.0; t_len * c];
            model::gelu_backward(&mut dxg, &xc, &dy);
            close("gelu_backward", &dxg, &gelu_backward(&dy, &xc), 1e-14);
        }
    }

    /// LoRA's adapter gradients by projection (`lab_core::lora`: the plain model's weight
    /// gradient at the merged weights, projected onto A and B) against central differences
    /// of the adapted model's forward, every adapter parameter, every target module.
    #[test]
    fn lora_gradients_by_projection_match_finite_differences() {
        use lab_core::lora::LoraConfig;
        let cfg = GptConfig { vocab: 7, ctx: 6, d_model: 6, n_layer: 2, n_head: 2 };
        let base = random_params(&cfg, 3);
        let lora = LoraConfig::new(2, 3.0, &["c_attn", "c_proj", "c_fc"]).unwrap();
        // B random too, so that A's gradient is not zero
        let mut rng = Rng::new(6);
        let mut adapters = randn(&mut rng, lora.param_count(&cfg));
        adapters.iter_mut().for_each(|a| *a *= 0.3);
        let (tokens, mask) = batch(&cfg, 1, 6, 4);
        let merged = lora.merged(&cfg, &base, &adapters).unwrap();
        let seq = forward(&cfg, &merged, &tokens, &mask);
        let mut grads = vec![0.0; base.len()];
        backward(&cfg, &merged, &seq, &mask, 1.0, &mut grads);
        let analytic = lora.project_grads(&cfg, &adapters, &grads).unwrap();
        check("adapter", &mut adapters, &analytic, &mut |a| {
            forward(&cfg, &lora.merged(&cfg, &base, a).unwrap(), &tokens, &mask).seq_logp
        });
    }
}
