//! `recover` (alias `restore`): restore a backup into a directory and write the
//! settings that make PostgreSQL recover to the chosen target when it starts.

use super::{Context, ExitCode, UsageError};
use crate::cli::RecoverArgs;
use crate::output::{human_bytes, human_seconds, Report};
use crate::restore::target::shell_quote;
use crate::restore::{self, RecoverRequest, RecoverSummary, RestoreError, WalSource};
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// Parses `NAME:LOCATION` (the location may itself hold colons).
fn tablespace_arg(s: &str) -> Result<(String, PathBuf)> {
    match s.split_once(':') {
        Some((name, loc)) if !name.is_empty() && !loc.is_empty() => {
            Ok((name.to_string(), PathBuf::from(loc)))
        }
        _ => Err(UsageError(format!("--tablespace '{s}': expected NAME:LOCATION")).into()),
    }
}

/// `<absolute pgbk binary> -c <absolute config file>`, shell-quoted, for a
/// restore_command that may run as another user from another directory.
fn get_wal_command(ctx: &Context) -> Result<String> {
    let exe = std::env::current_exe().context("locating the pgbk binary")?;
    let config = std::fs::canonicalize(&ctx.config.file)
        .with_context(|| format!("{}", ctx.config.file.display()))?;
    Ok(format!(
        "{} -c {}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&config.to_string_lossy())
    ))
}

/// `--port` and every `--set KEY=VALUE`, checked: a key is a PostgreSQL setting name.
fn overrides(a: &RecoverArgs) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if let Some(p) = a.port {
        out.push(("port".to_string(), p.to_string()));
    }
    for kv in &a.set {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(UsageError(format!("--set '{kv}': expected KEY=VALUE")).into());
        };
        let k = k.trim();
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(UsageError(format!("--set '{kv}': '{k}' is not a setting name")).into());
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Runs the verb.
pub fn run(ctx: &Context, a: &RecoverArgs) -> Result<ExitCode> {
    let server = super::server_config(ctx, &a.server)?;
    let repository = super::repository(ctx, server)?;
    let target = a.target.target();
    let tablespaces = a
        .tablespace
        .iter()
        .map(|t| tablespace_arg(t))
        .collect::<Result<Vec<_>>>()?;
    let wal = if a.get_wal && !a.no_get_wal {
        WalSource::GetWal {
            command: get_wal_command(ctx)?,
            partial: a.partial,
        }
    } else {
        WalSource::Copy
    };
    let jobs = a.jobs.filter(|&j| j > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let remote = match &a.remote_ssh_command {
        Some(cmd) => Some(
            crate::ssh::SshTarget::parse(cmd)
                .map_err(|e| UsageError(format!("--remote-ssh-command: {e}")))?,
        ),
        None => None,
    };
    let req = RecoverRequest {
        server: server.name.clone(),
        backup_id: a.backup_id.clone(),
        destination: a.destination.clone(),
        target,
        exclusive: a.exclusive,
        target_tli: a.target_tli,
        target_action: a.target_action,
        tablespaces,
        standby_mode: a.standby_mode,
        wal,
        jobs,
        delta: a.delta,
        remote,
        overrides: overrides(a)?,
        source: crate::pg::ConnInfo::parse(&server.conninfo)
            .ok()
            .map(|c| (c.host(), c.port())),
    };
    let progress = super::progress::for_cli(ctx.quiet);
    let dest = a.destination.clone();
    if req.remote.is_none() {
        on_interrupt_say_incomplete(&dest);
    }
    let summary = match restore::recover(&repository, req, progress.as_ref()) {
        Ok(s) => s,
        Err(RestoreError::Usage(m)) => return Err(UsageError(m).into()),
        Err(e) => {
            if dest.join(restore::destination::INCOMPLETE_MARKER).exists() {
                return Err(anyhow::anyhow!(
                    "{e}; {} is incomplete: remove it or rerun with --delta",
                    dest.display()
                ));
            }
            return Err(e.into());
        }
    };
    let root_owned = summary.remote.is_none()
        && std::fs::metadata(&summary.destination)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
    ctx.emit(&Recovered {
        summary,
        quiet: ctx.quiet,
        root_owned,
    })?;
    Ok(0)
}

/// The recovery's summary; its text says how to start PostgreSQL on the copy
/// (nothing with `--quiet`).
#[derive(Serialize)]
#[serde(transparent)]
struct Recovered {
    summary: RecoverSummary,
    #[serde(skip)]
    quiet: bool,
    /// The local destination belongs to root (PostgreSQL will not start on it).
    #[serde(skip)]
    root_owned: bool,
}

impl Report for Recovered {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let summary = &self.summary;
        let f = &summary.files;
        writeln!(
            w,
            "Recovered backup {} of server '{}' into {}{}",
            summary.backup_id,
            summary.server,
            summary.destination.display(),
            match &summary.remote {
                Some(r) => format!(" on {r}"),
                None => String::new(),
            }
        )?;
        if summary.delta {
            writeln!(
                w,
                "  files: {} written ({}), {} unchanged ({} skipped), {} removed",
                f.files_written,
                human_bytes(f.bytes_written),
                f.files_skipped,
                human_bytes(f.bytes_skipped),
                f.removed
            )?;
        } else {
            writeln!(
                w,
                "  files: {} ({}), {} directories",
                f.files_written,
                human_bytes(f.bytes_written),
                f.dirs
            )?;
        }
        for t in &summary.tablespaces {
            writeln!(
                w,
                "  tablespace {} ({}): {}",
                t.name.as_deref().unwrap_or("-"),
                t.oid,
                t.location.display()
            )?;
        }
        if summary.wal_files > 0 {
            writeln!(
                w,
                "  WAL: {} file{} ({}) in {}",
                summary.wal_files,
                if summary.wal_files == 1 { "" } else { "s" },
                human_bytes(summary.wal_bytes),
                summary.destination.join(restore::wal::WAL_DIR).display()
            )?;
        }
        writeln!(
            w,
            "  duration: {}, throughput {}/s",
            human_seconds(summary.duration_secs),
            human_bytes(summary.bytes_per_sec as u64)
        )?;
        match &summary.target {
            Some(t) => writeln!(w, "  recovery target: {t}")?,
            None => writeln!(w, "  recovery target: none (replays all available WAL)")?,
        }
        writeln!(
            w,
            "  recovery settings appended to postgresql.auto.conf; {} created",
            summary.signal_file
        )?;
        writeln!(
            w,
            "  restore_command = {}",
            summary.settings.restore_command
        )?;
        if summary.settings.disable_archive_command {
            writeln!(w, "  archive_command = false: the copy must not archive into the server's repository; set it again once the copy is meant to replace the server")?;
        }
        for warning in &summary.warnings {
            writeln!(w, "Warning: {warning}")?;
        }
        let dest = shell_quote(&summary.destination.to_string_lossy());
        if self.root_owned {
            writeln!(w, "The files belong to root: give them to the PostgreSQL user first (chown -R postgres: {dest}), or recover into a directory that user owns")?;
        }
        match &summary.remote {
            Some(r) => writeln!(
                w,
                "Start PostgreSQL on it (on {r}) to recover: pg_ctl -D {dest} start"
            )?,
            None => writeln!(
                w,
                "Start PostgreSQL on it to recover: pg_ctl -D {dest} start"
            )?,
        }
        Ok(())
    }
}

/// The line printed when SIGINT or SIGTERM ends a recovery (prepared before the
/// handler is installed: a signal handler may only write it).
static INTERRUPTED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

extern "C" fn interrupted(sig: libc::c_int) {
    if let Some(m) = INTERRUPTED.get() {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
        unsafe {
            libc::write(2, m.as_ptr().cast(), m.len());
        }
    }
    // SAFETY: see above.
    unsafe { libc::_exit(128 + sig) }
}

/// Ctrl-C or SIGTERM in the middle of a local recovery: say what is left and exit
/// non-zero. The destination keeps its marker and has no `global/pg_control` yet,
/// so PostgreSQL refuses to start on it and a later recover wants `--delta`.
fn on_interrupt_say_incomplete(dest: &std::path::Path) {
    let _ = INTERRUPTED.set(
        format!(
            "\npgbk: interrupted: {} is incomplete; remove it or rerun with --delta\n",
            dest.display()
        )
        .into_bytes(),
    );
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            libc::signal(sig, interrupted as *const () as libc::sighandler_t);
        }
    }
}
