//! The drift sweep: compares what each provider holds under this control plane's label with
//! what the store says, each provider on its own interval (`sweep_interval_of(name)`), so a
//! slow cloud's `list` never delays another provider's sweep.
//!
//! - **Orphans** (a labelled resource with no record, or whose record is deleted or failed):
//!   removed, or adopted as a new record if so configured. Nothing runs untracked.
//! - **Vanished** (a record `running` or `stopped` whose resource is gone): desired `running`
//!   is provisioned again; desired `stopped` is marked `failed` (its disk is gone).
//! - **Exited** (a record `running` whose resource no longer runs): recorded as stopped, with
//!   the reason, so the user sees it and can `start` it.
//! - **Kept** (a resource marked `lapse:keep`, or a record labelled `lapse.keep`): never
//!   touched. **Transitional** (pending, stopping, shutting down): left alone until it settles.
//!
//! A sweep is two halves with one value between them: [`plan::plan`] reads (`list`, `inspect`,
//! the store) and returns a [`plan::Plan`]; [`apply::apply`] carries it out. A dry run
//! (`POST /v1/admin/sweep`, `lapse sweep --dry-run`) stops after the first half, so it shows
//! exactly what a real sweep would do and changes nothing. Sweeps of one provider never
//! overlap (the loop's and the admin route's take the same lock).
//!
//! Environments with a step queued or running are skipped: the reconciler owns them. Each
//! correction re-reads the row in its transaction and is dropped if the row moved on.

pub mod apply;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;

use lapse_core::Millis;
use lapse_core::model::{DesiredState, Environment, Lifecycle, NO_TENANT, ObservedState, Spec};
use lapse_core::wire::{ProviderSweep, SweepAction};
use lapse_providers::{Instance, InstanceStatus, Provider};
use lapse_store::{NewEvent, StoreError};

pub use self::apply::Outcome;
pub use self::plan::{Action, Drift, Plan, Planned};
use crate::admission::{self, HostGuard, Principal};
use crate::app::AppError;
use crate::context::Context;
use crate::reconciler::{Reconciler, transition};

/// What one sweep of one provider did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub orphans_removed: usize,
    pub orphans_adopted: usize,
    pub vanished: usize,
    pub exited: usize,
}

impl SweepReport {
    fn of(plan: &Plan, outcomes: &[Outcome]) -> SweepReport {
        let mut report = SweepReport::default();
        for (planned, outcome) in plan.actions.iter().zip(outcomes) {
            if *outcome != Outcome::Done {
                continue;
            }
            match &planned.action {
                Action::RemoveOrphan { .. } => report.orphans_removed += 1,
                Action::AdoptOrphan { .. } => report.orphans_adopted += 1,
                Action::Correct { drift: Drift::Vanished { .. }, .. } => report.vanished += 1,
                Action::Correct { drift: Drift::Exited(_), .. } => report.exited += 1,
                Action::Keep | Action::Transitional { .. } => {}
            }
        }
        report
    }
}

/// One lock per provider name, so that two sweeps of one provider never run at once.
#[derive(Debug, Default)]
pub struct SweepLocks(std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl SweepLocks {
    fn of(&self, provider: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(provider.to_owned()).or_default().clone()
    }
}

/// Sweeps every provider, each on its own interval, for ever. Each provider has its own
/// task; they end with this future (a `JoinSet` aborts them when dropped).
pub async fn run(cx: Arc<Context>, reconciler: Reconciler) {
    let mut loops = tokio::task::JoinSet::new();
    for provider in cx.providers.iter() {
        loops.spawn(run_one(cx.clone(), reconciler.clone(), provider.clone()));
    }
    while loops.join_next().await.is_some() {}
    // No provider: nothing to sweep, but the loop's heartbeat still says it is alive.
    let mut tick = tokio::time::interval(cx.config.sweep_interval);
    loop {
        tick.tick().await;
        crate::health::tick("sweep");
    }
}

async fn run_one(cx: Arc<Context>, reconciler: Reconciler, provider: Arc<dyn Provider>) {
    let mut tick = tokio::time::interval(cx.config.sweep_interval_of(provider.name()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::health::tick("sweep");
        if !cx.sweeps(provider.name()) {
            continue;
        }
        match sweep(&cx, &reconciler, provider.as_ref()).await {
            Ok(report) if report != SweepReport::default() => {
                tracing::info!(provider = provider.name(), ?report, "sweep corrected drift");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(provider = provider.name(), error = %e, "sweep skipped this provider"),
        }
    }
}

/// Sweeps every provider once, one after the other.
pub async fn sweep_all(cx: &Arc<Context>, reconciler: &Reconciler) -> BTreeMap<&'static str, SweepReport> {
    let mut reports = BTreeMap::new();
    for provider in cx.providers.iter() {
        match sweep(cx, reconciler, provider.as_ref()).await {
            Ok(report) => {
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

/// One sweep of one provider: plan, then apply.
pub async fn sweep(cx: &Context, reconciler: &Reconciler, provider: &dyn Provider) -> Result<SweepReport, SweepError> {
    let (plan, outcomes) = sweep_now(cx, reconciler, provider, false).await?;
    Ok(SweepReport::of(&plan, &outcomes.unwrap_or_default()))
}

/// One sweep of one provider under its lock: the plan and, unless `dry_run`, its outcomes.
pub async fn sweep_now(
    cx: &Context,
    reconciler: &Reconciler,
    provider: &dyn Provider,
    dry_run: bool,
) -> Result<(Plan, Option<Vec<Outcome>>), SweepError> {
    let lock = cx.sweeps.of(provider.name());
    let _held = lock.lock().await;
    let plan = plan::plan(cx, reconciler, provider).await?;
    if dry_run {
        return Ok((plan, None));
    }
    let outcomes = apply::apply(cx, reconciler, provider, &plan).await;
    if provider.capabilities().lease_backstop {
        // After a restart: each running VM's step arms its own backstop again (`crate::rearm`),
        // so a crash between an extend's commit and its rearm still ends in a rearm.
        for (id, record) in cx.store.sweep_view(provider.name()).await? {
            if record.observed == lapse_core::model::ObservedState::Running && reconciler.backstop_unknown(&id) {
                reconciler.enqueue(&id);
            }
        }
    }
    Ok((plan, Some(outcomes)))
}

/// One provider's sweep as the API shows it.
pub fn view(provider: &str, swept: Result<(Plan, Option<Vec<Outcome>>), SweepError>) -> ProviderSweep {
    let (plan, outcomes) = match swept {
        Ok(done) => done,
        Err(e) => return ProviderSweep { provider: provider.to_owned(), error: Some(e.to_string()), actions: vec![] },
    };
    let actions = plan
        .actions
        .iter()
        .enumerate()
        .map(|(n, p)| {
            let outcome = outcomes.as_ref().and_then(|o| o.get(n));
            SweepAction {
                environment_id: p.environment_id.clone(),
                provider_ref: p.provider_ref.clone(),
                action: p.action.word().to_owned(),
                detail: p.action.detail(),
                done: match outcome {
                    None | Some(Outcome::LeftAlone) => None,
                    Some(o) => Some(*o == Outcome::Done),
                },
                error: match outcome {
                    Some(Outcome::Failed(e)) => Some(e.clone()),
                    Some(Outcome::Dropped) => Some("the environment changed since the plan; left alone".into()),
                    _ => None,
                },
            }
        })
        .collect();
    ProviderSweep { provider: provider.to_owned(), error: None, actions }
}

/// Compares one environment's record with its resource and corrects the record. Used by the
/// sweep and when a provider reports an exit. Environments the reconciler is working on, kept
/// ones, and records that change meanwhile, are left alone.
pub async fn check_one(
    cx: &Context,
    reconciler: &Reconciler,
    provider: &dyn Provider,
    id: &str,
) -> Result<Option<Drift>, SweepError> {
    let Some(planned) = plan::plan_one(cx, reconciler, provider, id).await? else { return Ok(None) };
    let Action::Correct { drift, .. } = planned.action else { return Ok(None) };
    match apply::apply_one(cx, reconciler, provider, &planned).await {
        Ok(Outcome::Done) => Ok(Some(drift)),
        Ok(_) | Err(SweepError::MovedOn) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The corrected record, by lifecycle: services and daemons restart after `backoff` ms; a
/// job records its exit and is retried after a failure while it has retries; a lease is
/// recorded stopped.
pub(crate) fn correct(
    e: &mut Environment,
    drift: Drift,
    why: Option<&str>,
    now: Millis,
    backoff: Millis,
) -> Vec<NewEvent> {
    let code = match drift {
        Drift::Vanished { .. } if e.desired == DesiredState::Running => {
            e.reason = Some("the resource vanished outside Lapse; provisioning it again".into());
            return vec![transition(e, ObservedState::Provisioning, "sweep", "resource vanished; provisioning again")];
        }
        Drift::Vanished { .. } => {
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

pub(crate) async fn adopt(cx: &Context, provider: &str, instance: &Instance) -> Result<(), StoreError> {
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
