//! `check-wal-archive`: before pointing a new or re-initialised PostgreSQL at a
//! server's archive, make sure no WAL of an earlier cluster would collide with it.

use super::{Context, ExitCode};
use crate::outln;
use crate::output::{print_json, Format};
use crate::verify::wal_archive::check_wal_archive;
use crate::wal::TimeLineId;
use anyhow::{Context as _, Result};

/// Runs the verb: exit 0 when the archive is safe, 1 when it is not.
pub fn run(ctx: &Context, name: &str, timeline: Option<u32>) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let repo = super::server_repo(ctx, name)?;
    let c = check_wal_archive(&repo, timeline.map(TimeLineId))
        .with_context(|| format!("server '{}'", s.name))?;
    match ctx.format {
        Format::Json => print_json(&c)?,
        Format::Text if c.safe => match (c.files, c.timeline) {
            (0, _) => outln!("WAL archive of server '{}': safe (empty)", s.name)?,
            (n, Some(t)) => outln!(
                "WAL archive of server '{}': safe ({n} file(s), all on timelines below {})",
                s.name,
                t.0
            )?,
            (n, None) => outln!("WAL archive of server '{}': safe ({n} file(s))", s.name)?,
        },
        Format::Text => {
            let more = match c.conflicting_count.saturating_sub(c.conflicting.len()) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            let (why, fix) = match c.timeline {
                None => (
                    format!("it holds {} WAL file(s)", c.files),
                    format!(
                        "use a new server name, or pass --timeline above {}",
                        c.newest_timeline.map(|t| t.0).unwrap_or(1)
                    ),
                ),
                Some(t) => (
                    format!(
                        "{} file(s) on timeline {} or later",
                        c.conflicting_count, t.0
                    ),
                    "use a new server name or a later timeline".to_string(),
                ),
            };
            outln!(
                "WAL archive of server '{}': NOT safe for a new server: {why} ({}{more}); {fix}",
                s.name,
                c.conflicting.join(", ")
            )?;
        }
    }
    Ok(if c.safe { 0 } else { 1 })
}
