//! Pools and their warm members on PostgreSQL: [`crate::Store`]'s pool operations and the
//! warm claim, same names, same signatures, same contracts (see each method's docs there).
//!
//! **The claim** ([`PgStore::claim`]) goes through this replica's claim batcher
//! ([`super::claims`]): every claim waiting is committed in one transaction, with the tenants'
//! locks first, then the oldest claimable members, locked, skipping members that other claims
//! hold ([`super::claim_query`], `FOR UPDATE SKIP LOCKED`: claims on any number of replicas
//! never wait for each other and never get the same member), the quota check of each claim
//! against what its tenant holds, the caller's closure (it sees the pool the member leaves),
//! the member leaving its pool, the rows and the events written; each row is published after
//! the commit. SQLite's in-memory candidate queues are not needed: the partial index
//! `environments_warm` finds the first claimable members directly.

use lapse_core::model::{Environment, Pool};
use lapse_core::quota::Quota;
use sqlx::Row as _;

use super::PgStore;
use super::append_events;
use crate::Op as _;
use crate::rows::{environment_from, pool_from};
use crate::{MemberState, NewEvent, StoreError, env_column_names, json, parse_column};

const POOL_COLUMNS: &str = "name, spec, min, max, version, lifecycle, source, on_claim, created_at, updated_at";

/// The claim's query of one member, with every environment column (as `e.` columns).
pub(super) fn claim_one() -> &'static str {
    static QUERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let columns: Vec<String> = env_column_names().map(|c| format!("e.{c}")).collect();
        super::claim_query(&columns.join(", "))
    });
    QUERY.as_str()
}

impl PgStore {
    /// Claims a running, unclaimed member of any pool whose spec hashes to `spec_hash` (and
    /// whose version it has), in one transaction (see the module docs). With `admit` (a
    /// tenant and its quota), the claim happens only if the quota admits one more
    /// environment of the member's spec, checked in the same transaction under the tenant's
    /// lock; otherwise [`StoreError::Refused`] and nothing is written.
    pub async fn claim(
        &self,
        spec_hash: &str,
        admit: Option<(&str, &Quota)>,
        claim: impl FnMut(&mut Environment) -> Vec<NewEvent> + Send + 'static,
    ) -> Result<Option<Environment>, StoreError> {
        let mut claim: super::claims::ClaimFn = Box::new(claim);
        match &self.claims {
            Some(claims) => self.claim_batched(claims, spec_hash, admit, claim).await,
            None => self.claim_alone(spec_hash, admit, &mut claim).await,
        }
    }

    /// Creates or replaces a pool (its `created_at` stays the first one's).
    pub async fn put_pool(&self, pool: &Pool, event: NewEvent) -> Result<(), StoreError> {
        let outcome = async {
            let mut tx = self.begin("put pool").await?;
            sqlx::query(
                "INSERT INTO pools (name, spec, spec_hash, min, max, version, lifecycle, source, on_claim, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, spec_hash = excluded.spec_hash, \
                 min = excluded.min, max = excluded.max, version = excluded.version, \
                 lifecycle = excluded.lifecycle, source = excluded.source, on_claim = excluded.on_claim, \
                 updated_at = excluded.updated_at",
            )
            .bind(&pool.name)
            .bind(json(&pool.spec))
            .bind(pool.spec.hash())
            .bind(i64::from(pool.min))
            .bind(i64::from(pool.max))
            .bind(&pool.version)
            .bind(pool.lifecycle.as_str())
            .bind(&pool.source)
            .bind(pool.on_claim.as_ref().map(json))
            .bind(pool.created_at)
            .bind(pool.updated_at)
            .execute(&mut *tx)
            .await
            .op("put pool")?;
            append_events(&mut tx, std::slice::from_ref(&event)).await?;
            tx.commit().await.op("put pool")
        };
        self.observed(outcome.await)
    }

    pub async fn get_pool(&self, name: &str) -> Result<Option<Pool>, StoreError> {
        let row = sqlx::query(&format!("SELECT {POOL_COLUMNS} FROM pools WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .op("get pool")?;
        row.map(|r| pool_from(&r)).transpose()
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {POOL_COLUMNS} FROM pools ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .op("list pools")?;
        rows.iter().map(pool_from).collect()
    }

    /// Removes a pool; its unclaimed members are the maintainer's to delete. `false` (and no
    /// event) if there was none.
    pub async fn delete_pool(&self, name: &str, event: NewEvent) -> Result<bool, StoreError> {
        let outcome = async {
            let mut tx = self.begin("delete pool").await?;
            let gone = sqlx::query("DELETE FROM pools WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .op("delete pool")?
                .rows_affected();
            if gone == 0 {
                return Ok(false);
            }
            append_events(&mut tx, std::slice::from_ref(&event)).await?;
            tx.commit().await.op("delete pool")?;
            Ok(true)
        };
        self.observed(outcome.await)
    }

    /// What the pool maintainer needs of each member of a pool that is not deleted: no spec,
    /// no labels.
    pub async fn pool_member_states(&self) -> Result<Vec<MemberState>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, pool, spec_hash, pool_version, observed, desired FROM environments \
             WHERE pool IS NOT NULL AND observed <> 'deleted' ORDER BY id",
        )
        .fetch_all(&self.pool)
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

    /// [`crate::Store::pool_members`], on PostgreSQL.
    pub async fn pool_members(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM environments WHERE pool IS NOT NULL AND observed <> 'deleted' ORDER BY id",
            crate::ENV_COLUMNS
        ))
        .fetch_all(&self.pool)
        .await
        .op("pool members")?;
        rows.iter().map(environment_from).collect()
    }
}
