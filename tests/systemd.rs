//! `process-manager: systemd` with a real `systemd --user` per test: blue-green
//! through nginx under load with zero failed requests, a crashing release put
//! back by the restart strategy, an unreachable user manager refused before
//! anything changes, and `doctor` over SSH.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::runtime::{Behaviour, Load, free_port, get, node_app};
use crate::support::site;
use crate::support::sshd::Sshd;
use crate::support::systemd::UserManager;
use crate::test::{Output, Test, ssh_args};

/// A site run by systemd user units.
struct Site(site::Site);

impl std::ops::Deref for Site {
    type Target = site::Site;
    fn deref(&self) -> &site::Site {
        &self.0
    }
}

impl Site {
    fn new(blue_green: bool) -> Site {
        Site(site::Site::new(blue_green))
    }

    /// `deploy --host local --process-manager systemd`, blue-green when there is nginx.
    fn deploy(&self, manager: &UserManager, app: &Path, release: &str) -> Test {
        session(
            Test::new()
                .arg("deploy")
                .args(self.run_args(20))
                .args(["--process-manager", "systemd", "--release", release])
                .arg("--working-directory")
                .arg(app),
            manager,
        )
    }
}

/// `test` with the environment of a session of the manager's user.
fn session(test: Test, manager: &UserManager) -> Test {
    manager
        .env()
        .iter()
        .fold(test, |test, (key, value)| test.env(key, value))
}

#[track_caller]
fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected `{needle}` in:\n{text}");
}

/// `unit` is running and enabled, and its file starts `release` from its real directory.
#[track_caller]
fn assert_runs(manager: &UserManager, site: &Site, unit: &str, release: &str) {
    assert_eq!(manager.property(unit, "ActiveState"), "active", "{unit}");
    assert_eq!(manager.is_enabled(unit), "enabled", "{unit}");
    let text = fs::read_to_string(manager.unit_file(unit)).unwrap();
    let dir = site.remote.join("releases").join(release);
    assert_contains(&text, &format!("WorkingDirectory={}\n", dir.display()));
    assert!(
        !text.contains("/current"),
        "started through `current`:\n{text}"
    );
    assert!(
        !text.contains("s3cret"),
        "an env value is in the unit:\n{text}"
    );
}

/// `unit` is stopped, disabled and its file removed.
#[track_caller]
fn assert_gone(manager: &UserManager, unit: &str) {
    assert_ne!(manager.property(unit, "ActiveState"), "active", "{unit}");
    assert_ne!(manager.is_enabled(unit), "enabled", "{unit}");
    assert!(!manager.unit_file(unit).exists(), "{unit} still has a file");
}

#[test]
#[ignore = "needs root: a systemd user manager in a mount namespace with its own cgroups"]
fn systemd_blue_green_deploys_and_a_rollback_lose_no_request_under_load() {
    let manager = UserManager::start();
    let site = Site::new(true);
    fs::create_dir_all(site.remote.join("shared")).unwrap();
    fs::write(site.remote.join("shared/.env"), "GREETING=s3cret-42\n").unwrap();
    let nginx_port = site.nginx.as_ref().unwrap().port;
    site.deploy(&manager, &site.app("v1", Behaviour::Healthy), "r1")
        .success();
    assert!(
        site.answer().starts_with("v1 s3cret-42 127.0.0.1"),
        "{}",
        site.answer()
    );
    let unit = |port: u16| format!("dropship-site-{port}.service");
    assert_runs(&manager, &site, &unit(site.ports.0), "r1");

    let load = Load::start(nginx_port, 4, Duration::from_secs(240));
    let mut switches = Vec::new();
    for n in 2..=6 {
        let variant = format!("v{n}");
        let started = Instant::now();
        let out = site
            .deploy(
                &manager,
                &site.app(&variant, Behaviour::Healthy),
                &format!("r{n}"),
            )
            .success();
        switches.push(started.elapsed());
        assert_contains(&out.stderr, "nginx sends new requests to port");
        site::print_switch_steps(&out.stderr);
        assert!(site.answer().starts_with(&variant), "{}", site.answer());
        // Even releases run on the second port, odd ones on the first.
        let (live, idle) = if n % 2 == 0 {
            (site.ports.1, site.ports.0)
        } else {
            (site.ports.0, site.ports.1)
        };
        assert_runs(&manager, &site, &unit(live), &format!("r{n}"));
        assert_gone(&manager, &unit(idle));
    }
    // No run options: the rollback runs the way the last deploy ran (systemd, blue-green).
    let started = Instant::now();
    let out = session(
        Test::new()
            .args(["rollback", "--host", "local", "--remote-path"])
            .arg(&site.remote),
        &manager,
    )
    .success();
    switches.push(started.elapsed());
    assert_contains(&out.stderr, "live: r5 (was r6)");
    assert_contains(&out.stderr, "nginx sends new requests to port");
    assert!(site.answer().starts_with("v5"), "{}", site.answer());
    let (ok, failed, errors) = load.stop();

    eprintln!(
        "systemd blue-green: 5 deploys + 1 rollback under load: {ok} requests, {failed} failed; switch times {switches:?}"
    );
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok > 200, "the load generator barely ran: {ok}");
    assert_runs(&manager, &site, &unit(site.ports.0), "r5");
    assert_gone(&manager, &unit(site.ports.1));
    let active: Vec<_> = manager
        .dropship_units()
        .into_iter()
        .filter(|(_, state)| state == "active")
        .collect();
    assert_eq!(active, vec![(unit(site.ports.0), "active".to_owned())]);
    let wants = manager
        .home()
        .join(".config/systemd/user/default.target.wants");
    let enabled: Vec<_> = fs::read_dir(wants)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        enabled,
        vec![unit(site.ports.0)],
        "only the live unit starts at boot"
    );
}

/// `restart` under load with systemd: the single port refuses requests while
/// the unit restarts (the figure to compare with blue-green's zero).
#[test]
#[ignore = "needs root: a systemd user manager in a mount namespace with its own cgroups"]
fn systemd_restart_strategy_under_load_replaces_the_unit() {
    let manager = UserManager::start();
    let site = Site::new(false);
    site.deploy(&manager, &site.app("v1", Behaviour::Healthy), "r1")
        .success();
    let load = Load::start(site.ports.0, 4, Duration::from_secs(120));
    for n in 2..=6 {
        site.deploy(
            &manager,
            &site.app(&format!("v{n}"), Behaviour::Healthy),
            &format!("r{n}"),
        )
        .success();
    }
    let (ok, failed, _) = load.stop();
    eprintln!("systemd restart: 5 deploys under load: {ok} requests, {failed} failed");
    assert!(ok > 200, "the load generator barely ran: {ok}");
    assert!(site.answer().starts_with("v6"), "{}", site.answer());
    assert_runs(&manager, &site, "dropship-site.service", "r6");
}

#[test]
#[ignore = "needs root: a systemd user manager in a mount namespace with its own cgroups"]
fn systemd_restart_with_a_crashing_release_ends_with_the_old_release_running() {
    let manager = UserManager::start();
    let site = Site::new(false);
    site.deploy(&manager, &site.app("v1", Behaviour::Healthy), "r1")
        .success();
    assert_runs(&manager, &site, "dropship-site.service", "r1");
    let started = Instant::now();
    let out: Output = site
        .deploy(&manager, &site.app("crash", Behaviour::Crashes), "r2")
        .status(1);
    eprintln!(
        "systemd restart: the crashing release was refused and r1 put back in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_contains(&out.stderr, "did not become healthy");
    assert_contains(&out.stderr, "restarted");
    assert_contains(&out.stderr, "boom: cannot find module ./missing-chunk.js");
    assert_contains(&out.stderr, "putting r1 back");
    assert_eq!(site.live(), "releases/r1");
    assert!(site.answer().starts_with("v1"), "{}", site.answer());
    assert!(!site.remote.join("releases/r2").exists());
    assert_runs(&manager, &site, "dropship-site.service", "r1");
    assert_eq!(
        manager.property("dropship-site.service", "NRestarts"),
        "0",
        "the unit was rewritten for r1 and started afresh"
    );
}

#[test]
fn an_unreachable_user_manager_fails_before_anything_changes() {
    let site = Site::new(false);
    let nowhere = site.work.path().join("run-user");
    fs::create_dir(&nowhere).unwrap();
    let home = site.work.path().join("home");
    let deploy = |release: &str, pm: &str| {
        Test::new()
            .args(["deploy", "--host", "local", "--release", release])
            .args(["--process-manager", pm, "--app-port"])
            .arg(site.ports.0.to_string())
            .arg("--working-directory")
            .arg(site.app(release, Behaviour::Healthy))
            .arg("--remote-path")
            .arg(&site.remote)
            .env("HOME", &home.display().to_string())
            .env("XDG_RUNTIME_DIR", &nowhere.display().to_string())
    };
    deploy("r1", "none").success();
    let out = deploy("r2", "systemd").status(1);
    assert_contains(&out.stderr, "cannot reach the systemd user manager of");
    assert_contains(
        &out.stderr,
        &format!("XDG_RUNTIME_DIR={}", nowhere.display()),
    );
    assert_contains(&out.stderr, "loginctl enable-linger");
    assert_contains(&out.stderr, "nothing was changed");
    assert_eq!(site.live(), "releases/r1");
    assert!(!site.remote.join("releases/r2").exists());
    assert!(
        !home.join(".config/systemd").exists(),
        "no unit was written"
    );
}

#[test]
#[ignore = "needs root: a systemd user manager in a mount namespace with its own cgroups"]
fn systemd_deploy_over_ssh_and_doctor() {
    let manager = UserManager::start();
    let env = manager.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sshd = Sshd::start_with_env(&env);
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("web");
    let port = free_port();
    let app = node_app(work.path(), "v1", Behaviour::Healthy);
    let deployed = Test::new()
        .args(["deploy", "--process-manager", "systemd", "--app-port"])
        .arg(port.to_string())
        .args(["--release", "r1", "--working-directory"])
        .arg(&app)
        .args(ssh_args(&sshd, &remote))
        .success();
    assert!(get(port).unwrap().starts_with("v1"));
    let lingering = Path::new("/var/lib/systemd/linger")
        .join(sshd.user())
        .exists();
    assert_eq!(
        deployed.stderr.contains("warning: lingering is off"),
        !lingering,
        "{}",
        deployed.stderr
    );
    assert_eq!(
        manager.property("dropship-web.service", "ActiveState"),
        "active"
    );
    let log = remote.join(".dropship/logs/web.out.log");
    assert_contains(&fs::read_to_string(&log).unwrap(), "listening on");

    let out = Test::new()
        .args(["doctor", "--process-manager", "systemd"])
        .args(ssh_args(&sshd, &remote))
        .run();
    assert_contains(&out.stdout, "✓ node: node in");
    assert_contains(
        &out.stdout,
        "✓ systemd user manager: `systemctl --user` reaches systemd",
    );
    let user = sshd.user();
    if Path::new("/var/lib/systemd/linger").join(&user).exists() {
        assert_eq!(out.code, 0, "{}", out.stdout);
    } else {
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert_contains(&out.stdout, "✗ lingering:");
        assert_contains(
            &out.stdout,
            &format!("fix: as root, run `sudo loginctl enable-linger {user}` once"),
        );
    }
}

#[test]
#[ignore = "needs root: a systemd user manager in a mount namespace with its own cgroups"]
fn without_xdg_runtime_dir_the_agent_finds_the_manager_at_run_user_uid() {
    let manager = UserManager::start();
    let site = Site::new(false);
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    // A session without XDG_RUNTIME_DIR (SSH without PAM), in a mount namespace
    // where the manager's runtime dir is at /run/user/<uid>, as logind puts it.
    fs::create_dir_all("/run/user").unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run/user && mkdir /run/user/{uid} && mount --bind \"$1\" /run/user/{uid} && shift && exec \"$0\" \"$@\""
    );
    let out = crate::test::scrubbed("unshare")
        .args(["-m", "sh", "-c", &script, env!("CARGO_BIN_EXE_dropship")])
        .arg(manager.runtime_dir())
        .args(["deploy", "--host", "local", "--process-manager", "systemd"])
        .args(["--release", "r1", "--app-port", &site.ports.0.to_string()])
        .arg("--working-directory")
        .arg(site.app("v1", Behaviour::Healthy))
        .arg("--remote-path")
        .arg(&site.remote)
        .env("HOME", manager.home())
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(site.answer().starts_with("v1"), "{}", site.answer());
    assert_runs(&manager, &site, "dropship-site.service", "r1");
}
