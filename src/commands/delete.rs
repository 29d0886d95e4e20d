//! `delete`: remove a backup and the WAL no remaining backup needs.

use super::{Context, ExitCode};
use anyhow::Result;

/// Runs the verb.
pub fn run(_ctx: &Context, server: &str, backup_id: &str, force: bool) -> Result<ExitCode> {
    let _ = (server, backup_id, force);
    anyhow::bail!("not implemented yet")
}
