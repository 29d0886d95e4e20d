//! WAL segment file names (`XLogFileName`, `IsXLogFileName`, `IsPartialXLogFileName`,
//! `TLHistoryFileName`), always derived from the cluster's segment size.

use super::lsn::{Lsn, TimeLineId};
use std::fmt;

/// The smallest `wal_segment_size` PostgreSQL allows (1 MiB).
pub const MIN_SEG_SIZE: u64 = 1 << 20;
/// The largest `wal_segment_size` PostgreSQL allows (1 GiB).
pub const MAX_SEG_SIZE: u64 = 1 << 30;

/// One WAL segment: a timeline and a segment number, for a given segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalSegment {
    /// Timeline the segment belongs to (the first 8 hex digits of its name).
    pub tli: TimeLineId,
    /// Segment number: LSN / segment size.
    pub segno: u64,
    /// Segment size in bytes (`wal_segment_size`).
    pub seg_size: u64,
}

/// The kinds of file that live in a WAL archive, recognised by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalFileName {
    /// A complete segment, `000000010000000000000003`.
    Segment(WalSegment),
    /// An incomplete segment, `000000010000000000000003.partial`.
    Partial(WalSegment),
    /// A timeline history file, `00000002.history`.
    History(TimeLineId),
    /// A backup history file, `000000010000000000000003.00000028.backup`.
    BackupHistory(WalSegment, u32),
}

impl WalSegment {
    /// The segment holding `lsn` on timeline `tli` (`XLByteToSeg`).
    pub fn containing(tli: TimeLineId, lsn: Lsn, seg_size: u64) -> WalSegment {
        WalSegment {
            tli,
            segno: lsn.segno(seg_size),
            seg_size,
        }
    }

    /// Segments per "xlogid" (the middle field of a name): 4 GiB / segment size.
    pub fn segs_per_xlogid(seg_size: u64) -> u64 {
        0x1_0000_0000 / seg_size
    }

    /// The LSN of the segment's first byte.
    pub fn start_lsn(&self) -> Lsn {
        Lsn(self.segno * self.seg_size)
    }

    /// The LSN just past the segment's last byte.
    pub fn end_lsn(&self) -> Lsn {
        Lsn((self.segno + 1) * self.seg_size)
    }

    /// The next segment on the same timeline.
    pub fn next(&self) -> WalSegment {
        WalSegment {
            segno: self.segno + 1,
            ..*self
        }
    }

    /// The file name, `%08X%08X%08X` (`XLogFileName`).
    pub fn name(&self) -> String {
        let per = Self::segs_per_xlogid(self.seg_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.tli.0,
            self.segno / per,
            self.segno % per
        )
    }

    /// The first 16 hex digits of the name: timeline and xlogid, the archive's folder.
    pub fn prefix(&self) -> String {
        self.name()[..16].to_string()
    }

    /// Parses a 24-hex-digit segment name.
    pub fn parse(name: &str, seg_size: u64) -> Option<WalSegment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per = Self::segs_per_xlogid(seg_size);
        if tli == 0 || seg >= per {
            return None;
        }
        Some(WalSegment {
            tli: TimeLineId(tli),
            segno: log * per + seg,
            seg_size,
        })
    }
}

impl fmt::Display for WalSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The history file name of a timeline, `%08X.history` (`TLHistoryFileName`).
pub fn history_file_name(tli: TimeLineId) -> String {
    format!("{:08X}.history", tli.0)
}

impl WalFileName {
    /// Recognises any WAL archive file name; `None` for anything else.
    pub fn parse(name: &str, seg_size: u64) -> Option<WalFileName> {
        if let Some(seg) = name.strip_suffix(".partial") {
            return WalSegment::parse(seg, seg_size).map(WalFileName::Partial);
        }
        if let Some(tli) = name.strip_suffix(".history") {
            if tli.len() == 8 && tli.bytes().all(|b| b.is_ascii_hexdigit()) {
                let n = u32::from_str_radix(tli, 16).ok()?;
                return (n > 0).then_some(WalFileName::History(TimeLineId(n)));
            }
            return None;
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.')?;
            if off.len() != 8 {
                return None;
            }
            let off = u32::from_str_radix(off, 16).ok()?;
            return WalSegment::parse(seg, seg_size).map(|s| WalFileName::BackupHistory(s, off));
        }
        WalSegment::parse(name, seg_size).map(WalFileName::Segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn names_follow_xlogfilename() {
        let s = WalSegment {
            tli: TimeLineId(1),
            segno: 0x1FF,
            seg_size: MB16,
        };
        assert_eq!(s.name(), "0000000100000001000000FF");
        assert_eq!(WalSegment::parse(&s.name(), MB16), Some(s));
        assert_eq!(s.prefix(), "0000000100000001");
        // 64 MiB segments: 64 per xlogid, so the last field stops at 0x3F.
        let big = 64 * 1024 * 1024;
        assert!(WalSegment::parse("000000010000000000000040", big).is_none());
        assert_eq!(
            WalSegment::parse("000000010000000100000001", big)
                .unwrap()
                .segno,
            65
        );
    }

    #[test]
    fn recognises_partial_history_and_backup_files() {
        assert!(matches!(
            WalFileName::parse("000000010000000000000006.partial", MB16),
            Some(WalFileName::Partial(_))
        ));
        assert_eq!(
            WalFileName::parse("00000002.history", MB16),
            Some(WalFileName::History(TimeLineId(2)))
        );
        assert!(matches!(
            WalFileName::parse("000000010000000000000003.00000028.backup", MB16),
            Some(WalFileName::BackupHistory(_, 0x28))
        ));
        assert_eq!(WalFileName::parse("00000000.history", MB16), None);
        assert_eq!(WalFileName::parse("../etc/passwd", MB16), None);
        assert_eq!(WalFileName::parse("00000001000000000000000G", MB16), None);
        assert_eq!(history_file_name(TimeLineId(10)), "0000000A.history");
    }

    #[test]
    fn containing_and_bounds() {
        let s = WalSegment::containing(TimeLineId(2), Lsn(0x0602_5A50), MB16);
        assert_eq!(s.name(), "000000020000000000000006");
        assert_eq!(s.start_lsn(), Lsn(0x0600_0000));
        assert_eq!(s.end_lsn(), Lsn(0x0700_0000));
        assert_eq!(s.next().name(), "000000020000000000000007");
    }
}
