//! `backup`: take a base backup of a server.

use super::{Context, ExitCode};
use anyhow::Result;

/// Runs the verb.
pub fn run(_ctx: &Context, args: &crate::cli::BackupArgs) -> Result<ExitCode> {
    let _ = args;
    anyhow::bail!("not implemented yet")
}
