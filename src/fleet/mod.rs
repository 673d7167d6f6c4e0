//! The client's AWS side, for fleets of EC2 instances: hosts found by EC2
//! filters (`ec2-hosts`), a temporary SSH rule for this runner
//! (`ssh-ingress`), and load-balancer target groups drained and health-gated
//! batch by batch (`target-group`). Nothing of it is in the agent.

#[cfg(feature = "aws")]
mod aws;
#[cfg(feature = "aws")]
mod cancel;
#[cfg(feature = "aws")]
mod discover;
#[cfg(feature = "aws")]
mod doctor;
#[cfg(feature = "aws")]
mod ingress;
#[cfg(feature = "aws")]
mod ledger;
#[cfg(feature = "aws")]
mod session;
#[cfg(feature = "aws")]
mod targets;
#[cfg(not(feature = "aws"))]
mod without_aws;

use std::fmt;
use std::time::Duration;

#[cfg(feature = "aws")]
pub use session::Fleet;
#[cfg(feature = "aws")]
pub use targets::{Member, TargetGroups, group_name};
#[cfg(not(feature = "aws"))]
pub use without_aws::{Fleet, Member, TargetGroups};

use crate::error::{Error, Result};

/// One `ec2-hosts` line: a DescribeInstances filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ec2Filter {
    /// `tag:Role`, `instance-id`, `tag:aws:autoscaling:groupName`, …
    pub name: String,
    /// Any of these (comma-separated in the line).
    pub values: Vec<String>,
}

impl Ec2Filter {
    /// Parses `name=value[,value…]`; a bare `i-…` is `instance-id=i-…`.
    pub fn parse(line: &str) -> Result<Ec2Filter> {
        let line = line.trim();
        let (name, values) = match line.split_once('=') {
            Some((name, values)) => (name.trim(), values),
            None if line.starts_with("i-") => ("instance-id", line),
            None => ("", line),
        };
        let values: Vec<String> = values
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        if name.is_empty() || values.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(Error::input(
                "ec2-hosts",
                format!("`{line}` is not an EC2 filter"),
                "write one filter a line, e.g. `tag:Role=web`, `tag:aws:autoscaling:groupName=web` or `instance-id=i-0123456789abcdef0`",
            ));
        }
        Ok(Ec2Filter {
            name: name.to_owned(),
            values,
        })
    }
}

impl fmt::Display for Ec2Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.values.join(","))
    }
}

/// `ec2-address`: which address of an instance dropship connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    /// The public IPv4 address (default).
    PublicIp,
    /// The private IPv4 address (a runner inside the VPC).
    PrivateIp,
    /// The public DNS name.
    PublicDns,
    /// The private DNS name.
    PrivateDns,
}

impl Address {
    /// Parses the input's value.
    pub fn parse(text: &str) -> Result<Address> {
        match text.trim() {
            "" | "public-ip" => Ok(Address::PublicIp),
            "private-ip" => Ok(Address::PrivateIp),
            "public-dns" => Ok(Address::PublicDns),
            "private-dns" => Ok(Address::PrivateDns),
            other => Err(Error::input(
                "ec2-address",
                format!("`{other}` is not an address kind"),
                "use `public-ip` (default), `private-ip`, `public-dns` or `private-dns`",
            )),
        }
    }

    /// The input's spelling.
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    pub fn name(self) -> &'static str {
        match self {
            Address::PublicIp => "public-ip",
            Address::PrivateIp => "private-ip",
            Address::PublicDns => "public-dns",
            Address::PrivateDns => "private-dns",
        }
    }
}

/// One line of `doctor`'s AWS report.
pub struct Check {
    /// What was checked, e.g. `ec2:DescribeInstances`.
    pub name: String,
    /// Whether it is fine.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do, when not fine.
    pub fix: Option<String>,
}

/// The validated AWS inputs of a command.
#[derive(Clone, Debug, Default)]
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
pub struct FleetSpec {
    /// `ec2-hosts`.
    pub filters: Vec<Ec2Filter>,
    /// `ec2-address`.
    pub address: Option<Address>,
    /// `aws-region` (else the environment's).
    pub region: Option<String>,
    /// `ssh-ingress`: the security group to open for this runner.
    pub ssh_ingress: Option<String>,
    /// `target-group` ARNs (deploy only).
    pub target_groups: Vec<String>,
    /// `drain-timeout`.
    pub drain_timeout: Duration,
}

impl FleetSpec {
    /// Whether any AWS feature is asked for.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.ssh_ingress.is_none() && self.target_groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_in_every_spelling() {
        let parse = |line| {
            Ec2Filter::parse(line)
                .map(|f| f.to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse("tag:Role=web"), Ok("tag:Role=web".into()));
        assert_eq!(
            parse(" tag:aws:autoscaling:groupName = web-asg "),
            Ok("tag:aws:autoscaling:groupName=web-asg".into())
        );
        assert_eq!(
            parse("instance-id=i-1, i-2"),
            Ok("instance-id=i-1,i-2".into())
        );
        assert_eq!(parse("i-0abc"), Ok("instance-id=i-0abc".into()));
        assert_eq!(
            parse("web"),
            Err("input `ec2-hosts`: `web` is not an EC2 filter".into())
        );
        assert_eq!(
            parse("tag:Role="),
            Err("input `ec2-hosts`: `tag:Role=` is not an EC2 filter".into())
        );
    }
}
