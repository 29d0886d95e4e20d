//! One output formatter for every verb: plain text for people, `--format json` for
//! programs, and the Nagios one-liner for monitoring. A verb builds a [`Report`] (its
//! result: serialisable, with a text form) and hands it to [`emit`]; errors are
//! printed by [`print_error`]. Only the command layer (`commands`, `cli`, `main`)
//! uses this module.

pub use crate::units::{human_bytes, human_seconds};
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

/// A verb's result: serialised as is for `--format json`, written by [`Report::text`]
/// for people.
pub trait Report: Serialize {
    /// Writes the text form (each line ends with a newline).
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()>;

    /// Lines the text form puts on stderr after it (errors of a job that went on;
    /// JSON carries them in the document).
    fn text_errors(&self) -> Vec<String> {
        Vec::new()
    }

    /// The Nagios plugin output (state, status line, long-output lines), for
    /// verbs that monitor; `None` for the others.
    fn nagios(&self) -> Option<(NagiosState, Vec<String>)> {
        None
    }
}

/// The reports of a verb run for one server or for `all`: JSON shows one server's
/// report as an object and `all` as an array; the text is each report's in turn.
pub struct PerServer<T> {
    /// One report per server, in order.
    pub reports: Vec<T>,
    /// The verb was run for `all`.
    pub all: bool,
}

impl<T: Serialize> Serialize for PerServer<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.all, self.reports.as_slice()) {
            (false, [one]) => one.serialize(s),
            _ => self.reports.serialize(s),
        }
    }
}

impl<T: Report> Report for PerServer<T> {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        for r in &self.reports {
            r.text(w)?;
        }
        Ok(())
    }
}

/// Prints a verb's report in the chosen format: the one place that decides between
/// text and JSON.
pub fn emit<R: Report>(format: Format, report: &R) -> std::io::Result<()> {
    match format {
        Format::Json => print_json(report),
        Format::Text => {
            let mut out = std::io::stdout().lock();
            report.text(&mut out)?;
            out.flush()?;
            for line in report.text_errors() {
                eprintln!("{line}");
            }
            Ok(())
        }
    }
}

/// Prints a report as Nagios plugin output; returns the plugin's state (whose exit
/// code the verb returns), `Unknown` for a report with no Nagios form.
pub fn emit_nagios<R: Report>(report: &R) -> std::io::Result<NagiosState> {
    let (state, lines) = report.nagios().unwrap_or((
        NagiosState::Unknown,
        vec!["PGBK UNKNOWN - no Nagios output".into()],
    ));
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(state)
}

/// Prints a failed verb's error: one line on stderr, and with `--format json` the
/// JSON error document on stdout unless the verb already printed its own.
pub fn print_error(e: &anyhow::Error, format: Format) {
    let message = error_line(e);
    eprintln!("pgbk: {message}");
    if format == Format::Json && !json_printed() {
        print_json_error(&message);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct One {
        server: &'static str,
    }

    impl Report for One {
        fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
            writeln!(w, "server {}", self.server)
        }
    }

    #[test]
    fn per_server_is_an_object_for_one_and_an_array_for_all() {
        let one = PerServer {
            reports: vec![One { server: "pg1" }],
            all: false,
        };
        assert_eq!(serde_json::to_string(&one).unwrap(), r#"{"server":"pg1"}"#);
        let all = PerServer {
            reports: vec![One { server: "pg1" }],
            all: true,
        };
        assert_eq!(
            serde_json::to_string(&all).unwrap(),
            r#"[{"server":"pg1"}]"#
        );
        let mut text = Vec::new();
        all.text(&mut text).unwrap();
        assert_eq!(text, b"server pg1\n");
    }
}
