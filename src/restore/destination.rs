//! The destination of a recovery: checks that refuse before anything is touched
//! (non-empty, running cluster, tablespace locations), ownership when root restores
//! into a directory someone prepared, and the small files written after the data
//! (`backup_manifest`, `tablespace_map`, recovery settings, signal file).

use super::{RecoverPlan, RestoreError, TablespacePlan};
use crate::backup::BackupInfo;
use crate::error::{IoError, IoResultExt};
use crate::repo::durable::{fsync_dir, write_atomic};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The owner restored files get: `Some((uid, gid))` when pgbk runs as root and the
/// destination already existed (a postgres-owned empty directory gives a
/// postgres-owned data directory); `None` keeps the files as the running user's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner(pub Option<(u32, u32)>);

impl Owner {
    /// Gives an open file to the owner.
    pub fn apply_file(&self, f: &fs::File, path: &Path) -> Result<(), RestoreError> {
        match self.0 {
            Some((u, g)) => Ok(std::os::unix::fs::fchown(f, Some(u), Some(g)).at(path)?),
            None => Ok(()),
        }
    }

    /// Gives a path (not following a final symlink) to the owner.
    pub fn apply_path(&self, path: &Path) -> Result<(), RestoreError> {
        match self.0 {
            Some((u, g)) => Ok(std::os::unix::fs::lchown(path, Some(u), Some(g)).at(path)?),
            None => Ok(()),
        }
    }
}

/// What the destination looked like before the recovery.
#[derive(Debug, Clone, Copy)]
pub struct DestinationState {
    /// It existed already.
    pub existed: bool,
    /// The owner restored files get.
    pub owner: Owner,
}

/// The destination as an absolute path (relative to the working directory).
pub fn absolute(dest: &Path) -> Result<PathBuf, RestoreError> {
    if dest.as_os_str().is_empty() {
        return Err(RestoreError::Usage("the destination is empty".into()));
    }
    let abs = if dest.is_absolute() {
        dest.to_path_buf()
    } else {
        std::env::current_dir().at(Path::new("."))?.join(dest)
    };
    Ok(abs
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a process with this pid exists (signal 0 probes without sending).
fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The pid of a live postmaster on `dir`, from its `postmaster.pid`.
pub fn running_postmaster(dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    pid_alive(pid).then_some(pid)
}

fn is_empty_dir(dir: &Path) -> Result<bool, RestoreError> {
    Ok(fs::read_dir(dir).at(dir)?.next().is_none())
}

/// Refuses a destination that is not a directory, holds a running cluster, or is
/// not empty (unless `delta`); says who should own the restored files.
pub fn check(dest: &Path, delta: bool) -> Result<DestinationState, RestoreError> {
    let meta = match fs::metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(DestinationState {
                existed: false,
                owner: Owner(None),
            })
        }
        Err(e) => return Err(IoError::new(dest, e).into()),
    };
    if !meta.is_dir() {
        return Err(RestoreError::Refused(format!(
            "destination {} exists and is not a directory",
            dest.display()
        )));
    }
    if let Some(pid) = running_postmaster(dest) {
        return Err(RestoreError::Refused(format!(
            "destination {} holds a running PostgreSQL (postmaster.pid: pid {pid}); stop it first",
            dest.display()
        )));
    }
    if !delta && dest.join(INCOMPLETE_MARKER).exists() {
        return Err(RestoreError::Refused(format!(
            "destination {} holds an interrupted recovery ({INCOMPLETE_MARKER}); remove it or rerun with --delta",
            dest.display()
        )));
    }
    if !delta && !is_empty_dir(dest)? {
        return Err(RestoreError::Refused(format!(
            "destination {} is not empty (use --delta to recover over an older copy of the server)",
            dest.display()
        )));
    }
    let owner = if is_root() && meta.uid() != 0 {
        Owner(Some((meta.uid(), meta.gid())))
    } else {
        Owner(None)
    };
    Ok(DestinationState {
        existed: true,
        owner,
    })
}

/// Refuses a tablespace location that is not a directory or not empty (unless `delta`).
pub fn check_tablespace_location(loc: &Path, oid: u32, delta: bool) -> Result<(), RestoreError> {
    match fs::metadata(loc) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new(loc, e).into()),
        Ok(m) if !m.is_dir() => Err(RestoreError::Refused(format!(
            "tablespace location {} (oid {oid}) exists and is not a directory",
            loc.display()
        ))),
        Ok(_) if !delta && !is_empty_dir(loc)? => Err(RestoreError::Refused(format!(
            "tablespace location {} (oid {oid}) is not empty (relocate it with --tablespace NAME:LOCATION, or use --delta)",
            loc.display()
        ))),
        Ok(_) => Ok(()),
    }
}

/// Every tablespace of the backup with its location after `--tablespace` relocations.
pub fn plan_tablespaces(
    info: &BackupInfo,
    relocations: &[(String, PathBuf)],
    dest: &Path,
) -> Result<Vec<TablespacePlan>, RestoreError> {
    let known = || {
        let names: Vec<String> = info
            .tablespaces
            .iter()
            .map(|t| t.name.clone().unwrap_or_else(|| t.oid.to_string()))
            .collect();
        if names.is_empty() {
            "the backup has no tablespaces".to_string()
        } else {
            format!("the backup has: {}", names.join(", "))
        }
    };
    let mut out: Vec<TablespacePlan> = info
        .tablespaces
        .iter()
        .map(|t| TablespacePlan {
            oid: t.oid,
            name: t.name.clone(),
            original: PathBuf::from(&t.location),
            location: PathBuf::from(&t.location),
        })
        .collect();
    let mut seen = Vec::new();
    for (name, loc) in relocations {
        let Some(t) = out
            .iter_mut()
            .find(|t| t.name.as_deref() == Some(name.as_str()) || t.oid.to_string() == *name)
        else {
            return Err(RestoreError::Usage(format!(
                "unknown tablespace '{name}' in --tablespace ({})",
                known()
            )));
        };
        if seen.contains(&t.oid) {
            return Err(RestoreError::Usage(format!(
                "tablespace '{name}' is relocated twice"
            )));
        }
        seen.push(t.oid);
        t.location = absolute(loc)?;
    }
    for (i, t) in out.iter().enumerate() {
        if !t.location.is_absolute() {
            return Err(RestoreError::Corrupt(format!(
                "backup {}: tablespace {} has a relative location '{}'",
                info.backup_id,
                t.oid,
                t.location.display()
            )));
        }
        if t.location.starts_with(dest) || dest.starts_with(&t.location) {
            return Err(RestoreError::Refused(format!(
                "tablespace {} would be restored to {}, which overlaps the destination {}; relocate it with --tablespace NAME:LOCATION",
                t.name.clone().unwrap_or_else(|| t.oid.to_string()),
                t.location.display(),
                dest.display()
            )));
        }
        if let Some(o) = out[..i]
            .iter()
            .find(|o| o.location.starts_with(&t.location) || t.location.starts_with(&o.location))
        {
            return Err(RestoreError::Refused(format!(
                "tablespaces {} and {} would be restored to overlapping locations ({} and {})",
                o.oid,
                t.oid,
                o.location.display(),
                t.location.display()
            )));
        }
    }
    Ok(out)
}

/// Creates a directory (parents too) with mode 0700, or sets an existing one to 0700
/// (PostgreSQL refuses a data directory others can read); gives it to `owner`.
pub fn create(dir: &Path, owner: Owner) -> Result<(), RestoreError> {
    if !dir.is_dir() {
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).at(parent)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(IoError::new(dir, e).into()),
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).at(dir)?;
    owner.apply_path(dir)
}

/// Writes a small file into the destination (atomically, mode 0600, owned right).
fn write_small(path: &Path, data: &[u8], owner: Owner) -> Result<(), RestoreError> {
    write_atomic(path, data).at(path)?;
    owner.apply_path(path)
}

/// Copies the backup's `backup_manifest` into the destination (for `pg_verifybackup`
/// and the DBA); false when the backup has none.
pub fn write_manifest(plan: &RecoverPlan) -> Result<bool, RestoreError> {
    if !plan.info.manifest_fits_restore() {
        // It lists the INCREMENTAL.* files, not the rebuilt ones.
        return Ok(false);
    }
    let Some(data) = plan.dir.read_small("backup_manifest")? else {
        return Ok(false);
    };
    write_small(&plan.destination.join("backup_manifest"), &data, plan.owner)?;
    Ok(true)
}

/// Escapes a tablespace path the way PostgreSQL writes `tablespace_map`.
fn escape_map_path(p: &str) -> String {
    let mut s = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, '\n' | '\r' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// A `tablespace_map` pointed at the relocated locations; `None` when nothing moved.
pub(crate) fn relocated_map(plan: &RecoverPlan, text: &str) -> Option<String> {
    if plan.tablespaces.iter().all(|t| t.location == t.original) {
        return None;
    }
    let mut out = String::new();
    for line in text.lines() {
        let oid = line.split(' ').next().and_then(|o| o.parse::<u32>().ok());
        match oid.and_then(|o| plan.tablespaces.iter().find(|t| t.oid == o)) {
            Some(t) => out.push_str(&format!(
                "{} {}\n",
                t.oid,
                escape_map_path(&t.location.to_string_lossy())
            )),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Some(out)
}

/// Points a restored `tablespace_map` (if any) at the relocated locations: PostgreSQL
/// recreates `pg_tblspc` links from it when it starts.
pub fn relocate_tablespace_map(plan: &RecoverPlan) -> Result<(), RestoreError> {
    let path = plan.destination.join("tablespace_map");
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(());
    };
    match relocated_map(plan, &text) {
        Some(out) => write_small(&path, out.as_bytes(), plan.owner),
        None => Ok(()),
    }
}

/// `postgresql.auto.conf` with the recovery settings appended (`existing`: the
/// restored file, if the backup held one).
pub(crate) fn auto_conf_with_settings(plan: &RecoverPlan, existing: Option<String>) -> String {
    let mut text = existing.unwrap_or_else(|| {
        "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n"
            .to_string()
    });
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&plan.settings.render(&format!(
        "Recovery settings written by pgbk recover of backup {} of server '{}'",
        plan.info.backup_id, plan.request.server,
    )));
    text
}

/// The signal file to create and the one that must not be there.
pub(crate) fn signal_files(plan: &RecoverPlan) -> (&'static str, &'static str) {
    if plan.request.standby_mode {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    }
}

/// Appends the recovery settings to `postgresql.auto.conf` and creates the signal
/// file; returns the signal file's name.
pub fn write_settings(plan: &RecoverPlan) -> Result<String, RestoreError> {
    let conf = plan.destination.join("postgresql.auto.conf");
    let existing = match fs::read_to_string(&conf) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(IoError::new(&conf, e).into()),
    };
    let text = auto_conf_with_settings(plan, existing);
    write_small(&conf, text.as_bytes(), plan.owner)?;
    let (signal, other) = signal_files(plan);
    let _ = fs::remove_file(plan.destination.join(other));
    write_small(&plan.destination.join(signal), b"", plan.owner)?;
    Ok(signal.to_string())
}

/// The file in a destination that says its recovery has not finished (written first,
/// removed last; `global/pg_control` is written just before it goes, so PostgreSQL
/// refuses to start on a folder an interrupted recovery left).
pub const INCOMPLETE_MARKER: &str = "pgbk_recover.incomplete";

/// Writes the marker of a recovery under way into the destination; returns its path.
pub fn mark_incomplete(plan: &RecoverPlan) -> Result<PathBuf, RestoreError> {
    let path = plan.destination.join(INCOMPLETE_MARKER);
    let text = format!(
        "pgbk is recovering backup {} of server '{}' into this folder (pid {}).\n\
         If this file is still here, that recovery did not finish: remove the folder or rerun recover with --delta.\n",
        plan.info.backup_id,
        plan.request.server,
        std::process::id()
    );
    write_small(&path, text.as_bytes(), plan.owner)?;
    fsync_dir(&plan.destination).at(&plan.destination)?;
    Ok(path)
}

/// Removes the marker once the recovery is complete and durable.
pub fn clear_incomplete(marker: &Path) -> Result<(), RestoreError> {
    fs::remove_file(marker).at(marker)?;
    if let Some(dir) = marker.parent() {
        fsync_dir(dir).at(dir)?;
    }
    Ok(())
}

/// Flushes everything written on the file system holding `dir` (one `syncfs`
/// instead of an fsync per file).
pub fn sync(dir: &Path) -> Result<(), RestoreError> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir).at(dir)?;
    // SAFETY: syncfs on a valid open descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(IoError::new(dir, io::Error::last_os_error()).into());
    }
    Ok(fsync_dir(dir).at(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::TablespaceInfo;

    #[test]
    fn refuses_non_empty_and_running_destinations() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("data");
        assert!(!check(&dest, false).unwrap().existed);
        fs::create_dir(&dest).unwrap();
        assert!(check(&dest, false).unwrap().existed);
        fs::write(dest.join("PG_VERSION"), "15\n").unwrap();
        let e = check(&dest, false).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
        assert!(check(&dest, true).is_ok());
        // Our own pid is certainly alive.
        fs::write(
            dest.join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), dest.display()),
        )
        .unwrap();
        let e = check(&dest, true).unwrap_err().to_string();
        assert!(e.contains("running PostgreSQL"), "{e}");
        // A stale pid file (no such process) is not a running cluster.
        fs::write(dest.join("postmaster.pid"), "2147483646\n").unwrap();
        assert!(check(&dest, true).is_ok());
        let file = d.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(check(&file, true).is_err());
    }

    #[test]
    fn relocates_tablespaces_by_name_or_oid_and_refuses_unknown_ones() {
        let mut info: BackupInfo = serde_json::from_str(
            r#"{"backup_id":"20260101T000000","name":null,"server":"pg1","status":"DONE",
            "method":"postgres","server_version":150000,"system_id":"1","timeline":1,
            "wal_segment_size":16777216,"begin_lsn":null,"end_lsn":null,"end_timeline":null,
            "begin_wal":null,"end_wal":null,"begin_time":"2026-01-01T00:00:00Z","end_time":null,
            "size_bytes":0,"stored_bytes":0,"file_count":0,"tablespaces":[],"error":null,
            "pid":null,"keep":null,"checksum_algorithm":"blake3","has_manifest":false}"#,
        )
        .unwrap();
        info.tablespaces = vec![
            TablespaceInfo {
                oid: 16390,
                name: Some("tbs1".into()),
                location: "/srv/tbs1".into(),
            },
            TablespaceInfo {
                oid: 16391,
                name: None,
                location: "/srv/tbs2".into(),
            },
        ];
        let dest = Path::new("/restore/data");
        let p = plan_tablespaces(
            &info,
            &[
                ("tbs1".into(), "/restore/t1".into()),
                ("16391".into(), "/restore/t2".into()),
            ],
            dest,
        )
        .unwrap();
        assert_eq!(p[0].location, Path::new("/restore/t1"));
        assert_eq!(p[1].location, Path::new("/restore/t2"));
        let e = plan_tablespaces(&info, &[("nope".into(), "/x".into())], dest).unwrap_err();
        assert!(matches!(e, RestoreError::Usage(_)), "{e}");
        assert!(e.to_string().contains("tbs1, 16391"), "{e}");
        let inside = plan_tablespaces(&info, &[("tbs1".into(), "/restore/data/t".into())], dest);
        assert!(matches!(inside, Err(RestoreError::Refused(_))));
        let same = plan_tablespaces(
            &info,
            &[
                ("tbs1".into(), "/restore/t".into()),
                ("16391".into(), "/restore/t".into()),
            ],
            dest,
        );
        assert!(matches!(same, Err(RestoreError::Refused(_))));
        assert_eq!(escape_map_path("/a\\b\nc"), "/a\\\\b\\\nc");
    }
}
