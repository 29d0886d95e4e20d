//! `switch-wal`: close the current WAL segment on the server, and with `--archive`
//! wait until that segment is safely in the archive.

use super::{connect_error, runtime, Context, ExitCode};
use crate::catalog::Catalog;
use crate::connect::connect_primary_sql;
use crate::outln;
use crate::output::{print_json, Format};
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
    let done = runtime()?.block_on(async {
        let mut conn = connect_primary_sql(s).await.map_err(connect_error)?;
        let done = conn
            .switch_wal(force)
            .await
            .with_context(|| format!("server '{}'", s.name));
        conn.close().await;
        done
    })?;
    let (switched, wal_file) = (done.switched, done.wal_file);
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

/// Polls the catalog until the segment is recorded (and its file is there), and
/// until no older finished segment is still waiting to be stored: `--archive`
/// means all the WAL up to the switch is archived.
fn wait_archived(ctx: &Context, server: &str, wal_file: &str, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let repo = crate::repo::ServerRepo::new(&ctx.config.home, server);
    loop {
        if let Some(cat) = Catalog::open_existing(&ctx.config.home)? {
            if cat.wal_file(server, wal_file)?.is_some()
                && crate::wal::receiver_state::stored_through(&repo, wal_file)
                    .with_context(|| format!("reading {}", repo.streaming_dir().display()))?
            {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
