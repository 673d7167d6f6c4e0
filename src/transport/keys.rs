//! The private key, kept in memory only, and what can be told about it without
//! the passphrase: its type and the fingerprint of its public half.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A private key from the `key` input, normalised, with what identifies it.
pub struct PrivateKey {
    /// The key text (OpenSSH or PEM), with `\n` line ends and a final newline.
    pub text: String,
    /// The passphrase, when the key is encrypted.
    pub passphrase: Option<String>,
    /// `ed25519`, `ECDSA`, `RSA`, ...
    pub key_type: String,
    /// `SHA256:…` of the public key when the format tells it, else a placeholder.
    pub fingerprint: String,
    /// Whether the key is encrypted.
    pub encrypted: bool,
}

fn key_error(problem: &str) -> Error {
    Error::Key {
        problem: problem.into(),
        hint: "paste the whole private key, from `-----BEGIN … PRIVATE KEY-----` to its END line, into the secret (it is the file without .pub)".into(),
    }
}

impl PrivateKey {
    /// Checks that `text` looks like a private key and reads its type.
    pub fn parse(text: &str, passphrase: Option<String>) -> Result<PrivateKey> {
        let text = text.replace("\r\n", "\n");
        let text = format!("{}\n", text.trim());
        let first = text.lines().next().unwrap_or_default();
        if first.starts_with("ssh-") || first.starts_with("ecdsa-") {
            return Err(key_error(
                "this is a public key (one line starting with `ssh-`), not the private key",
            ));
        }
        let (key_type, fingerprint, encrypted) = match first {
            "-----BEGIN OPENSSH PRIVATE KEY-----" => openssh_details(&text)
                .ok_or_else(|| key_error("the OpenSSH private key is truncated or damaged"))?,
            "-----BEGIN RSA PRIVATE KEY-----" => ("RSA".into(), None, text.contains("ENCRYPTED")),
            "-----BEGIN EC PRIVATE KEY-----" => ("ECDSA".into(), None, text.contains("ENCRYPTED")),
            "-----BEGIN PRIVATE KEY-----" => ("PKCS#8".into(), None, false),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----" => ("PKCS#8".into(), None, true),
            _ => {
                return Err(key_error(
                    "this is not a private key (it does not start with a `-----BEGIN … PRIVATE KEY-----` line)",
                ));
            }
        };
        if !text.trim_end().ends_with("PRIVATE KEY-----") {
            return Err(key_error(
                "the key is truncated: its `-----END … PRIVATE KEY-----` line is missing",
            ));
        }
        if encrypted && passphrase.is_none() {
            return Err(Error::Key {
                problem: "the key is encrypted and no passphrase was given".into(),
                hint: "set `key-passphrase` (from a secret), or use a key without a passphrase made for deploys".into(),
            });
        }
        Ok(PrivateKey {
            text,
            passphrase,
            key_type,
            fingerprint: fingerprint
                .unwrap_or_else(|| "(fingerprint shown by `ssh-keygen -lf`)".into()),
            encrypted,
        })
    }
}

/// Fingerprint of a public key blob, as `ssh-keygen -lf` prints it.
pub fn fingerprint(blob: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(blob)))
}

/// Reads type, fingerprint and encryption from the unencrypted header of an OpenSSH key.
fn openssh_details(text: &str) -> Option<(String, Option<String>, bool)> {
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let bytes = STANDARD.decode(body.trim()).ok()?;
    let mut rest = bytes.strip_prefix(b"openssh-key-v1\0")?;
    let cipher = take_string(&mut rest)?;
    let _kdf = take_string(&mut rest)?;
    let _kdf_options = take_string(&mut rest)?;
    let _count = take_u32(&mut rest)?;
    let public = take_string(&mut rest)?;
    let mut blob = public;
    let algorithm = String::from_utf8(take_string(&mut blob)?.to_vec()).ok()?;
    let key_type = match algorithm.as_str() {
        "ssh-ed25519" => "ed25519".to_owned(),
        "ssh-rsa" => "RSA".to_owned(),
        a if a.starts_with("ecdsa-") => "ECDSA".to_owned(),
        other => other.to_owned(),
    };
    Some((key_type, Some(fingerprint(public)), cipher != b"none"))
}

fn take_u32(input: &mut &[u8]) -> Option<u32> {
    let (head, rest) = input.split_first_chunk::<4>()?;
    *input = rest;
    Some(u32::from_be_bytes(*head))
}

fn take_string<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(take_u32(input)?).ok()?;
    if input.len() < len {
        return None;
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_is_refused_with_a_clear_message() {
        let err = PrivateKey::parse("ssh-ed25519 AAAAC3Nza user@host", None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("public key"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        let err = PrivateKey::parse("hello", None).err().unwrap();
        assert!(err.to_string().contains("not a private key"), "{err}");
    }

    #[test]
    fn a_truncated_key_is_refused() {
        let err = PrivateKey::parse("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n", None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
