//! `alignlab tokenize` (a text's token ids and pieces under a model's or a file's tokenizer),
//! `alignlab tokenizer train` (a byte-level BPE tokenizer trained on the pretraining corpus,
//! written as a Hugging Face `tokenizer.json`) and `alignlab corpus` (that corpus as JSONL).

use crate::ending::Report;
use clap::{Args, Subcommand};
use lab_core::bpe::Bpe;
use lab_core::files::Outputs;
use lab_core::tokenizer::Tokenizer;
use lab_core::{checkpoint, LabError, Result};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args)]
pub struct TokenizeArgs {
    /// A model directory: its own tokenizer (the character tokenizer or a tokenizer.json).
    #[arg(long, conflicts_with = "tokenizer", required_unless_present = "tokenizer")]
    model: Option<PathBuf>,
    /// A tokenizer.json, or a folder with tokenizer.json or GPT-2's vocab.json + merges.txt.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long)]
    text: String,
}

/// A text's ids and pieces (as Hugging Face's `convert_ids_to_tokens` shows them).
fn describe(tokenizer: &Tokenizer, text: &str) -> Result<Value> {
    let ids = tokenizer.encode(text)?;
    let pieces: Vec<String> = ids.iter().map(|&i| tokenizer.piece(i)).collect();
    Ok(json!({ "tokenizer": tokenizer.kind(), "tokens": ids.len(), "ids": ids, "pieces": pieces }))
}

pub fn tokenize(args: TokenizeArgs) -> Result<Value> {
    let tokenizer = match (&args.model, &args.tokenizer) {
        (Some(dir), _) => {
            let cfg = checkpoint::read_config(&dir.join("config.json"))?;
            checkpoint::read_tokenizer(dir, &cfg)?
        }
        (None, Some(path)) => Tokenizer::from_path(path)?,
        (None, None) => unreachable!("clap requires --model or --tokenizer"),
    };
    describe(&tokenizer, &args.text)
}

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer on the pretraining corpus; writes tokenizer.json
    /// and tokenizer_config.json into --out.
    Train(TrainTokenizerArgs),
}

#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// The folder to write (created; replaced only with --force).
    #[arg(long)]
    out: PathBuf,
    /// Vocabulary size, the 256 byte symbols and <|endoftext|> included.
    #[arg(long, default_value_t = 512)]
    vocab_size: usize,
    /// Strings that must be single tokens, comma-separated (the scenarios' answers).
    #[arg(long, default_value = SINGLE_TOKEN_ANSWERS)]
    required: String,
    /// The corpus seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    force: bool,
}

/// The scenarios' answers, which a trained tokenizer keeps as single tokens.
pub const SINGLE_TOKEN_ANSWERS: &str = " Yes, No, Never, Sure, I";

/// A byte-level BPE of `vocab_size` trained on the pretraining corpus of `seed`, with the
/// comma-separated `required` strings as single tokens (each keeps a leading space).
pub fn train_corpus_bpe(
    seed: u64,
    vocab_size: usize,
    required: &str,
) -> Result<(Bpe, Vec<String>)> {
    let corpus = lab_core::corpus::generate(seed);
    let texts: Vec<&str> =
        corpus.iter().flat_map(|e| [e.prompt.as_str(), e.completion.as_str()]).collect();
    // " Yes, No" names " Yes" and " No": each entry keeps its leading space.
    let required: Vec<String> = required
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| if s.starts_with(' ') { s.to_string() } else { format!(" {s}") })
        .collect();
    let required_refs: Vec<&str> = required.iter().map(String::as_str).collect();
    Ok((Bpe::train(texts.iter().copied(), vocab_size, &required_refs)?, required))
}

pub fn tokenizer_cmd(command: TokenizerCommand) -> Result<Report> {
    let TokenizerCommand::Train(args) = command;
    let (bpe, required) = train_corpus_bpe(args.seed, args.vocab_size, &args.required)?;
    let mut outputs = Outputs::new(args.force);
    let staged = outputs.folder(&args.out, &["tokenizer.json", "tokenizer_config.json"])?;
    bpe.save_dir(&staged).map_err(|e| outputs.named(e))?;
    outputs.commit()?;
    let single: Vec<Value> =
        required.iter().map(|r| json!({ "text": r, "ids": bpe.encode(r) })).collect();
    Ok(Report::done(json!({
        "out": args.out.display().to_string(),
        "vocab_size": bpe.vocab_size(),
        "merges": bpe.merges().len(),
        "required": single,
    })))
}

#[derive(Args)]
pub struct CorpusArgs {
    /// Where the corpus goes: JSONL, one {"prompt","completion"} per example.
    #[arg(long)]
    out: PathBuf,
    /// The corpus seed (the starter model's is 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    force: bool,
}

/// `alignlab corpus`: the pretraining corpus as a file, so anyone can check what the starter
/// model (and the tokenizer) learned from.
pub fn corpus_cmd(args: CorpusArgs) -> Result<Value> {
    let corpus = lab_core::corpus::generate(args.seed);
    let mut outputs = Outputs::new(args.force);
    let staged = outputs.file(&args.out)?;
    let text: String = corpus
        .iter()
        .map(|e| json!({ "prompt": e.prompt, "completion": e.completion }).to_string() + "\n")
        .collect();
    std::fs::write(&staged, &text).map_err(|e| LabError::io(args.out.display().to_string(), e))?;
    outputs.commit()?;
    Ok(
        json!({ "out": args.out.display().to_string(), "examples": corpus.len(), "seed": args.seed }),
    )
}
