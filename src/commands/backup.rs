//! `backup`: take a base backup of a server (BASE_BACKUP streamed into the
//! repository), then wait for the WAL it needs.

use super::progress::for_cli;
use super::{runtime, Context, ExitCode, UsageError};
use crate::backup::base_backup::max_rate_for;
use crate::backup::incremental::IncrementalPlan;
use crate::backup::resume::ResumePlan;
use crate::backup::rsync::RsyncOptions;
use crate::backup::take::{validate_name, BackupRequest, Outcome, TakeError, WalWait};
use crate::backup::tar_store::StoreOptions;
use crate::backup::BackupInfo;
use crate::cli::BackupArgs;
use crate::config::{BackupMethod, BackupType, IncrementalFallback, IncrementalRead, ServerConfig};
use crate::maintenance::take_backup;
use crate::outln;
use crate::output::{human_bytes, human_seconds, print_json, Format, Report};
use crate::progress::Progress;
use anyhow::{anyhow, Result};
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Runs the verb for one server, or with `all` for every active server that is not
/// a passive copy, one after the other (as Barman's `backup all`): a failure is
/// reported and the next server still backed up; exit 1 if any failed.
pub fn run(ctx: &Context, args: &BackupArgs) -> Result<ExitCode> {
    if args.server != "all" {
        let s = super::server_config(ctx, &args.server)?;
        return run_one(ctx, s, args, None);
    }
    if args.name.is_some() {
        return Err(UsageError("backup all: --name names one backup; give a server".into()).into());
    }
    if args
        .resume
        .as_deref()
        .is_some_and(|r| !matches!(r, "latest" | "last"))
    {
        return Err(
            UsageError("backup all: --resume ID names one backup; give a server".into()).into(),
        );
    }
    let servers: Vec<&ServerConfig> = ctx
        .config
        .servers
        .values()
        .filter(|s| s.active && s.primary_ssh_command.is_none())
        .collect();
    let json = ctx.format == Format::Json;
    let mut docs = Vec::new();
    let mut failed = Vec::new();
    for s in servers {
        if !json && !ctx.quiet {
            outln!("Starting backup of server '{}'", s.name)?;
        }
        let before = docs.len();
        let outcome = run_one(ctx, s, args, json.then_some(&mut docs));
        if let Err(e) = outcome {
            let message = crate::output::error_line(&e);
            let error = serde_json::json!({ "message": message });
            if !json {
                eprintln!("pgbk: {message}");
            } else if let Some(doc) = docs.get_mut(before) {
                // The backup's own document (FAILED, WAITING_FOR_WALS) says why too.
                doc["error"] = error;
            } else {
                docs.push(serde_json::json!({ "server": s.name, "error": error }));
            }
            failed.push(s.name.clone());
        }
    }
    if json {
        print_json(&docs)?;
    } else if !failed.is_empty() {
        eprintln!("pgbk: backup failed for server(s) {}", failed.join(", "));
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// One server's backup; with `collect`, the JSON document goes there instead of
/// stdout (`backup all` prints one array).
fn run_one(
    ctx: &Context,
    s: &ServerConfig,
    args: &BackupArgs,
    mut collect: Option<&mut Vec<serde_json::Value>>,
) -> Result<ExitCode> {
    super::refuse_passive(s, "backup")?;
    let rsync = match (&s.backup_method, &s.ssh_command) {
        (BackupMethod::Postgres, _) => None,
        (BackupMethod::Rsync, None) => {
            return Err(UsageError(format!(
                "server '{}': backup_method = rsync needs ssh_command in {}",
                s.name,
                s.file.display()
            ))
            .into())
        }
        (BackupMethod::Rsync, Some(cmd)) => Some(RsyncOptions {
            ssh_command: cmd.clone(),
            reuse: s.reuse_backup,
            bandwidth_limit: s.bandwidth_limit,
            network_compression: s.network_compression,
        }),
    };
    if !s.active {
        return Err(UsageError(format!(
            "server '{}' is not active (active = off in {})",
            s.name,
            s.file.display()
        ))
        .into());
    }
    if let Some(name) = &args.name {
        validate_name(name).map_err(|m| UsageError(format!("server '{}': {m}", s.name)))?;
    }
    let jobs = args.jobs.unwrap_or(s.parallel_jobs as usize);
    if jobs == 0 {
        return Err(UsageError("--jobs must be at least 1".into()).into());
    }
    let immediate_checkpoint = if args.immediate_checkpoint {
        true
    } else if args.no_immediate_checkpoint {
        false
    } else {
        s.immediate_checkpoint
    };
    let wait = if args.no_wait {
        WalWait::No
    } else if args.wait_timeout == 0 {
        WalWait::Forever
    } else {
        WalWait::Timeout(Duration::from_secs(args.wait_timeout))
    };
    let req = BackupRequest {
        home: ctx.config.home.clone(),
        repository: super::repository(ctx, s)?,
        server: s.name.clone(),
        conninfo: super::conninfo(s, "conninfo", &s.conninfo)?,
        streaming_conninfo: super::conninfo(s, "streaming_conninfo", &s.streaming_conninfo)?,
        primary_conninfo: s
            .primary_conninfo
            .as_deref()
            .map(|c| super::conninfo(s, "primary_conninfo", c))
            .transpose()?,
        application_name: "pgbk_backup".to_string(),
        name: args.name.clone(),
        immediate_checkpoint,
        jobs,
        max_rate: s.bandwidth_limit.map(max_rate_for),
        wait,
        store: StoreOptions::default(),
        rsync,
        incremental: incremental_plan(s, args),
        resume: resume_plan(s, args),
    };
    let progress: Arc<dyn Progress> = Arc::from(for_cli(ctx.quiet));
    let result = runtime()?.block_on(async {
        let rx = super::stop_on_signal("stopping the backup");
        take_backup(&req, progress.clone(), rx).await
    });
    progress.finish();
    match result {
        Ok(Outcome::Done(info)) => {
            show(ctx, &info, None, collect)?;
            Ok(0)
        }
        Ok(Outcome::WaitingForWals(info)) => {
            show(
                ctx,
                &info,
                Some("the backup becomes DONE once its WAL is archived (receive-wal)"),
                collect,
            )?;
            Ok(0)
        }
        Ok(Outcome::WalNotArchived {
            info,
            missing,
            interrupted,
        }) => {
            show(ctx, &info, None, collect.as_deref_mut())?;
            let first = missing.first().map(|m| m.name()).unwrap_or_default();
            let why = if interrupted {
                "interrupted while waiting for".to_string()
            } else {
                format!("waited {} seconds for", args.wait_timeout)
            };
            Err(anyhow!(
                "backup {} of server '{}' is WAITING_FOR_WALS: {why} {} WAL segment(s) from {first}; \
                 it becomes DONE once they are archived (is `pgbk receive-wal {}` running?)",
                info.backup_id,
                info.server,
                missing.len(),
                info.server
            ))
        }
        Err(TakeError::Refused(m)) => Err(UsageError(m).into()),
        Err(TakeError::Failed(info)) => {
            match collect {
                Some(docs) => docs.push(serde_json::to_value(&*info)?),
                // Text says nothing more: the error names the backup and why.
                None => ctx.emit(&Taken {
                    info: &info,
                    note: None,
                    silent: true,
                })?,
            }
            Err(TakeError::Failed(info).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the backup takes up an interrupted one (`--resume [ID]`, or
/// `backup_resume = on` when there is one); `backup all --resume` resumes each
/// server that has one.
fn resume_plan(s: &ServerConfig, args: &BackupArgs) -> ResumePlan {
    match args.resume.as_deref() {
        None if s.backup_resume && !args.full && args.incremental.is_none() => ResumePlan::IfAny,
        None => ResumePlan::Off,
        Some(_) if args.server == "all" => ResumePlan::IfAny,
        Some("latest" | "last") => ResumePlan::Newest,
        Some(id) => ResumePlan::Named(id.to_string()),
    }
}

/// What kind of backup the command line and the server's configuration ask for.
fn incremental_plan(s: &ServerConfig, args: &BackupArgs) -> Option<IncrementalPlan> {
    let fallback_full = s.incremental_fallback == IncrementalFallback::Full;
    let sql_read = s.incremental_read == IncrementalRead::Sql;
    if let Some(parent) = &args.incremental {
        return Some(IncrementalPlan {
            parent: Some(parent.clone()),
            from_config: false,
            full_backup_every: None,
            fallback_full,
            sql_read,
        });
    }
    (!args.full && s.backup_type == BackupType::Incremental).then_some(IncrementalPlan {
        parent: None,
        from_config: true,
        full_backup_every: s.full_backup_every,
        fallback_full,
        sql_read,
    })
}

/// The backup as text or JSON.
fn show(
    ctx: &Context,
    info: &BackupInfo,
    note: Option<&str>,
    collect: Option<&mut Vec<serde_json::Value>>,
) -> Result<()> {
    if let Some(docs) = collect {
        docs.push(serde_json::to_value(info)?);
        return Ok(());
    }
    ctx.emit(&Taken {
        info,
        note,
        silent: false,
    })
}

/// A backup as the verb reports it: backup.json, and a few lines of text.
#[derive(Serialize)]
#[serde(transparent)]
struct Taken<'a> {
    info: &'a BackupInfo,
    /// A last line of text (what happens next).
    #[serde(skip)]
    note: Option<&'a str>,
    /// No text (a FAILED backup: the error says it all).
    #[serde(skip)]
    silent: bool,
}

impl Report for Taken<'_> {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        if self.silent {
            return Ok(());
        }
        let info = self.info;
        let secs = info
            .end_time
            .map(|e| (e - info.begin_time).num_milliseconds().max(1) as f64 / 1000.0)
            .unwrap_or(0.0);
        let ratio = if info.stored_bytes > 0 {
            info.size_bytes as f64 / info.stored_bytes as f64
        } else {
            0.0
        };
        writeln!(
            w,
            "Backup {} of server '{}'{}: {}",
            info.backup_id,
            info.server,
            info.name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            info.status
        )?;
        writeln!(
            w,
            "  Size: {} ({} stored, ratio {ratio:.2}), {} files{}",
            human_bytes(info.size_bytes),
            human_bytes(info.stored_bytes),
            info.file_count,
            if info.tablespaces.is_empty() {
                String::new()
            } else {
                format!(", {} tablespace(s)", info.tablespaces.len())
            }
        )?;
        if let Some(parent) = &info.parent {
            writeln!(w, "  Incremental, built on backup {parent}")?;
        }
        if let (Some(files), Some(bytes)) = (info.transferred_files, info.transferred_bytes) {
            writeln!(
                w,
                "  rsync: {} transferred in {files} files, {} reused from the previous backup",
                human_bytes(bytes),
                human_bytes(info.reused_bytes.unwrap_or(0))
            )?;
        } else if let Some(reused) = info.reused_bytes {
            writeln!(
                w,
                "  Resumed: {} reused from the interrupted run (stored and verified already)",
                human_bytes(reused)
            )?;
        }
        if let Some(ms) = info.copy_millis.filter(|&ms| ms > 0) {
            let copy = ms as f64 / 1000.0;
            writeln!(
                w,
                "  Copy time: {} ({}/s)",
                human_seconds(copy),
                human_bytes((info.size_bytes as f64 / copy) as u64)
            )?;
        }
        if secs > 0.0 {
            writeln!(
                w,
                "  Duration: {} (checkpoint, copy and WAL wait)",
                human_seconds(secs)
            )?;
        }
        writeln!(
            w,
            "  WAL: {} to {} (LSN {} to {}, timeline {})",
            info.begin_wal.as_deref().unwrap_or("?"),
            info.end_wal.as_deref().unwrap_or("?"),
            info.begin_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into()),
            info.end_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into()),
            info.end_timeline.unwrap_or(info.timeline)
        )?;
        if let Some(n) = self.note {
            writeln!(w, "  Note: {n}")?;
        }
        Ok(())
    }
}
