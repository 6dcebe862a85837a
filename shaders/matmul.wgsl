// Matrix multiply with bias and residual epilogue (forward), and the pieces of its
// backward: one strided GEMM kernel serves y = x·Wᵀ + b, dx = dy·W and dW = dyᵀ·x (with
// db = dyᵀ·1 as an extra column), because each is C[r, s] = Σ_k A[r, k] · B[k, s] read
// through different strides.
// Reference twin: `lab_cpu::reference::matmul_forward` / `matmul_backward` (and the residual sums of `reference::forward`).
//
//   C[c_off + z·c_zs + r·c_rs + s] = addend[addend_off + r·c_rs + s]      (if ADDEND)
//                                  + (bias[bias_off + s]                   (if BIAS)
//                                     + Σ_{k in split z} A[r, k] · B[k, s])
//   A[r, k] = a[a_off + r·a_rs + k·a_ks], or (tokens[a_off + k] == r) as 0/1 (ONEHOT_A:
//             the one-hot matrix of the token ids, for the embedding's backward)
//   B[k, s] = b[b_off + k·b_ks + s·b_ss], or 1 for the last column s = cols − 1
//             (ONES_COLUMN: the ones column that turns dyᵀ·x into [dW | db] in one pass;
//             when cols − 1 is a multiple of 64 that column would be a tile of its own,
//             63/64 idle, so the host leaves it out of the grid and the last full tile adds
//             it: its row sums of A, kept beside the tile's accumulators)
//   for r < rows, s < cols. Batched (BATCHED): workgroup z is a batch of independent
//   products, z = zo·z_inner + zi, each operand offset by zo·(·)_zo + zi·(·)_zi: the
//   per-(b, h) products of attention (zo = b, zi = h), read in place from qkv and att.
//   Otherwise split z (workgroup z) sums k in [z·k_chunk, (z+1)·k_chunk):
//   split-K, for the weight gradients whose depth (N = B·T) dwarfs their output; each split
//   writes its own slab of C (c_zs apart) and reduce.wgsl `split_sum` (activations) or
//   `gather_grads` (weight gradients) adds the slabs in order, so the result is
//   reproducible (no atomics).
//   Then, for the MLP's GELU (tanh approximation, GPT-2's `gelu_new`):
//     GELU_OUT  (forward):  aux[aux_off + r·c_rs + s] = gelu(C[...]) as well
//     GELU_GRAD (backward): C[...] ·= gelu′(aux[aux_off + r·c_rs + s])
//   with gelu(x) = ½ x (1 + tanh u), u = √(2/π) (x + 0.044715 x³), and
//   gelu′(x) = ½ (1 + tanh u) + ½ x sech²u √(2/π) (1 + 3·0.044715 x²); tanh's argument
//   is clamped to ±15 (±1 in f32 already; some backends evaluate tanh through exp and
//   give NaN beyond). Reference twin: `lab_cpu::reference::gelu_forward` / `gelu_backward`.
//   And for attention when a row of scores fits one tile (T ≤ 64; batched, cols = T):
//     SOFTMAX:      C = softmax over s ≤ r of scale·C, 0 for s > r (attention.wgsl
//                   `softmax_forward`, fused into the QKᵀ product)
//     SOFTMAX_GRAD: C = P ⊙ (C − Σ_{s ≤ r} P ⊙ C) · scale, 0 for s > r, with the
//                   probabilities P read through `addend` at addend_off + (the C index −
//                   c_off) (attention.wgsl `softmax_backward`, fused into dy·Vᵀ)
//   The row's max and sums are reduced across the 16 invocations holding it in workgroup
//   memory; each saves a launch per layer and a pass over (B, NH, T, T).
//
// Bindings (group 0):
//   0 uniform  Gemm
//   1 a        array<vec4<f32>>  read    (rows, depth) through (a_rs, a_ks), flat floats
//   2 b        array<vec4<f32>>  read    (depth, cols) through (b_ks, b_ss), flat floats
//              (declared as vec4 so an aligned operand loads four floats at once; the
//              engine sizes every buffer to a multiple of 16 bytes)
//   3 bias     array<f32>  read          (cols) at bias_off; any buffer when unused
//   4 addend   array<f32>  read          (rows, cols) at addend_off; any buffer when unused
//   5 c        array<f32>  read_write    (splits, rows, cols) at c_off, strides (c_zs, c_rs)
//   6 tokens   array<u32>  read          (depth) at a_off, for ONEHOT_A; any buffer otherwise
//   7 aux      array<f32>  read_write    (rows, cols) at aux_off: GELU's output (GELU_OUT) or
//                                        input (GELU_GRAD); any other buffer otherwise
// Shapes as used by the model (N = B·T, IC/OC the layer's in/out channels):
//   forward   A = x (N, IC), B = Wᵀ (IC, OC) read from W (OC, IC), C = y (N, OC)
//   dinp      A = dy (N, OC), B = W (OC, IC), C = dx (N, IC)
//   dweight   A = dyᵀ (OC, N) read from dy, B = [x | 1] (N, IC + 1), C = partial [dW | db]
//   dwte      A = one-hot(tokens)ᵀ (V, N), B = dres (N, C), C = partial dwte
// Workgroup 16×16 = 256 invocations computing a 64×64 tile of C; invocation (x, y) owns
// rows 4y..4y+3 and columns 4x..4x+3, accumulated in four vec4 registers (no arrays: an
// indexed per-invocation array can land in slow local memory). Dispatch (⌈cols/64⌉,
// ⌈rows/64⌉, splits). K advances 16 at a time through two 16×64 tiles held as vec4 in
// workgroup memory: per k, two 16-byte reads feed 16 multiply-adds; the next
// tiles' loads are in flight while this tile's multiply-adds run. (8.5 KiB with the
// padding described at `PITCH`.) The 16 k of a step are written out as calls with a
// constant k (`mac`): every workgroup-memory read is then a fixed offset from one
// per-invocation address, and naga's index clamps (min(k, 15)) fold away once the driver
// inlines the call; in a loop each read paid its own clamp and address arithmetic.
// Operand tiles are loaded in quads, four elements consecutive along the operand's
// contiguous axis (k when its k stride is 1, else its rows or columns): one 16-byte load
// per invocation and tile when the host marks the operand aligned (VEC_A for A, VEC_B
// for B: unit stride along that axis, and every offset, the other stride and the extent
// along it multiples of 4), else four checked element loads (the one-hot A, the ones
// column, odd shapes). A quad along k is stored as four floats, one across rows or
// columns as one vec4.
//
// Fusion: the residual add of each block (x + attproj(·), x + fcproj(·)) is the `addend`
// epilogue of the projection GEMM, saving a kernel launch and a round trip of (B, T, C)
// through memory per branch; the bias is its prologue; the bias gradient rides along as the
// ones column. The backward of a residual add is the identity, so it needs no kernel at
// all (see layernorm.wgsl, `accumulate`). GELU has no kernel of its own either: the fc
// GEMM writes both its output and GELU of it, and the input gradient of fcproj comes out
// multiplied by GELU's derivative, saving two launches per layer and a round trip of the
// (B, T, 4C) activation through memory each (those GEMMs are never split, so the epilogue
// sees whole sums).
//
// The flags (BIAS, ADDEND, ONES_COLUMN, ONEHOT_A, BATCHED, GELU_OUT, GELU_GRAD, SOFTMAX,
// SOFTMAX_GRAD, VEC_A, VEC_B: bits of `Gemm.flags`) are not declared in this file: they
// are defined once, on the host (lab-gpu uniforms.rs `GemmFlags`), and lab-gpu appends
// them to this source as WGSL constants when it compiles it (kernels.rs `source`).

struct Gemm {
    rows: u32,
    cols: u32,
    depth: u32,
    flags: u32,
    a_off: u32,
    a_rs: u32,
    a_ks: u32,
    b_off: u32,
    b_ks: u32,
    b_ss: u32,
    c_off: u32,
    c_rs: u32,
    bias_off: u32,
    addend_off: u32,
    k_chunk: u32,
    c_zs: u32,
    // batched mode (BATCHED): workgroup z is batch z = zo·z_inner + zi, and each operand
    // starts at off + zo·(·)_zo + zi·(·)_zi (attention's per-(b, h) products)
    z_inner: u32,
    a_zo: u32,
    a_zi: u32,
    b_zo: u32,
    b_zi: u32,
    c_zo: u32,
    c_zi: u32,
    aux_off: u32,
    scale: f32, // softmax epilogues (SOFTMAX, SOFTMAX_GRAD)
}

const TILE: u32 = 64u;
const KT: u32 = 16u;
const NEG_BIG: f32 = -3.4e38;
const GELU_SCALE: f32 = 0.7978845608028654; // √(2/π)
const GELU_CUBIC: f32 = 0.044715;

@group(0) @binding(0) var<uniform> g: Gemm;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> addend: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
@group(0) @binding(6) var<storage, read> tokens: array<u32>;
@group(0) @binding(7) var<storage, read_write> aux: array<f32>;

// where this workgroup's batch of A, B and C starts
var<private> a_base: u32;
var<private> b_base: u32;
var<private> c_base: u32;

// Tile rows are padded by one vec4 (pitch 17 vec4 = 68 floats): a warp storing quads that
// run along k writes, per store, 8 consecutive rows at each of 4 k that are 4 tile rows
// apart; unpadded those are 256 floats apart, one bank (a 4-way conflict), padded 272
// (2-way). Reads stay broadcasts and consecutive vec4.
const PITCH: u32 = 17u;
var<workgroup> a_tile: array<array<vec4<f32>, PITCH>, KT>; // [k][r / 4]
// [k][s / 4]
var<workgroup> b_tile: array<array<vec4<f32>, PITCH>, KT>;

// This invocation's 4×4 block of C and, in the workgroups that fold the ones column, its
// rows' sums of A. Private
// variables so that `mac` can update them; registers once the calls are inlined.
var<private> acc0: vec4<f32>;
var<private> acc1: vec4<f32>;
var<private> acc2: vec4<f32>;
var<private> acc3: vec4<f32>;
var<private> sum_lo: vec4<f32>;

fn element_a(r: u32, k: u32) -> f32 {
    if ((g.flags & ONEHOT_A) != 0u) {
        return select(0.0, 1.0, tokens[g.a_off + k] == r);
    }
    let at = a_base + r * g.a_rs + k * g.a_ks;
    return a[at / 4u][at % 4u];
}

fn element_b(k: u32, s: u32) -> f32 {
    if ((g.flags & ONES_COLUMN) != 0u && s + 1u == g.cols) {
        return 1.0;
    }
    let at = b_base + k * g.b_ks + s * g.b_ss;
    return b[at / 4u][at % 4u];
}

// A[r, k] and B[k, s], zero outside the operand (k_end: this split's end).
fn checked_a(r: u32, k: u32, k_end: u32) -> f32 {
    if (r < g.rows && k < k_end) {
        return element_a(r, k);
    }
    return 0.0;
}

fn checked_b(k: u32, s: u32, k_end: u32) -> f32 {
    if (s < g.cols && k < k_end) {
        return element_b(k, s);
    }
    return 0.0;
}

fn tanh_of_gelu_arg(x: f32) -> f32 {
    return tanh(clamp(GELU_SCALE * (x + GELU_CUBIC * x * x * x), -15.0, 15.0));
}

fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + tanh_of_gelu_arg(x));
}

fn gelu_grad(x: f32) -> f32 {
    let th = tanh_of_gelu_arg(x);
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
}

// C[r, s..s+3] from this invocation's sums and the epilogue flags. Lanes past C's last
// column read that column's inputs (in range) and are not written.
fn store_row(r: u32, s: u32, acc: vec4<f32>) {
    if (r >= g.rows || s >= g.cols) {
        return;
    }
    let col = min(vec4<u32>(s, s + 1u, s + 2u, s + 3u), vec4<u32>(g.cols - 1u));
    let row = r * g.c_rs;
    var out = acc;
    if ((g.flags & BIAS) != 0u) {
        let o = g.bias_off + col;
        out = vec4<f32>(bias[o.x], bias[o.y], bias[o.z], bias[o.w]) + out;
    }
    if ((g.flags & ADDEND) != 0u) {
        let o = g.addend_off + row + col;
        out = vec4<f32>(addend[o.x], addend[o.y], addend[o.z], addend[o.w]) + out;
    }
    let x = g.aux_off + row + col;
    if ((g.flags & GELU_GRAD) != 0u) {
        out *= vec4<f32>(gelu_grad(aux[x.x]), gelu_grad(aux[x.y]), gelu_grad(aux[x.z]), gelu_grad(aux[x.w]));
    }
    let at = c_base + row + s;
    let gelu_out = (g.flags & GELU_OUT) != 0u;
    c[at] = out.x;
    if (gelu_out) {
        aux[x.x] = gelu(out.x);
    }
    if (s + 1u < g.cols) {
        c[at + 1u] = out.y;
        if (gelu_out) {
            aux[x.y] = gelu(out.y);
        }
    }
    if (s + 2u < g.cols) {
        c[at + 2u] = out.z;
        if (gelu_out) {
            aux[x.z] = gelu(out.z);
        }
    }
    if (s + 3u < g.cols) {
        c[at + 3u] = out.w;
        if (gelu_out) {
            aux[x.w] = gelu(out.w);
        }
    }
}

fn a_k_contiguous() -> bool {
    return g.a_ks == 1u && (g.flags & ONEHOT_A) == 0u;
}

fn b_k_contiguous() -> bool {
    return g.b_ks == 1u;
}

// Where quad i of a (depth × width) operand tile starts: (k, row or column). Along k,
// neighbouring invocations take the next four k of a row (coalesced); otherwise the next
// four rows/columns.
fn quad_at(i: u32, k_contiguous: bool, depth: u32, width: u32) -> vec2<u32> {
    if (k_contiguous) {
        let per_row = depth / 4u;
        return vec2<u32>(4u * (i % per_row), i / per_row);
    }
    let per_k = width / 4u;
    return vec2<u32>(i / per_k, 4u * (i % per_k));
}

// The quad of A starting at (r, k): A[r, k..k+3] along k, else A[r..r+3, k].
fn fetch_a(r: u32, k: u32, k_end: u32) -> vec4<f32> {
    if ((g.flags & VEC_A) != 0u) {
        // aligned: the whole quad is inside A exactly when its first element is
        if (r < g.rows && k < k_end) {
            return a[(a_base + r * g.a_rs + k * g.a_ks) / 4u];
        }
        return vec4<f32>(0.0);
    }
    let along_k = a_k_contiguous();
    let dr = select(1u, 0u, along_k);
    let dk = select(0u, 1u, along_k);
    return vec4<f32>(checked_a(r, k, k_end), checked_a(r + dr, k + dk, k_end), checked_a(r + 2u * dr, k + 2u * dk, k_end), checked_a(r + 3u * dr, k + 3u * dk, k_end));
}

// The quad of B starting at (k, s): B[k..k+3, s] along k, else B[k, s..s+3].
fn fetch_b(k: u32, s: u32, k_end: u32) -> vec4<f32> {
    if ((g.flags & VEC_B) != 0u) {
        if (s < g.cols && k < k_end) {
            return b[(b_base + k * g.b_ks + s * g.b_ss) / 4u];
        }
        return vec4<f32>(0.0);
    }
    let along_k = b_k_contiguous();
    let ds = select(1u, 0u, along_k);
    let dk = select(0u, 1u, along_k);
    return vec4<f32>(checked_b(k, s, k_end), checked_b(k + dk, s + ds, k_end), checked_b(k + 2u * dk, s + 2u * ds, k_end), checked_b(k + 3u * dk, s + 3u * ds, k_end));
}

// Store quads at (tile row k, column w): four floats down the rows when the quad runs
// along k, one vec4 when it runs along w (w is a multiple of 4 then).
fn put_a(k: u32, w: u32, v: vec4<f32>) {
    if (a_k_contiguous()) {
        a_tile[k][w / 4u][w % 4u] = v.x;
        a_tile[k + 1u][w / 4u][w % 4u] = v.y;
        a_tile[k + 2u][w / 4u][w % 4u] = v.z;
        a_tile[k + 3u][w / 4u][w % 4u] = v.w;
    } else {
        a_tile[k][w / 4u] = v;
    }
}

fn put_b(k: u32, w: u32, v: vec4<f32>) {
    if (b_k_contiguous()) {
        b_tile[k][w / 4u][w % 4u] = v.x;
        b_tile[k + 1u][w / 4u][w % 4u] = v.y;
        b_tile[k + 2u][w / 4u][w % 4u] = v.z;
        b_tile[k + 3u][w / 4u][w % 4u] = v.w;
    } else {
        b_tile[k][w / 4u] = v;
    }
}

// Set this workgroup's operand bases (batch) and return its k range (split).
fn begin(wg: vec3<u32>) -> vec2<u32> {
    let batched = (g.flags & BATCHED) != 0u;
    let split = select(wg.z, 0u, batched);
    let batch = select(0u, wg.z, batched);
    let zo = batch / g.z_inner;
    let zi = batch % g.z_inner;
    a_base = g.a_off + zo * g.a_zo + zi * g.a_zi;
    b_base = g.b_off + zo * g.b_zo + zi * g.b_zi;
    c_base = g.c_off + split * g.c_zs + zo * g.c_zo + zi * g.c_zi;
    let k_begin = split * g.k_chunk;
    return vec2<u32>(k_begin, min(g.depth, k_begin + g.k_chunk));
}

// One k of the 64×64 tile: called with constant k (see the header).
fn mac(k: u32, lid: vec3<u32>) {
    let av = a_tile[k][lid.y];
    let bv = b_tile[k][lid.x];
    acc0 += av.x * bv;
    acc1 += av.y * bv;
    acc2 += av.z * bv;
    acc3 += av.w * bv;
}

@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r0 = wg.y * TILE;
    let s0 = wg.x * TILE;
    let range = begin(wg);
    let k_begin = range.x;
    let k_end = range.y;
    // this invocation's quad of each 16×64 operand tile: (k, row) of A, (k, column) of B
    let qa = quad_at(li, a_k_contiguous(), KT, TILE);
    let qb = quad_at(li, b_k_contiguous(), KT, TILE);
    // Software pipelining: the next tiles' loads are issued before this tile's arithmetic,
    // so their memory latency hides behind it (registers pa/pb hold them meanwhile).
    var pa = fetch_a(r0 + qa.y, k_begin + qa.x, k_end);
    var pb = fetch_b(k_begin + qb.x, s0 + qb.y, k_end);
    let fold = folds_ones_column(s0);
    for (var k0 = k_begin; k0 < k_end; k0 += KT) {
        put_a(qa.x, qa.y, pa);
        put_b(qb.x, qb.y, pb);
        workgroupBarrier();
        let next = k0 + KT;
        if (next < k_end) {
            pa = fetch_a(r0 + qa.y, next + qa.x, k_end);
            pb = fetch_b(next + qb.x, s0 + qb.y, k_end);
        }
        mac(0u, lid);
        mac(1u, lid);
        mac(2u, lid);
        mac(3u, lid);
        mac(4u, lid);
        mac(5u, lid);
        mac(6u, lid);
        mac(7u, lid);
        mac(8u, lid);
        mac(9u, lid);
        mac(10u, lid);
        mac(11u, lid);
        mac(12u, lid);
        mac(13u, lid);
        mac(14u, lid);
        mac(15u, lid);
        if (fold) {
            for (var k = 0u; k < KT; k += 1u) {
                sum_lo += a_tile[k][lid.y];
            }
        }
        workgroupBarrier();
    }
    let r = r0 + 4u * lid.y;
    let s = s0 + 4u * lid.x;
    if ((g.flags & SOFTMAX) != 0u) {
        // scale and causal mask, then each row's max and sum over the 16 invocations of
        // this lid.y (a_tile and b_tile are free: the loop ended on a barrier)
        let v0 = causal(acc0 * g.scale, r, s);
        let v1 = causal(acc1 * g.scale, r + 1u, s);
        let v2 = causal(acc2 * g.scale, r + 2u, s);
        let v3 = causal(acc3 * g.scale, r + 3u, s);
        let m = across_row_max(vec4<f32>(max4(v0), max4(v1), max4(v2), max4(v3)), lid);
        let e0 = exp_below(v0, m.x, r, s);
        let e1 = exp_below(v1, m.y, r + 1u, s);
        let e2 = exp_below(v2, m.z, r + 2u, s);
        let e3 = exp_below(v3, m.w, r + 3u, s);
        let total = across_row_sum(vec4<f32>(sum4(e0), sum4(e1), sum4(e2), sum4(e3)), lid);
        acc0 = e0 / total.x;
        acc1 = e1 / total.y;
        acc2 = e2 / total.z;
        acc3 = e3 / total.w;
    }
    if ((g.flags & SOFTMAX_GRAD) != 0u) {
        let p0 = probabilities(r, s);
        let p1 = probabilities(r + 1u, s);
        let p2 = probabilities(r + 2u, s);
        let p3 = probabilities(r + 3u, s);
        let dot = across_row_sum(vec4<f32>(sum4(p0 * acc0), sum4(p1 * acc1), sum4(p2 * acc2), sum4(p3 * acc3)), lid);
        acc0 = p0 * (acc0 - dot.x) * g.scale;
        acc1 = p1 * (acc1 - dot.y) * g.scale;
        acc2 = p2 * (acc2 - dot.z) * g.scale;
        acc3 = p3 * (acc3 - dot.w) * g.scale;
    }
    store_row(r, s, acc0);
    store_row(r + 1u, s, acc1);
    store_row(r + 2u, s, acc2);
    store_row(r + 3u, s, acc3);
    if (fold && lid.x == 15u) {
        store_column(r, g.cols - 1u, sum_lo);
    }
}

// Whether this workgroup (its tile starting at column s0) also computes the ones column.
fn folds_ones_column(s0: u32) -> bool {
    return (g.flags & ONES_COLUMN) != 0u && (g.cols - 1u) % TILE == 0u && s0 + TILE == g.cols - 1u;
}

// C[r..r+3, s] = v (four rows of one column): the ones column's sums, which only weight
// gradients have, and they have no epilogue.
fn store_column(r: u32, s: u32, v: vec4<f32>) {
    for (var j = 0u; j < 4u; j += 1u) {
        if (r + j < g.rows) {
            c[c_base + (r + j) * g.c_rs + s] = v[j];
        }
    }
}

// ---- the softmax epilogues' helpers (SOFTMAX, SOFTMAX_GRAD) ----

fn max4(v: vec4<f32>) -> f32 {
    return max(max(v.x, v.y), max(v.z, v.w));
}

fn sum4(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// Columns s..s+3 of row r kept (s ≤ r, inside C) as they are, the rest NEG_BIG.
fn causal(v: vec4<f32>, r: u32, s: u32) -> vec4<f32> {
    let keep = vec4<u32>(s, s + 1u, s + 2u, s + 3u) <= vec4<u32>(min(r, g.cols - 1u));
    return select(vec4<f32>(NEG_BIG), v, keep);
}

// exp(v − m) where kept, 0 elsewhere.
fn exp_below(v: vec4<f32>, m: f32, r: u32, s: u32) -> vec4<f32> {
    let keep = vec4<u32>(s, s + 1u, s + 2u, s + 3u) <= vec4<u32>(min(r, g.cols - 1u));
    return select(vec4<f32>(0.0), exp(v - m), keep);
}

// The forward's probabilities P[r, s..s+3] (0 above the diagonal and outside C).
fn probabilities(r: u32, s: u32) -> vec4<f32> {
    var p = vec4<f32>(0.0);
    if (r < g.rows) {
        let at = g.addend_off + (c_base - g.c_off) + r * g.c_rs + s;
        for (var j = 0u; j < 4u; j += 1u) {
            if (s + j <= r && s + j < g.cols) {
                p[j] = addend[at + j];
            }
        }
    }
    return p;
}

// Element-wise max / sum of `value` over the 16 invocations sharing lid.y (one row group).
fn across_row_max(value: vec4<f32>, lid: vec3<u32>) -> vec4<f32> {
    a_tile[lid.y][lid.x] = value;
    workgroupBarrier();
    var m = a_tile[lid.y][0];
    for (var x = 1u; x < 16u; x += 1u) {
        m = max(m, a_tile[lid.y][x]);
    }
    return m;
}

fn across_row_sum(value: vec4<f32>, lid: vec3<u32>) -> vec4<f32> {
    b_tile[lid.y][lid.x] = value;
    workgroupBarrier();
    var total = vec4<f32>(0.0);
    for (var x = 0u; x < 16u; x += 1u) {
        total += b_tile[lid.y][x];
    }
    return total;
}
