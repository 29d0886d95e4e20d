//! Monitoring on real PostgreSQL 15: `check --nagios` follows the age of the last
//! backup, `status` shows the RPO grow while receive-wal is stopped under load and
//! fall back once it runs again, a deleted catalog is rebuilt from the repository
//! with the same listings, `diagnose` never shows a password, and `list-servers`
//! carries RPO and RTO for monitoring systems.

mod common;
use common::{wait_until, Auth, Cluster, ClusterOptions, Pgbk, PASSWORD};
use serde_json::Value;
use std::time::{Duration, Instant};

fn server_with(pg: &Pgbk, cluster: &Cluster, extra: &str) {
    pg.add_server(
        "pg1",
        &format!(
            "description = monitoring test\n\
             conninfo = {}\n\
             streaming_conninfo = %(conninfo)s\n\
             backup_method = postgres\n\
             streaming_archiver = on\n\
             slot_name = pgbk\n\
             create_slot = auto\n{extra}",
            cluster.conninfo()
        ),
    );
}

fn backup(pg: &Pgbk) -> String {
    pg.ok(&["backup", "pg1", "--immediate-checkpoint"]);
    let shown = pg.json(&["show-backup", "pg1", "latest"]);
    assert_eq!(shown["status"], "DONE", "{shown}");
    shown["backup_id"].as_str().unwrap().to_string()
}

/// Moves a backup's times `days` into the past in its backup.json.
fn age_backup(pg: &Pgbk, id: &str, days: i64) {
    let path = pg.home.join("pg1/backups").join(id).join("backup.json");
    let mut info: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in ["begin_time", "end_time"] {
        let t: chrono::DateTime<chrono::Utc> = info[key].as_str().unwrap().parse().unwrap();
        info[key] = (t - chrono::Duration::days(days)).to_rfc3339().into();
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&info).unwrap()).unwrap();
}

#[test]
fn nagios_follows_backup_age_and_a_deleted_catalog_is_rebuilt() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    server_with(&pg, &cluster, "last_backup_maximum_age = 1 DAYS\n");
    let mut rw = pg.start_receive_wal("pg1", &cluster);

    // No backup yet: the age item fails.
    let nag = pg.run(&["check", "pg1", "--nagios"]);
    assert_eq!(nag.code, 2, "{nag:?}");
    assert!(nag.stdout.contains("backup maximum age"), "{nag:?}");
    let first = backup(&pg);
    let nag = pg.run(&["check", "pg1", "--nagios"]);
    assert_eq!(nag.code, 0, "{nag:?}");
    assert!(nag.stdout.starts_with("PGBK OK"), "{nag:?}");

    // rebuild-catalog refuses while receive-wal runs.
    let busy = pg.run(&["rebuild-catalog", "pg1"]);
    assert_eq!(busy.code, 1, "{busy:?}");
    assert!(busy.stderr.contains("receive-wal"), "{busy:?}");
    rw.term();

    // The backup made three days old (backup.json, then the catalog rebuilt from it).
    age_backup(&pg, &first, 3);
    pg.ok(&["rebuild-catalog", "pg1"]);
    let mut rw = pg.spawn(&["receive-wal", "pg1"]);
    wait_until(Duration::from_secs(30), "receive-wal to run", || {
        pg.run(&["check", "pg1"])
            .stdout
            .contains("receive-wal running: OK")
    });
    let nag = pg.run(&["check", "pg1", "--nagios"]);
    assert_eq!(nag.code, 2, "{nag:?}");
    assert!(
        nag.stdout.starts_with("PGBK CRITICAL") && nag.stdout.contains("backup maximum age"),
        "{nag:?}"
    );
    let text = pg.run(&["check", "pg1"]).stdout;
    assert!(text.contains("backup maximum age: FAILED"), "{text}");

    // A new backup: OK again.
    let second = backup(&pg);
    wait_until(Duration::from_secs(30), "check --nagios OK", || {
        pg.run(&["check", "pg1", "--nagios"]).code == 0
    });
    pg.ok(&["switch-wal", "--force", "--archive", "pg1"]);
    rw.term();

    // The catalog behind on WAL (a row lost, the file older than a minute): named.
    let newest = pg
        .archived_segments("pg1")
        .into_iter()
        .max()
        .expect("a segment");
    let db = rusqlite::Connection::open(pg.home.join("catalog.db")).unwrap();
    let gone = db
        .execute(
            "DELETE FROM wal_files WHERE server = 'pg1' AND name = ?1",
            [&newest],
        )
        .unwrap();
    assert_eq!(gone, 1);
    drop(db);
    let file = walkdir_find(&pg.wals_dir("pg1"), &format!("{newest}.zst"));
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(old))
        .unwrap();
    let chk = pg.run(&["check", "pg1"]);
    assert!(
        chk.stdout.contains(&format!(
            "catalog in step with the repository: FAILED (the catalog does not list WAL {newest}: run rebuild-catalog pg1)"
        )),
        "{chk:?}"
    );
    pg.ok(&["rebuild-catalog", "pg1"]);
    let chk = pg.run(&["check", "pg1"]);
    assert!(
        chk.stdout
            .contains("catalog in step with the repository: OK"),
        "{chk:?}"
    );

    // The catalog lost: rebuilt from the repository, the same listings come back.
    let list = pg.json(&["list-backups", "pg1"]);
    let checks: Vec<(i32, String)> = [&first, &second]
        .iter()
        .map(|id| {
            let o = pg.run(&["check-backup", "pg1", id, "--format", "json"]);
            (o.code, o.stdout)
        })
        .collect();
    let wal_before = pg.json(&["status", "pg1"])["local"]["archived_files"].clone();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(pg.home.join(format!("catalog.db{suffix}")));
    }
    // Item 4 of the fixes issue: a lost catalog is not "no backups, exit 0".
    let lost = pg.run(&["list-backups", "pg1"]);
    assert_eq!(lost.code, 1, "{lost:?}");
    assert!(
        lost.stderr.contains("run rebuild-catalog pg1") && lost.stderr.contains(&first),
        "{lost:?}"
    );
    let chk = pg.run(&["check", "pg1"]);
    assert!(
        chk.stdout
            .contains("catalog in step with the repository: FAILED"),
        "{chk:?}"
    );
    let rebuilt = pg.json(&["rebuild-catalog", "all"]);
    assert_eq!(rebuilt[0]["backups"], 2, "{rebuilt}");
    assert_eq!(pg.json(&["list-backups", "pg1"]), list);
    for ((code, out), id) in checks.iter().zip([&first, &second]) {
        let o = pg.run(&["check-backup", "pg1", id, "--format", "json"]);
        assert_eq!((&o.code, &o.stdout), (code, out), "{id}");
    }
    let st = pg.json(&["status", "pg1"]);
    assert_eq!(st["local"]["archived_files"], wal_before, "{st}");
    assert_eq!(
        st["local"]["catalog_system_id"].as_str(),
        Some(cluster.system_id().as_str()),
        "{st}"
    );
}

/// The file called `name` in `dir` or one folder down.
fn walkdir_find(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.join(name).is_file() {
                return p.join(name);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return p;
        }
    }
    panic!("{name} not under {}", dir.display());
}

fn rpo_bytes(pg: &Pgbk) -> u64 {
    let st = pg.json(&["status", "pg1"]);
    st["rpo"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("{st}"))
}

#[test]
fn rpo_grows_while_receive_wal_is_stopped_and_diagnose_hides_the_password() {
    let cluster = Cluster::new(ClusterOptions {
        auth: Auth::Scram,
        ..Default::default()
    });
    cluster.pgbench_init(1);
    let pg = Pgbk::new();
    server_with(&pg, &cluster, "");
    assert!(cluster.conninfo().contains(PASSWORD));
    let mut rw = pg.start_receive_wal("pg1", &cluster);
    // Until receive-wal has flushed something, the RPO is unknown (null), not a number.
    let near_zero = |pg: &Pgbk| {
        pg.json(&["status", "pg1"])["rpo"]["bytes"]
            .as_u64()
            .is_some_and(|b| b < 1 << 20)
    };
    wait_until(Duration::from_secs(30), "RPO near zero", || near_zero(&pg));

    // Stopped under load: the RPO grows with the WAL the server writes (pgbench in
    // short rounds until it has written a few MiB, however slow the machine is).
    let before = rpo_bytes(&pg);
    rw.term();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut grown = before;
    while grown < before + (3 << 20) {
        assert!(
            Instant::now() < deadline,
            "RPO only {grown} bytes after pgbench"
        );
        cluster.pgbench_wait(2, 2);
        grown = rpo_bytes(&pg);
    }
    let st = pg.json(&["status", "pg1"]);
    assert!(
        st["rpo"]["seconds"].as_f64().unwrap_or(f64::INFINITY) > 0.0,
        "{st}"
    );
    cluster.pgbench_wait(2, 2);
    assert!(rpo_bytes(&pg) > grown, "the RPO keeps growing");
    let status = pg.ok(&["status", "pg1"]);
    assert!(status.contains("RPO (streaming lag)"), "{status}");
    assert!(
        status.contains("RTO (estimated): unknown (no DONE backup)"),
        "{status}"
    );

    // Running again, it catches up.
    let mut rw = pg.spawn(&["receive-wal", "pg1"]);
    wait_until(Duration::from_secs(45), "RPO back near zero", || {
        near_zero(&pg)
    });

    // With a backup, the RTO is estimated (no restore measured yet).
    pg.ok(&["backup", "pg1", "--immediate-checkpoint"]);
    let servers = pg.json(&["list-servers"]);
    let s = &servers[0];
    assert!(s["rpo"]["bytes"].as_u64().is_some(), "{servers}");
    assert!(s["rto"]["seconds"].as_f64().is_some(), "{servers}");
    assert!(
        s["rto"]["basis"]
            .as_str()
            .unwrap()
            .contains("no restore measured yet"),
        "{servers}"
    );
    let shown = pg.ok(&["show-server", "pg1"]);
    assert!(shown.contains("RTO (estimated): "), "{shown}");

    // diagnose: everything in one document, never the password.
    let out = pg.run(&["diagnose"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !out.stdout.contains(PASSWORD),
        "password in diagnose output"
    );
    let d: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(d["pgbk"]["version"].is_string(), "{d}");
    assert!(d["system"]["sysname"].is_string(), "{d}");
    assert!(
        d["servers"]["pg1"]["checks"].as_array().unwrap().len() > 5,
        "{d}"
    );
    assert!(d["servers"]["pg1"]["settings"]["conninfo"]
        .as_str()
        .unwrap()
        .contains("********"));
    assert!(d["catalog"]["schema_version"].as_i64().unwrap() >= 3, "{d}");
    assert!(
        d["catalog"]["rows"]["backups"].as_i64().unwrap() >= 1,
        "{d}"
    );
    rw.term();

    // A server that is down: list-servers still answers, its RPO null with the
    // reason (item 3 of the fixes issue).
    cluster.stop("immediate");
    let servers = pg.json(&["list-servers"]);
    assert!(servers[0]["rpo"]["bytes"].is_null(), "{servers}");
    assert!(
        servers[0]["rpo"]["unknown"]
            .as_str()
            .is_some_and(|r| r.contains("unreachable")),
        "{servers}"
    );
    assert!(servers[0]["rto"]["seconds"].as_f64().is_some(), "{servers}");
}
