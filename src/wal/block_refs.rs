//! WAL record decoding for block references: which relation blocks each record
//! touches, and the relation-level events (smgr create/truncate, relations dropped at
//! commit or abort, databases created or dropped) a change map between two backups
//! needs. Reads whole segments as PostgreSQL 15 to 18 write them (`XLogRecord`,
//! `XLogRecordBlockHeader`, as `DecodeXLogRecord` lays them out).
//!
//! Segments are fed one after the other to a [`Decoder`]; a record running past the
//! end of one segment is finished by the next one, and a record continuing from a
//! segment that was not fed is skipped.

use super::header::{major_for_magic, LONG_HEADER_SIZE, XLOG_BLCKSZ};
use super::lsn::Lsn;
use super::segment::WalSegment;
use std::io::Read;

/// `SizeOfXLogShortPHD`.
const SHORT_HEADER_SIZE: usize = 24;
/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`.
const XLP_LONG_HEADER: u16 = 0x0002;
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: the record running into this page was
/// abandoned (crash recovery ended inside it) and an `XLOG_OVERWRITE_CONTRECORD`
/// follows instead.
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `SizeOfXLogRecord`.
const RECORD_HEADER_SIZE: usize = 24;
/// `XLogRecordMaxSize` (1020 MiB).
const MAX_RECORD_SIZE: u32 = 1020 * 1024 * 1024;
/// `BLCKSZ`: relation pages are 8 KiB.
const BLCKSZ: u16 = 8192;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
const XLR_RMGR_INFO_MASK: u8 = 0xF0;

const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_WILL_INIT: u8 = 0x40;
const BKPBLOCK_SAME_REL: u8 = 0x80;

const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// `BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD` (15+).
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;

const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const RM_SMGR_ID: u8 = 2;
const RM_DBASE_ID: u8 = 4;

const XLOG_SWITCH: u8 = 0x40;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const SMGR_TRUNCATE_HEAP: u32 = 0x0001;
const SMGR_TRUNCATE_VM: u32 = 0x0002;
const SMGR_TRUNCATE_FSM: u32 = 0x0004;

const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;

const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
const XLOG_DBASE_DROP: u8 = 0x20;

/// The oldest major whose record format this module decodes (15 changed `bimg_info`).
const OLDEST_MAJOR: u32 = 15;

/// A relation's storage identity (`RelFileLocator`, `RelFileNode` before 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelFileLocator {
    /// Tablespace oid (1663 is `pg_default`, 1664 `pg_global`).
    pub spc_oid: u32,
    /// Database oid (0 for shared relations).
    pub db_oid: u32,
    /// The relfilenode (`pg_relation_filenode`).
    pub rel_number: u32,
}

/// A relation fork (`ForkNumber`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fork {
    /// `MAIN_FORKNUM`.
    Main,
    /// `FSM_FORKNUM`.
    Fsm,
    /// `VISIBILITYMAP_FORKNUM`.
    VisibilityMap,
    /// `INIT_FORKNUM`.
    Init,
}

impl Fork {
    /// The fork with PostgreSQL's number, if there is one.
    pub fn from_number(n: u32) -> Option<Fork> {
        match n {
            0 => Some(Fork::Main),
            1 => Some(Fork::Fsm),
            2 => Some(Fork::VisibilityMap),
            3 => Some(Fork::Init),
            _ => None,
        }
    }

    /// The name `pg_waldump` and file names use: main, fsm, vm, init.
    pub fn name(self) -> &'static str {
        match self {
            Fork::Main => "main",
            Fork::Fsm => "fsm",
            Fork::VisibilityMap => "vm",
            Fork::Init => "init",
        }
    }
}

/// One block reference of a record (`blkref #N` in `pg_waldump`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// The block reference id (0 to `XLR_MAX_BLOCK_ID`).
    pub id: u8,
    /// The relation.
    pub rel: RelFileLocator,
    /// The fork.
    pub fork: Fork,
    /// The block number within the fork.
    pub block: u32,
    /// The record carries a full-page image of the block.
    pub has_image: bool,
    /// Redo re-initialises the page (`BKPBLOCK_WILL_INIT`).
    pub will_init: bool,
}

/// Which forks an `XLOG_SMGR_TRUNCATE` truncates (`SMGR_TRUNCATE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TruncatedForks {
    /// `SMGR_TRUNCATE_HEAP`: the main fork.
    pub main: bool,
    /// `SMGR_TRUNCATE_FSM`.
    pub fsm: bool,
    /// `SMGR_TRUNCATE_VM`.
    pub vm: bool,
}

/// A change to relation or database storage that block references do not show.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RelEvent {
    /// `XLOG_SMGR_CREATE`: a fork file was created.
    Create {
        /// The relation.
        rel: RelFileLocator,
        /// The fork created.
        fork: Fork,
    },
    /// `XLOG_SMGR_TRUNCATE`: forks were cut to `blocks` blocks (the FSM and VM to
    /// what covers them).
    Truncate {
        /// The relation.
        rel: RelFileLocator,
        /// The new length of the main fork in blocks.
        blocks: u32,
        /// The forks truncated.
        forks: TruncatedForks,
    },
    /// A relation (all its forks) dropped by a commit, or by an abort of the
    /// transaction that created it.
    Drop {
        /// The relation.
        rel: RelFileLocator,
    },
    /// A database was created (`XLOG_DBASE_CREATE_*`) or dropped (`XLOG_DBASE_DROP`):
    /// its whole content must be taken as changed.
    Database {
        /// The database oid.
        db_oid: u32,
    },
}

/// What one WAL record says about relation storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    /// Where the record starts.
    pub lsn: Lsn,
    /// Where the record ends (just past its last byte; the next record starts at
    /// this position aligned to 8, or after the next page header).
    pub end: Lsn,
    /// `xl_rmid`: the resource manager.
    pub rmid: u8,
    /// `xl_info`.
    pub info: u8,
    /// `xl_xid`.
    pub xid: u32,
    /// The block references, in block id order.
    pub blocks: Vec<BlockRef>,
    /// Storage changes not in `blocks`.
    pub events: Vec<RelEvent>,
    /// `XLR_SPECIAL_REL_UPDATE`: the record changes relation files in ways its block
    /// references and `events` may not cover; a change map should not trust blocks
    /// alone for the relations of this record.
    pub special_rel_update: bool,
}

/// What is wrong at a WAL position.
#[derive(Debug, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The segment could not be read.
    #[error("reading the segment: {0}")]
    Io(#[from] std::io::Error),
    /// The data is not a whole segment.
    #[error("segment data is {found} bytes, expected {expected}")]
    Size { found: u64, expected: u64 },
    /// A page magic pgbk cannot decode (another major, or not WAL).
    #[error(
        "WAL page magic 0x{magic:04X} is not one pgbk decodes (PostgreSQL 15 to 18 only{})",
        .major.map(|m| format!("; this is PostgreSQL {m}'s")).unwrap_or_default()
    )]
    Magic { magic: u16, major: Option<u32> },
    /// A page's address is not where the page is.
    #[error("page address is {found}")]
    PageAddr { found: Lsn },
    /// The first page of a segment has no long header, or its sizes are not the
    /// segment's.
    #[error("bad long page header: {0}")]
    LongHeader(String),
    /// A page does not continue the record that runs into it as it should.
    #[error("page continuation mismatch: {0}")]
    Continuation(String),
    /// `xl_tot_len` is out of bounds.
    #[error("record length {0} is out of bounds")]
    RecordLength(u32),
    /// The record's CRC32C does not match its content.
    #[error("record CRC mismatch: stored 0x{stored:08X}, computed 0x{computed:08X}")]
    Crc { stored: u32, computed: u32 },
    /// `xl_prev` does not point at the previous record.
    #[error("record's previous-record link is {found}, expected {expected}")]
    PrevLink { found: Lsn, expected: Lsn },
    /// The record's content does not parse.
    #[error("malformed record: {0}")]
    Malformed(String),
}

/// A WAL decoding failure at an LSN (the record's, or the page's for page faults).
#[derive(Debug, thiserror::Error)]
#[error("WAL at {lsn}: {kind}")]
pub struct DecodeError {
    /// The record or page where decoding failed.
    pub lsn: Lsn,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    fn new(lsn: Lsn, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { lsn, kind }
    }
}

/// A record started in a segment and not finished there.
#[derive(Debug)]
struct Partial {
    lsn: Lsn,
    buf: Vec<u8>,
    remaining: u64,
}

/// Decodes WAL segments fed in order (see the module doc).
#[derive(Debug, Default)]
pub struct Decoder {
    /// The segment whose first page may continue `partial`.
    next: Option<WalSegment>,
    partial: Option<Partial>,
    /// The last record decoded, for the `xl_prev` check.
    prev: Option<Lsn>,
}

fn u16_le(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_le(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_le(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

impl Decoder {
    /// A decoder with nothing fed yet.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// The start of a record the last segment fed began but did not finish: feed the
    /// next segment to get it.
    pub fn incomplete(&self) -> Option<Lsn> {
        self.partial.as_ref().map(|p| p.lsn)
    }

    /// Reads one whole segment (uncompressed, as PostgreSQL wrote it) and decodes it:
    /// see [`Decoder::feed_bytes`].
    pub fn feed(
        &mut self,
        segment: &WalSegment,
        mut data: impl Read,
    ) -> Result<Vec<WalRecord>, DecodeError> {
        let mut buf = Vec::with_capacity(segment.seg_size as usize);
        data.read_to_end(&mut buf)
            .map_err(|e| DecodeError::new(segment.start_lsn(), e.into()))?;
        self.feed_bytes(segment, &buf)
    }

    /// Decodes the complete record `p` into `out`; true at an XLOG_SWITCH, after
    /// which the rest of the segment is padding and the next one starts afresh.
    fn complete(
        &mut self,
        p: &Partial,
        end: Lsn,
        segment: &WalSegment,
        out: &mut Vec<WalRecord>,
    ) -> Result<bool, DecodeError> {
        let rec = decode_record(p.lsn, end, &p.buf, self.prev)?;
        self.prev = Some(rec.lsn);
        let switch = is_switch(&rec);
        out.push(rec);
        if switch {
            self.next = Some(segment.next());
        }
        Ok(switch)
    }

    /// Decodes one whole segment: returns every record that ends in it and starts in
    /// it or in the segment fed just before (the previous segment's unfinished
    /// record). Decoding of the segment stops at `XLOG_SWITCH` or at a zeroed record
    /// header (the end of the WAL written so far). A segment that is not the
    /// successor (same timeline, next number) of the last one fed starts afresh: a
    /// record continuing into it is skipped, and a record [`Decoder::incomplete`]
    /// reported is dropped.
    pub fn feed_bytes(
        &mut self,
        segment: &WalSegment,
        data: &[u8],
    ) -> Result<Vec<WalRecord>, DecodeError> {
        let start = segment.start_lsn();
        if self.next != Some(*segment) {
            // Not the successor of the last segment: nothing to continue.
            self.partial = None;
            self.prev = None;
        }
        self.next = None;
        if data.len() as u64 != segment.seg_size {
            return Err(DecodeError::new(
                start,
                DecodeErrorKind::Size {
                    found: data.len() as u64,
                    expected: segment.seg_size,
                },
            ));
        }
        let mut out = Vec::new();
        // Bytes of a record continuing from a segment not fed, to pass over.
        let mut skip: Option<u64> = None;
        let mut magic = None;
        for (index, page) in data.chunks(XLOG_BLCKSZ).enumerate() {
            let off = index * XLOG_BLCKSZ;
            let page_lsn = Lsn(start.0 + off as u64);
            if page.len() < XLOG_BLCKSZ {
                return Err(DecodeError::new(
                    page_lsn,
                    DecodeErrorKind::Size {
                        found: data.len() as u64,
                        expected: segment.seg_size,
                    },
                ));
            }
            if page[..SHORT_HEADER_SIZE].iter().all(|&b| b == 0) {
                // Never written: the WAL ends before this page.
                self.partial = None;
                return Ok(out);
            }
            let info = check_page(page, page_lsn, index == 0, segment, &mut magic)?;
            let rem_len = u32_le(page, 16) as u64;
            let mut cur = if index == 0 {
                LONG_HEADER_SIZE
            } else {
                SHORT_HEADER_SIZE
            };
            let is_cont = info & XLP_FIRST_IS_CONTRECORD != 0;
            if !is_cont && info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                // The unfinished record never happened: WAL goes on from here.
                self.partial = None;
            }
            if index == 0 && self.partial.is_none() && is_cont {
                skip = Some(rem_len);
            }
            if let Some(left) = skip {
                if !is_cont || rem_len != left {
                    return Err(DecodeError::new(
                        page_lsn,
                        DecodeErrorKind::Continuation(format!(
                            "expected {left} bytes of a continued record, page says {}",
                            if is_cont { rem_len } else { 0 }
                        )),
                    ));
                }
                let n = left.min((XLOG_BLCKSZ - cur) as u64);
                cur += n as usize;
                if left > n {
                    skip = Some(left - n);
                    continue;
                }
                skip = None;
                cur = maxalign(cur);
            } else if let Some(mut p) = self.partial.take() {
                if !is_cont || rem_len != p.remaining {
                    return Err(DecodeError::new(
                        page_lsn,
                        DecodeErrorKind::Continuation(format!(
                            "record at {} needs {} more bytes, page says {}",
                            p.lsn,
                            p.remaining,
                            if is_cont { rem_len } else { 0 }
                        )),
                    ));
                }
                let n = p.remaining.min((XLOG_BLCKSZ - cur) as u64) as usize;
                p.buf.extend_from_slice(&page[cur..cur + n]);
                p.remaining -= n as u64;
                cur += n;
                if p.remaining > 0 {
                    self.partial = Some(p);
                    continue;
                }
                let end = Lsn(page_lsn.0 + cur as u64);
                if self.complete(&p, end, segment, &mut out)? {
                    return Ok(out);
                }
                cur = maxalign(cur);
            } else if is_cont && index > 0 {
                return Err(DecodeError::new(
                    page_lsn,
                    DecodeErrorKind::Continuation(
                        "page continues a record that did not start".into(),
                    ),
                ));
            }
            while cur < XLOG_BLCKSZ {
                let lsn = Lsn(page_lsn.0 + cur as u64);
                let tot_len = u32_le(page, cur);
                if tot_len == 0 {
                    // Zeroes where a record would start: the end of the WAL written.
                    return Ok(out);
                }
                if (tot_len as usize) < RECORD_HEADER_SIZE || tot_len > MAX_RECORD_SIZE {
                    return Err(DecodeError::new(
                        lsn,
                        DecodeErrorKind::RecordLength(tot_len),
                    ));
                }
                let n = (tot_len as usize).min(XLOG_BLCKSZ - cur);
                let p = Partial {
                    lsn,
                    buf: page[cur..cur + n].to_vec(),
                    remaining: (tot_len as usize - n) as u64,
                };
                cur += n;
                if p.remaining > 0 {
                    self.partial = Some(p);
                    break;
                }
                let end = Lsn(page_lsn.0 + cur as u64);
                if self.complete(&p, end, segment, &mut out)? {
                    return Ok(out);
                }
                cur = maxalign(cur);
            }
        }
        self.next = Some(segment.next());
        Ok(out)
    }
}

fn is_switch(rec: &WalRecord) -> bool {
    rec.rmid == RM_XLOG_ID && rec.info & XLR_RMGR_INFO_MASK == XLOG_SWITCH
}

/// Checks a page header (magic, address, the long header on a segment's first page)
/// and returns `xlp_info`.
fn check_page(
    page: &[u8],
    lsn: Lsn,
    first: bool,
    segment: &WalSegment,
    magic: &mut Option<u16>,
) -> Result<u16, DecodeError> {
    let m = u16_le(page, 0);
    match *magic {
        Some(known) if known == m => {}
        _ => {
            let major = major_for_magic(m);
            if magic.is_some() || major.is_none_or(|v| v < OLDEST_MAJOR) {
                return Err(DecodeError::new(
                    lsn,
                    DecodeErrorKind::Magic { magic: m, major },
                ));
            }
            *magic = Some(m);
        }
    }
    let addr = u64_le(page, 8);
    if addr != lsn.0 {
        return Err(DecodeError::new(
            lsn,
            DecodeErrorKind::PageAddr { found: Lsn(addr) },
        ));
    }
    let info = u16_le(page, 2);
    if first {
        if info & XLP_LONG_HEADER == 0 {
            return Err(DecodeError::new(
                lsn,
                DecodeErrorKind::LongHeader("XLP_LONG_HEADER is not set".into()),
            ));
        }
        let seg_size = u32_le(page, 32) as u64;
        let blcksz = u32_le(page, 36) as usize;
        if seg_size != segment.seg_size || blcksz != XLOG_BLCKSZ {
            return Err(DecodeError::new(
                lsn,
                DecodeErrorKind::LongHeader(format!(
                    "segment size {seg_size} and page size {blcksz}, expected {} and {XLOG_BLCKSZ}",
                    segment.seg_size
                )),
            ));
        }
    }
    Ok(info)
}

/// A bounds-checked little-endian reader over a record's bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeErrorKind> {
        let s = self
            .b
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or_else(|| DecodeErrorKind::Malformed(format!("{what} runs past the data")))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, DecodeErrorKind> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeErrorKind> {
        Ok(u16_le(self.take(2, what)?, 0))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeErrorKind> {
        Ok(u32_le(self.take(4, what)?, 0))
    }
    fn rel(&mut self, what: &str) -> Result<RelFileLocator, DecodeErrorKind> {
        Ok(RelFileLocator {
            spc_oid: self.u32(what)?,
            db_oid: self.u32(what)?,
            rel_number: self.u32(what)?,
        })
    }
}

/// Decodes one whole record (`rec` is exactly `xl_tot_len` bytes): checks its CRC and
/// `xl_prev` (when `prev` is known), then reads its block headers and main data.
pub(crate) fn decode_record(
    lsn: Lsn,
    end: Lsn,
    rec: &[u8],
    prev: Option<Lsn>,
) -> Result<WalRecord, DecodeError> {
    decode_record_inner(lsn, end, rec, prev).map_err(|kind| DecodeError::new(lsn, kind))
}

fn decode_record_inner(
    lsn: Lsn,
    end: Lsn,
    rec: &[u8],
    prev: Option<Lsn>,
) -> Result<WalRecord, DecodeErrorKind> {
    if rec.len() < RECORD_HEADER_SIZE || u32_le(rec, 0) as usize != rec.len() {
        return Err(DecodeErrorKind::RecordLength(rec.len() as u32));
    }
    let xid = u32_le(rec, 4);
    let xl_prev = Lsn(u64_le(rec, 8));
    let info = rec[16];
    let rmid = rec[17];
    let stored = u32_le(rec, 20);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER_SIZE..]), &rec[..20]);
    if stored != computed {
        return Err(DecodeErrorKind::Crc { stored, computed });
    }
    if let Some(expected) = prev {
        if xl_prev != expected {
            return Err(DecodeErrorKind::PrevLink {
                found: xl_prev,
                expected,
            });
        }
    }

    let mut c = Cursor {
        b: rec,
        pos: RECORD_HEADER_SIZE,
    };
    let mut blocks: Vec<BlockRef> = Vec::new();
    let mut data_total: u64 = 0;
    let mut main_len: u64 = 0;
    let mut last_rel: Option<RelFileLocator> = None;
    while (rec.len() - c.pos) as u64 > data_total {
        let id = c.u8("block id")?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = c.u8("main data length")? as u64;
                data_total += main_len;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = c.u32("main data length")? as u64;
                data_total += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                c.u16("replication origin")?;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                c.u32("top-level xid")?;
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                if blocks.last().is_some_and(|b| b.id >= id) {
                    return Err(DecodeErrorKind::Malformed(format!(
                        "block id {id} out of order"
                    )));
                }
                let fork_flags = c.u8("block header")?;
                let data_len = c.u16("block header")?;
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                if has_data != (data_len > 0) {
                    return Err(DecodeErrorKind::Malformed(format!(
                        "block {id}: BKPBLOCK_HAS_DATA is {has_data} but data length is {data_len}"
                    )));
                }
                data_total += data_len as u64;
                let has_image = fork_flags & BKPBLOCK_HAS_IMAGE != 0;
                if has_image {
                    let image_len = c.u16("block image header")?;
                    let hole_offset = c.u16("block image header")?;
                    let bimg_info = c.u8("block image header")?;
                    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
                    let compressed = bimg_info & BKPIMAGE_COMPRESSED != 0;
                    let hole_len = if has_hole && compressed {
                        c.u16("block image hole length")?
                    } else if has_hole {
                        BLCKSZ.saturating_sub(image_len)
                    } else {
                        0
                    };
                    let bad = (has_hole && (hole_offset == 0 || hole_len == 0))
                        || (!has_hole && (hole_offset != 0 || hole_len != 0))
                        || (!compressed && !has_hole && image_len != BLCKSZ)
                        || image_len == 0;
                    if bad {
                        return Err(DecodeErrorKind::Malformed(format!(
                            "block {id}: image length {image_len}, hole offset {hole_offset}, \
                             hole length {hole_len}, flags 0x{bimg_info:02X}"
                        )));
                    }
                    data_total += image_len as u64;
                }
                let rel = if fork_flags & BKPBLOCK_SAME_REL != 0 {
                    last_rel.ok_or_else(|| {
                        DecodeErrorKind::Malformed(format!(
                            "block {id}: BKPBLOCK_SAME_REL without a previous relation"
                        ))
                    })?
                } else {
                    c.rel("block relation")?
                };
                last_rel = Some(rel);
                let block = c.u32("block number")?;
                let fork_number = fork_flags & BKPBLOCK_FORK_MASK;
                let fork = Fork::from_number(fork_number as u32).ok_or_else(|| {
                    DecodeErrorKind::Malformed(format!("block {id}: fork number {fork_number}"))
                })?;
                blocks.push(BlockRef {
                    id,
                    rel,
                    fork,
                    block,
                    has_image,
                    will_init: fork_flags & BKPBLOCK_WILL_INIT != 0,
                });
            }
            other => {
                return Err(DecodeErrorKind::Malformed(format!(
                    "invalid block id {other}"
                )));
            }
        }
    }
    if (rec.len() - c.pos) as u64 != data_total {
        return Err(DecodeErrorKind::Malformed(format!(
            "headers announce {data_total} bytes of data, {} follow",
            rec.len() - c.pos
        )));
    }
    let main = &rec[rec.len() - main_len as usize..];
    let events = events(rmid, info, main)?;
    Ok(WalRecord {
        lsn,
        end,
        rmid,
        info,
        xid,
        blocks,
        events,
        special_rel_update: info & XLR_SPECIAL_REL_UPDATE != 0,
    })
}

/// The storage events in a record's main data (smgr, xact commit/abort, dbase).
fn events(rmid: u8, info: u8, main: &[u8]) -> Result<Vec<RelEvent>, DecodeErrorKind> {
    let mut c = Cursor { b: main, pos: 0 };
    let rmgr_info = info & XLR_RMGR_INFO_MASK;
    let mut out = Vec::new();
    match (rmid, rmgr_info) {
        (RM_SMGR_ID, XLOG_SMGR_CREATE) => {
            // xl_smgr_create: RelFileLocator, ForkNumber.
            let rel = c.rel("xl_smgr_create")?;
            let n = c.u32("xl_smgr_create")?;
            let fork = Fork::from_number(n).ok_or_else(|| {
                DecodeErrorKind::Malformed(format!("XLOG_SMGR_CREATE of fork {n}"))
            })?;
            out.push(RelEvent::Create { rel, fork });
        }
        (RM_SMGR_ID, XLOG_SMGR_TRUNCATE) => {
            // xl_smgr_truncate: BlockNumber, RelFileLocator, flags.
            let blocks = c.u32("xl_smgr_truncate")?;
            let rel = c.rel("xl_smgr_truncate")?;
            let flags = c.u32("xl_smgr_truncate")?;
            out.push(RelEvent::Truncate {
                rel,
                blocks,
                forks: TruncatedForks {
                    main: flags & SMGR_TRUNCATE_HEAP != 0,
                    fsm: flags & SMGR_TRUNCATE_FSM != 0,
                    vm: flags & SMGR_TRUNCATE_VM != 0,
                },
            });
        }
        (RM_XACT_ID, _) => {
            let op = info & XLOG_XACT_OPMASK;
            if matches!(
                op,
                XLOG_XACT_COMMIT
                    | XLOG_XACT_ABORT
                    | XLOG_XACT_COMMIT_PREPARED
                    | XLOG_XACT_ABORT_PREPARED
            ) {
                // xl_xact_commit / xl_xact_abort: xact_time, then the xinfo chain.
                c.take(8, "xact time")?;
                let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
                    c.u32("xinfo")?
                } else {
                    0
                };
                if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
                    c.take(8, "xl_xact_dbinfo")?;
                }
                if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
                    let n = c.u32("xl_xact_subxacts")? as usize;
                    c.take(n.saturating_mul(4), "xl_xact_subxacts")?;
                }
                if xinfo & XACT_XINFO_HAS_RELFILELOCATORS != 0 {
                    let n = c.u32("xl_xact_relfilelocators")?;
                    for _ in 0..n {
                        let rel = c.rel("xl_xact_relfilelocators")?;
                        out.push(RelEvent::Drop { rel });
                    }
                }
            }
        }
        (
            RM_DBASE_ID,
            XLOG_DBASE_CREATE_FILE_COPY | XLOG_DBASE_CREATE_WAL_LOG | XLOG_DBASE_DROP,
        ) => {
            let db_oid = c.u32("database record")?;
            out.push(RelEvent::Database { db_oid });
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::TimeLineId;

    const SEG_SIZE: u64 = 1 << 20;

    fn seg(segno: u64) -> WalSegment {
        WalSegment {
            tli: TimeLineId(1),
            segno,
            seg_size: SEG_SIZE,
        }
    }

    /// A record: header with a good CRC, then `body` (block headers, data, main data).
    fn record(rmid: u8, info: u8, prev: Lsn, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER_SIZE];
        r.extend_from_slice(body);
        let len = r.len() as u32;
        r[0..4].copy_from_slice(&len.to_le_bytes());
        r[4..8].copy_from_slice(&7u32.to_le_bytes());
        r[8..16].copy_from_slice(&prev.0.to_le_bytes());
        r[16] = info;
        r[17] = rmid;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&r[RECORD_HEADER_SIZE..]), &r[..20]);
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        r
    }

    fn rel_bytes(r: RelFileLocator) -> Vec<u8> {
        [r.spc_oid, r.db_oid, r.rel_number]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    const REL: RelFileLocator = RelFileLocator {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16384,
    };

    /// Two blocks (an image with a hole, then SAME_REL on the vm fork with data),
    /// an origin, and short main data.
    fn heap_like_body() -> Vec<u8> {
        let mut b = vec![0u8, BKPBLOCK_HAS_IMAGE, 0, 0];
        b.extend_from_slice(&8000u16.to_le_bytes()); // image length
        b.extend_from_slice(&100u16.to_le_bytes()); // hole offset
        b.push(BKPIMAGE_HAS_HOLE);
        b.extend(rel_bytes(REL));
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&[1, BKPBLOCK_SAME_REL | BKPBLOCK_HAS_DATA | 2, 4, 0]);
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&[XLR_BLOCK_ID_ORIGIN, 1, 0]);
        b.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, 3]);
        b.extend(std::iter::repeat_n(0xAB, 8000)); // image
        b.extend_from_slice(&[1, 2, 3, 4]); // block 1 data
        b.extend_from_slice(&[9, 9, 9]); // main data
        b
    }

    #[test]
    fn decodes_block_headers_images_same_rel_and_forks() {
        let r = record(10, 0, Lsn(0x100), &heap_like_body());
        let rec = decode_record(Lsn(0x200), Lsn(0), &r, Some(Lsn(0x100))).expect("decodes");
        assert_eq!(rec.blocks.len(), 2);
        assert_eq!((rec.blocks[0].rel, rec.blocks[0].fork), (REL, Fork::Main));
        assert_eq!(rec.blocks[0].block, 3);
        assert!(rec.blocks[0].has_image);
        assert_eq!(
            (rec.blocks[1].rel, rec.blocks[1].fork),
            (REL, Fork::VisibilityMap)
        );
        assert_eq!((rec.blocks[1].id, rec.blocks[1].block), (1, 9));
        assert!(!rec.blocks[1].has_image);
    }

    #[test]
    fn names_crc_prev_link_and_malformed_faults() {
        let mut r = record(10, 0, Lsn(0x100), &heap_like_body());
        let err = decode_record(Lsn(0x200), Lsn(0), &r, Some(Lsn(0x180))).unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::PrevLink { .. }),
            "{err}"
        );
        assert_eq!(err.lsn, Lsn(0x200));
        let last = r.len() - 1;
        r[last] ^= 1;
        let err = decode_record(Lsn(0x200), Lsn(0), &r, None).unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::Crc { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with("WAL at 0/200: record CRC mismatch"));

        // SAME_REL on the first block, and a block id above XLR_MAX_BLOCK_ID.
        let bad = record(10, 0, Lsn(0), &[0, BKPBLOCK_SAME_REL, 0, 0, 0, 0, 0, 0]);
        let err = decode_record(Lsn(0x200), Lsn(0), &bad, None).unwrap_err();
        assert!(err.to_string().contains("SAME_REL"), "{err}");
        let bad = record(10, 0, Lsn(0), &[40, 0, 0, 0]);
        let err = decode_record(Lsn(0x200), Lsn(0), &bad, None).unwrap_err();
        assert!(err.to_string().contains("invalid block id 40"), "{err}");
        // Data announced but missing.
        let bad = record(10, 0, Lsn(0), &[XLR_BLOCK_ID_DATA_SHORT, 10, 1]);
        assert!(decode_record(Lsn(0x200), Lsn(0), &bad, None).is_err());
    }

    #[test]
    fn reads_smgr_xact_and_dbase_events() {
        let other = RelFileLocator {
            rel_number: 16390,
            ..REL
        };
        // XLOG_SMGR_CREATE of the init fork.
        let mut main = rel_bytes(REL);
        main.extend_from_slice(&3u32.to_le_bytes());
        let mut body = vec![XLR_BLOCK_ID_DATA_SHORT, main.len() as u8];
        body.extend(&main);
        let rec = decode_record(
            Lsn(8),
            Lsn(0),
            &record(RM_SMGR_ID, 0x10, Lsn(0), &body),
            None,
        )
        .expect("smgr create");
        assert_eq!(
            rec.events,
            vec![RelEvent::Create {
                rel: REL,
                fork: Fork::Init
            }]
        );
        // XLOG_SMGR_TRUNCATE to 2 blocks, heap and fsm.
        let mut main = 2u32.to_le_bytes().to_vec();
        main.extend(rel_bytes(REL));
        main.extend_from_slice(&5u32.to_le_bytes());
        let mut body = vec![XLR_BLOCK_ID_DATA_SHORT, main.len() as u8];
        body.extend(&main);
        let rec = decode_record(
            Lsn(8),
            Lsn(0),
            &record(RM_SMGR_ID, 0x20, Lsn(0), &body),
            None,
        )
        .expect("smgr truncate");
        assert_eq!(
            rec.events,
            vec![RelEvent::Truncate {
                rel: REL,
                blocks: 2,
                forks: TruncatedForks {
                    main: true,
                    fsm: true,
                    vm: false
                }
            }]
        );
        // A commit with dbinfo, two subxacts and two dropped relations.
        let mut main = 0u64.to_le_bytes().to_vec();
        let xinfo =
            XACT_XINFO_HAS_DBINFO | XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_RELFILELOCATORS;
        main.extend_from_slice(&xinfo.to_le_bytes());
        main.extend_from_slice(&[5, 0, 0, 0, 0x7F, 6, 0, 0]);
        main.extend_from_slice(&2u32.to_le_bytes());
        main.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        main.extend_from_slice(&2u32.to_le_bytes());
        main.extend(rel_bytes(REL));
        main.extend(rel_bytes(other));
        let mut body = vec![XLR_BLOCK_ID_DATA_SHORT, main.len() as u8];
        body.extend(&main);
        let rec = decode_record(
            Lsn(8),
            Lsn(0),
            &record(RM_XACT_ID, XLOG_XACT_HAS_INFO, Lsn(0), &body),
            None,
        )
        .expect("commit");
        assert_eq!(
            rec.events,
            vec![RelEvent::Drop { rel: REL }, RelEvent::Drop { rel: other }]
        );
        // A commit without xinfo drops nothing; a truncated xinfo chain is an error.
        let mut body = vec![XLR_BLOCK_ID_DATA_SHORT, 8];
        body.extend_from_slice(&0u64.to_le_bytes());
        let rec = decode_record(Lsn(8), Lsn(0), &record(RM_XACT_ID, 0, Lsn(0), &body), None)
            .expect("plain commit");
        assert!(rec.events.is_empty());
        let short = record(RM_XACT_ID, XLOG_XACT_HAS_INFO, Lsn(0), &body);
        assert!(decode_record(Lsn(8), Lsn(0), &short, None).is_err());
        // XLOG_DBASE_DROP.
        let body = [XLR_BLOCK_ID_DATA_SHORT, 8, 0x40, 0x40, 0, 0, 0, 0, 0, 0];
        let rec = decode_record(
            Lsn(8),
            Lsn(0),
            &record(RM_DBASE_ID, 0x20, Lsn(0), &body),
            None,
        )
        .expect("dbase drop");
        assert_eq!(rec.events, vec![RelEvent::Database { db_oid: 0x4040 }]);
    }

    /// Lays records out in segments as XLogInsert does: page headers every 8 KiB
    /// (long at a segment start), `xlp_rem_len` on continuation pages, 8-byte
    /// alignment between records. Returns the segments and each record's LSN.
    struct Writer {
        segs: Vec<Vec<u8>>,
        pos: u64,
        first_segno: u64,
    }

    impl Writer {
        fn new(first_segno: u64) -> Writer {
            let mut w = Writer {
                segs: Vec::new(),
                pos: first_segno * SEG_SIZE,
                first_segno,
            };
            w.page_header(0);
            w
        }
        fn byte(&mut self, at: u64) -> &mut u8 {
            let s = (at / SEG_SIZE - self.first_segno) as usize;
            while self.segs.len() <= s {
                self.segs.push(vec![0u8; SEG_SIZE as usize]);
            }
            &mut self.segs[s][(at % SEG_SIZE) as usize]
        }
        fn put(&mut self, at: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                *self.byte(at + i as u64) = *b;
            }
        }
        /// Writes the header of the page starting at `self.pos`, moves past it.
        fn page_header(&mut self, rem_len: u32) {
            let at = self.pos;
            let long = at % SEG_SIZE == 0;
            let mut info = if rem_len > 0 {
                XLP_FIRST_IS_CONTRECORD
            } else {
                0
            };
            if long {
                info |= XLP_LONG_HEADER;
            }
            let mut h = Vec::new();
            h.extend_from_slice(&0xD110u16.to_le_bytes());
            h.extend_from_slice(&info.to_le_bytes());
            h.extend_from_slice(&1u32.to_le_bytes());
            h.extend_from_slice(&at.to_le_bytes());
            h.extend_from_slice(&rem_len.to_le_bytes());
            h.extend_from_slice(&[0; 4]);
            if long {
                h.extend_from_slice(&42u64.to_le_bytes());
                h.extend_from_slice(&(SEG_SIZE as u32).to_le_bytes());
                h.extend_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
            }
            self.put(at, &h);
            self.pos += h.len() as u64;
        }
        fn add(&mut self, rec: &[u8]) -> Lsn {
            let start = Lsn(self.pos);
            let mut left = rec;
            while !left.is_empty() {
                let room = XLOG_BLCKSZ as u64 - self.pos % XLOG_BLCKSZ as u64;
                let n = (left.len() as u64).min(room) as usize;
                let at = self.pos;
                self.put(at, &left[..n]);
                self.pos += n as u64;
                left = &left[n..];
                if self.pos % XLOG_BLCKSZ as u64 == 0 {
                    self.page_header(left.len() as u32);
                }
            }
            self.pos = maxalign(self.pos as usize) as u64;
            if self.pos % XLOG_BLCKSZ as u64 == 0 {
                self.page_header(0);
            }
            start
        }
    }

    #[test]
    fn follows_records_across_pages_and_segments() {
        let mut w = Writer::new(3);
        let mut lsns = Vec::new();
        let mut prev = Lsn(0);
        // Big records (full-page images) until well into the second segment.
        while w.pos < 4 * SEG_SIZE + 3 * XLOG_BLCKSZ as u64 {
            let r = record(10, 0, prev, &heap_like_body());
            prev = w.add(&r);
            lsns.push(prev);
        }
        let mut d = Decoder::new();
        let first = d.feed(&seg(3), &w.segs[0][..]).expect("segment 3");
        let pending = d.incomplete().expect("a record runs into segment 4");
        let second = d.feed_bytes(&seg(4), &w.segs[1]).expect("segment 4");
        assert_eq!(second[0].lsn, pending);
        let got: Vec<Lsn> = first.iter().chain(&second).map(|r| r.lsn).collect();
        assert_eq!(got, lsns);
        assert!(got.iter().all(|l| l.0 % 8 == 0));
        assert!(first
            .iter()
            .all(|r| r.blocks.len() == 2 && r.blocks[0].block == 3));

        // Segment 4 alone: the continued record is skipped, the rest decoded.
        let alone = Decoder::new()
            .feed_bytes(&seg(4), &w.segs[1])
            .expect("alone");
        assert_eq!(alone.len(), second.len() - 1);
        assert_eq!(alone[0].lsn, second[1].lsn);
    }

    #[test]
    fn drops_a_record_overwritten_after_a_crash() {
        let mut w = Writer::new(3);
        let mut prev = Lsn(0);
        while w.pos < 4 * SEG_SIZE {
            prev = w.add(&record(10, 0, prev, &heap_like_body()));
        }
        let mut d = Decoder::new();
        let first = d.feed_bytes(&seg(3), &w.segs[0]).expect("segment 3");
        let last = first.last().expect("records").lsn;
        assert!(d.incomplete().is_some());
        // Segment 4 as recovery left it: the continuation never written, an
        // XLOG_OVERWRITE_CONTRECORD at its start pointing back at the last whole record.
        let mut s4 = vec![0u8; SEG_SIZE as usize];
        s4[..LONG_HEADER_SIZE].copy_from_slice(&w.segs[1][..LONG_HEADER_SIZE]);
        let info = XLP_LONG_HEADER | XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        s4[2..4].copy_from_slice(&info.to_le_bytes());
        s4[16..20].copy_from_slice(&0u32.to_le_bytes());
        let overwrite = record(RM_XLOG_ID, 0xD0, last, &[XLR_BLOCK_ID_DATA_SHORT, 0]);
        s4[LONG_HEADER_SIZE..LONG_HEADER_SIZE + overwrite.len()].copy_from_slice(&overwrite);
        let second = d.feed_bytes(&seg(4), &s4).expect("segment 4");
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].lsn, Lsn(4 * SEG_SIZE + LONG_HEADER_SIZE as u64));
        assert_eq!(d.incomplete(), None);
    }

    #[test]
    fn refuses_unknown_magic_wrong_address_and_size() {
        let mut w = Writer::new(3);
        let first = w.add(&record(10, 0, Lsn(0), &heap_like_body()));
        let spanning = w.add(&record(10, 0, first, &heap_like_body()));
        let good = w.segs[0].clone();
        let mut bad = good.clone();
        bad[0..2].copy_from_slice(&0xD10Du16.to_le_bytes()); // PostgreSQL 14
        let err = Decoder::new().feed_bytes(&seg(3), &bad).unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::Magic { .. }), "{err}");
        assert!(err.to_string().contains("PostgreSQL 14's"), "{err}");
        bad[0..2].copy_from_slice(&0x1234u16.to_le_bytes());
        let err = Decoder::new().feed_bytes(&seg(3), &bad).unwrap_err();
        assert!(err.to_string().contains("0x1234"), "{err}");
        let err = Decoder::new().feed_bytes(&seg(5), &good).unwrap_err();
        assert!(
            matches!(err.kind, DecodeErrorKind::PageAddr { .. }),
            "{err}"
        );
        let err = Decoder::new()
            .feed_bytes(&seg(3), &good[..8192])
            .unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::Size { .. }), "{err}");
        // Corruption in the middle of a spanning record is a CRC mismatch there.
        let mut corrupt = good.clone();
        corrupt[XLOG_BLCKSZ + 100] ^= 0xFF;
        let err = Decoder::new().feed_bytes(&seg(3), &corrupt).unwrap_err();
        assert_eq!(err.lsn, spanning);
        assert!(matches!(err.kind, DecodeErrorKind::Crc { .. }), "{err}");
    }
}
