//! `alignlab pretrain`: the starter policy, trained from scratch on the synthetic corpus.
//! Progress JSON lines go to stderr, the summary JSON to stdout. Ctrl-C stops between two
//! steps and saves the weights trained so far (exit 130).

use crate::ending::{Ending, Report};
use crate::interrupt;
use clap::Args;
use lab_core::checkpoint::{self, ModelFiles, StorageDtype};
use lab_core::config::{init_params, GptConfig};
use lab_core::files::Outputs;
use lab_core::tokenizer::Tokenizer;
use lab_core::{Engine, LabError, Result};
use lab_cpu::CpuEngine;
use lab_train::{pretrain, PretrainConfig};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args)]
pub struct PretrainArgs {
    /// Where the model directory goes (model.safetensors, config.json, tokenizer.json).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    steps: u32,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    #[arg(long, default_value_t = 200)]
    warmup: u32,
    /// Seeds the initial weights, the corpus and the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 3)]
    n_layer: usize,
    #[arg(long, default_value_t = 4)]
    n_head: usize,
    #[arg(long, default_value_t = 128)]
    ctx: usize,
    /// The tokenizer: a tokenizer.json (e.g. from `alignlab tokenizer train`) or a folder
    /// holding one; without it (and without --vocab-size), the character tokenizer.
    #[arg(long, conflicts_with = "vocab_size")]
    tokenizer: Option<PathBuf>,
    /// Train a byte-level BPE of this many tokens on the corpus first (as `alignlab
    /// tokenizer train --vocab-size N --seed <seed>` does, the scenarios' answers single
    /// tokens) and pretrain with it.
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Store f32 instead of f16.
    #[arg(long)]
    f32: bool,
    #[arg(long, default_value_t = 100)]
    log_every: u32,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn pretrain_cmd(args: PretrainArgs) -> Result<Report> {
    let tokenizer = match (&args.tokenizer, args.vocab_size) {
        (Some(path), _) => Tokenizer::from_path(path)?,
        (None, Some(vocab)) => {
            let answers = crate::tokenize::SINGLE_TOKEN_ANSWERS;
            Tokenizer::Bpe(std::sync::Arc::new(
                crate::tokenize::train_corpus_bpe(args.seed, vocab, answers)?.0,
            ))
        }
        (None, None) => Tokenizer::Char,
    };
    let cfg = GptConfig {
        vocab: tokenizer.vocab_size(),
        ctx: args.ctx,
        d_model: args.d_model,
        n_layer: args.n_layer,
        n_head: args.n_head,
    };
    cfg.validate()?;
    let config = PretrainConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup: args.warmup,
        seed: args.seed,
        log_every: args.log_every,
    };
    config.validate()?;
    let mut outputs = Outputs::new(args.force);
    if let Some(path) = &args.tokenizer {
        outputs.input(path);
    }
    let staged = outputs.folder(&args.out, &crate::commands::MODEL_FILES)?;
    interrupt::install();
    let corpus = lab_core::corpus::generate(args.seed);
    let mut engine = CpuEngine::new(cfg, init_params(&cfg, args.seed))?;
    let started = std::time::Instant::now();
    let summary = pretrain(
        &mut engine,
        &tokenizer,
        &corpus,
        &config,
        |p| {
            eprintln!(
                "{}",
                json!({"step": p.step, "loss": p.loss, "lr": p.lr, "tokens_seen": p.tokens_seen, "seconds": started.elapsed().as_secs_f64()})
            );
        },
        interrupt::requested,
    )?;
    let params = engine.params();
    if let Some(bad) = params.iter().position(|p| !p.is_finite()) {
        return Err(LabError::Engine {
            msg: format!("parameter {bad} is not finite after training (learning rate {} too high?); nothing was saved", args.lr),
        });
    }
    let dtype = if args.f32 { StorageDtype::F32 } else { StorageDtype::F16 };
    let model = ModelFiles { config: cfg, params, tokenizer };
    checkpoint::save_dir(&staged, &model, dtype).map_err(|e| outputs.named(e))?;
    outputs.commit()?;
    let (ending, message) = if summary.steps < args.steps {
        let message = format!(
            "interrupted after step {}; its weights are in {}",
            summary.steps,
            args.out.display()
        );
        (Ending::Interrupted, Some(message))
    } else {
        (Ending::Done, None)
    };
    let json = json!({
        "model": args.out.display().to_string(),
        "config": cfg.to_hf_json(model.tokenizer.eot()),
        "tokenizer": model.tokenizer.kind(),
        "parameters": cfg.layout().total,
        "engine": engine.name(),
        "seconds": started.elapsed().as_secs_f64(),
        "summary": summary,
        "stopped": if ending == Ending::Interrupted { json!("interrupted") } else { Value::Null },
    });
    Ok(Report { json, ending, message })
}
