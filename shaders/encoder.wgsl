// Embedding: token + learned position, forward and backward.
// Reference twin: the embedding sum of `lab_cpu::reference::forward` and the scatter-add
// ending `reference::backward`.
//
// Bindings (group 0):
//   0 uniform  Dims
//   1 tokens   array<u32>  (B, T)                                     read        [forward]
//   2 params   array<f32>  flat; wte (V, C) at wte_off, wpe (ctx, C)  read        [forward]
//   3 out      array<f32>  (B, T, C)                                  read_write  [forward]
//   4 dout     array<f32>  (B, T, C)                                  read        [backward]
//   5 grads    array<f32>  flat; dwpe at dwpe_off                     read_write  [backward_wpe]
// Workgroup size 64, one invocation per element (forward) or per (position, channel) of
// the whole ctx table (backward_wpe). Grids may be 2D (x·64 invocations per row of y) when
// a dimension exceeds the 65535-workgroup limit.
//
// The wte gradient is a scatter-add (tokens repeat): dwte += one-hot(tokens)ᵀ · dout, which
// is a GEMM, so matmul.wgsl computes it (flag ONEHOT_A, split-K over the B·T tokens, its
// slabs right after the LM head's, then reduce.wgsl `gather_grads` adds all of them in
// order). No float
// atomics (which WGSL lacks and which would make the sum order vary run to run), and no
// C-way serial walk over every token (latency-bound: 0.57 ms on an H100 at B·T = 2048).

struct Dims {
    n_rows: u32,   // B·T
    t_len: u32,    // T
    c: u32,        // C
    ctx: u32,      // rows of the position table
    wte_off: u32,
    wpe_off: u32,
    dwpe_off: u32,
}

@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> grads: array<f32>;

fn linear_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]
@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= d.n_rows * d.c) {
        return;
    }
    let bt = i / d.c;
    let ch = i % d.c;
    let t = bt % d.t_len;
    out[i] = params[d.wte_off + tokens[bt] * d.c + ch] + params[d.wpe_off + t * d.c + ch];
}

// dwpe[t, c] = Σ_b dout[b, t, c] for t < T, 0 for T ≤ t < ctx (overwrites).
@compute @workgroup_size(64)
fn backward_wpe(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= d.ctx * d.c) {
        return;
    }
    let t = i / d.c;
    let ch = i % d.c;
    // Σ over the batch in row order; four rows' loads issued together per trip
    var sum = 0.0;
    if (t < d.t_len) {
        let step = d.t_len * d.c;
        var at = t * d.c + ch;
        let end = d.n_rows * d.c;
        for (; at + 3u * step < end; at += 4u * step) {
            let v0 = dout[at];
            let v1 = dout[at + step];
            let v2 = dout[at + 2u * step];
            let v3 = dout[at + 3u * step];
            sum = (((sum + v0) + v1) + v2) + v3;
        }
        for (; at < end; at += step) {
            sum += dout[at];
        }
    }
    grads[d.dwpe_off + i] = sum;
}
