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
