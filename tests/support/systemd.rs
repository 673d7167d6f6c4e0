//! A real systemd user manager (`systemd --user`) per test, on a machine whose
//! PID 1 is not systemd. Needs root, for two things:
//! - a private mount namespace with a tmpfs on `/run/systemd` holding an empty
//!   `/run/systemd/system/` directory: without it systemd refuses to run ("system
//!   has not been booted with systemd");
//! - a cgroup of its own in every cgroup hierarchy systemd uses (cgroup2, and
//!   the v1 `name=systemd` one on hybrid machines): without one it exits 1 silently.
//!
//! It runs as the user running the tests with a private `HOME` (where the agent
//! writes units, `~/.config/systemd/user/`) and `XDG_RUNTIME_DIR` (its bus), so
//! tests do not share units. There is no journald: the units log to files.
//! Dropping it SIGTERMs systemd by PID (it stops its units and exits in about a
//! second), SIGKILLs whatever is left in its cgroups by PID, and removes them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{alive, signal};

const SYSTEMD: &str = "/lib/systemd/systemd";
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Becomes the user manager: private `/run/systemd`, own cgroups, then `exec systemd --user`.
/// Arguments: `$1` HOME, `$2` XDG_RUNTIME_DIR, the rest the `cgroup.procs` files to join.
const STAGE: &str = r#"set -e
home=$1 runtime=$2; shift 2
mount -t tmpfs tmpfs /run/systemd
mkdir /run/systemd/system
for procs in "$@"; do echo $$ > "$procs"; done
exec env -i HOME="$home" XDG_RUNTIME_DIR="$runtime" PATH=/usr/local/bin:/usr/bin:/bin \
     /lib/systemd/systemd --user
"#;

/// A running `systemd --user`, stopped by PID when dropped.
pub struct UserManager {
    dir: TempDir,
    child: Child,
    cgroups: Vec<PathBuf>,
}

impl UserManager {
    /// Starts a user manager. Needs root (a mount namespace and cgroups on a machine not
    /// booted with systemd): its tests are `#[ignore = "needs root: …"]`.
    #[track_caller]
    pub fn start() -> UserManager {
        super::assert_root("a systemd user manager needs a mount namespace and cgroups");
        assert!(
            Path::new(SYSTEMD).exists(),
            "{SYSTEMD} is missing (is the systemd package installed?)"
        );
        let dir = tempfile::Builder::new()
            .prefix("dropship-systemd-")
            .tempdir()
            .unwrap();
        let runtime = dir.path().join("run");
        fs::create_dir_all(dir.path().join("home")).unwrap();
        fs::create_dir(&runtime).unwrap();
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir_all("/run/systemd").unwrap();
        let cgroups = make_cgroups();
        let log = fs::File::create(dir.path().join("systemd.log")).unwrap();
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                STAGE,
                "sh",
            ])
            .arg(dir.path().join("home"))
            .arg(&runtime)
            .args(cgroups.iter().map(|cg| cg.join("cgroup.procs")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run unshare (is util-linux installed?)");
        let manager = UserManager {
            dir,
            child,
            cgroups,
        };
        manager.wait_ready();
        manager
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while !self
            .systemctl(&["show", "--property=Version"])
            .status
            .success()
        {
            assert!(
                alive(self.child.id()) && started.elapsed() < START_TIMEOUT,
                "systemd --user did not come up within {START_TIMEOUT:?}:\n{}",
                fs::read_to_string(self.dir.path().join("systemd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The manager's `HOME`: units go to `<home>/.config/systemd/user/`.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The manager's `XDG_RUNTIME_DIR` (its private bus socket lives there).
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The environment a session needs to reach this manager.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("HOME", self.home().display().to_string()),
            ("XDG_RUNTIME_DIR", self.runtime_dir().display().to_string()),
        ]
    }

    /// The file of user unit `unit`.
    pub fn unit_file(&self, unit: &str) -> PathBuf {
        self.home().join(".config/systemd/user").join(unit)
    }

    /// Runs `systemctl --user <args>` against this manager.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        Command::new("systemctl")
            .arg("--user")
            .args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .expect("run systemctl")
    }

    /// One property of `unit` (`systemctl --user show -p <property> --value`).
    pub fn property(&self, unit: &str, property: &str) -> String {
        let out = self.systemctl(&["show", unit, "--property", property, "--value"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `systemctl --user is-enabled <unit>`'s answer (`enabled`, `disabled`, `not-found`...).
    pub fn is_enabled(&self, unit: &str) -> String {
        let out = self.systemctl(&["is-enabled", unit]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if text.is_empty() {
            "not-found".into()
        } else {
            text
        }
    }

    /// The units named `dropship-*.service` the manager knows, with their active state.
    pub fn dropship_units(&self) -> Vec<(String, String)> {
        let out = self.systemctl(&[
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "dropship-*.service",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                Some((fields.first()?.to_string(), fields.get(2)?.to_string()))
            })
            .collect()
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGTERM);
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for cgroup in &self.cgroups {
            for pid in pids_below(cgroup) {
                signal(pid, libc::SIGKILL);
            }
        }
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup, Instant::now() + Duration::from_secs(5));
        }
    }
}

/// A fresh cgroup in each hierarchy systemd uses: the pure cgroup2 mount, or on
/// hybrid machines the cgroup2 at `unified/` and the v1 `name=systemd` one.
fn make_cgroups() -> Vec<PathBuf> {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "dropship-test-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    );
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.to_owned()]
    } else {
        ["unified", "systemd"]
            .iter()
            .map(|h| root.join(h))
            .filter(|h| h.join("cgroup.procs").exists())
            .collect()
    };
    assert!(
        !hierarchies.is_empty(),
        "no cgroup hierarchy for systemd under /sys/fs/cgroup"
    );
    hierarchies
        .iter()
        .map(|h| {
            let cgroup = h.join(&name);
            fs::create_dir(&cgroup)
                .unwrap_or_else(|e| panic!("create cgroup {}: {e}", cgroup.display()));
            cgroup
        })
        .collect()
}

/// PIDs in `cgroup` and every cgroup below it.
fn pids_below(cgroup: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in fs::read_dir(cgroup).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            pids.extend(pids_below(&entry.path()));
        }
    }
    pids
}

/// Removes `cgroup` and its children (children first), retrying while killed processes exit.
fn remove_cgroup(cgroup: &Path, deadline: Instant) {
    for entry in fs::read_dir(cgroup).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            remove_cgroup(&entry.path(), deadline);
        }
    }
    while let Err(err) = fs::remove_dir(cgroup) {
        if err.kind() == std::io::ErrorKind::NotFound || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
