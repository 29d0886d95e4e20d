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
    let magic = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    let frame = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    if magic != TRAILER_MAGIC || frame as usize != TRAILER_PAYLOAD || &t[8..16] != TRAILER_TAG {
        return Ok(None);
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&t[16..24]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&t[24..56]);
    Ok(Some(Recorded {
        size: u64::from_le_bytes(size),
        checksum: blake3::Hash::from_bytes(hash).to_hex().to_string(),
    }))
}

/// BLAKE3 of a byte slice, hex.
pub fn checksum(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Compresses `data` into `dest` atomically and durably (0600), chunks in parallel,
/// and ends the object with its [checksum trailer](checksum_trailer).
pub fn store_compressed(data: &[u8], dest: &Path, level: i32) -> io::Result<StoredFile> {
    let frames: Vec<io::Result<Vec<u8>>> = data
        .par_chunks(CHUNK_SIZE.max(1))
        .map(|c| zstd::bulk::compress(c, level))
        .collect();
    let mut out = AtomicFile::create(dest)?;
    let mut stored_size = 0u64;
    let mut object = blake3::Hasher::new();
    if data.is_empty() {
        let frame = zstd::bulk::compress(&[], level)?;
        out.write_all(&frame)?;
        object.update(&frame);
        stored_size += frame.len() as u64;
    }
    for frame in frames {
        let frame = frame?;
        out.write_all(&frame)?;
        object.update(&frame);
        stored_size += frame.len() as u64;
    }
    let content = blake3::hash(data);
    let trailer = checksum_trailer(data.len() as u64, &content);
    out.write_all(&trailer)?;
    object.update(&trailer);
    stored_size += trailer.len() as u64;
    out.commit()?;
    Ok(StoredFile {
        size: data.len() as u64,
        stored_size,
        checksum: content.to_hex().to_string(),
        stored_checksum: object.finalize().to_hex().to_string(),
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
    let file = File::open(src)?;
    hash_copy(
        zstd::stream::read::Decoder::with_buffer(BufReader::new(file))?,
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
}
