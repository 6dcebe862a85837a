//! The engine-agnostic training session: a policy on any [`Engine`], its frozen reference
//! (the policy's starting weights, whose log-probs are computed once), the data, the loss
//! (any variant of the zoo or a weighted mix), AdamW, and the instruments recorded every
//! step.
//!
//! A step follows TRL's `DPOTrainer`: the batch's chosen rows and rejected rows are run
//! through the policy in one batch, the loss and its gradient w.r.t. the four sequence
//! log-probs come from `lab_core::loss`, the engine back-propagates that gradient, AdamW
//! updates. The batch metrics use TRL's names and are computed before the update, as TRL
//! logs them; the dataset instruments (ranking accuracy, R*, displacement, ...) are
//! evaluated after it. Runs are bit-for-bit deterministic for a given seed.

mod examples;
pub mod lora;
mod pretrain;
pub mod scenario;
mod session;

pub use examples::{
    record_lines, EncodedPair, EncodedRanked, EncodedRow, EncodedUnpaired, Examples,
};
pub use pretrain::{pretrain, probe_accuracy, PretrainConfig, PretrainProgress, PretrainSummary};
pub use session::{
    Instruments, PairStats, Session, SessionConfig, StepRecord, KL_CACHE_FLOATS, KL_SAMPLED_EVERY,
    KL_SAMPLE_MAX_TOKENS, KL_SAMPLE_PROMPTS,
};
