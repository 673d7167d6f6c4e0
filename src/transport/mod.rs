//! Reaching the agent on a host: over one SSH connection, or as a child process
//! for `host: local`. Either way the result is an [`AgentConn`] that speaks the
//! protocol; nothing above this module knows which.

mod agents;
mod conn;
mod hostkey;
mod keys;
mod local;
mod ssh;

use std::fmt;

pub use agents::AgentBinary;
pub use conn::{AgentConn, encode_request};
pub use hostkey::Pinning;
pub use keys::PrivateKey;

use crate::error::Result;

/// One target of a deploy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// This machine, without SSH.
    Local,
    /// A server reached over SSH.
    Ssh {
        /// Login user.
        user: String,
        /// Host name or address.
        host: String,
        /// SSH port.
        port: u16,
        /// The EC2 instance it is, when `ec2-hosts` found it.
        instance: Option<String>,
    },
}

impl Host {
    /// The SSH port (none for `local`).
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    pub fn port(&self) -> Option<u16> {
        match self {
            Host::Local => None,
            Host::Ssh { port, .. } => Some(*port),
        }
    }

    /// The EC2 instance id, when `ec2-hosts` found the host.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Host::Ssh {
                instance: Some(id), ..
            } => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Local => f.write_str("local")?,
            Host::Ssh {
                user, host, port, ..
            } if host.contains(':') => write!(f, "{user}@[{host}]:{port}")?,
            Host::Ssh {
                user, host, port, ..
            } => write!(f, "{user}@{host}:{port}")?,
        }
        match self.instance() {
            Some(id) => write!(f, " ({id})"),
            None => Ok(()),
        }
    }
}

/// How to log in and how to recognise the server.
pub struct Credentials {
    /// The private key (SSH hosts only).
    pub key: Option<PrivateKey>,
    /// How the server's host key is checked.
    pub pinning: Pinning,
}

/// What starting the agent led to.
pub enum Opened {
    /// The agent runs and said hello.
    Ready(AgentConn),
    /// Dry run on a host without this agent version: it would be uploaded first.
    AgentMissing {
        /// Bytes that would be uploaded.
        upload_bytes: u64,
    },
}

/// A host reached and logged in to, before the agent starts.
pub enum Connection {
    /// `host: local`: nothing to connect.
    Local,
    /// An authenticated SSH session.
    Ssh(ssh::Connected),
}

/// Reaches `host` and logs in (checking its pinned key). Independent of the
/// release, so it can run while the release is being packaged.
pub fn connect(host: &Host, credentials: &Credentials, agent: &AgentBinary) -> Result<Connection> {
    match host {
        Host::Local => Ok(Connection::Local),
        Host::Ssh {
            user,
            host: name,
            port,
            ..
        } => ssh::connect((user, name, *port), &host.to_string(), credentials, agent)
            .map(Connection::Ssh),
    }
}

impl Connection {
    /// Starts the agent with `request` (see [`encode_request`]), uploading it
    /// first when needed (unless `dry_run`).
    pub fn start(
        self,
        agent: &AgentBinary,
        remote_path: &str,
        dry_run: bool,
        request: &[u8],
    ) -> Result<Opened> {
        match self {
            Connection::Local => local::open(request).map(Opened::Ready),
            Connection::Ssh(connected) => connected.start(agent, remote_path, dry_run, request),
        }
    }
}
