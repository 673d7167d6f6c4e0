//! Which files of a new release this host already has, and how to take them
//! from an earlier release instead of receiving them again.
//!
//! A release never changes because another one ran, but an app may rewrite
//! files inside its own release while it runs (Next.js ISR writes prerendered
//! pages in place). Two rules follow:
//! - a file is reused only while it is exactly as its release was committed:
//!   its inode, size and modification time were recorded then
//!   (`.dropship/identities/<id>.json`) and must still match; a file that
//!   changed is sent again;
//! - a file the app may write ([`app_writes`]) is copied, never hard-linked, so
//!   that a write in one release cannot reach another through a shared inode.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::receive::Source;
use super::store::Store;
use crate::error::Result;
use crate::manifest::{Kind, Manifest};

/// The prerendered outputs Next.js rewrites when it renders a page again
/// (`revalidate`), by extension, under `.next/server/app/` and `.next/server/pages/`.
const PRERENDERED: [&str; 5] = ["html", "rsc", "meta", "body", "json"];

/// What identifies the content of a file on disk without reading it: any write
/// through any of its links changes the modification time. Stored as
/// `[inode, size, mtime, mtime_nsec]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "[i64; 4]", into = "[i64; 4]")]
pub struct Identity {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl From<[i64; 4]> for Identity {
    fn from([ino, size, mtime, mtime_nsec]: [i64; 4]) -> Identity {
        // Inode numbers and sizes above i64::MAX wrap both ways: still one-to-one.
        Identity {
            ino: ino as u64,
            size: size as u64,
            mtime,
            mtime_nsec,
        }
    }
}

impl From<Identity> for [i64; 4] {
    fn from(id: Identity) -> [i64; 4] {
        [id.ino as i64, id.size as i64, id.mtime, id.mtime_nsec]
    }
}

impl Identity {
    /// The identity of the regular file at `path`; `None` for anything else.
    pub fn of(path: &Path) -> Option<Identity> {
        let meta = fs::symlink_metadata(path).ok()?;
        meta.is_file().then(|| Identity {
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }

    /// The modification time in whole seconds (0 before the epoch).
    pub fn mtime_secs(&self) -> u64 {
        u64::try_from(self.mtime).unwrap_or(0)
    }
}

/// The identity of each entry of `manifest` in the release at `dir`, in
/// manifest order (`None` for what is not a regular file there).
pub fn identities(dir: &Path, manifest: &Manifest) -> Vec<Option<Identity>> {
    manifest
        .entries
        .iter()
        .map(|e| match e.kind {
            Kind::File { .. } => Identity::of(&dir.join(&e.path)),
            _ => None,
        })
        .collect()
}

/// Whether the app may rewrite `path` (relative to its release) while it runs:
/// Next.js's prerendered pages and its cache, wherever `.next` is (monorepos
/// put it under `apps/<name>/`).
pub fn app_writes(path: &str) -> bool {
    let prerendered = path
        .rsplit_once('.')
        .is_some_and(|(_, ext)| PRERENDERED.contains(&ext));
    (prerendered && (under(path, ".next/server/app/") || under(path, ".next/server/pages/")))
        || under(path, ".next/cache/")
}

/// Whether `path` has `dir` (ending in `/`) at its start or after a `/`.
fn under(path: &str, dir: &str) -> bool {
    path.match_indices(dir)
        .any(|(at, _)| at == 0 || path.as_bytes()[at - 1] == b'/')
}

/// The files that need not be sent, and the files of earlier releases that
/// could have been reused but changed on the server.
pub struct Found {
    /// Where to take each reusable file from, by manifest index.
    pub sources: HashMap<usize, Source>,
    /// Files outside [`app_writes`] that changed after their release was
    /// committed (someone writes into releases), in path order.
    pub changed: Vec<PathBuf>,
}

/// An earlier release on the host, as recorded when it was committed.
struct Stored {
    dir: PathBuf,
    live: bool,
    manifest: Manifest,
    /// Where its identities are, read only when one of its files is a candidate.
    identities_path: PathBuf,
    identities: OnceCell<Vec<Option<Identity>>>,
}

impl Stored {
    /// What entry `index` of the manifest was at commit; `None` when not recorded
    /// (a release committed by an older agent, or a damaged record).
    fn identity(&self, index: usize) -> Option<Identity> {
        let identities = self.identities.get_or_init(|| {
            fs::read(&self.identities_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Vec<Option<Identity>>>(&bytes).ok())
                .filter(|ids| ids.len() == self.manifest.entries.len())
                .unwrap_or_default()
        });
        identities.get(index).copied().flatten()
    }
}

/// The files of earlier releases by content and mode: which releases hold each, where.
type ByContent<'a> = HashMap<(&'a str, u64, u32), Vec<(&'a Stored, usize)>>;

/// Finds, for each file of `manifest`, an earlier release with the same
/// content and mode that still holds it as committed. The live release is
/// searched first (it is most like the next one), except for files the app
/// may write, which come from a release that is not running when one has them.
pub fn find(store: &Store, manifest: &Manifest) -> Result<Found> {
    let stored = stored(store)?;
    let by_content = by_content(&stored);
    let mut found = Found {
        sources: HashMap::new(),
        changed: Vec::new(),
    };
    for (i, entry) in manifest.entries.iter().enumerate() {
        let Kind::File { size, hash } = &entry.kind else {
            continue;
        };
        if let Some(candidates) = by_content.get(&(hash.as_str(), *size, entry.mode))
            && let Some(source) = pick(candidates, app_writes(&entry.path), &mut found.changed)
        {
            found.sources.insert(i, source);
        }
    }
    found.changed.sort();
    found.changed.dedup();
    Ok(found)
}

/// The releases on the host with their manifests, live first, then newest first.
fn stored(store: &Store) -> Result<Vec<Stored>> {
    let mut releases = store.releases()?;
    releases.sort_by_key(|r| (r.live, r.created));
    Ok(releases
        .iter()
        .rev()
        .filter_map(|r| {
            let manifest = fs::read(store.manifest_path(&r.release)).ok()?;
            Some(Stored {
                dir: store.release_dir(&r.release),
                live: r.live,
                manifest: serde_json::from_slice(&manifest).ok()?,
                identities_path: store.identities_path(&r.release),
                identities: OnceCell::new(),
            })
        })
        .collect())
}

fn by_content(stored: &[Stored]) -> ByContent<'_> {
    let mut by_content = ByContent::new();
    for release in stored {
        for (index, entry) in release.manifest.entries.iter().enumerate() {
            if let Kind::File { size, hash } = &entry.kind {
                by_content
                    .entry((hash.as_str(), *size, entry.mode))
                    .or_default()
                    .push((release, index));
            }
        }
    }
    by_content
}

/// The first of `candidates` still as committed (one not running first when
/// the file is to be copied); those found changed are added to `changed`.
fn pick(candidates: &[(&Stored, usize)], copy: bool, changed: &mut Vec<PathBuf>) -> Option<Source> {
    let mut ordered: Vec<&(&Stored, usize)> = candidates.iter().collect();
    if copy {
        ordered.sort_by_key(|(release, _)| release.live);
    }
    for &&(release, index) in &ordered {
        let Some(recorded) = release.identity(index) else {
            continue;
        };
        let path = &release.manifest.entries[index].path;
        let on_disk = release.dir.join(path);
        if Identity::of(&on_disk) == Some(recorded) {
            return Some(Source {
                path: on_disk,
                identity: recorded,
                copy,
            });
        }
        if !app_writes(path) {
            changed.push(on_disk);
        }
    }
    None
}

/// The note for files of earlier releases that changed on the server; `None` when none did.
pub fn changed_note(changed: &[PathBuf]) -> Option<String> {
    let first = changed.first()?.display();
    Some(match changed.len() {
        1 => format!(
            "1 file of an earlier release changed on the server after it was deployed, so it is not reused: `{first}`; files the app writes at runtime belong in `shared`"
        ),
        n => format!(
            "{n} files of earlier releases changed on the server after they were deployed, so they are not reused (first: `{first}`); files the app writes at runtime belong in `shared`"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Entry;
    use sha2::{Digest, Sha256};

    const PAGE: &str = ".next/server/app/isr.html";

    /// A manifest of `files`, with their parent directories.
    fn manifest(files: &[(&str, &[u8])]) -> Manifest {
        let mut entries: Vec<Entry> = [".next", ".next/server", ".next/server/app"]
            .iter()
            .map(|dir| Entry {
                path: (*dir).into(),
                mode: 0o755,
                kind: Kind::Dir,
            })
            .collect();
        entries.extend(files.iter().map(|(path, content)| Entry {
            path: (*path).into(),
            mode: 0o644,
            kind: Kind::File {
                size: content.len() as u64,
                hash: crate::manifest::content_hash(&Sha256::digest(content)),
            },
        }));
        Manifest { entries }
    }

    /// Commits `release` holding `files` and makes it live.
    fn commit(store: &Store, release: &str, files: &[(&str, &[u8])]) {
        let staging = store.staging_dir(release);
        for (path, content) in files {
            let file = staging.join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, content).unwrap();
            // As a received file: the build's time, not now.
            let built = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
            let file = fs::File::options().write(true).open(&file).unwrap();
            file.set_modified(built).unwrap();
        }
        store
            .commit_staging(&staging, release, &manifest(files), ".")
            .unwrap();
        store.switch(release).unwrap();
    }

    #[test]
    fn what_the_app_writes_comes_from_a_release_not_running_and_what_changed_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_str().unwrap()).unwrap();
        store.create_layout().unwrap();
        let files: &[(&str, &[u8])] = &[(PAGE, b"<html>built</html>"), ("server.js", b"x")];
        commit(&store, "r1", files);
        commit(&store, "r2", files);
        let found = find(&store, &manifest(files)).unwrap();
        let source = |i: usize| {
            let source = &found.sources[&(i + 3)];
            (
                source.path.strip_prefix(dir.path()).unwrap().to_owned(),
                source.copy,
            )
        };
        assert_eq!(source(0), (PathBuf::from("releases/r1").join(PAGE), true));
        assert_eq!(source(1), (PathBuf::from("releases/r2/server.js"), false));
        assert!(found.changed.is_empty());

        // Same size, new content, in place: the live release's copy is not reused.
        fs::write(dir.path().join("releases/r2/server.js"), b"y").unwrap();
        let found = find(&store, &manifest(files)).unwrap();
        let reused = &found.sources[&4].path;
        assert_eq!(reused, &dir.path().join("releases/r1/server.js"));
        assert_eq!(found.changed, [dir.path().join("releases/r2/server.js")]);
    }

    #[test]
    fn next_prerendered_pages_and_cache_are_what_the_app_writes() {
        for path in [
            ".next/server/app/isr.html",
            ".next/server/app/blog/post.rsc",
            ".next/server/app/index.meta",
            ".next/server/app/feed.xml.body",
            ".next/server/pages/about.json",
            ".next/cache/fetch-cache/0a1b",
            "apps/web/.next/server/app/isr.html",
            "apps/web/.next/cache/images/x.webp",
        ] {
            assert!(app_writes(path), "{path}");
        }
        for path in [
            ".next/server/app/page.js",
            ".next/server/pages-manifest.json",
            ".next/static/chunks/main.js",
            "public/index.html",
            "node_modules/x/.next/server/app.html",
            "x.next/cache/y",
            "server.js",
        ] {
            assert!(!app_writes(path), "{path}");
        }
    }
}
