//! The local backend: objects are files under a root folder, the key being the
//! relative path (so a repository written before the store existed reads the same).
//! Durability as everywhere in pgbk: temp name, fsync, then a create-only `link`
//! or a `rename`, then fsync the directory. Files 0600, folders 0700.

use super::{check_key, check_prefix, ObjectMeta, PutMode, PutOutcome, Store, StoreError};
use crate::error::{IoError, IoResultExt};
use crate::repo::durable::{create_dir_all_private, fsync_dir};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the temporary names of puts running at once in one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A folder holding the repository.
#[derive(Debug, Clone)]
pub struct PosixStore {
    root: PathBuf,
}

impl PosixStore {
    /// The store rooted at `root` (created on the first put).
    pub fn new(root: &Path) -> PosixStore {
        PosixStore {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// Opens the object's file; a missing one is NotFound.
    fn open(&self, key: &str) -> Result<(File, PathBuf), StoreError> {
        let path = self.path(key)?;
        match File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound {
                key: key.to_string(),
                location: self.location(),
            }),
            Err(e) => Err(IoError::new(&path, e).into()),
        }
    }

    /// Writes `fill`'s bytes to a fresh temporary file beside `dest`, fsynced;
    /// returns its path and the content's BLAKE3.
    fn write_temp(
        dest: &Path,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(PathBuf, String), StoreError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        create_dir_all_private(dir).at(dir)?;
        let name = dest.file_name().map(|n| n.to_string_lossy().to_string());
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{}",
            name.unwrap_or_default(),
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut w = HashingWriter {
                inner: io::BufWriter::with_capacity(256 * 1024, file),
                hasher: blake3::Hasher::new(),
            };
            fill(&mut w)?;
            let file = w.inner.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(w.hasher.finalize().to_hex().to_string())
        })();
        match result {
            Ok(hash) => Ok((tmp, hash)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(IoError::new(tmp, e).into())
            }
        }
    }

    fn commit(
        &self,
        key: &str,
        dest: &Path,
        tmp: &Path,
        hash: &str,
        mode: PutMode,
    ) -> Result<PutOutcome, StoreError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let outcome = match mode {
            PutMode::Overwrite => {
                fs::rename(tmp, dest).at(dest)?;
                PutOutcome::Stored
            }
            PutMode::Create => {
                let linked = fs::hard_link(tmp, dest);
                let _ = fs::remove_file(tmp);
                match linked {
                    Ok(()) => PutOutcome::Stored,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let existing = hash_file(dest).at(dest)?;
                        if existing != hash {
                            return Err(StoreError::Conflict {
                                key: key.to_string(),
                                location: self.location(),
                            });
                        }
                        return Ok(PutOutcome::AlreadyIdentical);
                    }
                    Err(e) => return Err(IoError::new(dest, e).into()),
                }
            }
        };
        fsync_dir(dir).at(dir)?;
        Ok(outcome)
    }
}

/// Hex BLAKE3 of a file's bytes, read in pieces.
fn hash_file(path: &Path) -> io::Result<String> {
    let mut h = blake3::Hasher::new();
    io::copy(&mut File::open(path)?, &mut h)?;
    Ok(h.finalize().to_hex().to_string())
}

struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Store for PosixStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn describe(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> Result<PutOutcome, StoreError> {
        let dest = self.path(key)?;
        let (tmp, hash) = Self::write_temp(&dest, &mut |w| w.write_all(data))?;
        self.commit(key, &dest, &tmp, &hash, mode)
    }

    fn put_reader(
        &self,
        key: &str,
        reader: &mut dyn Read,
        mode: PutMode,
    ) -> Result<PutOutcome, StoreError> {
        let dest = self.path(key)?;
        let (tmp, hash) = Self::write_temp(&dest, &mut |w| io::copy(reader, w).map(|_| ()))?;
        self.commit(key, &dest, &tmp, &hash, mode)
    }

    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        Ok(Box::new(self.open(key)?.0))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let (mut f, path) = self.open(key)?;
        let mut out = Vec::new();
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.take(len).read_to_end(&mut out))
            .at(&path)?;
        Ok(out)
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path(key)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                modified: m.modified().ok(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IoError::new(&path, e).into()),
        }
    }

    fn list<'a>(
        &'a self,
        prefix: &str,
    ) -> Box<dyn Iterator<Item = Result<ObjectMeta, StoreError>> + 'a> {
        if let Err(e) = check_prefix(prefix) {
            return Box::new(std::iter::once(Err(e)));
        }
        let (dir, rest) = match prefix.rfind('/') {
            Some(i) => (&prefix[..i + 1], &prefix[i + 1..]),
            None => ("", prefix),
        };
        Box::new(Walk {
            store: self,
            stack: vec![Level::Pending {
                key: dir.to_string(),
                filter: rest.to_string(),
            }],
        })
    }

    fn list_folders(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        check_prefix(folder)?;
        if !folder.is_empty() && !folder.ends_with('/') {
            return Err(StoreError::InvalidKey(folder.to_string()));
        }
        let dir = self.root.join(folder);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(IoError::new(&dir, e).into()),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.at(&dir)?;
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') && e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for key in keys {
            let path = self.path(key)?;
            match fs::remove_file(&path) {
                Ok(()) => {
                    if let Some(d) = path.parent() {
                        if !dirs.iter().any(|x| x == d) {
                            dirs.push(d.to_path_buf());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(IoError::new(&path, e).into()),
            }
        }
        for d in dirs {
            fsync_dir(&d).at(&d)?;
        }
        Ok(())
    }
}

/// One folder of the depth-first listing: not read yet, or its entries left to visit
/// (sorted so that the walk yields keys in byte order: a folder sorts as `name/`).
enum Level {
    Pending { key: String, filter: String },
    Entries(std::vec::IntoIter<(String, bool)>),
}

struct Walk<'a> {
    store: &'a PosixStore,
    stack: Vec<Level>,
}

impl Iterator for Walk<'_> {
    type Item = Result<ObjectMeta, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.stack.pop()? {
                Level::Pending { key, filter } => {
                    let dir = self.store.root.join(&key);
                    let rd = match fs::read_dir(&dir) {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Some(Err(IoError::new(&dir, e).into())),
                    };
                    let mut entries = Vec::new();
                    for e in rd {
                        let e = match e {
                            Ok(e) => e,
                            Err(err) => return Some(Err(IoError::new(&dir, err).into())),
                        };
                        let name = e.file_name().to_string_lossy().to_string();
                        // Temporary names of puts in progress are not objects.
                        if name.starts_with('.') || !name.starts_with(filter.as_str()) {
                            continue;
                        }
                        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                        entries.push((format!("{key}{name}"), is_dir));
                    }
                    entries.sort_by(|a, b| {
                        let k =
                            |(n, d): &(String, bool)| if *d { format!("{n}/") } else { n.clone() };
                        k(a).cmp(&k(b))
                    });
                    self.stack.push(Level::Entries(entries.into_iter()));
                }
                Level::Entries(mut it) => {
                    let Some((key, is_dir)) = it.next() else {
                        continue;
                    };
                    self.stack.push(Level::Entries(it));
                    if is_dir {
                        self.stack.push(Level::Pending {
                            key: format!("{key}/"),
                            filter: String::new(),
                        });
                        continue;
                    }
                    return Some(match self.store.stat(&key) {
                        Ok(Some(m)) => Ok(m),
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    });
                }
            }
        }
    }
}
