//! First copies of an rsync backup, streamed with GNU tar over SSH.
//!
//! rsync earns its cost when there is a previous copy to compare with: unchanged
//! files are linked or copied locally, never sent. When there is none (the first
//! rsync backup of a server, a new tablespace, `reuse_backup = off`), every file is
//! sent whole anyway, and rsync's machinery is pure overhead: a file list exchanged
//! both ways, a temporary file and a rename per file, a whole-file checksum on each
//! end, 32 KiB multiplexed reads. Such lists go instead through one
//! `tar -c --null -T -` per worker on the server (the list on its stdin), read here
//! as it arrives: each member is written to its place in 256 KiB pieces while its
//! BLAKE3 is taken on the way (no second read for the checksum), gets the server's
//! mtime (so that the next backup's rsync finds it unchanged and links it) and mode
//! 0600. The files stored are exactly what rsync would have stored.
//!
//! Member names are checked like any tar stream's (no `..`, no absolute path) and
//! only regular files are written, each to a new file (never through an existing
//! name). A file that vanished on the server is a warning of tar's and is left out,
//! as rsync leaves it out; one that shrank is padded with zeros to its listed size,
//! as PostgreSQL's own base backup pads it (WAL replay truncates it again).

use super::rsync_copy::{
    last_lines, own_process_group, start_writeback, CopyJob, RsyncError, RsyncSetup, TransferStats,
};
use super::rsync_index::EarlySums;
use super::tar_store::{create_file, safe_path};
use crate::error::IoResultExt;
use crate::ssh::{shell_quote, SshTarget};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// What the server must answer to show it has GNU tar (checked once per backup).
pub const TAR_PROBE: &str = "tar --version 2>/dev/null | grep -q 'GNU tar'";

/// Bytes read and written at a time.
const PIECE: usize = 256 * 1024;

/// Test hook, documented as such in pgbk(1): milliseconds to wait after each piece
/// written, so that a test can stop a first copy in the middle.
pub const THROTTLE_ENV: &str = "PGBK_TEST_COPY_THROTTLE_MS";

/// The command the server runs for one list (NUL-separated paths on stdin,
/// relative to `dir`): 64 KiB records, no recursion (the list names files), hard
/// links stored as plain files, unreadable or vanished files only warned about.
pub fn tar_command(dir: &str) -> String {
    format!(
        "tar -C {} -c -f - -b 128 --null --no-recursion --hard-dereference \
         --ignore-failed-read -T -",
        shell_quote(dir)
    )
}

/// `user@host` as OpenSSH takes its destination.
pub fn destination(target: &SshTarget) -> String {
    format!("{}@{}", target.user, target.host)
}

/// Copies one job's list with `ssh <destination> tar …` (the shell of `setup`,
/// which verifies the host key and never prompts). Each file stored is checksummed
/// on the way into `sums` and has its write-back started. `abort` turning true kills
/// ssh.
pub fn run_tar_job(
    setup: &RsyncSetup,
    destination: &str,
    job: &CopyJob,
    abort: &AtomicBool,
    advanced: &dyn Fn(u64),
    sums: &EarlySums,
) -> Result<TransferStats, RsyncError> {
    let list = File::open(&job.list).at(&job.list)?;
    // Only the files asked for are written: a server cannot add others.
    let wanted: HashSet<String> = std::fs::read(&job.list)
        .at(&job.list)?
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "exec {} {} {}",
        setup.shell,
        shell_quote(destination),
        shell_quote(&tar_command(&job.remote_dir))
    ));
    own_process_group(&mut cmd);
    let mut child = cmd
        .stdin(Stdio::from(list))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RsyncError::Failed(format!("cannot run ssh on this host: {e}")))?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let done = AtomicBool::new(false);
    let (stored, errors) = std::thread::scope(|s| {
        let err = stderr.map(|e| s.spawn(|| last_lines(e)));
        // Kills ssh when the backup is stopped, even while a read waits for data.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if abort.load(Ordering::Relaxed) {
                    // SAFETY: kill(2) on the process group ssh leads (its pid).
                    unsafe {
                        libc::kill(-pid, libc::SIGKILL);
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // Starting a file's write-back submits its pages for I/O in the calling
        // thread (a 1 GiB segment takes a while): a thread of its own does it, so
        // that reading the stream never waits for it.
        let (written, to_write_back) = std::sync::mpsc::channel::<PathBuf>();
        s.spawn(move || {
            for path in to_write_back {
                start_writeback(&path);
            }
        });
        let stored = match stdout {
            Some(o) => store_members(o, &job.local_dir, &wanted, advanced, sums, &|p: &Path| {
                let _ = written.send(p.to_path_buf());
            }),
            None => Err(RsyncError::Failed("no output from ssh".to_string())),
        };
        if stored.is_err() {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        done.store(true, Ordering::Relaxed);
        let errors = err.and_then(|h| h.join().ok()).unwrap_or_default();
        (stored, errors)
    });
    let status = child
        .wait()
        .map_err(|e| RsyncError::Failed(format!("waiting for ssh: {e}")))?;
    if abort.load(Ordering::Relaxed) {
        return Err(RsyncError::Interrupted);
    }
    let why = || {
        errors
            .iter()
            .rev()
            .find(|l| !l.contains("Warning:") && !l.contains("Exiting with failure"))
            .or(errors.last())
            .cloned()
            .unwrap_or_default()
    };
    // 1: a file changed while tar read it (normal on a live server).
    match status.code() {
        Some(0) | Some(1) => {}
        code => {
            return Err(RsyncError::Failed(format!(
                "tar of {} over ssh exited with {}: {}",
                job.remote_dir,
                code.map_or("a signal".to_string(), |c| format!("status {c}")),
                why().trim()
            )))
        }
    }
    let stats =
        stored.map_err(|e| RsyncError::Failed(format!("tar of {}: {e}", job.remote_dir)))?;
    // Files that vanished on the server count as done for progress.
    advanced(job.bytes.saturating_sub(stats.bytes));
    Ok(stats)
}

/// Writes every regular member of the tar stream `src` under `root`; each must be
/// one of `wanted`. `stored` is told each file written.
fn store_members(
    src: impl Read,
    root: &Path,
    wanted: &HashSet<String>,
    advanced: &dyn Fn(u64),
    sums: &EarlySums,
    stored: &dyn Fn(&Path),
) -> Result<TransferStats, RsyncError> {
    let failed = RsyncError::Failed;
    let throttle = std::env::var(THROTTLE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut archive = tar::Archive::new(BufReader::with_capacity(PIECE, src));
    let mut stats = TransferStats::default();
    let mut buf = vec![0u8; PIECE];
    let entries = archive
        .entries()
        .map_err(|e| failed(format!("reading the stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| failed(format!("reading the stream: {e}")))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_contiguous()) {
            continue;
        }
        let name = safe_path(&entry.path_bytes()[..]).map_err(|e| failed(e.to_string()))?;
        if !wanted.contains(&name) {
            return Err(failed(format!(
                "the server sent '{name}', which was not asked for"
            )));
        }
        let mtime = entry.header().mtime().unwrap_or(0);
        let path = root.join(&name);
        let mut file = create_file(&path).at(&path)?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| failed(format!("reading {name} from the stream: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).at(&path)?;
            size += n as u64;
            advanced(n as u64);
            if let Some(pause) = throttle {
                std::thread::sleep(pause);
            }
        }
        file.set_times(
            std::fs::FileTimes::new()
                .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime)),
        )
        .at(&path)?;
        drop(file);
        sums.insert(&path, size, hasher.finalize().to_hex().to_string());
        stored(&path);
        stats.files += 1;
        stats.bytes += size;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> HashSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64, mtime: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h
    }

    #[test]
    fn members_are_stored_with_their_mtime_mode_and_checksum() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(PIECE * 2 + 17)).map(|i| (i % 251) as u8).collect();
        let stream = tar_bytes(|b| {
            let mut h = header(tar::EntryType::Regular, big.len() as u64, 1_700_000_000);
            b.append_data(&mut h, "base/5/16384", &big[..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 3, 1_600_000_000);
            b.append_data(&mut h, "global/new/x", &b"abc"[..]).unwrap();
            let mut h = header(tar::EntryType::Symlink, 0, 0);
            h.set_link_name("/etc").unwrap();
            b.append_data(&mut h, "base/link", &[][..]).unwrap();
        });
        std::fs::create_dir_all(dir.path().join("base/5")).unwrap();
        let sums = EarlySums::default();
        let seen = std::sync::atomic::AtomicU64::new(0);
        let add = |n: u64| {
            seen.fetch_add(n, Ordering::Relaxed);
        };
        let wanted = names(&["base/5/16384", "global/new/x", "base/link"]);
        let st = store_members(&stream[..], dir.path(), &wanted, &add, &sums, &|_| {}).unwrap();
        assert_eq!(st.files, 2);
        assert_eq!(st.bytes, big.len() as u64 + 3);
        assert_eq!(seen.load(Ordering::Relaxed), st.bytes);
        let p = dir.path().join("base/5/16384");
        assert_eq!(std::fs::read(&p).unwrap(), big);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mtime(), 1_700_000_000);
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(
            sums.get(&p, &m),
            Some((big.len() as u64, blake3::hash(&big).to_hex().to_string()))
        );
        // A folder the listing did not have is made; links are not written.
        assert_eq!(
            std::fs::read(dir.path().join("global/new/x")).unwrap(),
            b"abc"
        );
        assert!(std::fs::symlink_metadata(dir.path().join("base/link")).is_err());
    }

    #[test]
    fn unsafe_names_and_existing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let evil = tar_bytes(|b| {
            let mut h = header(tar::EntryType::Regular, 1, 0);
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        });
        let sums = EarlySums::default();
        let wanted = names(&["there", "../escape"]);
        let err = store_members(&evil[..], dir.path(), &wanted, &|_| {}, &sums, &|_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains(".."), "{err}");
        assert!(!dir.path().parent().unwrap().join("escape").exists());
        std::fs::write(dir.path().join("there"), b"old").unwrap();
        let again = tar_bytes(|b| {
            let mut h = header(tar::EntryType::Regular, 3, 0);
            b.append_data(&mut h, "there", &b"new"[..]).unwrap();
        });
        assert!(store_members(&again[..], dir.path(), &wanted, &|_| {}, &sums, &|_| {}).is_err());
        assert_eq!(std::fs::read(dir.path().join("there")).unwrap(), b"old");
        // A member nobody asked for is refused, and not written.
        let extra = tar_bytes(|b| {
            let mut h = header(tar::EntryType::Regular, 3, 0);
            b.append_data(&mut h, "postmaster.pid", &b"123"[..])
                .unwrap();
        });
        let err = store_members(&extra[..], dir.path(), &wanted, &|_| {}, &sums, &|_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("not asked for"), "{err}");
        assert!(!dir.path().join("postmaster.pid").exists());
    }

    #[test]
    fn the_server_gets_the_list_on_stdin() {
        assert_eq!(
            tar_command("/srv/pg data"),
            "tar -C '/srv/pg data' -c -f - -b 128 --null --no-recursion --hard-dereference \
             --ignore-failed-read -T -"
        );
    }
}
