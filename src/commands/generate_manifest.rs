//! `generate-manifest`: PostgreSQL's `backup_manifest` for a backup taken without
//! one (rsync), written beside backup.json and restored by `recover` from then on.

use super::{retention_lock, Context, ExitCode};
use crate::backup::manifest::generate_manifest;
use crate::backup::{save, BackupDir};
use crate::outln;
use crate::output::{human_bytes, print_json, Format};
use anyhow::{Context as _, Result};
use serde_json::json;

/// Runs the verb.
pub fn run(ctx: &Context, server: &str, backup_id: &str) -> Result<ExitCode> {
    super::server_config(ctx, server)?;
    let _lock = retention_lock(ctx, server)?;
    let (catalog, found) = super::find_backup(ctx, server, backup_id)?;
    let repo = super::server_repo(ctx, server)?;
    let dir = BackupDir::new(&repo, &found.backup_id);
    // backup.json is the truth: read and update it, not the catalog's copy.
    let mut info = dir.read_info()?;
    let report = generate_manifest(&dir, &info)
        .with_context(|| format!("server '{server}': generate-manifest"))?;
    info.has_manifest = true;
    save(&repo, &catalog, &info)?;
    match ctx.format {
        Format::Json => print_json(&json!({
            "server": server,
            "backup_id": info.backup_id,
            "files": report.files,
            "bytes": report.bytes,
            "manifest_bytes": report.manifest_bytes,
            "path": dir.describe("backup_manifest"),
        }))?,
        Format::Text => outln!(
            "Wrote {} for backup {} ({} files, {} verified)",
            dir.describe("backup_manifest"),
            info.backup_id,
            report.files,
            human_bytes(report.bytes)
        )?,
    }
    Ok(0)
}
