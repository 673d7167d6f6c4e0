//! A real OpenSSH `sshd` per test, listening on 127.0.0.1 with a random port,
//! a fresh ed25519 host key (and on request ECDSA and RSA ones) and a fresh
//! ed25519 user key authorized for the user running the tests.
//!
//! Notes from setting this up (Debian 12, OpenSSH 9.2):
//! - With `UsePAM no`, sshd on Linux refuses accounts whose shadow password
//!   field starts with `!` (a locked account), even for public-key logins.
//!   On the machine this was written on, root's field is `*` (no password, not
//!   locked), which sshd accepts, so nothing is changed. If the field starts
//!   with `!` and we can read `/etc/shadow` (i.e. we are root), [`Sshd::start`]
//!   panics with a hint (`usermod -p '*' <user>`) instead of silently editing
//!   the account.
//! - When run as root, sshd needs its privilege-separation directory
//!   `/run/sshd`; it is created (mode 0755) if missing.
//! - As a normal user sshd runs without privilege separation and can only log
//!   in that same user, which is all the tests need. It cannot read
//!   `/etc/shadow` then, so an ordinary account passes the lock check (the
//!   passwd field is just `x`). Exception seen here: for `root` and `nobody`
//!   the `systemd` NSS module synthesizes shadow entries `!*` for non-root
//!   readers, so running the tests as `nobody` fails with "account is
//!   locked"; run them as root or as a real user.
//! - [`Sshd::start_in_netns`] runs sshd inside a network namespace (`ip netns exec`,
//!   which execs sshd: the child's PID is sshd's) on `<ip>:22`, authorizing a user
//!   key shared by every host of a fleet (tests/support/netns.rs).

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const SSHD: &str = "/usr/sbin/sshd";
const SSH_KEYGEN: &str = "ssh-keygen";
const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The kind of an extra user key made by [`Sshd::extra_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `ssh-keygen -t ed25519` (OpenSSH private key format).
    Ed25519,
    /// `ssh-keygen -t ecdsa -b 256` (OpenSSH private key format).
    EcdsaP256,
    /// `ssh-keygen -t rsa -b 3072` (OpenSSH private key format).
    RsaOpenSsh,
    /// `ssh-keygen -t rsa -b 3072 -m PEM` (legacy `BEGIN RSA PRIVATE KEY`).
    RsaPem,
}

impl KeyKind {
    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::Ed25519 => &["-t", "ed25519"],
            KeyKind::EcdsaP256 => &["-t", "ecdsa", "-b", "256"],
            KeyKind::RsaOpenSsh => &["-t", "rsa", "-b", "3072"],
            KeyKind::RsaPem => &["-t", "rsa", "-b", "3072", "-m", "PEM"],
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ed25519",
            KeyKind::EcdsaP256 => "ecdsa_p256",
            KeyKind::RsaOpenSsh => "rsa_openssh",
            KeyKind::RsaPem => "rsa_pem",
        }
    }
}

/// A host key type the test sshd can hold ([`Sshd::start_with_host_keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKey {
    /// `ssh-ed25519`, the key every test sshd has.
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    Ecdsa,
    /// `ssh-rsa` (3072 bits).
    Rsa,
}

impl HostKey {
    fn file(self) -> &'static str {
        match self {
            HostKey::Ed25519 => "host_ed25519",
            HostKey::Ecdsa => "host_ecdsa",
            HostKey::Rsa => "host_rsa",
        }
    }

    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            HostKey::Ed25519 => &["-t", "ed25519"],
            HostKey::Ecdsa => &["-t", "ecdsa", "-b", "256"],
            HostKey::Rsa => &["-t", "rsa", "-b", "3072"],
        }
    }
}

/// A running `sshd` owned by one test; killed (by PID) when dropped.
pub struct Sshd {
    dir: TempDir,
    child: Child,
    addr: IpAddr,
    port: u16,
    user_key: PathBuf,
    user: String,
    host_fingerprint: String,
    known_hosts_line: String,
    extra_keys: AtomicUsize,
}

impl Sshd {
    /// Starts sshd on 127.0.0.1 with a random free port, fresh ed25519 host
    /// key, and a fresh ed25519 user key authorized for the current user.
    ///
    /// Panics (with sshd's log) if it does not answer with an SSH banner
    /// within 10 s; retries with a new port up to 5 times if the port was
    /// taken in between picking and binding it.
    pub fn start() -> Sshd {
        Sshd::start_with_env(&[])
    }

    /// Like [`Sshd::start`], with `SetEnv` variables in every session (e.g. `PM2_HOME`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Sshd {
        Sshd::start_with(env, None, 20)
    }

    /// Like [`Sshd::start`], with an ECDSA and an RSA host key besides the
    /// ed25519 one, in that order of `HostKey` lines (as Debian's sshd has them).
    pub fn start_with_host_keys() -> Sshd {
        Sshd::start_with_keys(
            &[],
            None,
            20,
            &[HostKey::Ed25519, HostKey::Ecdsa, HostKey::Rsa],
        )
    }

    /// Like [`Sshd::start`], allowing `max_sessions` channels per connection
    /// (hardened servers set `MaxSessions` low).
    pub fn start_with_max_sessions(max_sessions: u32) -> Sshd {
        Sshd::start_with(&[], None, max_sessions)
    }

    /// A separate "server" on this machine: every session runs in its own mount
    /// namespace where `real` is bind-mounted over `remote`, so several test hosts
    /// can share one `remote-path` without sharing its files. Needs root.
    pub fn start_as_host(env: &[(&str, &str)], remote: &Path, real: &Path) -> Sshd {
        let script = real.with_extension("session.sh");
        write_session_script(&script, &[(remote, real)]);
        Sshd::start_with(env, Some(&script), 20)
    }

    /// A host of a fleet of network namespaces (tests/support/netns.rs): sshd runs in
    /// network namespace `netns` (`ip netns exec`), listening on `addr:22` only, and
    /// authorizes the existing `user_key` (its public half is `<user_key>.pub`), which
    /// every host of the fleet shares. As with [`Sshd::start_as_host`], every session
    /// runs in its own mount namespace where each `(shared, real)` pair of `binds` has
    /// `real` bind-mounted over `shared`; `env` is set in every session. Needs root.
    pub fn start_in_netns(
        netns: &str,
        addr: Ipv4Addr,
        env: &[(&str, &str)],
        binds: &[(&Path, &Path)],
        user_key: &Path,
    ) -> Sshd {
        Sshd::launch(&Options {
            env,
            session_binds: binds,
            max_sessions: 20,
            host_keys: &[HostKey::Ed25519],
            netns: Some(netns),
            addr: Some(addr),
            user_key: Some(user_key),
            ..Options::default()
        })
    }

    /// Like [`Sshd::start_with_env`], with sessions that cannot override file
    /// permissions, as a deploy user's cannot: as root, every session runs with
    /// `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH` and `CAP_FOWNER` dropped from
    /// its bounding set (so a read-only directory stops root too). `dir` holds
    /// the session script. As another user, sessions are plain already.
    pub fn start_as_deploy_user(env: &[(&str, &str)], dir: &Path) -> Sshd {
        if !is_root() {
            return Sshd::start_with(env, None, 20);
        }
        let script = dir.join("deploy-user-session.sh");
        write_mode(
            &script,
            b"#!/bin/sh\nexec setpriv --bounding-set -dac_override,-dac_read_search,-fowner -- sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
            0o755,
        );
        Sshd::start_with(env, Some(&script), 20)
    }

    fn start_with(env: &[(&str, &str)], force_command: Option<&Path>, max_sessions: u32) -> Sshd {
        Sshd::start_with_keys(env, force_command, max_sessions, &[HostKey::Ed25519])
    }

    fn start_with_keys(
        env: &[(&str, &str)],
        force_command: Option<&Path>,
        max_sessions: u32,
        host_keys: &[HostKey],
    ) -> Sshd {
        Sshd::launch(&Options {
            env,
            force_command,
            max_sessions,
            host_keys,
            ..Options::default()
        })
    }

    fn launch(options: &Options) -> Sshd {
        let Options {
            env,
            force_command,
            session_binds,
            max_sessions,
            host_keys,
            netns,
            addr,
            user_key,
        } = *options;
        let user = current_user();
        check_account_not_locked(&user);
        if is_root() {
            ensure_privsep_dir();
        }

        let dir = tempfile::Builder::new()
            .prefix("dropship-sshd-")
            .tempdir()
            .expect("create temp dir for sshd");
        let d = dir.path();

        for kind in host_keys {
            keygen(&d.join(kind.file()), kind.keygen_args(), None, "host");
        }
        let user_key = match user_key {
            Some(key) => key.to_owned(),
            None => {
                keygen(&d.join("id_ed25519"), &["-t", "ed25519"], None, "user");
                d.join("id_ed25519")
            }
        };
        let user_pub = fs::read_to_string(public_half(&user_key)).expect("read user public key");
        write_mode(&d.join("authorized_keys"), user_pub.as_bytes(), 0o600);
        let session_script = d.join("session.sh");
        let force_command = if session_binds.is_empty() {
            force_command
        } else {
            write_session_script(&session_script, session_binds);
            Some(session_script.as_path())
        };
        let listen = addr.unwrap_or(Ipv4Addr::LOCALHOST);

        let host_pub =
            fs::read_to_string(d.join("host_ed25519.pub")).expect("read host public key");
        let host_key_fields: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        assert_eq!(
            host_key_fields.len(),
            2,
            "odd host public key: {host_pub:?}"
        );
        let host_key = host_key_fields.join(" ");
        let host_fingerprint = fingerprint(&d.join("host_ed25519.pub"));

        let mut previous_logs = String::new();
        for attempt in 1..=START_ATTEMPTS {
            // In a network namespace of its own, sshd has port 22 to itself.
            let port = if netns.is_some() { 22 } else { free_port() };
            let config = d.join("sshd_config");
            fs::write(
                &config,
                sshd_config(d, listen, port, env, force_command, max_sessions, host_keys),
            )
            .expect("write sshd_config");
            let log_path = d.join("sshd.log");
            let log = fs::File::create(&log_path).expect("create sshd.log");
            let mut command = match netns {
                Some(netns) => {
                    let mut command = Command::new("ip");
                    command.args(["netns", "exec", netns, SSHD]);
                    command
                }
                None => Command::new(SSHD),
            };
            let child = command
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn /usr/sbin/sshd (is openssh-server installed?)");

            let socket = SocketAddr::new(IpAddr::V4(listen), port);
            match wait_ready(child, socket) {
                Ok(child) => {
                    let known_hosts_line = format!("{} {host_key}", known_host(socket));
                    write_mode(
                        &d.join("known_hosts"),
                        format!("{known_hosts_line}\n").as_bytes(),
                        0o644,
                    );
                    return Sshd {
                        dir,
                        child,
                        addr: IpAddr::V4(listen),
                        port,
                        user_key,
                        user,
                        host_fingerprint,
                        known_hosts_line,
                        extra_keys: AtomicUsize::new(0),
                    };
                }
                Err(why) => {
                    let log = fs::read_to_string(&log_path).unwrap_or_default();
                    let port_taken = log.contains("Address already in use")
                        || log.contains("Cannot bind any address");
                    if port_taken && netns.is_none() && attempt < START_ATTEMPTS {
                        previous_logs.push_str(&format!(
                            "--- attempt {attempt} (port {port}): {why}\n{log}\n"
                        ));
                        continue;
                    }
                    panic!(
                        "sshd did not start on port {port} (attempt {attempt}): {why}\n\
                         {previous_logs}--- sshd log ---\n{log}"
                    );
                }
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// The TCP port sshd listens on (on 127.0.0.1; 22 in a network namespace).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address sshd listens on: 127.0.0.1, or the host's IP in its namespace.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The name of the user the tests run as (the only user that can log in).
    pub fn user(&self) -> String {
        self.user.clone()
    }

    /// `"user@127.0.0.1:PORT"` (`"user@10.x.0.y:22"` in a network namespace).
    pub fn host_spec(&self) -> String {
        format!("{}@{}:{}", self.user, self.addr, self.port)
    }

    /// The host key fingerprint, `"SHA256:..."`, exactly as
    /// `ssh-keygen -lf host_ed25519.pub` prints it.
    pub fn host_fingerprint(&self) -> String {
        self.host_fingerprint.clone()
    }

    /// `"[127.0.0.1]:PORT ssh-ed25519 AAAA..."` (no trailing newline); on port 22
    /// the address has no brackets and no port (`"10.x.0.y ssh-ed25519 AAAA..."`).
    pub fn known_hosts_line(&self) -> String {
        self.known_hosts_line.clone()
    }

    /// The known_hosts line of host key `kind` (see [`Sshd::known_hosts_line`]).
    pub fn known_hosts_line_of(&self, kind: HostKey) -> String {
        let public = self.dir.path().join(format!("{}.pub", kind.file()));
        let text = fs::read_to_string(&public).expect("read host public key");
        let fields: Vec<&str> = text.split_whitespace().take(2).collect();
        format!(
            "{} {}",
            known_host(SocketAddr::new(self.addr, self.port)),
            fields.join(" ")
        )
    }

    /// The fingerprint of host key `kind` (see [`Sshd::host_fingerprint`]).
    pub fn host_fingerprint_of(&self, kind: HostKey) -> String {
        fingerprint(&self.dir.path().join(format!("{}.pub", kind.file())))
    }

    /// The private key text (OpenSSH format) of the authorized ed25519 user key.
    pub fn user_key(&self) -> String {
        fs::read_to_string(self.user_key_path()).expect("read user private key")
    }

    /// The authorized ed25519 user private key as a 0600 file (the shared one
    /// given to [`Sshd::start_in_netns`]).
    pub fn user_key_path(&self) -> PathBuf {
        self.user_key.clone()
    }

    /// A known_hosts file holding [`Sshd::known_hosts_line`].
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// Generates another user key of the given kind (encrypted with
    /// `passphrase` if given), authorizes it (appends its `.pub` to
    /// authorized_keys) if `authorize`, and returns the path of the private
    /// key file (mode 0600; the public key is next to it with `.pub`).
    pub fn extra_key(&self, kind: KeyKind, passphrase: Option<&str>, authorize: bool) -> PathBuf {
        let n = self.extra_keys.fetch_add(1, Ordering::SeqCst);
        let path = self
            .dir
            .path()
            .join(format!("extra_{n}_{}", kind.file_stem()));
        keygen(&path, kind.keygen_args(), passphrase, "extra");
        if authorize {
            let public = fs::read_to_string(path.with_file_name(format!(
                "{}.pub",
                path.file_name()
                    .expect("key path has a file name")
                    .to_string_lossy()
            )))
            .expect("read extra public key");
            let mut file = fs::OpenOptions::new()
                .append(true)
                .open(self.dir.path().join("authorized_keys"))
                .expect("open authorized_keys for appending");
            file.write_all(public.trim_end().as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .expect("append to authorized_keys");
        }
        path
    }

    /// The server's temp dir (config, keys, log, known_hosts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// sshd's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log"))
            .unwrap_or_else(|e| format!("<cannot read sshd.log: {e}>"))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits in pid_t");
        // SAFETY: plain syscall on the PID of our own, not yet reaped, child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`Sshd::launch`] starts; the default is [`Sshd::start`]'s.
#[derive(Clone, Copy)]
struct Options<'a> {
    env: &'a [(&'a str, &'a str)],
    force_command: Option<&'a Path>,
    /// `(shared, real)` bind mounts of a session script (overrides `force_command`).
    session_binds: &'a [(&'a Path, &'a Path)],
    max_sessions: u32,
    host_keys: &'a [HostKey],
    netns: Option<&'a str>,
    addr: Option<Ipv4Addr>,
    user_key: Option<&'a Path>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            env: &[],
            force_command: None,
            session_binds: &[],
            max_sessions: 20,
            host_keys: &[HostKey::Ed25519],
            netns: None,
            addr: None,
            user_key: None,
        }
    }
}

/// Writes a ForceCommand that runs each session in its own mount namespace with
/// every `(shared, real)` pair's `real` bind-mounted over `shared` (creating both).
fn write_session_script(script: &Path, binds: &[(&Path, &Path)]) {
    let mut mounts = Vec::new();
    let mut args = String::new();
    for (n, (shared, real)) in binds.iter().enumerate() {
        fs::create_dir_all(shared).expect("create the shared path");
        fs::create_dir_all(real).expect("create the host's own directory");
        mounts.push(format!(
            "mount --bind \"${}\" \"${}\"",
            2 * n + 1,
            2 * n + 2
        ));
        args.push_str(&format!(" '{}' '{}'", real.display(), shared.display()));
    }
    let body = format!(
        "#!/bin/sh\nexec unshare -m sh -c '{} && exec sh -c \"$SSH_ORIGINAL_COMMAND\"' sh{args}\n",
        mounts.join(" && ")
    );
    write_mode(script, body.as_bytes(), 0o755);
}

/// How known_hosts names `addr`: `[ip]:port`, or the bare IP on port 22.
fn known_host(addr: SocketAddr) -> String {
    if addr.port() == 22 {
        addr.ip().to_string()
    } else {
        format!("[{}]:{}", addr.ip(), addr.port())
    }
}

/// `<key>.pub`, next to a private key file.
fn public_half(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Generates an unencrypted ed25519 key pair at `path` and `path.pub` (the user key
/// a fleet's hosts share, see [`Sshd::start_in_netns`]).
pub fn user_keypair(path: &Path) {
    keygen(path, &["-t", "ed25519"], None, "user");
}

fn sshd_config(
    dir: &Path,
    listen: Ipv4Addr,
    port: u16,
    env: &[(&str, &str)],
    force_command: Option<&Path>,
    max_sessions: u32,
    host_keys: &[HostKey],
) -> String {
    let d = dir.display();
    let host_keys: String = host_keys
        .iter()
        .map(|kind| format!("HostKey \"{d}/{}\"\n", kind.file()))
        .collect();
    // Paths are quoted so a temp dir with spaces still works.
    format!(
        r#"Port {port}
ListenAddress {listen}
{host_keys}PidFile "{d}/sshd.pid"
AuthorizedKeysFile "{d}/authorized_keys"
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
ClientAliveInterval 15
MaxSessions {max_sessions}
MaxStartups 50
{set_env}{force}"#,
        force = force_command.map_or(String::new(), |c| format!("ForceCommand {}\n", c.display())),
        set_env = if env.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = env.iter().map(|(k, v)| format!("\"{k}={v}\"")).collect();
            format!("SetEnv {}\n", pairs.join(" "))
        }
    )
}

/// Polls until the port answers with an SSH banner; gives the child back on
/// success, kills it on failure.
fn wait_ready(mut child: Child, addr: SocketAddr) -> Result<Child, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("sshd exited early with {status}")),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                return Err(format!("cannot poll sshd: {e}"));
            }
        }
        let last_err = match read_banner(&addr) {
            Ok(banner) if banner.starts_with("SSH-2.0") => return Ok(child),
            Ok(banner) => format!("unexpected banner {banner:?}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "no SSH banner within {START_TIMEOUT:?}: {last_err}"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn read_banner(addr: &SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(addr, Duration::from_millis(500))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.len() < 256 && !buf.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) => return Err(format!("read banner: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to pick a port");
    listener
        .local_addr()
        .expect("local address of the port picker")
        .port()
}

fn keygen(path: &Path, type_args: &[&str], passphrase: Option<&str>, comment: &str) {
    let out = Command::new(SSH_KEYGEN)
        .args(type_args)
        .arg("-q")
        .arg("-N")
        .arg(passphrase.unwrap_or(""))
        .arg("-C")
        .arg(format!("dropship-test-{comment}"))
        .arg("-f")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen {type_args:?} -f {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 0600 private key");
}

fn fingerprint(public_key: &Path) -> String {
    let out = Command::new(SSH_KEYGEN)
        .arg("-lf")
        .arg(public_key)
        .output()
        .expect("run ssh-keygen -lf");
    assert!(
        out.status.success(),
        "ssh-keygen -lf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("ssh-keygen -lf prints UTF-8");
    let fp = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("odd `ssh-keygen -lf` output: {text:?}"));
    assert!(fp.starts_with("SHA256:"), "odd fingerprint {fp:?}");
    fp.to_string()
}

fn write_mode(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The effective user's name: from the passwd database, else `$USER`, else `whoami`.
pub fn current_user() -> String {
    // SAFETY: getpwuid returns NULL or a pointer to a static passwd record
    // whose pw_name is a NUL-terminated string; we copy it out immediately.
    let from_passwd = unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            None
        } else {
            Some(
                std::ffi::CStr::from_ptr((*pw).pw_name)
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    };
    if let Some(name) = from_passwd.filter(|n| !n.is_empty()) {
        return name;
    }
    if let Some(name) = std::env::var("USER").ok().filter(|n| !n.is_empty()) {
        return name;
    }
    let out = Command::new("whoami").output().expect("run whoami");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!name.is_empty(), "cannot determine the current user name");
    name
}

/// With `UsePAM no`, sshd refuses accounts whose shadow password starts with
/// `!`. Only checkable when /etc/shadow is readable (i.e. as root).
fn check_account_not_locked(user: &str) {
    let Ok(shadow) = fs::read_to_string("/etc/shadow") else {
        return;
    };
    let field = shadow
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| *name == user)
        .map(|(_, rest)| rest.split(':').next().unwrap_or(""));
    if let Some(field) = field
        && field.starts_with('!')
    {
        panic!(
            "account {user:?} is locked in /etc/shadow (password field {field:?}); \
             sshd with `UsePAM no` refuses locked accounts even for key logins. \
             Unlock it without setting a password: usermod -p '*' {user}"
        );
    }
}

fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("create /run/sshd: {e}"),
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod 0755 /run/sshd");
    }
}

#[cfg(test)]
mod selftest {
    use super::Sshd;
    use std::process::Command;

    #[test]
    fn sshd_accepts_the_user_key() {
        let sshd = Sshd::start();
        let out = Command::new("ssh")
            .arg("-i")
            .arg(sshd.user_key_path())
            .arg("-o")
            // Quoted: ssh splits this option's value on whitespace.
            .arg(format!(
                "UserKnownHostsFile=\"{}\"",
                sshd.known_hosts_path().display()
            ))
            .args(["-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-F", "/dev/null"])
            .arg("-p")
            .arg(sshd.port().to_string())
            .arg(format!("{}@127.0.0.1", sshd.user()))
            .arg("true")
            .output()
            .expect("run ssh");
        assert!(
            out.status.success(),
            "ssh failed ({}): {}\n--- sshd log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            sshd.log()
        );
    }
}
