//! Resuming an interrupted streamed backup (`backup --resume`).
//!
//! While a streamed backup runs, its writer appends one files.jsonl line to the
//! backup's `resume.jsonl` (a local file under the home, whatever the store) as each
//! file with an object of its own is complete: the journal. A backup that fails or
//! is killed becomes `FAILED` but keeps the objects its journal names (and only
//! those). `backup --resume` takes it up again in place: same id and folder, a new
//! BASE_BACKUP (new label and begin LSN: the server sends every file again). A file
//! the journal names with the same path and size is read into a spool while it is
//! hashed; when its BLAKE3 is the journaled one and the old object reads back with
//! its recorded size and stored checksum, the object is kept (nothing compressed,
//! written or uploaded), else it is stored again from the spool.
//!
//! Journal lines are flushed, not fsynced: a lost or torn line only means less reuse,
//! since every reused object is read back and verified first. Small files (stored
//! in bundles) are not journaled: they are stored again, in new bundles.
//!
//! The journal only names files of at least [`super::bundle::SMALL_FILE`] bytes, so
//! the map a resume holds in memory stays small next to the data it stands for.

use super::bundle::is_bundled;
use super::object_file::StoreError;
use super::{BackupDir, BackupError, BackupInfo, BackupStatus, FileEntry};
use crate::error::{IoError, IoResultExt};
use crate::repo::durable::{remove_durable, remove_stale_temp_files};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The journal's name in the backup folder.
pub const JOURNAL: &str = "resume.jsonl";

/// Bytes of a file's content kept in memory while it is compared; beyond, an
/// unnamed temporary file under the backup folder.
const SPOOL_IN_MEMORY: usize = 4 << 20;

/// Which interrupted backup a backup takes up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ResumePlan {
    /// A new backup; an interrupted backup's kept files are removed first.
    #[default]
    Off,
    /// `--resume`: the newest resumable backup; refused when there is none.
    Newest,
    /// `--resume ID`: that backup.
    Named(String),
    /// `backup_resume = on`: the newest resumable backup, else a new backup.
    IfAny,
}

/// The journal of backup `dir`.
pub fn journal_path(dir: &BackupDir) -> PathBuf {
    dir.root().join(JOURNAL)
}

/// Whether a backup that stopped can be resumed: taken by BASE_BACKUP, with a
/// journal naming stored files.
pub fn is_resumable(dir: &BackupDir, info: &BackupInfo) -> bool {
    info.method == "postgres"
        && info.status != BackupStatus::Done
        && std::fs::metadata(journal_path(dir)).is_ok_and(|m| m.len() > 0)
}

/// The backup `plan` takes up among a server's backups (oldest first), if any;
/// the refusal in one line otherwise.
pub fn pick<'a>(
    server: &str,
    plan: &ResumePlan,
    repo: &crate::repo::ServerRepo,
    existing: &'a [BackupInfo],
    system_id: crate::wal::SystemId,
) -> Result<Option<&'a BackupInfo>, String> {
    let resumable = |b: &BackupInfo| {
        b.status == BackupStatus::Failed && is_resumable(&BackupDir::new(repo, &b.backup_id), b)
    };
    let found = match plan {
        ResumePlan::Off => return Ok(None),
        ResumePlan::Newest | ResumePlan::IfAny => existing.iter().rev().find(|b| resumable(b)),
        ResumePlan::Named(wanted) => {
            let b = existing
                .iter()
                .find(|b| &b.backup_id == wanted || b.name.as_deref() == Some(wanted))
                .ok_or_else(|| {
                    format!("server '{server}': nothing to resume: no backup '{wanted}'")
                })?;
            if !resumable(b) {
                return Err(format!(
                    "server '{server}': nothing to resume: backup {} is {} and kept no stored files \
                     (only a streamed backup interrupted while storing them can be resumed)",
                    b.backup_id, b.status
                ));
            }
            Some(b)
        }
    };
    let Some(b) = found else {
        return match plan {
            ResumePlan::IfAny => Ok(None),
            _ => Err(format!(
                "server '{server}': nothing to resume: no FAILED backup kept stored files \
                 (only a streamed backup interrupted while storing them can be resumed)"
            )),
        };
    };
    if b.system_id != system_id {
        return Err(format!(
            "server '{server}': backup {} cannot be resumed: it is of another cluster (system id {}, the server's is {system_id})",
            b.backup_id, b.system_id
        ));
    }
    if let Some(later) = existing
        .iter()
        .find(|o| o.backup_id > b.backup_id && o.status != BackupStatus::Failed)
    {
        return Err(format!(
            "server '{server}': backup {} cannot be resumed: backup {} was taken after it",
            b.backup_id, later.backup_id
        ));
    }
    Ok(Some(b))
}

/// The lines of a backup's journal worth reusing, the last one per file: files
/// with an object of their own and both checksums. A line that does not parse (torn
/// by a crash) is skipped.
fn read_journal(dir: &BackupDir) -> Result<HashMap<Key, FileEntry>, BackupError> {
    let path = journal_path(dir);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(IoError::new(&path, e).into()),
    };
    let mut out = HashMap::new();
    for line in super::json_lines::<FileEntry>(io::BufReader::new(f), path.clone()) {
        match line {
            Ok(e) if e.offset.is_none() && e.checksum.is_some() && e.stored_checksum.is_some() => {
                if e.object.is_some() {
                    out.insert((e.tablespace, e.path.clone()), e);
                }
            }
            Ok(_) => {}
            Err(BackupError::Corrupt { message, .. }) => {
                tracing::debug!("{}: {message}: skipped", path.display());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A file: its tablespace (`None`: the data directory) and path.
type Key = (Option<u32>, String);

/// Removes every object of backup `dir` but `backup.json` and those in `keep`
/// (paths relative to the backup folder), and the local leftovers of its run
/// (temporary files, file lists not yet uploaded).
fn prune(dir: &BackupDir, keep: &HashSet<String>) -> Result<(), BackupError> {
    dir.delete_objects_but(&|rel| rel == "backup.json" || rel == JOURNAL || keep.contains(rel))?;
    let root = dir.root();
    remove_stale_temp_files(root).at(root)?;
    if dir.is_remote() {
        for f in [
            dir.files_path(),
            dir.manifest_path(),
            root.join(super::bundle::LIST),
        ] {
            remove_durable(&f).at(&f)?;
        }
    }
    Ok(())
}

/// What a failed backup keeps for `--resume`: the objects its journal names, and
/// the journal; everything else of it is removed.
pub fn keep_for_resume(dir: &BackupDir) -> Result<(), BackupError> {
    let keep = read_journal(dir)?
        .into_values()
        .filter_map(|e| e.object)
        .collect();
    prune(dir, &keep)
}

/// Removes the journal of a backup whose files are all stored and listed.
pub fn forget(dir: &BackupDir) {
    let path = journal_path(dir);
    if let Err(e) = remove_durable(&path) {
        tracing::warn!("{}: {e}", path.display());
    }
}

/// What to do with a file of the stream.
pub(super) enum Check {
    /// The interrupted run's object holds this very content: the entry to record.
    Reused(FileEntry),
    /// Not reusable; its content, read already, to store from here.
    Spooled(tempfile::SpooledTempFile),
    /// Not journaled: store it from the stream.
    Stream,
}

/// What a streamed backup knows for resuming: the journal it appends to, and what an
/// interrupted run of it left that it may reuse.
pub struct Session {
    dir: BackupDir,
    path: PathBuf,
    journal: Mutex<BufWriter<File>>,
    /// The interrupted run's files not met in the stream yet.
    old: Mutex<HashMap<Key, FileEntry>>,
    reused_bytes: AtomicU64,
    reused_files: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("backup", &self.dir.id())
            .field("reused_bytes", &self.reused_bytes())
            .finish_non_exhaustive()
    }
}

/// Opens the journal for appending (0600), ending a line a crash tore first so the
/// next line parses.
fn open_journal(path: &PathBuf) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    let len = f.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
        }
    }
    Ok(f)
}

impl Session {
    fn new(dir: &BackupDir, old: HashMap<Key, FileEntry>) -> Result<Session, BackupError> {
        let path = journal_path(dir);
        let f = open_journal(&path).at(&path)?;
        Ok(Session {
            dir: dir.clone(),
            path,
            journal: Mutex::new(BufWriter::new(f)),
            old: Mutex::new(old),
            reused_bytes: AtomicU64::new(0),
            reused_files: AtomicU64::new(0),
        })
    }

    /// A new backup: nothing to reuse, a journal started.
    pub fn start(dir: &BackupDir) -> Result<Session, BackupError> {
        Session::new(dir, HashMap::new())
    }

    /// Takes up backup `dir` again: its journal read, and every object of it the
    /// journal does not name removed (a file cut short, the old bundles and lists).
    pub fn resume(dir: &BackupDir) -> Result<Session, BackupError> {
        let old = read_journal(dir)?;
        let keep = old.values().filter_map(|e| e.object.clone()).collect();
        prune(dir, &keep)?;
        tracing::info!(
            backup = %dir.id(),
            "resuming: {} stored file(s) of the interrupted run may be reused",
            old.len()
        );
        Session::new(dir, old)
    }

    /// Uncompressed bytes of the files reused so far.
    pub fn reused_bytes(&self) -> u64 {
        self.reused_bytes.load(Ordering::Relaxed)
    }

    /// Files reused so far.
    pub fn reused_files(&self) -> u64 {
        self.reused_files.load(Ordering::Relaxed)
    }

    /// Appends a file whose object is complete (an object of its own) to the journal.
    pub(super) fn record(&self, e: &FileEntry) -> Result<(), StoreError> {
        if e.object.is_none() || e.offset.is_some() {
            return Ok(());
        }
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        e.write_line(&mut *j)
            .and_then(|()| j.flush())
            .at(&self.path)?;
        Ok(())
    }

    /// Whether the file `meta` (its `size` bytes in `src`, to be stored as `object`)
    /// is one the interrupted run stored: read and hashed, then its old object
    /// verified. An old object that is not reused is removed, so the file can be
    /// stored in its place. A relation file of a block-map backup (`hashes`) gets
    /// its blocks' checksums when it is reused (a spooled one is hashed as stored).
    pub(super) fn check(
        &self,
        src: &mut dyn Read,
        size: u64,
        meta: &FileEntry,
        object: &str,
        archive: &str,
        hashes: Option<&mut Vec<super::block_map::BlockHash>>,
    ) -> Result<Check, StoreError> {
        let key = (meta.tablespace, meta.path.clone());
        let old = self
            .old
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let Some(old) = old else {
            return Ok(Check::Stream);
        };
        if old.size != size || old.object.as_deref() != Some(object) || is_bundled(size) {
            self.remove(&old)?;
            return Ok(Check::Stream);
        }
        let root = self.dir.root();
        let mut spool = tempfile::spooled_tempfile_in(SPOOL_IN_MEMORY, root);
        let mut hasher = blake3::Hasher::new();
        let mut tree = hashes
            .is_some()
            .then(|| (super::block_map::BlockTree::new(size), Vec::new()));
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            src.read_exact(&mut buf[..n]).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    StoreError::Aborted
                } else {
                    StoreError::Invalid(format!("archive {archive}: {e}"))
                }
            })?;
            match tree.as_mut() {
                Some((t, h)) => {
                    h.extend(buf[..n].chunks(super::block_map::BLCKSZ).map(|b| t.push(b)))
                }
                None => {
                    hasher.update(&buf[..n]);
                }
            }
            spool.write_all(&buf[..n]).at(root)?;
            left -= n as u64;
        }
        let (sum, blocks) = match tree {
            Some((t, h)) => (t.finalize(), Some(h)),
            None => (hasher.finalize(), None),
        };
        let sum = sum.to_hex().to_string();
        if old.checksum.as_deref() == Some(sum.as_str()) {
            match self.verify(&old) {
                Ok(()) => {
                    if let (Some(out), Some(blocks)) = (hashes, blocks) {
                        out.extend(blocks);
                    }
                    self.reused_bytes.fetch_add(size, Ordering::Relaxed);
                    self.reused_files.fetch_add(1, Ordering::Relaxed);
                    return Ok(Check::Reused(FileEntry {
                        size,
                        checksum: Some(sum),
                        object: old.object,
                        compression: old.compression,
                        stored_size: old.stored_size,
                        stored_checksum: old.stored_checksum,
                        offset: None,
                        length: None,
                        ..meta.clone()
                    }));
                }
                Err(why) => tracing::warn!(
                    backup = %self.dir.id(),
                    "{}: {why}; storing '{}' again",
                    self.dir.describe(object),
                    meta.path
                ),
            }
        }
        self.remove(&old)?;
        spool.seek(SeekFrom::Start(0)).at(root)?;
        Ok(Check::Spooled(spool))
    }

    /// Reads the old object back: its size and BLAKE3 must be the journaled ones.
    fn verify(&self, old: &FileEntry) -> Result<(), String> {
        let rel = old.object.as_deref().unwrap_or_default();
        let mut r = self.dir.open_object(rel).map_err(|e| e.to_string())?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut len = 0u64;
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    len += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        if len != old.stored_size {
            return Err(format!("{len} bytes stored, {} recorded", old.stored_size));
        }
        let got = hasher.finalize().to_hex().to_string();
        if old.stored_checksum.as_deref() != Some(got.as_str()) {
            return Err("its checksum is not the one recorded".into());
        }
        Ok(())
    }

    /// Removes an old object that is not reused.
    fn remove(&self, old: &FileEntry) -> Result<(), StoreError> {
        let Some(rel) = old.object.as_deref() else {
            return Ok(());
        };
        self.dir
            .store()
            .delete(&[self.dir.key(rel)])
            .map_err(|e| StoreError::Upload(Box::new(e)))
    }

    /// Once the stream is stored: removes the interrupted run's objects of files
    /// the server no longer sent.
    pub fn finish(&self) -> Result<(), BackupError> {
        let left: Vec<FileEntry> = self
            .old
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, e)| e)
            .collect();
        let keys: Vec<String> = left
            .iter()
            .filter_map(|e| e.object.as_deref())
            .map(|rel| self.dir.key(rel))
            .collect();
        for batch in keys.chunks(1000) {
            self.dir
                .store()
                .delete(batch)
                .map_err(|e| BackupError::Store(Box::new(e)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ServerRepo;
    use crate::wal::SystemId;
    use chrono::Utc;

    fn entry(path: &str, object: Option<&str>) -> FileEntry {
        FileEntry {
            size: 300_000,
            checksum: Some("c".into()),
            object: object.map(str::to_string),
            stored_size: 10,
            stored_checksum: Some("s".into()),
            ..FileEntry::bare(path.into(), None, super::super::FileKind::File, 0o600, 0)
        }
    }

    #[test]
    fn a_torn_journal_line_costs_only_that_file() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(tmp.path(), "pg1");
        let dir = BackupDir::new(&repo, "20260101T000000");
        std::fs::create_dir_all(dir.root()).unwrap();
        let s = Session::start(&dir).unwrap();
        s.record(&entry("base/1/1", Some("data/base/1/1.zst")))
            .unwrap();
        // Bundled and object-less entries are not journaled.
        let mut bundled = entry("base/1/2", Some("bundles/000001.zst"));
        bundled.offset = Some(0);
        s.record(&bundled).unwrap();
        s.record(&entry("base/1/3", None)).unwrap();
        drop(s);
        // A crash tore the next line; the run after appends on a line of its own.
        let path = journal_path(&dir);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"path\":\"base/1/4\",\"ki").unwrap();
        drop(f);
        let s = Session::start(&dir).unwrap();
        s.record(&entry("base/1/5", Some("data/base/1/5.zst")))
            .unwrap();
        drop(s);
        let read = read_journal(&dir).unwrap();
        let mut paths: Vec<&str> = read.keys().map(|(_, p)| p.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["base/1/1", "base/1/5"]);
    }

    #[test]
    fn only_an_interrupted_backup_with_stored_files_is_resumed() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(tmp.path(), "pg1");
        let backup = |id: &str, status| BackupInfo {
            status,
            system_id: SystemId(7),
            ..BackupInfo::new(id, "pg1", Utc::now())
        };
        let failed = backup("20260101T000000", BackupStatus::Failed);
        let dir = BackupDir::new(&repo, &failed.backup_id);
        std::fs::create_dir_all(dir.root()).unwrap();
        let mut all = vec![failed.clone()];
        let newest = pick("pg1", &ResumePlan::Newest, &repo, &all, SystemId(7));
        assert!(newest.unwrap_err().contains("nothing to resume"));
        assert_eq!(
            pick("pg1", &ResumePlan::IfAny, &repo, &all, SystemId(7)).unwrap(),
            None
        );
        Session::start(&dir)
            .unwrap()
            .record(&entry("base/1/1", Some("data/base/1/1.zst")))
            .unwrap();
        let got = pick("pg1", &ResumePlan::Newest, &repo, &all, SystemId(7)).unwrap();
        assert_eq!(got.map(|b| b.backup_id.as_str()), Some("20260101T000000"));
        let other = pick("pg1", &ResumePlan::Newest, &repo, &all, SystemId(8));
        assert!(other.unwrap_err().contains("another cluster"));
        let named = ResumePlan::Named("20260101T000000".into());
        assert!(pick("pg1", &named, &repo, &all, SystemId(7)).is_ok());
        all.push(backup("20260102T000000", BackupStatus::Done));
        let later = pick("pg1", &named, &repo, &all, SystemId(7));
        assert!(later.unwrap_err().contains("taken after it"));
        assert_eq!(
            pick("pg1", &ResumePlan::Off, &repo, &all, SystemId(7)).unwrap(),
            None
        );
    }
}
