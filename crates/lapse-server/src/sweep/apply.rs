//! The sweep's second half: carries out a [`Plan`], one action at a time.
//!
//! Every action is re-checked against the world first, since time passed since it was
//! planned: an orphan is removed (or adopted) only if its row is still missing, failed or
//! deleted and the reconciler is not working on it; a record is corrected only if its row is
//! still as it was planned on ([`Basis`]) — otherwise the action is dropped (`done: false`).
//! [`Action::Keep`] and [`Action::Transitional`] do nothing. The orphans that pass their
//! re-check are removed together, by one [`Provider::remove_orphans`] call (a cloud removes a
//! thousand in a few API calls).

use lapse_core::model::ObservedState;
use lapse_core::state::backoff_millis;
use lapse_providers::Provider;
use lapse_store::NewEvent;

use super::plan::{Action, Basis, Drift, Plan, Planned};
use super::{SweepError, adopt, correct};
use crate::context::Context;
use crate::metrics::ProviderLabels;
use crate::reconciler::Reconciler;

/// What became of one planned action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Dropped: the row moved on, or the reconciler took the environment, since the plan.
    Dropped,
    /// Left alone on purpose (kept, transitional).
    LeftAlone,
    /// The provider or the store failed; the next sweep tries again.
    Failed(String),
}

/// Applies `plan` to `provider`; one outcome per action, in the plan's order. A failure of one
/// action does not stop the others.
pub async fn apply(cx: &Context, reconciler: &Reconciler, provider: &dyn Provider, plan: &Plan) -> Vec<Outcome> {
    // What outlived its environment's leader, and networks no container uses: a change, so
    // only in a real sweep.
    match provider.collect_garbage().await {
        Ok(0) => {}
        Ok(n) => {
            let labels = ProviderLabels { provider: provider.name().to_owned() };
            cx.metrics.sweep_garbage_collected.get_or_create(&labels).inc_by(n as u64);
        }
        Err(e) => {
            tracing::warn!(provider = provider.name(), error = %e, "collecting leftovers failed; the next sweep retries")
        }
    }
    // Exits settle before they are looked at again and recorded ([`EXIT_SETTLE`]).
    if plan.actions.iter().any(|p| matches!(p.action, Action::Correct { drift: Drift::Exited(_), .. })) {
        tokio::time::sleep(EXIT_SETTLE).await;
    }
    let mut outcomes = Vec::with_capacity(plan.actions.len());
    // Orphans still orphaned are removed together, in one call (a cloud does it in a few).
    let mut removals: Vec<(usize, &Planned)> = Vec::new();
    for (at, planned) in plan.actions.iter().enumerate() {
        let outcome = match &planned.action {
            Action::RemoveOrphan { .. } => match removable(cx, reconciler, &planned.environment_id).await {
                Ok(true) => {
                    removals.push((at, planned));
                    Outcome::Dropped // replaced below by the removal's outcome
                }
                Ok(false) => Outcome::Dropped,
                Err(e) => failed(provider, planned, e),
            },
            _ => match apply_one(cx, reconciler, provider, planned).await {
                Ok(outcome) => outcome,
                Err(SweepError::MovedOn) => Outcome::Dropped,
                Err(e) => failed(provider, planned, e),
            },
        };
        outcomes.push(outcome);
    }
    if !removals.is_empty() {
        let ids: Vec<String> = removals.iter().map(|(_, p)| p.environment_id.clone()).collect();
        let results = provider.remove_orphans(&ids, cx.config.stop_grace).await;
        for ((at, planned), result) in removals.into_iter().zip(results) {
            outcomes[at] = match result {
                Ok(()) => match removed(cx, provider.name(), planned).await {
                    Ok(()) => Outcome::Done,
                    Err(e) => failed(provider, planned, e),
                },
                Err(e) => failed(provider, planned, e.into()),
            };
        }
    }
    outcomes
}

fn failed(provider: &dyn Provider, planned: &Planned, e: SweepError) -> Outcome {
    tracing::warn!(environment = %planned.environment_id, provider = provider.name(), error = %e,
        "a sweep correction failed; the next sweep retries");
    Outcome::Failed(e.to_string())
}

/// Whether an orphan may still be removed: the reconciler is not on it and its row is still
/// missing, failed or deleted.
async fn removable(cx: &Context, reconciler: &Reconciler, id: &str) -> Result<bool, SweepError> {
    Ok(!reconciler.is_busy(id) && still_orphan(cx, id).await?)
}

/// Records a removed orphan: its event, the metric, a log line.
async fn removed(cx: &Context, name: &str, planned: &Planned) -> Result<(), SweepError> {
    let Action::RemoveOrphan { why } = &planned.action else { return Ok(()) };
    let id = planned.environment_id.as_str();
    let provider_ref = planned.provider_ref.as_deref().unwrap_or("?");
    cx.store
        .append_event(NewEvent::new(
            id,
            "sweep",
            "remove_orphan",
            "ok",
            format!("removed {name} resource {provider_ref}: {}", why.text()),
        ))
        .await?;
    let labels = ProviderLabels { provider: name.to_owned() };
    cx.metrics.sweep_orphans_removed.get_or_create(&labels).inc();
    tracing::warn!(environment = %id, provider = name, why = why.text(), "removed an orphaned resource");
    Ok(())
}

/// Applies one planned action (also the exit watcher's path, through [`super::check_one`]).
pub async fn apply_one(
    cx: &Context,
    reconciler: &Reconciler,
    provider: &dyn Provider,
    planned: &Planned,
) -> Result<Outcome, SweepError> {
    let id = planned.environment_id.as_str();
    let name = provider.name();
    let labels = ProviderLabels { provider: name.to_owned() };
    match &planned.action {
        Action::Keep | Action::Transitional { .. } => Ok(Outcome::LeftAlone),
        Action::RemoveOrphan { .. } => {
            if !removable(cx, reconciler, id).await? {
                return Ok(Outcome::Dropped);
            }
            provider.delete(id, cx.config.stop_grace).await?;
            removed(cx, name, planned).await?;
            Ok(Outcome::Done)
        }
        Action::AdoptOrphan { instance } => {
            if reconciler.is_busy(id) || cx.store.get(id).await?.is_some() {
                return Ok(Outcome::Dropped);
            }
            adopt(cx, name, instance).await?;
            cx.metrics.sweep_orphans_adopted.get_or_create(&labels).inc();
            reconciler.enqueue(id);
            Ok(Outcome::Done)
        }
        Action::Correct { drift, seen, exit_reason } => {
            let Some(drift) = confirmed(provider, id, *drift).await? else { return Ok(Outcome::Dropped) };
            correct_record(cx, reconciler, id, drift, *seen, exit_reason.as_deref()).await?;
            cx.metrics.sweep_drift_corrected.get_or_create(&labels).inc();
            reconciler.enqueue(id);
            Ok(Outcome::Done)
        }
    }
}

/// How long an exit seen by a sweep settles before it is recorded: a container being removed
/// behind our back is seen exited for a moment first (Podman kills it, then removes it), and
/// recording that moment as an exit would stop a lease that should be provisioned again.
pub(crate) const EXIT_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The drift as it is now: an exit is looked at again (after [`apply`] let it settle) and is
/// a vanishing if the resource has gone meanwhile, nothing unless it is still stopped.
async fn confirmed(provider: &dyn Provider, id: &str, drift: Drift) -> Result<Option<Drift>, SweepError> {
    let Drift::Exited(_) = drift else { return Ok(Some(drift)) };
    Ok(match provider.inspect(id).await? {
        None => Some(Drift::Vanished { desired: lapse_core::model::DesiredState::Running }),
        // Still stopped: the exit stands. Running again, or on its way (an engine restarting
        // it): nothing to record now; the next sweep looks again.
        Some(i) if i.status == lapse_providers::InstanceStatus::Stopped => Some(drift),
        Some(_) => None,
    })
}

/// Whether `id` has no record, or a failed or deleted one not marked kept.
async fn still_orphan(cx: &Context, id: &str) -> Result<bool, SweepError> {
    Ok(match cx.store.get(id).await? {
        None => true,
        Some(e) => {
            matches!(e.observed, ObservedState::Failed | ObservedState::Deleted) && !super::plan::record_kept(&e)
        }
    })
}

async fn correct_record(
    cx: &Context,
    reconciler: &Reconciler,
    id: &str,
    drift: Drift,
    seen: Basis,
    why: Option<&str>,
) -> Result<(), SweepError> {
    let (now, retry) = (cx.clock.now(), &cx.config.retry);
    let corrected = cx
        .store
        .update(id, |e| {
            if e.observed != seen.observed
                || e.updated_at != seen.updated_at
                || reconciler.is_busy(id)
                || super::plan::record_kept(e)
            {
                return Err(SweepError::MovedOn);
            }
            let backoff = backoff_millis(e.restarts + 1, retry.base.as_millis() as i64, retry.cap.as_millis() as i64);
            Ok(correct(e, drift, why, now, backoff))
        })
        .await?;
    match corrected {
        Some(_) => Ok(()),
        None => Err(SweepError::MovedOn),
    }
}
