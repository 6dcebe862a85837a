//! lab-gpu against the lab-cpu reference: logits, per-token log-probs, top-k instruments,
//! hidden states, every parameter gradient, the weights after three AdamW steps, the loss
//! zoo's gradient evaluated on the GPU (loss.wgsl) for every kind, and the loss curves of
//! DPO, KTO and Plackett–Luce runs.
//!
//! Tolerance, per tensor: |gpu − cpu| ≤ REL · max|cpu tensor| + ABS. The GPU sums in other
//! orders than the CPU (workgroup tree reductions in LayerNorm, tiles in the GEMM, fused
//! multiply-adds), so bit equality is not expected; f32 rounding of those sums is ~1e-6
//! relative, and REL = 1e-4 leaves room for it to grow through two layers and a backward.
//! Every check prints its max abs error so regressions show before they fail.
//!
//! These tests need a WebGPU adapter (in CI: Mesa's lavapipe over Vulkan). Without one
//! they fail, naming the fix, unless ALIGNLAB_SKIP_GPU=1, which skips them with a notice.

use lab_core::config::{init_params, GptConfig};
use lab_core::data::parse_jsonl;
use lab_core::engine::{AdamWConfig, Closeness, Engine, Rows, StepLoss, TokenBatch};
use lab_core::loss::{DataShape, LossKind, LossMix, LossParams};
use lab_core::rng::Rng;
use lab_core::tokenizer::Tokenizer;
use lab_cpu::CpuEngine;
use lab_gpu::kernels::Kernel;
use lab_gpu::timing::Method;
use lab_gpu::GpuEngine;
use lab_train::{Session, SessionConfig};

const REL: f32 = 1e-4;
const ABS: f32 = 1e-6;

/// The sessions' model: small enough for 10–20 steps of lab-train on lavapipe.
const MICRO: GptConfig = GptConfig { vocab: 96, ctx: 32, d_model: 32, n_layer: 2, n_head: 4 };

/// Ragged on purpose: C = 48 and N = B·T = 57 are not multiples of the 64-wide GEMM tile,
/// hs = 12, and T < ctx leaves position rows without gradient.
const RAGGED: GptConfig = GptConfig { vocab: 96, ctx: 24, d_model: 48, n_layer: 2, n_head: 4 };
/// The largest head size the GPU engine takes (64) and a sequence spanning three 64-row
/// attention blocks, its last one partial.
const WIDE: GptConfig = GptConfig { vocab: 96, ctx: 160, d_model: 128, n_layer: 1, n_head: 2 };

/// The engine on the default adapter, or None (with a notice) when there is none and
/// ALIGNLAB_SKIP_GPU=1. Any other failure (a shader error, a limit) always fails.
fn gpu(cfg: GptConfig, params: Vec<f32>) -> Option<GpuEngine> {
    match GpuEngine::from_default_adapter(cfg, params) {
        Ok(engine) => {
            eprintln!("adapter: {}", engine.name());
            Some(engine)
        }
        Err(err) if err.to_string().contains("no GPU adapter found") => {
            if std::env::var("ALIGNLAB_SKIP_GPU").is_ok_and(|v| v == "1") {
                eprintln!("SKIPPED (ALIGNLAB_SKIP_GPU=1): {err}");
                None
            } else {
                panic!("{err}\nSet ALIGNLAB_SKIP_GPU=1 to skip the GPU parity tests on a machine without an adapter.");
            }
        }
        Err(err) => panic!("the GPU engine failed to start: {err}"),
    }
}

/// GPT-2 initialisation plus noise on every parameter, so biases and LayerNorm parameters
/// are not at their special values (zeros and ones hide indexing bugs).
fn random_params(cfg: &GptConfig, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    init_params(cfg, seed).into_iter().map(|p| p + 0.05 * rng.normal()).collect()
}

/// Rows of different lengths (so padding and its zero mask are exercised) with the
/// first scored position varying; T = the longest row.
fn random_batch(cfg: &GptConfig, rows: usize, max_len: usize, seed: u64) -> TokenBatch {
    let mut rng = Rng::new(seed);
    let rows: Vec<(Vec<u32>, usize)> = (0..rows)
        .map(|r| {
            let len = if r == 0 { max_len } else { max_len - rng.below(max_len / 2) };
            let tokens = (0..len).map(|_| rng.below(cfg.vocab) as u32).collect();
            (tokens, 1 + rng.below(len - 1))
        })
        .collect();
    TokenBatch::from_rows(&rows).unwrap()
}

/// Assert `gpu` ≈ `cpu` within the stated tolerance; print the max abs error.
fn assert_close(what: &str, gpu: &[f32], cpu: &[f32]) -> f32 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let Closeness { max_abs_err: worst, at, tol, scale } = Closeness::of(gpu, cpu, REL, ABS);
    eprintln!("{what:>28}: max abs err {worst:.3e} (tol {tol:.3e}, max|cpu| {scale:.3e})");
    assert!(
        worst <= tol,
        "{what}: gpu {} vs cpu {} at {at}: err {worst:e} > tol {tol:e}",
        gpu[at],
        cpu[at]
    );
    worst
}

/// Compare two flat parameter-layout vectors tensor by tensor.
fn assert_tensors_close(what: &str, cfg: &GptConfig, gpu: &[f32], cpu: &[f32]) {
    for (name, offset, shape) in cfg.layout().tensors(cfg) {
        let len: usize = shape.iter().product();
        assert_close(
            &format!("{what} {name}"),
            &gpu[offset..offset + len],
            &cpu[offset..offset + len],
        );
    }
}

/// The key bias qkvb[l, C..2C] adds q·b_k to every score of a softmax row, a constant the
/// softmax removes: its gradient is exactly zero in exact arithmetic, and both engines
/// compute rounding noise (~1e-9). AdamW normalises a gradient by its own size, so that
/// noise becomes ±lr-sized steps whose signs differ between engines. Those entries are held
/// to the bound AdamW itself guarantees, |Δ| ≤ 2·lr per step, instead of the relative
/// tolerance; they cannot change any output, which the forward and loss-curve tests show.
fn is_key_bias(cfg: &GptConfig, index: usize) -> bool {
    let layout = cfg.layout();
    let c = cfg.d_model;
    (layout.qkvb..layout.qkvb + cfg.n_layer * 3 * c).contains(&index)
        && ((index - layout.qkvb) % (3 * c)) / c == 1
}

#[test]
fn forward_matches_cpu_on_logits_logprobs_instruments_and_hidden_states() {
    for (cfg, rows, len) in [(RAGGED, 3, 19), (GptConfig::TINY, 4, 64), (WIDE, 2, 150)] {
        let params = random_params(&cfg, 1);
        let Some(mut gpu) = gpu(cfg, params.clone()) else { return };
        let mut cpu = CpuEngine::new(cfg, params).unwrap();
        let batch = random_batch(&cfg, rows, len, 2);
        eprintln!("config {cfg:?}, batch {}x{}", batch.batch, batch.seq_len);
        assert_close("logits", &gpu.logits(&batch).unwrap(), &cpu.logits(&batch).unwrap());
        assert_close(
            "hidden states",
            &gpu.hidden_states(&batch).unwrap(),
            &cpu.hidden_states(&batch).unwrap(),
        );
        let (g, c) = (gpu.forward(&batch).unwrap(), cpu.forward(&batch).unwrap());
        assert_close("token logps", &g.token_logps, &c.token_logps);
        assert_close("seq logps", &g.seq_logps, &c.seq_logps);
        assert_close("topk entropy", &g.topk_entropy, &c.topk_entropy);
        assert_close("topk mass", &g.topk_mass, &c.topk_mass);
        // unscored positions are exactly zero on both
        for (i, m) in batch.score_mask.iter().enumerate() {
            if *m == 0.0 {
                assert_eq!(g.token_logps[i], 0.0, "token {i} is not scored");
            }
        }
    }
}

#[test]
fn every_parameter_gradient_matches_cpu() {
    for (cfg, rows, len) in [(RAGGED, 3, 19), (GptConfig::TINY, 4, 64), (WIDE, 2, 150)] {
        let params = random_params(&cfg, 3);
        let Some(mut gpu) = gpu(cfg, params.clone()) else { return };
        let mut cpu = CpuEngine::new(cfg, params).unwrap();
        let batch = random_batch(&cfg, rows, len, 4);
        let mut rng = Rng::new(5);
        let d_seq: Vec<f32> = (0..batch.batch).map(|_| rng.normal()).collect();
        gpu.forward(&batch).unwrap();
        cpu.forward(&batch).unwrap();
        gpu.backward(&d_seq).unwrap();
        cpu.backward(&d_seq).unwrap();
        eprintln!("config {cfg:?}, batch {}x{}", batch.batch, batch.seq_len);
        let (g, c) = (gpu.grads(), cpu.grads());
        assert_tensors_close("grad", &cfg, &g, &c);
        // the key bias's gradient is zero up to rounding on both (see is_key_bias)
        let key_bias_max = (0..c.len())
            .filter(|&i| is_key_bias(&cfg, i))
            .fold(0.0f32, |m, i| m.max(c[i].abs()).max(g[i].abs()));
        let qkvb_max =
            c[cfg.layout().qkvb..cfg.layout().attprojw].iter().fold(0.0f32, |m, x| m.max(x.abs()));
        eprintln!(
            "{:>28}: max |grad| {key_bias_max:.3e} against {qkvb_max:.3e} for all of qkvb",
            "key bias"
        );
        assert!(key_bias_max <= 1e-4 * qkvb_max);
    }
}

/// The medium model at the benchmark's shape (32 rows × 64 tokens, B·T = 2048): the shapes
/// and splits the GPU benchmark runs, checked against the CPU.
#[test]
fn medium_at_the_benchmark_shape_matches_cpu() {
    let cfg = GptConfig::MEDIUM;
    let params = random_params(&cfg, 16);
    let Some(mut gpu) = gpu(cfg, params.clone()) else { return };
    let mut cpu = CpuEngine::new(cfg, params).unwrap();
    let rows: Vec<(Vec<u32>, usize)> =
        (0..32u32).map(|r| ((0..64u32).map(|i| (r * 7 + i * 13) % 95 + 1).collect(), 16)).collect();
    let batch = TokenBatch::from_rows(&rows).unwrap();
    let launches = gpu.launches(&batch).unwrap();
    // the bias column of [dW | db] (C + 1 or 4C + 1 columns) rides in the last full tile
    let gemm_columns: Vec<u32> =
        launches.iter().filter(|(k, _)| *k == Kernel::Gemm).map(|(_, g)| g[0]).collect();
    assert!(
        !gemm_columns.contains(&5) && !gemm_columns.contains(&17),
        "a tile for the ones column alone: {gemm_columns:?}"
    );
    let count = |kernel: Kernel| launches.iter().filter(|(k, _)| *k == kernel).count();
    eprintln!(
        "medium at 32×64: {} launches, {} split sums",
        launches.len(),
        count(Kernel::SplitSum)
    );
    // the depth-split products the next LayerNorm reads (attproj and fcproj forward, the
    // input gradients of fc and qkv) are added up by that LayerNorm, the parameter
    // gradients by one gather: split sums remain for the LM head's forward and attproj's
    // input gradient (attention reads it)
    assert_eq!(count(Kernel::SplitSum), 1 + cfg.n_layer);
    assert_eq!(count(Kernel::GatherGrads), 1);
    let (g, c) = (gpu.forward(&batch).unwrap(), cpu.forward(&batch).unwrap());
    assert_close("token logps", &g.token_logps, &c.token_logps);
    assert_close("seq logps", &g.seq_logps, &c.seq_logps);
    let d_seq: Vec<f32> = (0..32).map(|b| if b < 16 { -0.05 } else { 0.05 }).collect();
    gpu.backward(&d_seq).unwrap();
    cpu.backward(&d_seq).unwrap();
    assert_tensors_close("grad", &cfg, &gpu.grads(), &cpu.grads());
}

#[test]
fn weights_after_three_adamw_steps_match_cpu() {
    let cfg = RAGGED;
    let params = random_params(&cfg, 6);
    let Some(mut gpu) = gpu(cfg, params.clone()) else { return };
    let mut cpu = CpuEngine::new(cfg, params).unwrap();
    // weight decay on, so the decoupled decay is exercised too
    let opt = AdamWConfig { lr: 1e-3, weight_decay: 0.1, ..AdamWConfig::default() };
    for step in 1..=3 {
        let batch = random_batch(&cfg, 3, 19, 10 + step as u64);
        let mut rng = Rng::new(20 + step as u64);
        let d_seq: Vec<f32> = (0..batch.batch).map(|_| rng.normal()).collect();
        for engine in [&mut gpu as &mut dyn Engine, &mut cpu] {
            engine.forward(&batch).unwrap();
            engine.backward(&d_seq).unwrap();
            engine.adamw_step(&opt, step).unwrap();
        }
    }
    assert_weights_close("after 3 steps", &cfg, &gpu.params(), &cpu.params(), opt.lr, 3);
}

/// `logits_async` reads what `logits` reads, and a detour through other weights with
/// `set_params_keep_optimizer` (how a session scores the reference's samples) leaves AdamW's
/// moments as they were: the next update is the same bit for bit. `set_params`, which resets
/// them, changes it.
#[test]
fn logits_async_and_weight_swaps_that_keep_the_optimizer_state() {
    let cfg = RAGGED;
    let params = random_params(&cfg, 31);
    let batch = random_batch(&cfg, 3, 19, 32);
    let Some(mut gpu_engine) = gpu(cfg, params.clone()) else { return };
    let blocking = gpu_engine.logits(&batch).unwrap();
    let awaited = pollster::block_on(gpu_engine.logits_async(&batch)).unwrap();
    assert_eq!(blocking.len(), batch.batch * batch.seq_len * cfg.vocab);
    assert!(blocking.iter().zip(&awaited).all(|(a, b)| a.to_bits() == b.to_bits()));
    let opt = AdamWConfig { lr: 1e-2, ..AdamWConfig::default() };
    let d_seq = [1.0, -0.5, 0.25];
    let two_steps = |detour: &dyn Fn(&mut GpuEngine)| {
        let mut engine = gpu(cfg, params.clone()).unwrap();
        for step in 1..=2 {
            engine.forward(&batch).unwrap();
            engine.backward(&d_seq).unwrap();
            engine.adamw_step(&opt, step).unwrap();
            if step == 1 {
                detour(&mut engine);
            }
        }
        engine.params()
    };
    let plain = two_steps(&|_| {});
    let swapped = two_steps(&|engine| {
        let policy = engine.params();
        engine.set_params_keep_optimizer(&random_params(&cfg, 33)).unwrap();
        engine.forward(&batch).unwrap();
        engine.set_params_keep_optimizer(&policy).unwrap();
    });
    let reset = two_steps(&|engine| {
        let policy = engine.params();
        engine.set_params(&policy).unwrap();
    });
    assert!(plain.iter().zip(&swapped).all(|(a, b)| a.to_bits() == b.to_bits()));
    let moved = plain.iter().zip(&reset).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert!(moved > plain.len() / 2, "a reset of the moments must change the update: {moved}");
}

/// Weights after `steps` AdamW steps: every tensor within the tolerance, except the key
/// bias (see is_key_bias), held to AdamW's own bound of 2·lr a step.
fn assert_weights_close(
    what: &str,
    cfg: &GptConfig,
    gpu_params: &[f32],
    cpu_params: &[f32],
    lr: f32,
    steps: u32,
) {
    let key_bias_bound = 2.0 * steps as f32 * lr;
    let mut key_bias_err = 0.0f32;
    let (mut gpu_rest, mut cpu_rest) = (gpu_params.to_vec(), cpu_params.to_vec());
    for i in (0..gpu_params.len()).filter(|&i| is_key_bias(cfg, i)) {
        key_bias_err = key_bias_err.max((gpu_params[i] - cpu_params[i]).abs());
        (gpu_rest[i], cpu_rest[i]) = (0.0, 0.0);
    }
    eprintln!(
        "{:>28}: max abs err {key_bias_err:.3e} (bound 2·lr·steps = {key_bias_bound:.1e})",
        format!("{what} qkvb key part")
    );
    assert!(key_bias_err <= key_bias_bound);
    assert_tensors_close(what, cfg, &gpu_rest, &cpu_rest);
}

#[test]
fn dpo_loss_curves_agree_over_20_steps() {
    let facts = [
        ("Is fire hot?", " Yes.", " No."),
        ("Is ice hot?", " No.", " Yes."),
        ("Is 2 > 1?", " Yes.", " No."),
        ("Is 1 > 2?", " No.", " Yes."),
        ("Sky color?", " Blue.", " Green."),
        ("Grass color?", " Green.", " Blue."),
    ];
    let jsonl: String = facts
        .iter()
        .map(|(p, c, r)| {
            format!("{{\"prompt\": \"{p}\", \"chosen\": \"{c}\", \"rejected\": \"{r}\"}}\n")
        })
        .collect();
    let records = parse_jsonl(&jsonl).unwrap();
    let config = SessionConfig {
        loss: LossMix::single(LossKind::Sigmoid),
        params: LossParams::default(),
        optimizer: AdamWConfig { lr: 1e-3, ..AdamWConfig::default() },
        batch_size: 4,
        seed: 1,
        eval_every: 1,
        final_step: 0,
        kl_sampled_every: 0,
    };
    let params = init_params(&MICRO, 7);
    let Some(gpu_engine) = gpu(MICRO, params.clone()) else { return };
    let mut on_gpu = Session::new(gpu_engine, &Tokenizer::Char, &records, config.clone()).unwrap();
    let mut on_cpu =
        Session::new(CpuEngine::new(MICRO, params).unwrap(), &Tokenizer::Char, &records, config)
            .unwrap();
    assert_loss_curves_agree("dpo", &mut on_gpu, &mut on_cpu, 20);
}

/// `steps` session steps on each engine: the CPU run must learn (else agreeing means
/// little) and the two loss curves agree within the tolerance.
fn assert_loss_curves_agree(
    what: &str,
    on_gpu: &mut Session<GpuEngine>,
    on_cpu: &mut Session<CpuEngine>,
    steps: usize,
) {
    let (mut gpu_losses, mut cpu_losses) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        gpu_losses.push(on_gpu.step().unwrap().loss as f32);
        cpu_losses.push(on_cpu.step().unwrap().loss as f32);
    }
    eprintln!("{what}: cpu loss curve {cpu_losses:?}");
    eprintln!("{what}: gpu loss curve {gpu_losses:?}");
    assert!(
        cpu_losses[steps - 1] < cpu_losses[0],
        "{what}: the run must learn for the comparison to mean anything"
    );
    assert_close(&format!("{what} loss curve"), &gpu_losses, &cpu_losses);
}

/// The other data shapes through lab-train on both engines: KTO on unpaired examples and
/// Plackett–Luce on ranked lists (of different lengths), their losses' gradients computed by
/// loss.wgsl on the GPU, 10 steps each.
#[test]
fn kto_and_plackett_luce_loss_curves_agree_over_10_steps() {
    let unpaired = "{\"prompt\": \"Is fire hot?\", \"completion\": \" Yes.\", \"label\": true}\n{\"prompt\": \"Is fire hot?\", \"completion\": \" No.\", \"label\": false}\n\
{\"prompt\": \"Is ice hot?\", \"completion\": \" No.\", \"label\": true}\n{\"prompt\": \"Sky color?\", \"completion\": \" Green.\", \"label\": false}\n\
{\"prompt\": \"Sky color?\", \"completion\": \" Blue.\", \"label\": true}\n";
    let ranked = "{\"prompt\": \"Is fire hot?\", \"responses\": [\" Yes.\", \" Warm.\", \" No.\"]}\n{\"prompt\": \"Sky color?\", \"responses\": [\" Blue.\", \" Green.\"]}\n\
{\"prompt\": \"Is 2 > 1?\", \"responses\": [\" Yes.\", \" Maybe.\", \" No.\", \" Never.\"]}\n";
    for (kind, jsonl) in [(LossKind::Kto, unpaired), (LossKind::PlackettLuce, ranked)] {
        let records = parse_jsonl(jsonl).unwrap();
        // the whole dataset each step, so the loss falls step by step
        let config = SessionConfig {
            loss: LossMix::single(kind),
            params: LossParams::default(),
            optimizer: AdamWConfig { lr: 1e-3, ..AdamWConfig::default() },
            batch_size: records.len(),
            seed: 3,
            eval_every: 1,
            final_step: 0,
            kl_sampled_every: 0,
        };
        let params = init_params(&MICRO, 9);
        let Some(gpu_engine) = gpu(MICRO, params.clone()) else { return };
        let mut on_gpu =
            Session::new(gpu_engine, &Tokenizer::Char, &records, config.clone()).unwrap();
        let mut on_cpu = Session::new(
            CpuEngine::new(MICRO, params).unwrap(),
            &Tokenizer::Char,
            &records,
            config,
        )
        .unwrap();
        let before = on_gpu.engine().sync_counts();
        assert_loss_curves_agree(&kind.to_string(), &mut on_gpu, &mut on_cpu, 10);
        // a step, an evaluation of the dataset and the logits of eval/kl each: one submission
        // and one readback apiece
        let after = on_gpu.engine().sync_counts();
        assert_eq!(
            (after.submissions - before.submissions, after.readbacks - before.readbacks),
            (30, 30),
            "{kind}"
        );
    }
}

/// The browser's path: `Session::new_async` and `step_async` on the GPU engine (awaited
/// readbacks) against `Session::new` and `step` on the CPU engine, over 10 steps: the loss
/// curve, the reference and final policy log-probs of every row, and CHES. The async step
/// keeps the sync step's GPU budget, and `params_async` reads what `params` reads.
#[test]
fn async_session_on_gpu_matches_sync_session_on_cpu_over_10_steps() {
    let facts = [
        ("Is fire hot?", " Yes.", " No."),
        ("Is ice hot?", " No.", " Yes."),
        ("Is 2 > 1?", " Yes.", " No."),
        ("Is 1 > 2?", " No.", " Yes."),
        ("Sky color?", " Blue.", " Green."),
        ("Grass color?", " Green.", " Blue."),
    ];
    let jsonl: String = facts
        .iter()
        .map(|(p, c, r)| {
            format!("{{\"prompt\": \"{p}\", \"chosen\": \"{c}\", \"rejected\": \"{r}\"}}\n")
        })
        .collect();
    let records = parse_jsonl(&jsonl).unwrap();
    let config = SessionConfig {
        loss: LossMix::single(LossKind::Sigmoid),
        params: LossParams::default(),
        optimizer: AdamWConfig { lr: 1e-3, ..AdamWConfig::default() },
        batch_size: 4,
        seed: 2,
        eval_every: 1,
        final_step: 0,
        kl_sampled_every: 0,
    };
    let params = init_params(&MICRO, 5);
    let Some(gpu_engine) = gpu(MICRO, params.clone()) else { return };
    let Some(gpu_sync_engine) = gpu(MICRO, params.clone()) else { return };
    let mut on_gpu = pollster::block_on(Session::new_async(
        gpu_engine,
        &Tokenizer::Char,
        &records,
        config.clone(),
    ))
    .unwrap();
    let mut on_gpu_sync =
        Session::new(gpu_sync_engine, &Tokenizer::Char, &records, config.clone()).unwrap();
    let mut on_cpu =
        Session::new(CpuEngine::new(MICRO, params).unwrap(), &Tokenizer::Char, &records, config)
            .unwrap();
    let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    assert_close("reference logps", &to_f32(on_gpu.row_logps().0), &to_f32(on_cpu.row_logps().0));
    let ches = |s: &[lab_train::PairStats]| s.iter().map(|p| p.ches as f32).collect::<Vec<f32>>();
    assert_close("CHES", &ches(on_gpu.pairs()), &ches(on_cpu.pairs()));
    let (async_before, sync_before) =
        (on_gpu.engine().sync_counts(), on_gpu_sync.engine().sync_counts());
    let (mut gpu_losses, mut cpu_losses) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        gpu_losses.push(pollster::block_on(on_gpu.step_async()).unwrap().loss as f32);
        cpu_losses.push(on_cpu.step().unwrap().loss as f32);
        on_gpu_sync.step().unwrap();
    }
    eprintln!("cpu loss curve {cpu_losses:?}");
    eprintln!("gpu loss curve {gpu_losses:?}");
    assert!(
        cpu_losses[9] < cpu_losses[0],
        "the run must learn for the comparison to mean anything"
    );
    assert_close("loss curve", &gpu_losses, &cpu_losses);
    assert_close(
        "policy logps after 10 steps",
        &to_f32(on_gpu.row_logps().1),
        &to_f32(on_cpu.row_logps().1),
    );
    // eval/kl is a small number made of logit differences: held to 1e-3 of itself
    let (gpu_kl, cpu_kl) = (on_gpu.instruments().kl, on_cpu.instruments().kl);
    eprintln!("eval/kl after 10 steps: gpu {gpu_kl}, cpu {cpu_kl}");
    assert!(cpu_kl > 0.0 && (gpu_kl - cpu_kl).abs() <= 1e-3 * cpu_kl, "{gpu_kl} vs {cpu_kl}");
    let spent = |after: lab_gpu::SyncCounts, before: lab_gpu::SyncCounts| {
        (after.submissions - before.submissions, after.readbacks - before.readbacks)
    };
    let (async_spent, sync_spent) = (
        spent(on_gpu.engine().sync_counts(), async_before),
        spent(on_gpu_sync.engine().sync_counts(), sync_before),
    );
    eprintln!("10 steps, (submissions, readbacks): async {async_spent:?}, sync {sync_spent:?}");
    assert_eq!(async_spent, sync_spent, "step_async must cost what step costs");
    // the awaited readback returns exactly what the blocking one does
    let weights = pollster::block_on(on_gpu.engine().params_async()).unwrap();
    assert_eq!(weights.len(), MICRO.layout().total);
    assert!(
        weights.iter().zip(on_gpu.engine().params()).all(|(a, b)| a.to_bits() == b.to_bits()),
        "params_async differs from params"
    );
}

/// Every loss of the zoo (and a mix) evaluated by loss.wgsl inside the GPU's training step
/// against lab-core's f64 loss functions in the CPU engine's step: the parameter gradients
/// the two backwards produce from them. The 12 rows are 6 pairs, 12 KTO examples, or 4
/// ranked lists of 3, 2, 4 and 3. The learning rate is 0, so both models
/// stay as they were and every kind meets the same log-probs; the reference log-probs are
/// the policy's plus noise, so the margins, ratios and AOT's sort orders vary across pairs.
#[test]
fn every_loss_gradient_on_the_gpu_matches_cpu() {
    let cfg = RAGGED;
    let params = random_params(&cfg, 21);
    let Some(mut gpu) = gpu(cfg, params.clone()) else { return };
    let mut cpu = CpuEngine::new(cfg, params.clone()).unwrap();
    let batch = random_batch(&cfg, 12, 20, 22);
    let mut rng = Rng::new(23);
    let policy = cpu.forward(&batch).unwrap().seq_logps;
    let reference: Vec<f64> = policy.iter().map(|&l| f64::from(l) + rng.normal() as f64).collect();
    let lengths: Vec<f64> = batch.scored_lengths().iter().map(|&n| n as f64).collect();
    let frozen = AdamWConfig { lr: 0.0, ..AdamWConfig::default() };
    let params_of = LossParams { label_smoothing: 0.1, ..LossParams::default() };
    let desirable = [true, false, false, true, true, false, true, false, false, false, true, true];
    let sizes = [3, 2, 4, 3];
    let rows_of = |kind: LossKind| match kind.data_shape() {
        DataShape::Paired => Rows::Pairs,
        DataShape::Unpaired => Rows::Unpaired(&desirable),
        DataShape::Ranked => Rows::Ranked(&sizes),
    };
    let mut mixes: Vec<(LossMix, Rows)> =
        LossKind::ALL.iter().map(|&k| (LossMix::single(k), rows_of(k))).collect();
    // a mix of closed-form kinds (loss.wgsl `gradient`) and one with a batch-level term
    // (`gradient_batch`)
    mixes.push((LossMix::parse("sigmoid+0.5*hinge+0.25*ipo").unwrap(), Rows::Pairs));
    mixes.push((LossMix::parse("sigmoid+0.5*sft+0.25*ipo").unwrap(), Rows::Pairs));
    for (step, (mix, rows)) in (1..).zip(&mixes) {
        // robust's ε is a flip rate below 0.5, exo reads its own; 0.1 suits every kind
        let loss = StepLoss {
            mix,
            params: &params_of,
            rows: *rows,
            reference: &reference,
            lengths: &lengths,
        };
        let on_gpu = gpu.train_step(&batch, &loss, &frozen, step).unwrap();
        let on_cpu = cpu.train_step(&batch, &loss, &frozen, step).unwrap();
        assert_close(&format!("{} seq logps", mix.name()), &on_gpu.seq_logps, &on_cpu.seq_logps);
        assert_tensors_close(&format!("{} grad", mix.name()), &cfg, &gpu.grads(), &cpu.grads());
    }
    assert!(
        gpu.params().iter().zip(&params).all(|(a, b)| a.to_bits() == b.to_bits()),
        "lr 0 keeps the weights"
    );
}

/// The GPU's training step: one submission and one readback; a mix past loss.wgsl's eight
/// terms goes in parts and still trains like the CPU engine.
#[test]
fn a_train_step_is_one_submission_and_one_readback() {
    let cfg = RAGGED;
    let params = random_params(&cfg, 31);
    let Some(mut plain) = gpu(cfg, params.clone()) else { return };
    let batch = random_batch(&cfg, 6, 16, 32);
    let mix = LossMix::single(LossKind::Sigmoid);
    let loss_params = LossParams::default();
    let opt = AdamWConfig { lr: 1e-2, ..AdamWConfig::default() };
    let Some(mut reference) = gpu(cfg, random_params(&cfg, 33)) else { return };
    let reference_logps: Vec<f64> =
        reference.forward(&batch).unwrap().seq_logps.iter().map(|&v| f64::from(v)).collect();
    let lengths: Vec<f64> = batch.scored_lengths().iter().map(|&n| n as f64).collect();
    let loss = StepLoss {
        mix: &mix,
        params: &loss_params,
        rows: Rows::Pairs,
        reference: &reference_logps,
        lengths: &lengths,
    };
    let before = plain.sync_counts();
    for step in 1..=3 {
        plain.train_step(&batch, &loss, &opt, step).unwrap();
    }
    let after = plain.sync_counts();
    assert_eq!(
        (after.submissions - before.submissions, after.readbacks - before.readbacks),
        (3, 3),
        "one submission and one readback a step"
    );

    // a mix of more than eight terms is past loss.wgsl: the step runs in parts (two
    // submissions), its loss on the CPU, and still trains like the CPU engine
    let Some(mut long_mix) = gpu(cfg, params.clone()) else { return };
    let mut cpu = CpuEngine::new(cfg, params.clone()).unwrap();
    let nine = LossMix::parse(&["sigmoid"; 9].join("+")).unwrap();
    let nine_loss = StepLoss { mix: &nine, ..loss };
    let before = long_mix.sync_counts();
    for step in 1..=2 {
        long_mix.train_step(&batch, &nine_loss, &opt, step).unwrap();
        cpu.train_step(&batch, &nine_loss, &opt, step).unwrap();
    }
    let after = long_mix.sync_counts();
    assert_eq!(
        (after.submissions - before.submissions, after.readbacks - before.readbacks),
        (4, 2),
        "a nine-term mix goes in parts"
    );
    assert_weights_close(
        "weights, nine-term mix",
        &cfg,
        &long_mix.params(),
        &cpu.params(),
        opt.lr,
        2,
    );
}

/// A step whose loss is not finite is an error naming the step, and changes nothing on
/// either engine; the GPU's next steps (whole or in parts) train again.
#[test]
fn a_non_finite_loss_is_reported_and_leaves_the_model_unchanged() {
    let cfg = RAGGED;
    let mut params = random_params(&cfg, 41);
    // an infinite token embedding makes the log-probs not finite (as a diverged run does)
    let wte = cfg.layout().wte;
    params[wte..wte + cfg.d_model].fill(f32::INFINITY);
    let Some(mut gpu) = gpu(cfg, params.clone()) else { return };
    let mut cpu = CpuEngine::new(cfg, params.clone()).unwrap();
    let batch = TokenBatch::from_rows(&[(vec![0, 0, 0, 5], 1), (vec![0, 0, 7, 0], 1)]).unwrap();
    let mix = LossMix::single(LossKind::Sigmoid);
    let loss_params = LossParams::default();
    let loss = StepLoss {
        mix: &mix,
        params: &loss_params,
        rows: Rows::Pairs,
        reference: &[-5.0, -6.0],
        lengths: &[3.0, 3.0],
    };
    let opt = AdamWConfig::default();
    for (name, engine) in
        [("gpu", &mut gpu as &mut dyn Engine), ("cpu", &mut cpu as &mut dyn Engine)]
    {
        let err = engine.train_step(&batch, &loss, &opt, 1).unwrap_err().to_string();
        assert!(err.contains("step 1") && err.contains("not finite"), "{name}: {err}");
        assert!(
            engine.params().iter().zip(&params).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: the weights changed"
        );
    }
    // the GPU's failed step left its loss status set: a step in parts must not be held
    // back by it, and the next whole step sets it afresh
    let sane = random_params(&cfg, 42);
    gpu.set_params(&sane).unwrap();
    let out = gpu.forward(&batch).unwrap();
    assert!(out.seq_logps.iter().all(|v| v.is_finite()));
    gpu.backward(&[1.0, -1.0]).unwrap();
    gpu.adamw_step(&opt, 1).unwrap();
    let after_parts = gpu.params();
    assert!(
        after_parts.iter().zip(&sane).any(|(a, b)| a != b),
        "adamw_step after a failed training step updates"
    );
    gpu.train_step(&batch, &loss, &opt, 2).unwrap();
    assert!(
        gpu.params().iter().zip(&after_parts).any(|(a, b)| a != b),
        "a finite training step updates"
    );
    let err = gpu
        .train_step(&batch, &StepLoss { reference: &[f64::NAN, 0.0], ..loss }, &opt, 3)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("reference") && err.contains("row 0"), "{err}");
}

/// An evaluation in chunks (two of the same shape, a third smaller) submitted together and
/// read back after (`forwards_async`, the browser's evaluation after a step): the same
/// outputs bit for bit as one forward at a time, twice in a row (the staging buffers come
/// back unmapped); and a session that evaluates 140 rows after every step gives the same
/// records awaited as blocking.
#[test]
fn queued_forwards_match_one_at_a_time() {
    let cfg = RAGGED;
    let params = random_params(&cfg, 51);
    let Some(mut queued) = gpu(cfg, params.clone()) else { return };
    let Some(mut single) = gpu(cfg, params) else { return };
    let batches = [
        random_batch(&cfg, 5, 16, 52),
        random_batch(&cfg, 5, 16, 53),
        random_batch(&cfg, 2, 9, 54),
    ];
    assert_eq!(
        (batches[0].batch, batches[0].seq_len),
        (batches[1].batch, batches[1].seq_len),
        "two chunks of one shape"
    );
    for round in 0..2 {
        let before = queued.sync_counts();
        let outs = pollster::block_on(queued.forwards_async(&batches)).unwrap();
        let after = queued.sync_counts();
        assert_eq!(
            (after.submissions - before.submissions, after.readbacks - before.readbacks),
            (3, 3),
            "a submission and a readback each"
        );
        for (out, batch) in outs.iter().zip(&batches) {
            assert_eq!(*out, single.forward(batch).unwrap(), "round {round}");
        }
    }

    let jsonl: String = (0..70)
        .map(|i| {
            format!(
                "{{\"prompt\": \"Q{i}?\", \"chosen\": \" Yes {}.\", \"rejected\": \" No.\"}}\n",
                i % 7
            )
        })
        .collect();
    let records = parse_jsonl(&jsonl).unwrap();
    let config = SessionConfig {
        loss: LossMix::single(LossKind::Sigmoid),
        params: LossParams::default(),
        optimizer: AdamWConfig { lr: 1e-3, ..AdamWConfig::default() },
        batch_size: 4,
        seed: 5,
        eval_every: 1,
        final_step: 0,
        kl_sampled_every: 0,
    };
    let params = init_params(&MICRO, 11);
    let Some(awaited_engine) = gpu(MICRO, params.clone()) else { return };
    let Some(blocking_engine) = gpu(MICRO, params) else { return };
    let mut awaited = pollster::block_on(Session::new_async(
        awaited_engine,
        &Tokenizer::Char,
        &records,
        config.clone(),
    ))
    .unwrap();
    let mut blocking = Session::new(blocking_engine, &Tokenizer::Char, &records, config).unwrap();
    for _ in 0..3 {
        let (a, b) = (pollster::block_on(awaited.step_async()).unwrap(), blocking.step().unwrap());
        assert_eq!(a.loss.to_bits(), b.loss.to_bits());
        assert_eq!(
            format!("{:?}", a.eval),
            format!("{:?}", b.eval),
            "the evaluation after the step"
        );
    }
    assert_eq!(awaited.row_logps().1, blocking.row_logps().1);
}

#[test]
fn a_dpo_step_costs_two_submissions_and_one_readback() {
    let cfg = RAGGED;
    let Some(mut gpu) = gpu(cfg, random_params(&cfg, 8)) else { return };
    let batch = random_batch(&cfg, 4, 16, 9);
    let opt = AdamWConfig::default();
    // the first step builds the plan for this shape
    gpu.forward(&batch).unwrap();
    gpu.backward(&[0.5, -0.5, 0.25, -0.25]).unwrap();
    gpu.adamw_step(&opt, 1).unwrap();
    let before = gpu.sync_counts();
    for step in 2..=4 {
        let out = gpu.forward(&batch).unwrap();
        let d_seq: Vec<f32> = out.seq_logps.iter().map(|l| -l.signum()).collect();
        gpu.backward(&d_seq).unwrap();
        gpu.adamw_step(&opt, step).unwrap();
    }
    let after = gpu.sync_counts();
    assert_eq!(after.readbacks - before.readbacks, 3, "one readback per step");
    assert_eq!(after.submissions - before.submissions, 6, "two submissions per step");
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let cfg = RAGGED;
    let Some(mut gpu) = gpu(cfg, random_params(&cfg, 9)) else { return };
    let err = gpu.backward(&[1.0]).unwrap_err().to_string();
    assert!(err.contains("before forward"), "{err}");
    let too_long = random_batch(&cfg, 1, cfg.ctx + 1, 1);
    let err = gpu.forward(&too_long).unwrap_err().to_string();
    assert!(err.contains("exceeds the model's context"), "{err}");
    let batch = random_batch(&cfg, 2, 10, 1);
    gpu.forward(&batch).unwrap();
    let err = gpu.backward(&[1.0]).unwrap_err().to_string();
    assert!(err.contains("1 sequence gradients for a forward of 2 rows"), "{err}");
    let err = gpu.adamw_step(&AdamWConfig::default(), 0).unwrap_err().to_string();
    assert!(err.contains("count from 1"), "{err}");
    let err = gpu.set_params(&[0.0; 3]).unwrap_err().to_string();
    assert!(err.contains("3 parameters given"), "{err}");
    let err = GpuEngine::new(gpu.device().clone(), gpu.queue().clone(), cfg, vec![0.0; 5])
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 parameters given"), "{err}");
}

#[test]
fn a_lost_device_is_reported_not_a_hang() {
    let cfg = RAGGED;
    let Some(mut gpu) = gpu(cfg, random_params(&cfg, 12)) else { return };
    let batch = random_batch(&cfg, 2, 10, 1);
    gpu.forward(&batch).unwrap();
    gpu.device().destroy(); // what a driver reset or a browser tab losing its GPU looks like
    let err = gpu.forward(&batch).unwrap_err().to_string();
    eprintln!("after device loss: {err}");
    assert!(err.contains("lost") || err.contains("GPU error"), "{err}");
}

#[test]
fn per_kernel_timestamps_cover_the_step_when_the_adapter_has_them() {
    let cfg = GptConfig::TINY;
    let Some(mut gpu) = gpu(cfg, random_params(&cfg, 10)) else { return };
    let batch = random_batch(&cfg, 4, 48, 11);
    // both ways of timing where the adapter has both (timestamps inside one pass, or a
    // pass per launch)
    let methods = [Method::InsidePass, Method::PassPerLaunch]
        .into_iter()
        .filter(|&m| m == Method::PassPerLaunch || Method::best(gpu.device()) == m);
    for method in methods.collect::<Vec<_>>() {
        let Some(profile) = gpu
            .profile_step(&batch, &[1.0, -1.0, 0.5, -0.5], &AdamWConfig::default(), 1, method)
            .unwrap()
        else {
            eprintln!("adapter {} has no TIMESTAMP_QUERY; no per-kernel times", gpu.name());
            return;
        };
        eprintln!("{}", method.name());
        assert_eq!(profile.method, method);
        for k in &profile.kernels {
            eprintln!("{:>28} {:>4} launches {:>10.1} us", k.kernel, k.launches, k.total_us);
        }
        eprintln!("{:>28} {:>10.1} us", "total", profile.total_us);
        let launches: usize = profile.kernels.iter().map(|k| k.launches).sum();
        // forward 8L + 5 (attention: two batched GEMMs, the softmax in the first's
        // epilogue at T ≤ 64; GELU in the fc GEMM's epilogue; the projection back from
        // 4C split along its depth, its slabs added up by the next LayerNorm);
        // backward 16L + 8 (each weight gradient and LayerNorm parameter gradient is one
        // split pass, all of their slabs summed by one gather_grads at the end; the
        // input gradients of fc and qkv are split at this shape, their slabs added up
        // by the LayerNorm backward after them; GELU′ in fcproj's input gradient;
        // attention four GEMMs, the softmax's backward in the first's epilogue); the
        // loss's gradient 1; AdamW 1
        assert_eq!(launches, 24 * cfg.n_layer + 15);
        assert_eq!(profile.launches.len(), launches);
        assert!(profile.total_us > 0.0);
        // the GEMMs' flops (2 per multiply-add, for the profile's TFLOP/s): per layer,
        // forward 24NC² (qkv, attproj, fc, fcproj) + 4NTC (QKᵀ, att·V), backward twice the
        // linear layers plus their bias columns (18NC) and four attention products; the head
        // 2NCV forward, 6NCV backward (its input gradient, wte's gradient, the one-hot
        // embedding gradient). Zero for every other kernel.
        let (n, c, t, v) = (
            (batch.batch * batch.seq_len) as u64,
            cfg.d_model as u64,
            batch.seq_len as u64,
            cfg.vocab as u64,
        );
        let expected =
            cfg.n_layer as u64 * (72 * n * c * c + 18 * n * c + 12 * n * t * c) + 8 * n * c * v;
        let flops: u64 = profile.launches.iter().map(|l| l.3).sum();
        assert_eq!(flops, expected, "GEMM flops of the step");
        assert!(
            profile
                .launches
                .iter()
                .all(|(kernel, _, _, f)| (*f > 0) == kernel.starts_with("matmul:")),
            "flops on the GEMMs only"
        );
    }
}
