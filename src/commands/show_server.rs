//! `show-server`: every effective setting of one server, passwords masked.

use super::{Context, ExitCode};
use crate::config::ServerConfig;
use crate::outln;
use crate::output::{print_json, Format};
use crate::pg::mask_conninfo;
use crate::verify::probe::live_rpo;
use crate::verify::rto::estimate_from_catalog;
use anyhow::Result;
use std::collections::BTreeMap;

/// The server's settings as shown to people: defaults filled in, conninfo masked.
pub fn effective_settings(s: &ServerConfig, home: &std::path::Path) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = s.settings.clone();
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let set = |m: &mut BTreeMap<String, String>, k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    set(&mut m, "description", s.description.clone());
    set(&mut m, "active", s.active.to_string());
    set(&mut m, "conninfo", s.conninfo.clone());
    set(&mut m, "streaming_conninfo", s.streaming_conninfo.clone());
    set(
        &mut m,
        "streaming_archiver",
        s.streaming_archiver.to_string(),
    );
    set(
        &mut m,
        "streaming_archiver_name",
        s.streaming_archiver_name.clone(),
    );
    set(&mut m, "slot_name", opt(&s.slot_name));
    set(&mut m, "create_slot", s.create_slot.to_string());
    set(&mut m, "backup_method", s.backup_method.to_string());
    set(&mut m, "ssh_command", opt(&s.ssh_command));
    set(
        &mut m,
        "passive",
        s.primary_ssh_command.is_some().to_string(),
    );
    set(&mut m, "primary_ssh_command", opt(&s.primary_ssh_command));
    set(
        &mut m,
        "primary_pgbk_command",
        s.primary_pgbk_command.clone(),
    );
    set(&mut m, "archiver", s.archiver.to_string());
    set(&mut m, "parallel_jobs", s.parallel_jobs.to_string());
    set(
        &mut m,
        "compression",
        s.compression.clone().unwrap_or_else(|| "zstd".into()),
    );
    set(&mut m, "retention_policy", opt(&s.retention_policy));
    set(
        &mut m,
        "minimum_redundancy",
        s.minimum_redundancy.to_string(),
    );
    set(&mut m, "config_file", s.file.display().to_string());
    match &s.repository {
        Some(r) => {
            set(&mut m, "repository", r.url());
            set(&mut m, "s3_endpoint", r.endpoint_url());
            set(&mut m, "s3_region", r.region.clone());
            set(
                &mut m,
                "s3_url_style",
                match r.url_style {
                    crate::repo::store::s3_settings::UrlStyle::Path => "path".into(),
                    crate::repo::store::s3_settings::UrlStyle::Virtual => "virtual".into(),
                },
            );
            set(&mut m, "s3_verify_tls", r.verify_tls.to_string());
        }
        None => set(&mut m, "repository", home.display().to_string()),
    }
    let repo = crate::repo::ServerRepo::new(home, &s.name);
    set(
        &mut m,
        "backup_directory",
        repo.root().display().to_string(),
    );
    set(
        &mut m,
        "wals_directory",
        repo.wals_dir().display().to_string(),
    );
    set(
        &mut m,
        "streaming_wals_directory",
        repo.streaming_dir().display().to_string(),
    );
    set(
        &mut m,
        "incoming_wals_directory",
        repo.incoming_dir().display().to_string(),
    );
    set(
        &mut m,
        "errors_directory",
        repo.errors_dir().display().to_string(),
    );
    for (k, v) in m.iter_mut() {
        if k.contains("conninfo") {
            *v = mask_conninfo(v);
        } else if k.contains("password") || k.contains("secret") || k.contains("token") {
            *v = "********".into();
        }
    }
    m
}

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
            obj.insert("rto".into(), super::status::rto_json(&rto));
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
            outln!("\tRTO (estimated): {}", super::status::rto_text(&rto))?;
            match &drill {
                Ok(Some(d)) => outln!("\tLast restore drill: {}", d.text(now))?,
                Ok(None) => outln!("\tLast restore drill: none")?,
                Err(e) => outln!("\tLast restore drill: unknown ({e})")?,
            }
        }
    }
    Ok(0)
}
