//! The live charts: each is a spec (series, bands, marks) filled with the numbers the worker
//! sent, drawn by uPlot through `js/glue.js`. Nothing here computes a metric; it only picks
//! which recorded metric goes in which series.

pub use crate::history::RunHistory;
use crate::protocol::Metric;
use serde::Serialize;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/glue.js")]
extern "C" {
    #[wasm_bindgen(js_name = drawChart)]
    fn draw_chart(id: &str, json: &str);
}

pub const RUN_COLORS: [&str; 3] = ["#2563eb", "#dc2626", "#059669"];
const DASHED: [f64; 2] = [6.0, 4.0];
const DOTTED: [f64; 2] = [2.0, 3.0];

#[derive(Serialize)]
struct Series {
    label: String,
    color: String,
    dash: Option<Vec<f64>>,
    scale: &'static str,
}

#[derive(Serialize)]
struct Band {
    series: [usize; 2],
    fill: &'static str,
}

#[derive(Serialize)]
struct Mark {
    x: f64,
    label: String,
    color: String,
    row: usize,
}

#[derive(Serialize, Default)]
struct ChartSpec {
    title: String,
    y_label: String,
    y2_label: String,
    series: Vec<Series>,
    /// x first, then one column per series; `null` where a run has no value.
    data: Vec<Vec<Option<f64>>>,
    bands: Vec<Band>,
    marks: Vec<Mark>,
}

impl ChartSpec {
    fn new(title: &str, y_label: &str, runs: &[RunHistory]) -> ChartSpec {
        let steps = runs.iter().map(|r| r.points.len()).max().unwrap_or(0);
        ChartSpec {
            title: title.into(),
            y_label: y_label.into(),
            data: vec![(0..steps).map(|s| Some(s as f64)).collect()],
            ..Default::default()
        }
    }

    /// Add `metric` of run `run` as a series.
    fn add(
        &mut self,
        runs: &[RunHistory],
        run: usize,
        metric: Metric,
        label: &str,
        dash: Option<[f64; 2]>,
        scale: &'static str,
    ) {
        let steps = self.data[0].len();
        let points = &runs[run].points;
        let column = (0..steps)
            .map(|s| {
                points.get(s).and_then(|m| m.get(metric.key())).copied().filter(|v| v.is_finite())
            })
            .collect();
        self.series.push(Series {
            label: label.into(),
            color: RUN_COLORS[run % RUN_COLORS.len()].into(),
            dash: dash.map(|d| d.to_vec()),
            scale,
        });
        self.data.push(column);
    }

    fn draw(&self, id: &str) {
        draw_chart(id, &serde_json::to_string(self).expect("chart specs serialize"));
    }
}

fn run_name(runs: &[RunHistory], run: usize) -> String {
    let label = runs[run].info.as_ref().map(|i| i.label.clone()).unwrap_or_default();
    if runs.len() > 1 {
        format!("{} {label}", run + 1)
    } else {
        label
    }
}

/// The gold-reward chart, shown only where a run has a gold reward.
pub const GOLD_CHART_ID: &str = "chart-gold";

/// Whether any run has a gold reward.
pub fn has_gold(runs: &[RunHistory]) -> bool {
    runs.iter().any(|r| r.points.iter().any(|p| p.contains_key(Metric::Gold.key())))
}

/// Chart element ids, in page order.
pub const CHART_IDS: [&str; 5] =
    ["chart-loss", "chart-rewards", "chart-displacement", "chart-accuracy", "chart-topk"];

pub fn draw_all(runs: &[RunHistory]) {
    if runs.is_empty() {
        return;
    }
    let n = runs.len();

    let mut loss = ChartSpec::new("Loss", "loss", runs);
    for r in 0..n {
        loss.add(runs, r, Metric::Loss, &run_name(runs, r), None, "y");
    }
    loss.draw(CHART_IDS[0]);

    let mut rewards = ChartSpec::new("Rewards (batch, before the update)", "β·log-ratio", runs);
    for r in 0..n {
        let name = run_name(runs, r);
        rewards.add(runs, r, Metric::RewardsChosen, &format!("{name} chosen"), None, "y");
        rewards.add(
            runs,
            r,
            Metric::RewardsRejected,
            &format!("{name} rejected"),
            Some(DASHED),
            "y",
        );
        rewards.add(runs, r, Metric::RewardsMargins, &format!("{name} margin"), Some(DOTTED), "y");
    }
    rewards.draw(CHART_IDS[1]);

    // the log-prob changes and how far the policy has moved from the reference, on one view
    let mut displacement = ChartSpec::new(
        "log π(y) − log π_ref(y), mean over the data, and KL(π‖π_ref)",
        "nats",
        runs,
    );
    displacement.y2_label = "KL (nats/token)".into();
    for r in 0..n {
        let name = run_name(runs, r);
        displacement.add(
            runs,
            r,
            Metric::LogpsChosenChange,
            &format!("{name} log π(yw)"),
            None,
            "y",
        );
        displacement.add(
            runs,
            r,
            Metric::LogpsRejectedChange,
            &format!("{name} log π(yl)"),
            Some(DASHED),
            "y",
        );
        displacement.add(runs, r, Metric::Kl, &format!("{name} KL"), Some(DOTTED), "y2");
        if let Some(step) = runs[r].displaced_at {
            displacement.marks.push(Mark {
                x: step as f64,
                label: format!("{name}: log π(yw) below start"),
                color: RUN_COLORS[r % RUN_COLORS.len()].into(),
                row: r,
            });
        }
    }
    displacement.draw(CHART_IDS[2]);

    let mut accuracy = ChartSpec::new(
        "Reward accuracy vs ranking accuracy (gap R* − R shaded)",
        "fraction of pairs",
        runs,
    );
    accuracy.add(runs, 0, Metric::IdealizedRankingAccuracy, "R* (idealized)", Some(DOTTED), "y");
    if let Some(s) = accuracy.series.last_mut() {
        s.color = "#6b7280".into();
    }
    for r in 0..n {
        let name = run_name(runs, r);
        accuracy.add(runs, r, Metric::RankingAccuracy, &format!("{name} R"), None, "y");
        accuracy.add(
            runs,
            r,
            Metric::RankingAccuracyNormalized,
            &format!("{name} R̃"),
            Some(DOTTED),
            "y",
        );
        accuracy.add(
            runs,
            r,
            Metric::RewardAccuracy,
            &format!("{name} reward acc."),
            Some(DASHED),
            "y",
        );
    }
    // Series 1 is R*, series 2 run 1's R: the alignment gap between them.
    accuracy.bands.push(Band { series: [1, 2], fill: "rgba(245, 158, 11, 0.22)" });
    accuracy.draw(CHART_IDS[3]);

    let mut topk = ChartSpec::new(
        "Top-10 entropy (chosen responses; falling warns of over-optimisation)",
        "entropy (bits)",
        runs,
    );
    for r in 0..n {
        let name = run_name(runs, r);
        topk.add(runs, r, Metric::TopkEntropy, &format!("{name} entropy"), None, "y");
    }
    topk.draw(CHART_IDS[4]);

    if has_gold(runs) {
        let mut gold = ChartSpec::new(
            "Gold reward of the policy's samples, and KL(π‖π_ref): rises, then falls",
            "gold reward",
            runs,
        );
        gold.y2_label = "KL (nats/token)".into();
        for r in 0..n {
            let name = run_name(runs, r);
            gold.add(runs, r, Metric::Gold, &format!("{name} gold"), None, "y");
            gold.add(runs, r, Metric::Kl, &format!("{name} KL"), Some(DOTTED), "y2");
        }
        gold.draw(GOLD_CHART_ID);
    }
}
