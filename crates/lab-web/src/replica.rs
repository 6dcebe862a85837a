//! One tab's copy of the stored [`Workbench`], and how tabs open on the same browser
//! storage stay consistent without losing anything.
//!
//! Every item is its own storage entry (`annotation/<id>`, `queue/<id>`, ...), so a change
//! writes only the entries it touched: two tabs adding annotations write different keys,
//! and a tab never writes back an item it did not change, so an item another tab deleted
//! is not brought back. A change's writes stay *unsaved* until storage confirms them; all
//! unsaved writes are committed together (one transaction: a judgement leaves the queue and
//! joins the annotations at once), a failed commit leaves them unsaved and on the page, and
//! the next commit carries every one of them. When another tab commits, this tab re-reads
//! the parts it touched and lays its own unsaved writes on top.
//!
//! Keys are `<part prefix><ms since 1970, 13 digits>-<tab>-<count>`: unique across tabs, and
//! each new one sorts after every key of its part, so items read back in the order made.

use crate::workbench::{Part, Workbench};
use lab_core::Result;
use std::collections::BTreeMap;

/// Storage entries: key → value.
pub type Entries = BTreeMap<String, String>;

/// Writes to commit in one transaction: `Some(value)` puts, `None` deletes.
pub type Batch = Vec<(String, Option<String>)>;

#[derive(Debug, Clone)]
pub struct Replica {
    bench: Workbench,
    /// What storage holds, as far as this tab knows: its last read, plus its own commits.
    stored: Entries,
    /// This tab's writes that storage has not confirmed yet.
    unsaved: BTreeMap<String, Option<String>>,
    /// This tab's part of the keys it makes.
    tab: String,
    last_ms: u64,
    count: u64,
    /// Commits confirmed so far; a read started before the latest one may miss it.
    commits: u64,
}

impl Replica {
    /// An empty copy for the tab named `tab` (letters and digits, unique per tab).
    pub fn new(tab: &str) -> Replica {
        Replica {
            bench: Workbench::default(),
            stored: Entries::new(),
            unsaved: BTreeMap::new(),
            tab: tab.to_string(),
            last_ms: 0,
            count: 0,
            commits: 0,
        }
    }

    /// The workbench as this tab sees it: what is stored, with its unsaved changes.
    pub fn bench(&self) -> &Workbench {
        &self.bench
    }

    /// Writes not yet confirmed by storage.
    pub fn unsaved(&self) -> usize {
        self.unsaved.len()
    }

    /// Commits confirmed so far; pass it back to [`Replica::reloaded`] with a read started now.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// The key prefixes to read for `parts`; the legacy whole-part keys are prefixes of
    /// themselves, so a read of these finds them too.
    pub fn read_prefixes(parts: &[Part]) -> Vec<String> {
        parts.iter().flat_map(|p| [p.prefix().to_string(), p.legacy_key().to_string()]).collect()
    }

    /// The parts that changed keys belong to (from another tab's commit).
    pub fn parts_of(keys: &[String]) -> Vec<Part> {
        let mut parts: Vec<Part> = keys.iter().filter_map(|k| Part::of_key(k)).collect();
        parts.sort();
        parts.dedup();
        parts
    }

    /// Take what storage holds for `parts` (every entry under [`Replica::read_prefixes`],
    /// read in one transaction started when [`Replica::commits`] was `read_at`) and rebuild
    /// those parts, this tab's unsaved writes on top. A legacy whole-part entry is split
    /// into items, written under their own keys as unsaved writes, and deleted with them.
    ///
    /// Returns the problems: entries that could not be read, named by key; they are left in
    /// storage as they are and never written over. `None`: this tab committed since the
    /// read started, so the read may miss that commit; read again.
    pub fn reloaded(
        &mut self,
        parts: &[Part],
        entries: Entries,
        read_at: u64,
    ) -> Option<Vec<String>> {
        if read_at != self.commits {
            return None;
        }
        let mut problems = Vec::new();
        self.stored.retain(|key, _| Part::of_key(key).is_none_or(|p| !parts.contains(&p)));
        for (key, value) in entries {
            if Part::of_key(&key).is_some_and(|p| parts.contains(&p)) {
                self.stored.insert(key, value);
            }
        }
        for &part in parts {
            if let Some(text) = self.stored.get(part.legacy_key()) {
                match Workbench::legacy_items(part, text) {
                    Ok(mut items) => {
                        for (i, key) in key_slots(&mut items, part).into_iter().enumerate() {
                            *key = format!("{}0000000000000-legacy-{:06}", part.prefix(), i + 1);
                        }
                        for (key, value) in items.entries(part) {
                            if !self.stored.contains_key(&key) && !self.unsaved.contains_key(&key) {
                                self.unsaved.insert(key, Some(value));
                            }
                        }
                        self.unsaved.insert(part.legacy_key().to_string(), None);
                    }
                    Err(err) => problems.push(err.to_string()),
                }
            }
            problems.extend(self.bench.restore(part, &self.view(part)));
        }
        Some(problems)
    }

    /// One part as this tab sees it: the stored entries with the unsaved writes applied.
    fn view(&self, part: Part) -> Entries {
        let prefix = part.prefix();
        let under = |map: &Entries| -> Entries {
            map.range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut view = under(&self.stored);
        for (key, write) in self.unsaved.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match write {
                Some(value) => view.insert(key.clone(), value.clone()),
                None => view.remove(key),
            };
        }
        view
    }

    /// Apply a change (new items get keys made at `now_ms`); its writes join the unsaved
    /// ones. On error nothing changes.
    pub fn change<T>(
        &mut self,
        now_ms: f64,
        f: impl FnOnce(&mut Workbench) -> Result<T>,
    ) -> Result<T> {
        let mut next = self.bench.clone();
        let out = f(&mut next)?;
        self.assign_keys(&mut next, now_ms);
        for part in Part::ALL {
            let unchanged = match part {
                Part::Annotations => next.annotations == self.bench.annotations,
                Part::Queue => next.queue == self.bench.queue,
                Part::Datasets => next.datasets == self.bench.datasets,
                Part::Runs => next.runs == self.bench.runs,
            };
            if unchanged {
                continue;
            }
            let (before, after) = (self.bench.entries(part), next.entries(part));
            for (key, value) in &after {
                if before.get(key) != Some(value) {
                    self.unsaved.insert(key.clone(), Some(value.clone()));
                }
            }
            for key in before.keys().filter(|k| !after.contains_key(*k)) {
                self.unsaved.insert(key.clone(), None);
            }
        }
        self.bench = next;
        Ok(out)
    }

    /// Every unsaved write, to commit in one transaction.
    pub fn outbox(&self) -> Batch {
        self.unsaved.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Storage confirmed `batch`: it is stored now. A key written again since the batch was
    /// taken stays unsaved with its newer value.
    pub fn committed(&mut self, batch: &Batch) {
        for (key, write) in batch {
            match write {
                Some(value) => self.stored.insert(key.clone(), value.clone()),
                None => self.stored.remove(key),
            };
            if self.unsaved.get(key) == Some(write) {
                self.unsaved.remove(key);
            }
        }
        self.commits += 1;
    }

    /// Give every new item (empty key) of `bench` a key after all the keys of its part.
    fn assign_keys(&mut self, bench: &mut Workbench, now_ms: f64) {
        for part in Part::ALL {
            let mut floor = String::new();
            for key in key_slots(bench, part) {
                if key.is_empty() {
                    *key = self.next_key(part.prefix(), now_ms, &floor);
                }
                if *key > floor {
                    floor.clone_from(key);
                }
            }
        }
    }

    /// A key of this tab, made at `now_ms` (or later: never before this tab's last key), that
    /// sorts after `floor`.
    fn next_key(&mut self, prefix: &str, now_ms: f64, floor: &str) -> String {
        let floor_ms = floor
            .strip_prefix(prefix)
            .and_then(|rest| rest.get(..13))
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(0);
        let mut ms = (now_ms.max(0.0) as u64).max(self.last_ms).max(floor_ms);
        loop {
            self.count += 1;
            let key = format!("{prefix}{ms:013}-{}-{:06}", self.tab, self.count);
            if key.as_str() > floor {
                self.last_ms = ms;
                return key;
            }
            ms += 1;
        }
    }
}

/// The keys of one part's items, in the part's order.
fn key_slots(bench: &mut Workbench, part: Part) -> Vec<&mut String> {
    match part {
        Part::Annotations => bench.annotations.iter_mut().map(|a| &mut a.key).collect(),
        Part::Queue => bench.queue.iter_mut().map(|q| &mut q.key).collect(),
        Part::Datasets => bench.datasets.iter_mut().map(|d| &mut d.key).collect(),
        Part::Runs => bench.runs.iter_mut().map(|r| &mut r.key).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workbench::tests::{full_bench, set};
    use lab_core::annotate::Choice;
    use lab_core::data::Record;

    /// Browser storage as the tabs share it: one map, commits that apply whole or not at all.
    #[derive(Default)]
    struct Storage {
        entries: Entries,
        /// The next commits fail (a full quota).
        full: bool,
    }

    impl Storage {
        /// What a read of `parts` returns.
        fn read(&self, parts: &[Part]) -> Entries {
            let prefixes = Replica::read_prefixes(parts);
            self.entries
                .iter()
                .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p.as_str())))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }

        /// Commit `tab`'s unsaved writes; the keys written (another tab's reload), or None
        /// when the commit failed.
        fn commit(&mut self, tab: &mut Replica) -> Option<Vec<String>> {
            let batch = tab.outbox();
            if self.full {
                return None;
            }
            for (key, write) in &batch {
                match write {
                    Some(value) => self.entries.insert(key.clone(), value.clone()),
                    None => self.entries.remove(key),
                };
            }
            tab.committed(&batch);
            Some(batch.into_iter().map(|(k, _)| k).collect())
        }

        /// `tab` re-reads `parts` (what another tab's commit message names).
        fn reload(&self, tab: &mut Replica, parts: &[Part]) -> Vec<String> {
            let read_at = tab.commits();
            tab.reloaded(parts, self.read(parts), read_at).expect("no commit since the read")
        }

        /// A tab opened now (every stored entry readable).
        fn open(&self, name: &str) -> Replica {
            let (tab, problems) = self.open_with_problems(name);
            assert!(problems.is_empty(), "{problems:?}");
            tab
        }

        fn open_with_problems(&self, name: &str) -> (Replica, Vec<String>) {
            let mut tab = Replica::new(name);
            let problems = self.reload(&mut tab, &Part::ALL);
            (tab, problems)
        }

        fn annotations(&self) -> usize {
            self.entries.keys().filter(|k| k.starts_with("annotation/")).count()
        }
    }

    fn choose(tab: &mut Replica, now_ms: f64, rationale: &str) {
        let shown = tab.bench().queue[0].clone();
        tab.change(now_ms, |b| b.choose(&shown, 0, 1, Choice::A, 0.75, rationale)).unwrap();
    }

    fn rationales(tab: &Replica) -> Vec<String> {
        tab.bench()
            .annotations
            .iter()
            .map(|a| match &a.record {
                Record::Pair(p) => p.rationale.clone().unwrap_or_default(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn two_tabs_lose_no_annotation_and_bring_back_no_deleted_one() {
        let mut storage = Storage::default();
        let (mut a, mut b) = (storage.open("a"), storage.open("b"));
        let sets = (1..=6).map(|i| set(&format!("P{i}"), &[" x", " y"]));
        a.change(1.0, |bench| Ok(bench.enqueue(sets))).unwrap();
        let written = storage.commit(&mut a).unwrap();
        assert_eq!(Replica::parts_of(&written), [Part::Queue]);
        storage.reload(&mut b, &Replica::parts_of(&written));
        assert_eq!(b.bench().queue.len(), 6);

        // Both judge at once, neither having seen the other's judgement: both are kept
        // (both judged P1), and the queue lost P1 once.
        choose(&mut a, 10.0, "a1");
        choose(&mut b, 11.0, "b1");
        let from_a = storage.commit(&mut a).unwrap();
        let from_b = storage.commit(&mut b).unwrap();
        storage.reload(&mut b, &Replica::parts_of(&from_a));
        storage.reload(&mut a, &Replica::parts_of(&from_b));
        assert_eq!(storage.annotations(), 2);
        assert_eq!(rationales(&a), ["a1", "b1"]);
        assert_eq!(a.bench(), b.bench());
        assert_eq!(a.bench().queue.len(), 5);

        // a takes back the newest (b's); b, not told yet, judges another: b's new one is
        // stored and the one a took back stays gone.
        a.change(20.0, |bench| Ok(bench.undo())).unwrap();
        choose(&mut b, 21.0, "b2");
        let from_a = storage.commit(&mut a).unwrap();
        let from_b = storage.commit(&mut b).unwrap();
        storage.reload(&mut a, &Replica::parts_of(&from_b));
        storage.reload(&mut b, &Replica::parts_of(&from_a));
        assert_eq!(rationales(&a), ["a1", "b2"]);
        assert_eq!(a.bench(), b.bench());
        assert_eq!(storage.open("c").bench(), a.bench());

        // a clears what it has seen while b adds one a has not seen: only b's new one stays.
        choose(&mut b, 30.0, "b3");
        let from_b = storage.commit(&mut b).unwrap();
        a.change(31.0, |bench| {
            bench.annotations.clear();
            Ok(())
        })
        .unwrap();
        storage.commit(&mut a).unwrap();
        storage.reload(&mut a, &Replica::parts_of(&from_b));
        storage.reload(&mut b, &[Part::Annotations]);
        assert_eq!((rationales(&a), rationales(&b)), (vec!["b3".into()], vec!["b3".into()]));
    }

    #[test]
    fn a_failed_commit_keeps_everything_and_the_next_one_stores_it() {
        let mut storage = Storage::default();
        let mut a = storage.open("a");
        let mut b = storage.open("b");
        a.change(1.0, |bench| {
            Ok(bench.enqueue((1..=5).map(|i| set(&format!("P{i}"), &[" x", " y"]))))
        })
        .unwrap();
        storage.full = true;
        choose(&mut a, 2.0, "one");
        choose(&mut a, 3.0, "two");
        assert!(storage.commit(&mut a).is_none());
        assert_eq!((a.bench().annotations.len(), a.unsaved()), (2, 2 + 5));
        assert_eq!(storage.annotations(), 0);

        // Another tab's commit makes a re-read: its unsaved work stays on its page.
        storage.full = false;
        b.change(4.0, |bench| {
            bench.import(
                "d.jsonl",
                "{\"prompt\": \"p\", \"chosen\": \" c\", \"rejected\": \" r\"}\n",
            )
        })
        .unwrap();
        let from_b = storage.commit(&mut b).unwrap();
        assert!(storage.reload(&mut a, &Replica::parts_of(&from_b)).is_empty());
        storage.reload(&mut a, &Part::ALL);
        assert_eq!(
            (rationales(&a), a.bench().queue.len(), a.bench().datasets.len()),
            (vec!["one".into(), "two".into()], 3, 1)
        );

        // The next successful commit stores all of it.
        choose(&mut a, 5.0, "three");
        storage.commit(&mut a).unwrap();
        assert_eq!(a.unsaved(), 0);
        let fresh = storage.open("c");
        assert_eq!(rationales(&fresh), ["one", "two", "three"]);
        assert_eq!(fresh.bench(), a.bench());
    }

    #[test]
    fn a_change_during_a_commit_stays_unsaved_and_a_read_from_before_it_is_refused() {
        let mut storage = Storage::default();
        let mut a = storage.open("a");
        a.change(1.0, |bench| {
            Ok(bench.enqueue((1..=3).map(|i| set(&format!("P{i}"), &[" x", " y"]))))
        })
        .unwrap();
        let read_at = a.commits();
        let before_commit = storage.read(&Part::ALL);
        // The batch is taken, then the queue changes again before storage confirms it.
        let batch = a.outbox();
        a.change(2.0, |bench| {
            bench.skip();
            Ok(())
        })
        .unwrap();
        for (key, write) in &batch {
            storage.entries.insert(key.clone(), write.clone().unwrap());
        }
        a.committed(&batch);
        assert_eq!(a.unsaved(), 1, "the skipped set's new order is still to be written");
        // A read that started before the commit may lack it: refused.
        assert!(a.reloaded(&Part::ALL, before_commit, read_at).is_none());
        storage.commit(&mut a).unwrap();
        let order: Vec<String> =
            storage.open("b").bench().queue.iter().map(|q| q.set.prompt.clone()).collect();
        assert_eq!(order, ["P2", "P3", "P1"]);
    }

    #[test]
    fn new_keys_sort_after_the_part_whatever_the_clocks_say() {
        let mut storage = Storage::default();
        let mut a = storage.open("a");
        let mut b = storage.open("b");
        // b's clock is an hour ahead of a's, and a's goes back a minute between two judgements.
        b.change(3_600_000.0 + 5.0, |bench| {
            Ok(bench.enqueue((1..=4).map(|i| set(&format!("P{i}"), &[" x", " y"]))))
        })
        .unwrap();
        choose(&mut b, 3_600_000.0 + 6.0, "b1");
        let from_b = storage.commit(&mut b).unwrap();
        storage.reload(&mut a, &Replica::parts_of(&from_b));
        choose(&mut a, 60_000.0, "a1");
        choose(&mut a, 0.0, "a2");
        storage.commit(&mut a).unwrap();
        assert_eq!(rationales(&storage.open("c")), ["b1", "a1", "a2"]);
        let keys: Vec<&String> = a.bench().annotations.iter().map(|x| &x.key).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        // a's keys go one ms past b's, whose tab name sorts after a's
        assert!(keys[1].starts_with("annotation/0000003600007-a-"), "{keys:?}");
    }

    #[test]
    fn whole_part_entries_of_earlier_versions_are_split_into_items_once() {
        let old = full_bench();
        let mut storage = Storage::default();
        for part in [Part::Annotations, Part::Queue, Part::Datasets] {
            let text = match part {
                Part::Annotations => old.annotations_jsonl(),
                Part::Queue => serde_json::to_string(&vec![old.queue[0].set.clone()]).unwrap(),
                _ => serde_json::to_string(&old.datasets).unwrap(),
            };
            storage.entries.insert(part.legacy_key().into(), text);
        }
        storage.entries.insert("runs.json".into(), "[{\"id\": ".into());
        let (mut a, problems) = storage.open_with_problems("a");
        assert!(problems.len() == 1 && problems[0].contains("runs.json"), "{problems:?}");
        let (mut b, _) = storage.open_with_problems("b");
        storage.commit(&mut a).unwrap();
        let keys: Vec<&str> = storage.entries.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "annotation/0000000000000-legacy-000001",
                "dataset/0000000000000-legacy-000001",
                "queue/0000000000000-legacy-000001",
                "runs.json"
            ]
        );
        // The unreadable one is left as it was, and named again at every start.
        let (migrated, problems) = storage.open_with_problems("c");
        assert_eq!(problems.len(), 1);
        assert_eq!(migrated.bench().annotations[0].record, old.annotations[0].record);
        assert_eq!(migrated.bench().queue[0].set, old.queue[0].set);
        assert_eq!(migrated.bench().datasets[0].text, old.datasets[0].text);
        assert!(migrated.bench().runs.is_empty());
        // A second tab that read the old entries migrates to the same keys: nothing doubles.
        storage.commit(&mut b).unwrap();
        assert_eq!(storage.entries.len(), 4);
        assert_eq!(storage.open_with_problems("d").0.bench(), migrated.bench());
    }
}
