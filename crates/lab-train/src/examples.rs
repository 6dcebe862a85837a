//! Records turned into token rows, in the shape the chosen loss needs.
//!
//! Paired losses take preference pairs; KTO takes unpaired examples (a pair becomes one
//! desirable and one undesirable example, as TRL's `unpair_preference_dataset` does);
//! Plackett–Luce takes ranked lists (a pair is a ranking of two).

use lab_core::data::Record;
use lab_core::loss::DataShape;
use lab_core::tokenizer::Tokenizer;
use lab_core::{LabError, Result};

/// One tokenized sequence: `[EOT] + prompt + completion + [EOT]`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedRow {
    pub tokens: Vec<u32>,
    /// Index of the first completion token.
    pub first_scored: usize,
}

impl EncodedRow {
    fn new((tokens, first_scored): (Vec<u32>, usize)) -> Self {
        EncodedRow { tokens, first_scored }
    }
    /// Completion length |y| in tokens (trailing EOT included).
    pub fn completion_len(&self) -> usize {
        self.tokens.len() - self.first_scored
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EncodedPair {
    pub chosen: EncodedRow,
    pub rejected: EncodedRow,
    /// Fraction of annotators preferring chosen (1 when not given).
    pub alpha: f64,
    /// Index of the record it came from.
    pub record: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EncodedUnpaired {
    pub row: EncodedRow,
    pub desirable: bool,
    pub record: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EncodedRanked {
    /// Best first.
    pub rows: Vec<EncodedRow>,
    pub record: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Examples {
    Paired(Vec<EncodedPair>),
    Unpaired(Vec<EncodedUnpaired>),
    Ranked(Vec<EncodedRanked>),
}

/// 1-based line numbers of the records of a JSONL text (blank lines hold no record), so
/// errors found after parsing can still name the line.
pub fn record_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, _)| i + 1)
        .collect()
}

/// Say where a record's error is: its line when known, else its 1-based record number.
fn locate(err: LabError, index: usize, lines: Option<&[usize]>) -> LabError {
    let err = match err {
        LabError::Tokenize { msg } => LabError::Parse { file: None, line: None, field: None, msg },
        other => other,
    };
    match (err, lines.and_then(|l| l.get(index))) {
        (err, Some(&line)) => err.at_line(line),
        (LabError::Parse { file, line: None, field, msg }, None) => {
            LabError::Parse { file, line: None, field, msg: format!("record {}: {msg}", index + 1) }
        }
        (other, None) => other,
    }
}

fn encode(
    tokenizer: &Tokenizer,
    prompt: &str,
    completion: &str,
    field: &str,
    ctx: usize,
) -> Result<EncodedRow> {
    lab_core::data::encode_example(tokenizer, prompt, completion, ctx)
        .map(EncodedRow::new)
        .map_err(|e| e.in_field(field))
}

impl Examples {
    /// Tokenize `records` with the model's tokenizer for a loss of the given data shape.
    /// Errors name the record and the field: its line when `lines` (from
    /// [`record_lines`]) is given.
    pub fn encode(
        tokenizer: &Tokenizer,
        records: &[Record],
        lines: Option<&[usize]>,
        shape: DataShape,
        ctx: usize,
    ) -> Result<Examples> {
        let at_record = |err: LabError, index: usize| locate(err, index, lines);
        if records.is_empty() {
            return Err(LabError::parse("the dataset has no records"));
        }
        let mut paired = Vec::new();
        let mut unpaired = Vec::new();
        let mut ranked = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let wrong_kind = |kind: &str| {
                at_record(
                    LabError::parse(format!("a {kind} record cannot train a {shape:?} loss")),
                    index,
                )
            };
            match (record, shape) {
                (Record::Pair(pair), _) => {
                    let rendered = pair.render();
                    let (chosen, rejected) =
                        rendered.encode(tokenizer, ctx).map_err(|e| at_record(e, index))?;
                    let (chosen, rejected) = (EncodedRow::new(chosen), EncodedRow::new(rejected));
                    match shape {
                        DataShape::Paired => paired.push(EncodedPair {
                            chosen,
                            rejected,
                            alpha: pair.alpha_or_default(),
                            record: index,
                        }),
                        DataShape::Unpaired => {
                            unpaired.push(EncodedUnpaired {
                                row: chosen,
                                desirable: true,
                                record: index,
                            });
                            unpaired.push(EncodedUnpaired {
                                row: rejected,
                                desirable: false,
                                record: index,
                            });
                        }
                        DataShape::Ranked => ranked
                            .push(EncodedRanked { rows: vec![chosen, rejected], record: index }),
                    }
                }
                (Record::Unpaired(example), DataShape::Unpaired) => {
                    let (prompt, completion) = example.render();
                    let row = encode(tokenizer, &prompt, &completion, "completion", ctx)
                        .map_err(|e| at_record(e, index))?;
                    unpaired.push(EncodedUnpaired { row, desirable: example.label, record: index });
                }
                (Record::Ranked(example), DataShape::Ranked) => {
                    let (prompt, responses) = example.render();
                    let rows = responses
                        .iter()
                        .enumerate()
                        .map(|(k, r)| {
                            encode(tokenizer, &prompt, r, &format!("responses[{k}]"), ctx)
                        })
                        .collect::<Result<Vec<_>>>()
                        .map_err(|e| at_record(e, index))?;
                    ranked.push(EncodedRanked { rows, record: index });
                }
                (Record::Unpaired(_), _) => {
                    return Err(wrong_kind("unpaired (prompt/completion/label)"))
                }
                (Record::Ranked(_), _) => return Err(wrong_kind("ranked (responses)")),
            }
        }
        Ok(match shape {
            DataShape::Paired => Examples::Paired(paired),
            DataShape::Unpaired => Examples::Unpaired(unpaired),
            DataShape::Ranked => Examples::Ranked(ranked),
        })
    }

    pub fn len(&self) -> usize {
        match self {
            Examples::Paired(v) => v.len(),
            Examples::Unpaired(v) => v.len(),
            Examples::Ranked(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
