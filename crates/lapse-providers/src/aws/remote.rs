//! What the provider does with an instance's guest: its user data (the user's, then Lapse's
//! part with the SSH keys and the backstop), `exec` over SSH, and moving the backstop's
//! deadline of a running instance (`rearm`: the `lapse:expires-at` tag and, over SSH, the
//! deadline file).

use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_ec2::types::{Instance as Ec2Instance, InstanceStateName};
use lapse_core::model::Spec;
use lapse_core::wire::ExecResult;

use super::check::NAME;
use super::{AwsProvider, backstop, state};
use crate::ssh::{self, SshConfig};
use crate::{Placement, ProviderError};

/// The login on the default AMI (Amazon Linux 2); Ubuntu AMIs use `ubuntu`
/// (`SshConfig::user`).
pub const DEFAULT_USER: &str = "ec2-user";

/// The address to reach an instance at: its public IPv4, else an IPv6.
pub fn ssh_address(i: &Ec2Instance) -> Option<IpAddr> {
    let ipv6 = i.network_interfaces().iter().flat_map(|n| n.ipv6_addresses()).filter_map(|a| a.ipv6_address());
    i.public_ip_address().into_iter().chain(ipv6).find_map(|a| a.parse().ok())
}

impl AwsProvider {
    /// With SSH: keys kept in `ssh.key_dir` (none without one), `exec` and `rearm` over SSH.
    pub fn with_ssh(mut self, ssh: SshConfig) -> Self {
        self.keys = ssh::KeyStore::new(ssh.key_dir.clone());
        self.ssh = ssh;
        self
    }

    /// The user data for a launch or a start: the user's, then the keys (Lapse's for the
    /// environment, made now if needed, and the spec's) and the backstop.
    pub(super) async fn user_data(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Option<String>, ProviderError> {
        let mut keys = Vec::new();
        if self.keys.is_enabled() {
            // The launch runs its lookups meanwhile.
            let made = self.keys.ensure_off_thread(environment_id).await;
            keys.push(made.map_err(|e| e.into_provider(NAME, "make the SSH key"))?);
        }
        keys.extend(spec.cloud.iter().flat_map(|c| c.ssh_public_keys.iter().cloned()));
        let deadline = placement.expires_at.map(|ms| ms.div_euclid(1000));
        Ok(backstop::user_data(deadline, spec.user_data.as_deref(), &keys, &self.ssh.deadline_file))
    }

    fn target<'a>(&'a self, environment_id: &'a str, address: IpAddr) -> ssh::Target<'a> {
        ssh::Target { environment_id, address, port: self.ssh.port, user: self.ssh.user_or(DEFAULT_USER) }
    }

    pub(super) async fn exec_ssh(
        &self,
        environment_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        let (live, _) = self.live(environment_id).await?;
        let Some(i) = live else {
            return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() });
        };
        if state(&i) != Some(&InstanceStateName::Running) {
            return Err(ProviderError::Failed {
                provider: NAME,
                op: "exec",
                message: format!("instance {} is not running", i.instance_id().unwrap_or_default()),
            });
        }
        let Some(address) = ssh_address(&i) else {
            return Err(ProviderError::Permanent {
                provider: NAME,
                message: format!(
                    "instance {} has no public address to reach over SSH",
                    i.instance_id().unwrap_or_default()
                ),
            });
        };
        ssh::exec(&self.keys, &self.ssh, &self.target(environment_id, address), cmd, timeout)
            .await
            .map_err(|e| e.into_provider(NAME, "exec"))
    }

    /// Moves a running instance's deadline: the tag (read through IMDS where tags are
    /// exposed), then the deadline file over SSH (when keys are kept and it has an address).
    /// A stopped instance is left alone: its start rewrites the user data.
    pub(super) async fn rearm_instance(
        &self,
        environment_id: &str,
        placement: &Placement,
    ) -> Result<(), ProviderError> {
        let Some(expires_at) = placement.expires_at else { return Ok(()) };
        let (live, _) = self.live(environment_id).await?;
        let Some(i) = live.filter(|i| state(i) == Some(&InstanceStateName::Running)) else { return Ok(()) };
        let id = i.instance_id().unwrap_or_default().to_owned();
        let launched = i.launch_time().map_or_else(lapse_core::now_millis, |t| t.secs() * 1000);
        self.retag_expiry(&id, placement, launched).await?;
        let Some(address) = ssh_address(&i).filter(|_| self.keys.is_enabled()) else { return Ok(()) };
        let target = self.target(environment_id, address);
        ssh::write_deadline(&self.keys, &self.ssh, &target, expires_at, NAME).await
    }
}
