//! pgbk's error policy, and the one way the library attaches a path to an I/O error.
//!
//! It sits below every other module and uses none of them, so any module may use it.
//!
//! # The policy
//!
//! 1. **What a library function returns.** A public function of the library returns
//!    its module's error enum, derived with `thiserror` (`BackupError`, `RestoreError`,
//!    `PgError`, `ConfigError`…): never `anyhow::Error`, never `Box<dyn Error>`, and not
//!    a bare `String`. A private helper returns the enum of its module, or a small enum
//!    of its own when its caller tells its cases apart. `anyhow` lives only at the CLI
//!    edge: `src/main.rs` and `src/commands/`.
//! 2. **When a typed variant is worth it.** A variant of its own, with the facts as
//!    fields, when a caller branches on it (an exit code, a retry, "not found" against
//!    "corrupt", a lock held by another process), or when the error crosses a module
//!    boundary and the module above may need to tell it apart. An error that is only
//!    ever printed gets a message variant (`Refused(String)`, `Invalid(String)`): a
//!    typed error still, but no finer than its callers need.
//!
//!    Text is right where the failure is data rather than an error that propagates:
//!    a probe's outcome in `check`'s report (`{"error": "…"}`), the reason recorded
//!    in a FAILED backup's `backup.json`, the CopyFail message sent to the server,
//!    a value parser's message that `ConfigError::BadValue` wraps with file, line
//!    and option.
//! 3. **How a path or a server is attached: once, by the layer that knows it.**
//!    - A path to an I/O error: where the I/O happens, with [`IoResultExt::at`]
//!      (`fs::read(&p).at(&p)?`). It gives an [`IoError`], shown as
//!      `<path>: <what the system said>`; a module's enum wraps it as
//!      `Io(#[from] IoError)` with `#[error(transparent)]`. No hand-written
//!      `map_err(|e| format!("{}: {e}", p.display()))`.
//!    - A server: the variant has a `server: String` field and its message starts
//!      with `server '<name>': ` (the JSON error document reads the name from there).
//!    - A remote host: `ssh <target>: ` (`ssh::SshError`); an object of the
//!      repository: its key (`repo::store::StoreError`).
//!
//!    A layer adds only what the layer below did not say: no message names its path or
//!    server twice.
//! 4. **What reaches the user: one line.** A command turns the library error into
//!    `anyhow::Error` (adding `.context` only when it says something new); `src/main.rs`
//!    prints it once as `pgbk: <line>`, built by `output::error_line` from the
//!    error chain, and maps it to the exit code (`commands::UsageError` and
//!    `ConfigError` give 2, `commands::CodedError` its own code, anything else 1).
//!    No backtraces and no `Debug` output for user errors; a panic is a bug.
//!    Messages are the interface: integration tests assert on them, so a refactoring
//!    keeps their text.

use std::io;
use std::path::{Path, PathBuf};

/// An I/O error with the path it happened on: `<path>: <what the system said>`.
///
/// Made with [`IoResultExt::at`]; a module's error enum wraps it as
/// `Io(#[from] IoError)`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct IoError {
    /// The file or folder the operation was on.
    pub path: PathBuf,
    /// What the system said.
    pub source: io::Error,
}

impl IoError {
    /// An error on `path` (for an `io::Error` that did not come from an `io::Result`).
    pub fn new(path: impl Into<PathBuf>, source: io::Error) -> IoError {
        IoError {
            path: path.into(),
            source,
        }
    }

    /// The kind of the underlying error (`NotFound`, `AlreadyExists`…), for callers
    /// that branch on it.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// Attaches a path to an [`io::Result`]: `fs::read(&p).at(&p)?`.
pub trait IoResultExt<T> {
    /// The result, its error naming `path`.
    fn at(self, path: impl AsRef<Path>) -> Result<T, IoError>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(path.as_ref(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_path_then_the_system_message() {
        let e = std::fs::read("/nonexistent/pgbk-error-test")
            .at("/nonexistent/pgbk-error-test")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e
            .to_string()
            .starts_with("/nonexistent/pgbk-error-test: No such file or directory"));
        assert!(std::error::Error::source(&e).is_some());
    }
}
