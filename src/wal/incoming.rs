//! `archive-wal`: the WAL files `archive_command` delivered into `<server>/incoming/`
//! (by rsync or cp) are checked and stored in the archive in WAL order, exactly as
//! `put-wal` stores what it reads on stdin, then removed from `incoming/`.
//!
//! Dot-files (rsync's `.<name>.XXXXXX` while it writes, put-wal's spool) and names
//! that are not WAL file names are left alone. A bad file goes to `errors/` with its
//! reason, except a short file modified within [`SETTLE_TIME`], which may still be
//! being written by a plain copy and is left for the next run. One run at a time per
//! server (`lock/archive-wal.lock`).

use super::archive::{ArchiveError, WalArchive};
use super::put::{put_wal, PutError, PutStatus};
use crate::error::{IoError, IoResultExt};
use crate::lock::{JobLock, LockError};
use crate::repo::durable::remove_durable;
use crate::repo::{Repository, ServerRepo};
use crate::types::segment::MIN_SEG_SIZE;
use crate::types::WalFileName;
use serde::Serialize;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A truncated file younger than this is assumed still being copied.
pub const SETTLE_TIME: Duration = Duration::from_secs(60);
/// A put-wal spool file (`.put-wal.*`) older than this was left by a killed put-wal.
pub const STALE_SPOOL_AGE: Duration = Duration::from_secs(3600);

/// Why `archive-wal` stopped.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    /// Another archive-wal holds the server's lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The archive could not be opened.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A file could not be stored for a reason that is not the file's fault (disk,
    /// catalog); it stays in incoming/ for the next run.
    #[error(transparent)]
    Put(#[from] PutError),
    /// incoming/ could not be read, or a file not removed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A file that was refused and moved to `errors/`.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedFile {
    /// Its name in incoming/.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IncomingReport {
    /// The server.
    pub server: String,
    /// Files stored now.
    pub archived: Vec<String>,
    /// Files whose identical content was already archived (removed from incoming/).
    pub already_present: Vec<String>,
    /// Backup history files accepted and not stored.
    pub ignored: Vec<String>,
    /// Bytes received (uncompressed) of the files stored now.
    pub bytes: u64,
    /// Their bytes on disk in the archive.
    pub stored_bytes: u64,
    /// Files moved to errors/.
    pub refused: Vec<RefusedFile>,
    /// Files left in incoming/: still being written, or not WAL files.
    pub left: Vec<String>,
}

/// Sort key putting WAL files in WAL order: history files first, then by position
/// (the segment number, read by the one WAL name parser) and name (timeline).
fn wal_order(name: &str) -> (u8, u64, String) {
    // The smallest segment size numbers segments in the same order as the
    // cluster's own (a segment's low part is below every size's segments per id).
    match WalFileName::parse(name, MIN_SEG_SIZE) {
        Some(WalFileName::History(_)) => (0, 0, name.to_string()),
        Some(
            WalFileName::Segment(s) | WalFileName::Partial(s) | WalFileName::BackupHistory(s, _),
        ) => (1, s.segno, name.to_string()),
        None => (2, 0, name.to_string()),
    }
}

/// Whether a name in incoming/ is one archive-wal processes.
fn is_wal_name(name: &str) -> bool {
    !name.starts_with('.') && WalFileName::parse(name, MIN_SEG_SIZE).is_some()
}

/// Removes a put-wal spool file nobody has written for [`STALE_SPOOL_AGE`].
fn remove_if_stale(path: &Path) {
    let old = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age > STALE_SPOOL_AGE);
    if old && fs::remove_file(path).is_ok() {
        tracing::info!("removed {}, left by an interrupted put-wal", path.display());
    }
}

/// Archives every complete WAL file in `server`'s incoming/ folder (kept in the local
/// home) into the repository's store.
pub fn archive_incoming(
    repository: &Repository,
    server: &str,
) -> Result<IncomingReport, IncomingError> {
    let home = repository.home();
    let _lock = JobLock::acquire(
        &crate::lock::archive_wal_lock(&ServerRepo::new(home, server)),
        &format!("archive-wal for server '{server}'"),
    )?;
    let mut report = IncomingReport {
        server: server.to_string(),
        ..Default::default()
    };
    let dir = ServerRepo::new(home, server).incoming_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(source) => return Err(IoError::new(dir, source).into()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.at(&dir)?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(".put-wal.") {
            remove_if_stale(&entry.path());
            continue;
        }
        if name.starts_with('.') {
            continue;
        }
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && is_wal_name(&name) {
            names.push(name);
        } else {
            report.left.push(name);
        }
    }
    if names.is_empty() {
        return Ok(report);
    }
    names.sort_by_key(|n| wal_order(n));
    let archive = WalArchive::open(repository, server, None, 16 << 20)?;
    for name in names {
        let path = dir.join(&name);
        let mut file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(IoError::new(path, source).into()),
        };
        let modified = file.metadata().and_then(|m| m.modified()).ok();
        match put_wal(repository, server, Some(&name), &mut file) {
            Ok(o) => {
                match o.status {
                    PutStatus::Stored => {
                        report.bytes += o.size;
                        report.stored_bytes += o.stored_size;
                        report.archived.push(name.clone());
                    }
                    PutStatus::AlreadyPresent => report.already_present.push(name.clone()),
                    PutStatus::Ignored => report.ignored.push(name.clone()),
                }
                drop(file);
                remove_durable(&path).at(&path)?;
            }
            Err(e @ PutError::Truncated { .. })
                if modified.is_some_and(|m| {
                    SystemTime::now()
                        .duration_since(m)
                        .is_ok_and(|age| age < SETTLE_TIME)
                }) =>
            {
                tracing::info!(
                    server,
                    "{e}; left in incoming/ (may still be being written)"
                );
                report.left.push(name);
            }
            Err(e) if e.is_bad_file() => {
                drop(file);
                let reason = e.to_string();
                if matches!(e, PutError::Archive(ArchiveError::Conflict { .. })) {
                    // put-wal already kept this content in errors/.
                    remove_durable(&path).at(&path)?;
                } else {
                    archive.quarantine(&path, &reason);
                }
                report.refused.push(RefusedFile { name, reason });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_order_puts_history_first_then_position_then_timeline() {
        let mut v = vec![
            "000000020000000000000005",
            "000000010000000000000004",
            "00000002.history",
            "000000010000000000000005.partial",
            "000000010000000100000000",
        ];
        v.sort_by_key(|n| wal_order(n));
        assert_eq!(
            v,
            [
                "00000002.history",
                "000000010000000000000004",
                "000000010000000000000005.partial",
                "000000020000000000000005",
                "000000010000000100000000",
            ]
        );
        assert!(is_wal_name("000000010000000000000004"));
        assert!(!is_wal_name(".000000010000000000000004.AbC123"));
        assert!(!is_wal_name("notes.txt"));
    }
}
