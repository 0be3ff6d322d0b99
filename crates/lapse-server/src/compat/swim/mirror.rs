//! One loop that keeps Redis keys mirrored from the store's change feed, for either SWIM
//! contract: `swim:server:<id>` ([`super::cache`]) and `vmmanager:servers:<user>`
//! (`compat::swim_v2::cache`).
//!
//! The loop connects (with back-off), rewrites every key from the store, then follows the
//! change feed: each round writes the keys of what changed since the last round (at most
//! [`FLUSH_MAX`] at once). When the feed lags (changes were dropped), every hour, and after a
//! reconnect, it rewrites every key from the store again, so Redis never keeps a stale state
//! for long. A failed write is a lost connection: the loop reconnects and resyncs.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use lapse_core::model::Environment;
use redis::aio::MultiplexedConnection;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::{FIRST_BACKOFF, Swim, next_backoff};

/// How often every key is rewritten from the store.
pub const RESYNC_EVERY: Duration = Duration::from_secs(3600);
/// Most keys written in one round.
pub const FLUSH_MAX: usize = 2000;

/// What one contract mirrors, and how.
pub(crate) trait Mirror {
    /// What a key is named after (an environment id, a user).
    type Key: Eq + Hash;
    type Error: std::fmt::Display;
    /// What these keys are, for the log (`server state keys`).
    const WHAT: &'static str;
    /// The Redis link, whose health the loop reports.
    fn link(&self) -> &Swim;
    /// The key `env`'s change rewrites, if it is one of this contract's.
    fn key_of(&self, env: &Environment) -> Option<Self::Key>;
    /// Rewrites every key from the store.
    async fn resync(&self, conn: &mut MultiplexedConnection) -> Result<(), Self::Error>;
    /// Rewrites the keys of these changed environments (one per key, the latest).
    async fn write(&self, conn: &mut MultiplexedConnection, changed: Vec<Arc<Environment>>) -> Result<(), Self::Error>;
}

/// Keeps `mirror`'s keys for ever, reconnecting with back-off when Redis goes away.
pub(crate) async fn run<M: Mirror>(mirror: M, mut changes: Receiver<Arc<Environment>>) {
    let mut backoff = FIRST_BACKOFF;
    let mut pending: HashMap<M::Key, Arc<Environment>> = HashMap::new();
    let link = mirror.link();
    loop {
        let mut conn = match link.connect(Duration::from_secs(10)).await {
            Ok(c) => c,
            Err(e) => {
                link.down(M::WHAT, &e);
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        };
        // Everything is rewritten after a reconnect: what changed meanwhile is in the store.
        pending.clear();
        if let Err(e) = mirror.resync(&mut conn).await {
            link.down(M::WHAT, &e);
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            continue;
        }
        link.up();
        backoff = FIRST_BACKOFF;
        let mut next_resync = tokio::time::Instant::now() + RESYNC_EVERY;
        loop {
            let first = tokio::select! {
                r = changes.recv() => r,
                _ = tokio::time::sleep_until(next_resync) => Err(RecvError::Lagged(0)),
            };
            let mut lagged = false;
            match first {
                Ok(env) => keep(&mirror, &mut pending, env),
                Err(RecvError::Lagged(_)) => lagged = true,
                Err(RecvError::Closed) => return,
            }
            while pending.len() < FLUSH_MAX {
                match changes.try_recv() {
                    Ok(env) => keep(&mirror, &mut pending, env),
                    Err(TryRecvError::Lagged(_)) => lagged = true,
                    Err(_) => break,
                }
            }
            let result = if lagged {
                pending.clear();
                next_resync = tokio::time::Instant::now() + RESYNC_EVERY;
                mirror.resync(&mut conn).await
            } else {
                mirror.write(&mut conn, pending.drain().map(|(_, e)| e).collect()).await
            };
            if let Err(e) = result {
                link.down(M::WHAT, &e);
                break;
            }
        }
    }
}

fn keep<M: Mirror>(mirror: &M, pending: &mut HashMap<M::Key, Arc<Environment>>, env: Arc<Environment>) {
    if let Some(key) = mirror.key_of(&env) {
        pending.insert(key, env);
    }
}
