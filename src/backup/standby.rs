//! Backups taken from a hot standby while WAL streams from the primary (Barman's
//! `primary_conninfo`): `conninfo` and `streaming_conninfo` name the standby,
//! where BASE_BACKUP (or rsync's pg_backup_start) runs and reads its files;
//! `primary_conninfo` names the primary.
//!
//! Before the backup the primary checkpoints (with an immediate checkpoint) and
//! the standby is waited for until it has replayed what the primary had written,
//! so the backup starts from a recent restartpoint; after it, the WAL switch that
//! gets the end segment archived happens on the primary, since a standby cannot
//! switch WAL. A standby promoted during the backup makes PostgreSQL fail it,
//! and the backup is recorded FAILED with that reason.

use super::run::{connect, BackupRequest, TakeError};
use crate::pg::PgError;
use crate::wal::{Lsn, SystemId};
use std::time::{Duration, Instant};

/// How long the standby may take to replay what the primary wrote before the backup.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Checks that `primary_conninfo` is this cluster's primary, checkpoints it when
/// asked to, and waits for the standby (`conninfo`) to replay past its position.
pub(super) async fn prepare(req: &BackupRequest, system_id: SystemId) -> Result<(), TakeError> {
    let Some(primary_info) = &req.primary_conninfo else {
        return Ok(());
    };
    let server = || req.server.clone();
    let on_primary = |source: PgError| TakeError::Server {
        server: server(),
        msg: format!("primary_conninfo: {source}"),
    };
    let mut primary = connect(primary_info, false, "pgbk")
        .await
        .map_err(on_primary)?;
    let rows = primary
        .simple_query("SELECT pg_is_in_recovery(), system_identifier FROM pg_control_system()")
        .await
        .map_err(on_primary)?;
    let row = rows.first();
    if row.and_then(|r| r.get_idx(0)) != Some("f") {
        return Err(TakeError::Refused(format!(
            "server '{}': primary_conninfo names a server in recovery, not the primary",
            req.server
        )));
    }
    let primary_id = row.and_then(|r| r.get_idx(1)).unwrap_or_default();
    if primary_id != system_id.to_string() {
        return Err(TakeError::Refused(format!(
            "server '{}': primary_conninfo names another cluster (system id {primary_id}, the standby's is {system_id})",
            req.server
        )));
    }
    if req.immediate_checkpoint {
        primary
            .simple_query("CHECKPOINT")
            .await
            .map_err(on_primary)?;
    }
    let rows = primary
        .simple_query("SELECT pg_current_wal_lsn()")
        .await
        .map_err(on_primary)?;
    primary.close().await;
    let target: Lsn = rows
        .first()
        .and_then(|r| r.get_idx(0))
        .and_then(|l| l.parse().ok())
        .unwrap_or(Lsn::INVALID);

    let on_standby = |source: PgError| TakeError::Pg {
        server: server(),
        source,
    };
    let mut standby = connect(&req.conninfo, false, "pgbk")
        .await
        .map_err(on_standby)?;
    let started = Instant::now();
    loop {
        let rows = standby
            .simple_query("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()")
            .await
            .map_err(on_standby)?;
        let row = rows.first();
        if row.and_then(|r| r.get_idx(0)) != Some("t") {
            // Not a standby after all: a backup of a primary needs no wait.
            break;
        }
        let replayed: Option<Lsn> = row.and_then(|r| r.get_idx(1)).and_then(|l| l.parse().ok());
        if replayed.is_some_and(|r| r >= target) {
            break;
        }
        if started.elapsed() >= CATCH_UP {
            tracing::warn!(
                server = %req.server,
                "the standby has replayed up to {} after {}s, the primary was at {target}: backing up from where it is",
                replayed.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
                CATCH_UP.as_secs()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    standby.close().await;
    Ok(())
}
