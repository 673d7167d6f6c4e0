//! One SSH connection per host (ssh2): connect with a timeout and keepalives,
//! check the pinned host key, authenticate with the in-memory key, make sure the
//! right agent binary is on the server, and start it on an exec channel.
//!
//! No SFTP: it collapses under latency. Files go through exec channels.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use ssh2::{Channel, MethodType, Session};

use super::agents::{Agent, AgentBinary};
use super::conn::{AGENT_MISSING, AgentConn, Link};
use super::{Credentials, Opened};
use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a single blocking SSH call may wait; the agent sends a line at
/// least every few seconds while it waits for a lock.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

/// Quotes `text` for a POSIX shell.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Runs the agent for this server's CPU if it is there (`select` sets `f`, see
/// [`select_script`](super::agents::Agents::select_script)). Otherwise prints
/// the CPU and whether `gzip` is there on stdout, and installs the agent from
/// this same channel's stdin (no second channel, no round trips to open one):
/// it skips the request sent before the client knew (`zstd <length>` line and
/// frame), reads a `gzip|raw <size>` line, unpacks the rest to a temporary
/// file, checks its size and renames it into place. Exits 97 when nothing
/// comes (a dry run, or no agent for this CPU), 98 when the install failed.
/// (The agent's name holds its hash, and the agent checks itself against it
/// before changing anything: a damaged copy never runs.)
pub fn agent_command(select: &str) -> String {
    format!(
        "{select}; if [ -n \"$f\" ] && [ -x \"$f\" ]; then exec \"$f\" agent; fi; \
         echo \"{BOOTSTRAP} $(uname -m) $(command -v gzip)\"; \
         [ -n \"$f\" ] && read -r z n || exit {AGENT_MISSING}; \
         tail -c +$((n + 1)) | {{ read -r how size || exit {AGENT_MISSING}; \
         umask 077 && mkdir -p \"${{f%/*}}\" && t=\"$f.$$\" && case \"$how\" in gzip) gzip -dc;; *) cat;; esac > \"$t\" && \
         [ \"$(($(wc -c < \"$t\")))\" = \"$size\" ] && chmod 700 \"$t\" && mv -f \"$t\" \"$f\" || \
         {{ rm -f \"$t\"; exit {INSTALL_FAILED}; }}; }}"
    )
}

/// Exit status of the bootstrap when the agent it received could not be installed.
const INSTALL_FAILED: i32 = 98;

/// How the bootstrap's report line on stderr starts.
const BOOTSTRAP: &str = "dropship-bootstrap:";

/// What the bootstrap said about a server without the agent.
#[derive(Debug, PartialEq, Eq)]
struct Platform {
    /// `uname -m`.
    machine: String,
    /// Whether `gzip` is on the PATH (to unpack a compressed agent).
    gzip: bool,
}

impl Platform {
    /// Reads the bootstrap's report line.
    fn parse(stderr: &str) -> Platform {
        let mut words = stderr
            .lines()
            .find_map(|line| line.strip_prefix(BOOTSTRAP))
            .unwrap_or_default()
            .split_whitespace();
        Platform {
            machine: words.next().unwrap_or_default().to_owned(),
            gzip: words.next().is_some(),
        }
    }
}

/// A logged-in SSH session to one host.
pub struct Connected {
    label: String,
    session: Session,
}

/// Connects, checks the host key and logs in; loads the agent binary meanwhile
/// (it is needed next, and hashing it overlaps the handshake's round trips).
pub fn connect(
    (user, name, port): (&str, &str, u16),
    label: &str,
    credentials: &Credentials,
    agent: &AgentBinary,
) -> Result<Connected> {
    let label = label.to_owned();
    let (session, loaded) = std::thread::scope(|scope| {
        let loaded = scope.spawn(|| agent.get().map(drop));
        let session = credentials
            .pinning
            .handshake(&label, (name, port), |host_keys| {
                open_session(&label, name, port, host_keys)
            });
        (session, loaded.join())
    });
    let session = session?;
    if let Ok(result) = loaded {
        result?;
    }
    authenticate(&session, &label, user, credentials)?;
    session.set_timeout(millis(CALL_TIMEOUT));
    session.set_keepalive(true, 15);
    Ok(Connected { label, session })
}

impl Connected {
    /// Starts the agent with `request`. When it is missing, the bootstrap's
    /// channel carries the one for the server's CPU (unless `dry_run`), and the
    /// agent starts on a new channel at once, without waiting for the
    /// bootstrap to exit.
    pub fn start(
        self,
        agent: &AgentBinary,
        remote_path: &str,
        dry_run: bool,
        request: &[u8],
    ) -> Result<Opened> {
        let Connected { label, session } = self;
        let agents = agent.get()?;
        let select = agents.select_script(remote_path);
        let (mut bootstrap, platform) = match start(&session, &label, &select, request)? {
            Started::Ready(conn) => return Ok(Opened::Ready(conn)),
            Started::Missing(link, platform) => (link, platform),
        };
        let Some(agent) = agents.for_machine(&platform.machine) else {
            bootstrap.close_input();
            return Err(agents.missing(&label, &platform.machine));
        };
        if dry_run {
            bootstrap.close_input();
            return Ok(Opened::AgentMissing {
                upload_bytes: agent.bytes.len() as u64,
            });
        }
        let sent = install(&mut bootstrap, &label, agent, remote_path, platform.gzip)?;
        let mut early = None;
        let mut conn = match start(&session, &label, &select, request) {
            Ok(Started::Ready(conn)) => conn,
            // Started before the bootstrap renamed the agent into place (or a
            // server with `MaxSessions 1` refused the channel while the
            // bootstrap's was open): wait for the bootstrap, then once more.
            Ok(Started::Missing(mut link, _)) => {
                tracing::debug!("{label}: the agent started before its install ended; waiting");
                link.close_input();
                early = Some(link);
                installed(&mut bootstrap, &label)?;
                restart(&session, &label, &select, request)?
            }
            Err(Error::Ssh {
                step: "opening a channel",
                ..
            }) => {
                installed(&mut bootstrap, &label)?;
                restart(&session, &label, &select, request)?
            }
            Err(other) => return Err(other),
        };
        conn.count_upload(sent);
        conn.reap_later(Box::new(bootstrap));
        if let Some(link) = early {
            conn.reap_later(Box::new(link));
        }
        Ok(Opened::Ready(conn))
    }
}

/// Starts the agent once the bootstrap has installed it.
fn restart(session: &Session, label: &str, select: &str, request: &[u8]) -> Result<AgentConn> {
    match start(session, label, select, request)? {
        Started::Ready(conn) => Ok(conn),
        Started::Missing(mut link, _) => {
            link.close_input();
            Err(Error::AgentNotRunnable { host: label.into() })
        }
    }
}

/// Sends `agent` to the bootstrap waiting on `link` (gzipped when the server
/// can unpack it), then closes the channel's input; returns the bytes sent.
fn install(
    link: &mut SshLink,
    label: &str,
    agent: &Agent,
    remote_path: &str,
    gzip: bool,
) -> Result<u64> {
    tracing::info!(
        "{label}: installing the agent ({} KB{}) at {}",
        agent.bytes.len() / 1024,
        if gzip { ", gzipped" } else { "" },
        agent.remote_path(remote_path)
    );
    let header = format!(
        "{} {}\n",
        if gzip { "gzip" } else { "raw" },
        agent.bytes.len()
    );
    let written = link.write_all(header.as_bytes()).and_then(|()| {
        if gzip {
            agent.write_gzipped(link)
        } else {
            link.write_all(&agent.bytes)
                .map(|()| agent.bytes.len() as u64)
        }
    });
    link.close_input();
    match written {
        Ok(sent) => Ok(header.len() as u64 + sent),
        Err(err) => {
            let (_, stderr) = link.finish();
            Err(install_failed(label, &err.to_string(), stderr))
        }
    }
}

/// Waits for the bootstrap on `link` to exit and closes its channel (a server
/// with `MaxSessions 1` then takes the next); fails unless it installed the agent.
fn installed(link: &mut SshLink, label: &str) -> Result<()> {
    let finished = link.finish();
    let _ = link.channel.close();
    match finished {
        (Some(0), _) => Ok(()),
        (status, stderr) => Err(install_failed(
            label,
            &format!("exit status {status:?}"),
            stderr,
        )),
    }
}

fn install_failed(label: &str, why: &str, stderr: String) -> Error {
    Error::AgentDied {
        host: label.into(),
        status: format!("installing the agent failed ({why})"),
        stderr,
    }
}

/// Connects and negotiates encryption, offering the host key algorithms
/// `host_keys` (best first).
fn open_session(label: &str, name: &str, port: u16, host_keys: &str) -> Result<Session> {
    let connect_error = |source: io::Error| Error::Connect {
        host: label.into(),
        source,
    };
    let addrs: Vec<_> = (name, port)
        .to_socket_addrs()
        .map_err(|err| {
            connect_error(io::Error::new(
                err.kind(),
                format!("cannot resolve `{name}`: {err}"),
            ))
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("`{name}` has no address"));
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(err) => last = err,
        }
    }
    let tcp = tcp.ok_or_else(|| connect_error(last))?;
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let _ = tcp.set_nodelay(true);
    let ssh_error = |step: &'static str| {
        move |err: ssh2::Error| Error::Ssh {
            host: label.into(),
            step,
            message: err.to_string(),
        }
    };
    let mut session = Session::new().map_err(ssh_error("starting"))?;
    session.set_tcp_stream(tcp);
    // Until logged in, a silent server gets the connect timeout; afterwards the
    // longer per-call timeout (the agent speaks at least every few seconds).
    session.set_timeout(millis(CONNECT_TIMEOUT));
    session
        .method_pref(MethodType::HostKey, host_keys)
        .map_err(ssh_error("choosing host key types"))?;
    session
        .handshake()
        .map_err(ssh_error("negotiating encryption"))?;
    Ok(session)
}

fn authenticate(
    session: &Session,
    label: &str,
    user: &str,
    credentials: &Credentials,
) -> Result<()> {
    let Some(key) = &credentials.key else {
        return Err(Error::input(
            "key",
            "no private key was given",
            "set `key` (a secret) or `--key-file`",
        ));
    };
    let result = session.userauth_pubkey_memory(user, None, &key.text, key.passphrase.as_deref());
    match result {
        Ok(()) if session.authenticated() => Ok(()),
        Err(err) if matches!(err.code(), ssh2::ErrorCode::Session(-16)) => Err(Error::Key {
            problem: if key.encrypted {
                format!("cannot decrypt the {} key: wrong passphrase", key.key_type)
            } else {
                format!(
                    "libssh2 cannot read the {} key ({})",
                    key.key_type,
                    err.message()
                )
            },
            hint: if key.encrypted {
                "check `key-passphrase`".into()
            } else {
                "use an ed25519, ECDSA or RSA key in OpenSSH or PEM format (`ssh-keygen -t ed25519`)".into()
            },
        }),
        _ => Err(Error::KeyRejected {
            host: label.into(),
            user: user.into(),
            key_type: key.key_type.clone(),
            fingerprint: key.fingerprint.clone(),
        }),
    }
}

/// Opens a session channel; also returns how long the open that worked took
/// (one round trip: what decides whether more channels pay). A refusal is
/// retried for a moment: sshd frees a closed channel's session slot a little
/// after the close, which a server with `MaxSessions 1` turns into a refusal of
/// the next channel (agent check, then its upload, then its start).
fn open_channel(session: &Session) -> std::result::Result<(Channel, Duration), ssh2::Error> {
    /// libssh2's LIBSSH2_ERROR_CHANNEL_FAILURE: the server refused the channel.
    const REFUSED: ssh2::ErrorCode = ssh2::ErrorCode::Session(-21);
    let mut tries = 0;
    loop {
        let started = Instant::now();
        match session.channel_session() {
            Ok(channel) => return Ok((channel, started.elapsed())),
            Err(err) if err.code() == REFUSED && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => return Err(err),
        }
    }
}

/// What the bootstrap command did.
enum Started {
    /// The agent runs and said hello.
    Ready(AgentConn),
    /// The agent is missing: the bootstrap waits on this channel for it.
    Missing(SshLink, Platform),
}

/// Runs the bootstrap command on a new channel and sends `request` at once;
/// its first line says whether the agent runs.
fn start(session: &Session, label: &str, select: &str, request: &[u8]) -> Result<Started> {
    let (mut channel, round_trip) = open_channel(session).map_err(|err| Error::Ssh {
        host: label.into(),
        step: "opening a channel",
        message: err.to_string(),
    })?;
    channel
        .exec(&agent_command(select))
        .map_err(|err| Error::Ssh {
            host: label.into(),
            step: "starting the agent",
            message: err.to_string(),
        })?;
    let mut link = SshLink {
        channel,
        session: session.clone(),
        select: select.to_owned(),
        round_trip,
        pending: Vec::new(),
    };
    // A failed write or read usually means the agent could not start: its
    // exit says why, which the connection reports.
    let _ = link.write_all(request);
    let _ = link.read_first_line();
    if link.pending.starts_with(BOOTSTRAP.as_bytes()) {
        let platform = Platform::parse(&String::from_utf8_lossy(&link.pending));
        link.pending.clear();
        return Ok(Started::Missing(link, platform));
    }
    let mut conn = AgentConn::start(label, Box::new(link), &[])?;
    conn.count_upload(request.len() as u64);
    Ok(Started::Ready(conn))
}

/// An exec channel running the agent (or a part of its stream).
struct SshLink {
    channel: Channel,
    session: Session,
    /// The shell snippet that finds the agent on the server ([`select_script`](super::agents::Agents::select_script)).
    select: String,
    round_trip: Duration,
    /// Bytes read ahead of the reader (the first line), returned first.
    pending: Vec<u8>,
}

impl SshLink {
    /// Reads until the first line is in `pending`, or enough of it to tell
    /// that it is not the bootstrap's (the agent's hello can be long).
    fn read_first_line(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while !self.pending.contains(&b'\n')
            && (self.pending.len() < BOOTSTRAP.len()
                || self.pending.starts_with(BOOTSTRAP.as_bytes()))
            && self.pending.len() < 4096
        {
            let n = patiently(|| self.channel.read(&mut buf))?;
            if n == 0 {
                break;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
        Ok(())
    }
}

/// Runs a blocking libssh2 call until it stops timing out or [`CALL_TIMEOUT`]
/// has passed. With keepalives on, libssh2 waits for the socket only until
/// the next keepalive is due (at most 15 s) and then fails with "Timed out
/// waiting on socket" instead of sending it; the next call sends it.
fn patiently<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let started = Instant::now();
    loop {
        match call() {
            Err(err)
                if err.kind() == io::ErrorKind::TimedOut && started.elapsed() < CALL_TIMEOUT => {}
            done => return done,
        }
    }
}

impl Read for SshLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            return patiently(|| self.channel.read(buf));
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

impl Write for SshLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        patiently(|| self.channel.write(buf))
    }

    /// Nothing to do: a blocking libssh2 write has sent its bytes when it returns.
    /// (`Channel::flush` would call `libssh2_channel_flush_ex`, which *discards
    /// unread incoming data* — the agent's answers.)
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Link for SshLink {
    fn close_input(&mut self) {
        let _ = self.channel.send_eof();
    }

    fn open_part(&mut self, socket: &str) -> io::Result<Box<dyn Link>> {
        let command = format!(
            "{}; exec \"$f\" agent-part --socket {}",
            self.select,
            quote(socket)
        );
        let (mut channel, _) = open_channel(&self.session).map_err(io::Error::other)?;
        channel.exec(&command).map_err(io::Error::other)?;
        Ok(Box::new(SshLink {
            channel,
            session: self.session.clone(),
            select: self.select.clone(),
            round_trip: self.round_trip,
            pending: Vec::new(),
        }))
    }

    fn round_trip(&self) -> Duration {
        self.round_trip
    }

    fn finish(&mut self) -> (Option<i32>, String) {
        let _ = self.channel.send_eof();
        let mut stderr = String::new();
        let _ = self
            .channel
            .stderr()
            .take(1 << 20)
            .read_to_string(&mut stderr);
        let mut rest = Vec::new();
        let _ = self.channel.read_to_end(&mut rest);
        let _ = self.channel.wait_close();
        // A process killed by a signal has exit status 0 in libssh2: look at the signal first.
        let killed = self
            .channel
            .exit_signal()
            .ok()
            .and_then(|s| s.exit_signal)
            .is_some();
        let status = if killed {
            None
        } else {
            self.channel.exit_status().ok()
        };
        (status, stderr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_quote_paths_once() {
        assert_eq!(quote("/srv/it's"), r"'/srv/it'\''s'");
        assert!(
            agent_command("f='/a b/x'")
                .starts_with("f='/a b/x'; if [ -n \"$f\" ] && [ -x \"$f\" ]")
        );
    }

    #[test]
    fn the_bootstrap_report_names_the_cpu_and_gzip() {
        let platform = |machine: &str, gzip| Platform {
            machine: machine.into(),
            gzip,
        };
        assert_eq!(
            Platform::parse("motd\ndropship-bootstrap: aarch64 /usr/bin/gzip\n"),
            platform("aarch64", true)
        );
        assert_eq!(
            Platform::parse("dropship-bootstrap: x86_64 \n"),
            platform("x86_64", false)
        );
        assert_eq!(
            Platform::parse("sh: uname: not found\n"),
            platform("", false)
        );
    }

    /// Runs the bootstrap in `sh` for an agent at `dir/bin/agent` with `stdin`
    /// (the request first, as the client sends it); returns its exit status and stdout.
    fn bootstrap(dir: &std::path::Path, stdin: &[u8]) -> (Option<i32>, String) {
        use std::process::{Command, Stdio};
        let agent = dir.join("bin/agent");
        let select = format!("f={}", quote(&agent.display().to_string()));
        let mut child = Command::new("sh")
            .args(["-c", &agent_command(&select)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let mut request = b"zstd 5\nabcde".to_vec();
        request.extend_from_slice(stdin);
        // The bootstrap may exit before reading everything (nothing to install).
        let _ = input.write_all(&request);
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn installed(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir.join("bin")).map_or_else(
            |_| Vec::new(),
            |entries| {
                entries
                    .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            },
        )
    }

    #[test]
    fn the_bootstrap_installs_the_agent_from_its_own_stdin() {
        let agent: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut gzipped = Vec::new();
        let mut encoder =
            flate2::write::GzEncoder::new(&mut gzipped, flate2::Compression::default());
        encoder.write_all(&agent).unwrap();
        encoder.finish().unwrap();
        let sent = |how: &str, body: &[u8]| {
            let mut bytes = format!("{how} {}\n", agent.len()).into_bytes();
            bytes.extend_from_slice(body);
            bytes
        };
        for (how, body) in [("raw", &agent), ("gzip", &gzipped)] {
            let dir = tempfile::tempdir().unwrap();
            let (status, stdout) = bootstrap(dir.path(), &sent(how, body));
            assert_eq!(status, Some(0), "{how}");
            assert!(stdout.starts_with("dropship-bootstrap: "), "{stdout}");
            assert_eq!(std::fs::read(dir.path().join("bin/agent")).unwrap(), agent);
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("bin/agent"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{how}");
        }
    }

    #[test]
    fn a_damaged_or_missing_upload_is_never_installed() {
        let agent = vec![7u8; 100_000];
        let mut gzipped = Vec::new();
        let mut encoder =
            flate2::write::GzEncoder::new(&mut gzipped, flate2::Compression::default());
        encoder.write_all(&agent).unwrap();
        encoder.finish().unwrap();
        let mut flipped = gzipped.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xff;
        let header = |how: &str| format!("{how} {}\n", agent.len()).into_bytes();
        let cases: [(&str, Vec<u8>, i32); 5] = [
            ("nothing sent (a dry run)", Vec::new(), AGENT_MISSING),
            (
                "raw, cut short",
                [header("raw"), agent[..60_000].to_vec()].concat(),
                INSTALL_FAILED,
            ),
            (
                "gzip, cut short",
                [header("gzip"), gzipped[..gzipped.len() - 8].to_vec()].concat(),
                INSTALL_FAILED,
            ),
            (
                "gzip, a byte flipped",
                [header("gzip"), flipped].concat(),
                INSTALL_FAILED,
            ),
            (
                "raw, too long",
                [header("raw"), agent.clone(), b"x".to_vec()].concat(),
                INSTALL_FAILED,
            ),
        ];
        for (case, stdin, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let (status, stdout) = bootstrap(dir.path(), &stdin);
            assert_eq!(status, Some(expected), "{case}");
            assert!(
                stdout.starts_with("dropship-bootstrap: "),
                "{case}: {stdout}"
            );
            assert_eq!(installed(dir.path()), Vec::<String>::new(), "{case}");
        }
    }
}
