//! A passive server's health (one with `primary_ssh_command`): instead of PostgreSQL
//! items, how fresh the copy is — the last successful `replicate` pass, the WAL lag
//! behind the primary manager in bytes and seconds, and the backups not copied yet.
//! The lag in seconds is the time since the copy last held everything the primary
//! had; past `last_wal_maximum_age` the item fails (`check --nagios`: CRITICAL).

use super::item::CheckItem;
pub use super::peer_probe::{peer_status, PeerStatus};
use super::probe::ServerState;
use crate::config::ServerConfig;
use crate::units::{human_bytes, human_seconds};

fn item(name: &str, ok: bool, hint: Option<String>) -> CheckItem {
    CheckItem::new(name, ok, hint)
}

/// The items `check` judges for a passive server (the repository items are added by
/// the caller).
pub fn peer_items(server: &ServerConfig, st: &ServerState) -> Vec<CheckItem> {
    let mut out = Vec::new();
    let Some(p) = &st.local.peer else {
        out.push(item(
            "replication from primary",
            false,
            Some("never replicated (run 'pgbk replicate')".into()),
        ));
        return out;
    };
    let pass = match (&p.last_pass_at, &p.last_error) {
        (None, Some(e)) => (false, format!("no successful pass yet; last error: {e}")),
        (None, None) => (false, "never replicated (run 'pgbk replicate')".into()),
        (Some(_), Some(e)) => (
            false,
            format!(
                "last pass {} ago; last error: {e}",
                human_seconds(p.last_pass_age_secs.unwrap_or(0.0))
            ),
        ),
        (Some(_), None) => (
            true,
            format!(
                "last pass {} ago from '{}'",
                human_seconds(p.last_pass_age_secs.unwrap_or(0.0)),
                p.primary_ssh_command
            ),
        ),
    };
    out.push(item("replication from primary", pass.0, Some(pass.1)));
    let lag_text = format!(
        "{} and {} behind the primary",
        p.lag_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "unknown".into()),
        p.lag_seconds
            .map(human_seconds)
            .unwrap_or_else(|| "unknown".into())
    );
    let lag_ok = match (server.last_wal_maximum_age, p.lag_seconds) {
        (Some(max), Some(l)) => l <= max.as_secs_f64(),
        (Some(_), None) => false,
        (None, _) => true,
    };
    let hint = match server.last_wal_maximum_age {
        Some(max) => format!(
            "{lag_text}, interval provided: {}",
            human_seconds(max.as_secs_f64())
        ),
        None => lag_text,
    };
    out.push(item("replication WAL lag", lag_ok, Some(hint)));
    out.push(item(
        "backups not yet copied",
        true,
        Some(format!(
            "{} DONE backup(s) of the primary pending",
            p.backups_pending
        )),
    ));
    out.push(item(
        "directories",
        st.local.not_writable.is_none(),
        st.local.not_writable.clone(),
    ));
    let gaps = &st.local.gaps;
    out.push(item(
        "archived WAL continuity",
        gaps.is_empty(),
        (!gaps.is_empty()).then(|| format!("missing {}", gaps.join(", "))),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, PeerState};
    use crate::wal::Lsn;
    use chrono::Utc;

    #[test]
    fn lag_past_last_wal_maximum_age_fails() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let now = Utc::now();
        cat.set_peer_state(&PeerState {
            server: "pg1".into(),
            cursor: 3,
            last_pass_at: Some(now),
            primary_lsn: Some(Lsn(300)),
            local_lsn: Some(Lsn(100)),
            caught_up_at: Some(now - chrono::Duration::minutes(10)),
            ..Default::default()
        })
        .unwrap();
        let text =
            "[pgbk]\n[pg1]\nprimary_ssh_command = ssh pgbk@a\nlast_wal_maximum_age = 5 minutes\n";
        let f = dir.path().join("pgbk.conf");
        std::fs::write(&f, text).unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        let config = crate::config::Config::load(&f).unwrap();
        let server = config.server("pg1").unwrap();
        let p = peer_status(server, &cat, now);
        assert_eq!(p.lag_bytes, Some(200));
        assert!(p.lag_seconds.unwrap() >= 600.0);
        let st = ServerState {
            server: "pg1".into(),
            sql: Err("passive".into()),
            streaming: Err("passive".into()),
            local: crate::verify::probe::LocalState {
                peer: Some(p),
                ..Default::default()
            },
            now,
            ssh: None,
            repository: None,
            backup_source: None,
        };
        let items = peer_items(server, &st);
        let lag = items
            .iter()
            .find(|i| i.name == "replication WAL lag")
            .unwrap();
        assert!(!lag.ok, "{lag:?}");
        assert!(
            items
                .iter()
                .find(|i| i.name == "replication from primary")
                .unwrap()
                .ok
        );
    }
}
