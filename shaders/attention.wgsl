// Causal multi-head self-attention, forward and backward.
// Reference twin: lab-cpu `attention_forward` / `attention_backward`.
//
// qkv[b, t] = [q | k | v], each C = NH·hs; per (b, h):
//   att = softmax(q·kᵀ / √hs, entries t2 > t masked)   (T, T), kept for the backward
//   out[b, :, h·hs..] = att · v                          (T, hs)
//
// Bindings (group 0):
//   0 uniform  Dims
//   1 qkv      array<f32>  (B, T, 3C) at qkv_off         read
//   2 att      array<f32>  (B, NH, T, T) at att_off      read_write  [forward]
//   3 out      array<f32>  (B, T, C) at out_off          read_write  [forward]
//   4 dout     array<f32>  (B, T, C)                     read        [backward_*]
//   5 att_r    array<f32>  (B, NH, T, T) at att_off      read        [backward_*]
//   6 dpre     array<f32>  (B, NH, T, T) scratch         read_write  [backward_query]
//   7 dqkv     array<f32>  (B, T, 3C)                    read_write  [backward_*]
//   8 dpre_r   array<f32>  (B, NH, T, T) scratch         read        [backward_key]
// Workgroup 64; one invocation per (b, h, t) row, B·NH·T in all (x + y·65535·64).
//
// Fusion: forward does scores, causal mask, softmax and att·v in one kernel (one launch
// instead of three, and the (T, T) scores never leave the invocation except as the `att`
// the backward needs). backward_query fuses datt = dy·vᵀ, the softmax backward
// dpre = att ⊙ (datt − Σ att ⊙ datt) / √hs and dq = dpre·k for its query row;
// backward_key then sums over query rows for dk = dpreᵀ·q and dv = attᵀ·dy. The split is
// where a grid-wide dependency sits (dk needs every query row's dpre). A per-row
// invocation is the plain shape: right for T ≤ 256 and hs ≤ 64 here; a tiled
// flash-attention kernel is the upgrade path for long contexts.

struct Dims {
    b: u32,
    t_len: u32,
    c: u32,
    nh: u32,
    hs: u32,
    qkv_off: u32,
    att_off: u32,
    out_off: u32,
    scale: f32,   // 1/√hs
}

@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> att: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read> att_r: array<f32>;
@group(0) @binding(6) var<storage, read_write> dpre: array<f32>;
@group(0) @binding(7) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(8) var<storage, read> dpre_r: array<f32>;

struct Row {
    valid: bool,
    b: u32,
    h: u32,
    t: u32,
}

fn row_of(gid: vec3<u32>, nwg: vec3<u32>) -> Row {
    let i = gid.x + gid.y * nwg.x * 64u;
    let t = i % d.t_len;
    let h = (i / d.t_len) % d.nh;
    let b = i / (d.t_len * d.nh);
    return Row(b < d.b, b, h, t);
}

// offset of q (part 0), k (1) or v (2) of head h at (b, t), relative to the layer
fn qkv_at(b: u32, t: u32, part: u32, h: u32) -> u32 {
    return (b * d.t_len + t) * 3u * d.c + part * d.c + h * d.hs;
}

// offset of att[b, h, t, 0] relative to the layer
fn att_row(b: u32, h: u32, t: u32) -> u32 {
    return ((b * d.nh + h) * d.t_len + t) * d.t_len;
}

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(gid, nwg);
    if (!row.valid) {
        return;
    }
    let q0 = d.qkv_off + qkv_at(row.b, row.t, 0u, row.h);
    let a0 = d.att_off + att_row(row.b, row.h, row.t);
    var max_score = -3.4e38;
    for (var t2 = 0u; t2 <= row.t; t2 += 1u) {
        let k0 = d.qkv_off + qkv_at(row.b, t2, 1u, row.h);
        var dot = 0.0;
        for (var i = 0u; i < d.hs; i += 1u) {
            dot += qkv[q0 + i] * qkv[k0 + i];
        }
        let score = dot * d.scale;
        att[a0 + t2] = score;
        max_score = max(max_score, score);
    }
    var sum = 0.0;
    for (var t2 = 0u; t2 <= row.t; t2 += 1u) {
        let e = exp(att[a0 + t2] - max_score);
        att[a0 + t2] = e;
        sum += e;
    }
    let inv_sum = 1.0 / sum;
    for (var t2 = 0u; t2 <= row.t; t2 += 1u) {
        att[a0 + t2] = att[a0 + t2] * inv_sum;
    }
    for (var t2 = row.t + 1u; t2 < d.t_len; t2 += 1u) {
        att[a0 + t2] = 0.0;
    }
    let y0 = d.out_off + (row.b * d.t_len + row.t) * d.c + row.h * d.hs;
    for (var i = 0u; i < d.hs; i += 1u) {
        var y = 0.0;
        for (var t2 = 0u; t2 <= row.t; t2 += 1u) {
            y += att[a0 + t2] * qkv[d.qkv_off + qkv_at(row.b, t2, 2u, row.h) + i];
        }
        out[y0 + i] = y;
    }
}

// For query row t: dpre[t, :] and dq[t]. dout and dqkv are single-layer buffers (offset 0).
@compute @workgroup_size(64)
fn backward_query(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(gid, nwg);
    if (!row.valid) {
        return;
    }
    let a0 = d.att_off + att_row(row.b, row.h, row.t);
    let p0 = att_row(row.b, row.h, row.t);
    let dy0 = (row.b * d.t_len + row.t) * d.c + row.h * d.hs;
    // datt[t2] = dy[t] · v[t2], parked in dpre; dot = Σ att ⊙ datt
    var dot = 0.0;
    for (var t2 = 0u; t2 <= row.t; t2 += 1u) {
        let v0 = d.qkv_off + qkv_at(row.b, t2, 2u, row.h);
        var datt = 0.0;
        for (var i = 0u; i < d.hs; i += 1u) {
            datt += dout[dy0 + i] * qkv[v0 + i];
        }
        dpre[p0 + t2] = datt;
        dot += att_r[a0 + t2] * datt;
    }
    for (var t2 = 0u; t2 <= row.t; t2 += 1u) {
        dpre[p0 + t2] = att_r[a0 + t2] * (dpre[p0 + t2] - dot) * d.scale;
    }
    for (var t2 = row.t + 1u; t2 < d.t_len; t2 += 1u) {
        dpre[p0 + t2] = 0.0;
    }
    let dq0 = qkv_at(row.b, row.t, 0u, row.h);
    for (var i = 0u; i < d.hs; i += 1u) {
        var dq = 0.0;
        for (var t2 = 0u; t2 <= row.t; t2 += 1u) {
            dq += dpre[p0 + t2] * qkv[d.qkv_off + qkv_at(row.b, t2, 1u, row.h) + i];
        }
        dqkv[dq0 + i] = dq;
    }
}

// For key/value row t2 (named row.t here): dk[t2] = Σ_{t ≥ t2} dpre[t, t2] q[t] and
// dv[t2] = Σ_{t ≥ t2} att[t, t2] dy[t].
@compute @workgroup_size(64)
fn backward_key(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(gid, nwg);
    if (!row.valid) {
        return;
    }
    let t2 = row.t;
    let dk0 = qkv_at(row.b, t2, 1u, row.h);
    let dv0 = qkv_at(row.b, t2, 2u, row.h);
    for (var i = 0u; i < d.hs; i += 1u) {
        var dk = 0.0;
        var dv = 0.0;
        for (var t = t2; t < d.t_len; t += 1u) {
            let p = att_row(row.b, row.h, t) + t2;
            dk += dpre_r[p] * qkv[d.qkv_off + qkv_at(row.b, t, 0u, row.h) + i];
            dv += att_r[d.att_off + p] * dout[(row.b * d.t_len + t) * d.c + row.h * d.hs + i];
        }
        dqkv[dk0 + i] = dk;
        dqkv[dv0 + i] = dv;
    }
}
