//! The page's data: what is waiting to be annotated, the annotations made, the imported
//! datasets and the saved run histories, as plain values with plain methods (the data
//! panel only wires them to buttons, keys and storage). Every change either succeeds
//! completely or changes nothing and returns an error naming what is wrong, so nothing
//! the user made is lost.
//!
//! Storage form: one browser-storage entry per item, under a key that names its part and
//! is the item's identity for good (`annotation/<id>`, see [`Part`] and [`Replica`]). An
//! annotation is stored as its TRL JSON line (the export format, extras kept), an imported
//! dataset with its original text (so an export gives back the imported bytes), a queued
//! set and a saved run as JSON.

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
use std::collections::BTreeMap;

pub use crate::replica::Replica;

/// Saved run histories kept (the oldest goes first).
pub const MAX_SAVED_RUNS: usize = 20;

/// An annotation the user made. `key` is empty until the [`Replica`] stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub key: String,
    pub record: Record,
}

impl Annotation {
    fn new(record: Record) -> Self {
        Annotation { key: String::new(), record }
    }
}

/// A set waiting to be judged. The queue is ordered by `order` (then key), so moving one set
/// rewrites only its own entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    #[serde(skip)]
    pub key: String,
    pub order: f64,
    pub set: CandidateSet,
}

/// An imported file, kept as the user gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    #[serde(skip)]
    pub key: String,
    pub name: String,
    pub text: String,
    pub records: usize,
}

/// One run's metrics, saved when training pauses or ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRun {
    #[serde(skip)]
    pub key: String,
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

/// The kinds of stored item. Each item is one storage entry under its part's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Annotations,
    Queue,
    Datasets,
    Runs,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Annotations, Part::Queue, Part::Datasets, Part::Runs];

    /// What every key of this part starts with.
    pub fn prefix(self) -> &'static str {
        match self {
            Part::Annotations => "annotation/",
            Part::Queue => "queue/",
            Part::Datasets => "dataset/",
            Part::Runs => "run/",
        }
    }

    /// The part a storage key belongs to (legacy whole-part keys included).
    pub fn of_key(key: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| key.starts_with(p.prefix()) || key == p.legacy_key())
    }

    /// The single key the whole part was stored under before items had keys of their own;
    /// such an entry is read once, split into items and deleted.
    pub fn legacy_key(self) -> &'static str {
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
    /// Waiting to be judged, by `order`; the first is on screen.
    pub queue: Vec<Queued>,
    /// Made by the user, oldest first.
    pub annotations: Vec<Annotation>,
    pub datasets: Vec<Dataset>,
    pub runs: Vec<SavedRun>,
}

impl Workbench {
    /// Judge `shown`, the set on screen (taken from the queue, normally its first), between
    /// its responses `a` and `b` (indices). The set leaves the queue; if another tab took it
    /// out meanwhile (judged it too), this judgement is kept beside that one.
    pub fn choose(
        &mut self,
        shown: &Queued,
        a: usize,
        b: usize,
        choice: Choice,
        strength: f64,
        rationale: &str,
    ) -> Result<()> {
        let set = &shown.set;
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
        self.judged(shown, record);
        Ok(())
    }

    /// Rank `shown` (as in [`Workbench::choose`]): `order` is best first, over its first
    /// [`RANK_MODE_MAX`] responses.
    pub fn rank(&mut self, shown: &Queued, order: &[usize], rationale: &str) -> Result<()> {
        let set = &shown.set;
        let responses: Vec<String> = set.responses.iter().take(RANK_MODE_MAX).cloned().collect();
        let record = ranked_from_order(&set.prompt, &responses, order, rationale)?;
        self.judged(shown, record);
        Ok(())
    }

    /// `shown` leaves the queue (if still there) and `record` joins the annotations.
    fn judged(&mut self, shown: &Queued, record: Record) {
        let same = |q: &Queued| if shown.key.is_empty() { q == shown } else { q.key == shown.key };
        if let Some(i) = self.queue.iter().position(same) {
            self.queue.remove(i);
        }
        self.annotations.push(Annotation::new(record));
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
        let records = self.queue.iter().map(|q| q.set.to_record()).collect::<Result<Vec<_>>>()?;
        let annotator = SyntheticAnnotator { lists_to_pairs: true, ..annotator.clone() };
        let (labelled, report) = annotator.annotate(&records)?;
        self.queue.clear();
        self.annotations.extend(labelled.into_iter().map(Annotation::new));
        Ok(report)
    }

    /// Put the first queued set at the end.
    pub fn skip(&mut self) {
        if self.queue.len() > 1 {
            let mut first = self.queue.remove(0);
            first.order = self.queue.last().map_or(0.0, |q| q.order + 1.0);
            self.queue.push(first);
        }
    }

    /// Take back the last annotation: its responses go back to the front of the queue.
    pub fn undo(&mut self) -> Option<Record> {
        let Annotation { record, .. } = self.annotations.pop()?;
        let order = self.queue.first().map_or(0.0, |q| q.order - 1.0);
        let set = CandidateSet::from_record(&record, "undone");
        self.queue.insert(0, Queued { key: String::new(), order, set });
        Some(record)
    }

    /// Queue sets to annotate (sampled, or from a dataset); sets with fewer than two
    /// responses are left out. Returns how many were queued.
    pub fn enqueue(&mut self, sets: impl IntoIterator<Item = CandidateSet>) -> usize {
        let before = self.queue.len();
        let mut order = self.queue.last().map_or(0.0, |q| q.order + 1.0);
        for set in sets.into_iter().filter(|s| s.responses.len() >= 2) {
            self.queue.push(Queued { key: String::new(), order, set });
            order += 1.0;
        }
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
            key: String::new(),
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
        let records: Vec<Record> = self.annotations.iter().map(|a| a.record.clone()).collect();
        to_jsonl(&records)
    }

    /// Save a run's history, replacing an earlier save of the same run; keeps the newest
    /// [`MAX_SAVED_RUNS`].
    pub fn save_run(&mut self, run: SavedRun) {
        match self.runs.iter_mut().find(|r| r.id == run.id) {
            Some(existing) => *existing = SavedRun { key: existing.key.clone(), ..run },
            None => {
                self.runs.push(SavedRun { key: String::new(), ..run });
                if self.runs.len() > MAX_SAVED_RUNS {
                    self.runs.remove(0);
                }
            }
        }
    }

    /// One part in its storage form: key → value, for the items that have a key.
    pub fn entries(&self, part: Part) -> BTreeMap<String, String> {
        fn json<T: Serialize>(item: &T) -> String {
            serde_json::to_string(item).expect("stored items serialize")
        }
        let keyed = |key: &String, value: String| (!key.is_empty()).then(|| (key.clone(), value));
        match part {
            Part::Annotations => self
                .annotations
                .iter()
                .filter_map(|a| keyed(&a.key, a.record.to_json_line()))
                .collect(),
            Part::Queue => self.queue.iter().filter_map(|q| keyed(&q.key, json(q))).collect(),
            Part::Datasets => self.datasets.iter().filter_map(|d| keyed(&d.key, json(d))).collect(),
            Part::Runs => self.runs.iter().filter_map(|r| keyed(&r.key, json(r))).collect(),
        }
    }

    /// Rebuild one part from the entries under its prefix (others are ignored), in key order
    /// (the queue by `order`, then key). An entry that cannot be read is left out and named
    /// in the returned problems; the rest of the part is restored.
    pub fn restore(&mut self, part: Part, entries: &BTreeMap<String, String>) -> Vec<String> {
        let mut problems = Vec::new();
        let prefix = part.prefix();
        let mine = entries.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix));
        let mut read = |key: &String, parsed: Result<()>| {
            if let Err(err) = parsed {
                problems.push(format!("{key}: {err}"));
            }
        };
        match part {
            Part::Annotations => {
                self.annotations.clear();
                for (key, value) in mine {
                    let parsed = serde_json::from_str(value)
                        .map_err(|e| LabError::parse(format!("malformed JSON: {e}")))
                        .and_then(Record::from_json_value)
                        .map(|record| {
                            self.annotations.push(Annotation { key: key.clone(), record })
                        });
                    read(key, parsed);
                }
            }
            Part::Queue => {
                self.queue.clear();
                for (key, value) in mine {
                    let parsed = parse_json::<Queued>(value)
                        .map(|q| self.queue.push(Queued { key: key.clone(), ..q }));
                    read(key, parsed);
                }
                // stable: equal orders (two tabs queueing at once) stay in key order
                self.queue.sort_by(|a, b| a.order.total_cmp(&b.order));
            }
            Part::Datasets => {
                self.datasets.clear();
                for (key, value) in mine {
                    let parsed = parse_json::<Dataset>(value)
                        .map(|d| self.datasets.push(Dataset { key: key.clone(), ..d }));
                    read(key, parsed);
                }
            }
            Part::Runs => {
                self.runs.clear();
                for (key, value) in mine {
                    let parsed = parse_json::<SavedRun>(value)
                        .map(|r| self.runs.push(SavedRun { key: key.clone(), ..r }));
                    read(key, parsed);
                }
            }
        }
        problems
    }

    /// The items of a part's legacy whole-part entry, without keys; an unreadable entry is an
    /// error naming the key (and its line for annotations).
    pub(crate) fn legacy_items(part: Part, text: &str) -> Result<Workbench> {
        let key = part.legacy_key();
        let mut bench = Workbench::default();
        match part {
            Part::Annotations if text.trim().is_empty() => {}
            Part::Annotations => {
                let records = parse_jsonl(text).map_err(|e| e.in_file(key))?;
                bench.annotations = records.into_iter().map(Annotation::new).collect();
            }
            Part::Queue => {
                let sets: Vec<CandidateSet> = parse_json(text).map_err(|e| e.in_file(key))?;
                bench.enqueue(sets);
            }
            Part::Datasets => bench.datasets = parse_json(text).map_err(|e| e.in_file(key))?,
            Part::Runs => bench.runs = parse_json(text).map_err(|e| e.in_file(key))?,
        }
        Ok(bench)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        LabError::parse(format!(
            "stored data unreadable at line {}, column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lab_core::data::Text;

    pub(crate) fn set(prompt: &str, responses: &[&str]) -> CandidateSet {
        CandidateSet {
            prompt: prompt.into(),
            responses: responses.iter().map(|s| s.to_string()).collect(),
            origins: vec!["policy".into(); responses.len()],
        }
    }

    fn prompts(bench: &Workbench) -> Vec<&str> {
        bench.queue.iter().map(|q| q.set.prompt.as_str()).collect()
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
        let first = bench.queue[0].clone();
        bench.choose(&first, 0, 1, Choice::B, 0.9, "b reads better").unwrap();
        assert_eq!(bench.queue.len(), 1);
        let Record::Pair(p) = &bench.annotations[0].record else { panic!() };
        assert_eq!((p.chosen.clone(), p.alpha), (Text::from(" b"), Some(0.9)));
        let first = bench.queue[0].clone();
        bench.rank(&first, &[2, 0, 1], "").unwrap();
        assert!(bench.queue.is_empty());
        assert!(
            matches!(&bench.annotations[1].record, Record::Ranked(r) if r.responses[0] == Text::from(" z"))
        );
        // Undo: the ranking goes back to the front of the queue.
        bench.undo().unwrap();
        assert_eq!((bench.annotations.len(), bench.queue.len()), (1, 1));
        assert_eq!(bench.queue[0].set.responses, vec![" z".to_string(), " x".into(), " y".into()]);
        // A bad choice changes nothing.
        let before = bench.clone();
        let first = bench.queue[0].clone();
        assert!(bench.choose(&first, 0, 0, Choice::A, 0.8, "").is_err());
        assert!(bench.choose(&first, 0, 1, Choice::A, 0.2, "").is_err());
        assert_eq!(bench, before);
        // A set judged elsewhere meanwhile (no longer queued): this judgement is kept too.
        bench.queue.clear();
        bench.choose(&first, 0, 1, Choice::A, 0.8, "again").unwrap();
        assert_eq!((bench.annotations.len(), bench.queue.len()), (2, 0));
    }

    #[test]
    fn the_queue_order_follows_skip_and_undo() {
        let mut bench = Workbench::default();
        bench.enqueue([
            set("P1", &[" a", " b"]),
            set("P2", &[" c", " d"]),
            set("P3", &[" e", " f"]),
        ]);
        bench.skip();
        assert_eq!(prompts(&bench), ["P2", "P3", "P1"]);
        let first = bench.queue[0].clone();
        bench.choose(&first, 0, 1, Choice::A, 0.75, "").unwrap();
        bench.undo().unwrap();
        assert_eq!(prompts(&bench), ["P2", "P3", "P1"]);
        // the orders agree with the positions, so the stored queue reads back the same
        let orders: Vec<f64> = bench.queue.iter().map(|q| q.order).collect();
        assert!(orders.windows(2).all(|w| w[0] < w[1]), "{orders:?}");
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
        assert!(bench.annotations.iter().all(|a| matches!(&a.record, Record::Pair(p) if p.chosen == Text::from(" I love it.") || p.chosen == Text::from(" Good."))));
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

    /// A workbench with an item of every part, keys given by hand.
    pub(crate) fn full_bench() -> Workbench {
        let mut bench = Workbench::default();
        bench.enqueue([set("P1", &[" a", " b"]), set("P2", &[" c", " d"])]);
        let first = bench.queue[0].clone();
        bench.choose(&first, 0, 1, Choice::Tie, 0.7, "").unwrap();
        bench
            .import("d.jsonl", "{\"chosen\": \"Q: x A: y\", \"rejected\": \"Q: x A: z\"}\n")
            .unwrap();
        let point: Metrics =
            [("step".to_string(), 1.0), ("loss".to_string(), 0.69)].into_iter().collect();
        let run = SavedRun {
            key: String::new(),
            id: "1/0".into(),
            label: "sigmoid".into(),
            experiment: "loss=sigmoid".into(),
            data: "built-in".into(),
            points: vec![point.clone()],
        };
        bench.save_run(run.clone());
        bench.save_run(SavedRun { points: vec![point.clone(), point], ..run });
        assert_eq!(bench.runs.len(), 1);
        bench.queue[0].key = "queue/1".into();
        bench.annotations[0].key = "annotation/1".into();
        bench.datasets[0].key = "dataset/1".into();
        bench.runs[0].key = "run/1".into();
        bench
    }

    #[test]
    fn every_part_round_trips_through_its_entries() {
        let bench = full_bench();
        let mut all = BTreeMap::new();
        for part in Part::ALL {
            let entries = bench.entries(part);
            assert_eq!(entries.len(), 1, "{part:?}");
            assert!(entries.keys().all(|k| Part::of_key(k) == Some(part)));
            all.extend(entries);
        }
        let mut restored = Workbench::default();
        for part in Part::ALL {
            assert!(restored.restore(part, &all).is_empty());
        }
        assert_eq!(restored, bench);
        assert_eq!(bench.runs[0].csv(), "step,loss\n1,0.69\n1,0.69\n");
        // An annotation is stored as its TRL line.
        assert_eq!(all["annotation/1"], bench.annotations[0].record.to_json_line());
        // An unreadable entry is named and left out; the rest of its part is restored.
        all.insert("annotation/2".into(), "{\"prompt\": 1}".into());
        all.insert("annotation/0".into(), "not json".into());
        let problems = restored.restore(Part::Annotations, &all);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("annotation/0: ") && problems[1].contains("prompt"));
        assert_eq!(restored, bench);
    }
}
