//! `list-backups`: the backups of a server or of all servers.

use super::{Context, ExitCode};
use anyhow::Result;

/// Runs the verb.
pub fn run(_ctx: &Context, server: &str, minimal: bool) -> Result<ExitCode> {
    let _ = (server, minimal);
    anyhow::bail!("not implemented yet")
}
