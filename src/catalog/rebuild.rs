//! Replacing a server's rows at once (`rebuild-catalog`) and counting rows (`diagnose`).

use super::{Catalog, CatalogError, WalKind, WalRecord};
use crate::backup::{is_backup_id, BackupDir, BackupInfo};
use crate::lock::{JobLock, LockError};
use crate::repo::compress::{checksum, decompress_to};
use crate::repo::ServerRepo;
use crate::wal::header::read_long_header;
use crate::wal::{SystemId, TimeLineId, WalFileName};
use chrono::{DateTime, Utc};
use rayon::prelude::*;
use rusqlite::params;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The backups whose folder (with a `backup.json` past STARTED) is in the repository
/// but that the catalog does not list (`catalog` `None`: there is no catalog at all). A catalog
/// removed or restored from an older copy would otherwise make `list-backups` print
/// nothing, or too little, with exit 0.
pub fn backups_missing_from_catalog(
    home: &Path,
    server: &str,
    catalog: Option<&Catalog>,
) -> Result<Vec<String>, CatalogError> {
    let repo = ServerRepo::new(home, server);
    let Ok(rd) = std::fs::read_dir(repo.backups_dir()) else {
        return Ok(Vec::new());
    };
    let known: std::collections::HashSet<String> = match catalog {
        Some(c) => c
            .backups(server)?
            .into_iter()
            .map(|b| b.backup_id)
            .collect(),
        None => Default::default(),
    };
    let mut out: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|id| is_backup_id(id) && !known.contains(id))
        // A backup that just started writes backup.json a moment before its row:
        // only a folder past STARTED is certainly one the catalog lost.
        .filter(|id| {
            BackupDir::new(&repo, id)
                .read_info()
                .is_ok_and(|b| b.status != crate::backup::BackupStatus::Started)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Every file under `wals/` (its files and those one folder down), sorted.
fn archived_wal_paths(repo: &ServerRepo) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(repo.wals_dir()) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Ok(sub) = std::fs::read_dir(&p) {
                    files.extend(sub.flatten().map(|s| s.path()));
                }
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The WAL files archived for a server, with their names (without `.zst`):
/// segments, partials and history files under `wals/`, whatever the catalog says.
fn archived_wal_files(repo: &ServerRepo) -> Vec<(PathBuf, String)> {
    archived_wal_paths(repo)
        .into_iter()
        .filter_map(|p| {
            let file = p.file_name()?.to_str()?;
            let name = file.strip_suffix(".zst").unwrap_or(file).to_string();
            WalFileName::parse(&name, crate::wal::put::MIN_SEG_SIZE)?;
            Some((p, name))
        })
        .collect()
}

/// The names of the WAL files archived for `server` (see [`archived_wal_files`]).
pub fn archived_wal_names(home: &Path, server: &str) -> Vec<String> {
    archived_wal_files(&ServerRepo::new(home, server))
        .into_iter()
        .map(|(_, n)| n)
        .collect()
}

/// How old an archived WAL file must be before its missing catalog row counts as
/// lost: archiving renames the file into place a moment before it writes the row.
pub const WAL_ROW_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The archived WAL files (segments, partials, history files) under `wals/` that
/// `known` (the catalog's rows of the server) does not list, sorted; files newer
/// than `grace` ([`WAL_ROW_GRACE`] while a catalog exists) are left out.
pub fn wal_missing_from_catalog(
    home: &Path,
    server: &str,
    known: &[WalRecord],
    grace: std::time::Duration,
) -> Vec<String> {
    let known: std::collections::HashSet<&str> = known.iter().map(|w| w.name.as_str()).collect();
    let now = std::time::SystemTime::now();
    archived_wal_files(&ServerRepo::new(home, server))
        .into_iter()
        .filter(|(_, name)| !known.contains(name.as_str()))
        .filter_map(|(p, name)| {
            let age = now.duration_since(std::fs::metadata(&p).ok()?.modified().ok()?);
            age.is_ok_and(|a| a >= grace).then_some(name)
        })
        .collect()
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
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
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

/// One WAL archive file found on disk.
struct Found {
    path: PathBuf,
    name: String,
    kind: WalKind,
    timeline: TimeLineId,
    segno: Option<u64>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RebuildError + '_ {
    move |source| RebuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn modified(path: &Path) -> DateTime<Utc> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(|_| Utc::now())
}

/// Rebuilds a server's catalog rows from its repository folder: every
/// `backups/<id>/backup.json`, every archived WAL file (decompressed in parallel for
/// its size and checksum), and the identity from a segment's long header (else the
/// newest backup). Holds the server's receive-wal and backup locks meanwhile, and
/// refuses when either job is running.
pub fn rebuild_server(
    home: &Path,
    catalog: &Catalog,
    server: &str,
) -> Result<RebuildSummary, RebuildError> {
    let repo = ServerRepo::new(home, server);
    let busy = |source| RebuildError::Busy {
        server: server.to_string(),
        source,
    };
    // A server with no repository folder has nothing to rebuild (and gets none).
    let _locks = if repo.root().exists() {
        Some((
            JobLock::acquire(&repo.lock_dir().join("receive-wal.lock"), "receive-wal")
                .map_err(busy)?,
            JobLock::acquire(&repo.lock_dir().join("backup.lock"), "a backup").map_err(busy)?,
        ))
    } else {
        None
    };

    let mut backups = Vec::new();
    let mut unreadable = Vec::new();
    if let Ok(entries) = std::fs::read_dir(repo.backups_dir()) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            if !is_backup_id(&id) {
                continue;
            }
            match BackupDir::new(&repo, &id).read_info() {
                Ok(info) => backups.push(info),
                Err(_) => unreadable.push(id),
            }
        }
    }
    backups.sort_by(|a: &BackupInfo, b| a.backup_id.cmp(&b.backup_id));

    // The segment size names segments; the newest backup knows it, else a header does.
    let files = archived_wal_paths(&repo);
    let mut seg_size = backups.last().map(|b| b.wal_segment_size);
    let mut identity = None;
    let first_segment = files.iter().find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".zst"))
            .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if let Some(p) = first_segment {
        let mut head = Vec::new();
        let _ = decompress_to(p, &mut head);
        if let Some(h) = read_long_header(&head) {
            seg_size = Some(h.seg_size);
            identity = Some((h.system_id, h.seg_size));
        }
    }
    let seg_size = seg_size.unwrap_or(16 << 20);
    if identity.is_none() {
        identity = backups.last().map(|b| (b.system_id, b.wal_segment_size));
    }
    let found: Vec<Found> = files
        .iter()
        .filter_map(|p| {
            let file = p.file_name()?.to_str()?;
            let name = file.strip_suffix(".zst").unwrap_or(file);
            match WalFileName::parse(name, seg_size)? {
                WalFileName::Segment(s) if file.ends_with(".zst") => Some(Found {
                    path: p.clone(),
                    name: name.to_string(),
                    kind: WalKind::Segment,
                    timeline: s.tli,
                    segno: Some(s.segno),
                }),
                WalFileName::Partial(s) if file.ends_with(".zst") => Some(Found {
                    path: p.clone(),
                    name: name.to_string(),
                    kind: WalKind::Partial,
                    timeline: s.tli,
                    segno: Some(s.segno),
                }),
                WalFileName::History(tli) if !file.ends_with(".zst") => Some(Found {
                    path: p.clone(),
                    name: name.to_string(),
                    kind: WalKind::History,
                    timeline: tli,
                    segno: None,
                }),
                _ => None,
            }
        })
        .collect();
    let wal: Vec<WalRecord> = found
        .par_iter()
        .map(|f| {
            let stored_size = std::fs::metadata(&f.path).map_err(io_err(&f.path))?.len();
            let (size, sum, stored_sum) = if f.kind == WalKind::History {
                let data = std::fs::read(&f.path).map_err(io_err(&f.path))?;
                let sum = checksum(&data);
                (data.len() as u64, sum.clone(), sum)
            } else {
                let (size, sum) =
                    decompress_to(&f.path, std::io::sink()).map_err(io_err(&f.path))?;
                // The object's own checksum: one more read of a file just read (cached).
                let mut object = blake3::Hasher::new();
                std::fs::File::open(&f.path)
                    .and_then(|mut file| std::io::copy(&mut file, &mut object))
                    .map_err(io_err(&f.path))?;
                (size, sum, object.finalize().to_hex().to_string())
            };
            Ok(WalRecord {
                name: f.name.clone(),
                kind: f.kind,
                timeline: f.timeline,
                segno: f.segno,
                size,
                stored_size,
                checksum: sum,
                stored_checksum: Some(stored_sum),
                archived_at: modified(&f.path),
            })
        })
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

/// What a server's part of the catalog is rebuilt from.
pub struct ServerRows<'a> {
    /// System identifier and segment size, when the repository shows them.
    pub identity: Option<(SystemId, u64)>,
    /// Every backup.json.
    pub backups: &'a [BackupInfo],
    /// Every archived WAL file.
    pub wal: &'a [WalRecord],
}

impl Catalog {
    /// Replaces a server's identity, backups and WAL rows in one transaction; other
    /// servers' rows and the measurements are left as they are.
    pub fn replace_server_rows(&self, server: &str, rows: &ServerRows) -> Result<(), CatalogError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.sql_err(e))?;
        for table in [
            "DELETE FROM servers WHERE name = ?1",
            "DELETE FROM wal_files WHERE server = ?1",
            "DELETE FROM backups WHERE server = ?1",
        ] {
            tx.execute(table, params![server])
                .map_err(|e| self.sql_err(e))?;
        }
        if let Some((id, seg)) = rows.identity {
            self.check_server_identity(server, id, seg)?;
        }
        for b in rows.backups {
            self.upsert_backup(b)?;
        }
        for w in rows.wal {
            self.insert_wal(server, w)?;
        }
        tx.commit().map_err(|e| self.sql_err(e))
    }

    /// Rows per table (servers, wal_files, backups, measurements).
    pub fn row_counts(&self) -> Result<BTreeMap<String, i64>, CatalogError> {
        let mut out = BTreeMap::new();
        for table in ["servers", "wal_files", "backups", "measurements"] {
            let n: i64 = self
                .conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .map_err(|e| self.sql_err(e))?;
            out.insert(table.to_string(), n);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::TimeLineId;

    fn wal(name: &str, segno: u64) -> WalRecord {
        WalRecord {
            name: name.into(),
            kind: WalKind::Segment,
            timeline: TimeLineId(1),
            segno: Some(segno),
            size: 16 << 20,
            stored_size: 100,
            checksum: "x".into(),
            stored_checksum: None,
            archived_at: Utc::now(),
        }
    }

    #[test]
    fn replacing_a_servers_rows_leaves_the_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        cat.insert_wal("pg1", &wal("000000010000000000000001", 1))
            .unwrap();
        cat.insert_wal("pg2", &wal("000000010000000000000001", 1))
            .unwrap();
        cat.check_server_identity("pg1", SystemId(7), 16 << 20)
            .unwrap();
        let rows = [
            wal("000000010000000000000005", 5),
            wal("000000010000000000000006", 6),
        ];
        cat.replace_server_rows(
            "pg1",
            &ServerRows {
                identity: Some((SystemId(9), 16 << 20)),
                backups: &[],
                wal: &rows,
            },
        )
        .unwrap();
        let names: Vec<String> = cat
            .wal_files("pg1")
            .unwrap()
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(
            names,
            ["000000010000000000000005", "000000010000000000000006"]
        );
        assert_eq!(cat.wal_files("pg2").unwrap().len(), 1);
        assert_eq!(
            cat.server_identity("pg1").unwrap(),
            Some((SystemId(9), 16 << 20))
        );
        assert_eq!(cat.row_counts().unwrap()["wal_files"], 3);
    }

    #[test]
    fn a_server_without_a_repository_folder_gets_no_rows_and_no_folder() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        cat.insert_wal("ghost", &wal("000000010000000000000001", 1))
            .unwrap();
        let s = rebuild_server(dir.path(), &cat, "ghost").unwrap();
        assert_eq!((s.backups, s.wal_files), (0, 0));
        assert!(cat.wal_files("ghost").unwrap().is_empty());
        assert!(!dir.path().join("ghost").exists());
    }
}
