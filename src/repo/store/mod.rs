//! The storage interface every repository reader and writer goes through: objects
//! named by `/`-separated keys relative to the repository root
//! (`pg1/wals/0000000100000000/000000010000000000000003.zst`), put atomically
//! (create-only where a name must never change content), read as a stream or by
//! byte range, listed by prefix in key order, deleted in batches.
//!
//! Two backends: [`posix::PosixStore`] (a folder on the backup host, today's layout
//! byte for byte) and [`s3::S3Store`] (any S3-compatible endpoint). Keys that come
//! back from a listing are checked like keys given by the caller: a bucket listing
//! is never trusted to stay inside the repository.

pub mod posix;
pub mod s3;
pub mod s3_settings;

use crate::error::{IoError, IoResultExt};
use std::io::Read;
use std::time::SystemTime;

/// How a put treats an object that already exists under the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// The name must never change content (WAL, a backup's files): an existing
    /// object with the same bytes is success, different bytes are refused.
    Create,
    /// Replace whatever is there (metadata such as `backup.json`).
    Overwrite,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object is stored now.
    Stored,
    /// [`PutMode::Create`] found the very same bytes already stored.
    AlreadyIdentical,
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key.
    pub key: String,
    /// Bytes stored.
    pub size: u64,
    /// When it was last written, when the backend says.
    pub modified: Option<SystemTime>,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object under the key.
    #[error("{key}: not found in {location}")]
    NotFound {
        /// The key.
        key: String,
        /// The store.
        location: String,
    },
    /// [`PutMode::Create`] found different content under the key: nothing changed.
    #[error("{key}: already stored in {location} with different content (refused, the stored object is unchanged)")]
    Conflict {
        /// The key.
        key: String,
        /// The store.
        location: String,
    },
    /// A key that would leave the repository, or is not a valid name.
    #[error("invalid object key '{0}'")]
    InvalidKey(String),
    /// The bytes read back or acknowledged are not the bytes written.
    #[error("{key}: {detail}")]
    Integrity {
        /// The key.
        key: String,
        /// What did not match.
        detail: String,
    },
    /// The repository's settings cannot be used (an `s3_*` option, the
    /// credentials); nothing was sent.
    #[error("{0}")]
    Settings(String),
    /// A local file operation failed (the path is the file, or the key read).
    #[error(transparent)]
    Io(#[from] IoError),
    /// The object store answered with an error.
    #[error("{location}: {operation} {key}: {message}")]
    Remote {
        /// The store.
        location: String,
        /// What was asked (`PUT`, `GET`, `LIST`...).
        operation: &'static str,
        /// The key or prefix.
        key: String,
        /// The store's answer (code and message), or the transport error.
        message: String,
        /// The HTTP status, when there was an answer.
        status: Option<u16>,
    },
}

impl StoreError {
    /// True for a missing object.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// The repository's objects, wherever they are kept.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where the objects are, for messages (never a secret).
    fn location(&self) -> String;

    /// How messages name one object (a path on the local backend, an `s3://` URL).
    fn describe(&self, key: &str) -> String {
        format!("{} {key}", self.location())
    }

    /// Stores `data` under `key` atomically: readers see the old object or the new,
    /// never part of it; once this returns, the object survives a crash.
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<PutOutcome, StoreError>;

    /// [`Store::put`] for content read from `reader` in pieces (large objects are
    /// never held whole in memory).
    fn put_reader(
        &self,
        key: &str,
        reader: &mut dyn Read,
        mode: PutMode,
    ) -> Result<PutOutcome, StoreError>;

    /// The object's bytes as a stream.
    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError>;

    /// `len` bytes of the object from `offset` (fewer at its end).
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError>;

    /// The object's size and time, `None` when there is none.
    fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;

    /// Every object whose key starts with `prefix`, in key order, fetched page by
    /// page (never the whole listing in memory). Stores may differ in order only
    /// where a folder name is also the start of a sibling's name followed by a
    /// character below `/` (SeaweedFS lists `k1/x` before `k1-y`, AWS after), which
    /// pgbk's layout never has.
    fn list<'a>(
        &'a self,
        prefix: &str,
    ) -> Box<dyn Iterator<Item = Result<ObjectMeta, StoreError>> + 'a>;

    /// The names of the folders directly under `folder` (a prefix ending in `/`),
    /// sorted: one LIST with a delimiter on S3, one `read_dir` locally. What finds a
    /// server's backups without listing every object each of them holds.
    fn list_folders(&self, folder: &str) -> Result<Vec<String>, StoreError>;

    /// Deletes the objects (a missing one is not an error).
    fn delete(&self, keys: &[String]) -> Result<(), StoreError>;

    /// Proves the store usable: writes, reads back and deletes a small object
    /// under `pgbk-check/` (what `check` reports as the repository item).
    fn check_access(&self) -> Result<(), StoreError> {
        let key = format!("pgbk-check/write-test-{}", std::process::id());
        let data = b"pgbk write test\n";
        self.put(&key, data, PutMode::Overwrite)?;
        let mut back = Vec::new();
        self.get(&key)?.read_to_end(&mut back).at(&key)?;
        self.delete(std::slice::from_ref(&key))?;
        if back != data {
            return Err(StoreError::Integrity {
                key,
                detail: "read back different bytes than written".into(),
            });
        }
        Ok(())
    }
}

/// Checks a key: non-empty `/`-separated names, none empty, `.` or `..`, no NUL or
/// backslash, no leading `/`.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty()
        || key.contains('\0')
        || key.contains('\\')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(StoreError::InvalidKey(key.to_string()))
    } else {
        Ok(())
    }
}

/// Checks a listing prefix: empty, or a key optionally ending with `/`.
pub fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    match prefix.strip_suffix('/') {
        _ if prefix.is_empty() => Ok(()),
        Some(p) => check_key(p),
        None => check_key(prefix),
    }
}

/// Hex BLAKE3 of `data`: the identity create-only puts compare.
pub fn content_hash(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_repository() {
        for good in [
            "a",
            "pg1/wals/0000000100000000/x.zst",
            "pg1/backups/x/data/base/1/2",
        ] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "../a", "a/../b", "a/./b", ".", "a\0b", "a\\b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("pg1/wals/").is_ok());
        assert!(check_prefix("../").is_err());
    }
}
