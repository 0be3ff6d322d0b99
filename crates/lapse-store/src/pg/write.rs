//! The writes every ported operation shares, on a connection inside its transaction.
//!
//! Locks, always taken in this order within a transaction, so that two transactions never
//! wait for each other in a circle: a tenant's lock ([`lock_tenant`]), then rows
//! ([`lock_row`], `FOR UPDATE`), then the events lock ([`super::append_events`], last).

use lapse_core::model::Environment;
use lapse_core::now_millis;
use lapse_core::quota::Usage;
use sqlx::PgConnection;
use sqlx::Row as _;

use super::push_environment;
use crate::rows::environment_from;
use crate::{ENV_COLUMNS, NewEvent, Op as _, StoreError, env_column_names};

/// The first key of a tenant's transaction advisory lock ("lapt"); the second is the hash
/// of the tenant's name.
pub(crate) const TENANT_LOCK_CLASS: i32 = 0x6c61_7074;

/// At most this many rows to an `INSERT` (43 parameters each; PostgreSQL takes 65,535).
const ROWS_PER_INSERT: usize = 500;

/// Holds `tenant`'s lock until the transaction ends: quota admission counts what the tenant
/// holds and writes under it, so two replicas' admissions cannot both pass a limit.
pub(crate) async fn lock_tenant(conn: &mut PgConnection, tenant: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(TENANT_LOCK_CLASS)
        .bind(tenant)
        .execute(&mut *conn)
        .await
        .op("lock tenant")?;
    Ok(())
}

/// What `tenant` holds now, as SQLite's store counts it (pool members do not count).
pub(crate) async fn usage(conn: &mut PgConnection, tenant: &str) -> Result<Usage, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*), \
         COALESCE(SUM((spec::jsonb -> 'resources' ->> 'vcpu')::float8), 0.0)::float8, \
         COALESCE(SUM((spec::jsonb -> 'resources' ->> 'mem_mb')::bigint), 0)::bigint, \
         COALESCE(SUM((spec::jsonb -> 'resources' ->> 'disk_gb')::bigint), 0)::bigint \
         FROM environments WHERE tenant = $1 AND desired <> 'deleted' AND observed NOT IN ('deleted', 'failed') \
         AND pool IS NULL",
    )
    .bind(tenant)
    .fetch_one(&mut *conn)
    .await
    .op("usage")?;
    Ok(crate::tenants::usage_of(row.get(0), row.get(1), row.get(2), row.get(3)))
}

/// Inserts new rows (a unique violation if an id or a live job id is taken).
pub(crate) async fn insert_rows(conn: &mut PgConnection, envs: &[Environment]) -> Result<(), StoreError> {
    for chunk in envs.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::new(format!("INSERT INTO environments ({ENV_COLUMNS}) "));
        q.push_values(chunk, |b, e| push_environment(b, e));
        q.build().execute(&mut *conn).await.op("insert")?;
    }
    Ok(())
}

/// Writes the whole row, inserting it if it is missing; its revision grows.
pub(crate) async fn write_row(conn: &mut PgConnection, e: &Environment) -> Result<(), StoreError> {
    write_rows(conn, std::slice::from_ref(e)).await
}

/// Writes whole rows over the rows of their ids, in statements of at most 500 rows; every
/// id at most once.
pub(crate) async fn write_rows(conn: &mut PgConnection, envs: &[Environment]) -> Result<(), StoreError> {
    static SETS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let sets: Vec<String> = env_column_names()
            .filter(|c| !matches!(*c, "id" | "created_at"))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        format!(" ON CONFLICT (id) DO UPDATE SET {}, rev = environments.rev + 1", sets.join(", "))
    });
    for chunk in envs.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::new(format!("INSERT INTO environments ({ENV_COLUMNS}) "));
        q.push_values(chunk, |b, e| push_environment(b, e));
        q.push(SETS.as_str());
        q.build().execute(&mut *conn).await.op("update")?;
    }
    Ok(())
}

/// Reads a row and locks it until the transaction ends; `None` if there is none.
pub(crate) async fn lock_row(conn: &mut PgConnection, id: &str) -> Result<Option<Environment>, StoreError> {
    let row = sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .op("read")?;
    row.as_ref().map(environment_from).transpose()
}

/// Appends `events`, in order, in the transaction of `conn` (see [`super`]'s docs: the
/// last write of its transaction, under [`super::EVENTS_LOCK`]). An environment's event takes the environment's tenant.
pub(crate) async fn append_events(conn: &mut PgConnection, events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(super::EVENTS_LOCK)
        .execute(&mut *conn)
        .await
        .op("append event")?;
    let at = now_millis();
    // At most 1,000 events (8,000 parameters) to a statement: PostgreSQL takes 65,535.
    for (n, chunk) in events.chunks(1000).enumerate() {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO events (at, environment_id, actor, action, outcome, message, tenant) \
             SELECT v.at, v.environment_id, v.actor, v.action, v.outcome, v.message, \
             COALESCE(v.tenant, (SELECT e.tenant FROM environments e WHERE e.id = v.environment_id)) FROM (",
        );
        q.push_values(chunk.iter().enumerate(), |mut b, (i, e)| {
            b.push_bind(i64::try_from(n * 1000 + i).unwrap_or(i64::MAX))
                .push_bind(at)
                .push_bind(e.environment_id.clone())
                .push_bind(e.actor.clone())
                .push_bind(e.action.clone())
                .push_bind(e.outcome.clone())
                .push_bind(e.message.clone())
                .push_bind(e.tenant.clone());
        });
        // Identities are drawn in the order the SELECT yields its rows: the events' own.
        q.push(") AS v (ord, at, environment_id, actor, action, outcome, message, tenant) ORDER BY v.ord");
        q.build().execute(&mut *conn).await.op("append event")?;
    }
    Ok(())
}
