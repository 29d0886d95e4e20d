//! `list-backups` (alias `list-backup`): the backups of a server or of all servers,
//! newest first, one line each as Barman prints them; backups outside the retention
//! policy are marked OBSOLETE (judged at display time, backup.json keeps DONE).

use super::describe::{show_time, status_text, wal_span};
use super::{Context, ExitCode};
use crate::backup::BackupInfo;
use crate::output::{human_bytes, Report};
use crate::retention::obsolete_now;
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

fn line(b: &BackupInfo, obsolete: bool) -> String {
    let name = b
        .name
        .as_deref()
        .map(|n| format!(" '{n}'"))
        .unwrap_or_default();
    let when = match b.end_time {
        Some(t) => show_time(t),
        None => format!("started {}", show_time(b.begin_time)),
    };
    let parent = b
        .parent
        .as_deref()
        .map(|p| format!(" - INCREMENTAL:{p}"))
        .unwrap_or_default();
    let keep = b
        .keep
        .map(|k| format!(" - KEEP:{}", k.to_string().to_uppercase()))
        .unwrap_or_default();
    format!(
        "{} {}{name} - {when} - Size: {} - Stored: {} - WAL: {}{parent}{keep} - {}",
        b.server,
        b.backup_id,
        human_bytes(b.size_bytes),
        human_bytes(b.stored_bytes),
        wal_span(b),
        status_text(b)
    ) + if obsolete { " - OBSOLETE" } else { "" }
}

/// Runs the verb for one server or `all`.
pub fn run(ctx: &Context, target: &str, minimal: bool) -> Result<ExitCode> {
    let servers: Vec<&str> = if target == "all" {
        ctx.config.servers.keys().map(String::as_str).collect()
    } else {
        vec![super::server_config(ctx, target)?.name.as_str()]
    };
    // (backup, outside the retention policy): judged now, never stored.
    let mut rows: Vec<(BackupInfo, bool, u64)> = Vec::new();
    for s in servers {
        if let Some((_, list)) = super::backups_of(ctx, s)? {
            let cfg = super::server_config(ctx, s)?;
            let obsolete = obsolete_now(
                &list,
                cfg.retention_policy.as_deref(),
                cfg.minimum_redundancy,
            );
            let chain_bytes: Vec<u64> = list
                .iter()
                .map(|b| crate::backup::chain::stored_bytes(b, &list))
                .collect();
            rows.extend(list.into_iter().zip(chain_bytes).rev().map(|(b, c)| {
                let o = obsolete.contains(&b.backup_id);
                (b, o, c)
            }));
        }
    }
    let mut docs = Vec::with_capacity(rows.len());
    for (b, o, c) in &rows {
        let mut v = serde_json::to_value(b)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("obsolete".into(), (*o).into());
            obj.insert("backup_type".into(), b.backup_type().into());
            obj.insert("chain_stored_bytes".into(), (*c).into());
        }
        docs.push(v);
    }
    ctx.emit(&Listing {
        docs,
        rows,
        minimal,
        all: target == "all",
    })?;
    Ok(0)
}

/// The backups, newest first: a JSON document each, and for the text each backup
/// and whether it is obsolete.
#[derive(Serialize)]
#[serde(transparent)]
struct Listing {
    docs: Vec<serde_json::Value>,
    /// (backup, obsolete, bytes stored by its chain).
    #[serde(skip)]
    rows: Vec<(BackupInfo, bool, u64)>,
    #[serde(skip)]
    minimal: bool,
    /// Every server listed (`--minimal` then names the server).
    #[serde(skip)]
    all: bool,
}

impl Report for Listing {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        for (b, o, _) in &self.rows {
            match (self.minimal, self.all) {
                (true, true) => writeln!(w, "{} {}", b.server, b.backup_id)?,
                (true, false) => writeln!(w, "{}", b.backup_id)?,
                (false, _) => writeln!(w, "{}", line(b, *o))?,
            }
        }
        Ok(())
    }
}
