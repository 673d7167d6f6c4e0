//! dropship: take a web app built on the CI runner to Linux servers over SSH and
//! switch it live atomically.
//!
//! The pipeline, one module a stage, data flowing one way:
//! `cli` → `inputs` → `build` → `package` → `transport` → `agent` (on the server) → `report`.
//! `deploy` orchestrates it; `protocol` and `manifest` are the contract between
//! the client and the agent.

mod agent;
mod build;
mod cli;
mod commands;
mod deploy;
mod error;
mod inputs;
mod manifest;
mod package;
mod protocol;
mod report;
mod transport;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

pub use error::{Error, ExitStatus};

/// Runs dropship with `args` (including the program name); returns the exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                ExitStatus::BadInput as u8
            } else {
                0
            });
        }
    };
    if matches!(cli.command, cli::Command::Agent) {
        return ExitCode::from(agent::run() as u8);
    }
    report::init_logging();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report::print_error(&err);
            ExitCode::from(err.exit_status() as u8)
        }
    }
}

fn dispatch(command: cli::Command) -> Result<(), Error> {
    match command {
        cli::Command::Deploy(args) => {
            let inputs = inputs::Deploy::from_args(args)?;
            let outputs = deploy::deploy(&inputs)?;
            if inputs.server.json {
                println!("{}", outputs.to_json());
            }
            Ok(())
        }
        cli::Command::Rollback(args) => commands::rollback(args),
        cli::Command::Releases(args) => commands::releases(args),
        cli::Command::Package(args) => commands::package(&args),
        cli::Command::Agent => Ok(()),
    }
}
