//! Validation of every name and path a peer sends: nothing received is trusted to
//! stay inside the server's folder. A backup id must have the id format, a WAL name
//! must be a WAL segment, partial or history name stored exactly where this pgbk
//! would store it, and an object path must be relative, made of plain components
//! (no `..`, no absolute path, no empty or `.` component), and must not collide with
//! a backup's own metadata files. Local directories on the way must be real
//! directories, not symbolic links that could lead elsewhere.

use crate::backup::is_backup_id;
use crate::repo::durable::fsync_dir;
use crate::repo::ServerRepo;
use crate::wal::{WalFileName, WalSegment};
use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

/// A name or path from the peer that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused {what} '{value}' from the primary: {why}")]
pub struct PathRefused {
    /// What it was meant to be (backup id, WAL file, object path…).
    pub what: &'static str,
    /// The value received (as sent, for the report).
    pub value: String,
    /// Why it is refused.
    pub why: String,
}

fn refuse(what: &'static str, value: &str, why: &str) -> PathRefused {
    PathRefused {
        what,
        value: value.chars().take(200).collect(),
        why: why.to_string(),
    }
}

/// Checks a backup id (`YYYYMMDDTHHMMSS`).
pub fn check_backup_id(id: &str) -> Result<(), PathRefused> {
    if is_backup_id(id) {
        Ok(())
    } else {
        Err(refuse("backup id", id, "not of the form YYYYMMDDTHHMMSS"))
    }
}

/// What a WAL file name denotes, with where it is stored (relative to the server
/// folder, as this pgbk lays it out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    /// The parsed name.
    pub file: WalFileName,
    /// `wals/<first 16 hex>/<segment>[.partial].zst` or `wals/<tli>.history`.
    pub rel_path: String,
    /// Whether the stored object is zstd-compressed (history files are kept as is).
    pub compressed: bool,
}

/// Checks an archived WAL file's name and the stored path the peer gave for it:
/// the path must be exactly the one the repository layout gives that name.
pub fn check_wal(name: &str, rel_path: &str, seg_size: u64) -> Result<WalName, PathRefused> {
    let file = WalFileName::parse(name, seg_size).ok_or_else(|| {
        refuse(
            "WAL file name",
            name,
            "not a WAL segment, partial or history name",
        )
    })?;
    let (expected, compressed) = match &file {
        WalFileName::Segment(s) => (format!("wals/{}/{}.zst", s.prefix(), s.name()), true),
        WalFileName::Partial(s) => (
            format!("wals/{}/{}.partial.zst", s.prefix(), s.name()),
            true,
        ),
        WalFileName::History(_) => (format!("wals/{name}"), false),
        WalFileName::BackupHistory(..) => {
            return Err(refuse(
                "WAL file name",
                name,
                "backup history files are not archived",
            ))
        }
    };
    if rel_path != expected {
        return Err(refuse(
            "WAL path",
            rel_path,
            &format!("expected '{expected}' for {name}"),
        ));
    }
    Ok(WalName {
        file,
        rel_path: expected,
        compressed,
    })
}

/// Checks the name of the primary's in-progress segment (`<segment>.partial`).
pub fn check_streaming_partial(name: &str, seg_size: u64) -> Result<WalSegment, PathRefused> {
    match WalFileName::parse(name, seg_size) {
        Some(WalFileName::Partial(s)) => Ok(s),
        _ => Err(refuse(
            "partial segment name",
            name,
            "not of the form <segment>.partial",
        )),
    }
}

/// Checks a relative path inside a backup folder (an object of files.jsonl): plain
/// components only, and not one of the backup's metadata files.
pub fn check_relative(what: &'static str, rel: &str) -> Result<PathBuf, PathRefused> {
    if rel.is_empty() {
        return Err(refuse(what, rel, "empty path"));
    }
    if rel.contains('\0') || rel.contains('\\') {
        return Err(refuse(what, rel, "NUL or backslash in the path"));
    }
    let p = Path::new(rel);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => {
                if part.to_string_lossy().contains(".tmp.") {
                    return Err(refuse(what, rel, "temporary file names are reserved"));
                }
                out.push(part)
            }
            Component::ParentDir => return Err(refuse(what, rel, "contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(what, rel, "absolute path"))
            }
            Component::CurDir => return Err(refuse(what, rel, "contains '.'")),
        }
    }
    if rel
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(refuse(what, rel, "empty, '.' or '..' component"));
    }
    if out.components().count() == 1 {
        let top = out.to_string_lossy();
        if ["backup.json", "files.jsonl", "backup_manifest"].contains(&top.as_ref()) {
            return Err(refuse(what, rel, "names a backup metadata file"));
        }
    }
    Ok(out)
}

/// Creates (0700) or checks each directory from `base` down to `base/rel_dir`,
/// refusing any that exists as a symbolic link or a non-directory. `seen` remembers
/// directories already checked so a backup of many files checks each once.
pub fn ensure_real_dirs(
    base: &Path,
    rel_dir: &Path,
    seen: &mut HashSet<PathBuf>,
) -> std::io::Result<()> {
    let mut cur = base.to_path_buf();
    for c in rel_dir.components() {
        let Component::Normal(part) = c else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: not a plain relative path", rel_dir.display()),
            ));
        };
        cur.push(part);
        if seen.contains(&cur) {
            continue;
        }
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{}: exists and is not a directory (a link is never followed)",
                        cur.display()
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().mode(0o700).create(&cur)?;
                fsync_dir(cur.parent().unwrap_or(base))?;
            }
            Err(e) => return Err(e),
        }
        seen.insert(cur.clone());
    }
    Ok(())
}

/// The local path of a WAL file checked by [`check_wal`].
pub fn local_wal_path(repo: &ServerRepo, w: &WalName) -> PathBuf {
    repo.root().join(&w.rel_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    const MB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn refuses_escaping_or_odd_paths() {
        for bad in [
            "",
            "../x",
            "data/../../etc/passwd",
            "/etc/passwd",
            "data//x",
            "./data/x",
            "data/./x",
            "backup.json",
            "files.jsonl",
            "data/.x.zst.tmp.123",
            "a\\..\\b",
        ] {
            assert!(check_relative("object", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            check_relative("object", "data/base/1/1259.zst").unwrap(),
            PathBuf::from("data/base/1/1259.zst")
        );
        assert!(check_relative("object", "tablespaces/16384/PG_15/5/1.zst").is_ok());
    }

    #[test]
    fn wal_paths_must_be_the_layouts_own() {
        let seg = "000000010000000000000003";
        let w = check_wal(seg, &format!("wals/0000000100000000/{seg}.zst"), MB16).unwrap();
        assert!(w.compressed);
        assert!(check_wal(seg, "wals/../../x.zst", MB16).is_err());
        assert!(check_wal(seg, &format!("wals/0000000100000001/{seg}.zst"), MB16).is_err());
        assert!(check_wal("../000000010000000000000003", "x", MB16).is_err());
        assert!(check_wal("00000002.history", "wals/00000002.history", MB16)
            .is_ok_and(|w| !w.compressed));
        let p = format!("{seg}.partial");
        assert!(check_wal(&p, &format!("wals/0000000100000000/{p}.zst"), MB16).is_ok());
        assert!(check_streaming_partial(&p, MB16).is_ok());
        assert!(check_streaming_partial(seg, MB16).is_err());
        assert!(check_streaming_partial("../x.partial", MB16).is_err());
        assert!(check_backup_id("20260101T000000").is_ok());
        assert!(check_backup_id("../20260101T0000").is_err());
    }

    #[test]
    fn a_symlinked_directory_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("b");
        std::fs::create_dir(&base).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("data")).unwrap();
        let mut seen = HashSet::new();
        assert!(ensure_real_dirs(&base, Path::new("data/base"), &mut seen).is_err());
        assert!(ensure_real_dirs(&base, Path::new("ok/base"), &mut seen).is_ok());
        assert!(base.join("ok/base").is_dir());
    }
}
