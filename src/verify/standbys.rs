//! `replication-status`: the clients streaming from a server, from
//! `pg_stat_replication`, with each one's lag in bytes behind the server's position.

use crate::pg::{Connection, PgError, Row};
use crate::wal::Lsn;
use serde::Serialize;

/// Which clients to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyKind {
    /// Every client.
    All,
    /// Standbys that replay (they report a replay position).
    HotStandby,
    /// Clients that only store WAL (pgbk, pg_receivewal: no replay position).
    WalStreamer,
}

/// One row of `pg_stat_replication`.
#[derive(Debug, Clone, Serialize)]
pub struct Standby {
    /// The walsender's pid.
    pub pid: i32,
    /// The role it logged in as.
    pub user: Option<String>,
    /// Its `application_name`.
    pub application_name: String,
    /// Its address (`None` for a Unix socket).
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`, `backup`…
    pub state: Option<String>,
    /// `async`, `sync`, `potential`, `quorum`.
    pub sync_state: Option<String>,
    /// `hot standby` or `WAL streamer`.
    pub kind: &'static str,
    /// When the walsender started.
    pub started: Option<String>,
    /// Positions the client reported.
    pub sent_lsn: Option<Lsn>,
    /// Written by the client.
    pub write_lsn: Option<Lsn>,
    /// Flushed by the client.
    pub flush_lsn: Option<Lsn>,
    /// Replayed by the client (standbys only).
    pub replay_lsn: Option<Lsn>,
    /// Bytes between the server's position and `write_lsn`.
    pub write_lag_bytes: Option<u64>,
    /// Bytes between the server's position and `flush_lsn`.
    pub flush_lag_bytes: Option<u64>,
    /// Bytes between the server's position and `replay_lsn`.
    pub replay_lag_bytes: Option<u64>,
}

/// The server's position and its clients.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    /// Server name.
    pub server: String,
    /// Its current WAL position (the receive position on a standby).
    pub current_lsn: Option<Lsn>,
    /// It is itself a standby.
    pub in_recovery: bool,
    /// Its clients, by application name.
    pub standbys: Vec<Standby>,
}

const QUERY: &str = "SELECT pid, usename, application_name, client_addr, state, sync_state,
        to_char(backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') AS started,
        sent_lsn, write_lsn, flush_lsn, replay_lsn
   FROM pg_stat_replication ORDER BY application_name, pid";

const POSITION: &str = "SELECT pg_is_in_recovery() AS in_recovery,
        CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
             ELSE pg_current_wal_lsn() END AS current_lsn";

fn lsn(r: &Row, col: &str) -> Option<Lsn> {
    r.get(col).and_then(|v| v.parse().ok())
}

fn text(r: &Row, col: &str) -> Option<String> {
    r.get(col).map(str::to_string)
}

/// Reads the server's clients of `kind` over an SQL connection (a role without
/// `pg_monitor` sees only its own clients' details).
pub async fn replication_status(
    server: &str,
    conn: &mut Connection,
    kind: StandbyKind,
) -> Result<ReplicationStatus, PgError> {
    let pos = conn.simple_query(POSITION).await?;
    let current_lsn = pos.first().and_then(|r| lsn(r, "current_lsn"));
    let in_recovery = pos.first().and_then(|r| r.get("in_recovery")) == Some("t");
    let behind = |l: Option<Lsn>| Some(current_lsn?.0.saturating_sub(l?.0));
    let standbys = conn
        .simple_query(QUERY)
        .await?
        .iter()
        .map(|r| {
            let replay_lsn = lsn(r, "replay_lsn");
            Standby {
                pid: r.get("pid").and_then(|p| p.parse().ok()).unwrap_or(0),
                user: text(r, "usename"),
                application_name: text(r, "application_name").unwrap_or_default(),
                client_addr: text(r, "client_addr"),
                state: text(r, "state"),
                sync_state: text(r, "sync_state"),
                kind: if replay_lsn.is_some() {
                    "hot standby"
                } else {
                    "WAL streamer"
                },
                started: text(r, "started"),
                sent_lsn: lsn(r, "sent_lsn"),
                write_lsn: lsn(r, "write_lsn"),
                flush_lsn: lsn(r, "flush_lsn"),
                replay_lsn,
                write_lag_bytes: behind(lsn(r, "write_lsn")),
                flush_lag_bytes: behind(lsn(r, "flush_lsn")),
                replay_lag_bytes: behind(replay_lsn),
            }
        })
        .filter(|s| match kind {
            StandbyKind::All => true,
            StandbyKind::HotStandby => s.replay_lsn.is_some(),
            StandbyKind::WalStreamer => s.replay_lsn.is_none(),
        })
        .collect();
    Ok(ReplicationStatus {
        server: server.to_string(),
        current_lsn,
        in_recovery,
        standbys,
    })
}
