//! GPT-2 forward and backward in plain Rust, llm.c style: one `*_forward` / `*_backward`
//! pair per layer, then [`Gpt`], which strings them together over the flat parameter
//! vector of [`lab_core::config::ParamLayout`].
//!
//! Notation: B rows, T tokens, C channels, NH heads, hs = C / NH head size, V vocabulary,
//! L layers, N = B·T. Matrices are (out, in) row-major and `y = x · Wᵀ + b`. Everything is
//! generic over [`Float`] so the tests can run the very same code in f64.
//!
//! Parallelism (rayon) never splits a floating-point sum between threads: every output
//! element is owned by one task and summed in a fixed order, so results are bit-for-bit
//! reproducible whatever the thread count or scheduling.
//!
//! Backward functions *accumulate* into parameter gradients (`dweight`, `dbias`), which the
//! caller zeroes once per backward (the tied `wte` receives both the LM head's and the
//! encoder's gradient). Input gradients are overwritten, except LayerNorm's, which adds
//! into `dinp`: that is where the residual stream's gradient gathers.

use crate::float::{vectorized, Float};
use lab_core::config::GptConfig;
use lab_core::engine::TOPK;
use rayon::prelude::*;

/// LayerNorm epsilon (GPT-2 / HF `layer_norm_epsilon`).
pub const LN_EPS: f64 = 1e-5;

/// Rows of N per rayon task in the row-parallel layers (matmul, layernorm, gelu).
const ROWS_PER_TASK: usize = 32;
/// Output channels per rayon task when a matmul backward computes dweight.
const OUT_PER_TASK: usize = 16;

// ------------------------------------------------------------------------------------
// The one matrix kernel every matmul and attention product goes through.
// ------------------------------------------------------------------------------------

/// Register tiles: R rows of the output times NS contiguous columns. The tile lives in
/// registers while the reduction runs over a block of `depth`; the inner `s` loop is a
/// plain element-wise multiply-add over a contiguous row of `b`, which LLVM vectorises
/// without having to reorder any sum. AVX-512 (32 registers) takes 8-row tiles, AVX2
/// (16 registers) 4-row tiles; the tile shape never changes a sum's order.
const NS: usize = 16;
/// Steps of the reduction per block: a block of `b` (KC·NS floats) stays in L1 while every
/// row tile sweeps it.
const KC: usize = 64;

/// c[r, s] (+)= Σ_k a[r, k] · b[k, s] for r < rows, s < cols, k < depth, with
/// a[r, k] = a[r·a_rs + k·a_ks] (any strides, so `a` may be read transposed),
/// b[k, s] = b[k·b_ks + s] (rows contiguous), c[r, s] = c[r·c_rs + s].
/// `accumulate = false` overwrites c. The k-sum runs in order 0..depth for every element,
/// one fused multiply-add per step (tile and edge paths alike), so every path gives the same bits.
pub fn gemm<F: Float>(
    c: &mut [F],
    c_rs: usize,
    a: &[F],
    a_rs: usize,
    a_ks: usize,
    b: &[F],
    b_ks: usize,
    rows: usize,
    cols: usize,
    depth: usize,
    accumulate: bool,
) {
    let init = if accumulate { Init::Accumulate } else { Init::Zero };
    gemm_init(c, c_rs, a, a_rs, a_ks, b, b_ks, rows, cols, depth, init)
}

/// What the output starts from before the k-sum: zero, its current contents, or a bias row
/// (c[r, s] starts at bias[s], exactly as if c had been filled with it and accumulated).
#[derive(Clone, Copy)]
enum Init<'a, F> {
    Zero,
    Accumulate,
    Bias(&'a [F]),
}

/// [`gemm`] with an explicit starting value.
fn gemm_init<F: Float>(
    c: &mut [F],
    c_rs: usize,
    a: &[F],
    a_rs: usize,
    a_ks: usize,
    b: &[F],
    b_ks: usize,
    rows: usize,
    cols: usize,
    depth: usize,
    accumulate: Init<'_, F>,
) {
    vectorized(
        #[inline(always)]
        || gemm_body::<F, 4>(c, c_rs, a, a_rs, a_ks, b, b_ks, rows, cols, depth, accumulate),
    )
}

/// [`gemm`] without the dispatch, for callers already inside [`vectorized`] code.
#[inline(always)]
fn gemm_body<F: Float, const R: usize>(
    c: &mut [F],
    c_rs: usize,
    a: &[F],
    a_rs: usize,
    a_ks: usize,
    b: &[F],
    b_ks: usize,
    rows: usize,
    cols: usize,
    depth: usize,
    accumulate: Init<'_, F>,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    if depth == 0 {
        for r in 0..rows {
            match accumulate {
                Init::Zero => c[r * c_rs..r * c_rs + cols].fill(F::ZERO),
                Init::Accumulate => {}
                Init::Bias(bias) => c[r * c_rs..r * c_rs + cols].copy_from_slice(&bias[..cols]),
            }
        }
        return;
    }
    // `a` read along rows (a_ks = 1) or along columns (a_rs = 1); anything else is scalar.
    let a_rows = a_ks == 1;
    if !a_rows && a_rs != 1 {
        gemm_edge(c, c_rs, a, a_rs, a_ks, b, b_ks, 0..rows, 0..cols, 0..depth, accumulate);
        return;
    }
    let full_rows = rows - rows % R;
    let full_cols = cols - cols % NS;
    // k blocks outermost (splitting k only stores and reloads the accumulators, so every
    // element's sum still runs over k in order). Each row tile's slice of `a` for the block
    // is copied into a small k-major buffer (R·KC floats on the stack), then swept across
    // every column tile: the inner loop reads one contiguous buffer and one row of `b`.
    let mut a_pack = [F::ZERO; 8 * KC];
    for k0 in (0..depth).step_by(KC) {
        let kc = KC.min(depth - k0);
        let acc = if k0 > 0 { Init::Accumulate } else { accumulate };
        let b_blk = &b[k0 * b_ks..];
        let mut r0 = 0;
        while r0 < rows {
            let tile_rows = if r0 < full_rows { R } else { 1 };
            if a_rows && tile_rows == R {
                // rows of `a` are contiguous: broadcast straight from them, no packing
                let a_blk: [&[F]; R] = std::array::from_fn(|r| &a[(r0 + r) * a_rs + k0..][..kc]);
                for s0 in (0..full_cols).step_by(NS) {
                    gemm_tile_rows::<F, R, NS>(c, c_rs, &a_blk, kc, b_blk, b_ks, r0, s0, acc);
                }
                r0 += tile_rows;
                continue;
            }
            let pack = &mut a_pack[..kc * tile_rows];
            if a_rows {
                for r in 0..tile_rows {
                    let a_row = &a[(r0 + r) * a_rs + k0..][..kc];
                    for (dst, &x) in pack.chunks_exact_mut(tile_rows).zip(a_row) {
                        dst[r] = x;
                    }
                }
            } else {
                // fixed-size copies: a slice copy of R floats would be a memcpy call
                if tile_rows == R {
                    for (k, dst) in pack.chunks_exact_mut(R).enumerate() {
                        let src: &[F; R] = a[(k0 + k) * a_ks + r0..][..R].try_into().unwrap();
                        let dst: &mut [F; R] = dst.try_into().unwrap();
                        *dst = *src;
                    }
                } else {
                    for (k, dst) in pack.iter_mut().enumerate() {
                        *dst = a[(k0 + k) * a_ks + r0];
                    }
                }
            }
            let pack = &*pack;
            for s0 in (0..full_cols).step_by(NS) {
                if tile_rows == R {
                    gemm_tile::<F, R, NS>(c, c_rs, pack, b_blk, b_ks, r0, s0, acc);
                } else {
                    gemm_tile::<F, 1, NS>(c, c_rs, pack, b_blk, b_ks, r0, s0, acc);
                }
            }
            r0 += tile_rows;
        }
        if full_cols < cols {
            gemm_edge(c, c_rs, a, a_rs, a_ks, b, b_ks, 0..rows, full_cols..cols, k0..k0 + kc, acc);
        }
    }
}

/// One R×S tile over one block of k, `a_pack` holding a[r0 + r, k0 + k] at [k·R + r] and
/// `b` starting at row k0.
#[inline(always)]
fn gemm_tile<F: Float, const R: usize, const S: usize>(
    c: &mut [F],
    c_rs: usize,
    a_pack: &[F],
    b: &[F],
    b_ks: usize,
    r0: usize,
    s0: usize,
    accumulate: Init<'_, F>,
) {
    let mut acc = [[F::ZERO; S]; R];
    match accumulate {
        Init::Zero => {}
        Init::Accumulate => {
            for r in 0..R {
                acc[r].copy_from_slice(&c[(r0 + r) * c_rs + s0..][..S]);
            }
        }
        Init::Bias(bias) => {
            let bias: &[F; S] = bias[s0..][..S].try_into().unwrap();
            for r in 0..R {
                acc[r] = *bias;
            }
        }
    }
    for (a_k, b_row) in a_pack.chunks_exact(R).zip(b[s0..].chunks(b_ks)) {
        let b_row: &[F; S] = b_row[..S].try_into().unwrap();
        for r in 0..R {
            let a_rk = a_k[r];
            for s in 0..S {
                acc[r][s] = a_rk.mul_add(b_row[s], acc[r][s]);
            }
        }
    }
    for r in 0..R {
        c[(r0 + r) * c_rs + s0..][..S].copy_from_slice(&acc[r]);
    }
}

/// [`gemm_tile`] reading `a` from R row slices of length `kc` (a[r0 + r, k0 + k] at
/// `a_blk[r][k]`) instead of a packed buffer; the same operations in the same order.
#[inline(always)]
fn gemm_tile_rows<F: Float, const R: usize, const S: usize>(
    c: &mut [F],
    c_rs: usize,
    a_blk: &[&[F]; R],
    kc: usize,
    b: &[F],
    b_ks: usize,
    r0: usize,
    s0: usize,
    accumulate: Init<'_, F>,
) {
    let mut acc = [[F::ZERO; S]; R];
    match accumulate {
        Init::Zero => {}
        Init::Accumulate => {
            for r in 0..R {
                acc[r].copy_from_slice(&c[(r0 + r) * c_rs + s0..][..S]);
            }
        }
        Init::Bias(bias) => {
            let bias: &[F; S] = bias[s0..][..S].try_into().unwrap();
            for r in 0..R {
                acc[r] = *bias;
            }
        }
    }
    let a_blk: [&[F]; R] = std::array::from_fn(|r| &a_blk[r][..kc]);
    for k in 0..kc {
        let b_row: &[F; S] = b[k * b_ks + s0..][..S].try_into().unwrap();
        for r in 0..R {
            let a_rk = a_blk[r][k];
            for s in 0..S {
                acc[r][s] = a_rk.mul_add(b_row[s], acc[r][s]);
            }
        }
    }
    for r in 0..R {
        c[(r0 + r) * c_rs + s0..][..S].copy_from_slice(&acc[r]);
    }
}

/// The ragged borders of [`gemm`] over one block of k, same summation order, scalar.
#[inline(always)]
fn gemm_edge<F: Float>(
    c: &mut [F],
    c_rs: usize,
    a: &[F],
    a_rs: usize,
    a_ks: usize,
    b: &[F],
    b_ks: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    ks: std::ops::Range<usize>,
    accumulate: Init<'_, F>,
) {
    for r in rows {
        for s in cols.clone() {
            let mut acc = match accumulate {
                Init::Zero => F::ZERO,
                Init::Accumulate => c[r * c_rs + s],
                Init::Bias(bias) => bias[s],
            };
            for k in ks.clone() {
                acc = a[r * a_rs + k * a_ks].mul_add(b[k * b_ks + s], acc);
            }
            c[r * c_rs + s] = acc;
        }
    }
}

// ------------------------------------------------------------------------------------
// Encoder: token + position embeddings.
// ------------------------------------------------------------------------------------

/// out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :].
pub fn encoder_forward<F: Float>(
    out: &mut [F],  // (B, T, C)
    tokens: &[u32], // (B, T)
    wte: &[F],      // (V, C)
    wpe: &[F],      // (ctx, C)
    t_len: usize,
    c: usize,
) {
    out.chunks_mut(c).zip(tokens.iter()).enumerate().for_each(|(bt, (out_bt, &tok))| {
        let t = bt % t_len;
        let wte_row = &wte[tok as usize * c..(tok as usize + 1) * c];
        let wpe_row = &wpe[t * c..(t + 1) * c];
        for i in 0..c {
            out_bt[i] = wte_row[i] + wpe_row[i];
        }
    });
}

/// dwte[tokens[b, t]] += dout[b, t]; dwpe[t] += dout[b, t]. Serial: tokens repeat, and a
/// fixed order keeps the scatter-add reproducible (it is O(N·C), negligible).
pub fn encoder_backward<F: Float>(
    dwte: &mut [F], // (V, C)
    dwpe: &mut [F], // (ctx, C)
    dout: &[F],     // (B, T, C)
    tokens: &[u32], // (B, T)
    t_len: usize,
    c: usize,
) {
    for (bt, (dout_bt, &tok)) in dout.chunks(c).zip(tokens).enumerate() {
        let t = bt % t_len;
        let dwte_row = &mut dwte[tok as usize * c..(tok as usize + 1) * c];
        for i in 0..c {
            dwte_row[i] += dout_bt[i];
        }
        let dwpe_row = &mut dwpe[t * c..(t + 1) * c];
        for i in 0..c {
            dwpe_row[i] += dout_bt[i];
        }
    }
}

// ------------------------------------------------------------------------------------
// LayerNorm over the last axis.
// ------------------------------------------------------------------------------------

/// out = (x − mean) · rstd · weight + bias per row; keeps mean and rstd = 1/√(var + ε)
/// (biased variance) for the backward.
pub fn layernorm_forward<F: Float>(
    out: &mut [F],  // (N, C)
    mean: &mut [F], // (N)
    rstd: &mut [F], // (N)
    inp: &[F],      // (N, C)
    weight: &[F],   // (C)
    bias: &[F],     // (C)
    c: usize,
) {
    let eps = F::from_f64(LN_EPS);
    let inv_c = F::ONE / F::from_usize(c);
    out.chunks_mut(c).zip(inp.chunks(c)).zip(mean.iter_mut().zip(rstd.iter_mut())).for_each(
        |((out_n, x), (mean_n, rstd_n))| {
            vectorized(
                #[inline(always)]
                || {
                    let m = lane_sum(x) * inv_c;
                    // (x − m)² staged in `out_n`, then summed over fixed lanes
                    for i in 0..c {
                        out_n[i] = (x[i] - m) * (x[i] - m);
                    }
                    let var = lane_sum(out_n);
                    let s = F::ONE / (var * inv_c + eps).sqrt();
                    for i in 0..c {
                        out_n[i] = (x[i] - m) * s * weight[i] + bias[i];
                    }
                    *mean_n = m;
                    *rstd_n = s;
                },
            )
        },
    );
}

/// dinp += rstd · (dnorm − mean(dnorm) − norm · mean(dnorm · norm)) with
/// dnorm = weight · dout; dweight += Σ_n dout · norm; dbias += Σ_n dout. The parameter
/// gradients are split over channels, each channel summing its rows in order.
pub fn layernorm_backward<F: Float>(
    dinp: &mut [F],    // (N, C)
    dweight: &mut [F], // (C)
    dbias: &mut [F],   // (C)
    dout: &[F],        // (N, C)
    inp: &[F],         // (N, C)
    weight: &[F],      // (C)
    mean: &[F],        // (N)
    rstd: &[F],        // (N)
    c: usize,
) {
    layernorm_backward_dinp(dinp, dout, inp, weight, mean, rstd, c);
    layernorm_backward_params(dweight, dbias, dout, inp, mean, rstd, c);
}

/// The input part of [`layernorm_backward`] (row-local): dinp += ….
pub fn layernorm_backward_dinp<F: Float>(
    dinp: &mut [F],
    dout: &[F],
    inp: &[F],
    weight: &[F],
    mean: &[F],
    rstd: &[F],
    c: usize,
) {
    let inv_c = F::ONE / F::from_usize(c);
    dinp.chunks_mut(c)
        .zip(dout.chunks(c))
        .zip(inp.chunks(c))
        .zip(mean.iter().zip(rstd.iter()))
        .for_each(|(((dinp_n, dout_n), x), (&m, &s))| {
            vectorized(
                #[inline(always)]
                || {
                    // two sums over 8 fixed lanes each (a fixed order, so they vectorise)
                    let (mut l1, mut l2) = ([F::ZERO; 8], [F::ZERO; 8]);
                    let full = c - c % 8;
                    for i0 in (0..full).step_by(8) {
                        for j in 0..8 {
                            let i = i0 + j;
                            let norm = (x[i] - m) * s;
                            let dnorm = weight[i] * dout_n[i];
                            l1[j] += dnorm;
                            l2[j] += dnorm * norm;
                        }
                    }
                    let (mut dnorm_mean, mut dnorm_norm_mean) = (F::ZERO, F::ZERO);
                    for i in full..c {
                        let norm = (x[i] - m) * s;
                        let dnorm = weight[i] * dout_n[i];
                        dnorm_mean += dnorm;
                        dnorm_norm_mean += dnorm * norm;
                    }
                    for j in 0..8 {
                        dnorm_mean += l1[j];
                        dnorm_norm_mean += l2[j];
                    }
                    dnorm_mean *= inv_c;
                    dnorm_norm_mean *= inv_c;
                    for i in 0..c {
                        let norm = (x[i] - m) * s;
                        let dnorm = weight[i] * dout_n[i];
                        dinp_n[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
                    }
                },
            )
        });
}

/// The parameter part of [`layernorm_backward`]: each channel sums its rows in order.
pub fn layernorm_backward_params<F: Float>(
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    inp: &[F],
    mean: &[F],
    rstd: &[F],
    c: usize,
) {
    vectorized(
        #[inline(always)]
        || {
            let (dweight, dbias) = (&mut dweight[..c], &mut dbias[..c]);
            for (n, (dout_n, x)) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).enumerate() {
                let (m, s) = (mean[n], rstd[n]);
                for j in 0..c {
                    let norm = (x[j] - m) * s;
                    dweight[j] += dout_n[j] * norm;
                    dbias[j] += dout_n[j];
                }
            }
        },
    )
}

// ------------------------------------------------------------------------------------
// Matmul (linear layer): out = inp · Wᵀ + bias.
// ------------------------------------------------------------------------------------

/// out[n, o] = bias[o] + Σ_i inp[n, i] · weight[o, i]. Parallel over blocks of rows.
/// `weight_t` (≥ IC·OC) is scratch for Wᵀ (IC, OC), so the kernel's inner loop runs over
/// contiguous output channels; the copy costs OC·IC, against N·OC·IC for the product.
pub fn matmul_forward<F: Float>(
    out: &mut [F],      // (N, OC)
    inp: &[F],          // (N, IC)
    weight: &[F],       // (OC, IC)
    bias: Option<&[F]>, // (OC)
    weight_t: &mut [F], // scratch, (IC, OC)
    ic: usize,
    oc: usize,
) {
    let weight_t = &mut weight_t[..ic * oc];
    for o in 0..oc {
        for i in 0..ic {
            weight_t[i * oc + o] = weight[o * ic + i];
        }
    }
    let weight_t = &*weight_t;
    out.chunks_mut(ROWS_PER_TASK * oc).zip(inp.chunks(ROWS_PER_TASK * ic)).for_each(
        |(out_blk, inp_blk)| {
            let rows = inp_blk.len() / ic;
            match bias {
                Some(bias) => out_blk.chunks_mut(oc).for_each(|row| row.copy_from_slice(bias)),
                None => out_blk.fill(F::ZERO),
            }
            gemm(out_blk, oc, inp_blk, ic, 1, weight_t, oc, rows, oc, ic, true);
        },
    );
}

/// out = inp · Wᵀ + bias with Wᵀ (IC, OC) given, serial.
pub fn matmul_forward_t<F: Float>(
    out: &mut [F],
    inp: &[F],
    weight_t: &[F],
    bias: Option<&[F]>,
    ic: usize,
    oc: usize,
) {
    let rows = inp.len() / ic;
    let init = match bias {
        Some(bias) => Init::Bias(&bias[..oc]),
        None => Init::Zero,
    };
    gemm_init(out, oc, inp, ic, 1, weight_t, oc, rows, oc, ic, init);
}

/// Wᵀ (IC, OC) of W (OC, IC).
pub fn transpose<F: Float>(weight_t: &mut [F], weight: &[F], ic: usize, oc: usize) {
    for (o, w_o) in weight.chunks_exact(ic).take(oc).enumerate() {
        for (i, &w) in w_o.iter().enumerate() {
            weight_t[i * oc + o] = w;
        }
    }
}

/// dweight[o0.., :] += Σ_n dout[n, o0 + r] · inp[n, :] for the rows of `dweight` (a block of
/// output channels starting at o0), dbias likewise; each element sums n in order.
pub fn matmul_backward_params<F: Float>(
    dweight: &mut [F],
    dbias: Option<&mut [F]>,
    o0: usize,
    dout: &[F],
    inp: &[F],
    ic: usize,
    oc: usize,
) {
    let n = inp.len() / ic;
    let outs = dweight.len() / ic;
    gemm(dweight, ic, &dout[o0..], 1, oc, inp, ic, outs, ic, n, true);
    if let Some(db) = dbias {
        vectorized(
            #[inline(always)]
            || {
                let len = db.len();
                for dout_n in dout.chunks_exact(oc) {
                    for (d, &x) in db.iter_mut().zip(&dout_n[o0..o0 + len]) {
                        *d += x;
                    }
                }
            },
        );
    }
}

/// dinp (overwritten) = dout · W, parallel over rows; dweight += doutᵀ · inp and
/// dbias += Σ_n dout, parallel over output channels (each channel's sum over n in order).
pub fn matmul_backward<F: Float>(
    dinp: &mut [F],          // (N, IC)
    dweight: &mut [F],       // (OC, IC)
    dbias: Option<&mut [F]>, // (OC)
    dout: &[F],              // (N, OC)
    inp: &[F],               // (N, IC)
    weight: &[F],            // (OC, IC)
    ic: usize,
    oc: usize,
) {
    let n = inp.len() / ic;
    dinp.chunks_mut(ROWS_PER_TASK * ic).zip(dout.chunks(ROWS_PER_TASK * oc)).for_each(
        |(dinp_blk, dout_blk)| {
            let rows = dout_blk.len() / oc;
            gemm(dinp_blk, ic, dout_blk, oc, 1, weight, ic, rows, ic, oc, false);
        },
    );
    dweight.chunks_mut(OUT_PER_TASK * ic).enumerate().for_each(|(blk, dw_blk)| {
        let o0 = blk * OUT_PER_TASK;
        let outs = dw_blk.len() / ic;
        // a[r, k] = dout[k, o0 + r]: dout read transposed.
        gemm(dw_blk, ic, &dout[o0..], 1, oc, inp, ic, outs, ic, n, true);
    });
    if let Some(dbias) = dbias {
        dbias.chunks_mut(OUT_PER_TASK).enumerate().for_each(|(blk, db)| {
            let o0 = blk * OUT_PER_TASK;
            vectorized(
                #[inline(always)]
                || {
                    let len = db.len();
                    for dout_n in dout.chunks_exact(oc) {
                        for (d, &x) in db.iter_mut().zip(&dout_n[o0..o0 + len]) {
                            *d += x;
                        }
                    }
                },
            );
        });
    }
}

// ------------------------------------------------------------------------------------
// Causal multi-head self-attention.
// ------------------------------------------------------------------------------------

/// Query rows per attention product call; each block stops at its last causal column.
const CAUSAL_BLOCK: usize = NS;

/// Scratch floats per batch row that attention needs (head-contiguous copies of q, k, v,
/// their transposes, the head output and its gradients, two T×T score matrices).
pub fn attention_scratch_len(t_len: usize, hs: usize) -> usize {
    9 * t_len * hs + 2 * t_len * t_len
}

/// Split one row's scratch into named head buffers.
fn head_buffers<F>(scratch: &mut [F], t_len: usize, hs: usize) -> [&mut [F]; 11] {
    let sizes = [
        t_len * hs,
        t_len * hs,
        t_len * hs,
        t_len * hs,
        t_len * hs,
        t_len * hs,
        t_len * hs,
        t_len * hs,
        t_len * hs,
        t_len * t_len,
        t_len * t_len,
    ];
    let mut rest = scratch;
    let mut out: [&mut [F]; 11] = Default::default();
    for (slot, size) in out.iter_mut().zip(sizes) {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(size);
        *slot = head;
        rest = tail;
    }
    out
}

/// qkv[b, t] = [q | k | v], each C = NH·hs. For each (b, h):
/// att = softmax(q·kᵀ / √hs with t2 > t masked) (T, T); out[b, :, h] = att · v (T, hs).
/// Parallel over b; the heads of a row run in turn. `att` is kept for the backward.
pub fn attention_forward<F: Float>(
    out: &mut [F],     // (B, T, C)
    att: &mut [F],     // (B, NH, T, T)
    qkv: &[F],         // (B, T, 3C)
    scratch: &mut [F], // (B, attention_scratch_len)
    t_len: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = F::ONE / F::from_usize(hs).sqrt();
    let per_row = attention_scratch_len(t_len, hs);
    out.chunks_mut(t_len * c)
        .zip(att.chunks_mut(nh * t_len * t_len))
        .zip(qkv.chunks(t_len * 3 * c))
        .zip(scratch.chunks_mut(per_row))
        .for_each(|(((out_b, att_b), qkv_b), scratch_b)| {
            vectorized(
                #[inline(always)]
                || {
                    let [_, k_t, ..] = head_buffers(scratch_b, t_len, hs);
                    for h in 0..nh {
                        // q and v are read in place (row stride 3C); only kᵀ needs a copy
                        for t in 0..t_len {
                            let k_row = &qkv_b[t * 3 * c + c + h * hs..][..hs];
                            for d in 0..hs {
                                k_t[d * t_len + t] = k_row[d];
                            }
                        }
                        let att_bh = &mut att_b[h * t_len * t_len..(h + 1) * t_len * t_len];
                        // pre-attention scores q · kᵀ (T, T), in row blocks that stop at the
                        // block's last column: entries above the diagonal are never computed
                        for r0 in (0..t_len).step_by(CAUSAL_BLOCK) {
                            let rows = CAUSAL_BLOCK.min(t_len - r0);
                            gemm(
                                &mut att_bh[r0 * t_len..],
                                t_len,
                                &qkv_b[r0 * 3 * c + h * hs..],
                                3 * c,
                                1,
                                k_t,
                                t_len,
                                rows,
                                r0 + rows,
                                hs,
                                false,
                            );
                        }
                        for t in 0..t_len {
                            let row = &mut att_bh[t * t_len..(t + 1) * t_len];
                            let (live, masked) = row.split_at_mut(t + 1);
                            for x in live.iter_mut() {
                                *x *= scale;
                            }
                            let max = lane_max(live);
                            for x in live.iter_mut() {
                                *x = (*x - max).exp();
                            }
                            let sum = lane_sum(live);
                            let inv_sum = F::ONE / sum;
                            for x in live.iter_mut() {
                                *x *= inv_sum;
                            }
                            masked.fill(F::ZERO);
                        }
                        // head output att · v, (T, hs)
                        for r0 in (0..t_len).step_by(CAUSAL_BLOCK) {
                            let rows = CAUSAL_BLOCK.min(t_len - r0);
                            gemm(
                                &mut out_b[r0 * c + h * hs..],
                                c,
                                &att_bh[r0 * t_len..],
                                t_len,
                                1,
                                &qkv_b[2 * c + h * hs..],
                                3 * c,
                                rows,
                                hs,
                                r0 + rows,
                                false,
                            );
                        }
                    }
                },
            )
        });
}

/// dqkv (overwritten) from dout through the softmax: for each (b, h)
/// datt = dy · vᵀ, dv = attᵀ · dy, dpre = att ⊙ (datt − rowsum(att ⊙ datt)) / √hs,
/// dq = dpre · k, dk = dpreᵀ · q. Parallel over b.
pub fn attention_backward<F: Float>(
    dqkv: &mut [F],    // (B, T, 3C)
    dout: &[F],        // (B, T, C)
    qkv: &[F],         // (B, T, 3C)
    att: &[F],         // (B, NH, T, T)
    scratch: &mut [F], // (B, attention_scratch_len)
    t_len: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = F::ONE / F::from_usize(hs).sqrt();
    let per_row = attention_scratch_len(t_len, hs);
    dqkv.chunks_mut(t_len * 3 * c)
        .zip(dout.chunks(t_len * c))
        .zip(qkv.chunks(t_len * 3 * c).zip(att.chunks(nh * t_len * t_len)))
        .zip(scratch.chunks_mut(per_row))
        .for_each(|(((dqkv_b, dout_b), (qkv_b, att_b)), scratch_b)| {
            vectorized(
                #[inline(always)]
                || {
                    let [_, _, v_t, _, _, _, _, _, _, datt, dpre] =
                        head_buffers(scratch_b, t_len, hs);
                    for h in 0..nh {
                        // q, k, dy are read in place and dq, dk, dv written in place (row strides
                        // 3C and C); only vᵀ needs a copy
                        let (q, k, dy) =
                            (&qkv_b[h * hs..], &qkv_b[c + h * hs..], &dout_b[h * hs..]);
                        for t in 0..t_len {
                            let v_row = &qkv_b[t * 3 * c + 2 * c + h * hs..][..hs];
                            for d in 0..hs {
                                v_t[d * t_len + t] = v_row[d];
                            }
                        }
                        let att_bh = &att_b[h * t_len * t_len..(h + 1) * t_len * t_len];
                        // Row blocks again skip the zero upper triangle: rows t only reach columns
                        // ≤ t, and the transposed products dv, dk only sum over t ≥ t2.
                        for r0 in (0..t_len).step_by(CAUSAL_BLOCK) {
                            let rows = CAUSAL_BLOCK.min(t_len - r0);
                            gemm(
                                &mut datt[r0 * t_len..],
                                t_len,
                                &dy[r0 * c..],
                                c,
                                1,
                                v_t,
                                t_len,
                                rows,
                                r0 + rows,
                                hs,
                                false,
                            ); // (T, T)
                            gemm(
                                &mut dqkv_b[r0 * 3 * c + 2 * c + h * hs..],
                                3 * c,
                                &att_bh[r0 * t_len + r0..],
                                1,
                                t_len,
                                &dy[r0 * c..],
                                c,
                                rows,
                                hs,
                                t_len - r0,
                                false,
                            ); // dv (T, hs)
                        }
                        for t in 0..t_len {
                            let a = &att_bh[t * t_len..t * t_len + t + 1];
                            let da = &datt[t * t_len..t * t_len + t + 1];
                            let dot = lane_dot(a, da);
                            let (dp, masked) = dpre[t * t_len..(t + 1) * t_len].split_at_mut(t + 1);
                            for t2 in 0..=t {
                                dp[t2] = a[t2] * (da[t2] - dot) * scale;
                            }
                            masked.fill(F::ZERO);
                        }
                        for r0 in (0..t_len).step_by(CAUSAL_BLOCK) {
                            let rows = CAUSAL_BLOCK.min(t_len - r0);
                            gemm(
                                &mut dqkv_b[r0 * 3 * c + h * hs..],
                                3 * c,
                                &dpre[r0 * t_len..],
                                t_len,
                                1,
                                k,
                                3 * c,
                                rows,
                                hs,
                                r0 + rows,
                                false,
                            ); // dq (T, hs)
                            gemm(
                                &mut dqkv_b[r0 * 3 * c + c + h * hs..],
                                3 * c,
                                &dpre[r0 * t_len + r0..],
                                1,
                                t_len,
                                &q[r0 * 3 * c..],
                                3 * c,
                                rows,
                                hs,
                                t_len - r0,
                                false,
                            ); // dk (T, hs)
                        }
                    }
                },
            )
        });
}

// ------------------------------------------------------------------------------------
// GELU, tanh approximation (GPT-2's `gelu_new`).
// ------------------------------------------------------------------------------------

const GELU_SCALE: f64 = 0.797_884_560_802_865_4; // √(2/π)
const GELU_CUBIC: f64 = 0.044715;

/// out = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³))).
pub fn gelu_forward<F: Float>(out: &mut [F], inp: &[F]) {
    F::gelu_forward_slice(out, inp)
}

/// dinp (overwritten) = dout · gelu'(x).
pub fn gelu_backward<F: Float>(dinp: &mut [F], inp: &[F], dout: &[F]) {
    F::gelu_backward_slice(dinp, inp, dout)
}

/// `gelu_forward` by the tanh formula as written (the f64 reference path).
pub fn gelu_forward_generic<F: Float>(out: &mut [F], inp: &[F]) {
    let (s, k, half) = (F::from_f64(GELU_SCALE), F::from_f64(GELU_CUBIC), F::from_f64(0.5));
    out.chunks_mut(4096).zip(inp.chunks(4096)).for_each(|(out, inp)| {
        vectorized(
            #[inline(always)]
            || {
                for (y, &x) in out.iter_mut().zip(inp) {
                    let u = s * (x + k * x * x * x);
                    *y = half * x * (F::ONE + u.tanh());
                }
            },
        )
    });
}

/// `gelu_backward` by the tanh formula as written (the f64 reference path).
pub fn gelu_backward_generic<F: Float>(dinp: &mut [F], inp: &[F], dout: &[F]) {
    let (s, k, half, three) =
        (F::from_f64(GELU_SCALE), F::from_f64(GELU_CUBIC), F::from_f64(0.5), F::from_f64(3.0));
    dinp.chunks_mut(4096).zip(inp.chunks(4096).zip(dout.chunks(4096))).for_each(
        |(dinp, (inp, dout))| {
            vectorized(
                #[inline(always)]
                || {
                    for ((dx, &x), &dy) in dinp.iter_mut().zip(inp).zip(dout) {
                        let u = s * (x + k * x * x * x);
                        let th = u.tanh();
                        let sech2 = F::ONE - th * th;
                        let local = half * (F::ONE + th)
                            + half * x * sech2 * s * (F::ONE + three * k * x * x);
                        *dx = local * dy;
                    }
                },
            )
        },
    );
}

// ------------------------------------------------------------------------------------
// Residual add. Its backward is the identity into both inputs, so the model's backward
// fuses it away: a branch reads the stream gradient as its output gradient and its
// LayerNorm backward adds into the stream gradient in place (see `Gpt::backward`).
// ------------------------------------------------------------------------------------

/// out = a + b.
pub fn residual_forward<F: Float>(out: &mut [F], a: &[F], b: &[F]) {
    out.chunks_mut(4096).zip(a.chunks(4096).zip(b.chunks(4096))).for_each(|(out, (a, b))| {
        for i in 0..out.len() {
            out[i] = a[i] + b[i];
        }
    });
}

// ------------------------------------------------------------------------------------
// Head: fused log-softmax + gather of scored tokens, and the top-k instruments.
// ------------------------------------------------------------------------------------

/// What the head reports per row.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadOut<F> {
    /// (B, T) log p(tokens[b, t] | tokens[b, <t]) where mask[b, t] > 0, else 0.
    pub token_logps: Vec<F>,
    /// (B) Σ_t mask[b, t] · token_logps[b, t].
    pub seq_logps: Vec<F>,
    /// (B) mean over scored positions of −Σ_{top-10} p log₂ p.
    pub topk_entropy: Vec<F>,
    /// (B) mean over scored positions of Σ_{top-10} p.
    pub topk_mass: Vec<F>,
}

/// Top-k entropy (bits) and mass of one predicting distribution, from its logits and
/// log-sum-exp: −Σ_{i∈top-k} p_i log₂ p_i and Σ_{i∈top-k} p_i, with p the full softmax
/// (not renormalised over the top k), after Shi et al. 2024, "Understanding Likelihood
/// Over-optimisation in Direct Alignment Algorithms", §5 (k = 10).
pub fn topk_entropy_mass<F: Float>(logits: &[F], lse: F) -> (F, F) {
    let k = TOPK.min(logits.len());
    // Prefilter: the row's 16 strided lane maxima are 16 distinct elements, so at least k of
    // the row are ≥ the k-th largest of them (τ), and every top-k element is ≥ τ. Only those
    // candidates go through the insertion below; the sorted top k is the same multiset.
    const LANES: usize = 16;
    if logits.len() >= 2 * LANES && k <= LANES {
        let mut lanes: [F; LANES] = logits[..LANES].try_into().unwrap();
        for chunk in logits.chunks_exact(LANES) {
            for j in 0..LANES {
                lanes[j] = lanes[j].max(chunk[j]);
            }
        }
        let tau = insert_topk(&lanes, k)[k - 1];
        let (top, _) = insert_topk_filtered(logits, k, Some(tau));
        return entropy_mass(&top[..k], lse);
    }
    let top = insert_topk(logits, k);
    entropy_mass(&top[..k], lse)
}

/// The k largest of `xs` (k ≤ TOPK, k ≤ xs.len()), descending, by insertion.
#[inline(always)]
fn insert_topk<F: Float>(xs: &[F], k: usize) -> [F; TOPK] {
    insert_topk_filtered(xs, k, None).0
}

/// [`insert_topk`] over only the elements x ≥ tau when `tau` is given; also returns how
/// many were taken in (at most k).
#[inline(always)]
fn insert_topk_filtered<F: Float>(logits: &[F], k: usize, tau: Option<F>) -> ([F; TOPK], usize) {
    let mut top = [F::ZERO; TOPK]; // logits, descending
    let mut filled = 0;
    for &x in logits {
        if let Some(tau) = tau {
            if x < tau {
                continue;
            }
        }
        if filled < k {
            let mut j = filled;
            while j > 0 && top[j - 1] < x {
                top[j] = top[j - 1];
                j -= 1;
            }
            top[j] = x;
            filled += 1;
        } else if x > top[k - 1] {
            let mut j = k - 1;
            while j > 0 && top[j - 1] < x {
                top[j] = top[j - 1];
                j -= 1;
            }
            top[j] = x;
        }
    }
    (top, filled)
}

/// −Σ p log₂ p and Σ p over the given logits, p = exp(x − lse).
#[inline(always)]
fn entropy_mass<F: Float>(top: &[F], lse: F) -> (F, F) {
    let inv_ln2 = F::from_f64(std::f64::consts::LOG2_E);
    let (mut entropy, mut mass) = (F::ZERO, F::ZERO);
    for &x in top {
        let logp = x - lse;
        let p = logp.exp();
        entropy -= p * logp * inv_ln2;
        mass += p;
    }
    (entropy, mass)
}

/// max of a non-empty slice, over 8 lanes so the loop vectorises (max is exact, so the
/// grouping never changes the result).
#[inline(always)]
fn lane_max<F: Float>(row: &[F]) -> F {
    let mut lanes = [row[0]; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for j in 0..8 {
            lanes[j] = lanes[j].max(chunk[j]);
        }
    }
    let mut max = row[0];
    for &x in tail {
        max = max.max(x);
    }
    for lane in lanes {
        max = max.max(lane);
    }
    max
}

/// Σ a[i]·b[i] over 8 fixed lanes (a fixed order, independent of threads), so it vectorises.
#[inline(always)]
fn lane_dot<F: Float>(a: &[F], b: &[F]) -> F {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [F::ZERO; 8];
    let full = n - n % 8;
    for (ca, cb) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
        for j in 0..8 {
            lanes[j] += ca[j] * cb[j];
        }
    }
    let mut sum = F::ZERO;
    for i in full..n {
        sum += a[i] * b[i];
    }
    for lane in lanes {
        sum += lane;
    }
    sum
}

/// Σ row[i] over 8 fixed lanes.
#[inline(always)]
fn lane_sum<F: Float>(row: &[F]) -> F {
    let mut lanes = [F::ZERO; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for j in 0..8 {
            lanes[j] += chunk[j];
        }
    }
    let mut sum = F::ZERO;
    for &x in tail {
        sum += x;
    }
    for lane in lanes {
        sum += lane;
    }
    sum
}

/// Σ_i exp(row[i] − shift), in 8 interleaved partial sums added in a fixed order: the exps
/// vectorise and the result stays reproducible.
#[inline(always)]
fn sum_exp<F: Float>(row: &[F], shift: F) -> F {
    let mut lanes = [F::ZERO; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for j in 0..8 {
            lanes[j] += (chunk[j] - shift).exp();
        }
    }
    let mut sum = F::ZERO;
    for &x in tail {
        sum += (x - shift).exp();
    }
    for lane in lanes {
        sum += lane;
    }
    sum
}

/// For every scored position t of row b, the logits at t − 1 predict tokens[b, t]:
/// lse[b, t−1] = log Σ exp(logits[b, t−1, :]), token_logp = logits[b, t−1, tok] − lse.
/// Parallel over b.
pub fn logprob_forward<F: Float>(
    lse: &mut [F],  // (B, T), filled at predicting positions t − 1 of scored t
    logits: &[F],   // (B, T, V)
    tokens: &[u32], // (B, T)
    mask: &[F],     // (B, T)
    t_len: usize,
    v: usize,
) -> HeadOut<F> {
    let b_len = tokens.len() / t_len;
    let mut out = HeadOut {
        token_logps: vec![F::ZERO; b_len * t_len],
        seq_logps: vec![F::ZERO; b_len],
        topk_entropy: vec![F::ZERO; b_len],
        topk_mass: vec![F::ZERO; b_len],
    };
    logprob_forward_into(
        lse,
        logits,
        tokens,
        mask,
        t_len,
        v,
        &mut out.token_logps,
        &mut out.seq_logps,
        &mut out.topk_entropy,
        &mut out.topk_mass,
    );
    out
}

/// [`logprob_forward`] into caller buffers (token_logps (B, T) and the three (B) rows,
/// all overwritten).
pub fn logprob_forward_into<F: Float>(
    lse: &mut [F],
    logits: &[F],
    tokens: &[u32],
    mask: &[F],
    t_len: usize,
    v: usize,
    token_logps: &mut [F],
    seq_logps: &mut [F],
    topk_entropy: &mut [F],
    topk_mass: &mut [F],
) {
    token_logps.fill(F::ZERO);
    lse.chunks_mut(t_len)
        .zip(token_logps.chunks_mut(t_len))
        .zip(seq_logps.iter_mut().zip(topk_entropy.iter_mut().zip(topk_mass.iter_mut())))
        .enumerate()
        .for_each(|(b, ((lse_b, logp_b), (seq, (ent, mass))))| {
            vectorized(
                #[inline(always)]
                || {
                    lse_b.fill(F::ZERO);
                    (*seq, *ent, *mass) = (F::ZERO, F::ZERO, F::ZERO);
                    let mut scored = 0usize;
                    for t in 1..t_len {
                        let m = mask[b * t_len + t];
                        if m <= F::ZERO {
                            continue;
                        }
                        let row = &logits[(b * t_len + t - 1) * v..(b * t_len + t) * v];
                        let max = lane_max(row);
                        let l = max + sum_exp(row, max).ln();
                        lse_b[t - 1] = l;
                        let logp = row[tokens[b * t_len + t] as usize] - l;
                        logp_b[t] = logp;
                        *seq += m * logp;
                        let (e, p) = topk_entropy_mass(row, l);
                        *ent += e;
                        *mass += p;
                        scored += 1;
                    }
                    if scored > 0 {
                        *ent = *ent / F::from_usize(scored);
                        *mass = *mass / F::from_usize(scored);
                    }
                },
            )
        });
}

/// dlogits (overwritten): at the predicting position t − 1 of each scored t,
/// d_seq[b] · mask[b, t] · (onehot(tokens[b, t]) − softmax(logits[b, t − 1])); 0 elsewhere.
/// (llm.c's crossentropy_softmax_backward, with the loss being +Σ logp.)
pub fn logprob_backward<F: Float>(
    dlogits: &mut [F], // (B, T, V)
    logits: &[F],      // (B, T, V)
    lse: &[F],         // (B, T)
    tokens: &[u32],    // (B, T)
    mask: &[F],        // (B, T)
    d_seq: &[F],       // (B)
    t_len: usize,
    v: usize,
) {
    dlogits.chunks_mut(t_len * v).enumerate().for_each(|(b, dlogits_b)| {
        vectorized(
            #[inline(always)]
            || {
                dlogits_b.fill(F::ZERO);
                for t in 1..t_len {
                    let m = mask[b * t_len + t];
                    if m <= F::ZERO {
                        continue;
                    }
                    let g = d_seq[b] * m;
                    let bt = b * t_len + t - 1;
                    let row = &logits[bt * v..(bt + 1) * v];
                    let drow = &mut dlogits_b[(t - 1) * v..t * v];
                    for i in 0..v {
                        drow[i] = -g * (row[i] - lse[bt]).exp();
                    }
                    drow[tokens[b * t_len + t] as usize] += g;
                }
            },
        )
    });
}

// ------------------------------------------------------------------------------------
// The whole model.
// ------------------------------------------------------------------------------------

/// Split a flat buffer into the 16 tensors of the llm.c layout.
fn split_params<'a, F>(buf: &'a [F], cfg: &GptConfig) -> [&'a [F]; 16] {
    let mut rest = buf;
    let mut out: [&[F]; 16] = Default::default();
    for (slot, (_, _, shape)) in out.iter_mut().zip(cfg.layout().tensors(cfg)) {
        let (head, tail) = rest.split_at(shape.iter().product());
        *slot = head;
        rest = tail;
    }
    out
}

fn split_params_mut<'a, F>(buf: &'a mut [F], cfg: &GptConfig) -> [&'a mut [F]; 16] {
    let mut rest = buf;
    let mut out: [&mut [F]; 16] = Default::default();
    let sizes =
        cfg.layout().tensors(cfg).into_iter().map(|(_, _, shape)| shape.iter().product::<usize>());
    for (slot, size) in out.iter_mut().zip(sizes) {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(size);
        *slot = head;
        rest = tail;
    }
    out
}

/// Layer l of a layer-stacked tensor (L, ...).
fn layer<F>(t: &[F], l: usize, n_layer: usize) -> &[F] {
    let n = t.len() / n_layer;
    &t[l * n..(l + 1) * n]
}

/// Split a layer-stacked (L, B, ...) buffer into `nb` equal blocks of batch rows:
/// out[block][layer].
fn blocks_mut<F>(buf: &mut [F], nl: usize, nb: usize) -> Vec<Vec<&mut [F]>> {
    let per_layer = buf.len() / nl;
    let mut out: Vec<Vec<&mut [F]>> = (0..nb).map(|_| Vec::with_capacity(nl)).collect();
    for layer in buf.chunks_mut(per_layer) {
        for (j, blk) in layer.chunks_mut(per_layer / nb).enumerate() {
            out[j].push(blk);
        }
    }
    out
}

/// Like [`blocks_mut`] for a buffer without the layer axis: out[block].
fn blocks1_mut<F>(buf: &mut [F], nb: usize) -> Vec<&mut [F]> {
    let per = buf.len() / nb;
    buf.chunks_mut(per).collect()
}

fn blocks1<F>(buf: &[F], nb: usize) -> Vec<&[F]> {
    buf.chunks(buf.len() / nb).collect()
}

/// Activations of one (B, T) shape, allocated once and reused while the shape repeats.
/// Layer-stacked buffers lead with L.
#[derive(Debug)]
struct Activations<F> {
    b: usize,
    t: usize,
    tokens: Vec<u32>,  // (B, T)
    mask: Vec<F>,      // (B, T)
    encoded: Vec<F>,   // (B, T, C)
    ln1: Vec<F>,       // (L, B, T, C)
    ln1_mean: Vec<F>,  // (L, B, T)
    ln1_rstd: Vec<F>,  // (L, B, T)
    qkv: Vec<F>,       // (L, B, T, 3C)
    atty: Vec<F>,      // (L, B, T, C)
    att: Vec<F>,       // (L, B, NH, T, T)
    attproj: Vec<F>,   // (L, B, T, C)
    residual2: Vec<F>, // (L, B, T, C)
    ln2: Vec<F>,       // (L, B, T, C)
    ln2_mean: Vec<F>,  // (L, B, T)
    ln2_rstd: Vec<F>,  // (L, B, T)
    fch: Vec<F>,       // (L, B, T, 4C)
    fch_gelu: Vec<F>,  // (L, B, T, 4C)
    fcproj: Vec<F>,    // (L, B, T, C)
    residual3: Vec<F>, // (L, B, T, C)
    lnf: Vec<F>,       // (B, T, C)
    lnf_mean: Vec<F>,  // (B, T)
    lnf_rstd: Vec<F>,  // (B, T)
    logits: Vec<F>,    // (B, T, V)
    lse: Vec<F>,       // (B, T)
    // backward: the output gradients the parameter gradients need, per layer
    dres3: Vec<F>,   // (L, B, T, C) d(block output)
    dfch: Vec<F>,    // (L, B, T, 4C)
    dln2: Vec<F>,    // (L, B, T, C)
    dres2: Vec<F>,   // (L, B, T, C)
    dqkv: Vec<F>,    // (L, B, T, 3C)
    dln1: Vec<F>,    // (L, B, T, C)
    dlnf: Vec<F>,    // (B, T, C)
    dres0: Vec<F>,   // (B, T, C) d(encoded)
    dlogits: Vec<F>, // (B, T, V)
    // backward scratch, per row
    datty: Vec<F>,        // (B, T, C)
    dfch_gelu: Vec<F>,    // (B, T, 4C)
    attn_scratch: Vec<F>, // (B, attention_scratch_len)
}

impl<F: Float> Activations<F> {
    fn new(cfg: &GptConfig, b: usize, t: usize) -> Self {
        let (c, l, v, nh) = (cfg.d_model, cfg.n_layer, cfg.vocab, cfg.n_head);
        let n = b * t;
        let z = |len: usize| vec![F::ZERO; len];
        Activations {
            b,
            t,
            tokens: vec![0; n],
            mask: z(n),
            encoded: z(n * c),
            ln1: z(l * n * c),
            ln1_mean: z(l * n),
            ln1_rstd: z(l * n),
            qkv: z(l * n * 3 * c),
            atty: z(l * n * c),
            att: z(l * b * nh * t * t),
            attproj: z(l * n * c),
            residual2: z(l * n * c),
            ln2: z(l * n * c),
            ln2_mean: z(l * n),
            ln2_rstd: z(l * n),
            fch: z(l * n * 4 * c),
            fch_gelu: z(l * n * 4 * c),
            fcproj: z(l * n * c),
            residual3: z(l * n * c),
            lnf: z(n * c),
            lnf_mean: z(n),
            lnf_rstd: z(n),
            logits: z(n * v),
            lse: z(n),
            dres3: z(l * n * c),
            dfch: z(l * n * 4 * c),
            dln2: z(l * n * c),
            dres2: z(l * n * c),
            dqkv: z(l * n * 3 * c),
            dln1: z(l * n * c),
            dlnf: z(n * c),
            dres0: z(n * c),
            dlogits: z(n * v),
            datty: z(n * c),
            dfch_gelu: z(n * 4 * c),
            attn_scratch: z(b * attention_scratch_len(t, cfg.head_dim())),
        }
    }
}

/// One block of batch rows of every activation buffer, for the row-parallel passes.
struct RowBlock<'a, F> {
    tokens: &'a [u32],
    mask: &'a [F],
    encoded: &'a mut [F],
    ln1: Vec<&'a mut [F]>,
    ln1_mean: Vec<&'a mut [F]>,
    ln1_rstd: Vec<&'a mut [F]>,
    qkv: Vec<&'a mut [F]>,
    atty: Vec<&'a mut [F]>,
    att: Vec<&'a mut [F]>,
    attproj: Vec<&'a mut [F]>,
    residual2: Vec<&'a mut [F]>,
    ln2: Vec<&'a mut [F]>,
    ln2_mean: Vec<&'a mut [F]>,
    ln2_rstd: Vec<&'a mut [F]>,
    fch: Vec<&'a mut [F]>,
    fch_gelu: Vec<&'a mut [F]>,
    fcproj: Vec<&'a mut [F]>,
    residual3: Vec<&'a mut [F]>,
    lnf: &'a mut [F],
    lnf_mean: &'a mut [F],
    lnf_rstd: &'a mut [F],
    logits: &'a mut [F],
    lse: &'a mut [F],
    dres3: Vec<&'a mut [F]>,
    dfch: Vec<&'a mut [F]>,
    dln2: Vec<&'a mut [F]>,
    dres2: Vec<&'a mut [F]>,
    dqkv: Vec<&'a mut [F]>,
    dln1: Vec<&'a mut [F]>,
    dlnf: &'a mut [F],
    dres0: &'a mut [F],
    dlogits: &'a mut [F],
    datty: &'a mut [F],
    dfch_gelu: &'a mut [F],
    attn_scratch: &'a mut [F],
}

impl<F: Float> Activations<F> {
    /// Blocks of `rows` batch rows each (rows divides B).
    fn row_blocks(&mut self, nl: usize, rows: usize) -> Vec<RowBlock<'_, F>> {
        let nb = self.b / rows;
        macro_rules! it {
            ($f:ident) => {
                blocks_mut(&mut self.$f, nl, nb).into_iter()
            };
        }
        macro_rules! it1 {
            ($f:ident) => {
                blocks1_mut(&mut self.$f, nb).into_iter()
            };
        }
        let mut tokens = self.tokens.chunks(self.tokens.len() / nb);
        let mut mask = blocks1(&self.mask, nb).into_iter();
        let (
            mut encoded,
            mut ln1,
            mut ln1_mean,
            mut ln1_rstd,
            mut qkv,
            mut atty,
            mut att,
            mut attproj,
        ) = (
            it1!(encoded),
            it!(ln1),
            it!(ln1_mean),
            it!(ln1_rstd),
            it!(qkv),
            it!(atty),
            it!(att),
            it!(attproj),
        );
        let (
            mut residual2,
            mut ln2,
            mut ln2_mean,
            mut ln2_rstd,
            mut fch,
            mut fch_gelu,
            mut fcproj,
            mut residual3,
        ) = (
            it!(residual2),
            it!(ln2),
            it!(ln2_mean),
            it!(ln2_rstd),
            it!(fch),
            it!(fch_gelu),
            it!(fcproj),
            it!(residual3),
        );
        let (mut lnf, mut lnf_mean, mut lnf_rstd, mut logits, mut lse) =
            (it1!(lnf), it1!(lnf_mean), it1!(lnf_rstd), it1!(logits), it1!(lse));
        let (mut dres3, mut dfch, mut dln2, mut dres2, mut dqkv, mut dln1) =
            (it!(dres3), it!(dfch), it!(dln2), it!(dres2), it!(dqkv), it!(dln1));
        let (mut dlnf, mut dres0, mut dlogits, mut datty, mut dfch_gelu, mut attn_scratch) = (
            it1!(dlnf),
            it1!(dres0),
            it1!(dlogits),
            it1!(datty),
            it1!(dfch_gelu),
            it1!(attn_scratch),
        );
        (0..nb)
            .map(|_| RowBlock {
                tokens: tokens.next().unwrap(),
                mask: mask.next().unwrap(),
                encoded: encoded.next().unwrap(),
                ln1: ln1.next().unwrap(),
                ln1_mean: ln1_mean.next().unwrap(),
                ln1_rstd: ln1_rstd.next().unwrap(),
                qkv: qkv.next().unwrap(),
                atty: atty.next().unwrap(),
                att: att.next().unwrap(),
                attproj: attproj.next().unwrap(),
                residual2: residual2.next().unwrap(),
                ln2: ln2.next().unwrap(),
                ln2_mean: ln2_mean.next().unwrap(),
                ln2_rstd: ln2_rstd.next().unwrap(),
                fch: fch.next().unwrap(),
                fch_gelu: fch_gelu.next().unwrap(),
                fcproj: fcproj.next().unwrap(),
                residual3: residual3.next().unwrap(),
                lnf: lnf.next().unwrap(),
                lnf_mean: lnf_mean.next().unwrap(),
                lnf_rstd: lnf_rstd.next().unwrap(),
                logits: logits.next().unwrap(),
                lse: lse.next().unwrap(),
                dres3: dres3.next().unwrap(),
                dfch: dfch.next().unwrap(),
                dln2: dln2.next().unwrap(),
                dres2: dres2.next().unwrap(),
                dqkv: dqkv.next().unwrap(),
                dln1: dln1.next().unwrap(),
                dlnf: dlnf.next().unwrap(),
                dres0: dres0.next().unwrap(),
                dlogits: dlogits.next().unwrap(),
                datty: datty.next().unwrap(),
                dfch_gelu: dfch_gelu.next().unwrap(),
                attn_scratch: attn_scratch.next().unwrap(),
            })
            .collect()
    }
}

/// Batch rows per task of the row-parallel passes (1 divides every B).
const BATCH_ROWS_PER_TASK: usize = 1;

/// GPT-2 over a flat parameter vector, with its gradient and the activations of the last
/// forward.
#[derive(Debug)]
pub struct Gpt<F> {
    pub cfg: GptConfig,
    /// Flat parameters, llm.c layout.
    pub params: Vec<F>,
    /// Flat gradient of the last backward, same layout.
    pub grads: Vec<F>,
    /// Per parameter tensor (the order of `ParamLayout::tensors`): its gradient is not
    /// computed and stays zero (a LoRA base's frozen weights).
    pub frozen: [bool; 16],
    acts: Option<Activations<F>>,
    /// Whether `acts` holds a forward that `backward` may use.
    forward_done: bool,
    /// Wᵀ of every matmul weight (per layer qkv, attproj, fc, fcproj, then wte), rebuilt
    /// from `params` at every forward.
    weights_t: Vec<F>,
}

impl<F: Float> Gpt<F> {
    /// `params.len()` must equal the layout's total (checked by the engine).
    pub fn new(cfg: GptConfig, params: Vec<F>) -> Self {
        let total = params.len();
        Gpt {
            cfg,
            params,
            grads: vec![F::ZERO; total],
            frozen: [false; 16],
            acts: None,
            forward_done: false,
            weights_t: Vec::new(),
        }
    }

    /// Rows of the last forward, if any.
    pub fn last_batch(&self) -> Option<usize> {
        self.acts.as_ref().filter(|_| self.forward_done).map(|a| a.b)
    }

    pub fn invalidate(&mut self) {
        self.forward_done = false;
    }

    /// Forward pass on (B, T) tokens with the score mask; keeps activations for
    /// [`Gpt::backward`]. Tokens must be < V and T ≤ ctx (the engine checks).
    ///
    /// Every layer is row-local except attention, which stays inside a batch row, so the
    /// whole forward runs as one parallel pass over blocks of batch rows.
    pub fn forward(&mut self, tokens: &[u32], mask: &[F], b: usize, t: usize) -> HeadOut<F> {
        let cfg = self.cfg;
        let (c, nl, nh, v) = (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.vocab);
        if self.acts.as_ref().is_none_or(|a| a.b != b || a.t != t) {
            self.acts = Some(Activations::new(&cfg, b, t));
        }
        let [wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb, lnfw, lnfb] =
            split_params(&self.params, &cfg);
        // Wᵀ of every matrix, so the kernel's inner loop runs over contiguous outputs
        let per_layer_t = 12 * c * c;
        self.weights_t.resize(nl * per_layer_t + v * c, F::ZERO);
        {
            let (layers_t, wte_t) = self.weights_t.split_at_mut(nl * per_layer_t);
            let mut jobs: Vec<(&mut [F], &[F], usize, usize)> = Vec::with_capacity(4 * nl + 1);
            for (l, lt) in layers_t.chunks_mut(per_layer_t).enumerate() {
                let (q, rest) = lt.split_at_mut(3 * c * c);
                let (ap, rest) = rest.split_at_mut(c * c);
                let (f, fp) = rest.split_at_mut(4 * c * c);
                jobs.push((q, layer(qkvw, l, nl), c, 3 * c));
                jobs.push((ap, layer(attprojw, l, nl), c, c));
                jobs.push((f, layer(fcw, l, nl), c, 4 * c));
                jobs.push((fp, layer(fcprojw, l, nl), 4 * c, c));
            }
            jobs.push((wte_t, wte, c, v));
            jobs.into_par_iter().for_each(|(dst, w, ic, oc)| transpose(dst, w, ic, oc));
        }
        let weights_t = &self.weights_t[..];
        let acts = self.acts.as_mut().unwrap();
        acts.tokens.copy_from_slice(tokens);
        acts.mask.copy_from_slice(mask);
        let mut head = HeadOut {
            token_logps: vec![F::ZERO; b * t],
            seq_logps: vec![F::ZERO; b],
            topk_entropy: vec![F::ZERO; b],
            topk_mass: vec![F::ZERO; b],
        };
        let rows = BATCH_ROWS_PER_TASK;
        let blocks = acts.row_blocks(nl, rows);
        blocks
            .into_par_iter()
            .zip(head.token_logps.par_chunks_mut(rows * t))
            .zip(head.seq_logps.par_chunks_mut(rows).zip(
                head.topk_entropy.par_chunks_mut(rows).zip(head.topk_mass.par_chunks_mut(rows)),
            ))
            .for_each(|((mut blk, token_logps), (seq, (ent, mass)))| {
                let wt = |l: usize| {
                    let lt = &weights_t[l * per_layer_t..(l + 1) * per_layer_t];
                    let (q, rest) = lt.split_at(3 * c * c);
                    let (ap, rest) = rest.split_at(c * c);
                    let (f, fp) = rest.split_at(4 * c * c);
                    (q, ap, f, fp)
                };
                encoder_forward(blk.encoded, blk.tokens, wte, wpe, t, c);
                for l in 0..nl {
                    let (qkvw_t, attprojw_t, fcw_t, fcprojw_t) = wt(l);
                    let (done, _) = blk.residual3.split_at_mut(l);
                    let residual: &[F] = if l == 0 { blk.encoded } else { done[l - 1] };
                    layernorm_forward(
                        blk.ln1[l],
                        blk.ln1_mean[l],
                        blk.ln1_rstd[l],
                        residual,
                        layer(ln1w, l, nl),
                        layer(ln1b, l, nl),
                        c,
                    );
                    matmul_forward_t(
                        blk.qkv[l],
                        blk.ln1[l],
                        qkvw_t,
                        Some(layer(qkvb, l, nl)),
                        c,
                        3 * c,
                    );
                    attention_forward(
                        blk.atty[l],
                        blk.att[l],
                        blk.qkv[l],
                        blk.attn_scratch,
                        t,
                        c,
                        nh,
                    );
                    matmul_forward_t(
                        blk.attproj[l],
                        blk.atty[l],
                        attprojw_t,
                        Some(layer(attprojb, l, nl)),
                        c,
                        c,
                    );
                    residual_forward(blk.residual2[l], residual, blk.attproj[l]);
                    layernorm_forward(
                        blk.ln2[l],
                        blk.ln2_mean[l],
                        blk.ln2_rstd[l],
                        blk.residual2[l],
                        layer(ln2w, l, nl),
                        layer(ln2b, l, nl),
                        c,
                    );
                    matmul_forward_t(
                        blk.fch[l],
                        blk.ln2[l],
                        fcw_t,
                        Some(layer(fcb, l, nl)),
                        c,
                        4 * c,
                    );
                    gelu_forward(blk.fch_gelu[l], blk.fch[l]);
                    matmul_forward_t(
                        blk.fcproj[l],
                        blk.fch_gelu[l],
                        fcprojw_t,
                        Some(layer(fcprojb, l, nl)),
                        4 * c,
                        c,
                    );
                    residual_forward(blk.residual3[l], blk.residual2[l], blk.fcproj[l]);
                }
                layernorm_forward(
                    blk.lnf,
                    blk.lnf_mean,
                    blk.lnf_rstd,
                    blk.residual3[nl - 1],
                    lnfw,
                    lnfb,
                    c,
                );
                matmul_forward_t(blk.logits, blk.lnf, &weights_t[nl * per_layer_t..], None, c, v); // tied head
                logprob_forward_into(
                    blk.lse,
                    blk.logits,
                    blk.tokens,
                    blk.mask,
                    t,
                    v,
                    token_logps,
                    seq,
                    ent,
                    mass,
                );
            });
        self.forward_done = true;
        head
    }

    /// (B, T, V) logits of the last forward.
    pub fn logits(&self) -> &[F] {
        self.acts.as_ref().map_or(&[], |a| &a.logits)
    }

    /// (B, T, C) final-LayerNorm hidden states of the last forward.
    pub fn hidden_states(&self) -> &[F] {
        self.acts.as_ref().map_or(&[], |a| &a.lnf)
    }

    /// Back-propagate d(loss)/d(seq_logp) (B) through the last forward into `grads`
    /// (overwritten). Panics without a forward; the engine checks first.
    ///
    /// Two parallel passes: the input gradients, row-local like the forward, over blocks of
    /// batch rows (keeping every output gradient a parameter needs), then the parameter
    /// gradients, over blocks of output channels, each summing its rows in order.
    pub fn backward(&mut self, d_seq: &[F]) {
        let cfg = self.cfg;
        let (c, nl, nh, v) = (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.vocab);
        let acts =
            self.acts.as_mut().filter(|_| self.forward_done).expect("backward needs a forward");
        let t = acts.t;
        let [wte, _, ln1w, _, qkvw, _, attprojw, _, ln2w, _, fcw, _, fcprojw, _, lnfw, _] =
            split_params(&self.params, &cfg);
        let rows = BATCH_ROWS_PER_TASK;
        acts.row_blocks(nl, rows).into_par_iter().zip(d_seq.par_chunks(rows)).for_each(
            |(mut blk, d_seq)| {
                let n = rows * t;
                logprob_backward(
                    blk.dlogits,
                    blk.logits,
                    blk.lse,
                    blk.tokens,
                    blk.mask,
                    d_seq,
                    t,
                    v,
                ); // (B, T, V)
                gemm(blk.dlnf, c, blk.dlogits, v, 1, wte, c, n, c, v, false); // dlnf = dlogits · wte
                let dres = &mut blk.dres3[nl - 1];
                dres.fill(F::ZERO);
                layernorm_backward_dinp(
                    dres,
                    blk.dlnf,
                    blk.residual3[nl - 1],
                    lnfw,
                    blk.lnf_mean,
                    blk.lnf_rstd,
                    c,
                );
                for l in (0..nl).rev() {
                    // MLP branch: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
                    gemm(
                        blk.dfch_gelu,
                        4 * c,
                        blk.dres3[l],
                        c,
                        1,
                        layer(fcprojw, l, nl),
                        4 * c,
                        n,
                        4 * c,
                        c,
                        false,
                    );
                    gelu_backward(blk.dfch[l], blk.fch[l], blk.dfch_gelu);
                    gemm(
                        blk.dln2[l],
                        c,
                        blk.dfch[l],
                        4 * c,
                        1,
                        layer(fcw, l, nl),
                        c,
                        n,
                        c,
                        4 * c,
                        false,
                    );
                    blk.dres2[l].copy_from_slice(blk.dres3[l]);
                    layernorm_backward_dinp(
                        blk.dres2[l],
                        blk.dln2[l],
                        blk.residual2[l],
                        layer(ln2w, l, nl),
                        blk.ln2_mean[l],
                        blk.ln2_rstd[l],
                        c,
                    );
                    // attention branch: residual2 = residual + attproj(attention(qkv(ln1(residual))))
                    gemm(
                        blk.datty,
                        c,
                        blk.dres2[l],
                        c,
                        1,
                        layer(attprojw, l, nl),
                        c,
                        n,
                        c,
                        c,
                        false,
                    );
                    attention_backward(
                        blk.dqkv[l],
                        blk.datty,
                        blk.qkv[l],
                        blk.att[l],
                        blk.attn_scratch,
                        t,
                        c,
                        nh,
                    );
                    gemm(
                        blk.dln1[l],
                        c,
                        blk.dqkv[l],
                        3 * c,
                        1,
                        layer(qkvw, l, nl),
                        c,
                        n,
                        c,
                        3 * c,
                        false,
                    );
                    let below = &mut blk.dres3[..l];
                    let dres_in: &mut [F] =
                        if l == 0 { &mut *blk.dres0 } else { &mut *below[l - 1] };
                    dres_in.copy_from_slice(blk.dres2[l]);
                    let residual: &[F] = if l == 0 { blk.encoded } else { blk.residual3[l - 1] };
                    layernorm_backward_dinp(
                        dres_in,
                        blk.dln1[l],
                        residual,
                        layer(ln1w, l, nl),
                        blk.ln1_mean[l],
                        blk.ln1_rstd[l],
                        c,
                    );
                }
            },
        );

        // parameter gradients
        self.grads.fill(F::ZERO);
        let frozen = self.frozen;
        let acts = self.acts.as_ref().unwrap();
        let [dwte, dwpe, dln1w, dln1b, dqkvw, dqkvb, dattprojw, dattprojb, dln2w, dln2b, dfcw, dfcb, dfcprojw, dfcprojb, dlnfw, dlnfb] =
            split_params_mut(&mut self.grads, &cfg);
        enum Job<'a, F> {
            Mat {
                dw: &'a mut [F],
                db: Option<&'a mut [F]>,
                o0: usize,
                dout: &'a [F],
                inp: &'a [F],
                ic: usize,
                oc: usize,
            },
            Ln {
                dw: &'a mut [F],
                db: &'a mut [F],
                dout: &'a [F],
                inp: &'a [F],
                mean: &'a [F],
                rstd: &'a [F],
            },
            Wte {
                dw: &'a mut [F],
                o0: usize,
            },
            Wpe {
                dw: &'a mut [F],
            },
        }
        let mut jobs: Vec<Job<F>> = Vec::new();
        // a job runs unless every tensor it writes is frozen
        let live = |tensors: &[usize]| tensors.iter().any(|&i| !frozen[i]);
        fn mat_jobs<'a, F>(
            jobs: &mut Vec<Job<'a, F>>,
            dw: &'a mut [F],
            db: &'a mut [F],
            dout: &'a [F],
            inp: &'a [F],
            ic: usize,
            oc: usize,
        ) {
            for (j, (dw, db)) in
                dw.chunks_mut(OUT_PER_TASK * ic).zip(db.chunks_mut(OUT_PER_TASK)).enumerate()
            {
                jobs.push(Job::Mat { dw, db: Some(db), o0: j * OUT_PER_TASK, dout, inp, ic, oc });
            }
        }
        fn per<F>(x: &mut [F], nl: usize) -> std::vec::IntoIter<&mut [F]> {
            let n = x.len() / nl;
            x.chunks_mut(n).collect::<Vec<_>>().into_iter()
        }
        let (mut dln1w, mut dln1b, mut dqkvw, mut dqkvb, mut dattprojw, mut dattprojb) = (
            per(dln1w, nl),
            per(dln1b, nl),
            per(dqkvw, nl),
            per(dqkvb, nl),
            per(dattprojw, nl),
            per(dattprojb, nl),
        );
        let (mut dln2w, mut dln2b, mut dfcw, mut dfcb, mut dfcprojw, mut dfcprojb) = (
            per(dln2w, nl),
            per(dln2b, nl),
            per(dfcw, nl),
            per(dfcb, nl),
            per(dfcprojw, nl),
            per(dfcprojb, nl),
        );
        if live(&[0]) {
            for (j, dw) in dwte.chunks_mut(OUT_PER_TASK * c).enumerate() {
                jobs.push(Job::Wte { dw, o0: j * OUT_PER_TASK });
            }
        }
        if live(&[1]) {
            jobs.push(Job::Wpe { dw: dwpe });
        }
        if live(&[14, 15]) {
            jobs.push(Job::Ln {
                dw: dlnfw,
                db: dlnfb,
                dout: &acts.dlnf,
                inp: layer(&acts.residual3, nl - 1, nl),
                mean: &acts.lnf_mean,
                rstd: &acts.lnf_rstd,
            });
        }
        for l in 0..nl {
            let (dw, db) = (dfcprojw.next().unwrap(), dfcprojb.next().unwrap());
            if live(&[12, 13]) {
                let (dout, inp) = (layer(&acts.dres3, l, nl), layer(&acts.fch_gelu, l, nl));
                mat_jobs(&mut jobs, dw, db, dout, inp, 4 * c, c);
            }
            let (dw, db) = (dfcw.next().unwrap(), dfcb.next().unwrap());
            if live(&[10, 11]) {
                let (dout, inp) = (layer(&acts.dfch, l, nl), layer(&acts.ln2, l, nl));
                mat_jobs(&mut jobs, dw, db, dout, inp, c, 4 * c);
            }
            let (dw, db) = (dln2w.next().unwrap(), dln2b.next().unwrap());
            if live(&[8, 9]) {
                jobs.push(Job::Ln {
                    dw,
                    db,
                    dout: layer(&acts.dln2, l, nl),
                    inp: layer(&acts.residual2, l, nl),
                    mean: layer(&acts.ln2_mean, l, nl),
                    rstd: layer(&acts.ln2_rstd, l, nl),
                });
            }
            let (dw, db) = (dattprojw.next().unwrap(), dattprojb.next().unwrap());
            if live(&[6, 7]) {
                let (dout, inp) = (layer(&acts.dres2, l, nl), layer(&acts.atty, l, nl));
                mat_jobs(&mut jobs, dw, db, dout, inp, c, c);
            }
            let (dw, db) = (dqkvw.next().unwrap(), dqkvb.next().unwrap());
            if live(&[4, 5]) {
                let (dout, inp) = (layer(&acts.dqkv, l, nl), layer(&acts.ln1, l, nl));
                mat_jobs(&mut jobs, dw, db, dout, inp, c, 3 * c);
            }
            let (dw, db) = (dln1w.next().unwrap(), dln1b.next().unwrap());
            if live(&[2, 3]) {
                let residual =
                    if l == 0 { &acts.encoded[..] } else { layer(&acts.residual3, l - 1, nl) };
                jobs.push(Job::Ln {
                    dw,
                    db,
                    dout: layer(&acts.dln1, l, nl),
                    inp: residual,
                    mean: layer(&acts.ln1_mean, l, nl),
                    rstd: layer(&acts.ln1_rstd, l, nl),
                });
            }
        }
        jobs.into_par_iter().for_each(|job| match job {
            Job::Mat { dw, db, o0, dout, inp, ic, oc } => {
                matmul_backward_params(dw, db, o0, dout, inp, ic, oc)
            }
            Job::Ln { dw, db, dout, inp, mean, rstd } => {
                layernorm_backward_params(dw, db, dout, inp, mean, rstd, c)
            }
            Job::Wte { dw, o0 } => {
                // the tied head's gradient, then the encoder's rows, in token order
                matmul_backward_params(dw, None, o0, &acts.dlogits, &acts.lnf, c, v);
                let rows = dw.len() / c;
                for (n, &tok) in acts.tokens.iter().enumerate() {
                    let tok = tok as usize;
                    if tok >= o0 && tok < o0 + rows {
                        let dst = &mut dw[(tok - o0) * c..(tok - o0 + 1) * c];
                        let src = &acts.dres0[n * c..(n + 1) * c];
                        for i in 0..c {
                            dst[i] += src[i];
                        }
                    }
                }
            }
            Job::Wpe { dw } => {
                for (n, src) in acts.dres0.chunks(c).enumerate() {
                    let dst = &mut dw[(n % t) * c..(n % t + 1) * c];
                    for i in 0..c {
                        dst[i] += src[i];
                    }
                }
            }
        });
        // a frozen tensor whose job ran for its live partner (a LayerNorm's or a layer's
        // weight and bias: tensors 2k and 2k + 1 from 2 on) reads zero all the same
        let grads = split_params_mut(&mut self.grads, &cfg);
        for (i, grad) in grads.into_iter().enumerate().skip(2) {
            if frozen[i] && !frozen[i ^ 1] {
                grad.fill(F::ZERO);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every layer's backward against central finite differences of its forward, in f64,
    //! on shapes that exercise both the kernel's full tiles and its ragged edges.
    use super::*;
    use crate::central_differences::check;
    use lab_core::rng::Rng;

    #[test]
    fn prefiltered_topk_equals_a_full_sort() {
        let mut rng = Rng::new(7);
        for len in [32usize, 40, 96, 100, 257] {
            for trial in 0..200 {
                // coarse values on some trials so ties occur
                let row: Vec<f32> = (0..len)
                    .map(|_| {
                        let x = randn(&mut rng, 1, 2.0)[0] as f32;
                        if trial % 2 == 0 {
                            (x * 2.0).round()
                        } else {
                            x
                        }
                    })
                    .collect();
                let mut sorted = row.clone();
                sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
                let want = entropy_mass(&sorted[..TOPK], 3.0f32);
                let got = topk_entropy_mass(&row, 3.0f32);
                assert_eq!(
                    (want.0.to_bits(), want.1.to_bits()),
                    (got.0.to_bits(), got.1.to_bits()),
                    "len {len} trial {trial}"
                );
            }
        }
    }

    fn randn(rng: &mut Rng, len: usize, std: f64) -> Vec<f64> {
        (0..len).map(|_| std * rng.normal() as f64).collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn gemm_matches_naive_product_on_ragged_and_tiled_shapes() {
        let mut rng = Rng::new(1);
        for (rows, cols, depth) in [(4, 16, 3), (9, 37, 5), (13, 16, 1), (3, 5, 7)] {
            let a = randn(&mut rng, rows * depth, 1.0);
            let b = randn(&mut rng, depth * cols, 1.0);
            let c0 = randn(&mut rng, rows * cols, 1.0);
            let mut c = c0.clone();
            gemm(&mut c, cols, &a, depth, 1, &b, cols, rows, cols, depth, true);
            // the same through a transposed view of a
            let a_t: Vec<f64> =
                (0..depth * rows).map(|i| a[(i % rows) * depth + i / rows]).collect();
            let mut c_t = vec![0.0; rows * cols];
            gemm(&mut c_t, cols, &a_t, 1, rows, &b, cols, rows, cols, depth, false);
            for r in 0..rows {
                for s in 0..cols {
                    let want: f64 = (0..depth).map(|k| a[r * depth + k] * b[k * cols + s]).sum();
                    assert!((c[r * cols + s] - c0[r * cols + s] - want).abs() < 1e-12);
                    assert!((c_t[r * cols + s] - want).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn encoder_backward_matches_finite_differences() {
        let (b, t, c, v) = (2, 3, 4, 5);
        let mut rng = Rng::new(2);
        let tokens = [1u32, 4, 1, 0, 1, 3];
        let mut wte = randn(&mut rng, v * c, 1.0);
        let mut wpe = randn(&mut rng, t * c, 1.0);
        let probe = randn(&mut rng, b * t * c, 1.0);
        let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
        encoder_backward(&mut dwte, &mut dwpe, &probe, &tokens, t, c);
        let mut out = vec![0.0; b * t * c];
        let wpe0 = wpe.clone();
        check("encoder dwte", &mut wte, &dwte, &mut |w| {
            encoder_forward(&mut out, &tokens, w, &wpe0, t, c);
            dot(&out, &probe)
        });
        let wte0 = wte.clone();
        check("encoder dwpe", &mut wpe, &dwpe, &mut |w| {
            encoder_forward(&mut out, &tokens, &wte0, w, t, c);
            dot(&out, &probe)
        });
    }

    #[test]
    fn layernorm_backward_matches_finite_differences() {
        let (n, c) = (5, 7);
        let mut rng = Rng::new(3);
        let mut inp = randn(&mut rng, n * c, 1.0);
        let mut weight = randn(&mut rng, c, 1.0);
        let mut bias = randn(&mut rng, c, 1.0);
        let probe = randn(&mut rng, n * c, 1.0);
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &weight, &bias, c);
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        layernorm_backward(&mut dinp, &mut dw, &mut db, &probe, &inp, &weight, &mean, &rstd, c);
        let (w0, b0, x0) = (weight.clone(), bias.clone(), inp.clone());
        check("layernorm dinp", &mut inp, &dinp, &mut |x| {
            layernorm_forward(&mut out, &mut mean, &mut rstd, x, &w0, &b0, c);
            dot(&out, &probe)
        });
        check("layernorm dweight", &mut weight, &dw, &mut |w| {
            layernorm_forward(&mut out, &mut mean, &mut rstd, &x0, w, &b0, c);
            dot(&out, &probe)
        });
        check("layernorm dbias", &mut bias, &db, &mut |bb| {
            layernorm_forward(&mut out, &mut mean, &mut rstd, &x0, &w0, bb, c);
            dot(&out, &probe)
        });
    }

    #[test]
    fn matmul_backward_matches_finite_differences() {
        // (5, 7, 19): ragged everywhere; (8, 16, 32): full register tiles; (40, 3, 17):
        // more rows than one rayon task and more outputs than one dweight task.
        for (n, ic, oc) in [(5, 7, 19), (8, 16, 32), (40, 3, 17)] {
            let mut rng = Rng::new(4 + n as u64);
            let mut inp = randn(&mut rng, n * ic, 1.0);
            let mut weight = randn(&mut rng, oc * ic, 1.0);
            let mut bias = randn(&mut rng, oc, 1.0);
            let probe = randn(&mut rng, n * oc, 1.0);
            let (mut out, mut wt) = (vec![0.0; n * oc], vec![0.0; ic * oc]);
            let (mut dinp, mut dw, mut db) = (vec![0.0; n * ic], vec![0.0; oc * ic], vec![0.0; oc]);
            matmul_backward(&mut dinp, &mut dw, Some(&mut db), &probe, &inp, &weight, ic, oc);
            let (w0, b0, x0) = (weight.clone(), bias.clone(), inp.clone());
            check("matmul dinp", &mut inp, &dinp, &mut |x| {
                matmul_forward(&mut out, x, &w0, Some(&b0), &mut wt, ic, oc);
                dot(&out, &probe)
            });
            check("matmul dweight", &mut weight, &dw, &mut |w| {
                matmul_forward(&mut out, &x0, w, Some(&b0), &mut wt, ic, oc);
                dot(&out, &probe)
            });
            check("matmul dbias", &mut bias, &db, &mut |bb| {
                matmul_forward(&mut out, &x0, &w0, Some(bb), &mut wt, ic, oc);
                dot(&out, &probe)
            });
        }
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        // T = 20 crosses a causal block boundary (16); hs = 3 is ragged for the kernel.
        for (b, t, c, nh) in [(2, 5, 8, 2), (1, 20, 6, 2)] {
            let hs = c / nh;
            let mut rng = Rng::new(5 + t as u64);
            let mut qkv = randn(&mut rng, b * t * 3 * c, 1.0);
            let probe = randn(&mut rng, b * t * c, 1.0);
            let (mut out, mut att) = (vec![0.0; b * t * c], vec![0.0; b * nh * t * t]);
            let mut scratch = vec![0.0; b * attention_scratch_len(t, hs)];
            attention_forward(&mut out, &mut att, &qkv, &mut scratch, t, c, nh);
            // causal: every att row sums to 1 and is zero above the diagonal
            for (row, w) in att.chunks(t).enumerate() {
                let tq = row % t;
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                assert!(w[tq + 1..].iter().all(|&x| x == 0.0));
            }
            let mut dqkv = vec![0.0; b * t * 3 * c];
            attention_backward(&mut dqkv, &probe, &qkv, &att, &mut scratch, t, c, nh);
            check("attention dqkv", &mut qkv, &dqkv, &mut |x| {
                attention_forward(&mut out, &mut att, x, &mut scratch, t, c, nh);
                dot(&out, &probe)
            });
        }
    }

    #[test]
    fn gelu_backward_matches_finite_differences() {
        let mut rng = Rng::new(6);
        let mut inp = randn(&mut rng, 50, 2.0);
        let probe = randn(&mut rng, 50, 1.0);
        let mut dinp = vec![0.0; 50];
        gelu_backward(&mut dinp, &inp, &probe);
        let mut out = vec![0.0; 50];
        check("gelu dinp", &mut inp, &dinp, &mut |x| {
            gelu_forward(&mut out, x);
            dot(&out, &probe)
        });
        // gelu_new at a known point: 0.5·1·(1 + tanh(√(2/π)·1.044715)) = 0.8411919906
        gelu_forward(&mut out[..1], &[1.0]);
        assert!((out[0] - 0.841_191_990_6).abs() < 1e-9, "{}", out[0]);
    }

    #[test]
    fn residual_forward_adds() {
        let mut out = [0.0; 3];
        residual_forward(&mut out, &[1.0, 2.0, 3.0], &[0.5, -2.0, 4.0]);
        assert_eq!(out, [1.5, 0.0, 7.0]);
    }

    #[test]
    fn logprob_backward_matches_finite_differences() {
        let (b, t, v) = (3, 6, 7);
        let mut rng = Rng::new(7);
        let mut logits = randn(&mut rng, b * t * v, 2.0);
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
        // row 0 scores 2.., row 1 only its last token, row 2 nothing
        let mut mask = vec![0.0; b * t];
        mask[2..t].fill(1.0);
        mask[2 * t - 1] = 1.0;
        let d_seq = [0.7, -1.3, 2.0];
        let mut lse = vec![0.0; b * t];
        let head = logprob_forward(&mut lse, &logits, &tokens, &mask, t, v);
        assert_eq!(head.seq_logps[2], 0.0);
        assert_eq!((head.topk_entropy[2], head.topk_mass[2]), (0.0, 0.0));
        // token_logps agree with an explicit log-softmax
        for bt in [2usize, 5, 11] {
            let row = &logits[(bt - 1) * v..bt * v];
            let lse_ref = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            assert!((head.token_logps[bt] - (row[tokens[bt] as usize] - lse_ref)).abs() < 1e-12);
        }
        let mut dlogits = vec![1.0; b * t * v];
        logprob_backward(&mut dlogits, &logits, &lse, &tokens, &mask, &d_seq, t, v);
        check("logprob dlogits", &mut logits, &dlogits, &mut |x| {
            let mut lse = vec![0.0; b * t];
            dot(&logprob_forward(&mut lse, x, &tokens, &mask, t, v).seq_logps, &d_seq)
        });
    }

    #[test]
    fn topk_of_uniform_over_96_is_ten_96ths_with_entropy_in_bits() {
        let logits = vec![0.25f64; 96];
        let (entropy, mass) = topk_entropy_mass(&logits, 0.25 + (96f64).ln());
        assert!((mass - 10.0 / 96.0).abs() < 1e-12, "{mass}");
        // −Σ_{10} (1/96) log₂(1/96) = (10/96) log₂ 96 ≈ 0.6864 bits
        assert!((entropy - 10.0 / 96.0 * 96f64.log2()).abs() < 1e-12, "{entropy}");
    }

    #[test]
    fn topk_picks_the_ten_largest_probabilities() {
        let mut rng = Rng::new(8);
        for _ in 0..20 {
            let logits = randn(&mut rng, 40, 3.0);
            let lse = logits.iter().map(|x| x.exp()).sum::<f64>().ln();
            let mut probs: Vec<f64> = logits.iter().map(|x| (x - lse).exp()).collect();
            probs.sort_by(|a, b| b.total_cmp(a));
            let want_mass: f64 = probs[..10].iter().sum();
            let want_entropy: f64 = probs[..10].iter().map(|p| -p * p.log2()).sum();
            let (entropy, mass) = topk_entropy_mass(&logits, lse);
            assert!((mass - want_mass).abs() < 1e-12 && (entropy - want_entropy).abs() < 1e-12);
        }
        // a one-hot prediction has mass 1 and entropy 0
        let mut peaked = vec![-1e3f64; 96];
        peaked[17] = 0.0;
        let (entropy, mass) = topk_entropy_mass(&peaked, 0.0);
        assert!((mass - 1.0).abs() < 1e-12 && entropy.abs() < 1e-12);
    }
}
