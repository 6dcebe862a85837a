// GELU, tanh approximation (GPT-2's `gelu_new`), forward and backward.
// Reference twin: lab-cpu `gelu_forward` / `gelu_backward`.
//
//   out = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))
//   dinp = dout · (½ (1 + tanh u) + ½ x sech²u √(2/π) (1 + 3·0.044715 x²))
//
// Bindings (group 0):
//   0 uniform  Dims
//   1 inp      array<f32>  (B, T, 4C) at inp_off   read
//   2 out      array<f32>  (B, T, 4C) at out_off   read_write  [forward]
//   3 dout     array<f32>  (B, T, 4C)              read        [backward]
//   4 dinp     array<f32>  (B, T, 4C)              read_write  [backward]
// Workgroup 64, one invocation per element (x + y·65535·64).
//
// tanh's argument is clamped to ±15, where tanh is ±1 in f32 already: some backends
// evaluate tanh through exp and return NaN for large arguments.

struct Dims {
    n: u32,
    inp_off: u32,
    out_off: u32,
    _pad: u32,
}

const GELU_SCALE: f32 = 0.7978845608028654; // √(2/π)
const GELU_CUBIC: f32 = 0.044715;

@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> dinp: array<f32>;

fn tanh_safe(u: f32) -> f32 {
    return tanh(clamp(u, -15.0, 15.0));
}

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= d.n) {
        return;
    }
    let x = inp[d.inp_off + i];
    let u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    out[d.out_off + i] = 0.5 * x * (1.0 + tanh_safe(u));
}

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= d.n) {
        return;
    }
    let x = inp[d.inp_off + i];
    let u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    let th = tanh_safe(u);
    let sech2 = 1.0 - th * th;
    let local = 0.5 * (1.0 + th) + 0.5 * x * sech2 * GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
    dinp[i] = local * dout[i];
}
