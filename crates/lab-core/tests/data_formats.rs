//! Preference data: every TRL format parses, renders to the documented template, round-trips
//! byte-stably with extras kept, and every bad input names its line and field.

use lab_core::data::*;
use lab_core::tokenizer::Tokenizer;
use serde_json::json;

/// One line of each supported format (and the extensions), blank lines in between.
const ALL_FORMATS: &str = r#"{"prompt": "Is the sky green?", "chosen": " No.", "rejected": " Yes."}

{"chosen": "Q: Is the sky blue? A: Yes", "rejected": "Q: Is the sky blue? A: No"}
{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is it?"}], "chosen": [{"role": "assistant", "content": "No."}], "rejected": [{"role": "assistant", "content": "Never."}]}
{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}
{"prompt": "2+2=", "completion": "4", "label": true}
{"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "5"}], "label": false, "source": "quiz"}
{"prompt": "Best fruit:", "responses": [" apple", " pear", " rock"], "alpha": 0.8}
{"prompt": [{"role": "user", "content": "Hi"}], "responses": [[{"role": "assistant", "content": "Hello!"}], [{"role": "assistant", "content": "Hm."}]]}
{"prompt": "Is fire hot?", "chosen": " Yes.", "rejected_prompt": "Is ice hot?", "rejected": " Yes.", "alpha": 0.9, "rationale": "ice is cold"}
{"prompt": "Q?", "chosen": " A", "rejected": " B", "id": 17, "meta": {"annotator": "kim", "scores": [1, 2.5, null]}, "alpha": 1, "note": null}
"#;

fn pair(record: &Record) -> &PreferencePair {
    match record {
        Record::Pair(p) => p,
        other => panic!("expected a pair, got {other:?}"),
    }
}

fn err_of(text: &str) -> String {
    parse_jsonl(text).expect_err("input should be rejected").to_string()
}

#[test]
fn every_format_parses_into_the_right_kind() {
    let records = parse_jsonl(ALL_FORMATS).unwrap();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| match r {
            Record::Pair(_) => "pair",
            Record::Unpaired(_) => "unpaired",
            Record::Ranked(_) => "ranked",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "pair", "pair", "pair", "pair", "unpaired", "unpaired", "ranked", "ranked", "pair",
            "pair"
        ]
    );

    let plain = pair(&records[0]);
    assert_eq!(plain.prompt, Some(Text::Plain("Is the sky green?".into())));
    assert_eq!(plain.alpha_or_default(), lab_core::data::ASSUMED_ALPHA);
    assert!(plain.extra.is_empty());

    assert_eq!(pair(&records[1]).prompt, None, "implicit prompt stays implicit");
    assert!(
        matches!(&pair(&records[2]).chosen, Text::Messages(m) if m[0] == Message { role: "assistant".into(), content: "No.".into() })
    );

    let Record::Unpaired(u) = &records[5] else { unreachable!() };
    assert!(!u.label);
    assert_eq!(u.extra.get("source"), Some(&json!("quiz")));

    let Record::Ranked(r) = &records[6] else { unreachable!() };
    assert_eq!(r.responses.len(), 3);
    assert_eq!(r.alpha, Some(0.8));

    let joint = pair(&records[8]);
    assert_eq!(joint.rejected_prompt, Some(Text::Plain("Is ice hot?".into())));
    assert_eq!(joint.alpha_or_default(), 0.9);
    assert_eq!(joint.rationale.as_deref(), Some("ice is cold"));

    let extras = &pair(&records[9]).extra;
    assert_eq!(extras.get("id"), Some(&json!(17)));
    assert_eq!(extras.get("meta"), Some(&json!({"annotator": "kim", "scores": [1, 2.5, null]})));
    assert_eq!(extras.get("note"), Some(&json!(null)), "a null extra is still the user's field");
    assert_eq!(pair(&records[9]).alpha, Some(1.0));
}

#[test]
fn round_trip_is_lossless_and_byte_stable() {
    let parsed = parse_jsonl(ALL_FORMATS).unwrap();
    let written = to_jsonl(&parsed);
    let reparsed = parse_jsonl(&written).unwrap();
    assert_eq!(reparsed, parsed);
    assert_eq!(to_jsonl(&reparsed), written, "second write must be byte-identical");
    assert_eq!(written.lines().count(), parsed.len());
    assert!(written.ends_with('\n'));
}

#[test]
fn to_jsonl_writes_trl_field_order_then_extras() {
    let records = parse_jsonl(r#"{"zeta": [1], "rejected": " No", "alpha": 0.75, "chosen": " Yes", "prompt": "Q?", "id": 7}"#).unwrap();
    assert_eq!(to_jsonl(&records), "{\"prompt\":\"Q?\",\"chosen\":\" Yes\",\"rejected\":\" No\",\"alpha\":0.75,\"id\":7,\"zeta\":[1]}\n");
    let joint =
        parse_jsonl(r#"{"prompt": "A", "rejected": " r", "rejected_prompt": "B", "chosen": " c"}"#)
            .unwrap();
    assert_eq!(
        to_jsonl(&joint),
        "{\"prompt\":\"A\",\"chosen\":\" c\",\"rejected_prompt\":\"B\",\"rejected\":\" r\"}\n"
    );
    let unpaired = parse_jsonl(r#"{"label": false, "completion": "4", "prompt": "2+2="}"#).unwrap();
    assert_eq!(to_jsonl(&unpaired), "{\"prompt\":\"2+2=\",\"completion\":\"4\",\"label\":false}\n");
    let msgs = parse_jsonl(
        r#"{"prompt": [{"content": "Hi", "role": "user"}], "responses": [" a", " b"], "rationale": "why"}"#,
    );
    // Mixed forms are rejected, so use message responses for the conversational ranked line.
    assert!(msgs.is_err());
    let ranked = parse_jsonl(r#"{"prompt": [{"content": "Hi", "role": "user"}], "responses": [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]], "rationale": "why"}"#).unwrap();
    assert_eq!(
        to_jsonl(&ranked),
        "{\"prompt\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"responses\":[[{\"role\":\"assistant\",\"content\":\"a\"}],[{\"role\":\"assistant\",\"content\":\"b\"}]],\"rationale\":\"why\"}\n"
    );
}

#[test]
fn null_optional_fields_count_as_absent() {
    let records = parse_jsonl(r#"{"prompt": null, "chosen": "x y", "rejected": "x z", "alpha": null, "rationale": null, "rejected_prompt": null}"#).unwrap();
    let p = pair(&records[0]);
    assert_eq!(
        (p.prompt.as_ref(), p.alpha, p.rationale.as_ref(), p.rejected_prompt.as_ref()),
        (None, None, None, None)
    );
    assert_eq!(to_jsonl(&records), "{\"chosen\":\"x y\",\"rejected\":\"x z\"}\n");
}

#[test]
fn renders_plain_implicit_and_joint_pairs() {
    let records = parse_jsonl(ALL_FORMATS).unwrap();
    let r = pair(&records[0]).render();
    assert_eq!(
        (r.prompt.as_str(), r.chosen.as_str(), r.rejected.as_str()),
        ("Is the sky green?", " No.", " Yes.")
    );
    assert_eq!(r.rejected_prompt, r.prompt);

    let r = pair(&records[1]).render();
    assert_eq!(r.prompt, "Q: Is the sky blue? A:");
    assert_eq!((r.chosen.as_str(), r.rejected.as_str()), (" Yes", " No"));
    assert_eq!(r.rejected_prompt, r.prompt);

    let r = pair(&records[8]).render();
    assert_eq!((r.prompt.as_str(), r.rejected_prompt.as_str()), ("Is fire hot?", "Is ice hot?"));
    assert_eq!((r.chosen.as_str(), r.rejected.as_str()), (" Yes.", " Yes."));
}

#[test]
fn renders_messages_with_the_chat_template() {
    let records = parse_jsonl(ALL_FORMATS).unwrap();
    let r = pair(&records[2]).render();
    assert_eq!(r.prompt, "System: Be brief. User: Is it? Assistant:");
    assert_eq!((r.chosen.as_str(), r.rejected.as_str()), (" No.", " Never."));
    assert!(!r.prompt.contains('\n'));

    // Implicit conversational prompt: the shared leading user turn.
    let r = pair(&records[3]).render();
    assert_eq!(r.prompt, "User: Hi Assistant:");
    assert_eq!((r.chosen.as_str(), r.rejected.as_str()), (" Hello.", " Go away."));

    let Record::Unpaired(u) = &records[5] else { unreachable!() };
    assert_eq!(u.render(), ("User: 2+2? Assistant:".to_string(), " 5".to_string()));
    let Record::Unpaired(u) = &records[4] else { unreachable!() };
    assert_eq!(u.render(), ("2+2=".to_string(), "4".to_string()));

    let Record::Ranked(k) = &records[7] else { unreachable!() };
    assert_eq!(
        k.render(),
        ("User: Hi Assistant:".to_string(), vec![" Hello!".to_string(), " Hm.".to_string()])
    );
    let Record::Ranked(k) = &records[6] else { unreachable!() };
    assert_eq!(k.render().1, vec![" apple", " pear", " rock"]);

    // A multi-turn completion labels every turn after the first.
    let multi = PreferencePair {
        prompt: Some(Text::Messages(vec![Message { role: "user".into(), content: "Hi".into() }])),
        chosen: Text::Messages(vec![
            Message { role: "assistant".into(), content: "Hello.".into() },
            Message { role: "user".into(), content: "Bye".into() },
            Message { role: "assistant".into(), content: "Bye.".into() },
        ]),
        rejected: Text::Messages(vec![Message { role: "assistant".into(), content: "No.".into() }]),
        ..PreferencePair::plain("", "x", "y")
    };
    let r = multi.render();
    assert_eq!(r.prompt, "User: Hi Assistant:");
    assert_eq!(r.chosen, " Hello. User: Bye Assistant: Bye.");
    // Empty conversational prompt: just the generation prefix.
    let empty = PreferencePair { prompt: Some(Text::Messages(vec![])), ..multi };
    assert_eq!(empty.render().prompt, "Assistant:");
}

#[test]
fn rendered_pairs_encode_into_engine_rows() {
    let records = parse_jsonl(ALL_FORMATS).unwrap();
    let r = pair(&records[2]).render();
    let ((chosen, first_c), (rejected, first_r)) = r.encode(&Tokenizer::Char, 64).unwrap();
    let prompt_len = "System: Be brief. User: Is it? Assistant:".len();
    assert_eq!(first_c, 1 + prompt_len);
    assert_eq!(first_r, first_c);
    assert_eq!(chosen.len() - first_c, " No.".len() + 1, "|y| counts the trailing EOT");
    assert_eq!(rejected.len() - first_r, " Never.".len() + 1);
    assert_eq!(
        (chosen[0], *chosen.last().unwrap()),
        (lab_core::tokenizer::EOT, lab_core::tokenizer::EOT)
    );
    assert_eq!(
        lab_core::tokenizer::decode(&chosen),
        format!("{} No.", "System: Be brief. User: Is it? Assistant:")
    );

    // Too long for the context: the error names the side.
    let err = r.encode(&Tokenizer::Char, first_c + 5).unwrap_err().at_line(3).to_string();
    assert!(
        err.contains("line 3") && err.contains("\"rejected\"") && err.contains("context"),
        "{err}"
    );
    // Joint pair: a bad rejected prompt is named as such.
    let joint = PreferencePair {
        rejected_prompt: Some(Text::Plain("caf\u{e9}?".into())),
        ..PreferencePair::plain("Q?", " a", " b")
    };
    let err = joint.render().encode(&Tokenizer::Char, 64).unwrap_err().to_string();
    assert!(err.contains("\"rejected_prompt\"") && err.contains("U+00E9"), "{err}");
}

#[test]
fn blank_lines_are_skipped_but_counted() {
    let text = "\n{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\r\n\n   \n{\"prompt\": \"a\", \"chosen\": \" b\"}\n";
    let err = err_of(text);
    assert!(err.contains("line 5") && err.contains("missing field \"rejected\""), "{err}");
    let ok =
        parse_jsonl("\u{feff}{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\r\n\n")
            .unwrap();
    assert_eq!(ok.len(), 1);
}

#[test]
fn each_bad_input_names_line_and_field() {
    let good = r#"{"prompt": "Q?", "chosen": " a", "rejected": " b"}"#;
    let cases: &[(&str, &str, &str)] = &[
        (r#"{"prompt": "Q?", "chosen": " a", "rejected": }"#, "malformed JSON", "column"),
        (r#"{"prompt": "Q?", "rejected": " b"}"#, "\"chosen\"", "missing field \"chosen\""),
        (r#"{"prompt": "Q?", "chosen": 5, "rejected": " b"}"#, "\"chosen\"", "found a number"),
        (r#"{"prompt": 5, "chosen": " a", "rejected": " b"}"#, "\"prompt\"", "found a number"),
        (r#"{"prompt": "Q?", "chosen": " a", "rejected": ""}"#, "\"rejected\"", "empty completion"),
        (
            r#"{"prompt": "Q?", "chosen": [], "rejected": [{"role": "assistant", "content": "b"}]}"#,
            "\"chosen\"",
            "empty completion",
        ),
        (
            r#"{"prompt": "Q?", "chosen": " a", "rejected": " b", "alpha": 0.3}"#,
            "\"alpha\"",
            "outside [0.5, 1]",
        ),
        (
            r#"{"prompt": "Q?", "chosen": " a", "rejected": " b", "alpha": 1.5}"#,
            "\"alpha\"",
            "outside [0.5, 1]",
        ),
        (
            r#"{"prompt": "Q?", "chosen": " a", "rejected": " b", "alpha": "high"}"#,
            "\"alpha\"",
            "found a string",
        ),
        (
            r#"{"prompt": "Q?", "chosen": " a", "rejected": " b", "rationale": 3}"#,
            "\"rationale\"",
            "found a number",
        ),
        (
            r#"{"prompt": [{"role": "robot", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}"#,
            "\"prompt[0].role\"",
            "unknown role \"robot\"",
        ),
        (
            r#"{"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}"#,
            "\"prompt[0].content\"",
            "missing field \"content\"",
        ),
        (
            r#"{"prompt": [{"role": "user", "content": "Hi", "name": "x"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}"#,
            "\"prompt[0]\"",
            "unexpected key \"name\"",
        ),
        (
            r#"{"prompt": [{"role": "user", "content": "Hi"}], "chosen": " a", "rejected": " b"}"#,
            "\"chosen\"",
            "use one form",
        ),
        (
            r#"{"prompt": "Q?", "responses": [" only one"]}"#,
            "\"responses\"",
            "ranked list too short",
        ),
        (
            r#"{"prompt": "Q?", "responses": [" 1", " 2", " 3", " 4", " 5", " 6", " 7", " 8", " 9"]}"#,
            "\"responses\"",
            "ranked list too long",
        ),
        (r#"{"prompt": "Q?", "responses": [" a", ""]}"#, "\"responses[1]\"", "empty completion"),
        (r#"{"prompt": "Q?", "responses": " a b"}"#, "\"responses\"", "found a string"),
        (r#"{"responses": [" a", " b"]}"#, "\"prompt\"", "missing field \"prompt\""),
        (r#"{"prompt": "2+2=", "completion": "4", "label": 1}"#, "\"label\"", "expected true"),
        (r#"{"prompt": "2+2=", "completion": "4"}"#, "\"label\"", "missing field \"label\""),
        (
            r#"{"prompt": "2+2=", "completion": "", "label": true}"#,
            "\"completion\"",
            "empty completion",
        ),
        (
            r#"{"chosen": " a", "rejected": " b", "rejected_prompt": "B"}"#,
            "\"rejected_prompt\"",
            "explicit \"prompt\"",
        ),
        (
            r#"{"prompt": "Q?", "chosen": " a", "rejected": " b", "responses": [" a", " b"]}"#,
            "\"responses\"",
            "not both",
        ),
    ];
    for (bad, field, what) in cases {
        let text = format!("{good}\n\n{bad}\n{good}\n");
        let err = err_of(&text);
        assert!(err.contains("line 3"), "{bad}: {err}");
        assert!(err.contains(field), "{bad}: expected field {field} in {err}");
        assert!(err.contains(what), "{bad}: expected {what:?} in {err}");
    }
    // A line that is JSON but not an object.
    let err = err_of(&format!("{good}\n[1, 2]\n"));
    assert!(err.contains("line 2") && err.contains("JSON object"), "{err}");
    // The JSON error reports our line, not serde's "line 1".
    let err = err_of(&format!("{good}\n{good}\n{{\"prompt\": \"Q?\"\n"));
    assert!(err.contains("line 3") && !err.contains("line 1"), "{err}");
}

#[test]
fn empty_input_is_an_error() {
    for text in ["", "\n\n", "   \n\t\n"] {
        let err = err_of(text);
        assert!(err.contains("no records"), "{err}");
    }
}

#[test]
fn file_errors_carry_the_file_name() {
    let dir = std::env::temp_dir().join(format!("alignlab-data-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("prefs.jsonl");
    std::fs::write(&path, "{\"prompt\": \"Q?\", \"chosen\": \" a\", \"rejected\": \" b\"}\n{\"prompt\": \"Q?\", \"chosen\": \" a\"}\n").unwrap();
    let err = read_jsonl_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("prefs.jsonl") && err.contains("line 2") && err.contains("\"rejected\""),
        "{err}"
    );
    std::fs::write(&path, "{\"prompt\": \"Q?\", \"chosen\": \" a\", \"rejected\": \" b\"}\n")
        .unwrap();
    assert_eq!(read_jsonl_file(&path).unwrap().len(), 1);
    let missing = read_jsonl_file(&dir.join("nope.jsonl")).unwrap_err().to_string();
    assert!(missing.contains("nope.jsonl"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn records_serialize_through_serde_as_their_jsonl_object() {
    let records = parse_jsonl(ALL_FORMATS).unwrap();
    let json = serde_json::to_string(&records).unwrap();
    let back: Vec<Record> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, records);
    let bad: Result<Record, _> = serde_json::from_value(
        json!({"prompt": "Q?", "chosen": " a", "rejected": " b", "alpha": 0.1}),
    );
    assert!(bad.unwrap_err().to_string().contains("alpha"));
}

#[test]
fn a_key_given_twice_on_a_line_is_an_error_not_a_silent_choice() {
    let err = err_of(concat!(
        "{\"prompt\": \"Q?\", \"chosen\": \" a\", \"rejected\": \" b\"}\n",
        "{\"prompt\": \"Q?\", \"chosen\": \" a\", \"rejected\": \" b\", \"chosen\": \" c\"}\n"
    ));
    assert!(
        err.starts_with("line 2: malformed JSON at column")
            && err.contains("duplicate key \"chosen\""),
        "{err}"
    );
}

#[test]
fn file_reads_are_bounded_and_report_bad_utf8_by_line() {
    let err = read_jsonl_file(std::path::Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(err.contains("/dev/zero") && err.contains("not a regular file"), "{err}");
    let dir = std::env::temp_dir().join(format!("alignlab-data-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("latin1.jsonl");
    let mut bytes = b"{\"prompt\": \"Q?\", \"chosen\": \" a\", \"rejected\": \" b\"}\n".to_vec();
    bytes.extend_from_slice(
        b"{\"prompt\": \"Caf\xe9\", \"chosen\": \" a\", \"rejected\": \" b\"}\n",
    );
    std::fs::write(&path, bytes).unwrap();
    let err = read_jsonl_file(&path).unwrap_err().to_string();
    assert!(err.contains("latin1.jsonl, line 2: not UTF-8") && err.contains("column 16"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
