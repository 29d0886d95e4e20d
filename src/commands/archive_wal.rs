//! `archive-wal`: validates the files in incoming/ and moves them into the archive.

use super::{Context, ExitCode};
use crate::output::{human_bytes, Report};
use crate::wal::incoming::{archive_incoming, IncomingReport};
use anyhow::Result;
use std::io::Write;

/// Runs the verb: exit 0 when every complete WAL file was archived, 1 when some were
/// refused (moved to errors/) or the run failed.
pub fn run(ctx: &Context, name: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let r = archive_incoming(&super::repository(ctx, s)?, &s.name)?;
    ctx.emit(&r)?;
    Ok(if r.refused.is_empty() { 0 } else { 1 })
}

impl Report for IncomingReport {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let r = self;
        writeln!(
            w,
            "{}: {} WAL file(s) archived ({}, {} on disk), {} already archived, {} refused, {} left in incoming",
            r.server,
            r.archived.len(),
            human_bytes(r.bytes),
            human_bytes(r.stored_bytes),
            r.already_present.len(),
            r.refused.len(),
            r.left.len()
        )?;
        for f in &r.refused {
            writeln!(w, "\trefused {}: {} (moved to errors/)", f.name, f.reason)?;
        }
        Ok(())
    }
}
