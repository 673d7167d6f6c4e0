//! PM2: start a release from its real directory (never through `current`: PM2
//! resolves symlinks when it starts a process), stop one, save the list.
//!
//! PM2 runs `dropship run-app`, which reads `shared/.env` and then becomes the
//! start command: the runtime env never appears on a command line, nor in PM2's
//! dump file.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::supervisor::{self, Launch, Supervisor, failed};
use super::tools::NodeTools;
use crate::error::Result;

/// PM2 on this server, with its logs under `.dropship/logs/`.
pub struct Pm2 {
    tools: NodeTools,
    logs: PathBuf,
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

    fn run<S: AsRef<OsStr>>(&self, args: &[S], what: &str) -> Result<Output> {
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

    /// PM2's status of process `name` (`online`, `errored`, `stopped`…) and its restart count.
    fn status(&self, name: &str) -> Option<(String, u64)> {
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
}

impl Supervisor for Pm2 {
    fn start(&self, launch: &Launch<'_>) -> Result<()> {
        let [out, err] = supervisor::fresh_logs(&self.logs, launch.name)?;
        let (exe, run_app) = supervisor::run_app_args(launch, &self.tools.node_dir)?;
        let mut args: Vec<OsString> = vec![
            "start".into(),
            exe.into(),
            "--name".into(),
            launch.name.into(),
            "--interpreter".into(),
            "none".into(),
            "--cwd".into(),
            launch.dir.into(),
            "--output".into(),
            out.into(),
            "--error".into(),
            err.into(),
            "--kill-timeout".into(),
            "5000".into(),
            "--max-restarts".into(),
            "5".into(),
            "--".into(),
        ];
        args.extend(run_app);
        self.run(&args, "start").map(drop)
    }

    fn delete(&self, name: &str) -> Result<()> {
        if self.status(name).is_none() {
            return Ok(());
        }
        self.run(&["delete", name], "delete").map(drop)
    }

    /// `pm2 save`: `pm2 resurrect` (at boot) brings the live release back.
    fn save(&self) -> Result<()> {
        self.run(&["save", "--force"], "save").map(drop)
    }

    fn dead(&self, name: &str) -> Option<String> {
        match self.status(name)? {
            (status, _) if status != "online" && status != "launching" => {
                Some(format!("the process is {status}"))
            }
            (_, restarts) if restarts > 0 => Some(format!(
                "the process exited and was restarted {restarts} time(s)"
            )),
            _ => None,
        }
    }

    fn log_tail(&self, name: &str, lines: usize) -> String {
        supervisor::log_tail(&self.logs, name, lines)
    }
}
