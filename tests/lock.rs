//! One deploy at a time per `remote-path`: a second one waits, or exits 3 saying
//! who holds the lock; a lock left by a killed deploy is taken over.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin};
use std::time::Duration;

use serde_json::json;

use crate::support::{fixture, sshd::Sshd};
use crate::test::Test;

/// An agent that took the lock for release `holder-1` and now waits for its stream.
pub(crate) fn hold_lock(root: &Path) -> (Child, ChildStdin) {
    let request = json!({
        "op": "deploy",
        "target": {"protocol": 1, "root": root, "by": "alice@laptop", "lock_timeout_secs": 5, "dry_run": false},
        "release": "holder-1",
        "manifest": {"entries": []},
        "shared": [],
        "keep_releases": 5,
        "idle_timeout_secs": 60,
        "server_dir": ".",
        "run": crate::test::run_none(),
    });
    let mut child = Test::new().arg("agent").spawn_piped();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{request}").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("\"ready\"") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the holder never got ready"
        );
    }
    (child, stdin)
}

#[test]
fn a_second_deploy_waits_then_gives_up_with_exit_3_naming_the_holder() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let (mut holder, holder_stdin) = hold_lock(&remote);

    let out = Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--lock-timeout", "1", "--release", "r1"])
        .status(3);
    assert!(
        out.stderr.contains("another deploy holds the lock"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("alice@laptop (deploying holder-1)"),
        "{}",
        out.stderr
    );
    assert!(!remote.join("releases/r1").exists());

    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder exited early"
    );
    // A patient deploy gets through as soon as the holder finishes.
    let mut waiting = Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--lock-timeout", "30", "--release", "r2"])
        .spawn();
    let mut stderr = BufReader::new(waiting.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("waiting for another deploy") {
        assert!(
            stderr.read_line(&mut seen).unwrap() > 0,
            "never waited: {seen}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(holder_stdin);
    holder.wait().unwrap();
    stderr.read_to_string(&mut seen).unwrap();
    assert!(waiting.wait().unwrap().success(), "{seen}");
    assert_eq!(
        std::fs::read_link(remote.join("current")).unwrap().to_str(),
        Some("releases/r2")
    );
}

#[test]
fn a_killed_deploy_leaves_nothing_that_blocks_the_next() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let (mut holder, _stdin) = hold_lock(&remote);
    std::fs::create_dir_all(remote.join(".dropship/staging/holder-1.999999/half")).unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();

    Test::new()
        .args([
            "deploy",
            "--host",
            "local",
            "--process-manager",
            "none",
            "--lock-timeout",
            "2",
            "--release",
            "r1",
        ])
        .arg("--working-directory")
        .arg(&app)
        .arg("--remote-path")
        .arg(&remote)
        .success();
    assert_eq!(
        std::fs::read_dir(remote.join(".dropship/staging"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn two_deploys_at_once_both_land_one_after_the_other() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let v1 = fixture::nextjs_app(work.path(), "v1");
    let v2 = fixture::nextjs_app(work.path(), "v2");
    let remote = work.path().join("app");
    Test::deploy_over_ssh(&sshd, &v1, &remote)
        .args(["--release", "r0"])
        .success();
    let a = Test::deploy_over_ssh(&sshd, &v1, &remote)
        .args(["--release", "ra"])
        .spawn();
    let b = Test::deploy_over_ssh(&sshd, &v2, &remote)
        .args(["--release", "rb"])
        .spawn();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::read_to_string(remote.join(".dropship/releases.log")).unwrap();
    let releases: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"op\":\"deploy\""))
        .collect();
    assert_eq!(releases.len(), 3, "{log}");
    // Each deploy saw the previous one's release as live: never interleaved.
    let live = std::fs::read_link(remote.join("current")).unwrap();
    let last = releases[2];
    assert!(
        last.contains(&format!(
            "\"release\":\"{}\"",
            live.file_name().unwrap().to_str().unwrap()
        )),
        "{log}"
    );
    let first_after_r0 = releases[1];
    assert!(first_after_r0.contains("\"previous\":\"r0\""), "{log}");
}
