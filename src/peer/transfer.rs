//! Copying one stored object from the primary over SFTP, as it is stored (compressed
//! objects are never recompressed), and verifying it before it gets its final name.
//! The bytes are written to a temporary name in the final folder while they are
//! hashed: when the primary recorded the *object checksum* (the BLAKE3 of the
//! object as stored, recorded when it was written), the BLAKE3 of the bytes
//! received and their count must equal it and the stored size — nothing is
//! decompressed. For an object stored by an older pgbk (no object checksum), a zstd
//! decoder reads the same bytes into a second hasher and the uncompressed size and
//! checksum must equal what the primary recorded. Either way the object checksum of
//! what was received is returned, so the copy records it and a peer of this peer
//! verifies its copy the same way. Only then is the file fsynced and renamed into
//! place, so a final name always holds a verified object — which is what lets an
//! interrupted copy resume by skipping it.

use crate::error::{IoError, IoResultExt};
use crate::repo::durable::fsync_dir;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Read size on the SFTP channel (large reads let libssh2 pipeline requests).
const READ_BUFFER: usize = 1024 * 1024;

/// What the primary says an object holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Bytes of the stored object.
    pub stored_size: u64,
    /// Bytes of the content (after decompression).
    pub size: u64,
    /// BLAKE3 of the content; `None` when the primary recorded none (size checks only).
    pub checksum: Option<String>,
    /// BLAKE3 of the object as stored; when known, the received bytes are checked
    /// against it (and the stored size) and not decompressed.
    pub stored_checksum: Option<String>,
    /// Whether the object is zstd (else the content is stored as is).
    pub compressed: bool,
}

/// Why one object could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading the primary's object failed.
    #[error("reading {path} on the primary: {msg}")]
    Remote { path: String, msg: String },
    /// Writing the local copy failed.
    #[error(transparent)]
    Local(#[from] IoError),
    /// The bytes received are not what the primary recorded; nothing was kept.
    #[error("{path}: refused, {why}")]
    Mismatch { path: String, why: String },
}

impl TransferError {
    /// Whether the object itself is wrong (as opposed to the transfer failing).
    pub fn is_mismatch(&self) -> bool {
        matches!(self, TransferError::Mismatch { .. })
    }
}

/// The temporary name an object is received under (fixed, so a later run overwrites
/// what a killed one left; only one replicate runs per server, under its lock).
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp.replicate"))
}

/// Reads from `inner`, writes every byte read to `out`, counts them.
struct Tee<'a, R: Read, W: Write> {
    inner: R,
    out: &'a mut W,
    n: u64,
    moved: &'a AtomicU64,
    raw_hash: Option<&'a mut blake3::Hasher>,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), RemoteRead(e)))?;
        self.out.write_all(&buf[..n]).map_err(local_marker)?;
        if let Some(h) = self.raw_hash.as_deref_mut() {
            h.update(&buf[..n]);
        }
        self.n += n as u64;
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Marks a failed read of the primary's object (as opposed to a decoding failure).
#[derive(Debug)]
struct RemoteRead(io::Error);
impl std::fmt::Display for RemoteRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl std::error::Error for RemoteRead {}

/// Marks a local write failure so it is not mistaken for a remote read failure.
fn local_marker(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), LocalWrite(e))
}

#[derive(Debug)]
struct LocalWrite(io::Error);
impl std::fmt::Display for LocalWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl std::error::Error for LocalWrite {}

/// Copies `src` (any reader: an SFTP file) named `remote_name` into `dest`, verified
/// against `expect`; adds the bytes read to `moved`. The parent folder must exist.
/// Returns the object checksum (BLAKE3 of the bytes stored).
pub fn receive(
    src: impl Read,
    remote_name: &str,
    dest: &Path,
    expect: &Expected,
    moved: &AtomicU64,
) -> Result<String, TransferError> {
    let object_sum = receive_unsynced(src, remote_name, dest, expect, moved)?;
    let tmp = temp_path(dest);
    File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)?;
    std::fs::rename(&tmp, dest).at(dest)?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    fsync_dir(dir).at(dir)?;
    Ok(object_sum)
}

/// [`receive`] without any fsync or rename: the verified object is left under its
/// temporary name ([`temp_path`]); the caller makes many of them durable at once and
/// only then gives them their final names ([`commit_batch`]). A temporary file a
/// crash leaves is copied again by the next pass. Returns the object checksum.
pub fn receive_unsynced(
    src: impl Read,
    remote_name: &str,
    dest: &Path,
    expect: &Expected,
    moved: &AtomicU64,
) -> Result<String, TransferError> {
    let tmp = temp_path(dest);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .at(&tmp)?;
    let result = receive_into(src, remote_name, &file, expect, moved);
    if result.is_ok() {
        // Start writing the object to disk now (asynchronously), so the batch's
        // syncfs(2) before the renames waits for little (a hint: errors are the
        // syncfs's to report).
        // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open.
        unsafe {
            libc::sync_file_range(
                std::os::unix::io::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    drop(file);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes the verified temporary files of `dests` ([`receive_unsynced`]) durable with
/// one `syncfs(2)` of the filesystem holding `root` (one flush instead of one fsync
/// per object), then renames each into its final name. The caller fsyncs the
/// folders before it relies on the names (a name a crash loses is copied again).
pub fn commit_batch(root: &Path, dests: &[PathBuf]) -> Result<(), TransferError> {
    if dests.is_empty() {
        return Ok(());
    }
    let dir = File::open(root).at(root)?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
    if unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(IoError::new(root, io::Error::last_os_error()).into());
    }
    for dest in dests {
        std::fs::rename(temp_path(dest), dest).at(dest)?;
    }
    Ok(())
}

/// Copies exactly the recorded bytes of `src` into `file` and checks their count and
/// BLAKE3 against the object checksum; returns it. Nothing is decompressed.
fn receive_object(
    mut src: impl Read,
    remote_name: &str,
    mut file: &File,
    expect: &Expected,
    want: &str,
    moved: &AtomicU64,
) -> Result<String, TransferError> {
    let mut buf = vec![0u8; (expect.stored_size.clamp(8192, READ_BUFFER as u64)) as usize];
    let mut hasher = blake3::Hasher::new();
    let mut left = expect.stored_size;
    let mut received = 0u64;
    while left > 0 {
        let want_now = left.min(buf.len() as u64) as usize;
        let n = src
            .read(&mut buf[..want_now])
            .map_err(|e| TransferError::Remote {
                path: remote_name.to_string(),
                msg: e.to_string(),
            })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).at(remote_name)?;
        hasher.update(&buf[..n]);
        moved.fetch_add(n as u64, Ordering::Relaxed);
        received += n as u64;
        left -= n as u64;
    }
    let mismatch = |why: String| TransferError::Mismatch {
        path: remote_name.to_string(),
        why,
    };
    let got = hasher.finalize().to_hex().to_string();
    if got != want || received != expect.stored_size {
        return Err(mismatch(format!(
            "object checksum mismatch (BLAKE3 {got} of the {received} bytes received, the primary recorded {want} of {} bytes)",
            expect.stored_size
        )));
    }
    Ok(got)
}

fn receive_into(
    src: impl Read,
    remote_name: &str,
    file: &File,
    expect: &Expected,
    moved: &AtomicU64,
) -> Result<String, TransferError> {
    if let Some(want) = &expect.stored_checksum {
        return receive_object(src, remote_name, file, expect, want, moved);
    }
    // A read error is local (writing the copy), remote (reading the primary) or,
    // when neither marker is there, the decoder's: the object is not valid zstd.
    let classify = |e: io::Error| {
        if e.get_ref().is_some_and(|r| r.is::<LocalWrite>()) {
            TransferError::Local(IoError::new(remote_name, e))
        } else if e.get_ref().is_some_and(|r| r.is::<RemoteRead>()) {
            TransferError::Remote {
                path: remote_name.to_string(),
                msg: e.to_string(),
            }
        } else {
            TransferError::Mismatch {
                path: remote_name.to_string(),
                why: format!("not a valid zstd object ({e})"),
            }
        }
    };
    // Exactly the recorded bytes are asked for: SFTP then never reads ahead past a
    // small object's end (a longer file on the primary is not this object anyway;
    // a shorter one fails the size check below).
    let capacity = (expect.stored_size.clamp(8192, READ_BUFFER as u64)) as usize;
    let src = src.take(expect.stored_size);
    let mismatch = |why: String| TransferError::Mismatch {
        path: remote_name.to_string(),
        why,
    };
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut raw = blake3::Hasher::new();
    let (content_size, content_sum, stored, object_sum) = if expect.compressed {
        let mut tee = Tee {
            inner: BufReader::with_capacity(capacity, src),
            out: &mut out,
            n: 0,
            moved,
            raw_hash: Some(&mut raw),
        };
        let (total, sum) = {
            let dec = zstd::stream::read::Decoder::new(&mut tee).map_err(classify)?;
            if expect.size >= HASH_THREAD_FROM {
                hash_on_thread(dec)
            } else {
                hash_here(dec)
            }
            .map_err(classify)?
            // What the decoder's buffer held past the last frame was read (and
            // written) already; what remains unread is drained below.
        };
        io::copy(&mut tee, &mut io::sink()).map_err(classify)?;
        let stored = tee.n;
        (total, sum, stored, raw.finalize().to_hex().to_string())
    } else {
        let mut tee = Tee {
            inner: BufReader::with_capacity(capacity, src),
            out: &mut out,
            n: 0,
            moved,
            raw_hash: Some(&mut raw),
        };
        io::copy(&mut tee, &mut io::sink()).map_err(classify)?;
        let stored = tee.n;
        let sum = raw.finalize().to_hex().to_string();
        (stored, sum.clone(), stored, sum)
    };
    out.flush().at(remote_name)?;
    if let Some(want) = &expect.checksum {
        if *want != content_sum {
            return Err(mismatch(format!(
                "checksum mismatch (BLAKE3 {content_sum}, the primary recorded {want})"
            )));
        }
    }
    if stored != expect.stored_size {
        return Err(mismatch(format!(
            "{stored} bytes received, the primary recorded {}",
            expect.stored_size
        )));
    }
    if content_size != expect.size {
        return Err(mismatch(format!(
            "content of {content_size} bytes, the primary recorded {}",
            expect.size
        )));
    }
    Ok(object_sum)
}

/// Content size from which an object's BLAKE3 is computed on a second thread while
/// this one reads, writes and decompresses (a 1 GiB relation segment would
/// otherwise be decompressed and hashed on one core, after everything else ended).
pub const HASH_THREAD_FROM: u64 = 32 * 1024 * 1024;

/// Size of the decompressed chunks handed to the hashing thread.
const HASH_CHUNK: usize = 1024 * 1024;

/// Reads `content` to its end; returns its size and BLAKE3.
fn hash_here(content: impl Read) -> io::Result<(u64, String)> {
    crate::repo::compress::hash_copy(content, io::sink())
}

/// [`hash_here`] with the hashing on a second thread: chunks go through a bounded
/// channel (at most 4 in flight, buffers recycled), so memory stays bounded.
fn hash_on_thread(mut content: impl Read) -> io::Result<(u64, String)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let hashing = scope.spawn(move || {
            let mut hasher = blake3::Hasher::new();
            for chunk in rx {
                hasher.update(&chunk);
                let _ = back_tx.send(chunk);
            }
            hasher.finalize().to_hex().to_string()
        });
        let mut total = 0u64;
        let read = (|| -> io::Result<()> {
            loop {
                let mut buf = back_rx.try_recv().unwrap_or_default();
                buf.resize(HASH_CHUNK, 0);
                let n = crate::repo::compress::read_full(&mut content, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                total += n as u64;
                if tx.send(buf).is_err() {
                    return Err(io::Error::other("the hashing thread stopped"));
                }
            }
        })();
        drop(tx);
        let sum = hashing
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))?;
        read.map(|()| (total, sum))
    })
}

/// Whether a final object is already in place with the expected stored size (it was
/// verified before it got that name).
pub fn already_there(dest: &Path, expect: &Expected) -> bool {
    std::fs::symlink_metadata(dest)
        .map(|m| m.file_type().is_file() && m.len() == expect.stored_size)
        .unwrap_or(false)
}

/// Writes a whole small file received from the primary (files.jsonl,
/// backup_manifest) under a temporary name, then renames it into place.
pub fn receive_plain(
    src: impl Read,
    remote_name: &str,
    dest: &Path,
    moved: &AtomicU64,
) -> Result<(), TransferError> {
    let tmp = temp_path(dest);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .at(&tmp)?;
    let copied = {
        let mut out = BufWriter::new(&mut file);
        let mut tee = Tee {
            inner: BufReader::with_capacity(READ_BUFFER, src),
            out: &mut out,
            n: 0,
            moved,
            raw_hash: None,
        };
        io::copy(&mut tee, &mut io::sink()).and_then(|_| out.flush())
    };
    if let Err(e) = copied {
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        return Err(TransferError::Remote {
            path: remote_name.to_string(),
            msg: e.to_string(),
        });
    }
    file.sync_all().at(&tmp)?;
    drop(file);
    std::fs::rename(&tmp, dest).at(&tmp)?;
    Ok(fsync_dir(dest.parent().unwrap_or(Path::new("."))).at(&tmp)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zst(data: &[u8]) -> Vec<u8> {
        // Two frames, as pgbk stores large files.
        let (a, b) = data.split_at(data.len() / 2);
        let mut v = zstd::bulk::compress(a, 1).unwrap();
        v.extend(zstd::bulk::compress(b, 1).unwrap());
        v
    }

    #[test]
    fn hashing_on_a_second_thread_gives_the_same_size_and_checksum() {
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let want = (data.len() as u64, blake3::hash(&data).to_hex().to_string());
        assert_eq!(hash_here(&data[..]).unwrap(), want);
        assert_eq!(hash_on_thread(&data[..]).unwrap(), want);
        assert_eq!(hash_on_thread(&b""[..]).unwrap().0, 0);
    }

    #[test]
    fn verified_objects_get_their_name_and_bad_ones_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 97) as u8).collect();
        let obj = zst(&data);
        let good = Expected {
            stored_size: obj.len() as u64,
            size: data.len() as u64,
            checksum: Some(blake3::hash(&data).to_hex().to_string()),
            stored_checksum: None,
            compressed: true,
        };
        let moved = AtomicU64::new(0);
        let dest = dir.path().join("x.zst");
        let object_sum = receive(&obj[..], "x.zst", &dest, &good, &moved).unwrap();
        assert_eq!(object_sum, blake3::hash(&obj).to_hex().to_string());
        assert_eq!(std::fs::read(&dest).unwrap(), obj);
        assert_eq!(moved.load(Ordering::Relaxed), obj.len() as u64);
        assert!(already_there(&dest, &good));

        let mut tampered = data.clone();
        tampered[5] ^= 1;
        let bad_obj = zst(&tampered);
        let dest2 = dir.path().join("y.zst");
        let e = receive(&bad_obj[..], "y.zst", &dest2, &good, &moved).unwrap_err();
        assert!(e.is_mismatch(), "{e}");
        assert!(!dest2.exists());
        assert!(!temp_path(&dest2).exists());

        let e = receive(&b"garbage"[..], "z.zst", &dest2, &good, &moved).unwrap_err();
        assert!(e.is_mismatch(), "{e}");

        let plain = Expected {
            stored_size: 5,
            size: 5,
            checksum: Some(blake3::hash(b"hello").to_hex().to_string()),
            stored_checksum: None,
            compressed: false,
        };
        assert_eq!(
            receive(&b"hello"[..], "h", &dir.path().join("h"), &plain, &moved).unwrap(),
            blake3::hash(b"hello").to_hex().to_string(),
            "a plain object's object checksum is its content checksum"
        );
        assert!(
            receive(&b"hellO"[..], "h2", &dir.path().join("h2"), &plain, &moved)
                .unwrap_err()
                .is_mismatch()
        );
    }

    #[test]
    fn an_object_checksum_is_checked_on_the_bytes_received_without_decompressing() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 89) as u8).collect();
        let obj = zst(&data);
        let expect = Expected {
            stored_size: obj.len() as u64,
            size: data.len() as u64,
            checksum: Some(blake3::hash(&data).to_hex().to_string()),
            stored_checksum: Some(blake3::hash(&obj).to_hex().to_string()),
            compressed: true,
        };
        let moved = AtomicU64::new(0);
        let dest = dir.path().join("x.zst");
        let sum = receive(&obj[..], "x.zst", &dest, &expect, &moved).unwrap();
        assert_eq!(Some(sum), expect.stored_checksum);
        assert_eq!(std::fs::read(&dest).unwrap(), obj);
        assert_eq!(moved.load(Ordering::Relaxed), obj.len() as u64);

        // One bit flipped in the compressed bytes, same size: refused by the object
        // checksum, and neither the final nor the temporary name is left.
        let mut flipped = obj.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x10;
        let dest2 = dir.path().join("y.zst");
        let e = receive_unsynced(&flipped[..], "y.zst", &dest2, &expect, &moved).unwrap_err();
        assert!(e.is_mismatch(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("y.zst") && msg.contains("object checksum"),
            "{msg}"
        );
        assert!(
            msg.contains(expect.stored_checksum.as_deref().unwrap()),
            "{msg}"
        );
        assert!(!dest2.exists() && !temp_path(&dest2).exists());

        // Short: refused by size. Longer: only the recorded bytes are read (as on
        // the content path), and they are the object.
        let e = receive(&obj[..obj.len() - 1], "s.zst", &dest2, &expect, &moved).unwrap_err();
        assert!(e.to_string().contains("bytes received"), "{e}");
        assert!(e.is_mismatch(), "{e}");
        let mut longer = obj.clone();
        longer.push(0);
        receive(&longer[..], "l.zst", &dest2, &expect, &moved).unwrap();

        // Bytes that are not zstd at all pass when they are what was recorded:
        // the content is not decompressed on this path.
        let junk = b"not zstd, but what the primary stored".to_vec();
        let as_recorded = Expected {
            stored_size: junk.len() as u64,
            stored_checksum: Some(blake3::hash(&junk).to_hex().to_string()),
            ..expect.clone()
        };
        receive(
            &junk[..],
            "j.zst",
            &dir.path().join("j.zst"),
            &as_recorded,
            &moved,
        )
        .unwrap();
    }
}
