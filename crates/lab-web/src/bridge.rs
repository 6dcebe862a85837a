//! The page's side of the worker: start it, send it messages, hand its replies to the store.

use crate::protocol::{FromWorker, ToWorker};
use std::cell::RefCell;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

#[wasm_bindgen(module = "/js/glue.js")]
extern "C" {
    #[wasm_bindgen(js_name = exposeState)]
    pub fn expose_state(json: &str);
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Start `worker.js` (beside index.html), telling it which engine the link asks for, and
/// route its messages to `on_message`.
pub fn start(
    engine: crate::state::EngineChoice,
    on_message: impl Fn(FromWorker) + 'static,
) -> Result<(), String> {
    let options = WorkerOptions::new();
    options.set_type(WorkerType::Module);
    let worker =
        Worker::new_with_options(&format!("./worker.js?engine={}", engine.as_str()), &options)
            .map_err(|e| format!("could not start the training worker: {e:?}"))?;
    let onmessage = Closure::<dyn Fn(MessageEvent)>::new(move |event: MessageEvent| {
        let msg = event
            .data()
            .as_string()
            .ok_or_else(|| "not a string".to_string())
            .and_then(|t| serde_json::from_str::<FromWorker>(&t).map_err(|e| e.to_string()));
        on_message(msg.unwrap_or_else(|err| FromWorker::Error {
            message: format!("bad message from the worker: {err}"),
        }));
    });
    worker.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget();
    WORKER.with(|w| *w.borrow_mut() = Some(worker));
    Ok(())
}

pub fn send(msg: &ToWorker) {
    let text = serde_json::to_string(msg).expect("page messages serialize");
    WORKER.with(|w| {
        if let Some(worker) = w.borrow().as_ref() {
            let _ = worker.post_message(&JsValue::from_str(&text));
        }
    });
}
