//! Text and JSON forms of library values that several verbs print: backup times
//! and statuses, the RTO estimate, a server's effective settings. Kept here so verbs
//! never import each other.

use crate::backup::{BackupInfo, BackupStatus};
use crate::config::ServerConfig;
use crate::output::{human_bytes, human_seconds};
use crate::pg::mask_conninfo;
use crate::verify::rto::Rto;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// A time as backup listings show it (UTC, like backup ids): `Wed Nov 25 01:02:09 2026`.
pub fn show_time(t: DateTime<Utc>) -> String {
    t.format("%a %b %e %H:%M:%S %Y").to_string()
}

/// `begin_wal..end_wal`, or `-` while unknown.
pub fn wal_span(b: &BackupInfo) -> String {
    match (&b.begin_wal, &b.end_wal) {
        (Some(a), Some(z)) => format!("{a}..{z}"),
        (Some(a), None) => format!("{a}.."),
        _ => "-".to_string(),
    }
}

/// The status, with the reason of a failure.
pub fn status_text(b: &BackupInfo) -> String {
    match (&b.status, &b.error) {
        (BackupStatus::Failed, Some(e)) => format!("FAILED ({e})"),
        (s, _) => s.to_string(),
    }
}

/// The RTO as JSON: the estimate, `null` without a DONE backup, `{"error"}` when the
/// catalog could not be read.
pub fn rto_json(rto: &Result<Option<Rto>, String>) -> serde_json::Value {
    match rto {
        Ok(r) => serde_json::to_value(r).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e }),
    }
}

/// The RTO on one line of text.
pub fn rto_text(rto: &Result<Option<Rto>, String>) -> String {
    match rto {
        Ok(Some(r)) => format!(
            "{} (restore of {}, {} + {} of WAL; {})",
            human_seconds(r.seconds),
            r.backup_id,
            human_bytes(r.backup_bytes),
            human_bytes(r.wal_bytes),
            r.basis
        ),
        Ok(None) => "unknown (no DONE backup)".into(),
        Err(e) => format!("unknown ({e})"),
    }
}

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
