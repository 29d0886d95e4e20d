//! Reading verbs never write (issue 15): with the repository home mounted read-only,
//! `list-backups`, `show-backup`, `list-files`, `check-backup`, `verify-backup`,
//! `status` and `recover` (into a writable destination) all work; a backup whose
//! process was killed is reported as stale on stderr, and its backup.json and
//! catalog row stay as they were. The next `backup` (a verb that owns the
//! repository) marks it FAILED.
//!
//! Root ignores file modes, so the home is made read-only with a read-only bind
//! mount of itself (`mount --bind`, then `remount,ro,bind`).

mod common;
use common::{wait_receive_wal, Cluster, ClusterOptions, Pgbk};
use pgbk::backup::BackupInfo;
use pgbk::catalog::Catalog;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn backup_json(pg: &Pgbk, id: &str) -> PathBuf {
    pg.home.join("pg1/backups").join(id).join("backup.json")
}

/// The catalog's row of a backup (read-only, so it works on the mounted home too).
fn catalog_row(home: &Path, id: &str) -> BackupInfo {
    let cat = Catalog::open_read_only(home)
        .expect("open catalog")
        .expect("a catalog");
    let rows: Vec<BackupInfo> = cat.backups("pg1").expect("catalog backups");
    rows.into_iter()
        .find(|b| b.backup_id == id)
        .expect("backup in the catalog")
}

/// A folder mounted read-only over itself until dropped.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        let run = |args: &[&str]| {
            let out = Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["--bind"]);
        let ro = ReadOnly(dir.to_path_buf());
        run(&["-o", "remount,ro,bind"]);
        ro
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn reading_verbs_work_on_a_read_only_home_and_report_a_stale_backup_without_rewriting_it() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    pg.streaming_server_with("pg1", &cluster, "immediate_checkpoint = on\n");
    let rw = pg.spawn(&["receive-wal", "pg1"]);
    wait_receive_wal(&cluster);
    let done = pg.json(&["backup", "pg1"]);
    assert_eq!(done["status"], "DONE", "{done}");
    let id = done["backup_id"].as_str().unwrap().to_string();

    // A second backup killed mid-way stays STARTED: stale.
    std::thread::sleep(Duration::from_millis(1100));
    pg.streaming_server_with(
        "pg1",
        &cluster,
        "immediate_checkpoint = on\nbandwidth_limit = 1024\n",
    );
    let mut bg = pg.spawn(&["backup", "pg1"]);
    let stale = pg.wait_backup_started("pg1", &mut bg);
    let pid = bg.pid();
    bg.kill9();
    // Nothing writes to the home from here on.
    drop(rw);
    let json_before = std::fs::read(backup_json(&pg, &stale)).unwrap();
    let row_before = catalog_row(&pg.home, &stale);
    assert_eq!(row_before.status.as_str(), "STARTED");

    let ro = ReadOnly::mount(&pg.home);
    assert!(
        std::fs::write(pg.home.join("probe"), b"x").is_err(),
        "the home is read-only"
    );
    let stale_line = format!("backup {stale} is stale: its process {pid} is gone");
    let dest = common::scratch_dir("pgbk-ro-recover-");
    let data = dest.path().join("data");
    let verbs: [Vec<&str>; 7] = [
        vec!["list-backups", "pg1"],
        vec!["show-backup", "pg1", &id],
        vec!["list-files", "pg1", &id],
        vec!["check-backup", "pg1", &id],
        vec!["verify-backup", "pg1", &id],
        vec!["status", "pg1"],
        vec!["recover", "pg1", &id, data.to_str().unwrap()],
    ];
    for args in &verbs {
        let out = pg.run(args);
        assert_eq!(
            out.code,
            0,
            "`pgbk {}` on a read-only home: {out:?}",
            args.join(" ")
        );
        assert!(
            out.stderr.contains(&stale_line),
            "`pgbk {}` reports the stale backup: {}",
            args.join(" "),
            out.stderr
        );
    }
    assert!(
        data.join("PG_VERSION").is_file(),
        "recovered into the destination"
    );
    let list = pg.json(&["list-backups", "pg1"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|b| b["backup_id"] == stale.as_str()),
        "{list}"
    );
    // Reported, not rewritten.
    assert_eq!(
        std::fs::read(backup_json(&pg, &stale)).unwrap(),
        json_before
    );
    assert_eq!(catalog_row(&pg.home, &stale), row_before);
    drop(ro);

    // The next backup owns the repository: it marks the stale one FAILED.
    pg.streaming_server_with("pg1", &cluster, "immediate_checkpoint = on\n");
    let next = pg.json(&["backup", "pg1", "--no-wait"]);
    assert_ne!(next["status"], "FAILED", "{next}");
    let after = catalog_row(&pg.home, &stale);
    assert_eq!(after.status.as_str(), "FAILED", "{after:?}");
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(backup_json(&pg, &stale)).unwrap()).unwrap();
    assert_eq!(on_disk["status"], "FAILED", "{on_disk}");
    assert!(
        on_disk["error"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {pid}")),
        "{on_disk}"
    );
}
