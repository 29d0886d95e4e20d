//! Taking a base backup with the `postgres` method: BASE_BACKUP streamed straight
//! into the repository, then the WAL it needs waited for.
//!
//! States, in order: the backup lock is taken and stale backups are refreshed;
//! backup.json is written `STARTED` (with our pid) before the first byte is stored;
//! files arrive ([`super::tar_store`]); once they are all durable, files.jsonl,
//! backup_manifest and backup.json `WAITING_FOR_WALS` are written; the server
//! switches WAL so the end segment gets archived; the backup becomes `DONE` when
//! every segment from `begin_wal` to `end_wal` is in the archive. Any failure
//! while receiving marks it `FAILED` with the reason and removes its files but
//! those its resume journal names, which `--resume` takes up ([`super::resume`]).

use super::base_backup::{
    BaseBackupEvent, BaseBackupOptions, BaseBackupStream, MIN_SERVER_VERSION,
};
use super::block_map::{BlockDiff, MapWriter, ParentMap};
use super::incremental::{decide, relation_path, summary_hazard_query, Decision, ServerSide};
use super::lifecycle::backup_lock_path;
use super::resume::{ResumePlan, Session};
use super::run::{connect, fail, new_backup_id, segment_name, stopped, wait_for_wal};
pub use super::run::{BackupRequest, Outcome, TakeError, WalWait};
use super::tar_store::{store_stream, StoreError, Stored, StreamMsg};
use super::{
    is_backup_id, save, BackupDir, BackupInfo, BackupStatus, IncrementalMethod, TablespaceInfo,
};
use crate::catalog::Catalog;
use crate::lock::JobLock;
use crate::pg::{Connection, PgError};
use crate::progress::Progress;
use crate::repo::durable::create_dir_all_private;
use crate::repo::ServerRepo;
use crate::wal::{Lsn, SystemId, TimeLineId};
use bytes::Bytes;
use chrono::Utc;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// Why a `--name` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupNameError {
    /// Empty or only blanks.
    #[error("a backup name cannot be empty")]
    Empty,
    /// It reads as a backup id (`YYYYMMDDTHHMMSS`).
    #[error("backup name '{0}' looks like a backup id; choose another name")]
    LooksLikeId(String),
    /// One of the words that pick a backup.
    #[error("backup name '{0}' is reserved (latest/last/oldest/first); choose another name")]
    Reserved(String),
    /// It holds control characters.
    #[error("a backup name cannot hold control characters")]
    ControlCharacters,
}

/// Refuses a `--name` that could be mistaken for an id or a keyword.
pub fn validate_name(name: &str) -> Result<(), BackupNameError> {
    if name.trim().is_empty() {
        return Err(BackupNameError::Empty);
    }
    if is_backup_id(name) {
        return Err(BackupNameError::LooksLikeId(name.to_string()));
    }
    if matches!(name, "latest" | "last" | "oldest" | "first") {
        return Err(BackupNameError::Reserved(name.to_string()));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(BackupNameError::ControlCharacters);
    }
    Ok(())
}

/// Depth of the channel between the protocol task and the tar thread (batches of
/// at most about [`BATCH_BYTES`] each: 8 MiB in flight at most).
const CHANNEL_DEPTH: usize = 16;

/// Archive bytes gathered into one message for the tar thread.
const BATCH_BYTES: usize = 512 * 1024;

/// What the server tells before the backup starts.
struct ServerFacts {
    version: u32,
    system_id: SystemId,
    timeline: TimeLineId,
    seg_size: u64,
    in_recovery: bool,
    /// `summarize_wal` (PostgreSQL 17+).
    summarize_wal: Option<bool>,
    tablespace_names: HashMap<u32, String>,
}

async fn server_facts(
    req: &BackupRequest,
    repl: &mut Connection,
) -> Result<ServerFacts, TakeError> {
    let pg = |source| TakeError::Pg {
        server: req.server.clone(),
        source,
    };
    let version = repl.server_version_num().unwrap_or(0);
    if version < MIN_SERVER_VERSION {
        return Err(TakeError::Refused(format!(
            "server '{}' runs PostgreSQL {}; pgbk backups need PostgreSQL 15 or later",
            req.server,
            repl.parameter("server_version")
                .unwrap_or("of an unknown version")
        )));
    }
    let ident = repl.identify_system().await.map_err(pg)?;
    let seg_size = repl.wal_segment_size().await.map_err(pg)?;
    let mut sql = connect(&req.conninfo, false, "pgbk").await.map_err(pg)?;
    let rows = sql
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .map_err(pg)?;
    let in_recovery = rows.first().and_then(|r| r.get_idx(0)) == Some("t");
    let summarize_wal = if version >= super::incremental::MIN_INCREMENTAL_VERSION {
        let rows = sql.simple_query("SHOW summarize_wal").await.map_err(pg)?;
        Some(rows.first().and_then(|r| r.get_idx(0)) == Some("on"))
    } else {
        None
    };
    let rows = sql
        .simple_query("SELECT oid, spcname FROM pg_tablespace")
        .await
        .map_err(pg)?;
    let tablespace_names = rows
        .iter()
        .filter_map(|r| Some((r.get_idx(0)?.parse().ok()?, r.get_idx(1)?.to_string())))
        .collect();
    sql.close().await;
    Ok(ServerFacts {
        version,
        system_id: ident.system_id,
        timeline: ident.timeline,
        seg_size,
        in_recovery,
        summarize_wal,
        tablespace_names,
    })
}

/// A backup's hold on its server's repository: the backup lock, taken before
/// anything is read, and the catalog open for writing.
pub struct Held {
    /// The server's repository.
    pub repo: ServerRepo,
    /// The catalog.
    pub catalog: Catalog,
    _lock: JobLock,
}

/// Takes the server's backup lock (creating its folders) and opens the catalog:
/// the first step of a backup, before its statuses are brought up to date.
pub fn hold_repository(req: &BackupRequest) -> Result<Held, TakeError> {
    let repo = req.repository.server(&req.server);
    let io = |path: PathBuf| move |source| TakeError::Io { path, source };
    repo.ensure_dirs().map_err(io(repo.root().to_path_buf()))?;
    let lock = JobLock::acquire(
        &backup_lock_path(&repo),
        &format!("backup of server '{}'", req.server),
    )?;
    let catalog = Catalog::open(&req.home)?;
    Ok(Held {
        repo,
        catalog,
        _lock: lock,
    })
}

/// Takes a backup of one server, holding its repository, given its backups
/// brought up to date (the `maintenance` module's `take_backup` does both first steps).
/// `stop` turning true (SIGINT/SIGTERM) interrupts it.
pub async fn take_held(
    req: &BackupRequest,
    held: Held,
    existing: Vec<BackupInfo>,
    progress: Arc<dyn Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, TakeError> {
    let Held {
        repo,
        catalog,
        _lock,
    } = held;
    let io = |path: PathBuf| move |source| TakeError::Io { path, source };
    if let Some(name) = &req.name {
        validate_name(name).map_err(|e| TakeError::Refused(e.to_string()))?;
        if let Some(b) = existing
            .iter()
            .find(|b| b.name.as_deref() == Some(name.as_str()))
        {
            return Err(TakeError::Refused(format!(
                "server '{}': the name '{name}' is already used by backup {}",
                req.server, b.backup_id
            )));
        }
    }

    if let Some(opts) = &req.rsync {
        if matches!(req.resume, ResumePlan::Newest | ResumePlan::Named(_)) {
            return Err(TakeError::Refused(format!(
                "server '{}': --resume takes up streamed backups (backup_method = postgres)",
                req.server
            )));
        }
        discard_interrupted(&repo, &existing);
        if req.incremental.is_some() {
            return Err(TakeError::Refused(format!(
                "server '{}': incremental backups need backup_method = postgres (rsync backups reuse unchanged files with reuse_backup instead)",
                req.server
            )));
        }
        return super::rsync::take(req, opts, &repo, &catalog, &existing, progress, stop).await;
    }
    let mut repl = connect(&req.streaming_conninfo, true, &req.application_name)
        .await
        .map_err(|source| TakeError::Pg {
            server: req.server.clone(),
            source,
        })?;
    let facts = server_facts(req, &mut repl).await?;
    crate::wal::stored::adopt_repository_identity(&repo, &catalog)?;
    catalog.check_server_identity(&req.server, facts.system_id, facts.seg_size)?;
    super::standby::prepare(req, facts.system_id).await?;
    let side = ServerSide {
        version: facts.version,
        summarize_wal: facts.summarize_wal,
        system_id: facts.system_id,
        timeline: facts.timeline,
    };
    let resumed = super::resume::pick(&req.server, &req.resume, &repo, &existing, facts.system_id)
        .map_err(TakeError::Refused)?
        .cloned();
    let parent = match (&resumed, &req.incremental) {
        (Some(old), _) => resumed_parent(&req.server, old, &side, &existing)?,
        (None, None) => None,
        (None, Some(plan)) => {
            match decide(&req.server, plan, &side, &existing).map_err(TakeError::Refused)? {
                Decision::Incremental(p) => Some(*p),
                Decision::Full(notice) => {
                    if let Some(n) = notice {
                        tracing::warn!(server = %req.server, "{n}");
                    }
                    None
                }
            }
        }
    };
    // A block-map incremental (PostgreSQL 15/16, or a resumed one): the parent's
    // block map is opened (and verified) before anything is recorded, so an
    // unusable one is a refusal, not a FAILED backup.
    let block_mapped = facts.version < super::incremental::MIN_INCREMENTAL_VERSION
        || resumed
            .as_ref()
            .is_some_and(|o| o.incremental_method == Some(IncrementalMethod::BlockMap));
    let (parent, mode) = match parent {
        Some(p) if block_mapped => match open_parent_map(&repo, &p) {
            Ok(map) => (Some(p), Mode::BlockMap(map)),
            Err(why) if req.incremental.as_ref().is_some_and(|i| i.fallback_full) => {
                tracing::warn!(
                    server = %req.server,
                    "{why}; taking a full backup (incremental_fallback = full)"
                );
                (None, Mode::Full)
            }
            Err(why) => {
                return Err(TakeError::Refused(format!(
                    "server '{}': {why}; take a full backup (--full) to build on",
                    req.server
                )))
            }
        },
        Some(p) => {
            let dir = BackupDir::new(&repo, &p.backup_id);
            (Some(p), Mode::Server(dir))
        }
        None => (None, Mode::Full),
    };

    if resumed.is_none() {
        discard_interrupted(&repo, &existing);
    }
    // A resumed backup keeps its id (its objects are under it); it begins now.
    let (id, begin_time) = match &resumed {
        Some(old) => (old.backup_id.clone(), Utc::now()),
        None => new_backup_id(&repo, &existing).await,
    };
    let dir = BackupDir::new(&repo, &id);
    let mut info = BackupInfo {
        name: req
            .name
            .clone()
            .or_else(|| resumed.as_ref().and_then(|o| o.name.clone())),
        server_version: facts.version,
        system_id: facts.system_id,
        timeline: facts.timeline,
        wal_segment_size: facts.seg_size,
        pid: Some(std::process::id()),
        parent: parent.as_ref().map(|p| p.backup_id.clone()),
        incremental_method: mode.method(),
        ..BackupInfo::new(&id, &req.server, begin_time)
    };
    create_dir_all_private(dir.root()).map_err(io(dir.root().to_path_buf()))?;
    if let Err(e) = save(&repo, &catalog, &info) {
        // Nothing was stored: leave no trace but the error (a resumed backup stays
        // as it was, FAILED with its stored files).
        if resumed.is_none() {
            let _ = std::fs::remove_dir_all(dir.root());
            let _ = catalog.delete_backup(&req.server, &id);
        }
        return Err(e.into());
    }
    let session = match resumed {
        Some(_) => Session::resume(&dir),
        None => Session::start(&dir),
    };
    let session = match session {
        Ok(s) => Arc::new(s),
        Err(e) => return Err(fail(&repo, &catalog, info, &e.to_string())),
    };
    tracing::info!(server = %req.server, backup = %id, "backup {}", if resumed.is_some() { "resumed" } else { "started" });

    let server_side = matches!(mode, Mode::Server(_));
    // PostgreSQL 15/16: only the changed blocks read over SQL, when it can be.
    let sql = match (&mode, &parent) {
        (Mode::BlockMap(_), Some(p))
            if facts.version < super::incremental::MIN_INCREMENTAL_VERSION
                && req.incremental.as_ref().is_some_and(|i| i.sql_read) =>
        {
            sql_start(req, &repo, &catalog, &facts, p, &mut info, &mut stop).await
        }
        _ => None,
    };
    let received = receive(
        req,
        &mut repl,
        &mut info,
        &dir,
        &repo,
        &catalog,
        &facts,
        mode,
        sql,
        session.clone(),
        progress.clone(),
        &mut stop,
    )
    .await;
    progress.finish();
    drop(repl);
    let mut stored = match received {
        Ok(s) => s,
        Err(reason) => return Err(fail(&repo, &catalog, info, &reason)),
    };
    // PostgreSQL's incremental may miss blocks (see `summary_hazard_query`): when
    // its WAL summaries show the pattern, the files are taken again, compared
    // block by block with the parent's block map, or whole.
    let hazard = match (&parent, server_side) {
        (Some(p), true) => summary_hazard(req, p, info.begin_lsn).await,
        _ => None,
    };
    let retaken = hazard.is_some();
    if let (Some(why), Some(p)) = (hazard, &parent) {
        drop(stored);
        let retaken = retake(
            req,
            &mut info,
            &dir,
            &repo,
            &catalog,
            &facts,
            p,
            &why,
            progress.clone(),
            &mut stop,
        )
        .await;
        progress.finish();
        stored = match retaken {
            Ok(s) => s,
            Err(reason) => return Err(fail(&repo, &catalog, info, &reason)),
        };
    }
    // A retaken backup removed the interrupted run's objects with its own.
    if resumed.is_some() && !retaken {
        // The interrupted run's objects of files the server no longer sent go.
        if let Err(e) = session.finish() {
            return Err(fail(&repo, &catalog, info, &e.to_string()));
        }
        info.reused_bytes = Some(session.reused_bytes());
        tracing::info!(
            server = %req.server,
            backup = %id,
            "resumed: {} file(s), {} bytes, reused from the interrupted run",
            session.reused_files(),
            session.reused_bytes()
        );
    }
    let (size, stored_bytes, count, has_manifest) = (
        stored.size_bytes,
        stored.stored_bytes,
        stored.file_count,
        stored.has_manifest(),
    );
    info.block_map = stored.block_map().map(str::to_string);
    if let Err(e) = stored.commit() {
        return Err(fail(&repo, &catalog, info, &e.to_string()));
    }
    info.status = BackupStatus::WaitingForWals;
    info.end_time = Some(Utc::now());
    info.size_bytes = size;
    info.stored_bytes = stored_bytes;
    info.file_count = count;
    info.has_manifest = has_manifest;
    info.pid = None;
    if let Err(e) = save(&repo, &catalog, &info) {
        return Err(fail(&repo, &catalog, info, &e.to_string()));
    }
    // Every file is listed in files.jsonl now: nothing is left to resume.
    super::resume::forget(&dir);
    tracing::info!(
        server = %req.server,
        backup = %id,
        "files stored; waiting for WAL {} to {}",
        info.begin_wal.as_deref().unwrap_or("?"),
        info.end_wal.as_deref().unwrap_or("?")
    );

    wait_for_wal(req, info, &repo, &catalog, facts.in_recovery, &mut stop).await
}

/// The parent a resumed backup is built on: the interrupted run's, still fit.
fn resumed_parent(
    server: &str,
    old: &BackupInfo,
    side: &ServerSide,
    existing: &[BackupInfo],
) -> Result<Option<BackupInfo>, TakeError> {
    let Some(parent) = &old.parent else {
        return Ok(None);
    };
    let why = match existing.iter().find(|b| &b.backup_id == parent) {
        None => format!("its parent {parent} is gone"),
        Some(p) => match super::incremental::unfit_parent(p, side) {
            None => return Ok(Some(p.clone())),
            Some(why) => format!("its parent: {why}"),
        },
    };
    Err(TakeError::Refused(format!(
        "server '{server}': backup {} cannot be resumed: {why}",
        old.backup_id
    )))
}

/// A new backup supersedes an interrupted one: the files it kept for `--resume`
/// are removed (its backup.json stays, FAILED). A failure is only reported.
fn discard_interrupted(repo: &ServerRepo, existing: &[BackupInfo]) {
    for b in existing {
        let dir = BackupDir::new(repo, &b.backup_id);
        if b.status != BackupStatus::Failed || !super::resume::is_resumable(&dir, b) {
            continue;
        }
        tracing::info!(server = %b.server, "backup {}: removing the files its interrupted run stored (not resumed)", b.backup_id);
        if let Err(e) = super::lifecycle::remove_content(&dir) {
            tracing::warn!(server = %b.server, "backup {}: {e}", b.backup_id);
        }
    }
}

/// `UPLOAD_MANIFEST`: hands the server the parent's `backup_manifest`, read from
/// the repository in chunks on a blocking thread (the store may be a bucket).
async fn upload_manifest(repl: &mut Connection, parent: &BackupDir) -> Result<(), String> {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(4);
    let dir = parent.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let what = dir.describe("backup_manifest");
        let mut r = match dir.open_object("backup_manifest") {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("reading the parent's manifest: {e}")));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; 1 << 20];
            match r.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(format!("reading {what}: {e}")));
                    return;
                }
            }
        }
    });
    let sent = repl.copy_in("UPLOAD_MANIFEST", rx).await;
    let _ = reader.await;
    sent.map(|_| ()).map_err(|e| match e {
        PgError::InvalidArgument(why) => why,
        e => format!("UPLOAD_MANIFEST: {e}"),
    })
}

/// Keeps memory the stream frees in the process instead of handing it back to
/// the kernel: every read buffer of the stream is a fresh half-MiB allocation,
/// and with glibc's default trimming each one page-faulted its memory in again
/// (about 2% of a backup's CPU). Memory stays bounded by the stream's budget.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the backup's
    // threads start allocating.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

/// Starts an incremental read over SQL ([`super::sql_incremental`]) on
/// `parent`, recording the backup's start; `None`, with a notice, when it
/// cannot be (the backup is then streamed).
async fn sql_start(
    req: &BackupRequest,
    repo: &ServerRepo,
    catalog: &Catalog,
    facts: &ServerFacts,
    parent: &BackupInfo,
    info: &mut BackupInfo,
    stop: &mut watch::Receiver<bool>,
) -> Option<super::sql_incremental::Prepared> {
    let fallback = |why: &str| {
        tracing::warn!(
            server = %req.server,
            backup = %info.backup_id,
            "incremental: not reading over SQL: {why}; streaming every file instead (only changed blocks are stored)"
        );
    };
    let Some(parent_start) = parent.begin_lsn else {
        fallback(&format!("backup {} has no start LSN", parent.backup_id));
        return None;
    };
    let conn = match connect(&req.conninfo, false, "pgbk").await {
        Ok(c) => c,
        Err(e) => {
            fallback(&e.to_string());
            return None;
        }
    };
    let ctx = super::sql_incremental::Context {
        repo,
        catalog,
        parent_start,
        parent_timeline: parent.timeline,
        timeline: facts.timeline,
        seg_size: facts.seg_size,
        label: format!("pgbk backup {}", info.backup_id),
        fast_checkpoint: req.immediate_checkpoint,
    };
    if !req.immediate_checkpoint {
        tracing::info!(
            backup = %info.backup_id,
            "waiting for PostgreSQL's checkpoint (spread; --immediate-checkpoint or immediate_checkpoint = on skips the wait)"
        );
    }
    match super::sql_incremental::prepare(conn, &ctx, stop).await {
        Ok(p) => {
            let seg = facts.seg_size;
            info.begin_lsn = Some(p.start);
            info.timeline = facts.timeline;
            info.begin_wal = Some(segment_name(facts.timeline, p.start.segno(seg), seg));
            if let Err(e) = save(repo, catalog, info) {
                fallback(&e.to_string());
                return None;
            }
            tracing::info!(
                server = %req.server,
                backup = %info.backup_id,
                "incremental: backup starts at {} on timeline {}; reading over SQL only what changed since backup {}: {}",
                p.start,
                facts.timeline,
                parent.backup_id,
                p.describe()
            );
            Some(p)
        }
        Err(why) => {
            fallback(&why);
            None
        }
    }
}

/// Runs BASE_BACKUP (or, with `sql`, reads the server over SQL) and stores what
/// it sends. Returns the reason on failure.
#[allow(clippy::too_many_arguments)]
async fn receive(
    req: &BackupRequest,
    repl: &mut Connection,
    info: &mut BackupInfo,
    dir: &BackupDir,
    repo: &ServerRepo,
    catalog: &Catalog,
    facts: &ServerFacts,
    mode: Mode,
    sql: Option<super::sql_incremental::Prepared>,
    session: Arc<Session>,
    progress: Arc<dyn Progress>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Stored, String> {
    keep_freed_memory();
    let supplied = sql
        .as_ref()
        .map(|_| Arc::new(super::block_map::Supplied::default()));
    // A server incremental's relation files are mostly INCREMENTAL.* files: it
    // records no block map. Every other backup does, as its files pass.
    let (blocks, server_parent, parent_map) = match mode {
        Mode::Server(parent) => (None, Some(parent), None),
        Mode::Full | Mode::BlockMap(_) => {
            let map = MapWriter::create(dir).map_err(|e| e.to_string())?;
            let parent = match mode {
                Mode::BlockMap(m) => Some(Arc::new(m)),
                _ => None,
            };
            let scratch = dir.root().to_path_buf();
            (
                Some(BlockDiff {
                    map,
                    parent: parent.clone(),
                    scratch,
                    supplied: supplied.clone(),
                }),
                None,
                parent,
            )
        }
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(req.jobs.max(1))
        .thread_name(|i| format!("pgbk-zstd-{i}"))
        .build()
        .map_err(|e| format!("starting compression threads: {e}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<StreamMsg>(CHANNEL_DEPTH);
    let store = {
        let dir = dir.clone();
        let opts = super::tar_store::StoreOptions {
            resume: Some(session),
            ..req.store.clone()
        };
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("pgbk-tar".into())
            .spawn(move || store_stream(rx, &dir, &pool, &opts, &*progress, blocks))
            .map_err(|e| format!("starting the tar thread: {e}"))?
    };
    let streamed = match (sql, parent_map, supplied) {
        (Some(prepared), Some(parent), Some(supplied)) => {
            read_sql(
                prepared, parent, supplied, dir, info, facts, &*progress, tx, stop,
            )
            .await
        }
        _ => {
            stream(
                req,
                repl,
                info,
                repo,
                catalog,
                facts,
                server_parent.as_ref(),
                &*progress,
                tx,
                stop,
            )
            .await
        }
    };
    // The channel is closed now: the tar thread ends whatever happened.
    let stored = match store.join() {
        Ok(r) => r,
        Err(_) => Err(StoreError::Invalid("the tar thread panicked".into())),
    };
    match (streamed, stored) {
        (Ok(()), Ok(s)) => Ok(s),
        // The store stopped taking data: its error is the cause.
        (Err(Failure::StoreGone), Err(e)) | (Ok(()), Err(e)) => Err(e.to_string()),
        (Err(Failure::StoreGone), Ok(_)) => Err("the tar thread stopped early".into()),
        (Err(Failure::Reason(r)), _) => Err(r),
    }
}

/// The parent's block map (PostgreSQL 15/16), checked against backup.json; from
/// a bucket it is copied under the home first.
fn open_parent_map(repo: &ServerRepo, parent: &BackupInfo) -> Result<ParentMap, String> {
    let id = &parent.backup_id;
    let sum = parent
        .block_map
        .as_deref()
        .ok_or_else(|| format!("backup {id} has no block map to compare with"))?;
    let scratch = repo.repository().home();
    let map =
        ParentMap::open(&BackupDir::new(repo, id), sum, scratch).map_err(|e| e.to_string())?;
    tracing::info!(
        server = %repo.server(),
        "incremental: comparing every block with backup {id} ({} relation files in its block map)",
        map.len()
    );
    Ok(map)
}

/// How a backup's files are taken.
enum Mode {
    /// Every file whole, its relation blocks recorded in a block map.
    Full,
    /// PostgreSQL 17+'s `BASE_BACKUP ... INCREMENTAL` against this parent's manifest.
    Server(BackupDir),
    /// Every file streamed whole, relation blocks compared with the parent's map.
    BlockMap(ParentMap),
}

impl Mode {
    fn method(&self) -> Option<IncrementalMethod> {
        match self {
            Mode::Full => None,
            Mode::Server(_) => Some(IncrementalMethod::Server),
            Mode::BlockMap(_) => Some(IncrementalMethod::BlockMap),
        }
    }
}

/// Why the server's incremental from `parent` to a backup starting at `begin`
/// cannot be trusted, from its WAL summaries ([`summary_hazard_query`]): a
/// relation truncated then extended again, or summaries that cannot be read.
async fn summary_hazard(
    req: &BackupRequest,
    parent: &BackupInfo,
    begin: Option<Lsn>,
) -> Option<String> {
    let (Some(from), Some(to)) = (parent.begin_lsn, begin) else {
        return Some("the backups' start LSNs are unknown".into());
    };
    let rows = match connect(&req.conninfo, false, "pgbk").await {
        Ok(mut sql) => {
            let r = sql.simple_query(&summary_hazard_query(from, to)).await;
            sql.close().await;
            r
        }
        Err(e) => Err(e),
    };
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            return Some(format!(
                "its WAL summaries could not be checked ({e}; GRANT EXECUTE ON FUNCTION \
                 pg_available_wal_summaries, pg_wal_summary_contents to the backup role)"
            ))
        }
    };
    let row = rows.first()?;
    let num = |i: usize| {
        row.get_idx(i)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let path = relation_path(num(0), num(1), num(2), num(3));
    let name = row
        .get_idx(5)
        .filter(|n| !n.is_empty())
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    Some(format!(
        "WAL summaries from {from} to {to} truncate {path}{name} to {} blocks, then extend it \
         again: PostgreSQL's incremental could miss the blocks written again",
        num(4)
    ))
}

/// Takes the files again after the server's incremental was found unsafe
/// (`why`): its stored files are removed, then every file is streamed whole and
/// compared with the parent's block map, or stored whole when it has none.
#[allow(clippy::too_many_arguments)]
async fn retake(
    req: &BackupRequest,
    info: &mut BackupInfo,
    dir: &BackupDir,
    repo: &ServerRepo,
    catalog: &Catalog,
    facts: &ServerFacts,
    parent: &BackupInfo,
    why: &str,
    progress: Arc<dyn Progress>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Stored, String> {
    let mode = match parent
        .block_map
        .as_ref()
        .map(|_| open_parent_map(repo, parent))
    {
        Some(Ok(map)) => {
            tracing::warn!(server = %req.server, backup = %info.backup_id, "{why}; taking a block-map incremental on backup {} instead", parent.backup_id);
            Mode::BlockMap(map)
        }
        other => {
            let no_map = match other {
                Some(Err(e)) => e,
                _ => format!("backup {} has no block map", parent.backup_id),
            };
            tracing::warn!(server = %req.server, backup = %info.backup_id, "{why}; {no_map}: taking a full backup instead");
            Mode::Full
        }
    };
    if matches!(mode, Mode::Full) {
        info.parent = None;
    }
    info.incremental_method = mode.method();
    super::lifecycle::remove_content(dir).map_err(|e| e.to_string())?;
    let session = Arc::new(Session::start(dir).map_err(|e| e.to_string())?);
    let mut repl = connect(&req.streaming_conninfo, true, &req.application_name)
        .await
        .map_err(|e| e.to_string())?;
    receive(
        req, &mut repl, info, dir, repo, catalog, facts, mode, None, session, progress, stop,
    )
    .await
}

enum Failure {
    StoreGone,
    Reason(String),
}

/// The SQL path's read into the store, and the backup's end recorded.
#[allow(clippy::too_many_arguments)]
async fn read_sql(
    prepared: super::sql_incremental::Prepared,
    parent: Arc<ParentMap>,
    supplied: Arc<super::block_map::Supplied>,
    dir: &BackupDir,
    info: &mut BackupInfo,
    facts: &ServerFacts,
    progress: &dyn Progress,
    tx: tokio::sync::mpsc::Sender<StreamMsg>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Failure> {
    use super::sql_incremental::ReadFailure;
    let started = std::time::Instant::now();
    let read = super::sql_incremental::read(
        prepared,
        parent,
        supplied,
        dir.root().to_path_buf(),
        &info.backup_id,
        progress,
        tx,
        stop,
    )
    .await
    .map_err(|e| match e {
        ReadFailure::StoreGone => Failure::StoreGone,
        ReadFailure::Reason(r) => Failure::Reason(r),
    })?;
    let seg = facts.seg_size;
    let lsn = read.stopped.lsn;
    info.copy_millis = Some(started.elapsed().as_millis() as u64);
    info.end_lsn = Some(lsn);
    info.end_timeline = Some(info.timeline);
    let begin = info.begin_lsn.unwrap_or(lsn).segno(seg);
    info.end_wal = Some(segment_name(
        info.timeline,
        lsn.prev_segno(seg).max(begin),
        seg,
    ));
    info.sql_read_bytes = Some(read.read_bytes);
    info.tablespaces = read
        .tablespaces
        .iter()
        .map(|t| TablespaceInfo {
            oid: t.oid,
            name: facts.tablespace_names.get(&t.oid).cloned(),
            location: t.location.clone(),
        })
        .collect();
    tracing::info!(
        backup = %info.backup_id,
        "read {} bytes over SQL; the backup ends at {lsn}",
        read.read_bytes
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    req: &BackupRequest,
    repl: &mut Connection,
    info: &mut BackupInfo,
    repo: &ServerRepo,
    catalog: &Catalog,
    facts: &ServerFacts,
    parent: Option<&BackupDir>,
    progress: &dyn Progress,
    tx: tokio::sync::mpsc::Sender<StreamMsg>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Failure> {
    let opts = BaseBackupOptions {
        label: format!("pgbk backup {}", info.backup_id),
        fast_checkpoint: req.immediate_checkpoint,
        max_rate: req.max_rate,
        progress: true,
        incremental: parent.is_some(),
    };
    let interrupted = || Failure::Reason("interrupted".to_string());
    if let Some(parent) = parent {
        tracing::info!(backup = %info.backup_id, "incremental: sending the backup_manifest of backup {}", parent.id());
        tokio::select! {
            r = upload_manifest(repl, parent) => r.map_err(Failure::Reason)?,
            _ = stopped(stop) => return Err(interrupted()),
        }
    }
    let pg = |e: PgError| Failure::Reason(format!("BASE_BACKUP: {e}"));
    let seg = facts.seg_size;
    if !req.immediate_checkpoint {
        tracing::info!(
            backup = %info.backup_id,
            "waiting for PostgreSQL's checkpoint (spread; --immediate-checkpoint or immediate_checkpoint = on skips the wait)"
        );
    }
    let mut copy_started = std::time::Instant::now();
    let mut bb = tokio::select! {
        r = BaseBackupStream::start(repl, &opts) => r.map_err(pg)?,
        _ = stopped(stop) => return Err(interrupted()),
    };
    let mut ended = false;
    // Archive data already received is gathered (up to BATCH_BYTES) and handed on
    // in one message: one wake-up of the tar thread per batch instead of per
    // CopyData message (32 kB each).
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    loop {
        let ev = tokio::select! {
            ev = bb.next() => ev.map_err(pg)?,
            _ = stopped(stop) => return Err(interrupted()),
        };
        if let Some(BaseBackupEvent::Data(b)) = ev {
            batched += b.len();
            batch.push(b);
            if batched < BATCH_BYTES && bb.has_buffered() {
                continue;
            }
            batched = 0;
            let msg = StreamMsg::Batch(std::mem::take(&mut batch));
            tokio::select! {
                r = tx.send(msg) => r.map_err(|_| Failure::StoreGone)?,
                _ = stopped(stop) => return Err(interrupted()),
            }
            continue;
        }
        if !batch.is_empty() {
            batched = 0;
            let msg = StreamMsg::Batch(std::mem::take(&mut batch));
            tokio::select! {
                r = tx.send(msg) => r.map_err(|_| Failure::StoreGone)?,
                _ = stopped(stop) => return Err(interrupted()),
            }
        }
        let msg = match ev {
            None => break,
            Some(BaseBackupEvent::Start { lsn, timeline }) => {
                info.begin_lsn = Some(lsn);
                info.timeline = timeline;
                info.begin_wal = Some(segment_name(timeline, lsn.segno(seg), seg));
                save(repo, catalog, info).map_err(|e| Failure::Reason(e.to_string()))?;
                tracing::info!(backup = %info.backup_id, "checkpoint done; backup starts at {lsn} on timeline {timeline}");
                copy_started = std::time::Instant::now();
                continue;
            }
            Some(BaseBackupEvent::Tablespaces(rows)) => {
                let total: Option<u64> = rows
                    .iter()
                    .map(|r| r.size_kb)
                    .sum::<Option<u64>>()
                    .map(|kb| kb * 1024);
                progress.start(&format!("backup {}", info.backup_id), total);
                info.tablespaces = rows
                    .iter()
                    .filter_map(|r| {
                        let oid = r.oid?;
                        Some(TablespaceInfo {
                            oid,
                            name: facts.tablespace_names.get(&oid).cloned(),
                            location: r.location.clone().unwrap_or_default(),
                        })
                    })
                    .collect();
                continue;
            }
            Some(BaseBackupEvent::Progress(_)) => continue,
            Some(BaseBackupEvent::End { lsn, timeline }) => {
                info.copy_millis = Some(copy_started.elapsed().as_millis() as u64);
                info.end_lsn = Some(lsn);
                info.end_timeline = Some(timeline);
                let begin = info.begin_lsn.unwrap_or(Lsn(lsn.0)).segno(seg);
                info.end_wal = Some(segment_name(timeline, lsn.prev_segno(seg).max(begin), seg));
                ended = true;
                continue;
            }
            Some(BaseBackupEvent::Archive { name, location }) => {
                StreamMsg::Archive { name, location }
            }
            Some(BaseBackupEvent::Data(b)) => StreamMsg::Data(b),
            Some(BaseBackupEvent::ManifestStart) => StreamMsg::ManifestStart,
            Some(BaseBackupEvent::ManifestData(b)) => StreamMsg::ManifestData(b),
        };
        tokio::select! {
            r = tx.send(msg) => r.map_err(|_| Failure::StoreGone)?,
            _ = stopped(stop) => return Err(interrupted()),
        }
    }
    if !ended {
        return Err(Failure::Reason(
            "BASE_BACKUP: the server did not report the end of the backup".into(),
        ));
    }
    tokio::select! {
        r = tx.send(StreamMsg::End) => r.map_err(|_| Failure::StoreGone)?,
        _ = stopped(stop) => return Err(interrupted()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_be_ids_or_keywords_are_refused() {
        assert!(validate_name("before-upgrade").is_ok());
        for bad in [
            "20260101T000000",
            "latest",
            "last",
            "oldest",
            "first",
            "",
            " ",
            "a\nb",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
