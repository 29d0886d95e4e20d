//! Restore drills: a backup restored into a scratch folder, started as a throwaway
//! PostgreSQL cut off from production, recovered to its target, checked, timed and
//! removed — so the RTO a server reports was measured on its own data, and the RPO
//! its backups and WAL achieve was seen, not assumed.
//!
//! Phases, each timed (their sum is the measured RTO, within the wall clock of the
//! drill itself):
//! 1. `restore`: the backup's files fetched, verified and decompressed, and the WAL
//!    recovery needs copied beside them ([`crate::restore::recover`] in copy mode:
//!    the drill's server never calls back into pgbk or the repository);
//! 2. `start`: PostgreSQL started until it accepts connections (recovery reached a
//!    consistent state);
//! 3. `replay`: until recovery reached its target (or the end of the archived WAL)
//!    and promoted;
//! 4. `checks`: `pg_amcheck` over every database when installed, the server's
//!    `drill_check_query`, and the newest commit recovered (the achieved RPO).
//!
//! The drill's server listens on a Unix socket in the drill's folder only, with
//! archiving off and no `primary_conninfo` (postgresql.auto.conf says so), so it
//! can neither reach production nor write into the repository.

pub mod cluster;

use crate::backup::BackupInfo;
use crate::catalog::{Catalog, CatalogError, DrillRow, Measurement, WalKind};
use crate::error::{IoError, IoResultExt};
use crate::pg::local::{chown_tree, free_port, postgres_user};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore::target::{RecoveryTarget, TargetAction};
use crate::restore::{self, RecoverRequest, WalSource};
use chrono::{DateTime, Utc};
use cluster::{DrillCluster, Host};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a drill's server may take to become consistent, and then to finish
/// replaying and promote.
pub const SERVER_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// Why a drill could not be run at all (a drill that ran and failed is a report).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The request cannot be honoured (no such backup, not enough room...).
    #[error("{0}")]
    Refused(String),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A local file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The server's `drill_check_query` and what it must return.
#[derive(Debug, Clone, Default)]
pub struct QueryCheck {
    /// The query (its first column of the first row is compared).
    pub sql: String,
    /// The database it runs in.
    pub database: String,
    /// The exact value expected, if any.
    pub expected: Option<String>,
    /// A lower bound for the numeric value, if any.
    pub minimum: Option<f64>,
}

/// One drill to run.
#[derive(Debug, Clone)]
pub struct DrillRequest {
    /// Server name.
    pub server: String,
    /// Backup id, name or `latest`.
    pub backup: String,
    /// Where recovery stops; `None`: all archived WAL.
    pub target: Option<RecoveryTarget>,
    /// Keep the folder and leave the server running (its port and folder reported).
    pub keep: bool,
    /// Under which folder the drill's scratch folder is made.
    pub workdir: PathBuf,
    /// `workdir` is the default (`<home>/drills`), not `drill_workdir`: when the
    /// `postgres` OS user cannot reach it (a private home, pgbk run as root), the
    /// system's temporary folder is used instead.
    pub workdir_is_default: bool,
    /// The PostgreSQL binaries to start (`None`: by the backup's major version).
    pub pg_bin: Option<String>,
    /// The query check, if configured.
    pub query: Option<QueryCheck>,
    /// `recovery_time_objective`.
    pub rto_objective: Option<Duration>,
    /// `recovery_point_objective`.
    pub rpo_objective: Option<Duration>,
    /// Decompression threads.
    pub jobs: usize,
    /// A drill host reached over SSH (`--host`, `drill_ssh_command`); `None`: this host.
    pub host: Option<crate::ssh::SshTarget>,
}

/// One timed phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Phase {
    /// `restore`, `start`, `replay` or `checks`.
    pub name: String,
    /// Seconds it took.
    pub seconds: f64,
    /// Bytes it handled (restored files and WAL; WAL replayed), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// One check, passed or failed, with its figure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// `restore`, `wal`, `start`, `promoted`, `amcheck`, `query`, `rpo`, `rto`.
    pub name: String,
    /// `pass`, `fail` or `skipped`.
    pub status: String,
    /// The figure or the reason.
    pub detail: String,
}

impl Check {
    fn new(name: &str, status: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            status: status.to_string(),
            detail: detail.into(),
        }
    }

    /// Whether it failed.
    pub fn failed(&self) -> bool {
        self.status == "fail"
    }
}

/// What a drill did and found; stored whole in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillReport {
    /// The drill's id in the catalog (0 before it is recorded).
    #[serde(default)]
    pub id: i64,
    /// Server name.
    pub server: String,
    /// The backup restored.
    pub backup_id: Option<String>,
    /// Where recovery was asked to stop (`None`: all archived WAL).
    pub target: Option<String>,
    /// When the drill started.
    pub started_at: DateTime<Utc>,
    /// Whether every check passed.
    pub ok: bool,
    /// The first failure, in one line.
    pub error: Option<String>,
    /// The timed phases, in order.
    pub phases: Vec<Phase>,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// The measured RTO: the sum of the phases (seconds).
    pub rto_secs: Option<f64>,
    /// The achieved RPO (seconds): the target time (or the drill's start, without
    /// one) minus the newest commit recovered.
    pub rpo_secs: Option<f64>,
    /// The newest commit recovered.
    pub last_commit: Option<DateTime<Utc>>,
    /// The drill's wall clock, from the restore's start to the checks' end.
    pub wall_secs: f64,
    /// Stopping the drill's server and removing its folder, after the checks (not
    /// part of the RTO).
    #[serde(default)]
    pub cleanup_secs: f64,
    /// The PostgreSQL binaries used.
    pub pg_bin: Option<String>,
    /// The drill's folder (removed afterwards unless kept).
    #[serde(default)]
    pub folder: PathBuf,
    /// Where the drill ran: `this host` or the drill host's `user@host:port`.
    #[serde(default)]
    pub host: String,
    /// With `--keep`: the folder and the port the server still runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<Kept>,
}

/// Where a kept drill's server runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Kept {
    /// The drill's folder (data directory in `data/`).
    pub folder: PathBuf,
    /// The port on the folder's Unix socket.
    pub port: u16,
    /// A `psql` connection string.
    pub conninfo: String,
}

impl DrillReport {
    /// Records a phase that began at `since`.
    fn phase(&mut self, name: &str, since: Instant, bytes: Option<u64>) {
        self.phases.push(Phase {
            name: name.to_string(),
            seconds: since.elapsed().as_secs_f64(),
            bytes,
        });
    }

    fn fail(&mut self, check: Check) {
        if self.error.is_none() {
            self.error = Some(format!("{}: {}", check.name, check.detail));
        }
        self.ok = false;
        self.checks.push(check);
    }
}

/// Runs one drill and records it in the catalog (and, from its phases, the restore
/// and replay rates the RTO estimate uses).
pub fn run_drill(
    repository: &Repository,
    catalog: &Catalog,
    req: &DrillRequest,
    progress: &dyn Progress,
) -> Result<DrillReport, DrillError> {
    let info = crate::backup::resolve(catalog, &req.server, &req.backup)
        .map_err(|e| DrillError::Refused(format!("server '{}': {e}", req.server)))?;
    if info.status != crate::backup::BackupStatus::Done {
        return Err(DrillError::Refused(format!(
            "server '{}': backup {} is {}, not DONE",
            req.server, info.backup_id, info.status
        )));
    }
    // Room for the files and the WAL after them, with a margin.
    let wal_after = wal_bytes_after(catalog, &info)?;
    let needed = (info.size_bytes + wal_after) / 10 * 11;
    let host = match &req.host {
        Some(target) => Host::Remote(crate::ssh::SshSession::connect(target).map_err(|e| {
            DrillError::Refused(format!("server '{}': drill host: {e}", req.server))
        })?),
        None => Host::Local {
            owner: postgres_user().map_err(|e| DrillError::Refused(e.to_string()))?,
        },
    };
    let owner = match &host {
        Host::Local { owner } => *owner,
        Host::Remote(_) => None,
    };
    let workdir = match owner {
        _ if req.host.is_some() => remote_workdir(&host, req)?,
        Some((uid, gid)) if !reachable(&req.workdir, uid, gid) => {
            if !req.workdir_is_default {
                return Err(DrillError::Refused(format!(
                    "server '{}': drill_workdir {} cannot be reached by the postgres OS user (a folder above it is private): choose one it can reach",
                    req.server,
                    req.workdir.display()
                )));
            }
            std::env::temp_dir().join("pgbk-drills")
        }
        _ => req.workdir.clone(),
    };
    let free = match &host {
        Host::Local { .. } => {
            make_workdir(&workdir, owner.is_some()).at(&workdir)?;
            crate::verify::probe::DiskSpace::of(&workdir)
                .map(|d| d.available_bytes)
                .unwrap_or(u64::MAX)
        }
        Host::Remote(_) => remote_free(&host, &workdir),
    };
    if free < needed {
        return Err(DrillError::Refused(format!(
            "server '{}': a drill of backup {} needs about {} MB in {} (drill_workdir), which has {} MB free",
            req.server,
            info.backup_id,
            needed / 1_000_000,
            workdir.display(),
            free / 1_000_000
        )));
    }
    let started_at = Utc::now();
    let mut report = DrillReport {
        id: 0,
        server: req.server.clone(),
        backup_id: Some(info.backup_id.clone()),
        target: req.target.as_ref().map(|t| t.to_string()),
        started_at,
        ok: true,
        error: None,
        phases: Vec::new(),
        checks: Vec::new(),
        rto_secs: None,
        rpo_secs: None,
        last_commit: None,
        wall_secs: 0.0,
        cleanup_secs: 0.0,
        pg_bin: None,
        folder: PathBuf::new(),
        host: String::new(),
        kept: None,
    };
    let folder = workdir.join(format!(
        "{}-{}-{}",
        req.server,
        started_at.format("%Y%m%dT%H%M%S"),
        std::process::id()
    ));
    report.folder = folder.clone();
    report.host = host.describe();
    let mut scratch = crate::pg::local::ScratchDir {
        path: folder.clone(),
        keep: req.keep || req.host.is_some(),
    };
    let wall = Instant::now();
    drill_steps(
        repository,
        catalog,
        req,
        &info,
        &host,
        &folder,
        wall,
        &mut report,
        progress,
    )
    .map(|kept| {
        report.kept = kept;
    })
    .unwrap_or_else(|check| report.fail(check));
    if report.wall_secs == 0.0 {
        report.wall_secs = wall.elapsed().as_secs_f64();
    }
    let phase_sum: f64 = report.phases.iter().map(|p| p.seconds).sum();
    if report.phases.iter().any(|p| p.name == "replay") {
        report.rto_secs = Some(phase_sum);
    }
    // The objectives, once the figures are known.
    for (name, what, objective, figure) in [
        ("rto", "measured RTO", req.rto_objective, report.rto_secs),
        ("rpo", "achieved RPO", req.rpo_objective, report.rpo_secs),
    ] {
        let (Some(obj), Some(v)) = (objective, figure) else {
            continue;
        };
        let met = v <= obj.as_secs_f64();
        let c = Check::new(
            name,
            if met { "pass" } else { "fail" },
            format!("{what} {v:.1} s, objective {} s", obj.as_secs()),
        );
        if met {
            report.checks.push(c);
        } else {
            report.fail(c);
        }
    }
    // With --keep the folder stays (a failed drill's too, to look into); a passing
    // drill's server keeps running.
    scratch.keep = req.keep || req.host.is_some();
    let t = Instant::now();
    drop(scratch);
    if req.host.is_some() && !req.keep {
        let _ = host.run(&["rm", "-rf", &folder.to_string_lossy()]);
    }
    report.cleanup_secs += t.elapsed().as_secs_f64();
    record(catalog, &mut report, &info)?;
    Ok(report)
}

/// The drills' folder on a drill host: `drill_workdir`, else `pgbk-drills` in the
/// SSH user's home (created 0700 by that user, who runs PostgreSQL there).
fn remote_workdir(host: &Host, req: &DrillRequest) -> Result<PathBuf, DrillError> {
    let dir = if req.workdir_is_default {
        "pgbk-drills".to_string()
    } else {
        req.workdir.to_string_lossy().into_owned()
    };
    let script = format!(
        "mkdir -p -m 0700 {0} && cd {0} && pwd -P",
        crate::ssh::shell_quote(&dir)
    );
    let ran = host
        .run(&["/bin/sh", "-c", &script])
        .map_err(|e| DrillError::Refused(format!("server '{}': drill host: {e}", req.server)))?;
    let path = ran.stdout.trim();
    if !ran.ok || !path.starts_with('/') {
        return Err(DrillError::Refused(format!(
            "server '{}': drill host {}: creating {dir}: {}",
            req.server,
            host.describe(),
            ran.first_line()
        )));
    }
    Ok(PathBuf::from(path))
}

/// Free bytes in `dir` on a drill host (`df`; unknown counts as enough).
fn remote_free(host: &Host, dir: &Path) -> u64 {
    host.run(&["df", "-P", "-k", &dir.to_string_lossy()])
        .ok()
        .filter(|r| r.ok)
        .and_then(|r| {
            r.stdout
                .lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |k| k * 1024)
}

/// Whether user `uid` (group `gid`) may traverse every folder down to `path` (the
/// part that exists).
fn reachable(path: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    path.ancestors()
        .filter_map(|p| std::fs::metadata(p).ok())
        .all(|m| {
            let mode = m.mode();
            (m.uid() == uid && mode & 0o100 != 0)
                || (m.gid() == gid && mode & 0o010 != 0)
                || mode & 0o001 != 0
        })
}

/// The drills' folder: private, or (when PostgreSQL runs as another user) only
/// traversable by others (0711: each drill's own folder inside is 0700 and theirs).
fn make_workdir(path: &Path, shared: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    crate::repo::durable::create_dir_all_private(path)?;
    if shared {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))?;
    }
    Ok(())
}

/// WAL archived after the backup ended (bytes), what a drill restores beside it.
fn wal_bytes_after(catalog: &Catalog, info: &BackupInfo) -> Result<u64, CatalogError> {
    let end = info
        .end_wal
        .as_deref()
        .and_then(|w| crate::wal::WalSegment::parse(w, info.wal_segment_size))
        .map(|s| s.segno)
        .unwrap_or(0);
    Ok(catalog
        .wal_files(&info.server)?
        .iter()
        .filter(|w| w.kind == WalKind::Segment && w.segno.is_some_and(|s| s >= end))
        .map(|w| w.size)
        .sum())
}

/// Stores the report, and the restore and replay rates it measured.
fn record(
    catalog: &Catalog,
    report: &mut DrillReport,
    info: &BackupInfo,
) -> Result<(), DrillError> {
    let text = serde_json::to_string(report).unwrap_or_default();
    report.id = catalog.insert_drill(&DrillRow {
        id: 0,
        server: report.server.clone(),
        started_at: report.started_at,
        backup_id: report.backup_id.clone(),
        ok: report.ok,
        rto_secs: report.rto_secs,
        rpo_secs: report.rpo_secs,
        report: text,
    })?;
    for p in report
        .phases
        .iter()
        .filter(|p| p.name == "replay" && p.seconds > 0.0)
    {
        if let Some(bytes) = p.bytes.filter(|b| *b > 0) {
            catalog.insert_measurement(&Measurement {
                server: report.server.clone(),
                kind: "replay".into(),
                backup_id: Some(info.backup_id.clone()),
                measured_at: Utc::now(),
                duration_secs: p.seconds,
                bytes,
                files: 0,
                bytes_per_sec: bytes as f64 / p.seconds,
                detail: serde_json::json!({ "drill": report.id }).to_string(),
            })?;
        }
    }
    Ok(())
}

/// The drill's steps; `Err` is the failed check that ended it. Returns where the
/// server still runs with `keep`.
#[allow(clippy::too_many_arguments)]
fn drill_steps(
    repository: &Repository,
    catalog: &Catalog,
    req: &DrillRequest,
    info: &BackupInfo,
    host: &Host,
    folder: &Path,
    wall: Instant,
    report: &mut DrillReport,
    progress: &dyn Progress,
) -> Result<Option<Kept>, Check> {
    let fail = |name: &str, detail: String| Check::new(name, "fail", detail);
    // The restore phase counts from here: the WAL check belongs to it.
    let t = Instant::now();
    let owner = match host {
        Host::Local { owner } => *owner,
        Host::Remote(_) => None,
    };
    // The drill's folder is PostgreSQL's (0700), inside a folder it can traverse.
    let data = folder.join("data");
    let socket = folder.join("socket");
    match host {
        Host::Local { .. } => {
            for d in [folder, &socket] {
                crate::repo::durable::create_dir_all_private(d)
                    .at(d)
                    .map_err(|e| fail("restore", e.to_string()))?;
            }
        }
        Host::Remote(_) => {
            let ran = host
                .run(&["mkdir", "-p", "-m", "0700", &socket.to_string_lossy()])
                .map_err(|e| fail("restore", e.to_string()))?;
            if !ran.ok {
                return Err(fail("restore", ran.first_line()));
            }
        }
    }
    // The WAL must run without a hole from the backup to the newest segment
    // archived (recovery would end early at a hole and promote: a silent loss).
    let repo = repository.server(&req.server);
    let plan = restore::wal::plan(info, &repo, catalog, req.target.as_ref(), None)
        .map_err(|e| fail("wal", e.to_string()))?;
    if let Some(hole) = &plan.hole {
        return Err(fail(
            "wal",
            format!("WAL segment {hole} is missing from the archive (later segments are there): recovery would stop before it"),
        ));
    }
    report.checks.push(Check::new(
        "wal",
        "pass",
        format!(
            "{} segment(s) from the backup on, no hole",
            plan.segments.len()
        ),
    ));

    // 1. restore.
    let port = free_port().map_err(|e| fail("start", format!("finding a free port: {e}")))?;
    let hba = folder.join("pg_hba.drill.conf");
    host.write(
        &hba,
        "# pgbk drill: the drill's own socket only, nobody else\nlocal all all trust\n",
        false,
    )
    .map_err(|e| fail("restore", e.to_string()))?;
    let overrides: Vec<(String, String)> = [
        ("port", port.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", socket.display().to_string()),
        ("hba_file", hba.display().to_string()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("synchronous_standby_names", String::new()),
        ("logging_collector", "off".into()),
        ("ssl", "off".into()),
        ("cluster_name", "pgbk drill".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let tablespaces = info
        .tablespaces
        .iter()
        .map(|t| {
            (
                t.name.clone().unwrap_or_else(|| t.oid.to_string()),
                folder.join("tablespaces").join(t.oid.to_string()),
            )
        })
        .collect();
    let summary = restore::recover(
        repository,
        RecoverRequest {
            server: req.server.clone(),
            backup_id: info.backup_id.clone(),
            destination: data.clone(),
            target: req.target.clone(),
            exclusive: false,
            target_tli: None,
            target_action: req.target.as_ref().map(|_| TargetAction::Promote),
            tablespaces,
            standby_mode: false,
            wal: WalSource::Copy,
            jobs: req.jobs,
            delta: false,
            remote: req.host.clone(),
            overrides,
            source: None,
        },
        progress,
    )
    .map_err(|e| fail("restore", e.to_string()))?;
    report.checks.push(Check::new(
        "restore",
        "pass",
        format!(
            "{} file(s), {} bytes and {} WAL file(s) restored, every checksum verified",
            summary.files.files_written, summary.files.bytes_written, summary.wal_files
        ),
    ));
    // Said where a DBA looks first: this copy is cut off from production.
    let auto = data.join("postgresql.auto.conf");
    let note = "\n# pgbk drill: a throwaway copy cut off from production: archive_mode off, no\n# primary_conninfo, Unix socket in the drill's folder only (listen_addresses '').\n";
    host.write(&auto, note, true)
        .map_err(|e| fail("restore", e.to_string()))?;
    // A data directory whose configuration lived elsewhere (Debian's /etc) starts
    // with PostgreSQL's defaults.
    let conf = data.join("postgresql.conf");
    if !host.exists(&conf) {
        host.write(
            &conf,
            "# pgbk drill: the backup held no postgresql.conf\n",
            false,
        )
        .map_err(|e| fail("restore", e.to_string()))?;
    }
    chown_tree(folder, owner).map_err(|e| fail("restore", e.to_string()))?;
    report.phase(
        "restore",
        t,
        Some(summary.files.bytes_written + summary.wal_bytes),
    );
    let t = Instant::now();

    // 2. start, 3. replay.
    let pg_bin = crate::pg::local::bin_dir(req.pg_bin.as_deref(), info.server_version);
    report.pg_bin = Some(pg_bin.display().to_string());
    if !host.exists(&pg_bin.join("pg_ctl")) {
        return Err(fail(
            "start",
            format!(
                "no pg_ctl in {} on {} (PostgreSQL {} binaries: set drill_pg_bin or path_prefix)",
                pg_bin.display(),
                host.describe(),
                info.server_version / 10000
            ),
        ));
    }
    let mut server = DrillCluster::new(
        host,
        &pg_bin,
        &data,
        &socket,
        &folder.join("postgresql.log"),
        port,
    );
    server
        .start()
        .and_then(|()| server.wait_ready(SERVER_LIMIT))
        .map_err(|e| fail("start", e.to_string()))?;
    report.phase("start", t, None);
    report.checks.push(Check::new(
        "start",
        "pass",
        format!(
            "consistent and accepting connections after {:.1} s",
            t.elapsed().as_secs_f64()
        ),
    ));
    let t = Instant::now();
    server
        .wait_promoted(SERVER_LIMIT)
        .map_err(|e| fail("promoted", e.to_string()))?;
    let replayed = server
        .query("postgres", "SELECT pg_last_wal_replay_lsn()")
        .ok()
        .flatten()
        .and_then(|l| l.parse::<crate::wal::Lsn>().ok());
    let replay_bytes = match (replayed, info.begin_lsn) {
        (Some(end), Some(begin)) if end.0 > begin.0 => Some(end.0 - begin.0),
        _ => None,
    };
    report.phase("replay", t, replay_bytes);
    report.checks.push(Check::new(
        "promoted",
        "pass",
        format!(
            "recovery ended at {} and the server was promoted",
            replayed
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into())
        ),
    ));

    // 4. checks.
    let t = Instant::now();
    let result = checks(&server, req, report);
    report.phase("checks", t, None);
    report.wall_secs = wall.elapsed().as_secs_f64();
    result?;
    if req.keep {
        // The server stays up for the DBA; its folder is kept.
        server.detach();
        return Ok(Some(Kept {
            folder: folder.to_path_buf(),
            port,
            conninfo: format!("host={} port={port} user=postgres", socket.display()),
        }));
    }
    let t = Instant::now();
    server.stop();
    report.cleanup_secs = t.elapsed().as_secs_f64();
    Ok(None)
}

/// Without `pg_amcheck`: amcheck's `bt_index_check` on every B-tree index of every
/// database, through SQL (the extension created in the throwaway copy).
fn sql_amcheck(server: &DrillCluster) -> Result<Check, Check> {
    let fail = |e: cluster::ClusterError| Check::new("amcheck", "fail", e.to_string());
    let dbs = server
        .column(
            "postgres",
            "SELECT datname FROM pg_database WHERE datallowconn",
        )
        .map_err(fail)?;
    let mut indexes = 0u64;
    for db in &dbs {
        if server
            .query(db, "CREATE EXTENSION IF NOT EXISTS amcheck")
            .is_err()
        {
            return Ok(Check::new(
                "amcheck",
                "skipped",
                "neither pg_amcheck nor the amcheck extension is installed",
            ));
        }
        let n = server
            .query(
                db,
                "SELECT count(bt_index_check(c.oid)) FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_am a ON a.oid = c.relam \
                 WHERE a.amname = 'btree' AND c.relpersistence <> 't' AND i.indisvalid",
            )
            .map_err(fail)?;
        indexes += n.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(Check::new(
        "amcheck",
        "pass",
        format!(
            "bt_index_check found no corruption in {indexes} index(es) of {} database(s)",
            dbs.len()
        ),
    ))
}

/// amcheck, the query, the newest commit (achieved RPO).
fn checks(
    server: &DrillCluster,
    req: &DrillRequest,
    report: &mut DrillReport,
) -> Result<(), Check> {
    // amcheck over every database, when pg_amcheck is installed.
    // Every heap page and B-tree index, relations checked `jobs` at a time.
    let jobs = format!("--jobs={}", req.jobs.max(1));
    if !server.has("pg_amcheck") {
        report.checks.push(sql_amcheck(server)?);
    } else {
        let out = server
            .client("pg_amcheck", &["--all", "--install-missing", &jobs])
            .map_err(|e| Check::new("amcheck", "fail", e.to_string()))?;
        if !out.ok {
            // pg_amcheck reports corruption on stdout, its own failures on stderr.
            let first = out
                .stdout
                .lines()
                .chain(out.stderr.lines())
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .to_string();
            return Err(Check::new(
                "amcheck",
                "fail",
                format!("pg_amcheck: {first}"),
            ));
        }
        let dbs = server
            .column(
                "postgres",
                "SELECT datname FROM pg_database WHERE datallowconn",
            )
            .map(|d| d.len())
            .unwrap_or(0);
        report.checks.push(Check::new(
            "amcheck",
            "pass",
            format!("pg_amcheck found no corruption in {dbs} database(s)"),
        ));
    }
    if let Some(q) = &req.query {
        let got = server
            .query(&q.database, &q.sql)
            .map_err(|e| Check::new("query", "fail", e.to_string()))?;
        let value = got.unwrap_or_else(|| "NULL".into());
        let mut ok = true;
        let mut wanted = Vec::new();
        if let Some(e) = &q.expected {
            ok &= value == *e;
            wanted.push(format!("expected {e}"));
        }
        if let Some(min) = q.minimum {
            ok &= value.trim().parse::<f64>().is_ok_and(|v| v >= min);
            wanted.push(format!("at least {min}"));
        }
        let detail = format!(
            "{} returned {value}{}",
            q.sql,
            if wanted.is_empty() {
                String::new()
            } else {
                format!(" ({})", wanted.join(", "))
            }
        );
        if !ok {
            return Err(Check::new("query", "fail", detail));
        }
        report.checks.push(Check::new("query", "pass", detail));
    }
    // The newest commit replayed: what the backup and its WAL preserved.
    let last = server
        .query(
            "postgres",
            "SELECT extract(epoch FROM pg_last_xact_replay_timestamp())",
        )
        .map_err(|e| Check::new("rpo", "fail", e.to_string()))?
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|s| DateTime::from_timestamp_millis((s * 1000.0) as i64));
    let reference = match &req.target {
        Some(RecoveryTarget::Time(t)) => *t,
        _ => report.started_at,
    };
    match last {
        Some(l) => {
            let rpo = (reference - l).num_milliseconds().max(0) as f64 / 1000.0;
            report.last_commit = Some(l);
            report.rpo_secs = Some(rpo);
        }
        None => report.checks.push(Check::new(
            "rpo",
            "skipped",
            "no commit was replayed after the backup: the achieved RPO is unknown",
        )),
    }
    Ok(())
}
