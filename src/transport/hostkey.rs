//! Host key pinning: the server must present a key named by `known-hosts` or
//! `host-fingerprint` before dropship authenticates. An unknown key fails closed
//! and prints what to pin; a different key is treated as a man in the middle.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ssh2::{CheckResult, HostKeyType, KnownHostFileKind, Session};

use super::keys::fingerprint;
use crate::error::{Error, Result};

/// How the server's identity is checked.
#[derive(Clone, Debug, Default)]
pub struct Pinning {
    /// known_hosts lines.
    pub known_hosts: String,
    /// `SHA256:…` fingerprints, each for all hosts (`None`) or one host name.
    pub fingerprints: Vec<(Option<String>, String)>,
    /// Skip the check (explicit opt-out; warned about on every run).
    pub insecure: bool,
}

impl Pinning {
    /// Parses `host-fingerprint`: one `SHA256:…` for all hosts, or `host=SHA256:…` lines.
    pub fn parse_fingerprints(text: &str) -> Result<Vec<(Option<String>, String)>> {
        text.split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (host, fp) = match item.split_once('=') {
                    Some((host, fp)) if !host.starts_with("SHA256:") => (Some(host.trim().to_owned()), fp.trim()),
                    _ => (None, item),
                };
                let valid = fp.strip_prefix("SHA256:").is_some_and(|b64| b64.len() == 43);
                if valid {
                    Ok((host, fp.to_owned()))
                } else {
                    Err(Error::input(
                        "host-fingerprint",
                        format!("`{fp}` is not a SHA256 fingerprint"),
                        "give it as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it: SHA256: and 43 characters",
                    ))
                }
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.known_hosts.trim().is_empty() && self.fingerprints.is_empty()
    }

    /// Checks the key `session` received from `host:port`. Call after the handshake, before authenticating.
    pub fn verify(&self, session: &Session, label: &str, host: &str, port: u16) -> Result<()> {
        let Some((key, key_type)) = session.host_key() else {
            return Err(Error::Ssh {
                host: label.into(),
                step: "reading the host key",
                message: "the server sent no host key".into(),
            });
        };
        let actual = fingerprint(key);
        if self.insecure {
            tracing::warn!(
                "WARNING: {label}: host key NOT checked (insecure-skip-host-key-check); it is {actual}. Pin it instead."
            );
            return Ok(());
        }
        let name = if port == 22 {
            host.to_owned()
        } else {
            format!("[{host}]:{port}")
        };
        let unpinned = || Error::UnpinnedHostKey {
            host: label.into(),
            fingerprint: actual.clone(),
            known_hosts_line: format!("{name} {} {}", type_name(key_type), STANDARD.encode(key)),
        };
        if self.is_empty() {
            return Err(unpinned());
        }
        let pins: Vec<&str> = self
            .fingerprints
            .iter()
            .filter(|(h, _)| h.as_deref().is_none_or(|h| h == host))
            .map(|(_, fp)| fp.as_str())
            .collect();
        if pins
            .iter()
            .any(|fp| constant_time_eq(fp.as_bytes(), actual.as_bytes()))
        {
            return Ok(());
        }
        match self.check_known_hosts(session, host, port, key, label)? {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => Err(Error::HostKeyMismatch {
                host: label.into(),
                expected: self.pinned_fingerprints(host, port).join(" or "),
                actual,
            }),
            CheckResult::NotFound | CheckResult::Failure if !pins.is_empty() => {
                Err(Error::HostKeyMismatch {
                    host: label.into(),
                    expected: pins.join(" or "),
                    actual,
                })
            }
            CheckResult::NotFound | CheckResult::Failure => Err(unpinned()),
        }
    }

    /// Fingerprints of the `known-hosts` keys that may be meant for `host:port`
    /// (named lines that list it, and hashed lines, whose names cannot be read).
    fn pinned_fingerprints(&self, host: &str, port: u16) -> Vec<String> {
        let names = [host.to_owned(), format!("[{host}]:{port}")];
        let found: Vec<String> = self
            .known_hosts
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let hosts = fields.next()?;
                let key = fields.nth(1)?;
                let meant = hosts.starts_with("|1|")
                    || hosts.split(',').any(|h| names.iter().any(|n| n == h));
                let blob = base64::Engine::decode(&STANDARD, key).ok()?;
                meant.then(|| fingerprint(&blob))
            })
            .collect();
        if found.is_empty() {
            vec!["the key in `known-hosts`".into()]
        } else {
            found
        }
    }

    fn check_known_hosts(
        &self,
        session: &Session,
        host: &str,
        port: u16,
        key: &[u8],
        label: &str,
    ) -> Result<CheckResult> {
        if self.known_hosts.trim().is_empty() {
            return Ok(CheckResult::NotFound);
        }
        let ssh_error = |err: ssh2::Error| Error::Ssh {
            host: label.into(),
            step: "checking known-hosts",
            message: err.to_string(),
        };
        let mut known = session.known_hosts().map_err(ssh_error)?;
        for (number, line) in self.known_hosts.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            known.read_str(line, KnownHostFileKind::OpenSSH).map_err(|_| {
                Error::input(
                    "known-hosts",
                    format!("line {} is not a known_hosts line", number + 1),
                    "use lines as `ssh-keyscan -t ed25519 HOST` prints them: `host key-type base64-key`",
                )
            })?;
        }
        Ok(known.check_port(host, port, key))
    }
}

fn type_name(key_type: HostKeyType) -> &'static str {
    match key_type {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => "unknown",
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_for_all_hosts_or_per_host() {
        let fp = format!("SHA256:{}", "a".repeat(43));
        let parsed = Pinning::parse_fingerprints(&format!("{fp}\nweb2={fp}")).unwrap();
        assert_eq!(parsed, vec![(None, fp.clone()), (Some("web2".into()), fp)]);
        assert!(Pinning::parse_fingerprints("MD5:aa").is_err());
    }
}
