//! The runs' histories as the page keeps them, and what each worker message does to them:
//! the part of the page's message handling that is data, not signals, so that it is
//! native and tested here (`app.rs` only calls it and stores the result).

use crate::protocol::{FromWorker, Metric, Metrics, RunInfo};

/// One run's history as the page keeps it: `points[s]` holds the metrics of step `s`
/// (step 0: the instruments of the reference itself).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunHistory {
    pub info: Option<RunInfo>,
    pub points: Vec<Metrics>,
    pub displaced_at: Option<u32>,
    pub last_step_ms: f64,
}

impl RunHistory {
    /// The histories of freshly reset runs: each run's description and its step-0 point.
    pub fn started(runs: Vec<RunInfo>, start: Vec<Metrics>) -> Vec<RunHistory> {
        runs.into_iter()
            .zip(start)
            .map(|(info, s)| RunHistory { info: Some(info), points: vec![s], ..Default::default() })
            .collect()
    }

    /// A step's metrics, the step the chosen log-prob first fell below its start (if it
    /// has), and how long the step took.
    pub fn stepped(&mut self, metrics: Metrics, displaced_at: Option<u32>, step_ms: f64) {
        self.points.push(metrics);
        self.displaced_at = displaced_at;
        self.last_step_ms = step_ms;
    }

    /// The run is back at step `kept` after a divergence: its later points described
    /// spoilt weights, and so did a displacement seen after it.
    pub fn rewound(&mut self, kept: u32) {
        self.points.retain(|p| p.get("step").is_none_or(|&s| s <= f64::from(kept)));
        self.displaced_at = self.displaced_at.filter(|&at| at <= kept);
    }

    /// Each run's gold reward at evaluation `step` (in run order; `None` where unmeasured).
    pub fn note_gold(histories: &mut [RunHistory], step: u32, gold: &[Option<f64>]) {
        for (run, value) in histories.iter_mut().zip(gold) {
            if let (Some(point), Some(value)) = (run.points.get_mut(step as usize), value) {
                point.insert(Metric::Gold.key().into(), *value);
            }
        }
    }
}

/// Whether a worker message belongs to reset `current`: replies about an older reset (the
/// worker was still busy with it when the page reset) are stale and dropped; messages that
/// name no reset always count.
pub fn is_current(msg: &FromWorker, current: u32) -> bool {
    match msg {
        FromWorker::Ready { generation, .. }
        | FromWorker::Stepped { generation, .. }
        | FromWorker::Diverged { generation, .. }
        | FromWorker::Continued { generation, .. }
        | FromWorker::LiveVerdict { generation, .. } => *generation == current,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(step: u32) -> Metrics {
        [("step".to_string(), f64::from(step))].into_iter().collect()
    }

    fn info(label: &str) -> RunInfo {
        RunInfo { label: label.into(), loss: label.into(), terms: Vec::new() }
    }

    #[test]
    fn a_divergence_rewinds_the_points_and_the_displacement() {
        let mut runs = RunHistory::started(vec![info("sigmoid"), info("ipo")], vec![point(0)]);
        assert_eq!(runs.len(), 1, "a run without its step-0 point is not started");
        let run = &mut runs[0];
        for step in 1..=6 {
            run.stepped(point(step), (step >= 4).then_some(4), 2.5);
        }
        assert_eq!((run.points.len(), run.displaced_at, run.last_step_ms), (7, Some(4), 2.5));
        run.rewound(5);
        assert_eq!((run.points.len(), run.displaced_at), (6, Some(4)));
        run.rewound(3);
        assert_eq!((run.points.len(), run.displaced_at), (4, None));
        assert_eq!(run.points.last(), Some(&point(3)));
    }

    #[test]
    fn gold_lands_on_its_step_of_each_run_that_measured_it() {
        let mut runs =
            RunHistory::started(vec![info("sigmoid"), info("ipo")], vec![point(0), point(0)]);
        for run in &mut runs {
            run.stepped(point(1), None, 1.0);
        }
        RunHistory::note_gold(&mut runs, 1, &[Some(0.5), None]);
        RunHistory::note_gold(&mut runs, 9, &[Some(2.0), Some(2.0)]);
        let gold =
            |run: usize, step: usize| runs[run].points[step].get(Metric::Gold.key()).copied();
        assert_eq!((gold(0, 1), gold(1, 1), gold(0, 0)), (Some(0.5), None, None));
    }

    #[test]
    fn replies_about_an_older_reset_are_stale() {
        let stepped = |generation| FromWorker::Stepped {
            generation,
            run: 0,
            metrics: point(1),
            displaced_at: None,
            step_ms: 1.0,
            table: None,
        };
        assert!(is_current(&stepped(3), 3));
        assert!(!is_current(&stepped(2), 3));
        let status = FromWorker::Status { playing: true, steps_done: 1 };
        assert!(is_current(&status, 3));
    }
}
