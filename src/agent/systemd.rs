//! systemd user units: the deploy user's own systemd (`systemctl --user`) keeps
//! releases running, without root and without PM2.
//!
//! Each process PM2 would run becomes one unit, `dropship-<name>.service` in
//! `~/.config/systemd/user/` (`<name>` is `<app>`, or `<app>-<port>` for
//! blue-green), written by the agent on every start. It runs `dropship run-app`
//! from the release's real directory (never through `current`), so the runtime
//! env stays in `shared/.env`: no value ever appears in the unit file.
//! Output is appended to `.dropship/logs/<name>.{out,err}.log` (a user manager
//! may have no journal), and the unit is enabled for `default.target`, so with
//! lingering (`loginctl enable-linger`) the live release comes back at boot.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::store;
use super::supervisor::{self, Launch, Supervisor, failed};
use crate::error::Result;

/// Seconds a process gets after SIGTERM before SIGKILL (PM2's `--kill-timeout 5000`).
const STOP_TIMEOUT_SECS: u32 = 5;

/// The deploy user's systemd instance, reached through `systemctl --user`.
pub struct UserManager {
    /// `XDG_RUNTIME_DIR` given to `systemctl` when the SSH session has none.
    runtime_dir: Option<PathBuf>,
}

impl UserManager {
    /// The user manager of this session's user; defaults `XDG_RUNTIME_DIR` to
    /// `/run/user/<uid>` when unset (non-PAM SSH logins) and that directory exists.
    pub fn detect() -> UserManager {
        let set = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|dir| !dir.is_empty());
        let default = PathBuf::from(format!("/run/user/{}", uid()));
        UserManager {
            runtime_dir: (!set && default.is_dir()).then_some(default),
        }
    }

    /// Asks the user manager for its version: `Ok` only when it answers.
    pub fn check(&self) -> Result<String> {
        self.systemctl(&["show", "--property=Version", "--value"], "show")
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .map_err(|err| {
                failed(
                    format!(
                        "cannot reach the systemd user manager of `{user}` (XDG_RUNTIME_DIR={dir}): {err}",
                        user = user_name(),
                        dir = self.runtime_dir_text(),
                    ),
                    Some(&unreachable_hint()),
                )
            })
    }

    /// `XDG_RUNTIME_DIR` as `systemctl` sees it, for messages.
    fn runtime_dir_text(&self) -> String {
        match (&self.runtime_dir, std::env::var_os("XDG_RUNTIME_DIR")) {
            (Some(dir), _) => format!("{} (defaulted)", dir.display()),
            (None, Some(dir)) if !dir.is_empty() => Path::new(&dir).display().to_string(),
            _ => "unset".into(),
        }
    }

    /// Runs `systemctl --user <args>`; an error holds what systemctl said.
    fn systemctl<S: AsRef<OsStr>>(&self, args: &[S], what: &str) -> Result<Output> {
        let mut command = Command::new("systemctl");
        command.arg("--user").args(args).stdin(Stdio::null());
        if let Some(dir) = &self.runtime_dir {
            command.env("XDG_RUNTIME_DIR", dir);
        }
        let output = command.output().map_err(|err| {
            failed(
                format!("cannot run `systemctl`: {err}"),
                Some(
                    "`process-manager: systemd` needs a server booted with systemd; use `pm2` otherwise",
                ),
            )
        })?;
        if output.status.success() {
            return Ok(output);
        }
        let said = String::from_utf8_lossy(&output.stderr);
        Err(failed(
            format!(
                "`systemctl --user {what}` failed ({}): {}",
                output.status,
                said.trim()
            ),
            None,
        ))
    }

    /// Properties of `unit` (`systemctl --user show`).
    fn show(&self, unit: &str, properties: &str) -> Result<HashMap<String, String>> {
        let output = self.systemctl(&["show", unit, "--property", properties], "show")?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect())
    }
}

/// What to do when the user manager cannot be reached.
fn unreachable_hint() -> String {
    let user = user_name();
    format!(
        "as root, run `sudo loginctl enable-linger {user}` once (it starts {user}'s systemd at boot and keeps it running without a login); check that an SSH session of {user} has XDG_RUNTIME_DIR=/run/user/{uid} and that `systemctl --user status` works there; or use `process-manager: pm2`",
        uid = uid()
    )
}

/// Where lingering is recorded for `user`: the user manager runs without a login.
pub fn linger_file(user: &str) -> PathBuf {
    Path::new("/var/lib/systemd/linger").join(user)
}

/// The name of the user the agent runs as: from the passwd database, else `$USER`, else the uid.
pub fn user_name() -> String {
    passwd_name()
        .or_else(|| std::env::var("USER").ok().filter(|name| !name.is_empty()))
        .unwrap_or_else(|| uid().to_string())
}

/// This uid's name in the passwd database.
fn passwd_name() -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: an all-zero passwd (null pointers, zero ids) is a valid value to be overwritten.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is its real size;
    // on success `found` points at `entry`, whose strings live in `buf`.
    let status =
        unsafe { libc::getpwuid_r(uid(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
    if status != 0 || found.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: `pw_name` is a NUL-terminated string inside `buf`, alive here.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned()).filter(|name| !name.is_empty())
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Releases run as systemd user units of the deploy user.
pub struct Systemd {
    manager: UserManager,
    node_dir: PathBuf,
    units: PathBuf,
    logs: PathBuf,
}

impl Systemd {
    /// The user manager, checked now so that an unreachable one fails before anything changes.
    pub fn connect(node_dir: PathBuf, logs: PathBuf) -> Result<Systemd> {
        let manager = UserManager::detect();
        manager.check().map_err(|err| {
            err.with_hint(&format!("{}; nothing was changed", unreachable_hint()))
        })?;
        Ok(Systemd {
            manager,
            node_dir,
            units: units_dir()?,
            logs,
        })
    }

    fn unit_file(&self, unit: &str) -> PathBuf {
        self.units.join(unit)
    }

    fn systemctl(&self, args: &[&str], what: &str) -> Result<()> {
        self.manager.systemctl(args, what).map(drop)
    }

    /// Fails unless the user manager loaded `unit` from the file dropship wrote.
    fn check_loaded(&self, unit: &str) -> Result<()> {
        let props = self
            .manager
            .show(unit, "LoadState,LoadError,FragmentPath")?;
        let prop = |key: &str| props.get(key).map_or("", String::as_str);
        let file = self.unit_file(unit);
        if prop("LoadState") == "loaded" && Path::new(prop("FragmentPath")) == file {
            return Ok(());
        }
        Err(failed(
            format!(
                "the systemd user manager did not load {} (load state `{}`, from `{}`): {}",
                file.display(),
                prop("LoadState"),
                prop("FragmentPath"),
                prop("LoadError"),
            ),
            Some(
                "check that the user manager reads ~/.config/systemd/user (`systemctl --user show-environment`: HOME, XDG_CONFIG_HOME)",
            ),
        ))
    }
}

impl Supervisor for Systemd {
    /// Without lingering the user manager, and the app with it, stops when the
    /// deploy user's last session ends — this deploy's, moments from now.
    fn warning(&self) -> Option<String> {
        let user = user_name();
        (!linger_file(&user).exists()).then(|| {
            format!(
                "warning: lingering is off for `{user}`: the app stops when {user}'s last session ends and does not come back at boot; as root, run `sudo loginctl enable-linger {user}` once"
            )
        })
    }

    /// Writes the unit, reloads, enables and (re)starts it.
    fn start(&self, launch: &Launch<'_>) -> Result<()> {
        let logs = supervisor::fresh_logs(&self.logs, launch.name)?;
        let (exe, args) = supervisor::run_app_args(launch, &self.node_dir)?;
        let mut exec = vec![exe.into_os_string()];
        exec.extend(args);
        let text = unit_text(launch, &exec, &logs)?;
        let unit = unit_name(launch.name);
        std::fs::create_dir_all(&self.units).map_err(|err| {
            failed(
                format!("cannot create {}: {err}", self.units.display()),
                None,
            )
        })?;
        store::write_atomically(&self.unit_file(&unit), text.as_bytes(), 0o644)?;
        self.systemctl(&["daemon-reload"], "daemon-reload")?;
        self.check_loaded(&unit)?;
        self.systemctl(&["enable", "--quiet", &unit], &format!("enable {unit}"))?;
        self.systemctl(&["restart", &unit], &format!("restart {unit}"))
    }

    /// Stops and disables the unit, and removes its file.
    fn delete(&self, name: &str) -> Result<()> {
        let unit = unit_name(name);
        let file = self.unit_file(&unit);
        let props = self.manager.show(&unit, "LoadState,ActiveState")?;
        let prop = |key: &str| props.get(key).map_or("", String::as_str);
        if !matches!(prop("ActiveState"), "inactive" | "failed" | "") {
            self.systemctl(&["stop", &unit], &format!("stop {unit}"))?;
        }
        if prop("LoadState") != "not-found" {
            // Forget a failed state so that the name can be reused cleanly.
            let _ = self
                .manager
                .systemctl(&["reset-failed", &unit], "reset-failed");
        }
        if !file.exists() {
            return Ok(());
        }
        self.systemctl(&["disable", "--quiet", &unit], &format!("disable {unit}"))?;
        std::fs::remove_file(&file)
            .map_err(|err| failed(format!("cannot remove {}: {err}", file.display()), None))?;
        self.systemctl(&["daemon-reload"], "daemon-reload")
    }

    /// Nothing to do: units are enabled when started and disabled when deleted.
    fn save(&self) -> Result<()> {
        Ok(())
    }

    fn dead(&self, name: &str) -> Option<String> {
        let props = self
            .manager
            .show(&unit_name(name), "ActiveState,SubState,NRestarts,Result")
            .ok()?;
        let prop = |key: &str| props.get(key).map_or("", String::as_str);
        let restarts: u64 = prop("NRestarts").parse().unwrap_or(0);
        match prop("ActiveState") {
            _ if restarts > 0 => Some(format!(
                "the process exited and was restarted {restarts} time(s)"
            )),
            "active" | "activating" | "reloading" => None,
            state => Some(format!(
                "the unit is {state} ({}, result {})",
                prop("SubState"),
                prop("Result")
            )),
        }
    }

    fn log_tail(&self, name: &str, lines: usize) -> String {
        supervisor::log_tail(&self.logs, name, lines)
    }
}

/// The unit of process `name`: `dropship-<name>.service`.
pub fn unit_name(name: &str) -> String {
    format!("dropship-{name}.service")
}

/// `$XDG_CONFIG_HOME/systemd/user`, else `~/.config/systemd/user`: where the user manager reads units.
fn units_dir() -> Result<PathBuf> {
    let absolute = |key: &str| {
        std::env::var_os(key)
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute())
    };
    absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".config")))
        .map(|config| config.join("systemd/user"))
        .ok_or_else(|| {
            failed(
                "neither HOME nor XDG_CONFIG_HOME is set: nowhere to put systemd user units".into(),
                Some("log in as a user with a home directory"),
            )
        })
}

/// The unit file that runs `exec` (the agent's `run-app`) for `launch`.
fn unit_text(
    launch: &Launch<'_>,
    exec: &[std::ffi::OsString],
    logs: &[PathBuf; 2],
) -> Result<String> {
    let dir = unit_value(launch.dir.as_os_str())?;
    let exec: Vec<String> = exec
        .iter()
        .map(|arg| unit_value(arg).map(|arg| quote(&arg)))
        .collect::<Result<_>>()?;
    let [out, err] = logs;
    Ok(format!(
        "# Written by dropship on every start of `{name}`; changes are overwritten.\n\
         # The runtime env is read from shared/.env by `run-app`, never written here.\n\
         [Unit]\n\
         Description=dropship: {name} from {dir}\n\
         StartLimitIntervalSec=60\n\
         StartLimitBurst=5\n\
         \n\
         [Service]\n\
         Type=exec\n\
         WorkingDirectory={dir}\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=1\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec={STOP_TIMEOUT_SECS}\n\
         StandardOutput=append:{out}\n\
         StandardError=append:{err}\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        name = launch.name,
        exec = exec.join(" "),
        out = unit_value(out.as_os_str())?,
        err = unit_value(err.as_os_str())?,
    ))
}

/// `value` for a unit file: UTF-8 without control characters, `%` escaped (specifiers).
fn unit_value(value: &OsStr) -> Result<String> {
    let text = std::str::from_utf8(value.as_bytes())
        .ok()
        .filter(|text| !text.chars().any(char::is_control))
        .ok_or_else(|| {
            failed(
                format!(
                    "`{}` cannot go into a systemd unit (not UTF-8, or a control character)",
                    value.to_string_lossy().escape_debug()
                ),
                Some("use a `remote-path` and `start` without control characters"),
            )
        })?;
    Ok(text.replace('%', "%%"))
}

/// One `ExecStart=` argument: double-quoted, with `\`, `"` and `$` escaped.
fn quote(arg: &str) -> String {
    let escaped = arg
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch<'a>(dir: &'a Path, env: &'a Path) -> Launch<'a> {
        Launch {
            name: "www-3001",
            dir,
            env_file: env,
            port: 3001,
            start: "node server.js --greet \"$USER\" 100%",
        }
    }

    #[test]
    fn the_unit_quotes_every_argument_and_escapes_specifiers_and_variables() {
        let dir = Path::new("/srv/my site/releases/r1");
        let env = Path::new("/srv/my site/shared/.env");
        let exec = ["/srv/bin/dropship", "run-app", "--", launch(dir, env).start]
            .map(std::ffi::OsString::from);
        let logs = [
            PathBuf::from("/l/www.out.log"),
            PathBuf::from("/l/www.err.log"),
        ];
        let text = unit_text(&launch(dir, env), &exec, &logs).unwrap();
        assert!(
            text.contains("WorkingDirectory=/srv/my site/releases/r1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ExecStart="/srv/bin/dropship" "run-app" "--" "node server.js --greet \"$$USER\" 100%%""#
            ),
            "{text}"
        );
        assert!(
            text.contains("StandardOutput=append:/l/www.out.log\n"),
            "{text}"
        );
        assert!(text.contains("TimeoutStopSec=5\n"), "{text}");
        assert!(text.contains("WantedBy=default.target\n"), "{text}");
    }

    #[test]
    fn a_control_character_is_refused() {
        let dir = Path::new("/srv/www/releases/r1\nExecStartPre=/bin/evil");
        let env = Path::new("/srv/www/shared/.env");
        let logs = [PathBuf::from("/l/o"), PathBuf::from("/l/e")];
        let err = unit_text(&launch(dir, env), &[], &logs).unwrap_err();
        assert!(
            err.to_string().contains("cannot go into a systemd unit"),
            "{err}"
        );
    }
}
