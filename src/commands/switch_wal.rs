//! `switch-wal`: close the current WAL segment on the server, and with `--archive`
//! wait until that segment is safely in the archive.

use super::{connect_primary_sql, runtime, Context, ExitCode};
use crate::catalog::Catalog;
use crate::outln;
use crate::output::{print_json, Format};
use crate::wal::Lsn;
use anyhow::{anyhow, Context as _, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct SwitchResult {
    server: String,
    switched: bool,
    /// The last closed segment (the one just closed when `switched`).
    wal_file: String,
    archived: Option<bool>,
}

/// Runs the verb.
pub fn run(
    ctx: &Context,
    name: &str,
    force: bool,
    archive: bool,
    timeout: Duration,
) -> Result<ExitCode> {
    let s = super::server_config(ctx, name)?;
    let (switched, wal_file) = runtime()?.block_on(async {
        let mut conn = connect_primary_sql(s).await?;
        let q = |r: Vec<crate::pg::Row>, what: &str| -> Result<String> {
            r.first()
                .and_then(|row| row.get_idx(0))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("server '{}': no answer to {what}", s.name))
        };
        let seg_size: u64 = q(
            conn.simple_query("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
                .await?,
            "wal_segment_size",
        )?
        .parse()
        .context("wal_segment_size")?;
        if force {
            conn.simple_query("CHECKPOINT")
                .await
                .with_context(|| format!("server '{}': CHECKPOINT", s.name))?;
        }
        let before: Lsn = q(
            conn.simple_query("SELECT pg_current_wal_insert_lsn()")
                .await?,
            "pg_current_wal_insert_lsn",
        )?
        .parse()?;
        let rows = conn
            .simple_query("SELECT pg_walfile_name(l) FROM pg_switch_wal() AS l")
            .await
            .with_context(|| format!("server '{}': pg_switch_wal()", s.name))?;
        let wal_file = q(rows, "pg_switch_wal")?;
        let after: Lsn = q(
            conn.simple_query("SELECT pg_current_wal_insert_lsn()")
                .await?,
            "pg_current_wal_insert_lsn",
        )?
        .parse()?;
        conn.close().await;
        Ok::<_, anyhow::Error>((after.segno(seg_size) > before.segno(seg_size), wal_file))
    })?;
    if ctx.format == Format::Text {
        if switched {
            outln!(
                "The WAL file {wal_file} has been closed on server '{}'",
                s.name
            )?;
        } else {
            outln!("No switch required for server '{}' (last closed WAL file {wal_file}); use --force to force one", s.name)?;
        }
    }
    let mut archived = None;
    if archive {
        if ctx.format == Format::Text && !ctx.quiet {
            outln!(
                "Waiting for the WAL file {wal_file} from server '{}' (max: {} seconds)",
                s.name,
                timeout.as_secs()
            )?;
        }
        let ok = wait_archived(ctx, &s.name, &wal_file, timeout)?;
        archived = Some(ok);
        if !ok {
            if ctx.format == Format::Json {
                print_json(&SwitchResult {
                    server: s.name.clone(),
                    switched,
                    wal_file: wal_file.clone(),
                    archived,
                })?;
            }
            return Err(anyhow!(
                "server '{}': WAL file {wal_file} was not archived within {} seconds (is receive-wal running?)",
                s.name,
                timeout.as_secs()
            ));
        }
        if ctx.format == Format::Text {
            outln!("WAL file {wal_file} is archived")?;
        }
    }
    if ctx.format == Format::Json {
        print_json(&SwitchResult {
            server: s.name.clone(),
            switched,
            wal_file,
            archived,
        })?;
    }
    Ok(0)
}

/// Polls the catalog until the segment is recorded (and its file is there).
fn wait_archived(ctx: &Context, server: &str, wal_file: &str, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(cat) = Catalog::open_existing(&ctx.config.home)? {
            if cat.wal_file(server, wal_file)?.is_some() {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
