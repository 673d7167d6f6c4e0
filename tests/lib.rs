//! dropship's integration tests: the real binary against a real OpenSSH sshd
//! on 127.0.0.1, with trees shaped like real Next.js standalone builds.
//!
//! Conventions (every test here follows them):
//! - A test that cannot run here must not pass: libtest has no skip at run time, so a
//!   test that needs root is marked `#[ignore = "needs root: <why>"]` (libtest prints
//!   the reason) and calls `support::assert_root` (or a helper that does) first.
//!   `bin/test` includes these when it runs as root (CI does) and counts them as skipped
//!   otherwise. No test is `#[ignore]`d for any other reason; a missing tool fails the
//!   test with its name (bin/test installs the tools, or says which ones to install).
//! - Exit statuses are asserted exactly (`Test::status(1)`, `.success()`), as SPEC gives
//!   them: 0 done, 1 failed and put back, 2 bad input, 3 lock timeout.
//! - The texts of the commonest failures are pinned whole in `errors.rs`.

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
// Skew protection: earlier releases' `.next/static` kept in the live one.
mod skew;
// Next.js's image and fetch caches carried into the next release, copied.
mod caches;
// Several hosts in one deploy: all-at-once and rolling.
mod hosts;
// The EC2 fleet harness: hosts in network namespaces, moto's server, IAM enforcement.
mod fleet;
// Two deploys to one host at once.
mod lock;
// `dropship package` and source detection errors.
mod package;
// The GitHub Action face: options from INPUT_* variables.
mod action;
// Issue 6: cut connections, killed clients and agents, full disks, hostile input.
mod faults;
// The whole text of the commonest failures, pinned.
mod errors;
// Issue 10: errors after the switch, an out-of-date PM2, damaged port lists.
mod switch;
// The agent for the server's CPU, gzipped on the wire; no agent, no deploy.
mod agents;
// Shipped `shared` paths (a committed `.env`) and read-only build directories.
mod shared;
// EC2 fleets: hosts from EC2 filters, target groups drained and health-gated,
// SSH opened for the runner only; moto's server and network-namespace hosts.
mod ec2;
