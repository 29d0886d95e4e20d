//! receive-wal's administrative paths: refusals with one-line errors, --stop when
//! idle, --reset while running (refused) and after a stop (streaming resumes from the
//! slot with no gap), a missing slot with create_slot = manual.

mod common;
use common::{Cluster, ClusterOptions, Pgbk};

#[test]
fn receive_wal_refusals_reset_and_manual_slot() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    let base = format!(
        "description = t\nconninfo = {}\nstreaming_conninfo = %(conninfo)s\nslot_name = pgbk\n",
        cluster.conninfo()
    );

    // streaming_archiver off: a usage error.
    pg.add_server("pg1", &base);
    let out = pg.run(&["receive-wal", "pg1"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.trim().lines().count() == 1 && out.stderr.contains("streaming_archiver"),
        "{out:?}"
    );

    // create_slot = manual and no slot: a one-line error, not a retry loop.
    pg.add_server(
        "pg1",
        &format!("{base}streaming_archiver = on\ncreate_slot = manual\n"),
    );
    let out = pg.run(&["receive-wal", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    let last = out.stderr.trim().lines().last().unwrap_or("").to_string();
    assert!(
        last.contains("server 'pg1'")
            && last.contains("does not exist")
            && last.contains("--create-slot"),
        "{out:?}"
    );

    // --stop with nothing running is fine.
    let out = pg.ok(&["receive-wal", "--stop", "pg1"]);
    assert!(out.contains("not running"), "{out}");
    let js = pg.json(&["receive-wal", "--stop", "pg1"]);
    assert_eq!(js["action"], "stop");
    assert_eq!(js["was_running"], false);

    pg.ok(&["receive-wal", "--create-slot", "pg1"]);
    let dup = pg.run(&["receive-wal", "--create-slot", "pg1"]);
    assert_eq!(dup.code, 1);
    assert!(dup.stderr.contains("already exists"), "{dup:?}");

    let mut rw = pg.start_receive_wal("pg1", &cluster);
    // --reset while it runs: refused, naming the pid.
    let out = pg.run(&["receive-wal", "--reset", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(&format!("pid {}", rw.pid())), "{out:?}");

    cluster.psql(
        "create table t as select g from generate_series(1, 100000) g; select pg_switch_wal()",
    );
    pg.ok(&["switch-wal", "--force", "--archive", "pg1"]);
    assert_eq!(rw.term(), 0);
    let out = pg.ok(&["receive-wal", "--reset", "pg1"]);
    assert!(out.contains("Reset"), "{out}");
    let partials = std::fs::read_dir(pg.streaming_dir("pg1"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .count();
    assert_eq!(partials, 0);

    // Writes while it is stopped are kept by the slot and streamed after the reset.
    cluster.psql("insert into t select g from generate_series(1, 100000) g");
    let mut rw = pg.start_receive_wal("pg1", &cluster);
    pg.ok(&["switch-wal", "--force", "--archive", "pg1"]);
    let check = pg.run(&["check", "pg1"]);
    assert_eq!(check.code, 0, "{check:?}");
    rw.term();

    // Dropping the slot while nothing streams works, and again is an error.
    pg.ok(&["receive-wal", "--drop-slot", "pg1"]);
    let again = pg.run(&["receive-wal", "--drop-slot", "pg1"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("does not exist"), "{again:?}");
}
