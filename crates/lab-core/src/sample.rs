//! Sampling from any engine: temperature and top-k over the last position's logits, one
//! prompt at a time ([`generate`]) or a batch of prompts together ([`sample_batch`]).

use crate::engine::{Engine, TokenBatch};
use crate::error::{LabError, Result};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleConfig {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub max_new_tokens: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig { temperature: 1.0, top_k: 0, max_new_tokens: 32 }
    }
}

/// Pick one token id from a logit row.
pub fn sample_logits(logits: &[f32], cfg: &SampleConfig, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits.iter().enumerate().fold(0, |best, (i, &l)| if l > logits[best] { i } else { best })
            as u32
    };
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let keep = if cfg.top_k == 0 { logits.len() } else { cfg.top_k.min(logits.len()) };
    let max = logits[order[0]];
    let weights: Vec<f64> = order[..keep]
        .iter()
        .map(|&i| (((logits[i] - max) / cfg.temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.uniform_f64() * total;
    for (k, w) in weights.iter().enumerate() {
        if u < *w {
            return order[k] as u32;
        }
        u -= w;
    }
    order[keep - 1] as u32
}

/// Continue `prompt` (token ids, BOS included) until `eot` (the tokenizer's end token) or
/// `max_new_tokens` or the context is full. Returns the new tokens (`eot` not included).
pub fn generate(
    engine: &mut dyn Engine,
    prompt: &[u32],
    eot: u32,
    cfg: &SampleConfig,
    rng: &mut Rng,
) -> Result<Vec<u32>> {
    let ctx = engine.config().ctx;
    let vocab = engine.config().vocab;
    if prompt.is_empty() || prompt.len() >= ctx {
        return Err(LabError::Tokenize {
            msg: format!("prompt of {} tokens must be 1..{} tokens long", prompt.len(), ctx),
        });
    }
    let mut tokens = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < cfg.max_new_tokens && tokens.len() < ctx {
        let batch = TokenBatch {
            batch: 1,
            seq_len: tokens.len(),
            tokens: tokens.clone(),
            score_mask: vec![0.0; tokens.len()],
        };
        let logits = engine.logits(&batch)?;
        let last = &logits[(tokens.len() - 1) * vocab..tokens.len() * vocab];
        let next = sample_logits(last, cfg, rng);
        if next == eot {
            break;
        }
        tokens.push(next);
        out.push(next);
    }
    Ok(out)
}

/// Continue every prompt at once (token ids, BOS included): one forward of the unfinished
/// rows per new token, each row's next token drawn from `rng` in prompt order, until a row
/// samples `eot` (the tokenizer's end token), has `max_new_tokens` new tokens or fills the
/// context. Returns each prompt's new tokens, ending with `eot` when the row sampled it
/// (unlike [`generate`], which drops it: here the end is part of the sample, whose
/// probability counts its stopping).
pub fn sample_batch<E: Engine + ?Sized>(
    engine: &mut E,
    prompts: &[Vec<u32>],
    eot: u32,
    cfg: &SampleConfig,
    rng: &mut Rng,
) -> Result<Vec<Vec<u32>>> {
    let ctx = engine.config().ctx;
    let vocab = engine.config().vocab;
    if let Some(bad) = prompts.iter().find(|p| p.is_empty() || p.len() >= ctx) {
        return Err(LabError::Tokenize {
            msg: format!("prompt of {} tokens must be 1..{} tokens long", bad.len(), ctx),
        });
    }
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let running = |i: usize, out: &[Vec<u32>]| {
        let new = &out[i];
        new.last() != Some(&eot)
            && new.len() < cfg.max_new_tokens
            && prompts[i].len() + new.len() < ctx
    };
    loop {
        let rows: Vec<usize> = (0..prompts.len()).filter(|&i| running(i, &out)).collect();
        if rows.is_empty() {
            return Ok(out);
        }
        let lens: Vec<usize> = rows.iter().map(|&i| prompts[i].len() + out[i].len()).collect();
        let seq_len = lens.iter().copied().max().unwrap_or(0);
        // right-padded; what follows a row's last token cannot change its logits
        let mut tokens = vec![0; rows.len() * seq_len];
        for (b, &i) in rows.iter().enumerate() {
            let row = &mut tokens[b * seq_len..];
            row[..prompts[i].len()].copy_from_slice(&prompts[i]);
            row[prompts[i].len()..lens[b]].copy_from_slice(&out[i]);
        }
        let batch = TokenBatch {
            batch: rows.len(),
            seq_len,
            tokens,
            score_mask: vec![0.0; rows.len() * seq_len],
        };
        let logits = engine.logits(&batch)?;
        for (b, &i) in rows.iter().enumerate() {
            let at = (b * seq_len + lens[b] - 1) * vocab;
            out[i].push(sample_logits(&logits[at..at + vocab], cfg, rng));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top1_pick_the_argmax() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut rng = Rng::new(0);
        assert_eq!(
            sample_logits(
                &logits,
                &SampleConfig { temperature: 0.0, ..Default::default() },
                &mut rng
            ),
            1
        );
        for _ in 0..20 {
            assert_eq!(
                sample_logits(
                    &logits,
                    &SampleConfig { temperature: 1.0, top_k: 1, max_new_tokens: 1 },
                    &mut rng
                ),
                1
            );
        }
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample_logits(
                &logits,
                &SampleConfig { temperature: 1.0, top_k: 2, max_new_tokens: 1 },
                &mut rng,
            ) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2], 0);
        assert!(seen[1] > 900 && seen[3] > 800, "{seen:?}");
    }
}
