//! `list-files`: the files of a backup or the WAL it needs.

use super::{Context, ExitCode};
use anyhow::Result;

/// Runs the verb.
pub fn run(_ctx: &Context, server: &str, backup_id: &str, target: &str) -> Result<ExitCode> {
    let _ = (server, backup_id, target);
    anyhow::bail!("not implemented yet")
}
