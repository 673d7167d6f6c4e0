//! Every failure dropship reports: what failed, on which host, and what to do next.
//!
//! Variants hold fields, not pre-formatted text; `exit_status` maps them to the
//! exit codes of SPEC.md and `hint` adds the next step for the user.

use std::path::PathBuf;

use crate::protocol::{Failure, FailureKind};

/// The process exit status, as SPEC.md defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything asked for was done.
    Done = 0,
    /// The deploy failed; every host serves what it served before.
    Failed = 1,
    /// Bad input; nothing was touched.
    BadInput = 2,
    /// Another deploy held the lock past `lock-timeout`.
    Locked = 3,
}

/// Result type used throughout dropship.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure, with enough context to tell a person what went wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option has a value dropship cannot use.
    #[error("input `{name}`: {problem}")]
    Input {
        name: &'static str,
        problem: String,
        hint: String,
    },
    /// No release directory could be found to ship.
    #[error("nothing to ship: {problem}")]
    Source { problem: String, hint: String },
    /// A symbolic link in the release points outside of it.
    #[error("symlink `{path}` points outside the release (to `{target}`)")]
    EscapingSymlink { path: String, target: String },
    /// A symbolic link in the release points to nothing the release holds.
    #[error("symlink `{path}` points to `{target}`, which is not in the release")]
    DanglingSymlink { path: String, target: String },
    /// A local file operation failed.
    #[error("{action} `{}`: {source}", path.display())]
    Local {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The `build` command failed.
    #[error("build command `{command}` failed: {status}")]
    Build { command: String, status: String },
    /// The TCP connection to the host failed.
    #[error("cannot connect to {host}: {source}")]
    Connect {
        host: String,
        source: std::io::Error,
    },
    /// The SSH protocol failed at some step.
    #[error("ssh to {host} failed while {step}: {message}")]
    Ssh {
        host: String,
        step: &'static str,
        message: String,
    },
    /// The host presented a key that nothing pins.
    #[error("host key of {host} is not pinned (server key {fingerprint})")]
    UnpinnedHostKey {
        host: String,
        fingerprint: String,
        known_hosts_line: String,
    },
    /// The host presented a key different from the pinned one: possibly a man in the middle.
    #[error(
        "host key of {host} does not match the pinned key: expected {expected}, the server presented {actual}"
    )]
    HostKeyMismatch {
        host: String,
        expected: String,
        actual: String,
    },
    /// The host presented a key that `known-hosts` lists as `@revoked`.
    #[error("host key {fingerprint} of {host} is revoked in `known-hosts`")]
    HostKeyRevoked { host: String, fingerprint: String },
    /// The private key could not be loaded.
    #[error("cannot use the private key: {problem}")]
    Key { problem: String, hint: String },
    /// The server refused the key.
    #[error(
        "{host} refused the {key_type} key {fingerprint} for user `{user}` (Permission denied (publickey))"
    )]
    KeyRejected {
        host: String,
        user: String,
        key_type: String,
        fingerprint: String,
    },
    /// The agent on the host reported a failure.
    #[error("on {host}: {}", failure.message)]
    Remote { host: String, failure: Failure },
    /// The agent on the host stopped without saying why.
    #[error(
        "the agent on {host} stopped unexpectedly ({status}){}",
        stderr_block(stderr)
    )]
    AgentDied {
        host: String,
        status: String,
        stderr: String,
    },
    /// The bootstrap found no agent of this version on the host (exit 97): it is
    /// uploaded next. `report` is what the bootstrap said about the host's CPU.
    #[error("the agent is not installed on {host}")]
    AgentMissing { host: String, report: String },
    /// This client has no agent for the host's CPU: refused before anything changed.
    #[error("{host} runs on {machine}, and this client has no agent for it ({searched})")]
    NoAgent {
        host: String,
        machine: String,
        searched: String,
        hint: String,
    },
    /// The agent was uploaded, yet the host still cannot run it.
    #[error("the agent uploaded to {host} cannot be run")]
    AgentNotRunnable { host: String },
    /// The agent stopped in the middle of the switch: the host may serve either release.
    #[error(
        "the agent on {host} stopped while switching ({status}): the host may serve the old or the new release{}",
        stderr_block(stderr)
    )]
    DiedSwitching {
        host: String,
        status: String,
        stderr: String,
    },
    /// What the host printed as the agent is not dropship's protocol.
    #[error("the agent on {host} printed {problem}: its output is not dropship's")]
    NotAgentOutput { host: String, problem: String },
    /// The server refused a further SSH channel for the upload (`MaxSessions 1`).
    #[error("{host} refused another SSH channel for the upload: {message}")]
    ChannelRefused { host: String, message: String },
    /// The release would not run on the host: native code or Node for another platform.
    #[error(
        "the release cannot run on {host} ({platform}):{}",
        mismatch_lines(mismatches)
    )]
    Unrunnable {
        host: String,
        platform: String,
        mismatches: Vec<Mismatch>,
    },
    /// `doctor` found things to fix.
    #[error("doctor found {problems} thing(s) to fix (see above)")]
    Doctor { problems: usize },
    /// A host failed after others had switched, and those were put back: the
    /// deploy failed (exit 1), whatever the cause's own status ("nothing was
    /// touched" no longer holds).
    #[error(transparent)]
    PutBack(Box<Error>),
    /// An AWS API call failed.
    #[error("AWS {} failed in {region}: {}", call.permission(), aws_reason(code, message))]
    Aws {
        call: AwsCall,
        region: String,
        code: String,
        message: String,
    },
    /// `ec2-hosts` matched no running instance.
    #[error("no running EC2 instance in {region} matches all of: {}", filters.join(", "))]
    NoInstances {
        filters: Vec<String>,
        region: String,
    },
    /// An instance `ec2-hosts` found has no address of the kind `ec2-address` asks for.
    #[error("EC2 instance {instance} has no {address} address")]
    NoAddress {
        instance: String,
        address: &'static str,
    },
    /// A host is not registered in a target group it should drain from.
    #[error("{host} is not registered in target group `{target_group}`")]
    NotInTargetGroup { host: String, target_group: String },
    /// A host did not become healthy in the load balancer in time.
    #[error(
        "{host} is not healthy in target group `{target_group}` after {waited_secs} s: {state}{}",
        if reason.is_empty() { String::new() } else { format!(" ({reason})") }
    )]
    Unhealthy {
        host: String,
        target_group: String,
        state: String,
        reason: String,
        waited_secs: u64,
    },
    /// This runner's public IP could not be found out.
    #[error("cannot find this runner's public IP for `ssh-ingress`: {url}: {problem}")]
    RunnerIp { url: String, problem: String },
    /// The run was cancelled while AWS changes were under way.
    #[error("the deploy was cancelled")]
    Cancelled,
    /// A local failure inside the agent (the agent reports these to the client).
    #[error("{}", .0.message)]
    Agent(Failure),
}

/// An AWS API call dropship makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsCall {
    /// Finding `ec2-hosts`.
    DescribeInstances,
    /// Finding SSH rules left by earlier deploys.
    DescribeSecurityGroupRules,
    /// Opening SSH for this runner.
    AuthorizeSecurityGroupIngress,
    /// Closing it again.
    RevokeSecurityGroupIngress,
    /// Reading target states.
    DescribeTargetHealth,
    /// Taking a batch out of a load balancer.
    DeregisterTargets,
    /// Putting it back.
    RegisterTargets,
    /// Who the credentials are (`doctor`).
    GetCallerIdentity,
}

impl AwsCall {
    /// The IAM action that allows the call, e.g. `ec2:DescribeInstances`.
    pub fn permission(self) -> &'static str {
        match self {
            AwsCall::DescribeInstances => "ec2:DescribeInstances",
            AwsCall::DescribeSecurityGroupRules => "ec2:DescribeSecurityGroupRules",
            AwsCall::AuthorizeSecurityGroupIngress => "ec2:AuthorizeSecurityGroupIngress",
            AwsCall::RevokeSecurityGroupIngress => "ec2:RevokeSecurityGroupIngress",
            AwsCall::DescribeTargetHealth => "elasticloadbalancing:DescribeTargetHealth",
            AwsCall::DeregisterTargets => "elasticloadbalancing:DeregisterTargets",
            AwsCall::RegisterTargets => "elasticloadbalancing:RegisterTargets",
            AwsCall::GetCallerIdentity => "sts:GetCallerIdentity",
        }
    }
}

/// AWS error codes that mean the credentials may not make the call.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthFailure",
];

/// AWS error codes that mean the credentials are missing (`NoCredentials`: no
/// request was sent), unknown or expired.
const NO_CREDENTIALS: &[&str] = &[
    "NoCredentials",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
];

fn aws_reason(code: &str, message: &str) -> String {
    match (code, message.trim()) {
        ("", message) => message.to_owned(),
        (code, "") => code.to_owned(),
        (code, message) => format!("{code}: {message}"),
    }
}

/// One thing of a release that does not fit the server it is deployed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The file (a path of the release), or `node`.
    pub file: String,
    /// Why it does not fit.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

fn mismatch_lines(mismatches: &[Mismatch]) -> String {
    mismatches
        .iter()
        .map(|m| format!("\n  - `{}` {}", m.file, m.problem))
        .collect()
}

/// The distinct fixes of `mismatches`, in order.
fn distinct_fixes(mismatches: &[Mismatch]) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    mismatches
        .iter()
        .map(|m| m.fix.as_str())
        .filter(|fix| seen.insert(*fix))
        .collect()
}

/// The exit status a failure of `kind`, reported by the agent, ends the client with.
fn failure_status(kind: FailureKind) -> ExitStatus {
    match kind {
        FailureKind::BadInput => ExitStatus::BadInput,
        FailureKind::Locked => ExitStatus::Locked,
        FailureKind::Failed => ExitStatus::Failed,
    }
}

fn stderr_block(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        let rule = "-".repeat(60);
        format!("\n{rule}\n{stderr}\n{rule}")
    }
}

impl Error {
    /// A bad option value, with the fix.
    pub fn input(name: &'static str, problem: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Input {
            name,
            problem: problem.into(),
            hint: hint.into(),
        }
    }

    /// A failed local file operation.
    pub fn local(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Local {
            action,
            path: path.into(),
            source,
        }
    }

    /// The exit status this failure ends the run with.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Input { .. }
            | Error::Source { .. }
            | Error::EscapingSymlink { .. }
            | Error::DanglingSymlink { .. }
            | Error::UnpinnedHostKey { .. }
            | Error::HostKeyMismatch { .. }
            | Error::HostKeyRevoked { .. }
            | Error::Key { .. }
            | Error::KeyRejected { .. }
            | Error::Unrunnable { .. }
            | Error::NoAgent { .. }
            | Error::NoInstances { .. }
            | Error::NoAddress { .. }
            | Error::NotInTargetGroup { .. } => ExitStatus::BadInput,
            // Credentials that may not do what was asked: configuration, like bad input.
            Error::Aws { code, .. }
                if DENIED.contains(&code.as_str()) || NO_CREDENTIALS.contains(&code.as_str()) =>
            {
                ExitStatus::BadInput
            }
            Error::Remote { failure, .. } | Error::Agent(failure) => failure_status(failure.kind),
            Error::Local { .. }
            | Error::Build { .. }
            | Error::Connect { .. }
            | Error::Ssh { .. }
            | Error::AgentDied { .. }
            | Error::AgentMissing { .. }
            | Error::AgentNotRunnable { .. }
            | Error::DiedSwitching { .. }
            | Error::NotAgentOutput { .. }
            | Error::ChannelRefused { .. }
            | Error::Doctor { .. }
            | Error::Aws { .. }
            | Error::Unhealthy { .. }
            | Error::RunnerIp { .. }
            | Error::Cancelled
            | Error::PutBack(_) => ExitStatus::Failed,
        }
    }

    /// What the user should do next, when dropship knows.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::Input { hint, .. }
            | Error::Source { hint, .. }
            | Error::Key { hint, .. }
            | Error::NoAgent { hint, .. } => hint.clone(),
            Error::EscapingSymlink { .. } => {
                "make the link relative and inside the app, or add it to `exclude`".into()
            }
            Error::DanglingSymlink { .. } => {
                "ship what it points to (does `exclude` leave it out?), or add the link to `exclude`".into()
            }
            Error::Build { .. } => "run the build command locally to see why it fails".into(),
            Error::Connect { .. } => "check the host name and port, and that the firewall or security group lets this machine reach SSH".into(),
            Error::Ssh { .. } => "check that the server runs OpenSSH and that the connection is stable; run again".into(),
            Error::UnpinnedHostKey {
                fingerprint,
                known_hosts_line,
                ..
            } => format!(
                "if this is your server, pin its key: set `host-fingerprint` to {fingerprint}\n      or add this line to `known-hosts`:\n      {known_hosts_line}\n      (compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the server)"
            ),
            Error::HostKeyMismatch { .. } => "do not deploy until you know why the key changed: if the server was rebuilt, pin its new key; otherwise someone may be intercepting the connection".into(),
            Error::HostKeyRevoked { .. } => "do not deploy to this server until it has a new host key (whoever holds the revoked one can pose as the server); then pin the new key and keep the @revoked line".into(),
            Error::KeyRejected { user, .. } => format!(
                "check that the public half of this key is in ~{user}/.ssh/authorized_keys on the server, that `user` is right, and that the secret holds the whole private key (with its BEGIN/END lines)"
            ),
            Error::AgentMissing { .. } => "run the deploy again: dropship installs its agent".into(),
            Error::AgentNotRunnable { .. } => "is `remote-path` on a filesystem mounted `noexec`? Choose a `remote-path` where the deploy user may run programs".into(),
            Error::DiedSwitching { .. } => "check with `dropship releases` and run `dropship rollback` if needed".into(),
            Error::NotAgentOutput { .. } => "make sure nothing else answers for the agent: the deploy user's shell start-up files (~/.bashrc, ~/.profile) must print nothing for non-interactive sessions, and `remote-path`/.dropship/bin/ must hold only dropship's agents".into(),
            Error::ChannelRefused { .. } => "allow more sessions per connection (`MaxSessions` in sshd_config), or set `DROPSHIP_CHANNELS=1`".into(),
            Error::Remote { failure, .. } | Error::Agent(failure) => failure.hint.clone()?,
            Error::PutBack(cause) => cause.hint()?,
            Error::Unrunnable { mismatches, .. } => {
                distinct_fixes(mismatches).join("\n        ")
            }
            Error::Aws { call, code, .. } if DENIED.contains(&code.as_str()) => format!(
                "allow `{}` in the IAM policy of the role or user whose credentials dropship uses (README, \"IAM policy\"); `dropship doctor` checks every permission a deploy needs",
                call.permission()
            ),
            Error::Aws { code, .. } if NO_CREDENTIALS.contains(&code.as_str()) => "give dropship AWS credentials: in Actions, a step with aws-actions/configure-aws-credentials (OIDC) before it; elsewhere a profile (`AWS_PROFILE`) or `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`".into(),
            Error::Aws { .. } => "run again; if it persists, check the AWS Health Dashboard for the region".into(),
            Error::NoInstances { filters, region } => format!(
                "check that the instances are running and tagged so: `aws ec2 describe-instances --region {region} --filters {}`",
                filters
                    .iter()
                    .map(|f| match f.split_once('=') {
                        Some((name, values)) => format!("Name={name},Values={values}"),
                        None => f.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Error::NoAddress { address, .. } if address.starts_with("public") => "the instance has no public address: set `ec2-address: private-ip` and deploy from a runner inside the VPC, or give the instance a public IP".into(),
            Error::NoAddress { .. } => "choose another `ec2-address`, e.g. `private-ip`".into(),
            Error::NotInTargetGroup { .. } => "register it in the group (an Auto Scaling group does this for its instances), or narrow `ec2-hosts` to the instances behind the load balancer".into(),
            Error::Unhealthy { .. } => "look at the target group's health check (path, port, success codes) and the app's log on that host; raise `health-timeout` if the load balancer needs longer (healthy threshold × interval)".into(),
            Error::RunnerIp { .. } => "set `DROPSHIP_RUNNER_IP` to this runner's public IP".into(),
            Error::Cancelled => "run the deploy again".into(),
            Error::Local { .. } | Error::AgentDied { .. } | Error::Doctor { .. } => return None,
        })
    }

    /// The failure as the agent sends it to the client.
    pub fn to_failure(&self) -> Failure {
        match self {
            Error::Agent(failure) => failure.clone(),
            other => Failure {
                kind: match other.exit_status() {
                    ExitStatus::BadInput => FailureKind::BadInput,
                    ExitStatus::Locked => FailureKind::Locked,
                    ExitStatus::Done | ExitStatus::Failed => FailureKind::Failed,
                },
                message: other.to_string(),
                hint: other.hint(),
            },
        }
    }
}
