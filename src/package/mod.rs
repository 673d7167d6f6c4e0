//! Packaging: find what to ship, assemble the release tree in memory (no copies),
//! and describe it in a [`Manifest`].
//!
//! For a Next.js `output: 'standalone'` build the release is the standalone
//! directory with `.next/static` and `public` placed beside its `server.js`,
//! which is what `next start` would otherwise be missing.

mod stream;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::{self, Entry, Kind, Manifest};
pub use stream::{Selection, compress_threads, split, write_archive};

/// The patterns left out when `exclude` is not given: source maps.
pub const DEFAULT_EXCLUDE: &[&str] = &["**/*.map"];

/// What to ship and how to find it.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// The app's directory (`working-directory`).
    pub working_directory: PathBuf,
    /// An explicit directory to ship; `None` means detect a Next.js standalone build.
    pub source: Option<PathBuf>,
    /// Glob patterns (gitignore-like, `*` stays within one directory) left out.
    pub exclude: Vec<String>,
}

/// An assembled release: the manifest, and where each file's bytes come from.
pub struct Release {
    /// Every entry, sorted by path.
    pub manifest: Manifest,
    /// Local source of each manifest entry, by index, with its modification time.
    sources: Vec<(PathBuf, u64)>,
    /// Where the app's `server.js` sits inside the release (`.` at the top).
    pub server_dir: String,
    /// Human description of what was assembled from where.
    pub description: String,
}

impl Release {
    /// The local file the manifest entry `index` comes from.
    pub fn source(&self, index: usize) -> &Path {
        &self.sources[index].0
    }

    /// What the server does with what this release ships under a `shared` path
    /// or as the app's `.env`, for the log and the job summary: keys, never values.
    pub fn shared_notes(&self, shared: &[String], env: Option<&[(String, String)]>) -> Vec<String> {
        let mut notes: Vec<String> = self
            .manifest
            .replaced_by_shared(shared)
            .into_iter()
            .map(|item| format!("shipped `{item}` replaced by the server's `shared/{item}`"))
            .collect();
        notes.extend(self.env_note(env));
        notes
    }

    /// The note on a shipped `.env` beside `server.js`: it stays, and `env`
    /// (the server's `shared/.env`) wins for the keys both set.
    fn env_note(&self, env: Option<&[(String, String)]>) -> Option<String> {
        let path = match self.server_dir.as_str() {
            "." => manifest::RUNTIME_ENV.to_owned(),
            dir => format!("{dir}/{}", manifest::RUNTIME_ENV),
        };
        let index = self
            .manifest
            .entries
            .iter()
            .position(|e| e.path == path && matches!(e.kind, Kind::File { .. }))?;
        let Some(env) = env else {
            return Some(format!(
                "shipped `{path}` kept; the server's `shared/.env` (not changed by this deploy) overrides it for the keys it sets"
            ));
        };
        let text = fs::read_to_string(&self.sources[index].0).unwrap_or_default();
        let shipped = match crate::dotenv::parse(&text) {
            Ok(pairs) => pairs,
            Err(err) => {
                return Some(format!(
                    "shipped `{path}` kept under the `env` values; its keys cannot be listed ({err})"
                ));
            }
        };
        let keys: Vec<&str> = shipped
            .iter()
            .map(|(key, _)| key.as_str())
            .filter(|key| env.iter().any(|(set, _)| set == key))
            .collect();
        (!keys.is_empty()).then(|| {
            format!(
                "shipped `{path}` overridden by `env` for keys: {}",
                keys.join(", ")
            )
        })
    }
}

/// The directories a release is assembled from, and where each goes in it.
struct Layout {
    /// (local directory, place in the release; empty for the top).
    layers: Vec<(PathBuf, String)>,
    server_dir: String,
    description: String,
}

struct Item {
    source: PathBuf,
    metadata: fs::Metadata,
}

/// Finds the directories to ship and assembles the release from them.
pub fn assemble(spec: &SourceSpec) -> Result<Release> {
    let excluded = exclude_set(&spec.exclude)?;
    let layout = match &spec.source {
        Some(source) => {
            let dir = spec.working_directory.join(source);
            if !dir.is_dir() {
                return Err(Error::Source {
                    problem: format!("`source` directory `{}` does not exist", dir.display()),
                    hint: "point `source` at the built output, relative to `working-directory`"
                        .into(),
                });
            }
            Layout {
                description: dir.display().to_string(),
                layers: vec![(dir, String::new())],
                server_dir: ".".to_owned(),
            }
        }
        None => nextjs_layers(&spec.working_directory)?,
    };
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    for (dir, prefix) in &layout.layers {
        add_parents(&mut items, prefix, dir)?;
        collect(dir, prefix, &excluded, &mut items)?;
    }
    build_release(items, layout.server_dir, layout.description)
}

fn exclude_set(patterns: &[String]) -> Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let glob = GlobBuilder::new(pattern.trim_start_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|err| {
                Error::input(
                    "exclude",
                    format!("pattern `{pattern}`: {err}"),
                    "use glob patterns such as `**/*.map` or `cache/**`, one a line",
                )
            })?;
        set.add(glob);
    }
    set.build()
        .map_err(|err| Error::input("exclude", err.to_string(), "check the patterns"))
}

/// The layers of a Next.js standalone release: (directory, place in the release).
fn nextjs_layers(app: &Path) -> Result<Layout> {
    let standalone = app.join(".next/standalone");
    if !standalone.is_dir() {
        return Err(Error::Source {
            problem: format!(
                "no Next.js standalone build in `{}` (looked for `.next/standalone`)",
                app.display()
            ),
            hint: "build first with `output: 'standalone'` in next.config.js (or set `build`), or set `source` to the directory to ship".into(),
        });
    }
    let server_dir = find_server_dir(&standalone)?;
    let under = |rel: &str| {
        if server_dir == "." {
            rel.to_owned()
        } else {
            format!("{server_dir}/{rel}")
        }
    };
    let mut layers = vec![(standalone, String::new())];
    let mut parts = vec![".next/standalone".to_owned()];
    for (local, placed) in [
        (".next/static", under(".next/static")),
        ("public", under("public")),
    ] {
        if app.join(local).is_dir() {
            layers.push((app.join(local), placed.clone()));
            parts.push(format!("{local} → {placed}"));
        }
    }
    Ok(Layout {
        layers,
        server_dir,
        description: format!("Next.js standalone build ({})", parts.join(", ")),
    })
}

/// Where `server.js` is: at the top, or under the app's path in a monorepo.
fn find_server_dir(standalone: &Path) -> Result<String> {
    if standalone.join("server.js").is_file() {
        return Ok(".".into());
    }
    // No `min_depth`: walkdir hides the entries above it from `filter_entry`,
    // so the top `node_modules` (react-dom and next ship server.js files) would
    // not be pruned. The top server.js was looked for above.
    let found: Vec<String> = walkdir::WalkDir::new(standalone)
        .max_depth(6)
        .into_iter()
        .filter_entry(|e| e.file_name() != "node_modules" && e.file_name() != ".next")
        .filter_map(std::result::Result::ok)
        .filter(|e| e.depth() >= 2 && e.file_name() == "server.js" && e.file_type().is_file())
        .filter_map(|e| {
            e.path()
                .parent()?
                .strip_prefix(standalone)
                .ok()?
                .to_str()
                .map(str::to_owned)
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Source {
            problem: format!("`{}` has no server.js", standalone.display()),
            hint: "run `next build` again with `output: 'standalone'`, or set `source`".into(),
        }),
        many => Err(Error::Source {
            problem: format!(
                "`{}` has several server.js files: {}",
                standalone.display(),
                many.join(", ")
            ),
            hint: "set `source` to the directory to ship".into(),
        }),
    }
}

fn add_parents(items: &mut BTreeMap<String, Item>, prefix: &str, dir: &Path) -> Result<()> {
    let mut path = String::new();
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
        if !items.contains_key(&path) {
            let metadata = fs::metadata(dir).map_err(|err| Error::local("read", dir, err))?;
            items.insert(
                path.clone(),
                Item {
                    source: dir.to_owned(),
                    metadata,
                },
            );
        }
    }
    Ok(())
}

fn collect(
    dir: &Path,
    prefix: &str,
    excluded: &GlobSet,
    items: &mut BTreeMap<String, Item>,
) -> Result<()> {
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .into_iter();
    let mut walker = walker.filter_entry(|e| {
        e.path()
            .strip_prefix(dir)
            .ok()
            .and_then(Path::to_str)
            .is_none_or(|rel| !excluded.is_match(join(prefix, rel)))
    });
    while let Some(entry) = walker.next() {
        let entry = entry.map_err(|err| {
            let path = err.path().unwrap_or(dir).to_owned();
            Error::local("read", path, err.into())
        })?;
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let Some(rel) = rel.to_str() else {
            return Err(Error::Source {
                problem: format!("`{}` has a name that is not UTF-8", entry.path().display()),
                hint: "rename it, or add it to `exclude`".into(),
            });
        };
        let metadata = entry
            .metadata()
            .map_err(|err| Error::local("read", entry.path(), err.into()))?;
        let path = join(prefix, rel);
        if metadata.is_dir() && items.get(&path).is_some_and(|i| !i.metadata.is_dir()) {
            walker.skip_current_dir();
        }
        items.insert(
            path,
            Item {
                source: entry.into_path(),
                metadata,
            },
        );
    }
    Ok(())
}

fn join(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_owned()
    } else {
        format!("{prefix}/{rel}")
    }
}

fn build_release(
    items: BTreeMap<String, Item>,
    server_dir: String,
    description: String,
) -> Result<Release> {
    let mut entries = Vec::with_capacity(items.len());
    let mut sources = Vec::with_capacity(items.len());
    let mut files = Vec::new();
    for (path, item) in items {
        let file_type = item.metadata.file_type();
        let kind = if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_symlink() {
            let target = fs::read_link(&item.source)
                .map_err(|err| Error::local("read the link", &item.source, err))?;
            let target = target.to_str().unwrap_or_default().to_owned();
            manifest::check_symlink_target(&path, &target).map_err(|_| Error::EscapingSymlink {
                path: path.clone(),
                target: target.clone(),
            })?;
            Kind::Symlink { target }
        } else if file_type.is_file() {
            files.push(entries.len());
            Kind::File {
                size: item.metadata.len(),
                hash: String::new(),
            }
        } else {
            return Err(Error::Source {
                problem: format!(
                    "`{path}` is not a file, directory or symlink (a socket, fifo or device)"
                ),
                hint: "add it to `exclude`".into(),
            });
        };
        let mode = item.metadata.permissions().mode() & 0o777;
        let mtime = u64::try_from(item.metadata.mtime()).unwrap_or(0);
        entries.push(Entry { path, mode, kind });
        sources.push((item.source, mtime));
    }
    let paths: Vec<&Path> = files.iter().map(|&i| sources[i].0.as_path()).collect();
    let hashes = hash_files(&paths)?;
    for (i, hashed) in files.into_iter().zip(hashes) {
        if let Kind::File { hash, .. } = &mut entries[i].kind {
            *hash = hashed;
        }
    }
    let manifest = Manifest { entries };
    manifest.validate().map_err(|problem| Error::Source {
        problem,
        hint: "check the layout of the build output".into(),
    })?;
    if let Some((path, target)) = manifest.dangling_symlink() {
        return Err(Error::DanglingSymlink {
            path: path.to_owned(),
            target: target.to_owned(),
        });
    }
    Ok(Release {
        manifest,
        sources,
        server_dir,
        description,
    })
}

/// The content hashes of `paths`, in order, computed on every core: a release
/// is mostly many small files, and hashing them is most of packaging.
fn hash_files(paths: &[&Path]) -> Result<Vec<String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let mut hashes = vec![String::new(); paths.len()];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|first| {
                scope.spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mine = (first..paths.len()).step_by(threads);
                    mine.map(|i| Ok((i, hash_file(paths[i], &mut buf)?)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        for worker in workers {
            let done = worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            for (i, hash) in done {
                hashes[i] = hash;
            }
        }
        Ok(hashes)
    })
}

fn hash_file(path: &Path, buf: &mut [u8]) -> Result<String> {
    let mut file = File::open(path).map_err(|err| Error::local("open", path, err))?;
    let mut hasher = Sha256::new();
    loop {
        let n = file
            .read(buf)
            .map_err(|err| Error::local("read", path, err))?;
        if n == 0 {
            return Ok(manifest::content_hash(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_exclude_matches_source_maps_at_any_depth() {
        let set = exclude_set(
            &DEFAULT_EXCLUDE
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(set.is_match("server.js.map"));
        assert!(set.is_match(".next/static/chunks/main.js.map"));
        assert!(!set.is_match(".next/static/chunks/main.js"));
    }

    /// A release of `server.js` and a shipped `.env` holding `env_text`, in `dir`.
    fn release_shipping_env(dir: &Path, env_text: &str) -> Release {
        fs::create_dir_all(dir.join("app/uploads")).unwrap();
        fs::write(dir.join("app/server.js"), "").unwrap();
        fs::write(dir.join("app/.env"), env_text).unwrap();
        assemble(&SourceSpec {
            working_directory: dir.to_owned(),
            source: Some("app".into()),
            exclude: Vec::new(),
        })
        .unwrap()
    }

    /// What the log and the job summary say about shipped `shared` paths: keys, never values.
    #[test]
    fn the_notes_name_overridden_keys_and_replaced_paths() {
        let dir = tempfile::tempdir().unwrap();
        let release = release_shipping_env(dir.path(), "A=1\nB=2\nC=3\n");
        let shared = [".env".to_owned(), "uploads/".to_owned()];
        let env = [
            ("C".to_owned(), "x".to_owned()),
            ("A".to_owned(), "y".to_owned()),
        ];
        assert_eq!(
            release.shared_notes(&shared, Some(&env)),
            [
                "shipped `uploads/` replaced by the server's `shared/uploads/`",
                "shipped `.env` overridden by `env` for keys: A, C",
            ]
        );
        assert_eq!(
            release.shared_notes(&[], None),
            [
                "shipped `.env` kept; the server's `shared/.env` (not changed by this deploy) overrides it for the keys it sets"
            ]
        );
        let other = [("D".to_owned(), "x".to_owned())];
        assert!(release.shared_notes(&[], Some(&other)).is_empty());
        let broken = release_shipping_env(dir.path(), "A=\"s3cret\n");
        assert_eq!(
            broken.shared_notes(&[], Some(&env)),
            [
                "shipped `.env` kept under the `env` values; its keys cannot be listed (line 1: unterminated double quote starting here)"
            ]
        );
    }

    #[test]
    fn a_bad_pattern_names_the_input() {
        let err = exclude_set(&["a[".to_owned()]).err().unwrap();
        assert!(err.to_string().starts_with("input `exclude`"), "{err}");
    }
}
