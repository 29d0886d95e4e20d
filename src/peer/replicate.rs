//! The passive side of replication: one pass of `replicate` for one server.
//!
//! 1. one SSH session to `primary_ssh_command` (host key verified) runs
//!    `<primary_pgbk_command> sync-info <server> --since <cursor> --format json`;
//! 2. the archived WAL it lists is copied (what the catalog already holds with the
//!    same checksum is skipped) and entered in the catalog; the cursor only moves
//!    past files that are stored here;
//! 3. each `DONE` backup not `DONE` here is copied: backup.json first as `SYNCING`,
//!    then files.jsonl and backup_manifest, then every object files.jsonl names (an
//!    object whose final name exists was verified before its rename and is skipped,
//!    which is how a killed pass resumes), and backup.json as `DONE` last, once every
//!    object and the WAL the backup needs are here;
//! 4. the primary's in-progress `.partial` segment is copied (only its new bytes)
//!    and atomically replaced as it grows, older partials removed once archived;
//! 5. the cursor and the pass's figures (WAL positions, lag) go to `peer_state`.
//!
//! Objects travel over SFTP as stored (never recompressed), `parallel_jobs` at once,
//! each on its own SSH session, and are verified by [`super::transfer`].
//!
//! When this side's repository is on object storage, every object is received and
//! verified under the home exactly as on the local backend, then stored in the
//! bucket create-only (the same key as its path under the home) and the local copy
//! removed ([`Pass::publish`]); a WAL file enters the catalog, and backup.json
//! says DONE, only once the bucket holds it. The partial segment stays local, as
//! receive-wal's does.
//!
//! A backup older than the oldest `DONE` backup held here is not copied again: the
//! passive side's own retention removed it (or never needed it).

use super::paths::{self, check_backup_id, check_relative, check_wal, ensure_real_dirs};
use super::pool::{Done, Job, Pool, Work, IO_TIMEOUT};
use super::sftp_batch::{batch_full, MAX_OBJECT};
use crate::backup::bundle;

/// SFTP's status for a name that does not exist (`SSH_FX_NO_SUCH_FILE`).
const SFTP_NO_SUCH_FILE: i32 = 2;
use super::sync_info::{wal_position, SyncInfo, SYNC_INFO_VERSION};
use super::transfer::{self, already_there, commit_batch, temp_path, Expected, TransferError};
use super::PeerError;
use crate::backup::wal_range::missing_segments;
use crate::backup::{save, BackupDir, BackupInfo, BackupStatus, FileEntry, FileKind};
use crate::catalog::{Catalog, PeerState, WalKind, WalRecord};
use crate::config::ServerConfig;
use crate::repo::durable::{
    create_dir_all_private, fsync_dir, remove_durable, remove_stale_temp_files, rename_durable,
};
use crate::repo::store::{PutMode, StoreError};
use crate::repo::{Repository, ServerRepo};
use crate::ssh::{shell_quote, SshSession, SshTarget};
use crate::wal::{Lsn, WalFileName};
use chrono::Utc;
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What one pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// The server (local name).
    pub server: String,
    /// The primary manager (`user@host:port`).
    pub primary: String,
    /// WAL files copied in this pass.
    pub wal_copied: u64,
    /// WAL files listed that were already here.
    pub wal_present: u64,
    /// Backups that became `DONE` here in this pass.
    pub backups_copied: Vec<String>,
    /// `DONE` backups of the primary not `DONE` here after the pass.
    pub backups_pending: Vec<String>,
    /// Backup objects copied in this pass.
    pub files_copied: u64,
    /// Backup objects already here (verified before, not copied again).
    pub files_present: u64,
    /// Bytes read from the primary in this pass.
    pub bytes_moved: u64,
    /// The partial segment held here after the pass, if any.
    pub partial: Option<String>,
    /// Its length.
    pub partial_bytes: u64,
    /// The primary's newest WAL position.
    pub primary_lsn: Option<Lsn>,
    /// The newest WAL position held here after the pass.
    pub local_lsn: Option<Lsn>,
    /// `primary_lsn - local_lsn`, in bytes.
    pub lag_bytes: Option<u64>,
    /// The cursor stored for the next pass.
    pub cursor: i64,
    /// Objects or names refused or not copied (the pass then exits 1).
    pub errors: Vec<String>,
    /// Wall-clock duration.
    pub duration_secs: f64,
}

/// Everything a pass works with.
struct Pass<'a> {
    server: &'a ServerConfig,
    target: SshTarget,
    session: SshSession,
    sftp: Option<ssh2::Sftp>,
    repo: ServerRepo,
    catalog: Catalog,
    doc: SyncInfo,
    seg_size: u64,
    moved: Arc<AtomicU64>,
    pool: Option<Pool>,
    stop: &'a AtomicBool,
    report: PassReport,
    /// Errors beyond [`MAX_REPORTED_ERRORS`], counted only.
    suppressed: u64,
    /// Verified backup objects still under their temporary names.
    batch: Vec<PathBuf>,
    /// When `batch` was last committed.
    committed_at: Instant,
}

/// One backup's copy within a pass: what its steps share, so that each step
/// (backup.json `SYNCING`, the file lists, the objects queued, the workers waited
/// for, `DONE`) is one method.
struct BackupCopy<'p, 'a> {
    pass: &'p mut Pass<'a>,
    id: String,
    dir: BackupDir,
    /// `backups/<id>`, relative to the primary's home.
    remote_dir: String,
    /// The primary's backup.json, recorded here `SYNCING` until the copy is whole.
    info: BackupInfo,
    /// Folders checked to be real folders under the home (fsynced before `DONE`).
    seen: HashSet<PathBuf>,
    /// On object storage, what the bucket already holds of this backup (a pass
    /// resumed after an interruption skips it), by key: one listing, not a
    /// request per object.
    present: Option<HashMap<String, u64>>,
    /// Objects that failed (reported) or were not queued.
    failures: u64,
    /// The list could not be read to its end, or the pass was stopped.
    halted: bool,
    /// Small objects waiting to go to the workers in one batch, and their bytes.
    small: Vec<Job>,
    small_bytes: u64,
    /// Objects too large for a batch, gathered to be queued largest first.
    large: Vec<Job>,
    /// Large objects held back, queued beside the batches.
    held: VecDeque<Job>,
}

impl<'p, 'a> BackupCopy<'p, 'a> {
    /// The backup's folder, its backup.json `SYNCING` (rewritten only if it changed).
    fn start(pass: &'p mut Pass<'a>, remote: BackupInfo) -> Result<Self, PeerError> {
        let id = remote.backup_id.clone();
        let mut seen = HashSet::new();
        let rel_root = PathBuf::from("backups").join(&id);
        ensure_real_dirs(pass.repo.root(), &rel_root, &mut seen)
            .map_err(Pass::io(&pass.repo.root().join(&rel_root)))?;
        let dir = BackupDir::new(&pass.repo, &id);
        let mut info = remote;
        info.server = pass.name().to_string();
        info.status = BackupStatus::Syncing;
        info.pid = None;
        let on_disk = dir.read_info().ok();
        if on_disk.as_ref() != Some(&info) {
            save(&pass.repo, &pass.catalog, &info)?;
        }
        Ok(BackupCopy {
            pass,
            remote_dir: format!("backups/{id}"),
            id,
            dir,
            info,
            seen,
            present: None,
            failures: 0,
            halted: false,
            small: Vec::new(),
            small_bytes: 0,
            large: Vec::new(),
            held: VecDeque::new(),
        })
    }

    /// The file list and the manifest (and the bundle list of a backup with bundled
    /// small files), unless a previous pass stored them. `false` when one could not
    /// be fetched (reported).
    fn fetch_lists(&mut self) -> Result<bool, PeerError> {
        let (id, dir) = (&self.id, &self.dir);
        let mut metadata = vec![("files.jsonl", dir.files_path(), false)];
        if self.info.has_manifest {
            metadata.push(("backup_manifest", dir.manifest_path(), false));
        }
        // Only a backup with bundled small files has a bundle list.
        metadata.push(("bundles.jsonl", dir.root().join(bundle::LIST), true));
        // A PostgreSQL 15/16 backup's block map, for incrementals taken here after a
        // switchover (missing on the other side: an incremental here refuses it).
        if self.info.block_map.is_some() {
            let map = crate::backup::block_map::NAME;
            metadata.push((map, dir.root().join(map), true));
        }
        let pass = &mut *self.pass;
        for (file, dest, optional) in metadata {
            if pass.stored_at(&dest)? {
                continue;
            }
            let remote = pass.remote(&format!("{}/{file}", self.remote_dir));
            let result = pass
                .main_sftp()
                .and_then(|sftp| match sftp.open(Path::new(&remote)) {
                    Err(e) if optional && e.code() == ssh2::ErrorCode::SFTP(SFTP_NO_SUCH_FILE) => {
                        Ok(None)
                    }
                    Err(e) => Err(TransferError::Remote {
                        path: remote.clone(),
                        msg: e.message().to_string(),
                    }),
                    Ok(f) => Ok(Some(f)),
                })
                .and_then(|f| match f {
                    Some(f) => {
                        transfer::receive_plain(f, &remote, &dest, &pass.moved).map(|()| true)
                    }
                    None => Ok(false),
                });
            match result {
                Ok(true) => pass.publish(std::slice::from_ref(&dest))?,
                Ok(false) => {}
                Err(e) => {
                    pass.error(format!("backup {id}: {e}"));
                    return Ok(false);
                }
            }
        }
        self.present = pass.stored_objects(id)?;
        tracing::debug!(server = %pass.server.name, backup = %id, "file list here");
        Ok(true)
    }

    /// Queues every object files.jsonl names, streamed (never the whole list in
    /// memory): the list is read twice. The first round collects the objects too
    /// large for a batch (queued largest first, LARGEST_FIRST at a time), so the
    /// largest copies start first and do not end last; the second queues the small
    /// ones in batches and, from the first batch on, the large ones held back beside
    /// them: the pool's two lanes then keep one worker creating small files while
    /// the others read large objects. `false` when the list cannot be opened
    /// (reported).
    fn queue_objects(&mut self) -> Result<bool, PeerError> {
        for big_round in [true, false] {
            if !self.queue_round(big_round)? {
                return Ok(false);
            }
            if self.halted {
                return Ok(true);
            }
            if big_round {
                self.large
                    .sort_by_key(|j| std::cmp::Reverse(j.expect.stored_size));
                self.held.extend(self.large.drain(..));
            }
        }
        if !self.small.is_empty() {
            let batch = std::mem::take(&mut self.small);
            self.failures +=
                self.pass
                    .queue_beside(&self.id, Work::Batch(batch), &mut self.held)?;
        }
        for job in self.held.drain(..) {
            self.failures += self.pass.queue_work(&self.id, Work::One(Box::new(job)))?;
        }
        if let Some(e) = self.pass.lost_error() {
            return Err(e);
        }
        Ok(true)
    }

    /// One reading of the list: the large objects (`big_round`) or the small ones.
    /// `false` when the list cannot be opened (reported).
    fn queue_round(&mut self, big_round: bool) -> Result<bool, PeerError> {
        let id = self.id.clone();
        let dir = self.dir.clone();
        // The objects: every file's own, then the bundles small files share
        // (each verified whole against bundles.jsonl).
        let entries = match dir
            .files()
            .and_then(|f| Ok(f.chain(bundle::list(&dir)?.map(|b| b.map(|b| b.as_entry())))))
        {
            Ok(it) => it,
            Err(e) => {
                self.pass.error(format!("backup {id}: {e}"));
                return Ok(false);
            }
        };
        for entry in entries {
            if self.pass.stop.load(Ordering::Relaxed) {
                self.failures += 1;
                self.halted = true;
                break;
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // An unreadable list is fetched again by the next pass.
                    self.pass.error(format!("backup {id}: {e}"));
                    let _ = remove_durable(&dir.files_path());
                    if dir.is_remote() {
                        let _ = dir.store().delete(&[dir.key("files.jsonl")]);
                    }
                    self.failures += 1;
                    self.halted = true;
                    break;
                }
            };
            if entry.kind != FileKind::File
                || entry.offset.is_some()
                || (entry.stored_size > MAX_OBJECT) != big_round
            {
                continue;
            }
            let Some(job) = self.job(&entry) else {
                continue;
            };
            if !self.enqueue(job)? {
                continue;
            }
            if let Some(e) = self.pass.lost_error() {
                return Err(e);
            }
        }
        Ok(true)
    }

    /// The fetch of one listed object, or `None` when it is already here or
    /// cannot be fetched (counted as a failure and reported).
    fn job(&mut self, entry: &FileEntry) -> Option<Job> {
        let id = &self.id;
        let object = entry.object.as_deref()?;
        if let Some(other) = &entry.in_backup {
            // Only a bucket's rsync backups refer to another backup's objects, and
            // sync-info never serves a bucket.
            self.pass.error(format!(
                "backup {id}: '{}' refers to an object of backup {}, which replication does not copy",
                entry.path,
                other.escape_debug()
            ));
            self.failures += 1;
            return None;
        }
        let rel = match check_relative("object path", object) {
            Ok(r) => r,
            Err(e) => {
                self.pass.error(format!("backup {id}: {e}"));
                self.failures += 1;
                return None;
            }
        };
        let compressed = match entry.compression.as_deref() {
            Some("zstd") => true,
            Some("none") => false,
            None => object.ends_with(".zst"),
            Some(other) => {
                self.pass.error(format!(
                    "backup {id}: {object} uses unknown compression '{other}'"
                ));
                self.failures += 1;
                return None;
            }
        };
        let dest = self.dir.root().join(&rel);
        if let Some(parent) = rel.parent() {
            if let Err(e) = ensure_real_dirs(self.dir.root(), parent, &mut self.seen) {
                self.pass.error(format!("backup {id}: {e}"));
                self.failures += 1;
                return None;
            }
        }
        let expect = Expected {
            stored_size: entry.stored_size,
            size: entry.size,
            checksum: entry.checksum.clone(),
            stored_checksum: entry.stored_checksum.clone(),
            compressed,
        };
        let there = match &self.present {
            Some(keys) => {
                keys.get(&self.dir.key(&rel.to_string_lossy())) == Some(&expect.stored_size)
            }
            None => already_there(&dest, &expect),
        };
        if there {
            self.pass.report.files_present += 1;
            return None;
        }
        Some(Job {
            remote: self.pass.remote(&format!("{}/{object}", self.remote_dir)),
            dest,
            expect,
            tag: 0,
            unsynced: true,
        })
    }

    /// Small objects go to the workers in batches read with pipelined requests;
    /// large ones are gathered and queued largest first. `true` when this queued
    /// work (a full batch, or a round of large objects).
    fn enqueue(&mut self, job: Job) -> Result<bool, PeerError> {
        if job.expect.stored_size <= MAX_OBJECT {
            self.small_bytes += job.expect.stored_size;
            self.small.push(job);
            if !batch_full(self.small.len(), self.small_bytes) {
                return Ok(false);
            }
            self.small_bytes = 0;
            let batch = std::mem::take(&mut self.small);
            self.failures +=
                self.pass
                    .queue_beside(&self.id, Work::Batch(batch), &mut self.held)?;
        } else {
            self.large.push(job);
            if self.large.len() < LARGEST_FIRST {
                return Ok(false);
            }
            self.failures += self.pass.queue_largest_first(&self.id, &mut self.large)?;
        }
        Ok(true)
    }

    /// The last objects: committed as they finish (every COMMIT_INTERVAL), not all
    /// at the end, so a pass killed now keeps what was verified.
    fn wait_for_workers(&mut self) -> Result<(), PeerError> {
        while let Some(pool) = self.pass.pool.as_mut() {
            let mut some = pool.wait_some();
            if some.is_empty() {
                break;
            }
            self.failures += self.pass.tally(&self.id, &mut some)?;
        }
        self.pass.commit()
    }

    /// `DONE` when every object arrived and every WAL segment the backup needs is
    /// here: the folders made durable first.
    fn finish(mut self) -> Result<bool, PeerError> {
        if self.failures > 0 {
            return Ok(false);
        }
        let (id, dir) = (&self.id, &self.dir);
        let missing = missing_segments(&self.info, &self.pass.repo, &self.pass.catalog)?;
        if !missing.is_empty() {
            self.pass.error(format!(
                "backup {id}: {} WAL segment(s) it needs are not here yet (first {}); it stays SYNCING",
                missing.len(),
                missing[0].name()
            ));
            return Ok(false);
        }
        // Temporary files a killed pass left for objects copied since are removed,
        // and every folder is fsynced once, so the objects' names are durable
        // before backup.json says DONE.
        for d in self.seen.iter().filter(|d| d.starts_with(dir.root())) {
            remove_stale_temp_files(d).map_err(Pass::io(d))?;
            fsync_dir(d).map_err(Pass::io(d))?;
        }
        remove_stale_temp_files(dir.root()).map_err(Pass::io(dir.root()))?;
        fsync_dir(dir.root()).map_err(Pass::io(dir.root()))?;
        self.info.status = BackupStatus::Done;
        save(&self.pass.repo, &self.pass.catalog, &self.info)?;
        if dir.is_remote() {
            // Only emptied folders are left here; the backup is in the bucket.
            let _ = std::fs::remove_dir_all(dir.root());
        }
        Ok(true)
    }
}

/// Objects too large for a batch ([`MAX_OBJECT`]) are queued largest first, this
/// many at a time: a pass then ends with small objects filling both workers
/// instead of one worker still reading a large object it started last.
const LARGEST_FIRST: usize = 4096;

/// A backup's verified objects are made durable and renamed once this many wait…
pub const COMMIT_OBJECTS: usize = 512;
/// …or once the oldest has waited this long (what a killed pass copies again).
pub const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Uploads at once when this side's repository is on object storage.
const PUBLISHERS: usize = 4;

fn store_err(e: StoreError) -> PeerError {
    PeerError::Backup(crate::backup::BackupError::Store(Box::new(e)))
}

/// Copied WAL files entered in the catalog per transaction.
pub const WAL_BATCH: usize = 1000;

/// A failed commit of verified objects (only local failures are possible).
fn transfer_io(e: TransferError) -> PeerError {
    match e {
        TransferError::Local(e) => PeerError::Io(e),
        other => PeerError::Io(crate::error::IoError::new(
            PathBuf::new(),
            std::io::Error::other(other.to_string()),
        )),
    }
}

/// Lowers the first failed WAL insertion number to `seq`.
fn fail_at(seq: i64, failed: &mut Option<i64>) {
    *failed = Some(failed.map_or(seq, |f| f.min(seq)));
}

/// Errors listed one by one in a pass's report; more are counted (a broken
/// connection would otherwise print one line per object).
pub const MAX_REPORTED_ERRORS: usize = 20;

/// Runs one replication pass of a passive server.
pub fn replicate_pass(
    home: &Path,
    server: &ServerConfig,
    stop: &AtomicBool,
) -> Result<PassReport, PeerError> {
    let started = Instant::now();
    let name = server.name.clone();
    let command = server.primary_ssh_command.clone().unwrap_or_default();
    let target = SshTarget::parse(&command).map_err(|e| PeerError::Unreachable {
        server: name.clone(),
        target: command.clone(),
        msg: format!("primary_ssh_command: {e}"),
    })?;
    let repository =
        Repository::open(home, server.repository.as_ref()).map_err(|e| PeerError::Store {
            server: name.clone(),
            msg: e.to_string(),
        })?;
    let catalog = Catalog::open(home)?;
    let moved = Arc::new(AtomicU64::new(0));
    // A pass that will likely copy (the first one, or one after a pass that left
    // backups pending or failed) connects its transfer workers while sync-info runs.
    let likely_to_copy = catalog
        .peer_state(&name)?
        .is_none_or(|s| s.backups_pending > 0 || s.last_error.is_some());
    let pool = likely_to_copy.then(|| {
        let n = server.parallel_jobs.max(1) as usize;
        Pool::start(&target, n, Arc::clone(&moved))
    });
    let result = fetch_sync_info(server, &target, &catalog);
    let doc = match result {
        Ok(doc) => doc,
        Err(e) => {
            record_error(&catalog, &name, &e.to_string());
            return Err(e);
        }
    };
    let (session, doc) = doc;
    tracing::debug!(
        server = %name,
        cipher = session.cipher().unwrap_or_default(),
        wals = doc.wals.len(),
        backups = doc.backups.len(),
        "sync-info answered after {:?}",
        started.elapsed()
    );
    let mut pass = Pass {
        server,
        session,
        sftp: None,
        repo: repository.server(&name),
        catalog,
        seg_size: doc.wal_segment_size.unwrap_or(0),
        doc,
        moved,
        pool,
        stop,
        suppressed: 0,
        batch: Vec::new(),
        committed_at: Instant::now(),
        report: PassReport {
            server: name.clone(),
            primary: target.display(),
            ..Default::default()
        },
        target,
    };
    let outcome = pass.run();
    pass.pool.take();
    pass.report.bytes_moved = pass.moved.load(Ordering::Relaxed);
    pass.report.duration_secs = started.elapsed().as_secs_f64();
    if pass.suppressed > 0 {
        let more = format!("… and {} more error(s)", pass.suppressed);
        pass.report.errors.push(more);
    }
    if let Err(e) = outcome {
        record_error(&pass.catalog, &name, &e.to_string());
        return Err(e);
    }
    Ok(pass.report)
}

fn record_error(catalog: &Catalog, server: &str, msg: &str) {
    let mut st = catalog
        .peer_state(server)
        .ok()
        .flatten()
        .unwrap_or_else(|| PeerState {
            server: server.to_string(),
            ..Default::default()
        });
    st.last_error = Some(msg.to_string());
    st.last_error_at = Some(Utc::now());
    let _ = catalog.set_peer_state(&st);
}

fn fetch_sync_info(
    server: &ServerConfig,
    target: &SshTarget,
    catalog: &Catalog,
) -> Result<(SshSession, SyncInfo), PeerError> {
    let name = &server.name;
    let cursor = catalog.peer_state(name)?.map(|s| s.cursor).unwrap_or(0);
    let asked = Instant::now();
    let session = SshSession::connect(target).map_err(|e| PeerError::Unreachable {
        server: name.clone(),
        target: target.display(),
        msg: e.to_string(),
    })?;
    session.set_timeout(IO_TIMEOUT);
    tracing::debug!(server = %name, "connected to the primary in {:?}", asked.elapsed());
    let cmd = format!(
        "{} sync-info {} --since {cursor} --format json",
        server.primary_pgbk_command,
        shell_quote(name)
    );
    let fail = |msg: String| PeerError::SyncInfo {
        server: name.clone(),
        target: target.display(),
        msg,
    };
    let out = session.exec(&cmd).map_err(|e| fail(e.to_string()))?;
    if !out.success() {
        return Err(fail(format!("exit {}: {}", out.status, out.stderr_line())));
    }
    let doc: SyncInfo =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("unreadable answer: {e}")))?;
    if doc.version > SYNC_INFO_VERSION {
        return Err(fail(format!(
            "answer version {} is newer than this pgbk understands ({SYNC_INFO_VERSION})",
            doc.version
        )));
    }
    if !doc.root.starts_with('/') {
        return Err(fail(format!(
            "server folder '{}' is not absolute",
            doc.root
        )));
    }
    Ok((session, doc))
}

impl Pass<'_> {
    fn error(&mut self, msg: String) {
        if self.report.errors.len() < MAX_REPORTED_ERRORS {
            self.report.errors.push(msg);
        } else {
            self.suppressed += 1;
        }
    }

    fn name(&self) -> &str {
        &self.server.name
    }

    fn remote(&self, rel: &str) -> String {
        format!("{}/{rel}", self.doc.root.trim_end_matches('/'))
    }

    fn pool(&mut self) -> &mut Pool {
        let n = self.server.parallel_jobs.max(1) as usize;
        let (target, moved) = (&self.target, &self.moved);
        self.pool
            .get_or_insert_with(|| Pool::start(target, n, Arc::clone(moved)))
    }

    /// When the transfer workers lost their connection to the primary: waits for the
    /// queued objects (they fail at once) and returns the pass's one error.
    fn lost_error(&mut self) -> Option<PeerError> {
        let msg = self.pool.as_ref().and_then(Pool::lost)?;
        if let Some(pool) = self.pool.as_mut() {
            pool.drain();
        }
        // What was verified before the connection went is kept.
        if let Err(e) = self.commit() {
            return Some(e);
        }
        Some(PeerError::Unreachable {
            server: self.name().to_string(),
            target: self.target.display(),
            msg,
        })
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PeerError + '_ {
        move |source| PeerError::Io(crate::error::IoError::new(path, source))
    }

    fn run(&mut self) -> Result<(), PeerError> {
        let name = self.name().to_string();
        let (Some(system_id), Some(seg_size)) = (self.doc.system_id, self.doc.wal_segment_size)
        else {
            // The primary has nothing for this server yet.
            self.save_state(self.doc.cursor.parse().unwrap_or(0))?;
            return Ok(());
        };
        if !seg_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg_size) {
            return Err(PeerError::Identity {
                server: name,
                msg: format!("the primary reports an invalid wal_segment_size {seg_size}"),
            });
        }
        self.catalog
            .check_server_identity(&name, system_id, seg_size)
            .map_err(|e| PeerError::Identity {
                server: name.clone(),
                msg: format!("the primary manager holds another cluster: {e}"),
            })?;
        self.repo
            .ensure_dirs()
            .map_err(Self::io(self.repo.root()))?;
        let t = Instant::now();
        let cursor = self.copy_wal()?;
        tracing::debug!(server = %name, copied = self.report.wal_copied, "WAL done after {:?}", t.elapsed());
        self.copy_backups()?;
        tracing::debug!(server = %name, copied = self.report.files_copied, "backups done after {:?}", t.elapsed());
        if let Some(e) = self.lost_error() {
            return Err(e);
        }
        self.copy_partial();
        let saved = self.save_state(cursor);
        tracing::debug!(server = %name, "partial and state done after {:?}", t.elapsed());
        saved
    }

    /// Copies the WAL sync-info listed; returns the cursor every file up to which is here.
    ///
    /// Copied files are entered in the catalog in batches of [`WAL_BATCH`]: their
    /// folders are fsynced once (each file's content was fsynced before its rename),
    /// then the batch is inserted in one transaction — so a file is in the catalog
    /// only once its content and name are durable.
    fn copy_wal(&mut self) -> Result<i64, PeerError> {
        let wals = std::mem::take(&mut self.doc.wals);
        let mut cursor: i64 = self.doc.cursor.parse().unwrap_or(0);
        let mut failed_seq: Option<i64> = None;
        let mut pending: Vec<Option<(WalRecord, PathBuf)>> = vec![None; wals.len()];
        let mut any = false;
        let mut done = Vec::new();
        // Small objects (WAL of an idle server, history files) go in batches.
        let mut small: Vec<Job> = Vec::new();
        let mut small_bytes = 0u64;
        for (i, w) in wals.iter().enumerate() {
            if self.stop.load(Ordering::Relaxed) {
                fail_at(w.seq, &mut failed_seq);
                continue;
            }
            let checked = match check_wal(&w.name, &w.path, self.seg_size) {
                Ok(c) => c,
                Err(e) => {
                    self.error(e.to_string());
                    fail_at(w.seq, &mut failed_seq);
                    continue;
                }
            };
            let dest = paths::local_wal_path(&self.repo, &checked);
            if let Some(have) = self.catalog.wal_file(self.name(), &w.name)? {
                if have.checksum == w.checksum && self.stored_at(&dest)? {
                    self.report.wal_present += 1;
                    continue;
                }
                if have.checksum != w.checksum {
                    self.error(format!(
                        "WAL file {}: the primary's checksum {} differs from the copy held here ({}); not replaced",
                        w.name, w.checksum, have.checksum
                    ));
                    fail_at(w.seq, &mut failed_seq);
                    continue;
                }
            }
            let (kind, tli, segno) = match checked.file {
                WalFileName::Segment(s) => (WalKind::Segment, s.tli, Some(s.segno)),
                WalFileName::Partial(s) => (WalKind::Partial, s.tli, Some(s.segno)),
                WalFileName::History(t) => (WalKind::History, t, None),
                WalFileName::BackupHistory(..) => continue,
            };
            let Some(dir) = dest.parent().map(Path::to_path_buf) else {
                continue;
            };
            create_dir_all_private(&dir).map_err(Self::io(&dir))?;
            let job = Job {
                remote: self.remote(&w.path),
                dest,
                expect: Expected {
                    stored_size: w.stored_size,
                    size: w.size,
                    checksum: Some(w.checksum.clone()),
                    stored_checksum: w.stored_checksum.clone(),
                    compressed: checked.compressed,
                },
                tag: i,
                unsynced: true,
            };
            any = true;
            let rec = WalRecord {
                name: w.name.clone(),
                kind,
                timeline: tli,
                segno,
                size: w.size,
                stored_size: w.stored_size,
                checksum: w.checksum.clone(),
                stored_checksum: w.stored_checksum.clone(),
                archived_at: Utc::now(),
            };
            pending[i] = Some((rec, dir));
            if job.expect.stored_size <= MAX_OBJECT {
                small_bytes += job.expect.stored_size;
                small.push(job);
                if batch_full(small.len(), small_bytes) {
                    small_bytes = 0;
                    let batch = std::mem::take(&mut small);
                    done.extend(self.pool().submit_batch(batch));
                }
            } else {
                done.extend(self.pool().submit(job));
            }
            if done.len() >= WAL_BATCH {
                self.enter_wal(&wals, &pending, &mut done, &mut failed_seq)?;
            }
            if self.pool.as_ref().and_then(Pool::lost).is_some() {
                break;
            }
        }
        if !small.is_empty() {
            done.extend(self.pool().submit_batch(small));
        }
        if any {
            done.extend(self.pool().drain());
        }
        self.enter_wal(&wals, &pending, &mut done, &mut failed_seq)?;
        if let Some(e) = self.lost_error() {
            return Err(e);
        }
        if let Some(f) = failed_seq {
            cursor = cursor.min(f - 1);
        }
        Ok(cursor)
    }

    /// Makes the names of copied WAL files durable (one fsync per folder) and enters
    /// them in the catalog in one transaction; failures are reported.
    fn enter_wal(
        &mut self,
        wals: &[super::sync_info::SyncWal],
        pending: &[Option<(WalRecord, PathBuf)>],
        done: &mut Vec<Done>,
        failed_seq: &mut Option<i64>,
    ) -> Result<(), PeerError> {
        let mut records = Vec::new();
        let mut dests = Vec::new();
        let mut dirs: Vec<&Path> = Vec::new();
        for d in done.drain(..) {
            let Some((rec, dir)) = pending.get(d.tag).and_then(Option::as_ref) else {
                continue;
            };
            match d.result {
                Ok(object_sum) => {
                    let mut rec = rec.clone();
                    rec.archived_at = Utc::now();
                    // Verified here, so known even when the primary did not record it.
                    rec.stored_checksum = Some(object_sum);
                    records.push(rec);
                    dests.push(d.dest);
                    if !dirs.contains(&dir.as_path()) {
                        dirs.push(dir);
                    }
                }
                Err(e) => {
                    self.error(format!("WAL file {}: {e}", rec.name));
                    fail_at(wals[d.tag].seq, failed_seq);
                }
            }
        }
        commit_batch(self.repo.root(), &dests).map_err(transfer_io)?;
        for dir in dirs {
            fsync_dir(dir).map_err(Self::io(dir))?;
        }
        self.publish(&dests)?;
        if !records.is_empty() {
            self.catalog.insert_wals(self.name(), &records)?;
            self.report.wal_copied += records.len() as u64;
        }
        Ok(())
    }

    fn copy_backups(&mut self) -> Result<(), PeerError> {
        let name = self.name().to_string();
        let local: Vec<BackupInfo> = self.catalog.backups(&name)?;
        let oldest_done = local
            .iter()
            .filter(|b| b.status == BackupStatus::Done)
            .map(|b| b.backup_id.clone())
            .min();
        let remote = std::mem::take(&mut self.doc.backups);
        // A backup still SYNCING here that the primary no longer lists (deleted there
        // before it was copied) can never complete: it becomes FAILED, content removed.
        for mut gone in local
            .iter()
            .filter(|b| {
                b.status == BackupStatus::Syncing
                    && !remote.iter().any(|r| r.backup_id == b.backup_id)
            })
            .cloned()
        {
            crate::backup::lifecycle::mark_failed(
                &self.repo,
                &self.catalog,
                &mut gone,
                "deleted on the primary manager before it was copied",
            )?;
        }
        for info in remote {
            if let Err(e) = check_backup_id(&info.backup_id) {
                self.error(e.to_string());
                continue;
            }
            let here = local.iter().find(|b| b.backup_id == info.backup_id);
            match here.map(|b| b.status) {
                Some(BackupStatus::Done) => continue,
                Some(BackupStatus::Syncing) => {}
                Some(other) => {
                    self.error(format!(
                        "backup {}: a backup with this id is {other} here; not replaced",
                        info.backup_id
                    ));
                    continue;
                }
                None if oldest_done.as_ref().is_some_and(|o| info.backup_id < *o) => continue,
                None => {}
            }
            if self.stop.load(Ordering::Relaxed) {
                self.report.backups_pending.push(info.backup_id.clone());
                continue;
            }
            match self.copy_backup(info.clone())? {
                true => self.report.backups_copied.push(info.backup_id.clone()),
                false => self.report.backups_pending.push(info.backup_id.clone()),
            }
        }
        Ok(())
    }

    /// Copies one backup; `true` when it is `DONE` here afterwards.
    fn copy_backup(&mut self, remote: BackupInfo) -> Result<bool, PeerError> {
        let mut copy = BackupCopy::start(self, remote)?;
        if !copy.fetch_lists()? || !copy.queue_objects()? {
            return Ok(false);
        }
        copy.wait_for_workers()?;
        copy.finish()
    }

    /// Whether the object received at `dest` (a path under the home) is stored:
    /// on object storage, whether the bucket holds its key; locally, whether the
    /// file is there.
    fn stored_at(&self, dest: &Path) -> Result<bool, PeerError> {
        if !self.repo.repository().is_remote() {
            return Ok(dest.is_file());
        }
        let key = self.key_of(dest)?;
        let meta = self.repo.store().stat(&key).map_err(store_err)?;
        Ok(meta.is_some())
    }

    /// On object storage, the objects of backup `id` in the bucket with their sizes.
    fn stored_objects(&self, id: &str) -> Result<Option<HashMap<String, u64>>, PeerError> {
        if !self.repo.repository().is_remote() {
            return Ok(None);
        }
        let prefix = self.repo.backup_key(id, "");
        let mut keys = HashMap::new();
        for m in self.repo.store().list(&prefix) {
            let m = m.map_err(store_err)?;
            keys.insert(m.key, m.size);
        }
        Ok(Some(keys))
    }

    /// The store key of a path under the home: the repository's layout is the same
    /// on both backends.
    fn key_of(&self, path: &Path) -> Result<String, PeerError> {
        let home = self.repo.repository().home();
        path.strip_prefix(home)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|_| {
                let source = std::io::Error::other("not under the home");
                PeerError::Io(crate::error::IoError::new(path, source))
            })
    }

    /// On object storage, stores verified files (already under their final local
    /// names) in the bucket, create-only and a few at once, then removes the local
    /// copies. Locally there is nothing to do: the files are in place.
    fn publish(&self, dests: &[PathBuf]) -> Result<(), PeerError> {
        if !self.repo.repository().is_remote() || dests.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = dests
            .iter()
            .map(|d| self.key_of(d))
            .collect::<Result<_, _>>()?;
        let store = self.repo.store();
        let next = AtomicU64::new(0);
        let failed: std::sync::Mutex<Option<PeerError>> = std::sync::Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..PUBLISHERS.min(dests.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= dests.len() || failed.lock().map_or(true, |f| f.is_some()) {
                        return;
                    }
                    let put = std::fs::File::open(&dests[i])
                        .map_err(|e| PeerError::Io(crate::error::IoError::new(&dests[i], e)))
                        .and_then(|mut f| {
                            store
                                .put_reader(&keys[i], &mut f, PutMode::Create)
                                .map_err(store_err)
                        });
                    match put {
                        Ok(_) => {
                            let _ = std::fs::remove_file(&dests[i]);
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        match failed.into_inner() {
            Ok(Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Queues `work` (see [`Self::queue_work`]), then as many `held` large objects as
    /// their lane has room for; while `work`'s lane is full, tops up the large lane
    /// and tallies what finishes. Returns the failures tallied.
    fn queue_beside(
        &mut self,
        id: &str,
        mut work: Work,
        held: &mut VecDeque<Job>,
    ) -> Result<u64, PeerError> {
        let mut failed = 0;
        loop {
            let queued = self.pool().try_submit(work);
            while let Some(job) = held.pop_front() {
                if let Err(back) = self.pool().try_submit(Work::One(Box::new(job))) {
                    if let Work::One(job) = back {
                        held.push_front(*job);
                    }
                    break;
                }
            }
            match queued {
                Ok(()) => break,
                Err(back) => {
                    work = back;
                    let mut some = self.pool().wait_some();
                    failed += self.tally(id, &mut some)?;
                }
            }
        }
        let mut some = self.pool().finished();
        failed += self.tally(id, &mut some)?;
        Ok(failed)
    }

    /// Queues `jobs` (emptied) one object each, the largest first.
    fn queue_largest_first(&mut self, id: &str, jobs: &mut Vec<Job>) -> Result<u64, PeerError> {
        jobs.sort_by_key(|j| std::cmp::Reverse(j.expect.stored_size));
        let mut failed = 0;
        for job in jobs.drain(..) {
            failed += self.queue_work(id, Work::One(Box::new(job)))?;
        }
        Ok(failed)
    }

    /// Queues a backup's objects; while the queue is full, tallies (and commits) the
    /// objects that finish meanwhile, so what a killed pass verified is kept even
    /// when a worker spends seconds on one batch. Returns the failures tallied.
    fn queue_work(&mut self, id: &str, work: Work) -> Result<u64, PeerError> {
        self.queue_beside(id, work, &mut VecDeque::new())
    }

    /// Counts finished object copies (verified ones join the batch to commit);
    /// returns how many failed (reported).
    fn tally(&mut self, id: &str, done: &mut Vec<Done>) -> Result<u64, PeerError> {
        let mut failed = 0;
        for d in done.drain(..) {
            match d.result {
                Ok(_) => self.batch.push(d.dest),
                Err(e) => {
                    failed += 1;
                    self.error(format!("backup {id}: {e}"));
                }
            }
        }
        if self.batch.len() >= COMMIT_OBJECTS || self.committed_at.elapsed() >= COMMIT_INTERVAL {
            self.commit()?;
        }
        Ok(failed)
    }

    /// Makes the batch of verified objects durable (one syncfs) and renames them
    /// into their final names.
    fn commit(&mut self) -> Result<(), PeerError> {
        let batch = std::mem::take(&mut self.batch);
        self.committed_at = Instant::now();
        commit_batch(self.repo.root(), &batch).map_err(transfer_io)?;
        self.publish(&batch)?;
        tracing::debug!(
            server = %self.server.name,
            objects = batch.len(),
            "batch committed in {:?}",
            self.committed_at.elapsed()
        );
        self.report.files_copied += batch.len() as u64;
        Ok(())
    }

    /// The SFTP channel of the pass's own session (metadata files, the partial).
    fn main_sftp(&mut self) -> Result<&ssh2::Sftp, TransferError> {
        if self.sftp.is_none() {
            let sftp = self.session.sftp().map_err(|e| TransferError::Remote {
                path: self.doc.root.clone(),
                msg: e.to_string(),
            })?;
            self.sftp = Some(sftp);
        }
        self.sftp.as_ref().ok_or_else(|| TransferError::Remote {
            path: self.doc.root.clone(),
            msg: "no SFTP channel".into(),
        })
    }

    /// Copies the new bytes of the primary's in-progress segment; failures are reported.
    fn copy_partial(&mut self) {
        if let Err(e) = self.try_copy_partial() {
            self.error(format!("partial segment: {e}"));
        }
        self.remove_archived_partials();
    }

    fn try_copy_partial(&mut self) -> Result<(), String> {
        let Some(p) = self.doc.partial.clone() else {
            return Ok(());
        };
        let seg =
            paths::check_streaming_partial(&p.name, self.seg_size).map_err(|e| e.to_string())?;
        if p.path != format!("streaming/{}", p.name) {
            return Err(format!("refused path '{}' for {}", p.path, p.name));
        }
        if p.size > self.seg_size {
            return Err(format!("{} is longer than a segment", p.name));
        }
        if self
            .catalog
            .wal_file(self.name(), &seg.name())
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(());
        }
        let dest = self.repo.streaming_dir().join(&p.name);
        let have = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        self.report.partial = Some(p.name.clone());
        self.report.partial_bytes = have;
        if have == p.size {
            return Ok(());
        }
        let start = if have < p.size { have } else { 0 };
        let remote = self.remote(&p.path);
        let sftp = self.main_sftp().map_err(|e| e.to_string())?;
        let mut src = match sftp.open(Path::new(&remote)) {
            Ok(f) => f,
            // Archived (and removed) since sync-info listed it: the next pass copies it.
            Err(_) => return Ok(()),
        };
        src.seek(SeekFrom::Start(start))
            .map_err(|e| format!("{remote}: {e}"))?;
        let tmp = temp_path(&dest);
        let local = |e: std::io::Error| format!("{}: {e}", tmp.display());
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(local)?;
        let built = (|| -> Result<u64, String> {
            if start > 0 {
                let mut old = std::fs::File::open(&dest).map_err(local)?.take(start);
                std::io::copy(&mut old, &mut out).map_err(local)?;
            }
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = p.size - start;
            while left > 0 {
                let n = src
                    .read(&mut buf[..left.min(256 * 1024) as usize])
                    .map_err(|e| format!("{remote}: {e}"))?;
                if n == 0 {
                    return Err(format!(
                        "{remote}: shorter than the {} bytes listed",
                        p.size
                    ));
                }
                out.write_all(&buf[..n]).map_err(local)?;
                self.moved.fetch_add(n as u64, Ordering::Relaxed);
                left -= n as u64;
            }
            out.sync_all().map_err(local)?;
            Ok(p.size)
        })();
        match built {
            Ok(len) => {
                drop(out);
                rename_durable(&tmp, &dest).map_err(local)?;
                self.report.partial_bytes = len;
                Ok(())
            }
            Err(e) => {
                drop(out);
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Removes partials in `streaming/` whose segment is archived here now.
    fn remove_archived_partials(&mut self) {
        let current = self.doc.partial.as_ref().map(|p| p.name.clone());
        let Ok(entries) = std::fs::read_dir(self.repo.streaming_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().to_string();
            let Some(WalFileName::Partial(seg)) = WalFileName::parse(&file, self.seg_size) else {
                continue;
            };
            let archived = |n: &str| {
                self.catalog
                    .wal_file(self.name(), n)
                    .ok()
                    .flatten()
                    .is_some()
            };
            let _ = &current;
            if archived(&seg.name()) || archived(&file) {
                let _ = remove_durable(&e.path());
                if self.report.partial.as_deref() == Some(&file) {
                    self.report.partial = None;
                    self.report.partial_bytes = 0;
                }
            }
        }
    }

    fn save_state(&mut self, cursor: i64) -> Result<(), PeerError> {
        let name = self.name().to_string();
        let previous = self.catalog.peer_state(&name)?.unwrap_or_default();
        let (local_lsn, _) = if self.seg_size > 0 {
            wal_position(&self.repo, &self.catalog, &name, self.seg_size)?
        } else {
            (None, None)
        };
        let primary_lsn = self.doc.last_lsn;
        let lag = match (primary_lsn, local_lsn) {
            (Some(p), Some(l)) => Some(p.0.saturating_sub(l.0)),
            (Some(p), None) => Some(p.0),
            _ => None,
        };
        let now = Utc::now();
        let pending = self.report.backups_pending.len() as u64;
        let caught_up = lag.is_none_or(|l| l == 0);
        let state = PeerState {
            server: name,
            cursor,
            last_pass_at: Some(now),
            primary_lsn,
            local_lsn,
            caught_up_at: if caught_up {
                Some(now)
            } else {
                previous.caught_up_at
            },
            backups_pending: pending,
            last_error: self.report.errors.first().cloned(),
            last_error_at: (!self.report.errors.is_empty()).then_some(now),
        };
        self.catalog.set_peer_state(&state)?;
        self.report.cursor = cursor;
        self.report.primary_lsn = primary_lsn;
        self.report.local_lsn = local_lsn;
        self.report.lag_bytes = lag;
        Ok(())
    }
}
