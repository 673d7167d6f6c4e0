//! What the client's child processes inherit: the ordinary environment, minus
//! dropship's own secrets. The `build` command (and every npm script it runs)
//! and the `host: local` agent (and PM2, which saves its environment in
//! `~/.pm2/dump.pm2`, mode 0644) never see the key, its passphrase, the raw
//! `env` text or any `INPUT_*` variable of the Action.

use std::ffi::OsStr;
use std::process::Command;

/// Variables that hold dropship's secrets, besides every `INPUT_*` (the Action's
/// inputs: `key`, `key-passphrase`, `github-token`, `env`…).
const SECRETS: &[&str] = &["DROPSHIP_KEY", "DROPSHIP_KEY_PASSPHRASE", "DROPSHIP_ENV"];

/// CI credentials that an app on this machine has no use for; the build keeps
/// them (a build may install private packages with the `GITHUB_TOKEN` a
/// workflow put in its environment, or read from S3 with the AWS credentials
/// that aws-actions/configure-aws-credentials exported for the deploy).
const CI_CREDENTIALS: &[&str] = &[
    "GITHUB_TOKEN",
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
];

/// Removes dropship's secrets from what `command` inherits.
pub fn for_build(command: &mut Command) -> &mut Command {
    remove(command, is_secret)
}

/// Removes dropship's secrets and the CI's credentials from what the local
/// agent inherits: it gets what an agent started over SSH would, a login
/// environment without anything of the CI job's.
pub fn for_agent(command: &mut Command) -> &mut Command {
    remove(command, |name| {
        is_secret(name) || CI_CREDENTIALS.contains(&name)
    })
}

fn is_secret(name: &str) -> bool {
    name.starts_with("INPUT_") || SECRETS.contains(&name)
}

fn remove(command: &mut Command, drop: impl Fn(&str) -> bool) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(&drop) {
            command.env_remove::<&OsStr>(&name);
        }
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_inputs_go_the_ci_token_goes_to_the_build_only() {
        for name in [
            "INPUT_KEY",
            "INPUT_KEY-PASSPHRASE",
            "INPUT_GITHUB-TOKEN",
            "INPUT_HOST",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in SECRETS {
            assert!(is_secret(name), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "GITHUB_TOKEN",
            "DROPSHIP_RELEASE",
            "NPM_TOKEN",
        ] {
            assert!(!is_secret(name), "{name}");
        }
        for name in ["GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
            assert!(CI_CREDENTIALS.contains(&name), "{name}");
        }
    }
}
