//! The indexing half of an rsync backup: once rsync has copied the files, each
//! stored file is read back (in parallel, on rayon) for its BLAKE3 checksum and
//! written to `files.jsonl` as a plain object (`compression: "none"`).
//!
//! A file rsync hard-linked to the previous backup (`reuse_backup = link`) is the
//! very same inode as that backup's file, which is never modified: its checksum is
//! taken from the previous `files.jsonl` instead of reading it again. A file rsync
//! stored is checksummed as soon as rsync has put it in place, while the copy goes
//! on ([`EarlySums`]); the index reads again only files whose early checksum is
//! missing or whose identity (inode, size, mtime) changed since.

use super::rsync_copy::{RemoteEntry, RsyncError};
use super::{BackupDir, FileEntry, FileKind};
use crate::error::{IoError, IoResultExt};
use crate::progress::Progress;
use crate::repo::durable::AtomicFile;
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One copied directory tree: the data directory or one tablespace.
#[derive(Debug, Clone)]
pub struct CopiedRoot {
    /// `None` for the data directory, else the tablespace oid.
    pub tablespace: Option<u32>,
    /// Where its files are stored locally.
    pub local: PathBuf,
    /// Object path prefix relative to the backup folder (`data`, `tablespaces/<oid>`).
    pub object_prefix: String,
    /// The previous backup's copy of the same tree, when files were reused from it.
    pub previous: Option<PathBuf>,
    /// What the remote listing held (exclusions already applied).
    pub entries: Vec<RemoteEntry>,
}

/// Checksums of the previous backup's plain files, by (tablespace, path).
pub type PreviousSums = HashMap<(Option<u32>, String), String>;

/// Reads the previous backup's checksums of plain (rsync) files.
pub fn previous_sums(dir: &BackupDir) -> PreviousSums {
    let mut sums = HashMap::new();
    // On object storage the plain list is the staged copy's own, kept on this host.
    let files: Box<dyn Iterator<Item = Result<FileEntry, super::BackupError>>> = if dir.is_remote()
    {
        let Some(p) = super::rsync_upload::staged_index(dir) else {
            return sums;
        };
        let Ok(f) = std::fs::File::open(&p) else {
            return sums;
        };
        Box::new(super::json_lines(std::io::BufReader::new(f), p))
    } else {
        match dir.files() {
            Ok(files) => Box::new(files),
            Err(_) => return sums,
        }
    };
    for e in files.flatten() {
        if e.kind == FileKind::File && e.compression.as_deref() == Some("none") {
            if let Some(sum) = e.checksum {
                sums.insert((e.tablespace, e.path), sum);
            }
        }
    }
    sums
}

/// Totals of an indexed backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexTotals {
    /// Bytes of all files.
    pub size_bytes: u64,
    /// Bytes this backup added to the disk (files not hard-linked to another backup).
    pub new_bytes: u64,
    /// Bytes shared with an earlier backup through hard links.
    pub reused_bytes: u64,
    /// Regular files.
    pub file_count: u64,
}

fn blake3_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut std::fs::File::open(path)?, &mut h)?;
    Ok((n, h.finalize().to_hex().to_string()))
}

/// Which stored file a checksum taken early was read from: device, inode, size and
/// mtime (seconds and nanoseconds). The index uses an early checksum only if the
/// file still has the same identity, so a file rsync replaced after the early read
/// is read again.
type Identity = (u64, u64, u64, i64, i64);

fn identity(m: &std::fs::Metadata) -> Identity {
    (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec())
}

/// Checksums of stored files taken while rsync was still copying others (see
/// [`EarlySums::record`]), by local path.
#[derive(Default)]
pub struct EarlySums(std::sync::Mutex<HashMap<PathBuf, (Identity, u64, String)>>);

impl EarlySums {
    /// Checksums a file rsync has just put in place (reading it while it is still in
    /// the page cache, overlapping the copy of the next files). Errors are ignored:
    /// the index then reads the file itself.
    pub fn record(&self, path: &Path) {
        let Ok(before) = std::fs::symlink_metadata(path) else {
            return;
        };
        if !before.is_file() {
            return;
        }
        let Ok((n, sum)) = blake3_file(path) else {
            return;
        };
        let Ok(after) = std::fs::symlink_metadata(path) else {
            return;
        };
        if identity(&before) == identity(&after) && n == after.len() {
            if let Ok(mut map) = self.0.lock() {
                map.insert(path.to_path_buf(), (identity(&after), n, sum));
            }
        }
    }

    /// Records the checksum of a file just written here with its current identity
    /// (see `rsync_tar`, which hashes files as it writes them).
    pub fn insert(&self, path: &Path, size: u64, sum: String) {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if let Ok(mut map) = self.0.lock() {
                map.insert(path.to_path_buf(), (identity(&meta), size, sum));
            }
        }
    }

    /// The early checksum of `path` if the file is still the one that was read.
    pub(super) fn get(&self, path: &Path, meta: &std::fs::Metadata) -> Option<(u64, String)> {
        let map = self.0.lock().ok()?;
        let (id, n, sum) = map.get(path)?;
        (*id == identity(meta)).then(|| (*n, sum.clone()))
    }
}

/// Builds every entry of `files.jsonl` (directories and links first, then files) and
/// writes it to a not yet committed [`AtomicFile`] at `dir.files_path()`. Files the
/// listing named but rsync did not store vanished on the server during the copy and
/// are left out (WAL replay recreates whatever the restored cluster needs).
pub fn index(
    dir: &BackupDir,
    roots: &[CopiedRoot],
    links: Vec<FileEntry>,
    previous: &PreviousSums,
    early: &EarlySums,
    pool: &rayon::ThreadPool,
    progress: &dyn Progress,
) -> Result<(AtomicFile, IndexTotals), RsyncError> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for root in roots {
        for e in &root.entries {
            let entry = FileEntry::bare(
                e.path.clone(),
                root.tablespace,
                if e.is_dir {
                    FileKind::Dir
                } else {
                    FileKind::File
                },
                e.mode,
                e.mtime as i64,
            );
            if e.is_dir {
                dirs.push(entry);
            } else {
                files.push((root, entry));
            }
        }
    }
    let total: u64 = roots
        .iter()
        .flat_map(|r| r.entries.iter())
        .map(|e| e.size)
        .sum();
    progress.start("checksums", Some(total));
    let done = AtomicU64::new(0);
    let checked: Vec<Result<Option<(FileEntry, u64)>, IoError>> = pool.install(|| {
        files
            .into_par_iter()
            .map(|(root, mut entry)| {
                let local = root.local.join(&entry.path);
                let meta = match std::fs::symlink_metadata(&local) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(IoError::new(&local, e)),
                };
                if !meta.is_file() {
                    let e = std::io::Error::other("not a regular file");
                    return Err(IoError::new(&local, e));
                }
                let reused = meta.nlink() > 1
                    && root.previous.as_ref().is_some_and(|p| {
                        std::fs::symlink_metadata(p.join(&entry.path))
                            .is_ok_and(|pm| pm.ino() == meta.ino() && pm.dev() == meta.dev())
                    });
                let known = reused
                    .then(|| previous.get(&(root.tablespace, entry.path.clone())))
                    .flatten();
                let (size, sum) = match known {
                    Some(sum) => (meta.len(), sum.clone()),
                    None => match early.get(&local, &meta) {
                        Some(taken) => taken,
                        None => blake3_file(&local).at(&local)?,
                    },
                };
                entry.size = size;
                entry.mtime = meta.mtime();
                entry.checksum = Some(sum);
                entry.object = Some(format!("{}/{}", root.object_prefix, entry.path));
                entry.compression = Some("none".to_string());
                entry.stored_size = size;
                let n = done.fetch_add(size, Ordering::Relaxed) + size;
                progress.set(n);
                Ok(Some((entry, if meta.nlink() > 1 { 0 } else { size })))
            })
            .collect()
    });
    progress.finish();
    let path = dir.files_path();
    let mut out = AtomicFile::create(&path).at(&path)?;
    let mut totals = IndexTotals::default();
    {
        let mut w = std::io::BufWriter::new(&mut out);
        dirs.sort_by(|a, b| (a.tablespace, &a.path).cmp(&(b.tablespace, &b.path)));
        for e in dirs.iter().chain(links.iter()) {
            e.write_line(&mut w).at(&path)?;
        }
        for r in checked {
            let Some((e, new)) = r? else { continue };
            totals.size_bytes += e.size;
            totals.new_bytes += new;
            totals.reused_bytes += e.size - new;
            totals.file_count += 1;
            e.write_line(&mut w).at(&path)?;
        }
        w.flush().at(&path)?;
    }
    Ok((out, totals))
}
