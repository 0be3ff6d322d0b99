//! `<prefix>servers:<webuserid>`: each user's lab, mirrored from the store's change feed.
//!
//! The value is the seed's `ServerState` (`internal/redis/client.go`), field for field and in
//! its order: `user`, `address`, `status`, `available`, `cloudStatus`, `serverId`,
//! `expiresAt`, `webUserId`, `labId` (an integer). `status` is one of the seed's
//! `provisioning`, `running`, `stopping`; `available` is true exactly when the lab runs, as the
//! seed's `cloudStatus == "running"`. Written with `SET … EX 86400` (the seed's 24 h) on every
//! change, and again on every resync (hourly, and after a reconnect or a lag), so a lab that
//! outlives a day keeps its key (the seed's stops being refreshed once it runs).
//!
//! Which lab a key shows: the user's current lab (not failed, not being deleted); else the
//! newest being deleted (`stopping`, as the seed writes before it deletes); else none, and the
//! key is deleted: after a decommission, and after a failure (the seed deletes the key when a
//! create or a poll fails; Lapse has removed the failed lab's resources).
//!
//! Field by field, against the seed: `cloudStatus` is Lapse's observed state (`""` before the
//! provider is asked, as the seed's first write; `stopping` while it is deleted, the seed's
//! literal); `serverId` is the Lapse environment id, from the first write; `address` is the
//! endpoint of port 22 (else the first endpoint): its host alone when it is on port 22, else
//! `host:port` (`[v6]:port`), empty until the lab runs; `expiresAt` is RFC 3339 in UTC with
//! milliseconds (the seed's is Go's, with nanoseconds).

use std::collections::HashSet;
use std::sync::Arc;

use lapse_core::format_millis;
use lapse_core::model::{DesiredState, Environment, ObservedState};
use serde::Serialize;

use super::apply::is_current;
use super::{EXPIRY_GRACE, LAB_LABEL, SOURCE, SwimV2};
use crate::app::App;
use crate::compat::swim::Swim;
use crate::compat::swim::mirror::{self, FLUSH_MAX, Mirror};
use redis::aio::MultiplexedConnection;

/// The value of `servers:<webuserid>`: the seed's `ServerState`.
#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerState {
    pub user: String,
    pub address: String,
    pub status: &'static str,
    pub available: bool,
    pub cloud_status: String,
    pub server_id: String,
    pub expires_at: String,
    pub web_user_id: String,
    pub lab_id: i64,
}

impl ServerState {
    /// What the key of the user whose labs (not yet deleted, newest first) are `rows` holds.
    pub fn of_user(rows: &[Environment], ssh_username: &str) -> Option<ServerState> {
        let current = rows.iter().find(|e| is_current(e));
        let leaving = || {
            rows.iter().find(|e| {
                e.desired == DesiredState::Deleted
                    && !matches!(e.observed, ObservedState::Failed | ObservedState::Deleted)
            })
        };
        let env = current.or_else(leaving)?;
        let (status, cloud_status) = if env.desired == DesiredState::Deleted {
            ("stopping", "stopping".to_owned())
        } else {
            match env.observed {
                ObservedState::Pending => ("provisioning", String::new()),
                ObservedState::Provisioning => ("provisioning", "provisioning".to_owned()),
                ObservedState::Running => ("running", "running".to_owned()),
                other => ("stopping", other.as_str().to_owned()),
            }
        };
        // Running and, if its spec has a health probe, healthy (exactly `running` without one).
        let available = status == "running" && env.is_ready();
        Some(ServerState {
            user: ssh_username.to_owned(),
            address: if status == "running" { address(env) } else { String::new() },
            status,
            available,
            cloud_status,
            server_id: env.id.clone(),
            expires_at: match env.expires_at {
                Some(at) => format_millis(at - EXPIRY_GRACE.as_millis() as i64),
                // Go's zero time: the lease was taken off through the API.
                None => "0001-01-01T00:00:00Z".to_owned(),
            },
            web_user_id: env.owner.clone(),
            lab_id: env.labels.get(LAB_LABEL).and_then(|l| l.parse().ok()).unwrap_or_default(),
        })
    }
}

fn address(env: &Environment) -> String {
    let Some(e) = env.endpoints.iter().find(|e| e.container_port == 22).or_else(|| env.endpoints.first()) else {
        return String::new();
    };
    match (e.port, e.host.contains(':')) {
        (22, _) => e.host.clone(),
        (port, true) => format!("[{}]:{port}", e.host),
        (port, false) => format!("{}:{port}", e.host),
    }
}

#[derive(Debug, thiserror::Error)]
enum MirrorError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("reading the store: {0}")]
    Store(#[from] lapse_store::StoreError),
}

/// Keeps the keys for ever, reconnecting with back-off when Redis goes away.
pub async fn run(app: App, swim: Arc<SwimV2>, changes: tokio::sync::broadcast::Receiver<Arc<Environment>>) {
    mirror::run(Keys { app, swim }, changes).await
}

/// The newer contract's keys, one per user with a lab.
struct Keys {
    app: App,
    swim: Arc<SwimV2>,
}

impl Mirror for Keys {
    type Key = String;
    type Error = MirrorError;
    const WHAT: &'static str = "v2 server state keys";

    fn link(&self) -> &Swim {
        &self.swim.link
    }

    fn key_of(&self, env: &Environment) -> Option<String> {
        (env.source == SOURCE).then(|| env.owner.clone())
    }

    async fn resync(&self, conn: &mut MultiplexedConnection) -> Result<(), MirrorError> {
        resync(&self.app, &self.swim, conn).await
    }

    async fn write(&self, conn: &mut MultiplexedConnection, changed: Vec<Arc<Environment>>) -> Result<(), MirrorError> {
        let users: Vec<String> = changed.iter().map(|e| e.owner.clone()).collect();
        write(&self.app, &self.swim, conn, &users).await
    }
}

/// Rewrites the key of every user with a lab, or one changed within the keys' lifetime.
async fn resync(app: &App, swim: &SwimV2, conn: &mut redis::aio::MultiplexedConnection) -> Result<(), MirrorError> {
    let since = app.cx.clock.now() - swim.link.config.server_ttl.as_millis() as i64;
    let envs = app.cx.store.mirrored(SOURCE, since).await?;
    let users: Vec<String> = envs.into_iter().map(|e| e.owner).collect::<HashSet<_>>().into_iter().collect();
    for chunk in users.chunks(FLUSH_MAX) {
        write(app, swim, conn, chunk).await?;
    }
    Ok(())
}

async fn write(
    app: &App,
    swim: &SwimV2,
    conn: &mut redis::aio::MultiplexedConnection,
    users: &[String],
) -> Result<(), MirrorError> {
    let ttl = swim.link.config.server_ttl.as_secs().max(1);
    let mut pipe = redis::pipe();
    for user in users {
        let rows = app.cx.store.lab_rows(SOURCE, user).await?;
        let key = swim.config.server_key(user);
        match ServerState::of_user(&rows, &swim.config.ssh_username) {
            // Serializing a struct of strings, numbers and a bool cannot fail.
            Some(state) => pipe.set_ex(key, serde_json::to_string(&state).expect("state serializes"), ttl).ignore(),
            None => pipe.del(key).ignore(),
        };
    }
    if !users.is_empty() {
        let () = pipe.query_async(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lapse_core::model::{Endpoint, Spec};

    use super::*;

    fn lab(id: char, lab: &str, observed: ObservedState, desired: DesiredState) -> Environment {
        let mut e = Environment::new(id.to_string().repeat(32), "u1".into(), Spec::default(), 0);
        e.labels.insert(LAB_LABEL.into(), lab.into());
        e.observed = observed;
        e.desired = desired;
        e.expires_at = Some(EXPIRY_GRACE.as_millis() as i64 + 1_800_000);
        e
    }

    #[test]
    fn a_key_shows_the_current_lab_in_the_seeds_shape() {
        let mut running = lab('b', "7", ObservedState::Running, DesiredState::Running);
        running.endpoints =
            vec![Endpoint { container_port: 22, protocol: "tcp".into(), host: "::1".into(), port: 2222 }];
        let leaving = lab('a', "5", ObservedState::Deleting, DesiredState::Deleted);
        let value = serde_json::to_value(ServerState::of_user(&[running.clone(), leaving.clone()], "student")).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "user": "student", "address": "[::1]:2222", "status": "running", "available": true,
                "cloudStatus": "running", "serverId": "b".repeat(32), "expiresAt": "1970-01-01T00:30:00.000Z",
                "webUserId": "u1", "labId": 7
            })
        );
        // The seed's field order.
        let text = serde_json::to_string(&ServerState::of_user(
            &[lab('e', "2", ObservedState::Running, DesiredState::Running)],
            "s",
        ))
        .unwrap();
        assert!(
            text.starts_with(r#"{"user":"s","address":"","status":"running","available":true,"cloudStatus""#),
            "{text}"
        );
        assert!(text.ends_with(r#","webUserId":"u1","labId":2}"#), "{text}");
        let stopping = ServerState::of_user(&[leaving], "s").unwrap();
        assert_eq!(
            (stopping.status, stopping.available, stopping.cloud_status.as_str()),
            ("stopping", false, "stopping")
        );
        let pending =
            ServerState::of_user(&[lab('c', "1", ObservedState::Pending, DesiredState::Running)], "s").unwrap();
        assert_eq!((pending.status, pending.cloud_status.as_str(), pending.address.as_str()), ("provisioning", "", ""));
        assert_eq!(ServerState::of_user(&[lab('d', "1", ObservedState::Failed, DesiredState::Running)], "s"), None);
    }

    #[test]
    fn available_waits_for_a_probe_to_pass_and_is_unchanged_without_one() {
        use lapse_core::model::Health;
        let mut probed = lab('b', "7", ObservedState::Running, DesiredState::Running);
        probed.spec.ports = vec![22];
        probed.spec.health = Some(lapse_core::probe::HealthCheck { tcp: Some(22), ..Default::default() });
        for (health, available) in [
            (None, false),
            (Some(Health::Starting), false),
            (Some(Health::Unhealthy), false),
            (Some(Health::Healthy), true),
        ] {
            probed.health = health;
            let state = ServerState::of_user(std::slice::from_ref(&probed), "s").unwrap();
            assert_eq!((state.status, state.available), ("running", available), "{health:?}");
        }
        // Without a probe, exactly as before: available while running.
        let plain = lab('c', "1", ObservedState::Running, DesiredState::Running);
        assert!(ServerState::of_user(&[plain], "s").unwrap().available);
    }
}
