//! `keep`: mark a DONE backup as kept outside retention (`--target full|standalone`),
//! release it (`--release`) or show its annotation (`--status`), as Barman does.

use super::{retention_lock, Context, ExitCode, UsageError};
use crate::backup::{save, BackupDir, BackupStatus, KeepTarget};
use crate::cli::KeepArgs;
use crate::outln;
use crate::output::{print_json, Format};
use anyhow::{bail, Result};
use serde_json::json;

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
        let keep = b
            .keep
            .map(|k| k.to_string())
            .unwrap_or_else(|| "nokeep".into());
        match ctx.format {
            Format::Json => {
                print_json(&json!({ "server": server, "backup_id": b.backup_id, "keep": keep }))?
            }
            Format::Text => outln!("{keep}")?,
        }
        return Ok(0);
    }
    let _lock = retention_lock(ctx, server)?;
    let (catalog, found) = super::find_backup(ctx, server, &a.backup_id)?;
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
    let keep = b
        .keep
        .map(|k| k.to_string())
        .unwrap_or_else(|| "nokeep".into());
    match ctx.format {
        Format::Json => {
            print_json(&json!({ "server": server, "backup_id": b.backup_id, "keep": keep }))?
        }
        Format::Text => match (target, before) {
            (Some(t), _) => outln!("Backup {} of server '{server}' is kept ({t})", b.backup_id)?,
            (None, Some(k)) => outln!(
                "Keep annotation ({k}) released from backup {} of server '{server}'",
                b.backup_id
            )?,
            (None, None) => outln!("Backup {} of server '{server}' was not kept", b.backup_id)?,
        },
    }
    Ok(0)
}
