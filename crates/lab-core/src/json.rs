//! Strict JSON for what users write: an object that names a key twice is an error, not
//! "the last one wins". serde_json keeps the last value of a repeated key without a word,
//! so `{"params": {...}, "params": {...}}` would silently drop the first; here it is
//! refused with its line and column. Everything else is serde_json's own grammar, nesting
//! limit (128) included, so a deeply nested input is an error rather than a stack overflow.

use crate::error::{LabError, Result};
use serde::de::{self, Deserialize, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Parse one JSON document, refusing repeated object keys. Errors are
/// [`LabError::Parse`] with the 1-based line, the column in the message, and no file (the
/// caller adds it with [`LabError::in_file`]).
pub fn parse_unique(text: &str) -> Result<Value> {
    parse_unique_raw(text).map_err(|e| to_lab_error(&e))
}

/// [`parse_unique`], then the value as a `T` (serde's errors name the field path as serde
/// words them, e.g. `invalid type: string "x", expected f64`).
pub fn from_str_unique<T: DeserializeOwned>(text: &str) -> Result<T> {
    let value = parse_unique(text)?;
    serde_json::from_value(value).map_err(|e| LabError::parse(e.to_string()))
}

/// [`parse_unique`] on one line of a JSONL file: errors carry `line_no` (the line in the
/// file) and the column within the line.
pub fn parse_unique_line(line: &str, line_no: usize) -> Result<Value> {
    parse_unique_raw(line).map_err(|e| {
        LabError::parse(format!("malformed JSON at column {}: {}", e.column(), error_message(&e)))
            .at_line(line_no)
    })
}

/// [`parse_unique`] with serde_json's error, for callers that word the message themselves.
pub fn parse_unique_raw(text: &str) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let UniqueValue(value) = UniqueValue::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// serde_json's message without its " at line L column C" suffix.
pub fn error_message(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_string()
}

/// A JSON value as a message shows it: numbers, booleans and null as written, a string
/// quoted and cut to 40 characters, an array or object only by its kind and size, so an
/// error about a huge input stays one line.
pub fn brief(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{:?}", brief_str(s)),
        Value::Array(items) => format!("an array of {}", items.len()),
        Value::Object(map) => format!("an object of {} keys", map.len()),
        other => other.to_string(),
    }
}

/// A string cut to its first 40 characters (with "…" when cut).
pub fn brief_str(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn to_lab_error(err: &serde_json::Error) -> LabError {
    let msg = match err.classify() {
        serde_json::error::Category::Data => {
            format!("{} (column {})", error_message(err), err.column())
        }
        _ => format!("malformed JSON at column {}: {}", err.column(), error_message(err)),
    };
    // serde_json reports line 0 for errors found before any input was read.
    LabError::parse(msg).at_line(err.line().max(1))
}

/// A `serde_json::Value` whose objects were checked for repeated keys while being read.
struct UniqueValue(Value);

impl<'de> Deserialize<'de> for UniqueValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor).map(UniqueValue)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("number {v} is not finite")))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {key:?}: a key may appear only once in an object"
                )));
            }
            let UniqueValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_values_as_serde_json() {
        let text = r#"{"a": [1, -2, 3.5, true, null, "x\u00e9"], "b": {"c": {}}, "d": []}"#;
        assert_eq!(parse_unique(text).unwrap(), serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(parse_unique(" 7 ").unwrap(), Value::from(7));
    }

    #[test]
    fn a_repeated_key_is_named_with_line_and_column() {
        let err = parse_unique("{\n  \"params\": {},\n  \"params\": {\"beta\": 1}\n}")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "line 3: duplicate key \"params\": a key may appear only once in an object \
             (column 10)"
        );
        // nested objects too; the same key in two different objects is fine
        assert!(parse_unique(r#"{"a": {"x": 1, "x": 2}}"#).is_err());
        parse_unique(r#"{"a": {"x": 1}, "b": {"x": 2}}"#).unwrap();
    }

    #[test]
    fn a_jsonl_line_is_named_by_its_line_in_the_file() {
        let err = parse_unique_line(r#"{"a": 1, "a": 2}"#, 7).unwrap_err().to_string();
        assert_eq!(
            err,
            "line 7: malformed JSON at column 12: duplicate key \"a\": a key may appear only \
             once in an object"
        );
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let err = parse_unique("{\"a\": 1,\n \"b\": }").unwrap_err().to_string();
        assert!(err.starts_with("line 2: malformed JSON at column 7"), "{err}");
        let err = parse_unique("{} {}").unwrap_err().to_string();
        assert!(err.contains("trailing characters"), "{err}");
        let err = parse_unique("").unwrap_err().to_string();
        assert!(err.starts_with("line 1: malformed JSON"), "{err}");
        let deep = "[".repeat(100_000);
        assert!(parse_unique(&deep).unwrap_err().to_string().contains("recursion limit"));
    }

    #[test]
    fn brief_keeps_messages_short() {
        assert_eq!(brief(&serde_json::json!([1, 2, 3])), "an array of 3");
        assert_eq!(brief(&serde_json::json!({"a": 1})), "an object of 1 keys");
        assert_eq!(brief(&serde_json::json!(1.5)), "1.5");
        assert_eq!(brief(&Value::String("é".repeat(50))), format!("\"{}…\"", "é".repeat(40)));
    }

    #[test]
    fn typed_parse_refuses_repeats_too() {
        #[derive(serde::Deserialize, Debug)]
        struct Two {
            #[allow(dead_code)]
            a: f64,
        }
        assert!(from_str_unique::<Two>(r#"{"a": 1}"#).is_ok());
        assert!(from_str_unique::<Two>(r#"{"a": 1, "a": 2}"#).is_err());
    }
}
