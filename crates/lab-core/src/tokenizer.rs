//! The tokenizer: printable-ASCII characters, one token each, plus one end-of-text token.
//!
//! Id 0 is `<|endoftext|>` (used as BOS before the prompt and as EOS after each completion,
//! as GPT-2 does); ids 1..=95 are the characters `' '` (0x20) through `'~'` (0x7E). The
//! vocabulary is therefore 96, the `vocab` of the tiny and medium configs. Anything else
//! (newline, tab, non-ASCII) is rejected with its position: a silent drop would change
//! what the student annotated.

use crate::error::{LabError, Result};

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
        None if id == EOT => "<|endoftext|>".to_string(),
        None => format!("<{id}>"),
    }
}

/// The tokenizer description shipped beside a model (`tokenizer.json`).
pub fn description_json() -> serde_json::Value {
    serde_json::json!({
        "type": "alignlab-char",
        "vocab_size": VOCAB_SIZE,
        "eot_id": EOT,
        "eot_token": "<|endoftext|>",
        "chars": (FIRST_CHAR..=LAST_CHAR).map(|b| (b as char).to_string()).collect::<Vec<_>>(),
        "first_char_id": 1,
        "notes": "id 0 = <|endoftext|> (BOS before the prompt, EOS after each completion); ids 1..=95 = ASCII 0x20..0x7E"
    })
}

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
}
