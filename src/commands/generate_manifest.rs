//! `generate-manifest`: PostgreSQL's `backup_manifest` for a backup taken without
//! one (rsync), written beside backup.json and restored by `recover` from then on.

use super::{retention_lock, Context, ExitCode};
use crate::backup::manifest::generate_manifest;
use crate::backup::{save, BackupDir};
use crate::output::{human_bytes, Report};
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::io::Write;

/// Runs the verb.
pub fn run(ctx: &Context, server: &str, backup_id: &str) -> Result<ExitCode> {
    super::server_config(ctx, server)?;
    let _lock = retention_lock(ctx, server)?;
    let (catalog, found) = super::find_backup_for(ctx, server, backup_id, super::Access::Change)?;
    let repo = super::server_repo(ctx, server)?;
    let dir = BackupDir::new(&repo, &found.backup_id);
    // backup.json is the truth: read and update it, not the catalog's copy.
    let mut info = dir.read_info()?;
    let report = generate_manifest(&dir, &info)
        .with_context(|| format!("server '{server}': generate-manifest"))?;
    info.has_manifest = true;
    save(&repo, &catalog, &info)?;
    ctx.emit(&Written {
        backup_id: info.backup_id,
        bytes: report.bytes,
        files: report.files,
        manifest_bytes: report.manifest_bytes,
        path: dir.describe("backup_manifest"),
        server: server.to_string(),
    })?;
    Ok(0)
}

/// The manifest written (fields in the JSON document's order).
#[derive(Serialize)]
struct Written {
    backup_id: String,
    bytes: u64,
    files: u64,
    manifest_bytes: u64,
    path: String,
    server: String,
}

impl Report for Written {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            w,
            "Wrote {} for backup {} ({} files, {} verified)",
            self.path,
            self.backup_id,
            self.files,
            human_bytes(self.bytes)
        )
    }
}
