//! `recover --remote-ssh-command` through a real `sshd` on a loopback port: the
//! destination is "on another host" (the same machine, reached as the `postgres`
//! user over SSH). What a DBA needs from it:
//!
//! - the files, tablespace-less data directory, settings, signal file, manifest and
//!   WAL arrive over one SSH connection into `tar -x`, and the result starts and
//!   holds every row committed before the last archived segment;
//! - a host key that does not match known_hosts stops it with a one-line error
//!   (exit 1) before anything is written; `--get-wal` and `--delta`, which cannot
//!   work remotely, are refused in one line; a non-empty remote destination is
//!   refused and left as it was.

mod common;
use common::source::StreamingSource;
use common::{
    chown_to_postgres, pg_scratch_dir, wait_until, BackgroundPgbk, Cluster, ClusterOptions, Pgbk,
    Sshd,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// A source cluster with pgbench tables, pgbk streaming its WAL, one backup taken
/// and more pgbench work archived after it.
struct Source {
    cluster: Cluster,
    pg: Pgbk,
    _rw: BackgroundPgbk,
    count: u64,
}

fn source() -> Source {
    let base = StreamingSource::start(1);
    base.backup();
    base.cluster.pgbench_wait(2, 2);
    let count = base.history_count();
    base.archive_now();
    let StreamingSource { cluster, pg, rw } = base;
    Source {
        cluster,
        pg,
        _rw: rw,
        count,
    }
}

fn history_count(c: &Cluster) -> u64 {
    c.psql("select count(*) from pgbench_history")
        .parse()
        .unwrap()
}

/// A scratch folder (owned by postgres) holding an empty, postgres-owned `data/`.
fn destination() -> (TempDir, PathBuf) {
    let dir = pg_scratch_dir("pgbk-rrec-");
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    chown_to_postgres(&data, false);
    (dir, data)
}

fn listing(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn remote_recovery_through_sshd_starts_and_holds_every_archived_row() {
    let sshd = Sshd::start();
    let src = source();
    let (dir, data) = destination();
    let ssh = sshd.ssh_command("postgres");
    let out = src.pg.json(&[
        "recover",
        "pg1",
        "latest",
        data.to_str().unwrap(),
        "--remote-ssh-command",
        &ssh,
    ]);
    assert_eq!(
        out["remote"],
        format!("postgres@127.0.0.1:{}", sshd.port).as_str(),
        "{out}"
    );
    assert!(out["wal_files"].as_u64().unwrap() >= 2, "{out}");
    assert_eq!(out["manifest"], true, "{out}");
    // Everything arrived as the postgres user, with PostgreSQL's modes.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let pg_uid = common::postgres_user().map(|(u, _)| u).unwrap_or(0);
    for p in [
        "",
        "PG_VERSION",
        "global/pg_control",
        "pgbk_wal",
        "recovery.signal",
    ] {
        let m = fs::metadata(data.join(p)).unwrap();
        assert_eq!(m.uid(), pg_uid, "{p}");
    }
    assert_eq!(
        fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(data.join("pg_wal/archive_status").is_dir());
    assert!(data.join("backup_manifest").is_file());
    let conf = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains(&format!(
            "restore_command = 'cp {}/pgbk_wal/%f %p'",
            data.display()
        )),
        "{conf}"
    );
    let c = Cluster::from_datadir(dir, ClusterOptions::default());
    wait_until(Duration::from_secs(60), "recovery to end", || {
        c.try_psql("select pg_is_in_recovery()")
            .is_ok_and(|s| s == "f")
    });
    assert_eq!(history_count(&c), src.count, "{}", c.log_tail(30));
    assert!(history_count(&src.cluster) >= src.count);
}

#[test]
fn a_changed_host_key_and_impossible_options_are_refused_in_one_line_before_anything_is_written() {
    let sshd = Sshd::start();
    let src = source();
    let (_dir, data) = destination();
    let dest = data.to_str().unwrap();
    let wrong = sshd.wrong_known_hosts();
    let unknown = sshd.root.join("known_hosts.empty");
    fs::write(&unknown, "").unwrap();
    let good = sshd.ssh_command("postgres");
    let cases: Vec<(Vec<String>, i32, String)> = vec![
        (
            vec![
                "--remote-ssh-command".into(),
                sshd.ssh_command_with("postgres", &wrong),
            ],
            1,
            format!("does not match the one recorded in {}", wrong.display()),
        ),
        (
            vec![
                "--remote-ssh-command".into(),
                sshd.ssh_command_with("postgres", &unknown),
            ],
            1,
            format!("127.0.0.1:{} is unknown", sshd.port),
        ),
        (
            vec![
                "--remote-ssh-command".into(),
                good.clone(),
                "--get-wal".into(),
            ],
            2,
            "--get-wal cannot be used with --remote-ssh-command".into(),
        ),
        (
            vec![
                "--remote-ssh-command".into(),
                good.clone(),
                "--delta".into(),
            ],
            2,
            "--delta cannot be used with --remote-ssh-command".into(),
        ),
        (
            vec!["--remote-ssh-command".into(), format!("{good} -J jump")],
            2,
            "after the host".into(),
        ),
        (
            vec![
                "--remote-ssh-command".into(),
                "ssh -J jump postgres@127.0.0.1".into(),
            ],
            2,
            "unsupported option -J".into(),
        ),
    ];
    for (extra, code, needle) in cases {
        let mut args = vec!["recover", "pg1", "latest", dest];
        args.extend(extra.iter().map(String::as_str));
        let out = src.pg.run(&args);
        assert_eq!(out.code, code, "{args:?}\n{}", out.stderr);
        assert!(out.stderr.contains(&needle), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(
            listing(&data).is_empty(),
            "{args:?} wrote into the destination"
        );
    }
    // A destination that is not empty on the remote side.
    fs::write(data.join("precious"), "keep me").unwrap();
    let out = src.pg.run(&[
        "recover",
        "pg1",
        "latest",
        dest,
        "--remote-ssh-command",
        &good,
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);
    assert_eq!(listing(&data), ["precious"]);
    assert_eq!(
        fs::read_to_string(data.join("precious")).unwrap(),
        "keep me"
    );
    assert!(sshd
        .log_tail(200)
        .contains("Accepted publickey for postgres"));
}
