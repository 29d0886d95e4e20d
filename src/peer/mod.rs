//! Replication between pgbk managers (Barman's passive node): a *passive* server —
//! one with `primary_ssh_command` — mirrors the backups, archived WAL and current
//! partial segment that another pgbk (the primary manager) holds for that server.
//!
//! - [`sync_info`]: the primary side, what there is to copy since a cursor;
//! - [`replicate`]: the passive side, one verified, resumable copy pass over SSH;
//! - [`pool`]: the `parallel_jobs` transfer workers, one SSH session each;
//! - [`transfer`]: one object fetched over SFTP and verified before it is named;
//! - [`sftp_batch`]: many small objects read at once, SFTP requests pipelined;
//! - [`work_queue`]: the workers' two-lane queue (large objects, small batches);
//! - [`paths`]: every name and path the peer sends is checked before use.

pub mod paths;
pub mod pool;
pub mod replicate;
pub mod sftp_batch;
pub mod sync_info;
pub mod transfer;
pub mod work_queue;

pub use replicate::{replicate_pass, PassReport};
pub use sync_info::SyncInfo;

use crate::backup::BackupError;
use crate::catalog::CatalogError;
use crate::config::ServerConfig;
use crate::lock::{JobLock, LockError};
use crate::repo::ServerRepo;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Why a replication step failed as a whole (single objects that fail are reported
/// in the pass's report instead).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The primary manager could not be reached or authenticated.
    #[error("server '{server}': primary manager {target} unreachable: {msg}")]
    Unreachable {
        server: String,
        target: String,
        msg: String,
    },
    /// `sync-info` failed on the primary or answered something unusable.
    #[error("server '{server}': sync-info on {target} failed: {msg}")]
    SyncInfo {
        server: String,
        target: String,
        msg: String,
    },
    /// The primary holds another PostgreSQL cluster than this repository.
    #[error("server '{server}': {msg}")]
    Identity { server: String, msg: String },
    /// The server's repository could not be opened (its `repository` options).
    #[error("server '{server}': repository: {msg}")]
    Store { server: String, msg: String },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Reading or writing backup metadata failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// A local file operation failed.
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// Another pass of the server (`replicate --follow`, cron) holds its lock.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// One replication pass of a passive server under its replicate lock, so passes of
/// `replicate`, `replicate --follow` and `cron` never overlap.
pub fn replicate_pass_locked(
    home: &Path,
    server: &ServerConfig,
    stop: &AtomicBool,
) -> Result<PassReport, PeerError> {
    let _lock = JobLock::acquire(
        &crate::lock::replicate_lock(&ServerRepo::new(home, &server.name)),
        &format!("replicate for server '{}'", server.name),
    )?;
    replicate_pass(home, server, stop)
}
