//! The manifest: every entry of a release (path, kind, mode, size, content hash).
//!
//! The client builds it from the assembled release; the agent validates it before
//! accepting a single byte and checks every unpacked file against it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The most bytes a valid manifest's files add up to (4 EiB): far above any
/// disk, and low enough that sums over them (with margins added) cannot overflow.
pub const MAX_TOTAL_BYTES: u64 = 1 << 62;

/// The runtime env file: `shared/.env` on the server, linked at the top of each
/// release unless the build ships its own there. A shipped one stays as built:
/// `dropship run-app` puts the server's `shared/.env` into the app's environment,
/// and env loaders (Next.js, dotenv, `node --env-file`) never override a variable
/// already set, so the `env` values win over the shipped ones key by key.
pub const RUNTIME_ENV: &str = ".env";

/// All entries of one release, sorted by path (parents before children).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The entries, sorted by path.
    pub entries: Vec<Entry>,
}

/// One file, directory or symbolic link of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path inside the release, `/`-separated, normalised.
    pub path: String,
    /// Permission bits (`mode & 0o777`); ignored for symlinks.
    pub mode: u32,
    /// What the entry is.
    #[serde(flatten)]
    pub kind: Kind,
}

impl Entry {
    /// Bytes of content: a file's size, zero for anything else.
    pub fn size(&self) -> u64 {
        match self.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        }
    }
}

/// The kind of a manifest entry, with what identifies its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// The content hash: SHA-256 truncated to 128 bits, lower-case hex (see [`content_hash`]).
        hash: String,
    },
    /// A directory.
    Dir,
    /// A symbolic link, kept as a link.
    Symlink {
        /// The link's target, exactly as `readlink` gives it.
        target: String,
    },
}

impl Manifest {
    /// Number of regular files.
    pub fn file_count(&self) -> u64 {
        self.files().count() as u64
    }

    /// Sum of the sizes of all regular files.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|(_, size, _)| size).sum()
    }

    fn files(&self) -> impl Iterator<Item = (&str, u64, &str)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            Kind::File { size, hash } => Some((e.path.as_str(), *size, hash.as_str())),
            _ => None,
        })
    }

    /// Whether the release ships an entry at `path`.
    pub fn ships(&self, path: &str) -> bool {
        self.entries.iter().any(|e| e.path == path)
    }

    /// The `shared` paths (as given, e.g. `uploads/`) that the release also
    /// ships and that the link to `shared/` replaces on the server: all of
    /// them except [`RUNTIME_ENV`], which stays as shipped.
    pub fn replaced_by_shared<'a>(&self, shared: &'a [String]) -> Vec<&'a str> {
        shared
            .iter()
            .map(String::as_str)
            .filter(|item| {
                let path = item.trim_end_matches('/');
                path != RUNTIME_ENV && self.ships(path)
            })
            .collect()
    }

    /// The release as it is on the server once its `shared` links are in: what
    /// [`Manifest::replaced_by_shared`] names is gone, with everything under it
    /// (the links themselves are not listed, like every other `shared` link).
    pub fn with_shared(&self, shared: &[String]) -> Manifest {
        let replaced: Vec<&str> = self
            .replaced_by_shared(shared)
            .into_iter()
            .map(|item| item.trim_end_matches('/'))
            .collect();
        Manifest {
            entries: self
                .entries
                .iter()
                .filter(|e| !replaced.iter().any(|top| is_at_or_under(&e.path, top)))
                .cloned()
                .collect(),
        }
    }

    /// The entries by path, for look-ups while unpacking.
    pub fn by_path(&self) -> BTreeMap<&str, &Entry> {
        self.entries.iter().map(|e| (e.path.as_str(), e)).collect()
    }

    /// Checks that the manifest describes a tree that stays inside its root:
    /// relative normalised paths, no duplicates, every parent a directory of the
    /// manifest, and symlinks that cannot lead outside the release; and that its
    /// sizes add up to at most [`MAX_TOTAL_BYTES`], so sums over them cannot overflow.
    pub fn validate(&self) -> Result<(), String> {
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut total: u64 = 0;
        for entry in &self.entries {
            check_relative_path(&entry.path)?;
            if !seen.insert(&entry.path) {
                return Err(format!("`{}` appears twice", entry.path));
            }
            if let Some((parent, _)) = entry.path.rsplit_once('/')
                && !dirs.contains(parent)
            {
                return Err(format!(
                    "`{}` comes before its directory `{parent}`, or its parent is not a directory",
                    entry.path
                ));
            }
            match &entry.kind {
                Kind::Dir => {
                    dirs.insert(&entry.path);
                }
                Kind::Symlink { target } => check_symlink_target(&entry.path, target)?,
                Kind::File { hash, size } => {
                    if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!("`{}` has a malformed hash", entry.path));
                    }
                    total = total
                        .checked_add(*size)
                        .filter(|total| *total <= MAX_TOTAL_BYTES)
                        .ok_or_else(|| {
                            format!("the files add up to more than {MAX_TOTAL_BYTES} bytes")
                        })?;
                }
            }
        }
        Ok(())
    }

    /// The first symlink that, followed through the release's own links, does
    /// not reach an entry of the release: `(link, target)`. Such a link would
    /// fail once live (pnpm's `node_modules` reach every package through
    /// links, so a package left out breaks the app).
    pub fn dangling_symlink(&self) -> Option<(&str, &str)> {
        let kinds: HashMap<&str, &Kind> = self
            .entries
            .iter()
            .map(|e| (e.path.as_str(), &e.kind))
            .collect();
        self.entries.iter().find_map(|entry| match &entry.kind {
            Kind::Symlink { target } if !resolves(&kinds, &entry.path) => {
                Some((entry.path.as_str(), target.as_str()))
            }
            _ => None,
        })
    }
}

/// Links followed at most while resolving one path (Linux's limit).
const MAX_LINK_HOPS: usize = 40;

/// Whether the release path `path`, its links followed, names an entry of
/// `kinds` (or the release's top) without leaving the release.
fn resolves(kinds: &HashMap<&str, &Kind>, path: &str) -> bool {
    let mut todo: VecDeque<&str> = path.split('/').collect();
    let mut done: Vec<&str> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        match part {
            "" | "." => continue,
            ".." => {
                if done.pop().is_none() {
                    return false;
                }
                continue;
            }
            name => done.push(name),
        }
        match kinds.get(done.join("/").as_str()) {
            None => return false,
            Some(Kind::Symlink { target }) => {
                hops += 1;
                if hops > MAX_LINK_HOPS || target.starts_with('/') {
                    return false;
                }
                done.pop();
                for part in target.split('/').rev() {
                    todo.push_front(part);
                }
            }
            Some(_) => {}
        }
    }
    true
}

/// Whether the release path `path` is `top` or lies inside it.
pub fn is_at_or_under(path: &str, top: &str) -> bool {
    path.strip_prefix(top)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A path is acceptable when it is relative, `/`-separated, and has no empty, `.` or `..` part.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    let bad = path.is_empty()
        || path.contains('\0')
        || path.starts_with('/')
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        Err(format!(
            "`{}` is not a plain relative path (absolute, empty, or with `.`/`..` parts)",
            path.escape_debug()
        ))
    } else {
        Ok(())
    }
}

/// A symlink target is accepted when it is relative, any `..` parts come first,
/// and it stays inside the release when resolved from the link's directory.
///
/// Allowing `..` only at the start means the walk never climbs back up after
/// passing through another (equally checked) link, so the check is sound even
/// for chains of links.
pub fn check_symlink_target(link: &str, target: &str) -> Result<(), String> {
    let escapes = || {
        Err(format!(
            "symlink `{link}` points outside the release (to `{target}`)"
        ))
    };
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return escapes();
    }
    let mut depth = link.matches('/').count() as i64;
    let mut descended = false;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if descended => return escapes(),
            ".." => depth -= 1,
            _ => {
                descended = true;
                depth += 1;
            }
        }
        if depth < 0 {
            return escapes();
        }
    }
    Ok(())
}

/// The manifest's content hash of a finished SHA-256 digest: its first 128 bits
/// as hex. Half the bytes of the full digest on the wire (the manifest is sent
/// on every deploy, and it dominates a small redeploy), with 2^64 collision
/// resistance — the same strength as rsync's MD5 checksums, from a stronger hash.
pub fn content_hash(digest: &[u8]) -> String {
    hex(&digest[..16.min(digest.len())])
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o644,
            kind,
        }
    }

    #[test]
    fn symlink_targets_that_stay_inside_are_accepted() {
        assert!(check_symlink_target("node_modules/.bin/next", "../next/dist/bin/next").is_ok());
        assert!(
            check_symlink_target("node_modules/react", ".pnpm/react@19/node_modules/react").is_ok()
        );
        assert!(check_symlink_target("a", "b/c").is_ok());
    }

    /// A manifest of directories `dirs`, an empty file `file` and `links` (path, target).
    fn tree(dirs: &[&str], file: &str, links: &[(&str, &str)]) -> Manifest {
        let mut entries: Vec<Entry> = dirs.iter().map(|d| entry(d, Kind::Dir)).collect();
        entries.push(entry(
            file,
            Kind::File {
                size: 0,
                hash: "0".repeat(32),
            },
        ));
        for (path, target) in links {
            let target = (*target).to_owned();
            entries.push(entry(path, Kind::Symlink { target }));
        }
        Manifest { entries }
    }

    #[test]
    fn links_are_followed_through_links_to_an_entry() {
        // pnpm: node_modules/next -> .pnpm/next@16/node_modules/next, whose own
        // dependencies are links beside it.
        let dirs = [
            "node_modules",
            "node_modules/.pnpm",
            "node_modules/.pnpm/next@16",
            "node_modules/.pnpm/next@16/node_modules",
            "node_modules/.pnpm/next@16/node_modules/next",
        ];
        let file = "node_modules/.pnpm/next@16/node_modules/next/index.js";
        let ok = tree(
            &dirs,
            file,
            &[
                ("node_modules/next", ".pnpm/next@16/node_modules/next"),
                ("node_modules/n", "next/index.js"),
                ("top", "."),
            ],
        );
        assert_eq!(ok.dangling_symlink(), None);
        for (link, target) in [
            ("node_modules/react", ".pnpm/react@19/node_modules/react"),
            ("loop", "loop"),
            ("a", "b"),
            ("node_modules/x", "../top/node_modules/../.."),
        ] {
            let mut links = vec![("b", "a"), ("top", ".")];
            links.push((link, target));
            let broken = tree(&dirs, file, &links);
            assert!(broken.dangling_symlink().is_some(), "{link} -> {target}");
        }
    }

    #[test]
    fn symlink_targets_that_escape_are_refused() {
        for (link, target) in [
            ("a", "../x"),
            ("a", "/etc/passwd"),
            ("d/a", "../../x"),
            ("a", "y/.."),
            ("a", "y/../../x"),
            ("a", ""),
        ] {
            assert!(
                check_symlink_target(link, target).is_err(),
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn bad_paths_are_refused() {
        for path in ["", "/abs", "a/../b", "./a", "a//b", "a/", ".."] {
            assert!(check_relative_path(path).is_err(), "{path:?}");
        }
        assert!(check_relative_path(".next/static/x.js").is_ok());
    }

    #[test]
    fn a_file_under_a_symlink_is_refused() {
        let manifest = Manifest {
            entries: vec![
                entry("a", Kind::Symlink { target: "b".into() }),
                entry(
                    "a/x",
                    Kind::File {
                        size: 0,
                        hash: content_hash(&Sha256::digest(b"")),
                    },
                ),
            ],
        };
        assert!(manifest.validate().is_err());
    }

    /// Found with the fuzz harness: sizes that add up past `u64::MAX` made `total_bytes`
    /// panic (debug) or wrap to a small number (release: the agent's free-space check).
    #[test]
    fn sizes_that_add_up_past_the_limit_are_refused() {
        let file = |path: &str, size: u64| {
            entry(
                path,
                Kind::File {
                    size,
                    hash: "0".repeat(32),
                },
            )
        };
        let manifest = Manifest {
            entries: vec![file("a", 1 << 63), file("b", 1 << 63)],
        };
        assert!(manifest.validate().unwrap_err().contains("add up"));
        let manifest = Manifest {
            entries: vec![file("a", MAX_TOTAL_BYTES - 1), file("b", 1)],
        };
        assert!(manifest.validate().is_ok());
        assert_eq!(manifest.total_bytes(), MAX_TOTAL_BYTES);
    }

    /// A shipped `shared` directory goes with all it holds; a shipped `.env` stays.
    #[test]
    fn shared_links_replace_what_the_build_ships_except_the_env_file() {
        let file = |path: &str| {
            entry(
                path,
                Kind::File {
                    size: 0,
                    hash: content_hash(&Sha256::digest(b"")),
                },
            )
        };
        let manifest = Manifest {
            entries: vec![
                file(".env"),
                entry("uploads", Kind::Dir),
                file("uploads/a.png"),
                file("uploads-list.txt"),
            ],
        };
        let shared = [
            ".env".to_owned(),
            "uploads/".to_owned(),
            "cache/".to_owned(),
        ];
        assert_eq!(manifest.replaced_by_shared(&shared), ["uploads/"]);
        let paths: Vec<String> = manifest
            .with_shared(&shared)
            .entries
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, [".env", "uploads-list.txt"]);
    }

    #[test]
    fn duplicates_are_refused() {
        let manifest = Manifest {
            entries: vec![entry("a", Kind::Dir), entry("a", Kind::Dir)],
        };
        assert!(manifest.validate().unwrap_err().contains("twice"));
    }
}
