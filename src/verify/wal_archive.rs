//! `check-wal-archive`: is a server's WAL archive safe to receive the WAL of a new
//! (or re-initialised) PostgreSQL? Segments of a different cluster under the same
//! names would mix two histories; an archive is safe when it is empty, or when every
//! file in it is on a timeline below the one the new server will start on.

use crate::repo::store::StoreError;
use crate::repo::ServerRepo;
use crate::wal::stored::archived_wal_names;
use crate::wal::{TimeLineId, WalFileName};
use serde::Serialize;

/// How many conflicting names the result carries.
const SHOWN: usize = 5;

/// The verdict on one server's archive.
#[derive(Debug, Clone, Serialize)]
pub struct WalArchiveCheck {
    /// Server name.
    pub server: String,
    /// The timeline the new server starts on (`None`: the archive must be empty).
    pub timeline: Option<TimeLineId>,
    /// WAL files in the archive (segments, partials, history files).
    pub files: usize,
    /// The highest timeline among them.
    pub newest_timeline: Option<TimeLineId>,
    /// Files that make the archive unsafe (at most a few, oldest first).
    pub conflicting: Vec<String>,
    /// How many files do.
    pub conflicting_count: usize,
    /// Safe to use.
    pub safe: bool,
}

fn timeline_of(name: &str) -> Option<TimeLineId> {
    match WalFileName::parse(name, crate::wal::put::MIN_SEG_SIZE)? {
        WalFileName::Segment(s) | WalFileName::Partial(s) | WalFileName::BackupHistory(s, _) => {
            Some(s.tli)
        }
        WalFileName::History(tli) => Some(tli),
    }
}

/// Judges a server's archive from the stored files themselves (not the catalog,
/// which may be behind); an archive that cannot be listed is an error, never
/// "empty".
pub fn check_wal_archive(
    repo: &ServerRepo,
    timeline: Option<TimeLineId>,
) -> Result<WalArchiveCheck, StoreError> {
    let server = repo.server();
    let names = archived_wal_names(repo)?;
    let tlis: Vec<(String, TimeLineId)> = names
        .into_iter()
        .filter_map(|n| timeline_of(&n).map(|t| (n, t)))
        .collect();
    let conflicting: Vec<&String> = tlis
        .iter()
        .filter(|(_, t)| timeline.is_none_or(|want| *t >= want))
        .map(|(n, _)| n)
        .collect();
    Ok(WalArchiveCheck {
        server: server.to_string(),
        timeline,
        files: tlis.len(),
        newest_timeline: tlis.iter().map(|(_, t)| *t).max(),
        conflicting: conflicting
            .iter()
            .take(SHOWN)
            .map(|n| n.to_string())
            .collect(),
        conflicting_count: conflicting.len(),
        safe: conflicting.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_safe_and_a_timeline_below_the_new_one_is_too() {
        let home = tempfile::tempdir().unwrap();
        let repo = ServerRepo::new(home.path(), "pg");
        assert!(check_wal_archive(&repo, None).unwrap().safe);
        let dir = repo.wals_dir().join("0000000100000000");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("000000010000000000000003.zst"), b"x").unwrap();
        std::fs::write(
            repo.wals_dir().join("00000002.history"),
            b"1\t0/3000000\tx\n",
        )
        .unwrap();
        let none = check_wal_archive(&repo, None).unwrap();
        assert!(!none.safe);
        assert_eq!(none.files, 2);
        assert_eq!(none.newest_timeline, Some(TimeLineId(2)));
        assert!(!check_wal_archive(&repo, Some(TimeLineId(2))).unwrap().safe);
        let three = check_wal_archive(&repo, Some(TimeLineId(3))).unwrap();
        assert!(three.safe, "{three:?}");
    }
}
