//! Writing a backup's stored files: a new file never through a link (0600, its
//! folders 0700), early writeback, and the error storing returns. Shared by the
//! tar store, its bundles and rsync backups, below all of them.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Why storing failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file of the repository failed.
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// The stream holds something pgbk refuses to store.
    #[error("{0}")]
    Invalid(String),
    /// The stream stopped before the server confirmed the end of the backup.
    #[error("the backup stream ended before the backup was complete")]
    Aborted,
    /// The repository's object store refused or lost an upload.
    #[error(transparent)]
    Upload(Box<crate::repo::store::StoreError>),
}

/// Asks the kernel to start writing a file's dirty pages to disk now, without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the disk works while the
/// backup goes on. Advisory: durability comes from the backup's final `syncfs`.
pub fn start_file_writeback(f: &File) {
    // SAFETY: sync_file_range on a descriptor the caller owns, for its whole length.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// A new file (never an existing name, so never through a link), 0600, its
/// folders made 0700 where missing.
pub fn create_file(disk: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(disk)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = disk.parent() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            open()
        }
        r => r,
    }
}
