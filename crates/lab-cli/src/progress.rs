//! Progress of long work on stderr, so stdout stays one JSON report: a bar redrawn in place
//! when stderr is a terminal, else one JSON line every few seconds
//! (`{"progress":{"task":…,"done":…,"total":…,"seconds":…}}`, every
//! `ALIGNLAB_PROGRESS_SECONDS`, default 5).

use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    task: &'static str,
    unit: &'static str,
    total: u64,
    started: Instant,
    last: Option<Instant>,
    every: Duration,
    terminal: bool,
}

impl Progress {
    pub fn new(task: &'static str, unit: &'static str, total: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let seconds = std::env::var("ALIGNLAB_PROGRESS_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(if terminal { 0.1 } else { 5.0 });
        Progress {
            task,
            unit,
            total,
            started: Instant::now(),
            last: None,
            every: Duration::from_secs_f64(seconds),
            terminal,
        }
    }

    /// The total, once it is known.
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
    }

    /// `done` of `total` finished; `detail` (e.g. the loss) is shown with it.
    pub fn tick(&mut self, done: u64, detail: Option<(&str, f64)>) {
        let now = Instant::now();
        if now - self.last.unwrap_or(self.started) < self.every {
            return;
        }
        self.last = Some(now);
        let seconds = (now - self.started).as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let width = 24;
            let filled = (done * width / self.total.max(1)) as usize;
            let left = if done > 0 {
                format!(", ~{:.0} s left", seconds / done as f64 * (self.total - done) as f64)
            } else {
                String::new()
            };
            let detail = detail.map(|(k, v)| format!("  {k} {v:.4}")).unwrap_or_default();
            let _ = write!(
                err,
                "\r\x1b[2K{} [{}{}] {done}/{} {}{detail}  {seconds:.0} s{left}",
                self.task,
                "#".repeat(filled),
                "-".repeat(width as usize - filled),
                self.total,
                self.unit
            );
        } else {
            let mut line =
                json!({"task": self.task, "done": done, "total": self.total, "seconds": seconds});
            if let Some((k, v)) = detail {
                line[k] = Value::from(v);
            }
            let _ = writeln!(err, "{}", json!({ "progress": line }));
        }
    }

    /// End the bar's line (a terminal only).
    pub fn finish(&self) {
        if self.terminal && self.last.is_some() {
            eprintln!();
        }
    }
}
