//! Bundles: the small files of a streamed backup packed into shared objects
//! (`bundles/<n>.zst`), so a data directory of thousands of small relation files
//! costs a few objects (a few PUTs on object storage), not one each.
//!
//! Each bundled file is its own zstd frame(s) at an `offset` and `length` that its
//! files.jsonl entry records beside the bundle's name, so it reads back by that
//! range alone (`tail -c +$((offset+1)) | head -c length | zstd -d`). A bundle is
//! the bundled files' frames back to back, nothing else. `bundles.jsonl` lists each
//! bundle with its size and BLAKE3: what a peer verifies a copy against.
//!
//! Files of [`SMALL_FILE`] bytes or more keep an object of their own; empty files
//! have no object at all (their files.jsonl entry says everything).

use super::object_file::StoreError;
use super::{BackupDir, BackupError, FileEntry};
use crate::error::IoResultExt;
use crate::repo::durable::AtomicFile;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

/// Files below this many bytes (uncompressed) go into a bundle: every relation file
/// of a small table, and most of a data directory's other files.
pub const SMALL_FILE: u64 = 256 * 1024;

/// A bundle is closed once it holds this many stored bytes: one whole PUT.
pub const BUNDLE_TARGET: u64 = 8 << 20;

/// Bytes that cover the rest of any bundle from any offset in it: what a sequential
/// reader asks for at once so the following files come from memory.
pub const READ_AHEAD: u64 = BUNDLE_TARGET + 2 * SMALL_FILE;

/// The name of the backup's bundle number `n`, relative to the backup folder.
pub fn bundle_object(n: u64) -> String {
    format!("bundles/{n:06}.zst")
}

/// Whether a file of `size` bytes is stored in a bundle.
pub fn is_bundled(size: u64) -> bool {
    size > 0 && size < SMALL_FILE
}

/// One line of `bundles.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    /// The bundle, relative to the backup folder (`bundles/000001.zst`).
    pub object: String,
    /// Bytes of the bundle.
    pub stored_size: u64,
    /// BLAKE3 of the bundle as stored, hex.
    pub stored_checksum: String,
    /// Files it holds.
    pub files: u64,
}

/// The bundle list's name in the backup folder.
pub const LIST: &str = "bundles.jsonl";

impl BundleInfo {
    /// The bundle as a files.jsonl-like entry of an object of its own (no content
    /// checksum: the stored bytes' BLAKE3 identifies it), for copiers of objects.
    pub fn as_entry(&self) -> FileEntry {
        FileEntry {
            path: self.object.clone(),
            tablespace: None,
            kind: super::FileKind::File,
            mode: 0o600,
            mtime: 0,
            size: 0,
            checksum: None,
            object: Some(self.object.clone()),
            compression: Some("zstd".into()),
            stored_size: self.stored_size,
            stored_checksum: Some(self.stored_checksum.clone()),
            target: None,
            offset: None,
            length: None,
            in_backup: None,
        }
    }
}

/// Streams `bundles.jsonl` (nothing when the backup has none: no bundled file).
pub fn list(
    dir: &BackupDir,
) -> Result<impl Iterator<Item = Result<BundleInfo, BackupError>>, BackupError> {
    let path = PathBuf::from(dir.describe(LIST));
    let reader = match dir.open_object(LIST) {
        Ok(r) => Some(io::BufReader::new(r)),
        Err(BackupError::Store(e)) if e.is_not_found() => None,
        Err(BackupError::Io(e)) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(reader
        .into_iter()
        .flat_map(move |r| super::json_lines(r, path.clone())))
}

/// Where a bundled entry's stored bytes are: the bundle, offset and length.
pub fn range(e: &FileEntry) -> Option<(&str, u64, u64)> {
    match (e.object.as_deref(), e.offset, e.length) {
        (Some(o), Some(off), Some(len)) => Some((o, off, len)),
        _ => None,
    }
}

/// Reads bundled entries' stored bytes, a span of a bundle at a time: entries that
/// follow one another in a bundle cost one ranged read, not one each.
pub struct BundleReader<'a> {
    dir: &'a BackupDir,
    read_ahead: u64,
    /// The last span read: the holding backup (empty: this one), bundle, offset, bytes.
    cached: Option<(String, String, u64, Vec<u8>)>,
}

impl<'a> BundleReader<'a> {
    /// A reader that asks for `read_ahead` bytes at least (0: exactly each range).
    pub fn new(dir: &'a BackupDir, read_ahead: u64) -> BundleReader<'a> {
        BundleReader {
            dir,
            read_ahead,
            cached: None,
        }
    }

    /// Reads at least `until - offset` bytes on the next miss (a caller that knows
    /// the span of the entries it will ask for).
    pub fn set_read_ahead(&mut self, read_ahead: u64) {
        self.read_ahead = read_ahead;
    }

    /// The stored bytes of a bundled entry (its zstd frames); `None` for an entry
    /// that is not bundled. The bundle's name was checked by the caller.
    pub fn stored(&mut self, e: &FileEntry) -> Result<Option<&[u8]>, BackupError> {
        let Some((object, offset, length)) = range(e) else {
            return Ok(None);
        };
        let end = offset.saturating_add(length);
        let holder = e.in_backup.as_deref().unwrap_or_default();
        let hit = matches!(&self.cached, Some((h, o, start, data))
            if h == holder && o == object && offset >= *start && end <= *start + data.len() as u64);
        if !hit {
            let want = length.max(self.read_ahead);
            let dir = self.dir.holder(e)?;
            let data = dir.read_range(object, offset, want)?;
            if (data.len() as u64) < length {
                return Err(BackupError::Corrupt {
                    path: PathBuf::from(dir.describe(object)),
                    message: format!(
                        "'{}' is recorded at bytes {offset}..{} but the bundle ends at {}",
                        e.path,
                        end,
                        offset + data.len() as u64
                    ),
                });
            }
            self.cached = Some((holder.to_string(), object.to_string(), offset, data));
        }
        Ok(self.cached.as_ref().and_then(|(_, _, start, data)| {
            let from = usize::try_from(offset - start).ok()?;
            data.get(from..from.checked_add(usize::try_from(length).ok()?)?)
        }))
    }
}

/// Most files read as one group (one ranged read of their bundle).
pub const GROUP_FILES: usize = 1024;
/// Most stored bytes read as one group.
pub const GROUP_BYTES: u64 = 1 << 20;

/// Whether `next` follows `first` in the same bundle closely enough to join the
/// group that `first` starts (and that holds `count` files).
fn joins(first: &FileEntry, count: usize, next: &FileEntry) -> bool {
    match (range(first), range(next)) {
        (Some((a, start, _)), Some((b, off, len))) => {
            a == b
                && first.in_backup == next.in_backup
                && off >= start
                && off.saturating_add(len) - start <= GROUP_BYTES
                && count < GROUP_FILES
        }
        _ => false,
    }
}

/// The span of a bundle a group's files cover, from the first one's offset.
pub fn group_span(group: &[FileEntry]) -> u64 {
    let start = group.first().and_then(|e| e.offset).unwrap_or(0);
    group
        .iter()
        .filter_map(|e| range(e).map(|(_, off, len)| off.saturating_add(len)))
        .max()
        .map_or(0, |end| end.saturating_sub(start))
}

/// Consecutive entries of `entries`, grouped: files that follow one another in a
/// bundle come together (at most [`GROUP_FILES`] spanning [`GROUP_BYTES`]), every
/// other entry alone. The list is still streamed: one group in memory at a time.
pub fn groups<I, E>(entries: I) -> impl Iterator<Item = Result<Vec<FileEntry>, E>>
where
    I: Iterator<Item = Result<FileEntry, E>>,
{
    let mut entries = entries;
    let mut pending: Option<FileEntry> = None;
    std::iter::from_fn(move || {
        let first = match pending.take() {
            Some(e) => e,
            None => match entries.next()? {
                Ok(e) => e,
                Err(x) => return Some(Err(x)),
            },
        };
        let mut group = vec![first];
        if range(&group[0]).is_none() {
            return Some(Ok(group));
        }
        loop {
            match entries.next() {
                None => break,
                Some(Err(x)) => return Some(Err(x)),
                Some(Ok(e)) if joins(&group[0], group.len(), &e) => group.push(e),
                Some(Ok(e)) => {
                    pending = Some(e);
                    break;
                }
            }
        }
        Some(Ok(group))
    })
}

/// Decompresses one bundled file's stored bytes into `out`: its size and BLAKE3.
pub fn decode(stored: &[u8], out: impl Write) -> io::Result<(u64, String)> {
    crate::repo::compress::decompress_reader_to(stored, out)
}

/// Decompresses one bundled file's stored bytes into memory, refusing more than
/// `limit` bytes (its recorded size: a damaged frame never balloons).
pub fn decode_limited(stored: &[u8], limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(usize::try_from(limit.min(SMALL_FILE)).unwrap_or(0));
    zstd::stream::read::Decoder::with_buffer(stored)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::other(format!(
            "it decompresses to more than the {limit} bytes recorded"
        )));
    }
    Ok(out)
}

/// Whether a bundled file's stored bytes are the ones recorded (`stored_checksum`);
/// true when none was recorded.
pub fn stored_matches(e: &FileEntry, stored: &[u8]) -> bool {
    e.stored_checksum
        .as_deref()
        .is_none_or(|want| blake3::hash(stored).to_hex().eq_ignore_ascii_case(want))
}

/// Where the open bundle's bytes go.
enum Sink {
    /// A file of the local repository.
    Disk(BufWriter<File>, PathBuf),
    /// Memory, for one whole PUT once the bundle is closed.
    Memory(Vec<u8>),
}

struct Open {
    n: u64,
    sink: Sink,
    len: u64,
    hasher: blake3::Hasher,
    files: u64,
}

/// The bundles of one backup stream being written: one open bundle at a time (its
/// bytes in memory on object storage, at most [`BUNDLE_TARGET`] plus one small
/// file), closed and handed to the store once full.
pub(super) struct BundleWriter<'a> {
    dir: &'a BackupDir,
    next: u64,
    open: Option<Open>,
    list: Option<BufWriter<AtomicFile>>,
}

/// A closed bundle for the store to put whole (object storage only).
pub(super) struct Closed {
    /// The bundle's key in the store.
    pub key: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl<'a> BundleWriter<'a> {
    /// No bundle yet: the first small file opens one.
    pub(super) fn new(dir: &'a BackupDir) -> BundleWriter<'a> {
        BundleWriter {
            dir,
            next: 1,
            open: None,
            list: None,
        }
    }

    /// Starts a small file: the open bundle (opened now if there is none) and the
    /// offset its frames start at.
    pub(super) fn start_file(&mut self) -> Result<(String, u64), StoreError> {
        if self.open.is_none() {
            let n = self.next;
            self.next += 1;
            let rel = bundle_object(n);
            let sink = if self.dir.is_remote() {
                Sink::Memory(Vec::with_capacity((BUNDLE_TARGET + SMALL_FILE) as usize))
            } else {
                let disk = self.dir.root().join(&rel);
                let f = super::object_file::create_file(&disk).at(disk.clone())?;
                Sink::Disk(BufWriter::with_capacity(256 * 1024, f), disk)
            };
            self.open = Some(Open {
                n,
                sink,
                len: 0,
                hasher: blake3::Hasher::new(),
                files: 0,
            });
        }
        match &self.open {
            Some(o) => Ok((bundle_object(o.n), o.len)),
            None => Err(StoreError::Invalid("no open bundle".into())),
        }
    }

    /// Appends a frame of the current small file.
    pub(super) fn write(&mut self, frame: &[u8]) -> Result<(), StoreError> {
        let Some(o) = self.open.as_mut() else {
            return Err(StoreError::Invalid("a frame outside a bundle".into()));
        };
        match &mut o.sink {
            Sink::Disk(w, disk) => w.write_all(frame).at(disk.clone())?,
            Sink::Memory(v) => v.extend_from_slice(frame),
        }
        o.hasher.update(frame);
        o.len += frame.len() as u64;
        Ok(())
    }

    /// Ends the current small file; closes the bundle once it is full, returning it
    /// when it must be uploaded.
    pub(super) fn end_file(&mut self) -> Result<Option<Closed>, StoreError> {
        let full = match self.open.as_mut() {
            Some(o) => {
                o.files += 1;
                o.len >= BUNDLE_TARGET
            }
            None => return Err(StoreError::Invalid("a file end outside a bundle".into())),
        };
        if full {
            self.close()
        } else {
            Ok(None)
        }
    }

    /// Closes the open bundle, if any, and records it in `bundles.jsonl`.
    pub(super) fn close(&mut self) -> Result<Option<Closed>, StoreError> {
        let Some(o) = self.open.take() else {
            return Ok(None);
        };
        let rel = bundle_object(o.n);
        let list_path = self.dir.root().join(LIST);
        if self.list.is_none() {
            let f = AtomicFile::create(&list_path).at(list_path.clone())?;
            self.list = Some(BufWriter::with_capacity(64 * 1024, f));
        }
        let line = BundleInfo {
            object: rel.clone(),
            stored_size: o.len,
            stored_checksum: o.hasher.finalize().to_hex().to_string(),
            files: o.files,
        };
        if let Some(list) = self.list.as_mut() {
            serde_json::to_writer(&mut *list, &line)
                .map_err(io::Error::other)
                .and_then(|()| list.write_all(b"\n"))
                .at(list_path)?;
        }
        match o.sink {
            Sink::Disk(w, disk) => {
                let f = w.into_inner().map_err(|e| e.into_error()).at(&disk)?;
                super::object_file::start_file_writeback(&f);
                Ok(None)
            }
            Sink::Memory(data) => Ok(Some(Closed {
                key: self.dir.key(&rel),
                data,
            })),
        }
    }

    /// `bundles.jsonl`, not yet in place (none when no file was bundled); the open
    /// bundle must have been closed.
    pub(super) fn into_list(self) -> Result<Option<AtomicFile>, StoreError> {
        let path = self.dir.root().join(LIST);
        self.list
            .map(|l| {
                l.into_inner()
                    .map_err(|e| io::Error::new(e.error().kind(), e.to_string()))
                    .at(&path)
                    .map_err(StoreError::from)
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::FileKind;
    use crate::repo::ServerRepo;

    fn entry(path: &str, object: &str, offset: u64, stored: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            tablespace: None,
            kind: FileKind::File,
            mode: 0o600,
            mtime: 0,
            size: 0,
            checksum: None,
            object: Some(object.into()),
            compression: Some("zstd".into()),
            stored_size: stored.len() as u64,
            stored_checksum: Some(blake3::hash(stored).to_hex().to_string()),
            target: None,
            offset: Some(offset),
            length: Some(stored.len() as u64),
            in_backup: None,
        }
    }

    #[test]
    fn small_files_round_trip_through_a_bundle_by_range() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(tmp.path(), "pg1");
        let dir = BackupDir::new(&repo, "20260101T000000");
        std::fs::create_dir_all(dir.root()).unwrap();
        let mut w = BundleWriter::new(&dir);
        let contents: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 100 + i as usize]).collect();
        let mut entries = Vec::new();
        for (i, c) in contents.iter().enumerate() {
            let (object, offset) = w.start_file().unwrap();
            let frame = zstd::bulk::compress(c, 1).unwrap();
            w.write(&frame).unwrap();
            assert!(w.end_file().unwrap().is_none());
            let mut e = entry(&format!("base/1/{i}"), &object, offset, &frame);
            e.size = c.len() as u64;
            entries.push(e);
        }
        assert!(w.close().unwrap().is_none());
        w.into_list().unwrap().unwrap().commit().unwrap();
        let bundle = std::fs::read(dir.root().join(bundle_object(1))).unwrap();
        let list: BundleInfo =
            serde_json::from_slice(&std::fs::read(dir.root().join("bundles.jsonl")).unwrap())
                .unwrap();
        assert_eq!(list.stored_size, bundle.len() as u64);
        assert_eq!(list.files, 50);
        assert_eq!(
            list.stored_checksum,
            blake3::hash(&bundle).to_hex().to_string()
        );
        // The plain zstd decoder reads the whole bundle as the files back to back.
        assert_eq!(
            zstd::stream::decode_all(&bundle[..]).unwrap(),
            contents.concat()
        );
        // Each file by its range alone, and a sequence of them with one read.
        for read_ahead in [0, READ_AHEAD] {
            let mut r = BundleReader::new(&dir, read_ahead);
            for (e, c) in entries.iter().zip(&contents).rev() {
                let stored = r.stored(e).unwrap().unwrap().to_vec();
                assert!(stored_matches(e, &stored));
                let mut out = Vec::new();
                let (size, sum) = decode(&stored, &mut out).unwrap();
                assert_eq!((size, &out), (c.len() as u64, c));
                assert_eq!(sum, blake3::hash(c).to_hex().to_string());
            }
        }
        // A flipped byte is seen in the range's checksum.
        let mut damaged = bundle.clone();
        let off = entries[7].offset.unwrap() as usize + 3;
        damaged[off] ^= 0xff;
        let e = &entries[7];
        let stored = &damaged[off - 3..off - 3 + e.length.unwrap() as usize];
        assert!(!stored_matches(e, stored));
        // A range past the bundle's end is an error naming the file.
        let mut past = entries[0].clone();
        past.offset = Some(bundle.len() as u64 - 2);
        let err = BundleReader::new(&dir, 0).stored(&past).unwrap_err();
        assert!(err.to_string().contains("base/1/0"), "{err}");
    }

    #[test]
    fn consecutive_files_of_a_bundle_form_groups() {
        let e = |p: &str, o: &str, off: u64| entry(p, o, off, &[0u8; 10]);
        let mut plain = e("big", "data/big.zst", 0);
        plain.offset = None;
        plain.length = None;
        let list = vec![
            e("a", "bundles/000001.zst", 0),
            e("b", "bundles/000001.zst", 10),
            plain,
            e("c", "bundles/000001.zst", 20),
            e("d", "bundles/000002.zst", 0),
            e("f", "bundles/000002.zst", GROUP_BYTES),
        ];
        let got: Vec<Vec<String>> = groups(list.into_iter().map(Ok::<_, ()>))
            .map(|g| g.unwrap().into_iter().map(|e| e.path).collect())
            .collect();
        assert_eq!(
            got,
            vec![vec!["a", "b"], vec!["big"], vec!["c"], vec!["d"], vec!["f"]]
        );
        let g = vec![e("a", "x", 100), e("b", "x", 110)];
        assert_eq!(group_span(&g), 20);
    }

    #[test]
    fn a_full_bundle_closes_and_the_next_file_opens_another() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(tmp.path(), "pg1");
        let dir = BackupDir::new(&repo, "20260101T000000");
        std::fs::create_dir_all(dir.root()).unwrap();
        let mut w = BundleWriter::new(&dir);
        let big = vec![1u8; (BUNDLE_TARGET / 2 + 1) as usize];
        for _ in 0..2 {
            w.start_file().unwrap();
            w.write(&big).unwrap();
            w.end_file().unwrap();
        }
        assert_eq!(w.start_file().unwrap(), (bundle_object(2), 0));
        assert!(is_bundled(1) && !is_bundled(0) && !is_bundled(SMALL_FILE));
    }
}
