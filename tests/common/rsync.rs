//! Helpers for the rsync backup tests: an rsync server's configuration (WAL still
//! streamed by receive-wal) and what the tests inspect in a stored backup.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Cluster, Pgbk};

/// `conf.d/<name>.conf` for `backup_method = rsync` through `ssh_command`, WAL
/// streamed by receive-wal (slot `pgbk`, created automatically), plus `extra` lines.
pub fn rsync_server(pg: &Pgbk, name: &str, cluster: &Cluster, ssh_command: &str, extra: &str) {
    pg.add_server(
        name,
        &format!(
            "description = rsync test cluster on port {port}\n\
             conninfo = {conninfo}\n\
             streaming_conninfo = %(conninfo)s\n\
             backup_method = rsync\n\
             ssh_command = {ssh_command}\n\
             streaming_archiver = on\n\
             slot_name = pgbk\n\
             create_slot = auto\n\
             immediate_checkpoint = on\n{extra}",
            port = cluster.port,
            conninfo = cluster.conninfo()
        ),
    );
}

/// The folder of backup `id` of server `name`.
pub fn backup_dir(pg: &Pgbk, name: &str, id: &str) -> PathBuf {
    pg.home.join(name).join("backups").join(id)
}

/// The hard-link count of a file.
pub fn nlink(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .nlink()
}

/// The inode number of a file.
pub fn inode(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

/// Every regular file under `root`, recursively (symlinks not followed).
pub fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}
