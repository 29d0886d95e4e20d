//! The copying half of an rsync backup: the remote file list (one `find` over SSH),
//! what PostgreSQL's base backup leaves out (basebackup.c's exclusion lists), the
//! list split into balanced shares, and the `rsync` workers that copy them.
//!
//! rsync is the OpenSSH client's user: it gets the configured `ssh_command` without
//! its destination as `-e`, with `StrictHostKeyChecking=yes` unless the command says
//! otherwise, and `BatchMode=yes` so it never prompts.

use crate::backup::tar_store::safe_path;
use crate::config::ReuseBackup;
use crate::error::IoError;
use crate::ssh::{shell_quote, split_shell, SshTarget};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a copy worker (rsync, tar over ssh) or the index of its files failed.
#[derive(Debug, thiserror::Error)]
pub enum RsyncError {
    /// `abort` was set: another worker failed or the backup was stopped. The
    /// caller reports the other worker's error rather than this echo of it.
    #[error("interrupted")]
    Interrupted,
    /// A local file could not be read or written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// rsync, ssh or the stream failed (the message says which and why).
    #[error("{0}")]
    Failed(String),
}

/// The rsync method's steps still pass errors on as text (`rsync.rs`).
impl From<RsyncError> for String {
    fn from(e: RsyncError) -> String {
        e.to_string()
    }
}

/// One file or directory of the server, as the remote listing reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEntry {
    /// Path relative to the data directory (or tablespace location).
    pub path: String,
    /// A directory rather than a regular file.
    pub is_dir: bool,
    /// Permission bits on the server.
    pub mode: u32,
    /// Modification time on the server (seconds since the epoch).
    pub mtime: f64,
    /// Size in bytes on the server.
    pub size: u64,
}

pub use super::exclude::excluded;

/// The remote command that lists a directory: `<type> <mode> <mtime> <size> <path>`,
/// NUL-terminated, regular files and directories only. `-H`: the directory itself
/// may be a symbolic link (a data directory moved elsewhere); links inside it are
/// never followed.
pub fn listing_command(dir: &str) -> String {
    format!(
        "find -H {} -mindepth 1 \\( -type f -o -type d \\) -printf '%y %m %T@ %s %P\\0'",
        shell_quote(dir)
    )
}

/// Parses the output of [`listing_command`]. Paths are checked like tar member
/// names (no absolute paths, no `..`): they come from another host.
pub fn parse_listing(out: &[u8]) -> Result<Vec<RemoteEntry>, String> {
    let mut entries = Vec::new();
    for rec in out.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let bad = || {
            format!(
                "unexpected line in the remote file list: \"{}\"",
                String::from_utf8_lossy(rec).escape_debug()
            )
        };
        let mut it = rec.splitn(5, |&b| b == b' ');
        let mut field = || it.next().and_then(|f| std::str::from_utf8(f).ok());
        let (Some(kind), Some(mode), Some(mtime), Some(size)) =
            (field(), field(), field(), field())
        else {
            return Err(bad());
        };
        let raw = it.next().ok_or_else(bad)?;
        let path = safe_path(raw).map_err(|e| format!("remote file list: {e}"))?;
        entries.push(RemoteEntry {
            path,
            is_dir: match kind {
                "d" => true,
                "f" => false,
                _ => return Err(bad()),
            },
            mode: u32::from_str_radix(mode, 8).map_err(|_| bad())? & 0o7777,
            mtime: mtime.parse().map_err(|_| bad())?,
            size: size.parse().map_err(|_| bad())?,
        });
    }
    Ok(entries)
}

/// Whether a failed `find` only met files that vanished while it ran (normal on a
/// live server).
pub fn only_vanished(stderr: &[u8]) -> bool {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(|l| l.contains("No such file or directory"))
}

/// Splits files (index, size) into `n` shares of about equal bytes: largest first,
/// each to the lightest share. Returns indexes.
pub fn balanced_shares(sizes: &[(usize, u64)], n: usize) -> Vec<Vec<usize>> {
    let n = n.max(1);
    let mut order: Vec<(usize, u64)> = sizes.to_vec();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut shares: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); n];
    for (i, size) in order {
        if let Some(s) = shares.iter_mut().min_by_key(|s| s.0) {
            s.0 += size.max(1);
            s.1.push(i);
        }
    }
    shares.into_iter().map(|s| s.1).collect()
}

/// OpenSSH flags that take an argument.
const SSH_ARG_FLAGS: &str = "BbcDEeFIiJLlmOoPpQRSWw";

/// The cipher preference pgbk gives OpenSSH for its bulk copies when the ssh
/// command names no ciphers itself: AES-GCM ahead of OpenSSH's default order (which
/// starts with chacha20-poly1305), every default cipher still allowed after it. With
/// the AES instructions every server CPU has, AES-GCM costs a third of the CPU per
/// byte on both ends, which is what a copy of a large database waits on.
pub const FAST_CIPHERS: &str = "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com";

/// Whether the ssh program of `command` (OpenSSH 8.0 or later) accepts
/// [`FAST_CIPHERS`]: `ssh -G` reads the options and prints them without connecting.
pub fn accepts_fast_ciphers(command: &str) -> bool {
    let Some(program) = split_shell(command).ok().and_then(|w| w.into_iter().next()) else {
        return false;
    };
    if Path::new(&program).file_name().and_then(|n| n.to_str()) != Some("ssh") {
        return false;
    }
    Command::new(&program)
        .args(["-G", "-o", FAST_CIPHERS, "pgbk-cipher-probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The `-e` argument for rsync: the configured ssh command line without its
/// destination, never prompting, and refusing unknown host keys unless the command
/// sets `StrictHostKeyChecking` itself. With `fast_ciphers` (see
/// [`accepts_fast_ciphers`]), AES-GCM is preferred unless the command sets `-c` or
/// `-o Ciphers` itself.
pub fn rsync_shell(command: &str, fast_ciphers: bool) -> Result<String, String> {
    let bad = |m: &str| format!("ssh command '{command}': {m}");
    let words = split_shell(command).map_err(|e| bad(&e))?;
    let mut kept: Vec<String> = Vec::new();
    let mut it = words.into_iter();
    kept.extend(it.next());
    let mut destination = false;
    let mut strict_set = false;
    let mut ciphers_set = false;
    while let Some(w) = it.next() {
        if destination {
            return Err(bad("must not name a remote command"));
        }
        if w.starts_with('-') && w.len() > 1 {
            let flags = &w[1..];
            let mut takes_arg = None;
            for (i, c) in flags.char_indices() {
                if SSH_ARG_FLAGS.contains(c) {
                    takes_arg = Some((c, flags[i + c.len_utf8()..].to_string()));
                    break;
                }
            }
            kept.push(w.clone());
            if let Some((c, attached)) = takes_arg {
                let arg = if attached.is_empty() {
                    let a = it
                        .next()
                        .ok_or_else(|| bad(&format!("-{c} needs a value")))?;
                    kept.push(a.clone());
                    a
                } else {
                    attached
                };
                let option = arg.to_ascii_lowercase();
                if c == 'o' && option.starts_with("stricthostkeychecking") {
                    strict_set = true;
                }
                if c == 'c' || (c == 'o' && option.starts_with("ciphers")) {
                    ciphers_set = true;
                }
            }
        } else {
            destination = true;
        }
    }
    if !destination {
        return Err(bad("names no host"));
    }
    kept.push("-o".into());
    kept.push("BatchMode=yes".into());
    if !strict_set {
        kept.push("-o".into());
        kept.push("StrictHostKeyChecking=yes".into());
    }
    if fast_ciphers && !ciphers_set {
        kept.push("-o".into());
        kept.push(FAST_CIPHERS.into());
    }
    Ok(kept
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" "))
}

/// `user@host:` as rsync names a remote path's host (IPv6 addresses in brackets).
pub fn remote_prefix(target: &SshTarget) -> String {
    if target.host.contains(':') {
        format!("{}@[{}]:", target.user, target.host)
    } else {
        format!("{}@{}:", target.user, target.host)
    }
}

/// How every rsync worker of one backup runs.
#[derive(Debug, Clone)]
pub struct RsyncSetup {
    /// `-e` (see [`rsync_shell`]).
    pub shell: String,
    /// `user@host:`.
    pub remote: String,
    /// What to do with the previous backup's files.
    pub reuse: ReuseBackup,
    /// `--bwlimit` per worker, KiB/s.
    pub bwlimit: Option<u64>,
    /// `-z`.
    pub compress: bool,
    /// `--whole-file`: changed files are sent whole rather than as a delta against
    /// the previous backup's copy (see [`whole_file`]).
    pub whole_file: bool,
}

/// Whether changed files go whole (`--whole-file`) rather than through rsync's delta
/// algorithm. The delta algorithm trades CPU on both hosts for network bytes: the
/// receiver reads and checksums the previous copy, and the sender (the PostgreSQL
/// host) slides a rolling checksum byte by byte through every changed region. A
/// relation file that changed at all has usually changed in pages spread over all
/// of it (one updated row in 100 touches most heap pages and the indexes), so the
/// delta saves little and runs at a few tens of MB/s, slower than any LAN. pgbk
/// sends changed files whole unless the configuration says the link is slow
/// (`network_compression` or `bandwidth_limit`); unchanged files are never sent
/// either way (rsync's quick check, `--link-dest`).
pub fn whole_file(network_compression: bool, bandwidth_limit: Option<u64>) -> bool {
    !network_compression && bandwidth_limit.is_none()
}

/// One rsync run: a list of files from one remote directory into one local one.
#[derive(Debug, Clone)]
pub struct CopyJob {
    /// Remote directory (data directory or tablespace location).
    pub remote_dir: String,
    /// Local directory it goes into.
    pub local_dir: PathBuf,
    /// The previous backup's copy of the same directory (`--link-dest`/`--copy-dest`).
    pub reuse_dir: Option<PathBuf>,
    /// The NUL-separated list of paths (relative to `remote_dir`).
    pub list: PathBuf,
    /// Compare contents, not size and mtime (files that may have changed within the
    /// second the previous backup copied them).
    pub checksum: bool,
    /// Bytes the list holds, for progress.
    pub bytes: u64,
}

/// What rsync reported it transferred (`--stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// "Number of regular files transferred".
    pub files: u64,
    /// "Total transferred file size".
    pub bytes: u64,
}

/// Reads rsync's `--stats` figures.
pub fn parse_stats(out: &str) -> TransferStats {
    let number = |label: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .replace([',', '.'], "")
            })
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    TransferStats {
        files: number("Number of regular files transferred:"),
        bytes: number("Total transferred file size:"),
    }
}

/// Writes a NUL-separated file list for `--files-from --from0`.
pub fn write_list(path: &Path, paths: &[&str]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let mut w = std::io::BufWriter::new(f);
    for p in paths {
        w.write_all(p.as_bytes())?;
        w.write_all(b"\0")?;
    }
    w.flush()
}

/// The rsync command line of one job.
pub fn rsync_command(setup: &RsyncSetup, job: &CopyJob) -> Command {
    let mut cmd = Command::new("rsync");
    cmd.args([
        "-a",
        "--no-owner",
        "--no-group",
        "--numeric-ids",
        "--chmod=D0700,F0600",
        "--from0",
        "--stats",
        "--out-format=%l %n",
    ]);
    cmd.arg(format!("--files-from={}", job.list.display()));
    cmd.arg("-e").arg(&setup.shell);
    if job.checksum {
        cmd.arg("--checksum");
    }
    if setup.whole_file {
        cmd.arg("--whole-file");
    }
    if let Some(d) = &job.reuse_dir {
        match setup.reuse {
            ReuseBackup::Link => {
                cmd.arg(format!("--link-dest={}", d.display()));
            }
            ReuseBackup::Copy => {
                cmd.arg(format!("--copy-dest={}", d.display()));
            }
            ReuseBackup::Off => {}
        }
    }
    if let Some(bw) = setup.bwlimit {
        cmd.arg(format!("--bwlimit={bw}"));
    }
    if setup.compress {
        cmd.arg("-z");
    }
    cmd.arg(format!(
        "{}{}/",
        setup.remote,
        job.remote_dir.trim_end_matches('/')
    ));
    cmd.arg(format!("{}/", job.local_dir.display()));
    cmd
}

/// Called with the local path of each file rsync has put in place, from the thread
/// reading rsync's output.
pub type StoredHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// Asks the kernel to start writing a stored file's dirty pages to disk now, without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the disk works while rsync
/// copies the next files, instead of all at the backup's final `syncfs`. Advisory
/// only: durability still comes from that `syncfs`, so failures (a name rsync
/// escaped, a file not yet renamed) are ignored.
pub(super) fn start_writeback(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        super::tar_store::start_file_writeback(&f);
    }
}

/// Makes a copying child (rsync, or ssh for tar) lead a process group of its own,
/// so that stopping it stops what it forks too (rsync's receiver), and die with
/// the pgbk thread that started it: a pgbk killed outright must not leave a writer
/// in a backup folder the next run removes as FAILED.
pub(super) fn own_process_group(cmd: &mut Command) {
    // SAFETY: setpgid and prctl are async-signal-safe and touch no memory of the
    // parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The last few non-empty lines of a child's stderr: thousands of "vanished" lines
/// stay bounded.
pub(super) fn last_lines(src: impl std::io::Read) -> Vec<String> {
    let mut last: Vec<String> = Vec::new();
    for line in BufReader::new(src).lines().map_while(Result::ok) {
        if line.trim().is_empty() {
            continue;
        }
        if last.len() == 4 {
            last.remove(0);
        }
        last.push(line);
    }
    last
}

/// rsync's exit status for "some files vanished before they could be transferred":
/// normal on a live server (WAL replay recreates what the backup needs).
const RSYNC_VANISHED: i32 = 24;

/// Runs one job to its end. `abort` turning true kills rsync. `advanced` is told
/// the bytes done as rsync reports each file (`--out-format=%l %n`); by the end it
/// has been told `job.bytes` in all (files reused or vanished count as done). Each
/// file rsync stored has its write-back to disk started at once (see
/// [`start_writeback`]), so the backup's final flush finds little left to write,
/// and is then handed to `stored` (which checksums it while rsync goes on).
pub fn run_job(
    setup: &RsyncSetup,
    job: &CopyJob,
    abort: &AtomicBool,
    advanced: &dyn Fn(u64),
    stored: Option<StoredHook>,
) -> Result<TransferStats, RsyncError> {
    let mut cmd = rsync_command(setup, job);
    own_process_group(&mut cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RsyncError::Failed(format!("cannot run rsync on this host: {e}")))?;
    let seen = Arc::new(AtomicU64::new(0));
    let out = child.stdout.take().map(|o| {
        let seen = seen.clone();
        let local_dir = job.local_dir.clone();
        std::thread::spawn(move || {
            // One line per file (`%l %n`), then the --stats text. rsync reports a
            // file before renaming it into place, and handles files one after the
            // other: a file is complete once the next one is reported (or rsync ends).
            let mut stats = String::new();
            let mut previous: Option<PathBuf> = None;
            for line in BufReader::new(o).lines().map_while(Result::ok) {
                let (size, name) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match size.trim().parse::<u64>() {
                    Ok(n) => {
                        seen.fetch_add(n, Ordering::Relaxed);
                        if let Some(done) = previous.take() {
                            start_writeback(&done);
                            if let Some(hook) = &stored {
                                hook(&done);
                            }
                        }
                        if !name.is_empty() {
                            previous = Some(local_dir.join(name));
                        }
                    }
                    Err(_) => {
                        stats.push_str(&line);
                        stats.push('\n');
                    }
                }
            }
            if let Some(done) = previous {
                start_writeback(&done);
                if let Some(hook) = &stored {
                    hook(&done);
                }
            }
            stats
        })
    });
    let mut told = 0u64;
    let mut tell = |now: u64| {
        let now = now.min(job.bytes);
        if now > told {
            advanced(now - told);
            told = now;
        }
    };
    let err = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(move || last_lines(e)));
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(RsyncError::Failed(format!("waiting for rsync: {e}"))),
        }
        if abort.load(Ordering::Relaxed) {
            // SAFETY: kill(2) on the process group rsync leads (its pid).
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.wait();
            return Err(RsyncError::Interrupted);
        }
        tell(seen.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    match status.code() {
        Some(0) | Some(RSYNC_VANISHED) => {
            tell(job.bytes);
            Ok(parse_stats(&stdout))
        }
        code => {
            let why = stderr
                .iter()
                .rev()
                .find(|l| !l.contains("vanished") && !l.starts_with("rsync error:"))
                .or(stderr.last())
                .cloned()
                .unwrap_or_default();
            Err(RsyncError::Failed(format!(
                "rsync of {} exited with {}: {}",
                job.remote_dir,
                code.map_or("a signal".to_string(), |c| format!("status {c}")),
                why.trim()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_remote_listing_and_refuses_unsafe_paths() {
        let out = b"d 700 1700000000.5 4096 base\0f 600 1700000001.0000000000 8192 base/1/1259\0";
        let l = parse_listing(out).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[0].is_dir);
        assert_eq!(l[1].path, "base/1/1259");
        assert_eq!(l[1].mode, 0o600);
        assert_eq!(l[1].size, 8192);
        assert!(parse_listing(b"f 600 1 1 ../etc/passwd\0").is_err());
        assert!(parse_listing(b"f 600 1 1 /etc/passwd\0").is_err());
        assert!(parse_listing(b"l 777 1 1 x\0").is_err());
        assert!(parse_listing(b"f 600 1\0").is_err());
        let spaced = parse_listing(b"f 640 1 3 a b c\0").unwrap();
        assert_eq!(spaced[0].path, "a b c");
        assert_eq!(spaced[0].mode, 0o640);
    }

    #[test]
    fn shares_are_balanced() {
        let sizes = [(0, 100), (1, 60), (2, 50), (3, 10), (4, 0)];
        let shares = balanced_shares(&sizes, 2);
        let total = |s: &Vec<usize>| s.iter().map(|&i| sizes[i].1).sum::<u64>();
        assert_eq!(shares.iter().map(Vec::len).sum::<usize>(), 5);
        assert!(total(&shares[0]).abs_diff(total(&shares[1])) <= 20);
        assert_eq!(balanced_shares(&sizes, 0).len(), 1);
    }

    #[test]
    fn rsync_gets_the_ssh_command_without_its_destination() {
        let s = rsync_shell(
            "ssh -p 2222 -i '/k ey' -o UserKnownHostsFile=/kh postgres@pg1",
            false,
        )
        .unwrap();
        assert_eq!(
            s,
            "ssh -p 2222 -i '/k ey' -o UserKnownHostsFile=/kh -o BatchMode=yes -o StrictHostKeyChecking=yes"
        );
        let s = rsync_shell("ssh -oStrictHostKeyChecking=no pg1", false).unwrap();
        assert!(!s.contains("=yes -o Strict"), "{s}");
        assert!(rsync_shell("ssh pg1 ls", false).is_err());
        assert!(rsync_shell("ssh -p", false).is_err());
        assert!(rsync_shell("ssh -p 22", false).is_err());
    }

    #[test]
    fn aes_gcm_goes_first_unless_the_command_names_ciphers() {
        let s = rsync_shell("ssh pg1", true).unwrap();
        assert!(s.ends_with(&format!("-o '{FAST_CIPHERS}'")), "{s}");
        for own in [
            "ssh -c aes256-ctr pg1",
            "ssh -caes256-ctr pg1",
            "ssh -o Ciphers=aes256-ctr pg1",
        ] {
            let s = rsync_shell(own, true).unwrap();
            assert!(!s.contains("Ciphers=^"), "{own}: {s}");
        }
        // OpenSSH on this machine takes the preference (ssh -G, no connection).
        if Path::new("/usr/bin/ssh").exists() {
            assert!(accepts_fast_ciphers("/usr/bin/ssh -p 22 pg1"));
        }
        assert!(!accepts_fast_ciphers("/bin/true pg1"));
    }

    #[test]
    fn changed_files_go_whole_unless_the_link_is_said_to_be_slow() {
        assert!(whole_file(false, None));
        assert!(!whole_file(true, None));
        assert!(!whole_file(false, Some(1000)));
        let job = CopyJob {
            remote_dir: "/pg".into(),
            local_dir: "/b".into(),
            reuse_dir: Some("/prev".into()),
            list: "/l".into(),
            checksum: false,
            bytes: 0,
        };
        let args = |whole: bool| -> Vec<String> {
            let setup = RsyncSetup {
                shell: "ssh".into(),
                remote: "postgres@pg1:".into(),
                reuse: ReuseBackup::Link,
                bwlimit: None,
                compress: false,
                whole_file: whole,
            };
            rsync_command(&setup, &job)
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert!(args(true).contains(&"--whole-file".to_string()));
        assert!(args(true).contains(&"--link-dest=/prev".to_string()));
        assert!(!args(false).contains(&"--whole-file".to_string()));
    }

    #[test]
    fn reads_rsync_stats() {
        let out = "\nNumber of files: 1,234 (reg: 1,000, dir: 234)\n\
                   Number of regular files transferred: 12\n\
                   Total file size: 99,999 bytes\n\
                   Total transferred file size: 1,234,567 bytes\n";
        assert_eq!(
            parse_stats(out),
            TransferStats {
                files: 12,
                bytes: 1_234_567
            }
        );
        assert_eq!(parse_stats(""), TransferStats::default());
    }
}
