//! The data side of the lab, headless: `sample` (candidate responses from a policy and its
//! reference), `annotate` (the synthetic annotator), `export-trl` (a `trl.DPOTrainer`
//! script and its dataset) and `export-metrics` (a run's metrics as CSV or JSON). They read
//! and write the files the page imports and exports. Outputs are staged and renamed into
//! place whole ([`Outputs`]): an existing output is never replaced without `--force`, and
//! never by a failed run.

use crate::commands::open_engine;
use crate::ending::{Ending, Report};
use crate::interrupt;
use crate::progress::Progress;
use clap::Args;
use lab_core::annotate::{sample_candidates, CandidateSet, Reward, SyntheticAnnotator};
use lab_core::data::{to_jsonl, Record};
use lab_core::exchange::{self, MetricsRow};
use lab_core::experiment::ExperimentConfig;
use lab_core::files::{self, Outputs};
use lab_core::lora::LoraConfig;
use lab_core::sample::SampleConfig;
use lab_core::tokenizer::Tokenizer;
use lab_core::{checkpoint, Engine, LabError, Result};
use lab_train::record_lines;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Read a text file (or standard input, `-`) once, under the import size limit.
fn read_limited(path: &Path) -> Result<(String, String)> {
    let text = files::read_text(path, exchange::MAX_IMPORT_BYTES as u64)?;
    Ok((files::display_name(path), text))
}

/// Read TRL JSONL; errors name the file, line and field.
fn read_records(path: &Path) -> Result<(Vec<Record>, Vec<usize>, String)> {
    let (name, text) = read_limited(path)?;
    let records = exchange::import_jsonl(&name, &text)?;
    Ok((records, record_lines(&text), name))
}

/// An error about the k-th record (1-based, as `at_line(k)`) moved to its real line.
fn at_record_line(err: LabError, lines: &[usize], file: &str) -> LabError {
    match err {
        LabError::Parse { line: Some(k), field, msg, .. } => LabError::Parse {
            file: Some(file.to_string()),
            line: lines.get(k - 1).copied().or(Some(k)),
            field,
            msg,
        },
        other => other.in_file(file),
    }
}

/// Write `text` to the staged file of `target`.
fn write_staged(staged: &Path, target: &Path, text: &str) -> Result<()> {
    std::fs::write(staged, text).map_err(|e| LabError::io(target.display().to_string(), e))
}

#[derive(Args)]
pub struct AnnotateArgs {
    /// Records to label: pairs (relabelled), lists `{"prompt","responses"}` such as
    /// `alignlab sample` writes (ranked by reward), unpaired examples (label = reward > 0).
    #[arg(long = "in")]
    input: PathBuf,
    /// Where the labelled TRL JSONL goes.
    #[arg(long)]
    out: PathBuf,
    /// The reward: rules joined by commas, `rule[:word][=weight]`: length, contains:WORD,
    /// excludes:WORD, sentiment, refusal. E.g. "refusal=-2,sentiment,length=-0.1".
    #[arg(long)]
    rules: String,
    /// Probability of swapping each label (label noise), in [0, 0.5].
    #[arg(long, default_value_t = 0.0)]
    flip_rate: f64,
    /// τ of alpha = σ(reward gap / τ).
    #[arg(long, default_value_t = 1.0)]
    alpha_temperature: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Turn lists into one pair each (highest reward against lowest) instead of ranked lists.
    #[arg(long)]
    pairs: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn annotate(args: AnnotateArgs) -> Result<Value> {
    let reward = Reward::parse(&args.rules)?;
    let annotator = SyntheticAnnotator {
        reward,
        flip_rate: args.flip_rate,
        alpha_temperature: args.alpha_temperature,
        seed: args.seed,
        lists_to_pairs: args.pairs,
    };
    annotator.validate()?;
    let mut outputs = Outputs::new(args.force);
    let staged = outputs.input(&args.input).file(&args.out)?;
    let (records, _, _) = read_records(&args.input)?;
    let (labelled, report) = annotator.annotate(&records)?;
    write_staged(&staged, &args.out, &to_jsonl(&labelled))?;
    outputs.commit()?;
    Ok(json!({
        "out": args.out.display().to_string(),
        "rules": annotator.reward.spec(),
        "flip_rate": args.flip_rate,
        "report": report,
        "observed_flip_rate": if report.flippable > 0 { report.flipped as f64 / report.flippable as f64 } else { 0.0 },
    }))
}

#[derive(Args)]
pub struct SampleArgs {
    /// The policy (a model directory).
    #[arg(long)]
    model: PathBuf,
    /// LoRA adapters applied to the policy: a folder with PEFT's adapter_config.json and
    /// adapter_model.safetensors (e.g. from `train --lora-rank`).
    #[arg(long)]
    adapters: Option<PathBuf>,
    /// Also sample from this reference model (a model directory).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Prompts: TRL JSONL (the prompts of its records) or a text file, one prompt per line
    /// (a bare question becomes "User: … Assistant:").
    #[arg(long)]
    prompts: PathBuf,
    /// Responses per prompt from each model.
    #[arg(long, default_value_t = 2)]
    n: usize,
    /// 0 samples greedily.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// 0: no top-k cut.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    engine: String,
    /// Where the candidate lists go (JSONL `{"prompt","responses","origins"}`; a response
    /// both models sampled appears once, from "policy+reference"; prompts with fewer than
    /// two distinct responses are left out).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
}

/// The distinct prompts of a data file or a text file of prompts.
fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let (name, text) = read_limited(path)?;
    let looks_jsonl = text.trim_start().starts_with('{');
    let mut prompts: Vec<String> = Vec::new();
    if looks_jsonl {
        for record in exchange::import_jsonl(&name, &text)? {
            let prompt = CandidateSet::from_record(&record, "").prompt;
            if !prompts.contains(&prompt) {
                prompts.push(prompt);
            }
        }
    } else {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let prompt = if line.starts_with("User:") || line.ends_with("Assistant:") {
                line.to_string()
            } else {
                lab_core::corpus::prompt(line)
            };
            if !prompts.contains(&prompt) {
                prompts.push(prompt);
            }
        }
    }
    if prompts.is_empty() {
        return Err(LabError::parse("no prompts").in_file(&name));
    }
    Ok(prompts)
}

pub fn sample(args: SampleArgs) -> Result<Report> {
    let mut outputs = Outputs::new(args.force);
    outputs.input(&args.prompts).input(&args.model);
    for input in [&args.reference, &args.adapters].into_iter().flatten() {
        outputs.input(input);
    }
    let staged = outputs.file(&args.out)?;
    let prompts = read_prompts(&args.prompts)?;
    let config = SampleConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
    };
    let open = |dir: &Path, adapters: Option<&Path>| -> Result<(Box<dyn Engine>, Tokenizer)> {
        let mut model = checkpoint::load_dir(dir)?;
        if let Some(adapters) = adapters {
            model.params = LoraConfig::merge_dir(adapters, &model.config, &model.params)?;
        }
        Ok((open_engine(&args.engine, model.config, model.params)?, model.tokenizer))
    };
    let (mut policy, tokenizer) = open(&args.model, args.adapters.as_deref())?;
    let mut reference = match args.reference.as_deref().map(|dir| open(dir, None)).transpose()? {
        Some((_, other)) if other != tokenizer => {
            return Err(LabError::shape("the model and the reference have different tokenizers"))
        }
        Some((engine, _)) => Some(engine),
        None => None,
    };
    let mut models: Vec<(&str, &mut dyn Engine)> = vec![("policy", policy.as_mut())];
    if let Some(reference) = reference.as_mut() {
        models.push(("reference", reference.as_mut()));
    }
    interrupt::install();
    let mut progress = Progress::new("sample", "prompts", 0);
    let mut on_prompt = |done: usize, total: usize| {
        if interrupt::requested() {
            return Err(LabError::Engine { msg: "interrupted".into() });
        }
        progress.set_total(total as u64);
        progress.tick(done as u64, None);
        Ok(())
    };
    let sampled = sample_candidates(
        &mut models,
        &tokenizer,
        &prompts,
        args.n,
        &config,
        args.seed,
        &mut on_prompt,
    );
    progress.finish();
    if interrupt::requested() {
        let message = format!("interrupted; nothing written ({} is as it was)", args.out.display());
        let json = json!({ "out": Value::Null, "stopped": "interrupted", "message": message });
        return Ok(Report { json, ending: Ending::Interrupted, message: Some(message) });
    }
    let sets = sampled.map_err(|e| e.in_file(&files::display_name(&args.prompts)))?;
    if sets.is_empty() {
        return Err(LabError::param("n", "no prompt got two distinct non-empty responses; sample more (--n) or at a higher temperature"));
    }
    let text: String = sets.iter().map(|s| s.to_json_line() + "\n").collect();
    write_staged(&staged, &args.out, &text)?;
    outputs.commit()?;
    Ok(Report::done(
        json!({ "out": args.out.display().to_string(), "prompts": prompts.len(), "lists": sets.len(), "responses": sets.iter().map(|s| s.responses.len()).sum::<usize>() }),
    ))
}

#[derive(Args)]
pub struct ExportTrlArgs {
    /// The experiment in the page's link form, e.g. "loss=robust&beta=0.5&lr=0.0005&label_smoothing=0.1".
    #[arg(long, default_value = "")]
    experiment: String,
    /// The preference data (TRL JSONL, pairs of one form; `-` reads standard input).
    #[arg(long)]
    data: PathBuf,
    /// The model the script will train: the data is checked against its tokenizer and
    /// context, as `train` checks it.
    #[arg(long, default_value = "assets/models/starter")]
    model: PathBuf,
    /// A folder for train_dpo.py and data.jsonl (created if missing; files in it are
    /// replaced only with --force), and adapters/ with --adapters.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    /// The script trains new LoRA adapters (PEFT's LoraConfig as DPOTrainer's peft_config).
    #[command(flatten)]
    lora: crate::commands::LoraArgs,
    /// Or it continues from these adapters (a folder with PEFT's adapter_config.json and
    /// adapter_model.safetensors, e.g. from `train --lora-rank`), copied into OUT/adapters/.
    #[arg(long, conflicts_with = "lora_rank")]
    adapters: Option<PathBuf>,
}

pub fn export_trl(args: ExportTrlArgs) -> Result<Value> {
    let experiment = ExperimentConfig::from_query(&args.experiment)?;
    let mut outputs = Outputs::new(args.force);
    outputs.input(&args.data).input(&args.model);
    if let Some(adapters) = &args.adapters {
        outputs.input(adapters);
    }
    // Into an existing folder as files (and an adapters folder), else as a new folder.
    let (script_staged, data_staged, adapters_staged) = if args.out.is_dir() {
        let adapters = match &args.adapters {
            Some(_) => {
                Some(outputs.folder(&args.out.join("adapters"), &crate::commands::ADAPTER_FILES)?)
            }
            None => None,
        };
        (
            outputs.file(&args.out.join("train_dpo.py"))?,
            outputs.file(&args.out.join("data.jsonl"))?,
            adapters,
        )
    } else {
        let folder = outputs.folder(&args.out, &[])?;
        let adapters = args.adapters.as_ref().map(|_| folder.join("adapters"));
        (folder.join("train_dpo.py"), folder.join("data.jsonl"), adapters)
    };
    let (name, text) = read_limited(&args.data)?;
    let records = exchange::import_jsonl(&name, &text)?;
    let lines = record_lines(&text);
    exchange::check_trl_dpo_data(&records).map_err(|e| at_record_line(e, &lines, &name))?;
    let cfg = checkpoint::read_config(&args.model.join("config.json"))?;
    let tokenizer = checkpoint::read_tokenizer(&args.model, &cfg)?;
    for (i, record) in records.iter().enumerate() {
        if let Record::Pair(pair) = record {
            pair.render()
                .encode(&tokenizer, cfg.ctx)
                .map_err(|e| at_record_line(e.at_line(i + 1), &lines, &name))?;
        }
    }
    // the adapters must fit the model the script trains, as `train --adapters` checks them
    let continued = match &args.adapters {
        Some(dir) => Some(lab_core::lora::LoraConfig::load_dir(dir, &cfg)?.0),
        None => None,
    };
    let lora_config = match continued {
        Some(config) => Some(config),
        None => args.lora.config()?,
    };
    let exported = lora_config.as_ref().map(|config| exchange::ExportedLora {
        config,
        adapters: args.adapters.as_ref().map(|_| "adapters"),
    });
    let script = exchange::trl_script(&experiment, "data.jsonl", exported.as_ref())?;
    // The data goes out exactly as read: the user's bytes, their fields and order.
    for (staged, text) in [(&data_staged, &text), (&script_staged, &script)] {
        std::fs::write(staged, text)
            .map_err(|e| outputs.named(LabError::io(staged.display().to_string(), e)))?;
    }
    if let (Some(from), Some(to)) = (&args.adapters, &adapters_staged) {
        let copy = || -> std::io::Result<()> {
            std::fs::create_dir_all(to)?;
            for file in crate::commands::ADAPTER_FILES {
                std::fs::copy(from.join(file), to.join(file))?;
            }
            Ok(())
        };
        copy().map_err(|e| outputs.named(LabError::io(to.display().to_string(), e)))?;
    }
    outputs.commit()?;
    Ok(json!({
        "script": args.out.join("train_dpo.py").display().to_string(),
        "data": args.out.join("data.jsonl").display().to_string(),
        "records": records.len(),
        "adapters": args.adapters.as_ref().map(|_| args.out.join("adapters").display().to_string()),
        "peft_config": lora_config.as_ref().map(|c| json!({"r": c.rank, "lora_alpha": c.alpha, "target_modules": c.targets})),
        "dpo_config": exchange::trl_dpo_args(&experiment)?.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    }))
}

#[derive(Args)]
pub struct ExportMetricsArgs {
    /// Metrics as `alignlab train --out` writes them (one JSON object per line).
    #[arg(long = "in")]
    input: PathBuf,
    /// csv or json
    #[arg(long, default_value = "csv")]
    format: String,
    #[arg(long)]
    out: PathBuf,
    /// The experiment (link form) recorded in the JSON document.
    #[arg(long, default_value = "")]
    experiment: String,
    #[arg(long)]
    force: bool,
}

pub fn export_metrics(args: ExportMetricsArgs) -> Result<Value> {
    let mut outputs = Outputs::new(args.force);
    let staged = outputs.input(&args.input).file(&args.out)?;
    let (name, text) = read_limited(&args.input)?;
    let mut rows: Vec<MetricsRow> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value = lab_core::json::parse_unique_line(line, i + 1).map_err(|e| e.in_file(&name))?;
        let Value::Object(map) = value else {
            return Err(LabError::parse("expected one JSON object of metrics per line")
                .at_line(i + 1)
                .in_file(&name));
        };
        rows.push(map.into_iter().filter_map(|(k, v)| v.as_f64().map(|x| (k, x))).collect());
    }
    let text = match args.format.as_str() {
        "csv" => exchange::metrics_csv(&rows),
        "json" => {
            let experiment = ExperimentConfig::from_query(&args.experiment)?;
            exchange::metrics_json(&name, &experiment, &rows)
        }
        other => return Err(LabError::param("format", format!("{other:?}: expected csv or json"))),
    };
    write_staged(&staged, &args.out, &text)?;
    outputs.commit()?;
    Ok(json!({ "out": args.out.display().to_string(), "rows": rows.len() }))
}
