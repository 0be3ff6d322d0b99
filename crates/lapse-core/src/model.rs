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

/// How an environment lives. Only `lease` exists so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Runs until its lease runs out, then `on_expiry` applies.
    #[default]
    Lease,
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
str_enum!(Lifecycle { Lease => "lease" });

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
}

/// A new environment id: a UUIDv7 in lowercase hex, so ids sort by creation time.
pub fn new_environment_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Whether `s` has the shape of an environment id (so a bad path is a 404, never a query).
pub fn is_environment_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
