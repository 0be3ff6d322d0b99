//! The drift sweep: compares what each provider holds under this control plane's label with
//! what the store says, every `sweep_interval`.
//!
//! - **Orphans** (a labelled resource with no record, or whose record is deleted or failed):
//!   removed, or adopted as a new record if so configured. Nothing runs untracked.
//! - **Vanished** (a record `running` or `stopped` whose resource is gone): desired `running`
//!   is provisioned again; desired `stopped` is marked `failed` (its disk is gone).
//! - **Exited** (a record `running` whose resource no longer runs): recorded as stopped, with
//!   the reason, so the user sees it and can `start` it.
//!
//! Environments with a step queued or running are skipped: the reconciler owns them. Each
//! correction re-reads the row in its transaction and is dropped if the row moved on.

use std::collections::BTreeMap;
use std::sync::Arc;

use lapse_core::model::{DesiredState, Environment, ObservedState, Spec};
use lapse_providers::{Instance, InstanceStatus, Provider};
use lapse_store::{NewEvent, StoreError};

use crate::config::OrphanPolicy;
use crate::context::Context;
use crate::metrics::ProviderLabels;
use crate::reconciler::{Reconciler, transition};

/// What one sweep of one provider did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub orphans_removed: usize,
    pub orphans_adopted: usize,
    pub vanished: usize,
    pub exited: usize,
}

/// Sweeps every provider every `sweep_interval`, for ever.
pub async fn run(cx: Arc<Context>, reconciler: Reconciler) {
    let mut tick = tokio::time::interval(cx.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep_all(&cx, &reconciler).await;
    }
}

pub async fn sweep_all(cx: &Arc<Context>, reconciler: &Reconciler) -> BTreeMap<&'static str, SweepReport> {
    let mut reports = BTreeMap::new();
    for provider in cx.providers.iter() {
        match sweep(cx, reconciler, provider.as_ref()).await {
            Ok(report) => {
                if report != SweepReport::default() {
                    tracing::info!(provider = provider.name(), ?report, "sweep corrected drift");
                }
                reports.insert(provider.name(), report);
            }
            Err(e) => {
                tracing::warn!(provider = provider.name(), error = %e, "sweep skipped this provider")
            }
        }
    }
    reports
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Provider(#[from] lapse_providers::ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The row changed since the sweep read it; the correction is dropped.
    #[error("the environment changed during the sweep")]
    MovedOn,
}

pub async fn sweep(cx: &Context, reconciler: &Reconciler, provider: &dyn Provider) -> Result<SweepReport, SweepError> {
    let name = provider.name();
    let labels = ProviderLabels { provider: name.to_owned() };
    // Read the provider first: a record written after this read is not mistaken for missing
    // below, because its row is re-read before anything is changed.
    let instances: BTreeMap<String, Instance> =
        provider.list().await?.into_iter().map(|i| (i.environment_id.clone(), i)).collect();
    let records = cx.store.sweep_view(name).await?;
    let mut report = SweepReport::default();

    for (id, instance) in &instances {
        if reconciler.is_busy(id) {
            continue;
        }
        let keep = match records.get(id) {
            Some(r) => r.observed != ObservedState::Failed,
            None => false,
        };
        if keep {
            continue;
        }
        // Re-read: the record may have been written after the view was taken.
        let current = cx.store.get(id).await?;
        match &current {
            Some(e) if !matches!(e.observed, ObservedState::Failed | ObservedState::Deleted) => {
                continue;
            }
            _ => {}
        }
        let unknown = current.is_none();
        if unknown && cx.config.orphans == OrphanPolicy::Adopt && lapse_core::model::is_environment_id(id) {
            adopt(cx, name, instance).await?;
            reconciler.enqueue(id);
            report.orphans_adopted += 1;
            continue;
        }
        provider.delete(id, cx.config.stop_grace).await?;
        let why = if unknown { "unknown to the store" } else { "its environment is failed or deleted" };
        cx.store
            .append_event(NewEvent::new(
                id,
                "sweep",
                "remove_orphan",
                "ok",
                format!("removed {name} resource {}: {why}", instance.provider_ref),
            ))
            .await?;
        cx.metrics.sweep_orphans_removed.get_or_create(&labels).inc();
        tracing::warn!(environment = %id, provider = name, why, "removed an orphaned resource");
        report.orphans_removed += 1;
    }

    for (id, record) in &records {
        let stable = matches!(record.observed, ObservedState::Running | ObservedState::Stopped);
        if !stable || reconciler.is_busy(id) {
            continue;
        }
        let seen = instances.get(id).map(|i| i.status);
        let drift = match (record.observed, seen) {
            (ObservedState::Running, Some(InstanceStatus::Running)) | (ObservedState::Stopped, Some(_)) => continue,
            (_, None) => Drift::Vanished,
            (ObservedState::Running, Some(InstanceStatus::Stopped)) => Drift::Exited,
            _ => continue,
        };
        // The list may lag a step that just finished: ask for this one resource.
        let now_seen = provider.inspect(id).await?.map(|i| i.status);
        if now_seen != seen {
            continue;
        }
        let corrected = cx
            .store
            .update(id, |e| {
                if e.observed != record.observed || e.updated_at != record.updated_at {
                    return Err(SweepError::MovedOn);
                }
                Ok(correct(e, drift))
            })
            .await;
        match corrected {
            Ok(Some(_)) => {}
            Ok(None) | Err(SweepError::MovedOn) => continue,
            Err(e) => return Err(e),
        }
        cx.metrics.sweep_drift_corrected.get_or_create(&labels).inc();
        reconciler.enqueue(id);
        match drift {
            Drift::Vanished => report.vanished += 1,
            Drift::Exited => report.exited += 1,
        }
    }
    Ok(report)
}

#[derive(Clone, Copy, Debug)]
enum Drift {
    Vanished,
    Exited,
}

fn correct(e: &mut Environment, drift: Drift) -> Vec<NewEvent> {
    match (drift, e.desired) {
        (Drift::Vanished, DesiredState::Running) => {
            e.reason = Some("the resource vanished outside Lapse; provisioning it again".into());
            vec![transition(e, ObservedState::Provisioning, "sweep", "resource vanished; provisioning again")]
        }
        (Drift::Vanished, _) => {
            e.reason = Some("the resource vanished outside Lapse while stopped".into());
            vec![transition(e, ObservedState::Failed, "sweep", "resource vanished while stopped")]
        }
        (Drift::Exited, _) => {
            e.desired = DesiredState::Stopped;
            e.restart_on_extend = false;
            e.endpoints.clear();
            e.reason = Some("exited on its own; `start` runs it again".into());
            vec![transition(e, ObservedState::Stopped, "sweep", "exited on its own")]
        }
    }
}

async fn adopt(cx: &Context, provider: &str, instance: &Instance) -> Result<(), StoreError> {
    let now = cx.clock.now();
    let running = instance.status == InstanceStatus::Running;
    let spec = Spec { provider: provider.to_owned(), ..Default::default() };
    let mut env = Environment::new(instance.environment_id.clone(), "adopted".into(), spec, now);
    env.labels = BTreeMap::from([("lapse.adopted".to_owned(), "true".to_owned())]);
    env.desired = if running { DesiredState::Running } else { DesiredState::Stopped };
    env.observed = if running { ObservedState::Running } else { ObservedState::Stopped };
    env.reason = Some("adopted by the drift sweep".into());
    env.provider_ref = Some(instance.provider_ref.clone());
    env.endpoints = instance.endpoints.clone();
    env.expires_at = Some(now + cx.config.default_ttl.as_millis() as i64);
    env.source = "sweep".into();
    cx.store
        .insert(
            &env,
            NewEvent::new(
                &env.id,
                "sweep",
                "adopt",
                "ok",
                format!("adopted {provider} resource {}", instance.provider_ref),
            ),
        )
        .await?;
    if let Some(at) = env.expires_at {
        cx.timers.schedule(at, &env.id);
    }
    Ok(())
}
