//! pgbk's own PostgreSQL client (async, tokio, on `postgres-protocol`).
//!
//! All the SQL pgbk sends is simple-query, so one small client serves both ordinary
//! and replication connections:
//!
//! - [`conninfo`]: libpq connection strings (`key=value` and `postgresql://` URIs)
//!   with libpq's environment fallbacks, and password masking.
//! - [`pgpass`]: the libpq password file.
//! - [`connection`]: TCP / Unix socket / TLS transports, startup, authentication
//!   (trust, cleartext, md5, SCRAM-SHA-256) and simple queries.
//! - [`query`]: a simple query's answer as a stream of events (result sets and
//!   COPY data, for `BASE_BACKUP`).
//! - `copy_in`: commands that read COPY data from the client (`UPLOAD_MANIFEST`).
//! - [`replication`]: `IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`, slots and the physical
//!   replication stream, including both answers `START_REPLICATION` can give.
//! - [`wal_switch`]: `pg_switch_wal()`, and whether it closed a segment.
//!
//! Every error is a [`PgError`], one line, never showing a password.

pub mod connection;
pub mod conninfo;
mod copy_in;
mod error;
pub mod local;
mod message;
pub mod pgpass;
pub mod query;
pub mod replication;
mod tls;
pub mod wal_switch;

pub use connection::{CancelToken, ConnectOptions, Connection, Row};
pub use conninfo::{mask_conninfo, ConnInfo, SslMode};
pub use error::PgError;
pub use message::{parse_server_version, parse_size};
pub use query::{QueryEvent, QueryStream};
pub use replication::{
    IdentifySystem, ReplicationMessage, ReplicationStream, SlotInfo, StartReplication,
    TimelineHistoryFile,
};
