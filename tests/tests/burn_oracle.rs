//! The burn gradient oracle: the same GPT-2, written a second time in burn from the spec in
//! `lab_core::config` / `lab_core::engine` (not ported from lab-cpu), differentiated by burn's
//! autodiff, and compared with `lab_cpu::CpuEngine` tensor by tensor — llm.c's
//! `test_gpt2.c` with burn in the role of PyTorch.
//!
//! What is checked, on a micro model (V=96, ctx 16, C=32, L=2, NH=4) and one batch of
//! B=4 rows × T=12 tokens with prompt/completion masks and right padding in row 2:
//! 1. hidden states after the final LayerNorm (B,T,C) and logits (B,T,V);
//! 2. per-token (B,T) and per-sequence (B) log-probs, and the DPO loss value;
//! 3. the gradient of the DPO sigmoid loss over 2 pairs for EVERY parameter tensor:
//!    the CPU engine is handed d loss / d seq_logp (derived by hand below) and back-propagates
//!    it; burn differentiates the whole graph, loss included, by itself.
//!
//! Tolerance (f32 on both sides, different summation orders): a tensor passes when
//!     max_i |cpu_i − burn_i| ≤ TOL · max(max_i |burn_i|, FLOOR)
//! i.e. the max-norm error relative to the tensor's own max-norm. Elementwise relative error
//! is not used as the criterion: gradients contain entries that are near zero by cancellation
//! (and rows of wpe beyond T that are exactly zero), where f32 round-off alone gives relative
//! errors of order one. The normwise criterion still catches every bug class we care about
//! (a wrong sign, factor, transpose, index or missing term moves the worst entry by a sizeable
//! fraction of the tensor's scale); what it forgives is error below TOL of the largest entry.
//! FLOOR keeps an all-zero tensor from demanding exact zeros. The elementwise relative error
//! over entries with |burn_i| ≥ 1e-2 · scale is printed alongside for the reader.
//!
//! Parameters: `CpuEngine::random`'s GPT-2 init, then "sharpened" (matrices ×8, random biases,
//! LayerNorm gains 1 ± 0.2), so attention is far from uniform and no bias is zero: at raw
//! init a wrong attention scale or a forgotten bias would barely move the numbers.
//!
//! Run: `cargo test -p lab-tests --release --test burn_oracle -- --nocapture` for the table.

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, log_softmax, softmax};
use lab_core::rng::Rng;
use lab_core::{Engine, GptConfig, TokenBatch};
use lab_cpu::CpuEngine;

/// Forward tensors (hidden states, logits, log-probs, loss): normwise relative error.
/// Measured ≤ 5.1e-7 (burn 0.22.1 flex, x86-64): ~20× headroom for reordered sums.
const FWD_TOL: f64 = 1e-5;
/// Parameter gradients: normwise relative error. Measured ≤ 6.2e-7: ~16× headroom, while a
/// 0.1% error in one row's d loss/d seq_logp already gives 3e-4 in every tensor.
const GRAD_TOL: f64 = 1e-5;
/// Smallest scale a tensor is measured against.
const FLOOR: f64 = 1e-6;

const LN_EPS: f32 = 1e-5;
/// DPO temperature β.
const BETA: f64 = 0.1;
/// Reference-model sequence log-probs for rows 0..4: pair 0 = (row 0 chosen, row 1 rejected),
/// pair 1 = (row 2 chosen, row 3 rejected). Fixed numbers near what the micro model gives, so
/// the margins are not saturated and every row carries gradient.
const REF_LOGPS: [f64; 4] = [-30.0, -41.5, -18.25, -35.0];

const CFG: GptConfig = GptConfig { vocab: 96, ctx: 16, d_model: 32, n_layer: 2, n_head: 4 };
const SEED: u64 = 1234;
const B: usize = 4;
const T: usize = 12;

// ---------------------------------------------------------------------------------------------
// Inputs.

/// The engine's seeded init, sharpened so every term of the forward pass matters.
fn oracle_params(cfg: &GptConfig) -> Vec<f32> {
    let mut params = CpuEngine::random(*cfg, SEED).expect("CpuEngine::random").params();
    let mut rng = Rng::new(SEED ^ 0x5eed);
    for (name, offset, shape) in cfg.layout().tensors(cfg) {
        let len: usize = shape.iter().product();
        for p in &mut params[offset..offset + len] {
            *p = match name {
                "wte" | "wpe" | "qkvw" | "fcw" | "attprojw" | "fcprojw" => 8.0 * *p,
                "ln1w" | "ln2w" | "lnfw" => *p + 0.2 * rng.normal(),
                _ => *p + 0.1 * rng.normal(), // every bias and LayerNorm shift
            };
        }
    }
    params
}

/// B=4 rows of random tokens: prompts of different lengths, row 2 right-padded (9 real tokens).
fn oracle_batch(cfg: &GptConfig) -> TokenBatch {
    let mut rng = Rng::new(SEED ^ 0xba7c);
    let spec = [(T, 4), (T, 6), (9, 3), (T, 5)]; // (row length, first scored position)
    let rows: Vec<(Vec<u32>, usize)> = spec
        .iter()
        .map(|&(len, first)| {
            ((0..len).map(|_| 1 + rng.below(cfg.vocab - 1) as u32).collect(), first)
        })
        .collect();
    let batch = TokenBatch::from_rows(&rows).expect("valid rows");
    assert_eq!((batch.batch, batch.seq_len), (B, T));
    batch
}

// ---------------------------------------------------------------------------------------------
// The oracle model in burn. Shapes in comments: N = B·T rows of the flattened batch.

/// The 16 parameter tensors as autodiff leaves, in layout order, shaped as the layout says.
struct Leaves {
    wte: Tensor<2>,      // (V, C)
    wpe: Tensor<2>,      // (ctx, C)
    ln1w: Tensor<2>,     // (L, C)
    ln1b: Tensor<2>,     // (L, C)
    qkvw: Tensor<3>,     // (L, 3C, C)
    qkvb: Tensor<2>,     // (L, 3C)
    attprojw: Tensor<3>, // (L, C, C)
    attprojb: Tensor<2>, // (L, C)
    ln2w: Tensor<2>,     // (L, C)
    ln2b: Tensor<2>,     // (L, C)
    fcw: Tensor<3>,      // (L, 4C, C)
    fcb: Tensor<2>,      // (L, 4C)
    fcprojw: Tensor<3>,  // (L, C, 4C)
    fcprojb: Tensor<2>,  // (L, C)
    lnfw: Tensor<1>,     // (C)
    lnfb: Tensor<1>,     // (C)
}

impl Leaves {
    fn new(cfg: &GptConfig, params: &[f32], device: &Device) -> Leaves {
        let layout = cfg.layout();
        let specs = layout.tensors(cfg);
        let leaf = |i: usize| -> (Vec<f32>, Vec<usize>) {
            let (_, offset, shape) = &specs[i];
            let len: usize = shape.iter().product();
            (params[*offset..*offset + len].to_vec(), shape.clone())
        };
        let t1 = |i: usize| {
            let (v, s) = leaf(i);
            Tensor::<1>::from_data(TensorData::new(v, [s[0]]), device).require_grad()
        };
        let t2 = |i: usize| {
            let (v, s) = leaf(i);
            Tensor::<2>::from_data(TensorData::new(v, [s[0], s[1]]), device).require_grad()
        };
        let t3 = |i: usize| {
            let (v, s) = leaf(i);
            Tensor::<3>::from_data(TensorData::new(v, [s[0], s[1], s[2]]), device).require_grad()
        };
        Leaves {
            wte: t2(0),
            wpe: t2(1),
            ln1w: t2(2),
            ln1b: t2(3),
            qkvw: t3(4),
            qkvb: t2(5),
            attprojw: t3(6),
            attprojb: t2(7),
            ln2w: t2(8),
            ln2b: t2(9),
            fcw: t3(10),
            fcb: t2(11),
            fcprojw: t3(12),
            fcprojb: t2(13),
            lnfw: t1(14),
            lnfb: t1(15),
        }
    }

    /// Gradients in layout order, flattened.
    fn grads(&self, grads: &burn::tensor::Gradients) -> Vec<Vec<f32>> {
        fn g<const D: usize>(t: &Tensor<D>, grads: &burn::tensor::Gradients) -> Vec<f32> {
            let shape = t.dims();
            match t.grad(grads) {
                Some(grad) => to_vec(grad),
                // A leaf the loss does not reach has zero gradient.
                None => vec![0.0; shape.iter().product()],
            }
        }
        vec![
            g(&self.wte, grads),
            g(&self.wpe, grads),
            g(&self.ln1w, grads),
            g(&self.ln1b, grads),
            g(&self.qkvw, grads),
            g(&self.qkvb, grads),
            g(&self.attprojw, grads),
            g(&self.attprojb, grads),
            g(&self.ln2w, grads),
            g(&self.ln2b, grads),
            g(&self.fcw, grads),
            g(&self.fcb, grads),
            g(&self.fcprojw, grads),
            g(&self.fcprojb, grads),
            g(&self.lnfw, grads),
            g(&self.lnfb, grads),
        ]
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("readable f32 tensor")
}

/// Row `l` of a layer-stacked (L, X) tensor as (X).
fn layer1(t: &Tensor<2>, l: usize) -> Tensor<1> {
    let [_, x] = t.dims();
    t.clone().slice([l..l + 1, 0..x]).reshape([x])
}

/// Matrix `l` of a layer-stacked (L, OUT, IN) tensor as (OUT, IN).
fn layer2(t: &Tensor<3>, l: usize) -> Tensor<2> {
    let [_, out, inp] = t.dims();
    t.clone().slice([l..l + 1, 0..out, 0..inp]).reshape([out, inp])
}

/// y = x · Wᵀ + b with W stored (out, in).
fn linear(x: Tensor<2>, w: Tensor<2>, b: Tensor<1>) -> Tensor<2> {
    x.matmul(w.transpose()) + b.unsqueeze_dim::<2>(0) // (N, out)
}

/// LayerNorm over the last axis, biased variance, eps inside the square root.
fn layer_norm(x: Tensor<2>, w: Tensor<1>, b: Tensor<1>) -> Tensor<2> {
    let mean = x.clone().mean_dim(1); // (N, 1)
    let centered = x - mean; // (N, C)
    let var = (centered.clone() * centered.clone()).mean_dim(1); // (N, 1)
    let normed = centered / (var + LN_EPS).sqrt();
    normed * w.unsqueeze_dim::<2>(0) + b.unsqueeze_dim::<2>(0)
}

/// GELU, tanh approximation (GPT-2's `gelu_new`), from primitives.
fn gelu_tanh(x: Tensor<2>) -> Tensor<2> {
    let sqrt_2_over_pi = (2.0f64 / std::f64::consts::PI).sqrt();
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * sqrt_2_over_pi;
    x * (inner.tanh() + 1.0) * 0.5
}

/// Causal multi-head self-attention on (N, 3C) packed q|k|v, returning (N, C) before the
/// output projection.
fn attention(
    qkv: Tensor<2>,
    cfg: &GptConfig,
    batch: usize,
    seq: usize,
    device: &Device,
) -> Tensor<2> {
    let (c, nh, hd) = (cfg.d_model, cfg.n_head, cfg.head_dim());
    let n = batch * seq;
    let heads = |from: usize| -> Tensor<4> {
        qkv.clone().slice([0..n, from..from + c]).reshape([batch, seq, nh, hd]).swap_dims(1, 2)
        // (B, NH, T, hd)
    };
    let (q, k, v) = (heads(0), heads(c), heads(2 * c));
    let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt()); // (B, NH, T, T)
                                                                           // burn's tril_mask is true where the lower triangle (diagonal included) is NOT, i.e.
                                                                           // strictly above the diagonal: key position s > query position t, the future.
    let future = Tensor::<2, Bool>::tril_mask([seq, seq], 0, device)
        .reshape([1, 1, seq, seq])
        .expand([batch, nh, seq, seq]);
    let probs = softmax(scores.mask_fill(future, -1.0e30), 3); // (B, NH, T, T)
    probs.matmul(v).swap_dims(1, 2).reshape([n, c]) // (B, T, NH, hd) -> (N, C)
}

/// What the oracle's forward returns.
struct OracleOut {
    hidden: Tensor<2>,      // (N, C) after the final LayerNorm
    logits: Tensor<3>,      // (B, T, V)
    token_logps: Tensor<2>, // (B, T), 0 where not scored
    seq_logps: Tensor<1>,   // (B)
}

fn oracle_forward(p: &Leaves, cfg: &GptConfig, batch: &TokenBatch, device: &Device) -> OracleOut {
    let (bsz, seq, v, c) = (batch.batch, batch.seq_len, cfg.vocab, cfg.d_model);
    let n = bsz * seq;
    let ids: Vec<i64> = batch.tokens.iter().map(|&t| t as i64).collect();
    let ids_flat = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [n]), device);

    // Embeddings: token row + learned position row.
    let tok = p.wte.clone().select(0, ids_flat).reshape([bsz, seq, c]); // (B, T, C)
    let pos = p.wpe.clone().slice([0..seq, 0..c]).unsqueeze_dim::<3>(0); // (1, T, C)
    let mut x: Tensor<2> = (tok + pos).reshape([n, c]); // (N, C) residual stream

    for l in 0..cfg.n_layer {
        let h = layer_norm(x.clone(), layer1(&p.ln1w, l), layer1(&p.ln1b, l));
        let qkv = linear(h, layer2(&p.qkvw, l), layer1(&p.qkvb, l)); // (N, 3C)
        let att = attention(qkv, cfg, bsz, seq, device); // (N, C)
        x = x + linear(att, layer2(&p.attprojw, l), layer1(&p.attprojb, l));

        let h = layer_norm(x.clone(), layer1(&p.ln2w, l), layer1(&p.ln2b, l));
        let fc = gelu_tanh(linear(h, layer2(&p.fcw, l), layer1(&p.fcb, l))); // (N, 4C)
        x = x + linear(fc, layer2(&p.fcprojw, l), layer1(&p.fcprojb, l));
    }
    let hidden = layer_norm(x, p.lnfw.clone(), p.lnfb.clone()); // (N, C)
    let logits = hidden.clone().matmul(p.wte.clone().transpose()).reshape([bsz, seq, v]); // tied head, (B, T, V)

    // Token t of row b is predicted by the logits at t-1; scored where score_mask[b, t] = 1.
    let logp = log_softmax(logits.clone(), 2).slice([0..bsz, 0..seq - 1, 0..v]); // (B, T-1, V)
    let targets = Tensor::<2, Int>::from_data(TensorData::new(ids, [bsz, seq]), device)
        .slice([0..bsz, 1..seq])
        .unsqueeze_dim::<3>(2); // (B, T-1, 1)
    let token_logps = logp.gather(2, targets).reshape([bsz, seq - 1]); // (B, T-1)
    let mask =
        Tensor::<2>::from_data(TensorData::new(batch.score_mask.clone(), [bsz, seq]), device)
            .slice([0..bsz, 1..seq]);
    let scored = token_logps * mask; // (B, T-1)
    let seq_logps = scored.clone().sum_dim(1).reshape([bsz]); // (B)
    let token_logps = Tensor::cat(vec![Tensor::<2>::zeros([bsz, 1], device), scored], 1); // (B, T), position 0 never scored
    OracleOut { hidden, logits, token_logps, seq_logps }
}

/// DPO sigmoid loss (Rafailov et al. 2023, eq. 7), mean over pairs; rows (2p, 2p+1) are pair
/// p's (chosen, rejected).
fn oracle_dpo_loss(seq_logps: Tensor<1>, device: &Device) -> Tensor<1> {
    let pairs = seq_logps.dims()[0] / 2;
    let policy = seq_logps.reshape([pairs, 2]); // (P, 2)
    let reference = Tensor::<2>::from_data(
        TensorData::new(REF_LOGPS.iter().map(|&r| r as f32).collect::<Vec<_>>(), [pairs, 2]),
        device,
    );
    let logratio = policy - reference; // (P, 2)
    let chosen = logratio.clone().slice([0..pairs, 0..1]).reshape([pairs]);
    let rejected = logratio.slice([0..pairs, 1..2]).reshape([pairs]);
    let margin = (chosen - rejected) * BETA;
    log_sigmoid(margin).neg().mean() // (1)
}

/// The same loss in f64 from plain numbers, and its gradient d loss / d seq_logp, by hand:
/// with m_p = β((w − w_ref) − (l − l_ref)), d(−log σ(m))/dm = −σ(−m), so
/// d loss/d w = −β σ(−m_p)/P and d loss/d l = +β σ(−m_p)/P.
fn dpo_loss_and_grad(seq_logps: &[f32]) -> (f64, Vec<f32>) {
    let pairs = seq_logps.len() / 2;
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let mut loss = 0.0;
    let mut grad = vec![0.0f32; seq_logps.len()];
    for p in 0..pairs {
        let (w, l) = (2 * p, 2 * p + 1);
        let margin =
            BETA * ((seq_logps[w] as f64 - REF_LOGPS[w]) - (seq_logps[l] as f64 - REF_LOGPS[l]));
        loss += -sigmoid(margin).ln() / pairs as f64;
        let d_margin = -sigmoid(-margin) / pairs as f64;
        grad[w] = (d_margin * BETA) as f32;
        grad[l] = (-d_margin * BETA) as f32;
    }
    (loss, grad)
}

// ---------------------------------------------------------------------------------------------
// Comparison.

#[derive(Debug)]
struct Diff {
    name: String,
    len: usize,
    scale: f64,
    max_abs: f64,
    /// max_abs / max(scale, FLOOR): the quantity the tolerance bounds.
    normwise: f64,
    /// Max elementwise relative error over entries with |reference| ≥ 1e-2 · scale.
    max_rel: f64,
    tol: f64,
}

impl Diff {
    fn passed(&self) -> bool {
        self.normwise <= self.tol // false for NaN too
    }
}

fn compare(name: &str, engine: &[f32], oracle: &[f32], tol: f64) -> Diff {
    assert_eq!(
        engine.len(),
        oracle.len(),
        "{name}: engine has {} values, oracle {}",
        engine.len(),
        oracle.len()
    );
    let scale = oracle.iter().fold(0.0f64, |m, &b| m.max((b as f64).abs()));
    let mut max_abs = 0.0f64;
    let mut max_rel = 0.0f64;
    for (&a, &b) in engine.iter().zip(oracle) {
        let err = (a as f64 - b as f64).abs();
        let err = if err.is_nan() { f64::INFINITY } else { err };
        max_abs = max_abs.max(err);
        if (b as f64).abs() >= 1e-2 * scale {
            max_rel = max_rel.max(err / (b as f64).abs());
        }
    }
    Diff {
        name: name.to_string(),
        len: engine.len(),
        scale,
        max_abs,
        normwise: max_abs / scale.max(FLOOR),
        max_rel,
        tol,
    }
}

fn print_table(title: &str, diffs: &[Diff]) {
    println!("\n{title}");
    println!(
        "{:<12} {:>6} {:>11} {:>11} {:>11} {:>11} {:>8}  ok",
        "tensor", "len", "max|ref|", "max abs", "abs/scale", "max rel*", "tol"
    );
    for d in diffs {
        println!(
            "{:<12} {:>6} {:>11.3e} {:>11.3e} {:>11.3e} {:>11.3e} {:>8.0e}  {}",
            d.name,
            d.len,
            d.scale,
            d.max_abs,
            d.normwise,
            d.max_rel,
            d.tol,
            if d.passed() { "yes" } else { "NO" }
        );
    }
    println!("(* elementwise, over entries with |ref| >= 1e-2 * max|ref|; reported, not asserted)");
}

fn assert_all_pass(diffs: &[Diff]) {
    let failed: Vec<String> = diffs
        .iter()
        .filter(|d| !d.passed())
        .map(|d| {
            format!(
                "{} (max abs {:.3e} = {:.3e} of scale {:.3e}, tol {:.0e})",
                d.name, d.max_abs, d.normwise, d.scale, d.tol
            )
        })
        .collect();
    assert!(failed.is_empty(), "lab-cpu disagrees with the burn oracle on: {}", failed.join("; "));
}

// ---------------------------------------------------------------------------------------------

#[test]
fn cpu_engine_matches_burn_oracle_forward_and_every_gradient() {
    let cfg = CFG;
    cfg.validate().unwrap();
    let params = oracle_params(&cfg);
    let batch = oracle_batch(&cfg);
    batch.check(&cfg).unwrap();
    let (bsz, seq) = (batch.batch, batch.seq_len);

    // --- engine under test.
    let mut engine = CpuEngine::new(cfg, params.clone()).expect("CpuEngine::new");
    assert_eq!(engine.params(), params, "CpuEngine::new must keep the parameters as given");
    let cpu_hidden = engine.hidden_states(&batch).expect("hidden_states");
    let cpu_logits = engine.logits(&batch).expect("logits");
    let cpu_fwd = engine.forward(&batch).expect("forward");
    let (cpu_loss, d_seq_logps) = dpo_loss_and_grad(&cpu_fwd.seq_logps);
    engine.backward(&d_seq_logps).expect("backward");
    let cpu_grads = engine.grads();
    assert_eq!(cpu_grads.len(), cfg.layout().total);

    // --- oracle.
    let device = Device::flex().autodiff();
    let leaves = Leaves::new(&cfg, &params, &device);
    let out = oracle_forward(&leaves, &cfg, &batch, &device);
    let loss = oracle_dpo_loss(out.seq_logps.clone(), &device);
    let grads = loss.backward();
    let burn_grads = leaves.grads(&grads);
    let burn_hidden = to_vec(out.hidden.detach());
    let burn_logits = to_vec(out.logits.detach());
    let burn_token_logps = to_vec(out.token_logps.detach());
    let burn_seq_logps = to_vec(out.seq_logps.detach());
    let burn_loss = to_vec(loss.detach());

    // Sanity of the oracle's own input handling: padded positions are never scored.
    assert_eq!(batch.scored_lengths(), vec![8, 6, 6, 7]);

    // --- forward.
    let forward = vec![
        compare("hidden", &cpu_hidden, &burn_hidden, FWD_TOL),
        compare("logits", &cpu_logits, &burn_logits, FWD_TOL),
        compare("seq_logps", &cpu_fwd.seq_logps, &burn_seq_logps, FWD_TOL),
        compare("token_logps", &cpu_fwd.token_logps, &burn_token_logps, FWD_TOL),
        compare("dpo_loss", &[cpu_loss as f32], &burn_loss, FWD_TOL),
    ];
    print_table(&format!("forward (B={bsz}, T={seq}, {cfg:?})"), &forward);
    println!(
        "seq_logps cpu  {:?}\nseq_logps burn {:?}\nd loss/d seq_logp {:?}",
        cpu_fwd.seq_logps, burn_seq_logps, d_seq_logps
    );

    // --- gradients, every tensor of the layout.
    let layout = cfg.layout();
    let specs = layout.tensors(&cfg);
    assert_eq!(specs.len(), 16);
    let backward: Vec<Diff> = specs
        .iter()
        .zip(&burn_grads)
        .map(|((name, offset, shape), oracle)| {
            let len: usize = shape.iter().product();
            compare(name, &cpu_grads[*offset..offset + len], oracle, GRAD_TOL)
        })
        .collect();
    print_table("gradients of the DPO loss", &backward);

    // The check has teeth: a 1% error in the largest entry of any gradient tensor fails it.
    for ((name, offset, shape), oracle) in specs.iter().zip(&burn_grads) {
        let len: usize = shape.iter().product();
        let mut corrupted = cpu_grads[*offset..offset + len].to_vec();
        let worst = (0..len).max_by(|&i, &j| oracle[i].abs().total_cmp(&oracle[j].abs())).unwrap();
        corrupted[worst] += 0.01 * oracle[worst].abs().max(FLOOR as f32);
        assert!(
            !compare(name, &corrupted, oracle, GRAD_TOL).passed(),
            "{name}: the comparison cannot see a 1% error"
        );
    }

    assert_all_pass(&forward);
    assert_all_pass(&backward);
}
