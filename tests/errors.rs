//! The commonest failures, as a user sees them: each test runs the real binary and
//! compares its whole stderr (message and `hint:`) and its exit status with the text
//! here, so that a change to any of these messages shows up as a diff of this file.
//! What changes from run to run (temporary directories, ports, fingerprints, times)
//! is replaced by a `[NAME]` placeholder before comparing.

use std::fs;
use std::path::Path;

use crate::support::mount::Mounted;
use crate::support::runtime::{Behaviour, Pm2Home, free_port, node_app};
use crate::support::sshd::{KeyKind, Sshd};
use crate::support::{addon, fixture, process, tree};
use crate::test::{Output, Test};

/// Asserts the exit status, and that stderr is `expected` once every `(text, name)`
/// of `vary` is replaced by `[name]`, and run times, throughput, free space and lock
/// ages by `[T]`, `[RATE]`, `[FREE]` and `[SINCE]`.
#[track_caller]
fn assert_stderr(out: &Output, code: i32, vary: &[(&str, &str)], expected: &str) {
    let mut stderr = out.stderr.clone();
    for (text, name) in vary {
        stderr = stderr.replace(text, &format!("[{name}]"));
    }
    let stderr = without_times(&stderr);
    assert!(
        out.code == code && stderr == expected,
        "expected exit status {code} and stderr:\n{expected}\n--- got exit status {}, stderr:\n{stderr}\n--- stdout\n{}",
        out.code,
        out.stdout
    );
}

/// Replaces every run time (`0.12 s`, `35 ms`) with `[T]`, throughput (`2.7 MB/s`) with
/// `[RATE]`, free space (`812.5 MB free`) with `[FREE]` and the start of a lock
/// (`since 1796147437`) with `[SINCE]`.
fn without_times(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let (before, number) = rest.split_at(start);
        out.push_str(before);
        let end = number
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(number.len());
        let after = &number[end..];
        let preceded_by_word = before.ends_with(|c: char| c.is_alphanumeric() || "_-".contains(c));
        if preceded_by_word {
            out.push_str(&number[..end]);
        } else if after.starts_with(" s") || after.starts_with(" ms") {
            out.push_str("[T]");
        } else if after.starts_with(" MB/s") {
            out.push_str("[RATE]");
        } else if after.starts_with(" MB free") {
            out.push_str("[FREE]");
        } else if before.ends_with("since ") {
            out.push_str("[SINCE]");
        } else {
            out.push_str(&number[..end]);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `deploy` of `app` onto this machine, files only.
fn local_deploy(app: &Path, remote: &Path) -> Test {
    Test::new()
        .args(["deploy", "--host", "local", "--process-manager", "none"])
        .arg("--working-directory")
        .arg(app)
        .arg("--remote-path")
        .arg(remote)
}

/// `SHA256:…` of the private key at `path`, as `ssh-keygen -lf` prints it.
fn key_fingerprint(path: &Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_owned()
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_missing_remote_path() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let out = Test::new()
        .args(["deploy", "--host", "local", "--working-directory"])
        .arg(&app)
        .run();
    assert_stderr(
        &out,
        2,
        &[],
        concat!(
            "error: the following required arguments were not provided:\n",
            "  --remote-path <REMOTE_PATH>\n",
            "\n",
            "Usage: dropship deploy --remote-path <REMOTE_PATH> --host <HOST> --working-directory <WORKING_DIRECTORY>\n",
            "\n",
            "For more information, try '--help'.\n",
        ),
    );
}

#[test]
fn an_invalid_option_value() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let out = local_deploy(&app, &work.path().join("app"))
        .args(["--strategy", "blue-green", "--app-port", "3000"])
        .run();
    assert_stderr(
        &out,
        2,
        &[],
        concat!(
            "error: input `app-port`: `3000`: the `blue-green` strategy needs 2 distinct port(s)\n",
            "  hint: e.g. `3000` for restart, `3000,3001` for blue-green\n",
        ),
    );
}

#[test]
fn a_system_directory_as_remote_path() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let out = local_deploy(&app, Path::new("/etc")).run();
    assert_stderr(
        &out,
        2,
        &[],
        concat!(
            "error: input `remote-path`: `/etc` is a system directory; dropship needs a directory of the app's own\n",
            "  hint: use an absolute directory of the app's own, e.g. `/srv/myapp`\n",
        ),
    );
}

#[test]
fn no_standalone_build_to_ship() {
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    fs::create_dir_all(app.join(".next")).unwrap();
    let out = local_deploy(&app, &work.path().join("srv")).run();
    assert_stderr(
        &out,
        2,
        &[(&text(work.path()), "WORK")],
        concat!(
            "error: nothing to ship: no Next.js standalone build in `[WORK]/app` (looked for `.next/standalone`)\n",
            "  hint: build first with `output: 'standalone'` in next.config.js (or set `build`), or set `source` to the directory to ship\n",
        ),
    );
}

#[test]
fn a_failing_build_command() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let out = local_deploy(&app, &work.path().join("srv"))
        .args(["--build", "echo compiling >&2; exit 3"])
        .run();
    assert_stderr(
        &out,
        1,
        &[(&text(work.path()), "WORK")],
        concat!(
            "build: echo compiling >&2; exit 3\n",
            "compiling\n",
            "error: build command `echo compiling >&2; exit 3` failed: exit status: 3\n",
            "  hint: run the build command locally to see why it fails\n",
        ),
    );
}

#[test]
fn a_malformed_env_line() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let env = work.path().join("production.env");
    fs::write(&env, "DATABASE_URL=postgres://db/app\nAPI KEY=hunter2\n").unwrap();
    let out = local_deploy(&app, &work.path().join("srv"))
        .arg("--env-file")
        .arg(&env)
        .run();
    assert_stderr(
        &out,
        2,
        &[(&text(work.path()), "WORK")],
        concat!(
            "error: input `env`: line 2: expected KEY=value (no `=` after the key)\n",
            "  hint: write one KEY=value a line; put values with spaces, `#` or new lines in double quotes\n",
        ),
    );
}

#[test]
fn a_release_that_already_exists() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("srv");
    local_deploy(&app, &remote)
        .args(["--release", "r1"])
        .success();
    let out = local_deploy(&app, &remote).args(["--release", "r1"]).run();
    assert_stderr(
        &out,
        2,
        &[(&text(work.path()), "WORK")],
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "error: on local: release `r1` already exists on this host\n",
            "  hint: deploy with another `release` id, or roll back to it with `dropship rollback --to`\n",
        ),
    );
}

#[test]
fn a_rollback_to_a_release_that_is_not_there() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("srv");
    local_deploy(&app, &remote)
        .args(["--release", "r1"])
        .success();
    let out = Test::new()
        .args(["rollback", "--host", "local", "--process-manager", "none"])
        .args(["--to", "r0", "--remote-path"])
        .arg(&remote)
        .run();
    assert_stderr(
        &out,
        2,
        &[(&text(work.path()), "WORK")],
        concat!(
            "error: on local: release `r0` does not exist on this host (it has: r1)\n",
            "  hint: pick one from `dropship releases`\n",
        ),
    );
}

#[test]
fn a_deploy_that_waits_for_the_lock_too_long() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("srv");
    let (mut holder, holder_stdin) = crate::lock::hold_lock(&remote);
    let pid = holder.id().to_string();
    let out = local_deploy(&app, &remote)
        .args(["--lock-timeout", "1", "--release", "r1"])
        .run();
    drop(holder_stdin);
    let _ = holder.wait();
    assert_stderr(
        &out,
        3,
        &[(&text(work.path()), "WORK"), (&pid, "PID")],
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "local: waiting for another deploy to finish (held by alice@laptop (deploying holder-1) (pid [PID], since [SINCE]); [T] s so far)\n",
            "error: on local: another deploy holds the lock of [WORK]/srv (held by alice@laptop (deploying holder-1) (pid [PID], since [SINCE])); waited [T] s\n",
            "  hint: wait for it to finish, or raise `lock-timeout`; a lock is released automatically when its deploy exits\n",
        ),
    );
}

#[test]
fn a_release_that_fails_its_health_check() {
    let work = tempfile::tempdir().unwrap();
    let pm2 = Pm2Home::new();
    let port = free_port();
    let app = node_app(work.path(), "v1", Behaviour::Unhealthy);
    let out = Test::new()
        .args(["deploy", "--host", "local", "--release", "r1"])
        .args(["--health-timeout", "2", "--app-port", &port.to_string()])
        .arg("--working-directory")
        .arg(&app)
        .arg("--remote-path")
        .arg(work.path().join("srv"))
        .env("PM2_HOME", &pm2.path_str())
        .run();
    assert_stderr(
        &out,
        1,
        &[(&text(work.path()), "WORK"), (&port.to_string(), "PORT")],
        concat!(
            "package: Next.js standalone build (.next/standalone, public → public) — 2 files, 0.0 MB, server.js in `.`\n",
            "local: ready (live: nothing yet, [FREE] MB free)\n",
            "local: staged 2 new and 0 unchanged files: 0.0 MB sent in [T] s ([RATE] MB/s)\n",
            "local: starting r1 on port [PORT]\n",
            "error: on local: release r1 did not become healthy on port [PORT] within [T] s: GET / on port [PORT] answered 500\n",
            "last log lines of the app:\n",
            "------------------------------------------------------------\n",
            "listening, but the database is unreachable\n",
            "------------------------------------------------------------\n",
            "  hint: fix the app (the log above says why), check `start` and `health-path`, or raise `health-timeout`; the previous release keeps serving\n",
        ),
    );
}

/// Over SSH: `deploy` of the fixture app with `args`; the sshd's own key unless `key` is given.
fn ssh_deploy(sshd: &Sshd, work: &Path, args: &[&str]) -> Output {
    let app = fixture::nextjs_app(work, "v1");
    Test::new()
        .args(["deploy", "--process-manager", "none", "--release", "r1"])
        .args(["--host", &sshd.host_spec(), "--remote-path"])
        .arg(work.join("srv"))
        .arg("--working-directory")
        .arg(&app)
        .args(args)
        .env(
            "DROPSHIP_AGENT_BINARY",
            &process::lean_agent().display().to_string(),
        )
        .run()
}

#[test]
fn an_unpinned_host_key() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let key = text(&sshd.user_key_path());
    let out = ssh_deploy(&sshd, work.path(), &["--key-file", &key]);
    let host = sshd.host_spec();
    assert_stderr(
        &out,
        2,
        &[
            (&sshd.known_hosts_line(), "KNOWN_HOSTS_LINE"),
            (&sshd.host_fingerprint(), "FINGERPRINT"),
            (&text(work.path()), "WORK"),
            (&host, "HOST"),
        ],
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "error: host key of [HOST] is not pinned (server key [FINGERPRINT])\n",
            "  hint: if this is your server, pin its key: set `host-fingerprint` to [FINGERPRINT]\n",
            "      or add this line to `known-hosts`:\n",
            "      [KNOWN_HOSTS_LINE]\n",
            "      (compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the server)\n",
        ),
    );
}

#[test]
fn a_changed_host_key() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let key = text(&sshd.user_key_path());
    let pinned = format!("SHA256:{}", "A".repeat(43));
    let out = ssh_deploy(
        &sshd,
        work.path(),
        &["--key-file", &key, "--host-fingerprint", &pinned],
    );
    let host = sshd.host_spec();
    assert_stderr(
        &out,
        2,
        &[
            (&sshd.host_fingerprint(), "FINGERPRINT"),
            (&text(work.path()), "WORK"),
            (&host, "HOST"),
        ],
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "error: host key of [HOST] does not match the pinned key: expected SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA, the server presented [FINGERPRINT] (ssh-ed25519)\n",
            "  hint: do not deploy until you know why the key changed: if the server was rebuilt, pin its new key; otherwise someone may be intercepting the connection\n",
        ),
    );
}

#[test]
fn a_key_the_server_does_not_accept() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let other = sshd.extra_key(KeyKind::Ed25519, None, false);
    let key_fingerprint = key_fingerprint(&other);
    let other = text(&other);
    let fingerprint = sshd.host_fingerprint();
    let out = ssh_deploy(
        &sshd,
        work.path(),
        &["--key-file", &other, "--host-fingerprint", &fingerprint],
    );
    let host = sshd.host_spec();
    assert_stderr(
        &out,
        2,
        &[
            (&text(work.path()), "WORK"),
            (&host, "HOST"),
            (&sshd.user(), "USER"),
            (&key_fingerprint, "KEY"),
        ],
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "error: [HOST] refused the ed25519 key [KEY] for user `[USER]` (Permission denied (publickey))\n",
            "  hint: check that the public half of this key is in ~[USER]/.ssh/authorized_keys on the server, that `user` is right, and that the secret holds the whole private key (with its BEGIN/END lines)\n",
        ),
    );
}

#[test]
fn a_key_that_is_not_a_private_key() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("deploy_key");
    fs::write(
        &key,
        fs::read_to_string(sshd.user_key_path().with_extension("pub")).unwrap(),
    )
    .unwrap();
    let fingerprint = sshd.host_fingerprint();
    let out = ssh_deploy(
        &sshd,
        work.path(),
        &[
            "--key-file",
            &text(&key),
            "--host-fingerprint",
            &fingerprint,
        ],
    );
    assert_stderr(
        &out,
        2,
        &[(&text(work.path()), "WORK")],
        concat!(
            "error: cannot use the private key: this is a public key (one line starting with `ssh-`), not the private key\n",
            "  hint: paste the whole private key, from `-----BEGIN … PRIVATE KEY-----` to its END line, into the secret (it is the file without .pub)\n",
        ),
    );
}

#[test]
fn a_host_that_refuses_the_connection() {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = fixture::nextjs_app(work.path(), "v1");
    let key = work.path().join("id");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success(), "ssh-keygen");
    let out = Test::new()
        .args(["deploy", "--process-manager", "none", "--release", "r1"])
        .args([
            "--host",
            &format!("deploy@127.0.0.1:{port}"),
            "--remote-path",
            "/srv/www",
        ])
        .args(["--host-fingerprint", &format!("SHA256:{}", "A".repeat(43))])
        .arg("--key-file")
        .arg(&key)
        .arg("--working-directory")
        .arg(&app)
        .run();
    assert_stderr(
        &out,
        1,
        &[(&text(work.path()), "WORK"), (&port.to_string(), "PORT")],
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "error: cannot connect to deploy@127.0.0.1:[PORT]: Connection refused (os error 111)\n",
            "  hint: check the host name and port, and that the firewall or security group lets this machine reach SSH\n",
        ),
    );
}
/// Issue 10, defect 10b: a host whose "agent" prints without end and never a newline
/// (not dropship: a shell start-up file, another program) must not fill the client's
/// memory. The client gives up after a bounded line, naming the host.
#[test]
fn a_host_whose_agent_prints_endlessly_without_a_newline() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let key = text(&sshd.user_key_path());
    let fingerprint = sshd.host_fingerprint();
    let args = ["--key-file", &key, "--host-fingerprint", &fingerprint];
    assert_eq!(ssh_deploy(&sshd, work.path(), &args).code, 0);
    let bin = work.path().join("srv/.dropship/bin");
    let agent = fs::read_dir(&bin)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .next()
        .expect("the installed agent");
    // The script records its PID, so the test can stop it, and ends by itself once
    // nobody reads its output (`tr` dies of SIGPIPE and the loop stops).
    let pid_file = work.path().join("endless.pid");
    fs::write(
        &agent,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nwhile head -c 262144 /dev/zero | tr '\\0' x; do sleep 0.01; done\n",
            pid_file.display()
        ),
    )
    .unwrap();

    let app = fixture::nextjs_app(work.path(), "v2");
    let child = Test::new()
        .args(["deploy", "--process-manager", "none", "--release", "r2"])
        .args(["--host", &sshd.host_spec(), "--remote-path"])
        .arg(work.path().join("srv"))
        .arg("--working-directory")
        .arg(&app)
        .args(args)
        .env(
            "DROPSHIP_AGENT_BINARY",
            &process::lean_agent().display().to_string(),
        )
        .spawn();
    let mut watched = process::Watched::new(child);
    let ended = watched.wait(std::time::Duration::from_secs(60));
    let stderr: String = watched
        .stderr()
        .lines()
        .map(|line| format!("{}\n", line.split_once("] ").map_or(line, |(_, l)| l)))
        .collect();
    let out = Output {
        code: match ended {
            process::Ended::Exited(code) => code,
            process::Ended::Killed => -1,
        },
        stdout: watched.stdout(),
        stderr,
    };
    if let Some(pid) = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
    {
        process::signal(pid, libc::SIGKILL);
    }
    let host = sshd.host_spec();
    assert_stderr(
        &out,
        1,
        &[(&text(work.path()), "WORK"), (&host, "HOST")],
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "error: the agent on [HOST] printed more than 4 MiB without a newline: its output is not dropship's\n",
            "  hint: make sure nothing else answers for the agent: the deploy user's shell start-up files (~/.bashrc, ~/.profile) must print nothing for non-interactive sessions, and `remote-path`/.dropship/bin/ must hold only dropship's agents\n",
        ),
    );
    assert!(!work.path().join("srv/releases/r2").exists());
}

/// What this machine is, as the preflight names it: `(glibc version, Node version)`,
/// to be replaced by `[GLIBC]` and `[NODE]`.
fn this_platform() -> (String, String) {
    let run = |program: &str, arg: &str| {
        let out = std::process::Command::new(program)
            .arg(arg)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let glibc = run("getconf", "GNU_LIBC_VERSION");
    let glibc = glibc.strip_prefix("glibc ").unwrap().to_owned();
    (glibc, run("node", "--version"))
}

/// The fixture app with native addons that fit this x86_64 glibc machine, and
/// sharp variants for other platforms besides (which are fine).
fn app_with_addons(work: &Path) -> std::path::PathBuf {
    let app = fixture::nextjs_app(work, "v1");
    let nm = app.join(".next/standalone/node_modules");
    addon::real(
        work,
        &nm.join("@img/sharp-linux-x64/lib/sharp-linux-x64.node"),
    );
    addon::real(
        work,
        &nm.join("@img/sharp-libvips-linux-x64/lib/libvips-cpp.so.42"),
    );
    addon::aarch64(
        work,
        &nm.join("@img/sharp-linux-arm64/lib/sharp-linux-arm64.node"),
    );
    addon::macos(&nm.join("@img/sharp-darwin-arm64/lib/sharp-darwin-arm64.node"));
    addon::real(
        work,
        &nm.join("better-sqlite3/build/Release/better_sqlite3.node"),
    );
    app
}

/// The platform replaced in the texts: `[WORK]`, `[GLIBC]`, `[NODE]`.
fn platform_vary(work: &Path) -> Vec<(String, &'static str)> {
    let (glibc, node) = this_platform();
    vec![
        (text(work), "WORK"),
        (format!("glibc {glibc}"), "GLIBC"),
        (node, "NODE"),
    ]
}

fn vary_refs<'a>(vary: &'a [(String, &'static str)]) -> Vec<(&'a str, &'static str)> {
    vary.iter()
        .map(|(text, name)| (text.as_str(), *name))
        .collect()
}

#[test]
fn a_native_addon_built_for_another_cpu() {
    let work = tempfile::tempdir().unwrap();
    let app = app_with_addons(work.path());
    let remote = work.path().join("srv");
    let vary = platform_vary(work.path());
    // The verdict on a release that fits is logged at debug level.
    let out = local_deploy(&app, &remote)
        .args(["--release", "r1"])
        .env("DROPSHIP_LOG", "debug")
        .success();
    let (glibc, node) = this_platform();
    let fits = format!(
        "local: preflight: the release can run on linux x86_64, glibc {glibc}, Node {node}\n"
    );
    assert!(out.stderr.contains(&fits), "{}", out.stderr);

    addon::aarch64(
        work.path(),
        &app.join(".next/standalone/node_modules/canvas/build/Release/canvas.node"),
    );
    let before = tree::snapshot(&remote);
    let expected = concat!(
        "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 28 files, 0.3 MB, server.js in `.`\n",
        "error: the release cannot run on local (linux x86_64, [GLIBC], Node [NODE]):\n",
        "  - `node_modules/canvas/build/Release/canvas.node` is built for aarch64\n",
        "  hint: build on a linux x86_64 runner with glibc, so that npm installs or compiles the addon for the server\n",
    );
    let dry = local_deploy(&app, &remote)
        .args(["--release", "r2", "--dry-run"])
        .run();
    assert_stderr(&dry, 2, &vary_refs(&vary), expected);
    let out = local_deploy(&app, &remote).args(["--release", "r2"]).run();
    assert_stderr(&out, 2, &vary_refs(&vary), expected);
    // Only the lock file's note of its last holder is rewritten.
    let without_lock = |mut tree: std::collections::BTreeMap<String, String>| {
        tree.remove(".dropship/lock");
        tree
    };
    assert_eq!(
        without_lock(before),
        without_lock(tree::snapshot(&remote)),
        "the server changed"
    );
}

#[test]
fn a_release_with_only_another_platforms_sharp() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let nm = app.join(".next/standalone/node_modules");
    addon::aarch64(
        work.path(),
        &nm.join("@img/sharp-linux-arm64/lib/sharp-linux-arm64.node"),
    );
    addon::aarch64(
        work.path(),
        &nm.join("@img/sharp-libvips-linux-arm64/lib/libvips-cpp.so.42"),
    );
    let remote = work.path().join("srv");
    let vary = platform_vary(work.path());
    let out = local_deploy(&app, &remote).args(["--release", "r1"]).run();
    assert_stderr(
        &out,
        2,
        &vary_refs(&vary),
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 24 files, 0.2 MB, server.js in `.`\n",
            "error: the release cannot run on local (linux x86_64, [GLIBC], Node [NODE]):\n",
            "  - `node_modules/@img/sharp-linux-arm64` is sharp for linux-arm64 only; this server needs `@img/sharp-linux-x64`\n",
            "  - `node_modules/@img/sharp-libvips-linux-arm64` is sharp's libvips for linux-arm64 only; this server needs `@img/sharp-libvips-linux-x64`\n",
            "  hint: in `build`, install the server's variant: `npm install --os=linux --cpu=x64 --libc=glibc sharp`\n",
        ),
    );
    assert!(!remote.join("releases/r1").exists());
}

#[test]
fn addons_built_for_musl_or_a_newer_glibc() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let nm = app.join(".next/standalone/node_modules");
    addon::musl(work.path(), &nm.join("argon2/build/Release/argon2.node"));
    addon::newer_glibc(
        work.path(),
        &nm.join("bcrypt/build/Release/bcrypt_lib.node"),
    );
    let remote = work.path().join("srv");
    let vary = platform_vary(work.path());
    let (glibc, _) = this_platform();
    let out = local_deploy(&app, &remote).args(["--release", "r1"]).run();
    let expected = format!(
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 24 files, 0.2 MB, server.js in `.`\n",
            "error: the release cannot run on local (linux x86_64, [GLIBC], Node [NODE]):\n",
            "  - `node_modules/argon2/build/Release/argon2.node` is built for musl libc (Alpine); this server has glibc\n",
            "  - `node_modules/bcrypt/build/Release/bcrypt_lib.node` needs glibc 99.0; this server has {glibc}\n",
            "  hint: build on a linux x86_64 runner with glibc, so that npm installs or compiles the addon for the server\n",
            "        build on a runner whose glibc is {glibc} or older (an older runner image, or a container of the server's distribution), or upgrade the server\n",
        ),
        glibc = glibc
    );
    assert_stderr(&out, 2, &vary_refs(&vary), &expected);
    assert!(!remote.join("releases/r1").exists());
}

#[test]
fn a_release_that_wants_a_newer_node() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    fs::write(
        app.join(".next/standalone/package.json"),
        r#"{ "name": "fixture-app", "private": true, "engines": { "node": ">=99" } }"#,
    )
    .unwrap();
    let remote = work.path().join("srv");
    let vary = platform_vary(work.path());
    let out = local_deploy(&app, &remote).args(["--release", "r1"]).run();
    assert_stderr(
        &out,
        2,
        &vary_refs(&vary),
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "error: the release cannot run on local (linux x86_64, [GLIBC], Node [NODE]):\n",
            "  - `package.json` wants Node `>=99` (`engines.node`); the server runs [NODE]\n",
            "  hint: install a Node that satisfies `>=99` for the deploy user on the server (the first `node` on its PATH, e.g. with nvm), or change `engines.node`\n",
        ),
    );
    assert!(!remote.join("releases/r1").exists());
}

/// The same refusal over SSH: the agent reports the platform from the login
/// session (its `getconf`, its `node`), and the release never leaves the runner.
#[test]
fn a_native_addon_for_another_cpu_over_ssh() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    addon::aarch64(
        work.path(),
        &app.join(".next/standalone/node_modules/canvas/build/Release/canvas.node"),
    );
    let remote = work.path().join("srv");
    let mut out = Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--release", "r1"])
        .run();
    // The agent is installed first (its size varies with the build): it has to say what the server is.
    assert!(
        out.stderr.contains(": installing the agent ("),
        "{}",
        out.stderr
    );
    out.stderr = out
        .stderr
        .lines()
        .filter(|line| !line.contains(": installing the agent ("))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut vary = platform_vary(work.path());
    vary.push((sshd.host_spec(), "HOST"));
    assert_stderr(
        &out,
        2,
        &vary_refs(&vary),
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 23 files, 0.2 MB, server.js in `.`\n",
            "error: the release cannot run on [HOST] (linux x86_64, [GLIBC], Node [NODE]):\n",
            "  - `node_modules/canvas/build/Release/canvas.node` is built for aarch64\n",
            "  hint: build on a linux x86_64 runner with glibc, so that npm installs or compiles the addon for the server\n",
        ),
    );
    assert!(!remote.join("releases/r1").exists());
    assert!(!remote.join("current").exists());
}

/// Real sharp packages, as npm installs them on an x64 and on an arm64 runner:
/// the arm64 ones alone are refused on this x86_64 server (the addon inside is
/// not even read: the family says it); with the x64 ones beside them (their
/// addon and libvips checked as ELF files) the release deploys.
#[test]
fn real_sharp_for_arm64_only_is_refused() {
    let (x64, arm64) = (addon::sharp("x64"), addon::sharp("arm64"));
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let img = app.join(".next/standalone/node_modules/@img");
    tree::copy_dir(&arm64.join("@img"), &img);
    let remote = work.path().join("srv");
    let vary = platform_vary(work.path());
    let out = local_deploy(&app, &remote).args(["--release", "r1"]).run();
    assert_stderr(
        &out,
        2,
        &vary_refs(&vary),
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 32 files, 16.7 MB, server.js in `.`\n",
            "error: the release cannot run on local (linux x86_64, [GLIBC], Node [NODE]):\n",
            "  - `node_modules/@img/sharp-linux-arm64` is sharp for linux-arm64 only; this server needs `@img/sharp-linux-x64`\n",
            "  - `node_modules/@img/sharp-libvips-linux-arm64` is sharp's libvips for linux-arm64 only; this server needs `@img/sharp-libvips-linux-x64`\n",
            "  hint: in `build`, install the server's variant: `npm install --os=linux --cpu=x64 --libc=glibc sharp`\n",
        ),
    );
    assert!(!remote.join("releases/r1").exists());

    tree::copy_dir(&x64.join("@img"), &img);
    local_deploy(&app, &remote)
        .args(["--release", "r1"])
        .success();
    assert!(
        remote
            .join("current/node_modules/@img/sharp-linux-x64/lib/sharp-linux-x64.node")
            .exists()
    );
}

/// In a monorepo both the app's `package.json` (beside its `server.js`) and the
/// workspace root's count.
#[test]
fn a_monorepo_whose_root_wants_a_newer_node() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_monorepo_app(&work.path().join("repo"));
    fs::write(
        app.join(".next/standalone/package.json"),
        r#"{ "name": "fixture-monorepo", "private": true, "engines": { "node": "^14.17 || ^16" } }"#,
    )
    .unwrap();
    let remote = work.path().join("srv");
    let vary = platform_vary(work.path());
    let out = local_deploy(&app, &remote).args(["--release", "r1"]).run();
    assert_stderr(
        &out,
        2,
        &vary_refs(&vary),
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → apps/web/.next/static, public → apps/web/public) — 24 files, 0.2 MB, server.js in `apps/web`\n",
            "error: the release cannot run on local (linux x86_64, [GLIBC], Node [NODE]):\n",
            "  - `package.json` wants Node `^14.17 || ^16` (`engines.node`); the server runs [NODE]\n",
            "  hint: install a Node that satisfies `^14.17 || ^16` for the deploy user on the server (the first `node` on its PATH, e.g. with nvm), or change `engines.node`\n",
        ),
    );
}

/// A server whose Node cannot start (an official Node 18+ on a glibc older than
/// 2.28): the release is refused with what `node` said.
#[test]
fn a_server_whose_node_does_not_run() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let bin = work.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let node = bin.join("node");
    fs::write(
        &node,
        "#!/bin/sh\necho \"node: /lib/x86_64-linux-gnu/libc.so.6: version \\`GLIBC_2.28' not found (required by node)\" >&2\nexit 1\n",
    )
    .unwrap();
    fs::set_permissions(&node, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let remote = work.path().join("srv");
    let vary = platform_vary(work.path());
    let out = local_deploy(&app, &remote)
        .args(["--release", "r1"])
        .env("PATH", &path)
        .run();
    assert_stderr(
        &out,
        2,
        &vary_refs(&vary),
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "error: the release cannot run on local (linux x86_64, [GLIBC], Node that does not run):\n",
            "  - `node` (the server's) does not run: `[WORK]/bin/node --version` failed (exit status: 1): node: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.28' not found (required by node)\n",
            "  hint: install a Node that runs on this server for the deploy user (e.g. with nvm); its official builds need glibc 2.28 or newer since Node 18\n",
        ),
    );
    assert!(!remote.join("releases/r1").exists());
}

/// Variants for other platforms are fine wherever the package manager put
/// them: pnpm keeps each in its own `node_modules/.pnpm/<name>@<version>/`,
/// and older npm installs the musl variant of a package beside the glibc one.
#[test]
fn other_platforms_variants_in_a_pnpm_tree_are_fine() {
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let pnpm = app.join(".next/standalone/node_modules/.pnpm");
    let sharp = |platform: &str| {
        pnpm.join(format!(
            "@img+sharp-{platform}@0.33.5/node_modules/@img/sharp-{platform}/lib/sharp-{platform}.node"
        ))
    };
    addon::real(work.path(), &sharp("linux-x64"));
    addon::macos(&sharp("darwin-arm64"));
    addon::aarch64(work.path(), &sharp("linux-arm64"));
    let watcher = |abi: &str| {
        pnpm.join(format!(
            "@parcel+watcher-linux-x64-{abi}@2.4.1/node_modules/@parcel/watcher-linux-x64-{abi}/watcher.node"
        ))
    };
    addon::real(work.path(), &watcher("glibc"));
    addon::musl(work.path(), &watcher("musl"));
    let remote = work.path().join("srv");
    local_deploy(&app, &remote)
        .args(["--release", "r1"])
        .success();
}

#[test]
#[ignore = "needs root: a tmpfs mounted noexec as remote-path"]
fn a_remote_path_where_programs_cannot_run() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let srv = work.path().join("srv");
    let mounted = Mounted::tmpfs(&srv, "64m");
    mounted.remount("noexec");
    let key = text(&sshd.user_key_path());
    let known = text(&sshd.known_hosts_path());
    let out = ssh_deploy(
        &sshd,
        work.path(),
        &["--key-file", &key, "--known-hosts-file", &known],
    );
    let host = sshd.host_spec();
    // The agent's size and file name change with every build.
    let install = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("{host}: installing the agent (")))
        .unwrap_or("no install line")
        .to_owned();
    assert_stderr(
        &out,
        1,
        &[
            (&install, "INSTALL"),
            (&text(work.path()), "WORK"),
            (&host, "HOST"),
        ],
        concat!(
            "package: Next.js standalone build (.next/standalone, .next/static → .next/static, public → public) — 22 files, 0.2 MB, server.js in `.`\n",
            "[INSTALL]\n",
            "error: the agent uploaded to [HOST] cannot be run\n",
            "  hint: is `remote-path` on a filesystem mounted `noexec`? Choose a `remote-path` where the deploy user may run programs\n",
        ),
    );
    // Nothing of a release was left there.
    assert!(!srv.join("current").exists() && !srv.join("releases").exists());
}
