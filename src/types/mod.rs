//! The vocabulary every layer shares: PostgreSQL's WAL positions (`Lsn`), timeline
//! and system identifiers, WAL file names (segments, partials, `.history`), and the
//! retention policy grammar. It sits below `pg`, `repo`, `catalog`, `config` and
//! `wal`, which all speak it; `wal` re-exports its WAL part, so `wal::Lsn` and
//! `types::Lsn` are the same type.

pub mod lsn;
pub mod retention_policy;
pub mod segment;

pub use lsn::{Lsn, SystemId, TimeLineId};
pub use segment::{history_file_name, WalFileName, WalSegment};
