//! Preference data: the TRL dataset formats in and out, rendered to the strings the model
//! sees, and tokenized into the rows the engines score.
//!
//! # Formats (JSONL: one JSON object per line, blank lines skipped)
//!
//! | record | fields | kind |
//! |---|---|---|
//! | explicit prompt | `{"prompt","chosen","rejected"}` | [`Record::Pair`] |
//! | implicit prompt | `{"chosen","rejected"}` (prompt = shared prefix, see below) | [`Record::Pair`] |
//! | joint preference (DOVE, Bansal et al. 2024) | `{"prompt","chosen","rejected_prompt","rejected"}` | [`Record::Pair`] |
//! | unpaired (KTO) | `{"prompt","completion","label"}`, `label` a bool | [`Record::Unpaired`] |
//! | ranked list | `{"prompt","responses":[best, ..., worst]}`, 2..=8 responses | [`Record::Ranked`] |
//!
//! Every text field is either a string (TRL "standard") or a list of
//! `{"role","content"}` messages with role `system`, `user` or `assistant` (TRL
//! "conversational"); one record uses one form throughout. Pairs and ranked lists may carry
//! `alpha` (fraction of annotators preferring the chosen/first response, in [0.5, 1]) and
//! `rationale` (a string). Any other field is kept in `extra` and written back by
//! [`to_jsonl`], so nothing a user annotated is lost: `parse_jsonl(&to_jsonl(&r)) == r`,
//! and `to_jsonl` output is byte-stable under a second round trip. Known keys are written
//! first in the order above, extras after them in `serde_json::Map` order. A JSON `null` in
//! an optional field (`prompt` of a pair, `rejected_prompt`, `alpha`, `rationale`) counts as
//! absent.
//!
//! # Implicit prompt
//!
//! TRL's `extract_prompt` takes the longest common prefix of `chosen` and `rejected` and,
//! when the character just before the divergence is a space, hands that space to the
//! completions. We cut at a word boundary instead: the prompt is the common prefix up to
//! (not including) its LAST space, and that space starts both completions. When the texts
//! diverge right after a space (the usual `"... A: Yes"` / `"... A: No"`) this is exactly
//! TRL's split; when they diverge inside a word (`"Yes"` / `"Yeah"`) we keep the whole word
//! in the completion, where TRL would put `"Ye"` into the prompt. A common prefix without a
//! space gives an empty prompt. Both completions are therefore never empty. For message
//! lists the prompt is the longest common run of leading messages, capped so each side keeps
//! at least one message.
//!
//! # Chat template (message lists)
//!
//! Each message renders as `"<Role>: <content>"` with roles `System`, `User`, `Assistant`,
//! messages joined by one space. The prompt is the rendered prompt messages followed by the
//! generation prefix `" Assistant:"` (just `"Assistant:"` for an empty prompt). The
//! completion is `" " + content` of its first (assistant) message, then `" <Role>: <content>"`
//! for any further message. So `[user "Is it?"]` → `[assistant "No."]` renders as prompt
//! `"User: Is it? Assistant:"` and completion `" No."`. The generation prefix is used only
//! when every completion of the record starts with an assistant message; otherwise no prefix
//! is added and every completion message carries its own `" <Role>: "` label. The template
//! adds no newline (the character tokenizer has none); newlines inside a user's text are not altered
//! here and are reported by the tokenizer with their position.
//!
//! # Token rows
//!
//! [`encode_example`] builds `[EOT] + prompt + completion + [EOT]` with the model's
//! tokenizer, prompt and completion encoded apart (as TRL does); the first scored index is
//! `1 + prompt tokens`, and the completion's scored tokens include the trailing EOT, so
//! `|y| = completion tokens + 1`.

use crate::error::{LabError, Result};
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// Fewest responses of a ranked list.
pub const RANKED_MIN: usize = 2;
/// Most responses of a ranked list.
pub const RANKED_MAX: usize = 8;
/// The roles a message may have.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];
/// The annotator agreement α taken for a pair that does not state one: the value Chen et
/// al. 2024's code uses when rater fractions are missing. Reports say when it was assumed.
pub const ASSUMED_ALPHA: f64 = 0.75;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A text field in the user's form: a plain string or a list of messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Text {
    Plain(String),
    Messages(Vec<Message>),
}

impl Text {
    pub fn is_messages(&self) -> bool {
        matches!(self, Text::Messages(_))
    }

    fn to_value(&self) -> Value {
        match self {
            Text::Plain(s) => Value::String(s.clone()),
            Text::Messages(msgs) => Value::Array(
                msgs.iter()
                    .map(|m| {
                        let mut obj = Map::new();
                        obj.insert("role".into(), Value::String(m.role.clone()));
                        obj.insert("content".into(), Value::String(m.content.clone()));
                        Value::Object(obj)
                    })
                    .collect(),
            ),
        }
    }

    fn form_name(&self) -> &'static str {
        match self {
            Text::Plain(_) => "a string",
            Text::Messages(_) => "a message list",
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::Plain(s.to_string())
    }
}

/// A chosen/rejected pair (plain, implicit-prompt, conversational or joint).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    /// `None`: implicit prompt, extracted from `chosen` and `rejected` when rendering.
    pub prompt: Option<Text>,
    pub chosen: Text,
    pub rejected: Text,
    /// Joint preference (DOVE): the prompt the rejected completion answers, when it differs.
    pub rejected_prompt: Option<Text>,
    /// Fraction of annotators preferring `chosen`, in [0.5, 1].
    pub alpha: Option<f64>,
    pub rationale: Option<String>,
    /// Fields we do not interpret, kept for the round trip.
    pub extra: Map<String, Value>,
}

/// One completion with a thumbs-up/down label (TRL unpaired preference, KTO).
#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedExample {
    pub prompt: Text,
    pub completion: Text,
    /// `true`: desirable.
    pub label: bool,
    pub extra: Map<String, Value>,
}

/// A ranked list of responses, best first (Plackett–Luce).
#[derive(Debug, Clone, PartialEq)]
pub struct RankedExample {
    pub prompt: Text,
    /// 2..=8 responses, best first.
    pub responses: Vec<Text>,
    pub alpha: Option<f64>,
    pub rationale: Option<String>,
    pub extra: Map<String, Value>,
}

/// One line of a preference file.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Pair(PreferencePair),
    Unpaired(UnpairedExample),
    Ranked(RankedExample),
}

/// The strings the model sees for a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Equal to `prompt` unless the pair is a joint (DOVE) pair.
    pub rejected_prompt: String,
}

// ---------------------------------------------------------------------------------------
// Rendering

fn role_label(role: &str) -> String {
    match role {
        "system" => "System".to_string(),
        "user" => "User".to_string(),
        "assistant" => "Assistant".to_string(),
        // Only reachable for records built in code; parse rejects unknown roles.
        other => {
            let mut chars = other.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        }
    }
}

fn render_messages(msgs: &[Message]) -> String {
    msgs.iter()
        .map(|m| format!("{}: {}", role_label(&m.role), m.content))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the prompt ends with the generation prefix `Assistant:`: only when every
/// completion is a message list starting with an assistant message.
fn uses_generation_prefix(prompt: &Text, completions: &[&Text]) -> bool {
    prompt.is_messages()
        && completions.iter().all(|c| match c {
            Text::Messages(msgs) => msgs.first().is_some_and(|m| m.role == "assistant"),
            Text::Plain(_) => false,
        })
}

fn render_prompt(prompt: &Text, generation_prefix: bool) -> String {
    match prompt {
        Text::Plain(s) => s.clone(),
        Text::Messages(msgs) => {
            let mut out = render_messages(msgs);
            if generation_prefix {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str("Assistant:");
            }
            out
        }
    }
}

fn render_completion(completion: &Text, generation_prefix: bool) -> String {
    match completion {
        Text::Plain(s) => s.clone(),
        Text::Messages(msgs) => {
            let mut out = String::new();
            for (i, m) in msgs.iter().enumerate() {
                out.push(' ');
                if !(i == 0 && generation_prefix) {
                    out.push_str(&role_label(&m.role));
                    out.push_str(": ");
                }
                out.push_str(&m.content);
            }
            out
        }
    }
}

/// Split an implicit-prompt pair of strings into (prompt, chosen, rejected): the common
/// prefix cut before its last space (see the module doc for how this differs from TRL).
pub fn split_implicit_prompt(chosen: &str, rejected: &str) -> (String, String, String) {
    let common = chosen
        .char_indices()
        .zip(rejected.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| chosen.len().min(rejected.len()));
    let cut = chosen[..common].rfind(' ').unwrap_or(0);
    (chosen[..cut].to_string(), chosen[cut..].to_string(), rejected[cut..].to_string())
}

/// Split implicit-prompt message lists: the common leading messages, leaving each side at
/// least one message.
fn split_implicit_messages(
    chosen: &[Message],
    rejected: &[Message],
) -> (Vec<Message>, Vec<Message>, Vec<Message>) {
    let cap = chosen.len().min(rejected.len()).saturating_sub(1);
    let common = chosen.iter().zip(rejected).take(cap).take_while(|(a, b)| a == b).count();
    (chosen[..common].to_vec(), chosen[common..].to_vec(), rejected[common..].to_vec())
}

impl PreferencePair {
    /// A plain-string pair with an explicit prompt and nothing else.
    pub fn plain(prompt: &str, chosen: &str, rejected: &str) -> PreferencePair {
        PreferencePair {
            prompt: Some(prompt.into()),
            chosen: chosen.into(),
            rejected: rejected.into(),
            rejected_prompt: None,
            alpha: None,
            rationale: None,
            extra: Map::new(),
        }
    }

    /// The annotator agreement α, [`ASSUMED_ALPHA`] when not given.
    pub fn alpha_or_default(&self) -> f64 {
        self.alpha.unwrap_or(ASSUMED_ALPHA)
    }

    /// The prompt after implicit-prompt extraction, and the two completions.
    fn explicit_parts(&self) -> (Text, Text, Text) {
        match (&self.prompt, &self.chosen, &self.rejected) {
            (Some(p), c, r) => (p.clone(), c.clone(), r.clone()),
            (None, Text::Plain(c), Text::Plain(r)) => {
                let (p, c, r) = split_implicit_prompt(c, r);
                (Text::Plain(p), Text::Plain(c), Text::Plain(r))
            }
            (None, Text::Messages(c), Text::Messages(r)) => {
                let (p, c, r) = split_implicit_messages(c, r);
                (Text::Messages(p), Text::Messages(c), Text::Messages(r))
            }
            // Mixed forms (only constructible in code): no shared prefix to extract.
            (None, c, r) => (Text::Plain(String::new()), c.clone(), r.clone()),
        }
    }

    /// The strings the model sees (template in the module doc).
    pub fn render(&self) -> RenderedPair {
        let (prompt, chosen, rejected) = self.explicit_parts();
        let prefix = uses_generation_prefix(&prompt, &[&chosen, &rejected]);
        let prompt_str = render_prompt(&prompt, prefix);
        let (rejected_prompt, rejected_prefix) = match &self.rejected_prompt {
            Some(rp) => {
                let rp_prefix = uses_generation_prefix(rp, &[&rejected]);
                (render_prompt(rp, rp_prefix), rp_prefix)
            }
            None => (prompt_str.clone(), prefix),
        };
        RenderedPair {
            chosen: render_completion(&chosen, prefix),
            rejected: render_completion(&rejected, rejected_prefix),
            prompt: prompt_str,
            rejected_prompt,
        }
    }
}

impl UnpairedExample {
    /// (prompt, completion) as the model sees them.
    pub fn render(&self) -> (String, String) {
        let prefix = uses_generation_prefix(&self.prompt, &[&self.completion]);
        (render_prompt(&self.prompt, prefix), render_completion(&self.completion, prefix))
    }
}

impl RankedExample {
    /// (prompt, responses best first) as the model sees them.
    pub fn render(&self) -> (String, Vec<String>) {
        let refs: Vec<&Text> = self.responses.iter().collect();
        let prefix = uses_generation_prefix(&self.prompt, &refs);
        (
            render_prompt(&self.prompt, prefix),
            self.responses.iter().map(|r| render_completion(r, prefix)).collect(),
        )
    }
}

impl RenderedPair {
    /// Token rows for both sides: ((chosen tokens, first scored), (rejected tokens, first
    /// scored)), with errors naming "prompt", "chosen", "rejected_prompt" or "rejected".
    pub fn encode(&self, tokenizer: &Tokenizer, ctx: usize) -> Result<(ScoredRow, ScoredRow)> {
        let chosen =
            encode_labelled(tokenizer, &self.prompt, "prompt", &self.chosen, "chosen", ctx)?;
        let rejected_prompt_field =
            if self.rejected_prompt == self.prompt { "prompt" } else { "rejected_prompt" };
        let rejected = encode_labelled(
            tokenizer,
            &self.rejected_prompt,
            rejected_prompt_field,
            &self.rejected,
            "rejected",
            ctx,
        )?;
        Ok((chosen, rejected))
    }
}

// ---------------------------------------------------------------------------------------
// Tokenizing

/// One engine row: (tokens, first scored index), as [`crate::engine::TokenBatch::from_rows`] takes.
pub type ScoredRow = (Vec<u32>, usize);

/// `[EOT] + prompt + completion + [EOT]` and the first scored index `1 + prompt tokens`.
/// EOT is the tokenizer's `<|endoftext|>`. The scored tokens are the completion's tokens
/// plus the trailing EOT, so `|y| = completion tokens + 1`. Errors: a prompt character
/// outside the vocabulary (field "prompt"), a completion character outside it or an empty
/// completion (no field: the caller adds "chosen"/"rejected"/... with `in_field` and the
/// line with `at_line`), and a row longer than `ctx`.
pub fn encode_example(
    tokenizer: &Tokenizer,
    prompt: &str,
    completion: &str,
    ctx: usize,
) -> Result<(Vec<u32>, usize)> {
    let prompt_ids = tokenizer.encode(prompt).map_err(|e| e.in_field("prompt"))?;
    if completion.is_empty() {
        return Err(LabError::Tokenize { msg: "empty completion: nothing to score".to_string() });
    }
    let completion_ids = tokenizer.encode(completion)?;
    if 1 + prompt_ids.len() >= ctx {
        return Err(LabError::Tokenize {
            msg: format!(
                "the prompt ({} tokens after the start token) leaves no room for a completion in the model's context of {ctx}",
                prompt_ids.len()
            ),
        }
        .in_field("prompt"));
    }
    let total = 1 + prompt_ids.len() + completion_ids.len() + 1;
    if total > ctx {
        return Err(LabError::Tokenize {
            msg: format!(
                "1 start token + {} prompt + {} completion + 1 end token = {total} tokens exceeds the model's context of {ctx}",
                prompt_ids.len(),
                completion_ids.len()
            ),
        });
    }
    let eot = tokenizer.eot();
    let mut tokens = Vec::with_capacity(total);
    tokens.push(eot);
    tokens.extend_from_slice(&prompt_ids);
    tokens.extend_from_slice(&completion_ids);
    tokens.push(eot);
    Ok((tokens, 1 + prompt_ids.len()))
}

fn encode_labelled(
    tokenizer: &Tokenizer,
    prompt: &str,
    prompt_field: &str,
    completion: &str,
    completion_field: &str,
    ctx: usize,
) -> Result<(Vec<u32>, usize)> {
    encode_example(tokenizer, prompt, completion, ctx).map_err(|e| match e {
        LabError::Parse { file, line, field: Some(f), msg } if f == "prompt" => {
            LabError::Parse { file, line, field: Some(prompt_field.to_string()), msg }
        }
        other => other.in_field(completion_field),
    })
}

// ---------------------------------------------------------------------------------------
// Parsing

fn field_err(field: &str, msg: impl Into<String>) -> LabError {
    LabError::parse(msg).in_field(field)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn parse_text(value: Value, field: &str) -> Result<Text> {
    match value {
        Value::String(s) => Ok(Text::Plain(s)),
        Value::Array(items) => {
            let mut msgs = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let here = format!("{field}[{i}]");
                let Value::Object(mut obj) = item else {
                    return Err(field_err(
                        &here,
                        format!(
                            "expected a {{\"role\", \"content\"}} message, found {}",
                            json_type(&item)
                        ),
                    ));
                };
                let role = match obj.remove("role") {
                    Some(Value::String(r)) => r,
                    Some(other) => {
                        return Err(field_err(
                            &format!("{here}.role"),
                            format!("expected a string, found {}", json_type(&other)),
                        ))
                    }
                    None => {
                        return Err(field_err(&format!("{here}.role"), "missing field \"role\""))
                    }
                };
                if !ROLES.contains(&role.as_str()) {
                    return Err(field_err(&format!("{here}.role"), format!("unknown role {role:?} (expected \"system\", \"user\" or \"assistant\")")));
                }
                let content = match obj.remove("content") {
                    Some(Value::String(c)) => c,
                    Some(other) => {
                        return Err(field_err(
                            &format!("{here}.content"),
                            format!("expected a string, found {}", json_type(&other)),
                        ))
                    }
                    None => {
                        return Err(field_err(
                            &format!("{here}.content"),
                            "missing field \"content\"",
                        ))
                    }
                };
                if let Some(key) = obj.keys().next() {
                    return Err(field_err(&here, format!("unexpected key {key:?} in a message (only \"role\" and \"content\" are kept)")));
                }
                msgs.push(Message { role, content });
            }
            Ok(Text::Messages(msgs))
        }
        other => Err(field_err(
            field,
            format!(
                "expected a string or a list of {{\"role\", \"content\"}} messages, found {}",
                json_type(&other)
            ),
        )),
    }
}

fn non_empty_completion(text: Text, field: &str) -> Result<Text> {
    let empty = match &text {
        Text::Plain(s) => s.is_empty(),
        Text::Messages(m) => m.is_empty(),
    };
    if empty {
        Err(field_err(field, "empty completion"))
    } else {
        Ok(text)
    }
}

/// Remove a key; JSON null counts as absent.
fn take(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    obj.remove(key).filter(|v| !v.is_null())
}

fn take_required_text(obj: &mut Map<String, Value>, key: &str) -> Result<Text> {
    match obj.remove(key) {
        Some(v) => parse_text(v, key),
        None => Err(field_err(key, format!("missing field \"{key}\""))),
    }
}

fn take_completion(obj: &mut Map<String, Value>, key: &str) -> Result<Text> {
    non_empty_completion(take_required_text(obj, key)?, key)
}

fn take_optional_text(obj: &mut Map<String, Value>, key: &str) -> Result<Option<Text>> {
    take(obj, key).map(|v| parse_text(v, key)).transpose()
}

fn take_alpha(obj: &mut Map<String, Value>) -> Result<Option<f64>> {
    match take(obj, "alpha") {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let alpha = n.as_f64().unwrap_or(f64::NAN);
            if (0.5..=1.0).contains(&alpha) {
                Ok(Some(alpha))
            } else {
                Err(field_err(
                    "alpha",
                    format!("alpha {n} is outside [0.5, 1] (it is the fraction of annotators preferring the chosen response; below 0.5, swap chosen and rejected)"),
                ))
            }
        }
        Some(other) => Err(field_err(
            "alpha",
            format!("expected a number in [0.5, 1], found {}", json_type(&other)),
        )),
    }
}

fn take_rationale(obj: &mut Map<String, Value>) -> Result<Option<String>> {
    match take(obj, "rationale") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => {
            Err(field_err("rationale", format!("expected a string, found {}", json_type(&other))))
        }
    }
}

/// All named text fields of one record must share one form (string or message list).
fn check_one_form(fields: &[(&str, Option<&Text>)]) -> Result<()> {
    let present: Vec<(&str, &Text)> =
        fields.iter().filter_map(|(name, t)| t.map(|t| (*name, t))).collect();
    if let Some((first_name, first)) = present.first() {
        for (name, text) in &present[1..] {
            if text.is_messages() != first.is_messages() {
                return Err(field_err(
                    name,
                    format!(
                        "is {} but \"{first_name}\" is {}; use one form for the whole record",
                        text.form_name(),
                        first.form_name()
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Record {
    /// Interpret one JSON object (one line of a file). Errors carry the field, not the line.
    pub fn from_json_value(value: Value) -> Result<Record> {
        let Value::Object(mut obj) = value else {
            return Err(LabError::parse(format!(
                "expected a JSON object per line, found {}",
                json_type(&value)
            )));
        };
        let is_ranked = obj.contains_key("responses");
        let is_pair = obj.contains_key("chosen") || obj.contains_key("rejected");
        let is_unpaired = obj.contains_key("completion");
        if is_ranked && is_pair {
            return Err(field_err("responses", "a record has either \"responses\" (ranked list) or \"chosen\"/\"rejected\" (pair), not both"));
        }
        if is_unpaired && (is_pair || is_ranked) {
            return Err(field_err("completion", "a record has either \"completion\" + \"label\" (unpaired) or \"chosen\"/\"rejected\" or \"responses\", not both"));
        }
        if is_ranked {
            let prompt = take_required_text(&mut obj, "prompt")?;
            let responses = match obj.remove("responses") {
                Some(Value::Array(items)) => items,
                Some(other) => {
                    return Err(field_err(
                        "responses",
                        format!(
                            "expected a list of responses, best first, found {}",
                            json_type(&other)
                        ),
                    ))
                }
                None => unreachable!("checked above"),
            };
            if !(RANKED_MIN..=RANKED_MAX).contains(&responses.len()) {
                let what = if responses.len() < RANKED_MIN { "too short" } else { "too long" };
                return Err(field_err(
                    "responses",
                    format!(
                        "ranked list {what}: {} responses, expected {RANKED_MIN} to {RANKED_MAX}",
                        responses.len()
                    ),
                ));
            }
            let responses = responses
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let field = format!("responses[{i}]");
                    non_empty_completion(parse_text(v, &field)?, &field)
                })
                .collect::<Result<Vec<_>>>()?;
            let names: Vec<String> =
                (0..responses.len()).map(|i| format!("responses[{i}]")).collect();
            let mut forms: Vec<(&str, Option<&Text>)> = vec![("prompt", Some(&prompt))];
            forms.extend(names.iter().map(String::as_str).zip(responses.iter().map(Some)));
            check_one_form(&forms)?;
            let alpha = take_alpha(&mut obj)?;
            let rationale = take_rationale(&mut obj)?;
            return Ok(Record::Ranked(RankedExample {
                prompt,
                responses,
                alpha,
                rationale,
                extra: obj,
            }));
        }
        if is_unpaired {
            let prompt = take_required_text(&mut obj, "prompt")?;
            let completion = take_completion(&mut obj, "completion")?;
            let label = match obj.remove("label") {
                Some(Value::Bool(b)) => b,
                Some(other) => {
                    return Err(field_err(
                        "label",
                        format!(
                            "expected true (desirable) or false (undesirable), found {}",
                            json_type(&other)
                        ),
                    ))
                }
                None => return Err(field_err("label", "missing field \"label\"")),
            };
            check_one_form(&[("prompt", Some(&prompt)), ("completion", Some(&completion))])?;
            return Ok(Record::Unpaired(UnpairedExample { prompt, completion, label, extra: obj }));
        }
        let prompt = take_optional_text(&mut obj, "prompt")?;
        let chosen = take_completion(&mut obj, "chosen")?;
        let rejected = take_completion(&mut obj, "rejected")?;
        let rejected_prompt = take_optional_text(&mut obj, "rejected_prompt")?;
        if rejected_prompt.is_some() && prompt.is_none() {
            return Err(field_err(
                "rejected_prompt",
                "a joint-preference pair needs an explicit \"prompt\" for the chosen side",
            ));
        }
        check_one_form(&[
            ("prompt", prompt.as_ref()),
            ("chosen", Some(&chosen)),
            ("rejected", Some(&rejected)),
            ("rejected_prompt", rejected_prompt.as_ref()),
        ])?;
        let alpha = take_alpha(&mut obj)?;
        let rationale = take_rationale(&mut obj)?;
        Ok(Record::Pair(PreferencePair {
            prompt,
            chosen,
            rejected,
            rejected_prompt,
            alpha,
            rationale,
            extra: obj,
        }))
    }

    /// The record's fields in output order; text fields stay `Text` so messages can be
    /// written `role` first.
    fn fields(&self) -> Vec<(String, Field<'_>)> {
        let mut out: Vec<(String, Field<'_>)> = Vec::new();
        macro_rules! push {
            ($k:expr, $v:expr) => {
                out.push(($k.to_string(), $v))
            };
        }
        let (extra, alpha, rationale) = match self {
            Record::Pair(p) => {
                if let Some(prompt) = &p.prompt {
                    push!("prompt", Field::Text(prompt));
                }
                push!("chosen", Field::Text(&p.chosen));
                if let Some(rp) = &p.rejected_prompt {
                    push!("rejected_prompt", Field::Text(rp));
                }
                push!("rejected", Field::Text(&p.rejected));
                (&p.extra, p.alpha, p.rationale.as_ref())
            }
            Record::Unpaired(u) => {
                push!("prompt", Field::Text(&u.prompt));
                push!("completion", Field::Text(&u.completion));
                push!("label", Field::Value(Value::Bool(u.label)));
                (&u.extra, None, None)
            }
            Record::Ranked(r) => {
                push!("prompt", Field::Text(&r.prompt));
                push!("responses", Field::Texts(&r.responses));
                (&r.extra, r.alpha, r.rationale.as_ref())
            }
        };
        if let Some(a) = alpha {
            push!(
                "alpha",
                Field::Value(serde_json::Number::from_f64(a).map_or(Value::Null, Value::Number))
            );
        }
        if let Some(r) = rationale {
            push!("rationale", Field::Value(Value::String(r.clone())));
        }
        let known: Vec<String> = out.iter().map(|(k, _)| k.clone()).collect();
        // An extra that shadows a known key (only possible in code) would duplicate it.
        for (k, v) in extra {
            if !known.contains(k) {
                out.push((k.clone(), Field::Value(v.clone())));
            }
        }
        out
    }

    /// The record as one compact JSON line (no trailing newline), keys in the documented
    /// order, each message written `{"role","content"}`.
    pub fn to_json_line(&self) -> String {
        let parts: Vec<String> = self
            .fields()
            .into_iter()
            .map(|(k, v)| format!("{}:{}", Value::String(k), v.to_json()))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    /// The record as a JSON object (key order per `serde_json::Map`).
    pub fn to_json_value(&self) -> Value {
        Value::Object(self.fields().into_iter().map(|(k, v)| (k, v.into_value())).collect())
    }
}

/// One output field of a record.
enum Field<'a> {
    Text(&'a Text),
    Texts(&'a [Text]),
    Value(Value),
}

impl Field<'_> {
    fn to_json(&self) -> String {
        match self {
            Field::Text(t) => text_json(t),
            Field::Texts(ts) => {
                format!("[{}]", ts.iter().map(text_json).collect::<Vec<_>>().join(","))
            }
            Field::Value(v) => v.to_string(),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Field::Text(t) => t.to_value(),
            Field::Texts(ts) => Value::Array(ts.iter().map(Text::to_value).collect()),
            Field::Value(v) => v,
        }
    }
}

/// Compact JSON of a text field, messages as `{"role":...,"content":...}` in that order.
fn text_json(text: &Text) -> String {
    let quote = |s: &str| Value::String(s.to_string()).to_string();
    match text {
        Text::Plain(s) => quote(s),
        Text::Messages(msgs) => {
            let items: Vec<String> = msgs
                .iter()
                .map(|m| {
                    format!("{{\"role\":{},\"content\":{}}}", quote(&m.role), quote(&m.content))
                })
                .collect();
            format!("[{}]", items.join(","))
        }
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.to_json_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Record, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Record::from_json_value(value).map_err(serde::de::Error::custom)
    }
}

/// Parse JSONL preference data. Errors are `LabError::Parse` with the 1-based line and the
/// field; an input with no record at all is an error too.
pub fn parse_jsonl(text: &str) -> Result<Vec<Record>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        // A key given twice is refused: serde_json would keep the last one silently.
        let value = crate::json::parse_unique_line(line, line_no)?;
        records.push(Record::from_json_value(value).map_err(|e| e.at_line(line_no))?);
    }
    if records.is_empty() {
        return Err(LabError::parse("no records: expected one JSON object per line"));
    }
    Ok(records)
}

/// Read and parse a JSONL file (or standard input, `-`) of at most
/// [`MAX_IMPORT_BYTES`](crate::exchange::MAX_IMPORT_BYTES); errors carry the file name, and
/// invalid UTF-8 its line and column. A FIFO or a device is refused, not read forever.
pub fn read_jsonl_file(path: &Path) -> Result<Vec<Record>> {
    let name = crate::files::display_name(path);
    let text = crate::files::read_text(path, crate::exchange::MAX_IMPORT_BYTES as u64)?;
    parse_jsonl(&text).map_err(|e| e.in_file(&name))
}

/// Write records as JSONL in TRL's field names, extras kept, one line each with a trailing
/// newline. `parse_jsonl(&to_jsonl(&r)) == r`.
pub fn to_jsonl(records: &[Record]) -> String {
    let mut out = String::new();
    for record in records {
        out.push_str(&record.to_json_line());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_prompt_cuts_before_the_last_shared_space() {
        let (p, c, r) =
            split_implicit_prompt("Q: Is the sky blue? A: Yes", "Q: Is the sky blue? A: No");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("Q: Is the sky blue? A:", " Yes", " No"));
        // Divergence inside a word keeps the whole word in the completions.
        let (p, c, r) = split_implicit_prompt("A: Yes", "A: Yeah");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("A:", " Yes", " Yeah"));
        // One side a prefix of the other; no space at all.
        let (p, c, r) = split_implicit_prompt("Go on", "Go on now");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("Go", " on", " on now"));
        let (p, c, r) = split_implicit_prompt("Yes", "Yeah");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("", "Yes", "Yeah"));
    }

    #[test]
    fn encode_example_layout_and_lengths() {
        let (tokens, first) = encode_example(&Tokenizer::Char, "Q?", " No", 16).unwrap();
        const EOT: u32 = crate::tokenizer::EOT;
        assert_eq!(tokens, vec![EOT, 50, 32, 1, 47, 80, EOT]);
        assert_eq!(first, 3);
        assert_eq!(tokens.len() - first, " No".len() + 1);
        // Exactly ctx fits; one more does not.
        assert!(encode_example(&Tokenizer::Char, "Q?", " No", 7).is_ok());
        let err = encode_example(&Tokenizer::Char, "Q?", " No", 6)
            .unwrap_err()
            .in_field("chosen")
            .at_line(4)
            .to_string();
        assert!(
            err.contains("line 4") && err.contains("chosen") && err.contains("context of 6"),
            "{err}"
        );
        let err =
            encode_example(&Tokenizer::Char, "Q\n?", " No", 16).unwrap_err().at_line(2).to_string();
        assert!(
            err.contains("line 2") && err.contains("\"prompt\"") && err.contains("position 1"),
            "{err}"
        );
        let err = encode_example(&Tokenizer::Char, "Q?", "", 16)
            .unwrap_err()
            .in_field("rejected")
            .to_string();
        assert!(err.contains("rejected") && err.contains("empty"), "{err}");
    }

    #[test]
    fn a_bpe_model_gets_its_own_end_token_and_prompt_and_completion_apart() {
        let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/tokenizers/gpt2");
        let bpe = crate::bpe::Bpe::from_gpt2_files(
            &assets.join("vocab.json"),
            &assets.join("merges.txt"),
        )
        .unwrap();
        let gpt2 = Tokenizer::Bpe(std::sync::Arc::new(bpe));
        let (tokens, first) = encode_example(&gpt2, "Is fire hot?", " Yes", 64).unwrap();
        let prompt = gpt2.encode("Is fire hot?").unwrap();
        let completion = gpt2.encode(" Yes").unwrap();
        assert_eq!(completion.len(), 1, "{completion:?}");
        assert_eq!(first, 1 + prompt.len());
        assert_eq!((tokens[0], tokens[tokens.len() - 1]), (50256, 50256));
        assert_eq!(&tokens[1..first], prompt.as_slice());
        assert_eq!(&tokens[first..tokens.len() - 1], completion.as_slice());
        // any text encodes with a byte-level BPE: no character is refused
        assert!(encode_example(&gpt2, "Q\n?", " café", 64).is_ok());
    }
}
