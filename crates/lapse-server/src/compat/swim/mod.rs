//! The SWIM Redis interface: provision and decommission requests consumed from Redis lists,
//! each server's state written back to `swim:server:<id>`.
//!
//! **The seed's contract** is alex-sviridov/swim at `27f4120` (2025-10-20, "working process
//! of provisioning and decomissioning"), read from its code where it and its README differ:
//! `cmd/swim/service.go` (queue keys, `BLPOP`), `internal/redis/client.go` (`ServerState`, the
//! cache key, `GetServersByFilter`), `internal/connector/scaleway/request.go`
//! (`ProvisionRequest`, `UnmarshalAndValidate`, `generateServerName`),
//! `internal/connector/scaleway/create_server.go` and `server.go` (`ServerType` as the
//! commercial type, cloud-init, `state_detail`), `internal/provisioner/provisioner.go`,
//! `internal/decommissioner/decommissioner.go` and `internal/cleanup/cleanup.go` (the states
//! written), `internal/config/constants.go` (`booted`, `deleted-error`, the 24 h TTL), and
//! the README's `redis-cli` examples. What follows it exactly:
//! - the queue keys (`decomission`, misspelled, as the seed spells it) and the cache key;
//! - requests decoded as Go's `encoding/json` decodes them ([`request`]): case-insensitive
//!   keys, the last duplicate winning, `LabID` and `TTLMinutes` Go `int`s (non-zero), the
//!   instance type in `ServerType` (the README's `InstanceType` also read, `ServerType`
//!   winning), `CloudInitFile` optional and `CloudInitContent` used when it is empty, the
//!   `SWIM_PROVISION_DEFAULT_*` values for empty fields, servers named `lab<LabID>-<8 a-z>`;
//! - the value of `swim:server:<id>` ([`cache`]): the seed's eight fields with its types and
//!   state words (`booted`, `deleted-error`, `decommissioning`, `shutting down`);
//! - decommissions by `WebUsername`, and `LabID` when given, among what SWIM made.
//!
//! **Where Lapse differs on purpose** (no user of the seed loses by it):
//! - *Order*: the seed `BLPOP`s what producers `LPUSH`, so the newest message goes first
//!   (LIFO); Lapse takes from the tail, oldest first (FIFO), at most `provision_concurrency`
//!   and `control_concurrency` batches at once (the seed: one goroutine per message).
//! - *Dead letters*: the seed logs a refused message and drops it; Lapse moves it to
//!   `<queue>:dead` with the reason.
//! - *The key appears before the create*: from the first committed row (`allocating node`),
//!   where the seed writes it only after Scaleway's create succeeded (a failed create leaves
//!   no key there, and `deleted-error` here). It is refreshed for the lab's whole life, where
//!   the seed stops at `booted` (so a lab over 24 h lost its key and leaked its server).
//! - *Expiry* is the lease's, within about a second, where the seed's cleanup runs every 5
//!   minutes.
//! - *Checks the seed lacks*: a TTL above 0 and within `--max-ttl`, an owner Lapse can hold, a
//!   known instance type (Scaleway refuses an unknown one at create, so the seed makes
//!   nothing either), cloud-init files only beneath `SWIM_CLOUD_INIT_DIR` ([`cloud_init`]).
//!   `ServerType`, `SecurityGroupName` and `ImageID` are optional, where the seed requires
//!   them after defaults: a local provider has no use for a security group.
//! - *Instance types* are sizes the provider enforces ([`request::instance_types`]); a
//!   provider that cannot enforce them on this host runs the lab without limits, the type
//!   kept as a label (see `apply.rs`).
//!
//! **Nothing is lost, nothing is applied twice.** A consumer moves each message atomically
//! from its queue to a processing list (`BLMOVE`, or a script that `RPOP`s a batch), where it
//! carries a tag unique to it. It then commits the desired state together with a receipt for
//! the tag in one store transaction, and only then removes the message from the processing
//! list. A crash between any two steps leaves the message in the processing list; the next
//! start (or reconnect) handles it again, and the receipt makes the second handling a no-op.
//! A message that cannot be applied moves to a dead-letter list with the reason, in the same
//! script that removes it.
//!
//! **Messages are hostile bytes.** Entries are read as bytes, never as Redis strings, so no
//! entry can fail to decode. An entry over `max_message_bytes` (1 MiB) is cut, in the script
//! that takes it, to its first 4 KiB before it leaves Redis, and refused before any parsing;
//! then non-UTF-8, malformed JSON, a missing field, an invalid value and an unreadable
//! cloud-init file ([`cloud_init`]) are refused. A dead letter keeps at most 4 KiB of the
//! message (lossily decoded) and its length, and the dead-letter list is trimmed to
//! `dead_letter_max` (10,000) in the same script that pushes. Only a failed connection is
//! taken for a lost Redis; a command Redis refuses (a key of the wrong type) and a store
//! failure are reported as what they are, and retried with the same back-off.
//!
//! **Idempotency keys.** A message may carry `IdempotencyKey`; the store remembers the keys a
//! queue applied ([`consumer::KEYS_KEPT_FOR`], at most [`consumer::KEYS_KEPT_AT_MOST`]), so a
//! request delivered again under a new tag (a Redis restored from an older snapshot) is not
//! applied twice. Without a key, such a re-delivery is a new message.
//!
//! **A decommission touches only what SWIM made**: environments whose source is `swim`, with
//! the owner (and lab) it names; never one the API, a pool or the config file made (the seed
//! scans only its own cache keys).
//!
//! **Which contract.** This module speaks the older contract (alex-sviridov/swim@27f4120);
//! the newer one (`vmmanager:*`, LabMan's) is not a prefix of it but another contract,
//! [`crate::compat::swim_v2`], served by the same pump (`consumer::Contract`) beside or
//! instead of this one (`SWIM_CONTRACTS=v1,v2`, the `[redis]` table's `contracts`).
//!
//! Keys, with the default prefix `swim:` (`SWIM_PREFIX` puts another before every name):
//! - `<prefix>provision:queue`, `<prefix>decomission:queue` (the seed's spelling): requests.
//! - `<queue>:processing`, `<queue>:dead`: messages being handled; messages refused, as
//!   `{"message", "length", "truncated", "reason", "queue", "at"}`.
//! - `<prefix>server:<id>`: the state of environment `<id>` (see [`cache`]), 24 h TTL.
//!
//! One consumer per processing list: two servers on the same queues need different prefixes
//! or processing lists, since each recovers the whole list as its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapse_core::wire::{QueueView, QueuesView};
use redis::AsyncCommands;
use serde::Deserialize;

mod apply;
pub mod cache;
pub mod cloud_init;
pub mod consumer;
mod dead_letters;
mod entry;
pub(crate) mod mirror;
#[cfg(test)]
mod props;
pub mod request;

/// The default of [`SwimConfig::max_message_bytes`]: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// The default of [`SwimConfig::dead_letter_max`].
pub const DEFAULT_DEAD_LETTER_MAX: u64 = 10_000;

/// How the SWIM queues are served. Built from `REDIS_*`/`SWIM_*` variables, flags or the
/// config file's `[redis]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct SwimConfig {
    /// `redis://host:port[/db]`; a bare `host:port` (the seed's form) is taken too.
    pub url: String,
    pub password: Option<String>,
    /// Put before every key name.
    pub prefix: String,
    /// The provider that serves the requests.
    pub provider: String,
    /// That provider's kind (what the mapping follows), set at start from the provider; the
    /// name is taken as the kind until then.
    pub provider_kind: Option<String>,
    /// `SWIM_PROVISION_DEFAULT_IMAGE_ID`: the `ImageID` of a request that leaves it empty
    /// (the image of `docker` labs; a label only for `process`).
    pub default_image: Option<String>,
    /// `SWIM_PROVISION_DEFAULT_INSTANCE_TYPE`: the type of a request with neither
    /// `ServerType` nor `InstanceType`.
    pub default_instance_type: Option<String>,
    /// `SWIM_PROVISION_DEFAULT_SECURITY_GROUP`: kept as a label.
    pub default_security_group: Option<String>,
    /// The command of `process` environments (run with `/bin/sh -c`); also overrides the
    /// image's command for `docker` when set.
    pub default_cmd: Option<String>,
    /// `CloudInitFile`s are read only beneath it (see [`cloud_init`]); `None`: the data dir's
    /// `cloud-init`.
    pub cloud_init_dir: Option<PathBuf>,
    /// Batches of provision messages handled at once (Lapse's bound; the seed runs one
    /// goroutine per message, unbounded).
    pub provision_concurrency: usize,
    /// Batches of decommission messages handled at once (Lapse's bound, as above).
    pub control_concurrency: usize,
    /// Most messages one handler takes at a time.
    pub batch: usize,
    /// Life of a `server:<id>` key after its last refresh.
    pub server_ttl: Duration,
    /// Longest queue entry taken; longer ones are dead-lettered unparsed.
    pub max_message_bytes: usize,
    /// Most records a dead-letter list keeps (the newest).
    pub dead_letter_max: u64,
    /// Serve this (the older) contract's queues and keys.
    pub v1: bool,
    /// Serve the newer contract ([`crate::compat::swim_v2`]) too, with these settings.
    pub v2: Option<crate::compat::swim_v2::V2Config>,
}

impl SwimConfig {
    /// The kind of the provider that serves the requests.
    pub fn kind(&self) -> &str {
        self.provider_kind.as_deref().unwrap_or(&self.provider)
    }

    pub fn new(url: &str) -> SwimConfig {
        SwimConfig {
            url: url.to_owned(),
            password: None,
            prefix: "swim:".into(),
            provider: "process".into(),
            provider_kind: None,
            default_image: None,
            default_instance_type: None,
            default_security_group: None,
            default_cmd: None,
            cloud_init_dir: None,
            provision_concurrency: 2,
            control_concurrency: 5,
            batch: 1000,
            server_ttl: Duration::from_secs(24 * 3600),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            dead_letter_max: DEFAULT_DEAD_LETTER_MAX,
            v1: true,
            v2: None,
        }
    }

    /// The directory `CloudInitFile`s are read beneath, for a server whose data dir is `data_dir`.
    pub fn cloud_init_root(&self, data_dir: &std::path::Path) -> PathBuf {
        self.cloud_init_dir.clone().unwrap_or_else(|| data_dir.join("cloud-init"))
    }

    /// The URL to connect to: a scheme added if missing, the password put in if given.
    pub fn connect_url(&self) -> String {
        let mut url = if self.url.contains("://") { self.url.clone() } else { format!("redis://{}", self.url) };
        if let Some(password) = self.password.as_deref().filter(|p| !p.is_empty())
            && let Some((scheme, rest)) = url.split_once("://")
        {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            url = format!("{scheme}://:{}@{rest}", percent_encode(password));
        }
        url
    }

    /// The URL without any password, for logs and status.
    pub fn shown_url(&self) -> String {
        let url = if self.url.contains("://") { self.url.clone() } else { format!("redis://{}", self.url) };
        match url.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://{}", rest.rsplit_once('@').map_or(rest, |(_, host)| host)),
            None => url,
        }
    }

    pub fn provision_queue(&self) -> String {
        format!("{}provision:queue", self.prefix)
    }

    pub fn decommission_queue(&self) -> String {
        format!("{}decomission:queue", self.prefix)
    }

    /// The key of one environment's state.
    pub fn server_key(&self, id: &str) -> String {
        format!("{}server:{id}", self.prefix)
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The config file's `[redis]` table: the same settings as the variables.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: Option<String>,
    pub password: Option<String>,
    pub prefix: Option<String>,
    pub provider: Option<String>,
    pub default_image: Option<String>,
    pub default_instance_type: Option<String>,
    pub default_security_group: Option<String>,
    pub default_cmd: Option<String>,
    pub cloud_init_dir: Option<PathBuf>,
    pub provision_concurrency: Option<usize>,
    pub control_concurrency: Option<usize>,
    pub batch: Option<usize>,
    /// Longest queue entry, in bytes (default 1 MiB; at most 512 MiB, Redis's own limit).
    pub max_message_bytes: Option<usize>,
    /// Most records each dead-letter list keeps (default 10,000).
    pub dead_letter_max: Option<u64>,
    /// Which contracts are served: `["v1"]` (the default), `["v2"]` or `["v1", "v2"]`.
    pub contracts: Option<Vec<ContractName>>,
    /// The newer contract's key prefix (default `vmmanager:`).
    pub v2_prefix: Option<String>,
    /// The newer contract's `user` field (the seed's `SSH_USERNAME`, default `student`).
    pub ssh_username: Option<String>,
    /// The newer contract's lab lifetime (the seed's `DEFAULT_TTL_MINUTES`, default 30).
    pub default_ttl_minutes: Option<u64>,
    /// The seed's `PROVISION_RATE_LIMIT_SECONDS` (default 15; 0 means the default, as there).
    pub provision_rate_limit_seconds: Option<u64>,
    /// The seed's `DECOMMISSION_RATE_LIMIT_SECONDS` (default 15; 0 means the default).
    pub decommission_rate_limit_seconds: Option<u64>,
    /// The newer contract's cloud-init, read at start (the seed's
    /// `HCLOUD_DEFAULT_CLOUD_INIT_FILE`); none when unset.
    pub v2_cloud_init_file: Option<PathBuf>,
}

/// A SWIM contract a server can serve.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ContractName {
    /// alex-sviridov/swim@27f4120: `swim:*` (this module).
    V1,
    /// alex-sviridov/swim@670feb4: `vmmanager:*` ([`crate::compat::swim_v2`]).
    V2,
}

impl std::str::FromStr for ContractName {
    type Err = String;

    fn from_str(s: &str) -> Result<ContractName, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" => Ok(ContractName::V1),
            "v2" => Ok(ContractName::V2),
            other => Err(format!("{other:?} is not a SWIM contract (v1, v2)")),
        }
    }
}

impl RedisSection {
    /// Fills what `cfg` leaves at its default from this table.
    pub fn into_config(self) -> SwimConfig {
        let mut cfg = SwimConfig::new(self.url.as_deref().unwrap_or("localhost:6379"));
        cfg.password = self.password;
        if let Some(prefix) = self.prefix {
            cfg.prefix = prefix;
        }
        if let Some(provider) = self.provider {
            cfg.provider = provider;
        }
        cfg.default_image = self.default_image;
        cfg.default_instance_type = self.default_instance_type;
        cfg.default_security_group = self.default_security_group;
        cfg.default_cmd = self.default_cmd;
        cfg.cloud_init_dir = self.cloud_init_dir;
        cfg.provision_concurrency = self.provision_concurrency.unwrap_or(cfg.provision_concurrency).max(1);
        cfg.control_concurrency = self.control_concurrency.unwrap_or(cfg.control_concurrency).max(1);
        cfg.batch = self.batch.unwrap_or(cfg.batch).clamp(1, 5000);
        cfg.max_message_bytes = self.max_message_bytes.unwrap_or(cfg.max_message_bytes).clamp(1, 512 << 20);
        cfg.dead_letter_max = self.dead_letter_max.unwrap_or(cfg.dead_letter_max).max(1);
        let contracts = self.contracts.unwrap_or_else(|| vec![ContractName::V1]);
        cfg.v1 = contracts.contains(&ContractName::V1);
        if contracts.contains(&ContractName::V2) {
            let mut v2 = crate::compat::swim_v2::V2Config::default();
            if let Some(prefix) = self.v2_prefix {
                v2.prefix = prefix;
            }
            if let Some(user) = self.ssh_username.filter(|u| !u.is_empty()) {
                v2.ssh_username = user;
            }
            v2.ttl_minutes = self.default_ttl_minutes.unwrap_or(v2.ttl_minutes);
            let seconds = |s: Option<u64>, default: Duration| s.filter(|s| *s > 0).map_or(default, Duration::from_secs);
            v2.provision_rate_limit = seconds(self.provision_rate_limit_seconds, v2.provision_rate_limit);
            v2.decommission_rate_limit = seconds(self.decommission_rate_limit_seconds, v2.decommission_rate_limit);
            v2.cloud_init_file = self.v2_cloud_init_file;
            cfg.v2 = Some(v2);
        }
        cfg
    }
}

/// Which queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Provision,
    Decommission,
}

/// One queue's keys and running figures.
#[derive(Debug)]
pub struct Queue {
    pub kind: Kind,
    /// Messages are taken from the list's head (producers `RPUSH`), not its tail (`LPUSH`).
    pub from_head: bool,
    pub key: String,
    pub processing: String,
    pub dead: String,
    pub concurrency: usize,
    /// Messages applied and refused since this server started.
    pub applied: AtomicU64,
    pub dead_lettered: AtomicU64,
}

impl Queue {
    pub(crate) fn new(kind: Kind, key: String, concurrency: usize, from_head: bool) -> Queue {
        Queue {
            kind,
            from_head,
            processing: format!("{key}:processing"),
            dead: format!("{key}:dead"),
            key,
            concurrency,
            applied: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Provision => "provision",
            Kind::Decommission => "decommission",
        }
    }
}

/// The SWIM interface of a running server: its settings, queues and connection state.
#[derive(Debug)]
pub struct Swim {
    pub config: SwimConfig,
    pub client: redis::Client,
    pub queues: [Arc<Queue>; 2],
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Test hook: die (SIGKILL) right after committing a batch, before removing it from the
    /// processing list: the worst moment for a crash.
    pub crash_after_commit: bool,
}

impl Swim {
    pub fn new(config: SwimConfig) -> anyhow::Result<Swim> {
        let queues = [
            Arc::new(Queue::new(Kind::Provision, config.provision_queue(), config.provision_concurrency, false)),
            Arc::new(Queue::new(Kind::Decommission, config.decommission_queue(), config.control_concurrency, false)),
        ];
        Swim::with_queues(config, queues)
    }

    /// A connection to `config`'s Redis serving other queues (another contract's).
    pub(crate) fn with_queues(config: SwimConfig, queues: [Arc<Queue>; 2]) -> anyhow::Result<Swim> {
        let client = redis::Client::open(config.connect_url())
            .map_err(|e| anyhow::anyhow!("Redis URL {}: {e}", config.shown_url()))?;
        Ok(Swim {
            client,
            queues,
            config,
            connected: AtomicBool::new(false),
            last_error: Mutex::new(None),
            crash_after_commit: std::env::var("LAPSE_FAULT").is_ok_and(|f| f == "swim-crash-after-commit"),
        })
    }

    /// A connection whose calls give up after `response` (blocking calls wait less).
    pub async fn connect(&self, response: Duration) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(response));
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }

    pub(crate) fn up(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            tracing::info!(redis = %self.config.shown_url(), "connected to Redis");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Redis answered but refused a command (or the store failed): not a lost connection.
    pub(crate) fn refused(&self, what: &str, error: &dyn std::fmt::Display) {
        let text = format!("{what}: {error}");
        tracing::warn!(redis = %self.config.shown_url(), error = %text, "a queue round failed; retrying with back-off");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    pub(crate) fn down(&self, what: &str, error: &dyn std::fmt::Display) {
        let was = self.connected.swap(false, Ordering::Relaxed);
        let text = format!("{what}: {error}");
        if was {
            tracing::warn!(redis = %self.config.shown_url(), error = %text, "lost Redis; reconnecting with back-off");
        } else {
            tracing::debug!(redis = %self.config.shown_url(), error = %text, "Redis still unreachable");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    /// `GET /v1/queues`: live list lengths, the newest dead letters (when Redis answers) and the store's counts.
    pub async fn view(&self, processed: &std::collections::BTreeMap<String, u64>) -> QueuesView {
        let lengths = async {
            let mut conn = self.connect(Duration::from_secs(1)).await?;
            let mut out = Vec::new();
            for q in &self.queues {
                let (depth, in_flight, dead, newest): (u64, u64, u64, Vec<Vec<u8>>) = redis::pipe()
                    .llen(&q.key)
                    .llen(&q.processing)
                    .llen(&q.dead)
                    .lrange(&q.dead, 0, dead_letters::RECENT - 1)
                    .query_async(&mut conn)
                    .await?;
                out.push((
                    depth,
                    in_flight,
                    dead,
                    newest.iter().map(|raw| dead_letters::view(raw)).collect::<Vec<_>>(),
                ));
            }
            let _: () = conn.ping().await?;
            Ok::<_, redis::RedisError>(out)
        };
        let lengths = tokio::time::timeout(Duration::from_secs(2), lengths).await;
        let (lengths, error, connected) = match lengths {
            Ok(Ok(l)) => (Some(l), None, true),
            // Redis answered, with an error (a queue key of the wrong type): still connected.
            Ok(Err(e)) => (None, Some(e.to_string()), !is_connection_error(&e)),
            Err(_) => (None, Some("Redis did not answer in 2 s".to_owned()), false),
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let l = lengths.as_ref().map(|l| (l[i].0, l[i].1, l[i].2));
                let recent_dead_letters = lengths.as_ref().map(|l| l[i].3.clone()).unwrap_or_default();
                QueueView {
                    name: q.name().into(),
                    key: q.key.clone(),
                    processing_key: q.processing.clone(),
                    dead_letter_key: q.dead.clone(),
                    depth: l.map(|l| l.0),
                    in_flight: l.map(|l| l.1),
                    dead_lettered: l.map(|l| l.2),
                    processed: processed.get(&q.key).copied().unwrap_or(0),
                    applied_since_start: q.applied.load(Ordering::Relaxed),
                    dead_lettered_since_start: q.dead_lettered.load(Ordering::Relaxed),
                    concurrency: q.concurrency,
                    recent_dead_letters,
                }
            })
            .collect();
        let last_error = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        QueuesView {
            enabled: true,
            redis: Some(self.config.shown_url()),
            connected,
            error: error.or(last_error),
            provider: Some(self.config.provider.clone()),
            queues,
        }
    }
}

/// Whether `e` means the connection failed, rather than Redis refusing a command.
pub(crate) fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Back-off between reconnects: 100 ms doubling to 5 s.
pub(crate) fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(Duration::from_secs(5))
}

pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let mut cfg = SwimConfig::new("localhost:6379");
        assert_eq!(cfg.connect_url(), "redis://localhost:6379");
        cfg.password = Some("p@ss word".into());
        assert_eq!(cfg.connect_url(), "redis://:p%40ss%20word@localhost:6379");
        assert_eq!(cfg.shown_url(), "redis://localhost:6379");
        cfg.url = "redis://:old@h:1/2".into();
        assert_eq!(cfg.connect_url(), "redis://:p%40ss%20word@h:1/2");
        assert_eq!(cfg.shown_url(), "redis://h:1/2");
        cfg.prefix = "vmmanager:".into();
        assert_eq!(cfg.provision_queue(), "vmmanager:provision:queue");
        assert_eq!(cfg.server_key("ab"), "vmmanager:server:ab");
    }

    #[test]
    fn limits_have_defaults_and_bounds() {
        let cfg = RedisSection::default().into_config();
        assert_eq!((cfg.max_message_bytes, cfg.dead_letter_max), (1 << 20, 10_000));
        assert_eq!(cfg.cloud_init_root(std::path::Path::new("/data")), PathBuf::from("/data/cloud-init"));
        let table: RedisSection =
            toml::from_str("max_message_bytes = 0\ndead_letter_max = 0\ncloud_init_dir = \"/srv/ci\"").unwrap();
        let cfg = table.into_config();
        assert_eq!((cfg.max_message_bytes, cfg.dead_letter_max), (1, 1), "at least one byte, one record");
        assert_eq!(cfg.cloud_init_root(std::path::Path::new("/data")), PathBuf::from("/srv/ci"));
        let huge = RedisSection { max_message_bytes: Some(usize::MAX), ..Default::default() }.into_config();
        assert_eq!(huge.max_message_bytes, 512 << 20, "Redis's own limit");
    }

    #[test]
    fn contracts_are_chosen_in_the_redis_table() {
        let cfg = RedisSection::default().into_config();
        assert!(cfg.v1 && cfg.v2.is_none(), "the older contract alone by default");
        let table: RedisSection = toml::from_str(
            "contracts = [\"v1\", \"v2\"]\nv2_prefix = \"lab:\"\nssh_username = \"\"\n\
             default_ttl_minutes = 45\nprovision_rate_limit_seconds = 0\ndecommission_rate_limit_seconds = 3",
        )
        .unwrap();
        let cfg = table.into_config();
        let v2 = cfg.v2.expect("v2 on");
        assert!(cfg.v1);
        assert_eq!(
            (v2.provision_queue(), v2.server_key("u"), v2.ssh_username.as_str()),
            ("lab:provision".into(), "lab:servers:u".into(), "student")
        );
        assert_eq!(v2.ttl_minutes, 45);
        assert_eq!(v2.provision_rate_limit, Duration::from_secs(15), "0 means the default, as the seed's");
        assert_eq!(v2.decommission_rate_limit, Duration::from_secs(3));
        let only: RedisSection = toml::from_str("contracts = [\"v2\"]").unwrap();
        assert!(!only.into_config().v1);
        assert!(toml::from_str::<RedisSection>("contracts = [\"v3\"]").is_err());
        assert_eq!("V2".parse::<ContractName>(), Ok(ContractName::V2));
    }
}
