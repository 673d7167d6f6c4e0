//! The AWS session of one command, and what it must undo when it ends.

use std::sync::Arc;

use super::aws::Aws;
use super::{Address, FleetSpec, TargetGroups, cancel, discover, ingress, ledger};
use crate::error::{Error, Result};
use crate::transport::Host;

/// An AWS session for one command, and what it must undo at the end.
pub struct Fleet {
    aws: Arc<Aws>,
    ledger: Arc<ledger::Ledger>,
    spec: FleetSpec,
    _on_cancel: Option<cancel::OnCancel>,
}

impl Fleet {
    /// Connects to AWS when `spec` asks for it, and adds the instances that
    /// `ec2-hosts` finds to `hosts` (as `user` on `port`).
    pub fn open(
        spec: FleetSpec,
        hosts: &mut Vec<Host>,
        user: Option<&str>,
        port: u16,
    ) -> Result<Option<Fleet>> {
        if spec.is_empty() {
            return Ok(None);
        }
        let aws = Arc::new(Aws::connect(spec.region.as_deref())?);
        if !spec.filters.is_empty() {
            let Some(user) = user.filter(|u| !u.is_empty()) else {
                return Err(Error::input(
                    "user",
                    "no SSH user for the instances `ec2-hosts` finds",
                    "set `user`, e.g. `ubuntu` or `ec2-user`",
                ));
            };
            let found = discover::instances(
                &aws,
                &spec.filters,
                spec.address.unwrap_or(Address::PublicIp),
            )?;
            for f in &found {
                tracing::info!("ec2-hosts: {} at {}", f.instance, f.address);
            }
            hosts.extend(discover::hosts(&found, user, port));
        }
        let ledger = Arc::new(ledger::Ledger::default());
        let on_cancel = match cancel::OnCancel::watch(aws.clone(), ledger.clone()) {
            Ok(watch) => Some(watch),
            Err(err) => {
                tracing::warn!(
                    "cannot watch for cancellation ({err}): a cancelled run may leave AWS changes behind"
                );
                None
            }
        };
        Ok(Some(Fleet {
            aws,
            ledger,
            spec,
            _on_cancel: on_cancel,
        }))
    }

    /// With `ssh-ingress`: lets this runner reach the SSH ports of `hosts`
    /// `during` a command (`deploy <release>`, `rollback`, …).
    pub fn open_ingress(&self, hosts: &[Host], during: &str) -> Result<()> {
        let Some(group) = &self.spec.ssh_ingress else {
            return Ok(());
        };
        let ip = ingress::runner_ip(&self.aws)?;
        let mut ports: Vec<u16> = hosts.iter().filter_map(Host::port).collect();
        ports.sort_unstable();
        ports.dedup();
        ingress::open(&self.aws, &self.ledger, group, ip, &ports, during)
    }

    /// With `target-group`: the groups, checked to hold every host.
    pub fn target_groups(&self, hosts: &[Host]) -> Result<Option<TargetGroups>> {
        if self.spec.target_groups.is_empty() {
            return Ok(None);
        }
        TargetGroups::read(
            self.aws.clone(),
            self.ledger.clone(),
            &self.spec.target_groups,
            hosts,
            self.spec.drain_timeout,
        )
        .map(Some)
    }

    /// The AWS session (for `doctor`).
    pub fn aws(&self) -> &Aws {
        &self.aws
    }

    /// What was asked for.
    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.ledger.settle(&self.aws);
    }
}
