//! `check-backup`: is every WAL segment a backup needs archived and readable?

use super::{Context, ExitCode};
use anyhow::Result;

/// Runs the verb.
pub fn run(_ctx: &Context, server: &str, backup_id: &str) -> Result<ExitCode> {
    let _ = (server, backup_id);
    anyhow::bail!("not implemented yet")
}
