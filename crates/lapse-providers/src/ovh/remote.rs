//! What the provider does inside a running instance over SSH: `exec`, and moving the lease
//! backstop's deadline (`rearm`: OVH instances carry no tags, so only the guest's deadline
//! file, written over SSH).

use std::net::IpAddr;
use std::time::Duration;

use lapse_core::wire::ExecResult;

use super::{OvhInstance, OvhProvider, PROVIDER};
use crate::ssh::{self, SshConfig};
use crate::{Placement, ProviderError};

/// The login on OVH's Ubuntu images (the default image).
pub const DEFAULT_USER: &str = "ubuntu";

fn ssh_address(i: &OvhInstance) -> Option<IpAddr> {
    let all: Vec<IpAddr> = i.ip_addresses.iter().filter_map(|a| a.ip.parse().ok()).collect();
    all.iter().find(|a| a.is_ipv4()).or_else(|| all.first()).copied()
}

impl OvhProvider {
    /// With SSH: keys kept in `ssh.key_dir` (none without one), `exec` and `rearm` over SSH.
    pub fn with_ssh(mut self, ssh: SshConfig) -> Self {
        self.keys = ssh::KeyStore::new(ssh.key_dir.clone());
        self.ssh = ssh;
        self
    }

    /// The running instance and the address to reach it at.
    async fn reachable(&self, environment_id: &str) -> Result<IpAddr, ProviderError> {
        let Some(found) = self.find(environment_id).await? else {
            return Err(ProviderError::NotFound { provider: PROVIDER, environment_id: environment_id.to_owned() });
        };
        if found.status != "ACTIVE" {
            return Err(ProviderError::Failed {
                provider: PROVIDER,
                op: "exec",
                message: format!("instance {} is {}, not ACTIVE", found.id, found.status),
            });
        }
        ssh_address(&found).ok_or_else(|| ProviderError::Permanent {
            provider: PROVIDER,
            message: format!("instance {} has no address to reach over SSH", found.id),
        })
    }

    pub(super) async fn exec_ssh(
        &self,
        environment_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        let address = self.reachable(environment_id).await?;
        let target = ssh::Target { environment_id, address, port: self.ssh.port, user: self.ssh.user_or(DEFAULT_USER) };
        ssh::exec(&self.keys, &self.ssh, &target, cmd, timeout).await.map_err(|e| e.into_provider(PROVIDER, "exec"))
    }

    /// Writes the new deadline into a running instance's file. One that is not running (or
    /// made without a key) is left alone.
    pub(super) async fn rearm_instance(
        &self,
        environment_id: &str,
        placement: &Placement,
    ) -> Result<(), ProviderError> {
        let Some(expires_at) = placement.expires_at else { return Ok(()) };
        if !self.keys.is_enabled() {
            return Ok(());
        }
        let Some(found) = self.find(environment_id).await? else { return Ok(()) };
        let Some(address) = ssh_address(&found).filter(|_| found.status == "ACTIVE") else { return Ok(()) };
        let user = self.ssh.user_or(DEFAULT_USER);
        let target = ssh::Target { environment_id, address, port: self.ssh.port, user };
        ssh::write_deadline(&self.keys, &self.ssh, &target, expires_at, PROVIDER).await
    }
}
