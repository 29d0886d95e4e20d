//! `receive-wal`: run the WAL receiver for one server, or manage its slot and state.

use super::{connect_replication, receive_wal_lock, runtime, Context, ExitCode, UsageError};
use crate::cli::ReceiveWalArgs;
use crate::config::ServerConfig;
use crate::lock::JobLock;
use crate::outln;
use crate::repo::durable::{remove_durable, write_atomic};
use crate::repo::ServerRepo;
use crate::wal::receiver::{receive_wal, ReceiverOptions, RESET_MARKER};
use crate::wal::WalFileName;
use anyhow::{anyhow, Context as _, Result};
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
    if ctx.format == crate::output::Format::Json {
        let mut obj = serde_json::json!({ "server": server, "action": action });
        if let (Some(o), serde_json::Value::Object(d)) = (obj.as_object_mut(), detail) {
            o.extend(d);
        }
        crate::output::print_json(&obj)?;
    } else {
        outln!("{text}")?;
    }
    Ok(())
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
    super::replicate::refuse_passive(s, "receive-wal")?;
    let lock_path = receive_wal_lock(&ctx.config.home, &s.name);
    if args.stop {
        return stop(ctx, s, &lock_path);
    }
    if args.create_slot || args.drop_slot {
        let slot = slot_name(s)?.to_string();
        return runtime()?.block_on(async {
            let mut conn = connect_replication(s).await?;
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
    let lock = JobLock::acquire(&lock_path, &format!("receive-wal for server '{}'", s.name))?;
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
    let repo = ServerRepo::new(&ctx.config.home, &s.name);
    repo.ensure_dirs()
        .with_context(|| format!("creating {}", repo.root().display()))?;
    let dir = repo.streaming_dir();
    let mut removed = 0;
    for e in std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if matches!(
            WalFileName::parse(&name, 1 << 24),
            Some(WalFileName::Partial(_))
        ) || name.ends_with(".partial")
        {
            remove_durable(&e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
            removed += 1;
        }
    }
    write_atomic(
        &dir.join(RESET_MARKER),
        b"start at the server's current position\n",
    )
    .with_context(|| format!("writing {}", dir.display()))?;
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
