//! The one error type of the PostgreSQL client.
//!
//! Every variant displays on one line and never contains a password: connection
//! strings only ever appear masked, and the server never echoes a password back.

use std::io;

/// Everything that can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string (or a value derived from it) is invalid.
    #[error("invalid connection string: {0}")]
    Config(String),
    /// A caller-supplied name or value that cannot be sent (an empty slot name,
    /// a setting name with odd characters...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The transport could not be established (TCP, Unix socket, or the connect timeout).
    #[error("could not connect to {target}: {source}")]
    Connect {
        /// `host:port` or the Unix socket path.
        target: String,
        /// What the operating system (or the timeout) said.
        #[source]
        source: io::Error,
    },
    /// TLS negotiation or certificate verification failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Authentication could not be carried out on the client side (no password,
    /// unsupported method, bad SCRAM exchange). A server-side refusal is [`PgError::Server`].
    #[error("authentication failed: {0}")]
    Auth(String),
    /// An ErrorResponse from the server.
    #[error("{severity}: {message}{}", fmt_detail(detail))]
    Server {
        /// `ERROR`, `FATAL` or `PANIC`.
        severity: String,
        /// The SQLSTATE, such as `28P01` or `42710`.
        code: String,
        /// The primary message.
        message: String,
        /// The optional DETAIL field.
        detail: Option<String>,
    },
    /// The server sent something this client does not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// An I/O error on an established connection.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection unexpectedly.
    #[error("server closed the connection unexpectedly")]
    Closed,
}

fn fmt_detail(detail: &Option<String>) -> String {
    match detail {
        Some(d) if !d.trim().is_empty() => {
            let flat: Vec<&str> = d.split_whitespace().collect();
            format!(" ({})", flat.join(" "))
        }
        _ => String::new(),
    }
}

impl PgError {
    /// The SQLSTATE of a server error (`42710` for "slot already exists", `28P01`
    /// for a wrong password...); `None` for every other kind of error.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the error comes from the network rather than from the server's
    /// judgement: retrying later (reconnecting) may help.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            PgError::Connect { .. } | PgError::Io(_) | PgError::Closed | PgError::Tls(_)
        ) || matches!(self, PgError::Server { severity, .. } if severity == "FATAL" || severity == "PANIC")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_is_one_readable_line() {
        let e = PgError::Server {
            severity: "FATAL".into(),
            code: "28P01".into(),
            message: "password authentication failed for user \"x\"".into(),
            detail: None,
        };
        assert_eq!(
            e.to_string(),
            "FATAL: password authentication failed for user \"x\""
        );
        assert_eq!(e.code(), Some("28P01"));
        let e = PgError::Server {
            severity: "ERROR".into(),
            code: "58P01".into(),
            message: "m".into(),
            detail: Some("line one\nline two".into()),
        };
        assert_eq!(e.to_string(), "ERROR: m (line one line two)");
        assert_eq!(PgError::Closed.code(), None);
    }
}
