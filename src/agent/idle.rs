//! Reading stdin with a deadline: ssh2 cannot signal a remote process, so the
//! agent gives up on its own when the client has gone silent.

use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

/// Reads the process's stdin, failing with `TimedOut` after `timeout` of silence.
pub struct IdleReader {
    file: ManuallyDrop<File>,
    timeout: Duration,
}

impl IdleReader {
    /// Reads fd 0 directly (no hidden buffer, so `poll` sees exactly what is pending).
    pub fn stdin(timeout: Duration) -> IdleReader {
        // SAFETY: fd 0 is open for the life of the process; ManuallyDrop never closes it.
        let file = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
        IdleReader { file, timeout }
    }

    /// Changes the allowed silence.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

/// Whether the client has closed the agent's stdin (the pipe reports a hang-up;
/// data it sent before may still be waiting). Never blocks.
pub fn stdin_closed() -> bool {
    let mut pollfd = libc::pollfd {
        fd: 0,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1, no wait.
    let rc = unsafe { libc::poll(&raw mut pollfd, 1, 0) };
    rc == 1 && pollfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

impl Read for IdleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut pollfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX);
        loop {
            // SAFETY: one valid pollfd, count 1.
            let rc = unsafe { libc::poll(&raw mut pollfd, 1, millis) };
            match rc {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no data from the client for {} s; gave up",
                            self.timeout.as_secs()
                        ),
                    ));
                }
                rc if rc > 0 => return self.file.read(buf),
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }
}
