//! The agent checks its own binary against the hash in its file name
//! (`dropship-<version>-<first 12 hex of SHA-256>`), in the background while it
//! receives, and before it changes anything. This replaces a `sha256sum` run on
//! every connection: same guarantee, off the critical path.

use std::path::PathBuf;
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest;
use crate::protocol::{Failure, FailureKind};

/// A check of this binary, started at once and awaited by [`SelfCheck::verify`].
pub struct SelfCheck {
    running: Option<JoinHandle<std::result::Result<(), String>>>,
}

impl SelfCheck {
    /// Starts hashing this binary on another thread.
    pub fn start() -> SelfCheck {
        SelfCheck {
            running: Some(std::thread::spawn(check_this_binary)),
        }
    }

    /// Waits for the check; an error when the binary is not what its name says
    /// (it is removed, so that the next deploy installs a fresh copy).
    pub fn verify(&mut self) -> Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        match running.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(problem)) => Err(Error::Agent(Failure::new(
                FailureKind::Failed,
                problem,
                Some("the damaged agent was removed; run the deploy again to install a fresh copy"),
            ))),
            Err(_) => Err(Error::Agent(Failure::new(
                FailureKind::Failed,
                "the agent's self-check crashed",
                None,
            ))),
        }
    }
}

/// The expected hash prefix from a file name such as `dropship-0.1.0-55c4163f93e2`;
/// `None` for any other name (`dropship agent` run by hand, or `host: local`).
fn expected_prefix(file_name: &str) -> Option<&str> {
    let (_, prefix) = file_name.strip_prefix("dropship-")?.rsplit_once('-')?;
    (prefix.len() == 12 && prefix.bytes().all(|b| b.is_ascii_hexdigit())).then_some(prefix)
}

fn check_this_binary() -> std::result::Result<(), String> {
    let Ok(path) = std::env::current_exe() else {
        return Ok(());
    };
    let Some(expected) = path
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(expected_prefix)
        .map(str::to_owned)
    else {
        return Ok(());
    };
    let actual = hash_prefix(&path)?;
    if actual == expected {
        return Ok(());
    }
    let _ = std::fs::remove_file(&path);
    Err(format!(
        "the agent binary {} is damaged (its SHA-256 starts with {actual}, its name says {expected})",
        path.display()
    ))
}

fn hash_prefix(path: &PathBuf) -> std::result::Result<String, String> {
    let mut file = std::fs::File::open(path)
        .map_err(|err| format!("cannot read the agent binary {}: {err}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|err| format!("cannot read the agent binary {}: {err}", path.display()))?;
    Ok(manifest::hex(&hasher.finalize()[..6]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_agent_names_carry_a_hash() {
        assert_eq!(
            expected_prefix("dropship-0.1.0-55c4163f93e2"),
            Some("55c4163f93e2")
        );
        assert_eq!(expected_prefix("dropship"), None);
        assert_eq!(expected_prefix("dropship-0.1.0-55c4163f93e2.123"), None);
        assert_eq!(expected_prefix("dropship-0.1.0-xyz"), None);
    }
}
