//! `dropship run-app`: what the process manager starts on the server. It reads
//! the runtime env from `shared/.env`, sets `PORT` and `HOSTNAME`, and then
//! becomes the start command (`exec`), so PM2 tracks the app itself and no env
//! value ever appears on a command line or in PM2's saved process list.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use crate::cli::RunAppArgs;
use crate::dotenv;

/// Replaces this process with the app; returns only if that fails.
pub fn run(args: &RunAppArgs) -> ExitCode {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("exec {}", args.start.join(" ")));
    match std::fs::read_to_string(&args.env_file) {
        Ok(text) => match dotenv::parse(&text) {
            Ok(pairs) => {
                command.envs(pairs);
            }
            Err(err) => {
                eprintln!("dropship run-app: {}: {err}", args.env_file.display());
                return ExitCode::from(2);
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            eprintln!(
                "dropship run-app: cannot read {}: {err}",
                args.env_file.display()
            );
            return ExitCode::from(2);
        }
    }
    // Set last: a PORT or HOSTNAME in .env must not move the app off its slot
    // (a pre-set HOSTNAME makes Next.js bind to the machine's name).
    command
        .env("PORT", args.port.to_string())
        .env("HOSTNAME", "127.0.0.1");
    if let Some(prefix) = &args.path_prefix {
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{prefix}:{path}"));
    }
    let err = command.exec();
    eprintln!(
        "dropship run-app: cannot start `{}`: {err}",
        args.start.join(" ")
    );
    ExitCode::from(127)
}
