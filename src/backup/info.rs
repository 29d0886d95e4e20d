//! `backup.json` and `files.jsonl`: a backup's metadata and its file list, the
//! repository's own record of a backup (the catalog only indexes them).

use crate::wal::{Lsn, SystemId, TimeLineId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A backup's life: `STARTED` → `WAITING_FOR_WALS` → `DONE`, or `FAILED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BackupStatus {
    /// Files are being received.
    Started,
    /// Files are stored; WAL from `begin_wal` to `end_wal` is not all archived yet.
    WaitingForWals,
    /// Every file and every WAL segment it needs is stored and fsynced.
    Done,
    /// It can never be used; `error` says why.
    Failed,
    /// Copied from a peer, not complete yet (replicate).
    Syncing,
}

impl BackupStatus {
    /// The spelling used in backup.json, the catalog and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Started => "STARTED",
            BackupStatus::WaitingForWals => "WAITING_FOR_WALS",
            BackupStatus::Done => "DONE",
            BackupStatus::Failed => "FAILED",
            BackupStatus::Syncing => "SYNCING",
        }
    }
}

impl fmt::Display for BackupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "STARTED" => BackupStatus::Started,
            "WAITING_FOR_WALS" => BackupStatus::WaitingForWals,
            "DONE" => BackupStatus::Done,
            "FAILED" => BackupStatus::Failed,
            "SYNCING" => BackupStatus::Syncing,
            other => return Err(format!("unknown backup status '{other}'")),
        })
    }
}

/// What a `keep` annotation retains (Barman's recovery targets for kept backups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepTarget {
    /// The backup and all WAL after it (point-in-time recovery stays possible).
    Full,
    /// The backup and only the WAL it needs to be consistent.
    Standalone,
}

impl fmt::Display for KeepTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeepTarget::Full => "full",
            KeepTarget::Standalone => "standalone",
        })
    }
}

impl FromStr for KeepTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(KeepTarget::Full),
            "standalone" => Ok(KeepTarget::Standalone),
            other => Err(format!(
                "unknown keep target '{other}' (expected full or standalone)"
            )),
        }
    }
}

/// How an incremental backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncrementalMethod {
    /// PostgreSQL 17+'s `BASE_BACKUP ... INCREMENTAL`: the server chose the blocks
    /// from its WAL summaries and sent `INCREMENTAL.*` files.
    Server,
    /// pgbk compared every streamed block with the parent's block map.
    BlockMap,
}

/// A tablespace as the server reported it at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceInfo {
    /// `pg_tablespace.oid`; its files are under `tablespaces/<oid>/`.
    pub oid: u32,
    /// `spcname`, when known.
    pub name: Option<String>,
    /// Where it lived on the server.
    pub location: String,
}

/// The content of `backup.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// `YYYYMMDDTHHMMSS` (UTC), unique per server.
    pub backup_id: String,
    /// Optional friendly name (`backup --name`), usable wherever an id is.
    pub name: Option<String>,
    /// Server (config section) name.
    pub server: String,
    /// Lifecycle state.
    pub status: BackupStatus,
    /// `postgres` (streaming BASE_BACKUP) or `rsync`.
    pub method: String,
    /// `server_version_num` of the server.
    pub server_version: u32,
    /// The cluster's system identifier.
    pub system_id: SystemId,
    /// Timeline at the backup's start.
    pub timeline: TimeLineId,
    /// `wal_segment_size`.
    pub wal_segment_size: u64,
    /// Start LSN (the checkpoint's redo point).
    pub begin_lsn: Option<Lsn>,
    /// End LSN: recovery from this backup is consistent once replay passes it.
    pub end_lsn: Option<Lsn>,
    /// Timeline at the backup's end.
    pub end_timeline: Option<TimeLineId>,
    /// Segment holding `begin_lsn`.
    pub begin_wal: Option<String>,
    /// Segment holding the last byte before `end_lsn`.
    pub end_wal: Option<String>,
    /// When the backup started.
    pub begin_time: DateTime<Utc>,
    /// When the files were all stored.
    pub end_time: Option<DateTime<Utc>>,
    /// Uncompressed bytes of all files.
    pub size_bytes: u64,
    /// Bytes on disk.
    pub stored_bytes: u64,
    /// Number of files (regular files only).
    pub file_count: u64,
    /// Tablespaces other than pg_default/pg_global.
    pub tablespaces: Vec<TablespaceInfo>,
    /// Why it failed.
    pub error: Option<String>,
    /// The pid of the pgbk process taking it (while STARTED).
    pub pid: Option<u32>,
    /// A `keep` annotation: excluded from retention.
    pub keep: Option<KeepTarget>,
    /// The checksum algorithm of `files.jsonl` (`blake3`).
    pub checksum_algorithm: String,
    /// PostgreSQL's `backup_manifest` is stored beside backup.json.
    pub has_manifest: bool,
    /// An incremental backup: the backup it is built on (whose `backup_manifest`
    /// the server compared against). Its relation files are `INCREMENTAL.*` files
    /// holding only the blocks changed since; a restore needs the whole chain.
    /// `None` for a full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The BLAKE3 (hex) of the backup's `blocks.map`, the checksums of every block
    /// of its relation files, which a block-map incremental built on it compares
    /// the streamed blocks with. `None` when the backup has none (a server-side
    /// incremental, whose relation files are mostly `INCREMENTAL.*`, records none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_map: Option<String>,
    /// How an incremental was taken. Absent in backups of an older pgbk, which
    /// took block-map incrementals below PostgreSQL 17 and server ones from 17.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_method: Option<IncrementalMethod>,
    /// rsync backups: regular files rsync transferred (its `--stats`); files reused
    /// from the previous backup are not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_files: Option<u64>,
    /// rsync backups: bytes of the files rsync transferred (its `--stats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_bytes: Option<u64>,
    /// rsync backups: bytes hard-linked to an earlier backup when it was taken
    /// (`reuse_backup = link`); `stored_bytes` counts only the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_bytes: Option<u64>,
    /// Incrementals of PostgreSQL 15 and 16 read over SQL (`incremental_read =
    /// sql`): bytes of file content read from the server, only the changed
    /// blocks of relation files and every other file whole. `None`: streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_read_bytes: Option<u64>,
    /// rsync backups: the PostgreSQL host's clock when the backup began; the next
    /// backup compares file mtimes (that host's clock) with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_begin_time: Option<DateTime<Utc>>,
    /// Milliseconds the copy itself took (from the checkpoint's end to the last
    /// file), apart from the wait for the checkpoint and for the WAL: Barman's
    /// "Copy time".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_millis: Option<u64>,
    /// rsync backups on object storage: the earlier backups whose objects this
    /// one's files.jsonl points to (files unchanged since they were stored, reused
    /// by reference instead of uploaded again). Recorded when the backup starts, so
    /// a delete of one of them keeps every object while the backup runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
}

impl crate::catalog::BackupRecord for BackupInfo {
    fn server(&self) -> &str {
        &self.server
    }
    fn backup_id(&self) -> &str {
        &self.backup_id
    }
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn status(&self) -> &str {
        self.status.as_str()
    }
    fn begin_time(&self) -> DateTime<Utc> {
        self.begin_time
    }
}

impl BackupInfo {
    /// How the incremental was taken (`None` for a full backup).
    pub fn incremental_method(&self) -> Option<IncrementalMethod> {
        self.parent.as_ref()?;
        Some(self.incremental_method.unwrap_or(
            if self.server_version < super::incremental::MIN_INCREMENTAL_VERSION {
                IncrementalMethod::BlockMap
            } else {
                IncrementalMethod::Server
            },
        ))
    }

    /// A block-map incremental: the server sent every file whole and pgbk kept
    /// the changed blocks of its relation files (see `block_map`).
    pub fn is_block_incremental(&self) -> bool {
        self.incremental_method() == Some(IncrementalMethod::BlockMap)
    }

    /// Whether PostgreSQL's `backup_manifest` describes the data directory a
    /// restore gives: not for a PostgreSQL 17+ incremental, whose manifest lists
    /// its `INCREMENTAL.*` files; a block-map incremental's does (the server sent
    /// every file whole, and the chain rebuilds them byte for byte).
    pub fn manifest_fits_restore(&self) -> bool {
        self.parent.is_none() || self.is_block_incremental()
    }

    /// `incremental` when the backup is built on a parent, else `full`.
    pub fn backup_type(&self) -> &'static str {
        if self.parent.is_some() {
            "incremental"
        } else {
            "full"
        }
    }

    /// A backup just begun: status `STARTED`, method `postgres`, nothing measured yet.
    /// Callers fill in what they know with struct-update syntax.
    pub fn new(backup_id: &str, server: &str, begin_time: DateTime<Utc>) -> BackupInfo {
        BackupInfo {
            backup_id: backup_id.to_string(),
            name: None,
            server: server.to_string(),
            status: BackupStatus::Started,
            method: "postgres".to_string(),
            server_version: 0,
            system_id: SystemId(0),
            timeline: TimeLineId(1),
            wal_segment_size: 16 * 1024 * 1024,
            begin_lsn: None,
            end_lsn: None,
            end_timeline: None,
            begin_wal: None,
            end_wal: None,
            begin_time,
            end_time: None,
            size_bytes: 0,
            stored_bytes: 0,
            file_count: 0,
            tablespaces: Vec::new(),
            error: None,
            pid: None,
            keep: None,
            checksum_algorithm: "blake3".to_string(),
            has_manifest: false,
            parent: None,
            block_map: None,
            incremental_method: None,
            transferred_files: None,
            transferred_bytes: None,
            reused_bytes: None,
            sql_read_bytes: None,
            server_begin_time: None,
            copy_millis: None,
            references: Vec::new(),
        }
    }
}

/// The kind of one entry of `files.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file, stored compressed (or plain for rsync backups).
    File,
    /// A directory (recreated on restore, even when empty).
    Dir,
    /// A symbolic link (`pg_tblspc/<oid>`), recorded only.
    Symlink,
}

/// One line of `files.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the data directory (or inside the tablespace for tablespace files).
    pub path: String,
    /// `None` for the data directory, else the tablespace oid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace: Option<u32>,
    /// File, directory or symlink.
    pub kind: FileKind,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
    /// Uncompressed size.
    #[serde(default)]
    pub size: u64,
    /// BLAKE3 of the content, hex (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Object holding the content, relative to the backup folder (files only; none
    /// for an empty file of a streamed backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// `zstd` or `none` (rsync backups keep plain files so rsync can compare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Bytes of the object on disk.
    #[serde(default)]
    pub stored_size: u64,
    /// BLAKE3 of the object as stored (the compressed file on disk), hex: what a
    /// peer verifies a copy against without decompressing it. Absent for objects
    /// stored by an older pgbk, and for `none` objects, whose object checksum is
    /// `checksum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_checksum: Option<String>,
    /// Link target (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Bundled small files: where the file's stored bytes (its own zstd frames)
    /// start in `object`, a bundle shared with other files (`bundles/<n>.zst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Bundled small files: how many bytes of `object` from `offset` are the
    /// file's (`stored_size` and `stored_checksum` describe this range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// The earlier backup whose folder holds `object` (an rsync backup on object
    /// storage reuses a file unchanged since that backup stored it, by reference);
    /// absent: this backup's own. Always the backup that stored the object, never
    /// one that refers to it in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_backup: Option<String>,
}

impl FileEntry {
    /// An entry with nothing stored yet: no content, object or checksums (a
    /// directory, a symlink with its `target` set after, or a file before it is stored).
    pub fn bare(
        path: String,
        tablespace: Option<u32>,
        kind: FileKind,
        mode: u32,
        mtime: i64,
    ) -> FileEntry {
        FileEntry {
            path,
            tablespace,
            kind,
            mode,
            mtime,
            size: 0,
            checksum: None,
            object: None,
            compression: None,
            stored_size: 0,
            stored_checksum: None,
            offset: None,
            length: None,
            target: None,
            in_backup: None,
        }
    }

    /// Appends the entry to `files.jsonl` as one JSON line: the one writer of the
    /// format, for streamed and rsync backups alike.
    pub fn write_line(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut *w, self)?;
        w.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incremental_method_follows_how_the_backup_was_taken() {
        let inc = |version: u32, method: Option<IncrementalMethod>| BackupInfo {
            server_version: version,
            parent: Some("20260101T000000".into()),
            incremental_method: method,
            ..BackupInfo::new("20260102T000000", "pg", Utc::now())
        };
        // Written by an older pgbk: the major decides.
        assert!(inc(160004, None).is_block_incremental());
        assert!(!inc(170004, None).is_block_incremental());
        assert!(!inc(170004, None).manifest_fits_restore());
        // A block-map incremental of 17+ (the server's was found unsafe).
        let mapped = inc(170004, Some(IncrementalMethod::BlockMap));
        assert!(mapped.is_block_incremental() && mapped.manifest_fits_restore());
        let json = serde_json::to_string(&mapped).unwrap();
        assert!(
            json.contains(r#""incremental_method":"block_map""#),
            "{json}"
        );
        let full = BackupInfo::new("20260103T000000", "pg", Utc::now());
        assert_eq!(full.incremental_method(), None);
        assert!(!serde_json::to_string(&full)
            .unwrap()
            .contains("incremental_method"));
    }
}
