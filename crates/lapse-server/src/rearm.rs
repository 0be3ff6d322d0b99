//! Moving a running cloud VM's own lease backstop when its lease moves (`extend`): the
//! reconciler calls [`lapse_providers::Provider::rearm`] (the VM's `lapse:expires-at` tag,
//! its deadline file over SSH) for a **running** environment whose `expires_at` differs from
//! the one last armed.
//!
//! **Why the reconciler, not the sweep.** `extend` commits the new `expires_at` and enqueues
//! the environment; the reconciler's next step for it (planned `WaitUntil`/`Converged`)
//! compares the record with what this process last armed and calls `rearm`. The record is the
//! truth and the step reads it, so the hook takes no input from the extend itself. What was
//! armed is kept in memory only ([`Armed`]): after a restart nothing is known to be armed, so
//! the sweep (which runs at start and every `sweep_interval`) enqueues each running
//! environment once, and its step arms it again. A crash between the extend's commit and the
//! `rearm` call therefore ends in a `rearm` after the restart; `rearm` is idempotent, so
//! arming twice costs one tag write and one SSH command. Provisioning records the deadline it
//! booted the VM with (its user data holds it), so a fresh VM is not armed twice.
//!
//! **A failed rearm never fails the extend** (which has committed): it is recorded as an
//! event (`rearm`, `error`, with the provider's bounded text) and retried by a timer with the
//! reconciler's back-off until it succeeds; the success after failures is an event too.

use std::collections::HashMap;
use std::sync::Mutex;

use lapse_core::Millis;
use lapse_core::model::{Environment, ObservedState};
use lapse_core::state::backoff_millis;
use lapse_providers::Placement;
use lapse_store::NewEvent;

use crate::context::Context;

/// What this process last armed per environment, and how many rearms failed since.
#[derive(Debug, Default)]
pub struct Armed {
    state: Mutex<HashMap<String, (Option<Millis>, u32)>>,
}

impl Armed {
    /// Whether the environment runs with a deadline other than the one last armed (or none
    /// is known to be armed, after a restart).
    pub fn moved(&self, env: &Environment) -> bool {
        if env.observed != ObservedState::Running {
            return false;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.get(&env.id).is_none_or(|(at, _)| *at != env.expires_at)
    }

    /// Whether nothing is known of the environment's backstop (the sweep enqueues it).
    pub fn unknown(&self, id: &str) -> bool {
        !self.state.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    /// The VM's backstop holds `at` (it booted with it, or a rearm succeeded).
    pub fn set(&self, id: &str, at: Option<Millis>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), (at, 0));
    }

    /// The environment is gone: nothing to remember.
    pub fn forget(&self, id: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// One more failure; answers how many in a row, keeping what was armed before.
    fn failed(&self, id: &str) -> u32 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // `Some(Millis::MIN)`: never equal to a real deadline, so the next step tries again.
        let entry = state.entry(id.to_owned()).or_insert((Some(Millis::MIN), 0));
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }

    fn failures(&self, id: &str) -> u32 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).get(id).map_or(0, |(_, n)| *n)
    }
}

/// Calls the provider's `rearm` for `env` and records the outcome; never fails. It gets at
/// most until the lease runs out (`now`): the step that expires the environment waits for
/// this one, and a backstop is no reason to end a lease late (an unreachable VM's SSH would
/// hold it for its whole connect timeout).
pub async fn rearm(cx: &Context, armed: &Armed, env: &Environment, now: Millis) {
    let Some(provider) = cx.providers.get(&env.spec.provider).cloned() else { return };
    let placement = Placement {
        tenant: env.tenant.clone(),
        expires_at: env.expires_at,
        on_expiry: env.on_expiry,
        labels: env.labels.clone(),
        lifecycle: env.lifecycle,
    };
    let before = armed.failures(&env.id);
    let call = provider.rearm(&env.id, &placement);
    let result = match env.expires_at {
        Some(at) => {
            let left = std::time::Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
            match tokio::time::timeout(left, call).await {
                Ok(done) => done.map_err(|e| e.recorded()),
                Err(_) => Err(format!("not done within {} ms, when the lease runs out", left.as_millis())),
            }
        }
        None => call.await.map_err(|e| e.recorded()),
    };
    match result {
        Ok(()) => {
            armed.set(&env.id, env.expires_at);
            if before > 0 {
                let event = NewEvent::new(
                    &env.id,
                    "reconciler",
                    "rearm",
                    "ok",
                    format!("backstop moved after {before} failure(s)"),
                );
                if let Err(e) = cx.store.append_event(event).await {
                    tracing::warn!(environment = %env.id, error = %e, "could not record a rearm");
                }
            }
        }
        Err(text) => {
            let attempt = armed.failed(&env.id);
            let retry = &cx.config.retry;
            let wait = backoff_millis(attempt, retry.base.as_millis() as i64, retry.cap.as_millis() as i64);
            tracing::warn!(environment = %env.id, error = %text, attempt, "moving the VM's own lease backstop failed; retrying");
            let event = NewEvent::new(
                &env.id,
                "reconciler",
                "rearm",
                "error",
                format!("moving the VM's own lease backstop failed (attempt {attempt}), next in {wait} ms: {text}"),
            );
            if let Err(e) = cx.store.append_event(event).await {
                tracing::warn!(environment = %env.id, error = %e, "could not record a failed rearm");
            }
            cx.timers.schedule(cx.clock.now() + wait, &env.id);
        }
    }
}
