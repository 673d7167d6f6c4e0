//! What the strategies need from a process manager (PM2 or systemd): start a
//! release as a named process, tell whether it died, stop it, show its logs.
//!
//! Both run `dropship run-app` with the same arguments ([`run_app_args`]): it
//! reads `shared/.env` and then becomes the start command, so the runtime env
//! never appears on a command line, in PM2's dump file or in a unit file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::protocol::{Failure, FailureKind};

/// How one process is started.
pub struct Launch<'a> {
    /// Process name (`<app>`, or `<app>-<port>` for blue-green).
    pub name: &'a str,
    /// The release's `server.js` directory (real path, never through `current`).
    pub dir: &'a Path,
    /// The runtime env file (`shared/.env`).
    pub env_file: &'a Path,
    /// Port to listen on.
    pub port: u16,
    /// The start command.
    pub start: &'a str,
}

/// A process manager that keeps releases running.
pub trait Supervisor {
    /// Starts `dropship run-app` for one release, replacing a process of the same name.
    fn start(&self, launch: &Launch<'_>) -> Result<()>;
    /// Stops and forgets process `name`; a process that does not exist is fine.
    fn delete(&self, name: &str) -> Result<()>;
    /// Makes the running processes come back after a reboot.
    fn save(&self) -> Result<()>;
    /// Why process `name` is not running (any more), if it is not.
    fn dead(&self, name: &str) -> Option<String>;
    /// The last `lines` lines of the process's logs, stderr last.
    fn log_tail(&self, name: &str, lines: usize) -> String;
    /// Something about this server that will hurt later, said at every activation.
    fn warning(&self) -> Option<String> {
        None
    }
}

/// The stdout and stderr log files of process `name` under `logs`.
pub fn log_files(logs: &Path, name: &str) -> [PathBuf; 2] {
    [
        logs.join(format!("{name}.out.log")),
        logs.join(format!("{name}.err.log")),
    ]
}

/// Creates `logs` and empties process `name`'s log files, so a tail shows this start only.
pub fn fresh_logs(logs: &Path, name: &str) -> Result<[PathBuf; 2]> {
    std::fs::create_dir_all(logs)
        .map_err(|err| failed(format!("cannot create {}: {err}", logs.display()), None))?;
    let files = log_files(logs, name);
    for log in &files {
        let _ = std::fs::remove_file(log);
    }
    Ok(files)
}

/// The last `lines` lines of each of process `name`'s log files, stderr last.
pub fn log_tail(logs: &Path, name: &str, lines: usize) -> String {
    log_files(logs, name)
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .flat_map(|text| {
            let all: Vec<String> = text.lines().map(str::to_owned).collect();
            all[all.len().saturating_sub(lines)..].to_vec()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The agent binary and its `run-app` arguments for `launch`, with `node_dir` put first in `PATH`.
pub fn run_app_args(launch: &Launch<'_>, node_dir: &Path) -> Result<(PathBuf, Vec<OsString>)> {
    let exe = std::env::current_exe()
        .map_err(|err| failed(format!("cannot find the agent binary: {err}"), None))?;
    let args = vec![
        "run-app".into(),
        "--env-file".into(),
        launch.env_file.into(),
        "--port".into(),
        launch.port.to_string().into(),
        "--path-prefix".into(),
        node_dir.into(),
        "--".into(),
        launch.start.into(),
    ];
    Ok((exe, args))
}

/// A failure of the process manager, with an optional hint.
pub fn failed(message: String, hint: Option<&str>) -> Error {
    Error::Agent(Failure::new(FailureKind::Failed, message, hint))
}
