// Reductions. `seq_sums`: the per-sequence reduction of the head's per-token numbers (the
// sequence log-prob and the row means of the top-10 instruments; reference twin: the row
// sums in lab-cpu `logprob_forward`). `split_sum`: the second half of a split reduction
// (matmul.wgsl's depth-split activation GEMMs, with their bias and residual epilogue),
// adding the splits' slabs in order and routing each column to its place.
// `gather_grads` (at the end): the same for all the parameter gradients at once
// (matmul.wgsl's split-K weight gradients, layernorm.wgsl's parameter gradients).
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
//
// split_sum bindings (group 0):
//   0 uniform  Split
//   4 partial  array<f32>  (splits, len) with slab stride `stride`            read
//   5 dst      array<f32>  the activation                                     read_write
//   6 bias     array<f32>  the parameters (BIAS); any buffer otherwise       read
//   7 addend   array<f32>  (rows, dst_rs) (ADDEND); any buffer otherwise     read
// For m < len, row = m / width, col = m % width:
//   dst[dst_off + row·dst_rs + col] = Σ_{z < splits, in order} partial[z·stride + m]
//       (+ bias[bias_off + col] if BIAS) (+ addend[addend_off + row·dst_rs + col] if ADDEND)
// with matmul.wgsl's BIAS and ADDEND bits in `flags`, appended to this source by lab-gpu
// from their one definition (uniforms.rs `GemmFlags`).
// (a depth-split forward GEMM gets its bias and residual epilogue here.) Workgroup 64,
// one invocation per m (x + y·65535·64).
//
// gather_grads bindings (group 0):
//   0 uniform  Gather (segments, total)
//   4 partial  array<f32>      the parameter gradients' slab regions         read
//   5 dst      array<f32>      the gradient buffer                           read_write
//   8 table    array<Segment>  one per gradient, in order of `start`          read
// For m < total, segment s with start[s] ≤ m < start[s + 1], j = m − start[s],
// row = j / width, col = j % width:
//   dst[main_off + row·main_rs + col]              (col < main_cols)
//   dst[side_off + row·side_rs + col − main_cols]  (otherwise)
//       = Σ_{z < splits, in order} partial[src_off + z·stride + j]
// Workgroup 64, one invocation per m (x + y·65535·64); see the kernel for why.

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
    // (Σ mask·logp, Σ entropy, Σ mass, scored count) over t in order; four positions a
    // trip, their loads issued together
    var acc = vec4<f32>(0.0);
    let row = b * d.t_len;
    var t = 1u;
    for (; t + 4u <= d.t_len; t += 4u) {
        add_position(row + t, &acc);
        add_position(row + t + 1u, &acc);
        add_position(row + t + 2u, &acc);
        add_position(row + t + 3u, &acc);
    }
    for (; t < d.t_len; t += 1u) {
        add_position(row + t, &acc);
    }
    var entropy = acc.y;
    var mass = acc.z;
    if (acc.w > 0.0) {
        entropy = entropy / acc.w;
        mass = mass / acc.w;
    }
    let n = d.b * d.t_len;
    out[n + b] = acc.x;
    out[n + d.b + b] = entropy;
    out[n + 2u * d.b + b] = mass;
}

// Position bt's share of seq_sums, if it is scored (loads unconditional: they are in range).
fn add_position(bt: u32, acc: ptr<function, vec4<f32>>) {
    let m = mask[bt];
    let v = vec4<f32>(m * out[bt], topk[2u * bt], topk[2u * bt + 1u], 1.0);
    if (m > 0.0) {
        *acc += v;
    }
}

struct Split {
    len: u32,
    splits: u32,
    stride: u32,
    width: u32,
    dst_off: u32,
    dst_rs: u32,
    flags: u32,
    bias_off: u32,
    addend_off: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> sp: Split;
@group(0) @binding(4) var<storage, read> partial: array<f32>;
@group(0) @binding(5) var<storage, read_write> dst: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read> addend: array<f32>;

@compute @workgroup_size(64)
fn split_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m = gid.x + gid.y * nwg.x * 64u;
    if (m >= sp.len) {
        return;
    }
    var sum = slab_sum(m, sp.splits, sp.stride);
    let row = m / sp.width;
    let col = m % sp.width;
    if ((sp.flags & BIAS) != 0u) {
        sum = bias[sp.bias_off + col] + sum;
    }
    if ((sp.flags & ADDEND) != 0u) {
        sum = addend[sp.addend_off + row * sp.dst_rs + col] + sum;
    }
    dst[sp.dst_off + row * sp.dst_rs + col] = sum;
}

// Σ_{z < splits} partial[at + z·stride], in slab order (reproducible), four slabs' loads
// issued together per trip.
fn slab_sum(at: u32, splits: u32, stride: u32) -> f32 {
    var sum = 0.0;
    var z = 0u;
    for (; z + 4u <= splits; z += 4u) {
        let v0 = partial[at + z * stride];
        let v1 = partial[at + (z + 1u) * stride];
        let v2 = partial[at + (z + 2u) * stride];
        let v3 = partial[at + (z + 3u) * stride];
        sum = (((sum + v0) + v1) + v2) + v3;
    }
    for (; z < splits; z += 1u) {
        sum += partial[at + z * stride];
    }
    return sum;
}

// Where column col of row row of a gradient goes: the main block for col < main_cols,
// else the side ([dW | db] sends its last column to the bias, [dγ | dβ] its second half
// to β).
fn destination(row: u32, col: u32, main_cols: u32, main_off: u32, main_rs: u32, side_off: u32, side_rs: u32) -> u32 {
    if (col >= main_cols) {
        return side_off + row * side_rs + (col - main_cols);
    }
    return main_off + row * main_rs + col;
}

// ---- gather_grads: every parameter gradient's split sum in one launch ----
// The backward's weight and LayerNorm-parameter gradients leave their split slabs side
// by side in one scratch buffer (each its own region) instead of reducing each right away;
// this one launch then sums them all (bindings and formula in the header): one launch a
// step instead of six per layer, each of which was a tiny kernel paying a whole launch
// and barrier. Each invocation finds its segment by bisection over the table's `start`.

struct Gather {
    segments: u32,
    total: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Segment {
    start: u32,
    splits: u32,
    stride: u32,
    width: u32,
    main_cols: u32,
    main_off: u32,
    main_rs: u32,
    side_off: u32,
    side_rs: u32,
    src_off: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> ga: Gather;
@group(0) @binding(8) var<storage, read> table: array<Segment>;

@compute @workgroup_size(64)
fn gather_grads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m = gid.x + gid.y * nwg.x * 64u;
    if (m >= ga.total) {
        return;
    }
    var lo = 0u;
    var hi = ga.segments;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (table[mid].start <= m) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let seg = table[lo];
    let j = m - seg.start;
    let at = destination(j / seg.width, j % seg.width, seg.main_cols, seg.main_off, seg.main_rs, seg.side_off, seg.side_rs);
    dst[at] = slab_sum(seg.src_off + j, seg.splits, seg.stride);
}
