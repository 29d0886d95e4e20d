//! `check`: judge each server's health item by item; `--nagios` for monitoring.

use super::{runtime, Context, ExitCode};
use crate::backup::BackupStatus;
use crate::config::ServerConfig;
use crate::output::{emit_nagios, NagiosState, Report};
use crate::verify::probe::{probe, ServerState};
use crate::verify::server_check::{application_name_item, check_items, CheckItem};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// Runs the verb for one server or `all` (active servers).
pub fn run(ctx: &Context, target: &str, nagios: bool) -> Result<ExitCode> {
    let servers: Vec<&ServerConfig> = if target == "all" {
        ctx.config.servers.values().filter(|s| s.active).collect()
    } else {
        vec![super::server_config(ctx, target)?]
    };
    let rt = runtime()?;
    let mut results: BTreeMap<String, Vec<CheckItem>> = BTreeMap::new();
    let mut perfdata = Vec::new();
    for s in &servers {
        let st = rt.block_on(probe(s, &ctx.config.home));
        let mut items = check_items(s, &st);
        let every: Vec<&ServerConfig> = ctx.config.servers.values().collect();
        items.extend(application_name_item(s, &every));
        if st.local.unreadable.is_none() {
            perfdata.push(nagios_perfdata(&s.name, &st));
        }
        results.insert(s.name.clone(), items);
    }
    let report = CheckReport {
        doc: results
            .iter()
            .map(|(n, items)| {
                let doc = serde_json::json!({ "ok": items.iter().all(|i| i.ok), "checks": items });
                (n.clone(), doc)
            })
            .collect(),
        servers: results
            .into_iter()
            .map(|(n, checks)| {
                let ok = checks.iter().all(|i| i.ok);
                (n, ServerChecks { checks, ok })
            })
            .collect(),
        perfdata: perfdata.join(" "),
    };
    if nagios {
        return Ok(emit_nagios(&report)?.exit_code());
    }
    ctx.emit(&report)?;
    Ok(if report.servers.values().all(|c| c.ok) {
        0
    } else {
        1
    })
}

/// Each checked server's items, by server name: the JSON document, and the items
/// for the text and Nagios forms.
#[derive(Serialize)]
#[serde(transparent)]
struct CheckReport {
    doc: BTreeMap<String, serde_json::Value>,
    #[serde(skip)]
    servers: BTreeMap<String, ServerChecks>,
    /// Barman's perfdata of every readable server, for `--nagios`.
    #[serde(skip)]
    perfdata: String,
}

/// One server's items.
struct ServerChecks {
    checks: Vec<CheckItem>,
    ok: bool,
}

impl Report for CheckReport {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        for (n, c) in &self.servers {
            writeln!(w, "Server {n}:")?;
            for i in &c.checks {
                let state = i.state();
                match &i.hint {
                    Some(h) => writeln!(w, "\t{}: {state} ({h})", i.name)?,
                    None => writeln!(w, "\t{}: {state}", i.name)?,
                }
            }
        }
        Ok(())
    }

    fn nagios(&self) -> Option<(NagiosState, Vec<String>)> {
        let failed: Vec<(&String, Vec<&CheckItem>)> = self
            .servers
            .iter()
            .map(|(n, c)| (n, c.checks.iter().filter(|i| !i.ok).collect::<Vec<_>>()))
            .filter(|(_, f)| !f.is_empty())
            .collect();
        Some(nagios_report(&self.servers, &failed, &self.perfdata))
    }
}

/// Barman's perfdata for one server: its DONE backups' and its archived WAL's bytes
/// on disk (`pg=1234B pg_wals=5678B`).
fn nagios_perfdata(server: &str, st: &ServerState) -> String {
    let backups: u64 = st
        .local
        .backups
        .iter()
        .filter(|b| b.status == BackupStatus::Done)
        .map(|b| b.stored_bytes)
        .sum();
    format!(
        "{server}={backups}B {server}_wals={}B",
        st.local.stored_bytes
    )
}

/// The plugin output as Barman lays it out: one status line (summary, `*` between
/// servers, perfdata after `|`), then one `server.item: FAILED (hint)` line per
/// failed or unknown item for Nagios' long output.
fn nagios_report(
    results: &BTreeMap<String, ServerChecks>,
    failed: &[(&String, Vec<&CheckItem>)],
    perfdata: &str,
) -> (NagiosState, Vec<String>) {
    let perf = if perfdata.is_empty() {
        String::new()
    } else {
        format!("|{perfdata}")
    };
    if failed.is_empty() {
        let names: Vec<&str> = results.keys().map(String::as_str).collect();
        let line = match names.as_slice() {
            [] => "PGBK OK - No server configured".to_string(),
            [one] => format!("PGBK OK - Ready to serve backups for {one}{perf}"),
            many => format!(
                "PGBK OK - Ready to serve backups for {} servers * {}{perf}",
                many.len(),
                many.join(" * ")
            ),
        };
        return (NagiosState::Ok, vec![line]);
    }
    let critical = failed.iter().any(|(_, f)| f.iter().any(|i| !i.unknown));
    let state = if critical {
        NagiosState::Critical
    } else {
        NagiosState::Unknown
    };
    let summary: Vec<String> = failed
        .iter()
        .map(|(n, f)| {
            let names: Vec<&str> = f.iter().map(|i| i.name.as_str()).collect();
            format!("{n} FAILED: {}", names.join(", "))
        })
        .collect();
    let head = if results.len() == 1 {
        let only = results.keys().next().map(String::as_str).unwrap_or("");
        format!("server {only} has issues")
    } else {
        format!(
            "{} server(s) out of {} have issues",
            failed.len(),
            results.len()
        )
    };
    let mut lines = vec![format!(
        "PGBK {} - {head} * {}{perf}",
        state.label(),
        summary.join(" * ")
    )];
    for (n, f) in failed {
        for i in f {
            lines.push(match &i.hint {
                Some(h) => format!("{n}.{}: {} ({h})", i.name, i.state()),
                None => format!("{n}.{}: {}", i.name, i.state()),
            });
        }
    }
    (state, lines)
}
