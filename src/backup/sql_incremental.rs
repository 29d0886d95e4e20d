//! Incremental backups of PostgreSQL 15 and 16 that read only what changed: the
//! change map from the repository's WAL ([`super::change_map`]) says which
//! blocks of which relation files changed since the parent started, and an SQL
//! session ([`super::sql_read`]) reads those blocks, plus every other file
//! whole, between `pg_backup_start` and `pg_backup_stop`.
//!
//! What it reads becomes the same stream a BASE_BACKUP would have sent, so the
//! tar store stores it with the same code: a relation file of the parent's map
//! goes in as the `INCREMENTAL.*` file of the blocks that differ from the
//! parent's, with its whole block map supplied beside it ([`BlockDiff::supplied`]);
//! anything read whole (new relation files, forks created, truncated or dropped
//! since the parent, init forks, files that are not relation files) goes in
//! whole and the store compares it.
//! The backup is restored like any block-map incremental.
//!
//! When the SQL path cannot be trusted or used ([`prepare`]'s refusal), the
//! caller streams the backup instead: nothing has been stored by then.
//!
//! [`BlockDiff::supplied`]: super::block_map::BlockDiff::supplied

use super::block_map::{self, block_hash, BlockHash, ParentMap, Patch, Supplied, BLCKSZ};
use super::change_map::{self, ChangeMap, FilePlan, RELSEG_BLOCKS};
use super::sql_read::{Listed, Range, SqlSource, Stopped};
use super::tar_store::StreamMsg;
use crate::catalog::Catalog;
use crate::progress::Progress;
use crate::repo::ServerRepo;
use crate::wal::block_refs::{Fork, RelFileLocator};
use crate::wal::{Lsn, TimeLineId, WalSegment};
use bytes::Bytes;
use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long the segment holding the backup's start may take to reach the
/// repository before the SQL path gives up.
pub const START_WAL_WAIT: Duration = Duration::from_secs(60);
/// Bytes asked for per range.
const RANGE_BYTES: u64 = 1 << 20;
/// Bytes and ranges asked for per statement.
const BATCH_BYTES: u64 = 8 << 20;
const BATCH_RANGES: usize = 2048;
/// Files up to this size are read many to a statement.
const SMALL_FILE: u64 = 1 << 20;
/// Stream data handed to the store in pieces of about this size.
const EMIT_BYTES: usize = 1 << 20;

/// A session that started the backup and a change map to read it with.
pub struct Prepared {
    source: SqlSource,
    map: ChangeMap,
    /// The backup's start LSN (its checkpoint's redo point).
    pub start: Lsn,
}

impl Prepared {
    /// A line on the map, for the log.
    pub fn describe(&self) -> String {
        format!(
            "{} changed blocks in {} WAL records ({} segments)",
            self.map.blocks(),
            self.map.records,
            self.map.segments
        )
    }
}

/// What [`prepare`] needs to know.
pub struct Context<'a> {
    pub repo: &'a ServerRepo,
    pub catalog: &'a Catalog,
    /// The parent's start.
    pub parent_start: Lsn,
    /// The parent's timeline, which must be the server's.
    pub parent_timeline: TimeLineId,
    pub timeline: TimeLineId,
    pub seg_size: u64,
    pub label: String,
    pub fast_checkpoint: bool,
}

/// Starts the backup over `sql` and builds its change map; on refusal (the
/// reason) the session is closed, which also aborts the server's backup.
pub async fn prepare(
    conn: crate::pg::Connection,
    ctx: &Context<'_>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Prepared, String> {
    let mut source = SqlSource::new(conn);
    match prepare_on(&mut source, ctx, stop).await {
        Ok((start, map)) => Ok(Prepared { source, map, start }),
        Err(why) => {
            source.close().await;
            Err(why)
        }
    }
}

async fn prepare_on(
    source: &mut SqlSource,
    ctx: &Context<'_>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(Lsn, ChangeMap), String> {
    if ctx.parent_timeline != ctx.timeline {
        return Err(format!(
            "the parent started on timeline {}, the server is on {}",
            ctx.parent_timeline, ctx.timeline
        ));
    }
    if let Some(why) = source.unfit().await.map_err(|e| e.to_string())? {
        return Err(why);
    }
    // The WAL already stored is decoded while the checkpoint runs.
    let early = {
        let repo = ctx.repo.clone();
        let mut b = change_map::Builder::new(ctx.timeline, ctx.parent_start, ctx.seg_size);
        std::thread::spawn(move || b.read_stored(&repo).map(|_| b))
    };
    let started = source.start(&ctx.label, ctx.fast_checkpoint).await;
    let builder = early
        .join()
        .map_err(|_| "the WAL reader thread panicked".to_string())?
        .map_err(|e| {
            format!(
                "the WAL from {} on cannot be trusted: {e}",
                ctx.parent_start
            )
        })?;
    let start = started.map_err(|e| format!("pg_backup_start: {e}"))?;
    source
        .switch_wal()
        .await
        .map_err(|e| format!("pg_switch_wal: {e}"))?;
    tracing::debug!("pg_backup_start: {start}; waiting for its WAL segment in the repository");
    let seg = WalSegment::containing(ctx.timeline, start, ctx.seg_size);
    let key = ctx.repo.segment_key(&seg);
    let deadline = Instant::now() + START_WAL_WAIT;
    loop {
        match ctx.repo.store().stat(&key) {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => return Err(format!("looking for WAL segment {}: {e}", seg.name())),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "WAL segment {} (the backup's start) did not reach the repository within {} s",
                seg.name(),
                START_WAL_WAIT.as_secs()
            ));
        }
        if *stop.borrow() {
            return Err("interrupted".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::debug!("WAL segment {} stored; building the change map", seg.name());
    let (repo, catalog) = (ctx.repo, ctx.catalog);
    // Blocking, on purpose: the session waits, nothing else runs meanwhile.
    let map = builder.finish(repo, catalog, start).map_err(|e| {
        format!(
            "the WAL from {} to {start} cannot be trusted: {e}",
            ctx.parent_start
        )
    })?;
    Ok((start, map))
}

/// What the read produced.
pub struct SqlRead {
    pub stopped: Stopped,
    /// The tablespaces read (`<oid>.tar` archives).
    pub tablespaces: Vec<super::sql_read::Tablespace>,
    /// Bytes of file content read from the server.
    pub read_bytes: u64,
}

/// Why the read stopped.
pub enum ReadFailure {
    /// The store stopped taking data: its own error says why.
    StoreGone,
    Reason(String),
}

/// The stream being built: tar bytes gathered and handed on in pieces.
struct Emitter<'a> {
    buf: Vec<u8>,
    tx: &'a tokio::sync::mpsc::Sender<StreamMsg>,
}

impl Emitter<'_> {
    async fn send(&mut self, msg: StreamMsg) -> Result<(), ReadFailure> {
        self.tx.send(msg).await.map_err(|_| ReadFailure::StoreGone)
    }

    async fn flush(&mut self, all: bool) -> Result<(), ReadFailure> {
        if self.buf.is_empty() || (!all && self.buf.len() < EMIT_BYTES) {
            return Ok(());
        }
        let data = Bytes::from(std::mem::take(&mut self.buf));
        self.send(StreamMsg::Data(data)).await
    }

    fn header(&mut self, path: &str, kind: tar::EntryType, size: u64, mtime: i64) {
        let mode = if kind == tar::EntryType::Directory {
            0o700
        } else {
            0o600
        };
        let fill = |h: &mut tar::Header, size: u64, kind| {
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(mtime.max(0) as u64);
            h.set_uid(0);
            h.set_gid(0);
        };
        let mut h = tar::Header::new_gnu();
        if path.len() > 99 {
            // GNU long name: the name as the data of an 'L' entry first.
            let mut l = tar::Header::new_gnu();
            fill(&mut l, path.len() as u64 + 1, tar::EntryType::GNULongName);
            l.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            l.set_cksum();
            self.buf.extend_from_slice(l.as_bytes());
            self.buf.extend_from_slice(path.as_bytes());
            self.buf.push(0);
            self.pad(path.len() as u64 + 1);
            h.as_old_mut().name[..99].copy_from_slice(&path.as_bytes()[..99]);
        } else {
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        }
        fill(&mut h, size, kind);
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
    }

    /// A symbolic link member (a tablespace's `pg_tblspc/<oid>`).
    fn link(&mut self, path: &str, target: &str, mtime: i64) -> Result<(), ReadFailure> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(mtime.max(0) as u64);
        h.set_path(path)
            .and_then(|_| h.set_link_name(target))
            .map_err(|e| ReadFailure::Reason(format!("tablespace link {path} -> {target}: {e}")))?;
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        Ok(())
    }

    /// Zeros up to the next 512-byte boundary after `size` bytes of data.
    fn pad(&mut self, size: u64) {
        let rest = (512 - size % 512) % 512;
        self.buf.resize(self.buf.len() + rest as usize, 0);
    }

    async fn member(&mut self, path: &str, data: &[u8], mtime: i64) -> Result<(), ReadFailure> {
        self.header(path, tar::EntryType::Regular, data.len() as u64, mtime);
        self.buf.extend_from_slice(data);
        self.pad(data.len() as u64);
        self.flush(false).await
    }
}

/// What to do with one entry of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Take {
    Skip,
    Dir,
    /// Every byte.
    Whole,
    /// A segment file of a main, FSM or visibility map fork the parent's map
    /// has: the change map decides.
    Mapped {
        rel: RelFileLocator,
        fork: Fork,
        segno: u32,
    },
}

/// The relation, fork suffix and segment of a relation file path (relative to
/// the data directory, or to tablespace `tablespace`).
fn relation_of(path: &str, tablespace: Option<u32>) -> Option<(RelFileLocator, &str, u32)> {
    let parts: Vec<&str> = path.split('/').collect();
    let (spc, db, name) = match (tablespace, parts.as_slice()) {
        (None, ["base", db, name]) => (1663, db.parse().ok()?, *name),
        (None, ["global", name]) => (1664, 0, *name),
        (Some(oid), [_, db, name]) => (oid, db.parse().ok()?, *name),
        _ => return None,
    };
    let (rel, seg) = match name.split_once('.') {
        Some((r, s)) => (r, s.parse().ok()?),
        None => (name, 0),
    };
    let (number, fork) = match rel.split_once('_') {
        Some((n, f)) => (n, f),
        None => (rel, ""),
    };
    Some((
        RelFileLocator {
            spc_oid: spc,
            db_oid: db,
            rel_number: number.parse().ok()?,
        },
        fork,
        seg,
    ))
}

/// Decides what to take of every listed entry.
fn classify(listing: &[Listed], tablespace: Option<u32>, parent: &ParentMap) -> Vec<Take> {
    // Unlogged relations: only their init fork is taken.
    let unlogged: HashSet<(String, u32)> = listing
        .iter()
        .filter(|l| !l.is_dir)
        .filter_map(|l| {
            let (rel, fork, _) = relation_of(&l.path, tablespace)?;
            let dir = l.path.rsplit_once('/')?.0.to_string();
            (fork == "init").then_some((dir, rel.rel_number))
        })
        .collect();
    listing
        .iter()
        .map(|l| {
            if super::exclude::excluded(&l.path, tablespace.is_some()) {
                return Take::Skip;
            }
            if l.is_dir {
                return Take::Dir;
            }
            if !block_map::is_relation_file(&l.path, tablespace) {
                return Take::Whole;
            }
            let Some((rel, fork, segno)) = relation_of(&l.path, tablespace) else {
                return Take::Whole;
            };
            let dir = l.path.rsplit_once('/').map(|d| d.0).unwrap_or("");
            if fork != "init" && unlogged.contains(&(dir.to_string(), rel.rel_number)) {
                return Take::Skip;
            }
            let fork = match fork {
                "" => Fork::Main,
                "fsm" => Fork::Fsm,
                "vm" => Fork::VisibilityMap,
                _ => return Take::Whole,
            };
            if l.size % BLCKSZ as u64 != 0 || segno >= u32::MAX / RELSEG_BLOCKS {
                return Take::Whole;
            }
            if parent.contains(tablespace, &l.path) {
                Take::Mapped { rel, fork, segno }
            } else {
                Take::Whole
            }
        })
        .collect()
}

/// The failure of a read of `path`.
fn failed(path: &str) -> impl Fn(super::sql_read::ReadError) -> ReadFailure + '_ {
    move |e| ReadFailure::Reason(format!("reading {path} over SQL: {e}"))
}

/// What a queued entry is.
enum Entry {
    Dir,
    File,
    /// A symbolic link to this target.
    Link(String),
}

/// Small files and directories waiting for one statement to read the files.
#[derive(Default)]
struct Pending {
    entries: Vec<(Listed, Entry)>,
    ranges: Vec<Range>,
    bytes: u64,
}

/// Reads the data directory into `tx` as `base.tar`, ends the backup, and adds
/// `backup_label`.
#[allow(clippy::too_many_arguments)]
pub async fn read(
    prepared: Prepared,
    parent: Arc<ParentMap>,
    supplied: Arc<Supplied>,
    scratch: PathBuf,
    backup_id: &str,
    progress: &dyn Progress,
    tx: tokio::sync::mpsc::Sender<StreamMsg>,
    stop: &mut watch::Receiver<bool>,
) -> Result<SqlRead, ReadFailure> {
    let Prepared {
        mut source, map, ..
    } = prepared;
    let r = read_all(
        &mut source,
        &map,
        &parent,
        &supplied,
        &scratch,
        backup_id,
        progress,
        &tx,
        stop,
    )
    .await;
    let read_bytes = source.read_bytes;
    source.close().await;
    r.map(|(stopped, tablespaces)| SqlRead {
        stopped,
        read_bytes,
        tablespaces,
    })
}

/// What every file of one archive is read with.
struct Reading<'a> {
    map: &'a ChangeMap,
    parent: &'a ParentMap,
    supplied: &'a Supplied,
    scratch: &'a std::path::Path,
}

/// One archive: the data directory (`base.tar`) or a tablespace (`<oid>.tar`).
struct Archive<'a> {
    /// Where its paths are under the data directory (`pg_tblspc/<oid>/`, or "").
    prefix: String,
    tablespace: Option<u32>,
    listing: Vec<Listed>,
    takes: Vec<Take>,
    /// Symbolic links `pg_tblspc/<oid>` to add after the `pg_tblspc` directory.
    links: &'a [super::sql_read::Tablespace],
}

#[allow(clippy::too_many_arguments)]
async fn read_all(
    source: &mut SqlSource,
    map: &ChangeMap,
    parent: &ParentMap,
    supplied: &Supplied,
    scratch: &std::path::Path,
    backup_id: &str,
    progress: &dyn Progress,
    tx: &tokio::sync::mpsc::Sender<StreamMsg>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(Stopped, Vec<super::sql_read::Tablespace>), ReadFailure> {
    let listing_failed =
        |e: crate::pg::PgError| ReadFailure::Reason(format!("listing the data directory: {e}"));
    let tablespaces = source.tablespaces().await.map_err(listing_failed)?;
    let mut archives = Vec::new();
    for ts in &tablespaces {
        let listing = source.list_tablespace(ts).await.map_err(listing_failed)?;
        archives.push(Archive {
            prefix: format!("pg_tblspc/{}/", ts.oid),
            tablespace: Some(ts.oid),
            takes: classify(&listing, Some(ts.oid), parent),
            listing,
            links: &[],
        });
    }
    let listing = source.list().await.map_err(listing_failed)?;
    tracing::debug!("listed {} entries of the data directory", listing.len());
    archives.push(Archive {
        prefix: String::new(),
        tablespace: None,
        takes: classify(&listing, None, parent),
        listing,
        links: &tablespaces,
    });
    let total: u64 = archives
        .iter()
        .flat_map(|a| a.listing.iter().zip(&a.takes))
        .filter(|(_, t)| !matches!(t, Take::Skip | Take::Dir))
        .map(|(l, _)| l.size)
        .sum();
    progress.start(&format!("backup {backup_id}"), Some(total));
    let mut out = Emitter {
        buf: Vec::with_capacity(2 * EMIT_BYTES),
        tx,
    };
    let reading = Reading {
        map,
        parent,
        supplied,
        scratch,
    };
    let mut control = None;
    for a in &archives {
        let (name, location) = match a.tablespace {
            Some(oid) => (
                format!("{oid}.tar"),
                tablespaces
                    .iter()
                    .find(|t| t.oid == oid)
                    .map(|t| t.location.clone())
                    .unwrap_or_default(),
            ),
            None => ("base.tar".to_string(), String::new()),
        };
        out.send(StreamMsg::Archive { name, location }).await?;
        read_archive(source, &reading, a, &mut out, &mut control, stop).await?;
        if a.tablespace.is_some() {
            end_archive(&mut out).await?;
        }
    }
    // pg_control last, as PostgreSQL's base backup sends it.
    if let Some(l) = control {
        read_whole(source, &l, "", &mut out).await?;
    }
    tracing::debug!("every file read; pg_backup_stop");
    let stopped = source
        .stop()
        .await
        .map_err(|e| ReadFailure::Reason(format!("pg_backup_stop: {e}")))?;
    let now = chrono::Utc::now().timestamp();
    // No tablespace_map: the links are in the archive, as BASE_BACKUP sends
    // them, so a restore may put the tablespaces elsewhere.
    out.member("backup_label", stopped.label.as_bytes(), now)
        .await?;
    end_archive(&mut out).await?;
    out.send(StreamMsg::End).await?;
    Ok((stopped, tablespaces))
}

/// The end of an archive: two zero blocks, and everything handed on.
async fn end_archive(out: &mut Emitter<'_>) -> Result<(), ReadFailure> {
    out.buf.resize(out.buf.len() + 1024, 0);
    out.flush(true).await
}

/// Reads every entry of one archive's listing into the stream (but the data
/// directory's `global/pg_control`, kept in `control` for the end).
async fn read_archive(
    source: &mut SqlSource,
    r: &Reading<'_>,
    a: &Archive<'_>,
    out: &mut Emitter<'_>,
    control: &mut Option<Listed>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ReadFailure> {
    let mut pending = Pending::default();
    for (l, take) in a.listing.iter().zip(&a.takes) {
        if *stop.borrow() {
            return Err(ReadFailure::Reason("interrupted".into()));
        }
        match *take {
            Take::Skip => {}
            Take::Dir => {
                pending.entries.push((l.clone(), Entry::Dir));
                if a.tablespace.is_none() && l.path == "pg_wal" {
                    let status = Listed {
                        path: "pg_wal/archive_status".into(),
                        ..l.clone()
                    };
                    pending.entries.push((status, Entry::Dir));
                }
                if a.tablespace.is_none() && l.path == "pg_tblspc" {
                    for t in a.links {
                        let link = Listed {
                            path: format!("pg_tblspc/{}", t.oid),
                            ..l.clone()
                        };
                        pending
                            .entries
                            .push((link, Entry::Link(t.location.clone())));
                    }
                }
            }
            Take::Whole if a.tablespace.is_none() && l.path == "global/pg_control" => {
                *control = Some(l.clone())
            }
            Take::Whole if l.size <= SMALL_FILE => {
                if l.size > 0 {
                    pending.ranges.push(Range {
                        path: format!("{}{}", a.prefix, l.path),
                        offset: 0,
                        len: l.size,
                    });
                }
                pending.bytes += l.size;
                pending.entries.push((l.clone(), Entry::File));
                if pending.bytes >= BATCH_BYTES || pending.ranges.len() >= BATCH_RANGES {
                    flush_pending(source, &mut pending, out).await?;
                }
            }
            Take::Whole => {
                flush_pending(source, &mut pending, out).await?;
                read_whole(source, l, &a.prefix, out).await?;
            }
            Take::Mapped { rel, fork, segno } => {
                flush_pending(source, &mut pending, out).await?;
                match r.map.plan(rel, fork, segno) {
                    FilePlan::Whole => read_whole(source, l, &a.prefix, out).await?,
                    FilePlan::Blocks { changed, from } => {
                        let file = Mapped {
                            listed: l,
                            prefix: &a.prefix,
                            tablespace: a.tablespace,
                        };
                        read_changed(source, r, &file, &changed, from, out).await?;
                    }
                }
            }
        }
    }
    flush_pending(source, &mut pending, out).await
}

/// Reads the small files queued in `pending` in one statement and emits them
/// with the directories queued between them, in listing order. A file gone
/// since the listing is left out.
async fn flush_pending(
    source: &mut SqlSource,
    pending: &mut Pending,
    out: &mut Emitter<'_>,
) -> Result<(), ReadFailure> {
    if pending.entries.is_empty() {
        return Ok(());
    }
    let p = std::mem::take(pending);
    let mut contents: Vec<Option<Vec<u8>>> = Vec::with_capacity(p.ranges.len());
    source
        .read(&p.ranges, |_, data| {
            contents.push(data.map(<[u8]>::to_vec));
            Ok(())
        })
        .await
        .map_err(|e| ReadFailure::Reason(format!("reading small files: {e}")))?;
    let mut contents = contents.into_iter();
    for (l, kind) in p.entries {
        match kind {
            Entry::Dir => {
                out.header(&l.path, tar::EntryType::Directory, 0, l.mtime);
                continue;
            }
            Entry::Link(target) => {
                out.link(&l.path, &target, l.mtime)?;
                continue;
            }
            Entry::File => {}
        }
        if l.size == 0 {
            out.member(&l.path, &[], l.mtime).await?;
            continue;
        }
        if let Some(Some(data)) = contents.next() {
            out.member(&l.path, &data, l.mtime).await?;
        }
    }
    out.flush(false).await
}

/// Reads a file whole into one member of the listed size: a file that shrank
/// (or went) since the listing is padded with zeros, as PostgreSQL's base
/// backup pads it (WAL replay truncates or drops it again); what it grew by is
/// left to WAL replay.
async fn read_whole(
    source: &mut SqlSource,
    l: &Listed,
    prefix: &str,
    out: &mut Emitter<'_>,
) -> Result<(), ReadFailure> {
    let server_path = format!("{prefix}{}", l.path);
    out.header(&l.path, tar::EntryType::Regular, l.size, l.mtime);
    let mut offset = 0u64;
    while offset < l.size {
        let mut ranges = Vec::new();
        let mut batch = 0u64;
        while offset < l.size && batch < BATCH_BYTES {
            let len = RANGE_BYTES.min(l.size - offset);
            ranges.push(Range {
                path: server_path.clone(),
                offset,
                len,
            });
            offset += len;
            batch += len;
        }
        let buf = &mut out.buf;
        source
            .read(&ranges, |i, data| {
                let want = ranges[i].len as usize;
                let got = data.map_or(&[][..], |d| &d[..d.len().min(want)]);
                buf.extend_from_slice(got);
                buf.resize(buf.len() + (want - got.len()), 0);
                Ok(())
            })
            .await
            .map_err(failed(&l.path))?;
        out.flush(false).await?;
    }
    out.pad(l.size);
    Ok(())
}

/// A mapped relation file of an archive.
struct Mapped<'a> {
    listed: &'a Listed,
    prefix: &'a str,
    tablespace: Option<u32>,
}

/// Reads the blocks of a mapped relation file that may differ from the parent's
/// (the change map's, and every block past the parent's end or from a
/// truncation on) and emits its `INCREMENTAL.*` file, its block map supplied.
async fn read_changed(
    source: &mut SqlSource,
    r: &Reading<'_>,
    file: &Mapped<'_>,
    changed: &[u32],
    from: Option<u32>,
    out: &mut Emitter<'_>,
) -> Result<(), ReadFailure> {
    let (l, parent, supplied, scratch) = (file.listed, r.parent, r.supplied, r.scratch);
    let server_path = format!("{}{}", file.prefix, l.path);
    let io = |e: std::io::Error| failed(&l.path)(super::sql_read::ReadError::Sink(e));
    let now = block_map::blocks_of(l.size).map_err(io)?;
    let old: Vec<BlockHash> = parent
        .blocks(file.tablespace, &l.path)
        .map_err(io)?
        .unwrap_or_default();
    let tail = from
        .unwrap_or(u32::MAX)
        .min(u32::try_from(old.len()).unwrap_or(u32::MAX));
    let wanted: Vec<u32> = changed
        .iter()
        .copied()
        .filter(|&b| b < now && b < tail)
        .chain(tail..now)
        .collect();
    // Runs of consecutive blocks, one range each (up to RANGE_BYTES).
    let per_range = (RANGE_BYTES / BLCKSZ as u64) as u32;
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &b in &wanted {
        match runs.last_mut() {
            Some((start, n)) if *start + *n == b && *n < per_range => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    let old_len = old.len();
    let mut hashes: Vec<BlockHash> = old;
    hashes.resize(now as usize, [0u8; block_map::BLOCK_HASH_LEN]);
    let mut patch = Patch::new(scratch);
    let per_batch = (BATCH_BYTES / RANGE_BYTES).max(1) as usize * per_range as usize;
    let mut at = 0usize;
    while at < runs.len() {
        // Up to BATCH_BYTES of blocks per statement.
        let mut blocks = 0usize;
        let mut end = at;
        while end < runs.len() && blocks < per_batch && end - at < BATCH_RANGES {
            blocks += runs[end].1 as usize;
            end += 1;
        }
        let batch = &runs[at..end];
        let ranges: Vec<Range> = batch
            .iter()
            .map(|&(start, n)| Range {
                path: server_path.clone(),
                offset: u64::from(start) * BLCKSZ as u64,
                len: u64::from(n) * BLCKSZ as u64,
            })
            .collect();
        let mut block = vec![0u8; BLCKSZ];
        source
            .read(&ranges, |i, data| {
                let (start, n) = batch[i];
                let data = data.unwrap_or(&[]);
                for k in 0..n {
                    let off = k as usize * BLCKSZ;
                    let got = data.get(off..).unwrap_or(&[]);
                    let got = &got[..got.len().min(BLCKSZ)];
                    block[..got.len()].copy_from_slice(got);
                    block[got.len()..].fill(0);
                    let number = start + k;
                    let h = block_hash(u64::from(number), &block);
                    let slot = &mut hashes[number as usize];
                    if *slot != h || number as usize >= old_len {
                        patch.keep(number, &block)?;
                    }
                    *slot = h;
                }
                Ok(())
            })
            .await
            .map_err(failed(&l.path))?;
        at = end;
    }
    let incremental = patch.finish(now);
    let name = block_map::incremental_name(&l.path);
    if let Ok(mut s) = supplied.lock() {
        s.insert((file.tablespace.unwrap_or(0), l.path.clone()), hashes);
    }
    let size = incremental.size();
    out.header(&name, tar::EntryType::Regular, size, l.mtime);
    let mut r = incremental.into_reader().map_err(io)?;
    let mut piece = vec![0u8; EMIT_BYTES];
    loop {
        let n = r.read(&mut piece).map_err(io)?;
        if n == 0 {
            break;
        }
        out.buf.extend_from_slice(&piece[..n]);
        out.flush(false).await?;
    }
    out.pad(size);
    Ok(())
}
