//! pgbk's PostgreSQL client against a real PostgreSQL 15 that this test starts
//! itself: trust over TCP and a Unix socket, SCRAM-SHA-256 (password from the
//! connection string and from a password file named by PGPASSFILE), md5, a wrong
//! password, TLS (require / verify-ca / verify-full), and the replication commands
//! down to WAL streaming with a keepalive reply.
//!
//! Self-contained on purpose (no shared harness): initdb + pg_ctl into a temporary
//! directory on a free 127.0.0.1 port, as the `postgres` user when run as root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgbk::pg::{
    ConnInfo, ConnectOptions, Connection, PgError, QueryEvent, ReplicationMessage, StartReplication,
};
use pgbk::wal::{Lsn, SystemId, TimeLineId};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway cluster, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL program as a command, run as `postgres` when we are root.
fn pg_command(program: &str) -> Command {
    let path = format!("{BIN}/{program}");
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(&path)
    }
}

/// Runs a PostgreSQL program and insists that it succeeds.
fn pg_cmd(program: &str, args: &[&str]) -> std::process::Output {
    let out = pg_command(program)
        .args(args)
        .output()
        .expect("run PostgreSQL program");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn chown_postgres(path: &Path) {
    if !as_root() {
        return;
    }
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .output()
        .expect("chown");
    assert!(out.status.success());
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A CA and a server certificate for `localhost`, made with the openssl CLI.
/// Returns false when openssl is missing.
fn make_certs(dir: &Path) -> bool {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=pgbk test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]) && run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other-ca.key",
        "-out",
        "other-ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=some other CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])
}

impl Cluster {
    fn start() -> (Cluster, bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let data = dir.path().join("data");
        let tls = make_certs(dir.path());
        if tls {
            std::fs::set_permissions(
                dir.path().join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod key");
        }
        chown_postgres(dir.path());
        let data_s = data.to_str().expect("utf8 path");
        pg_cmd(
            "initdb",
            &[
                "-D",
                data_s,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 5\nmax_replication_slots = 5\n\
             password_encryption = 'scram-sha-256'\nfsync = off\nwal_sender_timeout = '60s'\n",
            dir.path().display()
        );
        if tls {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                dir.path().display()
            ));
        }
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all scram_user scram-sha-256\n\
             local all md5_user md5\n\
             local all all trust\n\
             local replication all trust\n\
             hostssl all tls_user 127.0.0.1/32 scram-sha-256\n\
             hostssl replication tls_user 127.0.0.1/32 scram-sha-256\n\
             host all tls_user 127.0.0.1/32 reject\n\
             host all scram_user 127.0.0.1/32 scram-sha-256\n\
             host all md5_user 127.0.0.1/32 md5\n\
             host all pw_user 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba.conf");
        chown_postgres(dir.path());
        let log = dir.path().join("server.log");
        pg_cmd(
            "pg_ctl",
            &[
                "-D",
                data_s,
                "-l",
                log.to_str().expect("utf8"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        (Cluster { dir, port }, tls)
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connection string to this cluster with the environment replaced by
    /// `HOME=<tempdir>` plus `env`, so nothing of the caller's leaks in.
    fn info(&self, conninfo: &str, env: &[(&str, &str)]) -> ConnInfo {
        let mut vars: Vec<(String, String)> =
            vec![("HOME".to_string(), self.dir.path().display().to_string())];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        ConnInfo::parse(&format!("port={} {conninfo}", self.port))
            .expect("conninfo")
            .with_env(vars)
    }

    fn tcp(&self, extra: &str) -> ConnInfo {
        self.info(&format!("host=127.0.0.1 sslmode=disable {extra}"), &[])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open");
    f.write_all(text.as_bytes()).expect("append");
}

async fn connect(info: &ConnInfo) -> Result<Connection, PgError> {
    Connection::connect(info, &ConnectOptions::default()).await
}

async fn replication(info: &ConnInfo) -> Connection {
    let opts = ConnectOptions {
        replication: true,
        application_name: Some("pgbk_test".to_string()),
        connect_timeout: Some(Duration::from_secs(10)),
    };
    Connection::connect(info, &opts)
        .await
        .expect("replication connection")
}

async fn one(conn: &mut Connection, sql: &str) -> Option<String> {
    let rows = conn.simple_query(sql).await.expect(sql);
    rows.first().and_then(|r| r.get_idx(0)).map(str::to_string)
}

#[tokio::test]
async fn pg_client_against_real_postgres_15() {
    let (cluster, tls) = Cluster::start();

    // ---- trust over TCP, simple queries, errors keep the connection usable ----
    let mut sql = connect(&cluster.tcp("user=postgres dbname=postgres"))
        .await
        .expect("tcp trust");
    assert!(sql.server_version_num().expect("version") >= 150000);
    assert_eq!(sql.parameter("client_encoding"), Some("UTF8"));
    assert!(sql.backend_pid() > 0);
    let rows = sql
        .simple_query("select 1 as one, null::text as nothing, 'é' as accent")
        .await
        .expect("select");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get("one"), Some("1"));
    assert_eq!(rows[0].get("nothing"), None);
    assert_eq!(rows[0].get("accent"), Some("é"));
    assert_eq!(rows[0].columns.as_slice(), ["one", "nothing", "accent"]);
    let rows = sql
        .simple_query("select 1; select generate_series(2, 3)")
        .await
        .expect("multi");
    assert_eq!(rows.len(), 3);
    let e = sql
        .simple_query("select 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(e.code(), Some("22012"));
    assert_eq!(e.to_string(), "ERROR: division by zero");
    assert_eq!(one(&mut sql, "select 42").await.as_deref(), Some("42"));
    assert!(sql.simple_query("").await.expect("empty query").is_empty());

    // ---- roles for the password methods ----
    sql.simple_query("create role scram_user login password 'scr@m pw'")
        .await
        .expect("scram role");
    sql.simple_query("set password_encryption = 'md5'; create role md5_user login password 'md5-pw'; reset password_encryption")
        .await
        .expect("md5 role");
    sql.simple_query("create role pw_user login password 'clear pw'")
        .await
        .expect("cleartext role");
    sql.simple_query("create role tls_user login replication password 'tls-pw'")
        .await
        .expect("tls role");
    assert!(one(
        &mut sql,
        "select rolpassword from pg_authid where rolname = 'scram_user'"
    )
    .await
    .expect("verifier")
    .starts_with("SCRAM-SHA-256$"));
    assert!(one(
        &mut sql,
        "select rolpassword from pg_authid where rolname = 'md5_user'"
    )
    .await
    .expect("verifier")
    .starts_with("md5"));

    // ---- trust over the Unix socket ----
    let sock = cluster.info(
        &format!(
            "host={} user=postgres dbname=postgres",
            cluster.socket_dir().display()
        ),
        &[],
    );
    let mut c = connect(&sock).await.expect("unix socket trust");
    assert_eq!(
        one(&mut c, "select current_user").await.as_deref(),
        Some("postgres")
    );
    c.close().await;

    // ---- SCRAM-SHA-256, password from the connection string (TCP and socket) ----
    let mut c = connect(&cluster.tcp("user=scram_user dbname=postgres password='scr@m pw'"))
        .await
        .expect("scram over tcp");
    assert_eq!(
        one(&mut c, "select current_user").await.as_deref(),
        Some("scram_user")
    );
    c.close().await;
    let info = cluster.info(
        &format!(
            "host={} user=scram_user dbname=postgres password='scr@m pw'",
            cluster.socket_dir().display()
        ),
        &[],
    );
    connect(&info)
        .await
        .expect("scram over unix socket")
        .close()
        .await;

    // ---- SCRAM with the password from a password file named by PGPASSFILE ----
    let passfile = cluster.dir.path().join("test.pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# pgbk test\n127.0.0.1:{0}:postgres:nobody:x\n127.0.0.1:{0}:*:scram_user:scr@m pw\nlocalhost:{0}:*:md5_user:md5-pw\n",
            cluster.port
        ),
    )
    .expect("pgpass");
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let pf = passfile.to_str().expect("utf8");
    let info = cluster.info(
        "host=127.0.0.1 sslmode=disable user=scram_user dbname=postgres",
        &[("PGPASSFILE", pf)],
    );
    let mut c = connect(&info).await.expect("scram with PGPASSFILE");
    assert_eq!(
        one(&mut c, "select current_user").await.as_deref(),
        Some("scram_user")
    );
    c.close().await;
    // PGPASSWORD comes before the password file.
    let info = cluster.info(
        "host=127.0.0.1 sslmode=disable user=scram_user dbname=postgres",
        &[("PGPASSFILE", pf), ("PGPASSWORD", "wrong")],
    );
    assert_eq!(
        connect(&info).await.expect_err("PGPASSWORD wins").code(),
        Some("28P01")
    );
    // A world-readable password file is ignored.
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let info = cluster.info(
        "host=127.0.0.1 sslmode=disable user=scram_user dbname=postgres",
        &[("PGPASSFILE", pf)],
    );
    let e = connect(&info).await.expect_err("insecure pgpass ignored");
    assert_eq!(
        e.to_string(),
        "authentication failed: password required but none found (conninfo, PGPASSWORD or pgpass)"
    );
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // ---- md5, password from the password file over the socket (matches localhost) ----
    let info = cluster.info(
        &format!(
            "host={} user=md5_user dbname=postgres",
            cluster.socket_dir().display()
        ),
        &[("PGPASSFILE", pf)],
    );
    let mut c = connect(&info).await.expect("md5 over socket with pgpass");
    assert_eq!(
        one(&mut c, "select current_user").await.as_deref(),
        Some("md5_user")
    );
    c.close().await;
    connect(&cluster.tcp("user=md5_user dbname=postgres password=md5-pw"))
        .await
        .expect("md5 over tcp")
        .close()
        .await;

    // ---- cleartext password method ----
    connect(&cluster.tcp("user=pw_user dbname=postgres password='clear pw'"))
        .await
        .expect("password method")
        .close()
        .await;

    // ---- wrong password: 28P01, one line, password not shown ----
    let e = connect(&cluster.tcp("user=scram_user dbname=postgres password=hunter2"))
        .await
        .expect_err("wrong password");
    assert_eq!(e.code(), Some("28P01"));
    assert_eq!(
        e.to_string(),
        "FATAL: password authentication failed for user \"scram_user\""
    );
    let e = connect(&cluster.tcp("user=md5_user dbname=postgres password=hunter2"))
        .await
        .expect_err("wrong md5 password");
    assert_eq!(e.code(), Some("28P01"));
    assert!(!e.to_string().contains("hunter2"));

    // ---- sslmode=require is ignored on Unix sockets, as in libpq ----
    let info = cluster.info(
        &format!(
            "host={} user=postgres dbname=postgres sslmode=require",
            cluster.socket_dir().display()
        ),
        &[],
    );
    connect(&info)
        .await
        .expect("socket with sslmode=require")
        .close()
        .await;

    // ---- cancel a running query from another task ----
    let token = sql.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel().await
    });
    let started = std::time::Instant::now();
    let e = sql
        .simple_query("select pg_sleep(30)")
        .await
        .expect_err("cancelled");
    assert_eq!(e.code(), Some("57014"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));
    canceller.await.expect("join").expect("cancel request");
    assert_eq!(
        one(&mut sql, "select 'still usable'").await.as_deref(),
        Some("still usable")
    );

    // ---- a streamed answer mixing a result set and COPY data ----
    let mut events = Vec::new();
    {
        let mut q = sql
            .query_stream("select 1 as a; copy (select generate_series(1, 3)) to stdout")
            .await
            .expect("query_stream");
        while let Some(ev) = q.next_event().await.expect("event") {
            events.push(ev);
        }
    }
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            QueryEvent::RowDescription(c) => format!("T{}", c.join(",")),
            QueryEvent::Row(r) => format!("D{}", r.get_idx(0).unwrap_or("NULL")),
            QueryEvent::CommandComplete(t) => format!("C{t}"),
            QueryEvent::CopyOut => "H".to_string(),
            QueryEvent::CopyData(d) => format!("d{}", String::from_utf8_lossy(d).trim_end()),
            QueryEvent::CopyDone => "c".to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Ta",
            "D1",
            "CSELECT 1",
            "H",
            "d1",
            "d2",
            "d3",
            "c",
            "CCOPY 3"
        ]
    );

    // ---- nothing listening: a Connect error naming the target ----
    let dead = free_port();
    let info = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={dead} user=postgres sslmode=disable"
    ))
    .expect("conninfo")
    .with_env([("HOME", "/nonexistent")]);
    let e = connect(&info).await.expect_err("refused");
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("could not connect to 127.0.0.1:{dead}: ")),
        "{e}"
    );

    // ---- TLS ----
    if tls {
        let dir = cluster.dir.path().display().to_string();
        let tls_info = |mode: &str, host: &str, root: &str| {
            cluster.info(
                &format!(
                    "host={host} hostaddr=127.0.0.1 user=tls_user dbname=postgres password=tls-pw sslmode={mode} sslrootcert='{dir}/{root}'"
                ),
                &[],
            )
        };
        let mut c = connect(&cluster.info(
            "host=127.0.0.1 user=tls_user dbname=postgres password=tls-pw sslmode=require",
            &[],
        ))
        .await
        .expect("sslmode=require");
        assert_eq!(uses_tls(&mut c).await.as_deref(), Some("t"));
        c.close().await;
        // prefer (the default) uses TLS when the server offers it.
        let mut c = connect(&cluster.info(
            "host=127.0.0.1 user=tls_user dbname=postgres password=tls-pw",
            &[],
        ))
        .await
        .expect("sslmode=prefer");
        assert_eq!(uses_tls(&mut c).await.as_deref(), Some("t"));
        c.close().await;
        // the hba refuses tls_user without TLS.
        let e = connect(&cluster.tcp("user=tls_user dbname=postgres password=tls-pw"))
            .await
            .expect_err("hostnossl reject");
        assert_eq!(e.code(), Some("28000"));
        connect(&tls_info("verify-full", "localhost", "ca.crt"))
            .await
            .expect("verify-full with the right name")
            .close()
            .await;
        let e = connect(&tls_info("verify-full", "127.0.0.1", "ca.crt"))
            .await
            .expect_err("verify-full with the wrong name");
        assert!(matches!(e, PgError::Tls(_)), "{e:?}");
        connect(&tls_info("verify-ca", "127.0.0.1", "ca.crt"))
            .await
            .expect("verify-ca ignores the name")
            .close()
            .await;
        let e = connect(&tls_info("verify-ca", "localhost", "other-ca.crt"))
            .await
            .expect_err("verify-ca with another CA");
        assert!(matches!(e, PgError::Tls(_)), "{e:?}");
        // require with a root certificate verifies the chain, as in libpq.
        let e = connect(&tls_info("require", "localhost", "other-ca.crt"))
            .await
            .expect_err("require with another CA");
        assert!(matches!(e, PgError::Tls(_)), "{e:?}");
        // prefer never verifies.
        connect(&tls_info("prefer", "localhost", "other-ca.crt"))
            .await
            .expect("prefer ignores the root certificate")
            .close()
            .await;
        // A replication connection over TLS.
        let mut r = replication(&tls_info("verify-full", "localhost", "ca.crt")).await;
        r.identify_system().await.expect("identify over TLS");
        r.close().await;
    } else {
        eprintln!("openssl not found: TLS checks skipped");
    }

    // ---- replication commands ----
    let mut repl = replication(&cluster.tcp("user=postgres")).await;
    let id = repl.identify_system().await.expect("IDENTIFY_SYSTEM");
    assert_eq!(id.timeline, TimeLineId(1));
    assert_eq!(id.dbname, None);
    let sysid = one(
        &mut sql,
        "select system_identifier from pg_control_system()",
    )
    .await
    .expect("sysid");
    assert_eq!(id.system_id, sysid.parse::<SystemId>().expect("sysid"));
    let seg = repl.wal_segment_size().await.expect("wal_segment_size");
    assert_eq!(seg, 16 * 1024 * 1024);
    assert_eq!(repl.show("wal_level").await.expect("SHOW"), "replica");
    let e = repl
        .timeline_history(TimeLineId(1))
        .await
        .expect_err("no history for TL1");
    assert_eq!(e.code(), Some("58P01"));
    let app = one(
        &mut sql,
        &format!(
            "select application_name from pg_stat_activity where pid = {}",
            repl.backend_pid()
        ),
    )
    .await;
    assert_eq!(app.as_deref(), Some("pgbk_test"));

    // ---- slots ----
    let slot = "pgbk_test_slot";
    repl.create_physical_slot(slot, true)
        .await
        .expect("create slot");
    let e = repl
        .create_physical_slot(slot, true)
        .await
        .expect_err("slot exists");
    assert_eq!(e.code(), Some("42710"));
    let info = repl
        .read_replication_slot(slot)
        .await
        .expect("read slot")
        .expect("slot exists");
    assert!(info.restart_lsn.expect("restart_lsn reserved") > Lsn(0));
    assert_eq!(info.restart_tli, Some(TimeLineId(1)));
    assert_eq!(
        repl.read_replication_slot("no_such_slot")
            .await
            .expect("read missing"),
        None
    );

    // ---- streaming from a segment start after pg_switch_wal() ----
    sql.simple_query("create table t1 as select generate_series(1, 1000) as i")
        .await
        .expect("wal");
    let switched: Lsn = one(&mut sql, "select pg_switch_wal()")
        .await
        .expect("switch")
        .parse()
        .expect("lsn");
    sql.simple_query("create table t2 as select 1 as i")
        .await
        .expect("more wal");
    let start = Lsn(switched.segment_start(seg).0 + seg);
    let current: Lsn = one(&mut sql, "select pg_current_wal_flush_lsn()")
        .await
        .expect("flush lsn")
        .parse()
        .expect("lsn");
    assert!(current > start, "{current} > {start}");

    let StartReplication::Streaming(mut stream) = repl
        .start_physical_replication(Some(slot), start, TimeLineId(1))
        .await
        .expect("START_REPLICATION")
    else {
        panic!("expected a stream, not the end of a timeline");
    };
    let mut received = 0u64;
    let mut first = true;
    let mut pos = start;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pos < current {
        let m = tokio::time::timeout_at(deadline, stream.next_message())
            .await
            .expect("WAL within 30 s")
            .expect("message");
        match m {
            ReplicationMessage::XLogData {
                wal_start, data, ..
            } => {
                assert_eq!(wal_start, pos, "contiguous WAL");
                if first {
                    assert!(data.len() >= 40, "a long page header");
                    assert_eq!(&data[..2], &[0x10, 0xd1], "PG15 page magic 0xD110");
                    assert_eq!(
                        u16::from_le_bytes([data[2], data[3]]) & 0x0002,
                        0x0002,
                        "XLP_LONG_HEADER"
                    );
                    let pageaddr = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
                    assert_eq!(pageaddr, start.0);
                    let page_sysid = u64::from_le_bytes(data[24..32].try_into().expect("8 bytes"));
                    assert_eq!(SystemId(page_sysid), id.system_id);
                    first = false;
                }
                pos = Lsn(wal_start.0 + data.len() as u64);
                received += data.len() as u64;
                // Batch whatever is already buffered, without I/O.
                while let Some(m) = stream.try_next_buffered().expect("buffered") {
                    if let ReplicationMessage::XLogData {
                        wal_start, data, ..
                    } = m
                    {
                        assert_eq!(wal_start, pos);
                        pos = Lsn(wal_start.0 + data.len() as u64);
                        received += data.len() as u64;
                    }
                }
            }
            ReplicationMessage::Keepalive {
                reply_requested, ..
            } => {
                if reply_requested {
                    stream
                        .send_status(pos, pos, Lsn::INVALID, false)
                        .await
                        .expect("status");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(received > 0);

    // ---- keepalive reply: report positions, ask for an immediate answer ----
    stream
        .send_status(pos, pos, Lsn::INVALID, true)
        .await
        .expect("status");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, stream.next_message())
            .await
            .expect("keepalive after reply_now")
            .expect("message");
        if let ReplicationMessage::Keepalive { wal_end, .. } = m {
            assert!(wal_end >= pos);
            break;
        }
    }
    let pid = stream_pid(&mut sql, "pgbk_test").await;
    let mut reported = None;
    for _ in 0..50 {
        let rows = sql
            .simple_query(&format!(
                "select write_lsn, flush_lsn from pg_stat_replication where pid = {pid}"
            ))
            .await
            .expect("pg_stat_replication");
        let w = rows
            .first()
            .and_then(|r| r.get("write_lsn"))
            .map(str::to_string);
        if w.as_deref() == Some(pos.to_string().as_str()) {
            reported = rows
                .first()
                .and_then(|r| r.get("flush_lsn"))
                .map(str::to_string);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        reported.as_deref(),
        Some(pos.to_string().as_str()),
        "server saw our status"
    );
    let slot_lsn = one(
        &mut sql,
        &format!("select restart_lsn from pg_replication_slots where slot_name = '{slot}'"),
    )
    .await;
    assert_eq!(
        slot_lsn.as_deref(),
        Some(pos.to_string().as_str()),
        "slot advanced to our flush"
    );

    // ---- stop, and the connection is usable again ----
    stream.stop().await.expect("stop");
    let again = repl
        .identify_system()
        .await
        .expect("IDENTIFY_SYSTEM after stop");
    assert_eq!(again.system_id, id.system_id);

    // ---- a dropped stream is ended by the next command ----
    {
        let StartReplication::Streaming(mut s) = repl
            .start_physical_replication(Some(slot), pos.segment_start(seg), TimeLineId(1))
            .await
            .expect("START_REPLICATION again")
        else {
            panic!("expected a stream");
        };
        s.next_message().await.expect("a message");
    }
    repl.identify_system()
        .await
        .expect("IDENTIFY_SYSTEM after a dropped stream");

    repl.drop_slot(slot, false).await.expect("drop slot");
    assert_eq!(
        repl.read_replication_slot(slot)
            .await
            .expect("read dropped"),
        None
    );
    let e = repl
        .drop_slot(slot, false)
        .await
        .expect_err("drop missing slot");
    assert_eq!(e.code(), Some("42704"));
    repl.close().await;
    sql.close().await;
    drop(cluster);
}

/// The walsender's pid for our application_name.
async fn stream_pid(sql: &mut Connection, app: &str) -> i32 {
    one(
        sql,
        &format!("select pid from pg_stat_replication where application_name = '{app}'"),
    )
    .await
    .expect("walsender row")
    .parse()
    .expect("pid")
}

/// Whether the server sees this connection as TLS (`pg_stat_ssl`).
async fn uses_tls(c: &mut Connection) -> Option<String> {
    let sql = format!(
        "select ssl from pg_stat_ssl where pid = {}",
        c.backend_pid()
    );
    one(c, &sql).await
}
