//! `target-group`: with `restart`, each batch leaves the load balancer and
//! drains before its switch and comes back after it; with either strategy the
//! batch must be `healthy` in every group before the next one starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};

use super::aws::Aws;
use super::ledger::Ledger;
use crate::error::{AwsCall, Error, Result};
use crate::transport::Host;

/// How often target states are asked for while waiting.
const POLL: Duration = Duration::from_secs(1);

/// The listed target groups and where each instance is registered in them.
pub struct TargetGroups {
    aws: Arc<Aws>,
    ledger: Arc<Ledger>,
    /// Per group ARN: the targets (instance id, port) of the deploy's instances.
    members: Vec<(String, Vec<TargetDescription>)>,
    drain_timeout: Duration,
}

/// One host of a batch: its index in the deploy, its name, its instance id.
pub type Member<'a> = (usize, &'a Host, &'a str);

impl TargetGroups {
    /// Reads every group's targets; each host must be registered in each group
    /// (checked before anything changes).
    pub fn read(
        aws: Arc<Aws>,
        ledger: Arc<Ledger>,
        arns: &[String],
        hosts: &[Host],
        drain_timeout: Duration,
    ) -> Result<TargetGroups> {
        let mut members = Vec::new();
        for arn in arns {
            let registered: Vec<TargetDescription> = health(&aws, arn, None)?
                .into_iter()
                .map(|(target, _)| target)
                .collect();
            let mut mine = Vec::new();
            for host in hosts {
                let Some(instance) = host.instance() else {
                    return Err(Error::input(
                        "target-group",
                        format!("{host} is not an EC2 instance dropship found"),
                        "list the instances with `ec2-hosts` (e.g. `tag:Role=web`) instead of `host`",
                    ));
                };
                let before = mine.len();
                mine.extend(
                    registered
                        .iter()
                        .filter(|t| t.id() == Some(instance))
                        .cloned(),
                );
                if mine.len() == before {
                    return Err(Error::NotInTargetGroup {
                        host: host.to_string(),
                        target_group: group_name(arn),
                    });
                }
            }
            members.push((arn.clone(), mine));
        }
        Ok(TargetGroups {
            aws,
            ledger,
            members,
            drain_timeout,
        })
    }

    /// Takes `batch` out of every group and waits until the load balancer has
    /// drained it, at most `drain-timeout`. Returns a step per host (logged).
    pub fn drain(&self, batch: &[Member<'_>]) -> Result<Vec<(usize, String)>> {
        let started = Instant::now();
        for (arn, targets) in &self.members {
            let targets = of_batch(targets, batch);
            self.ledger.deregister(&self.aws, arn, targets)?;
        }
        let drained = self.wait(batch, self.drain_timeout, |state| {
            state != Some(&TargetHealthStateEnum::Draining)
        })?;
        let secs = started.elapsed().as_secs_f64();
        Ok(match drained {
            None => each(
                batch,
                format!("left the load balancer and drained in {secs:.1} s"),
                false,
            ),
            Some(_) => each(
                batch,
                format!(
                    "left the load balancer; still draining after {secs:.0} s (`drain-timeout`), switched anyway"
                ),
                true,
            ),
        })
    }

    /// Puts back in every group what [`TargetGroups::drain`] took out of `batch`.
    pub fn register_again(&self, batch: &[Member<'_>]) -> Result<()> {
        for (arn, targets) in &self.members {
            self.ledger
                .register_again(&self.aws, arn, of_batch(targets, batch))?;
        }
        Ok(())
    }

    /// Waits until every host of `batch` is `healthy` in every group, at most
    /// `timeout`. The error names the first host that is not, with its state.
    pub fn wait_healthy(
        &self,
        batch: &[Member<'_>],
        timeout: Duration,
    ) -> Result<Vec<(usize, String)>, (usize, Error)> {
        let started = Instant::now();
        let healthy =
            |state: Option<&TargetHealthStateEnum>| state == Some(&TargetHealthStateEnum::Healthy);
        match self.wait(batch, timeout, healthy) {
            Ok(None) => {
                let secs = started.elapsed().as_secs_f64();
                Ok(each(
                    batch,
                    format!("healthy in the load balancer after {secs:.1} s"),
                    false,
                ))
            }
            Ok(Some(stuck)) => Err((
                stuck.index,
                Error::Unhealthy {
                    host: stuck.host,
                    target_group: group_name(&stuck.arn),
                    state: stuck.state,
                    reason: stuck.reason,
                    waited_secs: timeout.as_secs(),
                },
            )),
            Err(err) => Err((batch.first().map_or(0, |m| m.0), err)),
        }
    }

    /// Polls until every target of `batch` is `done` in every group, or
    /// `timeout`: then the first target that is not.
    fn wait(
        &self,
        batch: &[Member<'_>],
        timeout: Duration,
        done: impl Fn(Option<&TargetHealthStateEnum>) -> bool,
    ) -> Result<Option<Stuck>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut stuck = None;
            for (arn, targets) in &self.members {
                let targets = of_batch(targets, batch);
                for (target, state) in health(&self.aws, arn, Some(targets))? {
                    if done(state.state.as_ref()) || stuck.is_some() {
                        continue;
                    }
                    let Some(&(index, host, _)) =
                        batch.iter().find(|(_, _, id)| target.id() == Some(*id))
                    else {
                        continue;
                    };
                    stuck = Some(Stuck {
                        index,
                        host: host.to_string(),
                        arn: arn.clone(),
                        state: state
                            .state
                            .as_ref()
                            .map_or("unknown", |s| s.as_str())
                            .into(),
                        reason: state.reason,
                    });
                }
            }
            match stuck {
                None => return Ok(None),
                Some(stuck) if Instant::now() >= deadline => return Ok(Some(stuck)),
                Some(_) => std::thread::sleep(POLL),
            }
        }
    }
}

/// `step` for every host of `batch`, logged once each (a warning when `warn`).
fn each(batch: &[Member<'_>], step: String, warn: bool) -> Vec<(usize, String)> {
    batch
        .iter()
        .map(|(index, host, _)| {
            if warn {
                tracing::warn!("{host}: {step}");
            } else {
                tracing::info!("{host}: {step}");
            }
            (*index, step.clone())
        })
        .collect()
}

/// A target not yet in the state waited for.
struct Stuck {
    index: usize,
    host: String,
    arn: String,
    state: String,
    reason: String,
}

/// A target's state as the load balancer reports it.
struct State {
    state: Option<TargetHealthStateEnum>,
    /// Reason code and description, e.g. `Target.ResponseCodeMismatch: Health checks failed…`.
    reason: String,
}

/// The targets of `batch`'s instances among `targets`.
fn of_batch(targets: &[TargetDescription], batch: &[Member<'_>]) -> Vec<TargetDescription> {
    targets
        .iter()
        .filter(|t| batch.iter().any(|(_, _, id)| t.id() == Some(*id)))
        .cloned()
        .collect()
}

/// `DescribeTargetHealth` of `arn`: every target, or the ones given.
fn health(
    aws: &Aws,
    arn: &str,
    targets: Option<Vec<TargetDescription>>,
) -> Result<Vec<(TargetDescription, State)>> {
    let answer = aws
        .call(
            aws.elb
                .describe_target_health()
                .target_group_arn(arn)
                .set_targets(targets)
                .send(),
        )
        .map_err(|err| aws.error(AwsCall::DescribeTargetHealth, err))?;
    Ok(answer
        .target_health_descriptions()
        .iter()
        .filter_map(|d| {
            let target = d.target()?.clone();
            let health = d.target_health();
            let reason = [
                health
                    .and_then(|h| h.reason())
                    .map(|r| r.as_str().to_owned()),
                health.and_then(|h| h.description()).map(str::to_owned),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
            let state = health.and_then(|h| h.state()).cloned();
            Some((target, State { state, reason }))
        })
        .collect())
}

/// `web` of `arn:aws:elasticloadbalancing:…:targetgroup/web/73e2d6bc24d8a067`.
pub fn group_name(arn: &str) -> String {
    arn.split("targetgroup/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(arn)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_named_by_its_arn() {
        assert_eq!(
            group_name(
                "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/73e2d6bc24d8a067"
            ),
            "web"
        );
        assert_eq!(group_name("odd"), "odd");
    }
}
