//! Activity, probes and accrual on PostgreSQL: the ports of [`crate::activity`] and
//! [`crate::accrual`], with the same contracts.
//!
//! - **Activity arrives in batches** ([`PgStore::record_activity`]): one statement per batch
//!   (the ids and times as two arrays), in one transaction. It only moves `last_active_at`
//!   forward, skips deleted and missing rows, bumps `rev` and touches no other column (not
//!   `updated_at`); it records no event and publishes nothing. The rows it moves are locked
//!   in id order before they are written, so two batches (two replicas) over the same ids
//!   cannot deadlock. An id given twice in one batch moves once, to its latest time.
//! - [`PgStore::probed`] and [`PgStore::idle_deadlines`] read what the prober and the idle
//!   timers start from.
//! - [`PgStore::accrual`] reads only what the period needs: environments alive in
//!   `[from, to)` (of `tenant`, or claimed by it before `to`), their transitions and claims
//!   in the period, and the last of each before it.

use std::sync::atomic::Ordering;

use lapse_core::Millis;
use lapse_core::model::Environment;
use sqlx::{Postgres, QueryBuilder, Row as _};

use super::PgStore;
use crate::accrual::{TrailRow, assemble};
use crate::rows::environment_from;
use crate::{Accrual, ENV_COLUMNS, Op as _, StoreError};

/// `(id, at)` pairs, the latest `at` per id, lock the live rows they move in id order, then
/// move them: one statement.
const RECORD_ACTIVITY: &str = "WITH touched AS ( \
       SELECT t.id, MAX(t.at) AS at FROM UNNEST($1::text[], $2::bigint[]) AS t (id, at) GROUP BY t.id), \
     moving AS ( \
       SELECT e.id, touched.at FROM environments e JOIN touched ON e.id = touched.id \
       WHERE e.observed <> 'deleted' AND (e.last_active_at IS NULL OR e.last_active_at < touched.at) \
       ORDER BY e.id FOR UPDATE OF e) \
     UPDATE environments e SET last_active_at = moving.at, rev = e.rev + 1 FROM moving \
     WHERE e.id = moving.id AND e.observed <> 'deleted' \
     AND (e.last_active_at IS NULL OR e.last_active_at < moving.at)";

impl PgStore {
    /// [`crate::Store::record_activity`], on PostgreSQL.
    pub async fn record_activity(&self, touched: &[(String, Millis)]) -> Result<u64, StoreError> {
        if touched.is_empty() {
            return Ok(0);
        }
        let (ids, ats): (Vec<&str>, Vec<Millis>) = touched.iter().map(|(id, at)| (id.as_str(), *at)).unzip();
        let q = sqlx::query(RECORD_ACTIVITY).bind(ids).bind(ats);
        let done = self.write_one("record activity", q).await?;
        self.activity_batches.fetch_add(1, Ordering::Relaxed);
        Ok(done)
    }

    /// [`crate::Store::activity_batches`], on PostgreSQL.
    pub fn activity_batches(&self) -> u64 {
        self.activity_batches.load(Ordering::Relaxed)
    }

    /// [`crate::Store::probed`], on PostgreSQL.
    pub async fn probed(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE health IS NOT NULL AND observed = 'running' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .op("probed")?;
        rows.iter().map(environment_from).collect()
    }

    /// [`crate::Store::idle_deadlines`], on PostgreSQL.
    pub async fn idle_deadlines(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, GREATEST(COALESCE(last_active_at, created_at), created_at) + idle_timeout FROM environments \
             WHERE idle_timeout IS NOT NULL AND desired = 'running' AND observed = 'running' AND pool IS NULL",
        )
        .fetch_all(&self.pool)
        .await
        .op("idle deadlines")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// [`crate::Store::accrual`], on PostgreSQL.
    pub async fn accrual(&self, tenant: Option<&str>, from: Millis, to: Millis) -> Result<Vec<Accrual>, StoreError> {
        let selection = |q: &mut QueryBuilder<'_, Postgres>| {
            q.push("SELECT id FROM environments WHERE created_at < ").push_bind(to);
            q.push(" AND (observed <> 'deleted' OR updated_at >= ").push_bind(from).push(")");
            if let Some(t) = tenant {
                q.push(" AND (tenant = ").push_bind(t.to_owned());
                q.push(" OR id IN (SELECT environment_id FROM events WHERE tenant = ").push_bind(t.to_owned());
                q.push(" AND action = 'claim' AND at < ").push_bind(to).push("))");
            }
        };
        // One snapshot for both reads: the events match the environments.
        let mut tx = self.begin("accrual").await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .op("accrual")?;
        let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {ENV_COLUMNS} FROM environments WHERE id IN ("));
        selection(&mut q);
        q.push(") ORDER BY id");
        let rows = q.build().fetch_all(&mut *tx).await.op("accrual")?;
        let envs: Vec<Environment> = rows.iter().map(environment_from).collect::<Result<_, _>>()?;

        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT environment_id, at, action, outcome, tenant FROM events \
             WHERE action IN ('transition', 'claim') AND environment_id IN (",
        );
        selection(&mut q);
        q.push(") AND at < ").push_bind(to);
        q.push(" AND (at >= ").push_bind(from);
        q.push(
            " OR seq IN (SELECT MAX(seq) FROM events WHERE action IN ('transition', 'claim') \
             AND environment_id IN (",
        );
        selection(&mut q);
        q.push(") AND at < ").push_bind(from).push(" GROUP BY environment_id, action)) ORDER BY seq");
        let trail: Vec<TrailRow> = q.build_query_as().fetch_all(&mut *tx).await.op("accrual")?;
        tx.commit().await.op("accrual")?;
        Ok(assemble(envs, trail))
    }
}
