//! Next.js's runtime caches, carried from the live release into a new one so
//! that a deploy does not throw away work the server already did.
//!
//! Kept, for a Next.js release (one that ships `<server dir>/.next/BUILD_ID`):
//! - `.next/cache/images`: the image optimizer's output. Next.js (14.2 to 16,
//!   `server/image-optimizer.ts`, `writeToCacheDir`) writes an entry as
//!   `images/<key>/<maxAge>.<expireAt>.<etag>[.<upstreamEtag>].<ext>` after
//!   removing the entry's directory: always a new file, never in place. The key
//!   hashes the URL, width, quality and format, not the source image, so the
//!   cache is not kept when a file under `public/` changed or went away.
//! - `.next/cache/fetch-cache`: `fetch` data and `unstable_cache` entries, which
//!   Next.js puts there "so it can be persisted across deploys"
//!   (`incremental-cache/file-system-cache.ts`). It rewrites them in place.
//!
//! Never kept: the prerendered pages under `.next/server/` (they belong to their
//! build) and the rest of `.next/cache`. Files are copied, never linked: each
//! release owns its caches, even while two run at once (blue-green).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use walkdir::WalkDir;

use super::reuse::Identity;
use super::store::Store;
use crate::manifest::{Kind, Manifest};
use crate::protocol::DeployRequest;

/// The caches kept, under the app's `.next/`.
const KEPT: [&str; 2] = ["cache/images", "cache/fetch-cache"];

/// A file modified this recently may still be being written by the live app.
const SETTLING: Duration = Duration::from_secs(2);

/// What was copied.
#[derive(Default)]
struct Tally {
    files: u64,
    bytes: u64,
}

/// Copies the kept caches of the live release into the new release in
/// `staging`. Best effort: a cache that cannot be copied is left out and the
/// new release starts without it. Returns what happened, for the user (`None`
/// when there was nothing to keep).
pub fn keep(store: &Store, request: &DeployRequest, staging: &Path) -> Option<String> {
    let live = store.live()?;
    let next = next_dir(&request.manifest, &request.server_dir)?;
    let from = store.app_dir(&live).join(".next");
    let into = staging.join(next);
    if !is_real_dir(&from.join("cache"))
        || (exists(&into.join("cache")) && !is_real_dir(&into.join("cache")))
    {
        // No cache yet, or `.next/cache` is kept in `shared`.
        return None;
    }
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut notes = Vec::new();
    for cache in KEPT {
        let (source, target) = (from.join(cache), into.join(cache));
        if !is_real_dir(&source) || exists(&target) {
            // Nothing to keep, or the build ships it, or it is kept in `shared`.
            continue;
        }
        if cache == "cache/images"
            && let Some(reason) = public_changed(store, &live, request)
        {
            notes.push(format!("not .next/cache/images: {reason}"));
            continue;
        }
        let result = plan(&source)
            .and_then(|files| fits(store, &files).map(|()| files))
            .and_then(|files| copy(&source, &target, &files, &mut tally));
        if let Err(err) = result {
            let _ = fs::remove_dir_all(&target);
            notes.push(format!("not .next/{cache}: {err}"));
        }
    }
    if tally.files == 0 && notes.is_empty() {
        return None;
    }
    let mut message = format!(
        "kept the Next.js caches of `{live}`: {} file{}, {:.1} MB copied in {:.1} s",
        tally.files,
        if tally.files == 1 { "" } else { "s" },
        tally.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    for note in notes {
        message.push_str("; ");
        message.push_str(&note);
    }
    Some(message)
}

/// Where the new release's `.next` is, relative to the release, when it is a
/// Next.js release.
fn next_dir(manifest: &Manifest, server_dir: &str) -> Option<PathBuf> {
    let next = match server_dir {
        "." | "" => ".next".to_owned(),
        dir => format!("{}/.next", dir.trim_end_matches('/')),
    };
    manifest
        .ships(&format!("{next}/BUILD_ID"))
        .then(|| PathBuf::from(next))
}

/// Why the live release's optimized images may not match the new release's
/// `public/`: a file there changed or went away, or the live release's
/// manifest cannot be read. `None` when they match.
fn public_changed(store: &Store, live: &str, request: &DeployRequest) -> Option<String> {
    let bytes = fs::read(store.manifest_path(live)).ok();
    let Some(previous) = bytes.and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()) else {
        return Some(format!(
            "the manifest of `{live}` cannot be read, so its public/ files cannot be compared"
        ));
    };
    let old_public = public_of(&store.app_dir(live), &store.release_dir(live));
    let new_public = public_of(&PathBuf::from(&request.server_dir), Path::new("."));
    changed_file(&previous, &old_public, &request.manifest, &new_public)
        .map(|path| format!("`{path}` changed, and optimized images are cached by URL"))
}

/// The first file under `old_public` in `old` that `new` does not ship with
/// the same content under `new_public`, as `public/<path>`.
fn changed_file(
    old: &Manifest,
    old_public: &str,
    new: &Manifest,
    new_public: &str,
) -> Option<String> {
    let now = new.by_path();
    old.entries.iter().find_map(|entry| {
        let Kind::File { hash, .. } = &entry.kind else {
            return None;
        };
        let rel = entry.path.strip_prefix(old_public)?.strip_prefix('/')?;
        let same = now
            .get(format!("{new_public}/{rel}").as_str())
            .is_some_and(|new| matches!(&new.kind, Kind::File { hash: h, .. } if h == hash));
        (!same).then(|| format!("public/{rel}"))
    })
}

/// The path of `public` beside `app_dir`'s `server.js`, relative to `release_dir`.
fn public_of(app_dir: &Path, release_dir: &Path) -> String {
    let dir = app_dir.strip_prefix(release_dir).unwrap_or(app_dir);
    match dir.to_str() {
        Some("" | ".") | None => "public".to_owned(),
        Some(dir) => format!("{}/public", dir.trim_end_matches('/')),
    }
}

/// The regular files under `source` that have settled (relative paths, sizes),
/// skipping links and anything else.
fn plan(source: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let settled = SystemTime::now() - SETTLING;
    let mut files = Vec::new();
    for entry in WalkDir::new(source).follow_links(false) {
        let entry = match entry {
            Ok(entry) => entry,
            // The live app removes an image entry's directory before writing it again.
            Err(err) if err.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound) => {
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.modified().is_ok_and(|m| m > settled) {
            continue;
        }
        if let Ok(rel) = entry.path().strip_prefix(source) {
            files.push((rel.to_path_buf(), meta.len()));
        }
    }
    Ok(files)
}

/// Fails when `files` would not leave the margin a deploy keeps on the disk.
fn fits(store: &Store, files: &[(PathBuf, u64)]) -> io::Result<()> {
    let bytes: u64 = files.iter().map(|(_, size)| size).sum();
    let free = store.free_bytes();
    if free < bytes + bytes / 10 + (16 << 20) {
        return Err(io::Error::other(format!(
            "{} MB would not fit in the {} MB free",
            bytes >> 20,
            free >> 20
        )));
    }
    Ok(())
}

/// Copies `files` from `source` to `target`; a file the live app changed or
/// removed meanwhile is left out.
fn copy(
    source: &Path,
    target: &Path,
    files: &[(PathBuf, u64)],
    tally: &mut Tally,
) -> io::Result<()> {
    fs::create_dir_all(target)?;
    for (rel, _) in files {
        let (from, to) = (source.join(rel), target.join(rel));
        let Some(before) = Identity::of(&from) else {
            continue;
        };
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        let bytes = match copy_file(&from, &to) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io::Error::other(format!("copy {}: {err}", from.display()))),
        };
        if Identity::of(&from) != Some(before) {
            fs::remove_file(&to)?;
            continue;
        }
        tally.files += 1;
        tally.bytes += bytes;
    }
    Ok(())
}

/// Copies `from` to `to` with its modification time: Next.js takes a `fetch`
/// cache entry's age from it.
fn copy_file(from: &Path, to: &Path) -> io::Result<u64> {
    let bytes = fs::copy(from, to)?;
    let modified = fs::metadata(from)?.modified()?;
    fs::File::options()
        .write(true)
        .open(to)?
        .set_times(fs::FileTimes::new().set_modified(modified))?;
    Ok(bytes)
}

/// Whether `path` is a directory itself, not a link to one.
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Whether anything (a link included) is at `path`.
fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Entry;

    fn manifest(files: &[(&str, &str)]) -> Manifest {
        Manifest {
            entries: files
                .iter()
                .map(|(path, hash)| Entry {
                    path: (*path).to_owned(),
                    mode: 0o644,
                    kind: Kind::File {
                        size: 1,
                        hash: (*hash).to_owned(),
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn a_next_release_is_one_that_ships_its_build_id_beside_server_js() {
        let top = manifest(&[(".next/BUILD_ID", "1")]);
        let monorepo = manifest(&[("apps/web/.next/BUILD_ID", "1")]);
        assert_eq!(next_dir(&top, "."), Some(PathBuf::from(".next")));
        assert_eq!(
            next_dir(&monorepo, "apps/web"),
            Some(PathBuf::from("apps/web/.next"))
        );
        assert_eq!(next_dir(&monorepo, "."), None);
        assert_eq!(next_dir(&manifest(&[("server.js", "1")]), "."), None);
    }

    #[test]
    fn public_is_beside_server_js() {
        assert_eq!(
            public_of(Path::new("/srv/releases/a"), Path::new("/srv/releases/a")),
            "public"
        );
        assert_eq!(
            public_of(
                Path::new("/srv/releases/a/apps/web"),
                Path::new("/srv/releases/a")
            ),
            "apps/web/public"
        );
        assert_eq!(public_of(Path::new("."), Path::new(".")), "public");
        assert_eq!(
            public_of(Path::new("apps/web"), Path::new(".")),
            "apps/web/public"
        );
    }

    #[test]
    fn a_public_file_changed_or_gone_is_named_and_new_ones_do_not_count() {
        let old = manifest(&[
            ("public/a.png", "1"),
            ("public/b.png", "2"),
            ("server.js", "3"),
        ]);
        let same = manifest(&[
            ("public/a.png", "1"),
            ("public/b.png", "2"),
            ("public/new.png", "4"),
        ]);
        let changed = manifest(&[("public/a.png", "1"), ("public/b.png", "9")]);
        let gone = manifest(&[("public/b.png", "2")]);
        let moved = manifest(&[
            ("apps/web/public/a.png", "1"),
            ("apps/web/public/b.png", "2"),
        ]);
        assert_eq!(changed_file(&old, "public", &same, "public"), None);
        assert_eq!(
            changed_file(&old, "public", &changed, "public").as_deref(),
            Some("public/b.png")
        );
        assert_eq!(
            changed_file(&old, "public", &gone, "public").as_deref(),
            Some("public/a.png")
        );
        assert_eq!(
            changed_file(&old, "public", &moved, "apps/web/public"),
            None
        );
    }
}
