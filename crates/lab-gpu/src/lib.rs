//! The GPU engine: GPT-2 forward, backward and AdamW as WGSL compute kernels on WebGPU
//! (wgpu), the twin of the `lab-cpu` reference and tested against it for parity.
//!
//! [`GpuEngine`] implements [`lab_core::Engine`], so `lab-train`, the CLI and the web app
//! run on it unchanged. The kernels live in `shaders/` (one op per file, embedded here);
//! [`kernels`] turns them into pipelines, [`plan`] records every dispatch of one batch
//! shape once, and [`setup`] finds an adapter and turns wgpu's failures into errors.
//!
//! A training step ([`Engine::train_step`], what `lab-train` runs for every loss of the
//! zoo) is one queue submission and one GPU→CPU readback: the forward, loss.wgsl's gradient
//! of the loss w.r.t. the sequence log-probs, the backward and AdamW, then one copy of the
//! forward's outputs (the (B, T) token log-probs and the (B) sums, from which the CPU
//! computes the loss and the metrics). A step in parts (the calls one by
//! one, or a mix of more than eight terms) costs two submissions and one readback:
//! `forward` submits and reads back; `backward` records its pass without submitting, and
//! `adamw_step` appends the optimizer pass and submits both. Nothing is allocated per step once a batch
//! shape has been seen.
//!
//! Every readback has a synchronous form (the `Engine` calls, native only: they block on
//! `device.poll`) and an awaitable one (`forward_async`, `train_step_async`, `logits_async`,
//! `hidden_states_async`, `params_async`: the browser's only way), recorded and counted
//! identically. The awaitable `forwards_async` and `train_step_then_forwards_async` submit
//! all their work before they wait for any of it (an evaluation's chunks, a step and the
//! evaluation after it: one round trip).

pub mod kernels;
pub mod plan;
pub mod setup;
pub mod timing;
pub mod uniforms;

use kernels::{Kernel, Pipelines};
use lab_core::config::GptConfig;
use lab_core::engine::{
    not_finite, AdamWConfig, Engine, EngineFuture, ForwardOut, Rows, StepLoss, TokenBatch,
};
use lab_core::error::{LabError, Result};
use lab_core::loss::LossKind;
use plan::{record_pass, Dispatch, Grid, LossBuffers, Plan};
use setup::{check_buffer_size, submit_and_read, submit_and_read_async, Faults};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use uniforms::LossCode;
use wgpu::util::DeviceExt;

/// Bytes of the buffer holding loss.wgsl's `Loss` uniform.
const LOSS_UNIFORM_BYTES: u64 = 128;
/// Bytes of the buffer holding adamw.wgsl's `Hyper` uniform.
const HYPER_UNIFORM_BYTES: u64 = 64;
// each uniform fits its buffer
const _: () = assert!(
    std::mem::size_of::<uniforms::Loss>() as u64 <= LOSS_UNIFORM_BYTES
        && std::mem::size_of::<uniforms::Hyper>() as u64 <= HYPER_UNIFORM_BYTES
);

/// The most terms a loss mix may have for loss.wgsl (its two vec4s of kinds); a longer
/// mix takes the step in parts, its loss on the CPU.
const LOSS_MAX_TERMS: usize = 8;

/// loss.wgsl's code for a loss kind (DoVE's gradient is the sigmoid loss's).
fn loss_code(kind: LossKind) -> LossCode {
    match kind {
        LossKind::Sigmoid | LossKind::Dove => LossCode::Sigmoid,
        LossKind::Hinge => LossCode::Hinge,
        LossKind::Ipo => LossCode::Ipo,
        LossKind::ExoPair => LossCode::ExoPair,
        LossKind::NcaPair => LossCode::NcaPair,
        LossKind::Robust => LossCode::Robust,
        LossKind::BcoPair => LossCode::BcoPair,
        LossKind::SppoHard => LossCode::SppoHard,
        LossKind::Aot => LossCode::Aot,
        LossKind::AotUnpaired => LossCode::AotUnpaired,
        LossKind::ApoZero => LossCode::ApoZero,
        LossKind::ApoDown => LossCode::ApoDown,
        LossKind::Discopop => LossCode::Discopop,
        LossKind::Sft => LossCode::Sft,
        LossKind::SigmoidNorm => LossCode::SigmoidNorm,
        LossKind::Cdpo => LossCode::Cdpo,
        LossKind::Simpo => LossCode::Simpo,
        LossKind::Cpo => LossCode::Cpo,
        LossKind::Orpo => LossCode::Orpo,
        LossKind::Kto => LossCode::Kto,
        LossKind::PlackettLuce => LossCode::PlackettLuce,
    }
}

/// Whether loss.wgsl needs its `gradient_batch` entry point for `kind` (a loss that reads
/// the whole batch: a sort, a token count, a reference point, a ranked list).
fn reads_batch(kind: LossKind) -> bool {
    matches!(
        kind,
        LossKind::Aot
            | LossKind::AotUnpaired
            | LossKind::Sft
            | LossKind::Cpo
            | LossKind::Orpo
            | LossKind::Kto
            | LossKind::PlackettLuce
    )
}

/// adamw.wgsl's uniform for update `step` (from 1) of `n` parameters: the step-dependent
/// scalars in the same f32 arithmetic as lab-cpu's `adamw_update`.
pub fn adamw_hyper(opt: &AdamWConfig, step: u32, n: usize) -> uniforms::Hyper {
    let bias_correction1 = 1.0 - opt.beta1.powi(step as i32);
    let bias_correction2 = 1.0 - opt.beta2.powi(step as i32);
    uniforms::Hyper {
        n: n as u32,
        beta1: opt.beta1,
        beta2: opt.beta2,
        one_minus_beta1: 1.0 - opt.beta1,
        one_minus_beta2: 1.0 - opt.beta2,
        eps: opt.eps,
        step_size: opt.lr / bias_correction1,
        bias_correction2_sqrt: bias_correction2.sqrt(),
        decay: 1.0 - opt.lr * opt.weight_decay,
    }
}

/// loss.wgsl's entry point for `loss`: `gradient` for mixes of the closed-form paired
/// kinds, `gradient_batch` when a term reads the whole batch.
pub fn loss_kernel(loss: &StepLoss) -> Kernel {
    if loss.mix.terms.iter().any(|&(kind, _)| reads_batch(kind)) {
        Kernel::LossGradientBatch
    } else {
        Kernel::LossGradient
    }
}

/// loss.wgsl's inputs for `loss` on a batch of `b` rows whose policy sequence log-probs
/// sit at `seq_off` of the forward's outputs: its uniform, and the part of `given` after
/// the reference's log-probs, [lengths (B) | labels (B) | labels (B)]: a desirable flag
/// (KTO), or a list's first and end row (Plackett–Luce).
pub fn loss_inputs(loss: &StepLoss, b: usize, seq_off: usize) -> (uniforms::Loss, Vec<f32>) {
    let mut kinds = [0u32; LOSS_MAX_TERMS];
    let mut weights = [0f32; LOSS_MAX_TERMS];
    for (t, &(kind, weight)) in loss.mix.terms.iter().enumerate() {
        kinds[t] = loss_code(kind).bits();
        weights[t] = weight as f32;
    }
    let p = loss.params;
    let uniform = uniforms::Loss {
        rows: b as u32,
        terms: loss.mix.terms.len() as u32,
        seq_off: seq_off as u32,
        _pad: 0,
        kinds: bytemuck::cast(kinds),
        weights: bytemuck::cast(weights),
        beta: p.beta as f32,
        eps: p.label_smoothing as f32,
        simpo_gamma: p.simpo_gamma as f32,
        discopop_tau: p.discopop_tau as f32,
        exo_shift: (p.exo_epsilon.ln() - (-p.exo_epsilon).ln_1p()) as f32,
        cpo_alpha: p.cpo_alpha as f32,
        kto_desirable_weight: p.kto_desirable_weight as f32,
        kto_undesirable_weight: p.kto_undesirable_weight as f32,
    };
    let mut rest: Vec<f32> = loss.lengths.iter().map(|&v| v as f32).collect();
    rest.resize(3 * b, 0.0);
    match loss.rows {
        Rows::Pairs => {}
        Rows::Unpaired(desirable) => {
            for (r, &d) in desirable.iter().enumerate() {
                rest[b + r] = f32::from(u8::from(d));
            }
        }
        Rows::Ranked(sizes) => {
            let mut start = 0;
            for &k in sizes {
                for r in start..start + k {
                    (rest[b + r], rest[2 * b + r]) = (start as f32, (start + k) as f32);
                }
                start += k;
            }
        }
    }
    (uniform, rest)
}

/// Whether loss.wgsl evaluates `loss` (else the step runs in parts, the loss on the CPU).
fn on_device(loss: &StepLoss) -> bool {
    loss.mix.terms.len() <= LOSS_MAX_TERMS
}

/// Batch shapes whose plans are kept (training alternates a few: the train batch, the
/// evaluation batch, single-row sampling).
const PLAN_CACHE: usize = 4;

/// GPT-2 on a WebGPU device, with AdamW state, all resident on the GPU.
pub struct GpuEngine {
    device: wgpu::Device,
    queue: wgpu::Queue,
    cfg: GptConfig,
    adapter: String,
    faults: Faults,
    pipelines: Pipelines,
    /// Flat parameters, gradient and AdamW moments, llm.c layout (P floats each).
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    adam_m: wgpu::Buffer,
    adam_v: wgpu::Buffer,
    /// Stands in for a GEMM's unused bias or addend binding.
    dummy: wgpu::Buffer,
    /// AdamW's step-dependent scalars (adamw.wgsl `Hyper`), written each step.
    hyper: wgpu::Buffer,
    /// loss.wgsl's uniform (written each training step) and status word (read by AdamW).
    loss: LossBuffers,
    adamw: Dispatch,
    /// Most recently used last.
    plans: Vec<Plan>,
    /// (B, T) of the forward a `backward` may use.
    last_forward: Option<(usize, usize)>,
    /// Backward pass recorded but not yet submitted (behind a lock so that `grads(&self)`
    /// can submit it); AdamW is appended to it.
    pending: Mutex<Option<wgpu::CommandEncoder>>,
    /// Queue submissions and GPU→CPU readbacks so far (see [`GpuEngine::sync_counts`]).
    submissions: AtomicU64,
    readbacks: AtomicU64,
}

/// Recorded GPU work whose last command copies `len` floats into `staging`, ready to be
/// submitted and read back, blocking or awaited.
struct Readback {
    encoder: wgpu::CommandEncoder,
    staging: wgpu::Buffer,
    len: usize,
}

/// How often the engine has synchronised with the GPU: a training step costs one submission
/// and one readback, a step in parts two submissions (forward; backward + AdamW) and one
/// readback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncCounts {
    pub submissions: u64,
    pub readbacks: u64,
}

impl std::fmt::Debug for GpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuEngine")
            .field("adapter", &self.adapter)
            .field("cfg", &self.cfg)
            .field("plans", &self.plans.len())
            .finish()
    }
}

impl GpuEngine {
    /// An engine on a device the caller opened (tests, or an app sharing its device), with
    /// `params` in the llm.c layout. Compiles every kernel.
    pub fn new(
        device: wgpu::Device,
        queue: wgpu::Queue,
        cfg: GptConfig,
        params: Vec<f32>,
    ) -> Result<GpuEngine> {
        cfg.validate()?;
        let total = cfg.layout().total;
        if params.len() != total {
            return Err(LabError::shape(format!(
                "{} parameters given, but the config {cfg:?} needs {total}",
                params.len()
            )));
        }
        let limits = device.limits();
        setup::check_limits(&limits, "this device")?;
        check_buffer_size(&limits, &format!("the {total} parameters"), (total * 4) as u64)?;
        let faults = Faults::install(&device);
        let pipelines = Pipelines::new(&device)?;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        // sized to a multiple of 16 bytes (matmul.wgsl reads its operands as vec4 arrays);
        // the padding stays zero
        let padded = total.next_multiple_of(4);
        let mut contents = params;
        contents.resize(padded, 0.0);
        let params_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::cast_slice(&contents),
            usage,
        });
        let zeros = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (padded * 4) as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        let (grads, adam_m, adam_v) = (zeros("grads"), zeros("adam_m"), zeros("adam_v"));
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let hyper = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("adamw hyper"),
            size: HYPER_UNIFORM_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let loss = LossBuffers {
            uniform: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("loss uniform"),
                size: LOSS_UNIFORM_BYTES,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            // zero: no training step has failed
            status: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("loss status"),
                size: 16,
                usage,
                mapped_at_creation: false,
            }),
        };
        let layout = pipelines.get(Kernel::AdamW).get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("adamw"),
            layout: &layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: hyper.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: grads.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: params_buf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: adam_m.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 4, resource: adam_v.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 5, resource: loss.status.as_entire_binding() },
            ],
        });
        let grid = Grid { max_per_dim: limits.max_compute_workgroups_per_dimension };
        // one invocation per parameter, @workgroup_size(64)
        let adamw = Dispatch {
            kernel: Kernel::AdamW,
            bind_group,
            groups: grid.cover(total, 64)?,
            flops: 0,
        };
        faults.check()?;
        let info = device.adapter_info();
        Ok(GpuEngine {
            adapter: format!("{} / {:?}", info.name, info.backend),
            device,
            queue,
            cfg,
            faults,
            pipelines,
            params: params_buf,
            grads,
            adam_m,
            adam_v,
            dummy,
            hyper,
            loss,
            adamw,
            plans: Vec::new(),
            last_forward: None,
            pending: Mutex::new(None),
            submissions: AtomicU64::new(0),
            readbacks: AtomicU64::new(0),
        })
    }

    /// Open the platform's best adapter and build an engine on it (async: the browser's way).
    pub async fn new_async(cfg: GptConfig, params: Vec<f32>) -> Result<GpuEngine> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        };
        let adapter = instance
            .request_adapter(&options)
            .await
            .map_err(|err| LabError::Engine { msg: setup::no_adapter_message(&err) })?;
        let (device, queue) = setup::open_device(&adapter).await?;
        GpuEngine::new(device, queue, cfg, params)
    }

    /// [`GpuEngine::new_async`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_default_adapter(cfg: GptConfig, params: Vec<f32>) -> Result<GpuEngine> {
        pollster::block_on(GpuEngine::new_async(cfg, params))
    }

    /// The kernel launches (kernel, workgroups) of one step at `batch`'s shape, forward then
    /// backward, building that shape's plan if needed.
    pub fn launches(&mut self, batch: &TokenBatch) -> Result<Vec<(Kernel, [u32; 3])>> {
        let index = self.plan_index(batch.batch, batch.seq_len)?;
        let plan = &self.plans[index];
        Ok(plan.forward.iter().chain(&plan.backward).map(|d| (d.kernel, d.groups)).collect())
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Submissions and readbacks since the engine was made.
    pub fn sync_counts(&self) -> SyncCounts {
        SyncCounts {
            submissions: self.submissions.load(Ordering::Relaxed),
            readbacks: self.readbacks.load(Ordering::Relaxed),
        }
    }

    fn count(&self, readback: bool) {
        self.submissions.fetch_add(1, Ordering::Relaxed);
        if readback {
            self.readbacks.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// The recorded-but-unsubmitted backward, if any.
    fn take_pending(&self) -> Option<wgpu::CommandEncoder> {
        self.pending.lock().map(|mut p| p.take()).unwrap_or(None)
    }

    fn set_pending(&self, encoder: wgpu::CommandEncoder) {
        if let Ok(mut pending) = self.pending.lock() {
            *pending = Some(encoder);
        }
    }

    /// Submit recorded-but-unsubmitted passes.
    fn flush(&self) {
        if let Some(encoder) = self.take_pending() {
            self.count(false);
            self.queue.submit([encoder.finish()]);
        }
    }

    /// An encoder that continues the pending work, if any.
    fn continue_pending(&self, label: &str) -> wgpu::CommandEncoder {
        self.take_pending().unwrap_or_else(|| self.encoder(label))
    }

    /// A fresh MAP_READ buffer for `len` floats (parity tests and checkpoints, not the
    /// training step, which reuses its plan's).
    fn staging(&self, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Append to `encoder` the copy of `len` floats of `src` into `staging`.
    fn readback(
        &self,
        mut encoder: wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        staging: wgpu::Buffer,
        len: usize,
    ) -> Readback {
        encoder.copy_buffer_to_buffer(src, 0, &staging, 0, Some((len * 4) as u64));
        self.count(true);
        Readback { encoder, staging, len }
    }

    /// Submit and wait (native only).
    fn read(&self, r: Readback) -> Result<Vec<f32>> {
        submit_and_read(&self.device, &self.queue, &self.faults, r.encoder, &r.staging, r.len)
    }

    /// Submit and await.
    async fn read_async(&self, r: Readback) -> Result<Vec<f32>> {
        submit_and_read_async(&self.device, &self.queue, &self.faults, r.encoder, &r.staging, r.len)
            .await
    }

    /// Read a whole P-float buffer (parameters or gradient), after any pending pass, in
    /// the same submission.
    fn flat_readback(&self, src: &wgpu::Buffer) -> Readback {
        let total = self.cfg.layout().total;
        let encoder = self.continue_pending("readback");
        self.readback(encoder, src, self.staging(total), total)
    }

    /// The plan for (B, T), built on first use; evicts the least recently used.
    fn plan_index(&mut self, b: usize, t: usize) -> Result<usize> {
        if let Some(i) = self.plans.iter().position(|p| p.batch == b && p.seq_len == t) {
            let plan = self.plans.remove(i);
            self.plans.push(plan);
        } else {
            if self.plans.len() == PLAN_CACHE {
                self.plans.remove(0);
            }
            let plan = Plan::new(
                &self.device,
                &self.pipelines,
                &self.cfg,
                &self.params,
                &self.grads,
                &self.dummy,
                &self.loss,
                b,
                t,
            )?;
            self.faults.check()?;
            self.plans.push(plan);
        }
        Ok(self.plans.len() - 1)
    }

    /// Upload the batch and record its forward pass into a new encoder (not submitted).
    fn record_forward(&mut self, batch: &TokenBatch) -> Result<(usize, wgpu::CommandEncoder)> {
        let mut encoder = self.encoder("forward");
        let i = self.forward_into(batch, &mut encoder)?;
        Ok((i, encoder))
    }

    /// Upload the batch and record its forward pass into `encoder` (of this engine's device);
    /// returns the plan's index.
    fn forward_into(
        &mut self,
        batch: &TokenBatch,
        encoder: &mut wgpu::CommandEncoder,
    ) -> Result<usize> {
        batch.check(&self.cfg)?;
        if batch.batch == 0 || batch.seq_len == 0 {
            return Err(LabError::shape(format!(
                "empty batch ({}x{})",
                batch.batch, batch.seq_len
            )));
        }
        // the pending backward reads this shape's tokens: submit it before they change
        self.flush();
        self.last_forward = None;
        let i = self.plan_index(batch.batch, batch.seq_len)?;
        let plan = &self.plans[i];
        self.queue.write_buffer(&plan.tokens, 0, bytemuck::cast_slice(&batch.tokens));
        self.queue.write_buffer(&plan.mask, 0, bytemuck::cast_slice(&batch.score_mask));
        record_pass(encoder, &self.pipelines, "forward", &plan.forward);
        self.last_forward = Some((batch.batch, batch.seq_len));
        Ok(i)
    }

    /// Record a forward and the copy of one of its activations into a fresh buffer.
    fn activation_readback(
        &mut self,
        batch: &TokenBatch,
        which: fn(&Plan) -> &wgpu::Buffer,
        len: usize,
    ) -> Result<Readback> {
        let (i, encoder) = self.record_forward(batch)?;
        let src = which(&self.plans[i]).clone();
        Ok(self.readback(encoder, &src, self.staging(len), len))
    }

    /// Record a forward and the copy of its outputs into the plan's staging buffer: the
    /// training step's one readback.
    fn forward_readback(&mut self, batch: &TokenBatch) -> Result<Readback> {
        let (i, encoder) = self.record_forward(batch)?;
        let plan = &self.plans[i];
        let (out, staging, len) = (plan.out.clone(), plan.staging.clone(), plan.out_len());
        Ok(self.readback(encoder, &out, staging, len))
    }

    /// Record a whole training step into one encoder (not submitted): the forward,
    /// loss.wgsl's gradient (the reference log-probs given, as the session caches them), the
    /// backward and AdamW in one pass, and the copy of [out | loss status] into the plan's
    /// step staging buffer. `loss` must be [`on_device`].
    fn record_train_step(
        &mut self,
        batch: &TokenBatch,
        loss: &StepLoss,
        opt: &AdamWConfig,
        step: u32,
    ) -> Result<Readback> {
        loss.check(batch.batch)?;
        self.flush();
        let b = batch.batch;
        let (uniform, rest) = loss_inputs(loss, b, b * batch.seq_len);
        self.write_hyper(opt, step)?;
        let mut encoder = self.encoder("training step");
        let i = self.forward_into(batch, &mut encoder)?;
        let plan = &self.plans[i];
        self.queue.write_buffer(&self.loss.uniform, 0, bytemuck::bytes_of(&uniform));
        let given: Vec<f32> = loss.reference.iter().map(|&v| v as f32).collect();
        self.queue.write_buffer(&plan.given, 0, bytemuck::cast_slice(&given));
        self.queue.write_buffer(&plan.given, (b * 4) as u64, bytemuck::cast_slice(&rest));
        let gradient = match loss_kernel(loss) {
            Kernel::LossGradientBatch => &plan.loss_batch,
            _ => &plan.loss,
        };
        record_pass(
            &mut encoder,
            &self.pipelines,
            "loss, backward, adamw",
            std::iter::once(gradient).chain(&plan.backward).chain([&self.adamw]),
        );
        let len = plan.out_len();
        let staging = plan.step_staging.clone();
        encoder.copy_buffer_to_buffer(&plan.out, 0, &staging, 0, Some((len * 4) as u64));
        encoder.copy_buffer_to_buffer(&self.loss.status, 0, &staging, (len * 4) as u64, Some(4));
        self.count(true);
        Ok(Readback { encoder, staging, len: len + 1 })
    }

    /// Submit the forwards of `batches`, one submission each (a batch's tokens are written
    /// between them), each copying its outputs into a staging buffer of its own, without
    /// waiting: the readbacks to finish with `setup::finish_read(_async)` in order.
    fn queue_forwards(
        &mut self,
        batches: &[TokenBatch],
    ) -> Result<Vec<(setup::InFlight, usize, usize)>> {
        // every batch checked before any is submitted: a readback in flight must be read
        for batch in batches {
            batch.check(&self.cfg)?;
            if batch.batch == 0 || batch.seq_len == 0 {
                return Err(LabError::shape(format!(
                    "empty batch ({}x{})",
                    batch.batch, batch.seq_len
                )));
            }
        }
        let mut used: Vec<((usize, usize), usize)> = Vec::new();
        let mut queued = Vec::with_capacity(batches.len());
        for batch in batches {
            let (i, encoder) = self.record_forward(batch)?;
            let shape = (batch.batch, batch.seq_len);
            let k = match used.iter_mut().find(|(s, _)| *s == shape) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    used.push((shape, 1));
                    0
                }
            };
            let plan = &mut self.plans[i];
            let len = plan.out_len();
            while plan.queued_staging.len() <= k {
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("queued forward staging"),
                    size: (len * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                plan.queued_staging.push(buffer);
            }
            let (out, staging) = (plan.out.clone(), plan.queued_staging[k].clone());
            let r = self.readback(encoder, &out, staging, len);
            queued.push((
                setup::submit_for_read::<f32>(&self.queue, r.encoder, &r.staging, r.len),
                batch.batch,
                batch.seq_len,
            ));
        }
        Ok(queued)
    }

    /// A training step's readback, [out | loss status], as the step's outputs, or its error.
    fn step_out(batch: usize, seq_len: usize, mut out: Vec<f32>, step: u32) -> Result<ForwardOut> {
        if out.pop().map(f32::to_bits) != Some(0) {
            return Err(not_finite(step));
        }
        Ok(Self::forward_out(batch, seq_len, out))
    }

    /// Split the plan's output buffer: [token_logp (B, T) | seq_logp (B) | topk_entropy (B) | topk_mass (B)].
    fn forward_out(batch: usize, seq_len: usize, out: Vec<f32>) -> ForwardOut {
        let (n, b) = (batch * seq_len, batch);
        ForwardOut {
            token_logps: out[..n].to_vec(),
            seq_logps: out[n..n + b].to_vec(),
            topk_entropy: out[n + b..n + 2 * b].to_vec(),
            topk_mass: out[n + 2 * b..].to_vec(),
        }
    }

    fn plan_of_last_forward(&self) -> Result<&Plan> {
        let (b, t) = self
            .last_forward
            .ok_or_else(|| LabError::Engine { msg: "backward called before forward".into() })?;
        self.plans
            .iter()
            .find(|p| p.batch == b && p.seq_len == t)
            .ok_or_else(|| LabError::Engine { msg: "the forward's buffers were evicted".into() })
    }

    /// The GPU work of the dispatch lists, per kernel, from timestamp queries taken the
    /// `method` way (see [`timing`]; [`timing::Method::best`] picks the faithful one where
    /// the device has it); `None` when the adapter has no TIMESTAMP_QUERY.
    pub fn profile_step(
        &mut self,
        batch: &TokenBatch,
        d_seq_logps: &[f32],
        opt: &AdamWConfig,
        step: u32,
        method: timing::Method,
    ) -> Result<Option<timing::Profile>> {
        if !self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(None);
        }
        if method == timing::Method::InsidePass
            && !self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
        {
            return Err(LabError::param(
                "method",
                format!(
                    "{} cannot write timestamps inside a pass (TIMESTAMP_QUERY_INSIDE_PASSES)",
                    self.adapter
                ),
            ));
        }
        self.flush();
        let (i, _) = self.record_forward(batch)?;
        if d_seq_logps.len() != batch.batch {
            return Err(LabError::shape(format!(
                "{} sequence gradients for a batch of {} rows",
                d_seq_logps.len(),
                batch.batch
            )));
        }
        self.write_hyper(opt, step)?;
        let plan = &self.plans[i];
        self.queue.write_buffer(&plan.d_seq, 0, bytemuck::cast_slice(d_seq_logps));
        // a training step's launches; the loss gradient told of no rows, so that d_seq stays
        // as written and the status clear
        let no_rows = uniforms::Loss::default();
        self.queue.write_buffer(&self.loss.uniform, 0, bytemuck::bytes_of(&no_rows));
        let dispatches: Vec<&Dispatch> = plan
            .forward
            .iter()
            .chain(std::iter::once(&plan.loss))
            .chain(&plan.backward)
            .chain(std::iter::once(&self.adamw))
            .collect();
        let profile = timing::profile(
            &self.device,
            &self.queue,
            &self.faults,
            &self.pipelines,
            &dispatches,
            method,
        )?;
        Ok(Some(profile))
    }

    fn write_hyper(&self, opt: &AdamWConfig, step: u32) -> Result<()> {
        if step == 0 {
            return Err(LabError::param("step", "AdamW steps count from 1"));
        }
        let hyper = adamw_hyper(opt, step, self.cfg.layout().total);
        self.queue.write_buffer(&self.hyper, 0, bytemuck::bytes_of(&hyper));
        Ok(())
    }
}

impl Engine for GpuEngine {
    fn config(&self) -> &GptConfig {
        &self.cfg
    }

    fn name(&self) -> String {
        self.adapter.clone()
    }

    fn params(&self) -> Vec<f32> {
        // the trait's signature has no Result: a failed readback is reported as empty
        // parameters, which every caller rejects as a length mismatch
        self.read(self.flat_readback(&self.params)).unwrap_or_default()
    }

    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        self.set_params_keep_optimizer(params)?;
        let mut encoder = self.encoder("reset adamw");
        encoder.clear_buffer(&self.adam_m, 0, None);
        encoder.clear_buffer(&self.adam_v, 0, None);
        self.count(false);
        self.queue.submit([encoder.finish()]);
        self.faults.check()
    }

    fn set_params_keep_optimizer(&mut self, params: &[f32]) -> Result<()> {
        let total = self.cfg.layout().total;
        if params.len() != total {
            return Err(LabError::shape(format!(
                "{} parameters given, but the config {:?} needs {total}",
                params.len(),
                self.cfg
            )));
        }
        // a pending backward reads the old weights: submit it first
        self.flush();
        self.queue.write_buffer(&self.params, 0, bytemuck::cast_slice(params));
        self.last_forward = None;
        self.faults.check()
    }

    fn forward(&mut self, batch: &TokenBatch) -> Result<ForwardOut> {
        let readback = self.forward_readback(batch)?;
        Ok(Self::forward_out(batch.batch, batch.seq_len, self.read(readback)?))
    }

    /// Runs a full forward, which also becomes the one a following `backward` uses.
    fn logits(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        let len = batch.batch * batch.seq_len * self.cfg.vocab;
        let readback = self.activation_readback(batch, |p| &p.logits, len)?;
        self.read(readback)
    }

    /// Runs a full forward, which also becomes the one a following `backward` uses.
    fn hidden_states(&mut self, batch: &TokenBatch) -> Result<Vec<f32>> {
        let len = batch.batch * batch.seq_len * self.cfg.d_model;
        let readback = self.activation_readback(batch, |p| &p.lnf, len)?;
        self.read(readback)
    }

    /// Records the backward pass without submitting it: `adamw_step` (or any call that
    /// needs its result) submits it, so backward + update cost one submission.
    fn backward(&mut self, d_seq_logps: &[f32]) -> Result<()> {
        self.flush();
        let plan = self.plan_of_last_forward()?;
        if d_seq_logps.len() != plan.batch {
            return Err(LabError::shape(format!(
                "{} sequence gradients for a forward of {} rows",
                d_seq_logps.len(),
                plan.batch
            )));
        }
        self.queue.write_buffer(&plan.d_seq, 0, bytemuck::cast_slice(d_seq_logps));
        let mut encoder = self.encoder("backward");
        record_pass(&mut encoder, &self.pipelines, "backward", &plan.backward);
        self.set_pending(encoder);
        Ok(())
    }

    fn grads(&self) -> Vec<f32> {
        self.read(self.flat_readback(&self.grads)).unwrap_or_default()
    }

    fn adamw_step(&mut self, opt: &AdamWConfig, step: u32) -> Result<()> {
        self.write_hyper(opt, step)?;
        // backward and update in one submission
        let mut encoder = self.continue_pending("adamw");
        // a step outside `train_step` has no loss status: clear a failed training step's
        encoder.clear_buffer(&self.loss.status, 0, None);
        record_pass(&mut encoder, &self.pipelines, "adamw", std::slice::from_ref(&self.adamw));
        self.count(false);
        self.queue.submit([encoder.finish()]);
        self.faults.check()
    }

    /// The whole step in one submission, loss.wgsl evaluating the loss's gradient (mixes of
    /// more than eight terms take the step in parts).
    fn train_step(
        &mut self,
        batch: &TokenBatch,
        loss: &StepLoss,
        opt: &AdamWConfig,
        step: u32,
    ) -> Result<ForwardOut> {
        if !on_device(loss) {
            return lab_core::engine::train_step_in_parts(self, batch, loss, opt, step);
        }
        let r = self.record_train_step(batch, loss, opt, step)?;
        let out = self.read(r)?;
        Self::step_out(batch.batch, batch.seq_len, out, step)
    }

    fn train_step_async<'a>(
        &'a mut self,
        batch: &'a TokenBatch,
        loss: &'a StepLoss<'a>,
        opt: &'a AdamWConfig,
        step: u32,
    ) -> EngineFuture<'a, ForwardOut> {
        if !on_device(loss) {
            return lab_core::engine::train_step_in_parts_async(self, batch, loss, opt, step);
        }
        Box::pin(async move {
            let r = self.record_train_step(batch, loss, opt, step)?;
            let out = self.read_async(r).await?;
            Self::step_out(batch.batch, batch.seq_len, out, step)
        })
    }

    /// All submitted before any is read: one round trip.
    fn forwards_async<'a>(
        &'a mut self,
        batches: &'a [TokenBatch],
    ) -> EngineFuture<'a, Vec<ForwardOut>> {
        Box::pin(async move {
            let queued = self.queue_forwards(batches)?;
            let mut outs = Vec::with_capacity(queued.len());
            for (in_flight, b, t) in queued {
                outs.push(Self::forward_out(
                    b,
                    t,
                    setup::finish_read_async(&self.device, &self.faults, in_flight).await?,
                ));
            }
            Ok(outs)
        })
    }

    /// The step and the forwards all submitted before any is read: one round trip.
    fn train_step_then_forwards_async<'a>(
        &'a mut self,
        batch: &'a TokenBatch,
        loss: &'a StepLoss<'a>,
        opt: &'a AdamWConfig,
        step: u32,
        batches: &'a [TokenBatch],
    ) -> EngineFuture<'a, (ForwardOut, Vec<ForwardOut>)> {
        Box::pin(async move {
            if !on_device(loss) {
                let out = self.train_step_async(batch, loss, opt, step).await?;
                return Ok((out, self.forwards_async(batches).await?));
            }
            let r = self.record_train_step(batch, loss, opt, step)?;
            let stepped = setup::submit_for_read::<f32>(&self.queue, r.encoder, &r.staging, r.len);
            // a forward that fails to record leaves the step to be read (its staging buffer
            // must not stay mapped)
            let queued = self.queue_forwards(batches);
            let step_out =
                setup::finish_read_async::<f32>(&self.device, &self.faults, stepped).await;
            let mut outs = Vec::new();
            for (in_flight, b, t) in queued? {
                outs.push(Self::forward_out(
                    b,
                    t,
                    setup::finish_read_async(&self.device, &self.faults, in_flight).await?,
                ));
            }
            let out = Self::step_out(batch.batch, batch.seq_len, step_out?, step)?;
            Ok((out, outs))
        })
    }

    fn forward_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, ForwardOut> {
        Box::pin(async move {
            let readback = self.forward_readback(batch)?;
            Ok(Self::forward_out(batch.batch, batch.seq_len, self.read_async(readback).await?))
        })
    }

    fn logits_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, Vec<f32>> {
        Box::pin(async move {
            let len = batch.batch * batch.seq_len * self.cfg.vocab;
            let readback = self.activation_readback(batch, |p| &p.logits, len)?;
            self.read_async(readback).await
        })
    }

    fn hidden_states_async<'a>(&'a mut self, batch: &'a TokenBatch) -> EngineFuture<'a, Vec<f32>> {
        Box::pin(async move {
            let len = batch.batch * batch.seq_len * self.cfg.d_model;
            let readback = self.activation_readback(batch, |p| &p.lnf, len)?;
            self.read_async(readback).await
        })
    }

    fn params_async(&self) -> EngineFuture<'_, Vec<f32>> {
        Box::pin(async move { self.read_async(self.flat_readback(&self.params)).await })
    }
}
