//! Block maps: incremental backups of PostgreSQL 15 and 16, which have no
//! server-side incremental BASE_BACKUP.
//!
//! The server streams every relation file whole; pgbk hashes each 8 KiB block as
//! it passes and records the checksums in the backup's `blocks.map`. The next
//! incremental compares each streamed block with the parent's checksum at the
//! same place and stores only the blocks that differ (and those past the parent's
//! end), as an `INCREMENTAL.<name>` file in PostgreSQL 17's format, so a chain is
//! restored by the same code whichever way its incrementals were made. What is
//! stored follows the change even though what is read does not.
//!
//! The map records what the backup *received*, block for block: a file rebuilt
//! from the chain is then exactly the file the newest backup received, torn pages
//! included, which WAL replay repairs as for a full backup. A damaged map can only
//! make more blocks look changed; it is still refused (its BLAKE3 is kept in
//! backup.json) so a damaged parent is noticed.
//!
//! Format of `blocks.map` (little-endian): the magic `PGBKBLK1`, then per relation
//! file: `u32` path length, the path, `u32` tablespace oid (0 for the data
//! directory), `u32` block count, and one [`BLOCK_HASH_LEN`]-byte checksum per block.

use super::BackupDir;
use crate::error::{IoError, IoResultExt};
use crate::repo::durable::AtomicFile;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// PostgreSQL's block size (BLCKSZ): the unit that is compared and stored.
pub const BLCKSZ: usize = 8192;
/// What PostgreSQL 17 puts in front of the name of an incremental relation file.
pub const INCREMENTAL_PREFIX: &str = "INCREMENTAL.";
/// The first word of an `INCREMENTAL.*` file.
pub const INCREMENTAL_MAGIC: u32 = 0xd3ae_1f0d;
/// Bytes kept of each block's BLAKE3: 128 bits, no accidental collision in any
/// number of blocks a cluster can hold.
pub const BLOCK_HASH_LEN: usize = 16;
/// The object's name in a backup.
pub const NAME: &str = "blocks.map";
const MAGIC: &[u8; 8] = b"PGBKBLK1";

/// One block's checksum.
pub type BlockHash = [u8; BLOCK_HASH_LEN];

/// The checksum of block `number` of a file: its BLAKE3 chaining value, the
/// interior node that the file's own BLAKE3 is built from, so a file's content
/// checksum and its blocks' come from one pass ([`BlockTree`]).
pub fn block_hash(number: u64, block: &[u8]) -> BlockHash {
    short(&block_cv(number, block))
}

fn block_cv(number: u64, block: &[u8]) -> blake3::hazmat::ChainingValue {
    use blake3::hazmat::HasherExt;
    blake3::Hasher::new()
        .set_input_offset(number * BLCKSZ as u64)
        .update(block)
        .finalize_non_root()
}

fn short(cv: &blake3::hazmat::ChainingValue) -> BlockHash {
    let mut out = [0u8; BLOCK_HASH_LEN];
    out.copy_from_slice(&cv[..BLOCK_HASH_LEN]);
    out
}

/// The BLAKE3 of a file whose length is a whole number of blocks, computed from
/// its blocks' chaining values as they pass (BLAKE3's tree, merged the way its
/// own hasher does): the blocks' checksums cost no second pass over the data.
pub struct BlockTree {
    stack: Vec<blake3::hazmat::ChainingValue>,
    last: Option<blake3::hazmat::ChainingValue>,
    blocks: u64,
    /// A one-block file's hash is that block's root hash.
    single: Option<blake3::Hash>,
    size: u64,
}

impl BlockTree {
    /// For a file of `size` bytes (a multiple of [`BLCKSZ`], not 0).
    pub fn new(size: u64) -> BlockTree {
        BlockTree {
            stack: Vec::new(),
            last: None,
            blocks: 0,
            single: None,
            size,
        }
    }

    /// Adds the next block (exactly [`BLCKSZ`] bytes) and returns its checksum.
    pub fn push(&mut self, block: &[u8]) -> BlockHash {
        use blake3::hazmat::{merge_subtrees_non_root, Mode};
        if self.size == BLCKSZ as u64 {
            self.single = Some(blake3::hash(block));
        }
        let cv = block_cv(self.blocks, block);
        if let Some(mut done) = self.last.take() {
            // `done` is block blocks-1: it completes one subtree per trailing
            // zero bit of the number of blocks before the new one.
            let mut total = self.blocks;
            while total & 1 == 0 {
                let Some(left) = self.stack.pop() else { break };
                done = merge_subtrees_non_root(&left, &done, Mode::Hash);
                total >>= 1;
            }
            self.stack.push(done);
        }
        self.last = Some(cv);
        self.blocks += 1;
        short(&cv)
    }

    /// The file's BLAKE3.
    pub fn finalize(self) -> blake3::Hash {
        use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, Mode};
        if let Some(h) = self.single {
            return h;
        }
        let Some(mut cv) = self.last else {
            return blake3::hash(b"");
        };
        let mut stack = self.stack;
        while let Some(left) = stack.pop() {
            if stack.is_empty() {
                return merge_subtrees_root(&left, &cv, Mode::Hash);
            }
            cv = merge_subtrees_non_root(&left, &cv, Mode::Hash);
        }
        // Only reached for a single block whose size was not announced.
        blake3::Hash::from_bytes(cv)
    }
}

/// Whether a member of the stream is a relation segment (`base/<db>/<relfilenode>`
/// with an optional `_fsm`/`_vm`/`_init` fork and `.N` segment number, `global/…`,
/// or `<version dir>/<db>/…` in a tablespace): the files compared block by block.
pub fn is_relation_file(path: &str, tablespace: Option<u32>) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let name = match (tablespace, parts.as_slice()) {
        (None, ["base", db, name]) if all_digits(db) => name,
        (None, ["global", name]) => name,
        (Some(_), [version, db, name]) if version.starts_with("PG_") && all_digits(db) => name,
        _ => return false,
    };
    let (rel, segment) = match name.split_once('.') {
        Some((rel, seg)) => (rel, Some(seg)),
        None => (*name, None),
    };
    let relfilenode = match rel.split_once('_') {
        Some((n, "fsm" | "vm" | "init")) => n,
        Some(_) => return false,
        None => rel,
    };
    all_digits(relfilenode) && segment.is_none_or(all_digits)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The name an incremental stores a relation file under: `INCREMENTAL.` before
/// its last component, as PostgreSQL 17's incremental BASE_BACKUP names it.
pub fn incremental_name(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{}{name}", INCREMENTAL_PREFIX),
        None => format!("{}{path}", INCREMENTAL_PREFIX),
    }
}

/// The path an `INCREMENTAL.*` file restores to (its name without the prefix);
/// `None` for any other path.
pub fn reconstructed_path(path: &str) -> Option<String> {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, path),
    };
    let name = name.strip_prefix(INCREMENTAL_PREFIX)?;
    if name.is_empty() {
        return None;
    }
    Some(match dir {
        Some(d) => format!("{d}/{name}"),
        None => name.to_string(),
    })
}

/// Writes a backup's `blocks.map` as files pass, under a temporary name until
/// [`MapWriter::finish`]'s file is committed.
pub struct MapWriter {
    out: BufWriter<AtomicFile>,
    path: PathBuf,
    hasher: blake3::Hasher,
}

impl MapWriter {
    /// Starts `blocks.map` in the backup's folder (on object storage, the local
    /// staging folder: it goes up with files.jsonl).
    pub fn create(dir: &BackupDir) -> Result<MapWriter, IoError> {
        let path = dir.root().join(NAME);
        let mut w = MapWriter {
            out: BufWriter::with_capacity(256 * 1024, AtomicFile::create(&path).at(&path)?),
            path,
            hasher: blake3::Hasher::new(),
        };
        w.put(MAGIC)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        self.hasher.update(bytes);
        self.out.write_all(bytes).at(&self.path)
    }

    /// Records the checksums of one relation file's blocks.
    pub fn add(
        &mut self,
        tablespace: Option<u32>,
        path: &str,
        hashes: &[BlockHash],
    ) -> Result<(), IoError> {
        let len = u32::try_from(path.len()).unwrap_or(u32::MAX);
        let count = u32::try_from(hashes.len()).unwrap_or(u32::MAX);
        self.put(&len.to_le_bytes())?;
        self.put(path.as_bytes())?;
        self.put(&tablespace.unwrap_or(0).to_le_bytes())?;
        self.put(&count.to_le_bytes())?;
        for h in hashes {
            self.put(h)?;
        }
        Ok(())
    }

    /// The map's file, still under its temporary name, and its BLAKE3 (hex).
    pub fn finish(self) -> Result<(AtomicFile, String), IoError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| io::Error::new(e.error().kind(), e.error().to_string()))
            .at(&self.path)?;
        Ok((file, self.hasher.finalize().to_hex().to_string()))
    }
}

/// The parent's block map, opened for lookups: an index of where each file's
/// checksums are, read from the map file on demand, so memory follows the number
/// of relation files, not the size of the cluster.
pub struct ParentMap {
    file: File,
    index: HashMap<(u32, String), (u64, u32)>,
    _scratch: Option<tempfile::TempPath>,
}

/// Why a parent's map cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("backup {backup} has no block map ({NAME})")]
    Missing { backup: String },
    #[error("the block map of backup {backup} ({what}) is damaged: {why}")]
    Damaged {
        backup: String,
        what: String,
        why: String,
    },
    #[error("reading the block map of backup {backup}: {source}")]
    Read {
        backup: String,
        source: Box<super::BackupError>,
    },
    #[error(transparent)]
    Io(#[from] IoError),
}

impl ParentMap {
    /// Opens the parent's `blocks.map`, checking it against `expected` (its BLAKE3
    /// from backup.json) in the same pass that indexes it. From object storage the
    /// map is copied into an unnamed file under `scratch` first.
    pub fn open(parent: &BackupDir, expected: &str, scratch: &Path) -> Result<ParentMap, MapError> {
        let backup = parent.id().to_string();
        let what = parent.describe(NAME);
        let read_err = |e: super::BackupError| match e {
            super::BackupError::Store(s) if s.is_not_found() => MapError::Missing {
                backup: backup.clone(),
            },
            super::BackupError::Io(e) if e.kind() == io::ErrorKind::NotFound => MapError::Missing {
                backup: backup.clone(),
            },
            e => MapError::Read {
                backup: backup.clone(),
                source: Box::new(e),
            },
        };
        let (file, temp) = if parent.is_remote() {
            let mut src = parent.open_object(NAME).map_err(read_err)?;
            let mut temp = tempfile::NamedTempFile::new_in(scratch).at(scratch)?;
            io::copy(&mut src, temp.as_file_mut()).at(&what)?;
            // Read back from its start for the index.
            io::Seek::seek(temp.as_file_mut(), io::SeekFrom::Start(0)).at(&what)?;
            let (file, path) = temp.into_parts();
            (file, Some(path))
        } else {
            let path = parent.root().join(NAME);
            match File::open(&path) {
                Ok(f) => (f, None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(MapError::Missing { backup })
                }
                Err(e) => return Err(IoError::new(&path, e).into()),
            }
        };
        let damaged = |why: String| MapError::Damaged {
            backup: backup.clone(),
            what: what.clone(),
            why,
        };
        let mut r = HashingReader {
            inner: BufReader::with_capacity(1 << 20, &file),
            hasher: blake3::Hasher::new(),
            offset: 0,
        };
        let short = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                MapError::Damaged {
                    backup: backup.clone(),
                    what: what.clone(),
                    why: "it ends in the middle of a record".into(),
                }
            } else {
                IoError::new(&what, e).into()
            }
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(short)?;
        if &magic != MAGIC {
            return Err(damaged("not a block map (bad magic)".into()));
        }
        let mut index = HashMap::new();
        let mut skip = vec![0u8; 64 * 1024];
        loop {
            let mut word = [0u8; 4];
            match r.read(&mut word[..1]).at(&what)? {
                0 => break,
                _ => r.read_exact(&mut word[1..]).map_err(short)?,
            }
            let len = u32::from_le_bytes(word) as usize;
            if len > 4096 {
                return Err(damaged(format!("a path of {len} bytes")));
            }
            let mut path = vec![0u8; len];
            r.read_exact(&mut path).map_err(short)?;
            let path =
                String::from_utf8(path).map_err(|_| damaged("a path is not UTF-8".into()))?;
            r.read_exact(&mut word).map_err(short)?;
            let tablespace = u32::from_le_bytes(word);
            r.read_exact(&mut word).map_err(short)?;
            let count = u32::from_le_bytes(word);
            let at = r.offset;
            let mut left = u64::from(count) * BLOCK_HASH_LEN as u64;
            while left > 0 {
                let n = left.min(skip.len() as u64) as usize;
                r.read_exact(&mut skip[..n]).map_err(short)?;
                left -= n as u64;
            }
            index.insert((tablespace, path), (at, count));
        }
        let got = r.hasher.finalize().to_hex().to_string();
        if got != expected {
            return Err(damaged(format!(
                "its BLAKE3 is {got}, backup.json says {expected}"
            )));
        }
        Ok(ParentMap {
            file,
            index,
            _scratch: temp,
        })
    }

    /// The checksums of the parent's blocks of this file; `None` when the parent
    /// did not have it as a relation file.
    pub fn blocks(
        &self,
        tablespace: Option<u32>,
        path: &str,
    ) -> io::Result<Option<Vec<BlockHash>>> {
        let Some(&(at, count)) = self.index.get(&(tablespace.unwrap_or(0), path.to_string()))
        else {
            return Ok(None);
        };
        let mut raw = vec![0u8; count as usize * BLOCK_HASH_LEN];
        self.file.read_exact_at(&mut raw, at)?;
        Ok(Some(
            raw.chunks_exact(BLOCK_HASH_LEN)
                .map(|c| {
                    let mut h = [0u8; BLOCK_HASH_LEN];
                    h.copy_from_slice(c);
                    h
                })
                .collect(),
        ))
    }

    /// Whether the parent's map has this file.
    pub fn contains(&self, tablespace: Option<u32>, path: &str) -> bool {
        self.index
            .contains_key(&(tablespace.unwrap_or(0), path.to_string()))
    }

    /// Relation files the parent's map holds.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the map holds no file.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    offset: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

/// Blocks kept in memory while a relation file is compared; past this they go
/// to an unnamed scratch file, so a 1 GiB segment that changed whole costs disk,
/// not memory.
const SPOOL_IN_MEMORY: usize = 16 << 20;

/// What a backup records and compares block by block (PostgreSQL 15 and 16).
pub struct BlockDiff {
    /// This backup's map.
    pub map: MapWriter,
    /// The parent's, for an incremental backup.
    pub parent: Option<std::sync::Arc<ParentMap>>,
    /// Where spilled blocks go (the backup's local folder).
    pub scratch: PathBuf,
    /// Block checksums of `INCREMENTAL.*` files a reader built itself (the SQL
    /// path, which reads only changed blocks): the file's whole map, keyed by
    /// tablespace oid (0 for the data directory) and the relation file's path,
    /// put here before the file enters the stream and taken when it is stored.
    pub supplied: Option<std::sync::Arc<Supplied>>,
}

/// See [`BlockDiff::supplied`].
pub type Supplied = std::sync::Mutex<HashMap<(u32, String), Vec<BlockHash>>>;

/// The blocks of one relation file that differ from the parent's, ready to be
/// stored as an `INCREMENTAL.*` file.
pub struct Changed {
    header: Vec<u8>,
    spool: Spool,
    /// Blocks kept.
    pub blocks: u32,
}

enum Spool {
    Memory(Vec<u8>),
    File(File),
}

impl Changed {
    /// Bytes of the `INCREMENTAL.*` file.
    pub fn size(&self) -> u64 {
        self.header.len() as u64 + u64::from(self.blocks) * BLCKSZ as u64
    }

    /// The `INCREMENTAL.*` file's content.
    pub fn into_reader(self) -> io::Result<Box<dyn Read>> {
        let header = io::Cursor::new(self.header);
        Ok(match self.spool {
            Spool::Memory(v) => Box::new(header.chain(io::Cursor::new(v))),
            Spool::File(mut f) => {
                use std::io::Seek;
                f.seek(io::SeekFrom::Start(0))?;
                Box::new(header.chain(BufReader::with_capacity(1 << 20, f)))
            }
        })
    }
}

/// The kept blocks of one relation file, gathered in block order: in memory up
/// to [`SPOOL_IN_MEMORY`], then in an unnamed scratch file.
pub struct Patch {
    kept: Vec<u32>,
    spool: Spool,
    scratch: PathBuf,
}

impl Patch {
    /// An empty patch spilling under `scratch`.
    pub fn new(scratch: &Path) -> Patch {
        Patch {
            kept: Vec::new(),
            spool: Spool::Memory(Vec::new()),
            scratch: scratch.to_path_buf(),
        }
    }

    /// Keeps block `number` (exactly [`BLCKSZ`] bytes); numbers must ascend.
    pub fn keep(&mut self, number: u32, data: &[u8]) -> io::Result<()> {
        if let Spool::Memory(v) = &self.spool {
            if v.len() + BLCKSZ > SPOOL_IN_MEMORY {
                let mut f = tempfile::tempfile_in(&self.scratch)?;
                f.write_all(v)?;
                self.spool = Spool::File(f);
            }
        }
        match &mut self.spool {
            Spool::Memory(v) => v.extend_from_slice(data),
            Spool::File(f) => f.write_all(data)?,
        }
        self.kept.push(number);
        Ok(())
    }

    /// The `INCREMENTAL.*` file of the kept blocks, for a file now `truncation`
    /// blocks long.
    pub fn finish(self, truncation: u32) -> Changed {
        Changed {
            header: incremental_header(&self.kept, truncation),
            blocks: self.kept.len() as u32,
            spool: self.spool,
        }
    }
}

/// Reads a relation file of `size` bytes from `src`, pushes every block's
/// checksum onto `hashes`, and keeps the blocks whose checksum differs from the
/// parent's at the same place (`parent`), or that lie past the parent's end.
pub fn diff(
    src: &mut dyn Read,
    size: u64,
    parent: &[BlockHash],
    hashes: &mut Vec<BlockHash>,
    scratch: &Path,
) -> io::Result<Changed> {
    let total = size / BLCKSZ as u64;
    let truncation = blocks_of(size)?;
    let mut patch = Patch::new(scratch);
    let mut buf = vec![0u8; 128 * BLCKSZ];
    let mut block = 0u32;
    while u64::from(block) < total {
        let n = ((total - u64::from(block)) as usize).min(128);
        let piece = &mut buf[..n * BLCKSZ];
        src.read_exact(piece)?;
        for data in piece.chunks_exact(BLCKSZ) {
            let h = block_hash(u64::from(block), data);
            hashes.push(h);
            if parent.get(block as usize) != Some(&h) {
                patch.keep(block, data)?;
            }
            block += 1;
        }
    }
    Ok(patch.finish(truncation))
}

/// The number of blocks of a relation segment of `size` bytes.
pub fn blocks_of(size: u64) -> io::Result<u32> {
    u32::try_from(size / BLCKSZ as u64)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a relation segment over 32 TiB"))
}

/// The header of an `INCREMENTAL.*` file holding `blocks` of a relation file now
/// `truncation` blocks long (PostgreSQL 17's layout: magic, block count,
/// truncation length, the block numbers, padded to a whole block when there is
/// at least one).
pub fn incremental_header(blocks: &[u32], truncation: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(12 + 4 * blocks.len());
    for w in [INCREMENTAL_MAGIC, blocks.len() as u32, truncation] {
        h.extend_from_slice(&w.to_ne_bytes());
    }
    for b in blocks {
        h.extend_from_slice(&b.to_ne_bytes());
    }
    if !blocks.is_empty() {
        h.resize(h.len().div_ceil(BLCKSZ) * BLCKSZ, 0);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_recognised() {
        for yes in [
            ("base/5/16384", None),
            ("base/5/16384.2", None),
            ("base/5/16384_fsm", None),
            ("base/5/16384_vm.1", None),
            ("base/5/16384_init", None),
            ("global/1262", None),
            ("PG_15_202209061/5/16390", Some(16400)),
        ] {
            assert!(is_relation_file(yes.0, yes.1), "{yes:?}");
        }
        for no in [
            ("base/5/pg_internal.init", None),
            ("base/5/PG_VERSION", None),
            ("global/pg_control", None),
            ("base/5/t3_16384", None),
            ("base/5/16384_xyz", None),
            ("base/5/16384.", None),
            ("pg_wal/000000010000000000000001", None),
            ("base/x/16384", None),
            ("PG_15_202209061/5/16390", None),
            ("base/5/16390", Some(16400)),
        ] {
            assert!(!is_relation_file(no.0, no.1), "{no:?}");
        }
        assert_eq!(
            incremental_name("base/5/16384.1"),
            "base/5/INCREMENTAL.16384.1"
        );
    }

    #[test]
    fn a_files_checksum_from_its_blocks_is_blake3s() {
        for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 100] {
            let data: Vec<u8> = (0..n * BLCKSZ).map(|i| (i * 7 + i / 8191) as u8).collect();
            let mut tree = BlockTree::new(data.len() as u64);
            for (i, b) in data.chunks(BLCKSZ).enumerate() {
                assert_eq!(
                    tree.push(b),
                    block_hash(i as u64, b),
                    "{n} blocks, block {i}"
                );
            }
            assert_eq!(tree.finalize(), blake3::hash(&data), "{n} blocks");
        }
        // The same bytes at another place have another checksum.
        let b = vec![1u8; BLCKSZ];
        assert_ne!(block_hash(0, &b), block_hash(1, &b));
    }

    #[test]
    fn headers_match_what_the_restore_reads() {
        assert_eq!(incremental_header(&[], 7).len(), 12);
        let h = incremental_header(&[3, 9], 10);
        assert_eq!(h.len(), BLCKSZ);
        assert_eq!(&h[4..8], &2u32.to_ne_bytes());
        assert_eq!(&h[16..20], &9u32.to_ne_bytes());
    }
}
