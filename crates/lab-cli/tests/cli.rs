//! The `alignlab` binary as a user runs it: JSON out, clear errors, nothing written on failure.

use serde_json::Value;

mod common;
use common::{alignlab, scratch, write};
use std::path::Path;

const PAIRS: &str = "{\"prompt\": \"Is fire hot?\", \"chosen\": \" Yes.\", \"rejected\": \" No.\"}\n\
{\"prompt\": \"Is ice hot?\", \"chosen\": \" No.\", \"rejected\": \" Yes.\"}\n\
{\"chosen\": \"Sky? Blue.\", \"rejected\": \"Sky? Green.\"}\n\
{\"prompt\": [{\"role\": \"user\", \"content\": \"Say hi\"}], \"chosen\": [{\"role\": \"assistant\", \"content\": \"Hi!\"}], \"rejected\": [{\"role\": \"assistant\", \"content\": \"Bye.\"}]}\n";

#[test]
fn losses_prints_every_trl_loss_type() {
    let dir = scratch("losses");
    let input = write(
        &dir,
        "logps.json",
        r#"{"policy_chosen_logps": [-5.0, -7.5], "policy_rejected_logps": [-6.0, -7.0],
        "reference_chosen_logps": [-5.5, -7.0], "reference_rejected_logps": [-5.8, -7.2],
        "chosen_lengths": [5, 8], "rejected_lengths": [6, 7],
        "params": {"beta": 0.1, "label_smoothing": 0.1, "simpo_gamma": 0.5, "discopop_tau": 0.05}}"#,
    );
    let (code, stdout, stderr) = alignlab(&["losses", "--input", &input]);
    assert_eq!(code, 0, "{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    let names = [
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "aot",
        "aot_unpaired",
        "apo_zero",
        "apo_down",
        "discopop",
        "sft",
        "sigmoid_norm",
    ];
    for name in names {
        let entry = &json[name];
        assert_eq!(entry["losses"].as_array().map(Vec::len), Some(2), "{name}: {entry}");
        assert_eq!(entry["chosen_rewards"].as_array().map(Vec::len), Some(2), "{name}");
    }
    // Δ = (−5 + 5.5) − (−6 + 5.8) = 0.7 for pair 0: hinge = max(0, 1 − 0.07) = 0.93.
    let hinge0 = json["hinge"]["losses"][0].as_f64().unwrap();
    assert!((hinge0 - 0.93).abs() < 1e-12, "{hinge0}");
    let sigmoid0 = json["sigmoid"]["losses"][0].as_f64().unwrap();
    let expected = (1.0f64 + (-0.07f64).exp()).ln();
    assert!((sigmoid0 - expected).abs() < 1e-12, "{sigmoid0} vs {expected}");
}

#[test]
fn losses_rejects_nan_and_bad_beta_naming_the_field() {
    let dir = scratch("losses-bad");
    let input = write(
        &dir,
        "nan.json",
        r#"{"policy_chosen_logps": [-5.0, NaN], "policy_rejected_logps": [-6.0, -7.0], "reference_chosen_logps": [-5.5, -7.0], "reference_rejected_logps": [-5.8, -7.2], "chosen_lengths": [5, 8], "rejected_lengths": [6, 7], "params": {"beta": 0.1}}"#,
    );
    let (code, _, stderr) = alignlab(&["losses", "--input", &input]);
    assert_ne!(code, 0);
    assert!(stderr.contains("nan.json"), "{stderr}");
    let input = write(
        &dir,
        "beta.json",
        r#"{"policy_chosen_logps": [-5.0], "policy_rejected_logps": [-6.0], "reference_chosen_logps": [-5.5], "reference_rejected_logps": [-5.8], "chosen_lengths": [5], "rejected_lengths": [6], "params": {"beta": 0}}"#,
    );
    let (code, _, stderr) = alignlab(&["losses", "--input", &input]);
    assert_ne!(code, 0);
    assert!(stderr.contains("beta"), "{stderr}");
}

#[test]
fn train_writes_one_metrics_line_per_step_and_a_loadable_model() {
    let dir = scratch("train");
    let data = write(&dir, "pairs.jsonl", PAIRS);
    let out = dir.join("metrics.jsonl").display().to_string();
    let model = dir.join("model").display().to_string();
    let (code, stdout, stderr) = alignlab(&[
        "train",
        "--data",
        &data,
        "--loss",
        "sigmoid",
        "--beta",
        "0.1",
        "--lr",
        "1e-2",
        "--steps",
        "12",
        "--seed",
        "3",
        "--batch-size",
        "4",
        "--out",
        &out,
        "--save",
        &model,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["steps"], 12);
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "eval/ranking_accuracy",
        "eval/idealized_ranking_accuracy",
        "eval/topk_entropy",
        "eval/kl",
        "eval/kl_sampled",
    ] {
        assert!(lines[11][key].is_number(), "missing {key}: {}", lines[11]);
    }
    // the sampled KL at every 10th evaluation and the last step only
    let sampled: Vec<usize> =
        (0..12).filter(|&i| lines[i].get("eval/kl_sampled").is_some()).collect();
    assert_eq!(sampled, [9, 11]);
    assert!(lines[11]["eval/kl"].as_f64().unwrap() > lines[0]["eval/kl"].as_f64().unwrap());
    assert!(lines[11]["loss"].as_f64().unwrap() < lines[0]["loss"].as_f64().unwrap());
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], "gpt2");
    // The trained model evaluates against the starting one: rewards are now positive.
    let (code, stdout, stderr) = alignlab(&["eval", "--model", &model, "--data", &data]);
    assert_eq!(code, 0, "{stderr}");
    let eval: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(eval["pairs"].as_array().unwrap().len(), 4);
    assert!(eval["instruments"]["eval/ranking_accuracy"].is_number());
}

#[test]
fn train_with_bad_data_names_the_line_and_writes_nothing() {
    let dir = scratch("train-bad");
    let data = write(
        &dir,
        "pairs.jsonl",
        &format!("{PAIRS}{{\"prompt\": \"Q\", \"chosen\": \"\", \"rejected\": \" x\"}}\n"),
    );
    let out = dir.join("metrics.jsonl");
    let (code, _, stderr) =
        alignlab(&["train", "--data", &data, "--steps", "2", "--out", &out.display().to_string()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("line 5") && stderr.contains("chosen"), "{stderr}");
    assert!(!out.exists() && !out.with_extension("model").exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "only the input file remains");

    let data = write(&dir, "bad.jsonl", "{\"prompt\": \"Q\", \"chosen\": \"a\"}\n");
    let (code, _, stderr) =
        alignlab(&["train", "--data", &data, "--out", &out.display().to_string()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("line 1") && stderr.contains("rejected"), "{stderr}");

    let (code, _, stderr) =
        alignlab(&["train", "--data", &data, "--beta", "-1", "--out", &out.display().to_string()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("beta"), "{stderr}");
    let (code, _, stderr) = alignlab(&[
        "train",
        "--data",
        &data,
        "--loss",
        "robust",
        "--label-smoothing",
        "0.7",
        "--out",
        &out.display().to_string(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("label_smoothing"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn bench_prints_one_json_line() {
    let (code, stdout, stderr) =
        alignlab(&["bench", "--config", "tiny", "--engine", "cpu", "--steps", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let json: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(stdout.trim().lines().count(), 1);
    assert_eq!(json["config"], "tiny");
    assert!(json["steps_per_s"].as_f64().unwrap() > 0.0);
    assert!(json["final_loss"].as_f64().unwrap().is_finite());
}

/// `alignlab bench` (tiny, one step) with `flags` fails, prints nothing, and its error
/// names every one of `words`.
fn assert_bench_refuses(flags: &[&str], words: &[&str]) {
    let (code, stdout, stderr) =
        alignlab(&[&["bench", "--config", "tiny", "--steps", "1"][..], flags].concat());
    assert_ne!(code, 0, "{flags:?}");
    assert!(stdout.is_empty(), "{flags:?}: {stdout}");
    assert!(words.iter().all(|w| stderr.contains(w)), "{flags:?}: {stderr}");
}

#[test]
fn bench_times_a_lora_step_at_the_shape_asked_for() {
    let (code, stdout, stderr) = alignlab(&[
        "bench",
        "--config",
        "tiny",
        "--steps",
        "1",
        "--pairs",
        "2",
        "--seq-len",
        "32",
        "--lora-rank",
        "2",
        "--lora-targets",
        "c_attn,c_fc",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let json: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(json["adapter"].as_str().unwrap().contains("LoRA (r 2"), "{json}");
    // r·(in + out) per adapted matrix: c_attn 2·(64 + 192), c_fc 2·(64 + 256), two layers
    assert_eq!(json["lora"]["trainable"], 2 * (2 * (64 + 192) + 2 * (64 + 256)), "{json}");
    assert_eq!((json["batch_pairs"].as_u64(), json["seq_len"].as_u64()), (Some(2), Some(32)));
    assert!(json["final_loss"].as_f64().unwrap().is_finite());
    assert_bench_refuses(&["--engine", "cpu", "--seq-len", "65"], &["pairs", "2..=64"]);
}

#[test]
fn bench_parity_needs_the_gpu_engine() {
    assert_bench_refuses(&["--engine", "cpu", "--parity"], &["parity", "--engine gpu"]);
}

/// The bench times the lab's step on either engine: the GPU's (one submission a step) and
/// the CPU's train the same model to the same loss, and `--parity` finds the GPU within
/// tolerance of the CPU engine. Needs a WebGPU adapter (lavapipe in CI);
/// ALIGNLAB_SKIP_GPU=1 skips it where there is none.
#[test]
fn gpu_bench_gives_the_cpu_bench_s_loss() {
    let mut losses = Vec::new();
    for args in [&["--engine", "gpu", "--parity"][..], &["--engine", "cpu"][..]] {
        let (code, stdout, stderr) =
            alignlab(&[&["bench", "--config", "tiny", "--steps", "3"][..], args].concat());
        if code != 0
            && stderr.contains("no GPU adapter found")
            && std::env::var("ALIGNLAB_SKIP_GPU").is_ok_and(|v| v == "1")
        {
            eprintln!("SKIPPED (ALIGNLAB_SKIP_GPU=1): {stderr}");
            return;
        }
        assert_eq!(code, 0, "{args:?}: {stderr}");
        let json: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(json["engine"], args[1]);
        let parity = &json["parity"];
        if args.contains(&"--parity") {
            eprintln!("parity: {parity}");
            assert_eq!(parity["ok"], true, "{parity}");
            assert_eq!(parity["losses"]["gpu"].as_array().map(Vec::len), Some(3), "{parity}");
            for part in ["token_logps", "seq_logps", "gradients", "losses"] {
                let (err, tol) = (
                    parity[part]["max_abs_err"].as_f64().unwrap(),
                    parity[part]["tol"].as_f64().unwrap(),
                );
                assert!(err <= tol && tol > 0.0, "{part}: {parity}");
            }
        } else {
            assert!(parity.is_null());
        }
        losses.push(json["final_loss"].as_f64().unwrap());
    }
    eprintln!("final losses (gpu, cpu): {losses:?}");
    assert!((losses[0] - losses[1]).abs() <= 1e-5, "{losses:?}");
}

#[test]
fn scenario_sweep_reports_every_cell_of_the_grid_and_its_pass_rate() {
    // The ranking-accuracy scenario cut to 2 steps: the grid's shape, its learning rates and
    // the pass count, not the phenomenon, are under test.
    let dir = scratch("sweep");
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/scenarios/ranking-accuracy");
    let scenario = dir.join("scenarios/ranking-accuracy");
    std::fs::create_dir_all(&scenario).unwrap();
    for file in ["data.jsonl", "README.md"] {
        std::fs::copy(shipped.join(file), scenario.join(file)).unwrap();
    }
    let preset = std::fs::read_to_string(shipped.join("preset.json")).unwrap();
    let mut preset: Value = serde_json::from_str(&preset).unwrap();
    preset["experiment"]["steps"] = 2.into();
    let preset_lr = preset["experiment"]["lr"].as_f64().unwrap();
    std::fs::write(scenario.join("preset.json"), preset.to_string()).unwrap();
    let starter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/starter");
    let (assets, model) = (dir.display().to_string(), starter.display().to_string());
    let base = ["scenario", "ranking-accuracy", "--assets", &assets, "--model", &model];

    let (code, stdout, stderr) = alignlab(&[&base[..], &["--sweep"]].concat());
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stderr}"));
    let grid = report["grid"].as_array().unwrap();
    assert_eq!(grid.len(), 15);
    let passed = grid.iter().filter(|c| c["passed"] == true).count();
    assert_eq!(report["passed"], passed);
    assert_eq!(report["robust"], passed >= 12);
    assert_eq!(code, if passed >= 12 { 0 } else { 1 }, "{stderr}");
    for (i, cell) in grid.iter().enumerate() {
        let factor = [1.0 / 3.0, 1.0, 3.0][i / 5];
        assert_eq!(cell["seed"], (i % 5) as u64);
        let lr = cell["lr"].as_f64().unwrap();
        assert!((lr - preset_lr * factor).abs() < 1e-15, "cell {i}: lr {lr}");
    }

    // --seed and --lr override one run; the report's experiment says so.
    let (code, stdout, stderr) = alignlab(&[&base[..], &["--seed", "3", "--lr", "1e-5"]].concat());
    assert!(code == 0 || code == 1, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let experiment = report["experiment"].as_str().unwrap();
    assert!(experiment.contains("seed=3") && experiment.contains("lr=0.00001"), "{experiment}");
}

#[test]
fn tokenize_prints_ids_and_pieces_and_tokenizer_train_keeps_answers_whole() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let gpt2 = assets.join("tokenizers/gpt2").display().to_string();
    let (code, stdout, stderr) =
        alignlab(&["tokenize", "--tokenizer", &gpt2, "--text", "Hello world"]);
    assert_eq!(code, 0, "{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["ids"], serde_json::json!([15496, 995])); // GPT-2's own ids
    assert_eq!(out["pieces"], serde_json::json!(["Hello", "Ġworld"]));
    let starter = assets.join("models/starter").display().to_string();
    let (code, stdout, _) = alignlab(&["tokenize", "--model", &starter, "--text", " No"]);
    assert_eq!(code, 0);
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (out["tokenizer"].as_str(), out["tokens"].as_u64()),
        (Some("byte-level BPE"), Some(1))
    );

    let dir = scratch("tokenizer");
    let trained = dir.join("tok").display().to_string();
    let (code, stdout, stderr) =
        alignlab(&["tokenizer", "train", "--out", &trained, "--vocab-size", "400"]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["vocab_size"], 400);
    for answer in report["required"].as_array().unwrap() {
        assert_eq!(answer["ids"].as_array().unwrap().len(), 1, "{answer}");
    }
    let (code, stdout, _) = alignlab(&["tokenize", "--tokenizer", &trained, "--text", " Never"]);
    assert_eq!(code, 0);
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["pieces"], serde_json::json!(["ĠNever"]));
    // written once: a second run needs --force
    let (code, _, stderr) = alignlab(&["tokenizer", "train", "--out", &trained]);
    assert_eq!(code, 2);
    assert!(stderr.contains("already exists"), "{stderr}");
}

/// A model with a trained BPE tokenizer, through every command that reads text: pretrained
/// with `--tokenizer`, its tokenizer kept in the folder (HF layout), read back by
/// `tokenize`, `train` (which saves it with the new weights) and `sample`; a folder whose
/// vocabulary disagrees with its tokenizer is refused.
#[test]
fn a_bpe_model_keeps_its_tokenizer_through_pretrain_train_and_sample() {
    let dir = scratch("bpe-model");
    let tok = dir.join("tok").display().to_string();
    let (code, _, stderr) = alignlab(&["tokenizer", "train", "--out", &tok, "--vocab-size", "400"]);
    assert_eq!(code, 0, "{stderr}");
    let model = dir.join("model").display().to_string();
    let (code, stdout, stderr) = alignlab(&[
        "pretrain",
        "--out",
        &model,
        "--tokenizer",
        &tok,
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--warmup",
        "1",
        "--d-model",
        "16",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--ctx",
        "64",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["tokenizer"], "byte-level BPE");
    assert_eq!(report["config"]["vocab_size"], 400);
    let read = |path: &Path| std::fs::read_to_string(path).unwrap();
    let model_dir = Path::new(&model);
    assert_eq!(
        read(&model_dir.join("tokenizer.json")),
        read(&Path::new(&tok).join("tokenizer.json"))
    );
    assert!(model_dir.join("tokenizer_config.json").exists());

    let (code, stdout, _) = alignlab(&["tokenize", "--model", &model, "--text", " Never"]);
    assert_eq!(code, 0);
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["pieces"], serde_json::json!(["ĠNever"]));

    let data = write(&dir, "pairs.jsonl", PAIRS);
    let trained = dir.join("trained").display().to_string();
    let metrics = dir.join("metrics.jsonl").display().to_string();
    let (code, _, stderr) = alignlab(&[
        "train", "--model", &model, "--data", &data, "--steps", "2", "--out", &metrics, "--save",
        &trained,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let trained_dir = Path::new(&trained);
    assert_eq!(read(&trained_dir.join("tokenizer.json")), read(&model_dir.join("tokenizer.json")));
    let prompts = write(&dir, "prompts.txt", "Is fire hot?\nCan a fish walk?\n");
    let sampled = dir.join("sampled.jsonl").display().to_string();
    let (code, _, stderr) = alignlab(&[
        "sample",
        "--model",
        &trained,
        "--reference",
        &model,
        "--prompts",
        &prompts,
        "--out",
        &sampled,
        "--n",
        "4",
    ]);
    assert!(code == 0 || stderr.contains("no prompt got two distinct"), "{stderr}");

    // the same weights with a config claiming the character tokenizer's 96 ids: refused
    let config = trained_dir.join("config.json");
    let text = read(&config).replace("\"vocab_size\": 400", "\"vocab_size\": 96");
    std::fs::write(&config, text).unwrap();
    let (code, _, stderr) = alignlab(&[
        "train",
        "--model",
        &trained,
        "--data",
        &data,
        "--steps",
        "1",
        "--out",
        &dir.join("m2.jsonl").display().to_string(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("tokenizer.json") && stderr.contains("400 ids") && stderr.contains("96"),
        "{stderr}"
    );
}

#[test]
fn corpus_writes_the_pretraining_corpus_as_jsonl_the_same_each_time() {
    let dir = scratch("corpus");
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    for path in [&a, &b] {
        let (code, stdout, stderr) = alignlab(&["corpus", "--out", &path.display().to_string()]);
        assert_eq!(code, 0, "{stderr}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["examples"], 2250); // the starter model's corpus (seed 0)
    }
    let text = std::fs::read_to_string(&a).unwrap();
    assert_eq!(text, std::fs::read_to_string(&b).unwrap());
    assert_eq!(text.lines().count(), 2250);
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(first["prompt"].is_string() && first["completion"].is_string(), "{first}");
}

/// `train --lora-rank` trains adapters on the frozen starter and saves them as PEFT does;
/// a bad target is refused by its flag and writes nothing; `eval --adapters` reads them.
#[test]
fn train_with_lora_saves_peft_adapters_and_leaves_the_base_alone() {
    let dir = scratch("train-lora");
    let starter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/starter");
    let data = starter.join("../../scenarios/3d-properties/data.jsonl").display().to_string();
    let starter = starter.display().to_string();
    let out = dir.join("metrics.jsonl").display().to_string();
    let adapters = dir.join("adapters");
    let saved = adapters.display().to_string();
    let args = |targets: &'static str| {
        let mut args = vec!["train", "--model", &starter, "--data", &data, "--lr", "2e-3"];
        args.extend(["--batch-size", "8", "--steps", "10", "--lora-rank", "4"]);
        args.extend(["--lora-targets", targets, "--out", &out, "--save", &saved]);
        args
    };
    let (code, _, stderr) = alignlab(&args("c_attn,q_proj"));
    assert_eq!(code, 2);
    assert!(stderr.contains("lora_targets") && stderr.contains("q_proj"), "{stderr}");
    assert!(!Path::new(&out).exists() && !adapters.exists());

    let (code, stdout, stderr) = alignlab(&args("c_attn,mlp.c_proj"));
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert!(summary["engine"].as_str().unwrap().contains("LoRA (r 4"), "{summary}");
    let mut files: Vec<String> = std::fs::read_dir(&adapters)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["adapter_config.json", "adapter_model.safetensors"]);
    let config_text = std::fs::read_to_string(adapters.join("adapter_config.json")).unwrap();
    let config: Value = serde_json::from_str(&config_text).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["target_modules"], serde_json::json!(["c_attn", "mlp.c_proj"]));
    assert_eq!(config["base_model_name_or_path"], starter.as_str());
    // the adapters read back; B has moved off PEFT's zero init
    let lora = lab_core::lora::LoraConfig::from_adapter_config(&config_text).unwrap();
    let model = lab_core::checkpoint::load_dir(Path::new(&starter)).unwrap();
    let bytes = std::fs::read(adapters.join("adapter_model.safetensors")).unwrap();
    let trained = lora.adapters_from_safetensors(&model.config, &bytes).unwrap();
    let b_moved = lora
        .tensors(&model.config)
        .iter()
        .filter(|t| t.side == lab_core::lora::Side::B)
        .all(|t| trained[t.offset..t.offset + t.shape.0 * t.shape.1].iter().any(|&x| x != 0.0));
    assert!(b_moved);

    // `eval --adapters` scores the adapted model against the starter itself (the adapters
    // off): DPO has pushed the rejected answers down
    let (code, stdout, stderr) =
        alignlab(&["eval", "--model", &starter, "--adapters", &saved, "--data", &data]);
    assert_eq!(code, 0, "{stderr}");
    let eval: Value = serde_json::from_str(&stdout).unwrap();
    assert!(eval["instruments"]["eval/logps_rejected_change"].as_f64().unwrap() < -1.0, "{eval}");
    // `sample --adapters` samples the adapted policy: greedy, where it and the starter
    // differ, the policy now says the chosen answer and the starter the rejected one
    let samples = dir.join("samples.jsonl");
    let sample_out = samples.display().to_string();
    let (code, stdout, stderr) = alignlab(&[
        "sample",
        "--model",
        &starter,
        "--adapters",
        &saved,
        "--reference",
        &starter,
        "--prompts",
        &data,
        "--n",
        "1",
        "--temperature",
        "0",
        "--out",
        &sample_out,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lists: Value = serde_json::from_str(&stdout).unwrap();
    assert!(lists["lists"].as_u64().unwrap() >= 10, "{lists}");
    for line in std::fs::read_to_string(&samples).unwrap().lines() {
        let list: Value = serde_json::from_str(line).unwrap();
        assert_eq!(list["origins"], serde_json::json!(["policy", "reference"]), "{list}");
        let said = |i: usize| list["responses"][i].as_str().unwrap().to_string();
        assert!(said(0).starts_with(" I love") && said(1).starts_with(" I hate"), "{list}");
    }

    // "Export to TRL" continues from them: the script passes PEFT's LoraConfig and loads the
    // adapters, copied beside it
    let export = dir.join("trl").display().to_string();
    let export_args = |extra: &[&'static str]| {
        let mut args = vec!["export-trl", "--model", &starter, "--data", &data, "--out", &export];
        args.extend(["--experiment", "steps=3", "--adapters", &saved]);
        args.extend_from_slice(extra);
        args
    };
    let (code, _, stderr) = alignlab(&export_args(&["--lora-rank", "2"]));
    assert_eq!(code, 2, "new and continued adapters at once");
    assert!(stderr.contains("--lora-rank") && !Path::new(&export).exists(), "{stderr}");
    let (code, stdout, stderr) = alignlab(&export_args(&[]));
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["peft_config"]["r"], 4, "{summary}");
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let copied = std::fs::read(dir.join("trl/adapters").join(file)).unwrap();
        assert_eq!(copied, std::fs::read(adapters.join(file)).unwrap(), "{file}");
    }
    let script = std::fs::read_to_string(dir.join("trl/train_dpo.py")).unwrap();
    for needle in ["peft_config = LoraConfig(r=4", "\"--adapters\", default=\"adapters\""] {
        assert!(script.contains(needle), "missing {needle}");
    }

    // an adapter folder of another kind is refused, naming the file and the field, by
    // every command that reads one
    std::fs::write(adapters.join("adapter_config.json"), config_text.replace("LORA", "IA3"))
        .unwrap();
    let (code, _, stderr) =
        alignlab(&["eval", "--model", &starter, "--adapters", &saved, "--data", &data]);
    assert_eq!(code, 2);
    assert!(stderr.contains("adapter_config.json") && stderr.contains("peft_type"), "{stderr}");
    let export = dir.join("trl2").display().to_string();
    let args = ["export-trl", "--model", &starter, "--data", &data, "--out", &export];
    let (code, _, stderr) = alignlab(&[&args[..], &["--adapters", &saved]].concat());
    assert_eq!(code, 2);
    assert!(stderr.contains("peft_type") && !Path::new(&export).exists(), "{stderr}");
}
