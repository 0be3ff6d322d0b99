//! The PostgreSQL store (`--database postgres://...`): connecting, migrating, and every
//! operation of the store, each beside its SQLite original. Any number of `lapse serve`
//! replicas share a database ([`sole`]: the shared server lock); one of them leads and runs
//! the background work ([`lead`]: the leader's lock, fencing).
//!
//! How an operation is written (every file of this module keeps to it):
//! - **Same name, same signature, same contract** as [`crate::Store`]'s method, errors as
//!   [`crate::StoreError`] (sqlx's errors through the crate's `Op`): [`crate::Store`]
//!   dispatches to either backend, and the store's contract tests run against both.
//! - **One transaction per operation**, on a pooled connection; a read-modify-write locks the
//!   row it read (`SELECT ... FOR UPDATE`) instead of SQLite's revision check, and still bumps
//!   `rev`. Many replicas write at once: nothing may rely on one writer.
//! - **Events last.** [`append_events`] takes a transaction-scoped advisory lock
//!   ([`EVENTS_LOCK`]) so that event numbers commit in the order they are handed out (the
//!   webhooks' outbox follows `events.seq` as a cursor, and must never see a lower number
//!   commit after a higher one). It is the last write of its transaction: a transaction that
//!   holds the lock never waits for a row lock, so the lock cannot take part in a deadlock.
//! - **Changes are published after commit** ([`PgStore::published`]), as SQLite's store does.
//!
//! Contract of [`PgStore::connect`]:
//! - The URL must be `postgres://` or `postgresql://` and parse; otherwise
//!   [`PgError::Url`], which never repeats the URL (it may hold a password).
//! - One connection is made first, within 5 s ([`CONNECT_TIMEOUT`]): a server that refuses,
//!   does not answer or rejects the login is [`PgError::Connect`], naming host, port and the
//!   server's (or the OS's) reason. Then a bounded pool (`max(4, 2 × cores)` connections,
//!   the same timeout to acquire one) serves the store.
//! - Migrations (`migrations-pg/`) run under a session advisory lock
//!   ([`MIGRATION_LOCK`]): replicas starting together migrate once, one after the other;
//!   the others wait for the lock, then find nothing to do.
//! - A database whose `_sqlx_migrations` holds a version this binary does not know (a newer
//!   Lapse migrated it) is refused with [`PgError::NewerSchema`] before anything is written.

use std::str::FromStr as _;
use std::time::Duration;

use std::sync::Arc;

use lapse_core::model::Environment;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Row as _};

mod activity;
mod claims;
pub mod copy;
mod envs;
pub mod feed;
pub mod lead;
mod pools;
mod queues;
mod rows;
mod sole;
mod tenants;
#[cfg(test)]
pub(crate) mod testdb;
mod webhooks;
mod workspaces;
pub(crate) mod write;

pub use feed::Remote;
pub use lead::{LEADER_LOCK, Lead};
pub(crate) use rows::push_environment;
pub use sole::{CHECK_EVERY, HeldLock, SERVER_LOCK};
pub(crate) use write::append_events;

/// The key of the session advisory lock held while migrations run ("lapse_mg"). Advisory
/// locks are per database, so one key serves every database on a server.
pub const MIGRATION_LOCK: i64 = 0x6c61_7073_655f_6d67;

/// The key of the transaction advisory lock held from a transaction's first event to its
/// commit ("lapse_ev"): see the module docs.
pub const EVENTS_LOCK: i64 = 0x6c61_7073_655f_6576;

/// How long connecting (and acquiring a pooled connection) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the PostgreSQL store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL is not a PostgreSQL connection URL.
    #[error("malformed PostgreSQL URL: {0} (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)")]
    Url(String),
    /// A replica id that is not one ([`is_replica_id`]).
    #[error("{0:?} is not a replica id (r- and 12 hex digits)")]
    ReplicaId(String),
    /// Another replica connected with this replica's id (a data dir copied with its id).
    #[error(
        "another replica is connected to this PostgreSQL database as {0} (was this data dir copied from another \
         server's? remove its replica-id file to give it a new id)"
    )]
    ReplicaInUse(String),
    /// The server could not be reached, or refused the login.
    #[error("cannot connect to PostgreSQL at {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: sqlx::Error,
    },
    /// The database was migrated by a newer Lapse.
    #[error(
        "the PostgreSQL database's schema is newer than this lapse: it holds migration {applied}, and this \
         binary knows migrations up to {known}; run a lapse at least as new as the one that migrated it"
    )]
    NewerSchema { applied: i64, known: i64 },
    /// The database is taken: by servers, for what needs it alone (`lapse migrate`), or by
    /// that, for a server ([`SERVER_LOCK`]).
    #[error(
        "this PostgreSQL database is in use: a lapse serve runs on it, or lapse migrate is copying into it \
         (the server lock is held in a conflicting mode)"
    )]
    Taken,
    /// A migration failed (or an applied one differs from this binary's).
    #[error("migrating the PostgreSQL database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error, with what was being done.
    #[error("PostgreSQL: {op}: {source}")]
    Sql {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, PgError>;
}

impl<T> Op<T> for Result<T, sqlx::Error> {
    fn op(self, op: &'static str) -> Result<T, PgError> {
        self.map_err(|source| PgError::Sql { op, source })
    }
}

/// The warm claim's query: running, healthy, unreplaced members of a current pool with spec
/// hash `$1`, in id order, at most `$2`, locked, skipping members another claim holds. Its
/// `WHERE` starts with the partial index `environments_warm`'s predicate, word for word
/// (migrations-pg/0001_init.sql), which is what lets the planner use that index.
pub fn claim_query(columns: &str) -> String {
    format!(
        "SELECT {columns} FROM environments e WHERE e.pool IS NOT NULL AND e.observed = 'running' \
         AND e.desired = 'running' AND e.replace_resource = false AND (e.health IS NULL OR e.health = 'healthy') \
         AND e.spec_hash = $1 AND EXISTS (SELECT 1 FROM pools p \
         WHERE p.name = e.pool AND p.spec_hash = e.spec_hash AND p.version = e.pool_version) \
         ORDER BY e.id LIMIT $2 FOR UPDATE OF e SKIP LOCKED"
    )
}

/// Lapse's store on PostgreSQL: a migrated database behind a bounded pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Every committed environment row, as [`crate::Store::subscribe`] gives them.
    changes: tokio::sync::broadcast::Sender<Arc<Environment>>,
    /// Whether the last write found the server able to take it ([`PgStore::is_writable`]).
    writable: Arc<std::sync::atomic::AtomicBool>,
    /// Activity batches written ([`PgStore::record_activity`]).
    activity_batches: Arc<std::sync::atomic::AtomicU64>,
    /// This replica's claim batcher ([`claims`]); `None` in the batcher's own clone.
    claims: Option<claims::Claims>,
    /// Claim batches committed ([`PgStore::claim_batches`]).
    claim_batches: Arc<std::sync::atomic::AtomicU64>,
    /// This replica's id, in its connections' `application_name` ([`feed`]).
    replica: Arc<str>,
    /// What other replicas commit ([`PgStore::remote_changes`]).
    remote: tokio::sync::broadcast::Sender<feed::Remote>,
    /// Ids this store committed, for the other replicas ([`feed`]).
    notify: Option<tokio::sync::mpsc::Sender<String>>,
    /// Set when an id could not be queued: the next notification says `*` (read again).
    notify_overflow: Arc<std::sync::atomic::AtomicBool>,
    /// The leader epoch this store's writes are fenced with; 0: none ([`lead`]).
    fence: Arc<std::sync::atomic::AtomicI64>,
}

/// A new replica id: `r-` and 12 hex digits.
pub fn new_replica_id() -> String {
    format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Whether `s` is a replica id ([`new_replica_id`]'s form).
pub fn is_replica_id(s: &str) -> bool {
    s.strip_prefix("r-").is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl PgStore {
    /// Parses `url`, connects, and migrates under [`MIGRATION_LOCK`] (see the module docs),
    /// as a replica of a new id.
    pub async fn connect(url: &str) -> Result<PgStore, PgError> {
        PgStore::connect_as(url, &new_replica_id()).await
    }

    /// [`PgStore::connect`] as replica `replica` (a server keeps its id in its data dir, so the
    /// environments its local providers hold stay its own across restarts); it must be a
    /// [`is_replica_id`], and no connection of that id may be open ([`PgError::ReplicaInUse`]).
    pub async fn connect_as(url: &str, replica: &str) -> Result<PgStore, PgError> {
        if !is_replica_id(replica) {
            return Err(PgError::ReplicaId(replica.to_owned()));
        }
        let replica: Arc<str> = replica.into();
        let options = parse_url(url)?.application_name(&format!("lapse {replica}"));
        // One connection first, on its own: its error is the server's (refused, unknown
        // host, bad password), where a pool would only say that it timed out. It migrates.
        let mut conn = connect_one(&options).await?;
        let same: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid() \
             AND datname = current_database()",
        )
        .bind(format!("lapse {replica}"))
        .fetch_one(&mut conn)
        .await
        .map_err(|source| PgError::Sql { op: "look for this replica id", source })?;
        if same > 0 {
            return Err(PgError::ReplicaInUse(replica.to_string()));
        }
        migrate(conn).await?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size())
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        let (changes, _) = tokio::sync::broadcast::channel(crate::CHANGE_BUFFER);
        let (remote, _) = tokio::sync::broadcast::channel(crate::CHANGE_BUFFER);
        let mut store = PgStore {
            pool,
            changes,
            writable: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            activity_batches: Default::default(),
            claims: None,
            claim_batches: Default::default(),
            replica,
            remote,
            fence: Default::default(),
            notify: None,
            notify_overflow: Default::default(),
        };
        // Both tasks hold a clone without a batcher: the batcher ends with the last store.
        store.start_feed();
        store.notify = Some(store.start_notifier());
        store.claims = Some(claims::Claims::start(store.clone()));
        Ok(store)
    }

    /// Claim batches committed by this replica (each holds one or more claims).
    pub fn claim_batches(&self) -> u64 {
        self.claim_batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every environment row committed through this store from now on, as written.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Environment>> {
        self.changes.subscribe()
    }

    /// Publishes a committed row to [`PgStore::subscribe`]rs. Call it after the commit.
    pub(crate) fn published(&self, env: &Environment) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Arc::new(env.clone()));
        }
        self.tell_replicas(&env.id);
    }

    /// The pool, for the store's operations (and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The plan PostgreSQL makes for the warm claim ([`claim_query`]) of one member with
    /// spec hash `spec_hash`: `EXPLAIN`'s text, one line per plan line.
    pub async fn claim_plan(&self, spec_hash: &str) -> Result<String, PgError> {
        let rows = sqlx::query(&format!("EXPLAIN {}", claim_query("e.id")))
            .bind(spec_hash)
            .bind(1_i64)
            .fetch_all(&self.pool)
            .await
            .op("explain the claim")?;
        let lines: Result<Vec<String>, _> = rows.iter().map(|r| r.try_get::<String, _>(0)).collect();
        Ok(lines.op("explain the claim")?.join("\n"))
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One connection within [`CONNECT_TIMEOUT`]; its failure names host, port and the reason.
pub(crate) async fn connect_one(options: &PgConnectOptions) -> Result<PgConnection, PgError> {
    let (host, port) = (options.get_host().to_owned(), options.get_port());
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(PgError::Connect { host, port, source }),
        Err(_) => {
            let silent = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5 s");
            Err(PgError::Connect { host, port, source: sqlx::Error::Io(silent) })
        }
    }
}

/// Accepts `postgres://` and `postgresql://` URLs only (libpq's key=value strings are not
/// URLs, and anything else is surely a mistake).
fn parse_url(url: &str) -> Result<PgConnectOptions, PgError> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(PgError::Url("it must start with postgres:// or postgresql://".into()));
    }
    // sqlx's messages name the part that is wrong, never the URL itself.
    PgConnectOptions::from_str(url).map_err(|e| PgError::Url(e.to_string()))
}

/// Near the core count: PostgreSQL does better with few busy connections than many.
fn pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    u32::try_from(cores.saturating_mul(2)).unwrap_or(u32::MAX).max(4)
}

/// Runs the migrations on `conn` while it holds [`MIGRATION_LOCK`], then closes it. The lock
/// is a session lock: however this ends, closing (or dropping) the connection ends the
/// session and so releases the lock.
async fn migrate(mut conn: PgConnection) -> Result<(), PgError> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut conn)
        .await
        .op("take the migration lock")?;
    let mut migrator = sqlx::migrate!("./migrations-pg");
    // Our lock replaces sqlx's own (one key, documented above).
    migrator.set_locking(false);
    refuse_newer(&mut conn, &migrator).await?;
    migrator.run_direct(&mut conn).await?;
    conn.close().await.op("close the migration connection")?;
    Ok(())
}

/// Refuses a database holding a migration this binary does not know.
async fn refuse_newer(conn: &mut PgConnection, migrator: &sqlx::migrate::Migrator) -> Result<(), PgError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .op("read the applied migrations")?;
    if !exists {
        return Ok(());
    }
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .op("read the applied migrations")?;
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match applied.into_iter().find(|v| !migrator.version_exists(*v)) {
        Some(applied) => Err(PgError::NewerSchema { applied, known }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_copy;
#[cfg(test)]
mod tests_envs;
#[cfg(test)]
mod tests_queues;
#[cfg(test)]
mod tests_replicas;
#[cfg(test)]
mod tests_tenants;
