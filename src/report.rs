//! What a run tells the user: progress lines on stderr (via tracing), the
//! outputs as JSON on stdout with `--json`, errors with their hint.

use serde_json::{Value, json};

use crate::error::Error;
use crate::transport::Host;

/// The outputs of a deploy, named as the Action's outputs are.
#[derive(Debug, Default)]
pub struct Outputs {
    /// The release id.
    pub release: String,
    /// `<remote-path>/releases/<release>`.
    pub release_path: String,
    /// The hosts, comma-separated.
    pub hosts: String,
    /// Size of the compressed release stream.
    pub artifact_bytes: u64,
    /// Everything sent to all hosts (requests, streams, agent installs).
    pub bytes_sent: u64,
    /// Wall time of the whole run.
    pub duration_ms: u128,
    /// Highest peak memory of the agent on any host.
    pub agent_peak_rss_bytes: u64,
}

impl Outputs {
    /// Outputs for `release` deployed under `remote_path` on `hosts`.
    pub fn new(release: &str, remote_path: &str, hosts: &[Host]) -> Outputs {
        Outputs {
            release: release.into(),
            release_path: format!("{remote_path}/releases/{release}"),
            hosts: hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            ..Outputs::default()
        }
    }

    /// The outputs as one JSON object (SPEC names, plus `agent-peak-rss-bytes`).
    pub fn to_json(&self) -> Value {
        json!({
            "release": self.release,
            "release-path": self.release_path,
            "hosts": self.hosts,
            "url": "",
            "artifact-bytes": self.artifact_bytes,
            "bytes-sent": self.bytes_sent,
            "duration-ms": self.duration_ms,
            "deployment-id": "",
            "agent-peak-rss-bytes": self.agent_peak_rss_bytes,
        })
    }
}

/// Bytes as megabytes with one decimal, for people.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Prints an error, its hint, and nothing secret (errors never carry input values).
pub fn print_error(err: &Error) {
    eprintln!("error: {err}");
    if let Some(hint) = err.hint() {
        eprintln!("  hint: {hint}");
    }
}

/// Sends progress lines to stderr without timestamps or levels: they read like a log.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROPSHIP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .try_init();
}
