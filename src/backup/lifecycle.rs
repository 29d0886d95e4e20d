//! Keeping backup statuses true: which changes a server's backups are due
//! ([`reconcile`], pure: a `STARTED` backup whose pgbk process is gone is due to be
//! `FAILED`, a `WAITING_FOR_WALS` backup whose WAL is all archived `DONE`, backup.json
//! wins over the catalog, a delete a crash interrupted is due to finish), and the
//! writes a failure needs (content removed, `FAILED` recorded). Applying the due
//! changes is the `maintenance` module's, for the verbs that own the repository.

use super::wal_range::missing_segments;
use super::{save, BackupDir, BackupError, BackupInfo, BackupStatus};
use crate::catalog::Catalog;
use crate::lock::JobLock;
use crate::repo::durable::{fsync_dir, remove_durable, remove_stale_temp_files};
use crate::repo::ServerRepo;
use std::path::{Path, PathBuf};

/// The lock a running backup of the server holds.
pub fn backup_lock_path(repo: &ServerRepo) -> PathBuf {
    crate::lock::backup_lock(repo)
}

/// Removes a backup's stored content (data, tablespaces, file list, manifest, resume
/// journal and leftover temporary files), keeping backup.json so the failure stays
/// on record.
pub fn remove_content(dir: &BackupDir) -> Result<(), BackupError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io(crate::error::IoError::new(path, source))
    };
    if dir.is_remote() {
        remove_stored_objects(dir, true)?;
        if dir.root().is_dir() {
            remove_stale_temp_files(dir.root()).map_err(io(dir.root()))?;
            for f in [
                dir.files_path(),
                dir.manifest_path(),
                dir.root().join(super::bundle::LIST),
                dir.root().join(super::rsync_upload::STAGED_INDEX),
                super::resume::journal_path(dir),
            ] {
                remove_durable(&f).map_err(io(&f))?;
            }
            // An rsync backup's staged copy.
            for sub in [dir.data_dir(), dir.root().join("tablespaces")] {
                match std::fs::remove_dir_all(&sub) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&sub)(e)),
                }
            }
        }
        return Ok(());
    }
    for sub in [
        dir.data_dir(),
        dir.root().join("tablespaces"),
        dir.root().join("bundles"),
    ] {
        match std::fs::remove_dir_all(&sub) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&sub)(e)),
        }
    }
    remove_durable(&dir.files_path()).map_err(io(&dir.files_path()))?;
    remove_durable(&dir.manifest_path()).map_err(io(&dir.manifest_path()))?;
    let bundles = dir.root().join(super::bundle::LIST);
    remove_durable(&bundles).map_err(io(&bundles))?;
    let journal = super::resume::journal_path(dir);
    remove_durable(&journal).map_err(io(&journal))?;
    // files.jsonl / backup_manifest / bundles.jsonl still under their temporary
    // names (a killed backup).
    remove_stale_temp_files(dir.root()).map_err(io(dir.root()))?;
    fsync_dir(dir.root()).map_err(io(dir.root()))
}

/// Deletes every object of a backup in its store, in batches: all of them, or all
/// but `backup.json` with `keep_info` (a FAILED backup stays on record). Without
/// `keep_info`, `backup.json` goes first, so the bucket stops listing the backup
/// before any of its files disappear.
pub fn remove_stored_objects(dir: &BackupDir, keep_info: bool) -> Result<(), BackupError> {
    let keep = dir.key("backup.json");
    if !keep_info {
        dir.store()
            .delete(std::slice::from_ref(&keep))
            .map_err(|e| BackupError::Store(Box::new(e)))?;
    }
    dir.delete_objects_but(&|rel| rel == "backup.json")
        .map(|_| ())
}

/// Marks a backup `FAILED` with a reason and removes its partial content: all of
/// it, or, for a streamed backup whose resume journal names stored files, all but
/// those files (kept for `backup --resume`; the next backup that does not resume
/// removes them).
pub fn mark_failed(
    repo: &ServerRepo,
    catalog: &Catalog,
    info: &mut BackupInfo,
    reason: &str,
) -> Result<(), BackupError> {
    info.status = BackupStatus::Failed;
    info.error = Some(reason.to_string());
    info.pid = None;
    let dir = BackupDir::new(repo, &info.backup_id);
    let removed = if super::resume::is_resumable(&dir, info) {
        super::resume::keep_for_resume(&dir)
    } else {
        remove_content(&dir)
    };
    if !dir.is_remote() {
        save(repo, catalog, info)?;
        return removed;
    }
    // A store that fails now (often why the backup failed) must not leave the
    // catalog saying STARTED: the failure is recorded in the catalog whatever the
    // bucket says. Its backup.json, STARTED, never reads as DONE, and the objects
    // left go with `delete` of the FAILED backup.
    if let Err(e) = removed {
        tracing::warn!(
            "backup {}: its partial objects could not be removed now: {e}",
            info.backup_id
        );
    }
    if let Err(e) = dir.write_info(info) {
        tracing::warn!(
            "backup {}: FAILED recorded in the catalog only: {e}",
            info.backup_id
        );
    }
    catalog.upsert_backup(info)?;
    Ok(())
}

/// The folder prefix a backup is renamed to while `delete` removes it: from then
/// on it is gone for every reader, and maintenance finishes the job after a crash.
pub const DELETING_PREFIX: &str = ".deleting-";

/// A change a server's repository is due: what the next verb owning the repository
/// (`backup`, `delete`, `cron`, `rebuild-catalog`) writes, and reading verbs only
/// report.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A delete a crash interrupted: its `.deleting-<id>` folder and catalog row go.
    FinishDelete,
    /// The catalog row follows backup.json (missing, or behind it).
    Record(BackupInfo),
    /// A `STARTED` backup whose process is gone becomes `FAILED` (content removed);
    /// the backup as on record, and the reason recorded.
    MarkFailed(BackupInfo, String),
    /// A `WAITING_FOR_WALS` backup whose WAL is all archived becomes `DONE`.
    Done(BackupInfo),
}

/// One change due for one backup.
#[derive(Debug, Clone, PartialEq)]
pub struct DueChange {
    /// The backup concerned.
    pub backup_id: String,
    /// What is due.
    pub change: Change,
}

impl std::fmt::Display for DueChange {
    /// One line for a reading verb's stderr: what is stale, and who fixes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = &self.backup_id;
        match &self.change {
            Change::FinishDelete => write!(
                f,
                "backup {id} is stale: its delete was interrupted; the next backup, delete or cron finishes it"
            ),
            Change::Record(_) => write!(
                f,
                "backup {id} is stale: the catalog is behind its backup.json; the next backup or cron records it"
            ),
            Change::MarkFailed(info, _) => match info.pid {
                Some(pid) => write!(
                    f,
                    "backup {id} is stale: its process {pid} is gone; the next backup or cron marks it FAILED"
                ),
                None => write!(
                    f,
                    "backup {id} is stale: its process is gone; the next backup or cron marks it FAILED"
                ),
            },
            Change::Done(_) => write!(
                f,
                "backup {id} is stale: all the WAL it needs is archived; the next backup or cron marks it DONE"
            ),
        }
    }
}

/// A server's backups as they are once the due changes are applied (oldest first),
/// and those changes, in the order they apply.
#[derive(Debug, Clone, Default)]
pub struct Reconciled {
    /// Every backup, statuses brought up to date.
    pub backups: Vec<BackupInfo>,
    /// What the repository is due for that.
    pub due: Vec<DueChange>,
}

/// Compares a server's backups on disk (backup.json, `.deleting-` folders), its
/// catalog rows and the holder of its backup lock, and says which changes are due;
/// writes nothing, so it runs on a read-only home. A `STARTED` backup whose pgbk
/// process is gone is due to be `FAILED` (its partial files removed), a
/// `WAITING_FOR_WALS` backup whose WAL is all archived `DONE`, backup.json (the
/// truth) wins over the catalog, and a delete a crash interrupted is due to finish.
pub fn reconcile(repo: &ServerRepo, catalog: &Catalog) -> Result<Reconciled, BackupError> {
    let server = repo.server();
    let mut due = Vec::new();
    let mut on_disk = Vec::new();
    if let Ok(entries) = std::fs::read_dir(repo.backups_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            match name.strip_prefix(DELETING_PREFIX) {
                Some(id) => due.push(DueChange {
                    backup_id: id.to_string(),
                    change: Change::FinishDelete,
                }),
                None if super::is_backup_id(&name) => on_disk.push(name),
                None => {}
            }
        }
    }
    due.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    let deleting: Vec<String> = due.iter().map(|d| d.backup_id.clone()).collect();
    let mut known: Vec<BackupInfo> = catalog.backups(server)?;
    known.retain(|b| !deleting.contains(&b.backup_id));
    // Backups on disk that the catalog missed (a crash between the two writes).
    for id in on_disk {
        if known.iter().any(|b| b.backup_id == id) {
            continue;
        }
        if let Ok(info) = BackupDir::new(repo, &id).read_info() {
            due.push(DueChange {
                backup_id: id,
                change: Change::Record(info.clone()),
            });
            known.push(info);
        }
    }
    known.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    let holder = JobLock::holder(&backup_lock_path(repo)).ok().flatten();
    for info in known.iter_mut() {
        if !matches!(
            info.status,
            BackupStatus::Started | BackupStatus::WaitingForWals
        ) {
            continue;
        }
        // backup.json is the truth; the catalog row may be behind it.
        if let Ok(disk) = BackupDir::new(repo, &info.backup_id).read_info() {
            if disk != *info {
                let listed = due.iter().any(|d| d.backup_id == disk.backup_id);
                if !listed {
                    due.push(DueChange {
                        backup_id: disk.backup_id.clone(),
                        change: Change::Record(disk.clone()),
                    });
                }
                *info = disk;
            }
        }
        match info.status {
            BackupStatus::Started => {
                let alive = info.pid.is_some_and(|p| holder == Some(p as i32));
                if !alive {
                    let pid = info
                        .pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "unknown".into());
                    let reason = format!(
                        "the pgbk process taking it (pid {pid}) ended before the backup finished"
                    );
                    due.push(DueChange {
                        backup_id: info.backup_id.clone(),
                        change: Change::MarkFailed(info.clone(), reason.clone()),
                    });
                    info.status = BackupStatus::Failed;
                    info.error = Some(reason);
                    info.pid = None;
                }
            }
            BackupStatus::WaitingForWals if missing_segments(info, repo, catalog)?.is_empty() => {
                info.status = BackupStatus::Done;
                due.push(DueChange {
                    backup_id: info.backup_id.clone(),
                    change: Change::Done(info.clone()),
                });
            }
            _ => {}
        }
    }
    Ok(Reconciled {
        backups: known,
        due,
    })
}

/// A server's backups for a verb that only reads: brought up to date in memory
/// ([`reconcile`]), each stale one reported in one line (a warning on stderr), and
/// nothing written.
pub fn current(repo: &ServerRepo, catalog: &Catalog) -> Result<Vec<BackupInfo>, BackupError> {
    let r = reconcile(repo, catalog)?;
    for d in &r.due {
        tracing::warn!("{d}");
    }
    Ok(r.backups)
}
