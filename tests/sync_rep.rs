//! Synchronous streaming: with pgbk as the only synchronous standby, commits go
//! through while receive-wal runs, and every committed transaction's commit record is
//! on the backup host (archive plus partial) when the commit returns.

mod common;
use common::{wait_until, Cluster, ClusterOptions, Pgbk, PG_BIN};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn synchronous_commit_waits_for_pgbk_and_loses_nothing() {
    let cluster = Cluster::new(ClusterOptions::default());
    cluster.psql("create table t (id int primary key)");
    let pg = Pgbk::new();
    pg.streaming_server("pg1", &cluster);
    let mut rw = pg.start_receive_wal("pg1", &cluster);
    cluster.psql("alter system set synchronous_standby_names = 'pgbk_receive_wal'");
    cluster.psql("select pg_reload_conf()");
    wait_until(
        Duration::from_secs(30),
        "pgbk to be the synchronous standby",
        || {
            cluster.psql("select sync_state from pg_stat_replication where application_name = 'pgbk_receive_wal'") == "sync"
        },
    );

    // Commit from a thread so that a commit that never returns fails the test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    let conninfo_port = cluster.port;
    let socket = cluster.socket_dir.clone();
    std::thread::spawn(move || {
        let mut xids = Vec::new();
        for i in 0..40 {
            let mut cmd = common::pg_command("psql");
            cmd.args(["-X", "-A", "-t", "-q", "-h"]).arg(&socket).args([
                "-p",
                &conninfo_port.to_string(),
                "-d",
                "postgres",
            ]);
            cmd.args([
                "-c",
                &format!("insert into t values ({i}) returning txid_current()"),
            ]);
            let out = cmd.output().expect("psql");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            xids.push(text.lines().next().unwrap_or("").trim().to_string());
        }
        let _ = tx.send(xids);
    });
    let xids = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("commits did not return: synchronous replication not confirmed");
    // The moment the last commit returned, the backup host must hold it: kill receive-wal now.
    rw.kill9();

    // Gather what pgbk holds (archived segments + the partial) under plain names and read it back.
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for s in pg.archived_segments("pg1") {
        std::fs::write(dir.path().join(&s), pg.decompress_segment("pg1", &s)).unwrap();
        names.push(s);
    }
    for e in std::fs::read_dir(pg.streaming_dir("pg1"))
        .unwrap()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().to_string();
        if let Some(seg) = n.strip_suffix(".partial") {
            let mut data = std::fs::read(e.path()).unwrap();
            data.resize(16 * 1024 * 1024, 0);
            std::fs::write(dir.path().join(seg), data).unwrap();
            names.push(seg.to_string());
        }
    }
    names.sort();
    assert!(!names.is_empty());
    let out = Command::new(format!("{PG_BIN}/pg_waldump"))
        .arg("-p")
        .arg(dir.path())
        .args(["-r", "Transaction"])
        .arg(names.first().unwrap())
        .arg(names.last().unwrap())
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    let committed: std::collections::HashSet<String> = dump
        .lines()
        .filter(|l| l.contains("desc: COMMIT"))
        .filter_map(|l| l.split("tx:").nth(1))
        .filter_map(|r| r.split(',').next())
        .map(|x| x.trim().to_string())
        .collect();
    for x in &xids {
        assert!(
            committed.contains(x),
            "commit of xid {x} is not in pgbk's WAL; pg_waldump said:\n{}\n{}",
            dump.lines().rev().take(5).collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(cluster.psql("select count(*) from t"), "40");
}
