//! AdamW with torch.optim.AdamW semantics (Loshchilov & Hutter 2019, "Decoupled Weight
//! Decay Regularization", Algorithm 2), the arithmetic of [`AdamWConfig::update`] run on
//! chunks in parallel. Like llm.c, weight decay applies to every parameter (biases,
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
    const CHUNK: usize = 8192;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| opt.update(p, g, m, v, step));
}
