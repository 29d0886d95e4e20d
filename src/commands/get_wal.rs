//! `get-wal`: PostgreSQL's restore_command. Writes one WAL file from the repository
//! to `--output` (atomically) or stdout, verified against its recorded checksum; exits
//! 1 with one line when it is not there, 200 when it is there but damaged.
//! Reads only the repository's objects (a folder or a bucket) and its local spool,
//! never the catalog's write side, so it also works as the postgres OS user.

use super::{CodedError, Context, ExitCode, UsageError, EXIT_ABORT_RECOVERY};
use crate::cli::GetWalArgs;
use crate::restore::get_wal::{self, Destination, WalSource};
use crate::restore::RestoreError;
use crate::wal::WalSegment;
use anyhow::Result;
use std::process::{Command, Stdio};

/// Runs the verb.
pub fn run(ctx: &Context, a: &GetWalArgs) -> Result<ExitCode> {
    let server = super::server_config(ctx, &a.server)?;
    let repository = super::repository(ctx, server)?;
    let src = WalSource::new(&repository, &server.name);
    let repo = src.local();
    if let Some(seg_size) = a.prefetch_only {
        let Some(after) = WalSegment::parse(&a.wal_name, seg_size) else {
            return Err(UsageError(format!("'{}' is not a WAL segment name", a.wal_name)).into());
        };
        let n = get_wal::with_prefetch_lock(repo, || get_wal::prefetch(&src, &after, a.prefetch));
        if let Some(Err(e)) = n {
            return Err(e.into());
        }
        return Ok(0);
    }
    let dest = match &a.output {
        Some(p) => Destination::Path(p),
        None => Destination::Stdout,
    };
    let served = match get_wal::serve(&src, &a.wal_name, &dest, a.partial) {
        Ok(s) => s,
        Err(RestoreError::Usage(m)) => return Err(UsageError(m).into()),
        // Exit 1 tells PostgreSQL "not archived": only for a file that is not there.
        Err(e @ RestoreError::NotFound(_)) => return Err(e.into()),
        // Anything else (damaged, unverifiable, not delivered whole) must stop
        // recovery: PostgreSQL aborts on an exit code above 125.
        Err(e) => {
            return Err(CodedError {
                code: EXIT_ABORT_RECOVERY,
                message: e.to_string(),
            }
            .into())
        }
    };
    tracing::debug!(
        "served {} from {:?} ({} bytes)",
        served.name,
        served.source,
        served.bytes
    );
    if a.prefetch > 0 {
        if let Some(seg) = served.segment {
            if spawn_prefetch(ctx, a, &seg).is_err() {
                let _ =
                    get_wal::with_prefetch_lock(repo, || get_wal::prefetch(&src, &seg, a.prefetch));
            }
        }
    }
    Ok(0)
}

/// Starts the prefetch as a detached process (its own session, no terminal, no
/// pipes), so PostgreSQL's restore_command returns at once and replay goes on while
/// the next segments are decompressed.
fn spawn_prefetch(ctx: &Context, a: &GetWalArgs, seg: &WalSegment) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("-c")
        .arg(&ctx.config.file)
        .args(["-q", "get-wal", &a.server, &seg.name()])
        .args(["--prefetch", &a.prefetch.to_string()])
        .args(["--prefetch-only", &seg.seg_size.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map(|_| ())
}
