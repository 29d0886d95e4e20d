//! `verify-backup`: re-read every stored file of a backup, decompress it and compare
//! its checksum with files.jsonl, and check that every file of PostgreSQL's
//! backup_manifest is there. Exit 1 naming each bad or missing file. An incremental
//! backup is verified with every backup it is built on: a restore reads them all.

use super::{in_pool, refuse_failed, Context, ExitCode};
use crate::backup::{chain, BackupDir, BackupInfo, BackupStatus};
use crate::output::{human_bytes, Report};
use crate::verify::backup_check::{verify_backup_files, FileCheck};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use serde_json::json;
use std::io::Write;

/// Runs the verb.
pub fn run(ctx: &Context, server: &str, wanted: &str) -> Result<ExitCode> {
    let (catalog, b) = super::find_backup(ctx, server, wanted)?;
    refuse_failed(&b)?;
    if b.status == BackupStatus::Started {
        bail!(
            "server '{server}': backup {} is still being taken",
            b.backup_id
        );
    }
    let all = catalog.backups(server)?;
    let mut members: Vec<BackupInfo> = chain::ancestors(&b, &all)
        .map_err(|e| anyhow!("{e}"))?
        .into_iter()
        .rev()
        .cloned()
        .collect();
    members.push(b.clone());
    let repo = super::server_repo(ctx, server)?;
    let mut reports: Vec<(BackupInfo, FileCheck)> = Vec::new();
    for m in members {
        let dir = BackupDir::new(&repo, &m.backup_id);
        let report = in_pool(ctx, server, || verify_backup_files(&dir, &m))??;
        reports.push((m, report));
    }
    let ok = reports.iter().all(|(_, r)| r.ok());
    let code = if ok { 0 } else { 1 };
    let doc = match reports.last() {
        None => serde_json::Value::Null,
        Some((_, own)) => {
            let parents: Vec<serde_json::Value> = reports[..reports.len() - 1]
                .iter()
                .map(|(m, r)| json!({ "backup_id": m.backup_id, "ok": r.ok(), "files": r }))
                .collect();
            let mut doc = json!({
                "server": server,
                "backup_id": b.backup_id,
                "ok": ok,
                "files": own,
            });
            if !parents.is_empty() {
                doc["chain"] = parents.into();
            }
            doc
        }
    };
    ctx.emit(&Verified {
        doc,
        server: server.to_string(),
        reports,
    })?;
    Ok(code)
}

/// The verification: the JSON document, and each backup of the chain's check for
/// the text.
#[derive(Serialize)]
#[serde(transparent)]
struct Verified {
    doc: serde_json::Value,
    #[serde(skip)]
    server: String,
    #[serde(skip)]
    reports: Vec<(BackupInfo, FileCheck)>,
}

impl Report for Verified {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        for (m, report) in &self.reports {
            print_report(w, &self.server, m, report)?;
        }
        Ok(())
    }
}

fn print_report(
    w: &mut dyn Write,
    server: &str,
    b: &BackupInfo,
    report: &FileCheck,
) -> std::io::Result<()> {
    let manifest = match report.manifest_files {
        Some(n) => format!(", {n} file(s) of backup_manifest present"),
        None => String::new(),
    };
    if report.ok() {
        writeln!(
            w,
            "Backup {} of server '{server}': {} file(s), {} verified{manifest}",
            b.backup_id,
            report.files,
            human_bytes(report.bytes)
        )?;
    } else {
        writeln!(
            w,
            "Backup {} of server '{server}': {} bad or missing file(s) among {} checked:",
            b.backup_id,
            report.problems.len(),
            report.files
        )?;
        for p in &report.problems {
            let issue = serde_json::to_value(p.issue).map_err(std::io::Error::other)?;
            let object = p
                .object
                .as_deref()
                .map(|o| format!(" ({o})"))
                .unwrap_or_default();
            writeln!(
                w,
                "\t{} {}{object}: {}",
                issue.as_str().unwrap_or("bad"),
                p.path,
                p.detail
            )?;
        }
    }
    Ok(())
}
