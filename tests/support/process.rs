//! Processes under fault injection: a `dropship` child killed by PID when its
//! guard drops, its stderr read line by line as it comes (to kill it at the
//! right moment), and the server-side agent found by its command line in /proc.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Sends `signal` to `pid` (ignoring a process that is already gone).
pub fn signal(pid: u32, signal: i32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) has no memory preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether `pid` still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// A running `dropship` whose stderr is read line by line; SIGKILLed by PID and
/// reaped when dropped, so no test leaves it behind.
pub struct Watched {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    stdout: Arc<Mutex<String>>,
    status: Option<i32>,
}

/// How a watched process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it (e.g. our SIGKILL).
    Killed,
}

impl Watched {
    /// Takes over a child spawned with piped stdout and stderr.
    pub fn new(mut child: Child) -> Watched {
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(pipe) = child.stderr.take() {
            let all = Arc::clone(&stderr);
            let started = Instant::now();
            readers.push(thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let ms = started.elapsed().as_millis();
                    all.lock()
                        .unwrap()
                        .push_str(&format!("[{ms:>5} ms] {line}\n"));
                    let _ = tx.send(line);
                }
            }));
        }
        if let Some(mut pipe) = child.stdout.take() {
            let all = Arc::clone(&stdout);
            readers.push(thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                all.lock().unwrap().push_str(&text);
            }));
        }
        Watched {
            child,
            lines,
            stderr,
            readers,
            stdout,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle`; `None` if the process ended
    /// or `timeout` passed first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// SIGKILLs it now.
    pub fn kill(&mut self) {
        signal(self.pid(), libc::SIGKILL);
    }

    /// Waits up to `timeout` for it to end; SIGKILLs it and panics if it does not.
    #[track_caller]
    pub fn wait(&mut self, timeout: Duration) -> Ended {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                self.join_readers();
                return match status.code() {
                    Some(code) => {
                        self.status = Some(code);
                        Ended::Exited(code)
                    }
                    None => Ended::Killed,
                };
            }
            if Instant::now() >= deadline {
                self.kill();
                let _ = self.child.wait();
                self.join_readers();
                panic!(
                    "dropship (pid {}) still ran after {timeout:?}; killed it.\n--- stderr\n{}",
                    self.pid(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// How it ended, if it has.
    pub fn try_wait(&mut self) -> Option<Ended> {
        let status = self.child.try_wait().expect("poll the child")?;
        self.join_readers();
        Some(match status.code() {
            Some(code) => {
                self.status = Some(code);
                Ended::Exited(code)
            }
            None => Ended::Killed,
        })
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Everything it wrote to stderr so far, each line with the time it came.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything it wrote to stdout (complete once it ended).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

/// PIDs of the agents running for `remote`: processes whose argv is
/// `<remote>/.dropship/bin/dropship-<version>-<hash> agent`.
pub fn agent_pids(remote: &Path) -> Vec<u32> {
    let prefix = format!("{}/.dropship/bin/dropship-", remote.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut argv = cmdline.split(|&b| b == 0);
            let program = String::from_utf8_lossy(argv.next()?).into_owned();
            let sub = argv.next()?;
            (program.starts_with(&prefix) && sub == b"agent" && alive(pid)).then_some(pid)
        })
        .collect()
}

/// Waits until no agent runs for `remote`; false if one still runs after `timeout`.
pub fn wait_agents_gone(remote: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !agent_pids(remote).is_empty() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits up to `timeout` for an agent of `remote` to appear.
pub fn wait_agent(remote: &Path, timeout: Duration) -> Option<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pid) = agent_pids(remote).first() {
            return Some(*pid);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs every agent still running for `remote` (a guard for the end of a test).
pub struct AgentReaper(pub PathBuf);

impl Drop for AgentReaper {
    fn drop(&mut self) {
        for pid in agent_pids(&self.0) {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// A stripped copy of the `dropship` binary under test, for `DROPSHIP_AGENT_BINARY`:
/// the same agent, but a 180 MB debug build hashed on both ends of every deploy
/// costs about a second, which fault tests running dozens of deploys cannot
/// afford. Falls back to the binary itself when `strip` is not there.
pub fn lean_agent() -> PathBuf {
    static LEAN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LEAN.get_or_init(|| {
        let full = PathBuf::from(env!("CARGO_BIN_EXE_dropship"));
        let meta = std::fs::metadata(&full).expect("stat the dropship binary");
        let stamp = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let lean = dir.join(format!("dropship-agent-{}-{stamp}", meta.len()));
        if lean.is_file() {
            return lean;
        }
        let tmp = dir.join(format!("dropship-agent.tmp.{}", std::process::id()));
        let stripped = std::fs::create_dir_all(&dir).is_ok()
            && std::fs::copy(&full, &tmp).is_ok()
            && std::process::Command::new("strip")
                .arg(&tmp)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            && std::fs::rename(&tmp, &lean).is_ok();
        if stripped {
            lean
        } else {
            let _ = std::fs::remove_file(&tmp);
            full
        }
    })
    .clone()
}

/// Polls `f` every 100 ms until it is true; false after `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
