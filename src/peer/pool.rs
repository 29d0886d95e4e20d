//! The transfer workers of a replicate pass: `parallel_jobs` threads, each with its
//! own SSH session (host key verified) and SFTP channel, taking objects from a
//! bounded queue (so a backup of millions of files never queues them all) and
//! reporting each outcome; see [`super::transfer`] for what one fetch does. Small
//! objects come in batches, read with pipelined requests on a second SFTP channel
//! of the same session ([`super::sftp_batch`]), then verified the same way.
//!
//! Each worker connects as soon as the pool starts (a pass starts it while
//! `sync-info` runs on the primary, so the handshakes overlap it).
//! A worker whose read fails checks whether its SSH connection still answers; when
//! it does not (sshd stopped, host gone), the pool is *lost*: every queued object
//! fails at once without touching the network and the pass stops with one error
//! instead of one per object.

use super::sftp_batch::{self, Batcher, SshChannel};
use super::transfer::{self, Expected, TransferError};
use super::work_queue::{Lane, WorkQueue};
use crate::ssh::{SshSession, SshTarget};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};

/// Test hook, documented as such in pgbk(1): milliseconds each transfer worker waits
/// after each object, so a test can interrupt a copy in the middle.
pub const THROTTLE_ENV: &str = "PGBK_TEST_REPLICATE_THROTTLE_MS";

/// How long one SSH operation (a read, the sync-info answer) may block before the
/// primary is considered gone.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// One object to fetch.
pub struct Job {
    /// Absolute path of the object on the primary.
    pub remote: String,
    /// Its final local path (its folder exists).
    pub dest: PathBuf,
    /// What it must hold.
    pub expect: Expected,
    /// The caller's label, returned with the outcome.
    pub tag: usize,
    /// The verified object is left under its temporary name; the caller makes it
    /// durable and renames it ([`transfer::receive_unsynced`], [`transfer::commit_batch`]).
    pub unsynced: bool,
}

/// What a worker takes from the queue.
pub enum Work {
    /// One object, through libssh2's SFTP client.
    One(Box<Job>),
    /// Small objects read at once ([`sftp_batch`]).
    Batch(Vec<Job>),
}

/// One fetch's outcome.
pub struct Done {
    /// The job's label.
    pub tag: usize,
    /// The job's final local path.
    pub dest: PathBuf,
    /// Copied and verified (with the object checksum of what was received), or why not.
    pub result: Result<String, TransferError>,
}

/// `parallel_jobs` workers, each with its own SSH session and SFTP channel.
pub struct Pool {
    queue: Arc<WorkQueue<Work>>,
    rx: mpsc::Receiver<Done>,
    workers: Vec<std::thread::JoinHandle<()>>,
    in_flight: usize,
    lost: Arc<Mutex<Option<String>>>,
}

impl Pool {
    /// Starts `n` workers connecting to `target`; bytes read go to `moved`.
    pub fn start(target: &SshTarget, n: usize, moved: Arc<AtomicU64>) -> Pool {
        let queue = Arc::new(WorkQueue::new(n * 4));
        let (done_tx, rx) = mpsc::channel::<Done>();
        let throttle = std::env::var(THROTTLE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis);
        let lost: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let workers = (0..n)
            .map(|i| {
                // With two workers or more, the first takes small objects first.
                let prefer = if i == 0 && n > 1 {
                    Lane::Small
                } else {
                    Lane::Large
                };
                let lost = Arc::clone(&lost);
                let target = target.clone();
                let jobs = Arc::clone(&queue);
                let done_tx = done_tx.clone();
                let moved = Arc::clone(&moved);
                std::thread::spawn(move || {
                    let t = std::time::Instant::now();
                    let session = SshSession::connect(&target).map_err(|e| e.to_string());
                    if let Ok(s) = &session {
                        s.set_timeout(IO_TIMEOUT);
                    }
                    let sftp = session
                        .as_ref()
                        .map_err(Clone::clone)
                        .and_then(|s| s.sftp().map_err(|e| e.to_string()));
                    tracing::debug!(
                        ok = sftp.is_ok(),
                        "transfer worker connected in {:?}",
                        t.elapsed()
                    );
                    if let Err(msg) = &sftp {
                        if let Ok(mut l) = lost.lock() {
                            l.get_or_insert_with(|| msg.clone());
                        }
                    }
                    let mut batcher: Option<Batcher<SshChannel>> = None;
                    'jobs: while let Some(whole) = jobs.pop(prefer) {
                        for work in throttled_pieces(whole, throttle) {
                            // The test hook waits before fetching, for each object of
                            // the work, so a pass killed after N objects has fetched
                            // no more than a few beyond them.
                            if let Some(t) = throttle {
                                let n = match &work {
                                    Work::One(_) => 1,
                                    Work::Batch(b) => b.len() as u32,
                                };
                                std::thread::sleep(t * n);
                            }
                            let started = std::time::Instant::now();
                            let results: Vec<(Job, Fetched)> = match work {
                                Work::One(job) => {
                                    let job = *job;
                                    let streamed =
                                        fetch_streamed(&session, &mut batcher, &lost, &job, &moved);
                                    // Anything but a verified copy or a refusal is tried
                                    // again through libssh2's client.
                                    let r = match streamed {
                                        Some(r @ (Ok(_) | Err(TransferError::Mismatch { .. }))) => r,
                                        _ => fetch_one(&sftp, &lost, &job, &moved),
                                    };
                                    vec![(job, Fetched::Done(r))]
                                }
                                Work::Batch(batch) => fetch_batch(&session, &mut batcher, &lost, batch),
                            };
                            if started.elapsed() >= std::time::Duration::from_millis(20) {
                                tracing::debug!(
                                    objects = results.len(),
                                    first = %results.first().map(|(j, _)| j.remote.as_str()).unwrap_or(""),
                                    "fetched in {:?}",
                                    started.elapsed()
                                );
                            }
                            let mut stop = false;
                            let mut checked = false;
                            for (job, fetched) in results {
                                // A batch's objects are written and verified one by one,
                                // each reported at once (a killed pass keeps what the
                                // caller committed meanwhile).
                                let result = match fetched {
                                    Fetched::Done(r) => r,
                                    Fetched::Fallback => fetch_one(&sftp, &lost, &job, &moved),
                                    Fetched::Bytes(bytes) if job.unsynced => {
                                        transfer::receive_unsynced(
                                            &bytes[..],
                                            &job.remote,
                                            &job.dest,
                                            &job.expect,
                                            &moved,
                                        )
                                    }
                                    Fetched::Bytes(bytes) => transfer::receive(
                                        &bytes[..],
                                        &job.remote,
                                        &job.dest,
                                        &job.expect,
                                        &moved,
                                    ),
                                };
                                if let (Err(TransferError::Remote { msg, .. }), Ok(sftp), false) =
                                    (&result, &sftp, checked)
                                {
                                    // A connection that no longer answers a stat of "/"
                                    // is gone (checked once per queue item).
                                    checked = true;
                                    let gone = lost.lock().ok().and_then(|l| l.clone());
                                    if gone.is_none() && sftp.stat(Path::new("/")).is_err() {
                                        if let Ok(mut l) = lost.lock() {
                                            l.get_or_insert_with(|| {
                                                format!("connection lost ({msg})")
                                            });
                                        }
                                    }
                                }
                                let done = Done {
                                    tag: job.tag,
                                    dest: job.dest,
                                    result,
                                };
                                if done_tx.send(done).is_err() {
                                    stop = true;
                                }
                            }
                            if stop {
                                break 'jobs;
                            }
                        }
                    }
                    drop(batcher);
                    drop(session);
                })
            })
            .collect();
        Pool {
            queue,
            rx,
            workers,
            in_flight: 0,
            lost,
        }
    }

    /// Why the workers' connection to the primary is gone, if it is.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// Queues a job (waits while the queue is full) and returns finished ones.
    pub fn submit(&mut self, job: Job) -> Vec<Done> {
        self.queue(Work::One(Box::new(job)), 1)
    }

    /// Queues small objects (at most [`sftp_batch::MAX_OBJECT`] bytes each) read by
    /// one worker with pipelined requests; each gets its own [`Done`].
    pub fn submit_batch(&mut self, jobs: Vec<Job>) -> Vec<Done> {
        let n = jobs.len();
        if n == 0 {
            return Vec::new();
        }
        self.queue(Work::Batch(jobs), n)
    }

    /// Queues `work` unless the queue is full (then it is handed back): the caller
    /// can handle finished objects ([`Pool::wait_some`]) instead of blocking.
    pub fn try_submit(&mut self, work: Work) -> Result<(), Work> {
        let n = match &work {
            Work::One(_) => 1,
            Work::Batch(b) => b.len(),
        };
        let lane = lane_of(&work);
        if self.queue.try_push(lane, work)? {
            self.in_flight += n;
        }
        Ok(())
    }

    /// The jobs finished so far (does not wait).
    pub fn finished(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        while let Ok(d) = self.rx.try_recv() {
            self.in_flight -= 1;
            out.push(d);
        }
        out
    }

    fn queue(&mut self, work: Work, n: usize) -> Vec<Done> {
        let lane = lane_of(&work);
        if self.queue.push(lane, work) {
            self.in_flight += n;
        }
        self.finished()
    }

    /// Waits for at least one queued job to finish (none queued: returns at once) and
    /// returns every finished one.
    pub fn wait_some(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        if self.in_flight == 0 {
            return out;
        }
        match self.rx.recv() {
            Ok(d) => {
                self.in_flight -= 1;
                out.push(d);
            }
            Err(_) => {
                self.in_flight = 0;
                return out;
            }
        }
        out.extend(self.finished());
        out
    }

    /// Waits for every queued job.
    pub fn drain(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        while self.in_flight > 0 {
            match self.rx.recv() {
                Ok(d) => {
                    self.in_flight -= 1;
                    out.push(d);
                }
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.queue.close();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The queue lane of `work`.
fn lane_of(work: &Work) -> Lane {
    match work {
        Work::One(_) => Lane::Large,
        Work::Batch(_) => Lane::Small,
    }
}

/// Fetches one object through libssh2's SFTP client.
fn fetch_one(
    sftp: &Result<ssh2::Sftp, String>,
    lost: &Mutex<Option<String>>,
    job: &Job,
    moved: &AtomicU64,
) -> Result<String, TransferError> {
    let remote = |msg: String| TransferError::Remote {
        path: job.remote.clone(),
        msg,
    };
    if let Some(gone) = lost.lock().ok().and_then(|l| l.clone()) {
        return Err(remote(gone));
    }
    let sftp = sftp.as_ref().map_err(|m| remote(m.clone()))?;
    let f = sftp
        .open(Path::new(&job.remote))
        .map_err(|e| remote(e.message().to_string()))?;
    if job.unsynced {
        transfer::receive_unsynced(f, &job.remote, &job.dest, &job.expect, moved)
    } else {
        transfer::receive(f, &job.remote, &job.dest, &job.expect, moved)
    }
}

/// This worker's pipelined SFTP channel, started on first use.
fn ensure_batcher<'a>(
    session: &SshSession,
    batcher: &'a mut Option<Batcher<SshChannel>>,
) -> Result<&'a mut Batcher<SshChannel>, String> {
    if batcher.is_none() {
        let ch = session.sftp_channel().map_err(|e| e.to_string())?;
        let b = Batcher::new(SshChannel(ch)).map_err(|e| format!("starting SFTP: {e}"))?;
        *batcher = Some(b);
    }
    batcher
        .as_mut()
        .ok_or_else(|| "no SFTP channel".to_string())
}

/// Copies one large object through the pipelined channel (READs of 255 KiB, many
/// in flight: faster than libssh2's client, which asks 30 kB at a time). `None`
/// when that channel cannot be used; a channel left out of step is dropped.
fn fetch_streamed(
    session: &Result<SshSession, String>,
    batcher: &mut Option<Batcher<SshChannel>>,
    lost: &Mutex<Option<String>>,
    job: &Job,
    moved: &AtomicU64,
) -> Option<Result<String, TransferError>> {
    if lost.lock().ok().and_then(|l| l.clone()).is_some() {
        return None;
    }
    let b = ensure_batcher(session.as_ref().ok()?, batcher).ok()?;
    let (result, reusable) = match b.stream(&job.remote, job.expect.stored_size) {
        Err(_) => (None, false),
        Ok(mut stream) => {
            let r = if job.unsynced {
                transfer::receive_unsynced(&mut stream, &job.remote, &job.dest, &job.expect, moved)
            } else {
                transfer::receive(&mut stream, &job.remote, &job.dest, &job.expect, moved)
            };
            // Whatever was not read (none, unless refused) is drained and the file
            // closed, so the channel serves the next object.
            let _ = std::io::copy(&mut stream, &mut std::io::sink());
            let reusable = stream.reusable();
            (Some(r), reusable)
        }
    };
    if !reusable {
        *batcher = None;
    }
    result
}

/// What a worker got for one object: the outcome, or the bytes of a small object
/// still to be written and verified.
enum Fetched {
    Done(Result<String, TransferError>),
    Bytes(Vec<u8>),
    /// The pipelined channel failed: read it through libssh2's client.
    Fallback,
}

/// Reads a batch of small objects with pipelined SFTP requests on this worker's
/// session (a second channel, started once); the caller writes and verifies each.
fn fetch_batch(
    session: &Result<SshSession, String>,
    batcher: &mut Option<Batcher<SshChannel>>,
    lost: &Mutex<Option<String>>,
    batch: Vec<Job>,
) -> Vec<(Job, Fetched)> {
    let fail_all = |batch: Vec<Job>, msg: String| {
        batch
            .into_iter()
            .map(|job| {
                let e = TransferError::Remote {
                    path: job.remote.clone(),
                    msg: msg.clone(),
                };
                (job, Fetched::Done(Err(e)))
            })
            .collect()
    };
    if let Some(gone) = lost.lock().ok().and_then(|l| l.clone()) {
        return fail_all(batch, gone);
    }
    let session = match session {
        Ok(s) => s,
        Err(m) => return fail_all(batch, m.clone()),
    };
    let b = match ensure_batcher(session, batcher) {
        Ok(b) => b,
        Err(_) => return batch.into_iter().map(|j| (j, Fetched::Fallback)).collect(),
    };
    let wanted: Vec<(String, u64)> = batch
        .iter()
        .map(|j| {
            let size = j.expect.stored_size.min(sftp_batch::MAX_OBJECT);
            (j.remote.clone(), size)
        })
        .collect();
    let fetched = match b.fetch(&wanted) {
        Ok(f) => f,
        Err(e) => {
            // The channel is out of step or gone: a new one for the next batch, and
            // these objects through libssh2's client.
            tracing::debug!("pipelined SFTP failed ({e}); reading the batch one by one");
            *batcher = None;
            return batch.into_iter().map(|j| (j, Fetched::Fallback)).collect();
        }
    };
    batch
        .into_iter()
        .zip(fetched)
        .map(|(job, got)| {
            let r = match got {
                Err(msg) => Fetched::Done(Err(TransferError::Remote {
                    path: job.remote.clone(),
                    msg,
                })),
                Ok(bytes) => Fetched::Bytes(bytes),
            };
            (job, r)
        })
        .collect()
}

/// Objects fetched at once while the test hook throttles a pass.
const THROTTLED_BATCH: usize = 4;

/// `work` as it is fetched: whole, or with the test hook's throttle in batches of
/// [`THROTTLED_BATCH`] (a batch of 128 fetched at once would run ahead of the hook).
fn throttled_pieces(work: Work, throttle: Option<std::time::Duration>) -> Vec<Work> {
    match (work, throttle) {
        (Work::Batch(mut rest), Some(_)) if rest.len() > THROTTLED_BATCH => {
            let mut pieces = Vec::new();
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(THROTTLED_BATCH));
                pieces.push(Work::Batch(rest));
                rest = tail;
            }
            pieces
        }
        (work, _) => vec![work],
    }
}
