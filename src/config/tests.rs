//! Loading whole configurations from scratch folders.

use super::*;
use std::fs;

/// A scratch folder holding `pgbk.conf` and `conf.d/`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// A folder with `pgbk.conf` = `main` and an empty `conf.d/`.
    fn new(main: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("pgbk.conf"), main).expect("write main");
        fs::create_dir(dir.path().join("conf.d")).expect("mkdir conf.d");
        Setup { dir }
    }

    fn server_file(self, name: &str, text: &str) -> Setup {
        fs::write(self.dir.path().join("conf.d").join(name), text).expect("write server file");
        self
    }

    fn main_path(&self) -> PathBuf {
        self.dir.path().join("pgbk.conf")
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    fn load(&self) -> Config {
        match Config::load(&self.main_path()) {
            Ok(c) => c,
            Err(e) => panic!("load failed: {e}"),
        }
    }

    fn error(&self) -> String {
        match Config::load(&self.main_path()) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }
}

/// A conf.d file with one minimal server plus `extra` lines.
fn server(name: &str, extra: &str) -> String {
    format!("[{name}]\nconninfo = host=pg user=barman dbname=postgres\n{extra}")
}

const BARMAN_STREAMING: &str = r#"[pg]
description =  "Example of PostgreSQL Database (Streaming-Only)"
conninfo = host=pg user=barman dbname=postgres
streaming_conninfo = host=pg user=streaming_barman
backup_method = postgres
streaming_archiver = on
slot_name = barman
create_slot = auto
;path_prefix = "/usr/lib/postgresql/15/bin"
"#;

#[test]
fn barman_streaming_server_file_reads_unchanged() {
    let s = Setup::new(
        "[barman]\nbarman_home = /srv/backup\nbarman_user = barman\nlog_level = WARNING\n",
    )
    .server_file("pg.conf", BARMAN_STREAMING);
    let c = s.load();
    assert_eq!(c.home, PathBuf::from("/srv/backup"));
    assert_eq!(c.log_level, "warning");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let pg = c.server("pg").expect("pg");
    assert_eq!(pg.name, "pg");
    assert_eq!(pg.file, s.dir.path().join("conf.d/pg.conf"));
    assert_eq!(pg.line, 1);
    // Quoted as in Barman's example file; listed without the quotes, as Barman does.
    assert_eq!(
        pg.description,
        "Example of PostgreSQL Database (Streaming-Only)"
    );
    assert_eq!(pg.conninfo, "host=pg user=barman dbname=postgres");
    assert_eq!(pg.streaming_conninfo, "host=pg user=streaming_barman");
    assert_eq!(pg.backup_method, BackupMethod::Postgres);
    assert!(pg.streaming_archiver);
    assert_eq!(pg.slot_name.as_deref(), Some("barman"));
    assert_eq!(pg.create_slot, CreateSlot::Auto);
    assert_eq!(pg.path_prefix, None);
    assert!(!pg.settings.contains_key("path_prefix"));
    assert!(!pg.settings.contains_key(";path_prefix"));
}

#[test]
fn defaults_of_a_minimal_server() {
    let c = Setup::new("")
        .server_file("a.conf", &server("a", ""))
        .load();
    assert_eq!(c.home, PathBuf::from(DEFAULT_HOME));
    assert_eq!(c.log_level, "info");
    assert_eq!(c.log_file, None);
    let a = c.server("a").expect("a");
    assert_eq!(a.description, "");
    assert!(a.active);
    assert_eq!(a.streaming_conninfo, a.conninfo);
    assert!(!a.streaming_archiver);
    assert_eq!(a.streaming_archiver_name, "pgbk_receive_wal");
    assert_eq!(a.slot_name, None);
    assert_eq!(a.create_slot, CreateSlot::Manual);
    assert_eq!(a.backup_method, BackupMethod::Postgres);
    assert_eq!(a.ssh_command, None);
    assert!(!a.archiver);
    assert_eq!(a.parallel_jobs, 2);
    assert_eq!(a.compression, None);
    assert_eq!(a.bandwidth_limit, None);
    assert!(!a.network_compression);
    assert!(!a.immediate_checkpoint);
    assert_eq!(a.basebackup_retry_times, 0);
    assert_eq!(a.basebackup_retry_sleep, 30);
    assert_eq!(a.retention_policy, None);
    assert_eq!(a.minimum_redundancy, 0);
    assert_eq!(a.wal_retention_policy, "main");
    assert_eq!(a.retention_policy_mode, "auto");
    assert_eq!(a.last_backup_maximum_age, None);
    assert_eq!(a.last_wal_maximum_age, None);
    assert_eq!(a.primary_ssh_command, None);
    assert_eq!(a.primary_pgbk_command, "pgbk");
    assert_eq!(a.reuse_backup, ReuseBackup::Off);
    assert_eq!(a.settings.len(), 1);
}

#[test]
fn every_typed_option() {
    let c = Setup::new("")
        .server_file(
            "ssh.conf",
            "[db-1.example]\n\
             description = Main DB\n\
             active = false\n\
             conninfo = host=db1 user=barman\n\
             ssh_command = ssh postgres@db1 -p 2222\n\
             backup_method = RSYNC\n\
             reuse_backup = link\n\
             archiver = yes\n\
             parallel_jobs = 4\n\
             compression = GZIP\n\
             bandwidth_limit = 4000\n\
             network_compression = true\n\
             immediate_checkpoint = 1\n\
             basebackup_retry_times = 3\n\
             basebackup_retry_sleep = 10\n\
             retention_policy = RECOVERY WINDOW OF 2 WEEKS\n\
             minimum_redundancy = 1\n\
             wal_retention_policy = MAIN\n\
             retention_policy_mode = auto\n\
             last_backup_maximum_age = 1 DAYS\n\
             last_wal_maximum_age = 30 minutes\n\
             path_prefix = /usr/lib/postgresql/15/bin\n\
             primary_ssh_command = ssh pgbk@peer\n\
             primary_pgbk_command = /opt/pgbk/bin/pgbk\n\
             streaming_archiver_name = my_receiver\n",
        )
        .load();
    let s = c.server("db-1.example").expect("server");
    assert_eq!(s.description, "Main DB");
    assert!(!s.active);
    assert_eq!(s.ssh_command.as_deref(), Some("ssh postgres@db1 -p 2222"));
    assert_eq!(s.backup_method, BackupMethod::Rsync);
    assert_eq!(s.reuse_backup, ReuseBackup::Link);
    assert!(s.archiver);
    assert_eq!(s.parallel_jobs, 4);
    assert_eq!(s.compression.as_deref(), Some("gzip"));
    assert_eq!(s.bandwidth_limit, Some(4000));
    assert!(s.network_compression);
    assert!(s.immediate_checkpoint);
    assert_eq!(s.basebackup_retry_times, 3);
    assert_eq!(s.basebackup_retry_sleep, 10);
    assert_eq!(
        s.retention_policy.as_deref(),
        Some("RECOVERY WINDOW OF 2 WEEKS")
    );
    assert_eq!(s.minimum_redundancy, 1);
    assert_eq!(s.wal_retention_policy, "main");
    assert_eq!(s.last_backup_maximum_age, Some(Duration::from_secs(86_400)));
    assert_eq!(s.last_wal_maximum_age, Some(Duration::from_secs(1800)));
    assert_eq!(s.path_prefix.as_deref(), Some("/usr/lib/postgresql/15/bin"));
    assert_eq!(s.primary_ssh_command.as_deref(), Some("ssh pgbk@peer"));
    assert_eq!(s.primary_pgbk_command, "/opt/pgbk/bin/pgbk");
    assert_eq!(s.streaming_archiver_name, "my_receiver");
    // settings keep what was written (after interpolation), not the normalised value.
    assert_eq!(
        s.settings.get("compression").map(String::as_str),
        Some("GZIP")
    );
    assert_eq!(s.settings.len(), 24);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn bandwidth_limit_zero_means_unlimited() {
    let c = Setup::new("")
        .server_file("a.conf", &server("a", "bandwidth_limit = 0\n"))
        .load();
    assert_eq!(c.server("a").expect("a").bandwidth_limit, None);
}

#[test]
fn interpolation_of_conninfo_and_percent() {
    let c = Setup::new("")
        .server_file(
            "a.conf",
            "[a]\nhost = pg.example\nconninfo = host=%(host)s user=barman\n\
             streaming_conninfo = %(conninfo)s application_name=x\n\
             description = 100%% streaming\nincoming_wals_directory = %(barman_home)s/%(name)s/incoming\n",
        )
        .load();
    let a = c.server("a").expect("a");
    assert_eq!(a.conninfo, "host=pg.example user=barman");
    assert_eq!(
        a.streaming_conninfo,
        "host=pg.example user=barman application_name=x"
    );
    assert_eq!(a.description, "100% streaming");
    assert_eq!(
        a.settings
            .get("incoming_wals_directory")
            .map(String::as_str),
        Some("/var/lib/pgbk/a/incoming")
    );
    // 'host' is not a known option: it warns but still serves interpolation.
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].ends_with("a.conf:2: unknown option 'host' in server 'a' ignored"));
}

#[test]
fn bad_percent_is_an_error_naming_the_option() {
    let s = Setup::new("").server_file("a.conf", &server("a", "description = 50% done\n"));
    assert_eq!(
        s.error(),
        format!(
            "{}:3: server 'a': option 'description': '%' must be followed by '%' or '(', found: '% done'",
            s.path("conf.d/a.conf")
        )
    );
    let s = Setup::new("").server_file("a.conf", &server("a", "ssh_command = ssh %(host)s\n"));
    assert_eq!(
        s.error(),
        format!(
            "{}:3: server 'a': option 'ssh_command': bad value substitution: '%(host)s' names no option of this section or [DEFAULT]",
            s.path("conf.d/a.conf")
        )
    );
}

#[test]
fn bad_percent_in_an_unknown_option_only_warns() {
    let c = Setup::new("")
        .server_file("a.conf", &server("a", "my_note = 50% done\n"))
        .load();
    let a = c.server("a").expect("a");
    assert_eq!(
        a.settings.get("my_note").map(String::as_str),
        Some("50% done")
    );
    assert_eq!(c.warnings.len(), 1);
}

#[test]
fn continuation_lines_and_hash_inside_values() {
    let c = Setup::new("")
        .server_file(
            "a.conf",
            "[a]\nconninfo = host=pg\n  password=a#b\n    dbname=postgres\ndescription = first # not a comment\n\
             ssh_command: ssh -o ProxyCommand=x\n",
        )
        .load();
    let a = c.server("a").expect("a");
    assert_eq!(a.conninfo, "host=pg\npassword=a#b\ndbname=postgres");
    assert_eq!(a.description, "first # not a comment");
    assert_eq!(a.ssh_command.as_deref(), Some("ssh -o ProxyCommand=x"));
}

#[test]
fn keys_are_case_insensitive() {
    let c = Setup::new("[pgbk]\nLOG_LEVEL = debug\n")
        .server_file(
            "a.conf",
            "[a]\nConnInfo = host=x\nSTREAMING_ARCHIVER = On\n",
        )
        .load();
    let a = c.server("a").expect("a");
    assert_eq!(a.conninfo, "host=x");
    assert!(a.streaming_archiver);
    assert_eq!(c.log_level, "debug");
    // Section names are case-sensitive, as in ConfigParser.
    let s = Setup::new("[PGBK]\n");
    assert_eq!(
        s.error(),
        format!(
            "{}:1: server name 'PGBK' is reserved (section names are case-sensitive: the main section is [pgbk])",
            s.path("pgbk.conf")
        )
    );
}

#[test]
fn default_section_applies_everywhere() {
    let c = Setup::new("[DEFAULT]\ndomain = example.com\nstreaming_archiver = on\n[pgbk]\nhome = /srv/%(domain)s\n")
        .server_file(
            "a.conf",
            "[a]\nconninfo = host=a.%(domain)s\n[b]\nconninfo = host=b.%(domain)s\nstreaming_archiver = off\n",
        )
        .server_file("z.conf", "[DEFAULT]\nslot_name = %(name)s_slot\n")
        .load();
    assert_eq!(c.home, PathBuf::from("/srv/example.com"));
    let a = c.server("a").expect("a");
    assert_eq!(a.conninfo, "host=a.example.com");
    assert!(a.streaming_archiver);
    // A [DEFAULT] in a later file reaches servers of earlier files, as in ConfigParser.
    assert_eq!(a.slot_name.as_deref(), Some("a_slot"));
    assert_eq!(
        a.settings.get("domain").map(String::as_str),
        Some("example.com")
    );
    let b = c.server("b").expect("b");
    assert!(!b.streaming_archiver);
    assert_eq!(b.slot_name.as_deref(), Some("b_slot"));
    // [DEFAULT] helper keys never warn.
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn main_section_options_are_server_defaults() {
    let c = Setup::new(
        "[pgbk]\ncompression = gzip\nstreaming_archiver = on\nretention_policy = REDUNDANCY 3\n\
         minimum_redundancy = 1\nlast_backup_maximum_age = 2 WEEKS\nparallel_jobs = 8\n\
         path_prefix = /usr/pgsql-15/bin\nstreaming_archiver_name = rx_%(name)s\n",
    )
    .server_file("a.conf", &server("a", ""))
    .server_file(
        "b.conf",
        &server("b", "parallel_jobs = 1\nretention_policy =\n"),
    )
    .load();
    let a = c.server("a").expect("a");
    assert_eq!(a.compression.as_deref(), Some("gzip"));
    assert!(a.streaming_archiver);
    assert_eq!(a.retention_policy.as_deref(), Some("REDUNDANCY 3"));
    assert_eq!(a.minimum_redundancy, 1);
    assert_eq!(
        a.last_backup_maximum_age,
        Some(Duration::from_secs(14 * 86_400))
    );
    assert_eq!(a.parallel_jobs, 8);
    assert_eq!(a.path_prefix.as_deref(), Some("/usr/pgsql-15/bin"));
    assert_eq!(a.streaming_archiver_name, "rx_a");
    assert_eq!(
        a.settings.get("compression").map(String::as_str),
        Some("gzip")
    );
    let b = c.server("b").expect("b");
    assert_eq!(b.parallel_jobs, 1);
    // An empty value cancels the inherited one.
    assert_eq!(b.retention_policy, None);
    assert_eq!(b.streaming_archiver_name, "rx_b");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn bad_inherited_value_names_the_main_file_line_and_the_server() {
    let s = Setup::new("[pgbk]\nparallel_jobs = 0\n").server_file("a.conf", &server("a", ""));
    assert_eq!(
        s.error(),
        format!(
            "{}:2: server 'a': option 'parallel_jobs': must be at least 1, got 0",
            s.path("pgbk.conf")
        )
    );
}

#[test]
fn server_only_options_in_the_main_section_warn() {
    let c = Setup::new(
        "[pgbk]\nconninfo = host=x\nfoo = 1\nbarman_user = barman\nbarman_lock_directory = /run\n",
    )
    .server_file("a.conf", "[a]\nconninfo = host=a\n")
    .load();
    assert_eq!(c.server("a").expect("a").conninfo, "host=a");
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].ends_with(
        "pgbk.conf:2: option 'conninfo' only applies to server sections; ignored in [pgbk]"
    ));
    assert!(c.warnings[1].ends_with("pgbk.conf:3: unknown option 'foo' in section [pgbk] ignored"));
    // Not inherited: a server without conninfo still fails.
    let s = Setup::new("[pgbk]\nconninfo = host=x\n").server_file("b.conf", "[b]\n");
    assert!(s
        .error()
        .ends_with("b.conf:1: server 'b': missing required option 'conninfo'"));
}

#[test]
fn unknown_and_misplaced_options_warn_with_file_and_line() {
    let s = Setup::new("").server_file(
        "pg1.conf",
        "[pg1]\nconninfo = x\nbackup_directory = /b\npre_backup_script = /bin/true\npost_archive_retry_script = /bin/true\n\
         aws_profile = p\nbackup_compression_level = 3\nsnapshot_provider = gcp\nfoo = bar\nlog_level = debug\n",
    );
    let c = s.load();
    assert_eq!(
        c.warnings,
        vec![
            format!("{}:9: unknown option 'foo' in server 'pg1' ignored", s.path("conf.d/pg1.conf")),
            format!(
                "{}:10: option 'log_level' only applies to the [pgbk] section; ignored in server 'pg1'",
                s.path("conf.d/pg1.conf")
            ),
        ]
    );
    let pg1 = c.server("pg1").expect("pg1");
    assert_eq!(pg1.settings.get("foo").map(String::as_str), Some("bar"));
    assert_eq!(
        pg1.settings.get("backup_directory").map(String::as_str),
        Some("/b")
    );
    // log_level of a server section does not reach the main option.
    assert_eq!(c.log_level, "info");
}

#[test]
fn servers_in_the_main_file_and_sorted_conf_files() {
    let s = Setup::new("[pgbk]\n[local]\nconninfo = host=/run/postgresql\n")
        .server_file("b.conf", &server("b", ""))
        .server_file("a.conf", &server("a", ""))
        .server_file("notes.txt", "this is not INI")
        .server_file("c.conf.example", "nor this")
        .server_file(".hidden.conf", "nor this");
    fs::create_dir(s.dir.path().join("conf.d/dir.conf")).expect("mkdir");
    let c = s.load();
    assert_eq!(c.servers.keys().collect::<Vec<_>>(), ["a", "b", "local"]);
    assert_eq!(c.server("local").expect("local").file, s.main_path());
    assert_eq!(c.server("local").expect("local").line, 2);
}

#[test]
fn conf_d_files_are_read_in_name_order() {
    // [DEFAULT] of a later file wins over an earlier one.
    let c = Setup::new("")
        .server_file("20-b.conf", "[DEFAULT]\ndescription = from b\n")
        .server_file(
            "10-a.conf",
            "[DEFAULT]\ndescription = from a\n[a]\nconninfo = x\n",
        )
        .load();
    assert_eq!(c.server("a").expect("a").description, "from b");
}

#[test]
fn main_options() {
    let s = Setup::new(
        "[pgbk]\nhome = /data/pgbk\nconfiguration_files_directory = servers\nlog_file = log/pgbk.log\nlog_level = CRITICAL\n",
    );
    fs::create_dir(s.dir.path().join("servers")).expect("mkdir");
    let c = s.load();
    assert_eq!(c.file, s.main_path());
    assert_eq!(c.home, PathBuf::from("/data/pgbk"));
    assert_eq!(
        c.configuration_files_directory,
        s.dir.path().join("servers")
    );
    assert_eq!(c.log_file, Some(s.dir.path().join("log/pgbk.log")));
    assert_eq!(c.log_level, "error");
    assert!(c.servers.is_empty());
    assert!(c.warnings.is_empty());
}

#[test]
fn absolute_conf_dir_and_relative_main_path() {
    let s = Setup::new("");
    let other = tempfile::tempdir().expect("tempdir");
    fs::write(other.path().join("x.conf"), server("x", "")).expect("write");
    fs::write(
        s.main_path(),
        format!(
            "[pgbk]\nconfiguration_files_directory = {}\n",
            other.path().display()
        ),
    )
    .expect("write");
    let c = s.load();
    assert_eq!(c.configuration_files_directory, other.path());
    assert!(c.servers.contains_key("x"));
}

#[test]
fn a_bare_file_name_looks_for_conf_d_in_the_current_folder() {
    let err = Config::load(Path::new("no-such-pgbk.conf")).expect_err("missing");
    assert_eq!(
        err.to_string(),
        "configuration file no-such-pgbk.conf: No such file or directory"
    );
}

#[test]
fn the_repository_example_files_load_cleanly() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |rel: &str| fs::read_to_string(repo.join(rel)).expect("example file");
    let s = Setup::new(&read("pgbk.conf.example"))
        .server_file("pg.conf", &read("conf.d/streaming-server.conf.example"))
        .server_file("db1.conf", &read("conf.d/ssh-server.conf.example"));
    let c = s.load();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.home, PathBuf::from(DEFAULT_HOME));
    let pg = c.server("pg").expect("pg");
    assert_eq!(
        pg.streaming_conninfo,
        format!("{} user=streaming_pgbk", pg.conninfo)
    );
    assert!(pg.streaming_archiver);
    assert_eq!(pg.create_slot, CreateSlot::Auto);
    let db1 = c.server("db1").expect("db1");
    assert_eq!(db1.backup_method, BackupMethod::Rsync);
    assert_eq!(db1.reuse_backup, ReuseBackup::Link);
    assert!(db1.archiver);
}

#[test]
fn home_and_barman_home() {
    let c = Setup::new("[pgbk]\nhome = /a\nbarman_home = /b\n").load();
    assert_eq!(c.home, PathBuf::from("/a"));
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains("both 'home' and 'barman_home'"),
        "{:?}",
        c.warnings
    );
    let s = Setup::new("[pgbk]\nhome = relative/dir\n");
    assert_eq!(
        s.error(),
        format!(
            "{}:2: [pgbk]: option 'home': must be an absolute path, got 'relative/dir'",
            s.path("pgbk.conf")
        )
    );
    let s = Setup::new("[barman]\nbarman_home = ~/x\n");
    assert_eq!(
        s.error(),
        format!(
            "{}:2: [barman]: option 'barman_home': must be an absolute path, got '~/x'",
            s.path("pgbk.conf")
        )
    );
}

#[test]
fn bad_log_level() {
    let s = Setup::new("[pgbk]\nlog_level = loud\n");
    assert_eq!(
        s.error(),
        format!(
            "{}:2: [pgbk]: option 'log_level': expected debug, info, warning or error, got 'loud'",
            s.path("pgbk.conf")
        )
    );
}

#[test]
fn missing_main_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgbk.conf");
    let err = Config::load(&path).expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!(
            "configuration file {}: No such file or directory",
            path.display()
        )
    );
    assert!(matches!(err, ConfigError::Read { .. }));
}

#[test]
fn missing_or_empty_conf_dir() {
    let s = Setup::new("[pgbk]\nconfiguration_files_directory = /nonexistent/pgbk/conf.d\n");
    assert_eq!(
        s.error(),
        "configuration files directory /nonexistent/pgbk/conf.d: No such file or directory"
    );
    let s = Setup::new("");
    fs::remove_dir(s.dir.path().join("conf.d")).expect("rmdir");
    assert_eq!(
        s.error(),
        format!(
            "configuration files directory {}: No such file or directory",
            s.path("conf.d")
        )
    );
    let c = Setup::new("").load();
    assert!(c.servers.is_empty());
}

#[test]
fn loading_creates_nothing() {
    let s =
        Setup::new("[pgbk]\nhome = /nonexistent/pgbk-home\nlog_file = /nonexistent/log/pgbk.log\n")
            .server_file("a.conf", &server("a", ""));
    let before: Vec<_> = walk(s.dir.path());
    let c = s.load();
    assert_eq!(walk(s.dir.path()), before);
    assert!(!c.home.exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}

#[test]
fn syntax_errors_name_file_and_line() {
    let s = Setup::new("").server_file("a.conf", "[a]\nconninfo = x\nthis is wrong\n");
    assert_eq!(
        s.error(),
        format!(
            "{}:3: expected '[section]', 'key = value' or a comment, got 'this is wrong'",
            s.path("conf.d/a.conf")
        )
    );
    let s = Setup::new("home = /x\n[pgbk]\n");
    assert_eq!(
        s.error(),
        format!(
            "{}:1: option 'home' is outside any section (add a [section] header above it)",
            s.path("pgbk.conf")
        )
    );
    let s = Setup::new("").server_file("a.conf", "[a]\nconninfo = x\nConninfo = y\n");
    assert_eq!(
        s.error(),
        format!(
            "{}:3: option 'conninfo' is already set in section [a] at line 2",
            s.path("conf.d/a.conf")
        )
    );
}

#[test]
fn invalid_utf8() {
    let s = Setup::new("");
    fs::write(s.main_path(), b"[pgbk]\nhome = /x\xff\n").expect("write");
    assert_eq!(
        s.error(),
        format!(
            "configuration file {}: line 2 is not valid UTF-8",
            s.path("pgbk.conf")
        )
    );
}

#[test]
fn server_defined_twice() {
    let s = Setup::new("").server_file("a.conf", &server("a", "[x]\nconninfo = 1\n[a]\n"));
    assert_eq!(
        s.error(),
        format!(
            "{}:5: section [a] is already defined at line 1",
            s.path("conf.d/a.conf")
        )
    );
    let s = Setup::new("")
        .server_file("a.conf", &server("pg1", ""))
        .server_file("b.conf", &format!("\n{}", server("pg1", "")));
    assert_eq!(
        s.error(),
        format!(
            "{}:2: server 'pg1' is already defined at {}:1",
            s.path("conf.d/b.conf"),
            s.path("conf.d/a.conf")
        )
    );
    let s = Setup::new(&server("pg1", "")).server_file("a.conf", &server("pg1", ""));
    assert_eq!(
        s.error(),
        format!(
            "{}:1: server 'pg1' is already defined at {}:1",
            s.path("conf.d/a.conf"),
            s.path("pgbk.conf")
        )
    );
}

#[test]
fn main_section_rules() {
    let s = Setup::new("[pgbk]\n[barman]\n");
    assert_eq!(
        s.error(),
        format!(
            "{}:2: section [barman] repeats the main section [pgbk] of line 1; use only one",
            s.path("pgbk.conf")
        )
    );
    let s = Setup::new("").server_file("a.conf", "[barman]\nlog_level = info\n");
    assert_eq!(
        s.error(),
        format!(
            "{}:1: section [barman] is the main section and belongs in the main file {}",
            s.path("conf.d/a.conf"),
            s.path("pgbk.conf")
        )
    );
}

#[test]
fn reserved_and_invalid_server_names() {
    let s = Setup::new("").server_file("a.conf", &server("all", ""));
    assert_eq!(
        s.error(),
        format!(
            "{}:1: server name 'all' is reserved (it means every server on the command line)",
            s.path("conf.d/a.conf")
        )
    );
    let s = Setup::new("").server_file("a.conf", &server("pg 1", ""));
    assert_eq!(
        s.error(),
        format!(
            "{}:1: invalid server name 'pg 1': use letters, digits, '_', '.' and '-' only",
            s.path("conf.d/a.conf")
        )
    );
    let s = Setup::new("").server_file("a.conf", &server("..", ""));
    assert_eq!(
        s.error(),
        format!(
            "{}:1: server name '..' is not allowed",
            s.path("conf.d/a.conf")
        )
    );
    let s = Setup::new("").server_file("a.conf", &server("pg/1", ""));
    assert!(s.error().contains("invalid server name 'pg/1'"));
}

#[test]
fn missing_conninfo() {
    let s = Setup::new("").server_file(
        "pg1.conf",
        "# comment\n[pg1]\ndescription = x\nconninfo =\n",
    );
    assert_eq!(
        s.error(),
        format!(
            "{}:2: server 'pg1': missing required option 'conninfo'",
            s.path("conf.d/pg1.conf")
        )
    );
}

/// Loads a server with `line` as its fourth line and returns the error text.
fn value_error(line: &str) -> (Setup, String) {
    let s = Setup::new("").server_file(
        "pg1.conf",
        &format!("[pg1]\nconninfo = host=x\ndescription = d\n{line}\n"),
    );
    let e = s.error();
    (s, e)
}

#[test]
fn bad_values_name_file_line_server_and_option() {
    let cases = [
        ("streaming_archiver = maybe", "option 'streaming_archiver': expected on/off, got 'maybe'"),
        ("active = 2", "option 'active': expected on/off, got '2'"),
        ("parallel_jobs = many", "option 'parallel_jobs': expected a whole number, got 'many'"),
        ("parallel_jobs = 0", "option 'parallel_jobs': must be at least 1, got 0"),
        ("bandwidth_limit = -5", "option 'bandwidth_limit': expected a whole number, got '-5'"),
        ("minimum_redundancy = 1.5", "option 'minimum_redundancy': expected a whole number, got '1.5'"),
        (
            "slot_name = Barman-1",
            "option 'slot_name': invalid replication slot name 'Barman-1': use 1 to 63 lower-case letters, digits or '_'",
        ),
        (
            "retention_policy = KEEP 3",
            "option 'retention_policy': expected 'REDUNDANCY <n>' or 'RECOVERY WINDOW OF <n> DAYS|WEEKS|MONTHS', got 'KEEP 3'",
        ),
        ("create_slot = auto", "option 'create_slot': 'auto' needs slot_name to be set"),
        ("create_slot = sometimes", "option 'create_slot': expected auto or manual, got 'sometimes'"),
        ("backup_method = local-rsync", "option 'backup_method': expected postgres or rsync, got 'local-rsync'"),
        ("reuse_backup = hardlink", "option 'reuse_backup': expected off, copy or link, got 'hardlink'"),
        (
            "compression = brotli",
            "option 'compression': expected one of gzip, bzip2, pigz, pygzip, pybzip2, lz4, xz, zstd, snappy, custom, got 'brotli'",
        ),
        ("wal_retention_policy = base", "option 'wal_retention_policy': only 'main' is supported, got 'base'"),
        ("retention_policy_mode = manual", "option 'retention_policy_mode': only 'auto' is supported, got 'manual'"),
        (
            "last_backup_maximum_age = 1 YEAR",
            "option 'last_backup_maximum_age': expected '<n> DAYS', '<n> WEEKS', '<n> MONTHS', '<n> HOURS' or '<n> MINUTES', got '1 YEAR'",
        ),
        (
            "last_wal_maximum_age = soon",
            "option 'last_wal_maximum_age': expected '<n> DAYS', '<n> WEEKS', '<n> MONTHS', '<n> HOURS' or '<n> MINUTES', got 'soon'",
        ),
        ("basebackup_retry_sleep = x", "option 'basebackup_retry_sleep': expected a whole number, got 'x'"),
    ];
    for (line, message) in cases {
        let (s, err) = value_error(line);
        assert_eq!(
            err,
            format!("{}:4: server 'pg1': {message}", s.path("conf.d/pg1.conf")),
            "{line}"
        );
    }
}

#[test]
fn create_slot_auto_with_slot_name_is_fine() {
    let c = Setup::new("")
        .server_file(
            "a.conf",
            &server("a", "slot_name = pgbk\ncreate_slot = AUTO\n"),
        )
        .load();
    assert_eq!(c.server("a").expect("a").create_slot, CreateSlot::Auto);
}

#[test]
fn redundancy_below_minimum_warns() {
    let c = Setup::new("")
        .server_file(
            "a.conf",
            &server(
                "a",
                "retention_policy = redundancy 1\nminimum_redundancy = 2\n",
            ),
        )
        .load();
    assert_eq!(
        c.server("a").expect("a").retention_policy.as_deref(),
        Some("redundancy 1")
    );
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains(
        "server 'a': retention policy redundancy (1) is lower than minimum_redundancy (2); 2 backups are kept"
    ));
}

#[test]
fn model_sections_are_skipped() {
    let c = Setup::new("")
        .server_file(
            "m.conf",
            "[pg-switchover]\nmodel = true\ncluster = pg\nconninfo = host=other\n",
        )
        .server_file("pg.conf", &server("pg", "cluster = pg\n"))
        .load();
    assert_eq!(c.servers.keys().collect::<Vec<_>>(), ["pg"]);
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains("is a Barman model"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn unknown_server_lists_known_ones() {
    let c = Setup::new("")
        .server_file("a.conf", &server("b", ""))
        .server_file("b.conf", &server("a", ""))
        .load();
    assert_eq!(
        c.server("x").expect_err("unknown").to_string(),
        "unknown server 'x' (known: a, b)"
    );
    let c = Setup::new("").load();
    assert_eq!(
        c.server("x").expect_err("unknown").to_string(),
        "unknown server 'x' (known: none)"
    );
}

#[test]
fn every_error_is_one_line() {
    let (_, e) = value_error("description2 = 50%\n  more\nactive = x");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn default_path_order() {
    // Only the explicit case is checked here: the environment is shared by parallel tests.
    assert_eq!(
        Config::default_path(Some(Path::new("/tmp/x.conf"))),
        PathBuf::from("/tmp/x.conf")
    );
    if std::env::var_os(CONFIG_ENV).is_none() {
        assert_eq!(
            Config::default_path(None),
            PathBuf::from(DEFAULT_CONFIG_PATH)
        );
    }
}

#[test]
fn enums_round_trip() {
    for (text, v) in [("auto", CreateSlot::Auto), ("manual", CreateSlot::Manual)] {
        assert_eq!(v.to_string(), text);
        assert_eq!(text.to_uppercase().parse::<CreateSlot>(), Ok(v));
        assert_eq!(serde_json::to_string(&v).ok(), Some(format!("\"{text}\"")));
    }
    for (text, v) in [
        ("postgres", BackupMethod::Postgres),
        ("rsync", BackupMethod::Rsync),
    ] {
        assert_eq!(v.to_string(), text);
        assert_eq!(text.parse::<BackupMethod>(), Ok(v));
        assert_eq!(serde_json::to_string(&v).ok(), Some(format!("\"{text}\"")));
    }
    for (text, v) in [
        ("off", ReuseBackup::Off),
        ("copy", ReuseBackup::Copy),
        ("link", ReuseBackup::Link),
    ] {
        assert_eq!(v.to_string(), text);
        assert_eq!(text.parse::<ReuseBackup>(), Ok(v));
        assert_eq!(serde_json::to_string(&v).ok(), Some(format!("\"{text}\"")));
        assert_eq!(
            serde_json::from_str::<ReuseBackup>(&format!("\"{text}\"")).ok(),
            Some(v)
        );
    }
    assert_eq!(
        "x".parse::<ReuseBackup>().map_err(|e| e.to_string()),
        Err("expected off, copy or link, got 'x'".to_string())
    );
}

#[test]
fn drill_options_and_objectives() {
    let s = Setup::new("[pgbk]\nhome = /tmp/x\nrecovery_time_objective = 2 HOURS\n").server_file(
        "pg.conf",
        &server(
            "pg",
            "drill_schedule = weekly Sun 03:30\n\
             drill_check_query = SELECT count(*) FROM orders\n\
             drill_check_minimum = 1000\n\
             drill_maximum_age = 8 DAYS\n\
             recovery_point_objective = 90 SECONDS\n\
             drill_workdir = /srv/drills\n",
        ),
    );
    let c = s.load();
    let d = &c.servers["pg"].drill;
    assert_eq!(d.rto, Some(Duration::from_secs(7200)));
    assert_eq!(d.rpo, Some(Duration::from_secs(90)));
    assert_eq!(d.maximum_age, Some(Duration::from_secs(8 * 86_400)));
    assert_eq!(d.check_minimum, Some(1000.0));
    assert_eq!(
        d.workdir.as_deref(),
        Some(std::path::Path::new("/srv/drills"))
    );
    let sched = d.schedule.unwrap();
    assert_eq!((sched.weekday, sched.minute_of_day), (Some(6), 210));
    // Sunday 2026-12-06 03:30 UTC is the last due time from Monday 2026-12-07 noon.
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert_eq!(
        sched.last_due(now).to_rfc3339(),
        "2026-12-06T03:30:00+00:00"
    );
    let daily = values::parse_schedule("daily 02:00").unwrap();
    assert_eq!(
        daily.last_due(now).to_rfc3339(),
        "2026-12-07T02:00:00+00:00"
    );

    for (line, want) in [
        ("drill_schedule = hourly", "option 'drill_schedule': expected 'daily HH:MM' or 'weekly DAY HH:MM' (UTC), got 'hourly'"),
        ("drill_schedule = daily 25:00", "got 'daily 25:00'"),
        ("recovery_time_objective = soon", "option 'recovery_time_objective': expected '<n> SECONDS'"),
        ("drill_check_minimum = many", "option 'drill_check_minimum': expected a number, got 'many'"),
    ] {
        let s = Setup::new("[pgbk]\nhome = /tmp/x\n")
            .server_file("pg.conf", &server("pg", &format!("{line}\n")));
        let e = s.error();
        assert!(e.contains(want), "{line}: {e}");
    }
}
