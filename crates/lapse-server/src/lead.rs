//! Which server does what: on SQLite the one server does everything; on PostgreSQL every
//! replica serves and reconciles what it owns, and the one that holds the store's lead runs
//! the work that must run once.
//!
//! Contract:
//! - **Every replica serves the API** (HTTP, the seeds' listeners, the proxy, the dashboard),
//!   writes desired state through the same admission and store transaction, and flushes the
//!   activity it saw.
//! - **Who reconciles an environment** ([`crate::context::Context::owns`]): one on a *local*
//!   provider (its resources live on the host of the server that made them: `process`, `sim`,
//!   `docker` on a unix socket) belongs to the replica that placed it (`placed_on`, set at
//!   admission); everything else (the clouds, a remote engine, rows from before replicas)
//!   belongs to the leader. Every replica runs the reconciler, the timers, the probes and the
//!   sweep of its local providers over what it owns; a step for an environment it does not
//!   own does nothing. So no resource is ever provisioned twice. A replica that dies leaves
//!   its local environments as they are (their leases are enforced when it comes back: it
//!   rebuilds its timers from the store at start); the leader's work moves to the next leader.
//! - **One replica leads** ([`run`]): every [`TRY_EVERY`] a replica tries
//!   [`lapse_store::Store::try_lead`]; the one that gets it (its writes are now fenced with a
//!   new epoch) reads the state again ([`rebuild`]) and starts the leader's work: the sweep of
//!   the providers that are not local, the pool maintainer, the webhooks' deliveries, the
//!   moves, the S3 workspaces and the queue consumers (SWIM).
//! - **What other replicas change** ([`follow_remote`], on every replica): each row another
//!   replica commits is enqueued if this one owns it (its step reschedules its timers), and
//!   the leader's pool maintainer is woken (a claim on another replica). After a gap in the
//!   feed ([`lapse_store::pg::Remote::Missed`], a lagged receiver), when a replica disappears
//!   (it may have died between a commit and telling the others) and every [`RESYNC_EVERY`]
//!   regardless, the state is read again.
//! - **Losing the lead** (its lock's connection is lost): the leader's work is stopped at
//!   once, no new step starts for what the leader owns, the steps in flight get up to
//!   [`DRAIN`] to end (a newer leader's fencing refuses whatever they would still write),
//!   then the store steps down (unfenced) and the replica tries again.
//! - The lead's change is logged and shown ([`Role`], `GET /v1/status`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use lapse_store::StoreError;
use lapse_store::pg::Remote;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::context::Context;
use crate::reconciler::Reconciler;

/// How often a follower tries to take the lead.
pub const TRY_EVERY: Duration = Duration::from_millis(500);

/// How often the leader reads the whole state again, feed or not.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// How long the steps in flight get to end when the lead is lost, before the fence lifts.
pub const DRAIN: Duration = Duration::from_secs(10);

/// How often the leader looks at who is connected (a replica gone means: read again).
const REPLICAS_EVERY: Duration = Duration::from_secs(1);

/// Whether this server leads now, and with which epoch.
#[derive(Debug)]
pub struct Role {
    leading: AtomicBool,
    /// The lead's fencing epoch (0 on SQLite or while following).
    epoch: AtomicI64,
}

impl Default for Role {
    /// Leading: a server on SQLite always does; on PostgreSQL [`run`] starts it following.
    fn default() -> Role {
        Role { leading: AtomicBool::new(true), epoch: AtomicI64::new(0) }
    }
}

impl Role {
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// The lead's fencing epoch, while this replica leads on PostgreSQL.
    pub fn epoch(&self) -> Option<i64> {
        Some(self.epoch.load(Ordering::SeqCst)).filter(|&e| e > 0 && self.leading())
    }

    fn lead(&self, epoch: i64) {
        self.epoch.store(epoch, Ordering::SeqCst);
        self.leading.store(true, Ordering::SeqCst);
    }

    pub(crate) fn follow(&self) {
        self.leading.store(false, Ordering::SeqCst);
        self.epoch.store(0, Ordering::SeqCst);
    }
}

/// Starts the leader's work; the handles are aborted when the lead is lost.
pub type Spawn = Arc<dyn Fn() -> Vec<JoinHandle<()>> + Send + Sync>;

/// Timers and the reconciler's queue from the store: every lease expiry and idle deadline
/// scheduled, every environment that is not converged (or arms a warning) enqueued.
pub async fn rebuild(cx: &Context, reconciler: &Reconciler) -> Result<Rebuilt, StoreError> {
    let expiries = cx.store.pending_expiries().await?;
    for (id, at) in &expiries {
        cx.timers.schedule(*at, id);
    }
    for (id, at) in cx.store.idle_deadlines().await? {
        cx.timers.schedule(at, &id);
    }
    // Running environments with pre-expiry warnings: their step arms the next mark.
    for id in cx.store.warning_ids().await? {
        reconciler.enqueue(&id);
    }
    let unconverged = cx.store.unconverged_ids().await?;
    for id in &unconverged {
        reconciler.enqueue(id);
    }
    Ok(Rebuilt { timers: expiries.len(), unconverged: unconverged.len() })
}

/// What [`rebuild`] found.
#[derive(Clone, Copy, Debug)]
pub struct Rebuilt {
    pub timers: usize,
    pub unconverged: usize,
}

/// On PostgreSQL: takes the lead when it is free, runs the leader's work while it leads, and
/// follows again when it is lost (see the module docs). Never returns.
pub async fn run(cx: Arc<Context>, reconciler: Reconciler, spawn: Spawn) {
    loop {
        crate::health::tick("lead");
        let lead = match cx.store.try_lead().await {
            Ok(Some(lead)) => lead,
            Ok(None) => {
                tokio::time::sleep(TRY_EVERY).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not try to take the lead; trying again");
                tokio::time::sleep(TRY_EVERY).await;
                continue;
            }
        };
        lead_until_lost(&cx, &reconciler, &spawn, lead).await;
    }
}

async fn lead_until_lost(cx: &Arc<Context>, reconciler: &Reconciler, spawn: &Spawn, mut lead: lapse_store::pg::Lead) {
    let took = std::time::Instant::now();
    cx.role.lead(lead.epoch);
    let mut tasks = Vec::new();
    let rebuilt = tokio::select! {
        rebuilt = rebuild(cx, reconciler) => Some(rebuilt),
        reason = lead.lost() => {
            tracing::error!(%reason, "lost the lead while taking it");
            None
        }
    };
    match rebuilt {
        Some(Ok(rebuilt)) => {
            tracing::info!(
                epoch = lead.epoch,
                timers = rebuilt.timers,
                unconverged = rebuilt.unconverged,
                took_ms = took.elapsed().as_millis() as u64,
                "this replica leads: the leader's work runs here, state read again from the store"
            );
            tasks = spawn();
            let reason = lead.lost().await;
            tracing::error!(%reason, epoch = lead.epoch, "the lead is lost: stopping the leader's work, following");
        }
        Some(Err(e)) => tracing::error!(error = %e, "reading the state to lead failed: following, trying again"),
        None => {}
    }
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    // No step starts now for what the leader owns; those in flight may still be one.
    cx.role.follow();
    let drained = tokio::time::Instant::now() + DRAIN;
    while reconciler.running() > 0 && tokio::time::Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(lead);
    cx.store.step_down();
    tokio::time::sleep(TRY_EVERY).await;
}

/// Every replica's ear on the others (see the module docs). Returns at once on SQLite.
pub async fn follow_remote(cx: Arc<Context>, reconciler: Reconciler) {
    let Some(mut changes) = cx.store.remote_changes() else { return };
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.tick().await;
    let mut look = tokio::time::interval(REPLICAS_EVERY);
    let mut known: Option<std::collections::BTreeSet<String>> = None;
    loop {
        let again = tokio::select! {
            change = changes.recv() => match change {
                Ok(Remote::Changed(env)) => {
                    if cx.owns(&env) {
                        reconciler.enqueue(&env.id);
                    }
                    if cx.role.leading() && (env.pool.is_some() || env.pool_version.is_some()) {
                        cx.pool_wake.notify_one();
                    }
                    false
                }
                Ok(Remote::Missed) => {
                    tracing::warn!("the change feed across replicas had a gap: reading the state again");
                    true
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "fell behind the change feed across replicas: reading the state again");
                    true
                }
                Err(RecvError::Closed) => return,
            },
            _ = resync.tick() => true,
            _ = look.tick() => {
                let now: Option<std::collections::BTreeSet<String>> = match cx.store.replicas().await {
                    Ok(list) => list.map(|l| l.into_iter().map(|r| r.id).collect()),
                    Err(e) => {
                        tracing::debug!(error = %e, "listing the replicas failed");
                        None
                    }
                };
                let gone = match (&known, &now) {
                    (Some(before), Some(now)) => before.difference(now).cloned().collect::<Vec<_>>(),
                    _ => Vec::new(),
                };
                if now.is_some() {
                    known = now;
                }
                if !gone.is_empty() {
                    tracing::info!(?gone, "replicas left: reading the state again for what they wrote last");
                }
                !gone.is_empty()
            }
        };
        if again {
            cx.pool_wake.notify_one();
            if let Err(e) = rebuild(&cx, &reconciler).await {
                tracing::warn!(error = %e, "reading the state again failed; the next resync retries");
            }
        }
    }
}

/// What a follower keeps fresh for the API it serves: the pooled spec hashes (so a create
/// here tries a claim), which the leader's pool maintainer keeps on the leader. Never returns.
pub async fn follower_upkeep(cx: Arc<Context>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        crate::health::tick("lead");
        if cx.role.leading() {
            continue;
        }
        match cx.store.list_pools().await {
            Ok(pools) => cx.set_pooled_hashes(pools.iter().map(|p| p.spec.hash())),
            Err(e) => tracing::debug!(error = %e, "reading the pools failed"),
        }
    }
}
