//! A passive server's replication state as the catalog records it (the last
//! `replicate` pass, the WAL lag behind the primary manager, the backups not copied
//! yet), for `status` and `check`. Judging it is `peer_check`'s.

use crate::catalog::Catalog;
use crate::config::ServerConfig;
use crate::wal::Lsn;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// What the catalog knows of a passive server's replication.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerStatus {
    /// The command reaching the primary manager.
    pub primary_ssh_command: String,
    /// End of the last successful pass.
    pub last_pass_at: Option<DateTime<Utc>>,
    /// Its age in seconds.
    pub last_pass_age_secs: Option<f64>,
    /// The primary's newest WAL position at that pass.
    pub primary_lsn: Option<Lsn>,
    /// The newest WAL position held here.
    pub local_lsn: Option<Lsn>,
    /// `primary_lsn - local_lsn` at that pass.
    pub lag_bytes: Option<u64>,
    /// Seconds since the copy last held everything the primary had.
    pub lag_seconds: Option<f64>,
    /// `DONE` backups of the primary not `DONE` here.
    pub backups_pending: u64,
    /// The last failed pass's error (cleared by a clean pass).
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<DateTime<Utc>>,
}

fn secs(now: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    (now - t).num_milliseconds().max(0) as f64 / 1000.0
}

/// Reads a passive server's replication state from the catalog.
pub fn peer_status(server: &ServerConfig, catalog: &Catalog, now: DateTime<Utc>) -> PeerStatus {
    let st = catalog.peer_state(&server.name).ok().flatten();
    let st = st.unwrap_or_default();
    PeerStatus {
        primary_ssh_command: server.primary_ssh_command.clone().unwrap_or_default(),
        last_pass_at: st.last_pass_at,
        last_pass_age_secs: st.last_pass_at.map(|t| secs(now, t)),
        primary_lsn: st.primary_lsn,
        local_lsn: st.local_lsn,
        lag_bytes: match (st.primary_lsn, st.local_lsn) {
            (Some(p), Some(l)) => Some(p.0.saturating_sub(l.0)),
            (Some(p), None) => Some(p.0),
            _ => None,
        },
        lag_seconds: st.caught_up_at.map(|t| secs(now, t)),
        backups_pending: st.backups_pending,
        last_error: st.last_error,
        last_error_at: st.last_error_at,
    }
}
