//! `backup` on real PostgreSQL 15 clusters: what a DBA needs from a base backup.
//!
//! - taken under pgbench load it ends DONE, and plain `zstd -d` of its files gives a
//!   data directory `pg_verifybackup` accepts;
//! - a tablespace outside the data directory is stored and listed;
//! - a backup killed with SIGKILL is marked FAILED by the next one, which is DONE
//!   (and removes what the killed one kept for `--resume`), and a second concurrent
//!   backup is refused naming the first one's pid;
//! - the server stopping mid-backup leaves it FAILED with the reason, SIGTERM leaves
//!   it FAILED "interrupted", each keeping only what `--resume` can reuse;
//! - a full filesystem fails it cleanly (catalog consistent, nothing partial left
//!   behind), and a backup after growing the filesystem is DONE;
//! - `--no-wait` leaves it WAITING_FOR_WALS until receive-wal archives its WAL.

mod common;
use common::{pg_scratch_dir, pg_verifybackup, scratch_dir, Cluster, ClusterOptions, Pgbk};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `conf.d/pg1.conf` streaming from `cluster`, plus `extra` lines.
fn configure(pg: &Pgbk, cluster: &Cluster, extra: &str) {
    pg.add_server(
        "pg1",
        &format!(
            "conninfo = {}\nstreaming_conninfo = %(conninfo)s\nbackup_method = postgres\n\
             streaming_archiver = on\nslot_name = pgbk\ncreate_slot = auto\n\
             immediate_checkpoint = on\n{extra}",
            cluster.conninfo()
        ),
    );
}

fn backups_dir(pg: &Pgbk) -> PathBuf {
    pg.home.join("pg1/backups")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn info_of(pg: &Pgbk, id: &str) -> Value {
    read_json(&backups_dir(pg).join(id).join("backup.json"))
}

/// Nothing of a failed backup is left but its backup.json.
fn assert_only_backup_json_left(pg: &Pgbk, id: &str) {
    let dir = backups_dir(pg).join(id);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["backup.json".to_string()],
        "left in {}",
        dir.display()
    );
}

/// A FAILED backup keeps backup.json and, for `backup --resume`, only the objects its
/// resume journal names (stored whole before it stopped) and the journal itself.
fn assert_only_resumable_left(pg: &Pgbk, id: &str) {
    let dir = backups_dir(pg).join(id);
    let journal = std::fs::read_to_string(dir.join("resume.jsonl")).unwrap_or_default();
    let named: Vec<String> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["object"].as_str().map(str::to_string))
        .collect();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(
                rel == "backup.json"
                    || (rel == "resume.jsonl" && !named.is_empty())
                    || named.contains(&rel),
                "{rel} left in {}",
                dir.display()
            );
        }
    }
}

/// Every catalog row matches its backup.json (the truth).
fn assert_catalog_matches_disk(pg: &Pgbk) -> Vec<pgbk::backup::BackupInfo> {
    let cat = pgbk::catalog::Catalog::open(&pg.home).expect("open catalog");
    let rows: Vec<pgbk::backup::BackupInfo> = cat.backups("pg1").expect("catalog backups");
    for b in &rows {
        let disk = info_of(pg, &b.backup_id);
        assert_eq!(
            disk["status"],
            b.status.as_str(),
            "catalog and backup.json disagree: {disk}"
        );
    }
    let on_disk = std::fs::read_dir(backups_dir(pg))
        .unwrap()
        .flatten()
        .count();
    assert_eq!(rows.len(), on_disk, "catalog rows vs backup folders");
    rows
}

/// Decompresses the data directory (`tablespace` None) or a tablespace of the
/// backup in `dir` into `dest` without pgbk: its own objects (`data/` or
/// `tablespaces/<oid>/`) with the plain zstd binary, empty directories included; the
/// small files by their range of a bundle, and the empty ones, as files.jsonl says.
fn zstd_restore(dir: &Path, tablespace: Option<u32>, dest: &Path) {
    let src = match tablespace {
        None => dir.join("data"),
        Some(oid) => dir.join(format!("tablespaces/{oid}")),
    };
    std::fs::create_dir_all(dest).unwrap();
    let list = std::fs::read_to_string(dir.join("files.jsonl")).unwrap();
    for e in list
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
    {
        if e["kind"] != "file" || e["tablespace"].as_u64().map(|o| o as u32) != tablespace {
            continue;
        }
        let path = dest.join(e["path"].as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if e["object"].is_null() {
            std::fs::write(&path, b"").unwrap();
        } else if let (Some(off), Some(len)) = (e["offset"].as_u64(), e["length"].as_u64()) {
            let bundle = std::fs::read(dir.join(e["object"].as_str().unwrap())).unwrap();
            let range = &bundle[off as usize..(off + len) as usize];
            std::fs::write(&path, zstd::stream::decode_all(range).unwrap()).unwrap();
        }
    }
    if !src.is_dir() {
        return;
    }
    let out = Command::new("zstd")
        .args(["-d", "-q", "-r", "."])
        .arg("--output-dir-mirror")
        .arg(dest)
        .current_dir(&src)
        .output()
        .expect("run zstd");
    assert!(
        out.status.success(),
        "zstd -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fn dirs(src: &Path, dest: &Path) {
        for e in std::fs::read_dir(src).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                let d = dest.join(e.file_name());
                std::fs::create_dir_all(&d).unwrap();
                dirs(&e.path(), &d);
            }
        }
    }
    dirs(&src, dest);
}

fn files_jsonl(pg: &Pgbk, id: &str) -> Vec<Value> {
    std::fs::read_to_string(backups_dir(pg).join(id).join("files.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn backup_under_pgbench_load_is_done_and_plain_zstd_gives_a_directory_pg_verifybackup_accepts() {
    let cluster = Cluster::new(ClusterOptions::default());
    cluster.pgbench_init(10);
    let pg = Pgbk::new();
    configure(&pg, &cluster, "");
    let _rw = pg.start_receive_wal("pg1", &cluster);

    let mut load = cluster.pgbench(120, 2);
    let info = pg.json(&["backup", "pg1", "--name", "under-load"]);
    let _ = load.kill();
    let _ = load.wait();

    assert_eq!(info["status"], "DONE", "{info}");
    assert_eq!(info["name"], "under-load");
    assert_eq!(info["method"], "postgres");
    assert_eq!(
        info["server_version"].as_u64().unwrap() / 10000,
        15,
        "{info}"
    );
    assert_eq!(info["system_id"], cluster.system_id());
    assert!(info["size_bytes"].as_u64().unwrap() > 100 << 20, "{info}");
    assert!(info["stored_bytes"].as_u64().unwrap() < info["size_bytes"].as_u64().unwrap());
    assert!(info["has_manifest"].as_bool().unwrap());
    assert!(info["pid"].is_null(), "{info}");
    let id = info["backup_id"].as_str().unwrap();
    assert_eq!(id.len(), 15, "{id}");
    assert_eq!(info_of(&pg, id), info, "backup.json is what was printed");
    // The WAL it needs is archived.
    let archived = pg.archived_segments("pg1");
    for w in [&info["begin_wal"], &info["end_wal"]] {
        assert!(
            archived.contains(&w.as_str().unwrap().to_string()),
            "{w} not in {archived:?}"
        );
    }

    // Stored files: private, and every regular file listed with its checksum.
    use std::os::unix::fs::PermissionsExt;
    let dir = backups_dir(&pg).join(id);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("data/base/1/1255.zst")), 0o600);
    assert_eq!(mode(&dir.join("bundles/000001.zst")), 0o600);
    assert_eq!(mode(&dir.join("data/base")), 0o700);
    let files = files_jsonl(&pg, id);
    let regular = files.iter().filter(|f| f["kind"] == "file").count() as u64;
    assert_eq!(regular, info["file_count"].as_u64().unwrap());
    assert!(
        files
            .iter()
            .any(|f| f["kind"] == "dir" && f["path"] == "pg_wal"),
        "empty dirs are recorded"
    );

    let restored = scratch_dir("pgbk-restored-");
    let target = restored.path().join("data");
    zstd_restore(&dir, None, &target);
    std::fs::copy(dir.join("backup_manifest"), target.join("backup_manifest")).unwrap();
    assert!(target.join("pg_wal").is_dir());
    assert!(target.join("backup_label").is_file());
    pg_verifybackup(&target, &[]);
}

#[test]
fn a_tablespace_outside_the_data_directory_is_stored_and_listed() {
    let cluster = Cluster::new(ClusterOptions::default());
    let ts_dir = pg_scratch_dir("pgbk-ts-");
    cluster.psql(&format!(
        "create tablespace ts location '{}'",
        ts_dir.path().display()
    ));
    cluster.psql("create table in_ts tablespace ts as select g, md5(g::text) as m from generate_series(1, 100000) g");
    let oid: u32 = cluster
        .psql("select oid from pg_tablespace where spcname = 'ts'")
        .parse()
        .unwrap();
    let pg = Pgbk::new();
    configure(&pg, &cluster, "");
    let _rw = pg.start_receive_wal("pg1", &cluster);

    // Item 8 of the fixes issue: a spread checkpoint is announced, and the copy's
    // time and throughput are reported apart from the whole duration.
    cluster.psql("checkpoint");
    let out = pg.run(&["backup", "pg1", "--no-immediate-checkpoint"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("waiting for PostgreSQL's checkpoint (spread; --immediate-checkpoint or immediate_checkpoint = on skips the wait)"),
        "{out:?}"
    );
    assert!(out.stdout.contains("Copy time: "), "{out:?}");
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let info = pg.json(&["backup", "pg1"]);
    assert_eq!(info["status"], "DONE", "{info}");
    assert!(info["copy_millis"].as_u64().is_some(), "{info}");
    let ts = &info["tablespaces"];
    assert_eq!(ts.as_array().unwrap().len(), 1, "{info}");
    assert_eq!(ts[0]["oid"], oid);
    assert_eq!(ts[0]["name"], "ts");
    assert_eq!(ts[0]["location"], ts_dir.path().display().to_string());

    let id = info["backup_id"].as_str().unwrap();
    let dir = backups_dir(&pg).join(id);
    let files = files_jsonl(&pg, id);
    let link = files
        .iter()
        .find(|f| f["kind"] == "symlink")
        .unwrap_or_else(|| panic!("no symlink entry"));
    assert_eq!(link["path"], format!("pg_tblspc/{oid}"));
    assert_eq!(link["target"], ts_dir.path().display().to_string());
    assert!(
        std::fs::symlink_metadata(dir.join(format!("data/pg_tblspc/{oid}"))).is_err(),
        "symlinks are never created in the repository"
    );
    let in_ts: Vec<&Value> = files.iter().filter(|f| f["tablespace"] == oid).collect();
    assert!(
        in_ts
            .iter()
            .any(|f| f["kind"] == "file" && f["size"].as_u64().unwrap() > 4 << 20),
        "{in_ts:?}"
    );
    // Its large files have objects of their own under tablespaces/<oid>/, its
    // small ones are in bundles, its empty ones have none.
    for f in in_ts.iter().filter(|f| f["kind"] == "file") {
        let Some(object) = f["object"].as_str() else {
            assert_eq!(f["size"], 0, "{f}");
            continue;
        };
        let own = format!("tablespaces/{oid}/PG_15_");
        assert!(
            object.starts_with(&own) || (f["offset"].is_u64() && object.starts_with("bundles/")),
            "{object}"
        );
        assert_eq!(
            object.starts_with(&own),
            f["size"].as_u64().unwrap() >= 256 << 10,
            "{f}"
        );
        assert!(dir.join(object).is_file(), "{object}");
    }

    // Restored with plain zstd, tablespace linked back in: pg_verifybackup accepts it.
    let restored = scratch_dir("pgbk-restored-");
    let data = restored.path().join("data");
    let tsr = restored.path().join("ts");
    zstd_restore(&dir, None, &data);
    zstd_restore(&dir, Some(oid), &tsr);
    std::fs::create_dir_all(data.join("pg_tblspc")).unwrap();
    std::os::unix::fs::symlink(&tsr, data.join(format!("pg_tblspc/{oid}"))).unwrap();
    std::fs::copy(dir.join("backup_manifest"), data.join("backup_manifest")).unwrap();
    pg_verifybackup(&data, &[]);
}

#[test]
fn a_killed_backup_is_failed_by_the_next_one_which_is_done_and_a_concurrent_one_is_refused() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    // 1 MiB/s: a fresh cluster takes ~20 s, time enough to interfere.
    configure(&pg, &cluster, "bandwidth_limit = 1024\n");
    let _rw = pg.start_receive_wal("pg1", &cluster);

    let mut first = pg.spawn(&["backup", "pg1"]);
    let old = pg.wait_backup_started("pg1", &mut first);
    assert_eq!(info_of(&pg, &old)["pid"], first.pid());

    let second = pg.run(&["backup", "pg1"]);
    assert_eq!(second.code, 1, "{second:?}");
    let last = second.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pgbk: ")
            && last.contains(&format!("pid {}", first.pid()))
            && last.contains("already running"),
        "{second:?}"
    );

    first.kill9();
    assert_eq!(info_of(&pg, &old)["status"], "STARTED");

    configure(&pg, &cluster, "");
    let new = pg.json(&["backup", "pg1"]);
    assert_eq!(new["status"], "DONE", "{new}");
    assert_ne!(new["backup_id"], old.as_str());
    let stale = info_of(&pg, &old);
    assert_eq!(stale["status"], "FAILED", "{stale}");
    assert!(
        stale["error"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", first.pid())),
        "{stale}"
    );
    assert_only_backup_json_left(&pg, &old);
    let rows = assert_catalog_matches_disk(&pg);
    assert_eq!(rows.len(), 2);
    // Barman's names: `last-failed` is the newest FAILED backup, `show-backups` and
    // `verify` are aliases.
    let lf = pg.json(&["show-backups", "pg1", "last-failed"]);
    assert_eq!(lf["backup_id"], old.as_str(), "{lf}");
    let v = pg.json(&["verify", "pg1", "latest"]);
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn the_server_stopping_mid_backup_leaves_it_failed_with_the_reason() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    configure(&pg, &cluster, "bandwidth_limit = 1024\n");
    let mut bg = pg.spawn(&["backup", "pg1"]);
    let id = pg.wait_backup_started("pg1", &mut bg);
    cluster.stop("immediate");
    let code = bg.wait_timeout(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{}", bg.log_tail(30));
    let info = info_of(&pg, &id);
    assert_eq!(info["status"], "FAILED", "{info}");
    let reason = info["error"].as_str().unwrap();
    assert!(
        reason.contains("BASE_BACKUP") && reason.contains("connection"),
        "{reason}"
    );
    assert!(info["pid"].is_null());
    let log = bg.log();
    assert!(
        log.contains(&format!(
            "pgbk: backup {id} of server 'pg1' failed: {reason}"
        )),
        "{log}"
    );
    assert_only_resumable_left(&pg, &id);
    assert_catalog_matches_disk(&pg);
}

#[test]
fn sigterm_mid_backup_leaves_it_failed_interrupted_and_frees_the_lock() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    configure(&pg, &cluster, "bandwidth_limit = 1024\n");
    let mut bg = pg.spawn(&["backup", "pg1"]);
    let id = pg.wait_backup_started("pg1", &mut bg);
    assert_eq!(bg.term(), 1, "{}", bg.log_tail(30));
    let info = info_of(&pg, &id);
    assert_eq!(info["status"], "FAILED", "{info}");
    assert_eq!(info["error"], "interrupted");
    assert_only_resumable_left(&pg, &id);
    assert_catalog_matches_disk(&pg);
    // The lock went with the process: the next backup runs (and waits for no WAL).
    configure(&pg, &cluster, "");
    let next = pg.json(&["backup", "pg1", "--no-wait"]);
    assert_eq!(next["status"], "WAITING_FOR_WALS", "{next}");
}

/// A tmpfs mounted for one test; unmounted (lazily) on drop, panics included.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "pgbk-test",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_filesystem_fails_the_backup_cleanly_and_one_after_growing_it_is_done() {
    let cluster = Cluster::new(ClusterOptions::default());
    // ~60 MB that zstd cannot shrink, written before receive-wal starts (its WAL is
    // not archived: the slot starts after it).
    cluster.psql(
        "create table noise as select g, decode(string_agg(md5(random()::text || g || i), ''), 'hex') as b \
         from generate_series(1, 60000) g, generate_series(1, 64) i group by g",
    );
    cluster.psql("checkpoint");
    let pg = Pgbk::new();
    let Some(fs) = Tmpfs::mount(&pg.home, "48m") else {
        eprintln!("skipping: needs root and mount");
        return;
    };
    configure(&pg, &cluster, "");
    let mut rw = pg.start_receive_wal("pg1", &cluster);

    let out = pg.run(&["backup", "pg1", "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let failed: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let reason = failed["error"].as_str().unwrap();
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(out.stderr.contains("No space left on device"), "{out:?}");
    let old = failed["backup_id"].as_str().unwrap().to_string();
    assert_eq!(info_of(&pg, &old), failed);
    assert_only_resumable_left(&pg, &old);
    assert_catalog_matches_disk(&pg);

    // receive-wal rides out the full disk (it retries; the slot keeps the WAL) and
    // archives what it holds once there is room again.
    assert!(
        rw.is_running(),
        "receive-wal died on a full disk: {}",
        rw.log_tail(20)
    );
    fs.resize("400m");
    let done = pg.json(&["backup", "pg1"]);
    assert_eq!(done["status"], "DONE", "{done}");
    let rows = assert_catalog_matches_disk(&pg);
    let statuses: Vec<&str> = rows.iter().map(|b| b.status.as_str()).collect();
    assert_eq!(statuses, ["FAILED", "DONE"]);
    drop(rw);
}

#[test]
fn no_wait_leaves_it_waiting_for_wals_until_receive_wal_archives_them() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    configure(&pg, &cluster, "");
    // The slot keeps the WAL for receive-wal, which is not running yet.
    pg.ok(&["receive-wal", "--create-slot", "pg1"]);

    let first = pg.json(&["backup", "pg1", "--no-wait", "--name", "nightly"]);
    assert_eq!(first["status"], "WAITING_FOR_WALS", "{first}");
    let id = first["backup_id"].as_str().unwrap().to_string();

    // Names must stay unambiguous.
    for bad in ["nightly", "latest", "20200101T000000"] {
        let out = pg.run(&["backup", "pg1", "--name", bad]);
        assert_eq!(out.code, 2, "--name {bad}: {out:?}");
    }

    // Waiting a second without receive-wal: exit 1, one line that says what to do.
    let out = pg.run(&["backup", "pg1", "--wait-timeout", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    let last = out
        .stderr
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.contains("WAITING_FOR_WALS")
            && last.contains("DONE once")
            && last.contains("receive-wal"),
        "{last}"
    );
    assert_eq!(info_of(&pg, &id)["status"], "WAITING_FOR_WALS");

    let _rw = pg.start_receive_wal("pg1", &cluster);
    pg.ok(&["switch-wal", "--force", "--archive", "pg1"]);
    // The next backup refreshes the older ones first.
    let third = pg.json(&["backup", "pg1"]);
    assert_eq!(third["status"], "DONE", "{third}");
    assert_eq!(info_of(&pg, &id)["status"], "DONE");
    let rows = assert_catalog_matches_disk(&pg);
    assert!(rows.iter().all(|b| b.status.as_str() == "DONE"), "{rows:?}");
}

/// `backup all` (Barman's): every active server in turn; one that cannot be reached
/// is reported in one line naming it and does not stop the others; exit 1.
#[test]
fn backup_all_backs_up_each_active_server_and_names_the_one_that_fails() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    configure(&pg, &cluster, "");
    let port = common::free_port();
    let down = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    pg.add_server(
        "down",
        &format!(
            "conninfo = {down}\nstreaming_conninfo = %(conninfo)s\nbackup_method = postgres\n"
        ),
    );
    pg.add_server(
        "off",
        &format!("active = off\nconninfo = {down}\nbackup_method = postgres\n"),
    );
    let out = pg.run(&["backup", "all", "--no-wait", "--format", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let docs: Value = serde_json::from_str(&out.stdout).expect("one JSON array");
    let docs = docs.as_array().expect("array");
    assert_eq!(docs.len(), 2, "{docs:?}");
    let failed = docs.iter().find(|d| d["server"] == "down").expect("down");
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'down'")),
        "{failed}"
    );
    let taken = docs.iter().find(|d| d["server"] == "pg1").expect("pg1");
    assert_eq!(taken["status"], "WAITING_FOR_WALS", "{taken}");

    let text = pg.run(&["backup", "all", "--no-wait"]);
    assert_eq!(text.code, 1, "{text:?}");
    assert!(
        text.stdout.contains("Starting backup of server 'pg1'")
            && !text.stdout.contains("server 'off'"),
        "{text:?}"
    );
    let errors = text.error_lines();
    assert_eq!(errors.len(), 2, "{text:?}");
    assert!(errors[0].contains("'down'"), "{text:?}");
    assert_eq!(errors[1], "pgbk: backup failed for server(s) down");
    assert_eq!(
        pg.json(&["list-backups", "pg1"]).as_array().map(Vec::len),
        Some(2)
    );
}
