//! Files an app writes inside its own release never reach another release,
//! and a later deploy never reuses a file that no longer matches its manifest:
//! a real Next.js 14 app whose ISR page is rewritten in place while it runs,
//! and files changed by hand in the live release.

use std::fs;
use std::io::{Read, Seek, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::sshd::Sshd;
use crate::support::{fixture, nextapp, tree};
use crate::test::{Output, Test};

const ISR_HTML: &str = ".next/server/app/isr.html";

/// GET `path` from 127.0.0.1:`port`; the status line (empty when nothing answered).
fn status_of(port: u16, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or("").to_owned()
}

/// Requests the ISR page until Next.js has rendered it again and written the
/// new HTML over `file` (its 1 s revalidate window makes a request after it
/// trigger a background render); panics when that does not happen in 60 s.
pub(crate) fn regenerate(port: u16, file: &Path) {
    let before = fs::read(file).unwrap();
    let inode = fs::metadata(file).unwrap().ino();
    let started = Instant::now();
    while fs::read(file).unwrap() == before {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Next.js did not rewrite {} within 60 s",
            file.display()
        );
        let status = status_of(port, "/isr");
        assert!(status.contains(" 200"), "GET /isr: `{status}`");
        std::thread::sleep(Duration::from_millis(1200));
    }
    // The fault this test is about: the same inode, rewritten in place.
    assert_eq!(
        fs::metadata(file).unwrap().ino(),
        inode,
        "{}",
        file.display()
    );
}

#[test]
fn next14_isr_rewrites_in_the_live_release_reach_no_other_release() {
    let site = nextapp::SshSite::new("next14");
    let (expected, remote, port) = (&site.expected, &site.remote, site.port);
    let deploy = |release: &str| site.deploy(release);
    deploy("a");
    // The same build again: every file of `b` is already on the host, in `a`.
    deploy("b");
    regenerate(port, &remote.join("releases/b").join(ISR_HTML));

    // The rollback target did not change because `b` ran.
    tree::assert_same_tree(expected, &remote.join("releases/a"));
    // The next deploy works, and holds the build, not what `b` rendered since.
    deploy("c");
    tree::assert_same_tree(expected, &remote.join("releases/c"));
    regenerate(port, &remote.join("releases/c").join(ISR_HTML));
    tree::assert_same_tree(expected, &remote.join("releases/a"));
    assert_ne!(
        fs::read(remote.join("releases/b").join(ISR_HTML)).unwrap(),
        fs::read(remote.join("releases/c").join(ISR_HTML)).unwrap(),
        "`b` and `c` each keep what they rendered"
    );
}

/// Overwrites `path` in place (same inode) with `content`.
fn overwrite_in_place(path: &Path, content: &[u8]) {
    let mut file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.rewind().unwrap();
    file.write_all(content).unwrap();
    file.set_len(content.len() as u64).unwrap();
}

/// Deploys the fake Next.js fixture as `r1`, lets `change` alter the live
/// release, and deploys the same build as `r2`, which must hold the build.
fn redeploy_after(change: impl FnOnce(&Path)) -> (Output, tempfile::TempDir) {
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let app = fixture::nextjs_app(work.path(), "v1");
    let expected = fixture::expected_release(&app, &work.path().join("expected"));
    let remote = work.path().join("srv/app");
    Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--release", "r1"])
        .success();
    change(&remote.join("releases/r1"));
    let out = Test::deploy_over_ssh(&sshd, &app, &remote)
        .args(["--release", "r2"])
        .success();
    tree::assert_same_tree_except(&expected, &remote.join("releases/r2"), &[".env"]);
    (out, work)
}

#[test]
fn a_file_changed_in_place_with_its_size_kept_is_sent_again_not_linked() {
    let (out, work) = redeploy_after(|r1| {
        let robots = r1.join("public/robots.txt");
        let len = fs::metadata(&robots).unwrap().len() as usize;
        overwrite_in_place(&robots, &vec![b'#'; len]);
    });
    let remote = work.path().join("srv/app");
    let ino = |r: &str| {
        fs::metadata(remote.join(r).join("public/robots.txt"))
            .unwrap()
            .ino()
    };
    assert_ne!(ino("releases/r1"), ino("releases/r2"));
    let note = format!(
        ": 1 file of an earlier release changed on the server after it was deployed, so it is not reused: `{}/releases/r1/public/robots.txt`; files the app writes at runtime belong in `shared`",
        remote.display()
    );
    assert!(
        out.stderr.lines().any(|line| line.ends_with(&note)),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("1 of 22 files are new"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_file_that_grew_in_the_live_release_does_not_fail_the_next_deploy() {
    redeploy_after(|r1| {
        let server = r1.join("server.js");
        let mut content = fs::read(&server).unwrap();
        content.extend_from_slice(b"// changed on the server\n");
        overwrite_in_place(&server, &content);
    });
}
