//! `cron`: one maintenance pass over every active server, safe to run every minute and
//! never twice at once (`<home>/cron.lock`; a second `cron` names the holder and exits
//! 0 at once, as Barman's does). For each server: start `receive-wal` when
//! `streaming_archiver = on` and it is not running, run archive-wal when
//! `archiver = on`, bring backup statuses up to date
//! (stale `STARTED` backups become `FAILED`), and apply the retention policy when
//! `retention_policy_mode = auto`. `--foreground` repeats the pass every minute until
//! SIGTERM/SIGINT (systemd-style supervision).

use super::{receive_wal_lock, runtime, stop_on_signal, Context, ExitCode};
use crate::catalog::Catalog;
use crate::config::ServerConfig;
use crate::lock::{JobLock, LockError};
use crate::outln;
use crate::output::{print_json, Format};
use crate::repo::{Repository, ServerRepo};
use crate::retention::{apply_retention, RetentionPolicy};
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long `--foreground` waits between passes.
const PASS_INTERVAL: Duration = Duration::from_secs(60);

/// One thing a pass did (or could not do).
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// The server concerned (empty for the pass itself).
    pub server: String,
    /// `receive-wal-started`, `archive-wal`, `backup-status`, `retention`, `skipped` or
    /// `error`.
    pub action: String,
    /// One sentence for people.
    pub message: String,
    /// Machine-readable details.
    pub details: serde_json::Value,
}

impl Action {
    fn new(server: &str, action: &str, message: String, details: serde_json::Value) -> Action {
        Action {
            server: server.to_string(),
            action: action.to_string(),
            message,
            details,
        }
    }
}

/// The global cron lock.
pub fn cron_lock_path(ctx: &Context) -> std::path::PathBuf {
    ctx.config.home.join("cron.lock")
}

/// Runs the verb.
pub fn run(ctx: &Context, foreground: bool, keep_descriptors: bool) -> Result<ExitCode> {
    let _lock = match JobLock::acquire(&cron_lock_path(ctx), "cron") {
        Ok(l) => l,
        Err(LockError::Held { pid, path, .. }) => {
            let message = format!(
                "another cron is running (pid {pid}, lock {}); nothing to do",
                path.display()
            );
            let a = Action::new(
                "",
                "skipped",
                message,
                serde_json::json!({ "holder_pid": pid }),
            );
            print_actions(ctx, &[a])?;
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let mut children: Vec<Child> = Vec::new();
    if !foreground {
        let failed = pass(ctx, keep_descriptors, &mut children)?;
        return Ok(i32::from(failed));
    }
    runtime()?.block_on(async {
        let mut stop = stop_on_signal("cron stops after this pass");
        // Let the signal task register its handlers before the first pass.
        tokio::task::yield_now().await;
        loop {
            pass(ctx, keep_descriptors, &mut children)?;
            // Reap receivers that ended, so none lingers as a zombie.
            children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
            if *stop.borrow() {
                return Ok(0);
            }
            tokio::select! {
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
                _ = stop.changed() => return Ok(0),
            }
        }
    })
}

fn print_actions(ctx: &Context, actions: &[Action]) -> Result<()> {
    match ctx.format {
        Format::Json => print_json(&actions)?,
        Format::Text => {
            for a in actions {
                if a.server.is_empty() {
                    outln!("{}", a.message)?;
                } else {
                    outln!("{}: {}", a.server, a.message)?;
                }
            }
        }
    }
    Ok(())
}

/// One pass over every active server; prints what it did. Returns whether any step
/// failed (the others still ran).
fn pass(ctx: &Context, keep_descriptors: bool, children: &mut Vec<Child>) -> Result<bool> {
    let mut actions = Vec::new();
    let mut failed = false;
    for s in ctx.config.servers.values().filter(|s| s.active) {
        let before = actions.len();
        let result = server_pass(ctx, s, keep_descriptors, children, &mut actions);
        failed |= actions[before..].iter().any(|a| a.action == "error");
        if let Err(e) = result {
            tracing::error!(server = s.name.as_str(), "cron: {e:#}");
            actions.push(Action::new(
                &s.name,
                "error",
                format!("{e:#}"),
                serde_json::Value::Null,
            ));
            failed = true;
        }
    }
    print_actions(ctx, &actions)?;
    Ok(failed)
}

fn server_pass(
    ctx: &Context,
    s: &ServerConfig,
    keep_descriptors: bool,
    children: &mut Vec<Child>,
    actions: &mut Vec<Action>,
) -> Result<()> {
    let home = &ctx.config.home;
    let repository = super::repository(ctx, s)?;
    let repo = repository.server(&s.name);
    if s.primary_ssh_command.is_some() {
        // A passive server streams nothing: one replicate pass copies from its primary.
        replicate_step(ctx, s, actions);
    } else if s.streaming_archiver {
        let lock = receive_wal_lock(home, &s.name);
        let running = JobLock::holder(&lock)
            .with_context(|| format!("lock {}", lock.display()))?
            .is_some();
        if !running {
            let child = start_receive_wal(ctx, s, keep_descriptors)?;
            let pid = child.id();
            tracing::info!(
                server = s.name.as_str(),
                "cron started receive-wal (pid {pid})"
            );
            actions.push(Action::new(
                &s.name,
                "receive-wal-started",
                format!("receive-wal started (pid {pid})"),
                serde_json::json!({ "pid": pid }),
            ));
            children.push(child);
        }
    }
    if s.archiver {
        archive_wal_step(&repository, s, actions);
    }
    let Some(catalog) = Catalog::open_existing(home)? else {
        return Ok(());
    };
    let before: Vec<crate::backup::BackupInfo> = catalog.backups(&s.name)?;
    let after = crate::maintenance::reconcile::refresh(&repo, &catalog)?;
    if s.primary_ssh_command.is_none() {
        drill_step(
            ctx,
            s,
            &catalog,
            &after,
            keep_descriptors,
            children,
            actions,
        )?;
    }
    for b in &after {
        let old = before.iter().find(|o| o.backup_id == b.backup_id);
        if let Some(o) = old.filter(|o| o.status != b.status) {
            actions.push(Action::new(
                &s.name,
                "backup-status",
                format!("backup {}: {} -> {}", b.backup_id, o.status, b.status),
                serde_json::json!({
                    "backup_id": b.backup_id,
                    "from": o.status,
                    "to": b.status,
                    "error": b.error,
                }),
            ));
        }
    }
    let Some(text) = s.retention_policy.as_deref() else {
        return Ok(());
    };
    if s.retention_policy_mode != "auto" {
        return Ok(());
    }
    let policy = RetentionPolicy::parse(text).map_err(anyhow::Error::msg)?;
    let _lock = match super::delete::retention_lock(ctx, &s.name) {
        Ok(l) => l,
        Err(e)
            if e.downcast_ref::<LockError>()
                .is_some_and(|l| matches!(l, LockError::Held { .. })) =>
        {
            actions.push(Action::new(
                &s.name,
                "skipped",
                format!("retention not applied this pass: {e}"),
                serde_json::Value::Null,
            ));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let applied = apply_retention(
        &repo,
        &catalog,
        &s.name,
        policy,
        s.minimum_redundancy,
        chrono::Utc::now(),
    )
    .with_context(|| format!("server '{}': applying retention {policy}", s.name))?;
    for d in &applied.deleted {
        actions.push(Action::new(
            &s.name,
            "retention",
            format!(
                "retention {policy}: deleted obsolete backup {} ({} WAL file(s) removed)",
                d.backup_id,
                d.removed_wal.len()
            ),
            serde_json::json!({
                "policy": applied.policy,
                "backup_id": d.backup_id,
                "removed_wal": d.removed_wal,
            }),
        ));
    }
    let w = &applied.removed_wal.names;
    if let (Some(first), Some(last)) = (w.first(), w.last()) {
        actions.push(Action::new(
            &s.name,
            "retention",
            format!(
                "retention {policy}: removed {} WAL file(s) no retained backup needs: {first} to {last}",
                w.len()
            ),
            serde_json::json!({ "policy": applied.policy, "removed_wal": w }),
        ));
    }
    Ok(())
}

/// Runs one replicate pass in-process for a passive server; errors are logged and
/// recorded as an `error` action, and the pass goes on.
fn replicate_step(ctx: &Context, s: &ServerConfig, actions: &mut Vec<Action>) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    match super::replicate::pass_locked(&ctx.config.home, s, &stop) {
        Ok(r) => {
            for e in &r.errors {
                tracing::error!(server = s.name.as_str(), "replicate: {e}");
            }
            let message = format!(
                "replicate: {} WAL file(s), {} backup(s) copied, {} bytes moved{}",
                r.wal_copied,
                r.backups_copied.len(),
                r.bytes_moved,
                if r.errors.is_empty() {
                    String::new()
                } else {
                    format!(", {} error(s): {}", r.errors.len(), r.errors[0])
                }
            );
            let action = if r.errors.is_empty() {
                "replicate"
            } else {
                "error"
            };
            let details = serde_json::to_value(&r).unwrap_or_default();
            actions.push(Action::new(&s.name, action, message, details));
        }
        // A `replicate --follow` (or an earlier pass) is at work: nothing to do.
        Err(e) if matches!(e.downcast_ref::<LockError>(), Some(LockError::Held { .. })) => {
            actions.push(Action::new(
                &s.name,
                "skipped",
                format!("replicate not run this pass: {e}"),
                serde_json::Value::Null,
            ));
        }
        Err(e) => {
            tracing::error!(server = s.name.as_str(), "cron: replicate: {e:#}");
            actions.push(Action::new(
                &s.name,
                "error",
                format!("replicate: {e:#}"),
                serde_json::Value::Null,
            ));
        }
    }
}

/// Runs archive-wal in-process for a server with `archiver = on`; its errors are
/// logged and recorded as an `error` action, and the pass goes on.
fn archive_wal_step(repository: &Repository, s: &ServerConfig, actions: &mut Vec<Action>) {
    use crate::wal::incoming::{archive_incoming, IncomingError};
    match archive_incoming(repository, &s.name) {
        Ok(r) => {
            if !r.archived.is_empty() || !r.refused.is_empty() || !r.already_present.is_empty() {
                let message = format!(
                    "archive-wal: {} WAL file(s) archived ({} bytes), {} refused",
                    r.archived.len(),
                    r.bytes,
                    r.refused.len()
                );
                for f in &r.refused {
                    tracing::error!(
                        server = s.name.as_str(),
                        "archive-wal refused {}: {}",
                        f.name,
                        f.reason
                    );
                }
                let details = serde_json::to_value(&r).unwrap_or_default();
                actions.push(Action::new(&s.name, "archive-wal", message, details));
            }
        }
        Err(IncomingError::Lock(e @ LockError::Held { .. })) => {
            actions.push(Action::new(
                &s.name,
                "skipped",
                format!("archive-wal not run this pass: {e}"),
                serde_json::Value::Null,
            ));
        }
        Err(e) => {
            tracing::error!(server = s.name.as_str(), "cron: archive-wal: {e}");
            actions.push(Action::new(
                &s.name,
                "error",
                format!("archive-wal: {e}"),
                serde_json::Value::Null,
            ));
        }
    }
}

/// Starts `pgbk -c <config> receive-wal <server>` detached: its own session, stdin
/// from /dev/null, stdout and stderr appended to `log_file` (or
/// `<home>/<server>/receive-wal.log`) unless `keep_descriptors` keeps cron's own.
fn start_receive_wal(ctx: &Context, s: &ServerConfig, keep_descriptors: bool) -> Result<Child> {
    start_job(ctx, s, "receive-wal", keep_descriptors)
}

/// Starts `pgbk <verb> <server>` in its own session, its output in the log file (or
/// the server's `<verb>.log`) unless `keep_descriptors`.
fn start_job(ctx: &Context, s: &ServerConfig, verb: &str, keep_descriptors: bool) -> Result<Child> {
    let exe = std::env::current_exe().context("locating the pgbk binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("-c")
        .arg(&ctx.config.file)
        .args([verb, &s.name])
        .stdin(Stdio::null());
    if !keep_descriptors {
        let log = match &ctx.config.log_file {
            Some(p) => p.clone(),
            None => {
                let repo = ServerRepo::new(&ctx.config.home, &s.name);
                let dir = repo.root().to_path_buf();
                crate::repo::durable::create_dir_all_private(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                dir.join(format!("{verb}.log"))
            }
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdout(file.try_clone()?).stderr(file);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("server '{}': starting {verb}", s.name))
}

/// Starts the server's restore drill when its `drill_schedule` is due: the newest
/// drill started before the last scheduled time, the server has a DONE backup, no
/// drill runs on the host and no backup of the server runs.
fn drill_step(
    ctx: &Context,
    s: &ServerConfig,
    catalog: &Catalog,
    backups: &[crate::backup::BackupInfo],
    keep_descriptors: bool,
    children: &mut Vec<Child>,
    actions: &mut Vec<Action>,
) -> Result<()> {
    let Some(schedule) = s.drill.schedule else {
        return Ok(());
    };
    let now = chrono::Utc::now();
    let due = schedule.last_due(now);
    let last = catalog.last_drill(&s.name)?;
    if last.is_some_and(|d| d.started_at >= due)
        || !backups
            .iter()
            .any(|b| b.status == crate::backup::BackupStatus::Done)
    {
        return Ok(());
    }
    let home = &ctx.config.home;
    if JobLock::holder(&super::drill::drill_lock_path(home))?.is_some() {
        return Ok(());
    }
    let repo = ServerRepo::new(home, &s.name);
    if JobLock::holder(&crate::backup::lifecycle::backup_lock_path(&repo))?.is_some() {
        return Ok(());
    }
    let child = start_job(ctx, s, "drill", keep_descriptors)?;
    let pid = child.id();
    tracing::info!(
        server = s.name.as_str(),
        "cron started a restore drill (pid {pid})"
    );
    actions.push(Action::new(
        &s.name,
        "drill-started",
        format!(
            "restore drill started (pid {pid}), due since {}",
            due.format("%Y-%m-%d %H:%M UTC")
        ),
        serde_json::json!({ "pid": pid, "due": due }),
    ));
    children.push(child);
    Ok(())
}
