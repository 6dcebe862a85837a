//! The training worker: the model, the runs (one `lab_train::Session` each) and every
//! number the page shows, off the main thread so that training never blocks the page.
//!
//! The runs train on the GPU engine when the worker's `navigator.gpu` gives an adapter
//! (its readbacks are awaited: `Session::step_async`), else on the CPU engine compiled to
//! wasm, and the page shows a banner saying why. Sampling and the "where did the
//! probability go?" scores run on a CPU copy of the policy's weights on either engine.
//!
//! The loop handles every pending message, then, while playing, steps each run once and
//! yields to the event loop (a zero timeout) so that pause, reset and inspect requests get
//! through between steps.
//!
//! A run whose numbers stop being finite pauses everything at its last good step
//! ([`crate::divergence`]); `Continue` restarts every run's session from its weights with
//! the page's settings, `Reset` from the start.

use crate::divergence::{checked_step, LastGood, Outcome};
use crate::live::Live;
use crate::protocol::{
    Candidate, FromWorker, LossTerm, Metrics, PairRow, PairText, RunInfo, ScenarioInfo, ToWorker,
    TrainingData,
};
use crate::state::UiState;
use futures::channel::mpsc;
use futures::StreamExt;
use lab_core::config::{init_params, GptConfig};
use lab_core::data::{encode_example, parse_jsonl, Record};
use lab_core::engine::{Engine, TokenBatch};
use lab_core::experiment::ExperimentConfig;
use lab_core::loss::LossMix;
use lab_core::rng::Rng;
use lab_core::sample::{generate, SampleConfig};
use lab_core::tokenizer::Tokenizer;
use lab_core::{checkpoint, LabError};
use lab_cpu::CpuEngine;
use lab_gpu::GpuEngine;
use lab_train::scenario::{run_scenario, Preset, Scenario, Variant, SCENARIOS};
use lab_train::{Session, SessionConfig, StepRecord};
use std::collections::HashMap;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent, Response};

type Result<T> = std::result::Result<T, String>;

#[wasm_bindgen(module = "/js/glue.js")]
extern "C" {
    /// A description of the WebGPU adapter, or null when `navigator.gpu` gives none.
    #[wasm_bindgen(js_name = webgpuAdapter)]
    fn webgpu_adapter() -> js_sys::Promise;
    /// `auto`, `webgpu` or `cpu`: what the page's link asks for.
    #[wasm_bindgen(js_name = engineChoice)]
    fn engine_choice() -> String;
}

const BUILTIN: &str = include_str!("builtin.jsonl");
/// On the GPU engine a run's weights are copied (for going back after a divergence) before
/// every this many steps, since each copy is one more readback of every weight per step
/// (its cost in the browser not measured yet); the CPU engine copies before every step, a
/// memcpy.
const GPU_COPY_EVERY: u32 = 10;
const MODEL_DIR: &str = "assets/models/starter";

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn post(msg: &FromWorker) {
    let text = serde_json::to_string(msg).expect("worker messages serialize");
    let _ = scope().post_message(&JsValue::from_str(&text));
}

fn now_ms() -> f64 {
    scope().performance().map(|p| p.now()).unwrap_or(0.0)
}

fn js_err(err: JsValue) -> String {
    err.as_string()
        .or_else(|| js_sys::JSON::stringify(&err).ok().and_then(|s| s.as_string()))
        .unwrap_or_else(|| "unknown JavaScript error".into())
}

async fn fetch_bytes(url: &str) -> Result<Vec<u8>> {
    let response: Response = JsFuture::from(scope().fetch_with_str(url))
        .await
        .map_err(|e| format!("{url}: {}", js_err(e)))?
        .unchecked_into();
    if !response.ok() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let buffer = JsFuture::from(response.array_buffer().map_err(js_err)?).await.map_err(js_err)?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

async fn fetch_text(url: &str) -> Result<String> {
    String::from_utf8(fetch_bytes(url).await?).map_err(|_| format!("{url}: not UTF-8"))
}

/// The starting weights: the policy's start and, frozen, the reference; and the tokenizer
/// they read.
struct Model {
    cfg: GptConfig,
    params: Vec<f32>,
    tokenizer: Tokenizer,
    description: String,
}

/// The model folder's tokenizer, checked against its vocabulary as
/// `checkpoint::read_tokenizer` checks a folder on disk: `tokenizer.json`, or the
/// character tokenizer for a folder without one whose vocabulary is its 96 ids.
async fn load_tokenizer(cfg: &GptConfig) -> Result<Tokenizer> {
    let url = format!("{MODEL_DIR}/tokenizer.json");
    let tokenizer = match fetch_text(&url).await {
        Ok(text) => Tokenizer::from_tokenizer_json_str(&text).map_err(|e| format!("{url}: {e}"))?,
        Err(_) if cfg.vocab == lab_core::tokenizer::VOCAB_SIZE => Tokenizer::Char,
        Err(err) => return Err(err),
    };
    if tokenizer.vocab_size() != cfg.vocab {
        return Err(format!(
            "{url}: the {} tokenizer has {} ids but config.json's vocab_size is {}",
            tokenizer.kind(),
            tokenizer.vocab_size(),
            cfg.vocab
        ));
    }
    Ok(tokenizer)
}

async fn load_model() -> (Model, Option<String>) {
    let loaded: Result<Model> = async {
        let config_json: serde_json::Value =
            serde_json::from_str(&fetch_text(&format!("{MODEL_DIR}/config.json")).await?)
                .map_err(|e| format!("{MODEL_DIR}/config.json: {e}"))?;
        let cfg = GptConfig::from_hf_json(&config_json)
            .map_err(|e| format!("{MODEL_DIR}/config.json: {e}"))?;
        let bytes = fetch_bytes(&format!("{MODEL_DIR}/model.safetensors")).await?;
        let params = checkpoint::from_safetensors(&cfg, &bytes)
            .map_err(|e| format!("{MODEL_DIR}/model.safetensors: {e}"))?;
        let tokenizer = load_tokenizer(&cfg).await?;
        let description = format!(
            "starter model ({} layers, d_model {}, ctx {}, {} parameters, {} tokenizer of {} ids)",
            cfg.n_layer,
            cfg.d_model,
            cfg.ctx,
            params.len(),
            tokenizer.kind(),
            tokenizer.vocab_size()
        );
        Ok(Model { cfg, params, tokenizer, description })
    }
    .await;
    match loaded {
        Ok(model) => (model, None),
        Err(err) => {
            let cfg = GptConfig::TINY;
            let params = init_params(&cfg, 0);
            let description = format!("random tiny model ({} parameters)", params.len());
            (Model { cfg, params, tokenizer: Tokenizer::Char, description }, Some(format!("The starter model could not be loaded ({err}); training a randomly initialised tiny model.")))
        }
    }
}

struct LoadedScenario {
    info: ScenarioInfo,
    preset: Preset,
    records: Vec<Record>,
}

async fn load_scenario(name: &str) -> Result<LoadedScenario> {
    if !SCENARIOS.contains(&name) {
        return Err(format!("no scenario {name:?} (shipped: {})", SCENARIOS.join(", ")));
    }
    let dir = format!("assets/scenarios/{name}");
    let preset: Preset = serde_json::from_str(&fetch_text(&format!("{dir}/preset.json")).await?)
        .map_err(|e| format!("{dir}/preset.json: line {}: {e}", e.line()))?;
    let data_path = format!("{dir}/{}", preset.data);
    let records = parse_jsonl(&fetch_text(&data_path).await?)
        .map_err(|e| e.in_file(&data_path).to_string())?;
    let explanation = fetch_text(&format!("{dir}/README.md")).await.unwrap_or_default();
    let info = ScenarioInfo {
        name: name.to_string(),
        title: preset.title.clone(),
        paper: preset.paper.clone(),
        explanation,
    };
    Ok(LoadedScenario { info, preset, records })
}

fn loss_terms(spec: &str) -> Vec<LossTerm> {
    LossMix::parse(spec)
        .map(|mix| {
            mix.terms
                .iter()
                .map(|(kind, weight)| LossTerm {
                    name: kind.name().to_string(),
                    weight: *weight,
                    formula: kind.formula().to_string(),
                    source: kind.source().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pair_text(record: &Record) -> PairText {
    match record {
        Record::Pair(pair) => {
            let r = pair.render();
            PairText { prompt: r.prompt, chosen: r.chosen, rejected: r.rejected }
        }
        Record::Unpaired(u) => {
            let (prompt, completion) = u.render();
            if u.label {
                PairText { prompt, chosen: completion, rejected: String::new() }
            } else {
                PairText { prompt, chosen: String::new(), rejected: completion }
            }
        }
        Record::Ranked(r) => {
            let (prompt, responses) = r.render();
            PairText {
                prompt,
                chosen: responses.first().cloned().unwrap_or_default(),
                rejected: responses.last().cloned().unwrap_or_default(),
            }
        }
    }
}

fn metrics_of(value: serde_json::Value) -> Metrics {
    match value {
        serde_json::Value::Object(map) => {
            map.into_iter().filter_map(|(k, v)| v.as_f64().map(|x| (k, x))).collect()
        }
        _ => Metrics::new(),
    }
}

struct Run {
    session: Session<Box<dyn Engine>>,
    target_steps: u32,
    displaced_at: Option<u32>,
    /// Steps done before this session started (a continued run).
    offset: u32,
    last_good: LastGood,
    /// The step a diverged run went back to; it takes no step until a continue or reset.
    diverged: Option<u32>,
}

impl Run {
    /// The step the run is at, counted from the reset.
    fn steps(&self) -> u32 {
        self.diverged.unwrap_or(self.offset + self.session.steps_done())
    }
}

/// How the page lists run `index` of `experiment` (the main run) and `compare`.
fn run_info(index: usize, run_experiment: &ExperimentConfig, compare: &[String]) -> RunInfo {
    RunInfo {
        label: if index == 0 { run_experiment.loss.clone() } else { compare[index - 1].clone() },
        loss: run_experiment.loss.clone(),
        terms: loss_terms(&run_experiment.loss),
    }
}

/// Everything the worker holds between messages.
struct Lab {
    model: Model,
    /// Whether the runs train on the GPU engine (WebGPU) rather than the CPU engine.
    on_gpu: bool,
    engine_name: String,
    engine_note: Option<String>,
    /// The frozen reference, for sampling and scoring on the page's requests.
    reference: CpuEngine,
    /// Engines of ended runs, reused by the next reset (`set_params` resets them), so a
    /// reset does not open a GPU device and compile the kernels again.
    spare: Vec<Box<dyn Engine>>,
    scenarios: HashMap<String, LoadedScenario>,
    experiment: ExperimentConfig,
    /// All records of the data (scenario or built-in) and the indices trained on.
    records: Vec<Record>,
    kept: Vec<usize>,
    runs: Vec<Run>,
    /// The reset these runs belong to.
    generation: u32,
    playing: bool,
    /// The scenario's checks on these runs, while they are the preset's.
    live: Option<Live>,
}

impl Lab {
    async fn new() -> Lab {
        let (model, model_note) = load_model().await;
        let choice = engine_choice();
        let adapter = if choice == "cpu" {
            None
        } else {
            JsFuture::from(webgpu_adapter()).await.ok().and_then(|v| v.as_string())
        };
        let reference = CpuEngine::new(model.cfg, model.params.clone())
            .expect("the loaded model fits its config");
        let cpu_name = "CPU (wasm)".to_string();
        let mut spare: Vec<Box<dyn Engine>> = Vec::new();
        let (engine_name, gpu_note) = match adapter {
            _ if choice == "cpu" => (cpu_name, Some("The link asks for the CPU engine (engine=cpu); training on the CPU engine compiled to wasm.".to_string())),
            // a software adapter (SwiftShader) runs the kernels on the CPU, far slower than
            // the CPU engine itself
            Some(adapter) if adapter.ends_with("(software)") && choice != "webgpu" => (
                cpu_name,
                Some(format!("WebGPU here is a software adapter ({adapter}), much slower than the CPU engine; training on the CPU engine compiled to wasm. Add engine=webgpu to the link to train on it anyway.")),
            ),
            // the first engine proves the adapter can run every kernel; run 0 trains on it
            Some(adapter) => match GpuEngine::new_async(model.cfg, model.params.clone()).await {
                Ok(engine) => {
                    spare.push(Box::new(engine));
                    (format!("WebGPU: {adapter}"), None)
                }
                Err(err) => (cpu_name, Some(format!("WebGPU adapter found ({adapter}), but the GPU engine could not start on it: {err}. Training on the CPU engine compiled to wasm."))),
            },
            None => (cpu_name, Some("WebGPU is not available in this browser (navigator.gpu gave no adapter); training on the CPU engine compiled to wasm.".to_string())),
        };
        let engine_note = match (gpu_note, model_note) {
            (Some(gpu), Some(model)) => Some(format!("{gpu} {model}")),
            (gpu, model) => gpu.or(model),
        };
        let on_gpu = !spare.is_empty();
        Lab {
            model,
            on_gpu,
            engine_name,
            engine_note,
            reference,
            spare,
            scenarios: HashMap::new(),
            experiment: ExperimentConfig::default(),
            records: Vec::new(),
            kept: Vec::new(),
            runs: Vec::new(),
            generation: 0,
            playing: false,
            live: None,
        }
    }

    /// An engine holding the starting weights: a spare one reset, or a new one.
    async fn fresh_engine(&mut self) -> Result<Box<dyn Engine>> {
        if let Some(mut engine) = self.spare.pop() {
            engine.set_params(&self.model.params).map_err(|e| e.to_string())?;
            return Ok(engine);
        }
        if self.on_gpu {
            let engine = GpuEngine::new_async(self.model.cfg, self.model.params.clone())
                .await
                .map_err(|e| format!("the GPU engine: {e}"))?;
            Ok(Box::new(engine))
        } else {
            Ok(Box::new(
                CpuEngine::new(self.model.cfg, self.model.params.clone())
                    .map_err(|e| e.to_string())?,
            ))
        }
    }

    /// A scenario's verdict, as `alignlab scenario NAME` computes it: every run of the
    /// preset trained on the CPU engine from the starting weights (blocking: the worker
    /// answers the next message when it is done), then the checks.
    async fn verdict(&mut self, name: &str) -> Result<FromWorker> {
        if !self.scenarios.contains_key(name) {
            let loaded = load_scenario(name).await?;
            self.scenarios.insert(name.to_string(), loaded);
        }
        let loaded = &self.scenarios[name];
        let scenario = Scenario {
            name: name.to_string(),
            dir: format!("assets/scenarios/{name}").into(),
            preset: loaded.preset.clone(),
            explanation: loaded.info.explanation.clone(),
            records: loaded.records.clone(),
        };
        let (cfg, params) = (self.model.cfg, &self.model.params);
        let report = run_scenario(
            &scenario,
            &self.model.tokenizer,
            || CpuEngine::new(cfg, params.clone()),
            |_, _| {},
        )
        .map_err(|e| format!("the verdict of {name}: {e}"))?;
        Ok(FromWorker::Verdict {
            scenario: name.to_string(),
            passed: report.verdict.passed,
            line: report.verdict.line,
            checks: report.verdict.checks,
        })
    }

    /// Run `run`'s current policy as a CPU engine: sampling needs one forward per token,
    /// which on the GPU would be one awaited readback each.
    async fn policy(&self, run: usize) -> Result<CpuEngine> {
        let session = &self.runs.get(run).ok_or_else(|| format!("no run {run}"))?.session;
        let params = session
            .engine()
            .params_async()
            .await
            .map_err(|e| format!("reading the policy's weights: {e}"))?;
        CpuEngine::new(self.model.cfg, params).map_err(|e| e.to_string())
    }

    #[allow(clippy::too_many_arguments)]
    async fn reset(
        &mut self,
        generation: u32,
        mut experiment: ExperimentConfig,
        mut compare: Vec<String>,
        drop_records: Vec<usize>,
        apply_preset: bool,
        data: Option<TrainingData>,
    ) -> Result<FromWorker> {
        self.playing = false;
        self.live = None;
        for run in self.runs.drain(..) {
            self.spare.push(run.session.into_engine());
        }
        self.generation = generation;
        let scenario = match experiment.scenario.clone() {
            Some(name) => {
                if !self.scenarios.contains_key(&name) {
                    let loaded = load_scenario(&name).await?;
                    self.scenarios.insert(name.clone(), loaded);
                }
                Some(name)
            }
            None => None,
        };
        let loaded = scenario.as_ref().and_then(|name| self.scenarios.get(name));
        if apply_preset {
            if let Some(s) = loaded {
                experiment =
                    ExperimentConfig { scenario: scenario.clone(), ..s.preset.experiment.clone() };
                compare = crate::state::preset_compare(&s.preset);
            }
        }
        let state = UiState {
            experiment: experiment.clone(),
            compare: compare.clone(),
            ..UiState::default()
        };
        let experiments = state.experiments().map_err(|e| e.to_string())?;
        self.records = match (&data, loaded) {
            (Some(d), _) => parse_jsonl(&d.jsonl).map_err(|e| e.in_file(&d.label).to_string())?,
            (None, Some(s)) => s.records.clone(),
            (None, None) => parse_jsonl(BUILTIN).map_err(|e| e.to_string())?,
        };
        self.kept = (0..self.records.len()).filter(|i| !drop_records.contains(i)).collect();
        if self.kept.is_empty() {
            return Err("every pair was dropped; nothing left to train on".into());
        }
        let kept_records: Vec<Record> =
            self.kept.iter().map(|&i| self.records[i].clone()).collect();
        let mut runs = Vec::new();
        let mut infos = Vec::new();
        let mut start = Vec::new();
        for (index, run_experiment) in experiments.iter().enumerate() {
            let config =
                SessionConfig::from_experiment(run_experiment).map_err(|e| e.to_string())?;
            let engine = self.fresh_engine().await?;
            let session = Session::new_async(engine, &self.model.tokenizer, &kept_records, config)
                .await
                .map_err(|e: LabError| format!("run {}: {e}", index + 1))?;
            let mut metrics = metrics_of(
                serde_json::to_value(session.instruments()).expect("instruments serialize"),
            );
            metrics.insert("step".into(), 0.0);
            start.push(metrics);
            infos.push(run_info(index, run_experiment, &compare));
            runs.push(Run {
                session,
                target_steps: run_experiment.steps,
                displaced_at: None,
                offset: 0,
                last_good: LastGood::new(self.copy_every(), 0, self.model.params.clone()),
                diverged: None,
            });
        }
        self.runs = runs;
        self.experiment = experiment.clone();
        if let Some((name, s)) = scenario.as_ref().and_then(|n| Some((n, self.scenarios.get(n)?))) {
            let own_data = data.is_none() && drop_records.is_empty();
            if let Some(variants) =
                crate::state::preset_runs(&s.preset, &experiment, &compare, own_data)
            {
                self.live = Some(self.watch(name, &s.preset.clone(), &variants).await?);
            }
        }
        let mut prompts: Vec<String> = Vec::new();
        let pairs: Vec<PairText> = self.records.iter().map(pair_text).collect();
        for p in &pairs {
            if !prompts.contains(&p.prompt) {
                prompts.push(p.prompt.clone());
            }
        }
        if let Some(s) = scenario.as_ref().and_then(|name| self.scenarios.get(name)) {
            for w in &s.preset.watch {
                if !prompts.contains(&w.prompt) {
                    prompts.insert(0, w.prompt.clone());
                }
            }
        }
        Ok(FromWorker::Ready {
            generation,
            engine: self.engine_name.clone(),
            engine_note: self.engine_note.clone(),
            model: self.model.description.clone(),
            experiment,
            compare,
            runs: infos,
            scenario: scenario
                .as_ref()
                .and_then(|name| self.scenarios.get(name))
                .map(|s| s.info.clone()),
            pairs,
            prompts,
            dropped: drop_records,
            start,
            table: self.table(),
        })
    }

    /// Run 0's pairs table, with dataset-wide record indices.
    fn table(&self) -> Vec<PairRow> {
        let Some(run) = self.runs.first() else { return Vec::new() };
        run.session
            .pairs()
            .iter()
            .map(|p| PairRow {
                record: self.kept.get(p.record).copied().unwrap_or(p.record),
                ches: p.ches,
                ches_normalized: p.ches_normalized,
                flip_threshold: p.flip_threshold,
                margin: p.margin,
                policy_chosen: p.policy_chosen,
                policy_rejected: p.policy_rejected,
                reference_chosen: p.reference_chosen,
                reference_rejected: p.reference_rejected,
                ranked: p.policy_chosen >= p.policy_rejected,
            })
            .collect()
    }

    /// One step of every run that has steps left; false when none has, or when one diverged
    /// (then everything pauses and the page is told).
    async fn tick(&mut self) -> bool {
        let mut any = false;
        for index in 0..self.runs.len() {
            let run = &mut self.runs[index];
            if run.diverged.is_some() || run.steps() >= run.target_steps {
                continue;
            }
            any = true;
            let started = now_ms();
            let outcome =
                checked_step(&mut run.session, &mut run.last_good, run.offset, index).await;
            let record: StepRecord = match outcome {
                Ok(Outcome::Stepped(record)) => record,
                Ok(Outcome::Diverged(d)) => {
                    run.diverged = Some(d.kept);
                    run.displaced_at = run.displaced_at.filter(|&at| at <= d.kept);
                    self.playing = false;
                    post(&FromWorker::Diverged {
                        generation: self.generation,
                        run: index,
                        step: d.step,
                        kept: d.kept,
                        message: d.message,
                    });
                    return false;
                }
                Err(err) => {
                    self.playing = false;
                    post(&FromWorker::Error { message: format!("run {}: {err}", index + 1) });
                    return false;
                }
            };
            let step_ms = now_ms() - started;
            if let Some(live) = &mut self.live {
                live.observe(index, &run.session, &record);
            }
            let step = run.offset + record.step;
            if run.displaced_at.is_none() && record.eval.logps_chosen_change < 0.0 {
                run.displaced_at = Some(step);
            }
            let displaced_at = run.displaced_at;
            let offset = f64::from(run.offset);
            let mut metrics =
                metrics_of(serde_json::to_value(&record).expect("step records serialize"));
            // a continued run's session counts from its restart; the page counts from the reset
            metrics.insert("step".into(), f64::from(step));
            if let Some(eval_step) = metrics.get_mut("eval/step") {
                *eval_step += offset;
            }
            let table = if index == 0 { Some(self.table()) } else { None };
            post(&FromWorker::Stepped {
                generation: self.generation,
                run: index,
                metrics,
                displaced_at,
                step_ms,
                table,
            });
        }
        if any {
            self.post_live_verdict().await;
        }
        any
    }

    /// Start watching the runs (at step 0) as `variants` of scenario `name`.
    async fn watch(&mut self, name: &str, preset: &Preset, variants: &[Variant]) -> Result<Live> {
        let records: Vec<Record> = self.kept.iter().map(|&i| self.records[i].clone()).collect();
        let mut sessions: Vec<_> = self.runs.iter_mut().map(|r| &mut r.session).collect();
        Live::start(name, preset, variants, &records, &self.model.tokenizer, &mut sessions)
            .await
            .map_err(|e| format!("the live verdict of {name}: {e}"))
    }

    /// The scenario's checks on the runs as they stand, posted when every run has just been
    /// evaluated (the checks read the evaluations); the gold reward, where there is one,
    /// measured on a CPU copy of each policy (sampling is one forward per token).
    async fn post_live_verdict(&mut self) {
        let Some(live) = &self.live else { return };
        let evaluated =
            self.runs.iter().all(|r| r.session.instruments().step == r.session.steps_done());
        if !evaluated || self.runs.iter().any(|r| r.diverged.is_some()) {
            return;
        }
        if let Some(probe) = live.gold_probe() {
            let mut golds = Vec::new();
            for index in 0..self.runs.len() {
                let measured = match self.policy(index).await {
                    Ok(mut policy) => {
                        probe.measure(&mut policy, &self.model.tokenizer).map_err(|e| e.to_string())
                    }
                    Err(err) => Err(err),
                };
                match measured {
                    Ok(gold) => golds.push(gold),
                    Err(err) => {
                        post(&FromWorker::Error { message: format!("the gold reward: {err}") });
                        return;
                    }
                }
            }
            if let Some(live) = &mut self.live {
                live.note_gold(&golds);
            }
        }
        let Some(live) = &self.live else { return };
        let mut sessions: Vec<_> = self.runs.iter_mut().map(|r| &mut r.session).collect();
        let (verdict, gold) = match live.verdict(&mut sessions, &self.model.tokenizer).await {
            Ok(out) => out,
            Err(err) => {
                post(&FromWorker::Error { message: format!("the live verdict: {err}") });
                return;
            }
        };
        post(&FromWorker::LiveVerdict {
            gold,
            generation: self.generation,
            scenario: live.scenario.clone(),
            step: self.runs[0].steps(),
            passed: verdict.passed,
            line: verdict.line,
            checks: verdict.checks,
            missing: verdict.missing,
        });
    }

    /// Copy the weights before every this many steps (see [`GPU_COPY_EVERY`]).
    fn copy_every(&self) -> u32 {
        if self.on_gpu {
            GPU_COPY_EVERY
        } else {
            1
        }
    }

    /// The message refusing to step while a run waits after diverging.
    fn diverged_refusal(&self) -> Option<String> {
        let index = self.runs.iter().position(|r| r.diverged.is_some())?;
        Some(format!(
            "run {} diverged and waits at step {}: continue (after changing a setting) or reset",
            index + 1,
            self.runs[index].steps()
        ))
    }

    /// Every run goes on from its current step (a diverged one: its last good step) under
    /// the new settings: a new session on the same data and reference, given the run's
    /// weights. Nothing changes if a run cannot be rebuilt.
    async fn resume(
        &mut self,
        experiment: ExperimentConfig,
        compare: Vec<String>,
    ) -> Result<FromWorker> {
        self.playing = false;
        let state = UiState {
            experiment: experiment.clone(),
            compare: compare.clone(),
            ..UiState::default()
        };
        let experiments = state.experiments().map_err(|e| e.to_string())?;
        if self.runs.is_empty() {
            return Err("no runs to continue: reset first".into());
        }
        if experiments.len() != self.runs.len() {
            return Err(format!(
                "continuing keeps the {} runs on the page; adding or removing a compared run needs a reset",
                self.runs.len()
            ));
        }
        if experiment.scenario != self.experiment.scenario {
            return Err("the scenario changed: reset to train on it".into());
        }
        // continued runs have left the preset's: the verdict's checks no longer apply
        self.live = None;
        let mut current = Vec::new();
        for run in &self.runs {
            let weights = run
                .session
                .engine()
                .params_async()
                .await
                .map_err(|e| format!("reading the weights: {e}"))?;
            current.push((run.steps(), run.displaced_at, weights));
        }
        let records: Vec<Record> = self.kept.iter().map(|&i| self.records[i].clone()).collect();
        let mut built: Vec<Run> = Vec::new();
        for (index, ((step, displaced_at, weights), run_experiment)) in
            current.into_iter().zip(&experiments).enumerate()
        {
            match self.continued_run(step, weights, run_experiment, &records).await {
                Ok(run) => built.push(Run { displaced_at, ..run }),
                Err(err) => {
                    self.spare.extend(built.into_iter().map(|r| r.session.into_engine()));
                    return Err(format!("run {}: {err}", index + 1));
                }
            }
        }
        for run in std::mem::replace(&mut self.runs, built) {
            self.spare.push(run.session.into_engine());
        }
        let infos = experiments.iter().enumerate().map(|(i, e)| run_info(i, e, &compare)).collect();
        self.experiment = experiment;
        self.playing = true;
        Ok(FromWorker::Continued { generation: self.generation, runs: infos, table: self.table() })
    }

    /// A run of `run_experiment` at step `step`: a new session whose reference is the
    /// starting model and whose policy holds `weights`, evaluated.
    async fn continued_run(
        &mut self,
        step: u32,
        weights: Vec<f32>,
        run_experiment: &ExperimentConfig,
        records: &[Record],
    ) -> Result<Run> {
        let config = SessionConfig::from_experiment(run_experiment).map_err(|e| e.to_string())?;
        let engine = self.fresh_engine().await?;
        let mut session = Session::new_async(engine, &self.model.tokenizer, records, config)
            .await
            .map_err(|e| e.to_string())?;
        session.engine_mut().set_params(&weights).map_err(|e| e.to_string())?;
        session
            .evaluate_async()
            .await
            .map_err(|e| format!("evaluating the weights of step {step}: {e}"))?;
        Ok(Run {
            session,
            target_steps: run_experiment.steps,
            displaced_at: None,
            offset: step,
            last_good: LastGood::new(self.copy_every(), step, weights),
            diverged: None,
        })
    }

    fn status(&self) -> FromWorker {
        FromWorker::Status {
            playing: self.playing,
            steps_done: self.runs.first().map(Run::steps).unwrap_or(0),
        }
    }

    async fn inspect(&mut self, prompt: &str, run: usize) -> Result<FromWorker> {
        let mut policy = self.policy(run).await?;
        let mut candidates: Vec<(String, String)> = Vec::new();
        let mut add = |completion: String, origin: &str| {
            if !completion.is_empty() && !candidates.iter().any(|(c, _)| *c == completion) {
                candidates.push((completion, origin.to_string()));
            }
        };
        for record in &self.records {
            let text = pair_text(record);
            if text.prompt == prompt {
                add(text.chosen, "chosen");
                add(text.rejected, "rejected");
            }
        }
        if let Some(s) = self.experiment.scenario.as_ref().and_then(|n| self.scenarios.get(n)) {
            for w in s.preset.watch.iter().filter(|w| w.prompt == prompt) {
                for c in &w.candidates {
                    add(c.clone(), "watched");
                }
            }
        }
        let ctx = self.model.cfg.ctx;
        let tokenizer = &self.model.tokenizer;
        let eot = tokenizer.eot();
        let prompt_tokens = prompt_ids(tokenizer, prompt, ctx)?;
        let mut rng = Rng::new(self.experiment.seed);
        let sampling = SampleConfig { temperature: 1.0, top_k: 0, max_new_tokens: 32 };
        for _ in 0..2 {
            let ids = generate(&mut self.reference, &prompt_tokens, eot, &sampling, &mut rng)
                .map_err(|e| e.to_string())?;
            add(tokenizer.decode(&ids), "sampled from the reference");
        }
        let greedy = SampleConfig { temperature: 0.0, ..sampling };
        let ids = generate(&mut policy, &prompt_tokens, eot, &greedy, &mut rng)
            .map_err(|e| e.to_string())?;
        add(tokenizer.decode(&ids), "greedy from the policy");

        let rows: Vec<(Vec<u32>, usize)> = candidates
            .iter()
            .map(|(c, _)| encode_example(tokenizer, prompt, c, ctx))
            .collect::<lab_core::Result<_>>()
            .map_err(|e| e.to_string())?;
        let batch = TokenBatch::from_rows(&rows).map_err(|e| e.to_string())?;
        let reference = self.reference.forward(&batch).map_err(|e| e.to_string())?;
        let policy = policy.forward(&batch).map_err(|e| e.to_string())?;
        let t = batch.seq_len;
        let mut out: Vec<Candidate> = candidates
            .iter()
            .zip(&rows)
            .enumerate()
            .map(|(b, ((completion, origin), (tokens, first)))| {
                let positions = *first..tokens.len();
                let (r, p) = (reference.seq_logps[b] as f64, policy.seq_logps[b] as f64);
                Candidate {
                    completion: completion.clone(),
                    origin: origin.clone(),
                    reference_logp: r,
                    policy_logp: p,
                    reference_prob: r.exp(),
                    policy_prob: p.exp(),
                    logp_change: p - r,
                    gained_most: false,
                    tokens: positions.clone().map(|i| tokenizer.token_label(tokens[i])).collect(),
                    token_logp_change: positions
                        .map(|i| {
                            (policy.token_logps[b * t + i] - reference.token_logps[b * t + i])
                                as f64
                        })
                        .collect(),
                }
            })
            .collect();
        if let Some(best) = (0..out.len()).max_by(|&a, &b| {
            (out[a].policy_prob - out[a].reference_prob)
                .total_cmp(&(out[b].policy_prob - out[b].reference_prob))
        }) {
            if out[best].policy_prob > out[best].reference_prob {
                out[best].gained_most = true;
            }
        }
        Ok(FromWorker::Inspected { prompt: prompt.to_string(), run, candidates: out })
    }

    async fn generate(
        &mut self,
        prompt: &str,
        run: usize,
        temperature: f32,
        max_new_tokens: usize,
        seed: u64,
    ) -> Result<FromWorker> {
        let mut policy = self.policy(run).await?;
        let prompt = chat_prompt(prompt);
        let tokenizer = &self.model.tokenizer;
        let eot = tokenizer.eot();
        let tokens = prompt_ids(tokenizer, &prompt, self.model.cfg.ctx)?;
        let config =
            SampleConfig { temperature, top_k: 0, max_new_tokens: max_new_tokens.clamp(1, 96) };
        let policy_ids = generate(&mut policy, &tokens, eot, &config, &mut Rng::new(seed))
            .map_err(|e| e.to_string())?;
        let reference_ids =
            generate(&mut self.reference, &tokens, eot, &config, &mut Rng::new(seed))
                .map_err(|e| e.to_string())?;
        Ok(FromWorker::Generated {
            prompt,
            policy: tokenizer.decode(&policy_ids),
            reference: tokenizer.decode(&reference_ids),
        })
    }
}

impl Lab {
    /// Candidate responses for the annotate view (`lab_core::annotate::sample_candidates`).
    #[allow(clippy::too_many_arguments)]
    async fn sample(
        &mut self,
        prompts: &[String],
        run: usize,
        n: usize,
        from_policy: bool,
        from_reference: bool,
        config: &SampleConfig,
        seed: u64,
    ) -> Result<FromWorker> {
        let prompts: Vec<String> = prompts.iter().map(|p| chat_prompt(p)).collect();
        let steps = self.runs.get(run).map(Run::steps).unwrap_or(0);
        // sampling runs on a CPU copy of the policy, whichever engine trains it (see `policy`)
        let mut policy = self.policy(run).await?;
        let mut models: Vec<(&str, &mut dyn Engine)> = Vec::new();
        if from_policy {
            models.push(("policy", &mut policy));
        }
        if from_reference {
            models.push(("reference", &mut self.reference));
        }
        if models.is_empty() {
            return Err("sample from the policy, the reference or both".into());
        }
        let sets = lab_core::annotate::sample_candidates(
            &mut models,
            &self.model.tokenizer,
            &prompts,
            n,
            config,
            seed,
            &mut |_, _| Ok(()),
        )
        .map_err(|e| e.to_string())?;
        Ok(FromWorker::Sampled { sets, run, steps })
    }
}

/// A bare question becomes the chat template's prompt (`User: … Assistant:`).
fn chat_prompt(text: &str) -> String {
    let text = text.trim();
    if text.starts_with("User:") || text.ends_with("Assistant:") {
        text.to_string()
    } else {
        lab_core::corpus::prompt(text)
    }
}

fn prompt_ids(tokenizer: &Tokenizer, prompt: &str, ctx: usize) -> Result<Vec<u32>> {
    let mut ids = vec![tokenizer.eot()];
    ids.extend(tokenizer.encode(prompt).map_err(|e| format!("prompt: {e}"))?);
    if ids.len() >= ctx {
        return Err(format!("the prompt is {} tokens; the model's context is {ctx}", ids.len()));
    }
    Ok(ids)
}

async fn handle(lab: &mut Option<Lab>, msg: ToWorker) {
    if lab.is_none() {
        *lab = Some(Lab::new().await);
    }
    let lab = lab.as_mut().expect("just created");
    let reply = match msg {
        ToWorker::Reset { generation, experiment, compare, drop_records, apply_preset, data } => {
            let ready =
                lab.reset(generation, experiment, compare, drop_records, apply_preset, data).await;
            if let Ok(ready) = ready {
                // the checks at step 0 follow the runs they describe
                post(&ready);
                lab.post_live_verdict().await;
                return;
            }
            ready
        }
        ToWorker::Play | ToWorker::Step if lab.diverged_refusal().is_some() => {
            lab.playing = false;
            post(&lab.status());
            Err(lab.diverged_refusal().expect("just checked"))
        }
        ToWorker::Play => {
            lab.playing = !lab.runs.is_empty();
            Ok(lab.status())
        }
        ToWorker::Pause => {
            lab.playing = false;
            Ok(lab.status())
        }
        ToWorker::Step => {
            lab.playing = false;
            lab.tick().await;
            Ok(lab.status())
        }
        ToWorker::Continue { experiment, compare } => lab.resume(experiment, compare).await,
        ToWorker::Inspect { prompt, run } => lab.inspect(&prompt, run).await,
        ToWorker::Verdict { scenario } => lab.verdict(&scenario).await,
        ToWorker::Generate { prompt, run, temperature, max_new_tokens, seed } => {
            lab.generate(&prompt, run, temperature, max_new_tokens, seed).await
        }
        ToWorker::Sample {
            prompts,
            run,
            n,
            from_policy,
            from_reference,
            temperature,
            top_k,
            max_new_tokens,
            seed,
        } => {
            let config =
                SampleConfig { temperature, top_k, max_new_tokens: max_new_tokens.clamp(1, 96) };
            lab.sample(&prompts, run, n.clamp(1, 8), from_policy, from_reference, &config, seed)
                .await
        }
    };
    post(&reply.unwrap_or_else(|message| FromWorker::Error { message }));
}

async fn run_loop(mut inbox: mpsc::UnboundedReceiver<ToWorker>) {
    let mut lab: Option<Lab> = None;
    loop {
        let playing = lab.as_ref().is_some_and(|l| l.playing);
        let next = if playing {
            // Empty or closed: step on (a closed inbox ends the loop once paused).
            inbox.try_recv().ok()
        } else {
            match inbox.next().await {
                Some(msg) => Some(msg),
                None => return,
            }
        };
        if let Some(msg) = next {
            // Of several resets waiting, only the last matters.
            let mut batch = vec![msg];
            while let Ok(more) = inbox.try_recv() {
                batch.push(more);
            }
            let last_reset = batch.iter().rposition(|m| matches!(m, ToWorker::Reset { .. }));
            for (i, msg) in batch.into_iter().enumerate() {
                if matches!(msg, ToWorker::Reset { .. }) && Some(i) != last_reset {
                    continue;
                }
                handle(&mut lab, msg).await;
            }
            continue;
        }
        if let Some(l) = lab.as_mut() {
            if !l.tick().await {
                l.playing = false;
                post(&l.status());
            }
        }
        // Let pause and reset in between steps.
        gloo_timers::future::TimeoutFuture::new(0).await;
    }
}

/// The worker's entry point (called by `web/worker.js` with the messages that arrived
/// while the module loaded).
#[wasm_bindgen]
pub fn worker_main(pending: js_sys::Array) {
    let (sender, inbox) = mpsc::unbounded::<ToWorker>();
    let receive = move |data: JsValue| {
        let parsed = data
            .as_string()
            .ok_or_else(|| "a message that is not a string".to_string())
            .and_then(|t| serde_json::from_str::<ToWorker>(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(msg) => {
                let _ = sender.unbounded_send(msg);
            }
            Err(err) => post(&FromWorker::Error { message: format!("worker: bad message: {err}") }),
        }
    };
    for data in pending.iter() {
        receive(data);
    }
    let onmessage =
        Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| receive(event.data()));
    scope().set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget();
    wasm_bindgen_futures::spawn_local(run_loop(inbox));
}
