//! `list-processes` and `terminate-process`: pgbk's own jobs of a server, found by
//! the locks they hold, and stopping one of them cleanly (SIGTERM).

use super::{Context, ExitCode};
use crate::lock::{running_jobs, terminate as terminate_job, TerminateError};
use crate::outln;
use crate::output::{print_json, Format};
use crate::repo::ServerRepo;
use anyhow::{Context as _, Result};
use serde_json::json;
use std::time::Duration;

/// How long `terminate-process` waits for the job to end after SIGTERM.
const TERMINATE_WAIT: Duration = Duration::from_secs(30);

/// Runs `list-processes`.
pub fn list(ctx: &Context, name: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let dir = ServerRepo::new(&ctx.config.home, &s.name).lock_dir();
    let jobs =
        running_jobs(&dir).with_context(|| format!("server '{}': {}", s.name, dir.display()))?;
    match ctx.format {
        Format::Json => print_json(&json!({ "server": s.name, "processes": jobs }))?,
        Format::Text if jobs.is_empty() => {
            outln!("No pgbk process is running for server '{}'", s.name)?
        }
        Format::Text => {
            outln!("Active pgbk processes for server '{}':", s.name)?;
            for j in &jobs {
                outln!("  {} {}", j.pid, j.task)?;
            }
        }
    }
    Ok(0)
}

/// Runs `terminate-process`: exit 0 once the job has ended, 1 when none was running
/// or it did not stop in time.
pub fn terminate(ctx: &Context, name: &str, task: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let dir = ServerRepo::new(&ctx.config.home, &s.name).lock_dir();
    match terminate_job(&dir, task, TERMINATE_WAIT) {
        Ok(pid) => {
            match ctx.format {
                Format::Json => print_json(
                    &json!({ "server": s.name, "task": task, "pid": pid, "terminated": true }),
                )?,
                Format::Text => outln!("Stopped {task} of server '{}' (pid {pid})", s.name)?,
            }
            Ok(0)
        }
        Err(e @ TerminateError::NotRunning { .. }) => {
            anyhow::bail!("server '{}': {e} (see list-processes {})", s.name, s.name)
        }
        Err(e) => anyhow::bail!("server '{}': {e}", s.name),
    }
}
