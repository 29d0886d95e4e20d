//! Base backups: their metadata (`backup.json`, `files.jsonl`), ids, the folder of
//! each backup in the repository, and the catalog index kept in step with them.

pub mod base_backup;
pub mod block_map;
pub mod bundle;
pub mod chain;
pub mod change_map;
pub mod exclude;
pub mod incremental;
pub mod info;
pub mod lifecycle;
pub mod manifest;
pub mod object_file;
mod object_upload;
pub mod resume;
pub mod rsync;
pub mod rsync_copy;
pub mod rsync_index;
pub mod rsync_tar;
pub mod rsync_upload;
pub mod run;
pub mod sql_incremental;
pub mod sql_read;
mod standby;
pub mod take;
pub mod tar_store;
pub mod wal_range;

pub use info::{
    BackupInfo, BackupStatus, FileEntry, FileKind, IncrementalMethod, KeepTarget, TablespaceInfo,
};

use crate::catalog::{Catalog, CatalogError};
use crate::error::{IoError, IoResultExt};
use crate::repo::durable::write_atomic;
use crate::repo::ServerRepo;
use chrono::{DateTime, Utc};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Failures reading or writing a backup's metadata.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// backup.json or a files.jsonl line does not parse.
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The repository's store failed (an S3 request, an object that is not there).
    #[error(transparent)]
    Store(#[from] Box<crate::repo::store::StoreError>),
    /// No backup matches what the user named.
    #[error("server '{server}': no backup '{wanted}'{hint}")]
    NotFound {
        server: String,
        wanted: String,
        hint: String,
    },
}

/// The id of a new backup taken at `t`: `YYYYMMDDTHHMMSS` in UTC, as Barman names them.
pub fn backup_id_at(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%S").to_string()
}

pub use crate::repo::is_backup_id;

/// One backup in the repository: `<server>/backups/<id>/` in its store. On the local
/// backend that is the folder `<home>/<server>/backups/<id>/`, read and written as
/// files; on object storage its objects are in the bucket and the local folder only
/// holds what is being written (files.jsonl and backup_manifest before they go up).
#[derive(Debug, Clone)]
pub struct BackupDir {
    root: PathBuf,
    id: String,
    repo: ServerRepo,
}

fn store_err(e: crate::repo::store::StoreError) -> BackupError {
    BackupError::Store(Box::new(e))
}

impl BackupDir {
    /// Backup `id` of the server, in the server's repository.
    pub fn new(repo: &ServerRepo, id: &str) -> BackupDir {
        BackupDir {
            root: repo.backups_dir().join(id),
            id: id.to_string(),
            repo: repo.clone(),
        }
    }

    /// The backup whose folder holds `e`'s object: this one, or the earlier backup
    /// the entry refers to (`in_backup`, a name from the store checked as a backup
    /// id before it becomes part of a key).
    pub fn holder(&self, e: &FileEntry) -> Result<std::borrow::Cow<'_, BackupDir>, BackupError> {
        match e.in_backup.as_deref() {
            None => Ok(std::borrow::Cow::Borrowed(self)),
            Some(id) if id == self.id => Ok(std::borrow::Cow::Borrowed(self)),
            Some(id) if is_backup_id(id) => {
                Ok(std::borrow::Cow::Owned(BackupDir::new(&self.repo, id)))
            }
            Some(id) => Err(BackupError::Corrupt {
                path: PathBuf::from(self.describe("files.jsonl")),
                message: format!(
                    "'{}' refers to \"{}\", which is not a backup id",
                    e.path,
                    id.escape_debug()
                ),
            }),
        }
    }

    /// The local folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The backup's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True when the backup's objects are on object storage, not in [`Self::root`].
    pub fn is_remote(&self) -> bool {
        self.repo.repository().is_remote()
    }

    /// The store, shareable with upload threads.
    pub fn shared_store(&self) -> std::sync::Arc<dyn crate::repo::store::Store> {
        self.repo.repository().shared_store()
    }

    /// The store holding the backup's objects.
    pub fn store(&self) -> &dyn crate::repo::store::Store {
        self.repo.store()
    }

    /// The key of the backup's object `rel` (`data/<path>.zst`, `backup.json`).
    pub fn key(&self, rel: &str) -> String {
        self.repo.backup_key(&self.id, rel)
    }

    /// How messages name the backup's object `rel`.
    pub fn describe(&self, rel: &str) -> String {
        if self.is_remote() {
            self.store().describe(&self.key(rel))
        } else {
            self.root.join(rel).display().to_string()
        }
    }

    /// Opens the backup's object `rel` (a relative path already checked as safe).
    pub fn open_object(&self, rel: &str) -> Result<Box<dyn std::io::Read + Send>, BackupError> {
        if self.is_remote() {
            return self.store().get(&self.key(rel)).map_err(store_err);
        }
        let path = self.root.join(rel);
        let f = std::fs::File::open(&path).at(&path)?;
        Ok(Box::new(f))
    }

    /// `len` bytes of the backup's object `rel` from `offset` (fewer at its end): on
    /// object storage one ranged GET.
    pub fn read_range(&self, rel: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackupError> {
        if self.is_remote() {
            return self
                .store()
                .get_range(&self.key(rel), offset, len)
                .map_err(store_err);
        }
        use std::io::{Seek, SeekFrom};
        let path = self.root.join(rel);
        let mut f = std::fs::File::open(&path).at(&path)?;
        let mut out = Vec::new();
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.take(len).read_to_end(&mut out))
            .at(&path)?;
        Ok(out)
    }

    /// A small object of the backup (`backup_manifest`) whole; `None` when there is none.
    pub fn read_small(&self, rel: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let mut r = match self.open_object(rel) {
            Ok(r) => r,
            Err(BackupError::Store(e)) if e.is_not_found() => return Ok(None),
            Err(BackupError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut data = Vec::new();
        r.read_to_end(&mut data).at(self.describe(rel))?;
        Ok(Some(data))
    }

    /// Whether the backup's object `rel` exists.
    pub fn has_object(&self, rel: &str) -> Result<bool, BackupError> {
        if self.is_remote() {
            return Ok(self
                .store()
                .stat(&self.key(rel))
                .map_err(store_err)?
                .is_some());
        }
        Ok(self.root.join(rel).exists())
    }

    /// Stores the local file `rel` (written under the backup's folder) as the object
    /// `rel`, create-only, and removes the local copy: on the local backend it is
    /// already in place, so nothing is done.
    pub fn upload_local(&self, rel: &str) -> Result<(), BackupError> {
        if !self.is_remote() {
            return Ok(());
        }
        let path = self.root.join(rel);
        let mut f = std::fs::File::open(&path).at(&path)?;
        self.store()
            .put_reader(&self.key(rel), &mut f, crate::repo::store::PutMode::Create)
            .map_err(store_err)?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// Deletes every object of the backup in its store, in batches of 1000, but those
    /// whose name in the backup (`rel`) `keep` says to leave; returns the bytes
    /// deleted.
    pub fn delete_objects_but(&self, keep: &dyn Fn(&str) -> bool) -> Result<u64, BackupError> {
        let store = self.store();
        let err = |e| BackupError::Store(Box::new(e));
        let prefix = format!("{}/", self.key("").trim_end_matches('/'));
        let mut batch = Vec::new();
        let mut bytes = 0;
        for meta in store.list(&prefix) {
            let meta = meta.map_err(err)?;
            let rel = meta.key.strip_prefix(&prefix).unwrap_or(&meta.key);
            if !keep(rel) {
                bytes += meta.size;
                batch.push(meta.key);
            }
            if batch.len() >= 1000 {
                store.delete(&batch).map_err(err)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            store.delete(&batch).map_err(err)?;
        }
        Ok(bytes)
    }

    /// `backup.json`.
    pub fn info_path(&self) -> PathBuf {
        self.root.join("backup.json")
    }

    /// `files.jsonl`.
    pub fn files_path(&self) -> PathBuf {
        self.root.join("files.jsonl")
    }

    /// PostgreSQL's `backup_manifest` as the server sent it.
    pub fn manifest_path(&self) -> PathBuf {
        self.root.join("backup_manifest")
    }

    /// Where data-directory files are stored (`data/<path>.zst`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Where a tablespace's files are stored (`tablespaces/<oid>/<path>.zst`).
    pub fn tablespace_dir(&self, oid: u32) -> PathBuf {
        self.root.join("tablespaces").join(oid.to_string())
    }

    /// Reads `backup.json`.
    pub fn read_info(&self) -> Result<BackupInfo, BackupError> {
        let path = PathBuf::from(self.describe("backup.json"));
        let mut text = String::new();
        self.open_object("backup.json")?
            .read_to_string(&mut text)
            .at(&path)?;
        serde_json::from_str(&text).map_err(|e| BackupError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    /// Writes `backup.json` atomically and durably (on object storage: one PUT that
    /// replaces the object whole).
    pub fn write_info(&self, info: &BackupInfo) -> Result<(), BackupError> {
        let path = self.info_path();
        let mut text = serde_json::to_vec_pretty(info).map_err(|e| BackupError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        text.push(b'\n');
        if self.is_remote() {
            self.store()
                .put(
                    &self.key("backup.json"),
                    &text,
                    crate::repo::store::PutMode::Overwrite,
                )
                .map_err(store_err)?;
            return Ok(());
        }
        Ok(write_atomic(&path, &text).at(&path)?)
    }

    /// Streams `files.jsonl` one entry at a time (never the whole list in memory).
    pub fn files(
        &self,
    ) -> Result<impl Iterator<Item = Result<FileEntry, BackupError>>, BackupError> {
        let path = PathBuf::from(self.describe("files.jsonl"));
        let reader =
            std::io::BufReader::with_capacity(256 * 1024, self.open_object("files.jsonl")?);
        Ok(json_lines(reader, path))
    }
}

/// The entries of a JSON Lines object one at a time (blank lines skipped), each
/// error naming the object and the line.
pub(crate) fn json_lines<T: serde::de::DeserializeOwned>(
    reader: impl std::io::BufRead,
    path: PathBuf,
) -> impl Iterator<Item = Result<T, BackupError>> {
    reader
        .lines()
        .enumerate()
        .filter_map(move |(i, line)| match line {
            Err(source) => Some(Err(IoError::new(&path, source).into())),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(serde_json::from_str(&l).map_err(|e| BackupError::Corrupt {
                path: path.clone(),
                message: format!("line {}: {e}", i + 1),
            })),
        })
}

/// Writes backup.json and mirrors it into the catalog: the file first (the truth), the
/// index second.
pub fn save(repo: &ServerRepo, catalog: &Catalog, info: &BackupInfo) -> Result<(), BackupError> {
    BackupDir::new(repo, &info.backup_id).write_info(info)?;
    catalog.upsert_backup(info)?;
    Ok(())
}

/// Finds a backup by id, name, or `latest`/`last`/`oldest`/`first` (those two pairs
/// only consider `DONE` backups, as Barman does).
pub fn resolve(catalog: &Catalog, server: &str, wanted: &str) -> Result<BackupInfo, BackupError> {
    let all: Vec<BackupInfo> = catalog.backups(server)?;
    resolve_among(&all, server, wanted)
}

/// [`resolve`] among a list of a server's backups, oldest first (a reading verb's
/// view, which nothing wrote back to the catalog).
pub fn resolve_among(
    all: &[BackupInfo],
    server: &str,
    wanted: &str,
) -> Result<BackupInfo, BackupError> {
    let done = || all.iter().filter(|b| b.status == BackupStatus::Done);
    let found = match wanted {
        "latest" | "last" => done().next_back().cloned(),
        "oldest" | "first" => done().next().cloned(),
        // Barman's id for the newest FAILED backup.
        "last-failed" => all
            .iter()
            .rev()
            .find(|b| b.status == BackupStatus::Failed)
            .cloned(),
        id => all
            .iter()
            .find(|b| b.backup_id == id)
            .or_else(|| all.iter().rev().find(|b| b.name.as_deref() == Some(id)))
            .cloned(),
    };
    found.ok_or_else(|| BackupError::NotFound {
        server: server.to_string(),
        wanted: wanted.to_string(),
        hint: if all.is_empty() {
            " (the server has no backups)".to_string()
        } else {
            " (see list-backups)".to_string()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_barmans() {
        let t = DateTime::parse_from_rfc3339("2026-11-25T01:02:03Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(backup_id_at(t), "20261125T010203");
        assert!(is_backup_id("20261125T010203"));
        assert!(!is_backup_id("2026112XT010203"));
        assert!(!is_backup_id("../etc"));
    }
}
