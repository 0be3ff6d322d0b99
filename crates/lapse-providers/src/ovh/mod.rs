//! The `ovh` provider: OVHcloud Public Cloud instances through the OVH API (`/cloud/project`).
//!
//! **Not verified against the real cloud.** It follows the seed's calls (github.gg
//! `src/lib/vm/ovh-provider.ts` at 2745f5a) and OVH's published `cloud.json` schema, and is
//! tested against [`fake`], a local server that checks requests against that schema and
//! checks every signature.
//!
//! Contract:
//! - **Naming, not tags.** OVH instances carry no tags or labels in this API, so an
//!   instance's name is `lapse-<controller id>-<environment id>`; `list` keeps the instances
//!   whose name starts `lapse-<controller id>-`, so it finds this control plane's orphans and
//!   no one else's. `GET /cloud/project/{p}/instance` is not paged (it answers the whole list).
//! - **Idempotent create.** `ensure_running` looks the name up first: a create whose answer
//!   was lost leaves an instance that the next attempt finds and adopts, so there is exactly one.
//! - **Choice** (the seed's): flavour `cloud.instance_type` by id or name, else the smallest
//!   available non-Windows flavour with `vcpus >= resources.vcpu` (rounded up, default 1) and
//!   `ram >= ceil(mem_mb / 1024)` (default 1024 MiB); image `spec.image` by id or name, else
//!   the first "ubuntu 22.04", else "ubuntu"; region `cloud.zone`, else the configured one
//!   (`OVH_REGION`, default `GRA9`); `monthlyBilling: false`.
//! - **SSH key**: `cloud.ssh_public_keys[0]`: an existing project key with the same public key,
//!   else imported (`POST /cloud/project/{p}/sshkey`, name `lapse-<sha1 prefix>`); without
//!   one, the seed's existing `firecracker-host` or `github-gg-vm-key`, else none.
//! - **Polling**: `ensure_running` waits for `ACTIVE` (every `poll_interval`, at most
//!   `poll_timeout`); `ERROR`, or no `ACTIVE` in time, removes the half-made instance and fails
//!   (retryable, so the reconciler makes a fresh one). An instance found in `ERROR` is removed
//!   the same way; one found `SHUTOFF` is started (`SHELVED` unshelved); one being deleted
//!   fails retryably until it is gone. `stop` waits for `SHUTOFF` the same way, and fails
//!   retryably on an instance mid-transition (OVH refuses to stop it then).
//! - **Backstop**: with an expiry in the [`Placement`], user data arms the guest's own
//!   power-off at expires-at plus [`choose::BACKSTOP_GRACE_MINUTES`] ([`choose::user_data`]).
//!   OVH still bills a `SHUTOFF` instance: only the control plane's delete ends the cost.
//! - **SSH**: with a key directory ([`OvhProvider::with_ssh`]) each environment gets its own
//!   key ([`crate::ssh`]), put in through cloud-init; `exec` runs over SSH as
//!   [`remote::DEFAULT_USER`] (or `SshConfig::user`) on the public IPv4, else the IPv6;
//!   `rearm` (after `extend`) writes the guest's deadline file over SSH (OVH has no tags);
//!   `delete` forgets the keys.
//! - Every call has a timeout; errors follow [`client`]'s rules; credentials never appear in
//!   an error, a log line or a `Debug`.

pub mod choose;
pub mod client;
#[cfg(feature = "ovh-fake")]
pub mod fake;
pub mod remote;
mod unconfigured;

use std::time::Duration;

use async_trait::async_trait;
use lapse_core::model::Spec;
use lapse_core::validate::FieldError;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use sha1::Digest;

use crate::ssh::{KeyStore, SshConfig};
use crate::{Instance, InstanceStatus, Placement, Provider, ProviderError};
pub use client::Credentials;
pub use unconfigured::Unconfigured;

const PROVIDER: &str = "ovh";

/// The seed's default region.
pub const DEFAULT_REGION: &str = "GRA9";

/// How the provider reaches one OVH project.
#[derive(Clone, Debug)]
pub struct OvhConfig {
    /// `ovh-eu`, `ovh-ca`, `ovh-us`, ... or a base URL (`http://127.0.0.1:PORT/1.0`).
    pub endpoint: String,
    pub credentials: Credentials,
    pub project_id: String,
    /// Used when `spec.cloud.zone` is absent.
    pub region: String,
    /// Timeout of each API call.
    pub call_timeout: Duration,
    pub poll_interval: Duration,
    pub poll_timeout: Duration,
}

impl OvhConfig {
    /// The seed's timings: 30 s per call, a look every 5 s for at most 300 s.
    pub fn new(endpoint: &str, credentials: Credentials, project_id: &str, region: Option<&str>) -> Self {
        OvhConfig {
            endpoint: endpoint.to_owned(),
            credentials,
            project_id: project_id.to_owned(),
            region: region.filter(|r| !r.is_empty()).unwrap_or(DEFAULT_REGION).to_owned(),
            call_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            poll_timeout: Duration::from_secs(300),
        }
    }
}

/// OVHcloud Public Cloud instances of one project.
#[derive(Debug)]
pub struct OvhProvider {
    client: client::Client,
    config: OvhConfig,
    prefix: String,
    ssh: SshConfig,
    keys: KeyStore,
}

/// `cloud.instance.Instance`, the fields the provider reads.
#[derive(Clone, Debug, Deserialize)]
struct OvhInstance {
    id: String,
    name: String,
    status: String,
    #[serde(default, rename = "ipAddresses")]
    ip_addresses: Vec<IpAddress>,
}

#[derive(Clone, Debug, Deserialize)]
struct IpAddress {
    ip: String,
}

#[derive(Clone, Debug, Deserialize)]
struct SshKey {
    id: String,
    name: String,
    #[serde(default, rename = "publicKey")]
    public_key: String,
}

impl OvhProvider {
    /// A provider for `config`; nothing is contacted until the first call.
    pub fn new(config: OvhConfig, controller_id: &str) -> Result<Self, ProviderError> {
        let base = client::endpoint_url(&config.endpoint).ok_or_else(|| ProviderError::Unavailable {
            provider: PROVIDER,
            message: format!(
                "unknown OVH endpoint {:?}: give ovh-eu, ovh-ca, ovh-us, kimsufi-eu, kimsufi-ca, soyoustart-eu, \
                 soyoustart-ca or an http(s) URL",
                config.endpoint
            ),
        })?;
        crate::answer::check_transport(&base)
            .map_err(|message| ProviderError::Unavailable { provider: PROVIDER, message })?;
        let client = client::Client::new(base, config.credentials.clone(), config.call_timeout)?;
        let (ssh, keys) = (SshConfig::default(), KeyStore::new(None));
        Ok(OvhProvider { client, prefix: format!("lapse-{controller_id}-"), config, ssh, keys })
    }

    fn project(&self) -> String {
        format!("/cloud/project/{}", urlencode(&self.config.project_id))
    }

    fn name_of(&self, environment_id: &str) -> String {
        format!("{}{environment_id}", self.prefix)
    }

    async fn instances(&self) -> Result<Vec<OvhInstance>, ProviderError> {
        self.client.call(Method::GET, &format!("{}/instance", self.project()), None).await
    }

    async fn find(&self, environment_id: &str) -> Result<Option<OvhInstance>, ProviderError> {
        let name = self.name_of(environment_id);
        Ok(self.instances().await?.into_iter().find(|i| i.name == name))
    }

    async fn get(&self, id: &str) -> Result<Option<OvhInstance>, ProviderError> {
        self.client.call_or_gone(Method::GET, &format!("{}/instance/{}", self.project(), urlencode(id)), None).await
    }

    async fn power(&self, id: &str, action: &str) -> Result<(), ProviderError> {
        let path = format!("{}/instance/{}/{action}", self.project(), urlencode(id));
        self.client.call_or_gone::<serde_json::Value>(Method::POST, &path, None).await.map(|_| ())
    }

    async fn remove(&self, id: &str) -> Result<(), ProviderError> {
        let path = format!("{}/instance/{}", self.project(), urlencode(id));
        self.client.call_or_gone::<serde_json::Value>(Method::DELETE, &path, None).await.map(|_| ())
    }

    /// Polls until the instance's status is `want`; `ERROR`, a vanished instance or the
    /// timeout fail.
    async fn wait_for(&self, id: &str, want: &str) -> Result<OvhInstance, ProviderError> {
        let deadline = tokio::time::Instant::now() + self.config.poll_timeout;
        loop {
            let failed = |message: String| ProviderError::Failed { provider: PROVIDER, op: "wait", message };
            match self.get(id).await? {
                Some(i) if i.status == want => return Ok(i),
                Some(i) if i.status == "ERROR" => return Err(failed(format!("instance {id} went to ERROR"))),
                Some(i) if tokio::time::Instant::now() >= deadline => {
                    return Err(failed(format!(
                        "instance {id} is {} after {:?}, not {want}",
                        i.status, self.config.poll_timeout
                    )));
                }
                Some(_) => tokio::time::sleep(self.config.poll_interval).await,
                None => return Err(failed(format!("instance {id} vanished while waiting for {want}"))),
            }
        }
    }

    async fn create(&self, environment_id: &str, placement: &Placement, spec: &Spec) -> Result<String, ProviderError> {
        let cloud = spec.cloud.clone().unwrap_or_default();
        let region = cloud.zone.clone().unwrap_or_else(|| self.config.region.clone());
        let q = format!("region={}", urlencode(&region));
        let project = self.project();
        let flavours: Vec<choose::Flavor> =
            self.client.call(Method::GET, &format!("{project}/flavor?{q}"), None).await?;
        let resources = spec.resources.clone().unwrap_or_default();
        let vcpu = resources.vcpu.map(|v| v.ceil().max(1.0) as u64).unwrap_or(1);
        let mem_mb = resources.mem_mb.unwrap_or(1024);
        let flavour = match cloud.instance_type.as_deref() {
            Some(wanted) => choose::flavour_named(&flavours, wanted)
                .ok_or_else(|| permanent(format!("no flavour {wanted:?} in region {region}")))?,
            None => choose::flavour_for(&flavours, vcpu, mem_mb).ok_or_else(|| {
                permanent(format!(
                    "no available flavour in region {region} with {vcpu} vCPU and {} GB RAM ({} flavours checked)",
                    mem_mb.div_ceil(1024),
                    flavours.len()
                ))
            })?,
        };
        let images: Vec<choose::Image> = self.client.call(Method::GET, &format!("{project}/image?{q}"), None).await?;
        let image = choose::image_for(&images, spec.image.as_deref()).ok_or_else(|| {
            permanent(match &spec.image {
                Some(w) => format!("no image {w:?} in region {region}"),
                None => format!("no Ubuntu image in region {region}"),
            })
        })?;
        let ssh_key = self.ssh_key(cloud.ssh_public_keys.first().map(String::as_str), &region).await?;
        let mut body = json!({
            "name": self.name_of(environment_id),
            "flavorId": flavour.id,
            "imageId": image.id,
            "region": region,
            "monthlyBilling": false,
        });
        if let Some(key) = ssh_key {
            body["sshKeyId"] = json!(key);
        }
        let mut keys = Vec::new();
        if self.keys.is_enabled() {
            let made = self.keys.ensure_off_thread(environment_id).await;
            keys.push(made.map_err(|e| e.into_provider(PROVIDER, "make the SSH key"))?);
        }
        keys.extend(cloud.ssh_public_keys.iter().cloned());
        let own = spec.user_data.as_deref();
        if let Some(data) = choose::user_data(own, placement.expires_at, &keys, &self.ssh.deadline_file) {
            body["userData"] = json!(data);
        }
        let made: OvhInstance = self.client.call(Method::POST, &format!("{project}/instance"), Some(&body)).await?;
        tracing::info!(environment_id, instance = %made.id, flavour = %flavour.name, image = %image.name, %region, "ovh instance created");
        Ok(made.id)
    }

    async fn ssh_key(&self, public_key: Option<&str>, region: &str) -> Result<Option<String>, ProviderError> {
        let path = format!("{}/sshkey", self.project());
        let keys: Vec<SshKey> = self.client.call(Method::GET, &path, None).await?;
        let Some(public_key) = public_key.map(str::trim) else {
            let seed = keys.iter().find(|k| k.name == "firecracker-host" || k.name == "github-gg-vm-key");
            return Ok(seed.map(|k| k.id.clone()));
        };
        if let Some(k) = keys.iter().find(|k| k.public_key.trim() == public_key) {
            return Ok(Some(k.id.clone()));
        }
        let name = format!("lapse-{}", &format!("{:x}", sha1::Sha1::digest(public_key.as_bytes()))[..12]);
        let body = json!({ "name": name, "publicKey": public_key, "region": region });
        let made: SshKey = self.client.call(Method::POST, &path, Some(&body)).await?;
        Ok(Some(made.id))
    }

    fn instance(&self, environment_id: &str, i: &OvhInstance) -> Instance {
        let status = choose::status_of(&i.status);
        Instance {
            environment_id: environment_id.to_owned(),
            provider_ref: i.id.clone(),
            status,
            endpoints: Vec::new(),
            addresses: i.ip_addresses.iter().filter_map(|a| a.ip.parse().ok()).collect(),
            exit_code: None,
            user_data_path: None,
            // OVH instances carry no tags: nothing marks one `lapse:keep`.
            keep: false,
            exit_reason: (status == InstanceStatus::Stopped && i.status != "SHUTOFF")
                .then(|| format!("OVH instance status {}", i.status)),
        }
    }

    /// Removes a half-made instance, keeping the first error.
    async fn discard(&self, id: &str, error: ProviderError) -> ProviderError {
        if let Err(e) = self.remove(id).await {
            tracing::warn!(instance = %id, error = %e, "ovh: removing a half-made instance failed");
        }
        error
    }
}

fn permanent(message: String) -> ProviderError {
    ProviderError::Permanent { provider: PROVIDER, message }
}

/// Percent-encodes a path segment or query value (ids and regions are plain, but nothing
/// from a spec is put in a URL unescaped).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Checks an `ovh` spec before anything is stored: no kernel or rootfs, no `cmd` or `ports`
/// (a VM runs its image; ports need security groups this increment does not make), and no
/// `subnet`, `security_group` or `disk_type` (not supported yet, and a spec is never trimmed).
pub fn validate(spec: &Spec) -> Result<(), FieldError> {
    crate::check_boot(spec, PROVIDER, false)?;
    let refuse =
        |field: &str, why: &str| Err(FieldError { field: field.into(), message: format!("the ovh provider {why}") });
    if !spec.cmd.is_empty() {
        return refuse("spec.cmd", "boots a VM image and runs no command; put it in user_data");
    }
    if !spec.ports.is_empty() {
        return refuse("spec.ports", "publishes no ports yet; reach the VM by its addresses");
    }
    if let Some(cloud) = &spec.cloud {
        if cloud.subnet.is_some() {
            return refuse("spec.cloud.subnet", "does not attach subnets yet");
        }
        if cloud.security_group.is_some() {
            return refuse("spec.cloud.security_group", "does not set security groups yet");
        }
        if cloud.disk_type.is_some() {
            return refuse("spec.cloud.disk_type", "takes the flavour's disk; disk_type is not supported yet");
        }
        if cloud.ssh_public_keys.len() > 1 {
            return refuse("spec.cloud.ssh_public_keys", "takes one SSH key (OVH attaches one per instance)");
        }
    }
    if spec.resources.as_ref().and_then(|r| r.disk_gb).is_some() {
        return refuse("spec.resources.disk_gb", "takes the flavour's disk; leave disk_gb out");
    }
    Ok(())
}

#[async_trait]
impl Provider for OvhProvider {
    fn name(&self) -> &'static str {
        PROVIDER
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
        let offset = self.client.time_offset().await?;
        let _: serde_json::Value = self.client.call(Method::GET, &self.project(), None).await?;
        Ok(format!("{} project {} (clock offset {offset}s)", self.client.base(), self.config.project_id))
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        let (id, fresh) = match self.find(environment_id).await? {
            Some(found) => match found.status.as_str() {
                "ACTIVE" => return Ok(self.instance(environment_id, &found)),
                "SHUTOFF" | "STOPPED" | "SHELVED" | "SHELVED_OFFLOADED" => {
                    self.power(&found.id, if found.status.starts_with("SHELVED") { "unshelve" } else { "start" })
                        .await?;
                    (found.id, false)
                }
                "ERROR" => {
                    let error = ProviderError::Failed {
                        provider: PROVIDER,
                        op: "ensure_running",
                        message: format!("instance {} is in ERROR; removed it", found.id),
                    };
                    return Err(self.discard(&found.id, error).await);
                }
                status if choose::status_of(status) == InstanceStatus::ShuttingDown => {
                    return Err(ProviderError::Failed {
                        provider: PROVIDER,
                        op: "ensure_running",
                        message: format!("instance {} is {status}; a new one is made once it is gone", found.id),
                    });
                }
                // Still being built (a create whose answer was lost): adopted, and removed if
                // it never comes up; any other state (a reboot, a resize) is only waited for.
                status => {
                    let building = matches!(status, "BUILD" | "BUILDING");
                    (found.id, building)
                }
            },
            None => (self.create(environment_id, placement, spec).await?, true),
        };
        match self.wait_for(&id, "ACTIVE").await {
            Ok(i) => Ok(self.instance(environment_id, &i)),
            Err(e) if fresh => Err(self.discard(&id, e).await),
            Err(e) => Err(e),
        }
    }

    async fn stop(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        let Some(found) = self.find(environment_id).await? else { return Ok(()) };
        match choose::status_of(&found.status) {
            InstanceStatus::Stopped | InstanceStatus::ShuttingDown => return Ok(()),
            InstanceStatus::Running => self.power(&found.id, "stop").await?,
            // OVH refuses a stop mid-transition; the retry comes once it has settled.
            InstanceStatus::Pending | InstanceStatus::Stopping => {
                return Err(ProviderError::Failed {
                    provider: PROVIDER,
                    op: "stop",
                    message: format!("instance {} is {}; stopped once it settles", found.id, found.status),
                });
            }
        }
        self.wait_for(&found.id, "SHUTOFF").await.map(|_| ())
    }

    async fn delete(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        if let Some(found) = self.find(environment_id).await? {
            self.remove(&found.id).await?;
        }
        self.keys.remove(environment_id).map_err(|e| e.into_provider(PROVIDER, "forget the SSH key"))
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
        self.rearm_instance(environment_id, placement).await
    }

    async fn inspect(&self, environment_id: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self.find(environment_id).await?.map(|i| self.instance(environment_id, &i)))
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        Ok(self
            .instances()
            .await?
            .iter()
            .filter_map(|i| i.name.strip_prefix(&self.prefix).map(|env| self.instance(env, i)))
            .collect())
    }
}
