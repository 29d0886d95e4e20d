//! `rebuild-catalog`: a server's catalog rows rebuilt from its repository files.

use super::{Context, ExitCode};
use crate::catalog::Catalog;
use crate::maintenance::rebuild::{rebuild_server, RebuildSummary};
use crate::output::Report;
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::io::Write;

/// Runs the verb for one server or `all` (every configured server).
pub fn run(ctx: &Context, target: &str) -> Result<ExitCode> {
    let names: Vec<String> = if target == "all" {
        ctx.config.servers.keys().cloned().collect()
    } else {
        vec![super::server_config(ctx, target)?.name.clone()]
    };
    let home = &ctx.config.home;
    let catalog = Catalog::open(home).context("opening the catalog")?;
    let mut done: Vec<RebuildSummary> = Vec::new();
    for name in &names {
        let repo = super::server_repo(ctx, name)?;
        let summary = rebuild_server(&repo, &catalog)?;
        for id in &summary.unreadable {
            tracing::warn!("server '{name}': backup {id}: backup.json unreadable, skipped");
        }
        done.push(summary);
    }
    ctx.emit(&Rebuilt(done))?;
    Ok(0)
}

/// Each rebuilt server's summary.
#[derive(Serialize)]
struct Rebuilt(Vec<RebuildSummary>);

impl Report for Rebuilt {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        for s in &self.0 {
            writeln!(
                w,
                "Rebuilt the catalog of server '{}': {} backup(s), {} archived WAL file(s)",
                s.server, s.backups, s.wal_files
            )?;
        }
        Ok(())
    }
}
