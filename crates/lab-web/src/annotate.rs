//! The data panel: annotate (two responses side by side, or a ranking of 3–5), sample
//! candidates on-policy from the worker, train on what was annotated, import and export
//! (TRL JSONL, run metrics as CSV/JSON, "Export to TRL"), everything kept in IndexedDB.
//!
//! A child module of `app` (it shares the page's `Store`). The data itself is a
//! [`Workbench`], held as this tab's [`Replica`] (one storage entry per item, merged with
//! what other tabs commit); this file wires it to keys, buttons, IndexedDB and the channel
//! on which tabs announce their commits. Keys while a pair is
//! shown: `1`/`←` A, `2`/`→` B, `0`/`↓` tie, `Enter` save and next; while a ranking is
//! shown: `1`–`5` pick a response, `↑`/`↓` move it, `Enter` save. Keys typed into a text
//! field are left alone.

use super::Store;
use crate::protocol::{ToWorker, TrainingData};
use crate::replica::{Batch, Entries, Replica};
use crate::workbench::{Part, Queued, SavedRun, Workbench};
use lab_core::annotate::{CandidateSet, Choice, Reward, SyntheticAnnotator, RANK_MODE_MAX};
use lab_core::data::{parse_jsonl, Record};
use lab_core::exchange::{self, MAX_IMPORT_BYTES};
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen(module = "/js/store.js")]
extern "C" {
    #[wasm_bindgen(js_name = storeRead)]
    fn store_read(prefixes_json: &str) -> js_sys::Promise;
    #[wasm_bindgen(js_name = storeWrite)]
    fn store_write(batch_json: &str) -> js_sys::Promise;
    #[wasm_bindgen(js_name = storeListen)]
    fn store_listen(on_keys: &Closure<dyn Fn(String)>);
    #[wasm_bindgen(js_name = downloadText)]
    fn download_text(name: &str, text: &str, mime: &str);
    #[wasm_bindgen(js_name = readPickedFile)]
    fn read_picked_file(input: &web_sys::HtmlInputElement, limit: f64) -> js_sys::Promise;
    #[wasm_bindgen(js_name = exposeData)]
    fn expose_data(json: &str);
}

/// The signals the rest of the page shares with the data panel.
#[derive(Clone, Copy)]
pub(super) struct DataSignals {
    /// What the runs train on, when it is not the scenario's or the built-in data.
    pub training: RwSignal<Option<TrainingData>>,
    /// The last sampled candidate sets, with the policy's step count.
    pub sampled: RwSignal<Option<(Vec<CandidateSet>, u32)>>,
}

impl DataSignals {
    pub fn new() -> Self {
        DataSignals { training: RwSignal::new(None), sampled: RwSignal::new(None) }
    }
}

const DEFAULT_STRENGTH: f64 = 0.75;

fn js_text(err: JsValue) -> String {
    err.as_string().unwrap_or_else(|| format!("{err:?}"))
}

/// Every stored entry of `parts`, read in one transaction.
async fn read_entries(parts: &[Part]) -> Result<Entries, String> {
    let prefixes =
        serde_json::to_string(&Replica::read_prefixes(parts)).expect("strings serialize");
    let value = JsFuture::from(store_read(&prefixes)).await.map_err(js_text)?;
    let pairs: Vec<(String, String)> =
        serde_json::from_str(&value.as_string().unwrap_or_default()).map_err(|e| e.to_string())?;
    Ok(pairs.into_iter().collect())
}

/// Everything the panel's handlers need, copied into each closure.
#[derive(Clone, Copy)]
struct Panel {
    store: Store,
    /// This tab's copy of the stored workbench (see `Replica`).
    replica: RwSignal<Replica>,
    /// Storage read at start (until then nothing is changed or saved).
    loaded: RwSignal<bool>,
    message: RwSignal<Option<String>>,
    error: RwSignal<Option<String>>,
    /// A commit that failed: what is unsaved stays on the page.
    storage_error: RwSignal<Option<String>>,
    /// Stored entries that could not be read (left in storage untouched).
    unreadable: RwSignal<Option<String>>,
    /// The set on screen: the first queued when it was shown. It stays while the user
    /// judges it, even if another tab takes it out of the queue meanwhile.
    shown: RwSignal<Option<Queued>>,
    choice: RwSignal<Option<Choice>>,
    strength: RwSignal<f64>,
    rationale: RwSignal<String>,
    /// Rank mode: the order on screen (indices into the responses), and the picked row.
    order: RwSignal<Vec<usize>>,
    picked: RwSignal<usize>,
    last_sample_steps: RwSignal<Option<u32>>,
    saves: RwSignal<u32>,
    /// Commits started and not yet confirmed (or failed).
    pending: RwSignal<u32>,
    /// A commit is under way; `write_again`: changes arrived meanwhile, commit them after it.
    writing: StoredValue<bool>,
    write_again: StoredValue<bool>,
    /// A read is under way; `want`: the parts still to read.
    reading: StoredValue<bool>,
    want: StoredValue<Vec<Part>>,
    page_id: f64,
}

impl Panel {
    /// The workbench as this tab sees it (tracked).
    fn bench<R>(&self, f: impl FnOnce(&Workbench) -> R) -> R {
        self.replica.with(|r| f(r.bench()))
    }

    fn bench_untracked<R>(&self, f: impl FnOnce(&Workbench) -> R) -> R {
        self.replica.with_untracked(|r| f(r.bench()))
    }

    /// Apply a change to the workbench; on success commit it to storage.
    fn change(&self, f: impl FnOnce(&mut Workbench) -> lab_core::Result<String>) {
        if !self.loaded.get_untracked() {
            self.error
                .set(Some("still reading this browser's storage; try again in a moment".into()));
            return;
        }
        let now = js_sys::Date::now();
        let changed = self.replica.try_maybe_update(|r| {
            let out = r.change(now, f);
            (out.is_ok(), out)
        });
        let Some(changed) = changed else { return };
        match changed {
            Ok(message) => {
                self.error.set(None);
                self.message.set((!message.is_empty()).then_some(message));
                self.flush();
            }
            Err(err) => self.error.set(Some(err.to_string())),
        }
    }

    /// Commit every unsaved write in one transaction, one commit at a time (changes made
    /// meanwhile go in the next). A failure (a full quota) is reported; the writes stay
    /// unsaved, on the page, and go with the next commit.
    fn flush(&self) {
        if self.writing.get_value() {
            self.write_again.set_value(true);
            return;
        }
        let batch: Batch = self.replica.with_untracked(Replica::outbox);
        if batch.is_empty() {
            return;
        }
        self.writing.set_value(true);
        self.pending.update(|n| *n += 1);
        let panel = *self;
        spawn_local(async move {
            let json = serde_json::to_string(&batch).expect("strings serialize");
            let written = JsFuture::from(store_write(&json)).await;
            panel.writing.set_value(false);
            match written {
                Ok(_) => {
                    panel.replica.update(|r| r.committed(&batch));
                    panel.saves.update(|n| *n += 1);
                    if panel.replica.with_untracked(Replica::unsaved) == 0 {
                        panel.storage_error.set(None);
                    }
                    if panel.write_again.get_value() {
                        panel.write_again.set_value(false);
                        panel.flush();
                    }
                }
                Err(err) => {
                    panel.write_again.set_value(false);
                    let n = panel.replica.with_untracked(Replica::unsaved);
                    panel.storage_error.set(Some(format!(
                        "Not saved in this browser ({}). Nothing is lost yet: {n} unsaved changes are kept on this page and saved with your next change (or \"save again\"); export them if you close the tab.",
                        js_text(err)
                    )));
                }
            }
            panel.pending.update(|n| *n = n.saturating_sub(1));
        });
    }

    /// Read `parts` from storage (at start: all of them; later: what another tab changed)
    /// and show them with this tab's unsaved changes on top. Reads run one at a time; one
    /// that a commit of this tab overtook is repeated.
    fn reload(&self, parts: &[Part]) {
        self.want.update_value(|want| {
            want.extend_from_slice(parts);
            want.sort();
            want.dedup();
        });
        if self.reading.get_value() {
            return;
        }
        self.reading.set_value(true);
        let panel = *self;
        spawn_local(async move {
            loop {
                let parts = panel.want.try_update_value(std::mem::take).unwrap_or_default();
                if parts.is_empty() {
                    break;
                }
                let read_at = panel.replica.with_untracked(Replica::commits);
                let problems = match read_entries(&parts).await {
                    Ok(entries) => {
                        let applied = panel
                            .replica
                            .try_update_untracked(|r| r.reloaded(&parts, entries, read_at))
                            .flatten();
                        let Some(problems) = applied else {
                            panel.want.update_value(|want| want.extend_from_slice(&parts));
                            continue;
                        };
                        panel.replica.notify();
                        problems
                    }
                    Err(err) => vec![format!("could not read this browser's storage: {err}")],
                };
                if !problems.is_empty() {
                    panel.unreadable.set(Some(format!(
                        "Some stored data could not be read and is left untouched (what you make now is saved beside it): {}",
                        problems.join("; ")
                    )));
                }
                if !panel.loaded.get_untracked() {
                    panel.loaded.set(true);
                    panel.reset_item();
                } else if !panel.judging() {
                    panel.reset_item();
                }
                // a first read may have found entries of an earlier version to split up
                panel.flush();
            }
            panel.reading.set_value(false);
        });
    }

    /// Show the first queued set, nothing judged yet.
    fn reset_item(&self) {
        let shown = self.bench_untracked(|b| b.queue.first().cloned());
        let n = shown.as_ref().map(|q| q.set.responses.len().min(RANK_MODE_MAX)).unwrap_or(0);
        self.shown.set(shown);
        self.choice.set(None);
        self.strength.set(DEFAULT_STRENGTH);
        self.rationale.set(String::new());
        self.order.set((0..n).collect());
        self.picked.set(0);
    }

    /// Whether the user has started judging the set on screen (a choice, a strength, a rationale
    /// or a reordering): then another tab's changes do not replace it.
    fn judging(&self) -> bool {
        self.shown.with_untracked(Option::is_some)
            && (self.choice.get_untracked().is_some()
                || self.strength.get_untracked() != DEFAULT_STRENGTH
                || !self.rationale.with_untracked(String::is_empty)
                || self.order.with_untracked(|o| o.iter().enumerate().any(|(i, &k)| i != k)))
    }

    /// Whether the set on screen is no longer queued (another tab judged it).
    fn shown_gone(&self) -> bool {
        self.shown.with(|s| {
            s.as_ref().is_some_and(|s| self.bench(|b| !b.queue.iter().any(|q| q.key == s.key)))
        })
    }

    /// Rank mode when the shown set has 3 or more responses.
    fn rank_mode(&self) -> bool {
        self.shown.with(|s| s.as_ref().is_some_and(|q| q.set.responses.len() >= 3))
    }

    /// Save the current judgement and show the next set.
    fn commit(&self) {
        let Some(shown) = self.shown.get_untracked() else {
            self.error
                .set(Some("nothing to annotate: sample responses or queue a dataset first".into()));
            return;
        };
        let rationale = self.rationale.get_untracked();
        if self.rank_mode() {
            let order = self.order.get_untracked();
            self.change(|b| b.rank(&shown, &order, &rationale).map(|_| String::new()));
        } else {
            let Some(choice) = self.choice.get_untracked() else {
                self.error.set(Some("choose A (1), B (2) or tie (0) first".into()));
                return;
            };
            let strength = self.strength.get_untracked();
            self.change(|b| {
                b.choose(&shown, 0, 1, choice, strength, &rationale).map(|_| String::new())
            });
        }
        if self.error.get_untracked().is_none() {
            self.reset_item();
        }
    }

    fn move_picked(&self, delta: isize) {
        let from = self.picked.get_untracked();
        let mut order = self.order.get_untracked();
        let to = from as isize + delta;
        if to >= 0 && (to as usize) < order.len() {
            order.swap(from, to as usize);
            self.order.set(order);
            self.picked.set(to as usize);
        }
    }

    fn on_key(&self, ev: &web_sys::KeyboardEvent) {
        if !self.loaded.get_untracked()
            || self.shown.with_untracked(Option::is_none)
            || ev.ctrl_key()
            || ev.meta_key()
            || ev.alt_key()
        {
            return;
        }
        let key = ev.key();
        let target = ev.target().and_then(|t| t.dyn_into::<web_sys::Element>().ok());
        let tag = target.as_ref().map(|e| e.tag_name()).unwrap_or_default();
        // Typing goes to text fields; on the strength slider only the choice keys and Enter
        // are ours (its arrows move it).
        let on_slider = tag == "INPUT"
            && target.as_ref().and_then(|e| e.get_attribute("type")).as_deref() == Some("range");
        if (matches!(tag.as_str(), "INPUT" | "TEXTAREA" | "SELECT") && !on_slider)
            || (on_slider && key.starts_with("Arrow"))
        {
            return;
        }
        let handled = if self.rank_mode() {
            match key.as_str() {
                "ArrowUp" => {
                    self.move_picked(-1);
                    true
                }
                "ArrowDown" => {
                    self.move_picked(1);
                    true
                }
                "Enter" => {
                    self.commit();
                    true
                }
                d if d.len() == 1 && d.as_bytes()[0].is_ascii_digit() => {
                    let row = (d.as_bytes()[0] - b'0') as usize;
                    if row >= 1 && row <= self.order.with_untracked(Vec::len) {
                        self.picked.set(row - 1);
                    }
                    true
                }
                _ => false,
            }
        } else {
            let choice = match key.as_str() {
                "1" | "ArrowLeft" => Some(Choice::A),
                "2" | "ArrowRight" => Some(Choice::B),
                "0" | "ArrowDown" => Some(Choice::Tie),
                _ => None,
            };
            if let Some(choice) = choice {
                self.choice.set(Some(choice));
                self.error.set(None);
                true
            } else if key == "Enter" {
                self.commit();
                true
            } else {
                false
            }
        };
        if handled {
            ev.prevent_default();
        }
    }

    /// Train every run on `data` (from the starting weights, the reference frozen).
    fn train_on(&self, data: TrainingData) {
        if let Err(err) = parse_jsonl(&data.jsonl) {
            self.error.set(Some(format!("{}: {err}", data.label)));
            return;
        }
        self.store.data.training.set(Some(data));
        let mut state = self.store.ui.get_untracked();
        state.experiment.scenario = None;
        self.store.apply(state, false, Vec::new());
    }

    /// Save the page's runs (called when training pauses or stops).
    fn save_runs(&self) {
        let runs = self.store.runs.get_untracked();
        let generation = self.store.generation.get_untracked();
        let experiment = self.store.ui.with_untracked(|s| s.experiment.to_query());
        let data = self
            .store
            .data
            .training
            .with_untracked(|t| t.as_ref().map(|t| t.label.clone()))
            .unwrap_or_else(|| {
                self.store
                    .ui
                    .with_untracked(|s| s.experiment.scenario.clone())
                    .map(|s| format!("scenario {s}"))
                    .unwrap_or_else(|| "built-in sample".into())
            });
        let mut saved = Vec::new();
        for (i, run) in runs.iter().enumerate().filter(|(_, r)| r.points.len() > 1) {
            let label = run.info.as_ref().map(|x| x.label.clone()).unwrap_or_default();
            saved.push(SavedRun {
                key: String::new(),
                id: format!("{generation}/{i}@{}", self.page_id),
                label,
                experiment: experiment.clone(),
                data: data.clone(),
                points: run.points.clone(),
            });
        }
        if !saved.is_empty() {
            self.change(|b| {
                for run in saved {
                    b.save_run(run);
                }
                Ok(String::new())
            });
        }
    }

    fn expose(&self) {
        let state = self.replica.with(|r| {
            let b = r.bench();
            serde_json::json!({
                "loaded": self.loaded.get(),
                "annotations": b.annotations.len(),
                "queue": b.queue.len(),
                "datasets": b.datasets.iter().map(|d| serde_json::json!({"name": d.name, "records": d.records})).collect::<Vec<_>>(),
                "runs": b.runs.len(),
                "error": self.error.get(),
                "storageError": self.storage_error.get(),
                "unreadable": self.unreadable.get(),
                "unsaved": r.unsaved(),
                "message": self.message.get(),
                "saves": self.saves.get(),
                "pendingWrites": self.pending.get(),
                "lastSampleSteps": self.last_sample_steps.get(),
                "training": self.store.data.training.with(|t| t.as_ref().map(|t| t.label.clone())),
                "rankMode": self.rank_mode(),
            })
        });
        expose_data(&state.to_string());
    }
}

fn download(name: &str, text: &str) {
    let mime = if name.ends_with(".csv") {
        "text/csv"
    } else if name.ends_with(".py") {
        "text/x-python"
    } else {
        "application/json"
    };
    download_text(name, text, mime);
}

fn short(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        text.chars().take(n).collect::<String>() + "…"
    }
}

fn record_summary(record: &Record) -> (String, String, String, String) {
    let set = CandidateSet::from_record(record, "");
    match record {
        Record::Pair(p) => (
            set.prompt,
            set.responses[0].clone(),
            set.responses[1].clone(),
            p.alpha.map(|a| format!("{a}")).unwrap_or_default(),
        ),
        Record::Ranked(_) => (
            set.prompt,
            format!("1. {}", set.responses[0]),
            format!(
                "… {}. {}",
                set.responses.len(),
                set.responses.last().cloned().unwrap_or_default()
            ),
            "ranked".into(),
        ),
        Record::Unpaired(u) => (
            set.prompt,
            set.responses[0].clone(),
            String::new(),
            if u.label { "👍".into() } else { "👎".into() },
        ),
    }
}

#[component]
pub(super) fn DataPanel() -> impl IntoView {
    let store = expect_context::<Store>();
    let panel = Panel {
        store,
        // a tab's part of the storage keys it makes: random, so two tabs never share it
        replica: RwSignal::new(Replica::new(&format!(
            "{:08x}",
            (js_sys::Math::random() * f64::from(u32::MAX)) as u32
        ))),
        loaded: RwSignal::new(false),
        message: RwSignal::new(None),
        error: RwSignal::new(None),
        storage_error: RwSignal::new(None),
        unreadable: RwSignal::new(None),
        shown: RwSignal::new(None),
        choice: RwSignal::new(None),
        strength: RwSignal::new(DEFAULT_STRENGTH),
        rationale: RwSignal::new(String::new()),
        order: RwSignal::new(Vec::new()),
        picked: RwSignal::new(0),
        last_sample_steps: RwSignal::new(None),
        saves: RwSignal::new(0),
        pending: RwSignal::new(0),
        writing: StoredValue::new(false),
        write_again: StoredValue::new(false),
        reading: StoredValue::new(false),
        want: StoredValue::new(Vec::new()),
        page_id: js_sys::Date::now(),
    };
    panel.reload(&Part::ALL);
    // Another tab committed: read the parts it changed.
    let on_keys = Closure::<dyn Fn(String)>::new(move |json: String| {
        let keys: Vec<String> = serde_json::from_str(&json).unwrap_or_default();
        panel.reload(&Replica::parts_of(&keys));
    });
    store_listen(&on_keys);
    on_keys.forget();
    let key_handle = window_event_listener(leptos::ev::keydown, move |ev| panel.on_key(&ev));
    on_cleanup(move || key_handle.remove());
    Effect::new(move |_| panel.expose());

    // Sampled sets go to the queue.
    Effect::new(move |_| {
        if let Some((sets, steps)) = store.data.sampled.get() {
            store.data.sampled.set(None);
            panel.last_sample_steps.set(Some(steps));
            panel.change(|b| {
                let n = b.enqueue(sets);
                Ok(format!("{n} prompts with two or more different responses sampled (policy at step {steps}) and queued"))
            });
            if panel.shown.with_untracked(Option::is_none) {
                panel.reset_item();
            }
        }
    });
    // Run histories are saved whenever training stops (pause, end, single step).
    Effect::new(move |_| {
        let playing = store.playing.get();
        let steps: usize = store.runs.with(|runs| runs.iter().map(|r| r.points.len()).sum());
        if !playing && steps > 1 && panel.loaded.get_untracked() && store.ready.get_untracked() {
            panel.save_runs();
        }
    });

    // Sampling settings.
    let sample_n = RwSignal::new(2usize);
    let sample_policy = RwSignal::new(true);
    let sample_reference = RwSignal::new(false);
    let sample_temperature = RwSignal::new(1.0f32);
    let sample_top_k = RwSignal::new(0usize);
    let sample_seed = RwSignal::new(0u64);
    let sample_prompt = RwSignal::new(String::new());
    let sample = move |_| {
        let custom = sample_prompt.get_untracked().trim().to_string();
        let prompts: Vec<String> = if custom.is_empty() {
            store.prompts.get_untracked().into_iter().take(8).collect()
        } else {
            vec![custom]
        };
        if prompts.is_empty() {
            panel
                .error
                .set(Some("no prompts yet: wait for the runs to be ready or type a prompt".into()));
            return;
        }
        panel.message.set(Some("sampling…".into()));
        let seed = sample_seed.get_untracked();
        sample_seed.set(seed + 1);
        crate::bridge::send(&ToWorker::Sample {
            prompts,
            run: 0,
            n: sample_n.get_untracked(),
            from_policy: sample_policy.get_untracked(),
            from_reference: sample_reference.get_untracked(),
            temperature: sample_temperature.get_untracked(),
            top_k: sample_top_k.get_untracked(),
            max_new_tokens: 48,
            seed,
        });
    };
    let queue_training_pairs = move |_| {
        let pairs = store.pairs.get_untracked();
        panel.change(|b| {
            let sets = pairs.into_iter().map(|p| CandidateSet {
                prompt: p.prompt,
                responses: vec![p.chosen, p.rejected],
                origins: vec!["dataset".into(), "dataset".into()],
            });
            let n = b.enqueue(sets);
            Ok(format!(
                "{n} pairs of the training data queued (shown in their stored order: A was chosen)"
            ))
        });
        panel.reset_item();
    };

    // The synthetic annotator, for bulk labels with a known amount of noise.
    let rules = RwSignal::new("refusal=-2,sentiment".to_string());
    let flip_rate = RwSignal::new(0.0f64);
    let alpha_temperature = RwSignal::new(1.0f64);
    let label_queue = move |_| {
        let spec = rules.get_untracked();
        let (eps, tau, seed) = (
            flip_rate.get_untracked(),
            alpha_temperature.get_untracked(),
            sample_seed.get_untracked(),
        );
        panel.change(|b| {
            let annotator = SyntheticAnnotator {
                reward: Reward::parse(&spec)?,
                flip_rate: eps,
                alpha_temperature: tau,
                seed,
                lists_to_pairs: true,
            };
            let r = b.label_queue(&annotator)?;
            Ok(format!(
                "{} pairs labelled by {}: {} ties (α 0.5), {} of {} labels flipped (ε = {eps})",
                r.pairs,
                annotator.reward.spec(),
                r.ties,
                r.flipped,
                r.flippable
            ))
        });
        panel.reset_item();
    };

    // Import.
    let import = move |ev: leptos::ev::Event| {
        let Some(input) = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok())
        else {
            return;
        };
        spawn_local(async move {
            let picked = JsFuture::from(read_picked_file(&input, MAX_IMPORT_BYTES as f64)).await;
            input.set_value("");
            let value = match picked {
                Ok(v) => v,
                Err(err) => {
                    panel.error.set(Some(format!("could not read the file: {}", js_text(err))));
                    return;
                }
            };
            let Some(json) = value.as_string() else { return };
            let file: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let name = file["name"].as_str().unwrap_or("file").to_string();
            let size = file["size"].as_f64().unwrap_or(0.0) as u64;
            match file["text"].as_str() {
                None => panel.error.set(Some(
                    exchange::check_import_size(&name, size)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| format!("{name}: could not be read")),
                )),
                Some(text) => panel.change(|b| {
                    b.import(&name, text).map(|n| format!("{name}: {n} records imported"))
                }),
            }
        });
    };

    let export_trl = move |_| {
        let experiment = store.ui.with_untracked(|s| s.experiment.clone());
        let data = store
            .data
            .training
            .get_untracked()
            .map(|t| t.jsonl)
            .unwrap_or_else(|| panel.bench_untracked(|b| b.annotations_jsonl()));
        if data.is_empty() {
            panel.error.set(Some("Export to TRL writes the data you train on: annotate some pairs, or train on an imported dataset, first".into()));
            return;
        }
        let result = parse_jsonl(&data)
            .map_err(|e| e.in_file("alignlab-data.jsonl"))
            .and_then(|records| {
                exchange::check_trl_dpo_data(&records).map_err(|e| e.in_file("alignlab-data.jsonl"))
            })
            .and_then(|_| exchange::trl_script(&experiment, "alignlab-data.jsonl", None));
        match result {
            Ok(script) => {
                download("train_dpo.py", &script);
                download("alignlab-data.jsonl", &data);
                panel.message.set(Some("train_dpo.py and alignlab-data.jsonl downloaded: python train_dpo.py --model <alignlab model dir>".into()));
            }
            Err(err) => panel.error.set(Some(format!("Export to TRL: {err}"))),
        }
    };

    let choice_class = move |c: Choice| {
        move || if panel.choice.get() == Some(c) { "response picked" } else { "response" }
    };
    let annotate_view = move || {
        let Some(set) = panel.shown.get().map(|q| q.set) else {
            return view! { <p class="hint" data-testid="queue-empty">"Nothing to annotate: sample responses from the policy, or queue the training pairs."</p> }.into_any();
        };
        let remaining = panel.bench(|b| b.queue.len());
        let gone = panel.shown_gone().then(|| view! { <p class="hint" data-testid="judged-elsewhere">"Judged in another tab meanwhile: saving keeps your judgement beside that one; skip shows the next."</p> });
        if set.responses.len() >= 3 {
            let shown: Vec<(String, String)> = set
                .responses
                .iter()
                .cloned()
                .zip(set.origins.iter().cloned())
                .take(RANK_MODE_MAX)
                .collect();
            let rows = move || {
                let shown = shown.clone();
                panel.order.get().into_iter().enumerate().map(|(pos, i)| {
                    let (text, origin) = shown.get(i).cloned().unwrap_or_default();
                    view! {
                        <li class:picked=move || panel.picked.get() == pos draggable="true"
                            on:click=move |_| panel.picked.set(pos)
                            on:dragstart=move |_| panel.picked.set(pos)
                            on:dragover=move |ev| ev.prevent_default()
                            on:drop=move |ev| {
                                ev.prevent_default();
                                let from = panel.picked.get_untracked();
                                panel.order.update(|o| { let item = o.remove(from); o.insert(pos, item); });
                                panel.picked.set(pos);
                            }>
                            <span class="rank">{pos + 1}</span><span class="text">{text}</span><span class="origin">{origin}</span>
                        </li>
                    }
                }).collect_view()
            };
            view! {
                <div class="annotate" data-testid="annotate">
                    <p class="prompt"><b>"Prompt: "</b><code>{set.prompt.clone()}</code><span class="remaining">{format!(" ({remaining} waiting)")}</span></p>
                    <p class="hint">"Rank best first: drag, or pick with 1–5 and move with ↑ ↓; Enter saves."</p>
                    <ol class="ranking" data-testid="ranking">{rows}</ol>
                    {gone}
                </div>
            }.into_any()
        } else {
            let (a, b) = (set.responses[0].clone(), set.responses[1].clone());
            let (oa, ob) = (
                set.origins.first().cloned().unwrap_or_default(),
                set.origins.get(1).cloned().unwrap_or_default(),
            );
            view! {
                <div class="annotate" data-testid="annotate">
                    <p class="prompt"><b>"Prompt: "</b><code data-testid="annotate-prompt">{set.prompt.clone()}</code><span class="remaining">{format!(" ({remaining} waiting)")}</span></p>
                    <div class="side-by-side">
                        <div class=choice_class(Choice::A) on:click=move |_| panel.choice.set(Some(Choice::A)) data-testid="response-a"><h3>"A " <kbd>"1"</kbd><span class="origin">{oa}</span></h3><pre>{a}</pre></div>
                        <div class=choice_class(Choice::B) on:click=move |_| panel.choice.set(Some(Choice::B)) data-testid="response-b"><h3>"B " <kbd>"2"</kbd><span class="origin">{ob}</span></h3><pre>{b}</pre></div>
                    </div>
                    <div class="row controls">
                        <button name="choose-a" class:on=move || panel.choice.get() == Some(Choice::A) on:click=move |_| panel.choice.set(Some(Choice::A))>"A is better (1, ←)"</button>
                        <button name="choose-tie" class:on=move || panel.choice.get() == Some(Choice::Tie) on:click=move |_| panel.choice.set(Some(Choice::Tie))>"tie (0, ↓)"</button>
                        <button name="choose-b" class:on=move || panel.choice.get() == Some(Choice::B) on:click=move |_| panel.choice.set(Some(Choice::B))>"B is better (2, →)"</button>
                        <label class="field"><span>{move || format!("how sure: α = {:.2}", panel.strength.get())}</span>
                            <input type="range" name="strength" min="0.5" max="1" step="0.05" prop:value=move || panel.strength.get().to_string()
                                on:input=move |ev| panel.strength.set(event_target_value(&ev).parse().unwrap_or(DEFAULT_STRENGTH))/>
                        </label>
                    </div>
                    {gone}
                </div>
            }.into_any()
        }
    };

    view! {
        <section class="panel data" data-testid="data-panel">
            <h2>"Data: annotate, sample, keep"</h2>
            {move || panel.storage_error.get().map(|e| view! {
                <div class="error" role="alert" data-testid="storage-error">{e}" "
                    <button name="save-again" on:click=move |_| panel.flush()>"save again"</button>
                </div>
            })}
            {move || panel.unreadable.get().map(|e| view! { <div class="error" role="alert" data-testid="storage-unreadable">{e}</div> })}
            {move || panel.error.get().map(|e| view! { <div class="error" role="alert" data-testid="data-error">{e}</div> })}
            {move || panel.message.get().map(|m| view! { <div class="note" data-testid="data-message">{m}</div> })}
            <div class="row controls">
                <label class="field wide"><span>"sample for (empty: the training prompts, up to 8)"</span>
                    <input type="text" name="sample-prompt" placeholder="a question, or User: … Assistant:" prop:value=move || sample_prompt.get() on:change=move |ev| sample_prompt.set(event_target_value(&ev))/>
                </label>
                <label class="field"><span>"responses each"</span>
                    <input type="number" name="sample-n" min="1" max="8" prop:value=move || sample_n.get().to_string() on:change=move |ev| sample_n.set(event_target_value(&ev).parse().unwrap_or(2))/>
                </label>
                <label class="field"><span>"temperature"</span>
                    <input type="number" name="sample-temperature" min="0" step="0.1" prop:value=move || sample_temperature.get().to_string() on:change=move |ev| sample_temperature.set(event_target_value(&ev).parse().unwrap_or(1.0))/>
                </label>
                <label class="field"><span>"top-k (0: all)"</span>
                    <input type="number" name="sample-top-k" min="0" prop:value=move || sample_top_k.get().to_string() on:change=move |ev| sample_top_k.set(event_target_value(&ev).parse().unwrap_or(0))/>
                </label>
                <label class="check"><input type="checkbox" name="sample-policy" prop:checked=move || sample_policy.get() on:change=move |ev| sample_policy.set(event_target_checked(&ev))/>"policy"</label>
                <label class="check"><input type="checkbox" name="sample-reference" prop:checked=move || sample_reference.get() on:change=move |ev| sample_reference.set(event_target_checked(&ev))/>"reference"</label>
                <button name="sample" disabled=move || !store.ready.get() || !panel.loaded.get() on:click=sample>"sample"</button>
                <button name="queue-pairs" disabled=move || !store.ready.get() || !panel.loaded.get() on:click=queue_training_pairs>"annotate the training pairs"</button>
            </div>
            <div class="row controls">
                <label class="field wide"><span>"synthetic annotator: rules (length, contains:WORD, excludes:WORD, sentiment, refusal; =weight)"</span>
                    <input type="text" name="rules" prop:value=move || rules.get() on:change=move |ev| rules.set(event_target_value(&ev))/>
                </label>
                <label class="field"><span>"flip rate ε"</span>
                    <input type="number" name="flip-rate" min="0" max="0.5" step="0.05" prop:value=move || flip_rate.get().to_string() on:change=move |ev| flip_rate.set(event_target_value(&ev).parse().unwrap_or(0.0))/>
                </label>
                <label class="field"><span>"α temperature τ"</span>
                    <input type="number" name="alpha-temperature" min="0" step="0.1" prop:value=move || alpha_temperature.get().to_string() on:change=move |ev| alpha_temperature.set(event_target_value(&ev).parse().unwrap_or(1.0))/>
                </label>
                <button name="label-queue" disabled=move || panel.bench(|b| b.queue.is_empty()) on:click=label_queue>"label everything queued"</button>
            </div>
            {annotate_view}
            {move || panel.shown.with(Option::is_some).then(|| view! {
                <div class="row controls">
                    <label class="field wide"><span>"rationale (optional, one line; Enter saves)"</span>
                        <input type="text" name="rationale" prop:value=move || panel.rationale.get()
                            on:input=move |ev| panel.rationale.set(event_target_value(&ev))
                            on:keydown=move |ev: web_sys::KeyboardEvent| if ev.key() == "Enter" { ev.prevent_default(); panel.commit(); }/>
                    </label>
                    <button name="next" on:click=move |_| panel.commit()>"save and next (Enter)"</button>
                    <button name="skip" on:click=move |_| {
                        // only a set still first in the queue moves to its end
                        let first = panel.shown.with_untracked(|s| s.as_ref().map(|s| s.key.clone())) == panel.bench_untracked(|b| b.queue.first().map(|q| q.key.clone()));
                        if first { panel.change(|b| { b.skip(); Ok(String::new()) }); }
                        panel.reset_item();
                    }>"skip"</button>
                </div>
            })}
            <h3>{move || format!("My annotations ({})", panel.bench(|b| b.annotations.len()))}</h3>
            <div class="row controls">
                <button name="undo" disabled=move || panel.bench(|b| b.annotations.is_empty()) on:click=move |_| {
                    panel.change(|b| b.undo().map(|_| "last annotation taken back; it is shown again".to_string()).ok_or_else(|| lab_core::LabError::param("undo", "no annotation to undo")));
                    panel.reset_item();
                }>"undo last"</button>
                <button name="clear" disabled=move || panel.bench(|b| b.annotations.is_empty()) on:click=move |_| {
                    let n = panel.bench_untracked(|b| b.annotations.len());
                    if window().confirm_with_message(&format!("Delete all {n} annotations from this browser? Export them first if you want to keep them.")).unwrap_or(false) {
                        panel.change(|b| { b.annotations.clear(); Ok(format!("{n} annotations cleared")) });
                    }
                }>"clear…"</button>
                <button name="export-annotations" disabled=move || panel.bench(|b| b.annotations.is_empty()) on:click=move |_| download("alignlab-annotations.jsonl", &panel.bench_untracked(|b| b.annotations_jsonl()))>"export JSONL"</button>
                <button name="train-annotations" disabled=move || panel.bench(|b| b.annotations.is_empty()) || !panel.loaded.get() on:click=move |_| {
                    let (n, jsonl) = panel.bench_untracked(|b| (b.annotations.len(), b.annotations_jsonl()));
                    panel.train_on(TrainingData { label: format!("my annotations ({n})"), jsonl });
                }>"train on my annotations"</button>
                <button name="export-trl" on:click=export_trl>"Export to TRL"</button>
                <span class="status" data-testid="training-data">{move || format!("training on: {}", store.data.training.with(|t| t.as_ref().map(|t| t.label.clone())).unwrap_or_else(|| store.ui.with(|s| s.experiment.scenario.clone()).map(|s| format!("scenario {s}")).unwrap_or_else(|| "built-in sample".into())))}</span>
            </div>
            <div class="table-wrap short">
                <table data-testid="annotations">
                    <thead><tr><th>"#"</th><th>"prompt"</th><th>"chosen"</th><th>"rejected"</th><th>"α"</th><th>"rationale"</th></tr></thead>
                    <tbody>
                        {move || panel.bench(|b| b.annotations.iter().enumerate().rev().take(50).map(|(i, a)| {
                            let r = &a.record;
                            let (prompt, chosen, rejected, alpha) = record_summary(r);
                            let rationale = match r { Record::Pair(p) => p.rationale.clone(), Record::Ranked(x) => x.rationale.clone(), Record::Unpaired(_) => None }.unwrap_or_default();
                            view! { <tr><td>{i + 1}</td><td class="text">{short(&prompt, 60)}</td><td class="text">{chosen}</td><td class="text">{rejected}</td><td class="num">{alpha}</td><td class="text">{rationale}</td></tr> }
                        }).collect_view())}
                    </tbody>
                </table>
            </div>
            <h3>"Imported datasets"</h3>
            <div class="row controls">
                <label class="field"><span>{format!("import TRL JSONL (up to {} MB)", MAX_IMPORT_BYTES / 1_000_000)}</span>
                    <input type="file" name="import" accept=".jsonl,.json,.txt,application/json" on:change=import/>
                </label>
            </div>
            <ul class="datasets" data-testid="datasets">
                {move || panel.bench(|b| b.datasets.iter().map(|d| {
                    let name = d.name.clone();
                    let label = format!("{} ({} records)", d.name, d.records);
                    // by key, not position: another tab may add or remove datasets meanwhile
                    let key = StoredValue::new(d.key.clone());
                    let index = move |b: &Workbench| key.with_value(|k| b.datasets.iter().position(|d| &d.key == k));
                    let dataset = move || panel.bench_untracked(|b| index(b).map(|i| b.datasets[i].clone()));
                    view! {
                        <li>
                            <span class="name">{label}</span>
                            <button name="train-dataset" on:click=move |_| {
                                if let Some(d) = dataset() { panel.train_on(TrainingData { label: d.name, jsonl: d.text }); }
                            }>"train on it"</button>
                            <button name="annotate-dataset" on:click=move |_| {
                                panel.change(|b| {
                                    let i = index(b).ok_or_else(|| lab_core::LabError::param("dataset", "removed in another tab"))?;
                                    let sets: Vec<CandidateSet> = b.dataset_records(i)?.iter().map(|r| CandidateSet::from_record(r, "dataset")).collect();
                                    let n = b.enqueue(sets);
                                    Ok(format!("{n} records queued to annotate"))
                                });
                                panel.reset_item();
                            }>"annotate it"</button>
                            <button name="export-dataset" on:click=move |_| {
                                if let Some(d) = dataset() { download(&d.name, &d.text); }
                            }>"export"</button>
                            <button name="remove-dataset" on:click=move |_| {
                                if window().confirm_with_message(&format!("Remove {name} from this browser?")).unwrap_or(false) {
                                    panel.change(|b| { key.with_value(|k| b.datasets.retain(|d| &d.key != k)); Ok(String::new()) });
                                }
                            }>"remove…"</button>
                        </li>
                    }
                }).collect_view())}
            </ul>
            <h3>"Saved runs"</h3>
            <ul class="saved-runs" data-testid="saved-runs">
                {move || panel.bench(|b| b.runs.iter().enumerate().rev().map(|(i, r)| {
                    let label = format!("{} on {} · {} steps · {}", r.label, r.data, r.points.len().saturating_sub(1), short(&r.experiment, 70));
                    view! {
                        <li>
                            <span class="name">{label}</span>
                            <button name="run-csv" on:click=move |_| { if let Some(r) = panel.bench_untracked(|b| b.runs.get(i).cloned()) { download(&format!("alignlab-run-{}.csv", i + 1), &r.csv()); } }>"CSV"</button>
                            <button name="run-json" on:click=move |_| { if let Some(r) = panel.bench_untracked(|b| b.runs.get(i).cloned()) { download(&format!("alignlab-run-{}.json", i + 1), &r.json()); } }>"JSON"</button>
                        </li>
                    }
                }).collect_view())}
            </ul>
        </section>
    }
}
