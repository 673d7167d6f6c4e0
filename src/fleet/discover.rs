//! `ec2-hosts`: the running instances that match every filter become hosts.

use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName};

use super::aws::Aws;
use super::{Address, Ec2Filter};
use crate::error::{AwsCall, Error, Result};
use crate::transport::Host;

/// One instance found, and how it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `i-…`.
    pub instance: String,
    /// The address `ec2-address` picks.
    pub address: String,
}

/// The running instances matching every filter, in instance-id order.
pub fn instances(aws: &Aws, filters: &[Ec2Filter], address: Address) -> Result<Vec<Found>> {
    let mut api_filters: Vec<Filter> = filters
        .iter()
        .map(|f| {
            Filter::builder()
                .name(&f.name)
                .set_values(Some(f.values.clone()))
                .build()
        })
        .collect();
    api_filters.push(
        Filter::builder()
            .name("instance-state-name")
            .values("running")
            .build(),
    );
    let mut found = Vec::new();
    let mut token = None;
    loop {
        let page = aws
            .call(
                aws.ec2
                    .describe_instances()
                    .set_filters(Some(api_filters.clone()))
                    .set_next_token(token)
                    .send(),
            )
            .map_err(|err| aws.error(AwsCall::DescribeInstances, err))?;
        for instance in page.reservations().iter().flat_map(|r| r.instances()) {
            // Filters already ask for running ones; a stand-in API may not.
            let running =
                instance.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running);
            if running {
                found.push(reach(instance, address)?);
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    found.sort_by(|a, b| a.instance.cmp(&b.instance));
    found.dedup();
    if found.is_empty() {
        return Err(Error::NoInstances {
            filters: filters.iter().map(Ec2Filter::to_string).collect(),
            region: aws.region().to_owned(),
        });
    }
    Ok(found)
}

fn reach(instance: &Instance, address: Address) -> Result<Found> {
    let id = instance.instance_id().unwrap_or_default().to_owned();
    let value = match address {
        Address::PublicIp => instance.public_ip_address(),
        Address::PrivateIp => instance.private_ip_address(),
        Address::PublicDns => instance.public_dns_name(),
        Address::PrivateDns => instance.private_dns_name(),
    };
    match value.filter(|v| !v.is_empty()) {
        Some(value) => Ok(Found {
            instance: id,
            address: value.to_owned(),
        }),
        None => Err(Error::NoAddress {
            instance: id,
            address: address.name(),
        }),
    }
}

/// The hosts for `found`, as `user` on `port`.
pub fn hosts(found: &[Found], user: &str, port: u16) -> Vec<Host> {
    found
        .iter()
        .map(|f| Host::Ssh {
            user: user.to_owned(),
            host: f.address.clone(),
            port,
            instance: Some(f.instance.clone()),
        })
        .collect()
}
