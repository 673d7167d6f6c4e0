//! Several hosts in one deploy: package once, stage all, switch all — and when
//! one host fails, every host keeps (or gets back) what it served before.
//! Each test host is an sshd whose sessions see their own directory at the
//! shared `remote-path` (a bind mount in a private mount namespace: root only).

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{fixture, sshd::Sshd, tree};
use crate::test::Test;

struct Fleet {
    work: tempfile::TempDir,
    remote: PathBuf,
    hosts: Vec<(Sshd, PathBuf)>,
}

impl Fleet {
    /// Needs root (a mount namespace per host): its tests are `#[ignore = "needs root: …"]`.
    #[track_caller]
    fn new(count: usize) -> Fleet {
        crate::support::assert_root("several test hosts on one machine, a mount namespace each");
        let work = tempfile::tempdir().unwrap();
        let remote = work.path().join("srv/site");
        let hosts = (0..count)
            .map(|n| {
                let real = work.path().join(format!("host{n}"));
                (Sshd::start_as_host(&[], &remote, &real), real)
            })
            .collect();
        Fleet {
            work,
            remote,
            hosts,
        }
    }

    fn deploy(&self, app: &Path, release: &str) -> Test {
        let hosts: Vec<String> = self.hosts.iter().map(|(s, _)| s.host_spec()).collect();
        let known: Vec<String> = self
            .hosts
            .iter()
            .map(|(s, _)| s.known_hosts_line())
            .collect();
        Test::new()
            .args([
                "deploy",
                "--release",
                release,
                "--host",
                &hosts.join(","),
                "--known-hosts",
                &known.join("\n"),
            ])
            .arg("--key-file")
            .arg(self.hosts[0].0.user_key_path())
            .arg("--working-directory")
            .arg(app)
            .arg("--remote-path")
            .arg(&self.remote)
    }

    fn live(&self, host: usize) -> Option<String> {
        fs::read_link(self.hosts[host].1.join("current"))
            .ok()
            .map(|p| p.display().to_string())
    }
}

/// Every sshd authorises the first one's user key.
fn share_key(fleet: &Fleet) {
    let key = fs::read_to_string(fleet.hosts[0].0.dir().join("id_ed25519.pub")).unwrap();
    for (sshd, _) in &fleet.hosts[1..] {
        let path = sshd.dir().join("authorized_keys");
        let mut keys = fs::read_to_string(&path).unwrap();
        keys.push_str(&key);
        fs::write(path, keys).unwrap();
    }
}

#[test]
#[ignore = "needs root: several hosts on one machine, a mount namespace each"]
fn all_hosts_get_the_same_release_from_one_package() {
    let fleet = Fleet::new(3);
    share_key(&fleet);
    let app = fixture::nextjs_app(fleet.work.path(), "v1");
    let expected = fixture::expected_release(&app, &fleet.work.path().join("expected"));
    let out = fleet
        .deploy(&app, "r1")
        .args(["--process-manager", "none", "--json"])
        .success();
    for n in 0..3 {
        assert_eq!(fleet.live(n).as_deref(), Some("releases/r1"));
        tree::assert_same_tree_except(&expected, &fleet.hosts[n].1.join("current"), &[".env"]);
    }
    assert_eq!(out.json()["hosts"].as_str().unwrap().split(',').count(), 3);
    assert_eq!(
        out.stderr.matches("package:").count(),
        1,
        "packaged once:\n{}",
        out.stderr
    );
}

#[test]
#[ignore = "needs root: several hosts on one machine, a mount namespace each"]
fn one_host_failing_to_stage_leaves_every_host_as_it_was() {
    let fleet = Fleet::new(2);
    share_key(&fleet);
    let v1 = fixture::nextjs_app(fleet.work.path(), "v1");
    let v2 = fixture::nextjs_app(fleet.work.path(), "v2");
    fleet
        .deploy(&v1, "r1")
        .args(["--process-manager", "none"])
        .success();
    // Host 1 cannot take r2: a directory of that name is already there.
    fs::create_dir_all(fleet.hosts[1].1.join("releases/r2")).unwrap();
    let out = fleet
        .deploy(&v2, "r2")
        .args(["--process-manager", "none"])
        .status(2);
    assert!(
        out.stderr.contains("release `r2` already exists"),
        "{}",
        out.stderr
    );
    assert_eq!(fleet.live(0).as_deref(), Some("releases/r1"));
    assert_eq!(fleet.live(1).as_deref(), Some("releases/r1"));
    assert!(
        !fleet.hosts[0].1.join("releases/r2").exists(),
        "host 0 kept a staged release"
    );
}

#[test]
#[ignore = "needs root: several hosts on one machine, a mount namespace each"]
fn a_host_failing_to_switch_puts_the_switched_hosts_back_in_both_rollouts() {
    let fleet = Fleet::new(2);
    share_key(&fleet);
    let v1 = fixture::nextjs_app(fleet.work.path(), "v1");
    let v2 = fixture::nextjs_app(fleet.work.path(), "v2");
    fleet
        .deploy(&v1, "r1")
        .args(["--process-manager", "none"])
        .success();
    // Host 1 cannot switch: someone replaced its `current` link with a directory.
    let current = fleet.hosts[1].1.join("current");
    fs::remove_file(&current).unwrap();
    fs::create_dir(&current).unwrap();
    for (n, rollout) in ["all-at-once", "rolling"].iter().enumerate() {
        let release = format!("r2{n}");
        let out = fleet
            .deploy(&v2, &release)
            .args(["--process-manager", "none", "--rollout", rollout])
            .status(1);
        assert!(out.stderr.contains("is a real directory"), "{}", out.stderr);
        assert!(
            out.stderr.contains("put back r1"),
            "{rollout}: {}",
            out.stderr
        );
        assert_eq!(fleet.live(0).as_deref(), Some("releases/r1"), "{rollout}");
        assert!(
            !fleet.hosts[0].1.join("releases").join(&release).exists(),
            "{rollout}"
        );
    }
}

#[test]
#[ignore = "needs root: several hosts on one machine, a mount namespace each"]
fn a_later_batch_failing_to_stage_puts_the_first_back_and_exits_1() {
    let fleet = Fleet::new(2);
    share_key(&fleet);
    let v1 = fixture::nextjs_app(fleet.work.path(), "v1");
    let v2 = fixture::nextjs_app(fleet.work.path(), "v2");
    fleet
        .deploy(&v1, "r1")
        .args(["--process-manager", "none"])
        .success();
    // Host 1, in the second batch, cannot take r2 (bad input there), after host 0 switched.
    fs::create_dir_all(fleet.hosts[1].1.join("releases/r2")).unwrap();
    let out = fleet
        .deploy(&v2, "r2")
        .args(["--process-manager", "none", "--rollout", "rolling"])
        .status(1);
    assert!(
        out.stderr.contains("release `r2` already exists"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("put back r1"), "{}", out.stderr);
    assert_eq!(fleet.live(0).as_deref(), Some("releases/r1"));
    assert_eq!(fleet.live(1).as_deref(), Some("releases/r1"));
    assert!(!fleet.hosts[0].1.join("releases/r2").exists());
}
