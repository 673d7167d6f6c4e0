//! The release as one tar stream compressed with multi-threaded zstd, produced
//! while it is written: no temporary archive on either side.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Release;
use crate::manifest::Kind;

/// zstd level: 3 is the best time/size trade-off for JS bundles (higher levels cost far more CPU).
const LEVEL: i32 = 3;

/// Counts the bytes written through it (shared, so progress can be read from elsewhere).
pub struct Counter<W> {
    inner: W,
    count: Arc<AtomicU64>,
}

impl<W> Counter<W> {
    /// Counts into `count`.
    pub fn new(inner: W, count: Arc<AtomicU64>) -> Self {
        Counter { inner, count }
    }
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `release` to `out` as one zstd frame holding a tar archive, in manifest
/// order; with `send`, only the files whose manifest index it lists (directories
/// and symlinks always go: they are cheap and make the tree).
pub fn write_archive<W: Write>(release: &Release, out: W, send: Option<&[u32]>) -> io::Result<W> {
    let send: Option<std::collections::HashSet<usize>> =
        send.map(|indices| indices.iter().map(|&i| i as usize).collect());
    let mut encoder = zstd::stream::write::Encoder::new(out, LEVEL)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    encoder.multithread(u32::try_from(workers).unwrap_or(1))?;
    encoder.include_checksum(true)?;
    let mut tar = tar::Builder::new(encoder);
    for (index, (entry, (source, mtime))) in release
        .manifest
        .entries
        .iter()
        .zip(&release.sources)
        .enumerate()
    {
        let wanted = send.as_ref().is_none_or(|set| set.contains(&index));
        if !wanted && matches!(entry.kind, Kind::File { .. }) {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_mtime(*mtime);
        header.set_uid(0);
        header.set_gid(0);
        match &entry.kind {
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &entry.path, io::empty())?;
            }
            Kind::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &entry.path, target)?;
            }
            Kind::File { size, .. } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(*size);
                // `take` keeps the archive well-formed if the file grew since it was hashed;
                // the agent's hash check then reports the change.
                let file = File::open(source)?.take(*size);
                tar.append_data(&mut header, &entry.path, file)?;
            }
        }
    }
    tar.into_inner()?.finish()
}
