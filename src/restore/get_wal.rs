//! `get-wal`: PostgreSQL's `restore_command` side. Serves one WAL segment or history
//! file from the repository's files alone (no catalog: the command may run as the
//! postgres OS user), from the prefetch spool first, then the archive, then a
//! finished segment receive-wal has not archived yet, and with `partial` the
//! in-progress `.partial` segment zero-padded to a whole segment.
//!
//! Prefetch decompresses the next segments into `<home>/<server>/spool/` so the next
//! requests are a plain copy.

use super::RestoreError;
use crate::catalog::Catalog;
use crate::error::{IoError, IoResultExt};
use crate::repo::compress::{parse_trailer, Recorded, TRAILER_LEN};
use crate::repo::store::{Store, StoreError};
use crate::repo::{Repository, ServerRepo};
use crate::wal::header::{read_long_header, validate_segment, HeaderError, PageChecker};
use crate::wal::{WalFileName, WalSegment};
use rayon::prelude::*;
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where a served file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Decompressed earlier by a prefetch.
    Spool,
    /// `wals/<prefix>/<segment>.zst` or `wals/<tli>.history`.
    Archive,
    /// A finished segment still in `streaming/` (not archived yet).
    Streaming,
    /// receive-wal's in-progress `streaming/<segment>.partial`, zero-padded.
    Partial,
}

/// What was served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Served {
    /// The file name PostgreSQL asked for.
    pub name: String,
    /// Where it came from.
    pub source: Source,
    /// Bytes written.
    pub bytes: u64,
    /// The segment, when a segment was served (its size read from its page header).
    #[serde(skip)]
    pub segment: Option<WalSegment>,
}

/// What PostgreSQL may ask for.
enum Wanted {
    Segment(String),
    History(String, crate::wal::TimeLineId),
}

fn parse_name(name: &str) -> Result<Wanted, RestoreError> {
    // Parsed for the smallest segment size (1 MiB), which every valid name fits; the
    // real size comes from the served segment's page header.
    match WalFileName::parse(name, 1 << 20) {
        Some(WalFileName::Segment(_)) if name.bytes().all(|b| !b.is_ascii_lowercase()) => {
            Ok(Wanted::Segment(name.to_string()))
        }
        Some(WalFileName::History(tli)) => Ok(Wanted::History(name.to_string(), tli)),
        _ => Err(RestoreError::Usage(format!(
            "'{name}' is not a WAL segment or timeline history file name"
        ))),
    }
}

/// `<home>/<server>/spool/`.
pub fn spool_dir(repo: &ServerRepo) -> PathBuf {
    repo.root().join("spool")
}

/// A writer that keeps the first bytes it sees (the segment's long page header) and
/// hashes everything, so what was delivered can be compared with what was recorded.
struct Head<W> {
    inner: W,
    head: Vec<u8>,
    total: u64,
    hasher: blake3::Hasher,
}

impl<W: Write> Head<W> {
    fn new(inner: W) -> Head<W> {
        Head {
            inner,
            head: Vec::new(),
            total: 0,
            hasher: blake3::Hasher::new(),
        }
    }
}

impl<W: Write> Write for Head<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let want = crate::wal::header::LONG_HEADER_SIZE.saturating_sub(self.head.len());
        self.head.extend_from_slice(&buf[..n.min(want)]);
        self.hasher.update(&buf[..n]);
        self.total += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where the served bytes go: a path (written through a temporary name in its folder
/// and renamed, so PostgreSQL never sees half a file) or stdout.
pub enum Destination<'a> {
    /// `--output PATH`.
    Path(&'a Path),
    /// stdout.
    Stdout,
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "wal".into());
    path.with_file_name(format!(".{name}.pgbk-tmp.{}", std::process::id()))
}

/// Writes whatever `fill` produces to the destination, only once `fill` succeeded
/// (it verifies what it wrote): a path through a temporary name renamed into place,
/// stdout from memory (a WAL file is at most 1 GiB), so no unverified byte is handed on.
fn deliver(
    dest: &Destination,
    fill: impl FnOnce(&mut dyn Write) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    match dest {
        Destination::Stdout => {
            let mut buf = Vec::new();
            fill(&mut buf)?;
            let out = io::stdout();
            let mut lock = out.lock();
            lock.write_all(&buf)
                .and_then(|_| lock.flush())
                .map_err(|e| {
                    RestoreError::Delivery(format!(
                        "stdout: {e} (the file was not delivered whole)"
                    ))
                })
        }
        Destination::Path(path) => write_via_temp(path, fill),
    }
}

/// Writes `path` through a temporary sibling renamed into place, so PostgreSQL (or
/// the spool reader) never sees half a segment. No fsync: the reader only needs the
/// file whole, and a crash just means the segment is asked for again.
fn write_via_temp(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    let tmp = temp_beside(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .at(&tmp)?;
    let mut w = io::BufWriter::with_capacity(256 * 1024, file);
    let result = fill(&mut w)
        .and_then(|_| Ok(w.flush().at(&tmp)?))
        .and_then(|_| Ok(fs::rename(&tmp, path).at(path)?));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn segment_of(name: &str, head: &[u8]) -> Option<WalSegment> {
    let h = read_long_header(head)?;
    let ok = h.seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&h.seg_size);
    ok.then(|| WalSegment::parse(name, h.seg_size)).flatten()
}

/// The server's repository as get-wal sees it: the store holding the archive and the
/// local folder holding the spool, the streaming segments and `errors/`.
pub struct WalSource<'a> {
    repository: &'a Repository,
    repo: ServerRepo,
    server: &'a str,
}

impl<'a> WalSource<'a> {
    /// The WAL of `server` in `repository`.
    pub fn new(repository: &'a Repository, server: &'a str) -> WalSource<'a> {
        WalSource {
            repository,
            repo: ServerRepo::new(repository.home(), server),
            server,
        }
    }

    /// The server's local folder.
    pub fn local(&self) -> &ServerRepo {
        &self.repo
    }

    fn store(&self) -> &dyn Store {
        self.repository.store()
    }

    /// The store's failure: never "not found", so recovery stops instead of ending early.
    fn store_err(&self) -> impl FnOnce(StoreError) -> RestoreError + '_ {
        move |e| RestoreError::Refused(format!("server '{}': {e}", self.server))
    }

    /// Opens an archived object; `None` when the store has no object under `key`.
    fn open(&self, key: &str) -> Result<Option<Box<dyn Read + Send>>, RestoreError> {
        match self.store().get(key) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.store_err()(e)),
        }
    }

    /// The length and checksum recorded for the archived object `key` without reading
    /// it whole: its trailer, else the catalog's row.
    fn recorded_for(&self, name: &str, key: &str) -> Result<Recorded, RestoreError> {
        let Some(meta) = self.store().stat(key).map_err(self.store_err())? else {
            return Err(damaged(
                self.server,
                &self.store().describe(key),
                "it disappeared while being read",
            ));
        };
        let tail_len = TRAILER_LEN as u64;
        let tail = if meta.size >= tail_len {
            self.store()
                .get_range(key, meta.size - tail_len, tail_len)
                .map_err(self.store_err())?
        } else {
            Vec::new()
        };
        self.recorded(name, key, parse_trailer(&tail))
    }

    /// What was recorded for an object: `trailer` when it has one, else (an object
    /// stored before trailers) the catalog's row, read-only.
    fn recorded(
        &self,
        name: &str,
        key: &str,
        trailer: Option<Recorded>,
    ) -> Result<Recorded, RestoreError> {
        if let Some(r) = trailer {
            return Ok(r);
        }
        let server = self.server;
        let object = self.store().describe(key);
        let row = match Catalog::open_read_only(self.repository.home()) {
            Ok(Some(cat)) => cat.wal_file(server, name).map_err(|e| e.to_string()),
            Ok(None) => Err("there is no catalog".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match row {
            Ok(Some(rec)) => Ok(Recorded {
                size: rec.size,
                checksum: rec.checksum,
            }),
            Ok(None) => Err(RestoreError::Corrupt(format!(
                "server '{server}': {object} carries no checksum and the catalog has no record of {name}: it cannot be verified (run rebuild-catalog {server})"
            ))),
            Err(why) => Err(RestoreError::Corrupt(format!(
                "server '{server}': {object} carries no checksum and the catalog cannot be read ({why}): it cannot be verified"
            ))),
        }
    }

    /// Decompresses the archived object `key` (opened as `object`) into `w`, verified
    /// against what was recorded for it: returns the segment's first bytes and length.
    fn deliver_archived(
        &self,
        name: &str,
        key: &str,
        object: Box<dyn Read + Send>,
        w: &mut dyn Write,
    ) -> Result<(Vec<u8>, u64), RestoreError> {
        let what = self.store().describe(key);
        let mut h = Head::new(w);
        let input = io::BufReader::with_capacity(256 * 1024, Tail::new(object));
        let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
            .map_err(|e| damaged(self.server, &what, &e.to_string()))?;
        copy_checked(&mut decoder, &mut h, self.server, &what)?;
        let mut rest = decoder.finish();
        io::copy(&mut rest, &mut io::sink())
            .map_err(|e| damaged(self.server, &what, &format!("it does not read back ({e})")))?;
        let trailer = parse_trailer(&rest.into_inner().tail);
        let want = self.recorded(name, key, trailer)?;
        check_delivered(&h, &want, self.server, &what)?;
        Ok((h.head, h.total))
    }
}

/// A reader that keeps the last [`TRAILER_LEN`] bytes that went through it: an
/// object's trailer, read in the same pass as its content.
struct Tail<R> {
    inner: R,
    tail: Vec<u8>,
}

impl<R: Read> Tail<R> {
    fn new(inner: R) -> Tail<R> {
        Tail {
            inner,
            tail: Vec::with_capacity(2 * TRAILER_LEN),
        }
    }
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n >= TRAILER_LEN {
            self.tail.clear();
            self.tail.extend_from_slice(&buf[n - TRAILER_LEN..n]);
        } else {
            self.tail.extend_from_slice(&buf[..n]);
            let extra = self.tail.len().saturating_sub(TRAILER_LEN);
            self.tail.drain(..extra);
        }
        Ok(n)
    }
}

/// Compares what went through `h` with what was recorded for `object`.
fn check_delivered<W>(
    h: &Head<W>,
    want: &Recorded,
    server: &str,
    object: &str,
) -> Result<(), RestoreError> {
    let have = h.hasher.finalize().to_hex();
    if h.total != want.size || !want.checksum.eq_ignore_ascii_case(have.as_str()) {
        return Err(damaged(
            server,
            object,
            &format!(
                "it decompresses to {} bytes with checksum {}, {} bytes with checksum {} were recorded",
                h.total, have, want.size, want.checksum
            ),
        ));
    }
    Ok(())
}

fn damaged(server: &str, object: &str, why: &str) -> RestoreError {
    RestoreError::Corrupt(format!("server '{server}': {object} is damaged: {why}"))
}

/// Copies `src` into `out`; a read error is damage of `object`, a write error one
/// of the delivery.
fn copy_checked(
    src: &mut dyn Read,
    out: &mut dyn Write,
    server: &str,
    object: &str,
) -> Result<(), RestoreError> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(damaged(
                    server,
                    object,
                    &format!("it does not read back ({e})"),
                ))
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| RestoreError::Delivery(format!("writing {object}: {e}")))?;
    }
}

/// Serves one WAL file, verified: an archived object against the checksum recorded
/// for it (its trailer, else the catalog), a segment receive-wal has not archived
/// yet against its page headers. [`RestoreError::NotFound`] (a one-line message) only
/// when the repository does not have the file, so PostgreSQL tries its next source;
/// a file that is there but damaged is [`RestoreError::Corrupt`], and a store that
/// cannot be read is [`RestoreError::Refused`]: get-wal turns both into an exit code
/// that makes PostgreSQL stop recovery instead of promoting.
pub fn serve(
    src: &WalSource,
    name: &str,
    dest: &Destination,
    partial: bool,
) -> Result<Served, RestoreError> {
    let (repo, server) = (&src.repo, src.server);
    let name = match parse_name(name)? {
        Wanted::History(h, tli) => {
            let key = repo.history_key(tli);
            let what = src.store().describe(&key);
            let Some(mut object) = src.open(&key)? else {
                return Err(not_found(server, &h));
            };
            let mut bytes = 0;
            deliver(dest, |w| {
                let mut data = Vec::new();
                object
                    .read_to_end(&mut data)
                    .map_err(|e| damaged(server, &what, &format!("it does not read back ({e})")))?;
                verify_history(src, &h, &what, &data)?;
                w.write_all(&data)
                    .map_err(|e| RestoreError::Delivery(format!("writing {h}: {e}")))?;
                bytes = data.len() as u64;
                Ok(())
            })?;
            return Ok(Served {
                name: h,
                source: Source::Archive,
                bytes,
                segment: None,
            });
        }
        Wanted::Segment(s) => s,
    };
    let spooled = spool_dir(repo).join(&name);
    let key = repo.segment_name_key(&name);
    let finished = repo.streaming_dir().join(&name);
    let in_progress = repo.streaming_dir().join(format!("{name}.partial"));
    if spooled.is_file() {
        match serve_spooled(src, &name, &spooled, &key, dest) {
            Ok(s) => {
                let _ = fs::remove_file(&spooled);
                return Ok(s);
            }
            // A prefetch removed or replaced it meanwhile, or it does not match the
            // archive: drop it and serve from the archive.
            Err(RestoreError::Io { .. } | RestoreError::Corrupt(_)) => {
                let _ = fs::remove_file(&spooled);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(object) = src.open(&key)? {
        let mut head = Vec::new();
        let mut bytes = 0;
        let r = deliver(dest, |w| {
            (head, bytes) = src.deliver_archived(&name, &key, object, w)?;
            Ok(())
        });
        if let Err(e @ RestoreError::Corrupt(_)) = &r {
            report_damage(repo, &name, &e.to_string());
        }
        r?;
        return Ok(Served {
            bytes,
            segment: segment_of(&name, &head),
            name,
            source: Source::Archive,
        });
    }
    if finished.is_file() {
        let data = fs::read(&finished).at(&finished)?;
        let seg = segment_of(&name, &data);
        let checked = seg
            .ok_or_else(|| "no valid long page header".to_string())
            .and_then(|s| validate_segment(&data, &s, None).map_err(|e| e.to_string()));
        if let Err(why) = checked {
            return Err(damaged(server, &finished.display().to_string(), &why));
        }
        deliver(dest, |w| {
            w.write_all(&data)
                .map_err(|e| RestoreError::Delivery(format!("writing {name}: {e}")))
        })?;
        return Ok(Served {
            segment: seg,
            name,
            source: Source::Streaming,
            bytes: data.len() as u64,
        });
    }
    if partial && in_progress.is_file() {
        let data = fs::read(&in_progress).at(&in_progress)?;
        let seg = segment_of(&name, &data).filter(|s| data.len() as u64 <= s.seg_size);
        let Some(seg) = seg else {
            return Err(RestoreError::Refused(format!(
                "server '{server}': {} has no valid WAL page header yet",
                in_progress.display()
            )));
        };
        if let Err(e) = read_long_header(&data)
            .ok_or(HeaderError::NoLongHeader {
                segment: name.clone(),
            })
            .and_then(|hdr| {
                let mut pages = PageChecker::new(&seg, &hdr, None, &data)?;
                pages.feed(&data)
            })
        {
            return Err(damaged(
                server,
                &in_progress.display().to_string(),
                &e.to_string(),
            ));
        }
        deliver(dest, |w| {
            let werr = |e: io::Error| RestoreError::Delivery(format!("writing {name}: {e}"));
            w.write_all(&data).map_err(werr)?;
            let zeros = vec![0u8; 256 * 1024];
            let mut left = seg.seg_size - data.len() as u64;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..n]).map_err(werr)?;
                left -= n as u64;
            }
            Ok(())
        })?;
        return Ok(Served {
            name,
            source: Source::Partial,
            bytes: seg.seg_size,
            segment: Some(seg),
        });
    }
    Err(not_found(server, &name))
}

/// Serves a prefetched segment, checked against what the archive records for it.
fn serve_spooled(
    src: &WalSource,
    name: &str,
    spooled: &Path,
    key: &str,
    dest: &Destination,
) -> Result<Served, RestoreError> {
    let want = src.recorded_for(name, key)?;
    let what = spooled.display().to_string();
    let mut head = Vec::new();
    let mut bytes = 0;
    deliver(dest, |w| {
        let mut h = Head::new(w);
        let mut f = File::open(spooled).at(spooled)?;
        copy_checked(&mut f, &mut h, src.server, &what)?;
        check_delivered(&h, &want, src.server, &what)?;
        head = h.head;
        bytes = h.total;
        Ok(())
    })?;
    Ok(Served {
        segment: segment_of(name, &head),
        name: name.to_string(),
        source: Source::Spool,
        bytes,
    })
}

/// A history file is stored as is: checked against the catalog's checksum where
/// the catalog can be read, and always parsed as PostgreSQL would.
fn verify_history(
    src: &WalSource,
    name: &str,
    what: &str,
    data: &[u8],
) -> Result<(), RestoreError> {
    let server = src.server;
    let text = std::str::from_utf8(data).map_err(|_| damaged(server, what, "it is not text"))?;
    crate::wal::history::parse_history(text).map_err(|e| damaged(server, what, &e.to_string()))?;
    if let Ok(Some(cat)) = Catalog::open_read_only(src.repository.home()) {
        if let Ok(Some(rec)) = cat.wal_file(server, name) {
            let have = crate::repo::compress::checksum(data);
            if !rec.checksum.eq_ignore_ascii_case(&have) {
                return Err(damaged(
                    server,
                    what,
                    &format!(
                        "its checksum is {have}, the catalog records {}",
                        rec.checksum
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Leaves a note in `errors/` (best effort: get-wal may run as a user who cannot
/// write there) so that `check` reports the damaged file as CRITICAL.
fn report_damage(repo: &ServerRepo, name: &str, reason: &str) {
    let dir = repo.errors_dir();
    if crate::repo::durable::create_dir_all_private(&dir).is_ok() {
        let _ = crate::repo::durable::write_atomic(
            &dir.join(format!("{name}.damaged")),
            format!("{reason}\n").as_bytes(),
        );
    }
}

fn not_found(server: &str, name: &str) -> RestoreError {
    RestoreError::NotFound(format!(
        "server '{server}': WAL file {name} is not in the archive"
    ))
}

/// Decompresses up to `n` archived segments following `after` into the spool (those
/// already there are skipped; it stops at the first one not archived yet), in
/// parallel, and removes spooled segments older than `after`. Returns how many it
/// decompressed.
pub fn prefetch(src: &WalSource, after: &WalSegment, n: u32) -> Result<usize, RestoreError> {
    let spool = spool_dir(&src.repo);
    if !spool.is_dir() {
        match fs::DirBuilder::new().mode(0o700).create(&spool) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(IoError::new(&spool, e).into()),
        }
    }
    clean_spool(&spool, after);
    let mut todo = Vec::new();
    let mut seg = *after;
    for _ in 0..n {
        seg = seg.next();
        let key = src.repo.segment_key(&seg);
        if src.store().stat(&key).map_err(src.store_err())?.is_none() {
            break;
        }
        if !spool.join(seg.name()).is_file() {
            todo.push((seg, key));
        }
    }
    todo.par_iter().try_for_each(|(seg, key)| {
        let Some(object) = src.open(key)? else {
            return Ok(());
        };
        write_via_temp(&spool.join(seg.name()), |w| {
            src.deliver_archived(&seg.name(), key, object, w)
                .map(|_| ())
        })
    })?;
    Ok(todo.len())
}

/// Removes spooled segments before `current` (on any timeline: recovery moved past
/// them) and leftovers of interrupted prefetches.
fn clean_spool(spool: &Path, current: &WalSegment) {
    let Ok(rd) = fs::read_dir(spool) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let stale = match WalSegment::parse(&name, current.seg_size) {
            Some(s) => s.segno < current.segno,
            None => {
                name.contains(".pgbk-tmp.") && !name.ends_with(&format!(".{}", std::process::id()))
            }
        };
        if stale {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Runs `f` holding the spool's prefetch lock; `None` when another prefetch holds it.
pub fn with_prefetch_lock<T>(repo: &ServerRepo, f: impl FnOnce() -> T) -> Option<T> {
    use std::os::fd::AsRawFd;
    let spool = spool_dir(repo);
    let _ = fs::DirBuilder::new().mode(0o700).create(&spool);
    let path = crate::lock::prefetch_lock(&spool);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .ok()?;
    // SAFETY: flock on a valid descriptor; released when `file` is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return None;
    }
    let out = f();
    drop(file);
    Some(out)
}

/// Reads a whole file (the helper tests use to compare outputs).
pub fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path)?.read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::compress::{store_compressed, DEFAULT_LEVEL};
    use crate::wal::TimeLineId;

    const SEG: u64 = 1 << 20;

    /// A segment whose first pages carry valid headers (the rest is zero, as after a
    /// WAL switch).
    fn fake(seg: &WalSegment) -> Vec<u8> {
        let mut d = vec![0u8; seg.seg_size as usize];
        for page in 0..4usize {
            let p = &mut d[page * 8192..];
            p[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            p[2..4].copy_from_slice(&(if page == 0 { 2u16 } else { 0 }).to_le_bytes());
            p[4..8].copy_from_slice(&seg.tli.0.to_le_bytes());
            let addr = seg.start_lsn().0 + (page * 8192) as u64;
            p[8..16].copy_from_slice(&addr.to_le_bytes());
        }
        d[32..36].copy_from_slice(&(seg.seg_size as u32).to_le_bytes());
        d[100] = seg.segno as u8;
        d
    }

    fn seg(n: u64) -> WalSegment {
        WalSegment {
            tli: TimeLineId(1),
            segno: n,
            seg_size: SEG,
        }
    }

    #[test]
    fn serves_archive_history_partial_and_prefetched_segments() {
        let d = tempfile::tempdir().unwrap();
        let repository = Repository::local(d.path());
        let src = WalSource::new(&repository, "pg1");
        let repo = src.local().clone();
        repo.ensure_dirs().unwrap();
        for n in 3..=6 {
            let s = seg(n);
            fs::create_dir_all(repo.segment_path(&s).parent().unwrap()).unwrap();
            store_compressed(&fake(&s), &repo.segment_path(&s), DEFAULT_LEVEL).unwrap();
        }
        fs::write(
            repo.wals_dir().join("00000002.history"),
            "1\t0/5000000\tx\n",
        )
        .unwrap();
        let out = d.path().join("pg_wal_RECOVERYXLOG");
        let dest = Destination::Path(&out);

        let s = serve(&src, &seg(3).name(), &dest, false).unwrap();
        assert_eq!(s.source, Source::Archive);
        assert_eq!(s.segment, Some(seg(3)));
        assert_eq!(read_all(&out).unwrap(), fake(&seg(3)));

        assert_eq!(prefetch(&src, &seg(3), 2).unwrap(), 2);
        assert_eq!(prefetch(&src, &seg(3), 2).unwrap(), 0, "already spooled");
        let s = serve(&src, &seg(4).name(), &dest, false).unwrap();
        assert_eq!(s.source, Source::Spool);
        assert_eq!(read_all(&out).unwrap(), fake(&seg(4)));
        assert!(
            !spool_dir(&repo).join(seg(4).name()).exists(),
            "served spool file removed"
        );
        // After 5 (already spooled) only 6 is left to do: 7 is not archived.
        assert_eq!(prefetch(&src, &seg(5), 5).unwrap(), 1);
        assert!(spool_dir(&repo).join(seg(6).name()).exists());
        assert!(!spool_dir(&repo).join(seg(7).name()).exists());

        let s = serve(&src, "00000002.history", &dest, false).unwrap();
        assert_eq!(s.source, Source::Archive);
        assert_eq!(fs::read_to_string(&out).unwrap(), "1\t0/5000000\tx\n");

        // Segment 7 only exists as receive-wal's partial.
        let mut part = fake(&seg(7));
        part.truncate(3 * 8192);
        fs::write(
            repo.streaming_dir()
                .join(format!("{}.partial", seg(7).name())),
            &part,
        )
        .unwrap();
        let e = serve(&src, &seg(7).name(), &dest, false).unwrap_err();
        assert!(matches!(e, RestoreError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("is not in the archive"));
        let s = serve(&src, &seg(7).name(), &dest, true).unwrap();
        assert_eq!(s.source, Source::Partial);
        let got = read_all(&out).unwrap();
        assert_eq!(got.len() as u64, SEG);
        assert_eq!(&got[..part.len()], &part[..]);
        assert!(got[part.len()..].iter().all(|&b| b == 0));

        for bad in ["../../etc/passwd", "00000001000000000000000g", "x.history"] {
            assert!(matches!(
                serve(&src, bad, &dest, true),
                Err(RestoreError::Usage(_))
            ));
        }
        // Nothing half-written is left beside the output.
        let leftovers: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("pgbk-tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_damaged_archived_segment_is_an_error_naming_it_never_not_found() {
        let d = tempfile::tempdir().unwrap();
        let repository = Repository::local(d.path());
        let src = WalSource::new(&repository, "pg1");
        let repo = src.local().clone();
        repo.ensure_dirs().unwrap();
        let s = seg(3);
        let path = repo.segment_path(&s);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut content = fake(&s);
        for (i, b) in content.iter_mut().enumerate().skip(40 * 1024) {
            *b = (i * 7 % 251) as u8;
        }
        store_compressed(&content, &path, DEFAULT_LEVEL).unwrap();
        let good = fs::read(&path).unwrap();
        let out = d.path().join("RECOVERYXLOG");
        let dest = Destination::Path(&out);
        serve(&src, &s.name(), &dest, false).unwrap();
        assert_eq!(read_all(&out).unwrap(), content);
        fs::remove_file(&out).unwrap();

        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x01;
        let truncated = good[..good.len() - 100].to_vec();
        let no_trailer = good[..good.len() - crate::repo::compress::TRAILER_LEN].to_vec();
        for (what, bytes) in [
            ("flipped", flipped),
            ("truncated", truncated),
            ("no trailer, no catalog", no_trailer),
        ] {
            fs::write(&path, &bytes).unwrap();
            let e = serve(&src, &s.name(), &dest, false).unwrap_err();
            assert!(matches!(e, RestoreError::Corrupt(_)), "{what}: {e:?}");
            assert!(e.to_string().contains(&s.name()), "{what}: {e}");
            assert!(!out.exists(), "{what}: nothing delivered");
            // The prefetch refuses it too: nothing lands in the spool.
            assert!(prefetch(&src, &seg(2), 2).is_err(), "{what}");
            assert!(!spool_dir(&repo).join(s.name()).exists(), "{what}");
        }
        assert!(repo
            .errors_dir()
            .join(format!("{}.damaged", s.name()))
            .exists());

        // A spooled copy that differs from the archive is dropped, not served.
        fs::write(&path, &good).unwrap();
        fs::create_dir_all(spool_dir(&repo)).unwrap();
        fs::write(spool_dir(&repo).join(s.name()), vec![0u8; SEG as usize]).unwrap();
        let served = serve(&src, &s.name(), &dest, false).unwrap();
        assert_eq!(served.source, Source::Archive);
        assert_eq!(read_all(&out).unwrap(), content);
    }
}
