//! Warm pools: the maintainer keeps each pool's `min` members running and unclaimed.
//!
//! Members are ordinary environments with `pool` set, no expiry, owned by `pool:<name>`.
//! Claiming one (see [`crate::app::App::create`]) is one store transaction that clears `pool`,
//! so **a claimed member never returns to a pool** and two claims never get the same member.
//!
//! Each round, for every pool: members of another spec or version, failed or stopped members,
//! and members of deleted pools are recycled (desired `deleted`); if more than `max` remain, the
//! extra are recycled, not-yet-running ones first; if fewer than `min`, new members are
//! inserted in one batch and handed to the reconciler. A round runs after every claim and
//! pool change (a `Notify`), and every second regardless.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lapse_core::model::{DesiredState, Environment, NO_TENANT, ObservedState, Pool, new_environment_id};
use lapse_store::{MemberState, NewEvent, StoreError};

use crate::admission::{self, HostGuard, Principal};
use crate::context::Context;
use crate::reconciler::Reconciler;

/// Most members one round creates (a round follows right after when more are needed).
const MAX_BATCH: usize = 1_000;

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub created: usize,
    pub recycled: usize,
}

pub async fn run(cx: Arc<Context>, reconciler: Reconciler) {
    // Members claimed by a server that died during their claim hook never reached the caller.
    match crate::claim_hook::recycle_pending(&cx).await {
        Ok(ids) => {
            for id in &ids {
                reconciler.enqueue(id);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not look for unfinished claim hooks; the next start retries"),
    }
    loop {
        crate::health::tick("pools");
        let woken = cx.pool_wake.notified();
        match round(&cx, &reconciler).await {
            // More to do: go again at once.
            Ok(report) if report.created >= MAX_BATCH => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pool maintenance failed; retrying"),
        }
        tokio::select! {
            // A burst of claims wakes it many times: one round after the burst does for all.
            _ = woken => tokio::time::sleep(Duration::from_millis(20)).await,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

pub async fn round(cx: &Context, reconciler: &Reconciler) -> Result<RoundReport, StoreError> {
    let pools: BTreeMap<String, Pool> = cx.store.list_pools().await?.into_iter().map(|p| (p.name.clone(), p)).collect();
    cx.set_pooled_hashes(pools.values().map(|p| p.spec.hash()));
    let mut members: BTreeMap<String, Vec<MemberState>> = BTreeMap::new();
    for m in cx.store.pool_member_states().await? {
        members.entry(m.pool.clone()).or_default().push(m);
    }
    let mut report = RoundReport::default();
    let mut recycle: Vec<(String, &'static str)> = Vec::new();

    for (name, list) in &members {
        if !pools.contains_key(name) {
            recycle.extend(
                list.iter()
                    .filter(|m| m.desired != DesiredState::Deleted)
                    .map(|m| (m.id.clone(), "its pool was deleted")),
            );
        }
    }
    let now = cx.clock.now();
    let mut fresh = Vec::new();
    let mut events = Vec::new();
    for pool in pools.values() {
        let hash = pool.spec.hash();
        let mut live: Vec<&MemberState> = Vec::new();
        for m in members.get(&pool.name).map(Vec::as_slice).unwrap_or_default() {
            if m.desired == DesiredState::Deleted {
                continue;
            }
            if m.spec_hash != hash || m.pool_version.as_deref() != Some(pool.version.as_str()) {
                recycle.push((m.id.clone(), "its pool's spec or version changed"));
            } else if m.observed == ObservedState::Failed {
                recycle.push((m.id.clone(), "it failed"));
            } else if m.desired == DesiredState::Stopped {
                // It exited on its own: it can never be claimed running.
                recycle.push((m.id.clone(), "it stopped"));
            } else {
                live.push(m);
            }
        }
        let max = pool.max.max(pool.min) as usize;
        if live.len() > max {
            // Keep running members; drop the ones still starting first.
            live.sort_by_key(|m| m.observed == ObservedState::Running);
            let extra = live.len() - max;
            recycle.extend(live.drain(..extra).map(|m| (m.id.clone(), "the pool holds more than its max")));
        }
        let mut need = (pool.min as usize).saturating_sub(live.len()).min(MAX_BATCH - fresh.len().min(MAX_BATCH));
        if need > 0
            && let Some(why) = crate::host::refusal(&pool.spec.provider, &cx.config)
        {
            tracing::warn!(pool = %pool.name, missing = need, "not refilling: {why}");
            need = 0;
        }
        let operator = Principal::operator(NO_TENANT, "pool");
        for _ in 0..need {
            let mut e = Environment::new(new_environment_id(), format!("pool:{}", pool.name), pool.spec.clone(), now);
            e.pool = Some(pool.name.clone());
            e.pool_version = Some(pool.version.clone());
            e.lifecycle = pool.lifecycle;
            e.source = "pool".into();
            // Members are nobody's until claimed; they pass the same admission as any create.
            if let Err(why) = admission::admit(cx, &mut e, &operator, HostGuard::Checked).await {
                tracing::warn!(pool = %pool.name, error = %why, "not refilling: its spec is not admitted");
                break;
            }
            events.push(NewEvent::new(
                &e.id,
                "pool",
                "create",
                "ok",
                format!("warm member of pool {} (version {})", pool.name, pool.version),
            ));
            fresh.push(e);
        }
    }

    if !fresh.is_empty() {
        cx.store.insert_many(&fresh, &events).await?;
        for e in &fresh {
            reconciler.enqueue(&e.id);
        }
        report.created = fresh.len();
    }
    for (id, why) in recycle {
        let done = cx
            .store
            .update(&id, |e| {
                // Claimed since the read: it is somebody's now, not the pool's.
                if e.pool.is_none() || e.desired == DesiredState::Deleted {
                    return Err(Skip);
                }
                e.desired = DesiredState::Deleted;
                Ok(vec![NewEvent::new(&e.id, "pool", "recycle", "ok", format!("recycled: {why}"))])
            })
            .await;
        // `Ok(None)` (gone) and `Err(Skip)` (claimed, or already going) need nothing.
        if let Ok(Some(_)) = done {
            reconciler.enqueue(&id);
            report.recycled += 1;
        }
    }
    if report != RoundReport::default() {
        tracing::debug!(?report, "pool round");
    }
    Ok(report)
}

/// The member was claimed or is already going.
#[derive(Debug)]
struct Skip;

impl From<StoreError> for Skip {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "recycling a pool member failed; the next round tries again");
        Skip
    }
}
