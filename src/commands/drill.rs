//! `drill`: a restore drill of one server (or every active one): the backup
//! restored, started cut off from production, recovered, checked and timed; exit 1
//! when a check fails (the drill is recorded either way).

use super::{Context, ExitCode, UsageError};
use crate::cli::DrillArgs;
use crate::config::ServerConfig;
use crate::drill::{run_drill, DrillError, DrillReport, DrillRequest, QueryCheck};
use crate::lock::JobLock;
use crate::output::{human_seconds, PerServer, Report};
use crate::restore::target::RecoveryTarget;
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// Runs the verb.
pub fn run(ctx: &Context, a: &DrillArgs) -> Result<ExitCode> {
    let servers: Vec<&ServerConfig> = if a.server == "all" {
        ctx.config.servers.values().filter(|s| s.active).collect()
    } else {
        vec![super::server_config(ctx, &a.server)?]
    };
    let target = a.target.target();
    let _host = JobLock::acquire(
        &crate::lock::drill_lock(&ctx.config.home),
        "a restore drill (one at a time on this host)",
    )?;
    let mut reports = Vec::new();
    for s in servers {
        let req = request(ctx, s, a, target.clone())?;
        reports.push(drill_one(ctx, s, &req)?);
    }
    let ok = reports.iter().all(|r| r.ok);
    ctx.emit(&PerServer {
        reports: reports.into_iter().map(Drilled).collect(),
        all: a.server == "all",
    })?;
    Ok(if ok { 0 } else { 1 })
}

/// The drill of server `s` as its configuration describes it.
pub fn request(
    ctx: &Context,
    s: &ServerConfig,
    a: &DrillArgs,
    target: Option<RecoveryTarget>,
) -> Result<DrillRequest> {
    let d = &s.drill;
    let database = d.check_database.clone().unwrap_or_else(|| {
        crate::pg::ConnInfo::parse(&s.conninfo)
            .ok()
            .and_then(|c| c.dbname())
            .unwrap_or_else(|| "postgres".into())
    });
    let host = match a.host.as_ref().or(d.ssh_command.as_ref()) {
        Some(cmd) => Some(crate::ssh::SshTarget::parse(cmd).map_err(|e| {
            UsageError(format!(
                "server '{}': {}: {e}",
                s.name,
                if a.host.is_some() {
                    "--host"
                } else {
                    "drill_ssh_command"
                }
            ))
        })?),
        None => None,
    };
    Ok(DrillRequest {
        host,
        server: s.name.clone(),
        backup: a.backup.clone(),
        target,
        keep: a.keep,
        workdir: d
            .workdir
            .clone()
            .unwrap_or_else(|| ctx.config.home.join("drills")),
        workdir_is_default: d.workdir.is_none(),
        pg_bin: d.pg_bin.clone().or_else(|| s.path_prefix.clone()),
        query: d.check_query.as_ref().map(|sql| QueryCheck {
            sql: sql.clone(),
            database,
            expected: d.check_expected.clone(),
            minimum: d.check_minimum,
        }),
        rto_objective: d.rto,
        rpo_objective: d.rpo,
        jobs: a.jobs.filter(|&j| j > 0).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
    })
}

/// One server's drill, never while its backup runs.
pub fn drill_one(ctx: &Context, s: &ServerConfig, req: &DrillRequest) -> Result<DrillReport> {
    let repository = super::repository(ctx, s)?;
    let repo = repository.server(&s.name);
    if let Ok(Some(pid)) = JobLock::holder(&crate::lock::backup_lock(&repo)) {
        return Err(UsageError(format!(
            "server '{}': a backup is running (pid {pid}): the drill waits for the next occasion",
            s.name
        ))
        .into());
    }
    let Some((catalog, _)) = super::backups_for(ctx, &s.name, super::Access::Change)? else {
        return Err(UsageError(format!("server '{}': no backup to drill", s.name)).into());
    };
    let progress = super::progress::for_cli(ctx.quiet);
    match run_drill(&repository, &catalog, req, progress.as_ref()) {
        Ok(r) => Ok(r),
        Err(DrillError::Refused(m)) => Err(UsageError(m).into()),
        Err(e) => Err(e.into()),
    }
}

/// A drill's report, with its text form.
#[derive(Serialize)]
#[serde(transparent)]
struct Drilled(DrillReport);

impl Report for Drilled {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let r = &self.0;
        writeln!(
            w,
            "Drill {} of server '{}', backup {}: {}",
            r.id,
            r.server,
            r.backup_id.as_deref().unwrap_or("-"),
            if r.ok { "PASSED" } else { "FAILED" }
        )?;
        if let Some(t) = &r.target {
            writeln!(w, "  recovery target: {t}")?;
        }
        for p in &r.phases {
            writeln!(w, "  {:<8} {}", p.name, human_seconds(p.seconds))?;
        }
        for c in &r.checks {
            writeln!(w, "  check {:<9} {:<7} {}", c.name, c.status, c.detail)?;
        }
        match r.rto_secs {
            Some(s) => writeln!(
                w,
                "  measured RTO: {} (wall clock {})",
                human_seconds(s),
                human_seconds(r.wall_secs)
            )?,
            None => writeln!(w, "  measured RTO: none (the drill did not get that far)")?,
        }
        match (r.rpo_secs, r.last_commit) {
            (Some(s), Some(at)) => writeln!(
                w,
                "  achieved RPO: {} (newest commit recovered {})",
                human_seconds(s),
                at.format("%Y-%m-%d %H:%M:%S UTC")
            )?,
            _ => writeln!(w, "  achieved RPO: unknown")?,
        }
        if let Some(k) = &r.kept {
            writeln!(
                w,
                "  kept: {} (server running: psql \"{}\"; stop it with pg_ctl -D {}/data stop)",
                k.folder.display(),
                k.conninfo,
                k.folder.display()
            )?;
        }
        if let Some(e) = &r.error {
            writeln!(w, "  error: {e}")?;
        }
        Ok(())
    }
}
