//! [`Cluster`]: a real PostgreSQL cluster (Debian's 15, or 16, 17, 18 from
//! `.ci/install-pg-majors`) in a temporary directory, on its own port and Unix
//! socket directory, stopped (immediate) and removed on drop.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{
    chown_to_postgres, file_tail, free_port, keep_dirs, pg_command, pg_scratch_dir,
    require_pg_major, run_checked, server_bin_dir, wait_until, DEBIAN_MAJOR,
};

/// The superuser's password on [`Auth::Scram`] clusters.
pub const PASSWORD: &str = "pgbk-test-secret";

/// How clients on 127.0.0.1 authenticate. Unix-socket connections (what the
/// harness's own psql/pgbench use) are always `trust`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// `trust` for every connection.
    #[default]
    Trust,
    /// `scram-sha-256` for `host` lines (the superuser `postgres` has password
    /// [`PASSWORD`]), `password_encryption = scram-sha-256`; local stays `trust`.
    Scram,
}

/// What [`Cluster::new`] sets up. `ClusterOptions::default()` is a plain cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Extra `postgresql.conf` lines, appended last (so they win).
    pub extra_conf: Vec<String>,
    pub auth: Auth,
    /// `initdb --wal-segsize` (MiB, a power of 2 from 1 to 1024); `None` = 16.
    pub wal_segsize_mb: Option<u32>,
    /// `wal_keep_size` in MiB; default 2048 so tests can compare archived WAL with
    /// what is still in `pg_wal`.
    pub wal_keep_size_mb: u32,
    /// The PostgreSQL major whose server binaries (initdb, pg_ctl, postgres) run the
    /// cluster: `None` = Debian's 15 in [`super::PG_BIN`]; 16, 17 and 18 come from
    /// [`super::server_bin_dir`] (`.ci/install-pg-majors`), and a test asking for
    /// one that is not installed fails saying so. Client tools (psql, pgbench,
    /// pg_basebackup, pg_waldump...) are Debian's 15 whatever the major. Give a
    /// cluster made from a folder ([`Cluster::from_datadir`]) the major of the
    /// cluster its data directory comes from.
    pub major: Option<u32>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            extra_conf: Vec::new(),
            auth: Auth::Trust,
            wal_segsize_mb: None,
            wal_keep_size_mb: 2048,
            major: None,
        }
    }
}

/// A running PostgreSQL cluster owned by one test.
///
/// Layout: `root/` (0755, owned by the postgres OS user when we are root) holds
/// `data/` (the data directory), the Unix socket (`socket_dir == root`) and
/// `server.log`.
pub struct Cluster {
    pub root: PathBuf,
    pub datadir: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    /// The server log (`pg_ctl -l`).
    pub log_file: PathBuf,
    pub opts: ClusterOptions,
    dir: Option<TempDir>,
}

impl Cluster {
    /// initdb, configure and start a new cluster; panics (with initdb's output or the
    /// server log) if any step fails.
    pub fn new(opts: ClusterOptions) -> Cluster {
        let bin = require_pg_major(opts.major);
        let dir = pg_scratch_dir("pgbk-pg-");
        let root = dir.path().to_path_buf();
        let datadir = root.join("data");

        let mut initdb = pg_command(bin.join("initdb").to_str().expect("UTF-8 path"));
        initdb
            .arg("-D")
            .arg(&datadir)
            .args(["-U", "postgres", "--locale=C", "-E", "UTF8", "--no-sync"])
            .arg("--auth-local=trust");
        match opts.auth {
            Auth::Trust => {
                initdb.arg("--auth-host=trust");
            }
            Auth::Scram => {
                let pwfile = root.join("pwfile");
                fs::write(&pwfile, format!("{PASSWORD}\n")).expect("write pwfile");
                chown_to_postgres(&pwfile, false);
                initdb
                    .arg("--auth-host=scram-sha-256")
                    .arg("--pwfile")
                    .arg(&pwfile);
            }
        }
        if let Some(mb) = opts.wal_segsize_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        run_checked(&mut initdb, String::new);
        let _ = fs::remove_file(root.join("pwfile"));

        let mut cluster = Cluster {
            port: free_port(),
            socket_dir: root.clone(),
            log_file: root.join("server.log"),
            datadir,
            root,
            opts,
            dir: Some(dir),
        };
        cluster.write_hba();
        let mut conf = vec![
            "# pgbk test harness".to_string(),
            "listen_addresses = '127.0.0.1'".to_string(),
            "wal_level = replica".to_string(),
            "max_wal_senders = 10".to_string(),
            "max_replication_slots = 10".to_string(),
            format!("wal_keep_size = '{}MB'", cluster.opts.wal_keep_size_mb),
            "shared_buffers = '32MB'".to_string(),
            "hot_standby = on".to_string(),
            "password_encryption = 'scram-sha-256'".to_string(),
            "logging_collector = off".to_string(),
            "log_line_prefix = '%m [%p] %q%a '".to_string(),
            "log_replication_commands = on".to_string(),
        ];
        conf.extend(cluster.opts.extra_conf.iter().cloned());
        cluster.append_conf(&conf);
        if let Err(e) = cluster.start_on_a_free_port() {
            panic!("{e}");
        }
        cluster
    }

    /// Start PostgreSQL on a data directory filled by someone else (typically
    /// `pgbk recover` into `dir.path().join("data")`, `dir` from
    /// [`super::scratch_dir`] or [`super::pg_scratch_dir`]). Gives it to the
    /// postgres user, sets mode 0700, points port/socket/log at this cluster and
    /// starts it (`pg_ctl -w`, so a recovery runs until the server accepts
    /// connections) with the binaries of `opts.major`, which must be the major of
    /// the data directory. Panics with the server log if it does not start.
    pub fn from_datadir(dir: TempDir, opts: ClusterOptions) -> Cluster {
        let datadir = dir.path().join("data");
        assert!(
            datadir.join("PG_VERSION").exists(),
            "{} holds no data directory (no PG_VERSION)",
            datadir.display()
        );
        let (cluster, started) = Self::try_from_datadir(dir, opts);
        if let Err(e) = started {
            panic!("{e}");
        }
        cluster
    }

    /// Gives back the folder of a cluster made by [`Cluster::from_datadir`] or
    /// [`Cluster::try_from_datadir`] (stopped, not removed) for another try.
    pub fn into_dir(mut self) -> TempDir {
        if self.is_running() {
            self.stop("fast");
        }
        self.dir.take().expect("a cluster made from a folder")
    }

    /// Like [`Cluster::from_datadir`] for a start that may fail (a recovery that must
    /// stop with FATAL): the cluster, to read its log, and how the start went.
    pub fn try_from_datadir(dir: TempDir, opts: ClusterOptions) -> (Cluster, Result<(), String>) {
        require_pg_major(opts.major);
        let root = dir.path().to_path_buf();
        let datadir = root.join("data");
        if let Ok(v) = fs::read_to_string(datadir.join("PG_VERSION")) {
            let want = opts.major.unwrap_or(DEBIAN_MAJOR);
            assert_eq!(
                v.trim(),
                want.to_string(),
                "{} is a PostgreSQL {} data directory but ClusterOptions::major asks for {want}",
                datadir.display(),
                v.trim()
            );
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&datadir, fs::Permissions::from_mode(0o700)).expect("chmod datadir");
        chown_to_postgres(&root, true);
        let mut cluster = Cluster {
            port: free_port(),
            socket_dir: root.clone(),
            log_file: root.join("server.log"),
            datadir,
            root,
            opts,
            dir: Some(dir),
        };
        let started = cluster.start_on_a_free_port();
        (cluster, started)
    }

    /// A hot standby of this cluster in a new directory, own port and socket,
    /// started. Same options (so the same major). On 15: `pg_basebackup -R -X
    /// stream` over 127.0.0.1. On 16+, which Debian's 15 pg_basebackup refuses
    /// ("incompatible server version"): a copy of the data directory between
    /// `pg_backup_start` and `pg_backup_stop` (see [`Cluster::copy_for_standby`]),
    /// the standby streaming its WAL from this cluster's `pg_wal` (kept by
    /// `wal_keep_size`).
    pub fn standby(&self) -> Cluster {
        require_pg_major(self.opts.major);
        let dir = pg_scratch_dir("pgbk-pg-");
        let root = dir.path().to_path_buf();
        let datadir = root.join("data");
        if self.major() == DEBIAN_MAJOR {
            let mut basebackup = pg_command("pg_basebackup");
            basebackup
                .arg("-D")
                .arg(&datadir)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-d"])
                .arg(self.conninfo());
            run_checked(&mut basebackup, || self.log_tail(40));
        } else {
            self.copy_for_standby(&datadir);
            chown_to_postgres(&root, true);
        }
        let mut standby = Cluster {
            port: free_port(),
            socket_dir: root.clone(),
            log_file: root.join("server.log"),
            datadir,
            root,
            opts: self.opts.clone(),
            dir: Some(dir),
        };
        standby.append_conf(&[
            "# pgbk test harness: standby".to_string(),
            "hot_standby = on".to_string(),
        ]);
        if let Err(e) = standby.start_on_a_free_port() {
            panic!("{e}");
        }
        standby
    }

    /// `host=127.0.0.1 port=N user=postgres dbname=postgres`, plus
    /// `password=...` on [`Auth::Scram`] clusters.
    pub fn conninfo(&self) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        );
        if self.opts.auth == Auth::Scram {
            s.push_str(&format!(" password={PASSWORD}"));
        }
        s
    }

    /// Run SQL (any number of statements) through psql on the Unix socket, as
    /// `postgres` in database `postgres`; panics with psql's stderr and the server
    /// log tail on failure. Returns trimmed stdout (unaligned, tuples only, no
    /// command tags; one line per row, `|` between columns).
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// [`Cluster::psql`] in another database.
    pub fn psql_db(&self, dbname: &str, sql: &str) -> String {
        self.try_psql_db(dbname, sql).unwrap_or_else(|err| {
            panic!(
                "psql on port {} failed\n--- sql ---\n{sql}\n--- psql stderr ---\n{err}\n{}",
                self.port,
                self.log_tail(40)
            )
        })
    }

    /// [`Cluster::psql`], returning psql's stderr as the error instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_db("postgres", sql)
    }

    /// [`Cluster::try_psql`] in another database.
    pub fn try_psql_db(&self, dbname: &str, sql: &str) -> Result<String, String> {
        let mut cmd = pg_command("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .args(self.socket_args())
            .args(["-d", dbname])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not run psql: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = sql.to_string();
        // Written from a thread so a large result cannot deadlock against our write.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ))
        }
    }

    /// `pg_ctl start -w`; panics with the log tail on failure.
    pub fn start(&self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// `pg_ctl start -w` (up to 300 s), the error holding pg_ctl's output and the log tail.
    pub fn try_start(&self) -> Result<(), String> {
        let out = self
            .pg_ctl()
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", "300", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start on port {} failed ({})\n{}{}\n{}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            ))
        }
    }

    /// `pg_ctl stop -m <mode> -w` (mode: `fast`, `immediate` or `smart`).
    pub fn stop(&self, mode: &str) {
        let mut cmd = self.pg_ctl();
        cmd.args(["-m", mode, "-w", "-t", "300", "stop"]);
        run_checked(&mut cmd, || self.log_tail(40));
    }

    /// `pg_ctl restart -m <mode> -w`.
    pub fn restart(&self, mode: &str) {
        let mut cmd = self.pg_ctl();
        cmd.arg("-l")
            .arg(&self.log_file)
            .args(["-m", mode, "-w", "-t", "300", "restart"]);
        run_checked(&mut cmd, || self.log_tail(40));
    }

    /// `pg_ctl reload` (after [`Cluster::append_conf`]).
    pub fn reload(&self) {
        let mut cmd = self.pg_ctl();
        cmd.arg("reload");
        run_checked(&mut cmd, || self.log_tail(40));
    }

    /// `pg_ctl promote -w`.
    pub fn promote(&self) {
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", "300", "promote"]);
        run_checked(&mut cmd, || self.log_tail(40));
    }

    /// Waits (up to 120 s) until a recovering server has promoted, panicking with
    /// its log if it stops meanwhile.
    pub fn wait_promoted(&self) {
        wait_until(Duration::from_secs(120), "recovery to end", || {
            assert!(
                self.is_running(),
                "the recovered server stopped\n{}",
                self.log_tail(40)
            );
            self.try_psql("select pg_is_in_recovery()")
                .is_ok_and(|s| s == "f")
        });
    }

    /// Whether a postmaster runs on this data directory (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.pg_ctl()
            .arg("status")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Append lines to `postgresql.conf` (later lines win; takes effect at the next
    /// reload or restart).
    pub fn append_conf<S: AsRef<str>>(&self, lines: &[S]) {
        let path = self.datadir.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut text = String::from("\n");
        for line in lines {
            text.push_str(line.as_ref());
            text.push('\n');
        }
        f.write_all(text.as_bytes())
            .expect("append to postgresql.conf");
    }

    /// `pgbench -i -s <scale>` in database `postgres`.
    pub fn pgbench_init(&self, scale: u32) {
        let mut cmd = pg_command("pgbench");
        cmd.args(["-i", "-q", "-s", &scale.to_string()])
            .args(self.socket_args())
            .arg("postgres");
        run_checked(&mut cmd, || self.log_tail(40));
    }

    /// Background load: `pgbench -n -T <seconds> -c <clients>` (TPC-B on the tables of
    /// [`Cluster::pgbench_init`]). stdout is discarded, stderr appended to
    /// `root/pgbench.log`. Wait on or kill the child as you need; it ends by itself
    /// after `seconds`.
    pub fn pgbench(&self, seconds: u32, clients: u32) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("pgbench.log"))
            .expect("open pgbench.log");
        self.pgbench_command(seconds, clients)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pgbench")
    }

    /// [`Cluster::pgbench`], blocking; panics unless pgbench succeeds. Returns the
    /// number of transactions processed.
    pub fn pgbench_wait(&self, seconds: u32, clients: u32) -> u64 {
        let mut cmd = self.pgbench_command(seconds, clients);
        let out = run_checked(&mut cmd, || self.log_tail(40));
        out.lines()
            .find_map(|l| {
                l.strip_prefix("number of transactions actually processed:")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.split('/').next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or_else(|| panic!("no transaction count in pgbench output:\n{out}"))
    }

    fn pgbench_command(&self, seconds: u32, clients: u32) -> Command {
        let mut cmd = pg_command("pgbench");
        cmd.args(["-n", "-T", &seconds.to_string(), "-c", &clients.to_string()])
            .args(["-j", &clients.clamp(1, 2).to_string()])
            .args(self.socket_args())
            .arg("postgres");
        cmd
    }

    /// Wait (up to 120 s) until `standby` has replayed everything this cluster had
    /// written when called.
    pub fn wait_for_catchup(&self, standby: &Cluster) {
        let lsn = self.psql("select pg_current_wal_lsn()");
        wait_until(
            Duration::from_secs(120),
            &format!("standby on port {} to replay {lsn}", standby.port),
            || {
                standby
                    .try_psql(&format!(
                        "select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
                    ))
                    .is_ok_and(|s| s == "t")
            },
        );
    }

    pub fn pg_wal(&self) -> PathBuf {
        self.datadir.join("pg_wal")
    }

    /// The PostgreSQL major of the server binaries (`opts.major`, 15 by default).
    pub fn major(&self) -> u32 {
        self.opts.major.unwrap_or(DEBIAN_MAJOR)
    }

    /// The database system identifier: `pg_control_system()` when the cluster
    /// answers SQL (any major), else, on a stopped 15 cluster, `pg_controldata`.
    /// Panics on a 16+ cluster that does not answer (Debian's 15 pg_controldata
    /// cannot read its control file).
    pub fn system_id(&self) -> String {
        match self.try_psql("select system_identifier from pg_control_system()") {
            Ok(id) if !id.is_empty() => id,
            _ if self.major() == DEBIAN_MAJOR => self.controldata("Database system identifier"),
            Ok(_) => panic!("pg_control_system() on port {} returned no row", self.port),
            Err(e) => panic!(
                "system_id of a PostgreSQL {} cluster needs it running (Debian's 15 \
                 pg_controldata cannot read its control file); psql: {e}\n{}",
                self.major(),
                self.log_tail(20)
            ),
        }
    }

    /// One field of `pg_controldata`, by its label (e.g. `"Latest checkpoint's TimeLineID"`).
    /// PostgreSQL 15 clusters only: Debian's 15 pg_controldata cannot read the
    /// control file of a newer major (ask the server: `pg_control_checkpoint()`, ...).
    pub fn controldata(&self, field: &str) -> String {
        assert_eq!(
            self.major(),
            DEBIAN_MAJOR,
            "controldata({field:?}) on a PostgreSQL {} cluster: Debian's 15 pg_controldata \
             cannot read its control file; ask the server (pg_control_*() functions)",
            self.major()
        );
        let mut cmd = pg_command("pg_controldata");
        cmd.arg("-D").arg(&self.datadir);
        let out = run_checked(&mut cmd, String::new);
        out.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == field).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {field:?} in pg_controldata output:\n{out}"))
    }

    /// `pg_walfile_name(pg_current_wal_lsn())` (primary only).
    pub fn current_wal_file(&self) -> String {
        self.psql("select pg_walfile_name(pg_current_wal_lsn())")
    }

    /// The whole server log.
    pub fn log(&self) -> String {
        fs::read(&self.log_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the server log, with a header, for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- server log of the cluster on port {} ({}), last {lines} lines ---\n{}",
            self.port,
            self.log_file.display(),
            file_tail(&self.log_file, lines)
        )
    }

    /// What [`Cluster::standby`] does on 16+ instead of pg_basebackup: a base backup
    /// by hand, as PostgreSQL's documentation describes it. In one psql session,
    /// `pg_backup_start(fast)`; the data directory copied into `dest` (without
    /// `pg_wal` and the other folders a backup leaves empty, postmaster.pid and
    /// temporary files; a file vanishing meanwhile is skipped); `pg_backup_stop`,
    /// whose label becomes `backup_label`. Then `standby.signal` and
    /// `primary_conninfo`, as `pg_basebackup -R` would. Files belong to us: chown
    /// them. Tablespaces are refused (their links would point at this cluster's).
    fn copy_for_standby(&self, dest: &Path) {
        let has_tablespaces = fs::read_dir(self.datadir.join("pg_tblspc"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        assert!(
            !has_tablespaces,
            "Cluster::standby of a PostgreSQL {} cluster with tablespaces is not supported",
            self.major()
        );
        let mut psql = pg_command("psql");
        psql.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(self.socket_args())
            .args(["-d", "postgres"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = psql
            .spawn()
            .unwrap_or_else(|e| panic!("could not run psql: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let fail = |child: &mut Child, what: &str| -> ! {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            panic!(
                "standby copy of the cluster on port {}: {what}\n--- psql stderr ---\n{err}\n{}",
                self.port,
                self.log_tail(40)
            )
        };
        if writeln!(stdin, "select pg_backup_start('pgbk test standby', true);")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            fail(&mut child, "psql exited");
        }
        let mut start_lsn = String::new();
        if stdout.read_line(&mut start_lsn).unwrap_or(0) == 0 {
            fail(&mut child, "pg_backup_start failed");
        }

        const EMPTIED: [&str; 8] = [
            "pg_wal",
            "pg_replslot",
            "pg_dynshmem",
            "pg_notify",
            "pg_serial",
            "pg_snapshots",
            "pg_stat_tmp",
            "pg_subtrans",
        ];
        copy_tree(&self.datadir, dest, &|rel: &Path| {
            let top = rel.components().count() == 1;
            let name = rel.file_name().unwrap_or_default().to_string_lossy();
            let parent_emptied =
                rel.components().count() == 2 && EMPTIED.iter().any(|d| rel.starts_with(d));
            let unwanted =
                top && ["postmaster.pid", "postmaster.opts", "backup_label.old"].contains(&&*name);
            !(parent_emptied
                || unwanted
                || name.starts_with("pgsql_tmp")
                || name == "pg_internal.init")
        });
        fs::create_dir_all(dest.join("pg_wal/archive_status")).expect("create pg_wal");

        if writeln!(stdin, "select labelfile from pg_backup_stop(false);").is_err() {
            fail(&mut child, "psql exited");
        }
        drop(stdin);
        let mut label = String::new();
        let _ = stdout.read_to_string(&mut label);
        let status = child.wait().expect("wait for psql");
        if !status.success() || !label.contains("START WAL LOCATION") {
            fail(
                &mut child,
                &format!("pg_backup_stop failed ({status}): {label:?}"),
            );
        }
        fs::write(dest.join("backup_label"), format!("{}\n", label.trim_end()))
            .expect("write backup_label");
        fs::write(dest.join("standby.signal"), "").expect("write standby.signal");
        let mut conf = OpenOptions::new()
            .append(true)
            .open(dest.join("postgresql.auto.conf"))
            .expect("open postgresql.auto.conf");
        writeln!(
            conf,
            "primary_conninfo = '{}'",
            self.conninfo().replace('\'', "''")
        )
        .expect("write primary_conninfo");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dest, fs::Permissions::from_mode(0o700)).expect("chmod datadir");
    }

    fn socket_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    fn pg_ctl(&self) -> Command {
        let pg_ctl = server_bin_dir(self.opts.major).join("pg_ctl");
        let mut cmd = pg_command(pg_ctl.to_str().expect("UTF-8 path"));
        cmd.arg("-D").arg(&self.datadir);
        cmd
    }

    fn write_hba(&self) {
        let method = match self.opts.auth {
            Auth::Trust => "trust",
            Auth::Scram => "scram-sha-256",
        };
        let hba = format!(
            "# pgbk test harness\n\
             local all         all              trust\n\
             local replication all              trust\n\
             host  all         all 127.0.0.1/32 {method}\n\
             host  replication all 127.0.0.1/32 {method}\n"
        );
        fs::write(self.datadir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    /// Point port and socket at this cluster and start; if another process took the
    /// port meanwhile, retry on a new one.
    fn start_on_a_free_port(&mut self) -> Result<(), String> {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            self.append_conf(&[
                format!("port = {}", self.port),
                format!("unix_socket_directories = '{}'", self.socket_dir.display()),
            ]);
            let log_before = self.log().len();
            match self.try_start() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let new_log = self.log().get(log_before..).unwrap_or_default().to_string();
                    if attempt < ATTEMPTS && new_log.contains("could not bind") {
                        self.port = free_port();
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err("no free port".into())
    }
}

/// Copies the tree `src` into `dest` (created): directories, regular files (with
/// their mode) and symbolic links; `keep(path relative to src)` false leaves an
/// entry (and what is under it) out. Entries that vanish while we copy (a server
/// runs there) are skipped.
fn copy_tree(src: &Path, dest: &Path, keep: &dyn Fn(&Path) -> bool) {
    fn walk(root: &Path, rel: &Path, dest: &Path, keep: &dyn Fn(&Path) -> bool) {
        let from = root.join(rel);
        let to = dest.join(rel);
        fs::create_dir_all(&to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
        let entries = match fs::read_dir(&from) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => panic!("read {}: {e}", from.display()),
        };
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
            let rel = rel.join(entry.file_name());
            if !keep(&rel) {
                continue;
            }
            let (from, to) = (root.join(&rel), dest.join(&rel));
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("stat {}: {e}", from.display()),
            };
            let done = if kind.is_dir() {
                walk(root, &rel, dest, keep);
                Ok(())
            } else if kind.is_symlink() {
                fs::read_link(&from).and_then(|target| std::os::unix::fs::symlink(target, &to))
            } else {
                fs::copy(&from, &to).map(|_| ())
            };
            match done {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("copy {} to {}: {e}", from.display(), to.display()),
            }
        }
    }
    walk(src, Path::new(""), dest, keep);
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(dir) = self.dir.take() {
            if keep_dirs() {
                eprintln!("keeping cluster directory {}", dir.keep().display());
            }
        }
    }
}
