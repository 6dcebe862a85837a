//! Bit digest of a few training steps (tiny config), for A/B checks that a change keeps
//! results bit-identical.
use lab_core::config::GptConfig;
use lab_core::engine::{AdamWConfig, Engine, TokenBatch};
use lab_core::rng::Rng;
use lab_cpu::CpuEngine;

fn main() -> lab_core::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "tiny".into());
    let cfg = GptConfig::preset(&name)?;
    let (rows, len) = (8, 64);
    let mut rng = Rng::new(0);
    let tokens: Vec<u32> = (0..rows * len).map(|_| rng.below(cfg.vocab) as u32).collect();
    let score_mask: Vec<f32> =
        (0..rows * len).map(|i| if i % len >= len / 3 { 1.0 } else { 0.0 }).collect();
    let batch = TokenBatch { batch: rows, seq_len: len, tokens, score_mask };
    let mut engine = CpuEngine::random(cfg, 1)?;
    let opt = AdamWConfig { lr: 1e-3, ..Default::default() };
    let d_seq: Vec<f32> = (0..rows).map(|i| (i as f32 - 3.5) / rows as f32).collect();
    let mut h: u64 = 0xcbf29ce484222325;
    let mut mix = |xs: &[f32]| {
        for x in xs {
            h = (h ^ x.to_bits() as u64).wrapping_mul(0x100000001b3);
        }
    };
    for s in 1..=3 {
        let out = engine.forward(&batch)?;
        mix(&out.token_logps);
        mix(&out.seq_logps);
        mix(&out.topk_entropy);
        mix(&out.topk_mass);
        engine.backward(&d_seq)?;
        mix(&engine.grads());
        engine.adamw_step(&opt, s)?;
    }
    mix(&engine.params());
    println!("{name}: digest {h:016x}");
    Ok(())
}
