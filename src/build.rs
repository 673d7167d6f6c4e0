//! The optional `build` step: a shell command run in the working directory on
//! this machine (the CI runner), never on the server.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Runs `command` with `sh -c` in `working_directory`, with the env map and
/// `DROPSHIP_RELEASE` in its environment (that is how `NEXT_PUBLIC_*` values get
/// inlined at build time), and without dropship's secrets (see `child_env`). Its output goes to stderr so that `--json` output on
/// stdout stays clean.
pub fn run(
    command: &str,
    working_directory: &Path,
    env: &[(String, String)],
    release: &str,
) -> Result<()> {
    tracing::info!("build: {command}");
    let status = crate::child_env::for_build(&mut Command::new("sh"))
        .arg("-c")
        .arg(command)
        .current_dir(working_directory)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("DROPSHIP_RELEASE", release)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .map_err(|err| Error::local("run the build in", working_directory, err))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Build {
            command: command.into(),
            status: status.to_string(),
        })
    }
}
