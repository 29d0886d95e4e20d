//! Recovery: `recover` (a backup's files decompressed in parallel into a destination,
//! tablespaces relocated, the WAL recovery needs made available and PostgreSQL's
//! recovery settings written) and `get-wal` (the `restore_command` side).
//!
//! `recover` works in two steps, so a refusal never touches the destination:
//! [`prepare`] checks everything (backup, target, archive, destination, tablespaces)
//! and returns a [`RecoverPlan`]; [`execute`] carries it out.

pub mod clash;
pub mod combine;
pub mod destination;
pub mod files;
pub mod get_wal;
pub mod remote;
pub mod tar_stream;
pub mod target;
pub mod wal;

pub use target::{RecoverySettings, RecoveryTarget, TargetAction, TargetTimeline};

use crate::backup::lifecycle::current;
use crate::backup::{BackupDir, BackupError, BackupInfo, BackupStatus};
use crate::catalog::{Catalog, CatalogError, Measurement};
use crate::error::{IoError, IoResultExt};
use crate::progress::Progress;
use crate::repo::{Repository, ServerRepo};
use chrono::Utc;
use destination::Owner;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Why a recovery (or get-wal) could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Reading the backup's metadata failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The request cannot be honoured as it stands; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The arguments are wrong (exit code 2); nothing was changed.
    #[error("{0}")]
    Usage(String),
    /// The stored backup or WAL does not read back as recorded.
    #[error("{0}")]
    Corrupt(String),
    /// get-wal: the file could not be handed on whole (its destination failed).
    #[error("{0}")]
    Delivery(String),
    /// get-wal: the repository does not hold the WAL file asked for.
    #[error("{0}")]
    NotFound(String),
    /// The SSH connection to a remote destination failed.
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
}

/// Where PostgreSQL gets its WAL from during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalSource {
    /// The segments recovery needs are decompressed into `<destination>/pgbk_wal/`
    /// and `restore_command` copies them from there (Barman's default).
    Copy,
    /// `restore_command` runs `pgbk get-wal`: `command` is the shell-quoted
    /// `<pgbk binary> -c <config>` prefix.
    GetWal {
        /// `<absolute pgbk binary> -c <absolute config file>`, shell-quoted.
        command: String,
        /// Also serve receive-wal's in-progress `.partial` segment.
        partial: bool,
    },
}

/// Everything `recover` was asked to do.
#[derive(Debug, Clone)]
pub struct RecoverRequest {
    /// Server name.
    pub server: String,
    /// Backup id, name, `latest`/`last`, `oldest`/`first`, or `auto` (the newest DONE
    /// backup that ended before the target).
    pub backup_id: String,
    /// The data directory to create (or, with `delta`, to bring up to date).
    pub destination: PathBuf,
    /// Where recovery stops; `None` replays all archived WAL.
    pub target: Option<RecoveryTarget>,
    /// `recovery_target_inclusive = false`.
    pub exclusive: bool,
    /// `recovery_target_timeline`.
    pub target_tli: Option<TargetTimeline>,
    /// `recovery_target_action`.
    pub target_action: Option<TargetAction>,
    /// Tablespace relocations: name (or oid) and new location.
    pub tablespaces: Vec<(String, PathBuf)>,
    /// `standby.signal` instead of `recovery.signal`.
    pub standby_mode: bool,
    /// Where WAL comes from.
    pub wal: WalSource,
    /// Decompression threads.
    pub jobs: usize,
    /// The destination holds an older copy: rewrite only what differs.
    pub delta: bool,
    /// The destination is on this host (reached over SSH); `None`: this machine.
    pub remote: Option<crate::ssh::SshTarget>,
    /// Settings appended after the recovery settings (`--port`, `--set`).
    pub overrides: Vec<(String, String)>,
    /// Where the source PostgreSQL listens (`host`, `port` of its conninfo), to
    /// warn when the copy's settings would collide with it.
    pub source: Option<(String, u16)>,
}

/// One tablespace of the backup and where it is restored.
#[derive(Debug, Clone, Serialize)]
pub struct TablespacePlan {
    /// `pg_tablespace.oid`.
    pub oid: u32,
    /// Its name, when the backup recorded it.
    pub name: Option<String>,
    /// Where it lived on the server.
    pub original: PathBuf,
    /// Where it is restored.
    pub location: PathBuf,
}

/// A checked recovery, ready to run.
#[derive(Debug, Clone)]
pub struct RecoverPlan {
    /// The request.
    pub request: RecoverRequest,
    /// The chosen backup.
    pub info: BackupInfo,
    /// Its folder.
    pub dir: BackupDir,
    /// An incremental backup's chain: the backups it is built on, parent first,
    /// the full backup last (empty for a full backup).
    pub ancestors: Vec<(BackupDir, BackupInfo)>,
    /// The server's repository folder.
    pub repo: ServerRepo,
    /// The destination, absolute.
    pub destination: PathBuf,
    /// Restored files get this owner (root restoring into an existing directory).
    pub owner: Owner,
    /// Every tablespace with its (relocated) location.
    pub tablespaces: Vec<TablespacePlan>,
    /// With [`WalSource::Copy`]: the WAL to copy into `pgbk_wal/`.
    pub wal: Option<wal::WalPlan>,
    /// A WAL segment missing where later ones are archived (see [`wal::WalPlan::hole`]).
    pub wal_hole: Option<String>,
    /// What goes into postgresql.auto.conf.
    pub settings: RecoverySettings,
}

impl RecoverPlan {
    /// The index an incremental backup's restore rebuilds its relation files from.
    pub fn chain(&self) -> Result<Option<combine::Chain>, RestoreError> {
        if self.ancestors.is_empty() {
            return Ok(None);
        }
        let chain = combine::Chain::build(&self.dir, &self.info, self.ancestors.clone())?;
        if chain.dropped_maps() > 0 {
            tracing::warn!(
                backup = %self.info.backup_id,
                "the visibility map of {} relation(s) changed in a PostgreSQL incremental is left out (PostgreSQL 17/18 incrementals can hold stale visibility map bits); VACUUM rebuilds it (vacuumdb --all after the recovery)",
                chain.dropped_maps()
            );
        }
        Ok(Some(chain))
    }
}

/// What a recovery did.
#[derive(Debug, Clone, Serialize)]
pub struct RecoverSummary {
    /// Server name.
    pub server: String,
    /// The backup restored.
    pub backup_id: String,
    /// The destination data directory.
    pub destination: PathBuf,
    /// Where recovery will stop.
    pub target: Option<RecoveryTarget>,
    /// Whether this was a delta restore.
    pub delta: bool,
    /// Files and bytes written, left alone (delta) and removed (delta).
    pub files: files::FileStats,
    /// WAL files decompressed into pgbk_wal/ (segments and history files).
    pub wal_files: u64,
    /// Bytes of those.
    pub wal_bytes: u64,
    /// Wall-clock seconds from start to the last fsync.
    pub duration_secs: f64,
    /// Bytes of data restored (written or verified) plus WAL, per second.
    pub bytes_per_sec: f64,
    /// Where each tablespace went.
    pub tablespaces: Vec<TablespacePlan>,
    /// The settings written into postgresql.auto.conf.
    pub settings: RecoverySettings,
    /// `recovery.signal` or `standby.signal`.
    pub signal_file: String,
    /// Whether the backup's `backup_manifest` was written into the destination.
    pub manifest: bool,
    /// The host the destination is on (`user@host:port`), for a remote recovery.
    pub remote: Option<String>,
    /// Copied settings that would clash with the source or point outside the copy.
    pub warnings: Vec<String>,
}

/// Checks everything a recovery needs without changing anything.
pub fn prepare(
    repository: &Repository,
    catalog: &Catalog,
    req: RecoverRequest,
) -> Result<RecoverPlan, RestoreError> {
    let repo = repository.server(&req.server);
    if req.target_action.is_some() && req.target.is_none() {
        return Err(RestoreError::Usage(
            "--target-action needs a recovery target (--target-time, --target-xid, --target-lsn, --target-name or --target-immediate)".into(),
        ));
    }
    if req.exclusive && req.target.is_none() {
        return Err(RestoreError::Usage(
            "--exclusive needs a recovery target".into(),
        ));
    }
    let backups = current(&repo, catalog)?;
    let info = choose_backup(&req, &backups)?;
    if info.status != BackupStatus::Done {
        return Err(RestoreError::Refused(format!(
            "server '{}': backup {} is {}, only a DONE backup can be recovered",
            req.server, info.backup_id, info.status
        )));
    }
    check_target_against_backup(&req, &info)?;
    check_target_against_archive(catalog, &req)?;
    let dir = BackupDir::new(&repo, &info.backup_id);
    let ancestors = crate::backup::chain::ancestors(&info, &backups)
        .map_err(|e| RestoreError::Refused(e.to_string()))?
        .into_iter()
        .map(|b| (BackupDir::new(&repo, &b.backup_id), b.clone()))
        .collect();
    let (destination, tablespaces, owner) = match &req.remote {
        None => {
            let destination = destination::absolute(&req.destination)?;
            let tablespaces = destination::plan_tablespaces(&info, &req.tablespaces, &destination)?;
            let dest_state = destination::check(&destination, req.delta)?;
            for t in &tablespaces {
                destination::check_tablespace_location(&t.location, t.oid, req.delta)?;
            }
            (destination, tablespaces, dest_state.owner)
        }
        // The remote destination is checked over SSH when the recovery starts,
        // before anything is written.
        Some(t) => {
            remote::check_request(&req, t)?;
            let destination = destination::absolute(&req.destination)?;
            let tablespaces = destination::plan_tablespaces(&info, &req.tablespaces, &destination)?;
            (destination, tablespaces, Owner::default())
        }
    };
    let wal = wal::plan(&info, &repo, catalog, req.target.as_ref(), req.target_tli)?;
    let restore_command = match &req.wal {
        WalSource::Copy => format!(
            "cp {}/%f %p",
            target::shell_quote(&destination.join(wal::WAL_DIR).to_string_lossy())
        ),
        WalSource::GetWal { command, partial } => format!(
            "{command} get-wal {} %f --output %p{}",
            target::shell_quote(&req.server),
            if *partial { " --partial" } else { "" }
        ),
    };
    let settings = RecoverySettings {
        restore_command,
        target: req.target.clone(),
        inclusive: req.exclusive.then_some(false),
        timeline: req.target_tli,
        action: req.target_action,
        disable_archive_command: true,
        overrides: req.overrides.clone(),
    };
    Ok(RecoverPlan {
        owner,
        wal_hole: wal.hole.clone(),
        wal: matches!(req.wal, WalSource::Copy).then_some(wal),
        request: req,
        info,
        dir,
        ancestors,
        repo,
        destination,
        tablespaces,
        settings,
    })
}

/// The backup the request names; `auto` picks the newest DONE backup that ended
/// before the target.
fn choose_backup(req: &RecoverRequest, backups: &[BackupInfo]) -> Result<BackupInfo, RestoreError> {
    if req.backup_id != "auto" {
        return crate::backup::resolve_among(backups, &req.server, &req.backup_id).map_err(|e| {
            match e {
                BackupError::NotFound { .. } => RestoreError::Usage(e.to_string()),
                e => e.into(),
            }
        });
    }
    if let Some(t @ (RecoveryTarget::Xid(_) | RecoveryTarget::Name(_))) = &req.target {
        return Err(RestoreError::Usage(format!(
            "'auto' cannot tell which backup precedes a {}: name the backup (or use --target-time / --target-lsn)",
            match t {
                RecoveryTarget::Xid(_) => "transaction id",
                _ => "restore point",
            }
        )));
    }
    let mut done = backups.iter().filter(|b| b.status == BackupStatus::Done);
    let fits = |b: &&BackupInfo| match &req.target {
        Some(RecoveryTarget::Time(t)) => b.end_time.is_some_and(|e| e <= *t),
        Some(RecoveryTarget::Lsn(l)) => b.end_lsn.is_some_and(|e| e <= *l),
        _ => true,
    };
    done.rfind(fits).cloned().ok_or_else(|| {
        RestoreError::Refused(match &req.target {
            Some(t @ (RecoveryTarget::Time(_) | RecoveryTarget::Lsn(_))) => format!(
                "server '{}': no DONE backup ended before the target {t}",
                req.server
            ),
            _ => format!("server '{}': no DONE backup to recover", req.server),
        })
    })
}

fn check_target_against_backup(
    req: &RecoverRequest,
    info: &BackupInfo,
) -> Result<(), RestoreError> {
    match &req.target {
        Some(RecoveryTarget::Time(t)) => {
            if let Some(end) = info.end_time {
                if *t < end {
                    return Err(RestoreError::Refused(format!(
                        "target time {} is before the end of backup {} ({}): recovery can only reach moments after a backup's end; choose an older backup or 'auto'",
                        target::format_time(*t),
                        info.backup_id,
                        target::format_time(end)
                    )));
                }
            }
        }
        Some(RecoveryTarget::Lsn(l)) => {
            if let Some(end) = info.end_lsn {
                if *l < end {
                    return Err(RestoreError::Refused(format!(
                        "target LSN {l} is before the end of backup {} (LSN {end}): choose an older backup or 'auto'",
                        info.backup_id
                    )));
                }
            }
        }
        _ => {}
    }
    if let Some(TargetTimeline::Id(t)) = req.target_tli {
        if t < info.timeline {
            return Err(RestoreError::Refused(format!(
                "target timeline {t} is older than backup {}'s timeline {}",
                info.backup_id, info.timeline
            )));
        }
    }
    Ok(())
}

fn check_target_against_archive(
    catalog: &Catalog,
    req: &RecoverRequest,
) -> Result<(), RestoreError> {
    match &req.target {
        Some(RecoveryTarget::Lsn(l)) => {
            let last = catalog.last_segment(&req.server)?;
            let end = last
                .as_ref()
                .and_then(|r| r.segno)
                .map(|s| crate::wal::Lsn((s + 1) * segment_size(catalog, &req.server)));
            if end.is_none_or(|e| *l > e) {
                return Err(RestoreError::Refused(match (last, end) {
                    (Some(r), Some(e)) => format!(
                        "target LSN {l} is beyond the newest archived WAL (segment {} ends at {e})",
                        r.name
                    ),
                    _ => format!("target LSN {l} is beyond the archived WAL (none archived)"),
                }));
            }
        }
        Some(RecoveryTarget::Time(t)) => {
            let newest = catalog
                .wal_files(&req.server)?
                .into_iter()
                .filter(|w| w.kind == crate::catalog::WalKind::Segment)
                .max_by_key(|w| w.archived_at);
            match newest {
                Some(w) if w.archived_at >= *t => {}
                Some(w) => {
                    return Err(RestoreError::Refused(format!(
                        "target time {} is later than the newest archived WAL (segment {} arrived at {}): recovery could not reach it",
                        target::format_time(*t),
                        w.name,
                        target::format_time(w.archived_at)
                    )))
                }
                None => {
                    return Err(RestoreError::Refused(format!(
                        "target time {} is later than the archived WAL (none archived)",
                        target::format_time(*t)
                    )))
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn segment_size(catalog: &Catalog, server: &str) -> u64 {
    catalog
        .server_identity(server)
        .ok()
        .flatten()
        .map(|(_, s)| s)
        .unwrap_or(16 * 1024 * 1024)
}

/// Carries out a checked recovery: files, tablespaces, WAL, settings, signal file,
/// durability (syncfs), and the measured throughput into the catalog.
pub fn execute(
    plan: &RecoverPlan,
    catalog: &Catalog,
    progress: &dyn Progress,
) -> Result<RecoverSummary, RestoreError> {
    let started = Instant::now();
    let req = &plan.request;
    let done = match &req.remote {
        None => execute_local(plan, progress)?,
        Some(t) => remote::execute(plan, t, progress)?,
    };
    let (file_stats, wal_files, wal_bytes, manifest, signal_file) = (
        done.files,
        done.wal_files,
        done.wal_bytes,
        done.manifest,
        done.signal_file,
    );
    let duration = started.elapsed().as_secs_f64();
    let restored = file_stats.bytes_written + file_stats.bytes_skipped + wal_bytes;
    let bytes_per_sec = restored as f64 / duration.max(0.001);
    let summary = RecoverSummary {
        server: req.server.clone(),
        backup_id: plan.info.backup_id.clone(),
        destination: plan.destination.clone(),
        target: req.target.clone(),
        delta: req.delta,
        files: file_stats,
        wal_files,
        wal_bytes,
        duration_secs: duration,
        bytes_per_sec,
        tablespaces: plan.tablespaces.clone(),
        settings: plan.settings.clone(),
        signal_file,
        manifest,
        remote: req.remote.as_ref().map(|t| t.display()),
        warnings: match &req.remote {
            None => clash::warnings(&plan.destination, req),
            Some(_) => Vec::new(),
        }
        .into_iter()
        .chain(plan.wal_hole.as_ref().map(|h| {
            format!("WAL segment {h} is missing from the archive while later ones are there: recovery stops before it")
        }))
        .collect(),
    };
    let measurement = Measurement {
        server: req.server.clone(),
        kind: if req.delta {
            "restore-delta"
        } else {
            "restore"
        }
        .to_string(),
        backup_id: Some(plan.info.backup_id.clone()),
        measured_at: Utc::now(),
        duration_secs: duration,
        bytes: restored,
        files: summary.files.files_written + summary.files.files_skipped,
        bytes_per_sec,
        detail: serde_json::json!({
            "jobs": req.jobs,
            "bytes_written": summary.files.bytes_written,
            "bytes_skipped": summary.files.bytes_skipped,
            "wal_bytes": wal_bytes,
            "destination": plan.destination,
            "remote": summary.remote,
        })
        .to_string(),
    };
    if let Err(e) = catalog.insert_measurement(&measurement) {
        tracing::warn!("could not record the restore measurement: {e}");
    }
    Ok(summary)
}

/// What writing a recovery into its destination did (local or remote).
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The backup's files.
    pub files: files::FileStats,
    /// WAL files put into `pgbk_wal/`.
    pub wal_files: u64,
    /// Bytes of those.
    pub wal_bytes: u64,
    /// Whether `backup_manifest` was written.
    pub manifest: bool,
    /// `recovery.signal` or `standby.signal`.
    pub signal_file: String,
}

/// The local sink: files decompressed in parallel into the destination, then WAL,
/// settings, signal file, syncfs.
fn execute_local(plan: &RecoverPlan, progress: &dyn Progress) -> Result<Written, RestoreError> {
    let req = &plan.request;
    destination::create(&plan.destination, plan.owner)?;
    for t in &plan.tablespaces {
        destination::create(&t.location, plan.owner)?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(req.jobs.max(1))
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))
        .at(&plan.destination)?;
    let layout = files::Layout {
        data: plan.destination.clone(),
        tablespaces: plan
            .tablespaces
            .iter()
            .map(|t| (t.oid, t.location.clone()))
            .collect(),
    };
    let marker = destination::mark_incomplete(plan)?;
    let file_opts = files::Options {
        delta: req.delta,
        owner: plan.owner,
    };
    let chain = plan.chain()?;
    let mut files = files::restore(
        &plan.dir,
        &plan.info,
        chain.as_ref(),
        &layout,
        &file_opts,
        &pool,
        progress,
    )?;
    let manifest = destination::write_manifest(plan)?;
    destination::relocate_tablespace_map(plan)?;
    let (wal_files, wal_bytes) = match &plan.wal {
        Some(w) => wal::copy_into(
            w,
            &plan.repo,
            &plan.destination.join(wal::WAL_DIR),
            plan.owner,
            &pool,
            progress,
        )?,
        None => (0, 0),
    };
    let signal_file = destination::write_settings(plan)?;
    destination::sync(&plan.destination)?;
    for t in &plan.tablespaces {
        destination::sync(&t.location)?;
    }
    // Everything else is durable: now the control file, then the marker goes.
    files::restore_control_file(&plan.dir, &plan.info, &layout, &file_opts, &mut files)?;
    destination::sync(&plan.destination)?;
    destination::clear_incomplete(&marker)?;
    Ok(Written {
        files,
        wal_files,
        wal_bytes,
        manifest,
        signal_file,
    })
}

/// `prepare` then `execute`, opening the catalog (recovery needs a repository).
pub fn recover(
    repository: &Repository,
    req: RecoverRequest,
    progress: &dyn Progress,
) -> Result<RecoverSummary, RestoreError> {
    let home = repository.home();
    let Some(catalog) = Catalog::open_existing_or_read_only(home)? else {
        return Err(RestoreError::Usage(format!(
            "server '{}': no backup '{}' (the repository {} has no catalog yet)",
            req.server,
            req.backup_id,
            home.display()
        )));
    };
    let plan = prepare(repository, &catalog, req)?;
    execute(&plan, &catalog, progress)
}
