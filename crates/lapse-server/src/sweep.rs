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

use lapse_core::Millis;
use lapse_core::model::{DesiredState, Environment, Lifecycle, NO_TENANT, ObservedState, Spec};
use lapse_core::state::backoff_millis;
use lapse_providers::{Instance, InstanceStatus, Provider};
use lapse_store::{NewEvent, StoreError};

use crate::admission::{self, HostGuard, Principal};
use crate::app::AppError;
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
        crate::health::tick("sweep");
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
    // What outlived its environment's leader, and networks no container uses.
    if let Err(e) = provider.collect_garbage().await {
        tracing::warn!(provider = name, error = %e, "collecting leftovers failed; the next sweep retries");
    }
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
        let seen = instances.get(id).map(|i| i.status);
        if seen.is_some_and(InstanceStatus::is_transitional) {
            continue;
        }
        let agrees = matches!(
            (record.observed, seen),
            (ObservedState::Running, Some(InstanceStatus::Running)) | (ObservedState::Stopped, Some(_))
        );
        if agrees && record.observed == ObservedState::Running && reconciler.backstop_unknown(id) {
            // After a restart: its step arms the VM's own backstop again (`crate::rearm`).
            reconciler.enqueue(id);
        }
        if !stable || agrees {
            continue;
        }
        match check_one(cx, reconciler, provider, id).await? {
            Some(Drift::Vanished) => report.vanished += 1,
            Some(Drift::Exited(_)) => report.exited += 1,
            None => {}
        }
    }
    Ok(report)
}

/// Compares one environment's record with its resource and corrects the record. Used by the
/// sweep and when a provider reports an exit. Environments the reconciler is working on, and
/// records that change meanwhile, are left alone.
pub async fn check_one(
    cx: &Context,
    reconciler: &Reconciler,
    provider: &dyn Provider,
    id: &str,
) -> Result<Option<Drift>, SweepError> {
    if reconciler.is_busy(id) {
        return Ok(None);
    }
    let Some(record) = cx.store.get(id).await? else { return Ok(None) };
    if record.spec.provider != provider.name()
        || !matches!(record.observed, ObservedState::Running | ObservedState::Stopped)
    {
        return Ok(None);
    }
    let instance = provider.inspect(id).await?;
    let why = instance.as_ref().and_then(|i| i.exit_reason.clone());
    let drift = match (record.observed, instance.as_ref().map(|i| i.status)) {
        (_, None) => Drift::Vanished,
        (ObservedState::Running, Some(InstanceStatus::Stopped)) => Drift::Exited(instance.and_then(|i| i.exit_code)),
        _ => return Ok(None),
    };
    let (now, retry) = (cx.clock.now(), &cx.config.retry);
    let corrected = cx
        .store
        .update(id, |e| {
            if e.observed != record.observed || e.updated_at != record.updated_at || reconciler.is_busy(id) {
                return Err(SweepError::MovedOn);
            }
            let backoff = backoff_millis(e.restarts + 1, retry.base.as_millis() as i64, retry.cap.as_millis() as i64);
            Ok(correct(e, drift, why.as_deref(), now, backoff))
        })
        .await;
    match corrected {
        Ok(Some(_)) => {}
        Ok(None) | Err(SweepError::MovedOn) => return Ok(None),
        Err(e) => return Err(e),
    }
    cx.metrics.sweep_drift_corrected.get_or_create(&ProviderLabels { provider: provider.name().to_owned() }).inc();
    reconciler.enqueue(id);
    Ok(Some(drift))
}

/// How a resource differs from its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drift {
    Vanished,
    /// It stopped on its own, with this exit code if the provider knows it.
    Exited(Option<i64>),
}

/// The corrected record, by lifecycle: services and daemons restart after `backoff` ms; a
/// job records its exit and is retried after a failure while it has retries; a lease is
/// recorded stopped.
fn correct(e: &mut Environment, drift: Drift, why: Option<&str>, now: Millis, backoff: Millis) -> Vec<NewEvent> {
    let code = match drift {
        Drift::Vanished if e.desired == DesiredState::Running => {
            e.reason = Some("the resource vanished outside Lapse; provisioning it again".into());
            return vec![transition(e, ObservedState::Provisioning, "sweep", "resource vanished; provisioning again")];
        }
        Drift::Vanished => {
            e.reason = Some("the resource vanished outside Lapse while stopped".into());
            return vec![transition(e, ObservedState::Failed, "sweep", "resource vanished while stopped")];
        }
        Drift::Exited(code) => code,
    };
    e.exit_code = code;
    e.finished_at = Some(now);
    e.endpoints.clear();
    let code_text = code.map_or("unknown".to_owned(), |c| c.to_string());
    // The provider's word on why, e.g. "killed by the OOM killer (memory limit 32 MiB)".
    let code_text = match why {
        Some(why) => format!("{code_text}: {why}"),
        None => code_text,
    };
    let failed = code != Some(0);
    let restart = e.lifecycle.restarts() || (e.lifecycle == Lifecycle::Job && failed && e.restarts < e.max_retries);
    if restart && e.desired == DesiredState::Running {
        e.restarts += 1;
        e.next_attempt_at = Some(now + backoff);
        let message = format!("exited (code {code_text}); restart {} in {backoff} ms", e.restarts);
        e.reason = Some(message.clone());
        return vec![transition(e, ObservedState::Stopped, "sweep", &message)];
    }
    e.desired = DesiredState::Stopped;
    e.restart_on_extend = false;
    let message = match e.lifecycle {
        Lifecycle::Job if !failed => "job finished (exit code 0)".to_owned(),
        Lifecycle::Job => format!("job failed (exit code {code_text}) after {} retries", e.restarts),
        _ => format!("exited on its own (code {code_text}); `start` runs it again"),
    };
    e.reason = Some(message.clone());
    vec![transition(e, ObservedState::Stopped, "sweep", &message)]
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
    // Recorded as the operator's (tenantless), through the same admission as any create.
    let operator = Principal::operator(NO_TENANT, "sweep");
    admission::admit(cx, &mut env, &operator, HostGuard::Existing).await.map_err(|e| match e {
        AppError::Store(s) => s,
        other => StoreError::Refused(format!("adoption refused: {other}")),
    })?;
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
