//! `swim:server:<id>`: the state of each environment the queues made, mirrored from the store.
//!
//! Every committed change of such an environment rewrites its key (24 h TTL, so refreshed on
//! every transition); a deleted environment's key is removed. The mirror reads the store's
//! change feed; when it falls behind, reconnects, or once an hour, it rewrites every key from
//! the store, so Redis never keeps a stale state for long and long-lived labs keep their key.
//!
//! **The value is the seed's `ServerState`** (`internal/redis/client.go`), field for field
//! and type for type, so a reader that decodes it as the seed wrote it (a lab front-end, the
//! seed's own `GetServersByFilter`) reads it unchanged:
//!
//! | field | value |
//! |---|---|
//! | `id` | the environment's id (32 hex; the seed's is Scaleway's UUID) |
//! | `name` | the environment's name, `lab<LabID>-<8 a-z>` as the seed names servers |
//! | `ipv6` | the first endpoint host that is an IPv6 address, else `""`; `process`, `docker` and `sim` publish on `127.0.0.1`, so `""` |
//! | `state` | the seed's vocabulary, see below |
//! | `provisioned_at`, `deletion_at` | RFC 3339 as Go's `time.Time` marshals (`RFC3339Nano`: fraction without trailing zeros), in UTC; `deletion_at` is the lease's end, always set |
//! | `webusername` | the request's `WebUsername` (the owner) |
//! | `labid` | the request's `LabID`, a JSON integer |
//! | `lapse` | Lapse's own fields, in one object no seed field can collide with: `state` and `desired_state` (Lapse's words), `error`, `provider`, `endpoints`, `instance_type`, `resources_enforced`, `cloud_init_file`, `user_data_path`, `expired_at` |
//!
//! `state`: while it boots the seed writes Scaleway's `state_detail`; here `allocating node`
//! while the environment waits for its first attempt (Lapse `pending`) and `provisioning
//! node` while the provider makes it (`provisioning`); then `booted` once it runs, where the
//! seed's polling stops and a front-end takes the lab as ready. `deleted-error` when the
//! provision failed (the reconciler has removed whatever the provider made, as the seed
//! deletes the server). `decommissioning` from the moment a decommission (or any delete but
//! an expiry) is committed until the key goes; `shutting down` from the moment the lease runs
//! out (`expired_at` set with the desired state `deleted`) until the key goes. `stopping` and
//! `stopped` (Scaleway's words) for a lab stopped through the API. The key is removed when
//! the environment is deleted.
//!
//! Lapse differs from the seed on purpose in when the key exists: from the first committed
//! row (the seed writes it only after Scaleway's create succeeded, and a failed create leaves
//! no key), and for the whole life of the lab (the seed stops refreshing at `booted`, so a lab
//! older than 24 h loses its key and its server leaks).

use std::net::Ipv6Addr;
use std::sync::Arc;

use lapse_core::model::{DesiredState, Endpoint, Environment, ObservedState};
use lapse_core::{Millis, format_millis};
use serde::Serialize;

use super::Swim;
use super::request::{CLOUD_INIT_LABEL, INSTANCE_TYPE_LABEL, LAB_LABEL, RESOURCES_LABEL};
use redis::aio::MultiplexedConnection;

use super::mirror::{FLUSH_MAX, Mirror};
use crate::app::App;

/// Go's zero `time.Time`, as it marshals.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The value of `swim:server:<id>`: the seed's fields in the seed's order, then Lapse's.
#[derive(Debug, Serialize)]
pub struct ServerState<'a> {
    pub id: &'a str,
    pub name: String,
    pub ipv6: String,
    pub state: &'static str,
    pub provisioned_at: String,
    pub deletion_at: String,
    pub webusername: &'a str,
    pub labid: i64,
    pub lapse: LapseState<'a>,
}

/// What Lapse adds to a server's state, under the key `lapse`.
#[derive(Debug, Serialize)]
pub struct LapseState<'a> {
    /// Lapse's observed state (`pending` … `running`, `failed`).
    pub state: &'static str,
    pub desired_state: &'static str,
    /// Why it failed, when `state` is `deleted-error`.
    pub error: Option<&'a str>,
    pub provider: &'a str,
    pub endpoints: &'a [Endpoint],
    /// The request's `ServerType` (or `InstanceType`, or the default).
    pub instance_type: Option<&'a str>,
    /// Whether the provider enforces the type's vCPU and memory; `null` without a type.
    pub resources_enforced: Option<bool>,
    pub cloud_init_file: Option<&'a str>,
    pub user_data_path: Option<&'a str>,
    /// When the lease ran out, if it has.
    pub expired_at: Option<String>,
}

impl<'a> ServerState<'a> {
    pub fn of(e: &'a Environment) -> ServerState<'a> {
        let instance_type = e.labels.get(INSTANCE_TYPE_LABEL).map(String::as_str);
        ServerState {
            id: &e.id,
            name: e.name.clone().unwrap_or_else(|| format!("lapse-{}", e.id)),
            ipv6: ipv6(&e.endpoints),
            state: seed_state(e),
            provisioned_at: go_time(e.created_at),
            deletion_at: e.expires_at.map_or_else(|| GO_ZERO_TIME.to_owned(), go_time),
            webusername: &e.owner,
            // Labs made before LabID was an integer may hold another label: Go's zero then.
            labid: e.labels.get(LAB_LABEL).and_then(|l| l.parse().ok()).unwrap_or(0),
            lapse: LapseState {
                state: e.observed.as_str(),
                desired_state: e.desired.as_str(),
                error: e.reason.as_deref().filter(|_| e.observed == ObservedState::Failed),
                provider: &e.spec.provider,
                endpoints: &e.endpoints,
                instance_type,
                resources_enforced: instance_type
                    .map(|_| e.spec.resources.is_some() && !e.labels.contains_key(RESOURCES_LABEL)),
                cloud_init_file: e.labels.get(CLOUD_INIT_LABEL).map(String::as_str),
                user_data_path: e.user_data_path.as_deref(),
                expired_at: e.expired_at.map(format_millis),
            },
        }
    }
}

/// The seed's state word for an environment (see the module doc).
pub fn seed_state(e: &Environment) -> &'static str {
    if e.desired == DesiredState::Deleted && e.observed != ObservedState::Deleted {
        return if e.expired_at.is_some() { "shutting down" } else { "decommissioning" };
    }
    match e.observed {
        ObservedState::Pending => "allocating node",
        ObservedState::Provisioning => "provisioning node",
        ObservedState::Running => "booted",
        ObservedState::Stopping | ObservedState::Deleting => "stopping",
        ObservedState::Stopped => "stopped",
        ObservedState::Deleted => "deleted",
        ObservedState::Failed => "deleted-error",
    }
}

/// The first endpoint host that is an IPv6 address, else `""`.
fn ipv6(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .find_map(|ep| ep.host.trim_start_matches('[').trim_end_matches(']').parse::<Ipv6Addr>().ok())
        .map_or_else(String::new, |a| a.to_string())
}

/// A time as Go's `time.Time` marshals it in UTC: RFC 3339 with the fraction's trailing
/// zeros (and a bare `.`) left out.
pub fn go_time(ms: Millis) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else { return GO_ZERO_TIME.to_owned() };
    let seconds = t.format("%Y-%m-%dT%H:%M:%S");
    match ms.rem_euclid(1000) {
        0 => format!("{seconds}Z"),
        frac => format!("{seconds}.{}Z", format!("{frac:03}").trim_end_matches('0')),
    }
}

/// Keeps the keys for ever, reconnecting with back-off when Redis goes away.
pub async fn run(app: App, swim: Arc<Swim>, changes: tokio::sync::broadcast::Receiver<Arc<Environment>>) {
    super::mirror::run(Keys { app, swim }, changes).await
}

/// The older contract's keys, one per environment the queues made.
struct Keys {
    app: App,
    swim: Arc<Swim>,
}

impl Mirror for Keys {
    type Key = String;
    type Error = redis::RedisError;
    const WHAT: &'static str = "server state keys";

    fn link(&self) -> &Swim {
        &self.swim
    }

    fn key_of(&self, env: &Environment) -> Option<String> {
        (env.source == "swim").then(|| env.id.clone())
    }

    async fn resync(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        resync(&self.app, &self.swim, conn).await
    }

    async fn write(&self, conn: &mut MultiplexedConnection, changed: Vec<Arc<Environment>>) -> redis::RedisResult<()> {
        write(&self.swim, conn, changed.iter().map(|e| e.as_ref())).await
    }
}

/// Rewrites the key of every environment the queues made that is not deleted, and removes
/// those of environments deleted within the keys' lifetime.
async fn resync(app: &App, swim: &Swim, conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<()> {
    let since = app.cx.clock.now() - swim.config.server_ttl.as_millis() as i64;
    let envs = match app.cx.store.mirrored("swim", since).await {
        Ok(envs) => envs,
        Err(e) => {
            tracing::warn!(error = %e, "reading the store for the server state keys failed; retrying at the next change");
            return Ok(());
        }
    };
    for chunk in envs.chunks(FLUSH_MAX) {
        write(swim, conn, chunk.iter()).await?;
    }
    swim.up();
    Ok(())
}

async fn write<'a>(
    swim: &Swim,
    conn: &mut redis::aio::MultiplexedConnection,
    envs: impl Iterator<Item = &'a Environment>,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let ttl = swim.config.server_ttl.as_secs().max(1);
    let mut any = false;
    for env in envs {
        any = true;
        let key = swim.config.server_key(&env.id);
        if env.observed == ObservedState::Deleted {
            pipe.del(key).ignore();
        } else {
            // Serializing a struct of strings and numbers cannot fail.
            let value = serde_json::to_string(&ServerState::of(env)).expect("server state serializes");
            pipe.set_ex(key, value, ttl).ignore();
        }
    }
    if any {
        let () = pipe.query_async(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lapse_core::model::{OnExpiry, Spec};
    use serde_json::json;

    use super::*;

    fn lab() -> Environment {
        let spec = Spec { provider: "process".into(), cmd: vec!["sleep".into()], ..Default::default() };
        let mut e = Environment::new("ab12".into(), "ann".into(), spec, 1_764_590_400_120);
        e.name = Some("lab7-qwertyui".into());
        e.labels.insert(LAB_LABEL.into(), "7".into());
        e.expires_at = Some(1_764_592_200_000);
        e.on_expiry = OnExpiry::Delete;
        e
    }

    #[test]
    fn the_value_is_the_seeds_server_state_then_lapses() {
        let e = lab();
        let text = serde_json::to_string(&ServerState::of(&e)).unwrap();
        let seed = r#"{"id":"ab12","name":"lab7-qwertyui","ipv6":"","state":"allocating node","provisioned_at":"2025-12-01T12:00:00.12Z","deletion_at":"2025-12-01T12:30:00Z","webusername":"ann","labid":7,"lapse":{"#;
        assert!(text.starts_with(seed), "the seed's fields, in its order, then lapse: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (&v["id"], &v["name"], &v["ipv6"], &v["state"]),
            (&json!("ab12"), &json!("lab7-qwertyui"), &json!(""), &json!("allocating node"))
        );
        assert_eq!(v["provisioned_at"], "2025-12-01T12:00:00.12Z", "Go trims the fraction's zeros");
        assert_eq!(v["deletion_at"], "2025-12-01T12:30:00Z");
        assert_eq!((&v["webusername"], &v["labid"]), (&json!("ann"), &json!(7)));
        assert_eq!(v["lapse"]["state"], "pending");
        assert_eq!(v["lapse"]["resources_enforced"], json!(null));
    }

    #[test]
    fn states_speak_the_seeds_words() {
        let mut e = lab();
        let mut seen = vec![];
        for observed in
            [ObservedState::Pending, ObservedState::Provisioning, ObservedState::Running, ObservedState::Failed]
        {
            e.observed = observed;
            seen.push(seed_state(&e));
        }
        assert_eq!(seen, ["allocating node", "provisioning node", "booted", "deleted-error"]);
        e.observed = ObservedState::Running;
        e.desired = DesiredState::Deleted;
        assert_eq!(seed_state(&e), "decommissioning");
        e.observed = ObservedState::Deleting;
        assert_eq!(seed_state(&e), "decommissioning");
        e.expired_at = Some(1);
        assert_eq!(seed_state(&e), "shutting down");
    }

    #[test]
    fn ipv6_is_the_first_ipv6_endpoint_host() {
        let ep = |host: &str| Endpoint { container_port: 22, protocol: "tcp".into(), host: host.into(), port: 2222 };
        assert_eq!(ipv6(&[ep("127.0.0.1")]), "");
        assert_eq!(ipv6(&[ep("127.0.0.1"), ep("[2001:db8::1]"), ep("::1")]), "2001:db8::1");
        assert_eq!(ipv6(&[]), "");
    }

    #[test]
    fn times_are_gos() {
        assert_eq!(go_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(go_time(1_500), "1970-01-01T00:00:01.5Z");
        assert_eq!(go_time(1_007), "1970-01-01T00:00:01.007Z");
        assert_eq!(go_time(i64::MAX), GO_ZERO_TIME);
        let mut e = lab();
        e.expires_at = None;
        assert_eq!(ServerState::of(&e).deletion_at, GO_ZERO_TIME);
    }
}
