//! Is the archived WAL a continuous chain? Which segment a position needs on a
//! timeline is decided by the history file: before a switch point, the parent's.

use super::history::{timeline_of, HistoryEntry};
use super::{Lsn, TimeLineId, WalSegment};
use std::collections::HashSet;

/// The timeline whose file holds segment `segno` when following `target`'s history:
/// the one that wrote the segment's last byte.
pub fn segment_timeline(
    history: &[HistoryEntry],
    target: TimeLineId,
    segno: u64,
    seg_size: u64,
) -> TimeLineId {
    timeline_of(history, target, Lsn((segno + 1) * seg_size - 1))
}

/// The segments from `first` to `last` (segment numbers, inclusive) that a recovery
/// following `target` needs, in order.
pub fn required_segments(
    history: &[HistoryEntry],
    target: TimeLineId,
    first: u64,
    last: u64,
    seg_size: u64,
) -> Vec<WalSegment> {
    (first..=last)
        .map(|segno| WalSegment {
            tli: segment_timeline(history, target, segno, seg_size),
            segno,
            seg_size,
        })
        .collect()
}

/// The segments missing between the oldest and newest archived segment, following the
/// newest timeline's history. `archived` holds (timeline, segno) of complete segments.
pub fn find_gaps(
    archived: &[(TimeLineId, u64)],
    history: &[HistoryEntry],
    target: TimeLineId,
    seg_size: u64,
) -> Vec<WalSegment> {
    let (Some(first), Some(last)) = (
        archived.iter().map(|a| a.1).min(),
        archived.iter().map(|a| a.1).max(),
    ) else {
        return Vec::new();
    };
    let have: HashSet<(TimeLineId, u64)> = archived.iter().copied().collect();
    required_segments(history, target, first, last, seg_size)
        .into_iter()
        .filter(|s| !have.contains(&(s.tli, s.segno)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::history::parse_history;
    const MB16: u64 = 16 << 20;

    #[test]
    fn follows_the_switch_segment_onto_the_new_timeline() {
        let h = parse_history("1\t0/6025A50\tpromoted\n").unwrap();
        let t = TimeLineId(2);
        assert_eq!(segment_timeline(&h, t, 5, MB16), TimeLineId(1));
        assert_eq!(segment_timeline(&h, t, 6, MB16), TimeLineId(2));
        let archived = [
            (TimeLineId(1), 4),
            (TimeLineId(1), 5),
            (TimeLineId(2), 6),
            (TimeLineId(2), 7),
        ];
        assert!(find_gaps(&archived, &h, t, MB16).is_empty());
        let gap = [(TimeLineId(1), 4), (TimeLineId(1), 6), (TimeLineId(2), 7)];
        let missing: Vec<String> = find_gaps(&gap, &h, t, MB16)
            .iter()
            .map(|s| s.name())
            .collect();
        assert_eq!(
            missing,
            ["000000010000000000000005", "000000020000000000000006"]
        );
    }

    #[test]
    fn a_switch_on_a_boundary_starts_the_new_timeline_there() {
        let h = parse_history("1\t0/7000000\tx\n").unwrap();
        assert_eq!(segment_timeline(&h, TimeLineId(2), 6, MB16), TimeLineId(1));
        assert_eq!(segment_timeline(&h, TimeLineId(2), 7, MB16), TimeLineId(2));
    }
}
