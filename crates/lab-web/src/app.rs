//! The page: thin Leptos components over one store of signals. The settings are a
//! [`UiState`] whose URL form is the link; every number shown arrives from the worker.

#[path = "annotate.rs"]
mod annotate;

use crate::bridge;
use crate::charts::{self, RunHistory, CHART_IDS, RUN_COLORS};
use crate::history;
use crate::protocol::{Candidate, FromWorker, PairRow, PairText, ScenarioInfo, ToWorker};
use crate::state::{UiState, MAX_RUNS};
use lab_core::loss::{LossKind, LossMix};
use lab_train::scenario::{Check, SCENARIOS};
use leptos::prelude::*;
use std::collections::BTreeSet;

/// Every signal the components share.
#[derive(Clone, Copy)]
struct Store {
    ui: RwSignal<UiState>,
    ready: RwSignal<bool>,
    playing: RwSignal<bool>,
    engine: RwSignal<String>,
    engine_note: RwSignal<Option<String>>,
    model: RwSignal<String>,
    error: RwSignal<Option<String>>,
    scenario: RwSignal<Option<ScenarioInfo>>,
    runs: RwSignal<Vec<RunHistory>>,
    pairs: RwSignal<Vec<PairText>>,
    prompts: RwSignal<Vec<String>>,
    table: RwSignal<Vec<PairRow>>,
    dropped: RwSignal<Vec<usize>>,
    inspected: RwSignal<Option<(String, Vec<Candidate>)>>,
    generated: RwSignal<Option<(String, String, String)>>,
    /// ms since navigation start at the first trained step (for the performance test).
    first_step_ms: RwSignal<Option<f64>>,
    /// ms since navigation start when the first runs were ready.
    ready_ms: RwSignal<Option<f64>>,
    /// The last reset sent; replies about older resets are ignored.
    generation: RwSignal<u32>,
    /// A run diverged: training waits at its last good step for a continue or a reset.
    diverged: RwSignal<Option<Diverged>>,
    /// The data panel's: what the runs train on, sampled candidates.
    data: annotate::DataSignals,
    /// The scenario's verdict: none asked, running, or the worker's answer.
    verdict: RwSignal<VerdictState>,
    /// The scenario's checks on the page's own runs, at their latest evaluation.
    live: RwSignal<Option<LiveChecks>>,
}

/// The checks of a scenario's verdict on the runs the page trains (`FromWorker::LiveVerdict`).
#[derive(Debug, Clone, PartialEq)]
struct LiveChecks {
    scenario: String,
    step: u32,
    passed: bool,
    line: String,
    checks: Vec<Check>,
    missing: Vec<String>,
}

/// The verdict panel of a scenario.
#[derive(Debug, Clone, PartialEq, Default)]
enum VerdictState {
    #[default]
    None,
    Running(String),
    Done {
        scenario: String,
        passed: bool,
        line: String,
        checks: Vec<Check>,
    },
}

/// What the page shows of a diverged run (`FromWorker::Diverged`).
#[derive(Debug, Clone, PartialEq)]
struct Diverged {
    run: usize,
    step: u32,
    kept: u32,
    message: String,
}

fn now_ms() -> f64 {
    window().performance().map(|p| p.now()).unwrap_or(0.0)
}

fn write_url(state: &UiState) {
    let url = format!("?{}", state.to_query());
    if let Ok(history) = window().history() {
        let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&url));
    }
}

impl Store {
    /// Restart every run with `state` (checked first; a bad setting is shown, not run).
    fn apply(&self, state: UiState, apply_preset: bool, drop_records: Vec<usize>) {
        if !apply_preset {
            if let Err(err) = state.validate() {
                self.error.set(Some(err.to_string()));
                return;
            }
        }
        self.error.set(None);
        self.diverged.set(None);
        write_url(&state);
        self.ui.set(state.clone());
        self.ready.set(false);
        self.playing.set(false);
        let generation = self.generation.get_untracked() + 1;
        self.generation.set(generation);
        let data = self.data.training.get_untracked();
        bridge::send(&ToWorker::Reset {
            generation,
            experiment: state.experiment,
            compare: state.compare,
            drop_records,
            apply_preset,
            data,
        });
    }

    /// Change a setting; a change to the same value (a blur after a reset) restarts nothing.
    /// After a divergence the change waits for "continue" (or "reset") instead of restarting.
    fn edit(&self, change: impl FnOnce(&mut UiState)) {
        let mut state = self.ui.get_untracked();
        change(&mut state);
        if state == self.ui.get_untracked() {
            return;
        }
        if self.diverged.with_untracked(Option::is_some) {
            match state.validate() {
                Ok(()) => {
                    self.error.set(None);
                    write_url(&state);
                    self.ui.set(state);
                }
                Err(err) => self.error.set(Some(err.to_string())),
            }
            return;
        }
        self.apply(state, false, self.dropped.get_untracked());
    }

    /// Go on from the last good step with the settings on the page.
    fn resume(&self) {
        let state = self.ui.get_untracked();
        self.error.set(None);
        bridge::send(&ToWorker::Continue { experiment: state.experiment, compare: state.compare });
    }

    fn receive(&self, msg: FromWorker) {
        if !history::is_current(&msg, self.generation.get_untracked()) {
            return;
        }
        match msg {
            FromWorker::Ready {
                engine,
                engine_note,
                model,
                experiment,
                compare,
                runs,
                scenario,
                pairs,
                prompts,
                dropped,
                start,
                table,
                ..
            } => {
                if self.ready_ms.get_untracked().is_none() {
                    self.ready_ms.set(Some(now_ms()));
                }
                let state = UiState { experiment, compare, engine: self.ui.get_untracked().engine };
                write_url(&state);
                self.ui.set(state);
                self.engine.set(engine);
                self.engine_note.set(engine_note);
                self.model.set(model);
                self.scenario.set(scenario);
                self.runs.set(RunHistory::started(runs, start));
                let first_prompt = prompts.first().cloned();
                self.pairs.set(pairs);
                self.prompts.set(prompts);
                self.table.set(table);
                self.dropped.set(dropped);
                self.inspected.set(None);
                self.live.set(None);
                self.ready.set(true);
                if let Some(prompt) = first_prompt {
                    bridge::send(&ToWorker::Inspect { prompt, run: 0 });
                }
            }
            FromWorker::Stepped { run, metrics, displaced_at, step_ms, table, .. } => {
                if self.first_step_ms.get_untracked().is_none() {
                    self.first_step_ms.set(Some(now_ms()));
                }
                // Keep the displacement view current while training (every 5 steps of run 1).
                let step = metrics.get("step").copied().unwrap_or(0.0) as u32;
                if run == 0 && step.is_multiple_of(5) {
                    self.refresh_inspection();
                }
                self.runs.update(|runs| {
                    if let Some(r) = runs.get_mut(run) {
                        r.stepped(metrics, displaced_at, step_ms);
                    }
                });
                if let Some(table) = table {
                    self.table.set(table);
                }
            }
            FromWorker::Status { playing, .. } => {
                let was_playing = self.playing.get_untracked();
                self.playing.set(playing);
                if was_playing && !playing {
                    self.refresh_inspection();
                }
            }
            FromWorker::Diverged { run, step, kept, message, .. } => {
                self.playing.set(false);
                // the run is back at step `kept`: its later points described spoilt weights
                self.runs.update(|runs| {
                    if let Some(r) = runs.get_mut(run) {
                        r.rewound(kept);
                    }
                });
                self.diverged.set(Some(Diverged { run, step, kept, message }));
            }
            FromWorker::Continued { runs, table, .. } => {
                self.diverged.set(None);
                // continued runs have left the preset's settings
                self.live.set(None);
                self.runs.update(|histories| {
                    for (history, info) in histories.iter_mut().zip(runs) {
                        history.info = Some(info);
                    }
                });
                self.table.set(table);
                self.playing.set(true);
            }
            FromWorker::Inspected { prompt, candidates, .. } => {
                self.inspected.set(Some((prompt, candidates)))
            }
            FromWorker::Generated { prompt, policy, reference } => {
                self.generated.set(Some((prompt, policy, reference)))
            }
            FromWorker::Sampled { sets, steps, .. } => self.data.sampled.set(Some((sets, steps))),
            FromWorker::Verdict { scenario, passed, line, checks } => {
                self.verdict.set(VerdictState::Done { scenario, passed, line, checks })
            }
            FromWorker::LiveVerdict {
                scenario, step, passed, line, checks, missing, gold, ..
            } => {
                if gold.iter().any(Option::is_some) {
                    self.runs.update(|runs| RunHistory::note_gold(runs, step, &gold));
                }
                self.live.set(Some(LiveChecks { scenario, step, passed, line, checks, missing }))
            }
            FromWorker::Error { message } => {
                self.playing.set(false);
                if matches!(self.verdict.get_untracked(), VerdictState::Running(_)) {
                    self.verdict.set(VerdictState::None);
                }
                self.error.set(Some(message));
            }
        }
    }

    /// Measure the displacement view's prompt again.
    fn refresh_inspection(&self) {
        if let Some((prompt, _)) = self.inspected.get_untracked() {
            bridge::send(&ToWorker::Inspect { prompt, run: 0 });
        }
    }

    /// What the browser tests read (window.__alab).
    fn expose(&self) {
        let runs = self.runs.get();
        let steps: Vec<usize> = runs.iter().map(|r| r.points.len().saturating_sub(1)).collect();
        let state = serde_json::json!({
            "ready": self.ready.get(),
            "playing": self.playing.get(),
            "engine": self.engine.get(),
            "engineNote": self.engine_note.get(),
            "steps": steps,
            "firstStepMs": self.first_step_ms.get(),
            "readyMs": self.ready_ms.get(),
            "generation": self.generation.get(),
            "lastStepMs": runs.first().map(|r| r.last_step_ms),
            "query": self.ui.get().to_query(),
            "error": self.error.get(),
            "diverged": self.diverged.get().map(|d| serde_json::json!({
                "run": d.run, "step": d.step, "kept": d.kept, "message": d.message,
            })),
        });
        bridge::expose_state(&state.to_string());
    }
}

#[component]
pub fn App() -> impl IntoView {
    let store = Store {
        ui: RwSignal::new(UiState::default()),
        ready: RwSignal::new(false),
        playing: RwSignal::new(false),
        engine: RwSignal::new("starting…".into()),
        engine_note: RwSignal::new(None),
        model: RwSignal::new(String::new()),
        error: RwSignal::new(None),
        scenario: RwSignal::new(None),
        runs: RwSignal::new(Vec::new()),
        pairs: RwSignal::new(Vec::new()),
        prompts: RwSignal::new(Vec::new()),
        table: RwSignal::new(Vec::new()),
        dropped: RwSignal::new(Vec::new()),
        inspected: RwSignal::new(None),
        generated: RwSignal::new(None),
        first_step_ms: RwSignal::new(None),
        ready_ms: RwSignal::new(None),
        generation: RwSignal::new(0),
        diverged: RwSignal::new(None),
        data: annotate::DataSignals::new(),
        verdict: RwSignal::new(VerdictState::None),
        live: RwSignal::new(None),
    };
    provide_context(store);

    let query = window().location().search().unwrap_or_default();
    let (initial, link_error) = match UiState::from_query(&query) {
        Ok(state) => (state, None),
        Err(err) => (UiState::default(), Some(format!("The link's settings were not used: {err}"))),
    };
    // A link naming only a scenario gets the scenario's preset.
    let apply_preset = initial.experiment.scenario.is_some() && !query.contains("loss=");
    if let Err(err) = bridge::start(initial.engine, move |msg| store.receive(msg)) {
        store.error.set(Some(err));
    } else {
        store.apply(initial, apply_preset, Vec::new());
    }
    if link_error.is_some() {
        store.error.set(link_error);
    }

    Effect::new(move |_| store.runs.with(|runs| charts::draw_all(runs)));
    Effect::new(move |_| store.expose());

    view! {
        <header>
            <h1>"alignlab"</h1>
            <p class="tagline">"Preference learning, live: a tiny GPT policy, its frozen reference, DPO and its variants."</p>
            <EngineBanner/>
        </header>
        {move || store.error.get().map(|e| view! { <div class="error" role="alert">{e}</div> })}
        <main>
            <TrainPanel/>
            <section class="panel charts">
                <h2>"Instruments"</h2>
                <div class="chart-grid">
                    {CHART_IDS.iter().map(|id| view! { <div class="chart" id=*id></div> }).collect_view()}
                    <div class="chart" id=charts::GOLD_CHART_ID hidden=move || !store.runs.with(|r| charts::has_gold(r))></div>
                </div>
            </section>
            <PairsTable/>
            <DisplacementView/>
            <GeneratePanel/>
            <annotate::DataPanel/>
        </main>
        <footer>
            "alignlab · definitions and sources: "
            <a href="docs/losses-and-metrics.md">"losses and instruments"</a>
            " · "
            <a href="docs/engine.md">"engines and kernels"</a>
            " · the link reproduces the run"
        </footer>
    }
}

#[component]
fn EngineBanner() -> impl IntoView {
    let store = expect_context::<Store>();
    view! {
        <div class="engine" data-testid="engine">
            <span class="engine-name">"Engine: " {move || store.engine.get()}</span>
            <span class="model">{move || store.model.get()}</span>
        </div>
        {move || store.engine_note.get().map(|note| view! { <div class="banner" data-testid="engine-banner">{note}</div> })}
    }
}

fn loss_names() -> Vec<&'static str> {
    LossKind::ALL.iter().map(|k| k.name()).collect()
}

/// Formula and source of each term of a loss spec (the zoo's own descriptions).
fn loss_doc(spec: &str) -> impl IntoView {
    match LossMix::parse(spec.split(';').next().unwrap_or("")) {
        Ok(mix) => mix
            .terms
            .iter()
            .map(|(kind, weight)| {
                let weight =
                    if mix.terms.len() > 1 { format!("{weight} × ") } else { String::new() };
                view! {
                    <div class="loss-doc">
                        <code class="formula">{weight}{kind.name()}": "{kind.formula()}</code>
                        <span class="source">{kind.source()}</span>
                    </div>
                }
            })
            .collect_view()
            .into_any(),
        Err(err) => view! { <div class="loss-doc bad">{err.to_string()}</div> }.into_any(),
    }
}

fn number_input(
    label: &'static str,
    name: &'static str,
    step: &'static str,
    value: impl Fn() -> String + Send + Sync + 'static,
    set: impl Fn(&mut UiState, f64) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let store = expect_context::<Store>();
    view! {
        <label class="field">
            <span>{label}</span>
            <input type="number" name=name step=step prop:value=value on:change=move |ev| {
                match event_target_value(&ev).trim().parse::<f64>() {
                    Ok(v) => store.edit(|s| set(s, v)),
                    Err(_) => store.error.set(Some(format!("{name}: not a number"))),
                }
            }/>
        </label>
    }
}

#[component]
fn TrainPanel() -> impl IntoView {
    let store = expect_context::<Store>();
    let ui = store.ui;
    let scenario_select = move |ev| {
        let name = event_target_value(&ev);
        let mut state = UiState::default();
        state.experiment.scenario = if name.is_empty() { None } else { Some(name) };
        let preset = state.experiment.scenario.is_some();
        store.data.training.set(None);
        store.apply(state, preset, Vec::new());
    };
    let compare_input = move |slot: usize| {
        view! {
            <label class="field wide">
                <span>{format!("run {} loss", slot + 2)}</span>
                <input type="text" list="loss-names" name=format!("compare{}", slot + 2) placeholder="(none) e.g. ipo or robust;beta=0.5"
                    prop:value=move || ui.with(|s| s.compare.get(slot).cloned().unwrap_or_default())
                    on:change=move |ev| {
                        let value = event_target_value(&ev).trim().to_string();
                        store.edit(|s| {
                            let mut compare: Vec<String> = (0..MAX_RUNS - 1).map(|i| s.compare.get(i).cloned().unwrap_or_default()).collect();
                            compare[slot] = value;
                            s.compare = compare.into_iter().filter(|c| !c.is_empty()).collect();
                        });
                    }/>
            </label>
        }
    };
    let status = move || {
        let runs = store.runs.get();
        let target = ui.with(|s| s.experiment.steps);
        let done = runs.first().map(|r| r.points.len().saturating_sub(1)).unwrap_or(0);
        let ms = runs.first().map(|r| r.last_step_ms).unwrap_or(0.0);
        format!("step {done} / {target} · {ms:.0} ms per step")
    };
    view! {
        <section class="panel train">
            <h2>"Train"</h2>
            <datalist id="loss-names">{loss_names().into_iter().map(|n| view! { <option value=n></option> }).collect_view()}</datalist>
            <div class="row">
                <label class="field">
                    <span>"scenario"</span>
                    <select name="scenario" on:change=scenario_select prop:value=move || ui.with(|s| s.experiment.scenario.clone().unwrap_or_default())>
                        <option value="">"built-in sample (12 pairs)"</option>
                        {SCENARIOS.iter().map(|n| view! { <option value=*n>{*n}</option> }).collect_view()}
                    </select>
                </label>
                <label class="field">
                    <span>"loss"</span>
                    <select name="loss-pick" prop:value=move || ui.with(|s| s.experiment.loss.clone()) on:change=move |ev| {
                        let name = event_target_value(&ev);
                        store.edit(|s| s.experiment.loss = name);
                    }>
                        {loss_names().into_iter().map(|n| view! { <option value=n>{n}</option> }).collect_view()}
                        <option value="sigmoid+1*sft">"sigmoid+1*sft (RPO)"</option>
                    </select>
                </label>
                <label class="field wide">
                    <span>"loss or mix"</span>
                    <input type="text" name="loss" list="loss-names" prop:value=move || ui.with(|s| s.experiment.loss.clone()) on:change=move |ev| {
                        let spec = event_target_value(&ev).trim().to_string();
                        store.edit(|s| s.experiment.loss = spec);
                    }/>
                </label>
            </div>
            <div class="loss-docs">{move || loss_doc(&ui.with(|s| s.experiment.loss.clone()))}</div>
            <div class="row">
                {number_input("β", "beta", "any", move || ui.with(|s| s.experiment.params.beta.to_string()), |s, v| s.experiment.params.beta = v)}
                {number_input("learning rate", "lr", "any", move || ui.with(|s| s.experiment.lr.to_string()), |s, v| s.experiment.lr = v)}
                {number_input("batch size", "batch_size", "1", move || ui.with(|s| s.experiment.batch_size.to_string()), |s, v| s.experiment.batch_size = v.max(0.0) as usize)}
                {number_input("seed", "seed", "1", move || ui.with(|s| s.experiment.seed.to_string()), |s, v| s.experiment.seed = v.max(0.0) as u64)}
                {number_input("steps", "steps", "1", move || ui.with(|s| s.experiment.steps.to_string()), |s, v| s.experiment.steps = v.max(0.0) as u32)}
                {number_input("ε (label smoothing)", "label_smoothing", "any", move || ui.with(|s| s.experiment.params.label_smoothing.to_string()), |s, v| s.experiment.params.label_smoothing = v)}
            </div>
            <div class="row">{compare_input(0)}{compare_input(1)}</div>
            <div class="runs">
                {move || store.runs.get().iter().enumerate().skip(1).map(|(i, r)| {
                    let label = r.info.as_ref().map(|x| x.label.clone()).unwrap_or_default();
                    view! { <div class="run-doc" style=format!("border-color:{}", RUN_COLORS[i % 3])><b>{format!("run {}: ", i + 1)}</b>{loss_doc(&label)}</div> }
                }).collect_view()}
            </div>
            <div class="row controls">
                <button name="play" disabled=move || !store.ready.get() || store.diverged.with(Option::is_some) on:click=move |_| {
                    if store.playing.get_untracked() {
                        bridge::send(&ToWorker::Pause);
                        store.refresh_inspection();
                    } else {
                        bridge::send(&ToWorker::Play);
                    }
                    store.playing.update(|p| *p = !*p);
                }>{move || if store.playing.get() { "❚❚ pause" } else { "▶ play" }}</button>
                <button name="step" disabled=move || !store.ready.get() || store.playing.get() || store.diverged.with(Option::is_some) on:click=move |_| {
                    bridge::send(&ToWorker::Step);
                    store.refresh_inspection();
                }>"single step"</button>
                <button name="reset" on:click=move |_| store.apply(ui.get_untracked(), false, store.dropped.get_untracked())>"reset"</button>
                <span class="status" data-testid="status">{status}</span>
            </div>
            {move || store.diverged.get().map(|d| view! {
                <div class="error divergence" role="alert" data-testid="divergence">
                    <p>{d.message}</p>
                    <div class="row controls">
                        <button name="continue" on:click=move |_| store.resume()>{format!("continue from step {} with the settings above", d.kept)}</button>
                        <button name="reset-diverged" on:click=move |_| store.apply(ui.get_untracked(), false, store.dropped.get_untracked())>"reset"</button>
                    </div>
                </div>
            })}
            {move || store.scenario.get().map(|s| {
                let name = s.name.clone();
                let run_verdict = move |_| {
                    store.verdict.set(VerdictState::Running(name.clone()));
                    bridge::send(&ToWorker::Verdict { scenario: name.clone() });
                };
                let this = s.name.clone();
                let here = s.name.clone();
                let steps = move || store.ui.with(|u| u.experiment.steps);
                view! {
                    <div class="scenario">
                        <h3>{s.title}</h3>
                        <p class="paper">{s.paper}</p>
                        <p>{s.explanation.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join(" ")}</p>
                        {move || live_view(&here, store.live.get(), steps())}
                        <button name="verdict" on:click=run_verdict>"check the verdict (trains every run of the preset on the CPU, as alignlab scenario does)"</button>
                        {move || verdict_view(&this, store.verdict.get())}
                    </div>
                }
            })}
        </section>
    }
}

/// A verdict's checks, each value against its threshold, green when it holds.
fn checks_table(checks: Vec<Check>) -> impl IntoView {
    view! {
        <table>
            <thead><tr><th>"check"</th><th>"value"</th><th>"must be"</th><th>"ok"</th></tr></thead>
            <tbody>
                {checks.into_iter().map(|c| view! {
                    <tr class=if c.ok { "ok" } else { "failed" }>
                        <td>{c.what}</td>
                        <td>{format!("{:.3}", c.value)}</td>
                        <td>{c.must_be}</td>
                        <td>{if c.ok { "yes" } else { "no" }}</td>
                    </tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

/// The verdict's checks on the page's runs of scenario `name` as they train (`steps` is
/// the runs' length): how many hold now, and at the end whether the verdict passes.
fn live_view(name: &str, live: Option<LiveChecks>, steps: u32) -> Option<AnyView> {
    let live = live.filter(|l| l.scenario == name)?;
    let holding = live.checks.iter().filter(|c| c.ok).count();
    let summary = if live.step >= steps && live.missing.is_empty() {
        format!("{} at step {}", if live.passed { "PASS" } else { "FAIL" }, live.step)
    } else {
        format!("step {} of {steps}: {holding} of {} checks hold", live.step, live.checks.len())
    };
    let missing = (!live.missing.is_empty()).then(|| {
        format!(
            "Not trained here: {} (its checks are in the full verdict below).",
            live.missing.join(", ")
        )
    });
    Some(
        view! {
            <div class="verdict live" data-testid="live-verdict">
                <p>"The verdict's checks on these runs, as they train — "<strong>{summary}</strong></p>
                <p class="note">{live.line.split_once(": ").map_or(live.line.clone(), |(_, rest)| rest.to_string())}</p>
                {checks_table(live.checks)}
                {missing.map(|m| view! { <p class="note">{m}</p> })}
            </div>
        }
        .into_any(),
    )
}

/// The verdict of scenario `name`: its checks, each value against its threshold.
fn verdict_view(name: &str, state: VerdictState) -> Option<AnyView> {
    match state {
        VerdictState::Running(of) if of == name => Some(
            view! { <p class="verdict" role="status" aria-live="polite">"training every run of the preset… (about a minute)"</p> }
                .into_any(),
        ),
        VerdictState::Done { scenario, passed, line, checks } if scenario == name => Some(
            view! {
                <div class="verdict" data-testid="verdict" role="status" aria-live="polite">
                    <p><strong>{if passed { "PASS" } else { "FAIL" }}</strong>": "{line.split_once(": ").map_or(line.clone(), |(_, rest)| rest.to_string())}</p>
                    {checks_table(checks)}
                </div>
            }
            .into_any(),
        ),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum SortBy {
    Record,
    Ches,
    ChesNormalized,
    FlipThreshold,
    Margin,
    Ranked,
}

#[component]
fn PairsTable() -> impl IntoView {
    let store = expect_context::<Store>();
    let sort = RwSignal::new((SortBy::Ches, true));
    let selected = RwSignal::new(BTreeSet::<usize>::new());
    let top_n = RwSignal::new(5usize);
    let rows = move || {
        let (by, descending) = sort.get();
        let mut rows = store.table.get();
        let key = |r: &PairRow| match by {
            SortBy::Record => r.record as f64,
            SortBy::Ches => r.ches,
            SortBy::ChesNormalized => r.ches_normalized,
            SortBy::FlipThreshold => r.flip_threshold,
            SortBy::Margin => r.margin,
            SortBy::Ranked => f64::from(u8::from(r.ranked)),
        };
        rows.sort_by(|a, b| key(a).total_cmp(&key(b)));
        if descending {
            rows.reverse();
        }
        rows
    };
    let header = move |label: &'static str, by: SortBy| {
        view! {
            <th class="sortable" on:click=move |_| sort.update(|s| *s = if s.0 == by { (by, !s.1) } else { (by, true) })>
                {label}{move || { let s = sort.get(); if s.0 == by { if s.1 { " ▼" } else { " ▲" } } else { "" } }}
            </th>
        }
    };
    let select_top = move |_| {
        let mut by_ches = store.table.get_untracked();
        by_ches.sort_by(|a, b| b.ches.total_cmp(&a.ches));
        selected.set(by_ches.iter().take(top_n.get_untracked()).map(|r| r.record).collect());
    };
    let retrain = move |_| {
        let mut drop: Vec<usize> = store.dropped.get_untracked();
        drop.extend(selected.get_untracked());
        drop.sort();
        drop.dedup();
        selected.set(BTreeSet::new());
        store.apply(store.ui.get_untracked(), false, drop);
    };
    let fmt = |v: f64| format!("{v:.3}");
    view! {
        <section class="panel pairs">
            <h2>"Pairs"</h2>
            <p class="hint">"CHES and flip threshold come from the starting model (Razin et al. 2024; Chen et al. 2024 thm. 4.1); margin and ranking are the policy's now (run 1)."</p>
            <div class="row controls">
                <label class="field"><span>"top"</span>
                    <input type="number" name="top_n" min="1" prop:value=move || top_n.get().to_string() on:change=move |ev| top_n.set(event_target_value(&ev).parse().unwrap_or(1))/>
                </label>
                <button name="select-top" on:click=select_top>"select the top-CHES pairs"</button>
                <button name="retrain" disabled=move || selected.with(|s| s.is_empty()) on:click=retrain>
                    {move || format!("retrain without them ({})", selected.with(|s| s.len()))}
                </button>
                {move || (!store.dropped.get().is_empty()).then(|| view! {
                    <span class="dropped">{format!("{} pairs left out", store.dropped.get().len())}</span>
                    <button name="restore" on:click=move |_| store.apply(store.ui.get_untracked(), false, Vec::new())>"restore all"</button>
                })}
            </div>
            <div class="table-wrap">
            <table data-testid="pairs">
                <thead><tr>
                    <th></th>
                    {header("#", SortBy::Record)}
                    <th>"prompt"</th><th>"chosen"</th><th>"rejected"</th>
                    {header("CHES", SortBy::Ches)}
                    {header("CHES / len", SortBy::ChesNormalized)}
                    {header("flip threshold", SortBy::FlipThreshold)}
                    {header("margin", SortBy::Margin)}
                    {header("ranked", SortBy::Ranked)}
                </tr></thead>
                <tbody>
                    {move || {
                        let texts = store.pairs.get();
                        rows().into_iter().map(|r| {
                            let text = texts.get(r.record).cloned().unwrap_or(PairText { prompt: String::new(), chosen: String::new(), rejected: String::new() });
                            let record = r.record;
                            view! {
                                <tr>
                                    <td><input type="checkbox" prop:checked=move || selected.with(|s| s.contains(&record)) on:change=move |_| selected.update(|s| { if !s.remove(&record) { s.insert(record); } })/></td>
                                    <td>{record}</td>
                                    <td class="text">{text.prompt}</td>
                                    <td class="text">{text.chosen}</td>
                                    <td class="text">{text.rejected}</td>
                                    <td class="num">{fmt(r.ches)}</td>
                                    <td class="num">{fmt(r.ches_normalized)}</td>
                                    <td class="num">{fmt(r.flip_threshold)}</td>
                                    <td class="num">{fmt(r.margin)}</td>
                                    <td>{if r.ranked { view! { <span class="badge ok">"ranked"</span> } } else { view! { <span class="badge no">"unranked"</span> } }}</td>
                                </tr>
                            }
                        }).collect_view()
                    }}
                </tbody>
            </table>
            </div>
        </section>
    }
}

/// Background for a log-prob change: green where the policy gained, red where it lost.
fn heat(change: f64) -> String {
    let strength = (change.abs() / 2.0).min(1.0);
    if change >= 0.0 {
        format!("background: rgba(22, 163, 74, {strength:.2})")
    } else {
        format!("background: rgba(220, 38, 38, {strength:.2})")
    }
}

#[component]
fn DisplacementView() -> impl IntoView {
    let store = expect_context::<Store>();
    let prompt = RwSignal::new(String::new());
    let shown = RwSignal::new(0usize);
    let measure = move |p: String| {
        if !p.is_empty() {
            bridge::send(&ToWorker::Inspect { prompt: p, run: 0 });
        }
    };
    view! {
        <section class="panel displacement">
            <h2>"Where did the probability go?"</h2>
            <div class="row controls">
                <label class="field wide"><span>"prompt"</span>
                    <select name="inspect-prompt" prop:value=move || store.inspected.with(|i| i.as_ref().map(|(p, _)| p.clone()).unwrap_or_default()) on:change=move |ev| {
                        let p = event_target_value(&ev);
                        prompt.set(p.clone());
                        shown.set(0);
                        measure(p);
                    }>
                        {move || store.prompts.get().into_iter().map(|p| view! { <option value=p.clone()>{p.clone()}</option> }).collect_view()}
                    </select>
                </label>
                <button name="measure" on:click=move |_| measure(store.inspected.with_untracked(|i| i.as_ref().map(|(p, _)| p.clone())).unwrap_or_else(|| prompt.get_untracked()))>"measure now"</button>
            </div>
            <table data-testid="candidates">
                <thead><tr><th>"response"</th><th>"from"</th><th>"p reference"</th><th>"p policy"</th><th>"Δ log p"</th><th></th></tr></thead>
                <tbody>
                    {move || store.inspected.get().map(|(_, cands)| cands.into_iter().enumerate().map(|(i, c)| view! {
                        <tr class:selected=move || shown.get() == i on:click=move |_| shown.set(i)>
                            <td class="text">{c.completion.clone()}</td>
                            <td>{c.origin.clone()}</td>
                            <td class="num">{format!("{:.2e}", c.reference_prob)}</td>
                            <td class="num">{format!("{:.2e}", c.policy_prob)}</td>
                            <td class="num">{format!("{:+.3}", c.logp_change)}</td>
                            <td>{c.gained_most.then(|| view! { <span class="badge ok">"gained the most mass"</span> })}</td>
                        </tr>
                    }).collect_view())}
                </tbody>
            </table>
            <div class="heatmap" data-testid="heatmap">
                {move || store.inspected.get().and_then(|(_, cands)| cands.get(shown.get()).cloned()).map(|c| view! {
                    <div class="heat-caption">"per-token change of log-prob (policy − reference) for the selected response:"</div>
                    <div class="tokens">
                        {c.tokens.iter().zip(&c.token_logp_change).map(|(t, d)| {
                            let label = if t == "<|endoftext|>" { "⏎".to_string() } else { t.replace(' ', "\u{00a0}") };
                            view! { <span class="tok" style=heat(*d) title=format!("{t:?}: {d:+.3}")>{label}</span> }
                        }).collect_view()}
                    </div>
                })}
            </div>
        </section>
    }
}

#[component]
fn GeneratePanel() -> impl IntoView {
    let store = expect_context::<Store>();
    let prompt = RwSignal::new("Would you ever eat a bug?".to_string());
    let temperature = RwSignal::new(0.7f32);
    let seed = RwSignal::new(0u64);
    view! {
        <section class="panel generate">
            <h2>"Generate"</h2>
            <div class="row controls">
                <label class="field wide"><span>"prompt (a question, or a full User: … Assistant: prompt)"</span>
                    <input type="text" name="gen-prompt" prop:value=move || prompt.get() on:change=move |ev| prompt.set(event_target_value(&ev))/>
                </label>
                <label class="field"><span>"temperature"</span>
                    <input type="number" name="temperature" step="0.1" min="0" prop:value=move || temperature.get().to_string() on:change=move |ev| temperature.set(event_target_value(&ev).parse().unwrap_or(0.7))/>
                </label>
                <label class="field"><span>"seed"</span>
                    <input type="number" name="gen-seed" step="1" min="0" prop:value=move || seed.get().to_string() on:change=move |ev| seed.set(event_target_value(&ev).parse().unwrap_or(0))/>
                </label>
                <button name="generate" disabled=move || !store.ready.get() on:click=move |_| bridge::send(&ToWorker::Generate { prompt: prompt.get_untracked(), run: 0, temperature: temperature.get_untracked(), max_new_tokens: 48, seed: seed.get_untracked() })>"sample"</button>
            </div>
            {move || store.generated.get().map(|(p, policy, reference)| view! {
                <p class="gen-prompt"><code>{p}</code></p>
                <div class="side-by-side">
                    <div><h3>"policy"</h3><pre data-testid="gen-policy">{policy}</pre></div>
                    <div><h3>"reference"</h3><pre data-testid="gen-reference">{reference}</pre></div>
                </div>
            })}
        </section>
    }
}
