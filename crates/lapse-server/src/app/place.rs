//! Placing an environment that a create or an upsert admitted: a warm pool member claimed
//! for it in one transaction (with a claim's parameters handed over through the pool's hook,
//! [`crate::claim_hook`]), or a cold start inserted for the reconciler.

use std::sync::Arc;
use std::time::Duration;

use lapse_core::duration;
use lapse_core::model::Environment;
use lapse_store::NewEvent;

use super::{App, AppError, Created, invalid, refused};
use crate::admission::Principal;

/// How many warm members a create with parameters tries before a cold start.
const CLAIM_ATTEMPTS: usize = 3;

/// An environment's lease as text for events: `1h`, or `none`.
fn ttl_text(env: &Environment) -> String {
    env.expires_at.map_or("none".to_owned(), |at| {
        duration::format_duration(Duration::from_millis(u64::try_from(at - env.created_at).unwrap_or(0)))
    })
}

/// The pool key a create claims by: its spec's hash without its workspace (a workspace is
/// the claim's, given to the member it takes, as a claim's parameters are).
fn claim_hash(spec: &lapse_core::model::Spec) -> String {
    match &spec.workspace {
        None => spec.hash(),
        Some(_) => lapse_core::model::Spec { workspace: None, ..spec.clone() }.hash(),
    }
}

impl App {
    /// Makes `wanted` exist: claims a warm pool member of the same spec and gives it
    /// `wanted`'s identity and lease (one transaction), or inserts `wanted` to be provisioned.
    pub(super) async fn place(&self, wanted: Environment, who: &Principal) -> Result<Created, AppError> {
        if self.cx.is_pooled(&claim_hash(&wanted.spec))
            && let Some((env, _)) = self.claim_member(&wanted, who, false).await?
        {
            return Ok(self.placed(env, true));
        }
        self.insert_cold(wanted, who).await
    }

    /// Claims a warm member for `wanted` (one transaction), answering it and the pool it
    /// left; `pending` marks it for a claim hook ([`crate::claim_hook`]).
    async fn claim_member(
        &self,
        wanted: &Environment,
        who: &Principal,
        pending: bool,
    ) -> Result<Option<(Environment, String)>, AppError> {
        let actor = who.actor.clone();
        let ttl_text = ttl_text(wanted);
        // The pool the member left, seen by the claim (which runs on the store's writer).
        let left = Arc::new(std::sync::Mutex::new(String::new()));
        let seen = left.clone();
        let wanted = wanted.clone();
        let claimed = self
            .cx
            .store
            .claim(&claim_hash(&wanted.spec), who.limits(), move |e| {
                let pool = e.pool.clone().unwrap_or_default();
                seen.lock().unwrap_or_else(|p| p.into_inner()).clone_from(&pool);
                // A workspace belongs to the claim, not to the pool: the member gets the
                // create's, and the syncer pulls it once the member is claimed.
                e.spec.workspace = wanted.spec.workspace.clone();
                e.name = wanted.name.clone();
                e.tenant = wanted.tenant.clone();
                e.owner = wanted.owner.clone();
                e.labels = wanted.labels.clone();
                if pending {
                    e.labels.insert(crate::claim_hook::PENDING_LABEL.into(), crate::claim_hook::PENDING.into());
                }
                e.lifecycle = wanted.lifecycle;
                e.max_retries = wanted.max_retries;
                e.expires_at = wanted.expires_at;
                e.on_expiry = wanted.on_expiry;
                e.job_id = wanted.job_id.clone();
                e.source = wanted.source.clone();
                e.seed_spec = wanted.seed_spec.clone();
                // Claimed: its idle window starts now, not when the pool made it.
                e.idle_timeout = wanted.idle_timeout;
                e.on_idle = wanted.on_idle;
                e.last_active_at = Some(wanted.created_at);
                let message = format!("claimed from pool {pool} for {}, ttl {ttl_text}", wanted.owner);
                vec![NewEvent::new(&e.id, &actor, "claim", "ok", message)]
            })
            .await
            .map_err(refused)?;
        let pool = std::mem::take(&mut *left.lock().unwrap_or_else(|p| p.into_inner()));
        if claimed.is_some() {
            self.cx.claim_rate.record(&pool, self.cx.clock.now());
            self.cx.pool_wake.notify_one();
        }
        Ok(claimed.map(|env| (env, pool)))
    }

    /// Inserts `wanted` to be provisioned (a cold start).
    async fn insert_cold(&self, wanted: Environment, who: &Principal) -> Result<Created, AppError> {
        let message = format!(
            "{} {} for {}, ttl {}, on expiry {}",
            wanted.lifecycle,
            wanted.spec.provider,
            wanted.owner,
            ttl_text(&wanted),
            wanted.on_expiry
        );
        let event = NewEvent::new(&wanted.id, &who.actor, "create", "ok", message);
        let inserted = match who.limits() {
            Some((_, q)) => self.cx.store.insert_admitted(&wanted, event, q).await,
            None => self.cx.store.insert(&wanted, event).await,
        };
        inserted.map_err(|e| match e {
            // Another request took the same `job_id` between our read and this write.
            e if e.is_conflict() => AppError::Conflict(format!(
                "job {} was created meanwhile; retry to update it",
                wanted.job_id.as_deref().unwrap_or(&wanted.id)
            )),
            e => refused(e),
        })?;
        Ok(self.placed(wanted, false))
    }

    /// Arms the expiry and hands a placed environment to the reconciler.
    fn placed(&self, env: Environment, claimed: bool) -> Created {
        if let Some(at) = env.expires_at {
            self.cx.timers.schedule(at, &env.id);
        }
        self.reconciler.enqueue(&env.id);
        Created { env, claimed }
    }

    /// [`App::place`] for a create with claim parameters: a warm member of a pool with an
    /// `on_claim` hook takes them through it ([`crate::claim_hook`]); one whose hook fails is
    /// recycled and the next is tried; without one, a cold start gets `params.env` in its
    /// spec's environment (its `files` need a member's hook: refused when no pool can take
    /// them).
    pub(super) async fn place_with_params(
        &self,
        wanted: Environment,
        who: &Principal,
        params: &lapse_core::claim::ClaimParams,
    ) -> Result<Created, AppError> {
        let hash = claim_hash(&wanted.spec);
        // With replicas, a local provider's warm members are on the host of the replica that
        // made them, the leader (it fills the pools): another could not run their hook, and a
        // member whose hook fails is recycled, so another replica starts cold.
        let reachable = self.cx.placement_for(&wanted.spec.provider).is_none() || self.cx.role.leading();
        if !reachable && !params.files.is_empty() {
            return Err(AppError::Conflict(format!(
                "warm members of provider {:?} are on the leading replica's host, and params.files need one; send \
                 this claim to the leader (lapse status --server)",
                wanted.spec.provider
            )));
        }
        let hooked = reachable
            && self.cx.is_pooled(&hash)
            && self.cx.store.list_pools().await?.iter().any(|p| p.spec.hash() == hash && p.on_claim.is_some());
        if hooked {
            for _ in 0..CLAIM_ATTEMPTS {
                let Some((env, pool)) = self.claim_member(&wanted, who, true).await? else { break };
                let hook = self.cx.store.get_pool(&pool).await?.and_then(|p| p.on_claim);
                let delivered = match (&hook, self.provider_of(&env)) {
                    (Some(hook), Ok(provider)) => {
                        crate::claim_hook::deliver(provider.as_ref(), &env, hook, params).await
                    }
                    (None, _) => Err(format!("pool {pool} has no on_claim hook to take the parameters")),
                    (_, Err(e)) => Err(e.to_string()),
                };
                match delivered {
                    Ok(()) => {
                        let env = crate::claim_hook::finish(&self.cx, &env.id, &who.actor).await?.unwrap_or(env);
                        return Ok(self.placed(env, true));
                    }
                    Err(why) => {
                        tracing::warn!(environment = %env.id, %pool, reason = %why, "claim hook failed; member recycled");
                        crate::claim_hook::recycle(&self.cx, &env.id, &who.actor, &why).await?;
                        self.reconciler.enqueue(&env.id);
                    }
                }
            }
        } else if !params.files.is_empty() {
            return Err(invalid("params.files", "no pool of this spec has an on_claim hook to write them"));
        }
        if !params.files.is_empty() {
            return Err(AppError::Conflict(
                "no warm member took the parameters, and params.files cannot reach a cold start; retry when the pool \
                 has refilled"
                    .into(),
            ));
        }
        let mut cold = wanted;
        cold.spec.env.extend(params.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.insert_cold(cold, who).await
    }
}
