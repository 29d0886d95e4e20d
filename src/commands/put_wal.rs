//! `put-wal`: stores one WAL file read on stdin.

use super::{Context, ExitCode, UsageError};
use anyhow::Result;

/// Runs the verb (placeholder until implemented).
pub fn run(_ctx: &Context, a: &crate::cli::PutWalArgs) -> Result<ExitCode> {
    let _ = a;
    Err(UsageError("not implemented yet".into()).into())
}
