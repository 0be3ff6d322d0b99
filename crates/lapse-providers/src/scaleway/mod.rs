//! `scaleway`: environments as Scaleway Instance API v1 servers, made exactly as SWIM
//! (alex-sviridov/swim@27f4120, `internal/connector/scaleway/`) makes them.
//!
//! **Not verified against the real cloud**: it is tested against a local fake that follows
//! the API's published schema (the generated `scaleway/scaleway-sdk-go` types), which rejects
//! any request the schema does not define.
//!
//! `ensure_running` for an environment:
//! 1. looks it up by its tag `lapse:environment=<id>` (so a crash between the create and its
//!    record leaves exactly one server: the retry finds it and carries on from its state);
//! 2. finds `spec.cloud.security_group` by name within the project (when given);
//! 3. creates the server (`POST /servers`): name `lapse-<id>`, `commercial_type` =
//!    `spec.cloud.instance_type`, `image` = `spec.image`, in `spec.cloud.zone` (default
//!    `SCW_DEFAULT_ZONE`), `dynamic_ip_required: false`, tags `lapse:environment=<id>` and
//!    `lapse:controller=<controller id>`;
//! 4. attaches a routed IPv6 (`POST /ips {type: routed_ipv6}`) unless it has one;
//! 5. uploads the user data under the key `cloud-init` **before power-on**: the user's own,
//!    then Lapse's part ([`crate::cloud_init`]) with the environment's SSH key
//!    ([`crate::ssh::KeyStore`], when a key directory is configured), the spec's
//!    `cloud.ssh_public_keys`, and the lease backstop ([`backstop`]) when the placement carries
//!    an expiry (also tagged `lapse:expires-at=<Unix seconds>` for the guest to read);
//! 6. powers it on and polls until it runs (bounded by `settle_timeout`).
//!
//! A failure after the create removes the half-made server (and its IPs and volumes).
//! `stop` is `poweroff`; `delete` is `poweroff`, a wait for `stopped`, then the delete of the
//! server, its IPs and its volumes (the API keeps those after the server). States:
//! `starting` → `Pending`, `running` → `Running`, `stopping` → `Stopping`, `stopped`,
//! `stopped in place` and `locked` → `Stopped`. `Instance.addresses` holds the public IPs
//! (the routed IPv6 first), and each address is an endpoint on port 22 (then `spec.ports`
//! are not known to `inspect`), so SWIM's `ipv6` field shows the IPv6.
//!
//! `exec` runs over SSH ([`crate::ssh`]) as `root` (or `SshConfig::user`) on the public IPv4,
//! else the IPv6; `rearm` (after `extend`) retags the expiry and writes the guest's deadline
//! file over SSH ([`remote`]). `delete` also forgets the environment's keys.
//!
//! `list` pages (`page`, `per_page`) through the servers tagged with the controller's tag, in
//! the default zone and every zone this process has created in.

mod api;
pub mod backstop;
mod config;
mod remote;
mod validate;

pub use api::{ApiError, MAX_PAUSE, retry_after};
pub use config::{DEFAULT_API_URL, ScalewayConfig};
pub use validate::{valid_zone, validate};

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::{Endpoint, Spec};
use lapse_core::validate::FieldError;

use crate::ssh::{KeyStore, SshConfig};
use crate::{Instance, InstanceStatus, Placement, Provider, ProviderError};
use api::{Api, Server};

const NAME: &str = "scaleway";

/// The user-data key SWIM (and cloud-init on Scaleway) uses.
pub const USER_DATA_KEY: &str = "cloud-init";

/// The tag that names the environment.
pub fn environment_tag(id: &str) -> String {
    format!("lapse:environment={id}")
}

/// The tag that names the control plane.
pub fn controller_tag(id: &str) -> String {
    format!("lapse:controller={id}")
}

/// The provider.
#[derive(Debug)]
pub struct ScalewayProvider {
    cfg: ScalewayConfig,
    api: Api,
    controller_id: String,
    /// Zones to look in: the default one and every one a server was made in.
    zones: Mutex<BTreeSet<String>>,
    ssh: SshConfig,
    keys: KeyStore,
}

impl ScalewayProvider {
    pub fn new(cfg: ScalewayConfig, controller_id: &str) -> Result<Self, ProviderError> {
        crate::answer::check_transport(&cfg.api_url)
            .map_err(|message| ProviderError::Unavailable { provider: NAME, message })?;
        let api = Api::new(&cfg.api_url, &cfg.secret_key, cfg.call_timeout, cfg.retries, cfg.retry_pause);
        let zones = Mutex::new(BTreeSet::from([cfg.default_zone.clone()]));
        let ssh = SshConfig::default();
        let keys = KeyStore::new(None);
        Ok(ScalewayProvider { cfg, api, controller_id: controller_id.to_owned(), zones, ssh, keys })
    }

    /// With SSH: keys kept in `ssh.key_dir` (none without one), `exec` and `rearm` over SSH.
    pub fn with_ssh(mut self, ssh: SshConfig) -> Self {
        self.keys = KeyStore::new(ssh.key_dir.clone());
        self.ssh = ssh;
        self
    }

    /// The SSH keys to let in: Lapse's for the environment (made now if needed) and the spec's.
    async fn ssh_keys(&self, environment_id: &str, spec: &Spec) -> Result<Vec<String>, ProviderError> {
        let mut keys = Vec::new();
        if self.keys.is_enabled() {
            let made = self.keys.ensure_off_thread(environment_id).await;
            keys.push(made.map_err(|e| e.into_provider(NAME, "make the SSH key"))?);
        }
        keys.extend(spec.cloud.iter().flat_map(|c| c.ssh_public_keys.iter().cloned()));
        Ok(keys)
    }

    fn zones(&self) -> Vec<String> {
        // A poisoned lock only means a panic elsewhere mid-insert; the set is still usable.
        self.zones.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    fn failed(op: &'static str, e: ApiError) -> ProviderError {
        if e.is_retryable() {
            ProviderError::Failed { provider: NAME, op, message: e.to_string() }
        } else {
            ProviderError::Permanent { provider: NAME, message: format!("{op}: {e}") }
        }
    }

    /// The environment's server and its zone, if there is one.
    async fn find(&self, environment_id: &str) -> Result<Option<(String, Server)>, ProviderError> {
        let tag = environment_tag(environment_id);
        for zone in self.zones() {
            let (servers, _) = self
                .api
                .list_servers(&zone, &self.cfg.project_id, &tag, 1, self.cfg.page_size)
                .await
                .map_err(|e| Self::failed("list", e))?;
            // The API's tag filter matches; the check again guards against a lax filter.
            if let Some(s) = servers.into_iter().find(|s| s.tags.contains(&tag)) {
                return Ok(Some((zone, s)));
            }
        }
        Ok(None)
    }

    /// Polls until the server's state is one of `want` (or the settle timeout passes).
    async fn settle(&self, zone: &str, id: &str, want: &[&str], op: &'static str) -> Result<Server, ProviderError> {
        let deadline = tokio::time::Instant::now() + self.cfg.settle_timeout;
        loop {
            let s = self.api.get_server(zone, id).await.map_err(|e| Self::failed(op, e))?;
            if want.contains(&s.state.as_str()) {
                return Ok(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProviderError::Failed {
                    provider: NAME,
                    op,
                    message: format!("server {id} still {:?} after {:?}", s.state, self.cfg.settle_timeout),
                });
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }

    /// Steps 4-6 on a server that exists and is off: IPv6, user data, power-on, wait.
    async fn boot(
        &self,
        environment_id: &str,
        zone: &str,
        server: &Server,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Server, ProviderError> {
        if !server.public_ips.iter().any(|ip| ip.family.as_deref() == Some("inet6")) {
            self.api
                .create_routed_ipv6(zone, &self.cfg.project_id, &server.id)
                .await
                .map_err(|e| Self::failed("attach ipv6", e))?;
        }
        if let Some(at) = placement.expires_at {
            let tag = backstop::expires_tag(at);
            if !server.tags.contains(&tag) {
                let mut tags: Vec<String> =
                    server.tags.iter().filter(|t| !t.starts_with(backstop::EXPIRES_TAG)).cloned().collect();
                tags.push(tag);
                self.api.set_tags(zone, &server.id, &tags).await.map_err(|e| Self::failed("retag expiry", e))?;
            }
        }
        let keys = self.ssh_keys(environment_id, spec).await?;
        let data = backstop::user_data(
            spec.user_data.as_deref(),
            placement.expires_at,
            self.cfg.backstop_grace.as_secs(),
            &keys,
            &self.ssh.deadline_file,
        );
        if let Some(data) = data {
            self.api
                .set_user_data(zone, &server.id, USER_DATA_KEY, &data)
                .await
                .map_err(|e| Self::failed("upload cloud-init", e))?;
        }
        self.api.action(zone, &server.id, "poweron").await.map_err(|e| Self::failed("power on", e))?;
        self.settle(zone, &server.id, &["running"], "boot").await
    }

    async fn create(
        &self,
        environment_id: &str,
        zone: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Server, ProviderError> {
        let cloud = spec.cloud.clone().unwrap_or_default();
        let mut body = serde_json::json!({
            "name": format!("lapse-{environment_id}"),
            "project": self.cfg.project_id,
            "commercial_type": cloud.instance_type.unwrap_or_default(),
            "image": spec.image.clone().unwrap_or_default(),
            "dynamic_ip_required": false,
            "tags": [environment_tag(environment_id), controller_tag(&self.controller_id)],
        });
        if let (Some(at), Some(tags)) = (placement.expires_at, body["tags"].as_array_mut()) {
            tags.push(serde_json::Value::String(backstop::expires_tag(at)));
        }
        if let Some(name) = &cloud.security_group {
            let groups = self
                .api
                .list_security_groups(zone, &self.cfg.project_id, name)
                .await
                .map_err(|e| Self::failed("find security group", e))?;
            let Some(group) = groups.into_iter().find(|g| &g.name == name) else {
                return Err(ProviderError::Permanent {
                    provider: NAME,
                    message: format!("security group {name:?} not found in the project, zone {zone}"),
                });
            };
            body["security_group"] = serde_json::Value::String(group.id);
        }
        self.api.create_server(zone, body).await.map_err(|e| Self::failed("create", e))
    }

    /// Removes a server and what the API keeps after it (IPs, volumes); powers it off first.
    async fn remove(&self, zone: &str, server: &Server) -> Result<(), ProviderError> {
        let server = self.power_off(zone, server).await?;
        match self.api.delete(zone, "servers", &server.id).await {
            Err(e) if e.status() != Some(404) => return Err(Self::failed("delete", e)),
            _ => {}
        }
        for ip in &server.public_ips {
            match self.api.delete(zone, "ips", &ip.id).await {
                Err(e) if e.status() != Some(404) => return Err(Self::failed("delete ip", e)),
                _ => {}
            }
        }
        for volume in server.volumes.values() {
            match self.api.delete(zone, "volumes", &volume.id).await {
                Err(e) if e.status() != Some(404) => return Err(Self::failed("delete volume", e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// `poweroff` unless it is off, then waits for `stopped`; answers the server as it is then.
    async fn power_off(&self, zone: &str, server: &Server) -> Result<Server, ProviderError> {
        if matches!(server.state.as_str(), "stopped" | "stopped in place") {
            return Ok(server.clone());
        }
        if server.state != "stopping" {
            match self.api.action(zone, &server.id, "poweroff").await {
                // Stopped in the meantime (SWIM ignores the same answer).
                Err(e) if e.message().contains("should be running") => {}
                Err(e) => return Err(Self::failed("power off", e)),
                Ok(()) => {}
            }
        }
        self.settle(zone, &server.id, &["stopped", "stopped in place"], "power off").await
    }

    fn instance(&self, environment_id: &str, zone: &str, s: &Server) -> Instance {
        let mut addresses: Vec<IpAddr> =
            s.public_ips.iter().filter_map(|ip| ip.address.as_deref()?.parse().ok()).collect();
        addresses.sort_by_key(|a| !a.is_ipv6());
        let endpoints = addresses
            .iter()
            .map(|a| Endpoint { container_port: 22, protocol: "tcp".into(), host: a.to_string(), port: 22 })
            .collect();
        Instance {
            environment_id: environment_id.to_owned(),
            provider_ref: format!("{zone}/{}", s.id),
            status: status_of(&s.state),
            endpoints,
            addresses,
            exit_code: None,
            user_data_path: None,
            exit_reason: None,
            keep: s.tags.iter().any(|t| crate::is_keep_mark(t.split_once('=').map_or(t.as_str(), |(k, _)| k))),
        }
    }
}

/// The API's server state as an [`InstanceStatus`].
pub fn status_of(state: &str) -> InstanceStatus {
    match state {
        "running" => InstanceStatus::Running,
        "stopping" => InstanceStatus::Stopping,
        "stopped" | "stopped in place" | "locked" => InstanceStatus::Stopped,
        _ => InstanceStatus::Pending,
    }
}

#[async_trait]
impl Provider for ScalewayProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities {
            stop_keeps_disk: true,
            cloud: true,
            lease_backstop: true,
            ..crate::Capabilities::default()
        }
    }

    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        validate(spec)
    }

    async fn health(&self) -> Result<String, ProviderError> {
        let zone = &self.cfg.default_zone;
        self.api
            .list_servers(zone, &self.cfg.project_id, &controller_tag(&self.controller_id), 1, 1)
            .await
            .map_err(|e| ProviderError::Unavailable { provider: NAME, message: e.to_string() })?;
        Ok(format!("Scaleway Instance API at {}, zone {zone}", self.cfg.api_url))
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        validate(spec).map_err(|e| ProviderError::Permanent { provider: NAME, message: e.to_string() })?;
        let zone = spec.cloud.as_ref().and_then(|c| c.zone.clone()).unwrap_or_else(|| self.cfg.default_zone.clone());
        // Looked in from now on (the lookup below, `list`, `stop`, `delete`).
        self.zones.lock().unwrap_or_else(|p| p.into_inner()).insert(zone.clone());
        if let Some((zone, server)) = self.find(environment_id).await? {
            let server = match server.state.as_str() {
                "running" => server,
                "starting" => self.settle(&zone, &server.id, &["running"], "boot").await?,
                _ => {
                    let off = self.power_off(&zone, &server).await?;
                    self.boot(environment_id, &zone, &off, placement, spec).await?
                }
            };
            return Ok(self.instance(environment_id, &zone, &server));
        }
        let server = self.create(environment_id, &zone, placement, spec).await?;
        match self.boot(environment_id, &zone, &server, placement, spec).await {
            Ok(s) => Ok(self.instance(environment_id, &zone, &s)),
            Err(e) => {
                // A half-made server is removed; the error said what failed.
                let current = self.api.get_server(&zone, &server.id).await.unwrap_or(server);
                if let Err(cleanup) = self.remove(&zone, &current).await {
                    tracing::warn!(error = %cleanup, "scaleway: removing a half-made server failed; the sweep retries");
                }
                Err(e)
            }
        }
    }

    async fn stop(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        match self.find(environment_id).await? {
            Some((zone, server)) => self.power_off(&zone, &server).await.map(|_| ()),
            None => Ok(()),
        }
    }

    async fn delete(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        if let Some((zone, server)) = self.find(environment_id).await? {
            self.remove(&zone, &server).await?;
        }
        self.keys.remove(environment_id).map_err(|e| e.into_provider(NAME, "forget the SSH key"))
    }

    async fn exec(
        &self,
        environment_id: &str,
        _spec: &Spec,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<lapse_core::wire::ExecResult, ProviderError> {
        self.exec_ssh(environment_id, cmd, timeout).await
    }

    async fn rearm(&self, environment_id: &str, placement: &Placement) -> Result<(), ProviderError> {
        self.rearm_server(environment_id, placement).await
    }

    async fn inspect(&self, environment_id: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self.find(environment_id).await?.map(|(zone, s)| self.instance(environment_id, &zone, &s)))
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let tag = controller_tag(&self.controller_id);
        let mut out = Vec::new();
        for zone in self.zones() {
            let mut page = 1;
            loop {
                let (servers, total) = self
                    .api
                    .list_servers(&zone, &self.cfg.project_id, &tag, page, self.cfg.page_size)
                    .await
                    .map_err(|e| Self::failed("list", e))?;
                let n = servers.len();
                for s in servers.iter().filter(|s| s.tags.contains(&tag)) {
                    let env = s.tags.iter().find_map(|t| t.strip_prefix("lapse:environment="));
                    if let Some(env) = env {
                        out.push(self.instance(env, &zone, s));
                    }
                }
                let seen = u64::from(page) * u64::from(self.cfg.page_size);
                if n == 0 || n < self.cfg.page_size as usize || seen >= total {
                    break;
                }
                page += 1;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_as_the_api_names_them() {
        assert_eq!(status_of("starting"), InstanceStatus::Pending);
        assert_eq!(status_of("running"), InstanceStatus::Running);
        assert_eq!(status_of("stopping"), InstanceStatus::Stopping);
        assert_eq!(status_of("stopped"), InstanceStatus::Stopped);
        assert_eq!(status_of("stopped in place"), InstanceStatus::Stopped);
        assert_eq!(status_of("something new"), InstanceStatus::Pending, "unknown: left alone by the sweep");
    }

    #[test]
    fn zones() {
        for ok in ["fr-par-1", "nl-ams-3", "pl-waw-2"] {
            assert!(valid_zone(ok), "{ok}");
        }
        for bad in ["", "fr-par", "FR-PAR-1", "fr-par-1/../x", "fr-paris-1", "fr-par-x", "fr-par-1-2"] {
            assert!(!valid_zone(bad), "{bad}");
        }
    }
}
