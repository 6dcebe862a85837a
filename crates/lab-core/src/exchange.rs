//! What crosses the lab's border: the size limit on imported files, a run's metrics as CSV
//! and JSON, and "Export to TRL" — a Python script that trains the same experiment with
//! `trl.DPOTrainer` (TRL 1.x), for users who outgrow the browser. The page and the CLI both
//! call these, so they read and write the same files.

use crate::data::{parse_jsonl, Record};
use crate::error::{LabError, Result};
use crate::experiment::ExperimentConfig;
use crate::lora::LoraConfig;
use crate::loss::{LossKind, LossMix};
use std::collections::BTreeMap;

/// Largest file the page and the CLI import: 20 MB (20 × 10⁶ bytes), far above any
/// dataset a char-level model in a browser tab trains on, small enough to hold in memory
/// and in browser storage.
pub const MAX_IMPORT_BYTES: usize = 20_000_000;

/// Refuse a file over [`MAX_IMPORT_BYTES`] before reading it, naming the file and sizes.
pub fn check_import_size(name: &str, bytes: u64) -> Result<()> {
    if bytes > MAX_IMPORT_BYTES as u64 {
        return Err(LabError::Parse {
            file: Some(name.to_string()),
            line: None,
            field: None,
            msg: format!("{:.1} MB is over the import limit of {} MB; split the file or keep only the records you need", bytes as f64 / 1e6, MAX_IMPORT_BYTES / 1_000_000),
        });
    }
    Ok(())
}

/// Parse an imported JSONL file: its size checked first, then every line; the first bad
/// line is the error (file, line, field) and nothing is imported.
pub fn import_jsonl(name: &str, text: &str) -> Result<Vec<Record>> {
    check_import_size(name, text.len() as u64)?;
    parse_jsonl(text).map_err(|e| e.in_file(name))
}

// ---------------------------------------------------------------------------------------
// Metrics

/// One row per step, TRL's metric names as keys (`loss`, `rewards/chosen`, ...).
pub type MetricsRow = BTreeMap<String, f64>;

/// The columns of a metrics table: `step` first, then every other key in name order.
fn columns(rows: &[MetricsRow]) -> Vec<String> {
    let mut names: Vec<String> = rows.iter().flat_map(|r| r.keys().cloned()).collect();
    names.sort();
    names.dedup();
    if let Some(i) = names.iter().position(|n| n == "step") {
        let step = names.remove(i);
        names.insert(0, step);
    }
    names
}

/// A number as CSV/JSON writes it: integers without a decimal point, others in Rust's
/// shortest round-trip form; NaN and ±∞ as an empty CSV cell.
fn csv_number(x: f64) -> String {
    if !x.is_finite() {
        String::new()
    } else if x == x.trunc() && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// The metrics as CSV: a header of the columns, one line per row, an empty cell where a
/// row lacks a metric (step 0 has no loss). Lines end with `\n`.
pub fn metrics_csv(rows: &[MetricsRow]) -> String {
    let cols = columns(rows);
    let mut out = cols.join(",");
    out.push('\n');
    for row in rows {
        let cells: Vec<String> =
            cols.iter().map(|c| row.get(c).map(|&x| csv_number(x)).unwrap_or_default()).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// The metrics as a JSON document: `{"experiment": <URL form>, "label", "metrics": [rows]}`
/// (non-finite values as null).
pub fn metrics_json(label: &str, experiment: &ExperimentConfig, rows: &[MetricsRow]) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::Value::Object(
                r.iter()
                    .map(|(k, &v)| {
                        (
                            k.clone(),
                            serde_json::Number::from_f64(v)
                                .map_or(serde_json::Value::Null, serde_json::Value::Number),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let doc =
        serde_json::json!({ "label": label, "experiment": experiment.to_query(), "metrics": rows });
    serde_json::to_string_pretty(&doc).expect("metrics serialize") + "\n"
}

/// Read metrics back from CSV (as [`metrics_csv`] writes it); errors name the line and column.
pub fn parse_metrics_csv(text: &str) -> Result<Vec<MetricsRow>> {
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        return Err(LabError::parse("empty CSV: expected a header line"));
    };
    let cols: Vec<&str> = header.split(',').collect();
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != cols.len() {
            return Err(LabError::parse(format!(
                "{} cells, the header has {}",
                cells.len(),
                cols.len()
            ))
            .at_line(i + 1));
        }
        let mut row = MetricsRow::new();
        for (col, cell) in cols.iter().zip(cells) {
            if !cell.is_empty() {
                let x = cell.parse::<f64>().map_err(|_| {
                    LabError::parse(format!("{cell:?} is not a number"))
                        .in_field(col)
                        .at_line(i + 1)
                })?;
                row.insert(col.to_string(), x);
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Export to TRL

/// The `DPOConfig` arguments of an experiment: `loss_type` (a list in TRL 1.x),
/// `loss_weights` for a mix, `beta`, `learning_rate`, and the loss parameters TRL reads
/// (`label_smoothing` for robust/aot/aot_unpaired, TRL's ε of `exo_pair`, `discopop_tau`).
/// Losses outside `DPOTrainer` are an error naming where TRL has them.
pub fn trl_dpo_args(experiment: &ExperimentConfig) -> Result<Vec<(String, String)>> {
    let mix: LossMix = experiment.validate()?;
    for (kind, _) in &mix.terms {
        if !LossKind::TRL_DPO.contains(kind) {
            let elsewhere = match kind {
                LossKind::Simpo | LossKind::Cpo => " (TRL has it in trl.experimental.cpo.CPOTrainer)",
                LossKind::Orpo => " (TRL has it in trl.experimental.orpo.ORPOTrainer)",
                LossKind::Kto => " (TRL has it in trl.KTOTrainer)",
                LossKind::Cdpo => " (TRL 1.x `sigmoid` ignores label_smoothing; use `robust` or `aot` for noisy labels)",
                _ => " (TRL has no trainer for it)",
            };
            let names: Vec<&str> = LossKind::TRL_DPO.iter().map(|k| k.name()).collect();
            return Err(LabError::param("loss", format!("{} is not a trl.DPOTrainer loss_type{elsewhere}; the export writes DPOTrainer scripts for: {}", kind.name(), names.join(", "))));
        }
    }
    let py_str = |s: &str| format!("\"{s}\"");
    let mut args = vec![(
        "loss_type".to_string(),
        format!(
            "[{}]",
            mix.terms.iter().map(|(k, _)| py_str(k.name())).collect::<Vec<_>>().join(", ")
        ),
    )];
    if mix.terms.len() > 1 || mix.terms[0].1 != 1.0 {
        args.push((
            "loss_weights".into(),
            format!(
                "[{}]",
                mix.terms.iter().map(|(_, w)| py_float(*w)).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    args.push(("beta".into(), py_float(experiment.params.beta)));
    args.push(("learning_rate".into(), py_float(experiment.lr)));
    let reads = |k: LossKind| mix.terms.iter().any(|(t, _)| *t == k);
    if reads(LossKind::ExoPair) {
        // TRL 1.x reads EXO's ε from label_smoothing.
        args.push(("label_smoothing".into(), py_float(experiment.params.exo_epsilon)));
    } else if reads(LossKind::Robust) || reads(LossKind::Aot) || reads(LossKind::AotUnpaired) {
        args.push(("label_smoothing".into(), py_float(experiment.params.label_smoothing)));
    }
    if reads(LossKind::Discopop) {
        args.push(("discopop_tau".into(), py_float(experiment.params.discopop_tau)));
    }
    args.push(("weight_decay".into(), py_float(experiment.weight_decay)));
    args.push(("per_device_train_batch_size".into(), experiment.batch_size.to_string()));
    args.push(("max_steps".into(), experiment.steps.to_string()));
    args.push(("seed".into(), experiment.seed.to_string()));
    Ok(args)
}

/// A float as a Python literal (always with a `.` or an exponent).
fn py_float(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) || !x.is_finite() {
        s
    } else {
        format!("{s}.0")
    }
}

/// Check that a dataset can go to `DPOTrainer`: pairs only (no ranked lists, unpaired or
/// joint-preference records), one form (strings or message lists) throughout; the error
/// names the 1-based record.
pub fn check_trl_dpo_data(records: &[Record]) -> Result<()> {
    let mut first_form: Option<bool> = None;
    for (i, record) in records.iter().enumerate() {
        let line = i + 1;
        let pair = match record {
            Record::Pair(p) => p,
            Record::Ranked(_) => return Err(LabError::parse("a ranked list; trl.DPOTrainer trains on pairs (annotate it into pairs first)").in_field("responses").at_line(line)),
            Record::Unpaired(_) => return Err(LabError::parse("an unpaired example; trl.DPOTrainer trains on pairs (TRL's KTOTrainer takes unpaired data)").in_field("completion").at_line(line)),
        };
        if pair.rejected_prompt.is_some() {
            return Err(LabError::parse(
                "a joint-preference (DOVE) pair; trl.DPOTrainer needs one prompt per pair",
            )
            .in_field("rejected_prompt")
            .at_line(line));
        }
        let messages = pair.chosen.is_messages();
        match first_form {
            None => first_form = Some(messages),
            Some(form) if form != messages => {
                return Err(LabError::parse("mixes plain strings and message lists across records; TRL loads one form per dataset").in_field("chosen").at_line(line));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The Python script of "Export to TRL": it opens the model folder's own tokenizer (a
/// byte-level BPE `tokenizer.json`, with `AutoTokenizer`) or, for a folder without one,
/// rebuilds alignlab's character tokenizer, sets alignlab's chat template, loads the model
/// directory (alignlab checkpoints are
/// `GPT2LMHeadModel` directories) and `data_file` (TRL JSONL), and trains with
/// `trl.DPOTrainer` under [`trl_dpo_args`] — the same loss_type, β, learning rate, batch
/// size, steps and seed, at a constant learning rate (as alignlab's AdamW runs). With
/// `lora`, it trains LoRA adapters as alignlab's `train --lora-rank` does (PEFT's
/// `LoraConfig` passed as DPOTrainer's `peft_config`), new or continued from a folder of
/// adapters; either way the reference is the starting policy, as in alignlab.
pub fn trl_script(
    experiment: &ExperimentConfig,
    data_file: &str,
    lora: Option<&ExportedLora>,
) -> Result<String> {
    let args = trl_dpo_args(experiment)?;
    let config_args: String = args.iter().map(|(k, v)| format!("        {k}={v},\n")).collect();
    let data_literal = serde_json::to_string(data_file).expect("a string serializes");
    let (peft_import, adapters_arg, peft_setup, peft_arg) = match lora {
        None => (String::new(), String::new(), String::new(), ""),
        Some(lora) => (
            "from peft import LoraConfig, PeftModel\n".to_string(),
            format!(
                "    parser.add_argument(\"--adapters\", default={}, help=\"PEFT adapters to continue from (adapter_config.json + adapter_model.safetensors); without them, new ones\")\n",
                lora.adapters.map_or("None".to_string(), |a| serde_json::to_string(a).expect("a string serializes"))
            ),
            format!(
                "    # LoRA as alignlab trains it. The reference is the starting policy: the model with\n    # new adapters off, or (TRL keeps a copy of them) with the adapters continued from\n    peft_config = {}\n    if cli.adapters:\n        model = PeftModel.from_pretrained(model, cli.adapters, is_trainable=True)\n        peft_config = None\n",
                peft_lora_config(lora.config)
            ),
            ", peft_config=peft_config",
        ),
    };
    Ok(format!(
        r#"#!/usr/bin/env python3
"""Train alignlab's experiment with Hugging Face TRL (generated by alignlab's "Export to TRL").

Experiment: {query}

    pip install "trl>=1.0" torch
    python train_dpo.py --model path/to/alignlab/model --data {data_file} --out trained

The model is an alignlab checkpoint (model.safetensors + config.json: a GPT2LMHeadModel);
the data is TRL JSONL as alignlab writes it. alignlab's own fields (alpha, rationale,
flipped, ...) travel along as extra columns; DPOTrainer does not read them.
"""
import argparse
import os

from datasets import load_dataset
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerFast
from trl import DPOConfig, DPOTrainer
{peft_import}
EOT = "<|endoftext|>"
# alignlab's chat template: "User: ... Assistant:" then " " + reply, messages joined by
# one space; every sequence starts and ends with the end-of-text token.
CHAT_TEMPLATE = (
    "{{{{ bos_token }}}}{{% for m in messages %}}{{% if not loop.first %}} {{% endif %}}"
    "{{{{ m['role'] | capitalize }}}}: {{{{ m['content'] }}}}{{% endfor %}}"
    "{{% if add_generation_prompt %}} Assistant:{{% elif messages[-1]['role'] == 'assistant' %}}{{{{ eos_token }}}}{{% endif %}}"
)


def char_tokenizer():
    """alignlab's tokenizer: id 0 is <|endoftext|>, ids 1..95 are ' '..'~'."""
    vocab = {{EOT: 0}}
    vocab.update({{chr(32 + i): 1 + i for i in range(95)}})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOT))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=EOT)
    hf.chat_template = CHAT_TEMPLATE
    return hf


def model_tokenizer(model_dir):
    """The model folder's tokenizer: its tokenizer.json (byte-level BPE) if it has one, else
    alignlab's character tokenizer (the folder's vocabulary is then 96)."""
    if not os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        return char_tokenizer()
    hf = AutoTokenizer.from_pretrained(model_dir)
    hf.bos_token = hf.eos_token = hf.pad_token = EOT
    hf.chat_template = CHAT_TEMPLATE
    return hf


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="alignlab model directory (model.safetensors + config.json)")
    parser.add_argument("--data", default={data_literal}, help="TRL JSONL preference data")
    parser.add_argument("--out", default="trained", help="where the trained model goes")
{adapters_arg}    cli = parser.parse_args()

    tokenizer = model_tokenizer(cli.model)
    model = GPT2LMHeadModel.from_pretrained(cli.model)
{peft_setup}    dataset = load_dataset("json", data_files=cli.data, split="train")
    if "prompt" in dataset.column_names and isinstance(dataset[0]["prompt"], str):
        # Plain strings: alignlab scores [EOT] + prompt + completion + [EOT]; TRL adds the
        # final EOT itself, the first one goes in front of the prompt here.
        dataset = dataset.map(lambda row: {{"prompt": EOT + row["prompt"]}})

    config = DPOConfig(
        output_dir=cli.out,
{config_args}        lr_scheduler_type="constant",
        max_length=model.config.n_positions,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer{peft_arg})
    trainer.train()
    trainer.save_model(cli.out)


if __name__ == "__main__":
    main()
"#,
        query = experiment.to_query(),
    ))
}

/// LoRA in an exported TRL script: the adapters' config, and the folder (relative to the
/// script's working directory) of adapters to continue from, if any.
pub struct ExportedLora<'a> {
    pub config: &'a LoraConfig,
    pub adapters: Option<&'a str>,
}

/// PEFT's `LoraConfig(...)` for `config`, as `adapter_config.json` states it.
fn peft_lora_config(config: &LoraConfig) -> String {
    let targets = serde_json::to_string(&config.targets).expect("strings serialize");
    format!(
        "LoraConfig(r={}, lora_alpha={}, lora_dropout=0.0, target_modules={targets}, fan_in_fan_out=True, bias=\"none\", use_rslora={}, task_type=\"CAUSAL_LM\")",
        config.rank,
        py_float(config.alpha),
        if config.rslora { "True" } else { "False" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::LossParams;

    #[test]
    fn the_size_limit_names_the_file() {
        assert!(check_import_size("a.jsonl", MAX_IMPORT_BYTES as u64).is_ok());
        let err =
            check_import_size("big.jsonl", MAX_IMPORT_BYTES as u64 + 1).unwrap_err().to_string();
        assert!(err.starts_with("big.jsonl:") && err.contains("20 MB"), "{err}");
        let err = import_jsonl("d.jsonl", "{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\"}\n{\"prompt\": \"P\", \"chosen\": \" a\"}\n").unwrap_err().to_string();
        assert!(
            err.contains("d.jsonl") && err.contains("line 2") && err.contains("rejected"),
            "{err}"
        );
    }

    #[test]
    fn metrics_round_trip_through_csv_with_empty_cells() {
        let rows: Vec<MetricsRow> = vec![
            [("step".to_string(), 0.0), ("eval/ranking_accuracy".to_string(), 0.5)]
                .into_iter()
                .collect(),
            [
                ("step".to_string(), 1.0),
                ("loss".to_string(), std::f64::consts::LN_2),
                ("eval/ranking_accuracy".to_string(), 0.75),
            ]
            .into_iter()
            .collect(),
        ];
        let csv = metrics_csv(&rows);
        assert_eq!(csv, "step,eval/ranking_accuracy,loss\n0,0.5,\n1,0.75,0.6931471805599453\n");
        assert_eq!(parse_metrics_csv(&csv).unwrap(), rows);
        let err = parse_metrics_csv("step,loss\n1,x\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("\"loss\""), "{err}");
        let json: serde_json::Value =
            serde_json::from_str(&metrics_json("sigmoid", &ExperimentConfig::default(), &rows))
                .unwrap();
        assert_eq!(json["metrics"][1]["loss"], std::f64::consts::LN_2);
        assert_eq!(json["experiment"], ExperimentConfig::default().to_query());
    }

    #[test]
    fn trl_arguments_map_loss_beta_and_learning_rate() {
        let experiment = ExperimentConfig {
            loss: "robust".into(),
            params: LossParams { beta: 0.5, label_smoothing: 0.1, ..LossParams::default() },
            lr: 5e-4,
            batch_size: 8,
            steps: 30,
            seed: 2,
            ..ExperimentConfig::default()
        };
        let args: BTreeMap<String, String> =
            trl_dpo_args(&experiment).unwrap().into_iter().collect();
        assert_eq!(args["loss_type"], "[\"robust\"]");
        assert_eq!(args["beta"], "0.5");
        assert_eq!(args["learning_rate"], "0.0005");
        assert_eq!(args["label_smoothing"], "0.1");
        assert_eq!(
            (
                args["per_device_train_batch_size"].as_str(),
                args["max_steps"].as_str(),
                args["seed"].as_str()
            ),
            ("8", "30", "2")
        );
        assert!(!args.contains_key("loss_weights"));
        // RPO: TRL's list of loss types with weights.
        let rpo =
            ExperimentConfig { loss: "sigmoid+0.5*sft".into(), ..ExperimentConfig::default() };
        let args: BTreeMap<String, String> = trl_dpo_args(&rpo).unwrap().into_iter().collect();
        assert_eq!(
            (args["loss_type"].as_str(), args["loss_weights"].as_str()),
            ("[\"sigmoid\", \"sft\"]", "[1.0, 0.5]")
        );
        let exo = ExperimentConfig { loss: "exo_pair".into(), ..ExperimentConfig::default() };
        assert_eq!(
            trl_dpo_args(&exo)
                .unwrap()
                .into_iter()
                .find(|(k, _)| k == "label_smoothing")
                .unwrap()
                .1,
            "0.001"
        );
        let err =
            trl_dpo_args(&ExperimentConfig { loss: "simpo".into(), ..ExperimentConfig::default() })
                .unwrap_err()
                .to_string();
        assert!(err.contains("simpo") && err.contains("CPOTrainer"), "{err}");
    }

    #[test]
    fn the_script_carries_the_experiment() {
        let experiment = ExperimentConfig {
            loss: "ipo".into(),
            params: LossParams { beta: 0.25, ..LossParams::default() },
            lr: 1e-3,
            ..ExperimentConfig::default()
        };
        let script = trl_script(&experiment, "my data.jsonl", None).unwrap();
        for needle in [
            "loss_type=[\"ipo\"],",
            "beta=0.25,",
            "learning_rate=0.001,",
            "DPOTrainer(model=model",
            "default=\"my data.jsonl\"",
            "{{ bos_token }}",
        ] {
            assert!(script.contains(needle), "missing {needle}");
        }
        assert!(!script.contains("peft"), "no PEFT without LoRA");
        let config = LoraConfig::new(4, 16.0, &["c_attn", "mlp.c_proj"]).unwrap();
        let lora = ExportedLora { config: &config, adapters: Some("adapters") };
        let script = trl_script(&experiment, "d.jsonl", Some(&lora)).unwrap();
        for needle in [
            "from peft import LoraConfig, PeftModel",
            "peft_config = LoraConfig(r=4, lora_alpha=16.0, lora_dropout=0.0, target_modules=[\"c_attn\",\"mlp.c_proj\"], fan_in_fan_out=True, bias=\"none\", use_rslora=False, task_type=\"CAUSAL_LM\")",
            "\"--adapters\", default=\"adapters\"",
            "PeftModel.from_pretrained(model, cli.adapters, is_trainable=True)",
            "processing_class=tokenizer, peft_config=peft_config)",
        ] {
            assert!(script.contains(needle), "missing {needle}");
        }
        let fresh = ExportedLora { config: &config, adapters: None };
        let script = trl_script(&experiment, "d.jsonl", Some(&fresh)).unwrap();
        assert!(script.contains("\"--adapters\", default=None"));
    }

    #[test]
    fn trl_data_must_be_pairs_of_one_form() {
        let ok =
            parse_jsonl("{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\"}\n").unwrap();
        assert!(check_trl_dpo_data(&ok).is_ok());
        let ranked = parse_jsonl("{\"prompt\": \"P\", \"chosen\": \" a\", \"rejected\": \" b\"}\n{\"prompt\": \"P\", \"responses\": [\" a\", \" b\"]}\n").unwrap();
        let err = check_trl_dpo_data(&ranked).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("responses"), "{err}");
    }
}
