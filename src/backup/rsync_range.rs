//! Large files of an rsync backup copied as byte ranges by several SSH streams at
//! once.
//!
//! One rsync process moves one file at a time through one SSH connection: the
//! largest relation segment (1 GiB) then sets the length of the whole backup while
//! the other workers sit idle, and one SSH stream cannot use more than one core per
//! end. A file that has to be transferred anyway (no unchanged copy in the previous
//! backup for rsync to link or copy) and is at least [`RANGE_FROM`] long is
//! therefore cut into up to `parallel_jobs` ranges, each read on the server by
//! `dd` over its own SSH connection and written at its offset here. Files rsync can
//! reuse, and every file when the link is said to be slow (`network_compression`,
//! `bandwidth_limit`), stay with rsync.
//!
//! A file is complete once all its ranges are: it then gets the listed size (a file
//! the server truncated during the copy keeps zeros at its end, as PostgreSQL's own
//! base backup pads it; WAL replay truncates it again) and the listed mtime (so the
//! next backup's rsync recognises it as unchanged), and is checksummed. A file
//! removed on the server during the copy is left out, as rsync leaves it out.

use super::rsync_copy::{RsyncSetup, StoredHook, TransferStats};
use crate::ssh::{shell_quote, SshTarget};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Files at least this long that must be transferred are copied in ranges.
pub const RANGE_FROM: u64 = 64 * 1024 * 1024;

/// Test hook, documented as such in pgbk(1): bytes from which files go in ranges
/// (instead of [`RANGE_FROM`]), so that a small test database has ranged files.
pub const RANGE_FROM_ENV: &str = "PGBK_TEST_RANGE_FROM";

/// The size from which files go in ranges, and the smallest range (half of it:
/// below that a range is not worth its own SSH connection).
pub fn range_sizes() -> (u64, u64) {
    let from = std::env::var(RANGE_FROM_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n >= 2)
        .unwrap_or(RANGE_FROM);
    (from, from / 2)
}

/// Bytes read from one SSH stream before they are written at their offset: a
/// pipe's worth, about what rsync writes at a time.
const BUFFER: usize = 64 * 1024;

/// One file copied in ranges.
#[derive(Debug)]
pub struct RangedFile {
    /// Absolute path on the server.
    pub remote: String,
    /// Where it is stored here.
    pub local: PathBuf,
    /// Size in the listing (the size it is stored with).
    pub size: u64,
    /// Modification time in the listing (seconds since the epoch).
    pub mtime: f64,
    /// Ranges not finished yet.
    pending: AtomicUsize,
    /// The server said the file no longer exists.
    vanished: AtomicBool,
}

/// One range of a [`RangedFile`].
#[derive(Debug, Clone)]
pub struct RangeJob {
    /// The file.
    pub file: Arc<RangedFile>,
    /// First byte.
    pub offset: u64,
    /// Bytes to copy.
    pub len: u64,
}

/// Cuts a file into at most `jobs` ranges of at least `min` bytes (one range for a
/// file shorter than two of them).
pub fn split(
    remote: String,
    local: PathBuf,
    size: u64,
    mtime: f64,
    jobs: usize,
    min: u64,
) -> Vec<RangeJob> {
    let n = (size / min.max(1)).clamp(1, jobs.max(1) as u64);
    let step = size.div_ceil(n);
    let file = Arc::new(RangedFile {
        remote,
        local,
        size,
        mtime,
        pending: AtomicUsize::new(n as usize),
        vanished: AtomicBool::new(false),
    });
    (0..n)
        .map(|k| {
            let offset = k * step;
            RangeJob {
                file: file.clone(),
                offset,
                len: step.min(size - offset),
            }
        })
        .collect()
}

/// The command the server runs for one range: GNU `dd` reading exactly those bytes.
pub fn range_command(path: &str, offset: u64, len: u64) -> String {
    format!(
        "dd if={} bs=1M skip={offset} count={len} iflag=skip_bytes,count_bytes status=none",
        shell_quote(path)
    )
}

/// A command that succeeds only where `dd` reads byte ranges as
/// [`range_command`] asks (GNU coreutils): checked once per backup, before the copy.
pub const RANGE_PROBE: &str =
    "dd if=/dev/null of=/dev/null bs=1M skip=0 count=0 iflag=skip_bytes,count_bytes status=none";

/// `user@host` as OpenSSH takes its destination.
pub fn destination(target: &SshTarget) -> String {
    format!("{}@{}", target.user, target.host)
}

/// Copies one range: `ssh <destination> dd …` (the shell of `setup`, which verifies
/// the host key and never prompts), its output written at the range's offset.
/// `abort` turning true kills the SSH process. The worker finishing a file's last
/// range completes it (size, mtime, write-back, `stored`).
pub fn run_range(
    setup: &RsyncSetup,
    destination: &str,
    job: &RangeJob,
    abort: &AtomicBool,
    advanced: &(dyn Fn(u64) + Sync),
    stored: Option<&StoredHook>,
) -> Result<TransferStats, String> {
    let f = &job.file;
    let local_err = |e: std::io::Error| format!("{}: {e}", f.local.display());
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&f.local)
        .map_err(local_err)?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "exec {} {} {}",
        setup.shell,
        shell_quote(destination),
        shell_quote(&range_command(&f.remote, job.offset, job.len))
    ));
    // Like rsync (see rsync_copy::run_job): a process group of its own, killed with
    // pgbk.
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
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ssh on this host: {e}"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (status, copied, errors) = std::thread::scope(|s| {
        let reader = stdout.map(|o| s.spawn(|| write_at(o, &out, job.offset, advanced)));
        let err = stderr.map(|e| s.spawn(|| last_lines(e)));
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Ok(st),
                Ok(None) => {}
                Err(e) => break Err(format!("waiting for ssh: {e}")),
            }
            if abort.load(Ordering::Relaxed) {
                // SAFETY: kill(2) on the process group ssh leads (its pid).
                unsafe {
                    libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
                }
                let _ = child.wait();
                break Err("interrupted".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let copied = reader
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a copy thread panicked".into()))
            })
            .unwrap_or(Ok(0));
        let errors = err.and_then(|h| h.join().ok()).unwrap_or_default();
        (status, copied, errors)
    });
    let status = status?;
    let copied = copied.map_err(|e| format!("{}: {e}", f.local.display()))?;
    if !status.success() {
        if errors
            .iter()
            .any(|l| l.contains("No such file or directory"))
        {
            f.vanished.store(true, Ordering::Relaxed);
        } else {
            let why = errors.last().cloned().unwrap_or_default();
            return Err(format!(
                "copying {} (bytes {} to {}) over ssh exited with {}: {}",
                f.remote,
                job.offset,
                job.offset + job.len,
                status
                    .code()
                    .map_or("a signal".to_string(), |c| format!("status {c}")),
                why.trim()
            ));
        }
    }
    // Bytes a shrunk file did not send still count as done for progress.
    advanced(job.len.saturating_sub(copied));
    let mut stats = TransferStats {
        files: 0,
        bytes: copied,
    };
    if f.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
        drop(out);
        if f.vanished.load(Ordering::Relaxed) {
            match std::fs::remove_file(&f.local) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(local_err(e)),
            }
            return Ok(stats);
        }
        complete(f).map_err(local_err)?;
        stats.files = 1;
        super::rsync_copy::start_writeback(&f.local);
        if let Some(hook) = stored {
            hook(&f.local);
        }
    }
    Ok(stats)
}

/// Gives a file whose ranges are all written its listed size and mtime.
fn complete(f: &RangedFile) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(&f.local)?;
    file.set_len(f.size)?;
    let secs = f.mtime.max(0.0);
    let mtime =
        SystemTime::UNIX_EPOCH + Duration::new(secs.trunc() as u64, (secs.fract() * 1e9) as u32);
    file.set_times(std::fs::FileTimes::new().set_modified(mtime))
}

/// Writes what `src` yields at `offset` onwards in `out`; returns the bytes written.
fn write_at(
    mut src: impl Read,
    out: &File,
    offset: u64,
    advanced: &(dyn Fn(u64) + Sync),
) -> Result<u64, String> {
    let mut buf = vec![0u8; BUFFER];
    let mut done = 0u64;
    loop {
        let mut filled = 0;
        // Fill the buffer (pipe reads return 64 KiB at most) before one write.
        while filled < buf.len() {
            match src.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading from ssh: {e}")),
            }
        }
        if filled == 0 {
            return Ok(done);
        }
        out.write_all_at(&buf[..filled], offset + done)
            .map_err(|e| e.to_string())?;
        done += filled as u64;
        advanced(filled as u64);
    }
}

/// The last few non-empty lines of a stream.
fn last_lines(src: impl Read) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_cut_into_at_most_jobs_ranges_of_a_useful_size() {
        let spans = |size: u64, jobs: usize| -> Vec<(u64, u64)> {
            split("/r".into(), "/l".into(), size, 0.0, jobs, RANGE_FROM / 2)
                .iter()
                .map(|r| (r.offset, r.len))
                .collect()
        };
        let gib = 1024 * 1024 * 1024;
        assert_eq!(spans(gib, 2), vec![(0, gib / 2), (gib / 2, gib / 2)]);
        assert_eq!(spans(gib, 1), vec![(0, gib)]);
        // 70 MiB: two ranges of 35 MiB, not four.
        let s = spans(70 << 20, 4);
        assert_eq!(s, vec![(0, 35 << 20), (35 << 20, 35 << 20)]);
        // An odd size: the ranges cover it exactly, without overlap.
        let size = 3 * (RANGE_FROM / 2) + 7;
        let s = spans(size, 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].0, 0);
        assert_eq!(s[1].0, s[0].0 + s[0].1);
        assert_eq!(s[2].0, s[1].0 + s[1].1);
        assert_eq!(s[2].0 + s[2].1, size);
        let pending = &split("/r".into(), "/l".into(), size, 0.0, 3, RANGE_FROM / 2)[0]
            .file
            .pending;
        assert_eq!(pending.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_server_reads_exactly_the_range() {
        assert_eq!(
            range_command("/srv/pg data/base/5/16384", 512, 1024),
            "dd if='/srv/pg data/base/5/16384' bs=1M skip=512 count=1024 iflag=skip_bytes,count_bytes status=none"
        );
    }

    #[test]
    fn ranges_land_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let out = File::create(&path).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let seen = std::sync::atomic::AtomicU64::new(0);
        let add = |n: u64| {
            seen.fetch_add(n, Ordering::Relaxed);
        };
        // The second half first: order does not matter.
        assert_eq!(
            write_at(&data[1_000_000..], &out, 1_000_000, &add).unwrap(),
            2_000_000
        );
        assert_eq!(
            write_at(&data[..1_000_000], &out, 0, &add).unwrap(),
            1_000_000
        );
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert_eq!(seen.load(Ordering::Relaxed), 3_000_000);
        let f = RangedFile {
            remote: "/r".into(),
            local: path.clone(),
            size: 3_500_000,
            mtime: 1_700_000_000.25,
            pending: AtomicUsize::new(0),
            vanished: AtomicBool::new(false),
        };
        complete(&f).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.len(), 3_500_000);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(m.mtime(), 1_700_000_000);
        assert_eq!(m.mtime_nsec(), 250_000_000);
    }
}
