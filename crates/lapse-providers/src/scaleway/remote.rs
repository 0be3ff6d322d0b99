//! What the provider does inside a running server over SSH: `exec`, and moving the lease
//! backstop's deadline (`rearm`: the server's `lapse:expires-at=` tag, which the guest reads
//! from the metadata API, and the deadline file, written over SSH).

use std::net::IpAddr;
use std::time::Duration;

use lapse_core::wire::ExecResult;

use super::api::Server;
use super::{NAME, ScalewayProvider, backstop};
use crate::{Placement, ProviderError, ssh};

/// The login on Scaleway's images.
pub const DEFAULT_USER: &str = "root";

/// The address to reach a server at: a public IPv4, else an IPv6.
pub fn ssh_address(server: &Server) -> Option<IpAddr> {
    let addresses: Vec<IpAddr> =
        server.public_ips.iter().filter_map(|ip| ip.address.as_deref()?.parse().ok()).collect();
    addresses.iter().find(|a| a.is_ipv4()).or_else(|| addresses.first()).copied()
}

impl ScalewayProvider {
    /// The server, running, and the address to reach it at.
    async fn reachable(&self, environment_id: &str) -> Result<(String, Server, IpAddr), ProviderError> {
        let Some((zone, server)) = self.find(environment_id).await? else {
            return Err(ProviderError::NotFound { provider: NAME, environment_id: environment_id.to_owned() });
        };
        if server.state != "running" {
            return Err(ProviderError::Failed {
                provider: NAME,
                op: "exec",
                message: format!("server {} is {:?}, not running", server.id, server.state),
            });
        }
        let Some(address) = ssh_address(&server) else {
            return Err(ProviderError::Permanent {
                provider: NAME,
                message: format!("server {} has no public address to reach over SSH", server.id),
            });
        };
        Ok((zone, server, address))
    }

    pub(super) async fn exec_ssh(
        &self,
        environment_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ProviderError> {
        let (_, _, address) = self.reachable(environment_id).await?;
        let target = ssh::Target { environment_id, address, port: self.ssh.port, user: self.ssh.user_or(DEFAULT_USER) };
        ssh::exec(&self.keys, &self.ssh, &target, cmd, timeout).await.map_err(|e| e.into_provider(NAME, "exec"))
    }

    /// Moves a running server's deadline: its tag first (the guest reads it each minute),
    /// then the file over SSH (when keys are kept). A server that is not running is left
    /// alone: its next boot uploads the current deadline.
    pub(super) async fn rearm_server(&self, environment_id: &str, placement: &Placement) -> Result<(), ProviderError> {
        let Some(expires_at) = placement.expires_at else { return Ok(()) };
        let Some((zone, server)) = self.find(environment_id).await? else { return Ok(()) };
        if server.state != "running" {
            return Ok(());
        }
        let tag = backstop::expires_tag(expires_at);
        if !server.tags.contains(&tag) {
            let mut tags: Vec<String> =
                server.tags.iter().filter(|t| !t.starts_with(backstop::EXPIRES_TAG)).cloned().collect();
            tags.push(tag);
            self.api.set_tags(&zone, &server.id, &tags).await.map_err(|e| Self::failed("retag expiry", e))?;
        }
        if !self.keys.is_enabled() {
            return Ok(());
        }
        let Some(address) = ssh_address(&server) else { return Ok(()) };
        let user = self.ssh.user_or(DEFAULT_USER);
        let target = ssh::Target { environment_id, address, port: self.ssh.port, user };
        ssh::write_deadline(&self.keys, &self.ssh, &target, expires_at, NAME).await
    }
}
