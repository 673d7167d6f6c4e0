//! One AWS session for a command: the standard credential chain, the region,
//! `AWS_ENDPOINT_URL`, and a small runtime to drive the SDK's futures from
//! dropship's threads.

use std::future::Future;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig, timeout::TimeoutConfig};
use aws_sdk_ec2::config::http::HttpResponse;
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
    pub fn error<E>(&self, call: AwsCall, err: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (code, message) = match (err.code(), err.message()) {
            (Some(code), message) => (code.to_owned(), message.unwrap_or_default().to_owned()),
            // An answer the SDK could not read (some stand-ins send EC2's error
            // shape for every service): its <Code> and <Message> still say it.
            (None, _) => match err
                .raw_response()
                .and_then(|r| r.body().bytes())
                .and_then(from_xml)
            {
                Some(found) => found,
                None => without_answer(&err),
            },
        };
        Error::Aws {
            call,
            region: self.region.clone(),
            code,
            message,
        }
    }
}

/// `<Code>` and `<Message>` of an AWS XML error answer.
fn from_xml(body: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(body).ok()?;
    let element = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].trim().to_owned())
    };
    Some((element("Code")?, element("Message").unwrap_or_default()))
}

/// Code and message of a call that got no answer: no credentials, or no network.
fn without_answer<E: std::error::Error + Send + Sync + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> (String, String) {
    let text = DisplayErrorContext(err).to_string();
    let code = match err {
        _ if text.contains("credentials") => "NoCredentials",
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => "Unreachable",
        _ => "",
    };
    (code.to_owned(), text)
}

/// Whether `err` is EC2's answer to a `DryRun` call the caller may make.
pub fn dry_run_allowed<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.code() == Some("DryRunOperation")
        || err
            .raw_response()
            .and_then(|r| r.body().bytes())
            .and_then(from_xml)
            .is_some_and(|(code, _)| code == "DryRunOperation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_in_ec2s_shape_still_gives_its_code() {
        let body = b"<?xml version=\"1.0\"?><ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: u is not authorized to perform: elasticloadbalancing:DeregisterTargets</Message></Error></Errors></ErrorResponse>";
        assert_eq!(
            from_xml(body),
            Some((
                "AccessDenied".into(),
                "User: u is not authorized to perform: elasticloadbalancing:DeregisterTargets"
                    .into()
            ))
        );
        assert_eq!(from_xml(b"<html>"), None);
    }
}
