//! The `aws` provider: one EC2 instance per environment, through the official AWS SDK.
//!
//! **Contract.**
//! - Credentials come from the SDK's standard chain (environment, profile, web identity, IMDS);
//!   `AWS_REGION` and `AWS_ENDPOINT_URL` are honoured. [`AwsProvider::connect`] fails with the
//!   reason when no credentials or no region are found, so the server lists the provider as
//!   unavailable. Credentials never appear in an error, log, event or the API: errors carry
//!   EC2's error code and message only.
//! - Every instance is tagged (instance and volumes): `lapse:environment`, `lapse:controller`,
//!   `lapse:tenant`, `lapse:expires-at` (RFC 3339, when the lease ends) and `Name`.
//!   [`Provider::list`] is `DescribeInstances` on `tag:lapse:controller`, paged.
//! - `ensure_running` is idempotent across crashes: it first looks the environment up by its
//!   tag (a stopped instance is started, a running or pending one returned), and creates with
//!   a `ClientToken` derived from the controller, the environment id and the number of its
//!   terminated instances, so a create whose answer was lost is not made twice.
//! - Creation follows instance-manager: AMI `spec.image`, else the newest
//!   `amzn2-ami-hvm-*-x86_64-gp2` owned by amazon; `cloud.instance_type` (default `t2.nano`);
//!   subnet `cloud.subnet`, else the AZ's default, else one available in the AZ, else one in
//!   the region; `cloud.security_group` (an `sg-` id or a name); a key pair imported from
//!   `cloud.ssh_public_keys[0]` named `lapse-<sha256 of the key, 16 hex>` (imported once);
//!   root volume of `resources.disk_gb` GiB and type `cloud.disk_type`.
//! - **Backstop**: `InstanceInitiatedShutdownBehavior` is `terminate` when `on_expiry =
//!   delete`, else `stop`, and the user data arms a shutdown at expires-at plus
//!   [`backstop::GRACE_SECS`] (see [`backstop`]), combined with the user's own user data.
//!   A stopped instance's user data is rewritten with the current deadline before it is
//!   started again (`extend` of a stopped lease). Moving the deadline of a *running* VM is
//!   not done: `ensure_running` on a running instance rewrites its `lapse:expires-at` tag,
//!   which the guest reads when the account exposes tags in instance metadata.
//! - **SSH**: with a key directory ([`AwsProvider::with_ssh`]) each environment gets its own
//!   key ([`crate::ssh`]), put in through cloud-init beside `cloud.ssh_public_keys`; `exec`
//!   runs over SSH as [`DEFAULT_USER`] (or `SshConfig::user`) on the public IPv4, else the
//!   IPv6; `rearm` (after `extend` of a running instance) retags `lapse:expires-at` and
//!   writes the guest's deadline file over SSH; `delete` forgets the keys.
//! - `stop` is StopInstances (the disk stays), `delete` TerminateInstances; both succeed when
//!   the instance is gone. EC2 states map as pending → Pending, running → Running,
//!   stopping → Stopping, stopped → Stopped, shutting-down → ShuttingDown, terminated → gone.
//! - **`lapse:keep`**: an instance tagged `lapse:keep` is listed with [`Instance::keep`] set;
//!   the sweep's rule (never touch a kept resource) does the rest.
//! - **Adoption** ([`adopt`]): an instance made elsewhere (instance-manager's) is found by
//!   id or by `ManagedBy=instance-manager`, tagged as an environment's, and held out of `list`
//!   by `lapse:adopting` until its record exists.
//! - Key pairs are shared by content hash and imported race-free ([`keys`]).
//! - The time inside every EC2 call is counted per operation ([`Provider::call_times`]).
//! - Every call has a timeout ([`CALL_TIMEOUT`]); throttling and unreachable endpoints are
//!   retryable, EC2's refusals (capacity, quota, bad parameter) permanent with its message.

mod adopt;
mod backstop;
mod check;
mod keys;
mod launch;
pub mod moto;
mod orphans;
mod remote;
mod timing;
mod unavailable;

pub use adopt::{SEED_DURATION_TAG, SEED_TAG, TAG_ADOPTING};
pub use backstop::{GRACE_SECS, user_data as backstop_user_data};
pub use check::{MAX_TAGS, is_instance_type, is_openssh_key, is_zone, validate, validate_labels};
pub use keys::key_pair_name;
pub use launch::{DEFAULT_AMI_NAME, DEFAULT_INSTANCE_TYPE, SEED_MANAGED_BY, client_token, go_duration};
pub use orphans::FILTER_VALUES as ORPHAN_BATCH;
pub use remote::DEFAULT_USER;
pub use unavailable::UnavailableAws;
/// The SDK crates, for callers (tests) that talk to EC2 beside the provider.
pub use {aws_config as sdk_config, aws_sdk_ec2 as sdk};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::ProvideCredentials;
use aws_sdk_ec2::types::{Filter, Instance as Ec2Instance, InstanceStateName, Tag};
use lapse_core::model::Spec;
use lapse_core::validate::FieldError;

use self::check::NAME;
use crate::calls::{CallTime, CallTimes};
use crate::ssh::{KeyStore, SshConfig};
use crate::{Foreign, ForeignQuery, Instance, Placement, Provider, ProviderError};

pub const TAG_ENVIRONMENT: &str = "lapse:environment";
pub const TAG_CONTROLLER: &str = "lapse:controller";
pub const TAG_TENANT: &str = "lapse:tenant";
pub const TAG_EXPIRES: &str = "lapse:expires-at";
pub const TAG_KEEP: &str = "lapse:keep";

/// The most one EC2 call (with the SDK's own retries) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a `[providers.NAME]` table of kind `aws` may set; each `None` is the standard chain's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsOptions {
    pub region: Option<String>,
    /// EC2's address (else `AWS_ENDPOINT_URL`, else AWS's own).
    pub endpoint_url: Option<String>,
    /// A profile of the shared config files (else `AWS_PROFILE`).
    pub profile: Option<String>,
}

/// The EC2 provider of one region.
pub struct AwsProvider {
    client: Client,
    region: String,
    controller_id: String,
    /// Whether instances also carry instance-manager's `Name`, `ManagedBy`, `Duration`.
    seed_tags: bool,
    /// Time inside each EC2 call, counted by the client's [`timing::Timing`] interceptor.
    calls: Arc<CallTimes>,
    ssh: SshConfig,
    keys: KeyStore,
}

impl std::fmt::Debug for AwsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsProvider").field("region", &self.region).field("controller_id", &self.controller_id).finish()
    }
}

impl AwsProvider {
    /// Loads the standard configuration (credentials chain, `AWS_REGION`, `AWS_ENDPOINT_URL`);
    /// `region` overrides the environment's. Fails, with the reason, when no region or no
    /// credentials are found.
    pub async fn connect(region: Option<&str>, controller_id: &str) -> Result<Self, ProviderError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_owned()));
        }
        Self::from_loader(loader, controller_id).await
    }

    /// As [`AwsProvider::connect`], with a provider table's settings: each one given
    /// overrides the standard configuration's.
    pub async fn connect_with(options: &AwsOptions, controller_id: &str) -> Result<Self, ProviderError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &options.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(profile) = &options.profile {
            loader = loader.profile_name(profile);
        }
        Self::from_loader(loader, controller_id).await
    }

    /// As [`AwsProvider::connect`], from a prepared loader (tests give an endpoint and static
    /// credentials this way). Call timeouts are set here.
    pub async fn from_loader(loader: aws_config::ConfigLoader, controller_id: &str) -> Result<Self, ProviderError> {
        let unavailable = |message: String| ProviderError::Unavailable { provider: NAME, message };
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(CALL_TIMEOUT)
            .operation_attempt_timeout(CALL_TIMEOUT / 3)
            .connect_timeout(Duration::from_secs(5))
            .build();
        let config = loader.timeout_config(timeouts).load().await;
        let region = config
            .region()
            .map(|r| r.to_string())
            .ok_or_else(|| unavailable("no region: set AWS_REGION (or --aws-region)".into()))?;
        let missing = "no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)";
        let credentials = config.credentials_provider().ok_or_else(|| unavailable(missing.into()))?;
        // Only whether credentials were found is kept, never what they are.
        match tokio::time::timeout(CALL_TIMEOUT, credentials.provide_credentials()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unavailable(format!("{missing}: {}", describe_credentials_error(&e)))),
            Err(_) => return Err(unavailable(format!("{missing}: the credentials chain timed out"))),
        }
        let calls = Arc::new(CallTimes::new());
        let client = Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&config).interceptor(timing::Timing(calls.clone())).build(),
        );
        let (ssh, keys) = (SshConfig::default(), KeyStore::new(None));
        Ok(AwsProvider { client, region, controller_id: controller_id.to_owned(), seed_tags: false, calls, ssh, keys })
    }

    /// Also tags instances (and volumes) as instance-manager does: `Name` and `ManagedBy`
    /// `instance-manager`, `Duration` the lease as a Go duration (`lapse serve --aws-seed-tags`),
    /// so the seed's `list` and anything filtering on `tag:ManagedBy` find them. Labels named
    /// `ManagedBy` or `Duration` are then refused.
    pub fn with_seed_tags(mut self, on: bool) -> Self {
        self.seed_tags = on;
        self
    }

    /// `since` for [`launch::tags`]: the seed's `Duration` counts from it, when seed tags are on.
    fn seed_since(&self, since_ms: i64) -> Option<i64> {
        self.seed_tags.then_some(since_ms)
    }

    /// The region this provider works in.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The raw EC2 client (tests read attributes through it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every instance of this controller (all states, terminated included) matching `filters`.
    async fn describe(&self, mut filters: Vec<Filter>) -> Result<Vec<Ec2Instance>, ProviderError> {
        filters.push(Filter::builder().name(format!("tag:{TAG_CONTROLLER}")).values(&self.controller_id).build());
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10_000 {
            let page = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| check::error("DescribeInstances", e))?;
            out.extend(page.reservations().iter().flat_map(|r| r.instances().iter().cloned()));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The environment's instances, terminated ones included.
    async fn of_environment(&self, environment_id: &str) -> Result<Vec<Ec2Instance>, ProviderError> {
        self.describe(vec![Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(environment_id).build()])
            .await
    }

    /// The environment's live instance (the newest not terminated), if any.
    async fn live(&self, environment_id: &str) -> Result<(Option<Ec2Instance>, usize), ProviderError> {
        let all = self.of_environment(environment_id).await?;
        let gone = all.iter().filter(|i| check::status(state(i)).is_none()).count();
        let live = all
            .into_iter()
            .filter(|i| check::status(state(i)).is_some())
            .max_by(|a, b| a.launch_time().map(|t| t.secs()).cmp(&b.launch_time().map(|t| t.secs())));
        Ok((live, gone))
    }

    fn to_instance(i: &Ec2Instance, ports: &[u16]) -> Option<Instance> {
        Some(Instance {
            environment_id: check::tag(i, TAG_ENVIRONMENT)?.to_owned(),
            provider_ref: i.instance_id()?.to_owned(),
            status: check::status(state(i))?,
            endpoints: check::endpoints(i, ports),
            addresses: check::addresses(i),
            exit_code: None,
            user_data_path: None,
            exit_reason: i
                .state_reason()
                .and_then(|r| r.message())
                .filter(|_| state(i) == Some(&InstanceStateName::Stopped))
                .map(str::to_owned),
            keep: check::tag(i, TAG_KEEP).is_some(),
        })
    }

    async fn start_stopped(
        &self,
        environment_id: &str,
        id: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<(), ProviderError> {
        if let Some(data) = self.user_data(environment_id, placement, spec).await? {
            // EC2 wants the user data base64-encoded inside the blob (which the SDK encodes
            // once more on the wire), as RunInstances takes it.
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(data);
            let blob = aws_sdk_ec2::primitives::Blob::new(encoded.into_bytes());
            let value = aws_sdk_ec2::types::SecureBlobAttributeValue::builder().value(blob).build();
            self.client
                .modify_instance_attribute()
                .instance_id(id)
                .user_data(value)
                .send()
                .await
                .map_err(|e| check::error("ModifyInstanceAttribute", e))?;
        }
        self.retag_expiry(id, placement, lapse_core::now_millis()).await?;
        self.client.start_instances().instance_ids(id).send().await.map_err(|e| check::error("StartInstances", e))?;
        Ok(())
    }

    /// Rewrites the tags that follow the lease (`lapse:expires-at`, the seed's `Duration`
    /// counted from `since_ms`, the instance's launch) and the labels, on the instance.
    async fn retag_expiry(&self, id: &str, placement: &Placement, since_ms: i64) -> Result<(), ProviderError> {
        if placement.expires_at.is_none() && placement.labels.is_empty() {
            return Ok(());
        }
        let tags: Vec<Tag> = launch::tags(&self.controller_id, "", placement, self.seed_since(since_ms))
            .into_iter()
            .filter(|t| {
                let k = t.key().unwrap_or_default();
                k == TAG_EXPIRES || k == "Duration" || placement.labels.contains_key(k)
            })
            .collect();
        self.client
            .create_tags()
            .resources(id)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| check::error("CreateTags", e))?;
        Ok(())
    }
}

fn state(i: &Ec2Instance) -> Option<&InstanceStateName> {
    i.state().and_then(|s| s.name())
}

/// What went wrong finding credentials, without anything the chain found.
fn describe_credentials_error(e: &dyn std::error::Error) -> String {
    let text = e.to_string();
    if text.len() > 200 { "the credentials chain found none".into() } else { text }
}

#[async_trait]
impl Provider for AwsProvider {
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

    fn default_instance_type(&self) -> Option<&'static str> {
        Some(DEFAULT_INSTANCE_TYPE)
    }

    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        check::validate(spec)
    }

    fn validate_labels(&self, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
        check::validate_labels(labels, self.seed_tags)
    }

    fn call_times(&self) -> Vec<CallTime> {
        self.calls.snapshot()
    }

    fn call_busy(&self) -> Option<Duration> {
        Some(self.calls.busy())
    }

    async fn health(&self) -> Result<String, ProviderError> {
        let out = self
            .client
            .describe_regions()
            .region_names(&self.region)
            .send()
            .await
            .map_err(|e| check::error("DescribeRegions", e))?;
        let endpoint = out.regions().first().and_then(|r| r.endpoint()).unwrap_or("?");
        Ok(format!("EC2 {} ({endpoint})", self.region))
    }

    async fn ensure_running(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        self.ensure_running_after(environment_id, placement, spec, crate::Intent::written()).await
    }

    /// The lookups (this environment's instances, then the image and subnet) run while the
    /// intent is written; the key pair, the launch, a start or a retag only after it.
    async fn ensure_running_after(
        &self,
        environment_id: &str,
        placement: &Placement,
        spec: &Spec,
        mut intent: crate::Intent,
    ) -> Result<Instance, ProviderError> {
        let (live, generation) = self.live(environment_id).await?;
        if live.is_some() {
            intent.wait().await?;
        }
        let id = match live {
            Some(i) => {
                let id = i.instance_id().unwrap_or_default().to_owned();
                match state(&i) {
                    Some(InstanceStateName::Stopped) => {
                        self.start_stopped(environment_id, &id, placement, spec).await?
                    }
                    Some(InstanceStateName::Stopping | InstanceStateName::ShuttingDown) => {
                        return Err(ProviderError::Failed {
                            provider: NAME,
                            op: "ensure_running",
                            message: format!("instance {id} is on its way down; retrying later"),
                        });
                    }
                    _ => {
                        let launched = i.launch_time().map_or_else(lapse_core::now_millis, |t| t.secs() * 1000);
                        self.retag_expiry(&id, placement, launched).await?
                    }
                }
                id
            }
            None => self.launch(environment_id, placement, spec, generation, &mut intent).await?,
        };
        let described = self
            .client
            .describe_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| check::error("DescribeInstances", e))?;
        let found =
            described.reservations().iter().flat_map(|r| r.instances()).find(|i| i.instance_id() == Some(id.as_str()));
        found.and_then(|i| Self::to_instance(i, &spec.ports)).ok_or_else(|| ProviderError::Failed {
            provider: NAME,
            op: "ensure_running",
            message: format!("instance {id} is not visible yet"),
        })
    }

    async fn stop(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        let (live, _) = self.live(environment_id).await?;
        let Some(i) = live else { return Ok(()) };
        if matches!(
            state(&i),
            Some(InstanceStateName::Stopped | InstanceStateName::Stopping | InstanceStateName::ShuttingDown)
        ) {
            return Ok(());
        }
        let id = i.instance_id().unwrap_or_default();
        self.client.stop_instances().instance_ids(id).send().await.map_err(|e| check::error("StopInstances", e))?;
        Ok(())
    }

    async fn delete(&self, environment_id: &str, _grace: Duration) -> Result<(), ProviderError> {
        let all = self.of_environment(environment_id).await?;
        let ids: Vec<String> = all
            .iter()
            .filter(|i| !matches!(state(i), Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)))
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        if !ids.is_empty() {
            match self.client.terminate_instances().set_instance_ids(Some(ids)).send().await {
                Ok(_) => {}
                Err(e) => match check::error("TerminateInstances", e) {
                    ProviderError::Failed { message, .. } if message.starts_with("InvalidInstanceID.NotFound") => {}
                    other => return Err(other),
                },
            }
        }
        self.keys.remove(environment_id).map_err(|e| e.into_provider(NAME, "forget the SSH key"))
    }

    async fn remove_orphans(&self, environment_ids: &[String], _grace: Duration) -> Vec<Result<(), ProviderError>> {
        self.remove_many(environment_ids).await
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
        let (live, _) = self.live(environment_id).await?;
        Ok(live.as_ref().and_then(|i| Self::to_instance(i, &[])))
    }

    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let live = Filter::builder()
            .name("instance-state-name")
            .set_values(Some(["pending", "running", "stopping", "stopped", "shutting-down"].map(String::from).to_vec()))
            .build();
        let all = self.describe(vec![live]).await?;
        Ok(all.iter().filter(|i| !adopt::is_adopting(i)).filter_map(|i| Self::to_instance(i, &[])).collect())
    }

    async fn find_foreign(&self, query: &ForeignQuery) -> Result<Vec<Foreign>, ProviderError> {
        self.foreign(query).await
    }

    async fn adopt(
        &self,
        environment_id: &str,
        provider_ref: &str,
        placement: &Placement,
        spec: &Spec,
    ) -> Result<Instance, ProviderError> {
        self.adopt_instance(environment_id, provider_ref, placement, &spec.ports).await
    }

    async fn finish_adoption(
        &self,
        _environment_id: &str,
        provider_ref: &str,
        keep: bool,
    ) -> Result<(), ProviderError> {
        self.end_adoption(provider_ref, keep).await
    }
}
