//! The agents this client can install on servers: one static `dropship-agent-<cpu>`
//! file per CPU architecture, as the server's `uname -m` names it.
//!
//! Looked up in `DROPSHIP_AGENT_DIR` when it is set, otherwise beside this
//! executable (where the image and the release assets put them). A build run
//! from its cargo target directory also finds `dropship-agent` there, or uses
//! itself, for servers of its own CPU. `DROPSHIP_AGENT_BINARY` names one file
//! installed on every server, whatever its CPU.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::manifest::sha256_hex;

/// The CPU architectures dropship ships agents for, as `uname -m` prints them.
pub const MACHINES: [&str; 2] = ["x86_64", "aarch64"];

/// A directory holding `dropship-agent-<cpu>` files; when set, the only place searched.
pub const AGENT_DIR_VAR: &str = "DROPSHIP_AGENT_DIR";

/// One agent file for every server, whatever its CPU (no choice is made).
pub const AGENT_BINARY_VAR: &str = "DROPSHIP_AGENT_BINARY";

/// The agents to install on servers. Found, read and hashed on first use only,
/// so runs that reach no SSH host never pay for it.
#[derive(Default)]
pub struct AgentBinary {
    loaded: OnceLock<Agents>,
}

/// The agents found, and where they were looked for.
pub struct Agents {
    found: Vec<Agent>,
    searched: Vec<PathBuf>,
}

/// One agent file.
pub struct Agent {
    /// The CPU it runs on; `None` for `DROPSHIP_AGENT_BINARY` (any server).
    pub machine: Option<&'static str>,
    /// The file's contents.
    pub bytes: Vec<u8>,
    sha256: String,
}

impl AgentBinary {
    /// The agents, found and read on the first call.
    pub fn get(&self) -> Result<&Agents> {
        if let Some(agents) = self.loaded.get() {
            return Ok(agents);
        }
        let agents = find()?;
        Ok(self.loaded.get_or_init(|| agents))
    }
}

impl Agents {
    /// The agent for a server whose `uname -m` printed `machine`.
    pub fn for_machine(&self, machine: &str) -> Option<&Agent> {
        let machine = normalize(machine);
        self.found
            .iter()
            .find(|agent| agent.machine.is_none_or(|m| m == machine))
    }

    /// The error for a server whose CPU has no agent here: exit 2, before anything changed.
    pub fn missing(&self, host: &str, machine: &str) -> Error {
        let machine = normalize(machine);
        let file = format!("dropship-agent-{machine}");
        let dirs: Vec<String> = self
            .searched
            .iter()
            .map(|dir| dir.display().to_string())
            .collect();
        let hint = if MACHINES.contains(&machine) {
            format!(
                "put `{file}` from dropship's release assets (or its image's /usr/local/bin/) there, or set {AGENT_DIR_VAR} to a directory holding it"
            )
        } else {
            format!(
                "dropship has agents for {} Linux only: deploy to such a server",
                MACHINES.join(" and ")
            )
        };
        Error::NoAgent {
            host: host.to_owned(),
            machine: if machine.is_empty() {
                "an unknown CPU".to_owned()
            } else {
                machine.to_owned()
            },
            searched: format!("looked for `{file}` in {}", dirs.join(", ")),
            hint,
        }
    }

    /// A shell snippet that sets `f` to the path of the agent for this server's
    /// CPU under `remote_path` (empty when there is none).
    pub fn select_script(&self, remote_path: &str) -> String {
        let arms: String = self
            .found
            .iter()
            .map(|agent| {
                let pattern = match agent.machine {
                    None => "*",
                    Some("aarch64") => "aarch64|arm64",
                    Some(machine) => machine,
                };
                format!(
                    "{pattern}) f={};; ",
                    super::ssh::quote(&agent.remote_path(remote_path))
                )
            })
            .collect();
        format!("case \"$(uname -m)\" in {arms}*) f=;; esac")
    }
}

impl Agent {
    /// Where it lives on the server: versioned and hashed, so versions and CPUs
    /// never collide (the agent checks itself against the hash in its name).
    pub fn remote_path(&self, remote_path: &str) -> String {
        format!(
            "{}/.dropship/bin/dropship-{}-{}",
            remote_path.trim_end_matches('/'),
            env!("CARGO_PKG_VERSION"),
            &self.sha256[..12]
        )
    }

    /// Writes the file gzip-compressed to `out`, for servers that have `gzip`;
    /// returns the bytes written. The compression runs as the bytes go out, so
    /// it overlaps the transfer, yet it is still the slower of the two, on the
    /// critical path of a first deploy at any round-trip time: level 1 sends
    /// the 3.2 MB static agent as 1.68 MB instead of level 6's 1.43 MB, and cut
    /// that deploy from 1.22 s to 1.08 s at 50 ms RTT, 0.70 s to 0.57 s at 0 ms
    /// (bench/run).
    pub fn write_gzipped(&self, out: &mut impl Write) -> std::io::Result<u64> {
        let mut counted = Counted { out, bytes: 0 };
        let mut encoder = flate2::write::GzEncoder::new(&mut counted, flate2::Compression::fast());
        encoder.write_all(&self.bytes)?;
        encoder.finish()?;
        Ok(counted.bytes)
    }
}

/// A writer that counts what passes through it.
struct Counted<'a, W> {
    out: &'a mut W,
    bytes: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(buf)?;
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// `uname -m` spellings of the same CPU.
fn normalize(machine: &str) -> &str {
    match machine.trim() {
        "arm64" => "aarch64",
        other => other,
    }
}

fn find() -> Result<Agents> {
    if let Some(path) = std::env::var_os(AGENT_BINARY_VAR) {
        let path = PathBuf::from(path);
        let agent = read(None, &path)?.ok_or_else(|| {
            Error::local(
                "read the agent binary",
                &path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        return Ok(Agents {
            found: vec![agent],
            searched: vec![path],
        });
    }
    let exe = std::env::current_exe().ok();
    let (dir, dev) = match std::env::var_os(AGENT_DIR_VAR) {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let exe = exe.ok_or_else(|| {
                Error::local(
                    "find",
                    "the dropship binary",
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })?;
            let dir = exe.parent().map_or_else(PathBuf::new, Path::to_path_buf);
            (dir, Some(exe))
        }
    };
    let mut found = Vec::new();
    for machine in MACHINES {
        let mut candidates = vec![dir.join(format!("dropship-agent-{machine}"))];
        // A Linux build for this CPU, run from its cargo target directory.
        if let Some(exe) = dev.as_ref().filter(|_| is_own_cpu(machine)) {
            candidates.push(dir.join("dropship-agent"));
            candidates.push(exe.clone());
        }
        for path in candidates {
            if let Some(agent) = read(Some(machine), &path)? {
                found.push(agent);
                break;
            }
        }
    }
    Ok(Agents {
        found,
        searched: vec![dir],
    })
}

fn is_own_cpu(machine: &str) -> bool {
    cfg!(target_os = "linux") && machine == std::env::consts::ARCH
}

/// Reads an agent file; `None` when there is none at `path`.
fn read(machine: Option<&'static str>, path: &Path) -> Result<Option<Agent>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(Agent {
            machine,
            sha256: sha256_hex(&bytes),
            bytes,
        })),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Error::local("read the agent binary", path, err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(machine: Option<&'static str>, bytes: &[u8]) -> Agent {
        Agent {
            machine,
            bytes: bytes.to_vec(),
            sha256: sha256_hex(bytes),
        }
    }

    #[test]
    fn each_cpu_gets_its_own_agent() {
        let agents = Agents {
            found: vec![agent(Some("x86_64"), b"x"), agent(Some("aarch64"), b"a")],
            searched: vec![PathBuf::from("/opt/agents")],
        };
        assert_eq!(agents.for_machine("x86_64").unwrap().bytes, b"x");
        assert_eq!(agents.for_machine("aarch64\n").unwrap().bytes, b"a");
        assert_eq!(agents.for_machine("arm64").unwrap().bytes, b"a");
        assert!(agents.for_machine("riscv64").is_none());
        let script = agents.select_script("/srv/");
        assert!(
            script.starts_with("case \"$(uname -m)\" in x86_64) f='/srv/.dropship/bin/dropship-")
        );
        assert!(script.contains(";; aarch64|arm64) f='/srv/.dropship/bin/dropship-"));
        assert!(script.ends_with(";; *) f=;; esac"));
    }

    #[test]
    fn one_forced_agent_serves_every_cpu() {
        let agents = Agents {
            found: vec![agent(None, b"any")],
            searched: vec![PathBuf::from("/tmp/agent")],
        };
        assert_eq!(agents.for_machine("aarch64").unwrap().bytes, b"any");
        assert!(agents.select_script("/srv").contains("in *) f='/srv/"));
    }

    #[test]
    fn the_gzipped_agent_unpacks_to_the_same_bytes() {
        use std::io::Read;
        let original = agent(Some("x86_64"), &b"dropship agent ".repeat(1000));
        let mut packed = Vec::new();
        let written = original.write_gzipped(&mut packed).unwrap();
        assert_eq!(written, packed.len() as u64);
        assert!(packed.len() < original.bytes.len() / 10);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, original.bytes);
    }
}
