//! One small file per verb: each wires the library modules together and hands its
//! result, a [`crate::output::Report`], to [`Context::emit`], which prints it as text
//! or `--format json`. Verbs never import each other: what several share is here
//! (looking servers and backups up, locks, connection errors) or in [`describe`]
//! (text forms of library values). Nothing here knows PostgreSQL's wire format or
//! the repository layout beyond calling the modules that do.

pub mod archive_wal;
pub mod backup;
pub mod check;
pub mod check_backup;
pub mod check_wal_archive;
pub mod cron;
pub mod delete;
pub mod demo;
pub mod describe;
pub mod diagnose;
pub mod drill;
pub mod drill_report;
pub mod generate_manifest;
pub mod get_wal;
pub mod keep;
pub mod list_backups;
pub mod list_files;
pub mod list_servers;
pub mod processes;
pub mod progress;
pub mod put_wal;
pub mod rebuild_catalog;
pub mod receive_wal;
pub mod recover;
pub mod replicate;
pub mod replication_status;
pub mod show_backup;
pub mod show_server;
pub mod status;
pub mod switch_wal;
pub mod sync_info;
pub mod verify_backup;

use crate::backup::{BackupInfo, BackupStatus};
use crate::catalog::Catalog;
use crate::cli::{Cli, Command};
use crate::config::{Config, ServerConfig};
use crate::connect::ConnectError;
use crate::output::{Format, Report};
use crate::pg::ConnInfo;
use crate::repo::{Repository, ServerRepo};
use anyhow::{Context as _, Result};
use std::time::Duration;

/// A user mistake (bad arguments or configuration): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// An error that carries its own exit code: get-wal exits above 125 for a WAL file
/// that is in the archive but cannot be delivered verified, which makes PostgreSQL
/// stop recovery with FATAL instead of taking it for "not archived" and promoting.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    /// The process exit code.
    pub code: u8,
    /// The one-line message.
    pub message: String,
}

/// get-wal's exit code for a damaged or undeliverable archived file.
pub const EXIT_ABORT_RECOVERY: u8 = 200;

/// What every verb gets: the loaded configuration and the output choices.
pub struct Context {
    /// The configuration, validated.
    pub config: Config,
    /// Text or JSON.
    pub format: Format,
    /// Fewer messages.
    pub quiet: bool,
    /// `--format html` (drill-report's page).
    pub html: bool,
}

impl Context {
    /// Prints a verb's report as text or JSON ([`crate::output::emit`]).
    pub fn emit<R: Report>(&self, report: &R) -> Result<()> {
        Ok(crate::output::emit(self.format, report)?)
    }
}

/// Exit codes: 0 ok, 1 a failed check or operation, 2 bad usage or configuration.
pub type ExitCode = i32;

/// Loads the configuration and runs the verb; returns the process exit code.
pub fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Demo(a) = &cli.command {
        // The demo writes its own configuration in its scratch folder.
        let defaults = Config {
            file: Default::default(),
            home: Default::default(),
            configuration_files_directory: Default::default(),
            log_file: None,
            log_level: "info".into(),
            servers: Default::default(),
            warnings: Vec::new(),
        };
        init_logging(&defaults, &cli);
        return demo::run(cli.format.format(), a);
    }
    let path = Config::default_path(cli.config.as_deref());
    let config = Config::load(&path)?;
    init_logging(&config, &cli);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    if cli.format == crate::cli::OutputFormat::Html
        && !matches!(cli.command, Command::DrillReport(_))
    {
        return Err(UsageError(
            "--format html: only drill-report writes HTML (text or json here)".into(),
        )
        .into());
    }
    let ctx = Context {
        html: cli.format == crate::cli::OutputFormat::Html,
        config,
        format: cli.format.format(),
        quiet: cli.quiet,
    };
    match cli.command {
        Command::ListServers { minimal } => list_servers::run(&ctx, minimal),
        Command::ShowServer(a) => show_server::run(&ctx, &a.server),
        Command::Check { server, nagios } => check::run(&ctx, &server, nagios),
        Command::Status(a) => status::run(&ctx, &a.server),
        Command::Diagnose => diagnose::run(&ctx),
        Command::RebuildCatalog(a) => rebuild_catalog::run(&ctx, &a.server),
        Command::SwitchWal {
            server,
            force,
            archive,
            archive_timeout,
        } => switch_wal::run(
            &ctx,
            &server,
            force,
            archive,
            Duration::from_secs(archive_timeout),
        ),
        Command::ReceiveWal(a) => receive_wal::run(&ctx, &a),
        Command::Backup(a) => backup::run(&ctx, &a),
        Command::ListBackups { server, minimal } => list_backups::run(&ctx, &server, minimal),
        Command::ShowBackup(r) => show_backup::run(&ctx, &r.server, &r.backup_id),
        Command::ListFiles {
            server,
            backup_id,
            target,
        } => list_files::run(&ctx, &server, &backup_id, &target),
        Command::CheckBackup(r) => check_backup::run(&ctx, &r.server, &r.backup_id),
        Command::VerifyBackup(r) => verify_backup::run(&ctx, &r.server, &r.backup_id),
        Command::Delete {
            server,
            backup_id,
            force,
        } => delete::run(&ctx, &server, &backup_id, force),
        Command::Keep(a) => keep::run(&ctx, &a),
        Command::Cron {
            foreground,
            keep_descriptors,
        } => cron::run(&ctx, foreground, keep_descriptors),
        Command::Recover(a) => recover::run(&ctx, &a),
        Command::GetWal(a) => get_wal::run(&ctx, &a),
        Command::Demo(a) => demo::run(ctx.format, &a),
        Command::PutWal(a) => put_wal::run(&ctx, &a),
        Command::ArchiveWal(a) => archive_wal::run(&ctx, &a.server),
        Command::SyncInfo(a) => sync_info::run(&ctx, &a),
        Command::Replicate(a) => replicate::run(&ctx, &a),
        Command::CheckWalArchive { server, timeline } => {
            check_wal_archive::run(&ctx, &server, timeline)
        }
        Command::ListProcesses(a) => processes::list(&ctx, &a.server),
        Command::TerminateProcess { server, task } => processes::terminate(&ctx, &server, &task),
        Command::ReplicationStatus {
            server,
            target,
            minimal,
        } => replication_status::run(&ctx, &server, &target, minimal),
        Command::GenerateManifest(r) => generate_manifest::run(&ctx, &r.server, &r.backup_id),
        Command::Drill(a) => drill::run(&ctx, &a),
        Command::DrillReport(a) => drill_report::run(&ctx, &a),
    }
}

fn init_logging(config: &Config, cli: &Cli) {
    use tracing_subscriber::filter::LevelFilter;
    let level = if cli.debug {
        LevelFilter::DEBUG
    } else if cli.quiet {
        LevelFilter::ERROR
    } else {
        match config.log_level.as_str() {
            "debug" => LevelFilter::DEBUG,
            "warning" | "warn" => LevelFilter::WARN,
            "error" | "critical" => LevelFilter::ERROR,
            _ => LevelFilter::INFO,
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false);
    let file = config.log_file.as_deref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| {
                eprintln!("pgbk: log file {}: {e}; logging to stderr", p.display());
            })
            .ok()
    });
    let _ = match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .try_init()
        }
    };
}

/// Looks a server up by name (a usage error naming it when it is unknown). Verbs
/// reach its data through [`repository`], on either backend.
pub fn server_config<'a>(ctx: &'a Context, name: &str) -> Result<&'a ServerConfig> {
    Ok(ctx.config.server(name)?)
}

/// The repository a server's configuration names (its local home, or a bucket).
pub fn repository(ctx: &Context, s: &ServerConfig) -> Result<Repository> {
    Repository::open(&ctx.config.home, s.repository.as_ref()).map_err(|e| {
        UsageError(format!(
            "server '{}': repository in {}: {e}",
            s.name,
            s.file.display()
        ))
        .into()
    })
}

/// A server's part of its repository (local home, or bucket), for verbs that read
/// backups through the store.
pub fn server_repo(ctx: &Context, name: &str) -> Result<ServerRepo> {
    let s = server_config(ctx, name)?;
    Ok(repository(ctx, s)?.server(&s.name))
}

/// Refuses a verb that only an active server can run (`backup`, `receive-wal`) on a
/// passive one: a usage error naming the server and its primary manager.
pub fn refuse_passive(s: &ServerConfig, verb: &str) -> Result<()> {
    match &s.primary_ssh_command {
        None => Ok(()),
        Some(cmd) => Err(UsageError(format!(
            "server '{}': {verb} refused: it is a passive copy of the primary manager at '{cmd}' (primary_ssh_command in {}); run {verb} there, or 'replicate' here",
            s.name,
            s.file.display()
        ))
        .into()),
    }
}

/// Takes the server's retention lock, which `delete`, `keep` and
/// `generate-manifest` hold while they change its backups.
pub fn retention_lock(ctx: &Context, server: &str) -> Result<crate::lock::JobLock> {
    Ok(crate::lock::acquire_retention(&ServerRepo::new(
        &ctx.config.home,
        server,
    ))?)
}

/// Runs `f` on a rayon pool of the server's `parallel_jobs` threads.
pub fn in_pool<T: Send>(ctx: &Context, server: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let jobs = server_config(ctx, server)?.parallel_jobs.max(1) as usize;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .context("starting worker threads")?;
    Ok(pool.install(f))
}

/// Refuses a backup whose content was removed because it failed.
pub fn refuse_failed(b: &BackupInfo) -> Result<()> {
    if b.status == BackupStatus::Failed {
        anyhow::bail!(
            "server '{}': backup {} is FAILED ({}): there is nothing to check",
            b.server,
            b.backup_id,
            b.error.as_deref().unwrap_or("no reason recorded")
        );
    }
    Ok(())
}

/// Refuses a server whose `repository` is on object storage for `sync-info`, which
/// serves a passive peer files under the home over SFTP.
pub fn refuse_object_storage(s: &ServerConfig) -> Result<()> {
    match &s.repository {
        Some(r) => Err(UsageError(format!(
            "server '{}': repository = {} (in {}): sync-info serves a passive manager the files under this host's home; a repository in a bucket is mirrored by the object store's own replication (a passive copy into a bucket works: replicate on the passive side)",
            s.name,
            r.url(),
            s.file.display()
        ))
        .into()),
        None => Ok(()),
    }
}

/// A connection error as the user sees it: a connection string that does not parse
/// is a usage error (exit code 2).
pub fn connect_error(e: ConnectError) -> anyhow::Error {
    match e {
        e @ ConnectError::Conninfo { .. } => UsageError(e.to_string()).into(),
        e => e.into(),
    }
}

/// Parses one of a server's connection strings, naming the option on failure.
pub fn conninfo(server: &ServerConfig, option: &str, text: &str) -> Result<ConnInfo> {
    crate::connect::conninfo(server, option, text).map_err(connect_error)
}

/// A single-threaded tokio runtime for one verb.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A channel that turns true on SIGTERM or SIGINT, so a long job can stop cleanly
/// (flush, record its state) instead of dying mid-write. Call inside a runtime.
pub fn stop_on_signal(what: &'static str) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("stop requested; {what}");
        let _ = tx.send(true);
    });
    rx
}

/// Quotes a string as an SQL literal.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Writes a line to stdout; a closed pipe becomes an error main() ends on quietly.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

/// How a verb reaches a server's backups: only reading them (the catalog opened
/// read-only, nothing written, stale backups reported), changing some of them
/// (`keep`, `generate-manifest`, `drill`: the catalog open for writing), or owning
/// the repository (`delete`: the due changes applied first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A reading verb: works on a read-only home.
    Read,
    /// A verb that writes what it was asked to, and nothing else.
    Change,
    /// A verb that owns the repository and applies the due changes.
    Own,
}

/// A server's backups, oldest first, with their statuses brought up to date
/// ([`crate::backup::lifecycle::reconcile`]; written back only with [`Access::Own`]);
/// `None` when the repository has no catalog yet (so no backup). Read-only verbs
/// never create a repository.
pub fn backups_of(ctx: &Context, server: &str) -> Result<Option<(Catalog, Vec<BackupInfo>)>> {
    backups_for(ctx, server, Access::Read)
}

/// [`backups_of`] for a verb that writes (see [`Access`]).
pub fn backups_for(
    ctx: &Context,
    server: &str,
    access: Access,
) -> Result<Option<(Catalog, Vec<BackupInfo>)>> {
    let home = &ctx.config.home;
    let repo = server_repo(ctx, server)?;
    let catalog = match access {
        Access::Read => Catalog::open_read_only(home)?,
        Access::Change | Access::Own => Catalog::open_existing(home)?,
    };
    // On object storage each comparison is a LIST of the bucket (and a wait for the
    // retry bound when the store is down): compare only when the catalog knows no
    // backup of the server, the case where it would otherwise answer "none".
    let compare = !repo.repository().is_remote()
        || match &catalog {
            None => true,
            Some(c) => c.backups::<BackupInfo>(server)?.is_empty(),
        };
    let unknown = if compare {
        crate::maintenance::rebuild::backups_missing_from_catalog(&repo, catalog.as_ref())
            .with_context(|| format!("server '{server}'"))?
    } else {
        Vec::new()
    };
    if !unknown.is_empty() {
        let what = if catalog.is_some() {
            "does not list"
        } else {
            "is missing, and so does not list"
        };
        anyhow::bail!(
            "server '{server}': the catalog {} {what} {} backup(s) the repository holds ({}): run rebuild-catalog {server}",
            Catalog::path_in(home).display(),
            unknown.len(),
            unknown.join(", ")
        );
    }
    let Some(catalog) = catalog else {
        return Ok(None);
    };
    let list = match access {
        Access::Own => crate::maintenance::reconcile::refresh(&repo, &catalog),
        Access::Read | Access::Change => crate::backup::lifecycle::current(&repo, &catalog),
    }
    .with_context(|| format!("server '{server}'"))?;
    Ok(Some((catalog, list)))
}

/// The backup a user named (id, `--name`, `latest`/`last`, `oldest`/`first`) among a
/// server's up-to-date backups; an unknown one is a usage error. Reads only.
pub fn find_backup(ctx: &Context, server: &str, wanted: &str) -> Result<(Catalog, BackupInfo)> {
    find_backup_for(ctx, server, wanted, Access::Read)
}

/// [`find_backup`] for a verb that writes (see [`Access`]).
pub fn find_backup_for(
    ctx: &Context,
    server: &str,
    wanted: &str,
    access: Access,
) -> Result<(Catalog, BackupInfo)> {
    server_config(ctx, server)?;
    let Some((catalog, all)) = backups_for(ctx, server, access)? else {
        return Err(UsageError(format!(
            "server '{server}': no backup '{wanted}' (the server has no backups)"
        ))
        .into());
    };
    match crate::backup::resolve_among(&all, server, wanted) {
        Ok(info) => Ok((catalog, info)),
        Err(e @ crate::backup::BackupError::NotFound { .. }) => {
            Err(UsageError(e.to_string()).into())
        }
        Err(e) => Err(e.into()),
    }
}
