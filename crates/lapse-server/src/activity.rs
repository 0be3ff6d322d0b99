//! Activity: what keeps an environment with an `idle_timeout` from being stopped as idle.
//!
//! Contract:
//! - **[`Activity::touch`] is cheap and never awaits**: a lock of one of [`SHARDS`] maps of
//!   latest timestamps, no store, no allocation for an id already held. The routing proxy
//!   calls it per request and WebSocket frame; `exec` and `POST /v1/environments/{id}/activity`
//!   call it through the API. Callers pass only ids of environments they checked.
//! - **Activity reaches the store in batches.** [`run_flusher`] writes every id touched since
//!   its last round in one store transaction (`Store::record_activity`) every
//!   `activity_flush` (5 s by default): a thousand touches are one write, not a thousand.
//! - **A touch not yet flushed still counts.** The reconciler overlays [`Activity::overlay`]
//!   on the row it plans from and again inside the transaction that stops an idle
//!   environment, and the API's views show it. An entry leaves memory only once the store
//!   holds a time at least as late, so there is no moment where neither has it.
//! - Memory is bounded: past [`MAX_PENDING`] ids waiting for a flush, touches of further ids
//!   are dropped (and counted) until the next flush; ids already held still move.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use lapse_core::Millis;
use lapse_core::model::{Environment, ObservedState};
use lapse_core::validate::FieldError;
use lapse_core::wire::DurationInput;

use crate::app::{App, AppError};
use crate::auth::Caller;
use crate::clock::Clock;
use crate::context::Context;

/// Shards of the map of latest touches (so touches of different ids rarely share a lock).
pub const SHARDS: usize = 32;
/// Most ids held waiting for a flush.
pub const MAX_PENDING: usize = 1_000_000;

/// The handle: clone it freely, touch from anywhere.
#[derive(Clone, Debug)]
pub struct Activity {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: Clock,
    shards: Vec<Mutex<HashMap<String, Millis>>>,
    hasher: std::collections::hash_map::RandomState,
    held: AtomicUsize,
    dropped: AtomicU64,
}

impl Activity {
    pub fn new(clock: Clock) -> Activity {
        Activity {
            inner: Arc::new(Inner {
                clock,
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: Default::default(),
                held: AtomicUsize::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<String, Millis>> {
        &self.inner.shards[(self.inner.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// Records activity of environment `id` now.
    pub fn touch(&self, id: &str) {
        self.touch_at(id, self.inner.clock.now());
    }

    /// Records activity of `id` at `at` (a later time never moves back).
    pub fn touch_at(&self, id: &str, at: Millis) {
        let mut map = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get_mut(id) {
            *t = (*t).max(at);
            return;
        }
        if self.inner.held.load(Ordering::Relaxed) >= MAX_PENDING {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.held.fetch_add(1, Ordering::Relaxed);
        map.insert(id.to_owned(), at);
    }

    /// The latest activity of `id` not yet known to be in the store.
    pub fn latest(&self, id: &str) -> Option<Millis> {
        self.shard(id).lock().unwrap_or_else(|p| p.into_inner()).get(id).copied()
    }

    /// Moves `env.last_active_at` to the latest touch held in memory, if later.
    pub fn overlay(&self, env: &mut Environment) {
        if let Some(at) = self.latest(&env.id) {
            env.last_active_at = Some(env.last_active_at.map_or(at, |t| t.max(at)));
        }
    }

    /// Ids waiting for a flush.
    pub fn pending(&self) -> usize {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// Touches refused because [`MAX_PENDING`] ids were waiting.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Every held `(id, latest)`, copied (entries stay until [`Activity::flushed`]).
    fn snapshot(&self) -> Vec<(String, Millis)> {
        let mut out = Vec::new();
        for shard in &self.inner.shards {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(map.iter().map(|(id, at)| (id.clone(), *at)));
        }
        out
    }

    /// Forgets what the store now holds: each entry not touched again since `written`.
    fn flushed(&self, written: &[(String, Millis)]) {
        for (id, at) in written {
            let mut map = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
            if map.get(id).is_some_and(|t| t <= at) {
                map.remove(id);
                self.inner.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes every held touch to the store in one transaction; returns how many ids.
    pub async fn flush(&self, cx: &Context) -> Result<usize, lapse_store::StoreError> {
        let batch = self.snapshot();
        if batch.is_empty() {
            return Ok(0);
        }
        cx.store.record_activity(&batch).await?;
        self.flushed(&batch);
        Ok(batch.len())
    }
}

/// Flushes activity every `activity_flush`, for ever. A failed write keeps the touches in
/// memory for the next round (and they still count meanwhile).
pub async fn run_flusher(cx: Arc<Context>) {
    loop {
        crate::health::tick("activity");
        tokio::time::sleep(cx.config.activity_flush).await;
        match cx.activity.flush(&cx).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(environments = n, "activity written"),
            Err(e) => tracing::warn!(error = %e, "writing activity failed; kept for the next round"),
        }
    }
}

/// Shortest `idle_timeout` a create may ask for.
pub const MIN_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// An `idle_timeout` in ms: 1 s to `max_ttl` (the API's and config files' rule).
pub fn idle_millis(given: &DurationInput, max_ttl: std::time::Duration) -> Result<Millis, String> {
    let d = given.to_duration(max_ttl).map_err(|e| e.to_string())?;
    if d < MIN_IDLE_TIMEOUT {
        return Err("must be at least 1s".into());
    }
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A create's `idle_timeout` in ms, refused by its field name.
pub fn idle_timeout(cx: &Context, given: Option<&DurationInput>) -> Result<Option<Millis>, AppError> {
    given
        .map(|g| idle_millis(g, cx.config.max_ttl))
        .transpose()
        .map_err(|message| AppError::Invalid(FieldError { field: "idle_timeout".into(), message }))
}

impl App {
    /// `POST /v1/environments/{id}/activity`: counts as activity of a running environment of
    /// the caller's. Reads the row (404 if not the caller's, 409 if not running); writes
    /// nothing now (the flusher does, in a batch).
    pub async fn touch(&self, id: &str, caller: &Caller) -> Result<(), AppError> {
        let env = self.get(id, caller).await?;
        if env.observed != ObservedState::Running || env.desired == lapse_core::model::DesiredState::Deleted {
            return Err(AppError::Conflict(format!("environment {id} is {}, not running", env.observed)));
        }
        self.cx.activity.touch(&env.id);
        Ok(())
    }
}

/// The routing proxy's requests and WebSocket frames are activity.
impl crate::proxy::ActivitySink for Activity {
    fn touch(&self, environment_id: &str) {
        Activity::touch(self, environment_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn touches_keep_the_latest_and_leave_only_once_written() {
        let a = Activity::new(Clock::new());
        a.touch_at("x", 10);
        a.touch_at("x", 5);
        assert_eq!(a.latest("x"), Some(10));
        let snap = a.snapshot();
        // A touch between the snapshot and its write stays for the next flush.
        a.touch_at("x", 20);
        a.flushed(&snap);
        assert_eq!(a.latest("x"), Some(20));
        a.flushed(&a.snapshot());
        assert_eq!((a.latest("x"), a.pending()), (None, 0));
    }
}
