//! Recovery targets (`recovery_target_*`) and the settings `recover` writes into
//! `postgresql.auto.conf`: parsed once from the command line, checked against the
//! chosen backup and the archive, rendered in PostgreSQL's configuration syntax.

use crate::wal::{Lsn, TimeLineId};
use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// Where recovery stops (at most one per recovery, as PostgreSQL wants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum RecoveryTarget {
    /// `recovery_target_time`: the first commit after this moment ends recovery.
    Time(DateTime<Utc>),
    /// `recovery_target_xid`.
    Xid(u64),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
    /// `recovery_target_name`: a restore point made with `pg_create_restore_point`.
    Name(String),
    /// `recovery_target = 'immediate'`: stop as soon as the backup is consistent.
    Immediate,
}

impl RecoveryTarget {
    /// The PostgreSQL setting and its value.
    pub fn setting(&self) -> (&'static str, String) {
        match self {
            RecoveryTarget::Time(t) => ("recovery_target_time", format_time(*t)),
            RecoveryTarget::Xid(x) => ("recovery_target_xid", x.to_string()),
            RecoveryTarget::Lsn(l) => ("recovery_target_lsn", l.to_string()),
            RecoveryTarget::Name(n) => ("recovery_target_name", n.clone()),
            RecoveryTarget::Immediate => ("recovery_target", "immediate".to_string()),
        }
    }
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Time(t) => write!(f, "time {}", format_time(*t)),
            RecoveryTarget::Xid(x) => write!(f, "xid {x}"),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Name(n) => write!(f, "restore point '{n}'"),
            RecoveryTarget::Immediate => f.write_str("consistency (immediate)"),
        }
    }
}

/// A time in the form PostgreSQL reads back unambiguously (UTC, explicit offset).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// Parses a target time: RFC 3339, or `YYYY-MM-DD HH:MM:SS[.frac][zone]` with a zone
/// like `+02`, `+0200`, `+02:00`, `Z` or ` UTC`; without a zone, the local time of
/// this host.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let s = match (s.get(..10), s.get(10..)) {
        (Some(date), Some(rest)) if rest.starts_with('T') => format!("{date} {}", &rest[1..]),
        _ => s.to_string(),
    };
    let s = match s
        .strip_suffix(" UTC")
        .or_else(|| s.strip_suffix(" GMT"))
        .or_else(|| s.strip_suffix('Z'))
    {
        Some(rest) => format!("{}+00", rest.trim_end()),
        None => s.clone(),
    };
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z"] {
        if let Ok(t) = DateTime::parse_from_str(&s, fmt) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d"] {
        let naive = NaiveDateTime::parse_from_str(&s, fmt).ok().or_else(|| {
            chrono::NaiveDate::parse_from_str(&s, fmt)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        });
        if let Some(n) = naive {
            return Local
                .from_local_datetime(&n)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| format!("'{text}' does not exist in the local time zone"));
        }
    }
    Err(format!(
        "invalid time '{text}' (expected e.g. '2026-01-31 12:00:00+00' or RFC 3339)"
    ))
}

/// `recovery_target_timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetTimeline {
    /// Stay on the backup's timeline.
    Current,
    /// Follow the newest timeline branching off it (PostgreSQL's default).
    Latest,
    /// That timeline.
    Id(TimeLineId),
}

impl FromStr for TargetTimeline {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "current" => Ok(TargetTimeline::Current),
            "latest" => Ok(TargetTimeline::Latest),
            n => n
                .parse::<TimeLineId>()
                .map(TargetTimeline::Id)
                .map_err(|_| {
                    format!("invalid timeline '{s}' (expected a number, current or latest)")
                }),
        }
    }
}

impl fmt::Display for TargetTimeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetTimeline::Current => f.write_str("current"),
            TargetTimeline::Latest => f.write_str("latest"),
            TargetTimeline::Id(t) => write!(f, "{t}"),
        }
    }
}

/// `recovery_target_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetAction {
    /// Stay in recovery, read-only, until `pg_wal_replay_resume()` (PostgreSQL's default).
    Pause,
    /// End recovery and open for writes on a new timeline.
    Promote,
    /// Stop the server.
    Shutdown,
}

impl TargetAction {
    fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// Everything `recover` writes into `postgresql.auto.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoverySettings {
    /// The shell command PostgreSQL runs to fetch each WAL file.
    pub restore_command: String,
    /// Where recovery stops.
    pub target: Option<RecoveryTarget>,
    /// `recovery_target_inclusive` (`Some(false)` with `--exclusive`).
    pub inclusive: Option<bool>,
    /// `recovery_target_timeline`.
    pub timeline: Option<TargetTimeline>,
    /// `recovery_target_action`.
    pub action: Option<TargetAction>,
    /// `archive_command = 'false'`, as Barman writes it: a recovered copy shares the
    /// server's system identifier, and must not archive its new timeline into the
    /// server's repository.
    pub disable_archive_command: bool,
    /// Settings the user gave (`--port`, `--set KEY=VALUE`), written last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<(String, String)>,
}

impl RecoverySettings {
    /// The settings as `name = 'value'` pairs, in the order they are written.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("restore_command", self.restore_command.clone())];
        if let Some(t) = &self.target {
            out.push(t.setting());
        }
        if let Some(i) = self.inclusive {
            out.push(("recovery_target_inclusive", i.to_string()));
        }
        if let Some(t) = self.timeline {
            out.push(("recovery_target_timeline", t.to_string()));
        }
        if let Some(a) = self.action {
            out.push(("recovery_target_action", a.as_str().to_string()));
        }
        if self.disable_archive_command {
            out.push(("archive_command", "false".to_string()));
        }
        out
    }

    /// The block appended to `postgresql.auto.conf`, headed by a comment line.
    pub fn render(&self, header: &str) -> String {
        let mut s = format!("# {header}\n");
        for (k, v) in self.pairs() {
            s.push_str(&format!("{k} = {}\n", conf_quote(&v)));
        }
        for (k, v) in &self.overrides {
            s.push_str(&format!("{k} = {}\n", conf_quote(v)));
        }
        s
    }
}

/// A value quoted for postgresql.conf: single quotes doubled, backslashes escaped
/// (the configuration parser reads `\` escapes inside quotes).
pub fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A word quoted for `/bin/sh` when it holds anything beyond a safe set.
pub fn shell_quote(v: &str) -> String {
    let safe = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@%".contains(&b));
    if safe {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_the_time_forms_dbas_type() {
        let want = utc("2026-03-01T10:20:30.123456Z");
        for s in [
            "2026-03-01T10:20:30.123456Z",
            "2026-03-01 10:20:30.123456+00",
            "2026-03-01 11:20:30.123456+01",
            "2026-03-01 11:20:30.123456+01:00",
            "2026-03-01 11:20:30.123456+0100",
            "2026-03-01 10:20:30.123456 UTC",
        ] {
            assert_eq!(parse_time(s).unwrap(), want, "{s}");
        }
        assert_eq!(
            parse_time("2026-03-01 10:20:30+00").unwrap(),
            utc("2026-03-01T10:20:30Z")
        );
        assert!(parse_time("2026-03-01 10:20:30").is_ok());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01 10:00:00+00").is_err());
    }

    #[test]
    fn renders_settings_postgres_reads_back() {
        let s = RecoverySettings {
            restore_command: "cp '/data/it''s/pgbk_wal/%f' %p".into(),
            target: Some(RecoveryTarget::Time(utc("2026-03-01T10:20:30.5Z"))),
            inclusive: Some(false),
            timeline: Some(TargetTimeline::Latest),
            action: Some(TargetAction::Promote),
            disable_archive_command: true,
            overrides: Vec::new(),
        };
        let text = s.render("pgbk");
        assert_eq!(
            text,
            "# pgbk\n\
             restore_command = 'cp ''/data/it''''s/pgbk_wal/%f'' %p'\n\
             recovery_target_time = '2026-03-01 10:20:30.500000+00'\n\
             recovery_target_inclusive = 'false'\n\
             recovery_target_timeline = 'latest'\n\
             recovery_target_action = 'promote'\n\
             archive_command = 'false'\n"
        );
        assert_eq!(conf_quote("a\\b"), "'a\\\\b'");
        assert_eq!(
            RecoveryTarget::Immediate.setting(),
            ("recovery_target", "immediate".to_string())
        );
        assert_eq!(shell_quote("/usr/bin/pgbk"), "/usr/bin/pgbk");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!("7".parse::<TargetTimeline>().unwrap().to_string(), "7");
        assert!("0".parse::<TargetTimeline>().is_err());
    }
}
