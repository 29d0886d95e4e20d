//! `keep`: exclude a backup from retention, release it, or show its status.

use super::{Context, ExitCode};
use anyhow::Result;

/// Runs the verb.
pub fn run(_ctx: &Context, args: &crate::cli::KeepArgs) -> Result<ExitCode> {
    let _ = args;
    anyhow::bail!("not implemented yet")
}
