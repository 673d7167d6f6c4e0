//! What a run tells the user: progress lines on stderr (via tracing), the
//! outputs as JSON on stdout with `--json` (and in `$GITHUB_OUTPUT`), the job
//! summary, errors with their hint. Nothing here ever holds a secret value.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::error::Error;
use crate::transport::Host;

/// The outputs of a deploy, named as the Action's outputs are, and what the summary shows.
#[derive(Debug, Default)]
pub struct Outputs {
    /// The release id.
    pub release: String,
    /// `<remote-path>/releases/<release>`.
    pub release_path: String,
    /// The hosts, comma-separated.
    pub hosts: String,
    /// `environment-url`, when given.
    pub url: String,
    /// Size of the compressed release stream.
    pub artifact_bytes: u64,
    /// Everything sent to all hosts (requests, streams, agent installs).
    pub bytes_sent: u64,
    /// Wall time of the whole run.
    pub duration_ms: u128,
    /// The GitHub deployment, when one was recorded.
    pub deployment_id: Option<u64>,
    /// Highest peak memory of the agent on any host.
    pub agent_peak_rss_bytes: u64,
    /// Files and bytes in the release.
    pub files: u64,
    /// Bytes of file content in the release.
    pub release_bytes: u64,
    /// Seconds spent in `build` and packaging.
    pub build_secs: f64,
    /// Seconds spent assembling and hashing the release.
    pub package_secs: f64,
    /// One entry per host reached.
    pub per_host: Vec<HostReport>,
    /// What the servers do with shipped `shared` paths and a shipped `.env` (keys only).
    pub notes: Vec<String>,
}

/// What happened on one host.
#[derive(Debug, Default)]
pub struct HostReport {
    /// `user@host:port` or `local`.
    pub host: String,
    /// `live`, `dry run`, `put back`, `failed`…
    pub result: String,
    /// Seconds to connect, log in and start the agent.
    pub connect_secs: f64,
    /// Seconds to stream, verify and store the release.
    pub stage_secs: f64,
    /// Seconds to start, check and switch.
    pub activate_secs: f64,
    /// Bytes sent to this host.
    pub bytes_sent: u64,
    /// Activation steps as the agent reported them (health check, nginx, drain).
    pub steps: Vec<String>,
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

    /// The Action's outputs, as (name, value).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("release", self.release.clone()),
            ("release-path", self.release_path.clone()),
            ("hosts", self.hosts.clone()),
            ("url", self.url.clone()),
            ("artifact-bytes", self.artifact_bytes.to_string()),
            ("bytes-sent", self.bytes_sent.to_string()),
            ("duration-ms", self.duration_ms.to_string()),
            (
                "deployment-id",
                self.deployment_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            ),
        ]
    }

    /// The outputs as one JSON object (SPEC names, plus `agent-peak-rss-bytes`).
    pub fn to_json(&self) -> Value {
        let mut map: serde_json::Map<String, Value> = self
            .pairs()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Value::String(value)))
            .collect();
        for (name, number) in [
            ("artifact-bytes", self.artifact_bytes),
            ("bytes-sent", self.bytes_sent),
            ("agent-peak-rss-bytes", self.agent_peak_rss_bytes),
        ] {
            map.insert(name.into(), json!(number));
        }
        map.insert("duration-ms".into(), json!(self.duration_ms));
        Value::Object(map)
    }

    /// The job summary in Markdown: per host the result, the time of each phase,
    /// sizes and throughput, the activation steps; on failure what failed.
    pub fn summary(&self, error: Option<&Error>) -> String {
        let mut md = String::new();
        let verdict = if error.is_some() {
            "❌ failed"
        } else {
            "✅ live"
        };
        let _ = writeln!(md, "### dropship: release `{}` {verdict}\n", self.release);
        if !self.url.is_empty() {
            let _ = writeln!(md, "**URL:** {}\n", self.url);
        }
        let ratio = if self.artifact_bytes > 0 {
            self.release_bytes as f64 / self.artifact_bytes as f64
        } else {
            0.0
        };
        let _ = writeln!(
            md,
            "Release: {} files, {} → {} compressed ({ratio:.1}×); build {:.1} s, package {:.1} s; total {:.1} s.\n",
            self.files,
            mb(self.release_bytes),
            mb(self.artifact_bytes),
            self.build_secs,
            self.package_secs,
            self.duration_ms as f64 / 1000.0
        );
        for note in &self.notes {
            let _ = writeln!(md, "- {note}");
        }
        if !self.notes.is_empty() {
            md.push('\n');
        }
        if !self.per_host.is_empty() {
            md.push_str("| host | result | connect | upload + verify | activate | sent | throughput |\n|---|---|---|---|---|---|---|\n");
            for host in &self.per_host {
                let throughput = if host.stage_secs > 0.0 {
                    format!("{:.1} MB/s", host.bytes_sent as f64 / 1e6 / host.stage_secs)
                } else {
                    "–".into()
                };
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {:.2} s | {:.2} s | {:.2} s | {} | {throughput} |",
                    host.host,
                    host.result,
                    host.connect_secs,
                    host.stage_secs,
                    host.activate_secs,
                    mb(host.bytes_sent)
                );
            }
            for host in self.per_host.iter().filter(|h| !h.steps.is_empty()) {
                let _ = writeln!(
                    md,
                    "\n<details><summary>{}: activation</summary>\n",
                    host.host
                );
                for step in &host.steps {
                    let _ = writeln!(md, "- {step}");
                }
                md.push_str("\n</details>\n");
            }
        }
        if let Some(error) = error {
            let _ = writeln!(
                md,
                "\n**What failed:**\n\n{}",
                code_block(&error.to_string())
            );
            if let Some(hint) = error.hint() {
                let _ = writeln!(md, "\n**What to do:** {hint}");
            }
        }
        md
    }
}

/// `text` in a Markdown code block whose fence is longer than any run of
/// backticks inside (server log lines can hold one), so nothing escapes it.
fn code_block(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}\n{text}\n{fence}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_block_outfences_every_backtick_run_inside() {
        assert_eq!(code_block("plain"), "```\nplain\n```");
        assert_eq!(
            code_block("log: ```\n## not a heading"),
            "````\nlog: ```\n## not a heading\n````"
        );
        assert_eq!(
            code_block("a `` b ````` c"),
            "``````\na `` b ````` c\n``````"
        );
    }
}
