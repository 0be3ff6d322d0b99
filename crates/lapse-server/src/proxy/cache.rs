//! The environments the proxy routes to, kept in memory and exact: a row read from the store
//! is kept only while the store's change feed says nothing about it, so a proxied request
//! costs no store read once its environment is known, and never acts on a stale row.
//!
//! - Every committed row arrives on the change feed ([`lapse_store::Store::subscribe`]); a
//!   kept row is replaced by it. A feed that lags empties the cache.
//! - A row read from the store is kept only if no change at all was seen while it was read
//!   (a change to that row committed meanwhile could otherwise be lost).
//! - At most [`MAX_ENTRIES`] rows are kept, each for at most [`MAX_AGE`] (a backstop).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapse_core::model::Environment;
use lapse_store::{Store, StoreError};
use tokio::time::Instant;

/// Rows kept at most.
pub const MAX_ENTRIES: usize = 10_000;
/// The longest a row is kept without a fresh read.
pub const MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct EnvCache {
    rows: Mutex<HashMap<String, (Arc<Environment>, Instant)>>,
    /// Changes seen on the feed (and lags), so a read can tell whether one raced it.
    seen: AtomicU64,
}

impl EnvCache {
    /// A cache following `store`'s change feed (the task ends with the feed).
    pub fn follow(store: &Store) -> Arc<EnvCache> {
        let cache = Arc::new(EnvCache { rows: Mutex::default(), seen: AtomicU64::new(0) });
        let mut feed = store.subscribe();
        let weak = Arc::downgrade(&cache);
        tokio::spawn(async move {
            loop {
                let change = feed.recv().await;
                let Some(cache) = weak.upgrade() else { return };
                cache.seen.fetch_add(1, Ordering::AcqRel);
                let mut rows = cache.rows.lock().unwrap_or_else(|p| p.into_inner());
                match change {
                    Ok(env) => {
                        if let Some(entry) = rows.get_mut(&env.id) {
                            *entry = (env, Instant::now());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => rows.clear(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        cache
    }

    /// The environment `id` as the store last committed it.
    pub async fn get(&self, store: &Store, id: &str) -> Result<Option<Arc<Environment>>, StoreError> {
        if let Some((env, at)) = self.rows.lock().unwrap_or_else(|p| p.into_inner()).get(id)
            && at.elapsed() < MAX_AGE
        {
            return Ok(Some(env.clone()));
        }
        let before = self.seen.load(Ordering::Acquire);
        let Some(env) = store.get(id).await?.map(Arc::new) else { return Ok(None) };
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if self.seen.load(Ordering::Acquire) == before {
            if rows.len() >= MAX_ENTRIES {
                rows.retain(|_, (_, at)| at.elapsed() < MAX_AGE);
                if rows.len() >= MAX_ENTRIES {
                    rows.clear();
                }
            }
            rows.insert(id.to_owned(), (env.clone(), Instant::now()));
        }
        Ok(Some(env))
    }
}
