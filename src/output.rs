//! One output formatter for every verb: plain text for people, `--format json` for
//! programs, and the Nagios one-liner for monitoring.

use serde::Serialize;
use std::io::Write;

/// How a verb prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

/// An error chain as one line, each cause added only when it says something the
/// line does not already say (library errors often carry their source's text, so
/// `{:#}` printed "Connection refused" three times).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let bare = text.split(" (os error").next().unwrap_or(&text).trim();
        if bare.is_empty() || out.contains(bare) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The JSON document a failed verb prints with `--format json`:
/// `{"error": {"message": …, "server": …}}` (the server when the message names one).
pub fn print_json_error(message: &str) {
    let server = message
        .split_once("server '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(name, _)| name.to_string());
    let doc = serde_json::json!({ "error": { "message": message, "server": server } });
    println!("{doc}");
}

/// Whether this process already printed its JSON document (a verb that reports a
/// FAILED backup and then fails prints no second document for the error).
static JSON_PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`print_json`] ran.
pub fn json_printed() -> bool {
    JSON_PRINTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Prints a value as pretty JSON followed by a newline.
pub fn print_json<T: Serialize>(value: &T) -> std::io::Result<()> {
    JSON_PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)
}

/// Nagios plugin states and their exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum NagiosState {
    /// 0
    Ok,
    /// 1
    Warning,
    /// 2
    Critical,
    /// 3: the state could not be determined.
    Unknown,
}

impl NagiosState {
    /// The plugin exit code Nagios expects.
    pub fn exit_code(self) -> i32 {
        match self {
            NagiosState::Ok => 0,
            NagiosState::Warning => 1,
            NagiosState::Critical => 2,
            NagiosState::Unknown => 3,
        }
    }

    /// The word Nagios shows.
    pub fn label(self) -> &'static str {
        match self {
            NagiosState::Ok => "OK",
            NagiosState::Warning => "WARNING",
            NagiosState::Critical => "CRITICAL",
            NagiosState::Unknown => "UNKNOWN",
        }
    }
}

/// Bytes in binary units, as `du -h` would print them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration in seconds as `1h 02m 03s` / `4m 05s` / `6.0s`.
pub fn human_seconds(s: f64) -> String {
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let t = s as u64;
    let (h, m, sec) = (t / 3600, (t % 3600) / 60, t % 60);
    if h > 0 {
        format!("{h}h {m:02}m {sec:02}s")
    } else {
        format!("{m}m {sec:02}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
        assert_eq!(human_seconds(3.25), "3.2s");
        assert_eq!(human_seconds(3723.0), "1h 02m 03s");
    }
}
