//! `check`: judge each server's health item by item; `--nagios` for monitoring.

use super::{runtime, Context, ExitCode};
use crate::config::ServerConfig;
use crate::outln;
use crate::output::{print_json, Format, NagiosState};
use crate::verify::probe::probe;
use crate::verify::server_check::{application_name_item, check_items, CheckItem};
use anyhow::Result;
use std::collections::BTreeMap;

/// Runs the verb for one server or `all` (active servers).
pub fn run(ctx: &Context, target: &str, nagios: bool) -> Result<ExitCode> {
    let servers: Vec<&ServerConfig> = if target == "all" {
        ctx.config.servers.values().filter(|s| s.active).collect()
    } else {
        vec![super::server(ctx, target)?]
    };
    let rt = runtime()?;
    let mut results: BTreeMap<String, Vec<CheckItem>> = BTreeMap::new();
    for s in &servers {
        let st = rt.block_on(probe(s, &ctx.config.home));
        let mut items = check_items(s, &st);
        let every: Vec<&ServerConfig> = ctx.config.servers.values().collect();
        items.extend(application_name_item(s, &every));
        results.insert(s.name.clone(), items);
    }
    let failed: Vec<(&String, Vec<&str>)> = results
        .iter()
        .map(|(n, items)| {
            (
                n,
                items
                    .iter()
                    .filter(|i| !i.ok)
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, f)| !f.is_empty())
        .collect();
    if nagios {
        let state = if failed.is_empty() {
            NagiosState::Ok
        } else {
            NagiosState::Critical
        };
        let line = if failed.is_empty() {
            format!(
                "PGBK {} - Ready to serve {} server(s)",
                state.label(),
                results.len()
            )
        } else {
            let parts: Vec<String> = failed
                .iter()
                .map(|(n, f)| format!("{n}: {}", f.join(", ")))
                .collect();
            format!(
                "PGBK {} - {} server(s) with failed checks: {}",
                state.label(),
                failed.len(),
                parts.join("; ")
            )
        };
        outln!("{line}")?;
        return Ok(state.exit_code());
    }
    match ctx.format {
        Format::Json => {
            let doc: BTreeMap<&String, serde_json::Value> = results
                .iter()
                .map(|(n, items)| {
                    (
                        n,
                        serde_json::json!({ "ok": items.iter().all(|i| i.ok), "checks": items }),
                    )
                })
                .collect();
            print_json(&doc)?;
        }
        Format::Text => {
            for (n, items) in &results {
                outln!("Server {n}:")?;
                for i in items {
                    let state = if i.ok { "OK" } else { "FAILED" };
                    match &i.hint {
                        Some(h) => outln!("\t{}: {state} ({h})", i.name)?,
                        None => outln!("\t{}: {state}", i.name)?,
                    }
                }
            }
        }
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}
