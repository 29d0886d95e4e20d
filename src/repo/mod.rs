//! The repository on disk (DESIGN.md): one folder per server under `home`, plain files
//! readable with standard tools (`zstd -d`, `tar`), written crash-safely.

pub mod compress;
pub mod durable;
pub mod store;

use crate::error::IoResultExt;
use crate::types::{history_file_name, TimeLineId, WalSegment};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use store::posix::PosixStore;
use store::s3::S3Store;
use store::s3_settings::S3Settings;
use store::Store;

/// Where a server's repository lives: the local `home` (catalog, locks, the
/// streaming partial segment, `incoming/`, `errors/`) and the store its WAL and
/// backups go to, which is `home` itself or a bucket.
#[derive(Debug, Clone)]
pub struct Repository {
    home: PathBuf,
    store: Arc<dyn Store>,
    remote: bool,
}

impl Repository {
    /// A repository kept entirely in the folder `home` (keys are paths below it).
    pub fn local(home: &Path) -> Repository {
        Repository {
            home: home.to_path_buf(),
            store: Arc::new(PosixStore::new(home)),
            remote: false,
        }
    }

    /// The repository a server's configuration names: `s3` when it has
    /// `repository = s3://...`, else the local `home`.
    pub fn open(home: &Path, s3: Option<&S3Settings>) -> Result<Repository, store::StoreError> {
        match s3 {
            None => Ok(Repository::local(home)),
            Some(settings) => Ok(Repository {
                home: home.to_path_buf(),
                store: Arc::new(
                    S3Store::new(settings.clone()).map_err(store::StoreError::Settings)?,
                ),
                remote: true,
            }),
        }
    }

    /// The local folder (catalog, locks, spools).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Where WAL and backups are stored.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The store, for threads that outlive a borrow (parallel uploads).
    pub fn shared_store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// True when the store is not the local folder.
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// One server's part of the repository.
    pub fn server(&self, server: &str) -> ServerRepo {
        ServerRepo {
            root: self.home.join(server),
            server: server.to_string(),
            repository: self.clone(),
        }
    }
}

/// The folder of one server inside the repository, and the keys of its objects in
/// the store (relative to the store's root: `<server>/wals/...`, which is also the
/// path below `home` on the local backend).
#[derive(Debug, Clone)]
pub struct ServerRepo {
    root: PathBuf,
    server: String,
    repository: Repository,
}

impl ServerRepo {
    /// The folder `<home>/<server>` of a repository kept entirely in `home`.
    pub fn new(home: &Path, server: &str) -> ServerRepo {
        Repository::local(home).server(server)
    }

    /// The server's name.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The repository (and so the store) the server's WAL and backups are in.
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// Where the server's WAL and backups are stored.
    pub fn store(&self) -> &dyn Store {
        self.repository.store()
    }

    /// Key of a backup's object `rel` (`backup.json`, `data/<path>.zst`...).
    pub fn backup_key(&self, id: &str, rel: &str) -> String {
        format!("{}/backups/{id}/{rel}", self.server)
    }

    /// Key of an archived segment: `<server>/wals/<first 16 hex>/<segment>.zst`.
    pub fn segment_key(&self, seg: &WalSegment) -> String {
        self.segment_name_key(&seg.name())
    }

    /// [`ServerRepo::segment_key`] from a segment's name (24 hex digits) alone, for
    /// a reader that does not know the segment size yet.
    pub fn segment_name_key(&self, name: &str) -> String {
        let prefix = name.get(..16).unwrap_or(name);
        format!("{}/wals/{prefix}/{name}.zst", self.server)
    }

    /// Key of an archived partial segment (an old timeline's last one).
    pub fn partial_segment_key(&self, seg: &WalSegment) -> String {
        format!(
            "{}/wals/{}/{}.partial.zst",
            self.server,
            seg.prefix(),
            seg.name()
        )
    }

    /// Key of a timeline history file (stored as is).
    pub fn history_key(&self, tli: TimeLineId) -> String {
        format!("{}/wals/{}", self.server, history_file_name(tli))
    }

    /// A timeline's history file from the store; `None` when it is not there.
    pub fn read_history(&self, tli: TimeLineId) -> Result<Option<String>, store::StoreError> {
        use std::io::Read;
        let key = self.history_key(tli);
        let mut r = match self.store().get(&key) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = String::new();
        r.read_to_string(&mut text).at(&key)?;
        Ok(Some(text))
    }

    /// `<home>/<server>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Archived WAL: `wals/<first 16 hex>/<segment>.zst` and `wals/<tli>.history`.
    pub fn wals_dir(&self) -> PathBuf {
        self.root.join("wals")
    }

    /// receive-wal's in-progress `.partial` segment (and completed ones awaiting archiving).
    pub fn streaming_dir(&self) -> PathBuf {
        self.root.join("streaming")
    }

    /// put-wal's and archive_command's landing area.
    pub fn incoming_dir(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// Files that failed validation, kept with the reason.
    pub fn errors_dir(&self) -> PathBuf {
        self.root.join("errors")
    }

    /// One lock file per kind of job.
    pub fn lock_dir(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Base backups, one folder per backup id.
    pub fn backups_dir(&self) -> PathBuf {
        self.root.join("backups")
    }

    /// Where an archived segment is stored.
    pub fn segment_path(&self, seg: &WalSegment) -> PathBuf {
        self.wals_dir()
            .join(seg.prefix())
            .join(format!("{}.zst", seg.name()))
    }

    /// Where an archived partial segment (an old timeline's last one) is stored.
    pub fn partial_segment_path(&self, seg: &WalSegment) -> PathBuf {
        self.wals_dir()
            .join(seg.prefix())
            .join(format!("{}.partial.zst", seg.name()))
    }

    /// Where a timeline history file is stored (as is, uncompressed).
    pub fn history_path(&self, tli: TimeLineId) -> PathBuf {
        self.wals_dir().join(history_file_name(tli))
    }

    /// Creates the server's folders (0700) if missing.
    pub fn ensure_local_dirs(&self) -> std::io::Result<()> {
        for d in [self.streaming_dir(), self.lock_dir(), self.errors_dir()] {
            durable::create_dir_all_private(&d)?;
        }
        Ok(())
    }

    /// Creates the server's folders (0700) if missing, `wals/` included.
    pub fn ensure_dirs(&self) -> std::io::Result<()> {
        for d in [
            self.wals_dir(),
            self.streaming_dir(),
            self.lock_dir(),
            self.errors_dir(),
        ] {
            durable::create_dir_all_private(&d)?;
        }
        Ok(())
    }
}

/// Whether a string has the shape of a backup id.
pub fn is_backup_id(s: &str) -> bool {
    s.len() == 15
        && s.as_bytes()[8] == b'T'
        && s.bytes()
            .enumerate()
            .all(|(i, b)| i == 8 || b.is_ascii_digit())
}

/// A relative path from `files.jsonl` or a manifest, made safe: `None` for an
/// absolute path, a `..` component or a NUL byte; `.` components dropped (so `""`
/// and `"."` are the root). Writers and readers of a backup share this one check.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    if path.contains('\0') {
        return None;
    }
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir
            | std::path::Component::RootDir
            | std::path::Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_on_the_local_store_are_todays_paths() {
        let home = Path::new("/srv/pgbk");
        let r = ServerRepo::new(home, "pg1");
        let seg = WalSegment {
            tli: TimeLineId(2),
            segno: 0x1_0000_0003,
            seg_size: 16 << 20,
        };
        assert_eq!(home.join(r.segment_key(&seg)), r.segment_path(&seg));
        assert_eq!(
            home.join(r.partial_segment_key(&seg)),
            r.partial_segment_path(&seg)
        );
        assert_eq!(
            home.join(r.history_key(TimeLineId(2))),
            r.history_path(TimeLineId(2))
        );
    }
}
