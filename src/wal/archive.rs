//! Storing WAL in the repository: a finished segment is validated, compressed,
//! checksummed, written atomically under `wals/` and entered in the catalog.

use super::header::{validate_segment, HeaderError};
use super::segment::{history_file_name, WalSegment};
use super::{SystemId, TimeLineId};
use crate::catalog::{Catalog, CatalogError, WalKind, WalRecord};
use crate::repo::compress::{checksum, store_compressed, StoredFile, DEFAULT_LEVEL};
use crate::repo::durable::{create_dir_all_private, remove_durable, write_atomic};
use crate::repo::ServerRepo;
use chrono::Utc;
use std::fs;
use std::path::{Path, PathBuf};

/// Why a WAL file could not be archived.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The file's content does not belong where its name says.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A file of that name is already archived with other content.
    #[error("server '{server}': {name} is already archived with different content (checksum {existing}, new {new})")]
    Conflict {
        server: String,
        name: String,
        existing: String,
        new: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The catalog refused the record.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The WAL archive of one server: repository folder plus catalog.
pub struct WalArchive {
    server: String,
    repo: ServerRepo,
    catalog: Catalog,
    system_id: Option<SystemId>,
    seg_size: u64,
}

/// What archiving one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// Stored now.
    Stored(WalRecord),
    /// Already there with the same content: nothing written.
    AlreadyPresent(WalRecord),
}

impl WalArchive {
    /// Opens the archive of `server` (its catalog connection is its own).
    pub fn open(
        home: &Path,
        server: &str,
        system_id: Option<SystemId>,
        seg_size: u64,
    ) -> Result<WalArchive, ArchiveError> {
        let repo = ServerRepo::new(home, server);
        repo.ensure_dirs().map_err(io_err(repo.root()))?;
        let catalog = Catalog::open(home)?;
        Ok(WalArchive {
            server: server.to_string(),
            repo,
            catalog,
            system_id,
            seg_size,
        })
    }

    /// The repository folder of this server.
    pub fn repo(&self) -> &ServerRepo {
        &self.repo
    }

    /// The catalog connection this archive uses.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn store(
        &self,
        name: &str,
        kind: WalKind,
        tli: TimeLineId,
        segno: Option<u64>,
        data: &[u8],
        dest: &Path,
    ) -> Result<Archived, ArchiveError> {
        if let Some(existing) = self.catalog.wal_file(&self.server, name)? {
            let new = checksum(data);
            if existing.checksum == new && dest.exists() {
                return Ok(Archived::AlreadyPresent(existing));
            }
            if existing.checksum != new {
                return Err(ArchiveError::Conflict {
                    server: self.server.clone(),
                    name: name.to_string(),
                    existing: existing.checksum,
                    new,
                });
            }
        }
        if let Some(dir) = dest.parent() {
            create_dir_all_private(dir).map_err(io_err(dir))?;
        }
        let stored: StoredFile = if kind == WalKind::History {
            write_atomic(dest, data).map_err(io_err(dest))?;
            StoredFile {
                size: data.len() as u64,
                stored_size: data.len() as u64,
                checksum: checksum(data),
            }
        } else {
            store_compressed(data, dest, DEFAULT_LEVEL).map_err(io_err(dest))?
        };
        let rec = WalRecord {
            name: name.to_string(),
            kind,
            timeline: tli,
            segno,
            size: stored.size,
            stored_size: stored.stored_size,
            checksum: stored.checksum,
            archived_at: Utc::now(),
        };
        self.catalog.insert_wal(&self.server, &rec)?;
        Ok(Archived::Stored(rec))
    }

    /// Validates and stores a complete segment's content.
    pub fn store_segment(&self, seg: &WalSegment, data: &[u8]) -> Result<Archived, ArchiveError> {
        validate_segment(data, seg, self.system_id)?;
        self.store(
            &seg.name(),
            WalKind::Segment,
            seg.tli,
            Some(seg.segno),
            data,
            &self.repo.segment_path(seg),
        )
    }

    /// Stores an old timeline's incomplete last segment as `<segment>.partial`.
    pub fn store_partial(&self, seg: &WalSegment, data: &[u8]) -> Result<Archived, ArchiveError> {
        let name = format!("{}.partial", seg.name());
        self.store(
            &name,
            WalKind::Partial,
            seg.tli,
            Some(seg.segno),
            data,
            &self.repo.partial_segment_path(seg),
        )
    }

    /// Stores a timeline history file as is.
    pub fn store_history(&self, tli: TimeLineId, content: &[u8]) -> Result<Archived, ArchiveError> {
        self.store(
            &history_file_name(tli),
            WalKind::History,
            tli,
            None,
            content,
            &self.repo.history_path(tli),
        )
    }

    /// Archives a finished segment file from `streaming/` and removes it there. A file
    /// that fails validation is moved to `errors/` and the error returned.
    pub fn archive_segment_file(
        &self,
        path: &Path,
        seg: &WalSegment,
    ) -> Result<Archived, ArchiveError> {
        let data = fs::read(path).map_err(io_err(path))?;
        match self.store_segment(seg, &data) {
            Ok(a) => {
                remove_durable(path).map_err(io_err(path))?;
                Ok(a)
            }
            Err(e @ (ArchiveError::Header(_) | ArchiveError::Conflict { .. })) => {
                self.quarantine(path, &e.to_string());
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Archives an old timeline's `.partial` file from `streaming/` and removes it there.
    pub fn archive_partial_file(
        &self,
        path: &Path,
        seg: &WalSegment,
    ) -> Result<Archived, ArchiveError> {
        let data = fs::read(path).map_err(io_err(path))?;
        let a = self.store_partial(seg, &data)?;
        remove_durable(path).map_err(io_err(path))?;
        Ok(a)
    }

    /// Moves a bad file into `errors/` with a `.reason` note beside it.
    fn quarantine(&self, path: &Path, reason: &str) {
        let dir = self.repo.errors_dir();
        let Some(name) = path.file_name() else { return };
        let stamp = Utc::now().format("%Y%m%dT%H%M%S");
        let dest = dir.join(format!("{}.{}", name.to_string_lossy(), stamp));
        if create_dir_all_private(&dir).is_ok() && fs::rename(path, &dest).is_ok() {
            let _ = write_atomic(
                &dest.with_extension(format!("{stamp}.reason")),
                reason.as_bytes(),
            );
        }
        tracing::error!(server = %self.server, "{reason}; file kept in {}", dest.display());
    }

    /// Segment size of this archive.
    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }
}
