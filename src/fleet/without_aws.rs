//! A build without the `aws` feature (the fuzz targets, lean agent builds):
//! the same names, and a clear error when an AWS input is given.

use super::{Check, FleetSpec};
use crate::error::{Error, Result};
use crate::transport::Host;

/// Never made: asking for AWS fails in [`Fleet::open`].
pub enum Fleet {}

/// Never made.
pub enum TargetGroups {}

/// One host of a batch: its index in the deploy, its name, its instance id.
pub type Member<'a> = (usize, &'a Host, &'a str);

impl Fleet {
    /// Fails when `spec` asks for AWS: this build cannot call it.
    pub fn open(
        spec: FleetSpec,
        _: &mut Vec<Host>,
        _: Option<&str>,
        _: u16,
    ) -> Result<Option<Fleet>> {
        if spec.is_empty() {
            return Ok(None);
        }
        Err(Error::input(
            "ec2-hosts",
            "this dropship was built without AWS support",
            "use the released dropship binary or image, or build with `--features aws`",
        ))
    }

    /// Unreachable.
    pub fn open_ingress(&self, _: &[Host], _: &str) -> Result<()> {
        match *self {}
    }

    /// Unreachable.
    pub fn target_groups(&self, _: &[Host]) -> Result<Option<TargetGroups>> {
        match *self {}
    }

    /// Unreachable.
    pub fn doctor(&self) -> Vec<Check> {
        match *self {}
    }
}

impl TargetGroups {
    /// Unreachable.
    pub fn drain(&self, _: &[Member<'_>]) -> Result<Vec<(usize, String)>> {
        match *self {}
    }

    /// Unreachable.
    pub fn register_again(&self, _: &[Member<'_>]) -> Result<()> {
        match *self {}
    }

    /// Unreachable.
    pub fn wait_healthy(
        &self,
        _: &[Member<'_>],
        _: std::time::Duration,
    ) -> Result<Vec<(usize, String)>, (usize, Error)> {
        match *self {}
    }
}
