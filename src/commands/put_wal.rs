//! `put-wal`: stores one WAL file read on stdin, for
//! `archive_command = 'ssh pgbk@backup pgbk put-wal pg1 --name %f < %p'`.

use super::{Context, ExitCode, UsageError};
use crate::output::{human_bytes, Report};
use crate::wal::put::{PutError, PutOutcome, PutStatus};
use crate::wal::put_ahead::{put_wal_ahead, ready_after};
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// Runs the verb: exit 0 only once the file is stored and fsynced (or was already
/// archived with the same content).
pub fn run(ctx: &Context, a: &crate::cli::PutWalArgs) -> Result<ExitCode> {
    let s = super::server_config(ctx, &a.server)?;
    let repository = super::repository(ctx, s)?;
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        return Err(UsageError(format!(
            "server '{}': put-wal reads the WAL file on stdin (e.g. '< %p' in archive_command), not from a terminal",
            s.name
        ))
        .into());
    }
    // On the database host with `< %p`, the segments PostgreSQL marked ready after
    // this one are stored at the same time.
    let ahead = match (&a.name, stdin_file()) {
        (Some(name), Some(path)) => ready_after(&path, name, s.put_wal_ahead as usize),
        _ => Vec::new(),
    };
    let mut stdin = std::io::stdin().lock();
    let o = match put_wal_ahead(&repository, &s.name, a.name.as_deref(), &mut stdin, &ahead) {
        Ok(o) => o,
        Err(e @ PutError::BadName { .. }) => return Err(UsageError(e.to_string()).into()),
        Err(e) => return Err(e.into()),
    };
    ctx.emit(&Stored {
        outcome: o,
        quiet: ctx.quiet,
    })?;
    Ok(0)
}

/// The file stdin is, when it is a regular file (`< %p`).
fn stdin_file() -> Option<std::path::PathBuf> {
    use std::os::fd::AsRawFd;
    let fd = std::io::stdin().as_raw_fd();
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    std::fs::metadata(&path)
        .ok()
        .filter(|m| m.is_file())
        .map(|_| path)
}

/// put-wal's outcome; its text is one line, none with `--quiet`.
#[derive(Serialize)]
#[serde(transparent)]
struct Stored {
    outcome: PutOutcome,
    #[serde(skip)]
    quiet: bool,
}

impl Report for Stored {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let o = &self.outcome;
        let what = match o.status {
            PutStatus::Stored => format!(
                "stored ({}, {} on disk)",
                human_bytes(o.size),
                human_bytes(o.stored_size)
            ),
            PutStatus::AlreadyPresent => "already archived with the same content".into(),
            PutStatus::Ignored => "backup history file accepted, not stored".into(),
        };
        writeln!(w, "{}: {} {what}", o.server, o.name)
    }
}
