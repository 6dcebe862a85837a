//! The loss zoo: every preference loss alignlab trains with, as a closed set of named
//! variants ([`LossKind`]) over the same inputs (per-pair sequence log-probs of the policy
//! and the frozen reference), one pure function per variant, each citing its paper and
//! equation. Every function returns the per-pair losses, the scalar the optimizer minimises,
//! the rewards TRL logs, and the exact gradient of the scalar with respect to every input
//! log-prob, so an engine only has to back-propagate d(loss)/d(sequence log-prob).
//!
//! TRL exactness. The 15 names of [`LossKind::TRL_DPO`] follow Hugging Face TRL's
//! `DPOTrainer._compute_loss` (`trl/trainer/dpo_trainer.py`). We read it in TRL 1.16.0 (PyPI)
//! and in the GitHub snapshot at hand (main at f2cd577, `VERSION` 1.10.0.dev0); for standard
//! DPO (`f_divergence_type="reverse_kl"`) the loss branches agree between the two. We wrote our
//! own code from the reading. `crates/lab-core/tests/loss_golden.rs` checks losses, rewards and
//! gradients against numbers from TRL 1.16.0 itself (`tests/fixtures/trl_golden.py`) to 1e-9
//! relative. Each variant's doc comment says where TRL differs from the paper (the reference
//! is `docs/losses-and-metrics.md`); for these 15 names TRL wins. SimPO and CPO follow
//! `trl/experimental/cpo/cpo_trainer.py` (`CPOTrainer.cpo_loss`), ORPO
//! `trl/experimental/orpo/orpo_trainer.py` (`ORPOTrainer.odds_ratio_loss`, which TRL
//! computes in float32, so agreement there is about 1e-7), and KTO `trl/trainer/kto_trainer.py`
//! (`KTOTrainer._compute_loss`).
//!
//! What other code must know about TRL's semantics (all reproduced here):
//! - TRL reduces every loss type with `per_sequence_loss.mean()` and sums the types with
//!   `loss_weights`; so `loss` is always the mean of `losses`.
//! - `sft` is batch-level: the token-mean NLL over all chosen completion tokens of the batch,
//!   `−Σ_i lw_i / Σ_i |yw_i|`, copied into every entry of `losses`.
//! - `aot` and `aot_unpaired` are batch-level: they sort across the batch, so `losses[k]` is
//!   the loss of the k-th *sorted* position, not of pair k.
//! - `ipo` and `sigmoid_norm` divide each log-ratio by its completion length (clamped at 1).
//! - `sigmoid` ignores `label_smoothing` in TRL 1.x (the old cDPO meaning lives in
//!   [`LossKind::Cdpo`]); `aot`/`aot_unpaired` apply it cDPO-style; `robust` uses it as the
//!   flip rate; `exo_pair` uses `label_smoothing` as EXO's ε (we keep ε in
//!   [`LossParams::exo_epsilon`]; [`evaluate_trl_losses`] copies `label_smoothing` into it).
//! - For all 15 DPO types, `chosen_rewards = β(lw − rw)` and `rejected_rewards = β(ll − rl)`.
//!   SimPO/CPO/ORPO (reference-free) report `β·avg(lw)` / `β·lw` / `β·avg(lw)` like their
//!   TRL trainers.

use crate::error::{LabError, Result};
use crate::json;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// The closed set of variants
// ---------------------------------------------------------------------------------------

/// Every loss in the zoo. The first 15 are TRL's `DPOConfig.loss_type` values, in TRL's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    Sigmoid,
    Hinge,
    Ipo,
    ExoPair,
    NcaPair,
    Robust,
    BcoPair,
    SppoHard,
    Aot,
    AotUnpaired,
    ApoZero,
    ApoDown,
    Discopop,
    Sft,
    SigmoidNorm,
    Cdpo,
    Simpo,
    Cpo,
    Orpo,
    Kto,
    PlackettLuce,
    Dove,
}

/// What one training example looks like for a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataShape {
    /// (prompt, chosen, rejected): [`paired_loss`].
    Paired,
    /// (prompt, completion, desirable?): [`kto_loss`].
    Unpaired,
    /// (prompt, K completions best first): [`plackett_luce_loss`].
    Ranked,
}

impl LossKind {
    pub const ALL: [LossKind; 22] = [
        LossKind::Sigmoid,
        LossKind::Hinge,
        LossKind::Ipo,
        LossKind::ExoPair,
        LossKind::NcaPair,
        LossKind::Robust,
        LossKind::BcoPair,
        LossKind::SppoHard,
        LossKind::Aot,
        LossKind::AotUnpaired,
        LossKind::ApoZero,
        LossKind::ApoDown,
        LossKind::Discopop,
        LossKind::Sft,
        LossKind::SigmoidNorm,
        LossKind::Cdpo,
        LossKind::Simpo,
        LossKind::Cpo,
        LossKind::Orpo,
        LossKind::Kto,
        LossKind::PlackettLuce,
        LossKind::Dove,
    ];

    /// TRL 1.x `DPOConfig.loss_type` values, in the order TRL lists them.
    pub const TRL_DPO: [LossKind; 15] = [
        LossKind::Sigmoid,
        LossKind::Hinge,
        LossKind::Ipo,
        LossKind::ExoPair,
        LossKind::NcaPair,
        LossKind::Robust,
        LossKind::BcoPair,
        LossKind::SppoHard,
        LossKind::Aot,
        LossKind::AotUnpaired,
        LossKind::ApoZero,
        LossKind::ApoDown,
        LossKind::Discopop,
        LossKind::Sft,
        LossKind::SigmoidNorm,
    ];

    /// The snake_case name (TRL's `loss_type` for the 15 TRL names; same as the serde form).
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Sigmoid => "sigmoid",
            LossKind::Hinge => "hinge",
            LossKind::Ipo => "ipo",
            LossKind::ExoPair => "exo_pair",
            LossKind::NcaPair => "nca_pair",
            LossKind::Robust => "robust",
            LossKind::BcoPair => "bco_pair",
            LossKind::SppoHard => "sppo_hard",
            LossKind::Aot => "aot",
            LossKind::AotUnpaired => "aot_unpaired",
            LossKind::ApoZero => "apo_zero",
            LossKind::ApoDown => "apo_down",
            LossKind::Discopop => "discopop",
            LossKind::Sft => "sft",
            LossKind::SigmoidNorm => "sigmoid_norm",
            LossKind::Cdpo => "cdpo",
            LossKind::Simpo => "simpo",
            LossKind::Cpo => "cpo",
            LossKind::Orpo => "orpo",
            LossKind::Kto => "kto",
            LossKind::PlackettLuce => "plackett_luce",
            LossKind::Dove => "dove",
        }
    }

    /// Parse a snake_case name; the error lists every valid name.
    pub fn from_name(name: &str) -> Result<LossKind> {
        let wanted = name.trim();
        LossKind::ALL.iter().copied().find(|k| k.name() == wanted).ok_or_else(|| {
            let valid: Vec<&str> = LossKind::ALL.iter().map(|k| k.name()).collect();
            LabError::param(
                "loss",
                format!("unknown loss \"{wanted}\"; valid names: {}", valid.join(", ")),
            )
        })
    }

    /// Human-readable formula for the UI. Notation: lw, ll policy log-probs of the chosen /
    /// rejected completion (summed over tokens), rw, rl the reference's, ρw = lw − rw,
    /// ρl = ll − rl, Δ = ρw − ρl, |y| completion length, avg(l) = l/|y|.
    pub fn formula(self) -> &'static str {
        match self {
            LossKind::Sigmoid => "−log σ(βΔ)",
            LossKind::Hinge => "max(0, 1 − βΔ)",
            LossKind::Ipo => "(ρw/|yw| − ρl/|yl| − 1/(2β))²",
            LossKind::ExoPair => "σ(βΔ)[log σ(βΔ) − log(1−ε)] + σ(−βΔ)[log σ(−βΔ) − log ε]",
            LossKind::NcaPair => "−log σ(βρw) − ½ log σ(−βρw) − ½ log σ(−βρl)",
            LossKind::Robust => "[−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε)",
            LossKind::BcoPair => "−log σ(βρw) − log σ(−βρl)",
            LossKind::SppoHard => "(ρw − 1/(2β))² + (ρl + 1/(2β))²",
            LossKind::Aot => "−(1−ε) log σ(βδk) − ε log σ(−βδk), δ = sort(lw − ll) − sort(rw − rl) over the batch",
            LossKind::AotUnpaired => "−(1−ε) log σ(βδk) − ε log σ(−βδk), δ = sort(ρw) − sort(ρl) over the batch",
            LossKind::ApoZero => "1 − σ(βρw) + σ(βρl)",
            LossKind::ApoDown => "σ(βρw) + 1 − σ(βΔ)",
            LossKind::Discopop => "(1 − m)(−log σ(βΔ)) + m·exp(−βΔ), m = σ(βΔ/τ)",
            LossKind::Sft => "−Σ lw / Σ |yw| over the batch (token-mean NLL of the chosen completions)",
            LossKind::SigmoidNorm => "−log σ(β(ρw/|yw| − ρl/|yl|))",
            LossKind::Cdpo => "−(1−ε) log σ(βΔ) − ε log σ(−βΔ)",
            LossKind::Simpo => "−(1−ε) log σ(β·avg(lw) − β·avg(ll) − γ) − ε log σ(−(β·avg(lw) − β·avg(ll) − γ))",
            LossKind::Cpo => "−(1−ε) log σ(β(lw − ll)) − ε log σ(−β(lw − ll)) + α·NLL(yw)",
            LossKind::Orpo => "NLL(yw) − β log σ(log[(pw/(1−pw)) / (pl/(1−pl))]), p = exp(avg(l))",
            LossKind::Kto => "desirable: w_d(1 − σ(β(ρ − z0))); undesirable: w_u(1 − σ(β(z0 − ρ))); z0 = max(0, mean ρ), detached",
            LossKind::PlackettLuce => "−Σk log[exp(βρk) / Σ_{j≥k} exp(βρj)], responses best first",
            LossKind::Dove => "−log σ(β[ρ(xw, yw) − ρ(xl, yl)]), the two sides may have different prompts",
        }
    }

    /// Paper (and equation where there is one) the variant comes from.
    pub fn source(self) -> &'static str {
        match self {
            LossKind::Sigmoid => "Rafailov et al. 2023 (DPO), eq. 7",
            LossKind::Hinge => "Zhao et al. 2023 (SLiC-HF), eq. 1; Liu et al. 2023 (RSO), eq. 8",
            LossKind::Ipo => "Azar et al. 2023 (IPO), eq. 17; length-normalised as in TRL",
            LossKind::ExoPair => "Ji et al. 2024 (EXO), eq. 16",
            LossKind::NcaPair => "Chen et al. 2024 (Noise Contrastive Alignment), NCA pairwise loss",
            LossKind::Robust => "Chowdhury et al. 2024 (Provably Robust DPO), eq. 8",
            LossKind::BcoPair => "Jung et al. 2024 (Binary Classifier Optimization), paired form as in TRL",
            LossKind::SppoHard => "Wu et al. 2024 (SPPO), eq. 4.7 with hard probabilities",
            LossKind::Aot => "Melnyk et al. 2024 (Alignment via Optimal Transport), paired",
            LossKind::AotUnpaired => "Melnyk et al. 2024 (Alignment via Optimal Transport), unpaired",
            LossKind::ApoZero => "D'Oosterlinck et al. 2024 (APO), eq. 7",
            LossKind::ApoDown => "D'Oosterlinck et al. 2024 (APO), eq. 8",
            LossKind::Discopop => "Lu et al. 2024 (DiscoPOP), eq. 5",
            LossKind::Sft => "negative log-likelihood of the chosen completion (TRL DPOTrainer loss_type=\"sft\")",
            LossKind::SigmoidNorm => "Lambert et al. 2024 (Tülu 3), length-normalised DPO",
            LossKind::Cdpo => "Mitchell 2023, \"A note on DPO with noisy preferences\" (cDPO)",
            LossKind::Simpo => "Meng et al. 2024 (SimPO), eq. 6",
            LossKind::Cpo => "Xu et al. 2024 (CPO), eq. 3 plus the NLL term",
            LossKind::Orpo => "Hong et al. 2024 (ORPO), eqs. 4 and 7",
            LossKind::Kto => "Ethayarajh et al. 2024 (KTO), eq. 7",
            LossKind::PlackettLuce => "Rafailov et al. 2023 (DPO), appendix A.3, Plackett–Luce objective",
            LossKind::Dove => "Bansal et al. 2024 (Joint preference optimization / DOVE)",
        }
    }

    /// Whether the loss reads the reference log-probs.
    pub fn uses_reference(self) -> bool {
        !matches!(self, LossKind::Simpo | LossKind::Cpo | LossKind::Orpo | LossKind::Sft)
    }

    /// Whether the loss reads the completion lengths.
    pub fn uses_lengths(self) -> bool {
        matches!(
            self,
            LossKind::Ipo
                | LossKind::SigmoidNorm
                | LossKind::Sft
                | LossKind::Simpo
                | LossKind::Cpo
                | LossKind::Orpo
        )
    }

    /// Whether the loss couples the pairs of a batch (so a pair's loss depends on the others).
    pub fn is_batch_level(self) -> bool {
        matches!(
            self,
            LossKind::Sft | LossKind::Aot | LossKind::AotUnpaired | LossKind::Cpo | LossKind::Orpo
        )
    }

    pub fn data_shape(self) -> DataShape {
        match self {
            LossKind::Kto => DataShape::Unpaired,
            LossKind::PlackettLuce => DataShape::Ranked,
            _ => DataShape::Paired,
        }
    }
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

/// Hyper-parameters of the zoo; each loss reads the ones it needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossParams {
    /// β, inverse temperature / KL strength (TRL's default 0.1).
    pub beta: f64,
    /// ε: cDPO's and AOT's label smoothing, rDPO's flip rate, SimPO's/CPO's smoothing.
    /// TRL 1.x `sigmoid` ignores it.
    pub label_smoothing: f64,
    /// SimPO's target margin γ (TRL's default 0.5; the paper uses 1.375 with β = 2.5).
    pub simpo_gamma: f64,
    /// DiscoPOP's temperature τ (TRL's default 0.05).
    pub discopop_tau: f64,
    /// EXO's ε, the probability mass of the rejected side in the target (paper: 1e-3).
    pub exo_epsilon: f64,
    /// Weight of the NLL term in CPO (TRL `CPOConfig.cpo_alpha`, default 1).
    pub cpo_alpha: f64,
    /// KTO's weight on desirable examples.
    pub kto_desirable_weight: f64,
    /// KTO's weight on undesirable examples.
    pub kto_undesirable_weight: f64,
}

impl Default for LossParams {
    fn default() -> Self {
        LossParams {
            beta: 0.1,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            discopop_tau: 0.05,
            exo_epsilon: 1e-3,
            cpo_alpha: 1.0,
            kto_desirable_weight: 1.0,
            kto_undesirable_weight: 1.0,
        }
    }
}

/// Largest β, |γ|, CPO's α, KTO's weights and loss-mix weight accepted: far above any
/// published setting, low enough that no loss overflows on log-probs within
/// [`MAX_ABS_LOGP`].
pub const MAX_PARAM: f64 = 1e6;
/// Smallest β accepted: IPO's target margin is 1/(2β), squared in the loss.
pub const MIN_BETA: f64 = 1e-6;
/// Smallest DiscoPOP τ accepted (the loss divides by it); the largest is 1, beyond which
/// its m·e^{−βΔ} term grows without bound as the margin falls.
pub const MIN_DISCOPOP_TAU: f64 = 1e-6;
/// Largest |sequence log-prob| the `losses` input may hold: a million nats, thousands of
/// tokens at the worst per-token log-prob a model gives.
pub const MAX_ABS_LOGP: f64 = 1e6;
/// Largest completion length (tokens) the `losses` input may hold.
pub const MAX_LENGTH: f64 = 1e6;

impl LossParams {
    /// Reject parameters the loss `kind` cannot use, naming the parameter. β must lie in
    /// [[`MIN_BETA`], [`MAX_PARAM`]] for every loss; `label_smoothing` must lie in [0, 0.5] (in
    /// [0, 0.5) for `robust`, which divides by 1 − 2ε); the other fields are checked only for
    /// the losses that read them, each within [`MAX_PARAM`] in size.
    pub fn validate(&self, kind: LossKind) -> Result<()> {
        if !(MIN_BETA..=MAX_PARAM).contains(&self.beta) {
            return Err(LabError::param(
                "beta",
                format!(
                    "must be a number in [{MIN_BETA:e}, {MAX_PARAM:e}] (TRL's default is 0.1), \
                     got {:?}",
                    self.beta
                ),
            ));
        }
        let eps = self.label_smoothing;
        if !(eps.is_finite() && (0.0..=0.5).contains(&eps)) {
            return Err(LabError::param(
                "label_smoothing",
                format!("must lie in [0, 0.5], got {eps:?}"),
            ));
        }
        match kind {
            LossKind::Robust if eps >= 0.5 => {
                return Err(LabError::param(
                    "label_smoothing",
                    format!("robust divides by 1 − 2ε, so the flip rate must lie in [0, 0.5), got {eps:?}"),
                ));
            }
            LossKind::Simpo
                if !(self.simpo_gamma.is_finite() && self.simpo_gamma.abs() <= MAX_PARAM) =>
            {
                return Err(LabError::param(
                    "simpo_gamma",
                    format!(
                        "must be a finite number in [-{MAX_PARAM:e}, {MAX_PARAM:e}], got {:?}",
                        self.simpo_gamma
                    ),
                ));
            }
            LossKind::Discopop if !((MIN_DISCOPOP_TAU..=1.0).contains(&self.discopop_tau)) => {
                return Err(LabError::param(
                    "discopop_tau",
                    format!(
                        "must lie in [{MIN_DISCOPOP_TAU:e}, 1] (TRL's default is 0.05; above 1 \
                         the loss grows like e^(−βΔ) and overflows), got {:?}",
                        self.discopop_tau
                    ),
                ));
            }
            LossKind::ExoPair if !(self.exo_epsilon > 0.0 && self.exo_epsilon < 1.0) => {
                return Err(LabError::param(
                    "exo_epsilon",
                    format!(
                        "must lie in (0, 1) (the EXO paper uses 1e-3), got {:?}",
                        self.exo_epsilon
                    ),
                ));
            }
            LossKind::Cpo if !((0.0..=MAX_PARAM).contains(&self.cpo_alpha)) => {
                return Err(LabError::param(
                    "cpo_alpha",
                    format!("must lie in [0, {MAX_PARAM:e}], got {:?}", self.cpo_alpha),
                ));
            }
            LossKind::Kto => {
                for (name, w) in [
                    ("kto_desirable_weight", self.kto_desirable_weight),
                    ("kto_undesirable_weight", self.kto_undesirable_weight),
                ] {
                    if !(w > 0.0 && w <= MAX_PARAM) {
                        return Err(LabError::param(
                            name,
                            format!("must be a finite number in (0, {MAX_PARAM:e}], got {w:?}"),
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Inputs and outputs
// ---------------------------------------------------------------------------------------

/// Per-pair sequence log-probs (summed over completion tokens), f64 so the CLI can match TRL to 1e-9.
/// All arrays have one entry per pair. Reference arrays may be empty for reference-free losses
/// (simpo, cpo, orpo, sft) and length arrays may be empty for losses that do not read lengths.
#[derive(Debug, Clone, Copy)]
pub struct PairLogps<'a> {
    pub policy_chosen: &'a [f64],
    pub policy_rejected: &'a [f64],
    pub reference_chosen: &'a [f64],
    pub reference_rejected: &'a [f64],
    /// Number of completion tokens of the chosen side (as f64; must be > 0).
    pub chosen_lengths: &'a [f64],
    pub rejected_lengths: &'a [f64],
}

/// A loss evaluated on a batch of pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct LossOut {
    /// Per pair, what TRL's per-pair `losses` tensor holds (sorted positions for aot*,
    /// the batch value repeated for sft; see each variant).
    pub losses: Vec<f64>,
    /// The scalar the optimizer minimises: the mean of `losses`, TRL's reduction.
    pub loss: f64,
    /// As TRL reports them: β(lw − rw) for the DPO types.
    pub chosen_rewards: Vec<f64>,
    pub rejected_rewards: Vec<f64>,
    /// d loss / d policy_chosen[i] (gradient of the scalar `loss`).
    pub d_policy_chosen: Vec<f64>,
    pub d_policy_rejected: Vec<f64>,
    pub d_reference_chosen: Vec<f64>,
    pub d_reference_rejected: Vec<f64>,
}

/// One loss term on a batch: per-pair losses and the gradient of their mean.
#[derive(Debug, Clone)]
struct Term {
    losses: Vec<f64>,
    d_pc: Vec<f64>,
    d_pr: Vec<f64>,
    d_rc: Vec<f64>,
    d_rr: Vec<f64>,
}

impl Term {
    fn zeros(n: usize) -> Term {
        Term {
            losses: vec![0.0; n],
            d_pc: vec![0.0; n],
            d_pr: vec![0.0; n],
            d_rc: vec![0.0; n],
            d_rr: vec![0.0; n],
        }
    }
}

// ---------------------------------------------------------------------------------------
// Numerics
// ---------------------------------------------------------------------------------------

/// log σ(x), stable for large |x| (same form as torch's logsigmoid).
fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// σ(x), stable for large |x|.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// log(1 − eˣ) for x < 0, stable (Mächler 2012).
fn log1mexp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// The label-smoothed logistic loss ℓ_ε(z) = −(1−ε) log σ(z) − ε log σ(−z) and dℓ/dz.
fn smoothed_logistic(z: f64, eps: f64) -> (f64, f64) {
    let loss = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
    let grad = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
    (loss, grad)
}

/// Length as TRL's DPOTrainer divides by it: `completion_mask.sum().clamp(min=1)`.
fn clamped_len(len: f64) -> f64 {
    len.max(1.0)
}

// ---------------------------------------------------------------------------------------
// Term builders: most losses are a function of one or two per-pair scalars
// ---------------------------------------------------------------------------------------

/// A loss of Δ = (lw − rw) − (ll − rl): `f(Δ) = (loss, dloss/dΔ)`.
fn delta_term(x: &PairLogps, f: impl Fn(f64) -> (f64, f64)) -> Term {
    let n = x.policy_chosen.len();
    let mut t = Term::zeros(n);
    for i in 0..n {
        let delta = (x.policy_chosen[i] - x.reference_chosen[i])
            - (x.policy_rejected[i] - x.reference_rejected[i]);
        let (loss, g) = f(delta);
        let g = g / n as f64;
        t.losses[i] = loss;
        t.d_pc[i] = g;
        t.d_pr[i] = -g;
        t.d_rc[i] = -g;
        t.d_rr[i] = g;
    }
    t
}

/// A loss of the two log-ratios ρw, ρl separately: `f(ρw, ρl) = (loss, ∂/∂ρw, ∂/∂ρl)`.
fn ratio_term(x: &PairLogps, f: impl Fn(f64, f64) -> (f64, f64, f64)) -> Term {
    let n = x.policy_chosen.len();
    let mut t = Term::zeros(n);
    for i in 0..n {
        let rho_w = x.policy_chosen[i] - x.reference_chosen[i];
        let rho_l = x.policy_rejected[i] - x.reference_rejected[i];
        let (loss, gw, gl) = f(rho_w, rho_l);
        let (gw, gl) = (gw / n as f64, gl / n as f64);
        t.losses[i] = loss;
        t.d_pc[i] = gw;
        t.d_rc[i] = -gw;
        t.d_pr[i] = gl;
        t.d_rr[i] = -gl;
    }
    t
}

/// A loss of the length-normalised margin d = ρw/|yw| − ρl/|yl| (lengths clamped at 1 as TRL
/// does): `f(d) = (loss, dloss/dd)`.
fn normalized_delta_term(x: &PairLogps, f: impl Fn(f64) -> (f64, f64)) -> Term {
    let n = x.policy_chosen.len();
    let mut t = Term::zeros(n);
    for i in 0..n {
        let len_w = clamped_len(x.chosen_lengths[i]);
        let len_l = clamped_len(x.rejected_lengths[i]);
        let rho_w = x.policy_chosen[i] - x.reference_chosen[i];
        let rho_l = x.policy_rejected[i] - x.reference_rejected[i];
        let (loss, g) = f(rho_w / len_w - rho_l / len_l);
        let g = g / n as f64;
        t.losses[i] = loss;
        t.d_pc[i] = g / len_w;
        t.d_rc[i] = -g / len_w;
        t.d_pr[i] = -g / len_l;
        t.d_rr[i] = g / len_l;
    }
    t
}

/// Token-mean NLL of the chosen completions over the whole batch, −Σ lw / Σ|yw|, and its
/// gradient w.r.t. each lw (the same for every pair).
fn batch_chosen_nll(x: &PairLogps) -> (f64, f64) {
    let tokens: f64 = x.chosen_lengths.iter().sum();
    let logp_sum: f64 = x.policy_chosen.iter().sum();
    (-logp_sum / tokens, -1.0 / tokens)
}

/// Stable ascending sort order (ties keep input order; torch.sort's order at ties is
/// unspecified, but tied values give the same sorted values either way).
fn sort_order(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order
}

// ---------------------------------------------------------------------------------------
// The variants: one function each
// ---------------------------------------------------------------------------------------

/// DPO, `sigmoid`: −log σ(βΔ). Rafailov et al. 2023, eq. 7. TRL 1.x ignores
/// `label_smoothing` here (older TRL applied cDPO smoothing; that is [`cdpo`]).
fn sigmoid_loss(p: &LossParams, x: &PairLogps) -> Term {
    let beta = p.beta;
    delta_term(x, |d| (-log_sigmoid(beta * d), -beta * sigmoid(-beta * d)))
}

/// SLiC / RSO, `hinge`: max(0, 1 − βΔ). Zhao et al. 2023 eq. 1; Liu et al. 2023 eq. 8.
/// The gradient at the kink (βΔ = 1) is 0, as torch's relu.
fn hinge_loss(p: &LossParams, x: &PairLogps) -> Term {
    let beta = p.beta;
    delta_term(x, |d| {
        let m = 1.0 - beta * d;
        if m > 0.0 {
            (m, -beta)
        } else {
            (0.0, 0.0)
        }
    })
}

/// IPO, `ipo`: (ρw/|yw| − ρl/|yl| − 1/(2β))². Azar et al. 2023, eq. 17. TRL 1.x divides the
/// summed log-ratios by the completion lengths (clamped at 1), which the reference table also
/// states; older TRL averaged the log-probs instead.
fn ipo_loss(p: &LossParams, x: &PairLogps) -> Term {
    let target = 1.0 / (2.0 * p.beta);
    normalized_delta_term(x, |d| ((d - target).powi(2), 2.0 * (d - target)))
}

/// EXO, `exo_pair`: σ(z)[log σ(z) − log(1−ε)] + σ(−z)[log σ(−z) − log ε], z = βΔ. Ji et al.
/// 2024, eq. 16 (the reverse KL from the model's pair distribution to the target (1−ε, ε)).
/// TRL takes ε from `label_smoothing` and refuses 0; we read [`LossParams::exo_epsilon`].
/// dℓ/dz = σ(z)σ(−z)·(z − log(1−ε) + log ε).
fn exo_pair_loss(p: &LossParams, x: &PairLogps) -> Term {
    let (beta, eps) = (p.beta, p.exo_epsilon);
    let (log_pw, log_pl) = ((-eps).ln_1p(), eps.ln());
    delta_term(x, |d| {
        let z = beta * d;
        let (qw, ql) = (sigmoid(z), sigmoid(-z));
        let loss = qw * (log_sigmoid(z) - log_pw) + ql * (log_sigmoid(-z) - log_pl);
        (loss, beta * qw * ql * (z - log_pw + log_pl))
    })
}

/// NCA, `nca_pair`: −log σ(βρw) − ½ log σ(−βρw) − ½ log σ(−βρl). Chen et al. 2024 (NCA).
fn nca_pair_loss(p: &LossParams, x: &PairLogps) -> Term {
    let beta = p.beta;
    ratio_term(x, |rw, rl| {
        let (a, b) = (beta * rw, beta * rl);
        let loss = -log_sigmoid(a) - 0.5 * log_sigmoid(-a) - 0.5 * log_sigmoid(-b);
        (loss, beta * (-sigmoid(-a) + 0.5 * sigmoid(a)), beta * 0.5 * sigmoid(b))
    })
}

/// rDPO, `robust`: [−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε), ε the flip rate in [0, 0.5).
/// Chowdhury et al. 2024, eq. 8. Same sign convention as TRL (`(clean − flipped)/(1 − 2ε)` with
/// `flipped = −ε log σ(−βΔ)`); ε = 0 gives `sigmoid`.
fn robust_loss(p: &LossParams, x: &PairLogps) -> Term {
    let (beta, eps) = (p.beta, p.label_smoothing);
    let scale = 1.0 / (1.0 - 2.0 * eps);
    delta_term(x, |d| {
        let z = beta * d;
        let loss = (-(1.0 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) * scale;
        let grad = (-(1.0 - eps) * sigmoid(-z) - eps * sigmoid(z)) * scale;
        (loss, beta * grad)
    })
}

/// BCO, `bco_pair`: −log σ(βρw) − log σ(−βρl). Jung et al. 2024. TRL 1.x has no running-mean
/// reward shift δ (older TRL subtracted one); neither do we.
fn bco_pair_loss(p: &LossParams, x: &PairLogps) -> Term {
    let beta = p.beta;
    ratio_term(x, |rw, rl| {
        let (a, b) = (beta * rw, beta * rl);
        (-log_sigmoid(a) - log_sigmoid(-b), -beta * sigmoid(-a), beta * sigmoid(b))
    })
}

/// SPPO (hard labels), `sppo_hard`: (ρw − 1/(2β))² + (ρl + 1/(2β))². Wu et al. 2024, eq. 4.7
/// with P(winner) = 1, P(loser) = 0.
fn sppo_hard_loss(p: &LossParams, x: &PairLogps) -> Term {
    let half_inv_beta = 0.5 / p.beta;
    ratio_term(x, |rw, rl| {
        let (ew, el) = (rw - half_inv_beta, rl + half_inv_beta);
        (ew * ew + el * el, 2.0 * ew, 2.0 * el)
    })
}

/// AOT, `aot` (paired): sort u = lw − ll and v = rw − rl across the batch separately, then
/// ℓ_ε(β(u_(k) − v_(k))) with the cDPO-smoothed logistic ℓ_ε. Melnyk et al. 2024. TRL applies
/// `label_smoothing` here. `losses[k]` belongs to sorted position k.
fn aot_loss(p: &LossParams, x: &PairLogps) -> Term {
    let n = x.policy_chosen.len();
    let u: Vec<f64> = (0..n).map(|i| x.policy_chosen[i] - x.policy_rejected[i]).collect();
    let v: Vec<f64> = (0..n).map(|i| x.reference_chosen[i] - x.reference_rejected[i]).collect();
    sorted_difference_term(p, &u, &v, |t, i, j, g| {
        t.d_pc[i] += g;
        t.d_pr[i] -= g;
        t.d_rc[j] -= g;
        t.d_rr[j] += g;
    })
}

/// AOT, `aot_unpaired`: sort ρw and ρl across the batch separately, then ℓ_ε(β(ρw_(k) − ρl_(k))).
/// Melnyk et al. 2024. `losses[k]` belongs to sorted position k.
fn aot_unpaired_loss(p: &LossParams, x: &PairLogps) -> Term {
    let n = x.policy_chosen.len();
    let rw: Vec<f64> = (0..n).map(|i| x.policy_chosen[i] - x.reference_chosen[i]).collect();
    let rl: Vec<f64> = (0..n).map(|i| x.policy_rejected[i] - x.reference_rejected[i]).collect();
    sorted_difference_term(p, &rw, &rl, |t, i, j, g| {
        t.d_pc[i] += g;
        t.d_rc[i] -= g;
        t.d_pr[j] -= g;
        t.d_rr[j] += g;
    })
}

/// The AOT core: sort `a` and `b` separately and pair them by rank, `losses[k] =
/// ℓ_ε(β(a_(k) − b_(k)))`; `spread(term, i, j, g)` sends g = d loss/d(a_i − b_j) back to the
/// log-probs that `a_i` and `b_j` were made of.
fn sorted_difference_term(
    p: &LossParams,
    a: &[f64],
    b: &[f64],
    spread: impl Fn(&mut Term, usize, usize, f64),
) -> Term {
    let n = a.len();
    let (order_a, order_b) = (sort_order(a), sort_order(b));
    let mut t = Term::zeros(n);
    for k in 0..n {
        let (i, j) = (order_a[k], order_b[k]);
        let (loss, g) = smoothed_logistic(p.beta * (a[i] - b[j]), p.label_smoothing);
        t.losses[k] = loss;
        spread(&mut t, i, j, g * p.beta / n as f64);
    }
    t
}

/// APO-zero, `apo_zero`: 1 − σ(βρw) + σ(βρl). D'Oosterlinck et al. 2024, eq. 7.
fn apo_zero_loss(p: &LossParams, x: &PairLogps) -> Term {
    let beta = p.beta;
    ratio_term(x, |rw, rl| {
        let (sw, sl) = (sigmoid(beta * rw), sigmoid(beta * rl));
        (1.0 - sw + sl, -beta * sw * (1.0 - sw), beta * sl * (1.0 - sl))
    })
}

/// APO-down, `apo_down`: σ(βρw) + 1 − σ(βΔ). D'Oosterlinck et al. 2024, eq. 8.
fn apo_down_loss(p: &LossParams, x: &PairLogps) -> Term {
    let beta = p.beta;
    ratio_term(x, |rw, rl| {
        let sw = sigmoid(beta * rw);
        let sd = sigmoid(beta * (rw - rl));
        let gd = -beta * sd * (1.0 - sd); // ∂/∂Δ of (1 − σ(βΔ))
        (sw + 1.0 - sd, beta * sw * (1.0 - sw) + gd, -gd)
    })
}

/// DiscoPOP, `discopop`: with z = βΔ and m = σ(z/τ), (1 − m)(−log σ(z)) + m·e^{−z}. Lu et al.
/// 2024, eq. 5 (the log-ratio modulated loss), τ = `discopop_tau`.
fn discopop_loss(p: &LossParams, x: &PairLogps) -> Term {
    let (beta, tau) = (p.beta, p.discopop_tau);
    delta_term(x, |d| {
        let z = beta * d;
        let m = sigmoid(z / tau);
        let logistic = -log_sigmoid(z);
        // m·e^{−z} as one exponential: for z ≪ 0, e^{−z} alone overflows while m → 0.
        let m_expo = (log_sigmoid(z / tau) - z).exp();
        let loss = logistic * (1.0 - m) + m_expo;
        // dm/dz = m(1 − m)/τ, so dm/dz · e^{−z} = (1 − m) · m·e^{−z} / τ.
        let grad = (1.0 - m) * m_expo / tau
            - m * (1.0 - m) / tau * logistic
            - (1.0 - m) * sigmoid(-z)
            - m_expo;
        (loss, beta * grad)
    })
}

/// `sft`: the token-mean NLL of the chosen completions over the whole batch, −Σ lw / Σ|yw|
/// (TRL computes `cross_entropy` over all chosen completion tokens of the batch and expands the
/// scalar to every pair). Batch-level: every entry of `losses` is the same number.
fn sft_loss(_p: &LossParams, x: &PairLogps) -> Term {
    let n = x.policy_chosen.len();
    let (nll, g) = batch_chosen_nll(x);
    let mut t = Term::zeros(n);
    t.losses.fill(nll);
    t.d_pc.fill(g);
    t
}

/// `sigmoid_norm`: −log σ(β(ρw/|yw| − ρl/|yl|)). Lambert et al. 2024 (Tülu 3), the
/// length-normalised DPO; lengths clamped at 1 as TRL does.
fn sigmoid_norm_loss(p: &LossParams, x: &PairLogps) -> Term {
    let beta = p.beta;
    normalized_delta_term(x, |d| (-log_sigmoid(beta * d), -beta * sigmoid(-beta * d)))
}

/// cDPO: −(1−ε) log σ(βΔ) − ε log σ(−βΔ). Mitchell 2023; TRL < 0.29's `sigmoid` with
/// `label_smoothing = ε`. ε = 0 gives `sigmoid`.
fn cdpo_loss(p: &LossParams, x: &PairLogps) -> Term {
    let (beta, eps) = (p.beta, p.label_smoothing);
    delta_term(x, |d| {
        let (loss, g) = smoothed_logistic(beta * d, eps);
        (loss, beta * g)
    })
}

/// SimPO (reference-free): ℓ_ε(β·avg(lw) − β·avg(ll) − γ), avg = summed log-prob / length.
/// Meng et al. 2024, eq. 6. TRL `CPOTrainer.cpo_loss` with `loss_type="simpo"`: logits =
/// avg(lw) − avg(ll) − γ/β, loss = −(1−ε) log σ(β·logits) − ε log σ(−β·logits). TRL's CPOTrainer
/// also adds `cpo_alpha`·NLL; this is pure SimPO (for CPO-SimPO use the mix `simpo+sft`).
fn simpo_loss(p: &LossParams, x: &PairLogps) -> Term {
    let n = x.policy_chosen.len();
    let mut t = Term::zeros(n);
    for i in 0..n {
        let (len_w, len_l) = (x.chosen_lengths[i], x.rejected_lengths[i]);
        let logits =
            x.policy_chosen[i] / len_w - x.policy_rejected[i] / len_l - p.simpo_gamma / p.beta;
        let (loss, g) = smoothed_logistic(p.beta * logits, p.label_smoothing);
        let g = g * p.beta / n as f64;
        t.losses[i] = loss;
        t.d_pc[i] = g / len_w;
        t.d_pr[i] = -g / len_l;
    }
    t
}

/// CPO (reference-free): ℓ_ε(β(lw − ll)) + α·NLL(yw). Xu et al. 2024, eq. 3 plus the NLL
/// regulariser; TRL `CPOTrainer` (`loss_type="sigmoid"`, summed log-probs) with
/// `loss = losses.mean() + cpo_alpha * nll`, the NLL being the token-mean over all chosen
/// completion tokens of the batch. Here each `losses[i]` already includes α·NLL (so `loss` is
/// their mean); TRL's own `losses` tensor holds only the preference term.
fn cpo_loss(p: &LossParams, x: &PairLogps) -> Term {
    let n = x.policy_chosen.len();
    let mut t = Term::zeros(n);
    let (nll, g_nll) = if p.cpo_alpha != 0.0 { batch_chosen_nll(x) } else { (0.0, 0.0) };
    for i in 0..n {
        let (loss, g) = smoothed_logistic(
            p.beta * (x.policy_chosen[i] - x.policy_rejected[i]),
            p.label_smoothing,
        );
        let g = g * p.beta / n as f64;
        t.losses[i] = loss + p.cpo_alpha * nll;
        t.d_pc[i] = g + p.cpo_alpha * g_nll;
        t.d_pr[i] = -g;
    }
    t
}

/// ORPO (reference-free): NLL(yw) − β log σ(log odds), log odds = (aw − al) − (log(1 − e^aw) −
/// log(1 − e^al)), a = avg log-prob. Hong et al. 2024, eqs. 4 and 7; β is the paper's λ. TRL
/// `ORPOTrainer`: `loss = nll − mean(β·logσ(log_odds))`. Our NLL is the token-mean over the
/// batch's chosen completion tokens; each `losses[i]` includes it (TRL's `losses` tensor holds
/// only β·logσ(log odds), with the opposite sign). Needs avg log-probs < 0.
fn orpo_loss(p: &LossParams, x: &PairLogps) -> Term {
    let n = x.policy_chosen.len();
    let mut t = Term::zeros(n);
    let (nll, g_nll) = batch_chosen_nll(x);
    for i in 0..n {
        let (len_w, len_l) = (x.chosen_lengths[i], x.rejected_lengths[i]);
        let (aw, al) = (x.policy_chosen[i] / len_w, x.policy_rejected[i] / len_l);
        let log_odds = (aw - al) - (log1mexp(aw) - log1mexp(al));
        let g = -p.beta * sigmoid(-log_odds) / n as f64; // ∂/∂log_odds of −β logσ
                                                         // ∂ log_odds/∂aw = 1/(1 − e^aw) = −1/expm1(aw); ∂/∂al = −1/(1 − e^al)
        let (dw, dl) = (-1.0 / aw.exp_m1(), 1.0 / al.exp_m1());
        t.losses[i] = nll - p.beta * log_sigmoid(log_odds);
        t.d_pc[i] = g * dw / len_w + g_nll;
        t.d_pr[i] = g * dl / len_l;
    }
    t
}

/// DOVE / joint preference optimisation: −log σ(β[ρ(xw, yw) − ρ(xl, yl)]). Bansal et al. 2024.
/// The formula is `sigmoid`'s; what differs is the data: the chosen and rejected sides may
/// answer different prompts (a preference between two (prompt, response) pairs), so the
/// "pair" arrays hold the log-probs of each side under its own prompt.
fn dove_loss(p: &LossParams, x: &PairLogps) -> Term {
    sigmoid_loss(p, x)
}

/// Dispatch one paired variant (no validation).
fn paired_term(kind: LossKind, p: &LossParams, x: &PairLogps) -> Term {
    match kind {
        LossKind::Sigmoid => sigmoid_loss(p, x),
        LossKind::Hinge => hinge_loss(p, x),
        LossKind::Ipo => ipo_loss(p, x),
        LossKind::ExoPair => exo_pair_loss(p, x),
        LossKind::NcaPair => nca_pair_loss(p, x),
        LossKind::Robust => robust_loss(p, x),
        LossKind::BcoPair => bco_pair_loss(p, x),
        LossKind::SppoHard => sppo_hard_loss(p, x),
        LossKind::Aot => aot_loss(p, x),
        LossKind::AotUnpaired => aot_unpaired_loss(p, x),
        LossKind::ApoZero => apo_zero_loss(p, x),
        LossKind::ApoDown => apo_down_loss(p, x),
        LossKind::Discopop => discopop_loss(p, x),
        LossKind::Sft => sft_loss(p, x),
        LossKind::SigmoidNorm => sigmoid_norm_loss(p, x),
        LossKind::Cdpo => cdpo_loss(p, x),
        LossKind::Simpo => simpo_loss(p, x),
        LossKind::Cpo => cpo_loss(p, x),
        LossKind::Orpo => orpo_loss(p, x),
        LossKind::Dove => dove_loss(p, x),
        LossKind::Kto | LossKind::PlackettLuce => unreachable!("checked by check_paired_kind"),
    }
}

/// Rewards as the trainer that defines `kind` logs them.
fn paired_rewards(kind: LossKind, p: &LossParams, x: &PairLogps) -> (Vec<f64>, Vec<f64>) {
    let n = x.policy_chosen.len();
    let beta = p.beta;
    match kind {
        // CPOTrainer (simpo averages the log-probs) and ORPOTrainer: β·(avg) policy log-probs.
        LossKind::Simpo | LossKind::Orpo => (
            (0..n).map(|i| beta * x.policy_chosen[i] / x.chosen_lengths[i]).collect(),
            (0..n).map(|i| beta * x.policy_rejected[i] / x.rejected_lengths[i]).collect(),
        ),
        LossKind::Cpo => (
            x.policy_chosen.iter().map(|l| beta * l).collect(),
            x.policy_rejected.iter().map(|l| beta * l).collect(),
        ),
        // TRL's sft needs no reference; it still logs β·ρ when one is there, we log 0 without one.
        LossKind::Sft if x.reference_chosen.is_empty() => (vec![0.0; n], vec![0.0; n]),
        _ => (
            (0..n).map(|i| beta * (x.policy_chosen[i] - x.reference_chosen[i])).collect(),
            (0..n).map(|i| beta * (x.policy_rejected[i] - x.reference_rejected[i])).collect(),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Input checks
// ---------------------------------------------------------------------------------------

/// Field names used in error messages (the Rust names, or the CLI's JSON names).
struct PairFieldNames {
    policy_chosen: &'static str,
    policy_rejected: &'static str,
    reference_chosen: &'static str,
    reference_rejected: &'static str,
    chosen_lengths: &'static str,
    rejected_lengths: &'static str,
}

const RUST_FIELDS: PairFieldNames = PairFieldNames {
    policy_chosen: "policy_chosen",
    policy_rejected: "policy_rejected",
    reference_chosen: "reference_chosen",
    reference_rejected: "reference_rejected",
    chosen_lengths: "chosen_lengths",
    rejected_lengths: "rejected_lengths",
};

const JSON_FIELDS: PairFieldNames = PairFieldNames {
    policy_chosen: "policy_chosen_logps",
    policy_rejected: "policy_rejected_logps",
    reference_chosen: "reference_chosen_logps",
    reference_rejected: "reference_rejected_logps",
    chosen_lengths: "chosen_lengths",
    rejected_lengths: "rejected_lengths",
};

fn check_finite(name: &str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(LabError::parse(format!(
            "{name}[{i}] is {}; every value must be finite",
            values[i]
        ))
        .in_field(name)),
        None => Ok(()),
    }
}

fn check_array(name: &str, values: &[f64], n: usize, lengths: bool) -> Result<()> {
    if values.len() != n {
        return Err(LabError::shape(format!(
            "{name} has {} entries but there are {n} pairs",
            values.len()
        )));
    }
    check_finite(name, values)?;
    if lengths {
        if let Some(i) = values.iter().position(|&v| v <= 0.0) {
            return Err(LabError::parse(format!(
                "{name}[{i}] is {}; completion lengths must be > 0",
                values[i]
            ))
            .in_field(name));
        }
    }
    Ok(())
}

/// Check a batch of pairs for the losses in `kinds`: the policy arrays non-empty and equally
/// long; reference and length arrays the same length (allowed empty when no loss reads them);
/// everything finite; lengths > 0; ORPO's average log-probs < 0.
fn check_pairs(kinds: &[LossKind], x: &PairLogps, names: &PairFieldNames) -> Result<()> {
    let n = x.policy_chosen.len();
    if n == 0 {
        return Err(LabError::shape(format!(
            "{} is empty: a batch needs at least one pair",
            names.policy_chosen
        )));
    }
    check_array(names.policy_chosen, x.policy_chosen, n, false)?;
    check_array(names.policy_rejected, x.policy_rejected, n, false)?;
    let needs_ref = kinds.iter().any(|k| k.uses_reference());
    if needs_ref || !x.reference_chosen.is_empty() || !x.reference_rejected.is_empty() {
        check_array(names.reference_chosen, x.reference_chosen, n, false)?;
        check_array(names.reference_rejected, x.reference_rejected, n, false)?;
    }
    let needs_len = kinds.iter().any(|k| k.uses_lengths());
    if needs_len || !x.chosen_lengths.is_empty() || !x.rejected_lengths.is_empty() {
        check_array(names.chosen_lengths, x.chosen_lengths, n, true)?;
        check_array(names.rejected_lengths, x.rejected_lengths, n, true)?;
    }
    if kinds.contains(&LossKind::Orpo) {
        for (name, logps, lens) in [
            (names.policy_chosen, x.policy_chosen, x.chosen_lengths),
            (names.policy_rejected, x.policy_rejected, x.rejected_lengths),
        ] {
            if let Some(i) = (0..n).find(|&i| logps[i] / lens[i] >= 0.0) {
                return Err(LabError::parse(format!(
                    "{name}[{i}] is {}; orpo needs log-probs < 0 (the odds p/(1−p) of p = 1 are infinite)",
                    logps[i]
                ))
                .in_field(name));
            }
        }
    }
    Ok(())
}

fn check_paired_kind(kind: LossKind) -> Result<()> {
    match kind.data_shape() {
        DataShape::Paired => Ok(()),
        DataShape::Unpaired => {
            Err(LabError::param("loss", format!("{kind} takes unpaired examples; use kto_loss")))
        }
        DataShape::Ranked => Err(LabError::param(
            "loss",
            format!("{kind} takes ranked lists; use plackett_luce_loss"),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Paired entry points
// ---------------------------------------------------------------------------------------

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Evaluate one paired loss (every kind with [`DataShape::Paired`], Dove included) on a batch.
pub fn paired_loss(kind: LossKind, params: &LossParams, x: &PairLogps) -> Result<LossOut> {
    mixed_loss(&LossMix::single(kind), params, x)
}

/// A weighted sum of paired losses, e.g. RPO = `[(Sigmoid, 1.0), (Sft, α)]`, like TRL 1.x
/// `loss_type=["sigmoid","sft"], loss_weights=[1, α]`: `loss = Σ_t w_t · mean(losses_t)`,
/// `losses[i] = Σ_t w_t · losses_t[i]`; the rewards come from the first term.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossMix {
    pub terms: Vec<(LossKind, f64)>,
}

impl LossMix {
    pub fn single(kind: LossKind) -> Self {
        LossMix { terms: vec![(kind, 1.0)] }
    }

    /// Parse `"sigmoid"`, `"sigmoid+0.5*sft"`, `"sigmoid + sft"` (weight 1 when omitted).
    /// Weights must lie in (0, [`MAX_PARAM`]]: a term of weight 0 does nothing, so it is
    /// more likely a slip than a wish, and is refused rather than silently ignored.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut terms = Vec::new();
        for part in split_terms(spec) {
            let part = part.trim();
            if part.is_empty() {
                return Err(LabError::param(
                    "loss",
                    format!("empty term in \"{spec}\"; write e.g. \"sigmoid+0.5*sft\""),
                ));
            }
            let (weight, name) = match part.split_once('*') {
                Some((w, name)) => {
                    let w = w.trim();
                    let weight: f64 = w.parse().map_err(|_| {
                        LabError::param("loss", format!("\"{w}\" in \"{spec}\" is not a number; write e.g. \"sigmoid+0.5*sft\""))
                    })?;
                    (weight, name.trim())
                }
                None => (1.0, part),
            };
            if !(weight > 0.0 && weight <= MAX_PARAM) {
                return Err(LabError::param(
                    "loss",
                    format!(
                        "weight {weight:?} of \"{name}\" in \"{spec}\" must be a number in (0, \
                         {MAX_PARAM:e}]; leave a term out rather than weighting it 0"
                    ),
                ));
            }
            terms.push((LossKind::from_name(name)?, weight));
        }
        Ok(LossMix { terms })
    }

    /// The spec form: `"sigmoid"`, `"sigmoid+0.5*sft"` (weights of 1 omitted); parses back.
    pub fn name(&self) -> String {
        self.terms
            .iter()
            .map(
                |&(k, w)| if w == 1.0 { k.name().to_string() } else { format!("{w}*{}", k.name()) },
            )
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The data shape all terms share; an error for an empty mix or mixed shapes.
    pub fn data_shape(&self) -> Result<DataShape> {
        let Some(&(first, _)) = self.terms.first() else {
            return Err(LabError::param("loss", "a loss mix needs at least one term"));
        };
        let shape = first.data_shape();
        if let Some(&(other, _)) = self.terms.iter().find(|(k, _)| k.data_shape() != shape) {
            return Err(LabError::param(
                "loss",
                format!(
                    "cannot mix {first} ({shape:?} data) with {other} ({:?} data)",
                    other.data_shape()
                ),
            ));
        }
        Ok(shape)
    }
}

/// Split a mix spec on '+', except a '+' in a number's exponent (`1e+3*sft`).
fn split_terms(spec: &str) -> Vec<&str> {
    let bytes = spec.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    for i in 0..bytes.len() {
        let in_exponent =
            i >= 2 && matches!(bytes[i - 1], b'e' | b'E') && bytes[i - 2].is_ascii_digit();
        if bytes[i] == b'+' && !in_exponent {
            parts.push(&spec[start..i]);
            start = i + 1;
        }
    }
    parts.push(&spec[start..]);
    parts
}

/// Evaluate a weighted sum of paired losses; see [`LossMix`].
pub fn mixed_loss(mix: &LossMix, params: &LossParams, x: &PairLogps) -> Result<LossOut> {
    mixed_loss_named(mix, params, x, &RUST_FIELDS)
}

fn mixed_loss_named(
    mix: &LossMix,
    params: &LossParams,
    x: &PairLogps,
    names: &PairFieldNames,
) -> Result<LossOut> {
    mix.data_shape()?;
    for &(kind, weight) in &mix.terms {
        check_paired_kind(kind)?;
        params.validate(kind)?;
        if !weight.is_finite() {
            return Err(LabError::param(
                "loss",
                format!("weight {weight} of {kind} must be finite"),
            ));
        }
    }
    let kinds: Vec<LossKind> = mix.terms.iter().map(|&(k, _)| k).collect();
    check_pairs(&kinds, x, names)?;
    let n = x.policy_chosen.len();
    let mut total = Term::zeros(n);
    let mut loss = 0.0;
    for &(kind, weight) in &mix.terms {
        let term = paired_term(kind, params, x);
        loss += weight * mean(&term.losses);
        for i in 0..n {
            total.losses[i] += weight * term.losses[i];
            total.d_pc[i] += weight * term.d_pc[i];
            total.d_pr[i] += weight * term.d_pr[i];
            total.d_rc[i] += weight * term.d_rc[i];
            total.d_rr[i] += weight * term.d_rr[i];
        }
    }
    let (chosen_rewards, rejected_rewards) = paired_rewards(kinds[0], params, x);
    Ok(LossOut {
        losses: total.losses,
        loss,
        chosen_rewards,
        rejected_rewards,
        d_policy_chosen: total.d_pc,
        d_policy_rejected: total.d_pr,
        d_reference_chosen: total.d_rc,
        d_reference_rejected: total.d_rr,
    })
}

// ---------------------------------------------------------------------------------------
// KTO (unpaired)
// ---------------------------------------------------------------------------------------

/// Unpaired examples: one completion each, labelled desirable or not.
#[derive(Debug, Clone, Copy)]
pub struct UnpairedLogps<'a> {
    pub policy: &'a [f64],
    pub reference: &'a [f64],
    /// Completion lengths; KTO does not read them (may be empty), checked when given.
    pub lengths: &'a [f64],
    pub desirable: &'a [bool],
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedLossOut {
    /// Per example, in input order (TRL concatenates desirable then undesirable; the mean is the same).
    pub losses: Vec<f64>,
    pub loss: f64,
    /// β(policy − reference) per example.
    pub rewards: Vec<f64>,
    /// z0, the KL estimate used as the reference point.
    pub kl: f64,
    /// d loss / d policy[i], with z0 held constant (detached, as in TRL).
    pub d_policy: Vec<f64>,
}

/// KTO: desirable `w_d(1 − σ(β(ρ − z0)))`, undesirable `w_u(1 − σ(β(z0 − ρ)))`, loss = mean.
/// Ethayarajh et al. 2024, eq. 7; TRL `KTOTrainer._compute_loss` (`loss_type="kto"`).
///
/// z0, our simplification: TRL estimates the KL term from *mismatched* pairs (each prompt with
/// another example's completion, a second forward pass per step), z0 = max(0, mean(KL_logps −
/// ref_KL_logps)), detached. We use the batch's own completions instead:
/// z0 = max(0, mean_i ρ_i) over every example of the batch, detached (no gradient flows through
/// it). This avoids a second forward pass; it estimates the same quantity (the policy's KL from
/// the reference on the batch's prompts) with in-distribution completions, so it is biased
/// upward once training raises the desirable ρ. Documented here so numbers are not compared
/// with TRL's `kl` as if equal.
pub fn kto_loss(params: &LossParams, x: &UnpairedLogps) -> Result<UnpairedLossOut> {
    params.validate(LossKind::Kto)?;
    let n = x.policy.len();
    if n == 0 {
        return Err(LabError::shape("policy is empty: a batch needs at least one example"));
    }
    check_array("policy", x.policy, n, false)?;
    check_array("reference", x.reference, n, false)?;
    if !x.lengths.is_empty() {
        check_array("lengths", x.lengths, n, true)?;
    }
    if x.desirable.len() != n {
        return Err(LabError::shape(format!(
            "desirable has {} entries but there are {n} examples",
            x.desirable.len()
        )));
    }
    let z0 = kto_reference_point(x);
    Ok(kto_with_reference_point(params, x, z0))
}

/// z0 = max(0, mean ρ) over the batch (see [`kto_loss`]).
fn kto_reference_point(x: &UnpairedLogps) -> f64 {
    let n = x.policy.len();
    let mean_rho = (0..n).map(|i| x.policy[i] - x.reference[i]).sum::<f64>() / n as f64;
    mean_rho.max(0.0)
}

fn kto_with_reference_point(params: &LossParams, x: &UnpairedLogps, z0: f64) -> UnpairedLossOut {
    let n = x.policy.len();
    let beta = params.beta;
    let mut losses = vec![0.0; n];
    let mut d_policy = vec![0.0; n];
    for i in 0..n {
        let rho = x.policy[i] - x.reference[i];
        if x.desirable[i] {
            let w = params.kto_desirable_weight;
            let s = sigmoid(beta * (rho - z0));
            losses[i] = w * (1.0 - s);
            d_policy[i] = -w * beta * s * (1.0 - s) / n as f64;
        } else {
            let w = params.kto_undesirable_weight;
            let s = sigmoid(beta * (z0 - rho));
            losses[i] = w * (1.0 - s);
            d_policy[i] = w * beta * s * (1.0 - s) / n as f64;
        }
    }
    let rewards = (0..n).map(|i| beta * (x.policy[i] - x.reference[i])).collect();
    UnpairedLossOut { loss: mean(&losses), losses, rewards, kl: z0, d_policy }
}

// ---------------------------------------------------------------------------------------
// Plackett–Luce (ranked lists)
// ---------------------------------------------------------------------------------------

/// Per prompt, K ≥ 2 responses best first (K may differ between prompts).
#[derive(Debug, Clone, Copy)]
pub struct RankedLogps<'a> {
    pub policy: &'a [Vec<f64>],
    pub reference: &'a [Vec<f64>],
}

#[derive(Debug, Clone, PartialEq)]
pub struct RankedLossOut {
    /// Per prompt.
    pub losses: Vec<f64>,
    /// Mean over prompts.
    pub loss: f64,
    /// β(policy − reference) per response.
    pub rewards: Vec<Vec<f64>>,
    /// d loss / d policy[p][k].
    pub d_policy: Vec<Vec<f64>>,
}

/// Plackett–Luce DPO: with s_k = βρ_k in ranked order, −Σ_k log[exp(s_k) / Σ_{j≥k} exp(s_j)].
/// Rafailov et al. 2023, appendix A.3 (the DPO objective under the Plackett–Luce model). For
/// K = 2 it equals `sigmoid`. ∂/∂s_j = Σ_{k≤j} softmax_{i≥k}(s)_j − 1.
pub fn plackett_luce_loss(params: &LossParams, x: &RankedLogps) -> Result<RankedLossOut> {
    params.validate(LossKind::PlackettLuce)?;
    if x.policy.is_empty() {
        return Err(LabError::shape("policy is empty: a batch needs at least one ranked list"));
    }
    if x.reference.len() != x.policy.len() {
        return Err(LabError::shape(format!(
            "reference has {} lists but policy has {}",
            x.reference.len(),
            x.policy.len()
        )));
    }
    for (p, (pol, rf)) in x.policy.iter().zip(x.reference).enumerate() {
        if pol.len() < 2 {
            return Err(LabError::shape(format!(
                "policy[{p}] has {} responses; a ranking needs at least 2",
                pol.len()
            )));
        }
        if rf.len() != pol.len() {
            return Err(LabError::shape(format!(
                "reference[{p}] has {} responses but policy[{p}] has {}",
                rf.len(),
                pol.len()
            )));
        }
        check_finite(&format!("policy[{p}]"), pol)?;
        check_finite(&format!("reference[{p}]"), rf)?;
    }
    let beta = params.beta;
    let n_lists = x.policy.len() as f64;
    let mut losses = Vec::with_capacity(x.policy.len());
    let mut rewards = Vec::with_capacity(x.policy.len());
    let mut d_policy = Vec::with_capacity(x.policy.len());
    for (pol, rf) in x.policy.iter().zip(x.reference) {
        let k_len = pol.len();
        let s: Vec<f64> = (0..k_len).map(|k| beta * (pol[k] - rf[k])).collect();
        let mut loss = 0.0;
        let mut d_s = vec![-1.0; k_len];
        for k in 0..k_len {
            let tail = &s[k..];
            let max = tail.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = tail.iter().map(|v| (v - max).exp()).sum();
            let lse = max + sum.ln();
            loss += lse - s[k];
            for j in k..k_len {
                d_s[j] += (s[j] - lse).exp();
            }
        }
        losses.push(loss);
        rewards.push(s);
        d_policy.push(d_s.iter().map(|g| g * beta / n_lists).collect());
    }
    Ok(RankedLossOut { loss: mean(&losses), losses, rewards, d_policy })
}

// ---------------------------------------------------------------------------------------
// The `alignlab losses` CLI
// ---------------------------------------------------------------------------------------

/// A required array of numbers, each finite and within `[lo, hi]` (`what` says what the
/// numbers are, for the message).
fn json_f64_array(
    input: &serde_json::Value,
    field: &str,
    (lo, hi): (f64, f64),
    what: &str,
) -> Result<Vec<f64>> {
    let value = input.get(field).ok_or_else(|| {
        LabError::parse("missing field (an array of numbers is required)").in_field(field)
    })?;
    let items = value.as_array().ok_or_else(|| {
        LabError::parse(format!("expected an array of numbers, got {}", json::brief(value)))
            .in_field(field)
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(x),
            Some(x) => Err(LabError::parse(format!(
                "{field}[{i}] is {x:?}; {what} must lie in [{lo:e}, {hi:e}]"
            ))
            .in_field(field)),
            None => {
                Err(LabError::parse(format!("{field}[{i}] is {}, not a number", json::brief(v)))
                    .in_field(field))
            }
        })
        .collect()
}

/// Read the `params` object: any [`LossParams`] field, defaults for the rest. When
/// `exo_epsilon` is not given and `label_smoothing` > 0, EXO's ε is `label_smoothing` (TRL's
/// `exo_pair` reads it there; with `label_smoothing` = 0 TRL refuses exo_pair, we use 1e-3).
fn json_params(input: &serde_json::Value) -> Result<LossParams> {
    let mut params = LossParams::default();
    let Some(value) = input.get("params") else { return Ok(params) };
    let obj = value.as_object().ok_or_else(|| {
        LabError::parse(format!("expected an object, got {}", json::brief(value)))
            .in_field("params")
    })?;
    let mut exo_given = false;
    for (key, v) in obj {
        let slot = match key.as_str() {
            "beta" => &mut params.beta,
            "label_smoothing" => &mut params.label_smoothing,
            "simpo_gamma" => &mut params.simpo_gamma,
            "discopop_tau" => &mut params.discopop_tau,
            "exo_epsilon" => {
                exo_given = true;
                &mut params.exo_epsilon
            }
            "cpo_alpha" => &mut params.cpo_alpha,
            "kto_desirable_weight" => &mut params.kto_desirable_weight,
            "kto_undesirable_weight" => &mut params.kto_undesirable_weight,
            other => {
                return Err(LabError::parse(format!(
                    "unknown parameter {:?}; known: beta, label_smoothing, simpo_gamma, discopop_tau, exo_epsilon, cpo_alpha, kto_desirable_weight, kto_undesirable_weight",
                    json::brief_str(other)
                ))
                .in_field("params"))
            }
        };
        *slot = v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
            LabError::parse(format!("{} is not a finite number", json::brief(v)))
                .in_field(&format!("params.{key}"))
        })?;
    }
    if !exo_given && params.label_smoothing > 0.0 {
        params.exo_epsilon = params.label_smoothing;
    }
    Ok(params)
}

/// A parameter error as an error of the input's `params.<name>` field.
fn in_params(err: LabError) -> LabError {
    match err {
        LabError::InvalidParam { name, msg } => {
            LabError::parse(msg).in_field(&format!("params.{name}"))
        }
        other => other,
    }
}

/// The first non-finite number of a loss's output, as an error naming the loss and the entry.
fn check_output_finite(kind: LossKind, out: &LossOut) -> Result<()> {
    let arrays: [(&str, &[f64]); 4] = [
        ("loss", std::slice::from_ref(&out.loss)),
        ("losses", &out.losses),
        ("chosen_rewards", &out.chosen_rewards),
        ("rejected_rewards", &out.rejected_rewards),
    ];
    for (name, values) in arrays {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let entry = if name == "loss" { name.to_string() } else { format!("{name}[{i}]") };
            return Err(LabError::parse(format!(
                "{entry} would be {:?}: the log-probs and params are too extreme for {kind} to \
                 give a finite value; use smaller log-prob differences or a smaller beta",
                values[i]
            ))
            .in_field(kind.name()));
        }
    }
    Ok(())
}

/// The `alignlab losses` CLI: evaluate every paired loss of the zoo (TRL's 15 DPO types, cDPO,
/// SimPO, CPO, ORPO, DOVE) and, under TRL's trainer names, `cpo_trainer_simpo`,
/// `cpo_trainer_sigmoid` and `orpo_odds_ratio` in TRL's conventions, on JSON input with schema
/// `{"policy_chosen_logps": [...], "policy_rejected_logps": [...], "reference_chosen_logps": [...],
/// "reference_rejected_logps": [...], "chosen_lengths": [...], "rejected_lengths": [...],
/// "params": {"beta": 0.1, "label_smoothing": 0.1, "simpo_gamma": 0.5, "discopop_tau": 0.05}}`
/// (all six arrays required; `params` optional, defaults as [`LossParams::default`]) and return
/// `{"<loss name>": {"losses": [...], "loss": x, "chosen_rewards": [...], "rejected_rewards": [...]}, ...}`.
/// Parse errors name the field (and the index for a non-number or out-of-range entry):
/// log-probs must lie within ±[`MAX_ABS_LOGP`], lengths in (0, [`MAX_LENGTH`]], params as
/// [`LossParams::validate`] (named `params.<name>`). Every number of the output is finite; a
/// loss that would overflow is an error naming it, never a `null`.
/// `exo_pair` takes ε from `label_smoothing` when that is > 0 (TRL's behaviour), else
/// `params.exo_epsilon` (default 1e-3); `robust` needs `label_smoothing` < 0.5.
///
/// The zoo's two losses of other data shapes take their own input, told apart by its fields:
/// - unpaired (`kto`): `{"policy_logps": [...], "reference_logps": [...], "labels": [true,
///   false, ...], "params": {...}}`, one completion per entry and `labels` true for a
///   desirable one (TRL's KTO field `label`), returning `{"kto": {"losses", "loss", "rewards",
///   "kl"}}` (`kl` is z0, the reference point; see [`kto_loss`] for how ours differs from
///   TRL's);
/// - ranked (`plackett_luce`): `{"policy_logps": [[...], ...], "reference_logps": [[...],
///   ...], "params": {...}}`, one list per prompt, best response first, returning
///   `{"plackett_luce": {"losses", "loss", "rewards"}}`.
pub fn evaluate_trl_losses(input: &serde_json::Value) -> Result<serde_json::Value> {
    if !input.is_object() {
        return Err(LabError::parse(format!(
            "expected a JSON object with the log-prob arrays, got {}",
            json::brief(input)
        )));
    }
    if input.get(JSON_FIELDS.policy_chosen).is_none() {
        if input.get("labels").is_some() {
            return evaluate_unpaired(input);
        }
        if input
            .get("policy_logps")
            .and_then(|v| v.as_array())
            .is_some_and(|items| items.first().is_some_and(serde_json::Value::is_array))
        {
            return evaluate_ranked(input);
        }
        if input.get("policy_logps").is_some() {
            return Err(LabError::parse(
                "policy_logps without labels: give \"labels\" (true = desirable) for KTO, or \
                 lists of log-probs (best first) for Plackett-Luce",
            )
            .in_field("labels"));
        }
    }
    let logp = (-MAX_ABS_LOGP, MAX_ABS_LOGP);
    let length = (f64::MIN_POSITIVE, MAX_LENGTH);
    let pc = json_f64_array(input, JSON_FIELDS.policy_chosen, logp, "log-probs")?;
    let pr = json_f64_array(input, JSON_FIELDS.policy_rejected, logp, "log-probs")?;
    let rc = json_f64_array(input, JSON_FIELDS.reference_chosen, logp, "log-probs")?;
    let rr = json_f64_array(input, JSON_FIELDS.reference_rejected, logp, "log-probs")?;
    let lc = json_f64_array(input, JSON_FIELDS.chosen_lengths, length, "completion lengths")?;
    let lr = json_f64_array(input, JSON_FIELDS.rejected_lengths, length, "completion lengths")?;
    let params = json_params(input)?;
    let x = PairLogps {
        policy_chosen: &pc,
        policy_rejected: &pr,
        reference_chosen: &rc,
        reference_rejected: &rr,
        chosen_lengths: &lc,
        rejected_lengths: &lr,
    };
    let paired: Vec<LossKind> =
        LossKind::ALL.into_iter().filter(|k| k.data_shape() == DataShape::Paired).collect();
    check_pairs(&LossKind::TRL_DPO, &x, &JSON_FIELDS)?;
    let entry = |r: &LossOut| {
        serde_json::json!({
            "losses": r.losses,
            "loss": r.loss,
            "chosen_rewards": r.chosen_rewards,
            "rejected_rewards": r.rejected_rewards,
        })
    };
    let run = |kind: LossKind, params: &LossParams| -> Result<LossOut> {
        let r = mixed_loss_named(&LossMix::single(kind), params, &x, &JSON_FIELDS)
            .map_err(in_params)?;
        check_output_finite(kind, &r)?;
        Ok(r)
    };
    let mut out = serde_json::Map::new();
    // TRL's 15 DPO types must all evaluate: an input they cannot take is an error.
    for kind in LossKind::TRL_DPO {
        out.insert(kind.name().to_string(), entry(&run(kind, &params)?));
    }
    // The rest of the zoo, and TRL's other trainers under their names and conventions:
    // CPOTrainer's preference term (`cpo_loss`: simpo, and sigmoid without the NLL it adds
    // separately) and ORPOTrainer's odds-ratio term (`odds_ratio_loss`: β·log σ(log odds
    // ratio), which the trainer subtracts from the NLL; ours is the whole NLL − that). These
    // have their own conditions (ORPO needs log-probs < 0); one they do not meet is reported
    // in its entry as {"error": …} while the others are still given.
    let orpo_odds = || -> Result<serde_json::Value> {
        let orpo = run(LossKind::Orpo, &params)?;
        let nll = run(LossKind::Sft, &params)?.loss;
        let odds: Vec<f64> = orpo.losses.iter().map(|l| nll - l).collect();
        Ok(serde_json::json!({
            "losses": odds,
            "loss": nll - orpo.loss,
            "chosen_rewards": orpo.chosen_rewards,
            "rejected_rewards": orpo.rejected_rewards,
        }))
    };
    let no_nll = LossParams { cpo_alpha: 0.0, ..params };
    let mut extras: Vec<(String, Result<serde_json::Value>)> = paired
        .into_iter()
        .filter(|k| !LossKind::TRL_DPO.contains(k))
        .map(|k| (k.name().to_string(), run(k, &params).map(|r| entry(&r))))
        .collect();
    extras.push(("cpo_trainer_simpo".into(), run(LossKind::Simpo, &params).map(|r| entry(&r))));
    extras.push(("cpo_trainer_sigmoid".into(), run(LossKind::Cpo, &no_nll).map(|r| entry(&r))));
    extras.push(("orpo_odds_ratio".into(), orpo_odds()));
    for (name, result) in extras {
        let value = result.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        out.insert(name, value);
    }
    Ok(serde_json::Value::Object(out))
}

/// `kto` on unpaired input (see [`evaluate_trl_losses`]).
fn evaluate_unpaired(input: &serde_json::Value) -> Result<serde_json::Value> {
    let logp = (-MAX_ABS_LOGP, MAX_ABS_LOGP);
    let policy = json_f64_array(input, "policy_logps", logp, "log-probs")?;
    let reference = json_f64_array(input, "reference_logps", logp, "log-probs")?;
    let labels = input.get("labels").and_then(|v| v.as_array()).ok_or_else(|| {
        LabError::parse("expected an array of true/false (true = desirable)").in_field("labels")
    })?;
    let desirable = labels
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_bool().ok_or_else(|| {
                LabError::parse(format!("labels[{i}] is {}, not true or false", json::brief(v)))
                    .in_field("labels")
            })
        })
        .collect::<Result<Vec<bool>>>()?;
    let n = policy.len();
    for (name, len) in [("reference_logps", reference.len()), ("labels", desirable.len())] {
        if len != n {
            return Err(LabError::parse(format!("has {len} entries but policy_logps has {n}"))
                .in_field(name));
        }
    }
    let params = json_params(input)?;
    let x = UnpairedLogps {
        policy: &policy,
        reference: &reference,
        lengths: &[],
        desirable: &desirable,
    };
    let out = kto_loss(&params, &x).map_err(in_params)?;
    Ok(serde_json::json!({ "kto": {
        "losses": out.losses,
        "loss": out.loss,
        "rewards": out.rewards,
        "kl": out.kl,
    }}))
}

/// A list of lists of numbers (ranked log-probs), each within `(lo, hi)`; errors name the
/// field and the entry.
fn json_f64_lists(input: &serde_json::Value, field: &str) -> Result<Vec<Vec<f64>>> {
    let value = input.get(field).ok_or_else(|| {
        LabError::parse("missing field (a list of lists of log-probs is required)").in_field(field)
    })?;
    let lists = value.as_array().ok_or_else(|| {
        LabError::parse(format!("expected a list of lists, got {}", json::brief(value)))
            .in_field(field)
    })?;
    lists
        .iter()
        .enumerate()
        .map(|(p, list)| {
            let wrapped = serde_json::json!({ format!("{field}[{p}]"): list });
            json_f64_array(
                &wrapped,
                &format!("{field}[{p}]"),
                (-MAX_ABS_LOGP, MAX_ABS_LOGP),
                "log-probs",
            )
            .map_err(|e| match e {
                LabError::Parse { msg, .. } => LabError::parse(msg).in_field(field),
                other => other,
            })
        })
        .collect()
}

/// `plackett_luce` on ranked input (see [`evaluate_trl_losses`]).
fn evaluate_ranked(input: &serde_json::Value) -> Result<serde_json::Value> {
    let policy = json_f64_lists(input, "policy_logps")?;
    let reference = json_f64_lists(input, "reference_logps")?;
    let params = json_params(input)?;
    let out = plackett_luce_loss(&params, &RankedLogps { policy: &policy, reference: &reference })
        .map_err(in_params)?;
    Ok(serde_json::json!({ "plackett_luce": {
        "losses": out.losses,
        "loss": out.loss,
        "rewards": out.rewards,
    }}))
}

/// [`evaluate_trl_losses`] on the input's text, parsed strictly ([`json::parse_unique`]: a
/// key given twice, e.g. two `params`, is an error with its line). The caller adds the file
/// with [`LabError::in_file`].
pub fn evaluate_trl_losses_json(text: &str) -> Result<serde_json::Value> {
    evaluate_trl_losses(&json::parse_unique(text)?)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a tiny deterministic generator so the tests need no dependency.
    struct TestRng(u64);
    impl TestRng {
        fn next_f64(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.next_f64()
        }
    }

    /// Owned inputs for a batch of pairs.
    #[derive(Clone)]
    struct Batch {
        pc: Vec<f64>,
        pr: Vec<f64>,
        rc: Vec<f64>,
        rr: Vec<f64>,
        lc: Vec<f64>,
        lr: Vec<f64>,
    }
    impl Batch {
        fn view(&self) -> PairLogps<'_> {
            PairLogps {
                policy_chosen: &self.pc,
                policy_rejected: &self.pr,
                reference_chosen: &self.rc,
                reference_rejected: &self.rr,
                chosen_lengths: &self.lc,
                rejected_lengths: &self.lr,
            }
        }
        fn random(rng: &mut TestRng, n: usize) -> Batch {
            let mut b =
                Batch { pc: vec![], pr: vec![], rc: vec![], rr: vec![], lc: vec![], lr: vec![] };
            for _ in 0..n {
                let lc = (1.0 + rng.uniform(0.0, 20.0)).floor();
                let lr = (1.0 + rng.uniform(0.0, 20.0)).floor();
                b.lc.push(lc);
                b.lr.push(lr);
                // log-probs around −1.5 nats per token, policy and reference a few nats apart
                b.rc.push(-lc * rng.uniform(0.5, 2.5));
                b.rr.push(-lr * rng.uniform(0.5, 2.5));
                b.pc.push(b.rc.last().unwrap() + rng.uniform(-8.0, 8.0));
                b.pr.push(b.rr.last().unwrap() + rng.uniform(-8.0, 8.0));
            }
            // ORPO needs every log-prob < 0
            for v in b.pc.iter_mut().chain(b.pr.iter_mut()) {
                *v = v.min(-0.05);
            }
            b
        }
        fn one(pc: f64, pr: f64, rc: f64, rr: f64, lc: f64, lr: f64) -> Batch {
            Batch {
                pc: vec![pc],
                pr: vec![pr],
                rc: vec![rc],
                rr: vec![rr],
                lc: vec![lc],
                lr: vec![lr],
            }
        }
    }

    fn eval(kind: LossKind, params: &LossParams, b: &Batch) -> LossOut {
        paired_loss(kind, params, &b.view()).unwrap()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    const LN2: f64 = std::f64::consts::LN_2;

    /// Central finite differences of `loss` w.r.t. every input, h = 1e-6; tolerance 1e-6
    /// (absolute + relative). The loss is O(1) and smooth away from kinks/ties, so the FD error
    /// is ~h²·f''' + ε_mach/h ≈ 1e-10.
    fn check_gradients(kind: LossKind, params: &LossParams, b: &Batch) {
        let out = eval(kind, params, b);
        let h = 1e-6;
        let grads = [
            &out.d_policy_chosen,
            &out.d_policy_rejected,
            &out.d_reference_chosen,
            &out.d_reference_rejected,
        ];
        for (which, grad) in grads.iter().enumerate() {
            for i in 0..b.pc.len() {
                let bump = |delta: f64| {
                    let mut bb = b.clone();
                    let arr = match which {
                        0 => &mut bb.pc,
                        1 => &mut bb.pr,
                        2 => &mut bb.rc,
                        _ => &mut bb.rr,
                    };
                    arr[i] += delta;
                    eval(kind, params, &bb).loss
                };
                let fd = (bump(h) - bump(-h)) / (2.0 * h);
                assert!(
                    (grad[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "{kind}: input {which} index {i}: analytic {} vs finite difference {fd}",
                    grad[i]
                );
            }
        }
    }

    fn paired_kinds() -> Vec<LossKind> {
        LossKind::ALL.iter().copied().filter(|k| k.data_shape() == DataShape::Paired).collect()
    }

    #[test]
    fn gradients_match_finite_differences_for_every_paired_loss() {
        let mut rng = TestRng(7);
        for params in [
            LossParams::default(),
            LossParams {
                beta: 0.5,
                label_smoothing: 0.2,
                simpo_gamma: 1.0,
                discopop_tau: 0.3,
                exo_epsilon: 0.01,
                cpo_alpha: 0.7,
                ..Default::default()
            },
        ] {
            for trial in 0..5 {
                let b = Batch::random(&mut rng, 4 + trial);
                for kind in paired_kinds() {
                    // hinge has a kink at βΔ = 1; aot sorts: keep clear of both.
                    if kind == LossKind::Hinge {
                        let near_kink = (0..b.pc.len()).any(|i| {
                            let d = (b.pc[i] - b.rc[i]) - (b.pr[i] - b.rr[i]);
                            (1.0 - params.beta * d).abs() < 1e-4
                        });
                        assert!(!near_kink, "test data sits on hinge's kink; change the seed");
                    }
                    check_gradients(kind, &params, &b);
                }
            }
        }
    }

    #[test]
    fn gradients_of_a_mix_match_finite_differences() {
        let mut rng = TestRng(11);
        let b = Batch::random(&mut rng, 6);
        let mix = LossMix::parse("sigmoid+0.3*sft+0.5*ipo").unwrap();
        let params = LossParams::default();
        let out = mixed_loss(&mix, &params, &b.view()).unwrap();
        let h = 1e-6;
        for i in 0..6 {
            let f = |d: f64| {
                let mut bb = b.clone();
                bb.pc[i] += d;
                mixed_loss(&mix, &params, &bb.view()).unwrap().loss
            };
            let fd = (f(h) - f(-h)) / (2.0 * h);
            assert!(close(out.d_policy_chosen[i], fd, 1e-6), "{} vs {fd}", out.d_policy_chosen[i]);
        }
    }

    #[test]
    fn kto_gradient_matches_finite_differences_with_z0_held() {
        let mut rng = TestRng(3);
        let n = 7;
        let policy: Vec<f64> = (0..n).map(|_| rng.uniform(-40.0, -5.0)).collect();
        let reference: Vec<f64> = policy.iter().map(|p| p + rng.uniform(-6.0, 1.0)).collect();
        let desirable: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
        let params = LossParams {
            beta: 0.3,
            kto_desirable_weight: 1.3,
            kto_undesirable_weight: 0.8,
            ..Default::default()
        };
        let x = UnpairedLogps {
            policy: &policy,
            reference: &reference,
            lengths: &[],
            desirable: &desirable,
        };
        let out = kto_loss(&params, &x).unwrap();
        assert!(out.kl > 0.0, "the test should exercise a positive z0");
        let h = 1e-6;
        for i in 0..n {
            let f = |d: f64| {
                let mut p = policy.clone();
                p[i] += d;
                let xx = UnpairedLogps {
                    policy: &p,
                    reference: &reference,
                    lengths: &[],
                    desirable: &desirable,
                };
                kto_with_reference_point(&params, &xx, out.kl).loss
            };
            let fd = (f(h) - f(-h)) / (2.0 * h);
            assert!(close(out.d_policy[i], fd, 1e-6), "kto {i}: {} vs {fd}", out.d_policy[i]);
        }
    }

    #[test]
    fn plackett_luce_gradient_matches_finite_differences() {
        let mut rng = TestRng(5);
        let policy: Vec<Vec<f64>> = [2, 3, 5, 4]
            .iter()
            .map(|&k| (0..k).map(|_| rng.uniform(-30.0, -3.0)).collect())
            .collect();
        let reference: Vec<Vec<f64>> =
            policy.iter().map(|l| l.iter().map(|p| p + rng.uniform(-5.0, 5.0)).collect()).collect();
        let params = LossParams { beta: 0.4, ..Default::default() };
        let out =
            plackett_luce_loss(&params, &RankedLogps { policy: &policy, reference: &reference })
                .unwrap();
        let h = 1e-6;
        for p in 0..policy.len() {
            for k in 0..policy[p].len() {
                let f = |d: f64| {
                    let mut pol = policy.clone();
                    pol[p][k] += d;
                    plackett_luce_loss(
                        &params,
                        &RankedLogps { policy: &pol, reference: &reference },
                    )
                    .unwrap()
                    .loss
                };
                let fd = (f(h) - f(-h)) / (2.0 * h);
                assert!(
                    close(out.d_policy[p][k], fd, 1e-6),
                    "pl [{p}][{k}]: {} vs {fd}",
                    out.d_policy[p][k]
                );
            }
        }
    }

    // ---- golden values ----

    #[test]
    fn golden_values_at_zero_margin() {
        // every log-ratio 0: ρw = ρl = Δ = 0, β = 0.1 (1/(2β) = 5)
        let b = Batch::one(-4.0, -6.0, -4.0, -6.0, 2.0, 3.0);
        let p = LossParams::default();
        let at = |k| eval(k, &p, &b).losses[0];
        assert!(close(at(LossKind::Sigmoid), LN2, 1e-15));
        assert!(close(at(LossKind::Dove), LN2, 1e-15));
        assert!(close(at(LossKind::Cdpo), LN2, 1e-15));
        assert!(close(at(LossKind::Hinge), 1.0, 1e-15));
        assert!(close(at(LossKind::Ipo), 25.0, 1e-15));
        assert!(close(at(LossKind::SppoHard), 50.0, 1e-15));
        assert!(close(at(LossKind::NcaPair), 2.0 * LN2, 1e-15));
        assert!(close(at(LossKind::BcoPair), 2.0 * LN2, 1e-15));
        assert!(close(at(LossKind::ApoZero), 1.0, 1e-15));
        assert!(close(at(LossKind::ApoDown), 1.0, 1e-15));
        assert!(close(at(LossKind::Discopop), 0.5 * LN2 + 0.5, 1e-15));
        assert!(close(at(LossKind::SigmoidNorm), LN2, 1e-15));
        assert!(close(at(LossKind::Aot), LN2, 1e-15));
        assert!(close(at(LossKind::AotUnpaired), LN2, 1e-15));
        let eps: f64 = 1e-3;
        let exo = 0.5 * (0.5f64.ln() - (1.0 - eps).ln()) + 0.5 * (0.5f64.ln() - eps.ln());
        assert!(close(at(LossKind::ExoPair), exo, 1e-14));
        // sft: −(−4)/2 = 2 nats per token
        assert!(close(at(LossKind::Sft), 2.0, 1e-15));
        // robust at Δ = 0 with any ε: [(1−ε) ln2 − ε ln2]/(1 − 2ε) = ln 2
        let pr = LossParams { label_smoothing: 0.3, ..p };
        assert!(close(eval(LossKind::Robust, &pr, &b).losses[0], LN2, 1e-14));
        // rewards are β·ρ = 0
        assert_eq!(eval(LossKind::Sigmoid, &p, &b).chosen_rewards, vec![0.0]);
    }

    #[test]
    fn golden_values_off_zero() {
        // Δ = (−3 − −5) − (−9 − −6) = 2 − (−3) = 5; β = 0.1 → z = 0.5
        let b = Batch::one(-3.0, -9.0, -5.0, -6.0, 4.0, 2.0);
        let p = LossParams::default();
        let at = |k| eval(k, &p, &b).losses[0];
        // −log σ(0.5) = ln(1 + e^{−0.5})
        assert!(close(at(LossKind::Sigmoid), (1.0 + (-0.5f64).exp()).ln(), 1e-15));
        assert!(close(at(LossKind::Hinge), 0.5, 1e-15));
        // ipo: ρw/|yw| − ρl/|yl| = 2/4 − (−3)/2 = 2; (2 − 5)² = 9
        assert!(close(at(LossKind::Ipo), 9.0, 1e-15));
        // sppo: (2 − 5)² + (−3 + 5)² = 13
        assert!(close(at(LossKind::SppoHard), 13.0, 1e-15));
        // simpo: β·(−3/4) − β·(−9/2) − 0.5 = −0.075 + 0.45 − 0.5 = −0.125
        assert!(close(at(LossKind::Simpo), (1.0 + 0.125f64.exp()).ln(), 1e-14));
        // cpo: −log σ(0.1·6) + 1·(3/4)
        assert!(close(at(LossKind::Cpo), (1.0 + (-0.6f64).exp()).ln() + 0.75, 1e-14));
        // orpo: aw = −0.75, al = −4.5
        let (aw, al) = (-0.75f64, -4.5f64);
        let log_odds = (aw - al) - ((1.0 - aw.exp()).ln() - (1.0 - al.exp()).ln());
        let orpo = 0.75 - 0.1 * -(1.0 + (-log_odds).exp()).ln();
        assert!(close(at(LossKind::Orpo), orpo, 1e-14));
        // rewards: β·ρ for DPO types, β·avg for simpo/orpo, β·l for cpo
        let s = eval(LossKind::Sigmoid, &p, &b);
        assert!(
            close(s.chosen_rewards[0], 0.2, 1e-15) && close(s.rejected_rewards[0], -0.3, 1e-15)
        );
        let o = eval(LossKind::Orpo, &p, &b);
        assert!(
            close(o.chosen_rewards[0], -0.075, 1e-15) && close(o.rejected_rewards[0], -0.45, 1e-15)
        );
        let c = eval(LossKind::Cpo, &p, &b);
        assert!(
            close(c.chosen_rewards[0], -0.3, 1e-15) && close(c.rejected_rewards[0], -0.9, 1e-15)
        );
    }

    #[test]
    fn sft_is_a_token_mean_over_the_whole_batch() {
        let b = Batch {
            pc: vec![-2.0, -10.0, -3.0],
            pr: vec![-1.0; 3],
            rc: vec![-1.0; 3],
            rr: vec![-1.0; 3],
            lc: vec![1.0, 5.0, 4.0],
            lr: vec![1.0; 3],
        };
        let out = eval(LossKind::Sft, &LossParams::default(), &b);
        assert_eq!(out.losses, vec![1.5; 3]); // 15 nats / 10 tokens, not the mean of per-pair means
        assert!(close(out.loss, 1.5, 1e-15));
        assert_eq!(out.d_policy_chosen, vec![-0.1; 3]);
        assert_eq!(out.d_reference_chosen, vec![0.0; 3]);
    }

    #[test]
    fn aot_sorts_across_the_batch() {
        // u = lw − ll = [3, −1], v = rw − rl = [−2, 4]; sorted: u = [−1, 3], v = [−2, 4];
        // δ = [1, −1]
        let b = Batch {
            pc: vec![0.0, 0.0],
            pr: vec![-3.0, 1.0],
            rc: vec![0.0, 0.0],
            rr: vec![2.0, -4.0],
            lc: vec![1.0; 2],
            lr: vec![1.0; 2],
        };
        let p = LossParams { beta: 1.0, ..Default::default() };
        let out = eval(LossKind::Aot, &p, &b);
        assert!(close(out.losses[0], -log_sigmoid(1.0), 1e-15));
        assert!(close(out.losses[1], -log_sigmoid(-1.0), 1e-15));
    }

    #[test]
    fn properties_that_tie_losses_together() {
        let mut rng = TestRng(42);
        let b = Batch::random(&mut rng, 8);
        let p = LossParams::default();
        let sig = eval(LossKind::Sigmoid, &p, &b);
        // robust and cdpo with ε = 0 are sigmoid
        assert_eq!(eval(LossKind::Robust, &p, &b).losses, sig.losses);
        assert_eq!(eval(LossKind::Cdpo, &p, &b).losses, sig.losses);
        // TRL 1.x sigmoid ignores label smoothing
        let smoothed = LossParams { label_smoothing: 0.2, ..p };
        assert_eq!(eval(LossKind::Sigmoid, &smoothed, &b), sig);
        assert_ne!(eval(LossKind::Cdpo, &smoothed, &b).losses, sig.losses);
        // sigmoid + 0·sft is sigmoid (a spec refuses weight 0; a mix built in code may have it)
        let zero_sft = LossMix { terms: vec![(LossKind::Sigmoid, 1.0), (LossKind::Sft, 0.0)] };
        let mix = mixed_loss(&zero_sft, &p, &b.view()).unwrap();
        for i in 0..8 {
            assert!(close(mix.losses[i], sig.losses[i], 1e-15));
        }
        assert!(close(mix.loss, sig.loss, 1e-15));
        // RPO = sigmoid + α·sft: loss adds α times the batch NLL
        let rpo = mixed_loss(&LossMix::parse("sigmoid+0.5*sft").unwrap(), &p, &b.view()).unwrap();
        let nll = eval(LossKind::Sft, &p, &b).loss;
        assert!(close(rpo.loss, sig.loss + 0.5 * nll, 1e-14));
        assert_eq!(rpo.chosen_rewards, sig.chosen_rewards);
        // aot_unpaired on a single pair is cdpo on that pair
        let one = Batch::one(b.pc[0], b.pr[0], b.rc[0], b.rr[0], 1.0, 1.0);
        assert!(close(
            eval(LossKind::AotUnpaired, &smoothed, &one).loss,
            eval(LossKind::Cdpo, &smoothed, &one).loss,
            1e-15
        ));
        // Plackett–Luce with K = 2 is sigmoid
        let policy: Vec<Vec<f64>> = (0..8).map(|i| vec![b.pc[i], b.pr[i]]).collect();
        let reference: Vec<Vec<f64>> = (0..8).map(|i| vec![b.rc[i], b.rr[i]]).collect();
        let pl = plackett_luce_loss(&p, &RankedLogps { policy: &policy, reference: &reference })
            .unwrap();
        for i in 0..8 {
            assert!(
                close(pl.losses[i], sig.losses[i], 1e-13),
                "{} vs {}",
                pl.losses[i],
                sig.losses[i]
            );
        }
        // loss is the mean of losses for every paired kind
        for kind in paired_kinds() {
            let out = eval(kind, &smoothed, &b);
            assert!(close(out.loss, mean(&out.losses), 1e-14), "{kind}");
        }
    }

    #[test]
    fn kto_golden_value() {
        // ρ = [2, −4], mean = −1 → z0 = 0; β = 0.5
        let policy = [-3.0, -10.0];
        let reference = [-5.0, -6.0];
        let desirable = [true, false];
        let p = LossParams { beta: 0.5, kto_undesirable_weight: 2.0, ..Default::default() };
        let out = kto_loss(
            &p,
            &UnpairedLogps {
                policy: &policy,
                reference: &reference,
                lengths: &[],
                desirable: &desirable,
            },
        )
        .unwrap();
        assert_eq!(out.kl, 0.0);
        assert!(close(out.losses[0], 1.0 - sigmoid(1.0), 1e-15));
        assert!(close(out.losses[1], 2.0 * (1.0 - sigmoid(2.0)), 1e-15));
        assert!(close(out.rewards[1], -2.0, 1e-15));
        // ρ = [4, 2] → z0 = 3
        let policy = [-1.0, -4.0];
        let out = kto_loss(
            &p,
            &UnpairedLogps {
                policy: &policy,
                reference: &reference,
                lengths: &[],
                desirable: &desirable,
            },
        )
        .unwrap();
        assert_eq!(out.kl, 3.0);
        assert!(close(out.losses[0], 1.0 - sigmoid(0.5), 1e-15));
        assert!(close(out.losses[1], 2.0 * (1.0 - sigmoid(0.5)), 1e-15));
    }

    #[test]
    fn plackett_luce_golden_value() {
        // s = β·ρ = [1, 0, −1] with β = 1: loss = [log(e + 1 + e⁻¹) − 1] + [log(1 + e⁻¹) − 0]
        let policy = vec![vec![1.0, 0.0, -1.0]];
        let reference = vec![vec![0.0; 3]];
        let out = plackett_luce_loss(
            &LossParams { beta: 1.0, ..Default::default() },
            &RankedLogps { policy: &policy, reference: &reference },
        )
        .unwrap();
        let e = std::f64::consts::E;
        let want = (e + 1.0 + 1.0 / e).ln() - 1.0 + (1.0 + 1.0 / e).ln();
        assert!(close(out.loss, want, 1e-15));
    }

    #[test]
    fn extreme_margins_stay_finite() {
        let b = Batch::one(-1.0, -900.0, -800.0, -1.0, 3.0, 3.0); // Δ = 1698, βΔ ≈ 170
        let p = LossParams::default();
        for kind in paired_kinds() {
            let out = eval(kind, &p, &b);
            assert!(out.loss.is_finite() && out.d_policy_chosen[0].is_finite(), "{kind}: {out:?}");
        }
        assert!(eval(LossKind::Sigmoid, &p, &b).loss < 1e-70);
        let flipped = Batch::one(-900.0, -1.0, -1.0, -800.0, 3.0, 3.0); // βΔ ≈ −170
        assert!(close(eval(LossKind::Sigmoid, &p, &flipped).loss, 169.8, 1e-12));
    }

    // ---- names and parameters ----

    #[test]
    fn names_round_trip_and_match_serde() {
        for kind in LossKind::ALL {
            assert_eq!(LossKind::from_name(kind.name()).unwrap(), kind);
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.name().into())
            );
            assert!(!kind.formula().is_empty() && !kind.source().is_empty());
        }
        let trl: Vec<&str> = LossKind::TRL_DPO.iter().map(|k| k.name()).collect();
        assert_eq!(
            trl,
            [
                "sigmoid",
                "hinge",
                "ipo",
                "exo_pair",
                "nca_pair",
                "robust",
                "bco_pair",
                "sppo_hard",
                "aot",
                "aot_unpaired",
                "apo_zero",
                "apo_down",
                "discopop",
                "sft",
                "sigmoid_norm"
            ]
        );
        let err = LossKind::from_name("dpo").unwrap_err().to_string();
        assert!(
            err.contains("\"dpo\"")
                && err.contains("sigmoid_norm")
                && err.contains("plackett_luce"),
            "{err}"
        );
        assert!(
            !LossKind::Simpo.uses_reference()
                && !LossKind::Sft.uses_reference()
                && LossKind::Dove.uses_reference()
        );
        assert_eq!(LossKind::Kto.data_shape(), DataShape::Unpaired);
        assert_eq!(LossKind::PlackettLuce.data_shape(), DataShape::Ranked);
        assert_eq!(LossKind::Dove.data_shape(), DataShape::Paired);
    }

    #[test]
    fn loss_mix_parses_and_prints() {
        let mix = LossMix::parse("sigmoid + 0.5*sft").unwrap();
        assert_eq!(mix.terms, vec![(LossKind::Sigmoid, 1.0), (LossKind::Sft, 0.5)]);
        assert_eq!(mix.name(), "sigmoid+0.5*sft");
        assert_eq!(LossMix::parse(&mix.name()).unwrap(), mix);
        assert_eq!(
            LossMix::parse("sigmoid+sft").unwrap().terms,
            vec![(LossKind::Sigmoid, 1.0), (LossKind::Sft, 1.0)]
        );
        assert_eq!(LossMix::parse("sigmoid+1e-3*sft").unwrap().terms[1], (LossKind::Sft, 1e-3));
        assert_eq!(LossMix::parse("sigmoid+1e+1*sft").unwrap().terms[1], (LossKind::Sft, 10.0));
        assert!(LossMix::parse("sigmoid+").is_err());
        assert!(LossMix::parse("sigmoid+x*sft").unwrap_err().to_string().contains("\"x\""));
        assert!(LossMix::parse("sigmoid+-1*sft").is_err());
        assert!(LossMix::parse("sigmoid+kto").unwrap().data_shape().is_err());
        assert_eq!(LossMix::parse("ipo+sft").unwrap().data_shape().unwrap(), DataShape::Paired);
        let b = Batch::one(-1.0, -2.0, -1.0, -2.0, 1.0, 1.0);
        assert!(mixed_loss(&LossMix { terms: vec![] }, &LossParams::default(), &b.view()).is_err());
        assert!(paired_loss(LossKind::Kto, &LossParams::default(), &b.view())
            .unwrap_err()
            .to_string()
            .contains("kto_loss"));
    }

    #[test]
    fn loss_mix_weights_must_be_positive_finite_and_sane() {
        for spec in ["0*sigmoid", "sigmoid+0*sft", "-0.5*sigmoid", "inf*sigmoid", "NaN*sigmoid"] {
            let err = LossMix::parse(spec).unwrap_err().to_string();
            assert!(err.contains("weight") && err.contains("(0, 1e6]"), "{spec}: {err}");
        }
        assert!(LossMix::parse("1e7*sigmoid").is_err());
        assert_eq!(LossMix::parse("1e6*sigmoid").unwrap().terms, vec![(LossKind::Sigmoid, 1e6)]);
    }

    #[test]
    fn discopop_stays_finite_for_a_very_negative_margin() {
        // z = βΔ = −800: e^{−z} alone overflows, m·e^{−z} = e^{log σ(z/τ) − z} does not.
        let b = Batch::one(-8000.0, 0.0, 0.0, 0.0, 1.0, 1.0);
        let out = eval(LossKind::Discopop, &LossParams::default(), &b);
        assert!(close(out.loss, 800.0, 1e-12), "{out:?}");
        assert!(close(out.d_policy_chosen[0], -0.1, 1e-12), "{out:?}");
    }

    #[test]
    fn params_beyond_their_range_are_rejected() {
        let d = LossParams::default();
        param_error_names(LossParams { beta: 1e30, ..d }, LossKind::Sigmoid, "beta");
        param_error_names(LossParams { simpo_gamma: -1e7, ..d }, LossKind::Simpo, "simpo_gamma");
        param_error_names(
            LossParams { discopop_tau: 1e-300, ..d },
            LossKind::Discopop,
            "discopop_tau",
        );
        param_error_names(LossParams { cpo_alpha: 1e300, ..d }, LossKind::Cpo, "cpo_alpha");
        param_error_names(
            LossParams { kto_desirable_weight: 1e7, ..d },
            LossKind::Kto,
            "kto_desirable_weight",
        );
    }

    fn param_error_names(p: LossParams, kind: LossKind, name: &str) {
        match p.validate(kind) {
            Err(LabError::InvalidParam { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{kind}: expected an InvalidParam on {name}, got {other:?}"),
        }
    }

    #[test]
    fn invalid_parameters_are_rejected_by_name() {
        let d = LossParams::default();
        for kind in LossKind::ALL {
            d.validate(kind).unwrap();
            param_error_names(LossParams { beta: 0.0, ..d }, kind, "beta");
            param_error_names(LossParams { beta: -0.1, ..d }, kind, "beta");
            param_error_names(LossParams { beta: f64::NAN, ..d }, kind, "beta");
            param_error_names(LossParams { label_smoothing: -0.1, ..d }, kind, "label_smoothing");
            param_error_names(LossParams { label_smoothing: 0.6, ..d }, kind, "label_smoothing");
        }
        LossParams { label_smoothing: 0.5, ..d }.validate(LossKind::Cdpo).unwrap();
        param_error_names(
            LossParams { label_smoothing: 0.5, ..d },
            LossKind::Robust,
            "label_smoothing",
        );
        param_error_names(
            LossParams { discopop_tau: 0.0, ..d },
            LossKind::Discopop,
            "discopop_tau",
        );
        param_error_names(LossParams { exo_epsilon: 0.0, ..d }, LossKind::ExoPair, "exo_epsilon");
        param_error_names(LossParams { exo_epsilon: 1.0, ..d }, LossKind::ExoPair, "exo_epsilon");
        param_error_names(LossParams { cpo_alpha: -1.0, ..d }, LossKind::Cpo, "cpo_alpha");
        param_error_names(
            LossParams { simpo_gamma: f64::INFINITY, ..d },
            LossKind::Simpo,
            "simpo_gamma",
        );
        param_error_names(
            LossParams { kto_undesirable_weight: 0.0, ..d },
            LossKind::Kto,
            "kto_undesirable_weight",
        );
        // paired_loss validates before computing
        let b = Batch::one(-1.0, -2.0, -1.0, -2.0, 1.0, 1.0);
        assert!(matches!(
            paired_loss(LossKind::Sigmoid, &LossParams { beta: -1.0, ..d }, &b.view()),
            Err(LabError::InvalidParam { .. })
        ));
        // serde fills defaults
        let p: LossParams = serde_json::from_str(r#"{"beta": 0.25}"#).unwrap();
        assert_eq!(p, LossParams { beta: 0.25, ..d });
    }

    #[test]
    fn bad_inputs_are_rejected_with_the_array_and_index() {
        let d = LossParams::default();
        let b = Batch {
            pc: vec![-1.0; 3],
            pr: vec![-2.0; 3],
            rc: vec![-1.0; 3],
            rr: vec![-2.0; 3],
            lc: vec![1.0; 3],
            lr: vec![1.0; 3],
        };
        let mut nan = b.clone();
        nan.rr[2] = f64::NAN;
        let err = paired_loss(LossKind::Sigmoid, &d, &nan.view()).unwrap_err();
        assert!(
            matches!(&err, LabError::Parse { field: Some(f), .. } if f == "reference_rejected"),
            "{err:?}"
        );
        assert!(err.to_string().contains("reference_rejected[2]"), "{err}");
        let mut inf = b.clone();
        inf.pc[1] = f64::INFINITY;
        assert!(paired_loss(LossKind::Ipo, &d, &inf.view())
            .unwrap_err()
            .to_string()
            .contains("policy_chosen[1]"));
        let mut short = b.clone();
        short.pr.pop();
        assert!(matches!(
            paired_loss(LossKind::Sigmoid, &d, &short.view()),
            Err(LabError::Shape { .. })
        ));
        let mut zero_len = b.clone();
        zero_len.lr[0] = 0.0;
        assert!(paired_loss(LossKind::Ipo, &d, &zero_len.view())
            .unwrap_err()
            .to_string()
            .contains("rejected_lengths[0]"));
        let empty =
            Batch { pc: vec![], pr: vec![], rc: vec![], rr: vec![], lc: vec![], lr: vec![] };
        assert!(matches!(
            paired_loss(LossKind::Sigmoid, &d, &empty.view()),
            Err(LabError::Shape { .. })
        ));
        // reference-free losses accept empty reference arrays, length-free losses empty lengths
        let no_ref = PairLogps { reference_chosen: &[], reference_rejected: &[], ..b.view() };
        paired_loss(LossKind::Simpo, &d, &no_ref).unwrap();
        assert!(matches!(paired_loss(LossKind::Sigmoid, &d, &no_ref), Err(LabError::Shape { .. })));
        let no_len = PairLogps { chosen_lengths: &[], rejected_lengths: &[], ..b.view() };
        paired_loss(LossKind::Sigmoid, &d, &no_len).unwrap();
        assert!(paired_loss(LossKind::Ipo, &d, &no_len).is_err());
        // orpo needs log-probs < 0
        let mut certain = b.clone();
        certain.pc[0] = 0.0;
        assert!(paired_loss(LossKind::Orpo, &d, &certain.view())
            .unwrap_err()
            .to_string()
            .contains("policy_chosen[0]"));
        // kto and plackett–luce
        let bad = [f64::NAN];
        let err = kto_loss(
            &d,
            &UnpairedLogps { policy: &[-1.0], reference: &bad, lengths: &[], desirable: &[true] },
        )
        .unwrap_err();
        assert!(err.to_string().contains("reference[0]"), "{err}");
        assert!(kto_loss(
            &d,
            &UnpairedLogps { policy: &[-1.0], reference: &[-1.0], lengths: &[], desirable: &[] }
        )
        .is_err());
        let one = vec![vec![-1.0]];
        assert!(plackett_luce_loss(&d, &RankedLogps { policy: &one, reference: &one }).is_err());
    }

    // ---- the CLI entry point ----

    fn cli_input() -> serde_json::Value {
        serde_json::json!({
            "policy_chosen_logps": [-10.0, -12.5, -8.0],
            "policy_rejected_logps": [-11.0, -10.0, -15.0],
            "reference_chosen_logps": [-10.5, -12.0, -9.0],
            "reference_rejected_logps": [-10.5, -11.0, -14.0],
            "chosen_lengths": [5, 6, 4],
            "rejected_lengths": [5, 7, 6],
            "params": {"beta": 0.1, "label_smoothing": 0.1, "simpo_gamma": 0.5, "discopop_tau": 0.05}
        })
    }

    #[test]
    fn cli_evaluates_every_paired_loss_and_trl_trainer_term() {
        let out = evaluate_trl_losses(&cli_input()).unwrap();
        let obj = out.as_object().unwrap();
        // 20 paired losses of the zoo (all but kto and plackett_luce) and 3 TRL trainer terms
        assert_eq!(obj.len(), 23);
        for kind in LossKind::TRL_DPO {
            let entry = &obj[kind.name()];
            assert_eq!(entry["losses"].as_array().unwrap().len(), 3, "{kind}");
            assert!(close(entry["chosen_rewards"][0].as_f64().unwrap(), 0.05, 1e-12), "{kind}");
        }
        // sigmoid ignores label smoothing; aot applies it; exo takes ε = label_smoothing
        let z = 0.1 * ((-10.0 - -10.5) - (-11.0 - -10.5));
        assert!(close(obj["sigmoid"]["losses"][0].as_f64().unwrap(), -log_sigmoid(z), 1e-15));
        let b = Batch {
            pc: vec![-10.0, -12.5, -8.0],
            pr: vec![-11.0, -10.0, -15.0],
            rc: vec![-10.5, -12.0, -9.0],
            rr: vec![-10.5, -11.0, -14.0],
            lc: vec![5.0, 6.0, 4.0],
            lr: vec![5.0, 7.0, 6.0],
        };
        let p = LossParams { label_smoothing: 0.1, exo_epsilon: 0.1, ..Default::default() };
        let want = eval(LossKind::ExoPair, &p, &b).losses;
        let got: Vec<f64> = obj["exo_pair"]["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn cli_errors_name_the_field_and_index() {
        let mut input = cli_input();
        input["policy_rejected_logps"][1] = serde_json::Value::Null;
        let err = evaluate_trl_losses(&input).unwrap_err().to_string();
        assert!(err.contains("policy_rejected_logps") && err.contains("[1]"), "{err}");
        let mut input = cli_input();
        input.as_object_mut().unwrap().remove("chosen_lengths");
        let err = evaluate_trl_losses(&input).unwrap_err().to_string();
        assert!(err.contains("chosen_lengths") && err.contains("missing"), "{err}");
        let mut input = cli_input();
        input["reference_chosen_logps"] = serde_json::json!([-1.0]);
        let err = evaluate_trl_losses(&input).unwrap_err().to_string();
        assert!(err.contains("reference_chosen_logps") && err.contains("1 entries"), "{err}");
        let mut input = cli_input();
        input["params"]["beta"] = serde_json::json!(0.0);
        assert!(evaluate_trl_losses(&input).unwrap_err().to_string().contains("beta"));
        let mut input = cli_input();
        input["params"]["label_smoothing"] = serde_json::json!(0.5); // robust divides by 1 − 2ε
        assert!(evaluate_trl_losses(&input).unwrap_err().to_string().contains("label_smoothing"));
        let mut input = cli_input();
        input["params"]["betta"] = serde_json::json!(0.1);
        assert!(evaluate_trl_losses(&input).unwrap_err().to_string().contains("betta"));
    }

    #[test]
    fn cli_never_answers_null_for_extreme_inputs() {
        let mut input = cli_input();
        input["params"]["beta"] = serde_json::json!(1e30);
        let err = evaluate_trl_losses(&input).unwrap_err().to_string();
        assert!(err.contains("field \"params.beta\"") && err.contains("1e30"), "{err}");
        for (field, value) in [("policy_chosen_logps", 1e300), ("reference_rejected_logps", -1e300)]
        {
            let mut input = cli_input();
            input[field][2] = serde_json::json!(value);
            let err = evaluate_trl_losses(&input).unwrap_err().to_string();
            assert!(err.contains(&format!("field \"{field}\"")) && err.contains("[2]"), "{err}");
        }
        let mut input = cli_input();
        input["chosen_lengths"][0] = serde_json::json!(1e300);
        let err = evaluate_trl_losses(&input).unwrap_err().to_string();
        assert!(err.contains("chosen_lengths[0]"), "{err}");
        let mut input = cli_input();
        input["params"]["discopop_tau"] = serde_json::json!(1e-300);
        let err = evaluate_trl_losses(&input).unwrap_err().to_string();
        assert!(err.contains("params.discopop_tau"), "{err}");
        // the most extreme accepted input still gives finite numbers only
        let mut input = cli_input();
        input["params"]["beta"] = serde_json::json!(MAX_PARAM);
        input["policy_chosen_logps"] = serde_json::json!([-MAX_ABS_LOGP, MAX_ABS_LOGP, 0.0]);
        input["policy_rejected_logps"] = serde_json::json!([MAX_ABS_LOGP, -MAX_ABS_LOGP, 0.0]);
        let out = evaluate_trl_losses(&input);
        if let Ok(out) = &out {
            assert!(!out.to_string().contains("null"), "{out}");
        }
    }

    #[test]
    fn a_non_finite_output_names_the_loss_and_entry() {
        let out = LossOut {
            losses: vec![1.0, f64::NAN],
            loss: 0.5,
            chosen_rewards: vec![0.0; 2],
            rejected_rewards: vec![0.0; 2],
            d_policy_chosen: vec![],
            d_policy_rejected: vec![],
            d_reference_chosen: vec![],
            d_reference_rejected: vec![],
        };
        let err = check_output_finite(LossKind::Ipo, &out).unwrap_err().to_string();
        assert!(err.starts_with("field \"ipo\": losses[1] would be NaN"), "{err}");
    }

    #[test]
    fn a_loss_outside_trl_s_fifteen_that_cannot_take_the_input_says_so_in_its_entry() {
        let mut input = cli_input();
        input["policy_chosen_logps"][0] = 0.0.into(); // p = 1: ORPO's odds are infinite
        let out = evaluate_trl_losses(&input).unwrap();
        let err = out["orpo"]["error"].as_str().unwrap();
        assert!(err.contains("orpo needs log-probs < 0"), "{err}");
        assert!(out["orpo_odds_ratio"]["error"].is_string());
        assert!(out["sigmoid"]["loss"].is_f64() && out["simpo"]["loss"].is_f64());
    }

    #[test]
    fn cli_json_refuses_a_repeated_key() {
        let text = "{\"policy_chosen_logps\": [-1], \"policy_rejected_logps\": [-2],\n\
                    \"reference_chosen_logps\": [-1], \"reference_rejected_logps\": [-2],\n\
                    \"chosen_lengths\": [1], \"rejected_lengths\": [1],\n\
                    \"params\": {\"beta\": 0.1},\n\"params\": {\"beta\": 0.5}}";
        let err = evaluate_trl_losses_json(text).unwrap_err().in_file("in.json").to_string();
        assert!(err.starts_with("in.json, line 5: duplicate key \"params\""), "{err}");
        let ok = text.replace(",\n\"params\": {\"beta\": 0.5}", "");
        assert_eq!(evaluate_trl_losses_json(&ok).unwrap().as_object().unwrap().len(), 23);
    }

    #[test]
    fn losses_cli_takes_unpaired_and_ranked_inputs_of_their_own_shape() {
        // KTO: ρ = (0.5, −0.5), z0 = max(0, mean ρ) = 0, so both losses are 1 − σ(0.05)
        let kto = evaluate_trl_losses_json(
            r#"{"policy_logps": [-1.0, -2.0], "reference_logps": [-1.5, -1.5],
                "labels": [true, false], "params": {"beta": 0.1}}"#,
        )
        .unwrap();
        let want = 1.0 - sigmoid(0.05);
        for i in 0..2 {
            assert!((kto["kto"]["losses"][i].as_f64().unwrap() - want).abs() < 1e-15, "{kto}");
        }
        assert_eq!(kto["kto"]["kl"], 0.0);
        assert_eq!(kto["kto"]["rewards"], serde_json::json!([0.05, -0.05]));
        // Plackett–Luce with two responses is DPO's sigmoid loss
        let ranked = evaluate_trl_losses_json(
            r#"{"policy_logps": [[-5.0, -6.0], [-7.5, -7.0, -9.0]],
                "reference_logps": [[-5.5, -5.8], [-7.0, -7.2, -8.0]], "params": {"beta": 0.1}}"#,
        )
        .unwrap();
        let pair = evaluate_trl_losses_json(
            r#"{"policy_chosen_logps": [-5.0], "policy_rejected_logps": [-6.0],
                "reference_chosen_logps": [-5.5], "reference_rejected_logps": [-5.8],
                "chosen_lengths": [1], "rejected_lengths": [1], "params": {"beta": 0.1}}"#,
        )
        .unwrap();
        let (pl, dpo) = (
            ranked["plackett_luce"]["losses"][0].as_f64().unwrap(),
            pair["sigmoid"]["losses"][0].as_f64().unwrap(),
        );
        assert!((pl - dpo).abs() < 1e-12, "{pl} vs {dpo}");
        assert_eq!(ranked["plackett_luce"]["rewards"][1].as_array().unwrap().len(), 3);
        // errors name the field
        let err = |text: &str| evaluate_trl_losses_json(text).unwrap_err().to_string();
        let e = err(r#"{"policy_logps": [-1.0], "reference_logps": [-1.0], "labels": [1]}"#);
        assert!(e.contains("\"labels\"") && e.contains("labels[0]"), "{e}");
        let e =
            err(r#"{"policy_logps": [-1.0], "reference_logps": [-1.0, -2.0], "labels": [true]}"#);
        assert!(e.contains("\"reference_logps\"") && e.contains("has 2 entries"), "{e}");
        let e = err(r#"{"policy_logps": [-1.0], "reference_logps": [-1.0]}"#);
        assert!(e.contains("labels") && e.contains("Plackett-Luce"), "{e}");
        let e = err(r#"{"policy_logps": [[-1.0, "x"]], "reference_logps": [[-1.0, -2.0]]}"#);
        assert!(e.contains("\"policy_logps\"") && e.contains("policy_logps[0][1]"), "{e}");
    }
}
