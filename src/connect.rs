//! Connecting to a configured server for a purpose: which of its connection strings
//! serves which job (SQL, SQL on the primary, WAL streaming), with which
//! `application_name` and timeout, and errors that name the server and the option.

use crate::config::ServerConfig;
use crate::pg::{ConnInfo, ConnectOptions, Connection, PgError};
use std::path::PathBuf;
use std::time::Duration;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A server could not be reached for a job.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// One of the server's connection strings does not parse: a configuration
    /// mistake.
    #[error("server '{server}': option '{option}' in {}: {source}", file.display())]
    Conninfo {
        /// The server.
        server: String,
        /// The option holding the string (`conninfo`, `streaming_conninfo`...).
        option: String,
        /// The configuration file that sets it.
        file: PathBuf,
        /// Why it does not parse.
        source: Box<PgError>,
    },
    /// The server refused or could not be reached.
    #[error("server '{server}'{via}")]
    Connect {
        /// The server.
        server: String,
        /// ` (streaming)` for a replication connection, else empty.
        via: &'static str,
        /// What the client said.
        source: Box<PgError>,
    },
}

/// Parses one of a server's connection strings, naming the option on failure.
pub fn conninfo(server: &ServerConfig, option: &str, text: &str) -> Result<ConnInfo, ConnectError> {
    ConnInfo::parse(text).map_err(|source| ConnectError::Conninfo {
        server: server.name.clone(),
        option: option.to_string(),
        file: server.file.clone(),
        source: Box::new(source),
    })
}

/// Opens an ordinary SQL connection (`conninfo`).
pub async fn connect_sql(server: &ServerConfig) -> Result<Connection, ConnectError> {
    connect_sql_to(server, "conninfo", &server.conninfo).await
}

/// Opens an ordinary SQL connection to the primary: `primary_conninfo` when the
/// server's `conninfo` names a standby, else `conninfo` (WAL switches).
pub async fn connect_primary_sql(server: &ServerConfig) -> Result<Connection, ConnectError> {
    match &server.primary_conninfo {
        Some(p) => connect_sql_to(server, "primary_conninfo", p).await,
        None => connect_sql(server).await,
    }
}

async fn connect_sql_to(
    server: &ServerConfig,
    option: &str,
    text: &str,
) -> Result<Connection, ConnectError> {
    let info = conninfo(server, option, text)?;
    let opts = ConnectOptions {
        replication: false,
        application_name: Some("pgbk".into()),
        connect_timeout: Some(CONNECT_TIMEOUT),
    };
    Connection::connect(&info, &opts)
        .await
        .map_err(|source| ConnectError::Connect {
            server: server.name.clone(),
            via: "",
            source: Box::new(source),
        })
}

/// Opens receive-wal's replication connection (`wal_streaming_conninfo`, else
/// `streaming_conninfo`), named `streaming_archiver_name`.
pub async fn connect_replication(server: &ServerConfig) -> Result<Connection, ConnectError> {
    let (option, text) = server.wal_streaming();
    let info = conninfo(server, option, text)?;
    let opts = ConnectOptions {
        replication: true,
        application_name: Some(server.streaming_archiver_name.clone()),
        connect_timeout: Some(CONNECT_TIMEOUT),
    };
    Connection::connect(&info, &opts)
        .await
        .map_err(|source| ConnectError::Connect {
            server: server.name.clone(),
            via: " (streaming)",
            source: Box::new(source),
        })
}
