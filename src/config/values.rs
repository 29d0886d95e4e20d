//! Parsers for the typed option values Barman's files use (booleans, counts, time
//! intervals, retention policies, slot names). Each returns a one-line message on
//! failure; the caller adds file, line, server and option.

use std::time::Duration;

/// Barman's `parse_boolean`: on/off, true/false, yes/no, 1/0, any case.
pub(crate) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected on/off, got '{s}'")),
    }
}

/// A non-negative whole number no smaller than `min`.
pub(crate) fn parse_u64(s: &str, min: u64) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number, got '{s}'"))?;
    if n < min {
        return Err(format!("must be at least {min}, got {n}"));
    }
    Ok(n)
}

/// Like [`parse_u64`] for values that fit in 32 bits.
pub(crate) fn parse_u32(s: &str, min: u32) -> Result<u32, String> {
    let n = parse_u64(s, u64::from(min))?;
    u32::try_from(n).map_err(|_| format!("number too large: {n}"))
}

/// Splits `"<n> <word>"` (whitespace optional) into the number and the lower-cased word.
fn count_and_unit(s: &str) -> Option<(u64, String)> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return None;
    }
    let n = s[..digits].parse().ok()?;
    let unit = s[digits..].trim().to_ascii_lowercase();
    Some((n, unit))
}

/// Barman's `parse_time_interval` ("1 DAYS", "2 WEEKS", "1 MONTHS"; a month is 31
/// days as in Barman), plus HOURS and MINUTES. Singular or plural, any case.
pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    let err = || {
        format!("expected '<n> DAYS', '<n> WEEKS', '<n> MONTHS', '<n> HOURS' or '<n> MINUTES', got '{s}'")
    };
    let (n, unit) = count_and_unit(s).ok_or_else(err)?;
    let seconds: u64 = match unit.as_str() {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        "week" | "weeks" => 7 * 86_400,
        "month" | "months" => 31 * 86_400,
        _ => return Err(err()),
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("interval too large: '{s}'"))
}

/// A recovery objective: `<n> SECONDS` or any [`parse_interval`] unit.
pub(crate) fn parse_objective(s: &str) -> Result<Duration, String> {
    if let Some((n, unit)) = count_and_unit(s) {
        if matches!(unit.as_str(), "second" | "seconds") {
            return Ok(Duration::from_secs(n));
        }
    }
    parse_interval(s).map_err(|_| {
        format!("expected '<n> SECONDS', '<n> MINUTES', '<n> HOURS', '<n> DAYS' or '<n> WEEKS', got '{s}'")
    })
}

/// When `cron` starts a restore drill: `daily HH:MM` or `weekly DAY HH:MM` (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrillSchedule {
    /// `None`: every day; else the weekday (0 = Monday).
    pub weekday: Option<u32>,
    /// Minutes after midnight, UTC.
    pub minute_of_day: u32,
}

impl DrillSchedule {
    /// The newest scheduled time at or before `now`.
    pub fn last_due(&self, now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        use chrono::{Datelike, Duration as Days, Timelike};
        let today = now
            .with_hour(0)
            .and_then(|t| t.with_minute(0))
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(now);
        let at =
            |day: chrono::DateTime<chrono::Utc>| day + Days::minutes(i64::from(self.minute_of_day));
        for back in 0..8 {
            let day = today - Days::days(back);
            let weekday_ok = self
                .weekday
                .is_none_or(|w| day.weekday().num_days_from_monday() == w);
            if weekday_ok && at(day) <= now {
                return at(day);
            }
        }
        at(today - Days::days(7))
    }
}

/// Parses `daily HH:MM` or `weekly DAY HH:MM` (DAY: monday..sunday or mon..sun).
pub(crate) fn parse_schedule(s: &str) -> Result<DrillSchedule, String> {
    let err = || format!("expected 'daily HH:MM' or 'weekly DAY HH:MM' (UTC), got '{s}'");
    let words: Vec<String> = s
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let (weekday, time) = match words.as_slice() {
        [d, t] if d == "daily" => (None, t),
        [w, day, t] if w == "weekly" => {
            const DAYS: [&str; 7] = [
                "monday",
                "tuesday",
                "wednesday",
                "thursday",
                "friday",
                "saturday",
                "sunday",
            ];
            let n = DAYS
                .iter()
                .position(|d| d == day || (day.len() == 3 && d.starts_with(day.as_str())))
                .ok_or_else(err)?;
            (Some(n as u32), t)
        }
        _ => return Err(err()),
    };
    let (h, m) = time.split_once(':').ok_or_else(err)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?);
    if h > 23 || m > 59 {
        return Err(err());
    }
    Ok(DrillSchedule {
        weekday,
        minute_of_day: h * 60 + m,
    })
}

/// Checks Barman's retention policy grammar: `REDUNDANCY <n>` or
/// `RECOVERY WINDOW OF <n> DAY(S)|WEEK(S)|MONTH(S)`, any case, `n >= 1`.
/// Returns the redundancy count for a redundancy policy, `None` for a window.
pub(crate) fn check_retention_policy(s: &str) -> Result<Option<u64>, String> {
    use crate::types::retention_policy::RetentionPolicy;
    match RetentionPolicy::parse(s)? {
        RetentionPolicy::Redundancy(n) => Ok(Some(u64::from(n))),
        RetentionPolicy::RecoveryWindow(..) => Ok(None),
    }
}

/// PostgreSQL's rule for replication slot names (`ReplicationSlotValidateName`):
/// 1 to 63 characters out of lower-case letters, digits and underscore.
pub(crate) fn check_slot_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid replication slot name '{s}': use 1 to 63 lower-case letters, digits or '_'"
        ))
    }
}

/// Barman's WAL compression names. pgbk always stores zstd; the name is kept for display.
pub(crate) const COMPRESSIONS: &[&str] = &[
    "gzip", "bzip2", "pigz", "pygzip", "pybzip2", "lz4", "xz", "zstd", "snappy", "custom",
];

/// Accepts one of [`COMPRESSIONS`] in any case and returns it lower-cased.
pub(crate) fn parse_compression(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    if COMPRESSIONS.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(format!(
            "expected one of {}, got '{s}'",
            COMPRESSIONS.join(", ")
        ))
    }
}

/// Accepts a log level (Barman's spelling too) and returns the lower-case name pgbk uses:
/// debug, info, warning or error. `WARN` means warning; `CRITICAL` means error, since
/// pgbk has no level above error.
pub(crate) fn parse_log_level(s: &str) -> Result<String, String> {
    let level = match s.trim().to_ascii_lowercase().as_str() {
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warning",
        "error" | "critical" => "error",
        _ => return Err(format!("expected debug, info, warning or error, got '{s}'")),
    };
    Ok(level.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans() {
        for t in ["on", "ON", "true", "True", "yes", "1", " on "] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["off", "Off", "false", "NO", "0"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        assert_eq!(
            parse_bool("maybe"),
            Err("expected on/off, got 'maybe'".to_string())
        );
        assert!(parse_bool("2").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u32(" 4 ", 1), Ok(4));
        assert_eq!(
            parse_u32("0", 1),
            Err("must be at least 1, got 0".to_string())
        );
        assert_eq!(
            parse_u32("two", 0),
            Err("expected a whole number, got 'two'".to_string())
        );
        assert_eq!(
            parse_u32("-1", 0),
            Err("expected a whole number, got '-1'".to_string())
        );
        assert_eq!(
            parse_u32("4294967296", 0),
            Err("number too large: 4294967296".to_string())
        );
        assert_eq!(parse_u64("4294967296", 0), Ok(4_294_967_296));
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1 DAYS"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_interval("1 day"), Ok(Duration::from_secs(86_400)));
        assert_eq!(
            parse_interval("2 WEEKS"),
            Ok(Duration::from_secs(14 * 86_400))
        );
        assert_eq!(
            parse_interval("1 MONTHS"),
            Ok(Duration::from_secs(31 * 86_400))
        );
        assert_eq!(parse_interval("3 hours"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_interval("30 Minutes"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_interval("5minutes"), Ok(Duration::from_secs(300)));
        for bad in [
            "",
            "DAYS",
            "1",
            "1 YEARS",
            "-1 DAYS",
            "1.5 DAYS",
            "1 DAYS ago",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_interval("1 fortnight"),
            Err("expected '<n> DAYS', '<n> WEEKS', '<n> MONTHS', '<n> HOURS' or '<n> MINUTES', got '1 fortnight'"
                .to_string())
        );
    }

    #[test]
    fn retention_policies() {
        assert_eq!(check_retention_policy("REDUNDANCY 2"), Ok(Some(2)));
        assert_eq!(check_retention_policy("redundancy   3"), Ok(Some(3)));
        assert_eq!(
            check_retention_policy("RECOVERY WINDOW OF 7 DAYS"),
            Ok(None)
        );
        assert_eq!(
            check_retention_policy("recovery window of 1 week"),
            Ok(None)
        );
        assert_eq!(
            check_retention_policy("Recovery Window Of 6 MONTHS"),
            Ok(None)
        );
        for bad in [
            "",
            "REDUNDANCY",
            "REDUNDANCY two",
            "REDUNDANCY -1",
            "REDUNDANCY 2 3",
            "RECOVERY WINDOW 7 DAYS",
            "RECOVERY WINDOW OF 7 YEARS",
            "RECOVERY WINDOW OF DAYS",
            "KEEP 3",
        ] {
            assert!(check_retention_policy(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_retention_policy("REDUNDANCY 0"),
            Err("the count must be at least 1, got 'REDUNDANCY 0'".to_string())
        );
        assert_eq!(
            check_retention_policy("KEEP 3"),
            Err("expected 'REDUNDANCY <n>' or 'RECOVERY WINDOW OF <n> DAYS|WEEKS|MONTHS', got 'KEEP 3'".to_string())
        );
    }

    #[test]
    fn slot_names() {
        assert!(check_slot_name("barman").is_ok());
        assert!(check_slot_name("pgbk_pg1_2").is_ok());
        assert!(check_slot_name(&"a".repeat(63)).is_ok());
        for bad in ["", "Barman", "slot-1", "slot name", &"a".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compressions_and_log_levels() {
        assert_eq!(parse_compression("GZIP").as_deref(), Ok("gzip"));
        assert!(parse_compression("brotli").is_err());
        assert_eq!(parse_log_level("WARNING").as_deref(), Ok("warning"));
        assert_eq!(parse_log_level("CRITICAL").as_deref(), Ok("error"));
        assert_eq!(parse_log_level("Debug").as_deref(), Ok("debug"));
        assert!(parse_log_level("loud").is_err());
    }
}
