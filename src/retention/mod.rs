//! Retention: which backups and which archived WAL may go, and removing them
//! crash-safely (`delete`). The rules are pure functions over backup metadata and the
//! WAL catalog, so they are tested without a repository.

pub mod policy;
pub mod references;

pub use policy::{obsolete, RetentionPolicy, WindowUnit};
pub use references::remove_objects;

use crate::backup::{BackupDir, BackupError, BackupInfo, BackupStatus, KeepTarget};
use crate::catalog::{Catalog, WalKind, WalRecord};
use crate::repo::durable::{fsync_dir, rename_durable};
use crate::repo::ServerRepo;
use crate::wal::WalSegment;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The prefix a backup folder is renamed to while it is being deleted.
pub use crate::backup::lifecycle::DELETING_PREFIX;

/// The WAL segment range (segment numbers, inclusive) a backup needs, if known.
fn own_range(b: &BackupInfo) -> Option<(u64, u64)> {
    let seg = b.wal_segment_size;
    let (begin, end) = (b.begin_lsn?, b.end_lsn?);
    if seg == 0 {
        return None;
    }
    let first = begin.segno(seg);
    Some((first, end.prev_segno(seg).max(first)))
}

/// The archived WAL files (segments and partial segments, never history files) that no
/// backup in `remaining` needs, by name, in WAL order.
///
/// - A backup that is not `FAILED` and not kept `standalone` (an ordinary backup, or
///   one kept `full`) needs every segment from its `begin_wal` on: point-in-time
///   recovery from it replays all later WAL. The oldest of them is the anchor; WAL
///   from the anchor on stays.
/// - A backup kept `standalone` needs only its own range, `begin_wal`..`end_wal`.
/// - A backup whose start is not known yet (a backup starting right now) might need
///   anything: nothing is removed.
/// - Without any remaining backup that needs WAL, nothing is removed: WAL is only
///   ever removed because a backup makes it obsolete.
/// - When only `standalone` backups remain, WAL after the newest of them stays.
pub fn removable_wal(remaining: &[BackupInfo], wal_files: &[WalRecord]) -> Vec<String> {
    let needing: Vec<&BackupInfo> = remaining
        .iter()
        .filter(|b| b.status != BackupStatus::Failed)
        .collect();
    if needing.is_empty() {
        return Vec::new();
    }
    let mut anchor: Option<u64> = None;
    let mut standalone: Vec<(u64, u64)> = Vec::new();
    for b in &needing {
        let Some((first, last)) = own_range(b) else {
            // Start unknown: be safe, keep everything.
            return Vec::new();
        };
        if b.keep == Some(KeepTarget::Standalone) {
            standalone.push((first, last));
        } else {
            anchor = Some(anchor.map_or(first, |a| a.min(first)));
        }
    }
    // With only standalone backups, nothing after the newest one's end is removed.
    let limit = anchor.unwrap_or_else(|| standalone.iter().map(|r| r.1 + 1).max().unwrap_or(0));
    wal_files
        .iter()
        .filter(|w| matches!(w.kind, WalKind::Segment | WalKind::Partial))
        .filter(|w| {
            w.segno
                .is_some_and(|s| s < limit && !standalone.iter().any(|&(a, z)| a <= s && s <= z))
        })
        .map(|w| w.name.clone())
        .collect()
}

/// Why a backup may not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteRefusal {
    /// It is being taken right now.
    #[error("server '{server}': backup {backup_id} is still being taken (pid {pid}); wait for it to end")]
    Running {
        server: String,
        backup_id: String,
        pid: String,
    },
    /// It carries a keep annotation.
    #[error("server '{server}': backup {backup_id} is kept ({keep}); release it first with 'pgbk keep {server} {backup_id} --release'")]
    Kept {
        server: String,
        backup_id: String,
        keep: KeepTarget,
    },
    /// Incremental backups are built on it.
    #[error("server '{server}': backup {backup_id} is the parent of incremental backup(s) {dependents}; delete those first, newest first")]
    HasDependents {
        server: String,
        backup_id: String,
        dependents: String,
    },
    /// It is the only DONE backup.
    #[error("server '{server}': backup {backup_id} is the last DONE backup; add --force to delete it anyway")]
    LastDone { server: String, backup_id: String },
    /// Deleting it would leave fewer DONE backups than `minimum_redundancy`.
    #[error("server '{server}': backup {backup_id} is not deleted: minimum_redundancy = {minimum} and the server has {done} DONE backups; add --force to delete it anyway")]
    MinimumRedundancy {
        server: String,
        backup_id: String,
        minimum: u32,
        done: usize,
    },
}

/// Checks the rules that forbid deleting `target` (one of `all`, the server's backups):
/// a running or kept backup never; without `force`, not the last DONE one nor one
/// that would leave fewer DONE backups than `minimum_redundancy` (as Barman refuses).
pub fn refuse_delete(
    target: &BackupInfo,
    all: &[BackupInfo],
    minimum_redundancy: u32,
    force: bool,
) -> Result<(), DeleteRefusal> {
    let ids = || (target.server.clone(), target.backup_id.clone());
    if target.status == BackupStatus::Started {
        let (server, backup_id) = ids();
        let pid = target
            .pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        return Err(DeleteRefusal::Running {
            server,
            backup_id,
            pid,
        });
    }
    if let Some(keep) = target.keep {
        let (server, backup_id) = ids();
        return Err(DeleteRefusal::Kept {
            server,
            backup_id,
            keep,
        });
    }
    let dependents: Vec<&str> = crate::backup::chain::descendants(&target.backup_id, all)
        .iter()
        .filter(|d| d.status != BackupStatus::Failed)
        .map(|d| d.backup_id.as_str())
        .collect();
    if !dependents.is_empty() {
        let (server, backup_id) = ids();
        return Err(DeleteRefusal::HasDependents {
            server,
            backup_id,
            dependents: dependents.join(", "),
        });
    }
    let done = all
        .iter()
        .filter(|b| b.status == BackupStatus::Done)
        .count();
    if !force && target.status == BackupStatus::Done && done <= 1 {
        let (server, backup_id) = ids();
        return Err(DeleteRefusal::LastDone { server, backup_id });
    }
    if !force && target.status == BackupStatus::Done && done <= minimum_redundancy as usize {
        let (server, backup_id) = ids();
        return Err(DeleteRefusal::MinimumRedundancy {
            server,
            backup_id,
            minimum: minimum_redundancy,
            done,
        });
    }
    Ok(())
}

/// What `delete_backup` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deleted {
    /// Server name.
    pub server: String,
    /// The backup removed.
    pub backup_id: String,
    /// Bytes the backup's stored files took (its `stored_bytes`); on object
    /// storage, the bytes of the objects deleted (an object a remaining backup
    /// refers to stays).
    pub freed_bytes: u64,
    /// The WAL files removed, in WAL order.
    pub removed_wal: Vec<String>,
    /// Bytes those WAL files took on disk.
    pub removed_wal_bytes: u64,
    /// No backup that needs WAL remains, so no WAL was removed.
    pub no_backup_left: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io(crate::error::IoError::new(path, source))
}

/// The folder a backup is moved to while it is deleted.
fn deleting_path(repo: &ServerRepo, backup_id: &str) -> PathBuf {
    repo.backups_dir()
        .join(format!("{DELETING_PREFIX}{backup_id}"))
}

/// Deletes a backup crash-safely, then the archived WAL no remaining backup needs:
/// 1. the folder is renamed to `.deleting-<id>` (durably): from here the backup is
///    gone for every reader, and maintenance (`finish_interrupted_deletes`) completes the job if
///    pgbk dies;
/// 2. its catalog row is removed; 3. the folder is removed;
/// 4. each WAL file of [`removable_wal`]: the file first, then its catalog row.
///
/// The caller has checked [`refuse_delete`].
pub fn delete_backup(
    repo: &ServerRepo,
    catalog: &Catalog,
    info: &BackupInfo,
) -> Result<Deleted, BackupError> {
    let server = info.server.as_str();
    let dir = BackupDir::new(repo, &info.backup_id);
    // A failed backup's content was removed already; only backup.json is left.
    let freed_bytes = if info.status == BackupStatus::Failed {
        0
    } else {
        info.stored_bytes
    };
    let hidden = deleting_path(repo, &info.backup_id);
    match rename_durable(dir.root(), &hidden) {
        Ok(()) => {}
        // The folder is already gone (removed by hand): only the catalog row is left.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.root().exists() => {}
        Err(e) => return Err(io_err(dir.root())(e)),
    }
    catalog.delete_backup(server, &info.backup_id)?;
    // On object storage (the local `.deleting-<id>` folder is the record that the
    // delete is under way, so a crash here is finished later).
    let deleted_bytes = remove_objects(repo, catalog, &info.backup_id)?;
    remove_tree(&hidden, &repo.backups_dir())?;
    // In a bucket, what the objects deleted took: those a remaining backup refers
    // to stay.
    let freed_bytes = if repo.repository().is_remote() {
        deleted_bytes
    } else {
        freed_bytes
    };

    let removed = remove_unneeded_wal(repo, catalog, server, info.wal_segment_size)?;
    Ok(Deleted {
        server: server.to_string(),
        backup_id: info.backup_id.clone(),
        freed_bytes,
        removed_wal: removed.names,
        removed_wal_bytes: removed.bytes,
        no_backup_left: removed.no_backup_left,
    })
}

/// What [`remove_unneeded_wal`] removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RemovedWal {
    /// The WAL files removed, in WAL order.
    pub names: Vec<String>,
    /// Bytes they took on disk.
    pub bytes: u64,
    /// No backup that needs WAL remains, so none was removed.
    pub no_backup_left: bool,
}

/// Removes the archived WAL files of [`removable_wal`] for the server's backups as the
/// catalog lists them now: each file first (durably), then its catalog row, so a crash
/// in between leaves rows whose file is gone, which every reader already treats as
/// missing. `fallback_seg_size` is used when the archive has no recorded segment size.
pub fn remove_unneeded_wal(
    repo: &ServerRepo,
    catalog: &Catalog,
    server: &str,
    fallback_seg_size: u64,
) -> Result<RemovedWal, BackupError> {
    let remaining = catalog.backups(server)?;
    let wal = catalog.wal_files(server)?;
    let names: BTreeSet<String> = removable_wal(&remaining, &wal).into_iter().collect();
    let mut doomed: Vec<&WalRecord> = wal.iter().filter(|w| names.contains(&w.name)).collect();
    // The cluster's segment size, as the archive recorded it.
    let seg_size = match catalog.server_identity(server)? {
        Some((_, size)) if size > 0 => size,
        _ => fallback_seg_size,
    };
    if seg_size == 0 {
        doomed.clear();
    }
    if repo.repository().is_remote() {
        let keys: Vec<String> = doomed.iter().map(|w| wal_key(repo, w, seg_size)).collect();
        repo.store()
            .delete(&keys)
            .map_err(|e| BackupError::Store(Box::new(e)))?;
    }
    let mut dirs = BTreeSet::new();
    for w in doomed.iter().filter(|_| !repo.repository().is_remote()) {
        let path = wal_path(repo, w, seg_size);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        if let Some(d) = path.parent() {
            dirs.insert(d.to_path_buf());
        }
    }
    for d in &dirs {
        fsync_dir(d).map_err(io_err(d))?;
    }
    catalog.delete_wals(server, doomed.iter().map(|w| w.name.as_str()))?;
    Ok(RemovedWal {
        names: doomed.iter().map(|w| w.name.clone()).collect(),
        bytes: doomed.iter().map(|w| w.stored_size).sum(),
        no_backup_left: remaining.iter().all(|b| b.status == BackupStatus::Failed),
    })
}

/// What [`apply_retention`] did on one server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// Server name.
    pub server: String,
    /// The policy applied, in Barman's spelling.
    pub policy: String,
    /// Each obsolete backup deleted, oldest first, with the WAL its delete freed.
    pub deleted: Vec<Deleted>,
    /// WAL removed after the deletes (older than every retained backup needs).
    pub removed_wal: RemovedWal,
}

/// Applies a retention policy to a server: every backup [`obsolete`] names (judged on
/// backup.json, the truth, re-read first) is deleted with [`delete_backup`], oldest
/// first, then the archived WAL no retained backup needs is removed (a `keep full`
/// backup keeps everything after it, a `standalone` one its own range, history files
/// always stay). The caller holds the server's retention lock and has refreshed the
/// backup statuses.
pub fn apply_retention(
    repo: &ServerRepo,
    catalog: &Catalog,
    server: &str,
    policy: RetentionPolicy,
    minimum_redundancy: u32,
    now: DateTime<Utc>,
) -> Result<Applied, BackupError> {
    let mut backups: Vec<BackupInfo> = catalog.backups(server)?;
    for b in backups.iter_mut() {
        if let Ok(disk) = BackupDir::new(repo, &b.backup_id).read_info() {
            if disk != *b {
                catalog.upsert_backup(&disk)?;
                *b = disk;
            }
        }
    }
    let doomed = obsolete(&backups, policy, minimum_redundancy, now);
    let mut deleted = Vec::new();
    let mut seg_size = 0;
    for id in &doomed {
        let Some(b) = backups.iter().find(|b| &b.backup_id == id) else {
            continue;
        };
        seg_size = b.wal_segment_size;
        let d = delete_backup(repo, catalog, b)?;
        tracing::info!(
            server,
            "retention {policy}: deleted obsolete backup {id}, {} WAL file(s) removed",
            d.removed_wal.len()
        );
        deleted.push(d);
    }
    if seg_size == 0 {
        seg_size = backups.first().map_or(0, |b| b.wal_segment_size);
    }
    let removed_wal = remove_unneeded_wal(repo, catalog, server, seg_size)?;
    if !removed_wal.names.is_empty() {
        tracing::info!(
            server,
            "retention {policy}: removed {} WAL file(s) no retained backup needs",
            removed_wal.names.len()
        );
    }
    Ok(Applied {
        server: server.to_string(),
        policy: policy.to_string(),
        deleted,
        removed_wal,
    })
}

/// The ids of a server's backups its configured policy makes obsolete now (empty
/// without a policy): what `list-backups` marks OBSOLETE and `cron` deletes.
pub fn obsolete_now(
    backups: &[BackupInfo],
    retention_policy: Option<&str>,
    minimum_redundancy: u32,
) -> BTreeSet<String> {
    retention_policy
        .and_then(|p| RetentionPolicy::parse(p).ok())
        .map(|p| obsolete(backups, p, minimum_redundancy, Utc::now()))
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// The key of an archived WAL file in the store.
fn wal_key(repo: &ServerRepo, w: &WalRecord, seg_size: u64) -> String {
    let seg = WalSegment {
        tli: w.timeline,
        segno: w.segno.unwrap_or(0),
        seg_size,
    };
    match w.kind {
        WalKind::Partial => repo.partial_segment_key(&seg),
        WalKind::History => repo.history_key(w.timeline),
        _ => repo.segment_key(&seg),
    }
}

/// Where an archived WAL file is stored on the local backend (keys are the paths
/// below the home).
fn wal_path(repo: &ServerRepo, w: &WalRecord, seg_size: u64) -> PathBuf {
    repo.repository().home().join(wal_key(repo, w, seg_size))
}

/// Removes a folder tree and makes its removal durable in `parent`.
pub fn remove_tree(path: &Path, parent: &Path) -> Result<(), BackupError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    fsync_dir(parent).map_err(io_err(parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{Lsn, SystemId, TimeLineId};
    use chrono::Utc;

    const MB16: u64 = 16 << 20;

    fn backup(
        id: &str,
        first: u64,
        last: u64,
        status: BackupStatus,
        keep: Option<KeepTarget>,
    ) -> BackupInfo {
        BackupInfo {
            status,
            server_version: 150000,
            system_id: SystemId(1),
            begin_lsn: Some(Lsn(first * MB16 + 0x28)),
            end_lsn: Some(Lsn(last * MB16 + 0x100)),
            keep,
            ..BackupInfo::new(id, "pg1", Utc::now())
        }
    }

    fn wal(segnos: std::ops::RangeInclusive<u64>) -> Vec<WalRecord> {
        let mut v = vec![WalRecord {
            name: "00000002.history".into(),
            kind: WalKind::History,
            timeline: TimeLineId(2),
            segno: None,
            size: 1,
            stored_size: 1,
            checksum: "h".into(),
            stored_checksum: None,
            archived_at: Utc::now(),
        }];
        for s in segnos {
            v.push(WalRecord {
                name: WalSegment {
                    tli: TimeLineId(1),
                    segno: s,
                    seg_size: MB16,
                }
                .name(),
                kind: WalKind::Segment,
                timeline: TimeLineId(1),
                segno: Some(s),
                size: MB16,
                stored_size: 10,
                checksum: "x".into(),
                stored_checksum: None,
                archived_at: Utc::now(),
            });
        }
        v
    }

    fn segnos(names: &[String]) -> Vec<u64> {
        names
            .iter()
            .map(|n| WalSegment::parse(n, MB16).unwrap().segno)
            .collect()
    }

    use BackupStatus::*;

    #[test]
    fn wal_before_the_oldest_remaining_backup_goes_never_history() {
        let remaining = [
            backup("b2", 5, 6, Done, None),
            backup("b3", 8, 8, Done, None),
        ];
        assert_eq!(
            segnos(&removable_wal(&remaining, &wal(1..=10))),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn no_backup_left_removes_nothing() {
        assert!(removable_wal(&[], &wal(1..=10)).is_empty());
        let failed = [backup("b1", 5, 6, Failed, None)];
        assert!(removable_wal(&failed, &wal(1..=10)).is_empty());
    }

    #[test]
    fn failed_backups_need_no_wal() {
        let remaining = [
            backup("b1", 2, 2, Failed, None),
            backup("b2", 5, 6, WaitingForWals, None),
        ];
        assert_eq!(
            segnos(&removable_wal(&remaining, &wal(1..=10))),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn standalone_keeps_only_its_own_range_full_keeps_everything_after() {
        let remaining = [
            backup("b1", 2, 3, Done, Some(KeepTarget::Standalone)),
            backup("b2", 7, 7, Done, None),
        ];
        assert_eq!(
            segnos(&removable_wal(&remaining, &wal(1..=10))),
            [1, 4, 5, 6]
        );
        let remaining = [
            backup("b1", 2, 3, Done, Some(KeepTarget::Full)),
            backup("b2", 7, 7, Done, None),
        ];
        assert_eq!(segnos(&removable_wal(&remaining, &wal(1..=10))), [1]);
    }

    #[test]
    fn only_standalone_backups_left_keep_wal_after_the_newest() {
        let remaining = [
            backup("b1", 2, 3, Done, Some(KeepTarget::Standalone)),
            backup("b2", 6, 6, Done, Some(KeepTarget::Standalone)),
        ];
        assert_eq!(segnos(&removable_wal(&remaining, &wal(1..=10))), [1, 4, 5]);
    }

    #[test]
    fn a_backup_whose_start_is_unknown_blocks_removal() {
        let mut starting = backup("b3", 0, 0, Started, None);
        starting.begin_lsn = None;
        let remaining = [backup("b2", 5, 6, Done, None), starting];
        assert!(removable_wal(&remaining, &wal(1..=10)).is_empty());
    }

    #[test]
    fn partial_segments_follow_the_same_rule() {
        let mut files = wal(3..=6);
        files.push(WalRecord {
            name: "000000010000000000000004.partial".into(),
            kind: WalKind::Partial,
            segno: Some(4),
            ..files[1].clone()
        });
        let remaining = [backup("b2", 5, 6, Done, None)];
        let names = removable_wal(&remaining, &files);
        assert_eq!(
            names,
            [
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000004.partial"
            ]
        );
    }

    #[test]
    fn delete_removes_folder_row_and_unneeded_wal_files_then_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path();
        let repo = ServerRepo::new(home, "pg1");
        let catalog = Catalog::open(home).unwrap();
        catalog
            .check_server_identity("pg1", SystemId(1), MB16)
            .unwrap();
        let b1 = backup("20260101T000000", 2, 3, Done, None);
        let b2 = backup("20260102T000000", 5, 5, Done, None);
        for b in [&b1, &b2] {
            std::fs::create_dir_all(BackupDir::new(&repo, &b.backup_id).data_dir()).unwrap();
            crate::backup::save(&repo, &catalog, b).unwrap();
        }
        for w in wal(1..=6) {
            let path = match w.kind {
                WalKind::History => repo.history_path(w.timeline),
                _ => wal_path(&repo, &w, MB16),
            };
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"x").unwrap();
            catalog.insert_wal("pg1", &w).unwrap();
        }
        let d = delete_backup(&repo, &catalog, &b1).unwrap();
        assert_eq!(segnos(&d.removed_wal), [1, 2, 3, 4]);
        assert!(!d.no_backup_left);
        assert!(!BackupDir::new(&repo, &b1.backup_id).root().exists());
        assert!(!deleting_path(&repo, &b1.backup_id).exists());
        let ids: Vec<String> = catalog
            .backups::<BackupInfo>("pg1")
            .unwrap()
            .into_iter()
            .map(|b| b.backup_id)
            .collect();
        assert_eq!(ids, [b2.backup_id.as_str()]);
        let left: Vec<String> = catalog
            .wal_files("pg1")
            .unwrap()
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(
            left,
            [
                "00000002.history",
                "000000010000000000000005",
                "000000010000000000000006"
            ]
        );
        assert!(repo.history_path(TimeLineId(2)).exists());
        let seg = |n| WalSegment {
            tli: TimeLineId(1),
            segno: n,
            seg_size: MB16,
        };
        assert!(!repo.segment_path(&seg(4)).exists());
        assert!(repo.segment_path(&seg(5)).exists());

        // The last backup: nothing needs WAL any more, none is removed.
        let d = delete_backup(&repo, &catalog, &b2).unwrap();
        assert!(d.no_backup_left && d.removed_wal.is_empty());
        assert_eq!(catalog.wal_files("pg1").unwrap().len(), 3);
    }

    #[test]
    fn a_row_whose_folder_vanished_can_still_be_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(tmp.path(), "pg1");
        let catalog = Catalog::open(tmp.path()).unwrap();
        let b = backup("20260101T000000", 2, 3, Done, None);
        std::fs::create_dir_all(repo.backups_dir()).unwrap();
        catalog.upsert_backup(&b).unwrap();
        delete_backup(&repo, &catalog, &b).unwrap();
        assert!(catalog.backups::<BackupInfo>("pg1").unwrap().is_empty());
    }

    #[test]
    fn refusals() {
        let all = [
            backup("b1", 2, 3, Done, None),
            backup("b2", 5, 6, Failed, None),
        ];
        assert!(matches!(
            refuse_delete(&all[0], &all, 0, false),
            Err(DeleteRefusal::LastDone { .. })
        ));
        assert!(refuse_delete(&all[0], &all, 0, true).is_ok());
        assert!(refuse_delete(&all[1], &all, 0, false).is_ok());
        let kept = backup("b3", 7, 7, Done, Some(KeepTarget::Full));
        let all2 = [all[0].clone(), kept.clone()];
        assert!(matches!(
            refuse_delete(&kept, &all2, 0, true),
            Err(DeleteRefusal::Kept { .. })
        ));
        let running = backup("b4", 8, 8, Started, None);
        assert!(matches!(
            refuse_delete(&running, &all2, 0, true),
            Err(DeleteRefusal::Running { .. })
        ));
        assert!(refuse_delete(&all2[0], &all2, 0, false).is_ok());
        // minimum_redundancy = 2 with two DONE backups: refused unless forced.
        let e = refuse_delete(&all2[0], &all2, 2, false).unwrap_err();
        assert!(
            matches!(e, DeleteRefusal::MinimumRedundancy { done: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("minimum_redundancy = 2"), "{e}");
        assert!(refuse_delete(&all2[0], &all2, 2, true).is_ok());
        assert!(refuse_delete(&all2[0], &all2, 1, false).is_ok());
        // A parent is never deleted, forced or not, while a backup is built on it.
        let child = BackupInfo {
            parent: Some("b1".into()),
            ..backup("b5", 9, 9, Done, None)
        };
        let all3 = [all[0].clone(), child.clone(), kept];
        let e = refuse_delete(&all3[0], &all3, 0, true).unwrap_err();
        assert!(matches!(e, DeleteRefusal::HasDependents { .. }), "{e}");
        assert!(e.to_string().contains("b5"), "{e}");
        assert!(refuse_delete(&child, &all3, 0, false).is_ok());
    }
}
