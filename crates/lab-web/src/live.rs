//! A scenario's verdict kept current on the page's own runs: one
//! [`lab_train::scenario::RunWatch`] per run, the texts it scores, and the gold reward's
//! sampler where the phenomenon has one. Native and engine-agnostic (any
//! `Session<E>`), so the tests below check it against `alignlab scenario` itself; the
//! worker only steps the runs, reads the policies for the gold reward and posts the result.

use lab_core::data::Record;
use lab_core::engine::Engine;
use lab_core::tokenizer::Tokenizer;
use lab_core::Result;
use lab_train::scenario::{
    anchors, borrowed, judge, score_texts_async, watch_items, GoldProbe, Phenomenon, Preset,
    RunWatch, Variant, Verdict,
};
use lab_train::{Session, StepRecord};

pub struct Live {
    pub scenario: String,
    phenomenon: Phenomenon,
    watch_rows: Vec<(String, String)>,
    anchor_rows: Vec<(String, String)>,
    watches: Vec<RunWatch>,
    /// The gold reward's sampler, where the phenomenon needs one.
    gold: Option<GoldProbe>,
}

impl Live {
    /// Start watching `sessions` (at step 0, all from the same weights: the reference) as
    /// `variants` of scenario `name`'s preset, training `records`.
    pub async fn start<E: Engine>(
        name: &str,
        preset: &Preset,
        variants: &[Variant],
        records: &[Record],
        tokenizer: &Tokenizer,
        sessions: &mut [&mut Session<E>],
    ) -> Result<Live> {
        let (watch_rows, anchor_rows) = (watch_items(preset), anchors(records));
        let Some(first) = sessions.first_mut() else {
            return Err(lab_core::LabError::param("runs", "no runs to watch"));
        };
        // every run starts from the same weights, so the reference's scores are shared
        let engine = first.engine_mut();
        let watch_ref = score_texts_async(engine, tokenizer, &borrowed(&watch_rows), true).await?;
        let anchor_ref =
            score_texts_async(engine, tokenizer, &borrowed(&anchor_rows), true).await?;
        let ctx = engine.config().ctx;
        let watches = sessions
            .iter()
            .zip(variants)
            .map(|(session, variant)| {
                RunWatch::begin(
                    session,
                    preset,
                    variant,
                    records,
                    watch_ref.clone(),
                    anchor_ref.clone(),
                )
            })
            .collect();
        Ok(Live {
            scenario: name.to_string(),
            phenomenon: preset.phenomenon.clone(),
            watch_rows,
            anchor_rows,
            watches,
            gold: GoldProbe::of(&preset.phenomenon, tokenizer, records, ctx)?,
        })
    }

    /// Note a step run `run` took.
    pub fn observe<E: Engine>(&mut self, run: usize, session: &Session<E>, record: &StepRecord) {
        if let Some(watch) = self.watches.get_mut(run) {
            watch.observe(session, record);
        }
    }

    /// The gold reward's sampler, if the phenomenon measures one: the caller measures each
    /// run's policy with it at an evaluation and hands the values to [`Live::note_gold`].
    pub fn gold_probe(&self) -> Option<&GoldProbe> {
        self.gold.as_ref()
    }

    /// Each run's gold reward at the evaluation just observed, in run order.
    pub fn note_gold(&mut self, gold: &[f64]) {
        for (watch, &value) in self.watches.iter_mut().zip(gold) {
            watch.note_gold(value);
        }
    }

    /// The verdict on the runs as they stand (`sessions` in run order), and each run's
    /// latest gold reward.
    pub async fn verdict<E: Engine>(
        &self,
        sessions: &mut [&mut Session<E>],
        tokenizer: &Tokenizer,
    ) -> Result<(Verdict, Vec<Option<f64>>)> {
        let (watch_rows, anchor_rows) = (borrowed(&self.watch_rows), borrowed(&self.anchor_rows));
        let mut reports = Vec::new();
        for (session, watch) in sessions.iter_mut().zip(&self.watches) {
            let engine = session.engine_mut();
            let watch_now = score_texts_async(engine, tokenizer, &watch_rows, true).await?;
            let anchor_now = score_texts_async(engine, tokenizer, &anchor_rows, true).await?;
            reports.push(watch.report(session, &watch_now, &anchor_now));
        }
        let gold = reports.iter().map(|r| r.pairs.trajectory.last().and_then(|m| m.gold)).collect();
        Ok((judge(&self.phenomenon, &reports), gold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_core::checkpoint;
    use lab_cpu::CpuEngine;
    use lab_train::scenario::{run_scenario, Scenario};
    use lab_train::SessionConfig;
    use std::future::Future;

    /// Run a future of the CPU engine's calls, which never wait.
    fn now<T>(future: impl Future<Output = T>) -> T {
        lab_core::engine::poll_once(future).expect("the CPU engine's async calls never wait")
    }

    /// The page's live verdict at a scenario's last step is `alignlab scenario`'s verdict,
    /// check for check and value for value: the same runs (the page trains every one but
    /// a clean-label control), observed step by step, the gold reward measured at every
    /// evaluation as the worker measures it (on a copy of each policy).
    #[test]
    fn the_live_verdict_at_the_end_is_the_cli_s() {
        let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
        let model = checkpoint::load_dir(&assets.join("models/starter")).unwrap();
        for name in ["3d-properties", "over-optimisation"] {
            let mut scenario = Scenario::load(&assets, name).unwrap();
            // short runs: the check is that both ways compute the same, not the phenomenon
            scenario.preset.experiment.steps = 30;
            scenario.preset.experiment.eval_every = 10;
            let want = run_scenario(
                &scenario,
                &model.tokenizer,
                || CpuEngine::new(model.config, model.params.clone()),
                |_, _| {},
            )
            .unwrap()
            .verdict;

            let preset = &scenario.preset;
            let variants: Vec<Variant> =
                preset.runs().into_iter().filter(|v| v.same_data()).collect();
            let mut sessions: Vec<Session<CpuEngine>> = variants
                .iter()
                .map(|v| {
                    let config =
                        SessionConfig::from_experiment(&v.experiment(&preset.experiment)).unwrap();
                    let engine = CpuEngine::new(model.config, model.params.clone()).unwrap();
                    Session::new(engine, &model.tokenizer, &scenario.records, config).unwrap()
                })
                .collect();
            let mut refs: Vec<&mut Session<CpuEngine>> = sessions.iter_mut().collect();
            let mut live = now(Live::start(
                name,
                preset,
                &variants,
                &scenario.records,
                &model.tokenizer,
                &mut refs,
            ))
            .unwrap();
            let measure = |live: &mut Live, sessions: &mut [&mut Session<CpuEngine>]| {
                if let Some(probe) = live.gold_probe() {
                    let gold: Vec<f64> = sessions
                        .iter_mut()
                        .map(|s| {
                            let mut copy =
                                CpuEngine::new(model.config, s.engine().params()).unwrap();
                            probe.measure(&mut copy, &model.tokenizer).unwrap()
                        })
                        .collect();
                    live.note_gold(&gold);
                }
            };
            measure(&mut live, &mut refs);
            for _ in 0..preset.experiment.steps {
                for (run, session) in refs.iter_mut().enumerate() {
                    let record = session.step().unwrap();
                    live.observe(run, session, &record);
                }
                if refs[0].instruments().step == refs[0].steps_done() {
                    measure(&mut live, &mut refs);
                }
            }
            let (got, gold) = now(live.verdict(&mut refs, &model.tokenizer)).unwrap();
            assert_eq!(got.checks, want.checks, "{name}");
            assert_eq!((got.passed, got.missing.len()), (want.passed, 0), "{name}");
            assert_eq!(gold.iter().all(Option::is_some), name == "over-optimisation", "{name}");
        }
    }
}
