//! The storage interface on both backends: the same conformance run against a
//! folder (posix) and against a real 3-volume SeaweedFS cluster through its S3
//! gateway (SigV4): create-only puts, overwrites, multipart-sized streams, ranges,
//! paged listings in key order, batch deletes, keys that would leave the repository;
//! and the S3 failures a DBA meets first, each one error naming the store.

mod common;
use common::seaweed::{SeaweedFs, ACCESS_KEY};
use pgbk::repo::store::posix::PosixStore;
use pgbk::repo::store::s3::S3Store;
use pgbk::repo::store::{PutMode, PutOutcome, Store, StoreError};
use std::io::Read;
use std::time::{Duration, Instant};

fn read_all(store: &dyn Store, key: &str) -> Vec<u8> {
    let mut v = Vec::new();
    store.get(key).unwrap().read_to_end(&mut v).unwrap();
    v
}

/// Deterministic bytes (not compressible to nothing, different per seed).
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn conformance(store: &dyn Store) {
    let what = store.location();
    // Create-only: same bytes again succeed, different bytes are refused.
    let seg = bytes(3000, 1);
    let key = "pg1/wals/0000000100000000/000000010000000000000003.zst";
    assert_eq!(
        store.put(key, &seg, PutMode::Create).unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        store.put(key, &seg, PutMode::Create).unwrap(),
        PutOutcome::AlreadyIdentical
    );
    let other = bytes(3000, 2);
    let e = store.put(key, &other, PutMode::Create).unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{what}: {e}");
    assert!(e.to_string().contains(key), "{e}");
    assert_eq!(
        read_all(store, key),
        seg,
        "{what}: the stored object changed"
    );

    // Overwrite replaces.
    let meta = "pg1/backups/20260101T000000/backup.json";
    store.put(meta, b"{\"v\":1}", PutMode::Overwrite).unwrap();
    store.put(meta, b"{\"v\":2}", PutMode::Overwrite).unwrap();
    assert_eq!(read_all(store, meta), b"{\"v\":2}");

    // A stream larger than one part (multipart on S3), create-only too.
    let big = bytes(20 << 20, 3);
    let bkey = "pg1/backups/20260101T000000/data/base/5/16384.zst";
    assert_eq!(
        store
            .put_reader(bkey, &mut &big[..], PutMode::Create)
            .unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        store
            .put_reader(bkey, &mut &big[..], PutMode::Create)
            .unwrap(),
        PutOutcome::AlreadyIdentical
    );
    let mut changed = big.clone();
    changed[15 << 20] ^= 1;
    let e = store
        .put_reader(bkey, &mut &changed[..], PutMode::Create)
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{what}: {e}");
    assert!(
        read_all(store, bkey) == big,
        "{what}: the big object differs"
    );
    assert_eq!(
        store.get_range(bkey, 10 << 20, 7).unwrap(),
        big[10 << 20..(10 << 20) + 7]
    );
    assert_eq!(store.get_range(key, 2990, 100).unwrap(), seg[2990..]);
    assert_eq!(store.stat(bkey).unwrap().map(|m| m.size), Some(20 << 20));

    // Missing objects: stat None, get NotFound.
    let missing = "pg1/wals/0000000100000000/000000010000000000000099.zst";
    assert!(store.stat(missing).unwrap().is_none());
    assert!(store.get(missing).err().is_some_and(|e| e.is_not_found()));

    // Listing: every key under a prefix, in byte order, page after page.
    let mut names: Vec<String> = (0..25).map(|i| format!("pg1/l/k{i:02}")).collect();
    names.push("pg1/l/k1/nested".into());
    // (Not "k1-dash" beside "k1/": SeaweedFS lists a folder before a sibling that
    // sorts below '/', AWS by bytes; pgbk's layout has no such pair.)
    for n in &names {
        store.put(n, n.as_bytes(), PutMode::Create).unwrap();
    }
    names.sort();
    let listed: Vec<String> = store.list("pg1/l/").map(|m| m.unwrap().key).collect();
    assert_eq!(listed, names, "{what}");
    let partial: Vec<String> = store.list("pg1/l/k1").map(|m| m.unwrap().key).collect();
    let expect: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with("pg1/l/k1"))
        .cloned()
        .collect();
    assert_eq!(partial, expect, "{what}");

    // Folders directly under a folder (a delimited listing on S3), sorted; the page
    // size is small, so several pages are rolled up.
    for f in ["b", "a", "c"] {
        for i in 0..3 {
            let k = format!("pg1/f/{f}/{i}");
            store.put(&k, b"x", PutMode::Create).unwrap();
        }
    }
    store.put("pg1/f/plain", b"x", PutMode::Create).unwrap();
    assert_eq!(
        store.list_folders("pg1/f/").unwrap(),
        ["a", "b", "c"],
        "{what}"
    );
    assert!(
        store.list_folders("pg1/none/").unwrap().is_empty(),
        "{what}"
    );
    assert!(store.list_folders("pg1/f").is_err(), "{what}");

    // Batch delete, a missing key included.
    let mut gone: Vec<String> = names[..10].to_vec();
    gone.push("pg1/l/never".into());
    store.delete(&gone).unwrap();
    assert_eq!(store.list("pg1/l/").count(), names.len() - 10, "{what}");

    // Keys that would leave the repository are refused before any I/O.
    for bad in ["../x", "pg1/../../etc/passwd", "/abs", "pg1//x"] {
        assert!(
            matches!(
                store.put(bad, b"x", PutMode::Overwrite),
                Err(StoreError::InvalidKey(_))
            ),
            "{what}: {bad}"
        );
    }
    store.check_access().unwrap();
}

#[test]
fn posix_and_s3_stores_behave_alike() {
    let dir = common::scratch_dir("pgbk-store-");
    conformance(&PosixStore::new(dir.path()));

    let sw = SeaweedFs::start();
    let s3 = S3Store::new(sw.settings("conformance"))
        .unwrap()
        .with_page_size(7);
    s3.check_bucket().unwrap();
    conformance(&s3);
    // Another prefix of the same bucket sees none of it.
    let other = S3Store::new(sw.settings("elsewhere")).unwrap();
    assert_eq!(other.list("").count(), 0);
}

#[test]
fn s3_failures_are_one_error_naming_the_store() {
    let sw = SeaweedFs::start();
    // Wrong secret: refused, not retried.
    let mut s = sw.settings("x");
    s.secret_access_key = Some("wrong".into());
    let bad = S3Store::new(s).unwrap();
    let e = bad.check_bucket().unwrap_err().to_string();
    assert!(
        e.contains("access denied") && e.contains(&sw.endpoint()),
        "{e}"
    );
    let e = bad.put("pg1/a", b"x", PutMode::Create).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Remote {
                status: Some(403),
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong"), "secret in {e}");

    // A bucket that does not exist.
    let mut s = sw.settings("x");
    s.bucket = "no-such-bucket".into();
    let e = S3Store::new(s)
        .unwrap()
        .check_bucket()
        .unwrap_err()
        .to_string();
    assert!(e.contains("bucket 'no-such-bucket' does not exist"), "{e}");

    // Nothing listens: retried within the bound, then one error.
    let mut s = sw.settings("x");
    s.endpoint = Some(format!("http://127.0.0.1:{}", common::free_port()));
    let down = S3Store::new(s)
        .unwrap()
        .with_retry_bound(Duration::from_secs(2));
    let t = Instant::now();
    let e = down
        .put("pg1/a", b"x", PutMode::Create)
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        e.contains("gave up after retrying") && e.contains("pg1/a"),
        "{e}"
    );

    // No credentials anywhere: the message says where it looked.
    let mut s = sw.settings("x");
    s.access_key_id = None;
    s.secret_access_key = None;
    s.profile = Some("pgbk-test-none".into());
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials");
    let e = S3Store::new(s).unwrap_err();
    assert!(e.contains("no S3 credentials"), "{e}");
    assert!(!ACCESS_KEY.is_empty());
}

/// `repository = s3://...` and the `s3_*` options: shown with the secret masked,
/// judged by `check` (reachable, credentials, a write test), refused with one line
/// by the verbs that do not use the storage layer yet, and bad values refused at
/// load naming the option.
#[test]
fn an_s3_repository_is_configured_shown_masked_and_checked() {
    use common::seaweed::SECRET_KEY;
    let sw = SeaweedFs::start();
    let pg = common::Pgbk::new();
    let port = common::free_port();
    let base = format!(
        "conninfo = host=127.0.0.1 port={port} user=postgres dbname=postgres\n\
         repository = s3://pgbk/servers\ns3_endpoint = {}\ns3_access_key_id = {ACCESS_KEY}\n",
        sw.endpoint()
    );
    pg.add_server(
        "pg",
        &format!("{base}s3_secret_access_key = {SECRET_KEY}\n"),
    );
    pg.add_server(
        "bad",
        &format!("{base}s3_secret_access_key = not-the-secret-at-all\n"),
    );

    let shown = pg.ok(&["show-server", "pg"]);
    assert!(shown.contains("s3://pgbk/servers"), "{shown}");
    assert!(!shown.contains(SECRET_KEY), "secret shown: {shown}");
    let js = pg.ok(&["--format", "json", "show-server", "pg"]);
    assert!(!js.contains(SECRET_KEY), "secret in JSON: {js}");

    let out = pg.run(&["check", "pg"]);
    assert!(
        out.stdout.contains(&format!(
            "repository: OK (s3://pgbk/servers at {}: reachable, write test passed)",
            sw.endpoint()
        )),
        "{out:?}"
    );
    let out = pg.run(&["check", "bad"]);
    assert!(
        out.stdout.contains("repository: FAILED (") && out.stdout.contains("access denied"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("not-the-secret-at-all"), "{out:?}");
    let diag = pg.run(&["diagnose"]);
    assert!(
        !diag.stdout.contains(SECRET_KEY) && !diag.stdout.contains("not-the-secret-at-all"),
        "secret in diagnose"
    );

    // sync-info (files under the home, for a passive peer) refuses: one line, exit 2.
    let o = pg.run(&["sync-info", "pg"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        error_line(&o).contains("server 'pg': repository = s3://pgbk/servers"),
        "{o:?}"
    );

    // Bad values: refused at load, naming the option.
    for (line, option) in [
        ("repository = s3://Bad_Bucket/x", "repository"),
        (
            "repository = s3://pgbk/x\ns3_endpoint = ftp://host",
            "s3_endpoint",
        ),
        (
            "repository = s3://pgbk/x\ns3_url_style = sideways",
            "s3_url_style",
        ),
        (
            "repository = s3://pgbk/x\ns3_access_key_id = K",
            "s3_access_key_id",
        ),
    ] {
        pg.add_server(
            "broken",
            &format!("conninfo = host=127.0.0.1 port={port}\n{line}\n"),
        );
        let o = pg.run(&["show-server", "broken"]);
        assert_eq!(o.code, 2, "{line}: {o:?}");
        assert!(
            o.stderr.contains(&format!("'{option}'")) || o.stderr.contains(option),
            "{line}: {o:?}"
        );
    }
}

/// `recover pg latest <scratch>/data --target-time T --target-action promote`;
/// returns the scratch folder and the data directory.
fn recover_to_time(
    pg: &common::Pgbk,
    target: &str,
    prefix: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = common::pg_scratch_dir(prefix);
    let data = dir.path().join("data");
    pg.ok(&[
        "recover",
        "pg",
        "latest",
        data.to_str().unwrap(),
        "--target-time",
        target,
        "--target-action",
        "promote",
    ]);
    (dir, data)
}

/// Inserts `first..=mid` into `t`, takes the time, inserts up to `last`, closes the
/// segment and waits until the bucket under `prefix` holds it; returns the time, a
/// recovery target with exactly the first batch before it.
fn target_between_batches(
    c: &common::Cluster,
    sw: &SeaweedFs,
    prefix: &str,
    (first, mid, last): (u32, u32, u32),
) -> String {
    c.psql(&format!(
        "insert into t select generate_series({first}, {mid})"
    ));
    let target = c.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    c.psql(&format!(
        "insert into t select generate_series({}, {last})",
        mid + 1
    ));
    let segment = c.current_wal_file();
    c.psql("select pg_switch_wal()");
    common::wait_until(Duration::from_secs(60), "the last segment archived", || {
        bucket_segment(sw, prefix, "pg", &segment).is_some()
    });
    target
}

/// The one `pgbk:` line a failed command printed (panics unless exactly one).
fn error_line(out: &common::Output) -> &str {
    let lines = out.error_lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    lines[0]
}

/// How many backups of a `list-backups --format json` document are DONE.
fn done_backups(list: &serde_json::Value) -> usize {
    list.as_array()
        .map_or(0, |a| a.iter().filter(|b| b["status"] == "DONE").count())
}

/// Reads an object of the bucket and decompresses it with the plain `zstd` binary:
/// what is in the bucket is readable without pgbk.
fn bucket_segment(sw: &SeaweedFs, prefix: &str, server: &str, segment: &str) -> Option<Vec<u8>> {
    use std::io::Write;
    let store = S3Store::new(sw.settings(prefix)).unwrap();
    let key = format!("{server}/wals/{}/{segment}.zst", &segment[..16]);
    let mut object = Vec::new();
    match store.get(&key) {
        Ok(mut r) => r.read_to_end(&mut object).unwrap(),
        Err(StoreError::NotFound { .. }) => return None,
        Err(e) => panic!("{key}: {e}"),
    };
    let mut zstd = std::process::Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run zstd");
    let mut stdin = zstd.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&object));
    let out = zstd.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "zstd -d of {key} failed");
    Some(out.stdout)
}

/// WAL reaches an S3 repository by every way it arrives: `put-wal` (the same
/// content twice is fine, different content under a stored name is refused and
/// the object stays as it was), `archive-wal` from incoming/, and `receive-wal`
/// streaming; each object in the bucket decompresses to the server's own segment,
/// and nothing of it is left in the local home's `wals/`. `get-wal` serves it back
/// verified (prefetch included), says "not in the archive" only for a missing
/// segment, and refuses a damaged object with the exit code that stops recovery.
#[test]
fn wal_reaches_an_s3_repository_by_put_wal_archive_wal_and_receive_wal() {
    use common::archiving::{completed_segments, pgbk_stdin, read_segment};
    use common::{wait_until, Cluster, ClusterOptions};
    let sw = SeaweedFs::start();
    let c = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    let pg = common::Pgbk::new();
    pg.streaming_server_with(
        "pg",
        &c,
        &format!("archiver = on\n{}", sw.server_conf("wal-test")),
    );
    let segs = completed_segments(&c, 3);
    let (a, b) = (&segs[0], &segs[1]);
    let (seg_a, seg_b) = (read_segment(&c, a), read_segment(&c, b));

    // put-wal: stored, then the same again is already there.
    for expected in ["stored", "already_present"] {
        let (code, out, err) = pgbk_stdin(
            &pg,
            &["put-wal", "pg", "--name", a, "--format", "json"],
            &seg_a,
        );
        assert_eq!(code, 0, "{out}{err}");
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["status"], expected, "{j}");
    }
    assert!(bucket_segment(&sw, "wal-test", "pg", a).unwrap() == seg_a);
    // Different content under the stored name: refused, the object unchanged.
    let (code, _, err) = pgbk_stdin(&pg, &["put-wal", "pg", "--name", a], &seg_b);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(a.as_str()), "{err}");
    assert!(bucket_segment(&sw, "wal-test", "pg", a).unwrap() == seg_a);

    // On the database host (`< %p`): the segments PostgreSQL marked ready after the
    // one asked for go up at the same time (put_wal_ahead, default 2), and their
    // own calls find them archived; a segment not marked ready is left alone.
    let more = completed_segments(&c, 7);
    let later: Vec<&String> = more.iter().rev().take(4).rev().collect();
    let host = common::scratch_dir("pgbk-ahead-");
    let wal = host.path().join("pg_wal");
    std::fs::create_dir_all(wal.join("archive_status")).unwrap();
    for (i, n) in later.iter().enumerate() {
        std::fs::write(wal.join(n), read_segment(&c, n)).unwrap();
        let status = if i < 3 { "ready" } else { "done" };
        std::fs::write(wal.join(format!("archive_status/{n}.{status}")), b"").unwrap();
    }
    let put_file = |name: &str| -> serde_json::Value {
        let out = pg
            .cmd()
            .args(["put-wal", "pg", "--name", name, "--format", "json"])
            .stdin(std::fs::File::open(wal.join(name)).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(put_file(later[0])["status"], "stored");
    for n in &later[..3] {
        assert!(
            bucket_segment(&sw, "wal-test", "pg", n).unwrap() == read_segment(&c, n),
            "{n}"
        );
    }
    assert!(bucket_segment(&sw, "wal-test", "pg", later[3]).is_none());
    assert_eq!(put_file(later[1])["status"], "already_present");
    assert_eq!(put_file(later[2])["status"], "already_present");

    // archive-wal: what archive_command copied into incoming/ goes up.
    let incoming = pg.home.join("pg").join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::write(incoming.join(b), &seg_b).unwrap();
    pg.ok(&["archive-wal", "pg"]);
    assert!(bucket_segment(&sw, "wal-test", "pg", b).unwrap() == seg_b);
    assert!(!incoming.join(b).exists(), "left in incoming/");

    // get-wal serves from the bucket, verified; prefetch fills the local spool.
    let out = pg.home.join("RECOVERYXLOG");
    let out_s = out.to_str().unwrap();
    pg.ok(&["get-wal", "pg", a, "--output", out_s]);
    assert!(std::fs::read(&out).unwrap() == seg_a);
    pg.ok(&[
        "get-wal",
        "pg",
        a,
        "--prefetch",
        "2",
        "--prefetch-only",
        "1048576",
    ]);
    let spooled = pg.home.join("pg").join("spool").join(b);
    assert!(std::fs::read(&spooled).unwrap() == seg_b, "prefetched {b}");
    pg.ok(&["get-wal", "pg", b, "--output", out_s]);
    assert!(std::fs::read(&out).unwrap() == seg_b);
    assert!(!spooled.exists(), "the served spool file stays");
    let missing = pg.run(&["get-wal", "pg", &segs[2], "--output", out_s]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("is not in the archive"),
        "{missing:?}"
    );

    // receive-wal: completed segments go up as they complete.
    let mut rw = pg.start_receive_wal("pg", &c);
    let first = c.current_wal_file();
    for _ in 0..2 {
        c.psql("insert into filler select g, repeat('y', 200) from generate_series(1, 2000) g");
        c.psql("select pg_switch_wal()");
    }
    wait_until(
        Duration::from_secs(60),
        "streamed segment in the bucket",
        || bucket_segment(&sw, "wal-test", "pg", &first).is_some(),
    );
    rw.term();
    let streamed = bucket_segment(&sw, "wal-test", "pg", &first).unwrap();
    assert!(streamed == read_segment(&c, &first), "{first} differs");
    assert!(
        pg.archived_segments("pg").is_empty(),
        "segments landed in the local home: {:?}",
        pg.archived_segments("pg")
    );

    // A damaged object in the bucket is never served, nor reported missing: exit
    // 200 (PostgreSQL stops recovery), naming the object.
    let store = S3Store::new(sw.settings("wal-test")).unwrap();
    let key = format!("pg/wals/{}/{a}.zst", &a[..16]);
    let mut object = read_all(&store, &key);
    let middle = object.len() / 2;
    object[middle] ^= 0x01;
    store.put(&key, &object, PutMode::Overwrite).unwrap();
    std::fs::remove_file(&out).unwrap();
    let bad = pg.run(&["get-wal", "pg", a, "--output", out_s]);
    assert_eq!(bad.code, 200, "{bad:?}");
    assert!(
        bad.stderr.contains("is damaged") && bad.stderr.contains(&key),
        "{bad:?}"
    );
    assert!(!out.exists(), "damaged bytes were delivered");
}

/// A streaming backup under pgbench load goes to the bucket (its files whole or
/// multipart, files.jsonl, backup_manifest, backup.json last) with its WAL streamed
/// there by receive-wal; `recover --target-time` between two batches gives exactly
/// the rows committed before it; `delete`, retention in `cron` and `keep` act on
/// the bucket and never remove WAL the remaining backup needs;
/// `list-backups` and `show-backup` see it DONE, `recover` fetches it from the
/// bucket into a data directory that `pg_verifybackup` accepts and that starts
/// with every row committed before the backup and after it; `verify-backup` and
/// `check-backup` pass, and a byte flipped in a stored object is named. With the
/// gateway gone, `backup` fails in one line naming the store (within the retry
/// bound) and lists nothing new as DONE; with it back, the next backup is DONE.
#[test]
fn a_streaming_backup_in_s3_recovers_every_row() {
    use common::{pg_scratch_dir, wait_until, Cluster, ClusterOptions};
    let mut sw = SeaweedFs::start();
    let c = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    c.psql("create table t (i int, pad text)");
    // A relation file larger than the whole-object limit, so one object goes up
    // as a multipart upload.
    c.psql("insert into t select g, md5(g::text) || repeat('x', 100) from generate_series(1, 120000) g");
    let pg = common::Pgbk::new();
    let conf = format!(
        "immediate_checkpoint = on\n{}",
        sw.server_conf("backups-test")
    );
    pg.streaming_server_with("pg", &c, &conf);
    c.pgbench_init(1);
    let mut rw = pg.start_receive_wal("pg", &c);
    let mut load = c.pgbench(6, 2);
    let out = pg.json(&["backup", "pg"]);
    let _ = load.wait();
    let id = out["backup_id"]
        .as_str()
        .or_else(|| out[0]["backup_id"].as_str())
        .unwrap_or_else(|| panic!("no backup id: {out}"))
        .to_string();
    let list = pg.json(&["list-backups", "pg"]);
    assert_eq!(list[0]["status"], "DONE", "{list}");
    let shown = pg.json(&["show-backup", "pg", &id]);
    assert_eq!(shown["wal"]["present"], true, "{shown}");
    let verified = pg.json(&["verify-backup", "pg", &id]);
    assert_eq!(verified["ok"], true, "{verified}");
    let checked = pg.json(&["check-backup", "pg", &id]);
    assert_eq!(checked["ok"], true, "{checked}");

    // Everything is in the bucket, nothing of the data in the local home.
    let store = S3Store::new(sw.settings("backups-test")).unwrap();
    let keys: Vec<String> = store
        .list(&format!("pg/backups/{id}/"))
        .map(|m| m.unwrap().key)
        .collect();
    for want in ["backup.json", "files.jsonl", "backup_manifest"] {
        assert!(
            keys.contains(&format!("pg/backups/{id}/{want}")),
            "{want} not in the bucket: {keys:?}"
        );
    }
    assert!(keys.iter().any(|k| k.contains("/data/base/")), "{keys:?}");
    assert!(
        !pg.home.join("pg/backups").join(&id).join("data").exists(),
        "backup data in the local home"
    );

    c.psql("insert into t select g, 'after' from generate_series(120001, 120500) g");
    let at_target = c.psql("select count(*) from t");
    let target = c.psql("select clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("insert into t select g, 'later' from generate_series(120501, 120600) g");
    let expected = c.psql("select count(*) from t");
    assert_ne!(expected, at_target);
    let last = c.current_wal_file();
    c.psql("select pg_switch_wal()");
    // The catalog row is entered once the object is stored: wait for the row.
    wait_until(Duration::from_secs(60), "the last segment archived", || {
        pgbk::catalog::Catalog::open_existing(&pg.home)
            .ok()
            .flatten()
            .and_then(|cat| cat.wal_files("pg").ok())
            .is_some_and(|w| w.iter().any(|r| r.name == last))
    });
    assert!(bucket_segment(&sw, "backups-test", "pg", &last).is_some());

    let dir = pg_scratch_dir("pgbk-s3-rec-");
    let data = dir.path().join("data");
    pg.ok(&["recover", "pg", "latest", data.to_str().unwrap()]);
    let verify = std::process::Command::new(format!("{}/pg_verifybackup", common::PG_BIN))
        .args(["-n", "-i", "pgbk_wal"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(verify.status.success(), "pg_verifybackup: {verify:?}");
    let r = Cluster::from_datadir(dir, ClusterOptions::default());
    r.wait_promoted();
    assert_eq!(r.psql("select count(*) from t"), expected);
    drop(r);

    // To a time between the two batches: exactly the rows committed before it.
    let (dir, _) = recover_to_time(&pg, &target, "pgbk-s3-pitr-");
    let r = Cluster::from_datadir(dir, ClusterOptions::default());
    r.wait_promoted();
    assert_eq!(r.psql("select count(*) from t"), at_target);
    drop(r);
    rw.term();

    // A byte flipped in a stored object: verify-backup names it.
    let victim = keys
        .iter()
        .find(|k| k.contains("/data/base/") && k.ends_with(".zst"))
        .unwrap();
    let mut object = read_all(&store, victim);
    let middle = object.len() / 2;
    object[middle] ^= 0x40;
    store.put(victim, &object, PutMode::Overwrite).unwrap();
    let bad = pg.run(&["verify-backup", "pg", &id]);
    assert_eq!(bad.code, 1, "{bad:?}");
    let rel = victim.split_once(&format!("{id}/")).unwrap().1;
    assert!(bad.stdout.contains(rel), "{rel}: {bad:?}");

    // The gateway gone: one line naming the store, no new DONE backup.
    sw.kill("filer");
    let failed = pg.run(&["backup", "pg"]);
    assert_ne!(failed.code, 0, "{failed:?}");
    assert!(
        error_line(&failed).contains("s3://pgbk/backups-test"),
        "{failed:?}"
    );
    let list = pg.json(&["list-backups", "pg"]);
    assert_eq!(done_backups(&list), 1, "{list}");

    // The gateway back: the next backup is DONE.
    sw.start_gateway();
    let mut rw = pg.start_receive_wal("pg", &c);
    pg.ok(&["backup", "pg"]);
    rw.term();
    let list = pg.json(&["list-backups", "pg"]);
    assert_eq!(done_backups(&list), 2, "{list}");

    // Deleting the first backup removes its objects and the WAL only it needed from
    // the bucket; the second still has every segment it needs.
    pg.ok(&["delete", "pg", &id]);
    let left: Vec<String> = store
        .list(&format!("pg/backups/{id}/"))
        .map(|m| m.unwrap().key)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let first_wal = shown["begin_wal"].as_str().unwrap();
    assert!(
        bucket_segment(&sw, "backups-test", "pg", first_wal).is_none(),
        "{first_wal} still in the bucket"
    );
    let second = list[1]["backup_id"]
        .as_str()
        .filter(|b| *b != id)
        .or_else(|| list[0]["backup_id"].as_str())
        .unwrap()
        .to_string();
    assert_ne!(second, id);
    let checked = pg.json(&["check-backup", "pg", &second]);
    assert_eq!(checked["ok"], true, "{checked}");
    let verified = pg.json(&["verify-backup", "pg", &second]);
    assert_eq!(verified["ok"], true, "{verified}");

    // Retention in cron (REDUNDANCY 1) deletes the older backup from the bucket
    // and keeps everything the newest needs.
    let mut rw = pg.start_receive_wal("pg", &c);
    let third = pg.json(&["backup", "pg"])["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    pg.streaming_server_with(
        "pg",
        &c,
        &format!("{conf}retention_policy = REDUNDANCY 1\n"),
    );
    let actions = pg.json(&["cron"]);
    rw.term();
    assert!(
        actions.to_string().contains(&second),
        "retention did not delete {second}: {actions}"
    );
    assert_eq!(
        store.list(&format!("pg/backups/{second}/")).count(),
        0,
        "{second} left objects"
    );
    let checked = pg.json(&["check-backup", "pg", &third]);
    assert_eq!(checked["ok"], true, "{checked}");

    // keep annotates backup.json in the bucket.
    pg.ok(&["keep", "pg", &third, "--target", "full"]);
    let info = read_all(&store, &format!("pg/backups/{third}/backup.json"));
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["keep"], "full", "{info}");
}

#[test]
fn small_tables_go_to_s3_as_a_few_bundles_that_verify_and_recover() {
    use common::{pg_scratch_dir, Cluster, ClusterOptions};
    let sw = SeaweedFs::start();
    let c = Cluster::new(ClusterOptions::default());
    let tables = 1000;
    let sql: String = (0..tables)
        .map(|i| format!("create table t{i}(i int); insert into t{i} values ({i});\n"))
        .collect();
    c.psql(&sql);
    let pg = common::Pgbk::new();
    let conf = format!(
        "immediate_checkpoint = on\n{}",
        sw.server_conf("bundles-test")
    );
    pg.streaming_server_with("pg", &c, &conf);
    let mut rw = pg.start_receive_wal("pg", &c);
    let id = pg.json(&["backup", "pg"])["backup_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Far fewer objects in the bucket than files in the backup.
    let store = S3Store::new(sw.settings("bundles-test")).unwrap();
    let prefix = format!("pg/backups/{id}/");
    let keys: Vec<String> = store.list(&prefix).map(|m| m.unwrap().key).collect();
    let list = read_all(&store, &format!("{prefix}files.jsonl"));
    let entries: Vec<serde_json::Value> = String::from_utf8(list)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let files = entries.iter().filter(|e| e["kind"] == "file").count();
    eprintln!(
        "{tables} tables on S3: {files} files, {} objects",
        keys.len()
    );
    assert!(files > tables, "{files}");
    assert!(keys.len() * 10 < files, "{} objects: {keys:?}", keys.len());
    assert!(keys.contains(&format!("{prefix}bundles.jsonl")), "{keys:?}");

    let verified = pg.json(&["verify-backup", "pg", &id]);
    assert_eq!(verified["ok"], true, "{verified}");
    let rec = pg_scratch_dir("pgbk-s3-bundles-");
    let data = rec.path().join("data");
    pg.ok(&[
        "recover",
        "pg",
        &id,
        data.to_str().unwrap(),
        "--target-immediate",
        "--target-action",
        "promote",
    ]);
    rw.term();
    let r = Cluster::from_datadir(rec, ClusterOptions::default());
    r.wait_promoted();
    assert_eq!(r.psql("select i from t777"), "777");
    assert_eq!(
        r.psql(
            "select sum((xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I', relname), false, true, '')))[1]::text::int) \
             from pg_class where relkind = 'r' and relname ~ '^t[0-9]+$'"
        ),
        tables.to_string()
    );
    drop(r);

    // A byte flipped in a bundle in the bucket: verify-backup names a file of it.
    let victim = entries
        .iter()
        .find(|e| e["offset"].as_u64().is_some_and(|o| o > 0))
        .unwrap();
    let key = format!("{prefix}{}", victim["object"].as_str().unwrap());
    let mut bundle = read_all(&store, &key);
    let at = victim["offset"].as_u64().unwrap() + victim["length"].as_u64().unwrap() / 2;
    bundle[at as usize] ^= 0x40;
    store.put(&key, &bundle, PutMode::Overwrite).unwrap();
    let bad = pg.run(&["verify-backup", "pg", &id]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stdout.contains(victim["path"].as_str().unwrap()),
        "{victim}: {bad:?}"
    );
}

/// The bucket is the only copy: the manager's local home (catalog, locks, spool)
/// is lost and only its configuration is left. `list-backups` says to rebuild the
/// catalog instead of printing nothing; `rebuild-catalog` brings the backup and
/// every archived WAL file back from the bucket alone; `status` and
/// `check-wal-archive` read the bucket; and `recover --remote-ssh-command` streams
/// the backup and its WAL from the bucket through a real sshd into a data
/// directory that starts with every row committed before the last archived
/// segment.
#[test]
fn the_bucket_alone_rebuilds_the_catalog_and_recovers_over_ssh() {
    use common::{chown_to_postgres, pg_scratch_dir, Cluster, ClusterOptions, Sshd};
    let sw = SeaweedFs::start();
    let sshd = Sshd::start();
    let c = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    c.psql("create table t (i int)");
    c.psql("insert into t select generate_series(1, 1000)");
    let pg = common::Pgbk::new();
    pg.streaming_server_with(
        "pg",
        &c,
        &format!("immediate_checkpoint = on\n{}", sw.server_conf("only-copy")),
    );
    let mut rw = pg.start_receive_wal("pg", &c);
    let id = pg.json(&["backup", "pg"])["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.psql("insert into t select generate_series(1001, 1500)");
    pg.archive_now("pg");
    let status = pg.ok(&["status", "pg"]);
    assert!(
        status.contains(&format!(
            "Repository: s3://pgbk/only-copy at {} (reachable)",
            sw.endpoint()
        )),
        "{status}"
    );
    rw.term();
    let archived = pgbk::catalog::Catalog::open_existing(&pg.home)
        .unwrap()
        .unwrap()
        .wal_files("pg")
        .unwrap()
        .len();
    assert!(archived >= 2, "{archived}");

    std::fs::remove_dir_all(&pg.home).unwrap();
    let lost = pg.run(&["list-backups", "pg"]);
    assert_eq!(lost.code, 1, "{lost:?}");
    assert!(
        error_line(&lost).contains(&format!("backup(s) the repository holds ({id})"))
            && error_line(&lost).contains("run rebuild-catalog pg"),
        "{lost:?}"
    );

    let rebuilt = pg.json(&["rebuild-catalog", "pg"]);
    assert_eq!(rebuilt[0]["backups"], 1, "{rebuilt}");
    assert_eq!(rebuilt[0]["wal_files"], archived as u64, "{rebuilt}");
    let list = pg.json(&["list-backups", "pg"]);
    assert_eq!(list[0]["backup_id"], id.as_str(), "{list}");
    assert_eq!(list[0]["status"], "DONE", "{list}");
    let checked = pg.json(&["check-backup", "pg", &id]);
    assert_eq!(checked["ok"], true, "{checked}");
    // The archive is not empty: a new cluster must not be pointed at it.
    let archive = pg.run(&["--format", "json", "check-wal-archive", "pg"]);
    assert_eq!(archive.code, 1, "{archive:?}");
    let archive: serde_json::Value = serde_json::from_str(&archive.stdout).unwrap();
    assert_eq!(archive["files"], archived as u64, "{archive}");

    // Straight from the bucket to another host, over SSH.
    let dir = pg_scratch_dir("pgbk-s3-rrec-");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chown_to_postgres(&data, false);
    let out = pg.json(&[
        "recover",
        "pg",
        "latest",
        data.to_str().unwrap(),
        "--remote-ssh-command",
        &sshd.ssh_command("postgres"),
    ]);
    assert_eq!(out["manifest"], true, "{out}");
    assert!(out["wal_files"].as_u64().unwrap() >= 1, "{out}");
    let r = Cluster::from_datadir(dir, ClusterOptions::default());
    r.wait_promoted();
    assert_eq!(r.psql("select count(*) from t"), "1500");
    drop(r);

    // A new manager whose server section names another cluster but this bucket:
    // refused in one line naming both system identifiers, the bucket unchanged.
    let other = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    let stranger = common::Pgbk::new();
    stranger.streaming_server_with(
        "pg",
        &other,
        &format!("immediate_checkpoint = on\n{}", sw.server_conf("only-copy")),
    );
    let store = S3Store::new(sw.settings("only-copy")).unwrap();
    let before = store.list("pg/").count();
    let refused = stranger.run(&["backup", "pg"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        error_line(&refused).contains("system identifier"),
        "{refused:?}"
    );
    assert_eq!(store.list("pg/").count(), before, "the bucket changed");
}

/// The store failing in the middle of a backup (uploads slowed by the test hook so
/// the failure lands mid-way). A volume server killed with SIGKILL: the store's
/// replication covers it (every object is on three volume servers; a fourth lets
/// SeaweedFS place new volumes on three live ones, as a volume missing a replica
/// turns read-only), the backup ends DONE and verifies. The S3 gateway killed:
/// the backup fails within the retry bound with one line naming the store, is
/// FAILED, nothing new is DONE; once the gateway is back the next backup is DONE.
#[test]
fn the_store_failing_mid_backup_is_covered_or_fails_the_backup_cleanly() {
    use common::{Cluster, ClusterOptions};
    let mut sw = SeaweedFs::start_with_volumes(4);
    let c = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    c.pgbench_init(1);
    let mut pg = common::Pgbk::new();
    pg.streaming_server_with(
        "pg",
        &c,
        &format!(
            "immediate_checkpoint = on\n{}",
            sw.server_conf("mid-backup")
        ),
    );
    let mut rw = pg.start_receive_wal("pg", &c);
    // Small files go up in a few bundles: a pgbench scale-1 backup is some fifteen
    // whole objects, four uploading at a time, each held back 2 s.
    pg.set_env("PGBK_TEST_UPLOAD_THROTTLE_MS", "2000");

    // A volume server lost mid-backup.
    let mut backup = pg.spawn(&["--format", "json", "backup", "pg"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        backup.is_running(),
        "the backup ended too soon to be interrupted"
    );
    sw.kill("volume1");
    let code = backup.wait_timeout(Duration::from_secs(300));
    assert_eq!(code, Some(0), "{}", backup.log_tail(20));
    let list = pg.json(&["list-backups", "pg"]);
    assert_eq!(done_backups(&list), 1, "{list}");
    let id = list[0]["backup_id"].as_str().unwrap().to_string();
    let verified = pg.json(&["verify-backup", "pg", &id]);
    assert_eq!(verified["ok"], true, "{verified}");

    // The gateway lost mid-backup.
    let mut backup = pg.spawn(&["backup", "pg"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        backup.is_running(),
        "the backup ended too soon to be interrupted"
    );
    sw.kill("filer");
    let started = Instant::now();
    let code = backup.wait_timeout(Duration::from_secs(240));
    assert_eq!(code, Some(1), "{}", backup.log_tail(20));
    assert!(
        started.elapsed() < Duration::from_secs(200),
        "not within the retry bound: {:?}",
        started.elapsed()
    );
    let log = backup.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("pgbk:")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("s3://pgbk/mid-backup"), "{log}");
    let list = pg.json(&["list-backups", "pg"]);
    assert_eq!(done_backups(&list), 1, "{list}");
    assert_eq!(list[0]["status"], "FAILED", "{list}");

    // The gateway back: the next backup is DONE.
    pg.unset_env("PGBK_TEST_UPLOAD_THROTTLE_MS");
    sw.start_gateway();
    pg.ok(&["backup", "pg"]);
    rw.term();
    let list = pg.json(&["list-backups", "pg"]);
    assert_eq!(done_backups(&list), 2, "{list}");
}

/// An https gateway: with `s3_ca_file` naming the CA that signed its certificate
/// the repository is reachable and writable; without it the certificate is
/// refused (verification is on by default), naming the endpoint; with
/// `s3_verify_tls = off` (a lab) it is accepted.
#[test]
fn tls_to_the_store_is_verified_against_the_configured_ca() {
    use common::seaweed::SECRET_KEY;
    let sw = SeaweedFs::start_tls();
    let store = S3Store::new(sw.settings("tls")).unwrap();
    store.put("pg/x", b"over tls", PutMode::Create).unwrap();
    assert_eq!(read_all(&store, "pg/x"), b"over tls");

    let pg = common::Pgbk::new();
    let port = common::free_port();
    let base = format!(
        "conninfo = host=127.0.0.1 port={port} user=postgres dbname=postgres\n\
         repository = s3://pgbk/tls\ns3_endpoint = {}\ns3_access_key_id = {ACCESS_KEY}\n\
         s3_secret_access_key = {SECRET_KEY}\n",
        sw.endpoint()
    );
    pg.add_server(
        "ca",
        &format!("{base}s3_ca_file = {}\n", sw.ca_file().display()),
    );
    pg.add_server("default", &base);
    pg.add_server("lab", &format!("{base}s3_verify_tls = off\n"));
    let ok = |name: &str| {
        let out = pg.run(&["check", name]);
        assert!(
            out.stdout
                .contains("repository: OK (s3://pgbk/tls at https://"),
            "{name}: {out:?}"
        );
    };
    ok("ca");
    ok("lab");
    let out = pg.run(&["check", "default"]);
    assert!(
        out.stdout.contains("repository: FAILED (") && out.stdout.contains("certificate"),
        "{out:?}"
    );
}

#[test]
fn rsync_backups_in_s3_refer_to_unchanged_objects_survive_deletes_and_recover() {
    use common::rsync::{backup_dir, rsync_server};
    use common::{Cluster, ClusterOptions, Sshd};
    let sw = SeaweedFs::start();
    let sshd = Sshd::start();
    let c = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    // A table nothing touches after this (frozen, no autovacuum): its file keeps its
    // size and mtime on the server.
    c.psql("create table still (i int, pad text) with (autovacuum_enabled = off)");
    c.psql("insert into still select g, repeat('s', 200) from generate_series(1, 20000) g");
    c.psql("vacuum (freeze) still");
    c.psql("checkpoint");
    c.psql("create table t (i int)");
    c.pgbench_init(1);
    let pg = common::Pgbk::new();
    let conf = format!("reuse_backup = link\n{}", sw.server_conf("rsync-test"));
    rsync_server(&pg, "pg", &c, &sshd.ssh_command("postgres"), &conf);
    let mut rw = pg.start_receive_wal("pg", &c);

    // Two backups under load: the first streams a first copy, the second compares
    // with the first's staged copy.
    let mut ids = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1100));
        let mut load = c.pgbench(4, 2);
        let out = pg.json(&["backup", "pg"]);
        let _ = load.wait();
        assert_eq!(out["status"], "DONE", "{out}");
        ids.push(out["backup_id"].as_str().unwrap().to_string());
        if ids.len() == 2 {
            // rsync compared with the first's staged copy: the frozen table was not
            // sent, and its object in the bucket is the first backup's, by reference.
            let sent = out["transferred_bytes"].as_u64().unwrap();
            let size = out["size_bytes"].as_u64().unwrap();
            assert!(sent + 4_000_000 < size, "{out}");
            let reused = out["reused_bytes"].as_u64().unwrap();
            assert!(reused > 4_000_000, "{out}");
            assert!(out["stored_bytes"].as_u64().unwrap() * 3 < size, "{out}");
        }
    }
    let store = S3Store::new(sw.settings("rsync-test")).unwrap();
    let rel = c.psql("select pg_relation_filepath('still')");
    let still_key = format!("pg/backups/{}/data/{rel}.zst", ids[0]);
    let listed = |id: &str| -> Vec<serde_json::Value> {
        let raw = read_all(&store, &format!("pg/backups/{id}/files.jsonl"));
        String::from_utf8(raw)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let second = listed(&ids[1]);
    let still = second.iter().find(|e| e["path"] == rel.as_str()).unwrap();
    assert_eq!(still["in_backup"], ids[0].as_str(), "{still}");
    assert!(store.stat(&still_key).unwrap().is_some());
    assert!(store
        .stat(&format!("pg/backups/{}/data/{rel}.zst", ids[1]))
        .unwrap()
        .is_none());
    let info: serde_json::Value = serde_json::from_slice(&read_all(
        &store,
        &format!("pg/backups/{}/backup.json", ids[1]),
    ))
    .unwrap();
    assert_eq!(info["references"], serde_json::json!([ids[0]]), "{info}");
    for id in &ids {
        let keys: Vec<String> = store
            .list(&format!("pg/backups/{id}/"))
            .map(|m| m.unwrap().key)
            .collect();
        for want in ["backup.json", "files.jsonl", "bundles.jsonl"] {
            assert!(
                keys.contains(&format!("pg/backups/{id}/{want}")),
                "{want} not in the bucket: {keys:?}"
            );
        }
        let verified = pg.json(&["verify-backup", "pg", id]);
        assert_eq!(verified["ok"], true, "{verified}");
        let checked = pg.json(&["check-backup", "pg", id]);
        assert_eq!(checked["ok"], true, "{checked}");
    }
    let shown = pg.json(&["show-backup", "pg", &ids[1]]);
    assert_eq!(shown["method"], "rsync", "{shown}");
    // generate-manifest writes PostgreSQL's manifest into the bucket, once.
    pg.ok(&["generate-manifest", "pg", &ids[1]]);
    assert!(store
        .stat(&format!("pg/backups/{}/backup_manifest", ids[1]))
        .unwrap()
        .is_some());
    let twice = pg.run(&["generate-manifest", "pg", &ids[1]]);
    assert_ne!(twice.code, 0, "{twice:?}");
    // Only the newest staged copy stays on this host, for the next rsync.
    assert!(!backup_dir(&pg, "pg", &ids[0]).join("data").exists());
    let staged = backup_dir(&pg, "pg", &ids[1]).join("data");
    assert!(staged.join("PG_VERSION").is_file());

    // Point in time between two batches: exactly the rows committed before it.
    let target = target_between_batches(&c, &sw, "rsync-test", (1, 500, 600));
    let (dir, data) = recover_to_time(&pg, &target, "pgbk-s3-rsync-");
    let verify = std::process::Command::new(format!("{}/pg_verifybackup", common::PG_BIN))
        .args(["-n", "-i", "pgbk_wal"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(verify.status.success(), "pg_verifybackup: {verify:?}");
    let r = Cluster::from_datadir(dir, ClusterOptions::default());
    r.wait_promoted();
    assert_eq!(r.psql("select count(*) from t"), "500");
    assert_eq!(r.psql("select count(*) from still"), "20000");
    drop(r);

    // A byte of the staged copy flipped behind pgbk's back (same size and mtime, so
    // rsync links it unread): the staged copy is only rsync's basis, and the next
    // backup refers to the object the first one stored and verified.
    let victim = staged.join(&rel);
    let mtime = std::fs::metadata(&victim).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[9000] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let again = pg.json(&["backup", "pg"]);
    assert_eq!(again["status"], "DONE", "{again}");
    let id = again["backup_id"].as_str().unwrap().to_string();
    let third = listed(&id);
    let still = third.iter().find(|e| e["path"] == rel.as_str()).unwrap();
    assert_eq!(still["in_backup"], ids[0].as_str(), "{still}");

    // The backups the newest refers to are deleted, as retention would: each stays
    // a shell holding only the objects a remaining backup refers to.
    let objects = |id: &str| -> Vec<String> {
        store
            .list(&format!("pg/backups/{id}/"))
            .map(|m| m.unwrap().key)
            .collect()
    };
    let bytes = |id: &str| -> u64 {
        store
            .list(&format!("pg/backups/{id}/"))
            .map(|m| m.unwrap().size)
            .sum()
    };
    let before = objects(&ids[0]);
    let held = bytes(&ids[0]);
    let deleted = pg.json(&["delete", "pg", &ids[0]]);
    // What was freed is what went: the objects a remaining backup refers to stay.
    let freed = deleted["freed_bytes"].as_u64().unwrap();
    assert_eq!(freed, held - bytes(&ids[0]), "{deleted}");
    let after = objects(&ids[0]);
    assert!(after.contains(&still_key), "{after:?}");
    assert!(
        !after.iter().any(|k| k.ends_with("/backup.json")),
        "{after:?}"
    );
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    pg.ok(&["delete", "pg", &ids[1]]);
    assert!(objects(&ids[0]).contains(&still_key));
    let verified = pg.json(&["verify-backup", "pg", &id]);
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(
        verified["files"]["files"].as_u64(),
        Some(third.iter().filter(|e| e["kind"] == "file").count() as u64),
        "{verified}"
    );

    // Recovered from the one backup left: the frozen table's file is the server's,
    // byte for byte (read from the first backup's object), and every row is there.
    let target = target_between_batches(&c, &sw, "rsync-test", (601, 650, 700));
    let (dir, data) = recover_to_time(&pg, &target, "pgbk-s3-rsync-ref-");
    assert!(
        std::fs::read(data.join(&rel)).unwrap() == std::fs::read(c.datadir.join(&rel)).unwrap(),
        "the restored {rel} differs from the server's"
    );
    let r = Cluster::from_datadir(dir, ClusterOptions::default());
    r.wait_promoted();
    assert_eq!(r.psql("select count(*) from t"), "650");
    assert_eq!(r.psql("select count(*) from still"), "20000");
    drop(r);
    rw.term();
    let list = pg.json(&["list-backups", "pg"]);
    assert_eq!(done_backups(&list), 1, "{list}");
}

#[test]
fn a_passive_copy_into_a_bucket_resumes_verifies_and_recovers() {
    use common::peer::{add_passive_server, backup_summary, kill_replicate_midway, replicate};
    use common::{pg_scratch_dir, Cluster, ClusterOptions, Sshd};
    // Region A: a local home.
    let c = Cluster::new(ClusterOptions::default());
    c.pgbench_init(1);
    // Tables above the bundle limit: objects of their own, so the copy takes a while.
    let sql: String = (0..60)
        .map(|i| format!("create table own{i} as select generate_series(1, 10000) g;\n"))
        .collect();
    c.psql(&sql);
    let a = common::Pgbk::new();
    a.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let mut rw = a.start_receive_wal("pg1", &c);
    let id = a.json(&["backup", "pg1"])["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.psql("create table marker as select 'after the backup' as note");
    a.archive_now("pg1");
    rw.term();

    // Region B: its repository is a bucket.
    let sw = SeaweedFs::start();
    let sshd = Sshd::start();
    let b = common::Pgbk::new();
    add_passive_server(
        &b,
        "pg1",
        &sshd,
        &a,
        &format!("parallel_jobs = 2\n{}", sw.server_conf("region-b")),
    );
    let store = S3Store::new(sw.settings("region-b")).unwrap();
    let objects = |store: &S3Store| store.list(&format!("pg1/backups/{id}/")).count();

    // Killed in the middle of the copy (slowed by the documented test hook).
    kill_replicate_midway(&b, "pg1", "B to store some objects", || {
        objects(&store) >= 20
    });

    // The next pass stores only what is missing, and the backup is DONE in the bucket.
    let report = replicate(&b, "pg1");
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["backups_copied"][0], id.as_str(), "{report}");
    assert!(report["files_present"].as_u64().unwrap() >= 10, "{report}");
    assert_eq!(backup_summary(&b, "pg1"), backup_summary(&a, "pg1"));
    let info = read_all(&store, &format!("pg1/backups/{id}/backup.json"));
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["status"], "DONE", "{info}");
    assert!(
        !b.home.join("pg1/backups").join(&id).exists(),
        "backup objects left in B's home"
    );
    let wal = store.list("pg1/wals/").count();
    assert!(wal >= 2, "{wal} WAL objects in the bucket");
    let verified = b.json(&["verify-backup", "pg1", &id]);
    assert_eq!(verified["ok"], true, "{verified}");
    let again = replicate(&b, "pg1");
    assert_eq!(again["files_copied"], 0, "{again}");
    assert_eq!(again["wal_copied"], 0, "{again}");

    // B recovers from the bucket with the row written after the backup.
    let dir = pg_scratch_dir("pgbk-s3-passive-");
    let data = dir.path().join("data");
    b.ok(&["recover", "pg1", "latest", data.to_str().unwrap()]);
    let r = Cluster::from_datadir(dir, ClusterOptions::default());
    r.wait_promoted();
    assert_eq!(r.psql("select note from marker"), "after the backup");
    assert_eq!(r.psql("select count(*) from own59"), "10000");
    drop(r);

    // sync-info cannot serve a passive peer from a bucket: one line, exit 2.
    let refused = b.run(&["sync-info", "pg1"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(error_line(&refused).contains("sync-info"), "{refused:?}");
}
