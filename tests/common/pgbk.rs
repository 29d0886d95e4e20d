//! [`Pgbk`]: a scratch pgbk configuration in a temporary directory and helpers to
//! run the real binary against it and look at the repository it writes.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{clear_pg_env, file_tail, is_segment_name, keep_dirs, scratch_dir, Cluster};

/// The outcome of one pgbk run.
#[derive(Clone, Debug)]
pub struct Output {
    /// Exit code; 128 + signal number when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The `pgbk:` lines of stderr (pgbk's one-line errors).
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("pgbk:"))
            .collect()
    }
}

/// A pgbk setup: `root/pgbk.conf` (`home = root/home`, `log_level = debug`) and an
/// empty `root/conf.d/`. `home` itself is not created: pgbk must create it.
pub struct Pgbk {
    pub root: PathBuf,
    pub home: PathBuf,
    pub config: PathBuf,
    pub conf_d: PathBuf,
    dir: Option<TempDir>,
    /// Variables every command gets (documented test hooks).
    env: Vec<(String, String)>,
}

impl Pgbk {
    pub fn new() -> Pgbk {
        let dir = scratch_dir("pgbk-home-");
        let root = dir.path().to_path_buf();
        let home = root.join("home");
        let config = root.join("pgbk.conf");
        let conf_d = root.join("conf.d");
        fs::write(
            &config,
            format!("[pgbk]\nhome = {}\nlog_level = debug\n", home.display()),
        )
        .expect("write pgbk.conf");
        fs::create_dir(&conf_d).expect("create conf.d");
        Pgbk {
            root,
            home,
            config,
            conf_d,
            dir: Some(dir),
            env: Vec::new(),
        }
    }

    /// Gives every later command this environment variable (a documented test hook).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Stops giving later commands `key` (see [`Pgbk::set_env`]).
    pub fn unset_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Write `conf.d/<name>.conf`: `[name]` followed by `body`.
    pub fn add_server(&self, name: &str, body: &str) {
        let mut text = format!("[{name}]\n{body}");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        fs::write(self.conf_d.join(format!("{name}.conf")), text).expect("write server config");
    }

    /// A server streaming from `cluster`: `conninfo`, `streaming_conninfo =
    /// %(conninfo)s`, `backup_method = postgres`, `streaming_archiver = on`,
    /// `slot_name = pgbk`, `create_slot = auto`.
    pub fn streaming_server(&self, name: &str, cluster: &Cluster) {
        self.streaming_server_with(name, cluster, "");
    }

    /// [`Pgbk::streaming_server`] plus `extra` option lines (e.g.
    /// `"immediate_checkpoint = on\n"`).
    pub fn streaming_server_with(&self, name: &str, cluster: &Cluster, extra: &str) {
        self.add_server(
            name,
            &format!(
                "description = Test cluster on port {port}\n\
                 conninfo = {conninfo}\n\
                 streaming_conninfo = %(conninfo)s\n\
                 backup_method = postgres\n\
                 streaming_archiver = on\n\
                 slot_name = pgbk\n\
                 create_slot = auto\n{extra}",
                port = cluster.port,
                conninfo = cluster.conninfo()
            ),
        );
    }

    /// `switch-wal --force --archive` of `server`: returns once the segment in
    /// progress is closed and archived (60 s at most).
    pub fn archive_now(&self, server: &str) {
        self.ok(&[
            "switch-wal",
            "--force",
            "--archive",
            "--archive-timeout",
            "60",
            server,
        ]);
    }

    /// `pgbk -c <config>`, with every `PG*`/`PGBK_*` variable removed from the
    /// environment and `root` as working directory. Add the arguments and run.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgbk"));
        clear_pg_env(&mut cmd);
        cmd.arg("-c").arg(&self.config).current_dir(&self.root);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Run `pgbk -c <config> <args>` to completion (stdin: /dev/null).
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pgbk");
        Output {
            code: exit_code(out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// [`Pgbk::run`], panicking (with stdout and stderr) unless it exits 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if out.code != 0 {
            panic!(
                "`pgbk {}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                args.join(" "),
                out.code,
                out.stdout,
                out.stderr
            );
        }
        out.stdout
    }

    /// [`Pgbk::ok`] with `--format json` appended; parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let stdout = self.ok(&all);
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "`pgbk {}` printed invalid JSON ({e}):\n{stdout}",
                all.join(" ")
            )
        })
    }

    /// Start `pgbk -c <config> <args>` in the background, stdout and stderr to a log
    /// file in `root`. Dropping the handle kills it (SIGKILL).
    pub fn spawn(&self, args: &[&str]) -> BackgroundPgbk {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let verb: String = args
            .first()
            .unwrap_or(&"pgbk")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let log = self.root.join(format!("bg-{n}-{verb}.log"));
        let file = File::create(&log).expect("create background log");
        let child = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log fd"))
            .stderr(file)
            .spawn()
            .expect("spawn pgbk");
        BackgroundPgbk {
            child,
            log,
            args: args.join(" "),
            exit: None,
        }
    }

    /// Starts `receive-wal <server>` in the background and returns once it streams
    /// from `cluster` (see [`super::wait_receive_wal`]).
    pub fn start_receive_wal(&self, server: &str, cluster: &Cluster) -> BackgroundPgbk {
        let rw = self.spawn(&["receive-wal", server]);
        super::wait_receive_wal(cluster);
        rw
    }

    /// `home/<server>/wals`.
    /// The id of the backup of `server` being taken: STARTED, past its
    /// checkpoint, with files arriving (`None` before that).
    pub fn started_backup(&self, server: &str) -> Option<String> {
        for e in fs::read_dir(self.home.join(server).join("backups"))
            .ok()?
            .flatten()
        {
            let Ok(text) = fs::read_to_string(e.path().join("backup.json")) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let has_files =
                fs::read_dir(e.path().join("data")).is_ok_and(|mut d| d.next().is_some());
            if v["status"] == "STARTED" && !v["begin_lsn"].is_null() && has_files {
                return v["backup_id"].as_str().map(str::to_string);
            }
        }
        None
    }

    /// Waits (30 s at most) until `bg`'s backup of `server` is under way, and
    /// returns its id; fails the test if `bg` ends first.
    pub fn wait_backup_started(&self, server: &str, bg: &mut BackgroundPgbk) -> String {
        let mut id = None;
        super::wait_until(
            Duration::from_secs(30),
            "the backup to be under way",
            || {
                assert!(bg.is_running(), "backup ended early\n{}", bg.log_tail(40));
                id = self.started_backup(server);
                id.is_some()
            },
        );
        id.unwrap_or_default()
    }

    pub fn wals_dir(&self, server: &str) -> PathBuf {
        self.home.join(server).join("wals")
    }

    /// `home/<server>/streaming` (receive-wal's current `.partial`).
    pub fn streaming_dir(&self, server: &str) -> PathBuf {
        self.home.join(server).join("streaming")
    }

    /// Sorted names (without `.zst`) of every archived full segment
    /// `wals/<16 hex>/<24 hex>.zst`; empty if there is no `wals/` yet.
    pub fn archived_segments(&self, server: &str) -> Vec<String> {
        self.archived_files(server, is_segment_name)
    }

    /// Sorted names (without `.zst`, so ending `.partial`) of every archived
    /// partial segment `wals/<16 hex>/<24 hex>.partial.zst`.
    pub fn archived_partials(&self, server: &str) -> Vec<String> {
        self.archived_files(server, |stem| {
            stem.strip_suffix(".partial").is_some_and(is_segment_name)
        })
    }

    /// Sorted names of the timeline history files `wals/<8 hex>.history`.
    pub fn history_files(&self, server: &str) -> Vec<String> {
        let mut names: Vec<String> = read_dir_names(&self.wals_dir(server))
            .into_iter()
            .filter(|n| {
                n.strip_suffix(".history")
                    .is_some_and(|t| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            })
            .collect();
        names.sort();
        names
    }

    fn archived_files(&self, server: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let wals = self.wals_dir(server);
        let mut names = Vec::new();
        for sub in read_dir_names(&wals) {
            let is_prefix_dir =
                sub.len() == 16 && sub.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
            if !is_prefix_dir || !wals.join(&sub).is_dir() {
                continue;
            }
            for name in read_dir_names(&wals.join(&sub)) {
                if let Some(stem) = name.strip_suffix(".zst") {
                    if keep(stem) {
                        names.push(stem.to_string());
                    }
                }
            }
        }
        names.sort();
        names
    }

    /// The content of an archived segment (or `<segment>.partial`), decompressed by
    /// the plain `zstd -d -c` binary from `wals/<first 16>/<segment>.zst`: proves the
    /// repository is readable without pgbk.
    pub fn decompress_segment(&self, server: &str, segment: &str) -> Vec<u8> {
        let path = self
            .wals_dir(server)
            .join(&segment[..16.min(segment.len())])
            .join(format!("{segment}.zst"));
        let out = Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .expect("run zstd (is the zstd binary installed?)");
        if !out.status.success() {
            panic!(
                "zstd -d -c {} failed ({}): {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.stdout
    }
}

impl Default for Pgbk {
    fn default() -> Self {
        Pgbk::new()
    }
}

impl Drop for Pgbk {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if keep_dirs() {
                eprintln!("keeping pgbk directory {}", dir.keep().display());
            }
        }
    }
}

/// A pgbk process running in the background (e.g. `receive-wal`). Dropping it
/// sends SIGKILL and reaps it.
pub struct BackgroundPgbk {
    child: Child,
    log: PathBuf,
    args: String,
    exit: Option<i32>,
}

impl BackgroundPgbk {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap (no-op if it already exited).
    pub fn kill9(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exit = Some(exit_code(status));
            }
        }
    }

    /// SIGTERM, then wait up to 30 s; returns the exit code (128 + signal if a signal
    /// ended it). Panics (after a SIGKILL) with the log tail if it does not exit.
    pub fn term(&mut self) -> i32 {
        if self.is_running() {
            // SAFETY: kill(2) with a valid signal; the child is not reaped yet (checked
            // above), so its pid cannot have been reused.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        match self.wait_timeout(Duration::from_secs(30)) {
            Some(code) => code,
            None => {
                self.kill9();
                panic!(
                    "`pgbk {}` did not exit within 30 s of SIGTERM\n{}",
                    self.args,
                    self.log_tail(60)
                );
            }
        }
    }

    /// Wait up to `timeout` for it to exit by itself; its exit code, or `None` if it
    /// still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it still runs (reaps it, and records its exit code, if not).
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(exit_code(status));
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Its exit code, once it has exited (`None` while it runs).
    pub fn exit_code(&mut self) -> Option<i32> {
        self.is_running();
        self.exit
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log, with a header, for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- log of `pgbk {}` ({}), last {lines} lines ---\n{}",
            self.args,
            self.log.display(),
            file_tail(&self.log, lines)
        )
    }
}

impl Drop for BackgroundPgbk {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(60));
        }
        self.kill9();
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}
