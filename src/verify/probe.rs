//! One look at a server and its part of the repository: what PostgreSQL reports over
//! SQL and over a replication connection, and what pgbk holds locally. Each part that
//! fails is kept as its error so that `status` and `check` can still report the rest.

use crate::backup::BackupInfo;
use crate::catalog::{Catalog, WalKind, WalRecord};
use crate::config::ServerConfig;
use crate::lock::JobLock;
use crate::pg::{ConnInfo, ConnectOptions, Connection, Row};
use crate::repo::ServerRepo;
use crate::wal::continuity::find_gaps;
use crate::wal::history::{parse_history, HistoryEntry};
use crate::wal::{Lsn, SystemId, TimeLineId, WalFileName, WalSegment};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What the ordinary SQL connection reports.
#[derive(Debug, Clone, Serialize)]
pub struct SqlState {
    /// `server_version`.
    pub version: String,
    /// `server_version_num`.
    pub version_num: u32,
    /// The connecting role is a superuser.
    pub superuser: bool,
    /// The connecting role has REPLICATION.
    pub replication_role: bool,
    /// `wal_level`.
    pub wal_level: String,
    /// The server is a standby.
    pub in_recovery: bool,
    /// Current WAL position (on a standby: last received or replayed).
    pub current_lsn: Lsn,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// `synchronous_standby_names`.
    pub synchronous_standby_names: String,
    /// `summarize_wal` (`None` before PostgreSQL 17).
    pub summarize_wal: Option<bool>,
    /// The configured slot, if it exists.
    pub slot: Option<SlotState>,
    /// receive-wal's row in `pg_stat_replication`, if connected.
    pub receiver: Option<ReceiverStat>,
    /// `data_directory`, when the role may read it.
    pub data_directory: Option<String>,
    /// archive_mode, archive_command and `pg_stat_archiver`, when readable.
    pub archiving: Option<super::ssh_probe::ArchivingState>,
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotState {
    /// Someone streams from it.
    pub active: bool,
    /// Oldest WAL it retains.
    pub restart_lsn: Option<Lsn>,
    /// `wal_status` (reserved, extended, unreserved, lost).
    pub wal_status: Option<String>,
}

/// receive-wal as the server sees it (`pg_stat_replication`).
#[derive(Debug, Clone, Serialize)]
pub struct ReceiverStat {
    /// Walsender pid.
    pub pid: i32,
    /// Last position receive-wal reported written.
    pub write_lsn: Option<Lsn>,
    /// Last position receive-wal reported safely on disk.
    pub flush_lsn: Option<Lsn>,
    /// `flush_lag` in seconds.
    pub flush_lag_seconds: Option<f64>,
    /// `sync_state`: async, potential, sync, quorum.
    pub sync_state: String,
}

/// What the replication connection reports.
#[derive(Debug, Clone, Serialize)]
pub struct StreamingState {
    /// System identifier.
    pub system_id: SystemId,
    /// Current timeline.
    pub timeline: TimeLineId,
    /// Current flush position.
    pub xlogpos: Lsn,
}

/// What pgbk holds for the server.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LocalState {
    /// System identifier recorded when WAL was first archived.
    pub catalog_system_id: Option<SystemId>,
    /// Segment size recorded with it.
    pub wal_segment_size: Option<u64>,
    /// pid of the running receive-wal.
    pub receive_wal_pid: Option<i32>,
    /// Newest archived segment.
    pub last_segment: Option<WalRecord>,
    /// Archived WAL files (segments and partials).
    pub archived_files: u64,
    /// Their uncompressed bytes.
    pub archived_bytes: u64,
    /// Their bytes on disk.
    pub stored_bytes: u64,
    /// Timelines with a history file.
    pub history_files: u64,
    /// receive-wal's in-progress segment.
    pub partial: Option<PartialState>,
    /// Segments missing between the oldest and newest archived one.
    pub gaps: Vec<String>,
    /// Files quarantined in `errors/`.
    pub error_files: u64,
    /// Backups in the repository that the catalog does not list (it is missing or
    /// behind: `rebuild-catalog` brings it back).
    pub backups_not_in_catalog: Vec<String>,
    /// Archived WAL files the catalog does not list (older than a minute).
    pub wal_not_in_catalog: Vec<String>,
    /// Archived WAL files get-wal found damaged (`errors/<name>.damaged` notes).
    pub damaged_wal: Vec<String>,
    /// Why the repository folders cannot be written (or created); `None` when they can.
    pub not_writable: Option<String>,
    /// Why the repository (home, the server's folder, the catalog) could not be read;
    /// every figure that comes from it is then unknown, not zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// The newest position safely on the backup host.
    pub safe_lsn: Option<Lsn>,
    /// When WAL last arrived.
    pub last_receive_time: Option<DateTime<Utc>>,
    /// The server's backups as the catalog lists them, oldest first.
    pub backups: Vec<BackupInfo>,
    /// Space left in `home`, when it can be measured.
    pub disk: Option<DiskSpace>,
    /// WAL files waiting in `incoming/` for archive-wal.
    pub incoming_files: u64,
    /// When the oldest of them was last modified.
    pub incoming_oldest: Option<DateTime<Utc>>,
    /// A passive server's replication state (`None` for an active server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<super::peer_probe::PeerStatus>,
    /// The newest restore drill (`drill`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<LastDrill>,
}

/// The newest restore drill of a server, as `status` and `check` show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LastDrill {
    /// The drill's id (`drill-report`).
    pub id: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The backup it restored.
    pub backup_id: Option<String>,
    /// Whether every check passed.
    pub ok: bool,
    /// The measured RTO (seconds).
    pub rto_secs: Option<f64>,
    /// The achieved RPO (seconds).
    pub rpo_secs: Option<f64>,
    /// Its first failure.
    pub error: Option<String>,
}

impl LastDrill {
    /// The newest drill of `server` in the catalog at `home` (none without a catalog).
    pub fn read(home: &Path, server: &str) -> Result<Option<LastDrill>, String> {
        let Some(cat) = crate::catalog::Catalog::open_read_only(home).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        Ok(cat
            .last_drill(server)
            .map_err(|e| e.to_string())?
            .as_ref()
            .map(LastDrill::from_row))
    }

    /// One line: result, age, measured RTO and achieved RPO.
    pub fn text(&self, now: DateTime<Utc>) -> String {
        let age = (now - self.started_at).num_seconds().max(0) as f64;
        let secs = |v: Option<f64>| {
            v.map(crate::units::human_seconds)
                .unwrap_or_else(|| "unknown".into())
        };
        format!(
            "drill {} {} {} ago (backup {}): measured RTO {}, achieved RPO {}{}",
            self.id,
            if self.ok { "passed" } else { "FAILED" },
            crate::units::human_seconds(age),
            self.backup_id.as_deref().unwrap_or("-"),
            secs(self.rto_secs),
            secs(self.rpo_secs),
            self.error
                .as_deref()
                .map(|e| format!("; {}", e.lines().next().unwrap_or_default()))
                .unwrap_or_default()
        )
    }

    /// As JSON, with its age in seconds at `now`.
    pub fn json(&self, now: DateTime<Utc>) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "age_secs".into(),
                ((now - self.started_at).num_seconds().max(0)).into(),
            );
        }
        v
    }

    /// From the catalog's row (the error is read from the stored report).
    pub fn from_row(row: &crate::catalog::DrillRow) -> LastDrill {
        let error = serde_json::from_str::<serde_json::Value>(&row.report)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string));
        LastDrill {
            id: row.id,
            started_at: row.started_at,
            backup_id: row.backup_id.clone(),
            ok: row.ok,
            rto_secs: row.rto_secs,
            rpo_secs: row.rpo_secs,
            error,
        }
    }
}

/// The filesystem holding `home`, as `statvfs` sees it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DiskSpace {
    /// Bytes of the filesystem.
    pub total_bytes: u64,
    /// Bytes an unprivileged process may still write.
    pub available_bytes: u64,
}

impl DiskSpace {
    /// Measures the filesystem holding `path` (or its nearest existing parent).
    pub fn of(path: &Path) -> Option<DiskSpace> {
        use std::os::unix::ffi::OsStrExt;
        let mut dir = path.to_path_buf();
        while !dir.exists() {
            dir = dir.parent()?.to_path_buf();
        }
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: `c` is a valid NUL-terminated path and `st` a zeroed out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        let frsize = st.f_frsize as u64;
        Some(DiskSpace {
            total_bytes: st.f_blocks as u64 * frsize,
            available_bytes: st.f_bavail as u64 * frsize,
        })
    }
}

/// The `.partial` segment receive-wal is writing.
#[derive(Debug, Clone, Serialize)]
pub struct PartialState {
    /// Its name (without `.partial`).
    pub segment: String,
    /// The position just past its last byte.
    pub end_lsn: Lsn,
    /// When it was last written.
    pub modified: DateTime<Utc>,
    /// True when the repository is a bucket: the partial segment is on this host
    /// only until it is complete and uploaded.
    pub local_only: bool,
}

/// Everything one probe learned.
#[derive(Debug, Clone, Serialize)]
pub struct ServerState {
    /// Server name.
    pub server: String,
    /// The SQL side, or why it failed.
    #[serde(serialize_with = "ser_result")]
    pub sql: Result<SqlState, String>,
    /// The replication side, or why it failed.
    #[serde(serialize_with = "ser_result")]
    pub streaming: Result<StreamingState, String>,
    /// The repository side.
    pub local: LocalState,
    /// When the probe ran (age checks measure against it).
    pub now: DateTime<Utc>,
    /// The SSH side (`None` without `ssh_command`).
    pub ssh: Option<super::ssh_probe::SshState>,
    /// An S3 repository's reachability (`None` for the local one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryState>,
    /// Where backups are taken when WAL comes from elsewhere (`conninfo` and
    /// `primary_conninfo` beside `wal_streaming_conninfo`/`wal_conninfo`); `None`
    /// when one server does both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_source: Option<BackupSource>,
}

/// The servers a backup from a standby involves, as `check` sees them.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSource {
    /// `conninfo`'s server: (in recovery, system identifier), or why not.
    #[serde(serialize_with = "ser_result")]
    pub conninfo: Result<(bool, String), String>,
    /// `primary_conninfo`'s server, when configured.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_result"
    )]
    pub primary: Option<Result<(bool, String), String>>,
}

fn ser_opt_result<T: Serialize, S: serde::Serializer>(
    r: &Option<Result<T, String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => ser_result(r, s),
        None => s.serialize_none(),
    }
}

/// A probe's connection to the server the option `option` (its text `text`)
/// names; a connection string that does not parse is an error naming the option.
async fn connect_probe(
    option: &str,
    text: &str,
    replication: bool,
    application_name: &str,
) -> Result<Connection, String> {
    let info = ConnInfo::parse(text).map_err(|e| format!("{option}: {e}"))?;
    let opts = ConnectOptions {
        replication,
        application_name: Some(application_name.into()),
        connect_timeout: Some(Duration::from_secs(10)),
    };
    Connection::connect(&info, &opts)
        .await
        .map_err(|e| e.to_string())
}

/// (in recovery, system identifier) of the server `text` names.
async fn identity(option: &str, text: &str) -> Result<(bool, String), String> {
    let mut c = connect_probe(option, text, false, "pgbk").await?;
    let rows = c
        .simple_query("SELECT pg_is_in_recovery(), system_identifier FROM pg_control_system()")
        .await
        .map_err(|e| format!("{option}: {e}"))?;
    c.close().await;
    let row = rows.first();
    Ok((
        row.and_then(|r| r.get_idx(0)) == Some("t"),
        row.and_then(|r| r.get_idx(1))
            .unwrap_or_default()
            .to_string(),
    ))
}

/// The backup side of a server whose WAL comes from elsewhere.
async fn backup_source(server: &ServerConfig) -> Option<BackupSource> {
    if server.wal_sql().1 == server.conninfo && server.primary_conninfo.is_none() {
        return None;
    }
    let conninfo = identity("conninfo", &server.conninfo).await;
    let primary = match &server.primary_conninfo {
        Some(p) => Some(identity("primary_conninfo", p).await),
        None => None,
    };
    Some(BackupSource { conninfo, primary })
}

/// Whether an object-storage repository can be used right now.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryState {
    /// `s3://bucket/prefix at endpoint`.
    pub location: String,
    /// Why it cannot be used (unreachable, credentials refused, no bucket, the
    /// write test failed); `None` when it can.
    pub error: Option<String>,
}

/// How long `check` retries the object store before calling it unreachable.
const REPOSITORY_CHECK_RETRY: Duration = Duration::from_secs(10);

/// The bucket exists, the credentials may use it, and a small object can be
/// written, read back and deleted.
fn repository_state(settings: &crate::repo::store::s3_settings::S3Settings) -> RepositoryState {
    use crate::repo::store::Store;
    let location = format!("{} at {}", settings.url(), settings.endpoint_url());
    let error = match crate::repo::store::s3::S3Store::new(settings.clone()) {
        Err(e) => Some(e),
        Ok(store) => {
            let store = store.with_retry_bound(REPOSITORY_CHECK_RETRY);
            store
                .check_bucket()
                .and_then(|()| store.check_access())
                .err()
                .map(|e| e.to_string())
        }
    };
    RepositoryState { location, error }
}

fn ser_result<T: Serialize, S: serde::Serializer>(
    r: &Result<T, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match r {
        Ok(v) => v.serialize(s),
        Err(e) => serde_json::json!({ "error": e }).serialize(s),
    }
}

/// The recovery point objective right now: how much WAL a disaster would lose,
/// measured against what this server's own repository holds (archived segments and
/// its receive-wal's flushed partial), never another client's flush position.
/// Unknown figures are `null` with the reason, never a made-up number.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rpo {
    /// Bytes of WAL the server has that the backup host does not.
    pub bytes: Option<u64>,
    /// Age in seconds of the newest WAL safely on the backup host when some is
    /// missing (0 when none is).
    pub seconds: Option<f64>,
    /// Why the figures are unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

impl Rpo {
    /// An RPO that cannot be measured, with the reason.
    pub fn unknown(why: impl Into<String>) -> Rpo {
        Rpo {
            bytes: None,
            seconds: None,
            unknown: Some(why.into()),
        }
    }

    /// One line for people: `1.2 MiB (3s)`, or `unknown (why)`.
    pub fn text(&self) -> String {
        match (self.bytes, self.seconds) {
            (Some(b), Some(s)) => format!(
                "{} ({})",
                crate::units::human_bytes(b),
                crate::units::human_seconds(s)
            ),
            (Some(b), None) => format!(
                "{} (age unknown: {})",
                crate::units::human_bytes(b),
                self.unknown.as_deref().unwrap_or("no WAL stored yet")
            ),
            _ => format!(
                "unknown ({})",
                self.unknown.as_deref().unwrap_or("not measured")
            ),
        }
    }
}

impl ServerState {
    /// The live RPO.
    pub fn rpo(&self) -> Rpo {
        let sql = match self.sql.as_ref() {
            Ok(sql) => sql,
            Err(e) => return Rpo::unknown(format!("server unreachable: {e}")),
        };
        let current = match &self.streaming {
            Ok(st) if !sql.in_recovery => sql.current_lsn.max(st.xlogpos),
            _ => sql.current_lsn,
        };
        let Some(safe) = self.local.safe_lsn else {
            return Rpo::unknown("this server's repository holds no WAL yet");
        };
        let bytes = current.0.saturating_sub(safe.0);
        if bytes == 0 {
            return Rpo {
                bytes: Some(0),
                seconds: Some(0.0),
                unknown: None,
            };
        }
        match self.local.last_receive_time {
            Some(t) => Rpo {
                bytes: Some(bytes),
                seconds: Some((Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0),
                unknown: None,
            },
            None => Rpo {
                bytes: Some(bytes),
                seconds: None,
                unknown: Some("no arrival time of the stored WAL".into()),
            },
        }
    }
}

fn first(rows: &[Row], col: &str) -> Option<String> {
    rows.first().and_then(|r| r.get(col)).map(str::to_string)
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn sql_state(server: &ServerConfig) -> Result<SqlState, String> {
    let (option, text) = server.wal_sql();
    let mut c = connect_probe(option, text, false, "pgbk").await?;
    let rows = c
        .simple_query(
            "SELECT current_setting('server_version') AS version,
                    current_setting('server_version_num') AS version_num,
                    r.rolsuper AS superuser, r.rolreplication AS replication,
                    current_setting('wal_level') AS wal_level,
                    pg_is_in_recovery() AS in_recovery,
                    CASE WHEN pg_is_in_recovery()
                         THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                         ELSE pg_current_wal_lsn() END AS current_lsn,
                    (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size') AS seg_size,
                    current_setting('synchronous_standby_names') AS sync_names,
                    current_setting('summarize_wal', true) AS summarize_wal
               FROM pg_roles r WHERE r.rolname = current_user",
        )
        .await
        .map_err(|e| e.to_string())?;
    let get = |k: &str| first(&rows, k).unwrap_or_default();
    let mut st = SqlState {
        version: get("version"),
        version_num: get("version_num").parse().unwrap_or(0),
        superuser: get("superuser") == "t",
        replication_role: get("replication") == "t",
        wal_level: get("wal_level"),
        in_recovery: get("in_recovery") == "t",
        current_lsn: get("current_lsn").parse().unwrap_or_default(),
        wal_segment_size: get("seg_size").parse().unwrap_or(16 << 20),
        synchronous_standby_names: get("sync_names"),
        summarize_wal: match get("summarize_wal").as_str() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        },
        slot: None,
        receiver: None,
        data_directory: None,
        archiving: None,
    };
    if let Some(slot) = &server.slot_name {
        let rows = c
            .simple_query(&format!(
                "SELECT active, restart_lsn, wal_status FROM pg_replication_slots WHERE slot_name = {}",
                literal(slot)
            ))
            .await
            .map_err(|e| e.to_string())?;
        st.slot = rows.first().map(|r| SlotState {
            active: r.get("active") == Some("t"),
            restart_lsn: r.get("restart_lsn").and_then(|l| l.parse().ok()),
            wal_status: r.get("wal_status").map(str::to_string),
        });
    }
    let rows = c
        .simple_query(&format!(
            "SELECT pid, write_lsn, flush_lsn, extract(epoch FROM flush_lag) AS flush_lag, sync_state
               FROM pg_stat_replication WHERE application_name = {} ORDER BY backend_start DESC LIMIT 1",
            literal(&server.streaming_archiver_name)
        ))
        .await
        .map_err(|e| e.to_string())?;
    st.receiver = rows.first().map(|r| ReceiverStat {
        pid: r.get("pid").and_then(|p| p.parse().ok()).unwrap_or(0),
        write_lsn: r.get("write_lsn").and_then(|l| l.parse().ok()),
        flush_lsn: r.get("flush_lsn").and_then(|l| l.parse().ok()),
        flush_lag_seconds: r.get("flush_lag").and_then(|l| l.parse().ok()),
        sync_state: r.get("sync_state").unwrap_or("").to_string(),
    });
    // Both need privileges a monitoring role may lack: an error leaves them unknown.
    if let Ok(rows) = c.simple_query("SHOW data_directory").await {
        st.data_directory = rows.first().and_then(|r| r.get_idx(0)).map(str::to_string);
    }
    if let Ok(rows) = c.simple_query(super::ssh_probe::ARCHIVING_QUERY).await {
        st.archiving = rows
            .first()
            .map(|r| super::ssh_probe::archiving_from_row(|k| r.get(k).map(str::to_string)));
    }
    c.close().await;
    Ok(st)
}

async fn streaming_state(server: &ServerConfig) -> Result<StreamingState, String> {
    let (option, text) = server.wal_streaming();
    let mut c = connect_probe(option, text, true, "pgbk_check").await?;
    let id = c.identify_system().await.map_err(|e| e.to_string())?;
    c.close().await;
    Ok(StreamingState {
        system_id: id.system_id,
        timeline: id.timeline,
        xlogpos: id.xlogpos,
    })
}

fn writable(repo: &ServerRepo, home: &Path) -> Result<(), String> {
    let mut dir = repo.root().to_path_buf();
    if !dir.exists() {
        dir = home.to_path_buf();
        while !dir.exists() {
            match dir.parent() {
                Some(p) => dir = p.to_path_buf(),
                None => return Err(format!("{} does not exist", home.display())),
            }
        }
    }
    let probe = dir.join(format!(".pgbk-write-test.{}", std::process::id()));
    std::fs::write(&probe, b"x").map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Reads the history files of the archive, newest timeline's first.
pub fn archived_history(repo: &ServerRepo, files: &[WalRecord]) -> (TimeLineId, Vec<HistoryEntry>) {
    let newest = files
        .iter()
        .map(|f| f.timeline)
        .max()
        .unwrap_or(TimeLineId(1));
    let content = std::fs::read_to_string(repo.history_path(newest)).unwrap_or_default();
    (newest, parse_history(&content).unwrap_or_default())
}

/// Fails, with one line a DBA can act on, when `home` or the server's folder exists
/// but cannot be listed (pgbk run as a user that does not own the repository).
fn readable(repo: &ServerRepo, home: &Path) -> Result<(), String> {
    for (dir, what) in [(home, "HOME"), (repo.root(), "the server's folder")] {
        match std::fs::read_dir(dir) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(format!(
                    "permission denied on {what} {}: run pgbk as the user that owns it",
                    dir.display()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    Ok(())
}

fn local_state(server: &ServerConfig, home: &Path) -> Result<LocalState, String> {
    let repo = ServerRepo::new(home, &server.name);
    readable(&repo, home)?;
    let mut st = LocalState {
        not_writable: writable(&repo, home).err(),
        disk: DiskSpace::of(home),
        receive_wal_pid: JobLock::holder(&crate::lock::receive_wal_lock(&repo))
            .ok()
            .flatten(),
        ..Default::default()
    };
    incoming_state(&repo, &mut st);
    let cat = Catalog::open_read_only(home).map_err(|e| e.to_string())?;
    st.backups_not_in_catalog =
        crate::maintenance::rebuild::backups_missing_from_catalog(&repo, cat.as_ref())
            .map_err(|e| e.to_string())?;
    let Some(cat) = cat else {
        st.wal_not_in_catalog =
            crate::wal::stored::wal_missing_from_catalog(&repo, &[], Duration::ZERO)
                .map_err(|e| e.to_string())?;
        return Ok(st);
    };
    if server.primary_ssh_command.is_some() {
        st.peer = Some(super::peer_probe::peer_status(server, &cat, Utc::now()));
    }
    if let Some((id, seg)) = cat
        .server_identity(&server.name)
        .map_err(|e| e.to_string())?
    {
        st.catalog_system_id = Some(id);
        st.wal_segment_size = Some(seg);
    }
    let seg_size = st.wal_segment_size.unwrap_or(16 << 20);
    let files = cat.wal_files(&server.name).map_err(|e| e.to_string())?;
    st.wal_not_in_catalog = crate::wal::stored::wal_missing_from_catalog(
        &repo,
        &files,
        crate::wal::stored::WAL_ROW_GRACE,
    )
    .map_err(|e| e.to_string())?;
    let mut complete = Vec::new();
    for f in &files {
        match f.kind {
            WalKind::History => st.history_files += 1,
            kind => {
                st.archived_files += 1;
                st.archived_bytes += f.size;
                st.stored_bytes += f.stored_size;
                if kind == WalKind::Segment {
                    if let Some(segno) = f.segno {
                        complete.push((f.timeline, segno));
                    }
                }
            }
        }
    }
    st.last_segment = cat.last_segment(&server.name).map_err(|e| e.to_string())?;
    st.backups = crate::backup::lifecycle::current(&repo, &cat).map_err(|e| e.to_string())?;
    st.last_drill = cat
        .last_drill(&server.name)
        .map_err(|e| e.to_string())?
        .as_ref()
        .map(LastDrill::from_row);
    let (target, history) = archived_history(&repo, &files);
    st.gaps = find_gaps(&complete, &history, target, seg_size)
        .iter()
        .map(|s| s.name())
        .collect();
    if let Some(last) = &st.last_segment {
        if let Some(segno) = last.segno {
            st.safe_lsn = Some(
                WalSegment {
                    tli: last.timeline,
                    segno,
                    seg_size,
                }
                .end_lsn(),
            );
            st.last_receive_time = Some(last.archived_at);
        }
    }
    if let Ok(entries) = std::fs::read_dir(repo.streaming_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(WalFileName::Partial(seg)) = WalFileName::parse(&name, seg_size) {
                let Ok(meta) = e.metadata() else { continue };
                let end = Lsn(seg.start_lsn().0 + meta.len());
                let modified: DateTime<Utc> =
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH).into();
                if st.partial.as_ref().is_none_or(|p| end > p.end_lsn) {
                    st.partial = Some(PartialState {
                        segment: seg.name(),
                        end_lsn: end,
                        modified,
                        local_only: server.repository.is_some(),
                    });
                }
            }
        }
    }
    if let Some(p) = &st.partial {
        if st.safe_lsn.is_none_or(|s| p.end_lsn > s) {
            st.safe_lsn = Some(p.end_lsn);
            st.last_receive_time = Some(p.modified);
        }
    }
    for e in std::fs::read_dir(repo.errors_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(wal) = name.strip_suffix(".damaged") {
            st.damaged_wal.push(wal.to_string());
        } else if !name.contains(".reason") {
            st.error_files += 1;
        }
    }
    st.damaged_wal.sort();
    Ok(st)
}

/// Counts the WAL files waiting in `incoming/` (not dot-files: those are still being
/// written) and the oldest one's modification time.
fn incoming_state(repo: &ServerRepo, st: &mut LocalState) {
    let seg_size = crate::wal::put::MIN_SEG_SIZE;
    let Ok(entries) = std::fs::read_dir(repo.incoming_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || WalFileName::parse(&name, seg_size).is_none() {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        let modified: DateTime<Utc> = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH).into();
        st.incoming_files += 1;
        if st.incoming_oldest.is_none_or(|o| modified < o) {
            st.incoming_oldest = Some(modified);
        }
    }
}

/// Probes a server: SQL, replication and repository, each independently, and with
/// `ssh_command` the PostgreSQL host over SSH (one session).
pub async fn probe(server: &ServerConfig, home: &Path) -> ServerState {
    let mut st = probe_without_ssh(server, home).await;
    if server.primary_ssh_command.is_none() {
        st.backup_source = backup_source(server).await;
    }
    if let Some(r) = &server.repository {
        let r = r.clone();
        st.repository = Some(
            match tokio::task::spawn_blocking(move || repository_state(&r)).await {
                Ok(state) => state,
                Err(e) => RepositoryState {
                    location: String::new(),
                    error: Some(format!("repository probe: {e}")),
                },
            },
        );
    }
    if let Some(cmd) = &server.ssh_command {
        let cmd = cmd.clone();
        let dir = st.sql.as_ref().ok().and_then(|s| s.data_directory.clone());
        let probe = move || super::ssh_probe::probe_ssh(&cmd, dir.as_deref());
        st.ssh = Some(match tokio::task::spawn_blocking(probe).await {
            Ok(ssh) => ssh,
            Err(e) => super::ssh_probe::SshState::failed(format!("ssh probe: {e}")),
        });
    }
    st
}

/// [`probe`] without the SSH side (`ssh` is `None`): what the live RPO needs, fast.
pub async fn probe_without_ssh(server: &ServerConfig, home: &Path) -> ServerState {
    // A passive server has no PostgreSQL to reach: replicate copies from its primary.
    let (sql, streaming) = if server.primary_ssh_command.is_some() {
        let why = || "passive server: no PostgreSQL connection (see replication)".to_string();
        (Err(why()), Err(why()))
    } else {
        tokio::join!(sql_state(server), streaming_state(server))
    };
    let local = local_state(server, home).unwrap_or_else(|e| LocalState {
        unreadable: Some(e),
        disk: DiskSpace::of(home),
        ..Default::default()
    });
    ServerState {
        server: server.name.clone(),
        sql,
        streaming,
        local,
        now: Utc::now(),
        ssh: None,
        repository: None,
        backup_source: None,
    }
}

/// How long [`live_rpo`] waits for a server before giving up on it.
pub const LIVE_RPO_TIMEOUT: Duration = Duration::from_secs(5);

/// The live RPO of a server, unknown when it cannot be reached within
/// [`LIVE_RPO_TIMEOUT`] (listings must stay fast when a server is down).
pub async fn live_rpo(server: &ServerConfig, home: &Path) -> Rpo {
    match tokio::time::timeout(LIVE_RPO_TIMEOUT, probe_without_ssh(server, home)).await {
        Ok(st) => st.rpo(),
        Err(_) => Rpo::unknown(format!(
            "server unreachable within {} s",
            LIVE_RPO_TIMEOUT.as_secs()
        )),
    }
}
