//! `dropship package` and what source detection says when there is nothing to ship.

use std::collections::BTreeSet;
use std::io::Read;

use crate::support::{fixture, tree};
use crate::test::Test;

#[test]
fn package_writes_the_assembled_release_and_its_manifest() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let expected = fixture::expected_release(&app, &work.path().join("expected"));
    let output = work.path().join("release.tar.zst");
    let out = Test::new()
        .args(["package", "--json", "--working-directory"])
        .arg(&app)
        .arg("--output")
        .arg(&output)
        .success();
    assert_eq!(
        out.json()["artifact-bytes"].as_u64(),
        Some(std::fs::metadata(&output).unwrap().len())
    );

    let mut tar_bytes = Vec::new();
    zstd::stream::read::Decoder::new(std::fs::File::open(&output).unwrap())
        .unwrap()
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let shipped: BTreeSet<String> = archive
        .entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    let wanted: BTreeSet<String> = tree::snapshot(&expected).into_keys().collect();
    assert_eq!(shipped, wanted);
    assert!(!shipped.iter().any(|p| p.ends_with(".map")));

    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(work.path().join("release.tar.zst.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["entries"].as_array().unwrap().len(), wanted.len());
}

#[test]
fn a_missing_build_is_bad_input_with_a_hint() {
    let work = tempfile::tempdir().unwrap();
    let out = Test::new()
        .args([
            "deploy",
            "--host",
            "local",
            "--process-manager",
            "none",
            "--working-directory",
        ])
        .arg(work.path())
        .arg("--remote-path")
        .arg(work.path().join("app"))
        .status(2);
    assert!(
        out.stderr.contains("no Next.js standalone build"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("output: 'standalone'"),
        "{}",
        out.stderr
    );
    assert!(!work.path().join("app").exists());
}

#[test]
fn a_symlink_leaving_the_source_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    std::os::unix::fs::symlink("/etc", app.join(".next/standalone/etc")).unwrap();
    let out = Test::new()
        .args(["package", "--working-directory"])
        .arg(&app)
        .arg("--output")
        .arg(work.path().join("x.tar.zst"))
        .status(2);
    assert!(
        out.stderr
            .contains("symlink `etc` points outside the release"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_inputs_are_refused_before_anything_happens() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    for (args, text) in [
        (
            vec!["--remote-path", "relative/path"],
            "input `remote-path`",
        ),
        (vec!["--remote-path", "/etc"], "system directory"),
        (
            vec!["--remote-path", "/srv/x", "--release", "../x"],
            "input `release`",
        ),
        (
            vec!["--remote-path", "/srv/x", "--keep-releases", "1"],
            "input `keep-releases`",
        ),
        (
            vec!["--remote-path", "/srv/x", "--exclude", "a["],
            "input `exclude`",
        ),
    ] {
        let out = Test::new()
            .args([
                "deploy",
                "--host",
                "local",
                "--process-manager",
                "none",
                "--working-directory",
            ])
            .arg(&app)
            .args(args)
            .status(2);
        assert!(out.stderr.contains(text), "{text}: {}", out.stderr);
    }
}
