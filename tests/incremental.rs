//! Incremental backups on PostgreSQL 17 and 18 (`summarize_wal = on`, the parent's
//! `backup_manifest` uploaded, `BASE_BACKUP ... INCREMENTAL`) and on 15 and 16
//! (pgbk's block maps: every streamed block compared with the parent's checksum,
//! or only the changed blocks read over SQL),
//! on real servers from `.ci/install-pg-majors` and Debian's 15:
//!
//! - a full backup, then pgbench work plus an update of one contiguous 1% range
//!   of `pgbench_accounts`, an incremental backup; then a relation created, one
//!   truncated and one dropped, more work, a second incremental: each stores
//!   under 10% of the full's bytes;
//! - `recover` of the newest to a time between two marker rows rebuilds every
//!   relation file from the chain and gives exactly what was committed before it
//!   (locally with `--delta` over the full backup's copy on 17, through sshd with
//!   `--remote-ssh-command` on 18), and every
//!   btree index passes amcheck;
//! - `verify-backup` checks the whole chain, `show-backup` reports it; deleting a
//!   parent is refused; retention keeps a chain holding a kept incremental whole
//!   and removes a chain whole;
//! - on 15 and 16 the same chain recovers exactly, and the restored directory
//!   (with the chain's manifest) passes `pg_verifybackup`; a parent whose block
//!   map is gone is refused in one line;
//! - on 17 and 18, a VACUUM truncation then a re-extension in later WAL
//!   summaries, which the server's incremental can miss (it merges summaries in
//!   directory order): pgbk notices it and takes a block-map incremental that
//!   recovers exactly;
//! - on 15, `incremental_read = sql` (the default): each incremental reads under
//!   10% of the database over SQL (the blocks pgbk's WAL archive says changed),
//!   the chain recovers exactly; a tablespace is read and recovers relocated;
//!   without the grants, or with an archived WAL segment missing, the backup is
//!   streamed instead after a one-line notice and still recovers exactly;
//! - every recovered chain passes `pg_check_visible` (PostgreSQL 17/18's own
//!   incrementals can keep stale visibility map bits: pgbk leaves those maps out);
//! - refusals in one line: `summarize_wal = off`, nothing to build on;
//!   `incremental_fallback = full` takes a full backup instead.

mod common;
use common::{
    chown_to_postgres, pg_command, pg_scratch_dir, pg_verifybackup, run_checked, BackgroundPgbk,
    Cluster, ClusterOptions, Pgbk, Sshd,
};
use serde_json::Value;
use std::fs;
use std::time::Duration;

fn options(major: u32) -> ClusterOptions {
    ClusterOptions {
        major: Some(major),
        extra_conf: if major >= 17 {
            vec!["summarize_wal = on".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// `pgbench -n -t <n> -c 2`: a fixed amount of TPC-B work, so that the change
/// between two backups stays a small share of the database whatever the speed.
fn pgbench_transactions(c: &Cluster, n: u32) {
    let mut cmd = pg_command("pgbench");
    cmd.args(["-n", "-t", &n.to_string(), "-c", "2", "-j", "2"])
        .args(["-h", c.socket_dir.to_str().unwrap()])
        .args(["-p", &c.port.to_string(), "-U", "postgres", "postgres"]);
    run_checked(&mut cmd, || c.log_tail(20));
}

/// What a recovery to the target must give back.
fn facts(c: &Cluster) -> String {
    c.psql(
        "select (select count(*) from marker), \
                (select sum(abalance) from pgbench_accounts), \
                (select count(*) from pgbench_history), \
                (select count(*) from created_between), \
                (select count(*) from truncated_between), \
                (select count(*) from pg_class where relname = 'dropped_between'), \
                (select count(*) || '/' || sum(g) from shrinks)",
    )
}

fn shrink_and_grow(c: &Cluster, round: u32) {
    c.psql("delete from shrinks where g > 5000");
    c.psql("vacuum shrinks");
    c.psql(&format!(
        "insert into shrinks select g from generate_series({0} * 100000, {0} * 100000 + 20000) g",
        round
    ));
}

struct Chain {
    c: Cluster,
    pg: Pgbk,
    _rw: BackgroundPgbk,
    full: Value,
    inc1: Value,
    inc2: Value,
    /// A time between the two marker rows.
    target: String,
    /// [`facts`] at the target.
    expected: String,
}

fn id(b: &Value) -> &str {
    b["backup_id"].as_str().unwrap()
}

fn build_chain(major: u32, extra_conf: &str) -> Chain {
    let c = Cluster::new(options(major));
    c.pgbench_init(10);
    c.psql(
        "create table marker (id int); \
         create table truncated_between as select g from generate_series(1, 20000) g; \
         create table dropped_between as select g from generate_series(1, 20000) g; \
         create table shrinks as select g from generate_series(1, 40000) g;",
    );
    let pg = Pgbk::new();
    pg.streaming_server_with(
        "pg1",
        &c,
        &format!("immediate_checkpoint = on\n{extra_conf}"),
    );
    let rw = pg.start_receive_wal("pg1", &c);

    let full = pg.json(&["backup", "pg1"]);
    assert_eq!(full["status"], "DONE", "{full}");
    assert!(full.get("parent").is_none(), "{full}");

    pgbench_transactions(&c, 150);
    // VACUUM truncates the file, then new rows extend it again: the incremental
    // holds blocks past its truncation length.
    shrink_and_grow(&c, 1);
    c.psql(
        "update pgbench_accounts set abalance = abalance + 7 where aid between 500001 and 510000",
    );
    let inc1 = pg.json(&["backup", "pg1", "--incremental"]);
    assert_eq!(inc1["status"], "DONE", "{inc1}");
    assert_eq!(inc1["parent"], id(&full), "{inc1}");

    c.psql("create table created_between as select g from generate_series(1, 30000) g");
    c.psql("truncate truncated_between");
    c.psql("drop table dropped_between");
    shrink_and_grow(&c, 2);
    pgbench_transactions(&c, 150);
    let inc2 = pg.json(&["backup", "pg1", "--incremental", id(&inc1)]);
    assert_eq!(inc2["status"], "DONE", "{inc2}");
    assert_eq!(inc2["parent"], id(&inc1), "{inc2}");

    let full_bytes = full["stored_bytes"].as_u64().unwrap();
    for inc in [&inc1, &inc2] {
        let stored = inc["stored_bytes"].as_u64().unwrap();
        assert!(
            stored * 10 < full_bytes,
            "incremental {} stored {stored} bytes, the full {full_bytes}: not under 10%",
            id(inc)
        );
    }

    // Replayed WAL: a first marker, the target time, then work the recovery must
    // not reach.
    pgbench_transactions(&c, 50);
    c.psql("insert into marker values (1)");
    let expected = facts(&c);
    let target = c.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("insert into marker values (2)");
    pgbench_transactions(&c, 50);
    pg.archive_now("pg1");
    Chain {
        c,
        pg,
        _rw: rw,
        full,
        inc1,
        inc2,
        target,
        expected,
    }
}

/// `verify-backup` re-reads the newest incremental's whole chain (its two
/// ancestors listed) and `check-backup` passes.
fn verify_chain(pg: &Pgbk, ch: &Chain) {
    let verified = pg.json(&["verify-backup", "pg1", id(&ch.inc2)]);
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["chain"].as_array().unwrap().len(), 2, "{verified}");
    pg.ok(&["check-backup", "pg1", id(&ch.inc2)]);
}

/// `recover pg1 latest DATA --target-time <the target> --target-action promote`
/// and `extra`: the chain's newest incremental is the backup restored.
fn recover_to_target(ch: &Chain, data: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "recover",
        "pg1",
        "latest",
        data.to_str().unwrap(),
        "--target-time",
        &ch.target,
        "--target-action",
        "promote",
    ];
    args.extend_from_slice(extra);
    let out = ch.pg.json(&args);
    assert_eq!(out["backup_id"], id(&ch.inc2), "{out}");
    out
}

/// Starts the recovered copy, waits for the end of recovery, and checks its rows
/// and every btree index.
fn check_recovered(ch: &Chain, dir: tempfile::TempDir, major: u32) {
    let r = Cluster::from_datadir(dir, options(major));
    r.wait_promoted();
    assert_eq!(facts(&r), ch.expected, "{}", r.log_tail(40));
    assert_ne!(
        facts(&ch.c),
        ch.expected,
        "the source moved on after the target"
    );
    r.psql("create extension amcheck");
    let checked = r.psql(
        "select count(bt_index_check(c.oid, true)) from pg_index i \
         join pg_class c on c.oid = i.indexrelid join pg_am a on a.oid = c.relam \
         where a.amname = 'btree' and c.relpersistence = 'p'",
    );
    assert!(checked.parse::<u32>().unwrap() > 10, "{checked}");
    // Every page of every table reads back (checksums are verified on 18).
    r.psql("select count(*) from pgbench_accounts where filler is not null");
    // No page the visibility map calls all-visible holds a tuple that is not:
    // the map's bits are cleared without WAL of their own.
    r.psql("create extension pg_visibility");
    let wrong = r.psql(
        "select count(*) from pg_class c, pg_check_visible(c.oid) \
         where c.relkind = 'r' and c.relpersistence = 'p'",
    );
    assert_eq!(
        wrong,
        "0",
        "tuples not all-visible on all-visible pages: {}",
        r.psql(
            "select string_agg(relname || ':' || n, ' ') from (select c.relname, count(*) n \
             from pg_class c, pg_check_visible(c.oid) where c.relkind = 'r' \
             and c.relpersistence = 'p' group by 1) x"
        )
    );
}

#[test]
fn an_incremental_chain_on_postgresql_17_recovers_exactly_and_retention_keeps_chains_whole() {
    let ch = build_chain(17, "retention_policy = REDUNDANCY 1\n");
    let pg = &ch.pg;

    let shown = pg.json(&["show-backup", "pg1", id(&ch.inc2)]);
    assert_eq!(shown["backup_type"], "incremental", "{shown}");
    let chain: Vec<&str> = shown["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(chain, [id(&ch.full), id(&ch.inc1), id(&ch.inc2)], "{shown}");
    let total: u64 = [&ch.full, &ch.inc1, &ch.inc2]
        .iter()
        .map(|b| b["stored_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(shown["chain_stored_bytes"], total, "{shown}");
    let text = pg.ok(&["show-backup", "pg1", id(&ch.inc2)]);
    assert!(
        text.contains("Backup Type            : incremental"),
        "{text}"
    );
    let list = pg.ok(&["list-backups", "pg1"]);
    assert!(
        list.contains(&format!("INCREMENTAL:{}", id(&ch.inc1))),
        "{list}"
    );

    verify_chain(pg, &ch);

    // The full backup first, then the chain with --delta over it: every rebuilt
    // file is written (its checksum is only known source by source), the rest is
    // compared.
    let dir = pg_scratch_dir("pgbk-inc-");
    let data = dir.path().join("data");
    pg.ok(&["recover", "pg1", id(&ch.full), data.to_str().unwrap()]);
    let out = recover_to_target(&ch, &data, &["--delta"]);
    assert!(out["files"]["files_skipped"].as_u64().unwrap() > 0, "{out}");
    let label = fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(!label.contains("INCREMENTAL"), "{label}");
    assert!(!data.join("backup_manifest").exists());
    let incremental_files = walk(&data)
        .into_iter()
        .filter(|p| p.contains("INCREMENTAL."))
        .collect::<Vec<_>>();
    assert!(incremental_files.is_empty(), "{incremental_files:?}");
    check_recovered(&ch, dir, 17);

    // A parent is not deleted while a backup is built on it, forced or not.
    let refused = pg.run(&["delete", "pg1", id(&ch.inc1), "--force"]);
    assert_ne!(refused.code, 0);
    assert_eq!(refused.error_lines().len(), 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(id(&ch.inc2)) && refused.stderr.contains("parent"),
        "{}",
        refused.stderr
    );

    // A kept incremental holds its chain against REDUNDANCY 1; released, the
    // chain goes whole, newest first.
    pg.ok(&["keep", "pg1", id(&ch.inc1), "--target", "standalone"]);
    let new_full = pg.json(&["backup", "pg1"]);
    assert!(new_full.get("parent").is_none(), "{new_full}");
    pg.ok(&["cron"]);
    let ids = backup_ids(pg);
    assert_eq!(ids.len(), 4, "{ids:?}");
    pg.ok(&["keep", "pg1", id(&ch.inc1), "--release"]);
    pg.ok(&["cron"]);
    assert_eq!(backup_ids(pg), [id(&new_full).to_string()]);

    // With summarize_wal off, an incremental is refused in one line.
    ch.c.psql("alter system set summarize_wal = off");
    ch.c.reload();
    let off = pg.run(&["backup", "pg1", "--incremental"]);
    assert_eq!(off.code, 2, "{}", off.stderr);
    assert_eq!(off.error_lines().len(), 1, "{}", off.stderr);
    assert!(off.stderr.contains("summarize_wal = on"), "{}", off.stderr);
    assert_eq!(backup_ids(pg).len(), 1);
}

#[test]
fn an_incremental_chain_on_postgresql_18_recovers_through_sshd() {
    let sshd = Sshd::start();
    let ch = build_chain(18, "");
    let dir = pg_scratch_dir("pgbk-inc-");
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    chown_to_postgres(&data, false);
    let out = recover_to_target(
        &ch,
        &data,
        &["--remote-ssh-command", &sshd.ssh_command("postgres")],
    );
    assert_eq!(out["manifest"], false, "{out}");
    let label = fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(!label.contains("INCREMENTAL"), "{label}");
    check_recovered(&ch, dir, 18);
}

/// A PostgreSQL 15/16 chain: verified, recovered with its manifest (locally on
/// 15, through sshd on 16), `pg_verifybackup` passes, and the rows are exact.
fn block_map_chain(major: u32) {
    let sshd = (major != 15).then(Sshd::start);
    let ch = build_chain(major, "incremental_read = stream");
    for inc in [&ch.inc1, &ch.inc2] {
        assert!(inc.get("sql_read_bytes").is_none(), "{inc}");
    }
    let pg = &ch.pg;
    for b in [&ch.full, &ch.inc1, &ch.inc2] {
        assert!(b["block_map"].is_string(), "{b}");
    }
    verify_chain(pg, &ch);

    let dir = pg_scratch_dir("pgbk-inc-");
    let data = dir.path().join("data");
    let remote = sshd.as_ref().map(|s| s.ssh_command("postgres"));
    let out = match &remote {
        Some(ssh) => {
            fs::create_dir(&data).unwrap();
            chown_to_postgres(&data, false);
            recover_to_target(&ch, &data, &["--remote-ssh-command", ssh])
        }
        None => recover_to_target(&ch, &data, &[]),
    };
    assert_eq!(out["manifest"], true, "{out}");
    let incremental_files = walk(&data)
        .into_iter()
        .filter(|p| p.contains("INCREMENTAL."))
        .collect::<Vec<_>>();
    assert!(incremental_files.is_empty(), "{incremental_files:?}");
    // Every rebuilt file is what the server sent for the newest backup.
    pg_verifybackup(&data, &["pgbk_wal"]);
    check_recovered(&ch, dir, major);

    // A parent whose block map is gone: refused in one line, nothing recorded.
    fs::remove_file(
        pg.home
            .join("pg1/backups")
            .join(id(&ch.inc2))
            .join("blocks.map"),
    )
    .unwrap();
    let before = backup_ids(pg).len();
    let out = pg.run(&["backup", "pg1", "--incremental"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.error_lines().len(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("block map") && out.stderr.contains(id(&ch.inc2)),
        "{}",
        out.stderr
    );
    assert_eq!(backup_ids(pg).len(), before);
}

#[test]
fn a_block_map_chain_on_postgresql_15_recovers_exactly_and_passes_pg_verifybackup() {
    block_map_chain(15);
}

#[test]
fn a_block_map_chain_on_postgresql_16_recovers_through_sshd() {
    block_map_chain(16);
}

/// PostgreSQL 15 with `incremental_read = sql` (the default) and a superuser:
/// each incremental reads under 10% of the database over SQL (only the blocks
/// the WAL archive says changed, and the small files whole), the relation
/// created, the one truncated and the one dropped between the backups come back
/// right, and the chain recovers exactly.
#[test]
fn a_chain_read_over_sql_on_postgresql_15_reads_under_10_percent_and_recovers_exactly() {
    sql_chain(15);
}

/// The same on PostgreSQL 16 (its WAL decoded by pgbk, its files read over SQL).
#[test]
fn a_chain_read_over_sql_on_postgresql_16_reads_under_10_percent_and_recovers_exactly() {
    sql_chain(16);
}

fn sql_chain(major: u32) {
    let ch = build_chain(major, "");
    let pg = &ch.pg;
    let db: u64 =
        ch.c.psql("select pg_database_size('postgres')")
            .parse()
            .unwrap();
    for inc in [&ch.inc1, &ch.inc2] {
        let read = inc["sql_read_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("not read over SQL: {inc}"));
        assert!(
            read > 0 && read * 10 < db,
            "incremental {} read {read} bytes of a {db}-byte database",
            id(inc)
        );
        assert!(inc["block_map"].is_string(), "{inc}");
    }
    let shown = pg.ok(&["show-backup", "pg1", id(&ch.inc2)]);
    assert!(shown.contains("Read over SQL"), "{shown}");
    verify_chain(pg, &ch);
    let dir = pg_scratch_dir("pgbk-inc-");
    let data = dir.path().join("data");
    recover_to_target(&ch, &data, &[]);
    check_recovered(&ch, dir, major);
}

/// The SQL path falls back to streaming, with a one-line notice, when the role
/// lacks the grants and when a WAL segment between the parent and the new
/// backup is missing from the repository (the change map cannot be trusted):
/// both backups are DONE. A role with just the documented grants (not a
/// superuser) then reads over SQL, and that newest backup recovers exactly.
#[test]
fn the_sql_path_falls_back_without_grants_or_with_a_wal_segment_missing_and_works_with_the_documented_grants(
) {
    let c = Cluster::new(options(15));
    c.pgbench_init(5);
    c.psql(
        "create role nogrant login replication; \
         grant execute on function pg_switch_wal() to nogrant; grant pg_checkpoint to nogrant; \
         create table marker (id int)",
    );
    let pg = Pgbk::new();
    let server = |user: &str| {
        let conninfo = c
            .conninfo()
            .replace("user=postgres", &format!("user={user}"));
        pg.add_server(
            "pg1",
            &format!(
                "conninfo = {conninfo}\n\
                 streaming_conninfo = {}\n\
                 backup_method = postgres\n\
                 streaming_archiver = on\n\
                 slot_name = pgbk\n\
                 create_slot = auto\n\
                 immediate_checkpoint = on\n",
                c.conninfo()
            ),
        );
    };
    server("nogrant");
    let _rw = pg.start_receive_wal("pg1", &c);
    let full = pg.json(&["backup", "pg1"]);
    assert_eq!(full["status"], "DONE", "{full}");
    let notices = |stderr: &str| {
        stderr
            .lines()
            .filter(|l| l.contains("not reading over SQL"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };

    pgbench_transactions(&c, 100);
    let out = pg.run(&["backup", "pg1", "--incremental", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let inc1: Value = serde_json::from_str(&out.stdout).unwrap();
    let said = notices(&out.stderr);
    assert_eq!(said.len(), 1, "{}", out.stderr);
    assert!(
        said[0].contains("nogrant") && said[0].contains("pg_read_binary_file"),
        "{said:?}"
    );
    assert_eq!(inc1["status"], "DONE", "{inc1}");
    assert_eq!(inc1["parent"], id(&full), "{inc1}");
    assert!(inc1.get("sql_read_bytes").is_none(), "{inc1}");

    // The grants the documentation gives, but a segment written after inc1
    // began is gone.
    c.psql(
        "grant execute on function pg_backup_start(text, boolean), pg_backup_stop(boolean), \
           pg_ls_dir(text, boolean, boolean), pg_stat_file(text, boolean), \
           pg_read_binary_file(text, bigint, bigint, boolean) to nogrant",
    );
    let begin = inc1["begin_wal"].as_str().unwrap().to_string();
    for _ in 0..3 {
        pgbench_transactions(&c, 30);
        pg.archive_now("pg1");
    }
    let gone = pg
        .archived_segments("pg1")
        .into_iter()
        .find(|s| *s > begin)
        .expect("a segment after the incremental's start");
    let wals = pg.wals_dir("pg1");
    let file = walk(&wals).into_iter().find(|p| p.contains(&gone)).unwrap();
    fs::remove_file(&file).unwrap();
    c.psql("update pgbench_accounts set abalance = abalance + 3 where aid <= 5000");
    let out = pg.run(&["backup", "pg1", "--incremental", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let inc2: Value = serde_json::from_str(&out.stdout).unwrap();
    let said = notices(&out.stderr);
    assert_eq!(said.len(), 1, "{}", out.stderr);
    assert!(
        said[0].contains(&gone) && said[0].contains("not in the repository"),
        "{said:?}"
    );
    assert_eq!(inc2["status"], "DONE", "{inc2}");
    assert_eq!(inc2["parent"], id(&inc1), "{inc2}");
    assert!(inc2.get("sql_read_bytes").is_none(), "{inc2}");

    // With the grants and the whole WAL, the role reads over SQL.
    c.psql("update pgbench_accounts set abalance = abalance + 5 where aid > 495000");
    let out = pg.run(&["backup", "pg1", "--incremental", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(notices(&out.stderr).is_empty(), "{}", out.stderr);
    let inc3: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(inc3["parent"], id(&inc2), "{inc3}");
    assert!(inc3["sql_read_bytes"].as_u64().is_some(), "{inc3}");

    c.psql("insert into marker values (1)");
    let expected = c.psql(
        "select (select sum(abalance) from pgbench_accounts), \
                (select count(*) from pgbench_history), (select count(*) from marker)",
    );
    pg.archive_now("pg1");
    let r = recover_immediate(&pg, id(&inc3), 15, |_, _| {});
    let at_backup = r.psql(
        "select (select sum(abalance) from pgbench_accounts), \
                (select count(*) from pgbench_history), (select count(*) from marker)",
    );
    // --target-immediate: everything up to the backup's end, not the marker.
    assert_eq!(
        at_backup.rsplit_once('|').map(|x| x.0),
        expected.rsplit_once('|').map(|x| x.0),
        "{}",
        r.log_tail(30)
    );
}

/// PostgreSQL 15, SQL path, a tablespace: its files are listed and read under
/// `pg_tblspc/<oid>/` (only the changed blocks of a table in it, a table created
/// in it whole), stored as BASE_BACKUP would send them (`<oid>.tar`, the link in
/// base.tar), and the chain recovers with the tablespace relocated.
#[test]
fn an_incremental_read_over_sql_takes_a_tablespace_that_recovers_relocated() {
    let c = Cluster::new(options(15));
    let ts = pg_scratch_dir("pgbk-ts-");
    let loc = ts.path().join("loc");
    fs::create_dir(&loc).unwrap();
    chown_to_postgres(&loc, false);
    c.psql(&format!(
        "create tablespace tbs location '{}'",
        loc.display()
    ));
    c.psql(
        "create table in_ts tablespace tbs as \
           select g as id, repeat('x', 200) as pad from generate_series(1, 50000) g",
    );
    let pg = Pgbk::new();
    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let _rw = pg.start_receive_wal("pg1", &c);
    let full = pg.json(&["backup", "pg1"]);
    assert_eq!(full["status"], "DONE", "{full}");
    c.psql("update in_ts set id = id + 100000 where id <= 500");
    c.psql("create table new_in_ts tablespace tbs as select g from generate_series(1, 3000) g");
    let inc = pg.json(&["backup", "pg1", "--incremental"]);
    assert_eq!(inc["status"], "DONE", "{inc}");
    assert_eq!(inc["parent"], id(&full), "{inc}");
    let read = inc["sql_read_bytes"].as_u64().expect("read over SQL");
    let in_ts: u64 = c.psql("select pg_relation_size('in_ts')").parse().unwrap();
    assert!(read < in_ts / 2, "read {read} bytes, in_ts is {in_ts}");
    assert_eq!(
        inc["tablespaces"][0]["location"],
        loc.to_str().unwrap(),
        "{inc}"
    );
    let facts = "select (select sum(id) from in_ts), (select count(*) from new_in_ts)";
    let expected = c.psql(facts);
    pg.archive_now("pg1");

    let dir = pg_scratch_dir("pgbk-inc-");
    let data = dir.path().join("data");
    let moved = dir.path().join("ts");
    pg.json(&[
        "recover",
        "pg1",
        id(&inc),
        data.to_str().unwrap(),
        "--target-immediate",
        "--target-action",
        "promote",
        "--tablespace",
        &format!("tbs:{}", moved.display()),
    ]);
    let oid = c.psql("select oid from pg_tablespace where spcname = 'tbs'");
    assert_eq!(
        fs::read_link(data.join("pg_tblspc").join(&oid)).unwrap(),
        moved
    );
    let r = Cluster::from_datadir(dir, options(15));
    r.wait_promoted();
    assert_eq!(r.psql(facts), expected, "{}", r.log_tail(30));
}

#[test]
fn incremental_refusals_and_the_full_fallback() {
    // PostgreSQL 15: nothing to build on yet.
    let c = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let rw = pg.start_receive_wal("pg1", &c);
    let out = pg.run(&["backup", "pg1", "--incremental"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(out.error_lines().len(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("take a full backup first"),
        "{}",
        out.stderr
    );
    assert!(backup_ids(&pg).is_empty());
    // backup_type = incremental: a full backup first, with a notice, then
    // incrementals built on it.
    pg.streaming_server_with(
        "pg1",
        &c,
        "immediate_checkpoint = on\nbackup_type = incremental\n",
    );
    let check = pg.run(&["check", "pg1"]);
    assert!(
        check.stdout.contains("incremental backups: OK"),
        "{}",
        check.stdout
    );
    let out = pg.run(&["backup", "pg1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("taking a full backup"),
        "{}",
        out.stderr
    );
    let full = backup_ids(&pg);
    assert_eq!(full.len(), 1);
    let next = pg.json(&["backup", "pg1"]);
    assert_eq!(next["status"], "DONE", "{next}");
    assert_eq!(next["parent"], full[0].as_str(), "{next}");
    drop(rw);

    // PostgreSQL 17: nothing to build on yet.
    let c17 = Cluster::new(options(17));
    let pg17 = Pgbk::new();
    pg17.streaming_server_with("pg1", &c17, "immediate_checkpoint = on\n");
    let rw17 = pg17.start_receive_wal("pg1", &c17);
    let out = pg17.run(&["backup", "pg1", "--incremental"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("take a full backup first"),
        "{}",
        out.stderr
    );
    let out = pg17.run(&["backup", "pg1", "--incremental", "nosuchbackup"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no backup 'nosuchbackup'"),
        "{}",
        out.stderr
    );
    drop(rw17);
}

/// Recovers pg1's `backup` up to its end (`--target-immediate`), lets `check` look
/// at recover's JSON and the data directory before it starts, then starts it and
/// waits for the promotion.
fn recover_immediate(
    pg: &Pgbk,
    backup: &str,
    major: u32,
    check: impl FnOnce(&Value, &std::path::Path),
) -> Cluster {
    let dir = pg_scratch_dir("pgbk-inc-");
    let data = dir.path().join("data");
    let out = pg.json(&[
        "recover",
        "pg1",
        backup,
        data.to_str().unwrap(),
        "--target-immediate",
        "--target-action",
        "promote",
    ]);
    assert_eq!(out["backup_id"], backup, "{out}");
    check(&out, &data);
    let r = Cluster::from_datadir(dir, options(major));
    r.wait_promoted();
    r
}

fn backup_ids(pg: &Pgbk) -> Vec<String> {
    pg.json(&["list-backups", "pg1"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap().to_string())
        .collect()
}

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// A chain in a real 3-volume SeaweedFS bucket: the incremental stores a small
/// share of the full, the catalog rebuilt from the bucket alone brings the parent
/// links back, and the chain recovers from the bucket with every row.
#[test]
fn an_incremental_chain_in_a_bucket_rebuilds_its_links_and_recovers() {
    chain_in_a_bucket(17);
}

/// On 15 the parent's block map comes from the bucket too.
#[test]
fn a_block_map_chain_in_a_bucket_rebuilds_its_links_and_recovers() {
    chain_in_a_bucket(15);
}

fn chain_in_a_bucket(major: u32) {
    let sw = common::seaweed::SeaweedFs::start();
    let c = Cluster::new(options(major));
    c.pgbench_init(2);
    c.psql("create table shrinks as select g from generate_series(1, 40000) g");
    c.psql("create table marker (id int)");
    let pg = Pgbk::new();
    pg.streaming_server_with(
        "pg1",
        &c,
        &format!("immediate_checkpoint = on\n{}", sw.server_conf("chain")),
    );
    let mut rw = pg.start_receive_wal("pg1", &c);
    let full = pg.json(&["backup", "pg1"]);
    assert_eq!(full["status"], "DONE", "{full}");
    shrink_and_grow(&c, 1);
    pgbench_transactions(&c, 100);
    let inc = pg.json(&["backup", "pg1", "--incremental"]);
    assert_eq!(inc["parent"], id(&full), "{inc}");
    assert!(
        inc["stored_bytes"].as_u64().unwrap() * 4 < full["stored_bytes"].as_u64().unwrap(),
        "{inc} against {full}"
    );
    c.psql("insert into marker values (1)");
    let expected = c.psql(
        "select (select count(*) || '/' || sum(g) from shrinks), \
                (select sum(abalance) from pgbench_accounts), (select count(*) from marker)",
    );
    pg.archive_now("pg1");
    rw.term();

    // The home is lost: the catalog comes back from the bucket, parent included.
    fs::remove_dir_all(&pg.home).unwrap();
    pg.json(&["rebuild-catalog", "pg1"]);
    let shown = pg.json(&["show-backup", "pg1", id(&inc)]);
    assert_eq!(shown["parent"], id(&full), "{shown}");
    assert_eq!(shown["chain"].as_array().unwrap().len(), 2, "{shown}");
    let verified = pg.json(&["verify-backup", "pg1", id(&inc)]);
    assert_eq!(verified["ok"], true, "{verified}");

    // PostgreSQL 15 reads the incremental over SQL (the default), its WAL map
    // from the bucket: no BASE_BACKUP, no manifest.
    let over_sql = major < 17;
    assert_eq!(inc["sql_read_bytes"].is_u64(), over_sql, "{inc}");
    let r = recover_immediate(&pg, id(&inc), major, |out, data| {
        assert_eq!(out["manifest"], major < 17 && !over_sql, "{out}");
        if major < 17 && !over_sql {
            // Copy mode: the WAL recovery needs is in pgbk_wal/.
            pg_verifybackup(data, &["pgbk_wal"]);
        }
    });
    // --target-immediate stops at the incremental's end: everything up to it.
    let at_backup = r.psql(
        "select (select count(*) || '/' || sum(g) from shrinks), \
                (select sum(abalance) from pgbench_accounts), (select count(*) from marker)",
    );
    assert_eq!(
        at_backup.rsplit('|').next(),
        Some("0"),
        "the marker came after the backup"
    );
    assert_eq!(
        at_backup.split('|').next(),
        expected.split('|').next(),
        "{}",
        r.log_tail(30)
    );
}

/// A passive copy in another region gets the chain whole (parent links
/// included) from `replicate`, and recovers it.
#[test]
fn replicate_copies_a_chain_that_recovers_on_the_passive_side() {
    use common::peer::{add_passive_server, replicate};
    let sshd = Sshd::start();
    let c = Cluster::new(options(17));
    c.pgbench_init(1);
    c.psql("create table marker (id int)");
    let a = Pgbk::new();
    a.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let rw = a.start_receive_wal("pg1", &c);
    let full = a.json(&["backup", "pg1"]);
    pgbench_transactions(&c, 100);
    c.psql("insert into marker values (1)");
    let inc = a.json(&["backup", "pg1", "--incremental"]);
    assert_eq!(inc["parent"], id(&full), "{inc}");
    let expected =
        c.psql("select sum(abalance), (select count(*) from marker) from pgbench_accounts");
    a.archive_now("pg1");

    let b = Pgbk::new();
    add_passive_server(&b, "pg1", &sshd, &a, "");
    let report = replicate(&b, "pg1");
    assert_eq!(
        report["backups_copied"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    let shown = b.json(&["show-backup", "pg1", id(&inc)]);
    assert_eq!(shown["status"], "DONE", "{shown}");
    assert_eq!(shown["parent"], id(&full), "{shown}");
    let verified = b.json(&["verify-backup", "pg1", id(&inc)]);
    assert_eq!(verified["ok"], true, "{verified}");

    let r = recover_immediate(&b, id(&inc), 17, |_, _| {});
    assert_eq!(
        r.psql("select sum(abalance), (select count(*) from marker) from pgbench_accounts"),
        expected,
        "{}",
        r.log_tail(30)
    );
    drop(rw);
}

/// `X/Y` as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Start LSNs of the WAL summaries in the order PostgreSQL's `GetWalSummaries`
/// lists them: the directory's own (readdir) order, which `read_dir` gives too.
fn summaries_in_directory_order(c: &Cluster) -> Vec<u64> {
    fs::read_dir(c.pg_wal().join("summaries"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let hex = name.strip_suffix(".summary").filter(|h| h.len() == 40)?;
            Some(u64::from_str_radix(&hex[8..24], 16).unwrap())
        })
        .collect()
}

/// A checkpoint, then waits until the WAL summarizer has written the summary
/// that ends at its redo point: a summary boundary.
fn summary_boundary(c: &Cluster) {
    c.psql("checkpoint");
    let redo = lsn(&c.psql("select redo_lsn from pg_control_checkpoint()"));
    for _ in 0..600 {
        let end = c.psql("select coalesce(max(end_lsn), '0/0') from pg_available_wal_summaries()");
        if lsn(&end) >= redo {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the WAL summarizer did not reach {redo:X}");
}

/// PostgreSQL 17's `PrepareForIncrementalBackup` merges the summaries in
/// directory order, each one's limit block first and its modified blocks after:
/// an older summary's truncation read after a newer summary's re-extension
/// forgets the re-extended blocks, and the server's INCREMENTAL file lacks them.
/// The scenario: a full backup, a VACUUM truncating `t1`, then summaries each
/// extending it again, until one of them comes before the truncation's in the
/// directory; the incremental must still recover exactly.
fn truncation_then_reextension(major: u32) {
    let c = Cluster::new(ClusterOptions {
        extra_conf: vec!["summarize_wal = on".into(), "autovacuum = off".into()],
        ..options(major)
    });
    c.psql(
        "create table t1 as select g, md5(g::text) || md5((g + 1)::text) as pad \
         from generate_series(1, 30000) g; vacuum freeze t1",
    );
    let pg = Pgbk::new();
    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let mut rw = pg.start_receive_wal("pg1", &c);
    let full = pg.json(&["backup", "pg1"]);
    assert_eq!(full["status"], "DONE", "{full}");
    assert!(full["block_map"].is_string(), "{full}");
    let filenode = c.psql("select pg_relation_filenode('t1')");

    // Nothing reads t1 until the backup: a hint bit's full-page image in a later
    // summary would mark the lost blocks again and hide the bug.
    let mut hazard = false;
    'cycles: for cycle in 0..4u32 {
        c.psql(&format!(
            "delete from t1 where g > {}; vacuum t1",
            25000 - cycle * 2000
        ));
        summary_boundary(&c);
        let truncated = c.psql(&format!(
            "select s.start_lsn from pg_available_wal_summaries() s, \
             pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) w \
             where w.relfilenode = {filenode} and w.relforknumber = 0 and w.is_limit_block \
             and w.relblocknumber > 0 order by s.start_lsn desc limit 1"
        ));
        assert!(!truncated.is_empty(), "VACUUM did not truncate t1");
        let truncated = lsn(&truncated);
        for round in 0..24u32 {
            let from = 1_000_000 * (cycle + 1) + 1000 * round;
            c.psql(&format!(
                "insert into t1 select g, md5(g::text) || md5((g + 1)::text) \
                 from generate_series({from}, {from} + 999) g"
            ));
            summary_boundary(&c);
            let order = summaries_in_directory_order(&c);
            let at = order.iter().position(|s| *s == truncated).unwrap();
            if order[..at].iter().any(|s| *s > truncated) {
                hazard = true;
                break 'cycles;
            }
        }
    }
    assert!(
        hazard,
        "no summary came before the truncation's in the directory"
    );

    // pgbk reads the pattern in the summaries and compares every block with the
    // full backup's block map instead, saying so in one line.
    let out = pg.run(&["backup", "pg1", "--incremental", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let notice: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("block-map incremental"))
        .collect();
    assert_eq!(notice.len(), 1, "{}", out.stderr);
    assert!(
        notice[0].contains(&format!("/{filenode} (t1)")) && notice[0].contains("truncate"),
        "{}",
        notice[0]
    );
    let inc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(inc["status"], "DONE", "{inc}");
    assert_eq!(inc["parent"], id(&full), "{inc}");
    assert_eq!(inc["incremental_method"], "block_map", "{inc}");
    assert!(
        inc["stored_bytes"].as_u64().unwrap() * 4 < full["stored_bytes"].as_u64().unwrap(),
        "{inc} against {full}"
    );
    let verified = pg.json(&["verify-backup", "pg1", id(&inc)]);
    assert_eq!(verified["ok"], true, "{verified}");
    let facts = "select count(*) || '/' || sum(g) from t1";
    let expected = c.psql(facts);
    pg.archive_now("pg1");
    rw.term();

    let r = recover_immediate(&pg, id(&inc), major, |_, _| {});
    assert_eq!(r.psql(facts), expected, "{}", r.log_tail(30));
}

#[test]
fn an_incremental_after_a_truncation_and_a_reextension_recovers_exactly_on_postgresql_17() {
    truncation_then_reextension(17);
}

#[test]
fn an_incremental_after_a_truncation_and_a_reextension_recovers_exactly_on_postgresql_18() {
    truncation_then_reextension(18);
}
