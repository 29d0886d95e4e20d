//! `sync-info`: what a passive peer must copy since a cursor (the primary side of
//! `replicate`); JSON is the only useful output, text prints a short summary.

use super::{Context, ExitCode, UsageError};
use crate::output::Report;
use crate::peer::sync_info::{build, parse_cursor};
use crate::peer::SyncInfo;
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// Runs the verb.
pub fn run(ctx: &Context, a: &crate::cli::SyncInfoArgs) -> Result<ExitCode> {
    super::refuse_object_storage(super::server_config(ctx, &a.server)?)?;
    let since = match a.since.as_deref() {
        None => 0,
        Some(s) => parse_cursor(s).ok_or_else(|| {
            UsageError(format!(
                "sync-info: option '--since': '{s}' is not a cursor (a number sync-info returned)"
            ))
        })?,
    };
    let doc = build(&ctx.config.home, &a.server, since)?;
    ctx.emit(&Since { doc, since })?;
    Ok(0)
}

/// The document, and the cursor it was asked from (for the text summary).
#[derive(Serialize)]
#[serde(transparent)]
struct Since {
    doc: SyncInfo,
    #[serde(skip)]
    since: i64,
}

impl Report for Since {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let (doc, since) = (&self.doc, self.since);
        writeln!(
            w,
            "server '{}': {} DONE backup(s), {} WAL file(s) since cursor {since}, partial {}, last WAL position {}; cursor {}",
            doc.server,
            doc.backups.len(),
            doc.wals.len(),
            doc.partial
                .as_ref()
                .map(|p| format!("{} ({} bytes)", p.name, p.size))
                .unwrap_or_else(|| "none".into()),
            doc.last_lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "unknown".into()),
            doc.cursor
        )
    }
}
