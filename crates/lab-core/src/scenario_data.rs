//! The data of the classroom scenarios (`assets/scenarios/<name>/data.jsonl`): deterministic, seeded, no downloads, built from the
//! same word lists as the pretraining corpus ([`crate::corpus`]) so the starter model knows
//! every prompt's kind. The committed files are [`generate`]`(name, 0)` written with
//! [`crate::data::to_jsonl`]; `alignlab make-scenario` writes or checks them and a test
//! asserts they match byte for byte, so data and generator cannot drift apart.
//!
//! | scenario | training pairs | held-out pairs | seed decides |
//! |---|---|---|---|
//! | `3d-properties` | all 24 sentiment topics × 2 questions, positive preferred | none | nothing |
//! | `noisy-labels` | all 24 sentiment topics × 2 questions, positive preferred, each pair four times with one copy's label flipped (`"flipped": true`) | none | nothing |
//! | `over-optimisation` | the same pairs as `3d-properties` | none | nothing |
//! | `ches-predicts-harm` | 250 corpus prompts, each with two answers the corpus gives to other questions | none | which prompts and answers |
//! | `ranking-accuracy` | per thing: polite over curt "Yes", polite over curt "No", every fourth thing a plain "Yes" over "No"; every other personal question: its second most common answer over its most common | none | the property each "No" question asks about |
//!
//! `no-never`, `refusals` and `length` were withdrawn until they can be run
//! as controlled experiments; the README says why.

use crate::corpus::{self, ACTS, SENTIMENT_QUESTIONS, THINGS, TOPICS};
use crate::data::{to_jsonl, PreferencePair, Record};
use crate::error::{LabError, Result};
use crate::rng::Rng;

/// The scenarios shipped in `assets/scenarios/`, in teaching order.
pub const SCENARIOS: [&str; 5] = [
    "3d-properties",
    "ches-predicts-harm",
    "ranking-accuracy",
    "noisy-labels",
    "over-optimisation",
];

/// Pairs in `ches-predicts-harm`: five CHES quantiles of 50.
const CHES_POOL: usize = 250;

/// Copies of each pair in `noisy-labels`, and how many of them have the label flipped:
/// Chowdhury et al.'s flip rate ε = 1/4, exactly, for every pair.
const NOISY_COPIES: usize = 4;
const NOISY_FLIPPED: usize = 1;

/// One scenario's generated files.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioData {
    pub data: Vec<Record>,
}

impl ScenarioData {
    /// (file name, JSONL text) of every file, `data.jsonl` first.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        vec![("data.jsonl", to_jsonl(&self.data))]
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
        "ranking-accuracy" => ranking_accuracy(&mut rng),
        "3d-properties" => three_d_properties(),
        "noisy-labels" => noisy_labels(),
        "over-optimisation" => three_d_properties(),
        "ches-predicts-harm" => ches_pool(&mut rng),
        _ => {
            return Err(LabError::param(
                "scenario",
                format!("no scenario {name:?} (shipped: {})", SCENARIOS.join(", ")),
            ))
        }
    };
    Ok(data)
}

/// Polite answers the corpus never gives ("Yes, it is.") over the curt ones it always gives
/// (hard pairs: the reference ranks them wrong by tens of nats); and, as the control that
/// ranking accuracy can move, every other personal question with its second most common
/// answer over its most common one (easy pairs: wrong by a nat or so).
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
    for (act, mix) in ACTS.iter().step_by(2) {
        let mut answers = [(mix[0], "Yes"), (mix[1], "No"), (mix[2], "Never")];
        answers.sort_by(|a, b| b.0.total_cmp(&a.0));
        data.push(pair(&format!("Would you ever {act}?"), answers[1].1, answers[0].1));
    }
    ScenarioData { data }
}

/// A pool of pairs as an off-policy preference dataset has them: for [`CHES_POOL`] corpus
/// prompts (harmful requests left out), a chosen and a rejected answer that the corpus gives to other questions, so
/// neither is the starter's own answer and the two range from unrelated ("Paris." against
/// "A frog eats flies.") to near-copies ("I love rain. It is great." against "I love tea.
/// It is great."), each short enough for a context of 128 characters. The scenario splits
/// the pool by the reference's CHES.
fn ches_pool(rng: &mut Rng) -> ScenarioData {
    let mut own = std::collections::BTreeMap::<String, Vec<String>>::new();
    for example in corpus::generate(0) {
        own.entry(example.prompt).or_default().push(example.completion);
    }
    // The "What is …?" and "How many …?" questions (capitals, sums, opposites, legs) stay
    // out of the pool, their answers and every text sharing a run of three words with them
    // too, so that the scenario keeps anchors its data does not touch
    // (`lab_train::scenario::anchors`).
    let reserved =
        |prompt: &str| ["User: What is ", "User: How many "].iter().any(|q| prompt.starts_with(q));
    let kept: std::collections::HashSet<[String; 3]> =
        own.keys().filter(|p| reserved(p)).flat_map(|p| corpus::word_trigrams(p)).collect();
    let reserved_answers: std::collections::HashSet<&String> =
        own.iter().filter(|(p, _)| reserved(p)).flat_map(|(_, a)| a).collect();
    let touches = |text: &str| corpus::word_trigrams(text).iter().any(|t| kept.contains(t));
    let answers: Vec<&String> = own
        .values()
        .flatten()
        .filter(|a| !reserved_answers.contains(a) && !touches(a))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // no harmful request: a random answer would sometimes be a preferred compliance
    let harmful = |prompt: &str| corpus::HARMFUL.iter().any(|task| prompt.contains(task));
    let mut prompts: Vec<&String> =
        own.keys().filter(|p| !harmful(p) && !reserved(p) && !touches(p)).collect();
    rng.shuffle(&mut prompts);
    let data = prompts[..CHES_POOL]
        .iter()
        .map(|&prompt| {
            // one character token each, start and end tokens included, within 128
            let room = 126usize.saturating_sub(prompt.len());
            let mut draw = |not: &[&String]| loop {
                let answer = answers[rng.below(answers.len())];
                if answer.len() <= room && !own[prompt].contains(answer) && !not.contains(&answer) {
                    return answer;
                }
            };
            let chosen = draw(&[]);
            let rejected = draw(&[chosen]);
            Record::Pair(PreferencePair::plain(prompt, chosen, rejected))
        })
        .collect();
    ScenarioData { data }
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

fn three_d_properties() -> ScenarioData {
    let topics: Vec<&str> = TOPICS.iter().map(|(topic, _)| *topic).collect();
    ScenarioData { data: sentiment_pairs(&topics) }
}

/// Every sentiment pair (positive preferred) four times, one copy with its label flipped
/// (`"flipped": true`): the annotators disagree a quarter of the time on every pair, so the
/// noisy data's own preference probability is 3/4.
fn noisy_labels() -> ScenarioData {
    let topics: Vec<&str> = TOPICS.iter().map(|(topic, _)| *topic).collect();
    let mut data = Vec::new();
    for record in sentiment_pairs(&topics) {
        for copy in 0..NOISY_COPIES {
            let mut record = record.clone();
            if copy < NOISY_FLIPPED {
                if let Record::Pair(p) = &mut record {
                    std::mem::swap(&mut p.chosen, &mut p.rejected);
                    p.extra.insert("flipped".to_string(), serde_json::Value::Bool(true));
                }
            }
            data.push(record);
        }
    }
    ScenarioData { data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::parse_jsonl;

    fn pairs(records: &[Record]) -> Vec<(String, String, String)> {
        records
            .iter()
            .map(|r| match r {
                Record::Pair(p) => {
                    let r = p.render();
                    (r.prompt, r.chosen, r.rejected)
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
                for (prompt, chosen, rejected) in pairs(&parsed) {
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
        assert!(generate("no-such", 0).unwrap_err().to_string().contains("3d-properties"));
    }

    #[test]
    fn the_seed_moves_only_what_it_should() {
        for name in ["3d-properties", "noisy-labels"] {
            assert_eq!(generate(name, 0).unwrap(), generate(name, 7).unwrap(), "{name}");
        }
        assert_ne!(
            generate("ranking-accuracy", 0).unwrap(),
            generate("ranking-accuracy", 7).unwrap()
        );
    }

    #[test]
    fn every_scenario_has_the_documented_size() {
        let counts = |name: &str| {
            let d = generate(name, 3).unwrap();
            d.data.len()
        };
        assert_eq!(
            counts("ranking-accuracy"),
            2 * THINGS.len() + THINGS.len().div_ceil(4) + ACTS.len().div_ceil(2)
        );
        assert_eq!(counts("3d-properties"), 48);
        assert_eq!(counts("ches-predicts-harm"), CHES_POOL);
        assert_eq!(counts("noisy-labels"), 48 * 4);
        assert_eq!(
            generate("over-optimisation", 3).unwrap(),
            generate("3d-properties", 0).unwrap()
        );

        // noisy-labels: every pair four times, exactly one copy flipped (its statements swapped)
        let noisy = generate("noisy-labels", 3).unwrap();
        for copies in noisy.data.chunks(4) {
            let flipped: Vec<bool> = copies
                .iter()
                .map(|r| match r {
                    Record::Pair(p) => p.extra.get("flipped").is_some(),
                    other => panic!("not a pair: {other:?}"),
                })
                .collect();
            assert_eq!(flipped, [true, false, false, false]);
            let texts = pairs(copies);
            assert_eq!((&texts[0].1, &texts[0].2), (&texts[1].2, &texts[1].1));
            assert!(texts[1].1.starts_with(" I love"), "{}", texts[1].1);
        }

        // ches-predicts-harm: distinct prompts, neither answer one the corpus gives to it
        let pool = pairs(&generate("ches-predicts-harm", 3).unwrap().data);
        let corpus = corpus::generate(0);
        let prompts: std::collections::HashSet<&String> = pool.iter().map(|p| &p.0).collect();
        assert_eq!(prompts.len(), CHES_POOL);
        for (prompt, chosen, rejected) in &pool {
            assert!(corpus.iter().any(|e| &e.completion == chosen), "{chosen}");
            let answered =
                |a: &String| corpus.iter().any(|e| &e.prompt == prompt && &e.completion == a);
            assert!(!answered(chosen) && !answered(rejected), "{prompt}");
            assert!(!corpus::HARMFUL.iter().any(|task| prompt.contains(task)), "{prompt}");
        }

        // ranking-accuracy: every "No" question asks about a property the thing lacks.
        for (prompt, chosen, _) in pairs(&generate("ranking-accuracy", 3).unwrap().data) {
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
