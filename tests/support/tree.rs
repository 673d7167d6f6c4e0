//! Snapshots of directory trees (kind, permission bits, content hash, symlink
//! target per path) and assertions comparing two trees with a readable diff.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use walkdir::WalkDir;

/// Diff entries shown; with the 3 header lines and the "... more" line the
/// message stays within 40 lines.
const MAX_DIFF_LINES: usize = 36;

/// Describes a directory tree: every path (relative, `/`-separated, the root
/// itself excluded), kind (file/dir/symlink), permission bits
/// (`mode & 0o777`), file sha256, symlink target (readlink, not followed).
/// The root is canonicalized first (so it may be a symlink, e.g.
/// `<remote>/current`), but symlinks inside it are NOT followed.
///
/// Values look like `"file 644 <sha256 hex>"`, `"dir 755"`, `"link -> target"`
/// (or `"other"` for sockets, fifos and devices).
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let root = root
        .canonicalize()
        .unwrap_or_else(|e| panic!("snapshot: canonicalize {}: {e}", root.display()));
    let mut out = BTreeMap::new();
    for entry in WalkDir::new(&root)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.unwrap_or_else(|e| panic!("snapshot: walk {}: {e}", root.display()));
        let path = entry.path();
        let rel = path
            .strip_prefix(&root)
            .expect("walkdir yields paths under its root")
            .to_string_lossy()
            .into_owned();
        let meta = path
            .symlink_metadata()
            .unwrap_or_else(|e| panic!("snapshot: lstat {}: {e}", path.display()));
        let mode = meta.permissions().mode() & 0o777;
        let ft = meta.file_type();
        let desc = if ft.is_symlink() {
            let target = fs::read_link(path)
                .unwrap_or_else(|e| panic!("snapshot: readlink {}: {e}", path.display()));
            format!("link -> {}", target.to_string_lossy())
        } else if ft.is_dir() {
            format!("dir {mode:03o}")
        } else if ft.is_file() {
            let bytes =
                fs::read(path).unwrap_or_else(|e| panic!("snapshot: read {}: {e}", path.display()));
            let hash: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("file {mode:03o} {hash}")
        } else {
            "other".to_string()
        };
        out.insert(rel, desc);
    }
    out
}

/// Panics with a readable diff (only differing paths, at most 40 lines) when
/// the two trees differ.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    assert_same_tree_except(expected, actual, &[]);
}

/// Same as [`assert_same_tree`] but ignores the given relative paths (and
/// everything below them) in `actual`, e.g. `.env` links added by the deploy
/// tool.
pub fn assert_same_tree_except(expected: &Path, actual: &Path, ignore: &[&str]) {
    let want = snapshot(expected);
    let mut got = snapshot(actual);
    got.retain(|path, _| {
        !ignore.iter().any(|ig| {
            let ig = ig.trim_matches('/');
            path == ig
                || path
                    .strip_prefix(ig)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    });

    let paths: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let mut lines = Vec::new();
    for path in paths {
        match (want.get(path), got.get(path)) {
            (Some(w), Some(g)) if w == g => {}
            (Some(w), Some(g)) => lines.push(format!("  ~ {path}: expected `{w}`, got `{g}`")),
            (Some(w), None) => lines.push(format!("  - {path}: missing (expected `{w}`)")),
            (None, Some(g)) => lines.push(format!("  + {path}: unexpected `{g}`")),
            (None, None) => unreachable!("path comes from one of the maps"),
        }
    }
    if lines.is_empty() {
        return;
    }
    let total = lines.len();
    let mut msg = format!(
        "trees differ in {total} path(s)\n  expected: {}\n  actual:   {}{}\n",
        expected.display(),
        actual.display(),
        if ignore.is_empty() {
            String::new()
        } else {
            format!(" (ignoring {ignore:?})")
        }
    );
    for line in lines.iter().take(MAX_DIFF_LINES) {
        msg.push_str(line);
        msg.push('\n');
    }
    if total > MAX_DIFF_LINES {
        msg.push_str(&format!("  ... and {} more\n", total - MAX_DIFF_LINES));
    }
    panic!("{msg}");
}

/// Copies the files of `from` into `to` (created), following the tree.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), dest).unwrap();
        }
    }
}
