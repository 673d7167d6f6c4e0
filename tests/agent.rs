//! The agent fed hostile streams and manifests directly on stdin: it must refuse
//! them and leave nothing behind, inside or outside `remote-path`.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::test::{Output, Test};

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file(path: &str, content: &[u8]) -> Value {
    json!({"path": path, "mode": 0o644, "type": "file", "size": content.len(), "hash": sha(content)})
}

/// A raw tar entry whose name bypasses the tar crate's own path checks.
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    content: &[u8],
    link: Option<&str>,
) {
    let mut header = tar::Header::new_old();
    let bytes = name.as_bytes();
    header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(content.len() as u64);
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_cksum();
    tar.append(&header, content).unwrap();
}

fn compress(tar: tar::Builder<Vec<u8>>) -> Vec<u8> {
    zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap()
}

fn run_agent(root: &Path, entries: Value, stream: Vec<u8>) -> Output {
    let request = json!({
        "op": "deploy",
        "target": {"protocol": 1, "root": root, "by": "test", "lock_timeout_secs": 5, "dry_run": false},
        "release": "evil1",
        "manifest": {"entries": entries},
        "shared": [".env"],
        "keep_releases": 5,
        "idle_timeout_secs": 10,
        "server_dir": ".",
        "run": crate::test::run_none(),
    });
    let mut input = serde_json::to_vec(&request).unwrap();
    input.push(b'\n');
    input.extend_from_slice(b"{\"stream\":{\"parts\":1}}\n");
    input.write_all(&stream).unwrap();
    input.extend_from_slice(b"\"activate\"\n\"commit\"\n");
    Test::new().arg("agent").stdin(input).run()
}

#[track_caller]
fn assert_refused(out: &Output, code: i32, text: &str, work: &Path) {
    assert_eq!(
        out.code, code,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains(text),
        "expected `{text}` in: {}",
        out.stdout
    );
    let root = work.join("root");
    let releases: Vec<_> = std::fs::read_dir(root.join("releases"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(releases.is_empty(), "a release was left behind");
    assert!(!root.join("current").exists());
    let staging: Vec<_> = std::fs::read_dir(root.join(".dropship/staging"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "staging was left behind");
    assert!(
        !work.join("evil").exists(),
        "something was written outside remote-path"
    );
}

#[test]
fn dot_dot_and_absolute_entries_are_refused() {
    for name in ["../evil", "/tmp/dropship-evil-abs"] {
        let work = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        raw_entry(&mut tar, name, tar::EntryType::Regular, b"x", None);
        let out = run_agent(
            &work.path().join("root"),
            json!([file("ok.txt", b"x")]),
            compress(tar),
        );
        assert_refused(&out, 2, "not a plain relative path", work.path());
        assert!(!Path::new("/tmp/dropship-evil-abs").exists());
    }
}

#[test]
fn device_and_hard_link_entries_are_refused() {
    for (kind, word) in [
        (tar::EntryType::Char, "character device"),
        (tar::EntryType::Link, "hard link"),
        (tar::EntryType::Fifo, "fifo"),
    ] {
        let work = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        raw_entry(&mut tar, "ok.txt", kind, b"", Some("/etc/passwd"));
        let out = run_agent(
            &work.path().join("root"),
            json!([file("ok.txt", b"")]),
            compress(tar),
        );
        assert_refused(&out, 2, word, work.path());
    }
}

#[test]
fn a_manifest_that_escapes_is_refused_before_anything_is_written() {
    let bad_manifests = [
        json!([file("../evil", b"x")]),
        json!([{"path": "link", "mode": 0o777, "type": "symlink", "target": "../../evil"}]),
        json!([{"path": "link", "mode": 0o777, "type": "symlink", "target": "/etc"}]),
        json!([{"path": "d", "mode": 0o777, "type": "symlink", "target": "."}, file("d/x", b"x")]),
    ];
    for manifest in bad_manifests {
        let work = tempfile::tempdir().unwrap();
        let out = run_agent(&work.path().join("root"), manifest, Vec::new());
        assert_refused(&out, 2, "refused the manifest", work.path());
    }
}

#[test]
fn entries_not_in_the_manifest_or_with_other_content_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, "extra.txt", tar::EntryType::Regular, b"x", None);
    let out = run_agent(
        &work.path().join("root"),
        json!([file("ok.txt", b"x")]),
        compress(tar),
    );
    assert_refused(&out, 2, "not in the manifest", work.path());

    let work = tempfile::tempdir().unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(
        &mut tar,
        "ok.txt",
        tar::EntryType::Regular,
        b"tampered",
        None,
    );
    let out = run_agent(
        &work.path().join("root"),
        json!([file("ok.txt", b"original")]),
        compress(tar),
    );
    assert_refused(&out, 1, "arrived damaged", work.path());
}

#[test]
fn a_truncated_stream_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(
        &mut tar,
        "a.txt",
        tar::EntryType::Regular,
        &[7u8; 100_000],
        None,
    );
    let mut stream = compress(tar);
    stream.truncate(stream.len() / 2);
    let out = run_agent(
        &work.path().join("root"),
        json!([file("a.txt", &[7u8; 100_000]), file("b.txt", b"")]),
        stream,
    );
    assert_refused(&out, 1, "\"event\":\"failed\"", work.path());
}

#[test]
fn a_well_formed_stream_is_accepted() {
    let work = tempfile::tempdir().unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, "ok.txt", tar::EntryType::Regular, b"fine", None);
    let root = work.path().join("root");
    let out = run_agent(&root, json!([file("ok.txt", b"fine")]), compress(tar));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("\"event\":\"done\""), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(root.join("current/ok.txt")).unwrap(),
        "fine"
    );
}

/// A connection to the agent's part socket that does not know the token is
/// ignored; the deploy waits for the real parts and lands whole.
#[test]
fn a_stray_connection_to_the_part_socket_is_ignored() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let entries = json!([file("a.txt", b"part one"), file("b.txt", b"part two")]);
    let request = json!({
        "op": "deploy",
        "target": {"protocol": 1, "root": root, "by": "test", "lock_timeout_secs": 5, "dry_run": false},
        "release": "r1",
        "manifest": {"entries": entries},
        "shared": [],
        "keep_releases": 5,
        "idle_timeout_secs": 10,
        "server_dir": ".",
        "run": crate::test::run_none(),
    });
    let mut agent = crate::test::dropship()
        .arg("agent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = agent.stdin.take().unwrap();
    let mut stdout = BufReader::new(agent.stdout.take().unwrap());
    writeln!(stdin, "{request}").unwrap();
    let mut line = String::new();
    let ready = loop {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "ready" {
            break event;
        }
    };
    let socket = ready["join"]["socket"].as_str().unwrap().to_owned();
    let token = ready["join"]["token"].as_str().unwrap().to_owned();
    let stray = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    (&stray).write_all(b"not-the-token\nrubbish").unwrap();
    stdin.write_all(b"{\"stream\":{\"parts\":2}}\n").unwrap();
    let part = |name: &str, content: &[u8]| {
        let mut tar = tar::Builder::new(Vec::new());
        raw_entry(&mut tar, name, tar::EntryType::Regular, content, None);
        compress(tar)
    };
    stdin.write_all(&part("a.txt", b"part one")).unwrap();
    let mut relay = crate::test::dropship()
        .args(["agent-part", "--socket", &socket])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut relay_in = relay.stdin.take().unwrap();
    writeln!(relay_in, "{token}").unwrap();
    relay_in.write_all(&part("b.txt", b"part two")).unwrap();
    drop(relay_in);
    assert!(relay.wait().unwrap().success());
    stdin.write_all(b"\"activate\"\n\"commit\"\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(agent.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("\"event\":\"done\""), "{rest}");
    assert_eq!(
        std::fs::read_to_string(root.join("current/a.txt")).unwrap(),
        "part one"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/b.txt")).unwrap(),
        "part two"
    );
    assert!(!Path::new(&socket).exists(), "the socket was left behind");
}
