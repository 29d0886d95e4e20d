//! The WAL a recovery replays: which timeline it follows, which archived segments it
//! needs (from the backup's start up to the target, or everything archived after the
//! backup), and copying them into `<destination>/pgbk_wal/` when PostgreSQL reads
//! them from there instead of calling `pgbk get-wal`.

use super::destination::Owner;
use super::target::{RecoveryTarget, TargetTimeline};
use super::{io_err, RestoreError};
use crate::backup::wal_range::required_segments;
use crate::backup::BackupInfo;
use crate::catalog::{Catalog, WalKind, WalRecord};
use crate::progress::Progress;
use crate::repo::ServerRepo;
use crate::wal::continuity::segment_timeline;
use crate::wal::history::{parse_history, HistoryEntry};
use crate::wal::{history_file_name, Lsn, TimeLineId, WalFileName, WalSegment};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The folder inside the destination that receives the WAL in copy mode.
pub const WAL_DIR: &str = "pgbk_wal";

/// What recovery will replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalPlan {
    /// The timeline recovery follows.
    pub timeline: TimeLineId,
    /// Segments in replay order, with the checksum the catalog recorded.
    pub segments: Vec<(WalSegment, String)>,
    /// Every archived timeline history file.
    pub histories: Vec<TimeLineId>,
}

/// The archived history files of a server, by timeline.
fn archived_histories(repo: &ServerRepo) -> Vec<TimeLineId> {
    let mut out: Vec<TimeLineId> = fs::read_dir(repo.wals_dir())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    match WalFileName::parse(&e.file_name().to_string_lossy(), 1 << 24) {
                        Some(WalFileName::History(t)) => Some(t),
                        _ => None,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn read_history(repo: &ServerRepo, tli: TimeLineId) -> Result<Vec<HistoryEntry>, RestoreError> {
    if tli.0 == 1 {
        return Ok(Vec::new());
    }
    let path = repo.history_path(tli);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    parse_history(&text).map_err(|e| RestoreError::Corrupt(format!("{}: {e}", path.display())))
}

/// Whether timeline `child` (with this history) continues `tli` past `lsn`.
fn descends(history: &[HistoryEntry], child: TimeLineId, tli: TimeLineId, lsn: Lsn) -> bool {
    child == tli
        || history
            .iter()
            .any(|h| h.parent == tli && h.switchpoint >= lsn)
}

/// The timeline a recovery from `info` follows.
pub fn choose_timeline(
    info: &BackupInfo,
    repo: &ServerRepo,
    wanted: Option<TargetTimeline>,
) -> Result<TimeLineId, RestoreError> {
    let backup_tli = info.end_timeline.unwrap_or(info.timeline);
    let end = info.end_lsn.unwrap_or_default();
    match wanted {
        Some(TargetTimeline::Current) => Ok(info.timeline),
        Some(TargetTimeline::Id(t)) => {
            if t == backup_tli || t == info.timeline {
                return Ok(t);
            }
            let history = match read_history(repo, t) {
                Ok(h) => h,
                Err(RestoreError::Io { .. }) => {
                    return Err(RestoreError::Refused(format!(
                        "target timeline {t} has no history file in the archive"
                    )))
                }
                Err(e) => return Err(e),
            };
            if descends(&history, t, backup_tli, end) {
                Ok(t)
            } else {
                Err(RestoreError::Refused(format!(
                    "target timeline {t} does not branch off the backup's timeline {backup_tli} after the backup's end ({end})"
                )))
            }
        }
        None | Some(TargetTimeline::Latest) => {
            for t in archived_histories(repo).into_iter().rev() {
                if t <= backup_tli {
                    break;
                }
                if let Ok(h) = read_history(repo, t) {
                    if descends(&h, t, backup_tli, end) {
                        return Ok(t);
                    }
                }
            }
            Ok(backup_tli)
        }
    }
}

/// Plans the WAL for a recovery: the segments the backup needs must all be archived
/// (else a refusal), then archived segments follow up to the target.
///
/// How far: to the segment after the one holding a target LSN; for a target time, to
/// the segment after the first one archived later than that time (a segment is always
/// archived after its records were written); for `immediate`, the backup's own
/// segments; otherwise (no target, xid, restore point) all archived WAL.
pub fn plan(
    info: &BackupInfo,
    repo: &ServerRepo,
    catalog: &Catalog,
    target: Option<&RecoveryTarget>,
    tli: Option<TargetTimeline>,
) -> Result<WalPlan, RestoreError> {
    let (Some(begin), Some(_)) = (info.begin_lsn, info.end_lsn) else {
        return Err(RestoreError::Corrupt(format!(
            "backup {}: backup.json has no begin or end LSN",
            info.backup_id
        )));
    };
    let seg_size = info.wal_segment_size;
    let timeline = choose_timeline(info, repo, tli)?;
    let history = read_history(repo, timeline)?;
    let archived: HashMap<String, WalRecord> = catalog
        .wal_files(&info.server)?
        .into_iter()
        .filter(|w| w.kind == WalKind::Segment)
        .map(|w| (w.name.clone(), w))
        .collect();
    let present = |seg: &WalSegment| {
        archived
            .get(&seg.name())
            .filter(|_| repo.segment_path(seg).is_file())
    };
    let required = required_segments(info, repo);
    if let Some(missing) = required.iter().find(|s| present(s).is_none()) {
        return Err(RestoreError::Refused(format!(
            "backup {}: WAL segment {missing} it needs is not in the archive",
            info.backup_id
        )));
    }
    let required_last = required
        .last()
        .map(|s| s.segno)
        .unwrap_or_else(|| begin.segno(seg_size));
    let mut segments = Vec::new();
    let mut after_time = 0u32;
    let mut segno = begin.segno(seg_size);
    loop {
        let seg = WalSegment {
            tli: segment_timeline(&history, timeline, segno, seg_size),
            segno,
            seg_size,
        };
        let Some(rec) = present(&seg) else {
            break;
        };
        segments.push((seg, rec.checksum.clone()));
        let stop = match target {
            Some(RecoveryTarget::Immediate) => segno >= required_last,
            Some(RecoveryTarget::Lsn(l)) => segno > l.segno(seg_size),
            Some(RecoveryTarget::Time(t)) => {
                if rec.archived_at > *t {
                    after_time += 1;
                }
                after_time >= 2
            }
            _ => false,
        };
        if stop && segno >= required_last {
            break;
        }
        segno += 1;
    }
    Ok(WalPlan {
        timeline,
        segments,
        histories: archived_histories(repo),
    })
}

/// Decompresses the planned WAL into `dir` (created 0700), in parallel, checking each
/// segment's checksum; returns the number of files and bytes written.
pub fn copy_into(
    plan: &WalPlan,
    repo: &ServerRepo,
    dir: &Path,
    owner: Owner,
    pool: &rayon::ThreadPool,
    progress: &dyn Progress,
) -> Result<(u64, u64), RestoreError> {
    super::destination::create(dir, owner)?;
    let total: u64 = plan.segments.iter().map(|(s, _)| s.seg_size).sum();
    progress.start("WAL", Some(total));
    let done = AtomicU64::new(0);
    let open = |path: &Path| -> Result<File, RestoreError> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err(path))
    };
    let result = pool.install(|| {
        plan.segments.par_iter().try_for_each(|(seg, sum)| {
            let src = repo.segment_path(seg);
            let dest = dir.join(seg.name());
            let file = open(&dest)?;
            let mut w = BufWriter::with_capacity(256 * 1024, file);
            let (n, have) =
                crate::repo::compress::decompress_to(&src, &mut w).map_err(io_err(&src))?;
            let file = w.into_inner().map_err(|e| io_err(&dest)(e.into_error()))?;
            if !have.eq_ignore_ascii_case(sum) || n != seg.seg_size {
                return Err(RestoreError::Corrupt(format!(
                    "{}: decompresses to {n} bytes with checksum {have}, the catalog records {sum}",
                    src.display()
                )));
            }
            owner.apply_file(&file, &dest)?;
            let d = done.fetch_add(n, Ordering::Relaxed) + n;
            progress.set(d);
            Ok(())
        })
    });
    progress.finish();
    result?;
    let mut bytes = done.load(Ordering::Relaxed);
    for tli in &plan.histories {
        let src = repo.history_path(*tli);
        let dest = dir.join(history_file_name(*tli));
        let data = match fs::read(&src) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&src)(e)),
        };
        let file = open(&dest)?;
        io::Write::write_all(&mut &file, &data).map_err(io_err(&dest))?;
        owner.apply_file(&file, &dest)?;
        bytes += data.len() as u64;
    }
    Ok((
        plan.segments.len() as u64 + plan.histories.len() as u64,
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_timeline_descends_only_past_the_backup_end() {
        let h = parse_history("1\t0/9000000\tpromoted\n").unwrap();
        assert!(descends(&h, TimeLineId(2), TimeLineId(1), Lsn(0x0500_0000)));
        assert!(!descends(
            &h,
            TimeLineId(2),
            TimeLineId(1),
            Lsn(0x0A00_0000)
        ));
        assert!(descends(&[], TimeLineId(1), TimeLineId(1), Lsn(0)));
    }
}
