//! `show-server`: every effective setting of one server, passwords masked.

use super::describe::{effective_settings, rto_json, rto_text};
use super::{Context, ExitCode};
use crate::outln;
use crate::output::{print_json, Format};
use crate::verify::probe::live_rpo;
use crate::verify::rto::estimate_from_catalog;
use anyhow::Result;

/// Prints the settings of one server.
pub fn run(ctx: &Context, name: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let settings = effective_settings(s, &ctx.config.home);
    let rpo = super::runtime()?.block_on(live_rpo(s, &ctx.config.home));
    let rto = estimate_from_catalog(&ctx.config.home, &s.name);
    let drill = crate::verify::probe::LastDrill::read(&ctx.config.home, &s.name);
    let now = chrono::Utc::now();
    match ctx.format {
        Format::Json => {
            let mut obj = serde_json::Map::new();
            obj.insert("name".into(), s.name.clone().into());
            for (k, v) in &settings {
                obj.insert(k.clone(), v.clone().into());
            }
            obj.insert("rpo".into(), serde_json::to_value(rpo)?);
            obj.insert("rto".into(), rto_json(&rto));
            obj.insert(
                "last_drill".into(),
                match &drill {
                    Ok(d) => d.as_ref().map(|d| d.json(now)).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e }),
                },
            );
            print_json(&obj)?;
        }
        Format::Text => {
            outln!("Server {}:", s.name)?;
            for (k, v) in &settings {
                outln!("\t{k}: {v}")?;
            }
            outln!("\tRPO: {}", rpo.text())?;
            outln!("\tRTO (estimated): {}", rto_text(&rto))?;
            match &drill {
                Ok(Some(d)) => outln!("\tLast restore drill: {}", d.text(now))?,
                Ok(None) => outln!("\tLast restore drill: none")?,
                Err(e) => outln!("\tLast restore drill: unknown ({e})")?,
            }
        }
    }
    Ok(0)
}
