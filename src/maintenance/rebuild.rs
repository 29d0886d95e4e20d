//! Rebuilding a server's catalog rows from its repository (`rebuild-catalog`), and
//! finding the backups a catalog lost.

use crate::backup::{is_backup_id, BackupDir, BackupInfo};
use crate::catalog::{Catalog, CatalogError, ServerRows, WalKind, WalRecord};
use crate::error::{IoError, IoResultExt};
use crate::lock::{JobLock, LockError};
use crate::repo::compress::{checksum, inspect_object, parse_trailer, TRAILER_LEN};
use crate::repo::store::{Store, StoreError};
use crate::repo::ServerRepo;
use crate::types::{SystemId, TimeLineId, WalFileName};
use crate::wal::header::read_long_header;
use crate::wal::stored::{archived_wal_objects, segment_head, WalObject};
use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::Serialize;

/// The backups whose folder (with a `backup.json` past STARTED) is in the repository
/// (its local folder or its bucket) but that the catalog does not list (`catalog`
/// `None`: there is no catalog at all). A catalog removed or restored from an older
/// copy would otherwise make `list-backups` print nothing, or too little, with exit 0.
pub fn backups_missing_from_catalog(
    repo: &ServerRepo,
    catalog: Option<&Catalog>,
) -> Result<Vec<String>, RebuildError> {
    let known: std::collections::HashSet<String> = match catalog {
        Some(c) => c
            .backups::<BackupInfo>(repo.server())?
            .into_iter()
            .map(|b| b.backup_id)
            .collect(),
        None => Default::default(),
    };
    let mut out: Vec<String> = backup_ids(repo)?
        .into_iter()
        .filter(|id| !known.contains(id))
        // A backup that just started writes backup.json a moment before its row:
        // only a folder past STARTED is certainly one the catalog lost.
        .filter(|id| {
            BackupDir::new(repo, id)
                .read_info()
                .is_ok_and(|b| b.status != crate::backup::BackupStatus::Started)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The backup ids under `<server>/backups/` in the repository, sorted.
fn backup_ids(repo: &ServerRepo) -> Result<Vec<String>, RebuildError> {
    let folder = format!("{}/backups/", repo.server());
    let ids = repo.store().list_folders(&folder).map_err(store_err)?;
    Ok(ids.into_iter().filter(|id| is_backup_id(id)).collect())
}

fn store_err(e: StoreError) -> RebuildError {
    RebuildError::Store(Box::new(e))
}

/// Why a server's catalog rows could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// receive-wal or a backup of the server is running.
    #[error("cannot rebuild the catalog of server '{server}' now: {source}")]
    Busy {
        /// Server name.
        server: String,
        /// The lock that is held.
        source: LockError,
    },
    /// A repository file could not be read.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The repository's store could not be listed or read.
    #[error(transparent)]
    Store(Box<StoreError>),
    /// A backup.json could not be read.
    #[error(transparent)]
    Backup(Box<crate::backup::BackupError>),
    /// The catalog refused.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What a rebuild found for one server.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildSummary {
    /// Server name.
    pub server: String,
    /// Backups restored from backup.json.
    pub backups: usize,
    /// Archived WAL files (segments, partials, history files).
    pub wal_files: usize,
    /// The system identifier recorded, if the repository showed one.
    pub system_id: Option<SystemId>,
    /// backup.json files that could not be read (skipped).
    pub unreadable: Vec<String>,
}

/// One WAL archive object found in the repository.
struct Found {
    object: WalObject,
    kind: WalKind,
    timeline: TimeLineId,
    segno: Option<u64>,
}

/// What the catalog records about one stored WAL object. Locally the object is read
/// whole (its frames decompressed, its trailer compared); from a bucket, its
/// trailer alone is fetched (one small ranged GET instead of downloading the whole
/// archive), as the trailer is what every reader verifies the content against.
fn describe_wal(store: &dyn Store, f: &Found, remote: bool) -> Result<WalRecord, RebuildError> {
    use std::io::Read;
    let key = &f.object.meta.key;
    let stored_size = f.object.meta.size;
    let (size, sum, stored_sum) = if f.kind == WalKind::History {
        let mut data = Vec::new();
        store
            .get(key)
            .map_err(store_err)?
            .read_to_end(&mut data)
            .at(store.describe(key))?;
        let sum = checksum(&data);
        (data.len() as u64, sum.clone(), Some(sum))
    } else {
        let tail = if remote && stored_size >= TRAILER_LEN as u64 {
            let tail = store
                .get_range(key, stored_size - TRAILER_LEN as u64, TRAILER_LEN as u64)
                .map_err(store_err)?;
            parse_trailer(&tail)
        } else {
            None
        };
        match tail {
            Some(rec) => (rec.size, rec.checksum, None),
            None => {
                let object = store.get(key).map_err(store_err)?;
                let s = inspect_object(object).at(store.describe(key))?;
                (s.size, s.checksum, Some(s.stored_checksum))
            }
        }
    };
    Ok(WalRecord {
        name: f.object.name.clone(),
        kind: f.kind,
        timeline: f.timeline,
        segno: f.segno,
        size,
        stored_size,
        checksum: sum,
        stored_checksum: stored_sum,
        archived_at: f
            .object
            .meta
            .modified
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(Utc::now),
    })
}

/// Rebuilds a server's catalog rows from its repository (the local folder or the
/// bucket): every `backups/<id>/backup.json`, every archived WAL object (its size
/// and checksum), and the identity from a segment's long header (else the newest
/// backup). Holds the server's receive-wal and backup locks meanwhile, and refuses
/// when either job is running.
pub fn rebuild_server(
    repo: &ServerRepo,
    catalog: &Catalog,
) -> Result<RebuildSummary, RebuildError> {
    let server = repo.server();
    let remote = repo.repository().is_remote();
    let busy = |source| RebuildError::Busy {
        server: server.to_string(),
        source,
    };
    // A server with no local folder gets one only when its repository is a bucket
    // (the locks live on the manager host); a local repository without its folder
    // has nothing to rebuild (and gets none).
    if remote {
        repo.ensure_local_dirs().at(repo.root())?;
    }
    let _locks = if repo.root().exists() {
        Some((
            JobLock::acquire(&crate::lock::receive_wal_lock(repo), "receive-wal").map_err(busy)?,
            JobLock::acquire(&crate::lock::backup_lock(repo), "a backup").map_err(busy)?,
        ))
    } else {
        None
    };
    let store = repo.store();

    let mut backups = Vec::new();
    let mut unreadable = Vec::new();
    for id in backup_ids(repo)? {
        match BackupDir::new(repo, &id).read_info() {
            Ok(info) => backups.push(info),
            // A bucket that cannot be read is an error, not a backup to skip.
            Err(crate::backup::BackupError::Store(e)) if !e.is_not_found() => {
                return Err(RebuildError::Store(e))
            }
            Err(_) => unreadable.push(id),
        }
    }
    backups.sort_by(|a: &BackupInfo, b| a.backup_id.cmp(&b.backup_id));

    // The segment size names segments; the newest backup knows it, else a header does.
    let objects = archived_wal_objects(repo).map_err(store_err)?;
    let mut seg_size = backups.last().map(|b| b.wal_segment_size);
    let mut identity = None;
    let first_segment = objects.iter().find(|o| {
        o.file
            .strip_suffix(".zst")
            .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if let Some(o) = first_segment {
        if let Some(h) = segment_head(store, &o.meta.key).and_then(|h| read_long_header(&h)) {
            seg_size = Some(h.seg_size);
            identity = Some((h.system_id, h.seg_size));
        }
    }
    let seg_size = seg_size.unwrap_or(16 << 20);
    if identity.is_none() {
        identity = backups.last().map(|b| (b.system_id, b.wal_segment_size));
    }
    let found: Vec<Found> = objects
        .into_iter()
        .filter_map(|o| {
            let compressed = o.file.ends_with(".zst");
            let (kind, timeline, segno) = match WalFileName::parse(&o.name, seg_size)? {
                WalFileName::Segment(s) if compressed => (WalKind::Segment, s.tli, Some(s.segno)),
                WalFileName::Partial(s) if compressed => (WalKind::Partial, s.tli, Some(s.segno)),
                WalFileName::History(tli) if !compressed => (WalKind::History, tli, None),
                _ => return None,
            };
            Some(Found {
                object: o,
                kind,
                timeline,
                segno,
            })
        })
        .collect();
    let wal: Vec<WalRecord> = found
        .par_iter()
        .map(|f| describe_wal(store, f, remote))
        .collect::<Result<_, RebuildError>>()?;
    catalog.replace_server_rows(
        server,
        &ServerRows {
            identity,
            backups: &backups,
            wal: &wal,
        },
    )?;
    Ok(RebuildSummary {
        server: server.to_string(),
        backups: backups.len(),
        wal_files: wal.len(),
        system_id: identity.map(|(id, _)| id),
        unreadable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_repository_folder_gets_no_rows_and_no_folder() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        cat.insert_wal(
            "ghost",
            &WalRecord::test_segment("000000010000000000000001", 1),
        )
        .unwrap();
        let s = rebuild_server(&ServerRepo::new(dir.path(), "ghost"), &cat).unwrap();
        assert_eq!((s.backups, s.wal_files), (0, 0));
        assert!(cat.wal_files("ghost").unwrap().is_empty());
        assert!(!dir.path().join("ghost").exists());
    }
}
