//! The release as one tar stream compressed with multi-threaded zstd, produced
//! while it is written: no temporary archive on either side.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};

use super::Release;
use crate::manifest::Kind;

/// zstd level: 3 is the best time/size trade-off for JS bundles (higher levels cost far more CPU).
const LEVEL: i32 = 3;

/// Threads to compress with: zstd gains little past four.
pub fn compress_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Which entries of a release one archive holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Manifest indices of the files it holds.
    pub files: HashSet<usize>,
    /// Whether it holds the directories and symlinks too (the first part does).
    pub tree: bool,
}

/// Splits the files to send — those in `send`, or all — into `parts` archives of
/// about the same size (largest first, each to the lightest part so far).
pub fn split(release: &Release, send: Option<&[u32]>, parts: usize) -> Vec<Selection> {
    let mut files: Vec<(usize, u64)> = match send {
        Some(send) => send.iter().map(|&i| i as usize).collect::<Vec<_>>(),
        None => (0..release.manifest.entries.len()).collect::<Vec<_>>(),
    }
    .into_iter()
    .filter_map(|i| match release.manifest.entries.get(i)?.kind {
        Kind::File { size, .. } => Some((i, size)),
        _ => None,
    })
    .collect();
    files.sort_by_key(|&(i, size)| (std::cmp::Reverse(size), i));
    let mut selections: Vec<(u64, Selection)> = (0..parts.max(1))
        .map(|part| {
            let selection = Selection {
                files: HashSet::new(),
                tree: part == 0,
            };
            (0, selection)
        })
        .collect();
    for (index, size) in files {
        if let Some((bytes, lightest)) = selections.iter_mut().min_by_key(|(bytes, _)| *bytes) {
            *bytes += size.max(512);
            lightest.files.insert(index);
        }
    }
    selections
        .into_iter()
        .map(|(_, selection)| selection)
        .collect()
}

/// Writes the entries of `release` that `selection` holds to `out` as one zstd
/// frame holding a tar archive, in manifest order, compressing on `threads`
/// threads.
pub fn write_archive<W: Write>(
    release: &Release,
    out: W,
    selection: &Selection,
    threads: usize,
) -> io::Result<W> {
    let mut encoder = zstd::stream::write::Encoder::new(out, LEVEL)?;
    encoder.multithread(u32::try_from(threads.max(1)).unwrap_or(1))?;
    encoder.include_checksum(true)?;
    let mut tar = tar::Builder::new(encoder);
    for (index, (entry, (source, mtime))) in release
        .manifest
        .entries
        .iter()
        .zip(&release.sources)
        .enumerate()
    {
        let wanted = match entry.kind {
            Kind::File { .. } => selection.files.contains(&index),
            _ => selection.tree,
        };
        if !wanted {
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
