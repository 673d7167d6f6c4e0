//! PM2: start a release from its real directory (never through `current`: PM2
//! resolves symlinks when it starts a process), stop one, save the list.
//!
//! PM2 runs `dropship run-app`, which reads `shared/.env` and then becomes the
//! start command: the runtime env never appears on a command line, nor in PM2's
//! dump file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::tools::NodeTools;
use crate::error::{Error, Result};
use crate::protocol::{Failure, FailureKind};

/// PM2 on this server, with its logs under `.dropship/logs/`.
pub struct Pm2 {
    tools: NodeTools,
    logs: PathBuf,
}

/// How one process is started.
pub struct Launch<'a> {
    /// Process name.
    pub name: &'a str,
    /// The release's `server.js` directory (real path).
    pub dir: &'a Path,
    /// The runtime env file (`shared/.env`).
    pub env_file: &'a Path,
    /// Port to listen on.
    pub port: u16,
    /// The start command.
    pub start: &'a str,
}

impl Pm2 {
    /// PM2 found on this server, logging into `logs`.
    pub fn new(tools: NodeTools, logs: PathBuf) -> Pm2 {
        Pm2 { tools, logs }
    }

    fn command(&self) -> Command {
        let mut path = OsString::from(&self.tools.node_dir);
        if let Some(existing) = std::env::var_os("PATH") {
            path.push(":");
            path.push(existing);
        }
        let mut command = Command::new(&self.tools.pm2);
        command.env("PATH", path).stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&std::ffi::OsStr], what: &str) -> Result<Output> {
        let output = self.command().args(args).output().map_err(|err| {
            failed(
                format!("cannot run {}: {err}", self.tools.pm2.display()),
                None,
            )
        })?;
        if output.status.success() {
            Ok(output)
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            Err(failed(
                format!("`pm2 {what}` failed: {}{}", stderr.trim(), stdout.trim()),
                None,
            ))
        }
    }

    /// The stdout and stderr log files of process `name`.
    pub fn log_files(&self, name: &str) -> [PathBuf; 2] {
        [
            self.logs.join(format!("{name}.out.log")),
            self.logs.join(format!("{name}.err.log")),
        ]
    }

    /// Starts `dropship run-app` under PM2 for one release.
    pub fn start(&self, launch: &Launch<'_>) -> Result<()> {
        std::fs::create_dir_all(&self.logs).map_err(|err| {
            failed(
                format!("cannot create {}: {err}", self.logs.display()),
                None,
            )
        })?;
        let exe = std::env::current_exe()
            .map_err(|err| failed(format!("cannot find the agent binary: {err}"), None))?;
        let [out, err] = self.log_files(launch.name);
        let port = launch.port.to_string();
        for log in [&out, &err] {
            let _ = std::fs::remove_file(log);
        }
        let args: Vec<&std::ffi::OsStr> = vec![
            "start".as_ref(),
            exe.as_os_str(),
            "--name".as_ref(),
            launch.name.as_ref(),
            "--interpreter".as_ref(),
            "none".as_ref(),
            "--cwd".as_ref(),
            launch.dir.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
            "--error".as_ref(),
            err.as_os_str(),
            "--kill-timeout".as_ref(),
            "5000".as_ref(),
            "--max-restarts".as_ref(),
            "5".as_ref(),
            "--".as_ref(),
            "run-app".as_ref(),
            "--env-file".as_ref(),
            launch.env_file.as_os_str(),
            "--port".as_ref(),
            port.as_ref(),
            "--path-prefix".as_ref(),
            self.tools.node_dir.as_os_str(),
            "--".as_ref(),
            launch.start.as_ref(),
        ];
        self.run(&args, "start").map(drop)
    }

    /// Stops and forgets process `name`; a process that does not exist is fine.
    pub fn delete(&self, name: &str) -> Result<()> {
        if self.status(name).is_none() {
            return Ok(());
        }
        self.run(&["delete".as_ref(), name.as_ref()], "delete")
            .map(drop)
    }

    /// Saves the process list so that `pm2 resurrect` (at boot) brings the live release back.
    pub fn save(&self) -> Result<()> {
        self.run(&["save".as_ref(), "--force".as_ref()], "save")
            .map(drop)
    }

    /// PM2's status of process `name` (`online`, `errored`, `stopped`…) and its restart count.
    pub fn status(&self, name: &str) -> Option<(String, u64)> {
        let output = self
            .command()
            .arg("jlist")
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let list: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        let process = list.as_array()?.iter().find(|p| p["name"] == name)?;
        let env = &process["pm2_env"];
        Some((
            env["status"].as_str()?.to_owned(),
            env["restart_time"].as_u64().unwrap_or(0),
        ))
    }

    /// The last `lines` lines of the process's logs, stderr last.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        self.log_files(name)
            .iter()
            .filter_map(|file| std::fs::read_to_string(file).ok())
            .flat_map(|text| {
                let all: Vec<String> = text.lines().map(str::to_owned).collect();
                all[all.len().saturating_sub(lines)..].to_vec()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn failed(message: String, hint: Option<&str>) -> Error {
    Error::Agent(Failure::new(FailureKind::Failed, message, hint))
}
