//! `verify-backup`: re-read every stored file of a backup, decompress it and compare
//! its checksum with files.jsonl, and check that every file of PostgreSQL's
//! backup_manifest is there. Exit 1 naming each bad or missing file.

use super::check_backup::{in_pool, refuse_failed};
use super::{Context, ExitCode};
use crate::backup::{BackupDir, BackupStatus};
use crate::outln;
use crate::output::{human_bytes, print_json, Format};
use crate::verify::backup_check::verify_backup_files;
use anyhow::{bail, Result};
use serde_json::json;

/// Runs the verb.
pub fn run(ctx: &Context, server: &str, wanted: &str) -> Result<ExitCode> {
    let (_, b) = super::find_backup(ctx, server, wanted)?;
    refuse_failed(&b)?;
    if b.status == BackupStatus::Started {
        bail!(
            "server '{server}': backup {} is still being taken",
            b.backup_id
        );
    }
    let dir = BackupDir::new(&super::server_repo(ctx, server)?, &b.backup_id);
    let report = in_pool(ctx, server, || verify_backup_files(&dir, &b))??;
    let code = if report.ok() { 0 } else { 1 };
    if ctx.format == Format::Json {
        print_json(&json!({
            "server": server,
            "backup_id": b.backup_id,
            "ok": report.ok(),
            "files": report,
        }))?;
        return Ok(code);
    }
    let manifest = match report.manifest_files {
        Some(n) => format!(", {n} file(s) of backup_manifest present"),
        None => String::new(),
    };
    if report.ok() {
        outln!(
            "Backup {} of server '{server}': {} file(s), {} verified{manifest}",
            b.backup_id,
            report.files,
            human_bytes(report.bytes)
        )?;
    } else {
        outln!(
            "Backup {} of server '{server}': {} bad or missing file(s) among {} checked:",
            b.backup_id,
            report.problems.len(),
            report.files
        )?;
        for p in &report.problems {
            let issue = serde_json::to_value(p.issue)?;
            let object = p
                .object
                .as_deref()
                .map(|o| format!(" ({o})"))
                .unwrap_or_default();
            outln!(
                "\t{} {}{object}: {}",
                issue.as_str().unwrap_or("bad"),
                p.path,
                p.detail
            )?;
        }
    }
    Ok(code)
}
