//! `recover` and `get-wal` on real PostgreSQL 15 clusters: what a DBA needs from a
//! restore.
//!
//! - point in time: a time between two marker rows gives the first marker, not the
//!   second, and exactly the pgbench_history rows committed before it; so do a
//!   transaction id, an LSN and a restore point; `--target-immediate` gives the
//!   backup's own state; `auto` picks the backup;
//! - `--get-wal` replays every archived segment, `--partial` reaches the last
//!   streamed row; `pg_verifybackup -n` accepts the restored directory;
//! - `--delta` over an older, started copy (files changed, extras added) equals a
//!   fresh recovery file by file, tablespace included, and writes less;
//! - every refusal leaves the destination as it was.

mod common;
use common::source::StreamingSource;
use common::{
    chown_to_postgres, pg_scratch_dir, pg_verifybackup, postgres_user, wait_until, Cluster,
    ClusterOptions, Output, Pgbk,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// A source cluster with pgbench tables, pgbk streaming its WAL.
fn source() -> StreamingSource {
    StreamingSource::start(1)
}

/// `pgbk recover … --format json`, panicking with its output unless it succeeds.
fn recover(pg: &Pgbk, args: &[&str]) -> Value {
    let mut all = vec!["recover"];
    all.extend_from_slice(args);
    pg.json(&all)
}

/// A fresh scratch folder whose `data/` is the recovery destination.
fn destination() -> (TempDir, PathBuf) {
    let dir = pg_scratch_dir("pgbk-rec-");
    let data = dir.path().join("data");
    (dir, data)
}

/// Starts a recovered data directory on a new port and waits until recovery ended
/// (the server promoted).
fn start_recovered(dir: TempDir) -> Cluster {
    let c = Cluster::from_datadir(dir, ClusterOptions::default());
    wait_until(Duration::from_secs(60), "recovery to end", || {
        c.try_psql("select pg_is_in_recovery()")
            .is_ok_and(|s| s == "f")
    });
    c
}

fn markers(c: &Cluster) -> String {
    c.psql("select coalesce(string_agg(note, ',' order by id), '') from marker")
}

fn history_count(c: &Cluster) -> u64 {
    c.psql("select count(*) from pgbench_history")
        .parse()
        .unwrap()
}

#[test]
fn point_in_time_recovery_by_time_xid_lsn_name_and_immediate() {
    let src = source();
    let c = &src.cluster;
    c.psql("create table marker (id int, note text)");
    let at_backup = src.history_count();
    let backup = src.backup();
    c.pgbench_wait(3, 2);
    let xid = c.psql("insert into marker values (1, 'first') returning txid_current()");
    let count = src.history_count();
    let lsn = c.psql("select pg_current_wal_lsn()");
    let time = c.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("select pg_create_restore_point('after_first')");
    c.pgbench_wait(2, 2);
    c.psql("insert into marker values (2, 'second')");
    c.pgbench_wait(1, 2);
    src.archive_now();
    assert!(src.history_count() > count);

    let cases: [(&str, Vec<&str>); 4] = [
        ("time", vec!["auto", "--target-time", &time]),
        ("xid", vec![&backup, "--target-xid", &xid]),
        ("lsn", vec!["latest", "--target-lsn", &lsn]),
        ("name", vec![&backup, "--target-name", "after_first"]),
    ];
    for (what, args) in cases {
        let (dir, data) = destination();
        let mut all = vec!["pg1", args[0], data.to_str().unwrap()];
        all.extend_from_slice(&args[1..]);
        all.extend(["--target-action", "promote"]);
        let out = recover(&src.pg, &all);
        assert_eq!(out["backup_id"], backup.as_str(), "{what}: {out}");
        assert!(out["wal_files"].as_u64().unwrap() >= 2, "{what}: {out}");
        let r = start_recovered(dir);
        assert_eq!(markers(&r), "first", "{what}\n{}", r.log_tail(30));
        assert_eq!(history_count(&r), count, "{what}\n{}", r.log_tail(30));
    }

    let (dir, data) = destination();
    recover(
        &src.pg,
        &[
            "pg1",
            "latest",
            data.to_str().unwrap(),
            "--target-immediate",
            "--target-action",
            "promote",
        ],
    );
    let r = start_recovered(dir);
    assert_eq!(markers(&r), "", "{}", r.log_tail(30));
    assert_eq!(history_count(&r), at_backup);
    drop(src.rw);
}

#[test]
fn get_wal_replays_all_archived_wal_and_partial_reaches_the_last_streamed_row() {
    let mut src = source();
    let c = &src.cluster;
    c.psql("create table marker (id int, note text)");
    src.backup();
    c.pgbench_wait(3, 2);
    c.psql("insert into marker values (1, 'archived')");
    let archived_count = src.history_count();
    src.archive_now();
    // Committed after the last switch: only receive-wal's .partial holds it.
    c.psql("insert into marker values (2, 'streamed')");
    let lsn = c.psql("select pg_current_wal_lsn()");
    wait_until(
        Duration::from_secs(30),
        "receive-wal to flush the row",
        || {
            c.psql(&format!(
                "select coalesce(bool_or(flush_lsn >= '{lsn}'), false) from pg_stat_replication \
             where application_name = 'pgbk_receive_wal'"
            )) == "t"
        },
    );
    assert_eq!(src.rw.term(), 0);
    let pg = &src.pg;
    // PostgreSQL runs restore_command (`pgbk get-wal`) as the postgres OS user: give
    // it the repository (receive-wal is stopped, nothing else writes there now).
    chown_to_postgres(&pg.home, true);

    // get-wal on its own: a segment as plain zstd gives it, a missing one is exit 1.
    let segs = pg.archived_segments("pg1");
    let first = &segs[0];
    let out_dir = pg_scratch_dir("pgbk-getwal-");
    let out = out_dir.path().join("seg");
    pg.ok(&["get-wal", "pg1", first, "--output", out.to_str().unwrap()]);
    assert!(fs::read(&out).unwrap() == pg.decompress_segment("pg1", first));
    let stdout = pg.cmd().args(["get-wal", "pg1", first]).output().unwrap();
    assert!(stdout.status.success());
    assert!(stdout.stdout == pg.decompress_segment("pg1", first));
    let missing = pg.run(&["get-wal", "pg1", "0000000100000000000000FF"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert_eq!(missing_line(&missing).lines().count(), 1, "{missing:?}");
    assert!(missing.stderr.contains("not in the archive"), "{missing:?}");
    let bad = pg.run(&["get-wal", "pg1", "../../etc/passwd"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    // --prefetch spools the next segments in the background; the next get-wal is
    // served from the spool, which it empties.
    pg.ok(&[
        "get-wal",
        "pg1",
        first,
        "--output",
        out.to_str().unwrap(),
        "--prefetch",
        "2",
    ]);
    let spool = pg.home.join("pg1/spool");
    let second = &segs[1];
    let prefetched: Vec<&String> = segs[1..].iter().take(2).collect();
    wait_until(Duration::from_secs(30), "the prefetch", || {
        prefetched.iter().all(|s| spool.join(s).exists())
    });
    pg.ok(&["get-wal", "pg1", second, "--output", out.to_str().unwrap()]);
    assert!(fs::read(&out).unwrap() == pg.decompress_segment("pg1", second));
    assert!(!spool.join(second).exists());
    chown_to_postgres(&pg.home, true);

    // Every archived segment replayed: the archived row, not the streamed one.
    let (dir, data) = destination();
    let js = recover(pg, &["pg1", "latest", data.to_str().unwrap(), "--get-wal"]);
    assert_eq!(js["wal_files"], 0, "{js}");
    let restore_command = js["settings"]["restore_command"].as_str().unwrap();
    assert!(
        restore_command.contains(" get-wal pg1 %f --output %p"),
        "{js}"
    );
    assert!(restore_command.starts_with('/'), "{js}");
    pg_verifybackup(&data, &[]);
    let r = start_recovered(dir);
    assert_eq!(markers(&r), "archived", "{}", r.log_tail(40));
    assert_eq!(history_count(&r), archived_count);
    drop(r);

    // With --partial, recovery also reads receive-wal's in-progress segment.
    let (dir, data) = destination();
    recover(
        pg,
        &[
            "pg1",
            "latest",
            data.to_str().unwrap(),
            "--get-wal",
            "--partial",
        ],
    );
    let r = start_recovered(dir);
    assert_eq!(markers(&r), "archived,streamed", "{}", r.log_tail(40));
}

/// Item 0 of the fixes issue: an archived segment after the backup's end with one
/// byte flipped, or cut short, must stop recovery with FATAL and a message naming
/// it (get-wal exits 200), never be served (PostgreSQL then ended redo early and
/// promoted with a fraction of the rows) nor reported as "not archived" (exit 1,
/// which also made PostgreSQL promote). The same through `--prefetch`'s spool.
#[test]
fn damaged_archived_wal_stops_recovery_instead_of_promoting_early() {
    let mut src = source();
    let c = &src.cluster;
    c.psql("create table marker (id int, note text)");
    src.backup();
    c.pgbench_wait(2, 2);
    src.archive_now();
    c.psql("insert into marker values (1, 'after')");
    c.pgbench_wait(1, 2);
    src.archive_now();
    assert_eq!(src.rw.term(), 0);
    let pg = &src.pg;
    chown_to_postgres(&pg.home, true);
    let segs = pg.archived_segments("pg1");
    let victim = segs.last().unwrap().clone();
    let object = pg
        .wals_dir("pg1")
        .join(&victim[..16])
        .join(format!("{victim}.zst"));
    let good = fs::read(&object).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 3] ^= 0x10;
    let truncated = good[..good.len() * 2 / 3].to_vec();

    for (what, bytes, prefetch) in [
        ("flipped byte", flipped, false),
        ("truncated", truncated.clone(), false),
        ("truncated, prefetched", truncated, true),
    ] {
        fs::write(&object, &bytes).unwrap();
        // get-wal on its own: exit 200, one line naming the object, nothing written.
        let out_dir = pg_scratch_dir("pgbk-getwal-");
        let out = out_dir.path().join("seg");
        let r = pg.run(&["get-wal", "pg1", &victim, "--output", out.to_str().unwrap()]);
        assert_eq!(r.code, 200, "{what}: {r:?}");
        let line = missing_line(&r);
        assert_eq!(line.lines().count(), 1, "{what}: {r:?}");
        assert!(
            line.contains(&victim) && line.contains("damaged"),
            "{what}: {line}"
        );
        assert!(!out.exists(), "{what}: nothing delivered");
        let r = pg.run(&["get-wal", "pg1", &victim]);
        assert_eq!(r.code, 200, "{what}: stdout: {r:?}");
        assert!(r.stdout.is_empty(), "{what}: no byte on stdout");

        let (dir, data) = destination();
        recover(pg, &["pg1", "latest", data.to_str().unwrap(), "--get-wal"]);
        if prefetch {
            let auto = data.join("postgresql.auto.conf");
            let conf = fs::read_to_string(&auto).unwrap();
            let conf = conf.replace("--output %p", "--output %p --prefetch 3");
            assert!(conf.contains("--prefetch 3"), "{conf}");
            fs::write(&auto, conf).unwrap();
        }
        // pg_ctl may see the server up (consistent, read-only) before replay reaches
        // the damaged segment: wait for recovery's end either way.
        let (r, _) = Cluster::try_from_datadir(dir, ClusterOptions::default());
        wait_until(Duration::from_secs(60), "recovery to stop", || {
            let log = r.log();
            log.contains("exit code 200") || log.contains("selected new timeline")
        });
        wait_until(Duration::from_secs(30), "the server to exit", || {
            !r.is_running()
        });
        let log = r.log();
        assert!(
            log.contains(&format!("could not restore file \"{victim}\" from archive"))
                && log.contains("exit code 200"),
            "{what}\n{log}"
        );
        assert!(
            log.contains(&victim) && log.contains("is damaged"),
            "{what}: pgbk's line in the log\n{log}"
        );
        assert!(
            !log.contains("selected new timeline"),
            "{what}: promoted\n{log}"
        );
        if prefetch {
            let spool = pg.home.join("pg1/spool");
            assert!(!spool.join(&victim).exists(), "{what}: spooled");
        }
    }
    // check names the damaged segment.
    let r = pg.run(&["check", "pg1"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("archived WAL integrity: FAILED") && r.stdout.contains(&victim),
        "{r:?}"
    );
    // Repaired, the same recovery replays it and promotes with every row.
    fs::write(&object, &good).unwrap();
    // Item 7: a delivery to a pipe closed after 10 bytes did not deliver the file:
    // non-zero, where listing verbs stay quiet on a broken pipe.
    let mut child = pg
        .cmd()
        .args(["get-wal", "pg1", &victim])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "get-wal | head -c 10 exited 0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not delivered whole"), "{err}");
    let (dir, data) = destination();
    recover(pg, &["pg1", "latest", data.to_str().unwrap(), "--get-wal"]);
    let r = start_recovered(dir);
    assert_eq!(markers(&r), "after", "{}", r.log_tail(40));
}

/// Item 6 of the fixes issue: Ctrl-C in the middle of a recovery said nothing and
/// left a folder with `backup_label` and no `recovery.signal`, which PostgreSQL would
/// start on as if it were a data directory. Now: a line saying what is left, a
/// non-zero exit, no `global/pg_control` (so PostgreSQL refuses), a marker a later
/// recover without `--delta` refuses on, and `--delta` finishing the job.
#[test]
fn an_interrupted_recovery_says_so_and_leaves_nothing_postgresql_would_start_on() {
    let mut src = source();
    src.cluster.psql("create table marker (id int, note text)");
    src.cluster
        .psql("insert into marker values (1, 'in backup')");
    src.backup();
    src.archive_now();
    assert_eq!(src.rw.term(), 0);
    let pg = &mut src.pg;
    pg.set_env("PGBK_TEST_RECOVER_THROTTLE_MS", "20");
    let (dir, data) = destination();
    let marker = data.join("pgbk_recover.incomplete");
    let mut rec = pg.spawn(&[
        "recover",
        "pg1",
        "latest",
        data.to_str().unwrap(),
        "-j",
        "2",
    ]);
    wait_until(Duration::from_secs(30), "the recovery to start", || {
        marker.exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own running child.
    unsafe {
        libc::kill(rec.pid() as libc::pid_t, libc::SIGINT);
    }
    let code = rec
        .wait_timeout(Duration::from_secs(30))
        .expect("recover exits");
    assert_eq!(code, 130, "{}", rec.log());
    let log = rec.log();
    assert!(
        log.contains(&format!(
            "interrupted: {} is incomplete; remove it or rerun with --delta",
            data.display()
        )),
        "{log}"
    );
    assert!(marker.exists());
    assert!(!data.join("global/pg_control").exists());
    // A recover without --delta refuses, naming the marker.
    let r = pg.run(&["recover", "pg1", "latest", data.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("interrupted recovery"), "{r:?}");
    // PostgreSQL refuses the folder.
    let (c, started) = Cluster::try_from_datadir(dir, ClusterOptions::default());
    let e = started.expect_err("PostgreSQL started on an interrupted recovery");
    assert!(
        e.contains("pg_control") || e.contains("not a database cluster directory"),
        "{e}"
    );
    let dir = c.into_dir();
    // --delta completes it: the marker goes, PostgreSQL starts with the rows.
    pg.unset_env("PGBK_TEST_RECOVER_THROTTLE_MS");
    let js = recover(pg, &["pg1", "latest", data.to_str().unwrap(), "--delta"]);
    assert!(!marker.exists());
    // Item 9: the copied port is the source's, on this host: warned about.
    let port = src.cluster.port.to_string();
    let warned = |js: &Value| {
        js["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with(&format!("port = {port} ")))
    };
    assert!(warned(&js), "{js}");
    let r = start_recovered(dir);
    assert_eq!(markers(&r), "in backup", "{}", r.log_tail(30));
    // --port overrides it: written last into postgresql.auto.conf, no warning.
    let (_other, data2) = destination();
    let js = recover(
        &src.pg,
        &["pg1", "latest", data2.to_str().unwrap(), "--port", "6543"],
    );
    assert!(!warned(&js), "{js}");
    let auto = fs::read_to_string(data2.join("postgresql.auto.conf")).unwrap();
    assert!(auto.trim_end().ends_with("port = '6543'"), "{auto}");
}

/// stderr without the debug log lines.
fn missing_line(o: &Output) -> String {
    o.stderr
        .lines()
        .filter(|l| l.starts_with("pgbk:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every file, directory and link under `root`: kind, mode, owner, content digest or
/// link target (with `root`'s parent shown as `<dir>`).
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let parent = root.parent().unwrap().display().to_string();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_symlink() {
                let t = fs::read_link(&p).unwrap().display().to_string();
                format!("link {}", t.replace(&parent, "<dir>"))
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o} {}", m.mode() & 0o7777, m.uid())
            } else {
                let text = fs::read(&p).unwrap();
                let text = String::from_utf8_lossy(&text).replace(&parent, "<dir>");
                format!(
                    "file {:o} {} {}",
                    m.mode() & 0o7777,
                    m.uid(),
                    blake3::hash(text.as_bytes()).to_hex()
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    let only_a: Vec<_> = ta.keys().filter(|k| !tb.contains_key(*k)).collect();
    let only_b: Vec<_> = tb.keys().filter(|k| !ta.contains_key(*k)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "only in {}: {only_a:?}\nonly in {}: {only_b:?}",
        a.display(),
        b.display()
    );
    for (k, v) in &ta {
        assert_eq!(Some(v), tb.get(k), "{k} differs");
    }
}

#[test]
fn delta_over_an_older_started_copy_equals_a_fresh_recovery() {
    let src = source();
    let c = &src.cluster;
    let ts = pg_scratch_dir("pgbk-ts-");
    let loc = ts.path().join("loc");
    fs::create_dir(&loc).unwrap();
    chown_to_postgres(&loc, false);
    c.psql(&format!(
        "create tablespace tbs location '{}'",
        loc.display()
    ));
    c.psql("create table in_ts tablespace tbs as select g as id from generate_series(1, 1000) g");
    src.backup();
    c.pgbench_wait(2, 2);
    src.archive_now();

    // A fresh recovery into a directory prepared (owned) by the postgres user.
    let (fresh_dir, fresh) = destination();
    fs::create_dir(&fresh).unwrap();
    chown_to_postgres(&fresh, false);
    let fresh_ts = fresh_dir.path().join("ts");
    let full = recover(
        &src.pg,
        &[
            "pg1",
            "latest",
            fresh.to_str().unwrap(),
            "--tablespace",
            &format!("tbs:{}", fresh_ts.display()),
        ],
    );
    if let Some((uid, _)) = postgres_user() {
        for p in [
            fresh.join("PG_VERSION"),
            fresh.join("base"),
            fresh.join("pg_wal"),
            fresh_ts.clone(),
        ] {
            assert_eq!(
                fs::metadata(&p).unwrap().uid(),
                uid,
                "{} not given to postgres",
                p.display()
            );
        }
    }
    let oid = c.psql("select oid from pg_tablespace where spcname = 'tbs'");
    assert_eq!(
        fs::read_link(fresh.join("pg_tblspc").join(&oid)).unwrap(),
        fresh_ts
    );
    pg_verifybackup(&fresh, &["pgbk_wal"]);

    // An older copy: recovered, started (it promotes and writes), changed, extended.
    let (old_dir, old) = destination();
    let old_ts = old_dir.path().join("ts");
    let ts_arg = format!("tbs:{}", old_ts.display());
    recover(
        &src.pg,
        &[
            "pg1",
            "latest",
            old.to_str().unwrap(),
            "--tablespace",
            &ts_arg,
        ],
    );
    let r = start_recovered(old_dir);
    r.pgbench_wait(2, 2);
    r.psql("insert into in_ts select generate_series(1, 500); checkpoint");
    r.stop("fast");
    fs::write(old.join("PG_VERSION"), "14\n").unwrap();
    fs::write(old.join("extra_file"), "x").unwrap();
    fs::create_dir_all(old.join("base/extra_dir")).unwrap();
    fs::write(old.join("base/extra_dir/f"), "x").unwrap();
    let version_dir = fs::read_dir(&old_ts)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    fs::write(version_dir.join("junk"), "x").unwrap();

    let delta = recover(
        &src.pg,
        &[
            "pg1",
            "latest",
            old.to_str().unwrap(),
            "--tablespace",
            &ts_arg,
            "--delta",
        ],
    );
    let written = delta["files"]["bytes_written"].as_u64().unwrap();
    let full_written = full["files"]["bytes_written"].as_u64().unwrap();
    assert!(
        written < full_written,
        "delta wrote {written} bytes, a full recovery {full_written}"
    );
    assert!(
        delta["files"]["files_skipped"].as_u64().unwrap() > 0,
        "{delta}"
    );
    assert!(delta["files"]["removed"].as_u64().unwrap() >= 3, "{delta}");
    eprintln!(
        "restore: {} bytes at {:.0} MB/s; delta wrote {written} of {} bytes",
        full_written,
        full["bytes_per_sec"].as_f64().unwrap() / 1e6,
        written + delta["files"]["bytes_skipped"].as_u64().unwrap()
    );
    // Both runs are recorded for RTO estimates.
    let cat = pgbk::catalog::Catalog::open_existing(&src.pg.home)
        .unwrap()
        .unwrap();
    let m = cat.measurements("pg1", "restore").unwrap();
    assert!(
        m.len() >= 2 && m.iter().all(|m| m.bytes_per_sec > 0.0),
        "{m:?}"
    );
    assert_eq!(cat.measurements("pg1", "restore-delta").unwrap().len(), 1);
    assert_same_tree(&fresh, &old);
    assert_same_tree(&fresh_ts, &old_ts);

    // The delta result starts and holds the backup's data (on its own port again:
    // the delta restored the source's postgresql.conf).
    r.append_conf(&[
        format!("port = {}", r.port),
        format!("unix_socket_directories = '{}'", r.socket_dir.display()),
    ]);
    r.start();
    wait_until(Duration::from_secs(60), "recovery to end", || {
        r.try_psql("select pg_is_in_recovery()")
            .is_ok_and(|s| s == "f")
    });
    assert_eq!(r.psql("select count(*) from in_ts"), "1000");
}

/// The destination's content, for "left as it was".
fn snapshot(p: &Path) -> Option<BTreeMap<String, String>> {
    p.exists().then(|| tree(p))
}

#[test]
fn refusals_leave_the_destination_untouched() {
    let src = source();
    let pg = &src.pg;
    let c = &src.cluster;
    let before_backup = c.psql("select clock_timestamp()");
    let backup = src.backup();
    c.pgbench_wait(1, 2);
    src.archive_now();

    let (_d1, missing) = destination();
    let (_d2, empty) = destination();
    fs::create_dir(&empty).unwrap();
    let (_d3, full) = destination();
    fs::create_dir(&full).unwrap();
    fs::write(full.join("precious"), "keep me").unwrap();
    // A failed backup (as a crashed run leaves it), found on disk.
    let info: Value = serde_json::from_str(
        &fs::read_to_string(
            pg.home
                .join("pg1/backups")
                .join(&backup)
                .join("backup.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut failed = info.clone();
    failed["backup_id"] = "20000101T000000".into();
    failed["status"] = "FAILED".into();
    failed["error"] = "test".into();
    let fdir = pg.home.join("pg1/backups/20000101T000000");
    fs::create_dir_all(&fdir).unwrap();
    fs::write(fdir.join("backup.json"), failed.to_string()).unwrap();
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["latest", "--target-time", &before_backup],
            1,
            "before the end of backup",
        ),
        (
            vec!["auto", "--target-time", &before_backup],
            1,
            "no DONE backup ended before",
        ),
        (
            vec!["latest", "--target-time", &later],
            1,
            "later than the newest archived WAL",
        ),
        (
            vec!["latest", "--target-lsn", "FF/0"],
            1,
            "beyond the newest archived WAL",
        ),
        (
            vec!["latest", "--target-lsn", "0/1"],
            1,
            "before the end of backup",
        ),
        (
            vec!["latest", "--target-xid", "5", "--target-name", "x"],
            2,
            "cannot be used with",
        ),
        (vec!["nope"], 2, "no backup 'nope'"),
        (vec!["auto", "--target-xid", "5"], 2, "name the backup"),
        (vec!["20000101T000000"], 1, "is FAILED"),
        (
            vec!["latest", "--tablespace", "nope:/tmp/x"],
            2,
            "unknown tablespace 'nope'",
        ),
        (
            vec!["latest", "--target-action", "promote"],
            2,
            "needs a recovery target",
        ),
    ];
    for dest in [&missing, &empty, &full] {
        for (args, code, msg) in &cases {
            let before = snapshot(dest);
            let mut all = vec!["recover", "pg1", args[0], dest.to_str().unwrap()];
            all.extend_from_slice(&args[1..]);
            let out = pg.run(&all);
            assert_eq!(out.code, *code, "{all:?}: {out:?}");
            assert!(
                out.stderr.contains(msg),
                "{all:?}: expected {msg:?} in {}",
                out.stderr
            );
            assert_eq!(before, snapshot(dest), "{all:?} touched {}", dest.display());
        }
    }
    // Not empty, without --delta.
    let out = pg.run(&["recover", "pg1", "latest", full.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("is not empty"), "{out:?}");
    assert_eq!(
        fs::read_to_string(full.join("precious")).unwrap(),
        "keep me"
    );
    assert_eq!(fs::read_dir(&full).unwrap().count(), 1);
    // A running cluster, even with --delta: the source itself.
    let before = tree(&c.datadir);
    let out = pg.run(&[
        "recover",
        "pg1",
        "latest",
        c.datadir.to_str().unwrap(),
        "--delta",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("holds a running PostgreSQL"), "{out:?}");
    let after = tree(&c.datadir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    // Each refusal is one line.
    assert_eq!(missing_line(&out).lines().count(), 1, "{out:?}");

    // The same repository, asked properly: every setting lands in postgresql.auto.conf.
    let lsn = c.psql("select pg_current_wal_lsn()");
    src.archive_now();
    let js = recover(
        pg,
        &[
            "pg1",
            &backup,
            missing.to_str().unwrap(),
            "--target-lsn",
            &lsn,
            "--exclusive",
            "--target-tli",
            "current",
            "--target-action",
            "shutdown",
            "--standby-mode",
        ],
    );
    assert_eq!(js["signal_file"], "standby.signal", "{js}");
    assert!(missing.join("standby.signal").exists());
    assert!(!missing.join("recovery.signal").exists());
    let conf = fs::read_to_string(missing.join("postgresql.auto.conf")).unwrap();
    for line in [
        format!("recovery_target_lsn = '{lsn}'"),
        "recovery_target_inclusive = 'false'".to_string(),
        "recovery_target_timeline = 'current'".to_string(),
        "recovery_target_action = 'shutdown'".to_string(),
        "archive_command = 'false'".to_string(),
        format!(
            "restore_command = 'cp {}/pgbk_wal/%f %p'",
            missing.display()
        ),
    ] {
        assert!(conf.contains(&line), "no {line:?} in\n{conf}");
    }
    drop(src.rw);
}
