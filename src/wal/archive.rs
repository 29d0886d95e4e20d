//! Storing WAL in the repository: a finished segment is validated, compressed,
//! checksummed, written atomically under `wals/` and entered in the catalog.

use super::header::{validate_segment, HeaderError};
use super::segment::{history_file_name, WalSegment};
use super::{SystemId, TimeLineId};
use crate::catalog::{Catalog, CatalogError, WalKind, WalRecord};
use crate::repo::compress::{checksum, store_compressed, StoredFile, DEFAULT_LEVEL};
use crate::repo::durable::{create_dir_all_private, remove_durable, rename_durable, write_atomic};
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

/// Compresses a file into `dest` chunk by chunk (zstd frames of
/// [`crate::repo::compress::CHUNK_SIZE`]), so memory stays bounded whatever its size,
/// ending with the checksum trailer readers without the catalog verify against.
fn compress_file(src: &Path, dest: &Path, sum: &str) -> std::io::Result<StoredFile> {
    use crate::repo::compress::{read_full, CHUNK_SIZE};
    use crate::repo::durable::AtomicFile;
    use std::io::Write;
    let mut input = fs::File::open(src)?;
    let mut out = AtomicFile::create(dest)?;
    let mut buf = vec![0u8; CHUNK_SIZE];
    let (mut size, mut stored_size) = (0u64, 0u64);
    let mut object = blake3::Hasher::new();
    let mut content = blake3::Hasher::new();
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 && size > 0 {
            break;
        }
        content.update(&buf[..n]);
        let frame = zstd::bulk::compress(&buf[..n], DEFAULT_LEVEL)?;
        out.write_all(&frame)?;
        object.update(&frame);
        size += n as u64;
        stored_size += frame.len() as u64;
        if n < buf.len() {
            break;
        }
    }
    let content = content.finalize();
    if content.to_hex().as_str() != sum {
        return Err(std::io::Error::other(format!(
            "{} changed while it was archived (checksum {} instead of {sum})",
            src.display(),
            content.to_hex()
        )));
    }
    let trailer = crate::repo::compress::checksum_trailer(size, &content);
    out.write_all(&trailer)?;
    object.update(&trailer);
    stored_size += trailer.len() as u64;
    out.commit()?;
    Ok(StoredFile {
        size,
        stored_size,
        checksum: sum.to_string(),
        stored_checksum: object.finalize().to_hex().to_string(),
    })
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
        let sum = checksum(data);
        self.store_with(name, kind, tli, segno, &sum, dest, |dest| {
            if kind == WalKind::History {
                write_atomic(dest, data)?;
                Ok(StoredFile {
                    size: data.len() as u64,
                    stored_size: data.len() as u64,
                    checksum: sum.clone(),
                    // Stored as is: the object is the content.
                    stored_checksum: sum.clone(),
                })
            } else {
                store_compressed(data, dest, DEFAULT_LEVEL)
            }
        })
    }

    /// Stores a file whose content `write` produces at `dest` (atomically), unless the
    /// catalog already holds `name` with the same checksum; different content under an
    /// existing name is a [`ArchiveError::Conflict`] and nothing is written.
    #[allow(clippy::too_many_arguments)]
    fn store_with(
        &self,
        name: &str,
        kind: WalKind,
        tli: TimeLineId,
        segno: Option<u64>,
        sum: &str,
        dest: &Path,
        write: impl FnOnce(&Path) -> std::io::Result<StoredFile>,
    ) -> Result<Archived, ArchiveError> {
        if let Some(existing) = self.catalog.wal_file(&self.server, name)? {
            if existing.checksum == sum && dest.exists() {
                return Ok(Archived::AlreadyPresent(existing));
            }
            if existing.checksum != sum {
                return Err(ArchiveError::Conflict {
                    server: self.server.clone(),
                    name: name.to_string(),
                    existing: existing.checksum,
                    new: sum.to_string(),
                });
            }
        }
        if let Some(dir) = dest.parent() {
            create_dir_all_private(dir).map_err(io_err(dir))?;
        }
        let stored = write(dest).map_err(io_err(dest))?;
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
        Ok(Archived::Stored(rec))
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
        let (name, kind, dest) = if partial {
            (
                format!("{}.partial", seg.name()),
                WalKind::Partial,
                self.repo.partial_segment_path(seg),
            )
        } else {
            (seg.name(), WalKind::Segment, self.repo.segment_path(seg))
        };
        self.store_with(&name, kind, seg.tli, Some(seg.segno), sum, &dest, |dest| {
            compress_file(src, dest, sum)
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
