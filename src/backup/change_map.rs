//! The change map of an incremental backup taken over SQL (PostgreSQL 15 and 16):
//! which blocks of which relations the WAL from the parent's start to the new
//! backup's start touched, read from the repository's own WAL archive.
//!
//! A block the map does not name is, on the server, what it was when the parent
//! started: every WAL-logged change to it would have named it. So the parent's
//! copy of it is the one the new backup needs, and WAL replay from the new
//! backup's start repairs whatever changes after.
//!
//! The main fork and the visibility map are mapped exactly. Clearing a
//! visibility map bit is never WAL-logged itself, but it only ever happens
//! with a logged change to the heap page it covers, so each changed heap block
//! also marks the map block covering it ([`HEAP_BLOCKS_PER_VM_BLOCK`]). The free
//! space map is not fully WAL-logged either: it is a hint PostgreSQL corrects as
//! it goes (as after a crash), so the parent's copy of a block the WAL does not
//! name is as good as any, and the fork is read whole when it was created,
//! truncated or dropped.
//!
//! What makes a whole fork unsafe to map block by block, PostgreSQL's WAL
//! summarizer's rules: a fork created (`XLOG_SMGR_CREATE`) or a relation dropped
//! (commit or abort) is read whole; a truncation marks every block of the main
//! fork from its new length on (the maps are read whole); a database created or
//! dropped marks all of its relations.
//!
//! Nothing here trusts a segment it cannot verify: a segment missing from the
//! repository, one whose content does not match its recorded checksum, or WAL
//! that does not decode makes [`build`] fail, and the backup reads everything.

use crate::error::IoResultExt;
use crate::repo::compress::parse_trailer;
use crate::repo::ServerRepo;
use crate::wal::block_refs::{Decoder, Fork, RelEvent, RelFileLocator};
use crate::wal::{Lsn, TimeLineId, WalSegment};
use std::collections::{HashMap, HashSet};
use std::io::Read;

/// Blocks per relation segment file (`RELSEG_SIZE` of a default build: 1 GiB of
/// 8 KiB blocks). The SQL path checks the server's `segment_size` first.
pub const RELSEG_BLOCKS: u32 = 131_072;

/// Blocks the map may hold before the SQL path gives up: past this much change
/// reading every file whole costs about the same, and memory stays bounded.
pub const MAX_BLOCKS: usize = 32 << 20;

/// Heap blocks one visibility map block covers: two bits per heap block in
/// what follows the page header (`HEAPBLOCKS_PER_PAGE` for 8 KiB pages).
pub const HEAP_BLOCKS_PER_VM_BLOCK: u32 = (8192 - 24) * 4;

/// What the WAL says about one relation fork.
#[derive(Debug, Default)]
struct RelChanges {
    /// Blocks named by block references (sorted and deduplicated by `finish`).
    blocks: Vec<u32>,
    /// The smallest length a truncation cut the fork to: every block from here on
    /// is read.
    limit: Option<u32>,
    /// Created, dropped or rewritten: read the whole fork.
    whole: bool,
}

/// Which blocks of the WAL range's relations changed.
#[derive(Debug, Default)]
pub struct ChangeMap {
    rels: HashMap<(RelFileLocator, Fork), RelChanges>,
    /// Databases created or dropped in the range (database oid).
    databases: HashSet<u32>,
    /// Block references counted (with repeats).
    refs: usize,
    /// Segments read.
    pub segments: u64,
    /// Records decoded in the range.
    pub records: u64,
}

/// What to read of one relation segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilePlan {
    /// Every block.
    Whole,
    /// These blocks (numbered within the file, ascending), and every block from
    /// `from` on when set.
    Blocks {
        changed: Vec<u32>,
        from: Option<u32>,
    },
}

impl ChangeMap {
    fn fork(&mut self, rel: RelFileLocator, fork: Fork) -> &mut RelChanges {
        self.rels.entry((rel, fork)).or_default()
    }

    fn add_record(&mut self, blocks: &[crate::wal::block_refs::BlockRef], events: &[RelEvent]) {
        for b in blocks {
            self.fork(b.rel, b.fork).blocks.push(b.block);
            self.refs += 1;
            if b.fork == Fork::Main {
                // The visibility map bits of a changed heap page may have been
                // cleared, unlogged.
                let vm = b.block / HEAP_BLOCKS_PER_VM_BLOCK;
                self.fork(b.rel, Fork::VisibilityMap).blocks.push(vm);
                self.refs += 1;
            }
        }
        for e in events {
            match e {
                RelEvent::Create { rel, fork } => self.fork(*rel, *fork).whole = true,
                RelEvent::Truncate { rel, blocks, forks } => {
                    if forks.main {
                        let r = self.fork(*rel, Fork::Main);
                        r.limit = Some(r.limit.map_or(*blocks, |l| l.min(*blocks)));
                    }
                    if forks.fsm {
                        self.fork(*rel, Fork::Fsm).whole = true;
                    }
                    if forks.vm {
                        self.fork(*rel, Fork::VisibilityMap).whole = true;
                    }
                }
                RelEvent::Drop { rel } => {
                    for f in [Fork::Main, Fork::Fsm, Fork::VisibilityMap, Fork::Init] {
                        self.fork(*rel, f).whole = true;
                    }
                }
                RelEvent::Database { db_oid } => {
                    self.databases.insert(*db_oid);
                }
            }
        }
    }

    /// Sorts and deduplicates the block lists (also to keep memory in check while
    /// the map grows).
    fn compact(&mut self) {
        let mut refs = 0;
        for r in self.rels.values_mut() {
            if r.whole {
                r.blocks = Vec::new();
                continue;
            }
            r.blocks.sort_unstable();
            r.blocks.dedup();
            refs += r.blocks.len();
        }
        self.refs = refs;
    }

    /// Distinct changed blocks the map holds.
    pub fn blocks(&self) -> usize {
        self.rels.values().map(|r| r.blocks.len()).sum()
    }

    /// What to read of segment file `segno` of fork `fork` of relation `rel`.
    pub fn plan(&self, rel: RelFileLocator, fork: Fork, segno: u32) -> FilePlan {
        if self.databases.contains(&rel.db_oid) || fork == Fork::Init {
            return FilePlan::Whole;
        }
        let Some(r) = self.rels.get(&(rel, fork)) else {
            return FilePlan::Blocks {
                changed: Vec::new(),
                from: None,
            };
        };
        if r.whole {
            return FilePlan::Whole;
        }
        let first = u64::from(segno) * u64::from(RELSEG_BLOCKS);
        let end = first + u64::from(RELSEG_BLOCKS);
        let from = r.limit.and_then(|l| {
            let l = u64::from(l);
            (l < end).then(|| l.saturating_sub(first) as u32)
        });
        if from == Some(0) {
            return FilePlan::Whole;
        }
        let lo = r.blocks.partition_point(|&b| u64::from(b) < first);
        let hi = r.blocks.partition_point(|&b| u64::from(b) < end);
        let changed = r.blocks[lo..hi]
            .iter()
            .map(|&b| (u64::from(b) - first) as u32)
            .filter(|&b| from.is_none_or(|f| b < f))
            .collect();
        FilePlan::Blocks { changed, from }
    }
}

/// Why the WAL of the range cannot give a change map.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(pub String);

/// Builds a change map segment by segment, in two stages: the segments already
/// in the repository while the new backup's checkpoint runs
/// ([`Builder::read_stored`], on another thread), then the rest up to the new
/// backup's start ([`Builder::finish`]).
pub struct Builder {
    map: ChangeMap,
    decoder: Decoder,
    tli: TimeLineId,
    from: Lsn,
    seg_size: u64,
    /// The next segment to read.
    next: u64,
}

impl Builder {
    /// A map of the WAL of timeline `tli` from `from` (the parent's start) on.
    pub fn new(tli: TimeLineId, from: Lsn, seg_size: u64) -> Builder {
        Builder {
            map: ChangeMap::default(),
            decoder: Decoder::new(),
            tli,
            from,
            seg_size,
            next: from.segno(seg_size),
        }
    }

    fn segment(&self, segno: u64) -> WalSegment {
        WalSegment {
            tli: self.tli,
            segno,
            seg_size: self.seg_size,
        }
    }

    /// Decodes one verified segment into the map; records from `to` on are
    /// left out when it is known.
    fn add(&mut self, seg: &WalSegment, data: &[u8], to: Option<Lsn>) -> Result<(), Untrusted> {
        let records = self
            .decoder
            .feed_bytes(seg, data)
            .map_err(|e| Untrusted(format!("segment {}: {e}", seg.name())))?;
        self.map.segments += 1;
        self.next = seg.segno + 1;
        for rec in records {
            if rec.end <= self.from || to.is_some_and(|t| rec.lsn >= t) {
                continue;
            }
            self.map.records += 1;
            self.map.add_record(&rec.blocks, &rec.events);
        }
        if self.map.refs > MAX_BLOCKS {
            self.map.compact();
            if self.map.refs > MAX_BLOCKS {
                return Err(Untrusted(format!(
                    "more than {MAX_BLOCKS} blocks changed since the parent: reading only changed blocks would not pay"
                )));
            }
        }
        Ok(())
    }

    /// Reads the segments already in the repository, in order, until one is not
    /// there yet (or carries no checksum of its own: [`Builder::finish`] checks
    /// it against the catalog).
    pub fn read_stored(&mut self, repo: &ServerRepo) -> Result<(), Untrusted> {
        loop {
            let seg = self.segment(self.next);
            let fetched = match fetch_segment(repo, &seg) {
                Ok(f) => f,
                Err(Fetch::Missing(_)) => return Ok(()),
                Err(Fetch::Failed(e)) => return Err(e),
            };
            let Some(recorded) = fetched.recorded.clone() else {
                return Ok(());
            };
            let data = check(fetched, recorded)?;
            self.add(&seg, &data, None)?;
        }
    }

    /// Reads the rest of the WAL up to `to` (the new backup's start, whose
    /// segment must be complete in the repository) and returns the map.
    pub fn finish(
        mut self,
        repo: &ServerRepo,
        catalog: &crate::catalog::Catalog,
        to: Lsn,
    ) -> Result<ChangeMap, Untrusted> {
        if to < self.from {
            return Err(Untrusted(format!(
                "the new backup starts at {to}, before its parent ({})",
                self.from
            )));
        }
        let last = to.segno(self.seg_size);
        let segments: Vec<WalSegment> = (self.next..=last).map(|n| self.segment(n)).collect();
        // Two segments are read ahead on another thread while one is decoded.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(WalSegment, Fetched), Untrusted>>(2);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for seg in segments {
                    let r = fetch_segment(repo, &seg)
                        .map(|d| (seg, d))
                        .map_err(Fetch::into_untrusted);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
            for got in rx {
                let (seg, fetched) = got?;
                let data = verified(repo, catalog, &seg, fetched)?;
                self.add(&seg, &data, Some(to))?;
            }
            Ok::<(), Untrusted>(())
        })?;
        if self.next != last + 1 {
            return Err(Untrusted("the WAL could not be read to its end".into()));
        }
        self.map.compact();
        Ok(self.map)
    }
}

/// Why a segment could not be fetched.
enum Fetch {
    /// Not in the repository.
    Missing(Untrusted),
    Failed(Untrusted),
}

impl Fetch {
    fn into_untrusted(self) -> Untrusted {
        match self {
            Fetch::Missing(e) | Fetch::Failed(e) => e,
        }
    }
}

/// One archived segment, decompressed, with what was recorded for it.
struct Fetched {
    data: Vec<u8>,
    /// Length and BLAKE3 of the decompressed content.
    size: u64,
    sum: String,
    /// The object's trailer, when it has one.
    recorded: Option<crate::repo::compress::Recorded>,
    what: String,
}

fn fetch_segment(repo: &ServerRepo, seg: &WalSegment) -> Result<Fetched, Fetch> {
    let name = seg.name();
    let key = repo.segment_key(seg);
    let what = repo.store().describe(&key);
    let mut object = match repo.store().get(&key) {
        Ok(r) => r,
        Err(e) if e.is_not_found() => {
            return Err(Fetch::Missing(Untrusted(format!(
                "WAL segment {name} is not in the repository"
            ))))
        }
        Err(e) => return Err(Fetch::Failed(Untrusted(format!("reading {what}: {e}")))),
    };
    let mut raw = Vec::new();
    object
        .read_to_end(&mut raw)
        .at(&what)
        .map_err(|e| Fetch::Failed(Untrusted(e.to_string())))?;
    let mut data = Vec::with_capacity(seg.seg_size as usize);
    let (size, sum) = crate::repo::compress::decompress_reader_to(&raw[..], &mut data)
        .map_err(|e| Fetch::Failed(Untrusted(format!("{what} does not decompress: {e}"))))?;
    Ok(Fetched {
        data,
        size,
        sum,
        recorded: parse_trailer(&raw),
        what,
    })
}

/// The segment's content, checked against the checksum recorded with it (its
/// trailer, else the catalog's row).
fn verified(
    repo: &ServerRepo,
    catalog: &crate::catalog::Catalog,
    seg: &WalSegment,
    f: Fetched,
) -> Result<Vec<u8>, Untrusted> {
    let recorded = match f.recorded.clone() {
        Some(r) => r,
        None => match catalog.wal_file(repo.server(), &seg.name()) {
            Ok(Some(rec)) => crate::repo::compress::Recorded {
                size: rec.size,
                checksum: rec.checksum,
            },
            _ => {
                return Err(Untrusted(format!(
                    "{} carries no checksum and the catalog has none",
                    f.what
                )))
            }
        },
    };
    check(f, recorded)
}

/// The segment's content if it matches what was recorded for it.
fn check(f: Fetched, recorded: crate::repo::compress::Recorded) -> Result<Vec<u8>, Untrusted> {
    if f.size != recorded.size || !f.sum.eq_ignore_ascii_case(&recorded.checksum) {
        return Err(Untrusted(format!(
            "{} is damaged: its content does not match its recorded checksum",
            f.what
        )));
    }
    Ok(f.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::block_refs::{BlockRef, TruncatedForks};

    fn rel(n: u32) -> RelFileLocator {
        RelFileLocator {
            spc_oid: 1663,
            db_oid: 5,
            rel_number: n,
        }
    }

    fn block(r: u32, fork: Fork, b: u32) -> BlockRef {
        BlockRef {
            id: 0,
            rel: rel(r),
            fork,
            block: b,
            has_image: false,
            will_init: false,
        }
    }

    #[test]
    fn plans_follow_references_truncations_and_creations() {
        let mut m = ChangeMap::default();
        m.add_record(
            &[
                block(1, Fork::Main, 7),
                block(1, Fork::Main, 3),
                block(1, Fork::Main, 7),
                block(1, Fork::Main, RELSEG_BLOCKS + 2),
                block(1, Fork::VisibilityMap, 0),
            ],
            &[],
        );
        m.add_record(
            &[],
            &[RelEvent::Truncate {
                rel: rel(2),
                blocks: 10,
                forks: TruncatedForks {
                    main: true,
                    fsm: true,
                    vm: true,
                },
            }],
        );
        m.add_record(&[block(2, Fork::Main, 4), block(2, Fork::Main, 12)], &[]);
        m.add_record(
            &[block(3, Fork::Main, 1)],
            &[RelEvent::Create {
                rel: rel(3),
                fork: Fork::Main,
            }],
        );
        m.compact();
        assert_eq!(
            m.plan(rel(1), Fork::Main, 0),
            FilePlan::Blocks {
                changed: vec![3, 7],
                from: None
            }
        );
        assert_eq!(
            m.plan(rel(1), Fork::Main, 1),
            FilePlan::Blocks {
                changed: vec![2],
                from: None
            }
        );
        // Blocks past a truncation are read whatever the references say.
        assert_eq!(
            m.plan(rel(2), Fork::Main, 0),
            FilePlan::Blocks {
                changed: vec![4],
                from: Some(10)
            }
        );
        assert_eq!(m.plan(rel(3), Fork::Main, 0), FilePlan::Whole);
        assert_eq!(
            m.plan(rel(9), Fork::Main, 0),
            FilePlan::Blocks {
                changed: vec![],
                from: None
            }
        );
        // A changed heap block marks the visibility map block covering it; the
        // maps of a truncated relation are read whole.
        assert_eq!(
            m.plan(rel(1), Fork::VisibilityMap, 0),
            FilePlan::Blocks {
                changed: vec![0, 4],
                from: None
            }
        );
        assert_eq!(m.plan(rel(2), Fork::VisibilityMap, 0), FilePlan::Whole);
        assert_eq!(m.plan(rel(2), Fork::Fsm, 0), FilePlan::Whole);
        assert_eq!(
            m.plan(rel(1), Fork::Fsm, 0),
            FilePlan::Blocks {
                changed: vec![],
                from: None
            }
        );
        assert_eq!(m.plan(rel(1), Fork::Init, 0), FilePlan::Whole);
        m.add_record(&[], &[RelEvent::Database { db_oid: 5 }]);
        assert_eq!(m.plan(rel(9), Fork::Main, 0), FilePlan::Whole);
    }
}
