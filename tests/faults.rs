//! Issue 6, "never half-deployed": connections cut mid-upload, the client or
//! the agent SIGKILLed around the switch, a full or read-only disk, a taken
//! port, a deploy racing a rollback, and hostile or broken input.
//!
//! After every fault: `current` (if any) is a complete release byte-identical
//! to the old or the new one, the next deploy (with `--lock-timeout 5`) gets
//! the lock, removes what the dead deploy staged, and lands.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::mount::{self, Mounted};
use crate::support::process::{self, AgentReaper, Ended, Watched};
use crate::support::proxy::Proxy;
use crate::support::runtime::{Nginx, Pm2Home, free_port, get};
use crate::support::sshd::Sshd;
use crate::support::{fixture, tree};
use crate::test::{Output, Test};

/// Seed of the drop points and delays; printed so a failing run can be replayed.
const SEED: u64 = 0x0d20_95b1_9f00_0006;

/// Size of the file that differs in every deploy.
const NONCE_BYTES: usize = 160 * 1024;

/// A tiny xorshift64* generator: deterministic drop points and kill delays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Where a trial injects its fault.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The proxy cuts the connection after this many client→server bytes.
    Cut(u64),
    /// The client is SIGKILLed this many ms after printing a line containing `.0`.
    KillClient(&'static str, u64),
    /// The agent is SIGKILLed this many ms after the client printed a line containing `.0`.
    KillAgent(&'static str, u64),
    /// The agent is SIGKILLed by the `nginx-reload` command, just after nginx
    /// reloaded and before `current` follows (blue-green).
    KillAgentAtReload,
}

/// What the faults led to. Every trial asserts that its fault fired and that
/// the promise held, so `survived` counts trials that got to the end.
#[derive(Debug, Default)]
struct Tally {
    trials: usize,
    fired: usize,
    survived: usize,
    old_live: usize,
    new_live: usize,
    /// The client could not know the outcome (the agent died, or it was
    /// killed, during the switch) and the new release was live.
    unknown_new_live: usize,
    /// `current` was still on the old release, and the next agent finished the switch.
    finished_by_next_agent: usize,
}

/// How the trial site runs its app.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `process-manager none`: files and `current` only.
    Files,
    /// PM2, `restart` on one port.
    Restart,
    /// PM2, `blue-green` behind a real nginx.
    BlueGreen,
}

/// What the client says when it cannot know which release the host serves.
const OUTCOME_UNKNOWN: &str = "the host may serve the old or the new release";

/// One app deployed over and over through a fault-injecting proxy, with the
/// old and the new release known byte for byte.
/// The build-id directory of variant `n` (0 `old`, 1 `new`) that a release of
/// the other one also holds once it followed it (`keep-assets`, tests/skew.rs).
fn carried(n: usize) -> String {
    fixture::static_build_dir(["old", "new"][n])
}

struct Site {
    remote: PathBuf,
    apps: [PathBuf; 2],
    expected: [PathBuf; 2],
    proxy: Proxy,
    sshd: Sshd,
    run_args: Vec<String>,
    /// The variant `current` holds (index into `apps`).
    live: usize,
    /// What `shared/.env` holds for the live release (`TRIAL=<release>`).
    live_env: String,
    releases: usize,
    /// Makes each deploy's unique file (files already on the host are not sent again).
    content: Rng,
    mode: Mode,
    pm2: Option<Pm2Home>,
    /// Where the app answers: its port, or nginx's.
    answer_port: u16,
    nginx: Option<Nginx>,
    /// While this file exists, the next `nginx-reload` kills the agent (and removes it).
    kill_flag: PathBuf,
    _work: tempfile::TempDir,
}

impl Site {
    /// A site run as `mode` says; its first deploy done.
    fn new(mode: Mode) -> Site {
        let work = tempfile::tempdir().unwrap();
        let pm2 = (mode != Mode::Files).then(Pm2Home::new);
        let sshd = match &pm2 {
            Some(home) => Sshd::start_with_env(&[("PM2_HOME", &home.path_str())]),
            None => Sshd::start(),
        };
        let apps = [
            fixture::nextjs_app(work.path(), "old"),
            fixture::nextjs_app(work.path(), "new"),
        ];
        let expected = [
            fixture::expected_release(&apps[0], &work.path().join("expected-old")),
            fixture::expected_release(&apps[1], &work.path().join("expected-new")),
        ];
        let kill_flag = work.path().join("kill-agent-at-next-reload");
        let (blue, green) = (free_port(), free_port());
        let upstream = work.path().join("upstream.conf");
        fs::write(
            &upstream,
            format!("upstream site {{ server 127.0.0.1:{blue}; }}\n"),
        )
        .unwrap();
        let nginx = (mode == Mode::BlueGreen).then(|| Nginx::start("site", &upstream));
        let pm2_args = |strategy: &str, ports: String| -> Vec<String> {
            [
                "--process-manager",
                "pm2",
                "--app",
                "site",
                "--strategy",
                strategy,
            ]
            .into_iter()
            .map(str::to_owned)
            .chain([
                "--app-port".into(),
                ports,
                "--health-timeout".into(),
                "20".into(),
            ])
            .collect()
        };
        let (run_args, answer_port) = match &nginx {
            None if mode == Mode::Files => (vec!["--process-manager".into(), "none".into()], 0),
            None => (pm2_args("restart", blue.to_string()), blue),
            Some(nginx) => {
                let mut args = pm2_args("blue-green", format!("{blue},{green}"));
                let reload = format!(
                    "{} && if [ -e {flag} ]; then rm -f {flag}; kill -9 $PPID; fi",
                    nginx.reload_command(),
                    flag = kill_flag.display()
                );
                args.extend(["--nginx-upstream".into(), upstream.display().to_string()]);
                args.extend(["--nginx-reload".into(), reload]);
                (args, nginx.port)
            }
        };
        let proxy = Proxy::start(sshd.port());
        let mut site = Site {
            remote: work.path().join("srv/site"),
            apps,
            expected,
            proxy,
            sshd,
            run_args,
            live: 0,
            live_env: "TRIAL=first".into(),
            releases: 0,
            content: Rng::new(SEED ^ 0xc0),
            mode,
            pm2,
            answer_port,
            nginx,
            kill_flag,
            _work: work,
        };
        // The first deploy installs the agent; later ones only stream the release.
        let out = site
            .deploy(false, 0, "first")
            .args(["--env", "TRIAL=first"])
            .run();
        assert_eq!(out.code, 0, "first deploy:\n{}", out.stderr);
        site.check_live(0, "first");
        site
    }

    /// Gives `variant` (app and expected tree) a file of fresh random bytes, so
    /// that its next deploy streams them: dropship only sends files the host lacks.
    fn refresh(&mut self, variant: usize) {
        let mut bytes = Vec::with_capacity(NONCE_BYTES + 8);
        while bytes.len() < NONCE_BYTES {
            bytes.extend_from_slice(&self.content.next().to_le_bytes());
        }
        for dir in [&self.apps[variant], &self.expected[variant]] {
            fs::write(dir.join("public/nonce.bin"), &bytes).unwrap();
        }
    }

    fn deploy(&mut self, via_proxy: bool, variant: usize, release: &str) -> Test {
        self.refresh(variant);
        let port = if via_proxy {
            self.proxy.port()
        } else {
            self.sshd.port()
        };
        Test::new()
            .env(
                "DROPSHIP_AGENT_BINARY",
                &process::lean_agent().display().to_string(),
            )
            .args([
                "deploy",
                "--json",
                "--lock-timeout",
                "5",
                "--release",
                release,
            ])
            .args(&self.run_args)
            .arg("--working-directory")
            .arg(&self.apps[variant])
            .args(["--host", &format!("{}@127.0.0.1:{port}", self.sshd.user())])
            .arg("--key-file")
            .arg(self.sshd.user_key_path())
            .args(["--host-fingerprint", &self.sshd.host_fingerprint()])
            .arg("--remote-path")
            .arg(&self.remote)
    }

    /// Client→server bytes through the proxy: (before the stream, a whole deploy).
    fn calibrate(&mut self) -> (u64, u64) {
        let out = self.deploy(true, 1, "calibrate").arg("--dry-run").run();
        assert_eq!(out.code, 0, "dry run:\n{}", out.stderr);
        let before_stream = self.proxy.bytes_up();
        // Twice: once both variants are on the host, a deploy streams only what changed.
        let mut whole = 0;
        for _ in 0..2 {
            let release = self.next_release("cal");
            let variant = 1 - self.live;
            let out = self.deploy(true, variant, &release).run();
            assert_eq!(out.code, 0, "calibration deploy:\n{}", out.stderr);
            whole = self.proxy.bytes_up();
            self.check_live(variant, &release);
        }
        (before_stream, whole)
    }

    fn next_release(&mut self, kind: &str) -> String {
        self.releases += 1;
        format!("{kind}{:03}", self.releases)
    }

    fn live_release(&self) -> Option<String> {
        let link = fs::read_link(self.remote.join("current")).ok()?;
        Some(link.to_str()?.to_owned())
    }

    /// `current` is `releases/<release>`, complete and byte-identical to `variant`.
    #[track_caller]
    fn check_live(&mut self, variant: usize, release: &str) {
        assert_eq!(
            self.live_release().as_deref(),
            Some(format!("releases/{release}").as_str())
        );
        tree::assert_same_tree_except(
            &self.expected[variant],
            &self.remote.join("current"),
            &[".env", &carried(1 - variant)],
        );
        self.live = variant;
    }

    /// Which variant `current` holds; panics unless it is exactly one of the two.
    #[track_caller]
    fn live_variant(&self) -> Option<usize> {
        let link = self.live_release()?;
        assert!(link.starts_with("releases/"), "current -> {link}");
        let dir = self.remote.join(&link);
        assert!(dir.is_dir(), "current -> {link}, which is not a directory");
        let got = tree::snapshot(&self.remote.join("current"));
        for variant in [self.live, 1 - self.live] {
            let other = carried(1 - variant);
            let got: std::collections::BTreeMap<_, _> = got
                .iter()
                .filter(|(path, _)| *path != ".env" && !path.starts_with(&other))
                .collect();
            let want = tree::snapshot(&self.expected[variant]);
            if want.iter().collect::<std::collections::BTreeMap<_, _>>() == got {
                return Some(variant);
            }
        }
        // Neither: show the diff against the old release.
        tree::assert_same_tree_except(&self.expected[self.live], &dir, &[".env"]);
        unreachable!("the trees differ");
    }

    /// Injects `fault` into `client`; whether it fired (the line came and a
    /// live process was killed, the proxy cut, the reload command killed the agent).
    fn inject(&self, fault: Fault, client: &mut Watched, cuts_before: u64) -> bool {
        match fault {
            Fault::Cut(_) => {
                let _ = client.wait(Duration::from_secs(60));
                self.proxy.cuts() > cuts_before
            }
            Fault::KillClient(line, delay) => {
                if client
                    .wait_for_line(line, Duration::from_secs(30))
                    .is_none()
                {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(delay));
                let alive = process::alive(client.pid());
                client.kill();
                alive
            }
            Fault::KillAgent(line, delay) => {
                if client
                    .wait_for_line(line, Duration::from_secs(30))
                    .is_none()
                {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(delay));
                let agents = process::agent_pids(&self.remote);
                for pid in &agents {
                    process::signal(*pid, libc::SIGKILL);
                }
                !agents.is_empty()
            }
            Fault::KillAgentAtReload => {
                let _ = client.wait(Duration::from_secs(60));
                !self.kill_flag.exists()
            }
        }
    }

    /// The port that gets the traffic: the one the nginx upstream file names
    /// (nginx's old workers may still answer for a moment after a reload), or
    /// the app's.
    fn serving_port(&self) -> u16 {
        let Some(nginx) = &self.nginx else {
            return self.answer_port;
        };
        let text = fs::read_to_string(&nginx.upstream).unwrap();
        let port = text
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(';').next());
        port.and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in the upstream file: {text}"))
    }

    /// The release id `current` names.
    fn live_id(&self) -> String {
        let link = self.live_release().expect("`current` vanished");
        link.trim_start_matches("releases/").to_owned()
    }

    /// One faulty deploy of the other variant, then the checks and a recovery deploy.
    fn trial(&mut self, fault: Fault, tally: &mut Tally) {
        let _reaper = AgentReaper(self.remote.clone());
        let old = self.live;
        let new = 1 - old;
        let old_id = self.live_id();
        let release = self.next_release("f");
        let started = Instant::now();
        let cuts_before = self.proxy.cuts();
        if let Fault::Cut(bytes) = fault {
            self.proxy.cut_after(bytes);
        }
        if let Fault::KillAgentAtReload = fault {
            fs::write(&self.kill_flag, "").unwrap();
        }
        let env = format!("TRIAL={release}");
        let mut client = Watched::new(
            self.deploy(true, new, &release)
                .args(["--env", &env])
                .spawn(),
        );
        let fired = self.inject(fault, &mut client, cuts_before);
        let ended = client.wait(Duration::from_secs(60));
        self.proxy.unlimited();
        let context = format!(
            "trial {} ({fault:?}): client {ended:?} after {:.2} s\n--- client stderr\n{}",
            tally.trials + 1,
            started.elapsed().as_secs_f64(),
            client.stderr()
        );
        tally.trials += 1;
        assert!(fired, "the fault never fired\n{context}");
        tally.fired += 1;
        // The agent notices the dead client (or was killed) and ends on its own.
        assert!(
            process::wait_agents_gone(&self.remote, Duration::from_secs(45)),
            "an agent still runs 45 s after the fault\n{context}"
        );
        let now = self.live_variant();
        assert!(now.is_some(), "`current` vanished\n{context}");
        let now = now.unwrap();
        let unknown = client.stderr().contains(OUTCOME_UNKNOWN);
        // The exit status promise: 0 = the new release everywhere; 1 = what served
        // before, unless the client said it cannot know (the agent died mid-switch).
        match (fault, ended) {
            (_, Ended::Exited(0)) => {
                assert_eq!(now, new, "exit 0 but the old release is live\n{context}")
            }
            (Fault::KillClient(..), ended) => {
                assert_eq!(ended, Ended::Killed, "{context}")
            }
            (_, Ended::Exited(1)) => {
                assert!(client.stderr().contains("error:"), "{context}");
                if !unknown {
                    assert_eq!(now, old, "exit 1 but {release} is live\n{context}");
                }
            }
            (_, ended) => panic!("unexpected end {ended:?}\n{context}"),
        }
        if now == new && (unknown || ended == Ended::Killed) {
            tally.unknown_new_live += 1;
        }
        // With `restart` there is one port: an agent killed between stopping the old
        // process and starting the new one leaves nothing running until the next
        // deploy (below) — the reason blue-green exists. `current` still names a
        // complete release, checked above.
        let app_may_be_down = matches!(
            fault,
            Fault::KillAgent("starting" | "wrote the new runtime env", _)
        );
        let serving = match self.mode {
            Mode::Files => None,
            _ if app_may_be_down => None,
            _ => {
                let answer = answer_within(self.serving_port(), Duration::from_secs(10))
                    .unwrap_or_else(|err| {
                        panic!("the app does not answer (10 s after the fault): {err}\n{context}")
                    });
                assert!(answer.contains("Hello from"), "{answer}\n{context}");
                Some(if answer.contains("Hello from new") {
                    1
                } else {
                    0
                })
            }
        };

        // The next agent reconciles: the host is on one release, the one that
        // served, with its own env. The next deploy gets the lock within 5 s,
        // clears what the dead one left, and lands.
        let recovery = self.next_release("r");
        let variant = 1 - now;
        let out = self.deploy(false, variant, &recovery).run();
        assert_eq!(
            out.code, 0,
            "the deploy after the fault failed\n--- its stderr\n{}\n{context}",
            out.stderr
        );
        let reconciled = out
            .stderr
            .lines()
            .find_map(|l| l.split_once("ready (live: ").map(|(_, rest)| rest))
            .and_then(|rest| rest.split([',', ')']).next())
            .unwrap_or_else(|| panic!("no ready line\n{}\n{context}", out.stderr))
            .to_owned();
        assert!(
            reconciled == release || reconciled == old_id,
            "the host was on {reconciled}, neither {old_id} nor {release}\n{context}"
        );
        // Blue-green records the switch before nginx moves: a release nginx
        // serves is never removed, its switch is finished. (It may also be
        // finished when the agent died after recording it, before nginx moved;
        // `restart` may put the previous release back instead.)
        if self.mode == Mode::BlueGreen && serving == Some(new) {
            assert_eq!(
                reconciled, release,
                "nginx served {release}, but the next agent found {reconciled} live\n{context}"
            );
        }
        if reconciled == release && now == old {
            tally.finished_by_next_agent += 1;
        }
        let env_now = fs::read_to_string(self.remote.join("shared/.env")).unwrap();
        let env_wanted = if reconciled == release {
            env.clone()
        } else {
            self.live_env.clone()
        };
        assert_eq!(
            env_now.trim(),
            env_wanted,
            "shared/.env is not the env of {reconciled}, the release the host was on\n{context}"
        );
        self.live_env = env_wanted;
        self.check_live(variant, &recovery);
        self.assert_nothing_left_behind(&context);
        if self.mode != Mode::Files {
            let answer = answer_within(self.answer_port, Duration::from_secs(10))
                .unwrap_or_else(|err| format!("failed: {err}"));
            let name = if variant == 0 { "old" } else { "new" };
            assert!(
                answer.contains(&format!("Hello from {name}")),
                "{answer}\n{context}"
            );
        }
        if now == new {
            tally.new_live += 1;
        } else {
            tally.old_live += 1;
        }
        tally.survived += 1;
    }

    /// After a deploy that landed: no staging, no release that never went live,
    /// no marks of a dead deploy, and only the live release's process.
    #[track_caller]
    fn assert_nothing_left_behind(&self, context: &str) {
        let staging: Vec<_> = fs::read_dir(self.remote.join(".dropship/staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            staging.is_empty(),
            "left in staging: {staging:?}\n{context}"
        );
        let orphans = never_live(&self.remote);
        assert!(
            orphans.is_empty(),
            "never live, left in releases/: {orphans:?}\n{context}"
        );
        for mark in ["pending", "env.before"] {
            assert!(
                !self.remote.join(".dropship").join(mark).exists(),
                "`.dropship/{mark}` left behind\n{context}"
            );
        }
        if let Some(pm2) = &self.pm2 {
            let names: Vec<String> = pm2.processes().into_iter().map(|p| p.0).collect();
            let state: serde_json::Value = serde_json::from_slice(
                &fs::read(self.remote.join(".dropship/state.json")).unwrap(),
            )
            .unwrap();
            let want = match self.mode {
                Mode::BlueGreen => format!("site-{}", state["live_port"]),
                _ => "site".to_owned(),
            };
            assert_eq!(names, [want], "PM2 runs other processes\n{context}");
        }
    }
}

/// What the app on `port` answers, retrying for `patience`.
fn answer_within(port: u16, patience: Duration) -> Result<String, String> {
    let deadline = Instant::now() + patience;
    loop {
        match get(port) {
            Ok(body) => return Ok(body),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Releases in `releases/` that never went live: not named by any log line.
fn never_live(remote: &Path) -> Vec<String> {
    let log = fs::read_to_string(remote.join(".dropship/releases.log")).unwrap_or_default();
    let mut orphans: Vec<String> = fs::read_dir(remote.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|r| !log.contains(&format!("\"{r}\"")))
        .collect();
    orphans.sort();
    orphans
}

fn report(name: &str, tally: &Tally) {
    eprintln!(
        "{name}: seed {SEED:#x}: {} trials, {} faults fired, {} survived; afterwards old release live {}, new {} \
         (new live where the client could not know: {}; switches the next agent finished: {})",
        tally.trials,
        tally.fired,
        tally.survived,
        tally.old_live,
        tally.new_live,
        tally.unknown_new_live,
        tally.finished_by_next_agent
    );
}

#[test]
fn connection_cut_during_upload_and_after_the_stream_never_half_deploys() {
    let mut site = Site::new(Mode::Files);
    let (before_stream, whole) = site.calibrate();
    eprintln!("calibration: {before_stream} bytes up to the stream, {whole} for a whole deploy");
    assert!(whole > before_stream + 100_000, "{before_stream} {whole}");
    let mut rng = Rng::new(SEED);
    let mut tally = Tally::default();
    // Within the stream.
    for _ in 0..18 {
        let at = rng.range(before_stream.saturating_sub(500), whole - 2000);
        site.trial(Fault::Cut(at), &mut tally);
    }
    // Around the end of the stream: the agent is verifying, syncing and renaming.
    for _ in 0..8 {
        let at = rng.range(whole - 2000, whole - 50);
        site.trial(Fault::Cut(at), &mut tally);
    }
    report("connection cuts", &tally);
    assert_eq!((tally.fired, tally.survived), (26, 26));
}

/// A kill point: the fault for a delay in ms, the longest delay, how many trials.
type KillPoint = (fn(u64) -> Fault, u64, usize);

#[test]
fn client_and_agent_killed_around_the_switch_never_half_deploy() {
    let mut site = Site::new(Mode::Files);
    let mut rng = Rng::new(SEED ^ 0x2);
    let mut tally = Tally::default();
    let points: [KillPoint; 4] = [
        // During the upload.
        (|d| Fault::KillClient("ready (live:", d), 30, 6),
        // Just before the switch: `activate` may or may not be on its way.
        (|d| Fault::KillClient("staged", d), 4, 8),
        // The agent, during the upload.
        (|d| Fault::KillAgent("ready (live:", d), 30, 5),
        // The agent, around the switch.
        (|d| Fault::KillAgent("staged", d), 3, 5),
    ];
    for (fault, max_delay, count) in points {
        for _ in 0..count {
            let delay = rng.range(0, max_delay);
            site.trial(fault(delay), &mut tally);
        }
    }
    report("kills", &tally);
    assert_eq!((tally.fired, tally.survived), (24, 24));
}

#[test]
fn pm2_restart_keeps_answering_through_faults() {
    let mut site = Site::new(Mode::Restart);
    let mut rng = Rng::new(SEED ^ 0x3);
    let mut tally = Tally::default();
    let (before_stream, whole) = site.calibrate();
    let faults = [
        Fault::Cut(rng.range(before_stream, whole - 2000)),
        Fault::KillClient("ready (live:", rng.range(0, 20)),
        Fault::KillClient("starting", rng.range(0, 200)),
        Fault::KillClient("is healthy", 0),
        Fault::KillAgent("ready (live:", rng.range(0, 20)),
        Fault::KillAgent("is healthy", 0),
        // Right after the new `shared/.env` was written, before the switch.
        Fault::KillAgent("wrote the new runtime env", 0),
    ];
    for fault in faults {
        site.trial(fault, &mut tally);
    }
    report("pm2 restart", &tally);
    assert_eq!((tally.fired, tally.survived), (7, 7));
}

#[test]
fn pm2_restart_agent_killed_while_starting_never_reports_failure_with_the_new_release_live() {
    let mut site = Site::new(Mode::Restart);
    let mut tally = Tally::default();
    for delay in [0, 60] {
        site.trial(Fault::KillAgent("starting", delay), &mut tally);
    }
    report("pm2 restart, agent killed while starting", &tally);
    assert_eq!((tally.fired, tally.survived), (2, 2));
}

/// Blue-green: the agent dies between the nginx reload and the `current`
/// switch, and right after it wrote the new env: the next agent finishes the
/// switch nginx already made (live port included), or removes the release
/// that never served, with the env put back.
#[test]
fn blue_green_agent_killed_around_the_switch_leaves_one_coherent_release() {
    let mut site = Site::new(Mode::BlueGreen);
    let mut tally = Tally::default();
    for fault in [
        Fault::KillAgentAtReload,
        Fault::KillAgent("wrote the new runtime env", 0),
        Fault::KillAgentAtReload,
        Fault::KillAgent("is healthy", 0),
    ] {
        site.trial(fault, &mut tally);
    }
    report("blue-green, agent killed around the switch", &tally);
    assert_eq!((tally.fired, tally.survived), (4, 4));
}

/// `dropship` run on this machine (`--host local`: the same agent, no SSH).
fn local(command: &str, remote: &Path) -> Test {
    Test::new()
        .args([command, "--host", "local", "--process-manager", "none"])
        .arg("--remote-path")
        .arg(remote)
}

fn local_deploy(app: &Path, remote: &Path, release: &str) -> Test {
    local("deploy", remote)
        .args([
            "--lock-timeout",
            "5",
            "--release",
            release,
            "--working-directory",
        ])
        .arg(app)
}

fn staging_entries(remote: &Path) -> Vec<String> {
    fs::read_dir(remote.join(".dropship/staging"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn live(remote: &Path) -> Option<String> {
    fs::read_link(remote.join("current"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

#[track_caller]
fn assert_stderr(out: &Output, texts: &[&str]) {
    for text in texts {
        assert!(
            out.stderr.contains(text),
            "expected `{text}` in:\n{}",
            out.stderr
        );
    }
}

#[test]
fn a_release_staged_by_a_killed_agent_is_never_offered_for_rollback() {
    use std::io::{BufRead, BufReader, Write};
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let package = work.path().join("release.tar.zst");
    Test::new()
        .args(["package", "--working-directory"])
        .arg(&app)
        .arg("--output")
        .arg(&package)
        .success();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(work.path().join("release.tar.zst.manifest.json")).unwrap(),
    )
    .unwrap();
    let request = serde_json::json!({
        "op": "deploy",
        "target": {"protocol": 1, "root": remote, "by": "test", "lock_timeout_secs": 5, "dry_run": false},
        "release": "a-killed",
        "manifest": manifest,
        "shared": [".env"],
        "keep_releases": 5,
        "idle_timeout_secs": 30,
        "server_dir": ".",
        "run": crate::test::run_none(),
        "env": null,
    });
    // The agent stages the release; it dies (SIGKILL) before `activate` arrives.
    let mut agent = Test::new().arg("agent").spawn_piped();
    let mut stdin = agent.stdin.take().unwrap();
    writeln!(stdin, "{request}").unwrap();
    let mut events = BufReader::new(agent.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("\"ready\"") {
        line.clear();
        assert!(events.read_line(&mut line).unwrap() > 0, "no ready: {line}");
    }
    stdin.write_all(b"{\"stream\":{\"parts\":1}}\n").unwrap();
    stdin.write_all(&fs::read(&package).unwrap()).unwrap();
    stdin.flush().unwrap();
    while !line.contains("\"staged\"") {
        line.clear();
        assert!(
            events.read_line(&mut line).unwrap() > 0,
            "no staged: {line}"
        );
    }
    process::signal(agent.id(), libc::SIGKILL);
    agent.wait().unwrap();

    local_deploy(&app, &remote, "r1").success();
    assert!(staging_entries(&remote).is_empty());
    // The only release that ever went live is r1: there is nothing to roll back to.
    let out = local("rollback", &remote).run();
    assert_eq!(
        live(&remote).as_deref(),
        Some("releases/r1"),
        "rollback made a release live that never was:\n{}",
        out.stderr
    );
    assert!(
        !remote.join("releases/a-killed").exists(),
        "the killed deploy's release is still in releases/"
    );
}

#[test]
#[ignore = "needs root: mounts a small tmpfs"]
fn a_full_disk_fails_before_the_switch_and_says_how_much_it_needs() {
    let work = tempfile::tempdir().unwrap();
    let v1 = fixture::nextjs_app(work.path(), "v1");
    let v2 = fixture::nextjs_app(work.path(), "v2");
    let expected_v1 = fixture::expected_release(&v1, &work.path().join("expected-v1"));
    let disk = Mounted::tmpfs(&work.path().join("disk"), "64m");
    let remote = disk.path().join("app");
    local_deploy(&v1, &remote, "r1").success();

    // Leave about 4 MB: less than a release needs with dropship's margin.
    let (_, _, free) = mount::usage(disk.path());
    let filler = usize::try_from(free - (4 << 20)).unwrap();
    fs::write(disk.path().join("filler"), vec![1u8; filler]).unwrap();
    let out = local_deploy(&v2, &remote, "r2").status(1);
    assert_stderr(
        &out,
        &["not enough disk space", "needs about", "MB are free"],
    );
    assert_eq!(live(&remote).as_deref(), Some("releases/r1"));
    tree::assert_same_tree_except(&expected_v1, &remote.join("current"), &[".env"]);
    assert!(!remote.join("releases/r2").exists());
    assert!(staging_entries(&remote).is_empty());

    // Out of inodes half-way through the stream: bytes are free, files cannot be made.
    fs::remove_file(disk.path().join("filler")).unwrap();
    let (used, _, _) = mount::usage(disk.path());
    disk.remount(&format!("nr_inodes={}", used + 6));
    let out = local_deploy(&v2, &remote, "r3").status(1);
    assert_stderr(&out, &["No space left on device", "hint:"]);
    assert_eq!(live(&remote).as_deref(), Some("releases/r1"));
    tree::assert_same_tree_except(&expected_v1, &remote.join("current"), &[".env"]);
    assert!(!remote.join("releases/r3").exists());
    assert!(
        staging_entries(&remote).is_empty(),
        "{:?}",
        staging_entries(&remote)
    );

    disk.remount("nr_inodes=100000");
    local_deploy(&v2, &remote, "r4").success();
    assert_eq!(live(&remote).as_deref(), Some("releases/r4"));
    assert!(staging_entries(&remote).is_empty());
}

#[test]
#[ignore = "needs root: a read-only bind mount"]
fn a_read_only_remote_path_fails_clearly_and_the_old_release_stays_live() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let v1 = fixture::nextjs_app(work.path(), "v1");
    let v2 = fixture::nextjs_app(work.path(), "v2");
    let expected_v1 = fixture::expected_release(&v1, &work.path().join("expected-v1"));
    let remote = work.path().join("app");
    let _reaper = AgentReaper(remote.clone());
    let deploy = |app: &Path, release: &str| {
        Test::deploy_over_ssh(&sshd, app, &remote)
            .env(
                "DROPSHIP_AGENT_BINARY",
                &process::lean_agent().display().to_string(),
            )
            .args(["--lock-timeout", "5", "--release", release])
    };
    deploy(&v1, "r1").success();
    {
        let _read_only = Mounted::read_only(&remote);
        let out = deploy(&v2, "r2").status(1);
        assert_stderr(&out, &["Read-only file system", "hint:"]);
        assert_eq!(live(&remote).as_deref(), Some("releases/r1"));
        tree::assert_same_tree_except(&expected_v1, &remote.join("current"), &[".env"]);
    }
    deploy(&v2, "r3").success();
    assert_eq!(live(&remote).as_deref(), Some("releases/r3"));
    assert!(!remote.join("releases/r2").exists());
    assert!(staging_entries(&remote).is_empty());
}

#[test]
fn a_taken_port_fails_naming_it_and_the_old_release_keeps_serving() {
    let work = tempfile::tempdir().unwrap();
    let pm2 = Pm2Home::new();
    let remote = work.path().join("site");
    let v1 = fixture::nextjs_app(work.path(), "v1");
    let v2 = fixture::nextjs_app(work.path(), "v2");
    let (blue, green) = (free_port(), free_port());
    let pm2_deploy = |app: &Path, release: &str, extra: &[String]| {
        Test::new()
            .args(["deploy", "--host", "local", "--health-timeout", "20"])
            .args(extra)
            .args(["--release", release, "--working-directory"])
            .arg(app)
            .arg("--remote-path")
            .arg(&remote)
            .env("PM2_HOME", &pm2.path_str())
    };
    let blue_green = vec![
        "--strategy".to_owned(),
        "blue-green".to_owned(),
        "--app-port".to_owned(),
        format!("{blue},{green}"),
        "--nginx-upstream".to_owned(),
        work.path().join("upstream.conf").display().to_string(),
        "--nginx-reload".to_owned(),
        "true".to_owned(),
    ];
    pm2_deploy(&v1, "r1", &blue_green).success();
    assert!(get(blue).unwrap().contains("Hello from v1"));

    // Something else took the idle port: the new release cannot start there.
    let squatter = TcpListener::bind(("127.0.0.1", green)).unwrap();
    let out = pm2_deploy(&v2, "r2", &blue_green).status(1);
    assert_stderr(&out, &[&format!("port {green} is already taken"), "hint:"]);
    assert_eq!(live(&remote).as_deref(), Some("releases/r1"));
    assert!(get(blue).unwrap().contains("Hello from v1"));
    assert!(!remote.join("releases/r2").exists());
    drop(squatter);

    // `restart` on a port someone else holds: the first deploy of another app fails.
    let other = work.path().join("other");
    let port = free_port();
    let _squatter = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = Test::new()
        .args(["deploy", "--host", "local", "--health-timeout", "5"])
        .args(["--app-port", &port.to_string(), "--release", "o1"])
        .arg("--working-directory")
        .arg(&v1)
        .arg("--remote-path")
        .arg(&other)
        .env("PM2_HOME", &pm2.path_str())
        .status(1);
    assert_stderr(&out, &[&format!("port {port} is already taken")]);
    assert_eq!(live(&other), None);
}

/// An app whose server takes `delay_ms` to listen: activations last that long.
fn slow_app(root: &Path, variant: &str, delay_ms: u64) -> PathBuf {
    let app = root.join(format!("slow-{variant}"));
    fs::create_dir_all(app.join(".next/standalone")).unwrap();
    fs::create_dir_all(app.join("public")).unwrap();
    fs::write(app.join("public/robots.txt"), "User-agent: *\n").unwrap();
    fs::write(
        app.join(".next/standalone/server.js"),
        format!(
            "const http = require('http');\n\
             const server = http.createServer((req, res) => {{ res.writeHead(200); res.end('{variant}\\n'); }});\n\
             setTimeout(() => server.listen(Number(process.env.PORT), process.env.HOSTNAME), {delay_ms});\n\
             process.on('SIGTERM', () => process.exit(0));\n"
        ),
    )
    .unwrap();
    app
}

#[test]
fn a_deploy_during_a_rollback_waits_or_gives_up_and_never_interleaves() {
    let pm2 = Pm2Home::new();
    let sshd = Sshd::start_with_env(&[("PM2_HOME", &pm2.path_str())]);
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("web");
    let _reaper = AgentReaper(remote.clone());
    let port = free_port();
    let run = |command: &str| {
        Test::new()
            .env(
                "DROPSHIP_AGENT_BINARY",
                &process::lean_agent().display().to_string(),
            )
            .args([command, "--app-port", &port.to_string()])
            .args(["--health-timeout", "20"])
            .args(crate::test::ssh_args(&sshd, &remote))
    };
    let deploy = |variant: &str, release: &str, lock_timeout: &str| {
        run("deploy")
            .args(["--release", release, "--lock-timeout", lock_timeout])
            .arg("--working-directory")
            .arg(slow_app(work.path(), variant, 2500))
    };
    deploy("v1", "a1", "5").success();
    deploy("v2", "a2", "5").success();
    assert_eq!(get(port).unwrap().trim(), "v2");

    let mut rollback = Watched::new(run("rollback").spawn());
    assert!(
        rollback
            .wait_for_line("starting a1 on port", Duration::from_secs(30))
            .is_some(),
        "{}",
        rollback.stderr()
    );
    // Impatient: exit 3, naming the rollback that holds the lock.
    let out = deploy("v3", "a3", "1").status(3);
    assert_stderr(&out, &["another deploy holds the lock", "rolling back"]);
    assert!(!remote.join("releases/a3").exists());
    // Patient: waits for the rollback, then lands on top of it.
    let mut patient = Watched::new(deploy("v4", "a4", "30").spawn());
    assert_eq!(rollback.wait(Duration::from_secs(60)), Ended::Exited(0));
    assert_eq!(
        patient.wait(Duration::from_secs(60)),
        Ended::Exited(0),
        "{}",
        patient.stderr()
    );
    assert!(
        rollback.stderr().contains("live: a1"),
        "{}",
        rollback.stderr()
    );
    assert!(
        patient.stderr().contains("waiting for another deploy"),
        "{}",
        patient.stderr()
    );
    assert_eq!(live(&remote).as_deref(), Some("releases/a4"));
    assert_eq!(get(port).unwrap().trim(), "v4");

    let log = fs::read_to_string(remote.join(".dropship/releases.log")).unwrap();
    let ops: Vec<(String, String, String)> = log
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
            (field("op"), field("release"), field("previous"))
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("deploy", "a1", "-"),
        ("deploy", "a2", "a1"),
        ("rollback", "a1", "a2"),
        ("deploy", "a4", "a1"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(ops, want, "{log}");
}

#[test]
fn hostile_and_bad_input_is_refused_and_touches_nothing() {
    let sshd = Sshd::start();
    let other = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("srv/app");
    let key = sshd.user_key();
    let mut tried = 0;
    // Runs `test`, expects `code` and every text on stderr, and the server untouched.
    let mut refused = |test: Test, code: i32, texts: &[&str], absent: &[&str]| {
        let started = Instant::now();
        let out = test.status(code);
        assert_stderr(&out, texts);
        for text in absent {
            assert!(
                !out.stderr.contains(text),
                "`{text}` leaked:\n{}",
                out.stderr
            );
        }
        assert!(!remote.exists(), "the server was touched:\n{}", out.stderr);
        assert!(started.elapsed() < Duration::from_secs(20));
        tried += 1;
    };
    let base = |host: &str| {
        Test::new()
            .args(["deploy", "--process-manager", "none", "--release", "r1"])
            .args(["--host", host, "--working-directory"])
            .arg(&app)
            .arg("--remote-path")
            .arg(&remote)
    };
    let pinned = || {
        base(&sshd.host_spec())
            .arg("--known-hosts-file")
            .arg(sshd.known_hosts_path())
    };

    // Keys: garbage, cut short, a damaged body, the public half.
    refused(
        pinned().env("DROPSHIP_KEY", "this is not a key"),
        2,
        &["not a private key", "hint:"],
        &[],
    );
    refused(
        pinned().env("DROPSHIP_KEY", &key[..key.len() / 2]),
        2,
        &["cannot use the private key", "hint:"],
        &[],
    );
    let lines: Vec<&str> = key.lines().collect();
    let damaged = format!(
        "{}\nAAAAbm90IGEga2V5IGF0IGFsbA==\n{}\n",
        lines[0],
        lines[lines.len() - 1]
    );
    refused(
        pinned().env("DROPSHIP_KEY", &damaged),
        2,
        &["truncated or damaged"],
        &[],
    );
    let public = fs::read_to_string(sshd.user_key_path().with_extension("pub")).unwrap();
    refused(
        pinned().env("DROPSHIP_KEY", &public),
        2,
        &["public key"],
        &[],
    );

    refused(
        pinned()
            .arg("--key-file")
            .arg(work.path().join("no-such-key")),
        2,
        &["input `key-file`", "no-such-key"],
        &[],
    );
    refused(
        base(&sshd.host_spec())
            .arg("--key-file")
            .arg(sshd.user_key_path())
            .args(["--host-fingerprint", "SHA256:tooshort"]),
        2,
        &["input `host-fingerprint`"],
        &[],
    );

    // Host keys: a changed key pinned in known_hosts shows both fingerprints;
    // known_hosts naming only other hosts (or garbage) leaves this one unpinned.
    let changed = other
        .known_hosts_line()
        .replace(&other.port().to_string(), &sshd.port().to_string());
    refused(
        base(&sshd.host_spec())
            .arg("--key-file")
            .arg(sshd.user_key_path())
            .args(["--known-hosts", &changed]),
        2,
        // The pinned fingerprint is missing from this message: see
        // `a_host_key_changed_against_known_hosts_shows_both_fingerprints`.
        &["does not match", &sshd.host_fingerprint()],
        &[],
    );
    refused(
        base(&sshd.host_spec())
            .arg("--key-file")
            .arg(sshd.user_key_path())
            .args(["--known-hosts", &other.known_hosts_line()]),
        2,
        &["not pinned", &sshd.host_fingerprint()],
        &[],
    );
    refused(
        base(&sshd.host_spec())
            .arg("--key-file")
            .arg(sshd.user_key_path())
            .args(["--known-hosts", "garbage that is no known_hosts line"]),
        2,
        // Refused before connecting: libssh2 took this line and said "not pinned".
        &["error: input `known-hosts`: line 1 is not a known_hosts line"],
        &[],
    );

    // Names that resolve to nothing, ports that cannot exist.
    refused(
        base("deploy@no-such-host.invalid")
            .arg("--key-file")
            .arg(sshd.user_key_path()),
        1,
        &["cannot resolve `no-such-host.invalid`", "hint:"],
        &[],
    );
    refused(
        base("deploy@127.0.0.1:99999")
            .arg("--key-file")
            .arg(sshd.user_key_path()),
        2,
        &["bad port"],
        &[],
    );

    // Remote paths that are not an app's own directory.
    for (path, says) in [
        ("srv/app", "not an absolute path"),
        ("/", "system directory"),
        ("/etc", "system directory"),
        ("/tmp/x/../etc", "`..` parts"),
        ("/srv/app\nrm -rf /", "control characters"),
    ] {
        refused(
            Test::new()
                .args(["deploy", "--process-manager", "none", "--host"])
                .arg(sshd.host_spec())
                .arg("--key-file")
                .arg(sshd.user_key_path())
                .arg("--known-hosts-file")
                .arg(sshd.known_hosts_path())
                .arg("--working-directory")
                .arg(&app)
                .args(["--remote-path", path]),
            2,
            &["input `remote-path`", says],
            &[],
        );
    }
    refused(
        Test::new()
            .args([
                "deploy",
                "--process-manager",
                "none",
                "--release",
                "../../etc",
            ])
            .args(crate::test::ssh_args(&sshd, &remote))
            .arg("--working-directory")
            .arg(&app),
        2,
        &["input `release`"],
        &[],
    );

    // Env text: the line number, never the value.
    for (text, line) in [
        ("A=1\nB=2\nthis line is wrong s3cret-value\n", "line 3"),
        ("A=1\nB=\"unterminated s3cret-value\nC=3\n", "line 2"),
        ("1BAD=s3cret-value\n", "line 1"),
    ] {
        let env_file = work.path().join("bad.env");
        fs::write(&env_file, text).unwrap();
        refused(
            pinned()
                .arg("--key-file")
                .arg(sshd.user_key_path())
                .arg("--env-file")
                .arg(&env_file),
            2,
            &["input `env`", line],
            &["s3cret"],
        );
    }

    // A symlink in the build that leads out of the release.
    std::os::unix::fs::symlink(
        "../../../../../etc/passwd",
        app.join(".next/standalone/escape"),
    )
    .unwrap();
    refused(
        pinned().arg("--key-file").arg(sshd.user_key_path()),
        2,
        &["escape", "points outside the release"],
        &[],
    );
    fs::remove_file(app.join(".next/standalone/escape")).unwrap();

    eprintln!("bad inputs tried: {tried}, all refused with the server untouched");
    assert!(tried >= 20, "{tried}");
    // And the same target takes a good deploy.
    pinned()
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .success();
}

#[test]
fn a_host_key_changed_against_known_hosts_shows_both_fingerprints() {
    let sshd = Sshd::start();
    let other = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let changed = other
        .known_hosts_line()
        .replace(&other.port().to_string(), &sshd.port().to_string());
    let out = Test::new()
        .args(["deploy", "--process-manager", "none", "--host"])
        .arg(sshd.host_spec())
        .arg("--key-file")
        .arg(sshd.user_key_path())
        .args(["--known-hosts", &changed, "--working-directory"])
        .arg(&app)
        .arg("--remote-path")
        .arg(&remote)
        .status(2);
    assert_stderr(
        &out,
        &[
            "does not match",
            &other.host_fingerprint(),
            &sshd.host_fingerprint(),
        ],
    );
    assert!(!remote.exists());
}

#[test]
fn a_server_that_never_speaks_ssh_times_out_within_the_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = std::thread::spawn(move || {
        // Accept one connection and say nothing until the test ends.
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(35));
        drop(conn);
    });
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let key = work.path().join("key");
    let sshd = Sshd::start();
    fs::write(&key, sshd.user_key()).unwrap();
    let started = Instant::now();
    let mut client = Watched::new(
        Test::new()
            .args(["deploy", "--process-manager", "none", "--host"])
            .arg(format!("deploy@127.0.0.1:{port}"))
            .arg("--key-file")
            .arg(&key)
            .args(["--host-fingerprint", &sshd.host_fingerprint()])
            .arg("--working-directory")
            .arg(&app)
            .arg("--remote-path")
            .arg(work.path().join("app"))
            .spawn(),
    );
    // README: "Connect (15 s timeout ...)"; allow for a slow machine.
    let ended = client.wait(Duration::from_secs(30));
    eprintln!(
        "a silent server: dropship gave up after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(ended, Ended::Exited(1), "{}", client.stderr());
    assert!(client.stderr().contains("hint:"), "{}", client.stderr());
    let _ = silent.join();
}

/// A server that allows one session per connection (`MaxSessions 1`) cannot
/// take a second upload channel: the agent discards what it got, the client
/// says so and uploads again on one channel, and the release lands whole.
#[test]
fn a_server_refusing_a_second_channel_gets_the_release_on_one() {
    let sshd = Sshd::start_with_max_sessions(1);
    let work = tempfile::tempdir().unwrap();
    let v1 = fixture::nextjs_app(work.path(), "v1");
    let v2 = fixture::nextjs_app(work.path(), "v2");
    let expected = fixture::expected_release(&v2, &work.path().join("expected"));
    let remote = work.path().join("app");
    Test::deploy_over_ssh(&sshd, &v1, &remote)
        .args(["--release", "r1"])
        .success();

    let started = Instant::now();
    let out = Test::deploy_over_ssh(&sshd, &v2, &remote)
        .args(["--release", "r2"])
        .env("DROPSHIP_CHANNELS", "2")
        .success();
    assert_stderr(
        &out,
        &["refused a second SSH channel (`MaxSessions 1`?); uploading again on one"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the agent waited for the part that never came: {:?}",
        started.elapsed()
    );
    assert_eq!(live(&remote).as_deref(), Some("releases/r2"));
    // With v1's build-id directory, kept by `keep-assets` (tests/skew.rs).
    let carried = fixture::static_build_dir("v1");
    tree::assert_same_tree_except(&expected, &remote.join("current"), &[".env", &carried]);
    assert!(staging_entries(&remote).is_empty());
}

/// A stalled server (CPU starved, swapping) leaves the agent silent for longer
/// than the 15 s SSH keepalive interval: the client keeps waiting, sending
/// keepalives, up to its 120 s call timeout, and the deploy completes.
#[test]
fn an_agent_silent_for_longer_than_the_keepalive_interval_is_waited_for() {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let remote = work.path().join("app");
    let child = Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--release", "r1"])
        .spawn_piped();
    let mut client = Watched::new(child);
    assert!(
        client
            .wait_for_line(": ready (live: nothing yet", Duration::from_secs(60))
            .is_some(),
        "{}",
        client.stderr()
    );
    let agents = process::agent_pids(&remote);
    assert_eq!(agents.len(), 1, "{agents:?}");
    process::signal(agents[0], libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(25));
    process::signal(agents[0], libc::SIGCONT);
    assert_eq!(
        client.wait(Duration::from_secs(60)),
        Ended::Exited(0),
        "{}",
        client.stderr()
    );
    assert_eq!(live(&remote).as_deref(), Some("releases/r1"));
}
