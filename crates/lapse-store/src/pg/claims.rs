//! Warm claims on PostgreSQL, batched per replica (group commit).
//!
//! One transaction per claim costs a commit (an fsync) each, and event appends commit one
//! after the other ([`super::EVENTS_LOCK`]): that caps claims near the commit rate. So each
//! [`PgStore`] hands its claims to one task that takes every claim waiting (up to
//! [`MAX_BATCH`], no time window: a lone claim goes at once) and commits them together:
//! 1. the tenants of claims with a quota are locked, all in one statement, in the order of
//!    their locks' keys (the same keys [`super::write::lock_tenant`] takes, so no cycle with
//!    single-claim transactions, nor between two batches);
//! 2. per spec hash, one claim query ([`super::claim_query`]) locks as many claimable members
//!    as there are claims, skipping those other replicas hold (`SKIP LOCKED`);
//! 3. each claim, in arrival order, takes the next member: a claim with a quota is checked
//!    against what its tenant holds, including the members this batch already gave it; a
//!    refused claim ([`StoreError::Refused`]) leaves its member for the next claim;
//! 4. the members are written in one statement, the closures' events appended in one, and
//!    the transaction commits once; each caller is answered after the commit.
//!
//! A batch that fails as a whole (a lost connection, a deadlock) is replayed claim by claim,
//! each in its own transaction: a claim's closure may run more than once, as on SQLite.

use std::collections::{BTreeMap, HashMap, VecDeque};

use lapse_core::model::{Environment, Spec};
use lapse_core::now_millis;
use lapse_core::quota::{Quota, Usage};
use tokio::sync::{mpsc, oneshot};

use super::PgStore;
use super::append_events;
use super::write::{TENANT_LOCK_CLASS, lock_tenant, usage, write_rows};
use crate::Op as _;
use crate::rows::environment_from;
use crate::{NewEvent, StoreError};

/// Claims committed together at most.
pub const MAX_BATCH: usize = 256;

/// Claims waiting for the batcher at most; a caller beyond it waits for room.
const QUEUE: usize = 4096;

/// What a claim does to its member (it sees the pool the member leaves).
pub(crate) type ClaimFn = Box<dyn FnMut(&mut Environment) -> Vec<NewEvent> + Send>;

type Outcome = Result<Option<Environment>, StoreError>;

pub(crate) struct ClaimRequest {
    spec_hash: String,
    admit: Option<(String, Quota)>,
    claim: ClaimFn,
    reply: oneshot::Sender<Outcome>,
}

/// The sending side of a store's claim batcher.
#[derive(Clone, Debug)]
pub(crate) struct Claims {
    queue: mpsc::Sender<ClaimRequest>,
}

impl Claims {
    /// Starts the batcher of `store` (a clone without a batcher of its own); it ends when
    /// every [`Claims`] is dropped.
    pub(crate) fn start(store: PgStore) -> Claims {
        let (queue, mut rx) = mpsc::channel::<ClaimRequest>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                store.claim_batch(std::mem::take(&mut batch)).await;
            }
        });
        Claims { queue }
    }
}

impl PgStore {
    /// [`crate::Store::claim`] through the batcher (see the module docs).
    pub(crate) async fn claim_batched(
        &self,
        claims: &Claims,
        spec_hash: &str,
        admit: Option<(&str, &Quota)>,
        claim: ClaimFn,
    ) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let request = ClaimRequest {
            spec_hash: spec_hash.to_owned(),
            admit: admit.map(|(t, q)| (t.to_owned(), q.clone())),
            claim,
            reply,
        };
        claims
            .queue
            .send(request)
            .await
            .map_err(|_| StoreError::Refused("store: the claim batcher has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Refused("store: the claim batcher has stopped".into()))?
    }

    async fn claim_batch(&self, mut batch: Vec<ClaimRequest>) {
        let together = self.try_batch(&mut batch).await;
        match self.observed(together) {
            Ok(outcomes) => {
                self.claim_batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    if let Ok(Some(env)) = &outcome {
                        self.published(env);
                    }
                    let _ = request.reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, claims = batch.len(), "a claim batch failed; replaying its claims one by one");
                for mut request in batch {
                    let admit = request.admit.as_ref().map(|(t, q)| (t.as_str(), q));
                    let outcome = self.claim_alone(&request.spec_hash, admit, &mut request.claim).await;
                    let _ = request.reply.send(outcome);
                }
            }
        }
    }

    /// One transaction for the whole batch; the outcome of each claim, in order.
    async fn try_batch(&self, batch: &mut [ClaimRequest]) -> Result<Vec<Outcome>, StoreError> {
        let mut tx = self.begin("claim").await?;
        let tenants: Vec<&str> = batch.iter().filter_map(|r| r.admit.as_ref().map(|(t, _)| t.as_str())).collect();
        let mut held: HashMap<String, Usage> = HashMap::new();
        if !tenants.is_empty() {
            sqlx::query(
                "SELECT pg_advisory_xact_lock($1, k) FROM \
                 (SELECT DISTINCT hashtext(t) AS k FROM unnest($2::text[]) AS t ORDER BY 1) AS keys",
            )
            .bind(TENANT_LOCK_CLASS)
            .bind(&tenants)
            .execute(&mut *tx)
            .await
            .op("lock tenants")?;
            for tenant in tenants {
                if !held.contains_key(tenant) {
                    let now = usage(&mut tx, tenant).await?;
                    held.insert(tenant.to_owned(), now);
                }
            }
        }
        let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
        for request in batch.iter() {
            *wanted.entry(request.spec_hash.as_str()).or_default() += 1;
        }
        let mut members: HashMap<String, VecDeque<Environment>> = HashMap::new();
        for (hash, n) in wanted {
            let rows =
                sqlx::query(super::pools::claim_one()).bind(hash).bind(n).fetch_all(&mut *tx).await.op("claim")?;
            let found: Result<VecDeque<Environment>, StoreError> = rows.iter().map(environment_from).collect();
            members.insert(hash.to_owned(), found?);
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut claimed = Vec::new();
        let mut events = Vec::new();
        for request in batch.iter_mut() {
            let Some(queue) = members.get_mut(&request.spec_hash) else {
                outcomes.push(Ok(None));
                continue;
            };
            let Some(mut env) = queue.pop_front() else {
                outcomes.push(Ok(None));
                continue;
            };
            if let Some((tenant, quota)) = &request.admit {
                let holds = held.get_mut(tenant).expect("every admitted tenant's usage was read");
                if let Err(why) = quota.admit(holds, &env.spec) {
                    queue.push_front(env);
                    outcomes.push(Err(StoreError::Refused(why)));
                    continue;
                }
                add(holds, &env.spec);
            }
            events.extend((request.claim)(&mut env));
            env.pool = None;
            env.pool_version = None;
            env.updated_at = now_millis();
            outcomes.push(Ok(Some(env.clone())));
            claimed.push(env);
        }
        if !claimed.is_empty() {
            write_rows(&mut tx, &claimed).await?;
            append_events(&mut tx, &events).await?;
        }
        tx.commit().await.op("claim")?;
        Ok(outcomes)
    }

    /// One claim in its own transaction (the batch's replay, and the path without a batcher).
    pub(crate) async fn claim_alone(
        &self,
        spec_hash: &str,
        admit: Option<(&str, &Quota)>,
        claim: &mut ClaimFn,
    ) -> Outcome {
        let outcome = async {
            let mut tx = self.begin("claim").await?;
            if let Some((tenant, _)) = admit {
                lock_tenant(&mut tx, tenant).await?;
            }
            let row = sqlx::query(super::pools::claim_one())
                .bind(spec_hash)
                .bind(1_i64)
                .fetch_optional(&mut *tx)
                .await
                .op("claim")?;
            let Some(row) = row else { return Ok(None) };
            let mut env = environment_from(&row)?;
            if let Some((tenant, quota)) = admit {
                let held = usage(&mut tx, tenant).await?;
                quota.admit(&held, &env.spec).map_err(StoreError::Refused)?;
            }
            // The closure sees which pool the member leaves; then it is no longer the pool's.
            let events = claim(&mut env);
            env.pool = None;
            env.pool_version = None;
            env.updated_at = now_millis();
            write_rows(&mut tx, std::slice::from_ref(&env)).await?;
            append_events(&mut tx, &events).await?;
            tx.commit().await.op("claim")?;
            Ok(Some(env))
        };
        let claimed = self.observed(outcome.await)?;
        if let Some(env) = &claimed {
            self.published(env);
        }
        Ok(claimed)
    }
}

/// `usage` with one more environment of `spec`, counted as [`usage`]'s query counts it.
fn add(usage: &mut Usage, spec: &Spec) {
    let asked = spec.resources.clone().unwrap_or_default();
    usage.environments = usage.environments.saturating_add(1);
    usage.vcpu += asked.vcpu.unwrap_or(0.0);
    usage.mem_mb = usage.mem_mb.saturating_add(asked.mem_mb.unwrap_or(0));
    usage.disk_gb = usage.disk_gb.saturating_add(asked.disk_gb.unwrap_or(0));
}
