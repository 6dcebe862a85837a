//! The KL meter on the CPU engine: `eval/kl` against a brute-force recomputation from the
//! engine's logits, 0 at the start and growing under a high learning rate; `eval/kl_sampled`
//! at its cadence, without changing any training number; batch sampling against sampling
//! one prompt at a time.

use lab_core::config::{init_params, GptConfig};
use lab_core::data::{parse_jsonl, Record};
use lab_core::engine::{AdamWConfig, TokenBatch};
use lab_core::loss::{DataShape, LossKind, LossMix, LossParams};
use lab_core::rng::Rng;
use lab_core::sample::{generate, sample_batch, SampleConfig};
use lab_core::tokenizer::Tokenizer;
use lab_core::Engine;
use lab_cpu::CpuEngine;
use lab_train::{EncodedRow, Examples, Session, SessionConfig};

const MICRO: GptConfig = GptConfig { vocab: 96, ctx: 32, d_model: 32, n_layer: 2, n_head: 4 };

fn records() -> Vec<Record> {
    let facts = [
        ("Is fire hot?", " Yes.", " No."),
        ("Is ice hot?", " No.", " Yes."),
        ("Is 2 > 1?", " Yes.", " No."),
        ("Is 1 > 2?", " No.", " Yes."),
        ("Sky color?", " Blue.", " Green."),
        ("Grass color?", " Green.", " Blue."),
    ];
    let jsonl: String = facts
        .iter()
        .map(|(p, c, r)| {
            format!("{{\"prompt\": \"{p}\", \"chosen\": \"{c}\", \"rejected\": \"{r}\"}}\n")
        })
        .collect();
    parse_jsonl(&jsonl).unwrap()
}

fn config(lr: f32, kl_sampled_every: u32) -> SessionConfig {
    SessionConfig {
        loss: LossMix::single(LossKind::Sigmoid),
        params: LossParams::default(),
        optimizer: AdamWConfig { lr, ..AdamWConfig::default() },
        batch_size: 4,
        seed: 3,
        eval_every: 1,
        final_step: 0,
        kl_sampled_every,
    }
}

fn session(config: SessionConfig) -> Session<CpuEngine> {
    let engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    Session::new(engine, &Tokenizer::Char, &records(), config).unwrap()
}

/// The session's rows in its order: chosen, rejected, pair after pair.
fn rows() -> Vec<EncodedRow> {
    let Examples::Paired(pairs) =
        Examples::encode(&Tokenizer::Char, &records(), None, DataShape::Paired, MICRO.ctx).unwrap()
    else {
        panic!("paired data")
    };
    pairs.into_iter().flat_map(|p| [p.chosen, p.rejected]).collect()
}

/// Per row, the probabilities (f64, by hand) at each position predicting a completion token,
/// one row a forward.
fn predicting_distributions(engine: &mut CpuEngine, rows: &[EncodedRow]) -> Vec<Vec<f64>> {
    let v = MICRO.vocab;
    let mut out = Vec::new();
    for row in rows {
        let batch = TokenBatch::from_rows(&[(row.tokens.clone(), row.first_scored)]).unwrap();
        let logits = engine.logits(&batch).unwrap();
        for t in row.first_scored - 1..row.tokens.len() - 1 {
            let z: Vec<f64> = logits[t * v..(t + 1) * v].iter().map(|&x| f64::from(x)).collect();
            let total: f64 = z.iter().map(|x| x.exp()).sum();
            out.push(z.iter().map(|x| x.exp() / total).collect());
        }
    }
    out
}

/// Σ_v p·ln(p/q), averaged over the positions.
fn brute_force_kl(policy: &[Vec<f64>], reference: &[Vec<f64>]) -> f64 {
    assert_eq!(policy.len(), reference.len());
    let per_position = policy.iter().zip(reference).map(|(p, q)| {
        p.iter().zip(q).map(|(p, q)| if *p > 0.0 { p * (p / q).ln() } else { 0.0 }).sum::<f64>()
    });
    per_position.sum::<f64>() / policy.len() as f64
}

#[test]
fn kl_is_zero_at_the_start_and_matches_a_brute_force_recomputation() {
    let rows = rows();
    let mut reference_engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let reference = predicting_distributions(&mut reference_engine, &rows);
    let positions: usize = rows.iter().map(EncodedRow::completion_len).sum();
    assert_eq!(reference.len(), positions, "every predicting position of the 12 rows");

    let mut s = session(config(1e-2, 1));
    assert_eq!((s.instruments().kl, s.instruments().kl_sampled), (0.0, Some(0.0)));
    // measured, not assumed: the policy is the reference, so both are exactly 0
    let now = s.evaluate().unwrap();
    assert_eq!((now.kl, now.kl_sampled), (0.0, Some(0.0)));

    for steps in [1, 4] {
        let mut last = None;
        for _ in 0..steps {
            last = Some(s.step().unwrap());
        }
        let got = last.unwrap().eval.kl;
        let want = brute_force_kl(&predicting_distributions(s.engine_mut(), &rows), &reference);
        assert!(want > 1e-4, "training must move the policy: {want}");
        assert!((got - want).abs() <= 1e-5 * want, "eval/kl {got}, by hand {want}");
    }
}

#[test]
fn kl_grows_under_a_high_learning_rate() {
    let kl_after = |lr: f32, steps: usize| {
        let mut s = session(config(lr, 0));
        (0..steps).map(|_| s.step().unwrap().eval.kl).collect::<Vec<f64>>()
    };
    let high = kl_after(3e-2, 12);
    let low = kl_after(1e-3, 12);
    eprintln!("eval/kl at lr 3e-2: {high:?}\neval/kl at lr 1e-3: {low:?}");
    assert!(high.iter().all(|&kl| kl > 0.0));
    assert!(high[11] > 3.0 * high[0], "{high:?}");
    assert!(high[11] > 10.0 * low[11], "high {} vs low {}", high[11], low[11]);
}

/// Sampling swaps the reference weights in and the policy back without touching AdamW's
/// state: the training numbers and the weights are the same bit for bit with and without it.
#[test]
fn sampling_the_kl_changes_no_training_number() {
    let mut sampled = session(config(1e-2, 1));
    let mut plain = session(config(1e-2, 0));
    for step in 1..=6 {
        let (mut a, b) = (sampled.step().unwrap(), plain.step().unwrap());
        let estimate = a.eval.kl_sampled.take();
        assert!(estimate.is_some_and(f64::is_finite), "step {step}: {estimate:?}");
        assert_eq!(b.eval.kl_sampled, None);
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    }
    let (a, b) = (sampled.engine().params(), plain.engine().params());
    assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()));
    let last = sampled.instruments().kl_sampled.unwrap();
    assert!(last > 0.0, "the policy's own samples are likelier under it: {last}");
}

#[test]
fn kl_sampled_comes_every_nth_evaluation_and_at_the_final_step_and_never_awaited() {
    let mut s = session(SessionConfig { final_step: 7, ..config(1e-2, 3) });
    let sampled_at: Vec<u32> =
        (1..=8).filter(|_| s.step().unwrap().eval.kl_sampled.is_some()).collect();
    assert_eq!(sampled_at, [3, 6, 7]);
    let engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let mut awaited = pollster::block_on(Session::new_async(
        engine,
        &Tokenizer::Char,
        &records(),
        config(1e-2, 1),
    ))
    .unwrap();
    assert_eq!(awaited.instruments().kl_sampled, None);
    let record = pollster::block_on(awaited.step_async()).unwrap();
    assert_eq!(record.eval.kl_sampled, None);
    assert!(record.eval.kl > 0.0);
}

#[test]
fn batch_sampling_equals_sampling_one_prompt_at_a_time() {
    let mut engine = CpuEngine::new(MICRO, init_params(&MICRO, 7)).unwrap();
    let prompts: Vec<Vec<u32>> =
        rows().iter().map(|r| r.tokens[..r.first_scored].to_vec()).collect();
    let eot = Tokenizer::Char.eot();
    let greedy = SampleConfig { temperature: 0.0, top_k: 0, max_new_tokens: 12 };
    let together = sample_batch(&mut engine, &prompts, eot, &greedy, &mut Rng::new(1)).unwrap();
    for (prompt, sample) in prompts.iter().zip(&together) {
        let alone = generate(&mut engine, prompt, eot, &greedy, &mut Rng::new(1)).unwrap();
        // generate drops the end token of a sample; sample_batch keeps it
        let kept = sample.strip_suffix(&[eot]).unwrap_or(sample);
        assert_eq!(kept, alone.as_slice());
        let room = (MICRO.ctx - prompt.len()).min(greedy.max_new_tokens);
        assert!(sample.last() == Some(&eot) || sample.len() == room, "{sample:?}");
    }
    // at temperature 1, one prompt draws what generate draws from the same stream
    let random = SampleConfig { temperature: 1.0, top_k: 0, max_new_tokens: 12 };
    let one = sample_batch(&mut engine, &prompts[..1], eot, &random, &mut Rng::new(5)).unwrap();
    let alone = generate(&mut engine, &prompts[0], eot, &random, &mut Rng::new(5)).unwrap();
    assert_eq!(one[0].strip_suffix(&[eot]).unwrap_or(&one[0]), alone.as_slice());
}
