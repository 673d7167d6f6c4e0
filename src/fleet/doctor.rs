//! `dropship doctor` for the AWS side: the credentials, and each permission a
//! deploy with these inputs needs, asked with `DryRun` where the API has it.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{IpPermission, IpRange};

use super::aws::{Aws, dry_run_allowed};
use super::{Check, Fleet, group_name};
use crate::error::AwsCall;

impl Fleet {
    /// Checks the credentials and every permission the inputs need.
    pub fn doctor(&self) -> Vec<Check> {
        let aws = self.aws();
        let spec = self.spec();
        let mut checks = vec![identity(aws)];
        if !spec.filters.is_empty() {
            let asked = aws.ec2.describe_instances().dry_run(true).send();
            checks.push(dry_run(
                aws,
                AwsCall::DescribeInstances,
                aws.call(asked).err(),
            ));
        }
        if let Some(group) = &spec.ssh_ingress {
            let asked = aws.ec2.describe_security_group_rules().dry_run(true).send();
            checks.push(dry_run(
                aws,
                AwsCall::DescribeSecurityGroupRules,
                aws.call(asked).err(),
            ));
            // A documentation address (TEST-NET-1): the call is only asked, never made.
            let rule = || {
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(22)
                    .to_port(22)
                    .ip_ranges(IpRange::builder().cidr_ip("192.0.2.1/32").build())
                    .build()
            };
            let asked = aws
                .ec2
                .authorize_security_group_ingress()
                .group_id(group)
                .ip_permissions(rule())
                .dry_run(true)
                .send();
            checks.push(dry_run(
                aws,
                AwsCall::AuthorizeSecurityGroupIngress,
                aws.call(asked).err(),
            ));
            let asked = aws
                .ec2
                .revoke_security_group_ingress()
                .group_id(group)
                .ip_permissions(rule())
                .dry_run(true)
                .send();
            checks.push(dry_run(
                aws,
                AwsCall::RevokeSecurityGroupIngress,
                aws.call(asked).err(),
            ));
        }
        for arn in &spec.target_groups {
            checks.push(target_group(aws, arn));
        }
        checks
    }
}

fn identity(aws: &Aws) -> Check {
    match aws.call(aws.sts.get_caller_identity().send()) {
        Ok(who) => Check {
            name: "aws".into(),
            ok: true,
            detail: format!(
                "credentials of {} in {}",
                who.arn().unwrap_or("an unnamed identity"),
                aws.region()
            ),
            fix: None,
        },
        Err(err) => failed(aws, AwsCall::GetCallerIdentity, err),
    }
}

/// The answer to a `DryRun` call: `DryRunOperation` means allowed.
fn dry_run<E>(aws: &Aws, call: AwsCall, err: Option<SdkError<E, HttpResponse>>) -> Check
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        Some(err) if !dry_run_allowed(&err) => failed(aws, call, err),
        _ => Check {
            name: call.permission().into(),
            ok: true,
            detail: "allowed (asked with DryRun)".into(),
            fix: None,
        },
    }
}

fn target_group(aws: &Aws, arn: &str) -> Check {
    let name = group_name(arn);
    let asked = aws
        .elb
        .describe_target_health()
        .target_group_arn(arn)
        .send();
    match aws.call(asked) {
        Ok(answer) => Check {
            name: format!("target group `{name}`"),
            ok: true,
            detail: format!(
                "{} target(s) readable; RegisterTargets and DeregisterTargets cannot be asked without changing the group: the policy must allow `elasticloadbalancing:RegisterTargets` and `elasticloadbalancing:DeregisterTargets` on it",
                answer.target_health_descriptions().len()
            ),
            fix: None,
        },
        Err(err) => failed(aws, AwsCall::DescribeTargetHealth, err),
    }
}

fn failed<E>(aws: &Aws, call: AwsCall, err: SdkError<E, HttpResponse>) -> Check
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let err = aws.error(call, err);
    Check {
        name: call.permission().into(),
        ok: false,
        detail: err.to_string(),
        fix: err.hint(),
    }
}
