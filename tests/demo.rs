//! `pgbk demo`, the README's first command: on a machine with PostgreSQL 15 and no
//! pgbk configuration at all, the whole loop (stream, back up under load, recover to
//! a point in time, check the rows) passes and leaves nothing behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn demo_runs_the_whole_loop_without_configuration_and_cleans_up() {
    let work = common::scratch_dir("pgbk-demo-test-");
    // Owned by us (root in CI) with mode 0755: the postgres user may enter it.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgbk"));
    common::clear_pg_env(&mut cmd);
    // No -c, no $PGBK_CONFIG: /etc/pgbk/pgbk.conf need not exist.
    cmd.args(["demo", "--scale", "1", "--workdir"])
        .arg(work.path())
        .current_dir(work.path())
        .stdin(std::process::Stdio::null());
    let out = cmd.output().expect("run pgbk demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "pgbk demo failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    for step in 1..=8 {
        assert!(
            stdout.contains(&format!("[{step}/8]")),
            "step {step} not printed:\n{stdout}"
        );
    }
    for line in [
        "  Backup:",
        "  RPO:",
        "  RTO:",
        "  Verified rows:",
        "  Verification: PASSED",
    ] {
        assert!(
            stdout.contains(line),
            "no {line:?} in the summary:\n{stdout}"
        );
    }
    // Each step's time once, and each event under the step that announces it.
    let step_of = |needle: &str| -> char {
        let at = stdout
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in\n{stdout}"));
        let header = stdout[..at].rfind("/8] ").expect("a step header before it");
        stdout[..header].chars().last().expect("step number")
    };
    assert_eq!(step_of("second marker inserted"), '6', "{stdout}");
    let titles: Vec<&str> = stdout.lines().filter(|l| l.contains("/8] ")).collect();
    for t in &titles {
        assert!(
            !t.contains("second marker") || t.starts_with("[6/8]"),
            "a step announces the second marker early: {t}"
        );
    }
    let first = stdout
        .lines()
        .find(|l| l.contains("initdb + start"))
        .expect("step 1's line");
    let times = first
        .split_whitespace()
        .filter(|w| {
            w.strip_suffix('s')
                .is_some_and(|n| n.parse::<f64>().is_ok())
        })
        .count();
    assert_eq!(times, 1, "step 1 prints its time twice: {first}");
    let verified = stdout
        .lines()
        .find_map(|l| l.strip_prefix("  Verified rows: "))
        .expect("verified rows line");
    let nums: Vec<&str> = verified.split_whitespace().collect();
    assert_eq!(nums.first(), nums.get(2), "{verified}");
    assert!(nums[0].parse::<u64>().unwrap() > 0, "{verified}");
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "demo left {left:?} behind");
}

#[test]
fn demo_refuses_a_missing_postgresql_with_a_clear_error() {
    let work = common::scratch_dir("pgbk-demo-test-");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgbk"));
    common::clear_pg_env(&mut cmd);
    cmd.args(["demo", "--pg-bin", "/nonexistent/bin", "--workdir"])
        .arg(work.path());
    let out = cmd.output().expect("run pgbk demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/bin/initdb not found"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}
