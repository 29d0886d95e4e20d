//! What WAL a server's repository holds, read from its store rather than the
//! catalog: the archived objects, those the catalog lost, and the cluster
//! (system identifier, segment size) the repository belongs to.

use super::header::read_long_header;
use crate::catalog::{Catalog, CatalogError, WalRecord};
use crate::repo::store::{ObjectMeta, Store, StoreError};
use crate::repo::{is_backup_id, ServerRepo};
use crate::types::segment::MIN_SEG_SIZE;
use crate::types::{SystemId, WalFileName};
use std::io::Read;

/// One archived WAL object: its listing entry and its file name without `.zst`.
pub(crate) struct WalObject {
    pub(crate) meta: ObjectMeta,
    pub(crate) file: String,
    pub(crate) name: String,
}

/// Every WAL object under `<server>/wals/` (its files and those one folder down),
/// in key order, with its WAL file name (segments, partials, history files).
pub(crate) fn archived_wal_objects(repo: &ServerRepo) -> Result<Vec<WalObject>, StoreError> {
    let prefix = format!("{}/wals/", repo.server());
    let mut out = Vec::new();
    for m in repo.store().list(&prefix) {
        let meta = m?;
        let rest = &meta.key[prefix.len()..];
        let file = match rest.split('/').collect::<Vec<_>>()[..] {
            [f] | [_, f] => f.to_string(),
            _ => continue,
        };
        let name = file.strip_suffix(".zst").unwrap_or(&file).to_string();
        if WalFileName::parse(&name, MIN_SEG_SIZE).is_none() {
            continue;
        }
        out.push(WalObject { meta, file, name });
    }
    Ok(out)
}

/// The names of the WAL files archived for a server (see [`archived_wal_objects`]).
pub fn archived_wal_names(repo: &ServerRepo) -> Result<Vec<String>, StoreError> {
    Ok(archived_wal_objects(repo)?
        .into_iter()
        .map(|o| o.name)
        .collect())
}

/// How old an archived WAL file must be before its missing catalog row counts as
/// lost: archiving renames the file into place a moment before it writes the row.
pub const WAL_ROW_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The archived WAL files (segments, partials, history files) in the repository
/// that `known` (the catalog's rows of the server) does not list, sorted; files
/// newer than `grace` ([`WAL_ROW_GRACE`] while a catalog exists) are left out.
pub fn wal_missing_from_catalog(
    repo: &ServerRepo,
    known: &[WalRecord],
    grace: std::time::Duration,
) -> Result<Vec<String>, StoreError> {
    let known: std::collections::HashSet<&str> = known.iter().map(|w| w.name.as_str()).collect();
    let now = std::time::SystemTime::now();
    Ok(archived_wal_objects(repo)?
        .into_iter()
        .filter(|o| !known.contains(o.name.as_str()))
        .filter_map(|o| {
            let age = now.duration_since(o.meta.modified?);
            age.is_ok_and(|a| a >= grace).then_some(o.name)
        })
        .collect())
}

/// The cluster (system identifier, segment size) whose WAL or backups a server's
/// repository holds: the long header of its first archived segment, else its
/// newest readable backup.json; `None` when it holds neither, or cannot be read
/// (the writes that follow report that themselves).
pub fn repository_identity(repo: &ServerRepo) -> Option<(SystemId, u64)> {
    let store = repo.store();
    let prefix = format!("{}/wals/", repo.server());
    for m in store.list(&prefix).take(1000) {
        let meta = m.ok()?;
        let file = meta.key.rsplit('/').next().unwrap_or_default();
        let segment = file
            .strip_suffix(".zst")
            .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        if !segment {
            continue;
        }
        if let Some(h) = segment_head(store, &meta.key).and_then(|h| read_long_header(&h)) {
            return Some((h.system_id, h.seg_size));
        }
    }
    let folder = format!("{}/backups/", repo.server());
    let mut ids = store.list_folders(&folder).ok()?;
    ids.retain(|id| is_backup_id(id));
    ids.sort();
    ids.iter().rev().find_map(|id| backup_identity(repo, id))
}

/// The cluster a backup.json records, read by key (this layer sits below `backup`).
fn backup_identity(repo: &ServerRepo, id: &str) -> Option<(SystemId, u64)> {
    #[derive(serde::Deserialize)]
    struct Identity {
        system_id: SystemId,
        wal_segment_size: u64,
    }
    let mut text = String::new();
    repo.store()
        .get(&repo.backup_key(id, "backup.json"))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let b: Identity = serde_json::from_str(&text).ok()?;
    Some((b.system_id, b.wal_segment_size))
}

/// Before a writer stores anything in a bucket for a server whose cluster the
/// catalog does not know yet (a new manager, a lost catalog), the cluster the
/// bucket already holds becomes the catalog's: a bucket holding another server's
/// repository is then refused by the identity check, naming both identifiers,
/// instead of being mixed with this one. A local repository keeps its catalog
/// beside it and is left to the catalog alone.
pub fn adopt_repository_identity(repo: &ServerRepo, catalog: &Catalog) -> Result<(), CatalogError> {
    if !repo.repository().is_remote() || catalog.server_identity(repo.server())?.is_some() {
        return Ok(());
    }
    match repository_identity(repo) {
        Some((id, seg)) => catalog.check_server_identity(repo.server(), id, seg),
        None => Ok(()),
    }
}

/// The first bytes of a stored segment, decompressed (its long page header).
pub(crate) fn segment_head(store: &dyn Store, key: &str) -> Option<Vec<u8>> {
    let object = store.get(key).ok()?;
    let mut head = Vec::new();
    zstd::stream::read::Decoder::new(object)
        .ok()?
        .take(8192)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}
