//! `check-backup` (is the WAL a backup needs all archived and readable?) and
//! `verify-backup` (does every stored file still hold what was backed up?), as library
//! functions returning what they found. Both run in parallel on the current rayon pool.

use crate::backup::bundle::{self, BundleReader};
use crate::backup::wal_range::required_segments;
use crate::backup::{BackupDir, BackupError, BackupInfo, FileEntry, FileKind};
use crate::catalog::{WalKind, WalRecord};
use crate::repo::compress::decompress_reader_to;
use crate::repo::ServerRepo;
use crate::wal::header::validate_segment;
use crate::wal::WalSegment;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Component, Path};

/// files.jsonl entries checked together: bounds memory whatever the number of files.
const BATCH: usize = 512;

/// What is wrong with one WAL segment a backup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentIssue {
    /// Not in the archive (no file, or no catalog record).
    Missing,
    /// Present but does not decompress, or its content is not that segment.
    Unreadable,
}

/// One missing or unreadable segment.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentProblem {
    /// The segment's file name.
    pub segment: String,
    /// Missing or unreadable.
    pub issue: SegmentIssue,
    /// Why, in words.
    pub detail: String,
}

/// The result of checking a backup's WAL.
#[derive(Debug, Clone, Serialize)]
pub struct WalCheck {
    /// The first segment needed.
    pub first: Option<String>,
    /// The last segment needed.
    pub last: Option<String>,
    /// How many segments were checked.
    pub segments: usize,
    /// Every problem found, in WAL order.
    pub problems: Vec<SegmentProblem>,
}

impl WalCheck {
    /// Every segment is there and readable.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every segment from `begin_wal` to `end_wal` (following the timeline
/// history): recorded in the catalog (`archived`: the server's `Catalog::wal_files`),
/// stored, decompressing to a valid segment of this cluster with the recorded checksum.
pub fn check_backup_wal(info: &BackupInfo, repo: &ServerRepo, archived: &[WalRecord]) -> WalCheck {
    let need = required_segments(info, repo);
    let recorded: HashMap<&str, &str> = archived
        .iter()
        .filter(|w| w.kind == WalKind::Segment)
        .map(|w| (w.name.as_str(), w.checksum.as_str()))
        .collect();
    let mut problems: Vec<SegmentProblem> = need
        .par_iter()
        .filter_map(|seg| {
            check_segment(seg, info, repo, recorded.get(seg.name().as_str()).copied())
        })
        .collect();
    problems.sort_by(|a, b| a.segment.cmp(&b.segment));
    WalCheck {
        first: need.first().map(WalSegment::name),
        last: need.last().map(WalSegment::name),
        segments: need.len(),
        problems,
    }
}

fn check_segment(
    seg: &WalSegment,
    info: &BackupInfo,
    repo: &ServerRepo,
    recorded: Option<&str>,
) -> Option<SegmentProblem> {
    let problem = |issue, detail: String| {
        Some(SegmentProblem {
            segment: seg.name(),
            issue,
            detail,
        })
    };
    let key = repo.segment_key(seg);
    let path = repo.store().describe(&key);
    let object = match repo.store().get(&key) {
        Ok(o) => o,
        Err(e) if e.is_not_found() => {
            return problem(
                SegmentIssue::Missing,
                format!("not in the archive ({path} does not exist)"),
            )
        }
        Err(e) => return problem(SegmentIssue::Unreadable, e.to_string()),
    };
    let Some(recorded) = recorded else {
        return problem(
            SegmentIssue::Missing,
            format!("{path} is not recorded in the catalog"),
        );
    };
    let mut data = Vec::with_capacity(seg.seg_size as usize);
    if let Err(e) = decompress_reader_to(object, &mut data) {
        return problem(SegmentIssue::Unreadable, format!("{path}: {e}"));
    }
    if let Err(e) = validate_segment(&data, seg, Some(info.system_id)) {
        return problem(SegmentIssue::Unreadable, e.to_string());
    }
    let sum = crate::repo::compress::checksum(&data);
    if sum != recorded {
        return problem(
            SegmentIssue::Unreadable,
            format!("{path}: checksum {sum} differs from {recorded} recorded when it was archived"),
        );
    }
    None
}

/// What is wrong with one file of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileIssue {
    /// The stored object is gone, or a file of PostgreSQL's manifest is not in the backup.
    Missing,
    /// The stored object does not decompress or cannot be read.
    Unreadable,
    /// The content differs from what was backed up (checksum or size).
    Mismatch,
    /// The metadata itself is wrong (files.jsonl, backup_manifest).
    Invalid,
}

/// One bad or missing file.
#[derive(Debug, Clone, Serialize)]
pub struct FileProblem {
    /// The file's path as PostgreSQL's manifest names it (`base/1/1259`,
    /// `pg_tblspc/16390/PG_15_…/16384/16385`), or the metadata file at fault.
    pub path: String,
    /// The stored object, relative to the backup folder (`data/base/1/1259.zst`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// What kind of problem.
    pub issue: FileIssue,
    /// Why, in words.
    pub detail: String,
}

/// The result of verifying a backup's files.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileCheck {
    /// Regular files re-read.
    pub files: u64,
    /// Uncompressed bytes re-read.
    pub bytes: u64,
    /// Files listed by PostgreSQL's backup_manifest (when the backup has one).
    pub manifest_files: Option<u64>,
    /// Every problem found, by path.
    pub problems: Vec<FileProblem>,
}

impl FileCheck {
    /// Every file is present and intact.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The path PostgreSQL's manifest uses for an entry of files.jsonl.
pub fn manifest_path(entry: &FileEntry) -> String {
    match entry.tablespace {
        Some(oid) => format!("pg_tblspc/{oid}/{}", entry.path),
        None => entry.path.clone(),
    }
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "Files", default)]
    files: Vec<ManifestFile>,
}

#[derive(Deserialize)]
struct ManifestFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The files PostgreSQL's `backup_manifest` lists: path (relative to the data
/// directory, tablespaces under `pg_tblspc/<oid>/`) → size.
pub fn read_manifest_files(dir: &BackupDir) -> Result<HashMap<String, u64>, String> {
    let text = dir
        .read_small("backup_manifest")
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "it is not in the backup".to_string())?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| format!("does not parse: {e}"))?;
    let mut out = HashMap::with_capacity(m.files.len());
    for f in m.files {
        let p = match (f.path, f.encoded_path) {
            (Some(p), _) => p,
            (None, Some(hex)) => match decode_hex(&hex) {
                Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                None => return Err(format!("bad Encoded-Path '{hex}'")),
            },
            (None, None) => return Err("a file has neither Path nor Encoded-Path".into()),
        };
        out.insert(p, f.size);
    }
    Ok(out)
}

/// Re-reads every stored file of a backup, decompresses it and compares size and
/// checksum with files.jsonl; then checks that every file of PostgreSQL's manifest is
/// in the backup with its size. files.jsonl is streamed in batches, never held whole.
pub fn verify_backup_files(dir: &BackupDir, info: &BackupInfo) -> Result<FileCheck, BackupError> {
    let mut report = FileCheck::default();
    let mut manifest = if info.has_manifest {
        match read_manifest_files(dir) {
            Ok(m) => {
                report.manifest_files = Some(m.len() as u64);
                Some(m)
            }
            Err(detail) => {
                report.problems.push(FileProblem {
                    path: "backup_manifest".into(),
                    object: None,
                    issue: FileIssue::Invalid,
                    detail,
                });
                None
            }
        }
    } else {
        None
    };
    let mut batch: Vec<FileEntry> = Vec::with_capacity(BATCH);
    let mut entries = dir.files()?;
    loop {
        let next = entries.next();
        let end = next.is_none();
        if let Some(entry) = next {
            let entry = entry?;
            if let Some(m) = manifest.as_mut() {
                // A block-map incremental stores a relation file as
                // INCREMENTAL.<name>; the manifest names the file it rebuilds.
                let rebuilt = info
                    .is_block_incremental()
                    .then(|| crate::backup::block_map::reconstructed_path(&entry.path))
                    .flatten();
                let listed = match &rebuilt {
                    Some(path) => manifest_path(&FileEntry {
                        path: path.clone(),
                        ..entry.clone()
                    }),
                    None => manifest_path(&entry),
                };
                if let Some(size) = m.remove(&listed) {
                    if entry.kind == FileKind::File && rebuilt.is_none() && size != entry.size {
                        report.problems.push(FileProblem {
                            path: manifest_path(&entry),
                            object: entry.object.clone(),
                            issue: FileIssue::Mismatch,
                            detail: format!(
                                "backup_manifest says {size} bytes, files.jsonl {}",
                                entry.size
                            ),
                        });
                    }
                }
            }
            if entry.kind == FileKind::File {
                batch.push(entry);
            }
        }
        if batch.len() >= BATCH || (end && !batch.is_empty()) {
            // The files of one bundle that follow one another are checked together,
            // with one read of the span they cover.
            let groups: Vec<&[FileEntry]> = batch
                .chunk_by(|a, b| a.in_backup == b.in_backup && matches!((bundle::range(a), bundle::range(b)), (Some((x, ..)), Some((y, ..))) if x == y))
                .collect();
            let found: Vec<Option<FileProblem>> = groups
                .par_iter()
                .flat_map_iter(|g| verify_group(dir, g))
                .collect();
            report.files += batch.len() as u64;
            report.bytes += batch.iter().map(|e| e.size).sum::<u64>();
            report.problems.extend(found.into_iter().flatten());
            batch.clear();
        }
        if end {
            break;
        }
    }
    if let Some(m) = manifest {
        for (path, size) in m {
            report.problems.push(FileProblem {
                path,
                object: None,
                issue: FileIssue::Missing,
                detail: format!("listed in backup_manifest ({size} bytes) but not in the backup"),
            });
        }
    }
    report.problems.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// A relative path that stays inside the backup folder.
fn is_contained(rel: &str) -> bool {
    let p = Path::new(rel);
    !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// [`verify_file`] for each file of a group (consecutive files of one bundle, or
/// one file).
fn verify_group(dir: &BackupDir, group: &[FileEntry]) -> Vec<Option<FileProblem>> {
    let mut bundles = BundleReader::new(dir, 0);
    let span_end = group.first().and_then(|e| e.offset).unwrap_or(0) + bundle::group_span(group);
    group
        .iter()
        .map(|e| {
            if let Some(off) = e.offset {
                bundles.set_read_ahead(span_end.saturating_sub(off));
            }
            verify_file(dir, e, &mut bundles)
        })
        .collect()
}

fn verify_file(
    dir: &BackupDir,
    entry: &FileEntry,
    bundles: &mut BundleReader,
) -> Option<FileProblem> {
    let problem = |issue, detail: String| {
        Some(FileProblem {
            path: manifest_path(entry),
            object: entry.object.clone(),
            issue,
            detail,
        })
    };
    let empty = blake3::hash(b"").to_hex().to_string();
    if entry.object.is_none()
        && entry.size == 0
        && entry.checksum.as_deref().is_none_or(|c| c == empty)
    {
        // An empty file of a streamed backup has no object.
        return None;
    }
    let Some(object) = entry.object.as_deref() else {
        return problem(
            FileIssue::Invalid,
            "files.jsonl names no stored object".into(),
        );
    };
    if !is_contained(object) {
        return problem(
            FileIssue::Invalid,
            format!("stored object '{object}' is outside the backup folder"),
        );
    }
    let Some(expected) = entry.checksum.as_deref() else {
        return problem(FileIssue::Invalid, "files.jsonl records no checksum".into());
    };
    // A file reused by reference is checked in the backup that stored it.
    let holder = match dir.holder(entry) {
        Ok(h) => h,
        Err(e) => return problem(FileIssue::Invalid, e.to_string()),
    };
    let dir: &BackupDir = &holder;
    let object_name = object;
    let object = match &entry.in_backup {
        Some(id) => format!("{object_name} (of backup {id})"),
        None => object_name.to_string(),
    };
    let object = object.as_str();
    if let Some((_, offset, length)) = bundle::range(entry) {
        let at = format!("{object} bytes {offset}..{}", offset.saturating_add(length));
        let stored = match bundles.stored(entry) {
            Ok(Some(s)) => s,
            Ok(None) => return problem(FileIssue::Invalid, "no bundle range".into()),
            Err(BackupError::Store(e)) if e.is_not_found() => {
                return problem(
                    FileIssue::Missing,
                    format!("bundle {object} does not exist"),
                )
            }
            Err(BackupError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return problem(
                    FileIssue::Missing,
                    format!("bundle {object} does not exist"),
                )
            }
            Err(e) => return problem(FileIssue::Unreadable, format!("{at}: {e}")),
        };
        if !bundle::stored_matches(entry, stored) {
            return problem(
                FileIssue::Mismatch,
                format!(
                    "{at}: the stored bytes differ from their checksum {} in files.jsonl (the bundle is damaged)",
                    entry.stored_checksum.as_deref().unwrap_or_default()
                ),
            );
        }
        return match bundle::decode(stored, std::io::sink()) {
            Err(e) => problem(FileIssue::Unreadable, format!("{at}: {e}")),
            Ok((size, _)) if size != entry.size => problem(
                FileIssue::Mismatch,
                format!("{at}: {size} bytes, files.jsonl says {}", entry.size),
            ),
            Ok((_, sum)) if sum != expected => problem(
                FileIssue::Mismatch,
                format!("{at}: checksum {sum} differs from {expected} in files.jsonl"),
            ),
            Ok(_) => None,
        };
    }
    match dir.has_object(object_name) {
        Ok(true) => {}
        Ok(false) => {
            return problem(
                FileIssue::Missing,
                format!("stored object {object} does not exist"),
            )
        }
        Err(e) => return problem(FileIssue::Unreadable, format!("{object}: {e}")),
    }
    let plain = match entry.compression.as_deref() {
        Some("none") => true,
        Some("zstd") | None => false,
        Some(other) => {
            return problem(FileIssue::Invalid, format!("unknown compression '{other}'"))
        }
    };
    let read = dir
        .open_object(object_name)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| {
            if plain {
                crate::repo::compress::hash_copy(r, std::io::sink())
            } else {
                decompress_reader_to(r, std::io::sink())
            }
        });
    match read {
        Err(e) => problem(FileIssue::Unreadable, format!("{object}: {e}")),
        Ok((size, _)) if size != entry.size => problem(
            FileIssue::Mismatch,
            format!("{object}: {size} bytes, files.jsonl says {}", entry.size),
        ),
        Ok((_, sum)) if sum != expected => problem(
            FileIssue::Mismatch,
            format!("{object}: checksum {sum} differs from {expected} in files.jsonl"),
        ),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupStatus;
    use crate::repo::compress::store_compressed;
    use crate::wal::SystemId;
    use chrono::Utc;
    use std::io::Write;

    fn info(has_manifest: bool) -> BackupInfo {
        BackupInfo {
            status: BackupStatus::Done,
            server_version: 150000,
            system_id: SystemId(1),
            has_manifest,
            ..BackupInfo::new("20260101T000000", "pg1", Utc::now())
        }
    }

    /// A backup folder with `files` (path, tablespace, content), stored as zstd.
    fn folder(
        root: &Path,
        files: &[(&str, Option<u32>, &[u8])],
        manifest: Option<&str>,
    ) -> BackupDir {
        let repo = ServerRepo::new(root, "pg1");
        let dir = BackupDir::new(&repo, "20260101T000000");
        std::fs::create_dir_all(dir.root()).unwrap();
        std::fs::create_dir_all(dir.data_dir()).unwrap();
        let mut list = std::fs::File::create(dir.files_path()).unwrap();
        for (path, ts, content) in files {
            let object = match ts {
                Some(oid) => format!("tablespaces/{oid}/{path}.zst"),
                None => format!("data/{path}.zst"),
            };
            let dest = dir.root().join(&object);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let s = store_compressed(content, &dest, 1).unwrap();
            let e = FileEntry {
                path: path.to_string(),
                tablespace: *ts,
                kind: FileKind::File,
                mode: 0o600,
                mtime: 0,
                size: s.size,
                checksum: Some(s.checksum),
                object: Some(object),
                compression: Some("zstd".into()),
                stored_size: s.stored_size,
                stored_checksum: Some(s.stored_checksum),
                offset: None,
                length: None,
                in_backup: None,
                target: None,
            };
            writeln!(list, "{}", serde_json::to_string(&e).unwrap()).unwrap();
        }
        if let Some(m) = manifest {
            std::fs::write(dir.manifest_path(), m).unwrap();
        }
        dir
    }

    #[test]
    fn intact_backup_passes_and_manifest_maps_tablespaces() {
        let tmp = tempfile::tempdir().unwrap();
        let files: Vec<(&str, Option<u32>, &[u8])> = (0..(BATCH + 3))
            .map(|i| {
                (
                    Box::leak(format!("base/1/{i}").into_boxed_str()) as &str,
                    None,
                    &b"abc"[..],
                )
            })
            .chain([("PG_15_1/5/6", Some(16390u32), &b"tablespace"[..])])
            .collect();
        let manifest = r#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [
            {"Path": "base/1/0", "Size": 3},
            {"Encoded-Path": "626173652f312f31", "Size": 3},
            {"Path": "pg_tblspc/16390/PG_15_1/5/6", "Size": 10}]}"#;
        let dir = folder(tmp.path(), &files, Some(manifest));
        let r = verify_backup_files(&dir, &info(true)).unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.files, BATCH as u64 + 4);
        assert_eq!(r.manifest_files, Some(3));
    }

    #[test]
    fn names_flipped_missing_and_unlisted_files() {
        let tmp = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let files: Vec<(&str, Option<u32>, &[u8])> = vec![
            ("base/1/a", None, &big[..]),
            ("base/1/b", None, b"bbb"),
            ("global/c", None, b"ccc"),
        ];
        let manifest = r#"{"Files": [{"Path": "base/1/a", "Size": 100000},
            {"Path": "base/1/gone", "Size": 1}, {"Path": "global/c", "Size": 4}]}"#;
        let dir = folder(tmp.path(), &files, Some(manifest));
        // Flip a byte in the middle of a's compressed frame, remove b's object.
        let a = dir.root().join("data/base/1/a.zst");
        let mut bytes = std::fs::read(&a).unwrap();
        let mid = (bytes.len() - crate::repo::compress::TRAILER_LEN) / 2;
        bytes[mid] ^= 0xFF;
        std::fs::write(&a, bytes).unwrap();
        std::fs::remove_file(dir.root().join("data/base/1/b.zst")).unwrap();
        let r = verify_backup_files(&dir, &info(true)).unwrap();
        let got: Vec<(&str, FileIssue)> = r
            .problems
            .iter()
            .map(|p| (p.path.as_str(), p.issue))
            .collect();
        assert_eq!(got.len(), 4, "{:?}", r.problems);
        assert_eq!(got[0].0, "base/1/a");
        assert!(matches!(
            got[0].1,
            FileIssue::Unreadable | FileIssue::Mismatch
        ));
        assert_eq!(got[1], ("base/1/b", FileIssue::Missing));
        assert_eq!(got[2], ("base/1/gone", FileIssue::Missing));
        assert_eq!(got[3], ("global/c", FileIssue::Mismatch));
    }

    #[test]
    fn plain_stored_files_are_hashed_as_they_are() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path(), &[], None);
        std::fs::write(dir.root().join("data/plain"), b"as is").unwrap();
        let entry = |checksum: &str| FileEntry {
            path: "plain".into(),
            tablespace: None,
            kind: FileKind::File,
            mode: 0o600,
            mtime: 0,
            size: 5,
            checksum: Some(checksum.into()),
            object: Some("data/plain".into()),
            compression: Some("none".into()),
            stored_size: 5,
            stored_checksum: None,
            offset: None,
            length: None,
            in_backup: None,
            target: None,
        };
        let good = crate::repo::compress::checksum(b"as is");
        assert!(verify_file(&dir, &entry(&good), &mut BundleReader::new(&dir, 0)).is_none());
        let bad = verify_file(&dir, &entry("0000"), &mut BundleReader::new(&dir, 0)).unwrap();
        assert_eq!(
            (bad.path.as_str(), bad.issue),
            ("plain", FileIssue::Mismatch)
        );
    }

    #[test]
    fn objects_outside_the_folder_are_refused() {
        assert!(is_contained("data/base/1/1259.zst"));
        assert!(!is_contained("../other/data.zst"));
        assert!(!is_contained("/etc/passwd"));
        assert!(!is_contained(""));
        assert_eq!(decode_hex("41"), Some(vec![0x41]));
        assert_eq!(decode_hex("4"), None);
    }
}
