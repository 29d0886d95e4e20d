//! Tar members → stored files: the blocking half of a streamed backup.
//!
//! The protocol task hands the archives' bytes over a bounded channel as they
//! arrive ([`StreamMsg`]). This side parses the tar stream, and for every member:
//! a directory is created (0700) under `data/` (or `tablespaces/<oid>/`) and
//! recorded; a symlink is only recorded; a regular file is cut into chunks, each
//! compressed into an independent zstd frame on the rayon pool, and a writer thread
//! writes the frames in order to `<path>.zst` (0600) while the checksum of the
//! content is computed on the way (and the writer hashes the frames it writes: the
//! object checksum a peer verifies a copy against). `files.jsonl` is written as entries complete and
//! `backup_manifest` as it arrives, both under temporary names until [`Stored::commit`].
//!
//! Memory stays bounded: a byte budget caps the uncompressed chunks in flight
//! (being compressed or waiting to be written), whatever the size of the files.
//!
//! Nothing from the stream is trusted: absolute paths, `..` and empty components
//! are refused (`.` components are dropped), symlinks are never created, an existing file is never
//! overwritten.

use super::block_map::{self, BlockDiff, BlockHash, BLCKSZ};
use super::bundle::{is_bundled, BundleWriter, Closed};
pub use super::object_file::StoreError;
pub(super) use super::object_file::{create_file, start_file_writeback};
use super::object_upload::{Streamed, Uploads, WHOLE_UP_TO};
use super::{BackupDir, FileEntry, FileKind};
use crate::error::IoResultExt;
use crate::progress::Progress;
use crate::repo::compress::CHUNK_SIZE;
use crate::repo::durable::{create_dir_all_private, AtomicFile};
use bytes::{Buf, Bytes};
use std::cell::RefCell;
use std::fs::{DirBuilder, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};

/// What the protocol task sends to the store, in stream order.
#[derive(Debug)]
pub enum StreamMsg {
    /// A tar archive starts (`base.tar`, `<oid>.tar`).
    Archive { name: String, location: String },
    /// Bytes of the current archive.
    Data(Bytes),
    /// Consecutive pieces of the current archive, handed on together so a fast
    /// stream costs one wake-up of the tar thread per batch, not per message.
    Batch(Vec<Bytes>),
    /// `backup_manifest` follows.
    ManifestStart,
    /// Bytes of `backup_manifest`.
    ManifestData(Bytes),
    /// Files unchanged since an earlier backup stored them, between archives:
    /// their entries point to that backup's objects (`in_backup`) and are recorded
    /// as they are, nothing stored (an rsync backup on object storage).
    Referenced(Vec<FileEntry>),
    /// The server confirmed the end of the backup.
    End,
}

fn upload_err(e: super::BackupError) -> StoreError {
    match e {
        super::BackupError::Store(e) => StoreError::Upload(e),
        super::BackupError::Io(e) => StoreError::Io(e),
        other => StoreError::Invalid(other.to_string()),
    }
}

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// zstd level.
    pub level: i32,
    /// Uncompressed bytes per frame.
    pub chunk_size: usize,
    /// Uncompressed bytes allowed in flight between the tar reader and the writer.
    pub in_flight: usize,
    /// A streamed backup's journal, and what an interrupted run of it left to reuse.
    pub resume: Option<std::sync::Arc<super::resume::Session>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            level: crate::repo::compress::DEFAULT_LEVEL,
            chunk_size: CHUNK_SIZE,
            in_flight: 64 * 1024 * 1024,
            resume: None,
        }
    }
}

/// Every file is stored; what remains is making it durable ([`Stored::commit`]).
pub struct Stored {
    /// Uncompressed bytes of all regular files.
    pub size_bytes: u64,
    /// Bytes of their stored objects.
    pub stored_bytes: u64,
    /// Regular files.
    pub file_count: u64,
    /// Tablespace archives received (oid, location).
    pub tablespaces: Vec<(u32, String)>,
    dir: BackupDir,
    files: AtomicFile,
    bundles: Option<AtomicFile>,
    manifest: Option<AtomicFile>,
    /// `blocks.map` (PostgreSQL 15/16) and its BLAKE3.
    block_map: Option<(AtomicFile, String)>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("size_bytes", &self.size_bytes)
            .field("stored_bytes", &self.stored_bytes)
            .field("file_count", &self.file_count)
            .field("tablespaces", &self.tablespaces)
            .finish_non_exhaustive()
    }
}

impl Stored {
    /// Whether the server sent a manifest.
    pub fn has_manifest(&self) -> bool {
        self.manifest.is_some()
    }

    /// The BLAKE3 of the backup's `blocks.map`, when one was recorded.
    pub fn block_map(&self) -> Option<&str> {
        self.block_map.as_ref().map(|(_, sum)| sum.as_str())
    }

    /// Flushes every stored file to disk at once (`syncfs` on the backup's
    /// filesystem rather than an fsync per file), then puts `files.jsonl` and
    /// `backup_manifest` in place atomically and durably. On object storage the
    /// files are already stored (each upload completed), and the two lists go up.
    pub fn commit(self) -> Result<(), StoreError> {
        let remote = self.dir.is_remote();
        if !remote {
            let root = self.dir.root();
            sync_filesystem(root).at(root)?;
        }
        if let Some(b) = self.bundles {
            let path = b.dest().to_path_buf();
            b.commit().at(&path)?;
            self.dir.upload_local("bundles.jsonl").map_err(upload_err)?;
        }
        if let Some((m, _)) = self.block_map {
            let path = m.dest().to_path_buf();
            m.commit().at(&path)?;
            self.dir.upload_local(block_map::NAME).map_err(upload_err)?;
        }
        let files = self.files.dest().to_path_buf();
        self.files.commit().at(&files)?;
        if let Some(m) = self.manifest {
            let path = m.dest().to_path_buf();
            m.commit().at(&path)?;
            self.dir
                .upload_local("backup_manifest")
                .map_err(upload_err)?;
        }
        self.dir.upload_local("files.jsonl").map_err(upload_err)
    }
}

/// `syncfs(2)` on the filesystem holding `path`: writes back every dirty file and
/// directory of it and reports write-back errors.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: syncfs on a valid descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks a member name from the stream and returns it as a relative path.
pub fn safe_path(raw: &[u8]) -> Result<String, StoreError> {
    let shown = || String::from_utf8_lossy(raw).escape_debug().to_string();
    let s = std::str::from_utf8(raw)
        .map_err(|_| StoreError::Invalid(format!("member name \"{}\" is not UTF-8", shown())))?;
    let s = s.trim_end_matches('/');
    if s.is_empty() || s.starts_with('/') {
        return Err(StoreError::Invalid(format!(
            "refusing member name \"{}\" (empty or absolute)",
            shown()
        )));
    }
    // PostgreSQL itself writes `./pg_wal/archive_status`: `.` components are dropped.
    let parts: Vec<&str> = s.split('/').filter(|c| *c != ".").collect();
    if parts.is_empty() || parts.iter().any(|c| c.is_empty() || *c == "..") {
        return Err(StoreError::Invalid(format!(
            "refusing member name \"{}\" (empty or '..' component)",
            shown()
        )));
    }
    Ok(parts.join("/"))
}

/// Where an archive's members go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Base,
    Tablespace(u32),
}

fn archive_target(name: &str) -> Result<Target, StoreError> {
    if name == "base.tar" {
        return Ok(Target::Base);
    }
    name.strip_suffix(".tar")
        .and_then(|oid| oid.parse::<u32>().ok())
        .filter(|oid| *oid > 0)
        .map(Target::Tablespace)
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "unexpected archive \"{}\" (expected base.tar or <oid>.tar)",
                name.escape_debug()
            ))
        })
}

/// Caps the uncompressed bytes in flight; closed when the writer ends.
struct Budget {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget {
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
            limit,
        }
    }
    /// Waits for room for `n` bytes; false once the writer is gone.
    fn acquire(&self, n: usize) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.1 && s.0 > 0 && s.0 + n > self.limit {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.1 {
            return false;
        }
        s.0 += n;
        true
    }
    fn release(&self, n: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = s.0.saturating_sub(n);
        self.cv.notify_all();
    }
    fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 = true;
        self.cv.notify_all();
    }
}

struct CloseOnDrop<'a>(&'a Budget);
impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Bytes a small job is charged, so millions of tiny files stay bounded too.
const MIN_CHARGE: usize = 4096;

/// Work for the writer, in stream order.
enum Job {
    Dir {
        disk: PathBuf,
        entry: FileEntry,
    },
    Symlink {
        entry: FileEntry,
    },
    FileStart {
        disk: PathBuf,
        /// The object's path in the backup (`data/<path>.zst`).
        object: String,
        size: u64,
    },
    Chunk {
        frame: mpsc::Receiver<io::Result<Vec<u8>>>,
        raw: usize,
        charge: usize,
    },
    FileEnd {
        entry: FileEntry,
    },
    /// Bytes of the stream a block-map incremental compared and left out: counted
    /// in the progress only.
    Compared {
        bytes: u64,
    },
    /// A file whose object an interrupted run stored (`backup --resume`), or
    /// another backup holds (`in_backup`).
    Reused {
        entry: FileEntry,
    },
}

/// The archive bytes of the channel as a `Read`, stopping at the next control message.
struct Feed {
    rx: tokio::sync::mpsc::Receiver<StreamMsg>,
    cur: Bytes,
    queued: std::collections::VecDeque<Bytes>,
    pending: Option<StreamMsg>,
    boundary: bool,
    closed: bool,
}

impl Feed {
    fn next_msg(&mut self) -> Option<StreamMsg> {
        if let Some(m) = self.pending.take() {
            return Some(m);
        }
        if self.closed {
            return None;
        }
        let m = self.rx.blocking_recv();
        if m.is_none() {
            self.closed = true;
        }
        m
    }
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.cur.is_empty() {
                let n = buf.len().min(self.cur.len());
                buf[..n].copy_from_slice(&self.cur[..n]);
                self.cur.advance(n);
                return Ok(n);
            }
            if let Some(b) = self.queued.pop_front() {
                self.cur = b;
                continue;
            }
            if self.boundary || buf.is_empty() {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(StreamMsg::Data(b)) => self.cur = b,
                Some(StreamMsg::Batch(v)) => self.queued.extend(v),
                Some(other) => {
                    self.pending = Some(other);
                    self.boundary = true;
                }
                None => {
                    self.closed = true;
                    self.boundary = true;
                }
            }
        }
    }
}

fn compress_frame(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    type Ctx = (i32, zstd::bulk::Compressor<'static>, Vec<u8>);
    thread_local! {
        static CCTX: RefCell<Option<Ctx>> = const { RefCell::new(None) };
    }
    CCTX.with(|slot| {
        let mut slot = slot.borrow_mut();
        if !matches!(slot.as_ref(), Some((l, _, _)) if *l == level) {
            // No zstd frame checksum: files.jsonl's BLAKE3 of the content is what
            // verify-backup, recover and replicate check, and a second hash of
            // every byte (XXH64) cost a quarter of the compression time.
            let mut c = zstd::bulk::Compressor::new(level)?;
            c.include_checksum(false)?;
            *slot = Some((level, c, Vec::new()));
        }
        let Some((_, c, out)) = slot.as_mut() else {
            return Err(io::Error::other("no zstd context"));
        };
        // One output buffer per thread, reused: only the frame itself is copied out.
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        c.compress_to_buffer(data, out)?;
        Ok(out.clone())
    })
}

/// Receives the whole stream and stores it under `dir`. Returns once the
/// protocol task sent [`StreamMsg::End`]; [`StoreError::Aborted`] if the channel
/// closes before. With `blocks` (PostgreSQL 15/16), relation files are hashed
/// block by block into the backup's map, and against a parent's map only their
/// changed blocks are stored.
pub fn store_stream(
    rx: tokio::sync::mpsc::Receiver<StreamMsg>,
    dir: &BackupDir,
    pool: &rayon::ThreadPool,
    opts: &StoreOptions,
    progress: &dyn Progress,
    blocks: Option<BlockDiff>,
) -> Result<Stored, StoreError> {
    let data = dir.data_dir();
    if dir.is_remote() {
        create_dir_all_private(dir.root()).at(dir.root())?;
    } else {
        create_dir_all_private(&data).at(&data)?;
    }
    let files_path = dir.files_path();
    let files = AtomicFile::create(&files_path).at(&files_path)?;
    let budget = Budget::new(opts.in_flight.max(opts.chunk_size + MIN_CHARGE));
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let mut feed = Feed {
        rx,
        cur: Bytes::new(),
        queued: Default::default(),
        pending: None,
        boundary: false,
        closed: false,
    };
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("pgbk-writer".into())
            .spawn_scoped(scope, || {
                let resume = opts.resume.as_deref();
                write_jobs(dir, jobs_rx, files, &files_path, &budget, progress, resume)
            })
            .at(&files_path)?;
        let (spare_tx, spare) = mpsc::channel();
        let mut reader = Reader {
            dir,
            pool,
            opts,
            budget: &budget,
            jobs: jobs_tx,
            manifest: None,
            tablespaces: Vec::new(),
            spare,
            spare_tx,
            blocks,
        };
        let read = reader.run(&mut feed);
        let Reader {
            jobs,
            manifest,
            tablespaces,
            blocks,
            ..
        } = reader;
        drop(jobs);
        if read.is_err() {
            // Unblock nothing else: the writer ends when the job channel closes.
            budget.close();
        }
        let written = match writer.join() {
            Ok(w) => w,
            Err(_) => Err(StoreError::Invalid("the writer thread panicked".into())),
        };
        match (read, written) {
            // The writer's own failure (disk full...) explains the reader's.
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok(w)) => Ok(Stored {
                block_map: match blocks {
                    Some(b) => Some(b.map.finish()?),
                    None => None,
                },
                size_bytes: w.size,
                stored_bytes: w.stored,
                file_count: w.count,
                tablespaces,
                dir: dir.clone(),
                files: w.files,
                bundles: w.bundles,
                manifest,
            }),
        }
    })
}

struct Reader<'a> {
    dir: &'a BackupDir,
    pool: &'a rayon::ThreadPool,
    opts: &'a StoreOptions,
    budget: &'a Budget,
    jobs: mpsc::Sender<Job>,
    manifest: Option<AtomicFile>,
    tablespaces: Vec<(u32, String)>,
    /// Chunk buffers back from compression, for reuse.
    spare: mpsc::Receiver<Vec<u8>>,
    spare_tx: mpsc::Sender<Vec<u8>>,
    blocks: Option<BlockDiff>,
}

impl Reader<'_> {
    fn send(&self, job: Job) -> Result<(), StoreError> {
        // A closed channel means the writer failed; its error is the one reported.
        self.jobs.send(job).map_err(|_| StoreError::Aborted)
    }

    fn run(&mut self, feed: &mut Feed) -> Result<(), StoreError> {
        let mut base_seen = false;
        loop {
            match feed.next_msg() {
                None => return Err(StoreError::Aborted),
                Some(StreamMsg::Archive { name, location }) => {
                    if self.manifest.is_some() {
                        return Err(StoreError::Invalid("an archive after the manifest".into()));
                    }
                    let target = archive_target(&name)?;
                    match target {
                        Target::Tablespace(oid)
                            if !self.tablespaces.iter().any(|(o, _)| *o == oid) =>
                        {
                            self.tablespaces.push((oid, location));
                        }
                        Target::Base if !base_seen => base_seen = true,
                        _ => return Err(StoreError::Invalid(format!("archive {name} sent twice"))),
                    }
                    feed.boundary = false;
                    self.archive(feed, &name, target)?;
                }
                Some(StreamMsg::Data(_) | StreamMsg::Batch(_)) => {
                    return Err(StoreError::Invalid(
                        "archive data outside an archive".into(),
                    ))
                }
                Some(StreamMsg::ManifestStart) => {
                    if self.manifest.is_some() {
                        return Err(StoreError::Invalid("a second manifest".into()));
                    }
                    let path = self.dir.manifest_path();
                    self.manifest = Some(AtomicFile::create(&path).at(&path)?);
                }
                Some(StreamMsg::ManifestData(b)) => {
                    let path = self.dir.manifest_path();
                    match self.manifest.as_mut() {
                        Some(m) => m.write_all(&b).at(&path)?,
                        None => {
                            return Err(StoreError::Invalid(
                                "manifest data before the manifest".into(),
                            ))
                        }
                    }
                }
                Some(StreamMsg::Referenced(entries)) => {
                    for entry in entries {
                        let elsewhere = entry
                            .in_backup
                            .as_deref()
                            .is_some_and(|b| b != self.dir.id() && super::is_backup_id(b));
                        if !elsewhere || entry.kind != FileKind::File || entry.object.is_none() {
                            return Err(StoreError::Invalid(format!(
                                "'{}' is not a file of another backup",
                                entry.path
                            )));
                        }
                        self.send(Job::Reused { entry })?;
                    }
                }
                Some(StreamMsg::End) if !base_seen => {
                    return Err(StoreError::Invalid(
                        "the backup ended without base.tar".into(),
                    ))
                }
                Some(StreamMsg::End) => return Ok(()),
            }
        }
    }

    fn archive(&mut self, feed: &mut Feed, name: &str, target: Target) -> Result<(), StoreError> {
        let bad = |e: io::Error| StoreError::Invalid(format!("archive {name}: {e}"));
        let (root, object_prefix, tablespace) = match target {
            Target::Base => (self.dir.data_dir(), "data".to_string(), None),
            Target::Tablespace(oid) => {
                let root = self.dir.tablespace_dir(oid);
                if !self.dir.is_remote() {
                    create_dir_all_private(&root).at(&root)?;
                }
                (root, format!("tablespaces/{oid}"), Some(oid))
            }
        };
        {
            let mut ar = tar::Archive::new(&mut *feed);
            for entry in ar.entries().map_err(bad)? {
                let mut entry = entry.map_err(bad)?;
                let header = entry.header();
                let kind = header.entry_type();
                let mode = header.mode().unwrap_or(0o600) & 0o7777;
                let mtime = header.mtime().unwrap_or(0) as i64;
                let path = safe_path(&entry.path_bytes())?;
                let base = FileEntry::bare(path.clone(), tablespace, FileKind::File, mode, mtime);
                match kind {
                    tar::EntryType::Directory => self.send(Job::Dir {
                        disk: root.join(&path),
                        entry: FileEntry {
                            kind: FileKind::Dir,
                            ..base
                        },
                    })?,
                    tar::EntryType::Symlink => {
                        let target = entry
                            .link_name_bytes()
                            .map(|t| String::from_utf8_lossy(&t).into_owned())
                            .unwrap_or_default();
                        self.send(Job::Symlink {
                            entry: FileEntry {
                                kind: FileKind::Symlink,
                                target: Some(target),
                                ..base
                            },
                        })?
                    }
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        self.regular(&mut entry, &root, &object_prefix, base, name)?;
                    }
                    other => {
                        return Err(StoreError::Invalid(format!(
                            "archive {name}: member \"{}\" has unsupported type {other:?}",
                            path.escape_debug()
                        )))
                    }
                }
            }
        }
        // The two zero blocks that end a tar archive: an archive cut short by a
        // lost connection ends without them.
        if feed.boundary && feed.cur.is_empty() {
            return Err(if feed.closed {
                StoreError::Aborted
            } else {
                StoreError::Invalid(format!("archive {name} ended without a tar end marker"))
            });
        }
        let mut rest = [0u8; 8192];
        loop {
            let n = feed.read(&mut rest).map_err(bad)?;
            if n == 0 {
                break;
            }
            if rest[..n].iter().any(|&b| b != 0) {
                return Err(StoreError::Invalid(format!(
                    "archive {name}: data after the end marker"
                )));
            }
        }
        if feed.closed {
            return Err(StoreError::Aborted);
        }
        Ok(())
    }

    /// A regular file of the stream: stored whole, or (a relation file with a
    /// parent's block map) as an `INCREMENTAL.*` file of its changed blocks.
    fn regular(
        &mut self,
        entry: &mut tar::Entry<'_, &mut Feed>,
        root: &Path,
        prefix: &str,
        meta: FileEntry,
        archive: &str,
    ) -> Result<(), StoreError> {
        let size = entry.size();
        if let Some(hashes) = self.supplied_hashes(&meta) {
            // Built by the reader from the parent's map and the blocks it read:
            // stored as it is, its map recorded for the file it rebuilds.
            let real = block_map::reconstructed_path(&meta.path).unwrap_or_default();
            let whole = hashes.len() as u64 * BLCKSZ as u64;
            self.send(Job::Compared {
                bytes: whole.saturating_sub(size),
            })?;
            let tablespace = meta.tablespace;
            let (disk, object) = (
                root.join(format!("{}.zst", meta.path)),
                format!("{prefix}/{}.zst", meta.path),
            );
            self.file(entry, size, disk, meta, object, archive, None)?;
            if let Some(b) = self.blocks.as_mut() {
                b.map.add(tablespace, &real, &hashes)?;
            }
            return Ok(());
        }
        let relation = self.blocks.is_some()
            && size > 0
            && size % BLCKSZ as u64 == 0
            && block_map::is_relation_file(&meta.path, meta.tablespace);
        if !relation {
            let (disk, object) = (
                root.join(format!("{}.zst", meta.path)),
                format!("{prefix}/{}.zst", meta.path),
            );
            return self.file(entry, size, disk, meta, object, archive, None);
        }
        let (path, tablespace) = (meta.path.clone(), meta.tablespace);
        let parent = match self.blocks.as_ref().and_then(|b| b.parent.as_ref()) {
            Some(p) => p
                .blocks(tablespace, &path)
                .map_err(|e| StoreError::Invalid(format!("reading the parent's block map: {e}")))?,
            None => None,
        };
        let mut hashes: Vec<BlockHash> = Vec::with_capacity((size / BLCKSZ as u64) as usize);
        match parent {
            None => {
                let (disk, object) = (
                    root.join(format!("{path}.zst")),
                    format!("{prefix}/{path}.zst"),
                );
                self.file(entry, size, disk, meta, object, archive, Some(&mut hashes))?;
            }
            Some(old) => {
                let scratch = self
                    .blocks
                    .as_ref()
                    .map(|b| b.scratch.clone())
                    .unwrap_or_default();
                let changed = block_map::diff(entry, size, &old, &mut hashes, &scratch)
                    .map_err(|e| stream_error(e, archive))?;
                let name = block_map::incremental_name(&path);
                let (disk, object) = (
                    root.join(format!("{name}.zst")),
                    format!("{prefix}/{name}.zst"),
                );
                let stored = changed.size();
                self.send(Job::Compared {
                    bytes: size.saturating_sub(stored),
                })?;
                let mut src = changed
                    .into_reader()
                    .map_err(|e| StoreError::Invalid(format!("{name}: {e}")))?;
                let meta = FileEntry { path: name, ..meta };
                self.file(&mut src, stored, disk, meta, object, archive, None)?;
            }
        }
        if let Some(b) = self.blocks.as_mut() {
            b.map.add(tablespace, &path, &hashes)?;
        }
        Ok(())
    }

    /// The block checksums the reader supplied for this `INCREMENTAL.*` member.
    fn supplied_hashes(&self, meta: &FileEntry) -> Option<Vec<BlockHash>> {
        let supplied = self.blocks.as_ref()?.supplied.as_ref()?;
        let real = block_map::reconstructed_path(&meta.path)?;
        let mut map = supplied.lock().ok()?;
        map.remove(&(meta.tablespace.unwrap_or(0), real))
    }

    /// Stores `size` bytes of `src` as one file (an object of zstd frames, or a
    /// piece of a bundle), hashing its blocks into `hashes` when given.
    #[allow(clippy::too_many_arguments)]
    fn file(
        &mut self,
        src: &mut dyn Read,
        size: u64,
        disk: PathBuf,
        mut meta: FileEntry,
        object: String,
        archive: &str,
        mut hashes: Option<&mut Vec<BlockHash>>,
    ) -> Result<(), StoreError> {
        if size == 0 {
            // An empty file has no object: its entry says everything.
            meta.checksum = Some(blake3::hash(b"").to_hex().to_string());
            return self.send(Job::FileEnd { entry: meta });
        }
        // Resuming: a file the interrupted run stored is not stored again.
        let mut spool = None;
        if let Some(resume) = &self.opts.resume {
            use super::resume::Check;
            match resume.check(src, size, &meta, &object, archive, hashes.as_deref_mut())? {
                Check::Reused(entry) => return self.send(Job::Reused { entry }),
                Check::Spooled(s) => spool = Some(s),
                Check::Stream => {}
            }
        }
        let src: &mut dyn Read = match spool.as_mut() {
            Some(s) => s,
            None => src,
        };
        self.send(Job::FileStart {
            disk,
            object: object.clone(),
            size,
        })?;
        let mut hasher = blake3::Hasher::new();
        // A relation file's checksum is built from its blocks' (one pass for both).
        let mut tree = hashes.is_some().then(|| block_map::BlockTree::new(size));
        let mut remaining = size;
        let mut first = true;
        while remaining > 0 || first {
            first = false;
            let n = remaining.min(self.opts.chunk_size as u64) as usize;
            // Large pieces go through recycled buffers (no page faults, no zeroing
            // per chunk); small files get an exact allocation.
            let large = n >= self.opts.chunk_size / 4;
            let charge = if large {
                self.opts.chunk_size
            } else {
                n.max(MIN_CHARGE)
            };
            if !self.budget.acquire(charge) {
                return Err(StoreError::Aborted);
            }
            let mut buf = if large {
                self.spare
                    .try_recv()
                    .unwrap_or_else(|_| vec![0u8; self.opts.chunk_size])
            } else {
                vec![0u8; n]
            };
            if let Err(e) = src.read_exact(&mut buf[..n]) {
                self.budget.release(charge);
                return Err(stream_error(e, archive));
            }
            match (tree.as_mut(), hashes.as_deref_mut()) {
                (Some(t), Some(h)) => h.extend(buf[..n].chunks(BLCKSZ).map(|b| t.push(b))),
                _ => {
                    hasher.update(&buf[..n]);
                }
            }
            let (tx, rx) = mpsc::sync_channel(1);
            let level = self.opts.level;
            let recycle = large.then(|| self.spare_tx.clone());
            self.pool.spawn(move || {
                let _ = tx.send(compress_frame(&buf[..n], level));
                if let Some(r) = recycle {
                    let _ = r.send(buf);
                }
            });
            self.send(Job::Chunk {
                frame: rx,
                raw: n,
                charge,
            })?;
            remaining -= n as u64;
        }
        meta.size = size;
        let checksum = match tree {
            Some(t) => t.finalize(),
            None => hasher.finalize(),
        };
        meta.checksum = Some(checksum.to_hex().to_string());
        meta.object = Some(object);
        meta.compression = Some("zstd".to_string());
        self.send(Job::FileEnd { entry: meta })
    }
}

/// A read of the stream that failed: cut short (the connection ended), or broken.
fn stream_error(e: io::Error, archive: &str) -> StoreError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        StoreError::Aborted
    } else {
        StoreError::Invalid(format!("archive {archive}: {e}"))
    }
}

struct Written {
    files: AtomicFile,
    bundles: Option<AtomicFile>,
    size: u64,
    stored: u64,
    count: u64,
}

/// Stored objects from this size on start their writeback when complete.
const WRITEBACK_FROM: u64 = 256 * 1024;

/// Where the open object's frames go.
enum Out {
    /// A file of the local repository.
    Disk(File, PathBuf),
    /// A small object for the store, uploaded whole once complete.
    Whole(Vec<u8>, String),
    /// A large object streaming to the store.
    Stream(Streamed),
    /// A small file going into the open bundle (its name), from this offset.
    Bundled(String, u64),
    /// No object (an empty file).
    Nothing,
}

fn write_jobs(
    dir: &BackupDir,
    jobs: mpsc::Receiver<Job>,
    files: AtomicFile,
    files_path: &Path,
    budget: &Budget,
    progress: &dyn Progress,
    resume: Option<&super::resume::Session>,
) -> Result<Written, StoreError> {
    let _close = CloseOnDrop(budget);
    let uploads = dir.is_remote().then(|| Uploads::new(dir.shared_store()));
    let upload_failed = |u: Option<&Uploads>| -> StoreError {
        u.map_or(StoreError::Aborted, |_| {
            StoreError::Invalid("an upload to the repository failed".into())
        })
    };
    let mut list = BufWriter::with_capacity(256 * 1024, files);
    let record = |list: &mut BufWriter<AtomicFile>, e: &FileEntry| -> Result<(), StoreError> {
        Ok(e.write_line(list).at(files_path)?)
    };
    // The open object: where it goes, bytes written and the BLAKE3 of those bytes
    // (the object checksum: frames are hashed as written, in order).
    let mut current: Option<(Out, u64, blake3::Hasher)> = None;
    let mut bundles = BundleWriter::new(dir);
    let put_bundle = |u: Option<&Uploads>, closed: Option<Closed>| {
        if let (Some(u), Some(c)) = (u, closed) {
            u.whole(c.key, c.data);
        }
    };
    let (mut size, mut stored, mut count) = (0u64, 0u64, 0u64);
    let mut compared = 0u64;
    let result = (|| {
        for job in jobs {
            if uploads.as_ref().is_some_and(Uploads::has_failed) {
                return Err(upload_failed(uploads.as_ref()));
            }
            match job {
                Job::Dir { disk, entry } => {
                    if uploads.is_none() {
                        DirBuilder::new()
                            .recursive(true)
                            .mode(0o700)
                            .create(&disk)
                            .at(&disk)?;
                    }
                    record(&mut list, &entry)?;
                }
                Job::Symlink { entry } => record(&mut list, &entry)?,
                Job::FileStart {
                    disk,
                    object,
                    size: raw,
                } => {
                    let out = match &uploads {
                        _ if is_bundled(raw) => {
                            let (name, offset) = bundles.start_file()?;
                            Out::Bundled(name, offset)
                        }
                        None => Out::Disk(create_file(&disk).at(&disk)?, disk),
                        Some(_) if raw <= WHOLE_UP_TO => Out::Whole(Vec::new(), dir.key(&object)),
                        Some(u) => Out::Stream(u.stream(dir.key(&object))),
                    };
                    current = Some((out, 0, blake3::Hasher::new()));
                }
                Job::Chunk { frame, raw, charge } => {
                    let Some((out, written, object)) = current.as_mut() else {
                        return Err(StoreError::Invalid("chunk outside a file".into()));
                    };
                    let frame = frame
                        .recv()
                        .map_err(|_| StoreError::Invalid("a compression worker died".into()))?
                        .map_err(|e| StoreError::Invalid(format!("compressing: {e}")))?;
                    object.update(&frame);
                    *written += frame.len() as u64;
                    match out {
                        Out::Disk(f, disk) => f.write_all(&frame).at(disk)?,
                        Out::Whole(buf, _) => buf.extend_from_slice(&frame),
                        Out::Bundled(..) => bundles.write(&frame)?,
                        Out::Nothing => {}
                        Out::Stream(s) => {
                            if !s.write(frame) {
                                // The upload ended early: its own error says why.
                                if let Some((Out::Stream(s), ..)) = current.take() {
                                    s.finish().map_err(|e| StoreError::Upload(Box::new(e)))?;
                                }
                                return Err(upload_failed(uploads.as_ref()));
                            }
                        }
                    }
                    budget.release(charge);
                    size += raw as u64;
                    progress.set(size + compared);
                }
                Job::Compared { bytes } => {
                    compared += bytes;
                    progress.set(size + compared);
                }
                Job::Reused { entry } => {
                    if let Some(r) = resume {
                        r.record(&entry)?;
                    }
                    size += entry.size;
                    // An object of another backup adds nothing to the store.
                    if entry.in_backup.is_none() {
                        stored += entry.stored_size;
                    }
                    count += 1;
                    record(&mut list, &entry)?;
                    progress.set(size + compared);
                }
                Job::FileEnd { mut entry } => {
                    let Some((out, written, object)) = current.take().or_else(|| {
                        // An empty file: no FileStart, no object.
                        (entry.size == 0).then(|| (Out::Nothing, 0, blake3::Hasher::new()))
                    }) else {
                        return Err(StoreError::Invalid("file end outside a file".into()));
                    };
                    let mut closed = None;
                    match out {
                        Out::Nothing => {
                            count += 1;
                            record(&mut list, &entry)?;
                            continue;
                        }
                        Out::Bundled(name, offset) => {
                            entry.object = Some(name);
                            entry.offset = Some(offset);
                            entry.length = Some(written);
                            closed = bundles.end_file()?;
                        }
                        // The disk starts on a large object now, while the stream goes
                        // on, instead of all of it waiting for the final syncfs.
                        Out::Disk(f, _) if written >= WRITEBACK_FROM => start_file_writeback(&f),
                        Out::Disk(..) => {}
                        Out::Whole(buf, key) => {
                            if let Some(u) = &uploads {
                                u.whole(key, buf);
                            }
                        }
                        Out::Stream(s) => {
                            s.finish().map_err(|e| StoreError::Upload(Box::new(e)))?
                        }
                    }
                    entry.stored_size = written;
                    entry.stored_checksum = Some(object.finalize().to_hex().to_string());
                    stored += written;
                    count += 1;
                    record(&mut list, &entry)?;
                    if let Some(r) = resume {
                        r.record(&entry)?;
                    }
                    put_bundle(uploads.as_ref(), closed);
                }
            }
        }
        let last = bundles.close()?;
        put_bundle(uploads.as_ref(), last);
        Ok(())
    })();
    // Every queued upload is waited for, whatever happened: an object is either
    // stored whole or not at all before the backup's status changes.
    drop(current);
    match (result, uploads.map_or(Ok(()), Uploads::finish)) {
        // The store's own answer explains a stop it caused.
        (_, Err(e)) => return Err(StoreError::Upload(Box::new(e))),
        (Err(e), Ok(())) => return Err(e),
        (Ok(()), Ok(())) => {}
    }
    let files = list
        .into_inner()
        .map_err(|e| io::Error::new(e.error().kind(), e.error().to_string()))
        .at(files_path)?;
    let bundle_list = bundles.into_list()?;
    Ok(Written {
        files,
        bundles: bundle_list,
        size,
        stored,
        count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::repo::ServerRepo;

    #[test]
    fn refuses_unsafe_member_names() {
        assert_eq!(safe_path(b"base/1/1234").unwrap(), "base/1/1234");
        assert_eq!(safe_path(b"pg_wal/").unwrap(), "pg_wal");
        assert_eq!(
            safe_path(b"./pg_wal/archive_status/").unwrap(),
            "pg_wal/archive_status"
        );
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"a/../../x",
            b"a//b",
            b"./",
            b".",
            b"",
            b"/",
            b"\xff",
        ] {
            assert!(
                safe_path(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(archive_target("base.tar").unwrap(), Target::Base);
        assert_eq!(
            archive_target("16385.tar").unwrap(),
            Target::Tablespace(16385)
        );
        assert!(archive_target("base.tar.gz").is_err());
        assert!(archive_target("0.tar").is_err());
    }

    fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o700
        } else {
            0o600
        });
        h.set_mtime(1_700_000_000);
        h
    }

    fn run(
        msgs: Vec<StreamMsg>,
        opts: StoreOptions,
    ) -> (tempfile::TempDir, BackupDir, Result<Stored, StoreError>) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(tmp.path(), "pg1");
        let dir = BackupDir::new(&repo, "20260101T000000");
        std::fs::create_dir_all(dir.root()).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let sender = std::thread::spawn(move || {
            for m in msgs {
                if tx.blocking_send(m).is_err() {
                    break;
                }
            }
        });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let r = store_stream(rx, &dir, &pool, &opts, &NoProgress, None);
        sender.join().unwrap();
        (tmp, dir, r)
    }

    /// The archive in pieces, as single `Data` messages and `Batch`es of three in
    /// turn, as the protocol task hands them on.
    fn split(data: Vec<u8>, piece: usize) -> Vec<StreamMsg> {
        let pieces: Vec<Bytes> = data.chunks(piece).map(Bytes::copy_from_slice).collect();
        pieces
            .chunks(3)
            .enumerate()
            .flat_map(|(i, group)| {
                if i % 2 == 1 {
                    vec![StreamMsg::Batch(group.to_vec())]
                } else {
                    group.iter().cloned().map(StreamMsg::Data).collect()
                }
            })
            .collect()
    }

    #[test]
    fn stores_members_as_zstd_files_with_checksums() {
        let big: Vec<u8> = (0..(3 * 1024 * 1024 + 17))
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let base = tar_bytes(|b| {
            b.append_data(&mut header(tar::EntryType::Directory, 0), "base", &[][..])
                .unwrap();
            b.append_data(&mut header(tar::EntryType::Directory, 0), "pg_wal", &[][..])
                .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Regular, big.len() as u64),
                "base/big",
                &big[..],
            )
            .unwrap();
            b.append_data(&mut header(tar::EntryType::Regular, 0), "empty", &[][..])
                .unwrap();
            let mut h = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut h, "pg_tblspc/16385", "/srv/ts").unwrap();
        });
        let ts = tar_bytes(|b| {
            b.append_data(
                &mut header(tar::EntryType::Regular, 5),
                "PG_15_1/5/6",
                &b"hello"[..],
            )
            .unwrap();
        });
        let mut msgs = vec![StreamMsg::Archive {
            name: "16385.tar".into(),
            location: "/srv/ts".into(),
        }];
        msgs.extend(split(ts, 1000));
        msgs.push(StreamMsg::Archive {
            name: "base.tar".into(),
            location: String::new(),
        });
        msgs.extend(split(base, 32 * 1024 + 3));
        msgs.push(StreamMsg::ManifestStart);
        msgs.push(StreamMsg::ManifestData(Bytes::from_static(b"{\"m\":1}\n")));
        msgs.push(StreamMsg::End);
        let opts = StoreOptions {
            chunk_size: 1024 * 1024,
            in_flight: 2 * 1024 * 1024,
            ..StoreOptions::default()
        };
        let (_tmp, dir, r) = run(msgs, opts);
        let stored = r.unwrap();
        assert_eq!(stored.file_count, 3);
        assert_eq!(stored.size_bytes, big.len() as u64 + 5);
        assert_eq!(stored.tablespaces, vec![(16385, "/srv/ts".to_string())]);
        stored.commit().unwrap();
        let back =
            zstd::stream::decode_all(File::open(dir.data_dir().join("base/big.zst")).unwrap())
                .unwrap();
        assert_eq!(back, big);
        // An empty file has no object.
        assert!(!dir.data_dir().join("empty.zst").exists());
        assert!(dir.data_dir().join("pg_wal").is_dir());
        assert!(!dir.data_dir().join("pg_tblspc/16385").exists());
        let entries: Vec<FileEntry> = dir.files().unwrap().map(|e| e.unwrap()).collect();
        let empty = entries.iter().find(|e| e.path == "empty").unwrap();
        assert_eq!((empty.object.as_ref(), empty.size), (None, 0));
        assert_eq!(
            empty.checksum.as_deref(),
            Some(crate::repo::compress::checksum(b"").as_str())
        );
        let big_e = entries.iter().find(|e| e.path == "base/big").unwrap();
        assert_eq!(
            big_e.checksum.as_deref(),
            Some(crate::repo::compress::checksum(&big).as_str())
        );
        assert_eq!(big_e.object.as_deref(), Some("data/base/big.zst"));
        // The object checksum is the BLAKE3 of the compressed file as it lies on disk.
        let big_obj = std::fs::read(dir.data_dir().join("base/big.zst")).unwrap();
        assert_eq!(
            big_e.stored_checksum.as_deref(),
            Some(crate::repo::compress::checksum(&big_obj).as_str())
        );
        assert_eq!(big_e.stored_size, big_obj.len() as u64);
        let link = entries
            .iter()
            .find(|e| e.kind == FileKind::Symlink)
            .unwrap();
        assert_eq!(link.target.as_deref(), Some("/srv/ts"));
        // A small file is in a bundle, read back by its range.
        let ts_e = entries
            .iter()
            .find(|e| e.tablespace == Some(16385))
            .unwrap();
        assert_eq!(ts_e.object.as_deref(), Some("bundles/000001.zst"));
        assert_eq!(
            (ts_e.offset, ts_e.length),
            (Some(0), Some(ts_e.stored_size))
        );
        let bundle = std::fs::read(dir.root().join("bundles/000001.zst")).unwrap();
        assert_eq!(bundle.len() as u64, ts_e.stored_size);
        assert_eq!(
            ts_e.stored_checksum.as_deref(),
            Some(crate::repo::compress::checksum(&bundle).as_str())
        );
        assert_eq!(zstd::stream::decode_all(&bundle[..]).unwrap(), b"hello");
        let list: super::super::bundle::BundleInfo =
            serde_json::from_slice(&std::fs::read(dir.root().join("bundles.jsonl")).unwrap())
                .unwrap();
        assert_eq!((list.files, list.stored_size), (1, bundle.len() as u64));
        assert_eq!(std::fs::read(dir.manifest_path()).unwrap(), b"{\"m\":1}\n");
    }

    #[test]
    fn refuses_traversal_and_cut_streams() {
        let evil = tar_bytes(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            // Bypass the builder's own checks: write the name bytes directly.
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let msgs = vec![
            StreamMsg::Archive {
                name: "base.tar".into(),
                location: String::new(),
            },
            StreamMsg::Data(Bytes::from(evil)),
            StreamMsg::End,
        ];
        let (tmp, _dir, r) = run(msgs, StoreOptions::default());
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
        assert!(!tmp.path().join("pg1/backups/escape.zst").exists());

        let ok = tar_bytes(|b| {
            b.append_data(&mut header(tar::EntryType::Regular, 3), "a", &b"abc"[..])
                .unwrap();
        });
        let cut = ok[..512 + 512].to_vec();
        let msgs = vec![
            StreamMsg::Archive {
                name: "base.tar".into(),
                location: String::new(),
            },
            StreamMsg::Data(Bytes::from(cut)),
        ];
        let (_tmp, _dir, r) = run(msgs, StoreOptions::default());
        assert!(matches!(r, Err(StoreError::Aborted)), "{r:?}");
    }
}
