//! `archive-wal`: validates the files in incoming/ and moves them into the archive.

use super::{Context, ExitCode, UsageError};
use anyhow::Result;

/// Runs the verb (placeholder until implemented).
pub fn run(_ctx: &Context, a: &str) -> Result<ExitCode> {
    let _ = a;
    Err(UsageError("not implemented yet".into()).into())
}
