// Log-softmax + per-token log-prob gather under the score mask, with the top-10
// instruments, forward and backward.
// Reference twin: lab-cpu `logprob_forward` / `logprob_backward` / `topk_entropy_mass`.
//
// For every scored position t of row b (mask[b, t] > 0, t ≥ 1) the logits at t − 1
// predict tokens[b, t]:
//   lse[b, t−1]     = log Σ_v exp(logits[b, t−1, v])
//   token_logp[b,t] = logits[b, t−1, tokens[b, t]] − lse[b, t−1]          (0 if unscored)
//   topk[b, t]      = (−Σ_{top10} p log₂ p, Σ_{top10} p), p the full softmax (0, 0 if unscored)
// backward, for the predicting position of each scored t, g = d_seq[b] · mask[b, t]:
//   dlogits[b, t−1, v] = g · (onehot(tokens[b, t]) − softmax(logits[b, t−1]))_v, 0 elsewhere
//
// Bindings (group 0):
//   0 uniform  Dims
//   1 logits   array<f32>  (B, T, V)   read
//   2 tokens   array<u32>  (B, T)      read
//   3 mask     array<f32>  (B, T)      read
//   4 lse      array<f32>  (B, T)      read_write  [forward]
//   5 out      array<f32>  (B, T) token log-probs, then seq sums (see reduce.wgsl)  read_write [forward]
//   6 topk     array<f32>  (B, T, 2)   read_write  [forward]
//   7 lse_r    array<f32>  (B, T)      read        [backward]
//   8 d_seq    array<f32>  (B)         read        [backward]
//   9 dlogits  array<f32>  (B, T, V)   read_write  [backward]
// Workgroup 64. forward: one invocation per scored position (B·T); backward: one per
// element of dlogits (B·T·V), x + y·65535·64.
//
// Fusion: max, log-sum-exp, the gather and the top-10 scan share one pass over a logit
// row held in cache, and only (B, T) numbers leave the kernel: the (B, T, V) log-softmax is
// never written. The backward recomputes softmax from the kept lse rather than storing it.

struct Dims {
    b: u32,
    t_len: u32,
    v: u32,
    _pad: u32,
}

const TOPK: u32 = 10u;
const LOG2_E: f32 = 1.4426950408889634;

@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> topk: array<f32>;
@group(0) @binding(7) var<storage, read> lse_r: array<f32>;
@group(0) @binding(8) var<storage, read> d_seq: array<f32>;
@group(0) @binding(9) var<storage, read_write> dlogits: array<f32>;

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bt = gid.x + gid.y * nwg.x * 64u;
    if (bt >= d.b * d.t_len) {
        return;
    }
    out[bt] = 0.0;
    topk[2u * bt] = 0.0;
    topk[2u * bt + 1u] = 0.0;
    let t = bt % d.t_len;
    if (t == 0u || mask[bt] <= 0.0) {
        return;
    }
    let row = (bt - 1u) * d.v;
    var max_logit = logits[row];
    for (var i = 1u; i < d.v; i += 1u) {
        max_logit = max(max_logit, logits[row + i]);
    }
    var sum = 0.0;
    for (var i = 0u; i < d.v; i += 1u) {
        sum += exp(logits[row + i] - max_logit);
    }
    let l = max_logit + log(sum);
    lse[bt - 1u] = l;
    out[bt] = logits[row + tokens[bt]] - l;
    // the ten largest logits, descending (insertion, ties keep the earlier index first)
    let k = min(TOPK, d.v);
    var top: array<f32, 10>;
    for (var i = 0u; i < d.v; i += 1u) {
        let x = logits[row + i];
        var j: u32;
        if (i < k) {
            j = i;
        } else if (x > top[k - 1u]) {
            j = k - 1u;
        } else {
            continue;
        }
        while (j > 0u && top[j - 1u] < x) {
            top[j] = top[j - 1u];
            j -= 1u;
        }
        top[j] = x;
    }
    var entropy = 0.0;
    var mass = 0.0;
    for (var i = 0u; i < k; i += 1u) {
        let logp = top[i] - l;
        let p = exp(logp);
        entropy -= p * logp * LOG2_E;
        mass += p;
    }
    topk[2u * bt] = entropy;
    topk[2u * bt + 1u] = mass;
}

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 64u;
    if (e >= d.b * d.t_len * d.v) {
        return;
    }
    let bt = e / d.v;   // predicting position
    let i = e % d.v;
    let t = bt % d.t_len;
    var grad = 0.0;
    if (t + 1u < d.t_len) {
        let m = mask[bt + 1u];
        if (m > 0.0) {
            let g = d_seq[bt / d.t_len] * m;
            grad = -g * exp(logits[e] - lse_r[bt]);
            if (i == tokens[bt + 1u]) {
                grad += g;
            }
        }
    }
    dlogits[e] = grad;
}
