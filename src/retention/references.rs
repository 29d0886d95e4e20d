//! Objects shared by reference on object storage. An rsync backup in a bucket
//! refers to the objects of files unchanged since an earlier backup stored them
//! (`in_backup` in files.jsonl, the backup ids in backup.json's `references`)
//! instead of uploading them again. As with a hard link on the local backend, a
//! delete never takes such an object from a backup that still refers to it:
//!
//! - the deleted backup's `backup.json` goes first (it stops being listed), then
//!   every object of it that no remaining backup refers to. What is left is a shell
//!   that only the backups referring to it read from;
//! - while a backup that may refer to it is still running (`STARTED`, which
//!   recorded its `references` before reading anything), nothing of it goes;
//! - deleting a backup also sweeps the shells it referred to: objects nothing
//!   refers to any more go, and a shell nobody refers to is gone entirely.
//!
//! A crash between a backup.json's removal and its sweep leaves objects nothing
//! refers to (space, never data): the next delete of a backup referring to the same
//! shell sweeps them.

use crate::backup::{is_backup_id, BackupDir, BackupError, BackupInfo, BackupStatus};
use crate::catalog::Catalog;
use crate::repo::ServerRepo;
use std::collections::HashSet;

fn store_err(e: crate::repo::store::StoreError) -> BackupError {
    BackupError::Store(Box::new(e))
}

/// On object storage, deletes backup `id`'s objects (its catalog row is already
/// gone): backup.json first, then every object no remaining backup refers to,
/// then the objects of the shells it referred to that nothing refers to any more.
/// Returns the bytes deleted (0 on the local backend, where nothing is done).
pub fn remove_objects(repo: &ServerRepo, catalog: &Catalog, id: &str) -> Result<u64, BackupError> {
    if !repo.repository().is_remote() {
        return Ok(0);
    }
    let dir = BackupDir::new(repo, id);
    // What it referred to, before its record goes (absent: already removed).
    let record = dir.read_small("backup.json")?.unwrap_or_default();
    let referred = serde_json::from_slice::<BackupInfo>(&record)
        .map(|info| info.references)
        .unwrap_or_default();
    dir.store()
        .delete(&[dir.key("backup.json")])
        .map_err(store_err)?;
    let remaining: Vec<BackupInfo> = catalog.backups(repo.server())?;
    let mut freed = record.len() as u64 + sweep(repo, &remaining, id)?;
    for r in referred {
        if r != id && is_backup_id(&r) && !remaining.iter().any(|b| b.backup_id == r) {
            freed += sweep(repo, &remaining, &r)?;
        }
    }
    Ok(freed)
}

/// Deletes the objects of the deleted backup `id` that none of `remaining` refers
/// to; nothing while a backup that may refer to it is still being taken. Returns
/// the bytes deleted.
fn sweep(repo: &ServerRepo, remaining: &[BackupInfo], id: &str) -> Result<u64, BackupError> {
    let users: Vec<&BackupInfo> = remaining
        .iter()
        .filter(|b| b.references.iter().any(|r| r == id))
        .collect();
    if users
        .iter()
        .any(|b| !matches!(b.status, BackupStatus::Done | BackupStatus::Failed))
    {
        tracing::info!(
            "backup {id}: its objects stay while a backup that refers to them is being taken"
        );
        return Ok(0);
    }
    let mut keep: HashSet<String> = HashSet::new();
    for b in users.iter().filter(|b| b.status == BackupStatus::Done) {
        for e in BackupDir::new(repo, &b.backup_id).files()? {
            let e = e?;
            if e.in_backup.as_deref() == Some(id) {
                if let Some(o) = e.object {
                    keep.insert(o);
                }
            }
        }
    }
    if !keep.is_empty() {
        tracing::info!(
            "backup {id}: {} object(s) stay, referred to by {}",
            keep.len(),
            users
                .iter()
                .map(|b| b.backup_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    BackupDir::new(repo, id).delete_objects_but(&|rel| keep.contains(rel))
}
