//! Tenants, their API keys, and what they hold and have used (quotas and cost).

use lapse_core::Millis;
use lapse_core::model::Environment;
use lapse_core::quota::{Quota, Usage};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use crate::{ENV_COLUMNS, NewEvent, Op, Store, StoreError};
use crate::{append_event, bind_environment, json_column};

/// A tenant: whose environments are whose.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantRecord {
    pub name: String,
    pub tier: String,
    /// Overrides of the tier's limits, as given.
    pub quota: serde_json::Value,
    /// `summed` or `per_request` ([`lapse_core::quota::QuotaCheck`]); kept as text so that a
    /// value this version does not know reads (and then refuses, failing closed).
    pub quota_check: String,
    pub created_at: Millis,
}

/// An API key; only the SHA-256 of its secret is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub scope: KeyScope,
    /// Hex SHA-256 of the key's secret part.
    pub hash: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// What a key may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyScope {
    /// That tenant's environments and events.
    Tenant(String),
    /// `/metrics` and nothing else; no tenant.
    Metrics,
}

impl KeyScope {
    pub fn tenant(&self) -> Option<&str> {
        match self {
            KeyScope::Tenant(t) => Some(t),
            KeyScope::Metrics => None,
        }
    }

    /// The `scope` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyScope::Tenant(_) => "tenant",
            KeyScope::Metrics => "metrics",
        }
    }

    fn from_columns(scope: &str, tenant: Option<String>) -> Option<KeyScope> {
        match (scope, tenant) {
            ("tenant", Some(t)) => Some(KeyScope::Tenant(t)),
            ("metrics", None) => Some(KeyScope::Metrics),
            _ => None,
        }
    }
}

impl Store {
    /// Inserts a new environment if its tenant's `quota` admits it, in the same transaction
    /// as the count of what the tenant holds: concurrent inserts cannot both pass a limit.
    /// [`StoreError::Refused`] says which limit, and nothing is written.
    pub async fn insert_admitted(&self, env: &Environment, event: NewEvent, quota: &Quota) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.op("insert")?;
        let usage = usage(&mut tx, &env.tenant).await?;
        quota.admit(&usage, &env.spec).map_err(StoreError::Refused)?;
        let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO environments ({ENV_COLUMNS}) "));
        q.push_values([env], bind_environment);
        q.build().execute(&mut *tx).await.op("insert")?;
        append_event(&mut tx, &event).await?;
        tx.commit().await.op("insert")?;
        self.published(env);
        Ok(())
    }

    /// What `tenant` holds now (for quotas).
    pub async fn usage(&self, tenant: &str) -> Result<Usage, StoreError> {
        let mut conn = self.reader.acquire().await.op("usage")?;
        usage(&mut conn, tenant).await
    }

    /// Creates a tenant; `false` if one of that name exists.
    pub async fn create_tenant(&self, t: &TenantRecord, event: NewEvent) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.op("create tenant")?;
        let done = sqlx::query(
            "INSERT OR IGNORE INTO tenants (name, tier, quota, quota_check, created_at) VALUES (?, ?, ?, ?, ?)",
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
        append_event(&mut tx, &event).await?;
        tx.commit().await.op("create tenant")?;
        Ok(true)
    }

    /// Sets how a tenant's quota is checked; `None` if there is no such tenant, else the
    /// tenant as it is now.
    pub async fn set_quota_check(
        &self,
        name: &str,
        quota_check: &str,
        event: NewEvent,
    ) -> Result<Option<TenantRecord>, StoreError> {
        let mut tx = self.writer.begin().await.op("update tenant")?;
        let done = sqlx::query("UPDATE tenants SET quota_check = ? WHERE name = ?")
            .bind(quota_check)
            .bind(name)
            .execute(&mut *tx)
            .await
            .op("update tenant")?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?"))
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .op("update tenant")?;
        let tenant = tenant_from_row(&row)?;
        append_event(&mut tx, &event).await?;
        tx.commit().await.op("update tenant")?;
        Ok(Some(tenant))
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"))
            .fetch_all(&self.reader)
            .await
            .op("tenants")?;
        rows.iter().map(tenant_from_row).collect()
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .op("tenant")?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    /// Adds a key (a tenant's: to an existing tenant); `false` if there is no such tenant.
    pub async fn create_key(&self, k: &KeyRecord, event: NewEvent) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.op("create key")?;
        if let Some(tenant) = k.scope.tenant() {
            let exists = sqlx::query("SELECT 1 FROM tenants WHERE name = ?")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await
                .op("create key")?;
            if exists.is_none() {
                return Ok(false);
            }
        }
        sqlx::query("INSERT INTO api_keys (id, tenant, scope, hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&k.id)
            .bind(k.scope.tenant())
            .bind(k.scope.as_str())
            .bind(&k.hash)
            .bind(k.created_at)
            .execute(&mut *tx)
            .await
            .op("create key")?;
        append_event(&mut tx, &event).await?;
        tx.commit().await.op("create key")?;
        Ok(true)
    }

    /// The key with this id; a row whose scope and tenant do not agree reads as no key.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query("SELECT id, tenant, scope, hash, created_at, revoked_at FROM api_keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
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

    /// Revokes a key; `None` if there is no such key, else its scope.
    pub async fn revoke_key(&self, id: &str, at: Millis, actor: &str) -> Result<Option<KeyScope>, StoreError> {
        let mut tx = self.writer.begin().await.op("revoke key")?;
        let row = sqlx::query("SELECT scope, tenant FROM api_keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .op("revoke key")?;
        let Some(scope) = row.and_then(|r| KeyScope::from_columns(r.get::<&str, _>(0), r.get(1))) else {
            return Ok(None);
        };
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await
            .op("revoke key")?;
        let mut event = NewEvent::of_tenant("", actor, "revoke_key", "ok", format!("{} key {id}", scope.as_str()));
        event.tenant = scope.tenant().map(str::to_owned);
        append_event(&mut tx, &event).await?;
        tx.commit().await.op("revoke key")?;
        Ok(Some(scope))
    }
}

/// Environments of `tenant` that hold resources: not deleted, not failed, not unclaimed pool
/// members; pending and provisioning ones count.
pub(crate) async fn usage(conn: &mut SqliteConnection, tenant: &str) -> Result<Usage, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*), \
         COALESCE(SUM(CAST(json_extract(spec, '$.resources.vcpu') AS REAL)), 0.0), \
         COALESCE(SUM(CAST(json_extract(spec, '$.resources.mem_mb') AS INTEGER)), 0), \
         COALESCE(SUM(CAST(json_extract(spec, '$.resources.disk_gb') AS INTEGER)), 0) \
         FROM environments WHERE tenant = ? AND desired != 'deleted' AND observed NOT IN ('deleted', 'failed') \
         AND pool IS NULL",
    )
    .bind(tenant)
    .fetch_one(conn)
    .await
    .op("usage")?;
    Ok(Usage {
        environments: u32::try_from(row.get::<i64, _>(0)).unwrap_or(u32::MAX),
        vcpu: row.get(1),
        mem_mb: u64::try_from(row.get::<i64, _>(2)).unwrap_or(0),
        disk_gb: u64::try_from(row.get::<i64, _>(3)).unwrap_or(0),
    })
}

const TENANT_COLUMNS: &str = "name, tier, quota, created_at, quota_check";

fn tenant_from_row(r: &SqliteRow) -> Result<TenantRecord, StoreError> {
    let name: String = r.get(0);
    Ok(TenantRecord {
        quota: json_column(&name, "quota", r.get(2))?,
        tier: r.get(1),
        created_at: r.get(3),
        quota_check: r.get(4),
        name,
    })
}
