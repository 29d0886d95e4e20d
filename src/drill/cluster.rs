//! The drill's throwaway PostgreSQL: started from a restored data directory on a
//! free port, reachable only through a Unix socket in the drill's own folder
//! (`listen_addresses = ''`), with its own `pg_hba.conf` (trust on that socket,
//! nothing else), and stopped when dropped.

use crate::pg::local::{pg_command, tail};
use crate::pg::{ConnInfo, ConnectOptions, Connection};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Why the drill's server could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `pg_ctl` could not be run or refused.
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

/// A PostgreSQL server the drill started.
pub struct DrillCluster {
    pg_bin: PathBuf,
    owner: Option<(u32, u32)>,
    datadir: PathBuf,
    socket_dir: PathBuf,
    /// The server's log file.
    pub log: PathBuf,
    port: u16,
    rt: tokio::runtime::Runtime,
    running: bool,
}

impl DrillCluster {
    /// A server for `datadir` (not started).
    pub fn new(
        pg_bin: &Path,
        owner: Option<(u32, u32)>,
        datadir: &Path,
        socket_dir: &Path,
        log: &Path,
        port: u16,
    ) -> Result<DrillCluster, ClusterError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Command {
                what: "starting a runtime".into(),
                msg: e.to_string(),
            })?;
        Ok(DrillCluster {
            pg_bin: pg_bin.to_path_buf(),
            owner,
            datadir: datadir.to_path_buf(),
            socket_dir: socket_dir.to_path_buf(),
            log: log.to_path_buf(),
            port,
            rt,
            running: false,
        })
    }

    fn pg_ctl(&self) -> std::process::Command {
        let mut c = pg_command(&self.pg_bin, "pg_ctl", self.owner);
        c.arg("-D").arg(&self.datadir);
        c
    }

    /// `pg_ctl start` without waiting: recovery may take long, and [`Self::wait_ready`]
    /// watches it.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        let out = self
            .pg_ctl()
            .arg("-l")
            .arg(&self.log)
            .args(["-W", "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ClusterError::Command {
                what: format!("{}/pg_ctl", self.pg_bin.display()),
                msg: e.to_string(),
            })?;
        self.running = true;
        if !out.status.success() {
            return Err(ClusterError::Command {
                what: "pg_ctl start".into(),
                msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Whether the postmaster is still running (`pg_ctl status`).
    fn alive(&self) -> bool {
        self.pg_ctl()
            .arg("status")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn stopped(&self, phase: &str) -> ClusterError {
        ClusterError::Stopped {
            phase: phase.to_string(),
            log: tail(&self.log, 15),
        }
    }

    /// A connection to database `db` over the drill's socket.
    pub fn connect(&self, db: &str) -> Result<Connection, ClusterError> {
        let info = ConnInfo::parse(&format!(
            "host={} port={} user=postgres dbname={}",
            self.socket_dir.display(),
            self.port,
            quote(db)
        ))
        .map_err(|e| ClusterError::Command {
            what: "connecting".into(),
            msg: e.to_string(),
        })?;
        let opts = ConnectOptions {
            replication: false,
            application_name: Some("pgbk_drill".into()),
            connect_timeout: Some(Duration::from_secs(10)),
        };
        self.rt
            .block_on(Connection::connect(&info, &opts))
            .map_err(|e| ClusterError::Command {
                what: format!("connecting to database {db}"),
                msg: e.to_string(),
            })
    }

    /// Waits until the server accepts connections (recovery reached a consistent
    /// state); fails when the postmaster stops first.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), ClusterError> {
        let end = Instant::now() + limit;
        let mut probes = 0u32;
        loop {
            if let Ok(c) = self.connect("postgres") {
                self.rt.block_on(c.close());
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
        let mut conn = self.connect(db)?;
        let rows = self.rt.block_on(conn.simple_query(sql));
        self.rt.block_on(conn.close());
        let rows = rows.map_err(|e| ClusterError::Query {
            sql: sql.to_string(),
            msg: e.to_string(),
        })?;
        Ok(rows
            .iter()
            .map(|r| r.get_idx(0).map(str::to_string))
            .collect())
    }

    /// Runs a PostgreSQL client program of the drill's binaries against the
    /// server (`pg_amcheck`); `None` when the program is not installed.
    pub fn client(&self, bin: &str, args: &[&str]) -> Option<std::process::Output> {
        let path = self.pg_bin.join(bin);
        if !path.is_file() {
            return None;
        }
        pg_command(&self.pg_bin, bin, self.owner)
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()
    }

    /// `pg_ctl stop -m immediate`: the copy is thrown away, so no shutdown
    /// checkpoint is worth waiting for.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }
}

impl Drop for DrillCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A conninfo value in single quotes.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}
