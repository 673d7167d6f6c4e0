//! Issue 11, item 5: the client installs the agent built for the server's CPU
//! (`uname -m`), gzipped on the wire, and refuses a server whose CPU it has no
//! agent for before anything changes. No aarch64 machine or Rust target here: a
//! fake `uname` on the sshd session's PATH makes the server say aarch64, and the
//! "aarch64 agent" is a script that runs the x86_64 one, so the deploy completes
//! and shows which file was installed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::support::{fixture, sshd::Sshd};
use crate::test::{Output, Test};

/// The lean agent binary under test.
const AGENT: &str = env!("CARGO_BIN_EXE_dropship-agent");

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).expect("write a script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod a script");
}

/// An sshd whose sessions find a `uname` that says `machine` for `-m`.
fn sshd_on(work: &Path, machine: &str) -> Sshd {
    let bin = work.join("fake-bin");
    fs::create_dir_all(&bin).expect("mkdir fake-bin");
    write_executable(
        &bin.join("uname"),
        &format!(
            "#!/bin/sh\nif [ \"$1\" = -m ]; then echo {machine}; else exec /usr/bin/uname \"$@\"; fi\n"
        ),
    );
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    Sshd::start_with_env(&[("PATH", &path)])
}

/// A directory of agents: the real x86_64 one, and (if `aarch64`) a placeholder
/// aarch64 agent that execs it. Returns the directory and the placeholder's text.
fn agent_dir(work: &Path, aarch64: bool) -> (PathBuf, String) {
    let dir = work.join("agents");
    fs::create_dir_all(&dir).expect("mkdir agents");
    fs::copy(AGENT, dir.join("dropship-agent-x86_64")).expect("copy the agent");
    let placeholder =
        format!("#!/bin/sh\n# the aarch64 agent (a stand-in)\nexec '{AGENT}' \"$@\"\n");
    if aarch64 {
        write_executable(&dir.join("dropship-agent-aarch64"), &placeholder);
    }
    (dir, placeholder)
}

fn deploy(sshd: &Sshd, work: &Path, agents: &Path, release: &str, extra: &[&str]) -> Test {
    let app = fixture::nextjs_app(work, "v1");
    Test::deploy_over_ssh(sshd, &app, &work.join("srv/app"))
        .args(["--release", release])
        .args(extra)
        .env("DROPSHIP_AGENT_DIR", &agents.display().to_string())
}

/// A short digest of `bytes`, for assertion messages that stay readable.
fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    format!(
        "{} bytes, sha256 {:02x}{:02x}{:02x}{:02x}…",
        bytes.len(),
        hash[0],
        hash[1],
        hash[2],
        hash[3]
    )
}

/// The files in `remote-path`/.dropship/bin, as [`digest`]s.
fn installed(work: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(work.join("srv/app/.dropship/bin")) else {
        return Vec::new();
    };
    entries
        .map(|entry| {
            digest(&fs::read(entry.expect("entry").path()).expect("read an installed agent"))
        })
        .collect()
}

fn bytes_sent(out: &Output) -> u64 {
    out.json()["bytes-sent"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bytes-sent in {}", out.stdout))
}

#[test]
fn an_aarch64_server_gets_the_aarch64_agent() {
    let work = tempfile::tempdir().unwrap();
    let sshd = sshd_on(work.path(), "aarch64");
    let (agents, placeholder) = agent_dir(work.path(), true);

    let out = deploy(&sshd, work.path(), &agents, "r1", &[]).success();
    assert_eq!(installed(work.path()), [digest(placeholder.as_bytes())]);
    assert!(
        out.stderr.contains("installing the agent ("),
        "{}",
        out.stderr
    );

    // The next deploy finds it there: nothing is uploaded again.
    let out = deploy(&sshd, work.path(), &agents, "r2", &[]).success();
    assert!(
        !out.stderr.contains("installing the agent"),
        "{}",
        out.stderr
    );
    assert_eq!(installed(work.path()), [digest(placeholder.as_bytes())]);
}

#[test]
fn an_x86_64_server_gets_the_lean_agent_gzipped() {
    let work = tempfile::tempdir().unwrap();
    let sshd = sshd_on(work.path(), "x86_64");
    let (agents, _) = agent_dir(work.path(), true);
    let agent = fs::read(AGENT).unwrap();

    let out = deploy(&sshd, work.path(), &agents, "r1", &[]).success();
    assert_eq!(installed(work.path()), [digest(&agent)]);
    assert!(out.stderr.contains(" KB, gzipped) at "), "{}", out.stderr);
    // The fixture release is 0.2 MB; the agent went at well under its size.
    let sent = bytes_sent(&out);
    assert!(
        sent < agent.len() as u64 * 6 / 10,
        "{sent} bytes sent for a {} byte agent",
        agent.len()
    );
}

#[test]
fn a_server_without_gzip_gets_the_agent_as_it_is() {
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("no-gzip-bin");
    fs::create_dir_all(&bin).unwrap();
    // Every tool of /usr/bin and /bin but gzip.
    for dir in ["/usr/bin", "/bin"] {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name();
            if name != "gzip" && !bin.join(&name).exists() {
                let _ = std::os::unix::fs::symlink(entry.path(), bin.join(&name));
            }
        }
    }
    let sshd = Sshd::start_with_env(&[("PATH", &bin.display().to_string())]);
    let (agents, _) = agent_dir(work.path(), false);
    let agent = fs::read(AGENT).unwrap();

    let out = deploy(&sshd, work.path(), &agents, "r1", &[]).success();
    assert_eq!(installed(work.path()), [digest(&agent)]);
    assert!(!out.stderr.contains("gzipped"), "{}", out.stderr);
    assert!(bytes_sent(&out) > agent.len() as u64);
}

#[test]
fn a_server_whose_cpu_has_no_agent_is_refused_before_anything_changes() {
    let work = tempfile::tempdir().unwrap();
    let sshd = sshd_on(work.path(), "aarch64");
    let (agents, _) = agent_dir(work.path(), false);
    let host = sshd.host_spec();
    let expected = format!(
        "error: {host} runs on aarch64, and this client has no agent for it (looked for `dropship-agent-aarch64` in {dir})\n  \
         hint: put `dropship-agent-aarch64` from dropship's release assets (or its image's /usr/local/bin/) there, or set DROPSHIP_AGENT_DIR to a directory holding it\n",
        dir = agents.display()
    );
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = deploy(&sshd, work.path(), &agents, "r1", extra).status(2);
        let error = out
            .stderr
            .find("error: ")
            .map_or("", |at| &out.stderr[at..]);
        assert_eq!(error, expected, "{extra:?}: {}", out.stderr);
        assert!(
            !work.path().join("srv").exists(),
            "{extra:?}: the server changed"
        );
    }
}

#[test]
fn the_agent_links_no_github_aws_or_ssh_client() {
    let symbols = |path: &str| {
        let out = Command::new("nm").arg(path).output().expect("run nm");
        assert!(out.status.success(), "nm {path}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let clients = [
        "octocrab",
        "libssh2_",
        "4ssh27session",
        "hyper",
        "rustls",
        "aws_sdk",
        "EVP_CIPHER",
    ];
    let linked = |symbols: &str| -> Vec<&str> {
        clients
            .iter()
            .copied()
            .filter(|client| symbols.contains(client))
            .collect()
    };
    let agent = symbols(AGENT);
    assert!(agent.contains("5agent3run"), "no agent in {AGENT}");
    assert_eq!(linked(&agent), Vec::<&str>::new(), "{AGENT}");
    // The full client has them all (the check looks at the right things).
    let client = symbols(env!("CARGO_BIN_EXE_dropship"));
    assert_eq!(linked(&client), clients);
}
