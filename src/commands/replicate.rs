//! `replicate`: copies backups and WAL from a passive server's primary manager, once
//! or (`--follow`) every few seconds until SIGTERM/SIGINT.

use super::{Context, ExitCode, UsageError};
use crate::config::ServerConfig;
use crate::output::{human_bytes, Report};
use crate::peer::{replicate_pass_locked, PassReport};
use anyhow::Result;
use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Seconds between two passes of `--follow` (the partial segment's freshness is the
/// copy's RPO).
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// One server's outcome, as printed.
#[derive(Debug, Serialize)]
struct Outcome {
    server: String,
    ok: bool,
    error: Option<String>,
    report: Option<PassReport>,
}

/// One round of passes, as printed.
#[derive(Serialize)]
#[serde(transparent)]
struct Round {
    outcomes: Vec<Outcome>,
    #[serde(skip)]
    quiet: bool,
}

impl Report for Round {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        for r in self.outcomes.iter().filter_map(|o| o.report.as_ref()) {
            writeln!(
                w,
                "server '{}': from {}: {} WAL file(s) copied ({} already here), {} backup(s) copied{}, {} object(s) copied ({} already here), {} moved; lag {}",
                r.server,
                r.primary,
                r.wal_copied,
                r.wal_present,
                r.backups_copied.len(),
                if r.backups_pending.is_empty() {
                    String::new()
                } else {
                    format!(" ({} pending: {})", r.backups_pending.len(), r.backups_pending.join(", "))
                },
                r.files_copied,
                r.files_present,
                human_bytes(r.bytes_moved),
                r.lag_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "unknown".into())
            )?;
        }
        Ok(())
    }

    fn text_errors(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for o in &self.outcomes {
            if let Some(e) = &o.error {
                lines.push(format!("pgbk: {e}"));
            }
            for e in o.report.iter().flat_map(|r| &r.errors) {
                lines.push(format!("pgbk: server '{}': {e}", o.server));
            }
        }
        lines
    }
}

fn one_round(ctx: &Context, servers: &[&ServerConfig], stop: &AtomicBool) -> Vec<Outcome> {
    servers
        .iter()
        .map(|s| match replicate_pass_locked(&ctx.config.home, s, stop) {
            Ok(r) => Outcome {
                server: s.name.clone(),
                ok: r.errors.is_empty(),
                error: None,
                report: Some(r),
            },
            Err(e) => Outcome {
                server: s.name.clone(),
                ok: false,
                error: Some(format!("{e:#}")),
                report: None,
            },
        })
        .collect()
}

/// Runs the verb.
pub fn run(ctx: &Context, a: &crate::cli::ReplicateArgs) -> Result<ExitCode> {
    let servers: Vec<&ServerConfig> = if a.server == "all" {
        let list: Vec<_> = ctx
            .config
            .servers
            .values()
            .filter(|s| s.active && s.primary_ssh_command.is_some())
            .collect();
        if list.is_empty() {
            return Err(UsageError(
                "replicate all: no active passive server (none has primary_ssh_command)".into(),
            )
            .into());
        }
        list
    } else {
        let s = super::server_config(ctx, &a.server)?;
        if s.primary_ssh_command.is_none() {
            return Err(UsageError(format!(
                "server '{}': not a passive server (no primary_ssh_command in {})",
                s.name,
                s.file.display()
            ))
            .into());
        }
        vec![s]
    };
    if !a.follow {
        let stop = AtomicBool::new(false);
        let outcomes = one_round(ctx, &servers, &stop);
        let ok = outcomes.iter().all(|o| o.ok);
        ctx.emit(&Round {
            outcomes,
            quiet: ctx.quiet,
        })?;
        return Ok(if ok { 0 } else { 1 });
    }
    // Signals are watched on a thread of their own, so a pass in progress sees the
    // request between two objects and ends cleanly (nothing half-named is left).
    let stop = Arc::new(AtomicBool::new(false));
    let rt = super::runtime()?;
    let flag = Arc::clone(&stop);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let mut rx = super::stop_on_signal("replicate stops after this pass");
            let _ = ready_tx.send(());
            while rx.changed().await.is_ok() {
                if *rx.borrow() {
                    flag.store(true, Ordering::Relaxed);
                    break;
                }
            }
        })
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    let mut last_ok = true;
    while !stop.load(Ordering::Relaxed) {
        let outcomes = one_round(ctx, &servers, &stop);
        last_ok = outcomes.iter().all(|o| o.ok);
        ctx.emit(&Round {
            outcomes,
            quiet: ctx.quiet,
        })?;
        let deadline = std::time::Instant::now() + FOLLOW_INTERVAL;
        while std::time::Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(if last_ok { 0 } else { 1 })
}
