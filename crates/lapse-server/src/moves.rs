//! Endpoints that move on their own: a container the engine restarts (a Swarm task under its
//! restart policy) is a new container with whatever address is free then, perhaps the one
//! another environment had a moment ago. The routing proxy connects only to recorded
//! endpoints, so a stale record would send one environment's traffic to another.
//!
//! Contract: for each provider with an event source ([`Provider::watch_moves`]), a task
//! follows it. For every environment it names that the store records `running` (and the
//! reconciler is not working on), the record's endpoints change in one store transaction
//! with an `endpoints` event naming the old and new addresses: a container that **died**
//! records none at once (without asking the provider, whose view lags the engine's: the
//! address is free for the next container the engine starts), so the proxy forwards nothing
//! until it is back; a container that **started** is inspected and records what the
//! provider reports (asked again a few times while it reports no address yet).
//!
//! What is left: a request the proxy forwards in the milliseconds between a container's
//! death and this task recording it still goes to the dead address; the engine gives that
//! address to another container only when it starts one, seconds later at the soonest.
//! After the event source breaks, the task reconnects with a doubling pause (1 s to 30 s)
//! and looks at every running environment of that provider once, since events were missed.
//! A provider without an event source is not watched.

use std::sync::Arc;
use std::time::Duration;

use lapse_core::model::{Endpoint, ObservedState};
use lapse_providers::{InstanceStatus, Move, Provider};
use lapse_store::{NewEvent, StoreError};

use crate::context::Context;
use crate::reconciler::Reconciler;

/// The most moves waiting to be looked at, per provider (the engine's stream waits beyond).
const QUEUE: usize = 1024;
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
/// A started container the provider shows no address for yet is asked again this often.
const ADDRESS_TRIES: u32 = 5;
const ADDRESS_PAUSE: Duration = Duration::from_millis(300);

/// Follows every provider's moves, for ever.
pub async fn run(cx: Arc<Context>, reconciler: Reconciler) {
    let mut watches = tokio::task::JoinSet::new();
    for provider in cx.providers.iter() {
        watches.spawn(watch(cx.clone(), reconciler.clone(), provider.clone()));
    }
    while watches.join_next().await.is_some() {}
}

async fn watch(cx: Arc<Context>, reconciler: Reconciler, provider: Arc<dyn Provider>) {
    let mut pause = FIRST_PAUSE;
    let mut reconnected = false;
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::channel(QUEUE);
        let mut follow = std::pin::pin!(provider.watch_moves(tx));
        if reconnected {
            refresh_all(&cx, &reconciler, provider.as_ref()).await;
        }
        let ended = loop {
            tokio::select! {
                ended = &mut follow => break ended,
                Some(moved) = rx.recv() => {
                    pause = FIRST_PAUSE;
                    refresh_logged(&cx, &reconciler, provider.as_ref(), &moved).await;
                }
            }
        };
        // What was sent before the source ended is still looked at.
        while let Ok(moved) = rx.try_recv() {
            refresh_logged(&cx, &reconciler, provider.as_ref(), &moved).await;
        }
        match ended {
            // No event source (or nobody listens): nothing to watch.
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(provider = provider.name(), error = %e, pause_s = pause.as_secs(),
                    "the provider's event stream broke; reconnecting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
                reconnected = true;
            }
        }
    }
}

async fn refresh_all(cx: &Context, reconciler: &Reconciler, provider: &dyn Provider) {
    let records = match cx.store.sweep_view(provider.name()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(provider = provider.name(), error = %e, "could not list running environments to refresh");
            return;
        }
    };
    for (id, record) in records {
        if record.observed == ObservedState::Running {
            refresh_logged(cx, reconciler, provider, &Move { environment_id: id, gone: false }).await;
        }
    }
}

async fn refresh_logged(cx: &Context, reconciler: &Reconciler, provider: &dyn Provider, moved: &Move) {
    let id = moved.environment_id.as_str();
    let mut tries = 0;
    let refreshed = loop {
        tries += 1;
        match refresh(cx, reconciler, provider, moved).await {
            Ok(Some(now)) if now.is_empty() && !moved.gone && tries < ADDRESS_TRIES => {
                tokio::time::sleep(ADDRESS_PAUSE).await;
            }
            other => break other,
        }
    };
    match refreshed {
        Ok(Some(now)) => tracing::info!(environment = id, provider = provider.name(), endpoints = %describe(&now),
            "recorded the endpoints an environment moved to"),
        Ok(None) => {}
        Err(e) => tracing::warn!(environment = id, provider = provider.name(), error = %e,
            "could not refresh an environment's endpoints; the next move or reconnect tries again"),
    }
}

/// Why a refresh did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Provider(#[from] lapse_providers::ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The row moved on meanwhile (not running, or the reconciler took it): nothing to do.
    #[error("the environment moved on")]
    MovedOn,
}

/// Makes the recorded endpoints of `moved`'s environment none (it died) or what `provider`
/// reports now; the new ones when they changed (or are still none after a start), `None`
/// when they did not or the environment is not a running one of `provider`.
pub async fn refresh(
    cx: &Context,
    reconciler: &Reconciler,
    provider: &dyn Provider,
    moved: &Move,
) -> Result<Option<Vec<Endpoint>>, RefreshError> {
    let id = moved.environment_id.as_str();
    let mine = |e: &lapse_core::model::Environment| {
        e.observed == ObservedState::Running && e.spec.provider == provider.name() && !reconciler.is_busy(&e.id)
    };
    let Some(env) = cx.store.get(id).await?.filter(|e| mine(e)) else { return Ok(None) };
    let now = if moved.gone {
        Vec::new()
    } else {
        match provider.inspect(id).await? {
            Some(i) if i.status == InstanceStatus::Running => i.endpoints,
            _ => Vec::new(),
        }
    };
    if same(&now, &env.endpoints) {
        // Started, and no address yet: the caller asks again.
        return Ok((now.is_empty() && !moved.gone).then_some(now));
    }
    let updated = cx
        .store
        .update(id, |e| {
            if !mine(e) {
                return Err(RefreshError::MovedOn);
            }
            if same(&now, &e.endpoints) {
                return Ok(Vec::new());
            }
            let detail = format!("{} -> {}", describe(&e.endpoints), describe(&now));
            e.endpoints = now.clone();
            Ok(vec![NewEvent::new(id, "provider", "endpoints", "moved", detail)])
        })
        .await;
    match updated {
        Ok(_) => Ok(Some(now)),
        Err(RefreshError::MovedOn) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The same endpoints, in any order.
fn same(a: &[Endpoint], b: &[Endpoint]) -> bool {
    let key = |e: &Endpoint| (e.container_port, e.protocol.clone(), e.host.clone(), e.port);
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

fn describe(endpoints: &[Endpoint]) -> String {
    if endpoints.is_empty() {
        return "none".into();
    }
    endpoints.iter().map(|e| format!("{}->{}:{}", e.container_port, e.host, e.port)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(host: &str, port: u16) -> Endpoint {
        Endpoint { container_port: 8080, protocol: "tcp".into(), host: host.into(), port }
    }

    #[test]
    fn endpoints_compare_as_sets() {
        let (a, b) = (at("172.18.0.3", 8080), at("172.18.0.4", 8080));
        assert!(same(&[a.clone(), b.clone()], &[b.clone(), a.clone()]));
        assert!(!same(std::slice::from_ref(&a), std::slice::from_ref(&b)));
        assert!(!same(std::slice::from_ref(&a), &[]));
        assert_eq!(describe(&[a]), "8080->172.18.0.3:8080");
        assert_eq!(describe(&[]), "none");
    }
}
