//! `cron`: one maintenance pass over every active server
//! ([`crate::maintenance::cron`]), safe to run every minute and never twice at once
//! (`<home>/cron.lock`; a second `cron` names the holder and exits 0 at once, as
//! Barman's does). `--foreground` repeats the pass every minute until SIGTERM/SIGINT
//! (systemd-style supervision).

use super::{runtime, stop_on_signal, Context, ExitCode};
use crate::lock::{JobLock, LockError};
use crate::maintenance::cron::{pass, Action};
use crate::output::Report;
use anyhow::Result;
use serde::Serialize;
use std::io::Write;
use std::process::Child;
use std::time::Duration;

/// How long `--foreground` waits between passes.
const PASS_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the verb.
pub fn run(ctx: &Context, foreground: bool, keep_descriptors: bool) -> Result<ExitCode> {
    let _lock = match JobLock::acquire(&crate::lock::cron_lock(&ctx.config.home), "cron") {
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
            ctx.emit(&Actions(&[a]))?;
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let mut children: Vec<Child> = Vec::new();
    if !foreground {
        let failed = print_pass(ctx, keep_descriptors, &mut children)?;
        return Ok(i32::from(failed));
    }
    runtime()?.block_on(async {
        let mut stop = stop_on_signal("cron stops after this pass");
        // Let the signal task register its handlers before the first pass.
        tokio::task::yield_now().await;
        loop {
            print_pass(ctx, keep_descriptors, &mut children)?;
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

/// One pass; prints what it did and returns whether a step failed.
fn print_pass(ctx: &Context, keep_descriptors: bool, children: &mut Vec<Child>) -> Result<bool> {
    let outcome = pass(&ctx.config, keep_descriptors, children);
    ctx.emit(&Actions(&outcome.actions))?;
    Ok(outcome.failed)
}

/// What a pass did, action by action.
#[derive(Serialize)]
struct Actions<'a>(&'a [Action]);

impl Report for Actions<'_> {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        for a in self.0 {
            if a.server.is_empty() {
                writeln!(w, "{}", a.message)?;
            } else {
                writeln!(w, "{}: {}", a.server, a.message)?;
            }
        }
        Ok(())
    }
}
