//! WAL: positions and names, segment headers, timeline history, the archive and the
//! receiver (`receive-wal`).

pub mod archive;
pub mod block_refs;
pub mod continuity;
pub mod header;
pub mod history;
pub mod incoming;
pub mod put;
pub mod put_ahead;
pub mod receiver;
pub mod receiver_state;
pub mod stored;

pub use crate::types::{history_file_name, Lsn, SystemId, TimeLineId, WalFileName, WalSegment};
pub use crate::types::{lsn, segment};
