//! Making a release live, by strategy. On any failure what was live keeps
//! serving: `restart` puts the previous release back and starts it again;
//! `blue-green` never sends traffic to a release that failed its health check.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::health::{self, Probe};
use super::pm2::Pm2;
use super::store::{self, Store, Switch};
use super::supervisor::{Launch, Supervisor};
use super::systemd::Systemd;
use super::tools;
use crate::error::{Error, Result};
use crate::protocol::{Failure, FailureKind, ProcessManager, RunSpec, Strategy};

/// How long in-flight requests get to finish on the old release.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the app is asked whether it is healthy.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Starts, checks and switches releases for one app.
pub struct Activator<'a> {
    store: &'a Store,
    run: &'a RunSpec,
    supervisor: Option<Box<dyn Supervisor>>,
}

impl<'a> Activator<'a> {
    /// Finds the process manager now, so that a missing Node or PM2, or an
    /// unreachable systemd user manager, fails before anything changes.
    pub fn new(store: &'a Store, run: &'a RunSpec) -> Result<Activator<'a>> {
        let supervisor: Option<Box<dyn Supervisor>> = match run.process_manager {
            ProcessManager::Pm2 => Some(Box::new(Pm2::new(tools::find()?, store.logs_dir()))),
            ProcessManager::Systemd => Some(Box::new(Systemd::connect(
                tools::find_node()?,
                store.logs_dir(),
            )?)),
            ProcessManager::None => None,
        };
        Ok(Activator {
            store,
            run,
            supervisor,
        })
    }

    /// Makes `release` live while `previous` is. `progress` hears about each step.
    ///
    /// An error means nothing moved: traffic and `current` stay on `previous`.
    /// Once they moved, the switch is finished and what fails after becomes a warning.
    pub fn activate(
        &self,
        release: &str,
        previous: Option<&str>,
        progress: &mut dyn FnMut(String),
    ) -> Result<()> {
        let result = match (self.supervisor.as_deref(), self.run.strategy) {
            (None, _) => self.store.switch(release),
            (Some(pm), Strategy::Restart) => self.restart(pm, release, previous, progress),
            (Some(pm), Strategy::BlueGreen) => self.blue_green(pm, release, progress),
        };
        if let Some(warning) = self.supervisor.as_deref().and_then(|pm| pm.warning()) {
            progress(warning);
        }
        result
    }

    /// Stops whatever runs `release` (used when a first deploy is reverted).
    pub fn stop_all(&self) -> Result<()> {
        let Some(pm) = self.supervisor.as_deref() else {
            return Ok(());
        };
        pm.delete(&self.run.app)?;
        for port in &self.run.ports {
            pm.delete(&format!("{}-{port}", self.run.app))?;
        }
        self.store.update_state(|state| state.live_port = None)?;
        pm.save()
    }

    /// Finishes a switch an earlier agent left half-done (see [`Switch`]): a
    /// release that was healthy takes over (upstream, `current`, live port, old
    /// process); with `restart` before that, the release `current` names starts again.
    pub fn finish_interrupted(
        &self,
        switch: &Switch,
        progress: &mut dyn FnMut(String),
    ) -> Result<()> {
        progress(format!(
            "an earlier deploy left its switch to {} unfinished; finishing it",
            switch.release
        ));
        if !self.store.has_release(&switch.release) {
            progress(format!("{} is gone; nothing to finish", switch.release));
            return self.store.mark_switch(None);
        }
        let Some(pm) = self.supervisor.as_deref() else {
            return self.store.switch(&switch.release);
        };
        if !switch.healthy {
            // `restart` died before its release was healthy: what `current` names runs again.
            let back = match self.store.live() {
                Some(live) => self.activate(&live, None, progress),
                None => self.stop_all(),
            };
            return back.and_then(|()| self.store.mark_switch(None));
        }
        if self.run.strategy == Strategy::BlueGreen {
            self.switch_upstream(switch.port)?;
        }
        self.store.switch(&switch.release)?;
        self.finish(pm, switch, progress);
        Ok(())
    }

    /// Records that `release`, on `port`, is about to take over.
    fn mark(
        &self,
        release: &str,
        port: u16,
        old_port: Option<u16>,
        healthy: bool,
    ) -> Result<Switch> {
        let switch = Switch {
            release: release.to_owned(),
            port,
            old_port,
            healthy,
            run: self.run.clone(),
        };
        self.store.mark_switch(Some(&switch))?;
        Ok(switch)
    }

    /// The steps after traffic and `current` moved to `switch.release`: none
    /// undoes the switch, so a failure is a warning. The mark stays when the
    /// state could not be written, so that the next agent finishes the switch.
    fn finish(&self, pm: &dyn Supervisor, switch: &Switch, progress: &mut dyn FnMut(String)) {
        let release = &switch.release;
        let mut problems = Vec::new();
        if self.run.strategy == Strategy::BlueGreen {
            let port = switch.port;
            if let Err(err) = self
                .store
                .update_state(|state| state.live_port = Some(port))
            {
                problems.push((
                    "recording its port failed; the next deploy finishes the switch",
                    err,
                ));
            }
        }
        let finished = problems.is_empty();
        if let Some(old) = switch.old_port.filter(|old| *old != switch.port) {
            let took = drain(old);
            progress(format!(
                "port {old} drained in {:.1} s; stopping the old release",
                took.as_secs_f64()
            ));
            if let Err(err) = pm.delete(&format!("{}-{old}", self.run.app)) {
                problems.push((
                    "stopping the old release failed; the next deploy stops it",
                    err,
                ));
            }
        }
        if let Err(err) = pm.save() {
            problems.push((
                "`pm2 save` failed: PM2 will not bring it back after a reboot",
                err,
            ));
        }
        if finished && let Err(err) = self.store.mark_switch(None) {
            problems.push(("clearing the switch mark failed", err));
        }
        for (step, err) in problems {
            progress(format!("warning: {release} is live, but {step}: {err}"));
        }
    }

    /// Stops the old process, starts the new release on the same port, and
    /// switches `current` once it is healthy; on failure starts the previous one again.
    fn restart(
        &self,
        pm: &dyn Supervisor,
        release: &str,
        previous: Option<&str>,
        progress: &mut dyn FnMut(String),
    ) -> Result<()> {
        let name = &self.run.app;
        let port = self.run.ports[0];
        self.mark(release, port, None, false)?;
        let switched = pm
            .delete(name)
            .and_then(|()| check_port_free(port))
            .and_then(|()| self.start_checked(pm, name, release, port, progress))
            .and_then(|()| self.mark(release, port, None, true))
            .and_then(|switch| self.store.switch(release).map(|()| switch));
        let failure = match switched {
            Ok(switch) => {
                self.finish(pm, &switch, progress);
                return Ok(());
            }
            Err(failure) => failure,
        };
        let _ = pm.delete(name);
        if let Some(previous) = previous {
            progress(format!("putting {previous} back"));
            if let Err(again) = self.start_checked(pm, name, previous, port, progress) {
                progress(format!(
                    "the previous release did not come back either: {again}"
                ));
            }
        }
        let _ = self.store.mark_switch(None);
        let _ = pm.save();
        Err(failure)
    }

    fn blue_green(
        &self,
        pm: &dyn Supervisor,
        release: &str,
        progress: &mut dyn FnMut(String),
    ) -> Result<()> {
        let app = &self.run.app;
        let live_port = self.store.state().live_port;
        let port = self
            .run
            .ports
            .iter()
            .copied()
            .find(|p| Some(*p) != live_port)
            .unwrap_or(self.run.ports[0]);
        let name = format!("{app}-{port}");
        pm.delete(&name)?;
        check_port_free(port)?;
        let switch = self
            .start_checked(pm, &name, release, port, progress)
            .and_then(|()| self.mark(release, port, live_port, true));
        let switch = match switch.and_then(|switch| self.switch_upstream(port).map(|()| switch)) {
            Ok(switch) => switch,
            Err(failure) => {
                let _ = pm.delete(&name);
                let _ = self.store.mark_switch(None);
                return Err(failure);
            }
        };
        progress(format!("nginx sends new requests to port {port}"));
        if let Err(failure) = self.store.switch(release) {
            return Err(self.put_upstream_back(pm, &name, live_port, failure));
        }
        self.finish(pm, &switch, progress);
        Ok(())
    }

    /// After `current` could not follow nginx to the new port: nginx goes back
    /// to `old` and the new process stops. If nginx cannot go back, the switch
    /// mark stays, and the next agent finishes the switch instead.
    fn put_upstream_back(
        &self,
        pm: &dyn Supervisor,
        name: &str,
        old: Option<u16>,
        failure: Error,
    ) -> Error {
        let back = match old {
            Some(old) => self.switch_upstream(old),
            None => Ok(()),
        };
        match back {
            Ok(()) => {
                let _ = pm.delete(name);
                let _ = self.store.mark_switch(None);
                failure
            }
            Err(again) => failed(
                format!("{failure}; putting nginx back failed too: {again}"),
                Some("the new release serves; the next deploy or rollback finishes the switch"),
            ),
        }
    }

    /// Starts `release` as process `name` on `port` and waits until it answers.
    fn start_checked(
        &self,
        pm: &dyn Supervisor,
        name: &str,
        release: &str,
        port: u16,
        progress: &mut dyn FnMut(String),
    ) -> Result<()> {
        progress(format!("starting {release} on port {port}"));
        let dir = self.store.app_dir(release);
        pm.start(&Launch {
            name,
            dir: &dir,
            env_file: &self.store.env_file(),
            port,
            start: &self.run.start,
        })?;
        let started = Instant::now();
        let mut last_status_check = Instant::now();
        let probe = || {
            if last_status_check.elapsed() >= Duration::from_secs(2) {
                last_status_check = Instant::now();
                if let Some(why) = pm.dead(name) {
                    return Probe::Dead(why);
                }
            }
            health::http_probe(port, &self.run.health_path)
        };
        let timeout = Duration::from_secs(self.run.health_timeout_secs);
        match health::wait_until_healthy(probe, timeout, PROBE_INTERVAL) {
            Ok(()) => {
                progress(format!(
                    "{release} is healthy on port {port} after {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                Ok(())
            }
            Err(reason) => Err(unhealthy(
                release,
                port,
                &reason,
                &pm.log_tail(name, 20),
                self.run,
            )),
        }
    }

    /// Points the nginx upstream at `port` and reloads nginx; on failure puts the old file back.
    fn switch_upstream(&self, port: u16) -> Result<()> {
        let path = Path::new(&self.run.nginx_upstream);
        let old = std::fs::read(path).ok();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|err| failed(format!("cannot create {}: {err}", dir.display()), None))?;
        }
        store::write_atomically(path, upstream_block(&self.run.app, port).as_bytes(), 0o644)?;
        let reloaded = reload_nginx(&self.run.nginx_reload);
        if reloaded.is_err() {
            match old {
                Some(bytes) => store::write_atomically(path, &bytes, 0o644)?,
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
            let _ = reload_nginx(&self.run.nginx_reload);
        }
        reloaded
    }
}

/// Whether `run` names the ports its strategy needs: a client of another
/// version, or a damaged `state.json`, may not.
pub fn check_ports(run: &RunSpec) -> std::result::Result<(), String> {
    let (strategy, wanted) = match run.strategy {
        Strategy::Restart => ("restart", 1),
        Strategy::BlueGreen => ("blue-green", 2),
    };
    let distinct: std::collections::BTreeSet<_> = run.ports.iter().collect();
    if run.process_manager == ProcessManager::None
        || (run.ports.len() == wanted && distinct.len() == wanted)
    {
        return Ok(());
    }
    let got = if run.ports.is_empty() {
        "none".to_owned()
    } else {
        let ports: Vec<String> = run.ports.iter().map(u16::to_string).collect();
        ports.join(",")
    };
    Err(format!(
        "the `{strategy}` strategy needs {wanted} distinct port(s), got {got}"
    ))
}

/// The nginx `upstream` block for the live port.
pub fn upstream_block(app: &str, port: u16) -> String {
    format!(
        "# Written by dropship: where {app}'s traffic goes. Do not edit.\nupstream {app} {{\n    server 127.0.0.1:{port};\n    keepalive 16;\n}}\n"
    )
}

fn reload_nginx(command: &str) -> Result<()> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|err| failed(format!("cannot run `{command}`: {err}"), None))?;
    if output.status.success() {
        return Ok(());
    }
    Err(failed(
        format!(
            "reloading nginx with `{command}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Some(
            "let the deploy user reload nginx without a password, e.g. `deploy ALL=(root) NOPASSWD: /usr/sbin/nginx -s reload` in /etc/sudoers.d/dropship, or set `nginx-reload`; nothing was switched",
        ),
    ))
}

/// Waits until no request is in flight on the old port: at least a second for
/// nginx's old workers to stop taking requests, then no connection for half a second.
fn drain(port: u16) -> Duration {
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let mut quiet_since: Option<Instant> = None;
    while started.elapsed() < DRAIN_TIMEOUT {
        if health::established_connections(port) == 0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_millis(500) {
                break;
            }
        } else {
            quiet_since = None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

fn check_port_free(port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
        return Err(failed(
            format!("port {port} is already taken by another process"),
            Some("stop whatever listens there (`ss -ltnp`), or choose other ports with `app-port`"),
        ));
    }
    Ok(())
}

fn unhealthy(release: &str, port: u16, reason: &str, logs: &str, run: &RunSpec) -> Error {
    let rule = "-".repeat(60);
    let logs = if logs.trim().is_empty() {
        "(the app wrote no log lines)"
    } else {
        logs.trim()
    };
    failed(
        format!(
            "release {release} did not become healthy on port {port} within {} s: {reason}\nlast log lines of the app:\n{rule}\n{logs}\n{rule}",
            run.health_timeout_secs
        ),
        Some(
            "fix the app (the log above says why), check `start` and `health-path`, or raise `health-timeout`; the previous release keeps serving",
        ),
    )
}

fn failed(message: String, hint: Option<&str>) -> Error {
    Error::Agent(Failure::new(FailureKind::Failed, message, hint))
}
