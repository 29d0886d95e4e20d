//! The SSH side of `check`: what one SSH session to the PostgreSQL host shows (the
//! connection with its host key, the data directory, rsync) and how WAL arrives
//! through `archive_command` (its setting, `pg_stat_archiver`, files waiting in
//! `incoming/`). Probing is cheap: one session, one exec of a small shell script.

use super::probe::ServerState;
use super::server_check::CheckItem;
use crate::config::ServerConfig;
use crate::ssh::{shell_quote, SshSession, SshTarget};
use crate::units::human_seconds;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How long the probe waits for the SSH connection without `-o ConnectTimeout`.
pub const PROBE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Files in `incoming/` older than this mean archive-wal is not running.
pub const INCOMING_MAX_AGE_SECONDS: i64 = 300;

/// One observed fact: whether it is good and what was seen (or the error).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Fact {
    /// Good.
    pub ok: bool,
    /// What was seen, or why it is bad.
    pub detail: String,
}

impl Fact {
    fn ok(detail: impl Into<String>) -> Fact {
        Fact {
            ok: true,
            detail: detail.into(),
        }
    }
    fn bad(detail: impl Into<String>) -> Fact {
        Fact {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What the SSH probe of the PostgreSQL host found.
#[derive(Debug, Clone, Serialize)]
pub struct SshState {
    /// `user@host:port`, or the ssh_command when it cannot be parsed.
    pub target: String,
    /// Connection, host key and authentication.
    pub connection: Fact,
    /// The data directory is a readable directory (`None`: not probed).
    pub pgdata: Option<Fact>,
    /// rsync on the PostgreSQL host (`None`: not probed).
    pub remote_rsync: Option<Fact>,
    /// rsync on the backup host.
    pub local_rsync: Fact,
}

/// What PostgreSQL reports about WAL archiving (`archive_mode`, `archive_command`,
/// `pg_stat_archiver`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct ArchivingState {
    /// `archive_mode`.
    pub archive_mode: String,
    /// `archive_command` as `SHOW` prints it (`(disabled)` when archive_mode is off).
    pub archive_command: String,
    /// `archived_count`.
    pub archived_count: u64,
    /// `last_archived_wal`.
    pub last_archived_wal: Option<String>,
    /// `last_archived_time`.
    pub last_archived_time: Option<DateTime<Utc>>,
    /// `failed_count`.
    pub failed_count: u64,
    /// `last_failed_wal`.
    pub last_failed_wal: Option<String>,
    /// `last_failed_time`.
    pub last_failed_time: Option<DateTime<Utc>>,
}

/// The query that fills [`ArchivingState`] (timestamps as epoch seconds, so the
/// session's TimeZone does not matter).
pub const ARCHIVING_QUERY: &str = "SELECT current_setting('archive_mode') AS archive_mode,
        current_setting('archive_command') AS archive_command,
        archived_count, last_archived_wal,
        extract(epoch FROM last_archived_time) AS last_archived_time,
        failed_count, last_failed_wal,
        extract(epoch FROM last_failed_time) AS last_failed_time
   FROM pg_stat_archiver";

/// Builds an [`ArchivingState`] from one row of [`ARCHIVING_QUERY`].
pub fn archiving_from_row(get: impl Fn(&str) -> Option<String>) -> ArchivingState {
    let time = |k: &str| {
        get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .and_then(|s| DateTime::from_timestamp_millis((s * 1000.0) as i64))
    };
    ArchivingState {
        archive_mode: get("archive_mode").unwrap_or_default(),
        archive_command: get("archive_command").unwrap_or_default(),
        archived_count: get("archived_count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        last_archived_wal: get("last_archived_wal").filter(|s| !s.is_empty()),
        last_archived_time: time("last_archived_time"),
        failed_count: get("failed_count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        last_failed_wal: get("last_failed_wal").filter(|s| !s.is_empty()),
        last_failed_time: time("last_failed_time"),
    }
}

/// Finds an executable on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl SshState {
    /// A probe that could not run at all.
    pub fn failed(why: String) -> SshState {
        SshState {
            target: String::new(),
            connection: Fact::bad(why),
            pgdata: None,
            remote_rsync: None,
            local_rsync: Fact::bad("not checked"),
        }
    }
}

/// The script run on the PostgreSQL host: one line per fact.
fn remote_script(data_directory: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(d) = data_directory {
        s.push_str(&format!(
            "d={}; if [ ! -d \"$d\" ]; then echo pgdata:missing; \
             elif [ -r \"$d\" ] && [ -x \"$d\" ]; then echo pgdata:ok; \
             else echo pgdata:unreadable; fi; ",
            shell_quote(d)
        ));
    }
    s.push_str("r=$(command -v rsync 2>/dev/null); echo \"rsync:$r\"");
    s
}

/// Connects with the server's `ssh_command` and runs one small script: is
/// `data_directory` (when known) a readable directory, and where is rsync.
pub fn probe_ssh(ssh_command: &str, data_directory: Option<&str>) -> SshState {
    let local_rsync = match which("rsync") {
        Some(p) => Fact::ok(p.display().to_string()),
        None => Fact::bad("rsync not found on the backup host's PATH"),
    };
    let mut st = SshState {
        target: ssh_command.to_string(),
        connection: Fact::bad(String::new()),
        pgdata: None,
        remote_rsync: None,
        local_rsync,
    };
    let mut target = match SshTarget::parse(ssh_command) {
        Ok(t) => t,
        Err(e) => {
            st.connection = Fact::bad(format!("ssh_command: {e}"));
            return st;
        }
    };
    st.target = target.display();
    // `check` must answer quickly about a host that does not: 10 s unless the
    // ssh_command sets ConnectTimeout itself.
    target.connect_timeout.get_or_insert(PROBE_CONNECT_TIMEOUT);
    let session = match SshSession::connect(&target) {
        Ok(s) => s,
        Err(e) => {
            st.connection = Fact::bad(e.to_string());
            return st;
        }
    };
    st.connection = Fact::ok(st.target.clone());
    let out = match session.exec(&remote_script(data_directory)) {
        Ok(o) if o.success() => o,
        Ok(o) => {
            st.connection = Fact::bad(format!(
                "ssh {}: the probe script exited with {}: {}",
                st.target,
                o.status,
                o.stderr_line()
            ));
            return st;
        }
        Err(e) => {
            st.connection = Fact::bad(e.to_string());
            return st;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pgdata:") {
            let d = data_directory.unwrap_or_default();
            st.pgdata = Some(match v {
                "ok" => Fact::ok(d),
                "missing" => Fact::bad(format!("{d} is not a directory on {}", st.target)),
                _ => Fact::bad(format!("{d} is not readable by {}", st.target)),
            });
        } else if let Some(v) = line.strip_prefix("rsync:") {
            st.remote_rsync = Some(if v.trim().is_empty() {
                Fact::bad(format!("rsync not found on {}", st.target))
            } else {
                Fact::ok(v.trim())
            });
        }
    }
    st
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_script_quotes_the_data_directory() {
        let s = remote_script(Some("/srv/pg data/it's"));
        assert!(s.starts_with(r"d='/srv/pg data/it'\''s';"), "{s}");
        assert!(!remote_script(None).contains("pgdata"));
    }

    #[test]
    fn archiving_rows_parse_epoch_times_and_empty_values() {
        let row = |k: &str| -> Option<String> {
            match k {
                "archive_mode" => Some("on".into()),
                "archive_command" => Some("ssh x pgbk put-wal pg1 --name %f < %p".into()),
                "archived_count" => Some("12".into()),
                "last_archived_wal" => Some("000000010000000000000003".into()),
                "last_archived_time" => Some("1764039000.5".into()),
                "failed_count" => Some("0".into()),
                _ => None,
            }
        };
        let a = archiving_from_row(row);
        assert_eq!(a.archived_count, 12);
        assert_eq!(
            a.last_archived_time.unwrap().timestamp_millis(),
            1_764_039_000_500
        );
        assert!(a.last_failed_time.is_none() && a.last_failed_wal.is_none());
    }
}
