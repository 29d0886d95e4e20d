//! `check-backup`: is every WAL segment a backup needs (`begin_wal` to `end_wal`,
//! following the timeline history) archived and readable? Exit 1 listing each one
//! that is not.

use super::{in_pool, refuse_failed, Context, ExitCode};
use crate::output::Report;
use crate::verify::backup_check::{check_backup_wal, WalCheck};
use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::json;
use std::io::Write;

/// Runs the verb.
pub fn run(ctx: &Context, server: &str, wanted: &str) -> Result<ExitCode> {
    let (catalog, b) = super::find_backup(ctx, server, wanted)?;
    refuse_failed(&b)?;
    if b.begin_lsn.is_none() || b.end_lsn.is_none() {
        bail!(
            "server '{server}': backup {} has no WAL range yet (status {})",
            b.backup_id,
            b.status
        );
    }
    let repo = super::server_repo(ctx, server)?;
    let archived = catalog.wal_files(server)?;
    let report = in_pool(ctx, server, || check_backup_wal(&b, &repo, &archived))?;
    let code = if report.ok() { 0 } else { 1 };
    let doc = json!({
        "server": server,
        "backup_id": b.backup_id,
        "ok": report.ok(),
        "wal": report,
    });
    ctx.emit(&Checked {
        doc,
        server: server.to_string(),
        backup_id: b.backup_id.clone(),
        report,
    })?;
    Ok(code)
}

/// The check: the JSON document, and what its text needs.
#[derive(Serialize)]
#[serde(transparent)]
struct Checked {
    doc: serde_json::Value,
    #[serde(skip)]
    server: String,
    #[serde(skip)]
    backup_id: String,
    #[serde(skip)]
    report: WalCheck,
}

impl Report for Checked {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let (server, report) = (&self.server, &self.report);
        let b = self;
        let range = format!(
            "{} to {}",
            report.first.as_deref().unwrap_or("-"),
            report.last.as_deref().unwrap_or("-")
        );
        if report.ok() {
            writeln!(
                w,
                "Backup {} of server '{server}': all {} WAL segment(s) it needs ({range}) are archived and readable",
                b.backup_id,
                report.segments
            )?;
        } else {
            writeln!(
                w,
                "Backup {} of server '{server}': {} of the {} WAL segment(s) it needs ({range}) are missing or unreadable:",
                b.backup_id,
                report.problems.len(),
                report.segments
            )?;
            for p in &report.problems {
                let issue = serde_json::to_value(p.issue).map_err(std::io::Error::other)?;
                writeln!(
                    w,
                    "\t{} {}: {}",
                    issue.as_str().unwrap_or("bad"),
                    p.segment,
                    p.detail
                )?;
            }
        }
        Ok(())
    }
}
