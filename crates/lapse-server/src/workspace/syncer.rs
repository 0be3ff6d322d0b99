//! The syncer's loop, its shared state, and the final push (see the module doc of
//! [`crate::workspace`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapse_core::Millis;
use lapse_core::model::Environment;
use lapse_core::workspace::Workspace;
use lapse_providers::s3::S3Client;
use lapse_providers::{Provider, ProviderError};
use lapse_store::{NewEvent, Store, SyncOutcome};
use tokio::sync::Semaphore;

use super::sync;
use crate::context::Context;

/// How often the syncer looks for due work.
const TICK: Duration = Duration::from_secs(1);
/// Longest one pull or push may take, all its S3 calls and the archive stream included (a
/// stalled engine stream cannot hold an environment's lock, nor a stop, for ever).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// `f` within [`SYNC_TIMEOUT`].
async fn bounded<T>(f: impl std::future::Future<Output = Result<T, sync::SyncError>>) -> Result<T, sync::SyncError> {
    match tokio::time::timeout(SYNC_TIMEOUT, f).await {
        Ok(done) => done,
        Err(_) => Err(sync::SyncError::TimedOut(SYNC_TIMEOUT)),
    }
}

/// Locks, clients and back-offs shared by the syncer and the reconciler.
#[derive(Debug, Default)]
pub struct Workspaces {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    clients: tokio::sync::Mutex<HashMap<(String, Option<String>), S3Client>>,
    /// Failed pulls and pushes: (failures in a row, next try at).
    backoff: Mutex<HashMap<String, (u32, Millis)>>,
}

impl Workspaces {
    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.backoff.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    async fn client(&self, ws: &Workspace) -> S3Client {
        let key = (ws.region().to_owned(), ws.endpoint.clone());
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        let c = S3Client::from_env(ws.region(), ws.endpoint.as_deref()).await;
        clients.insert(key, c.clone());
        c
    }

    fn due(&self, id: &str, now: Millis) -> bool {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner()).get(id).is_none_or(|(_, at)| *at <= now)
    }

    fn failed(&self, id: &str, now: Millis, cap: Duration) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let entry = b.entry(id.to_owned()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let wait = (1_000i64 << entry.0.min(16)).min(cap.as_millis() as i64);
        entry.1 = now + wait;
    }

    fn succeeded(&self, id: &str) {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// Syncs for ever (see the module doc).
pub async fn run(cx: Arc<Context>) {
    let slots = Arc::new(Semaphore::new(cx.config.workspace.concurrency.max(1)));
    loop {
        crate::health::tick("workspaces");
        if let Err(e) = start_due(&cx, &slots).await {
            tracing::warn!(error = %e, "reading the workspaced environments failed; retrying");
        }
        tokio::time::sleep(TICK).await;
    }
}

async fn start_due(cx: &Arc<Context>, slots: &Arc<Semaphore>) -> Result<(), lapse_store::StoreError> {
    let now = cx.clock.now();
    for env in cx.store.workspaced().await? {
        let Some(ws) = env.spec.workspace.clone() else { continue };
        // A member still in its claim hook is pulled once the hook is done.
        if env.labels.contains_key(crate::claim_hook::PENDING_LABEL) || !cx.workspaces.due(&env.id, now) {
            continue;
        }
        let lock = cx.workspaces.lock_of(&env.id);
        let Ok(guard) = lock.clone().try_lock_owned() else { continue };
        let status = cx.store.workspace_status(&env.id).await?;
        let interval = ws.interval().unwrap_or(lapse_core::workspace::DEFAULT_SYNC_INTERVAL);
        let last = status.last_push_at.max(status.last_pull_at).unwrap_or(0);
        let pull = status.pull_token.is_none();
        if !pull && now < last + interval.as_millis() as i64 {
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else { return Ok(()) };
        let cx = cx.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let _slot = slot;
            sync_one(&cx, &env, &ws, pull, status.pull_token.as_deref(), interval).await;
        });
    }
    Ok(())
}

/// One pull or periodic push of a running environment, under its lock.
async fn sync_one(cx: &Context, env: &Environment, ws: &Workspace, pull: bool, token: Option<&str>, cap: Duration) {
    // Re-read under the lock: a stop or delete may have begun (its final push waits for us).
    match cx.store.get(&env.id).await {
        Ok(Some(e)) if e.observed == lapse_core::model::ObservedState::Running && e.spec.workspace.is_some() => {}
        _ => return,
    }
    let Some(provider) = cx.providers.get(&env.spec.provider).cloned() else { return };
    let client = cx.workspaces.client(ws).await;
    let limits = cx.config.workspace.limits();
    let started = std::time::Instant::now();
    let outcome = if pull {
        bounded(sync::pull(provider.as_ref(), &env.id, &env.spec, ws, &client, limits))
            .await
            .map(|(stats, token)| (stats, Some(token)))
    } else {
        bounded(sync::push(provider.as_ref(), &env.id, &env.spec, ws, &client, limits, token)).await.map(|s| (s, None))
    };
    let now = cx.clock.now();
    let what = if pull { "pull" } else { "push" };
    match outcome {
        Ok((stats, new_token)) => {
            cx.workspaces.succeeded(&env.id);
            let recorded = match &new_token {
                Some(t) => cx.store.record_sync(&env.id, SyncOutcome::Pulled { token: t }, now).await,
                None => cx.store.record_sync(&env.id, SyncOutcome::Pushed { last: false }, now).await,
            };
            if let Err(e) = recorded {
                tracing::warn!(environment = %env.id, error = %e, "recording a workspace {what} failed");
            }
            // The directory is not the one pulled (its resource was made afresh): what it
            // held is uploaded; now pull the workspace into it again.
            if !pull && !stats.token_found {
                tracing::info!(environment = %env.id, "the workspace's directory lost its pull; pulling again");
                let _ = cx.store.forget_pull(&env.id).await;
            }
            if pull {
                let message = format!(
                    "pulled {} files, {} bytes in {} ms",
                    stats.files,
                    stats.bytes,
                    started.elapsed().as_millis()
                );
                let _ =
                    cx.store.append_event(NewEvent::new(&env.id, "workspace", "workspace_pull", "ok", message)).await;
            }
            tracing::debug!(environment = %env.id, files = stats.files, bytes = stats.bytes, deleted = stats.deleted, "workspace {what}");
        }
        Err(e) => {
            cx.workspaces.failed(&env.id, now, cap);
            let text = cut(&format!("{what}: {e}"));
            tracing::warn!(environment = %env.id, error = %text, "workspace sync failed");
            let _ = cx.store.record_sync_error(&env.id, &text, now).await;
        }
    }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(lapse_providers::MAX_RECORDED_ERROR) {
        Some((at, _)) => format!("{}… (cut)", &text[..at]),
        None => text.to_owned(),
    }
}

/// The push before a stop, replacement or delete removes the directory's resource (see the
/// module doc): `Ok` when it succeeded, was forced away, or there is nothing to push (no
/// workspace, never pulled); `Err` fails the reconciler's step (retried).
pub async fn final_push(cx: &Context, env: &Environment, provider: &dyn Provider) -> Result<(), ProviderError> {
    let Some(ws) = &env.spec.workspace else { return Ok(()) };
    let lock = cx.workspaces.lock_of(&env.id);
    let _guard = lock.lock().await;
    let store: &Store = &cx.store;
    let failed = |message: String| ProviderError::Failed { provider: "workspace", op: "final push", message };
    let status = store.workspace_status(&env.id).await.map_err(|e| failed(e.to_string()))?;
    if status.force {
        let _ = store.forget_pull(&env.id).await;
        cx.workspaces.forget(&env.id);
        return Ok(());
    }
    let Some(token) = status.pull_token.as_deref() else { return Ok(()) };
    let client = cx.workspaces.client(ws).await;
    let started = std::time::Instant::now();
    let limits = cx.config.workspace.limits();
    match bounded(sync::push(provider, &env.id, &env.spec, ws, &client, limits, Some(token))).await {
        // The resource is gone: there is no directory left to push.
        Err(sync::SyncError::Provider(ProviderError::NotFound { .. })) => {
            let _ = store.forget_pull(&env.id).await;
            cx.workspaces.forget(&env.id);
            Ok(())
        }
        Ok(stats) => {
            let now = cx.clock.now();
            store
                .record_sync(&env.id, SyncOutcome::Pushed { last: true }, now)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let message = format!(
                "final push: {} files, {} bytes, {} deleted in {} ms",
                stats.files,
                stats.bytes,
                stats.deleted,
                started.elapsed().as_millis()
            );
            let _ = store.append_event(NewEvent::new(&env.id, "workspace", "workspace_push", "ok", message)).await;
            cx.workspaces.forget(&env.id);
            Ok(())
        }
        Err(e) => {
            let text = cut(&format!("final push: {e}"));
            let _ = store.record_sync_error(&env.id, &text, cx.clock.now()).await;
            Err(failed(format!("{e}; the environment stays until it succeeds (or delete it with force=true)")))
        }
    }
}
