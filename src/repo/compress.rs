//! zstd storage of file content: chunks compressed in parallel (rayon) as independent
//! frames written in order, with a BLAKE3 checksum of the uncompressed content and
//! one of the stored object (the frames as written), which a peer verifies a copy
//! against without decompressing it.

use super::durable::AtomicFile;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

/// Uncompressed bytes per independently compressed frame.
pub const CHUNK_SIZE: usize = 4 * 1024 * 1024;
/// zstd level: 1 keeps up with a fast WAL stream on two cores.
pub const DEFAULT_LEVEL: i32 = 1;

/// What storing a file produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Size on disk in bytes.
    pub stored_size: u64,
    /// BLAKE3 of the uncompressed content, hex.
    pub checksum: String,
    /// BLAKE3 of the object as stored (the compressed bytes on disk), hex.
    #[serde(default)]
    pub stored_checksum: String,
}

/// The checksum an object carries at its end: a zstd skippable frame (which every
/// zstd decoder, `zstd -d` included, passes over) holding the content's length and
/// BLAKE3. It lets a reader that has no catalog (get-wal as the postgres OS user, a
/// bucket read by another manager) verify what it hands on.
pub const TRAILER_LEN: usize = 8 + TRAILER_PAYLOAD;
/// Skippable-frame magic (0x184D2A50..=0x184D2A5F are skippable; pgbk uses 0x5E).
const TRAILER_MAGIC: u32 = 0x184D_2A5E;
const TRAILER_TAG: &[u8; 8] = b"pgbk-b3\0";
const TRAILER_PAYLOAD: usize = 8 + 8 + 32;

/// The length and checksum an object's trailer records for its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Uncompressed length in bytes.
    pub size: u64,
    /// BLAKE3 of the uncompressed content, hex.
    pub checksum: String,
}

/// The trailer frame for content of `size` bytes with BLAKE3 `hash`.
pub fn checksum_trailer(size: u64, hash: &blake3::Hash) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[0..4].copy_from_slice(&TRAILER_MAGIC.to_le_bytes());
    t[4..8].copy_from_slice(&(TRAILER_PAYLOAD as u32).to_le_bytes());
    t[8..16].copy_from_slice(TRAILER_TAG);
    t[16..24].copy_from_slice(&size.to_le_bytes());
    t[24..56].copy_from_slice(hash.as_bytes());
    t
}

/// Reads the trailer of a stored object, if it has one (objects stored before pgbk
/// wrote trailers have none: their checksum is only in the catalog).
pub fn read_trailer(file: &File) -> io::Result<Option<Recorded>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len < TRAILER_LEN as u64 {
        return Ok(None);
    }
    let mut t = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut t, len - TRAILER_LEN as u64)?;
    Ok(parse_trailer(&t))
}

/// The trailer at the end of `tail` (an object's last bytes), if there is one.
pub fn parse_trailer(tail: &[u8]) -> Option<Recorded> {
    let t = tail.get(tail.len().checked_sub(TRAILER_LEN)?..)?;
    let magic = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let frame = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    if magic != TRAILER_MAGIC || frame as usize != TRAILER_PAYLOAD || &t[8..16] != TRAILER_TAG {
        return None;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&t[16..24]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&t[24..56]);
    Some(Recorded {
        size: u64::from_le_bytes(size),
        checksum: blake3::Hash::from_bytes(hash).to_hex().to_string(),
    })
}

/// BLAKE3 of a byte slice, hex.
pub fn checksum(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Compresses `data` into `dest` atomically and durably (0600), chunks in parallel,
/// and ends the object with its [checksum trailer](checksum_trailer).
pub fn store_compressed(data: &[u8], dest: &Path, level: i32) -> io::Result<StoredFile> {
    let (object, stored) = compress_to_vec(data, level)?;
    let mut out = AtomicFile::create(dest)?;
    out.write_all(&object)?;
    out.commit()?;
    Ok(stored)
}

/// The stored object for `data` (zstd frames of [`CHUNK_SIZE`] compressed in parallel,
/// then the [checksum trailer](checksum_trailer)) and what it records, for a store
/// to put whole.
pub fn compress_to_vec(data: &[u8], level: i32) -> io::Result<(Vec<u8>, StoredFile)> {
    compress_to_vec_hashed(data, level, blake3::hash(data))
}

/// [`compress_to_vec`] for content whose BLAKE3 the caller already took (a WAL
/// segment checked against the catalog first): 16 MiB not hashed twice.
pub fn compress_to_vec_hashed(
    data: &[u8],
    level: i32,
    content: blake3::Hash,
) -> io::Result<(Vec<u8>, StoredFile)> {
    let frames: Vec<io::Result<Vec<u8>>> = data
        .par_chunks(CHUNK_SIZE.max(1))
        .map(|c| zstd::bulk::compress(c, level))
        .collect();
    let mut out = Vec::with_capacity(data.len() / 3 + TRAILER_LEN);
    if data.is_empty() {
        out.extend_from_slice(&zstd::bulk::compress(&[], level)?);
    }
    for frame in frames {
        out.extend_from_slice(&frame?);
    }
    out.extend_from_slice(&checksum_trailer(data.len() as u64, &content));
    let stored = StoredFile {
        size: data.len() as u64,
        stored_size: out.len() as u64,
        checksum: content.to_hex().to_string(),
        stored_checksum: blake3::hash(&out).to_hex().to_string(),
    };
    Ok((out, stored))
}

/// The stored object of a stream, produced as it is read: the input is cut into
/// [`CHUNK_SIZE`] chunks, a batch of them compressed in parallel (one per rayon
/// thread, so memory stays bounded whatever the size), the frames handed out in
/// order, then the checksum trailer. When the content's checksum was known in
/// advance and the input turns out different, the read fails before the trailer,
/// so a store never completes an object whose name would lie about it.
pub struct CompressingReader<R> {
    input: R,
    level: i32,
    expected: Option<String>,
    out: Vec<u8>,
    pos: usize,
    done: bool,
    size: u64,
    stored_size: u64,
    content: blake3::Hasher,
    object: blake3::Hasher,
    result: Option<StoredFile>,
}

impl<R: Read> CompressingReader<R> {
    /// Compresses `input` at `level`; `expected` is the content's BLAKE3, if known.
    pub fn new(input: R, level: i32, expected: Option<String>) -> CompressingReader<R> {
        CompressingReader {
            input,
            level,
            expected,
            out: Vec::new(),
            pos: 0,
            done: false,
            size: 0,
            stored_size: 0,
            content: blake3::Hasher::new(),
            object: blake3::Hasher::new(),
            result: None,
        }
    }

    /// What the object records, once it has been read to its end.
    pub fn stored(&self) -> Option<&StoredFile> {
        self.result.as_ref()
    }

    /// Fills `out` with the next batch of frames (or the trailer at the end).
    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.pos = 0;
        let batch = rayon::current_num_threads().max(1);
        let mut chunks = Vec::with_capacity(batch);
        let mut ended = false;
        while chunks.len() < batch {
            let mut buf = vec![0u8; CHUNK_SIZE];
            let n = read_full(&mut self.input, &mut buf)?;
            buf.truncate(n);
            if n < CHUNK_SIZE {
                ended = true;
                if n > 0 || (self.size == 0 && chunks.is_empty()) {
                    chunks.push(buf);
                }
                break;
            }
            chunks.push(buf);
        }
        let level = self.level;
        let frames: Vec<io::Result<Vec<u8>>> = chunks
            .par_iter()
            .map(|c| zstd::bulk::compress(c, level))
            .collect();
        for (chunk, frame) in chunks.iter().zip(frames) {
            let frame = frame?;
            self.content.update(chunk);
            self.size += chunk.len() as u64;
            self.object.update(&frame);
            self.stored_size += frame.len() as u64;
            self.out.extend_from_slice(&frame);
        }
        if ended {
            let content = self.content.finalize();
            let sum = content.to_hex().to_string();
            if let Some(want) = &self.expected {
                if *want != sum {
                    return Err(io::Error::other(format!(
                        "the content changed while it was stored (checksum {sum} instead of {want})"
                    )));
                }
            }
            let trailer = checksum_trailer(self.size, &content);
            self.object.update(&trailer);
            self.stored_size += trailer.len() as u64;
            self.out.extend_from_slice(&trailer);
            self.result = Some(StoredFile {
                size: self.size,
                stored_size: self.stored_size,
                checksum: sum,
                stored_checksum: self.object.finalize().to_hex().to_string(),
            });
            self.done = true;
        }
        Ok(())
    }
}

impl<R: Read> Read for CompressingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads a stored object to its end, checking its frames decompress and what its
/// trailer records: the content's length and checksum, and the object's own length
/// and BLAKE3 (what a catalog row about an object found already stored needs).
pub fn inspect_object(object: impl Read) -> io::Result<StoredFile> {
    struct Tee<R> {
        inner: R,
        hasher: blake3::Hasher,
        n: u64,
        tail: Vec<u8>,
    }
    impl<R: Read> Read for Tee<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.hasher.update(&buf[..n]);
            self.n += n as u64;
            self.tail.extend_from_slice(&buf[..n]);
            if self.tail.len() > 2 * TRAILER_LEN {
                self.tail.drain(..self.tail.len() - TRAILER_LEN);
            }
            Ok(n)
        }
    }
    let mut tee = Tee {
        inner: object,
        hasher: blake3::Hasher::new(),
        n: 0,
        tail: Vec::new(),
    };
    let (size, checksum) = hash_copy(zstd::stream::read::Decoder::new(&mut tee)?, io::sink())?;
    io::copy(&mut tee, &mut io::sink())?;
    if let Some(rec) = parse_trailer(&tee.tail) {
        if rec.size != size || rec.checksum != checksum {
            return Err(io::Error::other(format!(
                "damaged: its trailer records {} bytes with checksum {}, its frames hold {size} bytes with checksum {checksum}",
                rec.size, rec.checksum
            )));
        }
    }
    Ok(StoredFile {
        size,
        stored_size: tee.n,
        checksum,
        stored_checksum: tee.hasher.finalize().to_hex().to_string(),
    })
}

/// Reads until `buf` is full or the input ends; returns the bytes read (fewer than
/// `buf.len()` only at the end: chunks cut this way are whole).
pub fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies `src` to its end into `out`, returning the length and BLAKE3 of what went
/// through (`io::sink()` as `out` only hashes).
pub fn hash_copy(mut src: impl Read, mut out: impl Write) -> io::Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hasher.finalize().to_hex().to_string()))
}

/// Decompresses a stored file into a writer, returning the uncompressed length and checksum.
pub fn decompress_to(src: &Path, out: impl Write) -> io::Result<(u64, String)> {
    decompress_reader_to(File::open(src)?, out)
}

/// [`decompress_to`] for an object read as a stream (from any store).
pub fn decompress_reader_to(object: impl Read, out: impl Write) -> io::Result<(u64, String)> {
    hash_copy(
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(256 * 1024, object))?,
        out,
    )
}

/// Decompresses a whole stored file into memory (WAL segments: bounded by segment size).
pub fn read_decompressed(src: &Path) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    decompress_to(src, &mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_multi_frame_and_plain_zstd_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(CHUNK_SIZE * 2 + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        let dest = dir.path().join("x.zst");
        let s = store_compressed(&data, &dest, DEFAULT_LEVEL).unwrap();
        assert_eq!(s.size, data.len() as u64);
        assert_eq!(s.checksum, checksum(&data));
        // The object checksum is the BLAKE3 of the bytes on disk.
        assert_eq!(s.stored_checksum, checksum(&std::fs::read(&dest).unwrap()));
        assert_eq!(s.stored_size, std::fs::metadata(&dest).unwrap().len());
        assert_eq!(read_decompressed(&dest).unwrap(), data);
        // The standard streaming decoder reads concatenated frames too.
        let all = zstd::stream::decode_all(File::open(&dest).unwrap()).unwrap();
        assert_eq!(all, data);
        let empty = dir.path().join("e.zst");
        store_compressed(&[], &empty, 1).unwrap();
        assert!(read_decompressed(&empty).unwrap().is_empty());
    }

    #[test]
    fn the_streaming_writer_makes_the_same_object_and_refuses_changed_content() {
        for len in [0, 10, CHUNK_SIZE, CHUNK_SIZE * 3 + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
            let (whole, stored) = compress_to_vec(&data, DEFAULT_LEVEL).unwrap();
            let mut r = CompressingReader::new(&data[..], DEFAULT_LEVEL, Some(checksum(&data)));
            let mut streamed = Vec::new();
            r.read_to_end(&mut streamed).unwrap();
            assert_eq!(streamed, whole, "{len}");
            assert_eq!(r.stored(), Some(&stored));
            assert_eq!(inspect_object(&whole[..]).unwrap(), stored);
        }
        let mut r = CompressingReader::new(&b"abc"[..], 1, Some(checksum(b"abd")));
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        // A flipped byte in a frame is found by inspection, not reported as content.
        let (mut obj, _) = compress_to_vec(&[7u8; 5000], 1).unwrap();
        let (one, _) = compress_to_vec(&[8u8; 5000], 1).unwrap();
        obj.truncate(obj.len() - TRAILER_LEN);
        obj.extend_from_slice(&one[one.len() - TRAILER_LEN..]);
        assert!(inspect_object(&obj[..]).is_err());
    }
}
