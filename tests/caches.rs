//! Next.js's runtime caches (`.next/cache/images`, `.next/cache/fetch-cache`)
//! carried from the live release into the next one: copied, never linked, and
//! never the prerendered pages of another build.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::isr::regenerate;
use crate::support::sshd::Sshd;
use crate::support::{fixture, nextapp, tree};
use crate::test::Test;

/// The fixture's photo, resized by the optimizer to a width it allows.
const IMAGE: &str = "/_next/image?url=%2Fimages%2Fgradient.png&w=256&q=75";

/// A response: status line, headers (names lower-cased) and body.
struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// GET `path` from 127.0.0.1:`port` as a browser that takes WebP.
fn get(port: u16, path: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: test\r\nAccept: image/webp,*/*\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: response[split + 4..].to_vec(),
    }
}

/// The files under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(dir).unwrap().to_path_buf())
        .collect();
    files.sort();
    files
}

/// Waits until the optimizer has written its entry under `cache` and the file
/// is old enough to be kept (the agent leaves out files written in the last 2 s).
fn settled_entry(cache: &Path) -> PathBuf {
    let started = Instant::now();
    loop {
        if let Some(file) = files_under(cache).first() {
            let age = fs::metadata(cache.join(file))
                .unwrap()
                .modified()
                .unwrap()
                .elapsed()
                .unwrap_or_default();
            if age > Duration::from_millis(2500) {
                return file.clone();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no settled image cache entry under {}",
            cache.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn next14_an_optimized_image_is_a_miss_in_the_first_release_and_a_hit_in_the_next() {
    let site = nextapp::SshSite::new("next14");
    let (expected, remote, port) = (&site.expected, &site.remote, site.port);
    let deploy = |release: &str| site.deploy(release);
    deploy("a");
    let started = Instant::now();
    let first = get(port, IMAGE);
    let miss = started.elapsed();
    assert!(first.status.contains(" 200"), "{}", first.status);
    assert_eq!(first.header("content-type"), "image/webp");
    assert_eq!(first.header("x-nextjs-cache"), "MISS");
    let a_cache = remote.join("releases/a/.next/cache/images");
    let entry = settled_entry(&a_cache);

    let out = deploy("b");
    let started = Instant::now();
    let again = get(port, IMAGE);
    eprintln!(
        "optimized image: MISS in a {} ms, HIT in b {} ms",
        miss.as_millis(),
        started.elapsed().as_millis()
    );
    assert!(again.status.contains(" 200"), "{}", again.status);
    assert_eq!(again.header("content-type"), "image/webp");
    assert_eq!(again.header("x-nextjs-cache"), "HIT");
    assert_eq!(again.body, first.body);
    let kept = out
        .stderr
        .lines()
        .find(|l| l.contains("kept the Next.js caches of `a`: 1 file, "))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    eprintln!("{kept}");
    let b_cache = remote.join("releases/b/.next/cache/images");

    // A copy of its own in `b`: writable, never an inode of `a`.
    let (a_file, b_file) = (a_cache.join(&entry), b_cache.join(&entry));
    let b_meta = fs::metadata(&b_file).unwrap();
    assert_ne!(fs::metadata(&a_file).unwrap().ino(), b_meta.ino());
    assert_eq!(b_meta.mode() & 0o200, 0o200, "{}", b_file.display());
    let a_before = tree::snapshot(&remote.join("releases/a"));

    // ISR still renders in `b`, into `b` only; `a` holds its build and its cache.
    regenerate(port, &remote.join("releases/b/.next/server/app/isr.html"));
    assert_eq!(tree::snapshot(&remote.join("releases/a")), a_before);
    assert_eq!(
        fs::read(remote.join("releases/a/.next/server/app/isr.html")).unwrap(),
        fs::read(expected.join(".next/server/app/isr.html")).unwrap()
    );
}

/// Puts a Next.js-shaped cache entry in the live release `r1` of `remote`,
/// written an hour ago.
fn plant_caches(release: &Path) -> SystemTime {
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for (path, content) in [
        (".next/cache/images/KEY/60.1700000000000.ETAG.webp", "webp"),
        (".next/cache/fetch-cache/0123abcd", r#"{"kind":"FETCH"}"#),
    ] {
        let file = release.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, content).unwrap();
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    hour_ago
}

#[test]
fn the_caches_of_the_live_release_are_copied_with_their_times_and_images_only_while_public_is_unchanged()
 {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("srv/app");
    let v1 = fixture::nextjs_app(work.path(), "v1");
    Test::deploy_over_ssh(&sshd, &v1, &remote)
        .args(["--release", "r1"])
        .success();
    let hour_ago = plant_caches(&remote.join("releases/r1"));

    let out = Test::deploy_over_ssh(&sshd, &v1, &remote)
        .args(["--release", "r2"])
        .success();
    assert!(
        out.stderr
            .contains(": kept the Next.js caches of `r1`: 2 files, 0.0 MB copied in "),
        "{}",
        out.stderr
    );
    for path in [
        ".next/cache/images/KEY/60.1700000000000.ETAG.webp",
        ".next/cache/fetch-cache/0123abcd",
    ] {
        let (r1, r2) = (
            fs::metadata(remote.join("releases/r1").join(path)).unwrap(),
            fs::metadata(remote.join("releases/r2").join(path)).unwrap(),
        );
        assert_ne!(r1.ino(), r2.ino(), "{path}");
        assert_eq!(r2.modified().unwrap(), hour_ago, "{path}");
    }

    // v2 changes public/images/big.bin: a cached optimized image of that URL
    // could be of the old file, so the image cache starts empty.
    let v2 = fixture::nextjs_app(work.path(), "v2");
    let out = Test::deploy_over_ssh(&sshd, &v2, &remote)
        .args(["--release", "r3"])
        .success();
    let note = "; not .next/cache/images: `public/images/big.bin` changed, and optimized images are cached by URL";
    assert!(
        out.stderr
            .contains(": kept the Next.js caches of `r2`: 1 file, ")
            && out.stderr.lines().any(|l| l.ends_with(note)),
        "{}",
        out.stderr
    );
    assert!(!remote.join("releases/r3/.next/cache/images").exists());
    assert!(
        remote
            .join("releases/r3/.next/cache/fetch-cache/0123abcd")
            .is_file()
    );
}
