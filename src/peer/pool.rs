//! The transfer workers of a replicate pass: `parallel_jobs` threads, each with its
//! own SSH session (host key verified) and SFTP channel, taking objects from a
//! bounded queue (so a backup of millions of files never queues them all) and
//! reporting each outcome; see [`super::transfer`] for what one fetch does.
//!
//! A worker whose read fails checks whether its SSH connection still answers; when
//! it does not (sshd stopped, host gone), the pool is *lost*: every queued object
//! fails at once without touching the network and the pass stops with one error
//! instead of one per object.

use super::replicate::THROTTLE_ENV;
use super::transfer::{self, Expected, TransferError};
use crate::ssh::{SshSession, SshTarget};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};

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
    tx: Option<mpsc::SyncSender<Job>>,
    rx: mpsc::Receiver<Done>,
    workers: Vec<std::thread::JoinHandle<()>>,
    in_flight: usize,
    lost: Arc<Mutex<Option<String>>>,
}

impl Pool {
    /// Starts `n` workers connecting to `target`; bytes read go to `moved`.
    pub fn start(target: &SshTarget, n: usize, moved: Arc<AtomicU64>) -> Pool {
        let (tx, jobs) = mpsc::sync_channel::<Job>(n * 4);
        let jobs = Arc::new(Mutex::new(jobs));
        let (done_tx, rx) = mpsc::channel::<Done>();
        let throttle = std::env::var(THROTTLE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis);
        let lost: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let workers = (0..n)
            .map(|_| {
                let lost = Arc::clone(&lost);
                let target = target.clone();
                let jobs = Arc::clone(&jobs);
                let done_tx = done_tx.clone();
                let moved = Arc::clone(&moved);
                std::thread::spawn(move || {
                    let session = SshSession::connect(&target).map_err(|e| e.to_string());
                    if let Ok(s) = &session {
                        s.set_timeout(super::replicate::IO_TIMEOUT);
                    }
                    let sftp = session
                        .as_ref()
                        .map_err(Clone::clone)
                        .and_then(|s| s.sftp().map_err(|e| e.to_string()));
                    if let Err(msg) = &sftp {
                        if let Ok(mut l) = lost.lock() {
                            l.get_or_insert_with(|| msg.clone());
                        }
                    }
                    loop {
                        let job = match jobs.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        let Ok(job) = job else { break };
                        let gone = lost.lock().ok().and_then(|l| l.clone());
                        let result = match &sftp {
                            _ if gone.is_some() => Err(TransferError::Remote {
                                path: job.remote.clone(),
                                msg: gone.clone().unwrap_or_default(),
                            }),
                            Err(msg) => Err(TransferError::Remote {
                                path: job.remote.clone(),
                                msg: msg.clone(),
                            }),
                            Ok(sftp) => match sftp.open(Path::new(&job.remote)) {
                                Err(e) => Err(TransferError::Remote {
                                    path: job.remote.clone(),
                                    msg: e.message().to_string(),
                                }),
                                Ok(f) if job.unsynced => transfer::receive_unsynced(
                                    f,
                                    &job.remote,
                                    &job.dest,
                                    &job.expect,
                                    &moved,
                                ),
                                Ok(f) => transfer::receive(
                                    f,
                                    &job.remote,
                                    &job.dest,
                                    &job.expect,
                                    &moved,
                                ),
                            },
                        };
                        if let (Err(TransferError::Remote { msg, .. }), Ok(sftp)) = (&result, &sftp)
                        {
                            // A connection that no longer answers a stat of "/" is gone.
                            if gone.is_none() && sftp.stat(Path::new("/")).is_err() {
                                if let Ok(mut l) = lost.lock() {
                                    l.get_or_insert_with(|| format!("connection lost ({msg})"));
                                }
                            }
                        }
                        if let Some(t) = throttle {
                            std::thread::sleep(t);
                        }
                        if done_tx
                            .send(Done {
                                tag: job.tag,
                                dest: job.dest,
                                result,
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    drop(sftp);
                    drop(session);
                })
            })
            .collect();
        Pool {
            tx: Some(tx),
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
        let mut out = Vec::new();
        if let Some(tx) = &self.tx {
            if tx.send(job).is_ok() {
                self.in_flight += 1;
            }
        }
        while let Ok(d) = self.rx.try_recv() {
            self.in_flight -= 1;
            out.push(d);
        }
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
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
