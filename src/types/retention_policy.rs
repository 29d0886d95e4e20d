//! Barman's retention policy grammar (`REDUNDANCY n`, `RECOVERY WINDOW OF n
//! DAYS|WEEKS|MONTHS`), parsed once: `config` checks a setting with it and
//! `retention` applies the parsed policy.

use std::fmt;

/// The unit of a recovery window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowUnit {
    /// Days.
    Days,
    /// Weeks.
    Weeks,
    /// Calendar months.
    Months,
}

/// A parsed `retention_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionPolicy {
    /// Keep the newest `n` DONE backups.
    Redundancy(u32),
    /// Keep whatever a recovery to any point of the last `n` units needs.
    RecoveryWindow(u32, WindowUnit),
}

impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetentionPolicy::Redundancy(n) => write!(f, "REDUNDANCY {n}"),
            RetentionPolicy::RecoveryWindow(n, u) => {
                let unit = match u {
                    WindowUnit::Days => "DAYS",
                    WindowUnit::Weeks => "WEEKS",
                    WindowUnit::Months => "MONTHS",
                };
                write!(f, "RECOVERY WINDOW OF {n} {unit}")
            }
        }
    }
}

impl RetentionPolicy {
    /// Parses Barman's spelling, case-insensitively (`REDUNDANCY 2`,
    /// `RECOVERY WINDOW OF 4 WEEKS`); the count is at least 1.
    pub fn parse(s: &str) -> Result<RetentionPolicy, String> {
        let err = || {
            format!(
                "expected 'REDUNDANCY <n>' or 'RECOVERY WINDOW OF <n> DAYS|WEEKS|MONTHS', got '{s}'"
            )
        };
        let words: Vec<String> = s
            .split_whitespace()
            .map(|w| w.to_ascii_lowercase())
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let count = |n: &str| -> Result<u32, String> {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            match n.parse::<u32>() {
                Ok(0) => Err(format!("the count must be at least 1, got '{s}'")),
                Ok(v) => Ok(v),
                Err(_) => Err(err()),
            }
        };
        match words.as_slice() {
            ["redundancy", n] => Ok(RetentionPolicy::Redundancy(count(n)?)),
            ["recovery", "window", "of", n, unit] => {
                let unit = match *unit {
                    "day" | "days" => WindowUnit::Days,
                    "week" | "weeks" => WindowUnit::Weeks,
                    "month" | "months" => WindowUnit::Months,
                    _ => return Err(err()),
                };
                Ok(RetentionPolicy::RecoveryWindow(count(n)?, unit))
            }
            _ => Err(err()),
        }
    }
}
