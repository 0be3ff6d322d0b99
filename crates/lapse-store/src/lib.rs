//! Lapse's durable store: environments (desired and observed state) and the audit trail.
//!
//! SQLite through sqlx is the embedded default. All writes go through **one writer
//! connection**, so every read-modify-write ([`Store::update`]) runs in a transaction that no
//! other writer interleaves with: no update is ever lost, whatever the number of API handlers
//! and reconciler tasks. Reads use a separate pool and never wait for writers (WAL).
//!
//! **The store never calls a provider.** It holds what was asked for and what was seen; the
//! reconciler writes a row *before* the provider call it describes.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lapse_core::model::{DesiredState, Environment, ObservedState, Pool};
use lapse_core::quota::Quota;
use lapse_core::wire::Event;
use lapse_core::{Millis, now_millis};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use writer::Writer;

// Queue receipts and counters (`queues`); tenants, keys, quota usage and accrual (`tenants`).
mod accrual;
mod activity;
mod labs;
mod queues;
mod tenants;
mod writer;

pub use accrual::Accrual;
pub use labs::{LabDecommission, LabDecommissionOutcome, LabMessage, LabOutcome, LabProvisionOutcome, LabRequest};
pub use queues::{AppliedCreates, ChangeOutcome, QueuedChange, QueuedCreate};
use tenants::usage;
pub use tenants::{KeyRecord, KeyScope, TenantRecord};

/// A store failure. Its text names the operation; the database's own message is the source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {op} failed")]
    Database {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("store: migrating the schema failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: row {id} holds an unreadable {column}: {message}")]
    Corrupt { id: String, column: &'static str, message: String },
    /// The database cannot be written now (the disk is full, an I/O error, the file is
    /// locked); nothing was written. Reads still work, and writes succeed again by themselves
    /// once the cause is gone.
    #[error("store: {op} failed: the database cannot be written now")]
    Unwritable {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A check inside the transaction (a quota) refused; nothing was written.
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    /// Whether the failure is the store's inability to write (a `503`, not a bug).
    pub fn is_unwritable(&self) -> bool {
        matches!(self, StoreError::Unwritable { .. })
    }

    /// Whether a uniqueness constraint refused the write (a `job_id` taken meanwhile).
    pub fn is_conflict(&self) -> bool {
        match self {
            StoreError::Database { source, .. } => source.as_database_error().is_some_and(|e| e.is_unique_violation()),
            _ => false,
        }
    }
}

trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> Op<T> for Result<T, sqlx::Error> {
    fn op(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| {
            if writer::is_unwritable(&source) {
                StoreError::Unwritable { op, source }
            } else {
                StoreError::Database { op, source }
            }
        })
    }
}

/// An audit record to append; `seq` and `at` are given by the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub environment_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub outcome: String,
    pub message: String,
    /// The tenant it concerns, when it concerns no environment (an environment's event takes
    /// the environment's tenant).
    pub tenant: Option<String>,
}

impl NewEvent {
    pub fn new(environment_id: &str, actor: &str, action: &str, outcome: &str, message: impl Into<String>) -> Self {
        NewEvent {
            environment_id: Some(environment_id.to_owned()),
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            message: message.into(),
            tenant: None,
        }
    }

    /// An event of no environment (a tenant's, a key's), visible to `tenant`.
    pub fn of_tenant(tenant: &str, actor: &str, action: &str, outcome: &str, message: impl Into<String>) -> Self {
        NewEvent {
            environment_id: None,
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            message: message.into(),
            tenant: Some(tenant.to_owned()),
        }
    }
}

/// Filters of [`Store::list`]. Deleted environments are left out unless `state` asks for them.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this tenant's.
    pub tenant: Option<String>,
    pub owner: Option<String>,
    pub state: Option<ObservedState>,
    pub provider: Option<String>,
    pub job_id: Option<String>,
    pub labels: Vec<(String, String)>,
    /// Only environments whose id sorts after this one (a page's cursor: ids are UUIDv7, so
    /// environments made while a client pages come after it, never in between).
    pub after: Option<String>,
    /// At most this many, in id order; all when `None`.
    pub limit: Option<u32>,
}

/// Which events [`Store::events`] returns: after `after`, each given field equal; at most
/// `limit`.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub tenant: Option<String>,
    /// The environment (or pool) the event concerns.
    pub target: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub after: Option<i64>,
    pub limit: u32,
}

/// What the drift sweep needs to know of one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepEntry {
    pub desired: DesiredState,
    pub observed: ObservedState,
    pub updated_at: Millis,
}

/// The store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    writer: Writer,
    reader: SqlitePool,
    /// Every committed environment row, for whoever mirrors them (the SWIM cache keys).
    changes: tokio::sync::broadcast::Sender<Arc<Environment>>,
    /// Activity batches written ([`Store::record_activity`]).
    activity_batches: Arc<std::sync::atomic::AtomicU64>,
}

/// How many committed rows a slow [`Store::subscribe`]r may fall behind before it is told it
/// lagged (and must read the store afresh).
const CHANGE_BUFFER: usize = 8192;

const ENV_COLUMNS: &str = "id, name, tenant, owner, labels, spec, provider, lifecycle, desired, observed, reason, \
     provider_ref, endpoints, expires_at, on_expiry, expired_at, restart_on_extend, attempts, next_attempt_at, \
     created_at, updated_at, spec_hash, pool, pool_version, source, replace_resource, restarts, max_retries, exit_code, \
     finished_at, job_id, user_data_path, seed_spec, idle_timeout, on_idle, last_active_at, idled_at, health, ready_at, \
     restart_requested";

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = writer::writer_options(SqlitePoolOptions::new())
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await
            .op("open")?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.read_only(true))
            .await
            .op("open")?;
        let (changes, _) = tokio::sync::broadcast::channel(CHANGE_BUFFER);
        Ok(Store { writer: Writer::new(writer), reader, changes, activity_batches: Default::default() })
    }

    /// This control plane's id: made once, kept for the life of the store. Providers label
    /// everything they create with it, so the sweep tells our resources from anyone else's.
    pub async fn controller_id(&self) -> Result<String, StoreError> {
        let fresh = format!("lapse-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let inserted = sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('controller_id', ?)")
            .bind(&fresh)
            .execute(self.writer.pool())
            .await;
        self.writer.observe(&inserted);
        inserted.op("controller id")?;
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'controller_id'")
            .fetch_one(self.writer.pool())
            .await
            .op("controller id")
    }

    /// Every environment row committed from now on, as written. A receiver that falls more
    /// than a few thousand rows behind gets `Lagged` and should re-read what it mirrors.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Environment>> {
        self.changes.subscribe()
    }

    fn published(&self, env: &Environment) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Arc::new(env.clone()));
        }
    }

    /// Inserts a new environment and its event in one transaction.
    pub async fn insert(&self, env: &Environment, event: NewEvent) -> Result<(), StoreError> {
        self.insert_many(std::slice::from_ref(env), &[event]).await
    }

    /// Inserts environments and events in one transaction (a pool's refill, a batch).
    pub async fn insert_many(&self, envs: &[Environment], events: &[NewEvent]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.op("insert")?;
        // SQLite binds at most 32766 parameters; 40 columns a row.
        for chunk in envs.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO environments ({ENV_COLUMNS}) "));
            q.push_values(chunk, bind_environment);
            q.build().execute(&mut *tx).await.op("insert")?;
        }
        append_events(&mut tx, events).await?;
        tx.commit().await.op("insert")?;
        for env in envs {
            self.published(env);
        }
        Ok(())
    }

    /// Claims a running, unclaimed member of any pool whose spec hashes to `spec_hash` (and
    /// whose version it has), in one transaction: `claim` makes it the caller's, and it is
    /// no longer the pool's. Concurrent claims never get the same member.
    /// With `admit` (a tenant and its quota), the claim happens only if the quota admits one
    /// more environment of the member's spec, checked in the same transaction.
    pub async fn claim(
        &self,
        spec_hash: &str,
        admit: Option<(&str, &Quota)>,
        claim: impl FnOnce(&mut Environment) -> Vec<NewEvent>,
    ) -> Result<Option<Environment>, StoreError> {
        let mut tx = self.writer.begin().await.op("claim")?;
        let row = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments e WHERE e.pool IS NOT NULL AND e.observed = 'running' \
             AND e.desired = 'running' AND e.replace_resource = 0 AND (e.health IS NULL OR e.health = 'healthy') \
             AND e.spec_hash = ? AND EXISTS (SELECT 1 FROM pools p \
             WHERE p.name = e.pool AND p.spec_hash = e.spec_hash AND p.version = e.pool_version) LIMIT 1"
        ))
        .bind(spec_hash)
        .fetch_optional(&mut *tx)
        .await
        .op("claim")?;
        let Some(row) = row else { return Ok(None) };
        let mut env = environment_from_row(&row)?;
        if let Some((tenant, quota)) = admit {
            let usage = usage(&mut tx, tenant).await?;
            quota.admit(&usage, &env.spec).map_err(StoreError::Refused)?;
        }
        // The closure sees which pool the member leaves; then it is no longer the pool's.
        let events = claim(&mut env);
        env.pool = None;
        env.pool_version = None;
        env.updated_at = now_millis();
        write_row(&mut tx, &env).await?;
        for event in &events {
            append_event(&mut tx, event).await?;
        }
        tx.commit().await.op("claim")?;
        self.published(&env);
        Ok(Some(env))
    }

    /// Creates or replaces a pool.
    pub async fn put_pool(&self, pool: &Pool, event: NewEvent) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.op("put pool")?;
        sqlx::query(
            "INSERT INTO pools (name, spec, spec_hash, min, max, version, lifecycle, source, on_claim, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, \
             spec_hash = excluded.spec_hash, min = excluded.min, max = excluded.max, version = excluded.version, \
             lifecycle = excluded.lifecycle, source = excluded.source, on_claim = excluded.on_claim, \
             updated_at = excluded.updated_at",
        )
        .bind(&pool.name)
        .bind(json(&pool.spec))
        .bind(pool.spec.hash())
        .bind(pool.min)
        .bind(pool.max)
        .bind(&pool.version)
        .bind(pool.lifecycle.as_str())
        .bind(&pool.source)
        .bind(pool.on_claim.as_ref().map(json))
        .bind(pool.created_at)
        .bind(pool.updated_at)
        .execute(&mut *tx)
        .await
        .op("put pool")?;
        append_event(&mut tx, &event).await?;
        tx.commit().await.op("put pool")?;
        Ok(())
    }

    pub async fn get_pool(&self, name: &str) -> Result<Option<Pool>, StoreError> {
        let row = sqlx::query(
            "SELECT name, spec, min, max, version, lifecycle, source, on_claim, created_at, updated_at FROM pools \
             WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.reader)
        .await
        .op("get pool")?;
        row.map(|r| pool_from_row(&r)).transpose()
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, spec, min, max, version, lifecycle, source, on_claim, created_at, updated_at FROM pools \
             ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await
        .op("list pools")?;
        rows.iter().map(pool_from_row).collect()
    }

    /// Removes a pool; its unclaimed members are the maintainer's to delete. `false` if there
    /// was none.
    pub async fn delete_pool(&self, name: &str, event: NewEvent) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.op("delete pool")?;
        let gone =
            sqlx::query("DELETE FROM pools WHERE name = ?").bind(name).execute(&mut *tx).await.op("delete pool")?;
        if gone.rows_affected() == 0 {
            return Ok(false);
        }
        append_event(&mut tx, &event).await?;
        tx.commit().await.op("delete pool")?;
        Ok(true)
    }

    /// The environment holding `job_id`, if any.
    pub async fn get_by_job(&self, job_id: &str) -> Result<Option<Environment>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE job_id = ? AND desired != 'deleted'"))
                .bind(job_id)
                .fetch_optional(self.writer.pool())
                .await
                .op("get by job")?;
        row.map(|r| environment_from_row(&r)).transpose()
    }

    /// Every environment declared by a config file (`source = 'config'`) not deleted.
    pub async fn config_declared(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = 'config' AND desired != 'deleted' ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await
        .op("config declared")?;
        rows.iter().map(environment_from_row).collect()
    }

    /// Members of pools (unclaimed environments with `pool` set) that are not deleted.
    pub async fn pool_members(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE pool IS NOT NULL AND observed != 'deleted' ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await
        .op("pool members")?;
        rows.iter().map(environment_from_row).collect()
    }

    pub async fn get(&self, id: &str) -> Result<Option<Environment>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .op("get")?;
        row.map(|r| environment_from_row(&r)).transpose()
    }

    /// Read-modify-write of one environment in one transaction: `change` sees the current row
    /// and either edits it and names the events to record, or refuses with its own error and
    /// nothing is written. `Ok(None)` when there is no such environment.
    pub async fn update<E>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Environment) -> Result<Vec<NewEvent>, E>,
    ) -> Result<Option<Environment>, E>
    where
        E: From<StoreError>,
    {
        self.update_admitted(id, None, change).await
    }

    /// [`Store::update`] under a tenant's quota: when `change` makes the row count against
    /// the quota where it did not (a failed environment started again) or changes its spec,
    /// the quota must admit the row's new spec beside what the tenant holds, in the same
    /// transaction. [`StoreError::Refused`] names the limit, and nothing is written.
    pub async fn update_admitted<E>(
        &self,
        id: &str,
        admit: Option<(&str, &Quota)>,
        change: impl FnOnce(&mut Environment) -> Result<Vec<NewEvent>, E>,
    ) -> Result<Option<Environment>, E>
    where
        E: From<StoreError>,
    {
        let mut tx = self.writer.begin().await.op("update")?;
        let row = sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .op("update")?;
        let Some(row) = row else { return Ok(None) };
        let mut env = environment_from_row(&row)?;
        let before = env.clone();
        let events = change(&mut env)?;
        if let Some((tenant, quota)) = admit
            && counts(&env)
            && (!counts(&before) || before.spec.resources != env.spec.resources)
        {
            let mut held = usage(&mut tx, tenant).await?;
            if counts(&before) && before.tenant == tenant {
                held.environments = held.environments.saturating_sub(1);
                let r = before.spec.resources.clone().unwrap_or_default();
                held.vcpu = (held.vcpu - r.vcpu.unwrap_or(0.0)).max(0.0);
                held.mem_mb = held.mem_mb.saturating_sub(r.mem_mb.unwrap_or(0));
                held.disk_gb = held.disk_gb.saturating_sub(r.disk_gb.unwrap_or(0));
            }
            quota.admit(&held, &env.spec).map_err(StoreError::Refused)?;
        }
        env.updated_at = now_millis();
        write_row(&mut tx, &env).await?;
        for event in &events {
            append_event(&mut tx, event).await?;
        }
        tx.commit().await.op("update")?;
        self.published(&env);
        Ok(Some(env))
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Environment>, StoreError> {
        let mut q = filtered(filter);
        q.push(" ORDER BY id");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = q.build().fetch_all(&self.reader).await.op("list")?;
        rows.iter().map(environment_from_row).collect()
    }

    /// Ids of environments whose observed state does not yet match the desired one: the
    /// reconciler's work at start.
    pub async fn unconverged_ids(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM environments WHERE observed != 'deleted' \
             AND NOT (desired = 'running' AND observed = 'running') \
             AND NOT (desired = 'stopped' AND observed = 'stopped') \
             AND NOT (desired != 'deleted' AND observed = 'failed') ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await
        .op("unconverged")
    }

    /// `(id, expires_at)` of every lease still to run out: the timers' contents at start.
    pub async fn pending_expiries(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, expires_at FROM environments WHERE desired != 'deleted' AND observed != 'deleted' \
             AND expired_at IS NULL AND expires_at IS NOT NULL",
        )
        .fetch_all(&self.reader)
        .await
        .op("expiries")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every environment of `provider` that is not deleted, keyed by id, for the drift sweep.
    pub async fn sweep_view(&self, provider: &str) -> Result<BTreeMap<String, SweepEntry>, StoreError> {
        use futures::TryStreamExt;
        // Streamed, not collected: with many environments, a `Vec` of rows would cost far more
        // than the map it becomes.
        let mut rows = sqlx::query(
            "SELECT id, desired, observed, updated_at FROM environments WHERE provider = ? AND observed != 'deleted'",
        )
        .bind(provider)
        .fetch(&self.reader);
        let mut out = BTreeMap::new();
        while let Some(r) = rows.try_next().await.op("sweep view")? {
            let id: String = r.get(0);
            let desired = parse_column(&id, "desired", r.get::<String, _>(1))?;
            let observed = parse_column(&id, "observed", r.get::<String, _>(2))?;
            out.insert(id, SweepEntry { desired, observed, updated_at: r.get(3) });
        }
        Ok(out)
    }

    /// How many environments there are per `(provider, observed state)`.
    pub async fn count_by_provider_and_state(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT provider, observed, COUNT(*) FROM environments GROUP BY provider, observed")
            .fetch_all(&self.reader)
            .await
            .op("count")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Appends an event that concerns no single row change (a sweep's removal of an orphan).
    pub async fn append_event(&self, event: NewEvent) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await.op("append event")?;
        let done = append_event(&mut conn, &event).await;
        match &done {
            Ok(()) => self.writer.set_writable(true),
            Err(e) if e.is_unwritable() => self.writer.set_writable(false),
            Err(_) => {}
        }
        done
    }

    /// Whether the last write succeeded: `false` while the database cannot be written (a full
    /// disk). Cheap; `/readyz` and the API's `503`s read it.
    pub fn is_writable(&self) -> bool {
        self.writer.is_writable()
    }

    /// Events in order that `filter` selects.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT seq, at, environment_id, actor, action, outcome, message, tenant FROM events WHERE seq > ",
        );
        q.push_bind(filter.after.unwrap_or(0));
        for (column, value) in [
            ("tenant", &filter.tenant),
            ("environment_id", &filter.target),
            ("actor", &filter.actor),
            ("action", &filter.action),
            ("outcome", &filter.outcome),
        ] {
            if let Some(v) = value {
                q.push(format!(" AND {column} = ")).push_bind(v.clone());
            }
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(i64::from(filter.limit));
        let rows = q.build().fetch_all(&self.reader).await.op("events")?;
        Ok(rows
            .iter()
            .map(|r| Event {
                seq: r.get(0),
                at: r.get(1),
                environment_id: r.get(2),
                actor: r.get(3),
                action: r.get(4),
                outcome: r.get(5),
                message: r.get(6),
                tenant: r.get(7),
            })
            .collect())
    }

    /// `expired_at - expires_at` of every lease of `owner` that ran out, in ms (benchmarks).
    pub async fn expiry_lateness(&self, owner: &str) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT expired_at - expires_at FROM environments WHERE expired_at IS NOT NULL AND owner = ?",
        )
        .bind(owner)
        .fetch_all(&self.reader)
        .await
        .op("expiry lateness")
    }

    /// Closes both pools, waiting for writes in flight.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.pool().close().await;
    }
}

/// Whether a row counts against its tenant's quota (as `tenants::usage` counts).
fn counts(e: &Environment) -> bool {
    e.desired != DesiredState::Deleted
        && !matches!(e.observed, ObservedState::Deleted | ObservedState::Failed)
        && e.pool.is_none()
}

/// The query of [`Store::list`] up to its order and limit.
fn filtered(filter: &ListFilter) -> QueryBuilder<'_, Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {ENV_COLUMNS} FROM environments WHERE 1=1"));
    if let Some(tenant) = &filter.tenant {
        q.push(" AND tenant = ").push_bind(tenant);
    }
    if let Some(owner) = &filter.owner {
        q.push(" AND owner = ").push_bind(owner);
    }
    match filter.state {
        Some(state) => q.push(" AND observed = ").push_bind(state.as_str()),
        None => q.push(" AND observed != 'deleted'"),
    };
    if let Some(provider) = &filter.provider {
        q.push(" AND provider = ").push_bind(provider);
    }
    if let Some(job_id) = &filter.job_id {
        q.push(" AND job_id = ").push_bind(job_id);
    }
    if let Some(after) = &filter.after {
        q.push(" AND id > ").push_bind(after);
    }
    for (k, v) in &filter.labels {
        q.push(" AND EXISTS (SELECT 1 FROM json_each(environments.labels) WHERE json_each.key = ")
            .push_bind(k)
            .push(" AND json_each.value = ")
            .push_bind(v)
            .push(")");
    }
    q
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Serializing plain data (maps of strings, derived structs) cannot fail.
    serde_json::to_string(value).expect("model types serialize")
}

/// Appends events with one statement per few hundred.
async fn append_events(conn: &mut SqliteConnection, events: &[NewEvent]) -> Result<(), StoreError> {
    let now = now_millis();
    for chunk in events.chunks(1000) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (at, environment_id, actor, action, outcome, message, tenant) ",
        );
        q.push_values(chunk, |mut b, e| {
            b.push_bind(now)
                .push_bind(&e.environment_id)
                .push_bind(&e.actor)
                .push_bind(&e.action)
                .push_bind(&e.outcome)
                .push_bind(&e.message)
                .push("COALESCE(")
                .push_bind_unseparated(&e.tenant)
                .push_unseparated(", (SELECT tenant FROM environments WHERE id = ")
                .push_bind_unseparated(&e.environment_id)
                .push_unseparated("))");
        });
        q.build().execute(&mut *conn).await.op("append event")?;
    }
    Ok(())
}

async fn append_event(conn: &mut SqliteConnection, e: &NewEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (at, environment_id, actor, action, outcome, message, tenant) \
         VALUES (?, ?, ?, ?, ?, ?, COALESCE(?, (SELECT tenant FROM environments WHERE id = ?)))",
    )
    .bind(now_millis())
    .bind(&e.environment_id)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.outcome)
    .bind(&e.message)
    .bind(&e.tenant)
    .bind(&e.environment_id)
    .execute(conn)
    .await
    .op("append event")?;
    Ok(())
}

/// Writes the whole row: the same columns and values as an insert (one list to keep, see
/// [`bind_environment`]), as an upsert on `id`.
async fn write_row(conn: &mut SqliteConnection, e: &Environment) -> Result<(), StoreError> {
    static ON_CONFLICT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let updates: Vec<String> = ENV_COLUMNS
            .split(',')
            .map(str::trim)
            .filter(|c| !matches!(*c, "id" | "created_at"))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        format!(" ON CONFLICT (id) DO UPDATE SET {}", updates.join(", "))
    });
    let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO environments ({ENV_COLUMNS}) "));
    q.push_values([e], bind_environment);
    q.push(ON_CONFLICT.as_str());
    q.build().execute(conn).await.op("update")?;
    Ok(())
}

/// Binds an environment's values in the order of [`ENV_COLUMNS`].
fn bind_environment<'q>(mut b: sqlx::query_builder::Separated<'_, 'q, Sqlite, &'static str>, e: &'q Environment) {
    b.push_bind(&e.id)
        .push_bind(&e.name)
        .push_bind(&e.tenant)
        .push_bind(&e.owner)
        .push_bind(json(&e.labels))
        .push_bind(json(&e.spec))
        .push_bind(&e.spec.provider)
        .push_bind(e.lifecycle.as_str())
        .push_bind(e.desired.as_str())
        .push_bind(e.observed.as_str())
        .push_bind(&e.reason)
        .push_bind(&e.provider_ref)
        .push_bind(json(&e.endpoints))
        .push_bind(e.expires_at)
        .push_bind(e.on_expiry.as_str())
        .push_bind(e.expired_at)
        .push_bind(e.restart_on_extend)
        .push_bind(e.attempts)
        .push_bind(e.next_attempt_at)
        .push_bind(e.created_at)
        .push_bind(e.updated_at)
        .push_bind(e.spec.hash())
        .push_bind(&e.pool)
        .push_bind(&e.pool_version)
        .push_bind(&e.source)
        .push_bind(e.replace)
        .push_bind(e.restarts)
        .push_bind(e.max_retries)
        .push_bind(e.exit_code)
        .push_bind(e.finished_at)
        .push_bind(&e.job_id)
        .push_bind(&e.user_data_path)
        .push_bind(&e.seed_spec)
        .push_bind(e.idle_timeout)
        .push_bind(e.on_idle.as_str())
        .push_bind(e.last_active_at)
        .push_bind(e.idled_at)
        .push_bind(e.health.map(|h| h.as_str()))
        .push_bind(e.ready_at)
        .push_bind(e.restart_requested);
}

fn parse_column<T: FromStr>(id: &str, column: &'static str, text: String) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| StoreError::Corrupt { id: id.to_owned(), column, message: e.to_string() })
}

fn json_column<T: serde::de::DeserializeOwned>(id: &str, column: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { id: id.to_owned(), column, message: e.to_string() })
}

fn pool_from_row(r: &SqliteRow) -> Result<Pool, StoreError> {
    let name: String = r.get("name");
    Ok(Pool {
        spec: json_column(&name, "spec", r.get("spec"))?,
        min: r.get::<i64, _>("min").try_into().unwrap_or(0),
        max: r.get::<i64, _>("max").try_into().unwrap_or(0),
        version: r.get("version"),
        lifecycle: parse_column(&name, "lifecycle", r.get("lifecycle"))?,
        source: r.get("source"),
        on_claim: r
            .get::<Option<String>, _>("on_claim")
            .map(|text| json_column(&name, "on_claim", &text))
            .transpose()?,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        name,
    })
}

fn environment_from_row(r: &SqliteRow) -> Result<Environment, StoreError> {
    let id: String = r.get("id");
    Ok(Environment {
        name: r.get("name"),
        tenant: r.get("tenant"),
        owner: r.get("owner"),
        labels: json_column(&id, "labels", r.get("labels"))?,
        spec: json_column(&id, "spec", r.get("spec"))?,
        lifecycle: parse_column(&id, "lifecycle", r.get("lifecycle"))?,
        desired: parse_column(&id, "desired", r.get("desired"))?,
        observed: parse_column(&id, "observed", r.get("observed"))?,
        reason: r.get("reason"),
        provider_ref: r.get("provider_ref"),
        endpoints: json_column(&id, "endpoints", r.get("endpoints"))?,
        expires_at: r.get("expires_at"),
        on_expiry: parse_column(&id, "on_expiry", r.get("on_expiry"))?,
        expired_at: r.get("expired_at"),
        restart_on_extend: r.get("restart_on_extend"),
        attempts: r.get::<i64, _>("attempts").try_into().unwrap_or(u32::MAX),
        next_attempt_at: r.get("next_attempt_at"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        pool: r.get("pool"),
        pool_version: r.get("pool_version"),
        source: r.get("source"),
        replace: r.get("replace_resource"),
        restarts: r.get::<i64, _>("restarts").try_into().unwrap_or(u32::MAX),
        max_retries: r.get::<i64, _>("max_retries").try_into().unwrap_or(u32::MAX),
        exit_code: r.get("exit_code"),
        finished_at: r.get("finished_at"),
        job_id: r.get("job_id"),
        user_data_path: r.get("user_data_path"),
        seed_spec: r.get("seed_spec"),
        idle_timeout: r.get("idle_timeout"),
        on_idle: parse_column(&id, "on_idle", r.get("on_idle"))?,
        last_active_at: r.get("last_active_at"),
        idled_at: r.get("idled_at"),
        health: r.get::<Option<String>, _>("health").map(|h| parse_column(&id, "health", h)).transpose()?,
        ready_at: r.get("ready_at"),
        restart_requested: r.get("restart_requested"),
        id,
    })
}

#[cfg(test)]
mod tests;
