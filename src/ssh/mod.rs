//! SSH on the `ssh2` crate (libssh2; blocking, so used from pgbk's blocking code
//! paths only): [`SshTarget`] parses an OpenSSH-style command line once,
//! [`SshSession`] connects with the host key checked against `known_hosts` before
//! anything is transferred, and runs commands on exec channels (collecting their
//! output, or streaming into their stdin).
//!
//! Every error is one line that names the target (`user@host:port`).

pub mod session;
pub mod target;

pub use session::{ExecOutput, RemoteStdin, SshSession};
pub use target::{split_shell, SshTarget, StrictHostKeyChecking};

/// Why an SSH operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The ssh command line cannot be used (a usage error).
    #[error("{0}")]
    Parse(String),
    /// The connection or the SSH handshake failed.
    #[error("ssh {target}: {msg}")]
    Connect { target: String, msg: String },
    /// The host key is unknown, changed, or could not be checked; nothing was sent.
    #[error("ssh: {msg}")]
    HostKey { msg: String },
    /// Every authentication method failed.
    #[error("ssh {target}: authentication failed ({msg})")]
    Auth { target: String, msg: String },
    /// Opening a channel, running a command or moving its data failed.
    #[error("ssh {target}: {msg}")]
    Channel { target: String, msg: String },
}

/// Quotes a word for the remote POSIX shell (`'…'`, with `'` as `'\''`).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%,=".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_a_posix_shell() {
        assert_eq!(shell_quote("/srv/pg data"), "'/srv/pg data'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("/srv/pg-15/data"), "/srv/pg-15/data");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(split_shell(&shell_quote("a'b c")).unwrap(), ["a'b c"]);
    }
}
