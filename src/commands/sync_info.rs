//! `sync-info`: what a passive peer must copy since a cursor.

use super::{Context, ExitCode, UsageError};
use anyhow::Result;

/// Runs the verb (placeholder until implemented).
pub fn run(_ctx: &Context, a: &crate::cli::SyncInfoArgs) -> Result<ExitCode> {
    let _ = a;
    Err(UsageError("not implemented yet".into()).into())
}
