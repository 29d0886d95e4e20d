//! pgbk's basic path on every PostgreSQL major after Debian's 15 (16, 17 and 18,
//! real servers from `.ci/install-pg-majors`; the 15 tests are everywhere else):
//! receive-wal streams, `backup` ends DONE with the server's version and system
//! identifier, `verify-backup` passes, and `recover --target-time` between two
//! marker rows, started with the same major's binaries, gives exactly the rows
//! committed before the target. A major that is not installed fails the test,
//! telling to run `.ci/install-pg-majors`.
//!
//! The harness's own support for the majors is proven here too: a hot standby of
//! a cluster of every major (Debian's 15 pg_basebackup refuses 16+, so the harness
//! copies the data directory between pg_backup_start and pg_backup_stop there)
//! streams, and a missing major fails naming the installer.

mod common;
use common::{pg_scratch_dir, Cluster, ClusterOptions, Pgbk};
use std::time::Duration;

#[test]
fn backup_and_point_in_time_recover_on_postgresql_16() {
    backup_and_point_in_time_recover(16);
}

#[test]
fn backup_and_point_in_time_recover_on_postgresql_17() {
    backup_and_point_in_time_recover(17);
}

#[test]
fn backup_and_point_in_time_recover_on_postgresql_18() {
    backup_and_point_in_time_recover(18);
}

fn backup_and_point_in_time_recover(major: u32) {
    let opts = ClusterOptions {
        major: Some(major),
        ..Default::default()
    };
    let c = Cluster::new(opts.clone());
    let version: u32 = c.psql("show server_version_num").parse().unwrap();
    assert_eq!(version / 10000, major, "the server runs the wrong binaries");
    c.psql("create table marker (id int, note text)");
    c.pgbench_init(1);
    let pg = Pgbk::new();
    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let rw = pg.start_receive_wal("pg1", &c);

    c.psql("insert into marker values (0, 'before the backup')");
    let info = pg.json(&["backup", "pg1"]);
    assert_eq!(info["status"], "DONE", "{info}");
    assert_eq!(info["system_id"], c.system_id(), "{info}");
    let id = info["backup_id"].as_str().unwrap().to_string();

    // Replayed WAL: pgbench work after the backup, a first marker, the target
    // time, then work the recovery must not reach.
    c.pgbench_wait(2, 2);
    c.psql("insert into marker values (1, 'first')");
    let history = history_count(&c);
    let target = c.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("insert into marker values (2, 'second')");
    c.pgbench_wait(1, 2);
    pg.archive_now("pg1");
    assert!(history_count(&c) > history);

    let verified = pg.json(&["verify-backup", "pg1", &id]);
    assert_eq!(verified["ok"], true, "{verified}");
    let shown = pg.json(&["show-backup", "pg1", &id]);
    assert_eq!(shown["status"], "DONE", "{shown}");
    assert_eq!(shown["server_version"], version, "{shown}");
    assert_eq!(shown["wal"]["present"], true, "{shown}");

    let dir = pg_scratch_dir("pgbk-rec-");
    let data = dir.path().join("data");
    let out = pg.json(&[
        "recover",
        "pg1",
        "latest",
        data.to_str().unwrap(),
        "--target-time",
        &target,
        "--target-action",
        "promote",
    ]);
    assert_eq!(out["backup_id"], id.as_str(), "{out}");
    assert_eq!(
        std::fs::read_to_string(data.join("PG_VERSION"))
            .unwrap()
            .trim(),
        major.to_string()
    );
    let r = Cluster::from_datadir(dir, opts);
    r.wait_promoted();
    let recovered: u32 = r.psql("show server_version_num").parse().unwrap();
    assert_eq!(recovered, version);
    assert_eq!(r.system_id(), c.system_id());
    assert_eq!(
        r.psql("select string_agg(note, ',' order by id) from marker"),
        "before the backup,first",
        "{}",
        r.log_tail(40)
    );
    assert_eq!(history_count(&r), history, "{}", r.log_tail(40));
    drop(rw);
}

fn history_count(c: &Cluster) -> u64 {
    c.psql("select count(*) from pgbench_history")
        .parse()
        .unwrap()
}

/// A hot standby of a cluster of each major ([`Cluster::standby`], with that major's
/// binaries) replays what its primary commits; `system_id` answers on both, and on
/// a stopped 15 cluster (pg_controldata).
#[test]
fn a_standby_streams_from_its_primary_on_every_major() {
    let threads: Vec<_> = common::MAJORS
        .iter()
        .map(|&major| {
            std::thread::spawn(move || {
                let primary = Cluster::new(ClusterOptions {
                    major: Some(major),
                    ..Default::default()
                });
                primary.psql("create table t (v text); insert into t values ('before')");
                let standby = primary.standby();
                assert_eq!(standby.major(), major);
                let version: u32 = standby.psql("show server_version_num").parse().unwrap();
                assert_eq!(version / 10000, major);
                assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");
                assert_eq!(standby.system_id(), primary.system_id());
                primary.psql("insert into t values ('streamed')");
                primary.wait_for_catchup(&standby);
                assert_eq!(
                    standby.psql("select string_agg(v, ',' order by v) from t"),
                    "before,streamed"
                );
                if major == common::DEBIAN_MAJOR {
                    let id = primary.system_id();
                    primary.stop("fast");
                    assert_eq!(primary.system_id(), id);
                }
            })
        })
        .collect();
    for (t, major) in threads.into_iter().zip(common::MAJORS) {
        if t.join().is_err() {
            panic!("the standby of a PostgreSQL {major} cluster failed (its panic is above)");
        }
    }
}

/// A major whose binaries are not there fails (never skips) the test, telling to
/// run `.ci/install-pg-majors`.
#[test]
fn a_major_not_installed_fails_naming_the_installer() {
    for &major in common::MAJORS {
        assert!(
            common::pg_major_available(major),
            "PostgreSQL {major} is not installed: run `.ci/install-pg-majors`"
        );
    }
    assert!(!common::pg_major_available(99));
    let err = std::panic::catch_unwind(|| {
        Cluster::new(ClusterOptions {
            major: Some(99),
            ..Default::default()
        })
    })
    .err()
    .expect("a cluster of PostgreSQL 99");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("PostgreSQL 99") && msg.contains(".ci/install-pg-majors"),
        "{msg}"
    );
}
