// AdamW update, torch.optim.AdamW semantics (Loshchilov & Hutter 2019, Algorithm 2),
// weight decay on every parameter as in llm.c. Reference twin: lab-cpu `adamw_update`.
//
//   m = β₁ m + (1 − β₁) g;  v = β₂ v + (1 − β₂) g²
//   p = p · (1 − lr·wd) − step_size · m / (√v / √(1 − β₂ᵗ) + ε),  step_size = lr / (1 − β₁ᵗ)
// The step-dependent scalars are computed on the CPU in f32 exactly as the reference does
// and uploaded each step (a 48-byte write, no readback).
//
// Bindings (group 0):
//   0 uniform  Hyper
//   1 grads    array<f32>  (P)  read
//   2 params   array<f32>  (P)  read_write
//   3 m        array<f32>  (P)  read_write
//   4 v        array<f32>  (P)  read_write
//   5 status   array<u32>  (1)  read: non-zero when loss.wgsl found the step's gradient not
//                               finite; the update is then skipped (the model stays as it was)
// Workgroup 64, one invocation per parameter (x + y·65535·64).

struct Hyper {
    n: u32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    decay: f32,
}

@group(0) @binding(0) var<uniform> h: Hyper;
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> status: array<u32>;

@compute @workgroup_size(64)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= h.n || status[0] != 0u) {
        return;
    }
    let g = grads[i];
    let m_new = h.beta1 * m[i] + h.one_minus_beta1 * g;
    let v_new = h.beta2 * v[i] + h.one_minus_beta2 * g * g;
    m[i] = m_new;
    v[i] = v_new;
    let denom = sqrt(v_new) / h.bias_correction2_sqrt + h.eps;
    params[i] = params[i] * h.decay - h.step_size * (m_new / denom);
}
