//! One error type for the whole lab. Every message names what is wrong and where
//! (file, line, field), so a user can act on it without reading code.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum LabError {
    /// A data file or JSON input could not be read: where (file and 1-based line, if known),
    /// which field, and what is wrong.
    Parse { file: Option<String>, line: Option<usize>, field: Option<String>, msg: String },
    /// A parameter (β, learning rate, ...) is outside its valid range.
    InvalidParam { name: String, msg: String },
    /// Text that cannot be tokenized, or that does not fit the context.
    Tokenize { msg: String },
    /// Shapes or sizes that do not fit together (weights vs config, batch vs context).
    /// Becomes a [`LabError::Parse`] when a file, line or field is attached.
    Shape { msg: String },
    /// An I/O failure, with the path.
    Io { path: String, msg: String },
    /// Anything an engine reports (adapter missing, device lost, ...).
    Engine { msg: String },
    /// A training step whose loss or gradient is not finite; the step was not taken, so the
    /// model is as it was after step `step - 1`. The caller knows the settings and names the
    /// likely cause.
    NotFinite { step: u32 },
}

pub type Result<T> = std::result::Result<T, LabError>;

impl LabError {
    pub fn parse(msg: impl Into<String>) -> Self {
        LabError::Parse { file: None, line: None, field: None, msg: msg.into() }
    }
    pub fn param(name: impl Into<String>, msg: impl Into<String>) -> Self {
        LabError::InvalidParam { name: name.into(), msg: msg.into() }
    }
    pub fn shape(msg: impl Into<String>) -> Self {
        LabError::Shape { msg: msg.into() }
    }
    pub fn io(path: impl Into<String>, err: impl fmt::Display) -> Self {
        LabError::Io { path: path.into(), msg: err.to_string() }
    }
    /// Attach a file name to a parse error (keeps line and field). A tokenize or shape
    /// error becomes a parse error of that file: both are found in what the file holds (a
    /// character outside the vocabulary, arrays of different lengths, a token id the model
    /// does not have), so the file is where to look.
    pub fn in_file(self, path: &str) -> Self {
        match self.into_parse() {
            LabError::Parse { file: None, line, field, msg } => {
                LabError::Parse { file: Some(path.to_string()), line, field, msg }
            }
            other => other,
        }
    }
    /// Attach a 1-based line number to a parse, tokenize or shape error.
    pub fn at_line(self, line_no: usize) -> Self {
        match self.into_parse() {
            LabError::Parse { file, line: None, field, msg } => {
                LabError::Parse { file, line: Some(line_no), field, msg }
            }
            other => other,
        }
    }
    /// Attach a field name to a parse, tokenize or shape error.
    pub fn in_field(self, name: &str) -> Self {
        match self.into_parse() {
            LabError::Parse { file, line, field: None, msg } => {
                LabError::Parse { file, line, field: Some(name.to_string()), msg }
            }
            other => other,
        }
    }
    /// Tokenize and shape errors as parse errors with no place yet; others unchanged.
    fn into_parse(self) -> Self {
        match self {
            LabError::Tokenize { msg } | LabError::Shape { msg } => {
                LabError::Parse { file: None, line: None, field: None, msg }
            }
            other => other,
        }
    }
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Parse { file, line, field, msg } => {
                let mut place = Vec::new();
                if let Some(file) = file {
                    place.push(file.clone());
                }
                if let Some(line) = line {
                    place.push(format!("line {line}"));
                }
                if let Some(field) = field {
                    place.push(format!("field \"{field}\""));
                }
                if place.is_empty() {
                    write!(f, "{msg}")
                } else {
                    write!(f, "{}: {msg}", place.join(", "))
                }
            }
            LabError::InvalidParam { name, msg } => write!(f, "invalid {name}: {msg}"),
            LabError::Tokenize { msg } => write!(f, "{msg}"),
            LabError::Shape { msg } => write!(f, "shape mismatch: {msg}"),
            LabError::Io { path, msg } => write!(f, "{path}: {msg}"),
            LabError::Engine { msg } => write!(f, "engine error: {msg}"),
            LabError::NotFinite { step } => {
                write!(
                    f,
                    "step {step}: the loss or its gradient is not finite; the step was not taken"
                )
            }
        }
    }
}

impl std::error::Error for LabError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_tokenize_errors_take_a_file_line_and_field() {
        let err = LabError::shape("reference_chosen_logps has 1 entries but there are 3 pairs");
        assert_eq!(
            err.clone().in_file("in.json").to_string(),
            "in.json: reference_chosen_logps has 1 entries but there are 3 pairs"
        );
        assert_eq!(
            LabError::shape("token id 54 is outside the vocabulary of 10")
                .at_line(4)
                .in_field("chosen")
                .in_file("d.jsonl")
                .to_string(),
            "d.jsonl, line 4, field \"chosen\": token id 54 is outside the vocabulary of 10"
        );
        assert!(err.to_string().starts_with("shape mismatch: "), "{err}");
        // a parameter error names its setting, not a file it did not come from
        let param = LabError::param("beta", "must be > 0");
        assert_eq!(param.clone().in_file("d.jsonl"), param);
    }
}
