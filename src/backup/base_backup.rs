//! The protocol side of a streamed base backup: PostgreSQL 15's `BASE_BACKUP`
//! command and its answer (PG-PROTOCOL.md section 2), decoded into typed events.
//!
//! The answer is: a result set with the start LSN and timeline, a result set with
//! one row per tablespace, one COPY OUT stream whose CopyData payloads start with a
//! type byte (`n` new archive, `d` data, `p` progress, `m` manifest follows), and a
//! final result set with the end LSN and timeline. [`Decoder`] is the pure state
//! machine over those messages; [`BaseBackupStream`] feeds it from a connection.

use crate::pg::{Connection, PgError, QueryEvent, QueryStream};
use crate::wal::{Lsn, TimeLineId};
use bytes::{Buf, Bytes};

/// The oldest server version whose BASE_BACKUP syntax and stream format pgbk speaks.
pub const MIN_SERVER_VERSION: u32 = 150000;

/// PostgreSQL's accepted MAX_RATE range, in kB/s.
pub const MAX_RATE_RANGE: (u32, u32) = (32, 1_048_576);

/// What to ask the server for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// `LABEL`: shows in `backup_label` and the server log.
    pub label: String,
    /// `CHECKPOINT 'fast'` rather than `'spread'`.
    pub fast_checkpoint: bool,
    /// `MAX_RATE` in kB/s (already clamped to [`MAX_RATE_RANGE`]).
    pub max_rate: Option<u32>,
    /// `PROGRESS`: the server estimates each tablespace's size first.
    pub progress: bool,
    /// `INCREMENTAL` (PostgreSQL 17+): send only the blocks changed since the
    /// backup whose manifest `UPLOAD_MANIFEST` gave on the same connection.
    pub incremental: bool,
}

/// Barman's `bandwidth_limit` (KiB/s) as a MAX_RATE PostgreSQL accepts.
pub fn max_rate_for(bandwidth_limit_kib: u64) -> u32 {
    let (lo, hi) = MAX_RATE_RANGE;
    bandwidth_limit_kib.clamp(u64::from(lo), u64::from(hi)) as u32
}

impl BaseBackupOptions {
    /// The command text, in PostgreSQL 15's parenthesised option syntax. WAL is
    /// never included (pgbk archives it itself) and the server does not wait for
    /// archiving (pgbk waits for its own archive).
    pub fn command(&self) -> String {
        let mut opts = vec![format!("LABEL '{}'", self.label.replace('\'', "''"))];
        if self.progress {
            opts.push("PROGRESS".to_string());
        }
        opts.push(format!(
            "CHECKPOINT '{}'",
            if self.fast_checkpoint {
                "fast"
            } else {
                "spread"
            }
        ));
        opts.push("WAL false".to_string());
        opts.push("WAIT false".to_string());
        opts.push("MANIFEST 'yes'".to_string());
        opts.push("TARGET 'client'".to_string());
        if self.incremental {
            opts.push("INCREMENTAL".to_string());
        }
        if let Some(rate) = self.max_rate {
            opts.push(format!("MAX_RATE {rate}"));
        }
        format!("BASE_BACKUP ({})", opts.join(", "))
    }
}

/// One row of the tablespace result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceRow {
    /// `None` for the main data directory.
    pub oid: Option<u32>,
    /// Where the tablespace lives on the server (`None` for the data directory).
    pub location: Option<String>,
    /// The server's size estimate in kB (with `PROGRESS`).
    pub size_kb: Option<u64>,
}

/// One step of a base backup's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseBackupEvent {
    /// The checkpoint is done: the backup starts at this LSN on this timeline.
    Start { lsn: Lsn, timeline: TimeLineId },
    /// The tablespaces the server will send, main data directory included.
    Tablespaces(Vec<TablespaceRow>),
    /// A new tar archive starts (`base.tar`, `<oid>.tar`).
    Archive { name: String, location: String },
    /// Bytes of the current tar archive.
    Data(Bytes),
    /// Bytes sent so far (before any compression), as the server counts them.
    Progress(u64),
    /// `backup_manifest` follows.
    ManifestStart,
    /// Bytes of `backup_manifest`.
    ManifestData(Bytes),
    /// The backup ended: recovery from it is consistent once replay passes this LSN.
    End { lsn: Lsn, timeline: TimeLineId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    StartResult,
    TablespaceResult,
    BeforeCopy,
    Copy,
    EndResult,
    Finished,
}

/// The pure state machine turning a `BASE_BACKUP` answer into [`BaseBackupEvent`]s.
#[derive(Debug)]
pub struct Decoder {
    phase: Phase,
    position: Option<(Lsn, TimeLineId)>,
    tablespaces: Vec<TablespaceRow>,
    in_archive: bool,
    in_manifest: bool,
    archives: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

fn proto(what: impl Into<String>) -> PgError {
    PgError::Protocol(format!("BASE_BACKUP: {}", what.into()))
}

fn position_row(values: &[Option<String>]) -> Result<(Lsn, TimeLineId), PgError> {
    let lsn = values
        .first()
        .and_then(|v| v.as_deref())
        .ok_or_else(|| proto("no LSN in the position row"))?;
    let lsn: Lsn = lsn.parse().map_err(|e| proto(format!("{e}")))?;
    let tli = values
        .get(1)
        .and_then(|v| v.as_deref())
        .ok_or_else(|| proto("no timeline in the position row"))?;
    let tli: u32 = tli
        .parse()
        .map_err(|_| proto(format!("invalid timeline '{tli}'")))?;
    Ok((lsn, TimeLineId(tli)))
}

fn cstring(body: &mut Bytes, what: &str) -> Result<String, PgError> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| proto(format!("unterminated {what}")))?;
    let s = String::from_utf8(body[..end].to_vec())
        .map_err(|_| proto(format!("{what} is not UTF-8")))?;
    body.advance(end + 1);
    Ok(s)
}

/// pg_basebackup's check: a plain file name, nothing that could leave a directory.
fn valid_archive_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\\')
}

impl Decoder {
    /// A decoder expecting the first result set.
    pub fn new() -> Decoder {
        Decoder {
            phase: Phase::StartResult,
            position: None,
            tablespaces: Vec::new(),
            in_archive: false,
            in_manifest: false,
            archives: 0,
        }
    }

    /// Takes one event of the query's answer; returns what it means, if anything.
    pub fn feed(&mut self, ev: QueryEvent) -> Result<Option<BaseBackupEvent>, PgError> {
        match (self.phase, ev) {
            (
                Phase::StartResult | Phase::TablespaceResult | Phase::EndResult,
                QueryEvent::RowDescription(_),
            ) => Ok(None),
            (Phase::StartResult | Phase::EndResult, QueryEvent::Row(row)) => {
                self.position = Some(position_row(&row.values)?);
                Ok(None)
            }
            (Phase::StartResult, QueryEvent::CommandComplete(_)) => {
                let (lsn, timeline) = self
                    .position
                    .take()
                    .ok_or_else(|| proto("no start position"))?;
                self.phase = Phase::TablespaceResult;
                Ok(Some(BaseBackupEvent::Start { lsn, timeline }))
            }
            (Phase::TablespaceResult, QueryEvent::Row(row)) => {
                let v = |i: usize| row.values.get(i).and_then(|v| v.as_deref());
                let oid = v(0)
                    .map(|s| {
                        s.parse::<u32>()
                            .map_err(|_| proto(format!("invalid tablespace oid '{s}'")))
                    })
                    .transpose()?;
                let size_kb = v(2).and_then(|s| s.parse::<u64>().ok());
                self.tablespaces.push(TablespaceRow {
                    oid,
                    location: v(1).map(str::to_string),
                    size_kb,
                });
                Ok(None)
            }
            (Phase::TablespaceResult, QueryEvent::CommandComplete(_)) => {
                self.phase = Phase::BeforeCopy;
                Ok(Some(BaseBackupEvent::Tablespaces(std::mem::take(
                    &mut self.tablespaces,
                ))))
            }
            (Phase::BeforeCopy, QueryEvent::CopyOut) => {
                self.phase = Phase::Copy;
                Ok(None)
            }
            (Phase::Copy, QueryEvent::CopyData(data)) => self.copy_data(data),
            (Phase::Copy, QueryEvent::CopyDone) => {
                if !self.in_manifest {
                    return Err(proto("the stream ended without a backup manifest"));
                }
                self.phase = Phase::EndResult;
                Ok(None)
            }
            (Phase::EndResult, QueryEvent::CommandComplete(_)) => {
                let (lsn, timeline) = self
                    .position
                    .take()
                    .ok_or_else(|| proto("no end position"))?;
                self.phase = Phase::Finished;
                Ok(Some(BaseBackupEvent::End { lsn, timeline }))
            }
            // The command's own completion tag.
            (Phase::Finished, QueryEvent::CommandComplete(_)) => Ok(None),
            (phase, ev) => Err(proto(format!(
                "unexpected {} while expecting {}",
                event_name(&ev),
                match phase {
                    Phase::StartResult => "the start position",
                    Phase::TablespaceResult => "the tablespace list",
                    Phase::BeforeCopy => "the COPY stream",
                    Phase::Copy => "COPY data",
                    Phase::EndResult => "the end position",
                    Phase::Finished => "the end of the answer",
                }
            ))),
        }
    }

    fn copy_data(&mut self, mut data: Bytes) -> Result<Option<BaseBackupEvent>, PgError> {
        if data.is_empty() {
            return Err(proto("empty CopyData message"));
        }
        let kind = data[0];
        data.advance(1);
        match kind {
            b'n' => {
                if self.in_manifest {
                    return Err(proto("archives must precede the manifest"));
                }
                let name = cstring(&mut data, "archive name")?;
                let location = cstring(&mut data, "tablespace location")?;
                if !valid_archive_name(&name) {
                    return Err(proto(format!(
                        "invalid archive name \"{}\"",
                        name.escape_debug()
                    )));
                }
                self.in_archive = true;
                self.archives += 1;
                Ok(Some(BaseBackupEvent::Archive { name, location }))
            }
            b'd' if self.in_manifest => Ok(Some(BaseBackupEvent::ManifestData(data))),
            b'd' if self.in_archive => Ok(Some(BaseBackupEvent::Data(data))),
            b'd' => Err(proto("data before any archive")),
            b'p' => {
                if data.len() != 8 {
                    return Err(proto("malformed progress message"));
                }
                Ok(Some(
                    BaseBackupEvent::Progress(data.get_i64().max(0) as u64),
                ))
            }
            b'm' => {
                if self.in_manifest {
                    return Err(proto("a second manifest"));
                }
                self.in_archive = false;
                self.in_manifest = true;
                Ok(Some(BaseBackupEvent::ManifestStart))
            }
            other => Err(proto(format!(
                "unknown CopyData message type '{}'",
                char::from(other).escape_debug()
            ))),
        }
    }

    /// Checks that the answer was complete once the server is ready again.
    pub fn finish(&self) -> Result<(), PgError> {
        if self.phase == Phase::Finished {
            Ok(())
        } else {
            Err(proto("the answer ended early"))
        }
    }
}

fn event_name(ev: &QueryEvent) -> &'static str {
    match ev {
        QueryEvent::RowDescription(_) => "a result set",
        QueryEvent::Row(_) => "a row",
        QueryEvent::CommandComplete(_) => "a command completion",
        QueryEvent::CopyOut => "a COPY stream",
        QueryEvent::CopyData(_) => "COPY data",
        QueryEvent::CopyDone => "the end of COPY data",
    }
}

/// A running `BASE_BACKUP` on a replication connection.
pub struct BaseBackupStream<'a> {
    inner: QueryStream<'a>,
    decoder: Decoder,
}

impl<'a> BaseBackupStream<'a> {
    /// Sends `BASE_BACKUP` on a replication connection to a PostgreSQL 15+ server.
    pub async fn start(
        conn: &'a mut Connection,
        opts: &BaseBackupOptions,
    ) -> Result<BaseBackupStream<'a>, PgError> {
        let inner = conn.query_stream(&opts.command()).await?;
        Ok(BaseBackupStream {
            inner,
            decoder: Decoder::new(),
        })
    }

    /// Whether the next message is already received: the caller may gather more
    /// data before handing it on.
    pub fn has_buffered(&self) -> bool {
        self.inner.has_buffered()
    }

    /// The next event; `None` once the answer is complete. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<BaseBackupEvent>, PgError> {
        loop {
            match self.inner.next_event().await? {
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
                Some(ev) => {
                    if let Some(out) = self.decoder.feed(ev)? {
                        return Ok(Some(out));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::Row;
    use std::sync::Arc;

    fn row(vals: &[Option<&str>]) -> QueryEvent {
        QueryEvent::Row(Row {
            columns: Arc::new(vec![]),
            values: vals.iter().map(|v| v.map(str::to_string)).collect(),
        })
    }

    fn data(kind: u8, payload: &[u8]) -> QueryEvent {
        let mut v = vec![kind];
        v.extend_from_slice(payload);
        QueryEvent::CopyData(Bytes::from(v))
    }

    #[test]
    fn command_uses_pg15_syntax() {
        let o = BaseBackupOptions {
            label: "pgbk it's".into(),
            fast_checkpoint: true,
            max_rate: Some(max_rate_for(1)),
            progress: true,
            incremental: false,
        };
        assert_eq!(
            o.command(),
            "BASE_BACKUP (LABEL 'pgbk it''s', PROGRESS, CHECKPOINT 'fast', WAL false, WAIT false, \
             MANIFEST 'yes', TARGET 'client', MAX_RATE 32)"
        );
        let inc = BaseBackupOptions {
            incremental: true,
            max_rate: None,
            ..o
        };
        assert!(inc.command().ends_with("TARGET 'client', INCREMENTAL)"));
        assert_eq!(max_rate_for(10_000_000), 1_048_576);
        assert_eq!(max_rate_for(1024), 1024);
    }

    #[test]
    fn decodes_the_verified_pg15_sequence() {
        let mut d = Decoder::new();
        let cols = QueryEvent::RowDescription(Arc::new(vec![]));
        let mut out = Vec::new();
        let evs = vec![
            cols.clone(),
            row(&[Some("0/2000028"), Some("1")]),
            QueryEvent::CommandComplete("SELECT".into()),
            cols.clone(),
            row(&[Some("16385"), Some("/ts"), Some("10")]),
            row(&[None, None, Some("20")]),
            QueryEvent::CommandComplete("SELECT".into()),
            QueryEvent::CopyOut,
            data(b'n', b"16385.tar\0/ts\0"),
            data(b'd', b"tar bytes"),
            data(b'p', &42i64.to_be_bytes()),
            data(b'n', b"base.tar\0\0"),
            data(b'd', b"more"),
            data(b'm', b""),
            data(b'd', b"{manifest}"),
            QueryEvent::CopyDone,
            cols,
            row(&[Some("0/2000100"), Some("1")]),
            QueryEvent::CommandComplete("SELECT".into()),
            QueryEvent::CommandComplete("BASE_BACKUP".into()),
        ];
        for e in evs {
            if let Some(x) = d.feed(e).unwrap() {
                out.push(x);
            }
        }
        d.finish().unwrap();
        assert_eq!(
            out[0],
            BaseBackupEvent::Start {
                lsn: Lsn(0x2000028),
                timeline: TimeLineId(1)
            }
        );
        assert!(
            matches!(&out[1], BaseBackupEvent::Tablespaces(t) if t.len() == 2 && t[0].oid == Some(16385) && t[1].oid.is_none())
        );
        assert_eq!(
            out[2],
            BaseBackupEvent::Archive {
                name: "16385.tar".into(),
                location: "/ts".into()
            }
        );
        assert_eq!(out[4], BaseBackupEvent::Progress(42));
        assert_eq!(out[7], BaseBackupEvent::ManifestStart);
        assert_eq!(
            out[8],
            BaseBackupEvent::ManifestData(Bytes::from_static(b"{manifest}"))
        );
        assert_eq!(
            out[9],
            BaseBackupEvent::End {
                lsn: Lsn(0x2000100),
                timeline: TimeLineId(1)
            }
        );
    }

    #[test]
    fn refuses_what_pg_basebackup_refuses() {
        let mut d = Decoder::new();
        d.phase = Phase::Copy;
        assert!(d.feed(data(b'd', b"x")).is_err(), "data before an archive");
        assert!(d.feed(data(b'n', b"../x.tar\0\0")).is_err());
        assert!(d.feed(data(b'n', b".x.tar\0\0")).is_err());
        assert!(d.feed(data(b'n', b"base.tar")).is_err(), "unterminated");
        d.feed(data(b'm', b"")).unwrap();
        assert!(
            d.feed(data(b'n', b"base.tar\0\0")).is_err(),
            "archive after manifest"
        );
        assert!(d.feed(data(b'x', b"")).is_err());
        let d = Decoder::new();
        assert!(d.finish().is_err());
    }
}
