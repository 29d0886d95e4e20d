//! The drill's throwaway PostgreSQL: started from a restored data directory on a
//! free port, reachable only through a Unix socket in the drill's own folder
//! (`listen_addresses = ''`), with its own `pg_hba.conf` (trust on that socket,
//! nothing else), and stopped when dropped. It runs on this host (as the
//! `postgres` OS user when pgbk runs as root) or on a drill host over SSH; either
//! way it is driven with PostgreSQL's own programs (`pg_ctl`, `psql`,
//! `pg_amcheck`), so both paths are the same code.

use crate::pg::local::{pg_command, tail};
use crate::ssh::{shell_quote, SshSession};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Why the drill's server could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A program could not be run or refused.
    #[error("{what}: {msg}")]
    Command { what: String, msg: String },
    /// The server stopped (recovery failed); the log's last lines say why.
    #[error("the drill's PostgreSQL stopped during {phase}; its log ends:\n{log}")]
    Stopped { phase: String, log: String },
    /// The server did not get there in time.
    #[error("the drill's PostgreSQL did not {what} within {seconds} s")]
    Timeout { what: String, seconds: u64 },
    /// A query failed.
    #[error("{sql}: {msg}")]
    Query { sql: String, msg: String },
}

/// What a program did.
#[derive(Debug, Clone)]
pub struct Ran {
    /// Exited 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Ran {
    /// The first non-empty line of stderr, else of stdout.
    pub fn first_line(&self) -> String {
        self.stderr
            .lines()
            .chain(self.stdout.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no output")
            .to_string()
    }
}

/// Where the drill's programs run.
pub enum Host {
    /// This host, as `owner` (the `postgres` OS user when pgbk runs as root).
    Local {
        /// uid and gid, `None`: this process's user.
        owner: Option<(u32, u32)>,
    },
    /// A drill host, over one SSH session (as the SSH user, who runs PostgreSQL).
    Remote(SshSession),
}

impl Host {
    /// How messages name the host.
    pub fn describe(&self) -> String {
        match self {
            Host::Local { .. } => "this host".into(),
            Host::Remote(s) => s.target().display(),
        }
    }

    /// Runs `argv` (a program by absolute path and its arguments).
    pub fn run(&self, argv: &[&str]) -> Result<Ran, ClusterError> {
        let fail = |msg: String| ClusterError::Command {
            what: argv.first().copied().unwrap_or("?").to_string(),
            msg,
        };
        match self {
            Host::Local { owner } => {
                let program = Path::new(argv.first().copied().unwrap_or_default());
                let dir = program.parent().unwrap_or(Path::new("/"));
                let name = program
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let out = pg_command(dir, &name, *owner)
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| fail(e.to_string()))?;
                Ok(Ran {
                    ok: out.status.success(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
            Host::Remote(session) => {
                let line: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
                let out = session
                    .exec(&format!("LC_ALL=C {}", line.join(" ")))
                    .map_err(|e| fail(e.to_string()))?;
                Ok(Ran {
                    ok: out.success(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        }
    }

    /// Writes (or appends to) a small text file.
    pub fn write(&self, path: &Path, text: &str, append: bool) -> Result<(), ClusterError> {
        let fail = |msg: String| ClusterError::Command {
            what: path.display().to_string(),
            msg,
        };
        match self {
            Host::Local { .. } => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .mode(0o600)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(path)
                    .map_err(|e| fail(e.to_string()))?;
                f.write_all(text.as_bytes())
                    .map_err(|e| fail(e.to_string()))
            }
            Host::Remote(session) => {
                let out = session
                    .exec(&format!(
                        "umask 077 && printf %s {} {} {}",
                        shell_quote(text),
                        if append { ">>" } else { ">" },
                        shell_quote(&path.to_string_lossy())
                    ))
                    .map_err(|e| fail(e.to_string()))?;
                if out.success() {
                    Ok(())
                } else {
                    Err(fail(out.stderr_line()))
                }
            }
        }
    }

    /// Whether `path` exists.
    pub fn exists(&self, path: &Path) -> bool {
        match self {
            Host::Local { .. } => path.exists(),
            Host::Remote(_) => self
                .run(&[
                    "/bin/sh",
                    "-c",
                    &format!("test -e {}", shell_quote(&path.to_string_lossy())),
                ])
                .is_ok_and(|r| r.ok),
        }
    }

    /// The last lines of a text file.
    pub fn tail(&self, path: &Path, n: usize) -> String {
        match self {
            Host::Local { .. } => tail(path, n),
            Host::Remote(_) => self
                .run(&["tail", "-n", &n.to_string(), &path.to_string_lossy()])
                .map(|r| r.stdout)
                .unwrap_or_default(),
        }
    }
}

/// A PostgreSQL server the drill started.
pub struct DrillCluster<'h> {
    host: &'h Host,
    pg_bin: PathBuf,
    datadir: PathBuf,
    socket_dir: PathBuf,
    /// The server's log file.
    pub log: PathBuf,
    port: u16,
    running: bool,
}

impl<'h> DrillCluster<'h> {
    /// A server for `datadir` on `host` (not started).
    pub fn new(
        host: &'h Host,
        pg_bin: &Path,
        datadir: &Path,
        socket_dir: &Path,
        log: &Path,
        port: u16,
    ) -> DrillCluster<'h> {
        DrillCluster {
            host,
            pg_bin: pg_bin.to_path_buf(),
            datadir: datadir.to_path_buf(),
            socket_dir: socket_dir.to_path_buf(),
            log: log.to_path_buf(),
            port,
            running: false,
        }
    }

    fn bin(&self, name: &str) -> String {
        self.pg_bin.join(name).to_string_lossy().into_owned()
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Ran, ClusterError> {
        let bin = self.bin("pg_ctl");
        let data = self.datadir.to_string_lossy().into_owned();
        let mut argv = vec![bin.as_str(), "-D", data.as_str()];
        argv.extend_from_slice(args);
        self.host.run(&argv)
    }

    /// `pg_ctl start` without waiting: recovery may take long, and [`Self::wait_ready`]
    /// watches it.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        let log = self.log.to_string_lossy().into_owned();
        let out = self.pg_ctl(&["-l", &log, "-W", "start"])?;
        self.running = true;
        if !out.ok {
            return Err(ClusterError::Command {
                what: "pg_ctl start".into(),
                msg: out.first_line(),
            });
        }
        Ok(())
    }

    /// Whether the postmaster is still running (`pg_ctl status`).
    fn alive(&self) -> bool {
        self.pg_ctl(&["status"]).is_ok_and(|r| r.ok)
    }

    fn stopped(&self, phase: &str) -> ClusterError {
        ClusterError::Stopped {
            phase: phase.to_string(),
            log: self.host.tail(&self.log, 15),
        }
    }

    /// Waits until the server accepts connections (recovery reached a consistent
    /// state); fails when the postmaster stops first.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), ClusterError> {
        let end = Instant::now() + limit;
        let mut probes = 0u32;
        loop {
            if self.query("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            probes += 1;
            if probes % 10 == 0 && !self.alive() {
                return Err(self.stopped("recovery"));
            }
            if Instant::now() > end {
                return Err(ClusterError::Timeout {
                    what: "accept connections".into(),
                    seconds: limit.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until recovery ended and the server was promoted.
    pub fn wait_promoted(&self, limit: Duration) -> Result<(), ClusterError> {
        let end = Instant::now() + limit;
        loop {
            match self.query("postgres", "SELECT pg_is_in_recovery()") {
                Ok(v) if v.as_deref() == Some("f") => return Ok(()),
                Ok(_) => {}
                Err(_) if !self.alive() => return Err(self.stopped("WAL replay")),
                Err(_) => {}
            }
            if Instant::now() > end {
                return Err(ClusterError::Timeout {
                    what: "end recovery and promote".into(),
                    seconds: limit.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One query in database `db`: the first column of the first row (`None` when
    /// there is no row or it is NULL).
    pub fn query(&self, db: &str, sql: &str) -> Result<Option<String>, ClusterError> {
        Ok(self.column_values(db, sql)?.into_iter().next().flatten())
    }

    /// The first column of every row (NULLs left out).
    pub fn column(&self, db: &str, sql: &str) -> Result<Vec<String>, ClusterError> {
        Ok(self.column_values(db, sql)?.into_iter().flatten().collect())
    }

    fn column_values(&self, db: &str, sql: &str) -> Result<Vec<Option<String>>, ClusterError> {
        const NULL: &str = "\u{1}pgbk-null\u{1}";
        // Fields apart by a control character no value of a check holds.
        const SEP: &str = "\u{1f}";
        let out = self.client(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-F",
                SEP,
                "-P",
                &format!("null={NULL}"),
                "-d",
                db,
                "-c",
                sql,
            ],
        )?;
        if !out.ok {
            return Err(ClusterError::Query {
                sql: sql.to_string(),
                msg: out.first_line(),
            });
        }
        Ok(out
            .stdout
            .lines()
            .map(|l| {
                let first = l.split(SEP).next().unwrap_or_default();
                (first != NULL).then(|| first.to_string())
            })
            .collect())
    }

    /// Runs a PostgreSQL client program of the drill's binaries against the server
    /// (`psql`, `pg_amcheck`), connected through the drill's socket as `postgres`.
    pub fn client(&self, bin: &str, args: &[&str]) -> Result<Ran, ClusterError> {
        let program = self.bin(bin);
        let socket = self.socket_dir.to_string_lossy().into_owned();
        let port = self.port.to_string();
        let mut argv = vec![
            program.as_str(),
            "-h",
            socket.as_str(),
            "-p",
            port.as_str(),
            "-U",
            "postgres",
        ];
        argv.extend_from_slice(args);
        self.host.run(&argv)
    }

    /// Whether a program is among the drill's binaries.
    pub fn has(&self, bin: &str) -> bool {
        self.host.exists(&self.pg_bin.join(bin))
    }

    /// `pg_ctl stop -m immediate`: the copy is thrown away, so no shutdown
    /// checkpoint is worth waiting for.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "-t", "60", "stop"]);
        self.running = false;
    }

    /// Leaves the server running (a kept drill).
    pub fn detach(mut self) {
        self.running = false;
    }
}

impl Drop for DrillCluster<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}
