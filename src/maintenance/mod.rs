//! Jobs that own a server's repository and bring it up to date: marking backups
//! whose process is gone FAILED, finishing interrupted deletes, rebuilding the
//! catalog from the repository, and cron's maintenance pass. Only the verbs that
//! own the repository (`backup`, `delete`, `cron`, `rebuild-catalog`) call into it;
//! reading verbs only report what it would do.

pub mod cron;
pub mod rebuild;
pub mod reconcile;
pub mod take;

pub use take::take_backup;
