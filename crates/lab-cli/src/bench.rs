//! `alignlab bench`: full DPO steps on a synthetic batch, timed.
//!
//! The step is the one the lab runs (`Engine::train_step`, as `lab_train::Session::step`
//! calls it): the reference's sequence log-probs computed once, before the first step, and
//! cached; then per step the policy forward on 16 chosen + 16 rejected rows of 64 tokens
//! (prompt 16 + response 48), the sigmoid DPO loss, backward, AdamW. On the GPU the whole
//! step is one submission and one readback, the loss's gradient evaluated by loss.wgsl.
//! Timings are a benchmark, never a test.

use clap::Args;
use lab_core::config::{init_params, GptConfig};
use lab_core::engine::{AdamWConfig, Closeness, Engine, Rows, StepLoss, TokenBatch};
use lab_core::loss::{LossKind, LossMix, LossParams};
use lab_core::rng::Rng;
use lab_core::{LabError, Result};
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// tiny | medium (the 96-symbol presets), or a GPT-2 shape with random weights:
    /// gpt2 (124M: 12 layers, 768 wide, vocab 50257) | distilgpt2 (6 layers)
    #[arg(long, default_value = "tiny")]
    config: String,
    /// Preference pairs per step (2 × this many rows).
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    /// Tokens per row, the first quarter prompt, the rest the scored response.
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Time a LoRA-DPO step: adapters of this rank on the frozen model (`LoraEngine`).
    #[command(flatten)]
    lora: crate::commands::LoraArgs,
    #[arg(long, default_value = "cpu")]
    engine: String,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 30)]
    steps: u32,
    /// Write the GPU profile with every launch's time (kernel, workgroups, µs) to this
    /// file; stdout keeps the per-kernel totals.
    #[arg(long)]
    profile_out: Option<std::path::PathBuf>,
    /// Replace --profile-out if it exists.
    #[arg(long)]
    force: bool,
    /// Also check the GPU engine against the CPU engine
    /// from the same weights on the bench's batch: the forward's log-probs, every parameter
    /// gradient, and three DPO steps' losses through the timed step, each within the GPU
    /// parity tests' tolerance (1e-4 × the largest CPU value + 1e-6). The JSON's `parity`
    /// gives every error and `ok`.
    #[arg(long)]
    parity: bool,
}

/// The GPU parity tests' tolerance (tests/tests/gpu_parity.rs): |gpu − cpu| ≤ REL·max|cpu| + ABS.
const PARITY_REL: f32 = 1e-4;
const PARITY_ABS: f32 = 1e-6;
/// DPO steps whose losses `--parity` compares.
const PARITY_STEPS: u32 = 3;

/// The model shape benched: a preset, or GPT-2 small / distilgpt2 (random weights).
fn bench_config(name: &str) -> Result<GptConfig> {
    let gpt2 = |n_layer| GptConfig { vocab: 50257, ctx: 1024, d_model: 768, n_layer, n_head: 12 };
    match name {
        "gpt2" => Ok(gpt2(12)),
        "distilgpt2" => Ok(gpt2(6)),
        other => GptConfig::preset(other),
    }
}

/// 2·`pairs` rows (chosen rows first) of `seq_len` random tokens, the last three quarters
/// scored.
fn synthetic_batch(cfg: &GptConfig, pairs: usize, seq_len: usize, seed: u64) -> Result<TokenBatch> {
    let mut rng = Rng::new(seed);
    let prompt = seq_len / 4;
    let rows: Vec<(Vec<u32>, usize)> = (0..2 * pairs)
        .map(|_| ((0..seq_len).map(|_| 1 + rng.below(cfg.vocab - 1) as u32).collect(), prompt))
        .collect();
    TokenBatch::from_rows(&rows)
}

/// The engine benched: `kind` (cpu | gpu), from the bench's weights.
fn open(kind: &str, cfg: GptConfig) -> Result<Box<dyn Engine>> {
    crate::commands::open_engine(kind, cfg, init_params(&cfg, 0))
}

/// The bench's loss: sigmoid DPO with TRL's defaults on the synthetic batch's pairs.
struct BenchLoss {
    mix: LossMix,
    params: LossParams,
    lengths: Vec<f64>,
}

impl BenchLoss {
    fn new(batch: &TokenBatch) -> BenchLoss {
        BenchLoss {
            mix: LossMix::single(LossKind::Sigmoid),
            params: LossParams::default(),
            lengths: batch.scored_lengths().iter().map(|&n| n as f64).collect(),
        }
    }

    /// With these reference log-probs (one per row).
    fn with<'a>(&'a self, reference: &'a [f64]) -> StepLoss<'a> {
        StepLoss {
            mix: &self.mix,
            params: &self.params,
            rows: Rows::Pairs,
            reference,
            lengths: &self.lengths,
        }
    }
}

/// A d(loss)/d(sequence log-prob) like a DPO step's on the bench's batch (chosen rows
/// first): −0.05 for each chosen row, +0.05 for each rejected one.
fn sample_d_seq(batch: &TokenBatch) -> Vec<f32> {
    (0..batch.batch).map(|b| if b < batch.batch / 2 { -0.05 } else { 0.05 }).collect()
}

fn to64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&x| f64::from(x)).collect()
}

pub fn bench(args: BenchArgs) -> Result<Value> {
    let cfg = bench_config(&args.config)?;
    if args.steps == 0 {
        return Err(LabError::param("steps", "must be at least 1"));
    }
    // Checked before the timing: a missing folder or an existing file (without --force).
    let mut outputs = lab_core::files::Outputs::new(args.force);
    let profile_staged = args.profile_out.as_deref().map(|p| outputs.file(p)).transpose()?;
    if args.parity && args.engine != "gpu" {
        return Err(LabError::param(
            "parity",
            format!(
                "checks the GPU engine against the CPU engine: it needs --engine gpu, got {:?}",
                args.engine
            ),
        ));
    }
    if args.pairs == 0 || args.seq_len < 2 || args.seq_len > cfg.ctx {
        return Err(LabError::param(
            "pairs",
            format!(
                "{} pairs of {} tokens: at least one pair, 2..={} tokens",
                args.pairs, args.seq_len, cfg.ctx
            ),
        ));
    }
    let lora = args.lora.config()?;
    let mut engine = open(&args.engine, cfg)?;
    if let Some(lora) = &lora {
        let adapters = lora.init(&cfg, 0);
        engine = Box::new(lab_train::lora::LoraEngine::new(engine, lora.clone(), adapters)?);
    }
    let batch = synthetic_batch(&cfg, args.pairs, args.seq_len, 1)?;
    let opt = AdamWConfig { lr: 1e-4, ..AdamWConfig::default() };
    let reference = reference_logps(engine.as_mut(), &batch)?;
    run_steps(engine.as_mut(), &reference, &batch, &opt, 1, 2)?;
    let start = Instant::now();
    let loss = run_steps(engine.as_mut(), &reference, &batch, &opt, 3, args.steps)?;
    let seconds = start.elapsed().as_secs_f64();
    let steps_per_s = args.steps as f64 / seconds;
    let mut profile =
        if args.engine == "gpu" { gpu_profile(cfg, &batch, &opt)? } else { Value::Null };
    let parity = if args.parity { parity(cfg, &batch, &opt)? } else { Value::Null };
    if let (Some(path), Some(staged)) = (&args.profile_out, &profile_staged) {
        let text = serde_json::to_string_pretty(&profile).expect("the profile serializes") + "\n";
        std::fs::write(staged, text).map_err(|e| LabError::io(path.display().to_string(), e))?;
        outputs.commit()?;
        // the file has them; stdout keeps the per-kernel totals
        if let Some(p) = profile.as_object_mut() {
            p.remove("launches");
        }
    }

    Ok(json!({
        "engine": args.engine,
        "adapter": engine.name(),
        "config": args.config,
        "params": cfg.layout().total,
        "lora": lora.as_ref().map(|l| json!({"r": l.rank, "lora_alpha": l.alpha, "target_modules": l.targets, "trainable": l.param_count(&cfg)})),
        "batch_pairs": args.pairs,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "seconds": seconds,
        "steps_per_s": steps_per_s,
        "tokens_per_s": steps_per_s * (2 * args.pairs * args.seq_len) as f64,
        "final_loss": loss,
        "gpu_profile": profile,
        "parity": parity,
    }))
}

/// The reference's sequence log-probs of the batch: a forward of the engine before its
/// first step (the policy starts as the reference), as the session caches them.
fn reference_logps(engine: &mut dyn Engine, batch: &TokenBatch) -> Result<Vec<f64>> {
    Ok(engine.forward(batch)?.seq_logps.iter().map(|&x| f64::from(x)).collect())
}

/// `count` DPO steps from `first`, each `Engine::train_step` with the cached reference;
/// the last step's loss, from that step's forward.
fn run_steps(
    engine: &mut dyn Engine,
    reference: &[f64],
    batch: &TokenBatch,
    opt: &AdamWConfig,
    first: u32,
    count: u32,
) -> Result<f64> {
    let bench_loss = BenchLoss::new(batch);
    let loss = bench_loss.with(reference);
    let mut last = 0.0;
    for step in first..first + count {
        let out = engine.train_step(batch, &loss, opt, step)?;
        last = loss.paired(&to64(&out.seq_logps))?.loss;
    }
    Ok(last)
}

/// `--parity`: a fresh GPU engine and a CPU engine from the bench's weights, compared on the bench's batch (see
/// [`BenchArgs::parity`]). On the machine the numbers are measured on, this says the
/// kernels timed there compute what the CPU engine computes.
fn parity(cfg: GptConfig, batch: &TokenBatch, opt: &AdamWConfig) -> Result<Value> {
    let mut on_gpu = open("gpu", cfg)?;
    let mut on_cpu = open("cpu", cfg)?;
    let mut ok = true;
    let mut judge = |close: Closeness| {
        ok &= close.ok();
        json!({"max_abs_err": close.max_abs_err, "tol": close.tol})
    };
    let (g, c) = (on_gpu.forward(batch)?, on_cpu.forward(batch)?);
    let token_logps = judge(Closeness::of(&g.token_logps, &c.token_logps, PARITY_REL, PARITY_ABS));
    let seq_logps = judge(Closeness::of(&g.seq_logps, &c.seq_logps, PARITY_REL, PARITY_ABS));
    // every parameter tensor's gradient within its own tolerance; the report names the one
    // nearest its bound
    let d_seq = sample_d_seq(batch);
    on_gpu.backward(&d_seq)?;
    on_cpu.backward(&d_seq)?;
    let (g, c) = (on_gpu.grads(), on_cpu.grads());
    let mut worst: Option<(&str, Closeness)> = None;
    for (name, offset, shape) in cfg.layout().tensors(&cfg) {
        let range = offset..offset + shape.iter().product::<usize>();
        let close = Closeness::of(&g[range.clone()], &c[range], PARITY_REL, PARITY_ABS);
        if worst.is_none_or(|(_, w)| close.max_abs_err / close.tol > w.max_abs_err / w.tol) {
            worst = Some((name, close));
        }
    }
    let gradients = match worst {
        Some((name, close)) => {
            let mut report = judge(close);
            report["tensor"] = json!(name);
            report
        }
        None => Value::Null,
    };
    // the steps from the same weights (a backward alone changes none), the reference the
    // CPU engine's log-probs
    let reference = reference_logps(on_cpu.as_mut(), batch)?;
    let mut losses = (Vec::new(), Vec::new());
    for step in 1..=PARITY_STEPS {
        losses.0.push(run_steps(on_gpu.as_mut(), &reference, batch, opt, step, 1)? as f32);
        losses.1.push(run_steps(on_cpu.as_mut(), &reference, batch, opt, step, 1)? as f32);
    }
    let loss_report = judge(Closeness::of(&losses.0, &losses.1, PARITY_REL, PARITY_ABS));
    Ok(json!({
        "tolerance": format!("{PARITY_REL:e} × max|cpu| + {PARITY_ABS:e}"),
        "token_logps": token_logps,
        "seq_logps": seq_logps,
        "gradients": gradients,
        "losses": {"gpu": losses.0, "cpu": losses.1, "max_abs_err": loss_report["max_abs_err"], "tol": loss_report["tol"]},
        "ok": ok,
    }))
}

/// Where a GPU step's time goes: per-kernel GPU time from timestamp queries (inside one
/// pass where the adapter allows, else a pass per launch: `method`), or null when the
/// adapter has no TIMESTAMP_QUERY.
fn gpu_profile(cfg: GptConfig, batch: &TokenBatch, opt: &AdamWConfig) -> Result<Value> {
    let mut gpu = lab_gpu::GpuEngine::from_default_adapter(cfg, init_params(&cfg, 0))?;
    let d_seq = sample_d_seq(batch);
    // one whole training step first (every kernel the profile runs, the loss gradient
    // included), so no first use of a kernel (a driver compiling lazily) is timed
    let reference = vec![-1.0; batch.batch];
    gpu.train_step(batch, &BenchLoss::new(batch).with(&reference), opt, 1)?;
    let method = lab_gpu::timing::Method::best(gpu.device());
    let Some(profile) = gpu.profile_step(batch, &d_seq, opt, 2, method)? else {
        return Ok(Value::Null);
    };
    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    // the GEMMs' achieved TFLOP/s, per kernel and per launch, against the GPU's fp32 peak
    let kernels: Vec<Value> = profile.kernels.iter().map(|k| json!({"kernel": k.kernel, "launches": k.launches, "total_us": k.total_us, "tflops": round(k.tflops(), 2)})).collect();
    let launches: Vec<Value> = profile
        .launches
        .iter()
        .map(|(kernel, groups, us, flops)| {
            json!([
                kernel,
                groups,
                round(*us, 1),
                if *us > 0.0 { round(*flops as f64 / (us * 1e6), 2) } else { 0.0 }
            ])
        })
        .collect();
    Ok(
        json!({"method": profile.method.name(), "total_us": profile.total_us, "kernels": kernels, "launches": launches}),
    )
}
