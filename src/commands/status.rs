//! `status`: what a DBA wants at a glance — versions, WAL position, the archive, and
//! the live RPO (how much WAL the backup host is missing right now).

use super::describe::{rto_json, rto_text};
use super::{runtime, Context, ExitCode};
use crate::config::ServerConfig;
use crate::output::{human_bytes, human_seconds, Report};
use crate::verify::probe::{probe, ServerState};
use crate::verify::rto::estimate_from_catalog;
use anyhow::Result;
use chrono::Utc;
use serde::Serialize;
use std::io::Write;

/// Runs the verb.
pub fn run(ctx: &Context, name: &str) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let st = runtime()?.block_on(probe(s, &ctx.config.home));
    let rpo = st.rpo();
    let rto = estimate_from_catalog(&ctx.config.home, &s.name);
    let passive = s.primary_ssh_command.is_some();
    let mut v = serde_json::to_value(&st)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("description".into(), s.description.clone().into());
        obj.insert("rpo".into(), serde_json::to_value(&rpo)?);
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
    ctx.emit(&Status {
        doc: v,
        s,
        st: &st,
        rpo: rpo.text(),
        rto: rto_text(&rto),
    })?;
    Ok(if st.sql.is_ok() || passive { 0 } else { 1 })
}

/// The status: the JSON document, and what its text needs.
#[derive(Serialize)]
#[serde(transparent)]
struct Status<'a> {
    doc: serde_json::Value,
    #[serde(skip)]
    s: &'a ServerConfig,
    #[serde(skip)]
    st: &'a ServerState,
    #[serde(skip)]
    rpo: String,
    #[serde(skip)]
    rto: String,
}

impl Report for Status<'_> {
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let (s, st) = (self.s, self.st);
        writeln!(w, "Server {}:", s.name)?;
        writeln!(w, "\tDescription: {}", s.description)?;
        if let Some(p) = &st.local.peer {
            print_peer(w, p)?;
        }
        match &st.sql {
            Ok(sql) => {
                writeln!(w, "\tPostgreSQL version: {}", sql.version)?;
                writeln!(
                    w,
                    "\tRole: {}",
                    if sql.in_recovery {
                        "standby"
                    } else {
                        "primary"
                    }
                )?;
                writeln!(w, "\twal_level: {}", sql.wal_level)?;
                writeln!(w, "\tCurrent WAL position: {}", sql.current_lsn)?;
                if !sql.synchronous_standby_names.is_empty() {
                    writeln!(
                        w,
                        "\tsynchronous_standby_names: {}",
                        sql.synchronous_standby_names
                    )?;
                }
                if let Some(slot) = &s.slot_name {
                    match &sql.slot {
                        Some(sl) => writeln!(
                            w,
                            "\tReplication slot: {slot} ({}, restart_lsn {}, wal_status {})",
                            if sl.active { "active" } else { "inactive" },
                            sl.restart_lsn
                                .map(|l| l.to_string())
                                .unwrap_or_else(|| "none".into()),
                            sl.wal_status.as_deref().unwrap_or("-")
                        )?,
                        None => writeln!(w, "\tReplication slot: {slot} (missing)")?,
                    }
                }
            }
            Err(e) => writeln!(w, "\tPostgreSQL: unreachable ({e})")?,
        }
        match &st.streaming {
            Ok(rs) => {
                writeln!(w, "\tSystem identifier: {}", rs.system_id)?;
                writeln!(w, "\tTimeline: {}", rs.timeline)?;
            }
            Err(e) => writeln!(w, "\tStreaming connection: failed ({e})")?,
        }
        let l = &st.local;
        match l.receive_wal_pid {
            Some(pid) => writeln!(w, "\treceive-wal: running (pid {pid})")?,
            None => writeln!(w, "\treceive-wal: not running")?,
        }
        if let Ok(sql) = &st.sql {
            if let Some(r) = &sql.receiver {
                writeln!(
                    w,
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
                writeln!(
                    w,
                    "\tLast archived WAL: {} ({} ago)",
                    last.name,
                    human_seconds(age)
                )?;
            }
            None => writeln!(w, "\tLast archived WAL: none")?,
        }
        writeln!(
            w,
            "\tArchived WAL: {} file(s), {} ({} stored)",
            l.archived_files,
            human_bytes(l.archived_bytes),
            human_bytes(l.stored_bytes)
        )?;
        if let Some(r) = &st.repository {
            match &r.error {
                None => writeln!(w, "\tRepository: {} (reachable)", r.location)?,
                Some(e) => writeln!(w, "\tRepository: {} (FAILED: {e})", r.location)?,
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
            writeln!(
                w,
                "\tPartial segment: {} up to {}{where_}",
                p.segment, p.end_lsn
            )?;
        }
        writeln!(w, "\tRPO (streaming lag): {}", self.rpo)?;
        writeln!(w, "\tRTO (estimated): {}", self.rto)?;
        match &st.local.last_drill {
            Some(d) => writeln!(w, "\tLast restore drill: {}", d.text(st.now))?,
            None => writeln!(w, "\tLast restore drill: none (pgbk drill {})", s.name)?,
        }
        Ok(())
    }
}

/// A passive server's replication lines: primary, last pass, lag, pending backups.
fn print_peer(w: &mut dyn Write, p: &crate::verify::peer_check::PeerStatus) -> std::io::Result<()> {
    writeln!(w, "\tPassive copy of: {}", p.primary_ssh_command)?;
    match p.last_pass_age_secs {
        Some(age) => writeln!(w, "\tLast replication pass: {} ago", human_seconds(age))?,
        None => writeln!(w, "\tLast replication pass: never")?,
    }
    writeln!(
        w,
        "\tReplication lag: {} ({})",
        p.lag_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "unknown".into()),
        p.lag_seconds
            .map(human_seconds)
            .unwrap_or_else(|| "unknown".into())
    )?;
    writeln!(w, "\tBackups not yet copied: {}", p.backups_pending)?;
    if let Some(e) = &p.last_error {
        writeln!(w, "\tLast replication error: {e}")?;
    }
    Ok(())
}
