//! `ssh-ingress`: a rule in the security group lets this runner's public IP
//! reach the SSH port for the deploy only. Rules carry a description starting
//! with [`MARK`], so that one left by a deploy that died is removed by the next.

use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, Ipv6Range};

use super::aws::Aws;
use super::ledger::Ledger;
use crate::error::{AwsCall, Error, Result};

/// How dropship's rules begin their description.
pub const MARK: &str = "dropship:";

/// Where this runner's public IP is asked for when `DROPSHIP_RUNNER_IP` is not set.
const LOOKUP: &str = "https://checkip.amazonaws.com/";

/// Removes dropship rules left in `group`, then lets `ip` reach each of `ports`.
pub fn open(
    aws: &Aws,
    ledger: &Ledger,
    group: &str,
    ip: IpAddr,
    ports: &[u16],
    during: &str,
) -> Result<()> {
    let left = left_behind(aws, group)?;
    if !left.is_empty() {
        let ids: Vec<String> = left.iter().map(|(id, _)| id.clone()).collect();
        revoke(aws, group, &ids)?;
        for (id, description) in &left {
            tracing::warn!(
                "{group}: removed the SSH rule {id} an earlier deploy left (\"{description}\")"
            );
        }
    }
    for &port in ports {
        let description = format!("{MARK} SSH for {ip} during {during}");
        ledger.add_rule(group, || authorize(aws, group, ip, port, &description))?;
        tracing::info!("{group}: {ip} may reach port {port} for this deploy");
    }
    Ok(())
}

/// Rules of `group` that dropship added: (rule id, description).
fn left_behind(aws: &Aws, group: &str) -> Result<Vec<(String, String)>> {
    let mut rules = Vec::new();
    let mut token = None;
    loop {
        let page = aws
            .call(
                aws.ec2
                    .describe_security_group_rules()
                    .filters(Filter::builder().name("group-id").values(group).build())
                    .set_next_token(token)
                    .send(),
            )
            .map_err(|err| aws.error(AwsCall::DescribeSecurityGroupRules, err))?;
        for rule in page.security_group_rules() {
            let description = rule.description().unwrap_or_default();
            let ours = rule.is_egress() != Some(true) && description.starts_with(MARK);
            if let (true, Some(id)) = (ours, rule.security_group_rule_id()) {
                rules.push((id.to_owned(), description.to_owned()));
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(rules);
        }
    }
}

fn authorize(
    aws: &Aws,
    group: &str,
    ip: IpAddr,
    port: u16,
    description: &str,
) -> Result<Vec<String>> {
    let permission = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(i32::from(port))
        .to_port(i32::from(port));
    let permission = match ip {
        IpAddr::V4(v4) => permission.ip_ranges(
            IpRange::builder()
                .cidr_ip(format!("{v4}/32"))
                .description(description)
                .build(),
        ),
        IpAddr::V6(v6) => permission.ipv6_ranges(
            Ipv6Range::builder()
                .cidr_ipv6(format!("{v6}/128"))
                .description(description)
                .build(),
        ),
    };
    let answer = aws
        .call(
            aws.ec2
                .authorize_security_group_ingress()
                .group_id(group)
                .ip_permissions(permission.build())
                .send(),
        )
        .map_err(|err| aws.error(AwsCall::AuthorizeSecurityGroupIngress, err))?;
    Ok(answer
        .security_group_rules()
        .iter()
        .filter_map(|r| r.security_group_rule_id().map(str::to_owned))
        .collect())
}

/// Removes the rules `ids` from `group`.
pub fn revoke(aws: &Aws, group: &str, ids: &[String]) -> Result<()> {
    aws.call(
        aws.ec2
            .revoke_security_group_ingress()
            .group_id(group)
            .set_security_group_rule_ids(Some(ids.to_vec()))
            .send(),
    )
    .map_err(|err| aws.error(AwsCall::RevokeSecurityGroupIngress, err))?;
    Ok(())
}

/// This runner's public IP: `DROPSHIP_RUNNER_IP`, or one HTTPS lookup
/// (`DROPSHIP_RUNNER_IP_URL` replaces the address asked).
pub fn runner_ip(aws: &Aws) -> Result<IpAddr> {
    if let Some(given) = std::env::var("DROPSHIP_RUNNER_IP")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        return parse_ip(&given).ok_or_else(|| {
            Error::input(
                "DROPSHIP_RUNNER_IP",
                format!("`{}` is not an IP address", given.trim()),
                "set it to this runner's public IPv4 or IPv6 address, or leave it unset to look it up",
            )
        });
    }
    let url = std::env::var("DROPSHIP_RUNNER_IP_URL").unwrap_or_else(|_| LOOKUP.into());
    let answer = aws.call(lookup(&url));
    answer
        .and_then(|body| parse_ip(&body).ok_or_else(|| format!("it answered {:?}", body.trim())))
        .map_err(|problem| Error::RunnerIp { url, problem })
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

/// One GET of `url`, its body as text.
async fn lookup(url: &str) -> std::result::Result<String, String> {
    use http_body_util::BodyExt;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let uri: hyper::Uri = url.parse().map_err(|err| format!("bad address: {err}"))?;
    let fetch = async {
        let response = client.get(uri).await.map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| err.to_string())?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| "no answer in 10 s".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_with_a_new_line_is_an_ip() {
        assert_eq!(parse_ip("203.0.113.7\n"), "203.0.113.7".parse().ok());
        assert_eq!(parse_ip("2001:db8::7"), "2001:db8::7".parse().ok());
        assert_eq!(parse_ip("<html>"), None);
    }
}
