//! Unpacks the release stream into a staging directory, checking every entry
//! against the manifest: nothing outside the release, nothing the manifest does
//! not list, every file byte-identical to what the client hashed.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::reuse::Identity;
use super::store::Context;
use crate::error::{Error, Result};
use crate::manifest::{self, Kind, Manifest};
use crate::protocol::{Failure, FailureKind};

/// The longest GNU long name (path or link target) accepted: far above any real
/// path; it bounds the memory a stream can make the agent use for one.
const MAX_LONG_NAME: u64 = 64 * 1024;

/// What was written to the staging directory.
pub struct Received {
    /// Regular files written from the stream.
    pub files: u64,
    /// Regular files hard-linked or copied from releases already here.
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

/// One part of the release stream: a reader positioned at its zstd frame.
pub type Part<'a> = &'a mut (dyn BufRead + Send);

/// A part of the stream that arrives on another connection.
pub type MorePart = Box<dyn BufRead + Send>;

/// Reads the release from `first` and the parts `more` hands over, one by one as
/// they arrive — each one zstd frame holding a tar archive of some of its
/// entries, all read in parallel (the client splits large uploads over several
/// SSH channels) — and writes it under `staging` (which must not exist yet).
/// `first` is read from before `more` is called, and is left just past its
/// frame; `more` should give up when its second argument says the first part
/// failed. Together the parts must hold every entry of `manifest` exactly once,
/// except the files in `reuse` (by manifest index), which are taken from the
/// given earlier releases instead. Directories keep a writable mode until
/// [`set_dir_modes`] gives them theirs.
pub fn receive(
    first: Part<'_>,
    more: impl FnOnce(&mut dyn FnMut(MorePart), &dyn Fn() -> bool) -> Result<()>,
    manifest: &Manifest,
    staging: &Path,
    reuse: &HashMap<usize, Source>,
) -> Result<Received> {
    fs::create_dir_all(staging).at("create", staging)?;
    let mut expected = manifest.by_path();
    for &i in reuse.keys() {
        expected.remove(manifest.entries[i].path.as_str());
    }
    let seen = Mutex::new(HashSet::new());
    let (expected, seen_ref) = (&expected, &seen);
    let first_failed = AtomicBool::new(false);
    let (unpacked, arrived) = std::thread::scope(|scope| {
        let first_failed = &first_failed;
        let first = scope.spawn(move || {
            let result = receive_part(first, expected, seen_ref, staging);
            first_failed.store(result.is_err(), Ordering::Relaxed);
            result
        });
        let mut others = Vec::new();
        let arrived = more(
            &mut |mut part: MorePart| {
                others.push(
                    scope.spawn(move || receive_part(&mut *part, expected, seen_ref, staging)),
                );
            },
            &|| first_failed.load(Ordering::Relaxed),
        );
        let mut results = vec![join(first)];
        results.extend(others.into_iter().map(join));
        (results, arrived)
    });
    let mut received = Received {
        files: 0,
        reused: 0,
        bytes: 0,
    };
    let mut links = Vec::new();
    for part in unpacked {
        let part = part?;
        received.files += part.files;
        received.bytes += part.bytes;
        links.extend(part.links);
    }
    // A part that failed says more than the parts that never came.
    arrived?;
    let seen = seen
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
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
    Ok(received)
}

/// Gives the directories of `manifest` under `staging` their modes, deepest
/// first: the last step of staging, so a read-only directory never blocks a
/// write (the stream's files, the shared links) before.
pub fn set_dir_modes(manifest: &Manifest, staging: &Path) -> Result<()> {
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
    Ok(())
}

/// The entries the stream must hold, by path.
type Expected<'a> = std::collections::BTreeMap<&'a str, &'a crate::manifest::Entry>;

fn join<T>(worker: std::thread::ScopedJoinHandle<'_, T>) -> T {
    worker
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// What one part of the stream held.
struct Unpacked {
    files: u64,
    bytes: u64,
    /// Symlinks to create once every part is in: (where, target).
    links: Vec<(PathBuf, String)>,
}

/// Reads one zstd frame from `input` and unpacks the archive it holds.
fn receive_part(
    input: &mut dyn BufRead,
    expected: &Expected<'_>,
    seen: &Mutex<HashSet<String>>,
    staging: &Path,
) -> Result<Unpacked> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
        .map_err(|err| stream_error(&err))?
        .single_frame();
    // The client's level-3 frames use a 2 MiB window; refusing anything above
    // 8 MiB keeps a hostile frame from making the agent allocate 128 MiB.
    decoder
        .window_log_max(23)
        .map_err(|err| stream_error(&err))?;
    let unpacked = unpack(&mut decoder, expected, seen, staging)?;
    // The tar end-of-archive blocks may be followed by padding: read to the frame's end.
    io::copy(&mut decoder.by_ref().take(1 << 20), &mut io::sink())
        .map_err(|err| stream_error(&err))?;
    Ok(unpacked)
}

fn unpack(
    stream: impl Read,
    expected: &Expected<'_>,
    seen: &Mutex<HashSet<String>>,
    staging: &Path,
) -> Result<Unpacked> {
    let mut unpacked = Unpacked {
        files: 0,
        bytes: 0,
        links: Vec::new(),
    };
    let mut archive = tar::Archive::new(stream);
    // Raw entries: GNU long names are read here, bounded (the tar crate would read
    // one of any size into memory); PAX and sparse headers are refused below.
    let (mut long_path, mut long_link) = (None, None);
    let entries = archive.entries().map_err(|err| stream_error(&err))?;
    for entry in entries.raw(true) {
        let mut entry = entry.map_err(|err| stream_error(&err))?;
        let entry_type = entry.header().entry_type();
        if entry_type.is_gnu_longname() || entry_type.is_gnu_longlink() {
            let slot = if entry_type.is_gnu_longname() {
                &mut long_path
            } else {
                &mut long_link
            };
            if slot.is_some() {
                return Err(refuse("two long names for one entry".into()));
            }
            *slot = Some(read_long_name(&mut entry)?);
            continue;
        }
        let long_link = long_link.take();
        let raw = match long_path.take() {
            Some(name) => name,
            None => entry.path_bytes().into_owned(),
        };
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
        let first_time = seen
            .lock()
            .map(|mut seen| seen.insert(path.clone()))
            .unwrap_or(false);
        if !first_time {
            return Err(refuse(format!("entry `{path}` appears twice")));
        }
        let dest = staging.join(&path);
        match (&listed.kind, entry_type) {
            (Kind::Dir, tar::EntryType::Directory) => {
                fs::create_dir_all(&dest).at("create", &dest)?;
            }
            (Kind::File { size, hash }, tar::EntryType::Regular | tar::EntryType::Continuous) => {
                if entry.size() != *size {
                    return Err(corrupt(format!(
                        "`{path}` is {} bytes in the stream, the manifest says {size}",
                        entry.size()
                    )));
                }
                let mtime = entry.header().mtime().unwrap_or(0);
                write_file(&mut entry, &dest, &path, *size, hash, listed.mode, mtime)?;
                unpacked.files += 1;
                unpacked.bytes += size;
            }
            (Kind::Symlink { target }, tar::EntryType::Symlink) => {
                let link = long_link
                    .map(Cow::Owned)
                    .or_else(|| entry.link_name_bytes())
                    .unwrap_or_default();
                if link.as_ref() != target.as_bytes() {
                    return Err(refuse(format!(
                        "symlink `{path}` differs from the manifest"
                    )));
                }
                unpacked.links.push((dest, target.clone()));
            }
            _ => {
                return Err(refuse(format!(
                    "entry `{path}` is not of the kind the manifest says"
                )));
            }
        }
    }
    if long_path.is_some() || long_link.is_some() {
        return Err(corrupt("the stream ended after a long name".into()));
    }
    Ok(unpacked)
}

/// Where a file already on the host is, for a release that has the same.
pub struct Source {
    /// The file in an earlier release.
    pub path: PathBuf,
    /// What it was when that release was committed, and still is.
    pub identity: Identity,
    /// Copy it instead of linking: the app may rewrite it in place.
    pub copy: bool,
}

/// Takes an unchanged file from an earlier release: a hard link, or a copy
/// (re-hashed while it is written) when the app may rewrite the file or the
/// filesystem cannot link. The file must still be as its release was committed.
fn link_or_copy(source: &Source, dest: &Path, entry: &crate::manifest::Entry) -> Result<()> {
    let Kind::File { size, hash } = &entry.kind else {
        return Ok(());
    };
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).at("create", parent)?;
    }
    if Identity::of(&source.path) != Some(source.identity) {
        return Err(Error::Agent(Failure::new(
            FailureKind::Failed,
            format!(
                "`{}` changed on the server during the deploy, after it was chosen for reuse",
                source.path.display()
            ),
            Some("run the deploy again: a file that changed is sent, not reused"),
        )));
    }
    if !source.copy && fs::hard_link(&source.path, dest).is_ok() {
        return Ok(());
    }
    let mut file = fs::File::open(&source.path).at("open", &source.path)?;
    let mtime = source.identity.mtime_secs();
    write_file(&mut file, dest, &entry.path, *size, hash, entry.mode, mtime)
}

/// The content of a GNU long name entry, without its terminating NUL.
fn read_long_name(entry: &mut tar::Entry<'_, impl Read>) -> Result<Vec<u8>> {
    if entry.size() > MAX_LONG_NAME {
        return Err(refuse(format!(
            "a long name of {} bytes (at most {MAX_LONG_NAME})",
            entry.size()
        )));
    }
    let mut name = Vec::new();
    entry
        .read_to_end(&mut name)
        .map_err(|err| stream_error(&err))?;
    if name.last() == Some(&0) {
        name.pop();
    }
    Ok(name)
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
    start_writeback(&file);
    // A time past what the system can hold (a base-256 tar field) becomes the epoch.
    let mtime = UNIX_EPOCH
        .checked_add(Duration::from_secs(mtime))
        .unwrap_or(UNIX_EPOCH);
    file.set_modified(mtime).at("set the time of", dest)?;
    Ok(())
}

/// Asks the kernel to start writing `file` to disk now (as dpkg does), so that
/// the one `syncfs` before the switch finds little left to wait for.
fn start_writeback(file: &fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the call only schedules writeback, and a
    // filesystem that does not support it just returns an error, ignored here.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Entry;

    fn file(path: &str, content: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o644,
            kind: Kind::File {
                size: content.len() as u64,
                hash: manifest::content_hash(&Sha256::digest(content)),
            },
        }
    }

    /// A zstd frame of the tar archive that `build` writes.
    fn frame(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        build(&mut tar);
        zstd::stream::encode_all(&tar.into_inner().unwrap()[..], 1).unwrap()
    }

    fn receive_into(frame: &[u8], manifest: &Manifest) -> (tempfile::TempDir, Result<Received>) {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let result = receive(
            &mut &frame[..],
            |_, _| Ok(()),
            manifest,
            &staging,
            &HashMap::new(),
        );
        (dir, result)
    }

    fn message(result: Result<Received>) -> String {
        match result {
            Ok(_) => panic!("the stream was accepted"),
            Err(err) => err.to_string(),
        }
    }

    /// Found by fuzzing: a GNU long name entry is read whole into memory by the
    /// tar crate, so a header claiming a terabyte grew one buffer without bound
    /// (zeros compress to almost nothing).
    #[test]
    fn a_huge_long_name_is_refused_without_reading_it() {
        let stream = frame(|tar| {
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            header.set_entry_type(tar::EntryType::GNULongName);
            header.set_size(1 << 40);
            header.set_cksum();
            tar.append(&header, io::repeat(0).take(1 << 20)).unwrap();
        });
        let (_dir, result) = receive_into(&stream, &Manifest::default());
        assert!(message(result).contains("long name of 1099511627776 bytes"));
    }

    #[test]
    fn long_paths_and_link_targets_still_arrive() {
        let name = format!("d/{}.js", "x".repeat(150));
        let content = b"export {}\n";
        let manifest = Manifest {
            entries: vec![
                Entry {
                    path: "d".into(),
                    mode: 0o755,
                    kind: Kind::Dir,
                },
                file(&name, content),
                Entry {
                    path: "l".into(),
                    mode: 0o777,
                    kind: Kind::Symlink {
                        target: name.clone(),
                    },
                },
            ],
        };
        let stream = frame(|tar| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, "d", io::empty()).unwrap();
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(content.len() as u64);
            tar.append_data(&mut header, &name, &content[..]).unwrap();
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, "l", &name).unwrap();
        });
        let (dir, result) = receive_into(&stream, &manifest);
        assert_eq!(result.unwrap().files, 1);
        let staging = dir.path().join("staging");
        assert_eq!(fs::read(staging.join(&name)).unwrap(), content);
        assert_eq!(fs::read_link(staging.join("l")).unwrap(), Path::new(&name));
    }

    /// Found by fuzzing: a modification time in base-256 past `i64::MAX` seconds
    /// panicked in `SystemTime + Duration`.
    #[test]
    fn a_time_past_the_system_range_is_not_a_panic() {
        for mtime in [u64::MAX, 1 << 62] {
            let stream = frame(|tar| {
                let mut header = tar::Header::new_gnu();
                header.set_mode(0o644);
                header.set_size(1);
                header.set_mtime(mtime);
                tar.append_data(&mut header, "a", &b"x"[..]).unwrap();
            });
            let manifest = Manifest {
                entries: vec![file("a", b"x")],
            };
            let (_dir, result) = receive_into(&stream, &manifest);
            assert_eq!(result.unwrap().files, 1, "mtime {mtime}");
        }
    }

    #[test]
    fn a_file_longer_than_listed_is_refused_before_it_is_written() {
        let stream = frame(|tar| {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(4);
            tar.append_data(&mut header, "a", &b"xxxx"[..]).unwrap();
        });
        let manifest = Manifest {
            entries: vec![file("a", b"x")],
        };
        let (dir, result) = receive_into(&stream, &manifest);
        assert!(message(result).contains("is 4 bytes in the stream, the manifest says 1"));
        assert!(!dir.path().join("staging/a").exists());
    }
}
