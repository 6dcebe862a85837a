//! Steps per second of the reference engine on the benchmark step: the tiny config,
//! 32 rows of 64 tokens (second half scored), forward + backward + AdamW.
//!
//!     cargo run -p lab-cpu --release --example step_time [steps]

use lab_core::config::GptConfig;
use lab_core::engine::{AdamWConfig, Engine, TokenBatch};
use lab_core::rng::Rng;
use lab_cpu::CpuEngine;
use std::time::Instant;

fn main() -> lab_core::Result<()> {
    let steps: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let cfg = GptConfig::TINY;
    let (rows, len) = (32, 64);
    let mut rng = Rng::new(0);
    let tokens: Vec<u32> = (0..rows * len).map(|_| rng.below(cfg.vocab) as u32).collect();
    let score_mask: Vec<f32> =
        (0..rows * len).map(|i| if i % len >= len / 2 { 1.0 } else { 0.0 }).collect();
    let batch = TokenBatch { batch: rows, seq_len: len, tokens, score_mask };
    let mut engine = CpuEngine::random(cfg, 1)?;
    let opt = AdamWConfig { lr: 1e-3, ..Default::default() };
    let d_seq = vec![-1.0 / rows as f32; rows];
    let step = |engine: &mut CpuEngine, s: u32| -> lab_core::Result<f32> {
        let out = engine.forward(&batch)?;
        engine.backward(&d_seq)?;
        engine.adamw_step(&opt, s)?;
        Ok(out.seq_logps.iter().sum::<f32>() / rows as f32)
    };
    for s in 1..=5 {
        step(&mut engine, s)?;
    }
    let start = Instant::now();
    let mut last = 0.0;
    for s in 6..6 + steps {
        last = step(&mut engine, s)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{}: {steps} steps of {rows}x{len} tokens in {secs:.3} s = {:.1} steps/s ({:.2} ms/step), mean seq logp {last:.3}", engine.name(), steps as f64 / secs, 1e3 * secs / steps as f64);
    Ok(())
}
