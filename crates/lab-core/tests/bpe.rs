//! Parity of the byte-level BPE tokenizer (`lab_core::bpe`) with Hugging Face `tokenizers`.
//!
//! `fixtures/bpe/` holds, from `scripts/bpe_golden.py` (tokenizers 0.23.3):
//! - `strings.jsonl`: 10,000+ strings, one JSON string a line: the corpus's prompts,
//!   completions and whole examples, then edge cases (contractions, digit and punctuation
//!   runs, runs of spaces, tabs and newlines, letters of many scripts, combining marks,
//!   emoji, `<|endoftext|>` inside text) and random mixtures of them;
//! - `gpt2/ids.txt` and `trained/ids.txt`: HF's ids for each string (one line each, ids
//!   separated by spaces) with GPT-2's `vocab.json` + `merges.txt` and with
//!   `trained/tokenizer.json`;
//! - `trained/tokenizer.json`: our trainer's tokenizer of `corpus.jsonl` (the corpus of
//!   seed 0 when the fixtures were made; a fixture of its own since), and `trained/hf_saved.json`: the same file loaded and saved again by HF.
//!
//! Regenerate with `python scripts/bpe_golden.py` (it runs `write_golden_inputs` below).

use lab_core::bpe::{Bpe, EOT_TOKEN};
use lab_core::rng::Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The trained fixture's vocabulary size and required single tokens.
const TRAINED_VOCAB: usize = 512;
const REQUIRED: &[&str] =
    &[" Yes", " No", " Never", " Sure", " I", " Happy", " Sad", "Yes", "No", " Yes.", " No."];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bpe")
}

fn gpt2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/tokenizers/gpt2")
}

fn gpt2() -> Bpe {
    let dir = gpt2_dir();
    Bpe::from_gpt2_files(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap()
}

fn trained() -> Bpe {
    Bpe::from_tokenizer_json(&fixtures().join("trained/tokenizer.json")).unwrap()
}

fn golden_strings() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("strings.jsonl")).unwrap();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn golden_ids(which: &str) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(fixtures().join(which).join("ids.txt")).unwrap();
    text.split('\n')
        .map(|line| line.split_ascii_whitespace().map(|id| id.parse().unwrap()).collect())
        .collect()
}

/// The corpus texts the fixture was trained on: each example's prompt and completion.
fn corpus_texts() -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("corpus.jsonl")).unwrap();
    text.lines()
        .flat_map(|line| {
            let example: serde_json::Value = serde_json::from_str(line).unwrap();
            ["prompt", "completion"].map(|key| example[key].as_str().unwrap().to_string())
        })
        .collect()
}

fn train_fixture() -> Bpe {
    let texts = corpus_texts();
    Bpe::train(texts.iter().map(String::as_str), TRAINED_VOCAB, REQUIRED).unwrap()
}

/// Every golden string encodes to HF's ids; the first mismatches are listed.
fn assert_matches_hf(bpe: &Bpe, which: &str) {
    let strings = golden_strings();
    let want = golden_ids(which);
    assert!(strings.len() >= 10_000, "{} strings", strings.len());
    assert_eq!(want.len(), strings.len(), "{which}/ids.txt: one line per string");
    let mismatches: Vec<String> = strings
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(_, (text, ids))| bpe.encode(text) != **ids)
        .map(|(i, (text, ids))| format!("#{i} {text:?}: ours {:?}, HF {ids:?}", bpe.encode(text)))
        .collect();
    assert!(
        mismatches.is_empty(),
        "{which}: {} of {} strings differ from HF:\n{}",
        mismatches.len(),
        strings.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
}

#[test]
fn gpt2_encodes_every_golden_string_as_hf_does() {
    assert_matches_hf(&gpt2(), "gpt2");
}

#[test]
fn trained_encodes_every_golden_string_as_hf_does() {
    assert_matches_hf(&trained(), "trained");
}

#[test]
fn gpt2_ids_of_known_texts() {
    let bpe = gpt2();
    assert_eq!(bpe.vocab_size(), 50_257);
    assert_eq!(bpe.merges().len(), 50_000);
    assert_eq!(bpe.eot_id(), 50_256);
    assert_eq!(bpe.encode("Hello world"), [15496, 995]);
    assert_eq!(bpe.encode(" Yes No Never"), [3363, 1400, 7236]);
    assert_eq!(bpe.encode("<|endoftext|>hi<|endoftext|>"), [50256, 5303, 50256]);
    assert_eq!(bpe.piece(995), Some("Ġworld"));
    assert_eq!(bpe.token_id("Ġworld"), Some(995));
    assert_eq!(bpe.token_bytes(198), Some(b"\n".to_vec()));
}

#[test]
fn decode_gives_back_every_golden_string() {
    for bpe in [gpt2(), trained()] {
        for text in golden_strings() {
            let ids = bpe.encode(&text);
            assert_eq!(bpe.decode(&ids).unwrap(), text, "{ids:?}");
        }
    }
}

#[test]
fn decode_names_an_unknown_id_and_replaces_cut_characters() {
    let bpe = gpt2();
    let err = bpe.decode(&[15496, 60_000]).unwrap_err().to_string();
    assert!(err.contains("60000") && err.contains("position 1"), "{err}");
    // "é" is two bytes, each its own byte token: one alone is not UTF-8.
    let bytes = "é".as_bytes();
    let first = bpe.token_id(&lab_core::bpe::byte_symbol(bytes[0]).to_string()).unwrap();
    assert_eq!(bpe.decode(&[first]).unwrap(), "\u{FFFD}");
    assert_eq!(bpe.decode_bytes(&[first]).unwrap(), [bytes[0]]);
}

#[test]
fn gpt2_encodes_ten_thousand_strings_in_well_under_a_second() {
    let bpe = gpt2();
    let strings = golden_strings();
    let start = Instant::now();
    let tokens: usize = strings.iter().map(|s| bpe.encode(s).len()).sum();
    let seconds = start.elapsed().as_secs_f64();
    eprintln!("GPT-2: {} strings, {tokens} tokens in {seconds:.3} s", strings.len());
    assert!(seconds < 0.5, "{seconds:.3} s");
}

#[test]
fn training_on_the_corpus_reproduces_the_committed_tokenizer_byte_for_byte() {
    let committed = std::fs::read_to_string(fixtures().join("trained/tokenizer.json")).unwrap();
    let bpe = train_fixture();
    assert_eq!(bpe.to_tokenizer_json(), committed);
    assert_eq!(bpe, trained());
    // The order of the texts does not matter.
    let mut texts = corpus_texts();
    texts.reverse();
    let reversed = Bpe::train(texts.iter().map(String::as_str), TRAINED_VOCAB, REQUIRED).unwrap();
    assert_eq!(reversed.to_tokenizer_json(), committed);
    assert_eq!(bpe.vocab_size(), TRAINED_VOCAB);
    assert_eq!(bpe.eot_id(), 0);
}

#[test]
fn hf_saved_tokenizer_json_loads_as_the_same_tokenizer() {
    let hf = Bpe::from_tokenizer_json(&fixtures().join("trained/hf_saved.json")).unwrap();
    assert_eq!(hf, trained());
}

#[test]
fn gpt2_round_trips_through_tokenizer_json() {
    let bpe = gpt2();
    let json = bpe.to_tokenizer_json();
    assert_eq!(Bpe::from_tokenizer_json_str(&json).unwrap(), bpe);
    // Merges written as [left, right] pairs (HF's newer form) read the same.
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let merges = value["model"]["merges"].as_array_mut().unwrap();
    for merge in merges.iter_mut() {
        let (left, right) = merge.as_str().unwrap().split_once(' ').unwrap();
        *merge = serde_json::json!([left, right]);
    }
    assert_eq!(Bpe::from_tokenizer_json_str(&value.to_string()).unwrap(), bpe);
}

#[test]
fn save_dir_writes_both_files() {
    let dir = std::env::temp_dir().join(format!("alignlab-bpe-save-{}", std::process::id()));
    let bpe = trained();
    bpe.save_dir(&dir).unwrap();
    assert_eq!(Bpe::from_tokenizer_json(&dir.join("tokenizer.json")).unwrap(), bpe);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["eos_token"], EOT_TOKEN);
    assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn required_strings_are_single_tokens() {
    let bpe = trained();
    for text in REQUIRED {
        let ids = bpe.encode(text);
        assert_eq!(ids.len(), 1, "{text:?}: {ids:?}");
        assert_eq!(bpe.decode(&ids).unwrap(), *text);
    }
    // " Yes." is " Yes" + "." to the pre-tokenizer, so it is an added (not special) token.
    let yes_dot = bpe.added_tokens().iter().find(|t| t.content == " Yes.").unwrap();
    assert!(!yes_dot.special);
    assert_eq!(
        bpe.encode("User: Yes. Yes"),
        [bpe.token_id("User").unwrap()]
            .into_iter()
            .chain(bpe.encode(":"))
            .chain([yes_dot.id, bpe.token_id("ĠYes").unwrap()])
            .collect::<Vec<_>>()
    );

    // In a small vocabulary the learnt merges give way to the required ones.
    let texts = corpus_texts();
    let required = [" Never", " Assistant", " photosynthesis", " Yes."];
    let small = Bpe::train(texts.iter().map(String::as_str), 300, &required).unwrap();
    assert!((290..=300).contains(&small.vocab_size()), "{}", small.vocab_size());
    for text in required {
        assert_eq!(small.encode(text).len(), 1, "{text:?}");
    }
    // With no learnt merge at all they need 257 + 5 + 9 + 14 merges + 1 added token = 286
    // (fewer when learnt merges serve them too, but never as few as 265).
    let err = Bpe::train(texts.iter().map(String::as_str), 265, &required).unwrap_err();
    assert!(err.to_string().contains("265 is too small"), "{err}");
}

#[test]
fn training_stops_when_every_piece_is_one_token() {
    let bpe = Bpe::train(["hello hello world"], 5000, &[]).unwrap();
    // "hello", " hello", " world": 4 + 5 + 5 merges at most, fewer where tokens are shared.
    assert!(bpe.vocab_size() < 257 + 14, "{}", bpe.vocab_size());
    for word in ["hello", " hello", " world"] {
        assert_eq!(bpe.encode(word).len(), 1, "{word:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Errors name the file and the entry.

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alignlab-bpe-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The trained fixture's tokenizer.json, edited by `edit`, loaded from a file.
fn load_edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut value: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("trained/tokenizer.json")).unwrap(),
    )
    .unwrap();
    edit(&mut value);
    let dir = scratch("edited");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, value.to_string()).unwrap();
    Bpe::from_tokenizer_json(&path).unwrap_err().to_string()
}

#[test]
fn tokenizer_json_errors_name_the_file_and_entry() {
    let err = load_edited(|v| v["model"]["merges"][3] = "Ġ zzz".into());
    assert!(err.contains("tokenizer.json") && err.contains("model.merges[3]"), "{err}");
    assert!(err.contains("\"zzz\" is not in the vocabulary"), "{err}");

    let err = load_edited(|v| v["model"]["merges"][5] = v["model"]["merges"][2].clone());
    assert!(err.contains("model.merges[5]") && err.contains("already merge 2"), "{err}");

    let err = load_edited(|v| v["model"]["merges"][0] = serde_json::json!(7));
    assert!(err.contains("model.merges[0]"), "{err}");

    let err = load_edited(|v| {
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        let id = vocab.remove("Ġ").unwrap();
        vocab.insert("<space>".into(), id);
    });
    assert!(err.contains("model.vocab") && err.contains("byte 0x20"), "{err}");

    let err = load_edited(|v| v["model"]["vocab"]["Ġ"] = 5000.into());
    assert!(err.contains("model.vocab") && err.contains("5000"), "{err}");

    let err = load_edited(|v| v["model"]["vocab"]["Ġ"] = 1.into());
    assert!(err.contains("model.vocab") && err.contains("id 1 is given to both"), "{err}");

    let err = load_edited(|v| v["added_tokens"][0]["content"] = "<|end|>".into());
    assert!(err.contains("added_tokens[0]") && err.contains("<|end|>"), "{err}");

    let err = load_edited(|v| v["pre_tokenizer"]["add_prefix_space"] = true.into());
    assert!(err.contains("pre_tokenizer") && err.contains("add_prefix_space"), "{err}");

    let err = load_edited(|v| v["model"]["type"] = "WordPiece".into());
    assert!(err.contains("field \"model\"") && err.contains("WordPiece"), "{err}");

    let dir = scratch("not-json");
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": ").unwrap();
    let err = Bpe::from_tokenizer_json(&dir.join("tokenizer.json")).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("not valid JSON"), "{err}");
}

#[test]
fn gpt2_file_errors_name_the_file_and_line() {
    let vocab = std::fs::read_to_string(gpt2_dir().join("vocab.json")).unwrap();
    let merges = std::fs::read_to_string(gpt2_dir().join("merges.txt")).unwrap();
    let dir = scratch("gpt2");
    let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
    std::fs::write(&vocab_path, &vocab).unwrap();

    let mut lines: Vec<&str> = merges.lines().collect();
    lines[3] = "Ġt he extra";
    std::fs::write(&merges_path, lines.join("\n")).unwrap();
    let err = Bpe::from_gpt2_files(&vocab_path, &merges_path).unwrap_err().to_string();
    assert!(err.contains("merges.txt, line 4") && err.contains("two tokens"), "{err}");

    lines[3] = "Ġthe Ġthe";
    std::fs::write(&merges_path, lines.join("\n")).unwrap();
    let err = Bpe::from_gpt2_files(&vocab_path, &merges_path).unwrap_err().to_string();
    assert!(err.contains("merges.txt, line 4") && err.contains("makes \"ĠtheĠthe\""), "{err}");

    let err = Bpe::from_gpt2_strs(&vocab.replace("\"<|endoftext|>\"", "\"<|end|>\""), &merges)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vocab.json") && err.contains("<|endoftext|>"), "{err}");

    let err = Bpe::from_gpt2_files(&dir.join("missing.json"), &merges_path).unwrap_err();
    assert!(err.to_string().contains("missing.json"), "{err}");
}

// ---------------------------------------------------------------------------------------
// No input makes it panic.

#[test]
fn random_text_round_trips_and_random_ids_never_panic() {
    let bpe = trained();
    let mut rng = Rng::new(11);
    for _ in 0..3000 {
        let bytes: Vec<u8> = (0..rng.below(40)).map(|_| rng.below(256) as u8).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(bpe.decode(&bpe.encode(&text)).unwrap(), text);
        let ids: Vec<u32> = (0..rng.below(10)).map(|_| rng.below(1100) as u32).collect();
        let decoded = bpe.decode(&ids);
        assert_eq!(decoded.is_ok(), ids.iter().all(|&id| (id as usize) < bpe.vocab_size()));
    }
    // One long word: the heap merge keeps this quick (a quadratic merge would not).
    let long = "ab".repeat(50_000);
    let start = Instant::now();
    assert_eq!(bpe.decode(&bpe.encode(&long)).unwrap(), long);
    assert!(start.elapsed().as_secs_f64() < 1.0, "{:?}", start.elapsed());
}

#[test]
fn mutated_tokenizer_json_is_an_error_or_a_tokenizer_never_a_panic() {
    let text = std::fs::read_to_string(fixtures().join("trained/tokenizer.json")).unwrap();
    let chars: Vec<char> = text.chars().collect();
    let mut rng = Rng::new(5);
    let replacements = ['"', ',', '0', '9', ' ', '{', ']', 'Ġ', '-', 'e'];
    for _ in 0..300 {
        let mut mutated = chars.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(mutated.len());
            match rng.below(3) {
                0 => mutated[at] = replacements[rng.below(replacements.len())],
                1 => {
                    mutated.remove(at);
                }
                _ => mutated.truncate(at),
            }
        }
        let mutated: String = mutated.into_iter().collect();
        if let Ok(bpe) = Bpe::from_tokenizer_json_str(&mutated) {
            let ids = bpe.encode("User: Is fire hot? Assistant: Yes");
            assert!(bpe.decode(&ids).is_ok());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The inputs of scripts/bpe_golden.py.

/// Writes `fixtures/bpe/corpus.jsonl` (the corpus of seed 0), the trained tokenizer
/// (`fixtures/bpe/trained/`), and GPT-2's tokenizer saved by us into `$BPE_GPT2_DIR` (for
/// the script's transformers check; not committed).
#[test]
#[ignore]
fn write_golden_inputs() {
    let lines: Vec<String> = lab_core::corpus::generate(0)
        .iter()
        .map(|ex| serde_json::json!({"prompt": ex.prompt, "completion": ex.completion}).to_string())
        .collect();
    std::fs::write(fixtures().join("corpus.jsonl"), lines.join("\n") + "\n").unwrap();
    train_fixture().save_dir(&fixtures().join("trained")).unwrap();
    if let Ok(dir) = std::env::var("BPE_GPT2_DIR") {
        gpt2().save_dir(Path::new(&dir)).unwrap();
    }
}
