//! The verbs a DBA runs on backups once they exist: list-backups, show-backup,
//! list-files, check-backup, verify-backup, delete and keep — on real backups of a
//! real PostgreSQL 15 cluster, with receive-wal archiving.
//!
//! What a DBA fears, pinned: a byte flipped in a stored file or a WAL segment lost
//! from the archive is named, not silently accepted; delete never takes a kept
//! backup, the last good one, or one being taken, and never removes WAL a remaining
//! backup needs.

mod common;
use common::{pg_scratch_dir, BackgroundPgbk, Cluster, ClusterOptions, Pgbk};
use serde_json::Value;
use std::path::PathBuf;

/// A cluster streaming into a pgbk repository as server `pg1`.
struct Env {
    cluster: Cluster,
    pg: Pgbk,
    _receive_wal: BackgroundPgbk,
}

fn env() -> Env {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    pg.streaming_server("pg1", &cluster);
    let rw = pg.start_receive_wal("pg1", &cluster);
    Env {
        cluster,
        pg,
        _receive_wal: rw,
    }
}

impl Env {
    /// Takes a backup (optionally named) and returns its id.
    fn backup(&self, name: Option<&str>) -> String {
        let mut args = vec!["backup", "pg1", "--immediate-checkpoint"];
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        self.pg.ok(&args);
        let shown = self.pg.json(&["show-backup", "pg1", "latest"]);
        assert_eq!(shown["status"], "DONE", "{shown}");
        shown["backup_id"].as_str().unwrap().to_string()
    }

    fn show(&self, id: &str) -> Value {
        self.pg.json(&["show-backup", "pg1", id])
    }

    fn backup_dir(&self, id: &str) -> PathBuf {
        self.pg.home.join("pg1/backups").join(id)
    }

    /// Archived segment file of `name`.
    fn segment_file(&self, name: &str) -> PathBuf {
        self.pg
            .wals_dir("pg1")
            .join(&name[..16])
            .join(format!("{name}.zst"))
    }

    /// Closes the current segment and waits until it is archived.
    fn switch(&self) {
        self.pg.ok(&["switch-wal", "--force", "--archive", "pg1"]);
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[test]
fn a_flipped_byte_and_a_lost_segment_are_named_an_untouched_backup_passes() {
    let e = env();
    e.cluster
        .psql("create table t as select g, md5(g::text) from generate_series(1, 50000) g");
    let id = e.backup(None);

    let out = e.pg.run(&["verify-backup", "pg1", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("verified"), "{}", out.stdout);
    let v = e.pg.json(&["verify-backup", "pg1", &id]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["files"]["files"].as_u64().unwrap() > 100, "{v}");
    assert!(v["files"]["manifest_files"].as_u64().unwrap() > 100, "{v}");
    let out = e.pg.run(&["check-backup", "pg1", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("archived and readable"),
        "{}",
        out.stdout
    );

    // The biggest stored file: a byte flipped in the middle of its zstd data.
    let files = e.pg.json(&["list-files", "pg1", &id]);
    let victim = files
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "file")
        .max_by_key(|f| f["stored_size"].as_u64().unwrap())
        .unwrap()
        .clone();
    let object = PathBuf::from(s(&victim["stored_path"]));
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5A;
    std::fs::write(&object, bytes).unwrap();
    let out = e.pg.run(&["verify-backup", "pg1", &id]);
    assert_eq!(out.code, 1, "{out:?}");
    let path = s(&victim["path"]);
    assert!(
        out.stdout.contains(path) && out.stdout.contains("1 bad or missing file"),
        "{}",
        out.stdout
    );
    let bad = e.pg.run(&["verify-backup", "pg1", &id, "--format", "json"]);
    assert_eq!(bad.code, 1);
    let bad: Value = serde_json::from_str(&bad.stdout).unwrap();
    assert_eq!(bad["ok"], false);
    assert_eq!(
        bad["files"]["problems"].as_array().unwrap().len(),
        1,
        "{bad}"
    );
    assert_eq!(bad["files"]["problems"][0]["path"], path);
    // A stored object gone is named too (a file with an object of its own: the
    // small ones share bundles).
    let lost = files
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["offset"].is_null() && f["object"].is_string() && f["path"] != victim["path"])
        .unwrap()
        .clone();
    std::fs::remove_file(s(&lost["stored_path"])).unwrap();
    let out = e.pg.run(&["verify-backup", "pg1", &id]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains(&format!("missing {}", s(&lost["path"]))),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("2 bad or missing file"),
        "{}",
        out.stdout
    );

    // The WAL is untouched: check-backup still passes. Then a segment goes missing.
    assert_eq!(e.pg.run(&["check-backup", "pg1", &id]).code, 0);
    let end_wal = s(&e.show(&id)["end_wal"]).to_string();
    let seg = e.segment_file(&end_wal);
    let original = std::fs::read(&seg).unwrap();
    std::fs::remove_file(&seg).unwrap();
    let out = e.pg.run(&["check-backup", "pg1", &id]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains(&format!("missing {end_wal}")),
        "{}",
        out.stdout
    );
    let shown = e.show(&id);
    assert_eq!(shown["wal"]["present"], false, "{shown}");
    assert_eq!(shown["wal"]["missing"][0], end_wal.as_str());
    // Back, but damaged: unreadable, named.
    let mut damaged = original.clone();
    damaged[original.len() / 3] ^= 0xFF;
    std::fs::write(&seg, damaged).unwrap();
    let out = e.pg.run(&["check-backup", "pg1", &id, "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let j: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["wal"]["problems"][0]["segment"], end_wal.as_str(), "{j}");
    assert_eq!(j["wal"]["problems"][0]["issue"], "unreadable", "{j}");
    std::fs::write(&seg, original).unwrap();
    assert_eq!(e.pg.run(&["check-backup", "pg1", &id]).code, 0);
}

#[test]
fn backups_are_listed_shown_and_found_by_id_name_latest_and_oldest() {
    let e = env();
    let ts_dir = pg_scratch_dir("pgbk-ts-");
    e.cluster.psql(&format!(
        "create tablespace ts1 location '{}'",
        ts_dir.path().display()
    ));
    e.cluster
        .psql("create table big tablespace ts1 as select g from generate_series(1, 20000) g");
    let oid: u64 = e
        .cluster
        .psql("select oid from pg_tablespace where spcname = 'ts1'")
        .parse()
        .unwrap();
    let first = e.backup(Some("before"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = e.backup(Some("nightly"));
    assert!(first < second);

    // Text: newest first, Barman's fields, both listing names.
    let text = e.pg.ok(&["list-backups", "pg1"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!("pg1 {second} 'nightly' - ")),
        "{text}"
    );
    assert!(
        lines[1].starts_with(&format!("pg1 {first} 'before' - ")),
        "{text}"
    );
    for l in &lines {
        assert!(
            l.contains(" - Size: ") && l.contains(" - Stored: ") && l.ends_with(" - DONE"),
            "{l}"
        );
        assert!(l.contains(" - WAL: 0000000100000000000000"), "{l}");
    }
    assert_eq!(e.pg.ok(&["list-backup", "pg1"]), text);
    assert_eq!(e.pg.ok(&["list-backups", "all"]), text);
    assert_eq!(
        e.pg.ok(&["list-backups", "pg1", "--minimal"]),
        format!("{second}\n{first}\n")
    );

    let list = e.pg.json(&["list-backups", "pg1"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for field in [
        "backup_id",
        "name",
        "status",
        "begin_time",
        "end_time",
        "begin_lsn",
        "end_lsn",
        "begin_wal",
        "end_wal",
        "timeline",
        "size_bytes",
        "stored_bytes",
    ] {
        assert!(!list[0][field].is_null(), "{field} missing in {}", list[0]);
    }
    assert_eq!(list[0]["backup_id"], second.as_str());
    assert_eq!(list[0]["tablespaces"][0]["name"], "ts1", "{}", list[0]);
    assert_eq!(list[0]["tablespaces"][0]["oid"], oid);

    // Every way of naming a backup.
    for (wanted, id) in [
        ("latest", &second),
        ("last", &second),
        ("oldest", &first),
        ("first", &first),
        ("nightly", &second),
        ("before", &first),
        (first.as_str(), &first),
    ] {
        assert_eq!(e.show(wanted)["backup_id"], id.as_str(), "{wanted}");
    }
    let out = e.pg.run(&["show-backup", "pg1", "nope"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("server 'pg1': no backup 'nope'"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");

    // show-backup: everything, plus what is derived.
    let shown = e.show("nightly");
    assert!(
        shown["duration_seconds"].as_f64().unwrap() >= 0.0,
        "{shown}"
    );
    assert!(
        shown["compression_ratio"].as_f64().unwrap() > 1.0,
        "{shown}"
    );
    assert!(!shown["throughput_bytes_per_second"].is_null(), "{shown}");
    assert_eq!(shown["wal"]["present"], true, "{shown}");
    assert_eq!(shown["wal"]["first"], shown["begin_wal"]);
    assert_eq!(shown["wal"]["last"], shown["end_wal"]);
    assert_eq!(shown["has_manifest"], true);
    let text = e.pg.ok(&["show-backup", "pg1", "nightly"]);
    for want in [
        format!("Backup {second}:"),
        "nightly".to_string(),
        format!("ts1 (oid {oid}): {}", ts_dir.path().display()),
        "Compression ratio".to_string(),
        "Archived             : all".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }

    // list-files: data (tablespace files included), wal, full.
    let data = e.pg.ok(&["list-files", "pg1", "latest"]);
    let backup_dir = e.backup_dir(&second);
    assert!(
        data.lines()
            .all(|l| l.starts_with(backup_dir.to_str().unwrap()) && l.ends_with(".zst")),
        "{data}"
    );
    assert!(data.lines().all(|l| std::path::Path::new(l).is_file()));
    assert!(
        data.contains(&format!("/tablespaces/{oid}/PG_15_")),
        "{data}"
    );
    assert!(data.contains("/data/base/1/1255.zst"), "{data}");
    // The small files (global/pg_control among them) are in bundles, each listed once.
    assert!(data.contains("/bundles/000001.zst"), "{data}");
    let mut lines: Vec<&str> = data.lines().collect();
    let all = lines.len();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), all, "{data}");
    let wal = e.pg.ok(&["list-files", "pg1", "latest", "--target", "wal"]);
    let wal_lines: Vec<&str> = wal.lines().collect();
    assert!(!wal_lines.is_empty());
    assert!(
        wal_lines[0].ends_with(&format!("{}.zst", s(&shown["begin_wal"]))),
        "{wal}"
    );
    assert!(
        wal_lines
            .last()
            .unwrap()
            .ends_with(&format!("{}.zst", s(&shown["end_wal"]))),
        "{wal}"
    );
    let full =
        e.pg.ok(&["list-files", "pg1", "latest", "--target", "full"]);
    assert_eq!(full.lines().count(), data.lines().count() + wal_lines.len());
    let js =
        e.pg.json(&["list-files", "pg1", "latest", "--target", "full"]);
    let js = js.as_array().unwrap();
    assert!(
        js.iter()
            .any(|f| f["tablespace"] == oid && f["kind"] == "file"),
        "no tablespace file"
    );
    assert!(js.iter().any(|f| f["kind"] == "dir"));
    assert!(js
        .iter()
        .filter(|f| f["kind"] == "wal")
        .all(|f| f["present"] == true));

    // The tablespace's files are verified against PostgreSQL's manifest too.
    let v = e.pg.json(&["verify-backup", "pg1", "latest"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn delete_and_keep_refuse_what_a_dba_would_regret_and_remove_only_unneeded_wal() {
    let e = env();
    let b1 = e.backup(None);
    for _ in 0..3 {
        e.switch();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b2 = e.backup(None);
    let b2_begin = s(&e.show(&b2)["begin_wal"]).to_string();

    // keep: status, set, show in the listing, refuse delete, release.
    assert_eq!(e.pg.ok(&["keep", "pg1", &b1, "--status"]), "nokeep\n");
    e.pg.ok(&["keep", "pg1", &b1, "--target", "full"]);
    assert_eq!(e.pg.ok(&["keep", "pg1", &b1, "--status"]), "full\n");
    assert_eq!(
        e.pg.json(&["keep", "pg1", "oldest", "--status"])["keep"],
        "full"
    );
    assert!(e
        .pg
        .ok(&["list-backups", "pg1"])
        .contains(" - KEEP:FULL - DONE"));
    let wal_before = e.pg.archived_segments("pg1");
    let out = e.pg.run(&["delete", "pg1", &b1]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("server 'pg1': backup {b1} is kept (full)")),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(e.backup_dir(&b1).join("backup.json").is_file());
    assert_eq!(e.pg.archived_segments("pg1"), wal_before);
    e.pg.ok(&["keep", "pg1", &b1, "--target", "standalone"]);
    assert_eq!(e.pg.ok(&["keep", "pg1", &b1, "--status"]), "standalone\n");
    assert!(e
        .pg
        .ok(&["keep", "pg1", &b1, "--release"])
        .contains("released"));
    assert_eq!(e.pg.ok(&["keep", "pg1", &b1, "--status"]), "nokeep\n");
    let out = e.pg.run(&["keep", "pg1", &b1]);
    assert_eq!(out.code, 2, "{out:?}");

    // Delete the oldest: its folder, its catalog row, and the WAL before b2 go.
    let out = e.pg.ok(&["delete", "pg1", "oldest"]);
    assert!(
        out.contains(&format!("Deleted backup {b1} of server 'pg1'")),
        "{out}"
    );
    assert!(out.contains("Removed "), "{out}");
    assert!(!e.backup_dir(&b1).exists());
    let left = e.pg.archived_segments("pg1");
    assert!(left.len() < wal_before.len(), "nothing removed: {left:?}");
    assert_eq!(
        left.first(),
        Some(&b2_begin),
        "WAL before {b2_begin} should be gone, all after kept: {left:?}"
    );
    assert!(wal_before
        .iter()
        .filter(|w| **w >= b2_begin)
        .all(|w| left.contains(w)));
    assert_eq!(
        e.pg.ok(&["list-backups", "pg1", "--minimal"]),
        format!("{b2}\n")
    );
    assert_eq!(e.pg.run(&["check-backup", "pg1", &b2]).code, 0);
    let out = e.pg.run(&["show-backup", "pg1", &b1]);
    assert_eq!(out.code, 2, "{out:?}");

    // A backup being taken: not deleted, not kept. (Simulated: a STARTED backup.json
    // naming this process, which holds the backup lock.)
    let lock =
        pgbk::lock::JobLock::acquire(&e.pg.home.join("pg1/lock/backup.lock"), "test").unwrap();
    let mut running: Value = serde_json::from_str(
        &std::fs::read_to_string(e.backup_dir(&b2).join("backup.json")).unwrap(),
    )
    .unwrap();
    let running_id = loop {
        let id = pgbk::backup::backup_id_at(chrono::Utc::now());
        if id != b2 {
            break id;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    running["backup_id"] = running_id.clone().into();
    running["status"] = "STARTED".into();
    running["pid"] = std::process::id().into();
    running["end_time"] = Value::Null;
    std::fs::create_dir_all(e.backup_dir(&running_id)).unwrap();
    std::fs::write(
        e.backup_dir(&running_id).join("backup.json"),
        running.to_string(),
    )
    .unwrap();
    let out = e.pg.run(&["delete", "pg1", &running_id]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("is still being taken"), "{out:?}");
    let out = e.pg.run(&["keep", "pg1", &running_id, "--target", "full"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("only DONE backups can be kept"),
        "{out:?}"
    );
    // Its process gone, it becomes FAILED, and can be deleted (removing no WAL).
    drop(lock);
    let out = e.pg.ok(&["list-backups", "pg1"]);
    assert!(
        out.contains(&format!("{running_id} - ")) && out.contains("FAILED ("),
        "{out}"
    );
    e.pg.ok(&["delete", "pg1", &running_id]);

    // The last DONE backup needs --force; then no backup remains and WAL stays.
    let out = e.pg.run(&["delete", "pg1", &b2]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("is the last DONE backup; add --force"),
        "{out:?}"
    );
    assert!(e.backup_dir(&b2).is_dir());
    let out = e.pg.ok(&["delete", "pg1", &b2, "--force"]);
    assert!(
        out.contains("No backup of server 'pg1' remains: archived WAL kept"),
        "{out}"
    );
    assert_eq!(e.pg.archived_segments("pg1"), left);
    assert_eq!(e.pg.ok(&["list-backups", "pg1"]), "");
}

#[test]
fn an_interrupted_delete_is_finished_not_listed() {
    let e = env();
    let id = e.backup(Some("doomed"));
    // pgbk died right after hiding the folder: the backup must not come back.
    let hidden =
        e.pg.home
            .join("pg1/backups")
            .join(format!(".deleting-{id}"));
    std::fs::rename(e.backup_dir(&id), &hidden).unwrap();
    assert_eq!(e.pg.ok(&["list-backups", "pg1"]), "");
    let out = e.pg.run(&["show-backup", "pg1", "doomed"]);
    assert_eq!(out.code, 2, "{out:?}");
    // Reading verbs only report the unfinished delete (issue 15: they never write);
    // the next verb that owns the repository finishes it.
    assert!(
        out.stderr
            .contains(&format!("backup {id} is stale: its delete was interrupted")),
        "{out:?}"
    );
    assert!(hidden.exists());
    e.backup(None);
    assert!(!hidden.exists());
}
