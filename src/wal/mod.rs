//! WAL: positions and names, segment headers, timeline history, the receiver.

pub mod lsn;

pub use lsn::{Lsn, SystemId, TimeLineId};
