//! Environments on PostgreSQL: [`crate::Store`]'s environment operations, same names, same
//! signatures, same contracts (see each method's docs there); what differs is how:
//!
//! - **Writes** are one transaction each on a pooled connection. [`PgStore::update`] locks the
//!   row it reads (`SELECT ... FOR UPDATE`) where SQLite re-reads on a revision conflict, so
//!   `change` runs once per call (SQLite may run it again); the row's `rev` still grows.
//!   With a quota ([`PgStore::update_admitted`]) the tenant is locked first ([`lock_tenant`]),
//!   so two replicas' admissions for one tenant cannot both pass a limit.
//! - [`PgStore::insert_many`] commits [`crate::INSERT_CHUNK`] rows to a transaction, each
//!   chunk with its own environments' events (loose events with the first chunk), as SQLite's.
//! - Committed environment rows are published ([`PgStore::subscribe`]) after their commit, in
//!   the same places as SQLite's store; nothing is published for a write that did not commit.
//! - **Writability** ([`PgStore::is_writable`]): `true` unless the last write failed because
//!   the server could not take it, i.e. a [`StoreError::Unwritable`]: the crate's `Op` makes
//!   one of a connection that failed or a pool that timed out, and [`PgStore::observed`] of a
//!   server that says it cannot write now (SQLSTATE class 08 connection, 53 insufficient
//!   resources such as a full disk, 57P01-57P03 shutting down, 25006 a read-only standby).
//!   A later write that the server answers sets it again. Reads neither set nor clear it.
//! - Errors keep the crate's kinds: a uniqueness violation (an id, a live `job_id`) is a
//!   [`StoreError::Database`] whose [`StoreError::is_conflict`] is true.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use lapse_core::model::Environment;
use lapse_core::quota::Quota;
use lapse_core::wire::Event;
use lapse_core::{Millis, now_millis};
use sqlx::Row as _;

use super::PgStore;
use super::append_events;
use super::write::{insert_rows, lock_row, lock_tenant, usage, write_row};
use crate::Op as _;
use crate::rows::environment_from;
use crate::{
    DbError, ENV_COLUMNS, EventFilter, INSERT_CHUNK, ListFilter, NewEvent, StoreError, SweepEntry, counts, parse_column,
};
use crate::{EventRow, event_from, events_query};

/// Whether PostgreSQL's SQLSTATE `code` says the server cannot take writes now (not that the
/// statement is wrong): see the module docs.
fn unwritable_state(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03" | "25006")
}

impl PgStore {
    /// A write's outcome as the store reports it: a database error of the server's state
    /// becomes [`StoreError::Unwritable`], which clears [`PgStore::is_writable`]; an outcome
    /// the server answered sets it.
    pub(super) fn observed<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        let outcome = outcome.map_err(|e| match e {
            StoreError::Database { op, source: DbError::Read(source) }
                if source.as_database_error().and_then(|d| d.code()).is_some_and(|c| unwritable_state(&c)) =>
            {
                StoreError::Unwritable { op, source: DbError::Read(source) }
            }
            other => other,
        });
        match &outcome {
            Err(e) if e.is_unwritable() => self.writable.store(false, Ordering::Relaxed),
            Err(_) => {}
            Ok(_) => self.writable.store(true, Ordering::Relaxed),
        }
        outcome
    }

    /// Whether the last write reached a server that could take it (see the module docs).
    /// Cheap; `/readyz` and the API's `503`s read it.
    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// This control plane's id: made once (by whichever replica comes first), kept for the
    /// life of the database.
    pub async fn controller_id(&self) -> Result<String, StoreError> {
        let fresh = format!("lapse-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let outcome = async {
            let mut tx = self.begin("controller id").await?;
            sqlx::query("INSERT INTO meta (key, value) VALUES ('controller_id', $1) ON CONFLICT (key) DO NOTHING")
                .bind(&fresh)
                .execute(&mut *tx)
                .await
                .op("controller id")?;
            let id: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'controller_id'")
                .fetch_one(&mut *tx)
                .await
                .op("controller id")?;
            tx.commit().await.op("controller id")?;
            Ok(id)
        };
        self.observed(outcome.await)
    }

    /// [`crate::Store::insert`], on PostgreSQL.
    pub async fn insert(&self, env: &Environment, event: NewEvent) -> Result<(), StoreError> {
        self.insert_many(std::slice::from_ref(env), &[event]).await
    }

    /// Inserts environments and their events, [`INSERT_CHUNK`] rows to a transaction, one
    /// chunk after the other, each with its own environments' events (an event of none goes
    /// with the first chunk); if one fails, the chunks before it stay and the error is returned.
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
            let mut evs = std::mem::take(&mut loose);
            for env in chunk {
                evs.extend(by_env.remove(env.id.as_str()).unwrap_or_default());
            }
            let outcome = async {
                let mut tx = self.begin("insert").await?;
                insert_rows(&mut tx, chunk).await?;
                append_events(&mut tx, &evs).await?;
                tx.commit().await.op("insert")
            };
            self.observed(outcome.await)?;
            for env in chunk {
                self.published(env);
            }
        }
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Environment>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .op("get")?;
        row.map(|r| environment_from(&r)).transpose()
    }

    /// [`crate::Store::get_by_job`], on PostgreSQL.
    pub async fn get_by_job(&self, job_id: &str) -> Result<Option<Environment>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE job_id = $1 AND desired <> 'deleted'"))
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await
                .op("get by job")?;
        row.map(|r| environment_from(&r)).transpose()
    }

    /// [`crate::Store::config_declared`], on PostgreSQL.
    pub async fn config_declared(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = 'config' AND desired <> 'deleted' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .op("config declared")?;
        rows.iter().map(environment_from).collect()
    }

    /// Read-modify-write of one environment in one transaction: `change` sees the current row
    /// (locked until the commit) and either edits it and names the events to record, or
    /// refuses with its own error and nothing is written. `Ok(None)` when there is none.
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

    /// [`PgStore::update`] under a tenant's quota: when `change` makes the row count against
    /// the quota where it did not, or changes its resources, the quota must admit the row's
    /// new spec beside what the tenant holds without the row as it was, in the same
    /// transaction, under the tenant's lock. [`StoreError::Refused`] names the limit, and
    /// nothing is written.
    pub async fn update_admitted<E>(
        &self,
        id: &str,
        admit: Option<(&str, &Quota)>,
        mut change: impl FnMut(&mut Environment) -> Result<Vec<NewEvent>, E>,
    ) -> Result<Option<Environment>, E>
    where
        E: From<StoreError>,
    {
        // The outer error is the store's, the inner one `change`'s (a rollback by choice).
        let outcome = async {
            let mut tx = self.begin("update").await?;
            if let Some((tenant, _)) = admit {
                lock_tenant(&mut tx, tenant).await?;
            }
            let Some(mut env) = lock_row(&mut tx, id).await? else { return Ok(Ok(None)) };
            let before = env.clone();
            let events = match change(&mut env) {
                Ok(events) => events,
                Err(e) => return Ok(Err(e)),
            };
            // What the quota must admit, if anything: the row's new spec beside what the
            // tenant holds without the row as it was.
            match admit {
                Some((tenant, quota))
                    if counts(&env) && (!counts(&before) || before.spec.resources != env.spec.resources) =>
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
                _ => {}
            }
            env.updated_at = now_millis();
            write_row(&mut tx, &env).await?;
            append_events(&mut tx, &events).await?;
            tx.commit().await.op("update")?;
            Ok(Ok(Some(env)))
        };
        let written = self.observed(outcome.await)??;
        if let Some(env) = &written {
            self.published(env);
        }
        Ok(written)
    }

    /// Environments `filter` selects, in id order (deleted ones only if its state asks).
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Environment>, StoreError> {
        let mut q = super::rows::select_filtered(filter);
        q.push(" ORDER BY id");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = q.build().fetch_all(&self.pool).await.op("list")?;
        rows.iter().map(environment_from).collect()
    }

    /// Ids of environments whose observed state does not yet match the desired one.
    pub async fn unconverged_ids(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM environments WHERE observed <> 'deleted' \
             AND NOT (desired = 'running' AND observed = 'running') \
             AND NOT (desired = 'stopped' AND observed = 'stopped') \
             AND NOT (desired <> 'deleted' AND observed = 'failed') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .op("unconverged")
    }

    /// `(id, expires_at)` of every lease still to run out, in id order.
    pub async fn pending_expiries(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, expires_at FROM environments WHERE desired <> 'deleted' AND observed <> 'deleted' \
             AND expired_at IS NULL AND expires_at IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .op("expiries")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every environment of `provider` that is not deleted, keyed by id, for the drift sweep
    /// (streamed, not collected).
    pub async fn sweep_view(&self, provider: &str) -> Result<BTreeMap<String, SweepEntry>, StoreError> {
        use futures::TryStreamExt as _;
        let mut rows = sqlx::query(
            "SELECT id, desired, observed, updated_at, placed_on FROM environments WHERE provider = $1 AND observed <> 'deleted'",
        )
        .bind(provider)
        .fetch(&self.pool);
        let mut out = BTreeMap::new();
        while let Some(r) = rows.try_next().await.op("sweep view")? {
            let id: String = r.get(0);
            let desired = parse_column(&id, "desired", r.get::<String, _>(1))?;
            let observed = parse_column(&id, "observed", r.get::<String, _>(2))?;
            out.insert(id, SweepEntry { desired, observed, updated_at: r.get(3), placed_on: r.get(4) });
        }
        Ok(out)
    }

    /// [`crate::Store::count_by_provider_and_state`], on PostgreSQL.
    pub async fn count_by_provider_and_state(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT provider, observed, COUNT(*) FROM environments GROUP BY provider, observed")
            .fetch_all(&self.pool)
            .await
            .op("count")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// [`crate::Store::append_event`], on PostgreSQL.
    pub async fn append_event(&self, event: NewEvent) -> Result<(), StoreError> {
        let outcome = async {
            let mut tx = self.begin("append event").await?;
            append_events(&mut tx, std::slice::from_ref(&event)).await?;
            tx.commit().await.op("append event")
        };
        self.observed(outcome.await)
    }

    /// [`crate::Store::events`], on PostgreSQL.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<EventRow> = events_query(filter).build_query_as().fetch_all(&self.pool).await.op("events")?;
        Ok(rows.into_iter().map(event_from).collect())
    }

    /// [`crate::Store::expiry_lateness`], on PostgreSQL.
    pub async fn expiry_lateness(&self, owner: &str) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT expired_at - expires_at FROM environments WHERE expired_at IS NOT NULL AND owner = $1",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .op("expiry lateness")
    }
}
