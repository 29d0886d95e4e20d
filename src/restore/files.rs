//! Restoring a backup's files: `files.jsonl` is streamed (never held in memory) into
//! rayon workers that decompress each object straight into its place, check its
//! BLAKE3 checksum, and set mode, mtime and owner. Directories are created as the
//! list reaches them (even empty ones), `pg_tblspc/<oid>` links point at the
//! tablespaces' (relocated) locations.
//!
//! Paths from `files.jsonl` are never trusted: absolute paths and `..` are rejected,
//! no file is written through a symbolic link, and nothing is written outside the
//! destination and the tablespace locations.
//!
//! With `delta`, files whose size and checksum already match are left alone, and
//! everything the backup does not hold is removed first (symlinks are removed, never
//! followed).

use super::combine::{self, Chain};
use super::destination::Owner;
use super::RestoreError;
use crate::backup::bundle::{self, BundleReader};
use crate::backup::{BackupDir, BackupInfo, FileEntry, FileKind};
use crate::error::{IoError, IoResultExt};
use crate::progress::Progress;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where restored files go.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The data directory.
    pub data: PathBuf,
    /// Each tablespace's location, by oid.
    pub tablespaces: Vec<(u32, PathBuf)>,
}

impl Layout {
    fn root(&self, tablespace: Option<u32>) -> Option<&Path> {
        match tablespace {
            None => Some(&self.data),
            Some(oid) => self
                .tablespaces
                .iter()
                .find(|(o, _)| *o == oid)
                .map(|(_, p)| p.as_path()),
        }
    }
}

/// How to restore.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Leave matching files alone and remove what the backup does not hold.
    pub delta: bool,
    /// Owner of everything created.
    pub owner: Owner,
}

/// What the restore of the files did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileStats {
    /// Regular files written.
    pub files_written: u64,
    /// Bytes written into them.
    pub bytes_written: u64,
    /// Files left alone because they already matched (delta).
    pub files_skipped: u64,
    /// Bytes of those.
    pub bytes_skipped: u64,
    /// Directories in the backup.
    pub dirs: u64,
    /// Tablespace links created.
    pub links: u64,
    /// Files, links and directories removed because the backup does not hold them (delta).
    pub removed: u64,
    /// `global/pg_control`, held back: [`restore_control_file`] writes it once
    /// everything else is in place, so an interrupted recovery leaves a folder
    /// PostgreSQL refuses to start on ("could not open file global/pg_control").
    #[serde(skip)]
    pub control_file: Option<crate::backup::FileEntry>,
}

/// The control file's path in `files.jsonl`.
pub const CONTROL_FILE: &str = "global/pg_control";

pub use crate::repo::safe_relative;

/// The key of a path in the delta sweep's set: 128 bits of BLAKE3 over the tablespace
/// and the normalised path (a million files take 16 MB, not the whole list).
fn key(tablespace: Option<u32>, rel: &Path) -> u128 {
    let mut h = blake3::Hasher::new();
    match tablespace {
        None => h.update(b"data\0"),
        Some(oid) => h.update(format!("tbs{oid}\0").as_bytes()),
    };
    h.update(rel.as_os_str().as_encoded_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    u128::from_le_bytes(b)
}

pub(crate) fn corrupt(info: &BackupInfo, msg: String) -> RestoreError {
    RestoreError::Corrupt(format!("backup {}: {msg}", info.backup_id))
}

/// Whether `rel` (of the data directory) lies inside a tablespace link
/// `pg_tblspc/<oid>/…`: such paths would be written through the link.
pub(crate) fn through_tablespace_link(rel: &Path) -> bool {
    let mut c = rel.components();
    c.next().is_some_and(|f| f.as_os_str() == "pg_tblspc")
        && c.next().is_some()
        && c.next().is_some()
}

struct Ctx<'a> {
    dir: &'a BackupDir,
    info: &'a BackupInfo,
    /// An incremental backup's chain, to rebuild its `INCREMENTAL.*` files.
    chain: Option<&'a Chain>,
    layout: &'a Layout,
    opts: &'a Options,
    progress: &'a dyn Progress,
    done: AtomicU64,
    files_written: AtomicU64,
    bytes_written: AtomicU64,
    files_skipped: AtomicU64,
    bytes_skipped: AtomicU64,
}

/// A checked entry: where it goes.
fn place(ctx: &Ctx, e: &FileEntry) -> Result<(PathBuf, PathBuf), RestoreError> {
    let rel = safe_relative(&e.path)
        .ok_or_else(|| corrupt(ctx.info, format!("unsafe path '{}' in files.jsonl", e.path)))?;
    let root = ctx.layout.root(e.tablespace).ok_or_else(|| {
        corrupt(
            ctx.info,
            format!(
                "'{}' belongs to tablespace {:?}, which backup.json does not list",
                e.path, e.tablespace
            ),
        )
    })?;
    if e.tablespace.is_none() && e.kind != FileKind::Symlink && through_tablespace_link(&rel) {
        return Err(corrupt(
            ctx.info,
            format!("'{}' would be written through a tablespace link", e.path),
        ));
    }
    Ok((root.join(&rel), rel))
}

/// Removes whatever is at `path` (a link itself, never its target).
fn remove_any(path: &Path) -> Result<(), RestoreError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new(path, e).into()),
        Ok(m) if m.is_dir() => Ok(fs::remove_dir_all(path).at(path)?),
        Ok(_) => Ok(fs::remove_file(path).at(path)?),
    }
}

fn make_dir(ctx: &Ctx, e: &FileEntry) -> Result<(), RestoreError> {
    let (path, rel) = place(ctx, e)?;
    if rel.as_os_str().is_empty() {
        return Ok(());
    }
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            remove_any(&path)?;
            create_dir(&path, ctx.opts.owner)?;
        }
        Err(_) => create_dir(&path, ctx.opts.owner)?,
    }
    Ok(())
}

fn create_dir(path: &Path, owner: Owner) -> Result<(), RestoreError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => owner.apply_path(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                create_dir(parent, owner)?;
            }
            create_dir(path, owner)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(IoError::new(path, e).into()),
    }
}

fn make_link(ctx: &Ctx, e: &FileEntry) -> Result<bool, RestoreError> {
    let (path, rel) = place(ctx, e)?;
    let parts: Vec<_> = rel.components().collect();
    let oid = match (e.tablespace, parts.as_slice()) {
        (None, [first, oid]) if first.as_os_str() == "pg_tblspc" => {
            oid.as_os_str().to_str().and_then(|s| s.parse::<u32>().ok())
        }
        _ => None,
    };
    let target = match oid.and_then(|o| ctx.layout.root(Some(o))) {
        Some(loc) => loc.to_path_buf(),
        None => {
            tracing::warn!(
                "backup {}: symbolic link '{}' is not a tablespace link of the backup; not restored",
                ctx.info.backup_id,
                e.path
            );
            return Ok(false);
        }
    };
    if fs::read_link(&path).is_ok_and(|t| t == target) {
        return Ok(true);
    }
    remove_any(&path)?;
    if let Some(parent) = path.parent() {
        create_dir(parent, ctx.opts.owner)?;
    }
    std::os::unix::fs::symlink(&target, &path).at(&path)?;
    ctx.opts.owner.apply_path(&path)?;
    Ok(true)
}

/// BLAKE3 of a file on disk, hex.
fn file_checksum(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

fn set_mtime(f: &File, path: &Path, mtime: i64) -> Result<(), RestoreError> {
    use std::os::fd::AsRawFd;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: futimens on a valid open descriptor with a two-element array.
    if unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(IoError::new(path, io::Error::last_os_error()).into());
    }
    Ok(())
}

/// Writes the content of one stored file into `out` (decompressed); its size and
/// BLAKE3 checksum. The object's path is checked like every path of `files.jsonl`.
/// A bundled file is read through `bundles`, which serves the following files of
/// the same bundle from the span it already read.
pub(crate) fn copy_entry(
    dir: &BackupDir,
    info: &BackupInfo,
    e: &FileEntry,
    out: &mut impl Write,
    bundles: &mut BundleReader,
) -> Result<(u64, String), RestoreError> {
    let Some(object) = &e.object else {
        if e.size == 0 {
            return Ok((0, blake3::hash(b"").to_hex().to_string()));
        }
        return Err(corrupt(
            info,
            format!("'{}' has {} bytes but no stored object", e.path, e.size),
        ));
    };
    let rel = safe_relative(object)
        .filter(|r| !r.as_os_str().is_empty())
        .ok_or_else(|| corrupt(info, format!("unsafe object path '{object}'")))?;
    // The object may be an earlier backup's (an unchanged file reused by reference).
    let holder = dir.holder(e)?;
    let dir: &BackupDir = &holder;
    let src = dir.root().join(&rel);
    let zstd = match e.compression.as_deref() {
        Some("zstd") => true,
        Some("none") => false,
        Some(other) => {
            return Err(corrupt(
                info,
                format!("'{}' uses unknown compression '{other}'", e.path),
            ))
        }
        None => object.ends_with(".zst"),
    };
    if e.offset.is_some() {
        if !zstd {
            return Err(corrupt(
                info,
                format!("'{}' is bundled but not zstd", e.path),
            ));
        }
        let stored = bundles
            .stored(e)?
            .ok_or_else(|| corrupt(info, format!("'{}' has an offset but no length", e.path)))?;
        let data = bundle::decode_limited(stored, e.size).map_err(|err| {
            corrupt(
                info,
                format!(
                    "'{}' (bytes {}.. of {object}) does not decompress: {err}; the bundle is damaged (run verify-backup)",
                    e.path,
                    e.offset.unwrap_or_default()
                ),
            )
        })?;
        // The whole file is in memory: its checksum is compared before any byte
        // of it is written.
        let sum = blake3::hash(&data).to_hex().to_string();
        check_content(info, e, data.len() as u64, &sum)?;
        let what = PathBuf::from(dir.describe(&rel.to_string_lossy()));
        out.write_all(&data).at(&what)?;
        return Ok((data.len() as u64, sum));
    }
    if dir.is_remote() {
        let rel = rel.to_string_lossy();
        let what = PathBuf::from(dir.describe(&rel));
        let object = dir.open_object(&rel)?;
        let copied = if zstd {
            crate::repo::compress::decompress_reader_to(object, out)
        } else {
            crate::repo::compress::hash_copy(object, out)
        };
        return Ok(copied.at(&what)?);
    }
    if zstd {
        Ok(crate::repo::compress::decompress_to(&src, out).at(&src)?)
    } else {
        let mut f = File::open(&src).at(&src)?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0u64;
        loop {
            let n = f.read(&mut buf).at(&src)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).at(&src)?;
            n_total += n as u64;
        }
        Ok((n_total, h.finalize().to_hex().to_string()))
    }
}

/// Refuses content that does not read back as `files.jsonl` records it.
pub(crate) fn check_content(
    info: &BackupInfo,
    e: &FileEntry,
    size: u64,
    sum: &str,
) -> Result<(), RestoreError> {
    if size != e.size
        || e.checksum
            .as_deref()
            .is_some_and(|c| !c.eq_ignore_ascii_case(sum))
    {
        return Err(corrupt(
            info,
            format!(
                "'{}' reads back as {size} bytes with checksum {sum}, files.jsonl records {} bytes and {}: the stored object is damaged (run verify-backup)",
                e.path,
                e.size,
                e.checksum.as_deref().unwrap_or("no checksum")
            ),
        ));
    }
    Ok(())
}

/// Creates (or truncates) a file to restore into, 0600 until its content is
/// checked, creating its folder if the list has not.
fn create_file(ctx: &Ctx, path: &Path) -> Result<File, RestoreError> {
    match open_for_write(path, 0o600) {
        Ok(f) => Ok(f),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                create_dir(parent, ctx.opts.owner)?;
            }
            Ok(open_for_write(path, 0o600).at(path)?)
        }
        Err(err) => Err(IoError::new(path, err).into()),
    }
}

fn open_for_write(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Test hook (pgbk(1) lists it among the developers' variables): milliseconds to wait
/// before each file restored, so that a test can interrupt a recovery in the middle.
pub const THROTTLE_ENV: &str = "PGBK_TEST_RECOVER_THROTTLE_MS";

fn throttle() {
    static PAUSE: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var(THROTTLE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(p) = pause {
        std::thread::sleep(*p);
    }
}

/// Restores a group of files ([`bundle::groups`]): the files of one bundle that
/// follow one another cost one read of the span they cover.
fn restore_group(ctx: &Ctx, group: &[FileEntry]) -> Result<(), RestoreError> {
    let mut bundles = BundleReader::new(ctx.dir, 0);
    let span_end = group.first().and_then(|e| e.offset).unwrap_or(0) + bundle::group_span(group);
    for e in group {
        // A miss (the first file written, after any a delta skipped) reads from
        // this file to the group's last byte at once.
        if let Some(off) = e.offset {
            bundles.set_read_ahead(span_end.saturating_sub(off));
        }
        restore_file(ctx, e, &mut bundles)?;
    }
    Ok(())
}

fn restore_file(ctx: &Ctx, e: &FileEntry, bundles: &mut BundleReader) -> Result<(), RestoreError> {
    throttle();
    if let Some(chain) = ctx.chain {
        let target = combine::reconstructed_path(&e.path);
        if chain.drops(e.tablespace, target.as_deref().unwrap_or(&e.path)) {
            return Ok(());
        }
        if let Some(target) = target {
            return rebuild_file(ctx, chain, e, target);
        }
    }
    let (path, rel) = place(ctx, e)?;
    if rel.as_os_str().is_empty() {
        return Err(corrupt(
            ctx.info,
            format!("file entry '{}' has no name", e.path),
        ));
    }
    let mode = e.mode & 0o7777;
    let advance = |n: u64| {
        let d = ctx.done.fetch_add(n, Ordering::Relaxed) + n;
        ctx.progress.set(d);
    };
    if ctx.opts.delta {
        if let Ok(m) = fs::symlink_metadata(&path) {
            if m.is_file()
                && m.len() == e.size
                && e.checksum.as_deref().is_some_and(|c| {
                    file_checksum(&path).is_ok_and(|have| have.eq_ignore_ascii_case(c))
                })
            {
                if m.permissions().mode() & 0o7777 != mode {
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).at(&path)?;
                }
                ctx.opts.owner.apply_path(&path)?;
                ctx.files_skipped.fetch_add(1, Ordering::Relaxed);
                ctx.bytes_skipped.fetch_add(e.size, Ordering::Relaxed);
                advance(e.size);
                return Ok(());
            }
            if !m.is_file() {
                remove_any(&path)?;
            }
        }
    }
    let file = create_file(ctx, &path)?;
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    let size = if ctx.chain.is_some() && combine::is_backup_label(e) {
        // The label of an incremental backup loses its INCREMENTAL FROM lines,
        // checked first as stored.
        let mut label = Vec::new();
        let (size, sum) = copy_entry(ctx.dir, ctx.info, e, &mut label, bundles)?;
        check_content(ctx.info, e, size, &sum)?;
        let label = combine::label_without_incremental(&label);
        w.write_all(&label).at(&path)?;
        label.len() as u64
    } else {
        let (size, sum) = copy_entry(ctx.dir, ctx.info, e, &mut w, bundles)?;
        check_content(ctx.info, e, size, &sum)?;
        size
    };
    let file = w.into_inner().map_err(|err| err.into_error()).at(&path)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .at(&path)?;
    ctx.opts.owner.apply_file(&file, &path)?;
    set_mtime(&file, &path, e.mtime)?;
    ctx.files_written.fetch_add(1, Ordering::Relaxed);
    ctx.bytes_written.fetch_add(size, Ordering::Relaxed);
    advance(size);
    Ok(())
}

/// Rebuilds an incremental backup's relation file from its chain (always
/// written, delta or not: its checksum is only known source by source).
fn rebuild_file(
    ctx: &Ctx,
    chain: &Chain,
    e: &FileEntry,
    target: String,
) -> Result<(), RestoreError> {
    let rebuilt = FileEntry {
        path: target,
        ..e.clone()
    };
    let (path, rel) = place(ctx, &rebuilt)?;
    if rel.as_os_str().is_empty() {
        return Err(corrupt(
            ctx.info,
            format!("file entry '{}' has no name", e.path),
        ));
    }
    if ctx.opts.delta {
        if let Ok(m) = fs::symlink_metadata(&path) {
            if !m.is_file() {
                remove_any(&path)?;
            }
        }
    }
    let file = create_file(ctx, &path)?;
    let size = chain.rebuild(ctx.dir, ctx.info, e, &file, &path)?;
    file.set_permissions(fs::Permissions::from_mode(e.mode & 0o7777))
        .at(&path)?;
    ctx.opts.owner.apply_file(&file, &path)?;
    set_mtime(&file, &path, e.mtime)?;
    ctx.files_written.fetch_add(1, Ordering::Relaxed);
    ctx.bytes_written.fetch_add(size, Ordering::Relaxed);
    let d = ctx.done.fetch_add(size, Ordering::Relaxed) + size;
    ctx.progress.set(d);
    Ok(())
}

/// The delta sweep: removes from `root` (a data directory, or the `PG_*` folders of a
/// tablespace location) everything `wanted` does not list with the same kind.
fn sweep(
    root: &Path,
    tablespace: Option<u32>,
    wanted: &HashMap<u128, FileKind>,
    pg_dirs_only: bool,
) -> Result<u64, RestoreError> {
    let mut removed = 0u64;
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = root.join(&rel_dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(IoError::new(&dir, e).into()),
        };
        for entry in entries {
            let entry = entry.at(&dir)?;
            let rel = rel_dir.join(entry.file_name());
            if pg_dirs_only
                && rel_dir.as_os_str().is_empty()
                && !entry.file_name().to_string_lossy().starts_with("PG_")
            {
                continue;
            }
            if tablespace.is_none()
                && rel_dir.as_os_str().is_empty()
                && entry.file_name() == super::destination::INCOMPLETE_MARKER
            {
                continue;
            }
            let path = root.join(&rel);
            let ft = fs::symlink_metadata(&path).at(&path)?.file_type();
            let keep = match wanted.get(&key(tablespace, &rel)) {
                Some(FileKind::Dir) => ft.is_dir(),
                Some(FileKind::File) => ft.is_file(),
                Some(FileKind::Symlink) => ft.is_symlink(),
                None => false,
            };
            if !keep {
                remove_any(&path)?;
                removed += 1;
            } else if ft.is_dir() {
                stack.push(rel);
            }
        }
    }
    Ok(removed)
}

/// Restores every file, directory and tablespace link of a backup into `layout`;
/// with `chain` (an incremental backup), its `INCREMENTAL.*` files are rebuilt.
pub fn restore(
    dir: &BackupDir,
    info: &BackupInfo,
    chain: Option<&Chain>,
    layout: &Layout,
    opts: &Options,
    pool: &rayon::ThreadPool,
    progress: &dyn Progress,
) -> Result<FileStats, RestoreError> {
    let mut stats = FileStats::default();
    if opts.delta {
        let mut wanted: HashMap<u128, FileKind> = HashMap::new();
        for e in dir.files()? {
            let e = e?;
            let path = match chain {
                Some(c) => {
                    let p = combine::reconstructed_path(&e.path).unwrap_or(e.path);
                    if c.drops(e.tablespace, &p) {
                        // Left out: an older copy in the destination goes too.
                        continue;
                    }
                    p
                }
                None => e.path,
            };
            let rel = safe_relative(&path)
                .ok_or_else(|| corrupt(info, format!("unsafe path '{path}' in files.jsonl")))?;
            wanted.insert(key(e.tablespace, &rel), e.kind);
        }
        stats.removed += sweep(&layout.data, None, &wanted, false)?;
        for (oid, loc) in &layout.tablespaces {
            stats.removed += sweep(loc, Some(*oid), &wanted, true)?;
        }
    }
    if opts.delta {
        // An older copy's control file goes first: until the new one is written
        // last, the folder is not a data directory PostgreSQL would start on.
        let old = layout.data.join(CONTROL_FILE);
        match fs::remove_file(&old) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(IoError::new(&old, e).into()),
        }
    }
    let control = std::sync::Mutex::new(None);
    let total = chain.map_or(info.size_bytes, |c| c.estimated_size(info));
    progress.start("restore", Some(total));
    let ctx = Ctx {
        dir,
        info,
        chain,
        layout,
        opts,
        progress,
        done: AtomicU64::new(0),
        files_written: AtomicU64::new(0),
        bytes_written: AtomicU64::new(0),
        files_skipped: AtomicU64::new(0),
        bytes_skipped: AtomicU64::new(0),
    };
    let dirs = AtomicU64::new(0);
    let links = AtomicU64::new(0);
    // Directories and links are made as the list reaches them (under the bridge's
    // lock, so before any later file); files go to the workers.
    let entries = dir.files()?.filter_map(|r| {
        let e = match r {
            Ok(e) => e,
            Err(err) => return Some(Err(RestoreError::from(err))),
        };
        let done = match e.kind {
            FileKind::File if e.tablespace.is_none() && e.path == CONTROL_FILE => {
                if let Ok(mut c) = control.lock() {
                    *c = Some(e);
                }
                return None;
            }
            FileKind::File => return Some(Ok(e)),
            FileKind::Dir => make_dir(&ctx, &e).map(|_| {
                dirs.fetch_add(1, Ordering::Relaxed);
            }),
            FileKind::Symlink => make_link(&ctx, &e).map(|made| {
                if made {
                    links.fetch_add(1, Ordering::Relaxed);
                }
            }),
        };
        done.err().map(Err)
    });
    let result = pool.install(|| {
        bundle::groups(entries)
            .par_bridge()
            .try_for_each(|r| r.and_then(|g| restore_group(&ctx, &g)))
    });
    progress.finish();
    result?;
    ensure_standard_dirs(&layout.data, opts.owner)?;
    // Directory modes and times last: writing files into them changed their mtimes.
    for e in dir.files()? {
        let e = e?;
        if e.kind != FileKind::Dir {
            continue;
        }
        let (path, rel) = place(&ctx, &e)?;
        let mode = if rel.as_os_str().is_empty() && e.tablespace.is_none() {
            // The data directory itself: 0700 or 0750, as PostgreSQL accepts.
            if e.mode & 0o7777 == 0o750 {
                0o750
            } else {
                0o700
            }
        } else {
            e.mode & 0o7777
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).at(&path)?;
        let t = libc::timespec {
            tv_sec: e.mtime as libc::time_t,
            tv_nsec: 0,
        };
        let times = [t, t];
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| corrupt(info, format!("path '{}' holds a NUL byte", e.path)))?;
        // SAFETY: utimensat with a valid NUL-terminated path and a two-element array.
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            );
        }
    }
    stats.files_written = ctx.files_written.load(Ordering::Relaxed);
    stats.bytes_written = ctx.bytes_written.load(Ordering::Relaxed);
    stats.files_skipped = ctx.files_skipped.load(Ordering::Relaxed);
    stats.bytes_skipped = ctx.bytes_skipped.load(Ordering::Relaxed);
    stats.dirs = dirs.load(Ordering::Relaxed);
    stats.links = links.load(Ordering::Relaxed);
    stats.control_file = control.into_inner().unwrap_or(None);
    Ok(stats)
}

/// Writes the control file [`restore`] held back (checked like every file): the
/// last step of a recovery, after the WAL and the recovery settings.
pub fn restore_control_file(
    dir: &BackupDir,
    info: &BackupInfo,
    layout: &Layout,
    opts: &Options,
    stats: &mut FileStats,
) -> Result<(), RestoreError> {
    let Some(e) = stats.control_file.take() else {
        return Ok(());
    };
    let ctx = Ctx {
        dir,
        info,
        chain: None,
        layout,
        opts,
        progress: &crate::progress::NoProgress,
        done: AtomicU64::new(0),
        files_written: AtomicU64::new(0),
        bytes_written: AtomicU64::new(0),
        files_skipped: AtomicU64::new(0),
        bytes_skipped: AtomicU64::new(0),
    };
    restore_file(&ctx, &e, &mut BundleReader::new(dir, 0))?;
    stats.files_written += ctx.files_written.load(Ordering::Relaxed);
    stats.bytes_written += ctx.bytes_written.load(Ordering::Relaxed);
    stats.files_skipped += ctx.files_skipped.load(Ordering::Relaxed);
    stats.bytes_skipped += ctx.bytes_skipped.load(Ordering::Relaxed);
    Ok(())
}

/// Folders a base backup may leave out but PostgreSQL needs to start.
pub(crate) const STANDARD_DIRS: &[&str] = &[
    "pg_wal",
    "pg_wal/archive_status",
    "pg_tblspc",
    "pg_replslot",
    "pg_stat",
    "pg_stat_tmp",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
    "pg_dynshmem",
    "pg_commit_ts",
    "pg_twophase",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_logical/mappings",
];

fn ensure_standard_dirs(data: &Path, owner: Owner) -> Result<(), RestoreError> {
    for d in STANDARD_DIRS {
        let p = data.join(d);
        if fs::symlink_metadata(&p).is_err() {
            create_dir(&p, owner)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::repo::compress::{checksum, store_compressed};
    use crate::repo::ServerRepo;

    /// [`restore`] and then the control file it held back, as a recovery does.
    fn restore_all(
        dir: &BackupDir,
        info: &BackupInfo,
        layout: &Layout,
        opts: &Options,
        pool: &rayon::ThreadPool,
        progress: &dyn Progress,
    ) -> Result<FileStats, RestoreError> {
        let mut s = restore(dir, info, None, layout, opts, pool, progress)?;
        restore_control_file(dir, info, layout, opts, &mut s)?;
        Ok(s)
    }

    fn entry(path: &str, tbs: Option<u32>, kind: FileKind, mode: u32) -> FileEntry {
        FileEntry::bare(path.into(), tbs, kind, mode, 1_700_000_000)
    }

    /// A backup folder with a data directory, an empty dir, an empty file, a big
    /// multi-frame file and one tablespace.
    fn fake_backup(home: &Path) -> (BackupDir, BackupInfo) {
        let repo = ServerRepo::new(home, "pg1");
        let dir = BackupDir::new(&repo, "20260101T000000");
        let mut lines = Vec::new();
        let add_file = |path: &str, tbs: Option<u32>, data: &[u8], mode: u32| {
            let object = match tbs {
                None => format!("data/{path}.zst"),
                Some(o) => format!("tablespaces/{o}/{path}.zst"),
            };
            let dest = dir.root().join(&object);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let st = store_compressed(data, &dest, 1).unwrap();
            let mut e = entry(path, tbs, FileKind::File, mode);
            e.size = data.len() as u64;
            e.checksum = Some(st.checksum);
            e.object = Some(object);
            e.compression = Some("zstd".into());
            serde_json::to_string(&e).unwrap()
        };
        let dirs =
            |p: &str, tbs| serde_json::to_string(&entry(p, tbs, FileKind::Dir, 0o700)).unwrap();
        lines.push(dirs("base", None));
        lines.push(dirs("base/1", None));
        lines.push(dirs("pg_wal", None));
        lines.push(dirs("pg_tblspc", None));
        lines.push(add_file("PG_VERSION", None, b"15\n", 0o600));
        lines.push(add_file(
            "base/1/1259",
            None,
            &vec![7u8; 9 * 1024 * 1024 + 5],
            0o600,
        ));
        lines.push(add_file("base/1/empty", None, b"", 0o640));
        let mut link = entry("pg_tblspc/16390", None, FileKind::Symlink, 0o777);
        link.target = Some("/original/tbs".into());
        lines.push(serde_json::to_string(&link).unwrap());
        lines.push(dirs("PG_15_202209061", Some(16390)));
        lines.push(dirs("PG_15_202209061/5", Some(16390)));
        lines.push(add_file(
            "PG_15_202209061/5/16400",
            Some(16390),
            b"tablespace data",
            0o600,
        ));
        // Two small files in a bundle, each its own frame at its range.
        let bundle_path = dir.root().join("bundles/000001.zst");
        fs::create_dir_all(bundle_path.parent().unwrap()).unwrap();
        let mut bundle = Vec::new();
        for (path, data) in [
            ("base/1/2600", &b"first small"[..]),
            ("base/1/2601", b"second"),
        ] {
            let frame = zstd::bulk::compress(data, 1).unwrap();
            let mut e = entry(path, None, FileKind::File, 0o600);
            e.size = data.len() as u64;
            e.checksum = Some(checksum(data));
            e.object = Some("bundles/000001.zst".into());
            e.compression = Some("zstd".into());
            e.offset = Some(bundle.len() as u64);
            e.length = Some(frame.len() as u64);
            e.stored_size = frame.len() as u64;
            bundle.extend_from_slice(&frame);
            lines.push(serde_json::to_string(&e).unwrap());
        }
        fs::write(&bundle_path, &bundle).unwrap();
        // A file whose directory entry comes later than the file itself.
        lines.push(add_file("global/pg_control", None, &[1u8; 8192], 0o600));
        lines.push(dirs("global", None));
        fs::write(dir.files_path(), lines.join("\n") + "\n").unwrap();
        let info: BackupInfo = serde_json::from_str(&format!(
            r#"{{"backup_id":"20260101T000000","name":null,"server":"pg1","status":"DONE",
            "method":"postgres","server_version":150000,"system_id":"1","timeline":1,
            "wal_segment_size":16777216,"begin_lsn":null,"end_lsn":null,"end_timeline":null,
            "begin_wal":null,"end_wal":null,"begin_time":"2026-01-01T00:00:00Z","end_time":null,
            "size_bytes":{},"stored_bytes":0,"file_count":5,"tablespaces":[{{"oid":16390,"name":"tbs","location":"/original/tbs"}}],"error":null,
            "pid":null,"keep":null,"checksum_algorithm":"blake3","has_manifest":false}}"#,
            9 * 1024 * 1024 + 5 + 3 + 15 + 8192 + 17
        ))
        .unwrap();
        (dir, info)
    }

    fn tree(root: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let m = fs::symlink_metadata(&p).unwrap();
                let what = if m.is_symlink() {
                    format!("link {}", fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    stack.push(p.clone());
                    format!("dir {:o}", m.permissions().mode() & 0o7777)
                } else {
                    format!(
                        "file {:o} {}",
                        m.permissions().mode() & 0o7777,
                        checksum(&fs::read(&p).unwrap())
                    )
                };
                out.push((rel, what));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn restores_files_dirs_links_and_a_delta_equals_a_fresh_restore() {
        let d = tempfile::tempdir().unwrap();
        let (dir, info) = fake_backup(&d.path().join("home"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let layout = |name: &str| Layout {
            data: d.path().join(name).join("data"),
            tablespaces: vec![(16390, d.path().join(name).join("tbs"))],
        };
        let fresh = layout("fresh");
        fs::create_dir_all(&fresh.data).unwrap();
        let s = restore_all(&dir, &info, &fresh, &Options::default(), &pool, &NoProgress).unwrap();
        assert_eq!(s.files_written, 7);
        assert_eq!(s.links, 1);
        assert_eq!(fs::read(fresh.data.join("base/1/2601")).unwrap(), b"second");
        assert_eq!(
            fs::read_link(fresh.data.join("pg_tblspc/16390")).unwrap(),
            fresh.tablespaces[0].1
        );
        assert_eq!(
            fs::read(fresh.tablespaces[0].1.join("PG_15_202209061/5/16400")).unwrap(),
            b"tablespace data"
        );
        assert!(fresh.data.join("pg_wal/archive_status").is_dir());
        let m = fs::metadata(fresh.data.join("base/1/empty")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&m), 1_700_000_000);

        // An older copy: one file changed, one truncated, extras everywhere, a planted
        // link out of the destination, and a dir where a file should be.
        let old = layout("old");
        fs::create_dir_all(&old.data).unwrap();
        restore_all(&dir, &info, &old, &Options::default(), &pool, &NoProgress).unwrap();
        fs::write(old.data.join("PG_VERSION"), "14\n").unwrap();
        fs::write(old.data.join("base/1/2601"), "changed").unwrap();
        let big = old.data.join("base/1/1259");
        let f = OpenOptions::new().write(true).open(&big).unwrap();
        f.set_len(100).unwrap();
        fs::write(old.data.join("base/1/extra"), "x").unwrap();
        fs::create_dir_all(old.data.join("stray/dir")).unwrap();
        fs::write(old.data.join("stray/dir/f"), "x").unwrap();
        let outside = d.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep-me"), "precious").unwrap();
        std::os::unix::fs::symlink(&outside, old.data.join("base/evil")).unwrap();
        fs::remove_file(old.data.join("base/1/empty")).unwrap();
        fs::create_dir(old.data.join("base/1/empty")).unwrap();
        fs::write(old.tablespaces[0].1.join("PG_15_202209061/5/99999"), "old").unwrap();
        fs::write(old.tablespaces[0].1.join("not-ours"), "left alone").unwrap();

        let opts = Options {
            delta: true,
            ..Default::default()
        };
        let s = restore_all(&dir, &info, &old, &opts, &pool, &NoProgress).unwrap();
        // global/pg_control matched, but a delta removes it first and writes it last
        // (an interrupted delta must not leave a folder PostgreSQL starts on).
        assert_eq!(s.files_written, 5, "{s:?}");
        assert_eq!(s.files_skipped, 2, "{s:?}");
        assert!(s.bytes_written < info.size_bytes);
        assert_eq!(tree(&old.data).len(), tree(&fresh.data).len());
        let strip = |v: Vec<(String, String)>, root: &Path| -> Vec<(String, String)> {
            v.into_iter()
                .map(|(p, w)| (p, w.replace(&root.display().to_string(), "<root>")))
                .collect()
        };
        assert_eq!(
            strip(tree(&old.data), old.data.parent().unwrap()),
            strip(tree(&fresh.data), fresh.data.parent().unwrap())
        );
        assert_eq!(fs::read(outside.join("keep-me")).unwrap(), b"precious");
        assert!(!old.tablespaces[0]
            .1
            .join("PG_15_202209061/5/99999")
            .exists());
        assert!(old.tablespaces[0].1.join("not-ours").exists());

        // A damaged bundle: the restore stops naming the file, never writes it as good.
        let bundle = dir.root().join("bundles/000001.zst");
        let mut bytes = fs::read(&bundle).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x55;
        fs::write(&bundle, bytes).unwrap();
        let broken = layout("broken");
        fs::create_dir_all(&broken.data).unwrap();
        let e = restore_all(
            &dir,
            &info,
            &broken,
            &Options::default(),
            &pool,
            &NoProgress,
        )
        .unwrap_err();
        assert!(e.to_string().contains("base/1/2601"), "{e}");
    }

    #[test]
    fn refuses_entries_that_escape_the_destination() {
        let d = tempfile::tempdir().unwrap();
        let (dir, info) = fake_backup(&d.path().join("home"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for bad in [
            r#"{"path":"../escape","kind":"file","mode":384,"mtime":0,"size":0}"#,
            r#"{"path":"/etc/escape","kind":"dir","mode":448,"mtime":0}"#,
            r#"{"path":"pg_tblspc/16390/PG_15/x","kind":"file","mode":384,"mtime":0,"size":0}"#,
            r#"{"path":"ok","kind":"file","mode":384,"mtime":0,"size":1,"object":"../../x.zst"}"#,
        ] {
            fs::write(dir.files_path(), format!("{bad}\n")).unwrap();
            let root = d.path().join("r");
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            let layout = Layout {
                data: root.join("data"),
                tablespaces: vec![(16390, root.join("tbs"))],
            };
            let e = restore(
                &dir,
                &info,
                None,
                &layout,
                &Options::default(),
                &pool,
                &NoProgress,
            )
            .unwrap_err();
            assert!(matches!(e, RestoreError::Corrupt(_)), "{bad}: {e}");
            assert!(!d.path().join("escape").exists());
        }
    }

    #[test]
    fn rejects_paths_that_escape() {
        assert_eq!(
            safe_relative("base/1/123").unwrap(),
            Path::new("base/1/123")
        );
        assert_eq!(safe_relative("./base//1").unwrap(), Path::new("base/1"));
        assert_eq!(safe_relative(".").unwrap(), Path::new(""));
        assert!(safe_relative("../etc/passwd").is_none());
        assert!(safe_relative("base/../../x").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("a\0b").is_none());
        assert!(through_tablespace_link(Path::new(
            "pg_tblspc/16390/PG_15/x"
        )));
        assert!(!through_tablespace_link(Path::new("pg_tblspc/16390")));
        assert!(!through_tablespace_link(Path::new("base/1")));
        assert_eq!(key(None, Path::new("a")), key(None, Path::new("a")));
        assert_ne!(key(None, Path::new("a")), key(Some(1), Path::new("a")));
    }
}
