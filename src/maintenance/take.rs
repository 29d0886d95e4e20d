//! `backup` owns the repository: under its lock it first brings the server's
//! backups up to date (a killed backup becomes `FAILED`, an interrupted delete is
//! finished), then takes the new one.

use super::reconcile::refresh;
use crate::backup::take::{hold_repository, take_held, BackupRequest, Outcome, TakeError};
use crate::progress::Progress;
use std::sync::Arc;
use tokio::sync::watch;

/// Takes a backup of one server: lock, bring statuses up to date, then BASE_BACKUP
/// (or rsync). `stop` turning true (SIGINT/SIGTERM) interrupts it.
pub async fn take_backup(
    req: &BackupRequest,
    progress: Arc<dyn Progress>,
    stop: watch::Receiver<bool>,
) -> Result<Outcome, TakeError> {
    let held = hold_repository(req)?;
    let existing = refresh(&held.repo, &held.catalog)?;
    take_held(req, held, existing, progress, stop).await
}
