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
// Workgroup 64 = one block of 64 consecutive rows t of one (b, h); dispatch
// (⌈T/64⌉, B·NH). Keys (and values, queries, dy: whatever the rows sum over) pass through
// workgroup memory in chunks of KC rows as vec4 (2·KC·HS floats, 16 KiB at HS = 64), so
// the 64 invocations read each chunk from memory once, coalesced, instead of each walking
// the (b, h) slice on its own; each invocation keeps its own row's vectors (q, dy, and the
// accumulators) in vec4 registers. HS, the head size, is a constant the engine sets when it
// builds the pipeline (kernels.rs), so those loops have fixed trip counts; it must be a
// multiple of 4, at most 64.
//
// Fusion: forward does scores, causal mask, softmax and att·v in one kernel (one launch
// instead of three; the scores never leave the invocation except as the `att` the backward
// needs): a first sweep finds the row's max and normaliser (online), a second recomputes
// the scores, writes the probabilities and accumulates att·v. backward_query fuses
// datt = dy·vᵀ, the softmax backward dpre = att ⊙ (datt − Σ att ⊙ datt) / √hs and
// dq = dpre·k for its query row; backward_key then sums over query rows for dk = dpreᵀ·q
// and dv = attᵀ·dy. The split is where a grid-wide dependency sits (dk needs every query
// row's dpre).

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

const HS: u32 = 16u; // head size: the engine substitutes the model's (kernels.rs)
const HS4: u32 = HS / 4u;
const KC: u32 = 32u; // rows per chunk in workgroup memory
const WG: u32 = 64u;

var<workgroup> k_s: array<vec4<f32>, KC * HS4>; // [row in chunk][HS / 4]
var<workgroup> v_s: array<vec4<f32>, KC * HS4>;

// offset of q (part 0), k (1) or v (2) of head h at (b, t), relative to the layer
fn qkv_at(b: u32, t: u32, part: u32, h: u32) -> u32 {
    return (b * d.t_len + t) * 3u * d.c + part * d.c + h * HS;
}

// offset of att[b, h, t, 0] relative to the layer
fn att_row(b: u32, h: u32, t: u32) -> u32 {
    return ((b * d.nh + h) * d.t_len + t) * d.t_len;
}

fn qkv4(at: u32) -> vec4<f32> {
    return vec4<f32>(qkv[at], qkv[at + 1u], qkv[at + 2u], qkv[at + 3u]);
}

fn dout4(at: u32) -> vec4<f32> {
    return vec4<f32>(dout[at], dout[at + 1u], dout[at + 2u], dout[at + 3u]);
}

// Stage part `part` of qkv for rows c0..c0+KC of (b, h) into k_s (into_v false) or v_s.
fn stage_qkv(into_v: bool, part: u32, b: u32, h: u32, c0: u32, li: u32) {
    for (var e = li; e < KC * HS4; e += WG) {
        let t = c0 + e / HS4;
        var x = vec4<f32>(0.0);
        if (t < d.t_len) {
            x = qkv4(d.qkv_off + qkv_at(b, t, part, h) + 4u * (e % HS4));
        }
        if (into_v) {
            v_s[e] = x;
        } else {
            k_s[e] = x;
        }
    }
}

// Stage dy (head h) for rows c0..c0+KC of batch row b into v_s.
fn stage_dout(b: u32, h: u32, c0: u32, li: u32) {
    for (var e = li; e < KC * HS4; e += WG) {
        let t = c0 + e / HS4;
        var x = vec4<f32>(0.0);
        if (t < d.t_len) {
            x = dout4((b * d.t_len + t) * d.c + h * HS + 4u * (e % HS4));
        }
        v_s[e] = x;
    }
}

// q · k_s[j] (or any register row against a staged row)
fn dot_k(x: array<vec4<f32>, HS4>, j: u32) -> f32 {
    var acc = 0.0;
    for (var i = 0u; i < HS4; i += 1u) {
        acc += dot(x[i], k_s[j * HS4 + i]);
    }
    return acc;
}

fn dot_v(x: array<vec4<f32>, HS4>, j: u32) -> f32 {
    var acc = 0.0;
    for (var i = 0u; i < HS4; i += 1u) {
        acc += dot(x[i], v_s[j * HS4 + i]);
    }
    return acc;
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wg.y / d.nh;
    let h = wg.y % d.nh;
    let t = wg.x * WG + li;
    let valid = t < d.t_len;
    // the block's last row bounds the keys any of its rows sees (uniform across the group)
    let t_last = min(d.t_len, wg.x * WG + WG) - 1u;
    var q: array<vec4<f32>, HS4>;
    if (valid) {
        for (var i = 0u; i < HS4; i += 1u) {
            q[i] = qkv4(d.qkv_off + qkv_at(b, t, 0u, h) + 4u * i);
        }
    }
    // sweep 1: the row's max score and Σ exp(score − max), online
    var max_score = -3.4e38;
    var sum = 0.0;
    for (var c0 = 0u; c0 <= t_last; c0 += KC) {
        workgroupBarrier();
        stage_qkv(false, 1u, b, h, c0, li);
        workgroupBarrier();
        if (valid) {
            for (var j = 0u; j < KC; j += 1u) {
                if (c0 + j <= t) {
                    let score = dot_k(q, j) * d.scale;
                    let m = max(max_score, score);
                    sum = sum * exp(max_score - m) + exp(score - m);
                    max_score = m;
                }
            }
        }
    }
    // sweep 2: probabilities (zero above the diagonal) and att·v
    let inv_sum = 1.0 / sum;
    let a0 = d.att_off + att_row(b, h, t);
    var y: array<vec4<f32>, HS4>;
    for (var i = 0u; i < HS4; i += 1u) {
        y[i] = vec4<f32>(0.0);
    }
    for (var c0 = 0u; c0 < d.t_len; c0 += KC) {
        workgroupBarrier();
        if (c0 <= t_last) {
            stage_qkv(false, 1u, b, h, c0, li);
            stage_qkv(true, 2u, b, h, c0, li);
        }
        workgroupBarrier();
        if (valid) {
            for (var j = 0u; j < KC; j += 1u) {
                let t2 = c0 + j;
                if (t2 <= t) {
                    let p = exp(dot_k(q, j) * d.scale - max_score) * inv_sum;
                    att[a0 + t2] = p;
                    for (var i = 0u; i < HS4; i += 1u) {
                        y[i] += p * v_s[j * HS4 + i];
                    }
                } else if (t2 < d.t_len) {
                    att[a0 + t2] = 0.0;
                }
            }
        }
    }
    if (valid) {
        let y0 = d.out_off + (b * d.t_len + t) * d.c + h * HS;
        for (var i = 0u; i < HS4; i += 1u) {
            out[y0 + 4u * i] = y[i].x;
            out[y0 + 4u * i + 1u] = y[i].y;
            out[y0 + 4u * i + 2u] = y[i].z;
            out[y0 + 4u * i + 3u] = y[i].w;
        }
    }
}

// For query row t: dpre[t, :] and dq[t]. dout and dqkv are single-layer buffers (offset 0).
@compute @workgroup_size(64)
fn backward_query(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wg.y / d.nh;
    let h = wg.y % d.nh;
    let t = wg.x * WG + li;
    let valid = t < d.t_len;
    let t_last = min(d.t_len, wg.x * WG + WG) - 1u;
    let a0 = d.att_off + att_row(b, h, t);
    let p0 = att_row(b, h, t);
    var dy: array<vec4<f32>, HS4>;
    if (valid) {
        for (var i = 0u; i < HS4; i += 1u) {
            dy[i] = dout4((b * d.t_len + t) * d.c + h * HS + 4u * i);
        }
    }
    // sweep 1: Σ_t2 att ⊙ datt, datt[t2] = dy[t] · v[t2]
    var total = 0.0;
    for (var c0 = 0u; c0 <= t_last; c0 += KC) {
        workgroupBarrier();
        stage_qkv(true, 2u, b, h, c0, li);
        workgroupBarrier();
        if (valid) {
            for (var j = 0u; j < KC; j += 1u) {
                if (c0 + j <= t) {
                    total += att_r[a0 + c0 + j] * dot_v(dy, j);
                }
            }
        }
    }
    // sweep 2: dpre and dq = dpre · k
    var dq: array<vec4<f32>, HS4>;
    for (var i = 0u; i < HS4; i += 1u) {
        dq[i] = vec4<f32>(0.0);
    }
    for (var c0 = 0u; c0 <= t_last; c0 += KC) {
        workgroupBarrier();
        stage_qkv(false, 1u, b, h, c0, li);
        stage_qkv(true, 2u, b, h, c0, li);
        workgroupBarrier();
        if (valid) {
            for (var j = 0u; j < KC; j += 1u) {
                let t2 = c0 + j;
                if (t2 <= t) {
                    let g = att_r[a0 + t2] * (dot_v(dy, j) - total) * d.scale;
                    dpre[p0 + t2] = g;
                    for (var i = 0u; i < HS4; i += 1u) {
                        dq[i] += g * k_s[j * HS4 + i];
                    }
                }
            }
        }
    }
    if (valid) {
        let dq0 = qkv_at(b, t, 0u, h);
        for (var i = 0u; i < HS4; i += 1u) {
            dqkv[dq0 + 4u * i] = dq[i].x;
            dqkv[dq0 + 4u * i + 1u] = dq[i].y;
            dqkv[dq0 + 4u * i + 2u] = dq[i].z;
            dqkv[dq0 + 4u * i + 3u] = dq[i].w;
        }
    }
}

// For key/value row t2: dk[t2] = Σ_{t ≥ t2} dpre[t, t2] q[t] and dv[t2] = Σ_{t ≥ t2}
// att[t, t2] dy[t]; queries staged in k_s, dy in v_s.
@compute @workgroup_size(64)
fn backward_key(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wg.y / d.nh;
    let h = wg.y % d.nh;
    let t2 = wg.x * WG + li;
    let valid = t2 < d.t_len;
    var dk: array<vec4<f32>, HS4>;
    var dv: array<vec4<f32>, HS4>;
    for (var i = 0u; i < HS4; i += 1u) {
        dk[i] = vec4<f32>(0.0);
        dv[i] = vec4<f32>(0.0);
    }
    // query rows from the block's first key row on (uniform across the group)
    for (var c0 = wg.x * WG; c0 < d.t_len; c0 += KC) {
        workgroupBarrier();
        stage_qkv(false, 0u, b, h, c0, li);
        stage_dout(b, h, c0, li);
        workgroupBarrier();
        if (valid) {
            for (var j = 0u; j < KC; j += 1u) {
                let t = c0 + j;
                if (t >= t2 && t < d.t_len) {
                    let at = att_row(b, h, t) + t2;
                    let g = dpre_r[at];
                    let p = att_r[d.att_off + at];
                    for (var i = 0u; i < HS4; i += 1u) {
                        dk[i] += g * k_s[j * HS4 + i];
                        dv[i] += p * v_s[j * HS4 + i];
                    }
                }
            }
        }
    }
    if (valid) {
        let dk0 = qkv_at(b, t2, 1u, h);
        let dv0 = qkv_at(b, t2, 2u, h);
        for (var i = 0u; i < HS4; i += 1u) {
            dqkv[dk0 + 4u * i] = dk[i].x;
            dqkv[dk0 + 4u * i + 1u] = dk[i].y;
            dqkv[dk0 + 4u * i + 2u] = dk[i].z;
            dqkv[dk0 + 4u * i + 3u] = dk[i].w;
            dqkv[dv0 + 4u * i] = dv[i].x;
            dqkv[dv0 + 4u * i + 1u] = dv[i].y;
            dqkv[dv0 + 4u * i + 2u] = dv[i].z;
            dqkv[dv0 + 4u * i + 3u] = dv[i].w;
        }
    }
}
