//! Applying the changes a server's backups are due (see
//! [`crate::backup::lifecycle::reconcile`]): the write half of keeping statuses
//! true, run only by the verbs that own the repository.

use crate::backup::lifecycle::{mark_failed, reconcile, Change, DueChange, DELETING_PREFIX};
use crate::backup::{is_backup_id, save, BackupError, BackupInfo};
use crate::catalog::Catalog;
use crate::repo::ServerRepo;
use crate::retention::{remove_objects, remove_tree};

/// Brings every backup of a server up to date (reconcile, then apply) and returns
/// them, oldest first.
pub fn refresh(repo: &ServerRepo, catalog: &Catalog) -> Result<Vec<BackupInfo>, BackupError> {
    let r = reconcile(repo, catalog)?;
    apply(repo, catalog, &r.due)?;
    Ok(r.backups)
}

/// Writes the due changes, in order: interrupted deletes finished, catalog rows
/// following backup.json, `FAILED` (content removed) and `DONE` recorded.
pub fn apply(repo: &ServerRepo, catalog: &Catalog, due: &[DueChange]) -> Result<(), BackupError> {
    for d in due {
        match &d.change {
            Change::FinishDelete => finish_delete(repo, catalog, &d.backup_id)?,
            Change::Record(info) => catalog.upsert_backup(info)?,
            Change::MarkFailed(info, reason) => {
                mark_failed(repo, catalog, &mut info.clone(), reason)?;
            }
            Change::Done(info) => save(repo, catalog, info)?,
        }
    }
    Ok(())
}

/// Completes deletes a crash interrupted: every `.deleting-<id>` folder loses its
/// catalog row and is removed. Returns the ids finished.
pub fn finish_interrupted_deletes(
    repo: &ServerRepo,
    catalog: &Catalog,
) -> Result<Vec<String>, BackupError> {
    let dir = repo.backups_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(crate::error::IoError::new(dir, source).into()),
    };
    let mut done = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(id) = name.strip_prefix(DELETING_PREFIX) {
            finish_delete(repo, catalog, id)?;
            done.push(id.to_string());
        }
    }
    Ok(done)
}

/// Finishes one interrupted delete: the catalog row, the stored objects, then the
/// `.deleting-<id>` folder.
fn finish_delete(repo: &ServerRepo, catalog: &Catalog, id: &str) -> Result<(), BackupError> {
    let server = repo.server();
    let dir = repo.backups_dir();
    if is_backup_id(id) {
        catalog.delete_backup(server, id)?;
        remove_objects(repo, catalog, id)?;
    }
    remove_tree(&dir.join(format!("{DELETING_PREFIX}{id}")), &dir)?;
    tracing::info!(server, "finished the interrupted delete of backup {id}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupDir, BackupStatus};
    use chrono::Utc;

    #[test]
    fn an_interrupted_delete_is_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(tmp.path(), "pg1");
        let catalog = Catalog::open(tmp.path()).unwrap();
        let b = BackupInfo {
            status: BackupStatus::Done,
            ..BackupInfo::new("20260101T000000", "pg1", Utc::now())
        };
        std::fs::create_dir_all(BackupDir::new(&repo, &b.backup_id).data_dir()).unwrap();
        save(&repo, &catalog, &b).unwrap();
        let deleting = repo
            .backups_dir()
            .join(format!("{DELETING_PREFIX}{}", b.backup_id));
        std::fs::rename(BackupDir::new(&repo, &b.backup_id).root(), &deleting).unwrap();
        // A reading verb sees it gone, and leaves the row and folder alone.
        let r = reconcile(&repo, &catalog).unwrap();
        assert!(r.backups.is_empty());
        assert_eq!(r.due.len(), 1);
        assert_eq!(catalog.backups::<BackupInfo>("pg1").unwrap().len(), 1);
        let done = finish_interrupted_deletes(&repo, &catalog).unwrap();
        assert_eq!(done, [b.backup_id.as_str()]);
        assert!(catalog.backups::<BackupInfo>("pg1").unwrap().is_empty());
        assert!(!deleting.exists());
    }
}
