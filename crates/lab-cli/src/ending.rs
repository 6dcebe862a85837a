//! How a command ended: the JSON report it prints on stdout and the exit status that goes
//! with it.

use serde_json::Value;
use std::process::ExitCode;

/// Why a command stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Everything asked for was done (exit 0).
    Done,
    /// A scenario ran, but its phenomenon did not appear (exit 1).
    VerdictFailed,
    /// Training stopped at a non-finite loss, gradient or weight; the work up to the last
    /// good step was kept (exit 2, as for an error).
    Diverged,
    /// SIGINT or SIGTERM; the work of the finished steps was kept (exit 130, the shell's
    /// status for a run stopped by Ctrl-C).
    Interrupted,
}

/// A command's report.
#[derive(Debug)]
pub struct Report {
    pub json: Value,
    pub ending: Ending,
    /// A one-line summary for stderr, where the run did not simply finish.
    pub message: Option<String>,
}

impl Report {
    pub fn done(json: Value) -> Report {
        Report { json, ending: Ending::Done, message: None }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.ending {
            Ending::Done => 0,
            Ending::VerdictFailed => 1,
            Ending::Diverged => 2,
            Ending::Interrupted => 130,
        })
    }
}
