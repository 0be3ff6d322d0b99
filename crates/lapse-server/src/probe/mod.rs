//! The prober: runs each running environment's health probe (`spec.health`) and records its
//! readiness.
//!
//! Contract:
//! - **Who is probed.** Every [`TICK`] it reads the running environments whose row carries a
//!   health (the reconciler sets `starting` when a probed environment starts running, and
//!   clears it when it stops), and starts the probe of each one whose `interval` has passed.
//!   At most `probe_concurrency` probes run at once; each is bounded by its `timeout`
//!   ([`check::attempt`]), against the environment's recorded endpoints only.
//! - **What is recorded.** Outcomes are counted in memory ([`lapse_core::probe::Streak`]);
//!   the row is written **only when the health changes** (`starting` → `healthy` after
//!   `healthy_after` passes in a row, → `unhealthy` after `unhealthy_after` failures in a
//!   row), with `ready_at` and an event (`actor` `probe`, `action` `health`, the outcome the new
//!   health, the message the last attempt's result). Each write re-checks, in its
//!   transaction, that the row still runs with the health the prober counted from; when the
//!   row's health differs from memory (the reconciler restarted it), memory starts over from
//!   the row.
//! - **Readiness gates claims.** A pool member whose spec has a probe is claimable only while
//!   `healthy` (the store's claim query), and SWIM's `available` is true only then.
//! - **Unhealthy services are restarted.** A `service` or `daemon` that was healthy and turns
//!   unhealthy gets `restart_requested` in the same write; the reconciler stops and starts it
//!   (`Plan::Restart`) and counts it in `restarts`. One that never became healthy is not
//!   restarted (a slow start is not a failure); it stays not ready.

pub mod check;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapse_core::Millis;
use lapse_core::model::{DesiredState, Environment, Health, ObservedState};
use lapse_core::probe::{Probe, Streak};
use lapse_store::{NewEvent, StoreError};
use tokio::sync::{Semaphore, mpsc};

use crate::context::Context;
use crate::reconciler::Reconciler;

/// How often the prober looks for probes that are due.
pub const TICK: Duration = Duration::from_millis(250);

/// One environment the prober watches.
struct Watched {
    probe: Probe,
    streak: Streak,
    next_at: Millis,
    in_flight: bool,
}

/// A finished attempt.
struct Outcome {
    id: String,
    result: Result<(), String>,
}

/// Why recording a change of health did not happen.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error("the environment moved on")]
    Stale,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Probes for ever (see the module doc).
pub async fn run(cx: Arc<Context>, reconciler: Reconciler) {
    let (done, mut outcomes) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(cx.config.probe_concurrency.max(1)));
    let mut watched: HashMap<String, Watched> = HashMap::new();
    loop {
        crate::health::tick("probes");
        if let Err(e) = start_due(&cx, &mut watched, &slots, &done).await {
            tracing::warn!(error = %e, "reading the probed environments failed; retrying");
        }
        let tick = tokio::time::sleep(TICK);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                Some(outcome) = outcomes.recv() => record(&cx, &reconciler, &mut watched, outcome).await,
            }
        }
    }
}

/// Syncs `watched` with the store and starts every probe that is due.
async fn start_due(
    cx: &Arc<Context>,
    watched: &mut HashMap<String, Watched>,
    slots: &Arc<Semaphore>,
    done: &mpsc::UnboundedSender<Outcome>,
) -> Result<(), StoreError> {
    // With replicas, each probes what it owns (see `crate::lead`).
    let envs: Vec<_> = cx.store.probed().await?.into_iter().filter(|e| cx.owns(e)).collect();
    let now = cx.clock.now();
    let live: std::collections::HashSet<&str> = envs.iter().map(|e| e.id.as_str()).collect();
    watched.retain(|id, w| w.in_flight || live.contains(id.as_str()));
    for env in envs {
        let Some(probe) = env.spec.health.as_ref().and_then(|h| h.resolve(&env.spec).ok()) else { continue };
        let recorded = env.health.unwrap_or(Health::Starting);
        let w = watched.entry(env.id.clone()).or_insert_with(|| Watched {
            probe: probe.clone(),
            streak: Streak::new(recorded),
            next_at: now,
            in_flight: false,
        });
        if w.in_flight {
            continue;
        }
        // The row changed under us (restarted, replaced): count afresh from what it says.
        if w.streak.health != recorded || w.probe != probe {
            *w = Watched { probe, streak: Streak::new(recorded), next_at: now, in_flight: false };
        }
        if w.next_at > now {
            continue;
        }
        w.in_flight = true;
        w.next_at = now.saturating_add(i64::try_from(w.probe.interval.as_millis()).unwrap_or(i64::MAX));
        let (cx, slots, done, probe) = (cx.clone(), slots.clone(), done.clone(), w.probe.clone());
        tokio::spawn(async move {
            // The semaphore is never closed.
            let _slot = slots.acquire().await.expect("probe semaphore open");
            let provider = cx.providers.get(&env.spec.provider).cloned();
            let result = check::attempt(provider.as_deref(), &env, &probe).await;
            let _ = done.send(Outcome { id: env.id, result });
        });
    }
    Ok(())
}

/// Counts one outcome and writes the row if the health changed.
async fn record(cx: &Context, reconciler: &Reconciler, watched: &mut HashMap<String, Watched>, outcome: Outcome) {
    let Some(w) = watched.get_mut(&outcome.id) else { return };
    w.in_flight = false;
    let was = w.streak.health;
    let Some(now_health) = w.streak.observe(outcome.result.is_ok(), &w.probe) else { return };
    let detail = match &outcome.result {
        Ok(()) => "probe passed".to_owned(),
        Err(why) => why.chars().take(512).collect(),
    };
    match write_health(cx, &outcome.id, was, now_health, &detail).await {
        Ok(restart) => {
            tracing::info!(environment = %outcome.id, from = %was, to = %now_health, restart, "health changed");
            if restart {
                reconciler.enqueue(&outcome.id);
            }
        }
        Err(e) => {
            // Counted again from the row at the next round.
            w.streak = Streak::new(was);
            if let RecordError::Store(e) = e {
                tracing::warn!(environment = %outcome.id, error = %e, "recording a change of health failed");
            }
        }
    }
}

/// Writes `to` over `from` (re-checked in the transaction); returns whether a restart was
/// asked for.
async fn write_health(cx: &Context, id: &str, from: Health, to: Health, detail: &str) -> Result<bool, RecordError> {
    let now = cx.clock.now();
    let mut restart = false;
    cx.store
        .update(id, |e: &mut Environment| {
            if e.observed != ObservedState::Running || e.health.unwrap_or(Health::Starting) != from {
                return Err(RecordError::Stale);
            }
            e.health = Some(to);
            e.ready_at = (to == Health::Healthy).then_some(now);
            restart = to == Health::Unhealthy
                && from == Health::Healthy
                && e.lifecycle.restarts()
                && e.desired == DesiredState::Running;
            let mut message = format!("{from} -> {to}: {detail}");
            if restart {
                e.restart_requested = true;
                message.push_str("; restarting the service");
            }
            Ok(vec![NewEvent::new(&e.id, "probe", "health", to.as_str(), message)])
        })
        .await?
        .ok_or(RecordError::Stale)?;
    Ok(restart)
}
