//! Archiving through pgbk for the tests: an `archive_command` running
//! `ssh … pgbk put-wal` as the postgres OS user, a wait for the archiver, completed
//! segments made on demand, and put-wal fed on stdin.

use super::{is_segment_name, wait_until, Cluster, Pgbk, Sshd};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Copies the test's ssh client key and known_hosts into a folder the postgres OS
/// user owns (0700, files 0600), as ssh requires for the user archive_command runs as.
pub fn postgres_ssh_files(sshd: &Sshd, dir: &Path) -> (PathBuf, PathBuf) {
    let ssh_dir = dir.join("ssh");
    fs::create_dir(&ssh_dir).expect("mkdir ssh");
    let key = ssh_dir.join("id_ed25519");
    let kh = ssh_dir.join("known_hosts");
    fs::copy(&sshd.client_key, &key).expect("copy key");
    fs::copy(&sshd.known_hosts, &kh).expect("copy known_hosts");
    for (p, mode) in [(&ssh_dir, 0o700), (&key, 0o600), (&kh, 0o600)] {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
        super::chown_to_postgres(p, false);
    }
    (key, kh)
}

/// An `archive_command` running `pgbk put-wal <server>` as root on the test sshd,
/// with a key and known_hosts the postgres OS user owns (copied into `keys`).
pub fn ssh_archive_command(sshd: &Sshd, keys: &Path, p: &Pgbk, server: &str) -> String {
    let (key, kh) = postgres_ssh_files(sshd, keys);
    format!(
        "ssh -p {port} -i {key} -o BatchMode=yes -o StrictHostKeyChecking=yes \
         -o UserKnownHostsFile={kh} root@127.0.0.1 {bin} -c {conf} put-wal {server} --name %f < %p",
        port = sshd.port,
        key = key.display(),
        kh = kh.display(),
        bin = env!("CARGO_BIN_EXE_pgbk"),
        conf = p.config.display(),
    )
}

/// Waits until the cluster's archiver has archived `segment` (or a later file).
pub fn wait_archived(c: &Cluster, segment: &str) {
    wait_until(
        Duration::from_secs(300),
        &format!("{segment} to be archived"),
        || {
            c.try_psql("select coalesce(last_archived_wal, '') from pg_stat_archiver")
                .is_ok_and(|w| w.as_str() >= segment)
        },
    );
}

/// `pgbk -c <config> <args>` with `input` on stdin: (exit code, stdout, stderr).
pub fn pgbk_stdin(p: &Pgbk, args: &[&str], input: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = p
        .cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgbk");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait pgbk");
    let _ = writer.join();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Files in a folder (names), sorted; empty if missing.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Generates at least `n` completed segments (writes and pg_switch_wal) and returns
/// the completed segment names now in pg_wal, oldest first.
pub fn completed_segments(c: &Cluster, n: usize) -> Vec<String> {
    c.psql("create table if not exists filler (i int, t text)");
    for _ in 0..3 * n {
        c.psql("insert into filler select g, repeat('x', 200) from generate_series(1, 2000) g");
        c.psql("select pg_switch_wal()");
        let current = c.current_wal_file();
        let done: Vec<String> = names_in(&c.pg_wal())
            .into_iter()
            .filter(|n| is_segment_name(n) && n.as_str() < current.as_str())
            .collect();
        if done.len() >= n {
            return done;
        }
    }
    panic!(
        "could not complete {n} segments: {:?}",
        names_in(&c.pg_wal())
    );
}

pub fn read_segment(c: &Cluster, name: &str) -> Vec<u8> {
    fs::read(c.pg_wal().join(name)).expect("read segment")
}
