//! Issue 12 item 3: idle stop. With paused time: an environment with an `idle_timeout` is
//! stopped (or deleted) once that long passed without activity, and not while activity keeps
//! coming, even activity still only in memory; a start gives a fresh window; a claimed pool
//! member's window starts at the claim; activity reaches the store in batches.

use std::sync::Arc;
use std::time::Duration;

use lapse_core::model::{DesiredState, Lifecycle, ObservedState, OnExpiry, OnIdle};
use lapse_core::wire::{CreateEnvironment, DurationInput};
use lapse_providers::ProviderSet;

use super::probed::{self, Probed};
use super::{Harness, eventually};
use crate::auth::Caller;

async fn start() -> (Arc<Probed>, Harness) {
    let p = Arc::new(Probed::new());
    let mut providers = ProviderSet::default();
    providers.insert(p.clone());
    let h = Harness::start(providers, |_| {}).await;
    (p, h)
}

fn request(idle: &str, on_idle: OnIdle) -> CreateEnvironment {
    CreateEnvironment {
        name: None,
        owner: "o".into(),
        labels: Default::default(),
        spec: probed::spec_with_port(80, 1),
        ttl: Some(DurationInput::Text("1d".into())),
        on_expiry: OnExpiry::Stop,
        lifecycle: Lifecycle::Lease,
        max_retries: None,
        params: None,
        idle_timeout: Some(DurationInput::Text(idle.into())),
        on_idle,
        warn_before: None,
    }
}

async fn running(h: &Harness, req: CreateEnvironment) -> String {
    let id = h.app.create(req, &Caller::Open).await.expect("creating").env.id;
    h.settle().await;
    assert_eq!(h.env(&id).await.observed, ObservedState::Running);
    id
}

async fn advance(h: &Harness, by: Duration) {
    tokio::time::advance(by).await;
    h.settle().await;
}

/// Waits (in real time) until `id` is seen in `state`.
pub(super) async fn reaches(h: &Harness, id: &str, state: ObservedState) -> lapse_core::model::Environment {
    eventually(&format!("{id} to be {state}"), || async move { Some(h.env(id).await).filter(|e| e.observed == state) })
        .await
}

async fn idle_events(h: &Harness, id: &str) -> Vec<lapse_core::wire::Event> {
    let filter = lapse_store::EventFilter {
        target: Some(id.to_owned()),
        action: Some("idle".into()),
        limit: 100,
        ..Default::default()
    };
    h.cx().store.events(&filter).await.expect("reading events")
}

#[tokio::test(start_paused = true)]
async fn idle_stop_waits_while_activity_comes_and_fires_after_the_timeout() {
    let (p, h) = start().await;
    let id = running(&h, request("60s", OnIdle::Stop)).await;
    // Touched every 30 s for five minutes (never flushed: memory alone keeps it running).
    for _ in 0..10 {
        advance(&h, Duration::from_secs(30)).await;
        h.cx().activity.touch(&id);
        let e = h.env(&id).await;
        assert_eq!((e.desired, e.observed), (DesiredState::Running, ObservedState::Running));
    }
    assert_eq!(h.cx().store.activity_batches(), 0, "nothing was flushed: memory alone counted");
    // Quiet: not a second before the timeout...
    advance(&h, Duration::from_secs(59)).await;
    assert_eq!(h.env(&id).await.desired, DesiredState::Running);
    assert_eq!(p.count("stop", &id), 0);
    // ...and stopped at it, saying why.
    advance(&h, Duration::from_secs(1)).await;
    let e = reaches(&h, &id, ObservedState::Stopped).await;
    assert_eq!(e.desired, DesiredState::Stopped);
    assert_eq!(e.idled_at, Some(h.cx().clock.now()));
    assert_eq!(p.count("stop", &id), 1);
    let events = idle_events(&h, &id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].actor.as_str(), events[0].outcome.as_str()), ("idle", "stopped"));
    assert!(events[0].message.starts_with("idle: no activity for 1m"), "{}", events[0].message);

    // Started again: a fresh window, whatever the old activity said.
    h.app.start(&id, &Caller::Open).await.expect("starting");
    h.settle().await;
    let e = h.env(&id).await;
    assert_eq!((e.observed, e.idled_at), (ObservedState::Running, None));
    advance(&h, Duration::from_secs(59)).await;
    assert_eq!(h.env(&id).await.desired, DesiredState::Running);
    advance(&h, Duration::from_secs(1)).await;
    reaches(&h, &id, ObservedState::Stopped).await;
    assert_eq!(idle_events(&h, &id).await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn on_idle_delete_deletes_and_exec_counts_as_activity() {
    let (p, h) = start().await;
    let id = running(&h, request("10s", OnIdle::Delete)).await;
    for _ in 0..3 {
        advance(&h, Duration::from_secs(8)).await;
        let exec = lapse_core::wire::ExecRequest { cmd: vec!["true".into()], timeout: None };
        h.app.exec(&id, exec, &Caller::Open).await.expect("exec");
    }
    assert_eq!(h.env(&id).await.desired, DesiredState::Running);
    advance(&h, Duration::from_secs(10)).await;
    let e = reaches(&h, &id, ObservedState::Deleted).await;
    assert_eq!(e.desired, DesiredState::Deleted);
    assert_eq!(p.count("delete", &id), 1);
    assert_eq!(idle_events(&h, &id).await[0].outcome, "deleted");
}

#[tokio::test(start_paused = true)]
async fn the_activity_route_answers_404_for_no_such_id_and_409_when_not_running() {
    let (_p, h) = start().await;
    let id = running(&h, request("1h", OnIdle::Stop)).await;
    h.app.touch(&id, &Caller::Open).await.expect("a running environment takes activity");
    let missing = "0".repeat(32);
    assert!(matches!(h.app.touch(&missing, &Caller::Open).await, Err(crate::app::AppError::NotFound(_))));
    assert!(matches!(h.app.touch("../x", &Caller::Open).await, Err(crate::app::AppError::NotFound(_))));
    h.app.stop(&id, &Caller::Open).await.expect("stopping");
    h.settle().await;
    assert!(matches!(h.app.touch(&id, &Caller::Open).await, Err(crate::app::AppError::Conflict(_))));
    // Bad timeouts are refused by name.
    for bad in ["0s", "10ms", "999d", "soon"] {
        let err = h.app.create(request(bad, OnIdle::Stop), &Caller::Open).await.unwrap_err();
        assert!(matches!(&err, crate::app::AppError::Invalid(f) if f.field == "idle_timeout"), "{bad}: {err}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_thousand_touches_are_one_store_write() {
    let (_p, h) = start().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(running(&h, request("1h", OnIdle::Stop)).await);
    }
    let before: Vec<_> = futures::future::join_all(ids.iter().map(|id| h.env(id))).await;
    let events_before = h.cx().store.events(&lapse_store::EventFilter { limit: 10_000, ..Default::default() }).await;
    let flusher = tokio::spawn(crate::activity::run_flusher(h.app.cx.clone()));
    advance(&h, Duration::from_secs(1)).await;
    for n in 0..1_000 {
        h.cx().activity.touch(&ids[n % ids.len()]);
    }
    let touched_at = h.cx().clock.now();
    // Time moves a second at a time until the flusher (every 5 s by default) wrote them.
    for _ in 0..10 {
        if h.cx().activity.pending() == 0 {
            break;
        }
        advance(&h, Duration::from_secs(1)).await;
        for _ in 0..50 {
            if h.cx().activity.pending() == 0 {
                break;
            }
            super::real_sleep(Duration::from_millis(4)).await;
        }
    }
    assert_eq!(h.cx().activity.pending(), 0, "flushed within two flush intervals");
    flusher.abort();
    assert_eq!(h.cx().store.activity_batches(), 1, "1,000 touches of 10 environments: one transaction");
    for (id, was) in ids.iter().zip(&before) {
        let now = h.env(id).await;
        assert_eq!(now.last_active_at, Some(touched_at));
        assert_eq!(now.updated_at, was.updated_at, "activity is not a change of the environment");
    }
    let events_after = h.cx().store.events(&lapse_store::EventFilter { limit: 10_000, ..Default::default() }).await;
    assert_eq!(events_before.unwrap().len(), events_after.unwrap().len(), "no event per touch");
}

#[tokio::test(start_paused = true)]
async fn a_pool_member_is_never_idle_and_a_claimed_one_counts_from_its_claim() {
    let (p, h) = start().await;
    let spec = probed::spec_with_port(80, 1);
    let pool = lapse_core::wire::PutPool {
        spec,
        min: 1,
        max: None,
        version: None,
        lifecycle: Lifecycle::Lease,
        on_claim: None,
    };
    h.app.put_pool("warm", pool, "test").await.expect("putting the pool");
    crate::pools::round(h.cx(), &h.app.reconciler).await.expect("a pool round");
    h.settle().await;
    let member = h.cx().store.pool_members().await.expect("members")[0].id.clone();
    assert_eq!(h.env(&member).await.observed, ObservedState::Running);
    // Unclaimed for an hour: nothing happens to it.
    advance(&h, Duration::from_secs(3_600)).await;
    assert_eq!(h.env(&member).await.desired, DesiredState::Running);
    // Claimed with a 60 s idle timeout: the window starts at the claim, not at its making.
    let claimed = h.app.create(request("60s", OnIdle::Stop), &Caller::Open).await.expect("claiming");
    assert!(claimed.claimed && claimed.env.id == member);
    h.settle().await;
    advance(&h, Duration::from_secs(59)).await;
    assert_eq!(h.env(&member).await.desired, DesiredState::Running);
    advance(&h, Duration::from_secs(1)).await;
    reaches(&h, &member, ObservedState::Stopped).await;
    assert_eq!(p.count("stop", &member), 1);
}
