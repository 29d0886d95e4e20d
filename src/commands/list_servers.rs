//! `list-servers`: the configured servers, one line each.

use super::{Context, ExitCode};
use crate::config::ServerConfig;
use crate::output::{Format, Report};
use crate::verify::probe::{live_rpo, Rpo};
use crate::verify::rto::estimate_from_catalog;
use anyhow::Result;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

async fn live_rpos(servers: &[&ServerConfig], home: &Path) -> Vec<Option<Rpo>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, s) in servers.iter().enumerate() {
        let s = (*s).clone();
        let home = home.to_path_buf();
        set.spawn(async move { (i, Some(live_rpo(&s, &home).await)) });
    }
    let mut out: Vec<Option<Rpo>> = vec![None; servers.len()];
    while let Some(Ok((i, r))) = set.join_next().await {
        out[i] = r;
    }
    out
}

#[derive(Serialize)]
struct ServerLine<'a> {
    name: &'a str,
    description: &'a str,
    active: bool,
    /// A passive copy of a server held by another pgbk (replicate).
    passive: bool,
    /// How that pgbk is reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_ssh_command: Option<&'a str>,
    backup_method: String,
    streaming_archiver: bool,
    archiver: bool,
    config_file: String,
    /// Live RPO (JSON only; its figures `null` with the reason when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    rpo: Option<Rpo>,
    /// RTO estimate (JSON only).
    #[serde(skip_serializing_if = "Option::is_none")]
    rto: Option<serde_json::Value>,
    /// The newest restore drill (JSON only).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_drill: Option<serde_json::Value>,
}

/// Prints every server (name and description; `--minimal`: names only).
pub fn run(ctx: &Context, minimal: bool) -> Result<ExitCode> {
    let mut lines: Vec<ServerLine> = ctx
        .config
        .servers
        .values()
        .map(|s| ServerLine {
            name: &s.name,
            description: &s.description,
            active: s.active,
            passive: s.primary_ssh_command.is_some(),
            primary_ssh_command: s.primary_ssh_command.as_deref(),
            backup_method: s.backup_method.to_string(),
            streaming_archiver: s.streaming_archiver,
            archiver: s.archiver,
            config_file: s.file.display().to_string(),
            rpo: None,
            rto: None,
            last_drill: None,
        })
        .collect();
    if ctx.format == Format::Json && !minimal {
        // Every server probed at once, each bounded by LIVE_RPO_TIMEOUT.
        let home = &ctx.config.home;
        let servers: Vec<_> = ctx.config.servers.values().collect();
        let rpos = super::runtime()?.block_on(live_rpos(&servers, home));
        for ((l, s), rpo) in lines.iter_mut().zip(&servers).zip(rpos) {
            l.rpo = Some(rpo.unwrap_or_else(|| Rpo::unknown("the probe did not finish")));
            let rto = estimate_from_catalog(home, &s.name);
            l.rto = Some(match &rto {
                Ok(Some(r)) => serde_json::json!({ "seconds": r.seconds, "basis": r.basis }),
                _ => super::describe::rto_json(&rto),
            });
            l.last_drill = Some(match crate::verify::probe::LastDrill::read(home, &s.name) {
                Ok(d) => d.map(|d| d.json(chrono::Utc::now())).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e }),
            });
        }
    }
    ctx.emit(&Servers { lines, minimal })?;
    Ok(0)
}

/// Every server's line; `--minimal` text shows names only.
#[derive(Serialize)]
#[serde(transparent)]
struct Servers<'a> {
    lines: Vec<ServerLine<'a>>,
    #[serde(skip)]
    minimal: bool,
}

impl Report for Servers<'_> {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        for l in &self.lines {
            if self.minimal {
                writeln!(w, "{}", l.name)?;
            } else {
                let inactive = if l.active { "" } else { " (inactive)" };
                let passive = if l.passive { " (passive)" } else { "" };
                writeln!(w, "{} - {}{}{}", l.name, l.description, inactive, passive)?;
            }
        }
        Ok(())
    }
}
