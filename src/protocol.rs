//! The wire format between the client and the agent on the server.
//!
//! The client writes one JSON [`Request`] line on the agent's stdin; for a deploy
//! it then writes the release as one zstd-compressed tar stream, followed by
//! [`Command`] lines. The agent answers with one JSON [`Event`] per line on stdout.
//! Nothing secret ever travels on a command line: everything is on stdin.

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;

/// Bumped on any incompatible change; the agent refuses other versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// What the client asks the agent to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Receive a release, stage it, then activate it on command.
    Deploy(DeployRequest),
    /// Point `current` at an earlier release.
    Rollback(RollbackRequest),
    /// List the releases on the host.
    Releases(Target),
    /// Check the host's set-up and say how to fix it.
    Doctor(DoctorRequest),
}

/// What `doctor` checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoctorRequest {
    /// Where.
    pub target: Target,
    /// How releases would run.
    pub run: RunSpec,
}

/// One finding of `doctor`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it is fine.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it, when not fine.
    pub fix: Option<String>,
}

/// Where on the host, and on whose behalf.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Protocol version the client speaks.
    pub protocol: u32,
    /// The app's base directory (`remote-path`).
    pub root: String,
    /// Who deploys, for the lock and the release log (e.g. `alice@laptop`).
    pub by: String,
    /// Seconds to wait for another deploy's lock.
    pub lock_timeout_secs: u64,
    /// Look only: take no lock, change nothing.
    pub dry_run: bool,
}

/// A new release to receive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// Where, and on whose behalf.
    pub target: Target,
    /// The new release's id.
    pub release: String,
    /// Every entry the stream will carry.
    pub manifest: Manifest,
    /// Paths kept across releases in `shared/` and linked into each release.
    pub shared: Vec<String>,
    /// Finished releases to keep.
    pub keep_releases: usize,
    /// Earlier releases whose `.next/static` files the new one also holds (0: none).
    #[serde(default)]
    pub keep_assets: usize,
    /// Seconds of silence from the client after which the agent gives up.
    pub idle_timeout_secs: u64,
    /// Where `server.js` sits inside the release (`.` at the top).
    pub server_dir: String,
    /// How the release is run and switched.
    pub run: RunSpec,
    /// New content of `shared/.env` (dotenv text), written at activation; `None` keeps it.
    pub env: Option<String>,
}

/// How releases are started, checked and switched on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Name of the app: process names and the nginx upstream.
    pub app: String,
    /// Who keeps the app running.
    pub process_manager: ProcessManager,
    /// How the app starts inside its release directory (a shell command).
    pub start: String,
    /// How traffic moves to the new release.
    pub strategy: Strategy,
    /// One port (`restart`) or two (`blue-green`).
    pub ports: Vec<u16>,
    /// HTTP path checked before the release gets traffic.
    pub health_path: String,
    /// Seconds the new release has to answer 2xx/3xx.
    pub health_timeout_secs: u64,
    /// File rewritten with the live upstream (`blue-green`).
    pub nginx_upstream: String,
    /// Command that reloads nginx gracefully (`blue-green`).
    pub nginx_reload: String,
}

/// Who keeps the app running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessManager {
    /// PM2, found in the server's usual Node locations.
    Pm2,
    /// systemd user units (`systemctl --user`) of the deploy user.
    Systemd,
    /// Nothing: dropship places files and switches `current` only.
    None,
}

/// How traffic moves to a new release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the old process, start the new one on the same port.
    Restart,
    /// Start the new one on the idle port, check it, switch nginx, drain, stop the old one.
    BlueGreen,
}

/// Which release to go back to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// Where, and on whose behalf.
    pub target: Target,
    /// The release to make live; `None` means the one before the live one.
    pub to: Option<String>,
    /// How the release is run and switched.
    pub run: RunSpec,
    /// Whether the user gave `run` (else the agent uses what the last deploy used, when known).
    pub run_given: bool,
}

/// What the client tells the agent around the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// The release follows, in `parts` zstd frames: the first right after this
    /// line, the others through [`Join`] connections.
    Stream {
        /// How many parts the client sends (1 to [`MAX_PARTS`]).
        parts: u32,
    },
    /// Make the staged release live.
    Activate,
    /// Keep the activated release: log it and prune old ones.
    Commit,
    /// Go back to what was live before.
    Revert,
}

/// The most parts a release stream may be split into.
pub const MAX_PARTS: u32 = 8;

/// How a part of the release stream reaches the agent: `dropship agent-part`,
/// started on another SSH channel, connects to `socket` and passes on its
/// stdin, which starts with the line `<token>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// A Unix socket under `remote-path`, owned by the agent.
    pub socket: String,
    /// A random value the part must start with (the socket's directory is
    /// private already; this also keeps out strays).
    pub token: String,
}

/// What the agent tells the client, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// First line the agent prints.
    Hello {
        /// The agent's version.
        version: String,
        /// The protocol it speaks.
        protocol: u32,
    },
    /// Another deploy holds the lock; sent every few seconds while waiting.
    Waiting {
        /// Who holds it, as its lock file says.
        holder: String,
        /// Seconds waited so far.
        waited_secs: u64,
    },
    /// The lock is held and the release may be sent.
    Ready {
        /// Manifest indices of the files to send; `None` means all. The others
        /// are already on the host (same content and mode, unchanged since they
        /// were committed) and are hard-linked, or copied where the app may write.
        send: Option<Vec<u32>>,
        /// Free bytes on the filesystem of `remote-path`.
        free_bytes: u64,
        /// The live release, if any.
        live: Option<String>,
        /// Where further parts of the stream may come in; `None` when they cannot.
        #[serde(default)]
        join: Option<Join>,
        /// What the release must run on (checked by the client before it sends anything).
        #[serde(default)]
        platform: Option<Platform>,
    },
    /// What a dry run would do.
    Plan {
        /// The live release, if any.
        live: Option<String>,
        /// Releases that would be removed.
        would_prune: Vec<String>,
        /// Free bytes on the filesystem of `remote-path`.
        free_bytes: u64,
        /// What the release must run on (`None` for a rollback).
        #[serde(default)]
        platform: Option<Platform>,
    },
    /// Every file arrived, matched the manifest and is on disk.
    Staged {
        /// Files written from the stream.
        files: u64,
        /// Files hard-linked or copied from releases already on the host.
        reused: u64,
        /// Bytes of file content written.
        bytes: u64,
        /// The release directory.
        path: String,
    },
    /// A step of activation (starting, health check, nginx switch, drain, stop).
    Progress {
        /// What happened.
        message: String,
    },
    /// `current` points at `release` now.
    Activated {
        /// The release now live.
        release: String,
        /// The release live before, if any.
        previous: Option<String>,
    },
    /// `current` points back at what was live before.
    Reverted {
        /// The release live again, if any.
        live: Option<String>,
    },
    /// The operation is complete.
    Done {
        /// Releases removed by pruning.
        pruned: Vec<String>,
        /// The agent's peak resident memory, in bytes.
        peak_rss_bytes: u64,
    },
    /// What `doctor` found.
    Checks {
        /// One per check.
        checks: Vec<Check>,
    },
    /// The releases on the host, oldest first.
    Releases {
        /// One per release directory.
        releases: Vec<ReleaseInfo>,
    },
    /// The operation failed; the agent exits after this line.
    Failed(Failure),
}

/// The server as a release must fit it: its CPU, its C library and its Node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// The CPU, as `uname -m` prints it (`x86_64`, `aarch64`).
    pub arch: String,
    /// The C library programs and addons link against.
    pub libc: Libc,
    /// The Node the app runs with.
    pub node: NodeRuntime,
}

/// The server's C library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Libc {
    /// GNU libc, with its version (`2.36`).
    Glibc {
        /// `major.minor`.
        version: String,
    },
    /// musl libc (Alpine).
    Musl,
    /// Neither could be found.
    Unknown,
}

/// The Node the app would run with, as the agent found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRuntime {
    /// `node --version` printed this (`v20.11.1`).
    Version(String),
    /// No `node` was found where the agent looks.
    Missing,
    /// `node` is there but does not run: what it printed.
    Broken(String),
}

/// One release as `releases` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// The release id.
    pub release: String,
    /// When it was received (seconds since the Unix epoch).
    pub created: u64,
    /// Files in it (0 when unknown).
    pub files: u64,
    /// Bytes of file content (0 when unknown).
    pub bytes: u64,
    /// Whether `current` points at it.
    pub live: bool,
}

/// A failure as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Decides the client's exit status.
    pub kind: FailureKind,
    /// What failed.
    pub message: String,
    /// What to do next.
    pub hint: Option<String>,
}

/// The class of a failure, which decides the exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Bad input; nothing was changed.
    BadInput,
    /// Another deploy held the lock too long.
    Locked,
    /// Anything else; what was live stays live.
    Failed,
}

impl Failure {
    /// A failure of the given kind.
    pub fn new(kind: FailureKind, message: impl Into<String>, hint: Option<&str>) -> Self {
        Failure {
            kind,
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }
}

/// A release id is 1–128 characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub fn check_release_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "release id `{}` must be 1-128 characters of letters, digits, `.`, `_` and `-`, not starting with `.` or `-`",
            id.escape_debug()
        ))
    }
}

/// Directories that must never be a `remote-path`: dropship would own them.
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/www",
    "/var/lib",
    "/var/log",
    "/usr/local",
];

/// A `remote-path` must be absolute, normalised, and not a system directory.
/// Both sides check it: the client before connecting, the agent before touching anything.
pub fn check_remote_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` is not an absolute path"));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed
        .split('/')
        .skip(1)
        .any(|part| part.is_empty() || part == "." || part == "..")
        && !trimmed.is_empty()
    {
        return Err(format!("`{path}` has empty, `.` or `..` parts"));
    }
    if path.chars().any(char::is_control) {
        return Err("the path contains control characters".into());
    }
    let normal = if trimmed.is_empty() { "/" } else { trimmed };
    if SYSTEM_DIRS.contains(&normal) {
        return Err(format!(
            "`{normal}` is a system directory; dropship needs a directory of the app's own"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use erased::Json as _;

    /// The JSON shape is the contract with agents already on servers: pin it.
    #[test]
    fn remote_paths_are_checked() {
        for bad in [
            "srv/app",
            "/",
            "/etc",
            "/usr/",
            "/srv/../etc",
            "/srv//app",
            "/home",
        ] {
            assert!(check_remote_path(bad).is_err(), "{bad}");
        }
        for good in ["/srv/app", "/home/deploy/app", "/var/www/site/"] {
            assert!(check_remote_path(good).is_ok(), "{good}");
        }
    }

    /// One value of every request, command and event variant, as `(name, JSON)`.
    fn wire_examples() -> Vec<(String, String)> {
        let target = Target {
            protocol: PROTOCOL_VERSION,
            root: "/srv/app".into(),
            by: "ci@runner".into(),
            lock_timeout_secs: 600,
            dry_run: false,
        };
        let run = RunSpec {
            app: "app".into(),
            process_manager: ProcessManager::Pm2,
            start: "node server.js".into(),
            strategy: Strategy::BlueGreen,
            ports: vec![3000, 3001],
            health_path: "/".into(),
            health_timeout_secs: 60,
            nginx_upstream: "/srv/app/.dropship/nginx-upstream.conf".into(),
            nginx_reload: "sudo -n nginx -s reload".into(),
        };
        let manifest: Manifest = serde_json::from_str(
            r#"{"entries":[{"path":"public","mode":493,"type":"dir"},{"path":"public/a.txt","mode":420,"type":"file","size":2,"hash":"00112233445566778899aabbccddeeff"},{"path":"public/b","mode":511,"type":"symlink","target":"a.txt"}]}"#,
        )
        .unwrap();
        let requests = [
            Request::Deploy(DeployRequest {
                target: target.clone(),
                release: "r2".into(),
                manifest,
                shared: vec![".env".into(), "uploads/".into()],
                keep_releases: 5,
                keep_assets: 3,
                idle_timeout_secs: 300,
                server_dir: ".".into(),
                run: run.clone(),
                env: Some("KEY=value\n".into()),
            }),
            Request::Rollback(RollbackRequest {
                target: target.clone(),
                to: Some("r1".into()),
                run: RunSpec {
                    process_manager: ProcessManager::Systemd,
                    strategy: Strategy::Restart,
                    ports: vec![3000],
                    ..run.clone()
                },
                run_given: true,
            }),
            Request::Releases(target.clone()),
            Request::Doctor(DoctorRequest {
                target,
                run: RunSpec {
                    process_manager: ProcessManager::None,
                    ..run
                },
            }),
        ];
        let commands = [
            Command::Stream { parts: 2 },
            Command::Activate,
            Command::Commit,
            Command::Revert,
        ];
        let events = [
            Event::Hello {
                version: "0.1.0".into(),
                protocol: PROTOCOL_VERSION,
            },
            Event::Waiting {
                holder: "alice@laptop (deploying r1)".into(),
                waited_secs: 5,
            },
            Event::Ready {
                send: Some(vec![1, 4]),
                free_bytes: 1 << 30,
                live: Some("r1".into()),
                join: Some(Join {
                    socket: "/srv/app/.dropship/part-42.sock".into(),
                    token: "f00d".into(),
                }),
                platform: Some(Platform {
                    arch: "x86_64".into(),
                    libc: Libc::Glibc {
                        version: "2.36".into(),
                    },
                    node: NodeRuntime::Version("v20.11.1".into()),
                }),
            },
            Event::Plan {
                live: None,
                would_prune: vec!["r0".into()],
                free_bytes: 1 << 30,
                platform: Some(Platform {
                    arch: "aarch64".into(),
                    libc: Libc::Musl,
                    node: NodeRuntime::Broken("GLIBC_2.28 not found".into()),
                }),
            },
            Event::Staged {
                files: 3,
                reused: 1,
                bytes: 2,
                path: "/srv/app/releases/r2".into(),
            },
            Event::Progress {
                message: "healthy on port 3001".into(),
            },
            Event::Activated {
                release: "r2".into(),
                previous: Some("r1".into()),
            },
            Event::Reverted {
                live: Some("r1".into()),
            },
            Event::Done {
                pruned: vec!["r0".into()],
                peak_rss_bytes: 10 << 20,
            },
            Event::Checks {
                checks: vec![Check {
                    name: "node".into(),
                    ok: false,
                    detail: "not found".into(),
                    fix: Some("install Node.js".into()),
                }],
            },
            Event::Releases {
                releases: vec![ReleaseInfo {
                    release: "r1".into(),
                    created: 1_700_000_000,
                    files: 3,
                    bytes: 2,
                    live: true,
                }],
            },
            Event::Failed(Failure::new(
                FailureKind::BadInput,
                "release `r1` already exists",
                Some("give another `release`"),
            )),
            Event::Failed(Failure::new(FailureKind::Locked, "held", None)),
            Event::Failed(Failure::new(FailureKind::Failed, "boom", None)),
        ];
        let json = |value: &dyn erased::Json| value.json();
        let mut examples = Vec::new();
        for request in &requests {
            examples.push((format!("request {}", request_name(request)), json(request)));
        }
        for command in &commands {
            examples.push((format!("command {}", command_name(command)), json(command)));
        }
        for event in &events {
            examples.push((format!("event {}", event_name(event)), json(event)));
        }
        examples
    }

    /// Serialising through one signature for the three message types.
    mod erased {
        pub trait Json {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }

    // Exhaustive matches: a new variant does not compile until it is named here; give
    // it an example in `wire_examples` too, so that the snapshot holds it.
    fn request_name(request: &Request) -> &'static str {
        match request {
            Request::Deploy(_) => "deploy",
            Request::Rollback(_) => "rollback",
            Request::Releases(_) => "releases",
            Request::Doctor(_) => "doctor",
        }
    }

    fn command_name(command: &Command) -> &'static str {
        match command {
            Command::Stream { .. } => "stream",
            Command::Activate => "activate",
            Command::Commit => "commit",
            Command::Revert => "revert",
        }
    }

    fn event_name(event: &Event) -> &'static str {
        match event {
            Event::Hello { .. } => "hello",
            Event::Waiting { .. } => "waiting",
            Event::Ready { .. } => "ready",
            Event::Plan { .. } => "plan",
            Event::Staged { .. } => "staged",
            Event::Progress { .. } => "progress",
            Event::Activated { .. } => "activated",
            Event::Reverted { .. } => "reverted",
            Event::Done { .. } => "done",
            Event::Checks { .. } => "checks",
            Event::Releases { .. } => "releases",
            Event::Failed(_) => "failed",
        }
    }

    const SNAPSHOT: &str = "src/protocol.wire.txt";

    /// The whole wire format (every message variant as JSON) is the contract with agents
    /// already on servers: compared with the committed [`SNAPSHOT`]. A change must be
    /// compatible or bump [`PROTOCOL_VERSION`]; then `DROPSHIP_BLESS=1 cargo test --lib
    /// wire_format` rewrites the file, and its diff shows the change.
    #[test]
    fn wire_format_matches_the_snapshot() {
        let text: String = wire_examples()
            .iter()
            .map(|(name, json)| format!("{name}\n{json}\n\n"))
            .collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SNAPSHOT);
        if std::env::var_os("DROPSHIP_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "the wire format changed (protocol {PROTOCOL_VERSION}); if that is meant, bump PROTOCOL_VERSION when it is incompatible and run `DROPSHIP_BLESS=1 cargo test --lib wire_format`. Now:\n{text}"
        );
        // Every snapshot line parses back into the same message.
        for (name, json) in wire_examples() {
            let back = match name.split(' ').next() {
                Some("request") => serde_json::from_str::<Request>(&json).map(|m| m.json()),
                Some("command") => serde_json::from_str::<Command>(&json).map(|m| m.json()),
                _ => serde_json::from_str::<Event>(&json).map(|m| m.json()),
            };
            assert_eq!(back.unwrap(), json, "{name}");
        }
    }

    #[test]
    fn wire_format_is_stable() {
        let event = Event::Activated {
            release: "r2".into(),
            previous: Some("r1".into()),
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"event":"activated","release":"r2","previous":"r1"}"#
        );
        let failed = Event::Failed(Failure::new(FailureKind::Locked, "held", None));
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            r#"{"event":"failed","kind":"locked","message":"held","hint":null}"#
        );
        assert_eq!(
            serde_json::to_string(&Command::Activate).unwrap(),
            r#""activate""#
        );
        let request = Request::Releases(Target {
            protocol: PROTOCOL_VERSION,
            root: "/srv/app".into(),
            by: "ci".into(),
            lock_timeout_secs: 600,
            dry_run: false,
        });
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"op":"releases","protocol":1,"root":"/srv/app","by":"ci","lock_timeout_secs":600,"dry_run":false}"#
        );
    }
}
