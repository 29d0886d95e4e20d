//! Retention and `cron` on a real PostgreSQL 15 cluster with receive-wal archiving:
//! what a DBA fears, pinned — retention never deletes a backup or a WAL segment a
//! retained or kept backup needs, never drops below `minimum_redundancy`, two crons
//! never run at once, and a killed receive-wal is brought back by the next cron
//! without a hole in the archive.

mod common;
use common::{
    parse_segment_name, pg_scratch_dir, wait_receive_wal, wait_until, BackgroundPgbk, Cluster,
    ClusterOptions, Pgbk,
};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SEG: u64 = 16 << 20;

/// A cluster streaming into a pgbk repository as server `pg1`, with `extra` lines in
/// the server's configuration.
struct Env {
    cluster: Cluster,
    pg: Pgbk,
    _receive_wal: Option<BackgroundPgbk>,
}

fn env(extra: &str, spawn_receive_wal: bool) -> Env {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    pg.streaming_server("pg1", &cluster);
    let conf = pg.conf_d.join("pg1.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(extra);
    std::fs::write(&conf, text).unwrap();
    let rw = spawn_receive_wal.then(|| pg.start_receive_wal("pg1", &cluster));
    Env {
        cluster,
        pg,
        _receive_wal: rw,
    }
}

impl Env {
    /// Takes a DONE backup and returns its id; ids are per second, so wait for the next.
    fn backup(&self) -> String {
        self.cluster
            .psql("create table if not exists t (x int); insert into t values (1)");
        self.pg.ok(&["backup", "pg1", "--immediate-checkpoint"]);
        self.latest_id().expect("a DONE backup")
    }

    fn latest_id(&self) -> Option<String> {
        let list = self.pg.json(&["list-backups", "pg1"]);
        list.as_array()
            .unwrap()
            .iter()
            .find(|b| b["status"] == "DONE")
            .map(|b| s(&b["backup_id"]).to_string())
    }

    /// Closes the current segment and waits until it is archived.
    fn switch(&self) {
        self.pg.archive_now("pg1");
    }

    fn show(&self, id: &str) -> Value {
        self.pg.json(&["show-backup", "pg1", id])
    }

    /// Ids listed, oldest first, with their `obsolete` flag.
    fn listed(&self) -> Vec<(String, bool)> {
        let list = self.pg.json(&["list-backups", "pg1"]);
        let mut v: Vec<(String, bool)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    s(&b["backup_id"]).to_string(),
                    b["obsolete"].as_bool().unwrap(),
                )
            })
            .collect();
        v.reverse();
        v
    }

    /// Segment numbers archived on timeline 1, sorted.
    fn archived(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .pg
            .archived_segments("pg1")
            .iter()
            .map(|n| parse_segment_name(n, SEG).1)
            .collect();
        v.sort();
        v
    }

    fn begin_segno(&self, id: &str) -> u64 {
        parse_segment_name(s(&self.show(id)["begin_wal"]), SEG).1
    }

    fn end_segno(&self, id: &str) -> u64 {
        parse_segment_name(s(&self.show(id)["end_wal"]), SEG).1
    }

    fn cron(&self) -> Value {
        self.pg.json(&["cron"])
    }

    fn backup_json(&self, id: &str) -> PathBuf {
        self.pg
            .home
            .join("pg1/backups")
            .join(id)
            .join("backup.json")
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn ids(v: &[(String, bool)]) -> Vec<&str> {
    v.iter().map(|(i, _)| i.as_str()).collect()
}

/// Kills a receive-wal cron started (found through its lock) when the test ends.
struct ReceiverGuard(PathBuf);

impl ReceiverGuard {
    fn pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()?;
        // Only a live receive-wal (a dead one's pid may have been reused).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("receive-wal")
            .then_some(pid)
    }
}

impl Drop for ReceiverGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) of the pid the receiver wrote in its own lock.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn redundancy_2_keeps_the_newest_two_and_exactly_their_wal_both_recover() {
    let e = env("retention_policy = REDUNDANCY 2\n", true);
    let mut b = Vec::new();
    for _ in 0..4 {
        b.push(e.backup());
        e.switch();
    }
    // Shown OBSOLETE before anything is removed; backup.json still says DONE.
    let listed = e.listed();
    assert_eq!(ids(&listed), b, "{listed:?}");
    let flags: Vec<bool> = listed.iter().map(|(_, o)| *o).collect();
    assert_eq!(flags, [true, true, false, false]);
    let text = e.pg.ok(&["list-backups", "pg1"]);
    assert_eq!(text.matches("OBSOLETE").count(), 2, "{text}");
    assert_eq!(e.show(&b[0])["status"], "DONE");

    let actions = e.cron();
    let deleted: Vec<&str> = actions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["details"]["backup_id"].as_str())
        .collect();
    assert!(
        deleted.contains(&b[0].as_str()) && deleted.contains(&b[1].as_str()),
        "{actions}"
    );
    let listed = e.listed();
    assert_eq!(ids(&listed), &b[2..], "{listed:?}");
    assert!(listed.iter().all(|(_, o)| !o));
    // Exactly the WAL from the older retained backup's begin_wal on, without a hole.
    let wal = e.archived();
    let first = e.begin_segno(&b[2]);
    assert_eq!(wal.first(), Some(&first), "{wal:?}");
    assert_eq!(wal, (first..=*wal.last().unwrap()).collect::<Vec<_>>());
    // A second pass has nothing left to do.
    let again = e.cron();
    assert!(
        again
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["action"] != "retention"),
        "{again}"
    );

    // Both retained backups recover, replaying all WAL to a row written after them.
    e.cluster
        .psql("create table marker (note text); insert into marker values ('after')");
    e.switch();
    for id in &b[2..] {
        e.pg.ok(&["check-backup", "pg1", id]);
        let dir = pg_scratch_dir("pgbk-ret-rec-");
        let data = dir.path().join("data");
        e.pg.ok(&["recover", "pg1", id, data.to_str().unwrap()]);
        common::chown_to_postgres(&data, true);
        let c = Cluster::from_datadir(dir, ClusterOptions::default());
        wait_until(Duration::from_secs(60), "recovery to end", || {
            c.try_psql("select pg_is_in_recovery()")
                .is_ok_and(|s| s == "f")
        });
        assert_eq!(c.psql("select note from marker"), "after", "{id}");
    }
}

#[test]
fn kept_backups_survive_full_with_all_later_wal_standalone_with_its_own_range() {
    let e = env("retention_policy = REDUNDANCY 1\n", true);
    let standalone = e.backup();
    e.switch();
    e.switch();
    let full = e.backup();
    e.switch();
    let plain = e.backup();
    e.switch();
    let newest = e.backup();
    e.switch();
    e.pg.ok(&["keep", "pg1", &standalone, "--target", "standalone"]);
    e.pg.ok(&["keep", "pg1", &full, "--target", "full"]);
    let before = e.archived();

    e.cron();
    let listed = e.listed();
    assert_eq!(ids(&listed), [&standalone, &full, &newest], "{listed:?}");
    assert!(!e.backup_json(&plain).exists());
    let wal = e.archived();
    let (s0, s1) = (e.begin_segno(&standalone), e.end_segno(&standalone));
    let f0 = e.begin_segno(&full);
    let want: Vec<u64> = before
        .iter()
        .copied()
        .filter(|&n| (s0..=s1).contains(&n) || n >= f0)
        .collect();
    assert_eq!(wal, want, "before: {before:?}");
    // Something between the standalone range and the full backup went.
    assert!(before.iter().any(|&n| n > s1 && n < f0), "{before:?}");
    assert!(!before.iter().any(|&n| n > s1 && n < f0 && wal.contains(&n)));
    for id in [&standalone, &full, &newest] {
        e.pg.ok(&["check-backup", "pg1", id]);
    }
}

#[test]
fn minimum_redundancy_2_wins_over_redundancy_1() {
    let e = env(
        "retention_policy = REDUNDANCY 1\nminimum_redundancy = 2\n",
        true,
    );
    let b: Vec<String> = (0..3)
        .map(|_| {
            let id = e.backup();
            e.switch();
            id
        })
        .collect();
    e.cron();
    assert_eq!(ids(&e.listed()), &b[1..]);
    let wal = e.archived();
    assert_eq!(wal.first(), Some(&e.begin_segno(&b[1])), "{wal:?}");
    // `delete` keeps the same floor: two DONE backups, minimum_redundancy = 2.
    let r = e.pg.run(&["delete", "pg1", "oldest"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("minimum_redundancy = 2") && r.stderr.contains("2 DONE backups"),
        "{r:?}"
    );
    assert_eq!(ids(&e.listed()), &b[1..], "nothing deleted");
    e.pg.ok(&["delete", "pg1", "oldest", "--force"]);
    assert_eq!(ids(&e.listed()), &b[2..]);
}

#[test]
fn recovery_window_keeps_the_newest_backup_before_it_and_everything_after() {
    let e = env("retention_policy = RECOVERY WINDOW OF 1 DAYS\n", true);
    let b: Vec<String> = (0..4)
        .map(|_| {
            let id = e.backup();
            e.switch();
            id
        })
        .collect();
    // Nothing is older than the window yet.
    e.cron();
    assert_eq!(ids(&e.listed()), b);
    // b0 ended 3 days ago, b1 2 days ago: b1 is the newest before the window.
    for (id, days) in [(&b[0], 3), (&b[1], 2)] {
        let path = e.backup_json(id);
        let mut info: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for key in ["begin_time", "end_time"] {
            let t: chrono::DateTime<chrono::Utc> = s(&info[key]).parse().unwrap();
            info[key] = Value::String((t - chrono::Duration::days(days)).to_rfc3339());
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&info).unwrap()).unwrap();
    }
    e.cron();
    let listed = e.listed();
    assert_eq!(ids(&listed), &b[1..], "{listed:?}");
    let wal = e.archived();
    assert_eq!(wal.first(), Some(&e.begin_segno(&b[1])), "{wal:?}");
    e.pg.ok(&["check-backup", "pg1", &b[1]]);
}

#[test]
fn a_second_cron_exits_at_once_naming_the_first() {
    let pg = Pgbk::new();
    // No streaming: the pass has nothing to start, the lock is the point.
    pg.add_server(
        "pg1",
        "conninfo = host=127.0.0.1 port=1 dbname=postgres\nbackup_method = postgres\n",
    );
    let mut first = pg.spawn(&["cron", "--foreground"]);
    let lock = pg.home.join("cron.lock");
    let pid = first.pid().to_string();
    wait_until(
        Duration::from_secs(30),
        "the first cron to hold its lock",
        || std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == pid),
    );
    let t = Instant::now();
    let out = pg.run(&["cron"]);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&pid), "{out:?}");
    let json = pg.json(&["cron"]);
    assert_eq!(json[0]["action"], "skipped", "{json}");
    assert_eq!(first.term(), 0, "{}", first.log());
    // The lock is free again: a pass runs.
    let out = pg.run(&["cron"]);
    assert!(
        out.code == 0 && !out.stdout.contains("another cron"),
        "{out:?}"
    );
}

#[test]
fn cron_restarts_a_killed_receive_wal_and_no_wal_is_missing() {
    let e = env("", false);
    let guard = ReceiverGuard(e.pg.home.join("pg1/lock/receive-wal.lock"));
    let actions = e.cron();
    assert_eq!(actions[0]["action"], "receive-wal-started", "{actions}");
    wait_receive_wal(&e.cluster);
    // A second pass finds it running and starts nothing.
    let again = e.cron();
    assert!(again.as_array().unwrap().is_empty(), "{again}");
    e.backup();
    e.switch();

    let pid = guard.pid().expect("receive-wal pid");
    // SAFETY: kill(2) of the receiver's pid, read from its lock.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until(Duration::from_secs(30), "receive-wal to die", || {
        e.cluster
            .try_psql("select count(*) from pg_stat_replication")
            .is_ok_and(|s| s == "0")
    });
    // WAL written while nobody streams: the slot keeps it on the server.
    for _ in 0..3 {
        e.cluster
            .psql("insert into t select generate_series(1, 1000); select pg_switch_wal()");
    }
    let actions = e.cron();
    assert_eq!(actions[0]["action"], "receive-wal-started", "{actions}");
    assert_ne!(actions[0]["details"]["pid"], pid);
    wait_receive_wal(&e.cluster);
    e.switch();
    let wal = e.archived();
    assert_eq!(wal, (wal[0]..=*wal.last().unwrap()).collect::<Vec<_>>());
    e.pg.ok(&["check", "pg1"]);
    e.pg.ok(&["check-backup", "pg1", "latest"]);
    assert!(e.pg.home.join("pg1/receive-wal.log").exists());
}
