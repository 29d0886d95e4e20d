//! `list-files`: the stored files of a backup (`--target data`), the archived WAL
//! segments it needs (`wal`), or both (`full`, and `standalone`, which is the same:
//! the backup plus the WAL it needs). Streams files.jsonl: never the whole list in
//! memory, whatever the number of files.

use super::{Context, ExitCode};
use crate::backup::wal_range::required_segments;
use crate::backup::{BackupDir, BackupStatus, FileEntry};
use crate::output::Format;
use anyhow::{bail, Result};
use serde::Serialize;
use std::io::{BufWriter, Write};

#[derive(Serialize)]
struct DataLine<'a> {
    #[serde(flatten)]
    entry: &'a FileEntry,
    /// Where the object is, absolute (files only).
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_path: Option<String>,
}

#[derive(Serialize)]
struct WalLine {
    kind: &'static str,
    name: String,
    stored_path: String,
    present: bool,
}

/// Writes JSON array items (or text lines) as they come.
struct Sink<W: Write> {
    out: W,
    json: bool,
    count: usize,
}

impl<W: Write> Sink<W> {
    fn item<T: Serialize>(&mut self, value: &T, text: &str) -> Result<()> {
        if self.json {
            let sep = if self.count == 0 { "[\n  " } else { ",\n  " };
            let v = serde_json::to_string(value)?;
            write!(self.out, "{sep}{v}")?;
        } else {
            writeln!(self.out, "{text}")?;
        }
        self.count += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if self.json {
            let end = if self.count == 0 { "[]\n" } else { "\n]\n" };
            self.out.write_all(end.as_bytes())?;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// Runs the verb.
pub fn run(ctx: &Context, server: &str, wanted: &str, target: &str) -> Result<ExitCode> {
    let (_, b) = super::find_backup(ctx, server, wanted)?;
    let repo = super::server_repo(ctx, server)?;
    let dir = BackupDir::new(&repo, &b.backup_id);
    let (data, wal) = match target {
        "data" => (true, false),
        "wal" => (false, true),
        _ => (true, true),
    };
    if data && b.status == BackupStatus::Failed {
        bail!(
            "server '{server}': backup {} is FAILED ({}); its files were removed",
            b.backup_id,
            b.error.as_deref().unwrap_or("no reason recorded")
        );
    }
    if data && b.status == BackupStatus::Started {
        bail!(
            "server '{server}': backup {} is still being taken; its file list is not written yet",
            b.backup_id
        );
    }
    let mut sink = Sink {
        out: BufWriter::new(std::io::stdout().lock()),
        json: ctx.format == Format::Json,
        count: 0,
    };
    if data {
        // Bundles already listed (a few per GiB of small files).
        let mut bundles_listed = std::collections::HashSet::new();
        for entry in dir.files()? {
            let entry = entry?;
            // A file reused by reference is stored in the backup that first stored it.
            let holder = dir.holder(&entry)?;
            let stored = entry.object.as_deref().map(|o| holder.describe(o));
            // Text lists what a copy needs: the stored object of each regular file,
            // each bundle once (JSON has each file with its offset and length).
            let text = stored.clone().unwrap_or_default();
            let repeated = entry.offset.is_some()
                && entry
                    .object
                    .as_ref()
                    .is_some_and(|o| !bundles_listed.insert(holder.describe(o)));
            if sink.json || (stored.is_some() && !repeated) {
                sink.item(
                    &DataLine {
                        entry: &entry,
                        stored_path: stored,
                    },
                    &text,
                )?;
            }
        }
    }
    if wal {
        for seg in required_segments(&b, &repo) {
            let path = repo.segment_path(&seg);
            let line = WalLine {
                kind: "wal",
                name: seg.name(),
                stored_path: path.display().to_string(),
                present: path.exists(),
            };
            let text = line.stored_path.clone();
            sink.item(&line, &text)?;
        }
    }
    sink.finish()?;
    Ok(0)
}
