//! The SSH side of `check`: judging what the SSH probe ([`super::ssh_probe`]) found
//! (the connection with its host key, the data directory, rsync) and how WAL arrives
//! through `archive_command` (its setting, `pg_stat_archiver`, files waiting in
//! `incoming/`).

use super::item::CheckItem;
use super::probe::ServerState;
use super::ssh_probe::Fact;
pub use super::ssh_probe::{
    archiving_from_row, probe_ssh, ArchivingState, SshState, ARCHIVING_QUERY, PROBE_CONNECT_TIMEOUT,
};
use crate::config::ServerConfig;
use crate::units::human_seconds;
use chrono::{DateTime, Utc};

/// Files in `incoming/` older than this mean archive-wal is not running.
pub const INCOMING_MAX_AGE_SECONDS: i64 = 300;

fn item(name: &str, ok: bool, hint: Option<String>) -> CheckItem {
    CheckItem::new(name, ok, hint)
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "never".into())
}

/// The SSH items (`ssh`, `PGDATA`, `rsync`) when `ssh_command` is set, and the
/// archiving items (`archive_command`, `continuous archiving`, `incoming WAL`) when
/// `archiver = on`.
pub fn ssh_items(server: &ServerConfig, st: &ServerState) -> Vec<CheckItem> {
    let mut out = Vec::new();
    if server.ssh_command.is_some() {
        match &st.ssh {
            None => out.push(item("ssh", false, Some("not probed".into()))),
            Some(ssh) if !ssh.connection.ok => {
                out.push(item("ssh", false, Some(ssh.connection.detail.clone())));
            }
            Some(ssh) => {
                out.push(item("ssh", true, None));
                let pgdata = ssh.pgdata.clone().unwrap_or_else(|| {
                    Fact::bad(
                        "data directory unknown: PostgreSQL did not answer SHOW data_directory",
                    )
                });
                out.push(item("PGDATA", pgdata.ok, Some(pgdata.detail)));
                let remote = ssh
                    .remote_rsync
                    .clone()
                    .unwrap_or_else(|| Fact::bad("rsync not checked on the PostgreSQL host"));
                let ok = remote.ok && ssh.local_rsync.ok;
                let hint = if ok {
                    format!("local {}, remote {}", ssh.local_rsync.detail, remote.detail)
                } else {
                    [&ssh.local_rsync, &remote]
                        .iter()
                        .filter(|f| !f.ok)
                        .map(|f| f.detail.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                out.push(item("rsync", ok, Some(hint)));
            }
        }
    }
    if server.archiver {
        out.extend(archiver_items(st));
    }
    out
}

fn archiver_items(st: &ServerState) -> Vec<CheckItem> {
    let mut out = Vec::new();
    match st.sql.as_ref().map(|s| s.archiving.as_ref()) {
        Ok(Some(a)) => {
            let mode_on = a.archive_mode == "on" || a.archive_mode == "always";
            let cmd = a.archive_command.trim();
            let set = !cmd.is_empty() && cmd != "(disabled)";
            out.push(item(
                "archive_command",
                mode_on && set,
                if !mode_on {
                    Some(format!(
                        "archive_mode is '{}', must be 'on' (needs a restart)",
                        a.archive_mode
                    ))
                } else if !set {
                    Some("archive_command is not set".into())
                } else {
                    None
                },
            ));
            let failing = a.last_failed_time.is_some()
                && a.last_archived_time
                    .is_none_or(|ok| Some(ok) < a.last_failed_time);
            let hint = if failing {
                format!(
                    "archiving is failing: last failed WAL {} at {}, {} failure(s); last success {} at {}",
                    a.last_failed_wal.as_deref().unwrap_or("?"),
                    when(a.last_failed_time),
                    a.failed_count,
                    a.last_archived_wal.as_deref().unwrap_or("none"),
                    when(a.last_archived_time)
                )
            } else {
                format!(
                    "{} archived, last {} at {}, {} failure(s)",
                    a.archived_count,
                    a.last_archived_wal.as_deref().unwrap_or("none"),
                    when(a.last_archived_time),
                    a.failed_count
                )
            };
            out.push(item("continuous archiving", !failing, Some(hint)));
        }
        Ok(None) => {
            let hint = Some("pg_stat_archiver could not be read".to_string());
            out.push(item("archive_command", false, hint.clone()));
            out.push(item("continuous archiving", false, hint));
        }
        Err(e) => {
            let hint = Some(format!("unknown, PostgreSQL did not answer: {e}"));
            out.push(item("archive_command", false, hint.clone()));
            out.push(item("continuous archiving", false, hint));
        }
    }
    let waiting = st.local.incoming_files;
    let age = st
        .local
        .incoming_oldest
        .map(|t| (st.now - t).num_seconds().max(0));
    let stale = age.is_some_and(|a| a > INCOMING_MAX_AGE_SECONDS);
    out.push(item(
        "incoming WAL",
        !stale,
        (waiting > 0).then(|| {
            format!(
                "{waiting} file(s) waiting in incoming/, oldest {}{}",
                human_seconds(age.unwrap_or(0) as f64),
                if stale {
                    "; run archive-wal (cron does)"
                } else {
                    ""
                }
            )
        }),
    ));
    out
}
