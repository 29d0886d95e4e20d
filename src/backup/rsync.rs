//! Taking a base backup with the `rsync` method (Barman's `backup_method = rsync`):
//! `pg_backup_start` / `pg_backup_stop` on one ordinary SQL session held open for
//! the whole backup, the data directory and tablespaces copied with `rsync` over
//! SSH by `parallel_jobs` workers, files stored uncompressed (so that the next
//! backup's rsync can compare against them) and checksummed.
//!
//! Order, so that a refusal leaves nothing behind on either side:
//! 1. SQL facts (version, system id, data directory, tablespaces);
//! 2. backup.json `STARTED`;
//! 3. an SSH session (ssh2) checks the host key against `known_hosts` and that the
//!    data directory and rsync are there — an unknown or changed host key fails the
//!    backup (`FAILED`, with the reason) before `pg_backup_start` and before any copy;
//! 4. `pg_backup_start`, remote listing, rsync workers (`global/pg_control` copied
//!    last, as pg_basebackup sends it), `pg_backup_stop(false)`
//!    whose `labelfile` / `spcmapfile` become `data/backup_label` /
//!    `data/tablespace_map`, plain entries of files.jsonl;
//! 5. checksums, files.jsonl, backup.json `WAITING_FOR_WALS`, then the same WAL
//!    wait as the streaming method ([`super::run::wait_for_wal`]).
//!
//! Lists with no previous copy to compare against (the first backup, a new
//! tablespace, `reuse_backup = off`) are streamed with GNU tar instead, unless the
//! link is said to be slow (see [`super::rsync_tar`]): the files stored are the same.
//!
//! With `reuse_backup = link` (`copy`), rsync gets the previous `DONE` rsync backup's
//! folders as `--link-dest` (`--copy-dest`): unchanged files become hard links to
//! that backup's files (which pgbk never modifies), neither transferred nor stored
//! twice. Files whose server mtime falls within two seconds before the previous
//! backup began or later (by the earlier of the two hosts' clocks) and whose size
//! and mtime second still equal the previous copy's may have changed within the
//! second rsync's quick check sees, so they are compared by content (`--checksum`).

use super::rsync_copy::{
    accepts_fast_ciphers, balanced_shares, excluded, listing_command, only_vanished, parse_listing,
    remote_prefix, rsync_shell, run_job, whole_file, write_list, CopyJob, RemoteEntry, RsyncError,
    RsyncSetup, StoredHook, TransferStats,
};
use super::rsync_index::{index, previous_sums, CopiedRoot, EarlySums, PreviousSums};
use super::rsync_tar::{destination, run_tar_job, TAR_PROBE};
use super::rsync_upload::{referable, remove_older_staged, upload_staged, UploadError};
pub use super::run::RsyncOptions;
use super::run::{
    connect, fail, new_backup_id, segment_name, stopped, wait_for_wal, BackupRequest, Outcome,
    TakeError,
};
use super::tar_store::{create_file, sync_filesystem};
use super::{save, BackupDir, BackupInfo, BackupStatus, FileEntry, FileKind, TablespaceInfo};
use crate::catalog::Catalog;
use crate::config::ReuseBackup;
use crate::pg::{Connection, PgError};
use crate::progress::Progress;
use crate::repo::durable::{create_dir_all_private, write_atomic};
use crate::repo::ServerRepo;
use crate::ssh::{shell_quote, SshSession, SshTarget};
use crate::wal::{Lsn, SystemId, TimeLineId};
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// A tablespace of the server with where it lives.
#[derive(Debug, Clone)]
struct Tablespace {
    oid: u32,
    name: String,
    location: String,
}

/// What the server says before the backup starts.
struct Facts {
    version: u32,
    system_id: SystemId,
    seg_size: u64,
    in_recovery: bool,
    timeline: TimeLineId,
    data_directory: String,
    tablespaces: Vec<Tablespace>,
}

/// One value of a one-row result.
fn value(rows: &[crate::pg::Row], col: usize, what: &str) -> Result<String, String> {
    rows.first()
        .and_then(|r| r.get_idx(col))
        .map(str::to_string)
        .ok_or_else(|| format!("the server returned no {what}"))
}

async fn facts(sql: &mut Connection) -> Result<Facts, String> {
    let q = |e: PgError| e.to_string();
    let rows = sql
        .simple_query(
            "SELECT current_setting('server_version_num'), \
             (SELECT system_identifier FROM pg_control_system()), \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
             pg_is_in_recovery(), current_setting('data_directory'), \
             (SELECT timeline_id FROM pg_control_checkpoint())",
        )
        .await
        .map_err(q)?;
    let num = |col: usize, what: &str| -> Result<u64, String> {
        let v = value(&rows, col, what)?;
        v.parse()
            .map_err(|_| format!("the server returned '{v}' as {what}"))
    };
    let facts_version = num(0, "server_version_num")? as u32;
    let system_id = SystemId(num(1, "system identifier")?);
    let seg_size = num(2, "wal_segment_size")?;
    let in_recovery = value(&rows, 3, "pg_is_in_recovery()")? == "t";
    let data_directory = value(&rows, 4, "data_directory")?;
    let timeline = TimeLineId(num(5, "timeline")? as u32);
    let rows = sql
        .simple_query(
            "SELECT oid, spcname, pg_tablespace_location(oid) FROM pg_tablespace \
             WHERE pg_tablespace_location(oid) <> '' ORDER BY oid",
        )
        .await
        .map_err(q)?;
    let tablespaces = rows
        .iter()
        .filter_map(|r| {
            Some(Tablespace {
                oid: r.get_idx(0)?.parse().ok()?,
                name: r.get_idx(1)?.to_string(),
                location: r.get_idx(2)?.to_string(),
            })
        })
        .collect();
    Ok(Facts {
        version: facts_version,
        system_id,
        seg_size,
        in_recovery,
        timeline,
        data_directory,
        tablespaces,
    })
}

/// Whether rsync's quick check (size and mtime to the second) would find the
/// previous backup's copy unchanged: only then can a change within that second go
/// unseen, so only such files need comparing by content.
fn quick_check_equal(previous: &std::path::Path, e: &RemoteEntry) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(previous)
        .is_ok_and(|m| m.is_file() && m.len() == e.size && m.mtime() == e.mtime.floor() as i64)
}

/// The control file, copied after every other file.
const PG_CONTROL: &str = "global/pg_control";

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `START TIMELINE` of a backup_label.
fn label_timeline(label: &str) -> Option<TimeLineId> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|v| v.trim().parse().ok())
        .map(TimeLineId)
}

/// Takes an rsync backup. Called by `take_held` with the backup
/// lock held and statuses refreshed.
pub(super) async fn take(
    req: &BackupRequest,
    opts: &RsyncOptions,
    repo: &ServerRepo,
    catalog: &Catalog,
    existing: &[BackupInfo],
    progress: Arc<dyn Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, TakeError> {
    let refused = |m: String| TakeError::Refused(format!("server '{}': {m}", req.server));
    let target = SshTarget::parse(&opts.ssh_command).map_err(|e| refused(e.to_string()))?;
    let shell =
        rsync_shell(&opts.ssh_command, accepts_fast_ciphers(&opts.ssh_command)).map_err(refused)?;
    let pg = |source| TakeError::Pg {
        server: req.server.clone(),
        source,
    };
    let mut sql = connect(&req.conninfo, false, &req.application_name)
        .await
        .map_err(pg)?;
    let facts = facts(&mut sql).await.map_err(|msg| TakeError::Server {
        server: req.server.clone(),
        msg,
    })?;
    if facts.version < super::base_backup::MIN_SERVER_VERSION {
        return Err(refused(
            "pgbk backups need PostgreSQL 15 or later (pg_backup_start)".into(),
        ));
    }
    catalog.check_server_identity(&req.server, facts.system_id, facts.seg_size)?;

    let (id, begin_time) = new_backup_id(repo, existing).await;
    let dir = BackupDir::new(repo, &id);
    let mut info = BackupInfo {
        name: req.name.clone(),
        method: "rsync".to_string(),
        server_version: facts.version,
        system_id: facts.system_id,
        timeline: facts.timeline,
        wal_segment_size: facts.seg_size,
        pid: Some(std::process::id()),
        tablespaces: facts
            .tablespaces
            .iter()
            .map(|t| TablespaceInfo {
                oid: t.oid,
                name: Some(t.name.clone()),
                location: t.location.clone(),
            })
            .collect(),
        ..BackupInfo::new(&id, &req.server, begin_time)
    };
    // The previous backup whose files this one may reuse.
    let previous = match opts.reuse {
        ReuseBackup::Off => None,
        _ => existing
            .iter()
            .rev()
            .find(|b| b.status == BackupStatus::Done && b.method == "rsync")
            .cloned(),
    };
    // On object storage the unchanged files are that backup's objects, by
    // reference: recorded before anything is read from it, so a delete of it (or
    // of a backup it refers to) meanwhile keeps every object (see
    // `retention::references`).
    if let (Some(p), ReuseBackup::Link, true) = (&previous, opts.reuse, dir.is_remote()) {
        info.references = super::rsync_upload::references_of(p);
    }
    if let Err(e) = create_dir_all_private(dir.root()) {
        return Err(TakeError::Io {
            path: dir.root().to_path_buf(),
            source: e,
        });
    }
    if let Err(e) = save(repo, catalog, &info) {
        let _ = std::fs::remove_dir_all(dir.root());
        let _ = catalog.delete_backup(&req.server, &id);
        return Err(e.into());
    }
    tracing::info!(server = %req.server, backup = %id, "rsync backup started");
    let copied = Copy {
        req,
        opts,
        target: &target,
        shell: &shell,
        facts: &facts,
        dir: &dir,
        repo,
        catalog,
        previous: previous.as_ref(),
        progress: progress.clone(),
        stop: &mut stop,
        abort: Arc::new(AtomicBool::new(false)),
        jobs: req.jobs.max(1),
    }
    .run(&mut sql, &mut info)
    .await;
    sql.close().await;
    progress.finish();
    if let Err(reason) = copied {
        return Err(fail(repo, catalog, info, &reason));
    }
    info.status = BackupStatus::WaitingForWals;
    info.end_time = Some(Utc::now());
    info.pid = None;
    if let Err(e) = save(repo, catalog, &info) {
        return Err(fail(repo, catalog, info, &e.to_string()));
    }
    tracing::info!(
        server = %req.server,
        backup = %id,
        "files stored; waiting for WAL {} to {}",
        info.begin_wal.as_deref().unwrap_or("?"),
        info.end_wal.as_deref().unwrap_or("?")
    );
    wait_for_wal(req, info, repo, catalog, facts.in_recovery, &mut stop).await
}

/// Runs a blocking job on tokio's blocking pool; `stop` sets `abort` for it.
async fn blocking<T: Send + 'static>(
    stop: &mut watch::Receiver<bool>,
    abort: Arc<AtomicBool>,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let mut handle = tokio::task::spawn_blocking(f);
    tokio::select! {
        r = &mut handle => r.map_err(|e| format!("a worker failed: {e}"))?,
        _ = stopped(stop) => {
            abort.store(true, Ordering::Relaxed);
            let _ = handle.await;
            Err("interrupted".to_string())
        }
    }
}

/// One rsync backup between STARTED and the stored file list: what every step
/// needs, so that each numbered step below is one method. A step returns the reason
/// on failure; the caller marks the backup FAILED (and the SQL session's end aborts
/// the server's side of the backup).
struct Copy<'a> {
    req: &'a BackupRequest,
    opts: &'a RsyncOptions,
    target: &'a SshTarget,
    shell: &'a str,
    facts: &'a Facts,
    dir: &'a BackupDir,
    repo: &'a ServerRepo,
    catalog: &'a Catalog,
    /// The previous `DONE` rsync backup whose files this one may reuse.
    previous: Option<&'a BackupInfo>,
    progress: Arc<dyn Progress>,
    stop: &'a mut watch::Receiver<bool>,
    /// Set when `stop` interrupts a blocking job.
    abort: Arc<AtomicBool>,
    /// Workers (`parallel_jobs`, at least one).
    jobs: usize,
}

/// A remote tree to copy (the data directory, or a tablespace by oid) with where
/// it lives on the server.
type Tree = (Option<u32>, String);

impl Copy<'_> {
    /// Runs every step in order.
    async fn run(&mut self, sql: &mut Connection, info: &mut BackupInfo) -> Result<(), String> {
        let (session, tar_possible) = self.check_host().await?;
        let begin = self.backup_start(sql, info).await?;
        let (listings, session) = self.list_remote(session).await?;
        let mut roots = self.local_roots(listings)?;
        let early = self.transfer(session, tar_possible, &roots, info).await?;
        let stopped_at = self.backup_stop(sql, info, begin, &mut roots[0].1).await?;
        let size_bytes = self.store_file_list(roots, early, stopped_at, info).await?;
        if self.dir.is_remote() {
            self.upload(info, size_bytes).await?;
        }
        Ok(())
    }

    /// Step 1: The host key, the data directory and rsync, before the server is touched.
    /// Returns the SSH session and whether GNU tar is there.
    async fn check_host(&mut self) -> Result<(SshSession, bool), String> {
        let pgdata = self.facts.data_directory.clone();
        let t = self.target.clone();
        blocking(self.stop, self.abort.clone(), move || {
            let s = SshSession::connect(&t).map_err(|e| e.to_string())?;
            // GNU tar (which streams first copies, see rsync_tar) answers "gnu-tar".
            let check = format!(
                "test -r {q}/PG_VERSION || {{ echo 'cannot read {d}/PG_VERSION' >&2; exit 3; }}; \
                 command -v rsync >/dev/null || {{ echo 'rsync is not installed' >&2; exit 4; }}; \
                 {probe} && echo gnu-tar; exit 0",
                q = shell_quote(&pgdata),
                d = pgdata.replace('\'', ""),
                probe = TAR_PROBE,
            );
            let out = s.exec(&check).map_err(|e| e.to_string())?;
            if !out.success() {
                return Err(format!("ssh {}: {}", t.display(), out.stderr_line()));
            }
            let tar = String::from_utf8_lossy(&out.stdout).contains("gnu-tar");
            Ok((s, tar))
        })
        .await
    }

    /// Step 2: pg_backup_start, on the session held until pg_backup_stop. Returns the
    /// backup's start LSN.
    async fn backup_start(
        &mut self,
        sql: &mut Connection,
        info: &mut BackupInfo,
    ) -> Result<Lsn, String> {
        let label = format!("pgbk backup {}", info.backup_id);
        let start = format!(
            "SELECT pg_backup_start({}, {}), extract(epoch FROM now())",
            literal(&label),
            self.req.immediate_checkpoint
        );
        let rows = tokio::select! {
            r = sql.simple_query(&start) => r.map_err(|e| format!("pg_backup_start: {e}"))?,
            _ = stopped(self.stop) => return Err("interrupted".into()),
        };
        let begin: Lsn = value(&rows, 0, "start LSN of pg_backup_start")?
            .parse()
            .map_err(|e| format!("pg_backup_start: {e}"))?;
        let seg = self.facts.seg_size;
        // The server's clock (the transaction's start, before the checkpoint): the next
        // backup compares file mtimes, written by that host's clock, with it.
        info.server_begin_time = value(&rows, 1, "now()")?
            .parse::<f64>()
            .ok()
            .and_then(|t| DateTime::from_timestamp_millis((t * 1000.0) as i64));
        info.begin_lsn = Some(begin);
        info.begin_wal = Some(segment_name(info.timeline, begin.segno(seg), seg));
        save(self.repo, self.catalog, info).map_err(|e| e.to_string())?;
        tracing::info!(backup = %info.backup_id, "pg_backup_start: backup starts at {begin}");
        Ok(begin)
    }

    /// Step 3: The remote file lists, one per tree (the data directory first), without
    /// what is never copied. Hands the SSH session back.
    async fn list_remote(
        &mut self,
        session: SshSession,
    ) -> Result<(Vec<(Tree, Vec<RemoteEntry>)>, SshSession), String> {
        let mut trees: Vec<Tree> = vec![(None, self.facts.data_directory.clone())];
        trees.extend(
            self.facts
                .tablespaces
                .iter()
                .map(|t| (Some(t.oid), t.location.clone())),
        );
        blocking(self.stop, self.abort.clone(), move || {
            let mut all = Vec::new();
            for (oid, remote) in trees {
                let out = session
                    .exec(&listing_command(&remote))
                    .map_err(|e| e.to_string())?;
                if !out.success() && !only_vanished(&out.stderr) {
                    return Err(format!("listing {remote} over ssh: {}", out.stderr_line()));
                }
                let entries: Vec<RemoteEntry> = parse_listing(&out.stdout)?
                    .into_iter()
                    .filter(|e| !excluded(&e.path, oid.is_some()))
                    .collect();
                all.push(((oid, remote), entries));
            }
            Ok((all, session))
        })
        .await
    }

    /// Step 4a: The local folders of each tree, and the previous backup's copy to compare
    /// against.
    fn local_roots(
        &self,
        listings: Vec<(Tree, Vec<RemoteEntry>)>,
    ) -> Result<Vec<(String, CopiedRoot)>, String> {
        let prev_dir = self.previous_dir();
        let mut roots = Vec::new();
        for ((oid, remote), entries) in listings {
            let (local, object_prefix, prev) = match oid {
                None => (
                    self.dir.data_dir(),
                    "data".to_string(),
                    prev_dir.as_ref().map(|d| d.data_dir()),
                ),
                Some(o) => (
                    self.dir.tablespace_dir(o),
                    format!("tablespaces/{o}"),
                    prev_dir
                        .as_ref()
                        .filter(|_| {
                            self.previous
                                .is_some_and(|p| p.tablespaces.iter().any(|t| t.oid == o))
                        })
                        .map(|d| d.tablespace_dir(o)),
                ),
            };
            let prev = prev.filter(|p| p.is_dir());
            create_dir_all_private(&local).map_err(|e| format!("{}: {e}", local.display()))?;
            for e in entries.iter().filter(|e| e.is_dir) {
                let p = local.join(&e.path);
                create_dir_all_private(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            roots.push((
                remote,
                CopiedRoot {
                    tablespace: oid,
                    local,
                    object_prefix,
                    previous: prev,
                    entries,
                },
            ));
        }
        Ok(roots)
    }

    /// The previous backup's folder.
    fn previous_dir(&self) -> Option<BackupDir> {
        self.previous
            .map(|p| BackupDir::new(self.repo, &p.backup_id))
    }

    /// Step 4b: The balanced file lists of the workers, written next to the backup: per
    /// tree, files compared by size and mtime, then files that may have changed
    /// within the second the previous backup saw them (compared by content).
    /// `pg_control` is left out: it goes last.
    fn plan_jobs(&self, roots: &[(String, CopiedRoot)]) -> Result<Vec<(usize, CopyJob)>, String> {
        // Files that may have changed within the second the previous backup saw them.
        let suspect_after = self.previous.map(|p| {
            let began = match p.server_begin_time {
                Some(server) => server.min(p.begin_time),
                None => p.begin_time,
            };
            began.timestamp() as f64 - 2.0
        });
        let mut copy_jobs = Vec::new();
        for (r, (remote, root)) in roots.iter().enumerate() {
            let suspects: Vec<bool> = root
                .entries
                .iter()
                .map(|e| match (&root.previous, suspect_after) {
                    (Some(prev), Some(t)) if !e.is_dir && e.mtime >= t => {
                        quick_check_equal(&prev.join(&e.path), e)
                    }
                    _ => false,
                })
                .collect();
            for checksum in [false, true] {
                let files: Vec<(usize, u64)> = root
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !e.is_dir)
                    .filter(|(_, e)| root.tablespace.is_some() || e.path != PG_CONTROL)
                    .filter(|(i, _)| suspects[*i] == checksum)
                    .map(|(i, e)| (i, e.size))
                    .collect();
                if files.is_empty() {
                    continue;
                }
                for (k, share) in balanced_shares(&files, self.jobs).into_iter().enumerate() {
                    if share.is_empty() {
                        continue;
                    }
                    let list = self.dir.root().join(format!(
                        ".rsync-{r}-{}-{k}.list.tmp.{}",
                        u8::from(checksum),
                        std::process::id()
                    ));
                    let paths: Vec<&str> = share
                        .iter()
                        .map(|&i| root.entries[i].path.as_str())
                        .collect();
                    write_list(&list, &paths).map_err(|e| format!("{}: {e}", list.display()))?;
                    copy_jobs.push((
                        k,
                        CopyJob {
                            remote_dir: remote.clone(),
                            local_dir: root.local.clone(),
                            reuse_dir: root.previous.clone(),
                            list,
                            checksum,
                            bytes: share.iter().map(|&i| root.entries[i].size).sum(),
                        },
                    ));
                }
            }
        }
        Ok(copy_jobs)
    }

    /// Step 4c: The workers (rsync, or tar for first copies), then `pg_control`. Returns
    /// the checksums taken as files were stored.
    async fn transfer(
        &mut self,
        session: SshSession,
        tar_possible: bool,
        roots: &[(String, CopiedRoot)],
        info: &mut BackupInfo,
    ) -> Result<Arc<EarlySums>, String> {
        let copy_jobs = self.plan_jobs(roots)?;
        // pg_control goes last, after every other file (as in pg_basebackup): a backup of
        // a standby depends on it.
        // pg_control is read last through the SSH session already open (8 KiB: a new
        // connection would cost more than the copy).
        let control = match roots[0].1.entries.iter().find(|e| e.path == PG_CONTROL) {
            Some(e) => (
                format!("{}/{PG_CONTROL}", roots[0].0.trim_end_matches('/')),
                roots[0].1.local.join(PG_CONTROL),
                e.mtime,
            ),
            None => {
                return Err(format!(
                    "{PG_CONTROL} is missing from the data directory listing"
                ))
            }
        };
        let opts = self.opts;
        // Lists with nothing to compare against go through tar (see rsync_tar), unless
        // the link is said to be slow (rsync's -z and --bwlimit then matter).
        let tar_first = whole_file(opts.network_compression, opts.bandwidth_limit) && tar_possible;
        if !tar_possible {
            tracing::info!(backup = %info.backup_id, "no GNU tar on the server: first copies go through rsync too");
        }
        let first = copy_jobs
            .iter()
            .filter(|(_, j)| j.reuse_dir.is_none())
            .count();
        if tar_first && first > 0 {
            tracing::info!(
                backup = %info.backup_id,
                "{first} of {} file list(s) have no previous copy to compare with: streamed with tar",
                copy_jobs.len()
            );
        }
        let jobs = self.jobs;
        let setup = RsyncSetup {
            shell: self.shell.to_string(),
            remote: remote_prefix(self.target),
            reuse: opts.reuse,
            bwlimit: opts.bandwidth_limit.map(|bw| (bw / jobs as u64).max(1)),
            compress: opts.network_compression,
            whole_file: whole_file(opts.network_compression, opts.bandwidth_limit),
        };
        let total: u64 = copy_jobs.iter().map(|(_, j)| j.bytes).sum();
        self.progress
            .start(&format!("backup {}", info.backup_id), Some(total));
        let lists: Vec<PathBuf> = copy_jobs.iter().map(|(_, j)| j.list.clone()).collect();
        let worker_progress = self.progress.clone();
        let worker_abort = self.abort.clone();
        // Each file is checksummed as soon as rsync has stored it, while the copy goes on.
        let early = Arc::new(EarlySums::default());
        let hook_sums = early.clone();
        let hook: StoredHook = Arc::new(move |p: &std::path::Path| hook_sums.record(p));
        let tar_sums = early.clone();
        let tar_to = tar_first.then(|| destination(self.target));
        let stats = blocking(self.stop, self.abort.clone(), move || {
            let tar = tar_to.as_deref().map(|d| (d, &*tar_sums));
            let mut stats = run_workers(
                &setup,
                tar,
                copy_jobs,
                jobs,
                &worker_abort,
                &*worker_progress,
                &hook,
            )?;
            let (remote, local, mtime) = control;
            stats.bytes += copy_control(&session, &remote, &local, mtime, &tar_sums)?;
            stats.files += 1;
            Ok(stats)
        })
        .await;
        for l in &lists {
            let _ = std::fs::remove_file(l);
        }
        let stats = stats?;
        self.progress.finish();
        info.transferred_files = Some(stats.files);
        info.transferred_bytes = Some(stats.bytes);
        Ok(early)
    }

    /// Step 5: pg_backup_stop: the backup_label and tablespace_map to restore, written
    /// into the data directory's copy (`data_root`). Returns when they were written
    /// (their mtime in files.jsonl, and the tablespace links').
    async fn backup_stop(
        &mut self,
        sql: &mut Connection,
        info: &mut BackupInfo,
        begin: Lsn,
        data_root: &mut CopiedRoot,
    ) -> Result<f64, String> {
        let rows = tokio::select! {
            r = sql.simple_query("SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(false)") =>
                r.map_err(|e| format!("pg_backup_stop: {e}"))?,
            _ = stopped(self.stop) => return Err("interrupted".into()),
        };
        let end: Lsn = value(&rows, 0, "end LSN of pg_backup_stop")?
            .parse()
            .map_err(|e| format!("pg_backup_stop: {e}"))?;
        let labelfile = value(&rows, 1, "backup_label")?;
        let spcmap = rows
            .first()
            .and_then(|r| r.get_idx(2))
            .unwrap_or("")
            .to_string();
        let seg = self.facts.seg_size;
        if let Some(tli) = label_timeline(&labelfile) {
            info.timeline = tli;
            info.begin_wal = Some(segment_name(tli, begin.segno(seg), seg));
        }
        info.end_lsn = Some(end);
        info.end_timeline = Some(info.timeline);
        info.end_wal = Some(segment_name(
            info.timeline,
            end.prev_segno(seg).max(begin.segno(seg)),
            seg,
        ));
        tracing::info!(backup = %info.backup_id, "pg_backup_stop: backup ends at {end}");
        let now = Utc::now().timestamp() as f64;
        for (name, text) in [
            ("backup_label", labelfile.as_str()),
            ("tablespace_map", spcmap.as_str()),
        ] {
            if text.is_empty() {
                continue;
            }
            let p = data_root.local.join(name);
            write_atomic(&p, text.as_bytes()).map_err(|e| format!("{}: {e}", p.display()))?;
            data_root.entries.push(RemoteEntry {
                path: name.to_string(),
                is_dir: false,
                mode: 0o600,
                mtime: now,
                size: text.len() as u64,
            });
        }
        Ok(now)
    }

    /// Step 6: Checksums and files.jsonl, everything flushed, then the list committed.
    /// Returns the backup's size in bytes.
    async fn store_file_list(
        &mut self,
        roots: Vec<(String, CopiedRoot)>,
        early: Arc<EarlySums>,
        stopped_at: f64,
        info: &mut BackupInfo,
    ) -> Result<u64, String> {
        let links: Vec<FileEntry> = self
            .facts
            .tablespaces
            .iter()
            .map(|t| FileEntry {
                target: Some(t.location.clone()),
                ..FileEntry::bare(
                    format!("pg_tblspc/{}", t.oid),
                    None,
                    FileKind::Symlink,
                    0o777,
                    stopped_at as i64,
                )
            })
            .collect();
        let prev_sums: PreviousSums = match &self.previous_dir() {
            Some(d) if self.opts.reuse == ReuseBackup::Link => previous_sums(d),
            _ => PreviousSums::new(),
        };
        let roots: Vec<CopiedRoot> = roots.into_iter().map(|(_, r)| r).collect();
        let dir2 = self.dir.clone();
        let threads = self.jobs;
        let p2 = self.progress.clone();
        let (files, totals) = blocking(self.stop, self.abort.clone(), move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("pgbk-blake3-{i}"))
                .build()
                .map_err(|e| format!("starting checksum threads: {e}"))?;
            let (files, totals) = index(&dir2, &roots, links, &prev_sums, &early, &pool, &*p2)?;
            sync_filesystem(dir2.root()).map_err(|e| format!("{}: {e}", dir2.root().display()))?;
            Ok((files, totals))
        })
        .await?;
        files
            .commit()
            .map_err(|e| format!("{}: {e}", self.dir.files_path().display()))?;
        info.size_bytes = totals.size_bytes;
        info.stored_bytes = totals.new_bytes;
        info.reused_bytes = Some(totals.reused_bytes);
        info.file_count = totals.file_count;
        info.has_manifest = false;
        Ok(totals.size_bytes)
    }

    /// Step 7: On object storage, the staged copy goes up as a streamed backup's would.
    async fn upload(&mut self, info: &mut BackupInfo, size_bytes: u64) -> Result<(), String> {
        let (dir2, store_opts, p2) = (
            self.dir.clone(),
            self.req.store.clone(),
            self.progress.clone(),
        );
        let tablespaces: Vec<(u32, String)> = self
            .facts
            .tablespaces
            .iter()
            .map(|t| (t.oid, t.location.clone()))
            .collect();
        let abort2 = self.abort.clone();
        let backups_dir = self.repo.backups_dir();
        let threads = self.jobs;
        // With `link`, files the previous backup stored with the same content are
        // referred to, not uploaded (its backup.json named them in `references`).
        let previous = match (self.previous, self.opts.reuse) {
            (Some(p), ReuseBackup::Link) if info.references.contains(&p.backup_id) => {
                Some(BackupDir::new(self.repo, &p.backup_id))
            }
            _ => None,
        };
        let (stored_bytes, referred) = blocking(self.stop, self.abort.clone(), move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("pgbk-zstd-{i}"))
                .build()
                .map_err(|e| format!("starting compression threads: {e}"))?;
            let referable = previous.as_ref().map(referable).unwrap_or_default();
            p2.start(&format!("upload {}", dir2.id()), Some(size_bytes));
            let (stored, referred) = upload_staged(
                &dir2,
                &tablespaces,
                &pool,
                &store_opts,
                &abort2,
                &*p2,
                &referable,
            )
            .map_err(|e| {
                if let UploadError::Staged(_) = e {
                    // No staged copy is a base to trust: the next backup starts afresh.
                    remove_older_staged(&backups_dir, dir2.id());
                }
                e.to_string()
            })?;
            p2.finish();
            let bytes = stored.stored_bytes;
            stored.commit().map_err(|e| e.to_string())?;
            Ok((bytes, referred))
        })
        .await?;
        // Files referred to are shared with an earlier backup in the bucket.
        info.stored_bytes = stored_bytes;
        info.reused_bytes = Some(referred);
        // The newest staged copy is the next backup's base, unless nothing reuses it.
        let keep = match self.opts.reuse {
            ReuseBackup::Off => "",
            _ => info.backup_id.as_str(),
        };
        remove_older_staged(&self.repo.backups_dir(), keep);
        Ok(())
    }
}

/// Copies `global/pg_control` (after every other file, as pg_basebackup sends it:
/// a backup of a standby depends on it) with `cat` on the open session, gives it the
/// listed mtime, checksums it into `sums`; returns its size.
fn copy_control(
    session: &SshSession,
    remote: &str,
    local: &std::path::Path,
    mtime: f64,
    sums: &EarlySums,
) -> Result<u64, String> {
    let out = session
        .exec(&format!("cat {}", shell_quote(remote)))
        .map_err(|e| format!("reading {remote} over ssh: {e}"))?;
    if !out.success() {
        return Err(format!("reading {remote} over ssh: {}", out.stderr_line()));
    }
    let io = |e: std::io::Error| format!("{}: {e}", local.display());
    let mut f = create_file(local).map_err(io)?;
    std::io::Write::write_all(&mut f, &out.stdout).map_err(io)?;
    let secs = mtime.max(0.0);
    f.set_times(std::fs::FileTimes::new().set_modified(
        std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::new(secs.trunc() as u64, (secs.fract() * 1e9) as u32),
    ))
    .map_err(io)?;
    drop(f);
    sums.insert(
        local,
        out.stdout.len() as u64,
        blake3::hash(&out.stdout).to_hex().to_string(),
    );
    Ok(out.stdout.len() as u64)
}

/// Where first copies go through tar: the ssh destination and the checksums taken
/// on the way.
type TarFirst<'a> = Option<(&'a str, &'a EarlySums)>;

/// Copies one job: with tar when it has nothing to compare against and `tar` says
/// so, else with rsync.
fn copy_one(
    setup: &RsyncSetup,
    tar: TarFirst<'_>,
    job: &CopyJob,
    abort: &AtomicBool,
    advanced: &dyn Fn(u64),
    stored: Option<StoredHook>,
) -> Result<TransferStats, RsyncError> {
    match tar {
        Some((dest, sums)) if job.reuse_dir.is_none() => {
            run_tar_job(setup, dest, job, abort, advanced, sums)
        }
        _ => run_job(setup, job, abort, advanced, stored),
    }
}

/// Runs the jobs on `jobs` worker threads (each job's share index picks its worker),
/// summing rsync's figures. The first failure stops the others.
fn run_workers(
    setup: &RsyncSetup,
    tar: TarFirst<'_>,
    copy_jobs: Vec<(usize, CopyJob)>,
    jobs: usize,
    abort: &AtomicBool,
    progress: &dyn Progress,
    stored: &StoredHook,
) -> Result<TransferStats, String> {
    let mut per_worker: Vec<Vec<CopyJob>> = vec![Vec::new(); jobs];
    for (k, j) in copy_jobs {
        per_worker[k % jobs].push(j);
    }
    let done = AtomicU64::new(0);
    let results: Vec<Result<TransferStats, RsyncError>> = std::thread::scope(|s| {
        let handles: Vec<_> = per_worker
            .iter()
            .map(|list| {
                let done = &done;
                s.spawn(move || {
                    let mut sum = TransferStats::default();
                    let advanced = |n: u64| progress.set(done.fetch_add(n, Ordering::Relaxed) + n);
                    for job in list {
                        match copy_one(setup, tar, job, abort, &advanced, Some(stored.clone())) {
                            Ok(st) => {
                                sum.files += st.files;
                                sum.bytes += st.bytes;
                            }
                            Err(e) => {
                                abort.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(sum)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(RsyncError::Failed("an rsync worker panicked".into())))
            })
            .collect()
    });
    let mut total = TransferStats::default();
    let mut first_err: Option<RsyncError> = None;
    for r in results {
        match r {
            Ok(st) => {
                total.files += st.files;
                total.bytes += st.bytes;
            }
            // "interrupted" is only the echo of another worker's failure.
            Err(e) if matches!(first_err, None | Some(RsyncError::Interrupted)) => {
                first_err = Some(e)
            }
            Err(_) => {}
        }
    }
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_timeline_of_a_backup_label() {
        let label = "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\n\
                     CHECKPOINT LOCATION: 0/9000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-11-25 03:00:00 UTC\n\
                     LABEL: pgbk backup 20261125T030000\nSTART TIMELINE: 3\n";
        assert_eq!(label_timeline(label), Some(TimeLineId(3)));
        assert_eq!(label_timeline("nothing"), None);
        assert_eq!(literal("it's"), "'it''s'");
    }
}
