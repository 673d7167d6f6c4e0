//! The sub-commands other than `deploy`: `rollback`, `releases`, `package`.

use std::fs::File;
use std::io::{BufWriter, Write};

use serde_json::json;

use crate::cli::{DeployArgs, DoctorArgs, PackageArgs, RollbackArgs, ServerArgs};
use crate::deploy::{connect, finish, wait_ready};
use crate::error::{Error, Result};
use crate::github;
use crate::inputs::{self, Server};
use crate::package;
use crate::protocol::{self, DoctorRequest, Event, Request, RollbackRequest};
use crate::report::{Outputs, mb};
use crate::transport::{self, AgentBinary};

/// `deploy`, with what surrounds it in Actions: the GitHub deployment record,
/// the step outputs, the job summary and an error annotation on failure.
pub fn deploy(args: DeployArgs) -> Result<()> {
    let inputs = inputs::Deploy::from_args(args)?;
    let mut outputs = Outputs::new(
        &inputs.release,
        &inputs.server.remote_path,
        &inputs.server.hosts,
    );
    outputs.url = inputs.github.environment_url.clone().unwrap_or_default();
    let mut record = (!inputs.server.dry_run)
        .then(|| {
            github::Deployments::from_env(
                inputs.github.token.as_deref(),
                &inputs.github.environment,
            )
        })
        .flatten();
    if let Some(record) = &mut record {
        outputs.deployment_id = std::env::var("GITHUB_SHA")
            .ok()
            .and_then(|sha| record.start(&sha));
    }
    let result = crate::deploy::deploy(&inputs, &mut outputs);
    if let Some(record) = &mut record {
        record.finish(result.is_ok(), inputs.github.environment_url.as_deref());
    }
    if inputs.server.json && result.is_ok() {
        println!("{}", outputs.to_json());
    }
    if let Some(path) = std::env::var_os("GITHUB_OUTPUT") {
        let pairs = outputs.pairs();
        let pairs: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (*k, v.clone())).collect();
        if let Err(err) = github::write_outputs(std::path::Path::new(&path), &pairs) {
            tracing::warn!("cannot write the step outputs: {err}");
        }
    }
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") {
        let summary = outputs.summary(result.as_ref().err());
        if let Err(err) = github::append_summary(std::path::Path::new(&path), &summary) {
            tracing::warn!("cannot write the job summary: {err}");
        }
    }
    result
}

/// `rollback`: make an earlier release live on every host.
pub fn rollback(args: RollbackArgs) -> Result<()> {
    let server = Server::from_args(args.server)?;
    let run = inputs::run_spec(&args.run, &server.remote_path)?;
    if let Some(to) = &args.to {
        protocol::check_release_id(to)
            .map_err(|p| Error::input("to", p, "pick one from `dropship releases`"))?;
    }
    if let Some(fleet) = &server.fleet {
        fleet.open_ingress(&server.hosts, "rollback")?;
    }
    let agent = AgentBinary::default();
    let request = transport::encode_request(&Request::Rollback(RollbackRequest {
        target: server.target(),
        to: args.to.clone(),
        run,
        run_given: !args.run.is_empty(),
    }));
    let mut results = Vec::new();
    for host in &server.hosts {
        let Some(mut conn) = connect(host, &server, &agent, &request)? else {
            continue;
        };
        match wait_ready(&mut conn, &mut Vec::new())? {
            Event::Activated { release, previous } => {
                tracing::info!(
                    "{host}: live: {release} (was {})",
                    previous.as_deref().unwrap_or("nothing")
                );
                results.push(
                    json!({"host": host.to_string(), "release": release, "previous": previous}),
                );
            }
            Event::Plan { live, .. } => {
                tracing::info!(
                    "{host}: dry run: would switch from {}",
                    live.as_deref().unwrap_or("nothing")
                );
            }
            other => return Err(conn.unexpected(&other)),
        }
        expect_done(&mut conn)?;
        finish(conn)?;
    }
    if server.json {
        println!("{}", json!({ "hosts": results }));
    }
    Ok(())
}

/// `releases`: list the releases on every host.
pub fn releases(args: ServerArgs) -> Result<()> {
    let server = Server::from_args(args)?;
    if let Some(fleet) = &server.fleet {
        fleet.open_ingress(&server.hosts, "releases")?;
    }
    let agent = AgentBinary::default();
    let mut all = serde_json::Map::new();
    let request = transport::encode_request(&Request::Releases(server.target()));
    for host in &server.hosts {
        let Some(mut conn) = connect(host, &server, &agent, &request)? else {
            continue;
        };
        let releases = match conn.event()? {
            Event::Releases { releases } => releases,
            other => return Err(conn.unexpected(&other)),
        };
        expect_done(&mut conn)?;
        finish(conn)?;
        if !server.json {
            println!("{host}:");
            if releases.is_empty() {
                println!("  (no releases)");
            }
            for r in releases.iter().rev() {
                let mark = if r.live { "*" } else { " " };
                let when = inputs::utc_stamp(r.created);
                let live = if r.live { "  (live)" } else { "" };
                println!(
                    "{mark} {:<32} {when} UTC  {:>6} files  {:>9}{live}",
                    r.release,
                    r.files,
                    mb(r.bytes)
                );
            }
        }
        all.insert(
            host.to_string(),
            serde_json::to_value(&releases).unwrap_or_default(),
        );
    }
    if server.json {
        println!("{}", serde_json::Value::Object(all));
    }
    Ok(())
}

fn expect_done(conn: &mut crate::transport::AgentConn) -> Result<()> {
    match conn.event()? {
        Event::Done { .. } => Ok(()),
        other => Err(conn.unexpected(&other)),
    }
}

/// `package`: write the artefact and its manifest without shipping.
pub fn package(args: &PackageArgs) -> Result<()> {
    if let Some(command) = args
        .source
        .build
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    {
        crate::build::run(command, &args.source.working_directory, &[], "package")?;
    }
    let release = package::assemble(&inputs::source_spec(&args.source))?;
    let file =
        File::create(&args.output).map_err(|err| Error::local("create", &args.output, err))?;
    let out = package::write_archive(
        &release,
        BufWriter::new(file),
        &package::split(&release, None, 1)[0],
        package::compress_threads(),
    )
    .and_then(|mut out| out.flush())
    .map_err(|err| Error::local("write", &args.output, err));
    out?;
    let manifest_path = args.output.with_file_name(format!(
        "{}.manifest.json",
        args.output
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release")
    ));
    let manifest = serde_json::to_vec_pretty(&release.manifest).unwrap_or_default();
    std::fs::write(&manifest_path, manifest)
        .map_err(|err| Error::local("write", &manifest_path, err))?;
    let artifact_bytes = std::fs::metadata(&args.output).map_or(0, |m| m.len());
    tracing::info!(
        "package: {} — {} files, {} → {} ({})",
        release.description,
        release.manifest.file_count(),
        mb(release.manifest.total_bytes()),
        args.output.display(),
        mb(artifact_bytes)
    );
    if args.json {
        println!(
            "{}",
            json!({
                "artifact": args.output,
                "manifest": manifest_path,
                "artifact-bytes": artifact_bytes,
                "files": release.manifest.file_count(),
                "bytes": release.manifest.total_bytes(),
            })
        );
    }
    Ok(())
}

/// Prints one check of `doctor`; 1 when it has a fix to make.
fn print_check(name: &str, ok: bool, detail: &str, fix: Option<&str>) -> usize {
    println!("  {} {name}: {detail}", if ok { "✓" } else { "✗" });
    match fix {
        Some(fix) => {
            println!("    fix: {fix}");
            1
        }
        None => 0,
    }
}

/// `doctor`: check every host and print what to fix. Fails (exit 1) when something needs fixing.
pub fn doctor(args: DoctorArgs) -> Result<()> {
    let server = Server::with_targets(args.server, Some(&args.targets))?;
    let run = inputs::run_spec(&args.run, &server.remote_path)?;
    let agent = AgentBinary::default();
    let mut problems = 0;
    if let Some(fleet) = &server.fleet {
        println!("AWS:");
        for check in fleet.doctor() {
            problems += print_check(&check.name, check.ok, &check.detail, check.fix.as_deref());
        }
        fleet.open_ingress(&server.hosts, "doctor")?;
    }
    let request = transport::encode_request(&Request::Doctor(DoctorRequest {
        target: server.target(),
        run,
    }));
    for host in &server.hosts {
        println!("{host}:");
        let conn = match connect(host, &server, &agent, &request) {
            Ok(Some(conn)) => conn,
            Ok(None) => {
                println!("  ✗ agent: not installed (dry run); run without --dry-run to install it");
                problems += 1;
                continue;
            }
            Err(err) => {
                println!("  ✗ ssh: {err}");
                if let Some(hint) = err.hint() {
                    println!("    fix: {hint}");
                }
                problems += 1;
                continue;
            }
        };
        println!("  ✓ ssh: reachable, host key pinned and matching, logged in, agent running");
        let mut conn = conn;
        let checks = match conn.event()? {
            Event::Checks { checks } => checks,
            other => return Err(conn.unexpected(&other)),
        };
        expect_done(&mut conn)?;
        finish(conn)?;
        for check in checks {
            problems += print_check(&check.name, check.ok, &check.detail, check.fix.as_deref());
        }
    }
    if problems == 0 {
        Ok(())
    } else {
        Err(Error::Doctor { problems })
    }
}
