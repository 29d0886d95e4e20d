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

use super::tar_store::{store_stream, StoreOptions, Stored, StreamMsg};
use super::{json_lines, BackupDir, FileEntry, FileKind};
use crate::error::{IoError, IoResultExt};
use crate::progress::Progress;
use bytes::Bytes;
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

/// Bytes handed to the store per message.
const PIECE: usize = 512 * 1024;

/// Messages queued between the tar writer and the store.
const QUEUE: usize = 16;

/// Uploads the staged copy indexed in `dir`'s files.jsonl. On return the backup's
/// objects are stored and files.jsonl and bundles.jsonl are written locally, not
/// yet committed ([`Stored::commit`] uploads them). The plain index is kept as
/// [`STAGED_INDEX`].
pub fn upload_staged(
    dir: &BackupDir,
    tablespaces: &[(u32, String)],
    pool: &rayon::ThreadPool,
    opts: &StoreOptions,
    abort: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Stored, UploadError> {
    let plain = dir.root().join(STAGED_INDEX);
    std::fs::rename(dir.files_path(), &plain).at(dir.files_path())?;
    let (tx, rx) = tokio::sync::mpsc::channel::<StreamMsg>(QUEUE);
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            let mut out = ChannelWriter {
                tx,
                buf: Vec::with_capacity(PIECE),
            };
            let sent = send_archives(dir, &plain, tablespaces, abort, &mut out);
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
            (Ok(()), Err(e)) => Err(failed(e)),
            (Ok(()), Ok(s)) => Ok(s),
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

/// Writes the data directory as `base.tar`, then each tablespace as `<oid>.tar`.
fn send_archives(
    dir: &BackupDir,
    plain: &Path,
    tablespaces: &[(u32, String)],
    abort: &AtomicBool,
    out: &mut ChannelWriter,
) -> Result<(), UploadError> {
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
        let file = std::fs::File::open(plain).at(plain)?;
        let entries = json_lines::<FileEntry>(
            io::BufReader::with_capacity(256 * 1024, file),
            plain.to_path_buf(),
        );
        for e in entries {
            let e = e.map_err(failed)?;
            if e.tablespace != tablespace {
                continue;
            }
            if abort.load(Ordering::Relaxed) {
                return Err(failed("interrupted"));
            }
            append(&mut tar, &local, &e)?;
        }
        tar.finish()
            .map_err(|e| failed(format!("archive {name}: {e}")))?;
    }
    out.flush().map_err(failed)
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
