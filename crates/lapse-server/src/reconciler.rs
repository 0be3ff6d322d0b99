//! The reconciler: makes each environment's observed state match its desired state.
//!
//! Contract:
//! - **It takes no input but an environment id, and reads current state.** Entry points (API,
//!   timers, sweep) only write desired state and call [`Reconciler::enqueue`]; what woke the
//!   reconciler is never trusted. The step to take comes from [`lapse_core::state::plan`].
//! - **One step at a time per environment, idempotent.** A step that calls a provider first
//!   records the in-progress state (`provisioning`, `stopping`, `deleting`), then calls the
//!   provider, then records the outcome. A crash anywhere leaves a row that, on restart,
//!   yields the same step again; providers' operations are idempotent, so repeating it is safe.
//! - **Every write re-checks** that the row still calls for the step (compare-and-set inside
//!   the store's transaction); a step that lost a race is dropped and the id re-queued.
//! - Provider calls are bounded per provider (a semaphore each). Failures are retried with
//!   exponential back-off (a timer); a provision that keeps failing is marked `failed` and its
//!   resources removed; stops and deletes are retried until they succeed.
//! - An environment with an S3 workspace is pushed before its stop, replacement or delete
//!   ([`crate::workspace::final_push`]); a failed push fails the step like a provider error
//!   (retried, the error its `reason`), so nothing is removed before its files are saved.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use lapse_core::Millis;
use lapse_core::model::{DesiredState, Environment, ObservedState};
use lapse_core::state::{
    Plan, backoff_millis, can_transition, idle_deadline, idle_due, in_progress_state, lease_expired, plan,
};
use lapse_providers::{Instance, Intent, Placement, ProviderError};
use lapse_store::{NewEvent, StoreError, Versioned};
use tokio::sync::{Notify, Semaphore};

use crate::context::Context;
use crate::metrics::ProviderLabels;

/// Steps running at once, across all providers (provider semaphores bound each provider).
const MAX_STEPS_IN_FLIGHT: usize = 256;

#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

struct Inner {
    cx: Arc<Context>,
    queue: Mutex<Queue>,
    wake: Notify,
    slots: HashMap<String, Arc<Semaphore>>,
    steps: Arc<Semaphore>,
    /// The deadline each running VM's own backstop holds ([`crate::rearm`]).
    armed: crate::rearm::Armed,
}

#[derive(Default)]
struct Queue {
    order: VecDeque<String>,
    queued: HashSet<String>,
    running: HashSet<String>,
    /// Enqueued while a step for it ran: run again after.
    again: HashSet<String>,
}

/// Why a step stopped early without error.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("the environment changed during the step")]
    Stale,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Reconciler {
    pub fn new(cx: Arc<Context>) -> Self {
        let slots = cx
            .providers
            .iter()
            .map(|p| (p.name().to_owned(), Arc::new(Semaphore::new(cx.config.concurrency_of(p.name())))))
            .collect();
        Reconciler {
            inner: Arc::new(Inner {
                cx,
                queue: Mutex::new(Queue::default()),
                wake: Notify::new(),
                slots,
                steps: Arc::new(Semaphore::new(MAX_STEPS_IN_FLIGHT)),
                armed: crate::rearm::Armed::default(),
            }),
        }
    }

    /// Asks for a look at `id`. Cheap; duplicates collapse.
    pub fn enqueue(&self, id: &str) {
        let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.running.contains(id) {
            q.again.insert(id.to_owned());
            return;
        }
        if q.queued.insert(id.to_owned()) {
            q.order.push_back(id.to_owned());
            drop(q);
            self.inner.wake.notify_one();
        }
    }

    /// Whether a step for `id` is queued or running, or a change to it waits for the store to
    /// write again (the sweep leaves such ones alone).
    pub fn is_busy(&self, id: &str) -> bool {
        let busy = {
            let q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.queued.contains(id) || q.running.contains(id)
        };
        busy || self.inner.cx.deferred.contains(id)
    }

    /// Whether nothing is known of the backstop of `id`'s VM in this process (after a
    /// restart): the sweep enqueues such a running environment so its step arms it.
    pub fn backstop_unknown(&self, id: &str) -> bool {
        self.inner.armed.unknown(id)
    }

    /// Steps running now.
    pub fn running(&self) -> usize {
        self.inner.queue.lock().unwrap_or_else(|p| p.into_inner()).running.len()
    }

    /// Queued plus running steps.
    pub fn backlog(&self) -> usize {
        let q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.order.len() + q.running.len()
    }

    /// Dispatches queued ids for ever. The steps are this future's: when it is dropped (the
    /// task aborted, as when a replica loses the lead), every step in flight ends at its next
    /// await, exactly as a crash would end it.
    pub async fn run(&self) {
        let mut steps = tokio::task::JoinSet::new();
        loop {
            crate::health::tick("reconciler");
            while steps.try_join_next().is_some() {}
            let wake = self.inner.wake.notified();
            let next = {
                let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
                let next = q.order.pop_front();
                if let Some(id) = &next {
                    q.queued.remove(id);
                    q.running.insert(id.clone());
                }
                next
            };
            let Some(id) = next else {
                tokio::select! {
                    _ = wake => {}
                    Some(_) = steps.join_next(), if !steps.is_empty() => {}
                }
                continue;
            };
            // The semaphore is never closed.
            let permit = self.inner.steps.clone().acquire_owned().await.expect("step semaphore open");
            let this = self.clone();
            steps.spawn(async move {
                this.step(&id).await;
                drop(permit);
                this.finish(&id);
            });
        }
    }

    fn finish(&self, id: &str) {
        let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.running.remove(id);
        if q.again.remove(id) && q.queued.insert(id.to_owned()) {
            q.order.push_back(id.to_owned());
            drop(q);
            self.inner.wake.notify_one();
        }
    }

    async fn step(&self, id: &str) {
        let cx = &self.inner.cx;
        // The row as read, with its revision: the provider step's writes start from it.
        let known = match cx.store.get_versioned(id).await {
            Ok(Some(known)) => known,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(environment = id, error = %e, "reconciler could not read the environment; retrying in 1 s");
                cx.timers.schedule(cx.clock.now() + 1_000, id);
                return;
            }
        };
        let mut env = known.env.clone();
        // With replicas: another replica's (its leader's, or the one whose local provider
        // holds it).
        if !cx.owns(&env) {
            return;
        }
        // A stop or delete the store could not take yet counts as written.
        if let Some(intent) = cx.deferred.get(id) {
            intent.overlay(&mut env);
        }
        // A touch not yet flushed counts: the idle deadline is planned from the latest one.
        cx.activity.overlay(&mut env);
        let now = cx.clock.now();
        let planned = plan(&env, now);
        // A running VM whose lease moved (extend) has its own backstop moved; a failure is an
        // event and a timer, never a failed step.
        if matches!(planned, Plan::Converged | Plan::WaitUntil(_)) && self.inner.armed.moved(&env) {
            crate::rearm::rearm(cx, &self.inner.armed, &env, now).await;
        }
        let outcome = match planned {
            Plan::Converged => {
                // The lease's timer here: the environment may have been made (or extended) on
                // another replica, whose timers hold it (the set keeps one of each).
                if let Some(at) = env.expires_at.filter(|at| *at > now) {
                    cx.timers.schedule(at, id);
                }
                // The idle timer: when it fires, this step looks again (activity may have
                // moved the deadline meanwhile).
                if let Some(at) = idle_deadline(&env) {
                    cx.timers.schedule(at, id);
                }
                // Pre-expiry warnings due now fire; the next mark is a timer.
                if let Some(at) = crate::warnings::step(cx, &env).await {
                    cx.timers.schedule(at, id);
                }
                return;
            }
            Plan::WaitUntil(at) => {
                cx.timers.schedule(at, id);
                return;
            }
            Plan::Expire(target) => self.expire(&env, target, now).await,
            Plan::Idle(target) => self.idle(&env, target, now).await,
            Plan::MarkStopped => self.mark(&env, planned, ObservedState::Stopped).await,
            Plan::MarkDeleted => self.mark(&env, planned, ObservedState::Deleted).await,
            Plan::Provision | Plan::Replace | Plan::Restart | Plan::Stop | Plan::Delete => {
                self.call_provider(&env, &known, planned, now).await
            }
        };
        match outcome {
            // Look again: the next step (or `Converged`) follows from the new state.
            Ok(()) | Err(StepError::Stale) => self.enqueue(id),
            Err(StepError::Store(e)) => {
                tracing::error!(environment = id, error = %e, "reconciler could not write; retrying in 1 s");
                cx.timers.schedule(cx.clock.now() + 1_000, id);
            }
        }
    }

    async fn expire(&self, env: &Environment, target: DesiredState, now: Millis) -> Result<(), StepError> {
        let cx = &self.inner.cx;
        let updated = match cx
            .store
            .update(&env.id, |e| {
                if !lease_expired(e, now) {
                    return Err(StepError::Stale);
                }
                let was = e.desired;
                e.restart_on_extend = target == DesiredState::Stopped && was == DesiredState::Running;
                e.desired = target;
                e.expired_at = Some(now);
                let lateness = now - e.expires_at.unwrap_or(now);
                Ok(vec![NewEvent::new(
                    &e.id,
                    "expiry",
                    "expire",
                    target.as_str(),
                    format!("lease ran out ({lateness} ms after expires_at); desired {was} -> {target}"),
                )])
            })
            .await
        {
            // The disk is full: the lease still ends. The journal holds the expiry until the
            // store can take it, and the next step acts on it.
            Err(StepError::Store(e)) if e.is_unwritable() => {
                self.defer(env, target, Some(now), "expiry", "expire")?;
                tracing::warn!(environment = %env.id, to = %target, "lease expired while the store cannot write; acting on it anyway");
                return Ok(());
            }
            other => other?,
        };
        if let Some(e) = updated {
            let lateness = (now - e.expires_at.unwrap_or(now)).max(0) as f64 / 1000.0;
            cx.metrics.expiry_lateness.observe(lateness);
            tracing::info!(environment = %e.id, to = %target, lateness_s = lateness, "lease expired");
        }
        Ok(())
    }

    /// No activity for its `idle_timeout`: desired `stopped` (or `deleted`, `on_idle`), with
    /// the event that says so. The transaction re-checks with the latest touch in memory, so
    /// a touch that came after the plan keeps it running.
    async fn idle(&self, env: &Environment, target: DesiredState, now: Millis) -> Result<(), StepError> {
        let cx = &self.inner.cx;
        let updated = match cx
            .store
            .update(&env.id, |e| {
                cx.activity.overlay(e);
                if !idle_due(e, now) || lease_expired(e, now) {
                    return Err(StepError::Stale);
                }
                let since = e.last_active_at.unwrap_or(e.created_at).max(e.created_at);
                let was = e.desired;
                e.desired = target;
                e.idled_at = Some(now);
                e.restart_on_extend = false;
                let quiet = std::time::Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
                let timeout = std::time::Duration::from_millis(u64::try_from(e.idle_timeout.unwrap_or(0)).unwrap_or(0));
                Ok(vec![NewEvent::new(
                    &e.id,
                    "idle",
                    "idle",
                    target.as_str(),
                    format!(
                        "idle: no activity for {} (idle_timeout {}); desired {was} -> {target}",
                        lapse_core::duration::format_duration(quiet),
                        lapse_core::duration::format_duration(timeout),
                    ),
                )])
            })
            .await
        {
            // The disk is full: an idle environment still stops, as an expired one does.
            Err(StepError::Store(e)) if e.is_unwritable() => {
                self.defer(env, target, None, "idle", "idle")?;
                tracing::warn!(environment = %env.id, to = %target, "idle while the store cannot write; acting on it anyway");
                return Ok(());
            }
            other => other?,
        };
        if let Some(e) = updated {
            tracing::info!(environment = %e.id, to = %target, "idle timeout");
        }
        Ok(())
    }

    /// The events of a deferred stop or delete of `e`, applied to `e` (see
    /// [`crate::deferred`]): every write of the reconciler carries it into the row, so the
    /// row it checks is the one it planned from.
    fn with_deferred(&self, e: &mut Environment) -> Vec<NewEvent> {
        self.inner.cx.deferred.get(&e.id).map(|i| i.apply(e)).unwrap_or_default()
    }

    /// Records a stop or delete in the deferred journal (the store cannot write).
    fn defer(
        &self,
        env: &Environment,
        desired: DesiredState,
        expired_at: Option<Millis>,
        actor: &str,
        action: &str,
    ) -> Result<(), StepError> {
        let cx = &self.inner.cx;
        let intent = crate::deferred::Intent {
            id: env.id.clone(),
            desired,
            expired_at,
            reached: None,
            at: cx.clock.now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
        };
        cx.deferred.record(intent).map_err(|e| {
            tracing::error!(environment = %env.id, error = %e, "the deferred journal could not record a change");
            StepError::Stale
        })
    }

    /// Records a state reached without a provider call.
    async fn mark(&self, env: &Environment, planned: Plan, to: ObservedState) -> Result<(), StepError> {
        let cx = &self.inner.cx;
        let now = cx.clock.now();
        cx.store
            .update(&env.id, |e| {
                let mut events = self.with_deferred(e);
                if plan(e, now) != planned {
                    return Err(StepError::Stale);
                }
                events.push(transition(e, to, "reconciler", "never provisioned"));
                Ok(events)
            })
            .await?;
        cx.metrics.step(&env.spec.provider, step_name(planned), "ok");
        Ok(())
    }

    /// `known` is the row `env` was planned from, as read (without `step`'s overlays).
    async fn call_provider(
        &self,
        env: &Environment,
        known: &Versioned,
        planned: Plan,
        now: Millis,
    ) -> Result<(), StepError> {
        let cx = &self.inner.cx;
        let provider_name = env.spec.provider.as_str();
        let Some(provider) = cx.providers.get(provider_name).cloned() else {
            let err = ProviderError::Unavailable {
                provider: "unknown",
                message: format!("provider {provider_name:?} is not configured on this server"),
            };
            return self.record_failure(env, planned, &err).await;
        };
        let slots = self.inner.slots.get(provider_name).cloned();
        let _slot = match &slots {
            // The semaphores are never closed.
            Some(s) => Some(s.acquire().await.expect("provider semaphore open")),
            None => None,
        };
        // The wait for a slot may have been long (a slow cloud): the intent below is planned
        // again at the time it is written, so a lease that ran out meanwhile expires instead.
        let now = if slots.is_some() { cx.clock.now() } else { now };
        let doing = in_progress_state(planned).unwrap_or(env.observed);
        let mut deferred = cx.deferred.contains(&env.id);
        let mut intent_unwritten = false;
        let grace = cx.config.stop_grace;
        let started = std::time::Instant::now();
        let (written, placement, result) = if planned == Plan::Provision && env.observed != doing {
            // A provision's intent is written while the provider's lookups run: it creates
            // nothing before the intent is durable (`Intent`). A step whose intent is refused,
            // or whose written row no longer has the spec and placement the call began with
            // (replaced meanwhile), ends here with nothing done, and the next step provisions
            // the row as written.
            let placement = placement_of(env);
            let (writer, intent) = Intent::pending();
            let write = async {
                let written = self.write_intent(known, planned, doing, now, &mut deferred).await;
                let same =
                    matches!(&written, Ok(Some(w)) if w.env.spec == env.spec && placement_of(&w.env) == placement);
                writer.done(same);
                (written, same)
            };
            let call = provider.ensure_running_after(&env.id, &placement, &env.spec, intent);
            let ((written, same), result) = tokio::join!(write, call);
            let written = written?.ok_or(StepError::Stale)?;
            if !same {
                return Err(StepError::Stale);
            }
            (written, placement, result.map(Some))
        } else {
            // Write the intent before the call it describes, and act on the row it wrote: a
            // spec replaced since `env` was read is the one provisioned.
            let written = if env.observed != doing {
                match self.write_intent(known, planned, doing, now, &mut deferred).await? {
                    Some(written) => written,
                    None => {
                        intent_unwritten = true;
                        known.clone()
                    }
                }
            } else {
                known.clone()
            };
            let env = &written.env;
            let placement = placement_of(env);
            // The workspace's final push, before its directory stops or goes (retried on
            // failure; the step waits for it).
            if matches!(planned, Plan::Stop | Plan::Delete | Plan::Replace)
                && let Err(err) = crate::workspace::final_push(cx, env, provider.as_ref()).await
            {
                return self.record_failure(env, planned, &err).await;
            }
            let result: Result<Option<Instance>, ProviderError> = match planned {
                Plan::Provision => provider.ensure_running(&env.id, &placement, &env.spec).await.map(Some),
                Plan::Replace => match provider.delete(&env.id, grace).await {
                    Ok(()) => provider.ensure_running(&env.id, &placement, &env.spec).await.map(Some),
                    Err(e) => Err(e),
                },
                // A probe found the service unhealthy: stop it and start it again (its disk
                // stays).
                Plan::Restart => match provider.stop(&env.id, grace).await {
                    Ok(()) => provider.ensure_running(&env.id, &placement, &env.spec).await.map(Some),
                    Err(e) => Err(e),
                },
                Plan::Stop => provider.stop(&env.id, grace).await.map(|()| None),
                Plan::Delete => provider.delete(&env.id, grace).await.map(|()| None),
                _ => unreachable!("call_provider is only called for provider steps"),
            };
            (written, placement, result)
        };
        let env = &written.env;
        let took = started.elapsed();
        match result {
            Ok(instance) => {
                let reached = match planned {
                    Plan::Provision | Plan::Replace | Plan::Restart => ObservedState::Running,
                    Plan::Stop => ObservedState::Stopped,
                    _ => ObservedState::Deleted,
                };
                match planned {
                    // The VM booted with this deadline in its user data.
                    Plan::Provision | Plan::Replace | Plan::Restart => {
                        self.inner.armed.set(&env.id, placement.expires_at)
                    }
                    Plan::Delete => self.inner.armed.forget(&env.id),
                    _ => {}
                }
                let provisioned_hash = env.spec.hash();
                let recorded = cx
                    .store
                    .update_versioned(&written, |e| {
                        let mut events = self.with_deferred(e);
                        // The intent that could not be written before the call is written now.
                        if intent_unwritten && e.observed != doing && plan(e, now) == planned {
                            events.push(transition(e, doing, "reconciler", ""));
                        }
                        if e.observed != doing {
                            return Err(StepError::Stale);
                        }
                        if let Some(instance) = &instance {
                            e.provider_ref = Some(instance.provider_ref.clone());
                            e.endpoints = instance.endpoints.clone();
                            if instance.user_data_path.is_some() {
                                e.user_data_path = instance.user_data_path.clone();
                            }
                            // A spec replaced during the call is still to be applied.
                            e.replace = e.spec.hash() != provisioned_hash;
                            e.exit_code = None;
                            e.finished_at = None;
                            // Running (again): a fresh idle window, and a probe starts over.
                            let at = cx.clock.now();
                            e.last_active_at = Some(e.last_active_at.map_or(at, |t| t.max(at)));
                            e.idled_at = None;
                            e.health = e.spec.health.as_ref().map(|_| lapse_core::model::Health::Starting);
                            e.ready_at = None;
                            if e.restart_requested {
                                e.restarts = e.restarts.saturating_add(1);
                            }
                            e.restart_requested = false;
                        } else {
                            e.endpoints.clear();
                            e.health = None;
                            e.ready_at = None;
                        }
                        e.attempts = 0;
                        e.next_attempt_at = None;
                        e.reason = None;
                        events.push(transition(
                            e,
                            reached,
                            "reconciler",
                            &format!("{provider_name} took {} ms", took.as_millis()),
                        ));
                        Ok(events)
                    })
                    .await;
                match recorded {
                    Err(StepError::Store(e)) if deferred && e.is_unwritable() => {
                        cx.deferred.reached(&env.id, reached).map_err(|e| {
                            tracing::error!(environment = %env.id, error = %e, "the deferred journal could not record a step");
                            StepError::Stale
                        })?;
                    }
                    other => {
                        other?;
                    }
                }
                cx.metrics.step(provider_name, step_name(planned), "ok");
                tracing::info!(environment = %env.id, provider = provider_name, state = %reached, took_ms = took.as_millis() as u64, "step done");
                Ok(())
            }
            Err(err) => self.record_failure(env, planned, &err).await,
        }
    }

    /// Writes the step's intent (the in-progress state `doing`): the row written, or `None`
    /// when a stop or delete goes ahead on its deferred journal entry because the store cannot
    /// write (`deferred` is then set).
    async fn write_intent(
        &self,
        known: &Versioned,
        planned: Plan,
        doing: ObservedState,
        now: Millis,
        deferred: &mut bool,
    ) -> Result<Option<Versioned>, StepError> {
        let cx = &self.inner.cx;
        let env = &known.env;
        let written = cx
            .store
            .update_versioned(known, |e| {
                let mut events = self.with_deferred(e);
                if plan(e, now) != planned || !cx.owns(e) {
                    return Err(StepError::Stale);
                }
                // A local provider's environment is this replica's from its first step.
                if e.placed_on.is_none() {
                    e.placed_on = cx.placement_for(&e.spec.provider);
                }
                events.push(transition(e, doing, "reconciler", ""));
                Ok(events)
            })
            .await;
        match written {
            Ok(Some(written)) => Ok(Some(written)),
            Ok(None) => Err(StepError::Stale),
            // A stop or delete goes ahead while the store cannot write: its journal entry is
            // the intent (made now if the request itself was written, and the disk filled
            // before this step).
            Err(StepError::Store(e)) if e.is_unwritable() && matches!(planned, Plan::Stop | Plan::Delete) => {
                if !*deferred {
                    self.defer(env, env.desired, env.expired_at, "reconciler", step_name(planned))?;
                    tracing::warn!(environment = %env.id, step = step_name(planned),
                        "the store cannot write the step; recorded in the deferred journal, acting on it anyway");
                    *deferred = true;
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn record_failure(&self, env: &Environment, planned: Plan, err: &ProviderError) -> Result<(), StepError> {
        let cx = &self.inner.cx;
        let provider_name = env.spec.provider.as_str();
        cx.metrics.step(provider_name, step_name(planned), "error");
        let now = cx.clock.now();
        let retry = &cx.config.retry;
        let mut gave_up = false;
        // A backend's text is bounded before it reaches the record and its events.
        let text = err.recorded();
        cx.store
            .update(&env.id, |e| {
                e.attempts = e.attempts.saturating_add(1);
                e.reason = Some(text.clone());
                // Only a provision gives up: a stop or delete that gives up would leak.
                gave_up = matches!(planned, Plan::Provision | Plan::Replace | Plan::Restart)
                    && (!err.is_retryable() || e.attempts >= retry.max_attempts);
                if gave_up {
                    e.next_attempt_at = None;
                    let message = format!("gave up after {} attempt(s): {text}", e.attempts);
                    let event = transition(e, ObservedState::Failed, "reconciler", &message);
                    e.reason = Some(message);
                    return Ok(vec![event]);
                }
                let wait = backoff_millis(e.attempts, retry.base.as_millis() as i64, retry.cap.as_millis() as i64);
                e.next_attempt_at = Some(now + wait);
                Ok::<_, StepError>(vec![NewEvent::new(
                    &e.id,
                    "reconciler",
                    step_name(planned),
                    "error",
                    format!("attempt {} failed, next in {wait} ms: {text}", e.attempts),
                )])
            })
            .await?;
        tracing::warn!(environment = %env.id, provider = provider_name, error = %text, gave_up, "provider call failed");
        if gave_up {
            cx.metrics.provisions_failed.get_or_create(&ProviderLabels { provider: provider_name.to_owned() }).inc();
            // Remove whatever the failed provision left; the sweep catches what this misses.
            if let Some(provider) = cx.providers.get(provider_name)
                && let Err(e) = provider.delete(&env.id, cx.config.stop_grace).await
            {
                tracing::warn!(environment = %env.id, error = %e, "cleanup after a failed provision failed; the sweep will retry");
            }
            return Ok(());
        }
        // The re-queued step finds the back-off (`Plan::WaitUntil`) and sets its timer.
        Ok(())
    }
}

/// What a provider is told of whose `env` is.
fn placement_of(env: &Environment) -> Placement {
    Placement {
        tenant: env.tenant.clone(),
        expires_at: env.expires_at,
        on_expiry: env.on_expiry,
        labels: env.labels.clone(),
        lifecycle: env.lifecycle,
    }
}

/// Moves `e` to `to`, checking the state machine, and returns the event that says so.
pub(crate) fn transition(e: &mut Environment, to: ObservedState, actor: &str, note: &str) -> NewEvent {
    let from = e.observed;
    debug_assert!(from == to || can_transition(from, to), "refused transition {from} -> {to}");
    e.observed = to;
    let message = if note.is_empty() { format!("{from} -> {to}") } else { format!("{from} -> {to}: {note}") };
    NewEvent::new(&e.id, actor, "transition", to.as_str(), message)
}

fn step_name(plan: Plan) -> &'static str {
    match plan {
        Plan::Provision => "provision",
        Plan::Replace => "replace",
        Plan::Restart => "restart",
        Plan::Idle(_) => "idle",
        Plan::Stop => "stop",
        Plan::Delete => "delete",
        Plan::MarkStopped => "mark_stopped",
        Plan::MarkDeleted => "mark_deleted",
        Plan::Expire(_) => "expire",
        Plan::Converged | Plan::WaitUntil(_) => "none",
    }
}
