// The loss zoo's gradient d(loss)/d(policy sequence log-prob), evaluated on the GPU between
// the forward and the backward of a training step.
// Reference twin: lab-core `loss::mixed_loss` (its `d_policy_chosen` / `d_policy_rejected`),
// `kto_loss` and `plackett_luce_loss` (their `d_policy`); one branch per kind below, each
// the derivative written beside its lab-core function.
//
// Why on the GPU: with the loss on the CPU a step is forward → readback → loss → backward,
// and the GPU idles for the round trip in the middle. Here the forward, this kernel, the
// backward and AdamW are one submission; the step's one readback (the policy's sequence
// log-probs, from which the CPU computes the loss value and the metrics in f64, as TRL
// does) can be waited for while the next step already runs. Only the gradient is needed
// here, so only derivatives are evaluated (no log σ of large arguments).
//
// Rows (B of them) as the batch has them, seq[r] = out[seq_off + r] the policy's sequence
// log-prob, ref[r] = given[r] the reference's, len[r] = given[B + r] the completion length:
// - the paired kinds: P = B/2 pairs, rows 0..P the chosen, P..2P the rejected (TRL's order);
//   pc[p] = seq[p], pr[p] = seq[P + p], rc, rr, len_w, len_l likewise;
//   ρw = pc − rc, ρl = pr − rr, Δ = ρw − ρl;
// - KTO: one example a row, desirable when given[2B + r] = 1;
// - Plackett–Luce: ranked lists, best first, row r in the list of rows given[2B + r] ..
//   given[3B + r] (start, end).
// d_seq[r] = Σ_t w_t · ∂loss_t/∂seq[r], loss_t the mean over pairs (examples, lists) of
// kind_t's loss (sft's and the NLL terms' a batch token-mean); KTO and Plackett–Luce are
// single terms of weight 1 (lab-train applies no weight to them).
// status[0] = 1 when any d_seq is not finite (adamw.wgsl then leaves the model as it was
// and the engine reports the step), else 0.
//
// Bindings (group 0):
//   0 uniform  Loss
//   1 out      array<f32>  the forward's outputs; the policy's (B) sequence log-probs at seq_off   read
//   2 given    array<f32>  [ref (B) | len (B) | label (B) | label (B)]                              read
//   3 d_seq    array<f32>  (B)                                                                    read_write
//   4 status   array<u32>  (1)                                                                    read_write
// Two entry points, one workgroup of 64 each: `gradient` for mixes of the closed-form paired
// kinds (no loop but over pairs and terms), `gradient_batch` for any kind (lab-gpu picks).
// Invocation i takes pairs (rows) i, i + 64, … Batch-level quantities
// (the chosen tokens of the batch, AOT's sort, KTO's reference point, a list's
// log-sum-exps) are computed by every invocation alone: a batch holds tens of rows, and the
// redundant O(B) sums (O(B²) for AOT's ranks) cost less than the barriers sharing them would.

struct Loss {
    rows: u32,
    terms: u32,
    seq_off: u32,
    _pad: u32,
    kinds: array<vec4<u32>, 2>,
    weights: array<vec4<f32>, 2>,
    beta: f32,
    eps: f32,
    simpo_gamma: f32,
    discopop_tau: f32,
    // EXO's ln ε − ln(1 − ε), computed on the host in f64
    exo_shift: f32,
    cpo_alpha: f32,
    kto_desirable_weight: f32,
    kto_undesirable_weight: f32,
}

@group(0) @binding(0) var<uniform> l: Loss;
@group(0) @binding(1) var<storage, read> out: array<f32>;
@group(0) @binding(2) var<storage, read> given: array<f32>;
@group(0) @binding(3) var<storage, read_write> d_seq: array<f32>;
@group(0) @binding(4) var<storage, read_write> status: array<u32>;

var<workgroup> bad: atomic<u32>;

// The kind codes (SIGMOID, HINGE, …, PLACKETT_LUCE) are not declared in this file: they
// are defined once, on the host (lab-gpu uniforms.rs `LossCode`), and lab-gpu appends them
// to this source as WGSL constants when it compiles it (kernels.rs `source`).

fn pairs() -> u32 { return l.rows / 2u; }
fn seq(r: u32) -> f32 { return out[l.seq_off + r]; }
fn rho(r: u32) -> f32 { return seq(r) - given[r]; }
fn label(r: u32, which: u32) -> u32 { return u32(given[(2u + which) * l.rows + r]); }
fn pc(p: u32) -> f32 { return seq(p); }
fn pr(p: u32) -> f32 { return seq(pairs() + p); }
fn rc(p: u32) -> f32 { return given[p]; }
fn rr(p: u32) -> f32 { return given[pairs() + p]; }
fn len_w(p: u32) -> f32 { return given[l.rows + p]; }
fn len_l(p: u32) -> f32 { return given[l.rows + pairs() + p]; }

// σ(x), stable for large |x|
fn sigm(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// log σ(x) = min(x, 0) − log(1 + e^{−|x|})
fn log_sigm(x: f32) -> f32 {
    return min(x, 0.0) - log1p(exp(-abs(x)));
}

// log(1 + x) and eˣ − 1 without cancellation near 0 (the rounding error of 1 + x, eˣ
// corrected by the ratio: Goldberg 1991, Theorem 4; Kahan)
fn log1p(x: f32) -> f32 {
    let u = 1.0 + x;
    if (u == 1.0) {
        return x;
    }
    return log(u) * x / (u - 1.0);
}

fn expm1(x: f32) -> f32 {
    let u = exp(x);
    if (u == 1.0) {
        return x;
    }
    if (u - 1.0 == -1.0) {
        return -1.0;
    }
    return (u - 1.0) * x / log(u);
}

// log(1 − eˣ) for x < 0 (Mächler 2012)
fn log1mexp(x: f32) -> f32 {
    if (x > -0.6931472) {
        return log(-expm1(x));
    }
    return log1p(-exp(x));
}

// d/dz of the smoothed logistic ℓ_ε(z) = −(1−ε) log σ(z) − ε log σ(−z)
fn smoothed_grad(z: f32, eps: f32) -> f32 {
    return -(1.0 - eps) * sigm(-z) + eps * sigm(z);
}

fn clamped(len: f32) -> f32 {
    return max(len, 1.0);
}

// the batch's chosen completion tokens, Σ len_w (the NLL terms' denominator)
fn chosen_tokens() -> f32 {
    var sum = 0.0;
    for (var q = 0u; q < pairs(); q++) {
        sum += len_w(q);
    }
    return sum;
}

// AOT's two sorted quantities: `aot` sorts u = pc − pr against v = rc − rr; `aot_unpaired`
// ρw against ρl
fn aot_a(kind: u32, p: u32) -> f32 {
    if (kind == AOT) {
        return pc(p) - pr(p);
    }
    return pc(p) - rc(p);
}

fn aot_b(kind: u32, p: u32) -> f32 {
    if (kind == AOT) {
        return rc(p) - rr(p);
    }
    return pr(p) - rr(p);
}

// position of p in the stable ascending order of a (side 0) or b (side 1)
fn rank(kind: u32, side: u32, p: u32) -> u32 {
    let x = select(aot_a(kind, p), aot_b(kind, p), side == 1u);
    var r = 0u;
    for (var q = 0u; q < pairs(); q++) {
        let y = select(aot_a(kind, q), aot_b(kind, q), side == 1u);
        if (y < x || (y == x && q < p)) {
            r += 1u;
        }
    }
    return r;
}

// the pair at sorted position k of side `side`
fn at_rank(kind: u32, side: u32, k: u32) -> u32 {
    for (var q = 0u; q < pairs(); q++) {
        if (rank(kind, side, q) == k) {
            return q;
        }
    }
    return 0u;
}

// (∂loss/∂pc[p], ∂loss/∂pr[p]) of a kind whose pair's gradient is closed-form in the pair's
// own numbers (the mean over pairs included)
fn pair_term(kind: u32, p: u32) -> vec2<f32> {
    let beta = l.beta;
    let n = f32(pairs());
    let rho_w = pc(p) - rc(p);
    let rho_l = pr(p) - rr(p);
    let delta = rho_w - rho_l;
    switch kind {
        case SIGMOID: {
            let g = -beta * sigm(-beta * delta);
            return vec2(g, -g) / n;
        }
        case HINGE: {
            let g = select(0.0, -beta, 1.0 - beta * delta > 0.0);
            return vec2(g, -g) / n;
        }
        case IPO, SIGMOID_NORM: {
            let lw = clamped(len_w(p));
            let ll = clamped(len_l(p));
            let d = rho_w / lw - rho_l / ll;
            var g = -beta * sigm(-beta * d);
            if (kind == IPO) {
                g = 2.0 * (d - 1.0 / (2.0 * beta));
            }
            return vec2(g / lw, -g / ll) / n;
        }
        case EXO_PAIR: {
            let z = beta * delta;
            let g = beta * sigm(z) * sigm(-z) * (z + l.exo_shift);
            return vec2(g, -g) / n;
        }
        case NCA_PAIR: {
            let a = beta * rho_w;
            let b = beta * rho_l;
            return vec2(beta * (-sigm(-a) + 0.5 * sigm(a)), beta * 0.5 * sigm(b)) / n;
        }
        case ROBUST: {
            let z = beta * delta;
            let eps = l.eps;
            let g = beta * (-(1.0 - eps) * sigm(-z) - eps * sigm(z)) / (1.0 - 2.0 * eps);
            return vec2(g, -g) / n;
        }
        case BCO_PAIR: {
            return vec2(-beta * sigm(-beta * rho_w), beta * sigm(beta * rho_l)) / n;
        }
        case SPPO_HARD: {
            let half_inv_beta = 0.5 / beta;
            return vec2(2.0 * (rho_w - half_inv_beta), 2.0 * (rho_l + half_inv_beta)) / n;
        }
        case APO_ZERO: {
            let sw = sigm(beta * rho_w);
            let sl = sigm(beta * rho_l);
            return vec2(-beta * sw * (1.0 - sw), beta * sl * (1.0 - sl)) / n;
        }
        case APO_DOWN: {
            let sw = sigm(beta * rho_w);
            let sd = sigm(beta * delta);
            let gd = -beta * sd * (1.0 - sd);
            return vec2(beta * sw * (1.0 - sw) + gd, -gd) / n;
        }
        case DISCOPOP: {
            // m = σ(z/τ); the products with e^{−z} taken in log space so that m → 0 and
            // e^{−z} → ∞ never meet as 0·∞
            let z = beta * delta;
            let tau = l.discopop_tau;
            let m = sigm(z / tau);
            let dm = m * (1.0 - m) / tau;
            let logistic = -log_sigm(z);
            let m_expo = exp(log_sigm(z / tau) - z);
            let dm_expo = exp(log_sigm(z / tau) + log_sigm(-z / tau) - z) / tau;
            let g = beta * (dm_expo - dm * logistic - (1.0 - m) * sigm(-z) - m_expo);
            return vec2(g, -g) / n;
        }
        case CDPO: {
            let g = beta * smoothed_grad(beta * delta, l.eps);
            return vec2(g, -g) / n;
        }
        case SIMPO: {
            let lw = len_w(p);
            let ll = len_l(p);
            let logits = pc(p) / lw - pr(p) / ll - l.simpo_gamma / beta;
            let g = beta * smoothed_grad(beta * logits, l.eps) / n;
            return vec2(g / lw, -g / ll);
        }
        default: {
            return vec2(0.0);
        }
    }
}

// (∂loss/∂pc[p], ∂loss/∂pr[p]) of any paired kind: those that read the whole batch (AOT's
// sort, the NLL terms' token count; their NLL parts are already means) here, the others by
// `pair_term`. Kept out of `gradient` (each entry point compiles only what it reaches):
// software GPUs (lavapipe, SwiftShader) run a switch's loops even for the cases not taken,
// which made the closed-form kinds cost ~70 ms a step there.
fn batch_term(kind: u32, p: u32) -> vec2<f32> {
    let beta = l.beta;
    let n = f32(pairs());
    switch kind {
        case AOT, AOT_UNPAIRED: {
            // a_p meets the b at its own sorted position; for aot_unpaired the policy's
            // rejected side is b, met by the a at b_p's position
            let j = at_rank(kind, 1u, rank(kind, 0u, p));
            let g_a = beta * smoothed_grad(beta * (aot_a(kind, p) - aot_b(kind, j)), l.eps);
            if (kind == AOT) {
                return vec2(g_a, -g_a) / n;
            }
            let i = at_rank(kind, 0u, rank(kind, 1u, p));
            let g_b = beta * smoothed_grad(beta * (aot_a(kind, i) - aot_b(kind, p)), l.eps);
            return vec2(g_a, -g_b) / n;
        }
        case SFT: {
            return vec2(-1.0 / chosen_tokens(), 0.0);
        }
        case CPO: {
            let g = beta * smoothed_grad(beta * (pc(p) - pr(p)), l.eps) / n;
            var nll = 0.0;
            if (l.cpo_alpha != 0.0) {
                nll = l.cpo_alpha * (-1.0 / chosen_tokens());
            }
            return vec2(g + nll, -g);
        }
        case ORPO: {
            let lw = len_w(p);
            let ll = len_l(p);
            let aw = pc(p) / lw;
            let al = pr(p) / ll;
            let log_odds = (aw - al) - (log1mexp(aw) - log1mexp(al));
            let g = -beta * sigm(-log_odds) / n;
            let dw = -1.0 / expm1(aw);
            let dl = 1.0 / expm1(al);
            return vec2(g * dw / lw - 1.0 / chosen_tokens(), g * dl / ll);
        }
        default: {
            return pair_term(kind, p);
        }
    }
}

// ∂loss/∂seq[r] of KTO and Plackett–Luce, the kinds whose rows are not pairs
fn row_term(kind: u32, r: u32) -> f32 {
    let beta = l.beta;
    if (kind == KTO) {
        // z0 = max(0, mean ρ) over the batch, held constant (lab-core `kto_reference_point`)
        var sum = 0.0;
        for (var q = 0u; q < l.rows; q++) {
            sum += rho(q);
        }
        let z0 = max(sum / f32(l.rows), 0.0);
        let n = f32(l.rows);
        if (label(r, 0u) == 1u) {
            let s = sigm(beta * (rho(r) - z0));
            return -l.kto_desirable_weight * beta * s * (1.0 - s) / n;
        }
        let s = sigm(beta * (z0 - rho(r)));
        return l.kto_undesirable_weight * beta * s * (1.0 - s) / n;
    }
    // Plackett–Luce, s_k = βρ_k over the list [start, end): ∂/∂s_j = Σ_{k ≤ j} e^{s_j − lse_k} − 1,
    // lse_k = log Σ_{i ≥ k} e^{s_i}; the mean over lists
    let start = label(r, 0u);
    let end = label(r, 1u);
    var lists = 0u;
    for (var q = 0u; q < l.rows; q++) {
        lists += select(0u, 1u, label(q, 0u) == q);
    }
    let s_r = beta * rho(r);
    var d = -1.0;
    for (var k = start; k <= r; k++) {
        var top = beta * rho(k);
        for (var i = k + 1u; i < end; i++) {
            top = max(top, beta * rho(i));
        }
        var sum = 0.0;
        for (var i = k; i < end; i++) {
            sum += exp(beta * rho(i) - top);
        }
        d += exp(s_r - (top + log(sum)));
    }
    return d * beta / f32(lists);
}

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// d_seq of pair p from its terms' weighted sum
fn store_pair(p: u32, d: vec2<f32>) {
    d_seq[p] = d.x;
    d_seq[pairs() + p] = d.y;
    if (!(finite(d.x) && finite(d.y))) {
        atomicOr(&bad, 1u);
    }
}

fn weight(t: u32) -> f32 {
    return l.weights[t / 4u][t % 4u];
}

fn kind_of(t: u32) -> u32 {
    return l.kinds[t / 4u][t % 4u];
}

fn report(lid: u32) {
    workgroupBarrier();
    if (lid == 0u) {
        status[0] = atomicLoad(&bad);
    }
}

// the closed-form paired kinds (and mixes of them): the common case, no loops but the pairs
@compute @workgroup_size(64)
fn gradient(@builtin(local_invocation_index) lid: u32) {
    for (var p = lid; p < pairs(); p += 64u) {
        var d = vec2(0.0);
        for (var t = 0u; t < l.terms; t++) {
            d += weight(t) * pair_term(kind_of(t), p);
        }
        store_pair(p, d);
    }
    report(lid);
}

// every kind: the batch-level paired kinds, KTO and Plackett–Luce too
@compute @workgroup_size(64)
fn gradient_batch(@builtin(local_invocation_index) lid: u32) {
    let first = l.kinds[0].x;
    if (first == KTO || first == PLACKETT_LUCE) {
        for (var r = lid; r < l.rows; r += 64u) {
            let d = row_term(first, r);
            d_seq[r] = d;
            if (!finite(d)) {
                atomicOr(&bad, 1u);
            }
        }
    } else {
        for (var p = lid; p < pairs(); p += 64u) {
            var d = vec2(0.0);
            for (var t = 0u; t < l.terms; t++) {
                d += weight(t) * batch_term(kind_of(t), p);
            }
            store_pair(p, d);
        }
    }
    report(lid);
}
