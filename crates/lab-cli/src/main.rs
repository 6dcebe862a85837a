//! `alignlab`: the lab headless. Every subcommand prints JSON so it can be scripted; every
//! error names what is wrong and where, exits non-zero and writes nothing. Outputs are
//! written whole or not at all (`lab_core::files::Outputs`).

mod bench;
mod commands;
mod data_cmds;
mod ending;
mod interrupt;
mod make_scenario;
mod pretrain;
mod progress;
mod scenario;
mod tokenize;

use ending::Report;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "alignlab",
    version,
    about = "Preference learning (DPO and its variants) on a tiny GPT, headless."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate every TRL DPO loss type on given per-sequence log-probs.
    Losses(commands::LossesArgs),
    /// Train a policy on preference data; one JSON line of metrics per step.
    Train(commands::TrainArgs),
    /// The instruments for a model on a dataset.
    Eval(commands::EvalArgs),
    /// Time full DPO steps and print steps/s and tokens/s.
    Bench(bench::BenchArgs),
    /// Train the starter policy from scratch on the synthetic corpus (SFT).
    Pretrain(pretrain::PretrainArgs),
    /// Run a classroom scenario headless: its metrics and a one-line verdict.
    Scenario(scenario::ScenarioArgs),
    /// Sample candidate responses to prompts from a policy (and its reference) for annotation.
    Sample(data_cmds::SampleArgs),
    /// Label candidates or pairs with a synthetic annotator: rules, label noise, alpha.
    Annotate(data_cmds::AnnotateArgs),
    /// Write a trl.DPOTrainer script with the same loss_type, β and learning rate, and its data.
    ExportTrl(data_cmds::ExportTrlArgs),
    /// A run's metrics (train --out) as CSV or JSON.
    ExportMetrics(data_cmds::ExportMetricsArgs),
    /// Write a scenario's data files from the seeded generator, or check them (--check).
    MakeScenario(make_scenario::MakeScenarioArgs),
    /// A text's token ids and pieces under a model's (or a tokenizer file's) tokenizer.
    Tokenize(tokenize::TokenizeArgs),
    /// Train a byte-level BPE tokenizer on the pretraining corpus.
    #[command(subcommand)]
    Tokenizer(tokenize::TokenizerCommand),
    /// Write the pretraining corpus (JSONL of prompt and completion).
    Corpus(tokenize::CorpusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = |json| Ok(Report::done(json));
    let result = match cli.command {
        Command::Losses(args) => commands::losses(args).and_then(done),
        Command::Train(args) => commands::train(args),
        Command::Eval(args) => commands::eval(args).and_then(done),
        Command::Bench(args) => bench::bench(args).and_then(done),
        Command::Pretrain(args) => pretrain::pretrain_cmd(args),
        Command::Scenario(args) => scenario::scenario_cmd(args),
        Command::Sample(args) => data_cmds::sample(args),
        Command::Annotate(args) => data_cmds::annotate(args).and_then(done),
        Command::ExportTrl(args) => data_cmds::export_trl(args).and_then(done),
        Command::ExportMetrics(args) => data_cmds::export_metrics(args).and_then(done),
        Command::MakeScenario(args) => make_scenario::make_scenario_cmd(args).and_then(done),
        Command::Tokenize(args) => tokenize::tokenize(args).and_then(done),
        Command::Tokenizer(command) => tokenize::tokenizer_cmd(command),
        Command::Corpus(args) => tokenize::corpus_cmd(args).and_then(done),
    };
    match result {
        Ok(report) => {
            println!("{}", report.json);
            if let Some(message) = &report.message {
                eprintln!("alignlab: {message}");
            }
            report.exit_code()
        }
        Err(err) => {
            eprintln!("alignlab: error: {err}");
            ExitCode::from(2)
        }
    }
}
