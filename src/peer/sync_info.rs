//! The primary side of replication: the `sync-info` document, which tells a passive
//! peer what this repository holds for a server — its identity, the `DONE` backups
//! (backup.json only; the peer fetches a backup's files.jsonl itself), the archived
//! WAL added since a cursor, the in-progress `.partial` segment, the newest WAL
//! position — and a new cursor, so each call costs what is new, not what exists.

use super::PeerError;
use crate::backup::{BackupInfo, BackupStatus};
use crate::catalog::{Catalog, WalKind};
use crate::repo::ServerRepo;
use crate::wal::{Lsn, SystemId, WalFileName, WalSegment};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version of the document's shape; a peer refuses a newer one.
pub const SYNC_INFO_VERSION: u32 = 1;

/// One archived WAL file as the peer must copy it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncWal {
    /// Catalog insertion number: a peer that copied every file up to here may resume
    /// from it.
    pub seq: i64,
    /// File name as PostgreSQL names it.
    pub name: String,
    /// `segment`, `partial` (an old timeline's last segment) or `history`.
    pub kind: String,
    /// Stored object, relative to the server folder.
    pub path: String,
    /// Uncompressed size.
    pub size: u64,
    /// Size of the stored object.
    pub stored_size: u64,
    /// BLAKE3 of the uncompressed content.
    pub checksum: String,
    /// BLAKE3 of the stored object (what travels): the peer verifies the bytes it
    /// receives against it without decompressing them. Absent for files stored by
    /// an older pgbk (the peer then checks the content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_checksum: Option<String>,
}

/// The in-progress segment receive-wal is writing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPartial {
    /// `<segment>.partial`.
    pub name: String,
    /// Relative to the server folder: `streaming/<segment>.partial`.
    pub path: String,
    /// Bytes written so far (WAL is appended, so this prefix does not change).
    pub size: u64,
    /// Last modification.
    pub mtime: Option<DateTime<Utc>>,
}

/// The whole `sync-info` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncInfo {
    /// [`SYNC_INFO_VERSION`].
    pub version: u32,
    /// The server, as named on the primary.
    pub server: String,
    /// The server folder on the primary (absolute): objects are read below it.
    pub root: String,
    /// PostgreSQL's system identifier, once known.
    pub system_id: Option<SystemId>,
    /// WAL segment size, once known.
    pub wal_segment_size: Option<u64>,
    /// Every `DONE` backup, oldest first.
    pub backups: Vec<BackupInfo>,
    /// Archived WAL files added after the cursor given, in insertion order.
    pub wals: Vec<SyncWal>,
    /// The in-progress segment, if receive-wal writes one.
    pub partial: Option<SyncPartial>,
    /// The newest WAL position held (partial included).
    pub last_lsn: Option<Lsn>,
    /// When the newest WAL was written (the partial's mtime, else the archiving time).
    pub last_wal_time: Option<DateTime<Utc>>,
    /// Pass this back as `--since` next time.
    pub cursor: String,
    /// When the document was made.
    pub generated_at: DateTime<Utc>,
}

/// Parses a `--since` cursor (a non-negative integer).
pub fn parse_cursor(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok().filter(|n| *n >= 0)
}

/// The newest `.partial` in a server's `streaming/` folder, with its length.
pub fn current_partial(
    repo: &ServerRepo,
    seg_size: u64,
) -> Option<(WalSegment, u64, Option<DateTime<Utc>>)> {
    let mut best: Option<(WalSegment, u64, Option<DateTime<Utc>>)> = None;
    for e in std::fs::read_dir(repo.streaming_dir()).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(WalFileName::Partial(seg)) = WalFileName::parse(&name, seg_size) else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(b, _, _)| (seg.segno, seg.tli) > (b.segno, b.tli))
        {
            let mtime = meta.modified().ok().map(DateTime::<Utc>::from);
            best = Some((seg, meta.len(), mtime));
        }
    }
    best
}

/// The newest WAL position a repository holds: the end of its current partial, or
/// the end of its newest archived segment; with the time that WAL was written.
pub fn wal_position(
    repo: &ServerRepo,
    catalog: &Catalog,
    server: &str,
    seg_size: u64,
) -> Result<(Option<Lsn>, Option<DateTime<Utc>>), PeerError> {
    let mut best: (Option<Lsn>, Option<DateTime<Utc>>) = (None, None);
    if let Some(last) = catalog.last_segment(server)? {
        if let Some(segno) = last.segno {
            let seg = WalSegment {
                tli: last.timeline,
                segno,
                seg_size,
            };
            best = (Some(seg.end_lsn()), Some(last.archived_at));
        }
    }
    if let Some((seg, len, mtime)) = current_partial(repo, seg_size) {
        let end = Lsn(seg.start_lsn().0 + len.min(seg_size));
        if best.0.is_none_or(|b| end > b) {
            best = (Some(end), mtime.or(best.1));
        }
    }
    Ok(best)
}

/// Builds the `sync-info` document of `server` from the repository at `home`.
pub fn build(home: &Path, server: &str, since: i64) -> Result<SyncInfo, PeerError> {
    let repo = ServerRepo::new(home, server);
    let root = std::fs::canonicalize(repo.root())
        .unwrap_or_else(|_| repo.root().to_path_buf())
        .to_string_lossy()
        .to_string();
    let mut doc = SyncInfo {
        version: SYNC_INFO_VERSION,
        server: server.to_string(),
        root,
        system_id: None,
        wal_segment_size: None,
        backups: Vec::new(),
        wals: Vec::new(),
        partial: None,
        last_lsn: None,
        last_wal_time: None,
        cursor: since.to_string(),
        generated_at: Utc::now(),
    };
    let Some(catalog) = Catalog::open_read_only(home)? else {
        return Ok(doc);
    };
    let identity = catalog.server_identity(server)?;
    doc.system_id = identity.map(|(s, _)| s);
    doc.wal_segment_size = identity.map(|(_, z)| z);
    let mut backups = crate::backup::lifecycle::current(&ServerRepo::new(home, server), &catalog)?;
    backups.retain(|b| b.status == BackupStatus::Done);
    doc.backups = backups;
    // A cursor from before a catalog rebuild (rowids restarted) lists everything again.
    let max = catalog.max_wal_seq(server)?;
    let since = if since > max { 0 } else { since };
    let mut cursor = since;
    for w in catalog.wal_files_since(server, since)? {
        cursor = cursor.max(w.seq);
        let r = w.record;
        let path = match (r.kind, r.segno) {
            (WalKind::History, _) => format!("wals/{}", r.name),
            (_, Some(_)) => {
                let prefix = r.name.get(..16).unwrap_or_default();
                format!("wals/{prefix}/{}.zst", r.name)
            }
            (_, None) => continue,
        };
        doc.wals.push(SyncWal {
            seq: w.seq,
            kind: match r.kind {
                WalKind::Segment => "segment",
                WalKind::Partial => "partial",
                WalKind::History => "history",
            }
            .to_string(),
            name: r.name,
            path,
            size: r.size,
            stored_size: r.stored_size,
            checksum: r.checksum,
            stored_checksum: r.stored_checksum,
        });
    }
    doc.cursor = cursor.to_string();
    if let Some(seg_size) = doc.wal_segment_size {
        if let Some((seg, len, mtime)) = current_partial(&repo, seg_size) {
            let name = format!("{}.partial", seg.name());
            doc.partial = Some(SyncPartial {
                path: format!("streaming/{name}"),
                name,
                size: len.min(seg_size),
                mtime,
            });
        }
        let (lsn, t) = wal_position(&repo, &catalog, server, seg_size)?;
        doc.last_lsn = lsn;
        doc.last_wal_time = t;
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::WalRecord;
    use crate::wal::TimeLineId;

    const MB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn lists_done_backups_new_wal_and_the_partial_with_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let cat = Catalog::open(home).unwrap();
        cat.check_server_identity("pg1", SystemId(42), MB16)
            .unwrap();
        for (segno, name) in [
            (1, "000000010000000000000001"),
            (2, "000000010000000000000002"),
        ] {
            cat.insert_wal(
                "pg1",
                &WalRecord {
                    name: name.into(),
                    kind: WalKind::Segment,
                    timeline: TimeLineId(1),
                    segno: Some(segno),
                    size: MB16,
                    stored_size: 100,
                    checksum: "c".into(),
                    stored_checksum: None,
                    archived_at: Utc::now(),
                },
            )
            .unwrap();
        }
        let repo = ServerRepo::new(home, "pg1");
        repo.ensure_dirs().unwrap();
        std::fs::write(
            repo.streaming_dir()
                .join("000000010000000000000003.partial"),
            vec![0u8; 8192],
        )
        .unwrap();
        for id in ["20260101T000000", "20260102T000000"] {
            std::fs::create_dir_all(repo.backups_dir().join(id)).unwrap();
        }
        let mut done = BackupInfo::new("20260101T000000", "pg1", Utc::now());
        done.status = BackupStatus::Done;
        crate::backup::save(&repo, &cat, &done).unwrap();
        let mut syncing = BackupInfo::new("20260102T000000", "pg1", Utc::now());
        syncing.status = BackupStatus::Syncing;
        crate::backup::save(&repo, &cat, &syncing).unwrap();

        let doc = build(home, "pg1", 0).unwrap();
        assert_eq!(doc.system_id, Some(SystemId(42)));
        assert_eq!(doc.backups.len(), 1, "only DONE backups are offered");
        assert_eq!(doc.wals.len(), 2);
        assert_eq!(
            doc.wals[1].path,
            "wals/0000000100000000/000000010000000000000002.zst"
        );
        let p = doc.partial.as_ref().unwrap();
        assert_eq!(
            (p.name.as_str(), p.size),
            ("000000010000000000000003.partial", 8192)
        );
        assert_eq!(doc.last_lsn, Some(Lsn(3 * MB16 + 8192)));
        // The cursor makes the next call cost what is new.
        let next = build(home, "pg1", parse_cursor(&doc.cursor).unwrap()).unwrap();
        assert!(next.wals.is_empty());
        let from_first = build(home, "pg1", doc.wals[0].seq).unwrap();
        assert_eq!(from_first.wals.len(), 1);
        // A cursor beyond the catalog (rebuilt since) lists everything again.
        assert_eq!(build(home, "pg1", 1_000_000).unwrap().wals.len(), 2);
    }
}
