//! The items `check` judges for one server, from one probe.

use super::probe::ServerState;
use crate::config::ServerConfig;
use serde::Serialize;

/// One judged item.
#[derive(Debug, Clone, Serialize)]
pub struct CheckItem {
    /// What was checked, as `check` prints it.
    pub name: String,
    /// Passed.
    pub ok: bool,
    /// Why it failed, or a detail worth showing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn item(name: &str, ok: bool, hint: Option<String>) -> CheckItem {
    CheckItem {
        name: name.to_string(),
        ok,
        hint,
    }
}

/// Judges the probe of a server.
pub fn check_items(server: &ServerConfig, st: &ServerState) -> Vec<CheckItem> {
    let mut out = Vec::new();
    match &st.sql {
        Ok(sql) => {
            out.push(item("PostgreSQL", true, None));
            out.push(item(
                "superuser or replication role",
                sql.superuser || sql.replication_role,
                (!(sql.superuser || sql.replication_role))
                    .then(|| "the conninfo role needs SUPERUSER or REPLICATION".to_string()),
            ));
            let level_ok = sql.wal_level == "replica" || sql.wal_level == "logical";
            out.push(item(
                "wal_level",
                level_ok,
                (!level_ok).then(|| {
                    format!(
                        "wal_level is '{}', must be 'replica' or 'logical'",
                        sql.wal_level
                    )
                }),
            ));
        }
        Err(e) => out.push(item("PostgreSQL", false, Some(e.clone()))),
    }
    let streaming_needed =
        server.streaming_archiver || server.backup_method.to_string() == "postgres";
    if streaming_needed {
        match &st.streaming {
            Ok(_) => out.push(item("PostgreSQL streaming", true, None)),
            Err(e) => out.push(item("PostgreSQL streaming", false, Some(e.clone()))),
        }
    }
    if let (Ok(stream), Some(known)) = (&st.streaming, st.local.catalog_system_id) {
        let ok = stream.system_id == known;
        out.push(item(
            "systemid coherence",
            ok,
            (!ok).then(|| {
                format!(
                    "server reports {}, the archive holds WAL of {}",
                    stream.system_id, known
                )
            }),
        ));
    }
    if server.streaming_archiver {
        if let (Some(slot), Ok(sql)) = (&server.slot_name, &st.sql) {
            let (ok, hint) = match &sql.slot {
                None => (
                    false,
                    Some(format!("replication slot '{slot}' does not exist")),
                ),
                Some(s) if s.wal_status.as_deref() == Some("lost") => (
                    false,
                    Some(format!("replication slot '{slot}' has lost required WAL")),
                ),
                Some(s) if !s.active => (
                    false,
                    Some(format!("replication slot '{slot}' is not active")),
                ),
                Some(_) => (true, None),
            };
            out.push(item("replication slot", ok, hint));
        }
        let running = st.local.receive_wal_pid;
        out.push(item(
            "receive-wal running",
            running.is_some(),
            match running {
                Some(pid) => Some(format!("pid {pid}")),
                None => Some(format!(
                    "no receive-wal process for server '{}'",
                    server.name
                )),
            },
        ));
    }
    out.push(item(
        "directories",
        st.local.not_writable.is_none(),
        st.local.not_writable.clone(),
    ));
    let gaps = &st.local.gaps;
    out.push(item(
        "archived WAL continuity",
        gaps.is_empty(),
        (!gaps.is_empty()).then(|| {
            let shown: Vec<&str> = gaps.iter().take(5).map(String::as_str).collect();
            let more = if gaps.len() > 5 {
                format!(" and {} more", gaps.len() - 5)
            } else {
                String::new()
            };
            format!("missing {}{more}", shown.join(", "))
        }),
    ));
    out.push(item(
        "WAL errors",
        st.local.error_files == 0,
        (st.local.error_files > 0)
            .then(|| format!("{} file(s) in the errors folder", st.local.error_files)),
    ));
    out
}
