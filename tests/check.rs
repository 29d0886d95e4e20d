//! check and status: a healthy setup passes; stopping receive-wal or dropping the slot
//! fails the check naming the item; --nagios gives the plugin line and exit code.

mod common;
use common::{wait_until, Cluster, ClusterOptions, Pgbk};
use std::time::Duration;

#[test]
fn check_passes_when_healthy_and_names_what_breaks() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    pg.streaming_server("pg1", &cluster);
    let mut rw = pg.start_receive_wal("pg1", &cluster);
    pg.ok(&["switch-wal", "--force", "--archive", "pg1"]);

    let out = pg.run(&["check", "pg1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("FAILED"), "{}", out.stdout);
    for item in [
        "PostgreSQL: OK",
        "wal_level: OK",
        "replication slot: OK",
        "receive-wal running: OK",
        "archived WAL continuity: OK",
    ] {
        assert!(
            out.stdout.contains(item),
            "missing {item:?} in\n{}",
            out.stdout
        );
    }
    let nag = pg.run(&["check", "pg1", "--nagios"]);
    assert_eq!(nag.code, 0, "{nag:?}");
    assert!(nag.stdout.starts_with("PGBK OK"), "{nag:?}");
    // Barman's perfdata: the backups' and the archived WAL's bytes.
    let perf = nag
        .stdout
        .trim()
        .rsplit_once('|')
        .map(|(_, p)| p.to_string());
    let perf = perf.unwrap_or_else(|| panic!("no perfdata in {nag:?}"));
    let wals = perf
        .split(' ')
        .find_map(|kv| kv.strip_prefix("pg1_wals="))
        .and_then(|v| v.strip_suffix('B'))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(perf.starts_with("pg1=0B "), "{perf}");
    assert!(wals.is_some_and(|b| b > 0), "{perf}");
    let js = pg.json(&["check", "pg1"]);
    assert_eq!(js["pg1"]["ok"], true, "{js}");

    let status = pg.ok(&["status", "pg1"]);
    assert!(status.contains(&cluster.system_id()), "{status}");
    assert!(status.contains("receive-wal: running"), "{status}");
    let st = pg.json(&["status", "pg1"]);
    assert!(st["rpo"]["bytes"].as_u64().is_some(), "{st}");
    assert_eq!(st["streaming"]["system_id"], cluster.system_id());

    // receive-wal stopped: the check names it, nagios goes CRITICAL.
    let stop = pg.ok(&["receive-wal", "--stop", "pg1"]);
    assert!(stop.contains("Stopped"), "{stop}");
    assert!(!rw.is_running());
    let out = pg.run(&["check", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("receive-wal running: FAILED"),
        "{}",
        out.stdout
    );
    let nag = pg.run(&["check", "all", "--nagios"]);
    assert_eq!(nag.code, 2, "{nag:?}");
    assert!(
        nag.stdout
            .starts_with("PGBK CRITICAL - server pg1 has issues * pg1 FAILED: ")
            && nag
                .stdout
                .lines()
                .next()
                .unwrap()
                .contains("receive-wal running|pg1="),
        "{nag:?}"
    );
    // One long-output line per failed item after the status line.
    let lines: Vec<&str> = nag.stdout.lines().collect();
    assert!(
        lines[1..]
            .contains(&"pg1.receive-wal running: FAILED (no receive-wal process for server 'pg1')"),
        "{nag:?}"
    );

    // Slot dropped: named too.
    cluster.psql("select pg_drop_replication_slot('pgbk')");
    let out = pg.run(&["check", "pg1"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("replication slot: FAILED (replication slot 'pgbk' does not exist)"),
        "{}",
        out.stdout
    );

    // Started again, it recreates the slot (create_slot = auto) and resumes after the archive.
    let mut rw = pg.spawn(&["receive-wal", "pg1"]);
    wait_until(Duration::from_secs(60), "check to pass again", || {
        pg.run(&["check", "pg1"]).code == 0
    });

    // A second server section on the same PostgreSQL, nothing streamed for it: its
    // RPO is unknown (pg1's receive-wal flushing under the same application name
    // once made it read 0 B), never a number; check names the name clash.
    pg.add_server(
        "pg2",
        &format!(
            "conninfo = {}\nstreaming_conninfo = %(conninfo)s\nbackup_method = postgres\n\
             streaming_archiver = on\nslot_name = pgbk2\n",
            cluster.conninfo()
        ),
    );
    let st = pg.json(&["status", "pg2"]);
    assert!(st["rpo"]["bytes"].is_null(), "{st}");
    assert!(st["rpo"]["seconds"].is_null(), "{st}");
    assert!(
        st["rpo"]["unknown"]
            .as_str()
            .is_some_and(|r| r.contains("no WAL")),
        "{st}"
    );
    let text = pg.ok(&["status", "pg2"]);
    assert!(text.contains("RPO (streaming lag): unknown ("), "{text}");
    let show = pg.ok(&["show-server", "pg2"]);
    assert!(show.contains("RPO: unknown ("), "{show}");
    let out = pg.run(&["check", "pg2"]);
    assert!(
        out.stdout
            .contains("streaming_archiver_name unique: FAILED")
            && out.stdout.contains("pg1"),
        "{}",
        out.stdout
    );
    // pg1 streams and shows a figure.
    let st = pg.json(&["status", "pg1"]);
    assert!(st["rpo"]["bytes"].as_u64().is_some(), "{st}");
    rw.term();
}

/// Run as a user who cannot read the home: one "permission denied on HOME", the
/// items that need the repository UNKNOWN (not "0 backups: FAILED", not "OK").
#[test]
fn unreadable_home_is_said_once_and_repository_items_are_unknown() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let pg = Pgbk::new();
    let port = common::free_port();
    pg.add_server(
        "pg",
        &format!("conninfo = host=127.0.0.1 port={port} user=postgres dbname=postgres\nminimum_redundancy = 1\n"),
    );
    std::fs::create_dir_all(pg.home.join("pg")).unwrap();
    let as_other = common::postgres_user();
    let mode = if as_other.is_some() { 0o700 } else { 0o000 };
    std::fs::set_permissions(&pg.home, std::fs::Permissions::from_mode(mode)).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = pg.cmd();
        if let Some((uid, gid)) = as_other {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.args(args).output().expect("run pgbk");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["check", "pg"]);
    std::fs::set_permissions(&pg.home, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.matches("permission denied on HOME").count(), 1, "{out}");
    for unknown in [
        "minimum redundancy requirements: UNKNOWN",
        "failed backups: UNKNOWN",
        "archived WAL continuity: UNKNOWN",
        "WAL errors: UNKNOWN",
    ] {
        assert!(out.contains(unknown), "missing {unknown:?} in\n{out}");
    }
    assert!(
        out.contains("directories: FAILED (permission denied on HOME"),
        "{out}"
    );
    std::fs::set_permissions(&pg.home, std::fs::Permissions::from_mode(mode)).unwrap();
    let (code, nag) = run(&["check", "pg", "--nagios"]);
    let (_, js) = run(&["--format", "json", "check", "pg"]);
    std::fs::set_permissions(&pg.home, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(code, 2, "{nag}");
    assert!(
        nag.contains("pg.minimum redundancy requirements: UNKNOWN"),
        "{nag}"
    );
    let js: serde_json::Value = serde_json::from_str(&js).expect("JSON");
    let items = js["pg"]["checks"].as_array().expect("checks");
    let redundancy = items
        .iter()
        .find(|i| i["name"] == "minimum redundancy requirements")
        .expect("item");
    assert_eq!(redundancy["unknown"], true, "{js}");
    assert_eq!(redundancy["ok"], false, "{js}");
}

/// Barman's verbs around a running setup: list-processes / terminate-process find
/// and stop pgbk's own receive-wal, replication-status shows it as a WAL streamer
/// with its lag, and check-wal-archive refuses an archive that holds WAL.
#[test]
fn processes_replication_status_and_wal_archive_check() {
    let cluster = Cluster::new(ClusterOptions::default());
    let pg = Pgbk::new();
    pg.streaming_server("pg1", &cluster);
    let empty = pg.run(&["check-wal-archive", "pg1"]);
    assert_eq!(empty.code, 0, "{empty:?}");
    assert!(empty.stdout.contains("safe (empty)"), "{empty:?}");
    let none = pg.ok(&["list-processes", "pg1"]);
    assert!(none.contains("No pgbk process"), "{none}");

    let mut rw = pg.start_receive_wal("pg1", &cluster);
    pg.ok(&["switch-wal", "--force", "--archive", "pg1"]);

    let procs = pg.json(&["list-processes", "pg1"]);
    let list = procs["processes"].as_array().expect("processes");
    assert!(
        list.iter()
            .any(|p| p["task"] == "receive-wal" && p["pid"] == rw.pid()),
        "{procs}"
    );

    let rs = pg.json(&["replication-status", "pg1"]);
    let clients = rs["standbys"].as_array().expect("standbys");
    let me = clients
        .iter()
        .find(|c| c["application_name"] == "pgbk_receive_wal")
        .unwrap_or_else(|| panic!("pgbk's receive-wal not among {rs}"));
    assert_eq!(me["kind"], "WAL streamer", "{rs}");
    assert!(me["flush_lag_bytes"].as_u64().is_some(), "{rs}");
    assert!(rs["current_lsn"].is_string(), "{rs}");
    let hot = pg.json(&["replication-status", "pg1", "--target", "hot-standby"]);
    assert_eq!(hot["standbys"].as_array().map(Vec::len), Some(0), "{hot}");
    let minimal = pg.ok(&["replication-status", "pg1", "--minimal"]);
    assert_eq!(minimal.trim(), "pgbk_receive_wal", "{minimal}");
    let text = pg.ok(&["replication-status", "pg1"]);
    assert!(
        text.contains("WAL streamer") && text.contains("Flush LSN"),
        "{text}"
    );

    // The archive holds timeline 1: unsafe for a new server, safe from timeline 2.
    let used = pg.run(&["check-wal-archive", "pg1"]);
    assert_eq!(used.code, 1, "{used:?}");
    assert!(
        used.stdout.contains("NOT safe") && used.stdout.contains("000000010000000000000001"),
        "{used:?}"
    );
    let later = pg.json(&["check-wal-archive", "pg1", "--timeline", "2"]);
    assert_eq!(later["safe"], true, "{later}");

    let stopped = pg.ok(&["terminate-process", "pg1", "receive-wal"]);
    assert!(stopped.contains(&format!("pid {}", rw.pid())), "{stopped}");
    assert!(!rw.is_running());
    let again = pg.run(&["terminate-process", "pg1", "receive-wal"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again
            .stderr
            .contains("server 'pg1': no receive-wal process is running"),
        "{again:?}"
    );
}
