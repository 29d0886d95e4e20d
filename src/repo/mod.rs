//! The repository on disk (DESIGN.md): one folder per server under `home`, plain files
//! readable with standard tools (`zstd -d`, `tar`), written crash-safely.

pub mod compress;
pub mod durable;
pub mod store;

use crate::wal::{history_file_name, TimeLineId, WalSegment};
use std::path::{Path, PathBuf};

/// The folder of one server inside the repository.
#[derive(Debug, Clone)]
pub struct ServerRepo {
    root: PathBuf,
}

impl ServerRepo {
    /// The folder `<home>/<server>`.
    pub fn new(home: &Path, server: &str) -> ServerRepo {
        ServerRepo {
            root: home.join(server),
        }
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
