//! Deploys that should work, checked on the server's disk.

use std::fs;
use std::path::Path;

use crate::support::{fixture, sshd::Sshd, tree};
use crate::test::{Test, ssh_args};

fn live(remote: &Path) -> String {
    fs::read_link(remote.join("current"))
        .expect("current is a link")
        .to_string_lossy()
        .into_owned()
}

fn releases(remote: &Path) -> Vec<String> {
    let mut list: Vec<String> = fs::read_dir(remote.join("releases"))
        .expect("releases/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    list.sort();
    list
}

#[test]
fn first_deploy_over_ssh_lands_a_byte_identical_release() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let expected = fixture::expected_release(&app, &work.path().join("expected"));
    let remote = work.path().join("srv/app");

    let out = Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--release", "r1"])
        .success();

    let json = out.json();
    assert_eq!(json["release"], "r1");
    assert_eq!(
        json["release-path"],
        format!("{}/releases/r1", remote.display())
    );
    assert!(json["bytes-sent"].as_u64().unwrap() > json["artifact-bytes"].as_u64().unwrap());
    assert_eq!(live(&remote), "releases/r1");
    tree::assert_same_tree_except(&expected, &remote.join("current"), &[".env"]);
    assert_eq!(
        fs::read_link(remote.join("releases/r1/.env"))
            .unwrap()
            .to_str(),
        Some("../../shared/.env")
    );
    let env_mode = fs::metadata(remote.join("shared/.env"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&env_mode) & 0o777,
        0o600
    );
    assert!(
        out.stderr.contains("installing the agent"),
        "{}",
        out.stderr
    );
}

#[test]
fn redeploy_reuses_the_agent_and_rollback_goes_back() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let v1 = fixture::nextjs_app(work.path(), "v1");
    let v2 = fixture::nextjs_app(work.path(), "v2");
    let expected_v2 = fixture::expected_release(&v2, &work.path().join("expected-v2"));
    let expected_v1 = fixture::expected_release(&v1, &work.path().join("expected-v1"));
    let remote = work.path().join("app");

    Test::deploy_over_ssh(&sshd, &v1, &remote)
        .args(["--release", "r1"])
        .success();
    let second = Test::deploy_over_ssh(&sshd, &v2, &remote)
        .args(["--release", "r2"])
        .success();
    assert!(
        !second.stderr.contains("installing the agent"),
        "{}",
        second.stderr
    );
    assert_eq!(live(&remote), "releases/r2");
    // With v1's build-id directory, kept by `keep-assets` (tests/skew.rs).
    let carried = fixture::static_build_dir("v1");
    tree::assert_same_tree_except(&expected_v2, &remote.join("current"), &[".env", &carried]);

    let listed = Test::new()
        .arg("releases")
        .args(ssh_args(&sshd, &remote))
        .success();
    assert!(listed.stdout.contains("* r2"), "{}", listed.stdout);
    assert!(listed.stdout.contains("  r1"), "{}", listed.stdout);

    Test::new()
        .arg("rollback")
        .args(ssh_args(&sshd, &remote))
        .success();
    assert_eq!(live(&remote), "releases/r1");
    tree::assert_same_tree_except(&expected_v1, &remote.join("current"), &[".env"]);

    let missing = Test::new()
        .args(["rollback", "--to", "r9"])
        .args(ssh_args(&sshd, &remote))
        .status(2);
    assert!(
        missing.stderr.contains("release `r9` does not exist"),
        "{}",
        missing.stderr
    );
    assert_eq!(live(&remote), "releases/r1");

    Test::new()
        .args(["rollback", "--to", "r2"])
        .args(ssh_args(&sshd, &remote))
        .success();
    assert_eq!(live(&remote), "releases/r2");
    let log = fs::read_to_string(remote.join(".dropship/releases.log")).unwrap();
    assert_eq!(log.lines().count(), 4, "{log}");
}

#[test]
fn old_releases_are_pruned_but_live_and_previous_stay() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let deploy = |release: &str| {
        Test::new()
            .args([
                "deploy",
                "--host",
                "local",
                "--process-manager",
                "none",
                "--keep-releases",
                "2",
            ])
            .args(["--release", release, "--working-directory"])
            .arg(&app)
            .arg("--remote-path")
            .arg(&remote)
            .success()
    };
    for release in ["a1", "a2", "a3"] {
        deploy(release);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(releases(&remote), ["a2", "a3"]);
    Test::new()
        .args(["rollback", "--host", "local", "--remote-path"])
        .arg(&remote)
        .success();
    assert_eq!(live(&remote), "releases/a2");
    let out = deploy("a4");
    assert!(out.stderr.contains("pruned a3"), "{}", out.stderr);
    // a2 was live before a4, so it stays; a3 was the oldest otherwise.
    assert_eq!(releases(&remote), ["a2", "a4"]);
}

#[test]
fn dry_run_changes_nothing() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let out = Test::deploy_over_ssh(&sshd, &app, &remote)
        .arg("--dry-run")
        .success();
    assert!(
        out.stderr.contains("the agent is not installed there yet"),
        "{}",
        out.stderr
    );
    assert!(!remote.exists());

    Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--release", "r1"])
        .success();
    let before = tree::snapshot(&remote);
    let out = Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--dry-run", "--release", "r2"])
        .success();
    assert!(out.stderr.contains("dry run: would ship"), "{}", out.stderr);
    assert_eq!(before, tree::snapshot(&remote));
}

#[test]
fn monorepo_standalone_layout_puts_assets_beside_server_js() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_monorepo_app(work.path());
    let remote = work.path().join("app");
    Test::new()
        .args([
            "deploy",
            "--host",
            "local",
            "--process-manager",
            "none",
            "--release",
            "m1",
            "--working-directory",
        ])
        .arg(&app)
        .arg("--remote-path")
        .arg(&remote)
        .success();
    let current = remote.join("current");
    assert!(current.join("apps/web/server.js").is_file());
    assert!(current.join("node_modules").is_dir());
    let static_dir = fs::read_dir(current.join("apps/web/.next/static"))
        .unwrap()
        .count();
    assert!(static_dir > 0);
    assert!(current.join("apps/web/public").is_dir());
}

#[test]
fn the_bundled_example_deploys_locally() {
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("demo");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-next");
    Test::new()
        .args([
            "deploy",
            "--host",
            "local",
            "--process-manager",
            "none",
            "--working-directory",
        ])
        .arg(&example)
        .arg("--remote-path")
        .arg(&remote)
        .success();
    assert!(remote.join("current/server.js").is_file());
    assert!(remote.join("current/public").is_dir());
    assert!(remote.join("current/.next/static").is_dir());
}

#[test]
fn a_redeploy_sends_only_new_content_and_links_the_rest() {
    use std::os::unix::fs::MetadataExt;
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let v1 = fixture::nextjs_app(work.path(), "v1");
    let v2 = fixture::nextjs_app(work.path(), "v2");
    let expected_v1 = fixture::expected_release(&v1, &work.path().join("expected-v1"));
    let expected_v2 = fixture::expected_release(&v2, &work.path().join("expected-v2"));
    let remote = work.path().join("app");

    let first = Test::deploy_over_ssh(&sshd, &v1, &remote)
        .args(["--release", "r1"])
        .success()
        .json();
    let second = Test::deploy_over_ssh(&sshd, &v2, &remote)
        .args(["--release", "r2"])
        .success();
    let staged = second
        .stderr
        .split("staged ")
        .nth(1)
        .expect("a staged line");
    let words: Vec<&str> = staged.split_whitespace().collect();
    let (new, old): (usize, usize) = (words[0].parse().unwrap(), words[3].parse().unwrap());
    let all = new + old;
    assert!(new > 0 && new * 3 < all, "{new} of {all} sent");
    // The fixture's changed files include 200 KB of random data; the rest was not sent.
    let sent = second.json()["artifact-bytes"].as_u64().unwrap();
    assert!(sent < first["artifact-bytes"].as_u64().unwrap(), "{sent}");
    // With v1's build-id directory, kept by `keep-assets` (tests/skew.rs).
    let carried = fixture::static_build_dir("v1");
    tree::assert_same_tree_except(&expected_v2, &remote.join("current"), &[".env", &carried]);
    // The old release is untouched, and unchanged files share their inode.
    tree::assert_same_tree_except(&expected_v1, &remote.join("releases/r1"), &[".env"]);
    let robots = |r: &str| {
        fs::metadata(remote.join(r).join("public/robots.txt"))
            .unwrap()
            .ino()
    };
    assert_eq!(robots("releases/r1"), robots("releases/r2"));
}

/// Large uploads over a slow link go over several SSH channels: each extra one
/// runs `dropship agent-part`, which hands its part to the agent's socket.
#[test]
fn a_release_split_over_several_channels_lands_whole() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let v1 = fixture::nextjs_app(work.path(), "v1");
    let v2 = fixture::nextjs_app(work.path(), "v2");
    let expected_v1 = fixture::expected_release(&v1, &work.path().join("expected-v1"));
    let expected_v2 = fixture::expected_release(&v2, &work.path().join("expected-v2"));
    let remote = work.path().join("app");

    Test::deploy_over_ssh(&sshd, &v1, &remote)
        .args(["--release", "r1"])
        .env("DROPSHIP_CHANNELS", "4")
        .success();
    tree::assert_same_tree_except(&expected_v1, &remote.join("current"), &[".env"]);
    // A delta split over three channels, and a deploy onto this machine in parts.
    Test::deploy_over_ssh(&sshd, &v2, &remote)
        .args(["--release", "r2"])
        .env("DROPSHIP_CHANNELS", "3")
        .success();
    // With v1's build-id directory, kept by `keep-assets` (tests/skew.rs).
    let carried = fixture::static_build_dir("v1");
    tree::assert_same_tree_except(&expected_v2, &remote.join("current"), &[".env", &carried]);
    let local = work.path().join("local");
    Test::new()
        .args(["deploy", "--host", "local", "--process-manager", "none"])
        .arg("--remote-path")
        .arg(&local)
        .arg("--working-directory")
        .arg(&v2)
        .env("DROPSHIP_CHANNELS", "8")
        .success();
    tree::assert_same_tree_except(&expected_v2, &local.join("current"), &[".env"]);
    let leftovers: Vec<_> = fs::read_dir(remote.join(".dropship"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The agent checks its own binary against the hash in its name before it
/// changes anything; a damaged copy is removed, and the next deploy installs a
/// fresh one.
#[test]
fn a_damaged_agent_binary_changes_nothing_and_is_replaced() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--release", "r1"])
        .success();
    let bin_dir = remote.join(".dropship/bin");
    let agent = fs::read_dir(&bin_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("the installed agent");
    let mut bytes = fs::read(&agent).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&agent, &bytes).unwrap();

    let out = Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--release", "r2"])
        .status(1);
    assert!(out.stderr.contains("is damaged"), "{}", out.stderr);
    assert!(
        out.stderr.contains("run the deploy again"),
        "{}",
        out.stderr
    );
    assert_eq!(live(&remote), "releases/r1");
    assert_eq!(releases(&remote), ["r1"]);
    assert!(!agent.exists(), "the damaged agent is still there");

    let out = Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--release", "r2"])
        .success();
    assert!(
        out.stderr.contains("installing the agent"),
        "{}",
        out.stderr
    );
    assert_eq!(live(&remote), "releases/r2");
}
