//! Two (or three) pgbk homes replicating through a real sshd on loopback: helpers
//! for the `replicate` tests.

use super::{Pgbk, Sshd};
use serde_json::Value;

/// Declares `name` in `passive` as a passive copy of the same server in `primary`,
/// reached as root through `sshd` (`primary_pgbk_command` runs this build's pgbk
/// with the primary's configuration file).
pub fn add_passive_server(passive: &Pgbk, name: &str, sshd: &Sshd, primary: &Pgbk, extra: &str) {
    passive.add_server(
        name,
        &format!(
            "description = passive copy\n\
             primary_ssh_command = {}\n\
             primary_pgbk_command = {} -c {}\n{extra}",
            sshd.ssh_command("root"),
            env!("CARGO_BIN_EXE_pgbk"),
            primary.config.display()
        ),
    );
}

/// `list-backups <server> --format json` reduced to what must be equal between two
/// regions: id, status, timeline, begin/end LSN and WAL, sizes.
pub fn backup_summary(pg: &Pgbk, server: &str) -> Vec<Value> {
    let list = pg.json(&["list-backups", server]);
    list.as_array()
        .expect("list-backups prints an array")
        .iter()
        .map(|b| {
            serde_json::json!({
                "backup_id": b["backup_id"],
                "status": b["status"],
                "timeline": b["timeline"],
                "begin_lsn": b["begin_lsn"],
                "end_lsn": b["end_lsn"],
                "begin_wal": b["begin_wal"],
                "end_wal": b["end_wal"],
                "size_bytes": b["size_bytes"],
                "stored_bytes": b["stored_bytes"],
                "file_count": b["file_count"],
            })
        })
        .collect()
}

/// `replicate <server> --format json`: the report of the one server.
pub fn replicate(pg: &Pgbk, server: &str) -> Value {
    let out = pg.json(&["replicate", server]);
    out[0]["report"].clone()
}

/// The newest WAL position a home holds for a server, as its own sync-info says.
pub fn last_lsn(pg: &Pgbk, server: &str) -> Option<u64> {
    let doc = pg.json(&["sync-info", server, "--since", "999999999"]);
    let s = doc["last_lsn"].as_str()?;
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Asserts that every object a home holds for a server carries its object checksum
/// (the BLAKE3 of the stored bytes) and that it is right: each archived WAL file's
/// catalog row, and each zstd object in the files.jsonl of each `DONE` backup.
/// Returns the WAL rows' object checksums by name (to compare two homes).
pub fn assert_object_checksums(pg: &Pgbk, server: &str) -> Vec<(String, String)> {
    let cat = pgbk::catalog::Catalog::open_existing(&pg.home)
        .expect("catalog opens")
        .expect("a catalog exists");
    let repo = pg.home.join(server);
    let mut wal = Vec::new();
    for w in cat.wal_files(server).expect("WAL rows") {
        let sum = w.stored_checksum.clone().unwrap_or_else(|| {
            panic!(
                "{}: WAL {} has no object checksum",
                pg.home.display(),
                w.name
            )
        });
        let path = match w.segno {
            Some(_) => repo
                .join("wals")
                .join(&w.name[..16])
                .join(format!("{}.zst", w.name)),
            None => repo.join("wals").join(&w.name),
        };
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            blake3::hash(&bytes).to_hex().to_string(),
            sum,
            "{}",
            path.display()
        );
        wal.push((w.name, sum));
    }
    let mut objects = 0;
    for b in pg.json(&["list-backups", server]).as_array().unwrap() {
        if b["status"] != "DONE" {
            continue;
        }
        let dir = repo.join("backups").join(b["backup_id"].as_str().unwrap());
        let list = std::fs::read_to_string(dir.join("files.jsonl")).unwrap();
        for line in list.lines() {
            let e: Value = serde_json::from_str(line).unwrap();
            if e["kind"] != "file" || e["compression"] != "zstd" {
                continue;
            }
            let object = dir.join(e["object"].as_str().unwrap());
            let mut bytes = std::fs::read(&object).unwrap();
            // A bundled file: its checksum is its range's.
            if let (Some(off), Some(len)) = (e["offset"].as_u64(), e["length"].as_u64()) {
                bytes = bytes[off as usize..(off + len) as usize].to_vec();
            }
            assert_eq!(
                e["stored_checksum"].as_str(),
                Some(blake3::hash(&bytes).to_hex().to_string().as_str()),
                "{}",
                object.display()
            );
            objects += 1;
        }
        // Each bundle is the one bundles.jsonl records.
        let bundles = std::fs::read_to_string(dir.join("bundles.jsonl")).unwrap_or_default();
        for line in bundles.lines() {
            let b: Value = serde_json::from_str(line).unwrap();
            let object = dir.join(b["object"].as_str().unwrap());
            let bytes = std::fs::read(&object).unwrap();
            assert_eq!(
                b["stored_checksum"].as_str(),
                Some(blake3::hash(&bytes).to_hex().to_string().as_str()),
                "{}",
                object.display()
            );
        }
    }
    assert!(objects > 0, "{}: no zstd backup object", pg.home.display());
    wal
}

/// Starts `replicate <server>` on `passive`, slowed by the documented test hook
/// (100 ms per object), waits until `copied_enough` (60 s at most), kills it with
/// SIGKILL and checks that the backup it was copying is left SYNCING.
pub fn kill_replicate_midway(
    passive: &Pgbk,
    server: &str,
    what: &str,
    copied_enough: impl FnMut() -> bool,
) {
    let mut child = passive
        .cmd()
        .args(["replicate", server])
        .env("PGBK_TEST_REPLICATE_THROTTLE_MS", "100")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    super::wait_until(std::time::Duration::from_secs(60), what, copied_enough);
    child.kill().unwrap();
    child.wait().unwrap();
    let listed = passive.json(&["list-backups", server]);
    assert_eq!(listed[0]["status"], "SYNCING", "{listed}");
}
