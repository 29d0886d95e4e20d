//! A backup taken from a hot standby while WAL streams from the primary, as a
//! Barman server file says it: `conninfo` and `streaming_conninfo` name the
//! standby, `primary_conninfo` and `wal_streaming_conninfo` the primary. Under
//! pgbench load on the primary, the backup (BASE_BACKUP on the standby, the WAL
//! switch on the primary) ends DONE, its backup_label says it came from a standby,
//! and a point-in-time recovery gives exactly the rows committed before the target.
//! A `primary_conninfo` naming another cluster is refused in one line, and a
//! standby promoted in the middle of a backup makes it FAILED with the reason.

mod common;
use common::{pg_scratch_dir, Cluster, ClusterOptions, Pgbk};
use std::fs;
use std::time::Duration;

fn server_file(standby: &Cluster, primary: &Cluster) -> String {
    format!(
        "conninfo = {}\n\
         streaming_conninfo = %(conninfo)s\n\
         primary_conninfo = {}\n\
         wal_streaming_conninfo = {}\n\
         backup_method = postgres\n\
         streaming_archiver = on\n\
         slot_name = pgbk\n\
         create_slot = auto\n\
         immediate_checkpoint = on\n",
        standby.conninfo(),
        primary.conninfo(),
        primary.conninfo()
    )
}

#[test]
fn a_backup_from_a_standby_under_load_on_the_primary_recovers_exactly() {
    let primary = Cluster::new(ClusterOptions::default());
    primary.pgbench_init(5);
    primary.psql("create table marker (id int)");
    let standby = primary.standby();
    let pg = Pgbk::new();
    pg.add_server("pg1", &server_file(&standby, &primary));
    let rw = pg.start_receive_wal("pg1", &primary);

    let check = pg.run(&["check", "pg1"]);
    for line in [
        "backup source (conninfo): OK",
        "primary (primary_conninfo): OK",
        "replication slot: OK",
    ] {
        assert!(check.stdout.contains(line), "{line}: {}", check.stdout);
    }
    let mut load = primary.pgbench(30, 2);
    let info = pg.json(&["backup", "pg1"]);
    assert_eq!(info["status"], "DONE", "{info}");
    assert_eq!(info["system_id"], primary.system_id(), "{info}");
    let _ = load.kill();
    let _ = load.wait();

    primary.psql("insert into marker values (1)");
    let history = primary.psql("select count(*) from pgbench_history");
    let target = primary.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    primary.psql("insert into marker values (2)");
    pg.archive_now("pg1");

    let dir = pg_scratch_dir("pgbk-sb-");
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
    assert_eq!(out["backup_id"], info["backup_id"], "{out}");
    let label = fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(label.contains("BACKUP FROM: standby"), "{label}");
    let r = Cluster::from_datadir(dir, ClusterOptions::default());
    r.wait_promoted();
    assert_eq!(r.psql("select string_agg(id::text, ',') from marker"), "1");
    assert_eq!(
        r.psql("select count(*) from pgbench_history"),
        history,
        "{}",
        r.log_tail(40)
    );

    // primary_conninfo naming another cluster: refused in one line, nothing taken.
    let other = Cluster::new(ClusterOptions::default());
    pg.add_server("pg1", &server_file(&standby, &other));
    let out = pg.run(&["backup", "pg1"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.error_lines().len(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("another cluster"), "{}", out.stderr);
    let check = pg.run(&["check", "pg1"]);
    assert!(
        check.stdout.contains("primary (primary_conninfo): FAILED"),
        "{}",
        check.stdout
    );
    let list = pg.json(&["list-backups", "pg1"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    drop(rw);
}

#[test]
fn a_standby_promoted_during_the_backup_fails_it_with_the_reason() {
    let primary = Cluster::new(ClusterOptions::default());
    primary.pgbench_init(2);
    let standby = primary.standby();
    let pg = Pgbk::new();
    // MAX_RATE keeps BASE_BACKUP on the standby busy for several seconds.
    pg.add_server(
        "pg1",
        &format!(
            "{}bandwidth_limit = 4096\n",
            server_file(&standby, &primary)
        ),
    );
    let _rw = pg.start_receive_wal("pg1", &primary);
    let mut backup = pg.spawn(&["backup", "pg1"]);
    common::wait_until(
        Duration::from_secs(60),
        "the backup to start copying",
        || {
            let list = pg.json(&["list-backups", "pg1"]);
            list.as_array()
                .and_then(|l| l.first())
                .is_some_and(|b| b["status"] == "STARTED" && b["begin_lsn"].is_string())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    standby.promote();
    let code = backup.wait_timeout(Duration::from_secs(120));
    assert_eq!(code, Some(1), "{}", backup.log_tail(20));
    let list = pg.json(&["list-backups", "pg1"]);
    let b = &list[0];
    assert_eq!(b["status"], "FAILED", "{list}");
    assert!(
        b["error"].as_str().unwrap_or_default().contains("promoted"),
        "{list}"
    );
}
