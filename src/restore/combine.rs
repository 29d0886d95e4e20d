//! Restoring the relation files of an incremental backup: PostgreSQL 17 sends a
//! relation segment that changed partly as `INCREMENTAL.<name>`, holding only the
//! blocks changed since the parent backup. The file is rebuilt from the chain,
//! as `pg_combinebackup` does: each block comes from the newest backup holding it.
//!
//! The `INCREMENTAL.*` format (PostgreSQL 17): a header of native-endian `u32`s,
//! magic `0xd3ae1f0d`, the number of blocks, the truncation block length, the
//! block numbers (relative to the segment, in any order), zero padding up to a
//! multiple of BLCKSZ when there is at least one block; then the blocks, in the
//! order of their numbers in the header.
//!
//! Rebuilding is one pass over the chain, newest first: every source is streamed
//! once (and its checksum verified) and each of its blocks no newer backup
//! provided is written in place. A block at or past the truncation block length
//! of a newer incremental was truncated away since that older backup: older
//! backups never provide it. The file ends at the newest header's truncation
//! length, or after its highest block.

use super::files::{check_content, copy_entry, corrupt, safe_relative};
use super::RestoreError;
use crate::backup::bundle::BundleReader;
use crate::backup::{BackupDir, BackupInfo, FileEntry, FileKind};
use crate::error::{IoError, IoResultExt};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub use crate::backup::block_map::{reconstructed_path, INCREMENTAL_MAGIC, INCREMENTAL_PREFIX};

/// PostgreSQL's block size (the default build, which every supported package uses).
pub const BLCKSZ: u64 = crate::backup::block_map::BLCKSZ as u64;

/// Blocks in a 1 GiB relation segment: no header may list more.
const MAX_BLOCKS: u32 = (1 << 30) / BLCKSZ as u32;

/// The backups an incremental backup is built on, each with the entries of its
/// file list that a rebuild may need (only those: the lists are streamed).
pub struct Chain {
    /// Parent first, the full backup last.
    levels: Vec<Level>,
    /// Visibility map forks left out of the restore (tablespace, `<dir>/<relfilenode>_vm`):
    /// see [`Chain::drops`].
    stale_vm: HashSet<(Option<u32>, String)>,
}

/// `<dir>/<relfilenode>_vm` for the main fork file `<dir>/<relfilenode>[.N]`.
fn vm_of_main(path: &str) -> Option<String> {
    let (dir, name) = path.rsplit_once('/')?;
    let rel = name.split_once('.').map_or(name, |(r, _)| r);
    (!rel.is_empty() && rel.bytes().all(|b| b.is_ascii_digit())).then(|| format!("{dir}/{rel}_vm"))
}

/// `<dir>/<relfilenode>_vm` for a visibility map file `<dir>/<relfilenode>_vm[.N]`.
fn vm_base(path: &str) -> Option<&str> {
    let base = match path.rsplit_once('.') {
        Some((b, seg)) if seg.bytes().all(|c| c.is_ascii_digit()) && b.ends_with("_vm") => b,
        _ => path,
    };
    base.ends_with("_vm").then_some(base)
}

struct Level {
    dir: BackupDir,
    info: BackupInfo,
    /// By (tablespace, reconstructed path).
    files: HashMap<(Option<u32>, String), FileEntry>,
}

impl Chain {
    /// Indexes the ancestors' file lists by the relation files `newest` holds as
    /// `INCREMENTAL.*`.
    pub fn build(
        newest: &BackupDir,
        newest_info: &BackupInfo,
        ancestors: Vec<(BackupDir, BackupInfo)>,
    ) -> Result<Chain, RestoreError> {
        let mut wanted: HashSet<(Option<u32>, String)> = HashSet::new();
        let mut stale_vm = HashSet::new();
        let server_side = |i: &BackupInfo| {
            i.incremental_method() == Some(crate::backup::IncrementalMethod::Server)
        };
        // A relation whose heap changed in a server-side incremental: its main
        // fork is there whole (new, or changed too much to send in part), or as
        // an INCREMENTAL file holding blocks (more than the 12-byte header).
        let mut note_change = |e: &FileEntry, info: &BackupInfo| {
            if !server_side(info) {
                return;
            }
            let (path, changed) = match reconstructed_path(&e.path) {
                Some(p) => (p, e.size > 12),
                None => (e.path.clone(), true),
            };
            if changed && crate::backup::block_map::is_relation_file(&path, e.tablespace) {
                if let Some(vm) = vm_of_main(&path) {
                    stale_vm.insert((e.tablespace, vm));
                }
            }
        };
        for e in newest.files()? {
            let e = e?;
            if e.kind == FileKind::File {
                note_change(&e, newest_info);
                if let Some(p) = reconstructed_path(&e.path) {
                    wanted.insert((e.tablespace, p));
                }
            }
        }
        let mut levels = Vec::new();
        for (dir, info) in ancestors {
            let mut files = HashMap::new();
            for e in dir.files()? {
                let e = e?;
                if e.kind != FileKind::File {
                    continue;
                }
                note_change(&e, &info);
                let key = (
                    e.tablespace,
                    reconstructed_path(&e.path).unwrap_or_else(|| e.path.clone()),
                );
                if wanted.contains(&key) {
                    files.insert(key, e);
                }
            }
            levels.push(Level { dir, info, files });
        }
        Ok(Chain { levels, stale_vm })
    }

    /// Whether the restore leaves out this file (its path as restored): the
    /// visibility map of a relation whose heap changed in a PostgreSQL 17+
    /// server-side incremental of the chain. PostgreSQL clears visibility map
    /// bits without WAL of their own, so its WAL summaries, and the incremental,
    /// can miss a map block whose bits a heap change cleared (a PostgreSQL bug,
    /// found in 2026): rebuilt from an older backup, the map would call pages
    /// all-visible that are not, and index-only scans and VACUUM would trust it.
    /// A missing map is a correct one (no bit set); VACUUM rebuilds it.
    pub fn drops(&self, tablespace: Option<u32>, path: &str) -> bool {
        !self.stale_vm.is_empty()
            && vm_base(path).is_some_and(|b| self.stale_vm.contains(&(tablespace, b.to_string())))
    }

    /// Relations whose visibility map the restore leaves out ([`Chain::drops`]).
    pub fn dropped_maps(&self) -> usize {
        self.stale_vm.len()
    }

    /// About how many bytes restoring the chain writes (for progress): the full
    /// backup's size, or the newest backup's when larger.
    pub fn estimated_size(&self, newest: &BackupInfo) -> u64 {
        let root = self.levels.last().map_or(0, |l| l.info.size_bytes);
        root.max(newest.size_bytes)
    }

    /// Rebuilds the file `e` (an `INCREMENTAL.*` entry of the newest backup) into
    /// `out`, an empty file; returns its size. Every source's size and checksum are
    /// verified against its backup's file list.
    pub fn rebuild(
        &self,
        dir: &BackupDir,
        info: &BackupInfo,
        e: &FileEntry,
        out: &File,
        out_path: &Path,
    ) -> Result<u64, RestoreError> {
        let target = reconstructed_path(&e.path)
            .ok_or_else(|| corrupt(info, format!("'{}' is not an incremental file", e.path)))?;
        let mut state = Rebuild::new(out);
        state.feed(dir, info, e, Source::Incremental, out_path)?;
        let mut full_seen = false;
        for level in &self.levels {
            if state.limit == 0 {
                break;
            }
            let key = (e.tablespace, target.clone());
            let Some(entry) = level.files.get(&key) else {
                return Err(corrupt(
                    info,
                    format!(
                        "'{target}' is incremental, but backup {} of its chain holds neither it nor {}: the chain is damaged",
                        level.info.backup_id,
                        e.path
                    ),
                ));
            };
            let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
            let source = if name.starts_with(INCREMENTAL_PREFIX) {
                Source::Incremental
            } else {
                Source::Full
            };
            state.feed(&level.dir, &level.info, entry, source, out_path)?;
            if source == Source::Full {
                full_seen = true;
                break;
            }
        }
        if !full_seen && state.limit > 0 {
            return Err(corrupt(
                info,
                format!("'{target}': the chain ends without a full copy of it"),
            ));
        }
        let size = u64::from(state.block_length) * BLCKSZ;
        out.set_len(size).at(out_path)?;
        Ok(size)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Incremental,
    Full,
}

/// The file being rebuilt.
struct Rebuild<'a> {
    out: &'a File,
    /// Blocks the rebuilt file has (set by the newest header).
    block_length: u32,
    /// Blocks at or past this were truncated since the older backups.
    limit: u32,
    /// Blocks already written, by a newer source.
    claimed: Vec<bool>,
    /// The next source is the newest incremental file.
    newest: bool,
}

impl<'a> Rebuild<'a> {
    /// A rebuild into `out`, before the newest source.
    fn new(out: &'a File) -> Rebuild<'a> {
        Rebuild {
            out,
            block_length: 0,
            limit: u32::MAX,
            claimed: Vec::new(),
            newest: true,
        }
    }

    /// Streams one source through a [`Blocks`] parser and checks its content.
    fn feed(
        &mut self,
        dir: &BackupDir,
        info: &BackupInfo,
        e: &FileEntry,
        source: Source,
        out_path: &Path,
    ) -> Result<(), RestoreError> {
        let mut bundles = BundleReader::new(dir, 0);
        let mut parser = Blocks {
            rebuild: self,
            source,
            buf: Vec::new(),
            header: None,
            next: 0,
            failure: None,
        };
        let copied = copy_entry(dir, info, e, &mut parser, &mut bundles);
        if let Some(f) = parser.failure.take() {
            return Err(match f {
                Failure::Format(m) => corrupt(info, format!("'{}': {m}", e.path)),
                Failure::Write(err) => IoError::new(out_path, err).into(),
            });
        }
        let (size, sum) = copied?;
        parser
            .finish()
            .map_err(|m| corrupt(info, format!("'{}': {m}", e.path)))?;
        let truncation = parser.header.as_ref().map(|h| h.truncation);
        check_content(info, e, size, &sum)?;
        Ok(self.source_done(truncation).at(out_path)?)
    }

    /// After a source: its truncation length limits what older sources give (not
    /// its own blocks, which may lie past it).
    fn source_done(&mut self, truncation: Option<u32>) -> io::Result<()> {
        if let Some(t) = truncation {
            self.limit = self.limit.min(t);
        }
        Ok(())
    }

    /// Whether this source gives block `b` (claiming it): no newer source gave it
    /// and it was not truncated away since.
    fn accept(&mut self, b: u32) -> bool {
        if b >= self.block_length || b >= self.limit {
            return false;
        }
        let slot = &mut self.claimed[b as usize];
        if *slot {
            return false;
        }
        *slot = true;
        true
    }

    /// Writes the accepted blocks of `src` (whole blocks, the `*next`th of the
    /// source first), each run of consecutive ones in one write straight from
    /// `src`; returns the bytes used.
    fn take(
        &mut self,
        header: Option<&Header>,
        next: &mut u32,
        src: &[u8],
    ) -> Result<usize, Failure> {
        let size = BLCKSZ as usize;
        let out = self.out;
        let write = |run: Option<(u32, usize, usize)>| match run {
            Some((b, at, len)) => out
                .write_all_at(&src[at..at + len], u64::from(b) * BLCKSZ)
                .map_err(Failure::Write),
            None => Ok(()),
        };
        // The pending run: first block number, where it starts in `src`, bytes.
        let mut run: Option<(u32, usize, usize)> = None;
        let mut at = 0;
        while src.len() - at >= size {
            let b = match header {
                Some(h) => *h.blocks.get(*next as usize).ok_or_else(|| {
                    Failure::Format(format!(
                        "more data than the {} blocks its header lists",
                        h.blocks.len()
                    ))
                })?,
                None => *next,
            };
            run = match (run, self.accept(b)) {
                (Some((rb, ra, rl)), true) if rb + (rl / size) as u32 == b && ra + rl == at => {
                    Some((rb, ra, rl + size))
                }
                (pending, accepted) => {
                    write(pending)?;
                    accepted.then_some((b, at, size))
                }
            };
            *next += 1;
            at += size;
        }
        write(run)?;
        Ok(at)
    }
}

struct Header {
    blocks: Vec<u32>,
    truncation: u32,
}

enum Failure {
    Format(String),
    Write(io::Error),
}

/// A `Write` sink parsing one source as its bytes are decompressed.
struct Blocks<'a, 'b> {
    rebuild: &'a mut Rebuild<'b>,
    source: Source,
    buf: Vec<u8>,
    header: Option<Header>,
    /// Index of the next block (in the header's list, or in the full file).
    next: u32,
    failure: Option<Failure>,
}

impl Blocks<'_, '_> {
    /// The header, once enough bytes arrived.
    fn parse_header(&mut self) -> Result<bool, String> {
        if self.buf.len() < 12 {
            return Ok(false);
        }
        let word = |i: usize| {
            u32::from_ne_bytes([
                self.buf[4 * i],
                self.buf[4 * i + 1],
                self.buf[4 * i + 2],
                self.buf[4 * i + 3],
            ])
        };
        if word(0) != INCREMENTAL_MAGIC {
            return Err(format!(
                "not an incremental file (magic {:#x}, expected {INCREMENTAL_MAGIC:#x})",
                word(0)
            ));
        }
        let (n, truncation) = (word(1), word(2));
        if n > MAX_BLOCKS || truncation > MAX_BLOCKS {
            return Err(format!(
                "header says {n} blocks and truncation length {truncation}: more than a segment holds"
            ));
        }
        let mut len = 12 + 4 * n as usize;
        if n > 0 && len % BLCKSZ as usize != 0 {
            len += BLCKSZ as usize - len % BLCKSZ as usize;
        }
        if self.buf.len() < len {
            return Ok(false);
        }
        let blocks: Vec<u32> = (0..n as usize).map(|i| word(3 + i)).collect();
        if blocks.iter().any(|&b| b >= MAX_BLOCKS) {
            return Err("a block number is past the end of a segment".into());
        }
        self.buf.drain(..len);
        let r = &mut *self.rebuild;
        if r.newest {
            r.newest = false;
            let highest = blocks.iter().map(|&b| b + 1).max().unwrap_or(0);
            r.block_length = truncation.max(highest);
            r.claimed = vec![false; r.block_length as usize];
        }
        self.header = Some(Header { blocks, truncation });
        Ok(true)
    }

    fn take_blocks(&mut self) -> Result<(), Failure> {
        if self.source == Source::Incremental && self.header.is_none() {
            match self.parse_header() {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(m) => return Err(Failure::Format(m)),
            }
        }
        let used = self
            .rebuild
            .take(self.header.as_ref(), &mut self.next, &self.buf)?;
        self.buf.drain(..used);
        Ok(())
    }

    /// Blocks straight from the decompressor's output, when nothing is pending.
    fn take_direct(&mut self, data: &[u8]) -> Result<(), Failure> {
        let used = self
            .rebuild
            .take(self.header.as_ref(), &mut self.next, data)?;
        self.buf.extend_from_slice(&data[used..]);
        Ok(())
    }

    /// Checks that the source ended where its header says.
    fn finish(&mut self) -> Result<(), String> {
        match (&self.header, self.source) {
            (None, Source::Incremental) => Err("shorter than its header".into()),
            (Some(h), _) if (self.next as usize) < h.blocks.len() || !self.buf.is_empty() => {
                Err(format!(
                    "holds {} whole blocks (and {} more bytes), its header lists {}",
                    self.next,
                    self.buf.len(),
                    h.blocks.len()
                ))
            }
            _ => Ok(()),
        }
    }
}

impl Write for Blocks<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the rebuild stopped"));
        }
        let ready = self.buf.is_empty() && (self.source == Source::Full || self.header.is_some());
        let taken = if ready {
            self.take_direct(data)
        } else {
            self.buf.extend_from_slice(data);
            self.take_blocks()
        };
        if let Err(f) = taken {
            self.failure = Some(f);
            return Err(io::Error::other("the rebuild stopped"));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `backup_label` of an incremental backup, as a data directory needs it: without
/// the `INCREMENTAL FROM` lines, which PostgreSQL refuses to start with.
pub fn label_without_incremental(label: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len());
    for line in label.split_inclusive(|&c| c == b'\n') {
        if !line.starts_with(b"INCREMENTAL FROM ") {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Whether `e` is the data directory's `backup_label`.
pub fn is_backup_label(e: &FileEntry) -> bool {
    e.tablespace.is_none() && safe_relative(&e.path).is_some_and(|p| p == Path::new("backup_label"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_maps_of_changed_relations() {
        assert_eq!(
            vm_of_main("base/5/16384").as_deref(),
            Some("base/5/16384_vm")
        );
        assert_eq!(
            vm_of_main("base/5/16384.2").as_deref(),
            Some("base/5/16384_vm")
        );
        assert_eq!(vm_of_main("base/5/16384_fsm"), None);
        assert_eq!(vm_base("base/5/16384_vm"), Some("base/5/16384_vm"));
        assert_eq!(vm_base("base/5/16384_vm.1"), Some("base/5/16384_vm"));
        assert_eq!(vm_base("base/5/16384"), None);
        assert_eq!(vm_base("base/5/16384_fsm"), None);
    }

    #[test]
    fn names_and_labels() {
        assert_eq!(
            reconstructed_path("base/5/INCREMENTAL.16384.1").as_deref(),
            Some("base/5/16384.1")
        );
        assert_eq!(reconstructed_path("INCREMENTAL.1").as_deref(), Some("1"));
        assert_eq!(reconstructed_path("base/5/16384"), None);
        assert_eq!(reconstructed_path("base/5/INCREMENTAL."), None);
        let label = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
INCREMENTAL FROM LSN: 0/1000028\nINCREMENTAL FROM TLI: 1\nSTART TIMELINE: 1\n";
        assert_eq!(
            label_without_incremental(label),
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n"
        );
    }

    fn incremental(truncation: u32, blocks: &[(u32, u8)]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [INCREMENTAL_MAGIC, blocks.len() as u32, truncation] {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        for (b, _) in blocks {
            v.extend_from_slice(&b.to_ne_bytes());
        }
        if !blocks.is_empty() {
            v.resize(v.len().div_ceil(BLCKSZ as usize) * BLCKSZ as usize, 0);
        }
        for (_, fill) in blocks {
            v.extend(std::iter::repeat_n(*fill, BLCKSZ as usize));
        }
        v
    }

    fn full(fills: &[u8]) -> Vec<u8> {
        fills
            .iter()
            .flat_map(|f| std::iter::repeat_n(*f, BLCKSZ as usize))
            .collect()
    }

    /// Feeds sources newest first, in uneven pieces, and returns the blocks' fill bytes.
    fn rebuild(sources: &[(Source, Vec<u8>)]) -> Result<Vec<u8>, String> {
        let file = tempfile::tempfile().unwrap();
        let mut r = Rebuild::new(&file);
        for (source, bytes) in sources {
            let mut p = Blocks {
                rebuild: &mut r,
                source: *source,
                buf: Vec::new(),
                header: None,
                next: 0,
                failure: None,
            };
            for piece in bytes.chunks(3001) {
                if p.write_all(piece).is_err() {
                    return Err(match p.failure.take() {
                        Some(Failure::Format(m)) => m,
                        _ => "write failed".into(),
                    });
                }
            }
            p.finish()?;
            let truncation = p.header.as_ref().map(|h| h.truncation);
            r.source_done(truncation).unwrap();
        }
        let len = u64::from(r.block_length) * BLCKSZ;
        file.set_len(len).unwrap();
        let mut data = Vec::new();
        use std::io::{Read, Seek};
        let mut f = &file;
        f.rewind().unwrap();
        f.read_to_end(&mut data).unwrap();
        Ok(data.chunks(BLCKSZ as usize).map(|b| b[0]).collect())
    }

    #[test]
    fn the_newest_source_of_each_block_wins_within_the_truncation_length() {
        use Source::*;
        // Full: 6 blocks. Middle incremental: truncated to 4 blocks, then block 1
        // changed and block 4 written again. Newest: block 2 changed, 5 blocks.
        let got = rebuild(&[
            (Incremental, incremental(5, &[(2, 0x32)])),
            (Incremental, incremental(4, &[(1, 0x21), (4, 0x24)])),
            (Full, full(&[0x10, 0x11, 0x12, 0x13, 0x14, 0x15])),
        ])
        .unwrap();
        assert_eq!(got, [0x10, 0x21, 0x32, 0x13, 0x24]);
        // An unchanged segment (a 12-byte header) is its full copy; a block past
        // the full copy's end that no backup holds reads as zeros.
        let got = rebuild(&[
            (Incremental, incremental(3, &[])),
            (Full, full(&[0x10, 0x11])),
        ])
        .unwrap();
        assert_eq!(got, [0x10, 0x11, 0]);
        // The newest file's highest block extends it past its truncation length.
        let got = rebuild(&[
            (Incremental, incremental(1, &[(3, 0x33)])),
            (Full, full(&[0x10, 0x11, 0x12, 0x13])),
        ])
        .unwrap();
        assert_eq!(got, [0x10, 0, 0, 0x33]);
    }

    #[test]
    fn damaged_sources_are_refused() {
        use Source::*;
        let mut bad = incremental(2, &[(0, 1)]);
        bad[0] ^= 0xff;
        assert!(rebuild(&[(Incremental, bad)])
            .unwrap_err()
            .contains("magic"));
        let mut short = incremental(2, &[(0, 1), (1, 2)]);
        short.truncate(short.len() - 10);
        assert!(rebuild(&[(Incremental, short)])
            .unwrap_err()
            .contains("its header lists 2"));
        let huge = incremental(MAX_BLOCKS + 1, &[]);
        assert!(rebuild(&[(Incremental, huge)])
            .unwrap_err()
            .contains("more than a segment"));
    }
}
