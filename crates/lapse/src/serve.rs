//! `lapse serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use lapse_server::ServerConfig;
use lapse_server::config::{DockerSetting, OrphanPolicy};

use crate::database::Database;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to serve the API on.
    #[arg(long, env = "LAPSE_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Also serve the seed fc_ex_cp's routes (/vms, /stats) on this address, WITHOUT keys, as
    /// the seed does (e.g. 0.0.0.0:8088): whoever reaches it can create and delete VMs of any
    /// tenant. The main listener keeps its keys.
    #[arg(long, env = "LAPSE_SEED_LISTEN")]
    pub seed_listen: Option<SocketAddr>,
    /// Where the SQLite store and the process provider's directories live.
    #[arg(long, env = "LAPSE_DATA_DIR", default_value = "./.lapse")]
    pub data_dir: PathBuf,
    /// Where the store lives: `sqlite:PATH` or a path (default: DATA_DIR/lapse.db), or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (migrated at start; several servers
    /// on one database are replicas: one leads, all serve).
    // `--help` never shows LAPSE_DATABASE's value: it may hold a password.
    #[arg(long, env = "LAPSE_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Docker Engine API for the docker provider: `auto` (DOCKER_HOST, then the usual
    /// sockets; off if none is set or exists), `off`, or an endpoint such as unix:///run/podman/podman.sock.
    #[arg(long, env = "LAPSE_DOCKER", default_value = "auto")]
    pub docker: String,
    /// The swarm provider (environments as Docker Swarm services): the Engine API of a Swarm
    /// manager, e.g. unix:///run/lapse-test/docker.sock. Off unless given.
    #[arg(long = "swarm-endpoint", env = "LAPSE_SWARM_HOST")]
    pub swarm_endpoint: Option<String>,
    /// The aws provider (EC2): `auto` (on when a region is given), `on`, `off`. Credentials
    /// come from the AWS SDK's standard chain; AWS_ENDPOINT_URL is honoured.
    #[arg(long, env = "LAPSE_AWS", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub aws: String,
    /// The aws provider's region.
    #[arg(long = "aws-region", env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// Also tag aws instances as instance-manager does (`Name` and `ManagedBy`
    /// `instance-manager`, `Duration` the lease), so the seed's tools find them.
    #[arg(long = "aws-seed-tags", env = "LAPSE_AWS_SEED_TAGS")]
    pub aws_seed_tags: bool,
    /// The scaleway provider (on when SCW_SECRET_KEY is set; SCW_ACCESS_KEY, SCW_ORGANIZATION_ID,
    /// SCW_PROJECT_ID and SCW_DEFAULT_ZONE then required, SCW_API_URL for tests and proxies):
    /// how long after a lease's end its server powers itself off (the backstop).
    #[arg(long, env = "LAPSE_SCALEWAY_BACKSTOP_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub scaleway_backstop_grace: Duration,
    /// The scaleway provider: between two looks while a server boots or stops (SWIM: 15s).
    #[arg(long, env = "LAPSE_SCALEWAY_POLL_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub scaleway_poll_interval: Duration,
    /// TTL of environments created without one.
    #[arg(long, env = "LAPSE_DEFAULT_TTL", default_value = "1h", value_parser = parse_duration)]
    pub default_ttl: Duration,
    /// Longest TTL or extension a request may ask for.
    #[arg(long, env = "LAPSE_MAX_TTL", default_value = "30d", value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// How often the drift sweep compares providers with the store.
    #[arg(long, env = "LAPSE_SWEEP_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// One provider's own sweep interval, `NAME=DURATION` (repeatable): a slow cloud swept
    /// less often than the local providers.
    #[arg(long = "sweep-interval-of", value_name = "NAME=DURATION", value_parser = parse_sweep_interval_of)]
    pub sweep_interval_of: Vec<(String, Duration)>,
    /// How long a stop waits for an environment to exit before killing it.
    #[arg(long, env = "LAPSE_STOP_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub stop_grace: Duration,
    /// Provider attempts before a provision is marked failed.
    #[arg(long, env = "LAPSE_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// First retry back-off; it doubles per failure.
    #[arg(long, env = "LAPSE_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Longest retry back-off.
    #[arg(long, env = "LAPSE_RETRY_CAP", default_value = "60s", value_parser = parse_duration)]
    pub retry_cap: Duration,
    /// Provider calls at once per provider, as NAME=N (repeatable), e.g. docker=8.
    #[arg(long = "concurrency", env = "LAPSE_CONCURRENCY", value_delimiter = ',', value_parser = parse_pair)]
    pub concurrency: Vec<(String, usize)>,
    /// What the sweep does with labelled resources the store does not know.
    #[arg(long, env = "LAPSE_ORPHANS", value_enum, default_value_t = Orphans::Remove)]
    pub orphans: Orphans,
    /// Turn on the simulated provider `sim` (for benchmarks and fault injection), with each
    /// operation's latency and failure rate: `create=20ms..200ms@0.05,delete=10ms`, or `0`.
    #[arg(long, env = "LAPSE_SIM")]
    pub sim: Option<String>,
    /// A TOML file of environments and pools (or the seed's `desired_vms.exs`, by its
    /// extension), applied at start and whenever it changes.
    #[arg(long, env = "LAPSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// How often the --config file is checked; a change is applied once the file is unchanged
    /// over two checks (or at once when a new file is renamed into place).
    #[arg(long, env = "LAPSE_CONFIG_POLL", default_value = "1s", value_parser = parse_duration)]
    pub config_poll: Duration,
    /// How often activity (proxied requests, exec, `POST .../activity`) is written to the
    /// store, all touched environments in one transaction. Activity is counted at once; this
    /// only bounds what a crash can lose.
    #[arg(long, env = "LAPSE_ACTIVITY_FLUSH", default_value = "5s", value_parser = parse_duration)]
    pub activity_flush: Duration,
    /// Interactive terminals open at once on one environment (more: 429).
    #[arg(long, env = "LAPSE_TERMINAL_MAX_PER_ENVIRONMENT", default_value_t = 4)]
    pub terminal_max_per_environment: usize,
    /// Interactive terminals open at once on this server (more: 503).
    #[arg(long, env = "LAPSE_TERMINAL_MAX", default_value_t = 64)]
    pub terminal_max: usize,
    /// A terminal with no byte moving either way for this long is closed.
    #[arg(long, env = "LAPSE_TERMINAL_IDLE", default_value = "15m", value_parser = parse_duration)]
    pub terminal_idle: Duration,
    /// The largest WebSocket frame a terminal's client may send, in bytes (1 KiB to 1 MiB).
    #[arg(long, env = "LAPSE_TERMINAL_MAX_FRAME", default_value_t = 64 * 1024)]
    pub terminal_max_frame: usize,
    /// Health probes running at once, across all environments.
    #[arg(long, env = "LAPSE_PROBE_CONCURRENCY", default_value_t = 64)]
    pub probe_concurrency: usize,
    /// An S3-compatible endpoint a spec's `workspace.endpoint` may name (repeat, or
    /// comma-separated); without one, workspaces use the AWS chain's (`AWS_ENDPOINT_URL`).
    #[arg(long = "workspace-endpoint", env = "LAPSE_WORKSPACE_ENDPOINTS", value_delimiter = ',')]
    pub workspace_endpoints: Vec<String>,
    /// Let webhooks reach loopback, private and link-local addresses (tests, trusted
    /// networks); otherwise a hook's URL must resolve to public addresses only.
    #[arg(long, env = "LAPSE_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// First webhook retry back-off; it doubles per failure up to --webhook-retry-cap.
    #[arg(long, env = "LAPSE_WEBHOOK_RETRY_BASE", default_value = "5s", value_parser = parse_duration)]
    pub webhook_retry_base: Duration,
    /// Longest webhook retry back-off.
    #[arg(long, env = "LAPSE_WEBHOOK_RETRY_CAP", default_value = "10m", value_parser = parse_duration)]
    pub webhook_retry_cap: Duration,
    /// Attempts of one webhook delivery before it is failed.
    #[arg(long, env = "LAPSE_WEBHOOK_MAX_ATTEMPTS", default_value_t = 12)]
    pub webhook_max_attempts: u32,
    /// Largest S3 workspace a pull or push moves, in MiB.
    #[arg(long, env = "LAPSE_WORKSPACE_MAX_MB", default_value_t = 1024)]
    pub workspace_max_mb: u64,
    /// Most files in an S3 workspace.
    #[arg(long, env = "LAPSE_WORKSPACE_MAX_FILES", default_value_t = 100_000)]
    pub workspace_max_files: usize,
    /// Apply a --config file even when it is empty or would remove more than half of the
    /// environments and pools it declared (otherwise refused, unless the file itself says
    /// `allow_mass_removal = true`).
    #[arg(long, env = "LAPSE_CONFIG_ALLOW_REMOVAL")]
    pub config_allow_removal: bool,
    /// Delete the environments that leave a seed `.exs` --config file, as for TOML (by
    /// default they are kept, as the seed keeps them).
    #[arg(long, env = "LAPSE_CONFIG_DELETE_REMOVED")]
    pub config_delete_removed: bool,
    /// The provider that serves the seed's `POST /vms`.
    #[arg(long, env = "LAPSE_VMS_PROVIDER", default_value = "process")]
    pub vms_provider: String,
    /// The bootstrap admin key (at least 16 characters). With it, every route but /healthz
    /// needs a key; without one (here or in the config file's `[auth]` table) the server is
    /// single-tenant and listens on loopback only.
    #[arg(long, env = "LAPSE_ADMIN_KEY", hide_env_values = true, conflicts_with = "admin_key_file")]
    pub admin_key: Option<String>,
    /// A file holding the bootstrap admin key (recommended over --admin-key and
    /// LAPSE_ADMIN_KEY: a file readable only by the server's user is not shown in
    /// `/proc/<pid>/cmdline` or environ). One line; a trailing newline is ignored.
    #[arg(long, env = "LAPSE_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Percent of host memory in use above which local providers (process, docker) take no
    /// new environments and their warm pools do not refill; 100 turns the guard off.
    #[arg(long, env = "LAPSE_HOST_MEMORY_LIMIT", default_value_t = 90.0)]
    pub host_memory_limit: f64,
    /// Percent of the data dir's filesystem in use above which local providers (process,
    /// docker) take no new environments and their warm pools do not refill; 100 turns the
    /// guard off. Refusals of either host guard are 503 host_capacity.
    #[arg(long, env = "LAPSE_HOST_DISK_LIMIT", default_value_t = 95.0)]
    pub host_disk_limit: f64,
    /// Connections served at once (also capped to leave a quarter of the file descriptor
    /// limit, at least 64, free). At the cap the longest-idle connection is closed to make
    /// room; when every connection has a request in flight, new ones wait.
    #[arg(long, env = "LAPSE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// A connection must send a request's headers within this long of connecting (or of its
    /// first byte after an idle spell), else it is closed.
    #[arg(long, env = "LAPSE_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[arg(long, env = "LAPSE_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,
    /// Requests per second each tenant key may make (0: no limit); over it, 429 with Retry-After.
    #[arg(long, env = "LAPSE_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Requests a tenant key may make at once before the per-second rate applies.
    #[arg(long, env = "LAPSE_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,
    /// Requests per second without a valid key each source IP may make when the server has
    /// keys (0: no limit); over it, 429 with Retry-After, and keys from that IP are not even
    /// checked until then.
    #[arg(long, env = "LAPSE_UNAUTHENTICATED_RATE_LIMIT", default_value_t = 10)]
    pub unauthenticated_rate_limit: u32,
    /// Requests without a valid key a source IP may make at once before the rate applies.
    #[arg(long, env = "LAPSE_UNAUTHENTICATED_RATE_BURST", default_value_t = 100)]
    pub unauthenticated_rate_burst: u32,
    /// Consume the SWIM Redis queues from this Redis (`host:port` or `redis://…`). Without
    /// it, a `[redis]` table in the --config file turns them on.
    #[arg(long, env = "REDIS_CONNECTION_STRING", help_heading = "SWIM Redis queues")]
    pub redis: Option<String>,
    /// The Redis password.
    #[arg(
        long,
        env = "REDIS_PASSWORD",
        hide_env_values = true,
        help_heading = "SWIM Redis queues",
        conflicts_with = "redis_password_file"
    )]
    pub redis_password: Option<String>,
    /// A file holding the Redis password (recommended over REDIS_PASSWORD).
    #[arg(long, env = "REDIS_PASSWORD_FILE", help_heading = "SWIM Redis queues")]
    pub redis_password_file: Option<PathBuf>,
    /// Put before every Redis key (`vmmanager:` for the newer naming).
    #[arg(long, env = "SWIM_PREFIX", default_value = "swim:", help_heading = "SWIM Redis queues")]
    pub swim_prefix: String,
    /// The provider that serves the queues' requests (default: process).
    #[arg(long, env = "SWIM_PROVIDER", help_heading = "SWIM Redis queues")]
    pub swim_provider: Option<String>,
    /// Image of requests without `ImageID`.
    #[arg(long, env = "SWIM_PROVISION_DEFAULT_IMAGE_ID", help_heading = "SWIM Redis queues")]
    pub swim_default_image: Option<String>,
    /// Instance type of requests without `InstanceType` (DEV1-S, …: sets vCPU and memory).
    #[arg(long, env = "SWIM_PROVISION_DEFAULT_INSTANCE_TYPE", help_heading = "SWIM Redis queues")]
    pub swim_default_instance_type: Option<String>,
    /// Security group of requests without `SecurityGroupName` (recorded as a label).
    #[arg(long, env = "SWIM_PROVISION_DEFAULT_SECURITY_GROUP", help_heading = "SWIM Redis queues")]
    pub swim_default_security_group: Option<String>,
    /// The command environments run (`/bin/sh -c`); needed by the process provider.
    #[arg(long, env = "SWIM_PROVISION_DEFAULT_CMD", help_heading = "SWIM Redis queues")]
    pub swim_default_cmd: Option<String>,
    /// Read `CloudInitFile`s only beneath this directory (default: the data dir's `cloud-init`).
    #[arg(long, env = "SWIM_CLOUD_INIT_DIR", help_heading = "SWIM Redis queues")]
    pub swim_cloud_init_dir: Option<PathBuf>,
    /// Provision batches handled at once.
    #[arg(long, env = "SWIM_PROVISION_CONCURRENCY", default_value_t = 2, help_heading = "SWIM Redis queues")]
    pub swim_provision_concurrency: usize,
    /// Decommission batches handled at once.
    #[arg(long, env = "SWIM_CONTROL_CONCURRENCY", default_value_t = 5, help_heading = "SWIM Redis queues")]
    pub swim_control_concurrency: usize,
    /// Most messages a handler takes at once.
    #[arg(long, env = "SWIM_BATCH", default_value_t = 1000, help_heading = "SWIM Redis queues")]
    pub swim_batch: usize,
    /// Longest queue message in bytes; longer ones are dead-lettered unparsed (default 1 MiB).
    #[arg(long, env = "SWIM_MAX_MESSAGE_BYTES", help_heading = "SWIM Redis queues")]
    pub swim_max_message_bytes: Option<usize>,
    /// Most records each dead-letter list keeps, the newest (default 10,000).
    #[arg(long, env = "SWIM_DEAD_LETTER_MAX", help_heading = "SWIM Redis queues")]
    pub swim_dead_letter_max: Option<u64>,
    /// Which SWIM contracts to serve on that Redis: `v1` (`swim:*`), `v2` (the newer
    /// `vmmanager:*`, LabMan's), or both, `v1,v2`.
    #[arg(
        long,
        env = "SWIM_CONTRACTS",
        value_delimiter = ',',
        default_value = "v1",
        help_heading = "SWIM Redis queues"
    )]
    pub swim_contracts: Vec<lapse_server::compat::swim::ContractName>,
    /// The v2 contract's key prefix.
    #[arg(long, env = "SWIM_V2_PREFIX", default_value = "vmmanager:", help_heading = "SWIM Redis queues")]
    pub swim_v2_prefix: String,
    /// The v2 contract's `user` field (the seed's SSH_USERNAME).
    #[arg(long, env = "SSH_USERNAME", default_value = "student", help_heading = "SWIM Redis queues")]
    pub swim_v2_ssh_username: String,
    /// A v2 lab's life in minutes (the seed's DEFAULT_TTL_MINUTES).
    #[arg(long, env = "DEFAULT_TTL_MINUTES", default_value_t = 30, help_heading = "SWIM Redis queues")]
    pub swim_v2_ttl_minutes: u64,
    /// Seconds between two provisions of one v2 user (0: the default 15, as the seed).
    #[arg(long, env = "PROVISION_RATE_LIMIT_SECONDS", default_value_t = 15, help_heading = "SWIM Redis queues")]
    pub swim_v2_provision_rate_limit: u64,
    /// Seconds between two decommissions of one v2 user (0: the default 15, as the seed).
    #[arg(long, env = "DECOMMISSION_RATE_LIMIT_SECONDS", default_value_t = 15, help_heading = "SWIM Redis queues")]
    pub swim_v2_decommission_rate_limit: u64,
    /// The cloud-init every v2 lab gets, read at start (the seed's HCLOUD_DEFAULT_CLOUD_INIT_FILE).
    #[arg(long, env = "HCLOUD_DEFAULT_CLOUD_INIT_FILE", help_heading = "SWIM Redis queues")]
    pub swim_v2_cloud_init_file: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LAPSE_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub docker_conventions: DockerConventionArgs,
    #[command(flatten)]
    pub ovh: OvhArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    #[command(flatten)]
    pub classla: ClasslaArgs,
    /// The log filter when LAPSE_LOG is unset (`lapse service`'s --log-level); not a flag.
    #[arg(skip)]
    pub log_filter: Option<String>,
}

/// The ovh provider: on when an application key is given. The application secret and the
/// consumer key are read from `OVH_APPLICATION_SECRET` and `OVH_CONSUMER_KEY` only, never
/// from flags (which `ps` shows).
#[derive(Args, Debug)]
pub struct OvhArgs {
    /// OVH API endpoint: ovh-eu (default), ovh-ca, ovh-us, ... or a base URL.
    #[arg(long, env = "OVH_ENDPOINT", help_heading = "OVH provider")]
    pub ovh_endpoint: Option<String>,
    /// OVH application key; turns the ovh provider on.
    #[arg(long, env = "OVH_APPLICATION_KEY", help_heading = "OVH provider")]
    pub ovh_application_key: Option<String>,
    /// The Public Cloud project (service name) the ovh provider makes instances in.
    #[arg(long, env = "OVH_PROJECT_ID", help_heading = "OVH provider")]
    pub ovh_project_id: Option<String>,
    /// Region when a spec gives no cloud.zone (default GRA9).
    #[arg(long, env = "OVH_REGION", help_heading = "OVH provider")]
    pub ovh_region: Option<String>,
    /// How often a create or stop looks at the instance (default 5s).
    #[arg(long, env = "OVH_POLL_INTERVAL", value_parser = parse_duration, help_heading = "OVH provider")]
    pub ovh_poll_interval: Option<Duration>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Orphans {
    Remove,
    Adopt,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    lapse_core::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// `NAME=DURATION`, a provider's name and a positive duration.
fn parse_sweep_interval_of(s: &str) -> Result<(String, Duration), String> {
    let (name, every) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=DURATION"))?;
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(format!("{name:?} is not a provider name"));
    }
    let every = parse_duration(every)?;
    if every.is_zero() {
        return Err("a sweep interval must be longer than zero".into());
    }
    Ok((name.to_owned(), every))
}

fn parse_pair(s: &str) -> Result<(String, usize), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=N"))?;
    let n = v.parse::<usize>().map_err(|_| format!("{v:?} is not a number"))?;
    if n == 0 {
        return Err("concurrency must be at least 1".into());
    }
    Ok((k.to_owned(), n))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_json, args.log_filter.as_deref());
    let mut config = ServerConfig::new(&args.data_dir);
    match args.database.as_deref().map(Database::parse).transpose()? {
        None => {}
        Some(Database::Sqlite(path)) => config.database = Some(path),
        Some(Database::Postgres(url)) => config.postgres = Some(url),
    }
    config.listen = args.listen;
    config.seed_listen = args.seed_listen;
    config.default_ttl = args.default_ttl;
    config.max_ttl = args.max_ttl;
    config.sweep_interval = args.sweep_interval;
    config.sweep_intervals.extend(args.sweep_interval_of);
    config.stop_grace = args.stop_grace;
    config.retry.max_attempts = args.max_attempts.max(1);
    config.retry.base = args.retry_base;
    config.retry.cap = args.retry_cap;
    config.concurrency.extend(args.concurrency);
    config.orphans = match args.orphans {
        Orphans::Remove => OrphanPolicy::Remove,
        Orphans::Adopt => OrphanPolicy::Adopt,
    };
    // Built without the scaleway feature, the server says so at start (`add_scaleway`).
    #[cfg(feature = "scaleway")]
    {
        config.scaleway = lapse_providers::scaleway::ScalewayConfig::from_env().transpose().map(|c| {
            c.map(|mut c| {
                c.backstop_grace = args.scaleway_backstop_grace;
                c.poll_interval = args.scaleway_poll_interval.max(Duration::from_millis(10));
                c
            })
        });
    }
    config.docker = match args.docker.as_str() {
        "auto" => DockerSetting::Auto,
        "off" => DockerSetting::Off,
        endpoint => DockerSetting::Endpoint(endpoint.to_owned()),
    };
    config.docker_conventions = args.docker_conventions.conventions()?;
    config.swarm = args.swarm_endpoint.clone().filter(|e| !e.is_empty());
    config.ovh = lapse_server::config::OvhSetting {
        endpoint: args.ovh.ovh_endpoint.clone(),
        application_key: args.ovh.ovh_application_key.clone(),
        application_secret: std::env::var("OVH_APPLICATION_SECRET").ok(),
        consumer_key: std::env::var("OVH_CONSUMER_KEY").ok(),
        project_id: args.ovh.ovh_project_id.clone(),
        region: args.ovh.ovh_region.clone(),
        poll_interval: args.ovh.ovh_poll_interval,
    };
    config.aws = match args.aws.as_str() {
        "on" => lapse_server::config::AwsSetting::On,
        "off" => lapse_server::config::AwsSetting::Off,
        _ => lapse_server::config::AwsSetting::Auto,
    };
    config.aws_region = args.aws_region.clone().filter(|r| !r.is_empty());
    config.aws_seed_tags = args.aws_seed_tags;
    if let Some(sim) = &args.sim {
        config.sim = Some(lapse_providers_sim(sim)?);
    }
    config.config_file = args.config;
    config.config_poll = args.config_poll.max(Duration::from_millis(10));
    config.activity_flush = args.activity_flush.max(Duration::from_millis(10));
    config.probe_concurrency = args.probe_concurrency.max(1);
    config.terminal = lapse_server::http::terminal::TerminalConfig {
        max_per_environment: args.terminal_max_per_environment.max(1),
        max_total: args.terminal_max.max(1),
        idle: args.terminal_idle.max(Duration::from_secs(1)),
        max_frame_bytes: args.terminal_max_frame.clamp(1024, 1024 * 1024),
    };
    config.webhooks.allow_private = args.webhook_allow_private;
    config.webhooks.retry_base = args.webhook_retry_base;
    config.webhooks.retry_cap = args.webhook_retry_cap;
    config.webhooks.max_attempts = args.webhook_max_attempts.max(1);
    config.workspace.endpoints = args.workspace_endpoints.iter().filter(|e| !e.is_empty()).cloned().collect();
    config.workspace.max_bytes = args.workspace_max_mb.saturating_mul(1024 * 1024);
    config.workspace.max_files = args.workspace_max_files.max(1);
    config.config_allow_removal = args.config_allow_removal;
    config.config_delete_removed = args.config_delete_removed;
    config.vms_provider = args.vms_provider;
    config.admin_key = match &args.admin_key_file {
        Some(path) => Some(read_secret(path, "the admin key file")?),
        None => args.admin_key.clone(),
    };
    if !(0.0..=100.0).contains(&args.host_memory_limit) {
        anyhow::bail!("--host-memory-limit is a percentage from 0 to 100");
    }
    config.host_memory_limit = (args.host_memory_limit < 100.0).then_some(args.host_memory_limit);
    if !(0.0..=100.0).contains(&args.host_disk_limit) {
        anyhow::bail!("--host-disk-limit is a percentage from 0 to 100");
    }
    config.host_disk_limit = (args.host_disk_limit < 100.0).then_some(args.host_disk_limit);
    config.rate_limit = (args.rate_limit > 0)
        .then_some(lapse_server::auth::RateLimit { per_second: args.rate_limit, burst: args.rate_burst.max(1) });
    config.unauthenticated_rate_limit =
        (args.unauthenticated_rate_limit > 0).then_some(lapse_server::auth::RateLimit {
            per_second: args.unauthenticated_rate_limit,
            burst: args.unauthenticated_rate_burst.max(1),
        });
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    if args.http_header_timeout.is_zero() || args.http_idle_timeout.is_zero() {
        anyhow::bail!("--http-header-timeout and --http-idle-timeout must be more than 0");
    }
    config.connections = lapse_server::http::listener::ConnectionLimits {
        max_connections: args.max_connections,
        header_timeout: args.http_header_timeout,
        idle_timeout: args.http_idle_timeout,
    };
    config.proxy = args.proxy.config()?;
    config.classla = args.classla.settings(config.swarm.is_some(), |k| std::env::var(k).ok())?;
    if let Some(url) = &args.redis {
        let provider = match (&args.swim_provider, std::env::var_os("SCW_ACCESS_KEY")) {
            (Some(p), _) => p.clone(),
            // The seed's own provider: the server refuses to start if it is not on (its
            // SCW_* variables missing), naming the reason.
            (None, Some(_)) => "scaleway".into(),
            (None, None) => "process".into(),
        };
        let v2 = args.swim_contracts.contains(&lapse_server::compat::swim::ContractName::V2);
        if v2 && args.swim_provider.is_none() && std::env::var_os("HCLOUD_TOKEN").is_some() {
            anyhow::bail!(
                "HCLOUD_TOKEN is set, so the SWIM v2 queues would be served by Hetzner Cloud, but this build has no \
                 hcloud provider; set SWIM_PROVIDER (process, docker, sim)"
            );
        }
        let section = lapse_server::compat::swim::RedisSection {
            url: Some(url.clone()),
            password: match &args.redis_password_file {
                Some(path) => Some(read_secret(path, "the Redis password file")?),
                None => args.redis_password.clone(),
            },
            prefix: Some(args.swim_prefix.clone()),
            provider: Some(provider),
            default_image: args.swim_default_image.clone(),
            default_instance_type: args.swim_default_instance_type.clone(),
            default_security_group: args.swim_default_security_group.clone(),
            default_cmd: args.swim_default_cmd.clone(),
            cloud_init_dir: args.swim_cloud_init_dir.clone(),
            provision_concurrency: Some(args.swim_provision_concurrency),
            control_concurrency: Some(args.swim_control_concurrency),
            batch: Some(args.swim_batch),
            max_message_bytes: args.swim_max_message_bytes,
            dead_letter_max: args.swim_dead_letter_max,
            contracts: Some(args.swim_contracts.clone()),
            v2_prefix: Some(args.swim_v2_prefix.clone()),
            ssh_username: Some(args.swim_v2_ssh_username.clone()),
            default_ttl_minutes: Some(args.swim_v2_ttl_minutes),
            provision_rate_limit_seconds: Some(args.swim_v2_provision_rate_limit),
            decommission_rate_limit_seconds: Some(args.swim_v2_decommission_rate_limit),
            v2_cloud_init_file: args.swim_v2_cloud_init_file.clone(),
        };
        config.swim = Some(section.into_config());
    }
    if config.default_ttl > config.max_ttl {
        anyhow::bail!("--default-ttl is above --max-ttl");
    }
    let running = lapse_server::start(config).await.context("starting the server")?;
    println!("lapse serving on http://{}", running.addr);
    let stop = running.shutdown_handle();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    running.wait().await
}

fn lapse_providers_sim(text: &str) -> anyhow::Result<lapse_server::config::SimConfig> {
    lapse_server::config::SimConfig::parse(text).map_err(|e| anyhow::anyhow!("--sim: {e}"))
}

fn init_logging(json: bool, default: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAPSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default.unwrap_or("info,sqlx=warn,tower_http=warn")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Reads a secret from a file: at most 4 KiB, one line (a trailing newline is dropped), not
/// empty. Warns when others may read the file.
fn read_secret(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path).with_context(|| format!("opening {what} {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("reading {what} {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{what} {} is not a regular file", path.display());
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.mode() & 0o777), "{what} can be read by others; chmod 600 it");
    }
    let mut text = String::new();
    file.take(4097).read_to_string(&mut text).with_context(|| format!("reading {what} {} (UTF-8)", path.display()))?;
    if text.len() > 4096 {
        anyhow::bail!("{what} {} is larger than 4 KiB", path.display());
    }
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() || secret.contains('\n') {
        anyhow::bail!("{what} {} must hold one non-empty line", path.display());
    }
    Ok(secret.to_owned())
}

/// The docker provider's container conventions (an operator's existing tooling filters and
/// connects on them): `lapse_providers::docker::conventions`.
#[derive(Args, Debug, Default)]
pub struct DockerConventionArgs {
    /// A label on every container, KEY=VALUE (repeatable), e.g. gh.gg/managed=true.
    #[arg(
        long = "docker-label",
        env = "LAPSE_DOCKER_LABELS",
        value_delimiter = ',',
        help_heading = "Docker conventions"
    )]
    pub labels: Vec<String>,
    /// A label whose value is the container's name, e.g. gh.gg/vm-name.
    #[arg(long = "docker-name-label", env = "LAPSE_DOCKER_NAME_LABEL", help_heading = "Docker conventions")]
    pub name_label: Option<String>,
    /// Containers are named `PREFIX<environment id>` (default lapse-), e.g. gh-gg-.
    #[arg(long = "docker-name-prefix", env = "LAPSE_DOCKER_NAME_PREFIX", help_heading = "Docker conventions")]
    pub name_prefix: Option<String>,
    /// The address spec ports are published on (default 127.0.0.1), e.g. 0.0.0.0.
    #[arg(long = "docker-publish-address", env = "LAPSE_DOCKER_PUBLISH_ADDRESS", help_heading = "Docker conventions")]
    pub publish_address: Option<String>,
    /// Host ports FIRST-LAST for spec ports, each the first free one (default: the engine
    /// picks), e.g. 2222-3221.
    #[arg(long = "docker-port-range", env = "LAPSE_DOCKER_PORT_RANGE", help_heading = "Docker conventions")]
    pub port_range: Option<String>,
    /// The containers' restart policy: no, unless-stopped, `on-failure[:N]` (not always: it
    /// would restart containers Lapse stopped whenever the engine restarts).
    #[arg(long = "docker-restart", env = "LAPSE_DOCKER_RESTART", help_heading = "Docker conventions")]
    pub restart: Option<String>,
}

impl DockerConventionArgs {
    fn conventions(&self) -> anyhow::Result<lapse_providers::docker::conventions::Conventions> {
        let mut c = lapse_providers::docker::conventions::Conventions::default();
        for label in &self.labels {
            c.add_label(label)?;
        }
        if let Some(key) = &self.name_label {
            c.set_name_label(key)?;
        }
        if let Some(prefix) = &self.name_prefix {
            c.set_name_prefix(prefix)?;
        }
        if let Some(address) = &self.publish_address {
            c.set_publish_address(address)?;
        }
        if let Some(range) = &self.port_range {
            c.set_port_range(range)?;
        }
        if let Some(policy) = &self.restart {
            c.set_restart(policy)?;
        }
        Ok(c)
    }
}

/// The routing proxy: `/e/<id>/<port>/...` and the spec's named routes, on a listener of its own.
#[derive(Args, Debug, Default)]
pub struct ProxyArgs {
    /// Serve the routing proxy on this address (e.g. 127.0.0.1:7071); off unless given.
    #[arg(long, env = "LAPSE_PROXY_LISTEN", help_heading = "Routing proxy")]
    pub proxy_listen: Option<SocketAddr>,
    /// Also route by host: `<id>-<route>.<DOMAIN>` (and `<id>-<port>.<DOMAIN>`).
    #[arg(long, env = "LAPSE_PROXY_DOMAIN", help_heading = "Routing proxy")]
    pub proxy_domain: Option<String>,
    /// The proxy's URL as users reach it, for signed links (default http://<proxy address>);
    /// an https URL makes its cookies Secure.
    #[arg(long, env = "LAPSE_PROXY_PUBLIC_URL", help_heading = "Routing proxy")]
    pub proxy_public_url: Option<String>,
    /// Longest wait for a connection to an environment's port.
    #[arg(long, env = "LAPSE_PROXY_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, help_heading = "Routing proxy")]
    pub proxy_connect_timeout: Duration,
    /// A stream (request, response, WebSocket) on which no byte moves for this long is closed.
    #[arg(long, env = "LAPSE_PROXY_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration, help_heading = "Routing proxy")]
    pub proxy_idle_timeout: Duration,
    /// Client connections served at once by the proxy.
    #[arg(long, env = "LAPSE_PROXY_MAX_CONNECTIONS", default_value_t = 1024, help_heading = "Routing proxy")]
    pub proxy_max_connections: usize,
    /// Proxied requests and WebSockets open at once, in all.
    #[arg(long, env = "LAPSE_PROXY_MAX_STREAMS", default_value_t = 1024, help_heading = "Routing proxy")]
    pub proxy_max_streams: usize,
    /// Proxied requests and WebSockets open at once per environment.
    #[arg(long, env = "LAPSE_PROXY_MAX_STREAMS_PER_ENVIRONMENT", default_value_t = 64, help_heading = "Routing proxy")]
    pub proxy_max_streams_per_environment: usize,
}

impl ProxyArgs {
    fn config(&self) -> anyhow::Result<Option<lapse_server::proxy::ProxyConfig>> {
        let Some(listen) = self.proxy_listen else {
            if self.proxy_domain.is_some() || self.proxy_public_url.is_some() {
                anyhow::bail!("--proxy-domain and --proxy-public-url need --proxy-listen");
            }
            return Ok(None);
        };
        let mut c = lapse_server::proxy::ProxyConfig::new(listen);
        if let Some(domain) = &self.proxy_domain {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            let valid = !domain.is_empty()
                && domain.len() <= 253
                && domain.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                anyhow::bail!("--proxy-domain {domain:?} is not a domain name");
            }
            c.domain = Some(domain);
        }
        if let Some(url) = &self.proxy_public_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && !url.contains(|c: char| c.is_whitespace() || c.is_control() || c == '?' || c == '#');
            if !ok {
                anyhow::bail!("--proxy-public-url must be an http:// or https:// URL without query or fragment");
            }
            c.public_url = Some(url.trim_end_matches('/').to_owned());
        }
        if self.proxy_connect_timeout.is_zero() || self.proxy_idle_timeout.is_zero() {
            anyhow::bail!("--proxy-connect-timeout and --proxy-idle-timeout must be more than 0");
        }
        if self.proxy_max_connections == 0 || self.proxy_max_streams == 0 || self.proxy_max_streams_per_environment == 0
        {
            anyhow::bail!(
                "--proxy-max-connections, --proxy-max-streams and --proxy-max-streams-per-environment must be at least 1"
            );
        }
        c.connect_timeout = self.proxy_connect_timeout;
        c.idle_timeout = self.proxy_idle_timeout;
        c.max_connections = self.proxy_max_connections;
        c.max_streams = self.proxy_max_streams;
        c.max_streams_per_environment = self.proxy_max_streams_per_environment;
        Ok(Some(c))
    }
}

/// The Classla IDE orchestration API (`/api/containers/*`, `/api/health`) on a listener of its
/// own, configured by the seed's variables (API_KEY, DOMAIN, PRE_WARMED_QUEUE_SIZE,
/// CONTAINER_CPU_LIMIT, CONTAINER_MEMORY_LIMIT, MAX_MEMORY_PERCENT, INACTIVITY_TIMEOUT_SECONDS,
/// IDE_CONTAINER_IMAGE, AWS_*, BACKEND_API_URL, CONTAINER_SERVICE_TOKEN).
#[derive(Args, Debug, Default)]
pub struct ClasslaArgs {
    /// Serve the Classla API on this address: `HOST:PORT`, or `HOST` alone for the seed's
    /// PORT (3001); off unless given.
    #[arg(long, env = "LAPSE_CLASSLA_LISTEN", help_heading = "Classla API")]
    pub classla_listen: Option<String>,
    /// The provider of its containers (default: swarm when --swarm-endpoint is given, else docker).
    #[arg(long, env = "LAPSE_CLASSLA_PROVIDER", help_heading = "Classla API")]
    pub classla_provider: Option<String>,
    /// The MANAGEMENT_API_URL its containers get: this API as they reach it (default
    /// http://<the Classla listener>).
    #[arg(long, env = "LAPSE_CLASSLA_MANAGEMENT_URL", help_heading = "Classla API")]
    pub classla_management_url: Option<String>,
    /// Let the containers' URLs (/code/<id>, /vnc/<id>, /web/<id>, /terminal/<id>/) through the
    /// proxy without a key, as the seed's Traefik does; only the Classla API's containers.
    #[arg(long, env = "LAPSE_CLASSLA_OPEN_URLS", help_heading = "Classla API")]
    pub classla_open_urls: bool,
    /// The containers' command instead of the image's, as a JSON array of strings (for an
    /// image without its own entrypoint).
    #[arg(long, env = "LAPSE_CLASSLA_CMD", help_heading = "Classla API")]
    pub classla_cmd: Option<String>,
}

impl ClasslaArgs {
    fn settings(
        &self,
        swarm: bool,
        get: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<lapse_server::compat::classla::Settings>> {
        let Some(listen) = &self.classla_listen else {
            if self.classla_provider.is_some()
                || self.classla_management_url.is_some()
                || self.classla_open_urls
                || self.classla_cmd.is_some()
            {
                anyhow::bail!("the --classla-* flags need --classla-listen");
            }
            return Ok(None);
        };
        let listen: SocketAddr = match listen.parse() {
            Ok(addr) => addr,
            Err(_) => {
                let port = get("PORT").filter(|p| !p.is_empty());
                let port = match port {
                    Some(p) => lapse_server::compat::classla::config::parse_int(&p)
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(|| anyhow::anyhow!("Invalid number for environment variable PORT: {p}"))?,
                    None => 3001,
                };
                let ip: std::net::IpAddr = listen
                    .parse()
                    .with_context(|| format!("--classla-listen {listen:?} is neither HOST:PORT nor an IP address"))?;
                SocketAddr::new(ip, port)
            }
        };
        let provider = self.classla_provider.clone().unwrap_or_else(|| if swarm { "swarm" } else { "docker" }.into());
        let management_url = self.classla_management_url.clone().unwrap_or_else(|| format!("http://{listen}"));
        let config = lapse_server::compat::classla::ClasslaConfig::from_env(
            &get,
            &provider,
            management_url,
            self.classla_open_urls,
        )
        .context("the Classla API (--classla-listen)")?;
        let mut config = config;
        if let Some(cmd) = &self.classla_cmd {
            config.cmd = serde_json::from_str(cmd).context("--classla-cmd is a JSON array of strings")?;
        }
        Ok(Some(lapse_server::compat::classla::Settings { listen, config }))
    }
}

#[cfg(test)]
mod classla_tests {
    use super::ClasslaArgs;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn the_listener_takes_the_seeds_port_and_the_provider_follows_swarm() {
        let base: &[(&str, &str)] = &[("API_KEY", "k"), ("DOMAIN", "localhost")];
        let args = |listen: &str| ClasslaArgs { classla_listen: Some(listen.into()), ..Default::default() };
        let s = args("0.0.0.0").settings(false, vars(base)).unwrap().unwrap();
        assert_eq!((s.listen.to_string(), s.config.provider.as_str()), ("0.0.0.0:3001".into(), "docker"));
        assert_eq!(s.config.management_url, "http://0.0.0.0:3001");
        let with_port: &[(&str, &str)] = &[("API_KEY", "k"), ("DOMAIN", "localhost"), ("PORT", "4000")];
        let s = args("127.0.0.1").settings(true, vars(with_port)).unwrap().unwrap();
        assert_eq!((s.listen.to_string(), s.config.provider.as_str()), ("127.0.0.1:4000".into(), "swarm"));
        let s = args("127.0.0.1:5000").settings(true, vars(with_port)).unwrap().unwrap();
        assert_eq!(s.listen.port(), 5000, "an explicit port wins");
        assert!(args("nowhere").settings(false, vars(base)).is_err());
        assert!(args("0.0.0.0").settings(false, vars(&[("DOMAIN", "x")])).unwrap_err().to_string().contains("Classla"));
        let bad_port: &[(&str, &str)] = &[("API_KEY", "k"), ("DOMAIN", "x"), ("PORT", "http")];
        assert!(args("0.0.0.0").settings(false, vars(bad_port)).is_err());
        let stray = ClasslaArgs { classla_open_urls: true, ..Default::default() };
        assert!(stray.settings(false, vars(base)).is_err(), "--classla-* without --classla-listen");
        assert!(ClasslaArgs::default().settings(false, vars(base)).unwrap().is_none());
    }
}
