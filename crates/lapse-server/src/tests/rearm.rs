//! Issue 11 item 5: `extend` of a running environment moves its VM's own backstop
//! ([`crate::rearm`]): the reconciler calls `Provider::rearm` with the new deadline; a failed
//! rearm is an event and is retried, and the extend itself succeeds.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lapse_core::Millis;
use lapse_core::model::{Lifecycle, ObservedState, OnExpiry, Spec};
use lapse_core::validate::FieldError;
use lapse_core::wire::{CreateEnvironment, DurationInput, ExtendRequest};
use lapse_providers::sim::{SimConfig, SimProvider};
use lapse_providers::{Instance, Placement, Provider, ProviderError, ProviderSet};

use super::{Harness, eventually};
use crate::auth::Caller;

/// The sim provider, recording each `rearm` and failing the first `fail` of them.
struct Rearming {
    sim: SimProvider,
    rearms: Mutex<Vec<(String, Option<Millis>)>>,
    fail: AtomicUsize,
}

#[async_trait]
impl Provider for Rearming {
    fn name(&self) -> &'static str {
        self.sim.name()
    }
    fn validate(&self, spec: &Spec) -> Result<(), FieldError> {
        self.sim.validate(spec)
    }
    async fn health(&self) -> Result<String, ProviderError> {
        self.sim.health().await
    }
    async fn ensure_running(&self, id: &str, p: &Placement, spec: &Spec) -> Result<Instance, ProviderError> {
        self.sim.ensure_running(id, p, spec).await
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), ProviderError> {
        self.sim.stop(id, grace).await
    }
    async fn delete(&self, id: &str, grace: Duration) -> Result<(), ProviderError> {
        self.sim.delete(id, grace).await
    }
    async fn inspect(&self, id: &str) -> Result<Option<Instance>, ProviderError> {
        self.sim.inspect(id).await
    }
    async fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        self.sim.list().await
    }
    async fn rearm(&self, id: &str, placement: &Placement) -> Result<(), ProviderError> {
        self.rearms.lock().unwrap_or_else(|p| p.into_inner()).push((id.to_owned(), placement.expires_at));
        let failing = self.fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if failing {
            return Err(ProviderError::Failed { provider: "sim", op: "rearm", message: "guest unreachable".into() });
        }
        Ok(())
    }
}

async fn start(fail: usize) -> (Arc<Rearming>, Harness, String) {
    let p = Arc::new(Rearming {
        sim: SimProvider::new(SimConfig::default()),
        rearms: Mutex::new(Vec::new()),
        fail: AtomicUsize::new(fail),
    });
    let mut providers = ProviderSet::default();
    providers.insert(p.clone());
    let h = Harness::start(providers, |_| {}).await;
    let req = CreateEnvironment {
        name: None,
        owner: "o".into(),
        labels: Default::default(),
        spec: Spec { provider: "sim".into(), ..Default::default() },
        ttl: Some(DurationInput::Text("1h".into())),
        on_expiry: OnExpiry::Stop,
        lifecycle: Lifecycle::Lease,
        max_retries: None,
        params: None,
        idle_timeout: None,
        on_idle: Default::default(),
        warn_before: None,
    };
    let id = h.app.create(req, &Caller::Open).await.expect("creating a lease").env.id;
    h.settle().await;
    assert_eq!(h.env(&id).await.observed, ObservedState::Running);
    (p, h, id)
}

fn filter(id: &str) -> lapse_store::EventFilter {
    lapse_store::EventFilter { target: Some(id.to_owned()), limit: 100, ..Default::default() }
}

fn rearms(p: &Rearming) -> Vec<(String, Option<Millis>)> {
    p.rearms.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[tokio::test(start_paused = true)]
async fn extend_of_a_running_environment_moves_its_backstop_once() {
    let (p, h, id) = start(0).await;
    assert!(rearms(&p).is_empty(), "a fresh VM booted with its deadline: nothing to move");
    let by = ExtendRequest { by: Some(DurationInput::Text("2h".into())), until: None };
    let extended = h.app.extend(&id, by, &Caller::Open).await.expect("extending");
    h.settle().await;
    assert_eq!(rearms(&p), [(id.clone(), extended.expires_at)]);
    // Nothing moved since: no more calls.
    h.app.reconciler.enqueue(&id);
    h.settle().await;
    assert_eq!(rearms(&p).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_rearm_is_an_event_and_is_retried_and_never_fails_the_extend() {
    let (p, h, id) = start(2).await;
    let by = ExtendRequest { by: Some(DurationInput::Text("2h".into())), until: None };
    let extended = h.app.extend(&id, by, &Caller::Open).await.expect("the extend succeeds whatever the guest does");
    h.settle().await;
    assert_eq!(rearms(&p).len(), 1);
    let events = h.cx().store.events(&filter(&id)).await.expect("events");
    assert!(
        events.iter().any(|e| e.action == "rearm" && e.outcome == "error" && e.message.contains("guest unreachable")),
        "{events:?}"
    );
    // The retries come from timers with back-off: move the clock until one succeeds.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(30)).await;
        h.settle().await;
        if rearms(&p).len() >= 3 {
            break;
        }
    }
    let calls = rearms(&p);
    assert_eq!(calls.len(), 3, "two failures, then success: {calls:?}");
    assert!(calls.iter().all(|(_, at)| *at == extended.expires_at));
    eventually("the success to be recorded", || {
        let store = h.cx().store.clone();
        let id = id.clone();
        async move {
            let events = store.events(&filter(&id)).await.ok()?;
            events.iter().any(|e| e.action == "rearm" && e.outcome == "ok").then_some(())
        }
    })
    .await;
    assert_eq!(h.env(&id).await.observed, ObservedState::Running);
}
