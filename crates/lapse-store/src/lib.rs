//! Lapse's durable store: environments (desired and observed state) and the audit trail.
//!
//! SQLite is the embedded default. All writes go through **one writer thread** ([`commit`]),
//! which runs them on the database's only write connection and commits concurrent ones
//! together (group commit), answering each only after its batch committed. Reads use a pool of
//! their own (sqlx) and never wait for the writer (WAL).
//!
//! A read-modify-write ([`Store::update`]) reads the row with its revision (`rev`, which every
//! write of a row increments), applies the change, and has the writer write it only if the
//! revision is still the one read; otherwise it reads again and applies the change again (the
//! change is a `FnMut`). No update is ever lost, whatever the number of API handlers and
//! reconciler tasks, and none holds the writer while it thinks.
//!
//! **The store never calls a provider.** It holds what was asked for and what was seen; the
//! reconciler writes a row *before* the provider call it describes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use commit::Committer;
use lapse_core::model::{DesiredState, Environment, ObservedState, Pool};
use lapse_core::quota::Quota;
use lapse_core::wire::Event;
use lapse_core::{Millis, now_millis};
use rusqlite::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite};

// Queue receipts and counters (`queues`); tenants, keys, quota usage and accrual (`tenants`).
mod accrual;
mod activity;
mod commit;
mod labs;
pub mod pg;
mod queues;
mod rows;
mod store;
mod tenants;
mod versioned;
mod warm;
mod webhooks;
mod workspaces;

pub use commit::CommitStats;
use rows::{environment_from, environment_values, pool_from};
pub use store::Store;
pub use versioned::Versioned;

pub use webhooks::{Attempt, DeliveryRecord, FanOut, NewDelivery, WebhookRecord};
pub use workspaces::SyncOutcome;

pub use accrual::Accrual;
pub use labs::{LabDecommission, LabDecommissionOutcome, LabMessage, LabOutcome, LabProvisionOutcome, LabRequest};
pub use queues::{AppliedCreates, ChangeOutcome, QueuedChange, QueuedCreate};
pub use tenants::{KeyRecord, KeyScope, TenantRecord};

/// What the database said: from a reader (sqlx) or from the writer (rusqlite).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Read(#[from] sqlx::Error),
    #[error(transparent)]
    Write(#[from] rusqlite::Error),
    #[error("the store's writer has stopped")]
    Closed,
}

/// A store failure. Its text names the operation; the database's own message is the source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {op} failed")]
    Database {
        op: &'static str,
        #[source]
        source: DbError,
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
        source: DbError,
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
            StoreError::Database { source: DbError::Read(e), .. } => {
                e.as_database_error().is_some_and(|e| e.is_unique_violation())
            }
            StoreError::Database { source: DbError::Write(rusqlite::Error::SqliteFailure(e, _)), .. } => {
                // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY.
                matches!(e.extended_code, 2067 | 1555)
            }
            _ => false,
        }
    }
}

/// A writer's error as the store reports it: [`StoreError::Unwritable`] when it is the disk's
/// or the database's (not the statement's).
pub(crate) fn sqlite_error(op: &'static str, e: rusqlite::Error) -> StoreError {
    let unwritable = match &e {
        // SQLite's extended result codes keep the primary code in the low byte: BUSY, LOCKED,
        // NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL.
        rusqlite::Error::SqliteFailure(f, _) => {
            matches!(f.extended_code & 0xff, 5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 15)
        }
        _ => false,
    };
    if unwritable {
        StoreError::Unwritable { op, source: DbError::Write(e) }
    } else {
        StoreError::Database { op, source: DbError::Write(e) }
    }
}

/// Names the operation of a writer's statement that failed.
trait WriteOp<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> WriteOp<T> for Result<T, rusqlite::Error> {
    fn op(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| sqlite_error(op, e))
    }
}

trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> Op<T> for Result<T, sqlx::Error> {
    fn op(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| {
            let unwritable = matches!(
                source,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed
            );
            if unwritable {
                StoreError::Unwritable { op, source: DbError::Read(source) }
            } else {
                StoreError::Database { op, source: DbError::Read(source) }
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

/// A pool member as the pool maintainer sees it ([`Store::pool_member_states`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub id: String,
    pub pool: String,
    pub spec_hash: String,
    pub pool_version: Option<String>,
    pub observed: ObservedState,
    pub desired: DesiredState,
}

/// What the drift sweep needs to know of one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepEntry {
    pub desired: DesiredState,
    pub observed: ObservedState,
    pub updated_at: Millis,
    /// The replica it is placed on (see `Environment::placed_on`).
    pub placed_on: Option<String>,
}

/// The store on SQLite (see the module docs). Cheap to clone. Used through [`Store`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: Committer,
    reader: SqlitePool,
    /// Every committed environment row, for whoever mirrors them (the SWIM cache keys).
    changes: tokio::sync::broadcast::Sender<Arc<Environment>>,
    /// Activity batches written ([`Store::record_activity`]).
    activity_batches: Arc<std::sync::atomic::AtomicU64>,
    /// Candidates for warm claims ([`warm`]), used on the writer's thread only.
    warm: Arc<std::sync::Mutex<warm::Candidates>>,
}

/// How many committed rows a slow [`Store::subscribe`]r may fall behind before it is told it
/// lagged (and must read the store afresh).
pub(crate) const CHANGE_BUFFER: usize = 8192;
/// Most rows one transaction of [`Store::insert_many`] inserts: about 2 ms of the writer's time.
pub const INSERT_CHUNK: usize = 64;

const ENV_COLUMNS: &str = "id, name, tenant, owner, labels, spec, provider, lifecycle, desired, observed, reason, \
     provider_ref, endpoints, expires_at, on_expiry, expired_at, restart_on_extend, attempts, next_attempt_at, \
     created_at, updated_at, spec_hash, pool, pool_version, source, replace_resource, restarts, max_retries, exit_code, \
     finished_at, job_id, user_data_path, seed_spec, idle_timeout, on_idle, last_active_at, idled_at, health, ready_at, \
     restart_requested, warn_before, warned, warned_at, placed_on";

impl SqliteStore {
    /// [`crate::Store::open`], on SQLite.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // Migrations run on a connection of their own, closed before the writer starts.
        let migrator = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await
            .op("open")?;
        sqlx::migrate!("./migrations").run(&migrator).await?;
        migrator.close().await;
        let path = path.to_owned();
        let writer = tokio::task::spawn_blocking(move || Committer::start(&path))
            .await
            .map_err(|e| StoreError::Refused(format!("store: starting the writer failed: {e}")))??;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.read_only(true))
            .await
            .op("open")?;
        let (changes, _) = tokio::sync::broadcast::channel(CHANGE_BUFFER);
        Ok(SqliteStore { writer, reader, changes, activity_batches: Default::default(), warm: Default::default() })
    }

    /// [`crate::Store::controller_id`], on SQLite.
    pub async fn controller_id(&self) -> Result<String, StoreError> {
        let fresh = format!("lapse-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        self.writer
            .run("controller id", move |conn| {
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('controller_id', ?1)", [&fresh])
                    .op("controller id")?;
                conn.query_row("SELECT value FROM meta WHERE key = 'controller_id'", [], |r| r.get(0))
                    .op("controller id")
            })
            .await
    }

    /// The writer's counters (commits, operations, batches replayed).
    pub fn commit_stats(&self) -> &CommitStats {
        self.writer.stats()
    }

    /// [`crate::Store::subscribe`], on SQLite.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Environment>> {
        self.changes.subscribe()
    }

    fn published(&self, env: &Environment) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Arc::new(env.clone()));
        }
    }

    /// [`crate::Store::insert`], on SQLite.
    pub async fn insert(&self, env: &Environment, event: NewEvent) -> Result<(), StoreError> {
        self.insert_many(std::slice::from_ref(env), &[event]).await
    }

    /// [`crate::Store::insert_many`], on SQLite.
    pub async fn insert_many(&self, envs: &[Environment], events: &[NewEvent]) -> Result<(), StoreError> {
        let ids: HashSet<&str> = envs.iter().map(|e| e.id.as_str()).collect();
        let mut by_env: HashMap<&str, Vec<NewEvent>> = HashMap::new();
        let mut loose = Vec::new();
        for ev in events {
            match ev.environment_id.as_deref() {
                Some(id) if ids.contains(id) => by_env.entry(id).or_default().push(ev.clone()),
                _ => loose.push(ev.clone()),
            }
        }
        for chunk in envs.chunks(INSERT_CHUNK) {
            // Serialized here, not on the writer's thread.
            let rows: Vec<rows::Values> = chunk.iter().map(environment_values).collect();
            let mut evs = std::mem::take(&mut loose);
            for env in chunk {
                evs.extend(by_env.remove(env.id.as_str()).unwrap_or_default());
            }
            self.writer
                .run("insert", move |conn| {
                    for row in &rows {
                        insert_values(conn, row)?;
                    }
                    append_events(conn, &evs)
                })
                .await?;
            for env in chunk {
                self.published(env);
            }
        }
        Ok(())
    }

    /// [`crate::Store::claim`], on SQLite.
    pub async fn claim(
        &self,
        spec_hash: &str,
        admit: Option<(&str, &Quota)>,
        mut claim: impl FnMut(&mut Environment) -> Vec<NewEvent> + Send + 'static,
    ) -> Result<Option<Environment>, StoreError> {
        let spec_hash = spec_hash.to_owned();
        let admit = admit.map(|(tenant, quota)| (tenant.to_owned(), quota.clone()));
        let warm = self.warm.clone();
        let claimed = self
            .writer
            .run("claim", move |conn| {
                let Some(mut env) = warm::next_member(conn, &warm, &spec_hash)? else { return Ok(None) };
                if let Some((tenant, quota)) = &admit {
                    let usage = tenants::usage(conn, tenant)?;
                    quota.admit(&usage, &env.spec).map_err(StoreError::Refused)?;
                }
                // The closure sees which pool the member leaves; then it is no longer the pool's.
                let events = claim(&mut env);
                env.pool = None;
                env.pool_version = None;
                env.updated_at = now_millis();
                write_row(conn, &env)?;
                append_events(conn, &events)?;
                Ok(Some(env))
            })
            .await?;
        if let Some(env) = &claimed {
            self.published(env);
        }
        Ok(claimed)
    }

    /// [`crate::Store::put_pool`], on SQLite.
    pub async fn put_pool(&self, pool: &Pool, event: NewEvent) -> Result<(), StoreError> {
        let pool = pool.clone();
        self.writer
            .run("put pool", move |conn| {
                conn.prepare_cached(
                    "INSERT INTO pools (name, spec, spec_hash, min, max, version, lifecycle, source, on_claim, \
                     created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                     ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, spec_hash = excluded.spec_hash, \
                     min = excluded.min, max = excluded.max, version = excluded.version, \
                     lifecycle = excluded.lifecycle, source = excluded.source, on_claim = excluded.on_claim, \
                     updated_at = excluded.updated_at",
                )
                .and_then(|mut st| {
                    st.execute(rusqlite::params![
                        pool.name,
                        json(&pool.spec),
                        pool.spec.hash(),
                        pool.min,
                        pool.max,
                        pool.version,
                        pool.lifecycle.as_str(),
                        pool.source,
                        pool.on_claim.as_ref().map(json),
                        pool.created_at,
                        pool.updated_at,
                    ])
                })
                .op("put pool")?;
                append_event(conn, &event)
            })
            .await
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
        row.map(|r| pool_from(&r)).transpose()
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, spec, min, max, version, lifecycle, source, on_claim, created_at, updated_at FROM pools \
             ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await
        .op("list pools")?;
        rows.iter().map(pool_from).collect()
    }

    /// [`crate::Store::delete_pool`], on SQLite.
    pub async fn delete_pool(&self, name: &str, event: NewEvent) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.writer
            .run("delete pool", move |conn| {
                let gone = conn.execute("DELETE FROM pools WHERE name = ?1", [&name]).op("delete pool")?;
                if gone == 0 {
                    return Ok(false);
                }
                append_event(conn, &event)?;
                Ok(true)
            })
            .await
    }

    /// [`crate::Store::get_by_job`], on SQLite.
    pub async fn get_by_job(&self, job_id: &str) -> Result<Option<Environment>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE job_id = ? AND desired != 'deleted'"))
                .bind(job_id)
                .fetch_optional(&self.reader)
                .await
                .op("get by job")?;
        row.map(|r| environment_from(&r)).transpose()
    }

    /// [`crate::Store::config_declared`], on SQLite.
    pub async fn config_declared(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = 'config' AND desired != 'deleted' ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await
        .op("config declared")?;
        rows.iter().map(environment_from).collect()
    }

    /// [`crate::Store::pool_member_states`], on SQLite.
    pub async fn pool_member_states(&self) -> Result<Vec<MemberState>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, pool, spec_hash, pool_version, observed, desired FROM environments \
             WHERE pool IS NOT NULL AND observed != 'deleted' ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await
        .op("pool members")?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                Ok(MemberState {
                    pool: r.get(1),
                    spec_hash: r.get(2),
                    pool_version: r.get(3),
                    observed: parse_column(&id, "observed", r.get(4))?,
                    desired: parse_column(&id, "desired", r.get(5))?,
                    id,
                })
            })
            .collect()
    }

    /// [`crate::Store::pool_members`], on SQLite.
    pub async fn pool_members(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE pool IS NOT NULL AND observed != 'deleted' ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await
        .op("pool members")?;
        rows.iter().map(environment_from).collect()
    }

    pub async fn get(&self, id: &str) -> Result<Option<Environment>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .op("get")?;
        row.map(|r| environment_from(&r)).transpose()
    }

    /// [`crate::Store::update`], on SQLite.
    pub async fn update<E>(
        &self,
        id: &str,
        change: impl FnMut(&mut Environment) -> Result<Vec<NewEvent>, E>,
    ) -> Result<Option<Environment>, E>
    where
        E: From<StoreError>,
    {
        self.update_admitted(id, None, change).await
    }

    /// [`crate::Store::update_admitted`], on SQLite.
    pub async fn update_admitted<E>(
        &self,
        id: &str,
        admit: Option<(&str, &Quota)>,
        change: impl FnMut(&mut Environment) -> Result<Vec<NewEvent>, E>,
    ) -> Result<Option<Environment>, E>
    where
        E: From<StoreError>,
    {
        Ok(self.update_from(id, None, admit, change).await?.map(|v| v.env))
    }

    /// [`SqliteStore::update_admitted`], its first attempt from `known` (a row and the
    /// revision it was read at) instead of a read; a row written since is read again, as on
    /// any conflict. The row written, with its new revision.
    pub(crate) async fn update_from<E>(
        &self,
        id: &str,
        mut known: Option<(Environment, i64)>,
        admit: Option<(&str, &Quota)>,
        mut change: impl FnMut(&mut Environment) -> Result<Vec<NewEvent>, E>,
    ) -> Result<Option<Versioned>, E>
    where
        E: From<StoreError>,
    {
        loop {
            let (mut env, rev) = match known.take() {
                Some(row) => row,
                None => match self.get_with_rev(id, "update").await? {
                    Some(row) => row,
                    None => return Ok(None),
                },
            };
            let before = env.clone();
            let events = change(&mut env)?;
            // What the quota must admit, if anything: the row's new spec beside what the
            // tenant holds without the row as it was.
            let admission = match admit {
                Some((tenant, quota))
                    if counts(&env) && (!counts(&before) || before.spec.resources != env.spec.resources) =>
                {
                    let held_before = (counts(&before) && before.tenant == tenant).then(|| before.spec.clone());
                    Some((tenant.to_owned(), quota.clone(), held_before))
                }
                _ => None,
            };
            env.updated_at = now_millis();
            // Serialized here, not on the writer's thread.
            let values = environment_values(&env);
            let spec = (admission.is_some()).then(|| env.spec.clone());
            let written = self
                .writer
                .run("update", move |conn| {
                    if let Some((tenant, quota, held_before)) = &admission {
                        let mut held = tenants::usage(conn, tenant)?;
                        if let Some(spec) = held_before {
                            held.environments = held.environments.saturating_sub(1);
                            let r = spec.resources.clone().unwrap_or_default();
                            held.vcpu = (held.vcpu - r.vcpu.unwrap_or(0.0)).max(0.0);
                            held.mem_mb = held.mem_mb.saturating_sub(r.mem_mb.unwrap_or(0));
                            held.disk_gb = held.disk_gb.saturating_sub(r.disk_gb.unwrap_or(0));
                        }
                        if let Some(spec) = &spec {
                            quota.admit(&held, spec).map_err(StoreError::Refused)?;
                        }
                    }
                    if !write_values_at(conn, &values, rev)? {
                        return Ok(false);
                    }
                    append_events(conn, &events)?;
                    Ok(true)
                })
                .await?;
            if written {
                self.published(&env);
                return Ok(Some(Versioned::read_at(env, rev + 1)));
            }
            // Written by someone else since it was read: read it again and redo the change.
        }
    }

    /// A row and its revision, read now.
    pub(crate) async fn get_with_rev(
        &self,
        id: &str,
        op: &'static str,
    ) -> Result<Option<(Environment, i64)>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ENV_COLUMNS}, rev FROM environments WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .op(op)?;
        row.map(|r| Ok((environment_from(&r)?, r.get::<i64, _>("rev")))).transpose()
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Environment>, StoreError> {
        let (mut sql, mut values) = filtered(filter);
        sql.push_str(" ORDER BY id");
        if let Some(limit) = filter.limit {
            sql.push_str(" LIMIT ?");
            values.push(rusqlite::types::Value::Integer(i64::from(limit)));
        }
        let rows = bind_all(sqlx::query(&sql), &values).fetch_all(&self.reader).await.op("list")?;
        rows.iter().map(environment_from).collect()
    }

    /// [`crate::Store::unconverged_ids`], on SQLite.
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

    /// [`crate::Store::pending_expiries`], on SQLite.
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

    /// [`crate::Store::sweep_view`], on SQLite.
    pub async fn sweep_view(&self, provider: &str) -> Result<BTreeMap<String, SweepEntry>, StoreError> {
        use futures::TryStreamExt;
        // Streamed, not collected: with many environments, a `Vec` of rows would cost far more
        // than the map it becomes.
        let mut rows = sqlx::query(
            "SELECT id, desired, observed, updated_at, placed_on FROM environments WHERE provider = ? AND observed != 'deleted'",
        )
        .bind(provider)
        .fetch(&self.reader);
        let mut out = BTreeMap::new();
        while let Some(r) = rows.try_next().await.op("sweep view")? {
            let id: String = r.get(0);
            let desired = parse_column(&id, "desired", r.get::<String, _>(1))?;
            let observed = parse_column(&id, "observed", r.get::<String, _>(2))?;
            out.insert(id, SweepEntry { desired, observed, updated_at: r.get(3), placed_on: r.get(4) });
        }
        Ok(out)
    }

    /// [`crate::Store::count_by_provider_and_state`], on SQLite.
    pub async fn count_by_provider_and_state(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT provider, observed, COUNT(*) FROM environments GROUP BY provider, observed")
            .fetch_all(&self.reader)
            .await
            .op("count")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// [`crate::Store::append_event`], on SQLite.
    pub async fn append_event(&self, event: NewEvent) -> Result<(), StoreError> {
        self.writer.run("append event", move |conn| append_event(conn, &event)).await
    }

    /// Runs one statement on the writer (in its next batch).
    pub(crate) async fn execute(
        &self,
        op: &'static str,
        sql: &'static str,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<(), StoreError> {
        self.writer
            .run(op, move |conn| {
                conn.prepare_cached(sql)
                    .and_then(|mut st| st.execute(rusqlite::params_from_iter(values.iter())))
                    .op(op)?;
                Ok(())
            })
            .await
    }

    /// [`crate::Store::is_writable`], on SQLite.
    pub fn is_writable(&self) -> bool {
        self.writer.is_writable()
    }

    /// [`crate::Store::events`], on SQLite.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<EventRow> = events_query(filter).build_query_as().fetch_all(&self.reader).await.op("events")?;
        Ok(rows.into_iter().map(event_from).collect())
    }

    /// [`crate::Store::expiry_lateness`], on SQLite.
    pub async fn expiry_lateness(&self, owner: &str) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT expired_at - expires_at FROM environments WHERE expired_at IS NOT NULL AND owner = ?",
        )
        .bind(owner)
        .fetch_all(&self.reader)
        .await
        .op("expiry lateness")
    }

    /// [`crate::Store::close`], on SQLite.
    pub async fn close(&self) {
        let _ = self.writer.run("close", |_| Ok(())).await;
        self.reader.close().await;
    }
}

/// An event's columns as [`events_query`] selects them.
pub(crate) type EventRow = (i64, Millis, Option<String>, String, String, String, String, Option<String>);

/// The query of [`Store::events`], for either backend's builder.
pub(crate) fn events_query<'a, DB>(filter: &EventFilter) -> QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new(
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
    q
}

pub(crate) fn event_from(r: EventRow) -> Event {
    let (seq, at, environment_id, actor, action, outcome, message, tenant) = r;
    Event { seq, at, environment_id, actor, action, outcome, message, tenant }
}

/// Whether a row counts against its tenant's quota (as `tenants::usage` counts).
fn counts(e: &Environment) -> bool {
    e.desired != DesiredState::Deleted
        && !matches!(e.observed, ObservedState::Deleted | ObservedState::Failed)
        && e.pool.is_none()
}

/// The query of [`Store::list`] up to its order and limit: its text (`?` placeholders) and
/// values, for either connection ([`bind_all`] binds them on a reader's query).
fn filtered(filter: &ListFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut sql = format!("SELECT {ENV_COLUMNS} FROM environments WHERE 1=1");
    let mut values = Vec::new();
    let mut eq = |column: &str, value: &Option<String>| {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            values.push(V::Text(v.clone()));
        }
    };
    eq("tenant", &filter.tenant);
    eq("owner", &filter.owner);
    eq("provider", &filter.provider);
    eq("job_id", &filter.job_id);
    match filter.state {
        Some(state) => eq("observed", &Some(state.as_str().to_owned())),
        None => sql.push_str(" AND observed != 'deleted'"),
    }
    if let Some(after) = &filter.after {
        sql.push_str(" AND id > ?");
        values.push(V::Text(after.clone()));
    }
    for (k, v) in &filter.labels {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM json_each(environments.labels) WHERE json_each.key = ? AND json_each.value = ?)",
        );
        values.push(V::Text(k.clone()));
        values.push(V::Text(v.clone()));
    }
    (sql, values)
}

/// Binds `values` (as [`filtered`] gives them) on a reader's query.
fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    values: &'q [rusqlite::types::Value],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    use rusqlite::types::Value as V;
    for v in values {
        q = match v {
            V::Null => q.bind(None::<String>),
            V::Integer(i) => q.bind(*i),
            V::Real(f) => q.bind(*f),
            V::Text(t) => q.bind(t.as_str()),
            V::Blob(b) => q.bind(b.as_slice()),
        };
    }
    q
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Serializing plain data (maps of strings, derived structs) cannot fail.
    serde_json::to_string(value).expect("model types serialize")
}

/// Appends events, in order.
fn append_events(conn: &Connection, events: &[NewEvent]) -> Result<(), StoreError> {
    events.iter().try_for_each(|e| append_event(conn, e))
}

fn append_event(conn: &Connection, e: &NewEvent) -> Result<(), StoreError> {
    let mut st = conn
        .prepare_cached(
            "INSERT INTO events (at, environment_id, actor, action, outcome, message, tenant) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE(?7, (SELECT tenant FROM environments WHERE id = ?2)))",
        )
        .op("append event")?;
    st.execute(rusqlite::params![now_millis(), e.environment_id, e.actor, e.action, e.outcome, e.message, e.tenant])
        .op("append event")?;
    Ok(())
}

/// `?1, ?2, ... ?n`.
fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
}

pub(crate) fn env_column_names() -> impl Iterator<Item = &'static str> {
    ENV_COLUMNS.split(',').map(str::trim)
}

/// Inserts a new row (a unique violation if its id or job id is taken).
fn insert_row(conn: &Connection, e: &Environment) -> Result<(), StoreError> {
    insert_values(conn, &environment_values(e))
}

/// [`insert_row`] of a row's values ([`environment_values`]).
fn insert_values(conn: &Connection, values: &rows::Values) -> Result<(), StoreError> {
    static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("INSERT INTO environments ({ENV_COLUMNS}) VALUES ({})", placeholders(env_column_names().count()))
    });
    let mut st = conn.prepare_cached(&INSERT).op("insert")?;
    st.execute(rusqlite::params_from_iter(values.iter())).op("insert")?;
    Ok(())
}

/// Writes the whole row, inserting it if it is missing: the same columns and values as an
/// insert (one list to keep, see [`environment_values`]); its revision grows.
fn write_row(conn: &Connection, e: &Environment) -> Result<(), StoreError> {
    static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let updates: Vec<String> = env_column_names()
            .filter(|c| !matches!(*c, "id" | "created_at"))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        format!(
            "INSERT INTO environments ({ENV_COLUMNS}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}, rev = rev + 1",
            placeholders(env_column_names().count()),
            updates.join(", ")
        )
    });
    let mut st = conn.prepare_cached(&UPSERT).op("update")?;
    st.execute(rusqlite::params_from_iter(environment_values(e))).op("update")?;
    Ok(())
}

/// Writes a row's values ([`environment_values`]) if its revision is still `rev`; `false`
/// (nothing written) if another write came first.
fn write_values_at(conn: &Connection, values: &rows::Values, rev: i64) -> Result<bool, StoreError> {
    static UPDATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let names: Vec<&str> = env_column_names().collect();
        let sets: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(_, c)| !matches!(**c, "id" | "created_at"))
            .map(|(i, c)| format!("{c} = ?{}", i + 1))
            .collect();
        let id = names.iter().position(|c| *c == "id").map_or(1, |i| i + 1);
        format!(
            "UPDATE environments SET {}, rev = rev + 1 WHERE id = ?{id} AND rev = ?{}",
            sets.join(", "),
            names.len() + 1
        )
    });
    let mut st = conn.prepare_cached(&UPDATE).op("update")?;
    let rev = rusqlite::types::Value::Integer(rev);
    Ok(st.execute(rusqlite::params_from_iter(values.iter().chain([&rev]))).op("update")? == 1)
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

#[cfg(test)]
mod tests;
