//! lab-train on the CPU engine: determinism, learning, the frozen reference, every loss of
//! the zoo, data errors that name their place, and the async path equal to the blocking one.

use lab_core::config::{init_params, GptConfig};
use lab_core::data::{parse_jsonl, Record};
use lab_core::engine::AdamWConfig;
use lab_core::loss::{DataShape, LossKind, LossMix, LossParams};
use lab_core::tokenizer::Tokenizer;
use lab_core::Engine;
use lab_cpu::CpuEngine;
use lab_train::{record_lines, Session, SessionConfig};

const MICRO: GptConfig = GptConfig { vocab: 96, ctx: 32, d_model: 32, n_layer: 2, n_head: 4 };

fn pairs_jsonl() -> String {
    let facts = [
        ("Is fire hot?", " Yes.", " No."),
        ("Is ice hot?", " No.", " Yes."),
        ("Is 2 > 1?", " Yes.", " No."),
        ("Is 1 > 2?", " No.", " Yes."),
        ("Sky color?", " Blue.", " Green."),
        ("Grass color?", " Green.", " Blue."),
        ("Say hi", " Hi!", " Bye."),
        ("Say bye", " Bye.", " Hi!"),
    ];
    facts
        .iter()
        .map(|(p, c, r)| {
            format!("{{\"prompt\": \"{p}\", \"chosen\": \"{c}\", \"rejected\": \"{r}\"}}\n")
        })
        .collect()
}

fn ranked_jsonl() -> String {
    "{\"prompt\": \"Rate:\", \"responses\": [\" great\", \" fine\", \" bad\"]}\n{\"prompt\": \"Grade:\", \"responses\": [\" A\", \" B\", \" C\"]}\n".to_string()
}

fn unpaired_jsonl() -> String {
    "{\"prompt\": \"Is fire hot?\", \"completion\": \" Yes.\", \"label\": true}\n{\"prompt\": \"Is fire hot?\", \"completion\": \" No.\", \"label\": false}\n{\"prompt\": \"Is ice hot?\", \"completion\": \" No.\", \"label\": true}\n{\"prompt\": \"Is ice hot?\", \"completion\": \" Yes.\", \"label\": false}\n".to_string()
}

fn session(loss: LossMix, records: &[Record], lr: f32, seed: u64) -> Session<CpuEngine> {
    let engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let config = SessionConfig {
        loss,
        params: LossParams::default(),
        optimizer: AdamWConfig { lr, ..AdamWConfig::default() },
        batch_size: 4,
        seed,
        eval_every: 1,
        final_step: 0,
        kl_sampled_every: 0,
    };
    Session::new(engine, &Tokenizer::Char, records, config).unwrap()
}

#[test]
fn runs_are_bit_for_bit_deterministic() {
    let records = parse_jsonl(&pairs_jsonl()).unwrap();
    let run = |seed| {
        let mut s = session(LossMix::single(LossKind::Sigmoid), &records, 1e-2, seed);
        let lines: Vec<String> =
            (0..5).map(|_| serde_json::to_string(&s.step().unwrap()).unwrap()).collect();
        (lines, s.engine().params())
    };
    let (a_lines, a_params) = run(3);
    let (b_lines, b_params) = run(3);
    assert_eq!(a_lines, b_lines);
    assert!(a_params.iter().zip(&b_params).all(|(a, b)| a.to_bits() == b.to_bits()));
    let (c_lines, _) = run(4);
    assert_ne!(a_lines, c_lines, "another seed must pick other batches");
}

#[test]
fn dpo_separates_the_pairs_and_the_reference_stays_frozen() {
    let records = parse_jsonl(&pairs_jsonl()).unwrap();
    let mut s = session(LossMix::single(LossKind::Sigmoid), &records, 1e-2, 0);
    let reference_before = s.row_logps().0.to_vec();
    let start = s.instruments().clone();
    assert_eq!(
        start.reward_accuracy,
        Some(0.0),
        "at step 0 policy = reference, so no reward is positive"
    );
    assert!(start.logps_chosen_change.abs() < 1e-12);
    let mut last = None;
    for _ in 0..40 {
        last = Some(s.step().unwrap());
    }
    let last = last.unwrap();
    assert_eq!(
        s.row_logps().0,
        reference_before.as_slice(),
        "the reference log-probs never change"
    );
    // Half the pairs prefer " Yes." and half " No.": a 60k-parameter random model separates
    // at least 7 of the 8 within 40 steps.
    assert!(last.eval.reward_accuracy.unwrap() >= 0.875, "{last:?}");
    assert!(last.eval.ranking_accuracy.unwrap() >= 0.75, "{last:?}");
    assert!(last.loss < 0.3, "DPO loss should fall well below ln 2: {}", last.loss);
    // Margins in the pairs table agree with the batch-free definition β(ρw − ρl).
    for p in s.pairs() {
        let margin = 0.1
            * ((p.policy_chosen - p.reference_chosen) - (p.policy_rejected - p.reference_rejected));
        assert!((p.margin - margin).abs() < 1e-12);
    }
    assert!(s.pairs().iter().filter(|p| p.margin > 0.0).count() >= 7);
}

#[test]
fn every_loss_of_the_zoo_trains() {
    let pairs = parse_jsonl(&pairs_jsonl()).unwrap();
    let ranked = parse_jsonl(&ranked_jsonl()).unwrap();
    let unpaired = parse_jsonl(&unpaired_jsonl()).unwrap();
    for kind in LossKind::ALL {
        let records = match kind.data_shape() {
            DataShape::Paired => &pairs,
            DataShape::Ranked => &ranked,
            DataShape::Unpaired => &unpaired,
        };
        let mut s = session(LossMix::single(kind), records, 5e-3, 1);
        let before = s.engine().params();
        let first = s.step().unwrap();
        for _ in 0..10 {
            s.step().unwrap();
        }
        let last = s.step().unwrap();
        assert!(first.loss.is_finite() && last.loss.is_finite(), "{kind:?}");
        assert!(s.engine().params() != before, "{kind:?}: weights did not move");
        // The chosen side must gain on the rejected side under every preference loss.
        assert!(
            last.eval.logps_chosen_change - last.eval.logps_rejected_change > 0.0,
            "{kind:?}: {last:?}"
        );
    }
}

#[test]
fn rpo_mix_dampens_the_fall_of_the_chosen_log_prob() {
    let records = parse_jsonl(&pairs_jsonl()).unwrap();
    let run = |mix: &str| {
        let mut s = session(LossMix::parse(mix).unwrap(), &records, 1e-2, 2);
        (0..30).map(|_| s.step().unwrap()).last().unwrap().eval.logps_chosen_change
    };
    let dpo = run("sigmoid");
    let rpo = run("sigmoid+1.0*sft");
    assert!(rpo > dpo, "the NLL term should keep log π(yw) higher: dpo {dpo}, rpo {rpo}");
}

#[test]
fn data_errors_name_the_line_and_field_and_invalid_config_is_rejected() {
    let text = format!(
        "{}\n{{\"prompt\": \"Q\", \"chosen\": \"{}\", \"rejected\": \" x\"}}\n",
        pairs_jsonl(),
        "a".repeat(40)
    );
    let records = parse_jsonl(&text).unwrap();
    let engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let config = SessionConfig {
        loss: LossMix::single(LossKind::Sigmoid),
        params: LossParams::default(),
        optimizer: AdamWConfig::default(),
        batch_size: 4,
        seed: 0,
        eval_every: 1,
        final_step: 0,
        kl_sampled_every: 0,
    };
    let err = Session::with_lines(
        engine,
        &Tokenizer::Char,
        &records,
        Some(&record_lines(&text)),
        config.clone(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("line 10") && err.contains("\"chosen\"") && err.contains("context"),
        "{err}"
    );

    let unpaired = parse_jsonl(&unpaired_jsonl()).unwrap();
    let engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let err = Session::new(engine, &Tokenizer::Char, &unpaired, config.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("record 1") && err.contains("unpaired"), "{err}");

    let engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let bad = SessionConfig { params: LossParams { beta: 0.0, ..LossParams::default() }, ..config };
    let err = Session::new(engine, &Tokenizer::Char, &records, bad).err().unwrap().to_string();
    assert!(err.contains("beta"), "{err}");
}

/// `step_async` (the browser's path) runs the same code as `step`: on the CPU engine, whose
/// async calls return the blocking calls' results, the two runs are the same bit for bit.
#[test]
fn async_session_equals_blocking_session_bit_for_bit() {
    let records = parse_jsonl(&pairs_jsonl()).unwrap();
    let mut blocking = session(LossMix::single(LossKind::Sigmoid), &records, 1e-2, 5);
    let engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let mut awaited = pollster::block_on(Session::new_async(
        engine,
        &Tokenizer::Char,
        &records,
        blocking.config().clone(),
    ))
    .unwrap();
    assert_eq!(
        serde_json::to_string(blocking.pairs()).unwrap(),
        serde_json::to_string(awaited.pairs()).unwrap()
    );
    for _ in 0..5 {
        let a = serde_json::to_string(&blocking.step().unwrap()).unwrap();
        let b = serde_json::to_string(&pollster::block_on(awaited.step_async()).unwrap()).unwrap();
        assert_eq!(a, b);
    }
    let awaited_params = pollster::block_on(awaited.engine().params_async()).unwrap();
    assert!(blocking
        .engine()
        .params()
        .iter()
        .zip(&awaited_params)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(
        serde_json::to_string(&pollster::block_on(awaited.evaluate_async()).unwrap()).unwrap(),
        serde_json::to_string(&blocking.evaluate().unwrap()).unwrap()
    );
}

/// Evaluating the whole dataset only every few steps (and after the last) changes no
/// training number: the same weights and batch metrics bit for bit; steps in between carry
/// the last instruments, and `eval/step` says from when.
#[test]
fn eval_every_spaces_the_evaluations_and_changes_no_training_number() {
    let records = parse_jsonl(&pairs_jsonl()).unwrap();
    let mut every = session(LossMix::single(LossKind::Sigmoid), &records, 1e-2, 6);
    let engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let mut spaced = Session::new(
        engine,
        &Tokenizer::Char,
        &records,
        SessionConfig { eval_every: 3, final_step: 7, ..every.config().clone() },
    )
    .unwrap();
    assert_eq!(spaced.eval_every(), 3);
    let mut evaluated_at = Vec::new();
    for step in 1..=8u32 {
        let (a, b) = (every.step().unwrap(), spaced.step().unwrap());
        assert_eq!(
            (a.loss.to_bits(), a.rewards_margins.to_bits()),
            (b.loss.to_bits(), b.rewards_margins.to_bits()),
            "step {step}"
        );
        assert_eq!(a.eval.step, step);
        evaluated_at.push(b.eval.step);
        if b.eval.step == step {
            assert_eq!(a.eval, b.eval, "step {step}");
        }
    }
    assert_eq!(evaluated_at, [0, 0, 3, 3, 3, 6, 7, 7]);
    assert!(every
        .engine()
        .params()
        .iter()
        .zip(spaced.engine().params())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // automatic: every step for a dataset this small (16 rows)
    let engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let auto = Session::new(
        engine,
        &Tokenizer::Char,
        &records,
        SessionConfig { eval_every: 0, ..every.config().clone() },
    )
    .unwrap();
    assert_eq!(auto.eval_every(), 1);
}
