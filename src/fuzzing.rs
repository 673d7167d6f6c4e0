//! Entry points for `cargo fuzz` (`fuzz/fuzz_targets/`): one function a target,
//! each taking the fuzzer's raw input. Not part of dropship's API.
//!
//! Every function must return normally for any input: a panic, an endless loop
//! or an unbounded allocation in the code under test is a bug. The functions
//! also assert what must hold whatever the input (round trips, and that the
//! release stream never writes outside its staging directory).
//!
//! [`seeds`] makes the committed seed corpus (`bin/fuzz --seeds` rewrites it).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::agent::receive;
use crate::dotenv;
use crate::manifest::{self, Entry, Kind, Manifest};

/// The most decompressed bytes the harness itself reads from an input (to derive
/// a manifest); the code under test gets the stream as it is.
const HARNESS_LIMIT: u64 = 8 << 20;

/// `fuzz_targets/elf.rs`: reads the input as the ELF file of a native addon
/// (what the preflight does with every `*.node` of a release); `e_machine` read
/// must be the one in the header.
pub fn elf(data: &[u8]) {
    if let Ok(needs) = crate::preflight::elf::read(data) {
        let machine = [data[18], data[19]];
        let big_endian = data[5] == 2;
        let expected = if big_endian {
            u16::from_be_bytes(machine)
        } else {
            u16::from_le_bytes(machine)
        };
        assert_eq!(needs.machine, expected);
    }
}

/// A minimal 64-bit little-endian ELF shared object for `machine`, needing
/// `needed` libraries and the symbol versions `versions` (of the first library).
pub fn sample_elf(machine: u16, needed: &[&str], versions: &[&str]) -> Vec<u8> {
    let mut strings = vec![0u8];
    let at = |s: &str, strings: &mut Vec<u8>| {
        let offset = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        offset
    };
    let needed_at: Vec<u32> = needed.iter().map(|n| at(n, &mut strings)).collect();
    let versions_at: Vec<u32> = versions.iter().map(|v| at(v, &mut strings)).collect();
    let mut dynamic = Vec::new();
    for offset in &needed_at {
        dynamic.extend_from_slice(&1u64.to_le_bytes());
        dynamic.extend_from_slice(&u64::from(*offset).to_le_bytes());
    }
    dynamic.extend_from_slice(&[0; 16]);
    let mut verneed = Vec::new();
    verneed.extend_from_slice(&1u16.to_le_bytes());
    verneed.extend_from_slice(&(versions.len() as u16).to_le_bytes());
    verneed.extend_from_slice(&needed_at.first().copied().unwrap_or(0).to_le_bytes());
    verneed.extend_from_slice(&16u32.to_le_bytes());
    verneed.extend_from_slice(&0u32.to_le_bytes());
    for (i, offset) in versions_at.iter().enumerate() {
        verneed.extend_from_slice(&[0; 8]);
        verneed.extend_from_slice(&offset.to_le_bytes());
        let next: u32 = if i + 1 < versions.len() { 16 } else { 0 };
        verneed.extend_from_slice(&next.to_le_bytes());
    }
    let mut file = vec![0u8; 64];
    file[..4].copy_from_slice(b"\x7fELF");
    file[4] = 2;
    file[5] = 1;
    file[6] = 1;
    file[16] = 3;
    file[18..20].copy_from_slice(&machine.to_le_bytes());
    let place = |data: &[u8], file: &mut Vec<u8>| {
        let offset = file.len() as u64;
        file.extend_from_slice(data);
        (offset, data.len() as u64)
    };
    let strings_place = place(&strings, &mut file);
    let dynamic_place = place(&dynamic, &mut file);
    let verneed_place = place(&verneed, &mut file);
    let shoff = file.len() as u64;
    let header = |kind: u32, (offset, size): (u64, u64), link: u32, file: &mut Vec<u8>| {
        let mut h = [0u8; 64];
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[24..32].copy_from_slice(&offset.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h[40..44].copy_from_slice(&link.to_le_bytes());
        file.extend_from_slice(&h);
    };
    header(0, (0, 0), 0, &mut file);
    header(3, strings_place, 0, &mut file);
    header(6, dynamic_place, 1, &mut file);
    if !versions.is_empty() {
        header(0x6fff_fffe, verneed_place, 1, &mut file);
    }
    let count: u16 = if versions.is_empty() { 3 } else { 4 };
    file[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    file[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    file[0x3c..0x3e].copy_from_slice(&count.to_le_bytes());
    file
}

/// `fuzz_targets/dotenv.rs`: parses the input as dotenv text; whatever parses
/// must render back to text that parses to the same pairs.
pub fn dotenv(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pairs = match dotenv::parse(text) {
        Ok(pairs) => pairs,
        Err(err) => {
            let lines = text.matches('\n').count() + 1;
            assert!(
                (1..=lines).contains(&err.line),
                "error on line {} of {lines}",
                err.line
            );
            return;
        }
    };
    let mut keys = HashSet::new();
    for (key, _) in &pairs {
        assert!(keys.insert(key.as_str()), "key {key:?} returned twice");
        let mut chars = key.chars();
        assert!(
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "invalid key {key:?}"
        );
    }
    let rendered = dotenv::render(&pairs);
    match dotenv::parse(&rendered) {
        Ok(again) => assert_eq!(again, pairs, "rendered as {rendered:?}"),
        Err(err) => panic!("rendered text does not parse ({err}): {rendered:?}"),
    }
}

/// `fuzz_targets/manifest.rs`: the input as a manifest (JSON, then
/// [`Manifest::validate`]), and as `link\ntarget` for the path checks, each
/// checked against a separate, simpler model of what they must accept.
pub fn manifest(data: &[u8]) {
    if let Ok(parsed) = serde_json::from_slice::<Manifest>(data)
        && parsed.validate().is_ok()
    {
        let mut dirs = HashSet::new();
        for entry in &parsed.entries {
            assert_plain(&entry.path);
            if let Some((parent, _)) = entry.path.rsplit_once('/') {
                assert!(dirs.contains(parent), "`{}` has no parent dir", entry.path);
            }
            match &entry.kind {
                Kind::Dir => {
                    dirs.insert(entry.path.as_str());
                }
                Kind::Symlink { target } => assert_stays_inside(&entry.path, target),
                Kind::File { .. } => {}
            }
        }
        assert_eq!(parsed.by_path().len(), parsed.entries.len(), "duplicates");
        // What the agent computes from every manifest it accepts.
        assert!(parsed.file_count() <= parsed.entries.len() as u64);
        let _ = parsed.total_bytes();
        let json = serde_json::to_vec(&parsed).expect("a manifest serialises");
        let again: Manifest = serde_json::from_slice(&json).expect("a manifest reads back");
        assert_eq!(again, parsed);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if manifest::check_relative_path(text).is_ok() {
        assert_plain(text);
    }
    let (link, target) = text.split_once('\n').unwrap_or((text, ""));
    if manifest::check_relative_path(link).is_ok()
        && manifest::check_symlink_target(link, target).is_ok()
    {
        assert_stays_inside(link, target);
    }
}

/// An accepted path: only normal components, so joined to a root it stays under it.
fn assert_plain(path: &str) {
    assert!(!path.is_empty() && !path.contains('\0'), "{path:?}");
    assert!(
        Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{path:?} has a non-normal component"
    );
    assert_eq!(
        Path::new(path).components().count(),
        path.split('/').count(),
        "{path:?} has empty or `.` parts"
    );
}

/// An accepted link target: relative, `..` only before any name, and resolved
/// from the link's directory it never climbs above the root.
fn assert_stays_inside(link: &str, target: &str) {
    assert!(
        !target.is_empty() && !target.contains('\0'),
        "{link} -> {target:?}"
    );
    let mut depth = Path::new(link).components().count() as i64 - 1;
    let mut named = false;
    for component in Path::new(target).components() {
        match component {
            Component::Normal(_) => {
                named = true;
                depth += 1;
            }
            Component::ParentDir => {
                assert!(!named, "{link} -> {target:?}: `..` after a name");
                depth -= 1;
                assert!(depth >= 0, "{link} -> {target:?} leaves the release");
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                panic!("{link} -> {target:?} is absolute")
            }
        }
    }
}

/// `fuzz_targets/stream.rs`: the agent's release-stream decoder on a fresh
/// staging directory. The first byte chooses how the rest is read:
///
/// - `0`: a zstd frame, received against [`fixed_manifest`];
/// - `1`: a tar archive, compressed here, received against [`fixed_manifest`];
/// - `2`: a zstd frame, received against the manifest of what it holds
///   (read leniently here; [`fixed_manifest`] when it cannot be read);
/// - `3`: a tar archive, compressed here, received against the manifest of what it holds.
///
/// In a tar archive given as it is (`1`, `3`), the header checksums are set
/// here first, so that a changed header field reaches the code that reads it.
///
/// Manifests that [`Manifest::validate`] refuses are skipped (the agent refuses
/// them before reading the stream). After each run the staging directory's parent
/// must hold nothing but the staging directory, and after a success the staging
/// directory exactly the manifest's entries, links resolving inside it.
pub fn stream(data: &[u8]) {
    let _ = stream_outcome(data);
}

/// [`stream`], telling whether the stream was accepted (`None`: not run).
fn stream_outcome(data: &[u8]) -> Option<bool> {
    let (&mode, rest) = data.split_first()?;
    let mut tar = rest.to_vec();
    if mode % 2 == 1 {
        set_checksums(&mut tar);
    }
    let (frame, manifest) = match mode % 4 {
        0 => (tar, fixed_manifest()),
        1 => (compress(&tar), fixed_manifest()),
        2 => {
            let manifest = decompress(&tar)
                .and_then(|tar| manifest_of(&tar))
                .unwrap_or_else(fixed_manifest);
            (tar, manifest)
        }
        _ => (compress(&tar), manifest_of(&tar)?),
    };
    manifest.validate().ok()?;
    Some(receive_checked(&frame, &manifest))
}

/// Sets the checksum of every header of `tar`, following the entry sizes.
fn set_checksums(tar: &mut [u8]) {
    let mut pos = 0usize;
    while let Some(block) = tar.get_mut(pos..pos + 512) {
        pos += 512;
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let Ok(size) = tar::Header::from_byte_slice(block).entry_size() else {
            return;
        };
        let Some(next) = (size.div_ceil(512).checked_mul(512))
            .and_then(|data| usize::try_from(data).ok())
            .and_then(|data| pos.checked_add(data))
            .filter(|&next| next <= tar.len())
        else {
            return;
        };
        pos = next;
    }
}

fn compress(tar: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(tar, 1).expect("zstd compresses in memory")
}

fn decompress(frame: &[u8]) -> Option<Vec<u8>> {
    let decoder = zstd::stream::read::Decoder::new(frame).ok()?.single_frame();
    let mut tar = Vec::new();
    decoder.take(HARNESS_LIMIT).read_to_end(&mut tar).ok()?;
    Some(tar)
}

/// The manifest of the entries of `tar`, read leniently: up to the first entry
/// that cannot be read; `None` when not even one can.
fn manifest_of(tar: &[u8]) -> Option<Manifest> {
    let mut archive = tar::Archive::new(tar);
    let mut entries = Vec::new();
    for entry in archive.entries().ok()? {
        let Ok(mut entry) = entry else { break };
        let Ok(path) = String::from_utf8(entry.path_bytes().into_owned()) else {
            break;
        };
        let path = path.trim_end_matches('/').to_owned();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                let link = entry.link_name_bytes().unwrap_or_default().into_owned();
                let Ok(target) = String::from_utf8(link) else {
                    break;
                };
                Kind::Symlink { target }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut content = Vec::new();
                if entry.read_to_end(&mut content).is_err() {
                    break;
                }
                file_kind(&content)
            }
            _ => break,
        };
        entries.push(Entry { path, mode, kind });
    }
    (!entries.is_empty()).then_some(Manifest { entries })
}

fn file_kind(content: &[u8]) -> Kind {
    Kind::File {
        size: content.len() as u64,
        hash: manifest::content_hash(&Sha256::digest(content)),
    }
}

/// A small release with what a Next.js build has: nested directories, an
/// executable, an empty file, a path and a link target over 100 bytes (GNU long
/// names in the tar), links to a file, to a directory and up a level.
pub fn fixed_manifest() -> Manifest {
    let file = |path: &str, mode: u32, content: &[u8]| Entry {
        path: path.into(),
        mode,
        kind: file_kind(content),
    };
    let dir = |path: &str| Entry {
        path: path.into(),
        mode: 0o755,
        kind: Kind::Dir,
    };
    let link = |path: &str, target: &str| Entry {
        path: path.into(),
        mode: 0o777,
        kind: Kind::Symlink {
            target: target.into(),
        },
    };
    let long = format!("{}.js", "chunk-0123456789abcdef".repeat(5));
    let entries = vec![
        dir("app"),
        dir("app/.next"),
        file("app/.next/BUILD_ID", 0o644, b"build-1\n"),
        dir("app/.next/static"),
        file(&format!("app/.next/static/{long}"), 0o644, b"export {}\n"),
        file("app/.next/static/empty.css", 0o600, b""),
        dir("app/node_modules"),
        dir("app/node_modules/.bin"),
        link("app/node_modules/.bin/next", "../next/dist/bin/next"),
        dir("app/node_modules/next"),
        dir("app/node_modules/next/dist"),
        dir("app/node_modules/next/dist/bin"),
        file(
            "app/node_modules/next/dist/bin/next",
            0o755,
            b"#!/usr/bin/env node\n",
        ),
        // A target past tar's 100-byte name field; links must resolve in the release.
        dir(&format!("app/node_modules/next/dist/{}", "r".repeat(110))),
        link(
            "app/node_modules/react",
            &format!("next/dist/{}", "r".repeat(110)),
        ),
        file("app/server.js", 0o644, b"require('next')\n"),
        link("app/static", ".next/static"),
    ];
    Manifest { entries }
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Receives `frame` into a fresh staging directory, checks what landed, removes it.
fn receive_checked(frame: &[u8], manifest: &Manifest) -> bool {
    let parent = std::env::temp_dir().join(format!(
        "dropship-fuzz-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&parent);
    fs::create_dir(&parent).expect("create the fuzz directory");
    let staging = parent.join("staging");
    let mut input = frame;
    let result = receive::receive(
        &mut input,
        |_, _| Ok(()),
        manifest,
        &staging,
        &HashMap::new(),
    );
    let outside: Vec<_> = fs::read_dir(&parent)
        .expect("list the fuzz directory")
        .map(|e| e.expect("list the fuzz directory").file_name())
        .filter(|name| name != "staging")
        .collect();
    assert!(
        outside.is_empty(),
        "wrote outside the staging directory: {outside:?}"
    );
    if result.is_ok() {
        check_staged(&staging, manifest);
    }
    make_removable(&parent);
    fs::remove_dir_all(&parent).expect("remove the fuzz directory");
    result.is_ok()
}

/// The staging directory holds the manifest's entries, of their kinds and sizes, and nothing else.
fn check_staged(staging: &Path, manifest: &Manifest) {
    let root = staging
        .canonicalize()
        .expect("the staging directory exists");
    let expected = manifest.by_path();
    let mut found = 0;
    for item in walkdir::WalkDir::new(staging).min_depth(1) {
        let item = item.expect("walk the staging directory");
        let rel = item.path().strip_prefix(staging).expect("under staging");
        let rel = rel.to_str().expect("UTF-8 names");
        let Some(entry) = expected.get(rel) else {
            panic!("`{rel}` landed but is not in the manifest");
        };
        found += 1;
        let kind = item.file_type();
        match &entry.kind {
            Kind::Dir => assert!(kind.is_dir(), "`{rel}` should be a directory"),
            Kind::Symlink { .. } => {
                assert!(kind.is_symlink(), "`{rel}` should be a link");
                if let Ok(real) = item.path().canonicalize() {
                    assert!(real.starts_with(&root), "`{rel}` resolves to {real:?}");
                }
            }
            Kind::File { size, .. } => {
                assert!(kind.is_file(), "`{rel}` should be a file");
                let len = item.metadata().expect("stat").len();
                assert_eq!(len, *size, "`{rel}` has the wrong size");
            }
        }
    }
    assert_eq!(
        found,
        manifest.entries.len(),
        "entries missing from staging"
    );
}

/// Gives every directory under `dir` owner permissions, so it can be removed as any user.
fn make_removable(dir: &Path) {
    let dirs = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|item| item.ok())
        .filter(|item| item.file_type().is_dir());
    for item in dirs {
        let _ = fs::set_permissions(item.path(), fs::Permissions::from_mode(0o700));
    }
}

/// The seed corpus: `(target, file name, bytes)`, valid inputs that reach deep
/// into each target (the streams made by dropship's own packaging), and the
/// inputs of bugs found by fuzzing.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (i, text) in DOTENV_SEEDS.iter().enumerate() {
        seeds.push(("dotenv", format!("sample-{i}"), text.as_bytes().to_vec()));
    }
    let addon = sample_elf(
        62,
        &["libc.so.6", "libstdc++.so.6"],
        &["GLIBC_2.17", "GLIBC_2.28"],
    );
    seeds.push(("elf", "addon-x86_64".into(), addon));
    seeds.push((
        "elf",
        "musl-aarch64".into(),
        sample_elf(183, &["libc.musl-aarch64.so.1"], &[]),
    ));
    let fixed = fixed_manifest();
    let small = small_manifest();
    for (name, manifest) in [("fixed", &fixed), ("small", &small)] {
        let json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
        seeds.push(("manifest", format!("{name}.json"), json));
    }
    // Sizes adding up past `u64::MAX` (overflowed `total_bytes`); now refused.
    let hash = "0".repeat(32);
    let overflow = format!(
        r#"{{"entries":[{{"path":"a","mode":420,"type":"file","size":{big},"hash":"{hash}"}},{{"path":"b","mode":420,"type":"file","size":{big},"hash":"{hash}"}}]}}"#,
        big = 1u64 << 63
    );
    seeds.push(("manifest", "sizes-overflow.json".into(), overflow.into()));
    for (name, link) in [
        ("link-up", "a/b/c\n../../d/e"),
        ("link-bin", "node_modules/.bin/next\n../next/dist/bin/next"),
        (
            "link-pnpm",
            "node_modules/react\n.pnpm/react@19/node_modules/react",
        ),
        ("path", ".next/static/chunks/main.js"),
    ] {
        seeds.push(("manifest", name.to_owned(), link.as_bytes().to_vec()));
    }
    let fixed_frame = package(&fixed);
    let small_frame = package(&small);
    let tar = |frame: &[u8]| decompress(frame).expect("a packaged stream decompresses");
    for (name, mode, body) in [
        ("fixed-zstd", 0, fixed_frame.clone()),
        ("fixed-tar", 1, tar(&fixed_frame)),
        ("small-zstd", 2, small_frame.clone()),
        ("small-tar", 3, tar(&small_frame)),
        ("fixed-tar-derived", 3, tar(&fixed_frame)),
    ] {
        let mut input = vec![mode];
        input.extend_from_slice(&body);
        seeds.push(("stream", name.to_owned(), input));
    }
    seeds.extend(regressions());
    seeds
}

/// Stream inputs of bugs found by fuzzing (`src/agent/receive.rs` has their
/// tests); the ones named `refused-…` must be refused, the others accepted.
fn regressions() -> Vec<(&'static str, String, Vec<u8>)> {
    // A file whose time, in base-256, is past what `SystemTime` holds (was a panic).
    let mut tar = tar::Builder::new(vec![3]);
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(1);
    header.set_mtime(u64::MAX);
    tar.append_data(&mut header, "a", &b"x"[..])
        .expect("append to a tar in memory");
    let mtime = tar.into_inner().expect("finish a tar in memory");
    // A GNU long name of 300 MiB of zeros, 10 KiB compressed (was read whole into memory).
    let mut bomb = vec![0];
    let mut encoder =
        zstd::stream::write::Encoder::new(&mut bomb, 3).expect("zstd compresses in memory");
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_size(1 << 40);
    header.set_cksum();
    std::io::Write::write_all(&mut encoder, header.as_bytes()).expect("compress in memory");
    std::io::copy(&mut std::io::repeat(0).take(300 << 20), &mut encoder)
        .expect("compress in memory");
    encoder.finish().expect("compress in memory");
    vec![
        ("stream", "mtime-past-range".to_owned(), mtime),
        ("stream", "refused-long-name-bomb".to_owned(), bomb),
    ]
}

const DOTENV_SEEDS: &[&str] = &[
    "# production\nDATABASE_URL=postgres://app@db:5432/app\nexport NODE_ENV=production\n  PORT = 3000  \nEMPTY=\n",
    "COLOR=#fff\nA=value # comment\nB='single $HOME \\n'\nC=\"double\\n\\t\\\"q\\\" \\$X \\\\\"\n",
    "KEY=\"-----BEGIN KEY-----\nabc\n-----END KEY-----\"\r\nMULTI='line one\nline two'\r\n",
    "A=1\nB=2\nA=3\nexport=x\n\t# indented comment\n",
    "BAD-KEY=1\n",
    "A=\"unterminated\n",
];

/// A second release, to derive manifests from: top-level files and links, a link chain.
fn small_manifest() -> Manifest {
    let entries = vec![
        Entry {
            path: "a".into(),
            mode: 0o700,
            kind: Kind::Dir,
        },
        Entry {
            path: "a/x".into(),
            mode: 0o644,
            kind: file_kind(b"x\n"),
        },
        Entry {
            path: "b".into(),
            mode: 0o777,
            kind: Kind::Symlink { target: "a".into() },
        },
        Entry {
            path: "c".into(),
            mode: 0o777,
            kind: Kind::Symlink {
                target: "b/x".into(),
            },
        },
        Entry {
            path: "run.sh".into(),
            mode: 0o755,
            kind: file_kind(b"#!/bin/sh\nexec node server.js\n"),
        },
    ];
    Manifest { entries }
}

/// The release stream of `manifest`, made by dropship's own packaging from a
/// tree written here (file contents are those [`fixed_manifest`] hashed).
fn package(manifest: &Manifest) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!(
        "dropship-fuzz-seed-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let contents = seed_contents();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).expect("create the seed directory");
    for entry in &manifest.entries {
        let path = dir.join(&entry.path);
        match &entry.kind {
            Kind::Dir => fs::create_dir(&path).expect("create a seed directory"),
            Kind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &path).expect("create a seed link");
            }
            Kind::File { hash, .. } => {
                fs::write(&path, contents[hash.as_str()]).expect("write a seed file");
            }
        }
        if !matches!(entry.kind, Kind::Symlink { .. }) {
            fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode))
                .expect("chmod a seed entry");
        }
    }
    let spec = crate::package::SourceSpec {
        working_directory: dir.clone(),
        source: Some(PathBuf::from(".")),
        exclude: Vec::new(),
    };
    let release = crate::package::assemble(&spec).expect("the seed tree packages");
    assert_eq!(
        &release.manifest, manifest,
        "packaging changed the manifest"
    );
    let frame = crate::package::write_archive(
        &release,
        Vec::new(),
        &crate::package::split(&release, None, 1)[0],
        1,
    )
    .expect("the seed tree streams");
    fs::remove_dir_all(&dir).expect("remove the seed directory");
    frame
}

/// The contents of the seed files, by their hash.
fn seed_contents() -> HashMap<String, &'static [u8]> {
    let all: [&'static [u8]; 7] = [
        b"build-1\n",
        b"export {}\n",
        b"",
        b"#!/usr/bin/env node\n",
        b"require('next')\n",
        b"x\n",
        b"#!/bin/sh\nexec node server.js\n",
    ];
    all.into_iter()
        .map(|content| match file_kind(content) {
            Kind::File { hash, .. } => (hash, content),
            _ => unreachable!(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_run_clean_and_the_valid_streams_are_accepted() {
        for (target, name, input) in seeds() {
            match target {
                "dotenv" => dotenv(&input),
                "manifest" => manifest(&input),
                "elf" => {
                    elf(&input);
                    assert!(
                        crate::preflight::elf::read(&input[..]).is_ok(),
                        "elf seed {name}"
                    );
                }
                _ => {
                    let accepted = stream_outcome(&input);
                    let expect_ok = !name.starts_with("refused-");
                    assert_eq!(accepted, Some(expect_ok), "stream seed {name}");
                }
            }
        }
    }

    /// `bin/fuzz --seeds`: rewrites `fuzz/corpus/<target>/` from [`seeds`].
    #[test]
    #[ignore = "writes the seed corpus; run by `bin/fuzz --seeds`"]
    fn write_seed_corpus() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (target, name, input) in seeds() {
            let dir = corpus.join(target);
            fs::create_dir_all(&dir).expect("create the corpus directory");
            fs::write(dir.join(name), input).expect("write a seed");
        }
    }
}
