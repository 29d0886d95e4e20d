//! Command-line definitions (clap). The help text of each verb is also the source of
//! its man page entry, so keep the two in step.

use crate::output::Format;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// `--format`: what the verbs print. `html` is drill-report's page; every other verb
/// refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text.
    Text,
    /// One JSON document on stdout.
    Json,
    /// One self-contained HTML page (drill-report).
    Html,
}

impl OutputFormat {
    /// Text or JSON, as the verbs format (HTML pages are text to them).
    pub fn format(self) -> Format {
        match self {
            OutputFormat::Json => Format::Json,
            OutputFormat::Text | OutputFormat::Html => Format::Text,
        }
    }
}

/// pgbk: PostgreSQL backup manager — continuous WAL streaming, base backups and
/// point-in-time recovery for many servers from one host.
#[derive(Debug, Parser)]
#[command(name = "pgbk", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Main configuration file (default: $PGBK_CONFIG, then /etc/pgbk/pgbk.conf).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Output format (html: drill-report only).
    #[arg(short = 'f', long = "format", global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Only errors on stderr.
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,

    /// Debug logging on stderr (or the log file).
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,

    /// The verb to run.
    #[command(subcommand)]
    pub command: Command,
}

/// A server name argument.
#[derive(Debug, Args)]
pub struct ServerArg {
    /// Server name (a section of a conf.d file).
    pub server: String,
}

/// Every verb.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the configured servers.
    #[command(visible_alias = "list-server")]
    ListServers {
        /// Names only, one per line.
        #[arg(long)]
        minimal: bool,
    },
    /// Show every setting of a server (passwords masked).
    #[command(visible_alias = "show-servers")]
    ShowServer(ServerArg),
    /// Check a server's configuration and health ('all' for every server).
    Check {
        /// Server name, or 'all'.
        server: String,
        /// Nagios plugin output (status line with perfdata, one line per failed item)
        /// and exit code (0 OK, 2 CRITICAL, 3 UNKNOWN).
        #[arg(long)]
        nagios: bool,
    },
    /// Show a server's state: versions, WAL position, archive, streaming lag (RPO).
    Status(ServerArg),
    /// Print one JSON document for bug reports: versions, configuration (passwords
    /// masked), every server's status and checks, the catalog's schema and row counts.
    Diagnose,
    /// Rebuild a server's catalog rows from its repository files ('all' for every server).
    #[command(visible_alias = "rebuild-xlogdb")]
    RebuildCatalog(ServerArg),
    /// Force PostgreSQL to close the current WAL segment.
    #[command(visible_alias = "switch-xlog")]
    SwitchWal {
        /// Server name.
        server: String,
        /// Run a CHECKPOINT first, so there is something to switch even on an idle server.
        #[arg(long)]
        force: bool,
        /// Wait until the closed segment is in the archive.
        #[arg(long)]
        archive: bool,
        /// Seconds to wait with --archive.
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        archive_timeout: u64,
    },
    /// Stream WAL from a server continuously (runs until SIGTERM/SIGINT).
    ReceiveWal(ReceiveWalArgs),
    /// Take a base backup of a server ('all' for every active server, one by one).
    Backup(BackupArgs),
    /// List the backups of a server ('all' for every server).
    #[command(visible_alias = "list-backup")]
    ListBackups {
        /// Server name, or 'all'.
        server: String,
        /// Ids only, one per line.
        #[arg(long)]
        minimal: bool,
    },
    /// Show everything about one backup.
    #[command(visible_alias = "show-backups")]
    ShowBackup(BackupRef),
    /// List the files of a backup, or the WAL it needs.
    ListFiles {
        /// Server name.
        server: String,
        /// Backup id, name, latest/last or oldest/first.
        backup_id: String,
        /// data (the data directory), wal (the archived segments it needs) or full (both).
        #[arg(long, default_value = "data", value_parser = ["data", "wal", "full", "standalone"])]
        target: String,
    },
    /// Check that every WAL segment a backup needs is archived and readable.
    CheckBackup(BackupRef),
    /// Re-read every stored file of a backup and compare checksums.
    #[command(visible_alias = "verify")]
    VerifyBackup(BackupRef),
    /// Delete a backup and the WAL no remaining backup needs.
    Delete {
        /// Server name.
        server: String,
        /// Backup id, name, latest/last or oldest/first.
        backup_id: String,
        /// Allow deleting the last DONE backup.
        #[arg(long)]
        force: bool,
    },
    /// Keep a backup forever (outside retention), release it, or show its keep status.
    Keep(KeepArgs),
    /// One maintenance pass: start missing receive-wal processes, mark stale backups
    /// FAILED, apply retention policies. Never runs twice at once (<home>/cron.lock).
    Cron {
        /// Repeat the pass every minute until SIGTERM/SIGINT (systemd-style).
        #[arg(long)]
        foreground: bool,
        /// Started receive-wal processes keep cron's stdout/stderr instead of the log file.
        #[arg(long)]
        keep_descriptors: bool,
    },
    /// Restore a backup into a directory and set up recovery (to a point in time).
    #[command(visible_alias = "restore")]
    Recover(RecoverArgs),
    /// Write one archived WAL file to a path or stdout (PostgreSQL's restore_command).
    GetWal(GetWalArgs),
    /// Run the whole loop on a throwaway local cluster: stream, back up under load,
    /// verify, recover to a point in time, check the data, measure RPO and RTO.
    Demo(DemoArgs),
    /// Store one WAL file read on stdin (PostgreSQL's archive_command over ssh).
    PutWal(PutWalArgs),
    /// Move the WAL files archive_command delivered into incoming/ into the archive.
    ArchiveWal(ServerArg),
    /// What a passive peer needs to copy since a cursor (backups, WAL, the partial
    /// segment), as JSON; run by `replicate` on the peer through ssh.
    SyncInfo(SyncInfoArgs),
    /// Copy backups and WAL from the primary manager of a passive server.
    Replicate(ReplicateArgs),
    /// Is the server's WAL archive safe for a new or re-initialised PostgreSQL (empty,
    /// or only timelines below --timeline)?
    CheckWalArchive {
        /// Server name.
        server: String,
        /// The timeline the new server starts on: files of lower timelines are allowed.
        #[arg(long, value_name = "TLI")]
        timeline: Option<u32>,
    },
    /// List pgbk's own running jobs of a server (receive-wal, backup, replicate...).
    ListProcesses(ServerArg),
    /// Stop one of a server's running pgbk jobs (SIGTERM, then wait for it to end).
    TerminateProcess {
        /// Server name.
        server: String,
        /// The job, as list-processes names it (receive-wal, backup, archive-wal,
        /// replicate, retention).
        task: String,
    },
    /// Show the clients streaming from a server (pg_stat_replication) and their lag.
    ReplicationStatus {
        /// Server name, or 'all'.
        server: String,
        /// Which clients: all, hot-standby (they replay) or wal-streamer (they store).
        #[arg(long, default_value = "all", value_parser = ["all", "hot-standby", "wal-streamer"])]
        target: String,
        /// Application names only, one per line.
        #[arg(long)]
        minimal: bool,
    },
    /// Write PostgreSQL's backup_manifest for a backup taken without one (rsync), so
    /// that pg_verifybackup can check a restore of it.
    GenerateManifest(BackupRef),
    /// Restore drill: restore a backup into a scratch folder, start it cut off from
    /// production, recover to the target, check it, and record the measured RTO and
    /// the achieved RPO.
    Drill(DrillArgs),
    /// List a server's past restore drills (text, JSON, or one HTML page with a plot).
    DrillReport(DrillReportArgs),
}

/// A recovery target: `recover`'s and `drill`'s `--target-*` options, at most one.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct TargetArgs {
    /// Stop at the first commit after this time ('2026-01-31 12:00:00+00', RFC 3339;
    /// without a zone: this host's local time).
    #[arg(long, value_name = "TIMESTAMP", value_parser = crate::restore::target::parse_time)]
    pub target_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Stop at this transaction id.
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<u64>,
    /// Stop at this WAL location (e.g. 0/3000148).
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<crate::wal::Lsn>,
    /// Stop at this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[arg(long)]
    pub target_immediate: bool,
}

impl TargetArgs {
    /// The target asked for, if any.
    pub fn target(&self) -> Option<crate::restore::RecoveryTarget> {
        use crate::restore::RecoveryTarget;
        if let Some(t) = self.target_time {
            Some(RecoveryTarget::Time(t))
        } else if let Some(x) = self.target_xid {
            Some(RecoveryTarget::Xid(x))
        } else if let Some(l) = self.target_lsn {
            Some(RecoveryTarget::Lsn(l))
        } else if let Some(n) = &self.target_name {
            Some(RecoveryTarget::Name(n.clone()))
        } else if self.target_immediate {
            Some(RecoveryTarget::Immediate)
        } else {
            None
        }
    }
}

/// Options of `drill`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Server name, or 'all' (every active server, one after the other).
    pub server: String,
    /// The backup to restore: an id, a name, or latest.
    #[arg(long, default_value = "latest", value_name = "ID")]
    pub backup: String,
    /// Where recovery stops (at most one; none: all archived WAL).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Leave the drill's server running and its folder in place (the report says
    /// where); stop it with pg_ctl and remove the folder yourself.
    #[arg(long)]
    pub keep: bool,
    /// Run the drill on another host, reached with this ssh command line (e.g.
    /// "ssh postgres@drill1"; the host key checked against known_hosts); overrides
    /// drill_ssh_command.
    #[arg(long, value_name = "CMD")]
    pub host: Option<String>,
    /// Decompression threads (default: every core).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
}

/// Options of `drill-report`.
#[derive(Debug, Args)]
pub struct DrillReportArgs {
    /// Server name, or 'all'.
    pub server: String,
    /// Write one self-contained HTML page (table and plot): the same as --format html.
    #[arg(long)]
    pub html: bool,
}

/// Options of `put-wal`.
#[derive(Debug, Args)]
pub struct PutWalArgs {
    /// Server name.
    pub server: String,
    /// The WAL file's name (%f).
    #[arg(long, value_name = "SEGMENT")]
    pub name: Option<String>,
}

/// Options of `sync-info`.
#[derive(Debug, Args)]
pub struct SyncInfoArgs {
    /// Server name.
    pub server: String,
    /// The cursor the previous call returned (omitted: everything).
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<String>,
}

/// Options of `replicate`.
#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// Server name, or 'all' for every passive server.
    pub server: String,
    /// Keep copying every few seconds until SIGTERM/SIGINT.
    #[arg(long)]
    pub follow: bool,
}

/// Debian's location of the PostgreSQL 15 binaries: where `demo` looks by default.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Options of `demo` (it needs no configuration file).
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder of the PostgreSQL 15 binaries (initdb, pg_ctl, pgbench).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PG_BIN)]
    pub pg_bin: PathBuf,
    /// pgbench scale factor (about 15 MB of data per unit).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub scale: u32,
    /// Keep the scratch folder (clusters stopped) instead of removing it.
    #[arg(long)]
    pub keep: bool,
    /// Create the scratch folder in DIR instead of the temporary directory ($TMPDIR).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
}

/// A server and one of its backups.
#[derive(Debug, Args)]
pub struct BackupRef {
    /// Server name.
    pub server: String,
    /// Backup id, name, latest/last or oldest/first.
    pub backup_id: String,
}

/// Options of `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Server name, or 'all'.
    pub server: String,
    /// A name for the backup, usable wherever an id is.
    #[arg(long)]
    pub name: Option<String>,
    /// Ask for an immediate (fast) checkpoint.
    #[arg(long, overrides_with = "no_immediate_checkpoint")]
    pub immediate_checkpoint: bool,
    /// Let the checkpoint spread (the default unless immediate_checkpoint = on).
    #[arg(long)]
    pub no_immediate_checkpoint: bool,
    /// Compression threads (default: parallel_jobs, or all cores).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Return once the files are stored, without waiting for the WAL (status WAITING_FOR_WALS).
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the WAL the backup needs (0 = forever).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub wait_timeout: u64,
    /// An incremental backup (PostgreSQL 17+ with summarize_wal = on, or 15/16 by block maps) built on PARENT
    /// (id, name or latest; default: the newest backup it can be built on).
    #[arg(long, value_name = "PARENT", num_args = 0..=1, default_missing_value = "latest", conflicts_with = "full")]
    pub incremental: Option<String>,
    /// A full backup, whatever backup_type says.
    #[arg(long)]
    pub full: bool,
    /// Take up an interrupted backup (the newest FAILED one that kept stored files,
    /// or ID): a new BASE_BACKUP, where files already stored and verified are not
    /// stored again.
    #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "latest", conflicts_with_all = ["incremental", "full"])]
    pub resume: Option<String>,
}

/// Options of `keep`.
#[derive(Debug, Args)]
pub struct KeepArgs {
    /// Server name.
    pub server: String,
    /// Backup id, name, latest/last or oldest/first.
    pub backup_id: String,
    /// full (backup and all later WAL) or standalone (only the WAL it needs).
    #[arg(long, value_parser = ["full", "standalone"], conflicts_with_all = ["release", "status"])]
    pub target: Option<String>,
    /// Remove the keep annotation.
    #[arg(long, conflicts_with = "status")]
    pub release: bool,
    /// Show the keep annotation.
    #[arg(long)]
    pub status: bool,
}

/// Options of `receive-wal`.
#[derive(Debug, Args)]
pub struct ReceiveWalArgs {
    /// Server name.
    pub server: String,
    /// Create the server's replication slot and exit.
    #[arg(long, group = "action")]
    pub create_slot: bool,
    /// Drop the server's replication slot and exit.
    #[arg(long, group = "action")]
    pub drop_slot: bool,
    /// Forget the streaming position: the next start begins at the server's current position.
    #[arg(long, group = "action")]
    pub reset: bool,
    /// Stop the running receive-wal of this server and exit.
    #[arg(long, group = "action")]
    pub stop: bool,
}

/// Options of `recover` (Barman's names).
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Server name.
    pub server: String,
    /// Backup id, name, latest/last, oldest/first, or auto (the newest DONE backup that
    /// ended before the target).
    pub backup_id: String,
    /// The data directory to create: missing or empty (or an older copy with --delta).
    pub destination: PathBuf,
    /// Where recovery stops (at most one; none: all archived WAL).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Timeline to follow: a number, current or latest (PostgreSQL's default).
    #[arg(long, value_name = "TLI")]
    pub target_tli: Option<crate::restore::TargetTimeline>,
    /// What the server does at the target (PostgreSQL's default: pause).
    #[arg(long, value_enum, value_name = "ACTION")]
    pub target_action: Option<crate::restore::TargetAction>,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub exclusive: bool,
    /// Restore a tablespace elsewhere (repeatable); NAME may also be its oid.
    #[arg(long, value_name = "NAME:LOCATION")]
    pub tablespace: Vec<String>,
    /// Start as a standby (standby.signal instead of recovery.signal).
    #[arg(long)]
    pub standby_mode: bool,
    /// restore_command runs `pgbk get-wal` instead of reading WAL copied into the
    /// destination.
    #[arg(long, overrides_with = "no_get_wal")]
    pub get_wal: bool,
    /// Copy the WAL recovery needs into <destination>/pgbk_wal (the default).
    #[arg(long, overrides_with = "get_wal")]
    pub no_get_wal: bool,
    /// With --get-wal: restore_command also serves receive-wal's in-progress segment,
    /// so recovery reaches the last streamed transaction.
    #[arg(long, requires = "get_wal")]
    pub partial: bool,
    /// Decompression threads (default: every core).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// The destination holds an older copy: rewrite only files that differ, remove
    /// what the backup does not hold.
    #[arg(long)]
    pub delta: bool,
    /// The destination is on another host, reached with this ssh command line
    /// (e.g. "ssh -p 2222 postgres@pg2"); files are streamed over one SSH
    /// connection into tar on that host, the host key checked against known_hosts.
    #[arg(long, value_name = "CMD")]
    pub remote_ssh_command: Option<String>,
    /// Port the recovered copy listens on (appended to postgresql.auto.conf), so it
    /// does not clash with the source on the same host.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Any other setting for the recovered copy, appended to postgresql.auto.conf
    /// (repeatable), e.g. --set unix_socket_directories=/tmp.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Options of `get-wal`.
#[derive(Debug, Args)]
pub struct GetWalArgs {
    /// Server name.
    pub server: String,
    /// The WAL segment or history file PostgreSQL asks for (%f).
    pub wal_name: String,
    /// Where to write it (%p); default stdout.
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Also serve receive-wal's in-progress .partial segment, zero-padded.
    #[arg(long)]
    pub partial: bool,
    /// Decompress the next N segments into the spool in the background.
    #[arg(long, short = 'P', value_name = "N", default_value_t = 0)]
    pub prefetch: u32,
    /// Only fill the spool after segment WAL_NAME of this segment size (the
    /// background part of --prefetch).
    #[arg(long, hide = true, value_name = "SEG_SIZE")]
    pub prefetch_only: Option<u64>,
}
