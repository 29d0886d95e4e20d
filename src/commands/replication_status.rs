//! `replication-status`: the standbys and WAL streamers of a server and how far
//! behind each one is, as Barman's verb of the same name shows them.

use super::{connect_error, runtime, Context, ExitCode};
use crate::config::ServerConfig;
use crate::connect::connect_sql;
use crate::outln;
use crate::output::{human_bytes, print_json, Format};
use crate::verify::standbys::{replication_status, ReplicationStatus, StandbyKind};
use anyhow::{Context as _, Result};

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
    match ctx.format {
        Format::Json if target == "all" => print_json(&all)?,
        Format::Json => print_json(&all[0])?,
        Format::Text => {
            for st in &all {
                if minimal {
                    for c in &st.standbys {
                        outln!("{}", c.application_name)?;
                    }
                } else {
                    print_text(st)?;
                }
            }
        }
    }
    Ok(0)
}

fn lsn_lag(lsn: Option<crate::wal::Lsn>, lag: Option<u64>) -> String {
    match (lsn, lag) {
        (Some(l), Some(b)) => format!("{l} ({} behind)", human_bytes(b)),
        (Some(l), None) => l.to_string(),
        _ => "-".into(),
    }
}

fn print_text(st: &ReplicationStatus) -> std::io::Result<()> {
    outln!("Status of streaming clients for server '{}':", st.server)?;
    let role = if st.in_recovery { "standby" } else { "primary" };
    match st.current_lsn {
        Some(l) => outln!("  Current LSN on the {role}: {l}")?,
        None => outln!("  Current LSN on the {role}: unknown")?,
    }
    if st.standbys.is_empty() {
        return outln!("  No streaming clients attached");
    }
    outln!("  Number of streaming clients: {}", st.standbys.len())?;
    for (i, c) in st.standbys.iter().enumerate() {
        let sync = c.sync_state.as_deref().unwrap_or("-");
        outln!("")?;
        outln!("  {}. {} ({sync})", i + 1, c.kind)?;
        outln!("     Application name: {}", c.application_name)?;
        outln!(
            "     Client          : {}",
            c.client_addr.as_deref().unwrap_or("local socket")
        )?;
        outln!(
            "     User name       : {}",
            c.user.as_deref().unwrap_or("-")
        )?;
        outln!(
            "     Current state   : {}",
            c.state.as_deref().unwrap_or("-")
        )?;
        outln!("     WAL sender PID  : {}", c.pid)?;
        outln!(
            "     Started at      : {}",
            c.started.as_deref().unwrap_or("-")
        )?;
        outln!("     Sent LSN        : {}", lsn_lag(c.sent_lsn, None))?;
        outln!(
            "     Write LSN       : {}",
            lsn_lag(c.write_lsn, c.write_lag_bytes)
        )?;
        outln!(
            "     Flush LSN       : {}",
            lsn_lag(c.flush_lsn, c.flush_lag_bytes)
        )?;
        if c.replay_lsn.is_some() {
            outln!(
                "     Replay LSN      : {}",
                lsn_lag(c.replay_lsn, c.replay_lag_bytes)
            )?;
        }
    }
    Ok(())
}
