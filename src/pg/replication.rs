//! Replication commands (on a `replication=true` connection) and the physical
//! replication stream (COPY BOTH).
//!
//! `START_REPLICATION` has two possible answers (PG-PROTOCOL.md §1.2): a
//! CopyBothResponse (`W`) and then the stream, or — when the start point is exactly
//! the end of the requested timeline — no stream at all but a `(next_tli,
//! next_tli_startpos)` result set. Both are handled from the start.

use bytes::Bytes;
use postgres_protocol::escape::escape_identifier;
use postgres_protocol::message::frontend;

use super::connection::{Connection, CopyState, State};
use super::message;
use super::PgError;
use crate::types::{Lsn, SystemId, TimeLineId};

/// Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
pub const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The cluster's system identifier.
    pub system_id: SystemId,
    /// The server's current timeline.
    pub timeline: TimeLineId,
    /// The current WAL flush location.
    pub xlogpos: Lsn,
    /// The database connected to (`None` on physical replication connections).
    pub dbname: Option<String>,
}

/// The answer to `TIMELINE_HISTORY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistoryFile {
    /// The file name, `%08X.history` (checked against the timeline asked for).
    pub filename: String,
    /// The file's bytes, as the server has them.
    pub content: Vec<u8>,
}

/// What `READ_REPLICATION_SLOT` says about an existing slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// The oldest WAL location the slot still needs (`None` if it never reserved WAL).
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_tli: Option<TimeLineId>,
}

/// The two possible answers to `START_REPLICATION`.
#[derive(Debug)]
pub enum StartReplication<'a> {
    /// The server streams WAL.
    Streaming(ReplicationStream<'a>),
    /// The start point is exactly where the requested timeline ends: no stream;
    /// continue on `next_tli` from `next_start`. The connection is ready again.
    TimelineEnded {
        /// The timeline that follows.
        next_tli: TimeLineId,
        /// Where the requested timeline ended and `next_tli` begins.
        next_start: Lsn,
    },
}

/// One message of a physical replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL bytes (`w`).
    XLogData {
        /// The WAL location of the first byte of `data`.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock, microseconds since 2000-01-01.
        send_time: i64,
        /// The WAL bytes.
        data: Bytes,
    },
    /// A keepalive (`k`).
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock, microseconds since 2000-01-01.
        send_time: i64,
        /// The server asks for a status update now (to avoid a timeout disconnect).
        reply_requested: bool,
    },
    /// The server ended the timeline: CopyDone, then the `(next_tli,
    /// next_tli_startpos)` result set and CommandCompletes, then ReadyForQuery. The
    /// stream has already answered CopyDone; the connection is usable again.
    EndOfTimeline {
        /// The timeline that follows.
        next_tli: TimeLineId,
        /// Where the streamed timeline ended and `next_tli` begins.
        next_start: Lsn,
    },
    /// The server ended the stream without a next timeline (a controlled shutdown):
    /// reconnect. The connection is not usable any more.
    ServerShutdown,
}

/// Quotes a replication identifier (slot name).
fn quote_ident(name: &str) -> Result<String, PgError> {
    if name.is_empty() || name.contains('\0') {
        return Err(PgError::InvalidArgument(format!(
            "invalid identifier \"{}\"",
            name.escape_debug()
        )));
    }
    Ok(escape_identifier(name))
}

/// Now, in microseconds since 2000-01-01 (PostgreSQL's `TimestampTz`).
pub fn pg_now_micros() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    since_unix - PG_EPOCH_OFFSET_SECS * 1_000_000
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Decodes a CopyData payload of the physical replication stream.
pub(crate) fn parse_copy_data(body: Bytes) -> Result<ReplicationMessage, PgError> {
    match body.first() {
        Some(b'w') if body.len() >= 25 => Ok(ReplicationMessage::XLogData {
            wal_start: Lsn(be_i64(&body, 1) as u64),
            wal_end: Lsn(be_i64(&body, 9) as u64),
            send_time: be_i64(&body, 17),
            data: body.slice(25..),
        }),
        Some(b'k') if body.len() >= 18 => Ok(ReplicationMessage::Keepalive {
            wal_end: Lsn(be_i64(&body, 1) as u64),
            send_time: be_i64(&body, 9),
            reply_requested: body[17] != 0,
        }),
        Some(b'w') | Some(b'k') => Err(PgError::Protocol(format!(
            "truncated replication message '{}' ({} bytes)",
            char::from(body[0]),
            body.len()
        ))),
        Some(t) => Err(PgError::Protocol(format!(
            "unknown replication message type {t:#04x}"
        ))),
        None => Err(PgError::Protocol("empty CopyData message".to_string())),
    }
}

/// The `(next_tli, next_tli_startpos)` row that ends a timeline.
fn parse_next_timeline(row: &[Option<Bytes>]) -> Result<(TimeLineId, Lsn), PgError> {
    let text = |i: usize| {
        row.get(i)
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let (tli, pos) = match (text(0), text(1)) {
        (Some(t), Some(p)) if row.len() == 2 => (t, p),
        _ => {
            return Err(PgError::Protocol(format!(
                "unexpected end-of-timeline result with {} columns",
                row.len()
            )))
        }
    };
    let tli = tli
        .parse::<TimeLineId>()
        .map_err(|e| PgError::Protocol(format!("end of timeline: {e}")))?;
    let pos = pos
        .parse::<Lsn>()
        .map_err(|e| PgError::Protocol(format!("end of timeline: {e}")))?;
    Ok((tli, pos))
}

/// A column of the first row, parsed.
fn first_row_field<T: std::str::FromStr>(
    rows: &[super::Row],
    column: &str,
    command: &str,
) -> Result<Option<T>, PgError>
where
    T::Err: std::fmt::Display,
{
    let row = rows
        .first()
        .ok_or_else(|| PgError::Protocol(format!("{command} returned no row")))?;
    if !row.columns.iter().any(|c| c == column) {
        return Err(PgError::Protocol(format!(
            "{command} returned no column \"{column}\""
        )));
    }
    row.get(column)
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| PgError::Protocol(format!("{command}: column \"{column}\": {e}")))
        })
        .transpose()
}

impl Connection {
    /// `IDENTIFY_SYSTEM`: system identifier, timeline and current WAL position.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, PgError> {
        const CMD: &str = "IDENTIFY_SYSTEM";
        let rows = self.simple_query(CMD).await?;
        let missing = |c: &str| PgError::Protocol(format!("{CMD}: column \"{c}\" is NULL"));
        Ok(IdentifySystem {
            system_id: first_row_field(&rows, "systemid", CMD)?
                .ok_or_else(|| missing("systemid"))?,
            timeline: first_row_field(&rows, "timeline", CMD)?
                .ok_or_else(|| missing("timeline"))?,
            xlogpos: first_row_field(&rows, "xlogpos", CMD)?.ok_or_else(|| missing("xlogpos"))?,
            dbname: first_row_field(&rows, "dbname", CMD)?,
        })
    }

    /// `SHOW setting`: the setting's value as the server prints it.
    pub async fn show(&mut self, setting: &str) -> Result<String, PgError> {
        if setting.is_empty()
            || !setting
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(PgError::InvalidArgument(format!(
                "invalid setting name \"{}\"",
                setting.escape_debug()
            )));
        }
        let rows = self.simple_query(&format!("SHOW {setting}")).await?;
        rows.first()
            .and_then(|r| r.get_idx(0))
            .map(str::to_string)
            .ok_or_else(|| PgError::Protocol(format!("SHOW {setting} returned no value")))
    }

    /// `SHOW wal_segment_size` in bytes ("16MB" → 16777216).
    pub async fn wal_segment_size(&mut self) -> Result<u64, PgError> {
        let v = self.show("wal_segment_size").await?;
        message::parse_size(&v)
            .filter(|n| *n > 0)
            .ok_or_else(|| PgError::Protocol(format!("invalid wal_segment_size \"{v}\"")))
    }

    /// `TIMELINE_HISTORY tli`: the `.history` file of a timeline (> 1). The server
    /// answers 58P01 for a timeline without a history file.
    pub async fn timeline_history(
        &mut self,
        tli: TimeLineId,
    ) -> Result<TimelineHistoryFile, PgError> {
        let rows = self
            .simple_query_raw(&format!("TIMELINE_HISTORY {}", tli.0))
            .await?;
        let (_, values) = rows
            .into_iter()
            .next()
            .ok_or_else(|| PgError::Protocol("TIMELINE_HISTORY returned no row".to_string()))?;
        let (Some(Some(name)), Some(Some(content))) = (values.first(), values.get(1)) else {
            return Err(PgError::Protocol(
                "TIMELINE_HISTORY returned an unexpected row".to_string(),
            ));
        };
        let filename = String::from_utf8_lossy(name).into_owned();
        let expected = crate::types::history_file_name(tli);
        if filename != expected {
            return Err(PgError::Protocol(format!(
                "server sent history file \"{}\" for timeline {tli}, expected \"{expected}\"",
                filename.escape_debug()
            )));
        }
        Ok(TimelineHistoryFile {
            filename,
            content: content.to_vec(),
        })
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL`, reserving WAL at once when asked.
    /// An existing slot gives [`PgError::Server`] with code `42710`.
    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        reserve_wal: bool,
    ) -> Result<(), PgError> {
        let ident = quote_ident(name)?;
        let sql = match (
            reserve_wal,
            self.server_version_num().unwrap_or(0) >= 150000,
        ) {
            (false, _) => format!("CREATE_REPLICATION_SLOT {ident} PHYSICAL"),
            (true, true) => format!("CREATE_REPLICATION_SLOT {ident} PHYSICAL (RESERVE_WAL)"),
            (true, false) => format!("CREATE_REPLICATION_SLOT {ident} PHYSICAL RESERVE_WAL"),
        };
        self.simple_query(&sql).await.map(|_| ())
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]` (`WAIT`: wait for an active slot to be
    /// released instead of failing).
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), PgError> {
        let mut sql = format!("DROP_REPLICATION_SLOT {}", quote_ident(name)?);
        if wait {
            sql.push_str(" WAIT");
        }
        self.simple_query(&sql).await.map(|_| ())
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+): `None` when the slot does not exist.
    pub async fn read_replication_slot(&mut self, name: &str) -> Result<Option<SlotInfo>, PgError> {
        const CMD: &str = "READ_REPLICATION_SLOT";
        let rows = self
            .simple_query(&format!("{CMD} {}", quote_ident(name)?))
            .await?;
        let slot_type: Option<String> = first_row_field(&rows, "slot_type", CMD)?;
        if slot_type.is_none() {
            return Ok(None);
        }
        Ok(Some(SlotInfo {
            restart_lsn: first_row_field(&rows, "restart_lsn", CMD)?,
            restart_tli: first_row_field(&rows, "restart_tli", CMD)?,
        }))
    }

    /// `START_REPLICATION [SLOT s] PHYSICAL start TIMELINE tli`.
    pub async fn start_physical_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimeLineId,
    ) -> Result<StartReplication<'_>, PgError> {
        let mut sql = String::from("START_REPLICATION ");
        if let Some(s) = slot {
            sql.push_str(&format!("SLOT {} ", quote_ident(s)?));
        }
        sql.push_str(&format!("PHYSICAL {start} TIMELINE {}", tli.0));
        self.send_query(&sql).await?;
        let mut next = None;
        let mut error = None;
        loop {
            let f = self.recv().await?;
            match f.tag {
                b'W' => {
                    self.state = State::Copy(CopyState::default());
                    return Ok(StartReplication::Streaming(ReplicationStream {
                        conn: self,
                    }));
                }
                b'T' | b'C' => {}
                b'D' => {
                    let row = self.check(message::data_row(&f.body))?;
                    next = Some(self.check(parse_next_timeline(&row))?);
                }
                b'E' => {
                    error.get_or_insert_with(|| message::error_response(&f.body));
                }
                b'Z' => {
                    self.state = State::Idle;
                    if let Some(e) = error {
                        return Err(e);
                    }
                    return match next {
                        Some((next_tli, next_start)) => Ok(StartReplication::TimelineEnded {
                            next_tli,
                            next_start,
                        }),
                        None => Err(PgError::Protocol(
                            "START_REPLICATION returned neither a stream nor a next timeline"
                                .to_string(),
                        )),
                    };
                }
                t => {
                    return Err(self.protocol(format!(
                        "unexpected message '{}' after START_REPLICATION",
                        char::from(t)
                    )))
                }
            }
        }
    }
}

/// A running physical replication stream; borrows its connection until it ends.
///
/// Dropping it without [`ReplicationStream::stop`] is safe: the next command on the
/// connection ends the COPY first.
#[derive(Debug)]
pub struct ReplicationStream<'a> {
    conn: &'a mut Connection,
}

impl ReplicationStream<'_> {
    /// The next message of the stream. Cancel-safe: a `tokio::select!` may drop it
    /// at any await point without losing or duplicating a message.
    pub async fn next_message(&mut self) -> Result<ReplicationMessage, PgError> {
        // Bytes of an interrupted send_status or CopyDone go out first.
        self.conn.flush().await?;
        loop {
            let (send_copy_done, server_done) = match &mut self.conn.state {
                State::Copy(cs) => {
                    let send = cs.server_done && !cs.client_done;
                    if send {
                        cs.client_done = true;
                    }
                    (send, cs.server_done)
                }
                _ => {
                    return Err(PgError::Protocol(
                        "the replication stream has already ended".to_string(),
                    ))
                }
            };
            if send_copy_done {
                frontend::copy_done(self.conn.wbuf());
                self.conn.flush().await?;
                continue;
            }
            let f = match self.conn.recv().await {
                Ok(f) => f,
                // After the server's CopyDone, a vanishing server is a shutdown.
                Err(PgError::Closed) if server_done => {
                    return Ok(ReplicationMessage::ServerShutdown)
                }
                Err(e) => return Err(e),
            };
            if let Some(m) = self.handle(f)? {
                return Ok(m);
            }
        }
    }

    /// A message already complete in the read buffer, without any I/O: lets the
    /// caller write a batch of WAL before one fsync. `None` when the next message
    /// is not fully received, or is not WAL data or a keepalive (the end of the
    /// stream is left to [`ReplicationStream::next_message`]).
    pub fn try_next_buffered(&mut self) -> Result<Option<ReplicationMessage>, PgError> {
        match &self.conn.state {
            State::Copy(cs) if !cs.server_done => {}
            _ => return Ok(None),
        }
        match self.conn.try_recv(|t| t == b'd')? {
            Some(f) => {
                let m = parse_copy_data(f.body);
                self.conn.check(m).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Sends a standby status update (`r`): the positions written, flushed
    /// (reported only when a slot makes it meaningful; pass `Lsn::INVALID`
    /// otherwise) and applied, with `reply_now` asking for an immediate keepalive.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_now: bool,
    ) -> Result<(), PgError> {
        match &self.conn.state {
            State::Copy(cs) if !cs.client_done => {}
            // We already ended our side of the COPY: nothing more to report.
            State::Copy(_) => return Ok(()),
            _ => {
                return Err(PgError::Protocol(
                    "the replication stream has already ended".to_string(),
                ))
            }
        }
        let mut p = [0u8; 34];
        p[0] = b'r';
        p[1..9].copy_from_slice(&write.0.to_be_bytes());
        p[9..17].copy_from_slice(&flush.0.to_be_bytes());
        p[17..25].copy_from_slice(&apply.0.to_be_bytes());
        p[25..33].copy_from_slice(&pg_now_micros().to_be_bytes());
        p[33] = u8::from(reply_now);
        self.conn.queue_copy_data(&p);
        self.conn.flush().await
    }

    /// Ends the stream from the client side: CopyDone, then reads (and ignores) the
    /// rest of the stream and any end-of-timeline result up to ReadyForQuery. The
    /// connection is usable again afterwards.
    pub async fn stop(self) -> Result<(), PgError> {
        match self.conn.state {
            State::Copy(_) | State::Busy => self.conn.drain_to_ready().await,
            State::Idle | State::Broken(_) => Ok(()),
        }
    }

    fn handle(&mut self, f: message::Frame) -> Result<Option<ReplicationMessage>, PgError> {
        let server_done = matches!(&self.conn.state, State::Copy(cs) if cs.server_done);
        match f.tag {
            b'd' if !server_done => {
                let m = parse_copy_data(f.body);
                self.conn.check(m).map(Some)
            }
            b'c' if !server_done => {
                if let State::Copy(cs) = &mut self.conn.state {
                    cs.server_done = true;
                }
                Ok(None)
            }
            b'T' | b'C' if server_done => Ok(None),
            b'D' if server_done => {
                let row = message::data_row(&f.body);
                let row = self.conn.check(row)?;
                let next = parse_next_timeline(&row);
                let next = self.conn.check(next)?;
                if let State::Copy(cs) = &mut self.conn.state {
                    cs.next_timeline = Some(next);
                }
                Ok(None)
            }
            b'C' => {
                // CommandComplete without CopyDone: the walsender finished streaming
                // because the server shuts down, and exits.
                self.conn.state =
                    State::Broken("the server ended the replication stream".to_string());
                Ok(Some(ReplicationMessage::ServerShutdown))
            }
            b'Z' if server_done => {
                let next = match &mut self.conn.state {
                    State::Copy(cs) => cs.next_timeline.take(),
                    _ => None,
                };
                self.conn.state = State::Idle;
                Ok(Some(match next {
                    Some((next_tli, next_start)) => ReplicationMessage::EndOfTimeline {
                        next_tli,
                        next_start,
                    },
                    None => ReplicationMessage::ServerShutdown,
                }))
            }
            b'E' => {
                // The COPY is over; the server follows up with ReadyForQuery, which
                // the next command drains.
                self.conn.state = State::Busy;
                Err(message::error_response(&f.body))
            }
            t => Err(self.conn.protocol(format!(
                "unexpected message '{}' in the replication stream",
                char::from(t)
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
