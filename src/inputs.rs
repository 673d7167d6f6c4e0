//! Validated inputs: everything the user gave, checked before anything happens,
//! in the types the pipeline works with. Bad input stops here with exit 2.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::{DeployArgs, Ec2Args, RunArgs, ServerArgs, SourceArgs, TargetGroupArgs};
use crate::error::{Error, Result};
use crate::fleet::{Address, Ec2Filter, Fleet, FleetSpec};
use crate::package::{DEFAULT_EXCLUDE, SourceSpec};
use crate::protocol::{self, ProcessManager, RunSpec, Strategy};
use crate::transport::{Credentials, Host, Pinning, PrivateKey};

/// Where to go and how to get in.
pub struct Server {
    /// The targets.
    pub hosts: Vec<Host>,
    /// Key and host-key pinning.
    pub credentials: Credentials,
    /// The app's base directory on every host.
    pub remote_path: String,
    /// Seconds to wait for another deploy's lock.
    pub lock_timeout_secs: u64,
    /// Change nothing.
    pub dry_run: bool,
    /// Print outputs as JSON.
    pub json: bool,
    /// Who deploys, for locks and the release log.
    pub by: String,
    /// The AWS session when EC2 features are asked for; what it changed in
    /// AWS is put back when the command ends (or is cancelled).
    pub fleet: Option<Fleet>,
}

/// A validated `deploy`.
pub struct Deploy {
    /// Where.
    pub server: Server,
    /// What.
    pub source: SourceSpec,
    /// Run before packaging.
    pub build: Option<String>,
    /// The new release's id.
    pub release: String,
    /// Releases kept per host.
    pub keep_releases: usize,
    /// Earlier releases whose `.next/static` the new one also holds (skew protection).
    pub keep_assets: usize,
    /// Paths kept across releases.
    pub shared: Vec<String>,
    /// How the release runs.
    pub run: RunSpec,
    /// The env map: given to `build`, written as `shared/.env` on the server.
    pub env: Option<Vec<(String, String)>>,
    /// The GitHub deployment record.
    pub github: GithubSpec,
    /// Hosts staged or switched at once.
    pub max_parallel: usize,
    /// Hosts switched together: all of them, or batches of this size (`rolling`).
    pub batch_size: usize,
}

/// Where the deploy is recorded on GitHub.
pub struct GithubSpec {
    /// Token for the Deployments API; `None` skips it.
    pub token: Option<String>,
    /// GitHub environment name.
    pub environment: String,
    /// URL of the deployed site.
    pub environment_url: Option<String>,
}

impl Deploy {
    /// Validates `deploy`'s arguments.
    pub fn from_args(args: DeployArgs) -> Result<Deploy> {
        if args.keep_releases < 2 {
            return Err(Error::input(
                "keep-releases",
                "must be at least 2 (the live release and the one to roll back to)",
                "use the default, 5",
            ));
        }
        let shared = split_lines(&args.shared);
        for path in &shared {
            crate::manifest::check_relative_path(path.trim_end_matches('/')).map_err(
                |problem| {
                    Error::input(
                        "shared",
                        problem,
                        "give paths relative to the release, e.g. `.env` or `uploads/`",
                    )
                },
            )?;
        }
        let source = source_spec(&args.source);
        let release = match args.release {
            Some(release) => release,
            None => default_release_id(&source.working_directory),
        };
        protocol::check_release_id(&release)
            .map_err(|problem| Error::input("release", problem, "e.g. `20261126-abc1234`"))?;
        let server = Server::with_targets(args.server, Some(&args.targets))?;
        let hosts = server.hosts.len();
        let max_parallel = match args.max_parallel {
            Some(0) => {
                return Err(Error::input(
                    "max-parallel",
                    "must be at least 1",
                    "leave it out to serve every host at once",
                ));
            }
            Some(n) => n,
            None => hosts,
        };
        let batch_size = match args.rollout.as_str() {
            "all-at-once" => hosts,
            "rolling" if args.batch_size >= 1 => args.batch_size,
            "rolling" => {
                return Err(Error::input(
                    "batch-size",
                    "must be at least 1",
                    "e.g. `1` or `2`",
                ));
            }
            other => {
                return Err(Error::input(
                    "rollout",
                    format!("`{other}` is not a rollout"),
                    "use `all-at-once` or `rolling`",
                ));
            }
        };
        let context = args.context;
        let env_text = match (context.env, &context.env_file) {
            (Some(text), _) => Some(text),
            (None, Some(path)) => Some(read_text(path, "env-file")?),
            (None, None) => None,
        };
        let env = env_text
            .map(|text| {
                crate::dotenv::parse(&text).map_err(|err| {
                    Error::input(
                        "env",
                        err.to_string(),
                        "write one KEY=value a line; put values with spaces, `#` or new lines in double quotes",
                    )
                })
            })
            .transpose()?;
        Ok(Deploy {
            max_parallel,
            batch_size,
            env,
            github: GithubSpec {
                token: context.github_token.filter(|t| !t.trim().is_empty()),
                environment: context.environment,
                environment_url: context.environment_url.filter(|u| !u.trim().is_empty()),
            },
            run: run_spec(&args.run, &server.remote_path)?,
            server,
            build: args.source.build.filter(|b| !b.trim().is_empty()),
            source,
            release,
            keep_releases: args.keep_releases,
            keep_assets: args.keep_assets,
            shared,
        })
    }
}

/// Validates how releases run: process manager, strategy, ports, health check, nginx.
pub fn run_spec(args: &RunArgs, remote_path: &str) -> Result<RunSpec> {
    let process_manager = match args.process_manager.as_deref().unwrap_or("pm2") {
        "pm2" => ProcessManager::Pm2,
        "systemd" => ProcessManager::Systemd,
        "none" => ProcessManager::None,
        other => {
            return Err(Error::input(
                "process-manager",
                format!("`{other}` is not a process manager dropship knows"),
                "use `pm2` (default), `systemd` or `none`",
            ));
        }
    };
    let strategy = match args.strategy.as_deref().unwrap_or("restart") {
        "restart" => Strategy::Restart,
        "blue-green" => Strategy::BlueGreen,
        other => {
            return Err(Error::input(
                "strategy",
                format!("`{other}` is not a strategy"),
                "use `restart` or `blue-green`",
            ));
        }
    };
    let ports = parse_ports(args.app_port.as_deref(), strategy)?;
    if strategy == Strategy::BlueGreen && process_manager == ProcessManager::None {
        return Err(Error::input(
            "strategy",
            "`blue-green` needs a process manager to start the new release",
            "use `process-manager: pm2` or `systemd`, or `strategy: restart`",
        ));
    }
    let health_path = args.health_path.clone().unwrap_or_else(|| "/".into());
    let start = args
        .start
        .clone()
        .unwrap_or_else(|| "node server.js".into());
    if !health_path.starts_with('/')
        || health_path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::input(
            "health-path",
            format!("`{health_path}` is not an HTTP path"),
            "e.g. `/` or `/api/health`",
        ));
    }
    if start.trim().is_empty() {
        return Err(Error::input("start", "is empty", "e.g. `node server.js`"));
    }
    let app = match &args.app {
        Some(app) => app.clone(),
        None => remote_path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    let app_ok = !app.is_empty()
        && app.len() <= 64
        && app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !app_ok {
        return Err(Error::input(
            "app",
            format!("`{app}` cannot name processes and an nginx upstream"),
            "use letters, digits, `-`, `_` and `.`, e.g. `mysite`",
        ));
    }
    let nginx_upstream = args
        .nginx_upstream
        .clone()
        .unwrap_or_else(|| format!("{remote_path}/.dropship/nginx-upstream.conf"));
    if !nginx_upstream.starts_with('/') {
        return Err(Error::input(
            "nginx-upstream",
            "must be an absolute path",
            "e.g. `/etc/nginx/dropship/mysite.conf`",
        ));
    }
    Ok(RunSpec {
        app,
        process_manager,
        start: start.trim().to_owned(),
        strategy,
        ports,
        health_path,
        health_timeout_secs: args.health_timeout.unwrap_or(60),
        nginx_upstream,
        nginx_reload: args
            .nginx_reload
            .clone()
            .unwrap_or_else(|| "sudo -n nginx -s reload".into()),
    })
}

fn parse_ports(text: Option<&str>, strategy: Strategy) -> Result<Vec<u16>> {
    let text = text.unwrap_or(match strategy {
        Strategy::Restart => "3000",
        Strategy::BlueGreen => "3000,3001",
    });
    let ports: Vec<u16> = text
        .split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            Error::input(
                "app-port",
                format!("`{text}` is not a port list"),
                "e.g. `3000` or `3000,3001`",
            )
        })?;
    let wanted = if strategy == Strategy::BlueGreen {
        2
    } else {
        1
    };
    if ports.len() != wanted || (wanted == 2 && ports[0] == ports[1]) {
        return Err(Error::input(
            "app-port",
            format!(
                "`{text}`: the `{}` strategy needs {wanted} distinct port(s)",
                if wanted == 2 { "blue-green" } else { "restart" }
            ),
            "e.g. `3000` for restart, `3000,3001` for blue-green",
        ));
    }
    Ok(ports)
}

/// Validates the source arguments.
pub fn source_spec(args: &SourceArgs) -> SourceSpec {
    let exclude = split_lines(&args.exclude);
    SourceSpec {
        working_directory: args.working_directory.clone(),
        source: args.source.clone(),
        exclude: if exclude.is_empty() {
            DEFAULT_EXCLUDE.iter().map(|s| (*s).to_owned()).collect()
        } else {
            exclude
        },
    }
}

impl Server {
    /// Validates connection arguments; reads key and known_hosts files; finds
    /// the `ec2-hosts` instances.
    pub fn from_args(args: ServerArgs) -> Result<Server> {
        Server::with_targets(args, None)
    }

    /// [`Server::from_args`], with the load balancer's target groups.
    pub fn with_targets(args: ServerArgs, targets: Option<&TargetGroupArgs>) -> Result<Server> {
        protocol::check_remote_path(&args.remote_path).map_err(|problem| {
            Error::input(
                "remote-path",
                problem,
                "use an absolute directory of the app's own, e.g. `/srv/myapp`",
            )
        })?;
        let fleet = fleet_spec(&args.ec2, targets)?;
        let mut hosts = if args.host.trim().is_empty() && !fleet.filters.is_empty() {
            Vec::new()
        } else {
            parse_hosts(&args.host, args.user.as_deref(), args.port)?
        };
        let needs_ssh = !fleet.filters.is_empty() || hosts.iter().any(|h| *h != Host::Local);
        let key = match (args.key, &args.key_file) {
            (Some(text), _) => Some(text),
            (None, Some(path)) => Some(read_text(path, "key-file")?),
            (None, None) => None,
        };
        let key = match key {
            Some(text) if needs_ssh => Some(PrivateKey::parse(
                &text,
                args.key_passphrase.filter(|p| !p.is_empty()),
            )?),
            None if needs_ssh => {
                return Err(Error::input(
                    "key",
                    "no private key was given",
                    "set `key` from a secret, or pass `--key-file`",
                ));
            }
            _ => None,
        };
        let mut known_hosts = args.known_hosts.unwrap_or_default();
        if let Some(path) = &args.known_hosts_file {
            known_hosts.push('\n');
            known_hosts.push_str(&read_text(path, "known-hosts-file")?);
        }
        let fingerprints =
            Pinning::parse_fingerprints(args.host_fingerprint.as_deref().unwrap_or_default())?;
        let fleet = Fleet::open(fleet, &mut hosts, args.user.as_deref(), args.port)?;
        Ok(Server {
            fleet,
            hosts,
            credentials: Credentials {
                key,
                pinning: Pinning {
                    known_hosts,
                    fingerprints,
                    insecure: args.insecure_skip_host_key_check,
                },
            },
            remote_path: args.remote_path.trim_end_matches('/').to_owned(),
            lock_timeout_secs: args.lock_timeout,
            dry_run: args.dry_run,
            json: args.json,
            by: deployer(),
        })
    }

    /// The request header every agent operation starts with.
    pub fn target(&self) -> protocol::Target {
        protocol::Target {
            protocol: protocol::PROTOCOL_VERSION,
            root: self.remote_path.clone(),
            by: self.by.clone(),
            lock_timeout_secs: self.lock_timeout_secs,
            dry_run: self.dry_run,
        }
    }
}

/// Validates the AWS inputs (nothing is asked of AWS yet).
fn fleet_spec(ec2: &Ec2Args, targets: Option<&TargetGroupArgs>) -> Result<FleetSpec> {
    let filters = split_lines(&ec2.ec2_hosts)
        .iter()
        .map(|line| Ec2Filter::parse(line))
        .collect::<Result<Vec<_>>>()?;
    let address = ec2.ec2_address.as_deref().map(Address::parse).transpose()?;
    let ssh_ingress = ec2.ssh_ingress.clone().filter(|g| !g.trim().is_empty());
    if let Some(group) = &ssh_ingress
        && (!group.starts_with("sg-") || group.contains(char::is_whitespace))
    {
        return Err(Error::input(
            "ssh-ingress",
            format!("`{group}` is not a security group id"),
            "give the id of the instances' security group, e.g. `sg-0123456789abcdef0`",
        ));
    }
    let target_groups = targets
        .map(|t| split_lines(&t.target_group))
        .unwrap_or_default();
    for arn in &target_groups {
        if !arn.starts_with("arn:") || !arn.contains(":targetgroup/") {
            return Err(Error::input(
                "target-group",
                format!("`{arn}` is not a target group ARN"),
                "e.g. `arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/73e2d6bc24d8a067`",
            ));
        }
    }
    Ok(FleetSpec {
        filters,
        address,
        region: ec2.aws_region.clone().filter(|r| !r.trim().is_empty()),
        ssh_ingress,
        target_groups,
        drain_timeout: std::time::Duration::from_secs(targets.map_or(300, |t| t.drain_timeout)),
    })
}

fn read_text(path: &Path, input: &'static str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|err| {
        Error::input(
            input,
            format!("cannot read `{}`: {err}", path.display()),
            "check the path",
        )
    })
}

/// Splits values given as several flags or as one multi-line value.
fn split_lines(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.lines())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses `host`: targets separated by commas or new lines, each `[user@]host[:port]` or `local`.
pub fn parse_hosts(text: &str, user: Option<&str>, port: u16) -> Result<Vec<Host>> {
    let bad = |problem: String| {
        Error::input(
            "host",
            problem,
            "write each host as `[user@]host[:port]`, e.g. `deploy@203.0.113.10:22`",
        )
    };
    let mut hosts = Vec::new();
    for item in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if item == "local" {
            hosts.push(Host::Local);
            continue;
        }
        let (item_user, rest) = match item.rsplit_once('@') {
            Some((u, rest)) => (Some(u), rest),
            None => (None, item),
        };
        let (name, item_port) = if let Some(v6) = rest.strip_prefix('[') {
            let (name, after) = v6
                .split_once(']')
                .ok_or_else(|| bad(format!("`{item}` has an unclosed `[`")))?;
            (name, after.strip_prefix(':'))
        } else if rest.matches(':').count() == 1 {
            let (name, p) = rest.split_once(':').unwrap_or((rest, ""));
            (name, Some(p))
        } else {
            (rest, None)
        };
        let port = match item_port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(format!("`{item}` has a bad port")))?,
            None => port,
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!("`{item}` has no usable host name")));
        }
        let Some(user) = item_user.or(user).filter(|u| !u.is_empty()) else {
            return Err(Error::input(
                "user",
                format!("no SSH user for `{item}`"),
                "set `user`, or write the host as `user@host`",
            ));
        };
        hosts.push(Host::Ssh {
            user: user.to_owned(),
            host: name.to_owned(),
            port,
            instance: None,
        });
    }
    if hosts.is_empty() {
        return Err(bad("no host given".into()));
    }
    Ok(hosts)
}

/// `<UTC yyyymmddHHMMSS>-<short commit sha>`, the sha from `GITHUB_SHA` or git.
fn default_release_id(working_directory: &Path) -> String {
    let stamp = utc_stamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let sha = std::env::var("GITHUB_SHA")
        .ok()
        .filter(|s| s.len() >= 7)
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(working_directory)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            let sha = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (out.status.success() && sha.len() >= 7).then_some(sha)
        });
    match sha {
        Some(sha) => format!("{stamp}-{}", &sha[..7]),
        None => stamp,
    }
}

/// `yyyymmddHHMMSS` in UTC for seconds since the epoch.
pub fn utc_stamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `user@hostname` of whoever runs dropship (the GitHub actor in Actions).
fn deployer() -> String {
    if let Ok(actor) = std::env::var("GITHUB_ACTOR") {
        return format!("{actor} (GitHub Actions)");
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_in_every_spelling() {
        let hosts = parse_hosts(
            "deploy@a.example:2222, b.example\n[::1]:23,local",
            Some("ci"),
            22,
        )
        .unwrap();
        let ssh = |user: &str, host: &str, port| Host::Ssh {
            user: user.into(),
            host: host.into(),
            port,
            instance: None,
        };
        assert_eq!(
            hosts,
            vec![
                ssh("deploy", "a.example", 2222),
                ssh("ci", "b.example", 22),
                ssh("ci", "::1", 23),
                Host::Local
            ]
        );
    }

    #[test]
    fn a_host_without_user_is_refused() {
        let err = parse_hosts("a.example", None, 22).err().unwrap();
        assert!(err.to_string().starts_with("input `user`"), "{err}");
        assert!(parse_hosts("a:port", Some("u"), 22).is_err());
        assert!(parse_hosts(" , ", Some("u"), 22).is_err());
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101000000");
        assert_eq!(utc_stamp(1_795_685_385), "20261126092945");
        assert_eq!(utc_stamp(951_782_400 + 3661), "20000229010101");
    }
}
