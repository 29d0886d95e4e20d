//! The `pgbk` command: parse the command line, run the verb, map errors to exit codes
//! (0 ok, 1 a failed check or operation, 2 bad usage or configuration; get-wal 200
//! for a WAL file that is archived but damaged: above 125, PostgreSQL stops recovery).

use clap::Parser;
use pgbk::cli::Cli;
use pgbk::commands::{self, UsageError};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let format = cli.format.format();
    match commands::run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let code = if let Some(coded) = e.downcast_ref::<commands::CodedError>() {
                coded.code
            } else if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                // `pgbk list-backups | head`: the reader has what it wanted.
                return ExitCode::SUCCESS;
            } else if e
                .chain()
                .any(|c| c.is::<UsageError>() || c.is::<pgbk::config::ConfigError>())
            {
                2
            } else {
                1
            };
            pgbk::output::print_error(&e, format);
            ExitCode::from(code)
        }
    }
}
