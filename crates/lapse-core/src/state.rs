//! The observed-state machine and the reconciler's pure decision function.
//!
//! ```text
//! pending ─> provisioning ─> running ─> stopping ─> stopped
//!    │            │  ^          │                      │
//!    │            │  └──────────┴───── (start) ────────┘
//!    └──> stopped/deleted        any live state ─> deleting ─> deleted
//! any state but deleted ─> failed ─> deleting | pending (start again)
//! ```
//!
//! [`plan`] looks at one environment and the time and says which single step comes next.
//! It reads nothing but its arguments, so the same state always yields the same step:
//! the reconciler is idempotent because this function is.

use crate::Millis;
use crate::model::{DesiredState, Environment, ObservedState, OnExpiry, OnIdle};

/// Whether the observed state may move from `from` to `to`.
pub fn can_transition(from: ObservedState, to: ObservedState) -> bool {
    use ObservedState::*;
    match from {
        Pending => matches!(to, Provisioning | Stopped | Deleted | Failed),
        Provisioning => matches!(to, Running | Stopping | Deleting | Failed),
        Running => matches!(to, Stopping | Stopped | Provisioning | Deleting | Failed),
        Stopping => matches!(to, Stopped | Provisioning | Deleting | Failed),
        Stopped => matches!(to, Provisioning | Deleting | Failed),
        Deleting => matches!(to, Deleted | Failed),
        Failed => matches!(to, Pending | Deleting),
        Deleted => false,
    }
}

/// The next step for one environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Desired and observed agree (or the environment failed and waits for its user).
    Converged,
    /// The lease ran out: set the desired state to this and record the expiry.
    Expire(DesiredState),
    /// No activity for its `idle_timeout`: set the desired state to this and record why.
    Idle(DesiredState),
    /// A probe found the running service unhealthy: stop it, then start it. Provider calls.
    Restart,
    /// A failed attempt's back-off runs until then; do nothing before.
    WaitUntil(Millis),
    /// Make the resource run: create it, or start it if it exists. Provider call.
    Provision,
    /// The spec changed while a resource exists: remove it, then create it anew. Provider calls.
    Replace,
    /// Stop the resource. Provider call.
    Stop,
    /// Delete the resource, if any. Provider call.
    Delete,
    /// Never provisioned and now wanted stopped: record `stopped`, no provider call.
    MarkStopped,
    /// Never provisioned and now wanted deleted: record `deleted`, no provider call.
    MarkDeleted,
}

impl Plan {
    /// Whether this step calls a provider (and so takes a concurrency slot and may fail).
    pub fn calls_provider(self) -> bool {
        matches!(self, Plan::Provision | Plan::Replace | Plan::Restart | Plan::Stop | Plan::Delete)
    }
}

/// When `env` counts as idle: its latest activity (or, before any, its creation) plus its
/// `idle_timeout`, while it is wanted and seen running and is no pool's unclaimed member.
/// `last_active_at` is set when it starts running, so a start gives a fresh window.
pub fn idle_deadline(env: &Environment) -> Option<Millis> {
    let timeout = env.idle_timeout?;
    let live = env.desired == DesiredState::Running && env.observed == ObservedState::Running;
    if !live || env.pool.is_some() {
        return None;
    }
    Some(env.last_active_at.unwrap_or(env.created_at).max(env.created_at).saturating_add(timeout))
}

/// Whether `env` has been idle for its `idle_timeout` at `now`.
pub fn idle_due(env: &Environment, now: Millis) -> bool {
    idle_deadline(env).is_some_and(|at| at <= now)
}

/// Whether the lease of `env` has run out at `now` and has not been acted on yet.
pub fn lease_expired(env: &Environment, now: Millis) -> bool {
    env.desired != DesiredState::Deleted && env.expired_at.is_none() && env.expires_at.is_some_and(|at| at <= now)
}

/// Decides the next step for `env` at `now`.
pub fn plan(env: &Environment, now: Millis) -> Plan {
    use DesiredState as D;
    use ObservedState as O;

    if lease_expired(env, now) {
        return Plan::Expire(match env.on_expiry {
            OnExpiry::Stop => D::Stopped,
            OnExpiry::Delete => D::Deleted,
        });
    }
    if idle_due(env, now) {
        return Plan::Idle(match env.on_idle {
            OnIdle::Stop => D::Stopped,
            OnIdle::Delete => D::Deleted,
        });
    }
    let step = match (env.desired, env.observed) {
        (_, O::Deleted) => Plan::Converged,
        (D::Deleted, O::Pending) => Plan::MarkDeleted,
        (D::Deleted, _) => Plan::Delete,
        (_, O::Failed) => Plan::Converged,
        (D::Running, O::Running | O::Provisioning | O::Stopping | O::Stopped) if env.replace => Plan::Replace,
        (D::Running, O::Running) if env.restart_requested => Plan::Restart,
        (D::Running, O::Running) | (D::Stopped, O::Stopped) => Plan::Converged,
        (D::Running, O::Pending | O::Provisioning | O::Stopping | O::Stopped) => Plan::Provision,
        (D::Stopped, O::Pending) => Plan::MarkStopped,
        (D::Stopped, O::Provisioning | O::Running | O::Stopping) => Plan::Stop,
        // Deleting only follows a desired `deleted`, which is final; finish what was begun.
        (_, O::Deleting) => Plan::Delete,
    };
    match env.next_attempt_at {
        Some(at) if step.calls_provider() && at > now => Plan::WaitUntil(at),
        _ => step,
    }
}

/// Back-off before attempt `attempts + 1`, after `attempts` failures: `base · 2^(attempts-1)`,
/// capped.
pub fn backoff_millis(attempts: u32, base: Millis, cap: Millis) -> Millis {
    let exponent = attempts.saturating_sub(1).min(30);
    base.saturating_mul(1 << exponent).min(cap)
}

/// The state the observed state becomes while `plan`'s provider call runs.
pub fn in_progress_state(plan: Plan) -> Option<ObservedState> {
    match plan {
        Plan::Provision | Plan::Replace | Plan::Restart => Some(ObservedState::Provisioning),
        Plan::Stop => Some(ObservedState::Stopping),
        Plan::Delete => Some(ObservedState::Deleting),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Spec;
    use ObservedState::*;

    fn env(desired: DesiredState, observed: ObservedState) -> Environment {
        let spec = Spec { provider: "process".into(), ..Default::default() };
        let mut e = Environment::new("0".repeat(32), "ada".into(), spec, 0);
        e.desired = desired;
        e.observed = observed;
        e.expires_at = Some(10_000);
        e
    }

    /// Every pair of states, allowed or refused: the table is the specification.
    #[test]
    fn transitions() {
        let allowed: &[(ObservedState, &[ObservedState])] = &[
            (Pending, &[Provisioning, Stopped, Deleted, Failed]),
            (Provisioning, &[Running, Stopping, Deleting, Failed]),
            (Running, &[Stopping, Stopped, Provisioning, Deleting, Failed]),
            (Stopping, &[Stopped, Provisioning, Deleting, Failed]),
            (Stopped, &[Provisioning, Deleting, Failed]),
            (Deleting, &[Deleted, Failed]),
            (Failed, &[Pending, Deleting]),
            (Deleted, &[]),
        ];
        let mut checked = 0;
        for (from, tos) in allowed {
            for to in ObservedState::ALL {
                assert_eq!(
                    can_transition(*from, to),
                    tos.contains(&to),
                    "{from} -> {to} should be {}",
                    if tos.contains(&to) { "allowed" } else { "refused" }
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 64);
    }

    #[test]
    fn plans_for_every_desired_and_observed_pair() {
        use DesiredState as D;
        let check = |d: D, o: ObservedState, want: Plan| {
            assert_eq!(plan(&env(d, o), 0), want, "desired {d}, observed {o}");
        };
        check(D::Running, Pending, Plan::Provision);
        check(D::Running, Provisioning, Plan::Provision);
        check(D::Running, Running, Plan::Converged);
        check(D::Running, Stopping, Plan::Provision);
        check(D::Running, Stopped, Plan::Provision);
        check(D::Running, Failed, Plan::Converged);
        check(D::Running, Deleted, Plan::Converged);
        check(D::Stopped, Pending, Plan::MarkStopped);
        check(D::Stopped, Provisioning, Plan::Stop);
        check(D::Stopped, Running, Plan::Stop);
        check(D::Stopped, Stopping, Plan::Stop);
        check(D::Stopped, Stopped, Plan::Converged);
        check(D::Stopped, Failed, Plan::Converged);
        check(D::Deleted, Pending, Plan::MarkDeleted);
        check(D::Deleted, Provisioning, Plan::Delete);
        check(D::Deleted, Running, Plan::Delete);
        check(D::Deleted, Stopped, Plan::Delete);
        check(D::Deleted, Deleting, Plan::Delete);
        check(D::Deleted, Failed, Plan::Delete);
        check(D::Deleted, Deleted, Plan::Converged);
    }

    #[test]
    fn every_step_the_plan_takes_is_an_allowed_transition() {
        for desired in [DesiredState::Running, DesiredState::Stopped, DesiredState::Deleted] {
            for observed in ObservedState::ALL {
                let p = plan(&env(desired, observed), 0);
                let target = match p {
                    Plan::MarkStopped => Some(Stopped),
                    Plan::MarkDeleted => Some(Deleted),
                    _ => in_progress_state(p),
                };
                if let Some(to) = target
                    && to != observed
                {
                    assert!(can_transition(observed, to), "{desired}/{observed}: {p:?}");
                }
            }
        }
    }

    #[test]
    fn a_replaced_spec_remakes_a_wanted_resource_only() {
        let replaced = |d: DesiredState, o: ObservedState| {
            let mut e = env(d, o);
            e.replace = true;
            plan(&e, 0)
        };
        assert_eq!(replaced(DesiredState::Running, Running), Plan::Replace);
        assert_eq!(replaced(DesiredState::Running, Stopped), Plan::Replace);
        // Nothing exists yet: an ordinary provision uses the new spec.
        assert_eq!(replaced(DesiredState::Running, Pending), Plan::Provision);
        assert_eq!(replaced(DesiredState::Stopped, Stopped), Plan::Converged);
        assert_eq!(replaced(DesiredState::Deleted, Running), Plan::Delete);
    }

    #[test]
    fn expiry_comes_first_and_once() {
        let mut e = env(DesiredState::Running, Running);
        assert_eq!(plan(&e, 9_999), Plan::Converged);
        assert_eq!(plan(&e, 10_000), Plan::Expire(DesiredState::Stopped));
        e.on_expiry = OnExpiry::Delete;
        assert_eq!(plan(&e, 10_000), Plan::Expire(DesiredState::Deleted));
        e.expired_at = Some(10_000);
        e.desired = DesiredState::Deleted;
        assert_eq!(plan(&e, 20_000), Plan::Delete);
        // A deleted environment's lease is never acted on.
        let mut gone = env(DesiredState::Deleted, Deleted);
        gone.expires_at = Some(0);
        assert_eq!(plan(&gone, 1), Plan::Converged);
    }

    #[test]
    fn idle_comes_after_expiry_and_only_while_running_unpooled() {
        let mut e = env(DesiredState::Running, Running);
        e.expires_at = None;
        e.idle_timeout = Some(1_000);
        assert_eq!(idle_deadline(&e), Some(1_000));
        assert_eq!(plan(&e, 999), Plan::Converged);
        assert_eq!(plan(&e, 1_000), Plan::Idle(DesiredState::Stopped));
        e.on_idle = OnIdle::Delete;
        assert_eq!(plan(&e, 1_000), Plan::Idle(DesiredState::Deleted));
        // Activity moves the deadline.
        e.last_active_at = Some(5_000);
        assert_eq!(plan(&e, 5_999), Plan::Converged);
        assert_eq!(plan(&e, 6_000), Plan::Idle(DesiredState::Deleted));
        // A lease that ran out comes first.
        e.expires_at = Some(6_000);
        assert_eq!(plan(&e, 6_000), Plan::Expire(DesiredState::Stopped));
        e.expires_at = None;
        // A pool member waiting to be claimed is never idle; nor is what is not running.
        e.pool = Some("p".into());
        assert_eq!(plan(&e, 100_000), Plan::Converged);
        e.pool = None;
        for observed in [Pending, Provisioning, Stopping, Stopped, Failed] {
            e.observed = observed;
            assert!(!matches!(plan(&e, 100_000), Plan::Idle(_)), "{observed}");
        }
    }

    #[test]
    fn a_requested_restart_is_a_provider_step_of_a_running_service() {
        let mut e = env(DesiredState::Running, Running);
        e.restart_requested = true;
        assert_eq!(plan(&e, 0), Plan::Restart);
        assert_eq!(in_progress_state(Plan::Restart), Some(Provisioning));
        e.desired = DesiredState::Stopped;
        assert_eq!(plan(&e, 0), Plan::Stop);
    }

    #[test]
    fn backoff_holds_provider_calls_only() {
        let mut e = env(DesiredState::Running, Provisioning);
        e.next_attempt_at = Some(5_000);
        assert_eq!(plan(&e, 4_000), Plan::WaitUntil(5_000));
        assert_eq!(plan(&e, 5_000), Plan::Provision);
        let mut never_started = env(DesiredState::Stopped, Pending);
        never_started.next_attempt_at = Some(5_000);
        assert_eq!(plan(&never_started, 0), Plan::MarkStopped);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let got: Vec<_> = (1..=7).map(|a| backoff_millis(a, 500, 10_000)).collect();
        assert_eq!(got, [500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
        assert_eq!(backoff_millis(u32::MAX, 500, 10_000), 10_000);
    }
}
