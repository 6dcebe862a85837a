//! The tokenizers a model can have, as [`Tokenizer`]: alignlab's character tokenizer (the
//! functions of this module) or a byte-level BPE ([`crate::bpe::Bpe`], GPT-2's algorithm).
//! A model directory states which in its `tokenizer.json`; see
//! [`crate::checkpoint::read_tokenizer`].
//!
//! The character tokenizer: printable-ASCII characters, one token each, plus one
//! end-of-text token. Id 0 is `<|endoftext|>` (used as BOS before the prompt and as EOS after each completion,
//! as GPT-2 does); ids 1..=95 are the characters `' '` (0x20) through `'~'` (0x7E). The
//! vocabulary is therefore 96, the `vocab` of the tiny and medium configs. Anything else
//! (newline, tab, non-ASCII) is rejected with its position: a silent drop would change
//! what the student annotated.

use crate::bpe::Bpe;
use crate::error::{LabError, Result};
use std::path::Path;
use std::sync::Arc;

pub const EOT: u32 = 0;
pub const VOCAB_SIZE: usize = 96;
const FIRST_CHAR: u8 = b' ';
const LAST_CHAR: u8 = b'~';

/// Encode text into token ids, no BOS/EOS added.
pub fn encode(text: &str) -> Result<Vec<u32>> {
    text.chars()
        .enumerate()
        .map(|(pos, ch)| {
            let code = ch as u32;
            if (FIRST_CHAR as u32..=LAST_CHAR as u32).contains(&code) {
                Ok(code - FIRST_CHAR as u32 + 1)
            } else {
                Err(LabError::Tokenize {
                    msg: format!(
                        "character {ch:?} (U+{code:04X}) at position {pos} is not in the vocabulary \
                         (printable ASCII ' '..'~' only)"
                    ),
                })
            }
        })
        .collect()
}

/// Decode token ids; `<|endoftext|>` decodes to nothing.
pub fn decode(ids: &[u32]) -> String {
    ids.iter().filter_map(|&id| token_str(id)).collect()
}

/// The character of one token, `None` for `<|endoftext|>` or an id out of range.
pub fn token_str(id: u32) -> Option<char> {
    if id == EOT || id as usize >= VOCAB_SIZE {
        None
    } else {
        Some((FIRST_CHAR + (id - 1) as u8) as char)
    }
}

/// A human-readable name for any token (for heatmaps and tables).
pub fn token_label(id: u32) -> String {
    match token_str(id) {
        Some(ch) => ch.to_string(),
        None if id == EOT => EOT_LABEL.to_string(),
        None => format!("<{id}>"),
    }
}

/// The tokenizer description shipped beside a model (`tokenizer.json`).
pub fn description_json() -> serde_json::Value {
    serde_json::json!({
        "type": CHAR_TYPE,
        "vocab_size": VOCAB_SIZE,
        "eot_id": EOT,
        "eot_token": "<|endoftext|>",
        "chars": (FIRST_CHAR..=LAST_CHAR).map(|b| (b as char).to_string()).collect::<Vec<_>>(),
        "first_char_id": 1,
        "notes": "id 0 = <|endoftext|> (BOS before the prompt, EOS after each completion); ids 1..=95 = ASCII 0x20..0x7E"
    })
}

/// The tokenizer of a model: what turns text into the ids its embedding reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Tokenizer {
    /// alignlab's character tokenizer (96 ids; the functions of this module).
    Char,
    /// A byte-level BPE read from a Hugging Face `tokenizer.json` (or GPT-2's
    /// `vocab.json` + `merges.txt`).
    Bpe(Arc<Bpe>),
}

impl Tokenizer {
    /// Encode text into token ids, no BOS/EOS added. The character tokenizer refuses a
    /// character outside printable ASCII (naming its position); a BPE encodes any text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Char => encode(text),
            Tokenizer::Bpe(bpe) => Ok(bpe.encode(text)),
        }
    }

    /// Decode token ids into text; `<|endoftext|>` and ids outside the vocabulary decode to
    /// nothing, and bytes that are not UTF-8 (a character cut short, as a model may
    /// generate) to U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Char => decode(ids),
            Tokenizer::Bpe(bpe) => {
                let known: Vec<u32> = ids
                    .iter()
                    .copied()
                    .filter(|&id| id != bpe.eot_id() && bpe.piece(id).is_some())
                    .collect();
                String::from_utf8_lossy(&bpe.decode_bytes(&known).unwrap_or_default()).into_owned()
            }
        }
    }

    /// A human-readable name for one token (heatmaps, tables, `alignlab tokenize`): its
    /// text, `<|endoftext|>`, or `<id>` for an id outside the vocabulary.
    pub fn token_label(&self, id: u32) -> String {
        match self {
            Tokenizer::Char => token_label(id),
            Tokenizer::Bpe(bpe) if id == bpe.eot_id() => EOT_LABEL.to_string(),
            Tokenizer::Bpe(bpe) => match bpe.token_bytes(id) {
                Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                None => format!("<{id}>"),
            },
        }
    }

    /// One token as Hugging Face's `convert_ids_to_tokens` shows it (`"Ġworld"` for a BPE
    /// token standing for `" world"`); the character itself for the character tokenizer.
    pub fn piece(&self, id: u32) -> String {
        match self {
            Tokenizer::Char => token_label(id),
            Tokenizer::Bpe(bpe) => bpe.piece(id).map_or_else(|| format!("<{id}>"), str::to_string),
        }
    }

    /// The id of `<|endoftext|>`: the start token before each prompt and the end token
    /// after each completion.
    pub fn eot(&self) -> u32 {
        match self {
            Tokenizer::Char => EOT,
            Tokenizer::Bpe(bpe) => bpe.eot_id(),
        }
    }

    /// The number of ids; a model's `vocab_size` must equal it.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char => VOCAB_SIZE,
            Tokenizer::Bpe(bpe) => bpe.vocab_size(),
        }
    }

    /// What kind of tokenizer this is, for messages: "character" or "byte-level BPE".
    pub fn kind(&self) -> &'static str {
        match self {
            Tokenizer::Char => "character",
            Tokenizer::Bpe(_) => "byte-level BPE",
        }
    }

    /// Read a tokenizer from the text of a `tokenizer.json`: alignlab's character
    /// description or a Hugging Face byte-level BPE.
    pub fn from_tokenizer_json_str(text: &str) -> Result<Tokenizer> {
        let value = crate::json::parse_unique(text)?;
        if value.get("type").and_then(|t| t.as_str()) == Some(CHAR_TYPE) {
            return if value == description_json() {
                Ok(Tokenizer::Char)
            } else {
                Err(LabError::parse(
                    "an alignlab character tokenizer that differs from the one alignlab has",
                ))
            };
        }
        Ok(Tokenizer::Bpe(Arc::new(Bpe::from_tokenizer_json_str(text)?)))
    }

    /// The tokenizer of a `tokenizer.json` file, or of a folder holding `tokenizer.json` or
    /// GPT-2's `vocab.json` + `merges.txt`. Errors name the file.
    pub fn from_path(path: &Path) -> Result<Tokenizer> {
        let json = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        if path.is_dir() && !json.exists() {
            let (vocab, merges) = (path.join("vocab.json"), path.join("merges.txt"));
            if !vocab.exists() && !merges.exists() {
                return Err(LabError::io(
                    path.display().to_string(),
                    "has no tokenizer.json and no vocab.json + merges.txt",
                ));
            }
            return Ok(Tokenizer::Bpe(Arc::new(Bpe::from_gpt2_files(&vocab, &merges)?)));
        }
        let name = crate::files::display_name(&json);
        let text = crate::files::read_text(&json, crate::bpe::MAX_TOKENIZER_BYTES)?;
        Tokenizer::from_tokenizer_json_str(&text).map_err(|e| e.in_file(&name))
    }

    /// Write the tokenizer's files into `dir` (made if missing): `tokenizer.json`, and for
    /// a BPE also `tokenizer_config.json`, so `transformers.AutoTokenizer` opens the folder.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        match self {
            Tokenizer::Char => {
                let name = dir.display().to_string();
                std::fs::create_dir_all(dir).map_err(|e| LabError::io(&name, e))?;
                let path = dir.join("tokenizer.json");
                let text = serde_json::to_vec_pretty(&description_json())
                    .expect("JSON values always serialize");
                std::fs::write(&path, text).map_err(|e| LabError::io(path.display().to_string(), e))
            }
            Tokenizer::Bpe(bpe) => bpe.save_dir(dir),
        }
    }
}

const EOT_LABEL: &str = "<|endoftext|>";
const CHAR_TYPE: &str = "alignlab-char";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_printable_ascii() {
        let text = "Is the sky green? No~ {ok} 42!";
        let ids = encode(text).unwrap();
        assert_eq!(ids.len(), text.len());
        assert_eq!(decode(&ids), text);
        assert_eq!(encode(" ").unwrap(), vec![1]);
        assert_eq!(encode("~").unwrap(), vec![95]);
    }

    #[test]
    fn unknown_character_names_its_position() {
        let err = encode("ab\ncd").unwrap_err().to_string();
        assert!(err.contains("position 2"), "{err}");
        assert!(err.contains("U+000A"), "{err}");
        assert!(encode("café").is_err());
    }

    #[test]
    fn each_tokenizer_states_itself_in_its_own_file_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("alignlab-tokenizer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bpe = Bpe::train(["Is fire hot? Yes. Never. No."], 300, &[" Yes", " Never"]).unwrap();
        for tokenizer in [Tokenizer::Char, Tokenizer::Bpe(Arc::new(bpe))] {
            tokenizer.save_dir(&dir).unwrap();
            assert_eq!(Tokenizer::from_path(&dir).unwrap(), tokenizer);
            assert_eq!(Tokenizer::from_path(&dir.join("tokenizer.json")).unwrap(), tokenizer);
        }
        let _ = std::fs::remove_dir_all(&dir);
        // an edited character description is not silently taken for ours
        let mut edited = description_json();
        edited["vocab_size"] = serde_json::json!(97);
        let err = Tokenizer::from_tokenizer_json_str(&edited.to_string()).unwrap_err();
        assert!(err.to_string().contains("differs"), "{err}");
    }

    #[test]
    fn a_bpe_decodes_and_labels_its_tokens_as_text() {
        let bpe = Bpe::train(["Is fire hot? Yes. Never. No."], 300, &[" Yes", " Never"]).unwrap();
        let tokenizer = Tokenizer::Bpe(Arc::new(bpe));
        let ids = tokenizer.encode("Is fire hot? Yes").unwrap();
        let last = *ids.last().unwrap();
        assert_eq!(tokenizer.token_label(last), " Yes");
        assert_eq!(tokenizer.piece(last), "ĠYes");
        let eot = tokenizer.eot();
        assert_eq!(tokenizer.token_label(eot), "<|endoftext|>");
        // the end token and unknown ids decode to nothing
        let mut with_ends = vec![eot];
        with_ends.extend(&ids);
        with_ends.extend([eot, 9_999]);
        assert_eq!(tokenizer.decode(&with_ends), "Is fire hot? Yes");
        assert_eq!(tokenizer.token_label(9_999), "<9999>");
        // a character cut between tokens decodes to U+FFFD, as HF does
        let e_acute = tokenizer.encode("é").unwrap();
        assert_eq!(e_acute.len(), 2);
        assert_eq!(tokenizer.decode(&e_acute[..1]), "\u{FFFD}");
    }
}
