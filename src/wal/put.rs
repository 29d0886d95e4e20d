//! `put-wal`: one WAL file handed over by `archive_command` (through ssh, on stdin,
//! or as a file in `incoming/`) is checked and stored in the archive before success
//! is reported, so PostgreSQL recycles only WAL that is safely on the backup host.
//!
//! A segment's long page header must name the server's cluster (the system
//! identifier the catalog knows, or the first one stored becomes it) and a valid
//! segment size, every written page must carry the address its name implies, and the
//! file must be exactly one segment long. History files must parse. Backup history
//! files (`.backup`) are accepted and not stored: pgbk keeps its own backup metadata.
//! Segments up to [`IN_MEMORY_LIMIT`] are checked in memory; larger ones are spooled
//! to a dot-file in `incoming/` (which `archive-wal` ignores) while being checked.

use super::archive::{ArchiveError, Archived, WalArchive};
use super::header::{
    major_for_magic, read_long_header, validate_segment, HeaderError, LongHeader, PageChecker,
    LONG_HEADER_SIZE, XLOG_BLCKSZ,
};
use super::history::parse_history;
use super::segment::{WalFileName, WalSegment};
use super::{Lsn, SystemId, TimeLineId};
use crate::catalog::{Catalog, CatalogError};
use crate::error::{IoError, IoResultExt};
use crate::repo::compress::read_full;
use crate::repo::{Repository, ServerRepo};
use serde::Serialize;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Segments up to this size are read whole into memory; larger ones are spooled.
pub const IN_MEMORY_LIMIT: u64 = 64 << 20;
pub use crate::types::segment::{MAX_SEG_SIZE, MIN_SEG_SIZE};
/// History and backup history files are small text files; more is refused.
const MAX_TEXT_FILE: u64 = 16 << 20;

/// Why a WAL file was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The name is not one PostgreSQL gives a WAL archive file.
    #[error("server '{server}': '{name}' is not a WAL file name (segment, .partial, .history or .backup)")]
    BadName { server: String, name: String },
    /// Nothing arrived.
    #[error("server '{server}': {name}: empty input, no WAL received")]
    Empty { server: String, name: String },
    /// Fewer bytes than a whole segment.
    #[error("server '{server}': {name}: truncated: {size} bytes received, {expected} needed")]
    Truncated {
        server: String,
        name: String,
        size: u64,
        expected: u64,
    },
    /// More bytes than a whole segment.
    #[error(
        "server '{server}': {name}: more than {expected} bytes received, longer than a segment"
    )]
    TooLong {
        server: String,
        name: String,
        expected: u64,
    },
    /// The content is not what its name says (header, segment size, history syntax).
    #[error("server '{server}': {name}: {reason}")]
    Invalid {
        server: String,
        name: String,
        reason: String,
    },
    /// The segment belongs to another cluster than the one the archive holds.
    #[error("server '{server}': {source}")]
    Identity { server: String, source: HeaderError },
    /// The segment's pages do not fit its name (size, magic, page address, timeline).
    #[error("server '{server}': {source}")]
    Header { server: String, source: HeaderError },
    /// Storing failed (a conflict names the server and file itself).
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Reading the input failed.
    #[error("server '{server}': reading {name}: {source}")]
    Read {
        server: String,
        name: String,
        source: io::Error,
    },
    /// A local file (the spool) could not be written.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl PutError {
    /// Whether the file itself is at fault (a retry cannot succeed), rather than the
    /// input channel or the backup host: such files are quarantined by `archive-wal`.
    pub fn is_bad_file(&self) -> bool {
        matches!(
            self,
            PutError::BadName { .. }
                | PutError::Empty { .. }
                | PutError::Truncated { .. }
                | PutError::TooLong { .. }
                | PutError::Invalid { .. }
                | PutError::Identity { .. }
                | PutError::Header { .. }
                | PutError::Archive(ArchiveError::Header(_) | ArchiveError::Conflict { .. })
        )
    }
}

/// What happened to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PutStatus {
    /// Stored now.
    Stored,
    /// The same content was already archived; nothing written.
    AlreadyPresent,
    /// Accepted and deliberately not stored (a `.backup` history file).
    Ignored,
}

/// The result of one successful put.
#[derive(Debug, Clone, Serialize)]
pub struct PutOutcome {
    /// The server.
    pub server: String,
    /// The file name as PostgreSQL names it.
    pub name: String,
    /// `segment`, `partial`, `history` or `backup`.
    pub kind: &'static str,
    /// Stored, already present, or ignored.
    pub status: PutStatus,
    /// Bytes received.
    pub size: u64,
    /// Bytes on disk in the archive (0 when nothing was written).
    pub stored_size: u64,
}

/// Stores one WAL file read from `input` into `server`'s archive in `repository`.
/// `name` is `%f`; without it, a segment's name is derived from its header.
pub fn put_wal(
    repository: &Repository,
    server: &str,
    name: Option<&str>,
    input: &mut dyn Read,
) -> Result<PutOutcome, PutError> {
    put_wal_with_limit(repository, server, name, input, IN_MEMORY_LIMIT)
}

/// [`put_wal`] with the in-memory limit given (tests use 0 to exercise the spool).
pub fn put_wal_with_limit(
    repository: &Repository,
    server: &str,
    name: Option<&str>,
    input: &mut dyn Read,
    limit: u64,
) -> Result<PutOutcome, PutError> {
    let p = Put {
        repository,
        home: repository.home(),
        server,
        shown: name.unwrap_or("stdin").to_string(),
    };
    // The syntax of a name does not depend on the segment size beyond the last
    // field's range, which is widest for the smallest size.
    let kind = match name {
        Some(n) => Some(
            WalFileName::parse(n, MIN_SEG_SIZE).ok_or_else(|| PutError::BadName {
                server: server.to_string(),
                name: n.to_string(),
            })?,
        ),
        None => None,
    };
    match kind {
        Some(WalFileName::History(tli)) => p.history(tli, input),
        Some(WalFileName::BackupHistory(..)) => p.backup_history(input),
        Some(WalFileName::Partial(_)) => p.segment(name, true, input, limit),
        Some(WalFileName::Segment(_)) | None => p.segment(name, false, input, limit),
    }
}

struct Put<'a> {
    repository: &'a Repository,
    home: &'a Path,
    server: &'a str,
    shown: String,
}

/// Removes the spool file when dropped.
struct Spool {
    path: PathBuf,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Put<'_> {
    fn read_err(&self) -> impl FnOnce(io::Error) -> PutError + '_ {
        move |source| PutError::Read {
            server: self.server.to_string(),
            name: self.shown.clone(),
            source,
        }
    }

    fn invalid(&self, reason: String) -> PutError {
        PutError::Invalid {
            server: self.server.to_string(),
            name: self.shown.clone(),
            reason,
        }
    }

    fn read_text(&self, input: &mut dyn Read) -> Result<Vec<u8>, PutError> {
        let mut data = Vec::new();
        input
            .take(MAX_TEXT_FILE + 1)
            .read_to_end(&mut data)
            .map_err(self.read_err())?;
        if data.is_empty() {
            return Err(PutError::Empty {
                server: self.server.to_string(),
                name: self.shown.clone(),
            });
        }
        if data.len() as u64 > MAX_TEXT_FILE {
            return Err(self.invalid(format!("larger than {MAX_TEXT_FILE} bytes")));
        }
        Ok(data)
    }

    fn open_archive(&self, catalog: &Catalog) -> Result<(WalArchive, Option<SystemId>), PutError> {
        crate::wal::stored::adopt_repository_identity(
            &self.repository.server(self.server),
            catalog,
        )?;
        let identity = catalog.server_identity(self.server)?;
        let archive = WalArchive::open(
            self.repository,
            self.server,
            identity.map(|(id, _)| id),
            identity.map_or(16 << 20, |(_, s)| s),
        )?;
        Ok((archive, identity.map(|(id, _)| id)))
    }

    fn outcome(&self, name: String, kind: &'static str, a: Archived) -> PutOutcome {
        let (status, rec) = match a {
            Archived::Stored(r) => (PutStatus::Stored, r),
            Archived::AlreadyPresent(r) => (PutStatus::AlreadyPresent, r),
        };
        PutOutcome {
            server: self.server.to_string(),
            name,
            kind,
            status,
            size: rec.size,
            stored_size: if status == PutStatus::Stored {
                rec.stored_size
            } else {
                0
            },
        }
    }

    fn history(&self, tli: TimeLineId, input: &mut dyn Read) -> Result<PutOutcome, PutError> {
        let data = self.read_text(input)?;
        let text = std::str::from_utf8(&data)
            .map_err(|_| self.invalid("not a timeline history file (not UTF-8)".into()))?;
        let catalog = Catalog::open(self.home)?;
        let (archive, _) = self.open_archive(&catalog)?;
        if let Err(e) = parse_history(text) {
            // PostgreSQL retries a refused history file before any later segment:
            // keep it in errors/ so that `check` names it while archiving is stuck.
            let e = self.invalid(format!("bad history file: {e}"));
            archive.quarantine_data(&self.shown, &data, &e.to_string());
            return Err(e);
        }
        match archive.store_history(tli, &data) {
            Ok(a) => Ok(self.outcome(self.shown.clone(), "history", a)),
            Err(e @ ArchiveError::Conflict { .. }) => {
                archive.quarantine_data(&self.shown, &data, &e.to_string());
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn backup_history(&self, input: &mut dyn Read) -> Result<PutOutcome, PutError> {
        let data = self.read_text(input)?;
        tracing::info!(
            server = self.server,
            "{}: backup history file accepted, not stored (pgbk keeps its own backup metadata)",
            self.shown
        );
        Ok(PutOutcome {
            server: self.server.to_string(),
            name: self.shown.clone(),
            kind: "backup",
            status: PutStatus::Ignored,
            size: data.len() as u64,
            stored_size: 0,
        })
    }

    /// The segment the file is, from its name or else from its first page header.
    fn which_segment(
        &self,
        name: Option<&str>,
        partial: bool,
        head: &[u8],
        hdr: &LongHeader,
    ) -> Result<WalSegment, PutError> {
        match name {
            Some(n) => {
                let base = if partial {
                    n.strip_suffix(".partial").unwrap_or(n)
                } else {
                    n
                };
                WalSegment::parse(base, hdr.seg_size).ok_or_else(|| PutError::BadName {
                    server: self.server.to_string(),
                    name: n.to_string(),
                })
            }
            None => {
                let tli = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                let mut a = [0u8; 8];
                a.copy_from_slice(&head[8..16]);
                let addr = u64::from_le_bytes(a);
                if tli == 0 || addr % hdr.seg_size != 0 {
                    return Err(self.invalid(format!(
                        "first page (timeline {tli}, address {}) does not start a segment; give --name",
                        Lsn(addr)
                    )));
                }
                Ok(WalSegment {
                    tli: TimeLineId(tli),
                    segno: addr / hdr.seg_size,
                    seg_size: hdr.seg_size,
                })
            }
        }
    }

    fn segment(
        mut self,
        name: Option<&str>,
        partial: bool,
        input: &mut dyn Read,
        limit: u64,
    ) -> Result<PutOutcome, PutError> {
        let mut head = vec![0u8; XLOG_BLCKSZ];
        let got = read_full(input, &mut head).map_err(self.read_err())?;
        head.truncate(got);
        if got == 0 {
            return Err(PutError::Empty {
                server: self.server.to_string(),
                name: self.shown.clone(),
            });
        }
        let Some(hdr) = read_long_header(&head) else {
            return Err(PutError::Truncated {
                server: self.server.to_string(),
                name: self.shown.clone(),
                size: got as u64,
                expected: LONG_HEADER_SIZE as u64,
            });
        };
        if major_for_magic(hdr.magic).is_none() {
            return Err(self.invalid(format!(
                "unknown WAL page magic 0x{:04X}: not a WAL segment of a supported PostgreSQL",
                hdr.magic
            )));
        }
        if !hdr.seg_size.is_power_of_two() || !(MIN_SEG_SIZE..=MAX_SEG_SIZE).contains(&hdr.seg_size)
        {
            return Err(self.invalid(format!(
                "header segment size {} is not a valid wal_segment_size",
                hdr.seg_size
            )));
        }
        let catalog = Catalog::open(self.home)?;
        let (archive, expected_id) = self.open_archive(&catalog)?;
        if let Some((_, size)) = catalog.server_identity(self.server)? {
            if size != hdr.seg_size {
                return Err(self.invalid(format!(
                    "segment size {} differs from the archive's {size}",
                    hdr.seg_size
                )));
            }
        }
        let seg = self.which_segment(name, partial, &head, &hdr)?;
        let full_name = if partial {
            format!("{}.partial", seg.name())
        } else {
            seg.name()
        };
        self.shown = full_name.clone();
        let kind = if partial { "partial" } else { "segment" };
        let identity = |e: HeaderError| match e {
            e @ HeaderError::SystemId { .. } => PutError::Identity {
                server: self.server.to_string(),
                source: e,
            },
            e => PutError::Header {
                server: self.server.to_string(),
                source: e,
            },
        };
        if seg.seg_size <= limit {
            let mut data = Vec::with_capacity(seg.seg_size as usize);
            data.extend_from_slice(&head);
            input
                .take(seg.seg_size + 1 - head.len() as u64)
                .read_to_end(&mut data)
                .map_err(self.read_err())?;
            self.check_length(data.len() as u64, seg.seg_size)?;
            validate_segment(&data, &seg, expected_id).map_err(identity)?;
            catalog.check_server_identity(self.server, hdr.system_id, hdr.seg_size)?;
            let stored = if partial {
                archive.store_partial(&seg, &data)
            } else {
                archive.store_segment(&seg, &data)
            };
            return match stored {
                Ok(a) => Ok(self.outcome(full_name, kind, a)),
                Err(e @ ArchiveError::Conflict { .. }) => {
                    archive.quarantine_data(&full_name, &data, &e.to_string());
                    Err(e.into())
                }
                Err(e) => Err(e.into()),
            };
        }
        // Too large for memory: spool to a dot-file in incoming/, checking each page and
        // hashing as it arrives.
        let dir = ServerRepo::new(self.home, self.server).incoming_dir();
        crate::repo::durable::create_dir_all_private(&dir).at(&dir)?;
        let spool = Spool {
            path: dir.join(format!(".put-wal.{full_name}.{}", std::process::id())),
        };
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&spool.path)
                .at(&spool.path)?
        };
        let mut checker = PageChecker::new(&seg, &hdr, expected_id, &head).map_err(identity)?;
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        let mut chunk = head;
        chunk.resize(1 << 20, 0);
        let mut filled = got;
        loop {
            filled += read_full(input, &mut chunk[filled..]).map_err(self.read_err())?;
            if filled == 0 {
                break;
            }
            total += filled as u64;
            if total > seg.seg_size {
                break;
            }
            checker.feed(&chunk[..filled]).map_err(identity)?;
            hasher.update(&chunk[..filled]);
            out.write_all(&chunk[..filled]).at(&spool.path)?;
            let short = filled < chunk.len();
            filled = 0;
            if short {
                break;
            }
        }
        self.check_length(total, seg.seg_size)?;
        drop(out);
        catalog.check_server_identity(self.server, hdr.system_id, hdr.seg_size)?;
        let sum = hasher.finalize().to_hex().to_string();
        match archive.store_segment_spooled(&seg, partial, &spool.path, &sum) {
            Ok(a) => Ok(self.outcome(full_name, kind, a)),
            Err(e @ ArchiveError::Conflict { .. }) => {
                archive.quarantine_file_as(&spool.path, &full_name, &sum, &e.to_string());
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn check_length(&self, size: u64, expected: u64) -> Result<(), PutError> {
        if size < expected {
            return Err(PutError::Truncated {
                server: self.server.to_string(),
                name: self.shown.clone(),
                size,
                expected,
            });
        }
        if size > expected {
            return Err(PutError::TooLong {
                server: self.server.to_string(),
                name: self.shown.clone(),
                expected,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    /// A synthetic PG15 segment whose pages carry the right headers.
    fn fake_segment(seg: &WalSegment, sysid: u64) -> Vec<u8> {
        let mut d = vec![0u8; seg.seg_size as usize];
        for (i, page) in d.chunks_mut(XLOG_BLCKSZ).enumerate() {
            page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            page[2..4].copy_from_slice(&(if i == 0 { 2u16 } else { 0 }).to_le_bytes());
            page[4..8].copy_from_slice(&seg.tli.0.to_le_bytes());
            let addr = seg.start_lsn().0 + (i * XLOG_BLCKSZ) as u64;
            page[8..16].copy_from_slice(&addr.to_le_bytes());
            page[100] = (i % 251) as u8;
            if i == 0 {
                page[24..32].copy_from_slice(&sysid.to_le_bytes());
                page[32..36].copy_from_slice(&(seg.seg_size as u32).to_le_bytes());
                page[36..40].copy_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
            }
        }
        d
    }

    fn seg(segno: u64) -> WalSegment {
        WalSegment {
            tli: TimeLineId(1),
            segno,
            seg_size: SEG,
        }
    }

    fn put(
        home: &Path,
        name: Option<&str>,
        data: &[u8],
        limit: u64,
    ) -> Result<PutOutcome, PutError> {
        put_wal_with_limit(&Repository::local(home), "pg1", name, &mut &data[..], limit)
    }

    #[test]
    fn stores_in_memory_and_spooled_alike_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        for (segno, limit) in [(3, IN_MEMORY_LIMIT), (4, 0)] {
            let s = seg(segno);
            let data = fake_segment(&s, 42);
            let o = put(home, Some(&s.name()), &data, limit).unwrap();
            assert_eq!(o.status, PutStatus::Stored);
            assert_eq!(o.size, SEG);
            let stored = ServerRepo::new(home, "pg1").segment_path(&s);
            let back = crate::repo::compress::read_decompressed(&stored).unwrap();
            assert!(back == data, "segment {segno} (limit {limit}) round-trips");
            let again = put(home, Some(&s.name()), &data, limit).unwrap();
            assert_eq!(again.status, PutStatus::AlreadyPresent);
        }
        // No spool left behind, and the first system id became the server's.
        let incoming = ServerRepo::new(home, "pg1").incoming_dir();
        assert_eq!(fs::read_dir(&incoming).unwrap().count(), 0);
        let other = fake_segment(&seg(5), 7);
        for limit in [IN_MEMORY_LIMIT, 0] {
            let e = put(home, Some(&seg(5).name()), &other, limit).unwrap_err();
            assert!(matches!(e, PutError::Identity { .. }), "{e}");
        }
    }

    #[test]
    fn refuses_truncated_long_misplaced_and_conflicting_files() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let s = seg(3);
        let data = fake_segment(&s, 42);
        for limit in [IN_MEMORY_LIMIT, 0] {
            let e = put(home, Some(&s.name()), &data[..SEG as usize - 8192], limit).unwrap_err();
            assert!(matches!(e, PutError::Truncated { .. }), "{e}");
            let mut long = data.clone();
            long.push(0);
            let e = put(home, Some(&s.name()), &long, limit).unwrap_err();
            assert!(matches!(e, PutError::TooLong { .. }), "{e}");
            let e = put(home, Some(&seg(4).name()), &data, limit).unwrap_err();
            assert!(matches!(e, PutError::Header { .. }), "{e}");
            assert!(e.to_string().contains("address"), "{e}");
        }
        assert!(!ServerRepo::new(home, "pg1").segment_path(&s).exists());
        assert!(matches!(
            put(home, Some(&s.name()), b"", 0),
            Err(PutError::Empty { .. })
        ));
        assert!(matches!(
            put(home, Some("../x"), &data, 0),
            Err(PutError::BadName { .. })
        ));
        // Named from the header when no name is given.
        let o = put(home, None, &data, IN_MEMORY_LIMIT).unwrap();
        assert_eq!(o.name, s.name());
        let mut altered = data.clone();
        altered[9000] ^= 1;
        for limit in [IN_MEMORY_LIMIT, 0] {
            let e = put(home, Some(&s.name()), &altered, limit).unwrap_err();
            assert!(
                e.is_bad_file() && e.to_string().contains("different content"),
                "{e}"
            );
        }
        // Both attempts carried the same content: one refused copy and its reason.
        let errors = ServerRepo::new(home, "pg1").errors_dir();
        assert_eq!(fs::read_dir(&errors).unwrap().count(), 2);
    }

    #[test]
    fn history_files_are_checked_and_backup_files_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let h = b"1\t0/3000000\tno recovery target specified\n";
        let o = put(home, Some("00000002.history"), h, 0).unwrap();
        assert_eq!((o.kind, o.status), ("history", PutStatus::Stored));
        assert_eq!(
            fs::read(ServerRepo::new(home, "pg1").history_path(TimeLineId(2))).unwrap(),
            h
        );
        let e = put(home, Some("00000004.history"), b"garbage here\n", 0).unwrap_err();
        assert!(matches!(e, PutError::Invalid { .. }), "{e}");
        // Refused files are kept for `check` to report.
        let errors = ServerRepo::new(home, "pg1").errors_dir();
        assert_eq!(fs::read_dir(&errors).unwrap().count(), 2);
        // A newer line forking before an older line's switch point is valid
        // (PostgreSQL 15.18 wrote this after a PITR to a restore point).
        let h3 = b"1\t0/3018CB0\tno recovery target specified\n\n2\t0/3018C48\tat restore point \"rp\"\n";
        let o = put(home, Some("00000003.history"), h3, 0).unwrap();
        assert_eq!((o.kind, o.status), ("history", PutStatus::Stored));
        let o = put(
            home,
            Some("000000010000000000000003.00000028.backup"),
            b"START WAL LOCATION: 0/3000028\n",
            0,
        )
        .unwrap();
        assert_eq!(o.status, PutStatus::Ignored);
    }
}
