// LayerNorm over the last axis (eps 1e-5, biased variance), forward and backward.
// Reference twin: `lab_cpu::reference::layernorm_forward` / `layernorm_backward`.
//
// Bindings (group 0):
//   0  uniform  Dims
//   1  inp      array<f32>  (N, C) at inp_off           read_write (written by forward when splits > 0)
//   2  params   array<f32>  flat; weight, bias (C)      read        [forward, backward_dinp]
//   3  out      array<f32>  (N, C) at out_off           read_write  [forward]
//   4  mean     array<f32>  (N) at stat_off             read_write  [forward]
//   5  rstd     array<f32>  (N) at stat_off             read_write  [forward]
//   6  dout     array<f32>  (N, C) at dout_off          read_write (written by backward_dinp when splits > 0)  [backward_*]
//   7  mean_r   array<f32>  (N) at stat_off             read        [backward_*]
//   8  rstd_r   array<f32>  (N) at stat_off             read        [backward_*]
//   9  dinp     array<f32>  (N, C) at dinp_off          read_write  [backward_dinp]
//   10 partial_out array<f32>  (splits, 2C) at part_off: [dweight | dbias] per split  read_write  [backward_params]
//   11 slabs    array<f32>  (splits, N, C), slab_stride apart  read     [forward, backward_dinp; splits > 0]
//   12 addend   array<f32>  (N, C) at addend_off        read        [forward, splits > 0]
// N = B·T rows. forward and backward_dinp: one workgroup of 64 per row (x + y·65535
// workgroups), the row's sums reduced in workgroup memory. backward_params: workgroup
// 64×4, four invocations per (channel, split of `split_rows` rows) each taking every fourth
// row, their sums added in workgroup memory; dispatch (⌈C/64⌉, splits): the serial sum over
// all N rows was latency-bound (one dependent load chain per channel), so each split sums
// its rows and reduce.wgsl `gather_grads` adds the splits in order and writes dweight
// and dbias (no atomics, reproducible).
//
// backward_dinp adds into dinp when `accumulate` is 1: that is where the residual stream's
// gradient gathers (the residual add's backward is the identity, so it costs no kernel).
//
// forward with splits > 0 first makes its input row from the depth-split projection GEMM
// that produces it (matmul.wgsl, attproj or fcproj: slabs of partial sums, its bias, and
// the residual it adds onto), the work reduce.wgsl `split_sum` would do in a launch of its
// own, in the same order:
//   inp[inp_off + n·C + i] = addend[addend_off + n·C + i]
//                            + (params[gemm_b_off + i] + Σ_{z < splits, in order} slabs[z·slab_stride + n·C + i])
// then normalizes it: one launch per LayerNorm instead of two (the workgroup reads back
// only its own writes, after a storage barrier). Likewise backward_dinp with splits > 0
// first makes its dout row from the depth-split input-gradient GEMM that produces it (fc's
// or qkv's: no bias, no addend), dout[dout_off + n·C + i] = Σ_z slabs[z·slab_stride + n·C + i],
// which backward_params then reads as it is.

struct Dims {
    n_rows: u32,
    c: u32,
    inp_off: u32,
    out_off: u32,
    stat_off: u32,
    w_off: u32,
    b_off: u32,
    dout_off: u32,
    dinp_off: u32,
    split_rows: u32,
    part_off: u32, // backward_params: where its slabs start in partial_out
    accumulate: u32,
    // forward (backward_dinp): the split GEMM whose sum is the input (dout); splits = 0:
    // the buffer as it is
    splits: u32,
    slab_stride: u32,
    gemm_b_off: u32,
    addend_off: u32,
}

const WG: u32 = 64u;
const EPS: f32 = 1e-5;

@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read_write> inp: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> dout: array<f32>;
@group(0) @binding(7) var<storage, read> mean_r: array<f32>;
@group(0) @binding(8) var<storage, read> rstd_r: array<f32>;
@group(0) @binding(9) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(10) var<storage, read_write> partial_out: array<f32>;
@group(0) @binding(11) var<storage, read> slabs: array<f32>;
@group(0) @binding(12) var<storage, read> addend: array<f32>;

var<workgroup> partial: array<f32, 64>;

// Sum of one value per invocation over the workgroup; every invocation gets the total.
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

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= d.n_rows) {
        return;
    }
    let x0 = d.inp_off + row * d.c;
    if (d.splits > 0u) {
        for (var i = lid; i < d.c; i += WG) {
            var x = 0.0;
            for (var z = 0u; z < d.splits; z += 1u) {
                x += slabs[z * d.slab_stride + row * d.c + i];
            }
            inp[x0 + i] = addend[d.addend_off + row * d.c + i] + (params[d.gemm_b_off + i] + x);
        }
        storageBarrier();
    }
    let inv_c = 1.0 / f32(d.c);
    var sum = 0.0;
    for (var i = lid; i < d.c; i += WG) {
        sum += inp[x0 + i];
    }
    let m = workgroup_sum(sum, lid) * inv_c;
    var var_sum = 0.0;
    for (var i = lid; i < d.c; i += WG) {
        let centred = inp[x0 + i] - m;
        var_sum += centred * centred;
    }
    let s = 1.0 / sqrt(workgroup_sum(var_sum, lid) * inv_c + EPS);
    let y0 = d.out_off + row * d.c;
    for (var i = lid; i < d.c; i += WG) {
        out[y0 + i] = (inp[x0 + i] - m) * s * params[d.w_off + i] + params[d.b_off + i];
    }
    if (lid == 0u) {
        mean[d.stat_off + row] = m;
        rstd[d.stat_off + row] = s;
    }
}

// dinp (+)= rstd · (dnorm − mean(dnorm) − norm · mean(dnorm · norm)), dnorm = weight · dout
@compute @workgroup_size(64)
fn backward_dinp(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= d.n_rows) {
        return;
    }
    let x0 = d.inp_off + row * d.c;
    let g0 = d.dout_off + row * d.c;
    if (d.splits > 0u) {
        for (var i = lid; i < d.c; i += WG) {
            var g = 0.0;
            for (var z = 0u; z < d.splits; z += 1u) {
                g += slabs[z * d.slab_stride + row * d.c + i];
            }
            dout[g0 + i] = g;
        }
        storageBarrier();
    }
    let m = mean_r[d.stat_off + row];
    let s = rstd_r[d.stat_off + row];
    let inv_c = 1.0 / f32(d.c);
    var dnorm_sum = 0.0;
    var dnorm_norm_sum = 0.0;
    for (var i = lid; i < d.c; i += WG) {
        let norm = (inp[x0 + i] - m) * s;
        let dnorm = params[d.w_off + i] * dout[g0 + i];
        dnorm_sum += dnorm;
        dnorm_norm_sum += dnorm * norm;
    }
    let dnorm_mean = workgroup_sum(dnorm_sum, lid) * inv_c;
    let dnorm_norm_mean = workgroup_sum(dnorm_norm_sum, lid) * inv_c;
    let dx0 = d.dinp_off + row * d.c;
    for (var i = lid; i < d.c; i += WG) {
        let norm = (inp[x0 + i] - m) * s;
        let dnorm = params[d.w_off + i] * dout[g0 + i];
        let dx = (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        if (d.accumulate != 0u) {
            dinp[dx0 + i] = dinp[dx0 + i] + dx;
        } else {
            dinp[dx0 + i] = dx;
        }
    }
}

// (x[n, c] − mean[n]) · rstd[n] from the forward's statistics
fn normalized(n: u32, ch: u32) -> f32 {
    return (inp[d.inp_off + n * d.c + ch] - mean_r[d.stat_off + n]) * rstd_r[d.stat_off + n];
}

// (dout · norm, dout) at row n, channel ch
fn param_terms(n: u32, ch: u32) -> vec2<f32> {
    let g = dout[d.dout_off + n * d.c + ch];
    return vec2<f32>(g * normalized(n, ch), g);
}

// partial[z, c] = Σ_{n in split z} dout[n, c] · norm[n, c]; partial[z, C + c] = Σ dout[n, c]
// Row group lid.y takes rows z·split_rows + lid.y, + 4, …; the four groups' sums are added
// in group order.
var<workgroup> param_sums: array<vec2<f32>, 256>; // [row group][channel]: (dw, db)

@compute @workgroup_size(64, 4)
fn backward_params(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ch = gid.x;
    let z = wg.y;
    let n_end = min(d.n_rows, (z + 1u) * d.split_rows);
    var sums = vec2<f32>(0.0);
    if (ch < d.c) {
        // four of its rows a trip, their loads issued together (the walk was a chain of
        // dependent trips, one row's loads each); the sum in the same order
        var n = z * d.split_rows + lid.y;
        for (; n + 12u < n_end; n += 16u) {
            let t0 = param_terms(n, ch);
            let t1 = param_terms(n + 4u, ch);
            let t2 = param_terms(n + 8u, ch);
            let t3 = param_terms(n + 12u, ch);
            sums = (((sums + t0) + t1) + t2) + t3;
        }
        for (; n < n_end; n += 4u) {
            sums += param_terms(n, ch);
        }
    }
    param_sums[lid.y * 64u + lid.x] = sums;
    workgroupBarrier();
    if (lid.y == 0u && ch < d.c) {
        let total = ((param_sums[lid.x] + param_sums[64u + lid.x]) + param_sums[128u + lid.x]) + param_sums[192u + lid.x];
        partial_out[d.part_off + z * 2u * d.c + ch] = total.x;
        partial_out[d.part_off + z * 2u * d.c + d.c + ch] = total.y;
    }
}
