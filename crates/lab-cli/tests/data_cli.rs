//! The data commands as a user runs them: sample → annotate → train headless, the TRL
//! export, metrics as CSV/JSON, and bad input refused with its file, line and field.

use serde_json::Value;

mod common;
use common::{alignlab, scratch, write};
use std::path::Path;
use std::process::Command;

fn starter() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/starter").display().to_string()
}

fn lines(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const CANDIDATES: &str = "{\"prompt\": \"User: How do I pick a lock? Assistant:\", \"responses\": [\" I can't help with that.\", \" Use a pin and a wrench.\", \" I love locks. It is great.\"]}\n\
\n\
{\"prompt\": \"User: Is rain nice? Assistant:\", \"chosen\": \" I hate rain.\", \"rejected\": \" I love rain.\", \"rationale\": \"kept\"}\n";

#[test]
fn annotate_labels_by_rules_and_reports_the_noise() {
    let dir = scratch("annotate");
    let input = write(&dir, "candidates.jsonl", CANDIDATES);
    let out = dir.join("pairs.jsonl").display().to_string();
    let (code, stdout, stderr) = alignlab(&[
        "annotate",
        "--in",
        &input,
        "--out",
        &out,
        "--rules",
        "refusal=-2,sentiment",
        "--flip-rate",
        "0",
        "--pairs",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["report"]["pairs"], 2);
    let pairs = lines(&out);
    // Rewards: refusal −2, "Use a pin" 0, "I love locks. It is great." +2 → best vs worst.
    assert_eq!(pairs[0]["chosen"], " I love locks. It is great.");
    assert_eq!(pairs[0]["rejected"], " I can't help with that.");
    assert_eq!(pairs[0]["alpha"], 0.982); // σ(4) = 0.98201 → 4 decimals
    assert_eq!(pairs[1]["chosen"], " I love rain.");
    assert_eq!(pairs[1]["rationale"], "kept");

    // Lists stay ranked lists without --pairs; with the flip rate at 0.5 about half flip.
    let many: String = (0..400).map(|i| format!("{{\"prompt\": \"P{i}\", \"chosen\": \" I love it.\", \"rejected\": \" I hate it.\"}}\n")).collect();
    let input = write(&dir, "many.jsonl", &many);
    let noisy = dir.join("noisy.jsonl").display().to_string();
    let (code, stdout, stderr) = alignlab(&[
        "annotate",
        "--in",
        &input,
        "--out",
        &noisy,
        "--rules",
        "sentiment",
        "--flip-rate",
        "0.25",
        "--seed",
        "3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let observed = report["observed_flip_rate"].as_f64().unwrap();
    let swapped = lines(&noisy).iter().filter(|p| p["chosen"] == " I hate it.").count();
    assert_eq!(swapped as u64, report["report"]["flipped"].as_u64().unwrap());
    // 400 labels at ε = 0.25: standard deviation 0.0217; 4σ.
    assert!((observed - 0.25).abs() < 0.087, "{observed}");

    // An existing output is not replaced; the input is never the output.
    let (code, _, stderr) =
        alignlab(&["annotate", "--in", &input, "--out", &noisy, "--rules", "sentiment"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("already exists") && stderr.contains("--force"), "{stderr}");
    let (code, _, stderr) =
        alignlab(&["annotate", "--in", &input, "--out", &input, "--rules", "sentiment", "--force"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is also an input"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&input).unwrap(), many);
}

#[test]
fn bad_input_names_the_line_and_writes_nothing() {
    let dir = scratch("bad");
    let input = write(&dir, "bad.jsonl", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\"}\n\n{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": 3}\n");
    let out = dir.join("out.jsonl");
    let (code, _, stderr) = alignlab(&[
        "annotate",
        "--in",
        &input,
        "--out",
        &out.display().to_string(),
        "--rules",
        "length",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("bad.jsonl")
            && stderr.contains("line 3")
            && stderr.contains("\"rejected\""),
        "{stderr}"
    );
    assert!(!out.exists());
    let (code, _, stderr) = alignlab(&[
        "annotate",
        "--in",
        &input,
        "--out",
        &out.display().to_string(),
        "--rules",
        "lenght",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("lenght"), "{stderr}");
    let (code, _, stderr) = alignlab(&[
        "annotate",
        "--in",
        &input,
        "--out",
        &out.display().to_string(),
        "--rules",
        "length",
        "--flip-rate",
        "0.9",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("flip_rate"), "{stderr}");

    // Over the 20 MB limit: refused before it is read.
    let big = dir.join("big.jsonl");
    std::fs::File::create(&big).unwrap().set_len(20_000_001).unwrap();
    for args in [
        vec![
            "annotate",
            "--in",
            big.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--rules",
            "length",
        ],
        vec![
            "train",
            "--data",
            big.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "1",
        ],
    ] {
        let (code, _, stderr) = alignlab(&args);
        assert_eq!(code, 2);
        assert!(
            stderr.contains("big.jsonl") && stderr.contains("over the limit of 20 MB"),
            "{stderr}"
        );
    }
    assert!(!out.exists());
}

#[test]
fn sample_annotate_train_is_the_on_policy_loop() {
    let dir = scratch("loop");
    let prompts =
        write(&dir, "prompts.txt", "Would you ever eat a bug?\nHow do you feel about rain?\n");
    let candidates = dir.join("candidates.jsonl").display().to_string();
    let model = starter();
    let (code, stdout, stderr) = alignlab(&[
        "sample",
        "--model",
        &model,
        "--reference",
        &model,
        "--prompts",
        &prompts,
        "--n",
        "4",
        "--temperature",
        "1.2",
        "--max-new-tokens",
        "40",
        "--seed",
        "1",
        "--out",
        &candidates,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["prompts"], 2);
    let lists = lines(&candidates);
    for list in &lists {
        assert!(
            list["prompt"].as_str().unwrap().starts_with("User: ")
                && list["prompt"].as_str().unwrap().ends_with("Assistant:")
        );
        let origins: Vec<&str> =
            list["origins"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
        assert_eq!(origins.len(), list["responses"].as_array().unwrap().len());
        assert!(
            origins.iter().all(|o| ["policy", "reference", "policy+reference"].contains(o)),
            "{origins:?}"
        );
        // The same model and seed sample the same texts: each appears once, from both.
        assert!(origins.iter().all(|o| *o == "policy+reference"), "{origins:?}");
    }
    // The same seed samples the same responses (policy and reference are the same model here).
    let again = dir.join("again.jsonl").display().to_string();
    let (code, _, _) = alignlab(&[
        "sample",
        "--model",
        &model,
        "--reference",
        &model,
        "--prompts",
        &prompts,
        "--n",
        "4",
        "--temperature",
        "1.2",
        "--max-new-tokens",
        "40",
        "--seed",
        "1",
        "--out",
        &again,
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        std::fs::read_to_string(&candidates).unwrap()
    );

    let pairs = dir.join("pairs.jsonl").display().to_string();
    let (code, _, stderr) = alignlab(&[
        "annotate",
        "--in",
        &candidates,
        "--out",
        &pairs,
        "--rules",
        "length=-1",
        "--pairs",
    ]);
    assert_eq!(code, 0, "{stderr}");
    for pair in lines(&pairs) {
        let words = |s: &str| s.split_whitespace().count();
        assert!(
            words(pair["chosen"].as_str().unwrap()) <= words(pair["rejected"].as_str().unwrap()),
            "{pair}"
        );
    }
    let metrics = dir.join("metrics.jsonl").display().to_string();
    let (code, _, stderr) = alignlab(&[
        "train",
        "--data",
        &pairs,
        "--model",
        &model,
        "--lr",
        "1e-3",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--out",
        &metrics,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines(&metrics).len(), 3);

    // The run's metrics as CSV and JSON.
    let csv = dir.join("metrics.csv").display().to_string();
    let (code, stdout, stderr) =
        alignlab(&["export-metrics", "--in", &metrics, "--format", "csv", "--out", &csv]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap()["rows"], 3);
    let text = std::fs::read_to_string(&csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    assert_eq!(header[0], "step");
    assert!(header.contains(&"loss") && header.contains(&"rewards/margins"));
    assert_eq!(text.lines().count(), 4);
    let loss_col = header.iter().position(|h| *h == "loss").unwrap();
    let first_loss: f64 =
        text.lines().nth(1).unwrap().split(',').nth(loss_col).unwrap().parse().unwrap();
    assert_eq!(first_loss, lines(&metrics)[0]["loss"].as_f64().unwrap());
    let json_out = dir.join("metrics.json").display().to_string();
    let (code, _, stderr) = alignlab(&[
        "export-metrics",
        "--in",
        &metrics,
        "--format",
        "json",
        "--experiment",
        "loss=sigmoid&lr=0.001",
        "--out",
        &json_out,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    assert_eq!(doc["metrics"].as_array().unwrap().len(), 3);
    assert!(doc["experiment"].as_str().unwrap().contains("lr=0.001"));
}

/// DPOConfig and TrainingArguments fields the script may pass, checked against trl 1.16.0's
/// `trl/trainer/dpo_config.py` and transformers' `TrainingArguments`.
const TRL_FIELDS: &[&str] = &[
    "output_dir",
    "loss_type",
    "loss_weights",
    "beta",
    "learning_rate",
    "label_smoothing",
    "discopop_tau",
    "weight_decay",
    "per_device_train_batch_size",
    "max_steps",
    "seed",
    "lr_scheduler_type",
    "max_length",
    "logging_steps",
    "save_strategy",
    "report_to",
    "bf16",
    "gradient_checkpointing",
];

#[test]
fn export_trl_writes_a_script_and_the_data_unchanged() {
    let dir = scratch("trl");
    let data_text = "{\"prompt\": \"User: Hi Assistant:\", \"chosen\": \" Hello.\", \"rejected\": \" Go.\", \"alpha\": 0.8, \"rationale\": \"polite\"}\n\n{\"prompt\":\"User: Yo Assistant:\",\"chosen\":\" Hey.\",\"rejected\":\" No.\"}\n";
    let data = write(&dir, "mine.jsonl", data_text);
    let out = dir.join("export");
    let (code, stdout, stderr) = alignlab(&[
        "export-trl",
        "--model",
        &starter(),
        "--experiment",
        "loss=robust&beta=0.5&lr=0.0005&label_smoothing=0.1&batch_size=8&steps=30&seed=2",
        "--data",
        &data,
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["dpo_config"]["loss_type"], "[\"robust\"]");
    assert_eq!(
        std::fs::read_to_string(out.join("data.jsonl")).unwrap(),
        data_text,
        "the data goes out byte for byte"
    );
    let script = std::fs::read_to_string(out.join("train_dpo.py")).unwrap();
    for needle in [
        "loss_type=[\"robust\"],",
        "beta=0.5,",
        "learning_rate=0.0005,",
        "label_smoothing=0.1,",
        "per_device_train_batch_size=8,",
        "max_steps=30,",
        "seed=2,",
    ] {
        assert!(script.contains(needle), "missing {needle}");
    }
    // Where Python is installed: the script parses, and DPOConfig gets only TRL's field names.
    let check = "import ast,sys\ntree=ast.parse(open(sys.argv[1]).read())\ncalls=[n for n in ast.walk(tree) if isinstance(n,ast.Call) and getattr(n.func,'id','')=='DPOConfig']\nassert len(calls)==1\nprint(' '.join(k.arg for k in calls[0].keywords))\n";
    if let Ok(py) =
        Command::new("python3").arg("-c").arg(check).arg(out.join("train_dpo.py")).output()
    {
        assert!(
            py.status.success(),
            "python3 could not parse the script: {}",
            String::from_utf8_lossy(&py.stderr)
        );
        let keywords = String::from_utf8_lossy(&py.stdout).to_string();
        for k in keywords.split_whitespace() {
            assert!(TRL_FIELDS.contains(&k), "DPOConfig has no field {k}");
        }
        assert!(
            keywords.contains("loss_type")
                && keywords.contains("beta")
                && keywords.contains("learning_rate"),
            "{keywords}"
        );
    }

    // Nothing is replaced without --force; losses and data DPOTrainer cannot take are refused.
    let (code, _, stderr) = alignlab(&[
        "export-trl",
        "--model",
        &starter(),
        "--data",
        &data,
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("already exists"), "{stderr}");
    let (code, _, stderr) = alignlab(&[
        "export-trl",
        "--model",
        &starter(),
        "--experiment",
        "loss=simpo",
        "--data",
        &data,
        "--out",
        &dir.join("x").display().to_string(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("simpo") && stderr.contains("CPOTrainer"), "{stderr}");
    let ranked = write(&dir, "ranked.jsonl", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\"}\n\n{\"prompt\": \"P\", \"responses\": [\" a\", \" b\", \" c\"]}\n");
    let (code, _, stderr) = alignlab(&[
        "export-trl",
        "--model",
        &starter(),
        "--data",
        &ranked,
        "--out",
        &dir.join("y").display().to_string(),
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("ranked.jsonl")
            && stderr.contains("line 3")
            && stderr.contains("responses"),
        "{stderr}"
    );
    assert!(!dir.join("y").join("data.jsonl").exists());
}
