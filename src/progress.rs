//! Progress of long jobs: a small trait the library reports to, never drawing
//! itself. The command layer chooses how it shows (`commands::progress`: a bar on a
//! terminal, log lines elsewhere); [`NoProgress`] shows nothing.

/// Where a long job reports how far it got. Calls come from any thread.
pub trait Progress: Send + Sync {
    /// A phase starts: what it does, and how many bytes it will handle if known.
    fn start(&self, what: &str, total: Option<u64>);
    /// Bytes done so far in the current phase.
    fn set(&self, done: u64);
    /// The estimate of the total changed (or became known).
    fn set_total(&self, _total: u64) {}
    /// The current phase ended.
    fn finish(&self);
}

/// Reports nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn set(&self, _done: u64) {}
    fn finish(&self) {}
}
