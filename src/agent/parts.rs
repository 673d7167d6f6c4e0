//! A release stream in several parts: one SSH channel is capped by the server's
//! 2 MiB channel window (about 37 MB/s at 50 ms round-trip time), so the client
//! sends large releases over several channels. The first part comes on the
//! agent's stdin; each other part comes through `dropship agent-part`, started on
//! its own channel, which passes its stdin on to the agent's Unix socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::receive::MorePart;
use crate::error::{Error, Result};
use crate::protocol::{Failure, FailureKind, Join};

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long a connection may take to say the token.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the other parts may take to connect after the first one started.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent's socket for the other parts of one deploy; removed on drop.
pub struct PartListener {
    listener: UnixListener,
    path: PathBuf,
    token: String,
}

impl PartListener {
    /// Listens on `<dir>/part-<pid>.sock`; `None` when the path is too long for a
    /// socket or it cannot be made (the client then sends one part).
    pub fn bind(dir: &Path) -> Option<PartListener> {
        let path = dir.join(format!("part-{}.sock", std::process::id()));
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return None;
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).ok()?;
        let listener = PartListener {
            listener,
            token: random_token()?,
            path,
        };
        std::fs::set_permissions(&listener.path, std::fs::Permissions::from_mode(0o600)).ok()?;
        Some(listener)
    }

    /// What the client needs to send parts here.
    pub fn join(&self) -> Join {
        Join {
            socket: self.path.display().to_string(),
            token: self.token.clone(),
        }
    }

    /// Waits for `count` parts to connect and say the token, handing each to
    /// `arrived` at once; each reads with `idle` as its timeout. Stops waiting
    /// (without an error of its own) once `given_up` says the stream failed.
    pub fn accept(
        &self,
        count: usize,
        idle: Duration,
        arrived: &mut dyn FnMut(MorePart),
        given_up: &dyn Fn() -> bool,
    ) -> Result<()> {
        self.listener
            .set_nonblocking(true)
            .map_err(|err| failed(format!("cannot wait for the other parts: {err}")))?;
        let deadline = Instant::now() + ACCEPT_TIMEOUT;
        let mut accepted = 0;
        while accepted < count {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Some(part) = self.admit(stream, idle) {
                        arrived(part);
                        accepted += 1;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if given_up() {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(failed(format!(
                            "only {accepted} of {count} further parts of the release arrived"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(err) => return Err(failed(format!("cannot accept a part: {err}"))),
            }
        }
        Ok(())
    }

    /// A connection that starts with the token, as a part; `None` for anything else.
    fn admit(&self, stream: UnixStream, idle: Duration) -> Option<MorePart> {
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(TOKEN_TIMEOUT)).ok()?;
        let mut reader = BufReader::with_capacity(256 * 1024, stream);
        let mut line = Vec::new();
        Read::take(&mut reader, 128)
            .read_until(b'\n', &mut line)
            .ok()?;
        if line.strip_suffix(b"\n")? != self.token.as_bytes() {
            return None;
        }
        reader.get_ref().set_read_timeout(Some(idle)).ok()?;
        Some(Box::new(reader))
    }
}

impl Drop for PartListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn random_token() -> Option<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .ok()?;
    Some(crate::manifest::hex(&bytes))
}

fn failed(message: String) -> Error {
    Error::Agent(Failure::new(FailureKind::Failed, message, None::<&str>))
}

/// `dropship agent-part --socket <path>`: passes stdin on to the agent's socket.
/// Returns the exit status (1 with a message on stderr when it cannot).
pub fn relay(socket: &Path) -> u8 {
    let result = UnixStream::connect(socket).and_then(|mut stream| {
        io::copy(&mut io::stdin().lock(), &mut stream)?;
        stream.flush()?;
        stream.shutdown(std::net::Shutdown::Write)
    });
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!(
                "dropship agent-part: cannot pass the release on to {}: {err}",
                socket.display()
            );
            1
        }
    }
}
