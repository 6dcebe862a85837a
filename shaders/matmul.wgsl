// Matrix multiply with bias and residual epilogue (forward), and the pieces of its
// backward: one strided GEMM kernel serves y = x·Wᵀ + b, dx = dy·W and dW += dyᵀ·x, because
// each is C[r, s] = Σ_k A[r, k] · B[k, s] read through different strides.
// Reference twin: lab-cpu `matmul_forward` / `matmul_backward` (and `residual_forward`).
//
//   C[c_off + r·c_rs + s] = addend[addend_off + r·c_rs + s]        (if flags & 4)
//                         + (C[...] if flags & 1 else 0)
//                         + bias[bias_off + s]                      (if flags & 2)
//                         + Σ_{k < depth} A[a_off + r·a_rs + k·a_ks] · B[b_off + k·b_ks + s·b_ss]
//   for r < rows, s < cols; the k-sum runs in order 0..depth, as on the CPU.
//
// Bindings (group 0):
//   0 uniform  Gemm
//   1 a        array<f32>  read          (rows, depth) through (a_rs, a_ks)
//   2 b        array<f32>  read          (depth, cols) through (b_ks, b_ss)
//   3 bias     array<f32>  read          (cols) at bias_off; any buffer when unused
//   4 addend   array<f32>  read          (rows, cols) at addend_off; any buffer when unused
//   5 c        array<f32>  read_write    (rows, cols) at c_off, row stride c_rs
// Shapes as used by the model (N = B·T, IC/OC the layer's in/out channels):
//   forward   A = x (N, IC), B = Wᵀ (IC, OC) read from W (OC, IC), C = y (N, OC)
//   dinp      A = dy (N, OC), B = W (OC, IC), C = dx (N, IC)
//   dweight   A = dyᵀ (OC, N) read from dy, B = x (N, IC), C = dW (OC, IC)
// Workgroup 16×16 = 256 invocations computing a 64×64 tile of C, 4×4 outputs each
// (rows ty + 16i, columns tx + 16j, so neighbouring invocations store neighbouring
// columns); dispatch (⌈cols/64⌉, ⌈rows/64⌉, 1). K advances 16 at a time through two
// 16×64 tiles in workgroup memory (8 KiB).
//
// Fusion: the residual add of each block (x + attproj(·), x + fcproj(·)) is the `addend`
// epilogue of the projection GEMM, saving a kernel launch and a round trip of (B, T, C)
// through memory per branch; the bias is its prologue. The backward of a residual add is
// the identity, so it needs no kernel at all (see layernorm.wgsl, `accumulate`).
//
// bias_backward: dbias[s] (+)= Σ_{k < depth} A[a_off + k·a_ks + s] for s < cols, written to
// c[c_off + s]; workgroup 64, one invocation per output channel, rows summed in order.

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
}

const TILE: u32 = 64u;
const KT: u32 = 16u;
const ACCUMULATE: u32 = 1u;
const BIAS: u32 = 2u;
const ADDEND: u32 = 4u;

@group(0) @binding(0) var<uniform> g: Gemm;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> addend: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

var<workgroup> a_tile: array<f32, 1024>; // [k][r], KT × TILE
var<workgroup> b_tile: array<f32, 1024>; // [k][s], KT × TILE

@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r0 = wg.y * TILE;
    let s0 = wg.x * TILE;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 4u; i += 1u) {
        for (var j = 0u; j < 4u; j += 1u) {
            let r = r0 + lid.y + 16u * i;
            let s = s0 + lid.x + 16u * j;
            var init = 0.0;
            if (r < g.rows && s < g.cols) {
                if ((g.flags & ACCUMULATE) != 0u) {
                    init = c[g.c_off + r * g.c_rs + s];
                }
                if ((g.flags & BIAS) != 0u) {
                    init += bias[g.bias_off + s];
                }
            }
            acc[i * 4u + j] = init;
        }
    }
    // Tile loads: when an operand is contiguous along k, neighbouring invocations take
    // neighbouring k (coalesced); otherwise neighbouring rows/columns.
    let a_k_fast = g.a_ks == 1u;
    let b_k_fast = g.b_ks == 1u;
    for (var k0 = 0u; k0 < g.depth; k0 += KT) {
        for (var q = 0u; q < 4u; q += 1u) {
            let e = li + 256u * q;
            var k: u32;
            var r: u32;
            if (a_k_fast) {
                k = e % KT;
                r = e / KT;
            } else {
                k = e / TILE;
                r = e % TILE;
            }
            var value = 0.0;
            if (r0 + r < g.rows && k0 + k < g.depth) {
                value = a[g.a_off + (r0 + r) * g.a_rs + (k0 + k) * g.a_ks];
            }
            a_tile[k * TILE + r] = value;
            var s: u32;
            if (b_k_fast) {
                k = e % KT;
                s = e / KT;
            } else {
                k = e / TILE;
                s = e % TILE;
            }
            value = 0.0;
            if (s0 + s < g.cols && k0 + k < g.depth) {
                value = b[g.b_off + (k0 + k) * g.b_ks + (s0 + s) * g.b_ss];
            }
            b_tile[k * TILE + s] = value;
        }
        workgroupBarrier();
        for (var k = 0u; k < KT; k += 1u) {
            var a_reg: array<f32, 4>;
            var b_reg: array<f32, 4>;
            for (var i = 0u; i < 4u; i += 1u) {
                a_reg[i] = a_tile[k * TILE + lid.y + 16u * i];
                b_reg[i] = b_tile[k * TILE + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i += 1u) {
                for (var j = 0u; j < 4u; j += 1u) {
                    acc[i * 4u + j] += a_reg[i] * b_reg[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i += 1u) {
        for (var j = 0u; j < 4u; j += 1u) {
            let r = r0 + lid.y + 16u * i;
            let s = s0 + lid.x + 16u * j;
            if (r < g.rows && s < g.cols) {
                var value = acc[i * 4u + j];
                if ((g.flags & ADDEND) != 0u) {
                    value = addend[g.addend_off + r * g.c_rs + s] + value;
                }
                c[g.c_off + r * g.c_rs + s] = value;
            }
        }
    }
}

@compute @workgroup_size(64)
fn bias_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    if (s >= g.cols) {
        return;
    }
    var sum = 0.0;
    if ((g.flags & ACCUMULATE) != 0u) {
        sum = c[g.c_off + s];
    }
    for (var k = 0u; k < g.depth; k += 1u) {
        sum += a[g.a_off + k * g.a_ks + s];
    }
    c[g.c_off + s] = sum;
}
