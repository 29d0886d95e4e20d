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
        if let Some(prev) = out.last() {
            let prev: &HistoryEntry = prev;
            if parent <= prev.parent || switchpoint < prev.switchpoint {
                return Err(err("timelines or switch points out of order"));
            }
        }
        out.push(HistoryEntry {
            parent,
            switchpoint,
        });
    }
    Ok(out)
}

/// Which timeline a WAL position belongs to, for a target timeline with this history:
/// the first ancestor whose switch point lies beyond `lsn`, else `target` itself.
pub fn timeline_of(history: &[HistoryEntry], target: TimeLineId, lsn: Lsn) -> TimeLineId {
    history
        .iter()
        .find(|e| lsn < e.switchpoint)
        .map(|e| e.parent)
        .unwrap_or(target)
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
    }
}
