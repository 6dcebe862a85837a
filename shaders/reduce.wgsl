// Per-sequence reduction of the head's per-token numbers: the sequence log-prob and the
// row means of the top-10 instruments. Reference twin: the row sums in lab-cpu
// `logprob_forward`.
//
//   seq_logp[b]     = Σ_t mask[b, t] · token_logp[b, t]
//   topk_entropy[b] = mean over scored t of topk[b, t, 0]   (0 if none scored)
//   topk_mass[b]    = mean over scored t of topk[b, t, 1]
//
// Bindings (group 0):
//   0 uniform  Dims
//   1 mask     array<f32>  (B, T)      read
//   2 topk     array<f32>  (B, T, 2)   read
//   3 out      array<f32>  [token_logp (B, T) | seq_logp (B) | topk_entropy (B) | topk_mass (B)]
//                                     read_write; the first block is input, written by logprob.wgsl
// Workgroup 64, one invocation per row b, summing its T positions in order (as the CPU
// does; B is small, and the fixed order keeps the sum reproducible).
//
// Laying every forward output in one buffer makes the step's single readback one copy.

struct Dims {
    b: u32,
    t_len: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read> topk: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn seq_sums(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= d.b) {
        return;
    }
    var seq = 0.0;
    var entropy = 0.0;
    var mass = 0.0;
    var scored = 0u;
    for (var t = 1u; t < d.t_len; t += 1u) {
        let bt = b * d.t_len + t;
        let m = mask[bt];
        if (m <= 0.0) {
            continue;
        }
        seq += m * out[bt];
        entropy += topk[2u * bt];
        mass += topk[2u * bt + 1u];
        scored += 1u;
    }
    if (scored > 0u) {
        entropy = entropy / f32(scored);
        mass = mass / f32(scored);
    }
    let n = d.b * d.t_len;
    out[n + b] = seq;
    out[n + d.b + b] = entropy;
    out[n + 2u * d.b + b] = mass;
}
