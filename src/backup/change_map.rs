//! The change map of an incremental backup taken over SQL (PostgreSQL 15 and 16):
//! which blocks of which relations the WAL from the parent's start to the new
//! backup's start touched, read from the repository's own WAL archive.
//!
//! A block the map does not name is, on the server, what it was when the parent
//! started: every WAL-logged change to it would have named it. So the parent's
//! copy of it is the one the new backup needs, and WAL replay from the new
//! backup's start repairs whatever changes after. Only the main fork is mapped:
//! the free space map is not fully WAL-logged and clearing visibility map bits
//! is not logged at all, so the caller reads those forks (and init forks) whole,
//! as PostgreSQL 17's own incremental does for the first.
//!
//! What makes a whole relation unsafe to map block by block, PostgreSQL's WAL
//! summarizer's rules: a fork created (`XLOG_SMGR_CREATE`) or a relation dropped
//! (commit or abort) is read whole; a truncation marks every block from its new
//! length on; a database created or dropped marks all of its relations.
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

/// What the WAL says about one relation's main fork.
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
    rels: HashMap<RelFileLocator, RelChanges>,
    /// Databases created or dropped in the range (database oid).
    databases: HashSet<u32>,
    /// Block references counted (with repeats).
    refs: usize,
    /// Segments read.
    pub segments: u64,
    /// Records decoded in the range.
    pub records: u64,
}

/// What to read of one relation segment file of the main fork.
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
    fn rel(&mut self, rel: RelFileLocator) -> &mut RelChanges {
        self.rels.entry(rel).or_default()
    }

    fn add_record(&mut self, blocks: &[crate::wal::block_refs::BlockRef], events: &[RelEvent]) {
        for b in blocks {
            if b.fork == Fork::Main {
                self.rel(b.rel).blocks.push(b.block);
                self.refs += 1;
            }
        }
        for e in events {
            match e {
                RelEvent::Create { rel, fork } if *fork == Fork::Main => {
                    self.rel(*rel).whole = true
                }
                RelEvent::Create { .. } => {}
                RelEvent::Truncate { rel, blocks, forks } if forks.main => {
                    let r = self.rel(*rel);
                    r.limit = Some(r.limit.map_or(*blocks, |l| l.min(*blocks)));
                }
                RelEvent::Truncate { .. } => {}
                RelEvent::Drop { rel } => self.rel(*rel).whole = true,
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

    /// What to read of segment file `segno` of relation `rel`'s main fork.
    pub fn plan(&self, rel: RelFileLocator, segno: u32) -> FilePlan {
        if self.databases.contains(&rel.db_oid) {
            return FilePlan::Whole;
        }
        let Some(r) = self.rels.get(&rel) else {
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

/// Reads the WAL of timeline `tli` from `from` (the parent's start) to `to` (the
/// new backup's start) out of the repository and builds the change map. The
/// segment holding `to` must be complete in the repository.
pub fn build(
    repo: &ServerRepo,
    catalog: &crate::catalog::Catalog,
    tli: TimeLineId,
    from: Lsn,
    to: Lsn,
    seg_size: u64,
) -> Result<ChangeMap, Untrusted> {
    if to < from {
        return Err(Untrusted(format!(
            "the new backup starts at {to}, before its parent ({from})"
        )));
    }
    let mut map = ChangeMap::default();
    let mut decoder = Decoder::new();
    let first = from.segno(seg_size);
    let last = to.segno(seg_size);
    // Two segments are read ahead on another thread while one is decoded.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(WalSegment, Fetched), Untrusted>>(2);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for segno in first..=last {
                let seg = WalSegment {
                    tli,
                    segno,
                    seg_size,
                };
                let r = fetch_segment(repo, &seg).map(|d| (seg, d));
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        for got in rx {
            let (seg, fetched) = got?;
            let data = verified(repo, catalog, &seg, fetched)?;
            let records = decoder
                .feed_bytes(&seg, &data)
                .map_err(|e| Untrusted(format!("segment {}: {e}", seg.name())))?;
            map.segments += 1;
            for rec in records {
                if rec.end <= from || rec.lsn >= to {
                    continue;
                }
                map.records += 1;
                map.add_record(&rec.blocks, &rec.events);
            }
            if map.refs > MAX_BLOCKS {
                map.compact();
                if map.refs > MAX_BLOCKS {
                    return Err(Untrusted(format!(
                        "more than {MAX_BLOCKS} blocks changed since the parent: reading only changed blocks would not pay"
                    )));
                }
            }
        }
        Ok(())
    })?;
    if map.segments != last - first + 1 {
        return Err(Untrusted("the WAL could not be read to its end".into()));
    }
    map.compact();
    Ok(map)
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

fn fetch_segment(repo: &ServerRepo, seg: &WalSegment) -> Result<Fetched, Untrusted> {
    let name = seg.name();
    let key = repo.segment_key(seg);
    let what = repo.store().describe(&key);
    let mut object = match repo.store().get(&key) {
        Ok(r) => r,
        Err(e) if e.is_not_found() => {
            return Err(Untrusted(format!(
                "WAL segment {name} is not in the repository"
            )))
        }
        Err(e) => return Err(Untrusted(format!("reading {what}: {e}"))),
    };
    let mut raw = Vec::new();
    object
        .read_to_end(&mut raw)
        .at(&what)
        .map_err(|e| Untrusted(e.to_string()))?;
    let mut data = Vec::with_capacity(seg.seg_size as usize);
    let (size, sum) = crate::repo::compress::decompress_reader_to(&raw[..], &mut data)
        .map_err(|e| Untrusted(format!("{what} does not decompress: {e}")))?;
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
    let recorded = match f.recorded {
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
            m.plan(rel(1), 0),
            FilePlan::Blocks {
                changed: vec![3, 7],
                from: None
            }
        );
        assert_eq!(
            m.plan(rel(1), 1),
            FilePlan::Blocks {
                changed: vec![2],
                from: None
            }
        );
        // Blocks past a truncation are read whatever the references say.
        assert_eq!(
            m.plan(rel(2), 0),
            FilePlan::Blocks {
                changed: vec![4],
                from: Some(10)
            }
        );
        assert_eq!(m.plan(rel(3), 0), FilePlan::Whole);
        assert_eq!(
            m.plan(rel(9), 0),
            FilePlan::Blocks {
                changed: vec![],
                from: None
            }
        );
        m.add_record(&[], &[RelEvent::Database { db_oid: 5 }]);
        assert_eq!(m.plan(rel(9), 0), FilePlan::Whole);
        assert_eq!(m.blocks(), 5);
    }
}
