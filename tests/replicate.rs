//! `replicate`: a passive pgbk (region B) mirrors what a primary pgbk (region A)
//! holds for a server, over a real sshd on loopback, with real PostgreSQL 15.
//!
//! - B's backups equal A's, verify and check on B, and recover to the same rows; a
//!   second pass copies nothing; C mirroring B ends with the same backups;
//! - `--follow` keeps B's newest WAL (partial included) within seconds of A's, and
//!   `recover --get-wal --partial` on B holds every row committed before that;
//! - a pass killed (SIGKILL) in the middle of a backup resumes without copying again
//!   what it had stored, and the result verifies;
//! - every object carries its object checksum (BLAKE3 of the stored bytes) on A, B
//!   and C, and B verifies by it: a byte flipped in a compressed object on A is
//!   refused; objects an older pgbk stored without it are verified by content;
//! - an object changed on A is refused by checksum (the backup stays SYNCING), a
//!   crafted sync-info with `..` paths is refused and nothing enters the catalog,
//!   an unreachable primary is a one-line error and the next pass completes;
//! - sshd stopped in the middle of a pass (listener and sessions killed): one clear
//!   error naming the server and the primary, exit 1, within seconds; sshd started
//!   again on the same port, the next pass completes and the backup verifies;
//!   `backup`/`receive-wal` are refused on a passive server.

mod common;
use common::peer::{
    add_passive_server, assert_object_checksums, backup_summary, kill_replicate_midway, last_lsn,
    replicate,
};
use common::source::StreamingSource;
use common::{
    chown_to_postgres, free_port, pg_scratch_dir, wait_until, Cluster, ClusterOptions, Pgbk, Sshd,
};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Region A: a cluster with pgbench tables and pgbk streaming its WAL.
fn region_a(scale: u32) -> StreamingSource {
    StreamingSource::start(scale)
}

/// Recovers `pg1` at a restore point into a fresh folder and starts it.
fn recover_at(pg: &Pgbk, extra: &[&str]) -> Cluster {
    let dir = pg_scratch_dir("pgbk-rec-");
    let data = dir.path().join("data");
    let mut args = vec!["recover", "pg1", "latest", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    if extra.iter().any(|a| a.starts_with("--target-")) {
        args.extend(["--target-action", "promote"]);
    }
    pg.json(&args);
    let c = Cluster::from_datadir(dir, ClusterOptions::default());
    wait_until(Duration::from_secs(90), "recovery to end", || {
        c.try_psql("select pg_is_in_recovery()")
            .is_ok_and(|s| s == "f")
    });
    c
}

fn rows(c: &Cluster) -> String {
    c.psql(
        "select (select count(*) from pgbench_history) || ' ' || \
         (select sum(abalance) from pgbench_accounts) || ' ' || \
         (select coalesce(string_agg(note, ',' order by id), '') from marker)",
    )
}

/// Every file under `dir` whose name looks like a temporary one.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().contains(".tmp.") {
                out.push(p);
            }
        }
    }
    out
}

fn pgbk_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("pgbk:")).collect()
}

#[test]
fn region_b_mirrors_backups_and_wal_that_verify_and_recover_to_the_same_rows() {
    let a = region_a(5);
    let c = &a.cluster;
    c.psql("create table marker (id int, note text)");
    let first = a.backup();
    c.pgbench_wait(3, 2);
    std::thread::sleep(Duration::from_millis(1100));
    let second = a.backup();
    assert_ne!(first, second);
    c.pgbench_wait(2, 2);
    c.psql("insert into marker values (1, 'before')");
    c.psql("select pg_create_restore_point('rp')");
    c.psql("insert into marker values (2, 'after')");
    a.archive_now();

    let sshd = Sshd::start();
    let b = Pgbk::new();
    add_passive_server(&b, "pg1", &sshd, &a.pg, "");

    // Passive servers refuse to take backups or stream WAL themselves.
    for verb in ["backup", "receive-wal"] {
        let out = b.run(&[verb, "pg1"]);
        assert_eq!(out.code, 2, "{verb}: {out:?}");
        let lines = pgbk_lines(&out.stderr);
        assert_eq!(lines.len(), 1, "{verb}: {out:?}");
        assert!(
            lines[0].contains("passive") && lines[0].contains("127.0.0.1"),
            "{verb}: {out:?}"
        );
    }

    let report = replicate(&b, "pg1");
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");
    assert_eq!(
        report["backups_copied"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    assert!(report["wal_copied"].as_u64().unwrap() >= 3, "{report}");
    assert!(report["bytes_moved"].as_u64().unwrap() > 0, "{report}");

    let on_a = backup_summary(&a.pg, "pg1");
    assert_eq!(on_a.len(), 2);
    assert_eq!(backup_summary(&b, "pg1"), on_a);
    assert_eq!(
        b.archived_segments("pg1"),
        a.pg.archived_segments("pg1"),
        "every archived segment is on B"
    );
    for seg in a.pg.archived_segments("pg1") {
        assert!(
            b.decompress_segment("pg1", &seg) == a.pg.decompress_segment("pg1", &seg),
            "segment {seg} differs"
        );
    }
    // Every object A stored carries its object checksum, and B records the same ones
    // (WAL catalog rows, backups' files.jsonl), each right for the bytes on disk.
    let a_sums = assert_object_checksums(&a.pg, "pg1");
    let b_sums = assert_object_checksums(&b, "pg1");
    assert_eq!(b_sums, a_sums);
    for id in [&first, &second] {
        let v = b.json(&["verify-backup", "pg1", id]);
        assert_eq!(v["ok"], true, "{v}");
        b.ok(&["check-backup", "pg1", id]);
    }

    // A second pass (every passive server: `all`) finds nothing new to copy.
    let again = replicate(&b, "all");
    assert_eq!(again["wal_copied"], 0, "{again}");
    assert_eq!(again["files_copied"], 0, "{again}");
    assert_eq!(
        again["backups_copied"].as_array().unwrap().len(),
        0,
        "{again}"
    );

    // cron runs one replicate pass for a passive server and starts no receive-wal.
    let cron = b.json(&["cron"]);
    let actions: Vec<&str> = cron
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap_or(""))
        .collect();
    assert!(actions.contains(&"replicate"), "{cron}");
    assert!(!actions.contains(&"receive-wal-started"), "{cron}");
    // B holds A's identity, so it could continue as an active server.
    let (ida, idb) = (
        a.pg.json(&["sync-info", "pg1"]),
        b.json(&["sync-info", "pg1"]),
    );
    assert_eq!(idb["system_id"], ida["system_id"]);
    assert!(ida["system_id"].is_string() || ida["system_id"].is_number());
    let shown = b.json(&["list-servers"]);
    assert_eq!(shown[0]["passive"], true, "{shown}");

    // The same restore point recovered from A and from B gives the same rows.
    let from_a = recover_at(&a.pg, &["--target-name", "rp"]);
    let from_b = recover_at(&b, &["--target-name", "rp"]);
    let expected = rows(&from_a);
    assert!(expected.ends_with(" before"), "{expected}");
    assert_eq!(rows(&from_b), expected, "{}", from_b.log_tail(30));
    drop(from_a);
    drop(from_b);

    // A chain: C mirrors B, which mirrors A.
    let c3 = Pgbk::new();
    add_passive_server(&c3, "pg1", &sshd, &b, "");
    let report = replicate(&c3, "pg1");
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");
    assert_eq!(backup_summary(&c3, "pg1"), on_a);
    assert_eq!(c3.archived_segments("pg1"), a.pg.archived_segments("pg1"));
    let v = c3.json(&["verify-backup", "pg1", &second]);
    assert_eq!(v["ok"], true, "{v}");
    // The chain keeps the property: C verified what it received by object checksum
    // and records the same ones.
    assert_eq!(assert_object_checksums(&c3, "pg1"), a_sums);

    // Without primary_ssh_command, B is an active server continuing the same
    // catalog: its receive-wal streams on from A's cluster and archives more WAL.
    b.add_server(
        "pg1",
        &format!(
            "conninfo = {}\nstreaming_archiver = on\nstreaming_archiver_name = pgbk_b\n\
             slot_name = pgbk_b\ncreate_slot = auto\n",
            c.conninfo()
        ),
    );
    let before = b.archived_segments("pg1").len();
    let mut rw_b = b.spawn(&["receive-wal", "pg1"]);
    wait_until(Duration::from_secs(60), "B's receive-wal to stream", || {
        c.try_psql("select count(*) from pg_stat_replication where application_name = 'pgbk_b'")
            .is_ok_and(|n| n == "1")
    });
    b.archive_now("pg1");
    assert!(b.archived_segments("pg1").len() > before);
    assert_eq!(rw_b.term(), 0, "{}", rw_b.log_tail(30));
    drop(a.rw);
}

#[test]
fn follow_keeps_b_within_seconds_and_partial_recovery_on_b_holds_older_rows() {
    let mut a = region_a(5);
    let c = &a.cluster;
    c.psql("create table marker (id int, note text)");
    a.backup();
    let sshd = Sshd::start();
    let b = Pgbk::new();
    add_passive_server(&b, "pg1", &sshd, &a.pg, "");
    replicate(&b, "pg1");
    let mut follow = b.spawn(&["replicate", "pg1", "--follow"]);
    let mut load = c.pgbench(25, 2);

    // Under load, B reaches A's position of a moment ago within a few seconds.
    let mut committed: Vec<(i32, Instant)> = Vec::new(); // (id, commit time)
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    let mut id = 0;
    while started.elapsed() < Duration::from_secs(15) {
        id += 1;
        c.psql(&format!("insert into marker values ({id}, 'm{id}')"));
        committed.push((id, Instant::now()));
        if id % 6 == 0 {
            let Some(target) = last_lsn(&a.pg, "pg1") else {
                continue;
            };
            let t0 = Instant::now();
            wait_until(Duration::from_secs(30), "B to reach A's position", || {
                last_lsn(&b, "pg1").is_some_and(|l| l >= target)
            });
            worst = worst.max(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(worst < Duration::from_secs(8), "B lagged {worst:?}");
    let _ = load.wait();
    // Once B has reached A's newest position, every committed row is on B.
    let target = last_lsn(&a.pg, "pg1").unwrap();
    wait_until(Duration::from_secs(30), "B to catch up", || {
        last_lsn(&b, "pg1").is_some_and(|l| l >= target)
    });
    assert_eq!(follow.term(), 0, "{}", follow.log_tail(40));
    assert_eq!(a.rw.term(), 0);
    let status = b.json(&["status", "pg1"]);
    assert_eq!(status["passive"], true, "{status}");
    assert!(
        status["local"]["peer"]["last_pass_at"].is_string(),
        "{status}"
    );
    let check = b.run(&["check", "pg1", "--nagios"]);
    assert_eq!(check.code, 0, "{check:?}");

    // The newest rows are only in the partial segment B copied.
    let partials: Vec<String> = fs::read_dir(b.streaming_dir("pg1"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert_eq!(partials.len(), 1, "{partials:?}");
    chown_to_postgres(&b.home, true);
    let r = recover_at(&b, &["--get-wal", "--partial"]);
    let present: Vec<i32> = r
        .psql("select coalesce(string_agg(id::text, ',' order by id), '') from marker")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    for (id, _) in &committed {
        assert!(present.contains(id), "row {id} missing on B: {present:?}");
    }
    assert_eq!(present.len(), committed.len(), "{present:?}");
}

#[test]
fn replicate_killed_mid_backup_resumes_without_copying_again_and_verifies() {
    let a = region_a(5);
    a.add_objects(150);
    let id = a.backup();
    a.archive_now();
    let stored = a.pg.json(&["show-backup", "pg1", &id])["stored_bytes"]
        .as_u64()
        .unwrap();
    let sshd = Sshd::start();
    let b = Pgbk::new();
    add_passive_server(&b, "pg1", &sshd, &a.pg, "parallel_jobs = 2\n");

    // Slow the copy down (a documented test hook) so the kill lands mid-backup.
    let data = b.home.join("pg1/backups").join(&id).join("data");
    let count = |d: &Path| {
        let mut n = 0;
        let mut stack = vec![d.to_path_buf()];
        while let Some(x) = stack.pop() {
            for e in fs::read_dir(&x).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    n += 1;
                }
            }
        }
        n
    };
    kill_replicate_midway(&b, "pg1", "B to copy some objects", || count(&data) >= 60);

    let report = replicate(&b, "pg1");
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");
    assert_eq!(report["backups_copied"][0], id.as_str(), "{report}");
    let present = report["files_present"].as_u64().unwrap();
    assert!(present >= 40, "{report}");
    let moved = report["bytes_moved"].as_u64().unwrap();
    let wal_bytes: u64 = 0;
    assert!(
        moved + wal_bytes < stored,
        "the second pass moved {moved} bytes of a {stored}-byte backup: {report}"
    );
    assert!(temp_files(&b.home.join("pg1/backups")).is_empty());
    let v = b.json(&["verify-backup", "pg1", &id]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(backup_summary(&b, "pg1"), backup_summary(&a.pg, "pg1"));
    drop(a.rw);
}

/// Files below `dir`, recursively.
fn file_count(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(x) = stack.pop() {
        for e in fs::read_dir(&x).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn sshd_stopped_mid_run_is_one_clear_error_and_the_next_pass_completes() {
    let a = region_a(5);
    a.add_objects(150);
    let id = a.backup();
    a.archive_now();
    let mut sshd = Sshd::start();
    let b = Pgbk::new();
    add_passive_server(&b, "pg1", &sshd, &a.pg, "parallel_jobs = 2\n");

    // A throttled pass (documented test hook), so sshd stops in the middle of it.
    let mut child = b
        .cmd()
        .args(["replicate", "pg1"])
        .env("PGBK_TEST_REPLICATE_THROTTLE_MS", "100")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let data = b.home.join("pg1/backups").join(&id).join("data");
    wait_until(Duration::from_secs(60), "B to copy some objects", || {
        file_count(&data) >= 40
    });
    // The listener and every session process it forked: established connections die.
    sshd.stop();
    let stopped = Instant::now();
    wait_until(Duration::from_secs(60), "replicate to exit", || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    let took = stopped.elapsed();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        took < Duration::from_secs(30),
        "replicate took {took:?} to notice: {stderr}"
    );
    let lines = pgbk_lines(&stderr);
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    assert!(
        lines[0].contains("server 'pg1'")
            && lines[0].contains(&format!("127.0.0.1:{}", sshd.port))
            && lines[0].contains("unreachable"),
        "{stderr}"
    );
    let listed = b.json(&["list-backups", "pg1"]);
    assert_eq!(listed[0]["status"], "SYNCING", "{listed}");
    let copied_before = file_count(&data);
    assert!(copied_before >= 40, "{copied_before}");

    // sshd back (same port, same keys): the next pass completes and verifies.
    sshd.start_again();
    let report = replicate(&b, "pg1");
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");
    assert_eq!(report["backups_copied"][0], id.as_str(), "{report}");
    assert!(
        report["files_present"].as_u64().unwrap() >= 30,
        "what was stored before the stop is not copied again: {report}"
    );
    assert!(temp_files(&b.home.join("pg1/backups")).is_empty());
    let v = b.json(&["verify-backup", "pg1", &id]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(backup_summary(&b, "pg1"), backup_summary(&a.pg, "pg1"));
    assert_eq!(b.archived_segments("pg1"), a.pg.archived_segments("pg1"));
    drop(a.rw);
}

#[test]
fn changed_object_crafted_paths_and_unreachable_primary_are_refused() {
    let a = region_a(1);
    let id = a.backup();
    a.archive_now();
    let sshd = Sshd::start();

    // An object changed on A after its backup is DONE: B refuses it by checksum.
    let backup_dir = a.pg.home.join("pg1/backups").join(&id);
    // The small files are in bundles: one is rewritten with one byte changed.
    let obj = backup_dir.join("bundles/000001.zst");
    assert!(obj.is_file());
    let mut bundle = fs::read(&obj).unwrap();
    bundle[7] ^= 0x10;
    fs::remove_file(&obj).unwrap();
    fs::write(&obj, &bundle).unwrap();
    // And one bit flipped in the middle of a larger compressed object, same size.
    let big = "data/base/1/1255.zst";
    let big_obj = backup_dir.join(big);
    let mut bytes = fs::read(&big_obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&big_obj, &bytes).unwrap();
    let b = Pgbk::new();
    add_passive_server(&b, "pg1", &sshd, &a.pg, "");
    let out = b.run(&["replicate", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    // Both refused by the object checksum (the bytes received, not decompressed),
    // the message naming the object.
    for name in ["bundles/000001.zst", "1255.zst"] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(name) && l.contains("object checksum mismatch")),
            "{name}: {out:?}"
        );
    }
    assert!(!b.home.join("pg1/backups").join(&id).join(big).exists());
    let listed = b.json(&["list-backups", "pg1"]);
    assert_eq!(listed[0]["status"], "SYNCING", "{listed}");
    assert!(!b
        .home
        .join("pg1/backups")
        .join(&id)
        .join("bundles/000001.zst")
        .exists());
    // The WAL still came.
    assert_eq!(b.archived_segments("pg1"), a.pg.archived_segments("pg1"));

    // A crafted sync-info (a stub in place of pgbk at the far end) naming paths that
    // leave the server folder: refused, nothing of it in the catalog.
    let mut doc = a.pg.json(&["sync-info", "pg1"]);
    doc["wals"][0]["path"] = "wals/../../../../etc/passwd".into();
    doc["wals"][1]["name"] = "../../../etc/passwd".into();
    doc["backups"][0]["backup_id"] = "../../etc".into();
    let stub_dir = b.root.join("stub");
    fs::create_dir(&stub_dir).unwrap();
    fs::write(stub_dir.join("doc.json"), doc.to_string()).unwrap();
    let stub = stub_dir.join("pgbk-stub");
    fs::write(
        &stub,
        format!("#!/bin/sh\ncat {}\n", stub_dir.join("doc.json").display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    let d = Pgbk::new();
    d.add_server(
        "pg1",
        &format!(
            "primary_ssh_command = {}\nprimary_pgbk_command = {}\n",
            sshd.ssh_command("root"),
            stub.display()
        ),
    );
    let out = d.run(&["replicate", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("refused WAL path"), "{out:?}");
    assert!(out.stderr.contains("refused WAL file name"), "{out:?}");
    assert!(out.stderr.contains("refused backup id"), "{out:?}");
    let segs = d.archived_segments("pg1");
    let a_segs = a.pg.archived_segments("pg1");
    assert!(
        !segs.contains(&a_segs[0]) && !segs.contains(&a_segs[1]),
        "{segs:?}"
    );
    assert!(d
        .json(&["list-backups", "pg1"])
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["backup_id"] != "../../etc"));

    // The primary unreachable: one line naming the server and target, exit 1; once
    // reachable again, the next pass completes.
    let e = Pgbk::new();
    let closed = free_port();
    e.add_server(
        "pg1",
        &format!(
            "primary_ssh_command = ssh -p {closed} -i {} -o UserKnownHostsFile={} root@127.0.0.1\n\
             primary_pgbk_command = {} -c {}\n",
            sshd.client_key.display(),
            sshd.known_hosts.display(),
            env!("CARGO_BIN_EXE_pgbk"),
            a.pg.config.display()
        ),
    );
    let out = e.run(&["replicate", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    let lines = pgbk_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(
        lines[0].contains("pg1") && lines[0].contains(&format!("127.0.0.1:{closed}")),
        "{out:?}"
    );
    let nagios = e.run(&["check", "pg1", "--nagios"]);
    assert_eq!(nagios.code, 2, "{nagios:?}");
    assert!(
        nagios.stdout.contains("CRITICAL") && nagios.stdout.contains("replication from primary"),
        "{nagios:?}"
    );
    add_passive_server(&e, "pg1", &sshd, &a.pg, "");
    let out = e.run(&["replicate", "pg1"]);
    // The changed object on A still fails, but everything else is copied.
    assert_eq!(
        e.archived_segments("pg1"),
        a.pg.archived_segments("pg1"),
        "{out:?}"
    );
    drop(a.rw);
}

#[test]
fn objects_stored_by_an_older_pgbk_are_verified_by_their_content() {
    let a = region_a(1);
    let id = a.backup();
    a.archive_now();
    // What an older pgbk left: no object checksums, in files.jsonl or the catalog.
    let list = a.pg.home.join("pg1/backups").join(&id).join("files.jsonl");
    let mut stripped = String::new();
    for line in fs::read_to_string(&list).unwrap().lines() {
        let mut e: Value = serde_json::from_str(line).unwrap();
        e.as_object_mut().unwrap().remove("stored_checksum");
        stripped.push_str(&format!("{e}\n"));
    }
    assert!(!stripped.contains("stored_checksum"));
    fs::write(&list, stripped).unwrap();
    let db = rusqlite::Connection::open(a.pg.home.join("catalog.db")).unwrap();
    db.execute("UPDATE wal_files SET stored_checksum = NULL", [])
        .unwrap();
    drop(db);
    let doc = a.pg.json(&["sync-info", "pg1"]);
    assert!(doc["wals"][0].get("stored_checksum").is_none(), "{doc}");

    let sshd = Sshd::start();
    let b = Pgbk::new();
    add_passive_server(&b, "pg1", &sshd, &a.pg, "");
    let report = replicate(&b, "pg1");
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");
    assert_eq!(report["backups_copied"][0], id.as_str(), "{report}");
    let v = b.json(&["verify-backup", "pg1", &id]);
    assert_eq!(v["ok"], true, "{v}");
    // B verified the content and records the object checksum of what it stored.
    let cat = pgbk::catalog::Catalog::open_existing(&b.home)
        .unwrap()
        .unwrap();
    for w in cat.wal_files("pg1").unwrap() {
        assert!(w.stored_checksum.is_some(), "{w:?}");
    }
    drop(a.rw);
}
