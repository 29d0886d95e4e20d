//! pgbk's configuration: the main file `pgbk.conf` (section `[pgbk]`, alias
//! `[barman]`) and one or more `[server]` sections, in the main file or in every
//! `*.conf` file of `configuration_files_directory` (read in file-name order).
//!
//! The files are read the way Python's `ConfigParser` reads Barman's, so a Barman
//! server file works unchanged (the dialect is described in `ini.rs`). Option names are
//! Barman's. Server options written in the main section are defaults for every
//! server, and a `[DEFAULT]` section's keys apply to every section, as in Barman.
//!
//! Error policy: loading either returns a fully validated [`Config`] or one
//! [`ConfigError`] whose one-line message names the file, the line and, where it
//! applies, the server and option. Options pgbk does not know are not errors: they
//! are reported in [`Config::warnings`]. Loading only reads; it never creates files.

mod ini;
mod repository;
#[cfg(test)]
mod tests;
mod values;

use ini::{Entries, Entry, IniFile, Scope, Section};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The main file used when neither `-c` nor `$PGBK_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pgbk/pgbk.conf";

/// The environment variable naming the main file, checked after `-c`.
pub const CONFIG_ENV: &str = "PGBK_CONFIG";

/// Where pgbk keeps its repository when `home` is not set.
pub const DEFAULT_HOME: &str = "/var/lib/pgbk";

/// The main section's name; `[barman]` is accepted as an alias.
pub const MAIN_SECTION: &str = "pgbk";

/// Barman's name for the main section, accepted so a `barman.conf` reads unchanged.
pub const BARMAN_MAIN_SECTION: &str = "barman";

/// The whole configuration: main options and every server, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The main file that was read (as given, not canonicalised).
    pub file: PathBuf,
    /// `home` (Barman: `barman_home`): the repository root. Always absolute.
    pub home: PathBuf,
    /// Folder whose `*.conf` files hold more sections; relative values are resolved
    /// against the main file's folder. Default: `conf.d` beside the main file.
    pub configuration_files_directory: PathBuf,
    /// `log_file`, if set; relative values are resolved against the main file's folder.
    pub log_file: Option<PathBuf>,
    /// `log_level`: one of debug, info, warning, error (default info). Barman's
    /// spellings are accepted in any case; `CRITICAL` becomes error.
    pub log_level: String,
    /// Every server, by name (model sections excluded).
    pub servers: BTreeMap<String, ServerConfig>,
    /// One line per ignored option or other harmless oddity, `file:line: message`.
    pub warnings: Vec<String>,
}

/// One server's options, validated, with built-in defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// The section name, which is also the folder name under `home`.
    pub name: String,
    /// The file holding the `[name]` header.
    pub file: PathBuf,
    /// The line of the `[name]` header.
    pub line: usize,
    /// Free text shown by list-servers (quotes are kept, as Barman keeps them).
    pub description: String,
    /// `active = off` keeps the server configured but skipped by cron and backups.
    pub active: bool,
    /// libpq connection string for ordinary SQL. Required.
    pub conninfo: String,
    /// libpq connection string for the replication connection; defaults to `conninfo`.
    pub streaming_conninfo: String,
    /// Barman's `primary_conninfo`: when `conninfo` and `streaming_conninfo` name a
    /// hot standby (backups are taken there), the primary, where a backup's WAL
    /// switch and checkpoint go.
    pub primary_conninfo: Option<String>,
    /// Barman's `wal_streaming_conninfo`: where receive-wal streams WAL from
    /// (default `streaming_conninfo`), e.g. the primary while backups come from a
    /// standby.
    pub wal_streaming_conninfo: Option<String>,
    /// Barman's `wal_conninfo`: SQL connection to the server WAL streams from, for
    /// its replication slot (default `wal_streaming_conninfo`, then `conninfo`).
    pub wal_conninfo: Option<String>,
    /// Whether receive-wal streams WAL from this server.
    pub streaming_archiver: bool,
    /// The `application_name` receive-wal connects with.
    pub streaming_archiver_name: String,
    /// The physical replication slot receive-wal uses, if any.
    pub slot_name: Option<String>,
    /// Whether pgbk may create `slot_name` itself.
    pub create_slot: CreateSlot,
    /// How base backups are taken.
    pub backup_method: BackupMethod,
    /// The command to reach the PostgreSQL host over SSH (rsync method, remote checks).
    pub ssh_command: Option<String>,
    /// Whether WAL arrives through `archive_command` into `incoming/` (put-wal).
    pub archiver: bool,
    /// Parallel workers for backup and recovery (at least 1).
    pub parallel_jobs: u32,
    /// Segments `put-wal` stores ahead of PostgreSQL's request when it runs on the
    /// database host with `< %p` (those already marked ready); 0 turns it off.
    pub put_wal_ahead: u32,
    /// Barman's WAL compression name, kept only for display: pgbk always stores zstd.
    pub compression: Option<String>,
    /// Transfer limit in KiB/s; `None` means unlimited (unset or 0).
    pub bandwidth_limit: Option<u64>,
    /// Whether rsync compresses over the network.
    pub network_compression: bool,
    /// Whether a backup asks PostgreSQL for an immediate (fast) checkpoint.
    pub immediate_checkpoint: bool,
    /// `backup_resume`: a backup takes up an interrupted one by itself, as `--resume`.
    pub backup_resume: bool,
    /// How many times a failed base backup copy is retried.
    pub basebackup_retry_times: u32,
    /// Seconds to wait between those retries.
    pub basebackup_retry_sleep: u64,
    /// Barman's retention policy text (`REDUNDANCY n`, `RECOVERY WINDOW OF n DAYS`),
    /// grammar-checked, as written.
    pub retention_policy: Option<String>,
    /// Backups never deleted whatever the policy says.
    pub minimum_redundancy: u32,
    /// WAL retention: only `main` (WAL follows the backups) exists.
    pub wal_retention_policy: String,
    /// When retention runs: only `auto` (by cron) exists.
    pub retention_policy_mode: String,
    /// check fails when the newest backup is older than this.
    pub last_backup_maximum_age: Option<Duration>,
    /// check fails when the newest archived WAL is older than this.
    pub last_wal_maximum_age: Option<Duration>,
    /// Extra folders (colon-separated) searched for PostgreSQL programs.
    pub path_prefix: Option<String>,
    /// SSH command to a peer pgbk this one mirrors (replicate).
    pub primary_ssh_command: Option<String>,
    /// The pgbk program to run on that peer.
    pub primary_pgbk_command: String,
    /// Whether an rsync backup reuses the previous backup's files.
    pub reuse_backup: ReuseBackup,
    /// `backup_type`: what `backup` (and cron's scheduled backups) take by default.
    pub backup_type: BackupType,
    /// `full_backup_every`: with `backup_type = incremental`, a chain holds at most
    /// this many backups (a full one and its incrementals); `None`: no limit.
    pub full_backup_every: Option<u32>,
    /// `incremental_fallback`: what an incremental backup does on a server that
    /// cannot take one (`summarize_wal = off`, no parent to build on).
    pub incremental_fallback: IncrementalFallback,
    /// `incremental_read`: how an incremental of PostgreSQL 15 or 16 reads the
    /// server.
    pub incremental_read: IncrementalRead,
    /// `repository = s3://...`: the repository on object storage; `None`: the
    /// local `home`.
    pub repository: Option<crate::repo::store::s3_settings::S3Settings>,
    /// Restore drills (`drill`) and the recovery objectives they are checked against.
    pub drill: DrillSettings,
    /// Every option seen by this server after interpolation (its own keys, `[DEFAULT]`
    /// keys and defaults from the main section), known or not, with raw values:
    /// mask passwords before showing them.
    pub settings: BTreeMap<String, String>,
}

impl ServerConfig {
    /// Where receive-wal streams WAL from: `wal_streaming_conninfo`, else
    /// `streaming_conninfo`; the option's name, and the connection string.
    pub fn wal_streaming(&self) -> (&'static str, &str) {
        match &self.wal_streaming_conninfo {
            Some(c) => ("wal_streaming_conninfo", c),
            None => ("streaming_conninfo", &self.streaming_conninfo),
        }
    }

    /// The SQL connection to the server WAL streams from (its slot, its receivers,
    /// its current position), as Barman picks it: `wal_conninfo`, else
    /// `wal_streaming_conninfo`, else `conninfo`.
    pub fn wal_sql(&self) -> (&'static str, &str) {
        match (&self.wal_conninfo, &self.wal_streaming_conninfo) {
            (Some(c), _) => ("wal_conninfo", c),
            (None, Some(c)) => ("wal_streaming_conninfo", c),
            (None, None) => ("conninfo", &self.conninfo),
        }
    }
}

/// A value that is not one of an option's words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got '{got}'")]
pub struct InvalidValue {
    /// The accepted words, for the message ("auto or manual").
    pub expected: &'static str,
    /// The text that was given.
    pub got: String,
}

/// Declares a config enum with lower-case spellings, `Display`, `FromStr` (any case)
/// and serde in that spelling.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident, $expected:literal, { $($(#[$vmeta:meta])* $variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($name::$variant => $word),+ })
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($word => Ok($name::$variant),)+
                    _ => Err(InvalidValue { expected: $expected, got: s.to_string() }),
                }
            }
        }
    };
}

word_enum!(
    /// `create_slot`: whether pgbk creates the replication slot when it is missing.
    CreateSlot, "auto or manual", {
        /// receive-wal and check create `slot_name` when it does not exist.
        Auto => "auto",
        /// The slot must be created by hand (`receive-wal --create-slot`).
        #[default]
        Manual => "manual",
    }
);

word_enum!(
    /// `backup_method`: how a base backup is copied.
    BackupMethod, "postgres or rsync", {
        /// The replication protocol's BASE_BACKUP, like pg_basebackup.
        #[default]
        Postgres => "postgres",
        /// rsync over SSH between pg_backup_start and pg_backup_stop.
        Rsync => "rsync",
    }
);

word_enum!(
    /// `backup_type`: full backups, or incremental ones built on the previous backup.
    BackupType, "full or incremental", {
        /// Every backup is a full one.
        #[default]
        Full => "full",
        /// Only the blocks changed since the previous backup.
        Incremental => "incremental",
    }
);

word_enum!(
    /// `incremental_fallback`: an incremental backup the server cannot take.
    IncrementalFallback, "error or full", {
        /// Refuse, saying which setting is missing.
        #[default]
        Error => "error",
        /// Take a full backup instead, with a notice.
        Full => "full",
    }
);

word_enum!(
    /// `incremental_read`: how an incremental backup of PostgreSQL 15 or 16 reads
    /// the server.
    IncrementalRead, "sql or stream", {
        /// Only the blocks pgbk's WAL archive says changed, over an SQL session
        /// (`pg_read_binary_file`); streamed instead, with a notice, when that
        /// cannot be trusted or the role lacks the grants.
        #[default]
        Sql => "sql",
        /// Every file streamed by BASE_BACKUP, only changed blocks stored.
        Stream => "stream",
    }
);

word_enum!(
    /// `reuse_backup`: what an rsync backup does with files unchanged since the last one.
    ReuseBackup, "off, copy or link", {
        /// Copy every file from the server.
        #[default]
        Off => "off",
        /// Copy unchanged files from the previous backup locally.
        Copy => "copy",
        /// Hard-link unchanged files to the previous backup.
        Link => "link",
    }
);

/// Why the configuration could not be loaded or a server looked up.
/// Every message is one line naming the file (and line and option where they apply).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file could not be read.
    #[error("configuration file {}: {}", path.display(), io_text(source))]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A configuration file is not UTF-8 text.
    #[error("configuration file {}: line {line} is not valid UTF-8", path.display())]
    Encoding {
        /// The file.
        path: PathBuf,
        /// The first line with a bad byte.
        line: usize,
    },
    /// `configuration_files_directory` could not be listed.
    #[error("configuration files directory {}: {}", path.display(), io_text(source))]
    Directory {
        /// The folder, resolved.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A line that is not INI, a duplicate section or key, a bad or reserved section name.
    #[error("{}:{line}: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The offending line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Two sections define the same server.
    #[error("{}:{line}: server '{server}' is already defined at {}:{first_line}", file.display(), first_file.display())]
    DuplicateServer {
        /// The server name.
        server: String,
        /// The second definition's file.
        file: PathBuf,
        /// The second definition's header line.
        line: usize,
        /// The first definition's file.
        first_file: PathBuf,
        /// The first definition's header line.
        first_line: usize,
    },
    /// An option's value is wrong (bad boolean, number, slot name, interpolation...).
    #[error("{}:{line}: {section}: option '{option}': {message}", file.display())]
    BadValue {
        /// The file holding the value (for an inherited value, where it was written).
        file: PathBuf,
        /// The line of the option.
        line: usize,
        /// The section the value was read for: `server 'pg1'` or `[pgbk]`.
        section: String,
        /// The option name (lower-case).
        option: String,
        /// What is wrong.
        message: String,
    },
    /// A server section lacks a required option.
    #[error("{}:{line}: server '{server}': missing required option '{option}'", file.display())]
    Missing {
        /// The file holding the section.
        file: PathBuf,
        /// The section header's line.
        line: usize,
        /// The server.
        server: String,
        /// The missing option.
        option: String,
    },
    /// [`Config::server`] was asked for a name no section defines.
    #[error("unknown server '{name}' (known: {})", known_list(known))]
    UnknownServer {
        /// The requested name.
        name: String,
        /// The configured names, sorted.
        known: Vec<String>,
    },
}

/// An I/O error's text without Rust's " (os error N)" suffix, like `strerror`.
fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    }
}

/// A server's restore-drill options and recovery objectives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrillSettings {
    /// `drill_workdir`: where drills restore (default `<home>/drills`).
    pub workdir: Option<PathBuf>,
    /// `drill_pg_bin`: the PostgreSQL binaries a drill starts (default: `path_prefix`,
    /// else `/usr/lib/postgresql/<major>/bin`).
    pub pg_bin: Option<String>,
    /// `drill_check_query`: a query whose first value the drill reports.
    pub check_query: Option<String>,
    /// `drill_check_database`: where that query runs (default: `conninfo`'s dbname,
    /// else `postgres`).
    pub check_database: Option<String>,
    /// `drill_check_expected`: the value the query must return.
    pub check_expected: Option<String>,
    /// `drill_check_minimum`: a lower bound for the query's (numeric) value.
    pub check_minimum: Option<f64>,
    /// `drill_maximum_age`: check warns when the newest drill is older.
    pub maximum_age: Option<Duration>,
    /// `recovery_time_objective`: the RTO a drill must meet.
    pub rto: Option<Duration>,
    /// `recovery_point_objective`: the RPO a drill and the live archive must meet.
    pub rpo: Option<Duration>,
    /// `drill_schedule`: when cron starts a drill.
    pub schedule: Option<values::DrillSchedule>,
    /// `drill_ssh_command`: the drill host, reached over SSH (`None`: this host).
    pub ssh_command: Option<String>,
}

/// Options of a server section that pgbk reads into [`ServerConfig`] fields.
const SERVER_OPTIONS: &[&str] = &[
    "description",
    "active",
    "conninfo",
    "streaming_conninfo",
    "primary_conninfo",
    "wal_conninfo",
    "wal_streaming_conninfo",
    "streaming_archiver",
    "streaming_archiver_name",
    "slot_name",
    "create_slot",
    "backup_method",
    "ssh_command",
    "archiver",
    "parallel_jobs",
    "put_wal_ahead",
    "compression",
    "bandwidth_limit",
    "network_compression",
    "immediate_checkpoint",
    "backup_resume",
    "basebackup_retry_times",
    "basebackup_retry_sleep",
    "retention_policy",
    "minimum_redundancy",
    "wal_retention_policy",
    "retention_policy_mode",
    "last_backup_maximum_age",
    "last_wal_maximum_age",
    "path_prefix",
    "primary_ssh_command",
    "primary_pgbk_command",
    "reuse_backup",
    "backup_type",
    "full_backup_every",
    "incremental_fallback",
    "incremental_read",
    "repository",
    "drill_workdir",
    "drill_pg_bin",
    "drill_check_query",
    "drill_check_database",
    "drill_check_expected",
    "drill_check_minimum",
    "drill_maximum_age",
    "drill_schedule",
    "drill_ssh_command",
    "recovery_time_objective",
    "recovery_point_objective",
];

/// Barman server options pgbk does not use (yet): accepted silently, kept in `settings`.
const BARMAN_SERVER_OPTIONS: &[&str] = &[
    "archiver_batch_size",
    "autogenerate_manifest",
    "backup_directory",
    "backup_options",
    "basebackups_directory",
    "check_timeout",
    "cluster",
    "config_changes_queue",
    "custom_compression_filter",
    "custom_compression_magic",
    "custom_decompression_filter",
    "errors_directory",
    "forward_config_path",
    "incoming_wals_directory",
    "keepalive_interval",
    "last_backup_minimum_size",
    "local_staging_path",
    "lock_directory_cleanup",
    "max_incoming_wals_queue",
    "model",
    "parallel_jobs_start_batch_period",
    "parallel_jobs_start_batch_size",
    "primary_checkpoint_timeout",
    "recovery_options",
    "recovery_staging_path",
    "streaming_archiver_batch_size",
    "streaming_backup_name",
    "streaming_wals_directory",
    "tablespace_bandwidth_limit",
    "wals_directory",
    "worm_mode",
    "xlogdb_directory",
];

/// Prefixes of Barman option families accepted silently (hook scripts, cloud keys...).
const BARMAN_SERVER_PREFIXES: &[&str] = &[
    "pre_",
    "post_",
    "backup_compression",
    "snapshot_",
    "aws_",
    "azure_",
    "gcp_",
    "gcs_",
];

/// Server options that make no sense as a default for every server; in the main
/// section they are ignored with a warning.
const SERVER_ONLY_OPTIONS: &[&str] = &[
    "description",
    "active",
    "conninfo",
    "streaming_conninfo",
    "ssh_command",
    "backup_directory",
    "basebackups_directory",
    "wals_directory",
    "errors_directory",
    "incoming_wals_directory",
    "streaming_wals_directory",
    "xlogdb_directory",
    "primary_conninfo",
    "wal_conninfo",
    "wal_streaming_conninfo",
    "cluster",
    "model",
];

/// Options only the main section has.
const MAIN_OPTIONS: &[&str] = &[
    "home",
    "barman_home",
    "configuration_files_directory",
    "log_file",
    "log_level",
    "barman_user",
    "barman_lock_directory",
];

/// Whether a server section may carry `key` (pgbk's own or a known Barman option).
fn is_server_option(key: &str) -> bool {
    SERVER_OPTIONS.contains(&key)
        || repository::S3_OPTIONS.contains(&key)
        || BARMAN_SERVER_OPTIONS.contains(&key)
        || BARMAN_SERVER_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Whether `key` in the main section is a default for every server.
fn is_inherited_option(key: &str) -> bool {
    is_server_option(key) && !SERVER_ONLY_OPTIONS.contains(&key)
}

fn is_main_section(name: &str) -> bool {
    name == MAIN_SECTION || name == BARMAN_MAIN_SECTION
}

/// An option value after interpolation, with where it was written.
#[derive(Clone, Debug)]
struct Resolved {
    value: String,
    file: PathBuf,
    line: usize,
}

impl Config {
    /// The main file path to use: the explicit `-c` value, else `$PGBK_CONFIG`
    /// (when set and not empty), else `/etc/pgbk/pgbk.conf`.
    pub fn default_path(explicit: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        match std::env::var_os(CONFIG_ENV) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Reads and validates the main file at `path` and every `*.conf` file of its
    /// `configuration_files_directory`. Only reads; never creates anything.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let main = read_ini(path)?;
        let folder = path.parent().unwrap_or_else(|| Path::new(""));
        let mut warnings = Vec::new();

        let mut main_section: Option<&Section> = None;
        for s in main.sections.iter().filter(|s| is_main_section(&s.name)) {
            if let Some(first) = main_section {
                return Err(ConfigError::Syntax {
                    file: path.to_path_buf(),
                    line: s.line,
                    message: format!(
                        "section [{}] repeats the main section [{}] of line {}; use only one",
                        s.name, first.name, first.line
                    ),
                });
            }
            main_section = Some(s);
        }
        let no_entries = Entries::new();
        let main_entries = main_section.map_or(&no_entries, |s| &s.entries);
        let main_label = format!(
            "[{}]",
            main_section.map_or(MAIN_SECTION, |s| s.name.as_str())
        );

        // Main-only options, read like ConfigParser would: the section, then [DEFAULT].
        let main_get = |key: &str| -> Result<Option<Resolved>, ConfigError> {
            let Some(entry) = main_entries.get(key).or_else(|| main.defaults.get(key)) else {
                return Ok(None);
            };
            let scope = Scope {
                layers: vec![main_entries, &main.defaults],
                extra: &[],
            };
            let value = ini::interpolate(&entry.value, &scope)
                .map_err(|message| bad_value(entry, &main_label, key, message))?;
            Ok(Some(Resolved {
                value: value.trim().to_string(),
                file: entry.file.clone(),
                line: entry.line,
            })
            .filter(|r| !r.value.is_empty()))
        };
        let main_err = |r: &Resolved, key: &str, message: String| ConfigError::BadValue {
            file: r.file.clone(),
            line: r.line,
            section: main_label.clone(),
            option: key.to_string(),
            message,
        };

        if let (Some(h), Some(b)) = (main_entries.get("home"), main_entries.get("barman_home")) {
            warnings.push(format!(
                "{}:{}: both 'home' and 'barman_home' (line {}) are set in {main_label}; using 'home'",
                h.file.display(),
                h.line,
                b.line
            ));
        }
        let home = match main_get("home")? {
            Some(r) => Some(("home", r)),
            None => main_get("barman_home")?.map(|r| ("barman_home", r)),
        };
        let home = match home {
            Some((key, r)) => {
                let p = PathBuf::from(&r.value);
                if !p.is_absolute() {
                    return Err(main_err(
                        &r,
                        key,
                        format!("must be an absolute path, got '{}'", r.value),
                    ));
                }
                p
            }
            None => PathBuf::from(DEFAULT_HOME),
        };
        let configuration_files_directory = match main_get("configuration_files_directory")? {
            Some(r) => folder.join(&r.value),
            None => folder.join("conf.d"),
        };
        let log_file = main_get("log_file")?.map(|r| folder.join(&r.value));
        let log_level = match main_get("log_level")? {
            Some(r) => {
                values::parse_log_level(&r.value).map_err(|m| main_err(&r, "log_level", m))?
            }
            None => "info".to_string(),
        };

        for (key, entry) in main_entries {
            if MAIN_OPTIONS.contains(&key.as_str()) || is_inherited_option(key) {
                continue;
            }
            let what = if is_server_option(key) {
                format!("option '{key}' only applies to server sections; ignored in {main_label}")
            } else {
                format!("unknown option '{key}' in section {main_label} ignored")
            };
            warnings.push(format!("{}:{}: {what}", entry.file.display(), entry.line));
        }

        // Every other file, then the sections of all files.
        let mut others = Vec::new();
        for conf in list_conf_files(&configuration_files_directory)? {
            let parsed = read_ini(&conf)?;
            if let Some(s) = parsed.sections.iter().find(|s| is_main_section(&s.name)) {
                return Err(ConfigError::Syntax {
                    file: conf.clone(),
                    line: s.line,
                    message: format!(
                        "section [{}] is the main section and belongs in the main file {}",
                        s.name,
                        path.display()
                    ),
                });
            }
            others.push(parsed);
        }
        let files = || std::iter::once(&main).chain(others.iter());
        // [DEFAULT] keys merge across files, a later file overriding an earlier one.
        let mut defaults = Entries::new();
        for f in files() {
            defaults.extend(f.defaults.iter().map(|(k, e)| (k.clone(), e.clone())));
        }

        let home_text = home.to_string_lossy().into_owned();
        let mut servers = BTreeMap::new();
        let mut seen: HashMap<&str, &Section> = HashMap::new();
        for section in files().flat_map(|f| f.sections.iter()) {
            if is_main_section(&section.name) {
                continue;
            }
            check_server_name(section)?;
            if let Some(first) = seen.get(section.name.as_str()) {
                return Err(ConfigError::DuplicateServer {
                    server: section.name.clone(),
                    file: section.file.clone(),
                    line: section.line,
                    first_file: first.file.clone(),
                    first_line: first.line,
                });
            }
            seen.insert(&section.name, section);
            let builtins = [
                ("name", section.name.clone()),
                ("barman_home", home_text.clone()),
                ("home", home_text.clone()),
            ];
            let inputs = ServerInputs {
                section,
                defaults: &defaults,
                main: main_entries,
                builtins: &builtins,
            };
            if let Some(server) = build_server(&inputs, &mut warnings)? {
                servers.insert(server.name.clone(), server);
            }
        }

        Ok(Config {
            file: path.to_path_buf(),
            home,
            configuration_files_directory,
            log_file,
            log_level,
            servers,
            warnings,
        })
    }

    /// The server called `name`, or an error listing the configured ones.
    pub fn server(&self, name: &str) -> Result<&ServerConfig, ConfigError> {
        self.servers
            .get(name)
            .ok_or_else(|| ConfigError::UnknownServer {
                name: name.to_string(),
                known: self.servers.keys().cloned().collect(),
            })
    }
}

/// Reads one file and parses it as INI.
fn read_ini(path: &Path) -> Result<IniFile, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let newlines = e.as_bytes().iter().take(valid).filter(|&&b| b == b'\n');
        ConfigError::Encoding {
            path: path.to_path_buf(),
            line: newlines.count() + 1,
        }
    })?;
    ini::parse(path, &text)
}

/// The `*.conf` regular files of `dir` (symbolic links followed, hidden files
/// skipped), sorted by file name.
fn list_conf_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir_err = |source| ConfigError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".conf") {
            continue;
        }
        let path = dir.join(name);
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            names.push((name.to_string(), path));
        }
    }
    names.sort();
    Ok(names.into_iter().map(|(_, p)| p).collect())
}

/// Rejects section names that cannot be server names.
fn check_server_name(section: &Section) -> Result<(), ConfigError> {
    let name = section.name.as_str();
    let message = if name == "all" {
        Some(
            "server name 'all' is reserved (it means every server on the command line)".to_string(),
        )
    } else if is_main_section(&name.to_ascii_lowercase()) || name.eq_ignore_ascii_case("all") {
        Some(format!(
            "server name '{name}' is reserved (section names are case-sensitive: the main section is [{MAIN_SECTION}])"
        ))
    } else if name == "." || name == ".." {
        Some(format!("server name '{name}' is not allowed"))
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some(format!(
            "invalid server name '{name}': use letters, digits, '_', '.' and '-' only"
        ))
    } else {
        None
    };
    match message {
        Some(message) => Err(ConfigError::Syntax {
            file: section.file.clone(),
            line: section.line,
            message,
        }),
        None => Ok(()),
    }
}

fn bad_value(entry: &Entry, section: &str, option: &str, message: String) -> ConfigError {
    ConfigError::BadValue {
        file: entry.file.clone(),
        line: entry.line,
        section: section.to_string(),
        option: option.to_string(),
        message,
    }
}

/// What one server's options are drawn from.
struct ServerInputs<'a> {
    section: &'a Section,
    /// `[DEFAULT]` keys of all files.
    defaults: &'a Entries,
    /// The main section's keys.
    main: &'a Entries,
    /// Fallback interpolation values (`name`, `barman_home`).
    builtins: &'a [(&'a str, String)],
}

/// Builds one server, or `None` for a Barman model section (skipped with a warning).
fn build_server(
    inputs: &ServerInputs<'_>,
    warnings: &mut Vec<String>,
) -> Result<Option<ServerConfig>, ConfigError> {
    let label = format!("server '{}'", inputs.section.name);
    if inputs.is_model(&label, warnings)? {
        return Ok(None);
    }
    let opts = inputs.effective_options(&label, warnings)?;
    let f = Fields {
        label: &label,
        opts: &opts,
    };
    f.server(inputs.section, warnings).map(Some)
}

impl ServerInputs<'_> {
    /// Whether the section is a Barman model (`model = true`): pgbk skips it with a
    /// warning.
    fn is_model(&self, label: &str, warnings: &mut Vec<String>) -> Result<bool, ConfigError> {
        let section = self.section;
        if let Some(model) = section.entries.get("model") {
            let is_model = values::parse_bool(&model.value)
                .map_err(|m| bad_value(model, label, "model", m))?;
            if is_model {
                warnings.push(format!(
                    "{}:{}: section [{}] is a Barman model (model = true); pgbk does not support models, ignored",
                    section.file.display(),
                    section.line,
                    section.name
                ));
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The server's effective options (the section, then [DEFAULT], then defaults
    /// from the main section), each interpolated in its own scope; unknown options
    /// and options of the main section alone are warned about.
    fn effective_options(
        &self,
        label: &str,
        warnings: &mut Vec<String>,
    ) -> Result<BTreeMap<String, Resolved>, ConfigError> {
        let (inputs, section) = (self, self.section);
        let own_scope = Scope {
            layers: vec![&section.entries, inputs.defaults],
            extra: inputs.builtins,
        };
        let main_scope = Scope {
            layers: vec![inputs.main, inputs.defaults],
            extra: inputs.builtins,
        };
        let mut opts: BTreeMap<String, Resolved> = BTreeMap::new();
        let mut resolve =
            |key: &str, entry: &Entry, scope: &Scope<'_>| -> Result<(), ConfigError> {
                let value = match ini::interpolate(&entry.value, scope) {
                    Ok(v) => v,
                    Err(message) if is_server_option(key) => {
                        return Err(bad_value(entry, label, key, message))
                    }
                    // Barman never reads an unknown option, so a bad '%' in one is no error.
                    Err(_) => entry.value.clone(),
                };
                opts.insert(
                    key.to_string(),
                    Resolved {
                        value,
                        file: entry.file.clone(),
                        line: entry.line,
                    },
                );
                Ok(())
            };
        for (key, entry) in &section.entries {
            if !is_server_option(key) {
                let what = if MAIN_OPTIONS.contains(&key.as_str()) {
                    format!("option '{key}' only applies to the [{MAIN_SECTION}] section; ignored in server '{}'", section.name)
                } else {
                    format!(
                        "unknown option '{key}' in server '{}' ignored",
                        section.name
                    )
                };
                warnings.push(format!("{}:{}: {what}", entry.file.display(), entry.line));
            }
            resolve(key, entry, &own_scope)?;
        }
        for (key, entry) in inputs.defaults {
            if !section.entries.contains_key(key) {
                resolve(key, entry, &own_scope)?;
            }
        }
        for (key, entry) in inputs.main {
            if is_inherited_option(key)
                && !section.entries.contains_key(key)
                && !inputs.defaults.contains_key(key)
            {
                resolve(key, entry, &main_scope)?;
            }
        }
        Ok(opts)
    }
}

/// The steps from effective options to a server.
impl Fields<'_> {
    /// The server's typed settings, checked against each other.
    fn server(
        &self,
        section: &Section,
        warnings: &mut Vec<String>,
    ) -> Result<ServerConfig, ConfigError> {
        let f = self;
        let conninfo = f.conninfo(section)?;
        let (slot_name, create_slot) = f.slot()?;
        let (retention_policy, minimum_redundancy) = f.retention(section, warnings)?;
        let only = |expected: &'static str| {
            move |s: &str| {
                let lower = s.to_ascii_lowercase();
                if lower == expected {
                    Ok(lower)
                } else {
                    Err(format!("only '{expected}' is supported, got '{s}'"))
                }
            }
        };

        let server = ServerConfig {
            name: section.name.clone(),
            file: section.file.clone(),
            line: section.line,
            description: f
                .text("description")
                .map(|r| unquote(r.value.trim()).to_string())
                .unwrap_or_default(),
            active: f.bool("active", true)?,
            streaming_conninfo: f
                .text("streaming_conninfo")
                .map_or_else(|| conninfo.clone(), |r| r.value.clone()),
            conninfo,
            primary_conninfo: f.string("primary_conninfo"),
            wal_streaming_conninfo: f.string("wal_streaming_conninfo"),
            wal_conninfo: f.string("wal_conninfo"),
            streaming_archiver: f.bool("streaming_archiver", false)?,
            streaming_archiver_name: f
                .string("streaming_archiver_name")
                .unwrap_or_else(|| "pgbk_receive_wal".to_string()),
            slot_name,
            create_slot: create_slot.unwrap_or_default(),
            backup_method: f
                .parse("backup_method", |s| {
                    s.parse::<BackupMethod>().map_err(|e| e.to_string())
                })?
                .unwrap_or_default(),
            ssh_command: f.string("ssh_command"),
            archiver: f.bool("archiver", false)?,
            parallel_jobs: f
                .parse("parallel_jobs", |s| values::parse_u32(s, 1))?
                .unwrap_or(2),
            put_wal_ahead: f
                .parse("put_wal_ahead", |s| values::parse_u32(s, 0))?
                .unwrap_or(2),
            compression: f.parse("compression", values::parse_compression)?,
            bandwidth_limit: f
                .parse("bandwidth_limit", |s| values::parse_u64(s, 0))?
                .filter(|&n| n > 0),
            network_compression: f.bool("network_compression", false)?,
            immediate_checkpoint: f.bool("immediate_checkpoint", false)?,
            backup_resume: f.bool("backup_resume", false)?,
            basebackup_retry_times: f
                .parse("basebackup_retry_times", |s| values::parse_u32(s, 0))?
                .unwrap_or(0),
            basebackup_retry_sleep: f
                .parse("basebackup_retry_sleep", |s| values::parse_u64(s, 0))?
                .unwrap_or(30),
            retention_policy,
            minimum_redundancy,
            wal_retention_policy: f
                .parse("wal_retention_policy", only("main"))?
                .unwrap_or_else(|| "main".to_string()),
            retention_policy_mode: f
                .parse("retention_policy_mode", only("auto"))?
                .unwrap_or_else(|| "auto".to_string()),
            last_backup_maximum_age: f.parse("last_backup_maximum_age", values::parse_interval)?,
            last_wal_maximum_age: f.parse("last_wal_maximum_age", values::parse_interval)?,
            path_prefix: f.string("path_prefix"),
            primary_ssh_command: f.string("primary_ssh_command"),
            primary_pgbk_command: f
                .string("primary_pgbk_command")
                .unwrap_or_else(|| "pgbk".to_string()),
            reuse_backup: f
                .parse("reuse_backup", |s| {
                    s.parse::<ReuseBackup>().map_err(|e| e.to_string())
                })?
                .unwrap_or_default(),
            backup_type: f
                .parse("backup_type", |s| {
                    s.parse::<BackupType>().map_err(|e| e.to_string())
                })?
                .unwrap_or_default(),
            full_backup_every: f.parse("full_backup_every", |s| values::parse_u32(s, 1))?,
            incremental_fallback: f
                .parse("incremental_fallback", |s| {
                    s.parse::<IncrementalFallback>().map_err(|e| e.to_string())
                })?
                .unwrap_or_default(),
            incremental_read: f
                .parse("incremental_read", |s| {
                    s.parse::<IncrementalRead>().map_err(|e| e.to_string())
                })?
                .unwrap_or_default(),
            repository: repository::s3_repository(f, &section.name, warnings)?,
            drill: f.drill()?,
            settings: f
                .opts
                .iter()
                .map(|(k, r)| (k.clone(), r.value.clone()))
                .collect(),
        };
        Ok(server)
    }

    /// `conninfo`, which only a passive server (replicate) may leave out.
    fn conninfo(&self, section: &Section) -> Result<String, ConfigError> {
        let f = self;
        match f.text("conninfo") {
            Some(r) => Ok(r.value.clone()),
            // A passive server (replicate) never connects to PostgreSQL.
            None if f.text("primary_ssh_command").is_some() => Ok(String::new()),
            None => Err(ConfigError::Missing {
                file: section.file.clone(),
                line: section.line,
                server: section.name.clone(),
                option: "conninfo".to_string(),
            }),
        }
    }

    /// `slot_name` and `create_slot`: `auto` needs a slot name.
    fn slot(&self) -> Result<(Option<String>, Option<CreateSlot>), ConfigError> {
        let f = self;
        let slot_name = f.parse("slot_name", |s| {
            values::check_slot_name(s).map(|()| s.to_string())
        })?;
        let create_slot = f.parse("create_slot", |s| {
            s.parse::<CreateSlot>().map_err(|e| e.to_string())
        })?;
        if let (Some(CreateSlot::Auto), None) = (create_slot, &slot_name) {
            if let Some(r) = f.text("create_slot") {
                return Err(f.err(
                    r,
                    "create_slot",
                    "'auto' needs slot_name to be set".to_string(),
                ));
            }
        }
        Ok((slot_name, create_slot))
    }

    /// `retention_policy` and `minimum_redundancy`, warned about when a policy by
    /// redundancy keeps fewer backups.
    fn retention(
        &self,
        section: &Section,
        warnings: &mut Vec<String>,
    ) -> Result<(Option<String>, u32), ConfigError> {
        let f = self;
        let retention_policy = f.parse("retention_policy", |s| {
            values::check_retention_policy(s).map(|n| (s.to_string(), n))
        })?;
        let minimum_redundancy = f
            .parse("minimum_redundancy", |s| values::parse_u32(s, 0))?
            .unwrap_or(0);
        if let (Some((_, Some(n))), Some(r)) = (&retention_policy, f.text("retention_policy")) {
            if *n < u64::from(minimum_redundancy) {
                warnings.push(format!(
                    "{}:{}: server '{}': retention policy redundancy ({n}) is lower than minimum_redundancy ({minimum_redundancy}); {minimum_redundancy} backups are kept",
                    r.file.display(),
                    r.line,
                    section.name
                ));
            }
        }
        Ok((retention_policy.map(|(text, _)| text), minimum_redundancy))
    }

    /// The `drill_*` settings and the recovery objectives.
    fn drill(&self) -> Result<DrillSettings, ConfigError> {
        let f = self;
        Ok(DrillSettings {
            workdir: f.string("drill_workdir").map(PathBuf::from),
            pg_bin: f.string("drill_pg_bin"),
            check_query: f.string("drill_check_query"),
            check_database: f.string("drill_check_database"),
            check_expected: f.string("drill_check_expected"),
            check_minimum: f.parse("drill_check_minimum", |s| {
                s.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| format!("expected a number, got '{s}'"))
            })?,
            maximum_age: f.parse("drill_maximum_age", values::parse_interval)?,
            rto: f.parse("recovery_time_objective", values::parse_objective)?,
            rpo: f.parse("recovery_point_objective", values::parse_objective)?,
            schedule: f.parse("drill_schedule", values::parse_schedule)?,
            ssh_command: f.string("drill_ssh_command"),
        })
    }
}

/// Typed access to one server's effective options. An empty value counts as unset,
/// so `retention_policy =` in a server cancels a default from the main section.
struct Fields<'a> {
    label: &'a str,
    opts: &'a BTreeMap<String, Resolved>,
}

impl Fields<'_> {
    /// The option, when present and not blank.
    fn text(&self, key: &str) -> Option<&Resolved> {
        self.opts.get(key).filter(|r| !r.value.trim().is_empty())
    }

    /// The option's value, trimmed, when present and not blank.
    fn string(&self, key: &str) -> Option<String> {
        self.text(key).map(|r| r.value.trim().to_string())
    }

    fn err(&self, r: &Resolved, key: &str, message: String) -> ConfigError {
        ConfigError::BadValue {
            file: r.file.clone(),
            line: r.line,
            section: self.label.to_string(),
            option: key.to_string(),
            message,
        }
    }

    /// The option parsed by `parse` (given the trimmed value), `None` when unset.
    fn parse<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.text(key) {
            Some(r) => parse(r.value.trim())
                .map(Some)
                .map_err(|m| self.err(r, key, m)),
            None => Ok(None),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.parse(key, values::parse_bool)?.unwrap_or(default))
    }
}

/// A value written in one pair of matching quotes (`description = "Main server"`),
/// as many Barman configurations do, means the text inside them.
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}
