//! Cron's maintenance pass over every active server, safe to run every minute. For
//! each server: start `receive-wal` when `streaming_archiver = on` and it is not
//! running (a passive server gets one replicate pass instead), run archive-wal when
//! `archiver = on`, bring backup statuses up to date (stale `STARTED` backups become
//! `FAILED`), start the restore drill when its schedule is due, and apply the
//! retention policy when `retention_policy_mode = auto`. One server's failure is
//! recorded and the pass goes on with the next.

use crate::backup::{BackupError, BackupInfo, BackupStatus};
use crate::catalog::{Catalog, CatalogError};
use crate::config::{Config, ServerConfig};
use crate::lock::{JobLock, LockError};
use crate::peer::{replicate_pass_locked, PeerError};
use crate::repo::{Repository, ServerRepo};
use crate::retention::{apply_retention, RetentionPolicy};
use serde::Serialize;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// One thing a pass did (or could not do).
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// The server concerned (empty for the pass itself).
    pub server: String,
    /// `receive-wal-started`, `archive-wal`, `replicate`, `backup-status`,
    /// `drill-started`, `retention`, `skipped` or `error`.
    pub action: String,
    /// One sentence for people.
    pub message: String,
    /// Machine-readable details.
    pub details: serde_json::Value,
}

impl Action {
    /// An action of `server` (empty for the pass itself).
    pub fn new(server: &str, action: &str, message: String, details: serde_json::Value) -> Action {
        Action {
            server: server.to_string(),
            action: action.to_string(),
            message,
            details,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassOutcome {
    /// Every action, server by server.
    pub actions: Vec<Action>,
    /// Whether any step failed (the others still ran).
    pub failed: bool,
}

/// A step of a server's pass failed; the pass records it and goes on.
#[derive(Debug, thiserror::Error)]
pub enum CronError {
    /// The server's `repository` options name no usable store.
    #[error("server '{server}': repository in {}: {msg}", file.display())]
    Repository {
        /// The server.
        server: String,
        /// The configuration file of the server.
        file: PathBuf,
        /// Why it cannot be opened.
        msg: String,
    },
    /// A file operation (a lock, the job's log, the pgbk binary) failed.
    #[error("{what}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// What the system said.
        source: io::Error,
    },
    /// A job could not be started.
    #[error("server '{server}': starting {verb}")]
    Start {
        /// The server.
        server: String,
        /// The pgbk verb.
        verb: String,
        /// What the system said.
        source: io::Error,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Bringing backup statuses up to date failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// `retention_policy` does not parse.
    #[error("{0}")]
    Policy(String),
    /// The retention lock could not be taken (other than held).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Applying the retention policy failed.
    #[error("server '{server}': applying retention {policy}")]
    Retention {
        /// The server.
        server: String,
        /// The policy.
        policy: RetentionPolicy,
        /// What failed.
        source: BackupError,
    },
}

/// An error and its causes on one line, as `anyhow`'s `{:#}` shows them.
fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// One pass over every active server of `config`. Jobs it starts (receive-wal,
/// drills) are pushed on `children`, so the caller can reap them; with
/// `keep_descriptors` they write to this process's stdout and stderr instead of a
/// log file.
pub fn pass(config: &Config, keep_descriptors: bool, children: &mut Vec<Child>) -> PassOutcome {
    let mut out = PassOutcome::default();
    for s in config.servers.values().filter(|s| s.active) {
        let mut job = ServerPass {
            config,
            server: s,
            keep_descriptors,
            children,
            actions: &mut out.actions,
        };
        let before = job.actions.len();
        let result = job.run();
        out.failed |= out.actions[before..].iter().any(|a| a.action == "error");
        if let Err(e) = result {
            let text = chain_text(&e);
            tracing::error!(server = s.name.as_str(), "cron: {text}");
            out.actions
                .push(Action::new(&s.name, "error", text, serde_json::Value::Null));
            out.failed = true;
        }
    }
    out
}

/// One server's part of a pass.
struct ServerPass<'a> {
    config: &'a Config,
    server: &'a ServerConfig,
    keep_descriptors: bool,
    children: &'a mut Vec<Child>,
    actions: &'a mut Vec<Action>,
}

impl ServerPass<'_> {
    fn act(&mut self, action: &str, message: String, details: serde_json::Value) {
        self.actions
            .push(Action::new(&self.server.name, action, message, details));
    }

    fn run(&mut self) -> Result<(), CronError> {
        let s = self.server;
        let home = &self.config.home;
        let repository =
            Repository::open(home, s.repository.as_ref()).map_err(|msg| CronError::Repository {
                server: s.name.clone(),
                file: s.file.clone(),
                msg: msg.to_string(),
            })?;
        let repo = repository.server(&s.name);
        if s.primary_ssh_command.is_some() {
            // A passive server streams nothing: one replicate pass copies from its primary.
            self.replicate();
        } else if s.streaming_archiver {
            self.ensure_receive_wal()?;
        }
        if s.archiver {
            self.archive_wal(&repository);
        }
        let Some(catalog) = Catalog::open_existing(home)? else {
            return Ok(());
        };
        let before: Vec<crate::backup::BackupInfo> = catalog.backups(&s.name)?;
        let after = crate::maintenance::reconcile::refresh(&repo, &catalog)?;
        if s.primary_ssh_command.is_none() {
            self.drill(&catalog, &after)?;
        }
        for b in &after {
            let old = before.iter().find(|o| o.backup_id == b.backup_id);
            if let Some(o) = old.filter(|o| o.status != b.status) {
                self.act(
                    "backup-status",
                    format!("backup {}: {} -> {}", b.backup_id, o.status, b.status),
                    serde_json::json!({
                        "backup_id": b.backup_id,
                        "from": o.status,
                        "to": b.status,
                        "error": b.error,
                    }),
                );
            }
        }
        self.retention(&repo, &catalog)
    }

    /// Starts receive-wal when it is not running.
    fn ensure_receive_wal(&mut self) -> Result<(), CronError> {
        let s = self.server;
        let lock = crate::lock::receive_wal_lock(&ServerRepo::new(&self.config.home, &s.name));
        let running = JobLock::holder(&lock)
            .map_err(|source| CronError::Io {
                what: format!("lock {}", lock.display()),
                source,
            })?
            .is_some();
        if running {
            return Ok(());
        }
        let child = self.start_job("receive-wal")?;
        let pid = child.id();
        tracing::info!(
            server = s.name.as_str(),
            "cron started receive-wal (pid {pid})"
        );
        self.act(
            "receive-wal-started",
            format!("receive-wal started (pid {pid})"),
            serde_json::json!({ "pid": pid }),
        );
        self.children.push(child);
        Ok(())
    }

    /// Applies the retention policy when `retention_policy_mode = auto`; skipped
    /// while a `delete` or `keep` holds the retention lock.
    fn retention(&mut self, repo: &ServerRepo, catalog: &Catalog) -> Result<(), CronError> {
        let s = self.server;
        let Some(text) = s.retention_policy.as_deref() else {
            return Ok(());
        };
        if s.retention_policy_mode != "auto" {
            return Ok(());
        }
        let policy = RetentionPolicy::parse(text).map_err(CronError::Policy)?;
        let _lock = match crate::lock::acquire_retention(repo) {
            Ok(l) => l,
            Err(e @ LockError::Held { .. }) => {
                self.act(
                    "skipped",
                    format!("retention not applied this pass: {e}"),
                    serde_json::Value::Null,
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let applied = apply_retention(
            repo,
            catalog,
            &s.name,
            policy,
            s.minimum_redundancy,
            chrono::Utc::now(),
        )
        .map_err(|source| CronError::Retention {
            server: s.name.clone(),
            policy,
            source,
        })?;
        for d in &applied.deleted {
            self.act(
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
            );
        }
        let w = &applied.removed_wal.names;
        if let (Some(first), Some(last)) = (w.first(), w.last()) {
            self.act(
                "retention",
                format!(
                    "retention {policy}: removed {} WAL file(s) no retained backup needs: {first} to {last}",
                    w.len()
                ),
                serde_json::json!({ "policy": applied.policy, "removed_wal": w }),
            );
        }
        Ok(())
    }

    /// Runs one replicate pass in-process for a passive server; errors are logged
    /// and recorded as an `error` action, and the pass goes on.
    fn replicate(&mut self) {
        let s = self.server;
        let stop = std::sync::atomic::AtomicBool::new(false);
        match replicate_pass_locked(&self.config.home, s, &stop) {
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
                self.act(action, message, details);
            }
            // A `replicate --follow` (or an earlier pass) is at work: nothing to do.
            Err(PeerError::Lock(e @ LockError::Held { .. })) => {
                self.act(
                    "skipped",
                    format!("replicate not run this pass: {e}"),
                    serde_json::Value::Null,
                );
            }
            Err(e) => {
                let text = chain_text(&e);
                tracing::error!(server = s.name.as_str(), "cron: replicate: {text}");
                self.act(
                    "error",
                    format!("replicate: {text}"),
                    serde_json::Value::Null,
                );
            }
        }
    }

    /// Runs archive-wal in-process for a server with `archiver = on`; its errors are
    /// logged and recorded as an `error` action, and the pass goes on.
    fn archive_wal(&mut self, repository: &Repository) {
        use crate::wal::incoming::{archive_incoming, IncomingError};
        let s = self.server;
        match archive_incoming(repository, &s.name) {
            Ok(r) => {
                if !r.archived.is_empty() || !r.refused.is_empty() || !r.already_present.is_empty()
                {
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
                    self.act("archive-wal", message, details);
                }
            }
            Err(IncomingError::Lock(e @ LockError::Held { .. })) => {
                self.act(
                    "skipped",
                    format!("archive-wal not run this pass: {e}"),
                    serde_json::Value::Null,
                );
            }
            Err(e) => {
                tracing::error!(server = s.name.as_str(), "cron: archive-wal: {e}");
                self.act(
                    "error",
                    format!("archive-wal: {e}"),
                    serde_json::Value::Null,
                );
            }
        }
    }

    /// Starts the server's restore drill when its `drill_schedule` is due: the
    /// newest drill started before the last scheduled time, the server has a DONE
    /// backup, no drill runs on the host and no backup of the server runs.
    fn drill(&mut self, catalog: &Catalog, backups: &[BackupInfo]) -> Result<(), CronError> {
        let s = self.server;
        let Some(schedule) = s.drill.schedule else {
            return Ok(());
        };
        let now = chrono::Utc::now();
        let due = schedule.last_due(now);
        let last = catalog.last_drill(&s.name)?;
        if last.is_some_and(|d| d.started_at >= due)
            || !backups.iter().any(|b| b.status == BackupStatus::Done)
        {
            return Ok(());
        }
        let home = &self.config.home;
        let holder = |lock: PathBuf| {
            JobLock::holder(&lock).map_err(|source| CronError::Io {
                what: format!("lock {}", lock.display()),
                source,
            })
        };
        if holder(crate::lock::drill_lock(home))?.is_some() {
            return Ok(());
        }
        if holder(crate::lock::backup_lock(&ServerRepo::new(home, &s.name)))?.is_some() {
            return Ok(());
        }
        let child = self.start_job("drill")?;
        let pid = child.id();
        tracing::info!(
            server = s.name.as_str(),
            "cron started a restore drill (pid {pid})"
        );
        self.act(
            "drill-started",
            format!(
                "restore drill started (pid {pid}), due since {}",
                due.format("%Y-%m-%d %H:%M UTC")
            ),
            serde_json::json!({ "pid": pid, "due": due }),
        );
        self.children.push(child);
        Ok(())
    }

    /// Starts `pgbk -c <config> <verb> <server>` detached: its own session, stdin
    /// from /dev/null, stdout and stderr appended to `log_file` (or
    /// `<home>/<server>/<verb>.log`) unless `keep_descriptors` keeps cron's own.
    fn start_job(&self, verb: &str) -> Result<Child, CronError> {
        let s = self.server;
        let io = |what: String| move |source| CronError::Io { what, source };
        let exe = std::env::current_exe().map_err(io("locating the pgbk binary".into()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("-c")
            .arg(&self.config.file)
            .args([verb, &s.name])
            .stdin(Stdio::null());
        if !self.keep_descriptors {
            let log = match &self.config.log_file {
                Some(p) => p.clone(),
                None => {
                    let repo = ServerRepo::new(&self.config.home, &s.name);
                    let dir = repo.root().to_path_buf();
                    crate::repo::durable::create_dir_all_private(&dir)
                        .map_err(io(format!("creating {}", dir.display())))?;
                    dir.join(format!("{verb}.log"))
                }
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(io(format!("opening {}", log.display())))?;
            let copy = file
                .try_clone()
                .map_err(io(format!("opening {}", log.display())))?;
            cmd.stdout(copy).stderr(file);
        }
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.spawn().map_err(|source| CronError::Start {
            server: s.name.clone(),
            verb: verb.to_string(),
            source,
        })
    }
}
