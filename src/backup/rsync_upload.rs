//! An rsync backup on object storage. rsync needs files to compare against, so
//! it copies into the backup's local folder under the home (the staging copy),
//! exactly as on the local backend; then the staged files go up through the same
//! store as a streamed backup ([`super::tar_store`]: zstd frames, small files in
//! bundles, create-only uploads), fed as the tar archives BASE_BACKUP would send.
//! In the bucket an rsync backup is laid out like a streamed one, so restore,
//! verify, replicate and retention need nothing of their own.
//!
//! Every staged file is read back against the checksum the index took of it as it
//! goes up: a staged file that changed since (or a hard-linked file that differs
//! from the previous backup's record) fails the backup instead of being stored.
//!
//! The staged copy of the newest backup stays in the home (with its plain index,
//! [`STAGED_INDEX`]) for the next rsync to compare against (`--link-dest`); older
//! staged copies are removed once a newer one is stored.
//!
//! With `reuse_backup = link`, a staged file whose content (its index checksum)
//! is the one the previous backup stored under the same path is not uploaded
//! again: its entry refers to that object (`in_backup`), as a hard link does on
//! the local backend. The bucket keeps such an object while any backup refers to
//! it (see `retention::references`).

use super::tar_store::{store_stream, StoreOptions, Stored, StreamMsg};
use super::{json_lines, BackupDir, BackupInfo, BackupStatus, FileEntry, FileKind};
use crate::error::{IoError, IoResultExt};
use crate::progress::Progress;
use bytes::Bytes;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The plain index of a staged copy (what files.jsonl is on the local backend):
/// the checksums the next backup reuses for files it hard-links.
pub const STAGED_INDEX: &str = "rsync-files.jsonl";

/// Why the upload of a staged copy failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A staged file is not what the index recorded (changed since, or a hard link
    /// to a damaged base): the staged copies cannot be trusted as a base.
    #[error("{0}")]
    Staged(String),
    /// The store, the stream or this host failed.
    #[error("{0}")]
    Failed(String),
    /// A local file (the staged copy, its index) could not be read or moved.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The stored files of an earlier backup by tablespace, then path, each entry
/// naming the backup that holds its object: what an unchanged staged file refers to.
pub type Referable = HashMap<Option<u32>, HashMap<String, FileEntry>>;

/// Entries sent to the store per [`StreamMsg::Referenced`] message.
const REFERENCED_BATCH: usize = 1000;

/// The backups a backup reusing `previous`'s files may refer to: `previous` and
/// those it refers to itself (an entry always names the backup that stored it).
pub fn references_of(previous: &BackupInfo) -> Vec<String> {
    let mut ids = previous.references.clone();
    ids.push(previous.backup_id.clone());
    ids.sort();
    ids.dedup();
    ids
}

/// The stored files of `previous` a new backup may refer to, read from the store.
/// Empty (everything is uploaded) when the backup is no longer `DONE` there, as
/// when a delete removed it since this backup chose it, or its list is unreadable.
pub fn referable(previous: &BackupDir) -> Referable {
    let mut map = Referable::new();
    match previous.read_info() {
        Ok(i) if i.status == BackupStatus::Done => {}
        Ok(i) => {
            tracing::warn!(
                "backup {} is {} now: every file is uploaded",
                previous.id(),
                i.status.as_str()
            );
            return map;
        }
        Err(e) => {
            tracing::warn!("{e}: every file is uploaded");
            return map;
        }
    }
    let entries = match previous.files() {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("{e}: every file is uploaded");
            return map;
        }
    };
    for e in entries {
        let mut e = match e {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!("{err}: every file is uploaded");
                return Referable::new();
            }
        };
        if e.kind != FileKind::File || e.size == 0 || e.object.is_none() || e.checksum.is_none() {
            continue;
        }
        if e.in_backup.is_none() {
            e.in_backup = Some(previous.id().to_string());
        }
        map.entry(e.tablespace)
            .or_default()
            .insert(e.path.clone(), e);
    }
    map
}

/// The earlier backup's entry of the same path and content as the staged file
/// `e`, if there is one.
fn same_stored<'a>(e: &FileEntry, referable: &'a Referable) -> Option<&'a FileEntry> {
    if e.kind != FileKind::File || e.size == 0 {
        return None;
    }
    let old = referable.get(&e.tablespace)?.get(&e.path)?;
    (old.size == e.size && old.checksum.is_some() && old.checksum == e.checksum).then_some(old)
}

/// The entry of staged file `e` referring to `old`'s object.
fn reference(e: &FileEntry, old: &FileEntry) -> FileEntry {
    FileEntry {
        object: old.object.clone(),
        compression: old.compression.clone(),
        stored_size: old.stored_size,
        stored_checksum: old.stored_checksum.clone(),
        offset: old.offset,
        length: old.length,
        in_backup: old.in_backup.clone(),
        ..e.clone()
    }
}

/// Bytes handed to the store per message.
const PIECE: usize = 512 * 1024;

/// Messages queued between the tar writer and the store.
const QUEUE: usize = 16;

/// Uploads the staged copy indexed in `dir`'s files.jsonl, but the files
/// `referable` already holds with the same content, which are recorded as
/// references to it. On return the backup's objects are stored and files.jsonl
/// and bundles.jsonl are written locally, not yet committed ([`Stored::commit`]
/// uploads them); the second value is the bytes of the files referred to. The
/// plain index is kept as [`STAGED_INDEX`].
pub fn upload_staged(
    dir: &BackupDir,
    tablespaces: &[(u32, String)],
    pool: &rayon::ThreadPool,
    opts: &StoreOptions,
    abort: &AtomicBool,
    progress: &dyn Progress,
    referable: &Referable,
) -> Result<(Stored, u64), UploadError> {
    let plain = dir.root().join(STAGED_INDEX);
    std::fs::rename(dir.files_path(), &plain).at(dir.files_path())?;
    let (tx, rx) = tokio::sync::mpsc::channel::<StreamMsg>(QUEUE);
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            let mut out = ChannelWriter {
                tx,
                buf: Vec::with_capacity(PIECE),
            };
            let sent = send_archives(dir, &plain, tablespaces, abort, referable, &mut out);
            // Ending without End tells the store the stream was cut short.
            if sent.is_ok() {
                let _ = out.tx.blocking_send(StreamMsg::End);
            }
            // A closed channel means the store stopped first: its error is the cause.
            (sent, out.tx.is_closed())
        });
        let stored = store_stream(rx, dir, pool, opts, progress, None);
        let (sent, store_stopped) = producer
            .join()
            .unwrap_or_else(|_| (Err(failed("the staged-copy reader panicked")), false));
        match (sent, stored) {
            (Err(_), Err(e)) if store_stopped => Err(failed(e)),
            // The reader's own failure (a changed file) explains the store's.
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(failed(e)),
            (Ok(referred), Ok(s)) => Ok((s, referred)),
        }
    })
}

/// The plain index of a staged copy, if `dir` has one on this host.
pub fn staged_index(dir: &BackupDir) -> Option<PathBuf> {
    let p = dir.root().join(STAGED_INDEX);
    p.is_file().then_some(p)
}

/// Removes the staged copies of the server's backups other than `keep` (each one
/// the base of no future backup once `keep` is stored).
pub fn remove_older_staged(backups_dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(backups_dir) else {
        return;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().to_string();
        if id == keep || !super::is_backup_id(&id) {
            continue;
        }
        let root = e.path();
        for sub in ["data", "tablespaces"] {
            let _ = std::fs::remove_dir_all(root.join(sub));
        }
        let _ = std::fs::remove_file(root.join(STAGED_INDEX));
        // Only an empty folder goes: anything else is another job's.
        if std::fs::remove_dir(&root).is_ok() {
            tracing::debug!("removed the staged copy of backup {id}");
        }
    }
}

/// Writes the data directory as `base.tar`, then each tablespace as `<oid>.tar`,
/// each followed by the entries of its files that refer to an earlier backup's
/// objects; returns the bytes of those files.
fn send_archives(
    dir: &BackupDir,
    plain: &Path,
    tablespaces: &[(u32, String)],
    abort: &AtomicBool,
    referable: &Referable,
    out: &mut ChannelWriter,
) -> Result<u64, UploadError> {
    let mut referred = 0;
    let read_plain = || -> Result<_, UploadError> {
        let file = std::fs::File::open(plain).at(plain)?;
        Ok(json_lines::<FileEntry>(
            io::BufReader::with_capacity(256 * 1024, file),
            plain.to_path_buf(),
        ))
    };
    let roots = std::iter::once((None, "base.tar".to_string(), String::new())).chain(
        tablespaces
            .iter()
            .map(|(oid, loc)| (Some(*oid), format!("{oid}.tar"), loc.clone())),
    );
    for (tablespace, name, location) in roots {
        out.flush().map_err(failed)?;
        out.tx
            .blocking_send(StreamMsg::Archive {
                name: name.clone(),
                location,
            })
            .map_err(|_| failed("the store stopped"))?;
        let local = match tablespace {
            None => dir.data_dir(),
            Some(oid) => dir.tablespace_dir(oid),
        };
        let mut tar = tar::Builder::new(&mut *out);
        for e in read_plain()? {
            let e = e.map_err(failed)?;
            if e.tablespace != tablespace {
                continue;
            }
            if abort.load(Ordering::Relaxed) {
                return Err(failed("interrupted"));
            }
            if same_stored(&e, referable).is_none() {
                append(&mut tar, &local, &e)?;
            }
        }
        tar.into_inner()
            .map_err(|e| failed(format!("archive {name}: {e}")))?;
        if referable.is_empty() {
            continue;
        }
        // A second pass over the index: the references, a batch at a time.
        out.flush().map_err(failed)?;
        let mut batch = Vec::with_capacity(REFERENCED_BATCH);
        for e in read_plain()? {
            let e = e.map_err(failed)?;
            if e.tablespace != tablespace {
                continue;
            }
            if let Some(old) = same_stored(&e, referable) {
                referred += e.size;
                batch.push(reference(&e, old));
            }
            if batch.len() >= REFERENCED_BATCH {
                send_referenced(out, std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            send_referenced(out, batch)?;
        }
    }
    out.flush().map_err(failed)?;
    Ok(referred)
}

fn send_referenced(out: &mut ChannelWriter, batch: Vec<FileEntry>) -> Result<(), UploadError> {
    out.tx
        .blocking_send(StreamMsg::Referenced(batch))
        .map_err(|_| failed("the store stopped"))
}

fn failed(e: impl std::fmt::Display) -> UploadError {
    UploadError::Failed(e.to_string())
}

/// One entry of the plain index as a tar member; a file's bytes are checked
/// against the index's checksum on the way.
fn append(
    tar: &mut tar::Builder<&mut ChannelWriter>,
    local: &Path,
    e: &FileEntry,
) -> Result<(), UploadError> {
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode & 0o7777);
    h.set_mtime(e.mtime.max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    let path = local.join(&e.path);
    match e.kind {
        FileKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            Ok(tar.append_data(&mut h, &e.path, io::empty()).at(&path)?)
        }
        FileKind::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            let target = e.target.as_deref().unwrap_or_default();
            Ok(tar.append_link(&mut h, &e.path, target).at(&path)?)
        }
        FileKind::File => {
            let f = std::fs::File::open(&path).at(&path)?;
            let len = f.metadata().at(&path)?.len();
            if len != e.size {
                return Err(UploadError::Staged(format!(
                    "{}: the staged file changed ({len} bytes, indexed with {})",
                    path.display(),
                    e.size
                )));
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(e.size);
            let mut hashed = Hashing {
                inner: f.take(e.size),
                hasher: blake3::Hasher::new(),
            };
            tar.append_data(&mut h, &e.path, &mut hashed).at(&path)?;
            let sum = hashed.hasher.finalize().to_hex().to_string();
            if e.checksum.as_deref() != Some(sum.as_str()) {
                return Err(UploadError::Staged(format!(
                    "{}: the staged file does not match its checksum (BLAKE3 {sum}, indexed {})",
                    path.display(),
                    e.checksum.as_deref().unwrap_or("none")
                )));
            }
            Ok(())
        }
    }
}

/// A reader that hashes what passes through.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Tar bytes in pieces to the store's channel.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<StreamMsg>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx
            .blocking_send(StreamMsg::Data(Bytes::from(piece)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the store stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PIECE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
