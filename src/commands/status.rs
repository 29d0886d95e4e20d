//! `status`: what a DBA wants at a glance — versions, WAL position, the archive, and
//! the live RPO (how much WAL the backup host is missing right now).

use super::describe::{rto_json, rto_text};
use super::{runtime, Context, ExitCode};
use crate::outln;
use crate::output::{human_bytes, human_seconds, print_json, Format};
use crate::verify::probe::probe;
use crate::verify::rto::estimate_from_catalog;
use anyhow::Result;
use chrono::Utc;

/// Runs the verb.
pub fn run(ctx: &Context, name: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let st = runtime()?.block_on(probe(s, &ctx.config.home));
    let rpo = st.rpo();
    let rto = estimate_from_catalog(&ctx.config.home, &s.name);
    let passive = s.primary_ssh_command.is_some();
    if ctx.format == Format::Json {
        let mut v = serde_json::to_value(&st)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("description".into(), s.description.clone().into());
            obj.insert("rpo".into(), serde_json::to_value(rpo)?);
            obj.insert("rto".into(), rto_json(&rto));
            obj.insert(
                "last_drill".into(),
                st.local
                    .last_drill
                    .as_ref()
                    .map(|d| d.json(st.now))
                    .unwrap_or_default(),
            );
            obj.insert("active".into(), s.active.into());
            obj.insert("passive".into(), passive.into());
        }
        print_json(&v)?;
        return Ok(if st.sql.is_ok() || passive { 0 } else { 1 });
    }
    outln!("Server {}:", s.name)?;
    outln!("\tDescription: {}", s.description)?;
    if let Some(p) = &st.local.peer {
        print_peer(p)?;
    }
    match &st.sql {
        Ok(sql) => {
            outln!("\tPostgreSQL version: {}", sql.version)?;
            outln!(
                "\tRole: {}",
                if sql.in_recovery {
                    "standby"
                } else {
                    "primary"
                }
            )?;
            outln!("\twal_level: {}", sql.wal_level)?;
            outln!("\tCurrent WAL position: {}", sql.current_lsn)?;
            if !sql.synchronous_standby_names.is_empty() {
                outln!(
                    "\tsynchronous_standby_names: {}",
                    sql.synchronous_standby_names
                )?;
            }
            if let Some(slot) = &s.slot_name {
                match &sql.slot {
                    Some(sl) => outln!(
                        "\tReplication slot: {slot} ({}, restart_lsn {}, wal_status {})",
                        if sl.active { "active" } else { "inactive" },
                        sl.restart_lsn
                            .map(|l| l.to_string())
                            .unwrap_or_else(|| "none".into()),
                        sl.wal_status.as_deref().unwrap_or("-")
                    )?,
                    None => outln!("\tReplication slot: {slot} (missing)")?,
                }
            }
        }
        Err(e) => outln!("\tPostgreSQL: unreachable ({e})")?,
    }
    match &st.streaming {
        Ok(rs) => {
            outln!("\tSystem identifier: {}", rs.system_id)?;
            outln!("\tTimeline: {}", rs.timeline)?;
        }
        Err(e) => outln!("\tStreaming connection: failed ({e})")?,
    }
    let l = &st.local;
    match l.receive_wal_pid {
        Some(pid) => outln!("\treceive-wal: running (pid {pid})")?,
        None => outln!("\treceive-wal: not running")?,
    }
    if let Ok(sql) = &st.sql {
        if let Some(r) = &sql.receiver {
            outln!(
                "\tStreaming: flushed {} ({})",
                r.flush_lsn
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.sync_state
            )?;
        }
    }
    match &l.last_segment {
        Some(last) => {
            let age = (Utc::now() - last.archived_at).num_milliseconds().max(0) as f64 / 1000.0;
            outln!(
                "\tLast archived WAL: {} ({} ago)",
                last.name,
                human_seconds(age)
            )?;
        }
        None => outln!("\tLast archived WAL: none")?,
    }
    outln!(
        "\tArchived WAL: {} file(s), {} ({} stored)",
        l.archived_files,
        human_bytes(l.archived_bytes),
        human_bytes(l.stored_bytes)
    )?;
    if let Some(r) = &st.repository {
        match &r.error {
            None => outln!("\tRepository: {} (reachable)", r.location)?,
            Some(e) => outln!("\tRepository: {} (FAILED: {e})", r.location)?,
        }
    }
    if let Some(p) = &l.partial {
        // On object storage the partial segment is only on this host until it is
        // complete and uploaded: say so, it is not yet safe from losing this host.
        let where_ = if p.local_only {
            " (on this host only: not in the bucket until complete)"
        } else {
            ""
        };
        outln!(
            "\tPartial segment: {} up to {}{where_}",
            p.segment,
            p.end_lsn
        )?;
    }
    outln!("\tRPO (streaming lag): {}", rpo.text())?;
    outln!("\tRTO (estimated): {}", rto_text(&rto))?;
    match &st.local.last_drill {
        Some(d) => outln!("\tLast restore drill: {}", d.text(st.now))?,
        None => outln!("\tLast restore drill: none (pgbk drill {})", s.name)?,
    }
    Ok(if st.sql.is_ok() || passive { 0 } else { 1 })
}

/// A passive server's replication lines: primary, last pass, lag, pending backups.
fn print_peer(p: &crate::verify::peer_check::PeerStatus) -> Result<()> {
    outln!("\tPassive copy of: {}", p.primary_ssh_command)?;
    match p.last_pass_age_secs {
        Some(age) => outln!("\tLast replication pass: {} ago", human_seconds(age))?,
        None => outln!("\tLast replication pass: never")?,
    }
    outln!(
        "\tReplication lag: {} ({})",
        p.lag_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "unknown".into()),
        p.lag_seconds
            .map(human_seconds)
            .unwrap_or_else(|| "unknown".into())
    )?;
    outln!("\tBackups not yet copied: {}", p.backups_pending)?;
    if let Some(e) = &p.last_error {
        outln!("\tLast replication error: {e}")?;
    }
    Ok(())
}
