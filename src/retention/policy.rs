//! Retention policies as Barman defines them (`REDUNDANCY n`, `RECOVERY WINDOW OF n
//! DAYS|WEEKS|MONTHS`) and the pure rule that says which backups they make obsolete.
//! `now` is passed in, so the rule is tested without a clock.

use crate::backup::{BackupInfo, BackupStatus};
use chrono::{DateTime, Duration, Months, Utc};

pub use crate::types::retention_policy::{RetentionPolicy, WindowUnit};

impl RetentionPolicy {
    /// The start of the recovery window at `now` (`None` for a redundancy policy).
    pub fn window_start(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match *self {
            RetentionPolicy::Redundancy(_) => None,
            RetentionPolicy::RecoveryWindow(n, WindowUnit::Days) => {
                Some(now - Duration::days(i64::from(n)))
            }
            RetentionPolicy::RecoveryWindow(n, WindowUnit::Weeks) => {
                Some(now - Duration::weeks(i64::from(n)))
            }
            RetentionPolicy::RecoveryWindow(n, WindowUnit::Months) => Some(
                now.checked_sub_months(Months::new(n))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
            ),
        }
    }
}

/// When a backup counts as taken for the recovery window: its end (the first moment
/// it can be recovered to), or its start while the end is unknown.
fn taken_at(b: &BackupInfo) -> DateTime<Utc> {
    b.end_time.unwrap_or(b.begin_time)
}

/// The ids of the backups `policy` makes obsolete at `now`: chain by chain, the
/// oldest chain first, each one's incremental backups newest first and its full
/// backup last (so a crash part-way never leaves an incremental without its parent).
///
/// - The policy counts full backups (chains): an incremental backup goes with the
///   full backup it is built on, never before.
/// - Only `DONE` backups without a `keep` annotation are ever obsolete, and only they
///   count toward redundancy: `STARTED`, `WAITING_FOR_WALS`, `FAILED`, `SYNCING` and
///   kept backups are left alone, and so is every backup of a chain holding one
///   (a kept incremental keeps the backups it is built on).
/// - `REDUNDANCY n` keeps the newest `n` of them.
/// - `RECOVERY WINDOW OF n …` keeps every one that ended inside the window and the
///   newest one that ended before it (the base a recovery to the window's start
///   needs).
/// - Whatever the policy says, at least `minimum_redundancy` of them are retained:
///   the newest obsolete ones are given back first.
pub fn obsolete(
    backups: &[BackupInfo],
    policy: RetentionPolicy,
    minimum_redundancy: u32,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut done: Vec<&BackupInfo> = backups
        .iter()
        .filter(|b| b.status == BackupStatus::Done && b.keep.is_none() && b.parent.is_none())
        .collect();
    done.sort_by(|a, b| (taken_at(a), &a.backup_id).cmp(&(taken_at(b), &b.backup_id)));
    // How many of the oldest ones go.
    let by_policy = match policy {
        RetentionPolicy::Redundancy(n) => done.len().saturating_sub(n as usize),
        RetentionPolicy::RecoveryWindow(..) => {
            let start = policy.window_start(now).unwrap_or(now);
            let before = done.iter().filter(|b| taken_at(b) < start).count();
            // The newest one before the window stays.
            before.saturating_sub(1)
        }
    };
    let floor = (minimum_redundancy as usize).min(done.len());
    let go = by_policy.min(done.len() - floor);
    let mut out = Vec::new();
    for root in &done[..go] {
        let built_on = crate::backup::chain::descendants(&root.backup_id, backups);
        let held = built_on.iter().any(|d| {
            d.keep.is_some()
                || matches!(
                    d.status,
                    BackupStatus::Started | BackupStatus::WaitingForWals | BackupStatus::Syncing
                )
        });
        if held {
            continue;
        }
        out.extend(
            built_on
                .iter()
                .filter(|d| d.status == BackupStatus::Done)
                .map(|d| d.backup_id.clone()),
        );
        out.push(root.backup_id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::KeepTarget;
    use crate::wal::SystemId;
    use BackupStatus::*;

    fn backup_at(
        id: &str,
        end: DateTime<Utc>,
        status: BackupStatus,
        keep: Option<KeepTarget>,
    ) -> BackupInfo {
        BackupInfo {
            status,
            server_version: 150000,
            system_id: SystemId(1),
            end_time: Some(end),
            keep,
            ..BackupInfo::new(id, "pg1", end - Duration::minutes(5))
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn policies_parse_as_barman_spells_them() {
        use RetentionPolicy::*;
        use WindowUnit::*;
        let cases: &[(&str, Option<RetentionPolicy>)] = &[
            ("REDUNDANCY 2", Some(Redundancy(2))),
            ("redundancy   7", Some(Redundancy(7))),
            ("RECOVERY WINDOW OF 1 DAYS", Some(RecoveryWindow(1, Days))),
            ("recovery window of 4 week", Some(RecoveryWindow(4, Weeks))),
            (
                "RECOVERY WINDOW OF 6 MONTHS",
                Some(RecoveryWindow(6, Months)),
            ),
            ("REDUNDANCY 0", None),
            ("REDUNDANCY +1", None),
            ("REDUNDANCY", None),
            ("RECOVERY WINDOW OF 1 YEARS", None),
            ("KEEP 3", None),
        ];
        for (text, want) in cases {
            assert_eq!(RetentionPolicy::parse(text).ok(), *want, "{text}");
            if let Some(p) = want {
                assert_eq!(RetentionPolicy::parse(&p.to_string()).ok(), *want);
            }
        }
        let m = RetentionPolicy::RecoveryWindow(1, Months);
        assert_eq!(
            m.window_start(now()).unwrap().to_rfc3339(),
            "2026-05-15T12:00:00+00:00"
        );
    }

    #[test]
    fn obsolete_backups_by_policy_table() {
        use RetentionPolicy::*;
        // (id, days before now, status, keep)
        type Row = (&'static str, i64, BackupStatus, Option<KeepTarget>);
        // (what, backups, policy, minimum_redundancy, obsolete ids)
        type Case = (
            &'static str,
            &'static [Row],
            RetentionPolicy,
            u32,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                "redundancy keeps the newest n DONE",
                &[
                    ("b1", 4, Done, None),
                    ("b2", 3, Done, None),
                    ("b3", 2, Done, None),
                    ("b4", 1, Done, None),
                ],
                Redundancy(2),
                0,
                &["b1", "b2"],
            ),
            (
                "failed, started and waiting are neither obsolete nor counted",
                &[
                    ("b1", 5, Done, None),
                    ("b2", 4, Failed, None),
                    ("b3", 3, Done, None),
                    ("b4", 2, WaitingForWals, None),
                    ("b5", 1, Started, None),
                ],
                Redundancy(1),
                0,
                &["b1"],
            ),
            (
                "kept backups are never obsolete and do not count",
                &[
                    ("b1", 4, Done, Some(KeepTarget::Full)),
                    ("b2", 3, Done, None),
                    ("b3", 2, Done, Some(KeepTarget::Standalone)),
                    ("b4", 1, Done, None),
                ],
                Redundancy(1),
                0,
                &["b2"],
            ),
            (
                "minimum_redundancy wins over the policy",
                &[
                    ("b1", 3, Done, None),
                    ("b2", 2, Done, None),
                    ("b3", 1, Done, None),
                ],
                Redundancy(1),
                2,
                &["b1"],
            ),
            (
                "minimum_redundancy above what exists removes nothing",
                &[("b1", 3, Done, None), ("b2", 2, Done, None)],
                Redundancy(1),
                5,
                &[],
            ),
            (
                "window keeps the newest backup before it and all inside",
                &[
                    ("b1", 10, Done, None),
                    ("b2", 5, Done, None),
                    ("b3", 3, Done, None),
                    ("b4", 0, Done, None),
                ],
                RecoveryWindow(4, WindowUnit::Days),
                0,
                &["b1"],
            ),
            (
                "window with every backup inside removes nothing",
                &[("b1", 2, Done, None), ("b2", 1, Done, None)],
                RecoveryWindow(1, WindowUnit::Weeks),
                0,
                &[],
            ),
            (
                "window with every backup before it keeps the newest",
                &[
                    ("b1", 30, Done, None),
                    ("b2", 20, Done, None),
                    ("b3", 10, Done, None),
                ],
                RecoveryWindow(1, WindowUnit::Days),
                0,
                &["b1", "b2"],
            ),
            (
                "window and minimum_redundancy",
                &[
                    ("b1", 30, Done, None),
                    ("b2", 20, Done, None),
                    ("b3", 10, Done, None),
                ],
                RecoveryWindow(1, WindowUnit::Days),
                2,
                &["b1"],
            ),
            ("no backups", &[], Redundancy(1), 1, &[]),
        ];
        for (what, rows, policy, min, want) in cases {
            let list: Vec<BackupInfo> = rows
                .iter()
                .map(|(id, days, st, keep)| {
                    backup_at(id, now() - Duration::days(*days), *st, *keep)
                })
                .collect();
            assert_eq!(obsolete(&list, *policy, *min, now()), *want, "{what}");
        }
    }

    #[test]
    fn chains_go_whole_and_a_kept_incremental_holds_its_chain() {
        let at = |id: &str, days: i64, parent: Option<&str>, keep: Option<KeepTarget>| BackupInfo {
            parent: parent.map(str::to_string),
            ..backup_at(id, now() - Duration::days(days), Done, keep)
        };
        // Two chains and a newer full: REDUNDANCY 1 counts fulls only.
        let list = vec![
            at("f1", 9, None, None),
            at("i1", 8, Some("f1"), None),
            at("i2", 7, Some("i1"), None),
            at("f2", 5, None, None),
            at("j1", 4, Some("f2"), None),
            at("f3", 1, None, None),
        ];
        assert_eq!(
            obsolete(&list, RetentionPolicy::Redundancy(1), 0, now()),
            ["i2", "i1", "f1", "j1", "f2"]
        );
        assert_eq!(
            obsolete(&list, RetentionPolicy::Redundancy(2), 0, now()),
            ["i2", "i1", "f1"]
        );
        // A kept incremental keeps its whole chain.
        let mut held = list.clone();
        held[1].keep = Some(KeepTarget::Standalone);
        assert_eq!(
            obsolete(&held, RetentionPolicy::Redundancy(1), 0, now()),
            ["j1", "f2"]
        );
    }
}
