//! `keep`: mark a DONE backup as kept outside retention (`--target full|standalone`),
//! release it (`--release`) or show its annotation (`--status`), as Barman does.

use super::{retention_lock, Context, ExitCode, UsageError};
use crate::backup::{save, BackupDir, BackupStatus, KeepTarget};
use crate::cli::KeepArgs;
use crate::output::Report;
use anyhow::{bail, Result};
use serde::Serialize;
use std::io::Write;

/// Runs the verb.
pub fn run(ctx: &Context, a: &KeepArgs) -> Result<ExitCode> {
    let server = a.server.as_str();
    let target: Option<KeepTarget> = match a.target.as_deref() {
        Some(t) => Some(t.parse().map_err(UsageError)?),
        None => None,
    };
    if target.is_none() && !a.release && !a.status {
        return Err(UsageError(
            "keep: give --target full|standalone, --release or --status".into(),
        )
        .into());
    }
    super::server_config(ctx, server)?;
    if a.status {
        let (_, b) = super::find_backup(ctx, server, &a.backup_id)?;
        ctx.emit(&Kept::new(server, &b.backup_id, b.keep, Change::Status))?;
        return Ok(0);
    }
    let _lock = retention_lock(ctx, server)?;
    let (catalog, found) =
        super::find_backup_for(ctx, server, &a.backup_id, super::Access::Change)?;
    let repo = super::server_repo(ctx, server)?;
    // backup.json is the truth: change it, not the catalog's copy.
    let mut b = BackupDir::new(&repo, &found.backup_id).read_info()?;
    let before = b.keep;
    if let Some(t) = target {
        if b.status != BackupStatus::Done {
            bail!(
                "server '{server}': backup {} is {}: only DONE backups can be kept",
                b.backup_id,
                b.status
            );
        }
        b.keep = Some(t);
    } else {
        b.keep = None;
    }
    if b.keep != before {
        save(&repo, &catalog, &b)?;
    }
    let change = match (target, before) {
        (Some(t), _) => Change::Kept(t),
        (None, Some(k)) => Change::Released(k),
        (None, None) => Change::NotKept,
    };
    ctx.emit(&Kept::new(server, &b.backup_id, b.keep, change))?;
    Ok(0)
}

/// A backup's keep annotation after the verb (fields in the JSON document's order).
#[derive(Serialize)]
struct Kept {
    backup_id: String,
    /// `full`, `standalone` or `nokeep`.
    keep: String,
    server: String,
    #[serde(skip)]
    change: Change,
}

/// What the verb did to the annotation.
enum Change {
    /// `--status`: nothing.
    Status,
    /// Kept with this target.
    Kept(KeepTarget),
    /// This annotation was released.
    Released(KeepTarget),
    /// `--release` of a backup that was not kept.
    NotKept,
}

impl Kept {
    fn new(server: &str, backup_id: &str, keep: Option<KeepTarget>, change: Change) -> Kept {
        Kept {
            backup_id: backup_id.to_string(),
            keep: keep
                .map(|k| k.to_string())
                .unwrap_or_else(|| "nokeep".into()),
            server: server.to_string(),
            change,
        }
    }
}

impl Report for Kept {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let (id, server) = (&self.backup_id, &self.server);
        match &self.change {
            Change::Status => writeln!(w, "{}", self.keep),
            Change::Kept(t) => writeln!(w, "Backup {id} of server '{server}' is kept ({t})"),
            Change::Released(k) => writeln!(
                w,
                "Keep annotation ({k}) released from backup {id} of server '{server}'"
            ),
            Change::NotKept => writeln!(w, "Backup {id} of server '{server}' was not kept"),
        }
    }
}
