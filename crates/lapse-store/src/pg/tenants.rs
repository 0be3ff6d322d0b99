//! Tenants, their API keys, and what they hold (quotas), on PostgreSQL: the port of
//! [`crate::tenants`], with the same contracts.
//!
//! - [`PgStore::insert_admitted`] admits and inserts in one transaction that holds the
//!   tenant's lock ([`lock_tenant`]) from before it counts what the tenant holds
//!   ([`usage`]) until it commits: many replicas admitting for one tenant at once cannot
//!   together pass a limit. A refusal is [`StoreError::Refused`] and writes nothing. The
//!   quota's mode (`summed` or `per_request`, the tenant's `quota_check` column as the
//!   caller resolved it into [`Quota::check`]) selects the check, exactly as SQLite's store.
//! - [`PgStore::create_tenant`] is `false` for a name that exists (and writes no event);
//!   [`PgStore::set_quota_check`] is `None` for no such tenant, else the tenant as it is now.
//! - [`PgStore::create_key`] is `false` for a tenant's key of no tenant (checked in the
//!   statement that inserts); a taken key id is a unique violation, as in SQLite.
//! - [`PgStore::revoke_key`] locks the key's row, keeps the first revocation time, and
//!   always records a `revoke_key` event of the key's tenant; `None` if there is no key (or
//!   its scope and tenant disagree).
//! - Every write's events are its transaction's last write ([`append_events`]).

use lapse_core::Millis;
use lapse_core::model::Environment;
use lapse_core::quota::{Quota, Usage};
use sqlx::Row as _;

use super::PgStore;
use super::append_events;
use super::write::{insert_rows, lock_tenant, usage};
use crate::tenants::{KeyRecord, KeyScope, TENANT_COLUMNS, TenantRecord, tenant_from};
use crate::{NewEvent, Op as _, StoreError};

impl PgStore {
    /// Inserts a new environment if its tenant's `quota` admits it, in the same transaction
    /// as the count of what the tenant holds, under the tenant's lock: concurrent inserts (on
    /// any replica) cannot both pass a limit. [`StoreError::Refused`] says which limit, and
    /// nothing is written.
    pub async fn insert_admitted(&self, env: &Environment, event: NewEvent, quota: &Quota) -> Result<(), StoreError> {
        let mut tx = self.begin("insert").await?;
        lock_tenant(&mut tx, &env.tenant).await?;
        let held = usage(&mut tx, &env.tenant).await?;
        quota.admit(&held, &env.spec).map_err(StoreError::Refused)?;
        insert_rows(&mut tx, std::slice::from_ref(env)).await?;
        append_events(&mut tx, &[event]).await?;
        tx.commit().await.op("insert")?;
        self.published(env);
        Ok(())
    }

    /// [`crate::Store::usage`], on PostgreSQL.
    pub async fn usage(&self, tenant: &str) -> Result<Usage, StoreError> {
        let mut conn = self.pool.acquire().await.op("usage")?;
        usage(&mut conn, tenant).await
    }

    /// [`crate::Store::create_tenant`], on PostgreSQL.
    pub async fn create_tenant(&self, t: &TenantRecord, event: NewEvent) -> Result<bool, StoreError> {
        let mut tx = self.begin("create tenant").await?;
        let done = sqlx::query(
            "INSERT INTO tenants (name, tier, quota, quota_check, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&t.name)
        .bind(&t.tier)
        .bind(t.quota.to_string())
        .bind(&t.quota_check)
        .bind(t.created_at)
        .execute(&mut *tx)
        .await
        .op("create tenant")?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_events(&mut tx, &[event]).await?;
        tx.commit().await.op("create tenant")?;
        Ok(true)
    }

    /// [`crate::Store::set_quota_check`], on PostgreSQL.
    pub async fn set_quota_check(
        &self,
        name: &str,
        quota_check: &str,
        event: NewEvent,
    ) -> Result<Option<TenantRecord>, StoreError> {
        let mut tx = self.begin("update tenant").await?;
        let row =
            sqlx::query(&format!("UPDATE tenants SET quota_check = $1 WHERE name = $2 RETURNING {TENANT_COLUMNS}"))
                .bind(quota_check)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .op("update tenant")?;
        let Some(row) = row else { return Ok(None) };
        let tenant = tenant_from(&row)?;
        append_events(&mut tx, &[event]).await?;
        tx.commit().await.op("update tenant")?;
        Ok(Some(tenant))
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .op("tenants")?;
        rows.iter().map(tenant_from).collect()
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .op("tenant")?;
        row.as_ref().map(tenant_from).transpose()
    }

    /// [`crate::Store::create_key`], on PostgreSQL.
    pub async fn create_key(&self, k: &KeyRecord, event: NewEvent) -> Result<bool, StoreError> {
        let mut tx = self.begin("create key").await?;
        // The tenant's existence is checked by the statement that inserts.
        let done = sqlx::query(
            "INSERT INTO api_keys (id, tenant, scope, hash, created_at) SELECT $1, $2, $3, $4, $5 \
             WHERE $2::text IS NULL OR EXISTS (SELECT 1 FROM tenants WHERE name = $2)",
        )
        .bind(&k.id)
        .bind(k.scope.tenant())
        .bind(k.scope.as_str())
        .bind(&k.hash)
        .bind(k.created_at)
        .execute(&mut *tx)
        .await
        .op("create key")?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_events(&mut tx, &[event]).await?;
        tx.commit().await.op("create key")?;
        Ok(true)
    }

    /// [`crate::Store::key`], on PostgreSQL.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query("SELECT id, tenant, scope, hash, created_at, revoked_at FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .op("key")?;
        Ok(row.and_then(|r| {
            Some(KeyRecord {
                scope: KeyScope::from_columns(r.get::<&str, _>(2), r.get(1))?,
                id: r.get(0),
                hash: r.get(3),
                created_at: r.get(4),
                revoked_at: r.get(5),
            })
        }))
    }

    /// [`crate::Store::revoke_key`], on PostgreSQL.
    pub async fn revoke_key(&self, id: &str, at: Millis, actor: &str) -> Result<Option<KeyScope>, StoreError> {
        let mut tx = self.begin("revoke key").await?;
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT scope, tenant FROM api_keys WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .op("revoke key")?;
        let Some(scope) = row.and_then(|(scope, tenant)| KeyScope::from_columns(&scope, tenant)) else {
            return Ok(None);
        };
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await
            .op("revoke key")?;
        let mut event = NewEvent::of_tenant("", actor, "revoke_key", "ok", format!("{} key {id}", scope.as_str()));
        event.tenant = scope.tenant().map(str::to_owned);
        append_events(&mut tx, &[event]).await?;
        tx.commit().await.op("revoke key")?;
        Ok(Some(scope))
    }
}
