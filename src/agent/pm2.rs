//! PM2: start a release from its real directory (never through `current`: PM2
//! resolves symlinks when it starts a process), stop one, save the list.
//!
//! PM2 runs `dropship run-app`, which reads `shared/.env` and then becomes the
//! start command: the runtime env never appears on a command line, nor in PM2's
//! dump file.

use std::cell::Cell;
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
    /// Whether PM2 said its daemon is older than the command.
    out_of_date: Cell<bool>,
}

impl Pm2 {
    /// PM2 found on this server, logging into `logs`.
    pub fn new(tools: NodeTools, logs: PathBuf) -> Pm2 {
        Pm2 {
            tools,
            logs,
            out_of_date: Cell::new(false),
        }
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

    /// PM2's status of process `name` (`online`, `errored`, `stopped`…) and its
    /// restart count; `None` when PM2 has no such process. Output that is not a
    /// process list is an error: taking it for "no process" would leave the old one running.
    fn status(&self, name: &str) -> Result<Option<(String, u64)>> {
        let output = self.run(&["jlist"], "jlist")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout.contains(OUT_OF_DATE) {
            self.out_of_date.set(true);
        }
        let list = process_list(&stdout).ok_or_else(|| {
            failed(
                format!(
                    "cannot read PM2's process list: `pm2 jlist` printed {:?}",
                    stdout.chars().take(300).collect::<String>()
                ),
                Some("run `pm2 jlist` on the server to see why; after upgrading PM2, run `pm2 update`"),
            )
        })?;
        let Some(process) = list.iter().find(|p| p["name"] == name) else {
            return Ok(None);
        };
        let env = &process["pm2_env"];
        Ok(Some((
            env["status"].as_str().unwrap_or("unknown").to_owned(),
            env["restart_time"].as_u64().unwrap_or(0),
        )))
    }
}

/// What PM2 prints when its daemon is older than the `pm2` command.
const OUT_OF_DATE: &str = "In-memory PM2 is out-of-date";

/// The process list in `pm2 jlist`'s output: its one JSON line, wherever PM2
/// put its banners (an out-of-date daemon adds one).
fn process_list(stdout: &str) -> Option<Vec<serde_json::Value>> {
    stdout
        .lines()
        .find_map(|line| serde_json::from_str(line.trim()).ok())
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
        if self.status(name)?.is_none() {
            return Ok(());
        }
        self.run(&["delete", name], "delete").map(drop)
    }

    /// `pm2 save`: `pm2 resurrect` (at boot) brings the live release back.
    fn save(&self) -> Result<()> {
        self.run(&["save", "--force"], "save").map(drop)
    }

    fn dead(&self, name: &str) -> Option<String> {
        match self.status(name) {
            Err(err) => Some(err.to_string()),
            Ok(None) => Some("PM2 has no such process".into()),
            Ok(Some(status)) => Self::why_dead(status),
        }
    }

    fn log_tail(&self, name: &str, lines: usize) -> String {
        supervisor::log_tail(&self.logs, name, lines)
    }

    fn warning(&self) -> Option<String> {
        self.out_of_date.get().then(|| {
            format!("warning: the PM2 daemon is older than the `pm2` command ({OUT_OF_DATE}); run `pm2 update` on the server")
        })
    }
}

impl Pm2 {
    fn why_dead(status: (String, u64)) -> Option<String> {
        match status {
            (status, _) if status != "online" && status != "launching" => {
                Some(format!("the process is {status}"))
            }
            (_, restarts) if restarts > 0 => Some(format!(
                "the process exited and was restarted {restarts} time(s)"
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::process_list;

    #[test]
    fn the_process_list_is_found_past_an_out_of_date_banner() {
        let stdout = "[{\"name\":\"www\",\"pm2_env\":{\"status\":\"online\"}}]\n\
            >>>> In-memory PM2 is out-of-date, do:\n>>>> $ pm2 update\n\
            In memory PM2 version: 5.4.3\nLocal PM2 version: 7.0.4\n";
        let list = process_list(stdout).unwrap();
        assert_eq!(list[0]["name"], "www");
        let before = ">>>> In-memory PM2 is out-of-date, do:\n[]\n";
        assert_eq!(process_list(before).unwrap().len(), 0);
        assert_eq!(process_list("[PM2] Spawning PM2 daemon\n"), None);
    }
}
