//! A run whose numbers stop being finite: how the worker notices, which state the run goes
//! back to, and what the page is told.
//!
//! A step can go wrong in two ways. The engine refuses it (`LabError::NotFinite`: the loss
//! or its gradient is not finite; the step was not taken), or it is taken and what follows
//! is not finite: the evaluation after the update, or the weights themselves. In the second
//! case the weights are already spoilt, so the worker keeps a copy of the last weights known
//! to be good ([`LastGood`]) and puts it back. "Known to be good": a forward pass with them
//! gave finite numbers (the next step's batch, or the evaluation of the whole dataset).
//!
//! The run then pauses at the step of those weights; the page drops any point after it, so
//! the charts, the saved run and the weights all describe the same, last good, step.

use lab_core::engine::Engine;
use lab_core::LabError;
use lab_train::{Session, StepRecord};

/// The weights a diverged run goes back to: the latest copy that a forward pass found finite.
#[derive(Debug, Clone)]
pub struct LastGood {
    /// Copy the weights before every this many steps (1 on the CPU engine, where a copy is
    /// cheap; more on the GPU engine, where each copy is a readback).
    every: u32,
    good: (u32, Vec<f32>),
    /// A copy not yet confirmed: the next step's forward pass confirms it.
    candidate: Option<(u32, Vec<f32>)>,
    /// The last step whose weights an evaluation found finite.
    evaluated: u32,
}

impl LastGood {
    /// Starting at `step` with `params` (already evaluated: a session's start, or the
    /// weights a continued run restarts from).
    pub fn new(every: u32, step: u32, params: Vec<f32>) -> LastGood {
        LastGood { every: every.max(1), good: (step, params), candidate: None, evaluated: step }
    }

    /// Whether to copy the weights of `step` before the next step changes them.
    pub fn wants(&self, step: u32) -> bool {
        step.is_multiple_of(self.every) && step != self.good.0
    }

    /// The weights after `step` (finite: the caller checked), copied before the next step.
    pub fn copied(&mut self, step: u32, params: Vec<f32>) {
        if self.evaluated == step {
            self.good = (step, params);
        } else {
            self.candidate = Some((step, params));
        }
    }

    /// Step `step` ended with finite numbers: the weights it started from gave them, and
    /// with `evaluated` so did the weights it ended with.
    pub fn stepped(&mut self, step: u32, evaluated: bool) {
        if self.candidate.as_ref().is_some_and(|(s, _)| *s + 1 == step) {
            self.good = self.candidate.take().expect("just checked");
        }
        if evaluated {
            self.evaluated = step;
        }
    }

    /// The step of the last good weights, and the weights.
    pub fn fallback(&self) -> (u32, &[f32]) {
        (self.good.0, &self.good.1)
    }
}

/// The metric names of a step record whose values are not finite. NaN and ±∞ serialize as
/// JSON null; metrics that do not apply are left out rather than null.
pub fn non_finite_metrics(record: &StepRecord) -> Vec<String> {
    match serde_json::to_value(record).expect("step records serialize") {
        serde_json::Value::Object(map) => {
            map.into_iter().filter(|(_, v)| v.is_null()).map(|(k, _)| k).collect()
        }
        _ => Vec::new(),
    }
}

/// A run that stopped: the step that went wrong and the step it went back to.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    pub step: u32,
    pub kept: u32,
    pub message: String,
}

/// What one checked step did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Stepped(StepRecord),
    Diverged(Divergence),
}

/// One step of run `run` (0-based), whose session's steps come after `offset` earlier ones
/// (a continued run). On divergence the run's weights are put back to the last good ones.
/// Other engine errors are returned as they are.
pub async fn checked_step<E: Engine>(
    session: &mut Session<E>,
    last_good: &mut LastGood,
    offset: u32,
    run: usize,
) -> lab_core::Result<Outcome> {
    let before = offset + session.steps_done();
    if last_good.wants(before) {
        let params = session.engine().params_async().await?;
        if params.iter().any(|p| !p.is_finite()) {
            let what = "the weights after it are not finite";
            return diverge(session, last_good, before, run, what);
        }
        last_good.copied(before, params);
    }
    match session.step_async().await {
        Ok(record) => {
            let bad = non_finite_metrics(&record);
            let step = offset + record.step;
            if !bad.is_empty() {
                let what = format!("its metrics {} are not finite", bad.join(", "));
                return diverge(session, last_good, step, run, &what);
            }
            last_good.stepped(step, record.eval.step == record.step);
            Ok(Outcome::Stepped(record))
        }
        Err(LabError::NotFinite { step }) => {
            let what = "the loss or its gradient is not finite";
            diverge(session, last_good, offset + step, run, what)
        }
        Err(err) => Err(err),
    }
}

fn diverge<E: Engine>(
    session: &mut Session<E>,
    last_good: &LastGood,
    step: u32,
    run: usize,
    what: &str,
) -> lab_core::Result<Outcome> {
    let (kept, params) = last_good.fallback();
    session.engine_mut().set_params(params)?;
    let cause = session.config().divergence_cause();
    let mut cause = cause.chars();
    let cause: String =
        cause.next().map(|c| c.to_uppercase().chain(cause).collect()).unwrap_or_default();
    let message = format!(
        "Run {} diverged at step {step}: {what}. {cause}. Training is paused at step {kept}, the last good one: its charts, saved run and weights are kept. Change the setting and continue, or reset.",
        run + 1
    );
    Ok(Outcome::Diverged(Divergence { step, kept, message }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_core::config::{init_params, GptConfig};
    use lab_core::data::parse_jsonl;
    use lab_core::experiment::ExperimentConfig;
    use lab_core::tokenizer::Tokenizer;
    use lab_cpu::CpuEngine;
    use lab_train::SessionConfig;
    use std::future::Future;

    /// Run a future of the CPU engine: it never waits, so one poll completes it.
    fn now<T>(future: impl Future<Output = T>) -> T {
        lab_core::engine::poll_once(future).expect("the CPU engine never waits")
    }

    fn session(query: &str) -> Session<CpuEngine> {
        // the page's starter model's shape (the built-in pairs need its context of 128)
        let cfg = GptConfig { ctx: 128, n_layer: 3, ..GptConfig::TINY };
        let engine = CpuEngine::new(cfg, init_params(&cfg, 0)).unwrap();
        let records = parse_jsonl(include_str!("builtin.jsonl")).unwrap();
        let experiment = ExperimentConfig::from_query(query).unwrap();
        Session::new(
            engine,
            &Tokenizer::Char,
            &records,
            SessionConfig::from_experiment(&experiment).unwrap(),
        )
        .unwrap()
    }

    /// Step until the run diverges (or `limit` steps); the records before it.
    fn until_diverged(
        session: &mut Session<CpuEngine>,
        last_good: &mut LastGood,
        limit: u32,
    ) -> (Vec<StepRecord>, Option<Divergence>) {
        let mut records = Vec::new();
        for _ in 0..limit {
            match now(checked_step(session, last_good, 0, 0)).unwrap() {
                Outcome::Stepped(record) => records.push(record),
                Outcome::Diverged(d) => return (records, Some(d)),
            }
        }
        (records, None)
    }

    #[test]
    fn an_absurd_learning_rate_pauses_at_the_last_good_step_with_its_weights() {
        let mut session = session("lr=3e8&batch_size=4&steps=20");
        let start = session.engine().params();
        let mut last_good = LastGood::new(1, 0, start.clone());
        let mut weights = vec![start];
        let mut records = Vec::new();
        let divergence = loop {
            match now(checked_step(&mut session, &mut last_good, 0, 0)).unwrap() {
                Outcome::Stepped(record) => {
                    records.push(record);
                    weights.push(session.engine().params());
                }
                Outcome::Diverged(d) => break d,
            }
            assert!(records.len() < 20, "an lr of 3e8 diverges within 20 steps");
        };
        // earlier steps to keep: the weights grow by about lr a step until they overflow
        assert!(records.len() >= 2, "{}", records.len());
        assert!(records.iter().all(|r| non_finite_metrics(r).is_empty()));
        assert_eq!(divergence.kept, records.len() as u32);
        assert_eq!(divergence.step, divergence.kept + 1);
        // the weights are those of the kept step, bit for bit, and they give finite numbers
        assert_eq!(session.engine().params(), weights[divergence.kept as usize]);
        assert!(session.evaluate().unwrap().logps_chosen_change.is_finite());
        let m = &divergence.message;
        assert!(m.contains(&format!("Run 1 diverged at step {}", divergence.step)), "{m}");
        assert!(m.contains("Likely cause: the learning rate 3e8 is high"), "{m}");
        assert!(m.contains(&format!("paused at step {}", divergence.kept)), "{m}");
    }

    #[test]
    fn every_setting_outside_its_range_is_named() {
        let mut run = session("lr=1e9&beta=20&loss=sigmoid%2B12*sft&batch_size=4&steps=20");
        let mut last_good = LastGood::new(1, 0, run.engine().params());
        let (records, divergence) = until_diverged(&mut run, &mut last_good, 20);
        let d = divergence.expect("an lr of 1e9 diverges within 20 steps");
        assert_eq!(d.kept, records.len() as u32);
        let m = &d.message;
        assert!(m.contains("Likely cause: the learning rate 1e9 is high"), "{m}");
        assert!(m.contains("β 2e1 is high") && m.contains("the weight 12 of sft is large"), "{m}");
        let usual = session("batch_size=4&steps=20");
        assert!(usual.config().divergence_cause().contains("numerical overflow"));
    }

    #[test]
    fn copies_every_few_steps_go_back_to_the_last_confirmed_one() {
        // every 3 steps, as on the GPU engine: weights of step 0, then 3, 6, ...
        let mut g = LastGood::new(3, 0, vec![0.0]);
        let at = |g: &mut LastGood, step: u32, evaluated: bool| {
            if g.wants(step - 1) {
                g.copied(step - 1, vec![(step - 1) as f32]);
            }
            g.stepped(step, evaluated);
        };
        for step in 1..=4 {
            at(&mut g, step, false);
        }
        // the copy of step 3 was confirmed by step 4's forward pass
        assert_eq!(g.fallback(), (3, &[3.0][..]));
        at(&mut g, 5, true);
        at(&mut g, 6, true);
        // step 6 was evaluated: its copy is good at once, before step 7 confirms it
        assert!(g.wants(6));
        g.copied(6, vec![6.0]);
        assert_eq!(g.fallback(), (6, &[6.0][..]));
        // unevaluated: a copy waits for the next step
        let mut g = LastGood::new(1, 0, vec![0.0]);
        at(&mut g, 1, false);
        g.copied(1, vec![1.0]);
        assert_eq!(g.fallback().0, 0);
        g.stepped(2, false);
        assert_eq!(g.fallback(), (1, &[1.0][..]));
    }
}
