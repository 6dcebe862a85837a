//! LoRA-DPO end to end on the CPU engine: `lab_train::lora::LoraEngine` over the shipped
//! starter trains only its adapters (PEFT's layout, `lab_core::lora`), starts exactly at the
//! base model (the reference), leaves every weight it does not adapt untouched, and learns.

use lab_core::checkpoint;
use lab_core::engine::AdamWConfig;
use lab_core::lora::LoraConfig;
use lab_core::loss::{LossMix, LossParams};
use lab_core::Engine;
use lab_cpu::CpuEngine;
use lab_train::lora::LoraEngine;
use lab_train::scenario::Scenario;
use lab_train::{Session, SessionConfig};
use std::path::PathBuf;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("assets")
}

#[test]
fn lora_dpo_trains_only_the_adapters_from_the_base_model() {
    let model = checkpoint::load_dir(&assets().join("models").join("starter")).unwrap();
    let records = Scenario::load(&assets(), "3d-properties").unwrap().records;
    let cfg = model.config;
    let lora = LoraConfig::new(4, 8.0, &["c_attn", "c_fc"]).unwrap();
    let adapters = lora.init(&cfg, 0);
    let engine = CpuEngine::new(cfg, model.params.clone()).unwrap();
    let engine = LoraEngine::new(engine, lora.clone(), adapters.clone()).unwrap();
    // PEFT's init (B = 0): the adapted model starts as the base, bit for bit
    assert_eq!(engine.params(), model.params);
    let config = SessionConfig {
        loss: LossMix::parse("sigmoid").unwrap(),
        params: LossParams::default(),
        optimizer: AdamWConfig { lr: 2e-3, ..AdamWConfig::default() },
        batch_size: 8,
        seed: 0,
        eval_every: 60,
        final_step: 60,
        kl_sampled_every: 0,
    };
    let mut session = Session::new(engine, &model.tokenizer, &records, config).unwrap();
    let first = session.step().unwrap();
    let mut last = first.clone();
    for _ in 1..60 {
        last = session.step().unwrap();
    }
    // it learns (lr 2e-3, 60 steps): the loss falls, the rejected answers with it
    assert!(last.loss < 0.5 * first.loss, "{} -> {}", first.loss, last.loss);
    assert!(last.eval.logps_rejected_change < -1.0, "{:?}", last.eval);
    // and, as under full fine-tuning, the chosen answers follow them down (seed 0: -9.7
    // nats against -45.7 for the rejected)
    assert!(last.eval.logps_chosen_change < 0.0, "{:?}", last.eval);
    let engine = session.engine();
    assert_eq!(engine.base(), model.params.as_slice());
    assert!(engine.adapters() != adapters.as_slice());
    // only the adapted matrices moved: c_attn and c_fc of every layer
    let merged = engine.params();
    for (name, offset, shape) in cfg.layout().tensors(&cfg) {
        let len: usize = shape.iter().product();
        let moved = merged[offset..offset + len] != model.params[offset..offset + len];
        assert_eq!(moved, name == "qkvw" || name == "fcw", "{name}");
    }
    // and the adapters are what PEFT would save
    let bytes = lora.adapters_to_safetensors(&cfg, engine.adapters()).unwrap();
    assert_eq!(lora.adapters_from_safetensors(&cfg, &bytes).unwrap(), engine.adapters());
}
