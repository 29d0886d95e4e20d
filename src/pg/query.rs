//! Streamed simple queries: every message of a query's answer as an event, for
//! commands whose answer is too large to collect or mixes result sets and COPY data
//! (`BASE_BACKUP`).

use std::sync::Arc;

use bytes::Bytes;
use postgres_protocol::message::frontend;

use super::connection::{Connection, CopyState, Row, State};
use super::message;
use super::PgError;

/// One step of a streamed query's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryEvent {
    /// A result set starts: its column names.
    RowDescription(Arc<Vec<String>>),
    /// A row of the current result set (text format).
    Row(Row),
    /// A command or result set completed: the command tag (`SELECT 1`, `BASE_BACKUP`).
    CommandComplete(String),
    /// The server starts sending COPY data (CopyOutResponse).
    CopyOut,
    /// A chunk of COPY data, as the server framed it.
    CopyData(Bytes),
    /// The end of the COPY data.
    CopyDone,
}

/// The answer to one simple query, read message by message.
///
/// Dropping it before the end is safe but the next command on the connection
/// first reads (and discards) the rest of the answer; for a large COPY, close the
/// connection instead.
#[derive(Debug)]
pub struct QueryStream<'a> {
    conn: &'a mut Connection,
    columns: Arc<Vec<String>>,
    error: Option<PgError>,
    done: bool,
}

impl Connection {
    /// Sends one simple query and returns its answer as a stream of events.
    pub async fn query_stream(&mut self, sql: &str) -> Result<QueryStream<'_>, PgError> {
        self.send_query(sql).await?;
        Ok(QueryStream {
            conn: self,
            columns: Arc::new(Vec::new()),
            error: None,
            done: false,
        })
    }
}

impl QueryStream<'_> {
    /// Whether the next event is already received (no waiting for the network).
    pub fn has_buffered(&self) -> bool {
        !self.done && self.conn.has_complete_frame()
    }

    /// The next event; `None` once the server is ready for the next command. A
    /// server error is returned once the server is ready
    /// again, so the connection stays usable. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<Option<QueryEvent>, PgError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let f = match self.conn.recv().await {
                Ok(f) => f,
                // A server that reports an error and then hangs up (FATAL) said why:
                // that reason beats "connection closed".
                Err(e) => return Err(self.error.take().unwrap_or(e)),
            };
            let event = match f.tag {
                b'T' => {
                    let cols = message::row_description(&f.body);
                    self.columns = Arc::new(self.conn.check(cols)?);
                    QueryEvent::RowDescription(self.columns.clone())
                }
                b'D' => {
                    let values = message::data_row(&f.body);
                    let values = self.conn.check(values)?;
                    QueryEvent::Row(Row {
                        columns: self.columns.clone(),
                        values: values
                            .into_iter()
                            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                            .collect(),
                    })
                }
                b'C' => {
                    let tag = message::command_complete(&f.body);
                    QueryEvent::CommandComplete(self.conn.check(tag)?)
                }
                b'H' => QueryEvent::CopyOut,
                b'd' => QueryEvent::CopyData(f.body),
                b'c' => QueryEvent::CopyDone,
                b'I' | b'n' => continue,
                b'G' => {
                    frontend::copy_fail("COPY FROM STDIN is not supported here", self.conn.wbuf())?;
                    self.conn.flush().await?;
                    continue;
                }
                b'W' => {
                    self.conn.state = State::Copy(CopyState::default());
                    self.done = true;
                    return Err(PgError::Protocol(
                        "the query started a replication stream; use start_physical_replication"
                            .to_string(),
                    ));
                }
                b'E' => {
                    if self.error.is_none() {
                        self.error = Some(message::error_response(&f.body));
                    }
                    continue;
                }
                b'Z' => {
                    self.conn.state = State::Idle;
                    self.done = true;
                    return match self.error.take() {
                        Some(e) => Err(e),
                        None => Ok(None),
                    };
                }
                t => {
                    return Err(self.conn.protocol(format!(
                        "unexpected message '{}' in a query answer",
                        char::from(t)
                    )))
                }
            };
            return Ok(Some(event));
        }
    }
}
