//! What a deploy changed in AWS and must undo whatever happens: targets taken
//! out of a load balancer, and SSH ingress rules. Each change is written here
//! under the lock that [`Ledger::settle`] takes, so a cancelled deploy (or one
//! that fails or panics) puts back exactly what it changed.

use std::sync::{Mutex, MutexGuard};

use aws_sdk_elasticloadbalancingv2::types::TargetDescription;

use super::aws::Aws;
use crate::error::{AwsCall, Error, Result};

/// The changes to undo.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Settled: no further change may start.
    closed: bool,
    /// Targets deregistered and not registered again, per group ARN.
    taken_out: Vec<(String, TargetDescription)>,
    /// Ingress rules added: security group id and rule id.
    rules: Vec<(String, String)>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deregisters `targets` from the group `arn`, noting them first.
    pub fn deregister(&self, aws: &Aws, arn: &str, targets: Vec<TargetDescription>) -> Result<()> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::Cancelled);
        }
        for target in &targets {
            state.taken_out.push((arn.to_owned(), target.clone()));
        }
        aws.call(
            aws.elb
                .deregister_targets()
                .target_group_arn(arn)
                .set_targets(Some(targets))
                .send(),
        )
        .map_err(|err| aws.error(AwsCall::DeregisterTargets, err))?;
        Ok(())
    }

    /// Registers again those of `targets` that were taken out of `arn`.
    pub fn register_again(
        &self,
        aws: &Aws,
        arn: &str,
        targets: Vec<TargetDescription>,
    ) -> Result<()> {
        let mut state = self.lock();
        let back: Vec<TargetDescription> = targets
            .into_iter()
            .filter(|t| state.taken_out.iter().any(|(a, o)| a == arn && o == t))
            .collect();
        if back.is_empty() {
            return Ok(());
        }
        register(aws, arn, back.clone())?;
        state
            .taken_out
            .retain(|(a, o)| !(a == arn && back.contains(o)));
        Ok(())
    }

    /// Adds an ingress rule with `add` (which returns its rule ids), noting it.
    pub fn add_rule(&self, group: &str, add: impl FnOnce() -> Result<Vec<String>>) -> Result<()> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::Cancelled);
        }
        for id in add()? {
            state.rules.push((group.to_owned(), id));
        }
        Ok(())
    }

    /// Undoes every change noted and allows no more: targets registered again,
    /// rules removed. Failures are logged (there is nothing left to fail).
    pub fn settle(&self, aws: &Aws) {
        let mut state = self.lock();
        state.closed = true;
        for (arn, target) in std::mem::take(&mut state.taken_out) {
            let id = target.id().unwrap_or_default().to_owned();
            match register(aws, &arn, vec![target]) {
                Ok(()) => tracing::info!("{id}: registered again in {}", super::group_name(&arn)),
                Err(err) => tracing::error!(
                    "{id} could not be registered again in {}: {err}; register it by hand: `aws elbv2 register-targets --target-group-arn {arn} --targets Id={id}`",
                    super::group_name(&arn)
                ),
            }
        }
        for (group, rule) in std::mem::take(&mut state.rules) {
            if let Err(err) = super::ingress::revoke(aws, &group, std::slice::from_ref(&rule)) {
                tracing::error!(
                    "the SSH rule {rule} of {group} could not be removed: {err}; the next deploy removes it, or: `aws ec2 revoke-security-group-ingress --group-id {group} --security-group-rule-ids {rule}`"
                );
            }
        }
    }
}

fn register(aws: &Aws, arn: &str, targets: Vec<TargetDescription>) -> Result<()> {
    aws.call(
        aws.elb
            .register_targets()
            .target_group_arn(arn)
            .set_targets(Some(targets))
            .send(),
    )
    .map_err(|err| aws.error(AwsCall::RegisterTargets, err))?;
    Ok(())
}
