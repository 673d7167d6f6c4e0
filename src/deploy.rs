//! The client's orchestration of a deploy: build, package once, stage on every
//! host, then switch them all — or, if any host fails, leave every host on what
//! it served before. It fills [`Outputs`] as it goes, so that a failure still
//! has a summary.

use std::thread::ScopedJoinHandle;
use std::time::Instant;

use crate::error::{Error, ExitStatus, Result};
use crate::fleet::{Member, TargetGroups};
use crate::github;
use crate::inputs::{Deploy, Server};
use crate::package::{self, Release};
use crate::protocol::{Command, DeployRequest, Event, Platform, Request, Strategy};
use crate::report::{HostReport, Outputs, mb};
use crate::transport::{self, AgentBinary, AgentConn, Connection, Host, Opened};

/// Seconds of client silence after which an agent gives up.
const IDLE_TIMEOUT_SECS: u64 = 300;

/// Runs `deploy`, recording what happened in `outputs`.
pub fn deploy(inputs: &Deploy, outputs: &mut Outputs) -> Result<()> {
    let started = Instant::now();
    let result = run(inputs, outputs);
    outputs.duration_ms = started.elapsed().as_millis();
    result
}

fn run(inputs: &Deploy, outputs: &mut Outputs) -> Result<()> {
    let env = inputs.env.as_deref().unwrap_or_default();
    if let Some(command) = &inputs.build {
        let _group = github::Group::new("build");
        let started = Instant::now();
        crate::build::run(
            command,
            &inputs.source.working_directory,
            env,
            &inputs.release,
        )?;
        outputs.build_secs = started.elapsed().as_secs_f64();
    }
    let server = &inputs.server;
    let targets = match &server.fleet {
        Some(fleet) => {
            fleet.open_ingress(&server.hosts, &format!("deploy {}", inputs.release))?;
            fleet.target_groups(&server.hosts)?
        }
        None => None,
    };
    if targets.is_some()
        && inputs.run.strategy == Strategy::Restart
        && inputs.batch_size >= server.hosts.len()
        && server.hosts.len() > 1
    {
        tracing::warn!(
            "target-group with `strategy: restart` and `rollout: all-at-once`: every instance leaves the load balancer at once; `rollout: rolling` keeps the others serving"
        );
    }
    let agent = AgentBinary::default();
    // The first hosts log in while the release is packaged.
    let first = server
        .hosts
        .len()
        .min(inputs.batch_size.max(1))
        .min(inputs.max_parallel.max(1));
    std::thread::scope(|scope| {
        let early = server.hosts[..first]
            .iter()
            .map(|host| {
                let agent = &agent;
                Some(scope.spawn(move || timed_connect(host, server, agent)))
            })
            .collect();
        let release = package_release(inputs, outputs)?;
        let shipping = Shipping {
            agent: &agent,
            release: &release,
            targets: targets.as_ref(),
        };
        ship(inputs, outputs, &shipping, early)
    })
}

/// A connection that was started early, and how long it took.
type Early<'scope> = Option<ScopedJoinHandle<'scope, Result<(Connection, f64)>>>;

fn timed_connect(host: &Host, server: &Server, agent: &AgentBinary) -> Result<(Connection, f64)> {
    let started = Instant::now();
    let connection = transport::connect(host, &server.credentials, agent)?;
    Ok((connection, started.elapsed().as_secs_f64()))
}

fn package_release(inputs: &Deploy, outputs: &mut Outputs) -> Result<Release> {
    let _group = github::Group::new("package");
    let started = Instant::now();
    let release = package::assemble(&inputs.source)?;
    outputs.package_secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "package: {} — {} files, {}, server.js in `{}`",
        release.description,
        release.manifest.file_count(),
        mb(release.manifest.total_bytes()),
        release.server_dir
    );
    outputs.files = release.manifest.file_count();
    outputs.release_bytes = release.manifest.total_bytes();
    outputs.notes = release.shared_notes(&inputs.shared, inputs.env.as_deref());
    for note in &outputs.notes {
        tracing::info!("package: {note}");
    }
    Ok(release)
}

/// What `ship` takes to every host.
struct Shipping<'a> {
    agent: &'a AgentBinary,
    release: &'a Release,
    /// The load balancer's groups, with `target-group`.
    targets: Option<&'a TargetGroups>,
}

/// Stages the release on every host, batch by batch, and switches them.
fn ship(
    inputs: &Deploy,
    outputs: &mut Outputs,
    shipping: &Shipping<'_>,
    mut early: Vec<Early<'_>>,
) -> Result<()> {
    let &Shipping {
        agent,
        release,
        targets,
    } = shipping;
    let server = &inputs.server;
    let request = transport::encode_request(&Request::Deploy(DeployRequest {
        target: server.target(),
        release: inputs.release.clone(),
        manifest: release.manifest.clone(),
        shared: inputs.shared.clone(),
        keep_releases: inputs.keep_releases,
        keep_assets: inputs.keep_assets,
        idle_timeout_secs: IDLE_TIMEOUT_SECS,
        server_dir: release.server_dir.clone(),
        run: inputs.run.clone(),
        env: inputs.env.as_deref().map(crate::dotenv::render),
    }));
    // Activated hosts wait for `commit` until every batch is live: one failure
    // anywhere puts every host back on what it served before.
    let mut activated: Vec<(usize, AgentConn)> = Vec::new();
    // With one host nothing can ask it to revert: `activate` and `commit` follow the
    // stream at once, saving two round trips. Not with a load balancer: the host
    // leaves it before its switch, and must be healthy there before it commits.
    let pipeline = server.hosts.len() == 1 && !server.dry_run && targets.is_none();
    let batch_size = inputs.batch_size.max(1);
    for (number, batch) in server.hosts.chunks(batch_size).enumerate() {
        let hosts = batch
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let early = early
                    .get_mut(number * batch_size + i)
                    .and_then(Option::take);
                (host, early)
            })
            .collect();
        let shipment = Shipment {
            server,
            agent,
            request: &request,
            pipeline,
            release,
        };
        let staged = stage_batch(hosts, inputs, &shipment, outputs);
        let staged = match staged {
            Ok(staged) => staged,
            Err(err) => return Err(put_back(activated, outputs, err)),
        };
        if server.dry_run {
            continue;
        }
        let members: Vec<Member<'_>> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, host)| Some((number * batch_size + i, host, host.instance()?)))
            .collect();
        let restart = inputs.run.strategy == Strategy::Restart;
        if let (Some(groups), true) = (targets, restart) {
            let _group = github::Group::new("drain");
            match groups.drain(&members) {
                Ok(steps) => note_steps(outputs, steps),
                Err(err) => {
                    abort(staged.into_iter().map(|(_, conn)| conn).collect());
                    return Err(put_back(activated, outputs, err));
                }
            }
        }
        let _group = github::Group::new("switch");
        let results = parallel(staged, inputs.max_parallel, |(index, mut conn)| {
            let mut steps = Vec::new();
            let started = Instant::now();
            let sent = if pipeline {
                Ok(())
            } else {
                conn.send(&Command::Activate)
            };
            let result = sent.and_then(|()| wait_ready(&mut conn, &mut steps));
            (index, conn, steps, started.elapsed().as_secs_f64(), result)
        });
        let mut failure = None;
        for (index, conn, steps, secs, result) in results {
            let report = &mut outputs.per_host[index];
            report.steps.extend(steps);
            report.activate_secs = secs;
            match result {
                Ok(Event::Activated { .. }) => activated.push((index, conn)),
                Ok(other) => failure = failure.or(Some((index, conn.unexpected(&other), conn))),
                Err(err) => failure = failure.or(Some((index, died_switching(err), conn))),
            }
        }
        let rejoined = match targets {
            Some(groups) if restart => groups.register_again(&members),
            _ => Ok(()),
        };
        if let Some((index, err, conn)) = failure {
            outputs.per_host[index].result = "failed".into();
            abort(vec![conn]);
            return Err(put_back(activated, outputs, err));
        }
        if let Some(groups) = targets {
            let gated = rejoined.map_err(|err| (members.first().map_or(0, |m| m.0), err));
            let timeout = std::time::Duration::from_secs(inputs.run.health_timeout_secs);
            match gated.and_then(|()| groups.wait_healthy(&members, timeout)) {
                Ok(steps) => note_steps(outputs, steps),
                Err((index, err)) => {
                    outputs.per_host[index].result = "failed".into();
                    return Err(put_back(activated, outputs, err));
                }
            }
        }
    }
    commit_all(activated, outputs, pipeline)
}

/// Keeps each host's load-balancer step (logged as it happened) for the job summary.
fn note_steps(outputs: &mut Outputs, steps: Vec<(usize, String)>) {
    for (index, step) in steps {
        outputs.per_host[index].steps.push(step);
    }
}

/// What every host of a deploy is sent, and how.
struct Shipment<'a> {
    server: &'a Server,
    agent: &'a AgentBinary,
    /// The encoded request (see [`transport::encode_request`]).
    request: &'a [u8],
    /// Whether `activate` and `commit` follow the stream at once (one host).
    pipeline: bool,
    release: &'a Release,
}

/// Stages one batch of hosts, `max-parallel` at a time; on any failure the
/// others discard what they staged.
fn stage_batch(
    batch: Vec<(&Host, Early<'_>)>,
    inputs: &Deploy,
    shipment: &Shipment<'_>,
    outputs: &mut Outputs,
) -> Result<Vec<(usize, AgentConn)>> {
    let results = parallel(batch, inputs.max_parallel, |(host, early)| {
        let _group = github::Group::new(&format!("upload to {host}"));
        let mut report = HostReport {
            host: host.to_string(),
            ..HostReport::default()
        };
        let result = stage((host, early), shipment, &mut report);
        report.result = match &result {
            Ok(Some(_)) => "staged".into(),
            Ok(None) => "dry run".into(),
            Err(_) => "failed".into(),
        };
        (report, result)
    });
    let mut staged = Vec::new();
    let mut failure = None;
    for (report, result) in results {
        let index = outputs.per_host.len();
        outputs.bytes_sent += report.bytes_sent;
        outputs.per_host.push(report);
        match result {
            Ok(Some((conn, compressed))) => {
                outputs.artifact_bytes = compressed;
                staged.push((index, conn));
            }
            Ok(None) => {}
            Err(err) => failure = failure.or(Some(err)),
        }
    }
    match failure {
        Some(err) => {
            abort(staged.into_iter().map(|(_, conn)| conn).collect());
            Err(err)
        }
        None => Ok(staged),
    }
}

/// Runs `work` on every item, at most `limit` at a time, keeping the order.
fn parallel<T: Send, R: Send>(items: Vec<T>, limit: usize, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    let mut results = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let chunk: Vec<T> = items.by_ref().take(limit.max(1)).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .into_iter()
                .map(|item| scope.spawn(|| work(item)))
                .collect();
            for handle in handles {
                match handle.join() {
                    Ok(result) => results.push(result),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
        });
    }
    results
}

/// Starts the agent on `host` with `request` (encoded once for every host, see
/// [`transport::encode_request`]); `None` in a dry run on a host without the agent.
pub fn connect(
    host: &Host,
    server: &Server,
    agent: &AgentBinary,
    request: &[u8],
) -> Result<Option<AgentConn>> {
    let connection = transport::connect(host, &server.credentials, agent)?;
    start(host, connection, server, agent, request)
}

fn start(
    host: &Host,
    connection: Connection,
    server: &Server,
    agent: &AgentBinary,
    request: &[u8],
) -> Result<Option<AgentConn>> {
    match connection.start(agent, &server.remote_path, server.dry_run, request)? {
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

/// The next event that is not news: lock waits and activation steps are logged
/// (and activation steps kept in `steps`) on the way.
pub fn wait_ready(conn: &mut AgentConn, steps: &mut Vec<String>) -> Result<Event> {
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
            Event::Progress { message } => {
                tracing::info!("{}: {message}", conn.host());
                steps.push(message);
            }
            other => return Ok(other),
        }
    }
}

fn stage(
    (host, early): (&Host, Early<'_>),
    shipment: &Shipment<'_>,
    report: &mut HostReport,
) -> Result<Option<(AgentConn, u64)>> {
    let connect = || timed_connect(host, shipment.server, shipment.agent);
    let connected = match early.map(ScopedJoinHandle::join) {
        Some(Ok(connected)) => connected?,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => connect()?,
    };
    match stage_on(host, connected, shipment, report, true) {
        // A server with `MaxSessions 1` refuses a second channel: the agent has
        // discarded what it got, so upload again, on one channel this time.
        Err(Error::ChannelRefused { .. }) => {
            tracing::warn!(
                "{host}: the server refused a second SSH channel (`MaxSessions 1`?); uploading again on one"
            );
            report
                .steps
                .push("the server refused a second SSH channel; uploaded on one".into());
            stage_on(host, connect()?, shipment, report, false)
        }
        other => other,
    }
}

/// [`stage`] over one connection, splitting a large upload over several
/// channels when they pay and `several_channels` allows.
fn stage_on(
    host: &Host,
    (connection, connect_secs): (Connection, f64),
    shipment: &Shipment<'_>,
    report: &mut HostReport,
    several_channels: bool,
) -> Result<Option<(AgentConn, u64)>> {
    let Shipment {
        server,
        agent,
        request,
        pipeline,
        release,
    } = *shipment;
    let started = Instant::now();
    let Some(mut conn) = start(host, connection, server, agent, request)? else {
        return Ok(None);
    };
    let ready = wait_ready(&mut conn, &mut report.steps)?;
    report.connect_secs = connect_secs + started.elapsed().as_secs_f64();
    let (send, join) = match ready {
        Event::Ready {
            live,
            free_bytes,
            send,
            join,
            platform,
        } => {
            // Refused before a byte is sent: the agent discards what it prepared.
            if let Err(err) = preflight(host, release, platform.as_ref()) {
                conn.finish();
                return Err(err);
            }
            tracing::info!(
                "{host}: ready (live: {}, {} free){}",
                live.as_deref().unwrap_or("nothing yet"),
                mb(free_bytes),
                send.as_ref().map_or(String::new(), |files| format!(
                    "; {} of {} files are new, the others are already there",
                    files.len(),
                    release.manifest.file_count()
                ))
            );
            (send, join)
        }
        Event::Plan {
            live,
            would_prune,
            free_bytes,
            platform,
        } => {
            if let Err(err) = preflight(host, release, platform.as_ref()) {
                finish(conn)?;
                return Err(err);
            }
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
    };
    let started = Instant::now();
    let join = join.filter(|_| several_channels);
    let compressed = conn.stream(release, send.as_deref(), join.as_ref())?;
    if pipeline {
        conn.send(&Command::Activate)?;
        conn.send(&Command::Commit)?;
    }
    // Staging may report a step first (the assets kept for skew protection).
    match wait_ready(&mut conn, &mut Vec::new())? {
        Event::Staged { files, reused, .. } => {
            let secs = started.elapsed().as_secs_f64();
            report.stage_secs = secs;
            tracing::info!(
                "{host}: staged {files} new and {reused} unchanged files: {} sent in {secs:.2} s ({:.1} MB/s)",
                mb(compressed),
                compressed as f64 / 1e6 / secs.max(1e-3)
            );
        }
        other => return Err(conn.unexpected(&other)),
    }
    report.bytes_sent = conn.bytes_sent();
    Ok(Some((conn, compressed)))
}

/// Checks that `release` can run on `host`, as its agent describes it (agents
/// older than the preflight say nothing: nothing to check).
fn preflight(host: &Host, release: &Release, platform: Option<&Platform>) -> Result<()> {
    let Some(platform) = platform else {
        return Ok(());
    };
    crate::preflight::check(&host.to_string(), release, platform)?;
    // Quiet by default: the pinned logs of a deploy stay as they were.
    tracing::debug!(
        "{host}: preflight: the release can run on {}",
        crate::preflight::describe(platform)
    );
    Ok(())
}

/// Keeps the new release on every host: each agent logs it and prunes.
fn commit_all(
    activated: Vec<(usize, AgentConn)>,
    outputs: &mut Outputs,
    committed: bool,
) -> Result<()> {
    for (index, mut conn) in activated {
        let report = &mut outputs.per_host[index];
        let before = conn.bytes_sent();
        if !committed {
            conn.send(&Command::Commit)?;
        }
        match wait_ready(&mut conn, &mut report.steps).map_err(died_switching)? {
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
                report.result = "live".into();
            }
            other => return Err(conn.unexpected(&other)),
        }
        outputs.bytes_sent += conn.bytes_sent() - before;
        finish(conn)?;
    }
    Ok(())
}

/// An agent that vanished once it was told to switch may have switched or not
/// (killed after `current` moved, or put back when its connection dropped): the
/// error says the host may serve either release.
fn died_switching(err: Error) -> Error {
    match err {
        Error::AgentDied {
            host,
            status,
            stderr,
        } => Error::DiedSwitching {
            host,
            status,
            stderr,
        },
        other => other,
    }
}

/// Puts every activated host back after `err`, which it returns. When a host
/// had switched, the deploy touched servers: a bad-input failure (exit 2,
/// "nothing was touched") becomes a failed deploy (exit 1).
fn put_back(activated: Vec<(usize, AgentConn)>, outputs: &mut Outputs, err: Error) -> Error {
    let touched = !activated.is_empty();
    revert_all(activated, outputs);
    if touched && err.exit_status() == ExitStatus::BadInput {
        Error::PutBack(Box::new(err))
    } else {
        err
    }
}

/// Puts every activated host back on what it served before.
fn revert_all(activated: Vec<(usize, AgentConn)>, outputs: &mut Outputs) {
    for (index, mut conn) in activated {
        let report = &mut outputs.per_host[index];
        revert(&mut conn, &mut report.steps);
        report.result = "put back".into();
        conn.finish();
    }
}

fn pruned_note(pruned: &[String]) -> String {
    if pruned.is_empty() {
        String::new()
    } else {
        format!(" (pruned {})", pruned.join(", "))
    }
}

fn revert(conn: &mut AgentConn, steps: &mut Vec<String>) {
    let result = conn
        .send(&Command::Revert)
        .and_then(|()| wait_ready(conn, steps));
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
