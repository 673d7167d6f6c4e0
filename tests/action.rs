//! The GitHub Action face: the real binary with `GITHUB_ACTIONS=true`, no
//! arguments, and its options in `INPUT_*` variables (hyphens kept, as GitHub
//! sets them).

use std::path::Path;
use std::process::{Command, Output};

/// Runs `dropship` with no arguments as an Action step with `inputs`.
fn action(inputs: &[(&str, &str)]) -> Output {
    // A clean slate when the tests themselves run inside Actions.
    let mut command = crate::test::dropship();
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

/// Every byte a run produced, searched for secret values.
fn assert_no_secret(haystacks: &[(&str, &str)], secrets: &[&str]) {
    for (name, text) in haystacks {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "secret `{secret}` leaked into {name}:\n{text}"
            );
        }
    }
}

#[test]
fn a_whole_action_run_over_ssh_reports_everything_and_leaks_nothing() {
    use crate::support::{fake_github::FakeGithub, runtime, sshd::Sshd};
    use std::os::unix::fs::PermissionsExt;

    let pm2 = runtime::Pm2Home::new();
    let sshd = Sshd::start_with_env(&[("PM2_HOME", &pm2.path_str())]);
    let github = FakeGithub::start();
    let work = tempfile::tempdir().unwrap();
    let app = runtime::node_app(work.path(), "v1", runtime::Behaviour::Healthy);
    let remote = work.path().join("site");
    let port = runtime::free_port();
    let (output, summary) = (work.path().join("output"), work.path().join("summary.md"));
    let secrets = [
        "gr33ting-Secret-A1",
        "line one of B2\nline two of B2",
        "ghs_T0KEN_C3",
    ];
    let env = format!(
        "GREETING={}\nMULTI=\"{}\"\n",
        secrets[0],
        secrets[1].replace('\n', "\\n")
    );
    let key = sshd.user_key();
    let build = "printf '%s|%s' \"$GREETING\" \"$DROPSHIP_RELEASE\" > build-saw.txt";

    let mut command = crate::test::dropship();
    command
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &output)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567")
        .env("GITHUB_REPOSITORY", "acme/site")
        .env("GITHUB_API_URL", &github.url)
        .env("GITHUB_SERVER_URL", "https://github.example")
        .env("GITHUB_RUN_ID", "99")
        .env("INPUT_HOST", sshd.host_spec())
        .env("INPUT_KEY", &key)
        .env("INPUT_KNOWN-HOSTS", sshd.known_hosts_line())
        .env("INPUT_REMOTE-PATH", &remote)
        .env("INPUT_WORKING-DIRECTORY", &app)
        .env("INPUT_BUILD", build)
        .env("INPUT_ENV", &env)
        .env("INPUT_APP-PORT", port.to_string())
        .env("INPUT_GITHUB-TOKEN", secrets[2])
        .env("INPUT_ENVIRONMENT-URL", "https://site.example")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    // Sample the process list while the deploy runs, on both "sides" (one machine here).
    let mut ps_samples = String::new();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(3) {
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        ps_samples.push_str(&text(&ps.stdout));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );

    // The build saw the env map and the release id; the app sees the runtime env.
    let saw = std::fs::read_to_string(app.join("build-saw.txt")).unwrap();
    assert!(saw.starts_with(&format!("{}|", secrets[0])), "{saw}");
    assert!(runtime::get(port).unwrap().contains(secrets[0]));
    let env_file = remote.join("shared/.env");
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&env_file)
            .unwrap()
            .contains(secrets[0])
    );

    // Masks first, line by line for the multi-line value; groups per phase.
    assert!(stdout.starts_with("::add-mask::"), "{stdout}");
    for line in secrets.iter().flat_map(|s| s.lines()) {
        assert!(
            stdout.contains(&format!("::add-mask::{line}\n")),
            "no mask for {line}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("::group::dropship: package") && stdout.contains("::endgroup::"),
        "{stdout}"
    );

    // Outputs in the multi-line-safe form, and a summary that says what happened.
    let outputs = std::fs::read_to_string(&output).unwrap();
    let release = saw.split('|').nth(1).unwrap().to_owned();
    for name in [
        "release",
        "release-path",
        "hosts",
        "url",
        "artifact-bytes",
        "bytes-sent",
        "duration-ms",
        "deployment-id",
    ] {
        assert!(
            outputs.contains(&format!("{name}<<ghadelimiter_")),
            "{name} missing:\n{outputs}"
        );
    }
    assert!(outputs.contains(&format!("\n{release}\n")), "{outputs}");
    assert!(outputs.contains("\n42\n"), "deployment-id:\n{outputs}");
    let summary_text = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary_text.contains(&format!("release `{release}` ✅ live")),
        "{summary_text}"
    );
    assert!(
        summary_text.contains("is healthy on port"),
        "{summary_text}"
    );
    assert!(
        summary_text.contains("https://site.example"),
        "{summary_text}"
    );

    // The Deployments API got exactly what GitHub expects.
    let seen = github.seen();
    let calls: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(
        calls,
        [
            ("POST".to_owned(), "/repos/acme/site/deployments".to_owned()),
            (
                "POST".to_owned(),
                "/repos/acme/site/deployments/42/statuses".to_owned()
            ),
            (
                "POST".to_owned(),
                "/repos/acme/site/deployments/42/statuses".to_owned()
            ),
        ]
    );
    assert_eq!(
        seen[0].body["ref"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(seen[0].body["environment"], "production");
    assert_eq!(seen[1].body["state"], "in_progress");
    assert_eq!(seen[2].body["state"], "success");
    assert_eq!(seen[2].body["environment_url"], "https://site.example");
    assert_eq!(
        seen[2].body["log_url"],
        "https://github.example/acme/site/actions/runs/99"
    );
    assert!(seen[0].authorization.ends_with(secrets[2]));

    // No secret anywhere but shared/.env (and the masks, which are how Actions hides them).
    let unmasked: String = stdout
        .lines()
        .filter(|l| !l.starts_with("::add-mask::"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut server_files = String::new();
    for entry in walk(&remote) {
        if entry.ends_with("shared/.env") || entry.is_symlink() || !entry.is_file() {
            continue;
        }
        server_files.push_str(&String::from_utf8_lossy(
            &std::fs::read(&entry).unwrap_or_default(),
        ));
    }
    let secret_lines: Vec<&str> = secrets.iter().flat_map(|s| s.lines()).collect();
    assert_no_secret(
        &[
            ("stdout", &unmasked),
            ("stderr", &stderr),
            ("the summary", &summary_text),
            ("the outputs", &outputs),
            ("the process list", &ps_samples),
            ("files on the server", &server_files),
        ],
        &secret_lines,
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Secret values set in the tests of what child processes inherit.
const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nk3y-BODY-not-for-npm\n-----END OPENSSH PRIVATE KEY-----\n";
const PASSPHRASE: &str = "pa55-PHRASE-not-for-npm";
const TOKEN: &str = "ghs_INPUT-TOKEN-not-for-npm";

/// Fails when the environment dump `env` holds a secret or a raw input.
#[track_caller]
fn assert_clean_env(what: &str, env: &str) {
    for secret in ["k3y-BODY-not-for-npm", PASSPHRASE, TOKEN] {
        assert!(!env.contains(secret), "{what} saw `{secret}`:\n{env}");
    }
    for name in ["INPUT_", "DROPSHIP_KEY"] {
        assert!(!env.contains(name), "{what} saw `{name}…`:\n{env}");
    }
}

#[test]
fn the_build_sees_the_env_map_but_no_key_passphrase_token_or_raw_input() {
    use crate::support::runtime::{Behaviour, node_app};
    let work = tempfile::tempdir().unwrap();
    let app = node_app(work.path(), "v1", Behaviour::Healthy);
    let remote = work.path().join("site");
    let mut command = crate::test::dropship();
    command
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_TOKEN", "ghs_workflow_own_token")
        .env("INPUT_HOST", "local")
        .env("INPUT_REMOTE-PATH", &remote)
        .env("INPUT_WORKING-DIRECTORY", &app)
        .env("INPUT_PROCESS-MANAGER", "none")
        .env("INPUT_RELEASE", "r1")
        .env("INPUT_BUILD", "env > build-env.txt")
        .env("INPUT_ENV", "GREETING=hello-from-env\n")
        .env("INPUT_KEY", KEY)
        .env("INPUT_KEY-PASSPHRASE", PASSPHRASE)
        .env("INPUT_GITHUB-TOKEN", TOKEN);
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let env = std::fs::read_to_string(app.join("build-env.txt")).unwrap();
    assert_clean_env("the build", &env);
    for wanted in [
        "GREETING=hello-from-env\n",
        "DROPSHIP_RELEASE=r1\n",
        "GITHUB_TOKEN=ghs_workflow_own_token\n",
        "PATH=",
    ] {
        assert!(env.contains(wanted), "the build lacks `{wanted}`:\n{env}");
    }

    // The CLI face: the key and passphrase in their variables.
    std::fs::remove_file(app.join("build-env.txt")).unwrap();
    crate::test::Test::new()
        .args(["deploy", "--host", "local", "--process-manager", "none"])
        .args(["--release", "r2", "--build", "env > build-env.txt"])
        .arg("--working-directory")
        .arg(&app)
        .arg("--remote-path")
        .arg(&remote)
        .env("DROPSHIP_KEY", KEY)
        .env("DROPSHIP_KEY_PASSPHRASE", PASSPHRASE)
        .env("DROPSHIP_ENV", &format!("SECRET_IN_ENV={TOKEN}\n"))
        .success();
    let env = std::fs::read_to_string(app.join("build-env.txt")).unwrap();
    assert!(env.contains(&format!("SECRET_IN_ENV={TOKEN}\n")), "{env}");
    let raw = env.replace(&format!("SECRET_IN_ENV={TOKEN}\n"), "");
    assert_clean_env("the CLI's build", &raw);
    assert!(!raw.contains("DROPSHIP_ENV"), "{env}");
}

#[test]
fn a_local_deploy_leaves_no_secret_in_pm2s_dump_or_process_env() {
    use crate::support::runtime::{Behaviour, Pm2Home, free_port, node_app};
    let pm2 = Pm2Home::new();
    let work = tempfile::tempdir().unwrap();
    let app = node_app(work.path(), "v1", Behaviour::Healthy);
    let remote = work.path().join("site");
    crate::test::Test::new()
        .args(["deploy", "--host", "local", "--release", "r1"])
        .args(["--app-port", &free_port().to_string()])
        .arg("--working-directory")
        .arg(&app)
        .arg("--remote-path")
        .arg(&remote)
        .env("PM2_HOME", &pm2.path_str())
        .env("DROPSHIP_KEY", KEY)
        .env("DROPSHIP_KEY_PASSPHRASE", PASSPHRASE)
        .env("INPUT_GITHUB-TOKEN", TOKEN)
        .env("GITHUB_TOKEN", TOKEN)
        .success();
    let dump = std::fs::read_to_string(pm2.path().join("dump.pm2")).unwrap();
    assert!(dump.contains("\"name\""), "{dump}");
    assert_clean_env("dump.pm2", &dump);
    assert!(!dump.contains("GITHUB_TOKEN"), "{dump}");
    let list = Command::new("pm2")
        .arg("jlist")
        .env("PM2_HOME", pm2.path())
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let daemon = std::fs::read_to_string(pm2.path().join("pm2.pid")).unwrap();
    let mut pids = vec![daemon.trim().to_owned()];
    pids.extend(
        list.as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].to_string()),
    );
    assert_eq!(pids.len(), 2, "{list}");
    for pid in pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
        assert_clean_env(&format!("process {pid}"), &environ);
        assert!(!environ.contains("GITHUB_TOKEN"), "{environ}");
    }
}

#[test]
fn test_runs_inside_ci_never_write_to_the_jobs_own_github_files() {
    let work = tempfile::tempdir().unwrap();
    let (output, summary) = (work.path().join("output"), work.path().join("summary.md"));
    // This test binary again, as a CI job runs it: with the job's GITHUB_* and
    // INPUT_* variables, running a test that deploys through `Test`.
    let test = "deploy::the_bundled_example_deploys_locally";
    let inner = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--test-threads=1"])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &output)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("INPUT_HOST", "203.0.113.9")
        .output()
        .unwrap();
    let stdout = text(&inner.stdout);
    assert_eq!(
        inner.status.code(),
        Some(0),
        "{stdout}{}",
        text(&inner.stderr)
    );
    assert!(stdout.contains("test result: ok. 1 passed"), "{stdout}");
    assert!(
        !output.exists(),
        "the run appended to GITHUB_OUTPUT:\n{}",
        std::fs::read_to_string(&output).unwrap_or_default()
    );
    assert!(
        !summary.exists(),
        "the run appended to GITHUB_STEP_SUMMARY:\n{}",
        std::fs::read_to_string(&summary).unwrap_or_default()
    );
}
