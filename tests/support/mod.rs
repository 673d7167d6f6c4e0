//! Shared helpers for the integration tests: a throw-away OpenSSH server per
//! test, a fake Next.js `output: 'standalone'` build, and directory-tree
//! snapshots for comparing what was deployed with what was expected; for the EC2
//! tests, hosts in network namespaces (`netns`) and moto's server (`moto`).

#![allow(dead_code)]

pub mod addon;
pub mod browser;
pub mod fake_github;
pub mod fixture;
pub mod moto;
pub mod mount;
pub mod netns;
pub mod nextapp;
pub mod process;
pub mod proxy;
pub mod runtime;
pub mod site;
pub mod sshd;
pub mod systemd;
pub mod tree;

/// Fails the test unless it runs as root. For the tests marked
/// `#[ignore = "needs root: …"]` (see tests/lib.rs), so that one included by hand as
/// another user fails saying why instead of passing without having run.
#[track_caller]
pub fn assert_root(why: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test needs root ({why}): run it as root, where bin/test includes it"
    );
}
