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

    /// The `host-fingerprint` pins that apply to `host`.
    fn fingerprints_for(&self, host: &str) -> Vec<&str> {
        self.fingerprints
            .iter()
            .filter(|(h, _)| h.as_deref().is_none_or(|h| h == host))
            .map(|(_, fp)| fp.as_str())
            .collect()
    }

    /// Opens a session to `host:port` with `open` (connect and handshake, given
    /// the host key algorithms to offer, best first) and checks the key it got.
    ///
    /// As OpenSSH does, the key types that `known-hosts` pins for the host are
    /// offered first, so a server with several host keys presents the pinned
    /// one. A `host-fingerprint` does not say its key type: when the key the
    /// server prefers does not match, each other type is asked for on a new
    /// connection, and a failure names every key the server offers.
    pub fn handshake(
        &self,
        label: &str,
        (host, port): (&str, u16),
        open: impl Fn(&str) -> Result<Session>,
    ) -> Result<Session> {
        let known = KnownHosts::read(&self.known_hosts, label)?;
        let pinned = known.pinning(host, port, label)?;
        let types: Vec<&str> = pinned.iter().map(|line| line.key_type.as_str()).collect();
        let session = open(&preference(&types))?;
        let target = Target { label, host, port };
        match self.verify(&session, &known, &pinned, &target) {
            Err(Error::HostKeyMismatch { .. }) if !self.fingerprints_for(host).is_empty() => {
                self.other_types(session, &known, &pinned, &target, open)
            }
            result => result.map(|()| session),
        }
    }

    /// Asks the server for each key type but the one `first` got, until one
    /// matches a `host-fingerprint`.
    fn other_types(
        &self,
        first: Session,
        known: &KnownHosts,
        pinned: &[&Line],
        target: &Target<'_>,
        open: impl Fn(&str) -> Result<Session>,
    ) -> Result<Session> {
        let mut presented = vec![presented_key(&first, target.label)?];
        for (key_type, methods) in FAMILIES {
            if presented.iter().any(|(t, _)| *t == key_type) {
                continue;
            }
            // A server without a key of this type ends the handshake.
            let Ok(session) = open(methods) else { continue };
            match self.verify(&session, known, pinned, target) {
                Ok(()) => return Ok(session),
                Err(Error::HostKeyMismatch { .. }) => {
                    presented.push(presented_key(&session, target.label)?);
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::HostKeyMismatch {
            host: target.label.into(),
            expected: self.fingerprints_for(target.host).join(" or "),
            actual: presented
                .iter()
                .map(|(key_type, fp)| format!("{fp} ({key_type})"))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Checks the key `session` received. Call after the handshake, before authenticating.
    fn verify(
        &self,
        session: &Session,
        known: &KnownHosts,
        pinned: &[&Line],
        target: &Target<'_>,
    ) -> Result<()> {
        let Target { label, host, port } = *target;
        let (key, key_type) = host_key(session, label)?;
        let actual = fingerprint(key);
        if known.revoked.iter().any(|revoked| revoked == key) {
            return Err(Error::HostKeyRevoked {
                host: label.into(),
                fingerprint: actual,
            });
        }
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
        let pins = self.fingerprints_for(host);
        if pins
            .iter()
            .any(|fp| constant_time_eq(fp.as_bytes(), actual.as_bytes()))
            || pinned.iter().any(|line| line.key == key)
        {
            return Ok(());
        }
        let expected: Vec<String> = if pinned.is_empty() {
            pins.iter().map(|fp| (*fp).to_owned()).collect()
        } else {
            pinned.iter().map(|line| fingerprint(&line.key)).collect()
        };
        if expected.is_empty() {
            Err(unpinned())
        } else {
            Err(Error::HostKeyMismatch {
                host: label.into(),
                expected: expected.join(" or "),
                actual,
            })
        }
    }
}

/// The host a key is checked for: its label in messages, name and port.
struct Target<'a> {
    label: &'a str,
    host: &'a str,
    port: u16,
}

/// The key `session` received, and its type.
fn host_key<'s>(session: &'s Session, label: &str) -> Result<(&'s [u8], HostKeyType)> {
    session.host_key().ok_or_else(|| Error::Ssh {
        host: label.into(),
        step: "reading the host key",
        message: "the server sent no host key".into(),
    })
}

/// The type and fingerprint of the key `session` received.
fn presented_key(session: &Session, label: &str) -> Result<(&'static str, String)> {
    let (key, key_type) = host_key(session, label)?;
    Ok((type_name(key_type), fingerprint(key)))
}

/// Host key types as known_hosts names them, with the handshake algorithms
/// that ask for each, in the order offered when nothing is pinned.
/// (Certificates are not offered: known_hosts pins keys, not CAs.)
const FAMILIES: [(&str, &str); 5] = [
    ("ssh-ed25519", "ssh-ed25519"),
    ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
    ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
    ("ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521"),
    ("ssh-rsa", "rsa-sha2-512,rsa-sha2-256,ssh-rsa"),
];

/// The host key algorithms to offer: those of the `pinned` key types first.
fn preference(pinned: &[&str]) -> String {
    let (first, rest): (Vec<_>, Vec<_>) = FAMILIES
        .iter()
        .partition(|(key_type, _)| pinned.contains(key_type));
    first
        .iter()
        .chain(&rest)
        .map(|(_, methods)| *methods)
        .collect::<Vec<_>>()
        .join(",")
}

/// One key line of `known-hosts` (marker taken off).
struct Line {
    /// The line as libssh2 reads it: `hosts key-type base64`.
    text: String,
    key_type: String,
    key: Vec<u8>,
}

/// `known-hosts`, read: the lines that pin keys, and the keys `@revoked`.
struct KnownHosts {
    lines: Vec<Line>,
    revoked: Vec<Vec<u8>>,
}

impl KnownHosts {
    fn read(text: &str, label: &str) -> Result<KnownHosts> {
        let mut known = KnownHosts {
            lines: Vec::new(),
            revoked: Vec::new(),
        };
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || {
                Error::input(
                    "known-hosts",
                    format!("line {} is not a known_hosts line", number + 1),
                    "use lines as `ssh-keyscan -t ed25519 HOST` prints them: `host key-type base64-key`",
                )
            };
            let (marker, rest) = match line.strip_prefix('@') {
                Some(marked) => marked.split_once(char::is_whitespace).ok_or_else(bad)?,
                None => ("", line),
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let (hosts, key_type, key) = match fields[..] {
                [hosts, key_type, key, ..] => (hosts, key_type, key),
                _ => return Err(bad()),
            };
            let key = STANDARD.decode(key).map_err(|_| bad())?;
            match marker {
                "" => known.lines.push(Line {
                    text: format!("{hosts} {key_type} {}", STANDARD.encode(&key)),
                    key_type: key_type.into(),
                    key,
                }),
                "revoked" => known.revoked.push(key),
                "cert-authority" => tracing::warn!(
                    "{label}: `known-hosts` line {} is a @cert-authority line: dropship pins host keys, not certificates, and ignores it",
                    number + 1
                ),
                _ => return Err(bad()),
            }
        }
        Ok(known)
    }

    /// The lines that name `host:port` (libssh2 decides, hashed names included).
    fn pinning(&self, host: &str, port: u16, label: &str) -> Result<Vec<&Line>> {
        let ssh_error = |err: ssh2::Error| Error::Ssh {
            host: label.into(),
            step: "checking known-hosts",
            message: err.to_string(),
        };
        let session = Session::new().map_err(ssh_error)?;
        let mut found = Vec::new();
        for line in &self.lines {
            let mut one = session.known_hosts().map_err(ssh_error)?;
            one.read_str(&line.text, KnownHostFileKind::OpenSSH)
                .map_err(|_| {
                    Error::input(
                        "known-hosts",
                        format!("`{}…` is not a known_hosts line libssh2 can read", line.text.chars().take(40).collect::<String>()),
                        "use lines as `ssh-keyscan -t ed25519 HOST` prints them: `host key-type base64-key`",
                    )
                })?;
            if matches!(one.check_port(host, port, &line.key), CheckResult::Match) {
                found.push(line);
            }
        }
        Ok(found)
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

#[cfg(test)]
mod preference_tests {
    use super::*;

    #[test]
    fn pinned_key_types_are_offered_first_in_the_usual_order() {
        let all = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256,ssh-rsa";
        assert_eq!(preference(&[]), all);
        assert_eq!(
            preference(&["ssh-rsa", "ecdsa-sha2-nistp256"]),
            "ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256,ssh-rsa,ssh-ed25519,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521"
        );
    }

    #[test]
    fn markers_revoke_or_are_ignored() {
        let key = STANDARD.encode(b"key-one");
        let known = KnownHosts::read(
            &format!("# comment\n@revoked * ssh-ed25519 {key}\n@cert-authority *.example ssh-rsa {key}\nweb ssh-ed25519 {key} comment\n"),
            "web",
        )
        .unwrap();
        assert_eq!(known.revoked, vec![b"key-one".to_vec()]);
        assert_eq!(known.lines.len(), 1);
        assert_eq!(known.lines[0].text, format!("web ssh-ed25519 {key}"));
        for bad in [
            "@revoked",
            "@other * ssh-rsa AAAA",
            "web ssh-rsa",
            "web ssh-rsa !!",
        ] {
            assert!(KnownHosts::read(bad, "web").is_err(), "{bad}");
        }
    }
}
