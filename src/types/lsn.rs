//! PostgreSQL's WAL position and identity numbers as newtypes, printed and parsed
//! in PostgreSQL's own text forms (`0/16B3748`, timeline `1`, system id as decimal).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A WAL location (`XLogRecPtr`), shown as `X/X` in hex like `pg_current_wal_lsn()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// A timeline id (`TimeLineID`); timeline 1 is the one `initdb` creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimeLineId(pub u32);

/// The cluster's system identifier (`pg_controldata`'s "Database system identifier").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SystemId(pub u64);

/// A string that is not a valid LSN, timeline or system id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} '{text}'")]
pub struct ParseError {
    /// What was being parsed ("LSN", "timeline", "system identifier").
    pub what: &'static str,
    /// The offending text.
    pub text: String,
}

impl Lsn {
    /// `InvalidXLogRecPtr`.
    pub const INVALID: Lsn = Lsn(0);

    /// The LSN at the start of the segment holding this one (`XLogSegmentOffset` removed).
    pub fn segment_start(self, seg_size: u64) -> Lsn {
        Lsn(self.0 - self.0 % seg_size)
    }

    /// The byte offset of this LSN inside its segment (`XLogSegmentOffset`).
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }

    /// The segment number holding this LSN (`XLByteToSeg`).
    pub fn segno(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }

    /// The segment holding the record that ends just before this LSN (`XLByteToPrevSeg`).
    pub fn prev_segno(self, seg_size: u64) -> u64 {
        self.0.saturating_sub(1) / seg_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError {
            what: "LSN",
            text: s.to_string(),
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TimeLineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TimeLineId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(TimeLineId(n)),
            _ => Err(ParseError {
                what: "timeline",
                text: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for SystemId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u64>()
            .map(SystemId)
            .map_err(|_| ParseError {
                what: "system identifier",
                text: s.to_string(),
            })
    }
}

impl Serialize for SystemId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SystemId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_in_postgres_text_form() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::INVALID);
        assert!("0/".parse::<Lsn>().is_err());
        assert!("G/1".parse::<Lsn>().is_err());
        assert!("123456789/0".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_arithmetic_matches_xlog_macros() {
        let seg = 16 * 1024 * 1024;
        let l = Lsn(0x0600_0000 + 0x25A50);
        assert_eq!(l.segno(seg), 6);
        assert_eq!(l.segment_start(seg), Lsn(0x0600_0000));
        assert_eq!(l.segment_offset(seg), 0x25A50);
        assert_eq!(Lsn(0x0600_0000).prev_segno(seg), 5);
    }

    #[test]
    fn timeline_zero_is_rejected() {
        assert!("0".parse::<TimeLineId>().is_err());
        assert_eq!("2".parse::<TimeLineId>().unwrap(), TimeLineId(2));
    }
}
