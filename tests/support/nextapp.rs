//! Real Next.js apps, built from the fixtures under `tests/apps/<name>/` once
//! per machine and version of the fixture's sources: the build lands in
//! `target/fixture-apps/<name>-<hash>/`, and every test (and every later run)
//! that needs the app shares it.
//!
//! A fixture is a directory with `package.json`, its lockfile and the app's
//! sources. With `package-lock.json` it is built with npm (`npm ci`, then
//! `npm run build`), with `pnpm-lock.yaml` with pnpm (`pnpm install
//! --frozen-lockfile`, then `pnpm run build`). A monorepo (npm workspaces)
//! builds from its root; its Next.js app is the one directory holding a
//! `next.config.js`. Any build that leaves `.next/standalone` works (Next.js
//! versions, App or Pages Router).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use walkdir::WalkDir;

/// Written last into a finished build: a directory without it is half-built.
const DONE: &str = ".fixture-built";

/// The built app of fixture `name` (the Next.js app's directory, with
/// `.next/standalone` inside: `apps/web` of a monorepo), building it first if
/// no run has yet.
///
/// Panics with the package manager's output when the build fails (is the npm
/// registry reachable?).
pub fn built(name: &str) -> PathBuf {
    built_with(name, &[])
}

/// The same, built with `env` in the environment of `npm run build` (e.g.
/// `NEXT_PUBLIC_*` values, which Next.js inlines into the client chunks): each
/// `env` is its own build, in its own directory.
pub fn built_with(name: &str, env: &[(&str, &str)]) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let key = format!("{name} {env:?}");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = built.get(&key) {
        return dir.clone();
    }
    let dir = build(name, env);
    built.insert(key, dir.clone());
    dir
}

fn build(name: &str, env: &[(&str, &str)]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps")
        .join(name);
    let root = target_dir().join("fixture-apps");
    fs::create_dir_all(&root).unwrap();
    let out = root.join(format!("{name}-{}", sources_hash(&source, env)));
    // Test processes of other runs may build the same fixture at the same time.
    let lock = fs::File::create(root.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    let app = match app_dir(&source) {
        dir if dir.as_os_str().is_empty() => out.clone(),
        dir => out.join(dir),
    };
    if out.join(DONE).exists() {
        return app;
    }
    if out.exists() {
        fs::remove_dir_all(&out).unwrap();
    }
    copy_sources(&source, &out);
    let started = std::time::Instant::now();
    if source.join("pnpm-lock.yaml").is_file() {
        run(
            &out,
            "pnpm",
            &["install", "--frozen-lockfile", "--reporter=silent"],
            &[],
        );
        run(&out, "pnpm", &["run", "build"], env);
    } else {
        run(
            &out,
            "npm",
            &["ci", "--no-audit", "--no-fund", "--loglevel=error"],
            &[],
        );
        run(&out, "npm", &["run", "build"], env);
    }
    eprintln!(
        "built fixture `{name}` {env:?} in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    fs::write(out.join(DONE), b"").unwrap();
    app
}

/// Where the Next.js app is inside the fixture: the directory of its
/// `next.config.js` (the top, or `apps/web` of a monorepo).
fn app_dir(source: &Path) -> PathBuf {
    let configs: Vec<PathBuf> = sources(source)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "next.config.js"))
        .collect();
    match configs.as_slice() {
        [one] => one.parent().unwrap().to_path_buf(),
        other => panic!(
            "fixture {} needs exactly one next.config.js, has {other:?}",
            source.display()
        ),
    }
}

fn run(dir: &Path, tool: &str, args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .env("NEXT_TELEMETRY_DISABLED", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|err| panic!("run {tool} (bin/test installs it): {err}"));
    assert!(
        out.status.success(),
        "`{tool} {}` failed in {} (is the npm registry reachable?)\n{}\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    )
}

/// The fixture's files, without what a build or install leaves in it.
fn sources(source: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = WalkDir::new(source)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !matches!(e.file_name().to_str(), Some("node_modules" | ".next")))
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(source).unwrap().to_path_buf())
        .collect();
    files.sort();
    files
}

/// The first 16 hex digits of a SHA-256 over every source path and content
/// (and the build's `env`, when it has one).
fn sources_hash(source: &Path, env: &[(&str, &str)]) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in env {
        hasher.update(format!("{key}={value}").as_bytes());
        hasher.update([0]);
    }
    for file in sources(source) {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(fs::read(source.join(&file)).unwrap());
        hasher.update([0]);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn copy_sources(source: &Path, out: &Path) {
    for file in sources(source) {
        let dest = out.join(&file);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(source.join(&file), &dest).unwrap();
    }
}

/// A built fixture app deployed over SSH with PM2 (restart, one port), with the
/// tree its releases must hold. Every part is stopped when it is dropped.
pub struct SshSite {
    pub app: PathBuf,
    /// The release as built (the app's standalone tree minus `*.map`).
    pub expected: PathBuf,
    pub remote: PathBuf,
    pub port: u16,
    sshd: super::sshd::Sshd,
    _pm2: super::runtime::Pm2Home,
    _work: tempfile::TempDir,
}

impl SshSite {
    /// The fixture `name`, built once per run, and a fresh sshd and PM2.
    pub fn new(name: &str) -> SshSite {
        let app = built(name);
        let work = tempfile::tempdir().unwrap();
        let expected = super::fixture::expected_release(&app, &work.path().join("expected"));
        let pm2 = super::runtime::Pm2Home::new();
        let sshd = super::sshd::Sshd::start_with_env(&[("PM2_HOME", &pm2.path_str())]);
        SshSite {
            app,
            expected,
            remote: work.path().join("srv/web"),
            port: super::runtime::free_port(),
            sshd,
            _pm2: pm2,
            _work: work,
        }
    }

    /// Deploys the app as `release`, which must succeed.
    pub fn deploy(&self, release: &str) -> crate::test::Output {
        crate::test::Test::new()
            .args(["deploy", "--release", release, "--app-port"])
            .arg(self.port.to_string())
            .args(["--health-timeout", "60", "--working-directory"])
            .arg(&self.app)
            .args(crate::test::ssh_args(&self.sshd, &self.remote))
            .success()
    }
}
