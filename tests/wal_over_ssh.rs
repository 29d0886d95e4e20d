//! WAL arriving over SSH: `archive_command` running `ssh … pgbk put-wal` on a real
//! PostgreSQL 15 under pgbench load through a real sshd, put-wal refusing what does
//! not belong in the archive, `archive-wal` (and `cron`) moving what archive_command
//! copied into incoming/, and the SSH items of `check`.

mod common;

use common::archiving::{
    completed_segments, names_in, pgbk_stdin, read_segment, ssh_archive_command, wait_archived,
};
use common::{
    is_segment_name, parse_segment_name, wait_until, Cluster, ClusterOptions, Pgbk, Sshd,
};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const MB: u64 = 1024 * 1024;

/// The check items of one server from `check <server> --format json` (whatever its
/// exit code), by name.
fn check_items(p: &Pgbk, server: &str) -> (i32, Vec<Value>) {
    let out = p.run(&["check", server, "--format", "json"]);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check printed invalid JSON ({e}):\n{}\n{}",
            out.stdout, out.stderr
        )
    });
    let items = doc[server]["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks for {server}: {doc}"))
        .clone();
    (out.code, items)
}

fn item<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no check item {name:?} in {items:?}"))
}

/// Completed segments in the cluster's pg_wal that PostgreSQL has marked archived
/// (`archive_status/<segment>.done`).
fn done_segments(c: &Cluster) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(c.pg_wal().join("archive_status"))
        .expect("read archive_status")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_suffix(".done")
                .filter(|s| is_segment_name(s))
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn archive_command_through_ssh_put_wal_under_pgbench_load_loses_nothing() {
    let sshd = Sshd::start();
    let p = Pgbk::new();
    let keys = common::pg_scratch_dir("pgbk-pg-ssh-");
    let archive_command = ssh_archive_command(&sshd, keys.path(), &p, "srv");
    let c = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(2),
        extra_conf: vec![
            "archive_mode = on".into(),
            format!("archive_command = '{archive_command}'"),
        ],
        ..Default::default()
    });
    let server_conf = |ssh: &str| {
        format!(
            "conninfo = {}\nstreaming_conninfo = %(conninfo)s\narchiver = on\n\
             ssh_command = {ssh}\n",
            c.conninfo()
        )
    };
    p.add_server("srv", &server_conf(&sshd.ssh_command("postgres")));

    c.pgbench_init(5);
    // 30 s of load, rate-limited so that the WAL volume (and the archiving time, one
    // ssh connection per segment) does not grow with the machine's speed.
    let mut bench = common::pg_command("pgbench");
    bench
        .args(["-n", "-T", "30", "-c", "2", "-j", "2", "-R", "200"])
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &c.port.to_string(),
        ])
        .arg("postgres");
    let out = common::run_checked(&mut bench, || c.log_tail(30));
    assert!(
        out.contains("number of transactions actually processed"),
        "{out}"
    );
    let last = c.psql("select pg_walfile_name(pg_switch_wal())");
    wait_archived(&c, &last);
    let failed: u64 = c
        .psql("select failed_count from pg_stat_archiver")
        .parse()
        .unwrap();
    let archived_count: usize = c
        .psql("select archived_count from pg_stat_archiver")
        .parse()
        .unwrap();
    assert_eq!(
        failed,
        0,
        "archive_command failed; server log:\n{}",
        c.log_tail(30)
    );

    let ours = p.archived_segments("srv");
    assert!(
        ours.len() >= 30,
        "only {} segments went through",
        ours.len()
    );
    assert_eq!(
        ours.len(),
        archived_count,
        "pgbk holds what PostgreSQL archived"
    );
    // No gap from the first segment to the last one PostgreSQL archived.
    let seg = 2 * MB;
    let segnos: Vec<u64> = ours.iter().map(|n| parse_segment_name(n, seg).1).collect();
    assert_eq!(
        segnos,
        (segnos[0]..segnos[0] + segnos.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(ours.last().unwrap().as_str(), last.as_str());
    // Byte-identical after plain `zstd -d` to every archived segment still in pg_wal.
    let done = done_segments(&c);
    assert!(
        done.len() >= 30,
        "pg_wal keeps {} archived segments",
        done.len()
    );
    for name in &done {
        assert!(
            ours.contains(name),
            "{name} archived by PostgreSQL, not in pgbk"
        );
        assert!(
            p.decompress_segment("srv", name) == read_segment(&c, name),
            "{name} differs from pg_wal"
        );
    }

    let (code, items) = check_items(&p, "srv");
    for name in [
        "archive_command",
        "continuous archiving",
        "incoming WAL",
        "archived WAL continuity",
        "WAL errors",
        "ssh",
        "PGDATA",
        "rsync",
    ] {
        assert_eq!(item(&items, name)["ok"], true, "{name}: {items:?}");
    }
    assert_eq!(code, 0, "check: {items:?}");
    let pgdata = item(&items, "PGDATA")["hint"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(pgdata.contains(c.datadir.to_str().unwrap()), "{pgdata}");

    // A known_hosts recording another key: the ssh item fails on one line, naming it.
    p.add_server(
        "srv",
        &server_conf(&sshd.ssh_command_with("postgres", &sshd.wrong_known_hosts())),
    );
    let (code, items) = check_items(&p, "srv");
    assert_eq!(code, 1);
    let ssh = item(&items, "ssh");
    assert_eq!(ssh["ok"], false);
    let hint = ssh["hint"].as_str().unwrap();
    assert!(hint.contains("host key") && !hint.contains('\n'), "{hint}");
    assert!(
        items.iter().all(|i| i["name"] != "PGDATA"),
        "nothing probed past the host key"
    );
    let nagios = p.run(&["check", "srv", "--nagios"]);
    assert_eq!(nagios.code, 2);
    assert!(nagios.stdout.contains("ssh"), "{}", nagios.stdout);

    // archive_command failing (the ssh target refuses) shows as continuous archiving.
    c.psql("alter system set archive_command = 'false'");
    c.reload();
    c.psql("create table after_failure (i int)");
    c.psql("select pg_switch_wal()");
    wait_until(Duration::from_secs(60), "a failed archive attempt", || {
        c.try_psql("select failed_count > 0 from pg_stat_archiver")
            .is_ok_and(|s| s == "t")
    });
    p.add_server("srv", &server_conf(&sshd.ssh_command("postgres")));
    let (_, items) = check_items(&p, "srv");
    let ca = item(&items, "continuous archiving");
    assert_eq!(ca["ok"], false, "{ca}");
    assert!(ca["hint"].as_str().unwrap().contains("failing"), "{ca}");
}

fn archiver_server(p: &Pgbk, name: &str, c: &Cluster) {
    p.add_server(
        name,
        &format!(
            "conninfo = {}\nstreaming_conninfo = %(conninfo)s\narchiver = on\n",
            c.conninfo()
        ),
    );
}

#[test]
fn put_wal_refuses_another_cluster_a_truncated_segment_and_different_content() {
    let opts = ClusterOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    };
    let a = Cluster::new(opts.clone());
    let b = Cluster::new(opts);
    let p = Pgbk::new();
    archiver_server(&p, "srv", &a);
    let segs = completed_segments(&a, 4);
    let other = completed_segments(&b, 4);
    assert_ne!(a.system_id(), b.system_id());
    let (s1, s2) = (&segs[0], &segs[1]);

    let push = |name: &str, data: &[u8]| pgbk_stdin(&p, &["put-wal", "srv", "--name", name], data);
    let first = read_segment(&a, s1);
    let (code, out, err) = pgbk_stdin(
        &p,
        &["put-wal", "srv", "--name", s1, "--format", "json"],
        &first,
    );
    assert_eq!(code, 0, "{out}{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["status"], "stored");
    // The same content again: success, nothing rewritten.
    let (code, out, err) = pgbk_stdin(
        &p,
        &["put-wal", "srv", "--name", s1, "--format", "json"],
        &first,
    );
    assert_eq!(code, 0, "{out}{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["status"], "already_present");
    assert_eq!(p.decompress_segment("srv", s1), first);

    // Another cluster's segment under the name that comes next: refused.
    let foreign = read_segment(&b, other.iter().find(|n| *n == s2).unwrap_or(&other[1]));
    let (code, _, err) = push(s2, &foreign);
    assert_eq!(code, 1, "{err}");
    let line = err.trim();
    assert!(
        line.contains("system identifier") && line.contains("srv"),
        "{err}"
    );
    // A truncated copy of the right segment: refused.
    let second = read_segment(&a, s2);
    let (code, _, err) = push(s2, &second[..second.len() / 2]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("truncated"), "{err}");
    // Neither entered the archive: not on disk, not in the catalog.
    assert_eq!(p.archived_segments("srv"), vec![s1.clone()]);
    let st = p.run(&["status", "srv", "--format", "json"]);
    let st: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(st["local"]["archived_files"], 1, "{st}");
    assert!(names_in(&p.home.join("srv/errors")).is_empty());
    assert!(names_in(&p.home.join("srv/incoming")).is_empty());
    // Empty input, and a name that is no WAL file name.
    let (code, _, err) = push(s2, b"");
    assert_eq!(code, 1);
    assert!(err.contains("empty"), "{err}");
    let (code, _, err) = push("../../etc/passwd", &second);
    assert_eq!(code, 2, "{err}");
    // The right segment is then accepted, named from its header without --name.
    let (code, out, err) = pgbk_stdin(&p, &["put-wal", "srv"], &second);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(s2.as_str()), "{out}");
    assert_eq!(p.decompress_segment("srv", s2), second);

    // Different content under an archived name: refused, kept in errors/, reported.
    let mut altered = first.clone();
    altered[8192 + 4000] ^= 0xFF;
    let (code, _, err) = push(s1, &altered);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("different content"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("pgbk:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert_eq!(
        p.decompress_segment("srv", s1),
        first,
        "the archived copy stays"
    );
    let errors = names_in(&p.home.join("srv/errors"));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.ends_with(".reason")));
    // Pushed again (PostgreSQL retries): still one refused copy.
    assert_eq!(push(s1, &altered).0, 1);
    assert_eq!(names_in(&p.home.join("srv/errors")).len(), 2);
    let (code, items) = check_items(&p, "srv");
    assert_eq!(code, 1);
    assert_eq!(item(&items, "WAL errors")["ok"], false);
}

#[test]
fn archive_wal_and_cron_move_incoming_files_into_the_archive() {
    let c = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    let p = Pgbk::new();
    archiver_server(&p, "inc", &c);
    let segs = completed_segments(&c, 6);
    assert!(segs.len() >= 6, "{segs:?} in {:?}", names_in(&c.pg_wal()));
    let incoming = p.home.join("inc/incoming");
    fs::create_dir_all(&incoming).unwrap();
    for s in &segs[..3] {
        fs::copy(c.pg_wal().join(s), incoming.join(s)).unwrap();
    }
    // segs[3]'s content under segs[4]'s name: its pages say it is elsewhere.
    fs::write(incoming.join(&segs[4]), read_segment(&c, &segs[3])).unwrap();
    // rsync's temporary file for a copy in progress.
    let temp = format!(".{}.Xa81Qz", segs[5]);
    fs::write(incoming.join(&temp), &read_segment(&c, &segs[5])[..100_000]).unwrap();

    // A spool file a killed put-wal left two hours ago.
    let spool = incoming.join(format!(".put-wal.{}.4242", segs[5]));
    fs::write(&spool, b"half a segment").unwrap();
    let mut touch = Command::new("touch");
    touch.args(["-d", "2 hours ago"]).arg(&spool);
    assert!(touch.status().unwrap().success());

    let out = p.run(&["archive-wal", "inc", "--format", "json"]);
    assert_eq!(
        out.code, 1,
        "one file refused: {}{}",
        out.stdout, out.stderr
    );
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["archived"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(r["refused"][0]["name"], segs[4].as_str(), "{r}");
    assert!(
        r["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("address"),
        "{r}"
    );
    assert_eq!(r["bytes"], 3 * MB);
    for s in &segs[..3] {
        assert_eq!(p.decompress_segment("inc", s), read_segment(&c, s), "{s}");
    }
    assert_eq!(p.archived_segments("inc"), segs[..3].to_vec());
    assert_eq!(
        names_in(&incoming),
        vec![temp.clone()],
        "the temp file is left"
    );
    let errors = names_in(&p.home.join("inc/errors"));
    assert_eq!(errors.len(), 2, "{errors:?}");
    let reason_file = errors.iter().find(|e| e.ends_with(".reason")).unwrap();
    let reason = fs::read_to_string(p.home.join("inc/errors").join(reason_file)).unwrap();
    assert!(reason.contains(&segs[4]), "{reason}");
    let (_, items) = check_items(&p, "inc");
    assert_eq!(item(&items, "WAL errors")["ok"], false);
    assert_eq!(item(&items, "incoming WAL")["ok"], true, "{items:?}");

    // A file waiting for 10 minutes fails `incoming WAL`; cron archives it.
    fs::copy(c.pg_wal().join(&segs[3]), incoming.join(&segs[3])).unwrap();
    let mut touch = Command::new("touch");
    touch
        .args(["-d", "10 minutes ago"])
        .arg(incoming.join(&segs[3]));
    assert!(touch.status().unwrap().success());
    let (_, items) = check_items(&p, "inc");
    let inc = item(&items, "incoming WAL");
    assert_eq!(inc["ok"], false, "{inc}");
    assert!(
        inc["hint"].as_str().unwrap().contains("archive-wal"),
        "{inc}"
    );
    fs::copy(c.pg_wal().join(&segs[4]), incoming.join(&segs[4])).unwrap();
    let actions = p.json(&["cron"]);
    let step = actions
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "archive-wal")
        .unwrap_or_else(|| panic!("no archive-wal action: {actions}"));
    assert_eq!(
        step["details"]["archived"].as_array().unwrap().len(),
        2,
        "{step}"
    );
    assert_eq!(p.archived_segments("inc"), segs[..5].to_vec());
    assert_eq!(
        p.decompress_segment("inc", &segs[4]),
        read_segment(&c, &segs[4])
    );
    assert_eq!(names_in(&incoming), vec![temp]);
    let (_, items) = check_items(&p, "inc");
    assert_eq!(item(&items, "incoming WAL")["ok"], true);
    assert_eq!(item(&items, "archived WAL continuity")["ok"], true);
}

#[test]
fn a_promoted_standby_archives_its_history_and_partial_segment_through_put_wal() {
    let sshd = Sshd::start();
    let p = Pgbk::new();
    let keys = common::pg_scratch_dir("pgbk-pg-ssh-");
    let archive_command = ssh_archive_command(&sshd, keys.path(), &p, "tl");
    let primary = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(1),
        extra_conf: vec![
            "archive_mode = on".into(),
            format!("archive_command = '{archive_command}'"),
        ],
        ..Default::default()
    });
    archiver_server(&p, "tl", &primary);
    completed_segments(&primary, 3);
    let standby = primary.standby();
    primary.psql("insert into filler select g, 'before promotion' from generate_series(1, 100) g");
    primary.wait_for_catchup(&standby);
    // The primary's archiver archives every complete segment as it shuts down.
    primary.stop("fast");
    standby.promote();
    archiver_server(&p, "tl", &standby);
    standby.psql("insert into filler select g, 'after promotion' from generate_series(1, 3000) g");
    let last = standby.psql("select pg_walfile_name(pg_switch_wal())");
    assert!(last.starts_with("00000002"), "{last}");
    wait_archived(&standby, &last);
    assert_eq!(
        standby
            .psql("select failed_count from pg_stat_archiver")
            .as_str(),
        "0",
        "{}",
        standby.log_tail(30)
    );

    assert_eq!(p.history_files("tl"), vec!["00000002.history".to_string()]);
    assert_eq!(
        fs::read(p.wals_dir("tl").join("00000002.history")).unwrap(),
        fs::read(standby.pg_wal().join("00000002.history")).unwrap()
    );
    let partials = p.archived_partials("tl");
    assert_eq!(partials.len(), 1, "{partials:?}");
    let on_standby = standby.pg_wal().join(&partials[0]);
    if on_standby.exists() {
        assert!(p.decompress_segment("tl", &partials[0]) == fs::read(&on_standby).unwrap());
    }
    let ours = p.archived_segments("tl");
    assert!(ours.iter().any(|s| s.starts_with("00000001")));
    assert!(ours.contains(&last), "{ours:?}");
    for name in done_segments(&standby)
        .iter()
        .filter(|n| n.starts_with("00000002"))
    {
        assert!(
            p.decompress_segment("tl", name) == read_segment(&standby, name),
            "{name}"
        );
    }
    let (code, items) = check_items(&p, "tl");
    assert_eq!(
        item(&items, "archived WAL continuity")["ok"],
        true,
        "{items:?}"
    );
    assert_eq!(
        item(&items, "continuous archiving")["ok"],
        true,
        "{items:?}"
    );
    assert_eq!(code, 0, "{items:?}");
}

/// Runs `pgbk <args>` with stdin from `input` and returns (exit code, stderr, peak
/// resident memory in KiB of that one process, from wait4's rusage). Linux carries
/// the spawning process's high-water mark into the child's, so the figure is an upper
/// bound of pgbk's own peak.
fn pgbk_measured(p: &Pgbk, args: &[&str], input: &Path) -> (i32, String, i64) {
    let log = p.root.join("measured.stderr");
    let child = p
        .cmd()
        .args(args)
        .stdin(fs::File::open(input).expect("open input"))
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("create log"))
        .spawn()
        .expect("spawn pgbk");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter; pid is our own unreaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (
        code,
        fs::read_to_string(&log).unwrap_or_default(),
        usage.ru_maxrss,
    )
}

#[test]
fn put_wal_streams_a_128_mib_segment_through_a_spool_with_bounded_memory() {
    let c = Cluster::new(ClusterOptions {
        wal_segsize_mb: Some(128),
        ..Default::default()
    });
    let p = Pgbk::new();
    archiver_server(&p, "big", &c);
    let segs = completed_segments(&c, 1);
    let name = &segs[0];
    let path = c.pg_wal().join(name);
    assert_eq!(fs::metadata(&path).unwrap().len(), 128 * MB);

    // Truncated: refused, nothing archived, no spool left behind.
    let short = p.root.join("short");
    // Copied as a stream: the test process itself never holds a segment, so its
    // memory high-water mark (which a spawned child starts from) stays low.
    let mut from = std::io::Read::take(fs::File::open(&path).unwrap(), 100 * MB);
    std::io::copy(&mut from, &mut fs::File::create(&short).unwrap()).unwrap();
    let (code, err, _) = pgbk_measured(&p, &["put-wal", "big", "--name", name], &short);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(p.archived_segments("big").is_empty());
    assert!(names_in(&p.home.join("big/incoming")).is_empty());

    let (code, err, max_kib) = pgbk_measured(&p, &["put-wal", "big", "--name", name], &path);
    assert_eq!(code, 0, "{err}");
    assert!(
        max_kib < 96 * 1024,
        "put-wal peaked at {max_kib} KiB for a 128 MiB segment: it must not hold it whole"
    );
    assert!(p.decompress_segment("big", name) == read_segment(&c, name));
    assert!(
        names_in(&p.home.join("big/incoming")).is_empty(),
        "spool removed"
    );
}
