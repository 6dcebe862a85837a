//! The shipped starter model (`assets/models/starter`) as the README describes it: a
//! byte-level BPE tokenizer of its own with the scenarios' answers as single tokens, at most
//! 4 MB, greedy answers right on the corpus's fixed-answer questions, and samples at
//! temperature 1 made of the corpus's words.

use lab_core::checkpoint;
use lab_core::rng::Rng;
use lab_core::sample::{generate, SampleConfig};
use lab_core::tokenizer::Tokenizer;
use lab_cpu::CpuEngine;
use std::collections::HashSet;
use std::path::PathBuf;

fn starter_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/models/starter")
}

/// The words of a text: split on spaces, the punctuation around them dropped.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn the_starter_has_its_own_bpe_with_single_token_answers_and_fits_in_4_mb() {
    let model = checkpoint::load_dir(&starter_dir()).unwrap();
    assert!(matches!(model.tokenizer, Tokenizer::Bpe(_)), "{}", model.tokenizer.kind());
    assert_eq!(model.config.vocab, model.tokenizer.vocab_size());
    for answer in [" Yes", " No", " Never", " Sure", " I"] {
        assert_eq!(model.tokenizer.encode(answer).unwrap().len(), 1, "{answer:?}");
    }
    let bytes = std::fs::metadata(starter_dir().join("model.safetensors")).unwrap().len();
    assert!(bytes <= 4_000_000, "{bytes} bytes");
}

#[test]
fn the_starter_answers_right_and_speaks_in_the_corpus_words() {
    let model = checkpoint::load_dir(&starter_dir()).unwrap();
    let tokenizer = &model.tokenizer;
    let mut engine = CpuEngine::new(model.config, model.params.clone()).unwrap();
    let corpus = lab_core::corpus::generate(0);

    // Greedy answers to the fixed-answer questions: 176 of 177 for the shipped model.
    let (accuracy, probes) = lab_train::probe_accuracy(&mut engine, tokenizer, &corpus).unwrap();
    assert!(probes >= 100 && accuracy >= 0.95, "{accuracy} of {probes}");

    // One sample at temperature 1 for every 10th corpus prompt.
    let vocabulary: HashSet<String> = corpus
        .iter()
        .flat_map(|e| words(&e.prompt).into_iter().chain(words(&e.completion)))
        .collect();
    let mut rng = Rng::new(0);
    let (mut known, mut total) = (0usize, 0usize);
    for example in corpus.iter().step_by(10) {
        let mut ids = vec![tokenizer.eot()];
        ids.extend(tokenizer.encode(&example.prompt).unwrap());
        let config = SampleConfig { temperature: 1.0, top_k: 0, max_new_tokens: 40 };
        let out = generate(&mut engine, &ids, tokenizer.eot(), &config, &mut rng).unwrap();
        for word in words(&tokenizer.decode(&out)) {
            known += usize::from(vocabulary.contains(&word));
            total += 1;
        }
    }
    let fraction = known as f64 / total as f64;
    eprintln!("{known} of {total} sampled words are corpus words ({fraction:.3})");
    assert!(total >= 300 && fraction >= 0.9, "{known} of {total}");
}
