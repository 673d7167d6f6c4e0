//! Debian's headless Chromium, driven by playwright-core (pinned in
//! `tests/browser/package-lock.json`, installed there once with `npm ci`) through
//! the scripts in `tests/browser/`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A page open in Chromium, waiting for the test to go on.
pub struct Browser {
    child: Child,
    lines: BufReader<ChildStdout>,
}

/// Opens `url` in a fresh headless Chromium (profile under `work`) with
/// `tests/browser/skew.mjs`; read its first line with [`Browser::next_line`].
pub fn open(url: &str, work: &Path) -> Browser {
    let chromium = chromium();
    let scripts = install();
    let profile = work.join("chromium-profile");
    fs::create_dir_all(&profile).unwrap();
    let mut child = Command::new("node")
        .arg(scripts.join("skew.mjs"))
        .arg(&chromium)
        .arg(url)
        .arg(&profile)
        .current_dir(&scripts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node");
    let lines = BufReader::new(child.stdout.take().unwrap());
    Browser { child, lines }
}

impl Browser {
    /// The script's next JSON line; panics when it ended without one.
    pub fn next_line(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "the browser script ended early (its stderr is above)"
        );
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line}"))
    }

    /// Tells the script to go on, and returns what it reports (the browser
    /// is stopped when this is dropped).
    pub fn after_deploy(&mut self) -> serde_json::Value {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        self.next_line()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's Chromium (bin/test installs it as root).
fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("Chromium is not installed: `apt-get install chromium` (bin/test does, as root)")
}

/// `tests/browser` with its pinned packages installed (once per checkout).
fn install() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let lock = fs::File::create(std::env::temp_dir().join("dropship-browser-npm.lock")).unwrap();
    lock.lock().unwrap();
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .expect("run npm");
        assert!(
            out.status.success(),
            "`npm ci` in {} failed (is the npm registry reachable?)\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}
