//! `list-servers`: the configured servers, one line each.

use super::{Context, ExitCode};
use crate::outln;
use crate::output::{print_json, Format};
use anyhow::Result;
use serde::Serialize;

#[derive(Serialize)]
struct ServerLine<'a> {
    name: &'a str,
    description: &'a str,
    active: bool,
    backup_method: String,
    streaming_archiver: bool,
    archiver: bool,
    config_file: String,
}

/// Prints every server (name and description; `--minimal`: names only).
pub fn run(ctx: &Context, minimal: bool) -> Result<ExitCode> {
    let lines: Vec<ServerLine> = ctx
        .config
        .servers
        .values()
        .map(|s| ServerLine {
            name: &s.name,
            description: &s.description,
            active: s.active,
            backup_method: s.backup_method.to_string(),
            streaming_archiver: s.streaming_archiver,
            archiver: s.archiver,
            config_file: s.file.display().to_string(),
        })
        .collect();
    match ctx.format {
        Format::Json => print_json(&lines)?,
        Format::Text => {
            for l in &lines {
                if minimal {
                    outln!("{}", l.name)?;
                } else {
                    let inactive = if l.active { "" } else { " (inactive)" };
                    outln!("{} - {}{}", l.name, l.description, inactive)?;
                }
            }
        }
    }
    Ok(0)
}
