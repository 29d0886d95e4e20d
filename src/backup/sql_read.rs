//! A live data directory read over an ordinary SQL session, the way `pg_rewind`
//! reads a running server: `pg_backup_start` and `pg_backup_stop` around it,
//! `pg_ls_dir`/`pg_stat_file` to list it, `pg_read_binary_file` to read byte
//! ranges. Ranges are fetched many at a time with `COPY (...) TO STDOUT (FORMAT
//! binary)`, so file contents cross the wire as raw bytes, not hex text.
//!
//! The role needs (documented in pgbk(1), `incremental_read`):
//! `GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean),
//! pg_switch_wal(), pg_ls_dir(text, boolean, boolean), pg_stat_file(text, boolean),
//! pg_read_binary_file(text, bigint, bigint, boolean) TO <role>`.

use super::exclude::{EMPTY_DIRS, TABLESPACE_LINKS};
use crate::pg::{Connection, PgError, QueryEvent};
use crate::wal::Lsn;
use bytes::{Buf, BytesMut};

/// The functions the SQL path calls, as `has_function_privilege` names them.
pub const NEEDED_FUNCTIONS: [&str; 6] = [
    "pg_backup_start(text, boolean)",
    "pg_backup_stop(boolean)",
    "pg_switch_wal()",
    "pg_ls_dir(text, boolean, boolean)",
    "pg_stat_file(text, boolean)",
    "pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// One entry of the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Relative to the data directory, `/`-separated.
    pub path: String,
    pub is_dir: bool,
    /// Bytes (0 for a directory).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// A tablespace to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: u32,
    /// Where it is on the server (`pg_tablespace_location`).
    pub location: String,
    /// This major's directory in it (`PG_15_202209061`).
    pub version_dir: String,
}

/// A byte range of a file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub path: String,
    pub offset: u64,
    pub len: u64,
}

/// What the backup's end returned.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub lsn: Lsn,
    /// The `backup_label` file's content.
    pub label: String,
    /// The `tablespace_map` file's content (empty without tablespaces).
    pub tablespace_map: String,
}

/// An SQL session reading the server's data directory.
pub struct SqlSource {
    conn: Connection,
    /// Bytes of file content received.
    pub read_bytes: u64,
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn lsn_of(v: Option<&str>, what: &str) -> Result<Lsn, PgError> {
    v.and_then(|s| s.parse::<Lsn>().ok())
        .ok_or_else(|| PgError::Protocol(format!("{what} returned no LSN")))
}

impl SqlSource {
    /// Wraps an open (non-replication) session.
    pub fn new(conn: Connection) -> SqlSource {
        SqlSource {
            conn,
            read_bytes: 0,
        }
    }

    /// Why this session cannot read the data directory, if it cannot: functions
    /// the role may not execute, a standby, or a build with other block or
    /// segment sizes.
    pub async fn unfit(&mut self) -> Result<Option<String>, PgError> {
        if self.conn.parameter("standard_conforming_strings") != Some("on") {
            return Ok(Some("standard_conforming_strings is off".into()));
        }
        let checks: Vec<String> = NEEDED_FUNCTIONS
            .iter()
            .map(|f| format!("has_function_privilege({}, 'execute')", literal(f)))
            .collect();
        // The recursive listing's estimate (millions of rows) would have the
        // planner JIT-compile it: 120 ms of compiling for a 5 ms query.
        let sql = format!(
            "SET jit = off; \
             SELECT pg_is_in_recovery(), current_setting('block_size'), \
                    current_setting('segment_size'), current_user, {}",
            checks.join(", ")
        );
        let rows = self.conn.simple_query(&sql).await?;
        let Some(row) = rows.first() else {
            return Ok(Some("the server answered no row".into()));
        };
        if row.get_idx(0) == Some("t") {
            return Ok(Some("the server is a standby".into()));
        }
        if row.get_idx(1) != Some("8192") || row.get_idx(2) != Some("1GB") {
            return Ok(Some(format!(
                "the server was built with block_size {} and segment_size {} (8192 and 1GB are read over SQL)",
                row.get_idx(1).unwrap_or("?"),
                row.get_idx(2).unwrap_or("?")
            )));
        }
        let user = row.get_idx(3).unwrap_or("?").to_string();
        let missing: Vec<&str> = NEEDED_FUNCTIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| row.get_idx(4 + i) != Some("t"))
            .map(|(_, f)| *f)
            .collect();
        if !missing.is_empty() {
            return Ok(Some(format!(
                "role {user} may not execute {} (GRANT EXECUTE ON FUNCTION {} TO {user})",
                missing.join(", "),
                missing.join(", ")
            )));
        }
        Ok(None)
    }

    /// `pg_backup_start`: the checkpoint, then the backup's start LSN (its redo point).
    pub async fn start(&mut self, label: &str, fast: bool) -> Result<Lsn, PgError> {
        let sql = format!("SELECT pg_backup_start({}, {fast})", literal(label));
        let rows = self.conn.simple_query(&sql).await?;
        lsn_of(rows.first().and_then(|r| r.get_idx(0)), "pg_backup_start")
    }

    /// `pg_switch_wal`: the segment holding the start goes to the archive now.
    pub async fn switch_wal(&mut self) -> Result<(), PgError> {
        self.conn.simple_query("SELECT pg_switch_wal()").await?;
        Ok(())
    }

    /// `pg_backup_stop(false)`: pgbk waits for the WAL itself.
    pub async fn stop(&mut self) -> Result<Stopped, PgError> {
        let rows = self
            .conn
            .simple_query("SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(false)")
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| PgError::Protocol("pg_backup_stop returned no row".into()))?;
        Ok(Stopped {
            lsn: lsn_of(row.get_idx(0), "pg_backup_stop")?,
            label: row.get_idx(1).unwrap_or_default().to_string(),
            tablespace_map: row.get_idx(2).unwrap_or_default().to_string(),
        })
    }

    /// The data directory, every entry, sorted by path. The contents of
    /// [`EMPTY_DIRS`] and of `pgsql_tmp*` directories are not listed, nor what
    /// is under `pg_tblspc` (tablespaces: [`SqlSource::list_tablespace`]).
    pub async fn list(&mut self) -> Result<Vec<Listed>, PgError> {
        let skip: Vec<String> = EMPTY_DIRS
            .iter()
            .chain([TABLESPACE_LINKS].iter())
            .map(|d| literal(d))
            .collect();
        let top = "SELECT n AS path, s.isdir, s.size, s.modification \
                     FROM pg_ls_dir('.', true, false) AS n, pg_stat_file(n, true) AS s";
        self.list_from(top, "", &format!("f.path NOT IN ({})", skip.join(", ")))
            .await
    }

    /// The tablespaces besides `pg_default` and `pg_global`, each with its
    /// location and the directory of this server's major in it (`PG_15_...`);
    /// an error when that directory cannot be told apart.
    pub async fn tablespaces(&mut self) -> Result<Vec<Tablespace>, PgError> {
        let rows = self
            .conn
            .simple_query(
                "SELECT t.oid, pg_tablespace_location(t.oid), \
                        (SELECT string_agg(n, ',') FROM pg_ls_dir('pg_tblspc/' || t.oid, true, false) n \
                          WHERE n LIKE 'PG\\_' || (current_setting('server_version_num')::int / 10000) || '\\_%') \
                   FROM pg_tablespace t WHERE t.spcname NOT IN ('pg_default', 'pg_global') ORDER BY t.oid",
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let oid: u32 = r
                .get_idx(0)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| PgError::Protocol("a tablespace without an oid".into()))?;
            let dirs: Vec<&str> = r
                .get_idx(2)
                .unwrap_or("")
                .split(',')
                .filter(|d| !d.is_empty())
                .collect();
            let [version_dir] = dirs.as_slice() else {
                return Err(PgError::Protocol(format!(
                    "tablespace {oid} holds {} directories for this major ({}), not one",
                    dirs.len(),
                    dirs.join(", ")
                )));
            };
            out.push(Tablespace {
                oid,
                location: r.get_idx(1).unwrap_or("").to_string(),
                version_dir: version_dir.to_string(),
            });
        }
        Ok(out)
    }

    /// A tablespace's directory for this major, every entry, with paths relative
    /// to the tablespace (`PG_15_.../<db>/<relfilenode>`), as BASE_BACKUP sends it.
    pub async fn list_tablespace(&mut self, ts: &Tablespace) -> Result<Vec<Listed>, PgError> {
        let base = format!("pg_tblspc/{}/", ts.oid);
        let top = format!(
            "SELECT {v} AS path, s.isdir, s.size, s.modification \
               FROM pg_stat_file({p}, true) AS s",
            v = literal(&ts.version_dir),
            p = literal(&format!("{base}{}", ts.version_dir)),
        );
        self.list_from(&top, &base, "true").await
    }

    /// The recursive listing from the rows of `top`, paths relative to `base`
    /// (a prefix of the data directory), descending where `descend` holds.
    async fn list_from(
        &mut self,
        top: &str,
        base: &str,
        descend: &str,
    ) -> Result<Vec<Listed>, PgError> {
        let b = literal(base);
        let sql = format!(
            "WITH RECURSIVE f(path, isdir, size, mtime) AS ( \
               {top} \
               UNION ALL \
               SELECT f.path || '/' || n, s.isdir, s.size, s.modification \
                 FROM f, pg_ls_dir({b} || f.path, true, false) AS n, \
                      pg_stat_file({b} || f.path || '/' || n, true) AS s \
                WHERE f.isdir AND {descend} AND f.path !~ '(^|/)pgsql_tmp' \
             ) \
             SELECT path, isdir, size, extract(epoch FROM mtime)::bigint \
               FROM f WHERE isdir IS NOT NULL ORDER BY path COLLATE \"C\""
        );
        let rows = self.conn.simple_query(&sql).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (Some(path), Some(isdir)) = (r.get_idx(0), r.get_idx(1)) else {
                continue;
            };
            out.push(Listed {
                path: path.to_string(),
                is_dir: isdir == "t",
                size: r.get_idx(2).and_then(|s| s.parse().ok()).unwrap_or(0),
                mtime: r.get_idx(3).and_then(|s| s.parse().ok()).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Reads `ranges` in one statement and hands each one's bytes to `sink` in
    /// order (`None` when the file is gone; fewer bytes than asked when it
    /// ended early).
    pub async fn read(
        &mut self,
        ranges: &[Range],
        mut sink: impl FnMut(usize, Option<&[u8]>) -> std::io::Result<()>,
    ) -> Result<(), ReadError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let values: Vec<String> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "({i}, {}, {}::bigint, {}::bigint)",
                    literal(&r.path),
                    r.offset,
                    r.len
                )
            })
            .collect();
        let sql = format!(
            "COPY (SELECT r.i, pg_read_binary_file(r.p, r.o, r.l, true) \
                     FROM (VALUES {}) AS r(i, p, o, l) ORDER BY r.i) TO STDOUT (FORMAT binary)",
            values.join(", ")
        );
        let mut stream = self.conn.query_stream(&sql).await?;
        let mut parser = CopyParser::default();
        let mut next = 0usize;
        let mut failure: Option<ReadError> = None;
        while let Some(ev) = stream.next_event().await? {
            let QueryEvent::CopyData(data) = ev else {
                continue;
            };
            if failure.is_some() {
                continue;
            }
            parser.buf.extend_from_slice(&data);
            loop {
                match parser.next_row() {
                    Ok(Some((i, bytes))) => {
                        if i != next || i >= ranges.len() {
                            failure = Some(ReadError::Protocol(format!(
                                "row {i} arrived where row {next} was expected"
                            )));
                            break;
                        }
                        next += 1;
                        self.read_bytes += bytes.as_ref().map_or(0, |b| b.len() as u64);
                        if let Err(e) = sink(i, bytes.as_deref()) {
                            failure = Some(ReadError::Sink(e));
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(ReadError::Protocol(e));
                        break;
                    }
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        if next != ranges.len() || !parser.ended {
            return Err(ReadError::Protocol(format!(
                "the server sent {next} of {} ranges",
                ranges.len()
            )));
        }
        Ok(())
    }

    /// Ends the session (a backup still running is aborted by the server).
    pub async fn close(self) {
        self.conn.close().await;
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("reading files over SQL: {0}")]
    Protocol(String),
    #[error("{0}")]
    Sink(std::io::Error),
}

/// COPY's binary format: a signature and header, then per row a field count and
/// per field a length (-1 for NULL) and the bytes; a count of -1 ends it.
#[derive(Default)]
struct CopyParser {
    buf: BytesMut,
    header: bool,
    ended: bool,
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

type ParsedRow = (usize, Option<Vec<u8>>);

impl CopyParser {
    /// The next whole row `(i, data)`, or `None` until more bytes arrive.
    fn next_row(&mut self) -> Result<Option<ParsedRow>, String> {
        if !self.header {
            if self.buf.len() < 19 {
                return Ok(None);
            }
            if &self.buf[..11] != SIGNATURE {
                return Err("COPY data without the binary signature".into());
            }
            let ext = u32::from_be_bytes([self.buf[15], self.buf[16], self.buf[17], self.buf[18]])
                as usize;
            if self.buf.len() < 19 + ext {
                return Ok(None);
            }
            self.buf.advance(19 + ext);
            self.header = true;
        }
        if self.ended || self.buf.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([self.buf[0], self.buf[1]]);
        if count == -1 {
            self.buf.advance(2);
            self.ended = true;
            return Ok(None);
        }
        if count != 2 {
            return Err(format!("a row of {count} fields"));
        }
        // Field 1: int4 (length 4), field 2: bytea or NULL.
        let need_first = 2 + 4 + 4 + 4;
        if self.buf.len() < need_first {
            return Ok(None);
        }
        let l1 = i32::from_be_bytes([self.buf[2], self.buf[3], self.buf[4], self.buf[5]]);
        if l1 != 4 {
            return Err(format!("a row number of {l1} bytes"));
        }
        let i = i32::from_be_bytes([self.buf[6], self.buf[7], self.buf[8], self.buf[9]]);
        let l2 = i32::from_be_bytes([self.buf[10], self.buf[11], self.buf[12], self.buf[13]]);
        let body = if l2 < 0 { 0 } else { l2 as usize };
        if self.buf.len() < need_first + body {
            return Ok(None);
        }
        self.buf.advance(need_first);
        let data = (l2 >= 0).then(|| self.buf.split_to(body).to_vec());
        let i = usize::try_from(i).map_err(|_| format!("row number {i}"))?;
        Ok(Some((i, data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: i32, data: Option<&[u8]>) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&2i16.to_be_bytes());
        v.extend_from_slice(&4i32.to_be_bytes());
        v.extend_from_slice(&i.to_be_bytes());
        match data {
            Some(d) => {
                v.extend_from_slice(&(d.len() as i32).to_be_bytes());
                v.extend_from_slice(d);
            }
            None => v.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        v
    }

    #[test]
    fn parses_binary_copy_in_any_pieces() {
        let mut all = SIGNATURE.to_vec();
        all.extend_from_slice(&0u32.to_be_bytes());
        all.extend_from_slice(&0u32.to_be_bytes());
        all.extend(row(0, Some(b"hello")));
        all.extend(row(1, None));
        all.extend(row(2, Some(&[7u8; 9000])));
        all.extend_from_slice(&(-1i16).to_be_bytes());
        for piece in [1usize, 3, 7, 100, all.len()] {
            let mut p = CopyParser::default();
            let mut got = Vec::new();
            for c in all.chunks(piece) {
                p.buf.extend_from_slice(c);
                while let Some(r) = p.next_row().unwrap() {
                    got.push(r);
                }
            }
            assert!(p.ended, "piece {piece}");
            assert_eq!(got.len(), 3);
            assert_eq!(got[0], (0, Some(b"hello".to_vec())));
            assert_eq!(got[1], (1, None));
            assert_eq!(got[2].1.as_ref().map(Vec::len), Some(9000));
        }
        let mut p = CopyParser::default();
        p.buf.extend_from_slice(b"not copy data at all");
        assert!(p.next_row().is_err());
    }

    #[test]
    fn literals_double_quotes() {
        assert_eq!(literal("a'b"), "'a''b'");
    }
}
