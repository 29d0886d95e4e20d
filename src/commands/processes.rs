//! `list-processes` and `terminate-process`: pgbk's own jobs of a server, found by
//! the locks they hold, and stopping one of them cleanly (SIGTERM).

use super::{Context, ExitCode};
use crate::lock::{running_jobs, terminate as terminate_job, RunningJob, TerminateError};
use crate::output::Report;
use crate::repo::ServerRepo;
use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::json;
use std::io::Write;
use std::time::Duration;

/// How long `terminate-process` waits for the job to end after SIGTERM.
const TERMINATE_WAIT: Duration = Duration::from_secs(30);

/// Runs `list-processes`.
pub fn list(ctx: &Context, name: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let dir = ServerRepo::new(&ctx.config.home, &s.name).lock_dir();
    let jobs =
        running_jobs(&dir).with_context(|| format!("server '{}': {}", s.name, dir.display()))?;
    ctx.emit(&Processes {
        doc: json!({ "server": s.name, "processes": jobs }),
        processes: jobs,
        server: s.name.clone(),
    })?;
    Ok(0)
}

/// A server's running jobs: the JSON document, and the jobs for the text.
#[derive(Serialize)]
#[serde(transparent)]
struct Processes {
    doc: serde_json::Value,
    #[serde(skip)]
    processes: Vec<RunningJob>,
    #[serde(skip)]
    server: String,
}

impl Report for Processes {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        if self.processes.is_empty() {
            return writeln!(w, "No pgbk process is running for server '{}'", self.server);
        }
        writeln!(w, "Active pgbk processes for server '{}':", self.server)?;
        for j in &self.processes {
            writeln!(w, "  {} {}", j.pid, j.task)?;
        }
        Ok(())
    }
}

/// A job stopped (fields in the JSON document's order).
#[derive(Serialize)]
struct Terminated {
    pid: i32,
    server: String,
    task: String,
    terminated: bool,
}

impl Report for Terminated {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            w,
            "Stopped {} of server '{}' (pid {})",
            self.task, self.server, self.pid
        )
    }
}

/// Runs `terminate-process`: exit 0 once the job has ended, 1 when none was running
/// or it did not stop in time.
pub fn terminate(ctx: &Context, name: &str, task: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let dir = ServerRepo::new(&ctx.config.home, &s.name).lock_dir();
    match terminate_job(&dir, task, TERMINATE_WAIT) {
        Ok(pid) => {
            ctx.emit(&Terminated {
                pid,
                server: s.name.clone(),
                task: task.to_string(),
                terminated: true,
            })?;
            Ok(0)
        }
        Err(e @ TerminateError::NotRunning { .. }) => {
            anyhow::bail!("server '{}': {e} (see list-processes {})", s.name, s.name)
        }
        Err(e) => anyhow::bail!("server '{}': {e}", s.name),
    }
}
