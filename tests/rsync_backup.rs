//! `backup_method = rsync` on real PostgreSQL 15 clusters through a real sshd:
//!
//! - a backup taken under pgbench load ends DONE, stores plain files with the
//!   `backup_label` from pg_backup_stop, passes check-backup and verify-backup, and a
//!   recovery from it has the rows committed after it;
//! - with `reuse_backup = link`, a backup after a small change transfers only the
//!   changed files (even one rewritten with the same size and mtime) (rsync's own figures in backup.json and show-backup) and stores
//!   the others as hard links (the big pgbench_accounts file is the previous
//!   backup's inode); deleting the previous backup leaves it verifying and
//!   recovering;
//! - a host key that does not match known_hosts stops the backup with one line
//!   before pg_backup_start and before any copy; an unreachable ssh port fails it
//!   with one line and a FAILED record; a backup killed mid-copy (SIGKILL or
//!   SIGTERM) leaves no rsync behind and is recorded FAILED; the next backup works
//!   and recovers remotely.

mod common;
use common::rsync::{backup_dir, inode, nlink, regular_files, rsync_server};
use common::{
    free_port, pg_scratch_dir, wait_until, BackgroundPgbk, Cluster, ClusterOptions, Output, Pgbk,
    Sshd,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// Recovers backup `id` into a fresh scratch folder's `data/`, tablespace `ts`
/// relocated into the same folder.
fn recover_into(pg: &Pgbk, id: &str) -> (TempDir, PathBuf) {
    let dir = pg_scratch_dir("pgbk-rsync-rec-");
    let data = dir.path().join("data");
    let ts = format!("ts:{}", dir.path().join("ts").display());
    pg.json(&[
        "recover",
        "pg1",
        id,
        data.to_str().unwrap(),
        "--tablespace",
        &ts,
    ]);
    (dir, data)
}

fn start_recovered(dir: TempDir) -> Cluster {
    let c = Cluster::from_datadir(dir, ClusterOptions::default());
    wait_until(Duration::from_secs(90), "recovery to end", || {
        c.try_psql("select pg_is_in_recovery()")
            .is_ok_and(|s| s == "f")
    });
    c
}

fn markers(c: &Cluster) -> String {
    c.psql("select coalesce(string_agg(note, ',' order by id), '') from marker")
}

fn archive_now(pg: &Pgbk) {
    pg.archive_now("pg1");
}

fn id_of(v: &Value) -> String {
    v["backup_id"].as_str().expect("backup_id").to_string()
}

/// The error line of a failed run (pgbk prints exactly one).
fn error_lines(o: &Output) -> Vec<String> {
    o.stderr
        .lines()
        .filter(|l| l.starts_with("pgbk:"))
        .map(str::to_string)
        .collect()
}

/// The id of process `pid`'s STARTED backup, once it is past pg_backup_start and
/// its data files are arriving (a backup killed earlier may still read STARTED).
fn copying_backup(pg: &Pgbk, pid: u32) -> Option<String> {
    for e in std::fs::read_dir(pg.home.join("pg1/backups"))
        .ok()?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path().join("backup.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v["status"] == "STARTED"
            && v["pid"] == pid
            && !v["begin_lsn"].is_null()
            && regular_files(&e.path().join("data")).len() > 10
        {
            return v["backup_id"].as_str().map(str::to_string);
        }
    }
    None
}

/// Waits until `bg`'s backup is copying files, and returns its id.
fn wait_copying(pg: &Pgbk, bg: &mut BackgroundPgbk) -> String {
    let mut copying = None;
    wait_until(Duration::from_secs(60), "the copy to be under way", || {
        assert!(bg.is_running(), "backup ended early\n{}", bg.log_tail(30));
        copying = copying_backup(pg, bg.pid());
        copying.is_some()
    });
    copying.unwrap()
}

/// The backup in `dir` was stopped: FAILED "interrupted", its files removed.
fn assert_interrupted(dir: &Path) {
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("backup.json")).unwrap()).unwrap();
    assert_eq!(info["status"], "FAILED", "{info}");
    assert_eq!(info["error"], "interrupted", "{info}");
    assert!(!dir.join("data").exists());
}

/// Whether a running process has every one of `needles` in its command line.
fn processes_naming_all(needles: &[&str]) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
            let c = String::from_utf8_lossy(&c);
            needles.iter().all(|n| c.contains(n))
        })
    })
}

/// Whether a running process has `needle` in its command line.
fn processes_naming(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

#[test]
fn rsync_backups_under_load_and_with_hard_link_reuse_recover_and_survive_deletes() {
    let cluster = Cluster::new(ClusterOptions::default());
    cluster.pgbench_init(5);
    // Nothing but our own changes touches the tables between the quiet backups.
    cluster.psql("alter system set autovacuum = off");
    cluster.reload();
    cluster.psql("create table marker (id int, note text)");
    let ts_dir = pg_scratch_dir("pgbk-rsync-ts-");
    let loc = ts_dir.path().join("loc");
    std::fs::create_dir(&loc).unwrap();
    common::chown_to_postgres(&loc, false);
    cluster.psql(&format!(
        "create tablespace ts location '{}'",
        loc.display()
    ));
    cluster.psql("create table in_ts tablespace ts as select g from generate_series(1, 1000) g");
    let ts_oid = cluster.psql("select oid from pg_tablespace where spcname = 'ts'");
    let sshd = Sshd::start();
    let pg = Pgbk::new();
    rsync_server(
        &pg,
        "pg1",
        &cluster,
        &sshd.ssh_command("postgres"),
        "reuse_backup = link\nparallel_jobs = 2\n",
    );
    let _rw = pg.start_receive_wal("pg1", &cluster);

    // 1. Under pgbench load.
    let mut load = cluster.pgbench(35, 2);
    std::thread::sleep(Duration::from_secs(2));
    let out = pg.run(&["backup", "pg1", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let b1: Value = serde_json::from_str(&out.stdout).unwrap();
    // Nothing to compare against yet: the files were streamed with tar.
    assert!(out.stderr.contains("streamed with tar"), "{}", out.stderr);
    assert!(
        load.try_wait().unwrap().is_none(),
        "the load ended before the backup did"
    );
    assert_eq!(b1["status"], "DONE", "{b1}");
    assert_eq!(b1["method"], "rsync", "{b1}");
    assert_eq!(b1["has_manifest"], false, "{b1}");
    assert!(b1["transferred_files"].as_u64().unwrap() > 500, "{b1}");
    let id1 = id_of(&b1);
    let dir1 = backup_dir(&pg, "pg1", &id1);
    let label = std::fs::read_to_string(dir1.join("data/backup_label")).unwrap();
    assert!(
        label.contains(&format!("LABEL: pgbk backup {id1}")),
        "{label}"
    );
    assert!(label.contains("BACKUP FROM: primary"), "{label}");
    assert!(!dir1.join("data/postmaster.pid").exists());
    assert!(dir1.join("data/pg_wal").is_dir());
    assert_eq!(
        std::fs::read_dir(dir1.join("data/pg_wal")).unwrap().count(),
        0,
        "pg_wal's contents are left out"
    );
    // Plain files, byte-identical to what files.jsonl says, 0600.
    let files = std::fs::read_to_string(dir1.join("files.jsonl")).unwrap();
    let pgv: Value = files
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["path"] == "PG_VERSION")
        .expect("PG_VERSION listed");
    assert_eq!(pgv["compression"], "none", "{pgv}");
    assert_eq!(pgv["object"], "data/PG_VERSION", "{pgv}");
    assert_eq!(
        std::fs::read_to_string(dir1.join("data/PG_VERSION")).unwrap(),
        "15\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir1.join("data/PG_VERSION"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The tablespace: its files under tablespaces/<oid>/, its link recorded.
    assert_eq!(b1["tablespaces"][0]["name"], "ts", "{b1}");
    assert!(files.contains(&format!(r#""path":"pg_tblspc/{ts_oid}","kind":"symlink""#)));
    assert!(
        regular_files(&dir1.join(format!("tablespaces/{ts_oid}")))
            .iter()
            .any(|p| p.to_string_lossy().contains("/PG_15_")),
        "no tablespace files stored"
    );
    assert_eq!(load.wait().unwrap().code(), Some(0));
    cluster.psql("insert into marker values (1, 'after-b1')");
    pg.ok(&["check-backup", "pg1", &id1]);
    pg.ok(&["verify-backup", "pg1", &id1]);

    // generate-manifest: PostgreSQL's manifest for it, which verify-backup then
    // checks and pg_verifybackup accepts on the restored directory; not twice.
    let gen = pg.json(&["generate-manifest", "pg1", &id1]);
    assert!(gen["files"].as_u64().unwrap() > 500, "{gen}");
    let shown = pg.json(&["show-backup", "pg1", &id1]);
    assert_eq!(shown["has_manifest"], true, "{shown}");
    let verified = pg.ok(&["verify-backup", "pg1", &id1]);
    assert!(
        verified.contains("of backup_manifest present"),
        "{verified}"
    );
    let twice = pg.run(&["generate-manifest", "pg1", &id1]);
    assert_eq!(twice.code, 1, "{twice:?}");
    assert!(
        twice.stderr.contains("already has a backup_manifest"),
        "{twice:?}"
    );

    // A recovery from the backup taken under load has the rows committed after it.
    let history = cluster.psql("select count(*) from pgbench_history");
    archive_now(&pg);
    let (dir, data) = recover_into(&pg, &id1);
    // recover relocated tablespace ts and rewrote tablespace_map to say so.
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_verifybackup")
        .args(["-n", "-i", "pgbk_wal", "-i", "tablespace_map"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup on the restore of {id1}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = start_recovered(dir);
    assert_eq!(markers(&r), "after-b1", "{}", r.log_tail(40));
    assert_eq!(r.psql("select count(*) from pgbench_history"), history);
    assert_eq!(
        r.psql("select sum(abalance) = (select sum(bbalance) from pgbench_branches) from pgbench_accounts"),
        "t"
    );
    drop(r);

    // 2. Quiet: everything flushed, then a backup the next one compares with.
    cluster.psql("checkpoint");
    let accounts = cluster.psql("select pg_relation_filepath('pgbench_accounts')");
    std::thread::sleep(Duration::from_secs(3));
    // A file written just before the backup; rewritten after it with the same size
    // and the very same mtime (as a change within the second rsync copied it looks).
    let probe = cluster.datadir.join("pgbk_probe");
    std::fs::write(&probe, b"before").unwrap();
    let b2 = pg.json(&["backup", "pg1"]);
    assert_eq!(b2["status"], "DONE", "{b2}");
    let id2 = id_of(&b2);
    let dir2 = backup_dir(&pg, "pg1", &id2);
    // What tar stored in b1 kept the server's mtimes: rsync links its unchanged
    // files into b2.
    assert_eq!(
        inode(&dir2.join("data/PG_VERSION")),
        inode(&dir1.join("data/PG_VERSION"))
    );
    assert!(b2["reused_bytes"].as_u64().unwrap() > 0, "{b2}");
    std::fs::write(&probe, b"after!").unwrap();
    let touched = std::process::Command::new("touch")
        .arg("-r")
        .arg(dir2.join("data/pgbk_probe"))
        .arg(&probe)
        .status()
        .unwrap();
    assert!(touched.success());

    // 3. A small change: three rows of a small table.
    cluster.psql("update pgbench_branches set bbalance = bbalance + 1 where bid <= 3");
    cluster.psql("insert into marker values (2, 'before-b3')");
    cluster.psql("checkpoint");
    let out = pg.run(&["backup", "pg1", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let b3: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(!out.stderr.contains("streamed with tar"), "{}", out.stderr);
    assert_eq!(b3["status"], "DONE", "{b3}");
    let id3 = id_of(&b3);
    let dir3 = backup_dir(&pg, "pg1", &id3);
    let size = b3["size_bytes"].as_u64().unwrap();
    let count = b3["file_count"].as_u64().unwrap();
    let sent_files = b3["transferred_files"].as_u64().unwrap();
    let sent_bytes = b3["transferred_bytes"].as_u64().unwrap();
    let stored = b3["stored_bytes"].as_u64().unwrap();
    eprintln!(
        "second linked backup: rsync sent {sent_files} of {count} files, {sent_bytes} of {size} bytes; {stored} bytes stored"
    );
    // rsync's own figures: a few files, a small share of the bytes.
    assert!(
        sent_files * 10 < count,
        "{sent_files} of {count} files sent: {b3}"
    );
    assert!(
        sent_bytes * 10 < size,
        "{sent_bytes} of {size} bytes sent: {b3}"
    );
    assert!(stored * 10 < size, "{stored} of {size} bytes stored: {b3}");
    assert_eq!(b3["reused_bytes"].as_u64().unwrap() + stored, size, "{b3}");
    // The hard links: the big table is the previous backup's inode; most files are
    // links.
    let big = dir3.join("data").join(&accounts);
    assert!(std::fs::metadata(&big).unwrap().len() > 40 << 20);
    assert!(nlink(&big) >= 2);
    assert_eq!(inode(&big), inode(&dir2.join("data").join(&accounts)));
    let all = regular_files(&dir3.join("data"));
    let linked = all.iter().filter(|p| nlink(p) >= 2).count();
    assert!(
        linked * 10 >= all.len() * 8,
        "{linked} of {} linked",
        all.len()
    );
    // The same-size, same-mtime change was compared by content, not linked.
    assert_eq!(
        std::fs::read(dir3.join("data/pgbk_probe")).unwrap(),
        b"after!"
    );
    let ts_files = regular_files(&dir3.join(format!("tablespaces/{ts_oid}")));
    assert!(!ts_files.is_empty());
    assert!(
        ts_files.iter().all(|p| nlink(p) >= 2),
        "tablespace files not linked"
    );
    // show-backup shows the transfer.
    let shown = pg.ok(&["show-backup", "pg1", &id3]);
    assert!(shown.contains("Transferred"), "{shown}");
    let shown = pg.json(&["show-backup", "pg1", &id3]);
    assert_eq!(shown["transferred_files"], sent_files, "{shown}");

    // 4. The backup it links to is deleted: it still verifies and recovers.
    cluster.psql("insert into marker values (3, 'after-b3')");
    cluster.psql("insert into in_ts select generate_series(1001, 1005)");
    pg.ok(&["delete", "pg1", &id2]);
    assert!(!dir2.exists());
    pg.ok(&["delete", "pg1", &id1]);
    assert!(!dir1.exists());
    assert_eq!(nlink(&big), 1, "only the last backup holds it now");
    pg.ok(&["verify-backup", "pg1", &id3]);
    pg.ok(&["check-backup", "pg1", &id3]);
    let balance = cluster.psql("select sum(bbalance) from pgbench_branches");
    archive_now(&pg);
    let (dir, _) = recover_into(&pg, &id3);
    let r = start_recovered(dir);
    assert_eq!(
        markers(&r),
        "after-b1,before-b3,after-b3",
        "{}",
        r.log_tail(40)
    );
    assert_eq!(
        r.psql("select sum(bbalance) from pgbench_branches"),
        balance
    );
    assert_eq!(r.psql("select count(*) from in_ts"), "1005");
}

#[test]
fn a_wrong_host_key_or_an_unreachable_host_fails_the_backup_in_one_line() {
    let cluster = Cluster::new(ClusterOptions::default());
    cluster.psql("create table t as select generate_series(1, 1000) g");
    let sshd = Sshd::start();
    let pg = Pgbk::new();
    let _rw = {
        rsync_server(&pg, "pg1", &cluster, &sshd.ssh_command("postgres"), "");
        pg.start_receive_wal("pg1", &cluster)
    };

    // A host key other than the recorded one: one line, nothing copied, the server
    // never entered backup mode.
    let wrong = sshd.ssh_command_with("postgres", &sshd.wrong_known_hosts());
    rsync_server(&pg, "pg1", &cluster, &wrong, "");
    let out = pg.run(&["backup", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(error_lines(&out).len(), 1, "{out:?}");
    assert!(out.stderr.to_lowercase().contains("host key"), "{out:?}");
    let list = pg.json(&["list-backups", "pg1"]);
    let rows = list.as_array().expect("list");
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(rows[0]["status"], "FAILED", "{list}");
    let failed = id_of(&rows[0]);
    let dir = backup_dir(&pg, "pg1", &failed);
    assert!(!dir.join("data").exists(), "files were copied");
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("backup.json")).unwrap()).unwrap();
    assert!(info["begin_lsn"].is_null(), "pg_backup_start ran: {info}");
    assert!(
        info["error"].as_str().unwrap().contains("host key"),
        "{info}"
    );

    // Nothing listens on the port: one line, exit 1, FAILED.
    std::thread::sleep(Duration::from_millis(1100));
    let closed = format!(
        "ssh -p {} -i {} -o UserKnownHostsFile={} -o ConnectTimeout=5 postgres@127.0.0.1",
        free_port(),
        sshd.client_key.display(),
        sshd.known_hosts.display()
    );
    rsync_server(&pg, "pg1", &cluster, &closed, "");
    let out = pg.run(&["backup", "pg1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(error_lines(&out).len(), 1, "{out:?}");
    let list = pg.json(&["list-backups", "pg1"]);
    let statuses: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["FAILED", "FAILED"], "{list}");

    // A missing ssh_command is a usage error naming the option.
    pg.add_server(
        "pg2",
        &format!("conninfo = {}\nbackup_method = rsync\n", cluster.conninfo()),
    );
    let out = pg.run(&["backup", "pg2"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("ssh_command"), "{out:?}");

    // Killed outright while rsync copies (slowed by bandwidth_limit): no rsync is
    // left writing into the folder, and the next backup records it FAILED.
    std::thread::sleep(Duration::from_millis(1100));
    rsync_server(
        &pg,
        "pg1",
        &cluster,
        &sshd.ssh_command("postgres"),
        "bandwidth_limit = 1000\n",
    );
    let mut bg = pg.spawn(&["backup", "pg1"]);
    let killed = wait_copying(&pg, &mut bg);
    bg.kill9();
    let killed_dir = backup_dir(&pg, "pg1", &killed);
    wait_until(Duration::from_secs(10), "rsync to end with pgbk", || {
        !processes_naming(&killed_dir.to_string_lossy())
    });

    // SIGTERM mid-copy: rsync stopped, FAILED "interrupted", files removed.
    std::thread::sleep(Duration::from_millis(1100));
    let mut bg = pg.spawn(&["backup", "pg1"]);
    let stopped = wait_copying(&pg, &mut bg);
    assert_ne!(bg.term(), 0);
    let stopped_dir = backup_dir(&pg, "pg1", &stopped);
    // rsync's forked receiver got the same signal; give it a moment to exit.
    wait_until(Duration::from_secs(10), "rsync to end with pgbk", || {
        !processes_naming(&stopped_dir.to_string_lossy())
    });
    assert_interrupted(&stopped_dir);

    // With the right command the next backup works and verifies.
    std::thread::sleep(Duration::from_millis(1100));
    rsync_server(&pg, "pg1", &cluster, &sshd.ssh_command("postgres"), "");
    let ok = pg.json(&["backup", "pg1"]);
    assert_eq!(ok["status"], "DONE", "{ok}");
    let list = pg.json(&["list-backups", "pg1"]);
    let dead = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backup_id"] == killed.as_str())
        .expect("killed backup listed");
    assert_eq!(dead["status"], "FAILED", "{dead}");
    assert!(
        dead["error"].as_str().unwrap().contains("ended before"),
        "{dead}"
    );
    assert!(!killed_dir.join("data").exists(), "its files are removed");
    let id = id_of(&ok);
    pg.ok(&["verify-backup", "pg1", &id]);
    // In text, the summary says what rsync moved.
    std::thread::sleep(Duration::from_millis(1100));
    let text = pg.ok(&["backup", "pg1"]);
    eprintln!("{text}");
    assert!(text.contains(": DONE"), "{text}");
    assert!(text.contains("rsync: "), "{text}");
    // reuse_backup = copy: unchanged files copied locally, not sent, not linked.
    std::thread::sleep(Duration::from_millis(1100));
    rsync_server(
        &pg,
        "pg1",
        &cluster,
        &sshd.ssh_command("postgres"),
        "reuse_backup = copy\n",
    );
    let copied = pg.json(&["backup", "pg1"]);
    assert_eq!(copied["status"], "DONE", "{copied}");
    let sent = copied["transferred_bytes"].as_u64().unwrap();
    assert!(
        sent * 10 < copied["size_bytes"].as_u64().unwrap(),
        "{copied}"
    );
    let copied_dir = backup_dir(&pg, "pg1", &id_of(&copied));
    assert_eq!(nlink(&copied_dir.join("data/PG_VERSION")), 1);
    pg.ok(&["verify-backup", "pg1", &id_of(&copied)]);
    // list-files names the plain stored objects, which exist.
    let listed = pg.ok(&["list-files", "pg1", &id]);
    let objects: Vec<&str> = listed.lines().collect();
    assert!(objects.len() > 500, "{listed}");
    assert!(
        objects
            .iter()
            .all(|p| !p.ends_with(".zst") && std::path::Path::new(p).is_file()),
        "{listed}"
    );

    // Remote recovery of the rsync backup through the same sshd, as postgres.
    cluster.psql("insert into t values (-1)");
    archive_now(&pg);
    let dest = pg_scratch_dir("pgbk-rsync-rrec-");
    let data = dest.path().join("data");
    std::fs::create_dir(&data).unwrap();
    common::chown_to_postgres(&data, false);
    pg.json(&[
        "recover",
        "pg1",
        &id,
        data.to_str().unwrap(),
        "--remote-ssh-command",
        &sshd.ssh_command("postgres"),
    ]);
    assert!(data.join("backup_label").is_file());
    let r = start_recovered(dest);
    assert_eq!(
        r.psql("select count(*) from t"),
        "1001",
        "{}",
        r.log_tail(40)
    );
}

#[test]
fn a_first_copy_streamed_with_tar_stops_cleanly_and_leaves_nothing_running() {
    let cluster = Cluster::new(ClusterOptions::default());
    cluster.pgbench_init(2);
    let sshd = Sshd::start();
    let mut pg = Pgbk::new();
    rsync_server(
        &pg,
        "pg1",
        &cluster,
        &sshd.ssh_command("postgres"),
        "parallel_jobs = 2\n",
    );
    let _rw = pg.start_receive_wal("pg1", &cluster);

    // Slowed down (a documented test hook) so that SIGTERM lands mid-copy.
    pg.set_env("PGBK_TEST_COPY_THROTTLE_MS", "30");
    let mut bg = pg.spawn(&["backup", "pg1"]);
    pg.unset_env("PGBK_TEST_COPY_THROTTLE_MS");
    let stopped = wait_copying(&pg, &mut bg);
    // This cluster's tar stream: the ssh here, the tar on the server.
    let datadir = cluster.datadir.to_string_lossy().to_string();
    let ours = [datadir.as_str(), "--ignore-failed-read"];
    assert!(processes_naming_all(&ours), "no tar stream running");
    assert_ne!(bg.term(), 0);
    assert!(
        bg.log_tail(200).contains("streamed with tar"),
        "{}",
        bg.log_tail(30)
    );
    // Neither the ssh here nor the tar on the server outlives the backup.
    wait_until(Duration::from_secs(10), "the tar stream to end", || {
        !processes_naming_all(&ours)
    });
    assert_interrupted(&backup_dir(&pg, "pg1", &stopped));

    // The next one, not slowed, completes and verifies.
    std::thread::sleep(Duration::from_millis(1100));
    let ok = pg.json(&["backup", "pg1"]);
    assert_eq!(ok["status"], "DONE", "{ok}");
    pg.ok(&["verify-backup", "pg1", &id_of(&ok)]);
}
