//! `replication-status`: the standbys and WAL streamers of a server and how far
//! behind each one is, as Barman's verb of the same name shows them.

use super::{connect_error, runtime, Context, ExitCode};
use crate::config::ServerConfig;
use crate::connect::connect_sql;
use crate::output::{human_bytes, PerServer, Report};
use crate::verify::standbys::{replication_status, ReplicationStatus, StandbyKind};
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::io::Write;

/// Runs the verb for one server or `all`.
pub fn run(ctx: &Context, target: &str, kind: &str, minimal: bool) -> Result<ExitCode> {
    let servers: Vec<&ServerConfig> = if target == "all" {
        ctx.config
            .servers
            .values()
            .filter(|s| s.active && s.primary_ssh_command.is_none())
            .collect()
    } else {
        vec![super::server_config(ctx, target)?]
    };
    let kind = match kind {
        "hot-standby" => StandbyKind::HotStandby,
        "wal-streamer" => StandbyKind::WalStreamer,
        _ => StandbyKind::All,
    };
    let rt = runtime()?;
    let mut all = Vec::new();
    for s in servers {
        let st = rt.block_on(async {
            let mut conn = connect_sql(s).await.map_err(connect_error)?;
            let st = replication_status(&s.name, &mut conn, kind)
                .await
                .with_context(|| format!("server '{}': pg_stat_replication", s.name));
            conn.close().await;
            st
        })?;
        all.push(st);
    }
    ctx.emit(&PerServer {
        reports: all
            .into_iter()
            .map(|status| Clients { status, minimal })
            .collect(),
        all: target == "all",
    })?;
    Ok(0)
}

/// A server's streaming clients; `--minimal` text lists their names only.
#[derive(Serialize)]
#[serde(transparent)]
struct Clients {
    status: ReplicationStatus,
    #[serde(skip)]
    minimal: bool,
}

impl Report for Clients {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        if self.minimal {
            for c in &self.status.standbys {
                writeln!(w, "{}", c.application_name)?;
            }
            return Ok(());
        }
        print_text(w, &self.status)
    }
}

fn lsn_lag(lsn: Option<crate::wal::Lsn>, lag: Option<u64>) -> String {
    match (lsn, lag) {
        (Some(l), Some(b)) => format!("{l} ({} behind)", human_bytes(b)),
        (Some(l), None) => l.to_string(),
        _ => "-".into(),
    }
}

fn print_text(w: &mut dyn Write, st: &ReplicationStatus) -> std::io::Result<()> {
    writeln!(w, "Status of streaming clients for server '{}':", st.server)?;
    let role = if st.in_recovery { "standby" } else { "primary" };
    match st.current_lsn {
        Some(l) => writeln!(w, "  Current LSN on the {role}: {l}")?,
        None => writeln!(w, "  Current LSN on the {role}: unknown")?,
    }
    if st.standbys.is_empty() {
        return writeln!(w, "  No streaming clients attached");
    }
    writeln!(w, "  Number of streaming clients: {}", st.standbys.len())?;
    for (i, c) in st.standbys.iter().enumerate() {
        let sync = c.sync_state.as_deref().unwrap_or("-");
        writeln!(w)?;
        writeln!(w, "  {}. {} ({sync})", i + 1, c.kind)?;
        writeln!(w, "     Application name: {}", c.application_name)?;
        writeln!(
            w,
            "     Client          : {}",
            c.client_addr.as_deref().unwrap_or("local socket")
        )?;
        writeln!(
            w,
            "     User name       : {}",
            c.user.as_deref().unwrap_or("-")
        )?;
        writeln!(
            w,
            "     Current state   : {}",
            c.state.as_deref().unwrap_or("-")
        )?;
        writeln!(w, "     WAL sender PID  : {}", c.pid)?;
        writeln!(
            w,
            "     Started at      : {}",
            c.started.as_deref().unwrap_or("-")
        )?;
        writeln!(w, "     Sent LSN        : {}", lsn_lag(c.sent_lsn, None))?;
        writeln!(
            w,
            "     Write LSN       : {}",
            lsn_lag(c.write_lsn, c.write_lag_bytes)
        )?;
        writeln!(
            w,
            "     Flush LSN       : {}",
            lsn_lag(c.flush_lsn, c.flush_lag_bytes)
        )?;
        if c.replay_lsn.is_some() {
            writeln!(
                w,
                "     Replay LSN      : {}",
                lsn_lag(c.replay_lsn, c.replay_lag_bytes)
            )?;
        }
    }
    Ok(())
}
