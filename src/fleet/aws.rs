//! One AWS session for a command: the standard credential chain, the region,
//! `AWS_ENDPOINT_URL`, and a small runtime to drive the SDK's futures from
//! dropship's threads.

use std::future::Future;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig, timeout::TimeoutConfig};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

use crate::error::{AwsCall, Error, Result};

/// Clients of the AWS APIs dropship calls, in one region.
pub struct Aws {
    runtime: tokio::runtime::Runtime,
    region: String,
    /// EC2: instances and security groups.
    pub ec2: aws_sdk_ec2::Client,
    /// Elastic Load Balancing v2: target groups.
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    /// STS: who the credentials are (`doctor`).
    pub sts: aws_sdk_sts::Client,
}

impl Aws {
    /// Loads credentials and settings as the AWS CLI does (environment, profile,
    /// web identity, instance role), in `region` or the one the environment names.
    pub fn connect(region: Option<&str>) -> Result<Aws> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dropship-aws")
            .enable_all()
            .build()
            .map_err(|source| Error::Local {
                action: "start the AWS client's runtime",
                path: ".".into(),
                source,
            })?;
        // rustls with ring, as octocrab uses it: no second crypto library to build.
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(20))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(region) = region {
            loader = loader.region(Region::new(region.to_owned()));
        }
        let config: SdkConfig = runtime.block_on(loader.load());
        let Some(region) = config.region().map(|r| r.to_string()) else {
            return Err(Error::input(
                "aws-region",
                "no AWS region is set",
                "set `aws-region`, or `AWS_REGION` (aws-actions/configure-aws-credentials sets it)",
            ));
        };
        Ok(Aws {
            ec2: aws_sdk_ec2::Client::new(&config),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&config),
            sts: aws_sdk_sts::Client::new(&config),
            runtime,
            region,
        })
    }

    /// The region every call goes to.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Runs one SDK call to its end on this thread.
    pub fn call<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The error of `call`, naming the call, the region, and the permission it needs.
    pub fn error<E, R>(&self, call: AwsCall, err: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let code = err.code().unwrap_or_default().to_owned();
        let message = match err.message() {
            Some(message) => message.to_owned(),
            None => DisplayErrorContext(&err).to_string(),
        };
        Error::Aws {
            call,
            region: self.region.clone(),
            code,
            message,
        }
    }
}

/// Whether `err` is EC2's answer to a `DryRun` call the caller may make.
pub fn dry_run_allowed<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.code() == Some("DryRunOperation")
}
