//! `alignlab bench`: full DPO steps on a synthetic batch, timed.
//!
//! The step is the one PyTorch users know: reference forward (no grad) and policy forward
//! on 16 chosen + 16 rejected rows of 64 tokens (prompt 16 + response 48), the sigmoid DPO
//! loss, backward, AdamW. On the GPU (`--loss-on gpu`, the default) the whole step is one
//! submission on one device, the loss evaluated by loss.wgsl, and each step is submitted
//! before the previous one's readback is waited for; with `--loss-on cpu` both forwards are
//! in flight together, read back, and the loss computed on the CPU before the backward is
//! submitted (one wait per step). Every step's loss is computed from its readback either
//! way. Timings are a benchmark, never a test.

use clap::Args;
use lab_core::config::{init_params, GptConfig};
use lab_core::engine::{AdamWConfig, Closeness, Engine, Rows, StepLoss, TokenBatch};
use lab_core::loss::{LossKind, LossMix, LossParams};
use lab_core::rng::Rng;
use lab_core::{LabError, Result};
use lab_gpu::{GemmTiles, ShaderChecks};
use serde_json::{json, Value};
use std::time::Instant;

const PAIRS: usize = 16;
const PROMPT_TOKENS: usize = 16;
const RESPONSE_TOKENS: usize = 48;

#[derive(Args)]
pub struct BenchArgs {
    /// tiny | medium
    #[arg(long, default_value = "tiny")]
    config: String,
    #[arg(long, default_value = "cpu")]
    engine: String,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 30)]
    steps: u32,
    /// GPU engine's GEMM tile: narrow (64×64) | wide (128×64 wherever it applies) | auto
    /// (128×64 where the output has tiles to spare).
    #[arg(long, default_value = "narrow")]
    gemm: String,
    /// GPU devices for the policy and the reference engine: 1 (shared: one queue) | 2 (one
    /// each; only with --loss-on cpu).
    #[arg(long, default_value_t = 1)]
    devices: u32,
    /// Where the GPU engine's step evaluates the loss: gpu (loss.wgsl; the reference forward,
    /// policy forward, loss, backward and AdamW one submission, each step's readback waited
    /// for once the next step is submitted) | cpu (both forwards read back, the loss on the
    /// CPU, then the backward and AdamW: the lab's step before loss.wgsl).
    #[arg(long, default_value = "gpu")]
    loss_on: String,
    /// Write the GPU profile with every launch's time (kernel, workgroups, µs) to this
    /// file; stdout keeps the per-kernel totals.
    #[arg(long)]
    profile_out: Option<std::path::PathBuf>,
    /// Replace --profile-out if it exists.
    #[arg(long)]
    force: bool,
    /// wgpu's runtime checks in the GPU kernels: on (bounds checks, loop counters; the
    /// browser's way) | off (native only; the kernels check their own ranges).
    #[arg(long, default_value = "on")]
    shader_checks: String,
    /// Also check the GPU engine, as configured by the flags above, against the CPU engine
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

/// 2·PAIRS rows of random tokens, the response part scored.
fn synthetic_batch(cfg: &GptConfig, seed: u64) -> Result<TokenBatch> {
    let mut rng = Rng::new(seed);
    let rows: Vec<(Vec<u32>, usize)> = (0..2 * PAIRS)
        .map(|_| {
            (
                (0..PROMPT_TOKENS + RESPONSE_TOKENS)
                    .map(|_| 1 + rng.below(cfg.vocab - 1) as u32)
                    .collect(),
                PROMPT_TOKENS,
            )
        })
        .collect();
    TokenBatch::from_rows(&rows)
}

/// The two engines of a DPO step. With the loss on the CPU, both GPU forwards are
/// submitted before either is read: one round trip per step instead of two, the same GPU
/// work; the policy's backward is recorded while they run.
enum Engines {
    Cpu(Box<dyn Engine>, Box<dyn Engine>),
    Gpu(Box<lab_gpu::GpuEngine>, Box<lab_gpu::GpuEngine>),
}

impl Engines {
    fn open(
        kind: &str,
        cfg: GptConfig,
        tiles: GemmTiles,
        devices: u32,
        checks: ShaderChecks,
    ) -> Result<Engines> {
        if kind == "gpu" {
            let policy = open_gpu(cfg, tiles, checks)?;
            let mut reference = match devices {
                1 => policy.sibling(init_params(&cfg, 0))?,
                2 => lab_gpu::GpuEngine::from_default_adapter_with_checks(
                    cfg,
                    init_params(&cfg, 0),
                    checks,
                )?,
                other => {
                    return Err(LabError::param("devices", format!("{other} (expected 1 or 2)")))
                }
            };
            reference.set_gemm_tiles(tiles);
            return Ok(Engines::Gpu(Box::new(policy), Box::new(reference)));
        }
        let open = || crate::commands::open_engine(kind, cfg, init_params(&cfg, 0));
        Ok(Engines::Cpu(open()?, open()?))
    }

    fn name(&self) -> String {
        match self {
            Engines::Cpu(policy, _) => policy.name(),
            Engines::Gpu(policy, _) => policy.name(),
        }
    }

    /// (policy, reference) sequence log-probs of the batch; the policy's forward is the one
    /// its backward uses.
    fn forwards(&mut self, batch: &TokenBatch) -> Result<(Vec<f32>, Vec<f32>)> {
        match self {
            Engines::Cpu(policy, reference) => {
                let reference_logps = reference.forward(batch)?.seq_logps;
                Ok((policy.forward(batch)?.seq_logps, reference_logps))
            }
            Engines::Gpu(policy, reference) => {
                let reference_pending = reference.forward_submit(batch)?;
                let policy_pending = policy.forward_submit(batch)?;
                // the backward is recorded while the forwards run, not after the readback
                policy.prepare_backward()?;
                let reference_logps = reference.forward_finish(reference_pending)?.seq_logps;
                Ok((policy.forward_finish(policy_pending)?.seq_logps, reference_logps))
            }
        }
    }

    fn policy(&mut self) -> &mut dyn Engine {
        match self {
            Engines::Cpu(policy, _) => policy.as_mut(),
            Engines::Gpu(policy, _) => policy.as_mut(),
        }
    }
}

fn open_gpu(cfg: GptConfig, tiles: GemmTiles, checks: ShaderChecks) -> Result<lab_gpu::GpuEngine> {
    let mut engine =
        lab_gpu::GpuEngine::from_default_adapter_with_checks(cfg, init_params(&cfg, 0), checks)?;
    engine.set_gemm_tiles(tiles);
    Ok(engine)
}

/// The bench's loss: sigmoid DPO with TRL's defaults on the synthetic batch's pairs.
struct BenchLoss {
    mix: LossMix,
    params: LossParams,
    lengths: Vec<f64>,
}

impl BenchLoss {
    fn new() -> BenchLoss {
        BenchLoss {
            mix: LossMix::single(LossKind::Sigmoid),
            params: LossParams::default(),
            lengths: vec![RESPONSE_TOKENS as f64; 2 * PAIRS],
        }
    }

    /// With these (2·PAIRS) reference log-probs.
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
    (0..batch.batch).map(|b| if b < PAIRS { -0.05 } else { 0.05 }).collect()
}

fn to64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&x| f64::from(x)).collect()
}

/// One step with the loss on the CPU between the forwards and the backward.
fn dpo_step(
    engines: &mut Engines,
    batch: &TokenBatch,
    opt: &AdamWConfig,
    step: u32,
) -> Result<f64> {
    let (policy_logps, reference_logps) = engines.forwards(batch)?;
    let (bench_loss, reference) = (BenchLoss::new(), to64(&reference_logps));
    let (loss, d_seq) = bench_loss.with(&reference).gradient(&policy_logps, step)?;
    let policy = engines.policy();
    policy.backward(&d_seq)?;
    policy.adamw_step(opt, step)?;
    Ok(loss)
}

/// `count` DPO steps from `first` with the loss on the GPU, the reference forward on the
/// policy's device, each step one submission: step k + 1 is submitted before step k's
/// readback is waited for, so the GPU runs step after step while the CPU computes each
/// step's loss from its readback (as PyTorch's eager step queues its kernels without
/// waiting). Returns the last step's loss.
fn pipelined_steps(
    policy: &mut lab_gpu::GpuEngine,
    reference: &mut lab_gpu::GpuEngine,
    batch: &TokenBatch,
    opt: &AdamWConfig,
    first: u32,
    count: u32,
) -> Result<f64> {
    let bench_loss = BenchLoss::new();
    // the reference log-probs come from `reference`'s forward in the same submission
    let unread = vec![0.0; 2 * PAIRS];
    let loss = bench_loss.with(&unread);
    let finish = |policy: &lab_gpu::GpuEngine, pending| -> Result<f64> {
        let (out, reference) = policy.train_step_finish(pending)?;
        Ok(bench_loss.with(&to64(&reference)).paired(&to64(&out.seq_logps))?.loss)
    };
    let mut last = 0.0;
    let mut in_flight = None;
    for step in first..first + count {
        let next = policy.train_step_submit(batch, &loss, opt, step, Some(reference))?;
        if let Some(pending) = in_flight.replace(next) {
            last = finish(policy, pending)?;
        }
    }
    if let Some(pending) = in_flight {
        last = finish(policy, pending)?;
    }
    Ok(last)
}

pub fn bench(args: BenchArgs) -> Result<Value> {
    let cfg = GptConfig::preset(&args.config)?;
    if args.steps == 0 {
        return Err(LabError::param("steps", "must be at least 1"));
    }
    let tiles = GemmTiles::parse(&args.gemm)?;
    // Checked before the timing: a missing folder or an existing file (without --force).
    let mut outputs = lab_core::files::Outputs::new(args.force);
    let profile_staged = args.profile_out.as_deref().map(|p| outputs.file(p)).transpose()?;
    let checks = ShaderChecks::parse(&args.shader_checks)?;
    let loss_on_gpu = match args.loss_on.as_str() {
        "gpu" => args.engine == "gpu",
        "cpu" => false,
        other => {
            return Err(LabError::param(
                "loss-on",
                format!("{other:?} (expected \"gpu\" or \"cpu\")"),
            ))
        }
    };
    if loss_on_gpu && args.devices != 1 {
        return Err(LabError::param("devices", format!("--loss-on gpu runs the reference on the policy's device: --devices must be 1, got {}", args.devices)));
    }
    if args.parity && args.engine != "gpu" {
        return Err(LabError::param(
            "parity",
            format!(
                "checks the GPU engine against the CPU engine: it needs --engine gpu, got {:?}",
                args.engine
            ),
        ));
    }
    let mut engines = Engines::open(&args.engine, cfg, tiles, args.devices, checks)?;
    let batch = synthetic_batch(&cfg, 1)?;
    let opt = AdamWConfig { lr: 1e-4, ..AdamWConfig::default() };
    run_steps(&mut engines, loss_on_gpu, &batch, &opt, 1, 2)?;
    let start = Instant::now();
    let loss = run_steps(&mut engines, loss_on_gpu, &batch, &opt, 3, args.steps)?;
    let seconds = start.elapsed().as_secs_f64();
    let steps_per_s = args.steps as f64 / seconds;
    let mut profile = if args.engine == "gpu" {
        gpu_profile(cfg, tiles, checks, &batch, &opt)?
    } else {
        Value::Null
    };
    let parity = if args.parity {
        parity(cfg, (tiles, args.devices, checks, loss_on_gpu), &batch, &opt)?
    } else {
        Value::Null
    };
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
        "adapter": engines.name(),
        "config": args.config,
        "gemm": if args.engine == "gpu" { json!(args.gemm) } else { Value::Null },
        "devices": if args.engine == "gpu" { json!(args.devices) } else { Value::Null },
        "loss_on": if args.engine == "gpu" { json!(args.loss_on) } else { Value::Null },
        "shader_checks": if args.engine == "gpu" { json!(args.shader_checks) } else { Value::Null },
        "batch_pairs": PAIRS,
        "seq_len": PROMPT_TOKENS + RESPONSE_TOKENS,
        "steps": args.steps,
        "seconds": seconds,
        "steps_per_s": steps_per_s,
        "tokens_per_s": steps_per_s * (2 * PAIRS * (PROMPT_TOKENS + RESPONSE_TOKENS)) as f64,
        "final_loss": loss,
        "gpu_profile": profile,
        "parity": parity,
    }))
}

/// `count` DPO steps from `first` the way the bench times them; the last step's loss.
fn run_steps(
    engines: &mut Engines,
    loss_on_gpu: bool,
    batch: &TokenBatch,
    opt: &AdamWConfig,
    first: u32,
    count: u32,
) -> Result<f64> {
    match (engines, loss_on_gpu) {
        (Engines::Gpu(policy, reference), true) => {
            pipelined_steps(policy, reference, batch, opt, first, count)
        }
        (engines, _) => (first..first + count)
            .map(|step| dpo_step(engines, batch, opt, step))
            .last()
            .unwrap_or(Ok(0.0)),
    }
}

/// `--parity`: fresh GPU engines as benched (`gpu`: tiles, devices, shader checks, loss on
/// the GPU) and CPU engines from the bench's weights, compared on the bench's batch (see
/// [`BenchArgs::parity`]). On the machine the numbers are measured on, this says the
/// kernels timed there compute what the CPU engine computes.
fn parity(
    cfg: GptConfig,
    gpu: (GemmTiles, u32, ShaderChecks, bool),
    batch: &TokenBatch,
    opt: &AdamWConfig,
) -> Result<Value> {
    let (tiles, devices, checks, loss_on_gpu) = gpu;
    let mut on_gpu = Engines::open("gpu", cfg, tiles, devices, checks)?;
    let mut on_cpu = Engines::open("cpu", cfg, tiles, devices, checks)?;
    let mut ok = true;
    let mut judge = |close: Closeness| {
        ok &= close.ok();
        json!({"max_abs_err": close.max_abs_err, "tol": close.tol})
    };
    let (g, c) = (on_gpu.policy().forward(batch)?, on_cpu.policy().forward(batch)?);
    let token_logps = judge(Closeness::of(&g.token_logps, &c.token_logps, PARITY_REL, PARITY_ABS));
    let seq_logps = judge(Closeness::of(&g.seq_logps, &c.seq_logps, PARITY_REL, PARITY_ABS));
    // every parameter tensor's gradient within its own tolerance; the report names the one
    // nearest its bound
    let d_seq = sample_d_seq(batch);
    on_gpu.policy().backward(&d_seq)?;
    on_cpu.policy().backward(&d_seq)?;
    let (g, c) = (on_gpu.policy().grads(), on_cpu.policy().grads());
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
    let mut losses = (Vec::new(), Vec::new());
    for step in 1..=PARITY_STEPS {
        losses.0.push(run_steps(&mut on_gpu, loss_on_gpu, batch, opt, step, 1)? as f32);
        losses.1.push(run_steps(&mut on_cpu, false, batch, opt, step, 1)? as f32);
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
fn gpu_profile(
    cfg: GptConfig,
    tiles: GemmTiles,
    checks: ShaderChecks,
    batch: &TokenBatch,
    opt: &AdamWConfig,
) -> Result<Value> {
    let mut gpu = open_gpu(cfg, tiles, checks)?;
    let d_seq = sample_d_seq(batch);
    // one whole training step first (every kernel the profile runs, the loss gradient
    // included), so no first use of a kernel (a driver compiling lazily) is timed
    let reference = vec![-1.0; 2 * PAIRS];
    gpu.train_step(batch, &BenchLoss::new().with(&reference), opt, 1)?;
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
