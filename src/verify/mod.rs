//! Health of servers and of the repository: the facts `status` shows and the items
//! `check` judges.

pub mod backup_check;
pub mod item;
pub mod peer_check;
pub mod peer_probe;
pub mod probe;
pub mod rto;
pub mod server_check;
pub mod ssh_check;
pub mod ssh_probe;
pub mod standbys;
pub mod wal_archive;
