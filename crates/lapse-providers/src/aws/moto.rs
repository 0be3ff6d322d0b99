//! A moto server (AWS emulated: EC2, S3, ...) of its own on a free loopback port, for the
//! tests and for `lapse bench`'s cloud section. It is the `LAPSE_MOTO_SERVER` program
//! (`scripts/test-env.sh` installs moto and sets it), else `moto_server` on the `PATH`. The
//! server is killed when [`MotoServer`] is dropped.
//!
//! The credentials are the caller's (each test picks its own, so it can check that they never
//! appear in an answer); moto accepts any. Everything it hands out (the server variables, the
//! SDK loader) points at loopback only, with the instance metadata service turned off, so the
//! SDK's credential and region chains never leave the machine.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, ConfigLoader, Region};
use aws_sdk_ec2::config::Credentials;

use super::AwsProvider;
use crate::ProviderError;

/// The region every helper here uses unless told otherwise (moto's default).
pub const REGION: &str = "us-east-1";

/// How long moto may take to listen (it imports all of botocore first: seconds when busy).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    child: tokio::process::Child,
    endpoint: String,
    access_key: String,
    secret_key: String,
}

impl MotoServer {
    /// Starts one that the given credentials will be used against; an error says which
    /// program could not start or did not listen.
    pub async fn start(access_key: &str, secret_key: &str) -> Result<MotoServer, String> {
        let program = std::env::var("LAPSE_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        // A free loopback port: bound, read and released; moto binds it again at once.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let mut child = tokio::process::Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {program} (set LAPSE_MOTO_SERVER; the test command installs moto): {e}"))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let until = Instant::now() + START_TIMEOUT;
        while Instant::now() < until {
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.is_ok() {
                return Ok(MotoServer {
                    child,
                    endpoint,
                    access_key: access_key.into(),
                    secret_key: secret_key.into(),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{program} exited ({status}) before listening on {endpoint}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{program} did not listen on {endpoint} within {START_TIMEOUT:?}"))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The variables a `lapse serve` (or any SDK user) needs to reach it in [`REGION`].
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_REGION", REGION.into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// An SDK config loader for `region` of this server, with its credentials.
    pub fn loader(&self, region: &str) -> ConfigLoader {
        let credentials = Credentials::new(&self.access_key, &self.secret_key, None, None, "moto");
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(credentials)
    }

    /// An EC2 client of [`REGION`]: the test's own view of what exists.
    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.loader(REGION).load().await)
    }

    /// An `aws` provider of `controller` in [`REGION`] on this server.
    pub async fn provider(&self, controller: &str) -> Result<AwsProvider, ProviderError> {
        AwsProvider::from_loader(self.loader(REGION), controller).await
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
