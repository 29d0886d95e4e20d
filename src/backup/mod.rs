//! Base backups: their metadata (`backup.json`, `files.jsonl`), ids, the folder of
//! each backup in the repository, and the catalog index kept in step with them.

pub mod base_backup;
pub mod info;
pub mod lifecycle;
pub mod manifest;
pub mod rsync;
pub mod rsync_copy;
pub mod rsync_index;
pub mod rsync_tar;
pub mod take;
pub mod tar_store;
pub mod wal_range;

pub use info::{BackupInfo, BackupStatus, FileEntry, FileKind, KeepTarget, TablespaceInfo};

use crate::catalog::{Catalog, CatalogError};
use crate::repo::durable::write_atomic;
use crate::repo::ServerRepo;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};

/// Failures reading or writing a backup's metadata.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// backup.json or a files.jsonl line does not parse.
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
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

/// Whether a string has the shape of a backup id.
pub fn is_backup_id(s: &str) -> bool {
    s.len() == 15
        && s.as_bytes()[8] == b'T'
        && s.bytes()
            .enumerate()
            .all(|(i, b)| i == 8 || b.is_ascii_digit())
}

/// The folder of one backup: `<home>/<server>/backups/<id>/`.
#[derive(Debug, Clone)]
pub struct BackupDir {
    root: PathBuf,
}

impl BackupDir {
    /// The folder of backup `id` of the server.
    pub fn new(repo: &ServerRepo, id: &str) -> BackupDir {
        BackupDir {
            root: repo.backups_dir().join(id),
        }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
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
        let path = self.info_path();
        let text = std::fs::read_to_string(&path).map_err(|source| BackupError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| BackupError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    /// Writes `backup.json` atomically and durably.
    pub fn write_info(&self, info: &BackupInfo) -> Result<(), BackupError> {
        let path = self.info_path();
        let mut text = serde_json::to_vec_pretty(info).map_err(|e| BackupError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        text.push(b'\n');
        write_atomic(&path, &text).map_err(|source| BackupError::Io { path, source })
    }

    /// Streams `files.jsonl` one entry at a time (never the whole list in memory).
    pub fn files(
        &self,
    ) -> Result<impl Iterator<Item = Result<FileEntry, BackupError>>, BackupError> {
        use std::io::BufRead;
        let path = self.files_path();
        let f = std::fs::File::open(&path).map_err(|source| BackupError::Io {
            path: path.clone(),
            source,
        })?;
        let reader = std::io::BufReader::new(f);
        Ok(reader
            .lines()
            .enumerate()
            .filter_map(move |(i, line)| match line {
                Err(source) => Some(Err(BackupError::Io {
                    path: path.clone(),
                    source,
                })),
                Ok(l) if l.trim().is_empty() => None,
                Ok(l) => Some(serde_json::from_str(&l).map_err(|e| BackupError::Corrupt {
                    path: path.clone(),
                    message: format!("line {}: {e}", i + 1),
                })),
            }))
    }
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
    let all = catalog.backups(server)?;
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
