//! The catalog's side of replication between pgbk managers: archived WAL listed by
//! insertion order (the rowid is the cursor `sync-info` hands out, so each call costs
//! what is new), and a passive server's replication state (`peer_state`).

use super::{Catalog, CatalogError, WalKind, WalRecord};
use crate::types::{Lsn, TimeLineId};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

/// An archived WAL file with its position in the catalog's insertion order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqWal {
    /// The row's insertion number (SQLite rowid): the cursor after this file.
    pub seq: i64,
    /// The file.
    pub record: WalRecord,
}

/// What the last replication passes of a passive server achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerState {
    /// The server (local name).
    pub server: String,
    /// The primary's sync-info cursor every WAL file up to which is copied.
    pub cursor: i64,
    /// End of the last successful pass.
    pub last_pass_at: Option<DateTime<Utc>>,
    /// The primary's newest WAL position at that pass.
    pub primary_lsn: Option<Lsn>,
    /// The newest WAL position held here after that pass (partial included).
    pub local_lsn: Option<Lsn>,
    /// The last pass after which this copy held everything the primary had.
    pub caught_up_at: Option<DateTime<Utc>>,
    /// DONE backups of the primary not DONE here after the last pass.
    pub backups_pending: u64,
    /// The last failed pass's error, cleared by a successful pass.
    pub last_error: Option<String>,
    /// When that error happened.
    pub last_error_at: Option<DateTime<Utc>>,
}

fn time(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|d| d.with_timezone(&Utc))
}

impl Catalog {
    /// The highest WAL insertion number of a server (0 without WAL).
    pub fn max_wal_seq(&self, server: &str) -> Result<i64, CatalogError> {
        self.conn
            .query_row(
                "SELECT COALESCE(MAX(rowid), 0) FROM wal_files WHERE server = ?1",
                params![server],
                |r| r.get(0),
            )
            .map_err(|e| self.sql_err(e))
    }

    /// The archived WAL files of a server inserted after `since`, in insertion order.
    pub fn wal_files_since(&self, server: &str, since: i64) -> Result<Vec<SeqWal>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT rowid, name, kind, timeline, segno, size, stored_size, checksum, archived_at,
                   stored_checksum
                 FROM wal_files WHERE rowid > ?2 AND server = ?1 ORDER BY rowid",
            )
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map(params![server, since], |r| {
                Ok(SeqWal {
                    seq: r.get(0)?,
                    record: WalRecord {
                        name: r.get(1)?,
                        kind: WalKind::parse(&r.get::<_, String>(2)?),
                        timeline: TimeLineId(r.get(3)?),
                        segno: r.get::<_, Option<i64>>(4)?.map(|s| s as u64),
                        size: r.get::<_, i64>(5)? as u64,
                        stored_size: r.get::<_, i64>(6)? as u64,
                        checksum: r.get(7)?,
                        stored_checksum: r.get(9)?,
                        archived_at: time(Some(r.get(8)?)).unwrap_or_default(),
                    },
                })
            })
            .map_err(|e| self.sql_err(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))
    }

    /// Records many archived WAL files in one transaction (one commit, one fsync of
    /// the catalog instead of one per file: a replicate pass that copies 100,000
    /// segments would otherwise spend minutes committing).
    pub fn insert_wals(&self, server: &str, records: &[WalRecord]) -> Result<(), CatalogError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.sql_err(e))?;
        for w in records {
            self.insert_wal(server, w)?;
        }
        tx.commit().map_err(|e| self.sql_err(e))
    }

    /// A passive server's replication state, if it ever replicated.
    pub fn peer_state(&self, server: &str) -> Result<Option<PeerState>, CatalogError> {
        self.conn
            .query_row(
                "SELECT cursor, last_pass_at, primary_lsn, local_lsn, caught_up_at,
                   backups_pending, last_error, last_error_at
                 FROM peer_state WHERE server = ?1",
                params![server],
                |r| {
                    let lsn = |s: Option<String>| s.and_then(|s| s.parse::<Lsn>().ok());
                    Ok(PeerState {
                        server: server.to_string(),
                        cursor: r.get(0)?,
                        last_pass_at: time(r.get(1)?),
                        primary_lsn: lsn(r.get(2)?),
                        local_lsn: lsn(r.get(3)?),
                        caught_up_at: time(r.get(4)?),
                        backups_pending: r.get::<_, i64>(5)?.max(0) as u64,
                        last_error: r.get(6)?,
                        last_error_at: time(r.get(7)?),
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// Records a passive server's replication state (replaces the previous one).
    pub fn set_peer_state(&self, s: &PeerState) -> Result<(), CatalogError> {
        let t = |d: &Option<DateTime<Utc>>| d.map(|d| d.to_rfc3339());
        let l = |x: &Option<Lsn>| x.map(|x| x.to_string());
        self.conn
            .execute(
                "INSERT INTO peer_state (server, cursor, last_pass_at, primary_lsn, local_lsn,
                   caught_up_at, backups_pending, last_error, last_error_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (server) DO UPDATE SET cursor = excluded.cursor,
                   last_pass_at = excluded.last_pass_at, primary_lsn = excluded.primary_lsn,
                   local_lsn = excluded.local_lsn, caught_up_at = excluded.caught_up_at,
                   backups_pending = excluded.backups_pending, last_error = excluded.last_error,
                   last_error_at = excluded.last_error_at",
                params![
                    s.server,
                    s.cursor,
                    t(&s.last_pass_at),
                    l(&s.primary_lsn),
                    l(&s.local_lsn),
                    t(&s.caught_up_at),
                    s.backups_pending as i64,
                    s.last_error,
                    t(&s.last_error_at)
                ],
            )
            .map(|_| ())
            .map_err(|e| self.sql_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_wal_after_a_cursor_and_keeps_peer_state() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        for (i, n) in ["000000010000000000000001", "000000010000000000000002"]
            .iter()
            .enumerate()
        {
            let rec = WalRecord {
                name: n.to_string(),
                kind: WalKind::Segment,
                timeline: TimeLineId(1),
                segno: Some(i as u64 + 1),
                size: 16,
                stored_size: 4,
                checksum: "x".into(),
                stored_checksum: None,
                archived_at: Utc::now(),
            };
            cat.insert_wal("pg1", &rec).unwrap();
        }
        let all = cat.wal_files_since("pg1", 0).unwrap();
        assert_eq!(all.len(), 2);
        let after = cat.wal_files_since("pg1", all[0].seq).unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].record.name, "000000010000000000000002");
        assert_eq!(cat.max_wal_seq("pg1").unwrap(), all[1].seq);
        assert!(cat.wal_files_since("pg2", 0).unwrap().is_empty());
        // The newest row deleted, the next file still gets a number past it: a
        // passive peer whose cursor is that number does not miss the new file.
        let newest = all[1].seq;
        cat.delete_wals("pg1", ["000000010000000000000002"])
            .unwrap();
        let mut rec = all[1].record.clone();
        rec.name = "000000010000000000000003".into();
        rec.segno = Some(3);
        cat.insert_wal("pg1", &rec).unwrap();
        let next = cat.wal_files_since("pg1", newest).unwrap();
        assert_eq!(next.len(), 1, "{next:?}");
        assert_eq!(next[0].record.name, "000000010000000000000003");
        // Re-storing an archived file keeps its number.
        cat.insert_wal("pg1", &rec).unwrap();
        assert_eq!(cat.max_wal_seq("pg1").unwrap(), next[0].seq);

        assert!(cat.peer_state("pg1").unwrap().is_none());
        let s = PeerState {
            server: "pg1".into(),
            cursor: 7,
            primary_lsn: Some(Lsn(0x1000)),
            local_lsn: Some(Lsn(0x800)),
            backups_pending: 1,
            last_error: Some("boom".into()),
            ..Default::default()
        };
        cat.set_peer_state(&s).unwrap();
        assert_eq!(cat.peer_state("pg1").unwrap().unwrap(), s);
    }
}
