//! Timeline history files (`00000002.history`): which timeline branched from which, where.

use super::lsn::{Lsn, TimeLineId};

/// One line of a history file: timeline `parent` ended at `switchpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: TimeLineId,
    /// The first LSN that belongs to the child instead of `parent`.
    pub switchpoint: Lsn,
}

/// A malformed history file line.
#[derive(Debug, thiserror::Error)]
#[error("timeline history line {line}: {message}")]
pub struct HistoryError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses a history file (`parentTLI<TAB>switchpoint<TAB>reason`, `#` comments).
pub fn parse_history(content: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    let mut out = Vec::new();
    for (i, raw) in content.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let err = |m: &str| HistoryError {
            line: i + 1,
            message: m.to_string(),
        };
        let parent = fields
            .next()
            .and_then(|f| f.parse::<TimeLineId>().ok())
            .ok_or_else(|| err("bad timeline id"))?;
        let switchpoint = fields
            .next()
            .and_then(|f| f.parse::<Lsn>().ok())
            .ok_or_else(|| err("bad switch point"))?;
        // PostgreSQL's readTimeLineHistory requires only increasing timeline ids: a
        // newer line's switch point may lie before an older one's (a timeline forked
        // from its parent before the parent's own fork point, as a PITR to a restore
        // point on a standby's timeline writes).
        if out
            .last()
            .is_some_and(|prev: &HistoryEntry| parent <= prev.parent)
        {
            return Err(err("timeline ids must be in increasing sequence"));
        }
        out.push(HistoryEntry {
            parent,
            switchpoint,
        });
    }
    Ok(out)
}

/// Which timeline a WAL position belongs to, for a target timeline with this history,
/// as PostgreSQL's tliOfPointInHistory decides it: line `i` covers
/// `[switchpoint[i-1], switchpoint[i])`, the target everything from the last switch
/// point on, and the newest range holding the position wins (so a line whose switch
/// point lies before an earlier line's covers nothing).
pub fn timeline_of(history: &[HistoryEntry], target: TimeLineId, lsn: Lsn) -> TimeLineId {
    let Some(last) = history.last() else {
        return target;
    };
    if lsn >= last.switchpoint {
        return target;
    }
    for (i, e) in history.iter().enumerate().rev() {
        let begin = if i == 0 {
            Lsn(0)
        } else {
            history[i - 1].switchpoint
        };
        if begin <= lsn && lsn < e.switchpoint {
            return e.parent;
        }
    }
    target
}

/// Up to which LSN the target's history follows ancestor `tli` (the end of its
/// effective range: its own switch point, or an earlier one of a later line), or
/// `None` when `tli` is not an ancestor.
pub fn followed_until(history: &[HistoryEntry], tli: TimeLineId) -> Option<Lsn> {
    let i = history.iter().position(|e| e.parent == tli)?;
    history[i..].iter().map(|e| e.switchpoint).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_follows_switch_points() {
        let h = parse_history("1\t0/6025A50\tno recovery target specified\n\n2\t0/9000000\tx\n")
            .unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(
            timeline_of(&h, TimeLineId(3), Lsn(0x0500_0000)),
            TimeLineId(1)
        );
        assert_eq!(
            timeline_of(&h, TimeLineId(3), Lsn(0x0602_5A50)),
            TimeLineId(2)
        );
        assert_eq!(
            timeline_of(&h, TimeLineId(3), Lsn(0x0900_0000)),
            TimeLineId(3)
        );
        assert!(parse_history("x\t0/1\n").is_err());
        assert!(parse_history("2\t0/1\n1\t0/2\n").is_err());
        assert!(parse_history("1\t0/1\n1\t0/2\n").is_err());
        assert_eq!(followed_until(&h, TimeLineId(1)), Some(Lsn(0x0602_5A50)));
        assert_eq!(followed_until(&h, TimeLineId(2)), Some(Lsn(0x0900_0000)));
        assert_eq!(followed_until(&h, TimeLineId(3)), None);
    }

    /// What PostgreSQL 15.18 wrote after a PITR to a restore point on a standby's
    /// timeline 2: timeline 3 forks from 2 before 2's own fork from 1.
    #[test]
    fn accepts_a_fork_before_the_parents_own_fork_point() {
        let h = parse_history(
            "1\t0/3018CB0\tno recovery target specified\n\n2\t0/3018C48\tat restore point \"rp\"\n",
        )
        .unwrap();
        assert_eq!(h.len(), 2);
        let t3 = TimeLineId(3);
        assert_eq!(timeline_of(&h, t3, Lsn(0x0301_8C47)), TimeLineId(1));
        assert_eq!(timeline_of(&h, t3, Lsn(0x0301_8C48)), t3);
        // Between the two switch points: timeline 3's, not 1's (2 covers nothing).
        assert_eq!(timeline_of(&h, t3, Lsn(0x0301_8C80)), t3);
        assert_eq!(timeline_of(&h, t3, Lsn(0x0400_0000)), t3);
        assert_eq!(followed_until(&h, TimeLineId(1)), Some(Lsn(0x0301_8C48)));
        assert_eq!(followed_until(&h, TimeLineId(2)), Some(Lsn(0x0301_8C48)));
    }
}
