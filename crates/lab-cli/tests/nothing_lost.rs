//! Nothing a user made is lost, and nothing fails silently: every command that writes
//! refuses to replace an output without `--force` or to write over one of its inputs, and a
//! write that fails (a full disk, simulated with a file-size limit) leaves what was there as
//! it was and no temporary behind; divergence and Ctrl-C keep the work done; inputs are read
//! once, bounded, and only from regular files or standard input.

use serde_json::Value;

mod common;
use common::{alignlab, scratch, write};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

fn starter() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/starter").display().to_string()
}

const PAIRS: &str = "{\"prompt\": \"User: Is rain nice? Assistant:\", \"chosen\": \" Yes.\", \"rejected\": \" No.\"}\n\
{\"prompt\": \"User: Is snow nice? Assistant:\", \"chosen\": \" Yes, it is.\", \"rejected\": \" Never.\"}\n";

/// The names in a folder, sorted (hidden temporaries included).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file under `dir` with its bytes, to compare a folder before and after.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in entries(dir) {
        let path = dir.join(&name);
        if path.is_dir() {
            for (inner, bytes) in snapshot(&path) {
                out.push((format!("{name}/{inner}"), bytes));
            }
        } else {
            out.push((name, std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// Run `alignlab` as on a disk with only `bytes` (rounded up to 512) free for each file it
/// writes: a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so a write fails with an error instead of
/// killing the process), which needs no root and fails at a chosen size.
fn alignlab_with_full_disk(bytes: u64, args: &[&str]) -> (i32, String) {
    let blocks = bytes.div_ceil(512);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_alignlab"))
        .args(args)
        .output()
        .expect("sh runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Run a command that must fail on a full disk: exit 2, an error naming the disk, the
/// folder exactly as before, no temporary left.
fn assert_full_disk_changes_nothing(dir: &Path, bytes: u64, args: &[&str]) {
    let before = snapshot(dir);
    let (code, stderr) = alignlab_with_full_disk(bytes, args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert!(stderr.contains("File too large") || stderr.contains("No space"), "{stderr}");
    assert!(!stderr.contains(".tmp"), "the error names the temporary: {stderr}");
    let after = snapshot(dir);
    let names = |s: &[(String, Vec<u8>)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "{args:?}");
    assert!(after == before, "{args:?} changed a file");
}

fn train_args<'a>(data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
    ]
}

#[test]
fn train_never_replaces_an_output_without_force_nor_writes_over_an_input() {
    let dir = scratch("train-outputs");
    let data = write(&dir, "d.jsonl", PAIRS);
    let out = dir.join("m.jsonl").display().to_string();
    let starter = starter();
    let mut args = train_args(&data, &out, "2");
    args.extend(["--model", &starter, "--f16"]);
    let (code, _, stderr) = alignlab(&args);
    assert_eq!(code, 0, "{stderr}");
    let before = snapshot(&dir);

    // An existing output, the data as the output, the starting model as the saved one (also
    // spelled differently), and a folder of other things as the weights: all refused.
    let model = dir.join("m.model").display().to_string();
    let dotted = format!("{}/./d.jsonl", dir.display());
    let notes = dir.join("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("mine.txt"), "keep me").unwrap();
    let notes = notes.display().to_string();
    let other = dir.join("n.jsonl").display().to_string();
    for (target, extra, words) in [
        (&out, vec![], "already exists; pass --force"),
        (&dotted, vec!["--force"], "is also an input"),
        (&other, vec!["--model", &model, "--save", &model, "--force"], "is also an input"),
        (&other, vec!["--save", &notes, "--force"], "holds \"mine.txt\""),
    ] {
        let mut args = train_args(&data, target, "1");
        args.extend(extra.iter().copied());
        let (code, _, stderr) = alignlab(&args);
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(stderr.contains(words), "{extra:?}: {stderr}");
    }
    let mut after = snapshot(&dir);
    after.retain(|(n, _)| !n.starts_with("notes"));
    assert!(after == before, "a refused run changed a file");

    // With --force the metrics and the weights are replaced together.
    let mut args = train_args(&data, &out, "3");
    args.push("--force");
    let (code, _, stderr) = alignlab(&args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    assert!(std::fs::metadata(dir.join("m.model/model.safetensors")).unwrap().len() > 400_000);
}

#[test]
fn a_full_disk_leaves_every_command_s_earlier_outputs_as_they_were() {
    let dir = scratch("full-disk");
    let data = write(&dir, "d.jsonl", PAIRS);
    let out = dir.join("run.jsonl").display().to_string();
    // Outputs to be replaced with --force: a run (metrics and weights) ...
    let (code, _, stderr) = alignlab(&train_args(&data, &out, "2"));
    assert_eq!(code, 0, "{stderr}");
    // ... the weights fail to fit (660 kB of f32): the old run stays whole.
    let mut args = train_args(&data, &out, "2");
    args.push("--force");
    assert_full_disk_changes_nothing(&dir, 100_000, &args);

    let many: String = (0..40)
        .map(|i| format!("{{\"prompt\": \"User: Q{i}? Assistant:\", \"responses\": [\" I love it.\", \" I hate it.\"]}}\n"))
        .collect();
    let lists = write(&dir, "lists.jsonl", &many);
    let labelled = write(&dir, "labelled.jsonl", "old labels\n");
    let annotate =
        ["annotate", "--in", &lists, "--out", &labelled, "--rules", "sentiment", "--force"];
    assert_full_disk_changes_nothing(&dir, 1000, &annotate);

    let csv = write(&dir, "run.csv", "old csv\n");
    let export = ["export-metrics", "--in", &out, "--out", &csv, "--force"];
    assert_full_disk_changes_nothing(&dir, 512, &export);

    let trl = dir.join("trl");
    std::fs::create_dir(&trl).unwrap();
    write(&trl, "data.jsonl", "old data\n");
    let trl = trl.display().to_string();
    let export_trl =
        ["export-trl", "--model", &starter(), "--data", &data, "--out", &trl, "--force"];
    assert_full_disk_changes_nothing(&dir, 512, &export_trl);

    let questions: String = (0..20).map(|i| format!("Do you like thing {i}?\n")).collect();
    let prompts = write(&dir, "prompts.txt", &questions);
    let samples = write(&dir, "samples.jsonl", "old samples\n");
    let model = starter();
    let sample = [
        "sample",
        "--model",
        &model,
        "--prompts",
        &prompts,
        "--n",
        "4",
        "--out",
        &samples,
        "--force",
    ];
    assert_full_disk_changes_nothing(&dir, 512, &sample);

    let pretrained = dir.join("pre");
    std::fs::create_dir(&pretrained).unwrap();
    write(&pretrained, "config.json", "{}");
    let pretrained = pretrained.display().to_string();
    let pretrain = [
        "pretrain",
        "--out",
        &pretrained,
        "--steps",
        "1",
        "--d-model",
        "8",
        "--n-layer",
        "1",
        "--n-head",
        "1",
        "--ctx",
        "128",
        "--batch-size",
        "2",
        "--force",
    ];
    assert_full_disk_changes_nothing(&dir, 4000, &pretrain);

    let scenario = dir.join("scenario");
    std::fs::create_dir(&scenario).unwrap();
    write(&scenario, "data.jsonl", "old scenario\n");
    write(&scenario, "heldout.jsonl", "old held-out\n");
    let scenario = scenario.display().to_string();
    let make = ["make-scenario", "3d-properties", "--out", &scenario, "--force"];
    assert_full_disk_changes_nothing(&dir, 2000, &make);
}

#[test]
fn annotate_and_export_metrics_refuse_their_own_input_however_spelled() {
    let dir = scratch("own-input");
    let input = write(&dir, "same.jsonl", PAIRS);
    let spelled =
        format!("{}/../{}/same.jsonl", dir.display(), dir.file_name().unwrap().to_string_lossy());
    std::fs::hard_link(&input, dir.join("link.jsonl")).unwrap();
    let link = dir.join("link.jsonl").display().to_string();
    for out in [&spelled, &link] {
        let (code, _, stderr) = alignlab(&[
            "annotate",
            "--in",
            &input,
            "--out",
            out,
            "--rules",
            "sentiment",
            "--force",
        ]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("is also an input"), "{stderr}");
        let (code, _, stderr) =
            alignlab(&["export-metrics", "--in", &input, "--out", out, "--force"]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("is also an input"), "{stderr}");
    }
    assert_eq!(std::fs::read_to_string(&input).unwrap(), PAIRS);
}

#[test]
fn inputs_are_read_once_bounded_and_only_from_files_or_standard_input() {
    let dir = scratch("inputs");
    // Standard input (`-`) is read once: the exported data holds every record.
    let out = dir.join("trl").display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_alignlab"))
        .args(["export-trl", "--model", &starter(), "--data", "-", "--out", &out])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(PAIRS.as_bytes()).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let report: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(report["records"], 2);
    assert_eq!(std::fs::read_to_string(dir.join("trl/data.jsonl")).unwrap(), PAIRS);

    // A FIFO with no writer is refused at once (opening it would block forever); so are a
    // device and a folder.
    let fifo = dir.join("fifo.jsonl");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fifo = fifo.display().to_string();
    let metrics = dir.join("m.jsonl").display().to_string();
    let folder = dir.display().to_string();
    for input in [fifo.as_str(), "/dev/zero", folder.as_str()] {
        let (code, _, stderr) = alignlab(&train_args(input, &metrics, "1"));
        assert_eq!(code, 2, "{input}: {stderr}");
        assert!(stderr.contains(input) && stderr.contains("not a"), "{input}: {stderr}");
        let (code, _, stderr) = alignlab(&["losses", "--input", input]);
        assert_eq!(code, 2, "{input}: {stderr}");
    }
    // Over the limits: 20 MB of data, 1 MB of losses input.
    let big = dir.join("big.jsonl");
    std::fs::write(&big, vec![b' '; 20_000_001]).unwrap();
    let big = big.display().to_string();
    let (code, _, stderr) = alignlab(&train_args(&big, &metrics, "1"));
    assert_eq!(code, 2);
    assert!(stderr.contains("big.jsonl") && stderr.contains("over the limit"), "{stderr}");
    let (code, _, stderr) = alignlab(&["losses", "--input", &big]);
    assert_eq!(code, 2);
    assert!(stderr.contains("over the limit of 1 MB"), "{stderr}");
    assert!(!Path::new(&metrics).exists());
}

#[test]
fn export_trl_checks_the_data_against_the_tokenizer_and_context_as_train_does() {
    let dir = scratch("export-checks");
    // A character-level model (the starter's BPE reads any text): what it cannot encode.
    let char_model = dir.join("char").display().to_string();
    let pretrain = ["pretrain", "--out", &char_model, "--steps", "1", "--d-model", "8"];
    let (code, _, stderr) =
        alignlab(&[&pretrain[..], &["--n-layer", "1", "--n-head", "1"]].concat());
    assert_eq!(code, 0, "{stderr}");
    let (long, starter) = ("x y ".repeat(300), starter());
    for (i, (model, text, words)) in [
        (&char_model, "I 😀 it.", "vocabulary"),
        (&char_model, "Caf\u{e9}.", "vocabulary"),
        (&char_model, "two\\nlines", "vocabulary"),
        (&char_model, "nul\\u0000", "vocabulary"),
        (&starter, long.as_str(), "context"),
    ]
    .into_iter()
    .enumerate()
    {
        let line = format!("{{\"prompt\": \"User: Q? Assistant:\", \"chosen\": \" {text}\", \"rejected\": \" No.\"}}\n");
        let data = write(&dir, "d.jsonl", &(PAIRS.to_string() + &line));
        let out = dir.join(format!("out{i}")).display().to_string();
        let (code, _, stderr) =
            alignlab(&["export-trl", "--model", model, "--data", &data, "--out", &out]);
        assert_eq!(code, 2, "{text}: {stderr}");
        assert!(
            stderr.contains("d.jsonl") && stderr.contains("line 3") && stderr.contains("chosen"),
            "{text}: {stderr}"
        );
        assert!(stderr.contains(words), "{text}: {stderr}");
        assert!(!Path::new(&out).exists());
    }
}

#[test]
fn a_diverged_run_keeps_its_last_good_step_and_says_why() {
    let dir = scratch("diverged");
    let data = write(&dir, "d.jsonl", PAIRS);
    // lr 3e8: two steps stay finite; the third step's update gives non-finite log-probs
    // (its eval metrics would be NaN, written by serde_json as null).
    let out = dir.join("a.jsonl").display().to_string();
    let mut args = train_args(&data, &out, "20");
    *args.last_mut().unwrap() = "3e8";
    let (code, stdout, stderr) = alignlab(&args);
    assert_eq!(code, 2, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["stopped"], "diverged");
    assert_eq!(summary["steps"], 2);
    assert!(stderr.contains("step 3") && stderr.contains("learning rate 3e8"), "{stderr}");
    assert!(!stderr.contains("β"), "β is usual here: {stderr}");
    let kept = std::fs::read_to_string(&out).unwrap();
    assert_eq!(kept.lines().count(), 2);
    assert!(!kept.contains("null"), "{kept}");
    // The kept weights are finite: eval reads them (it refuses non-finite parameters).
    let model = dir.join("a.model").display().to_string();
    let (code, _, stderr) = alignlab(&["eval", "--model", &model, "--data", &data]);
    assert_eq!(code, 0, "{stderr}");

    // lr 1e38: the first update already overflows; the starting weights are what is kept.
    let out = dir.join("b.jsonl").display().to_string();
    let mut args = train_args(&data, &out, "1");
    *args.last_mut().unwrap() = "1e38";
    let (code, stdout, stderr) = alignlab(&args);
    assert_eq!(code, 2, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (summary["stopped"].as_str(), summary["steps"].as_u64()),
        (Some("diverged"), Some(0))
    );
    assert!(stderr.contains("step 1") && stderr.contains("not finite"), "{stderr}");
    let model = dir.join("b.model").display().to_string();
    let (code, _, stderr) = alignlab(&["eval", "--model", &model, "--data", &data]);
    assert_eq!(code, 0, "{stderr}");
}

/// Start a long run, wait for three progress lines, send `signal`, and check that it stops
/// at a step boundary with complete metrics and loadable weights, exit 130.
fn stops_cleanly_on(signal: &str) {
    let dir = scratch(signal);
    let data = write(&dir, "d.jsonl", PAIRS);
    let out = dir.join("run.jsonl").display().to_string();
    let (code, stdout, stderr) = signal_after(&train_args(&data, &out, "1000000"), 3, signal);
    assert_eq!(code, Some(130), "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["stopped"], "interrupted");
    let steps = summary["steps"].as_u64().unwrap();
    assert!(steps >= 3, "{summary}");
    let metrics = std::fs::read_to_string(&out).unwrap();
    assert_eq!(metrics.lines().count() as u64, steps);
    for (i, line) in metrics.lines().enumerate() {
        let record: Value = serde_json::from_str(line).expect("every line is a whole record");
        assert_eq!(record["step"], i as u64 + 1);
    }
    assert!(stderr.contains("interrupted") && stderr.contains("run.model"), "{stderr}");
    let model = dir.join("run.model").display().to_string();
    let (code, _, stderr) = alignlab(&["eval", "--model", &model, "--data", &data]);
    assert_eq!(code, 0, "{stderr}");
    assert!(entries(&dir).iter().all(|n| !n.ends_with(".tmp")), "{:?}", entries(&dir));
}

#[test]
fn ctrl_c_stops_a_run_at_a_step_boundary_and_keeps_it() {
    stops_cleanly_on("INT");
}

#[test]
fn sigterm_stops_a_run_at_a_step_boundary_and_keeps_it() {
    stops_cleanly_on("TERM");
}

#[test]
fn runs_are_bounded_and_report_progress_off_stdout() {
    let dir = scratch("progress");
    let data = write(&dir, "d.jsonl", PAIRS);
    let out = dir.join("run.jsonl").display().to_string();
    let (code, _, stderr) = alignlab(&train_args(&data, &out, "4294967295"));
    assert_eq!(code, 2);
    assert!(stderr.contains("4294967295") && stderr.contains("1000000"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_alignlab"))
        .args(train_args(&data, &out, "5"))
        .env("ALIGNLAB_PROGRESS_SECONDS", "0")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "stdout is one JSON report: {stdout}");
    let progress: Vec<Value> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let done: Vec<u64> = progress.iter().map(|p| p["progress"]["done"].as_u64().unwrap()).collect();
    assert_eq!(done, [1, 2, 3, 4, 5]);
    assert!(progress.iter().all(|p| p["progress"]["total"] == 5 && p["progress"]["loss"].is_f64()));
}

/// Start `args` with a progress line per step, wait for `lines` JSON lines on stderr (so the
/// run is in its loop), send `signal` (the shell's builtin `kill`);
/// (exit code, stdout, the rest of stderr).
fn signal_after(args: &[&str], lines: usize, signal: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_alignlab"))
        .args(args)
        .env("ALIGNLAB_PROGRESS_SECONDS", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    for _ in 0..lines {
        line.clear();
        stderr.read_line(&mut line).unwrap();
        assert!(serde_json::from_str::<Value>(&line).is_ok(), "not a JSON line: {line}");
    }
    let kill = format!("kill -{signal} {}", child.id());
    assert!(Command::new("sh").args(["-c", &kill]).status().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let done = child.wait_with_output().unwrap();
    (done.status.code(), String::from_utf8(done.stdout).unwrap(), rest)
}

#[test]
fn ctrl_c_saves_what_pretrain_trained_and_leaves_sample_s_output_unwritten() {
    let dir = scratch("interrupt-others");
    let model = dir.join("pre").display().to_string();
    let (code, stdout, _) = signal_after(
        &[
            "pretrain",
            "--out",
            &model,
            "--steps",
            "1000000",
            "--d-model",
            "8",
            "--n-layer",
            "1",
            "--n-head",
            "1",
            "--batch-size",
            "2",
            "--log-every",
            "1",
        ],
        2,
        "INT",
    );
    assert_eq!(code, Some(130), "{stdout}");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["stopped"], "interrupted");
    assert!(summary["summary"]["steps"].as_u64().unwrap() >= 2, "{summary}");
    assert!(dir.join("pre/model.safetensors").is_file());

    let questions: String = (0..5000).map(|i| format!("Do you like thing {i}?\n")).collect();
    let prompts = write(&dir, "prompts.txt", &questions);
    let out = dir.join("samples.jsonl");
    let out_name = out.display().to_string();
    let (code, stdout, _) = signal_after(
        &["sample", "--model", &starter(), "--prompts", &prompts, "--out", &out_name],
        2,
        "INT",
    );
    assert_eq!(code, Some(130), "{stdout}");
    assert!(!out.exists());
    assert!(entries(&dir).iter().all(|n| !n.ends_with(".tmp")), "{:?}", entries(&dir));
}

#[test]
fn absurd_checkpoints_are_refused_before_anything_is_allocated() {
    let dir = scratch("checkpoints");
    let data = write(&dir, "d.jsonl", PAIRS);
    let shipped = Path::new(&starter()).to_path_buf();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(shipped.join("config.json")).unwrap())
            .unwrap();
    let cases: [(&str, Value); 4] = [
        ("vocab_size", 1e9.into()),
        ("n_positions", 1e12.into()),
        ("n_embd", (1u64 << 31).into()),
        ("n_layer", 100_000.into()),
    ];
    for (i, (field, value)) in cases.into_iter().enumerate() {
        let model = dir.join(format!("m{i}"));
        std::fs::create_dir(&model).unwrap();
        std::fs::copy(shipped.join("model.safetensors"), model.join("model.safetensors")).unwrap();
        let mut bad = config.clone();
        bad[field] = value;
        std::fs::write(model.join("config.json"), bad.to_string()).unwrap();
        let (model, out) = (model.display().to_string(), dir.join("o.jsonl").display().to_string());
        let mut args = train_args(&data, &out, "1");
        args.extend(["--model", &model]);
        let (code, _, stderr) = alignlab(&args);
        assert_eq!(code, 2, "{field}: {stderr}");
        assert!(
            stderr.contains("config.json") || stderr.contains("model.safetensors"),
            "{field}: {stderr}"
        );
    }
    // A device where the weights should be: refused, not read until memory runs out.
    let model = dir.join("zero");
    std::fs::create_dir(&model).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(shipped.join(file), model.join(file)).unwrap();
    }
    std::os::unix::fs::symlink("/dev/zero", model.join("model.safetensors")).unwrap();
    let (model, out) = (model.display().to_string(), dir.join("o.jsonl").display().to_string());
    let mut args = train_args(&data, &out, "1");
    args.extend(["--model", &model]);
    let (code, _, stderr) = alignlab(&args);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("not a regular file"),
        "{stderr}"
    );
}
