//! One lock file per kind of job and server (`<home>/<server>/lock/<kind>.lock`), held
//! with `flock` so a killed holder releases it, and carrying the holder's pid so a
//! refused second run can name it.

use crate::repo::durable::create_dir_all_private;
use crate::repo::ServerRepo;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The ending of every lock file's name; the part before it names the job.
const SUFFIX: &str = ".lock";

/// The lock file of job `task` in a lock folder (`<dir>/<task>.lock`).
pub fn lock_file(dir: &Path, task: &str) -> PathBuf {
    dir.join(format!("{task}{SUFFIX}"))
}

/// The lock a backup of the server holds while it runs.
pub fn backup_lock(repo: &ServerRepo) -> PathBuf {
    lock_file(&repo.lock_dir(), "backup")
}

/// The lock the server's WAL receiver (`receive-wal`) holds.
pub fn receive_wal_lock(repo: &ServerRepo) -> PathBuf {
    lock_file(&repo.lock_dir(), "receive-wal")
}

/// The lock `archive-wal` holds while it moves the server's incoming WAL.
pub fn archive_wal_lock(repo: &ServerRepo) -> PathBuf {
    lock_file(&repo.lock_dir(), "archive-wal")
}

/// The lock a `replicate` pass of a passive server holds.
pub fn replicate_lock(repo: &ServerRepo) -> PathBuf {
    lock_file(&repo.lock_dir(), "replicate")
}

/// The lock `delete`, `keep`, `generate-manifest` and cron's retention hold while
/// they change the server's backups.
pub fn retention_lock(repo: &ServerRepo) -> PathBuf {
    lock_file(&repo.lock_dir(), "retention")
}

/// Takes the server's retention lock (see [`retention_lock`]).
pub fn acquire_retention(repo: &ServerRepo) -> Result<JobLock, LockError> {
    JobLock::acquire(
        &retention_lock(repo),
        &format!("delete or keep for server '{}'", repo.server()),
    )
}

/// The host-wide lock that keeps `cron` passes one at a time.
pub fn cron_lock(home: &Path) -> PathBuf {
    lock_file(home, "cron")
}

/// The host-wide lock that keeps restore drills one at a time.
pub fn drill_lock(home: &Path) -> PathBuf {
    lock_file(home, "drill")
}

/// The lock `get-wal`'s prefetch holds in its spool folder (hidden: the spool
/// holds WAL files).
pub fn prefetch_lock(spool: &Path) -> PathBuf {
    lock_file(spool, ".prefetch")
}

/// A lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{what} is already running (pid {pid}, lock {path})")]
    Held {
        what: String,
        pid: String,
        path: PathBuf,
    },
    /// The lock file could not be opened.
    #[error("lock {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A held lock; released when dropped or when the process dies.
#[derive(Debug)]
pub struct JobLock {
    file: File,
    path: PathBuf,
}

fn open(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        create_dir_all_private(dir)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

fn try_flock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a valid, owned descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

fn read_pid(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut s);
    let pid = s.trim();
    if pid.is_empty() {
        "unknown".to_string()
    } else {
        pid.to_string()
    }
}

impl JobLock {
    /// Takes the lock at `path` for `what` (e.g. "receive-wal for server 'pg1'").
    pub fn acquire(path: &Path, what: &str) -> Result<JobLock, LockError> {
        let ioerr = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = open(path).map_err(ioerr)?;
        if !try_flock(&file).map_err(ioerr)? {
            return Err(LockError::Held {
                what: what.to_string(),
                pid: read_pid(&mut file),
                path: path.to_path_buf(),
            });
        }
        file.set_len(0).map_err(ioerr)?;
        file.seek(SeekFrom::Start(0)).map_err(ioerr)?;
        writeln!(file, "{}", std::process::id()).map_err(ioerr)?;
        file.sync_all().map_err(ioerr)?;
        Ok(JobLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid of the process holding the lock at `path`, or `None` if nobody holds it.
    pub fn holder(path: &Path) -> io::Result<Option<i32>> {
        // Read-only: asking who holds a lock writes nothing (a read-only home).
        let mut file = match OpenOptions::new().read(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if try_flock(&file)? {
            // SAFETY: unlock our own descriptor; closing would do it too.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            return Ok(None);
        }
        Ok(Some(read_pid(&mut file).parse().unwrap_or(0)))
    }
}

/// A pgbk job holding one of a server's locks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunningJob {
    /// The kind of job: the lock file's name without `.lock` (`receive-wal`,
    /// `backup`, `archive-wal`, `replicate`, `retention`).
    pub task: String,
    /// Its process id.
    pub pid: i32,
}

/// The jobs holding a lock in `lock_dir` (a server's `lock/` folder), by task name;
/// empty when the folder does not exist.
pub fn running_jobs(lock_dir: &Path) -> io::Result<Vec<RunningJob>> {
    let entries = match std::fs::read_dir(lock_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        let Some(task) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX))
        else {
            continue;
        };
        if let Some(pid) = JobLock::holder(&path)? {
            out.push(RunningJob {
                task: task.to_string(),
                pid,
            });
        }
    }
    out.sort_by(|a, b| a.task.cmp(&b.task));
    Ok(out)
}

/// Why a job could not be terminated.
#[derive(Debug, thiserror::Error)]
pub enum TerminateError {
    /// No process holds the task's lock.
    #[error("no {task} process is running")]
    NotRunning {
        /// The task asked for.
        task: String,
    },
    /// The holder did not release the lock in time.
    #[error("{task} (pid {pid}) did not stop within {seconds} s of SIGTERM")]
    StillRunning {
        /// The task.
        task: String,
        /// Its pid.
        pid: i32,
        /// How long we waited.
        seconds: u64,
    },
    /// The lock could not be read or the signal not sent.
    #[error("{task}: {source}")]
    Io {
        /// The task.
        task: String,
        /// What failed.
        source: io::Error,
    },
}

/// Sends SIGTERM to the process holding `lock_dir/<task>.lock` (a pgbk job stops
/// cleanly on it: receive-wal flushes, a backup is marked FAILED) and waits up to
/// `timeout` for the lock to be released; returns the pid.
pub fn terminate(
    lock_dir: &Path,
    task: &str,
    timeout: std::time::Duration,
) -> Result<i32, TerminateError> {
    let io = |source| TerminateError::Io {
        task: task.to_string(),
        source,
    };
    let path = lock_file(lock_dir, task);
    let pid = match JobLock::holder(&path).map_err(io)? {
        Some(pid) if pid > 0 => pid,
        _ => {
            return Err(TerminateError::NotRunning {
                task: task.to_string(),
            })
        }
    };
    // SAFETY: kill has no memory preconditions; `pid` holds the lock right now.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io(io::Error::last_os_error()));
    }
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if JobLock::holder(&path).map_err(io)?.is_none() {
            return Ok(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(TerminateError::StillRunning {
        task: task.to_string(),
        pid,
        seconds: timeout.as_secs(),
    })
}

impl Drop for JobLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_jobs_lists_only_held_locks() {
        let dir = tempfile::tempdir().unwrap();
        let held = JobLock::acquire(&dir.path().join("backup.lock"), "a backup").unwrap();
        drop(JobLock::acquire(&dir.path().join("replicate.lock"), "replicate").unwrap());
        let jobs = running_jobs(dir.path()).unwrap();
        assert_eq!(
            jobs,
            vec![RunningJob {
                task: "backup".into(),
                pid: std::process::id() as i32
            }]
        );
        drop(held);
        assert!(running_jobs(dir.path()).unwrap().is_empty());
        assert!(running_jobs(&dir.path().join("none")).unwrap().is_empty());
        assert!(matches!(
            terminate(dir.path(), "backup", std::time::Duration::from_millis(10)),
            Err(TerminateError::NotRunning { .. })
        ));
    }

    #[test]
    fn second_holder_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock/receive-wal.lock");
        assert_eq!(JobLock::holder(&p).unwrap(), None);
        let l = JobLock::acquire(&p, "receive-wal for server 'pg1'").unwrap();
        let e = JobLock::acquire(&p, "receive-wal for server 'pg1'").unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert_eq!(
            JobLock::holder(&p).unwrap(),
            Some(std::process::id() as i32)
        );
        drop(l);
        assert_eq!(JobLock::holder(&p).unwrap(), None);
        JobLock::acquire(&p, "x").unwrap();
    }
}
