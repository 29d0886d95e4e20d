//! Proves the integration-test harness itself (`tests/common/`), not pgbk: if one
//! of these fails, every other integration test's failure is suspect.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{
    free_port, parse_segment_name, segment_name, wait_until, Auth, Cluster, ClusterOptions,
    WAL_SEG_SIZE,
};

#[test]
fn cluster_starts_and_answers_select_1() {
    let pg = Cluster::new(ClusterOptions::default());
    assert_eq!(pg.psql("select 1"), "1");
    // Several statements, one result line each, no command tags.
    assert_eq!(
        pg.psql("create table t(i int); insert into t values (1), (2); select i from t order by i; select 'a', 'b'"),
        "1\n2\na|b"
    );
    assert!(pg.try_psql("select * from no_such_table").is_err());
    assert_eq!(pg.psql("show wal_level"), "replica");
    assert_eq!(pg.psql("show wal_keep_size"), "2GB");
    assert_eq!(pg.psql("show fsync"), "on");
    assert_eq!(pg.psql("show port"), pg.port.to_string());
    assert_eq!(
        pg.system_id(),
        pg.psql("select system_identifier from pg_control_system()")
    );
    assert!(pg.pg_wal().join(pg.current_wal_file()).exists());
    assert!(pg
        .log()
        .contains("database system is ready to accept connections"));

    pg.restart("fast");
    assert_eq!(pg.psql("select count(*) from t"), "2");
    pg.stop("immediate");
    assert!(!pg.is_running());
    pg.start();
    assert_eq!(pg.psql("select count(*) from t"), "2");

    let (root, port) = (pg.root.clone(), pg.port);
    drop(pg);
    if !common::keep_dirs() {
        assert!(!root.exists(), "{} left behind", root.display());
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server still listening after drop"
    );
}

#[test]
fn cluster_starts_on_a_copied_data_directory() {
    let pg = Cluster::new(ClusterOptions::default());
    pg.psql("create table t as select generate_series(1, 1000) i");
    // As `pgbk recover` would: files written by us (root in CI), not by postgres.
    let dir = common::scratch_dir("pgbk-restore-");
    let out = std::process::Command::new(format!("{}/pg_basebackup", common::PG_BIN))
        .arg("-D")
        .arg(dir.path().join("data"))
        .args(["-X", "stream", "-c", "fast", "-d", &pg.conninfo()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let copy = Cluster::from_datadir(dir, ClusterOptions::default());
    assert_ne!(copy.port, pg.port);
    assert_eq!(copy.psql("select pg_is_in_recovery()"), "f");
    assert_eq!(copy.psql("select sum(i) from t"), "500500");
    assert_eq!(copy.system_id(), pg.system_id());
}

#[test]
fn parallel_clusters_get_different_ports() {
    let threads: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                let pg = Cluster::new(ClusterOptions::default());
                assert_eq!(pg.psql("select 1"), "1");
                pg
            })
        })
        .collect();
    let clusters: Vec<Cluster> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ports: HashSet<u16> = clusters.iter().map(|c| c.port).collect();
    assert_eq!(ports.len(), clusters.len(), "ports collide: {ports:?}");
    let ids: HashSet<String> = clusters.iter().map(|c| c.system_id()).collect();
    assert_eq!(ids.len(), clusters.len());
}

#[test]
fn free_port_never_repeats() {
    let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
    let distinct: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len());
}

#[test]
fn standby_streams_from_primary() {
    let primary = Cluster::new(ClusterOptions::default());
    primary.psql("create table t(v text)");
    let standby = primary.standby();
    assert_ne!(standby.port, primary.port);
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");
    assert_eq!(standby.system_id(), primary.system_id());

    primary.psql("insert into t values ('streamed')");
    wait_until(
        Duration::from_secs(60),
        "the row to reach the standby",
        || standby.psql("select count(*) from t where v = 'streamed'") == "1",
    );
    assert_eq!(
        primary.psql("select count(*) from pg_stat_replication where state = 'streaming'"),
        "1"
    );

    primary.psql("insert into t values ('more')");
    primary.wait_for_catchup(&standby);
    assert_eq!(standby.psql("select count(*) from t"), "2");

    standby.promote();
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "f");
    assert!(standby.current_wal_file().starts_with("00000002"));
}

#[test]
fn pgbench_produces_transactions() {
    let pg = Cluster::new(ClusterOptions::default());
    pg.pgbench_init(1);
    assert_eq!(pg.psql("select count(*) from pgbench_accounts"), "100000");
    let before = pg.psql("select pg_current_wal_lsn()");
    let transactions = pg.pgbench_wait(3, 2);
    assert!(transactions > 0, "pgbench ran no transaction");
    assert_eq!(
        pg.psql(&format!("select pg_current_wal_lsn() > '{before}'::pg_lsn")),
        "t"
    );

    let mut load = pg.pgbench(1, 2);
    let status = load.wait().unwrap();
    assert!(status.success(), "background pgbench failed: {status}");
    assert!(
        pg.psql("select count(*) from pgbench_history")
            .parse::<u64>()
            .unwrap()
            > transactions
    );
}

#[test]
fn scram_cluster_requires_the_password_over_tcp() {
    let pg = Cluster::new(ClusterOptions {
        auth: Auth::Scram,
        wal_segsize_mb: Some(1),
        extra_conf: vec!["work_mem = '5MB'".into()],
        ..ClusterOptions::default()
    });
    assert_eq!(pg.psql("show password_encryption"), "scram-sha-256");
    assert_eq!(pg.psql("show wal_segment_size"), "1MB");
    assert_eq!(pg.psql("show work_mem"), "5MB");
    assert!(pg.conninfo().contains("password="));
    assert!(pg
        .psql("select rolpassword from pg_authid where rolname = 'postgres'")
        .starts_with("SCRAM-SHA-256$"));

    let tcp = |conninfo: &str| {
        common::pg_command("psql")
            .args(["-X", "-At", "-w", "-c", "select 1", "-d", conninfo])
            .output()
            .unwrap()
    };
    let with_password = tcp(&pg.conninfo());
    assert!(with_password.status.success(), "{with_password:?}");
    let without = tcp(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        pg.port
    ));
    assert!(
        !without.status.success(),
        "connected over TCP without a password"
    );

    // A standby of a SCRAM cluster authenticates with the password too.
    let standby = pg.standby();
    assert_eq!(standby.psql("show wal_segment_size"), "1MB");
}

#[test]
fn segment_names_round_trip() {
    assert_eq!(segment_name(1, 0, WAL_SEG_SIZE), "000000010000000000000000");
    assert_eq!(
        segment_name(1, 0x1FF, WAL_SEG_SIZE),
        "0000000100000001000000FF"
    );
    assert_eq!(
        segment_name(0x2A, 256, WAL_SEG_SIZE),
        "0000002A0000000100000000"
    );
    // 1 MiB segments: 4096 per xlogid.
    assert_eq!(segment_name(3, 4097, 1 << 20), "000000030000000100000001");
    for seg_size in [1u64 << 20, WAL_SEG_SIZE, 1 << 30] {
        for segno in [0u64, 1, 255, 256, 4095, 4096, 123_456_789] {
            for tli in [1u32, 2, 0xFFFF_FFFF] {
                let name = segment_name(tli, segno, seg_size);
                assert_eq!(parse_segment_name(&name, seg_size), (tli, segno), "{name}");
            }
        }
    }
}
