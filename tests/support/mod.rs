//! Shared helpers for the integration tests: a throw-away OpenSSH server per
//! test, a fake Next.js `output: 'standalone'` build, and directory-tree
//! snapshots for comparing what was deployed with what was expected.

#![allow(dead_code)]

pub mod fake_github;
pub mod fixture;
pub mod mount;
pub mod nextapp;
pub mod process;
pub mod proxy;
pub mod runtime;
pub mod site;
pub mod sshd;
pub mod systemd;
pub mod tree;
