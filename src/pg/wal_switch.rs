//! `pg_switch_wal()`: closes the server's current WAL segment (after a `CHECKPOINT`
//! when asked), and tells whether a segment was actually closed.

use super::{Connection, PgError};
use crate::types::Lsn;

/// What a WAL switch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSwitch {
    /// Whether the insert position moved to a new segment (the server switches only
    /// when the current segment holds WAL).
    pub switched: bool,
    /// The last closed segment (the one just closed when `switched`).
    pub wal_file: String,
}

/// A step of the switch failed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchWalError {
    /// The server refused a statement or the connection broke.
    #[error("{step}")]
    Query {
        /// The statement or function (`CHECKPOINT`, `pg_switch_wal()`...).
        step: &'static str,
        /// What the server or the client said.
        source: PgError,
    },
    /// The server answered something unexpected (no row, not a number or an LSN).
    #[error("unexpected answer to {step}: {answer:?}")]
    Answer {
        /// The query.
        step: &'static str,
        /// What came back (`None`: no row).
        answer: Option<String>,
    },
}

impl Connection {
    /// Closes the current WAL segment with `pg_switch_wal()`, after a `CHECKPOINT`
    /// when `checkpoint_first` (so an idle server has WAL to switch).
    pub async fn switch_wal(
        &mut self,
        checkpoint_first: bool,
    ) -> Result<WalSwitch, SwitchWalError> {
        let seg_size: u64 = self
            .one_value(
                "wal_segment_size",
                "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'",
            )
            .await
            .and_then(|v| parse("wal_segment_size", v))?;
        if checkpoint_first {
            self.simple_query("CHECKPOINT")
                .await
                .map_err(|source| SwitchWalError::Query {
                    step: "CHECKPOINT",
                    source,
                })?;
        }
        let before: Lsn = self.insert_lsn().await?;
        let wal_file = self
            .one_value(
                "pg_switch_wal()",
                "SELECT pg_walfile_name(l) FROM pg_switch_wal() AS l",
            )
            .await?;
        let after: Lsn = self.insert_lsn().await?;
        Ok(WalSwitch {
            switched: after.segno(seg_size) > before.segno(seg_size),
            wal_file,
        })
    }

    async fn insert_lsn(&mut self) -> Result<Lsn, SwitchWalError> {
        let step = "pg_current_wal_insert_lsn()";
        let v = self
            .one_value(step, "SELECT pg_current_wal_insert_lsn()")
            .await?;
        parse(step, v)
    }

    /// The first column of the first row of `sql`'s answer.
    async fn one_value(&mut self, step: &'static str, sql: &str) -> Result<String, SwitchWalError> {
        let rows = self
            .simple_query(sql)
            .await
            .map_err(|source| SwitchWalError::Query { step, source })?;
        rows.first()
            .and_then(|row| row.get_idx(0))
            .map(str::to_string)
            .ok_or(SwitchWalError::Answer { step, answer: None })
    }
}

fn parse<T: std::str::FromStr>(step: &'static str, v: String) -> Result<T, SwitchWalError> {
    v.parse().map_err(|_| SwitchWalError::Answer {
        step,
        answer: Some(v),
    })
}
