//! Skew protection (`keep-assets`): a page loaded from an earlier release asks
//! the new one for the chunks of its own build. So the new release's
//! `.next/static` also holds the files of the `.next/static` of the releases
//! live before it, up to `keep-assets` of them: hard links to the files those
//! releases hold (never sent again, never anything outside `.next/static`).
//!
//! Each release records what it carries in `.dropship/assets/<id>.json`: the
//! path under `.next/static`, how many deploys ago it was built, and its
//! identity. The next deploy takes the live release's own files (from its
//! manifest, checked against its identity record) and what it carries (checked
//! against this record), so the files survive pruning of the releases that
//! built them. A file that changed since is not carried; a path the new
//! release ships itself is never replaced. Carried files are in no manifest
//! or identity record: later deploys neither reuse nor verify them as files
//! of the release.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::reuse::Identity;
use super::store::{self, Store};
use crate::error::{Error, Result};
use crate::manifest::{self, Kind, Manifest};
use crate::protocol::{DeployRequest, Failure, FailureKind};

/// Next.js's client files, relative to the directory of `server.js`.
const STATIC: &str = ".next/static";

/// One file a release carries from an earlier one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Carried {
    /// Path under `.next/static`.
    path: String,
    /// Deploys since the release that built it went live (1: the one before).
    age: usize,
    /// What it was when linked, as [`Identity`] records it.
    identity: Identity,
}

/// Links into `staging` (`request`'s release) the `.next/static` files of the
/// releases live before it, up to `keep_assets` of them, and records them.
/// Returns the note saying how many files it linked, if any.
pub fn carry(store: &Store, staging: &Path, request: &DeployRequest) -> Result<Option<String>> {
    let (server_dir, manifest, keep) =
        (&request.server_dir, &request.manifest, request.keep_assets);
    remove_orphan_records(store);
    let Some(static_dir) = static_dir(staging, server_dir) else {
        return Ok(None);
    };
    let (Some(live), true) = (store.live(), keep > 0) else {
        return Ok(None);
    };
    let ships = shipped(manifest, server_dir);
    let mut carried = Vec::new();
    for (from, item) in candidates(store, &live, keep) {
        if ships.contains_key(item.path.as_str()) || Identity::of(&from) != Some(item.identity) {
            continue;
        }
        if link(&from, &static_dir, &item.path)? {
            carried.push(item);
        }
    }
    let record = serde_json::to_vec(&carried).unwrap_or_default();
    store::write_atomically(&store.assets_path(&request.release), &record, 0o644)?;
    Ok(note(carried.len(), keep))
}

/// What the deploy says about the files it linked.
fn note(kept: usize, keep: usize) -> Option<String> {
    let files = if kept == 1 { "file" } else { "files" };
    (kept > 0).then(|| {
        format!("skew protection: .next/static also holds {kept} {files} of earlier releases (keep-assets: {keep})")
    })
}

/// `.next/static` of the release at `dir`, when it is a real directory inside it.
fn static_dir(dir: &Path, server_dir: &str) -> Option<PathBuf> {
    let mut path = dir.to_path_buf();
    let inner = Path::new(server_dir).join(STATIC);
    for part in inner.components() {
        match part {
            Component::CurDir => continue,
            Component::Normal(name) => path.push(name),
            _ => return None,
        }
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return None;
        }
    }
    Some(path)
}

/// The files `manifest` ships under `.next/static`, by path under it.
fn shipped<'a>(manifest: &'a Manifest, server_dir: &str) -> BTreeMap<&'a str, usize> {
    let prefix = match server_dir.trim_matches('/') {
        "." | "" => format!("{STATIC}/"),
        dir => format!("{dir}/{STATIC}/"),
    };
    manifest
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((e.path.strip_prefix(&prefix)?, i)))
        .collect()
}

/// What the release after `live` carries: `live`'s own static files (age 1)
/// and what it carries that is younger than `keep`, one age older; with the
/// file to link each from. The youngest of one path wins.
fn candidates(store: &Store, live: &str, keep: usize) -> Vec<(PathBuf, Carried)> {
    let dir = store.release_dir(live);
    let server_dir = store.app_dir(live);
    let server_dir = match server_dir.strip_prefix(&dir).map(Path::to_string_lossy) {
        Ok(inner) if !inner.is_empty() => inner.into_owned(),
        _ => ".".to_owned(),
    };
    let Some(static_dir) = static_dir(&dir, &server_dir) else {
        return Vec::new();
    };
    let mut by_path = BTreeMap::new();
    for item in own_files(store, live, &server_dir) {
        by_path.entry(item.path.clone()).or_insert(item);
    }
    for mut item in recorded(store, live) {
        if item.age < keep {
            item.age += 1;
            by_path.entry(item.path.clone()).or_insert(item);
        }
    }
    by_path
        .into_values()
        .filter(|item| manifest::check_relative_path(&item.path).is_ok())
        .map(|item| (static_dir.join(&item.path), item))
        .collect()
}

/// The regular files of `release`'s own `.next/static`, as committed.
fn own_files(store: &Store, release: &str, server_dir: &str) -> Vec<Carried> {
    let Some(manifest) = fs::read(store.manifest_path(release))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
    else {
        return Vec::new();
    };
    let identities = fs::read(store.identities_path(release))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Vec<Option<Identity>>>(&bytes).ok())
        .filter(|ids| ids.len() == manifest.entries.len())
        .unwrap_or_default();
    shipped(&manifest, server_dir)
        .into_iter()
        .filter(|(_, i)| matches!(manifest.entries[*i].kind, Kind::File { .. }))
        .filter_map(|(path, i)| {
            Some(Carried {
                path: path.to_owned(),
                age: 1,
                identity: (*identities.get(i)?)?,
            })
        })
        .collect()
}

/// What `release` carries, by its record (none when it has none).
fn recorded(store: &Store, release: &str) -> Vec<Carried> {
    fs::read(store.assets_path(release))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Hard-links `from` to `path` under `static_dir`, creating its directories;
/// `false` when something is in the way (a file, or a link where a directory goes).
fn link(from: &Path, static_dir: &Path, path: &str) -> Result<bool> {
    let to = static_dir.join(path);
    let mut dir = static_dir.to_path_buf();
    if let Some(parent) = Path::new(path).parent() {
        for part in parent.components() {
            dir.push(part);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Ok(false),
                Err(_) => fs::create_dir(&dir).map_err(|err| cannot("create", &dir, &err))?,
            }
        }
    }
    if fs::symlink_metadata(&to).is_ok() {
        return Ok(false);
    }
    fs::hard_link(from, &to).map_err(|err| cannot("link", &to, &err))?;
    Ok(true)
}

/// Removes records of releases that are gone (a deploy that died while staging).
fn remove_orphan_records(store: &Store) {
    let Ok(entries) = fs::read_dir(store.assets_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let release = name.to_string_lossy();
        let release = release.strip_suffix(".json").unwrap_or(&release);
        if !store.has_release(release) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn cannot(action: &str, path: &Path, err: &std::io::Error) -> Error {
    Error::Agent(Failure::new(
        FailureKind::Failed,
        format!(
            "cannot {action} {} to keep the earlier releases' assets: {err}",
            path.display()
        ),
        Some("check the disk of the server; `keep-assets: 0` deploys without skew protection"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Entry;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;

    /// Writes `files` under `dir` and returns their manifest, with the directories.
    fn release_tree(dir: &Path, files: &[(&str, &[u8])]) -> Manifest {
        let mut entries: Vec<Entry> = [".next", ".next/static", ".next/static/chunks"]
            .iter()
            .map(|path| Entry {
                path: (*path).into(),
                mode: 0o755,
                kind: Kind::Dir,
            })
            .collect();
        fs::create_dir_all(dir.join(".next/static/chunks")).unwrap();
        for (path, content) in files {
            fs::write(dir.join(path), content).unwrap();
            entries.push(Entry {
                path: (*path).into(),
                mode: 0o644,
                kind: Kind::File {
                    size: content.len() as u64,
                    hash: manifest::content_hash(&Sha256::digest(content)),
                },
            });
        }
        Manifest { entries }
    }

    fn request(release: &str, manifest: Manifest, keep: usize) -> DeployRequest {
        let mut request: DeployRequest = serde_json::from_value(serde_json::json!({
            "target": {"protocol": 1, "root": "/srv/app", "by": "t", "lock_timeout_secs": 1, "dry_run": false},
            "release": release, "manifest": {"entries": []}, "shared": [], "keep_releases": 5,
            "idle_timeout_secs": 300, "server_dir": ".", "env": null,
            "run": {"app": "app", "process_manager": "none", "start": "node server.js",
                "strategy": "restart", "ports": [3000], "health_path": "/", "health_timeout_secs": 1,
                "nginx_upstream": "/x", "nginx_reload": "true"},
        }))
        .unwrap();
        request.manifest = manifest;
        request.keep_assets = keep;
        request
    }

    #[test]
    fn the_live_releases_files_as_committed_are_linked_and_a_changed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_str().unwrap()).unwrap();
        store.create_layout().unwrap();
        let staging = store.staging_dir("r1");
        let (old, changed) = (
            ".next/static/chunks/old.js",
            ".next/static/chunks/changed.js",
        );
        let manifest = release_tree(&staging, &[(old, b"old"), (changed, b"changed")]);
        store
            .commit_staging(&staging, "r1", &manifest, ".")
            .unwrap();
        store.switch("r1").unwrap();
        let r1 = store.release_dir("r1");
        fs::write(r1.join(changed), b"changed on the server").unwrap();

        let staging = store.staging_dir("r2");
        let new = ".next/static/chunks/new.js";
        let manifest = release_tree(&staging, &[(new, b"new")]);
        let note = carry(&store, &staging, &request("r2", manifest.clone(), 3)).unwrap();
        assert_eq!(
            note.as_deref(),
            Some(
                "skew protection: .next/static also holds 1 file of earlier releases (keep-assets: 3)"
            )
        );
        let ino = |path: &Path| fs::metadata(path).unwrap().ino();
        assert_eq!(ino(&staging.join(old)), ino(&r1.join(old)));
        assert!(!staging.join(changed).exists());
        assert_eq!(recorded(&store, "r2").len(), 1);

        // Off: nothing linked, nothing recorded.
        let staging = store.staging_dir("r3");
        let manifest = release_tree(&staging, &[(new, b"new")]);
        assert_eq!(
            carry(&store, &staging, &request("r3", manifest, 0)).unwrap(),
            None
        );
        assert!(!staging.join(old).exists());
        assert!(!store.assets_path("r3").exists());
    }

    #[test]
    fn the_static_directory_must_be_a_real_directory_inside_the_release() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("apps/web/.next/static")).unwrap();
        fs::create_dir_all(dir.path().join("elsewhere/.next/static")).unwrap();
        std::os::unix::fs::symlink("elsewhere", dir.path().join("link")).unwrap();
        assert_eq!(
            static_dir(dir.path(), "apps/web"),
            Some(dir.path().join("apps/web/.next/static"))
        );
        assert_eq!(static_dir(dir.path(), "link"), None);
        assert_eq!(static_dir(dir.path(), "../x"), None);
        assert_eq!(static_dir(dir.path(), "."), None);
    }

    #[test]
    fn a_link_or_file_in_the_way_stops_the_link_and_nothing_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from.js");
        fs::write(&from, b"old").unwrap();
        let static_dir = dir.path().join("static");
        fs::create_dir_all(static_dir.join("chunks")).unwrap();
        fs::write(static_dir.join("chunks/new.js"), b"new").unwrap();
        std::os::unix::fs::symlink("/tmp", static_dir.join("out")).unwrap();
        assert!(!link(&from, &static_dir, "chunks/new.js").unwrap());
        assert!(!link(&from, &static_dir, "out/x.js").unwrap());
        assert!(!link(&from, &static_dir, "chunks/new.js/x.js").unwrap());
        assert!(link(&from, &static_dir, "chunks/app/old.js").unwrap());
        assert_eq!(fs::read(static_dir.join("chunks/new.js")).unwrap(), b"new");
        assert_eq!(
            fs::read(static_dir.join("chunks/app/old.js")).unwrap(),
            b"old"
        );
        assert!(!dir.path().join("tmp/x.js").exists());
    }
}
