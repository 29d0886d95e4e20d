//! PostgreSQL's `backup_manifest` for a backup that was taken without one (rsync
//! backups: `pg_backup_start`/`pg_backup_stop` produce none), so that
//! `pg_verifybackup` can check a restore of it as it checks a streamed backup's.
//!
//! Every file is re-read from the repository and its recorded size and BLAKE3
//! checked before its SHA-256 goes into the manifest: a manifest never vouches for
//! bytes pgbk did not verify. Written streaming (bounded memory whatever the file
//! count) through a temporary name, fsynced, then renamed.

use super::info::{BackupInfo, FileEntry, FileKind};
use super::BackupDir;
use crate::repo::compress::hash_copy;
use crate::repo::durable::AtomicFile;
use chrono::{TimeZone, Utc};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;

/// Files hashed in parallel at a time.
const BATCH: usize = 256;

/// Why a manifest could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The backup already has one (PostgreSQL's own, or an earlier generated one).
    #[error("backup {0} already has a backup_manifest")]
    Exists(String),
    /// The backup is not DONE.
    #[error("backup {id} is {status}, not DONE")]
    NotDone {
        /// Backup id.
        id: String,
        /// Its status.
        status: String,
    },
    /// A stored file does not match what files.jsonl recorded.
    #[error("{path} does not match its recorded {what}: run verify-backup; no manifest written")]
    Mismatch {
        /// The file, as PostgreSQL names it.
        path: String,
        /// `size` or `checksum`.
        what: &'static str,
    },
    /// files.jsonl is wrong or a file could not be read or the manifest written.
    #[error(transparent)]
    Backup(#[from] super::BackupError),
    /// A stored file could not be read, or the manifest written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ManifestReport {
    /// Files listed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The manifest's own size.
    pub manifest_bytes: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that feeds SHA-256 and discards.
struct Sha256Sink(Sha256);

impl Write for Sha256Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The path PostgreSQL's manifest gives a files.jsonl entry.
fn manifest_path(e: &FileEntry) -> String {
    match e.tablespace {
        Some(oid) => format!("pg_tblspc/{oid}/{}", e.path),
        None => e.path.clone(),
    }
}

/// The manifest line of one file, after checking its stored bytes.
fn file_line(dir: &BackupDir, e: &FileEntry) -> Result<(String, u64), ManifestError> {
    let path = manifest_path(e);
    let mut sha = Sha256Sink(Sha256::new());
    let object = e
        .object
        .as_deref()
        .and_then(crate::repo::safe_relative)
        .filter(|p| !p.as_os_str().is_empty());
    let Some(object) = object else {
        // An empty file of a streamed backup has no object: it is checked below.
        if e.object.is_none() && e.size == 0 {
            let none = hash_copy(io::empty(), &mut sha).map_err(|source| ManifestError::Io {
                path: dir.root().to_path_buf(),
                source,
            })?;
            return finish_line(e, path, none, sha);
        }
        return Err(ManifestError::Mismatch {
            path,
            what: "object name",
        });
    };
    // A file reused by reference is read from the backup that stored it.
    let holder = dir.holder(e).map_err(|err| ManifestError::Io {
        path: dir.root().to_path_buf(),
        source: std::io::Error::other(err.to_string()),
    })?;
    let dir: &BackupDir = &holder;
    let stored = std::path::PathBuf::from(dir.describe(&object.to_string_lossy()));
    let io = |source| ManifestError::Io {
        path: stored.clone(),
        source,
    };
    let (size, blake3) = if e.offset.is_some() {
        // A bundled file: its own frames, by range.
        let bytes = crate::backup::bundle::BundleReader::new(dir, 0)
            .stored(e)
            .map_err(|err| io(std::io::Error::other(err.to_string())))?
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        crate::backup::bundle::decode(&bytes, &mut sha).map_err(io)?
    } else {
        let object = object.to_string_lossy();
        let file = BufReader::new(
            dir.open_object(&object)
                .map_err(|err| io(std::io::Error::other(err.to_string())))?,
        );
        let reader: Box<dyn Read> = match e.compression.as_deref() {
            Some("none") => Box::new(file),
            _ => Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io)?),
        };
        hash_copy(reader, &mut sha).map_err(io)?
    };
    finish_line(e, path, (size, blake3), sha)
}

/// The manifest line of a file whose content read back as `(size, blake3)` with
/// SHA-256 `sha`, once both match files.jsonl.
fn finish_line(
    e: &FileEntry,
    path: String,
    (size, blake3): (u64, String),
    sha: Sha256Sink,
) -> Result<(String, u64), ManifestError> {
    if size != e.size {
        return Err(ManifestError::Mismatch { path, what: "size" });
    }
    if e.checksum.as_deref() != Some(blake3.as_str()) {
        return Err(ManifestError::Mismatch {
            path,
            what: "checksum",
        });
    }
    let modified = Utc
        .timestamp_opt(e.mtime, 0)
        .single()
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S GMT");
    let json_path = serde_json::to_string(&path).unwrap_or_else(|_| format!("\"{path}\""));
    Ok((
        format!(
            "{{ \"Path\": {json_path}, \"Size\": {size}, \"Last-Modified\": \"{modified}\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"{}\" }}",
            hex(&sha.0.finalize())
        ),
        size,
    ))
}

/// Writes `backup_manifest` for a DONE backup that has none; the caller records
/// `has_manifest` in backup.json and the catalog.
pub fn generate_manifest(
    dir: &BackupDir,
    info: &BackupInfo,
) -> Result<ManifestReport, ManifestError> {
    if info.has_manifest || dir.has_object("backup_manifest")? {
        return Err(ManifestError::Exists(info.backup_id.clone()));
    }
    if info.status != super::BackupStatus::Done {
        return Err(ManifestError::NotDone {
            id: info.backup_id.clone(),
            status: info.status.to_string(),
        });
    }
    let dest = dir.manifest_path();
    let io = |source| ManifestError::Io {
        path: dest.clone(),
        source,
    };
    if dir.is_remote() {
        // Written locally first, then one create-only upload.
        crate::repo::durable::create_dir_all_private(dir.root()).map_err(io)?;
    }
    let mut out = AtomicFile::create(&dest).map_err(io)?;
    let mut whole = Sha256::new();
    let mut emit = |text: &str, out: &mut AtomicFile| -> io::Result<()> {
        whole.update(text.as_bytes());
        out.write_all(text.as_bytes())
    };
    let head = if info.server_version >= 170000 {
        format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {},\n\"Files\": [",
            info.system_id.0
        )
    } else {
        "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [".to_string()
    };
    emit(&head, &mut out).map_err(io)?;
    let mut report = ManifestReport {
        files: 0,
        bytes: 0,
        manifest_bytes: 0,
    };
    let mut entries = dir.files()?;
    let mut batch: Vec<FileEntry> = Vec::with_capacity(BATCH);
    loop {
        let next = entries.next().transpose()?;
        let end = next.is_none();
        // pg_wal's contents are never in a manifest (pg_verifybackup ignores pg_wal).
        if let Some(e) = next.filter(|e| {
            e.kind == FileKind::File && !(e.tablespace.is_none() && e.path.starts_with("pg_wal/"))
        }) {
            batch.push(e);
        }
        if batch.len() >= BATCH || (end && !batch.is_empty()) {
            let lines: Vec<(String, u64)> = batch
                .par_iter()
                .map(|e| file_line(dir, e))
                .collect::<Result<_, _>>()?;
            let mut text = String::new();
            for (line, size) in lines {
                text.push_str(if report.files == 0 { "\n" } else { ",\n" });
                text.push_str(&line);
                report.files += 1;
                report.bytes += size;
            }
            emit(&text, &mut out).map_err(io)?;
            batch.clear();
        }
        if end {
            break;
        }
    }
    let (Some(start), Some(end)) = (info.begin_lsn, info.end_lsn) else {
        return Err(ManifestError::Mismatch {
            path: "backup.json".into(),
            what: "begin and end LSN",
        });
    };
    let tail = format!(
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {}, \"Start-LSN\": \"{start}\", \"End-LSN\": \"{end}\" }}\n],\n",
        info.end_timeline.unwrap_or(info.timeline).0
    );
    emit(&tail, &mut out).map_err(io)?;
    // The checksum covers everything up to and including the newline before its line.
    let last = format!("\"Manifest-Checksum\": \"{}\"}}\n", hex(&whole.finalize()));
    out.write_all(last.as_bytes()).map_err(io)?;
    out.commit().map_err(io)?;
    report.manifest_bytes = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    dir.upload_local("backup_manifest")?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupStatus;
    use crate::repo::ServerRepo;
    use crate::wal::{Lsn, SystemId, TimeLineId};

    /// A DONE rsync-style backup with plain files `files` (path, content, recorded
    /// content), begin and end LSN set.
    fn backup(root: &std::path::Path, files: &[(&str, &[u8], &[u8])]) -> (BackupDir, BackupInfo) {
        let repo = ServerRepo::new(root, "pg1");
        let dir = BackupDir::new(&repo, "20260101T000000");
        std::fs::create_dir_all(dir.data_dir()).unwrap();
        let mut list = String::new();
        for (path, content, recorded) in files {
            std::fs::write(dir.data_dir().join(path), content).unwrap();
            let e = FileEntry {
                path: path.to_string(),
                tablespace: None,
                kind: FileKind::File,
                mode: 0o600,
                mtime: 1_700_000_000,
                size: recorded.len() as u64,
                checksum: Some(blake3::hash(recorded).to_hex().to_string()),
                object: Some(format!("data/{path}")),
                compression: Some("none".into()),
                stored_size: content.len() as u64,
                stored_checksum: None,
                offset: None,
                length: None,
                in_backup: None,
                target: None,
            };
            list.push_str(&serde_json::to_string(&e).unwrap());
            list.push('\n');
        }
        std::fs::write(dir.files_path(), list).unwrap();
        let info = BackupInfo {
            status: BackupStatus::Done,
            server_version: 150000,
            system_id: SystemId(7),
            timeline: TimeLineId(1),
            begin_lsn: Some(Lsn(0x2000028)),
            end_lsn: Some(Lsn(0x2000100)),
            ..BackupInfo::new("20260101T000000", "pg1", Utc::now())
        };
        (dir, info)
    }

    #[test]
    fn manifest_lists_files_with_sha256_and_its_checksum_covers_all_but_the_last_line() {
        let root = tempfile::tempdir().unwrap();
        let (dir, info) = backup(root.path(), &[("PG_VERSION", b"15\n", b"15\n")]);
        let r = generate_manifest(&dir, &info).unwrap();
        assert_eq!((r.files, r.bytes), (1, 3));
        let text = std::fs::read_to_string(dir.manifest_path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["Files"][0]["Path"], "PG_VERSION");
        assert_eq!(
            v["Files"][0]["Checksum"],
            hex(&Sha256::digest(b"15\n")),
            "{text}"
        );
        assert_eq!(v["WAL-Ranges"][0]["Start-LSN"], "0/2000028");
        let cut = text[..text.len() - 1].rfind('\n').unwrap() + 1;
        assert_eq!(
            v["Manifest-Checksum"],
            hex(&Sha256::digest(&text.as_bytes()[..cut]))
        );
        assert!(matches!(
            generate_manifest(&dir, &info),
            Err(ManifestError::Exists(_))
        ));
    }

    #[test]
    fn bundled_and_empty_files_of_a_streamed_backup_are_listed() {
        let root = tempfile::tempdir().unwrap();
        let (dir, info) = backup(root.path(), &[("PG_VERSION", b"15\n", b"15\n")]);
        let frame = zstd::bulk::compress(b"small", 1).unwrap();
        std::fs::create_dir_all(dir.root().join("bundles")).unwrap();
        let mut bundle = vec![0u8; 3];
        bundle.extend_from_slice(&frame);
        std::fs::write(dir.root().join("bundles/000001.zst"), &bundle).unwrap();
        let mut list = std::fs::read_to_string(dir.files_path()).unwrap();
        for (path, size, object, offset) in [
            ("bundled", 5, Some("bundles/000001.zst"), Some(3)),
            ("empty", 0, None, None),
        ] {
            let content: &[u8] = if size == 0 { b"" } else { b"small" };
            let e = FileEntry {
                path: path.into(),
                tablespace: None,
                kind: FileKind::File,
                mode: 0o600,
                mtime: 1_700_000_000,
                size,
                checksum: Some(blake3::hash(content).to_hex().to_string()),
                object: object.map(str::to_string),
                compression: object.map(|_| "zstd".to_string()),
                stored_size: frame.len() as u64,
                stored_checksum: None,
                offset,
                length: offset.map(|_| frame.len() as u64),
                in_backup: None,
                target: None,
            };
            list.push_str(&serde_json::to_string(&e).unwrap());
            list.push('\n');
        }
        std::fs::write(dir.files_path(), list).unwrap();
        let r = generate_manifest(&dir, &info).unwrap();
        assert_eq!((r.files, r.bytes), (3, 8));
        let text = std::fs::read_to_string(dir.manifest_path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["Files"][1]["Checksum"], hex(&Sha256::digest(b"small")));
        assert_eq!(v["Files"][2]["Checksum"], hex(&Sha256::digest(b"")));
    }

    #[test]
    fn a_file_that_differs_from_files_jsonl_leaves_no_manifest() {
        let root = tempfile::tempdir().unwrap();
        let (dir, info) = backup(
            root.path(),
            &[("PG_VERSION", b"15\n", b"15\n"), ("a", b"xyz", b"xyw")],
        );
        let e = generate_manifest(&dir, &info).unwrap_err();
        assert!(
            matches!(&e, ManifestError::Mismatch { path, what: "checksum" } if path == "a"),
            "{e}"
        );
        assert!(!dir.manifest_path().exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.root())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
