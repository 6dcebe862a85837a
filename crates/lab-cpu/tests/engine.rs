//! Whole-engine properties: the full model's gradient against finite differences (f64),
//! f32 ↔ f64 parity, the score mask, AdamW by hand, determinism across runs and thread
//! counts, and the errors a caller can hit.

use lab_core::config::{init_params, GptConfig};
use lab_core::engine::{AdamWConfig, Engine, TokenBatch};
use lab_core::rng::Rng;
use lab_cpu::adamw::adamw_update;
use lab_cpu::model::Gpt;
use lab_cpu::CpuEngine;

/// V = 11, ctx 8, C = 8, L = 2, NH = 2.
const MICRO: GptConfig = GptConfig { vocab: 11, ctx: 8, d_model: 8, n_layer: 2, n_head: 2 };

/// Three rows of 8 tokens: scoring from 3, from 6 (last token padded after), only token 1.
fn micro_batch(rng: &mut Rng) -> TokenBatch {
    let (b, t) = (3, 8);
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(MICRO.vocab) as u32).collect();
    let mut score_mask = vec![0.0; b * t];
    score_mask[3..8].fill(1.0);
    score_mask[t + 6] = 1.0;
    score_mask[2 * t + 1] = 1.0;
    TokenBatch { batch: b, seq_len: t, tokens, score_mask }
}

/// GPT-2 init plus noise on every entry, so LayerNorm gains, biases and the residual
/// projections are all away from their special init values.
fn micro_params(seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    init_params(&MICRO, seed).iter().map(|p| p + 0.2 * rng.normal()).collect()
}

#[test]
fn whole_model_gradient_matches_finite_differences_in_f64() {
    let mut rng = Rng::new(11);
    let batch = micro_batch(&mut rng);
    let params: Vec<f64> = micro_params(12).iter().map(|&p| p as f64).collect();
    let weights = [0.9, -1.7, 0.4]; // d(Σ_b w_b seq_logp_b)/d(seq_logp_b)
    let mask: Vec<f64> = batch.score_mask.iter().map(|&m| m as f64).collect();
    let mut model = Gpt::new(MICRO, params.clone());
    let loss = |model: &mut Gpt<f64>| -> f64 {
        let out = model.forward(&batch.tokens, &mask, batch.batch, batch.seq_len);
        out.seq_logps.iter().zip(&weights).map(|(s, w)| s * w).sum()
    };
    loss(&mut model);
    model.backward(&weights);
    let grads = model.grads.clone();
    let h = 1e-6;
    for (name, offset, shape) in MICRO.layout().tensors(&MICRO) {
        let len: usize = shape.iter().product();
        let mut worst = 0.0f64;
        // 8 entries spread over the tensor, both layers of stacked ones included
        for j in 0..8 {
            let i = offset + (j * len) / 8 + (j * 7919) % (len / 8).max(1);
            let p0 = model.params[i];
            model.params[i] = p0 + h;
            let up = loss(&mut model);
            model.params[i] = p0 - h;
            let down = loss(&mut model);
            model.params[i] = p0;
            let numeric = (up - down) / (2.0 * h);
            let err = (grads[i] - numeric).abs();
            assert!(
                err <= 1e-7 + 1e-6 * numeric.abs(),
                "{name}[{}]: analytic {} numeric {numeric}",
                i - offset,
                grads[i]
            );
            worst = worst.max(err);
        }
        eprintln!("{name:9} max abs diff {worst:e}");
    }
}

#[test]
fn f32_engine_matches_f64_model_within_1e_4_of_each_tensors_scale() {
    let mut rng = Rng::new(21);
    let batch = micro_batch(&mut rng);
    let params = micro_params(22);
    let d_seq = [0.9f32, -1.7, 0.4];
    let mut engine = CpuEngine::new(MICRO, params.clone()).unwrap();
    let out = engine.forward(&batch).unwrap();
    engine.backward(&d_seq).unwrap();
    let grads32 = engine.grads();
    let mut model = Gpt::new(MICRO, params.iter().map(|&p| p as f64).collect());
    let mask: Vec<f64> = batch.score_mask.iter().map(|&m| m as f64).collect();
    let out64 = model.forward(&batch.tokens, &mask, batch.batch, batch.seq_len);
    model.backward(&d_seq.map(|d| d as f64));
    for (s32, s64) in out.seq_logps.iter().zip(&out64.seq_logps) {
        assert!((*s32 as f64 - s64).abs() < 1e-5 * (1.0 + s64.abs()), "seq logp {s32} vs {s64}");
    }
    for (name, offset, shape) in MICRO.layout().tensors(&MICRO) {
        let len: usize = shape.iter().product();
        let g64 = &model.grads[offset..offset + len];
        let scale = g64.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        let diff = grads32[offset..offset + len]
            .iter()
            .zip(g64)
            .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        assert!(diff <= 1e-4 * scale.max(1e-6), "{name}: max abs diff {diff:e} vs scale {scale:e}");
    }
}

#[test]
fn tokens_after_the_last_scored_position_change_nothing() {
    let mut rng = Rng::new(31);
    let mut batch = micro_batch(&mut rng);
    let mut engine = CpuEngine::new(MICRO, micro_params(32)).unwrap();
    let d_seq = [1.0, -0.5, 0.25];
    let before = engine.forward(&batch).unwrap();
    engine.backward(&d_seq).unwrap();
    let grads_before = engine.grads();
    // row 1 scores only token 6; token 7 is padding. Row 2 scores only token 1.
    batch.tokens[8 + 7] = (batch.tokens[8 + 7] + 1) % MICRO.vocab as u32;
    batch.tokens[16 + 5] = (batch.tokens[16 + 5] + 3) % MICRO.vocab as u32;
    let after = engine.forward(&batch).unwrap();
    engine.backward(&d_seq).unwrap();
    assert_eq!(before.seq_logps, after.seq_logps);
    assert_eq!(before.token_logps, after.token_logps);
    assert_eq!(before.topk_entropy, after.topk_entropy);
    assert_eq!(grads_before, engine.grads());
    // whereas changing a scored token does change its row
    batch.tokens[8 + 6] = (batch.tokens[8 + 6] + 1) % MICRO.vocab as u32;
    let changed = engine.forward(&batch).unwrap();
    assert_ne!(changed.seq_logps[1], before.seq_logps[1]);
    assert_eq!(changed.seq_logps[0], before.seq_logps[0]);
}

#[test]
fn token_logps_agree_with_log_softmax_of_logits_and_shapes_hold() {
    let mut rng = Rng::new(41);
    let batch = micro_batch(&mut rng);
    let mut engine = CpuEngine::new(MICRO, micro_params(42)).unwrap();
    let out = engine.forward(&batch).unwrap();
    let logits = engine.logits(&batch).unwrap();
    let hidden = engine.hidden_states(&batch).unwrap();
    let (b, t, v, c) = (batch.batch, batch.seq_len, MICRO.vocab, MICRO.d_model);
    assert_eq!((logits.len(), hidden.len(), out.token_logps.len()), (b * t * v, b * t * c, b * t));
    for bt in 0..b * t {
        if batch.score_mask[bt] == 0.0 {
            assert_eq!(out.token_logps[bt], 0.0);
            continue;
        }
        let row = &logits[(bt - 1) * v..bt * v];
        let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        let want = row[batch.tokens[bt] as usize] as f64 - lse;
        assert!(
            (out.token_logps[bt] as f64 - want).abs() < 1e-5,
            "{bt}: {} vs {want}",
            out.token_logps[bt]
        );
    }
    // top-k instruments are in range: mass in (0, 1], entropy in [0, log2(10)]
    for row in 0..b {
        assert!(out.topk_mass[row] > 0.0 && out.topk_mass[row] <= 1.0 + 1e-6);
        assert!(out.topk_entropy[row] >= 0.0 && out.topk_entropy[row] <= 10f32.log2());
    }
    // LM head is tied: logits = hidden · wteᵀ
    let params = engine.params();
    let wte = &params[..v * c];
    let want: f32 = (0..c).map(|i| hidden[5 * c + i] * wte[3 * c + i]).sum();
    assert!((logits[5 * v + 3] - want).abs() < 1e-5);
}

#[test]
fn adamw_matches_a_hand_computed_two_step_update() {
    let opt = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let p0 = [1.0f64, -2.0, 0.5];
    let g1 = [0.5f64, -0.25, 0.0];
    let g2 = [-1.0f64, 0.75, 2.0];
    // by hand, textbook form: m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ), p ← p − lr·wd·p − lr·m̂/(√v̂ + ε)
    let (lr, b1, b2, eps, wd) = (0.1f64, 0.9f64, 0.999f64, 1e-8f64, 0.01f64);
    let mut want = p0;
    let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
    let mut after_step1 = p0;
    for (step, g) in [(1, g1), (2, g2)] {
        for i in 0..3 {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let m_hat = m[i] / (1.0 - b1.powi(step));
            let v_hat = v[i] / (1.0 - b2.powi(step));
            want[i] = want[i] - lr * wd * want[i] - lr * m_hat / (v_hat.sqrt() + eps);
        }
        if step == 1 {
            after_step1 = want;
        }
    }
    // step 1 moves each parameter by lr against its gradient's sign (m̂/√v̂ = ±1), plus decay
    assert!((after_step1[0] - (1.0 - 0.001 - 0.1)).abs() < 1e-6);
    assert!((after_step1[2] - 0.5 * (1.0 - 0.001)).abs() < 1e-12);
    let mut params = p0.map(|p| p as f32);
    let (mut m32, mut v32) = ([0.0f32; 3], [0.0f32; 3]);
    adamw_update(&mut params, &g1.map(|g| g as f32), &mut m32, &mut v32, &opt, 1);
    adamw_update(&mut params, &g2.map(|g| g as f32), &mut m32, &mut v32, &opt, 2);
    for i in 0..3 {
        assert!(
            (params[i] as f64 - want[i]).abs() < 1e-6,
            "param {i}: {} vs {}",
            params[i],
            want[i]
        );
    }
}

#[test]
fn training_steps_are_bit_identical_across_runs_and_thread_counts() {
    let run = |threads: usize| -> (Vec<f32>, Vec<f32>) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let cfg = GptConfig { vocab: 96, ctx: 64, d_model: 32, n_layer: 2, n_head: 4 };
            let mut rng = Rng::new(51);
            let rows: Vec<(Vec<u32>, usize)> = (0..6)
                .map(|r| ((0..20 + 7 * r).map(|_| rng.below(96) as u32).collect(), 3 + r))
                .collect();
            let batch = TokenBatch::from_rows(&rows).unwrap();
            let mut engine = CpuEngine::random(cfg, 52).unwrap();
            let opt = AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() };
            for step in 1..=3 {
                let out = engine.forward(&batch).unwrap();
                let d_seq: Vec<f32> = out.seq_logps.iter().map(|s| -0.1 * s.tanh()).collect();
                engine.backward(&d_seq).unwrap();
                engine.adamw_step(&opt, step).unwrap();
            }
            (engine.grads(), engine.params())
        })
    };
    let (g1, p1) = run(2);
    let (g2, p2) = run(2);
    let (g3, p3) = run(1);
    let (g4, p4) = run(3);
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&g1), bits(&g2));
    assert_eq!(bits(&p1), bits(&p2));
    assert_eq!(bits(&g1), bits(&g3));
    assert_eq!(bits(&p1), bits(&p3));
    assert_eq!(bits(&g1), bits(&g4));
    assert_eq!(bits(&p1), bits(&p4));
    assert!(g1.iter().any(|&g| g != 0.0));
}

#[test]
fn errors_name_the_problem() {
    let err = CpuEngine::new(MICRO, vec![0.0; 10]).unwrap_err();
    assert!(err.to_string().contains("10 parameters"), "{err}");
    let mut engine = CpuEngine::random(MICRO, 1).unwrap();
    assert!(engine.backward(&[1.0]).unwrap_err().to_string().contains("before forward"));
    let mut rng = Rng::new(61);
    let batch = micro_batch(&mut rng);
    engine.forward(&batch).unwrap();
    assert!(engine.backward(&[1.0]).unwrap_err().to_string().contains("3 rows"));
    assert!(engine.adamw_step(&AdamWConfig::default(), 0).is_err());
    let mut long = batch.clone();
    long.seq_len = 9;
    long.tokens = vec![0; 27];
    long.score_mask = vec![0.0; 27];
    assert!(engine.forward(&long).unwrap_err().to_string().contains("context"));
    assert!(engine.set_params(&[0.0; 3]).is_err());
    assert!(CpuEngine::random(GptConfig { n_head: 3, ..MICRO }, 1).is_err());
}

/// `set_params_keep_optimizer` swaps weights without touching AdamW's moments: a detour
/// through other weights and back leaves the next update bit for bit as it was, while
/// `set_params` (which resets the moments) changes it.
#[test]
fn swapping_weights_in_and_out_keeps_the_optimizer_state() {
    let mut rng = Rng::new(71);
    let batch = micro_batch(&mut rng);
    let opt = AdamWConfig { lr: 1e-2, ..AdamWConfig::default() };
    let two_steps = |detour: &dyn Fn(&mut CpuEngine)| {
        let mut engine = CpuEngine::new(MICRO, micro_params(72)).unwrap();
        for step in 1..=2 {
            engine.forward(&batch).unwrap();
            engine.backward(&[1.0, -0.5, 0.25]).unwrap();
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
        engine.set_params_keep_optimizer(&micro_params(73)).unwrap();
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
    let mut engine = CpuEngine::random(MICRO, 1).unwrap();
    assert!(engine.set_params_keep_optimizer(&[0.0; 3]).is_err());
}

/// Frozen tensors (a LoRA base's) skip their parameter-gradient products: every other
/// tensor's gradient is the same, bit for bit, and theirs reads zero; a name the layout
/// does not have is refused.
#[test]
fn frozen_tensors_read_zero_and_leave_the_others_bit_for_bit() {
    let cfg = MICRO;
    let mut rng = Rng::new(5);
    let batch = micro_batch(&mut rng);
    let d_seq: Vec<f32> = (0..batch.batch).map(|b| if b % 2 == 0 { 0.5 } else { -0.25 }).collect();
    let gradient = |frozen: &[&str]| {
        let mut engine = CpuEngine::new(cfg, micro_params(3)).unwrap();
        engine.freeze(frozen).unwrap();
        engine.forward(&batch).unwrap();
        engine.backward(&d_seq).unwrap();
        engine.grads()
    };
    let all = gradient(&[]);
    let frozen = ["wte", "wpe", "ln1w", "ln1b", "qkvb", "attprojw", "attprojb", "fcw", "lnfw"];
    let some = gradient(&frozen);
    for (name, offset, shape) in cfg.layout().tensors(&cfg) {
        let range = offset..offset + shape.iter().product::<usize>();
        if frozen.contains(&name) {
            assert!(some[range].iter().all(|&g| g == 0.0), "{name} is frozen");
        } else {
            assert!(all[range.clone()].iter().any(|&g| g != 0.0), "{name} has a gradient");
            assert!(
                all[range.clone()]
                    .iter()
                    .zip(&some[range])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}"
            );
        }
    }
    let mut engine = CpuEngine::new(cfg, micro_params(3)).unwrap();
    let err = engine.freeze(&["wte", "c_attn"]).unwrap_err().to_string();
    assert!(err.contains("\"c_attn\""), "{err}");
}
