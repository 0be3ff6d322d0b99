//! The JSON shapes of the HTTP API (`/v1/…`). These are a contract: the server produces them,
//! the CLI and users' scripts consume them, and `/v1/openapi.json` describes them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{DesiredState, Endpoint, Environment, Health, Lifecycle, ObservedState, OnExpiry, OnIdle, Spec};
use crate::{Millis, format_millis};

/// A duration. A JSON **number** is whole seconds (`90`). A **string** must carry its unit,
/// case-insensitive: `"90s"`, `"30m"`, `"2h30m"`, `"1.5h"`, `"2 hours"`, `"300ms"`, `"2d"`; a
/// string that is a bare number (`"90"`) is refused, since the CLI's grammar (instance-manager's)
/// reads a bare number as hours and the API will not guess.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = "30m")]
#[serde(untagged)]
pub enum DurationInput {
    Seconds(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for DurationInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationInput;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: whole seconds as a number (90) or text with a unit (\"30m\", \"2 hours\")")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(DurationInput::Seconds(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(DurationInput::Seconds(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(DurationInput::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl DurationInput {
    /// The duration, refused if not positive or above `max`.
    pub fn to_duration(&self, max: std::time::Duration) -> Result<std::time::Duration, crate::duration::DurationError> {
        let d = match self {
            DurationInput::Seconds(s) => crate::duration::from_seconds(*s),
            DurationInput::Text(t) => crate::duration::parse_duration(t),
        }?;
        crate::duration::at_most(d, max)
    }
}

/// A warm pool declared with an environment (config files, the seed's `warm_pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WarmPool {
    pub min: u32,
    /// Default: `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

impl fmt::Display for DurationInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationInput::Seconds(s) => write!(f, "{s}s"),
            DurationInput::Text(t) => f.write_str(t),
        }
    }
}

/// `POST /v1/environments`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    /// A name for people; need not be unique. Letters, digits, `.`, `_`, `-`; at most 63.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who the environment is for.
    pub owner: String,
    /// Free-form `key: value` labels (a lab id, a course); filter with `label=k=v`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
    /// How long the lease lasts; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<DurationInput>,
    /// What happens when the lease runs out (default `stop`; jobs are always deleted).
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// `lease` (default), `service`, `daemon` or `job`. Services and daemons have no expiry
    /// unless a `ttl` is given.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// Jobs: how many times a failed run (non-zero exit) is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Per-claim data for a warm member of a pool with an `on_claim` hook (variables,
    /// files); a cold start gets `env` in its spec's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<crate::claim::ClaimParams>,
    /// Stop (or delete, see `on_idle`) the environment after this long without activity
    /// (`POST .../activity`, `exec`, proxied requests); at least 1 s. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<DurationInput>,
    /// What `idle_timeout` does: `stop` (default) or `delete`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_idle: OnIdle,
    /// Pre-expiry warnings: how long before the lease ends each fires (`["15m", "2m"]`,
    /// `"15m,2m"`, or seconds); each above zero and below the lease, at most 8. The tier's
    /// default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_before: Option<WarnBefore>,
}

/// `warn_before` as a request gives it: one duration (text may list several, comma-separated)
/// or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum WarnBefore {
    Many(Vec<DurationInput>),
    One(DurationInput),
}

impl WarnBefore {
    /// The durations as given, commas split.
    pub fn items(&self) -> Vec<DurationInput> {
        let split = |d: &DurationInput| match d {
            DurationInput::Text(t) => t.split(',').map(|p| DurationInput::Text(p.trim().to_owned())).collect(),
            other => vec![other.clone()],
        };
        match self {
            WarnBefore::One(d) => split(d),
            WarnBefore::Many(list) => list.iter().flat_map(split).collect(),
        }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `PUT /v1/pools/{name}`: keep `min` to `max` environments of `spec` warm.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPool {
    pub spec: Spec,
    /// Members kept warm.
    pub min: u32,
    /// Most members held at once (default: `min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Changing it recycles every member made under another version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The lifecycle claimed members get unless the claim names one.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// How a claim's `params` reach a member: `{"exec": [...]}` or `{"file": "/path"}`, then
    /// `ready` until it exits 0, within `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_claim: Option<crate::claim::ClaimHook>,
}

/// A pool as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub name: String,
    pub spec: Spec,
    /// The canonical spec hash: creates with a spec of this hash claim from this pool.
    pub spec_hash: String,
    pub min: u32,
    pub max: u32,
    pub version: String,
    pub lifecycle: Lifecycle,
    /// `api` or `config`.
    pub source: String,
    /// Members running and ready to be claimed.
    pub warm: u32,
    /// Members on their way (pending, provisioning).
    pub starting: u32,
    /// Members claimed in the last 60 s (counted by this replica since its start).
    #[serde(default)]
    pub claims_last_minute: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_claim: Option<crate::claim::ClaimHook>,
}

/// `GET /v1/pools`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// `POST /v1/environments/{id}/extend`: exactly one of `by` and `until`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Move the expiry this much later than the later of now and the current expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<DurationInput>,
    /// Set the expiry to this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// `POST /v1/environments/{id}/exec`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments, run inside the environment.
    pub cmd: Vec<String>,
    /// How long to wait for it (default 30 s, at most 10 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationInput>,
}

/// What an exec printed and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// The exit code; absent when the command was still running at its timeout.
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    /// The command outlived its timeout and was abandoned.
    pub timed_out: bool,
}

/// `GET /v1/environments/{id}/logs`: the tail of what the environment printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogsView {
    pub stdout: String,
    pub stderr: String,
}

/// One Redis queue (`GET /v1/queues`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// `provision` or `decommission`.
    pub name: String,
    pub key: String,
    pub processing_key: String,
    pub dead_letter_key: String,
    /// Messages waiting; absent while Redis does not answer.
    pub depth: Option<u64>,
    /// Messages taken and not yet applied (the processing list).
    pub in_flight: Option<u64>,
    /// Messages in the dead-letter list.
    pub dead_lettered: Option<u64>,
    /// Messages applied, ever (counted by the store with each one).
    pub processed: u64,
    pub applied_since_start: u64,
    pub dead_lettered_since_start: u64,
    /// Batches handled at once.
    pub concurrency: usize,
    /// The newest dead letters (at most 5), with their reasons; empty while Redis does not
    /// answer.
    #[serde(default)]
    pub recent_dead_letters: Vec<DeadLetterView>,
}

/// One dead letter as its list in Redis keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterView {
    pub reason: String,
    /// When it was refused (RFC 3339), as recorded.
    pub at: String,
    /// The message's first bytes (lossy UTF-8).
    pub message: String,
    /// The message's length in bytes; `truncated` when `message` is a prefix of it.
    pub length: u64,
    pub truncated: bool,
}

/// `GET /v1/queues`: the SWIM Redis queues, if this server consumes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueuesView {
    pub enabled: bool,
    /// The Redis server, without its password.
    pub redis: Option<String>,
    pub connected: bool,
    /// What the last failed Redis call said.
    pub error: Option<String>,
    /// The provider that serves the requests.
    pub provider: Option<String>,
    pub queues: Vec<QueueView>,
}

/// An environment as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentView {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `null` for an environment of no tenant (the operator's, the queues', a pool's).
    pub tenant: Option<String>,
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
    pub lifecycle: Lifecycle,
    /// What was asked for.
    pub desired_state: DesiredState,
    /// What the control plane last saw.
    pub state: ObservedState,
    /// Why it failed, or what the last failed attempt said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub on_expiry: OnExpiry,
    /// When the lease ran out, if it has and was not extended since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<String>,
    /// Failed provider attempts since the last success.
    pub attempts: u32,
    /// Restarts after exits (services, daemons, retried jobs).
    pub restarts: u32,
    /// How its command ended, once it has (jobs; exits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The warm pool it waits in, while unclaimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// `api`, `config`, `pool`, `sweep` or `swim` (the Redis queues).
    pub source: String,
    /// The user's key (seed `job_id`, config file `id`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Where the spec's user data (cloud-init) is inside the environment, once provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_path: Option<String>,
    /// The provider's own id of its resource (an EC2 instance id, a container id), once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<String>,
    /// How long without activity stops (or deletes) it, if it has an idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_idle: OnIdle,
    /// Its latest activity (a touch not yet written to the store included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_at: Option<String>,
    /// When its idle timeout stopped or deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idled_at: Option<String>,
    /// While it runs with a probe (`spec.health`): `starting`, `healthy` or `unhealthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Running and, if it has a probe, healthy.
    #[serde(default)]
    pub ready: bool,
    /// When it last became healthy, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<String>,
    /// Pre-expiry warnings, in seconds before `expires_at` (largest first; empty for none).
    #[serde(default)]
    pub warn_before: Vec<u64>,
    /// When the last warning of the current lease fired (`null` before one has).
    #[serde(default)]
    pub warned_at: Option<String>,
    /// With replicas on PostgreSQL: the replica whose local provider holds it (the only one
    /// that reconciles it); absent: whoever leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_on: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Environment> for EnvironmentView {
    fn from(e: &Environment) -> Self {
        EnvironmentView {
            id: e.id.clone(),
            name: e.name.clone(),
            tenant: (!e.tenant.is_empty()).then(|| e.tenant.clone()),
            owner: e.owner.clone(),
            labels: e.labels.clone(),
            spec: e.spec.clone(),
            lifecycle: e.lifecycle,
            desired_state: e.desired,
            state: e.observed,
            reason: e.reason.clone(),
            endpoints: e.endpoints.clone(),
            expires_at: e.expires_at.map(format_millis),
            on_expiry: e.on_expiry,
            expired_at: e.expired_at.map(format_millis),
            attempts: e.attempts,
            restarts: e.restarts,
            exit_code: e.exit_code,
            finished_at: e.finished_at.map(format_millis),
            pool: e.pool.clone(),
            source: e.source.clone(),
            job_id: e.job_id.clone(),
            user_data_path: e.user_data_path.clone(),
            provider_ref: e.provider_ref.clone(),
            idle_timeout: e
                .idle_timeout
                .map(|ms| crate::duration::format_duration(std::time::Duration::from_millis(ms.max(0) as u64))),
            on_idle: e.on_idle,
            last_active_at: e.last_active_at.map(format_millis),
            idled_at: e.idled_at.map(format_millis),
            health: e.health.filter(|_| e.observed == ObservedState::Running),
            ready: e.is_ready(),
            ready_at: e.ready_at.filter(|_| e.observed == ObservedState::Running).map(format_millis),
            warn_before: e.warn_before.iter().map(|ms| (*ms).max(0) as u64 / 1000).collect(),
            warned_at: e.warned_at.map(format_millis),
            placed_on: e.placed_on.clone(),
            created_at: format_millis(e.created_at),
            updated_at: format_millis(e.updated_at),
        }
    }
}

/// `GET /v1/environments`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentList {
    pub environments: Vec<EnvironmentView>,
}

/// One audit record: a transition or a mutating call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Position in the trail; strictly increasing.
    pub seq: i64,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// Who: an API key's id (`key:<id>`), `admin`, `api` (no keys configured), `reconciler`,
    /// `expiry`, `sweep`, `swim`, `config`.
    pub actor: String,
    /// What: `create`, `extend`, `transition`, `expire`, …
    pub action: String,
    /// `ok`, `error`, or the state reached.
    pub outcome: String,
    pub message: String,
    /// The tenant of the environment it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// An audit record as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: i64,
    pub at: Millis,
    pub environment_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub outcome: String,
    pub message: String,
    /// The tenant of the environment it concerns.
    pub tenant: Option<String>,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        EventView {
            seq: e.seq,
            at: format_millis(e.at),
            environment_id: e.environment_id.clone(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            outcome: e.outcome.clone(),
            message: e.message.clone(),
            tenant: e.tenant.clone().filter(|t| !t.is_empty()),
        }
    }
}

/// `GET /v1/events`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

/// What a provider can do beyond create, stop and delete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    /// `exec` runs a command inside a running environment.
    pub exec: bool,
    /// `logs` returns what the environment printed.
    pub logs: bool,
    /// A stop keeps the environment's disk, and a start resumes it.
    pub stop_keeps_disk: bool,
    /// It runs cloud VMs (takes `spec.cloud`, is billed by the cloud).
    pub cloud: bool,
    /// Its VMs carry the lease backstop: they power off by themselves at the lease's end
    /// plus a grace, with Lapse down.
    pub lease_backstop: bool,
    /// It boots `spec.kernel` and `spec.rootfs`.
    pub boots_kernel: bool,
    /// An interactive terminal (`GET /v1/environments/{id}/terminal`, a WebSocket).
    #[serde(default)]
    pub terminal: bool,
    /// Its resources live on this server's host (processes, a Docker Engine on a local
    /// socket): with replicas on PostgreSQL, an environment on it belongs to the replica that
    /// placed it, and only that replica reconciles it.
    #[serde(default)]
    pub local: bool,
}

/// One provider and whether it can take work.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProviderView {
    /// The name specs use (`spec.provider`).
    pub name: String,
    /// Its backend: `process`, `docker`, `aws`, `scaleway`, `ovh`, `sim`.
    pub kind: String,
    pub available: bool,
    /// What it talks to, or why it is unavailable.
    pub detail: String,
    pub capabilities: Capabilities,
    /// How often the drift sweep lists it, in seconds.
    pub sweep_interval_secs: u64,
    /// Its calls at once.
    pub concurrency: usize,
}

/// `GET /v1/providers`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProviderList {
    pub providers: Vec<ProviderView>,
}

/// `GET /v1/status`: what this control plane is and how busy.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    pub version: String,
    /// The id every resource of this control plane is labelled with.
    pub controller_id: String,
    pub providers: Vec<String>,
    /// Deadlines held (lease expiries and retry back-offs).
    pub timers: usize,
    /// Reconciler steps queued or running.
    pub backlog: usize,
    /// The declarative config file, if one is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigStatus>,
    /// Where the state is kept: `sqlite` or `postgres`.
    #[serde(default)]
    pub store: String,
    /// On PostgreSQL, this server's replica id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// On PostgreSQL, every replica connected to the database and the store locks it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaView>>,
    /// `leader` (runs the background work: always on SQLite) or `follower` (serves the API).
    #[serde(default)]
    pub role: String,
    /// On PostgreSQL, while this replica leads: its lead's fencing epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
}

/// A replica of `GET /v1/status` (PostgreSQL only).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplicaView {
    pub id: String,
    /// Its open connections to the database.
    pub connections: i64,
    /// The store locks it holds: `server` (every server holds it, shared), `leader` (the one
    /// that runs the background work), `migrations`.
    pub holds: Vec<String>,
    /// When its oldest open connection was made.
    pub since: String,
}

/// The state of `lapse serve --config FILE`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ConfigStatus {
    pub path: String,
    /// When the file was last applied without error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// Why the last reading of the file was refused (the last good state stays in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `invalid_request`, `malformed_json`, …
    pub code: String,
    /// For people.
    pub message: String,
}

/// Per-tenant limits; each one absent keeps the tier's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaInput {
    /// Environments at once, counting pending and provisioning ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mb: Option<u64>,
    /// Disk (GB) of the tenant's environments (github.gg's `maxDiskGb`; `max_disk_gb` is
    /// accepted for it).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "max_disk_gb")]
    pub disk_gb: Option<u64>,
    /// Longest TTL, as `"2h"` or seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<DurationInput>,
    /// Environment-hours per calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_hours_per_month: Option<f64>,
    /// The providers the tenant may use (default: every provider on except `process`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
    /// vCPUs charged to (and given) a spec that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_vcpu: Option<f64>,
    /// Memory (MB) charged to (and given) a spec that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mem_mb: Option<u64>,
    /// Pre-expiry warnings of an environment that gives none (`["15m", "2m"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_before: Option<WarnBefore>,
}

/// `POST /v1/admin/tenants`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Letters, digits, `.`, `_`, `-`; at most 63.
    pub name: String,
    /// `free` (default), `pro`, `unlimited`, or a tier of the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaInput>,
    /// How vCPU, memory and disk limits are held: `summed` (default) or `per_request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_check: Option<QuotaCheckName>,
}

/// How a tenant's vCPU, memory and disk limits are held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaCheckName {
    /// Over all of the tenant's live environments together.
    #[default]
    Summed,
    /// Each environment's own request (github.gg's orchestrator); the environment count is
    /// still summed.
    PerRequest,
}

impl From<QuotaCheckName> for crate::quota::QuotaCheck {
    fn from(n: QuotaCheckName) -> Self {
        match n {
            QuotaCheckName::Summed => crate::quota::QuotaCheck::Summed,
            QuotaCheckName::PerRequest => crate::quota::QuotaCheck::PerRequest,
        }
    }
}

impl From<crate::quota::QuotaCheck> for QuotaCheckName {
    fn from(c: crate::quota::QuotaCheck) -> Self {
        match c {
            crate::quota::QuotaCheck::Summed => QuotaCheckName::Summed,
            crate::quota::QuotaCheck::PerRequest => QuotaCheckName::PerRequest,
        }
    }
}

/// `PATCH /v1/admin/tenants/{name}`: the settings to change; what is left out stays.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_check: Option<QuotaCheckName>,
}

/// A tenant as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    pub name: String,
    pub tier: String,
    pub quota: QuotaInput,
    pub quota_check: QuotaCheckName,
    pub created_at: String,
}

/// `GET /v1/admin/tenants`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
}

/// What a key may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyScopeName {
    /// One tenant's environments and events (`tenant` names it).
    #[default]
    Tenant,
    /// `GET /metrics` and nothing else; no tenant.
    Metrics,
}

/// `POST /v1/admin/keys`: `{"scope": "metrics"}`, or `{"scope": "tenant", "tenant": "acme"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub scope: KeyScopeName,
    /// The tenant of a `tenant` key; absent for a `metrics` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A new API key: `key` is shown this once and kept only as a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyCreated {
    pub id: String,
    /// Its tenant; absent for a metrics key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default)]
    pub scope: KeyScopeName,
    /// Send as `Authorization: Bearer <key>`.
    pub key: String,
}

/// `DELETE /v1/admin/keys/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyRevoked {
    pub id: String,
    /// Its tenant; absent for a metrics key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default)]
    pub scope: KeyScopeName,
    pub revoked: bool,
}

/// `GET /v1/whoami`: the presented key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// As the audit trail names it: `key:<id>`, `admin`, or `api` (no keys configured).
    pub actor: String,
    /// The tenant it is confined to; absent for admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub admin: bool,
}

/// One environment's usage in a period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentUsage {
    pub id: String,
    pub tenant: String,
    pub owner: String,
    pub running_hours: f64,
    pub stopped_hours: f64,
    /// Price per hour (per instance type, or per vCPU-hour and GB-hour).
    pub hourly: f64,
    pub cost: f64,
}

/// One tenant's usage in a period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantUsage {
    pub tenant: String,
    pub environments: usize,
    pub running_hours: f64,
    pub stopped_hours: f64,
    pub cost: f64,
}

/// `GET /v1/usage`: time and cost per environment and per tenant within `[from, to)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    pub from: String,
    pub to: String,
    pub tenants: Vec<TenantUsage>,
    pub environments: Vec<EnvironmentUsage>,
}

/// `GET /readyz`: whether the store takes writes and every background loop ticked recently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReadyView {
    pub ready: bool,
    pub store_writable: bool,
    pub loops: Vec<LoopHealth>,
    /// What is not ready, in words; empty when ready.
    pub problems: Vec<String>,
}

/// One background loop's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoopHealth {
    pub name: String,
    pub ok: bool,
    /// Milliseconds since it last ticked; absent if it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick_ms_ago: Option<u64>,
}

/// `POST /v1/admin/sweep`: run one drift sweep now, or only plan it (`dry_run`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepRequest {
    /// Compute every correction and change nothing (no store write, no provider call but
    /// `list` and `inspect`).
    #[serde(default)]
    pub dry_run: bool,
    /// Only this provider (by name); every provider when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// What one sweep planned (and, unless a dry run, did), per provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SweepView {
    pub dry_run: bool,
    pub providers: Vec<ProviderSweep>,
}

/// One provider's part of a sweep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProviderSweep {
    pub provider: String,
    /// Why this provider could not be swept (its `list` failed); its actions are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub actions: Vec<SweepAction>,
}

/// One correction of a sweep, or one resource it leaves alone on purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SweepAction {
    pub environment_id: String,
    /// The provider's id of the resource, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<String>,
    /// `remove_orphan`, `adopt_orphan`, `provision_again` (vanished, desired running),
    /// `mark_failed` (vanished while stopped), `record_exit`, `keep` (marked `lapse:keep`,
    /// left alone) or `transitional` (between two states, left alone).
    pub action: String,
    /// Why, in words.
    pub detail: String,
    /// In a real sweep: whether it was done (`false`: the row moved on meanwhile, or the
    /// provider call failed, see `error`). Absent in a dry run and for what is left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
