//! How a verb shows the progress of a long job: an indicatif bar when stderr is a
//! terminal, a plain log line every few seconds elsewhere, nothing with `--quiet`.

use crate::output::human_bytes;
use crate::progress::{NoProgress, Progress};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The progress display a verb should use: nothing with `quiet`, a bar when stderr
/// is a terminal, else an info line every 10 seconds.
pub fn for_cli(quiet: bool) -> Box<dyn Progress> {
    if quiet {
        Box::new(NoProgress)
    } else if std::io::stderr().is_terminal() {
        Box::new(BarProgress::new())
    } else {
        Box::new(LogProgress::new(Duration::from_secs(10)))
    }
}

/// Plain `tracing::info!` lines, at most one per interval (and one at the end).
#[derive(Debug)]
pub struct LogProgress {
    interval: Duration,
    state: Mutex<LogState>,
}

#[derive(Debug)]
struct LogState {
    what: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
}

impl LogProgress {
    /// Logs at most once per `interval`.
    pub fn new(interval: Duration) -> LogProgress {
        let now = Instant::now();
        LogProgress {
            interval,
            state: Mutex::new(LogState {
                what: String::new(),
                total: None,
                done: 0,
                started: now,
                last: now,
            }),
        }
    }

    fn line(s: &LogState) -> String {
        let secs = s.started.elapsed().as_secs_f64().max(0.001);
        let rate = human_bytes((s.done as f64 / secs) as u64);
        match s.total {
            Some(t) if t > 0 => format!(
                "{}: {} of ~{} ({:.0}%), {rate}/s",
                s.what,
                human_bytes(s.done),
                human_bytes(t),
                (s.done as f64 * 100.0 / t as f64).min(100.0)
            ),
            _ => format!("{}: {}, {rate}/s", s.what, human_bytes(s.done)),
        }
    }
}

impl Progress for LogProgress {
    fn start(&self, what: &str, total: Option<u64>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        *s = LogState {
            what: what.to_string(),
            total,
            done: 0,
            started: now,
            last: now,
        };
    }
    fn set(&self, done: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done = done;
        if s.last.elapsed() >= self.interval {
            s.last = Instant::now();
            tracing::info!("{}", Self::line(&s));
        }
    }
    fn set_total(&self, total: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.total = Some(total);
    }
    fn finish(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.what.is_empty() {
            tracing::info!("{}", Self::line(&s));
            s.what.clear();
        }
    }
}

/// An indicatif bar on stderr (bytes, rate, ETA when the total is known).
pub struct BarProgress {
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl BarProgress {
    /// A bar drawn on stderr; it appears at the first `start`.
    pub fn new() -> BarProgress {
        BarProgress {
            bar: Mutex::new(None),
        }
    }
}

impl Default for BarProgress {
    fn default() -> Self {
        BarProgress::new()
    }
}

impl Progress for BarProgress {
    fn start(&self, what: &str, total: Option<u64>) {
        use indicatif::{ProgressBar, ProgressStyle};
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
        } else {
            "{msg} {spinner} {bytes} {binary_bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        let mut slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.replace(bar) {
            old.finish_and_clear();
        }
    }
    fn set(&self, done: u64) {
        let slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = slot.as_ref() {
            if bar.length().is_some_and(|l| done > l) {
                bar.set_length(done);
            }
            bar.set_position(done);
        }
    }
    fn set_total(&self, total: u64) {
        let slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = slot.as_ref() {
            bar.set_length(total.max(bar.position()));
        }
    }
    fn finish(&self) {
        let mut slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = slot.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_line_shows_share_of_total() {
        let p = LogProgress::new(Duration::from_secs(3600));
        p.start("backup", Some(200));
        p.set(50);
        let s = p.state.lock().unwrap();
        let line = LogProgress::line(&s);
        assert!(line.starts_with("backup: 50 B of ~200 B (25%)"), "{line}");
    }
}
