//! Unpacks the release stream into a staging directory, checking every entry
//! against the manifest: nothing outside the release, nothing the manifest does
//! not list, every file byte-identical to what the client hashed.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::store::Context;
use crate::error::{Error, Result};
use crate::manifest::{self, Kind, Manifest};
use crate::protocol::{Failure, FailureKind};

/// What was written to the staging directory.
pub struct Received {
    /// Regular files written from the stream.
    pub files: u64,
    /// Regular files hard-linked (or copied) from releases already here.
    pub reused: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

fn refuse(message: String) -> Error {
    Error::Agent(Failure::new(
        FailureKind::BadInput,
        format!("refused the release stream: {message}"),
        Some("the archive was not produced by a matching dropship client; nothing was changed"),
    ))
}

fn corrupt(message: String) -> Error {
    Error::Agent(Failure::new(
        FailureKind::Failed,
        format!("the release arrived damaged: {message}"),
        Some("run the deploy again; if it repeats, check the server's disk and memory"),
    ))
}

fn stream_error(err: &io::Error) -> Error {
    if err.kind() == io::ErrorKind::TimedOut {
        return Error::Agent(Failure::new(FailureKind::Failed, err.to_string(), None));
    }
    corrupt(format!("cannot read the stream: {err}"))
}

/// Reads one zstd frame holding a tar archive from `input` and writes the release
/// under `staging` (which must not exist yet). `input` is left just past the frame.
/// The files in `reuse` (by manifest index) are not in the stream: they are
/// hard-linked from the given copies, which have the same content and mode.
pub fn receive(
    input: &mut impl BufRead,
    manifest: &Manifest,
    staging: &Path,
    reuse: &HashMap<usize, PathBuf>,
) -> Result<Received> {
    fs::create_dir_all(staging).at("create", staging)?;
    let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
        .map_err(|err| stream_error(&err))?
        .single_frame();
    let received = unpack(&mut decoder, manifest, staging, reuse)?;
    // The tar end-of-archive blocks may be followed by padding: read to the frame's end.
    io::copy(&mut decoder.by_ref().take(1 << 20), &mut io::sink())
        .map_err(|err| stream_error(&err))?;
    Ok(received)
}

fn unpack(
    stream: impl Read,
    manifest: &Manifest,
    staging: &Path,
    reuse: &HashMap<usize, PathBuf>,
) -> Result<Received> {
    let mut expected = manifest.by_path();
    let mut seen: HashSet<String> = HashSet::new();
    for &i in reuse.keys() {
        expected.remove(manifest.entries[i].path.as_str());
    }
    let mut links = Vec::new();
    let mut received = Received {
        files: 0,
        reused: 0,
        bytes: 0,
    };
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(|err| stream_error(&err))? {
        let mut entry = entry.map_err(|err| stream_error(&err))?;
        let raw = entry.path_bytes().into_owned();
        let path = std::str::from_utf8(&raw)
            .map_err(|_| {
                refuse(format!(
                    "entry `{}` is not UTF-8",
                    String::from_utf8_lossy(&raw)
                ))
            })?
            .trim_end_matches('/')
            .to_owned();
        manifest::check_relative_path(&path).map_err(refuse)?;
        let entry_type = entry.header().entry_type();
        if !matches!(
            entry_type,
            tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::Directory
                | tar::EntryType::Symlink
        ) {
            return Err(refuse(format!(
                "entry `{path}` is a {} (only files, directories and symlinks are accepted)",
                describe(entry_type)
            )));
        }
        let Some(listed) = expected.get(path.as_str()) else {
            return Err(refuse(format!("entry `{path}` is not in the manifest")));
        };
        if !seen.insert(path.clone()) {
            return Err(refuse(format!("entry `{path}` appears twice")));
        }
        let dest = staging.join(&path);
        match (&listed.kind, entry_type) {
            (Kind::Dir, tar::EntryType::Directory) => {
                fs::create_dir_all(&dest).at("create", &dest)?;
            }
            (Kind::File { size, hash }, tar::EntryType::Regular | tar::EntryType::Continuous) => {
                let mtime = entry.header().mtime().unwrap_or(0);
                write_file(&mut entry, &dest, &path, *size, hash, listed.mode, mtime)?;
                received.files += 1;
                received.bytes += size;
            }
            (Kind::Symlink { target }, tar::EntryType::Symlink) => {
                let link = entry.link_name_bytes().unwrap_or_default();
                if link.as_ref() != target.as_bytes() {
                    return Err(refuse(format!(
                        "symlink `{path}` differs from the manifest"
                    )));
                }
                links.push((dest, target.clone()));
            }
            _ => {
                return Err(refuse(format!(
                    "entry `{path}` is not of the kind the manifest says"
                )));
            }
        }
    }
    if let Some(missing) = expected.keys().find(|path| !seen.contains(**path)) {
        return Err(corrupt(format!("the stream ended before `{missing}`")));
    }
    for (&i, source) in reuse {
        let entry = &manifest.entries[i];
        link_or_copy(source, &staging.join(&entry.path), entry)?;
        received.reused += 1;
    }
    // Links last: no file is ever written through a link that the stream created.
    for (dest, target) in links {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).at("create", parent)?;
        }
        std::os::unix::fs::symlink(&target, &dest).at("create the link", &dest)?;
    }
    // Directory modes last, deepest first, so a read-only directory never blocks a write.
    for entry in manifest
        .entries
        .iter()
        .rev()
        .filter(|e| e.kind == Kind::Dir)
    {
        let dir = staging.join(&entry.path);
        fs::set_permissions(&dir, fs::Permissions::from_mode(entry.mode & 0o777))
            .at("chmod", &dir)?;
    }
    Ok(received)
}

/// Hard-links an unchanged file from an earlier release (releases are never
/// changed in place, so sharing the inode is safe); copies and re-hashes it
/// when the filesystem cannot link.
fn link_or_copy(source: &Path, dest: &Path, entry: &crate::manifest::Entry) -> Result<()> {
    let Kind::File { size, hash } = &entry.kind else {
        return Ok(());
    };
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).at("create", parent)?;
    }
    let on_disk = fs::symlink_metadata(source)
        .map(|m| (m.is_file(), m.len()))
        .unwrap_or((false, 0));
    if on_disk != (true, *size) {
        return Err(corrupt(format!(
            "`{}` changed on the server since it was deployed",
            source.display()
        )));
    }
    if fs::hard_link(source, dest).is_ok() {
        return Ok(());
    }
    let mut file = fs::File::open(source).at("open", source)?;
    write_file(&mut file, dest, &entry.path, *size, hash, entry.mode, 0)
}

fn describe(entry_type: tar::EntryType) -> &'static str {
    match entry_type {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::Link => "hard link",
        _ => "special entry",
    }
}

fn write_file(
    content: &mut impl Read,
    dest: &Path,
    path: &str,
    size: u64,
    hash: &str,
    mode: u32,
    mtime: u64,
) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).at("create", parent)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .at("create", dest)?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = content.read(&mut buf).map_err(|err| stream_error(&err))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).at("write", dest)?;
        written += n as u64;
    }
    let actual = manifest::content_hash(&hasher.finalize());
    if written != size || actual != hash {
        return Err(corrupt(format!(
            "`{path}` has {written} bytes with hash {actual}, the manifest says {size} bytes with hash {hash}"
        )));
    }
    file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
        .at("chmod", dest)?;
    file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .at("set the time of", dest)?;
    Ok(())
}
