//! `delete`: remove a backup and the archived WAL no remaining backup needs. Refuses a
//! backup being taken, a kept one, and the last DONE one without `--force`.

use super::{retention_lock, Context, ExitCode};
use crate::output::{human_bytes, Report};
use crate::retention::{delete_backup, refuse_delete, Deleted};
use anyhow::{bail, Context as _, Result};
use std::io::Write;

/// Runs the verb.
pub fn run(ctx: &Context, server: &str, wanted: &str, force: bool) -> Result<ExitCode> {
    let (catalog, found) = super::find_backup_for(ctx, server, wanted, super::Access::Own)?;
    let _lock = retention_lock(ctx, server)?;
    // Under the lock, the backup as it is now (a keep may have landed meanwhile).
    let all: Vec<crate::backup::BackupInfo> = catalog.backups(server)?;
    let Some(b) = all.iter().find(|b| b.backup_id == found.backup_id).cloned() else {
        bail!(
            "server '{server}': backup {} was deleted meanwhile",
            found.backup_id
        );
    };
    let minimum = super::server_config(ctx, server)?.minimum_redundancy;
    refuse_delete(&b, &all, minimum, force)?;
    let repo = super::server_repo(ctx, server)?;
    let d = delete_backup(&repo, &catalog, &b)
        .with_context(|| format!("server '{server}': deleting backup {}", b.backup_id))?;
    ctx.emit(&d)?;
    Ok(0)
}

impl Report for Deleted {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let d = self;
        let server = &d.server;
        writeln!(
            w,
            "Deleted backup {} of server '{server}' ({} freed)",
            d.backup_id,
            human_bytes(d.freed_bytes)
        )?;
        match (d.removed_wal.first(), d.removed_wal.last()) {
            _ if d.no_backup_left => writeln!(
                w,
                "No backup of server '{server}' remains: archived WAL kept"
            ),
            (Some(first), Some(last)) => writeln!(
                w,
                "Removed {} WAL file(s) no remaining backup needs ({}): {first} to {last}",
                d.removed_wal.len(),
                human_bytes(d.removed_wal_bytes)
            ),
            _ => writeln!(
                w,
                "No WAL file to remove: the remaining backups need all of it"
            ),
        }
    }
}
