//! The store's one face: [`Store`], on SQLite (the embedded default, [`Store::open`]) or on
//! PostgreSQL ([`Store::connect_postgres`]), with one API and one contract whichever holds
//! it. Every method forwards to the backend's method of the same name and signature
//! ([`SqliteStore`], [`PgStore`]); the contracts are written here and kept by both, and the
//! store's tests run against both (`LAPSE_TEST_STORE=postgres`, see `tests/mod.rs`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use lapse_core::Millis;
use lapse_core::model::{Environment, Pool};
use lapse_core::quota::{Quota, Usage};
use lapse_core::wire::Event;
use lapse_core::workspace::WorkspaceStatus;

use crate::pg::{HeldLock, PgError, PgStore};
use crate::*;

/// The store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Pg(PgStore),
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store { backend: Backend::Sqlite(SqliteStore::open(path).await?) })
    }

    /// Connects to PostgreSQL at `url` and migrates it ([`PgStore::connect`]'s contract).
    pub async fn connect_postgres(url: &str) -> Result<Store, PgError> {
        Ok(Store { backend: Backend::Pg(PgStore::connect(url).await?) })
    }

    /// [`Store::connect_postgres`] as replica `replica` ([`PgStore::connect_as`]): refused if
    /// a replica of that id is connected already ([`PgError::ReplicaInUse`]).
    pub async fn connect_postgres_as(url: &str, replica: &str) -> Result<Store, PgError> {
        Ok(Store { backend: Backend::Pg(PgStore::connect_as(url, replica).await?) })
    }

    /// On PostgreSQL, the server lock every replica holds shared ([`PgStore::hold_server_lock`]:
    /// refused while `lapse migrate` copies into the database; its `lost` resolves when the
    /// hold is lost). On SQLite, `None`: the data dir's lock does that.
    pub async fn hold_server_lock(&self) -> Result<Option<HeldLock>, PgError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Pg(s) => s.hold_server_lock().await.map(Some),
        }
    }

    /// Whether this store is shared by replicas that must elect who runs the background work
    /// (PostgreSQL); on SQLite the one server always does.
    pub fn has_replicas(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// On PostgreSQL, takes the lead if no replica has it, fencing this store's writes
    /// ([`PgStore::try_lead`]); `None` if another replica leads. On SQLite, `None`: there is no
    /// one to lead.
    pub async fn try_lead(&self) -> Result<Option<crate::pg::lead::Lead>, PgError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Pg(s) => s.try_lead().await,
        }
    }

    /// Lifts the fence after the lead is lost ([`PgStore::step_down`]); nothing on SQLite.
    pub fn step_down(&self) {
        if let Backend::Pg(s) = &self.backend {
            s.step_down();
        }
    }

    /// On PostgreSQL, what other replicas commit ([`PgStore::remote_changes`]); `None` on
    /// SQLite.
    pub fn remote_changes(&self) -> Option<tokio::sync::broadcast::Receiver<crate::pg::Remote>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Pg(s) => Some(s.remote_changes()),
        }
    }

    /// On PostgreSQL, the replicas connected to the database now and the store locks each
    /// holds ([`PgStore::replicas`]); `None` on SQLite (one server, no replicas).
    pub async fn replicas(&self) -> Result<Option<Vec<crate::pg::lead::Replica>>, PgError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Pg(s) => s.replicas().await.map(Some),
        }
    }

    /// On PostgreSQL, this store's replica id (its connections' `application_name`).
    pub fn replica_id(&self) -> Option<&str> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Pg(s) => Some(s.replica_id()),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Pg(_) => "postgres",
        }
    }

    /// The SQLite writer's counters (commits, operations, batches replayed); `None` on
    /// PostgreSQL, which has no writer of its own.
    pub fn commit_stats(&self) -> Option<&CommitStats> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s.commit_stats()),
            Backend::Pg(_) => None,
        }
    }

    /// This control plane's id: made once, kept for the life of the store. Providers label
    /// everything they create with it, so the sweep tells our resources from anyone else's.
    pub async fn controller_id(&self) -> Result<String, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.controller_id().await,
            Backend::Pg(s) => s.controller_id().await,
        }
    }

    /// Every environment row committed from now on, as written. A receiver that falls more
    /// than a few thousand rows behind gets `Lagged` and should re-read what it mirrors. On
    /// PostgreSQL it also carries the rows other replicas commit, read back after their
    /// notification ([`crate::pg::feed`]; best effort: a replica that dies between a commit
    /// and its notification does not announce that change).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Environment>> {
        match &self.backend {
            Backend::Sqlite(s) => s.subscribe(),
            Backend::Pg(s) => s.subscribe(),
        }
    }

    /// Inserts a new environment and its event in one transaction.
    pub async fn insert(&self, env: &Environment, event: NewEvent) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.insert(env, event).await,
            Backend::Pg(s) => s.insert(env, event).await,
        }
    }

    /// Inserts environments and their events (a pool's refill), [`INSERT_CHUNK`] rows to a
    /// transaction, one chunk after the other: a refill of a thousand members never holds the
    /// writer, and the claims queued behind it, for more than one chunk's inserts. Each chunk
    /// commits with the events of its own environments (an event of none goes with the first
    /// chunk); if one fails, the chunks before it stay and the error is returned.
    pub async fn insert_many(&self, envs: &[Environment], events: &[NewEvent]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.insert_many(envs, events).await,
            Backend::Pg(s) => s.insert_many(envs, events).await,
        }
    }

    /// Claims a running, unclaimed member of any pool whose spec hashes to `spec_hash` (and
    /// whose version it has), in one transaction: `claim` makes it the caller's, and it is
    /// no longer the pool's. Concurrent claims never get the same member.
    /// With `admit` (a tenant and its quota), the claim happens only if the quota admits one
    /// more environment of the member's spec, checked in the same transaction.
    /// `claim` runs on the writer's thread, and again if its batch is replayed.
    pub async fn claim(
        &self,
        spec_hash: &str,
        admit: Option<(&str, &Quota)>,
        claim: impl FnMut(&mut Environment) -> Vec<NewEvent> + Send + 'static,
    ) -> Result<Option<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.claim(spec_hash, admit, claim).await,
            Backend::Pg(s) => s.claim(spec_hash, admit, claim).await,
        }
    }

    /// Creates or replaces a pool.
    pub async fn put_pool(&self, pool: &Pool, event: NewEvent) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.put_pool(pool, event).await,
            Backend::Pg(s) => s.put_pool(pool, event).await,
        }
    }

    pub async fn get_pool(&self, name: &str) -> Result<Option<Pool>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.get_pool(name).await,
            Backend::Pg(s) => s.get_pool(name).await,
        }
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list_pools().await,
            Backend::Pg(s) => s.list_pools().await,
        }
    }

    /// Removes a pool; its unclaimed members are the maintainer's to delete. `false` if there
    /// was none.
    pub async fn delete_pool(&self, name: &str, event: NewEvent) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.delete_pool(name, event).await,
            Backend::Pg(s) => s.delete_pool(name, event).await,
        }
    }

    /// The environment holding `job_id`, if any.
    pub async fn get_by_job(&self, job_id: &str) -> Result<Option<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.get_by_job(job_id).await,
            Backend::Pg(s) => s.get_by_job(job_id).await,
        }
    }

    /// Every environment declared by a config file (`source = 'config'`) not deleted.
    pub async fn config_declared(&self) -> Result<Vec<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.config_declared().await,
            Backend::Pg(s) => s.config_declared().await,
        }
    }

    /// What the pool maintainer needs of each member of a pool that is not deleted: no spec,
    /// no labels (a round over thousands of members decodes no JSON).
    pub async fn pool_member_states(&self) -> Result<Vec<MemberState>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.pool_member_states().await,
            Backend::Pg(s) => s.pool_member_states().await,
        }
    }

    /// Members of pools (unclaimed environments with `pool` set) that are not deleted.
    pub async fn pool_members(&self) -> Result<Vec<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.pool_members().await,
            Backend::Pg(s) => s.pool_members().await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.get(id).await,
            Backend::Pg(s) => s.get(id).await,
        }
    }

    /// Read-modify-write of one environment in one transaction: `change` sees the current row
    /// and either edits it and names the events to record, or refuses with its own error and
    /// nothing is written. `Ok(None)` when there is no such environment.
    pub async fn update<E>(
        &self,
        id: &str,
        change: impl FnMut(&mut Environment) -> Result<Vec<NewEvent>, E>,
    ) -> Result<Option<Environment>, E>
    where
        E: From<StoreError>,
    {
        match &self.backend {
            Backend::Sqlite(s) => s.update(id, change).await,
            Backend::Pg(s) => s.update(id, change).await,
        }
    }

    /// A row with its revision, for [`Store::update_versioned`] (see [`Versioned`]).
    pub async fn get_versioned(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.get_with_rev(id, "get").await?.map(|(env, rev)| Versioned::read_at(env, rev))),
            Backend::Pg(s) => Ok(s.get(id).await?.map(Versioned::unversioned)),
        }
    }

    /// [`Store::update`] of `known`'s row, starting from `known` rather than a read when the
    /// row has not been written since (see [`Versioned`]); the row written, to chain on.
    pub async fn update_versioned<E>(
        &self,
        known: &Versioned,
        change: impl FnMut(&mut Environment) -> Result<Vec<NewEvent>, E>,
    ) -> Result<Option<Versioned>, E>
    where
        E: From<StoreError>,
    {
        match &self.backend {
            Backend::Sqlite(s) => s.update_from(&known.env.id, known.known(), None, change).await,
            Backend::Pg(s) => Ok(s.update(&known.env.id, change).await?.map(Versioned::unversioned)),
        }
    }

    /// [`Store::update`] under a tenant's quota: when `change` makes the row count against
    /// the quota where it did not (a failed environment started again) or changes its spec,
    /// the quota must admit the row's new spec beside what the tenant holds, in the same
    /// transaction. [`StoreError::Refused`] names the limit, and nothing is written.
    pub async fn update_admitted<E>(
        &self,
        id: &str,
        admit: Option<(&str, &Quota)>,
        change: impl FnMut(&mut Environment) -> Result<Vec<NewEvent>, E>,
    ) -> Result<Option<Environment>, E>
    where
        E: From<StoreError>,
    {
        match &self.backend {
            Backend::Sqlite(s) => s.update_admitted(id, admit, change).await,
            Backend::Pg(s) => s.update_admitted(id, admit, change).await,
        }
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list(filter).await,
            Backend::Pg(s) => s.list(filter).await,
        }
    }

    /// Ids of environments whose observed state does not yet match the desired one: the
    /// reconciler's work at start.
    pub async fn unconverged_ids(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.unconverged_ids().await,
            Backend::Pg(s) => s.unconverged_ids().await,
        }
    }

    /// `(id, expires_at)` of every lease still to run out: the timers' contents at start.
    pub async fn pending_expiries(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.pending_expiries().await,
            Backend::Pg(s) => s.pending_expiries().await,
        }
    }

    /// Every environment of `provider` that is not deleted, keyed by id, for the drift sweep.
    pub async fn sweep_view(&self, provider: &str) -> Result<BTreeMap<String, SweepEntry>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.sweep_view(provider).await,
            Backend::Pg(s) => s.sweep_view(provider).await,
        }
    }

    /// How many environments there are per `(provider, observed state)`.
    pub async fn count_by_provider_and_state(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.count_by_provider_and_state().await,
            Backend::Pg(s) => s.count_by_provider_and_state().await,
        }
    }

    /// Appends an event that concerns no single row change (a sweep's removal of an orphan).
    pub async fn append_event(&self, event: NewEvent) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.append_event(event).await,
            Backend::Pg(s) => s.append_event(event).await,
        }
    }

    /// Whether the last write succeeded: `false` while the database cannot be written (a full
    /// disk). Cheap; `/readyz` and the API's `503`s read it.
    pub fn is_writable(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(s) => s.is_writable(),
            Backend::Pg(s) => s.is_writable(),
        }
    }

    /// Events in order that `filter` selects.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.events(filter).await,
            Backend::Pg(s) => s.events(filter).await,
        }
    }

    /// `expired_at - expires_at` of every lease of `owner` that ran out, in ms (benchmarks).
    pub async fn expiry_lateness(&self, owner: &str) -> Result<Vec<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.expiry_lateness(owner).await,
            Backend::Pg(s) => s.expiry_lateness(owner).await,
        }
    }

    /// Waits for the writes in flight, then closes the readers.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.close().await,
            Backend::Pg(s) => s.close().await,
        }
    }

    /// Inserts a new environment if its tenant's `quota` admits it, in the same transaction
    /// as the count of what the tenant holds: concurrent inserts cannot both pass a limit.
    /// [`StoreError::Refused`] says which limit, and nothing is written.
    pub async fn insert_admitted(&self, env: &Environment, event: NewEvent, quota: &Quota) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.insert_admitted(env, event, quota).await,
            Backend::Pg(s) => s.insert_admitted(env, event, quota).await,
        }
    }

    /// What `tenant` holds now (for quotas).
    pub async fn usage(&self, tenant: &str) -> Result<Usage, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.usage(tenant).await,
            Backend::Pg(s) => s.usage(tenant).await,
        }
    }

    /// Creates a tenant; `false` if one of that name exists.
    pub async fn create_tenant(&self, t: &TenantRecord, event: NewEvent) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.create_tenant(t, event).await,
            Backend::Pg(s) => s.create_tenant(t, event).await,
        }
    }

    /// Sets how a tenant's quota is checked; `None` if there is no such tenant, else the
    /// tenant as it is now.
    pub async fn set_quota_check(
        &self,
        name: &str,
        quota_check: &str,
        event: NewEvent,
    ) -> Result<Option<TenantRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.set_quota_check(name, quota_check, event).await,
            Backend::Pg(s) => s.set_quota_check(name, quota_check, event).await,
        }
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.tenants().await,
            Backend::Pg(s) => s.tenants().await,
        }
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.tenant(name).await,
            Backend::Pg(s) => s.tenant(name).await,
        }
    }

    /// Adds a key (a tenant's: to an existing tenant); `false` if there is no such tenant.
    pub async fn create_key(&self, k: &KeyRecord, event: NewEvent) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.create_key(k, event).await,
            Backend::Pg(s) => s.create_key(k, event).await,
        }
    }

    /// The key with this id; a row whose scope and tenant do not agree reads as no key.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.key(id).await,
            Backend::Pg(s) => s.key(id).await,
        }
    }

    /// Revokes a key; `None` if there is no such key, else its scope.
    pub async fn revoke_key(&self, id: &str, at: Millis, actor: &str) -> Result<Option<KeyScope>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.revoke_key(id, at, actor).await,
            Backend::Pg(s) => s.revoke_key(id, at, actor).await,
        }
    }

    /// Environments that may have run within `[from, to)` and that `tenant` owned at some
    /// point (or all, for `None`), with their transitions and owners.
    pub async fn accrual(&self, tenant: Option<&str>, from: Millis, to: Millis) -> Result<Vec<Accrual>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.accrual(tenant, from, to).await,
            Backend::Pg(s) => s.accrual(tenant, from, to).await,
        }
    }

    /// Moves `last_active_at` of each `(id, at)` forward to `at` (never back), in one
    /// transaction; ids that are not (or no longer) there are skipped. Returns how many rows
    /// moved.
    pub async fn record_activity(&self, touched: &[(String, Millis)]) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_activity(touched).await,
            Backend::Pg(s) => s.record_activity(touched).await,
        }
    }

    /// How many activity batches this store wrote (each one transaction).
    pub fn activity_batches(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(s) => s.activity_batches(),
            Backend::Pg(s) => s.activity_batches(),
        }
    }

    /// Running environments with a probe (`health` set): the prober's round.
    pub async fn probed(&self) -> Result<Vec<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.probed().await,
            Backend::Pg(s) => s.probed().await,
        }
    }

    /// `(id, idle deadline)` of every running environment with an idle timeout that is no
    /// pool's: the idle timers at start.
    pub async fn idle_deadlines(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.idle_deadlines().await,
            Backend::Pg(s) => s.idle_deadlines().await,
        }
    }

    /// Running environments with a workspace: the syncer's round. (A scan of running rows;
    /// the spec's JSON is tested only on those.)
    pub async fn workspaced(&self) -> Result<Vec<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.workspaced().await,
            Backend::Pg(s) => s.workspaced().await,
        }
    }

    /// The state of `id`'s workspace (defaults when no sync has been tried).
    pub async fn workspace_status(&self, id: &str) -> Result<WorkspaceStatus, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.workspace_status(id).await,
            Backend::Pg(s) => s.workspace_status(id).await,
        }
    }

    /// Records a successful pull or push at `at` (the error is cleared).
    pub async fn record_sync(&self, id: &str, outcome: SyncOutcome<'_>, at: Millis) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_sync(id, outcome, at).await,
            Backend::Pg(s) => s.record_sync(id, outcome, at).await,
        }
    }

    /// Records a failed sync (`error`, cut by the caller).
    pub async fn record_sync_error(&self, id: &str, error: &str, at: Millis) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_sync_error(id, error, at).await,
            Backend::Pg(s) => s.record_sync_error(id, error, at).await,
        }
    }

    /// The directory is no longer the workspace's (the resource was removed without a push,
    /// a forced delete): a new start pulls again.
    pub async fn forget_pull(&self, id: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.forget_pull(id).await,
            Backend::Pg(s) => s.forget_pull(id).await,
        }
    }

    /// Marks `id`'s coming removal as forced: its final push is skipped.
    pub async fn force_workspace(&self, id: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.force_workspace(id).await,
            Backend::Pg(s) => s.force_workspace(id).await,
        }
    }

    /// Applies queue messages that create environments, each at most once: in one
    /// transaction, those whose tag has a receipt are skipped, the others are inserted with
    /// their events and receipts, and `queue`'s processed count grows by as many. Returns the tags
    /// applied now (the rest had been applied before).
    pub async fn apply_creates(&self, queue: &str, items: &[QueuedCreate]) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.apply_creates(queue, items).await,
            Backend::Pg(s) => s.apply_creates(queue, items).await,
        }
    }

    /// [`Store::apply_creates`], each message with its optional idempotency key: a message whose
    /// key `queue` has applied (or that an earlier message of the batch has) is skipped too;
    /// the keys of the messages applied are recorded in the same transaction.
    pub async fn apply_keyed_creates(
        &self,
        queue: &str,
        items: &[(&QueuedCreate, Option<&str>)],
    ) -> Result<AppliedCreates, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.apply_keyed_creates(queue, items).await,
            Backend::Pg(s) => s.apply_keyed_creates(queue, items).await,
        }
    }

    /// Applies one queue message that changes existing environments, at most once: in one
    /// transaction, unless `tag` has a receipt, `change` edits every environment `filter`
    /// selects (deleted ones are never selected) and names its events; the receipt is written
    /// with them. `None` when the message had been applied before.
    pub async fn apply_change(
        &self,
        queue: &str,
        tag: &str,
        filter: &ListFilter,
        change: impl FnMut(&mut Environment) -> Vec<NewEvent> + Send + 'static,
    ) -> Result<Option<Vec<Environment>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.apply_change(queue, tag, filter, change).await,
            Backend::Pg(s) => s.apply_change(queue, tag, filter, change).await,
        }
    }

    /// [`Store::apply_change`] for a message that may carry an idempotency key (applied at
    /// most once per queue, recorded with the receipt) and that selects only the environments
    /// of one source.
    pub async fn apply_queued_change(
        &self,
        queue: &str,
        message: QueuedChange<'_>,
        change: impl FnMut(&mut Environment) -> Vec<NewEvent> + Send + 'static,
    ) -> Result<ChangeOutcome, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.apply_queued_change(queue, message, change).await,
            Backend::Pg(s) => s.apply_queued_change(queue, message, change).await,
        }
    }

    /// Forgets `queue`'s idempotency keys applied before `before`, and all but the newest
    /// `keep_at_most`. Returns how many went.
    pub async fn prune_idempotency_keys(
        &self,
        queue: &str,
        before: Millis,
        keep_at_most: u64,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune_idempotency_keys(queue, before, keep_at_most).await,
            Backend::Pg(s) => s.prune_idempotency_keys(queue, before, keep_at_most).await,
        }
    }

    /// Which of `tags` have receipts (their messages were applied).
    pub async fn receipts(&self, tags: &[String]) -> Result<HashSet<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.receipts(tags).await,
            Backend::Pg(s) => s.receipts(tags).await,
        }
    }

    /// Forgets receipts of `queue` older than `before`, except those in `keep` (messages still
    /// in a processing list). Returns how many went.
    pub async fn prune_receipts(&self, queue: &str, before: Millis, keep: &HashSet<String>) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune_receipts(queue, before, keep).await,
            Backend::Pg(s) => s.prune_receipts(queue, before, keep).await,
        }
    }

    /// Messages applied per queue, ever.
    pub async fn queue_counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.queue_counters().await,
            Backend::Pg(s) => s.queue_counters().await,
        }
    }

    /// Environments from `source` that are not deleted, or were changed after `since`: what
    /// a mirror of them (the SWIM cache keys) holds.
    pub async fn mirrored(&self, source: &str, since: Millis) -> Result<Vec<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.mirrored(source, since).await,
            Backend::Pg(s) => s.mirrored(source, since).await,
        }
    }

    /// Applies lab messages in order, in one transaction, each at most once (a tag with a
    /// receipt, or twice in the batch, is skipped), each seeing what the ones before it did:
    /// - a provision is a no-op when `lab` is the owner's current lab; otherwise `env` is
    ///   inserted and every other lab of the owner is set to be deleted;
    /// - a decommission follows the stale rule: with no current lab, or with a `lab` other
    ///   than the current one, it deletes the lab whose id is `server_id` if that is one of
    ///   the owner's, else nothing (`NoLab` / `Stale`); otherwise (no `lab`, or the current
    ///   one) the current lab, whatever `server_id` says. The owner's failed labs go with any
    ///   decommission that deletes the current lab or finds none.
    pub async fn apply_lab_messages(
        &self,
        items: &[(LabMessage<'_>, LabRequest<'_>)],
    ) -> Result<Vec<LabOutcome>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.apply_lab_messages(items).await,
            Backend::Pg(s) => s.apply_lab_messages(items).await,
        }
    }

    /// The environments of `source` and `owner` not yet deleted (observed), newest first:
    /// what one user's state key mirrors.
    pub async fn lab_rows(&self, source: &str, owner: &str) -> Result<Vec<Environment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.lab_rows(source, owner).await,
            Backend::Pg(s) => s.lab_rows(source, owner).await,
        }
    }

    /// Records a new hook whose cursor starts after the latest event (it reports what happens
    /// from now on), with its event.
    pub async fn create_webhook(&self, hook: &WebhookRecord, event: NewEvent) -> Result<WebhookRecord, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.create_webhook(hook, event).await,
            Backend::Pg(s) => s.create_webhook(hook, event).await,
        }
    }

    /// Makes the config file's hooks exactly `hooks` (by `name`): new ones are added (cursor
    /// at the latest event), changed ones updated (their cursor kept), others removed with
    /// their deliveries.
    pub async fn set_config_webhooks(&self, hooks: &[WebhookRecord]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.set_config_webhooks(hooks).await,
            Backend::Pg(s) => s.set_config_webhooks(hooks).await,
        }
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.get_webhook(id).await,
            Backend::Pg(s) => s.get_webhook(id).await,
        }
    }

    /// Hooks in id order after `after`: of `tenant` only when given, at most `limit`.
    pub async fn list_webhooks(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list_webhooks(tenant, after, limit).await,
            Backend::Pg(s) => s.list_webhooks(tenant, after, limit).await,
        }
    }

    /// Removes a hook and its deliveries, if it is `tenant`'s (any hook when `None`), with
    /// its event. `false`: there is no such hook the caller may see.
    pub async fn delete_webhook(&self, id: &str, tenant: Option<&str>, event: NewEvent) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.delete_webhook(id, tenant, event).await,
            Backend::Pg(s) => s.delete_webhook(id, tenant, event).await,
        }
    }

    /// Writes `deliveries` (made from the events after `from`, up to `to`) and moves the
    /// hook's cursor from `from` to `to`, in one transaction. At most `max_pending` of the
    /// hook's deliveries are pending: what does not fit is dropped (the oldest are kept), with
    /// an event saying how many.
    pub async fn fan_out(
        &self,
        webhook_id: &str,
        from: i64,
        to: i64,
        deliveries: &[NewDelivery],
        max_pending: usize,
    ) -> Result<FanOut, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.fan_out(webhook_id, from, to, deliveries, max_pending).await,
            Backend::Pg(s) => s.fan_out(webhook_id, from, to, deliveries, max_pending).await,
        }
    }

    /// Adds one delivery outside the outbox (a `ping`).
    pub async fn add_delivery(&self, webhook_id: &str, delivery: &NewDelivery) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.add_delivery(webhook_id, delivery).await,
            Backend::Pg(s) => s.add_delivery(webhook_id, delivery).await,
        }
    }

    /// Pending deliveries due at `now`, each the oldest pending one of its hook and
    /// environment, with their hooks; at most `limit`, earliest due first.
    pub async fn due_deliveries(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<(DeliveryRecord, WebhookRecord)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.due_deliveries(now, limit).await,
            Backend::Pg(s) => s.due_deliveries(now, limit).await,
        }
    }

    /// The earliest time a pending delivery is due, if any is pending.
    pub async fn next_delivery_due(&self) -> Result<Option<Millis>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.next_delivery_due().await,
            Backend::Pg(s) => s.next_delivery_due().await,
        }
    }

    /// Records one attempt of a pending delivery, and the hook's consecutive failures.
    pub async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_attempt(id, attempt).await,
            Backend::Pg(s) => s.record_attempt(id, attempt).await,
        }
    }

    /// A hook's deliveries in id order after `after`, at most `limit`.
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list_deliveries(webhook_id, after, limit).await,
            Backend::Pg(s) => s.list_deliveries(webhook_id, after, limit).await,
        }
    }

    /// Pending deliveries of every hook (the `lapse_webhook_pending` gauge).
    pub async fn pending_deliveries(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.pending_deliveries().await,
            Backend::Pg(s) => s.pending_deliveries().await,
        }
    }

    /// Running environments with pre-expiry warnings whose lease runs (the warnings' timers
    /// at start).
    pub async fn warning_ids(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.warning_ids().await,
            Backend::Pg(s) => s.warning_ids().await,
        }
    }

    /// The latest event's `seq` (0 before any).
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.last_event_seq().await,
            Backend::Pg(s) => s.last_event_seq().await,
        }
    }
}
