//! A command that reads COPY data from the client (CopyInResponse): PostgreSQL
//! 17's `UPLOAD_MANIFEST`, which takes the parent backup's `backup_manifest`
//! before an incremental `BASE_BACKUP` on the same connection.
//!
//! The data arrives in chunks from a channel, so a large manifest is never held in
//! memory whole; a chunk that cannot be read ends the COPY with CopyFail, and the
//! connection stays usable.

use bytes::Bytes;
use postgres_protocol::message::frontend;
use tokio::sync::mpsc;

use super::connection::{Connection, State};
use super::message;
use super::PgError;

/// Sends at most this much COPY data before flushing.
const FLUSH_BYTES: usize = 256 * 1024;

impl Connection {
    /// Runs `sql`, which must answer with CopyInResponse, and sends every chunk of
    /// `data` as COPY data, then CopyDone. Returns the command tag. A chunk that
    /// is an `Err` aborts the COPY (CopyFail with that text) and is returned as
    /// [`PgError::InvalidArgument`]; a server error is returned once the server is
    /// ready again.
    pub async fn copy_in(
        &mut self,
        sql: &str,
        mut data: mpsc::Receiver<Result<Bytes, String>>,
    ) -> Result<String, PgError> {
        self.send_query(sql).await?;
        let mut error = None;
        let mut tag = String::new();
        let mut local_failure = None;
        loop {
            let f = self.recv().await?;
            match f.tag {
                b'G' => {
                    let mut queued = 0usize;
                    loop {
                        match data.recv().await {
                            Some(Ok(chunk)) => {
                                queued += chunk.len();
                                self.queue_copy_data(&chunk);
                                if queued >= FLUSH_BYTES {
                                    self.flush().await?;
                                    queued = 0;
                                }
                            }
                            Some(Err(why)) => {
                                frontend::copy_fail(&why, self.wbuf()).map_err(|e| {
                                    PgError::InvalidArgument(format!("cannot send CopyFail: {e}"))
                                })?;
                                local_failure = Some(why);
                                break;
                            }
                            None => {
                                frontend::copy_done(self.wbuf());
                                break;
                            }
                        }
                    }
                    self.flush().await?;
                }
                b'C' => tag = self.check(message::command_complete(&f.body))?,
                b'E' => {
                    if error.is_none() {
                        error = Some(message::error_response(&f.body));
                    }
                }
                b'T' | b'D' | b'I' | b'n' => {}
                b'Z' => {
                    self.state = State::Idle;
                    if let Some(why) = local_failure {
                        return Err(PgError::InvalidArgument(why));
                    }
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(tag),
                    };
                }
                t => {
                    return Err(self.protocol(format!(
                        "unexpected message '{}' in the answer to a COPY FROM STDIN command",
                        char::from(t)
                    )))
                }
            }
        }
    }
}
