//! WAL page header validation (`XLogLongPageHeaderData` / `XLogPageHeaderData`), so a
//! segment is checked to belong to the right cluster and position before it is stored.

use super::lsn::{Lsn, SystemId};
use super::segment::WalSegment;

/// `XLOG_BLCKSZ`: WAL pages are 8 KiB.
pub const XLOG_BLCKSZ: usize = 8192;
/// `XLP_LONG_HEADER`: set on the first page of every segment.
const XLP_LONG_HEADER: u16 = 0x0002;
/// Size of the long page header (`SizeOfXLogLongPHD`).
pub const LONG_HEADER_SIZE: usize = 40;

/// `XLOG_PAGE_MAGIC` for each supported major version.
const MAGICS: &[(u16, u32)] = &[
    (0xD101, 12),
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// The PostgreSQL major version whose WAL carries this page magic.
pub fn major_for_magic(magic: u16) -> Option<u32> {
    MAGICS.iter().find(|(m, _)| *m == magic).map(|(_, v)| *v)
}

/// Why a WAL segment's content does not fit where it is meant to go.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// The file is shorter than a long page header, or not a whole number of pages.
    #[error("segment {segment}: size {size} is not a whole segment of {expected} bytes")]
    Size {
        segment: String,
        size: u64,
        expected: u64,
    },
    /// The page magic is not one pgbk knows.
    #[error(
        "segment {segment}: unknown WAL page magic 0x{magic:04X} (unsupported PostgreSQL version?)"
    )]
    Magic { segment: String, magic: u16 },
    /// The first page lacks the long header.
    #[error("segment {segment}: first page has no long header")]
    NoLongHeader { segment: String },
    /// The segment comes from another cluster.
    #[error("segment {segment}: system identifier {found} does not match the server's {expected}")]
    SystemId {
        segment: String,
        found: u64,
        expected: u64,
    },
    /// The segment size recorded in the header differs.
    #[error("segment {segment}: header says segment size {found}, expected {expected}")]
    SegSize {
        segment: String,
        found: u64,
        expected: u64,
    },
    /// A page address does not match the position the name implies.
    #[error("segment {segment}: page at offset {offset} has address {found}, expected {expected}")]
    PageAddr {
        segment: String,
        offset: usize,
        found: Lsn,
        expected: Lsn,
    },
    /// The header's timeline is above the one in the name.
    #[error("segment {segment}: page timeline {found} is above the name's timeline")]
    Timeline { segment: String, found: u32 },
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// The cluster facts read from a segment's first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    /// `xlp_magic`.
    pub magic: u16,
    /// `xlp_sysid`.
    pub system_id: SystemId,
    /// `xlp_seg_size`.
    pub seg_size: u64,
}

/// Reads the long header of a segment's first page, without checking it.
pub fn read_long_header(data: &[u8]) -> Option<LongHeader> {
    if data.len() < LONG_HEADER_SIZE {
        return None;
    }
    Some(LongHeader {
        magic: u16_at(data, 0),
        system_id: SystemId(u64_at(data, 24)),
        seg_size: u32_at(data, 32) as u64,
    })
}

/// Checks a whole segment: size, magic, long header, system id, segment size, and the
/// address and timeline of every page that has been written (an all-zero page ends the
/// check, since a switched segment is zero-filled past its end).
pub fn validate_segment(
    data: &[u8],
    segment: &WalSegment,
    system_id: Option<SystemId>,
) -> Result<LongHeader, HeaderError> {
    let name = segment.name();
    if data.len() as u64 != segment.seg_size {
        return Err(HeaderError::Size {
            segment: name,
            size: data.len() as u64,
            expected: segment.seg_size,
        });
    }
    let hdr = read_long_header(data).ok_or_else(|| HeaderError::Size {
        segment: name.clone(),
        size: data.len() as u64,
        expected: segment.seg_size,
    })?;
    if major_for_magic(hdr.magic).is_none() {
        return Err(HeaderError::Magic {
            segment: name,
            magic: hdr.magic,
        });
    }
    // The long-header flag and the system id, as the streaming checks do them.
    let mut pages = PageChecker::new(segment, &hdr, system_id, data)?;
    if hdr.seg_size != segment.seg_size {
        return Err(HeaderError::SegSize {
            segment: name,
            found: hdr.seg_size,
            expected: segment.seg_size,
        });
    }
    pages.feed(data)?;
    Ok(hdr)
}

/// The page checks of [`validate_segment`] (magic, address, timeline of every
/// written page), fed as the data arrives so a segment too large for memory can be
/// checked while it streams. Chunks must be whole pages, except a short last one.
pub struct PageChecker {
    name: String,
    start: u64,
    tli: u32,
    magic: u16,
    offset: usize,
    ended: bool,
}

impl PageChecker {
    /// Checks what the first page's long header says (long-header flag, system id)
    /// and prepares the page checks; `head` is the start of the segment.
    pub fn new(
        segment: &WalSegment,
        hdr: &LongHeader,
        system_id: Option<SystemId>,
        head: &[u8],
    ) -> Result<PageChecker, HeaderError> {
        let name = segment.name();
        if u16_at(head, 2) & XLP_LONG_HEADER == 0 {
            return Err(HeaderError::NoLongHeader { segment: name });
        }
        if let Some(expected) = system_id {
            if hdr.system_id != expected {
                return Err(HeaderError::SystemId {
                    segment: name,
                    found: hdr.system_id.0,
                    expected: expected.0,
                });
            }
        }
        Ok(PageChecker {
            name,
            start: segment.start_lsn().0,
            tli: segment.tli.0,
            magic: hdr.magic,
            offset: 0,
            ended: false,
        })
    }

    /// Checks the next pages (an all-zero page ends the checks: a switched segment
    /// is zero-filled past its end).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), HeaderError> {
        for page in data.chunks(XLOG_BLCKSZ) {
            let offset = self.offset;
            self.offset += page.len();
            if self.ended || page.len() < 24 {
                continue;
            }
            if offset > 0 && page[..24].iter().all(|&b| b == 0) {
                self.ended = true;
                continue;
            }
            let magic = u16_at(page, 0);
            if magic != self.magic {
                return Err(HeaderError::Magic {
                    segment: self.name.clone(),
                    magic,
                });
            }
            let addr = u64_at(page, 8);
            let expected = self.start + offset as u64;
            if addr != expected {
                return Err(HeaderError::PageAddr {
                    segment: self.name.clone(),
                    offset,
                    found: Lsn(addr),
                    expected: Lsn(expected),
                });
            }
            let tli = u32_at(page, 4);
            if tli > self.tli {
                return Err(HeaderError::Timeline {
                    segment: self.name.clone(),
                    found: tli,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::TimeLineId;

    /// A synthetic segment whose pages carry PG15 headers.
    pub fn fake_segment(seg: &WalSegment, sysid: u64) -> Vec<u8> {
        let mut d = vec![0u8; seg.seg_size as usize];
        for (i, page) in d.chunks_mut(XLOG_BLCKSZ).enumerate() {
            page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            page[2..4].copy_from_slice(&(if i == 0 { 2u16 } else { 0 }).to_le_bytes());
            page[4..8].copy_from_slice(&seg.tli.0.to_le_bytes());
            let addr = seg.start_lsn().0 + (i * XLOG_BLCKSZ) as u64;
            page[8..16].copy_from_slice(&addr.to_le_bytes());
            if i == 0 {
                page[24..32].copy_from_slice(&sysid.to_le_bytes());
                page[32..36].copy_from_slice(&(seg.seg_size as u32).to_le_bytes());
                page[36..40].copy_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
            }
        }
        d
    }

    #[test]
    fn accepts_a_good_segment_and_names_each_fault() {
        let seg = WalSegment {
            tli: TimeLineId(1),
            segno: 3,
            seg_size: 1 << 20,
        };
        let good = fake_segment(&seg, 42);
        assert!(validate_segment(&good, &seg, Some(SystemId(42))).is_ok());
        assert!(matches!(
            validate_segment(&good, &seg, Some(SystemId(7))),
            Err(HeaderError::SystemId { .. })
        ));
        assert!(matches!(
            validate_segment(&good[..4096], &seg, None),
            Err(HeaderError::Size { .. })
        ));
        let other = WalSegment { segno: 4, ..seg };
        assert!(matches!(
            validate_segment(&good, &other, None),
            Err(HeaderError::PageAddr { .. })
        ));
        let mut bad = good.clone();
        bad[0] = 0x99;
        assert!(matches!(
            validate_segment(&bad, &seg, None),
            Err(HeaderError::Magic { .. })
        ));
        let mut zero_tail = good.clone();
        for b in &mut zero_tail[XLOG_BLCKSZ * 10..] {
            *b = 0;
        }
        assert!(validate_segment(&zero_tail, &seg, Some(SystemId(42))).is_ok());
    }
}
