//! The environment and its spec.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Millis;

/// What the user asked for. Only entry points (API, CLI, expiry) change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Stopped,
    Deleted,
}

/// What the reconciler last saw or did. Only the reconciler and the drift sweep change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObservedState {
    Pending,
    Provisioning,
    Running,
    Stopping,
    Stopped,
    Deleting,
    Deleted,
    Failed,
}

/// What happens when a lease runs out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnExpiry {
    /// Stop the environment; `extend` starts it again.
    #[default]
    Stop,
    /// Delete the environment and everything the provider holds for it.
    Delete,
}

/// What happens when an environment has had no activity for its `idle_timeout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnIdle {
    /// Stop it; `start` runs it again, with a fresh idle window.
    #[default]
    Stop,
    /// Delete it.
    Delete,
}

/// What an environment's health probe (`spec.health`) last made of it, while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Running, and the probe has not yet passed `healthy_after` times in a row.
    Starting,
    /// The probe passed `healthy_after` times in a row: ready.
    Healthy,
    /// The probe failed `unhealthy_after` times in a row: not ready.
    Unhealthy,
}

/// How an environment lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Runs until its lease runs out, then `on_expiry` applies. If it exits on its own it is
    /// recorded stopped.
    #[default]
    Lease,
    /// Kept running: restarted with back-off when it exits or its resource vanishes. No
    /// expiry unless a TTL is given.
    Service,
    /// Like `service` (background workers); the seed's third kind.
    Daemon,
    /// Runs its command to completion; the exit code and finish time are recorded; failures
    /// are retried up to `max_retries`; kept until its TTL, then deleted.
    Job,
}

impl Lifecycle {
    /// Whether the control plane restarts it when it exits.
    pub fn restarts(self) -> bool {
        matches!(self, Lifecycle::Service | Lifecycle::Daemon)
    }
}

macro_rules! str_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The lowercase name, as on the wire and in the store.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownValue { kind: stringify!($ty), value: s.to_owned() }),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

str_enum!(DesiredState { Running => "running", Stopped => "stopped", Deleted => "deleted" });
str_enum!(ObservedState {
    Pending => "pending", Provisioning => "provisioning", Running => "running",
    Stopping => "stopping", Stopped => "stopped", Deleting => "deleting",
    Deleted => "deleted", Failed => "failed",
});
str_enum!(OnExpiry { Stop => "stop", Delete => "delete" });
str_enum!(OnIdle { Stop => "stop", Delete => "delete" });
str_enum!(Health { Starting => "starting", Healthy => "healthy", Unhealthy => "unhealthy" });
str_enum!(Lifecycle { Lease => "lease", Service => "service", Daemon => "daemon", Job => "job" });

impl ObservedState {
    /// Every observed state, in lifecycle order.
    pub const ALL: [ObservedState; 8] = [
        Self::Pending,
        Self::Provisioning,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
        Self::Deleting,
        Self::Deleted,
        Self::Failed,
    ];
}

/// A string that names none of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

/// CPU, memory and disk asked for. Providers honour what they can (see each provider's docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPUs; fractions allowed (0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<f64>,
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mb: Option<u64>,
    /// Disk in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u64>,
}

/// What a cloud VM needs beyond [`Spec`]'s common fields (the image is [`Spec::image`], the
/// disk size `resources.disk_gb`, the user data [`Spec::user_data`]). Only cloud providers
/// take it; each checks the fields it knows and refuses the others. Local providers refuse it
/// whole: a spec is honoured or refused, never silently trimmed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudSpec {
    /// The cloud's machine size: `t2.nano` (AWS), `DEV1-S` (Scaleway), `b2-7` (OVH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Where in the provider's region: an availability zone (`us-east-1a`), a Scaleway zone
    /// (`fr-par-1`), an OVH region (`GRA9`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The subnet to attach (AWS); default: the provider's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// A security group by name or id; default: the provider's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
    /// SSH public keys (OpenSSH one-line format) to let in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_public_keys: Vec<String>,
    /// The root disk's type (`gp3`, `l_ssd`, ...); its size is `resources.disk_gb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_type: Option<String>,
}

impl CloudSpec {
    /// Whether no field is set (such a `cloud` means nothing and is dropped by
    /// [`Spec::canonical`]).
    pub fn is_empty(&self) -> bool {
        *self == CloudSpec::default()
    }
}

/// What to run and where: the provider-independent description of an environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The provider that runs it: `process`, `docker`, …
    pub provider: String,
    /// Image (Docker image reference). Required by `docker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Command and arguments. Required by `process`; overrides the image's command for `docker`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// TCP ports the environment listens on; `docker` publishes each on a free loopback port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Cloud-init user data. `process` and `docker` put it in a file inside the environment
    /// (its path is in `LAPSE_USER_DATA` and on the record as `user_data_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// What a cloud VM needs (instance type, zone, subnet, security group, SSH keys, disk type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudSpec>,
    /// A guest kernel to boot (the seed's `kernel`): only a provider that boots kernels
    /// (`Provider::boots_kernel`) takes it; the others refuse it. Absent from the hash when
    /// unset, so specs without it hash as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// A root filesystem image for that kernel (the seed's `rootfs`); as `kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// Named routes of the proxy: `code = 8080` serves `/code/<id>/...` from port 8080 (each
    /// port must be in `ports`), the prefix stripped unless `{ port, strip_prefix = false }`.
    /// Absent from the hash when empty, so specs without routes hash as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, Route>,
    /// A health probe (see [`crate::probe`]): the environment is ready only once it passes.
    /// Absent from the hash when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::probe::HealthCheck>,
    /// An S3 workspace synced with a directory of the environment (see [`crate::workspace`]).
    /// Absent from the hash when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::workspace::Workspace>,
    /// The program the interactive terminal runs (an absolute path, e.g. `/bin/bash`); without
    /// it, `/bin/sh`. Absent from the hash when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

/// A named route of the proxy (see [`Spec::routes`]): a port (`code = 8080`, the route's
/// prefix stripped), or a table `{ port = 8080, strip_prefix = false }` to keep the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Route {
    /// The port; the prefix `/<route>/<id>` is stripped.
    Port(u16),
    Table(RouteTable),
}

/// A route with its options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// One of the spec's `ports`.
    pub port: u16,
    /// Whether `/<route>/<id>` is taken off the path before it is forwarded (default `true`).
    #[serde(default = "strip_by_default")]
    pub strip_prefix: bool,
}

fn strip_by_default() -> bool {
    true
}

impl Route {
    /// The environment's port it forwards to.
    pub fn port(&self) -> u16 {
        match self {
            Route::Port(p) => *p,
            Route::Table(t) => t.port,
        }
    }

    /// Whether the route's prefix is taken off the forwarded path.
    pub fn strip_prefix(&self) -> bool {
        match self {
            Route::Port(_) => true,
            Route::Table(t) => t.strip_prefix,
        }
    }

    /// The shortest form that means the same (`{ port = 8080 }` is `8080`).
    pub fn canonical(self) -> Route {
        if self.strip_prefix() { Route::Port(self.port()) } else { self }
    }
}

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Route, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Route;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port (1 to 65535) or a table { port, strip_prefix }")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Route, E> {
                u16::try_from(v).map(Route::Port).map_err(|_| E::custom(format!("{v} is not a port (1 to 65535)")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Route, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not a port (1 to 65535)")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Route, A::Error> {
                RouteTable::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Route::Table)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A way in: a port of the environment reachable at `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Endpoint {
    /// The port inside the environment.
    pub container_port: u16,
    pub protocol: String,
    /// Where to connect from the control plane's host.
    pub host: String,
    pub port: u16,
}

/// One environment, as the store holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Environment {
    pub id: String,
    pub name: Option<String>,
    pub tenant: String,
    pub owner: String,
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
    pub lifecycle: Lifecycle,
    pub desired: DesiredState,
    pub observed: ObservedState,
    /// Why the environment failed, or what the last failed attempt said.
    pub reason: Option<String>,
    /// The provider's own id for the resource (container id, pid), once it has one.
    pub provider_ref: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub expires_at: Option<Millis>,
    pub on_expiry: OnExpiry,
    /// When the lease ran out, while it stays run out (cleared by `extend`).
    pub expired_at: Option<Millis>,
    /// The expiry stopped a running environment, so `extend` starts it again. An environment
    /// its user stopped stays stopped when extended.
    pub restart_on_extend: bool,
    /// Failed provider attempts since the last success.
    pub attempts: u32,
    /// Earliest time of the next attempt after a failure.
    pub next_attempt_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// The warm pool this environment belongs to while it waits to be claimed.
    pub pool: Option<String>,
    /// The pool's version when this member was made; a member of another version is recycled.
    pub pool_version: Option<String>,
    /// The user's own key for it (the seed's `job_id`, a config file's `id`): unique among
    /// environments not deleted; `POST /vms` and config files upsert by it.
    pub job_id: Option<String>,
    /// Where the desired state came from: `api`, `config`, `pool`, `sweep`.
    pub source: String,
    /// Set when the spec was replaced while a resource exists: it must be made again.
    pub replace: bool,
    /// Restarts after exits (services, daemons, retried jobs).
    pub restarts: u32,
    /// Jobs: retries allowed after a non-zero exit.
    pub max_retries: u32,
    /// How the command ended, for environments that ran to completion or exited.
    pub exit_code: Option<i64>,
    pub finished_at: Option<Millis>,
    /// Where the provider put the spec's user data inside the environment.
    pub user_data_path: Option<String>,
    /// The seed's own spec as it was given (fc_ex_cp's `/vms` and `desired_vms.exs`), JSON
    /// text of an object, kept verbatim for the seed's views; `None` for everything else.
    pub seed_spec: Option<String>,
    /// Stop or delete it after this long without activity (see `lapse_server::activity`).
    pub idle_timeout: Option<Millis>,
    pub on_idle: OnIdle,
    /// The latest activity the store holds (the server's memory may hold a later one).
    pub last_active_at: Option<Millis>,
    /// When the idle timeout stopped or deleted it (cleared when it runs again).
    pub idled_at: Option<Millis>,
    /// Its probe's verdict while it runs; `None` without a probe (and while not running).
    pub health: Option<Health>,
    /// When it last became healthy (ready), while it is.
    pub ready_at: Option<Millis>,
    /// A probe found this running service unhealthy: the reconciler restarts it (stop, then
    /// start).
    pub restart_requested: bool,
    /// Pre-expiry warnings: how long before `expires_at` each fires, in ms (largest first).
    pub warn_before: Vec<Millis>,
    /// The marks of `warn_before` already fired for the current lease (cleared when the lease
    /// moves), so a restart repeats none.
    pub warned: Vec<Millis>,
    /// When the last warning of the current lease fired.
    pub warned_at: Option<Millis>,
    /// With replicas on PostgreSQL: the replica whose local provider (`process`, `docker` on
    /// a local socket) holds it, the only one that reconciles it. `None`: whoever leads.
    pub placed_on: Option<String>,
}

/// The tenant of an environment that belongs to no tenant: the operator's, the queues', an
/// unclaimed pool member. Not a name a tenant can have.
pub const NO_TENANT: &str = "";

impl Environment {
    /// A new environment with defaults: `running`, `pending`, a lease with no expiry yet.
    pub fn new(id: String, owner: String, spec: Spec, now: Millis) -> Environment {
        Environment {
            id,
            name: None,
            tenant: NO_TENANT.into(),
            owner,
            labels: BTreeMap::new(),
            spec,
            lifecycle: Lifecycle::Lease,
            desired: DesiredState::Running,
            observed: ObservedState::Pending,
            reason: None,
            provider_ref: None,
            endpoints: vec![],
            expires_at: None,
            on_expiry: OnExpiry::Stop,
            expired_at: None,
            restart_on_extend: false,
            attempts: 0,
            next_attempt_at: None,
            created_at: now,
            updated_at: now,
            pool: None,
            pool_version: None,
            job_id: None,
            source: "api".into(),
            replace: false,
            restarts: 0,
            max_retries: 0,
            exit_code: None,
            finished_at: None,
            user_data_path: None,
            seed_spec: None,
            idle_timeout: None,
            on_idle: OnIdle::Stop,
            last_active_at: None,
            idled_at: None,
            health: None,
            ready_at: None,
            restart_requested: false,
            warn_before: Vec::new(),
            warned: Vec::new(),
            warned_at: None,
            placed_on: None,
        }
    }

    /// Whether it is ready for use: running and, if its spec has a probe, healthy.
    pub fn is_ready(&self) -> bool {
        self.observed == ObservedState::Running && (self.spec.health.is_none() || self.health == Some(Health::Healthy))
    }
}

impl Spec {
    /// The spec with defaults made explicit and order-free parts sorted, so that specs that
    /// mean the same are equal.
    pub fn canonical(&self) -> Spec {
        let mut spec = self.clone();
        if spec.resources.as_ref().is_some_and(|r| r.vcpu.is_none() && r.mem_mb.is_none() && r.disk_gb.is_none()) {
            spec.resources = None;
        }
        spec.ports.sort_unstable();
        spec.ports.dedup();
        if spec.cloud.as_ref().is_some_and(CloudSpec::is_empty) {
            spec.cloud = None;
        }
        for route in spec.routes.values_mut() {
            *route = route.canonical();
        }
        spec
    }

    /// The canonical hash: 16 hex digits of SHA-256 over the canonical spec's JSON. Field
    /// order, defaults and formatting do not change it. The warm-pool key.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        // Serializing a plain struct of strings, numbers and maps cannot fail.
        let json = serde_json::to_vec(&self.canonical()).expect("a spec serializes");
        let digest = sha2::Sha256::digest(&json);
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// A warm pool: `min` to `max` environments of one spec, running and unclaimed.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    pub spec: Spec,
    pub min: u32,
    pub max: u32,
    /// Members made under another version are recycled.
    pub version: String,
    pub lifecycle: Lifecycle,
    /// `api` or `config`.
    pub source: String,
    /// How a claim hands its parameters to a member ([`crate::claim`]).
    pub on_claim: Option<crate::claim::ClaimHook>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A new environment id: a UUIDv7 in lowercase hex, so ids sort by creation time.
pub fn new_environment_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Whether `s` has the shape of an environment id: 32 hex digits, as [`new_environment_id`]
/// makes them (users' own keys are `job_id`s). Anything else is a 404 without a query.
pub fn is_environment_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_hash_ignores_order_defaults_and_formatting() {
        let a: Spec = serde_json::from_str(
            r#"{"provider": "process", "cmd": ["sleep", "1"], "env": {"A": "1", "B": "2"}, "ports": [80, 22]}"#,
        )
        .unwrap();
        let b: Spec = serde_json::from_str(
            r#"{ "ports": [22, 80], "env": {"B": "2", "A": "1"},
                 "cmd": ["sleep", "1"], "provider": "process", "resources": {}, "image": null }"#,
        )
        .unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
        let mut c = a.clone();
        c.cmd.push("2".into());
        assert_ne!(a.hash(), c.hash());
        let one: Spec =
            serde_json::from_str(r#"{"provider": "docker", "image": "x", "resources": {"vcpu": 1}}"#).unwrap();
        let one_point_oh: Spec =
            serde_json::from_str(r#"{"provider": "docker", "image": "x", "resources": {"vcpu": 1.0}}"#).unwrap();
        assert_eq!(one.hash(), one_point_oh.hash());
    }

    #[test]
    fn routes_read_both_forms_and_leave_old_hashes_alone() {
        let plain: Spec = serde_json::from_str(
            r#"{"provider": "process", "cmd": ["sleep", "1"], "env": {"A": "1"}, "resources": {"vcpu": 2, "mem_mb": 512}}"#,
        )
        .unwrap();
        assert_eq!(plain.hash(), "9fc07d35548f796f", "no routes: the pinned hash");
        assert!(!serde_json::to_string(&plain).unwrap().contains("routes"));
        let routed: Spec = serde_json::from_str(
            r#"{"provider": "process", "cmd": ["x"], "ports": [8080, 6080],
                "routes": {"code": 8080, "vnc": {"port": 6080, "strip_prefix": false}, "web": {"port": 8080}}}"#,
        )
        .unwrap();
        assert_eq!(routed.routes["code"], Route::Port(8080));
        assert_eq!(routed.routes["vnc"], Route::Table(RouteTable { port: 6080, strip_prefix: false }));
        assert!(!routed.routes["vnc"].strip_prefix() && routed.routes["web"].strip_prefix());
        let mut same = routed.clone();
        same.routes.insert("web".into(), Route::Port(8080));
        assert_eq!(same.hash(), routed.hash(), "{{ port }} is the port alone");
        for bad in [
            r#"{"code": 0x}"#,
            r#"{"code": -1}"#,
            r#"{"code": 70000}"#,
            r#"{"code": {"port": 1, "x": 1}}"#,
            r#"{"code": "80"}"#,
        ] {
            let text = format!(r#"{{"provider": "process", "routes": {bad}}}"#);
            assert!(serde_json::from_str::<Spec>(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_hash_of_a_spec_without_kernel_or_rootfs_is_what_it_was() {
        // Pinned before `kernel` and `rootfs` existed: adding them recycles no pool.
        let a: Spec = serde_json::from_str(
            r#"{"provider": "process", "cmd": ["sleep", "1"], "env": {"A": "1"}, "resources": {"vcpu": 2, "mem_mb": 512}}"#,
        )
        .unwrap();
        assert_eq!(a.hash(), "9fc07d35548f796f");
        let mut b = a.clone();
        b.kernel = Some("vmlinux".into());
        assert_ne!(a.hash(), b.hash());
        // Nor does `cloud`: absent or empty, the hash is the pinned one.
        let mut c = a.clone();
        c.cloud = Some(CloudSpec::default());
        assert_eq!(c.hash(), "9fc07d35548f796f");
        c.cloud = Some(CloudSpec { instance_type: Some("t2.nano".into()), ..Default::default() });
        assert_ne!(c.hash(), a.hash());
    }

    #[test]
    fn ids() {
        assert!(is_environment_id(&new_environment_id()));
        for bad in ["", "web-app-2", &"A".repeat(32), &"0".repeat(33), "..", &"x".repeat(32)] {
            assert!(!is_environment_id(bad), "{bad:?}");
        }
    }
}
