//! `pgbk demo`: the whole loop on a throwaway local cluster — stream WAL, back up
//! under load, verify, note a moment, recover to it and prove the data is what it
//! was then — with RPO and RTO measured on the way.
//!
//! The scenario drives PostgreSQL's own tools (initdb, pg_ctl, pgbench) and the pgbk
//! binary itself (`current_exe -c <scratch>/pgbk/pgbk.conf <verb>`), exactly as a
//! DBA would, so what it shows is what the verbs do. Every resource it creates
//! (clusters, background processes, the scratch folder) is a guard that is released
//! on every way out: success, error, or Ctrl-C (SIGINT/SIGTERM only set a flag that
//! every wait checks; children run in their own process group so the terminal's
//! Ctrl-C reaches only us and the cleanup happens in order).

use anyhow::{anyhow, bail, Context as _, Result};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::pg::{ConnInfo, ConnectOptions, Connection};
use crate::units::human_bytes;

/// The server name the demo configures.
pub const SERVER: &str = "demo";

/// What the demo runs with.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Folder of initdb, pg_ctl, pgbench.
    pub pg_bin: PathBuf,
    /// pgbench scale (about 15 MB per unit).
    pub scale: u32,
    /// Keep the scratch folder (clusters stopped) for a look afterwards.
    pub keep: bool,
    /// Where the scratch folder is created (default: the temporary directory).
    pub workdir: Option<PathBuf>,
    /// The pgbk binary the verbs run through.
    pub exe: PathBuf,
}

/// What the demo measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DemoSummary {
    /// The backup's id.
    pub backup_id: String,
    /// Data directory size the backup holds.
    pub backup_bytes: u64,
    /// What it takes in the repository (compressed).
    pub stored_bytes: u64,
    /// Wall time of `pgbk backup` (including the wait for its WAL).
    pub backup_secs: f64,
    /// WAL the backup host was missing at the target moment (`status`).
    pub rpo_bytes: u64,
    /// Age of that WAL in seconds.
    pub rpo_secs: Option<f64>,
    /// From `recover` start to the recovered server accepting writes.
    pub rto_secs: f64,
    /// The recovery target.
    pub target_time: String,
    /// `pgbench_history` rows at the target, on the source.
    pub expected_rows: u64,
    /// The same count on the recovered server.
    pub recovered_rows: u64,
    /// First marker present, second absent, row counts equal.
    pub verified: bool,
    /// The scratch folder (only still there with `--keep`).
    pub scratch: PathBuf,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag the demo's waits check.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, waking early with an error on Ctrl-C.
fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    check_interrupted()
}

/// `(uid, gid)` PostgreSQL runs as: the postgres user when we are root.
fn postgres_user() -> Result<Option<(u32, u32)>> {
    crate::pg::local::postgres_user()
        .map_err(|e| anyhow!("{e}: create one, or run the demo as an ordinary user"))
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    Ok(crate::pg::local::chown_tree(path, owner)?)
}

fn free_port() -> Result<u16> {
    crate::pg::local::free_port().context("finding a free port")
}

/// A background child in its own process group, stopped on drop.
struct Background {
    child: Child,
    what: &'static str,
}

impl Background {
    /// SIGTERM, up to 10 s for it to exit, then SIGKILL.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!("{} did not stop on SIGTERM; killing it", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL cluster we started, stopped (immediate) on drop.
struct Cluster {
    pg_bin: PathBuf,
    owner: Option<(u32, u32)>,
    datadir: PathBuf,
    log: PathBuf,
    port: u16,
    running: bool,
}

impl Cluster {
    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn pg_ctl(&self) -> Command {
        let mut c = pg_command(&self.pg_bin, "pg_ctl", self.owner);
        c.arg("-D").arg(&self.datadir);
        c
    }

    /// Appends the port and socket settings, then `pg_ctl start -w`.
    fn start(&mut self, socket_dir: &Path) -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.datadir.join("postgresql.conf"))
            .context("postgresql.conf")?;
        writeln!(
            f,
            "\n# pgbk demo\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'",
            self.port,
            socket_dir.display()
        )?;
        drop(f);
        let mut c = self.pg_ctl();
        c.arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "600", "start"]);
        self.running = true;
        run(&mut c, "pg_ctl start").map_err(|e| {
            anyhow!(
                "{e:#}\n--- {} ---\n{}",
                self.log.display(),
                tail(&self.log, 20)
            )
        })?;
        Ok(())
    }

    fn stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let _ = self
            .pg_ctl()
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

use crate::pg::local::{pg_command, tail};

/// Runs a command to completion (giving up on Ctrl-C) and returns its stdout; an
/// error holds its stderr.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: could not run {:?}", cmd.get_program()))?;
    fn reader<R: std::io::Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    }
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            let mut bg = Background {
                child,
                what: "a child",
            };
            bg.stop();
            bail!("{what}: interrupted");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("{what} failed ({status}): {}", err.trim());
    }
    Ok(out)
}

/// Prints the demo's progress; the library never draws itself.
pub trait Reporter {
    /// A step begins.
    fn step(&mut self, n: u32, title: &str);
    /// A detail of the current step.
    fn note(&mut self, text: &str);
}

/// The scenario and the resources it holds.
struct Demo<'a> {
    opts: &'a DemoOptions,
    owner: Option<(u32, u32)>,
    scratch: PathBuf,
    config: PathBuf,
    rt: tokio::runtime::Runtime,
    started: Instant,
}

impl Demo<'_> {
    /// `pgbk -c <config> [args]`, returning stdout.
    fn pgbk(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new(&self.opts.exe);
        c.arg("-c").arg(&self.config).args(args).process_group(0);
        c.env_remove("PGBK_CONFIG");
        run(&mut c, &format!("pgbk {}", args.join(" ")))
    }

    fn pgbk_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let out = self.pgbk(&all)?;
        serde_json::from_str(&out)
            .with_context(|| format!("pgbk {}: output not JSON", args.join(" ")))
    }

    fn connect(&self, cluster: &Cluster) -> Result<Connection> {
        let info = ConnInfo::parse(&cluster.conninfo())?;
        let opts = ConnectOptions {
            replication: false,
            application_name: Some("pgbk_demo".into()),
            connect_timeout: Some(Duration::from_secs(10)),
        };
        Ok(self.rt.block_on(Connection::connect(&info, &opts))?)
    }

    /// One query, first column of the first row ("" when none or NULL).
    fn query(&self, conn: &mut Connection, sql: &str) -> Result<String> {
        let rows = self
            .rt
            .block_on(conn.simple_query(sql))
            .with_context(|| format!("SQL: {sql}"))?;
        Ok(rows
            .first()
            .and_then(|r| r.get_idx(0))
            .unwrap_or_default()
            .to_string())
    }

    fn elapsed(&self) -> String {
        format!("{:6.1}s", self.started.elapsed().as_secs_f64())
    }
}

fn mkdir_owned(path: &Path, owner: Option<(u32, u32)>, mode: u32) -> Result<()> {
    fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    chown_tree(path, owner)
}

/// Runs the demo; `Ok` holds the summary whether or not the verification passed.
pub fn run_demo(opts: &DemoOptions, out: &mut dyn Reporter) -> Result<DemoSummary> {
    catch_signals();
    for tool in ["initdb", "pg_ctl", "pgbench"] {
        if !opts.pg_bin.join(tool).is_file() {
            bail!(
                "{} not found: install PostgreSQL 15 or point --pg-bin at its binaries",
                opts.pg_bin.join(tool).display()
            );
        }
    }
    let owner = postgres_user()?;
    let base = match &opts.workdir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let base = fs::canonicalize(&base).with_context(|| format!("{}", base.display()))?;
    if let Some((uid, _)) = owner {
        for dir in base.ancestors() {
            use std::os::unix::fs::MetadataExt as _;
            let meta = fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
            if meta.mode() & 0o001 == 0 && meta.uid() != uid {
                bail!(
                    "the postgres OS user cannot enter {} (mode {:o}), so PostgreSQL could not reach the demo's folder: chmod o+x it or choose another --workdir",
                    dir.display(),
                    meta.mode() & 0o7777
                );
            }
        }
    }
    let name = format!(
        "pgbk-demo-{}-{}",
        std::process::id(),
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    );
    let path = base.join(name);
    fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
    let scratch = crate::pg::local::ScratchDir {
        path: path.clone(),
        keep: opts.keep,
    };
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let demo = Demo {
        opts,
        owner,
        scratch: path.clone(),
        config: path.join("pgbk").join("pgbk.conf"),
        rt,
        started: Instant::now(),
    };
    let result = scenario(&demo, out);
    if opts.keep {
        out.note(&format!("kept {}", scratch.path.display()));
    }
    drop(scratch);
    result
}

/// The backup step 4 took.
struct BackupTaken {
    id: String,
    bytes: u64,
    stored_bytes: u64,
    secs: f64,
}

/// The moment recovery aims at (step 5).
struct Target {
    /// `YYYY-MM-DD HH:MI:SS.US+00`.
    time: String,
    /// `pgbench_history` rows committed at that moment.
    expected_rows: u64,
}

/// What the recovered server holds (step 7).
struct Recovered {
    rows: u64,
    verified: bool,
}

/// The eight steps, in order. The resources a step starts are locals of this
/// function, so that on any way out they are released latest first.
fn scenario(d: &Demo, out: &mut dyn Reporter) -> Result<DemoSummary> {
    let mut source = d.start_source(out)?;
    let (mut receive_wal, mut conn) = d.start_receive_wal(&source, out)?;
    let mut pgbench = d.start_pgbench(&source, &mut conn, out)?;
    let backup = d.backup_and_verify(out)?;
    let target = d.mark_target(&source, &mut conn, out)?;
    let (rpo_bytes, rpo_secs) = d.measure_rpo(&mut conn, out)?;

    // 7. disaster and recovery
    out.step(
        7,
        "stop pgbench; switch-wal --archive; recover to the target; start it",
    );
    pgbench.stop();
    let (mut recovered, mut rconn, rto_secs) = d.recover(&target, out)?;
    let check = d.check_recovered(&mut rconn, &target, out)?;
    drop(rconn);
    drop(conn);

    // 8. cleanup (the guards do it on every other way out)
    out.step(8, "cleanup");
    recovered.stop("fast");
    drop(pgbench);
    receive_wal.stop();
    source.stop("fast");
    Ok(DemoSummary {
        backup_id: backup.id,
        backup_bytes: backup.bytes,
        stored_bytes: backup.stored_bytes,
        backup_secs: backup.secs,
        rpo_bytes,
        rpo_secs,
        rto_secs,
        target_time: target.time,
        expected_rows: target.expected_rows,
        recovered_rows: check.rows,
        verified: check.verified,
        scratch: d.scratch.clone(),
    })
}

impl Demo<'_> {
    /// The clusters' folder (data directories, logs, sockets).
    fn pg_dir(&self) -> PathBuf {
        self.scratch.join("pg")
    }

    /// pgbk's folder (configuration, home, receive-wal's log).
    fn pgbk_dir(&self) -> PathBuf {
        self.scratch.join("pgbk")
    }

    /// Step 1: initdb and start the throwaway source cluster.
    fn start_source(&self, out: &mut dyn Reporter) -> Result<Cluster> {
        let opts = self.opts;
        out.step(
            1,
            &format!(
                "scratch folder {}; throwaway cluster",
                self.scratch.display()
            ),
        );
        let pgdir = self.pg_dir();
        mkdir_owned(&pgdir, self.owner, 0o700)?;
        let mut source = Cluster {
            pg_bin: opts.pg_bin.clone(),
            owner: self.owner,
            datadir: pgdir.join("data"),
            log: pgdir.join("source.log"),
            port: free_port()?,
            running: false,
        };
        let mut initdb = pg_command(&opts.pg_bin, "initdb", self.owner);
        initdb.arg("-D").arg(&source.datadir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(&mut initdb, "initdb")?;
        fs::OpenOptions::new()
            .append(true)
            .open(source.datadir.join("postgresql.conf"))?
            .write_all(
                b"\nwal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
                  shared_buffers = '64MB'\nlog_line_prefix = '%m [%p] '\n",
            )?;
        source.start(&pgdir)?;
        // The clock starts with this step: its own time would print the same number twice.
        out.note(&format!(
            "{} initdb + start on 127.0.0.1:{}",
            self.elapsed(),
            source.port
        ));
        Ok(source)
    }

    /// Step 2: pgbk's configuration, then receive-wal, waited for until it streams.
    /// Returns it and a SQL session on the source.
    fn start_receive_wal(
        &self,
        source: &Cluster,
        out: &mut dyn Reporter,
    ) -> Result<(Background, Connection)> {
        out.step(2, "pgbk configuration; receive-wal streams the WAL");
        let pgbk_dir = self.pgbk_dir();
        fs::create_dir(&pgbk_dir)?;
        fs::create_dir(pgbk_dir.join("conf.d"))?;
        fs::write(
            &self.config,
            format!(
                "[pgbk]\nhome = {}\nlog_level = info\n",
                pgbk_dir.join("home").display()
            ),
        )?;
        fs::write(
            pgbk_dir.join("conf.d").join("demo.conf"),
            format!(
                "[{SERVER}]\ndescription = pgbk demo cluster\nconninfo = {}\n\
                 streaming_conninfo = %(conninfo)s\nbackup_method = postgres\n\
                 streaming_archiver = on\nslot_name = pgbk_demo\ncreate_slot = auto\n",
                source.conninfo()
            ),
        )?;
        let t = Instant::now();
        let rw_log = fs::File::create(pgbk_dir.join("receive-wal.log"))?;
        let mut receive_wal = Background {
            child: Command::new(&self.opts.exe)
                .arg("-c")
                .arg(&self.config)
                .args(["receive-wal", SERVER])
                .env_remove("PGBK_CONFIG")
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(rw_log.try_clone()?)
                .stderr(rw_log)
                .spawn()
                .context("starting receive-wal")?,
            what: "receive-wal",
        };
        let mut conn = self.connect(source)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.query(
                &mut conn,
                "select count(*) from pg_stat_replication where application_name = 'pgbk_receive_wal'",
            )?;
            if n == "1" {
                break;
            }
            if let Some(st) = receive_wal.exited() {
                bail!(
                    "receive-wal exited ({st}):\n{}",
                    tail(&pgbk_dir.join("receive-wal.log"), 20)
                );
            }
            if Instant::now() > deadline {
                bail!("receive-wal did not start streaming within 60 s");
            }
            sleep(Duration::from_millis(100))?;
        }
        out.note(&format!(
            "{} receive-wal (pid {}) streaming after {:.1}s (slot pgbk_demo)",
            self.elapsed(),
            receive_wal.child.id(),
            t.elapsed().as_secs_f64()
        ));
        Ok((receive_wal, conn))
    }

    /// Step 3: `pgbench -i`, the marker table, then pgbench running in the background.
    fn start_pgbench(
        &self,
        source: &Cluster,
        conn: &mut Connection,
        out: &mut dyn Reporter,
    ) -> Result<Background> {
        let opts = self.opts;
        let pgdir = self.pg_dir();
        out.step(
            3,
            &format!("pgbench -i -s {}; pgbench in the background", opts.scale),
        );
        let t = Instant::now();
        let bench_args = |c: &mut Command| {
            c.args([
                "-h",
                "127.0.0.1",
                "-p",
                &source.port.to_string(),
                "-U",
                "postgres",
            ]);
        };
        let mut init = pg_command(&opts.pg_bin, "pgbench", self.owner);
        init.args(["-i", "-q", "-s", &opts.scale.to_string()]);
        bench_args(&mut init);
        init.arg("postgres");
        run(&mut init, "pgbench -i")?;
        self.query(
            conn,
            "create table demo_marker (id int primary key, note text, at timestamptz default clock_timestamp())",
        )?;
        out.note(&format!(
            "{} {} accounts loaded in {:.1}s",
            self.elapsed(),
            u64::from(opts.scale) * 100_000,
            t.elapsed().as_secs_f64()
        ));
        let bench_log = fs::File::create(pgdir.join("pgbench.log"))?;
        let mut load = pg_command(&opts.pg_bin, "pgbench", self.owner);
        load.args(["-n", "-c", "4", "-j", "2", "-T", "86400"]);
        bench_args(&mut load);
        load.arg("postgres")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(bench_log);
        let mut pgbench = Background {
            child: load.spawn().context("starting pgbench")?,
            what: "pgbench",
        };
        sleep(Duration::from_secs(2))?;
        if let Some(st) = pgbench.exited() {
            bail!(
                "pgbench exited ({st}):\n{}",
                tail(&pgdir.join("pgbench.log"), 10)
            );
        }
        Ok(pgbench)
    }

    /// Step 4: A backup under load, then `verify-backup` and `check-backup` of it.
    fn backup_and_verify(&self, out: &mut dyn Reporter) -> Result<BackupTaken> {
        out.step(4, "backup under load; verify-backup; check-backup");
        let t = Instant::now();
        let info = self.pgbk_json(&["backup", SERVER, "--immediate-checkpoint"])?;
        let backup_secs = t.elapsed().as_secs_f64();
        let backup_id = info["backup_id"]
            .as_str()
            .ok_or_else(|| anyhow!("backup: no backup_id in its output"))?
            .to_string();
        let backup_bytes = info["size_bytes"].as_u64().unwrap_or(0);
        let stored_bytes = info["stored_bytes"].as_u64().unwrap_or(0);
        out.note(&format!(
            "{} backup {backup_id}: {} stored as {} in {:.1}s",
            self.elapsed(),
            human_bytes(backup_bytes),
            human_bytes(stored_bytes),
            backup_secs
        ));
        let t = Instant::now();
        self.pgbk(&["verify-backup", SERVER, &backup_id])?;
        out.note(&format!(
            "{} verify-backup: every checksum matches ({:.1}s)",
            self.elapsed(),
            t.elapsed().as_secs_f64()
        ));
        let t = Instant::now();
        self.pgbk(&["check-backup", SERVER, &backup_id])?;
        out.note(&format!(
            "{} check-backup: the WAL chain is complete ({:.1}s)",
            self.elapsed(),
            t.elapsed().as_secs_f64()
        ));
        Ok(BackupTaken {
            id: backup_id,
            bytes: backup_bytes,
            stored_bytes,
            secs: backup_secs,
        })
    }

    /// Step 5: The first marker row and the target time, with the rows committed then.
    fn mark_target(
        &self,
        source: &Cluster,
        conn: &mut Connection,
        out: &mut dyn Reporter,
    ) -> Result<Target> {
        out.step(5, "marker row and target time");
        sleep(Duration::from_secs(2))?;
        // While `lock` holds pgbench_history, no transaction that writes it can commit, so
        // the count taken under the lock is exactly the rows committed at the target.
        let mut lock = self.connect(source)?;
        self.query(
            &mut lock,
            "begin; lock table pgbench_history in exclusive mode",
        )?;
        self.query(
            conn,
            "insert into demo_marker (id, note) values (1, 'before the target')",
        )?;
        let target = self.query(
            conn,
            "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
        )?;
        let expected_rows: u64 = self
            .query(&mut lock, "select count(*) from pgbench_history")?
            .parse()
            .context("count of pgbench_history")?;
        std::thread::sleep(Duration::from_millis(5));
        self.query(&mut lock, "commit")?;
        drop(lock);
        out.note(&format!(
            "{} target time {target}: {expected_rows} pgbench_history rows",
            self.elapsed()
        ));
        Ok(Target {
            time: target,
            expected_rows,
        })
    }

    /// Step 6: The RPO at the target moment (`status`), more load, the second marker.
    /// Returns the RPO in bytes and seconds.
    fn measure_rpo(
        &self,
        conn: &mut Connection,
        out: &mut dyn Reporter,
    ) -> Result<(u64, Option<f64>)> {
        out.step(
            6,
            "RPO at the target moment (status); more load; second marker",
        );
        let status = self.pgbk_json(&["status", SERVER])?;
        let rpo_bytes = status["rpo"]["bytes"].as_u64().unwrap_or(0);
        let rpo_secs = status["rpo"]["seconds"].as_f64();
        out.note(&format!(
            "{} RPO now (status): {} behind, {}",
            self.elapsed(),
            human_bytes(rpo_bytes),
            rpo_secs
                .map(|s| format!("{s:.3}s"))
                .unwrap_or_else(|| "-".into())
        ));
        sleep(Duration::from_secs(3))?;
        self.query(
            conn,
            "insert into demo_marker (id, note) values (2, 'after the target')",
        )?;
        out.note(&format!("{} second marker inserted", self.elapsed()));
        Ok((rpo_bytes, rpo_secs))
    }

    /// Step 7a: The last segment archived, `recover` to the target, the recovered server
    /// started and waited for until promoted. Returns it, a session on it and the
    /// RTO in seconds.
    fn recover(
        &self,
        target: &Target,
        out: &mut dyn Reporter,
    ) -> Result<(Cluster, Connection, f64)> {
        let pgdir = self.pg_dir();
        self.pgbk(&[
            "switch-wal",
            SERVER,
            "--archive",
            "--archive-timeout",
            "120",
        ])?;
        out.note(&format!("{} the last segment is archived", self.elapsed()));
        let recovered_dir = self.scratch.join("recovered");
        let t = Instant::now();
        let rec = self.pgbk_json(&[
            "recover",
            SERVER,
            "auto",
            &recovered_dir.to_string_lossy(),
            "--target-time",
            &target.time,
            "--target-action",
            "promote",
        ])?;
        let restore_secs = t.elapsed().as_secs_f64();
        out.note(&format!(
            "{} recover: backup {} restored in {:.1}s",
            self.elapsed(),
            rec["backup_id"].as_str().unwrap_or("?"),
            restore_secs
        ));
        fs::set_permissions(&recovered_dir, fs::Permissions::from_mode(0o700))?;
        chown_tree(&recovered_dir, self.owner)?;
        let mut recovered = Cluster {
            pg_bin: self.opts.pg_bin.clone(),
            owner: self.owner,
            datadir: recovered_dir.clone(),
            log: pgdir.join("recovered.log"),
            port: free_port()?,
            running: false,
        };
        recovered.start(&pgdir)?;
        let mut rconn = self.connect(&recovered)?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.query(&mut rconn, "select pg_is_in_recovery()")? != "f" {
            if Instant::now() > deadline {
                bail!("the recovered server is still in recovery after 10 minutes");
            }
            sleep(Duration::from_millis(20))?;
        }
        let rto_secs = t.elapsed().as_secs_f64();
        out.note(&format!(
            "{} recovered server on 127.0.0.1:{} promoted and accepting writes: RTO {:.1}s",
            self.elapsed(),
            recovered.port,
            rto_secs
        ));
        Ok((recovered, rconn, rto_secs))
    }

    /// Step 7b: The recovered server holds the first marker, not the second, and exactly
    /// the rows committed at the target.
    fn check_recovered(
        &self,
        rconn: &mut Connection,
        target: &Target,
        out: &mut dyn Reporter,
    ) -> Result<Recovered> {
        let expected_rows = target.expected_rows;
        let markers = self.query(
            rconn,
            "select coalesce(string_agg(id::text, ',' order by id), '') from demo_marker",
        )?;
        let recovered_rows: u64 = self
            .query(rconn, "select count(*) from pgbench_history")?
            .parse()
            .context("count of pgbench_history")?;
        let verified = markers == "1" && recovered_rows == expected_rows;
        out.note(&format!(
            "markers: {} (expected: 1); pgbench_history: {recovered_rows} rows (expected {expected_rows})",
            if markers.is_empty() { "none" } else { &markers }
        ));
        Ok(Recovered {
            rows: recovered_rows,
            verified,
        })
    }
}
