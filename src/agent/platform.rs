//! What this server is, for the client's preflight: CPU, C library and the
//! version of the Node the app runs with. The agent only reports; the client
//! judges the release against it (it has the files).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::protocol::{Libc, NodeRuntime, Platform};

use super::tools;

/// Looks at this server. `node --version` takes a while (tens of ms): call it
/// off the critical path (see [`Detecting`]).
pub fn detect() -> Platform {
    Platform {
        arch: arch(),
        libc: libc(),
        node: node(),
    }
}

/// A detection running in the background while the agent does other work.
pub struct Detecting(std::thread::JoinHandle<Platform>);

impl Detecting {
    /// Starts [`detect`] on another thread.
    pub fn start() -> Detecting {
        Detecting(std::thread::spawn(detect))
    }

    /// The result; detected here again should the thread have died.
    pub fn finish(self) -> Platform {
        self.0.join().unwrap_or_else(|_| detect())
    }
}

/// The machine field of `uname(2)`, like `uname -m`.
fn arch() -> String {
    // SAFETY: `utsname` is plain old data; uname fills it with NUL-terminated strings.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut names) } != 0 {
        return std::env::consts::ARCH.into();
    }
    let machine: Vec<u8> = names
        .machine
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&machine).into_owned()
}

/// The server's C library. A static agent carries its own glibc, so the
/// server's is asked of `getconf` (part of glibc), and musl is known by its loader.
fn libc() -> Libc {
    let glibc = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| glibc_version(&String::from_utf8_lossy(&out.stdout)));
    if let Some(version) = glibc {
        return Libc::Glibc { version };
    }
    let musl_loader = std::fs::read_dir("/lib").ok().is_some_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("ld-musl-") && name.ends_with(".so.1")
        })
    });
    if musl_loader {
        Libc::Musl
    } else {
        Libc::Unknown
    }
}

/// `2.36` from `getconf GNU_LIBC_VERSION`'s `glibc 2.36`.
fn glibc_version(text: &str) -> Option<String> {
    let version = text.trim().strip_prefix("glibc ")?.trim();
    let numeric = !version.is_empty() && version.split('.').all(|part| part.parse::<u32>().is_ok());
    numeric.then(|| version.to_owned())
}

/// The version of the `node` the app gets (first in its `PATH`, see [`tools`]).
fn node() -> NodeRuntime {
    match tools::find_node() {
        Ok(dir) => node_version(&dir.join("node")),
        Err(_) => NodeRuntime::Missing,
    }
}

fn node_version(node: &Path) -> NodeRuntime {
    let out = match Command::new(node)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(err) => return NodeRuntime::Broken(format!("`{}`: {err}", node.display())),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && stdout.starts_with('v') {
        NodeRuntime::Version(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = stderr
            .lines()
            .chain(stdout.lines())
            .find(|l| !l.trim().is_empty());
        NodeRuntime::Broken(format!(
            "`{} --version` failed ({}){}",
            node.display(),
            out.status,
            said.map_or(String::new(), |line| format!(": {}", line.trim()))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glibc_version_comes_from_getconf_output() {
        assert_eq!(glibc_version("glibc 2.36\n").as_deref(), Some("2.36"));
        assert_eq!(glibc_version("glibc 2.17").as_deref(), Some("2.17"));
        assert_eq!(glibc_version("musl 1.2"), None);
        assert_eq!(glibc_version("glibc "), None);
        assert_eq!(glibc_version("glibc 2.x"), None);
    }

    #[test]
    fn this_machine_is_detected() {
        let platform = detect();
        assert_eq!(platform.arch, std::env::consts::ARCH);
        assert!(matches!(platform.libc, Libc::Glibc { .. }), "{platform:?}");
    }

    #[test]
    fn a_node_that_does_not_run_is_reported_with_what_it_printed() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node");
        std::fs::write(
            &node,
            "#!/bin/sh\necho 'node: /lib/libc.so.6: version `GLIBC_2.28` not found' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            node_version(&node),
            NodeRuntime::Broken(format!(
                "`{}/node --version` failed (exit status: 1): node: /lib/libc.so.6: version `GLIBC_2.28` not found",
                dir.path().display()
            ))
        );
    }
}
