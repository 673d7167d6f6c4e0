//! Finding Node and PM2 from a non-interactive SSH shell, where nvm, volta and
//! friends have not set `PATH` — the most common failure of SSH deploy actions.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::protocol::{Failure, FailureKind};

/// Where Node and PM2 live on this server.
#[derive(Clone, Debug)]
pub struct NodeTools {
    /// The directory holding `node`.
    pub node_dir: PathBuf,
    /// The `pm2` executable.
    pub pm2: PathBuf,
}

/// Directories searched, in order: `PATH`, then the usual install places.
fn candidate_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend(nvm_bins(&nvm_dir().join("versions/node")));
    let volta = std::env::var_os("VOLTA_HOME").map_or_else(|| home.join(".volta"), PathBuf::from);
    dirs.push(volta.join("bin"));
    for dir in [
        ".local/share/fnm/aliases/default/bin",
        ".npm-global/bin",
        ".local/bin",
        ".asdf/shims",
        ".bun/bin",
    ] {
        dirs.push(home.join(dir));
    }
    for dir in [
        "/usr/local/bin",
        "/usr/bin",
        "/bin",
        "/opt/homebrew/bin",
        "/snap/bin",
    ] {
        dirs.push(PathBuf::from(dir));
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|dir| seen.insert(dir.clone()));
    dirs
}

/// nvm's directory (`$NVM_DIR`, else `~/.nvm`).
fn nvm_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    std::env::var_os("NVM_DIR").map_or_else(|| home.join(".nvm"), PathBuf::from)
}

/// nvm's `versions/node/v*/bin`, newest version first.
fn nvm_bins(versions: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(versions)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_owned();
                    let version = name
                        .trim_start_matches('v')
                        .split('.')
                        .map(|n| n.parse().unwrap_or(0))
                        .collect();
                    Some((version, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the directory holding `node`, or says where it looked.
pub fn find_node() -> Result<PathBuf> {
    let dirs = candidate_dirs();
    dirs.iter()
        .find(|d| is_executable(&d.join("node")))
        .cloned()
        .ok_or_else(|| not_found("node", &dirs))
}

/// Finds `node` and `pm2`, or says where it looked.
pub fn find() -> Result<NodeTools> {
    let node_dir = find_node()?;
    let dirs = candidate_dirs();
    std::iter::once(&node_dir)
        .chain(&dirs)
        .map(|d| d.join("pm2"))
        .find(|p| is_executable(p))
        .map(|pm2| NodeTools { node_dir, pm2 })
        .ok_or_else(|| not_found("pm2", &dirs))
}

/// `missing` is in none of `dirs`: the error lists them, with how to install it.
fn not_found(missing: &str, dirs: &[PathBuf]) -> Error {
    let mut looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    looked.push(format!("{}/versions/node/*/bin", nvm_dir().display()));
    Error::Agent(Failure::new(
        FailureKind::Failed,
        format!(
            "`{missing}` not found on the server; looked in: {}",
            looked.join(", ")
        ),
        Some(if missing == "node" {
            "install Node.js for the deploy user (e.g. nvm, or your distribution's package), or use `process-manager: none`"
        } else {
            "install PM2 for the deploy user: `npm install -g pm2` (and `pm2 startup` once, so it survives reboots)"
        }),
    ))
}
