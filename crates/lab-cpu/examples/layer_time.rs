//! Per-layer timings of the tiny benchmark shapes (N = 32·64 rows), for profiling.
use lab_cpu::model::*;
use std::time::Instant;

fn time(name: &str, reps: usize, mut f: impl FnMut()) {
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!("{name:28} {:8.3} ms", 1e3 * start.elapsed().as_secs_f64() / reps as f64);
}

fn main() {
    let (b, t, c, nh, v) = (32usize, 64usize, 64usize, 4usize, 96usize);
    let n = b * t;
    let r = |len: usize| {
        (0..len).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1).collect::<Vec<f32>>()
    };
    let reps = 20;
    for (ic, oc) in [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c), (c, v)] {
        let (inp, w, bias) = (r(n * ic), r(oc * ic), r(oc));
        let mut out = r(n * oc);
        let mut wt = r(ic * oc);
        time(&format!("matmul_forward {ic}->{oc}"), reps, || {
            matmul_forward(&mut out, &inp, &w, Some(&bias), &mut wt, ic, oc)
        });
        let (mut dinp, mut dw, mut db) = (r(n * ic), r(oc * ic), r(oc));
        let dout = r(n * oc);
        time(&format!("matmul_backward {ic}->{oc}"), reps, || {
            matmul_backward(&mut dinp, &mut dw, Some(&mut db), &dout, &inp, &w, ic, oc)
        });
    }
    let qkv = r(n * 3 * c);
    let mut out = r(n * c);
    let mut att = r(b * nh * t * t);
    let mut scratch = r(b * attention_scratch_len(t, c / nh));
    time("attention_forward", reps, || {
        attention_forward(&mut out, &mut att, &qkv, &mut scratch, t, c, nh)
    });
    let mut dqkv = r(n * 3 * c);
    let dout = r(n * c);
    time("attention_backward", reps, || {
        attention_backward(&mut dqkv, &dout, &qkv, &att, &mut scratch, t, c, nh)
    });
    let x = r(n * 4 * c);
    let mut y = r(n * 4 * c);
    time("gelu_forward", reps, || gelu_forward(&mut y, &x));
    let dy = r(n * 4 * c);
    time("gelu_backward", reps, || gelu_backward(&mut y, &x, &dy));
    let x = r(n * c);
    let (mut y, mut mean, mut rstd, w, bb) = (r(n * c), r(n), r(n), r(c), r(c));
    time("layernorm_forward", reps, || {
        layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &w, &bb, c)
    });
    let (mut dx, mut dw, mut db) = (r(n * c), r(c), r(c));
    let dy = r(n * c);
    time("layernorm_backward", reps, || {
        layernorm_backward(&mut dx, &mut dw, &mut db, &dy, &x, &w, &mean, &rstd, c)
    });
    let logits = r(n * v);
    let tokens: Vec<u32> = (0..n).map(|i| (i % v) as u32).collect();
    let mask = vec![1.0f32; n];
    let mut lse = r(n);
    time("logprob_forward", reps, || {
        logprob_forward(&mut lse, &logits, &tokens, &mask, t, v);
    });
    let mut dlogits = r(n * v);
    let d_seq = vec![1.0f32; b];
    time("logprob_backward", reps, || {
        logprob_backward(&mut dlogits, &logits, &lse, &tokens, &mask, &d_seq, t, v)
    });
}
