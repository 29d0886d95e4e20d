//! A tar stream written entry by entry into any `Write` (the stdin of a remote
//! `tar -x`): headers come from the `tar` crate (GNU format, long names and link
//! targets as GNU `L`/`K` entries), content is pushed through `Write` as it is
//! decompressed, so no entry is ever held whole in memory.

use std::io::{self, Write};
use tar::{EntryType, Header};

const BLOCK: u64 = 512;

/// A tar archive being written.
pub struct TarStream<W: Write> {
    out: W,
    /// Bytes of content the current file still expects.
    remaining: u64,
    /// Padding owed after the current file's content.
    pad: u64,
}

fn set_name_field(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field.iter_mut().for_each(|b| *b = 0);
    field[..n].copy_from_slice(&bytes[..n]);
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

impl<W: Write> TarStream<W> {
    /// Starts an archive.
    pub fn new(out: W) -> TarStream<W> {
        TarStream {
            out,
            remaining: 0,
            pad: 0,
        }
    }

    fn long(&mut self, kind: EntryType, value: &[u8]) -> io::Result<()> {
        let mut h = Header::new_gnu();
        set_name_field(&mut h.as_old_mut().name, b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(value.len() as u64 + 1);
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(value)?;
        self.out.write_all(&[0])?;
        let pad = padding(value.len() as u64 + 1);
        self.out.write_all(&[0u8; BLOCK as usize][..pad as usize])
    }

    fn header(
        &mut self,
        path: &str,
        kind: EntryType,
        mode: u32,
        mtime: i64,
        size: u64,
        link: Option<&str>,
    ) -> io::Result<()> {
        if self.remaining != 0 {
            return Err(io::Error::other(format!(
                "tar: a new entry '{path}' while the previous file still expects {} bytes",
                self.remaining
            )));
        }
        self.out
            .write_all(&[0u8; BLOCK as usize][..self.pad as usize])?;
        self.pad = 0;
        let mut h = Header::new_gnu();
        let name = path.as_bytes();
        if name.len() > 100 {
            self.long(EntryType::GNULongName, name)?;
        }
        set_name_field(&mut h.as_old_mut().name, name);
        if let Some(target) = link {
            let t = target.as_bytes();
            if t.len() > 100 {
                self.long(EntryType::GNULongLink, t)?;
            }
            set_name_field(&mut h.as_old_mut().linkname, t);
        }
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_mtime(mtime.max(0) as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        h.set_cksum();
        self.out.write_all(h.as_bytes())
    }

    /// A directory (`""` or `"."` is the archive's root, `./`).
    pub fn dir(&mut self, path: &str, mode: u32, mtime: i64) -> io::Result<()> {
        let p = if path.is_empty() || path == "." {
            "./".to_string()
        } else {
            format!("{}/", path.trim_end_matches('/'))
        };
        self.header(&p, EntryType::Directory, mode, mtime, 0, None)
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str, mtime: i64) -> io::Result<()> {
        self.header(path, EntryType::Symlink, 0o777, mtime, 0, Some(target))
    }

    /// Starts a regular file of exactly `size` bytes: write them next, through
    /// `Write`; writing more, or starting the next entry with fewer, is an error.
    pub fn file(&mut self, path: &str, mode: u32, mtime: i64, size: u64) -> io::Result<()> {
        self.header(path, EntryType::Regular, mode, mtime, size, None)?;
        self.remaining = size;
        self.pad = padding(size);
        Ok(())
    }

    /// A whole small file.
    pub fn small_file(&mut self, path: &str, mode: u32, mtime: i64, data: &[u8]) -> io::Result<()> {
        self.file(path, mode, mtime, data.len() as u64)?;
        self.write_all(data)
    }

    /// The writer, as it is (an abandoned archive).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Bytes the current file still expects.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Ends the archive (two zero blocks) and gives the writer back, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        if self.remaining != 0 {
            return Err(io::Error::other(format!(
                "tar: the archive ends while a file still expects {} bytes",
                self.remaining
            )));
        }
        self.out
            .write_all(&[0u8; BLOCK as usize][..self.pad as usize])?;
        self.out.write_all(&[0u8; 2 * BLOCK as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for TarStream<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.remaining {
            return Err(io::Error::other(format!(
                "tar: {} bytes more than the file's recorded size",
                buf.len() as u64 - self.remaining
            )));
        }
        let n = self.out.write(buf)?;
        self.remaining -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_tar_crate_reads_back_what_was_written() {
        let long = format!("base/{}/file", "d".repeat(120));
        let target = format!("/srv/{}", "t".repeat(150));
        let mut t = TarStream::new(Vec::new());
        t.dir("", 0o700, 1_700_000_000).unwrap();
        t.dir("base", 0o700, 1).unwrap();
        t.file("PG_VERSION", 0o600, 2, 3).unwrap();
        t.write_all(b"15\n").unwrap();
        t.small_file(&long, 0o640, 3, &[7u8; 1000]).unwrap();
        t.symlink("pg_tblspc/16390", &target, 4).unwrap();
        t.file("empty", 0o600, 5, 0).unwrap();
        assert!(t.write_all(b"x").is_err());
        t.file("short", 0o600, 5, 10).unwrap();
        t.write_all(b"abc").unwrap();
        assert!(t.dir("next", 0o700, 0).is_err());
        t.write_all(&[0u8; 7]).unwrap();
        let bytes = t.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((path, mode, data.len(), link));
        }
        assert_eq!(
            seen,
            [
                ("./".to_string(), 0o700, 0, None),
                ("base/".into(), 0o700, 0, None),
                ("PG_VERSION".into(), 0o600, 3, None),
                (long.clone(), 0o640, 1000, None),
                ("pg_tblspc/16390".into(), 0o777, 0, Some(target.clone())),
                ("empty".into(), 0o600, 0, None),
                ("short".into(), 0o600, 10, None),
            ]
        );
    }
}
