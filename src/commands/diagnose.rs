//! `diagnose`: one JSON document for bug reports — versions, configuration with
//! passwords masked, every server's status and checks, and the catalog.

use super::describe::{effective_settings, rto_json};
use super::{runtime, Context, ExitCode};
use crate::catalog::Catalog;
use crate::output::print_json;
use crate::pg::ConnInfo;
use crate::verify::probe::probe;
use crate::verify::rto::estimate_from_catalog;
use crate::verify::server_check::check_items;
use anyhow::Result;
use serde_json::{json, Map, Value};

/// `uname -a`, field by field.
fn uname() -> Value {
    // SAFETY: `u` is a zeroed out-parameter filled by uname(2).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return Value::Null;
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    json!({
        "sysname": field(&u.sysname),
        "release": field(&u.release),
        "version": field(&u.version),
        "machine": field(&u.machine),
    })
}

/// Replaces every occurrence of the servers' passwords in `v`'s strings: errors from
/// the server or the libraries must not leak one either.
fn scrub(v: &mut Value, secrets: &[String]) {
    match v {
        Value::String(s) => {
            for p in secrets {
                if s.contains(p.as_str()) {
                    *s = s.replace(p.as_str(), "********");
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| scrub(x, secrets)),
        Value::Object(o) => o.values_mut().for_each(|x| scrub(x, secrets)),
        _ => {}
    }
}

/// Runs the verb.
pub fn run(ctx: &Context) -> Result<ExitCode> {
    let cfg = &ctx.config;
    let rt = runtime()?;
    let mut secrets = Vec::new();
    let mut servers = Map::new();
    for s in cfg.servers.values() {
        if let Some(secret) = s
            .repository
            .as_ref()
            .and_then(|r| r.secret_access_key.clone())
        {
            secrets.push(secret);
        }
        for text in [&s.conninfo, &s.streaming_conninfo] {
            if let Some(p) = ConnInfo::parse(text).ok().and_then(|c| c.password()) {
                if p.len() >= 4 {
                    secrets.push(p);
                }
            }
        }
        let st = rt.block_on(probe(s, &cfg.home));
        let checks = check_items(s, &st);
        let rto = estimate_from_catalog(&cfg.home, &s.name);
        servers.insert(
            s.name.clone(),
            json!({
                "settings": effective_settings(s, &cfg.home),
                "status": st,
                "rpo": st.rpo(),
                "rto": rto_json(&rto),
                "checks": checks,
            }),
        );
    }
    let catalog = match Catalog::open_existing(&cfg.home) {
        Ok(Some(c)) => json!({
            "path": Catalog::path_in(&cfg.home),
            "schema_version": c.schema_version().ok(),
            "rows": c.row_counts().ok(),
        }),
        Ok(None) => json!({ "path": Catalog::path_in(&cfg.home), "exists": false }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let mut doc = json!({
        "pgbk": { "version": env!("CARGO_PKG_VERSION") },
        "system": uname(),
        "configuration": {
            "file": cfg.file,
            "home": cfg.home,
            "configuration_files_directory": cfg.configuration_files_directory,
            "log_file": cfg.log_file,
            "log_level": cfg.log_level,
            "warnings": cfg.warnings,
        },
        "servers": servers,
        "catalog": catalog,
    });
    scrub(&mut doc, &secrets);
    print_json(&doc)?;
    Ok(0)
}
