//! Bad configuration: each mistake is one line on stderr naming the file, line and
//! option, exit code 2, and nothing is created on disk.

mod common;
use common::Pgbk;

const GOOD: &str = "description = ok\nconninfo = host=127.0.0.1 port=1 user=postgres\n";

fn assert_config_error(pg: &Pgbk, args: &[&str], needles: &[&str]) {
    let out = pg.run(args);
    assert_eq!(out.code, 2, "exit code for {args:?}: {out:?}");
    let err = out.stderr.trim();
    assert_eq!(
        err.lines().count(),
        1,
        "one-line error expected, got:\n{err}"
    );
    for n in needles {
        assert!(err.contains(n), "error {err:?} should mention {n:?}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert!(
        !pg.home.exists(),
        "nothing may be created on a configuration error"
    );
}

#[test]
fn malformed_line_names_file_and_line() {
    let pg = Pgbk::new();
    pg.add_server("pg1", &format!("{GOOD}this line has no separator\n"));
    assert_config_error(
        &pg,
        &["list-servers"],
        &["pg1.conf", ":4", "this line has no separator"],
    );
    assert_config_error(&pg, &["receive-wal", "pg1"], &["pg1.conf"]);
}

#[test]
fn missing_conninfo_names_server_and_option() {
    let pg = Pgbk::new();
    pg.add_server(
        "pg1",
        "description = no conninfo here\nstreaming_archiver = on\n",
    );
    assert_config_error(&pg, &["check", "pg1"], &["pg1.conf", "pg1", "conninfo"]);
}

#[test]
fn bad_value_names_option_and_value() {
    let pg = Pgbk::new();
    pg.add_server("pg1", &format!("{GOOD}streaming_archiver = maybe\n"));
    assert_config_error(
        &pg,
        &["status", "pg1"],
        &["pg1.conf", ":4", "streaming_archiver", "maybe"],
    );
}

#[test]
fn server_defined_twice_names_both_files() {
    let pg = Pgbk::new();
    pg.add_server("pg1", GOOD);
    std::fs::write(pg.conf_d.join("zz-copy.conf"), format!("[pg1]\n{GOOD}")).unwrap();
    assert_config_error(&pg, &["list-servers"], &["pg1", "pg1.conf", "zz-copy.conf"]);
}

#[test]
fn bad_interpolation_and_unknown_server() {
    let pg = Pgbk::new();
    pg.add_server("pg1", &format!("{GOOD}streaming_conninfo = %(nosuch)s\n"));
    assert_config_error(
        &pg,
        &["show-server", "pg1"],
        &["pg1.conf", "streaming_conninfo", "nosuch"],
    );

    let pg = Pgbk::new();
    pg.add_server("pg1", GOOD);
    assert_config_error(&pg, &["show-server", "nope"], &["nope", "pg1"]);
}

#[test]
fn unknown_option_warns_and_a_barman_file_loads() {
    let pg = Pgbk::new();
    pg.add_server(
        "pg",
        "description =  \"Example of PostgreSQL Database (Streaming-Only)\"\n\
         conninfo = host=pg user=barman dbname=postgres password=se#cret\n\
         streaming_conninfo = host=pg user=streaming_barman password=se#cret\n\
         backup_method = postgres\n\
         streaming_archiver = on\n\
         slot_name = barman\n\
         create_slot = auto\n\
         ;path_prefix = \"/usr/lib/postgresql/15/bin\"\n\
         frobnicate = yes\n",
    );
    let out = pg.run(&["list-servers"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("pg - Example of PostgreSQL Database (Streaming-Only)\n"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("frobnicate"),
        "unknown option should warn: {out:?}"
    );
    let show = pg.ok(&["show-server", "pg"]);
    assert!(show.contains("slot_name: barman"), "{show}");
    assert!(
        !show.contains("se#cret"),
        "password must be masked:\n{show}"
    );
    let json = pg.json(&["show-server", "pg"]);
    assert!(!json.to_string().contains("se#cret"));
    assert_eq!(json["streaming_archiver"], "true");
    let list = pg.json(&["list-servers"]);
    assert_eq!(list[0]["name"], "pg");
    assert!(!pg.home.exists(), "read-only verbs create nothing");
}

#[test]
fn missing_main_file_is_a_clear_error() {
    let pg = Pgbk::new();
    std::fs::remove_file(&pg.config).unwrap();
    let out = pg.run(&["list-servers"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("pgbk.conf"), "{out:?}");
}

/// Items 10 and 12 of the fixes issue: every error is one line that says each thing
/// once ("No such file or directory: No such file or directory (os error 2)",
/// "Connection refused" three times), and with `--format json` stdout carries one
/// JSON document for it, with the same exit code.
#[test]
fn errors_say_each_thing_once_and_are_json_with_format_json() {
    let pg = Pgbk::new();
    pg.add_server(
        "pg",
        "conninfo = host=127.0.0.1 port=1 user=postgres connect_timeout=2\n\
         streaming_archiver = on\nslot_name = s\n",
    );
    let once = |out: &common::Output, what: &str| {
        let line = out.error_lines();
        assert_eq!(line.len(), 1, "{what}: {out:?}");
        assert_eq!(
            line[0].matches(what).count(),
            1,
            "{what} said twice: {out:?}"
        );
    };
    let out = pg.run(&["backup", "pg"]);
    assert_eq!(out.code, 1, "{out:?}");
    once(&out, "Connection refused");
    // Barman's verb names are aliases (item 11).
    assert!(pg.ok(&["list-server"]).contains("pg"));
    assert!(pg.ok(&["show-servers", "pg"]).contains("conninfo"));
    for (args, code, server) in [
        (vec!["--format", "json", "check", "nosuch"], 2, "nosuch"),
        (vec!["--format", "json", "delete", "pg", "latest"], 2, "pg"),
        (vec!["--format", "json", "backup", "pg"], 1, "pg"),
    ] {
        let out = pg.run(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {out:?}"));
        assert_eq!(v["error"]["server"], server, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    let missing = pg.root.join("nowhere.conf");
    let bin = || std::process::Command::new(env!("CARGO_BIN_EXE_pgbk"));
    let out = bin()
        .arg("-c")
        .arg(&missing)
        .arg("list-servers")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nowhere.conf"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    let out = bin()
        .arg("-c")
        .arg(&pg.root)
        .arg("list-servers")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("Is a directory").count(), 1, "{err}");
}
