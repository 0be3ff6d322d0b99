//! `swim:server:<id>`: the state of each environment the queues made, mirrored from the store.
//!
//! Every committed change of such an environment rewrites its key (24 h TTL, so refreshed on
//! every transition); a deleted environment's key is removed. The mirror reads the store's
//! change feed; when it falls behind, reconnects, or once an hour, it rewrites every key from
//! the store, so Redis never keeps a stale state for long and long-lived labs keep their key.
//!
//! The value keeps the seed's fields (`id`, `name`, `ipv6`, `state`, `provisioned_at`,
//! `deletion_at`, `web_username`, `lab_id`) and adds Lapse's (`error`, `provider`,
//! `endpoints`, `cloud_init_file`, `user_data_path`). `state` is the observed state, with
//! `error` for a failed provision (whose resources the reconciler has removed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapse_core::format_millis;
use lapse_core::model::{Endpoint, Environment, ObservedState};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use super::request::{CLOUD_INIT_LABEL, LAB_LABEL};
use super::{FIRST_BACKOFF, Swim, next_backoff};
use crate::app::App;

/// How often every key is rewritten from the store.
const RESYNC_EVERY: Duration = Duration::from_secs(3600);
/// Most keys written in one pipeline.
const FLUSH_MAX: usize = 2000;

/// The value of `swim:server:<id>`.
#[derive(Debug, Serialize)]
pub struct ServerState<'a> {
    pub id: &'a str,
    pub name: String,
    /// The seed's address field; local providers have none.
    pub ipv6: String,
    pub state: &'static str,
    pub provisioned_at: String,
    /// When the lease runs out and the environment is deleted.
    pub deletion_at: Option<String>,
    pub web_username: &'a str,
    /// A number when the request gave one.
    pub lab_id: serde_json::Value,
    pub error: Option<&'a str>,
    pub provider: &'a str,
    pub endpoints: &'a [Endpoint],
    pub cloud_init_file: Option<&'a str>,
    pub user_data_path: Option<&'a str>,
}

impl<'a> ServerState<'a> {
    pub fn of(e: &'a Environment) -> ServerState<'a> {
        let lab = e.labels.get(LAB_LABEL).map(String::as_str).unwrap_or_default();
        ServerState {
            id: &e.id,
            name: format!("lapse-{}", e.id),
            ipv6: String::new(),
            state: match e.observed {
                ObservedState::Failed => "error",
                other => other.as_str(),
            },
            provisioned_at: format_millis(e.created_at),
            deletion_at: e.expires_at.map(format_millis),
            web_username: &e.owner,
            lab_id: lab.parse::<i64>().map_or_else(|_| serde_json::Value::from(lab), serde_json::Value::from),
            error: e.reason.as_deref().filter(|_| e.observed == ObservedState::Failed),
            provider: &e.spec.provider,
            endpoints: &e.endpoints,
            cloud_init_file: e.labels.get(CLOUD_INIT_LABEL).map(String::as_str),
            user_data_path: e.user_data_path.as_deref(),
        }
    }
}

/// Keeps the keys for ever, reconnecting with back-off when Redis goes away.
pub async fn run(app: App, swim: Arc<Swim>, mut changes: tokio::sync::broadcast::Receiver<Arc<Environment>>) {
    let mut backoff = FIRST_BACKOFF;
    let mut pending: HashMap<String, Arc<Environment>> = HashMap::new();
    loop {
        let mut conn = match swim.connect(Duration::from_secs(10)).await {
            Ok(c) => c,
            Err(e) => {
                swim.down("server state keys", &e);
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        };
        // Everything is rewritten after a reconnect: what changed meanwhile is in the store.
        pending.clear();
        if let Err(e) = resync(&app, &swim, &mut conn).await {
            swim.down("server state keys", &e);
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            continue;
        }
        backoff = FIRST_BACKOFF;
        let mut next_resync = tokio::time::Instant::now() + RESYNC_EVERY;
        loop {
            let first = tokio::select! {
                r = changes.recv() => r,
                _ = tokio::time::sleep_until(next_resync) => Err(RecvError::Lagged(0)),
            };
            let mut lagged = false;
            match first {
                Ok(env) => keep(&mut pending, env),
                Err(RecvError::Lagged(_)) => lagged = true,
                Err(RecvError::Closed) => return,
            }
            while pending.len() < FLUSH_MAX {
                match changes.try_recv() {
                    Ok(env) => keep(&mut pending, env),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                    Err(_) => break,
                }
            }
            let result = if lagged {
                pending.clear();
                next_resync = tokio::time::Instant::now() + RESYNC_EVERY;
                resync(&app, &swim, &mut conn).await
            } else {
                let envs: Vec<Arc<Environment>> = pending.drain().map(|(_, e)| e).collect();
                write(&swim, &mut conn, envs.iter().map(|e| e.as_ref())).await
            };
            if let Err(e) = result {
                swim.down("server state keys", &e);
                break;
            }
        }
    }
}

fn keep(pending: &mut HashMap<String, Arc<Environment>>, env: Arc<Environment>) {
    if env.source == "swim" {
        pending.insert(env.id.clone(), env);
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
