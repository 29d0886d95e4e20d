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
        std::fs::read_to_string(repo.history_path(target))
            .ok()
            .and_then(|t| parse_history(&t).ok())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let first = begin.segno(seg);
    let last = end.prev_segno(seg).max(first);
    segments_between(&history, target, first, last, seg)
}

/// The required segments that the catalog does not list as archived, or whose file
/// is gone.
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
    Ok(need
        .into_iter()
        .filter(|s| !have.contains(&s.name()) || !repo.segment_path(s).exists())
        .collect())
}
