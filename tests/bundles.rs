//! Small files packed into bundle objects, on the local backend: a cluster of
//! 2,000 small tables backs up as far fewer objects than files, each bundled file
//! reads back by its range with plain `zstd -d`, `verify-backup` passes and names
//! the file a flipped byte in a bundle damaged, and `recover` gives every table's
//! row back.

mod common;
use common::{pg_scratch_dir, wait_until, Cluster, ClusterOptions, Pgbk};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const TABLES: usize = 2000;

/// Regular files under `dir`, recursively.
fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// The content of a bundled file, read with plain tools: its range of the bundle
/// piped through the `zstd` binary.
fn plain_zstd_range(bundle: &Path, offset: u64, length: u64) -> Vec<u8> {
    let bytes = std::fs::read(bundle).unwrap();
    let range = &bytes[offset as usize..(offset + length) as usize];
    let mut child = Command::new("zstd")
        .args(["-d", "-q", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run zstd");
    child.stdin.take().unwrap().write_all(range).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "zstd -d: {out:?}");
    out.stdout
}

/// Total rows of the tables `t<n>`, counted table by table on the server.
fn total_rows(c: &Cluster) -> String {
    c.psql(
        "select sum((xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I', relname), false, true, '')))[1]::text::int) \
         from pg_class where relkind = 'r' and relname ~ '^t[0-9]+$'",
    )
}

#[test]
fn two_thousand_small_tables_back_up_as_a_few_bundles_verify_and_recover() {
    let c = Cluster::new(ClusterOptions::default());
    let sql: String = (0..TABLES)
        .map(|i| format!("create table t{i}(i int); insert into t{i} values ({i});\n"))
        .collect();
    c.psql(&sql);
    assert_eq!(total_rows(&c), TABLES.to_string());
    let pg = Pgbk::new();
    pg.streaming_server_with("pg1", &c, "immediate_checkpoint = on\n");
    let rw = pg.start_receive_wal("pg1", &c);
    let info = pg.json(&["backup", "pg1"]);
    assert_eq!(info["status"], "DONE", "{info}");
    let id = info["backup_id"].as_str().unwrap().to_string();
    let dir = pg.home.join("pg1/backups").join(&id);

    // Far fewer objects than files.
    let entries: Vec<Value> = std::fs::read_to_string(dir.join("files.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let files: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "file").collect();
    let objects = count_files(&dir.join("data"))
        + count_files(&dir.join("tablespaces"))
        + count_files(&dir.join("bundles"));
    eprintln!(
        "{TABLES} tables: {} files in files.jsonl, {objects} objects ({} bundles)",
        files.len(),
        count_files(&dir.join("bundles"))
    );
    assert!(files.len() > TABLES, "{}", files.len());
    assert!(
        objects * 10 < files.len(),
        "{objects} objects for {} files",
        files.len()
    );
    assert_eq!(files.len() as u64, info["file_count"].as_u64().unwrap());
    let bundled: Vec<&&Value> = files.iter().filter(|e| e["offset"].is_u64()).collect();
    assert!(bundled.len() > TABLES, "{}", bundled.len());
    for e in &bundled {
        assert!(e["object"].as_str().unwrap().starts_with("bundles/"), "{e}");
        assert_eq!(e["length"], e["stored_size"], "{e}");
        assert!(e["size"].as_u64().unwrap() < 256 * 1024, "{e}");
    }
    // Empty files have no object; large ones keep their own.
    assert!(files
        .iter()
        .filter(|e| e["size"] == 0)
        .all(|e| e["object"].is_null()));
    assert!(files
        .iter()
        .any(|e| e["object"].as_str().is_some_and(|o| o.starts_with("data/"))));
    // Plain tools read a bundled file by its range.
    let pg_version = files.iter().find(|e| e["path"] == "PG_VERSION").unwrap();
    let back = plain_zstd_range(
        &dir.join(pg_version["object"].as_str().unwrap()),
        pg_version["offset"].as_u64().unwrap(),
        pg_version["length"].as_u64().unwrap(),
    );
    assert_eq!(back, b"15\n");

    let v = pg.json(&["verify-backup", "pg1", &id]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["files"]["files"].as_u64().unwrap(), files.len() as u64);
    // list-files names each bundle once.
    let listed = pg.ok(&["list-files", "pg1", &id]);
    assert!(listed.lines().count() * 10 < files.len(), "{listed}");
    assert!(listed.contains("/bundles/000001.zst"), "{listed}");

    // Recovery gives every table's row back.
    let rec = pg_scratch_dir("pgbk-bundles-rec-");
    let data = rec.path().join("data");
    pg.ok(&[
        "recover",
        "pg1",
        &id,
        data.to_str().unwrap(),
        "--target-immediate",
        "--target-action",
        "promote",
    ]);
    let r = Cluster::from_datadir(rec, ClusterOptions::default());
    wait_until(Duration::from_secs(60), "recovery to end", || {
        r.try_psql("select pg_is_in_recovery()")
            .is_ok_and(|s| s == "f")
    });
    assert_eq!(r.psql("select i from t1234"), "1234");
    assert_eq!(r.psql("select i from t0"), "0");
    assert_eq!(total_rows(&r), TABLES.to_string());
    drop(r);
    drop(rw);

    // A byte flipped in a bundle: verify-backup fails naming the file it damaged.
    let victim = bundled[bundled.len() / 2];
    let bundle = dir.join(victim["object"].as_str().unwrap());
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = victim["offset"].as_u64().unwrap() + victim["length"].as_u64().unwrap() / 2;
    bytes[at as usize] ^= 0x5A;
    std::fs::write(&bundle, bytes).unwrap();
    let out = pg.run(&["verify-backup", "pg1", &id]);
    assert_eq!(out.code, 1, "{out:?}");
    let path = victim["path"].as_str().unwrap();
    assert!(
        out.stdout.contains(path) && out.stdout.contains("1 bad or missing file"),
        "{path}: {}",
        out.stdout
    );
}
