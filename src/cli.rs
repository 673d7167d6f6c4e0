//! The command line (clap derive). It only holds what the user typed; `inputs`
//! validates it into the types the rest of dropship works with.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Ship a built web app to Linux servers over SSH and switch it live atomically.
#[derive(Debug, Parser)]
#[command(name = "dropship", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Package the app, ship it to every host, and make it the live release.
    Deploy(Box<DeployArgs>),
    /// Make an earlier release live again.
    Rollback(RollbackArgs),
    /// List the releases on each host, marking the live one.
    Releases(ServerArgs),
    /// Write the release artefact (tar + zstd) and its manifest without shipping.
    Package(PackageArgs),
    /// Check a host and print fixes: SSH, disk, Node, PM2, nginx, sudo.
    Doctor(DoctorArgs),
    /// What runs on the server (hidden; also all that `dropship-agent` takes).
    #[command(flatten)]
    Server(ServerCommand),
}

/// The command line of `dropship-agent`, the agent alone.
#[derive(Debug, Parser)]
#[command(name = "dropship-agent", version, propagate_version = true)]
pub struct AgentCli {
    /// What to do.
    #[command(subcommand)]
    pub command: ServerCommand,
}

/// The sub-commands that run on the server.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Run the server side (started by dropship over SSH; reads its request on stdin).
    #[command(hide = true)]
    Agent,
    /// Pass one part of a release stream on to the agent (started by dropship over SSH).
    #[command(hide = true)]
    AgentPart(AgentPartArgs),
    /// Start the app with its runtime env (used by the process manager on the server).
    #[command(hide = true)]
    RunApp(RunAppArgs),
}

/// Where to connect and how.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Targets, separated by commas or new lines, each `[user@]host[:port]`; `local` deploys onto this machine.
    #[arg(
        long,
        env = "DROPSHIP_HOST",
        required_unless_present = "ec2_hosts",
        default_value = ""
    )]
    pub host: String,
    /// SSH port when a host gives none.
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    /// SSH user when a host gives none.
    #[arg(long)]
    pub user: Option<String>,
    /// Private key text (prefer `--key-file` or the DROPSHIP_KEY variable: arguments are visible to other users).
    #[arg(long, env = "DROPSHIP_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// File holding the private key.
    #[arg(long, conflicts_with = "key")]
    pub key_file: Option<PathBuf>,
    /// Passphrase of the key.
    #[arg(long, env = "DROPSHIP_KEY_PASSPHRASE", hide_env_values = true)]
    pub key_passphrase: Option<String>,
    /// known_hosts lines that pin the server's key.
    #[arg(long)]
    pub known_hosts: Option<String>,
    /// File of known_hosts lines.
    #[arg(long)]
    pub known_hosts_file: Option<PathBuf>,
    /// `SHA256:…` as `ssh-keygen -lf` prints it; one for all hosts, or `host=SHA256:…` per host.
    #[arg(long)]
    pub host_fingerprint: Option<String>,
    /// Do not check the server's host key (warns on every run).
    #[arg(long)]
    pub insecure_skip_host_key_check: bool,
    /// The app's base directory on the server (absolute).
    #[arg(long)]
    pub remote_path: String,
    /// Seconds to wait for another deploy to the same host to finish.
    #[arg(long, default_value_t = 600)]
    pub lock_timeout: u64,
    /// Connect, verify and plan, but change nothing on any server.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outputs as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// EC2 instances as hosts, and SSH for this runner only.
    #[command(flatten)]
    pub ec2: Ec2Args,
}

/// Hosts found in EC2, and the security group opened for the deploy.
#[derive(Debug, Args)]
pub struct Ec2Args {
    /// EC2 filters, one per flag or line (`tag:Role=web`, `tag:aws:autoscaling:groupName=web`, `instance-id=i-…`): every running instance matching all of them is a host.
    #[arg(long)]
    pub ec2_hosts: Vec<String>,
    /// How found instances are reached: `public-ip` (default), `private-ip`, `public-dns` or `private-dns`.
    #[arg(long)]
    pub ec2_address: Option<String>,
    /// Security group id: a rule letting this runner's public IP reach the SSH port is added for the deploy and removed after it.
    #[arg(long)]
    pub ssh_ingress: Option<String>,
    /// Region of the AWS calls (default: `AWS_REGION`, or the profile's).
    #[arg(long)]
    pub aws_region: Option<String>,
}

/// Load-balancer target groups drained and health-gated batch by batch.
#[derive(Debug, Args)]
pub struct TargetGroupArgs {
    /// Target group ARNs, one per flag or line: each batch must be `healthy` there before the next; with `restart` a host is deregistered and drained before its switch.
    #[arg(long)]
    pub target_group: Vec<String>,
    /// Seconds to wait for a deregistered target to drain.
    #[arg(long, default_value_t = 300)]
    pub drain_timeout: u64,
}

/// What to ship.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// The app's directory.
    #[arg(long, default_value = ".")]
    pub working_directory: PathBuf,
    /// Shell command run in the working directory before packaging.
    #[arg(long)]
    pub build: Option<String>,
    /// Directory to ship (default: the Next.js standalone build of the working directory).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Glob patterns left out of the release, one per flag or line (default: `**/*.map`).
    #[arg(long)]
    pub exclude: Vec<String>,
}

/// `dropship deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Connection.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Source.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Id of the new release (default `<UTC yyyymmddHHMMSS>-<short commit sha>`).
    #[arg(long)]
    pub release: Option<String>,
    /// Finished releases kept per host (the live one and its predecessor are never removed).
    #[arg(long, default_value_t = 5)]
    pub keep_releases: usize,
    /// Skew protection: the new release's `.next/static` also holds the files of the last N releases' (0: off).
    #[arg(long, default_value_t = 3)]
    pub keep_assets: usize,
    /// Paths kept across releases in `shared/` and linked into each release, one per flag or line.
    #[arg(long, default_value = ".env")]
    pub shared: Vec<String>,
    /// Hosts served at once when `host` names several (default: all).
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// `all-at-once` (stage every host, then switch all) or `rolling` (stage and switch in batches).
    #[arg(long, default_value = "all-at-once")]
    pub rollout: String,
    /// Hosts per batch with `rolling`.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Load balancer.
    #[command(flatten)]
    pub targets: TargetGroupArgs,
    /// How the release runs.
    #[command(flatten)]
    pub run: RunArgs,
    /// Env and GitHub.
    #[command(flatten)]
    pub context: ContextArgs,
}

/// The env map and the GitHub deployment record.
#[derive(Debug, Args)]
pub struct ContextArgs {
    /// Dotenv text given to `build` and written on the server as `shared/.env` (0600). Prefer `--env-file`: arguments are visible to other users.
    #[arg(long, env = "DROPSHIP_ENV", hide_env_values = true)]
    pub env: Option<String>,
    /// File of dotenv text (see `--env`).
    #[arg(long, conflicts_with = "env")]
    pub env_file: Option<PathBuf>,
    /// Token for the GitHub Deployments API (in Actions); empty skips it.
    #[arg(long)]
    pub github_token: Option<String>,
    /// GitHub environment name.
    #[arg(long, default_value = "production")]
    pub environment: String,
    /// URL shown on the deployment and in the outputs.
    #[arg(long)]
    pub environment_url: Option<String>,
}

/// How releases are started, checked and switched. Every field is optional on
/// the command line so that `rollback` can tell "not given" (use what the last
/// deploy used) from a default.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the app (process names, nginx upstream); default: last part of `remote-path`.
    #[arg(long)]
    pub app: Option<String>,
    /// `pm2` (default), `systemd` (user units) or `none` (files and the `current` switch only).
    #[arg(long)]
    pub process_manager: Option<String>,
    /// How the app starts inside its release directory (default `node server.js`).
    #[arg(long)]
    pub start: Option<String>,
    /// `restart` (default: one port) or `blue-green` (two ports behind nginx, zero downtime).
    #[arg(long)]
    pub strategy: Option<String>,
    /// Port of the app (default 3000); with `blue-green`, two ports (default `3000,3001`).
    #[arg(long)]
    pub app_port: Option<String>,
    /// HTTP path checked on the new release before it gets traffic (default `/`).
    #[arg(long)]
    pub health_path: Option<String>,
    /// Seconds the new release has to answer 2xx/3xx (default 60).
    #[arg(long)]
    pub health_timeout: Option<u64>,
    /// File dropship rewrites for `blue-green` (default `<remote-path>/.dropship/nginx-upstream.conf`).
    #[arg(long)]
    pub nginx_upstream: Option<String>,
    /// Command that reloads nginx gracefully (default `sudo -n nginx -s reload`).
    #[arg(long)]
    pub nginx_reload: Option<String>,
}

impl RunArgs {
    /// Whether none of the options was given.
    pub fn is_empty(&self) -> bool {
        let RunArgs {
            app,
            process_manager,
            start,
            strategy,
            app_port,
            health_path,
            health_timeout,
            nginx_upstream,
            nginx_reload,
        } = self;
        [
            app,
            process_manager,
            start,
            strategy,
            app_port,
            health_path,
            nginx_upstream,
            nginx_reload,
        ]
        .iter()
        .all(|o| o.is_none())
            && health_timeout.is_none()
    }
}

/// `dropship rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Connection.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The release to make live (default: the one before the live one).
    #[arg(long)]
    pub to: Option<String>,
    /// How the release runs.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `dropship package`.
#[derive(Debug, Args)]
pub struct PackageArgs {
    /// Source.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where to write the artefact (`.tar.zst`); the manifest goes beside it as `<output>.manifest.json`.
    #[arg(long)]
    pub output: PathBuf,
    /// Print the outputs as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `dropship doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Connection.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Load balancer (its permissions are checked).
    #[command(flatten)]
    pub targets: TargetGroupArgs,
    /// How the release runs.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `dropship agent-part` (hidden): one extra channel of a large upload.
#[derive(Debug, Args)]
pub struct AgentPartArgs {
    /// The agent's socket.
    #[arg(long)]
    pub socket: std::path::PathBuf,
}

/// `dropship run-app` (hidden): what the process manager starts on the server.
#[derive(Debug, Args)]
pub struct RunAppArgs {
    /// Dotenv file whose variables the app gets (`shared/.env`).
    #[arg(long)]
    pub env_file: PathBuf,
    /// Port the app listens on (`PORT`; `HOSTNAME` is set to 127.0.0.1).
    #[arg(long)]
    pub port: u16,
    /// Directories put in front of `PATH` (where Node was found).
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// The start command, run with `sh -c`.
    #[arg(last = true, required = true)]
    pub start: Vec<String>,
}
