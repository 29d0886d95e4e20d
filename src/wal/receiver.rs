//! `receive-wal`: streams WAL from a server over the replication protocol into
//! `streaming/<segment>.partial`, fsyncs before reporting a flush position (so a slot
//! or a synchronous commit never gets ahead of what is on disk), hands each finished
//! segment to a background archiver, follows timeline switches and reconnects with
//! backoff when the server goes away.

use super::archive::{ArchiveError, WalArchive};
use super::segment::{WalFileName, WalSegment};
use super::{Lsn, SystemId, TimeLineId};
use crate::catalog::{Catalog, CatalogError};
use crate::error::{IoError, IoResultExt};
use crate::pg::{
    ConnInfo, ConnectOptions, Connection, PgError, ReplicationMessage, StartReplication,
};
use crate::repo::durable::{fsync_dir, remove_stale_temp_files, rename_durable};
use crate::repo::{Repository, ServerRepo};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Marker file that makes the next start begin at the server's current position.
pub const RESET_MARKER: &str = "reset";

/// While the server is ahead of what it sent, WAL received is fsynced (and the
/// flush reported) once this many bytes or this much time have gathered.
const CATCH_UP_BYTES: usize = 8 * 1024 * 1024;
const CATCH_UP_TIME: Duration = Duration::from_millis(100);

/// What the receiver needs to know.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// Server name (config section), for messages and the repository folder.
    pub server: String,
    /// The replication connection string (`streaming_conninfo`).
    pub conninfo: ConnInfo,
    /// `application_name` to report; list it in `synchronous_standby_names` for RPO 0.
    pub application_name: String,
    /// Replication slot to stream from.
    pub slot: Option<String>,
    /// Create the slot when it is missing (`create_slot = auto`).
    pub create_slot: bool,
    /// The repository (its home keeps the streaming segment; its store the WAL).
    pub repository: Repository,
    /// How often to send a status update when nothing else prompts one.
    pub status_interval: Duration,
}

/// Why receive-wal stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// PostgreSQL refused or the connection failed.
    #[error("server '{server}': {source}")]
    Pg { server: String, source: PgError },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Archiving a finished segment failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A local file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A condition retrying cannot fix.
    #[error("server '{server}': {message}")]
    Fatal { server: String, message: String },
}

impl ReceiveError {
    /// Whether retrying later may help: the connection was lost, the server is
    /// restarting, or the backup host's disk is full (the WAL stays safe in the slot
    /// and in `streaming/` until there is room again). Wrong credentials, another
    /// cluster's WAL, or corrupt content are final.
    fn is_transient(&self) -> bool {
        match self {
            ReceiveError::Pg { source, .. } => match source.code() {
                // Wrong password or role, missing database, bad command, WAL already removed,
                // wal_level too low: retrying cannot help.
                Some(c) if c.starts_with("28") || c.starts_with("3D") || c.starts_with("42") => {
                    false
                }
                Some("58P01") | Some("55000") => false,
                // Shutdown in progress, cannot connect now, too many connections.
                Some(c) => c.starts_with("57") || c.starts_with("08") || c == "53300",
                None => source.is_connection_error(),
            },
            ReceiveError::Io { .. } => true,
            ReceiveError::Archive(ArchiveError::Io { .. }) => true,
            ReceiveError::Archive(ArchiveError::Catalog(CatalogError::Sqlite { .. })) => true,
            ReceiveError::Catalog(CatalogError::Sqlite { .. }) => true,
            _ => false,
        }
    }
}

/// Work for the archiver thread.
enum ArchiveJob {
    Segment(PathBuf, WalSegment),
    Partial(PathBuf, WalSegment),
}

/// Finished segments stored at once. Each upload to an object store waits a round
/// trip (and the store's replicas), each local store an fsync: two in flight keep
/// the link busy when receive-wal catches up. Order does not matter: a segment's
/// file stays in `streaming/` until it is stored, so a crash leaves every
/// unarchived one for the next start.
const ARCHIVE_WORKERS: usize = 2;

/// The background threads that compress and store finished segments.
struct Archiver {
    tx: Option<mpsc::Sender<ArchiveJob>>,
    errors: mpsc::Receiver<ArchiveError>,
    handles: Vec<JoinHandle<()>>,
}

impl Archiver {
    /// One worker per archive handle (each has its own catalog connection).
    fn start(archives: Vec<WalArchive>) -> Archiver {
        let (tx, rx) = mpsc::channel::<ArchiveJob>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let (etx, erx) = mpsc::channel();
        let handles = archives
            .into_iter()
            .map(|archive| {
                let (rx, etx) = (rx.clone(), etx.clone());
                std::thread::spawn(move || loop {
                    let Ok(Ok(job)) = rx.lock().map(|r| r.recv()) else {
                        return;
                    };
                    let r = match &job {
                        ArchiveJob::Segment(p, s) => archive.archive_segment_file(p, s),
                        ArchiveJob::Partial(p, s) => archive.archive_partial_file(p, s),
                    };
                    match r {
                        Ok(a) => tracing::info!("archived {:?}", archived_name(&a)),
                        Err(e) => {
                            let _ = etx.send(e);
                        }
                    }
                })
            })
            .collect();
        Archiver {
            tx: Some(tx),
            errors: erx,
            handles,
        }
    }

    fn submit(&self, job: ArchiveJob) -> Result<(), ReceiveError> {
        self.check()?;
        if let Some(tx) = &self.tx {
            if tx.send(job).is_err() {
                return Err(ReceiveError::Fatal {
                    server: String::new(),
                    message: "WAL archiver thread stopped".into(),
                });
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ReceiveError> {
        match self.errors.try_recv() {
            Ok(e) => Err(e.into()),
            Err(_) => Ok(()),
        }
    }

    /// Waits until every submitted job is done.
    fn finish(mut self) -> Result<(), ReceiveError> {
        self.tx.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        self.check()
    }
}

fn archived_name(a: &super::archive::Archived) -> &str {
    match a {
        super::archive::Archived::Stored(r) | super::archive::Archived::AlreadyPresent(r) => {
            &r.name
        }
    }
}

/// The open `.partial` segment being written.
struct PartialSegment {
    seg: WalSegment,
    path: PathBuf,
    file: File,
    /// LSN just past the last byte written.
    written: Lsn,
    /// LSN just past the last byte known to be on disk.
    flushed: Lsn,
}

/// The stream's state: where the next byte goes, what is on disk.
struct Writer {
    dir: PathBuf,
    seg_size: u64,
    tli: TimeLineId,
    current: Option<PartialSegment>,
    /// Everything before this LSN is on disk (in a partial, a finished segment or the archive).
    flushed: Lsn,
    archiver: Archiver,
}

impl Writer {
    fn partial_path(&self, seg: &WalSegment) -> PathBuf {
        self.dir.join(format!("{}.partial", seg.name()))
    }

    fn open(&mut self, seg: WalSegment) -> Result<(), ReceiveError> {
        let path = self.partial_path(&seg);
        let existed = path.exists();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .at(&path)?;
        if !existed {
            fsync_dir(&self.dir).at(&self.dir)?;
        }
        self.current = Some(PartialSegment {
            seg,
            path,
            file,
            written: seg.start_lsn(),
            flushed: seg.start_lsn(),
        });
        Ok(())
    }

    /// Writes WAL bytes that start at `start`, across segment boundaries as needed.
    fn write(&mut self, mut start: Lsn, mut data: &[u8]) -> Result<(), ReceiveError> {
        while !data.is_empty() {
            let seg = WalSegment::containing(self.tli, start, self.seg_size);
            if self.current.as_ref().map(|c| c.seg) != Some(seg) {
                self.close_incomplete()?;
                self.open(seg)?;
            }
            let offset = start.segment_offset(self.seg_size);
            let n = ((self.seg_size - offset) as usize).min(data.len());
            let cur = self.current.as_mut().ok_or_else(|| ReceiveError::Fatal {
                server: String::new(),
                message: "no open segment".into(),
            })?;
            cur.file.write_all_at(&data[..n], offset).at(&cur.path)?;
            start = Lsn(start.0 + n as u64);
            cur.written = cur.written.max(start);
            data = &data[n..];
            if offset + n as u64 == self.seg_size {
                self.complete_current()?;
            }
        }
        Ok(())
    }

    /// Leaves an unfinished current segment as it is (flushed), e.g. before a jump.
    fn close_incomplete(&mut self) -> Result<(), ReceiveError> {
        self.flush()?;
        self.current = None;
        Ok(())
    }

    /// A segment is full: fsync, rename to its final name, hand it to the archiver.
    fn complete_current(&mut self) -> Result<(), ReceiveError> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        cur.file.sync_data().at(&cur.path)?;
        let done = self.dir.join(cur.seg.name());
        rename_durable(&cur.path, &done).at(&done)?;
        self.flushed = self.flushed.max(cur.seg.end_lsn());
        self.archiver.submit(ArchiveJob::Segment(done, cur.seg))
    }

    /// Makes everything written durable; returns the flush position.
    fn flush(&mut self) -> Result<Lsn, ReceiveError> {
        if let Some(cur) = self.current.as_mut() {
            if cur.written > cur.flushed {
                cur.file.sync_data().at(&cur.path)?;
                cur.flushed = cur.written;
            }
            self.flushed = self.flushed.max(cur.flushed);
        }
        Ok(self.flushed)
    }

    /// The timeline ended inside the current segment: archive it as `.partial`.
    fn end_timeline(&mut self) -> Result<(), ReceiveError> {
        self.flush()?;
        if let Some(cur) = self.current.take() {
            drop(cur.file);
            self.archiver
                .submit(ArchiveJob::Partial(cur.path, cur.seg))?;
        }
        Ok(())
    }
}

/// Where streaming resumes, from the repository's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPoint {
    /// First LSN to ask for (a segment boundary).
    pub lsn: Lsn,
    /// Timeline to ask for.
    pub tli: TimeLineId,
}

/// The newest WAL this repository already holds: the newest `.partial` in `streaming/`
/// (re-streamed from its start) or the segment after the newest archived one.
pub fn local_start_point(
    repo: &ServerRepo,
    catalog: &Catalog,
    server: &str,
    seg_size: u64,
) -> Result<Option<StartPoint>, ReceiveError> {
    let mut best: Option<StartPoint> = None;
    let mut consider = |p: StartPoint| {
        if best.is_none_or(|b| (p.lsn, p.tli) > (b.lsn, b.tli)) {
            best = Some(p);
        }
    };
    if let Some(last) = catalog.last_segment(server)? {
        if let Some(segno) = last.segno {
            let seg = WalSegment {
                tli: last.timeline,
                segno,
                seg_size,
            };
            consider(StartPoint {
                lsn: seg.end_lsn(),
                tli: seg.tli,
            });
        }
    }
    let dir = repo.streaming_dir();
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let Some(WalFileName::Partial(seg)) =
                WalFileName::parse(&e.file_name().to_string_lossy(), seg_size)
            {
                consider(StartPoint {
                    lsn: seg.start_lsn(),
                    tli: seg.tli,
                });
            }
        }
    }
    Ok(best)
}

/// How one streaming session ended.
enum SessionEnd {
    /// We were asked to stop.
    Stopped,
    /// The server shut down in an orderly way: reconnect.
    ServerShutdown,
}

struct Receiver {
    opts: ReceiverOptions,
    repo: ServerRepo,
    catalog: Catalog,
    shutdown: watch::Receiver<bool>,
    streamed_any: bool,
}

fn stop_requested(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow()
}

/// Runs receive-wal until `shutdown` turns true, reconnecting on transient failures.
pub async fn receive_wal(
    opts: ReceiverOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ReceiveError> {
    let repo = ServerRepo::new(opts.repository.home(), &opts.server);
    repo.ensure_dirs().at(repo.root())?;
    remove_stale_temp_files(&repo.streaming_dir()).at(repo.streaming_dir())?;
    let catalog = Catalog::open(opts.repository.home())?;
    let mut r = Receiver {
        opts,
        repo,
        catalog,
        shutdown,
        streamed_any: false,
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        r.streamed_any = false;
        let result = r.session().await;
        if stop_requested(&r.shutdown) {
            return result.map(|_| ());
        }
        match result {
            Ok(SessionEnd::Stopped) => return Ok(()),
            Ok(SessionEnd::ServerShutdown) => {
                tracing::warn!(server = %r.opts.server, "server shut down; reconnecting");
                backoff = Duration::from_secs(1);
            }
            Err(e) if e.is_transient() => {
                if r.streamed_any {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!("{e}; reconnecting in {}s", backoff.as_secs());
            }
            Err(e) => return Err(e),
        }
        let mut sd = r.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = sd.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

impl Receiver {
    fn pg_err(&self) -> impl FnOnce(PgError) -> ReceiveError + '_ {
        move |source| ReceiveError::Pg {
            server: self.opts.server.clone(),
            source,
        }
    }

    fn fatal(&self, message: impl Into<String>) -> ReceiveError {
        ReceiveError::Fatal {
            server: self.opts.server.clone(),
            message: message.into(),
        }
    }

    /// Archives finished segments a crash left in `streaming/` (renamed but not stored).
    fn recover_leftovers(&self, archive: &WalArchive, seg_size: u64) -> Result<(), ReceiveError> {
        let dir = self.repo.streaming_dir();
        let mut partials = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            match WalFileName::parse(&name, seg_size) {
                Some(WalFileName::Segment(seg)) => {
                    archive.archive_segment_file(&e.path(), &seg)?;
                    tracing::info!(server = %self.opts.server, "archived leftover segment {name}");
                }
                Some(WalFileName::Partial(seg)) => partials.push((seg, e.path())),
                _ => {}
            }
        }
        // Only the newest partial is still in progress; older ones ended a timeline.
        partials.sort_by_key(|(s, _)| (s.segno, s.tli));
        partials.pop();
        for (seg, path) in partials {
            archive.archive_partial_file(&path, &seg)?;
        }
        Ok(())
    }

    async fn ensure_history(
        &self,
        conn: &mut Connection,
        archive: &WalArchive,
        tli: TimeLineId,
    ) -> Result<(), ReceiveError> {
        if tli.0 <= 1 || archive.has_history(tli)? {
            return Ok(());
        }
        let h = conn.timeline_history(tli).await.map_err(self.pg_err())?;
        if h.filename != super::history_file_name(tli) {
            return Err(self.fatal(format!(
                "server sent history file '{}' for timeline {tli}",
                h.filename
            )));
        }
        archive.store_history(tli, &h.content)?;
        tracing::info!(server = %self.opts.server, "archived {}", h.filename);
        Ok(())
    }

    async fn session(&mut self) -> Result<SessionEnd, ReceiveError> {
        let copts = ConnectOptions {
            replication: true,
            application_name: Some(self.opts.application_name.clone()),
            connect_timeout: Some(Duration::from_secs(10)),
        };
        let mut conn = Connection::connect(&self.opts.conninfo, &copts)
            .await
            .map_err(self.pg_err())?;
        let ident = conn.identify_system().await.map_err(self.pg_err())?;
        let seg_size = conn.wal_segment_size().await.map_err(self.pg_err())?;
        crate::wal::stored::adopt_repository_identity(
            &self.opts.repository.server(&self.opts.server),
            &self.catalog,
        )?;
        self.catalog
            .check_server_identity(&self.opts.server, ident.system_id, seg_size)?;
        let archive = WalArchive::open(
            &self.opts.repository,
            &self.opts.server,
            Some(ident.system_id),
            seg_size,
        )?;
        self.recover_leftovers(&archive, seg_size)?;
        let mut archives = vec![archive];
        while archives.len() < ARCHIVE_WORKERS {
            archives.push(WalArchive::open(
                &self.opts.repository,
                &self.opts.server,
                Some(ident.system_id),
                seg_size,
            )?);
        }

        let slot_info = match &self.opts.slot {
            Some(slot) => match conn.read_replication_slot(slot).await.map_err(self.pg_err())? {
                Some(info) => Some(info),
                None if self.opts.create_slot => {
                    conn.create_physical_slot(slot, true).await.map_err(self.pg_err())?;
                    tracing::info!(server = %self.opts.server, "created replication slot '{slot}'");
                    conn.read_replication_slot(slot).await.map_err(self.pg_err())?
                }
                None => {
                    return Err(self.fatal(format!(
                        "replication slot '{slot}' does not exist; create it with 'pgbk receive-wal --create-slot {}' or set create_slot = auto",
                        self.opts.server
                    )))
                }
            },
            None => None,
        };

        let reset_marker = self.repo.streaming_dir().join(RESET_MARKER);
        let local = if reset_marker.exists() {
            None
        } else {
            local_start_point(&self.repo, &self.catalog, &self.opts.server, seg_size)?
        };
        let mut start = match local {
            Some(p) => p,
            None => {
                let (lsn, tli) = match slot_info
                    .as_ref()
                    .and_then(|s| s.restart_lsn.map(|l| (l, s.restart_tli)))
                {
                    Some((lsn, tli)) if lsn != Lsn::INVALID => (lsn, tli.unwrap_or(ident.timeline)),
                    _ => (ident.xlogpos, ident.timeline),
                };
                StartPoint {
                    lsn: lsn.segment_start(seg_size),
                    tli,
                }
            }
        };
        if start.tli > ident.timeline {
            return Err(self.fatal(format!(
                "the repository holds timeline {} but the server is on timeline {} (another cluster? see receive-wal --reset)",
                start.tli, ident.timeline
            )));
        }
        if local.is_none() {
            let _ = fs::remove_file(&reset_marker);
        }
        tracing::info!(server = %self.opts.server, system_id = %ident.system_id, "starting to stream at {} on timeline {}", start.lsn, start.tli);

        let mut writer = Writer {
            dir: self.repo.streaming_dir(),
            seg_size,
            tli: start.tli,
            current: None,
            flushed: start.lsn,
            archiver: Archiver::start(archives),
        };
        let history_archive = WalArchive::open(
            &self.opts.repository,
            &self.opts.server,
            Some(ident.system_id),
            seg_size,
        )?;
        let result = loop {
            self.ensure_history(&mut conn, &history_archive, start.tli)
                .await?;
            writer.tli = start.tli;
            writer.flushed = writer.flushed.max(start.lsn);
            match self
                .stream_timeline(&mut conn, &mut writer, start, ident.system_id)
                .await
            {
                Ok(Some(next)) => {
                    tracing::info!(server = %self.opts.server, "timeline {} ended; following timeline {} from {}", start.tli, next.tli, next.lsn);
                    writer.end_timeline()?;
                    self.ensure_history(&mut conn, &history_archive, next.tli)
                        .await?;
                    start = StartPoint {
                        lsn: next.lsn.segment_start(seg_size),
                        tli: next.tli,
                    };
                    writer.flushed = start.lsn;
                }
                Ok(None) => break Ok(SessionEnd::Stopped),
                Err(StreamEnd::ServerShutdown) => break Ok(SessionEnd::ServerShutdown),
                Err(StreamEnd::Error(e)) => break Err(e),
            }
        };
        let flush = writer.flush();
        let finished = writer.archiver.finish();
        conn.close().await;
        flush?;
        finished?;
        result
    }

    /// Streams one timeline. `Ok(Some(next))` when it ended and the next one begins,
    /// `Ok(None)` when asked to stop.
    async fn stream_timeline(
        &mut self,
        conn: &mut Connection,
        writer: &mut Writer,
        start: StartPoint,
        _system_id: SystemId,
    ) -> Result<Option<StartPoint>, StreamEnd> {
        let slot = self.opts.slot.clone();
        let started = conn
            .start_physical_replication(slot.as_deref(), start.lsn, start.tli)
            .await
            .map_err(|e| StreamEnd::Error(self.pg_err()(e)))?;
        let mut stream = match started {
            StartReplication::Streaming(s) => s,
            StartReplication::TimelineEnded {
                next_tli,
                next_start,
            } => {
                return self.check_next(start, next_tli, next_start).map(Some);
            }
        };
        let mut last_status = Instant::now();
        let mut reported = Lsn::INVALID;
        let mut shutdown = self.shutdown.clone();
        loop {
            let msg = tokio::select! {
                m = stream.next_message() => m.map_err(|e| StreamEnd::Error(self.pg_err()(e)))?,
                _ = tokio::time::sleep(self.opts.status_interval.saturating_sub(last_status.elapsed())) => {
                    let f = writer.flush().map_err(StreamEnd::Error)?;
                    stream.send_status(f, f, Lsn::INVALID, false).await.map_err(|e| StreamEnd::Error(self.pg_err()(e)))?;
                    last_status = Instant::now();
                    continue;
                }
                _ = shutdown.changed() => {
                    let f = writer.flush().map_err(StreamEnd::Error)?;
                    let _ = stream.send_status(f, f, Lsn::INVALID, false).await;
                    let _ = stream.stop().await;
                    return Ok(None);
                }
            };
            // Take every message already received, then fsync once and report. While
            // the server has more WAL than it sent so far (catching up, or the zeros
            // after a WAL switch), wait for more first, up to CATCH_UP_BYTES or
            // CATCH_UP_TIME: one fsync per 128 KiB message made a switched segment
            // cost 128 fsyncs. Nothing unflushed is reported, so nothing is lost.
            let mut next = Some(msg);
            let mut reply_now = false;
            let batch_started = Instant::now();
            let mut unflushed = 0usize;
            loop {
                let mut behind = false;
                while let Some(m) = next.take() {
                    match m {
                        ReplicationMessage::XLogData {
                            wal_start,
                            wal_end,
                            data,
                            ..
                        } => {
                            writer.write(wal_start, &data).map_err(StreamEnd::Error)?;
                            self.streamed_any = true;
                            unflushed += data.len();
                            behind = wal_start.0 + (data.len() as u64) < wal_end.0;
                        }
                        ReplicationMessage::Keepalive {
                            reply_requested, ..
                        } => reply_now |= reply_requested,
                        ReplicationMessage::EndOfTimeline {
                            next_tli,
                            next_start,
                        } => {
                            writer.flush().map_err(StreamEnd::Error)?;
                            return self.check_next(start, next_tli, next_start).map(Some);
                        }
                        ReplicationMessage::ServerShutdown => {
                            writer.flush().map_err(StreamEnd::Error)?;
                            return Err(StreamEnd::ServerShutdown);
                        }
                    }
                    next = stream
                        .try_next_buffered()
                        .map_err(|e| StreamEnd::Error(self.pg_err()(e)))?;
                }
                let waited = batch_started.elapsed();
                if !behind || reply_now || unflushed >= CATCH_UP_BYTES || waited >= CATCH_UP_TIME {
                    break;
                }
                match tokio::time::timeout(CATCH_UP_TIME - waited, stream.next_message()).await {
                    Ok(m) => next = Some(m.map_err(|e| StreamEnd::Error(self.pg_err()(e)))?),
                    Err(_) => break,
                }
            }
            writer.archiver.check().map_err(StreamEnd::Error)?;
            let flushed = writer.flush().map_err(StreamEnd::Error)?;
            if flushed > reported || reply_now || last_status.elapsed() >= self.opts.status_interval
            {
                stream
                    .send_status(flushed, flushed, Lsn::INVALID, false)
                    .await
                    .map_err(|e| StreamEnd::Error(self.pg_err()(e)))?;
                reported = flushed;
                last_status = Instant::now();
            }
        }
    }

    fn check_next(
        &self,
        start: StartPoint,
        next_tli: TimeLineId,
        next_start: Lsn,
    ) -> Result<StartPoint, StreamEnd> {
        if next_tli <= start.tli {
            return Err(StreamEnd::Error(self.fatal(format!(
                "server reported next timeline {next_tli} after timeline {}",
                start.tli
            ))));
        }
        Ok(StartPoint {
            lsn: next_start,
            tli: next_tli,
        })
    }
}

/// A stream that ended otherwise than by a new timeline or a stop request.
enum StreamEnd {
    ServerShutdown,
    Error(ReceiveError),
}
