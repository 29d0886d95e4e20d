//! What `receive-wal` keeps between runs: its lock (one receiver per server) and
//! its state in `streaming/`, which `--reset` clears so the next run starts from the
//! slot's position, else the server's current one.

use super::receiver::RESET_MARKER;
use crate::lock::{JobLock, LockError};
use crate::repo::durable::{remove_durable, write_atomic};
use crate::repo::ServerRepo;
use std::io;
use std::path::PathBuf;

/// The server's receiver lock, taken for the whole run of `receive-wal` (and for
/// `--reset`, which must not pull files from under a running receiver).
pub fn lock_receiver(repo: &ServerRepo) -> Result<JobLock, LockError> {
    JobLock::acquire(
        &crate::lock::receive_wal_lock(repo),
        &format!("receive-wal for server '{}'", repo.server()),
    )
}

/// `--reset` could not clear the receiver's state.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct ResetError {
    /// What was being done (`creating`, `reading`, `removing`, `writing`).
    what: &'static str,
    /// The file or folder.
    path: PathBuf,
    /// What the system said.
    source: io::Error,
}

/// Removes the in-progress partial segment(s) from `streaming/` and leaves the
/// marker that makes the next run start afresh; returns how many files it removed.
/// Call it holding [`lock_receiver`].
pub fn reset_receiver(repo: &ServerRepo) -> Result<usize, ResetError> {
    let err = |what, path: PathBuf| move |source| ResetError { what, path, source };
    repo.ensure_dirs()
        .map_err(err("creating", repo.root().to_path_buf()))?;
    let dir = repo.streaming_dir();
    let mut removed = 0;
    for e in std::fs::read_dir(&dir)
        .map_err(err("reading", dir.clone()))?
        .flatten()
    {
        if e.file_name().to_string_lossy().ends_with(".partial") {
            remove_durable(&e.path()).map_err(err("removing", e.path()))?;
            removed += 1;
        }
    }
    write_atomic(
        &dir.join(RESET_MARKER),
        b"start at the server's current position\n",
    )
    .map_err(err("writing", dir.clone()))?;
    Ok(removed)
}

/// Whether every finished segment up to `wal_file` (a segment name) has left
/// `streaming/`: receive-wal stores finished segments on two workers, so one can
/// be stored before an older one, and a finished segment stays in `streaming/`
/// until it is stored. The partial segment being written does not count.
pub fn stored_through(repo: &ServerRepo, wal_file: &str) -> io::Result<bool> {
    let dir = repo.streaming_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let finished = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if finished && *name <= *wal_file {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_removes_partial_segments_and_leaves_the_marker() {
        let home = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(home.path(), "pg1");
        repo.ensure_dirs().unwrap();
        let dir = repo.streaming_dir();
        std::fs::write(dir.join("000000010000000000000003.partial"), b"x").unwrap();
        std::fs::write(dir.join("000000010000000000000002"), b"x").unwrap();
        let _lock = lock_receiver(&repo).unwrap();
        assert!(lock_receiver(&repo).is_err(), "one receiver per server");
        assert_eq!(reset_receiver(&repo).unwrap(), 1);
        assert!(dir.join(RESET_MARKER).exists());
        assert!(dir.join("000000010000000000000002").exists());
        assert!(!dir.join("000000010000000000000003.partial").exists());
    }

    #[test]
    fn a_segment_is_stored_through_once_no_older_finished_one_waits() {
        let home = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(home.path(), "pg1");
        assert!(stored_through(&repo, "000000010000000000000004").unwrap());
        repo.ensure_dirs().unwrap();
        let dir = repo.streaming_dir();
        std::fs::write(dir.join("000000010000000000000005.partial"), b"x").unwrap();
        std::fs::write(dir.join("000000010000000000000006"), b"x").unwrap();
        assert!(stored_through(&repo, "000000010000000000000004").unwrap());
        std::fs::write(dir.join("000000010000000000000003"), b"x").unwrap();
        assert!(!stored_through(&repo, "000000010000000000000004").unwrap());
    }
}
