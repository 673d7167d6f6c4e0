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
use crate::support::runtime::{Pm2Home, free_port, get};
use crate::support::sshd::{KeyKind, Sshd};
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
}

/// What a fault led to.
#[derive(Debug, Default)]
struct Tally {
    trials: usize,
    survived: usize,
    old_live: usize,
    new_live: usize,
    /// The client said the deploy failed (exit 1) while the new release was live.
    failed_but_new_live: usize,
    /// The client was not there to say anything (SIGKILLed) and the new release was live.
    killed_new_live: usize,
}

/// One app deployed over and over through a fault-injecting proxy, with the
/// old and the new release known byte for byte.
struct Site {
    remote: PathBuf,
    apps: [PathBuf; 2],
    expected: [PathBuf; 2],
    proxy: Proxy,
    sshd: Sshd,
    run_args: Vec<String>,
    /// The variant `current` holds (index into `apps`).
    live: usize,
    releases: usize,
    /// Makes each deploy's unique file (files already on the host are not sent again).
    content: Rng,
    pm2: Option<(Pm2Home, u16)>,
    work: tempfile::TempDir,
}

impl Site {
    /// A site with `process-manager none`, or PM2 `restart` when `pm2`.
    fn new(pm2: bool) -> Site {
        let work = tempfile::tempdir().unwrap();
        let pm2 = pm2.then(|| (Pm2Home::new(), free_port()));
        let sshd = match &pm2 {
            Some((home, _)) => Sshd::start_with_env(&[("PM2_HOME", &home.path_str())]),
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
        let run_args = match &pm2 {
            Some((_, port)) => vec![
                "--process-manager".into(),
                "pm2".into(),
                "--strategy".into(),
                "restart".into(),
                "--app-port".into(),
                port.to_string(),
                "--health-timeout".into(),
                "20".into(),
            ],
            None => vec!["--process-manager".into(), "none".into()],
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
            releases: 0,
            content: Rng::new(SEED ^ 0xc0),
            pm2,
            work,
        };
        // The first deploy installs the agent; later ones only stream the release.
        let out = site.deploy(false, 0, "first").run();
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
        let release = self.next_release("cal");
        let variant = 1 - self.live;
        let out = self.deploy(true, variant, &release).run();
        assert_eq!(out.code, 0, "calibration deploy:\n{}", out.stderr);
        let whole = self.proxy.bytes_up();
        self.check_live(variant, &release);
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
            &[".env"],
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
        let got: std::collections::BTreeMap<_, _> =
            got.into_iter().filter(|(path, _)| path != ".env").collect();
        for variant in [self.live, 1 - self.live] {
            if tree::snapshot(&self.expected[variant]) == got {
                return Some(variant);
            }
        }
        // Neither: show the diff against the old release.
        tree::assert_same_tree_except(&self.expected[self.live], &dir, &[".env"]);
        unreachable!("the trees differ");
    }

    /// One faulty deploy of the other variant, then the checks and a recovery deploy.
    fn trial(&mut self, fault: Fault, tally: &mut Tally) {
        let _reaper = AgentReaper(self.remote.clone());
        let old = self.live;
        let new = 1 - old;
        let release = self.next_release("f");
        let started = Instant::now();
        if let Fault::Cut(bytes) = fault {
            self.proxy.cut_after(bytes);
        }
        let mut client = Watched::new(self.deploy(true, new, &release).spawn());
        match fault {
            Fault::Cut(_) => {}
            Fault::KillClient(line, delay) => {
                if client
                    .wait_for_line(line, Duration::from_secs(30))
                    .is_some()
                {
                    std::thread::sleep(Duration::from_millis(delay));
                    client.kill();
                }
            }
            Fault::KillAgent(line, delay) => {
                if client
                    .wait_for_line(line, Duration::from_secs(30))
                    .is_some()
                {
                    std::thread::sleep(Duration::from_millis(delay));
                    for pid in process::agent_pids(&self.remote) {
                        process::signal(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let ended = client.wait(Duration::from_secs(60));
        eprintln!(
            "DEBUG {fault:?} {ended:?} up={} cuts={} {:.2}s",
            self.proxy.bytes_up(),
            self.proxy.cuts(),
            started.elapsed().as_secs_f64()
        );
        self.proxy.unlimited();
        let context = format!(
            "trial {} ({fault:?}): client {ended:?} after {:.2} s\n--- client stderr\n{}",
            tally.trials + 1,
            started.elapsed().as_secs_f64(),
            client.stderr()
        );
        // The agent notices the dead client (or was killed) and ends on its own.
        assert!(
            process::wait_agents_gone(&self.remote, Duration::from_secs(45)),
            "an agent still runs 45 s after the fault\n{context}"
        );
        let now = self.live_variant();
        assert!(now.is_some(), "`current` vanished\n{context}");
        let now = now.unwrap();
        match ended {
            Ended::Exited(0) => {
                assert_eq!(now, new, "exit 0 but the old release is live\n{context}")
            }
            Ended::Exited(1) => {
                assert!(client.stderr().contains("error:"), "{context}");
                if now == new {
                    tally.failed_but_new_live += 1;
                    eprintln!(
                        "finding: exit 1 (\"every host serves what it served before\") but {release} is live\n{context}"
                    );
                }
            }
            Ended::Exited(code) => panic!("unexpected exit status {code}\n{context}"),
            Ended::Killed => {
                if now == new {
                    tally.killed_new_live += 1;
                }
            }
        }
        if now == new {
            tally.new_live += 1;
        } else {
            tally.old_live += 1;
        }
        self.live = now;
        if let Some((_, port)) = &self.pm2 {
            let answer = get(*port).unwrap_or_else(|err| {
                panic!("the app does not answer after the fault: {err}\n{context}")
            });
            assert!(answer.contains("Hello from"), "{answer}\n{context}");
        }

        // The next deploy gets the lock within 5 s, clears staging and lands.
        let recovery = self.next_release("r");
        let variant = 1 - self.live;
        let out = self.deploy(false, variant, &recovery).run();
        assert_eq!(
            out.code, 0,
            "the deploy after the fault failed\n--- its stderr\n{}\n{context}",
            out.stderr
        );
        self.check_live(variant, &recovery);
        let staging: Vec<_> = fs::read_dir(self.remote.join(".dropship/staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            staging.is_empty(),
            "left in staging: {staging:?}\n{context}"
        );
        if let Some((_, port)) = &self.pm2 {
            let answer = get(*port).unwrap_or_else(|err| format!("failed: {err}"));
            let name = if variant == 0 { "old" } else { "new" };
            assert!(
                answer.contains(&format!("Hello from {name}")),
                "{answer}\n{context}"
            );
        }
        tally.trials += 1;
        tally.survived += 1;
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
        "{name}: seed {SEED:#x}: {} trials run, {} faults survived; afterwards old release live {}, new {} \
         (new live after exit 1: {}, new live after the client was killed: {})",
        tally.trials,
        tally.survived,
        tally.old_live,
        tally.new_live,
        tally.failed_but_new_live,
        tally.killed_new_live
    );
}

#[test]
fn connection_cut_during_upload_and_after_the_stream_never_half_deploys() {
    let mut site = Site::new(false);
    let (before_stream, whole) = site.calibrate();
    eprintln!("calibration: {before_stream} bytes up to the stream, {whole} for a whole deploy");
    assert!(whole > before_stream + 100_000, "{before_stream} {whole}");
    let mut rng = Rng::new(SEED);
    let mut tally = Tally::default();
    // Within the stream.
    for _ in 0..3 {
        let at = rng.range(before_stream.saturating_sub(500), whole - 2000);
        site.trial(Fault::Cut(at), &mut tally);
    }
    // Around the end of the stream: the agent is verifying, syncing and renaming.
    for _ in 0..2 {
        let at = rng.range(whole - 2000, whole - 50);
        site.trial(Fault::Cut(at), &mut tally);
    }
    report("connection cuts", &tally);
    assert!(site.proxy.cuts() >= 20, "cuts: {}", site.proxy.cuts());
    let orphans = never_live(&site.remote);
    assert!(
        orphans.is_empty(),
        "releases that never went live: {orphans:?}"
    );
}

#[test]
fn client_and_agent_killed_around_the_switch_never_half_deploy() {
    let mut site = Site::new(false);
    let mut rng = Rng::new(SEED ^ 0x2);
    let mut tally = Tally::default();
    let points: [(fn(u64) -> Fault, u64, usize); 6] = [
        // During the upload.
        (|d| Fault::KillClient("ready (live:", d), 30, 6),
        // Just before the switch: `activate` may or may not be on its way.
        (|d| Fault::KillClient("staged", d), 4, 8),
        // Just after the switch and the commit.
        (|d| Fault::KillClient("live:", d), 2, 4),
        // The agent, during the upload.
        (|d| Fault::KillAgent("ready (live:", d), 30, 5),
        // The agent, around the switch.
        (|d| Fault::KillAgent("staged", d), 3, 5),
        // The agent, once it had reported the deploy done.
        (|d| Fault::KillAgent("live:", d), 0, 2),
    ];
    for (fault, max_delay, count) in points {
        for _ in 0..count {
            let delay = rng.range(0, max_delay);
            site.trial(fault(delay), &mut tally);
        }
    }
    report("kills", &tally);
    let orphans = never_live(&site.remote);
    assert!(
        orphans.is_empty(),
        "releases that never went live: {orphans:?}"
    );
}

#[test]
fn pm2_restart_keeps_answering_through_faults() {
    let mut site = Site::new(true);
    let mut rng = Rng::new(SEED ^ 0x3);
    let mut tally = Tally::default();
    let (before_stream, whole) = site.calibrate();
    let faults = [
        Fault::Cut(rng.range(before_stream, whole - 2000)),
        Fault::KillClient("ready (live:", rng.range(0, 20)),
        Fault::KillClient("starting", rng.range(0, 200)),
        Fault::KillClient("is healthy", 0),
        Fault::KillAgent("ready (live:", rng.range(0, 20)),
        Fault::KillAgent("starting", rng.range(0, 100)),
        Fault::KillAgent("is healthy", 0),
    ];
    for fault in faults {
        site.trial(fault, &mut tally);
    }
    report("pm2 restart", &tally);
}
