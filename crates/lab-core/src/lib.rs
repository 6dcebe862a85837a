//! alignlab's core: everything that is pure math or pure data, with no GPU and no web.
//!
//! The engines (`lab-cpu`, `lab-gpu`) implement [`engine::Engine`] over the flat parameter
//! layout of [`config::ParamLayout`]; the training session (`lab-train`) combines an engine
//! with the loss zoo ([`loss`]) and the instruments ([`metrics`]).

pub mod annotate;
pub mod bpe;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod data;
pub mod engine;
pub mod error;
pub mod exchange;
pub mod experiment;
pub mod files;
pub mod json;
pub mod lora;
pub mod loss;
pub mod metrics;
pub mod rng;
pub mod sample;
pub mod scenario_data;
pub mod tokenizer;

pub use config::{GptConfig, ParamLayout};
pub use engine::{Engine, ForwardOut, TokenBatch};
pub use error::{LabError, Result};
