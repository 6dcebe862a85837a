//! AdamW with torch.optim.AdamW semantics (Loshchilov & Hutter 2019, "Decoupled Weight
//! Decay Regularization", Algorithm 2): decoupled decay p ← p·(1 − lr·wd), then
//! p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε), the same arithmetic as torch's
//! single-tensor path. Like llm.c, weight decay applies to every parameter (biases,
//! LayerNorm gains and embeddings included); with the default wd = 0 this is moot.

use lab_core::engine::AdamWConfig;
use rayon::prelude::*;

/// One in-place AdamW update; `step` counts from 1. Element-wise, so the parallel split
/// cannot change any result.
pub fn adamw_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    opt: &AdamWConfig,
    step: u32,
) {
    let bias_correction1 = 1.0 - opt.beta1.powi(step as i32);
    let bias_correction2 = 1.0 - opt.beta2.powi(step as i32);
    let step_size = opt.lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.sqrt();
    let decay = 1.0 - opt.lr * opt.weight_decay;
    const CHUNK: usize = 8192;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                m[i] = opt.beta1 * m[i] + (1.0 - opt.beta1) * g[i];
                v[i] = opt.beta2 * v[i] + (1.0 - opt.beta2) * g[i] * g[i];
                let denom = v[i].sqrt() / bias_correction2_sqrt + opt.eps;
                p[i] = p[i] * decay - step_size * (m[i] / denom);
            }
        });
}
