//! Resuming interrupted backups (`backup --resume`):
//!
//! - on PostgreSQL 15, a full backup killed (SIGKILL) midway, one of the objects it
//!   stored then damaged: `--resume` is DONE under the same id, reuses what it
//!   stored (the objects untouched, `reused_bytes` in show-backup), stores the
//!   damaged file again, verifies, passes check-backup, and an incremental built on
//!   it (PostgreSQL 15's block maps) recovers exactly;
//!   `--resume` with nothing to resume is refused in one line;
//! - on PostgreSQL 17, an incremental backup killed midway resumes on the same
//!   parent, verifies, reports reused bytes and recovers exactly through its chain.

mod common;
use common::{pg_scratch_dir, BackgroundPgbk, Cluster, ClusterOptions, Pgbk};
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

fn backup_dir(pg: &Pgbk, id: &str) -> PathBuf {
    pg.home.join("pg1/backups").join(id)
}

/// The lines of a backup's `resume.jsonl` that parse.
fn journal(pg: &Pgbk, id: &str) -> Vec<Value> {
    std::fs::read_to_string(backup_dir(pg, id).join("resume.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Starts `args`, waits until its backup has journaled `files` stored files, and
/// kills it (SIGKILL) there; returns the backup's id.
fn kill_after_stored(pg: &Pgbk, args: &[&str], files: usize) -> String {
    let mut bg: BackgroundPgbk = pg.spawn(args);
    let id = pg.wait_backup_started("pg1", &mut bg);
    common::wait_until(
        Duration::from_secs(120),
        "the backup to store some files",
        || {
            assert!(bg.is_running(), "backup ended early\n{}", bg.log_tail(40));
            journal(pg, &id).len() >= files
        },
    );
    bg.kill9();
    id
}

/// Inode and modification time of each of `objects` of backup `id`.
fn object_stamps<'a>(
    pg: &Pgbk,
    id: &str,
    objects: impl Iterator<Item = &'a str>,
) -> HashMap<String, (u64, i64)> {
    objects
        .filter_map(|o| {
            let m = std::fs::metadata(backup_dir(pg, id).join(o)).ok()?;
            Some((
                o.to_string(),
                (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
            ))
        })
        .collect()
}

fn counts(c: &Cluster) -> String {
    c.psql(
        "select (select count(*) from marker), (select count(*) || '/' || sum(g) from t1), \
         (select count(*) || '/' || sum(g) from t2), (select count(*) || '/' || sum(g) from t3)",
    )
}

/// Recovers backup `id` to `target` and checks the recovered rows.
fn recover_and_compare(pg: &Pgbk, id: &str, target: &str, expected: &str, opts: ClusterOptions) {
    let dir = pg_scratch_dir("pgbk-resume-");
    let data = dir.path().join("data");
    let out = pg.json(&[
        "recover",
        "pg1",
        id,
        data.to_str().unwrap(),
        "--target-time",
        target,
        "--target-action",
        "promote",
    ]);
    assert_eq!(out["backup_id"], id, "{out}");
    let r = Cluster::from_datadir(dir, opts);
    r.wait_promoted();
    assert_eq!(counts(&r), expected, "{}", r.log_tail(40));
}

/// A marker row, the target time, a second marker the recovery must not reach;
/// returns the target and the counts at it.
fn mark_target(pg: &Pgbk, c: &Cluster) -> (String, String) {
    c.psql("insert into marker values (1)");
    let expected = counts(c);
    let target = c.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("insert into marker values (2)");
    pg.archive_now("pg1");
    (target, expected)
}

/// Tables of a few MiB each (every relation file an object of its own), frozen so
/// their pages do not change between the two runs.
fn load(c: &Cluster, tables: &[&str], rows: u32) {
    for t in tables {
        c.psql(&format!(
            "create table {t} as select g, md5(g::text) || md5((g+1)::text) as pad \
             from generate_series(1, {rows}) g"
        ));
    }
    // Only the new tables: a VACUUM truncating an older relation between a full and
    // an incremental backup is not what these tests are about.
    c.psql(&format!("vacuum freeze {}", tables.join(", ")));
    c.psql("checkpoint");
}

#[test]
fn a_full_backup_killed_midway_resumes_reusing_what_it_stored_and_recovers_exactly() {
    let c = Cluster::new(ClusterOptions::default());
    c.psql("create table marker (id int)");
    load(&c, &["t1", "t2", "t3"], 60000);
    let pg = Pgbk::new();
    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let _rw = pg.start_receive_wal("pg1", &c);

    let refused = pg.run(&["backup", "pg1", "--resume"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert_eq!(refused.error_lines().len(), 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("server 'pg1': nothing to resume"),
        "{}",
        refused.stderr
    );

    pg.streaming_server_with(
        "pg1",
        &c,
        "immediate_checkpoint = on\nbandwidth_limit = 4096\n",
    );
    let id = kill_after_stored(&pg, &["backup", "pg1"], 6);
    let stored = journal(&pg, &id);
    let info: Value =
        serde_json::from_slice(&std::fs::read(backup_dir(&pg, &id).join("backup.json")).unwrap())
            .unwrap();
    assert_eq!(info["status"], "STARTED", "{info}");

    // One object it stored damaged: that file is not reused.
    let stamps = object_stamps(&pg, &id, stored.iter().filter_map(|e| e["object"].as_str()));
    let damaged = stored[0]["object"].as_str().unwrap().to_string();
    let path = backup_dir(&pg, &id).join(&damaged);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();

    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let started = std::time::Instant::now();
    let out = pg.run(&["backup", "pg1", "--resume", "--format", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let resumed: Value = serde_json::from_str(&out.stdout).unwrap();
    eprintln!("resumed in {:?}", started.elapsed());
    assert_eq!(resumed["status"], "DONE", "{resumed}");
    assert_eq!(resumed["backup_id"], id.as_str(), "{resumed}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(&damaged) && l.contains("again")),
        "{}",
        out.stderr
    );
    let reused = resumed["reused_bytes"].as_u64().unwrap();
    let journaled: u64 = stored.iter().map(|e| e["size"].as_u64().unwrap()).sum();
    let damaged_size = stored[0]["size"].as_u64().unwrap();
    assert!(
        reused > 0 && reused <= journaled - damaged_size,
        "reused {reused}, journaled {journaled}: {resumed}"
    );
    // The reused objects were neither rewritten nor uploaded again.
    let after = object_stamps(&pg, &id, stamps.keys().map(String::as_str));
    let untouched = stamps
        .iter()
        .filter(|(o, s)| **o != damaged && after.get(*o) == Some(s))
        .count();
    assert!(untouched > 0, "{stamps:?} {after:?}");
    assert!(!backup_dir(&pg, &id).join("resume.jsonl").exists());

    let shown = pg.json(&["show-backup", "pg1", &id]);
    assert_eq!(shown["reused_bytes"], reused, "{shown}");
    let text = pg.ok(&["show-backup", "pg1", &id]);
    assert!(text.contains("Reused (resumed)"), "{text}");
    let verified = pg.json(&["verify-backup", "pg1", &id]);
    assert_eq!(verified["ok"], true, "{verified}");
    pg.ok(&["check-backup", "pg1", &id]);

    // Nothing left to resume.
    let again = pg.run(&["backup", "pg1", "--resume"]);
    assert_ne!(again.code, 0, "{again:?}");
    assert_eq!(again.error_lines().len(), 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("nothing to resume"),
        "{}",
        again.stderr
    );

    // The resumed backup's block map covers the reused files too: an incremental
    // (PostgreSQL 15 compares blocks itself) built on it stores little and its
    // chain recovers exactly.
    c.psql("update t2 set g = g + 1 where g <= 1000");
    let inc = pg.json(&["backup", "pg1", "--incremental"]);
    assert_eq!(inc["status"], "DONE", "{inc}");
    assert_eq!(inc["parent"], id.as_str(), "{inc}");
    let (full_bytes, inc_bytes) = (
        resumed["stored_bytes"].as_u64().unwrap(),
        inc["stored_bytes"].as_u64().unwrap(),
    );
    assert!(inc_bytes * 10 < full_bytes, "{inc_bytes} of {full_bytes}");
    let inc_id = inc["backup_id"].as_str().unwrap();
    let (target, expected) = mark_target(&pg, &c);
    recover_and_compare(&pg, inc_id, &target, &expected, ClusterOptions::default());
}

#[test]
fn an_incremental_killed_midway_resumes_on_its_parent_on_postgresql_17() {
    let opts = ClusterOptions {
        major: Some(17),
        extra_conf: vec!["summarize_wal = on".into()],
        ..Default::default()
    };
    let c = Cluster::new(opts.clone());
    c.psql("create table marker (id int)");
    load(&c, &["t1"], 30000);
    let pg = Pgbk::new();
    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let _rw = pg.start_receive_wal("pg1", &c);
    let full = pg.json(&["backup", "pg1"]);
    assert_eq!(full["status"], "DONE", "{full}");
    let full_id = full["backup_id"].as_str().unwrap().to_string();

    // New relations are sent whole by the incremental: objects of their own.
    load(&c, &["t2", "t3", "t4", "t5", "t6"], 30000);
    c.psql("update t1 set g = g + 1 where g <= 1000");
    c.psql("checkpoint");
    pg.streaming_server_with(
        "pg1",
        &c,
        "immediate_checkpoint = on\nbandwidth_limit = 1024\n",
    );
    let id = kill_after_stored(&pg, &["backup", "pg1", "--incremental"], 2);

    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let resumed = pg.json(&["backup", "pg1", "--resume"]);
    assert_eq!(resumed["status"], "DONE", "{resumed}");
    assert_eq!(resumed["backup_id"], id.as_str(), "{resumed}");
    assert_eq!(resumed["parent"], full_id.as_str(), "{resumed}");
    assert!(resumed["reused_bytes"].as_u64().unwrap() > 0, "{resumed}");
    let shown = pg.json(&["show-backup", "pg1", &id]);
    assert_eq!(shown["backup_type"], "incremental", "{shown}");
    assert_eq!(shown["reused_bytes"], resumed["reused_bytes"], "{shown}");
    let verified = pg.json(&["verify-backup", "pg1", &id]);
    assert_eq!(verified["ok"], true, "{verified}");
    pg.ok(&["check-backup", "pg1", &id]);

    let (target, expected) = mark_target(&pg, &c);
    recover_and_compare(&pg, &id, &target, &expected, opts);
}
