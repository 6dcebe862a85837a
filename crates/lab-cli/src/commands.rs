//! `losses`, `train` and `eval`.

use crate::ending::{Ending, Report};
use crate::interrupt;
use crate::progress::Progress;
use clap::Args;
use lab_core::checkpoint::{self, ModelFiles, StorageDtype};
use lab_core::config::{init_params, GptConfig};
use lab_core::data::{self, Record};
use lab_core::experiment::ExperimentConfig;
use lab_core::files::{self, Outputs};
use lab_core::lora::LoraConfig;
use lab_core::loss::LossParams;
use lab_core::tokenizer::Tokenizer;
use lab_core::{Engine, LabError, Result};
use lab_cpu::CpuEngine;
use lab_train::lora::LoraEngine;
use lab_train::{record_lines, Session, SessionConfig};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct LossesArgs {
    /// JSON with policy/reference chosen/rejected log-probs, lengths and params (every
    /// paired loss); or policy_logps, reference_logps and labels (kto); or lists of
    /// policy_logps and reference_logps, best first (plackett_luce).
    #[arg(long)]
    input: PathBuf,
}

pub fn losses(args: LossesArgs) -> Result<Value> {
    let name = files::display_name(&args.input);
    let text = files::read_text(&args.input, files::MAX_JSON_BYTES)?;
    lab_core::loss::evaluate_trl_losses_json(&text).map_err(|e| e.in_file(&name))
}

/// The files of a model folder, as `checkpoint::save_dir` writes them (a BPE tokenizer
/// adds `tokenizer_config.json`).
pub const MODEL_FILES: [&str; 4] =
    ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"];

/// Where the starting weights come from.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A model directory (model.safetensors + config.json + its tokenizer), e.g.
    /// assets/models/starter.
    #[arg(long, conflicts_with = "config")]
    model: Option<PathBuf>,
    /// Or a preset with GPT-2 random initialisation and the character tokenizer: tiny |
    /// medium.
    #[arg(long)]
    config: Option<String>,
    /// Engine: cpu (the reference) or gpu (WebGPU through wgpu: Vulkan, Metal, DX12).
    #[arg(long, default_value = "cpu")]
    engine: String,
    /// LoRA adapters applied to --model: a folder with PEFT's adapter_config.json and
    /// adapter_model.safetensors (e.g. from `train --lora-rank`). `eval`'s default reference
    /// stays the model without them.
    #[arg(long, requires = "model")]
    adapters: Option<PathBuf>,
}

impl ModelArgs {
    /// The model from --model or --config (seeded init; tiny by default).
    fn load(&self, seed: u64) -> Result<ModelFiles> {
        match (&self.model, &self.config) {
            (Some(dir), _) => {
                let mut model = checkpoint::load_dir(dir)?;
                if let Some(adapters) = &self.adapters {
                    model.params = LoraConfig::merge_dir(adapters, &model.config, &model.params)?;
                }
                Ok(model)
            }
            (None, preset) => {
                let config = GptConfig::preset(preset.as_deref().unwrap_or("tiny"))?;
                let params = init_params(&config, seed);
                Ok(ModelFiles { config, params, tokenizer: Tokenizer::Char })
            }
        }
    }

    fn engine(&self, cfg: GptConfig, params: Vec<f32>) -> Result<Box<dyn Engine>> {
        open_engine(&self.engine, cfg, params)
    }
}

/// `cpu` (the reference engine) or `gpu` (WebGPU over the default adapter).
pub fn open_engine(kind: &str, cfg: GptConfig, params: Vec<f32>) -> Result<Box<dyn Engine>> {
    match kind {
        "cpu" => Ok(Box::new(CpuEngine::new(cfg, params)?)),
        "gpu" => Ok(Box::new(lab_gpu::GpuEngine::from_default_adapter(cfg, params)?)),
        other => Err(LabError::param(
            "engine",
            format!("unknown engine {other:?} (expected cpu or gpu)"),
        )),
    }
}

/// Read a JSONL dataset (at most 20 MB; `-` is standard input) with line numbers for later
/// errors.
fn read_data(path: &Path) -> Result<(Vec<Record>, Vec<usize>, String)> {
    let name = files::display_name(path);
    let text = files::read_text(path, lab_core::exchange::MAX_IMPORT_BYTES as u64)?;
    let records = data::parse_jsonl(&text).map_err(|e| e.in_file(&name))?;
    Ok((records, record_lines(&text), name))
}

#[derive(Args)]
pub struct TrainArgs {
    /// Preference data (TRL JSONL: plain, implicit-prompt, conversational; unpaired for kto; ranked for plackett_luce).
    #[arg(long)]
    data: PathBuf,
    /// A loss of the zoo or a weighted mix, e.g. sigmoid, ipo, "sigmoid+0.5*sft".
    #[arg(long, default_value = "sigmoid")]
    loss: String,
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    beta: f64,
    #[arg(long, allow_negative_numbers = true, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    weight_decay: f64,
    /// Steps to train (at most 1,000,000; Ctrl-C stops earlier and keeps what is done).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    steps: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pairs per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Evaluate the whole dataset (the eval/* metrics) every N steps and after the last;
    /// 0 = automatic (every step up to 256 rows, then about 256 rows per step).
    #[arg(long, default_value_t = 0)]
    eval_every: u32,
    #[arg(long, allow_negative_numbers = true, default_value_t = LossParams::default().label_smoothing)]
    label_smoothing: f64,
    #[arg(long, allow_negative_numbers = true, default_value_t = LossParams::default().simpo_gamma)]
    simpo_gamma: f64,
    #[arg(long, allow_negative_numbers = true, default_value_t = LossParams::default().discopop_tau)]
    discopop_tau: f64,
    #[arg(long, allow_negative_numbers = true, default_value_t = LossParams::default().cpo_alpha)]
    cpo_alpha: f64,
    #[command(flatten)]
    model: ModelArgs,
    /// Where the per-step metrics go (JSON lines).
    #[arg(long)]
    out: PathBuf,
    /// Where the final weights go (default: the --out path with extension ".model").
    #[arg(long)]
    save: Option<PathBuf>,
    /// Store the saved weights as f16.
    #[arg(long)]
    f16: bool,
    /// Train LoRA adapters on the frozen model instead of every weight; --save then gets
    /// PEFT's adapter_model.safetensors and adapter_config.json.
    #[command(flatten)]
    lora: LoraArgs,
    /// Replace --out and the weights folder if they exist.
    #[arg(long)]
    force: bool,
}

/// The files of an adapter folder, as PEFT's `save_pretrained` writes them.
pub const ADAPTER_FILES: [&str; 2] = ["adapter_model.safetensors", "adapter_config.json"];

/// New LoRA adapters, as `train` and `export-trl` take them.
#[derive(Args)]
pub struct LoraArgs {
    /// Train LoRA adapters of this rank on the frozen model instead of every weight.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA's α (the adapters' scale is α / r); PEFT's default.
    #[arg(long, default_value_t = 8.0, requires = "lora_rank")]
    pub lora_alpha: f64,
    /// The adapted layers, PEFT's names: c_attn, c_proj, c_fc (or a path such as mlp.c_proj).
    #[arg(long, value_delimiter = ',', default_value = "c_attn", requires = "lora_rank")]
    pub lora_targets: Vec<String>,
}

impl LoraArgs {
    /// The adapters' config, if --lora-rank asks for adapters; errors name the flag.
    pub fn config(&self) -> Result<Option<LoraConfig>> {
        let Some(rank) = self.lora_rank else { return Ok(None) };
        let targets: Vec<&str> = self.lora_targets.iter().map(String::as_str).collect();
        LoraConfig::new(rank, self.lora_alpha, &targets).map(Some).map_err(|e| match e {
            LabError::InvalidParam { name, msg } => {
                let flag = match name.as_str() {
                    "r" => "lora_rank",
                    "lora_alpha" => "lora_alpha",
                    _ => "lora_targets",
                };
                LabError::param(flag, msg)
            }
            other => other,
        })
    }
}

impl TrainArgs {
    fn experiment(&self) -> ExperimentConfig {
        let params = LossParams {
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            simpo_gamma: self.simpo_gamma,
            discopop_tau: self.discopop_tau,
            cpo_alpha: self.cpo_alpha,
            ..LossParams::default()
        };
        ExperimentConfig {
            loss: self.loss.clone(),
            params,
            lr: self.lr,
            weight_decay: self.weight_decay,
            batch_size: self.batch_size,
            steps: self.steps,
            seed: self.seed,
            scenario: None,
            eval_every: self.eval_every,
        }
    }
}

/// Build a session from an experiment; the weights and the tokenizer come from `model`.
pub fn session_for(
    experiment: &ExperimentConfig,
    model: &ModelArgs,
    records: &[Record],
    lines: Option<&[usize]>,
) -> Result<(Session<Box<dyn Engine>>, Tokenizer)> {
    let config = SessionConfig::from_experiment(experiment)?;
    let ModelFiles { config: cfg, params, tokenizer } = model.load(experiment.seed)?;
    let engine = model.engine(cfg, params)?;
    Ok((Session::with_lines(engine, &tokenizer, records, lines, config)?, tokenizer))
}

/// What a training loop kept: the last good step's metrics and weights (or adapters), and
/// why it stopped early, if it did.
struct Trained {
    kept: Vec<f32>,
    steps_kept: u32,
    last: Value,
    stopped: Option<(Ending, String)>,
}

/// Step `session` up to `steps` times, one metrics line each into `file`; `keep` reads what
/// is saved (the weights, or the adapters) and must stay finite.
fn train_steps<E: Engine>(
    session: &mut Session<E>,
    steps: u32,
    file: &mut impl Write,
    out_name: &str,
    keep: impl Fn(&E) -> Vec<f32>,
) -> Result<Trained> {
    let mut progress = Progress::new("train", "steps", u64::from(steps));
    let mut trained =
        Trained { kept: keep(session.engine()), steps_kept: 0, last: Value::Null, stopped: None };
    for step in 1..=steps {
        if interrupt::requested() {
            trained.stopped =
                Some((Ending::Interrupted, format!("interrupted before step {step}")));
            break;
        }
        let record = match session.step() {
            Ok(record) => record,
            Err(LabError::NotFinite { step }) => {
                let cause = session.config().divergence_cause();
                let why = format!("step {step}: the loss or its gradient is not finite; {cause}");
                trained.stopped = Some((Ending::Diverged, why));
                break;
            }
            Err(err) => return Err(err),
        };
        let metrics = serde_json::to_value(&record).expect("metrics serialize");
        if let Some(bad) = non_finite_metric(&metrics) {
            let cause = session.config().divergence_cause();
            let why = format!("step {step}: the metric {bad} is not finite; {cause}");
            trained.stopped = Some((Ending::Diverged, why));
            break;
        }
        let params = keep(session.engine());
        if let Some(bad) = params.iter().position(|p| !p.is_finite()) {
            let cause = session.config().divergence_cause();
            let why =
                format!("step {step}: parameter {bad} is not finite after the update; {cause}");
            trained.stopped = Some((Ending::Diverged, why));
            break;
        }
        trained.kept = params;
        trained.steps_kept = record.step;
        trained.last = metrics;
        writeln!(file, "{}", trained.last).map_err(|e| LabError::io(out_name, e))?;
        progress.tick(u64::from(step), Some(("loss", record.loss)));
    }
    progress.finish();
    Ok(trained)
}

/// Train, writing one metrics line per step and then the weights (with `--lora-rank`, the
/// adapters, as PEFT saves them). Both are staged and put in place together at the end; a
/// run stopped by divergence or Ctrl-C keeps the steps whose weights are finite, and those
/// weights.
pub fn train(args: TrainArgs) -> Result<Report> {
    let experiment = args.experiment();
    experiment.validate()?;
    let lora = args.lora.config()?;
    let save_dir = args.save.clone().unwrap_or_else(|| args.out.with_extension("model"));
    let mut outputs = Outputs::new(args.force);
    outputs.input(&args.data);
    if let Some(model) = &args.model.model {
        outputs.input(model);
    }
    let metrics_path = outputs.file(&args.out)?;
    let saved_files: &[&str] = if lora.is_some() { &ADAPTER_FILES } else { &MODEL_FILES };
    let weights_path = outputs.folder(&save_dir, saved_files)?;
    let (records, lines, data_name) = read_data(&args.data)?;
    let config = SessionConfig::from_experiment(&experiment)?;
    let ModelFiles { config: cfg, params, tokenizer } = args.model.load(experiment.seed)?;
    let engine = args.model.engine(cfg, params)?;

    interrupt::install();
    let out_name = args.out.display().to_string();
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&metrics_path).map_err(|e| LabError::io(&out_name, e))?,
    );
    let (engine_name, trained) = match &lora {
        None => {
            let mut session =
                Session::with_lines(engine, &tokenizer, &records, Some(&lines), config)
                    .map_err(|e| e.in_file(&data_name))?;
            let trained =
                train_steps(&mut session, args.steps, &mut file, &out_name, |e| e.params())?;
            let dtype = if args.f16 { StorageDtype::F16 } else { StorageDtype::F32 };
            let model = ModelFiles { config: cfg, params: trained.kept.clone(), tokenizer };
            checkpoint::save_dir(&weights_path, &model, dtype).map_err(|e| outputs.named(e))?;
            (session.engine().name(), trained)
        }
        Some(lora) => {
            let engine = LoraEngine::new(engine, lora.clone(), lora.init(&cfg, experiment.seed))?;
            let mut session =
                Session::with_lines(engine, &tokenizer, &records, Some(&lines), config)
                    .map_err(|e| e.in_file(&data_name))?;
            let trained = train_steps(&mut session, args.steps, &mut file, &out_name, |e| {
                e.adapters().to_vec()
            })?;
            let base = args.model.model.as_ref().map_or_else(
                || format!("random init, seed {}", experiment.seed),
                |dir| dir.display().to_string(),
            );
            lora.save_dir(&weights_path, &cfg, &trained.kept, &base)
                .map_err(|e| outputs.named(e))?;
            (session.engine().name(), trained)
        }
    };
    file.flush().map_err(|e| LabError::io(&out_name, e))?;
    drop(file);
    outputs.commit()?;
    let Trained { steps_kept, last, stopped, .. } = trained;
    let (ending, message) = match stopped {
        Some((ending, why)) => {
            let model = save_dir.display();
            let what = if lora.is_some() { "adapters" } else { "weights" };
            let kept = if steps_kept == 0 {
                format!(
                    "no step finished; {out_name} is empty and {model} holds the starting {what}"
                )
            } else {
                format!("kept the metrics of steps 1 to {steps_kept} in {out_name} and the {what} after step {steps_kept} in {model}")
            };
            (ending, Some(format!("{why}; {kept}")))
        }
        None => (Ending::Done, None),
    };
    let stopped_as = match ending {
        Ending::Diverged => json!("diverged"),
        Ending::Interrupted => json!("interrupted"),
        _ => Value::Null,
    };
    let json = json!({
        "steps": steps_kept,
        "steps_asked": args.steps,
        "stopped": stopped_as,
        "message": message,
        "engine": engine_name,
        "experiment": experiment.to_query(),
        "metrics": out_name,
        "model": save_dir.display().to_string(),
        "final": last,
    });
    Ok(Report { json, ending, message })
}

/// The name of a metric that is not a finite number (serde_json writes NaN and ±∞ as null).
fn non_finite_metric(metrics: &Value) -> Option<String> {
    let map = metrics.as_object()?;
    map.iter()
        .find(|(_, v)| v.is_null() || v.as_f64().is_some_and(|x| !x.is_finite()))
        .map(|(k, _)| k.clone())
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The reference model the rewards are measured against (default: the model itself).
    #[arg(long)]
    reference: Option<PathBuf>,
    #[arg(long)]
    data: PathBuf,
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    beta: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn eval(args: EvalArgs) -> Result<Value> {
    let (records, lines, data_name) = read_data(&args.data)?;
    let experiment = ExperimentConfig {
        params: LossParams { beta: args.beta, ..LossParams::default() },
        seed: args.seed,
        ..ExperimentConfig::default()
    };
    let policy = args.model.load(args.seed)?;
    let reference_model = ModelArgs {
        model: args.reference.clone().or(args.model.model.clone()),
        adapters: None,
        ..args.model.clone()
    };
    let (mut session, reference_tokenizer) =
        session_for(&experiment, &reference_model, &records, Some(&lines))
            .map_err(|e| e.in_file(&data_name))?;
    if *session.engine().config() != policy.config {
        return Err(LabError::shape("the model and the reference have different configs"));
    }
    if reference_tokenizer != policy.tokenizer {
        return Err(LabError::shape("the model and the reference have different tokenizers"));
    }
    session.engine_mut().set_params(&policy.params)?;
    let instruments = session.evaluate()?;
    let pairs: Vec<Value> = session
        .pairs()
        .iter()
        .map(|p| serde_json::to_value(p).expect("pair stats serialize"))
        .collect();
    let trl = if session.pairs().is_empty() {
        Value::Null
    } else {
        let pick = |f: fn(&lab_train::PairStats) -> f64| {
            session.pairs().iter().map(f).collect::<Vec<f64>>()
        };
        let metrics = lab_core::metrics::trl_metrics(
            args.beta,
            &pick(|p| p.policy_chosen),
            &pick(|p| p.policy_rejected),
            &pick(|p| p.reference_chosen),
            &pick(|p| p.reference_rejected),
        );
        metrics.to_json()
    };
    Ok(json!({
        "engine": session.engine().name(),
        "records": records.len(),
        "trl": trl,
        "instruments": instruments,
        "pairs": pairs,
    }))
}
