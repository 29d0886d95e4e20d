//! `show-backup`: everything about one backup — all of backup.json, plus duration,
//! throughput, compression ratio, the WAL range it needs and whether it is archived.

use super::describe::{show_time, status_text};
use super::{Context, ExitCode};
use crate::backup::wal_range::{missing_segments, required_segments};
use crate::backup::BackupInfo;
use crate::output::{human_bytes, human_seconds, Report};
use crate::wal::WalSegment;
use anyhow::Result;
use serde::Serialize;
use std::io::Write;

/// The WAL a backup needs and what of it the archive holds.
#[derive(Serialize)]
struct WalNeeds {
    /// First segment needed.
    first: Option<String>,
    /// Last segment needed.
    last: Option<String>,
    /// Number of segments needed.
    segments: usize,
    /// All of them are archived (`null` while the range is unknown).
    present: Option<bool>,
    /// Those that are not.
    missing: Vec<String>,
}

#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    info: &'a BackupInfo,
    duration_seconds: Option<f64>,
    throughput_bytes_per_second: Option<f64>,
    compression_ratio: Option<f64>,
    /// `full` or `incremental`.
    backup_type: &'static str,
    /// The chain a restore of this backup reads: the full backup first, this one last.
    chain: Vec<String>,
    /// Stored bytes of the whole chain.
    chain_stored_bytes: u64,
    /// Bytes this backup added to the repository (its own stored bytes).
    added_bytes: u64,
    wal: WalNeeds,
}

/// Runs the verb.
pub fn run(ctx: &Context, server: &str, wanted: &str) -> Result<ExitCode> {
    let (catalog, b) = super::find_backup(ctx, server, wanted)?;
    let repo = super::server_repo(ctx, server)?;
    let need = required_segments(&b, &repo);
    let missing: Vec<String> = missing_segments(&b, &repo, &catalog)?
        .iter()
        .map(WalSegment::name)
        .collect();
    let all = catalog.backups(server)?;
    let mut chain: Vec<String> = crate::backup::chain::ancestors(&b, &all)
        .map(|a| a.iter().map(|p| p.backup_id.clone()).collect())
        .unwrap_or_default();
    chain.reverse();
    chain.push(b.backup_id.clone());
    let duration = b
        .end_time
        .map(|end| (end - b.begin_time).num_milliseconds().max(0) as f64 / 1000.0);
    let shown = Shown {
        info: &b,
        duration_seconds: duration,
        throughput_bytes_per_second: duration
            .filter(|d| *d > 0.0)
            .map(|d| b.size_bytes as f64 / d),
        compression_ratio: (b.stored_bytes > 0)
            .then(|| b.size_bytes as f64 / b.stored_bytes as f64),
        backup_type: b.backup_type(),
        chain,
        chain_stored_bytes: crate::backup::chain::stored_bytes(&b, &all),
        added_bytes: b.stored_bytes,
        wal: WalNeeds {
            first: need.first().map(WalSegment::name),
            last: need.last().map(WalSegment::name),
            segments: need.len(),
            present: (!need.is_empty()).then_some(missing.is_empty()),
            missing,
        },
    };
    ctx.emit(&shown)?;
    Ok(0)
}

impl Report for Shown<'_> {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let (shown, b, duration) = (self, self.info, self.duration_seconds);
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        writeln!(w, "Backup {}:", b.backup_id)?;
        writeln!(w, "  Server Name            : {}", b.server)?;
        writeln!(w, "  Name                   : {}", opt(b.name.clone()))?;
        writeln!(w, "  Status                 : {}", status_text(b))?;
        writeln!(w, "  PostgreSQL Version     : {}", b.server_version)?;
        writeln!(w, "  System Id              : {}", b.system_id)?;
        writeln!(w, "  Backup Method          : {}", b.method)?;
        writeln!(w, "  Backup Type            : {}", b.backup_type())?;
        if let Some(parent) = &b.parent {
            writeln!(w, "  Parent Backup          : {parent}")?;
            if shown.chain.len() < 2 || shown.chain.get(shown.chain.len() - 2) != Some(parent) {
                writeln!(w, "  Chain                  : broken (a backup it is built on is missing or not DONE)")?;
            } else {
                writeln!(
                    w,
                    "  Chain                  : {} ({} backups, {} stored)",
                    shown.chain.join(" <- "),
                    shown.chain.len(),
                    human_bytes(shown.chain_stored_bytes)
                )?;
            }
        }
        writeln!(
            w,
            "  Keep                   : {}",
            b.keep
                .map(|k| k.to_string())
                .unwrap_or_else(|| "nokeep".into())
        )?;
        if let Some(pid) = b.pid {
            writeln!(w, "  Taken by pid           : {pid}")?;
        }
        if !b.tablespaces.is_empty() {
            writeln!(w, "  Tablespaces:")?;
            for t in &b.tablespaces {
                writeln!(
                    w,
                    "    {} (oid {}): {}",
                    t.name.as_deref().unwrap_or("-"),
                    t.oid,
                    t.location
                )?;
            }
        }
        writeln!(w)?;
        writeln!(w, "  Base backup information:")?;
        writeln!(
            w,
            "    Size                 : {}",
            human_bytes(b.size_bytes)
        )?;
        writeln!(
            w,
            "    Stored size          : {}",
            human_bytes(b.stored_bytes)
        )?;
        if b.parent.is_some() {
            writeln!(
                w,
                "    Added by this backup : {}",
                human_bytes(b.stored_bytes)
            )?;
        }
        writeln!(
            w,
            "    Compression ratio    : {}",
            opt(shown.compression_ratio.map(|r| format!("{r:.2}")))
        )?;
        writeln!(w, "    Files                : {}", b.file_count)?;
        if let (Some(files), Some(bytes)) = (b.transferred_files, b.transferred_bytes) {
            writeln!(
                w,
                "    Transferred (rsync)  : {} in {files} files",
                human_bytes(bytes)
            )?;
        }
        if let Some(reused) = b.reused_bytes {
            if b.method == "rsync" {
                writeln!(w, "    Reused (hard links)  : {}", human_bytes(reused))?;
            } else {
                writeln!(w, "    Reused (resumed)     : {}", human_bytes(reused))?;
            }
        }
        if let Some(read) = b.sql_read_bytes {
            writeln!(w, "    Read over SQL        : {}", human_bytes(read))?;
        }
        writeln!(w, "    Timeline             : {}", b.timeline)?;
        if let Some(t) = b.end_timeline.filter(|t| *t != b.timeline) {
            writeln!(w, "    End timeline         : {t}")?;
        }
        writeln!(
            w,
            "    WAL segment size     : {}",
            human_bytes(b.wal_segment_size)
        )?;
        writeln!(w, "    Begin WAL            : {}", opt(b.begin_wal.clone()))?;
        writeln!(w, "    End WAL              : {}", opt(b.end_wal.clone()))?;
        writeln!(
            w,
            "    Begin LSN            : {}",
            opt(b.begin_lsn.map(|l| l.to_string()))
        )?;
        writeln!(
            w,
            "    End LSN              : {}",
            opt(b.end_lsn.map(|l| l.to_string()))
        )?;
        writeln!(w, "    Begin time           : {}", show_time(b.begin_time))?;
        writeln!(
            w,
            "    End time             : {}",
            opt(b.end_time.map(show_time))
        )?;
        writeln!(
            w,
            "    Duration             : {}",
            opt(duration.map(human_seconds))
        )?;
        writeln!(
            w,
            "    Throughput           : {}",
            opt(shown
                .throughput_bytes_per_second
                .map(|t| format!("{}/s", human_bytes(t as u64))))
        )?;
        writeln!(
            w,
            "    Checksums            : {} (files.jsonl)",
            b.checksum_algorithm
        )?;
        writeln!(
            w,
            "    backup_manifest      : {}",
            if b.has_manifest { "stored" } else { "none" }
        )?;
        writeln!(w)?;
        writeln!(w, "  WAL information:")?;
        let wn = &shown.wal;
        match (&wn.first, &wn.last) {
            (Some(first), Some(last)) => {
                writeln!(
                    w,
                    "    Needed               : {} segment(s), {first} to {last}",
                    wn.segments
                )?;
                if wn.missing.is_empty() {
                    writeln!(w, "    Archived             : all")?;
                } else {
                    writeln!(
                        w,
                        "    Archived             : no, {} missing: {}",
                        wn.missing.len(),
                        wn.missing.join(", ")
                    )?;
                }
            }
            _ => writeln!(
                w,
                "    Needed               : unknown (the backup has no WAL range)"
            )?,
        }
        if let Some(e) = &b.error {
            writeln!(w)?;
            writeln!(w, "  Error                  : {e}")?;
        }
        Ok(())
    }
}
