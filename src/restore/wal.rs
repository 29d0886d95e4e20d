//! The WAL a recovery replays: which timeline it follows, which archived segments it
//! needs (from the backup's start up to the target, or everything archived after the
//! backup), and copying them into `<destination>/pgbk_wal/` when PostgreSQL reads
//! them from there instead of calling `pgbk get-wal`.

use super::destination::Owner;
use super::target::{RecoveryTarget, TargetTimeline};
use super::RestoreError;
use crate::backup::wal_range::required_segments;
use crate::backup::BackupInfo;
use crate::catalog::{Catalog, WalKind, WalRecord};
use crate::error::IoResultExt;
use crate::progress::Progress;
use crate::repo::ServerRepo;
use crate::wal::continuity::segment_timeline;
use crate::wal::history::{followed_until, parse_history, HistoryEntry};
use crate::wal::{history_file_name, Lsn, TimeLineId, WalFileName, WalSegment};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
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
    /// The first segment missing where later ones are archived: recovery stops
    /// before it (and, without a target, promotes there) instead of replaying the
    /// rest. `None` when the archive runs without a hole.
    pub hole: Option<String>,
}

/// The archived history files of a server, by timeline (on object storage, as the
/// catalog lists them: a listing of the bucket would page through every segment).
fn archived_histories(
    repo: &ServerRepo,
    catalog: &Catalog,
    server: &str,
) -> Result<Vec<TimeLineId>, RestoreError> {
    if repo.repository().is_remote() {
        let mut out: Vec<TimeLineId> = catalog
            .wal_files(server)?
            .into_iter()
            .filter(|w| w.kind == WalKind::History)
            .filter_map(|w| match WalFileName::parse(&w.name, 1 << 24) {
                Some(WalFileName::History(t)) => Some(t),
                _ => None,
            })
            .collect();
        out.sort();
        return Ok(out);
    }
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
    Ok(out)
}

fn read_history(repo: &ServerRepo, tli: TimeLineId) -> Result<Vec<HistoryEntry>, RestoreError> {
    if tli.0 == 1 {
        return Ok(Vec::new());
    }
    let path = repo.history_path(tli);
    let text = if repo.repository().is_remote() {
        repo.read_history(tli)
            .map_err(store_refused(repo))?
            .ok_or_else(|| {
                RestoreError::Refused(format!(
                    "server '{}': the history file of timeline {tli} is not in the archive",
                    repo.server()
                ))
            })?
    } else {
        fs::read_to_string(&path).at(&path)?
    };
    parse_history(&text).map_err(|e| RestoreError::Corrupt(format!("{}: {e}", path.display())))
}

/// The store's failure as a refusal naming the server (never "not found").
fn store_refused(
    repo: &ServerRepo,
) -> impl Fn(crate::repo::store::StoreError) -> RestoreError + '_ {
    move |e| RestoreError::Refused(format!("server '{}': {e}", repo.server()))
}

/// Whether timeline `child` (with this history) continues `tli` past `lsn`.
fn descends(history: &[HistoryEntry], child: TimeLineId, tli: TimeLineId, lsn: Lsn) -> bool {
    child == tli || followed_until(history, tli).is_some_and(|end| end >= lsn)
}

/// The timeline a recovery from `info` follows.
pub fn choose_timeline(
    info: &BackupInfo,
    repo: &ServerRepo,
    histories: &[TimeLineId],
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
            for &t in histories.iter().rev() {
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
/// How far: to the segment after the one holding a target LSN; for `immediate`, the
/// backup's own segments; otherwise (no target, time, xid, restore point) all
/// archived WAL (an archive time does not bound the times of a segment's records).
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
    let histories = archived_histories(repo, catalog, &info.server)?;
    let timeline = choose_timeline(info, repo, &histories, tli)?;
    let history = read_history(repo, timeline)?;
    let archived: HashMap<String, WalRecord> = catalog
        .wal_files(&info.server)?
        .into_iter()
        .filter(|w| w.kind == WalKind::Segment)
        .map(|w| (w.name.clone(), w))
        .collect();
    // On object storage the catalog row is trusted here (it is entered only once the
    // object is stored); copying the segment reads and verifies it.
    let remote = repo.repository().is_remote();
    let present = |seg: &WalSegment| {
        archived
            .get(&seg.name())
            .filter(|_| remote || repo.segment_path(seg).is_file())
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
    let mut segno = begin.segno(seg_size);
    let mut missing = None;
    loop {
        let seg = WalSegment {
            tli: segment_timeline(&history, timeline, segno, seg_size),
            segno,
            seg_size,
        };
        let Some(rec) = present(&seg) else {
            missing = Some(seg);
            break;
        };
        segments.push((seg, rec.checksum.clone()));
        let stop = match target {
            Some(RecoveryTarget::Immediate) => segno >= required_last,
            Some(RecoveryTarget::Lsn(l)) => segno > l.segno(seg_size),
            // A time target copies everything archived: when a segment was archived
            // says nothing of when its records were written (receive-wal or an
            // upload may lag by minutes), and stopping early ends recovery before
            // the target ("recovery ended before configured recovery target").
            _ => false,
        };
        if stop && segno >= required_last {
            break;
        }
        segno += 1;
    }
    let hole = missing
        .filter(|m| {
            archived
                .values()
                .any(|w| w.timeline >= m.tli && w.segno.is_some_and(|s| s > m.segno))
        })
        .map(|m| m.name());
    Ok(WalPlan {
        timeline,
        segments,
        histories,
        hole,
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
            .at(path)
            .map_err(RestoreError::from)
    };
    let result = pool.install(|| {
        plan.segments.par_iter().try_for_each(|(seg, sum)| {
            let src = PathBuf::from(repo.store().describe(&repo.segment_key(seg)));
            let object = repo
                .store()
                .get(&repo.segment_key(seg))
                .map_err(store_refused(repo))?;
            let dest = dir.join(seg.name());
            let file = open(&dest)?;
            let mut w = BufWriter::with_capacity(256 * 1024, file);
            let (n, have) = crate::repo::compress::decompress_reader_to(object, &mut w).at(&src)?;
            let file = w.into_inner().map_err(|e| e.into_error()).at(&dest)?;
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
        let dest = dir.join(history_file_name(*tli));
        let Some(data) = repo
            .read_history(*tli)
            .map_err(store_refused(repo))?
            .map(String::into_bytes)
        else {
            continue;
        };
        let file = open(&dest)?;
        io::Write::write_all(&mut &file, &data).at(&dest)?;
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
    use chrono::{DateTime, Duration, Utc};

    const SEG: u64 = 16 << 20;

    /// A repository where timeline 2 branched off timeline 1 inside segment 4:
    /// 1/1..1/3 archived, 1/4 only as a partial, 2/4..2/7 archived; segment n was
    /// archived at `t0 + n minutes`.
    fn fixture(home: &Path) -> (ServerRepo, Catalog, BackupInfo, DateTime<Utc>) {
        let repo = ServerRepo::new(home, "pg1");
        repo.ensure_dirs().unwrap();
        let cat = Catalog::open(home).unwrap();
        let t0 = Utc::now() - Duration::hours(1);
        let add = |tli: u32, segno: u64| {
            let seg = WalSegment {
                tli: TimeLineId(tli),
                segno,
                seg_size: SEG,
            };
            let p = repo.segment_path(&seg);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, b"x").unwrap();
            cat.insert_wal(
                "pg1",
                &WalRecord {
                    name: seg.name(),
                    kind: WalKind::Segment,
                    timeline: seg.tli,
                    segno: Some(segno),
                    size: SEG,
                    stored_size: 1,
                    checksum: format!("sum{tli}-{segno}"),
                    stored_checksum: None,
                    archived_at: t0 + Duration::minutes(segno as i64),
                },
            )
            .unwrap();
        };
        for n in 1..=3 {
            add(1, n);
        }
        for n in 4..=7 {
            add(2, n);
        }
        fs::write(repo.history_path(TimeLineId(2)), "1\t0/4800000\tpromoted\n").unwrap();
        let mut info: BackupInfo = serde_json::from_str(
            r#"{"backup_id":"20260101T000000","name":null,"server":"pg1","status":"DONE",
            "method":"postgres","server_version":150000,"system_id":"1","timeline":1,
            "wal_segment_size":16777216,"begin_lsn":"0/2000028","end_lsn":"0/2000100",
            "end_timeline":1,"begin_wal":null,"end_wal":null,"begin_time":"2026-01-01T00:00:00Z",
            "end_time":null,"size_bytes":0,"stored_bytes":0,"file_count":0,"tablespaces":[],
            "error":null,"pid":null,"keep":null,"checksum_algorithm":"blake3","has_manifest":false}"#,
        )
        .unwrap();
        info.server = "pg1".into();
        (repo, cat, info, t0)
    }

    fn names(p: &WalPlan) -> Vec<String> {
        p.segments
            .iter()
            .map(|(s, _)| format!("{}/{}", s.tli, s.segno))
            .collect()
    }

    #[test]
    fn follows_the_latest_timeline_and_stops_at_the_target() {
        let d = tempfile::tempdir().unwrap();
        let (repo, cat, info, t0) = fixture(d.path());
        let all = plan(&info, &repo, &cat, None, None).unwrap();
        assert_eq!(all.timeline, TimeLineId(2));
        assert_eq!(names(&all), ["1/2", "1/3", "2/4", "2/5", "2/6", "2/7"]);
        assert_eq!(all.histories, [TimeLineId(2)]);
        assert_eq!(all.segments[0].1, "sum1-2");
        // Staying on timeline 1 stops where its archive stops (4 is only a partial).
        let current = plan(&info, &repo, &cat, None, Some(TargetTimeline::Current)).unwrap();
        assert_eq!(names(&current), ["1/2", "1/3"]);
        let lsn = RecoveryTarget::Lsn("0/4100000".parse().unwrap());
        assert_eq!(
            names(&plan(&info, &repo, &cat, Some(&lsn), None).unwrap()),
            ["1/2", "1/3", "2/4", "2/5"]
        );
        // A time target copies all archived WAL: archive times lag the records.
        let time = RecoveryTarget::Time(t0 + Duration::seconds(210));
        assert_eq!(
            names(&plan(&info, &repo, &cat, Some(&time), None).unwrap()),
            names(&plan(&info, &repo, &cat, None, None).unwrap())
        );
        let imm = plan(&info, &repo, &cat, Some(&RecoveryTarget::Immediate), None).unwrap();
        assert_eq!(names(&imm), ["1/2"]);
        assert!(matches!(
            plan(
                &info,
                &repo,
                &cat,
                None,
                Some(TargetTimeline::Id(TimeLineId(3)))
            ),
            Err(RestoreError::Refused(_))
        ));
        // A backup ending after the branch point cannot follow timeline 2.
        let mut late = info.clone();
        late.begin_lsn = Some("0/5000028".parse().unwrap());
        late.end_lsn = Some("0/5000100".parse().unwrap());
        late.timeline = TimeLineId(1);
        late.end_timeline = Some(TimeLineId(1));
        let e = plan(
            &late,
            &repo,
            &cat,
            None,
            Some(TargetTimeline::Id(TimeLineId(2))),
        );
        assert!(matches!(e, Err(RestoreError::Refused(_))), "{e:?}");
        // A segment the backup needs is missing: refused.
        fs::remove_file(repo.segment_path(&WalSegment {
            tli: TimeLineId(1),
            segno: 2,
            seg_size: SEG,
        }))
        .unwrap();
        let e = plan(&info, &repo, &cat, None, None).unwrap_err();
        assert!(e.to_string().contains("is not in the archive"), "{e}");
    }

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
