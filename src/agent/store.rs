//! The on-disk layout under `remote-path`, and the only code that changes it.
//!
//! ```text
//! releases/<id>/        complete releases; never changed after they went live
//! shared/               paths kept across releases (`.env`, uploads, ...)
//! current -> releases/<id>   switched by an atomic rename
//! .dropship/lock        the deploy lock (flock; released by the kernel if a deploy dies)
//! .dropship/meta/<id>.json   when each release arrived, its size
//! .dropship/identities/<id>.json   inode, size and time of its files at commit
//! .dropship/assets/<id>.json   earlier releases' `.next/static` files it holds ([`super::assets`])
//! .dropship/staging/    releases being received; stale ones are removed under the lock
//! .dropship/releases.log     one JSON line per deploy, rollback and revert
//! .dropship/pending     the release being activated, and a switch under way ([`Switch`])
//! .dropship/env.before  `shared/.env` as it was before this deploy replaced it (0600)
//! ```
//!
//! A deploy that dies is reconciled by the next agent that takes the lock: a
//! switch that had started (traffic or `current` moved) is finished; a release
//! that never went live is removed, and the runtime env it brought is put back.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::protocol::{Failure, FailureKind, ReleaseInfo};

/// The deploy directory of one app on one host.
pub struct Store {
    root: PathBuf,
}

/// What is recorded about each release beside it.
#[derive(Serialize, Deserialize)]
struct Meta {
    created: u64,
    files: u64,
    bytes: u64,
    #[serde(default = "top")]
    server_dir: String,
}

fn top() -> String {
    ".".into()
}

/// What is running: how the live release was started and where it serves.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The port nginx sends traffic to (`blue-green`).
    pub live_port: Option<u16>,
    /// How the live release was run, for a `rollback` given no options.
    #[serde(default)]
    pub run: Option<crate::protocol::RunSpec>,
}

/// A switch under way, recorded before traffic or `current` moves to
/// `release`: if the agent dies, the next one finishes it from this.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Switch {
    /// The release taking over.
    pub release: String,
    /// The port it serves on.
    pub port: u16,
    /// Whether it passed its health check there. `restart` records the switch
    /// before it stops the old process; until the new one is healthy, finishing
    /// means starting the release `current` names again.
    pub healthy: bool,
    /// The port that served before (`blue-green`), whose process goes at the end.
    pub old_port: Option<u16>,
    /// How it runs.
    pub run: crate::protocol::RunSpec,
}

/// What `.dropship/pending` holds.
#[derive(Default, Serialize, Deserialize)]
struct Pending {
    /// The new release, removed unless it went live.
    release: Option<String>,
    /// A switch under way.
    switch: Option<Switch>,
}

/// A held deploy lock; dropping it (or the process dying) releases it.
pub struct Lock {
    _file: File,
}

fn io_failure(action: &str, path: &Path, err: &io::Error) -> Error {
    let hint = match err.kind() {
        io::ErrorKind::PermissionDenied => Some(permission_hint(path)),
        io::ErrorKind::ReadOnlyFilesystem => Some(format!(
            "the filesystem of `{}` is mounted read-only: remount it read-write, or use a `remote-path` on a writable one",
            path.display()
        )),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            Some("free some disk space on the server, or lower `keep-releases`".to_owned())
        }
        _ => None,
    };
    Error::Agent(Failure::new(
        FailureKind::Failed,
        format!("cannot {action} `{}`: {err}", path.display()),
        hint.as_deref(),
    ))
}

/// What to do when the deploy user may not change `path`: another user owns it
/// (or its directory), or the deploy user owns both and a mode or an immutable
/// flag forbids it (read-only release directories are handled by dropship itself).
fn permission_hint(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let dir = path.parent().unwrap_or(path);
    let foreign = [path, dir].into_iter().find_map(|p| {
        let owner = fs::symlink_metadata(p).ok()?.uid();
        (owner != me).then_some((p, owner))
    });
    match foreign {
        Some((p, owner)) => format!(
            "`{}` belongs to uid {owner}, not to the deploy user (uid {me}): give it to the deploy user, e.g. `sudo chown -R {me} {}`",
            p.display(),
            p.display()
        ),
        None => format!(
            "the deploy user owns `{}` but may not change it: check its mode (`ls -ld {}`, then `chmod u+w`) and whether it is immutable (`lsattr -d {}`)",
            dir.display(),
            dir.display(),
            dir.display()
        ),
    }
}

/// Wraps an I/O result with what was being done to which path.
pub trait Context<T> {
    /// Names the action and the path in the error.
    fn at(self, action: &str, path: &Path) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn at(self, action: &str, path: &Path) -> Result<T> {
        self.map_err(|err| io_failure(action, path, &err))
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// The store under `root`, which must be an absolute path.
    pub fn new(root: &str) -> Result<Store> {
        crate::protocol::check_remote_path(root).map_err(|problem| {
            Error::Agent(Failure::new(
                FailureKind::BadInput,
                problem,
                Some("use an absolute path of its own, e.g. `/srv/myapp` or `/home/deploy/myapp`"),
            ))
        })?;
        Ok(Store {
            root: PathBuf::from(root),
        })
    }

    /// `releases/<id>`.
    pub fn release_dir(&self, release: &str) -> PathBuf {
        self.root.join("releases").join(release)
    }

    /// `.dropship`: dropship's own files beside the releases.
    pub fn dot(&self) -> PathBuf {
        self.root.join(".dropship")
    }

    /// `.dropship/manifests/<id>.json`: what the release holds.
    pub fn manifest_path(&self, release: &str) -> PathBuf {
        self.dot().join("manifests").join(format!("{release}.json"))
    }

    /// `.dropship/identities/<id>.json`: inode, size and time of each of the
    /// release's files when it was committed (see [`super::reuse`]).
    pub fn identities_path(&self, release: &str) -> PathBuf {
        self.dot()
            .join("identities")
            .join(format!("{release}.json"))
    }

    /// `.dropship/assets/`: what each release carries of earlier releases' `.next/static`.
    pub fn assets_dir(&self) -> PathBuf {
        self.dot().join("assets")
    }

    /// `.dropship/assets/<id>.json` (see [`super::assets`]).
    pub fn assets_path(&self, release: &str) -> PathBuf {
        self.assets_dir().join(format!("{release}.json"))
    }

    fn meta_path(&self, release: &str) -> PathBuf {
        self.dot().join("meta").join(format!("{release}.json"))
    }

    /// A fresh staging directory for `release`, removed again if the deploy fails.
    pub fn staging_dir(&self, release: &str) -> PathBuf {
        self.dot()
            .join("staging")
            .join(format!("{release}.{}", std::process::id()))
    }

    /// Creates the directories a deploy needs.
    pub fn create_layout(&self) -> Result<()> {
        for dir in [
            self.root.join("releases"),
            self.root.join("shared"),
            self.dot().join("meta"),
            self.dot().join("manifests"),
            self.dot().join("identities"),
            self.assets_dir(),
            self.dot().join("staging"),
        ] {
            fs::create_dir_all(&dir).at("create", &dir)?;
        }
        Ok(())
    }

    /// Takes the deploy lock of this `remote-path`, waiting up to `timeout`.
    ///
    /// The lock is an `flock` on `.dropship/lock`: the kernel releases it when its
    /// holder exits, so a deploy that died never blocks the next one. `on_wait` is
    /// called every few seconds with the holder's description and the time waited.
    pub fn lock(
        &self,
        timeout: Duration,
        holder: &str,
        mut on_wait: impl FnMut(&str, Duration) -> Result<()>,
    ) -> Result<Lock> {
        fs::create_dir_all(self.dot()).at("create", &self.dot())?;
        let path = self.dot().join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .at("open", &path)?;
        let started = Instant::now();
        let mut last_report: Option<Instant> = None;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(err)) => return Err(io_failure("lock", &path, &err)),
            }
            let waited = started.elapsed();
            let current_holder = read_holder(&mut file);
            if waited >= timeout {
                return Err(Error::Agent(Failure::new(
                    FailureKind::Locked,
                    format!(
                        "another deploy holds the lock of {} ({current_holder}); waited {} s",
                        self.root.display(),
                        waited.as_secs()
                    ),
                    Some(
                        "wait for it to finish, or raise `lock-timeout`; a lock is released automatically when its deploy exits",
                    ),
                )));
            }
            if last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                on_wait(&current_holder, waited)?;
                last_report = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        file.set_len(0).at("write", &path)?;
        file.rewind().at("write", &path)?;
        writeln!(
            file,
            "{holder} (pid {}, since {})",
            std::process::id(),
            now_secs()
        )
        .at("write", &path)?;
        Ok(Lock { _file: file })
    }

    /// The switch a dead agent left half-done, if any: finish it (see
    /// [`Switch`]) before [`Store::recover`].
    pub fn interrupted_switch(&self) -> Option<Switch> {
        self.pending().switch
    }

    /// Cleans up after deploys that died: their staging directories, and a release
    /// that was being activated but never became live, with the runtime env it
    /// brought. Call with the lock held, after finishing any [`Store::interrupted_switch`].
    ///
    /// A pending release that did go live stays, and is logged as `recover` on
    /// behalf of `by` (its deploy died before it could log it).
    pub fn recover(&self, by: &str) -> Result<()> {
        self.remove_stale_staging()?;
        let live = self.live();
        // The env a dead deploy wrote stays only if its release went live.
        match self.env_before() {
            Some((owner, _)) if live.as_deref() == Some(owner.as_str()) => self.keep_env()?,
            _ => self.put_env_back()?,
        }
        match self.pending().release {
            Some(release) if live.as_deref() == Some(release.as_str()) => {
                self.log("recover", Some(&release), None, by)?;
            }
            Some(release) if self.has_release(&release) => self.discard(&release)?,
            _ => {}
        }
        self.set_pending(None)
    }

    fn pending_path(&self) -> PathBuf {
        self.dot().join("pending")
    }

    /// What `.dropship/pending` says; an agent of an older version wrote the bare release id.
    fn pending(&self) -> Pending {
        let Ok(text) = fs::read_to_string(self.pending_path()) else {
            return Pending::default();
        };
        serde_json::from_str(&text).unwrap_or_else(|_| Pending {
            release: Some(text.trim().to_owned()).filter(|r| !r.is_empty()),
            switch: None,
        })
    }

    /// Marks `release` as being activated (`None`: nothing is; a switch under
    /// way stays recorded). The mark is made durable by
    /// [`Store::commit_staging`], which follows it.
    pub fn set_pending(&self, release: Option<&str>) -> Result<()> {
        let path = self.pending_path();
        let pending = Pending {
            release: release.map(str::to_owned),
            switch: release.is_none().then(|| self.pending().switch).flatten(),
        };
        match pending {
            Pending {
                release: None,
                switch: None,
            } => remove_if_present(&path),
            Pending { release: None, .. } => write_atomically(&path, &to_json(&pending), 0o644),
            _ => write_unsynced(&path, &to_json(&pending), 0o644),
        }
    }

    /// Records (durably) that a switch starts, or (`None`) that it finished or was undone.
    pub fn mark_switch(&self, switch: Option<&Switch>) -> Result<()> {
        let mut pending = self.pending();
        pending.switch = switch.cloned();
        if pending.release.is_none() && pending.switch.is_none() {
            return remove_if_present(&self.pending_path());
        }
        write_atomically(&self.pending_path(), &to_json(&pending), 0o644)
    }

    fn remove_stale_staging(&self) -> Result<()> {
        let staging = self.dot().join("staging");
        let Ok(entries) = fs::read_dir(&staging) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            remove_tree(&entry.path())?;
        }
        Ok(())
    }

    /// The release `current` points at, if any.
    pub fn live(&self) -> Option<String> {
        let target = fs::read_link(self.root.join("current")).ok()?;
        let name = target.file_name()?.to_str()?.to_owned();
        Some(name)
    }

    /// Whether `releases/<id>` exists.
    pub fn has_release(&self, release: &str) -> bool {
        self.release_dir(release).is_dir()
    }

    /// Every release directory, oldest first (by arrival, then by id).
    pub fn releases(&self) -> Result<Vec<ReleaseInfo>> {
        let dir = self.root.join("releases");
        let live = self.live();
        let mut list = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(list),
            Err(err) => return Err(io_failure("list", &dir, &err)),
        };
        for entry in entries.flatten() {
            let Some(release) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !entry.path().is_dir() {
                continue;
            }
            let meta = self.read_meta(&release, &entry.path());
            list.push(ReleaseInfo {
                live: live.as_deref() == Some(release.as_str()),
                release,
                created: meta.created,
                files: meta.files,
                bytes: meta.bytes,
            });
        }
        list.sort_by(|a, b| (a.created, &a.release).cmp(&(b.created, &b.release)));
        Ok(list)
    }

    fn read_meta(&self, release: &str, dir: &Path) -> Meta {
        fs::read(self.meta_path(release))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| Meta {
                created: fs::metadata(dir)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs()),
                files: 0,
                bytes: 0,
                server_dir: top(),
            })
    }

    /// The real directory of a release's `server.js`.
    pub fn app_dir(&self, release: &str) -> PathBuf {
        let dir = self.release_dir(release);
        let server_dir = self.read_meta(release, &dir).server_dir;
        if server_dir == "." {
            dir
        } else {
            dir.join(server_dir)
        }
    }

    /// `shared/.env`, the runtime env of every release.
    pub fn env_file(&self) -> PathBuf {
        self.root.join("shared/.env")
    }

    fn env_backup(&self) -> PathBuf {
        self.dot().join("env.before")
    }

    /// Writes `shared/.env` (mode 0600) for `release`, keeping what it held
    /// before in `.dropship/env.before` (durably, first) for [`Store::put_env_back`].
    pub fn replace_env(&self, release: &str, text: &str) -> Result<()> {
        let path = self.env_file();
        // The release, a newline, then `+` and the old bytes, or `-` when there was no file.
        let before = match fs::read(&path) {
            Ok(bytes) => [b"+".as_slice(), &bytes].concat(),
            Err(_) => b"-".to_vec(),
        };
        let backup = [release.as_bytes(), b"\n", &before].concat();
        write_atomically(&self.env_backup(), &backup, 0o600)?;
        write_atomically(&path, text.as_bytes(), 0o600)
    }

    /// The release whose env replaced the one in `.dropship/env.before`, and that one.
    fn env_before(&self) -> Option<(String, Option<Vec<u8>>)> {
        let bytes = fs::read(self.env_backup()).ok()?;
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let release = String::from_utf8_lossy(&bytes[..newline]).into_owned();
        let before = bytes[newline + 1..].strip_prefix(b"+").map(<[u8]>::to_vec);
        Some((release, before))
    }

    /// Puts back what [`Store::replace_env`] replaced, if it replaced anything.
    pub fn put_env_back(&self) -> Result<()> {
        let Some((_, before)) = self.env_before() else {
            return remove_if_present(&self.env_backup());
        };
        let path = self.env_file();
        match before {
            Some(bytes) => write_atomically(&path, &bytes, 0o600)?,
            None => remove_if_present(&path)?,
        }
        remove_if_present(&self.env_backup())
    }

    /// Keeps the env [`Store::replace_env`] wrote: forgets what it held before.
    pub fn keep_env(&self) -> Result<()> {
        remove_if_present(&self.env_backup())
    }

    /// Where the app's logs go.
    pub fn logs_dir(&self) -> PathBuf {
        self.dot().join("logs")
    }

    /// `.dropship/state.json`.
    pub fn state_path(&self) -> PathBuf {
        self.dot().join("state.json")
    }

    /// The running state (`.dropship/state.json`); empty when missing.
    pub fn state(&self) -> State {
        fs::read(self.state_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Changes the running state.
    pub fn update_state(&self, change: impl FnOnce(&mut State)) -> Result<()> {
        let mut state = self.state();
        change(&mut state);
        write_atomically(&self.state_path(), &to_json(&state), 0o644)
    }

    /// Moves a fully written, synced staging directory to `releases/<id>`, with
    /// its metadata; one `syncfs` makes all of it (and the pending mark) durable,
    /// instead of an fsync per file (each is a journal commit on the critical path).
    pub fn commit_staging(
        &self,
        staging: &Path,
        release: &str,
        manifest: &Manifest,
        server_dir: &str,
    ) -> Result<PathBuf> {
        let meta = Meta {
            created: now_secs(),
            files: manifest.file_count(),
            bytes: manifest.total_bytes(),
            server_dir: server_dir.to_owned(),
        };
        write_unsynced(
            &self.meta_path(release),
            &serde_json::to_vec(&meta).unwrap_or_default(),
            0o644,
        )?;
        write_unsynced(
            &self.manifest_path(release),
            &serde_json::to_vec(manifest).unwrap_or_default(),
            0o644,
        )?;
        write_unsynced(
            &self.identities_path(release),
            &serde_json::to_vec(&super::reuse::identities(staging, manifest)).unwrap_or_default(),
            0o644,
        )?;
        let dest = self.release_dir(release);
        fs::rename(staging, &dest).at("move the staged release to", &dest)?;
        sync_filesystem(&self.root)?;
        Ok(dest)
    }

    /// Whether `release` serves or is about to: `current` names it, or a switch to it is under way.
    pub fn serves(&self, release: &str) -> bool {
        self.live().as_deref() == Some(release)
            || self
                .interrupted_switch()
                .is_some_and(|switch| switch.release == release)
    }

    /// Removes a release that never stayed live, and its metadata.
    pub fn discard(&self, release: &str) -> Result<()> {
        remove_tree(&self.release_dir(release))?;
        if self.pending().release.as_deref() == Some(release) {
            self.set_pending(None)?;
        }
        let _ = fs::remove_file(self.meta_path(release));
        let _ = fs::remove_file(self.manifest_path(release));
        let _ = fs::remove_file(self.identities_path(release));
        let _ = fs::remove_file(self.assets_path(release));
        Ok(())
    }

    /// Points `current` at `releases/<release>` with one atomic rename.
    pub fn switch(&self, release: &str) -> Result<()> {
        let tmp = self.root.join(format!(".current.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(release), &tmp)
            .at("create the link", &tmp)?;
        let current = self.root.join("current");
        if fs::symlink_metadata(&current).is_ok_and(|m| m.is_dir()) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Agent(Failure::new(
                FailureKind::BadInput,
                format!(
                    "`{}` is a real directory, not a link dropship manages",
                    current.display()
                ),
                Some("move it away once (e.g. `mv current current.old`), then deploy again"),
            )));
        }
        fs::rename(&tmp, &current).at("switch", &current)?;
        sync_dir(&self.root)
    }

    /// Points `current` at nothing again (used when the first deploy is reverted).
    pub fn unset_live(&self) -> Result<()> {
        let current = self.root.join("current");
        match fs::remove_file(&current) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(io_failure("remove", &current, &err))
            }
            _ => sync_dir(&self.root),
        }
    }

    /// Links each `shared` path into `release_dir`, creating it in `shared/` when missing.
    ///
    /// A path ending in `/` is a directory; any other is a file (created empty, mode 0600).
    /// What the release ships at such a path is replaced by the link (and is not
    /// in the stored manifest, [`Manifest::with_shared`]), except a shipped `.env`:
    /// it stays as built, under the `shared/.env` values that `run-app` sets.
    pub fn link_shared(
        &self,
        release_dir: &Path,
        shared: &[String],
        manifest: &Manifest,
    ) -> Result<()> {
        let replaced = manifest.replaced_by_shared(shared);
        for item in shared {
            let is_dir = item.ends_with('/');
            let rel = item.trim_end_matches('/');
            if manifest.ships(rel) && !replaced.contains(&item.as_str()) {
                continue;
            }
            let source = self.root.join("shared").join(rel);
            if let Some(parent) = source.parent() {
                fs::create_dir_all(parent).at("create", parent)?;
            }
            if is_dir {
                fs::create_dir_all(&source).at("create", &source)?;
            } else if !source.exists() {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&source)
                    .at("create", &source)?;
            }
            let link = release_dir.join(rel);
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent).at("create", parent)?;
            }
            match fs::symlink_metadata(&link) {
                Ok(meta) if meta.is_dir() => remove_tree(&link)?,
                Ok(_) => fs::remove_file(&link).at("replace", &link)?,
                Err(_) => {}
            }
            let up = "../".repeat(rel.matches('/').count() + 2);
            std::os::unix::fs::symlink(format!("{up}shared/{rel}"), &link).at("link", &link)?;
        }
        Ok(())
    }

    /// Removes the oldest releases beyond `keep`, never `protect`ed ones. Returns what went.
    pub fn prune(&self, keep: usize, protect: &[Option<String>]) -> Result<Vec<String>> {
        let pruned = prunable(&self.releases()?, keep, protect);
        for release in &pruned {
            self.discard(release)?;
        }
        Ok(pruned)
    }

    /// Appends one line to `.dropship/releases.log`.
    pub fn log(
        &self,
        op: &str,
        release: Option<&str>,
        previous: Option<&str>,
        by: &str,
    ) -> Result<()> {
        let path = self.dot().join("releases.log");
        let line = serde_json::json!({
            "at": now_secs(), "op": op, "release": release, "previous": previous, "by": by,
        });
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&path)
            .at("open", &path)?;
        writeln!(file, "{line}").at("write", &path)?;
        file.sync_data().at("sync", &path)
    }

    /// Free bytes for the deploy user on the filesystem of `remote-path` (or its nearest existing parent).
    pub fn free_bytes(&self) -> u64 {
        let mut dir = self.root.as_path();
        while !dir.exists() {
            match dir.parent() {
                Some(parent) => dir = parent,
                None => return 0,
            }
        }
        free_bytes_at(dir).unwrap_or(0)
    }
}

/// The releases to remove so that at most `keep` remain, oldest first, skipping
/// the live one and the `protect`ed ones (which may leave more than `keep`).
pub fn prunable(releases: &[ReleaseInfo], keep: usize, protect: &[Option<String>]) -> Vec<String> {
    let mut remaining = releases.len();
    let mut pruned = Vec::new();
    for info in releases {
        if remaining <= keep {
            break;
        }
        if info.live || protect.iter().flatten().any(|p| *p == info.release) {
            continue;
        }
        pruned.push(info.release.clone());
        remaining -= 1;
    }
    pruned
}

fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.take(4096).read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "holder unknown".into()
    } else {
        format!("held by {text}")
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_failure("remove", path, &err)),
        _ => Ok(()),
    }
}

/// Removes the directory `dir` with everything in it, also where the build left
/// directories read-only (0555, as Nix, Bazel or `chmod -R a-w` do): their modes
/// are kept in the release, so the deploy user, who owns them, makes each one
/// writable just before emptying it. Links are removed, never followed.
pub fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(dir)?;
            fs::remove_dir_all(dir).at("remove", dir)
        }
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_failure("remove", dir, &err)),
        _ => Ok(()),
    }
}

/// Adds `u+rwx` to `dir` and every directory below it (not through links).
fn make_writable(dir: &Path) -> Result<()> {
    let mode = fs::symlink_metadata(dir)
        .at("inspect", dir)?
        .permissions()
        .mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode((mode | 0o700) & 0o7777))
            .at("make writable", dir)?;
    }
    for entry in fs::read_dir(dir).at("list", dir)? {
        let entry = entry.at("list", dir)?;
        if entry.file_type().at("inspect", &entry.path())?.is_dir() {
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, with `mode`,
/// and syncs the file before the rename.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_replacing(path, bytes, mode, true)
}

/// [`write_atomically`] without the sync: for files a later `syncfs` covers.
fn write_unsynced(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_replacing(path, bytes, mode, false)
}

fn write_replacing(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .at("create", &tmp)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .at("chmod", &tmp)?;
    file.write_all(bytes).at("write", &tmp)?;
    if sync {
        file.sync_all().at("sync", &tmp)?;
    }
    fs::rename(&tmp, path).at("rename", path)
}

/// fsyncs a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at("sync", dir)
}

/// Flushes every dirty page of the filesystem that holds `path` (one `syncfs` call
/// instead of one fsync per file).
pub fn sync_filesystem(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path).at("open", path)?;
    // SAFETY: syncfs takes a valid open file descriptor and has no other preconditions.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io_failure("sync", path, &io::Error::last_os_error()))
    }
}

fn free_bytes_at(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `stat` points to writable memory of the right size.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail * stat.f_frsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("app").display().to_string()).unwrap();
        store.create_layout().unwrap();
        (dir, store)
    }

    fn release(store: &Store, id: &str) {
        fs::create_dir_all(store.release_dir(id)).unwrap();
    }

    #[test]
    fn recovery_removes_a_pending_release_that_never_went_live_and_puts_its_env_back() {
        let (_dir, store) = store();
        release(&store, "r1");
        store.switch("r1").unwrap();
        fs::write(store.env_file(), "A=old\n").unwrap();
        release(&store, "r2");
        store.set_pending(Some("r2")).unwrap();
        store.replace_env("r2", "A=new\n").unwrap();
        store.recover("test").unwrap();
        assert!(!store.has_release("r2"));
        assert_eq!(fs::read_to_string(store.env_file()).unwrap(), "A=old\n");
        assert!(!store.env_backup().exists());
        assert!(!store.pending_path().exists());
    }

    #[test]
    fn recovery_keeps_a_pending_release_that_went_live_with_its_env() {
        let (_dir, store) = store();
        release(&store, "r1");
        store.set_pending(Some("r1")).unwrap();
        store.replace_env("r1", "A=new\n").unwrap();
        store.switch("r1").unwrap();
        store.recover("test").unwrap();
        assert!(store.has_release("r1"));
        assert_eq!(fs::read_to_string(store.env_file()).unwrap(), "A=new\n");
        assert!(!store.env_backup().exists());
        let log = fs::read_to_string(store.dot().join("releases.log")).unwrap();
        assert!(log.contains("\"op\":\"recover\""), "{log}");
    }

    #[test]
    fn an_env_that_did_not_exist_is_removed_again() {
        let (_dir, store) = store();
        store.replace_env("r1", "A=new\n").unwrap();
        store.put_env_back().unwrap();
        assert!(!store.env_file().exists());
    }

    #[test]
    fn a_pending_mark_of_an_older_agent_is_the_bare_release_id() {
        let (_dir, store) = store();
        release(&store, "r1");
        fs::write(store.pending_path(), "r1\n").unwrap();
        assert!(store.interrupted_switch().is_none());
        store.recover("test").unwrap();
        assert!(!store.has_release("r1"));
    }

    #[test]
    fn a_recorded_switch_survives_clearing_the_pending_release_and_protects_its_release() {
        let (_dir, store) = store();
        release(&store, "r2");
        store.set_pending(Some("r2")).unwrap();
        let switch = Switch {
            release: "r2".into(),
            port: 3001,
            old_port: Some(3000),
            healthy: true,
            run: serde_json::from_value(serde_json::json!({
                "app": "app", "process_manager": "pm2", "start": "node server.js",
                "strategy": "blue-green", "ports": [3000, 3001], "health_path": "/",
                "health_timeout_secs": 5, "nginx_upstream": "/tmp/u.conf", "nginx_reload": "true",
            }))
            .unwrap(),
        };
        store.mark_switch(Some(&switch)).unwrap();
        store.set_pending(None).unwrap();
        assert_eq!(store.interrupted_switch().unwrap().port, 3001);
        assert!(store.serves("r2"));
        store.mark_switch(None).unwrap();
        assert!(!store.pending_path().exists());
        assert!(!store.serves("r2"));
    }

    /// The deploy user owns the directory, so `chown` cannot help: the hint says
    /// what can (a read-only release directory never gets here: [`remove_tree`]).
    #[test]
    fn permission_denied_in_an_own_directory_points_at_mode_and_immutable_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("releases");
        fs::create_dir(&path).unwrap();
        let err = io_failure(
            "remove",
            &path.join("r1"),
            &io::Error::from(io::ErrorKind::PermissionDenied),
        );
        let d = path.display();
        assert_eq!(
            err.hint(),
            Some(format!(
                "the deploy user owns `{d}` but may not change it: check its mode (`ls -ld {d}`, then `chmod u+w`) and whether it is immutable (`lsattr -d {d}`)"
            ))
        );
    }

    #[test]
    fn a_read_only_tree_is_removed_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("shared");
        fs::create_dir(&outside).unwrap();
        let tree = dir.path().join("release");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        for d in ["a/b", "a", ""] {
            fs::set_permissions(tree.join(d), fs::Permissions::from_mode(0o555)).unwrap();
        }
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        let mode = fs::metadata(&outside).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o555, "the link's target keeps its mode");
        remove_tree(&tree).unwrap();
    }
}
