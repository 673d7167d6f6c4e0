//! The `Test` builder: runs the real `dropship` binary and checks its exit
//! status, dumping stdout and stderr when an expectation fails.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::sshd::Sshd;

/// What a finished run left behind.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The stdout parsed as one JSON object.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}):\n{}", self.stdout))
    }
}

/// One run of `dropship`.
#[must_use]
pub struct Test {
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
}

impl Test {
    pub fn new() -> Test {
        Test {
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Test
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn arg(self, arg: impl Into<OsString>) -> Test {
        self.args([arg])
    }

    pub fn env(mut self, key: &str, value: &str) -> Test {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn stdin(mut self, bytes: Vec<u8>) -> Test {
        self.stdin = Some(bytes);
        self
    }

    /// `deploy` to `remote` on the test sshd, pinned and keyed.
    pub fn deploy_over_ssh(sshd: &Sshd, app: &Path, remote: &Path) -> Test {
        Test::new()
            .args([
                "deploy",
                "--process-manager",
                "none",
                "--json",
                "--working-directory",
            ])
            .arg(app)
            .args(ssh_args(sshd, remote))
    }

    pub fn spawn(self) -> std::process::Child {
        let mut command = dropship();
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start dropship");
        if let Some(bytes) = self.stdin {
            let mut stdin = child.stdin.take().expect("stdin");
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        child
    }

    /// Starts with stdin, stdout and stderr all piped, for tests that talk to the process.
    pub fn spawn_piped(self) -> std::process::Child {
        dropship()
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dropship")
    }

    pub fn run(self) -> Output {
        let output = self.spawn().wait_with_output().expect("wait for dropship");
        Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn success(self) -> Output {
        self.status(0)
    }

    #[track_caller]
    pub fn status(self, code: i32) -> Output {
        let output = self.run();
        assert_eq!(
            output.code, code,
            "expected exit status {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            output.code, output.stdout, output.stderr
        );
        output
    }
}

/// The `dropship` binary under test, see [`scrubbed`].
pub fn dropship() -> Command {
    scrubbed(env!("CARGO_BIN_EXE_dropship"))
}

/// A command for `program` (dropship, or a wrapper that runs it) without this
/// process's `GITHUB_*` and `INPUT_*` variables: tests run inside a CI job must
/// not append to the job's own `GITHUB_OUTPUT` and `GITHUB_STEP_SUMMARY`, nor
/// turn into an Action run. A test that needs one sets it on the command.
pub fn scrubbed(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("GITHUB_") || text.starts_with("INPUT_") {
            command.env_remove(&name);
        }
    }
    command
}

/// Connection flags for the test sshd and a remote path.
pub fn ssh_args(sshd: &Sshd, remote: &Path) -> Vec<OsString> {
    vec![
        "--host".into(),
        sshd.host_spec().into(),
        "--key-file".into(),
        sshd.user_key_path().into(),
        "--known-hosts-file".into(),
        sshd.known_hosts_path().into(),
        "--remote-path".into(),
        remote.into(),
    ]
}

/// The `run` part of a hand-written agent request: files and the switch only.
pub fn run_none() -> serde_json::Value {
    serde_json::json!({
        "app": "app", "process_manager": "none", "start": "node server.js", "strategy": "restart",
        "ports": [3000], "health_path": "/", "health_timeout_secs": 5,
        "nginx_upstream": "/tmp/none.conf", "nginx_reload": "true",
    })
}

/// Asserts that the run's stderr holds `text`.
#[track_caller]
pub fn assert_contains(out: &Output, text: &str) {
    assert!(
        out.stderr.contains(text),
        "expected `{text}` in:\n{}",
        out.stderr
    );
}
