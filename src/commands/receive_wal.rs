//! `receive-wal`: run the WAL receiver for one server, or manage its slot and state.

use super::{connect_error, refuse_passive, runtime, Context, ExitCode, UsageError};
use crate::cli::ReceiveWalArgs;
use crate::config::ServerConfig;
use crate::connect::connect_replication;
use crate::lock::JobLock;
use crate::output::Report;
use crate::repo::ServerRepo;
use crate::wal::receiver::{receive_wal, ReceiverOptions};
use crate::wal::receiver_state::{lock_receiver, reset_receiver};
use anyhow::{anyhow, Context as _, Result};
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};

/// Prints what an administrative action did: a sentence, or with `--format json` an
/// object naming the server, the action and its details.
fn report(
    ctx: &Context,
    server: &str,
    action: &str,
    detail: serde_json::Value,
    text: &str,
) -> Result<()> {
    let mut doc = serde_json::json!({ "server": server, "action": action });
    if let (Some(o), serde_json::Value::Object(d)) = (doc.as_object_mut(), detail) {
        o.extend(d);
    }
    ctx.emit(&Done {
        doc,
        text: text.to_string(),
    })
}

/// What an administrative action did: a JSON object, and its sentence.
#[derive(Serialize)]
#[serde(transparent)]
struct Done {
    doc: serde_json::Value,
    #[serde(skip)]
    text: String,
}

impl Report for Done {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(w, "{}", self.text)
    }
}

fn slot_name(s: &ServerConfig) -> Result<&str> {
    s.slot_name.as_deref().ok_or_else(|| {
        UsageError(format!(
            "server '{}': slot_name is not set in {}",
            s.name,
            s.file.display()
        ))
        .into()
    })
}

/// Runs the verb.
pub fn run(ctx: &Context, args: &ReceiveWalArgs) -> Result<ExitCode> {
    let s = super::server_config(ctx, &args.server)?;
    refuse_passive(s, "receive-wal")?;
    let repo = ServerRepo::new(&ctx.config.home, &s.name);
    let lock_path = crate::lock::receive_wal_lock(&repo);
    if args.stop {
        return stop(ctx, s, &lock_path);
    }
    if args.create_slot || args.drop_slot {
        let slot = slot_name(s)?.to_string();
        return runtime()?.block_on(async {
            let mut conn = connect_replication(s).await.map_err(connect_error)?;
            if args.create_slot {
                match conn.create_physical_slot(&slot, true).await {
                    Ok(()) => report(
                        ctx,
                        &s.name,
                        "create-slot",
                        serde_json::json!({ "slot": slot }),
                        &format!("Replication slot '{slot}' created on server '{}'", s.name),
                    )?,
                    Err(e) if e.code() == Some("42710") => {
                        return Err(anyhow!(
                            "server '{}': replication slot '{slot}' already exists",
                            s.name
                        ))
                    }
                    Err(e) => return Err(anyhow!("server '{}': {e}", s.name)),
                }
            } else {
                match conn.drop_slot(&slot, false).await {
                    Ok(()) => report(
                        ctx,
                        &s.name,
                        "drop-slot",
                        serde_json::json!({ "slot": slot }),
                        &format!("Replication slot '{slot}' dropped on server '{}'", s.name),
                    )?,
                    Err(e) if e.code() == Some("42704") => {
                        return Err(anyhow!(
                            "server '{}': replication slot '{slot}' does not exist",
                            s.name
                        ))
                    }
                    Err(e) => return Err(anyhow!("server '{}': {e}", s.name)),
                }
            }
            conn.close().await;
            Ok(0)
        });
    }
    if !s.streaming_archiver {
        return Err(UsageError(format!(
            "server '{}': streaming_archiver is off in {}; set streaming_archiver = on to use receive-wal",
            s.name,
            s.file.display()
        ))
        .into());
    }
    let lock = lock_receiver(&repo)?;
    if args.reset {
        reset(ctx, s)?;
        drop(lock);
        return Ok(0);
    }
    let opts = ReceiverOptions {
        server: s.name.clone(),
        conninfo: {
            let (option, text) = s.wal_streaming();
            super::conninfo(s, option, text)?
        },
        application_name: s.streaming_archiver_name.clone(),
        slot: s.slot_name.clone(),
        create_slot: s.create_slot == crate::config::CreateSlot::Auto,
        repository: super::repository(ctx, s)?,
        status_interval: Duration::from_secs(10),
    };
    tracing::info!(server = %s.name, pid = std::process::id(), "receive-wal starting");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(async move {
        let rx = super::stop_on_signal("flushing and exiting");
        receive_wal(opts, rx).await
    });
    drop(lock);
    result?;
    tracing::info!(server = %s.name, "receive-wal stopped");
    Ok(0)
}

/// `--stop`: SIGTERM to the holder of the lock, then wait for it to go.
fn stop(ctx: &Context, s: &ServerConfig, lock_path: &std::path::Path) -> Result<ExitCode> {
    let Some(pid) =
        JobLock::holder(lock_path).with_context(|| format!("lock {}", lock_path.display()))?
    else {
        report(
            ctx,
            &s.name,
            "stop",
            serde_json::json!({ "was_running": false }),
            &format!("receive-wal is not running for server '{}'", s.name),
        )?;
        return Ok(0);
    };
    if pid <= 0 {
        return Err(anyhow!(
            "server '{}': lock {} is held but names no pid",
            s.name,
            lock_path.display()
        ));
    }
    // SAFETY: sending a signal to a pid read from our own lock file.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(anyhow!(
            "server '{}': cannot signal receive-wal pid {pid}: {}",
            s.name,
            std::io::Error::last_os_error()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if JobLock::holder(lock_path)?.is_none() {
            report(
                ctx,
                &s.name,
                "stop",
                serde_json::json!({ "was_running": true, "pid": pid }),
                &format!("Stopped receive-wal for server '{}' (pid {pid})", s.name),
            )?;
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(anyhow!(
        "server '{}': receive-wal (pid {pid}) did not stop within 60 seconds",
        s.name
    ))
}

/// `--reset`: drop the in-progress partial segment and start next time from the
/// server's current position (or the slot's).
fn reset(ctx: &Context, s: &ServerConfig) -> Result<()> {
    let removed = reset_receiver(&ServerRepo::new(&ctx.config.home, &s.name))?;
    report(
        ctx,
        &s.name,
        "reset",
        serde_json::json!({ "removed_partial_files": removed }),
        &format!(
            "Reset receive-wal state of server '{}' ({removed} partial file(s) removed); it restarts from the slot's position, else the server's current WAL position",
            s.name
        ),
    )
}
