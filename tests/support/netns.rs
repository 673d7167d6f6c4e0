//! A fleet of real hosts on one machine, for the EC2 tests: each host is a Linux
//! network namespace joined to a bridge in the root namespace, with its own private
//! IP (`10.<n>.0.<10+i>`), a real OpenSSH sshd on `<ip>:22`, a real nginx on
//! `<ip>:80` and its own directory and `PM2_HOME`. Needs root (`ip netns`, bridges,
//! mounts): tests that use it are `#[ignore = "needs root: …"]` and [`NetFleet::new`]
//! calls `assert_root`.
//!
//! Layout, for a fleet in `<work>` (a temp dir):
//! - `<work>/srv/site` is the remote path every host shares and `<work>/srv/nginx`
//!   the nginx directory: every SSH session runs in a mount namespace of its own
//!   where host i's `<work>/hosts/h<i>/site` and `<work>/hosts/h<i>/nginx` are
//!   bind-mounted over them (as `Sshd::start_as_host` does), so a release, its
//!   `current` link, the nginx upstream file and the reload command are per host.
//! - `<work>/hosts/h<i>/pm2` is host i's `PM2_HOME` (`SetEnv` in its sshd config).
//!   The PM2 daemon the agent starts over SSH, and its apps, run in the host's
//!   namespace: they listen on that host's 127.0.0.1, apart from every other host.
//! - nginx proxies `0.0.0.0:80` to the upstream `site` of an include file: for
//!   `restart`, fixed at `127.0.0.1:3000`; for `blue-green`, the file dropship
//!   rewrites (`--nginx-upstream`, see [`NetFleet::run_args`]), first on 3000.
//! - One user key for the whole fleet (the deploy's `--key-file`), one host key per
//!   host, one known_hosts file with a line per IP (`10.x.0.y ssh-ed25519 AAAA…`).
//!
//! Names: subnets are locked per fleet (`/run/dropship-netns/10.<n>.lock`, holding
//! our PID; a lock whose PID is gone is taken over) and never one an interface or
//! route of this machine already uses; interface names carry our PID and a counter
//! in base 36 (`ds<pid>-<n>b` the bridge, `ds<pid>-<n>h<i>` the host side of a veth,
//! `eth0` its namespace side), namespaces are `dropship-<pid>-<n>-<i>`.
//!
//! Drop (also on unwind, and for a fleet half built when a step panicked): sshd and
//! nginx stopped by PID, then every process left in each namespace (`ip netns pids`:
//! the PM2 daemon, its apps, agents) SIGKILLed by PID, then the veths, namespaces
//! and bridge deleted and the subnet's lock removed. A process killed with SIGKILL
//! runs no Drop: the first fleet of the next test process deletes what fleets of
//! processes that are gone left behind (their PID is in every name).

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{alive, signal};
use super::runtime::{Nginx, get_from, reload_command};
use super::sshd::{Sshd, current_user, user_keypair};
use crate::test::Test;

/// The app ports of every host (each has its own loopback): restart uses the first.
pub const APP_PORTS: (u16, u16) = (3000, 3001);
/// The nginx upstream (and app) name: the basename of the shared remote path.
pub const UPSTREAM: &str = "site";
const LOCK_DIR: &str = "/run/dropship-netns";

static FLEETS: AtomicUsize = AtomicUsize::new(0);

/// How dropship switches the fleet's apps, and so what nginx proxies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// One app port (3000); nginx proxies to it, nothing rewrites its upstream.
    Restart,
    /// Two app ports (3000, 3001); dropship rewrites nginx's upstream and reloads it.
    BlueGreen,
}

/// Hosts in network namespaces on one bridge; torn down completely when dropped.
pub struct NetFleet {
    // Dropped in this order: hosts (processes, namespaces), bridge, files.
    hosts: Vec<NetHost>,
    bridge: Bridge,
    strategy: Strategy,
    remote: PathBuf,
    nginx_shared: PathBuf,
    key: PathBuf,
    known_hosts: PathBuf,
    work: TempDir,
}

/// One host of a [`NetFleet`].
pub struct NetHost {
    // Dropped in this order: sshd, nginx, then everything left in the namespace.
    sshd: Sshd,
    nginx: Nginx,
    ns: Namespace,
    index: usize,
    ip: Ipv4Addr,
    dir: PathBuf,
    pm2_home: PathBuf,
}

impl NetFleet {
    /// `count` hosts for the `restart` strategy (nginx in front of port 3000).
    #[track_caller]
    pub fn new(count: usize) -> NetFleet {
        NetFleet::with_strategy(count, Strategy::Restart)
    }

    /// `count` hosts for `blue-green` (nginx's upstream rewritten by dropship).
    #[track_caller]
    pub fn blue_green(count: usize) -> NetFleet {
        NetFleet::with_strategy(count, Strategy::BlueGreen)
    }

    #[track_caller]
    pub fn with_strategy(count: usize, strategy: Strategy) -> NetFleet {
        crate::support::assert_root("hosts in network namespaces on a bridge");
        assert!(count <= 100, "at most 100 hosts per fleet (10.n.0.10-109)");
        static REAPED: std::sync::Once = std::sync::Once::new();
        REAPED.call_once(reap_dead_fleets);
        let pid = std::process::id();
        let serial = FLEETS.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("ds{}-{}", base36(pid as usize), base36(serial));
        let work = tempfile::Builder::new()
            .prefix("dropship-fleet-")
            .tempdir()
            .expect("create the fleet's temp dir");
        let remote = work.path().join("srv").join(UPSTREAM);
        let nginx_shared = work.path().join("srv/nginx");
        let key = work.path().join("id_ed25519");
        user_keypair(&key);
        let bridge = Bridge::create(&format!("{prefix}b"));
        let subnet = bridge.subnet;
        let mut hosts = Vec::with_capacity(count);
        for index in 0..count {
            let ip = Ipv4Addr::new(10, subnet, 0, 10 + index as u8);
            let home = work.path().join(format!("hosts/h{index}"));
            let dir = home.join("site");
            let nginx_dir = home.join("nginx");
            let pm2_home = home.join("pm2");
            for d in [&dir, &nginx_dir, &pm2_home] {
                fs::create_dir_all(d).expect("create a host's directories");
            }
            let ns = Namespace::create(
                &format!("dropship-{pid}-{serial}-{index}"),
                &format!("{prefix}h{index}"),
                &bridge,
                ip,
                &pm2_home,
            );
            let upstream = nginx_dir.join("upstream.conf");
            fs::write(
                &upstream,
                format!(
                    "upstream {UPSTREAM} {{ server 127.0.0.1:{}; }}\n",
                    APP_PORTS.0
                ),
            )
            .expect("write the nginx upstream");
            let nginx = Nginx::start_in_netns(&ns.name, ip, &nginx_dir, UPSTREAM, &upstream);
            let pm2 = pm2_home.display().to_string();
            let sshd = Sshd::start_in_netns(
                &ns.name,
                ip,
                &[("PM2_HOME", &pm2)],
                &[(&remote, &dir), (&nginx_shared, &nginx_dir)],
                &key,
            );
            hosts.push(NetHost {
                sshd,
                nginx,
                ns,
                index,
                ip,
                dir,
                pm2_home,
            });
        }
        let known_hosts = work.path().join("known_hosts");
        let lines: String = hosts
            .iter()
            .map(|h| format!("{}\n", h.known_hosts_line()))
            .collect();
        fs::write(&known_hosts, lines).expect("write the fleet's known_hosts");
        NetFleet {
            hosts,
            bridge,
            strategy,
            remote,
            nginx_shared,
            key,
            known_hosts,
            work,
        }
    }

    pub fn hosts(&self) -> &[NetHost] {
        &self.hosts
    }

    pub fn host(&self, index: usize) -> &NetHost {
        &self.hosts[index]
    }

    /// The `n` of the fleet's subnet `10.<n>.0.0/24` (seed the VPC as `10.<n>.0.0/16`).
    pub fn subnet(&self) -> u8 {
        self.bridge.subnet
    }

    /// The bridge's address, `10.<n>.0.1`: where the hosts see the runner come from
    /// (the IP an `--ssh-ingress` rule must let in: `DROPSHIP_RUNNER_IP`).
    pub fn runner_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.bridge.subnet, 0, 1)
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// A scratch directory that lives as long as the fleet (for apps to deploy).
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// The remote path every host shares (each sees its own directory there).
    pub fn remote_path(&self) -> &Path {
        &self.remote
    }

    /// The user key every host authorizes (`--key-file`).
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// known_hosts text: one `10.x.0.y ssh-ed25519 AAAA…` line per host, in order.
    pub fn known_hosts(&self) -> String {
        fs::read_to_string(&self.known_hosts).expect("read the fleet's known_hosts")
    }

    /// A file holding [`NetFleet::known_hosts`] (`--known-hosts-file`).
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// `root@10.x.0.10:22,root@10.x.0.11:22,…` (the user the tests run as).
    pub fn host_list(&self) -> String {
        self.hosts
            .iter()
            .map(NetHost::host_spec)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nginx upstream file dropship rewrites for blue-green, as the hosts see it.
    pub fn nginx_upstream(&self) -> PathBuf {
        self.nginx_shared.join("upstream.conf")
    }

    /// The reload command of each host's own nginx, as the hosts see it.
    pub fn nginx_reload(&self) -> String {
        reload_command(&self.nginx_shared)
    }

    /// Options for a PM2 deploy to this fleet without the host list (`--host` or
    /// `--ec2-hosts` are the caller's): remote path, key, known_hosts, 20 s health
    /// timeout, and the strategy's ports and nginx options.
    pub fn run_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--remote-path".into(),
            self.remote.display().to_string(),
            "--key-file".into(),
            self.key.display().to_string(),
            "--known-hosts-file".into(),
            self.known_hosts.display().to_string(),
            "--process-manager".into(),
            "pm2".into(),
            "--health-timeout".into(),
            "20".into(),
        ];
        match self.strategy {
            Strategy::Restart => args.extend([
                "--strategy".into(),
                "restart".into(),
                "--app-port".into(),
                APP_PORTS.0.to_string(),
            ]),
            Strategy::BlueGreen => args.extend([
                "--strategy".into(),
                "blue-green".into(),
                "--app-port".into(),
                format!("{},{}", APP_PORTS.0, APP_PORTS.1),
                "--nginx-upstream".into(),
                self.nginx_upstream().display().to_string(),
                "--nginx-reload".into(),
                self.nginx_reload(),
            ]),
        }
        args
    }

    /// `deploy` of `app` as `release` to every host, listed with `--host`.
    pub fn deploy(&self, app: &Path, release: &str) -> Test {
        Test::new()
            .args(["deploy", "--release", release, "--host", &self.host_list()])
            .args(self.run_args())
            .arg("--working-directory")
            .arg(app)
    }

    /// The bridge's and the host veths' names and the namespaces' names (to check
    /// that none is left once the fleet is dropped).
    pub fn resource_names(&self) -> (Vec<String>, Vec<String>) {
        let mut links = vec![self.bridge.name.clone()];
        links.extend(self.hosts.iter().map(|h| h.ns.veth.clone()));
        let namespaces = self.hosts.iter().map(|h| h.ns.name.clone()).collect();
        (links, namespaces)
    }
}

impl NetHost {
    pub fn index(&self) -> usize {
        self.index
    }

    /// The private IP, `10.<n>.0.<10+index>` (the instance's `PrivateIpAddress`).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `root@10.x.0.y:22` (the user the tests run as).
    pub fn host_spec(&self) -> String {
        format!("{}@{}:22", current_user(), self.ip)
    }

    /// The network namespace's name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.ns.name
    }

    /// The host's own directory: what its sessions see at the shared remote path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `current` points (`releases/<id>`), if there is one.
    pub fn live(&self) -> Option<String> {
        fs::read_link(self.dir.join("current"))
            .ok()
            .map(|p| p.display().to_string())
    }

    /// `GET http://<ip>/<path>` (through the host's nginx) from the root namespace:
    /// the body of a 200, else the status line or why there was none.
    pub fn get(&self, path: &str) -> Result<String, String> {
        let path = format!("/{}", path.trim_start_matches('/'));
        get_from(SocketAddr::from((self.ip, 80)), &path)
    }

    /// `10.x.0.y ssh-ed25519 AAAA…`.
    pub fn known_hosts_line(&self) -> String {
        self.sshd.known_hosts_line()
    }

    /// The host key's fingerprint, `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        self.sshd.host_fingerprint()
    }

    pub fn pm2_home(&self) -> &Path {
        &self.pm2_home
    }

    /// `pm2 jlist` names and statuses of this host's PM2.
    pub fn pm2_processes(&self) -> Vec<(String, String)> {
        let out = self
            .command("pm2")
            .arg("jlist")
            .env("PM2_HOME", &self.pm2_home)
            .output()
            .expect("run pm2 jlist");
        let list: serde_json::Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| serde_json::from_str(line).ok())
            .unwrap_or_default();
        list.as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_owned(),
                    p["pm2_env"]["status"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// `program` to run in the host's network namespace (whatever it leaves running
    /// there is killed with the fleet).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns.name, program]);
        command
    }

    /// The PIDs of the host's nginx, master first, then its workers (e.g. to SIGSTOP
    /// them all: connections are accepted, never answered, health checks time out).
    pub fn nginx_pids(&self) -> Vec<u32> {
        let master = self.nginx.pid();
        let children = fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        std::iter::once(master)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }

    pub fn sshd_log(&self) -> String {
        self.sshd.log()
    }

    pub fn nginx_error_log(&self) -> String {
        self.nginx.error_log()
    }
}

/// The bridge and its subnet's lock; deleted and removed when dropped.
struct Bridge {
    name: String,
    subnet: u8,
    lock: PathBuf,
}

impl Bridge {
    fn create(name: &str) -> Bridge {
        let (subnet, lock) = lock_subnet();
        let bridge = Bridge {
            name: name.to_owned(),
            subnet,
            lock,
        };
        ip(&["link", "add", name, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.{subnet}.0.1/24"), "dev", name]);
        ip(&["link", "set", name, "up"]);
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.name]);
        let _ = fs::remove_file(&self.lock);
    }
}

/// A namespace and its veth; everything in it killed and both deleted when dropped.
struct Namespace {
    name: String,
    veth: String,
    pm2_home: PathBuf,
}

impl Namespace {
    fn create(name: &str, veth: &str, bridge: &Bridge, addr: Ipv4Addr, pm2_home: &Path) -> Self {
        let ns = Namespace {
            name: name.to_owned(),
            veth: veth.to_owned(),
            pm2_home: pm2_home.to_owned(),
        };
        ip(&["netns", "add", name]);
        ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]);
        ip(&["link", "set", veth, "master", &bridge.name]);
        ip(&["link", "set", veth, "up"]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", name, "link", "set", "eth0", "up"]);
        let gateway = format!("10.{}.0.1", bridge.subnet);
        ip(&["-n", name, "route", "add", "default", "via", &gateway]);
        ns
    }

    /// PIDs of the processes in the namespace.
    fn pids(&self) -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // The PM2 daemon first (so that it cannot restart its apps), then the rest.
        let daemon = fs::read_to_string(self.pm2_home.join("pm2.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if let Some(pid) = daemon.filter(|pid| self.pids().contains(pid)) {
            signal(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<u32> = self.pids().into_iter().filter(|p| alive(*p)).collect();
            if pids.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                signal(pid, libc::SIGKILL);
            }
            thread::sleep(Duration::from_millis(20));
        }
        if !self.veth.is_empty() {
            ip_quiet(&["link", "del", &self.veth]);
        }
        ip_quiet(&["netns", "del", &self.name]);
    }
}

/// Deletes what fleets of test processes that are gone (SIGKILLed: no Drop ran) left:
/// namespaces `dropship-<pid>-…` (and every process still in them), links
/// `ds<pid in base 36>-…`, and their subnet locks.
fn reap_dead_fleets() {
    let dead = |pid: Option<u32>| pid.is_some_and(|pid| !alive(pid));
    for line in ip_output(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let pid = name
            .strip_prefix("dropship-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse().ok());
        if dead(pid) {
            drop(Namespace {
                name: name.to_owned(),
                veth: String::new(),
                pm2_home: PathBuf::new(),
            });
        }
    }
    for line in ip_output(&["-o", "link", "show"]).lines() {
        let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
            continue;
        };
        let pid = name
            .strip_prefix("ds")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| u32::from_str_radix(pid, 36).ok());
        if dead(pid) {
            ip_quiet(&["link", "del", name]);
        }
    }
    if let Ok(locks) = fs::read_dir(LOCK_DIR) {
        for lock in locks.flatten() {
            let holder = fs::read_to_string(lock.path())
                .ok()
                .and_then(|p| p.trim().parse().ok());
            if dead(holder) {
                let _ = fs::remove_file(lock.path());
            }
        }
    }
}

/// Locks a subnet `10.<n>.0.0/16` that nothing on this machine uses.
fn lock_subnet() -> (u8, PathBuf) {
    fs::create_dir_all(LOCK_DIR).expect("create /run/dropship-netns");
    let used = format!(
        "{}\n{}",
        ip_output(&["-o", "-4", "addr", "show"]),
        ip_output(&["-4", "route", "show", "table", "all"])
    );
    let pid = std::process::id() as usize;
    let start = (pid * 7 + FLEETS.load(Ordering::SeqCst) * 13) % 200;
    for k in 0..200 {
        let n = u8::try_from(20 + (start + k) % 200).expect("20..220 fits in u8");
        let prefix = format!("10.{n}.");
        let taken = used
            .lines()
            .any(|line| line.starts_with(&prefix) || line.contains(&format!("inet {prefix}")));
        if taken {
            continue;
        }
        let lock = Path::new(LOCK_DIR).join(format!("10.{n}.lock"));
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(file) => {
                    use std::io::Write;
                    let mut file = file;
                    file.write_all(format!("{}\n", std::process::id()).as_bytes())
                        .expect("write the subnet lock");
                    return (n, lock);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&lock)
                        .ok()
                        .and_then(|p| p.trim().parse::<u32>().ok());
                    match holder {
                        // A fleet of a test process that is gone: take its subnet.
                        Some(holder) if !alive(holder) => {
                            let _ = fs::remove_file(&lock);
                        }
                        _ => break,
                    }
                }
                Err(e) => panic!("create {}: {e}", lock.display()),
            }
        }
    }
    panic!("no free subnet 10.20-219.0.0/16 for a test fleet (see {LOCK_DIR})")
}

fn base36(mut n: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

#[track_caller]
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run `ip` (is iproute2 installed?)");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (is iproute2 installed?)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of every link and network namespace on the machine (for leak checks).
pub fn links_and_namespaces() -> (String, String) {
    (
        ip_output(&["-o", "link", "show"]),
        ip_output(&["netns", "list"]),
    )
}
