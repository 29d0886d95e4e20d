//! The SQLite catalog at `<home>/catalog.db`: an index of what the repository holds
//! (servers' identities, archived WAL; later backups and measurements). Every fact is
//! also in the repository's files, so a lost catalog can be rebuilt.

use crate::repo::durable::create_dir_all_private;
use crate::types::{SystemId, TimeLineId};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod rows;
pub use rows::ServerRows;
mod drill;
pub use drill::DrillRow;
mod peer;
pub use peer::{PeerState, SeqWal};

/// A path as an SQLite URI filename: `%`, `?` and `#` escaped.
fn uri_path(path: &Path) -> String {
    path.to_string_lossy()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23")
}

/// Schema migrations, in order; `schema_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: servers' identities and archived WAL files.
    "CREATE TABLE servers (
        name TEXT PRIMARY KEY,
        system_id TEXT NOT NULL,
        wal_segment_size INTEGER NOT NULL,
        first_seen TEXT NOT NULL
    );
    CREATE TABLE wal_files (
        server TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        timeline INTEGER NOT NULL,
        segno INTEGER,
        size INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        checksum TEXT NOT NULL,
        archived_at TEXT NOT NULL,
        PRIMARY KEY (server, name)
    );
    CREATE INDEX wal_files_by_segno ON wal_files (server, segno, timeline);",
    // 2: base backups; `info` holds the whole backup.json so listings read no files.
    "CREATE TABLE backups (
        server TEXT NOT NULL,
        backup_id TEXT NOT NULL,
        name TEXT,
        status TEXT NOT NULL,
        begin_time TEXT NOT NULL,
        info TEXT NOT NULL,
        PRIMARY KEY (server, backup_id)
    );",
    // 3: measured figures (restore duration and throughput first) for RPO/RTO estimates.
    "CREATE TABLE measurements (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server TEXT NOT NULL,
        kind TEXT NOT NULL,
        backup_id TEXT,
        measured_at TEXT NOT NULL,
        duration_secs REAL NOT NULL,
        bytes INTEGER NOT NULL,
        files INTEGER NOT NULL,
        bytes_per_sec REAL NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX measurements_by_kind ON measurements (server, kind, measured_at);",
    // 4: a passive server's replication state (replicate): cursor and last pass.
    "CREATE TABLE peer_state (
        server TEXT PRIMARY KEY,
        cursor INTEGER NOT NULL,
        last_pass_at TEXT,
        primary_lsn TEXT,
        local_lsn TEXT,
        caught_up_at TEXT,
        backups_pending INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        last_error_at TEXT
    );",
    // 5: a server's WAL by insertion order (the index holds the rowid): sync-info's
    // `MAX(rowid)` and `rowid > cursor` cost what is new, not every archived segment.
    "CREATE INDEX wal_files_by_server ON wal_files (server);",
    // 6: wal_files numbered by AUTOINCREMENT, so the number of a deleted newest row
    // is never handed out again: sync-info's cursor must only grow (a reused number
    // would hide a new file from a passive peer whose cursor already passed it).
    "CREATE TABLE wal_files_v6 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        timeline INTEGER NOT NULL,
        segno INTEGER,
        size INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        checksum TEXT NOT NULL,
        archived_at TEXT NOT NULL,
        UNIQUE (server, name)
    );
    INSERT INTO wal_files_v6 (id, server, name, kind, timeline, segno, size, stored_size, checksum, archived_at)
        SELECT rowid, server, name, kind, timeline, segno, size, stored_size, checksum, archived_at
        FROM wal_files ORDER BY rowid;
    DROP TABLE wal_files;
    ALTER TABLE wal_files_v6 RENAME TO wal_files;
    CREATE INDEX wal_files_by_segno ON wal_files (server, segno, timeline);
    CREATE INDEX wal_files_by_server ON wal_files (server);",
    // 7: the BLAKE3 of each stored object (the compressed file as it lies on disk),
    // so a passive peer verifies a copy by hashing the bytes it received; NULL for
    // files stored before.
    "ALTER TABLE wal_files ADD COLUMN stored_checksum TEXT;",
    // 8: restore drills (`drill`): one row per drill, its whole report as JSON.
    "CREATE TABLE drills (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server TEXT NOT NULL,
        started_at TEXT NOT NULL,
        backup_id TEXT,
        ok INTEGER NOT NULL,
        rto_secs REAL,
        rpo_secs REAL,
        report TEXT NOT NULL
    );
    CREATE INDEX drills_by_server ON drills (server, started_at);",
];

/// A catalog failure; names the database file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite refused an operation.
    #[error("catalog {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The catalog folder could not be created.
    #[error("catalog {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The catalog was written by a newer pgbk.
    #[error(
        "catalog {path}: schema version {found} is newer than this pgbk understands ({known})"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// The server now reports another system identifier than the one archived before.
    #[error("server '{server}': system identifier {found} differs from {expected} recorded in the catalog (another cluster behind the same conninfo?)")]
    SystemIdChanged {
        server: String,
        expected: SystemId,
        found: SystemId,
    },
    /// The WAL segment size changed for a server.
    #[error("server '{server}': wal_segment_size {found} differs from {expected} recorded in the catalog")]
    SegSizeChanged {
        server: String,
        expected: u64,
        found: u64,
    },
}

/// What kind of file a WAL archive entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WalKind {
    /// A complete segment.
    Segment,
    /// An old timeline's incomplete last segment.
    Partial,
    /// A timeline history file.
    History,
}

impl WalKind {
    fn as_str(self) -> &'static str {
        match self {
            WalKind::Segment => "segment",
            WalKind::Partial => "partial",
            WalKind::History => "history",
        }
    }
    fn parse(s: &str) -> WalKind {
        match s {
            "partial" => WalKind::Partial,
            "history" => WalKind::History,
            _ => WalKind::Segment,
        }
    }
}

/// One archived WAL file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalRecord {
    /// File name as PostgreSQL names it (`000000010000000000000003`, `….partial`, `00000002.history`).
    pub name: String,
    /// Segment, partial or history.
    pub kind: WalKind,
    /// Timeline of the file.
    pub timeline: TimeLineId,
    /// Segment number (none for history files).
    pub segno: Option<u64>,
    /// Uncompressed size.
    pub size: u64,
    /// Size on disk.
    pub stored_size: u64,
    /// BLAKE3 of the uncompressed content.
    pub checksum: String,
    /// BLAKE3 of the object as stored (the compressed file on disk); `None` for files
    /// stored by an older pgbk.
    pub stored_checksum: Option<String>,
    /// When it was stored.
    pub archived_at: DateTime<Utc>,
}

#[cfg(test)]
impl WalRecord {
    /// A 16 MiB segment of timeline 1 archived now, for tests of what the catalog
    /// does with rows.
    pub fn test_segment(name: &str, segno: u64) -> WalRecord {
        WalRecord {
            name: name.into(),
            kind: WalKind::Segment,
            timeline: TimeLineId(1),
            segno: Some(segno),
            size: 16 << 20,
            stored_size: 100,
            checksum: "x".into(),
            stored_checksum: None,
            archived_at: chrono::Utc::now(),
        }
    }
}

/// An open catalog.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl Catalog {
    /// The catalog file under a repository home.
    pub fn path_in(home: &Path) -> PathBuf {
        home.join("catalog.db")
    }

    /// Opens the catalog, creating `home` (0700) and the database and applying migrations.
    pub fn open(home: &Path) -> Result<Catalog, CatalogError> {
        let path = Self::path_in(home);
        create_dir_all_private(home).map_err(|source| CatalogError::Io {
            path: path.clone(),
            source,
        })?;
        Self::open_path(path)
    }

    /// Opens the catalog only if it exists (read-only verbs must not create a repository).
    pub fn open_existing(home: &Path) -> Result<Option<Catalog>, CatalogError> {
        let path = Self::path_in(home);
        if !path.exists() {
            return Ok(None);
        }
        Self::open_path(path).map(Some)
    }

    /// Opens an existing catalog read-only, without migrations or permission changes:
    /// reading verbs (and get-wal, which may run as the postgres OS user) write
    /// nothing, and work on a read-only home. A catalog in WAL mode needs its `-shm`
    /// file; when that cannot be created (a read-only folder, and no writer left
    /// one), the file is opened as immutable, which is what it is then.
    pub fn open_read_only(home: &Path) -> Result<Option<Catalog>, CatalogError> {
        let path = Self::path_in(home);
        if !path.exists() {
            return Ok(None);
        }
        let err = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(err)?;
        let _ = conn.busy_timeout(Duration::from_secs(30));
        let conn = match conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())) {
            Ok(()) => conn,
            Err(_) => {
                drop(conn);
                let uri = format!("file:{}?immutable=1", uri_path(&path));
                Connection::open_with_flags(
                    uri,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(err)?
            }
        };
        let cat = Catalog { conn, path };
        let known = MIGRATIONS.len() as i64;
        match cat.schema_version() {
            Ok(found) if found > known => Err(CatalogError::TooNew {
                path: cat.path.clone(),
                found,
                known,
            }),
            _ => Ok(Some(cat)),
        }
    }

    /// Opens an existing catalog for writing when the home allows it, else
    /// read-only ([`Catalog::open_read_only`]): for a verb that only reads the
    /// repository but records a measurement on the side when it can (`recover`).
    pub fn open_existing_or_read_only(home: &Path) -> Result<Option<Catalog>, CatalogError> {
        match Self::open_existing(home) {
            Ok(c) => Ok(c),
            Err(e) => match Self::open_read_only(home) {
                Ok(c) => {
                    tracing::debug!("catalog opened read-only: {e}");
                    Ok(c)
                }
                Err(_) => Err(e),
            },
        }
    }

    fn open_path(path: PathBuf) -> Result<Catalog, CatalogError> {
        let err = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let mut cat = Catalog { conn, path };
        cat.migrate()?;
        Ok(cat)
    }

    fn sql_err(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let err = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            [],
        )
        .map_err(err)?;
        let version: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(err)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(CatalogError::TooNew {
                path: path.clone(),
                found: version,
                known,
            });
        }
        for sql in &MIGRATIONS[version as usize..] {
            tx.execute_batch(sql).map_err(err)?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![known.to_string()],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<i64, CatalogError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get::<_, String>(0),
            )
            .map(|v| v.parse().unwrap_or(0))
            .map_err(|e| self.sql_err(e))
    }

    /// The system identifier and segment size first seen for a server, if any.
    pub fn server_identity(&self, server: &str) -> Result<Option<(SystemId, u64)>, CatalogError> {
        self.conn
            .query_row(
                "SELECT system_id, wal_segment_size FROM servers WHERE name = ?1",
                params![server],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(|e| self.sql_err(e))
            .map(|o| o.and_then(|(s, z)| s.parse().ok().map(|s| (s, z as u64))))
    }

    /// Records a server's identity the first time, and refuses a different one later.
    pub fn check_server_identity(
        &self,
        server: &str,
        system_id: SystemId,
        seg_size: u64,
    ) -> Result<(), CatalogError> {
        match self.server_identity(server)? {
            Some((expected, _)) if expected != system_id => Err(CatalogError::SystemIdChanged {
                server: server.to_string(),
                expected,
                found: system_id,
            }),
            Some((_, expected)) if expected != seg_size => Err(CatalogError::SegSizeChanged {
                server: server.to_string(),
                expected,
                found: seg_size,
            }),
            Some(_) => Ok(()),
            None => {
                // receive-wal and a backup may see a new server at the same
                // moment: the second insert yields, then both compare with the
                // identity that was recorded.
                let inserted = self
                    .conn
                    .execute(
                        "INSERT INTO servers (name, system_id, wal_segment_size, first_seen) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT(name) DO NOTHING",
                        params![
                            server,
                            system_id.to_string(),
                            seg_size as i64,
                            Utc::now().to_rfc3339()
                        ],
                    )
                    .map_err(|e| self.sql_err(e))?;
                if inserted == 1 {
                    return Ok(());
                }
                match self.server_identity(server)? {
                    Some((expected, _)) if expected != system_id => {
                        Err(CatalogError::SystemIdChanged {
                            server: server.to_string(),
                            expected,
                            found: system_id,
                        })
                    }
                    Some((_, expected)) if expected != seg_size => {
                        Err(CatalogError::SegSizeChanged {
                            server: server.to_string(),
                            expected,
                            found: seg_size,
                        })
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Forgets a server's identity (receive-wal --reset after a cluster was rebuilt).
    pub fn forget_server_identity(&self, server: &str) -> Result<(), CatalogError> {
        self.conn
            .execute("DELETE FROM servers WHERE name = ?1", params![server])
            .map(|_| ())
            .map_err(|e| self.sql_err(e))
    }

    /// Records an archived WAL file (idempotent for the same name).
    pub fn insert_wal(&self, server: &str, w: &WalRecord) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO wal_files (server, name, kind, timeline, segno, size, stored_size, checksum, archived_at, stored_checksum)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (server, name) DO UPDATE SET kind = excluded.kind, timeline = excluded.timeline,
                   segno = excluded.segno, size = excluded.size, stored_size = excluded.stored_size,
                   checksum = excluded.checksum, archived_at = excluded.archived_at,
                   stored_checksum = excluded.stored_checksum",
                params![
                    server,
                    w.name,
                    w.kind.as_str(),
                    w.timeline.0,
                    w.segno.map(|s| s as i64),
                    w.size as i64,
                    w.stored_size as i64,
                    w.checksum,
                    w.archived_at.to_rfc3339(),
                    w.stored_checksum
                ],
            )
            .map(|_| ())
            .map_err(|e| self.sql_err(e))
    }

    fn wal_query(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<WalRecord>, CatalogError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map(p, |r| {
                let archived: String = r.get(8)?;
                Ok(WalRecord {
                    name: r.get(1)?,
                    kind: WalKind::parse(&r.get::<_, String>(2)?),
                    timeline: TimeLineId(r.get(3)?),
                    segno: r.get::<_, Option<i64>>(4)?.map(|s| s as u64),
                    size: r.get::<_, i64>(5)? as u64,
                    stored_size: r.get::<_, i64>(6)? as u64,
                    checksum: r.get(7)?,
                    stored_checksum: r.get(9)?,
                    archived_at: DateTime::parse_from_rfc3339(&archived)
                        .map(|d| d.with_timezone(&Utc))
                        .unwrap_or_default(),
                })
            })
            .map_err(|e| self.sql_err(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))
    }

    const WAL_COLUMNS: &'static str =
        "server, name, kind, timeline, segno, size, stored_size, checksum, archived_at, stored_checksum";

    /// Every archived WAL file of a server, in WAL order (history files first).
    pub fn wal_files(&self, server: &str) -> Result<Vec<WalRecord>, CatalogError> {
        self.wal_query(
            &format!(
                "SELECT {} FROM wal_files WHERE server = ?1 ORDER BY segno IS NOT NULL, segno, timeline, name",
                Self::WAL_COLUMNS
            ),
            params![server],
        )
    }

    /// The newest archived complete segment (highest segment number, then timeline).
    pub fn last_segment(&self, server: &str) -> Result<Option<WalRecord>, CatalogError> {
        Ok(self
            .wal_query(
                &format!(
                    "SELECT {} FROM wal_files WHERE server = ?1 AND kind = 'segment'
                     ORDER BY segno DESC, timeline DESC LIMIT 1",
                    Self::WAL_COLUMNS
                ),
                params![server],
            )?
            .pop())
    }

    /// One archived WAL file by name.
    pub fn wal_file(&self, server: &str, name: &str) -> Result<Option<WalRecord>, CatalogError> {
        Ok(self
            .wal_query(
                &format!(
                    "SELECT {} FROM wal_files WHERE server = ?1 AND name = ?2",
                    Self::WAL_COLUMNS
                ),
                params![server, name],
            )?
            .pop())
    }
}

/// A backup's record as the catalog keeps it: the whole backup.json as JSON, plus
/// the columns it is looked up by. The backup layer implements it for its
/// `BackupInfo`, so the catalog stays below the code that takes backups.
pub trait BackupRecord: Serialize + DeserializeOwned {
    /// The server the backup belongs to.
    fn server(&self) -> &str;
    /// Its id (`YYYYMMDDTHHMMSS`).
    fn backup_id(&self) -> &str;
    /// The name the user gave it, if any.
    fn name(&self) -> Option<&str>;
    /// Its status as backup.json spells it (`DONE`, `FAILED`, ...).
    fn status(&self) -> &str;
    /// When it began.
    fn begin_time(&self) -> DateTime<Utc>;
}

impl Catalog {
    /// Records or updates a backup from its backup.json content.
    pub fn upsert_backup(&self, info: &impl BackupRecord) -> Result<(), CatalogError> {
        let json = serde_json::to_string(info).unwrap_or_default();
        self.conn
            .execute(
                "INSERT INTO backups (server, backup_id, name, status, begin_time, info)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (server, backup_id) DO UPDATE SET name = excluded.name,
                   status = excluded.status, begin_time = excluded.begin_time, info = excluded.info",
                params![
                    info.server(),
                    info.backup_id(),
                    info.name(),
                    info.status(),
                    info.begin_time().to_rfc3339(),
                    json
                ],
            )
            .map(|_| ())
            .map_err(|e| self.sql_err(e))
    }

    /// Every backup of a server, oldest first.
    pub fn backups<B: BackupRecord>(&self, server: &str) -> Result<Vec<B>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare("SELECT info FROM backups WHERE server = ?1 ORDER BY backup_id")
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map(params![server], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql_err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let text = r.map_err(|e| self.sql_err(e))?;
            if let Ok(info) = serde_json::from_str::<B>(&text) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Forgets a backup (its files are removed by the caller first).
    pub fn delete_backup(&self, server: &str, backup_id: &str) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "DELETE FROM backups WHERE server = ?1 AND backup_id = ?2",
                params![server, backup_id],
            )
            .map(|_| ())
            .map_err(|e| self.sql_err(e))
    }

    /// Forgets archived WAL files (their files are removed by the caller first), in
    /// one transaction: retention may drop tens of thousands of segments at once.
    pub fn delete_wals<'a>(
        &self,
        server: &str,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<usize, CatalogError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.sql_err(e))?;
        let mut deleted = 0;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM wal_files WHERE server = ?1 AND name = ?2")
                .map_err(|e| self.sql_err(e))?;
            for name in names {
                deleted += stmt
                    .execute(params![server, name])
                    .map_err(|e| self.sql_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.sql_err(e))?;
        Ok(deleted)
    }
}

/// One measured run of a job (a restore, …): how long it took for how much data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    /// Server name.
    pub server: String,
    /// What was measured: `restore`, `restore-delta`, …
    pub kind: String,
    /// The backup involved, if any.
    pub backup_id: Option<String>,
    /// When the run ended.
    pub measured_at: DateTime<Utc>,
    /// Wall-clock duration.
    pub duration_secs: f64,
    /// Bytes handled.
    pub bytes: u64,
    /// Files handled.
    pub files: u64,
    /// `bytes / duration_secs`.
    pub bytes_per_sec: f64,
    /// More figures, as a JSON object.
    pub detail: String,
}

impl Catalog {
    /// Records a measurement.
    pub fn insert_measurement(&self, m: &Measurement) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO measurements (server, kind, backup_id, measured_at, duration_secs,
                   bytes, files, bytes_per_sec, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    m.server,
                    m.kind,
                    m.backup_id,
                    m.measured_at.to_rfc3339(),
                    m.duration_secs,
                    m.bytes as i64,
                    m.files as i64,
                    m.bytes_per_sec,
                    m.detail
                ],
            )
            .map(|_| ())
            .map_err(|e| self.sql_err(e))
    }

    /// A server's measurements of one kind, oldest first.
    pub fn measurements(&self, server: &str, kind: &str) -> Result<Vec<Measurement>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT server, kind, backup_id, measured_at, duration_secs, bytes, files,
                   bytes_per_sec, detail
                 FROM measurements WHERE server = ?1 AND kind = ?2 ORDER BY measured_at, id",
            )
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map(params![server, kind], |r| {
                let at: String = r.get(3)?;
                Ok(Measurement {
                    server: r.get(0)?,
                    kind: r.get(1)?,
                    backup_id: r.get(2)?,
                    measured_at: DateTime::parse_from_rfc3339(&at)
                        .map(|d| d.with_timezone(&Utc))
                        .unwrap_or_default(),
                    duration_secs: r.get(4)?,
                    bytes: r.get::<_, i64>(5)? as u64,
                    files: r.get::<_, i64>(6)? as u64,
                    bytes_per_sec: r.get(7)?,
                    detail: r.get(8)?,
                })
            })
            .map_err(|e| self.sql_err(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, segno: u64) -> WalRecord {
        WalRecord {
            name: name.into(),
            kind: WalKind::Segment,
            timeline: TimeLineId(1),
            segno: Some(segno),
            size: 16,
            stored_size: 4,
            checksum: "x".into(),
            stored_checksum: Some("y".into()),
            archived_at: Utc::now(),
        }
    }

    #[test]
    fn migrates_records_and_checks_identity() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        assert!(Catalog::open_existing(&home).unwrap().is_none());
        let cat = Catalog::open(&home).unwrap();
        assert_eq!(cat.schema_version().unwrap(), MIGRATIONS.len() as i64);
        cat.check_server_identity("pg1", SystemId(7), 16).unwrap();
        cat.check_server_identity("pg1", SystemId(7), 16).unwrap();
        assert!(matches!(
            cat.check_server_identity("pg1", SystemId(8), 16),
            Err(CatalogError::SystemIdChanged { .. })
        ));
        cat.insert_wal("pg1", &rec("000000010000000000000002", 2))
            .unwrap();
        cat.insert_wal("pg1", &rec("000000010000000000000003", 3))
            .unwrap();
        cat.insert_wal("pg1", &rec("000000010000000000000003", 3))
            .unwrap();
        assert_eq!(cat.wal_files("pg1").unwrap().len(), 2);
        assert_eq!(cat.last_segment("pg1").unwrap().unwrap().segno, Some(3));
        drop(cat);
        // Reopening is a no-op migration.
        let cat = Catalog::open(&home).unwrap();
        assert_eq!(cat.wal_files("pg1").unwrap().len(), 2);
        // Deleting names only this server's rows; unknown names count nothing.
        cat.insert_wal("pg2", &rec("000000010000000000000002", 2))
            .unwrap();
        let gone = cat
            .delete_wals(
                "pg1",
                ["000000010000000000000002", "00000001000000000000000F"],
            )
            .unwrap();
        assert_eq!(gone, 1);
        assert_eq!(cat.wal_files("pg1").unwrap().len(), 1);
        assert_eq!(cat.wal_files("pg2").unwrap().len(), 1);
    }

    #[test]
    fn migration_7_adds_object_checksums_to_an_old_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let path = Catalog::path_in(dir.path());
        {
            // A catalog as pgbk left it at schema version 6, with one archived segment.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema_version', '6');",
            )
            .unwrap();
            for sql in &MIGRATIONS[..6] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute(
                "INSERT INTO wal_files (server, name, kind, timeline, segno, size, stored_size, checksum, archived_at)
                 VALUES ('pg1', '000000010000000000000002', 'segment', 1, 2, 16, 4, 'x', ?1)",
                params![Utc::now().to_rfc3339()],
            )
            .unwrap();
        }
        let cat = Catalog::open(dir.path()).unwrap();
        assert_eq!(cat.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let old = cat
            .wal_file("pg1", "000000010000000000000002")
            .unwrap()
            .unwrap();
        assert_eq!((old.checksum.as_str(), old.stored_checksum), ("x", None));
        cat.insert_wal("pg1", &rec("000000010000000000000003", 3))
            .unwrap();
        let new = cat
            .wal_file("pg1", "000000010000000000000003")
            .unwrap()
            .unwrap();
        assert_eq!(new.stored_checksum.as_deref(), Some("y"));
        // Re-storing the old file records the checksum it lacked.
        cat.insert_wal("pg1", &rec("000000010000000000000002", 2))
            .unwrap();
        let since = cat.wal_files_since("pg1", 0).unwrap();
        assert!(since
            .iter()
            .all(|w| w.record.stored_checksum.as_deref() == Some("y")));
    }

    #[test]
    fn records_measurements() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let m = Measurement {
            server: "pg1".into(),
            kind: "restore".into(),
            backup_id: Some("20260101T000000".into()),
            measured_at: Utc::now(),
            duration_secs: 2.5,
            bytes: 1000,
            files: 3,
            bytes_per_sec: 400.0,
            detail: "{}".into(),
        };
        cat.insert_measurement(&m).unwrap();
        let got = cat.measurements("pg1", "restore").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].bytes, 1000);
        assert_eq!(got[0].backup_id, m.backup_id);
        assert!(cat.measurements("pg1", "backup").unwrap().is_empty());
    }
}
