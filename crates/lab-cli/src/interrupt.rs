//! Ctrl-C (SIGINT) and SIGTERM for long work: the first asks the running loop to stop at
//! its next step boundary (it keeps what is done and exits 130); a second ends the process
//! at once, keeping nothing new (outputs are still staged under temporary names, so what
//! was on disk before is untouched).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Catch SIGINT and SIGTERM from now on. Called by the commands that check [`requested`].
pub fn install() {
    let handler = || {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("alignlab: interrupted again; stopping now without writing");
            std::process::exit(130);
        }
        eprintln!("alignlab: interrupted; stopping after this step (again to stop at once)");
    };
    // Fails only if a handler is already set, which then does the same job.
    let _ = ctrlc::set_handler(handler);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
