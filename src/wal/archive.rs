//! Storing WAL in the repository: a finished segment is validated, compressed,
//! checksummed, written atomically under `wals/` and entered in the catalog.

use super::header::{validate_segment, HeaderError};
use super::segment::{history_file_name, WalSegment};
use super::{SystemId, TimeLineId};
use crate::catalog::{Catalog, CatalogError, WalKind, WalRecord};
use crate::error::{IoError, IoResultExt};
use crate::repo::compress::{
    checksum, compress_to_vec_hashed, inspect_object, CompressingReader, StoredFile, DEFAULT_LEVEL,
};
use crate::repo::durable::{create_dir_all_private, remove_durable, rename_durable, write_atomic};
use crate::repo::store::{PutMode, PutOutcome, Store, StoreError};
use crate::repo::{Repository, ServerRepo};
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
    #[error(transparent)]
    Io(#[from] IoError),
    /// The repository's store failed.
    #[error("server '{server}': {source}")]
    Store {
        server: String,
        source: Box<StoreError>,
    },
    /// The catalog refused the record.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// The WAL archive of one server: its objects in the repository's store, its
/// catalog rows, its local folders (errors/ for refused files).
pub struct WalArchive {
    server: String,
    repo: ServerRepo,
    repository: Repository,
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
        repository: &Repository,
        server: &str,
        system_id: Option<SystemId>,
        seg_size: u64,
    ) -> Result<WalArchive, ArchiveError> {
        let repo = ServerRepo::new(repository.home(), server);
        if repository.is_remote() {
            repo.ensure_local_dirs()
        } else {
            repo.ensure_dirs()
        }
        .at(repo.root())?;
        let catalog = Catalog::open(repository.home())?;
        Ok(WalArchive {
            server: server.to_string(),
            repo,
            repository: repository.clone(),
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

    fn store_err(&self) -> impl FnOnce(StoreError) -> ArchiveError + '_ {
        move |source| ArchiveError::Store {
            server: self.server.clone(),
            source: Box::new(source),
        }
    }

    /// True when the timeline's history file is stored.
    pub fn has_history(&self, tli: TimeLineId) -> Result<bool, ArchiveError> {
        let key = self.repo.history_key(tli);
        let store = self.repository.store();
        Ok(store.stat(&key).map_err(self.store_err())?.is_some())
    }

    fn store(
        &self,
        name: &str,
        kind: WalKind,
        tli: TimeLineId,
        segno: Option<u64>,
        data: &[u8],
        key: &str,
    ) -> Result<Archived, ArchiveError> {
        let content = blake3::hash(data);
        let sum = content.to_hex().to_string();
        self.store_with(name, kind, tli, segno, &sum, key, |store| {
            let (object, stored) = if kind == WalKind::History {
                // Stored as is: the object is the content.
                let stored = StoredFile {
                    size: data.len() as u64,
                    stored_size: data.len() as u64,
                    checksum: sum.clone(),
                    stored_checksum: sum.clone(),
                };
                (std::borrow::Cow::Borrowed(data), stored)
            } else {
                let (object, stored) =
                    compress_to_vec_hashed(data, DEFAULT_LEVEL, content).at(key)?;
                (std::borrow::Cow::Owned(object), stored)
            };
            store
                .put(key, &object, PutMode::Create)
                .map(|outcome| (stored, outcome))
        })
    }

    /// Stores a file whose object `put` writes under `key` (create-only), unless the
    /// catalog already holds `name` with the same checksum and the object is there;
    /// different content under an existing name is a [`ArchiveError::Conflict`] and
    /// nothing is written. An object found already stored without a catalog row (a
    /// crash between the two) is read back: same content, and its row is entered.
    #[allow(clippy::too_many_arguments)]
    fn store_with(
        &self,
        name: &str,
        kind: WalKind,
        tli: TimeLineId,
        segno: Option<u64>,
        sum: &str,
        key: &str,
        put: impl FnOnce(&dyn Store) -> Result<(StoredFile, PutOutcome), StoreError>,
    ) -> Result<Archived, ArchiveError> {
        let store = self.repository.store();
        let conflict = |existing: String| ArchiveError::Conflict {
            server: self.server.clone(),
            name: name.to_string(),
            existing,
            new: sum.to_string(),
        };
        if let Some(existing) = self.catalog.wal_file(&self.server, name)? {
            if existing.checksum != sum {
                return Err(conflict(existing.checksum));
            }
            if store.stat(key).map_err(self.store_err())?.is_some() {
                return Ok(Archived::AlreadyPresent(existing));
            }
        }
        let (stored, fresh) = match put(store) {
            Ok((stored, outcome)) => (stored, outcome == PutOutcome::Stored),
            Err(StoreError::Conflict { .. }) => {
                // Another writer's object (an older pgbk's compression, or this
                // file stored before a crash left its row out): compare contents.
                let found = self.inspect(key, kind)?;
                if found.checksum != sum {
                    return Err(conflict(found.checksum));
                }
                (found, false)
            }
            Err(e) => return Err(self.store_err()(e)),
        };
        let rec = WalRecord {
            name: name.to_string(),
            kind,
            timeline: tli,
            segno,
            size: stored.size,
            stored_size: stored.stored_size,
            checksum: stored.checksum,
            stored_checksum: Some(stored.stored_checksum),
            archived_at: Utc::now(),
        };
        self.catalog.insert_wal(&self.server, &rec)?;
        Ok(if fresh {
            Archived::Stored(rec)
        } else {
            Archived::AlreadyPresent(rec)
        })
    }

    /// What the stored object under `key` holds (read whole and checked).
    fn inspect(&self, key: &str, kind: WalKind) -> Result<StoredFile, ArchiveError> {
        let store = self.repository.store();
        let object = store.get(key).map_err(self.store_err())?;
        let damaged = |source: std::io::Error| ArchiveError::Store {
            server: self.server.clone(),
            source: Box::new(StoreError::Integrity {
                key: key.to_string(),
                detail: format!("the stored object cannot be read back: {source}"),
            }),
        };
        if kind == WalKind::History {
            let (size, sum) =
                crate::repo::compress::hash_copy(object, std::io::sink()).map_err(damaged)?;
            return Ok(StoredFile {
                size,
                stored_size: size,
                checksum: sum.clone(),
                stored_checksum: sum,
            });
        }
        inspect_object(object).map_err(damaged)
    }

    /// Stores a segment (`partial` false) or an old timeline's `.partial` segment whose
    /// content the caller already validated and spooled to `src`, compressing it as it
    /// streams (for segments too large to hold in memory); `sum` is its checksum.
    pub fn store_segment_spooled(
        &self,
        seg: &WalSegment,
        partial: bool,
        src: &Path,
        sum: &str,
    ) -> Result<Archived, ArchiveError> {
        let (name, kind, key) = if partial {
            (
                format!("{}.partial", seg.name()),
                WalKind::Partial,
                self.repo.partial_segment_key(seg),
            )
        } else {
            (seg.name(), WalKind::Segment, self.repo.segment_key(seg))
        };
        let input = fs::File::open(src).at(src)?;
        self.store_with(&name, kind, seg.tli, Some(seg.segno), sum, &key, |store| {
            let mut reader = CompressingReader::new(input, DEFAULT_LEVEL, Some(sum.to_string()));
            let outcome = store.put_reader(&key, &mut reader, PutMode::Create)?;
            let stored = reader
                .stored()
                .cloned()
                .ok_or_else(|| StoreError::Integrity {
                    key: key.clone(),
                    detail: "the store did not read the object to its end".into(),
                })?;
            Ok((stored, outcome))
        })
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
            &self.repo.segment_key(seg),
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
            &self.repo.partial_segment_key(seg),
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
            &self.repo.history_key(tli),
        )
    }

    /// Archives a finished segment file from `streaming/` and removes it there. A file
    /// that fails validation is moved to `errors/` and the error returned.
    pub fn archive_segment_file(
        &self,
        path: &Path,
        seg: &WalSegment,
    ) -> Result<Archived, ArchiveError> {
        let data = fs::read(path).at(path)?;
        match self.store_segment(seg, &data) {
            Ok(a) => {
                remove_durable(path).at(path)?;
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
        let data = fs::read(path).at(path)?;
        let a = self.store_partial(seg, &data)?;
        remove_durable(path).at(path)?;
        Ok(a)
    }

    /// Moves a bad file into `errors/` with a `.reason` note beside it (`check` counts
    /// and reports them).
    pub fn quarantine(&self, path: &Path, reason: &str) {
        let dir = self.repo.errors_dir();
        let Some(name) = path.file_name() else { return };
        let stamp = Utc::now().format("%Y%m%dT%H%M%S");
        let dest = dir.join(format!("{}.{}", name.to_string_lossy(), stamp));
        if create_dir_all_private(&dir).is_ok() && rename_durable(path, &dest).is_ok() {
            let _ = write_atomic(
                &dest.with_extension(format!("{stamp}.reason")),
                reason.as_bytes(),
            );
        }
        tracing::error!(server = %self.server, "{reason}; file kept in {}", dest.display());
    }

    /// Keeps a refused copy received as data (put-wal) in `errors/` with a `.reason`
    /// note, named after its content so that the sender's retries of the same bad file
    /// add nothing.
    pub fn quarantine_data(&self, name: &str, data: &[u8], reason: &str) {
        let dest = self.error_path(name, &checksum(data));
        if !dest.exists() {
            let ok = create_dir_all_private(&self.repo.errors_dir()).is_ok()
                && write_atomic(&dest, data).is_ok();
            if ok {
                self.write_reason(&dest, reason);
            }
        }
        tracing::error!(server = %self.server, "{reason}; refused copy kept in {}", dest.display());
    }

    /// Like [`WalArchive::quarantine_data`] for a refused copy spooled to `path`
    /// (moved, not copied).
    pub fn quarantine_file_as(&self, path: &Path, name: &str, sum: &str, reason: &str) {
        let dest = self.error_path(name, sum);
        if !dest.exists() {
            let ok = create_dir_all_private(&self.repo.errors_dir()).is_ok()
                && rename_durable(path, &dest).is_ok();
            if ok {
                self.write_reason(&dest, reason);
            }
        }
        tracing::error!(server = %self.server, "{reason}; refused copy kept in {}", dest.display());
    }

    fn error_path(&self, name: &str, sum: &str) -> PathBuf {
        self.repo
            .errors_dir()
            .join(format!("{name}.{}", &sum[..sum.len().min(12)]))
    }

    fn write_reason(&self, dest: &Path, reason: &str) {
        let mut note = dest.as_os_str().to_owned();
        note.push(".reason");
        let _ = write_atomic(Path::new(&note), format!("{reason}\n").as_bytes());
    }

    /// Segment size of this archive.
    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }
}
