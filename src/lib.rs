//! dropship: take a web app built on the CI runner to Linux servers over SSH and
//! switch it live atomically.
//!
//! The pipeline, one module a stage, data flowing one way:
//! `cli` → `inputs` → `build` → `package` → `preflight` → `transport` → `agent` (on the server) → `report`.
//! `fleet` is the client's AWS side: `inputs` finds EC2 hosts with it, and
//! `deploy` opens SSH for the runner and drains and health-gates each batch.
//! `deploy` orchestrates it; `protocol` and `manifest` are the contract between
//! the client and the agent.

mod action;
mod agent;
mod build;
mod child_env;
mod cli;
mod commands;
mod deploy;
mod dotenv;
mod error;
mod fleet;
#[doc(hidden)]
pub mod fuzzing;
mod github;
mod inputs;
mod launch;
mod manifest;
mod package;
mod preflight;
mod protocol;
mod report;
mod transport;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

pub use error::{Error, ExitStatus};

/// Runs dropship with `args` (including the program name); returns the exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let mut args: Vec<OsString> = args.into_iter().collect();
    // The GitHub Action: no sub-command given, the options come from `INPUT_*`.
    if action::applies(&args) {
        match action::load() {
            Ok(action_args) => args = action_args,
            Err(err) => return action::fail(&err),
        }
    }
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => return usage(&err),
    };
    if let cli::Command::Server(command) = &cli.command {
        return serve(command);
    }
    report::init_logging();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => action::fail(&err),
    }
}

/// Runs `dropship-agent` with `args`: the agent alone, which links neither the
/// GitHub client nor SSH (what the client installs on servers).
pub fn run_agent(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match cli::AgentCli::try_parse_from(args) {
        Ok(cli) => serve(&cli.command),
        Err(err) => usage(&err),
    }
}

/// Prints clap's message; exit 2 for a bad command line, 0 for `--help`/`--version`.
fn usage(err: &clap::Error) -> ExitCode {
    let _ = err.print();
    ExitCode::from(if err.use_stderr() {
        ExitStatus::BadInput as u8
    } else {
        0
    })
}

fn serve(command: &cli::ServerCommand) -> ExitCode {
    match command {
        cli::ServerCommand::Agent => ExitCode::from(agent::run() as u8),
        cli::ServerCommand::AgentPart(args) => ExitCode::from(agent::relay_part(&args.socket)),
        cli::ServerCommand::RunApp(args) => launch::run(args),
    }
}

fn dispatch(command: cli::Command) -> Result<(), Error> {
    match command {
        cli::Command::Deploy(args) => commands::deploy(*args),
        cli::Command::Rollback(args) => commands::rollback(args),
        cli::Command::Releases(args) => commands::releases(args),
        cli::Command::Package(args) => commands::package(&args),
        cli::Command::Doctor(args) => commands::doctor(args),
        cli::Command::Server(_) => Ok(()),
    }
}
