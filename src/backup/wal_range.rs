//! The WAL a backup needs: every segment from `begin_wal` to `end_wal`, following the
//! history of the timeline the backup ended on.

use super::BackupInfo;
use crate::catalog::{Catalog, CatalogError, WalKind};
use crate::repo::ServerRepo;
use crate::wal::continuity::required_segments as segments_between;
use crate::wal::history::parse_history;
use crate::wal::WalSegment;
use std::collections::HashSet;

/// The segments recovery from this backup must replay to reach consistency.
pub fn required_segments(info: &BackupInfo, repo: &ServerRepo) -> Vec<WalSegment> {
    let (Some(begin), Some(end)) = (info.begin_lsn, info.end_lsn) else {
        return Vec::new();
    };
    let seg = info.wal_segment_size;
    let target = info.end_timeline.unwrap_or(info.timeline);
    let history = if target.0 > 1 {
        repo.read_history(target)
            .ok()
            .flatten()
            .and_then(|t| parse_history(&t).ok())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let first = begin.segno(seg);
    let last = end.prev_segno(seg).max(first);
    segments_between(&history, target, first, last, seg)
}

/// The required segments that the catalog does not list as archived, or whose
/// object is gone. On object storage the objects are asked for only once the
/// catalog lists them all (one request each), not on every poll of a wait.
pub fn missing_segments(
    info: &BackupInfo,
    repo: &ServerRepo,
    catalog: &Catalog,
) -> Result<Vec<WalSegment>, CatalogError> {
    let need = required_segments(info, repo);
    if need.is_empty() {
        return Ok(need);
    }
    let have: HashSet<String> = catalog
        .wal_files(&info.server)?
        .into_iter()
        .filter(|w| w.kind == WalKind::Segment)
        .map(|w| w.name)
        .collect();
    let remote = repo.repository().is_remote();
    let not_listed: Vec<WalSegment> = need
        .iter()
        .filter(|s| !have.contains(&s.name()))
        .copied()
        .collect();
    if remote && !not_listed.is_empty() {
        return Ok(not_listed);
    }
    Ok(need
        .into_iter()
        .filter(|s| {
            if !have.contains(&s.name()) {
                return true;
            }
            if !remote {
                return !repo.segment_path(s).exists();
            }
            match repo.store().stat(&repo.segment_key(s)) {
                Ok(meta) => meta.is_none(),
                Err(e) => {
                    tracing::warn!(segment = %s.name(), "cannot check the archive: {e}");
                    true
                }
            }
        })
        .collect())
}
