//! `drill` and `drill-report` against real PostgreSQL 15: a backup taken under
//! pgbench load is restored, started cut off from production, recovered, checked
//! (pg_amcheck, the configured query, the newest commit) and timed; `status` and
//! `check` then show it. Failures: a hole in the WAL (named), a byte flipped in a
//! stored object, a query whose value does not hold, objectives not met.

mod common;
use common::{Cluster, ClusterOptions, Pgbk};
use serde_json::Value;
use std::time::Duration;

/// `pgbk <args> --format json` whatever its exit code: (code, document).
fn run_json(pg: &Pgbk, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = pg.run(&all);
    let v = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{all:?}: not JSON ({e}): {out:?}"));
    (out.code, v)
}

/// Opens the page in headless Chromium (Debian's `chromium`): the rendered DOM holds
/// `rows` table rows and the plot's points; a screenshot is kept in the target
/// folder (`drill-report.png`).
fn rendered_in_chromium(html: &str, rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, html).unwrap();
    let chromium = |extra: &[&str]| {
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("run chromium (Debian's chromium package; .ci/run installs it)");
        assert!(out.status.success(), "chromium {extra:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    assert_eq!(dom.matches("<tr class=").count(), rows, "{dom}");
    assert!(dom.contains("<circle class=\"rto point\""), "{dom}");
    assert!(dom.contains("<svg id=\"plot\""), "{dom}");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-report.png");
    chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1000,700",
    ]);
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000,
        "{}",
        shot.display()
    );
}

fn check_named<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

/// A cluster under pgbench load, backed up, with WAL archived after the backup.
fn backed_up(extra: &str) -> (Cluster, Pgbk, common::BackgroundPgbk) {
    let c = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    c.pgbench_init(1);
    c.psql("create table marker (note text)");
    let pg = Pgbk::new();
    pg.streaming_server_with("pg1", &c, &format!("immediate_checkpoint = on\n{extra}"));
    let rw = pg.start_receive_wal("pg1", &c);
    let mut load = c.pgbench(4, 2);
    let b = pg.json(&["backup", "pg1"]);
    assert_eq!(b["status"], "DONE", "{b}");
    let _ = load.wait();
    c.psql("insert into marker values ('after the backup')");
    pg.archive_now("pg1");
    (c, pg, rw)
}

#[test]
fn a_drill_passes_every_check_records_its_timing_and_touches_nothing_of_production() {
    let (c, pg, _rw) = backed_up(
        "drill_check_query = SELECT count(*) FROM pgbench_branches\n\
         drill_check_expected = 1\n\
         recovery_time_objective = 1 HOURS\n\
         drill_maximum_age = 1 DAYS\n",
    );
    c.append_conf(&["log_connections = on"]);
    c.reload();
    std::thread::sleep(Duration::from_millis(300));
    let log_before = c.log().len();
    let wal_before = pg.archived_segments("pg1");

    let (code, r) = run_json(&pg, &["drill", "pg1"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["ok"], true, "{r}");
    for name in [
        "wal", "restore", "start", "promoted", "amcheck", "query", "rto",
    ] {
        assert_eq!(check_named(&r, name)["status"], "pass", "{name}: {r}");
    }
    assert!(
        check_named(&r, "query")["detail"]
            .as_str()
            .unwrap()
            .contains("returned 1"),
        "{r}"
    );
    // The phases add up to the drill's wall clock within 5%.
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["restore", "start", "replay", "checks"], "{r}");
    let sum: f64 = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seconds"].as_f64().unwrap())
        .sum();
    let wall = r["wall_secs"].as_f64().unwrap();
    assert!(
        (wall - sum).abs() <= 0.05 * wall,
        "sum {sum} vs wall {wall}: {r}"
    );
    assert!(r["rto_secs"].as_f64().unwrap() > 0.0, "{r}");
    // The row written after the backup was recovered: the RPO is measured from it.
    assert!(r["rpo_secs"].as_f64().is_some(), "{r}");
    assert!(r["last_commit"].as_str().is_some(), "{r}");
    // Nothing is left behind.
    let folder = std::path::PathBuf::from(r["folder"].as_str().unwrap());
    assert!(folder.parent().is_some_and(|p| p.is_dir()), "{r}");
    assert!(!folder.exists(), "{}", folder.display());

    // Production saw no connection and its archive got nothing.
    let log = c.log();
    let new = &log[log_before.min(log.len())..];
    assert!(
        !new.contains("connection authorized") && !new.contains("connection received"),
        "the source cluster saw a connection during the drill:\n{new}"
    );
    assert_eq!(pg.archived_segments("pg1"), wal_before);

    // status, check, show-server and list-servers show it.
    let status = pg.ok(&["status", "pg1"]);
    assert!(
        status.contains("Last restore drill: drill 1 passed"),
        "{status}"
    );
    let st = pg.json(&["status", "pg1"]);
    assert_eq!(st["last_drill"]["ok"], true, "{st}");
    let shown = pg.json(&["show-server", "pg1"]);
    assert_eq!(shown["last_drill"]["id"], 1, "{shown}");
    let listed = pg.json(&["list-servers"]);
    assert!(
        listed[0]["last_drill"]["rto_secs"].as_f64().is_some(),
        "{listed}"
    );
    let (code, checked) = run_json(&pg, &["check", "pg1"]);
    let items = checked.to_string();
    for want in ["last drill", "drill maximum age", "recovery time objective"] {
        assert!(items.contains(want), "{want}: {checked}");
    }
    let _ = code;

    // The RTO estimate now rests on the drill's measured replay rate.
    let rto = &st["rto"];
    assert_eq!(rto["replay_measured"], true, "{st}");

    // drill-report: text, JSON, HTML with the table and the plot.
    let rep = pg.json(&["drill-report", "pg1"]);
    assert_eq!(rep.as_array().unwrap().len(), 1, "{rep}");
    let html = pg.ok(&["drill-report", "pg1", "--format", "html"]);
    assert_eq!(pg.ok(&["drill-report", "pg1", "--html"]), html);
    let refused = pg.run(&["list-backups", "pg1", "--format", "html"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("only drill-report"), "{refused:?}");
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<table id=\"drills\">") && html.contains("<svg id=\"plot\""));
    // Only the SVG namespace is a URL: no external asset.
    assert_eq!(html.matches("http").count(), 1, "{html}");
    rendered_in_chromium(&html, 1);

    // A drill older than drill_maximum_age fails check's item.
    let cat = rusqlite::Connection::open(pg.home.join("catalog.db")).unwrap();
    cat.execute(
        "UPDATE drills SET started_at = ?1",
        [(chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339()],
    )
    .unwrap();
    let (code, checked) = run_json(&pg, &["check", "pg1"]);
    assert_ne!(code, 0, "{checked}");
    let age = checked.to_string();
    assert!(age.contains("latest drill age"), "{checked}");

    // drill_schedule: cron starts the drill that is due (the last one is too old).
    pg.streaming_server_with(
        "pg1",
        &c,
        "immediate_checkpoint = on\ndrill_schedule = daily 00:00\n",
    );
    let actions = pg.json(&["cron"]);
    assert!(actions.to_string().contains("drill-started"), "{actions}");
    common::wait_until(
        Duration::from_secs(180),
        "cron's drill to be recorded",
        || pg.json(&["drill-report", "pg1"]).as_array().unwrap().len() == 2,
    );
    let rep = pg.json(&["drill-report", "pg1"]);
    assert_eq!(rep[1]["ok"], true, "{rep}");
    // Done for today: the next pass starts none.
    let actions = pg.json(&["cron"]);
    assert!(!actions.to_string().contains("drill-started"), "{actions}");
}

#[test]
fn drills_fail_on_a_wal_hole_a_damaged_object_a_wrong_value_and_a_missed_objective() {
    // PostgreSQL's binaries without pg_amcheck: amcheck's bt_index_check through SQL.
    let bins = tempfile::tempdir().unwrap();
    for b in ["pg_ctl", "psql", "postgres"] {
        std::os::unix::fs::symlink(format!("{}/{b}", common::PG_BIN), bins.path().join(b)).unwrap();
    }
    let mut perms = std::fs::metadata(bins.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(bins.path(), perms).unwrap();
    let (c, pg, mut rw) = backed_up(&format!(
        "drill_check_query = SELECT count(*) FROM marker\n\
         drill_check_expected = 5\n\
         drill_pg_bin = {}\n",
        bins.path().display()
    ));
    // The query's value does not hold: FAILED with what it returned.
    let (code, r) = run_json(&pg, &["drill", "pg1"]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["ok"], false, "{r}");
    let amcheck = check_named(&r, "amcheck");
    assert_eq!(amcheck["status"], "pass", "{r}");
    assert!(
        amcheck["detail"]
            .as_str()
            .unwrap()
            .contains("bt_index_check"),
        "{r}"
    );
    let q = check_named(&r, "query");
    assert_eq!(q["status"], "fail", "{r}");
    assert!(
        q["detail"]
            .as_str()
            .unwrap()
            .contains("returned 1 (expected 5)"),
        "{r}"
    );

    // An RTO objective the drill cannot meet (its check query alone takes longer).
    pg.streaming_server_with(
        "pg1",
        &c,
        "immediate_checkpoint = on\nrecovery_time_objective = 1 SECONDS\n\
         drill_check_query = SELECT pg_sleep(1.5)\n",
    );
    let (code, r) = run_json(&pg, &["drill", "pg1"]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(check_named(&r, "rto")["status"], "fail", "{r}");
    let (code, checked) = run_json(&pg, &["check", "pg1"]);
    assert_ne!(code, 0, "{checked}");
    assert!(checked.to_string().contains("measured RTO"), "{checked}");

    // A hole in the WAL after the backup (later segments archived): named.
    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    for _ in 0..3 {
        c.psql("insert into marker select 'more' from generate_series(1, 1000)");
        pg.archive_now("pg1");
    }
    rw.term();
    let backup = pg.json(&["show-backup", "pg1", "latest"]);
    let end_wal = backup["end_wal"].as_str().unwrap().to_string();
    let segs = pg.archived_segments("pg1");
    let after: Vec<&String> = segs.iter().filter(|s| **s > end_wal).collect();
    assert!(after.len() >= 3, "{segs:?}");
    let hole = after[0].clone();
    let path = pg
        .wals_dir("pg1")
        .join(&hole[..16])
        .join(format!("{hole}.zst"));
    let saved = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (code, r) = run_json(&pg, &["drill", "pg1"]);
    assert_eq!(code, 1, "{r}");
    let wal = check_named(&r, "wal");
    assert_eq!(wal["status"], "fail", "{r}");
    assert!(wal["detail"].as_str().unwrap().contains(&hole), "{r}");
    // check turns CRITICAL: the newest drill failed.
    let nagios = pg.run(&["check", "pg1", "--nagios"]);
    assert!(nagios.stdout.starts_with("PGBK CRITICAL"), "{nagios:?}");
    assert!(nagios.stdout.contains("last drill"), "{nagios:?}");
    // recover itself warns of the same hole.
    let scratch = common::pg_scratch_dir("pgbk-drill-hole-");
    let dest = scratch.path().join("data");
    let out = pg.ok(&["recover", "pg1", "latest", dest.to_str().unwrap()]);
    assert!(
        out.contains(&format!("Warning: WAL segment {hole} is missing")),
        "{out}"
    );
    std::fs::write(&path, saved).unwrap();

    // A byte flipped in a stored data object: the restore refuses it.
    let id = backup["backup_id"].as_str().unwrap();
    let dir = pg.home.join("pg1/backups").join(id).join("data/base");
    let mut victim = None;
    for db in std::fs::read_dir(&dir).unwrap().flatten() {
        for f in std::fs::read_dir(db.path()).unwrap().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "zst")
                && std::fs::metadata(&p).unwrap().len() > 1000
            {
                victim = Some(p);
            }
        }
    }
    let victim = victim.expect("a data object of its own");
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&victim, &bytes).unwrap();
    let (code, r) = run_json(&pg, &["drill", "pg1"]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(check_named(&r, "restore")["status"], "fail", "{r}");
    let list = pg.json(&["drill-report", "pg1"]);
    let oks: Vec<bool> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(oks, [false, false, false, false], "{list}");
}

#[test]
fn a_drill_on_a_drill_host_over_ssh_runs_there_and_cleans_up() {
    let (_c, pg, _rw) =
        backed_up("drill_check_query = SELECT count(*) FROM marker\ndrill_check_expected = 1\n");
    let sshd = common::Sshd::start();
    let ssh = sshd.ssh_command("postgres");
    let (code, r) = run_json(&pg, &["drill", "pg1", "--host", &ssh]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["ok"], true, "{r}");
    for name in ["wal", "restore", "start", "promoted", "amcheck", "query"] {
        assert_eq!(check_named(&r, name)["status"], "pass", "{name}: {r}");
    }
    assert!(
        r["host"].as_str().unwrap().contains("postgres@127.0.0.1"),
        "{r}"
    );
    // It ran in the drill user's home there, and nothing is left of it.
    let folder = r["folder"].as_str().unwrap();
    assert!(
        folder.starts_with("/var/lib/postgresql/pgbk-drills/"),
        "{r}"
    );
    assert!(
        !std::path::Path::new(folder).exists(),
        "{folder} left behind"
    );
    let log = sshd.log_tail(400);
    assert!(
        log.contains("Starting session: command for postgres"),
        "{log}"
    );

    // drill_ssh_command does the same from the configuration; a bad one is refused
    // in one line naming the option.
    pg.streaming_server_with("pg1", &_c, "drill_ssh_command = ssh -p notaport x@y\n");
    let bad = pg.run(&["drill", "pg1"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(bad.error_lines().len(), 1, "{bad:?}");
    assert!(bad.stderr.contains("drill_ssh_command"), "{bad:?}");
}
