//! Kernels alone against their reference twins (`lab_cpu::reference`), llm.c's `dev/cuda`
//! way: each launch gets its own buffers, ragged shapes (rows and channels that are not
//! multiples of a workgroup) and non-zero offsets, so a mismatch names the kernel rather
//! than the whole model (`tests/tests/gpu_parity.rs` checks the model).
//!
//! On a machine without a GPU adapter the tests fail unless ALIGNLAB_SKIP_GPU=1, as the
//! parity tests do; Mesa's lavapipe is enough.

use lab_core::engine::{AdamWConfig, Rows, StepLoss};
use lab_core::loss::{DataShape, LossKind, LossMix, LossParams};
use lab_core::rng::Rng;
use lab_cpu::reference;
use lab_gpu::kernels::{Kernel, Pipelines};
use lab_gpu::setup::{self, Faults};
use lab_gpu::uniforms::{self, GemmFlags, ShaderStruct};
use wgpu::util::DeviceExt;

/// Agreement asked of f32 kernels against the f64 twin: |gpu − twin| ≤ REL·max|twin| + ABS.
const REL: f64 = 1e-5;
const ABS: f64 = 1e-6;
/// Room for one uniform struct (every one fits: the engine's own slot size).
const UNIFORM_BYTES: usize = 256;

/// A device with every kernel compiled.
struct Rig {
    device: wgpu::Device,
    queue: wgpu::Queue,
    faults: Faults,
    pipelines: Pipelines,
}

impl Rig {
    fn open() -> Option<Rig> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = match pollster::block_on(
            instance.request_adapter(&wgpu::RequestAdapterOptions::default()),
        ) {
            Ok(adapter) => adapter,
            Err(err) if std::env::var("ALIGNLAB_SKIP_GPU").is_ok_and(|v| v == "1") => {
                eprintln!("SKIPPED (ALIGNLAB_SKIP_GPU=1): {}", setup::no_adapter_message(&err));
                return None;
            }
            Err(err) => panic!("{}", setup::no_adapter_message(&err)),
        };
        let (device, queue) = pollster::block_on(setup::open_device(&adapter)).unwrap();
        let faults = Faults::install(&device);
        let pipelines = Pipelines::new(&device).unwrap();
        Some(Rig { device, queue, faults, pipelines })
    }

    /// A storage buffer holding `data`.
    fn buffer(&self, data: &[f32]) -> wgpu::Buffer {
        let contents = if data.is_empty() { &[0.0f32][..] } else { data };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(contents),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// An input buffer holding `data`, zero-padded to a whole vec4 (matmul.wgsl may bind
    /// its operands as arrays of vec4).
    fn operand(&self, data: &[f32]) -> wgpu::Buffer {
        let mut data = data.to_vec();
        data.resize(data.len().next_multiple_of(4), 0.0);
        self.buffer(&data)
    }

    /// A one-vec4 buffer for a binding the launch does not use (each binding its own: a
    /// buffer may not be bound read-only and read-write in one dispatch).
    fn unused(&self) -> wgpu::Buffer {
        self.buffer(&[0.0; 4])
    }

    /// One launch of `kernel` with `uniform` at binding 0 and `buffers` at theirs.
    fn launch<U: ShaderStruct>(
        &self,
        kernel: Kernel,
        uniform: U,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: [u32; 3],
    ) {
        assert_eq!(U::LAYOUT.shader, kernel.entry().0);
        let mut bytes = bytemuck::bytes_of(&uniform).to_vec();
        bytes.resize(UNIFORM_BYTES, 0);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries =
            vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(buffers.iter().map(|(slot, buffer)| wgpu::BindGroupEntry {
            binding: *slot,
            resource: buffer.as_entire_binding(),
        }));
        let pipeline = self.pipelines.get(kernel);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry().1),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        self.queue.submit([encoder.finish()]);
    }

    /// One matmul.wgsl launch with its seven bindings in order — a, b, bias, addend, c,
    /// tokens, aux — `None` where the launch does not use one.
    fn gemm(
        &self,
        kernel: Kernel,
        uniform: uniforms::Gemm,
        bound: [Option<&wgpu::Buffer>; 7],
        groups: [u32; 3],
    ) {
        let spare: Vec<wgpu::Buffer> = (0..7).map(|_| self.unused()).collect();
        let buffers: Vec<(u32, &wgpu::Buffer)> = bound
            .iter()
            .zip(&spare)
            .enumerate()
            .map(|(i, (given, spare))| (i as u32 + 1, given.unwrap_or(spare)))
            .collect();
        self.launch(kernel, uniform, &buffers, groups);
    }

    /// The contents of `buffer`.
    fn read(&self, buffer: &wgpu::Buffer) -> Vec<f64> {
        let size = buffer.size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        let len = size as usize / 4;
        let values: Vec<f32> =
            setup::submit_and_read(&self.device, &self.queue, &self.faults, encoder, &staging, len)
                .unwrap();
        values.into_iter().map(f64::from).collect()
    }
}

/// Deterministic values in [−scale, scale), seeded.
fn values(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.uniform_f64() * 2.0 - 1.0) * scale).collect()
}

fn f32s(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

/// `values` after `offset` leading values (which a kernel must neither read nor write).
fn padded(offset: usize, values: &[f64]) -> Vec<f32> {
    let mut out = vec![f32::NAN; offset];
    out.extend(f32s(values));
    out
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = REL * scale + ABS;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: gpu {g} vs twin {w} (tol {tol:e})");
    }
}

/// Rows × channels: one row, fewer channels than a workgroup, a channel count that is not a
/// multiple of 64, the starter's 80, and more rows than fit in one dispatch row of 64.
const LN_SHAPES: [(usize, usize); 5] = [(1, 3), (7, 5), (5, 130), (13, 80), (70, 64)];

#[test]
fn layernorm_forward_matches_its_twin_on_ragged_shapes() {
    let Some(rig) = Rig::open() else { return };
    for (n, c) in LN_SHAPES {
        let x = values(n * c, 1, 3.0);
        let (w, b) = (values(c, 2, 1.5), values(c, 3, 0.5));
        let (want, stats) = reference::layernorm_forward(&x, &w, &b, c);
        // offsets everywhere, so a kernel that ignores one reads NaN padding or the
        // weight where it wants the bias
        let (inp_off, out_off, stat_off, w_off) = (3, 5, 2, 7);
        let b_off = w_off + c + 1;
        let mut params = padded(w_off, &w);
        params.push(f32::NAN);
        params.extend(f32s(&b));
        let inp = rig.buffer(&padded(inp_off, &x));
        let out = rig.buffer(&vec![0.0; out_off + n * c]);
        let (mean, rstd) =
            (rig.buffer(&vec![0.0; stat_off + n]), rig.buffer(&vec![0.0; stat_off + n]));
        let params = rig.buffer(&params);
        let uniform = uniforms::LayerNorm {
            n_rows: n as u32,
            c: c as u32,
            inp_off: inp_off as u32,
            out_off: out_off as u32,
            stat_off: stat_off as u32,
            w_off: w_off as u32,
            b_off: b_off as u32,
            ..Default::default()
        };
        rig.launch(
            Kernel::LayerNormForward,
            uniform,
            &[
                (1, &inp),
                (2, &params),
                (3, &out),
                (4, &mean),
                (5, &rstd),
                (11, &rig.unused()),
                (12, &rig.unused()),
            ],
            [n as u32, 1, 1],
        );
        let shape = format!("layernorm forward, {n}×{c}");
        assert_close(&shape, &rig.read(&out)[out_off..], &want);
        assert_close(&format!("{shape}: mean"), &rig.read(&mean)[stat_off..], &stats.mean);
        assert_close(&format!("{shape}: rstd"), &rig.read(&rstd)[stat_off..], &stats.rstd);
        assert!(
            rig.read(&out)[..out_off].iter().all(|&v| v == 0.0),
            "{shape}: wrote before out_off"
        );
    }
}

#[test]
fn layernorm_backward_dinp_matches_its_twin_overwriting_and_accumulating() {
    let Some(rig) = Rig::open() else { return };
    for (n, c) in LN_SHAPES {
        let x = values(n * c, 4, 2.0);
        let (w, b) = (values(c, 5, 1.5), values(c, 6, 0.5));
        let dout = values(n * c, 7, 1.0);
        let (_, stats) = reference::layernorm_forward(&x, &w, &b, c);
        let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
        let dx = reference::layernorm_backward(&dout, &x, &w, &stats, &mut dw, &mut db, c);
        let (inp_off, dout_off, dinp_off, stat_off, w_off) = (2, 3, 4, 1, 5);
        let params = rig.buffer(&padded(w_off, &w));
        let inp = rig.buffer(&padded(inp_off, &x));
        let dout_buf = rig.buffer(&padded(dout_off, &dout));
        let (mean, rstd) = (
            rig.buffer(&padded(stat_off, &stats.mean)),
            rig.buffer(&padded(stat_off, &stats.rstd)),
        );
        for accumulate in [0u32, 1] {
            // accumulate adds into what is there (the residual stream's gradient)
            let before = values(n * c, 8, 0.25);
            let dinp = rig.buffer(&padded(dinp_off, &before));
            let uniform = uniforms::LayerNorm {
                n_rows: n as u32,
                c: c as u32,
                inp_off: inp_off as u32,
                stat_off: stat_off as u32,
                w_off: w_off as u32,
                dout_off: dout_off as u32,
                dinp_off: dinp_off as u32,
                accumulate,
                ..Default::default()
            };
            rig.launch(
                Kernel::LayerNormBackwardDinp,
                uniform,
                &[
                    (1, &inp),
                    (2, &params),
                    (6, &dout_buf),
                    (7, &mean),
                    (8, &rstd),
                    (9, &dinp),
                    (11, &rig.unused()),
                ],
                [n as u32, 1, 1],
            );
            let want: Vec<f64> = if accumulate == 1 {
                dx.iter().zip(&before).map(|(d, b)| d + b).collect()
            } else {
                dx.clone()
            };
            let what = format!("layernorm backward_dinp, {n}×{c}, accumulate {accumulate}");
            assert_close(&what, &rig.read(&dinp)[dinp_off..], &want);
        }
    }
}

/// Rows × depth × columns: under one tile, ragged on every side, and over two tiles of 64
/// (or one of the wide kernel's 128 rows) with a partial last one.
const GEMM_SHAPES: [(usize, usize, usize); 4] =
    [(1, 3, 5), (7, 13, 65), (70, 80, 96), (130, 33, 129)];

/// One GEMM launch's grid (64×64 tiles, depth unsplit) as the engine sizes it.
fn gemm_groups(rows: usize, cols: usize) -> [u32; 3] {
    [cols.div_ceil(64) as u32, rows.div_ceil(64) as u32, 1]
}

/// A linear layer's forward as matmul.wgsl reads it: A = x (N, IC), B = Wᵀ read from
/// W (OC, IC), C = y (N, OC), depth unsplit, no epilogue; callers add offsets and flags.
fn projection(n: usize, ic: usize, oc: usize) -> uniforms::Gemm {
    uniforms::Gemm {
        rows: n as u32,
        cols: oc as u32,
        depth: ic as u32,
        a_rs: ic as u32,
        a_ks: 1,
        b_ks: 1,
        b_ss: ic as u32,
        c_rs: oc as u32,
        k_chunk: ic as u32,
        z_inner: 1,
        scale: 1.0,
        ..Default::default()
    }
}

#[test]
fn gemm_forward_with_bias_and_residual_matches_its_twin() {
    let Some(rig) = Rig::open() else { return };
    let kernel = Kernel::Gemm;
    for (n, ic, oc) in GEMM_SHAPES {
        // y = x·Wᵀ + b + residual, the projection layers' forward
        let (x, w, b) = (values(n * ic, 11, 1.0), values(oc * ic, 12, 0.5), values(oc, 13, 0.5));
        let residual = values(n * oc, 14, 1.0);
        let want: Vec<f64> = reference::matmul_forward(&x, &w, Some(&b), ic, oc)
            .iter()
            .zip(&residual)
            .map(|(y, r)| y + r)
            .collect();
        let (a_off, b_off, bias_off, addend_off, c_off) = (2, 3, 1, 4, 5);
        let (a, bw) = (rig.buffer(&padded(a_off, &x)), rig.buffer(&padded(b_off, &w)));
        let (bias, addend) =
            (rig.buffer(&padded(bias_off, &b)), rig.buffer(&padded(addend_off, &residual)));
        let c = rig.buffer(&vec![0.0; c_off + n * oc]);
        let uniform = uniforms::Gemm {
            flags: (GemmFlags::BIAS | GemmFlags::ADDEND).bits(),
            a_off: a_off as u32,
            b_off: b_off as u32,
            c_off: c_off as u32,
            bias_off: bias_off as u32,
            addend_off: addend_off as u32,
            ..projection(n, ic, oc)
        };
        rig.gemm(
            kernel,
            uniform,
            [Some(&a), Some(&bw), Some(&bias), Some(&addend), Some(&c), None, None],
            gemm_groups(n, oc),
        );
        assert_close(
            &format!("{} forward, {n}×{ic}→{oc}", kernel.name()),
            &rig.read(&c)[c_off..],
            &want,
        );
    }
}

#[test]
fn gemm_input_gradient_matches_its_twin() {
    let Some(rig) = Rig::open() else { return };
    let kernel = Kernel::Gemm;
    for (n, ic, oc) in GEMM_SHAPES {
        // dx = dy·W, depth = the layer's output channels
        let (x, w, dy) =
            (values(n * ic, 15, 1.0), values(oc * ic, 16, 0.5), values(n * oc, 17, 1.0));
        let mut dw = vec![0.0; oc * ic];
        let want = reference::matmul_backward(&dy, &x, &w, &mut dw, None, ic, oc);
        let (a_off, b_off, c_off) = (1, 2, 3);
        let (a, bw) = (rig.buffer(&padded(a_off, &dy)), rig.buffer(&padded(b_off, &w)));
        let c = rig.buffer(&vec![0.0; c_off + n * ic]);
        let uniform = uniforms::Gemm {
            rows: n as u32,
            cols: ic as u32,
            depth: oc as u32,
            a_off: a_off as u32,
            a_rs: oc as u32,
            a_ks: 1,
            // B[k, s] = W[k, s]
            b_off: b_off as u32,
            b_ks: ic as u32,
            b_ss: 1,
            c_off: c_off as u32,
            c_rs: ic as u32,
            k_chunk: oc as u32,
            z_inner: 1,
            scale: 1.0,
            ..Default::default()
        };
        rig.gemm(
            kernel,
            uniform,
            [Some(&a), Some(&bw), None, None, Some(&c), None, None],
            gemm_groups(n, ic),
        );
        assert_close(
            &format!("{} dx, {n}×{oc}→{ic}", kernel.name()),
            &rig.read(&c)[c_off..],
            &want,
        );
    }
}

/// A 2-D grid of `x` workgroups per row covering `invocations` at 64 each: the kernels that
/// rebuild their index as gid.x + gid.y·(nwg.x·64) must read the same either way.
fn rows_of(x: u32, invocations: usize) -> [u32; 3] {
    [x, (invocations.div_ceil(64) as u32).div_ceil(x), 1]
}

#[test]
fn encoder_forward_and_position_gradient_match_their_twin() {
    let Some(rig) = Rig::open() else { return };
    // (B, T, C, V, ctx): T below ctx, C not a multiple of 64, more rows than one grid row
    for (b, t, c, v, ctx) in [(1, 1, 3, 5, 2), (3, 7, 10, 11, 9), (4, 33, 80, 50, 40)] {
        let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % v) as u32).collect();
        let (wte, wpe) = (values(v * c, 21, 1.0), values(ctx * c, 22, 1.0));
        let (wte_off, dwpe_off) = (3, 2);
        let wpe_off = wte_off + v * c + 1;
        let mut params = padded(wte_off, &wte);
        params.push(f32::NAN);
        params.extend(f32s(&wpe));
        // the embedding sum of reference::forward
        let want: Vec<f64> = (0..b * t * c)
            .map(|i| wte[tokens[i / c] as usize * c + i % c] + wpe[(i / c % t) * c + i % c])
            .collect();
        let tokens_buf = rig.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&tokens),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let (params, out) = (rig.buffer(&params), rig.buffer(&vec![0.0; b * t * c]));
        let uniform = uniforms::Encoder {
            n_rows: (b * t) as u32,
            t_len: t as u32,
            c: c as u32,
            ctx: ctx as u32,
            wte_off: wte_off as u32,
            wpe_off: wpe_off as u32,
            dwpe_off: dwpe_off as u32,
        };
        rig.launch(
            Kernel::EncoderForward,
            uniform,
            &[(1, &tokens_buf), (2, &params), (3, &out)],
            rows_of(2, b * t * c),
        );
        let shape = format!("encoder, B {b} T {t} C {c}");
        assert_close(&format!("{shape}: forward"), &rig.read(&out), &want);

        // dwpe[t, :] = Σ_b dout[b, t, :] for t < T and 0 up to ctx, as reference::backward
        // scatters it
        let dout = values(b * t * c, 23, 1.0);
        let mut want = vec![0.0; ctx * c];
        for (i, d) in dout.iter().enumerate() {
            want[(i / c % t) * c + i % c] += d;
        }
        let (dout, grads) = (rig.buffer(&f32s(&dout)), rig.buffer(&vec![7.0; dwpe_off + ctx * c]));
        rig.launch(
            Kernel::EncoderBackwardWpe,
            uniform,
            &[(4, &dout), (5, &grads)],
            rows_of(2, ctx * c),
        );
        let grads = rig.read(&grads);
        assert_close(&format!("{shape}: dwpe"), &grads[dwpe_off..], &want);
        assert!(grads[..dwpe_off].iter().all(|&g| g == 7.0), "{shape}: wrote before dwpe_off");
    }
}

#[test]
fn adamw_matches_its_twin_and_skips_a_flagged_step() {
    let Some(rig) = Rig::open() else { return };
    let opt = AdamWConfig { lr: 1e-3, weight_decay: 0.1, ..AdamWConfig::default() };
    for n in [1, 63, 65, 70_001] {
        let mut params = f32s(&values(n, 31, 1.0));
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let (p_buf, m_buf, v_buf) = (rig.buffer(&params), rig.buffer(&m), rig.buffer(&v));
        let status = |flag: u32| {
            rig.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::bytes_of(&flag),
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        for step in 1..=3u32 {
            let grads = f32s(&values(n, 31 + u64::from(step), 0.1));
            lab_cpu::adamw::adamw_update(&mut params, &grads, &mut m, &mut v, &opt, step);
            // the engine's own uniform for this step
            let uniform = lab_gpu::adamw_hyper(&opt, step, n);
            let grads = rig.buffer(&grads);
            let buffers = [(1, &grads), (2, &p_buf), (3, &m_buf), (4, &v_buf)];
            let ok = status(0);
            let mut bound = buffers.to_vec();
            bound.push((5, &ok));
            rig.launch(Kernel::AdamW, uniform, &bound, rows_of(3, n));
            // a step whose loss was not finite (status ≠ 0) changes nothing
            let flagged = status(1);
            bound.pop();
            bound.push((5, &flagged));
            rig.launch(Kernel::AdamW, uniform, &bound, rows_of(3, n));
            let what = format!("adamw, {n} parameters, step {step}");
            let as_f64 = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
            assert_close(&format!("{what}: params"), &rig.read(&p_buf), &as_f64(&params));
            assert_close(&format!("{what}: m"), &rig.read(&m_buf), &as_f64(&m));
            assert_close(&format!("{what}: v"), &rig.read(&v_buf), &as_f64(&v));
        }
    }
}

#[test]
fn logprob_forward_and_backward_match_their_twin() {
    let Some(rig) = Rig::open() else { return };
    // (B, T, V): fewer logits than a workgroup, the starter's 768, a ragged 1000
    for (b, t, v) in [(1, 3, 5), (2, 9, 768), (3, 6, 1000)] {
        let logits = values(b * t * v, 41, 4.0);
        let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 13 + 5) % v) as u32).collect();
        // the prompt's first positions unscored, one scored position weighted 0.5
        let mask: Vec<f64> = (0..b * t)
            .map(|i| match i % t {
                0 | 1 => 0.0,
                2 => 0.5,
                _ => 1.0,
            })
            .collect();
        let mut lse = vec![0.0; b * t];
        let head = lab_cpu::model::logprob_forward(&mut lse, &logits, &tokens, &mask, t, v);
        let tokens_buf = rig.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&tokens),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let (logits_buf, mask_buf) = (rig.buffer(&f32s(&logits)), rig.buffer(&f32s(&mask)));
        let lse_buf = rig.buffer(&vec![0.0; b * t]);
        let out = rig.buffer(&vec![0.0; b * t + b]);
        let topk = rig.buffer(&vec![0.0; 2 * b * t]);
        let uniform = uniforms::Logprob { b: b as u32, t_len: t as u32, v: v as u32, _pad: 0 };
        rig.launch(
            Kernel::LogprobForward,
            uniform,
            &[
                (1, &logits_buf),
                (2, &tokens_buf),
                (3, &mask_buf),
                (4, &lse_buf),
                (5, &out),
                (6, &topk),
            ],
            [(b * t) as u32, 1, 1],
        );
        let shape = format!("logprob, B {b} T {t} V {v}");
        let scored: Vec<usize> = (0..b * t).filter(|&i| mask[i] > 0.0).collect();
        let (got_lse, got_out, got_topk) = (rig.read(&lse_buf), rig.read(&out), rig.read(&topk));
        // lse at each scored position's predictor t − 1; log-probs and top-10 at t
        let pick = |xs: &[f64], at: &dyn Fn(usize) -> usize| -> Vec<f64> {
            scored.iter().map(|&i| xs[at(i)]).collect()
        };
        assert_close(
            &format!("{shape}: lse"),
            &pick(&got_lse, &|i| i - 1),
            &pick(&lse, &|i| i - 1),
        );
        assert_close(&format!("{shape}: token log-probs"), &got_out[..b * t], &head.token_logps);
        let (mut entropy, mut mass) = (Vec::new(), Vec::new());
        for &i in &scored {
            let row = &logits[(i - 1) * v..i * v];
            let (e, m) = lab_cpu::model::topk_entropy_mass(row, lse[i - 1]);
            entropy.push(e);
            mass.push(m);
        }
        assert_close(&format!("{shape}: top-10 entropy"), &pick(&got_topk, &|i| 2 * i), &entropy);
        assert_close(&format!("{shape}: top-10 mass"), &pick(&got_topk, &|i| 2 * i + 1), &mass);

        let d_seq = values(b, 42, 1.0);
        let mut want = vec![0.0; b * t * v];
        lab_cpu::model::logprob_backward(&mut want, &logits, &lse, &tokens, &mask, &d_seq, t, v);
        let (d_seq, dlogits) = (rig.buffer(&f32s(&d_seq)), rig.buffer(&vec![9.0; b * t * v]));
        rig.launch(
            Kernel::LogprobBackward,
            uniform,
            &[
                (1, &logits_buf),
                (2, &tokens_buf),
                (3, &mask_buf),
                (7, &lse_buf),
                (8, &d_seq),
                (9, &dlogits),
            ],
            rows_of(5, b * t * v),
        );
        assert_close(&format!("{shape}: dlogits"), &rig.read(&dlogits), &want);
    }
}

#[test]
fn seq_sums_match_the_cpu_row_sums() {
    let Some(rig) = Rig::open() else { return };
    for (b, t) in [(1, 1), (3, 7), (70, 5)] {
        let token_logps = values(b * t, 51, 3.0);
        let topk = values(2 * b * t, 52, 1.0);
        // the first row is unscored (its means are 0); position 0 of a row has no predictor,
        // so its mask is ignored (set here to catch a kernel that reads it)
        let mask: Vec<f64> = (0..b * t)
            .map(|i| if i % t == 0 || (i >= t && i % 3 != 0) { 1.0 } else { 0.0 })
            .collect();
        let mut want = token_logps.clone();
        for row in 0..b {
            let scored: Vec<usize> =
                (row * t + 1..(row + 1) * t).filter(|&i| mask[i] > 0.0).collect();
            let mean = |k: usize| {
                let n = scored.len().max(1) as f64;
                scored.iter().map(|&i| topk[2 * i + k]).sum::<f64>() / n
            };
            want.push(scored.iter().map(|&i| mask[i] * token_logps[i]).sum());
            want.push(mean(0));
            want.push(mean(1));
        }
        // out = [token log-probs | seq | entropy | mass], the last three blocks per row
        let mut want_laid = want[..b * t].to_vec();
        for k in 0..3 {
            want_laid.extend((0..b).map(|row| want[b * t + 3 * row + k]));
        }
        let mut out = f32s(&token_logps);
        out.extend(vec![0.0; 3 * b]);
        let out = rig.buffer(&out);
        let (mask, topk) = (rig.buffer(&f32s(&mask)), rig.buffer(&f32s(&topk)));
        let uniform = uniforms::SeqSums { b: b as u32, t_len: t as u32, _pad0: 0, _pad1: 0 };
        // one invocation per row, gid.x only
        let groups = [b.div_ceil(64) as u32, 1, 1];
        rig.launch(Kernel::SeqSums, uniform, &[(1, &mask), (2, &topk), (3, &out)], groups);
        assert_close(&format!("seq_sums, B {b} T {t}"), &rig.read(&out), &want_laid);
    }
}

#[test]
fn split_sum_adds_the_slabs_in_order_with_bias_and_residual() {
    let Some(rig) = Rig::open() else { return };
    for (rows, width, splits, flags) in
        [(1, 3, 1, GemmFlags::NONE), (5, 70, 3, GemmFlags::BIAS), (33, 80, 4, GemmFlags::SPLIT_SUM)]
    {
        let len = rows * width;
        let (stride, dst_rs) = (len + 5, width + 2);
        let (dst_off, bias_off, addend_off) = (3, 2, 1);
        let partial = values(splits * stride, 61, 1.0);
        let (bias, addend) = (values(width, 62, 1.0), values(addend_off + rows * dst_rs, 63, 1.0));
        let mut dst = vec![5.0; dst_off + rows * dst_rs];
        let mut want = dst.clone();
        for m in 0..len {
            let (row, col) = (m / width, m % width);
            let mut sum = (0..splits).map(|z| partial[z * stride + m]).fold(0.0, |a, v| a + v);
            if flags.contains(GemmFlags::BIAS) {
                sum += bias[col];
            }
            if flags.contains(GemmFlags::ADDEND) {
                sum += addend[addend_off + row * dst_rs + col];
            }
            want[dst_off + row * dst_rs + col] = sum;
        }
        let buffers = (
            rig.buffer(&f32s(&partial)),
            rig.buffer(&f32s(&std::mem::take(&mut dst))),
            rig.buffer(&padded(bias_off, &bias)),
            rig.buffer(&f32s(&addend)),
        );
        let uniform = uniforms::SplitSum {
            len: len as u32,
            splits: splits as u32,
            stride: stride as u32,
            width: width as u32,
            dst_off: dst_off as u32,
            dst_rs: dst_rs as u32,
            flags: flags.bits(),
            bias_off: bias_off as u32,
            addend_off: addend_off as u32,
            ..Default::default()
        };
        rig.launch(
            Kernel::SplitSum,
            uniform,
            &[(4, &buffers.0), (5, &buffers.1), (6, &buffers.2), (7, &buffers.3)],
            rows_of(2, len),
        );
        // untouched between rows (dst_rs > width) and before dst_off
        assert_close(
            &format!("split_sum, {rows}×{width} in {splits}"),
            &rig.read(&buffers.1),
            &want,
        );
    }
}

#[test]
fn gather_grads_routes_every_segment_s_slab_sums() {
    let Some(rig) = Rig::open() else { return };
    // (rows, width, main_cols, splits): a weight alone, a weight with its bias as the last
    // column (routed to the side), a LayerNorm's [dγ | dβ] as one row, and a one-split one
    let shapes = [(3, 5, 5, 2), (7, 70, 69, 3), (1, 160, 80, 5), (2, 3, 3, 1)];
    let (partial_len, dst_len) = (4000, 3000);
    let partial = values(partial_len, 71, 1.0);
    let mut want = vec![-1.0; dst_len];
    let (mut table, mut start, mut src, mut dst_at) = (Vec::new(), 0usize, 0usize, 0usize);
    for (rows, width, main_cols, splits) in shapes {
        let len = rows * width;
        let stride = len + 3;
        let side_cols = width - main_cols;
        let (main_off, main_rs) = (dst_at + 1, main_cols + 1);
        let (side_off, side_rs) = (main_off + rows * main_rs + 2, side_cols.max(1));
        for j in 0..len {
            let (row, col) = (j / width, j % width);
            let sum = (0..splits).map(|z| partial[src + z * stride + j]).fold(0.0, |a, v| a + v);
            let at = if col < main_cols {
                main_off + row * main_rs + col
            } else {
                side_off + row * side_rs + col - main_cols
            };
            want[at] = sum;
        }
        table.push(uniforms::Segment {
            start: start as u32,
            splits: splits as u32,
            stride: stride as u32,
            width: width as u32,
            main_cols: main_cols as u32,
            main_off: main_off as u32,
            main_rs: main_rs as u32,
            side_off: side_off as u32,
            side_rs: side_rs as u32,
            src_off: src as u32,
            ..Default::default()
        });
        start += len;
        src += splits * stride;
        dst_at = side_off + rows * side_rs + 1;
    }
    assert!(src <= partial_len && dst_at <= dst_len);
    let table_buf = rig.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&table),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let (partial, dst) = (rig.buffer(&f32s(&partial)), rig.buffer(&vec![-1.0; dst_len]));
    let uniform =
        uniforms::Gather { segments: table.len() as u32, total: start as u32, _pad0: 0, _pad1: 0 };
    rig.launch(
        Kernel::GatherGrads,
        uniform,
        &[(4, &partial), (5, &dst), (8, &table_buf)],
        rows_of(3, start),
    );
    assert_close("gather_grads", &rig.read(&dst), &want);
}

#[test]
fn attention_softmax_forward_and_backward_match_their_twin() {
    let Some(rig) = Rig::open() else { return };
    // (B·NH, T): these kernels serve T > 64 (shorter rows run in the GEMM epilogues), and
    // must still be right below it
    for (heads, t) in [(1, 1), (3, 5), (2, 70), (2, 130)] {
        let rows = heads * t;
        let scale = 0.35;
        let att_off = 3;
        let scores = values(rows * t, 81, 4.0);
        // attention_forward's softmax: causal, scaled, max-shifted
        let mut att = vec![0.0; rows * t];
        for r in 0..rows {
            let q = r % t;
            let row = &scores[r * t..r * t + q + 1];
            let max = row.iter().map(|s| s * scale).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|s| (s * scale - max).exp()).sum();
            for (t2, s) in row.iter().enumerate() {
                att[r * t + t2] = (s * scale - max).exp() / sum;
            }
        }
        let uniform = uniforms::Softmax {
            rows: rows as u32,
            t_len: t as u32,
            att_off: att_off as u32,
            scale: scale as f32,
        };
        let att_buf = rig.buffer(&padded(att_off, &scores));
        rig.launch(Kernel::SoftmaxForward, uniform, &[(1, &att_buf)], [rows as u32, 1, 1]);
        let shape = format!("attention softmax, {heads} heads × T {t}");
        assert_close(&format!("{shape}: forward"), &rig.read(&att_buf)[att_off..], &att);

        // attention_backward through the softmax: datt in, dscores out (in place)
        let datt = values(rows * t, 82, 1.0);
        let mut want = vec![0.0; rows * t];
        for r in 0..rows {
            let q = r % t;
            let dot: f64 = (0..=q).map(|t2| att[r * t + t2] * datt[r * t + t2]).sum();
            for t2 in 0..=q {
                want[r * t + t2] = att[r * t + t2] * (datt[r * t + t2] - dot) * scale;
            }
        }
        let dpre = rig.buffer(&f32s(&datt));
        rig.launch(
            Kernel::SoftmaxBackward,
            uniform,
            &[(2, &att_buf), (3, &dpre)],
            [rows as u32, 1, 1],
        );
        assert_close(&format!("{shape}: backward"), &rig.read(&dpre), &want);
    }
}

#[test]
fn gemm_split_k_slabs_and_gelu_epilogues_match_their_twin() {
    let Some(rig) = Rig::open() else { return };
    let kernel = Kernel::Gemm;
    for (n, ic, oc) in GEMM_SHAPES {
        let (x, w, b) = (values(n * ic, 91, 1.0), values(oc * ic, 92, 0.5), values(oc, 93, 0.5));
        let pre = reference::matmul_forward(&x, &w, Some(&b), ic, oc);
        let shape = format!("{}, {n}×{ic}→{oc}", kernel.name());
        let linear =
            |flags: GemmFlags, k_chunk: usize, c_zs: usize, aux_off: usize| uniforms::Gemm {
                flags: flags.bits(),
                k_chunk: k_chunk as u32,
                c_zs: c_zs as u32,
                aux_off: aux_off as u32,
                ..projection(n, ic, oc)
            };
        let (a, bw, bias) =
            (rig.operand(&f32s(&x)), rig.operand(&f32s(&w)), rig.operand(&f32s(&b)));

        // the fc layer's forward: C = x·Wᵀ + b and aux = GELU(C), GPT-2's gelu_new
        let aux_off = 2;
        let (c, aux) = (rig.buffer(&vec![0.0; n * oc]), rig.buffer(&vec![0.0; aux_off + n * oc]));
        let uniform = linear(GemmFlags::BIAS | GemmFlags::GELU_OUT, ic, 0, aux_off);
        let bound = [Some(&a), Some(&bw), Some(&bias), None, Some(&c), None, Some(&aux)];
        rig.gemm(kernel, uniform, bound, gemm_groups(n, oc));
        assert_close(&format!("{shape}: GELU_OUT pre-activation"), &rig.read(&c), &pre);
        let gelu = reference::gelu_forward(&pre);
        assert_close(&format!("{shape}: GELU_OUT"), &rig.read(&aux)[aux_off..], &gelu);

        // its backward: C = dy·W ·= gelu′(pre), the input gradient through the GELU
        let dy = values(n * oc, 94, 1.0);
        let want = reference::gelu_backward(&dy, &pre);
        let eye: Vec<f64> = (0..oc * oc).map(|i| f64::from(u8::from(i / oc == i % oc))).collect();
        let (dy_buf, eye_buf) = (rig.operand(&f32s(&dy)), rig.operand(&f32s(&eye)));
        let pre_buf = rig.buffer(&f32s(&pre));
        let c = rig.buffer(&vec![0.0; n * oc]);
        let uniform = uniforms::Gemm {
            depth: oc as u32,
            a_rs: oc as u32,
            b_ks: oc as u32,
            b_ss: 1,
            k_chunk: oc as u32,
            aux_off: 0,
            ..linear(GemmFlags::GELU_GRAD, oc, 0, 0)
        };
        // dy·I, so the product is dy itself and the epilogue is what is checked
        rig.gemm(
            kernel,
            uniform,
            [Some(&dy_buf), Some(&eye_buf), None, None, Some(&c), None, Some(&pre_buf)],
            gemm_groups(n, oc),
        );
        assert_close(&format!("{shape}: GELU_GRAD"), &rig.read(&c), &want);

        // split-K: workgroup layer z sums depth [z·k_chunk, (z+1)·k_chunk) into slab z,
        // c_zs apart; the slabs add up to the product
        let k_chunk = 16;
        let splits = ic.div_ceil(k_chunk);
        let c_zs = n * oc + 7;
        let slabs = rig.buffer(&vec![0.0; splits * c_zs]);
        let mut groups = gemm_groups(n, oc);
        groups[2] = splits as u32;
        let bound = [Some(&a), Some(&bw), None, None, Some(&slabs), None, None];
        rig.gemm(kernel, linear(GemmFlags::NONE, k_chunk, c_zs, 0), bound, groups);
        let slabs = rig.read(&slabs);
        let summed: Vec<f64> =
            (0..n * oc).map(|m| (0..splits).map(|z| slabs[z * c_zs + m]).sum()).collect();
        let want = reference::matmul_forward(&x, &w, None, ic, oc);
        assert_close(&format!("{shape}: {splits} split-K slabs"), &summed, &want);
    }
}

/// Column tiles of a GEMM with a ones column: one that would open a tile of its own (cols −
/// 1 a multiple of 64) is folded into the last full tile, so the grid leaves it out.
fn ones_column_tiles(cols: usize) -> usize {
    if (cols - 1).is_multiple_of(64) {
        (cols - 1) / 64
    } else {
        cols.div_ceil(64)
    }
}

#[test]
fn gemm_weight_gradient_with_ones_column_and_one_hot_embedding_gradient_match_their_twin() {
    let Some(rig) = Rig::open() else { return };
    // (N, IC, OC): IC 64 and 128 make the ones column fold into the last full tile
    let kernel = Kernel::Gemm;
    for (n, ic, oc) in [(5, 3, 7), (70, 64, 10), (33, 128, 65), (130, 80, 3)] {
        let (x, w, dy) =
            (values(n * ic, 101, 1.0), values(oc * ic, 102, 0.5), values(n * oc, 103, 1.0));
        let (mut dw, mut db) = (vec![0.0; oc * ic], vec![0.0; oc]);
        reference::matmul_backward(&dy, &x, &w, &mut dw, Some(&mut db), ic, oc);
        let want: Vec<f64> =
            (0..oc).flat_map(|o| dw[o * ic..(o + 1) * ic].iter().copied().chain([db[o]])).collect();
        let cols = ic + 1;
        // A = dyᵀ (OC, N) read from dy; B = [x | 1] (N, IC + 1); C = [dW | db]
        let uniform = uniforms::Gemm {
            rows: oc as u32,
            cols: cols as u32,
            depth: n as u32,
            flags: GemmFlags::ONES_COLUMN.bits(),
            a_rs: 1,
            a_ks: oc as u32,
            b_ks: ic as u32,
            b_ss: 1,
            c_rs: cols as u32,
            k_chunk: n as u32,
            z_inner: 1,
            scale: 1.0,
            ..Default::default()
        };
        let (a, b) = (rig.operand(&f32s(&dy)), rig.operand(&f32s(&x)));
        let c = rig.buffer(&vec![0.0; oc * cols]);
        rig.gemm(
            kernel,
            uniform,
            [Some(&a), Some(&b), None, None, Some(&c), None, None],
            [ones_column_tiles(cols) as u32, oc.div_ceil(64) as u32, 1],
        );
        let shape = format!("{}, N {n} IC {ic} OC {oc}", kernel.name());
        assert_close(&format!("{shape}: [dW | db]"), &rig.read(&c), &want);
    }
    // dwte = one-hot(tokens)ᵀ · dres: the scatter-add of reference::backward
    for (n, v, c) in [(5, 7, 3), (70, 50, 80), (130, 65, 64)] {
        let tokens: Vec<u32> = (0..n).map(|i| ((i * 11 + 2) % v) as u32).collect();
        let dres = values(n * c, 104, 1.0);
        let mut want = vec![0.0; v * c];
        for (t, &tok) in tokens.iter().enumerate() {
            for ch in 0..c {
                want[tok as usize * c + ch] += dres[t * c + ch];
            }
        }
        let a_off = 1;
        let mut ids = vec![u32::MAX; a_off];
        ids.extend(&tokens);
        let tokens_buf = rig.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&ids),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let uniform = uniforms::Gemm {
            rows: v as u32,
            cols: c as u32,
            depth: n as u32,
            flags: GemmFlags::ONEHOT_A.bits(),
            a_off: a_off as u32,
            b_ks: c as u32,
            b_ss: 1,
            c_rs: c as u32,
            k_chunk: n as u32,
            z_inner: 1,
            scale: 1.0,
            ..Default::default()
        };
        let (b, out) = (rig.operand(&f32s(&dres)), rig.buffer(&vec![0.0; v * c]));
        rig.gemm(
            kernel,
            uniform,
            [None, Some(&b), None, None, Some(&out), Some(&tokens_buf), None],
            gemm_groups(v, c),
        );
        assert_close(
            &format!("{}, one-hot dwte, N {n} V {v} C {c}", kernel.name()),
            &rig.read(&out),
            &want,
        );
    }
}

#[test]
fn layernorm_parameter_gradient_splits_add_up_to_the_twin_s() {
    let Some(rig) = Rig::open() else { return };
    for (n, c, split_rows) in [(1, 3, 4), (13, 80, 4), (70, 130, 16)] {
        let x = values(n * c, 111, 2.0);
        let (w, b) = (values(c, 112, 1.5), values(c, 113, 0.5));
        let dout = values(n * c, 114, 1.0);
        let (_, stats) = reference::layernorm_forward(&x, &w, &b, c);
        let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
        reference::layernorm_backward(&dout, &x, &w, &stats, &mut dw, &mut db, c);
        let splits = n.div_ceil(split_rows);
        let part_off = 2;
        let partial = rig.buffer(&vec![0.0; part_off + splits * 2 * c]);
        let (inp, dout_buf) = (rig.buffer(&f32s(&x)), rig.buffer(&f32s(&dout)));
        let (mean, rstd) = (rig.buffer(&f32s(&stats.mean)), rig.buffer(&f32s(&stats.rstd)));
        let uniform = uniforms::LayerNorm {
            n_rows: n as u32,
            c: c as u32,
            split_rows: split_rows as u32,
            part_off: part_off as u32,
            ..Default::default()
        };
        rig.launch(
            Kernel::LayerNormBackwardParams,
            uniform,
            &[(1, &inp), (6, &dout_buf), (7, &mean), (8, &rstd), (10, &partial)],
            [c.div_ceil(64) as u32, splits as u32, 1],
        );
        let partial = rig.read(&partial);
        let sum =
            |k: usize| -> f64 { (0..splits).map(|z| partial[part_off + z * 2 * c + k]).sum() };
        let shape = format!("layernorm backward_params, {n}×{c} in splits of {split_rows}");
        assert_close(&format!("{shape}: dweight"), &(0..c).map(sum).collect::<Vec<_>>(), &dw);
        assert_close(&format!("{shape}: dbias"), &(c..2 * c).map(sum).collect::<Vec<_>>(), &db);
    }
}

#[test]
fn batched_attention_products_with_the_fused_softmax_match_their_twin() {
    let Some(rig) = Rig::open() else { return };
    // (B, NH, T, C): the fused softmax serves rows of up to one tile (T ≤ 64). Batched
    // products run on `gemm`'s 64×64 tiles.
    let kernel = Kernel::Gemm;
    for (b, nh, t, c) in [(1, 1, 1, 4), (2, 2, 5, 8), (2, 4, 64, 80)] {
        let hs = c / nh;
        let qkv = values(b * t * 3 * c, 121, 1.0);
        let (mut want_att, mut want_out) = (Vec::new(), Vec::new());
        for seq in qkv.chunks(t * 3 * c) {
            let (out, att) = reference::attention_forward(seq, c, nh);
            want_out.extend(out);
            want_att.extend(att);
        }
        let qkv_buf = rig.operand(&f32s(&qkv));
        let z = (b * nh) as u32;
        // att[b, h] = softmax(scale · Q Kᵀ), causal, Q and K read in place from qkv
        let scores = uniforms::Gemm {
            rows: t as u32,
            cols: t as u32,
            depth: hs as u32,
            flags: (GemmFlags::BATCHED | GemmFlags::SOFTMAX).bits(),
            a_rs: (3 * c) as u32,
            a_ks: 1,
            b_off: c as u32,
            b_ks: 1,
            b_ss: (3 * c) as u32,
            c_rs: t as u32,
            k_chunk: hs as u32,
            z_inner: nh as u32,
            a_zo: (t * 3 * c) as u32,
            a_zi: hs as u32,
            b_zo: (t * 3 * c) as u32,
            b_zi: hs as u32,
            c_zo: (nh * t * t) as u32,
            c_zi: (t * t) as u32,
            scale: 1.0 / (hs as f32).sqrt(),
            ..Default::default()
        };
        let att = rig.buffer(&vec![0.0; b * nh * t * t]);
        let mut groups = gemm_groups(t, t);
        groups[2] = z;
        rig.gemm(
            kernel,
            scores,
            [Some(&qkv_buf), Some(&qkv_buf), None, None, Some(&att), None, None],
            groups,
        );
        let shape = format!("{}, B {b} NH {nh} T {t} C {c}", kernel.name());
        assert_close(&format!("{shape}: att"), &rig.read(&att), &want_att);

        // y[b, :, h] = att[b, h] · V, V read in place, written into its head's columns
        let values_product = uniforms::Gemm {
            rows: t as u32,
            cols: hs as u32,
            depth: t as u32,
            flags: GemmFlags::BATCHED.bits(),
            a_rs: t as u32,
            a_ks: 1,
            b_off: (2 * c) as u32,
            b_ks: (3 * c) as u32,
            b_ss: 1,
            c_rs: c as u32,
            k_chunk: t as u32,
            z_inner: nh as u32,
            a_zo: (nh * t * t) as u32,
            a_zi: (t * t) as u32,
            b_zo: (t * 3 * c) as u32,
            b_zi: hs as u32,
            c_zo: (t * c) as u32,
            c_zi: hs as u32,
            scale: 1.0,
            ..Default::default()
        };
        let att_in = rig.operand(&f32s(&want_att));
        let out = rig.buffer(&vec![0.0; b * t * c]);
        let mut groups = gemm_groups(t, hs);
        groups[2] = z;
        rig.gemm(
            kernel,
            values_product,
            [Some(&att_in), Some(&qkv_buf), None, None, Some(&out), None, None],
            groups,
        );
        assert_close(&format!("{shape}: att·V"), &rig.read(&out), &want_out);

        // backward: dpre[b, h] = P ⊙ (dy Vᵀ − rowsum(P ⊙ dy Vᵀ)) · scale, P read
        // through the addend binding (the softmax backward fused into dy·Vᵀ)
        let dy = values(b * t * c, 122, 1.0);
        let mut want = vec![0.0; b * nh * t * t];
        for (z, block) in want.chunks_mut(t * t).enumerate() {
            let (bi, h) = (z / nh, z % nh);
            let at = |row: usize, col: usize| want_att[z * t * t + row * t + col];
            for row in 0..t {
                let da: Vec<f64> = (0..=row)
                    .map(|t2| {
                        (0..hs)
                            .map(|d| {
                                dy[(bi * t + row) * c + h * hs + d]
                                    * qkv[(bi * t + t2) * 3 * c + 2 * c + h * hs + d]
                            })
                            .sum()
                    })
                    .collect();
                let dot: f64 = (0..=row).map(|t2| at(row, t2) * da[t2]).sum();
                for t2 in 0..=row {
                    block[row * t + t2] = at(row, t2) * (da[t2] - dot) / (hs as f64).sqrt();
                }
            }
        }
        let grad = uniforms::Gemm {
            rows: t as u32,
            cols: t as u32,
            depth: hs as u32,
            flags: (GemmFlags::BATCHED | GemmFlags::SOFTMAX_GRAD).bits(),
            a_rs: c as u32,
            a_ks: 1,
            b_off: (2 * c) as u32,
            b_ks: 1,
            b_ss: (3 * c) as u32,
            c_rs: t as u32,
            k_chunk: hs as u32,
            z_inner: nh as u32,
            a_zo: (t * c) as u32,
            a_zi: hs as u32,
            b_zo: (t * 3 * c) as u32,
            b_zi: hs as u32,
            c_zo: (nh * t * t) as u32,
            c_zi: (t * t) as u32,
            scale: 1.0 / (hs as f32).sqrt(),
            ..Default::default()
        };
        let (dy_buf, probs) = (rig.operand(&f32s(&dy)), rig.buffer(&f32s(&want_att)));
        let dpre = rig.buffer(&vec![0.0; b * nh * t * t]);
        let mut groups = gemm_groups(t, t);
        groups[2] = z;
        rig.gemm(
            kernel,
            grad,
            [Some(&dy_buf), Some(&qkv_buf), None, Some(&probs), Some(&dpre), None, None],
            groups,
        );
        assert_close(&format!("{shape}: SOFTMAX_GRAD"), &rig.read(&dpre), &want);
    }
}

#[test]
fn loss_gradient_matches_lab_core_for_every_kind_and_two_mixes() {
    let Some(rig) = Rig::open() else { return };
    let b = 12;
    let policy: Vec<f32> = f32s(&values(b, 131, 5.0)).iter().map(|v| v - 20.0).collect();
    let reference: Vec<f64> =
        policy.iter().zip(values(b, 132, 1.0)).map(|(&p, n)| f64::from(p) + n).collect();
    let lengths: Vec<f64> = (0..b).map(|r| (3 + r % 5) as f64).collect();
    let params = LossParams { label_smoothing: 0.1, ..LossParams::default() };
    let desirable = [true, false, false, true, true, false, true, false, false, false, true, true];
    let sizes = [3, 2, 4, 3];
    let rows_of = |kind: LossKind| match kind.data_shape() {
        DataShape::Paired => Rows::Pairs,
        DataShape::Unpaired => Rows::Unpaired(&desirable),
        DataShape::Ranked => Rows::Ranked(&sizes),
    };
    let mut mixes: Vec<(LossMix, Rows)> =
        LossKind::ALL.iter().map(|&k| (LossMix::single(k), rows_of(k))).collect();
    mixes.push((LossMix::parse("sigmoid+0.5*hinge+0.25*ipo").unwrap(), Rows::Pairs));
    mixes.push((LossMix::parse("sigmoid+0.5*sft+0.25*ipo").unwrap(), Rows::Pairs));
    // the forward's outputs with the sequence log-probs after (B, T) token log-probs
    let seq_off = 7;
    let mut out = vec![f32::NAN; seq_off];
    out.extend(&policy);
    let out = rig.buffer(&out);
    for (mix, rows) in &mixes {
        let loss = StepLoss {
            mix,
            params: &params,
            rows: *rows,
            reference: &reference,
            lengths: &lengths,
        };
        let (_, want) = loss.gradient(&policy, 1).unwrap();
        let (uniform, rest) = lab_gpu::loss_inputs(&loss, b, seq_off);
        let mut given: Vec<f32> = reference.iter().map(|&v| v as f32).collect();
        given.extend(rest);
        let (given, d_seq) = (rig.buffer(&given), rig.buffer(&vec![f32::NAN; b]));
        let status = rig.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::bytes_of(&7u32),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        rig.launch(
            lab_gpu::loss_kernel(&loss),
            uniform,
            &[(1, &out), (2, &given), (3, &d_seq), (4, &status)],
            [1, 1, 1],
        );
        let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
        assert_close(&format!("loss.wgsl, {}", mix.name()), &rig.read(&d_seq), &want);
        // the u32 word read as f32 bits: 0 is 0.0, any flag a non-zero denormal
        assert_eq!(
            rig.read(&status)[0],
            0.0,
            "{}: a finite gradient clears the status",
            mix.name()
        );
    }
}
