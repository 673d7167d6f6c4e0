//! The agent: the same binary, started over SSH on the server as `dropship agent`.
//!
//! It reads one [`Request`] from stdin, does all the work on the server (lock,
//! receive, verify, switch, prune) and reports [`Event`]s on stdout. It knows
//! nothing about GitHub or SSH: only the protocol and the store.

mod activate;
mod assets;
mod caches;
mod doctor;
mod health;
mod idle;
mod parts;
mod platform;
mod pm2;
pub(crate) mod receive;
mod reuse;
mod selfcheck;
mod store;
mod supervisor;
mod systemd;
mod tools;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::{Error, ExitStatus, Result};
use crate::manifest;
use crate::protocol::{
    self, Command, DeployRequest, Event, Failure, FailureKind, PROTOCOL_VERSION, Platform, Request,
    RollbackRequest, Target,
};
use activate::Activator;
use idle::IdleReader;
use parts::PartListener;
pub use parts::relay as relay_part;
use selfcheck::SelfCheck;
pub use store::Store;

/// The longest request line accepted (a manifest of a few hundred thousand files).
const MAX_LINE: u64 = 256 << 20;

/// Silence allowed before the request arrives.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the agent on this process's stdin and stdout; returns the exit status.
pub fn run() -> ExitStatus {
    let mut session = Session {
        self_check: SelfCheck::start(),
        input: BufReader::with_capacity(256 * 1024, IdleReader::stdin(FIRST_REQUEST_TIMEOUT)),
        output: std::io::stdout().lock(),
    };
    match session.serve() {
        Ok(()) => ExitStatus::Done,
        Err(err) => {
            let status = err.exit_status();
            let _ = session.emit(&Event::Failed(err.to_failure()));
            status
        }
    }
}

struct Session<W: Write> {
    self_check: SelfCheck,
    input: BufReader<IdleReader>,
    output: W,
}

impl<W: Write> Session<W> {
    fn emit(&mut self, event: &Event) -> Result<()> {
        let line = serde_json::to_string(event).unwrap_or_default();
        writeln!(self.output, "{line}")
            .and_then(|()| self.output.flush())
            .map_err(|err| failed(format!("cannot write to the client: {err}")))
    }

    /// Reads one JSON line; `None` when the client closed the stream.
    fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let mut line = Vec::new();
        Read::take(&mut self.input, MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|err| failed(format!("cannot read from the client: {err}")))?;
        if line.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|err| bad_input(format!("malformed message from the client: {err}")))
    }

    /// Reads the request: a JSON line, or a `zstd <length>` line followed by a
    /// zstd frame holding the JSON (what the client sends).
    fn read_request(&mut self) -> Result<Option<Request>> {
        let mut line = Vec::new();
        Read::take(&mut self.input, 64)
            .read_until(b'\n', &mut line)
            .map_err(|err| failed(format!("cannot read from the client: {err}")))?;
        let Some(length) = line.strip_prefix(b"zstd ") else {
            let mut rest = Vec::new();
            if !line.ends_with(b"\n") {
                Read::take(&mut self.input, MAX_LINE)
                    .read_until(b'\n', &mut rest)
                    .map_err(|err| failed(format!("cannot read from the client: {err}")))?;
            }
            line.extend_from_slice(&rest);
            if line.is_empty() {
                return Ok(None);
            }
            return serde_json::from_slice(&line)
                .map(Some)
                .map_err(|err| bad_input(format!("malformed request from the client: {err}")));
        };
        let length: u64 = std::str::from_utf8(length)
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .filter(|n| *n <= MAX_LINE)
            .ok_or_else(|| bad_input("malformed request frame from the client".into()))?;
        let mut frame = Vec::new();
        Read::take(&mut self.input, length)
            .read_to_end(&mut frame)
            .map_err(|err| failed(format!("cannot read from the client: {err}")))?;
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(&frame[..])
            .and_then(|decoder| Read::take(decoder, MAX_LINE).read_to_end(&mut json))
            .map_err(|err| bad_input(format!("malformed request frame from the client: {err}")))?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|err| bad_input(format!("malformed request from the client: {err}")))
    }

    fn serve(&mut self) -> Result<()> {
        self.emit(&Event::Hello {
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: PROTOCOL_VERSION,
        })?;
        let Some(request) = self.read_request()? else {
            return Ok(());
        };
        match request {
            Request::Deploy(request) => self.deploy(&request),
            Request::Rollback(request) => self.rollback(&request),
            Request::Releases(target) => self.releases(&target),
            Request::Doctor(request) => {
                let store = self.open(&request.target)?;
                let checks = doctor::checks(&store, &request.target.root, &request.run);
                self.emit(&Event::Checks { checks })?;
                self.done(Vec::new())
            }
        }
    }

    fn open(&mut self, target: &Target) -> Result<Store> {
        if target.protocol != PROTOCOL_VERSION {
            return Err(bad_input(format!(
                "the client speaks protocol {}, this agent {PROTOCOL_VERSION}",
                target.protocol
            )));
        }
        Store::new(&target.root)
    }

    fn lock(&mut self, store: &Store, target: &Target, what: &str) -> Result<store::Lock> {
        store.create_layout()?;
        let timeout = Duration::from_secs(target.lock_timeout_secs);
        let holder = format!("{} ({what})", target.by);
        store.lock(timeout, &holder, |holder, waited| {
            self.emit(&Event::Waiting {
                holder: holder.to_owned(),
                waited_secs: waited.as_secs(),
            })
        })
    }

    fn deploy(&mut self, request: &DeployRequest) -> Result<()> {
        let store = self.open(&request.target)?;
        check_deploy_request(request)?;
        let platform = platform::Detecting::start();
        if request.target.dry_run {
            return self.plan(&store, request, platform.finish());
        }
        let activator = Activator::new(&store, &request.run)?;
        let _lock = self.lock(
            &store,
            &request.target,
            &format!("deploying {}", request.release),
        )?;
        self.recover(&store, &request.target.by)?;
        if store.has_release(&request.release) {
            return Err(bad_input(format!("release `{}` already exists on this host", request.release))
                .with_hint("deploy with another `release` id, or roll back to it with `dropship rollback --to`"));
        }
        let reuse::Found {
            sources: mut reuse,
            changed,
        } = reuse::find(&store, &request.manifest)?;
        // Releases deployed before shipped `shared` paths were handled list a file
        // where they hold a link: what the release ships there is always sent.
        reuse.retain(|&i, _| !is_shared(&request.manifest.entries[i].path, &request.shared));
        if let Some(message) = reuse::changed_note(&changed) {
            self.emit(&Event::Progress { message })?;
        }
        let reused_bytes: u64 = reuse
            .keys()
            .filter_map(|&i| match &request.manifest.entries[i].kind {
                manifest::Kind::File { size, .. } => Some(*size),
                _ => None,
            })
            .sum();
        check_free_space(&store, request.manifest.total_bytes() - reused_bytes)?;
        let send = (!reuse.is_empty()).then(|| {
            let files = request.manifest.entries.iter().enumerate();
            files
                .filter(|(i, e)| {
                    matches!(e.kind, manifest::Kind::File { .. }) && !reuse.contains_key(i)
                })
                .filter_map(|(i, _)| u32::try_from(i).ok())
                .collect()
        });
        let parts = PartListener::bind(&store.dot());
        self.emit(&Event::Ready {
            send,
            free_bytes: store.free_bytes(),
            live: store.live(),
            join: parts.as_ref().map(PartListener::join),
            platform: Some(platform.finish()),
        })?;
        self.input
            .get_mut()
            .set_timeout(Duration::from_secs(request.idle_timeout_secs));
        let staging = store.staging_dir(&request.release);
        let result = self
            .stage(&store, request, (&staging, parts.as_ref()), &reuse)
            .and_then(|kept| self.activate(&store, &activator, request, &staging, kept));
        let _ = store::remove_tree(&staging);
        result
    }

    /// Receives, verifies and syncs the release in `staging`, with the caches
    /// kept from the live release (what was kept is told at activation). It moves
    /// to `releases/` only on `activate`, so a deploy that dies before leaves no release.
    fn stage(
        &mut self,
        store: &Store,
        request: &DeployRequest,
        (staging, listener): (&Path, Option<&PartListener>),
        reuse: &std::collections::HashMap<usize, receive::Source>,
    ) -> Result<Option<String>> {
        let parts = match self.read::<Command>()? {
            Some(Command::Stream { parts }) if (1..=protocol::MAX_PARTS).contains(&parts) => parts,
            Some(other) => {
                return Err(bad_input(format!(
                    "expected the release stream, got {other:?}"
                )));
            }
            None => {
                return Err(failed(
                    "the client withdrew before sending the release; nothing was changed".into(),
                ));
            }
        };
        let more = (parts - 1) as usize;
        let idle = Duration::from_secs(request.idle_timeout_secs);
        let more_parts = |spawn: &mut dyn FnMut(receive::MorePart), given_up: &dyn Fn() -> bool| {
            match listener {
                _ if more == 0 => Ok(()),
                // Stop waiting for parts once the first failed or the client left.
                Some(listener) => {
                    listener.accept(more, idle, spawn, &|| given_up() || idle::stdin_closed())
                }
                None => Err(bad_input(format!(
                    "the client sent {parts} parts, but this host takes one"
                ))),
            }
        };
        let received = receive::receive(
            &mut self.input,
            more_parts,
            &request.manifest,
            staging,
            reuse,
        )?;
        store.link_shared(staging, &request.shared, &request.manifest)?;
        if let Some(message) = assets::carry(store, staging, request)? {
            self.emit(&Event::Progress { message })?;
        }
        let kept = caches::keep(store, request, staging);
        // Modes last: a read-only directory of the build must not keep out a shared link.
        receive::set_dir_modes(&request.manifest.with_shared(&request.shared), staging)?;
        store::sync_filesystem(staging)?;
        self.emit(&Event::Staged {
            files: received.files,
            reused: received.reused,
            bytes: received.bytes,
            path: staging.display().to_string(),
        })?;
        Ok(kept)
    }

    /// Activates on `activate`, keeps on `commit`; anything else (revert, end of
    /// input, silence) puts back what was live and removes the new release.
    fn activate(
        &mut self,
        store: &Store,
        activator: &Activator<'_>,
        request: &DeployRequest,
        staging: &Path,
        kept: Option<String>,
    ) -> Result<()> {
        let previous = store.live();
        if self.read::<Command>().ok().flatten() != Some(Command::Activate) {
            return Err(failed(
                "the client withdrew before activation; the release was discarded".into(),
            ));
        }
        self.self_check.verify()?;
        // Pending until committed: if this agent dies from here on, the next deploy
        // removes the release unless it is the live one.
        store.set_pending(Some(&request.release))?;
        store.commit_staging(
            staging,
            &request.release,
            &request.manifest.with_shared(&request.shared),
            &request.server_dir,
        )?;
        if let Some(message) = kept {
            self.progress()(message);
        }
        // The new runtime env goes in just before the new release starts, and back out if it fails.
        let activated = match &request.env {
            Some(text) => store.replace_env(&request.release, text).map(|()| {
                self.progress()("wrote the new runtime env to shared/.env".into());
            }),
            None => Ok(()),
        }
        .and_then(|()| {
            activator.activate(&request.release, previous.as_deref(), &mut self.progress())
        });
        if let Err(err) = activated {
            let problems = undo(store, &request.release);
            return Err(err.also(&problems));
        }
        let told = self.emit(&Event::Activated {
            release: request.release.clone(),
            previous: previous.clone(),
        });
        if told.is_err() || self.read::<Command>().ok().flatten() != Some(Command::Commit) {
            return self.revert(store, activator, request, previous);
        }
        self.commit(store, request, previous)
    }

    /// Puts back what was live before `request`'s release, on the client's word
    /// (or its silence), and removes the release unless it still serves.
    fn revert(
        &mut self,
        store: &Store,
        activator: &Activator<'_>,
        request: &DeployRequest,
        previous: Option<String>,
    ) -> Result<()> {
        let release = &request.release;
        // The previous release starts with the env it had.
        let mut problems: Vec<String> = put_env_back(store).into_iter().collect();
        let back = match &previous {
            Some(previous) => activator.activate(previous, Some(release), &mut self.progress()),
            None => activator.stop_all().and_then(|()| store.unset_live()),
        };
        problems.extend(discard_unless_serving(store, release));
        if let Err(err) = back {
            return Err(err.also(&problems));
        }
        for problem in problems {
            self.progress()(format!("warning: {problem}"));
        }
        let by = &request.target.by;
        if let Err(err) = store.log("revert", previous.as_deref(), Some(release), by) {
            self.progress()(format!("warning: {err}"));
        }
        self.emit(&Event::Reverted { live: previous })
    }

    /// Keeps the live new release: what fails from here on is a warning, as
    /// the release already serves.
    fn commit(
        &mut self,
        store: &Store,
        request: &DeployRequest,
        previous: Option<String>,
    ) -> Result<()> {
        let release = &request.release;
        let by = &request.target.by;
        let mut problems = Vec::new();
        let steps = [
            store.keep_env(),
            store.log("deploy", Some(release), previous.as_deref(), by),
            store.set_pending(None),
            store.update_state(|state| state.run = Some(request.run.clone())),
        ];
        problems.extend(steps.into_iter().filter_map(Result::err));
        let protect = [previous, Some(release.clone())];
        let pruned = store
            .prune(request.keep_releases, &protect)
            .unwrap_or_else(|err| {
                problems.push(err);
                Vec::new()
            });
        for err in problems {
            self.progress()(format!("warning: {release} is live, but {err}"));
        }
        self.done(pruned)
    }

    /// Finishes a switch a dead agent left half-done, then removes what it
    /// left that never went live (see [`Store::recover`]).
    fn recover(&mut self, store: &Store, by: &str) -> Result<()> {
        if let Some(switch) = store.interrupted_switch() {
            Activator::new(store, &switch.run)
                .and_then(|activator| activator.finish_interrupted(&switch, &mut self.progress()))
                .map_err(|err| {
                    err.also(&[format!(
                        "this was finishing the switch to {} that an earlier deploy left half-done",
                        switch.release
                    )])
                })?;
        }
        store.recover(by)
    }

    /// A progress callback that reports each activation step to the client.
    fn progress(&mut self) -> impl FnMut(String) + '_ {
        |message| {
            let _ = self.emit(&Event::Progress { message });
        }
    }

    fn plan(&mut self, store: &Store, request: &DeployRequest, platform: Platform) -> Result<()> {
        let live = store.live();
        let mut releases = store.releases()?;
        releases.push(protocol::ReleaseInfo {
            release: request.release.clone(),
            created: u64::MAX,
            files: 0,
            bytes: 0,
            live: false,
        });
        let would_prune = store::prunable(
            &releases,
            request.keep_releases,
            std::slice::from_ref(&live),
        );
        self.emit(&Event::Plan {
            live,
            would_prune,
            free_bytes: store.free_bytes(),
            platform: Some(platform),
        })?;
        self.done(Vec::new())
    }

    fn rollback(&mut self, request: &RollbackRequest) -> Result<()> {
        let store = self.open(&request.target)?;
        if let Some(to) = &request.to {
            protocol::check_release_id(to).map_err(bad_input)?;
        }
        let _lock = if request.target.dry_run {
            None
        } else {
            Some(self.lock(&store, &request.target, "rolling back")?)
        };
        if !request.target.dry_run {
            self.recover(&store, &request.target.by)?;
        }
        let live = store.live();
        let releases = store.releases()?;
        let to = match &request.to {
            Some(to) if releases.iter().any(|r| &r.release == to) => to.clone(),
            Some(to) => {
                let known: Vec<_> = releases.iter().map(|r| r.release.as_str()).collect();
                return Err(bad_input(format!(
                    "release `{to}` does not exist on this host (it has: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ))
                .with_hint("pick one from `dropship releases`"));
            }
            None => {
                let live_at = releases
                    .iter()
                    .position(|r| r.live)
                    .unwrap_or(releases.len());
                match live_at.checked_sub(1).and_then(|i| releases.get(i)) {
                    Some(info) => info.release.clone(),
                    None => {
                        return Err(bad_input(
                            "there is no earlier release to roll back to".into(),
                        )
                        .with_hint("`dropship releases` lists what the host has"));
                    }
                }
            }
        };
        if request.target.dry_run {
            self.emit(&Event::Plan {
                live,
                would_prune: Vec::new(),
                free_bytes: store.free_bytes(),
                platform: None,
            })?;
            return self.done(Vec::new());
        }
        let run = match store.state().run {
            Some(last) if !request.run_given => {
                activate::check_ports(&last).map_err(|problem| {
                    failed(format!("`{}` is damaged: {problem}", store.state_path().display()))
                        .with_hint("roll back with the run options given again (`--process-manager`, `--strategy`, `--app-port`): they replace what the file holds")
                })?;
                last
            }
            _ => request.run.clone(),
        };
        self.self_check.verify()?;
        Activator::new(&store, &run)?.activate(&to, live.as_deref(), &mut self.progress())?;
        store.update_state(|state| state.run = Some(run.clone()))?;
        store.log("rollback", Some(&to), live.as_deref(), &request.target.by)?;
        self.emit(&Event::Activated {
            release: to,
            previous: live,
        })?;
        self.done(Vec::new())
    }

    fn releases(&mut self, target: &Target) -> Result<()> {
        let store = self.open(target)?;
        let releases = store.releases()?;
        self.emit(&Event::Releases { releases })?;
        self.done(Vec::new())
    }

    fn done(&mut self, pruned: Vec<String>) -> Result<()> {
        self.emit(&Event::Done {
            pruned,
            peak_rss_bytes: peak_rss_bytes(),
        })
    }
}

fn check_deploy_request(request: &DeployRequest) -> Result<()> {
    protocol::check_release_id(&request.release).map_err(bad_input)?;
    request
        .manifest
        .validate()
        .map_err(|problem| bad_input(format!("refused the manifest: {problem}")))?;
    activate::check_ports(&request.run)
        .map_err(|problem| bad_input(format!("refused the run options: {problem}")))?;
    for path in &request.shared {
        manifest::check_relative_path(path.trim_end_matches('/'))
            .map_err(|problem| bad_input(format!("shared path: {problem}")))?;
    }
    Ok(())
}

/// Whether `path` is a `shared` path or lies under one.
fn is_shared(path: &str, shared: &[String]) -> bool {
    shared
        .iter()
        .any(|item| manifest::is_at_or_under(path, item.trim_end_matches('/')))
}

fn check_free_space(store: &Store, release_bytes: u64) -> Result<()> {
    // Room for the files, their directories and inodes, and a margin for the system.
    let needed = release_bytes + release_bytes / 10 + (16 << 20);
    let free = store.free_bytes();
    if free < needed {
        return Err(failed(format!(
            "not enough disk space: the release needs about {} MB, {} MB are free",
            needed >> 20,
            free >> 20
        ))
        .with_hint("free some space on the server or lower `keep-releases`; nothing was changed"));
    }
    Ok(())
}

/// The agent's own peak resident memory (`VmHWM`: per process image, unlike
/// `getrusage`, which also counts the parent's memory before `exec`).
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn bad_input(message: String) -> Error {
    Error::Agent(Failure::new(FailureKind::BadInput, message, None))
}

fn failed(message: String) -> Error {
    Error::Agent(Failure::new(FailureKind::Failed, message, None))
}

/// Puts the runtime env back and removes `release` after it failed to go live,
/// unless it serves after all; says what could not be done.
fn undo(store: &Store, release: &str) -> Vec<String> {
    put_env_back(store)
        .into_iter()
        .chain(discard_unless_serving(store, release))
        .collect()
}

/// Puts back the runtime env a failed deploy replaced; says so if it could not.
fn put_env_back(store: &Store) -> Option<String> {
    let err = store.put_env_back().err()?;
    Some(format!(
        "putting shared/.env back failed (the next deploy tries again): {err}"
    ))
}

/// Removes `release` unless `current` or a switch under way names it; says
/// what it could not do.
fn discard_unless_serving(store: &Store, release: &str) -> Option<String> {
    if store.serves(release) {
        return Some(format!("{release} serves after all, so it stays"));
    }
    let err = store.discard(release).err()?;
    Some(format!(
        "removing {release} failed (the next deploy tries again): {err}"
    ))
}

impl Error {
    /// Adds what else went wrong to an agent failure, after its own message.
    fn also(self, problems: &[String]) -> Error {
        match self {
            Error::Agent(mut failure) if !problems.is_empty() => {
                for problem in problems {
                    failure.message.push_str("\nalso: ");
                    failure.message.push_str(problem);
                }
                Error::Agent(failure)
            }
            other => other,
        }
    }

    /// Adds a hint to an agent failure.
    fn with_hint(self, hint: &str) -> Error {
        match self {
            Error::Agent(mut failure) => {
                failure.hint = Some(hint.into());
                Error::Agent(failure)
            }
            other => other,
        }
    }
}
