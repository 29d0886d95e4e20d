//! Authentication: a SCRAM-SHA-256 role whose password comes from a pgpass file named
//! by PGPASSFILE (as libpq does) connects for SQL and for replication; a wrong
//! password is a one-line error naming the server.

mod common;
use common::{Auth, Cluster, ClusterOptions, Pgbk};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

fn write_pgpass(pg: &Pgbk, name: &str, port: u16, password: &str) -> std::path::PathBuf {
    let path = pg.root.join(name);
    std::fs::write(
        &path,
        format!("# test pgpass\n127.0.0.1:{port}:*:pgbk_stream:{password}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn run_with_passfile(pg: &Pgbk, passfile: &std::path::Path, args: &[&str]) -> common::Output {
    let out = pg
        .cmd()
        .env("PGPASSFILE", passfile)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    common::Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn scram_role_with_pgpass_connects_and_wrong_password_is_refused() {
    let cluster = Cluster::new(ClusterOptions {
        auth: Auth::Scram,
        ..Default::default()
    });
    cluster.psql("create role pgbk_stream login replication password 'str3am#pa:ss'");
    assert!(cluster
        .psql("select rolpassword from pg_authid where rolname = 'pgbk_stream'")
        .starts_with("SCRAM-SHA-256$"));
    let pg = Pgbk::new();
    pg.add_server(
        "pg1",
        &format!(
            "description = scram\nconninfo = host=127.0.0.1 port={} user=pgbk_stream dbname=postgres\n\
             streaming_conninfo = %(conninfo)s\nstreaming_archiver = on\nslot_name = pgbk\ncreate_slot = auto\n",
            cluster.port
        ),
    );
    // pgpass escapes ':' as '\:'.
    let good = write_pgpass(&pg, "pgpass-good", cluster.port, "str3am#pa\\:ss");
    let out = run_with_passfile(&pg, &good, &["receive-wal", "--create-slot", "pg1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        cluster.psql("select count(*) from pg_replication_slots where slot_name = 'pgbk'"),
        "1"
    );
    let status = run_with_passfile(&pg, &good, &["status", "pg1"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.contains("System identifier: "), "{status:?}");
    assert!(status.stdout.contains(&cluster.system_id()), "{status:?}");

    let bad = write_pgpass(&pg, "pgpass-bad", cluster.port, "wrong");
    for args in [
        &["receive-wal", "--drop-slot", "pg1"][..],
        &["receive-wal", "pg1"][..],
        &["switch-wal", "pg1"][..],
    ] {
        let out = run_with_passfile(&pg, &bad, args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        let err = out.stderr.trim();
        let last = err.lines().last().unwrap_or("");
        assert!(last.contains("server 'pg1'"), "{args:?}: {err}");
        assert!(
            last.contains("password authentication failed"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("wrong"), "never print the password: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // No password anywhere: says so.
    let none = pg.root.join("pgpass-none");
    std::fs::write(&none, "").unwrap();
    std::fs::set_permissions(&none, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_with_passfile(&pg, &none, &["receive-wal", "--drop-slot", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("password"), "{out:?}");
    // The slot is still there: the refused runs changed nothing.
    assert_eq!(
        cluster.psql("select count(*) from pg_replication_slots where slot_name = 'pgbk'"),
        "1"
    );
}
