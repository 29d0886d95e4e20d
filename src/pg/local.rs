//! Running PostgreSQL's own binaries on this host (the demo's and the drills'
//! throwaway clusters): as the `postgres` OS user when pgbk runs as root
//! (PostgreSQL refuses root), with no `PG*` variable of pgbk's environment leaking
//! into them.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `(uid, gid)` PostgreSQL runs as: the `postgres` user when we are root, `None`
/// (ourselves) otherwise.
pub fn postgres_user() -> io::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: getpwnam with a valid C string; the result is read at once, before any
    // other call could reuse its static buffer.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "running as root, but there is no 'postgres' OS user to run PostgreSQL as (PostgreSQL refuses root)",
        ));
    }
    // SAFETY: pw is non-null and points at getpwnam's passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

/// Gives `path` and everything below to `owner` (no-op when `None`).
pub fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let at = |e: io::Error| io::Error::new(e.kind(), format!("chown {}: {e}", path.display()));
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(at)?;
    if std::fs::symlink_metadata(path).map_err(at)?.is_dir() {
        for entry in std::fs::read_dir(path).map_err(at)? {
            chown_tree(&entry.map_err(at)?.path(), owner)?;
        }
    }
    Ok(())
}

/// A scratch folder (a throwaway cluster's), removed on drop unless kept.
pub struct ScratchDir {
    /// The folder.
    pub path: PathBuf,
    /// Leave it in place on drop.
    pub keep: bool,
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A TCP port on 127.0.0.1 nothing listens on right now.
pub fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The last `n` lines of a text file ("" when it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A command for a PostgreSQL binary, run as `owner`, with no `PG*` variables, in
/// its own process group, from `/`.
pub fn pg_command(pg_bin: &Path, bin: &str, owner: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(pg_bin.join(bin));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            c.env_remove(k);
        }
    }
    c.env("LC_ALL", "C").current_dir("/").process_group(0);
    if let Some((uid, gid)) = owner {
        c.uid(uid).gid(gid);
    }
    c
}

/// Where the binaries of PostgreSQL `server_version` (`150018`) are: `configured`
/// (a server's `path_prefix`) when given, else Debian's
/// `/usr/lib/postgresql/<major>/bin`.
pub fn bin_dir(configured: Option<&str>, server_version: u32) -> PathBuf {
    match configured {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(format!(
            "/usr/lib/postgresql/{}/bin",
            server_version / 10000
        )),
    }
}
