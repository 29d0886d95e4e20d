//! PostgreSQL's WAL vocabulary that every layer shares: positions (`Lsn`), timeline
//! and system identifiers, and WAL file names (segments, partials, `.history`). It
//! sits below `pg`, `repo`, `catalog` and `wal`, which all speak it; `wal`
//! re-exports it, so `wal::Lsn` and `types::Lsn` are the same type.

pub mod lsn;
pub mod segment;

pub use lsn::{Lsn, SystemId, TimeLineId};
pub use segment::{history_file_name, WalFileName, WalSegment};
