// Causal multi-head self-attention: the row-wise softmax and its backward. The products
// around them are batched GEMMs in matmul.wgsl (flag BATCHED, one batch per (b, h), read
// in place from qkv, att and dy), recorded by plan.rs:
//   forward   att = QKᵀ (raw scores)  →  softmax_forward (scale, causal mask, softmax, in
//             place)  →  y = att·V
//   backward  dpre = dy·Vᵀ (datt)  →  softmax_backward (in place)  →  dq = dpre·K,
//             dk = dpreᵀ·Q, dv = attᵀ·dy
// Reference twin: `lab_cpu::reference::attention_forward` / `attention_backward`.
// Up to T = 64 a row of scores fits one GEMM tile, and both softmax passes run in the
// epilogues of those GEMMs instead (matmul.wgsl SOFTMAX, SOFTMAX_GRAD); these kernels
// serve longer sequences.
//
// softmax_forward, for each row (b, h, t) of att (B, NH, T, T) at att_off:
//   att[t2] = exp(s·scale − max) / Σ exp(s·scale − max) over t2 ≤ t, 0 for t2 > t
// softmax_backward, for each row, with datt parked in dpre:
//   dpre[t2] = att[t2] · (datt[t2] − Σ_{t2' ≤ t} att[t2'] · datt[t2']) · scale for t2 ≤ t,
//   0 above the diagonal (so the dk product needs no mask)
//
// Bindings (group 0):
//   0 uniform  Dims
//   1 att      array<f32>  (B, NH, T, T) at att_off   read_write  [softmax_forward]
//   2 att_r    array<f32>  (B, NH, T, T) at att_off   read        [softmax_backward]
//   3 dpre     array<f32>  (B, NH, T, T) scratch      read_write  [softmax_backward]
// Workgroup 64 per row (B·NH·T rows, x + y·65535 workgroups); each invocation takes the
// row's entries t2 = lid, lid + 64, …; the row's max and sums are reduced in workgroup
// memory. Rows lie contiguous, so the loads and stores coalesce.
//
// Why GEMMs and not one fused kernel: an earlier fused kernel (one invocation per query
// row, keys staged through workgroup memory) spent 65–130 µs per launch on an H100, its
// per-row vectors living in local memory; the tiled GEMM runs each product in a few µs,
// and (T, T) per (b, h) is small enough that materialising att costs little.

struct Dims {
    rows: u32,     // B·NH·T
    t_len: u32,
    att_off: u32,
    scale: f32,    // 1/√hs
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read_write> att: array<f32>;
@group(0) @binding(2) var<storage, read> att_r: array<f32>;
@group(0) @binding(3) var<storage, read_write> dpre: array<f32>;

var<workgroup> partial: array<f32, 64>;

fn workgroup_max(value: f32, lid: u32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = max(partial[lid], partial[lid + stride]);
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

fn workgroup_sum(value: f32, lid: u32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

fn row_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

@compute @workgroup_size(64)
fn softmax_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wg, nwg);
    if (row >= d.rows) {
        return; // uniform across the workgroup
    }
    let t = row % d.t_len;
    let base = d.att_off + row * d.t_len;
    var m = -3.4e38;
    for (var t2 = lid; t2 <= t; t2 += WG) {
        m = max(m, att[base + t2] * d.scale);
    }
    m = workgroup_max(m, lid);
    var sum = 0.0;
    for (var t2 = lid; t2 <= t; t2 += WG) {
        sum += exp(att[base + t2] * d.scale - m);
    }
    let inv_sum = 1.0 / workgroup_sum(sum, lid);
    for (var t2 = lid; t2 < d.t_len; t2 += WG) {
        var p = 0.0;
        if (t2 <= t) {
            p = exp(att[base + t2] * d.scale - m) * inv_sum;
        }
        att[base + t2] = p;
    }
}

@compute @workgroup_size(64)
fn softmax_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wg, nwg);
    if (row >= d.rows) {
        return;
    }
    let t = row % d.t_len;
    let base = row * d.t_len;
    var dot = 0.0;
    for (var t2 = lid; t2 <= t; t2 += WG) {
        dot += att_r[d.att_off + base + t2] * dpre[base + t2];
    }
    dot = workgroup_sum(dot, lid);
    for (var t2 = lid; t2 < d.t_len; t2 += WG) {
        var g = 0.0;
        if (t2 <= t) {
            g = att_r[d.att_off + base + t2] * (dpre[base + t2] - dot) * d.scale;
        }
        dpre[base + t2] = g;
    }
}
