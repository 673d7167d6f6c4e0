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
use super::{Credentials, Host, Opened};
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
/// [`select_script`](super::agents::Agents::select_script)); otherwise prints the CPU and whether `gzip` is
/// there on stderr and exits 97. (The agent's name holds its hash, and the agent
/// checks itself against it before changing anything.)
pub fn agent_command(select: &str) -> String {
    format!(
        "{select}; if [ -n \"$f\" ] && [ -x \"$f\" ]; then exec \"$f\" agent; fi; \
         echo \"{BOOTSTRAP} $(uname -m) $(command -v gzip)\" >&2; exit {AGENT_MISSING}"
    )
}

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
    /// Reads the bootstrap's line from its `stderr`.
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

/// Writes stdin to `path` (mode 0700) through a temporary file and a rename,
/// unpacking it with `gzip -dc` when `gzipped`.
pub fn upload_command(path: &str, gzipped: bool) -> String {
    let dir = path.rsplit_once('/').map_or(".", |(dir, _)| dir);
    format!(
        "umask 077 && mkdir -p {dir} && t={path}.$$ && {unpack} > \"$t\" && chmod 700 \"$t\" && mv -f \"$t\" {path}",
        dir = quote(dir),
        path = quote(path),
        unpack = if gzipped { "gzip -dc" } else { "cat" },
    )
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
    credentials: &Credentials,
    agent: &AgentBinary,
) -> Result<Connected> {
    let label = Host::Ssh {
        user: user.into(),
        host: name.into(),
        port,
    }
    .to_string();
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
    /// Starts the agent with `request`, uploading the one for the server's CPU
    /// first when it is missing (unless `dry_run`).
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
        let report = match start(&session, &label, &select, request) {
            Err(Error::AgentMissing { report, .. }) => report,
            other => return other.map(Opened::Ready),
        };
        let platform = Platform::parse(&report);
        let agent = agents
            .for_machine(&platform.machine)
            .ok_or_else(|| agents.missing(&label, &platform.machine))?;
        if dry_run {
            return Ok(Opened::AgentMissing {
                upload_bytes: agent.bytes.len() as u64,
            });
        }
        let sent = install(&session, &label, agent, remote_path, platform.gzip)?;
        let started = start(&session, &label, &select, request).map(|mut conn| {
            conn.count_upload(sent);
            conn
        });
        match started {
            Err(Error::AgentMissing { host, .. }) => Err(Error::AgentNotRunnable { host }),
            other => other.map(Opened::Ready),
        }
    }
}

/// Uploads `agent` (gzipped when the server can unpack it); returns the bytes sent.
fn install(
    session: &Session,
    label: &str,
    agent: &Agent,
    remote_path: &str,
    gzip: bool,
) -> Result<u64> {
    let bin = agent.remote_path(remote_path);
    tracing::info!(
        "{label}: installing the agent ({} KB{}) at {bin}",
        agent.bytes.len() / 1024,
        if gzip { ", gzipped" } else { "" }
    );
    upload(session, label, &upload_command(&bin, gzip), |link| {
        if gzip {
            agent.write_gzipped(link)
        } else {
            link.write_all(&agent.bytes)
                .map(|()| agent.bytes.len() as u64)
        }
    })
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

fn exec(session: &Session, label: &str, command: &str) -> Result<Channel> {
    let ssh_error = |err: ssh2::Error| Error::Ssh {
        host: label.into(),
        step: "opening a channel",
        message: err.to_string(),
    };
    let (mut channel, _) = open_channel(session).map_err(ssh_error)?;
    channel.exec(command).map_err(ssh_error)?;
    Ok(channel)
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

fn start(session: &Session, label: &str, select: &str, request: &[u8]) -> Result<AgentConn> {
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
    let link = SshLink {
        channel,
        session: session.clone(),
        select: select.to_owned(),
        round_trip,
    };
    AgentConn::start(label, Box::new(link), request)
}

/// Runs `command` with what `send` writes on its stdin; returns the bytes sent.
fn upload(
    session: &Session,
    label: &str,
    command: &str,
    send: impl FnOnce(&mut SshLink) -> io::Result<u64>,
) -> Result<u64> {
    let mut link = SshLink {
        channel: exec(session, label, command)?,
        session: session.clone(),
        select: String::new(),
        round_trip: Duration::ZERO,
    };
    let written = send(&mut link);
    let (status, stderr) = link.finish();
    match (written, status) {
        (Ok(sent), Some(0)) => Ok(sent),
        (result, status) => Err(Error::AgentDied {
            host: label.into(),
            status: format!(
                "installing the agent failed ({})",
                result
                    .err()
                    .map_or_else(|| format!("exit status {status:?}"), |e| e.to_string())
            ),
            stderr,
        }),
    }
}

/// An exec channel running the agent (or a part of its stream).
struct SshLink {
    channel: Channel,
    session: Session,
    /// The shell snippet that finds the agent on the server ([`select_script`](super::agents::Agents::select_script)).
    select: String,
    round_trip: Duration,
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
        patiently(|| self.channel.read(buf))
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
        assert_eq!(
            upload_command("/srv/app/.dropship/bin/d", false),
            "umask 077 && mkdir -p '/srv/app/.dropship/bin' && t='/srv/app/.dropship/bin/d'.$$ && cat > \"$t\" && chmod 700 \"$t\" && mv -f \"$t\" '/srv/app/.dropship/bin/d'"
        );
        assert!(upload_command("/d", true).contains("&& gzip -dc > \"$t\" &&"));
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
}
