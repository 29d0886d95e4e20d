//! Archiving through pgbk over SSH for the tests: an `archive_command` running
//! `ssh … pgbk put-wal` as the postgres OS user, and a wait for the archiver.

use super::{wait_until, Cluster, Pgbk, Sshd};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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
