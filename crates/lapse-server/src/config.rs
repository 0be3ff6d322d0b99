//! How a control plane is set up. `lapse serve` fills it from flags and `LAPSE_*` variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use lapse_providers::sim::SimConfig;

/// Retries of a failed provider call: back-off `base · 2^(n-1)` capped at `cap`; a provision
/// that fails `max_attempts` times is marked `failed` and cleaned up. Stops and deletes are
/// retried without end (a machine is never left running because a call failed).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, base: Duration::from_secs(1), cap: Duration::from_secs(60) }
    }
}

/// Where the docker provider finds its Docker Engine API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DockerSetting {
    /// `DOCKER_HOST`, then the usual sockets: the first that answers; when none answers, the
    /// provider is still on for `DOCKER_HOST` or a socket that exists (an engine slow to
    /// start), and off when there is neither.
    #[default]
    Auto,
    /// Exactly this endpoint (`unix:///…`, `tcp://…`).
    Endpoint(String),
    Off,
}

/// The ovh provider's settings: the seed's `OVH_*` variables. The provider is on when
/// `application_key` is given; with another value missing it is listed as unavailable with
/// the reason. `Debug` never shows the secret or the consumer key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OvhSetting {
    /// `ovh-eu` (the default), `ovh-ca`, `ovh-us`, ... or a base URL.
    pub endpoint: Option<String>,
    pub application_key: Option<String>,
    pub application_secret: Option<String>,
    pub consumer_key: Option<String>,
    pub project_id: Option<String>,
    /// Default `GRA9`.
    pub region: Option<String>,
    /// How often a create or a stop looks at the instance (default 5 s, the seed's).
    pub poll_interval: Option<Duration>,
}

impl std::fmt::Debug for OvhSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |v: &Option<String>| v.as_ref().map(|_| "<set>");
        f.debug_struct("OvhSetting")
            .field("endpoint", &self.endpoint)
            .field("application_key", &self.application_key)
            .field("application_secret", &shown(&self.application_secret))
            .field("consumer_key", &shown(&self.consumer_key))
            .field("project_id", &self.project_id)
            .field("region", &self.region)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// Whether the aws provider (EC2) is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AwsSetting {
    /// On when a region is given (`--aws-region`, `AWS_REGION`).
    #[default]
    Auto,
    /// On (the region from the SDK's chain: `AWS_REGION`, the profile).
    On,
    Off,
}

/// What the drift sweep does with a resource that carries our label but no record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrphanPolicy {
    /// Remove it (the default: nothing runs that nobody tracks).
    #[default]
    Remove,
    /// Record it as an environment (owner `adopted`, default TTL) so that it is tracked.
    Adopt,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// A second listener serving only the seed fc_ex_cp's routes (`/vms`, `/stats`), without
    /// keys, as the seed does (`--seed-listen`): whoever reaches it can do what the seed's
    /// users could (create and delete VMs of any tenant).
    pub seed_listen: Option<SocketAddr>,
    /// The routing proxy (`--proxy-listen` and the other `--proxy-*` flags); off when `None`.
    pub proxy: Option<crate::proxy::ProxyConfig>,
    /// The Classla API on its own listener (`--classla-listen`); off when `None`.
    pub classla: Option<crate::compat::classla::Settings>,
    /// SQLite database and the process provider's directories live here.
    pub data_dir: PathBuf,
    /// The SQLite database file (`--database sqlite:PATH`); `None`: `data_dir/lapse.db`.
    pub database: Option<PathBuf>,
    /// A PostgreSQL URL (`--database postgres://...`): the store is there, and `database` is
    /// not used. Any number of servers share a database: one leads (see [`crate::lead`]).
    pub postgres: Option<String>,
    /// TTL of an environment created without one.
    pub default_ttl: Duration,
    /// Longest TTL or extension a request may ask for.
    pub max_ttl: Duration,
    /// How often the drift sweep compares providers with the store.
    pub sweep_interval: Duration,
    /// The config file's `[providers]` tables as read at start (a later change is logged).
    pub provider_tables: BTreeMap<String, crate::providers::ProviderTable>,
    /// A provider's own sweep interval, by provider name (`--sweep-interval-of NAME=DURATION`,
    /// `[providers.NAME] sweep_interval`); others use `sweep_interval`.
    pub sweep_intervals: BTreeMap<String, Duration>,
    /// How long a stop waits before forcing.
    pub stop_grace: Duration,
    pub retry: RetryPolicy,
    /// Provider calls at once, per provider; providers not named get `default_concurrency`.
    pub concurrency: BTreeMap<String, usize>,
    pub default_concurrency: usize,
    pub docker: DockerSetting,
    /// The swarm provider's Engine API (a Swarm manager: `unix:///…`, `tcp://…`); off unless
    /// given (`--swarm-endpoint`, `LAPSE_SWARM_HOST`).
    pub swarm: Option<String>,
    /// The docker provider's container conventions (labels, names, ports, restart policy).
    #[cfg(feature = "docker")]
    pub docker_conventions: lapse_providers::docker::conventions::Conventions,
    /// The scaleway provider: `None` off (no `SCW_SECRET_KEY`), `Some(Err(reason))` asked for
    /// but unusable (a variable missing), `Some(Ok(..))` on.
    #[cfg(feature = "scaleway")]
    pub scaleway: Option<Result<lapse_providers::scaleway::ScalewayConfig, String>>,
    pub orphans: OrphanPolicy,
    /// The ovh provider (off unless an application key is given).
    pub ovh: OvhSetting,
    /// The aws provider: on, off, or on when `aws_region` is set.
    pub aws: AwsSetting,
    /// The aws provider's region (else the SDK's: `AWS_REGION`, the profile).
    pub aws_region: Option<String>,
    /// aws instances also carry instance-manager's `Name`/`ManagedBy`/`Duration` tags.
    pub aws_seed_tags: bool,
    /// The `sim` provider and its behaviour; off unless given.
    pub sim: Option<lapse_providers::sim::SimConfig>,
    /// A declarative TOML file of environments and pools, applied at start and on change.
    pub config_file: Option<PathBuf>,
    /// How often the config file is checked for changes; a change is read once the file is
    /// unchanged over two polls (or a new file was renamed into place).
    pub config_poll: Duration,
    /// Apply a config file even when it is empty or removes most of what it declared
    /// (otherwise such a file is refused unless it says `allow_mass_removal = true`).
    pub config_allow_removal: bool,
    /// Delete what leaves a seed `.exs` config file, as for TOML (the seed keeps it).
    pub config_delete_removed: bool,
    /// The provider that serves the seed's `POST /vms`.
    pub vms_provider: String,
    /// The SWIM Redis queues; off unless given (or the config file has a `[redis]` table).
    pub swim: Option<crate::compat::swim::SwimConfig>,
    /// The bootstrap admin key; without one (here or in the config file's `[auth]` table) the
    /// server is single-tenant and listens on loopback only.
    pub admin_key: Option<String>,
    /// Percent of host memory in use above which local providers take no new environments.
    pub host_memory_limit: Option<f64>,
    /// Percent of the data dir's filesystem in use above which local providers take no new
    /// environments.
    pub host_disk_limit: Option<f64>,
    /// Requests per tenant key.
    pub rate_limit: Option<crate::auth::RateLimit>,
    /// Requests without a valid key, per source IP (when keys are on).
    pub unauthenticated_rate_limit: Option<crate::auth::RateLimit>,
    /// Connections served at once, and the header and idle timeouts.
    pub connections: crate::http::listener::ConnectionLimits,
    /// Prices for usage and cost (the config file's `[prices]` table; all zero without one).
    pub prices: lapse_core::cost::Prices,
    /// Quota tiers from the config file, beside the built-in `free`, `pro` and `unlimited`.
    pub tiers: BTreeMap<String, lapse_core::wire::QuotaInput>,
    /// How often touched environments' activity is written to the store (one batch each).
    pub activity_flush: Duration,
    /// Probes running at once, across all environments.
    pub probe_concurrency: usize,
    /// S3 workspaces: allowed endpoints, size limits (see [`crate::workspace`]).
    pub workspace: crate::workspace::WorkspaceConfig,
    /// Interactive terminals: how many at once, idle timeout, frame cap (`--terminal-*`).
    pub terminal: crate::http::terminal::TerminalConfig,
    /// Webhook deliveries: private addresses, retries, bounds (see [`crate::webhooks`]).
    pub webhooks: crate::webhooks::WebhookPolicy,
}

impl ServerConfig {
    /// The limits of tier `name`: the config file's, else the built-in one's.
    pub fn tier(&self, name: &str) -> Option<lapse_core::quota::Quota> {
        match self.tiers.get(name) {
            Some(t) => Some(lapse_core::quota::Quota::default().with(t, self.max_ttl)),
            None => lapse_core::quota::Quota::tier(name),
        }
    }

    /// Every tier name a tenant may have.
    pub fn tier_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tiers.keys().cloned().collect();
        names.extend(lapse_core::quota::TIERS.iter().map(|t| (*t).to_owned()));
        names.sort();
        names.dedup();
        names
    }
}

impl ServerConfig {
    /// Defaults with state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            seed_listen: None,
            proxy: None,
            classla: None,
            data_dir: data_dir.into(),
            database: None,
            postgres: None,
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            sweep_interval: Duration::from_secs(30),
            sweep_intervals: BTreeMap::new(),
            provider_tables: BTreeMap::new(),
            stop_grace: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            concurrency: BTreeMap::from([
                ("process".to_owned(), 32),
                ("docker".to_owned(), 8),
                ("sim".to_owned(), 256),
            ]),
            default_concurrency: 8,
            docker: DockerSetting::Auto,
            swarm: None,
            #[cfg(feature = "docker")]
            docker_conventions: Default::default(),
            #[cfg(feature = "scaleway")]
            scaleway: None,
            orphans: OrphanPolicy::Remove,
            ovh: OvhSetting::default(),
            aws: AwsSetting::Auto,
            aws_region: None,
            aws_seed_tags: false,
            sim: None,
            config_file: None,
            config_poll: Duration::from_secs(1),
            config_allow_removal: false,
            config_delete_removed: false,
            vms_provider: "process".into(),
            swim: None,
            admin_key: None,
            host_memory_limit: Some(90.0),
            host_disk_limit: Some(95.0),
            rate_limit: Some(crate::auth::RateLimit { per_second: 100, burst: 200 }),
            unauthenticated_rate_limit: Some(crate::auth::RateLimit { per_second: 10, burst: 100 }),
            connections: Default::default(),
            prices: Default::default(),
            tiers: BTreeMap::new(),
            activity_flush: Duration::from_secs(5),
            probe_concurrency: 64,
            workspace: Default::default(),
            terminal: Default::default(),
            webhooks: Default::default(),
        }
    }

    /// How often provider `name` is swept (never zero: at least a millisecond).
    pub fn sweep_interval_of(&self, name: &str) -> Duration {
        self.sweep_intervals.get(name).copied().unwrap_or(self.sweep_interval).max(Duration::from_millis(1))
    }

    /// The longest sweep interval of any provider (what `/readyz` allows the sweep).
    pub fn longest_sweep_interval(&self) -> Duration {
        self.sweep_intervals.values().copied().fold(self.sweep_interval, Duration::max)
    }

    pub fn concurrency_of(&self, provider: &str) -> usize {
        self.concurrency.get(provider).copied().unwrap_or(self.default_concurrency).max(1)
    }
}

#[cfg(test)]
mod ovh_setting_tests {
    use super::OvhSetting;

    #[test]
    fn debug_never_shows_the_ovh_secret_or_consumer_key() {
        let setting = OvhSetting {
            application_key: Some("app".into()),
            application_secret: Some("very-secret".into()),
            consumer_key: Some("consumer-123".into()),
            ..Default::default()
        };
        let text = format!("{setting:?}");
        assert!(text.contains("app") && text.contains("<set>"), "{text}");
        assert!(!text.contains("very-secret") && !text.contains("consumer-123"), "{text}");
    }
}
