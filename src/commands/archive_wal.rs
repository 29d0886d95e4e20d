//! `archive-wal`: validates the files in incoming/ and moves them into the archive.

use super::{Context, ExitCode};
use crate::outln;
use crate::output::{human_bytes, print_json, Format};
use crate::wal::incoming::archive_incoming;
use anyhow::Result;

/// Runs the verb: exit 0 when every complete WAL file was archived, 1 when some were
/// refused (moved to errors/) or the run failed.
pub fn run(ctx: &Context, name: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let r = archive_incoming(&super::repository(ctx, s)?, &s.name)?;
    match ctx.format {
        Format::Json => print_json(&r)?,
        Format::Text => {
            outln!(
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
                outln!("\trefused {}: {} (moved to errors/)", f.name, f.reason)?;
            }
        }
    }
    Ok(if r.refused.is_empty() { 0 } else { 1 })
}
