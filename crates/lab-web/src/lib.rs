//! alignlab in the browser. The same wasm module runs twice: on the page, where
//! [`start`] mounts the Leptos app ([`app`]), and in a Web Worker (`web/worker.js` calls
//! [`worker::worker_main`]), which holds the model and the training sessions so that
//! training never blocks the page. They talk in [`protocol`] messages; the settings are
//! one [`state::UiState`] whose URL form is the shareable link.
//!
//! No model math lives here: the worker calls `lab-train` and `lab-core`, the page renders
//! the numbers it is sent.

pub mod divergence;
pub mod history;
pub mod live;
pub mod protocol;
pub mod replica;
pub mod state;
pub mod workbench;

#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod bridge;
#[cfg(target_arch = "wasm32")]
mod charts;
#[cfg(target_arch = "wasm32")]
pub mod worker;

/// Mount the app when loaded by a page; do nothing in the worker (it calls `worker_main`).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    if web_sys::window().is_some() {
        leptos::mount::mount_to_body(app::App);
    }
}
