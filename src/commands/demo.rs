//! `demo`: runs [`scenario`] and prints each step as it happens, then the summary.
//! Needs no configuration file: the demo writes its own in its scratch folder.

use super::ExitCode;
use crate::cli::DemoArgs;
use crate::outln;
use crate::output::{human_bytes, human_seconds, print_json, Format};
use anyhow::{Context as _, Result};
use scenario::{run_demo, DemoOptions, Reporter};

mod scenario;

/// Prints steps and notes on stdout (stderr with `--format json`, so stdout holds
/// only the summary document).
struct Printer {
    json: bool,
}

impl Reporter for Printer {
    fn step(&mut self, n: u32, title: &str) {
        self.line(&format!("[{n}/8] {title}"));
    }

    fn note(&mut self, text: &str) {
        self.line(&format!("      {text}"));
    }
}

impl Printer {
    fn line(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            let _ = outln!("{s}");
        }
    }
}

/// Runs the verb: exit 0 only when the recovered server holds exactly the data of the
/// target moment.
pub fn run(format: Format, a: &DemoArgs) -> Result<ExitCode> {
    let opts = DemoOptions {
        pg_bin: a.pg_bin.clone(),
        scale: a.scale,
        keep: a.keep,
        workdir: a.workdir.clone(),
        exe: std::env::current_exe().context("locating the pgbk binary")?,
    };
    let mut printer = Printer {
        json: format == Format::Json,
    };
    let s = run_demo(&opts, &mut printer)
        .context("demo failed (everything it started was stopped and removed)")?;
    let code = if s.verified { 0 } else { 1 };
    if format == Format::Json {
        print_json(&s)?;
        return Ok(code);
    }
    outln!("Summary")?;
    outln!(
        "  Backup:       {} ({} raw, {} stored) in {}",
        s.backup_id,
        human_bytes(s.backup_bytes),
        human_bytes(s.stored_bytes),
        human_seconds(s.backup_secs)
    )?;
    outln!(
        "  RPO:          {} of WAL, {} (streaming lag at the target moment)",
        human_bytes(s.rpo_bytes),
        s.rpo_secs
            .map(human_seconds)
            .unwrap_or_else(|| "unknown".into())
    )?;
    outln!(
        "  RTO:          {} (recover start to the recovered server accepting writes)",
        human_seconds(s.rto_secs)
    )?;
    outln!("  Target time:  {}", s.target_time)?;
    outln!(
        "  Verified rows: {} of {} pgbench_history rows at the target",
        s.recovered_rows,
        s.expected_rows
    )?;
    outln!(
        "  Verification: {}",
        if s.verified {
            "PASSED (first marker present, second absent, row counts equal)"
        } else {
            "FAILED"
        }
    )?;
    Ok(code)
}
