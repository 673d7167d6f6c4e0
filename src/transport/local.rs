//! `host: local`: the agent runs as a child process of this one, so a deploy onto
//! this machine goes through exactly the same code as one over SSH.

use std::io::{self, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use super::conn::{AgentConn, Link};
use crate::error::{Error, Result};

struct LocalLink {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<String>>,
}

/// Starts `dropship agent` from this very binary and sends it `request`.
pub fn open(request: &[u8]) -> Result<AgentConn> {
    let link = spawn(&["agent"]).map_err(|(exe, err)| Error::local("start", exe, err))?;
    AgentConn::start("local", Box::new(link), request)
}

/// Runs this binary with `args`, its stdin, stdout and stderr piped, in an
/// environment without the client's secrets and CI credentials.
fn spawn(args: &[&str]) -> std::result::Result<LocalLink, (std::path::PathBuf, io::Error)> {
    let exe = std::env::current_exe().map_err(|err| ("dropship".into(), err))?;
    let mut child = crate::child_env::for_agent(&mut Command::new(&exe))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| (exe.clone(), err))?;
    let (Some(stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err((exe, io::Error::other("no pipes")));
    };
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    Ok(LocalLink {
        child,
        stdin: Some(stdin),
        stdout,
        stderr: Some(stderr),
    })
}

impl Read for LocalLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl Write for LocalLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stdin {
            Some(stdin) => stdin.write(buf),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stdin.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl Link for LocalLink {
    fn close_input(&mut self) {
        self.stdin = None;
    }

    fn open_part(&mut self, socket: &str) -> io::Result<Box<dyn Link>> {
        let link = spawn(&["agent-part", "--socket", socket]).map_err(|(_, err)| err)?;
        Ok(Box::new(link))
    }

    fn finish(&mut self) -> (Option<i32>, String) {
        self.stdin = None;
        let status = self.child.wait().ok().and_then(|s| s.code());
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, stderr)
    }
}
