//! What lands on the server beside the release itself: `shared` paths that the
//! build also ships (Next.js copies a committed `.env` into its standalone
//! output), and builds whose directories are read-only (Nix, Bazel,
//! `chmod -R a-w`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::runtime::{Behaviour, Pm2Home, free_port, get, node_app};
use crate::support::sshd::Sshd;
use crate::test::{Output, Test, ssh_args};

#[track_caller]
fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected `{needle}` in:\n{text}");
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
    let deploy = |app: &Path, release: &str| -> Output {
        Test::new()
            .args([
                "deploy",
                "--app-port",
                &port.to_string(),
                "--health-timeout",
                "5",
            ])
            .args(["--keep-releases", "2", "--release", release])
            .arg("--working-directory")
            .arg(app)
            .args(ssh_args(&sshd, &remote))
            .run()
    };
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
    let out = deploy(&app("sick", Behaviour::Unhealthy), "r5");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_contains(&out.stderr, "answered 500");
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
