//! One backup run, whatever its method: the request, how it ends (the outcome or
//! the error), and the steps both methods share — a fresh backup id, the wait for
//! the WAL the backup needs, recording a failure. Both methods build on this file
//! (`take.rs`: BASE_BACKUP, which also hands rsync backups on; `rsync.rs`:
//! pg_backup_start and rsync), which knows neither.

use super::incremental::IncrementalPlan;
use super::lifecycle::mark_failed;
use super::tar_store::StoreOptions;
use super::wal_range::missing_segments;
use super::{backup_id_at, save, BackupDir, BackupError, BackupInfo, BackupStatus};
use crate::catalog::{Catalog, CatalogError};
use crate::config::ReuseBackup;
use crate::lock::LockError;
use crate::pg::{ConnInfo, ConnectOptions, Connection, PgError};
use crate::repo::ServerRepo;
use crate::wal::{TimeLineId, WalSegment};
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long `backup` waits for the WAL the backup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalWait {
    /// Return as soon as the files are stored (`--no-wait`).
    No,
    /// Up to this long.
    Timeout(Duration),
    /// Until it arrives.
    Forever,
}

/// Everything a backup needs, validated by the caller.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// The repository's home.
    pub home: PathBuf,
    /// Where the backup's objects go (the home itself, or a bucket).
    pub repository: crate::repo::Repository,
    /// Server (config section) name.
    pub server: String,
    /// Ordinary SQL connection (pg_switch_wal, tablespace names).
    pub conninfo: ConnInfo,
    /// Replication connection (BASE_BACKUP).
    pub streaming_conninfo: ConnInfo,
    /// When `conninfo` names a hot standby: the primary, where the WAL switch and
    /// checkpoint go (`standby.rs`).
    pub primary_conninfo: Option<ConnInfo>,
    /// `application_name` of the replication connection.
    pub application_name: String,
    /// Optional friendly name (checked with `validate_name`).
    pub name: Option<String>,
    /// `CHECKPOINT 'fast'`.
    pub immediate_checkpoint: bool,
    /// Compression threads.
    pub jobs: usize,
    /// `MAX_RATE` in kB/s.
    pub max_rate: Option<u32>,
    /// Waiting for WAL at the end.
    pub wait: WalWait,
    /// Storage tuning.
    pub store: StoreOptions,
    /// `Some` for `backup_method = rsync`: copy over SSH instead of BASE_BACKUP.
    pub rsync: Option<RsyncOptions>,
    /// `Some` for an incremental backup (`--incremental`, `backup_type = incremental`).
    pub incremental: Option<IncrementalPlan>,
    /// Whether an interrupted backup is taken up again (`--resume`, `backup_resume`).
    pub resume: super::resume::ResumePlan,
}

/// How a backup that did not fail ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every file and every WAL segment it needs is stored.
    Done(BackupInfo),
    /// Files stored; WAL not all archived yet (`--no-wait`).
    WaitingForWals(BackupInfo),
    /// Files stored; the wait for WAL timed out or was interrupted.
    WalNotArchived {
        /// The backup, `WAITING_FOR_WALS`.
        info: BackupInfo,
        /// What is still missing.
        missing: Vec<WalSegment>,
        /// Interrupted by a signal rather than timed out.
        interrupted: bool,
    },
}

/// Why a backup could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    /// Another backup of the server is running.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The request is not acceptable (name in use, server too old...).
    #[error("{0}")]
    Refused(String),
    /// Talking to the server failed before the backup started.
    #[error("server '{server}': {source}")]
    Pg { server: String, source: PgError },
    /// The server answered, but not what the backup needs (rsync method: a fact
    /// queried before the backup started).
    #[error("server '{server}': {msg}")]
    Server { server: String, msg: String },
    /// Reading or writing metadata failed before the backup started.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The catalog failed before the backup started.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A folder of the repository could not be created.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The backup started and failed: it is recorded `FAILED` with the reason.
    #[error("backup {} of server '{}' failed: {}", .0.backup_id, .0.server, .0.error.as_deref().unwrap_or("unknown error"))]
    Failed(Box<BackupInfo>),
}

/// Opens a connection (replication or SQL) to the server being backed up.
pub(super) async fn connect(
    info: &ConnInfo,
    replication: bool,
    app: &str,
) -> Result<Connection, PgError> {
    let opts = ConnectOptions {
        replication,
        application_name: Some(app.to_string()),
        connect_timeout: Some(Duration::from_secs(10)),
    };
    Connection::connect(info, &opts).await
}

/// Resolves once `stop` says so (never if its sender is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A fresh id (the current second, UTC), waiting for the next second if a backup
/// already has this one.
pub(super) async fn new_backup_id(
    repo: &ServerRepo,
    existing: &[BackupInfo],
) -> (String, DateTime<Utc>) {
    loop {
        let now = Utc::now();
        let id = backup_id_at(now);
        if !existing.iter().any(|b| b.backup_id == id) && !BackupDir::new(repo, &id).root().exists()
        {
            return (id, now);
        }
        let ms = 1000 - u64::from(now.timestamp_subsec_millis()).min(999);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// After the files are stored: switches WAL (on a primary) so the end segment gets
/// archived, then waits as `req.wait` says until every segment the backup needs is
/// in the archive, marking it `DONE`. Shared by both backup methods.
pub(super) async fn wait_for_wal(
    req: &BackupRequest,
    mut info: BackupInfo,
    repo: &ServerRepo,
    catalog: &Catalog,
    in_recovery: bool,
    stop: &mut watch::Receiver<bool>,
) -> Result<Outcome, TakeError> {
    let id = info.backup_id.clone();
    // A standby cannot switch WAL: its primary does, when configured.
    let switch_on = match (&req.primary_conninfo, in_recovery) {
        (Some(primary), _) => Some(primary),
        (None, false) => Some(&req.conninfo),
        (None, true) => None,
    };
    if let Some(on) = switch_on {
        if let Err(e) = switch_wal(on).await {
            tracing::warn!(server = %req.server, "pg_switch_wal() failed: {e}; the end segment is archived once the server fills it");
        }
    }
    let deadline = match req.wait {
        WalWait::No => return Ok(Outcome::WaitingForWals(info)),
        WalWait::Timeout(d) => Some(Instant::now() + d),
        WalWait::Forever => None,
    };
    let started = Instant::now();
    let mut poll = Duration::from_millis(5);
    loop {
        let missing = missing_segments(&info, repo, catalog)?;
        if missing.is_empty() {
            info.status = BackupStatus::Done;
            save(repo, catalog, &info)?;
            tracing::info!(server = %req.server, backup = %id, "backup DONE");
            return Ok(Outcome::Done(info));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Outcome::WalNotArchived {
                info,
                missing,
                interrupted: false,
            });
        }
        // The end segment usually arrives within tens of milliseconds of the
        // switch: poll every 5 ms for the first second (a catalog query and a few
        // stats), then back off.
        let pause = poll;
        if started.elapsed() >= Duration::from_secs(1) {
            poll = (poll * 2).min(Duration::from_millis(500));
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped(stop) => {
                return Ok(Outcome::WalNotArchived { info, missing, interrupted: true });
            }
        }
    }
}

/// Records the failure (removing the partial files) and builds the error.
pub(super) fn fail(
    repo: &ServerRepo,
    catalog: &Catalog,
    mut info: BackupInfo,
    reason: &str,
) -> TakeError {
    tracing::error!(server = %info.server, backup = %info.backup_id, "backup failed: {reason}");
    if let Err(e) = mark_failed(repo, catalog, &mut info, reason) {
        tracing::error!(backup = %info.backup_id, "could not record the failure completely: {e}");
        info.status = BackupStatus::Failed;
        info.error = Some(format!("{reason} (and recording the failure: {e})"));
    }
    TakeError::Failed(Box::new(info))
}

async fn switch_wal(on: &ConnInfo) -> Result<(), PgError> {
    let mut sql = connect(on, false, "pgbk").await?;
    let r = sql.simple_query("SELECT pg_switch_wal()").await;
    sql.close().await;
    r.map(|_| ())
}

/// The WAL file name of segment `segno` on timeline `tli`.
pub(super) fn segment_name(tli: TimeLineId, segno: u64, seg_size: u64) -> String {
    WalSegment {
        tli,
        segno,
        seg_size,
    }
    .name()
}

/// What an rsync backup needs beyond a streaming one.
#[derive(Debug, Clone)]
pub struct RsyncOptions {
    /// The server's `ssh_command` (`ssh -p 22 postgres@pg1`).
    pub ssh_command: String,
    /// `reuse_backup`.
    pub reuse: ReuseBackup,
    /// `bandwidth_limit` in KiB/s, shared by all workers.
    pub bandwidth_limit: Option<u64>,
    /// `network_compression` (rsync `-z`).
    pub network_compression: bool,
}
