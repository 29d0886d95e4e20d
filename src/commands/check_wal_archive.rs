//! `check-wal-archive`: before pointing a new or re-initialised PostgreSQL at a
//! server's archive, make sure no WAL of an earlier cluster would collide with it.

use super::{Context, ExitCode};
use crate::output::Report;
use crate::verify::wal_archive::{check_wal_archive, WalArchiveCheck};
use crate::wal::TimeLineId;
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::io::Write;

/// Runs the verb: exit 0 when the archive is safe, 1 when it is not.
pub fn run(ctx: &Context, name: &str, timeline: Option<u32>) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let repo = super::server_repo(ctx, name)?;
    let c = check_wal_archive(&repo, timeline.map(TimeLineId))
        .with_context(|| format!("server '{}'", s.name))?;
    let safe = c.safe;
    ctx.emit(&Checked {
        server: s.name.clone(),
        check: c,
    })?;
    Ok(if safe { 0 } else { 1 })
}

/// The check, and the server it is about (for the text).
#[derive(Serialize)]
#[serde(transparent)]
struct Checked {
    check: WalArchiveCheck,
    #[serde(skip)]
    server: String,
}

impl Report for Checked {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let (c, server) = (&self.check, &self.server);
        if c.safe {
            return match (c.files, c.timeline) {
                (0, _) => writeln!(w, "WAL archive of server '{server}': safe (empty)"),
                (n, Some(t)) => writeln!(
                    w,
                    "WAL archive of server '{server}': safe ({n} file(s), all on timelines below {})",
                    t.0
                ),
                (n, None) => writeln!(w, "WAL archive of server '{server}': safe ({n} file(s))"),
            };
        }
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
        writeln!(
            w,
            "WAL archive of server '{server}': NOT safe for a new server: {why} ({}{more}); {fix}",
            c.conflicting.join(", ")
        )
    }
}
