//! `replicate`: copies backups and WAL from a passive server's primary manager.

use super::{Context, ExitCode, UsageError};
use anyhow::Result;

/// Runs the verb (placeholder until implemented).
pub fn run(_ctx: &Context, a: &crate::cli::ReplicateArgs) -> Result<ExitCode> {
    let _ = a;
    Err(UsageError("not implemented yet".into()).into())
}
