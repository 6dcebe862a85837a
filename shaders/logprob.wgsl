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
// Workgroup 64. forward: one workgroup per position (B·T, x + y·65535), its invocations
// taking the row's logits v = lid, lid + 64, … (coalesced), with the max, the sum and each
// of the ten top-10 picks reduced in workgroup memory (a pick is the largest (value,
// −index) after the previous pick, so ties go to the earlier index, as on the CPU); one
// invocation per row walked its V logits alone before, latency-bound at 135 µs for
// B·T = 2048 on an H100. backward: one invocation per element of dlogits (B·T·V),
// x + y·65535·64.
//
// Fusion: max, log-sum-exp, the gather and the top-10 selection share one workgroup over
// a logit row, and only (B, T) numbers leave the kernel: the (B, T, V) log-softmax is never
// written. The backward recomputes softmax from the kept lse rather than storing it.

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

const WG: u32 = 64u;

var<workgroup> red_v: array<f32, 64>;
var<workgroup> red_i: array<u32, 64>;

fn workgroup_max(value: f32, lid: u32) -> f32 {
    red_v[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red_v[lid] = max(red_v[lid], red_v[lid + stride]);
        }
        workgroupBarrier();
    }
    let total = red_v[0];
    workgroupBarrier();
    return total;
}

fn workgroup_sum(value: f32, lid: u32) -> f32 {
    red_v[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            red_v[lid] = red_v[lid] + red_v[lid + stride];
        }
        workgroupBarrier();
    }
    let total = red_v[0];
    workgroupBarrier();
    return total;
}

// (value, index) pairs ordered by value descending, then index ascending
fn before(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bt = wg.x + wg.y * nwg.x;
    if (bt >= d.b * d.t_len) {
        return; // uniform across the workgroup
    }
    let t = bt % d.t_len;
    if (t == 0u || mask[bt] <= 0.0) {
        if (lid == 0u) {
            out[bt] = 0.0;
            topk[2u * bt] = 0.0;
            topk[2u * bt + 1u] = 0.0;
        }
        return;
    }
    let row = (bt - 1u) * d.v;
    var m = -3.4e38;
    for (var i = lid; i < d.v; i += WG) {
        m = max(m, logits[row + i]);
    }
    let max_logit = workgroup_max(m, lid);
    var sum = 0.0;
    for (var i = lid; i < d.v; i += WG) {
        sum += exp(logits[row + i] - max_logit);
    }
    let l = max_logit + log(workgroup_sum(sum, lid));
    // the ten largest logits, one pick per round, descending
    var prev_v = 3.4e38;
    var prev_i = 0u;
    var first = true;
    var entropy = 0.0;
    var mass = 0.0;
    for (var round = 0u; round < min(TOPK, d.v); round += 1u) {
        var best_v = -3.4e38;
        var best_i = 0xffffffffu;
        for (var i = lid; i < d.v; i += WG) {
            let x = logits[row + i];
            let eligible = first || before(prev_v, prev_i, x, i);
            if (eligible && before(x, i, best_v, best_i)) {
                best_v = x;
                best_i = i;
            }
        }
        red_v[lid] = best_v;
        red_i[lid] = best_i;
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
            if (lid < stride && before(red_v[lid + stride], red_i[lid + stride], red_v[lid], red_i[lid])) {
                red_v[lid] = red_v[lid + stride];
                red_i[lid] = red_i[lid + stride];
            }
            workgroupBarrier();
        }
        prev_v = red_v[0];
        prev_i = red_i[0];
        first = false;
        workgroupBarrier();
        let logp = prev_v - l;
        let p = exp(logp);
        entropy -= p * logp * LOG2_E;
        mass += p;
    }
    if (lid == 0u) {
        lse[bt - 1u] = l;
        out[bt] = logits[row + tokens[bt]] - l;
        topk[2u * bt] = entropy;
        topk[2u * bt + 1u] = mass;
    }
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
