//! The page's data: what is waiting to be annotated, the annotations made, the imported
//! datasets and the saved run histories, as plain values with plain methods (the data
//! panel only wires them to buttons, keys and storage). Every change either succeeds
//! completely or changes nothing and returns an error naming what is wrong, so nothing
//! the user made is lost.
//!
//! Storage form (one browser-storage entry per part, see [`Part`]): annotations as TRL
//! JSONL (the export format, extras kept), imported datasets with their original text (so
//! an export gives back the imported bytes), queue and runs as JSON.

use crate::protocol::Metrics;
use lab_core::annotate::{
    pair_from_choice, ranked_from_order, AnnotationReport, CandidateSet, Choice,
    SyntheticAnnotator, RANK_MODE_MAX,
};
use lab_core::data::{parse_jsonl, to_jsonl, Record};
use lab_core::exchange;
use lab_core::experiment::ExperimentConfig;
use lab_core::{LabError, Result};
use serde::{Deserialize, Serialize};

/// Saved run histories kept (the oldest goes first).
pub const MAX_SAVED_RUNS: usize = 20;

/// An imported file, kept as the user gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub name: String,
    pub text: String,
    pub records: usize,
}

/// One run's metrics, saved when training pauses or ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRun {
    /// Unique per page session and run: `"<reset generation>/<run index>@<page start ms>"`.
    pub id: String,
    pub label: String,
    /// The experiment's link form.
    pub experiment: String,
    pub data: String,
    pub points: Vec<Metrics>,
}

impl SavedRun {
    pub fn csv(&self) -> String {
        exchange::metrics_csv(&self.points)
    }

    pub fn json(&self) -> String {
        let experiment = ExperimentConfig::from_query(&self.experiment).unwrap_or_default();
        exchange::metrics_json(&self.label, &experiment, &self.points)
    }
}

/// The parts stored separately, so a change rewrites only its own part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Annotations,
    Queue,
    Datasets,
    Runs,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Annotations, Part::Queue, Part::Datasets, Part::Runs];

    /// The storage key.
    pub fn key(self) -> &'static str {
        match self {
            Part::Annotations => "annotations.jsonl",
            Part::Queue => "queue.json",
            Part::Datasets => "datasets.json",
            Part::Runs => "runs.json",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Workbench {
    /// Waiting to be judged; the first is on screen.
    pub queue: Vec<CandidateSet>,
    /// Made by the user, oldest first.
    pub annotations: Vec<Record>,
    pub datasets: Vec<Dataset>,
    pub runs: Vec<SavedRun>,
}

impl Workbench {
    /// Judge the first queued set between its responses `a` and `b` (indices).
    pub fn choose(
        &mut self,
        a: usize,
        b: usize,
        choice: Choice,
        strength: f64,
        rationale: &str,
    ) -> Result<()> {
        let set = self.queue.first().ok_or_else(|| {
            LabError::param(
                "queue",
                "nothing to annotate: sample responses or queue a dataset first",
            )
        })?;
        let (ra, rb) = match (set.responses.get(a), set.responses.get(b)) {
            (Some(ra), Some(rb)) if a != b => (ra, rb),
            _ => {
                return Err(LabError::param(
                    "choice",
                    format!(
                        "responses {a} and {b} are not two of the {} shown",
                        set.responses.len()
                    ),
                ))
            }
        };
        let record = pair_from_choice(&set.prompt, ra, rb, choice, strength, rationale)?;
        self.queue.remove(0);
        self.annotations.push(record);
        Ok(())
    }

    /// Rank the first queued set: `order` is best first, over its first [`RANK_MODE_MAX`] responses.
    pub fn rank(&mut self, order: &[usize], rationale: &str) -> Result<()> {
        let set =
            self.queue.first().ok_or_else(|| LabError::param("queue", "nothing to annotate"))?;
        let shown: Vec<String> = set.responses.iter().take(RANK_MODE_MAX).cloned().collect();
        let record = ranked_from_order(&set.prompt, &shown, order, rationale)?;
        self.queue.remove(0);
        self.annotations.push(record);
        Ok(())
    }

    /// Label everything queued with a synthetic annotator (each set becomes one pair:
    /// highest reward against lowest); the queue empties into the annotations.
    pub fn label_queue(&mut self, annotator: &SyntheticAnnotator) -> Result<AnnotationReport> {
        if self.queue.is_empty() {
            return Err(LabError::param(
                "queue",
                "nothing queued to label: sample responses or queue a dataset first",
            ));
        }
        let records = self.queue.iter().map(CandidateSet::to_record).collect::<Result<Vec<_>>>()?;
        let annotator = SyntheticAnnotator { lists_to_pairs: true, ..annotator.clone() };
        let (labelled, report) = annotator.annotate(&records)?;
        self.queue.clear();
        self.annotations.extend(labelled);
        Ok(report)
    }

    /// Put the first queued set at the end.
    pub fn skip(&mut self) {
        if !self.queue.is_empty() {
            let set = self.queue.remove(0);
            self.queue.push(set);
        }
    }

    /// Take back the last annotation: its responses go back to the front of the queue.
    pub fn undo(&mut self) -> Option<Record> {
        let record = self.annotations.pop()?;
        self.queue.insert(0, CandidateSet::from_record(&record, "undone"));
        Some(record)
    }

    /// Queue sets to annotate (sampled, or from a dataset).
    pub fn enqueue(&mut self, sets: impl IntoIterator<Item = CandidateSet>) -> usize {
        let before = self.queue.len();
        self.queue.extend(sets.into_iter().filter(|s| s.responses.len() >= 2));
        self.queue.len() - before
    }

    /// Parse an imported file; on any error nothing changes. The same file imported again
    /// changes nothing; a different file under a name already taken is kept beside it as
    /// `name (2)`, so no import replaces another. Returns the records read.
    pub fn import(&mut self, name: &str, text: &str) -> Result<usize> {
        let records = exchange::import_jsonl(name, text)?;
        if self.datasets.iter().any(|d| d.name == name && d.text == text) {
            return Ok(records.len());
        }
        let mut unique = name.to_string();
        let mut k = 2;
        while self.datasets.iter().any(|d| d.name == unique) {
            unique = format!("{name} ({k})");
            k += 1;
        }
        self.datasets.push(Dataset {
            name: unique,
            text: text.to_string(),
            records: records.len(),
        });
        Ok(records.len())
    }

    /// The records of an imported dataset.
    pub fn dataset_records(&self, index: usize) -> Result<Vec<Record>> {
        let d = self
            .datasets
            .get(index)
            .ok_or_else(|| LabError::param("dataset", format!("no dataset {index}")))?;
        parse_jsonl(&d.text).map_err(|e| e.in_file(&d.name))
    }

    /// The annotations as TRL JSONL (the export, and the training data of "train on my annotations").
    pub fn annotations_jsonl(&self) -> String {
        to_jsonl(&self.annotations)
    }

    /// Save a run's history, replacing an earlier save of the same run; keeps the newest
    /// [`MAX_SAVED_RUNS`].
    pub fn save_run(&mut self, run: SavedRun) {
        match self.runs.iter_mut().find(|r| r.id == run.id) {
            Some(existing) => *existing = run,
            None => {
                self.runs.push(run);
                if self.runs.len() > MAX_SAVED_RUNS {
                    self.runs.remove(0);
                }
            }
        }
    }

    /// One part in its storage form.
    pub fn part_text(&self, part: Part) -> String {
        match part {
            Part::Annotations => self.annotations_jsonl(),
            Part::Queue => serde_json::to_string(&self.queue).expect("the queue serializes"),
            Part::Datasets => serde_json::to_string(&self.datasets).expect("datasets serialize"),
            Part::Runs => serde_json::to_string(&self.runs).expect("runs serialize"),
        }
    }

    /// Restore one part from storage; an unreadable part is an error naming the key (and
    /// its line for annotations), and the workbench is unchanged.
    pub fn restore_part(&mut self, part: Part, text: &str) -> Result<()> {
        let key = part.key();
        let json_err = |e: serde_json::Error| {
            LabError::parse(format!(
                "stored data unreadable at line {}, column {}: {e}",
                e.line(),
                e.column()
            ))
            .in_file(key)
        };
        match part {
            Part::Annotations => {
                self.annotations = if text.trim().is_empty() {
                    Vec::new()
                } else {
                    parse_jsonl(text).map_err(|e| e.in_file(key))?
                };
            }
            Part::Queue => self.queue = serde_json::from_str(text).map_err(json_err)?,
            Part::Datasets => self.datasets = serde_json::from_str(text).map_err(json_err)?,
            Part::Runs => self.runs = serde_json::from_str(text).map_err(json_err)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_core::data::Text;

    fn set(prompt: &str, responses: &[&str]) -> CandidateSet {
        CandidateSet {
            prompt: prompt.into(),
            responses: responses.iter().map(|s| s.to_string()).collect(),
            origins: vec!["policy".into(); responses.len()],
        }
    }

    #[test]
    fn annotating_takes_from_the_queue_and_undo_puts_it_back() {
        let mut bench = Workbench::default();
        assert_eq!(
            bench.enqueue([
                set("P1", &[" a", " b"]),
                set("P2", &[" c"]),
                set("P3", &[" x", " y", " z"])
            ]),
            2
        );
        bench.choose(0, 1, Choice::B, 0.9, "b reads better").unwrap();
        assert_eq!(bench.queue.len(), 1);
        let Record::Pair(p) = &bench.annotations[0] else { panic!() };
        assert_eq!((p.chosen.clone(), p.alpha), (Text::from(" b"), Some(0.9)));
        bench.rank(&[2, 0, 1], "").unwrap();
        assert!(bench.queue.is_empty());
        assert!(
            matches!(&bench.annotations[1], Record::Ranked(r) if r.responses[0] == Text::from(" z"))
        );
        // Undo: the ranking goes back to the front of the queue.
        bench.undo().unwrap();
        assert_eq!((bench.annotations.len(), bench.queue.len()), (1, 1));
        assert_eq!(bench.queue[0].responses, vec![" z".to_string(), " x".into(), " y".into()]);
        // A bad choice changes nothing.
        let before = bench.clone();
        assert!(bench.choose(0, 0, Choice::A, 0.8, "").is_err());
        assert!(bench.choose(0, 1, Choice::A, 0.2, "").is_err());
        assert_eq!(bench, before);
    }

    #[test]
    fn the_synthetic_annotator_labels_the_whole_queue() {
        let mut bench = Workbench::default();
        bench.enqueue([
            set("P1", &[" I hate it.", " I love it."]),
            set("P2", &[" Good.", " Bad.", " Fine."]),
        ]);
        let annotator = SyntheticAnnotator {
            reward: lab_core::annotate::Reward::parse("sentiment").unwrap(),
            flip_rate: 0.0,
            alpha_temperature: 1.0,
            seed: 0,
            lists_to_pairs: false,
        };
        let report = bench.label_queue(&annotator).unwrap();
        assert_eq!((report.pairs, bench.queue.len(), bench.annotations.len()), (2, 0, 2));
        assert!(bench.annotations.iter().all(|r| matches!(r, Record::Pair(p) if p.chosen == Text::from(" I love it.") || p.chosen == Text::from(" Good."))));
        let before = bench.clone();
        assert!(bench.label_queue(&annotator).is_err());
        assert_eq!(bench, before);
    }

    #[test]
    fn a_malformed_import_names_its_line_and_keeps_what_was_there() {
        let mut bench = Workbench::default();
        let good = "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"alpha\": 0.75, \"note\": [1, 2]}\n";
        assert_eq!(bench.import("good.jsonl", good).unwrap(), 1);
        let before = bench.clone();
        let err = bench.import("bad.jsonl", &format!("{good}{good}{{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\", \"alpha\": 2}}\n")).unwrap_err().to_string();
        assert!(
            err.contains("bad.jsonl") && err.contains("line 3") && err.contains("alpha"),
            "{err}"
        );
        assert_eq!(bench, before);
        let big = "x".repeat(exchange::MAX_IMPORT_BYTES + 1);
        assert!(bench.import("big.jsonl", &big).unwrap_err().to_string().contains("import limit"));
        assert_eq!(bench, before);
        // The imported text is kept byte for byte; a second file of the same name goes beside it.
        assert_eq!(bench.datasets[0].text, good);
        bench.import("good.jsonl", good).unwrap();
        assert_eq!(bench.datasets.len(), 1);
        bench.import("good.jsonl", &format!("{good}{good}")).unwrap();
        assert_eq!(
            (bench.datasets.len(), bench.datasets[1].name.as_str(), bench.datasets[1].records),
            (2, "good.jsonl (2)", 2)
        );
    }

    #[test]
    fn every_part_round_trips_through_storage() {
        let mut bench = Workbench::default();
        bench.enqueue([set("P1", &[" a", " b"]), set("P2", &[" c", " d"])]);
        bench.choose(0, 1, Choice::Tie, 0.7, "").unwrap();
        bench
            .import("d.jsonl", "{\"chosen\": \"Q: x A: y\", \"rejected\": \"Q: x A: z\"}\n")
            .unwrap();
        let point: Metrics =
            [("step".to_string(), 1.0), ("loss".to_string(), 0.69)].into_iter().collect();
        bench.save_run(SavedRun {
            id: "1/0".into(),
            label: "sigmoid".into(),
            experiment: "loss=sigmoid".into(),
            data: "built-in".into(),
            points: vec![point.clone()],
        });
        bench.save_run(SavedRun {
            id: "1/0".into(),
            label: "sigmoid".into(),
            experiment: "loss=sigmoid".into(),
            data: "built-in".into(),
            points: vec![point.clone(), point],
        });
        assert_eq!(bench.runs.len(), 1);
        let mut restored = Workbench::default();
        for part in Part::ALL {
            restored.restore_part(part, &bench.part_text(part)).unwrap();
        }
        assert_eq!(restored, bench);
        let err =
            restored.restore_part(Part::Annotations, "{\"prompt\": 1}\n").unwrap_err().to_string();
        assert!(err.contains("annotations.jsonl") && err.contains("line 1"), "{err}");
        assert_eq!(restored, bench);
        assert_eq!(bench.runs[0].csv(), "step,loss\n1,0.69\n1,0.69\n");
    }
}
