//! Storing ahead. PostgreSQL's archiver hands `archive_command` one segment at a
//! time and waits for each, so one put-wal after another leaves the object store's
//! latency unused. When put-wal runs on the database host with the segment as its
//! input (`< %p`), the segments PostgreSQL has already marked ready after it
//! (`pg_wal/archive_status/<name>.ready`) are stored at the same time, each checked
//! exactly as if PostgreSQL had handed it over. The archiver's own calls for them
//! then find them archived with the same content and return at once.
//!
//! Only a call whose segment is not archived yet starts such a batch: the calls
//! for the segments stored ahead return at once instead of each starting the next
//! batch, so one wait on the store covers `1 + put_wal_ahead` segments.
//!
//! A ready segment is complete and stays in `pg_wal` until its own
//! `archive_command` succeeds, so reading it early is safe. A failure ahead is only
//! logged: the archiver's call for that segment stores it, or reports why not.

use super::put::{put_wal, PutError, PutOutcome, IN_MEMORY_LIMIT};
use super::segment::WalFileName;
use crate::catalog::Catalog;
use crate::repo::Repository;
use crate::types::segment::MIN_SEG_SIZE;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The segments marked ready after `name` in the `pg_wal` holding `wal_file` (the
/// file put-wal reads, `%p`), on the same timeline, oldest first, `max` at most:
/// none when `wal_file` is not `name` in a `pg_wal` with an `archive_status`.
pub fn ready_after(wal_file: &Path, name: &str, max: usize) -> Vec<(String, PathBuf)> {
    if max == 0
        || !matches!(
            WalFileName::parse(name, MIN_SEG_SIZE),
            Some(WalFileName::Segment(_))
        )
    {
        return Vec::new();
    }
    let Some(dir) = wal_file.parent() else {
        return Vec::new();
    };
    if wal_file.file_name().and_then(|n| n.to_str()) != Some(name) {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir.join("archive_status")) else {
        return Vec::new();
    };
    let mut ready: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_str()?.strip_suffix(".ready")?.to_string();
            let segment = matches!(
                WalFileName::parse(&f, MIN_SEG_SIZE),
                Some(WalFileName::Segment(_))
            );
            (segment && f.as_str() > name && f[..8] == name[..8]).then_some(f)
        })
        .collect();
    ready.sort();
    ready.truncate(max);
    ready
        .into_iter()
        .map(|n| {
            let p = dir.join(&n);
            (n, p)
        })
        .filter(|(_, p)| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() <= IN_MEMORY_LIMIT)
        })
        .collect()
}

/// Stores the WAL file `name` read from `input` ([`put_wal`]) while the segments
/// of `ahead` are stored on threads of their own, unless `name` is archived
/// already (stored ahead by an earlier call); returns once all are done, with the
/// outcome of `name` alone.
pub fn put_wal_ahead(
    repository: &Repository,
    server: &str,
    name: Option<&str>,
    input: &mut dyn Read,
    ahead: &[(String, PathBuf)],
) -> Result<PutOutcome, PutError> {
    let archived = |n: &str| {
        Catalog::open(repository.home())
            .and_then(|c| c.wal_file(server, n))
            .map_or(true, |row| row.is_some())
    };
    let ahead = match name {
        Some(n) if !ahead.is_empty() && !archived(n) => ahead,
        _ => &[],
    };
    std::thread::scope(|scope| {
        for (n, path) in ahead {
            scope.spawn(move || {
                let stored = std::fs::File::open(path)
                    .map_err(|e| e.to_string())
                    .and_then(|mut f| {
                        put_wal(repository, server, Some(n), &mut f).map_err(|e| e.to_string())
                    });
                match stored {
                    Ok(o) => tracing::debug!(server, "{n}: stored ahead ({:?})", o.status),
                    Err(e) => tracing::debug!(server, "{n}: not stored ahead: {e}"),
                }
            });
        }
        put_wal(repository, server, name, input)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_later_ready_segments_of_the_same_timeline_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        let names = [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
            "000000010000000000000002",
            "000000020000000000000007",
        ];
        for n in names {
            std::fs::write(wal.join(n), b"x").unwrap();
            std::fs::write(wal.join("archive_status").join(format!("{n}.ready")), b"").unwrap();
        }
        std::fs::write(wal.join("archive_status/00000002.history.ready"), b"").unwrap();
        // .done: already archived.
        std::fs::write(wal.join("000000010000000000000008"), b"x").unwrap();
        std::fs::write(
            wal.join("archive_status/000000010000000000000008.done"),
            b"",
        )
        .unwrap();
        let cur = "000000010000000000000003";
        let got: Vec<String> = ready_after(&wal.join(cur), cur, 2)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            got,
            ["000000010000000000000004", "000000010000000000000005"]
        );
        assert_eq!(ready_after(&wal.join(cur), cur, 10).len(), 3);
        assert!(ready_after(&wal.join(cur), cur, 0).is_empty());
        // Not %p of that name, or not a segment: nothing.
        assert!(ready_after(&dir.path().join("other"), cur, 2).is_empty());
        assert!(ready_after(&wal.join("00000002.history"), "00000002.history", 2).is_empty());
    }
}
