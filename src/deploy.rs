//! The client's orchestration of a deploy: build, package once, stage on every
//! host, then switch them all — or, if any host fails, leave every host on what
//! it served before.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::inputs::{Deploy, Server};
use crate::package::{self, Release};
use crate::protocol::{Command, DeployRequest, Event, Request};
use crate::report::{Outputs, mb};
use crate::transport::{self, AgentBinary, AgentConn, Host, Opened};

/// Seconds of client silence after which an agent gives up.
const IDLE_TIMEOUT_SECS: u64 = 300;

/// Runs `deploy` and returns its outputs.
pub fn deploy(inputs: &Deploy) -> Result<Outputs> {
    let started = Instant::now();
    if let Some(command) = &inputs.build {
        crate::build::run(command, &inputs.source.working_directory)?;
    }
    let release = package::assemble(&inputs.source)?;
    tracing::info!(
        "package: {} — {} files, {}, server.js in `{}`",
        release.description,
        release.manifest.file_count(),
        mb(release.manifest.total_bytes()),
        release.server_dir
    );
    let server = &inputs.server;
    let agent = AgentBinary::default();
    let request = Request::Deploy(DeployRequest {
        target: server.target(),
        release: inputs.release.clone(),
        manifest: release.manifest.clone(),
        shared: inputs.shared.clone(),
        keep_releases: inputs.keep_releases,
        idle_timeout_secs: IDLE_TIMEOUT_SECS,
        server_dir: release.server_dir.clone(),
        run: inputs.run.clone(),
    });
    let mut outputs = Outputs::new(&inputs.release, &server.remote_path, &server.hosts);
    let mut staged = Vec::new();
    for host in &server.hosts {
        match stage(host, server, &agent, &request, &release, &mut outputs) {
            Ok(Some(conn)) => staged.push(conn),
            Ok(None) => {}
            Err(err) => {
                abort(staged);
                return Err(err);
            }
        }
    }
    if !server.dry_run {
        switch_all(staged, &mut outputs)?;
    }
    outputs.duration_ms = started.elapsed().as_millis();
    Ok(outputs)
}

/// Starts the agent on `host`; `None` in a dry run on a host without the agent.
pub fn connect(host: &Host, server: &Server, agent: &AgentBinary) -> Result<Option<AgentConn>> {
    match transport::open(
        host,
        &server.credentials,
        agent,
        &server.remote_path,
        server.dry_run,
    )? {
        Opened::Ready(conn) => Ok(Some(conn)),
        Opened::AgentMissing { upload_bytes } => {
            tracing::info!(
                "{host}: dry run: the agent is not installed there yet; a deploy would upload it ({})",
                mb(upload_bytes)
            );
            Ok(None)
        }
    }
}

/// The next event that is not news: lock waits and activation steps are logged on the way.
pub fn wait_ready(conn: &mut AgentConn) -> Result<Event> {
    loop {
        match conn.event()? {
            Event::Waiting {
                holder,
                waited_secs,
            } => {
                tracing::info!(
                    "{}: waiting for another deploy to finish ({holder}; {waited_secs} s so far)",
                    conn.host()
                );
            }
            Event::Progress { message } => tracing::info!("{}: {message}", conn.host()),
            other => return Ok(other),
        }
    }
}

fn stage(
    host: &Host,
    server: &Server,
    agent: &AgentBinary,
    request: &Request,
    release: &Release,
    outputs: &mut Outputs,
) -> Result<Option<AgentConn>> {
    let Some(mut conn) = connect(host, server, agent)? else {
        return Ok(None);
    };
    conn.send(request)?;
    match wait_ready(&mut conn)? {
        Event::Ready { live, free_bytes } => {
            tracing::info!(
                "{host}: ready (live: {}, {} free)",
                live.as_deref().unwrap_or("nothing yet"),
                mb(free_bytes)
            );
        }
        Event::Plan {
            live,
            would_prune,
            free_bytes,
        } => {
            tracing::info!(
                "{host}: dry run: would ship {} files ({}), switch `current` from {} to the new release, prune [{}]; {} free",
                release.manifest.file_count(),
                mb(release.manifest.total_bytes()),
                live.as_deref().unwrap_or("nothing"),
                would_prune.join(", "),
                mb(free_bytes)
            );
            finish(conn)?;
            return Ok(None);
        }
        other => return Err(conn.unexpected(&other)),
    }
    let started = Instant::now();
    let compressed = conn.stream(release)?;
    match conn.event()? {
        Event::Staged { files, .. } => {
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                "{host}: staged {files} files: {} sent in {secs:.2} s ({:.1} MB/s)",
                mb(compressed),
                compressed as f64 / 1e6 / secs.max(1e-3)
            );
        }
        other => return Err(conn.unexpected(&other)),
    }
    outputs.artifact_bytes = compressed;
    Ok(Some(conn))
}

/// Switches every staged host; if one fails, puts the switched ones back.
fn switch_all(mut staged: Vec<AgentConn>, outputs: &mut Outputs) -> Result<()> {
    for i in 0..staged.len() {
        let result = staged[i]
            .send(&Command::Activate)
            .and_then(|()| wait_ready(&mut staged[i]));
        let failure = match result {
            Ok(Event::Activated { .. }) => continue,
            Ok(other) => staged[i].unexpected(&other),
            Err(err) => err,
        };
        let rest = staged.split_off(i);
        for mut conn in staged {
            revert(&mut conn);
            outputs.bytes_sent += conn.bytes_sent();
        }
        abort(rest);
        return Err(failure);
    }
    for mut conn in staged {
        conn.send(&Command::Commit)?;
        match wait_ready(&mut conn)? {
            Event::Done {
                pruned,
                peak_rss_bytes,
            } => {
                tracing::info!(
                    "{}: live: {}{}",
                    conn.host(),
                    outputs.release,
                    pruned_note(&pruned)
                );
                outputs.agent_peak_rss_bytes = outputs.agent_peak_rss_bytes.max(peak_rss_bytes);
            }
            other => return Err(conn.unexpected(&other)),
        }
        outputs.bytes_sent += conn.bytes_sent();
        finish(conn)?;
    }
    Ok(())
}

fn pruned_note(pruned: &[String]) -> String {
    if pruned.is_empty() {
        String::new()
    } else {
        format!(" (pruned {})", pruned.join(", "))
    }
}

fn revert(conn: &mut AgentConn) {
    let result = conn.send(&Command::Revert).and_then(|()| wait_ready(conn));
    match result {
        Ok(Event::Reverted { live }) => {
            tracing::warn!(
                "{}: put back {}",
                conn.host(),
                live.as_deref().unwrap_or("(nothing was live)")
            );
        }
        Ok(other) => tracing::warn!(
            "{}: unexpected answer while reverting: {other:?}",
            conn.host()
        ),
        Err(err) => tracing::warn!("{}: reverting failed: {err}", conn.host()),
    }
}

/// Ends conversations early: each agent discards what it staged.
fn abort(conns: Vec<AgentConn>) {
    for conn in conns {
        conn.finish();
    }
}

/// Ends a conversation that went well; the agent must exit cleanly.
pub fn finish(conn: AgentConn) -> Result<()> {
    let host = conn.host().to_owned();
    match conn.finish() {
        Some(0) => Ok(()),
        status => Err(Error::AgentDied {
            host,
            status: format!("exit status {status:?} after finishing"),
            stderr: String::new(),
        }),
    }
}
