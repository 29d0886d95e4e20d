//! WAL: positions and names, segment headers, timeline history, the archive and the
//! receiver (`receive-wal`).

pub mod archive;
pub mod continuity;
pub mod header;
pub mod history;
pub mod incoming;
pub mod lsn;
pub mod put;
pub mod receiver;
pub mod receiver_state;
pub mod segment;

pub use lsn::{Lsn, SystemId, TimeLineId};
pub use segment::{history_file_name, WalFileName, WalSegment};
