//! A backup's objects going to object storage as the stream stores them: small
//! objects whole, several at once (a data directory is mostly small files, and an
//! object store answers each request with a round trip), large ones streamed as
//! their compressed frames arrive (the store makes that a multipart upload), never
//! held whole in memory. Every object is created once (create-only): a name that
//! exists with other content is an error, never overwritten.

use crate::repo::store::{PutMode, Store, StoreError};
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Objects up to this many stored bytes go up whole (one PUT).
pub(super) const WHOLE_UP_TO: u64 = 8 << 20;

/// Whole objects uploading at once.
const UPLOADERS: usize = 4;

/// Frames queued for one streamed object.
const STREAM_QUEUE: usize = 4;

type Failure = Arc<Mutex<Option<StoreError>>>;

/// Test hook: each whole-object upload first waits this many milliseconds, so the
/// test suite can fail the store in the middle of a backup. Not for production.
pub const THROTTLE_ENV: &str = "PGBK_TEST_UPLOAD_THROTTLE_MS";

fn throttle() -> Option<std::time::Duration> {
    std::env::var(THROTTLE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
}

/// The uploads of one backup.
pub(super) struct Uploads {
    store: Arc<dyn Store>,
    whole: Option<SyncSender<(String, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    failed: Failure,
}

impl Uploads {
    /// Starts the uploaders for whole objects.
    pub(super) fn new(store: Arc<dyn Store>) -> Uploads {
        let (tx, rx) = mpsc::sync_channel::<(String, Vec<u8>)>(UPLOADERS);
        let rx = Arc::new(Mutex::new(rx));
        let failed: Failure = Arc::new(Mutex::new(None));
        let pause = throttle();
        let workers = (0..UPLOADERS)
            .map(|_| {
                let (rx, failed, store) = (rx.clone(), failed.clone(), store.clone());
                std::thread::spawn(move || loop {
                    let job = rx.lock().map(|r| r.recv());
                    let Ok(Ok((key, data))) = job else { return };
                    if has_failed(&failed) {
                        continue;
                    }
                    if let Some(p) = pause {
                        std::thread::sleep(p);
                    }
                    if let Err(e) = store.put(&key, &data, PutMode::Create) {
                        record(&failed, e);
                    }
                })
            })
            .collect();
        Uploads {
            store,
            whole: Some(tx),
            workers,
            failed,
        }
    }

    /// True once an upload failed (the backup stops: its error is in [`Uploads::finish`]).
    pub(super) fn has_failed(&self) -> bool {
        has_failed(&self.failed)
    }

    /// Queues a small object (waits while every uploader is busy).
    pub(super) fn whole(&self, key: String, data: Vec<u8>) {
        let sent = self.whole.as_ref().map(|tx| tx.send((key.clone(), data)));
        if !matches!(sent, Some(Ok(()))) {
            record(
                &self.failed,
                StoreError::Integrity {
                    key,
                    detail: "the uploaders stopped".into(),
                },
            );
        }
    }

    /// Starts streaming a large object; its frames follow through [`Streamed::write`].
    pub(super) fn stream(&self, key: String) -> Streamed {
        let (tx, rx) = mpsc::sync_channel::<Option<Vec<u8>>>(STREAM_QUEUE);
        let store = self.store.clone();
        let handle = std::thread::spawn(move || {
            let mut reader = FrameReader {
                rx,
                cur: Vec::new(),
                pos: 0,
                ended: false,
            };
            store
                .put_reader(&key, &mut reader, PutMode::Create)
                .map(|_| ())
        });
        Streamed {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Waits for every queued upload: the first failure, if any.
    pub(super) fn finish(mut self) -> Result<(), StoreError> {
        self.whole = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.failed.lock() {
            Ok(mut f) => f.take().map_or(Ok(()), Err),
            Err(_) => Err(StoreError::Integrity {
                key: String::new(),
                detail: "an uploader panicked".into(),
            }),
        }
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.whole = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn has_failed(f: &Failure) -> bool {
    f.lock().map(|f| f.is_some()).unwrap_or(true)
}

fn record(f: &Failure, e: StoreError) {
    if let Ok(mut slot) = f.lock() {
        slot.get_or_insert(e);
    }
}

/// One large object being uploaded.
pub(super) struct Streamed {
    tx: Option<SyncSender<Option<Vec<u8>>>>,
    handle: Option<JoinHandle<Result<(), StoreError>>>,
}

impl Streamed {
    /// Hands the next frame on (waits while the upload is behind); false when the
    /// upload already ended (its error comes from [`Streamed::finish`]).
    pub(super) fn write(&self, frame: Vec<u8>) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.send(Some(frame)).is_ok())
    }

    /// Ends the object and waits until the store has it.
    pub(super) fn finish(mut self) -> Result<(), StoreError> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(None);
        }
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(StoreError::Integrity {
                key: String::new(),
                detail: "an upload thread panicked".into(),
            }),
        }
    }
}

impl Drop for Streamed {
    /// An object abandoned before its end: the channel closes without the end
    /// marker, so the upload fails (and is aborted) instead of storing a short object.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The frames of a streamed object as a `Read`; an error if the writer went away
/// before the end marker.
struct FrameReader {
    rx: Receiver<Option<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for FrameReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Some(frame)) => {
                    self.cur = frame;
                    self.pos = 0;
                }
                Ok(None) => self.ended = true,
                Err(_) => {
                    return Err(io::Error::other(
                        "the backup stopped before the object was complete",
                    ))
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
