//! `show-server`: every effective setting of one server, passwords masked.

use super::describe::{effective_settings, rto_json, rto_text};
use super::{Context, ExitCode};
use crate::output::Report;
use crate::verify::probe::live_rpo;
use crate::verify::rto::estimate_from_catalog;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// Prints the settings of one server.
pub fn run(ctx: &Context, name: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let settings = effective_settings(s, &ctx.config.home);
    let rpo = super::runtime()?.block_on(live_rpo(s, &ctx.config.home));
    let rto = estimate_from_catalog(&ctx.config.home, &s.name);
    let drill = crate::verify::probe::LastDrill::read(&ctx.config.home, &s.name);
    let now = chrono::Utc::now();
    let mut obj = serde_json::Map::new();
    obj.insert("name".into(), s.name.clone().into());
    for (k, v) in &settings {
        obj.insert(k.clone(), v.clone().into());
    }
    obj.insert("rpo".into(), serde_json::to_value(&rpo)?);
    obj.insert("rto".into(), rto_json(&rto));
    obj.insert(
        "last_drill".into(),
        match &drill {
            Ok(d) => d.as_ref().map(|d| d.json(now)).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e }),
        },
    );
    let drill = match &drill {
        Ok(Some(d)) => d.text(now),
        Ok(None) => "none".into(),
        Err(e) => format!("unknown ({e})"),
    };
    ctx.emit(&Settings {
        doc: obj,
        name: s.name.clone(),
        settings,
        rpo: rpo.text(),
        rto: rto_text(&rto),
        drill,
    })?;
    Ok(0)
}

/// The settings: the JSON document, and the text's lines.
#[derive(Serialize)]
#[serde(transparent)]
struct Settings {
    doc: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    name: String,
    #[serde(skip)]
    settings: BTreeMap<String, String>,
    #[serde(skip)]
    rpo: String,
    #[serde(skip)]
    rto: String,
    /// The last drill's line.
    #[serde(skip)]
    drill: String,
}

impl Report for Settings {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(w, "Server {}:", self.name)?;
        for (k, v) in &self.settings {
            writeln!(w, "\t{k}: {v}")?;
        }
        writeln!(w, "\tRPO: {}", self.rpo)?;
        writeln!(w, "\tRTO (estimated): {}", self.rto)?;
        writeln!(w, "\tLast restore drill: {}", self.drill)
    }
}
