//! What lands on the server beside the release itself: `shared` paths that the
//! build also ships (Next.js copies a committed `.env` into its standalone
//! output), and builds whose directories are read-only (Nix, Bazel,
//! `chmod -R a-w`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::runtime::{Behaviour, Pm2Home, free_port, get, node_app};
use crate::support::site::Site;
use crate::support::sshd::Sshd;
use crate::support::systemd::UserManager;
use crate::support::tree::copy_dir;
use crate::test::{Output, Test, ssh_args};

/// What the build ships as `.env`: one key the `env` input also sets, one it does not.
const SHIPPED_ENV: &str = "SHIPPED_ONLY=from-the-build\nOVERRIDDEN=shipped-value\n";

/// The `env` input: it overrides one shipped key and adds one.
const ENV_INPUT: &str = "OVERRIDDEN=s3cret-from-env\nENV_ONLY=s3cret-env-only\n";

/// A server that loads `.env` from its own directory the way Next.js does
/// (`@next/env`: a key already in `process.env` is never overridden) and
/// answers with the three keys of [`SHIPPED_ENV`] and [`ENV_INPUT`].
const ENV_SERVER: &str = r#"const fs = require('fs');
const path = require('path');
try {
  for (const line of fs.readFileSync(path.join(__dirname, '.env'), 'utf8').split('\n')) {
    const m = line.match(/^([A-Z_]+)=(.*)$/);
    if (m && process.env[m[1]] === undefined) process.env[m[1]] = m[2];
  }
} catch (err) {}
require('http').createServer((req, res) => {
  const e = process.env;
  res.writeHead(200, {'content-type': 'text/plain'});
  res.end(`SHIPPED_ONLY=${e.SHIPPED_ONLY} OVERRIDDEN=${e.OVERRIDDEN} ENV_ONLY=${e.ENV_ONLY}\n`);
}).listen(Number(process.env.PORT), process.env.HOSTNAME);
process.on('SIGTERM', () => process.exit(0));
"#;

/// What [`ENV_SERVER`] must answer: the shipped value where `env` sets nothing.
const EXPECTED_ANSWER: &str =
    "SHIPPED_ONLY=from-the-build OVERRIDDEN=s3cret-from-env ENV_ONLY=s3cret-env-only\n";

/// The note the log and the job summary carry (keys only, never values).
const OVERRIDE_NOTE: &str = "shipped `.env` overridden by `env` for keys: OVERRIDDEN";

/// An app whose standalone build ships `.env` (as Next.js does with a committed
/// one) and, when `server` is given, runs it as `server.js`.
fn app_shipping_env(root: &Path, variant: &str, server: Option<&str>) -> PathBuf {
    let app = node_app(root, variant, Behaviour::Healthy);
    let standalone = app.join(".next/standalone");
    fs::write(standalone.join(".env"), SHIPPED_ENV).unwrap();
    if let Some(server) = server {
        fs::write(standalone.join("server.js"), server).unwrap();
    }
    app
}

#[track_caller]
fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected `{needle}` in:\n{text}");
}

/// Every entry of the stored manifest of `release` is on disk as it says
/// (files with their size, directories, links), and the release is live.
#[track_caller]
fn assert_manifest_matches_disk(remote: &Path, release: &str) {
    let path = remote.join(format!(".dropship/manifests/{release}.json"));
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let dir = remote.join("releases").join(release);
    for entry in manifest["entries"].as_array().unwrap() {
        let rel = entry["path"].as_str().unwrap();
        let meta = fs::symlink_metadata(dir.join(rel))
            .unwrap_or_else(|err| panic!("{release}: `{rel}` is in the manifest: {err}"));
        match entry["type"].as_str().unwrap() {
            "file" => {
                assert!(meta.is_file(), "{release}: `{rel}` is not a regular file");
                assert_eq!(
                    meta.len(),
                    entry["size"].as_u64().unwrap(),
                    "{release}: {rel}"
                );
            }
            "dir" => assert!(meta.is_dir(), "{release}: `{rel}` is not a directory"),
            _ => assert!(meta.is_symlink(), "{release}: `{rel}` is not a link"),
        }
    }
}

/// Defect 1: the first deploy replaced the shipped `.env` with the link to
/// `shared/.env` while the stored manifest kept listing the shipped file, so
/// every later deploy failed ("the release arrived damaged"). A shipped
/// `shared` directory is replaced by the shared one, and the summary says so.
#[test]
fn a_build_that_ships_shared_paths_keeps_deploying() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("srv/app");
    let summary = work.path().join("summary.md");
    let app = app_shipping_env(work.path(), "v1", None);
    let uploads = app.join(".next/standalone/uploads");
    fs::create_dir_all(&uploads).unwrap();
    fs::write(uploads.join("placeholder.txt"), "shipped\n").unwrap();
    fs::create_dir_all(remote.join("shared/uploads")).unwrap();
    fs::write(
        remote.join("shared/uploads/avatar.png"),
        "a user's upload\n",
    )
    .unwrap();

    let mut logs = Vec::new();
    for release in ["r1", "r2", "r3"] {
        let out = Test::deploy_over_ssh(&sshd, &app, &remote)
            .args(["--release", release, "--env", ENV_INPUT])
            .args(["--shared", ".env", "--shared", "uploads/"])
            .env("GITHUB_STEP_SUMMARY", &summary.display().to_string())
            .success();
        logs.push(out.stderr);
    }
    for release in ["r1", "r2", "r3"] {
        // The shipped `.env` stays as built; the shared directory wins.
        let dir = remote.join("releases").join(release);
        assert_eq!(fs::read_to_string(dir.join(".env")).unwrap(), SHIPPED_ENV);
        assert_eq!(
            fs::read_link(dir.join("uploads")).unwrap(),
            Path::new("../../shared/uploads")
        );
        assert_manifest_matches_disk(&remote, release);
    }
    for log in &logs {
        assert_contains(log, OVERRIDE_NOTE);
        assert_contains(
            log,
            "shipped `uploads/` replaced by the server's `shared/uploads/`",
        );
        assert!(!log.contains("s3cret"), "{log}");
    }
    assert_eq!(
        fs::read_to_string(remote.join("current/uploads/avatar.png")).unwrap(),
        "a user's upload\n"
    );
    assert!(!remote.join("shared/uploads/placeholder.txt").exists());
    assert_eq!(
        fs::read_to_string(remote.join("shared/.env")).unwrap(),
        ENV_INPUT
    );
    let summary = fs::read_to_string(&summary).unwrap();
    assert_eq!(summary.matches(OVERRIDE_NOTE).count(), 3, "{summary}");
    assert!(!summary.contains("s3cret"), "{summary}");
}

/// A release left by an agent from before this fix: its stored manifest lists
/// the shipped `.env`, its directory holds the link to `shared/.env`. The next
/// deploy of the same build sends that file instead of linking the link.
#[test]
fn a_release_from_before_the_fix_does_not_break_the_next_deploy() {
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("srv/app");
    let app = app_shipping_env(work.path(), "v1", None);
    let deploy = |release: &str| {
        Test::new()
            .args(["deploy", "--host", "local", "--process-manager", "none"])
            .args(["--release", release, "--working-directory"])
            .arg(&app)
            .arg("--remote-path")
            .arg(&remote)
            .success()
    };
    deploy("r1");
    let old = remote.join("releases/r1/.env");
    fs::remove_file(&old).unwrap();
    std::os::unix::fs::symlink("../../shared/.env", &old).unwrap();
    deploy("r2");
    assert_eq!(
        fs::read_to_string(remote.join("releases/r2/.env")).unwrap(),
        SHIPPED_ENV
    );
    assert_manifest_matches_disk(&remote, "r2");
}

/// Defect 1, in the app's `process.env` under PM2: the shipped values for the
/// keys `env` does not set, the `env` values for the keys it does, on the
/// first deploy and on every later one.
#[test]
fn under_pm2_the_app_sees_shipped_env_values_below_the_env_input() {
    let site = Site::new(false);
    let pm2 = Pm2Home::new();
    for (variant, release) in [("v1", "r1"), ("v2", "r2")] {
        let app = app_shipping_env(site.work.path(), variant, Some(ENV_SERVER));
        Test::new()
            .arg("deploy")
            .args(site.run_args(20))
            .args([
                "--release",
                release,
                "--env",
                ENV_INPUT,
                "--working-directory",
            ])
            .arg(&app)
            .env("PM2_HOME", &pm2.path_str())
            .success();
        assert_eq!(site.answer(), EXPECTED_ANSWER, "{release}");
    }
}

/// The same under `process-manager: systemd`.
#[test]
#[ignore = "needs root: a systemd user manager in a mount namespace with its own cgroups"]
fn under_systemd_the_app_sees_shipped_env_values_below_the_env_input() {
    let manager = UserManager::start();
    let site = Site::new(false);
    for (variant, release) in [("v1", "r1"), ("v2", "r2")] {
        let app = app_shipping_env(site.work.path(), variant, Some(ENV_SERVER));
        let test = Test::new()
            .arg("deploy")
            .args(site.run_args(20))
            .args(["--process-manager", "systemd", "--release", release])
            .args(["--env", ENV_INPUT, "--working-directory"])
            .arg(&app);
        manager
            .env()
            .iter()
            .fold(test, |test, (key, value)| test.env(key, value))
            .success();
        assert_eq!(site.answer(), EXPECTED_ANSWER, "{release}");
    }
}

/// A route of the real Next.js app that answers with the three keys, read at request time.
const ENV_ROUTE: &str = "export const dynamic = 'force-dynamic';
export function GET() {
  const e = process.env;
  return new Response(`SHIPPED_ONLY=${e.SHIPPED_ONLY} OVERRIDDEN=${e.OVERRIDDEN} ENV_ONLY=${e.ENV_ONLY}\\n`);
}
";

/// The body of `GET path` on 127.0.0.1:`port`.
fn fetch(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map_or(response.as_str(), |(_, body)| body)
        .to_owned()
}

/// Defect 1 with a real Next.js standalone build (npm), the default
/// `shared: .env` and PM2: Next.js copies the committed `.env` into
/// `.next/standalone` and loads it at start without overriding what `run-app`
/// set; the second deploy of the same build succeeds.
#[test]
fn a_real_nextjs_build_with_a_committed_env_keeps_deploying() {
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("web");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/app"),
        &app,
    );
    fs::write(app.join(".env"), SHIPPED_ENV).unwrap();
    fs::create_dir_all(app.join("app/env")).unwrap();
    fs::write(app.join("app/env/route.js"), ENV_ROUTE).unwrap();
    let install = std::process::Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&app)
        .status()
        .expect("npm");
    assert!(
        install.success(),
        "npm install failed (is the npm registry reachable?)"
    );
    let pm2 = Pm2Home::new();
    let port = free_port();
    let remote = work.path().join("srv/web");
    let env = format!("NEXT_TELEMETRY_DISABLED=1\n{ENV_INPUT}");
    for (release, build) in [("n1", Some("npm run build")), ("n2", None)] {
        let mut test = Test::new()
            .args(["deploy", "--host", "local", "--release", release])
            .args(["--app-port", &port.to_string(), "--health-timeout", "60"])
            .args(["--env", &env, "--working-directory"])
            .arg(&app)
            .arg("--remote-path")
            .arg(&remote)
            .env("PM2_HOME", &pm2.path_str());
        if let Some(build) = build {
            test = test.args(["--build", build]);
        }
        let out = test.success();
        assert_eq!(fetch(port, "/env"), EXPECTED_ANSWER, "{release}");
        assert_eq!(
            fs::read_to_string(remote.join(format!("releases/{release}/.env"))).unwrap(),
            SHIPPED_ENV
        );
        assert_contains(&out.stderr, OVERRIDE_NOTE);
    }
}

/// Makes every directory under `dir` 0555 and every file 0444, as a Nix or
/// Bazel output (or `chmod -R a-w`) leaves them.
fn make_read_only(dir: &Path) {
    for entry in walkdir::WalkDir::new(dir).contents_first(true) {
        let entry = entry.unwrap();
        let mode = if entry.file_type().is_dir() {
            0o555
        } else {
            0o444
        };
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

/// Defect 4: a build with read-only directories, deployed over SSH by a user
/// whom its modes bind. Pruning, discarding a release that never got healthy,
/// and the recovery of the next deploy all remove such releases; the releases
/// keep the modes the build had.
#[test]
fn read_only_build_directories_are_kept_and_still_removed() {
    let pm2 = Pm2Home::new();
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start_as_deploy_user(&[("PM2_HOME", &pm2.path_str())], work.path());
    let remote = work.path().join("srv/app");
    let port = free_port();
    let deploy_within = |app: &Path, release: &str, health_timeout: &str| -> Output {
        Test::new()
            .args(["deploy", "--app-port", &port.to_string()])
            .args(["--health-timeout", health_timeout])
            .args(["--keep-releases", "2", "--release", release])
            .arg("--working-directory")
            .arg(app)
            .args(ssh_args(&sshd, &remote))
            .run()
    };
    let deploy = |app: &Path, release: &str| deploy_within(app, release, "30");
    let app = |variant: &str, behaviour: Behaviour| {
        let app = node_app(work.path(), variant, behaviour);
        let lib = app.join(".next/standalone/lib/deep");
        fs::create_dir_all(&lib).unwrap();
        fs::write(lib.join("chunk.js"), format!("// {variant}\n")).unwrap();
        make_read_only(&app);
        app
    };

    for n in 1..=4 {
        let out = deploy(&app(&format!("v{n}"), Behaviour::Healthy), &format!("r{n}"));
        assert_eq!(out.code, 0, "r{n}:\n{}", out.stderr);
        assert!(get(port).unwrap().starts_with(&format!("v{n}")));
    }
    assert_eq!(
        fs::read_dir(remote.join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<std::collections::BTreeSet<_>>(),
        ["r3".to_owned(), "r4".to_owned()].into()
    );
    let live = remote.join("releases/r4");
    assert_eq!(mode(&live.join("lib")), 0o555);
    assert_eq!(mode(&live.join("lib/deep")), 0o555);
    assert_eq!(mode(&live.join("lib/deep/chunk.js")), 0o444);
    assert_eq!(mode(&live.join("server.js")), 0o444);

    // A release that never gets healthy is discarded, read-only as it is.
    let out = deploy_within(&app("sick", Behaviour::Unhealthy), "r5", "5");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_contains(
        &out.stderr,
        &format!("release r5 did not become healthy on port {port} within 5 s"),
    );
    assert!(!remote.join("releases/r5").exists());
    assert!(get(port).unwrap().starts_with("v4"));

    // And the next deploy finds nothing left to recover.
    let out = deploy(&app("v6", Behaviour::Healthy), "r6");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(get(port).unwrap().starts_with("v6"));
    assert_eq!(
        fs::read_dir(remote.join(".dropship/staging"))
            .unwrap()
            .count(),
        0
    );
}
