//! The data of the classroom scenarios (`assets/scenarios/<name>/data.jsonl` and, where a
//! scenario has one, `heldout.jsonl`): deterministic, seeded, no downloads, built from the
//! same word lists as the pretraining corpus ([`crate::corpus`]) so the starter model knows
//! every prompt's kind. The committed files are [`generate`]`(name, 0)` written with
//! [`crate::data::to_jsonl`]; `alignlab make-scenario` writes or checks them and a test
//! asserts they match byte for byte, so data and generator cannot drift apart.
//!
//! | scenario | training pairs | held-out pairs | seed decides |
//! |---|---|---|---|
//! | `no-never` | "Would you ever eat a bug?": " No" over " Never" | none | nothing |
//! | `refusals` | 12 harmful tasks × 5 request templates: two refusals | the other 8 tasks: refusal over compliance | nothing |
//! | `ranking-accuracy` | per thing: polite over curt "Yes", polite over curt "No", every fourth thing a plain "Yes" over "No" | none | the property each "No" question asks about |
//! | `noisy-labels` | 16 sentiment topics × 2 questions, positive preferred, a quarter of the labels flipped (`"flipped": true`) | the other 8 topics, clean | which topics are held out, which labels flip |
//! | `3d-properties` | all 24 sentiment topics × 2 questions, positive preferred | none | nothing |
//! | `length` | 14 things: the long description over the short one | the other 8 things | which things are held out |

use crate::corpus::{
    self, ACTS, COMPLIANCE, HARMFUL, REFUSALS, REQUESTS, SENTIMENT_QUESTIONS, THINGS, TOPICS,
};
use crate::data::{to_jsonl, PreferencePair, Record};
use crate::error::{LabError, Result};
use crate::rng::Rng;
use serde_json::Value;

/// The scenarios shipped in `assets/scenarios/`, in teaching order.
pub const SCENARIOS: [&str; 6] =
    ["no-never", "refusals", "ranking-accuracy", "noisy-labels", "3d-properties", "length"];

/// Harmful tasks trained on in `refusals`; the rest of [`HARMFUL`] are held out.
const REFUSAL_TRAIN_TASKS: usize = 12;
/// Sentiment topics trained on in `noisy-labels`; the rest of [`TOPICS`] are held out.
const NOISY_TRAIN_TOPICS: usize = 16;
/// Flipped labels per training pair in `noisy-labels` (Chowdhury et al.'s ε).
const NOISY_FLIP_RATE: f64 = 0.25;
/// Things trained on in `length`; the rest of [`THINGS`] are held out.
const LENGTH_TRAIN_THINGS: usize = 14;

/// One scenario's generated files.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioData {
    pub data: Vec<Record>,
    /// Held-out pairs (`heldout.jsonl`), for the scenarios whose instrument needs them.
    pub heldout: Option<Vec<Record>>,
}

impl ScenarioData {
    /// (file name, JSONL text) of every file, `data.jsonl` first.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("data.jsonl", to_jsonl(&self.data))];
        if let Some(heldout) = &self.heldout {
            out.push(("heldout.jsonl", to_jsonl(heldout)));
        }
        out
    }
}

fn pair(question: &str, chosen: &str, rejected: &str) -> Record {
    Record::Pair(PreferencePair::plain(
        &corpus::prompt(question),
        &format!(" {chosen}"),
        &format!(" {rejected}"),
    ))
}

/// The data of scenario `name`, deterministic in `seed` (the shipped files use seed 0).
pub fn generate(name: &str, seed: u64) -> Result<ScenarioData> {
    let mut rng = Rng::new(seed);
    let data = match name {
        "no-never" => no_never(),
        "refusals" => refusals(),
        "ranking-accuracy" => ranking_accuracy(&mut rng),
        "noisy-labels" => noisy_labels(&mut rng),
        "3d-properties" => three_d_properties(),
        "length" => length(&mut rng),
        _ => {
            return Err(LabError::param(
                "scenario",
                format!("no scenario {name:?} (shipped: {})", SCENARIOS.join(", ")),
            ))
        }
    };
    Ok(data)
}

/// Razin et al. 2024's single-prompt example: " No" preferred over " Never".
fn no_never() -> ScenarioData {
    let (act, _) = ACTS[0];
    ScenarioData {
        data: vec![pair(&format!("Would you ever {act}?"), "No", "Never")],
        heldout: None,
    }
}

/// Both answers refuse; the held-out tasks pit the usual refusal against compliance.
fn refusals() -> ScenarioData {
    let requests = |tasks: &[&str], chosen: &str, rejected: &str| -> Vec<Record> {
        tasks
            .iter()
            .flat_map(|task| {
                REQUESTS
                    .iter()
                    .map(move |template| pair(&template.replace("{}", task), chosen, rejected))
            })
            .collect()
    };
    let (train, held) = HARMFUL.split_at(REFUSAL_TRAIN_TASKS);
    ScenarioData {
        data: requests(train, REFUSALS[0], REFUSALS[1]),
        heldout: Some(requests(held, REFUSALS[0], COMPLIANCE)),
    }
}

/// Polite answers the corpus never gives ("Yes, it is.") over the curt ones it always gives.
fn ranking_accuracy(rng: &mut Rng) -> ScenarioData {
    let adjectives = corpus::adjectives();
    let mut data = Vec::new();
    for (i, (thing, props)) in THINGS.iter().enumerate() {
        let lacks: Vec<&str> = adjectives.iter().copied().filter(|a| !props.contains(a)).collect();
        let lacked = lacks[rng.below(lacks.len())];
        data.push(pair(&format!("Is {thing} {}?", props[0]), "Yes, it is.", "Yes"));
        data.push(pair(&format!("Is {thing} {lacked}?"), "No, it is not.", "No"));
        if i % 4 == 0 {
            data.push(pair(&format!("Is {thing} {}?", props[1]), "Yes", "No"));
        }
    }
    ScenarioData { data, heldout: None }
}

/// Sentiment pairs for `topics`, the positive statement preferred.
fn sentiment_pairs(topics: &[&str]) -> Vec<Record> {
    topics
        .iter()
        .flat_map(|topic| {
            SENTIMENT_QUESTIONS.iter().map(move |template| {
                pair(
                    &template.replace("{}", topic),
                    &corpus::positive_statement(topic),
                    &corpus::negative_statement(topic),
                )
            })
        })
        .collect()
}

/// A random split of the topics; exactly a quarter of the training labels flipped.
fn noisy_labels(rng: &mut Rng) -> ScenarioData {
    let mut topics: Vec<&str> = TOPICS.iter().map(|(topic, _)| *topic).collect();
    rng.shuffle(&mut topics);
    let (train, held) = topics.split_at(NOISY_TRAIN_TOPICS);
    let mut data = sentiment_pairs(train);
    let mut order: Vec<usize> = (0..data.len()).collect();
    rng.shuffle(&mut order);
    let flips = (NOISY_FLIP_RATE * data.len() as f64).round() as usize;
    for &i in &order[..flips] {
        if let Record::Pair(p) = &mut data[i] {
            std::mem::swap(&mut p.chosen, &mut p.rejected);
            p.extra.insert("flipped".to_string(), Value::Bool(true));
        }
    }
    ScenarioData { data, heldout: Some(sentiment_pairs(held)) }
}

fn three_d_properties() -> ScenarioData {
    let topics: Vec<&str> = TOPICS.iter().map(|(topic, _)| *topic).collect();
    ScenarioData { data: sentiment_pairs(&topics), heldout: None }
}

/// The long description of a thing over the short one with the same content.
fn length(rng: &mut Rng) -> ScenarioData {
    let mut things: Vec<(&str, &[&str])> = THINGS.to_vec();
    rng.shuffle(&mut things);
    let pairs = |things: &[(&str, &[&str])]| -> Vec<Record> {
        things
            .iter()
            .map(|(thing, props)| {
                pair(
                    &format!("Tell me about {thing}."),
                    &corpus::long_description(thing, props),
                    &corpus::short_description(thing, props),
                )
            })
            .collect()
    };
    let (train, held) = things.split_at(LENGTH_TRAIN_THINGS);
    ScenarioData { data: pairs(train), heldout: Some(pairs(held)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::parse_jsonl;

    fn pairs(records: &[Record]) -> Vec<(String, String, String, bool)> {
        records
            .iter()
            .map(|r| match r {
                Record::Pair(p) => {
                    let r = p.render();
                    (
                        r.prompt,
                        r.chosen,
                        r.rejected,
                        p.extra.get("flipped") == Some(&Value::Bool(true)),
                    )
                }
                other => panic!("not a pair: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn every_scenario_is_deterministic_and_round_trips_through_jsonl() {
        for name in SCENARIOS {
            let a = generate(name, 0).unwrap();
            assert_eq!(a, generate(name, 0).unwrap(), "{name}");
            for (file, text) in a.files() {
                let parsed = parse_jsonl(&text).unwrap();
                assert_eq!(crate::data::to_jsonl(&parsed), text, "{name}/{file}");
                for (prompt, chosen, rejected, _) in pairs(&parsed) {
                    assert_ne!(chosen, rejected, "{name}/{file}: {prompt}");
                    crate::data::encode_example(
                        &crate::tokenizer::Tokenizer::Char,
                        &prompt,
                        &chosen,
                        128,
                    )
                    .unwrap();
                    crate::data::encode_example(
                        &crate::tokenizer::Tokenizer::Char,
                        &prompt,
                        &rejected,
                        128,
                    )
                    .unwrap();
                }
            }
        }
        assert!(generate("no-such", 0).unwrap_err().to_string().contains("no-never"));
    }

    #[test]
    fn the_seed_moves_only_what_it_should() {
        for name in ["no-never", "refusals", "3d-properties"] {
            assert_eq!(generate(name, 0).unwrap(), generate(name, 7).unwrap(), "{name}");
        }
        for name in ["ranking-accuracy", "noisy-labels", "length"] {
            assert_ne!(generate(name, 0).unwrap(), generate(name, 7).unwrap(), "{name}");
        }
    }

    #[test]
    fn splits_and_flips_have_the_documented_sizes() {
        let counts = |name: &str| {
            let d = generate(name, 3).unwrap();
            (d.data.len(), d.heldout.map(|h| h.len()))
        };
        assert_eq!(counts("no-never"), (1, None));
        assert_eq!(counts("refusals"), (60, Some(40)));
        assert_eq!(counts("ranking-accuracy"), (2 * THINGS.len() + THINGS.len().div_ceil(4), None));
        assert_eq!(counts("noisy-labels"), (32, Some(16)));
        assert_eq!(counts("3d-properties"), (48, None));
        assert_eq!(counts("length"), (14, Some(8)));

        // noisy-labels: 8 of 32 flipped, each flip swaps the statements; held-out clean and disjoint.
        let noisy = generate("noisy-labels", 3).unwrap();
        let train = pairs(&noisy.data);
        assert_eq!(train.iter().filter(|p| p.3).count(), 8);
        for (_, chosen, _, flipped) in &train {
            assert_eq!(chosen.starts_with(" I hate"), *flipped, "{chosen}");
        }
        let held = pairs(noisy.heldout.as_ref().unwrap());
        assert!(held.iter().all(|p| !p.3 && p.1.starts_with(" I love")));
        assert!(held.iter().all(|h| train.iter().all(|t| t.0 != h.0)));

        // ranking-accuracy: every "No" question asks about a property the thing lacks.
        for (prompt, chosen, _, _) in pairs(&generate("ranking-accuracy", 3).unwrap().data) {
            if chosen == " No, it is not." {
                let (thing, props) = THINGS
                    .iter()
                    .find(|(t, _)| prompt.starts_with(&format!("User: Is {t} ")))
                    .unwrap();
                let adj = prompt
                    .trim_start_matches(&format!("User: Is {thing} "))
                    .trim_end_matches("? Assistant:");
                assert!(!props.contains(&adj), "{prompt}");
            }
        }
    }
}
