//! Skew protection (`keep-assets`): the live release's `.next/static` also
//! holds the files of the last releases' `.next/static`, hard-linked from them,
//! so that a page loaded before a deploy still finds its chunks after it:
//! checked on disk, and in headless Chromium with a real Next.js 14 app built twice.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::support::runtime::{Pm2Home, free_port};
use crate::support::sshd::Sshd;
use crate::support::{browser, fixture, nextapp};
use crate::test::{Output, Test, ssh_args};

/// Deploys `app` as `release` to `remote` on this machine, with `options`.
fn deploy(app: &Path, remote: &Path, release: &str, options: &[&str]) -> Output {
    Test::new()
        .args(["deploy", "--host", "local", "--process-manager", "none"])
        .args(["--release", release, "--working-directory"])
        .arg(app)
        .arg("--remote-path")
        .arg(remote)
        .args(options)
        .success()
}

/// The `_buildManifest.js` of fixture build `variant` in `release`, if it is there.
fn build_manifest(remote: &Path, release: &str, variant: &str) -> std::path::PathBuf {
    remote
        .join("releases")
        .join(release)
        .join(format!(".next/static/build-{variant}/_buildManifest.js"))
}

fn inode(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .ino()
}

#[test]
fn the_live_release_holds_the_last_releases_static_files_linked_and_kept_through_pruning() {
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("srv/app");
    let apps: Vec<_> = ["v1", "v2", "v3", "v4"]
        .iter()
        .map(|v| fixture::nextjs_app(&work.path().join(v), v))
        .collect();
    let keep = ["--keep-assets", "2", "--keep-releases", "2"];
    deploy(&apps[0], &remote, "r1", &keep);
    let second = deploy(&apps[1], &remote, "r2", &keep);
    // Linked, not sent: the same inode as in the release that built it.
    assert_eq!(
        inode(&build_manifest(&remote, "r2", "v1")),
        inode(&build_manifest(&remote, "r1", "v1"))
    );
    assert!(
        second.stderr.contains(
            "skew protection: .next/static also holds 1 file of earlier releases (keep-assets: 2)"
        ),
        "{}",
        second.stderr
    );
    // What the new release ships itself stays as built (the fixture's main
    // chunk has one name in every build), and nothing outside `.next/static` comes along.
    let main = ".next/static/chunks/main-3f2a9c1b7d4e6f80.js";
    let r2 = remote.join("releases/r2");
    assert!(
        fs::read_to_string(r2.join(main))
            .unwrap()
            .contains("main chunk for v2")
    );
    assert!(
        fs::read_to_string(r2.join("server.js"))
            .unwrap()
            .contains("\"v2\"")
    );

    deploy(&apps[2], &remote, "r3", &keep);
    let fourth = deploy(&apps[3], &remote, "r4", &keep);
    assert!(fourth.stderr.contains("pruned r2"), "{}", fourth.stderr);
    assert!(!remote.join("releases/r2").exists());
    // Two releases back, though the one that built `v2` is gone; not three.
    let r4_v2 = build_manifest(&remote, "r4", "v2");
    assert!(r4_v2.is_file(), "{}", r4_v2.display());
    assert!(build_manifest(&remote, "r4", "v3").is_file());
    assert!(!build_manifest(&remote, "r4", "v1").exists());

    // The records of later deploys hold: the same build again reuses every
    // file and finds nothing changed.
    let again = deploy(&apps[3], &remote, "r5", &keep);
    assert!(
        !again.stderr.contains("changed on the server"),
        "{}",
        again.stderr
    );
    assert!(build_manifest(&remote, "r5", "v3").is_file());

    // Off: the release holds what it ships, nothing else.
    let off = deploy(&apps[3], &remote, "r6", &["--keep-assets", "0"]);
    assert!(!off.stderr.contains("skew protection"), "{}", off.stderr);
    assert!(!build_manifest(&remote, "r6", "v3").exists());
}

/// What the browser saw after the deploy (see `tests/browser/skew.mjs`).
struct Seen {
    json: serde_json::Value,
}

impl Seen {
    fn text(&self, key: &str) -> Option<&str> {
        self.json[key].as_str()
    }

    /// The console messages of `kind` (`error`, `log`, ...), as texts.
    fn console(&self, kind: &str) -> Vec<&str> {
        let messages = self.json["console"].as_array().into_iter().flatten();
        messages
            .filter(|m| m["type"] == kind)
            .filter_map(|m| m["text"].as_str())
            .collect()
    }
}

/// Opens the skew fixture built as `A` in headless Chromium (an App Router
/// and a Pages Router tab), deploys the build `B` with `keep_assets`, then has
/// the first tab load its lazy panel and follow its prefetched link, and the
/// second follow a link to a page whose chunk it never loaded; prints and
/// returns what the browser saw.
fn open_a_then_deploy_b(keep_assets: &str) -> Seen {
    let a = nextapp::built_with("skew", &[("NEXT_PUBLIC_SKEW_BUILD", "A")]);
    let b = nextapp::built_with("skew", &[("NEXT_PUBLIC_SKEW_BUILD", "B")]);
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("srv/skew");
    let pm2 = Pm2Home::new();
    let sshd = Sshd::start_with_env(&[("PM2_HOME", &pm2.path_str())]);
    let port = free_port();
    let deploy = |app: &Path, release: &str| {
        Test::new()
            .args(["deploy", "--release", release, "--keep-assets", keep_assets])
            .args(["--app-port", &port.to_string(), "--health-timeout", "60"])
            .arg("--working-directory")
            .arg(app)
            .args(ssh_args(&sshd, &remote))
            .success()
    };
    deploy(&a, "a");
    let mut browser = browser::open(&format!("http://127.0.0.1:{port}"), work.path());
    let opened = browser.next_line();
    assert_eq!(opened["opened"], "Page of build A");
    assert_eq!(opened["legacy"], "Legacy page of build A");
    assert_eq!(
        opened["prefetched"], true,
        "the App Router prefetched /other"
    );
    deploy(&b, "b");
    let seen = Seen {
        json: browser.after_deploy(),
    };
    drop(browser);
    eprintln!(
        "browser after deploying B with keep-assets {keep_assets}: {:#}",
        seen.json
    );
    seen
}

#[test]
fn a_page_of_the_previous_release_loads_its_lazy_chunks_and_routes_after_a_deploy() {
    let seen = open_a_then_deploy_b("3");
    assert_eq!(
        seen.text("panel"),
        Some("Panel of build A"),
        "{:#}",
        seen.json
    );
    // Its chunks were fetched with the prefetch, before the deploy.
    assert_eq!(
        seen.text("other"),
        Some("Other page of build A"),
        "{:#}",
        seen.json
    );
    // Rendered in place from build A's chunk, fetched after the deploy.
    assert_eq!(
        seen.text("legacyOther"),
        Some("Legacy other page of build A"),
        "{:#}",
        seen.json
    );
    assert_eq!(seen.json["sameDocument"], true, "{:#}", seen.json);
    assert_eq!(seen.console("error"), Vec::<&str>::new(), "{:#}", seen.json);
    assert_eq!(seen.json["pageErrors"], serde_json::json!([]));
    assert_eq!(seen.json["failed"], serde_json::json!([]));
    let loaded = seen.json["loadedAfterDeploy"].to_string();
    assert!(
        loaded.contains("/_next/static/chunks/pages/legacy-other-"),
        "{loaded}"
    );
}

#[test]
fn without_keep_assets_the_page_of_the_previous_release_fails_to_load_its_chunk() {
    let seen = open_a_then_deploy_b("0");
    // The fault skew protection is for: the old page's chunks are gone.
    assert_eq!(seen.text("panel"), None, "{:#}", seen.json);
    let errors = seen.console("error").join("\n");
    assert!(
        errors.contains("ChunkLoadError: Loading chunk"),
        "{:#}",
        seen.json
    );
    let not_found = |chunk: &str| {
        let failed = seen.json["failed"].as_array().into_iter().flatten();
        failed
            .clone()
            .any(|f| f["status"] == 404 && f["url"].as_str().is_some_and(|url| url.contains(chunk)))
    };
    assert!(not_found("/_next/static/chunks/"), "{:#}", seen.json);
    // The Pages Router reloads the whole document from the new build instead.
    assert!(
        not_found("/_next/static/chunks/pages/legacy-other-"),
        "{:#}",
        seen.json
    );
    assert_eq!(
        seen.text("legacyOther"),
        Some("Legacy other page of build B"),
        "{:#}",
        seen.json
    );
    assert_eq!(seen.json["sameDocument"], false, "{:#}", seen.json);
}
