//! The items `check` judges for one server, from one probe.

use super::probe::{DiskSpace, ServerState};
use crate::backup::BackupStatus;
use crate::config::ServerConfig;
use crate::units::{human_bytes, human_seconds};
use chrono::{DateTime, Utc};

/// `disk space` fails when less than this many bytes are available in `home`…
pub const DISK_MIN_FREE_BYTES: u64 = 1 << 30;
/// …or less than this share of the filesystem (2%).
pub const DISK_MIN_FREE_RATIO: f64 = 0.02;

pub use super::item::CheckItem;

/// `conninfo` (where backups are taken) and `primary_conninfo`, when WAL comes
/// from another server than backups.
fn backup_source_items(src: &super::probe::BackupSource) -> Vec<CheckItem> {
    let mut out = vec![match &src.conninfo {
        Ok(_) => item("backup source (conninfo)", true, None),
        Err(e) => item("backup source (conninfo)", false, Some(e.clone())),
    }];
    if let Some(primary) = &src.primary {
        let standby_id = src.conninfo.as_ref().ok().map(|(_, id)| id.clone());
        let (ok, hint) = match primary {
            Err(e) => (false, Some(e.clone())),
            Ok((true, _)) => (
                false,
                Some("primary_conninfo names a server in recovery, not the primary".into()),
            ),
            Ok((false, id)) if standby_id.as_ref().is_some_and(|s| s != id) => (
                false,
                Some(format!(
                    "primary_conninfo names another cluster (system id {id}, conninfo's is {})",
                    standby_id.unwrap_or_default()
                )),
            ),
            Ok(_) => (true, None),
        };
        out.push(item("primary (primary_conninfo)", ok, hint));
    }
    out
}

fn item(name: &str, ok: bool, hint: Option<String>) -> CheckItem {
    CheckItem::new(name, ok, hint)
}

/// Judges the probe of a server.
pub fn check_items(server: &ServerConfig, st: &ServerState) -> Vec<CheckItem> {
    if server.primary_ssh_command.is_some() {
        // A passive server: the copy's freshness instead of PostgreSQL items.
        let mut out = super::peer_check::peer_items(server, st);
        out.extend(repository_items(server, st));
        return unknown_without_repository(out, st);
    }
    let mut out = Vec::new();
    match &st.sql {
        Ok(sql) => {
            out.push(item("PostgreSQL", true, None));
            out.push(item(
                "superuser or replication role",
                sql.superuser || sql.replication_role,
                (!(sql.superuser || sql.replication_role))
                    .then(|| "the conninfo role needs SUPERUSER or REPLICATION".to_string()),
            ));
            let level_ok = sql.wal_level == "replica" || sql.wal_level == "logical";
            out.push(item(
                "wal_level",
                level_ok,
                (!level_ok).then(|| {
                    format!(
                        "wal_level is '{}', must be 'replica' or 'logical'",
                        sql.wal_level
                    )
                }),
            ));
        }
        Err(e) => out.push(item("PostgreSQL", false, Some(e.clone()))),
    }
    if server.backup_type == crate::config::BackupType::Incremental {
        if let Ok(sql) = &st.sql {
            // Before PostgreSQL 17 pgbk compares blocks itself: nothing to check.
            let hint = if sql.version_num >= crate::backup::incremental::MIN_INCREMENTAL_VERSION
                && sql.summarize_wal != Some(true)
            {
                Some("backup_type = incremental needs summarize_wal = on on the server".to_string())
            } else {
                None
            };
            out.push(item("incremental backups", hint.is_none(), hint));
        }
    }
    if let Some(src) = &st.backup_source {
        out.extend(backup_source_items(src));
    }
    let streaming_needed =
        server.streaming_archiver || server.backup_method.to_string() == "postgres";
    if streaming_needed {
        match &st.streaming {
            Ok(_) => out.push(item("PostgreSQL streaming", true, None)),
            Err(e) => out.push(item("PostgreSQL streaming", false, Some(e.clone()))),
        }
    }
    if let (Ok(stream), Some(known)) = (&st.streaming, st.local.catalog_system_id) {
        let ok = stream.system_id == known;
        out.push(item(
            "systemid coherence",
            ok,
            (!ok).then(|| {
                format!(
                    "server reports {}, the archive holds WAL of {}",
                    stream.system_id, known
                )
            }),
        ));
    }
    if server.streaming_archiver {
        if let (Some(slot), Ok(sql)) = (&server.slot_name, &st.sql) {
            let (ok, hint) = match &sql.slot {
                None => (
                    false,
                    Some(format!("replication slot '{slot}' does not exist")),
                ),
                Some(s) if s.wal_status.as_deref() == Some("lost") => (
                    false,
                    Some(format!("replication slot '{slot}' has lost required WAL")),
                ),
                Some(s) if !s.active => (
                    false,
                    Some(format!("replication slot '{slot}' is not active")),
                ),
                Some(_) => (true, None),
            };
            out.push(item("replication slot", ok, hint));
        }
        let running = st.local.receive_wal_pid;
        out.push(item(
            "receive-wal running",
            running.is_some(),
            match running {
                Some(pid) => Some(format!("pid {pid}")),
                None => Some(format!(
                    "no receive-wal process for server '{}'",
                    server.name
                )),
            },
        ));
    }
    out.push(item(
        "directories",
        st.local.not_writable.is_none(),
        st.local.not_writable.clone(),
    ));
    let gaps = &st.local.gaps;
    out.push(item(
        "archived WAL continuity",
        gaps.is_empty(),
        (!gaps.is_empty()).then(|| {
            let shown: Vec<&str> = gaps.iter().take(5).map(String::as_str).collect();
            let more = if gaps.len() > 5 {
                format!(" and {} more", gaps.len() - 5)
            } else {
                String::new()
            };
            format!("missing {}{more}", shown.join(", "))
        }),
    ));
    out.push(item(
        "WAL errors",
        st.local.error_files == 0,
        (st.local.error_files > 0)
            .then(|| format!("{} file(s) in the errors folder", st.local.error_files)),
    ));
    out.push(catalog_item(server, st));
    if !st.local.damaged_wal.is_empty() {
        let d = &st.local.damaged_wal;
        out.push(item(
            "archived WAL integrity",
            false,
            Some(format!(
                "{} is damaged in the archive (get-wal refused it; see {}/<name>.damaged)",
                d.join(", "),
                "errors"
            )),
        ));
    }
    out.extend(super::ssh_check::ssh_items(server, st));
    if let Some(r) = &st.repository {
        out.push(item(
            "repository",
            r.error.is_none(),
            Some(match &r.error {
                None => format!("{}: reachable, write test passed", r.location),
                Some(e) => e.clone(),
            }),
        ));
    }
    out.extend(repository_items(server, st));
    unknown_without_repository(out, st)
}

/// Items judged from what the repository holds: when it could not be read they are
/// unknown (an unreadable catalog is not "0 backups").
const FROM_REPOSITORY: &[&str] = &[
    "systemid coherence",
    "receive-wal running",
    "archived WAL continuity",
    "WAL errors",
    "catalog in step with the repository",
    "archived WAL integrity",
    "failed backups",
    "minimum redundancy requirements",
    "backup maximum age",
    "wal maximum age",
    "replication from primary",
];

/// With an unreadable repository: its reason once, on the `directories` item, and
/// every item in [`FROM_REPOSITORY`] unknown.
fn unknown_without_repository(items: Vec<CheckItem>, st: &ServerState) -> Vec<CheckItem> {
    let Some(why) = &st.local.unreadable else {
        return items;
    };
    items
        .into_iter()
        .map(|i| {
            if i.name == "directories" {
                item("directories", false, Some(why.clone()))
            } else if FROM_REPOSITORY.contains(&i.name.as_str()) {
                CheckItem::unknown(&i.name, "the repository could not be read")
            } else {
                i
            }
        })
        .collect()
}

/// FAILED when the repository holds backups or WAL the catalog does not list (it was
/// lost or restored from an older copy).
fn catalog_item(server: &ServerConfig, st: &ServerState) -> CheckItem {
    let backups = &st.local.backups_not_in_catalog;
    let wal = &st.local.wal_not_in_catalog;
    let mut missing = Vec::new();
    if !backups.is_empty() {
        missing.push(format!("backup(s) {}", backups.join(", ")));
    }
    if !wal.is_empty() {
        let more = match wal.len() {
            n if n > 3 => format!(" and {} more", n - 3),
            _ => String::new(),
        };
        let shown: Vec<&str> = wal.iter().take(3).map(String::as_str).collect();
        missing.push(format!("WAL {}{more}", shown.join(", ")));
    }
    item(
        "catalog in step with the repository",
        missing.is_empty(),
        (!missing.is_empty()).then(|| {
            format!(
                "the catalog does not list {}: run rebuild-catalog {}",
                missing.join(" nor "),
                server.name
            )
        }),
    )
}

fn age_seconds(now: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    (now - t).num_milliseconds().max(0) as f64 / 1000.0
}

/// The items about what the repository holds: backups, WAL age, retention, disk space.
fn repository_items(server: &ServerConfig, st: &ServerState) -> Vec<CheckItem> {
    let mut out = Vec::new();
    let backups = &st.local.backups;
    let done: Vec<_> = backups
        .iter()
        .filter(|b| b.status == BackupStatus::Done)
        .collect();
    let failed: Vec<&str> = backups
        .iter()
        .filter(|b| b.status == BackupStatus::Failed)
        .map(|b| b.backup_id.as_str())
        .collect();
    out.push(item(
        "failed backups",
        failed.is_empty(),
        (!failed.is_empty()).then(|| {
            let shown: Vec<&str> = failed.iter().take(5).copied().collect();
            let more = if failed.len() > 5 { ", …" } else { "" };
            format!(
                "there are {} failed backups ({}{more})",
                failed.len(),
                shown.join(", ")
            )
        }),
    ));
    let need = server.minimum_redundancy as usize;
    out.push(item(
        "minimum redundancy requirements",
        done.len() >= need,
        Some(format!(
            "have {} backups, expected at least {need}",
            done.len()
        )),
    ));
    if let Some(max) = server.last_backup_maximum_age {
        let newest = done
            .iter()
            .map(|b| b.end_time.unwrap_or(b.begin_time))
            .max();
        let interval = human_seconds(max.as_secs_f64());
        let (ok, hint) = match newest {
            None => (
                false,
                format!("interval provided: {interval}, latest backup age: no DONE backup"),
            ),
            Some(t) => {
                let age = age_seconds(st.now, t);
                (
                    age <= max.as_secs_f64(),
                    format!(
                        "interval provided: {interval}, latest backup age: {}",
                        human_seconds(age)
                    ),
                )
            }
        };
        out.push(item("backup maximum age", ok, Some(hint)));
    }
    if let Some(max) = server.last_wal_maximum_age {
        let interval = human_seconds(max.as_secs_f64());
        let (ok, hint) = match st.local.last_receive_time {
            None => (
                false,
                format!("interval provided: {interval}, no WAL archived yet"),
            ),
            Some(t) => {
                let age = age_seconds(st.now, t);
                (
                    age <= max.as_secs_f64(),
                    format!(
                        "interval provided: {interval}, last WAL age: {}",
                        human_seconds(age)
                    ),
                )
            }
        };
        out.push(item("wal maximum age", ok, Some(hint)));
    }
    out.extend(drill_items(server, st));
    // The configuration loader already refused an invalid policy; show what applies.
    out.push(item(
        "retention policy settings",
        true,
        Some(match &server.retention_policy {
            Some(p) => format!("{p}, minimum_redundancy {}", server.minimum_redundancy),
            None => "no retention policy: backups and WAL are kept until deleted".into(),
        }),
    ));
    if let Some(d) = st.local.disk {
        out.push(disk_item(d));
    }
    out
}

/// The restore drills and the recovery objectives: the newest drill passed, is
/// younger than `drill_maximum_age` and met `recovery_time_objective`; the live RPO
/// (the age of the newest WAL safely stored) meets `recovery_point_objective`.
pub fn drill_items(server: &ServerConfig, st: &ServerState) -> Vec<CheckItem> {
    let d = &server.drill;
    let mut out = Vec::new();
    let last = st.local.last_drill.as_ref();
    if let Some(max) = d.maximum_age {
        let interval = human_seconds(max.as_secs_f64());
        out.push(match last {
            None => item(
                "drill maximum age",
                false,
                Some(format!(
                    "interval provided: {interval}, no drill yet (run 'pgbk drill {}')",
                    server.name
                )),
            ),
            Some(l) => {
                let age = age_seconds(st.now, l.started_at);
                item(
                    "drill maximum age",
                    age <= max.as_secs_f64(),
                    Some(format!(
                        "interval provided: {interval}, latest drill age: {}",
                        human_seconds(age)
                    )),
                )
            }
        });
    }
    if let Some(l) = last {
        out.push(item(
            "last drill",
            l.ok,
            Some(match (&l.error, l.ok) {
                (Some(e), false) => format!(
                    "drill {} failed: {}",
                    l.id,
                    e.lines().next().unwrap_or_default()
                ),
                _ => format!("drill {} passed", l.id),
            }),
        ));
    }
    if let Some(obj) = d.rto {
        let objective = human_seconds(obj.as_secs_f64());
        out.push(match last.and_then(|l| l.rto_secs) {
            None => CheckItem::unknown(
                "recovery time objective",
                &format!("objective {objective}; no drill has measured the RTO yet"),
            ),
            Some(rto) => item(
                "recovery time objective",
                rto <= obj.as_secs_f64(),
                Some(format!(
                    "objective {objective}, measured RTO {}",
                    human_seconds(rto)
                )),
            ),
        });
    }
    if let Some(obj) = d.rpo {
        let objective = human_seconds(obj.as_secs_f64());
        out.push(match st.local.last_receive_time {
            None => item(
                "recovery point objective",
                false,
                Some(format!("objective {objective}, no WAL stored yet")),
            ),
            Some(t) => {
                // With receive-wal streaming, what is not flushed yet; with
                // archive_command only, the age of the newest archived WAL.
                let live = age_seconds(st.now, t);
                item(
                    "recovery point objective",
                    live <= obj.as_secs_f64(),
                    Some(format!(
                        "objective {objective}, live RPO {} (newest WAL stored)",
                        human_seconds(live)
                    )),
                )
            }
        });
    }
    out
}

/// FAILED when another configured server streams from the same PostgreSQL (host and
/// port of `streaming_conninfo`) under the same `streaming_archiver_name`: PostgreSQL
/// then cannot tell the two receivers apart (pg_stat_replication,
/// synchronous_standby_names), and one's flush position would pass for the other's.
pub fn application_name_item(server: &ServerConfig, all: &[&ServerConfig]) -> Option<CheckItem> {
    if !server.streaming_archiver {
        return None;
    }
    let target = |s: &ServerConfig| {
        let ci = crate::pg::ConnInfo::parse(s.wal_streaming().1).ok()?;
        Some((ci.host(), ci.port()))
    };
    let mine = target(server)?;
    let clash: Vec<&str> = all
        .iter()
        .filter(|o| o.name != server.name && o.streaming_archiver)
        .filter(|o| o.streaming_archiver_name == server.streaming_archiver_name)
        .filter(|o| target(o).as_ref() == Some(&mine))
        .map(|o| o.name.as_str())
        .collect();
    Some(item(
        "streaming_archiver_name unique",
        clash.is_empty(),
        (!clash.is_empty()).then(|| {
            format!(
                "server(s) {} stream from the same PostgreSQL as '{}'; give each its own streaming_archiver_name",
                clash.join(", "),
                server.streaming_archiver_name
            )
        }),
    ))
}

/// FAILED below [`DISK_MIN_FREE_BYTES`] or [`DISK_MIN_FREE_RATIO`] of the filesystem.
fn disk_item(d: DiskSpace) -> CheckItem {
    let ratio = if d.total_bytes == 0 {
        1.0
    } else {
        d.available_bytes as f64 / d.total_bytes as f64
    };
    let ok = d.available_bytes >= DISK_MIN_FREE_BYTES && ratio >= DISK_MIN_FREE_RATIO;
    item(
        "disk space",
        ok,
        Some(format!(
            "{} available of {} ({:.1}%){}",
            human_bytes(d.available_bytes),
            human_bytes(d.total_bytes),
            ratio * 100.0,
            if ok { "" } else { ", below 1 GiB or 2%" }
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupInfo;
    use crate::config::Config;
    use crate::verify::probe::LocalState;
    use crate::wal::SystemId;
    use chrono::Duration;

    fn server(extra: &str) -> ServerConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pgbk.conf"),
            format!("[pgbk]\nhome = {}\n", dir.path().join("home").display()),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/pg1.conf"),
            format!("[pg1]\nconninfo = host=pg user=u dbname=postgres\n{extra}"),
        )
        .unwrap();
        let mut c = Config::load(&dir.path().join("pgbk.conf")).unwrap();
        c.servers.remove("pg1").unwrap()
    }

    fn backup(id: &str, status: BackupStatus, end: DateTime<Utc>) -> BackupInfo {
        BackupInfo {
            status,
            server_version: 150000,
            system_id: SystemId(1),
            end_time: Some(end),
            ..BackupInfo::new(id, "pg1", end)
        }
    }

    fn state(now: DateTime<Utc>, local: LocalState) -> ServerState {
        ServerState {
            server: "pg1".into(),
            sql: Err("down".into()),
            streaming: Err("down".into()),
            local,
            now,
            ssh: None,
            repository: None,
            backup_source: None,
        }
    }

    fn find<'a>(items: &'a [CheckItem], name: &str) -> Option<&'a CheckItem> {
        items.iter().find(|i| i.name == name)
    }

    #[test]
    fn backup_maximum_age_judges_the_newest_done_backup() {
        let now = Utc::now();
        let s = server("last_backup_maximum_age = 1 DAYS\nminimum_redundancy = 2\n");
        let old = backup(
            "20260101T000000",
            BackupStatus::Done,
            now - Duration::days(3),
        );
        let failed = backup("20260102T000000", BackupStatus::Failed, now);
        let local = LocalState {
            backups: vec![old.clone(), failed.clone()],
            ..Default::default()
        };
        let items = check_items(&s, &state(now, local));
        assert!(!find(&items, "backup maximum age").unwrap().ok);
        let f = find(&items, "failed backups").unwrap();
        assert!(!f.ok && f.hint.as_deref().unwrap().contains("20260102T000000"));
        assert!(!find(&items, "minimum redundancy requirements").unwrap().ok);

        let fresh = backup(
            "20260103T000000",
            BackupStatus::Done,
            now - Duration::hours(2),
        );
        let local = LocalState {
            backups: vec![old, fresh],
            ..Default::default()
        };
        let items = check_items(&s, &state(now, local));
        assert!(find(&items, "backup maximum age").unwrap().ok);
        assert!(find(&items, "failed backups").unwrap().ok);
        assert!(find(&items, "minimum redundancy requirements").unwrap().ok);

        // No DONE backup at all is a failure too.
        let items = check_items(&s, &state(now, LocalState::default()));
        assert!(!find(&items, "backup maximum age").unwrap().ok);
    }

    #[test]
    fn age_items_are_omitted_unless_configured() {
        let items = check_items(&server(""), &state(Utc::now(), LocalState::default()));
        assert!(find(&items, "backup maximum age").is_none());
        assert!(find(&items, "wal maximum age").is_none());
        assert!(find(&items, "minimum redundancy requirements").unwrap().ok);
        assert!(find(&items, "retention policy settings").unwrap().ok);
    }

    #[test]
    fn wal_maximum_age_uses_the_last_arrival() {
        let now = Utc::now();
        let s = server("last_wal_maximum_age = 30 MINUTES\n");
        let at = |mins| LocalState {
            last_receive_time: Some(now - Duration::minutes(mins)),
            ..Default::default()
        };
        assert!(
            find(&check_items(&s, &state(now, at(5))), "wal maximum age")
                .unwrap()
                .ok
        );
        assert!(
            !find(&check_items(&s, &state(now, at(45))), "wal maximum age")
                .unwrap()
                .ok
        );
        let none = check_items(&s, &state(now, LocalState::default()));
        assert!(!find(&none, "wal maximum age").unwrap().ok);
    }

    #[test]
    fn disk_space_fails_below_a_gibibyte_or_two_percent() {
        let gib = 1u64 << 30;
        let d = |avail, total| {
            disk_item(DiskSpace {
                total_bytes: total,
                available_bytes: avail,
            })
        };
        assert!(d(50 * gib, 100 * gib).ok);
        assert!(!d(gib / 2, 10 * gib).ok, "under 1 GiB");
        assert!(!d(10 * gib, 1000 * gib).ok, "under 2%");
    }
}
