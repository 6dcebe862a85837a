//! Property tests over everything that reads user input: the JSONL parser, the checkpoint
//! loader (safetensors bytes and `config.json`), the experiment link and the `losses`
//! input. Each property runs on random input and on mutations of valid input (a deleted,
//! inserted or replaced piece, a number swapped for an extreme one), and asks for more than
//! "it ran": no panic, an error or a value that keeps its promise (a record round-trips, a
//! loaded model has the config's parameter count, a loss is finite). Every property is
//! cheap, so a few thousand cases in all run in seconds in release mode.

use lab_core::checkpoint::{from_safetensors, to_safetensors, StorageDtype};
use lab_core::config::{init_params, GptConfig, MAX_PARAMS};
use lab_core::data::{parse_jsonl, to_jsonl};
use lab_core::experiment::ExperimentConfig;
use lab_core::loss::{
    evaluate_trl_losses, evaluate_trl_losses_json, LossParams, MAX_ABS_LOGP, MAX_LENGTH, MAX_PARAM,
    MIN_BETA, MIN_DISCOPOP_TAU,
};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Value};

/// Cases per property: 12 properties, 15 000 cases in all, about a second in release mode.
fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Valid lines of every JSONL format, the seeds of the mutations.
const VALID_LINES: [&str; 8] = [
    r#"{"prompt": "Is the sky green?", "chosen": " No.", "rejected": " Yes."}"#,
    r#"{"chosen": "Q: Is the sky blue? A: Yes", "rejected": "Q: Is the sky blue? A: No"}"#,
    r#"{"prompt": [{"role": "user", "content": "Is it?"}], "chosen": [{"role": "assistant", "content": "No."}], "rejected": [{"role": "assistant", "content": "Never."}]}"#,
    r#"{"prompt": "2+2=", "completion": "4", "label": true}"#,
    r#"{"prompt": "Best fruit:", "responses": [" apple", " pear", " rock"], "alpha": 0.8}"#,
    r#"{"prompt": "Is fire hot?", "chosen": " Yes.", "rejected_prompt": "Is ice hot?", "rejected": " Yes.", "alpha": 0.9, "rationale": "ice is cold"}"#,
    r#"{"prompt": "Q?", "chosen": " A", "rejected": " B", "id": 17, "meta": {"scores": [1, 2.5, null]}, "note": null}"#,
    r#"{"prompt": [{"role": "user", "content": "Hi"}], "responses": [[{"role": "assistant", "content": "Hello!"}], [{"role": "assistant", "content": "Hm."}]]}"#,
];

/// Pieces a mutation inserts: JSON punctuation, keys the parser knows, extreme numbers,
/// awkward text.
const PIECES: [&str; 22] = [
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "\\",
    "\n",
    "null",
    "true",
    "-1e308",
    "1e999",
    "0.5",
    "\"chosen\": \" x\"",
    "\"alpha\": 2",
    "\"responses\": []",
    "\"role\": \"robot\"",
    "\u{feff}",
    "\u{1F600}",
    "\\u0000",
    "\\ud800",
];

/// One edit of a text at character boundaries.
#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, piece: usize },
    Replace { at: usize, ch: char },
    Repeat { at: usize, len: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 0..PIECES.len()).prop_map(|(at, piece)| Edit::Insert { at, piece }),
        (any::<usize>(), any::<char>()).prop_map(|(at, ch)| Edit::Replace { at, ch }),
        (any::<usize>(), 1usize..30).prop_map(|(at, len)| Edit::Repeat { at, len }),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let n = chars.len();
        match *e {
            Edit::Delete { at, len } if n > 0 => {
                let at = at % n;
                chars.drain(at..(at + len).min(n));
            }
            Edit::Insert { at, piece } => {
                let at = at % (n + 1);
                chars.splice(at..at, PIECES[piece].chars());
            }
            Edit::Replace { at, ch } if n > 0 => chars[at % n] = ch,
            Edit::Repeat { at, len } if n > 0 => {
                let at = at % n;
                let copy: Vec<char> = chars[at..(at + len).min(n)].to_vec();
                chars.splice(at..at, copy);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Parsed records, when there are any, are exactly what the writer writes back.
fn assert_round_trip(text: &str) -> Result<(), TestCaseError> {
    if let Ok(records) = parse_jsonl(text) {
        let written = to_jsonl(&records);
        prop_assert_eq!(parse_jsonl(&written).unwrap(), records.clone());
        prop_assert_eq!(to_jsonl(&parse_jsonl(&written).unwrap()), written);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn jsonl_arbitrary_text(text in any::<String>()) {
        assert_round_trip(&text)?;
    }

    #[test]
    fn jsonl_mutated_valid_lines(
        lines in prop::collection::vec(0..VALID_LINES.len(), 1..4),
        edits in prop::collection::vec(edit(), 0..4),
    ) {
        let text: Vec<&str> = lines.iter().map(|&i| VALID_LINES[i]).collect();
        let text = apply(&text.join("\n"), &edits);
        assert_round_trip(&text)?;
    }

    #[test]
    fn jsonl_generated_records_round_trip(
        prompt in any::<String>(),
        chosen in any::<String>(),
        rejected in any::<String>(),
        alpha in prop::option::of(0.0f64..1.5),
        extra in prop::option::of(any::<String>()),
    ) {
        let mut line = json!({"prompt": prompt, "chosen": chosen, "rejected": rejected});
        if let Some(alpha) = alpha {
            line["alpha"] = json!(alpha);
        }
        if let Some(extra) = extra {
            line["note"] = json!(extra);
        }
        let text = line.to_string();
        assert_round_trip(&text)?;
        // nothing given is lost: a parsed pair writes back every field it was given
        if let Ok(records) = parse_jsonl(&text) {
            let back: Value = serde_json::from_str(to_jsonl(&records).trim_end()).unwrap();
            for key in line.as_object().unwrap().keys() {
                prop_assert!(back.get(key).is_some(), "{key} lost: {text} -> {back}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checkpoints

const SMALL: GptConfig = GptConfig { vocab: 96, ctx: 4, d_model: 4, n_layer: 1, n_head: 1 };

fn small_checkpoint(dtype: StorageDtype) -> Vec<u8> {
    to_safetensors(&SMALL, &init_params(&SMALL, 5), dtype).unwrap()
}

/// One edit of a checkpoint's bytes.
#[derive(Debug, Clone)]
enum ByteEdit {
    /// Replace the byte at a position.
    Set(usize, u8),
    /// Cut the file at a position.
    Truncate(usize),
    /// Append bytes.
    Append(Vec<u8>),
    /// Replace the 8-byte header length.
    HeaderLen(u64),
    /// Replace a run of digits in the header with another number.
    Number(usize, u64),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| ByteEdit::Set(at, b)),
        any::<usize>().prop_map(ByteEdit::Truncate),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(ByteEdit::Append),
        prop_oneof![any::<u64>(), 0u64..2000].prop_map(ByteEdit::HeaderLen),
        (
            any::<usize>(),
            prop_oneof![Just(0u64), 1u64..100, Just(1 << 31), Just(1 << 62), Just(u64::MAX)]
        )
            .prop_map(|(at, n)| ByteEdit::Number(at, n)),
    ]
}

fn apply_bytes(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len();
        match e {
            ByteEdit::Set(at, b) if n > 0 => bytes[at % n] = *b,
            ByteEdit::Truncate(at) => bytes.truncate(at % (n + 1)),
            ByteEdit::Append(more) => bytes.extend_from_slice(more),
            ByteEdit::HeaderLen(len) if n >= 8 => bytes[..8].copy_from_slice(&len.to_le_bytes()),
            ByteEdit::Number(at, value) if n > 8 => {
                // the header is text: swap the digits run at (or after) `at` for `value`,
                // keeping the header length consistent so the JSON is what gets tested
                let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                let end = (8 + header_len).min(n);
                let Some(start) =
                    (8 + at % header_len.max(1)..end).find(|&i| bytes[i].is_ascii_digit())
                else {
                    continue;
                };
                let stop = (start..end).find(|&i| !bytes[i].is_ascii_digit()).unwrap_or(end);
                let digits = value.to_string().into_bytes();
                let new_len = header_len + digits.len() - (stop - start);
                bytes.splice(start..stop, digits);
                bytes[..8].copy_from_slice(&(new_len as u64).to_le_bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// A loaded checkpoint has exactly the config's parameters, all finite.
fn assert_load_keeps_its_promise(cfg: &GptConfig, bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(params) = from_safetensors(cfg, bytes) {
        prop_assert_eq!(params.len(), cfg.layout().total);
        prop_assert!(params.iter().all(|p| p.is_finite()));
    }
    Ok(())
}

fn gpt_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..16,
        Just(0usize),
        Just(96usize),
        Just(1usize << 20),
        Just(1usize << 31),
        Just(1usize << 62),
        Just(usize::MAX),
    ]
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn safetensors_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        assert_load_keeps_its_promise(&SMALL, &bytes)?;
    }

    #[test]
    fn safetensors_mutated_checkpoints(
        half in any::<bool>(),
        edits in prop::collection::vec(byte_edit(), 1..4),
    ) {
        let dtype = if half { StorageDtype::F16 } else { StorageDtype::F32 };
        let bytes = apply_bytes(small_checkpoint(dtype), &edits);
        assert_load_keeps_its_promise(&SMALL, &bytes)?;
    }

    #[test]
    fn safetensors_against_any_config(
        vocab in gpt_size(), ctx in gpt_size(), d_model in gpt_size(),
        n_layer in gpt_size(), n_head in gpt_size(),
    ) {
        let cfg = GptConfig { vocab, ctx, d_model, n_layer, n_head };
        let bytes = small_checkpoint(StorageDtype::F32);
        assert_load_keeps_its_promise(&cfg, &bytes)?;
        if cfg.validate().is_ok() {
            prop_assert!(cfg.layout().total <= MAX_PARAMS);
        }
    }

    #[test]
    fn config_json_of_any_numbers(
        values in prop::collection::vec(
            prop_oneof![
                any::<u64>().prop_map(Value::from),
                (0u64..200).prop_map(Value::from),
                any::<f64>().prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
                any::<i64>().prop_map(Value::from),
                Just(Value::Null),
                any::<String>().prop_map(Value::from),
            ],
            5,
        ),
        drop in prop::option::of(0usize..5),
    ) {
        let names = ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"];
        let mut config = serde_json::Map::new();
        for (i, (name, value)) in names.iter().zip(values).enumerate() {
            if drop != Some(i) {
                config.insert(name.to_string(), value);
            }
        }
        match GptConfig::from_hf_json(&Value::Object(config)) {
            Ok(cfg) => {
                prop_assert!(cfg.layout().total <= MAX_PARAMS);
                let bytes = small_checkpoint(StorageDtype::F32);
                assert_load_keeps_its_promise(&cfg, &bytes)?;
            }
            Err(err) => {
                // every config error names the JSON field, or the parameter count
                let msg = err.to_string();
                prop_assert!(
                    names.iter().any(|n| msg.contains(&format!("\"{n}\""))) || msg.contains("parameters"),
                    "{}", msg
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Experiment links

const LOSS_SPECS: [&str; 9] = [
    "sigmoid",
    "ipo",
    "hinge",
    "simpo",
    "kto",
    "sigmoid+0.5*sft",
    "ipo + 2*sft",
    "sigmoid+1e-3*sft",
    "apo_zero",
];

fn experiment() -> impl Strategy<Value = ExperimentConfig> {
    (
        0..LOSS_SPECS.len(),
        (1e-6f64..1e3, 0.0f64..0.49, -1e3f64..1e3, 1e-3f64..1e3, 1e-6f64..0.999),
        (1e-9f64..10.0, 0.0f64..1.0, 1usize..100_000, any::<u32>(), any::<u64>(), any::<u32>()),
        prop::option::of("\\PC{1,20}"),
    )
        .prop_map(
            |(loss, (beta, eps, gamma, tau, exo), (lr, wd, batch, steps, seed, every), sc)| {
                ExperimentConfig {
                    loss: LOSS_SPECS[loss].to_string(),
                    params: LossParams {
                        beta,
                        label_smoothing: eps,
                        simpo_gamma: gamma,
                        discopop_tau: tau,
                        exo_epsilon: exo,
                        ..LossParams::default()
                    },
                    lr,
                    weight_decay: wd,
                    batch_size: batch,
                    steps,
                    seed,
                    scenario: sc,
                    eval_every: every,
                }
            },
        )
}

/// Link-like text: known keys with arbitrary values, and arbitrary pieces.
fn link_text() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "loss",
        "beta",
        "lr",
        "batch_size",
        "steps",
        "seed",
        "label_smoothing",
        "simpo_gamma",
        "discopop_tau",
        "exo_epsilon",
        "cpo_alpha",
        "weight_decay",
        "eval_every",
        "scenario",
        "kto_desirable_weight",
        "betta",
        "",
    ]);
    let value = prop_oneof![
        "[0-9eE.+%-]{0,12}",
        "%[0-9A-Fa-f]{0,2}",
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("18446744073709551616".to_string()),
        any::<String>(),
    ];
    prop::collection::vec((keys, value), 0..6).prop_map(|pairs| {
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
    })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn link_arbitrary_text(text in prop_oneof![any::<String>(), link_text()]) {
        if let Ok(config) = ExperimentConfig::from_query(&text) {
            // what a link was read as is what it writes back
            prop_assert!(config.validate().is_ok());
            prop_assert_eq!(ExperimentConfig::from_query(&config.to_query()).unwrap(), config);
        }
    }

    #[test]
    fn valid_experiments_round_trip_through_the_link(config in experiment()) {
        prop_assume!(config.validate().is_ok());
        let query = config.to_query();
        prop_assert_eq!(ExperimentConfig::from_query(&query).unwrap(), config.clone());
        let text = serde_json::to_string(&config).unwrap();
        prop_assert_eq!(ExperimentConfig::from_json(&text).unwrap(), config);
    }
}

// ---------------------------------------------------------------------------------------
// The `losses` input

fn logp() -> impl Strategy<Value = f64> {
    prop_oneof![
        20 => -60.0f64..0.0,
        1 => -MAX_ABS_LOGP..MAX_ABS_LOGP,
        1 => prop::sample::select(vec![
            0.0, -0.0, 1e-300, -1e-300, MAX_ABS_LOGP, -MAX_ABS_LOGP, 1e300, -1e300, f64::MAX,
        ]),
    ]
}

fn positive_param() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => 1e-3f64..10.0,
        1 => prop::sample::select(vec![
            1e-300, 1e-6, 1e6, 1e30, 1e300, 0.0, -1.0, f64::MIN_POSITIVE, 5e-324,
        ]),
    ]
}

/// A `losses` input: n pairs, arrays of the right length except when `ragged`.
fn losses_input() -> impl Strategy<Value = Value> {
    (1usize..6).prop_flat_map(|n| {
        let array = move || prop::collection::vec(logp(), n);
        let lengths = move || {
            prop::collection::vec(
                prop_oneof![20 => 1.0f64..50.0, 1 => prop::sample::select(vec![0.0, 1e-300, 0.5, 1e6, 1e300, -3.0])],
                n,
            )
        };
        (
            (array(), array(), array(), array(), lengths(), lengths()),
            (positive_param(), 0.0f64..0.6, -1e3f64..1e3, positive_param()),
        )
            .prop_map(|((pc, pr, rc, rr, lc, lr), (beta, eps, gamma, tau))| {
                json!({
                    "policy_chosen_logps": pc, "policy_rejected_logps": pr,
                    "reference_chosen_logps": rc, "reference_rejected_logps": rr,
                    "chosen_lengths": lc, "rejected_lengths": lr,
                    "params": {"beta": beta, "label_smoothing": eps, "simpo_gamma": gamma,
                               "discopop_tau": tau},
                })
            })
    })
}

/// A `losses` input within every documented bound (log-probs within ±`MAX_ABS_LOGP`,
/// lengths in (0, `MAX_LENGTH`], β and τ in their ranges), extremes included.
fn bounded_losses_input() -> impl Strategy<Value = Value> {
    let bounded_logp = prop_oneof![
        2 => -60.0f64..0.0,
        1 => -MAX_ABS_LOGP..MAX_ABS_LOGP,
        1 => prop::sample::select(vec![0.0, MAX_ABS_LOGP, -MAX_ABS_LOGP, 1e-300]),
    ];
    let length = prop_oneof![
        2 => 1.0f64..50.0,
        1 => prop::sample::select(vec![1e-300, 0.5, MAX_LENGTH]),
    ];
    let beta = prop_oneof![
        2 => 1e-3f64..10.0,
        1 => prop::sample::select(vec![MIN_BETA, MAX_PARAM]),
    ];
    let tau = prop_oneof![
        2 => 1e-3f64..1.0,
        1 => prop::sample::select(vec![MIN_DISCOPOP_TAU, 1.0]),
    ];
    (1usize..6).prop_flat_map(move |n| {
        let array = prop::collection::vec(bounded_logp.clone(), n);
        let lengths = prop::collection::vec(length.clone(), n);
        (
            (array.clone(), array.clone(), array.clone(), array, lengths.clone(), lengths),
            (beta.clone(), 0.0f64..0.49, -MAX_PARAM..MAX_PARAM, tau.clone()),
        )
            .prop_map(|((pc, pr, rc, rr, lc, lr), (beta, eps, gamma, tau))| {
                json!({
                    "policy_chosen_logps": pc, "policy_rejected_logps": pr,
                    "reference_chosen_logps": rc, "reference_rejected_logps": rr,
                    "chosen_lengths": lc, "rejected_lengths": lr,
                    "params": {"beta": beta, "label_smoothing": eps, "simpo_gamma": gamma,
                               "discopop_tau": tau},
                })
            })
    })
}

/// Every number in a JSON value.
fn numbers(value: &Value, out: &mut Vec<Option<f64>>) {
    match value {
        Value::Number(n) => out.push(n.as_f64()),
        Value::Null => out.push(None),
        Value::Array(items) => items.iter().for_each(|v| numbers(v, out)),
        Value::Object(map) => map.values().for_each(|v| numbers(v, out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn losses_are_finite_or_an_error(input in losses_input()) {
        match evaluate_trl_losses(&input) {
            Ok(out) => {
                let mut all = Vec::new();
                numbers(&out, &mut all);
                prop_assert!(all.iter().all(|x| x.is_some_and(f64::is_finite)), "{}", out);
            }
            Err(err) => {
                // the error names a field of the input or a loss of the output
                let msg = err.to_string();
                prop_assert!(msg.contains("field \""), "{}", msg);
            }
        }
    }

    #[test]
    fn losses_within_the_documented_bounds_always_succeed(input in bounded_losses_input()) {
        let out = evaluate_trl_losses(&input);
        prop_assert!(out.is_ok(), "{}", out.unwrap_err());
    }

    #[test]
    fn losses_text_never_panics(
        base in losses_input(),
        edits in prop::collection::vec(edit(), 0..3),
    ) {
        let text = apply(&serde_json::to_string_pretty(&base).unwrap(), &edits);
        if let Ok(out) = evaluate_trl_losses_json(&text) {
            let mut all = Vec::new();
            numbers(&out, &mut all);
            prop_assert!(all.iter().all(|x| x.is_some_and(f64::is_finite)));
        }
    }
}
