//! `doctor` on the server: read-only checks of what a deploy will need, each
//! with the fix to apply when it fails.

use std::path::Path;
use std::process::{Command, Stdio};

use super::store::Store;
use super::systemd::{self, UserManager};
use super::tools;
use crate::protocol::{Check, ProcessManager, RunSpec, Strategy};

/// Free space below which a deploy is likely to fail.
const LOW_DISK: u64 = 500 << 20;

/// Runs every check that applies to `run`.
pub fn checks(store: &Store, root: &str, run: &RunSpec) -> Vec<Check> {
    let mut checks = vec![disk(store), writable(root)];
    match run.process_manager {
        ProcessManager::Pm2 => checks.push(node_tools()),
        ProcessManager::Systemd => checks.extend([node(), user_manager(), linger()]),
        ProcessManager::None => {}
    }
    if run.strategy == Strategy::BlueGreen {
        checks.push(nginx_includes(run));
        checks.push(reload_allowed(&run.nginx_reload));
    }
    checks
}

fn check(name: &str, ok: bool, detail: String, fix: &str) -> Check {
    Check {
        name: name.into(),
        ok,
        detail,
        fix: (!ok).then(|| fix.to_owned()),
    }
}

fn disk(store: &Store) -> Check {
    let free = store.free_bytes();
    check(
        "disk space",
        free >= LOW_DISK,
        format!("{} MB free under remote-path", free >> 20),
        "free some space (old logs, `docker system prune`, old releases) or lower `keep-releases`",
    )
}

fn writable(root: &str) -> Check {
    let mut dir = Path::new(root);
    while !dir.exists() {
        match dir.parent() {
            Some(parent) => dir = parent,
            None => break,
        }
    }
    let probe = dir.join(format!(".dropship-doctor.{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    check(
        "remote-path writable",
        ok,
        format!(
            "{} {} writable by the deploy user",
            dir.display(),
            if ok { "is" } else { "is not" }
        ),
        &format!(
            "create it once for the deploy user: `sudo mkdir -p {root} && sudo chown $USER: {root}`"
        ),
    )
}

fn node_tools() -> Check {
    match tools::find() {
        Ok(found) => check(
            "node and pm2",
            true,
            format!(
                "node in {}, pm2 at {}",
                found.node_dir.display(),
                found.pm2.display()
            ),
            "",
        ),
        Err(err) => check(
            "node and pm2",
            false,
            err.to_string(),
            &err.hint().unwrap_or_default(),
        ),
    }
}

fn node() -> Check {
    match tools::find_node() {
        Ok(dir) => check("node", true, format!("node in {}", dir.display()), ""),
        Err(err) => check(
            "node",
            false,
            err.to_string(),
            &err.hint().unwrap_or_default(),
        ),
    }
}

fn user_manager() -> Check {
    match UserManager::detect().check() {
        Ok(version) => check(
            "systemd user manager",
            true,
            format!("`systemctl --user` reaches systemd {version}"),
            "",
        ),
        Err(err) => check(
            "systemd user manager",
            false,
            err.to_string(),
            &err.hint().unwrap_or_default(),
        ),
    }
}

fn linger() -> Check {
    let user = systemd::user_name();
    let file = systemd::linger_file(&user);
    let ok = file.exists();
    check(
        "lingering",
        ok,
        format!(
            "{} {}: {user}'s systemd {}",
            file.display(),
            if ok { "exists" } else { "does not exist" },
            if ok {
                "starts at boot and runs without a login"
            } else {
                "stops with the last SSH session, and the app with it"
            }
        ),
        &format!(
            "as root, run `sudo loginctl enable-linger {user}` once, so the live release keeps running and comes back after a reboot"
        ),
    )
}

fn nginx_includes(run: &RunSpec) -> Check {
    let found = std::fs::read_dir("/etc/nginx")
        .map(|_| grep_dir(Path::new("/etc/nginx"), &run.nginx_upstream, 0))
        .unwrap_or(false);
    check(
        "nginx includes the upstream",
        found,
        format!(
            "{} {} mentioned under /etc/nginx",
            run.nginx_upstream,
            if found { "is" } else { "is not" }
        ),
        &format!(
            "in the `http` context add `include {};` and in your server block `location / {{ proxy_pass http://{}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}` (see README, blue-green set-up)",
            run.nginx_upstream, run.app
        ),
    )
}

fn grep_dir(dir: &Path, needle: &str, depth: usize) -> bool {
    if depth > 4 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            grep_dir(&path, needle, depth + 1)
        } else {
            std::fs::read_to_string(&path).is_ok_and(|text| text.contains(needle))
        }
    })
}

fn reload_allowed(command: &str) -> Check {
    let Some(rest) = command.strip_prefix("sudo -n ") else {
        return check(
            "nginx reload allowed",
            true,
            format!("`{command}` does not use sudo; it will be run as the deploy user"),
            "",
        );
    };
    let allowed = Command::new("sh")
        .arg("-c")
        .arg(format!("sudo -n -l {rest}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    check(
        "nginx reload allowed",
        allowed,
        format!(
            "`{command}` {} without a password",
            if allowed { "runs" } else { "cannot run" }
        ),
        "run `sudo visudo -f /etc/sudoers.d/dropship` and add `deploy ALL=(root) NOPASSWD: /usr/sbin/nginx -s reload` (with your deploy user)",
    )
}
