//! PostgreSQL's own `028_pitr_timelines.pl` scenario with pgbk as the archive
//! (archive_command through `ssh … pgbk put-wal`, restore_command `pgbk get-wal`):
//! a timeline history file whose newer line forks before the older line's switch
//! point is accepted, archived, and followed by a later recovery.

mod common;

use common::archiving::{ssh_archive_command, wait_archived};
use common::{wait_until, Cluster, ClusterOptions, Pgbk, Sshd};
use std::fs;
use std::time::Duration;

/// PostgreSQL's `028_pitr_timelines.pl` with pgbk as the archive (item 1 of the fixes
/// issue): the restore point lies in the first half of a segment archived only on the
/// promoted standby's timeline 2; a PITR to it creates timeline 3, whose history file
/// forks from 2 *before* 2's own fork from 1 (its newer line's switch point is the
/// earlier one). put-wal refused that valid file, so nothing of timeline 3 reached the
/// archive and a second recovery could not cross it.
#[test]
fn pitr_to_a_restore_point_on_a_standby_timeline_then_recovery_across_it() {
    let sshd = Sshd::start();
    let p = Pgbk::new();
    let keys = common::pg_scratch_dir("pgbk-pg-ssh-");
    let archive_command = ssh_archive_command(&sshd, keys.path(), &p, "srv");
    let archiving = [
        "archive_mode = on".to_string(),
        format!("archive_command = '{archive_command}'"),
    ];
    let primary = Cluster::new(ClusterOptions {
        extra_conf: archiving.to_vec(),
        ..Default::default()
    });
    p.add_server(
        "srv",
        &format!(
            "conninfo = {}\nstreaming_conninfo = %(conninfo)s\narchiver = on\n\
             immediate_checkpoint = on\n",
            primary.conninfo()
        ),
    );
    let backup = p.json(&["backup", "srv"]);
    assert_eq!(backup["status"], "DONE", "{backup}");
    primary.psql("create table foo (i int); insert into foo values (1)");
    let rp_segment = primary.psql("select pg_walfile_name(pg_create_restore_point('rp'))");
    primary.psql("insert into foo values (2)");
    let standby = primary.standby();
    standby.append_conf(&["archive_mode = always"]);
    standby.restart("fast");
    primary.wait_for_catchup(&standby);
    assert_eq!(standby.psql("select max(i) from foo"), "2");
    // The standby's base backup switched segments, so (unlike in PostgreSQL's test,
    // where the standby comes from the older backup) timeline 2 forks in a later
    // segment than the restore point's: that one must come from the primary's
    // archiving before it dies, or recovery cannot reach 'rp' at all.
    wait_archived(&primary, &rp_segment);
    primary.stop("immediate");
    standby.promote();
    wait_until(Duration::from_secs(60), "the standby to promote", || {
        standby.psql("select pg_is_in_recovery()") == "f"
    });
    let last = standby.psql("select pg_walfile_name(pg_current_wal_lsn())");
    standby.psql("select pg_switch_wal()");
    // Archived before the stop (through ssh, under a loaded machine, the archiver's
    // last tries at shutdown may not be enough).
    wait_archived(&standby, &last);
    standby.stop("fast");

    let recover = |args: &[&str]| {
        // restore_command (get-wal) runs as the postgres OS user.
        common::chown_to_postgres(&p.home, true);
        let dir = common::pg_scratch_dir("pgbk-rec-");
        let data = dir.path().join("data");
        let mut all = vec![
            "recover",
            "srv",
            "latest",
            data.to_str().unwrap(),
            "--get-wal",
        ];
        all.extend_from_slice(args);
        p.json(&all);
        (dir, data)
    };
    let (dir, data) = recover(&["--target-name", "rp", "--target-action", "promote"]);
    // The recovered node archives its new timeline through pgbk as well.
    let mut auto = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    auto.push_str(&format!("{}\n{}\n", archiving[0], archiving[1]));
    fs::write(data.join("postgresql.auto.conf"), auto).unwrap();
    let pitr = Cluster::from_datadir(dir, ClusterOptions::default());
    wait_until(Duration::from_secs(60), "the PITR to promote", || {
        pitr.try_psql("select pg_is_in_recovery()")
            .is_ok_and(|s| s == "f")
    });
    assert_eq!(
        pitr.psql("select max(i) from foo"),
        "1",
        "{}",
        pitr.log_tail(30)
    );
    assert_eq!(
        pitr.psql("select timeline_id from pg_control_checkpoint()"),
        "3"
    );
    pitr.psql("insert into foo values (3)");
    let last = pitr.psql("select pg_walfile_name(pg_switch_wal())");
    wait_archived(&pitr, &last);
    wait_until(Duration::from_secs(60), "the archiver to run", || {
        pitr.psql("select count(*) from pg_stat_activity where backend_type = 'archiver'") == "1"
    });
    pitr.stop("fast");
    let failed = pitr.log().matches("archive command failed").count();
    assert_eq!(failed, 0, "{}", pitr.log_tail(40));

    // The history file PostgreSQL wrote is the one put-wal used to refuse.
    let h3 = fs::read_to_string(p.wals_dir("srv").join("00000003.history")).unwrap();
    let points: Vec<u64> = h3
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (hi, lo) = l.split('\t').nth(1).unwrap().split_once('/').unwrap();
            (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
        })
        .collect();
    assert_eq!(points.len(), 2, "{h3}");
    assert!(
        points[1] < points[0],
        "timeline 3 forks before 2's own fork: {h3}"
    );
    assert!(
        p.archived_segments("srv")
            .iter()
            .any(|s| s.starts_with("00000003")),
        "timeline 3 archived: {:?}",
        p.archived_segments("srv")
    );
    let check = p.run(&["check", "srv"]);
    assert!(!check.stdout.contains("WAL errors: FAILED"), "{check:?}");

    // A second recovery follows the latest timeline across the odd fork.
    let (dir, _) = recover(&[]);
    let pitr2 = Cluster::from_datadir(dir, ClusterOptions::default());
    wait_until(
        Duration::from_secs(60),
        "the second recovery to promote",
        || {
            pitr2
                .try_psql("select pg_is_in_recovery()")
                .is_ok_and(|s| s == "f")
        },
    );
    assert_eq!(
        pitr2.psql("select max(i) from foo"),
        "3",
        "{}",
        pitr2.log_tail(40)
    );
}
