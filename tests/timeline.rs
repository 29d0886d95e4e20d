//! A streaming standby, configured as the pgbk server, is promoted while receive-wal
//! streams from it: the history file and the new timeline are archived, no gap.

mod common;
use common::{parse_segment_name, wait_until, Cluster, ClusterOptions, Pgbk};
use std::time::Duration;

#[test]
fn promotion_of_the_streamed_standby_is_followed() {
    let seg_size = 16 * 1024 * 1024;
    let primary = Cluster::new(ClusterOptions::default());
    primary.psql("create table t (id int, pad text)");
    let standby = primary.standby();
    let pg = Pgbk::new();
    pg.streaming_server("pg1", &standby);
    let mut rw = pg.start_receive_wal("pg1", &standby);
    for _ in 0..3 {
        primary.psql("insert into t select g, repeat('x', 500) from generate_series(1, 20000) g; select pg_switch_wal()");
    }
    primary.wait_for_catchup(&standby);
    let old_tli_last = standby.psql("select pg_last_wal_replay_lsn()");
    standby.promote();
    wait_until(Duration::from_secs(30), "standby to leave recovery", || {
        standby.psql("select pg_is_in_recovery()") == "f"
    });
    primary.stop("fast");
    for _ in 0..2 {
        standby.psql("insert into t select g, repeat('y', 500) from generate_series(1, 20000) g");
    }
    let out = pg.ok(&[
        "switch-wal",
        "--force",
        "--archive",
        "--archive-timeout",
        "60",
        "pg1",
    ]);
    assert!(
        out.contains("00000002"),
        "the switched segment is on timeline 2: {out}"
    );

    assert_eq!(
        pg.history_files("pg1"),
        vec!["00000002.history".to_string()]
    );
    let history = std::fs::read_to_string(pg.wals_dir("pg1").join("00000002.history")).unwrap();
    assert!(history.starts_with("1\t"), "{history}");
    let switch: Vec<&str> = history.split('\t').collect();
    let switch_lsn = switch[1];
    let (hi, lo) = switch_lsn.split_once('/').unwrap();
    let switch_segno = ((u64::from_str_radix(hi, 16).unwrap() << 32)
        | u64::from_str_radix(lo, 16).unwrap())
        / seg_size;

    let segs = pg.archived_segments("pg1");
    let parsed: Vec<(u32, u64)> = segs
        .iter()
        .map(|s| parse_segment_name(s, seg_size))
        .collect();
    let first = parsed.iter().map(|p| p.1).min().unwrap();
    let last = parsed.iter().map(|p| p.1).max().unwrap();
    assert!(
        parsed.iter().any(|p| p.0 == 2),
        "no timeline 2 segment archived: {segs:?}"
    );
    for segno in first..=last {
        let want_tli = if segno < switch_segno { 1 } else { 2 };
        assert!(
            parsed.contains(&(want_tli, segno)),
            "segment {segno:X} of timeline {want_tli} missing (switch at {switch_lsn}, old last {old_tli_last}): {segs:?}"
        );
    }
    // The new timeline's segments are the promoted server's own.
    for s in segs.iter().filter(|s| s.starts_with("00000002")) {
        let theirs = std::fs::read(standby.pg_wal().join(s)).unwrap();
        assert!(pg.decompress_segment("pg1", s) == theirs, "{s} differs");
    }
    let check = pg.run(&["check", "pg1"]);
    assert_eq!(check.code, 0, "check after promotion: {check:?}");
    assert!(
        check.stdout.contains("archived WAL continuity: OK"),
        "{check:?}"
    );
    assert!(rw.is_running(), "{}", rw.log());
    rw.term();
}
