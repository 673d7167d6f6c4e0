//! dropship's integration tests: the real binary against a real OpenSSH sshd
//! on 127.0.0.1, with trees shaped like real Next.js standalone builds.

mod support;
mod test;

// First deploy, redeploy, rollback, pruning, dry run, `local`, monorepo layout.
mod deploy;
// Host-key pinning and key authentication over SSH.
mod ssh;
// The agent refusing hostile streams and manifests.
mod agent;
// Starting releases with PM2, health checks, blue-green through nginx.
mod activate;
// Releases run as systemd user units by a real `systemd --user`.
mod systemd;
// A real Next.js standalone build (npm), blue-green behind nginx.
mod nextjs;
// Files an app rewrites in its release (Next.js 14 ISR) reach no other release.
mod isr;
// Several hosts in one deploy: all-at-once and rolling.
mod hosts;
// Two deploys to one host at once.
mod lock;
// `dropship package` and source detection errors.
mod package;
// The GitHub Action face: options from INPUT_* variables.
mod action;
// Issue 6: cut connections, killed clients and agents, full disks, hostile input.
mod faults;
