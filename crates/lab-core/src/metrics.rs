//! The instruments: what a training run reports besides its loss. One metric, one function,
//! one citation; plain `f64` in, `f64` out, so the CPU and GPU sessions, the CLI and the page
//! all compute them the same way. Definitions are documented in `docs/losses-and-metrics.md`.
//!
//! Notation, per pair: `lw, ll` policy log-probs of the chosen / rejected completion (summed
//! over completion tokens), `rw, rl` the same under the frozen reference, `ρ = l − r`.
//! Slices are per-pair batches and must have equal lengths (a mismatch is a caller bug and
//! panics with the lengths named).

use serde_json::json;

/// `log σ(z)`, stable for any finite `z`.
fn log_sigmoid(z: f64) -> f64 {
    // log σ(z) = −softplus(−z) = min(z, 0) − log(1 + e^{−|z|})
    z.min(0.0) - (-z.abs()).exp().ln_1p()
}

fn check_lengths(what: &str, lens: &[usize]) {
    assert!(lens.windows(2).all(|w| w[0] == w[1]), "{what}: slices of different lengths {lens:?}");
}

/// Arithmetic mean, 0 for an empty slice.
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Ranks of `xs` from 1 (smallest), tied values sharing the mean of their ranks.
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut out = vec![0.0; xs.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && xs[order[end]] == xs[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        order[start..end].iter().for_each(|&i| out[i] = rank);
        start = end;
    }
    out
}

/// Spearman's rank correlation ρ: Pearson's correlation of the ranks (ties averaged), in
/// [−1, 1]; NaN when either side has no spread.
pub fn spearman(xs: &[f64], ys: &[f64]) -> f64 {
    check_lengths("spearman", &[xs.len(), ys.len()]);
    let (rx, ry) = (ranks(xs), ranks(ys));
    let (mx, my) = (mean(&rx), mean(&ry));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in rx.iter().zip(&ry) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// The batch metrics TRL's `DPOTrainer` logs, under the same names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrlMetrics {
    /// mean β·ρw
    pub rewards_chosen: f64,
    /// mean β·ρl
    pub rewards_rejected: f64,
    /// mean β·(ρw − ρl)
    pub rewards_margins: f64,
    /// mean `1[βρw > βρl]`: reward accuracy, NOT ranking accuracy
    pub rewards_accuracies: f64,
    /// mean lw
    pub logps_chosen: f64,
    /// mean ll
    pub logps_rejected: f64,
}

impl TrlMetrics {
    /// Keyed as TRL logs them (`rewards/chosen`, ...), for side-by-side comparison.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "rewards/chosen": self.rewards_chosen,
            "rewards/rejected": self.rewards_rejected,
            "rewards/margins": self.rewards_margins,
            "rewards/accuracies": self.rewards_accuracies,
            "logps/chosen": self.logps_chosen,
            "logps/rejected": self.logps_rejected,
        })
    }
}

/// TRL's reward metrics (`trl.DPOTrainer`, implicit reward `β·(log πθ − log πref)`):
/// batch means of βρw, βρl, βΔ, of `1[βρw > βρl]` (strict, as TRL), and of lw, ll.
pub fn trl_metrics(
    beta: f64,
    policy_chosen: &[f64],
    policy_rejected: &[f64],
    reference_chosen: &[f64],
    reference_rejected: &[f64],
) -> TrlMetrics {
    check_lengths(
        "trl_metrics",
        &[
            policy_chosen.len(),
            policy_rejected.len(),
            reference_chosen.len(),
            reference_rejected.len(),
        ],
    );
    let reward_chosen: Vec<f64> =
        policy_chosen.iter().zip(reference_chosen).map(|(l, r)| beta * (l - r)).collect();
    let reward_rejected: Vec<f64> =
        policy_rejected.iter().zip(reference_rejected).map(|(l, r)| beta * (l - r)).collect();
    let margins: Vec<f64> =
        reward_chosen.iter().zip(&reward_rejected).map(|(w, l)| w - l).collect();
    let correct: Vec<f64> = reward_chosen
        .iter()
        .zip(&reward_rejected)
        .map(|(w, l)| if w > l { 1.0 } else { 0.0 })
        .collect();
    TrlMetrics {
        rewards_chosen: mean(&reward_chosen),
        rewards_rejected: mean(&reward_rejected),
        rewards_margins: mean(&margins),
        rewards_accuracies: mean(&correct),
        logps_chosen: mean(policy_chosen),
        logps_rejected: mean(policy_rejected),
    }
}

/// Ranking accuracy R (Chen et al. 2024, "Preference Learning Algorithms Do Not Learn
/// Preference Rankings", def. 2.3): the fraction of pairs with `πθ(yw|x) ≥ πθ(yl|x)`, i.e.
/// `lw ≥ ll`. Unlike reward accuracy it ignores the reference model. 0 for an empty batch.
pub fn ranking_accuracy(policy_chosen: &[f64], policy_rejected: &[f64]) -> f64 {
    check_lengths("ranking_accuracy", &[policy_chosen.len(), policy_rejected.len()]);
    let hits: Vec<f64> = policy_chosen
        .iter()
        .zip(policy_rejected)
        .map(|(w, l)| if w >= l { 1.0 } else { 0.0 })
        .collect();
    mean(&hits)
}

/// Length-normalised ranking accuracy R̃ (Chen et al. 2024, def. 2.3): the fraction of pairs
/// with `lw/|yw| ≥ ll/|yl|`, lengths in scored tokens.
pub fn ranking_accuracy_normalized(
    policy_chosen: &[f64],
    policy_rejected: &[f64],
    chosen_lengths: &[f64],
    rejected_lengths: &[f64],
) -> f64 {
    check_lengths(
        "ranking_accuracy_normalized",
        &[policy_chosen.len(), policy_rejected.len(), chosen_lengths.len(), rejected_lengths.len()],
    );
    let hits: Vec<f64> = (0..policy_chosen.len())
        .map(|i| {
            if policy_chosen[i] / chosen_lengths[i] >= policy_rejected[i] / rejected_lengths[i] {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    mean(&hits)
}

/// Idealized ranking accuracy R* (Chen et al. 2024, cor. 3.3): the ranking accuracy of the
/// exact optimum of the DPO objective, the fraction of pairs with
/// `(πref(yw)/πref(yl)) · (α/(1−α))^{1/β} > 1`, α the fraction of raters preferring yw
/// (α = 1 is taken as 1 − 1e-3, as the paper does). Evaluated in log space,
/// `(rw − rl) + ln(α/(1−α))/β > 0`, so no ratio overflows.
pub fn idealized_ranking_accuracy(
    reference_chosen: &[f64],
    reference_rejected: &[f64],
    alpha: &[f64],
    beta: f64,
) -> f64 {
    check_lengths(
        "idealized_ranking_accuracy",
        &[reference_chosen.len(), reference_rejected.len(), alpha.len()],
    );
    let hits: Vec<f64> = (0..reference_chosen.len())
        .map(|i| {
            let a = if alpha[i] >= 1.0 { 1.0 - 1e-3 } else { alpha[i] };
            let log_odds = a.ln() - (-a).ln_1p(); // ln(α/(1−α))
            if (reference_chosen[i] - reference_rejected[i]) + log_odds / beta > 0.0 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    mean(&hits)
}

/// Alignment gap R* − R (Chen et al. 2024): how far the trained model's ranking accuracy is
/// from what the DPO optimum would reach.
pub fn alignment_gap(idealized: f64, ranking: f64) -> f64 {
    idealized - ranking
}

/// Flip threshold (Chen et al. 2024, thm. 4.1): with `c = rl − rw = log πref(yl)/πref(yw)`,
/// the pair is ranked right (`lw ≥ ll`) iff its DPO loss is at most `−log σ(β·c)`. Since
/// `βΔ = β(lw − ll) + βc`, this holds for any β > 0. Computed as a stable softplus, finite for
/// any finite input; increasing in `reference_chosen`, `ln 2` when the reference is indifferent.
pub fn flip_threshold(reference_chosen: f64, reference_rejected: f64, beta: f64) -> f64 {
    let c = reference_rejected - reference_chosen;
    -log_sigmoid(beta * c)
}

/// CHES, the centered hidden embedding similarity, raw and length-normalised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ches {
    /// `⟨S⁺, S⁻⟩ − ‖S⁺‖²`
    pub ches: f64,
    /// `⟨S⁺, S⁻⟩/(|y⁺||y⁻|) − ‖S⁺‖²/|y⁺|²`
    pub ches_normalized: f64,
}

/// Sum of the hidden states of one row over the CHES positions, and how many were summed.
fn ches_sum(
    hidden: &[f32],
    first_scored: usize,
    len: usize,
    d_model: usize,
    side: &str,
) -> (Vec<f64>, usize) {
    assert!(
        first_scored >= 1 && first_scored < len,
        "ches ({side}): first scored position {first_scored} must be in 1..{len} (the row needs a prompt start and a completion)"
    );
    assert!(
        hidden.len() >= len * d_model,
        "ches ({side}): {} hidden values cannot hold {len} positions of {d_model}",
        hidden.len()
    );
    let mut sum = vec![0.0f64; d_model];
    // positions first_scored−1 (last prompt token) ..= len−2 (second-to-last completion token)
    for t in first_scored - 1..len - 1 {
        for (acc, &h) in sum.iter_mut().zip(&hidden[t * d_model..(t + 1) * d_model]) {
            *acc += h as f64;
        }
    }
    (sum, len - first_scored)
}

/// CHES score of a pair (Razin et al. 2024, "Unintentional Unalignment: Likelihood
/// Displacement in Direct Preference Optimization"; `ches/ches.py` in
/// princeton-nlp/unintentional-unalignment): `⟨S⁺, S⁻⟩ − ‖S⁺‖²` where `S` sums the last-layer
/// hidden states (after the final LayerNorm) of one row at the positions whose output
/// predicts a completion token: from the last prompt token to the second-to-last completion
/// token. In our rows `[EOT] + prompt + completion + [EOT]` that is positions
/// `first_scored − 1 ..= len − 2`, `len − first_scored = |y|` of them (the completion's tokens
/// with the trailing EOT). The normalised form divides each sum by its `|y|`, as the reference
/// code does with `length_normalize=True`. High CHES flags pairs likely to cause likelihood
/// displacement.
///
/// `hidden_*`: (T, C) row-major hidden states of one sequence, `T ≥ len_*` (padding beyond
/// `len_*` is ignored), `C = d_model`; `len_*` the row's token count.
pub fn ches(
    hidden_chosen: &[f32],
    first_scored_chosen: usize,
    len_chosen: usize,
    hidden_rejected: &[f32],
    first_scored_rejected: usize,
    len_rejected: usize,
    d_model: usize,
) -> Ches {
    let (s_plus, n_plus) =
        ches_sum(hidden_chosen, first_scored_chosen, len_chosen, d_model, "chosen");
    let (s_minus, n_minus) =
        ches_sum(hidden_rejected, first_scored_rejected, len_rejected, d_model, "rejected");
    let dot: f64 = s_plus.iter().zip(&s_minus).map(|(a, b)| a * b).sum();
    let norm_sq: f64 = s_plus.iter().map(|a| a * a).sum();
    let (n_plus, n_minus) = (n_plus as f64, n_minus as f64);
    Ches {
        ches: dot - norm_sq,
        ches_normalized: dot / (n_plus * n_minus) - norm_sq / (n_plus * n_plus),
    }
}

/// How the policy log-probs of one pair moved since training started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Displacement {
    /// now − start of log πθ(yw|x)
    pub d_logp_chosen: f64,
    /// now − start of log πθ(yl|x)
    pub d_logp_rejected: f64,
    /// Likelihood displacement: log πθ(yw) fell below its start while the margin
    /// `log πθ(yw) − log πθ(yl)` grew.
    pub chosen_fell: bool,
}

/// Likelihood displacement of one pair (Razin et al. 2024): the preferred
/// response's log-prob falls even though the preference margin increases.
pub fn displacement(
    start_chosen: f64,
    now_chosen: f64,
    start_rejected: f64,
    now_rejected: f64,
) -> Displacement {
    let d_logp_chosen = now_chosen - start_chosen;
    let d_logp_rejected = now_rejected - start_rejected;
    let margin_grew = d_logp_chosen - d_logp_rejected > 0.0;
    Displacement { d_logp_chosen, d_logp_rejected, chosen_fell: d_logp_chosen < 0.0 && margin_grew }
}

/// One response of a candidate set and its log-prob change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CandidateGain {
    /// Index into the candidate set.
    pub index: usize,
    /// now − start of its log-prob.
    pub d_logp: f64,
}

/// Where the displaced probability mass went (Razin et al. 2024, e.g. "No" vs "Never" →
/// "Yes"): the `k` candidates whose log-prob rose most, largest gain first, ties by index.
pub fn top_gainers(start: &[f64], now: &[f64], k: usize) -> Vec<CandidateGain> {
    check_lengths("top_gainers", &[start.len(), now.len()]);
    let mut gains: Vec<CandidateGain> = start
        .iter()
        .zip(now)
        .enumerate()
        .map(|(index, (s, n))| CandidateGain { index, d_logp: n - s })
        .collect();
    gains.sort_by(|a, b| b.d_logp.total_cmp(&a.d_logp).then(a.index.cmp(&b.index)));
    gains.truncate(k);
    gains
}

/// `log Σ_v e^{x_v}` of one logit row, in f64.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    max + logits.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln()
}

/// KL(π‖πref) of one next-token distribution, summed over the whole vocabulary:
/// `Σ_v π(v)·(log π(v) − log πref(v))` with `π = softmax(policy)` and
/// `πref = softmax(reference)`, both log-softmaxes taken in f64 from the engines' f32
/// logits. Identical logits give exactly 0; a rounding below 0 is clamped to 0 (KL ≥ 0),
/// a NaN stays NaN. The per-position term of `eval/kl`.
pub fn kl_from_logits(policy: &[f32], reference: &[f32]) -> f64 {
    check_lengths("kl_from_logits", &[policy.len(), reference.len()]);
    let (lse_p, lse_r) = (log_sum_exp(policy), log_sum_exp(reference));
    let kl: f64 = policy
        .iter()
        .zip(reference)
        .map(|(&p, &r)| {
            let (log_p, log_r) = (f64::from(p) - lse_p, f64::from(r) - lse_r);
            log_p.exp() * (log_p - log_r)
        })
        .sum();
    if kl < 0.0 {
        0.0
    } else {
        kl
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn spearman_is_one_for_any_increasing_map_and_averages_ties() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(spearman(&xs, &[-9.0, 0.1, 0.2, 7.0, 1e9]), 1.0);
        assert_eq!(spearman(&xs, &[5.0, 4.0, 3.0, 2.0, 1.0]), -1.0);
        // one adjacent swap of five: 1 − 6·2/(5·24) = 0.9
        assert!((spearman(&xs, &[1.0, 3.0, 2.0, 4.0, 5.0]) - 0.9).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        assert!(spearman(&xs, &[1.0; 5]).is_nan());
    }
    use super::*;

    #[test]
    fn kl_from_logits_matches_a_hand_computed_value() {
        // π = (1/4, 3/4), πref = (1/2, 1/2):
        // KL(π‖πref) = ¼·ln(½) + ¾·ln(3/2) = ¾·ln 3 − ln 2 ≈ 0.130812
        let (policy, reference) = ([0.0, 3f32.ln()], [0.0f32, 0.0]);
        let want = 0.75 * 3f64.ln() - 2f64.ln();
        assert!((kl_from_logits(&policy, &reference) - want).abs() < 1e-7);
        // the other direction is another number: ½·ln(4/3) ≈ 0.143841
        assert!((kl_from_logits(&reference, &policy) - 0.5 * (4.0f64 / 3.0).ln()).abs() < 1e-7);
        // logits are defined up to a constant per row
        let shifted = [policy[0] + 5.0, policy[1] + 5.0];
        assert!((kl_from_logits(&shifted, &[-3.0, -3.0]) - want).abs() < 1e-6);
        assert_eq!(kl_from_logits(&[0.3, -1.2, 2.0], &[0.3, -1.2, 2.0]), 0.0);
        assert!(kl_from_logits(&[f32::NAN, 0.0], &[0.0, 0.0]).is_nan());
    }

    #[test]
    fn log_sigmoid_is_stable() {
        assert!((log_sigmoid(0.0) + std::f64::consts::LN_2).abs() < 1e-15);
        assert!((log_sigmoid(-1000.0) + 1000.0).abs() < 1e-12);
        assert!(log_sigmoid(1000.0).abs() < 1e-300);
        assert!((log_sigmoid(2.0) - (1.0 / (1.0 + (-2.0f64).exp())).ln()).abs() < 1e-15);
    }
}
