//! The GitHub Action face: the real binary with `GITHUB_ACTIONS=true`, no
//! arguments, and its options in `INPUT_*` variables (hyphens kept, as GitHub
//! sets them).

use std::path::Path;
use std::process::{Command, Output};

/// Runs `dropship` with no arguments as an Action step with `inputs`.
fn action(inputs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dropship"));
    // Start from a clean slate when the tests themselves run inside Actions.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("INPUT_") || name.starts_with("GITHUB_") {
            command.env_remove(name);
        }
    }
    command.env("GITHUB_ACTIONS", "true");
    for (name, value) in inputs {
        command.env(format!("INPUT_{name}"), value);
    }
    command.output().expect("run dropship")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn inputs_drive_a_local_deploy() {
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("app");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-next");
    let out = action(&[
        ("HOST", "local"),
        ("REMOTE-PATH", remote.to_str().unwrap()),
        ("WORKING-DIRECTORY", example.to_str().unwrap()),
        ("PROCESS-MANAGER", "none"),
        ("ENV", "API_SECRET=\"s3cr3t value\"\n"),
        ("KEEP_RELEASES", "3"),
        ("REMOTE-PTH", "typo"),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "exit {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status.code()
    );
    assert!(remote.join("current").exists(), "no current link\n{stderr}");
    // The secret is masked before anything else is printed.
    assert!(
        stdout.starts_with("::add-mask::s3cr3t value\n"),
        "stdout:\n{stdout}"
    );
    assert!(
        stdout.contains(
            "::warning title=dropship::unknown input `remote-pth` is ignored; did you mean `remote-path`?"
        ),
        "stdout:\n{stdout}"
    );
}

#[test]
fn a_bad_input_is_an_error_annotation_and_exit_2() {
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("app");
    let out = action(&[
        ("HOST", "local"),
        ("REMOTE-PATH", remote.to_str().unwrap()),
        ("DRY-RUN", "yes"),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{stdout}");
    assert!(
        stdout.contains("::error title=dropship::input `dry-run`: must be `true` or `false`"),
        "stdout:\n{stdout}"
    );
    // Once: the annotation is the message in Actions.
    assert!(!text(&out.stderr).contains("input `dry-run`"));
    assert!(!remote.exists());
}

#[test]
fn a_missing_required_input_is_named() {
    let out = action(&[("HOST", "local")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout)
            .contains("::error title=dropship::input `remote-path`: is required by `deploy`"),
        "stdout:\n{}",
        text(&out.stdout)
    );
}
