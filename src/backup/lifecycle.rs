//! Keeping backup statuses true: a `STARTED` backup whose pgbk process is gone becomes
//! `FAILED` (its partial files removed), a `WAITING_FOR_WALS` backup whose WAL is all
//! archived becomes `DONE`, backup.json (the truth) wins over the catalog, and a
//! delete a crash interrupted (`.deleting-<id>`) is finished.

use super::wal_range::missing_segments;
use super::{save, BackupDir, BackupError, BackupInfo, BackupStatus};
use crate::catalog::Catalog;
use crate::lock::JobLock;
use crate::repo::durable::{fsync_dir, remove_durable, remove_stale_temp_files};
use crate::repo::ServerRepo;
use std::path::{Path, PathBuf};

/// The lock a running backup of the server holds.
pub fn backup_lock_path(repo: &ServerRepo) -> PathBuf {
    repo.lock_dir().join("backup.lock")
}

/// Removes a backup's stored content (data, tablespaces, file list, manifest and
/// leftover temporary files), keeping backup.json so the failure stays on record.
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
    let store = dir.store();
    let prefix = format!("{}/", dir.key("").trim_end_matches('/'));
    let keep = dir.key("backup.json");
    if !keep_info {
        store
            .delete(std::slice::from_ref(&keep))
            .map_err(|e| BackupError::Store(Box::new(e)))?;
    }
    let mut batch = Vec::new();
    for meta in store.list(&prefix) {
        let meta = meta.map_err(|e| BackupError::Store(Box::new(e)))?;
        if meta.key != keep {
            batch.push(meta.key);
        }
        if batch.len() >= 1000 {
            store
                .delete(&batch)
                .map_err(|e| BackupError::Store(Box::new(e)))?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store
            .delete(&batch)
            .map_err(|e| BackupError::Store(Box::new(e)))?;
    }
    Ok(())
}

/// Marks a backup `FAILED` with a reason and removes its partial content.
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
    let removed = remove_content(&dir);
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

/// Brings every backup of a server up to date and returns them, oldest first.
pub fn refresh(repo: &ServerRepo, catalog: &Catalog) -> Result<Vec<BackupInfo>, BackupError> {
    let server = repo.server();
    // A delete a crash interrupted is finished first: its folder is already hidden.
    crate::retention::finish_interrupted_deletes(repo, catalog, server)?;
    let mut known = catalog.backups(server)?;
    // Backups on disk that the catalog missed (a crash between the two writes).
    if let Ok(entries) = std::fs::read_dir(repo.backups_dir()) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            if !super::is_backup_id(&id) || known.iter().any(|b| b.backup_id == id) {
                continue;
            }
            if let Ok(info) = BackupDir::new(repo, &id).read_info() {
                catalog.upsert_backup(&info)?;
                known.push(info);
            }
        }
        known.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    }
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
                catalog.upsert_backup(&disk)?;
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
                    mark_failed(
                        repo,
                        catalog,
                        info,
                        &format!("the pgbk process taking it (pid {pid}) ended before the backup finished"),
                    )?;
                }
            }
            BackupStatus::WaitingForWals if missing_segments(info, repo, catalog)?.is_empty() => {
                info.status = BackupStatus::Done;
                save(repo, catalog, info)?;
            }
            _ => {}
        }
    }
    Ok(known)
}
