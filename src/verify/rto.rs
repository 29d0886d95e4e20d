//! The recovery time objective as pgbk can estimate it: restoring the latest `DONE`
//! backup at the restore throughput measured on this host, then replaying the WAL
//! archived since that backup ended. Figures not measured yet fall back to
//! conservative defaults, and the result says which is which.

use crate::backup::{BackupInfo, BackupStatus};
use crate::catalog::{Catalog, Measurement, WalKind, WalRecord};
use crate::wal::WalSegment;
use serde::Serialize;
use std::path::Path;

/// Restore throughput assumed before any `recover` ran on this host (bytes/s).
pub const DEFAULT_RESTORE_BYTES_PER_SEC: f64 = 200e6;
/// WAL replay rate assumed when none was measured (bytes/s).
pub const DEFAULT_REPLAY_BYTES_PER_SEC: f64 = 50e6;
/// How many of the newest measurements the median is taken over.
pub const MEASUREMENTS_CONSIDERED: usize = 5;

/// An RTO estimate and what it rests on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rto {
    /// Estimated seconds to restore the backup and replay the WAL after it.
    pub seconds: f64,
    /// One line saying which figures were measured and which assumed.
    pub basis: String,
    /// The backup it would restore.
    pub backup_id: String,
    /// Its uncompressed size.
    pub backup_bytes: u64,
    /// WAL archived since it ended.
    pub wal_bytes: u64,
    /// Restore throughput used (bytes/s).
    pub restore_bytes_per_sec: f64,
    /// The restore throughput was measured (else the default).
    pub restore_measured: bool,
    /// Replay rate used (bytes/s).
    pub replay_bytes_per_sec: f64,
    /// The replay rate was measured (else the default).
    pub replay_measured: bool,
}

/// The median of the newest [`MEASUREMENTS_CONSIDERED`] throughputs, if any.
pub fn median_rate(measurements: &[Measurement]) -> Option<f64> {
    let mut newest: Vec<&Measurement> = measurements
        .iter()
        .filter(|m| m.bytes_per_sec.is_finite() && m.bytes_per_sec > 0.0)
        .collect();
    newest.sort_by_key(|m| m.measured_at);
    let start = newest.len().saturating_sub(MEASUREMENTS_CONSIDERED);
    let mut rates: Vec<f64> = newest[start..].iter().map(|m| m.bytes_per_sec).collect();
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    let n = rates.len();
    Some(if n % 2 == 1 {
        rates[n / 2]
    } else {
        (rates[n / 2 - 1] + rates[n / 2]) / 2.0
    })
}

/// Estimates the RTO from catalog facts; `None` when there is no `DONE` backup.
pub fn estimate(
    backups: &[BackupInfo],
    wal: &[WalRecord],
    restores: &[Measurement],
    replays: &[Measurement],
) -> Option<Rto> {
    let latest = backups
        .iter()
        .filter(|b| b.status == BackupStatus::Done)
        .max_by(|a, b| a.backup_id.cmp(&b.backup_id))?;
    let end_segno = latest
        .end_wal
        .as_deref()
        .and_then(|w| WalSegment::parse(w, latest.wal_segment_size))
        .map(|s| s.segno);
    let wal_bytes: u64 = wal
        .iter()
        .filter(|w| w.kind != WalKind::History)
        .filter(|w| match (w.segno, end_segno) {
            (Some(s), Some(end)) => s > end,
            _ => false,
        })
        .map(|w| w.size)
        .sum();
    let measured_restore = median_rate(restores);
    let measured_replay = median_rate(replays);
    let restore = measured_restore.unwrap_or(DEFAULT_RESTORE_BYTES_PER_SEC);
    let replay = measured_replay.unwrap_or(DEFAULT_REPLAY_BYTES_PER_SEC);
    let seconds = latest.size_bytes as f64 / restore + wal_bytes as f64 / replay;
    let restore_basis = match measured_restore {
        Some(r) => format!("restore {:.0} MB/s measured", r / 1e6),
        None => format!(
            "no restore measured yet, restore {:.0} MB/s estimated",
            restore / 1e6
        ),
    };
    let replay_basis = match measured_replay {
        Some(r) => format!("WAL replay {:.0} MB/s measured", r / 1e6),
        None => format!("WAL replay {:.0} MB/s estimated", replay / 1e6),
    };
    Some(Rto {
        seconds,
        basis: format!("{restore_basis}; {replay_basis}"),
        backup_id: latest.backup_id.clone(),
        backup_bytes: latest.size_bytes,
        wal_bytes,
        restore_bytes_per_sec: restore,
        restore_measured: measured_restore.is_some(),
        replay_bytes_per_sec: replay,
        replay_measured: measured_replay.is_some(),
    })
}

/// Reads what [`estimate`] needs from the catalog (none yet: `Ok(None)`).
pub fn estimate_from_catalog(home: &Path, server: &str) -> Result<Option<Rto>, String> {
    let Some(cat) = Catalog::open_read_only(home).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    from_catalog(&cat, server).map_err(|e| e.to_string())
}

fn from_catalog(cat: &Catalog, server: &str) -> Result<Option<Rto>, crate::catalog::CatalogError> {
    let backups = cat.backups(server)?;
    let wal = cat.wal_files(server)?;
    let mut restores = cat.measurements(server, "restore")?;
    restores.extend(cat.measurements(server, "restore-delta")?);
    let replays = cat.measurements(server, "replay")?;
    Ok(estimate(&backups, &wal, &restores, &replays))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{SystemId, TimeLineId};
    use chrono::{Duration, Utc};

    fn backup(id: &str, status: BackupStatus, size: u64, end_wal: &str) -> BackupInfo {
        BackupInfo {
            status,
            server_version: 150000,
            system_id: SystemId(1),
            end_wal: Some(end_wal.into()),
            size_bytes: size,
            ..BackupInfo::new(id, "pg1", Utc::now())
        }
    }

    fn seg(segno: u64) -> WalRecord {
        WalRecord {
            name: format!("00000001{:016X}", segno),
            kind: WalKind::Segment,
            timeline: TimeLineId(1),
            segno: Some(segno),
            size: 16 << 20,
            stored_size: 1 << 20,
            checksum: String::new(),
            stored_checksum: None,
            archived_at: Utc::now(),
        }
    }

    fn restore(rate: f64, minutes_ago: i64) -> Measurement {
        Measurement {
            server: "pg1".into(),
            kind: "restore".into(),
            backup_id: None,
            measured_at: Utc::now() - Duration::minutes(minutes_ago),
            duration_secs: 1.0,
            bytes: rate as u64,
            files: 1,
            bytes_per_sec: rate,
            detail: "{}".into(),
        }
    }

    #[test]
    fn defaults_are_labelled_and_wal_after_the_latest_done_backup_counts() {
        let backups = [
            backup(
                "20260101T000000",
                BackupStatus::Done,
                400_000_000,
                "000000010000000000000002",
            ),
            backup(
                "20260102T000000",
                BackupStatus::Failed,
                1,
                "000000010000000000000009",
            ),
        ];
        let wal: Vec<WalRecord> = (1..=5).map(seg).collect();
        let r = estimate(&backups, &wal, &[], &[]).unwrap();
        assert_eq!(r.backup_id, "20260101T000000");
        assert_eq!(r.wal_bytes, 3 * (16 << 20));
        let expect = 400e6 / DEFAULT_RESTORE_BYTES_PER_SEC
            + (3 * (16 << 20)) as f64 / DEFAULT_REPLAY_BYTES_PER_SEC;
        assert!((r.seconds - expect).abs() < 1e-9, "{r:?}");
        assert!(!r.restore_measured && r.basis.contains("no restore measured yet"));
        assert!(estimate(&backups[1..], &wal, &[], &[]).is_none());
    }

    #[test]
    fn measured_restore_rate_is_the_median_of_the_newest() {
        // The oldest (very slow) run falls out of the newest five.
        let ms = [
            restore(1.0, 60),
            restore(100e6, 50),
            restore(300e6, 40),
            restore(200e6, 30),
            restore(900e6, 20),
            restore(150e6, 10),
        ];
        assert_eq!(median_rate(&ms), Some(200e6));
        assert_eq!(median_rate(&ms[..2]), Some((1.0 + 100e6) / 2.0));
        let backups = [backup(
            "20260101T000000",
            BackupStatus::Done,
            400_000_000,
            "000000010000000000000002",
        )];
        let r = estimate(&backups, &[], &ms, &[]).unwrap();
        assert!(
            r.restore_measured && r.basis.contains("200 MB/s measured"),
            "{r:?}"
        );
        assert!((r.seconds - 2.0).abs() < 1e-9);
    }
}
