//! Tenants, their API keys, and what they hold and have used (quotas and cost).

use lapse_core::Millis;
use lapse_core::model::Environment;
use lapse_core::quota::{Quota, Usage};
use rusqlite::{Connection, OptionalExtension as _};
use sqlx::Row;

use crate::rows::Cols;
use crate::{NewEvent, Op, SqliteStore, StoreError, WriteOp};
use crate::{append_event, json_column};

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

    pub(crate) fn from_columns(scope: &str, tenant: Option<String>) -> Option<KeyScope> {
        match (scope, tenant) {
            ("tenant", Some(t)) => Some(KeyScope::Tenant(t)),
            ("metrics", None) => Some(KeyScope::Metrics),
            _ => None,
        }
    }
}

impl SqliteStore {
    /// [`crate::Store::insert_admitted`], on SQLite.
    pub async fn insert_admitted(&self, env: &Environment, event: NewEvent, quota: &Quota) -> Result<(), StoreError> {
        let (tenant, spec, quota) = (env.tenant.clone(), env.spec.clone(), quota.clone());
        let values = crate::environment_values(env);
        self.writer
            .run("insert", move |conn| {
                let usage = usage(conn, &tenant)?;
                quota.admit(&usage, &spec).map_err(StoreError::Refused)?;
                crate::insert_values(conn, &values)?;
                append_event(conn, &event)
            })
            .await?;
        self.published(env);
        Ok(())
    }

    /// [`crate::Store::usage`], on SQLite.
    pub async fn usage(&self, tenant: &str) -> Result<Usage, StoreError> {
        let row = sqlx::query(USAGE).bind(tenant).fetch_one(&self.reader).await.op("usage")?;
        Ok(usage_of(row.get(0), row.get(1), row.get(2), row.get(3)))
    }

    /// [`crate::Store::create_tenant`], on SQLite.
    pub async fn create_tenant(&self, t: &TenantRecord, event: NewEvent) -> Result<bool, StoreError> {
        let t = t.clone();
        self.writer
            .run("create tenant", move |conn| {
                let done = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO tenants (name, tier, quota, quota_check, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut st| {
                        st.execute(rusqlite::params![t.name, t.tier, t.quota.to_string(), t.quota_check, t.created_at])
                    })
                    .op("create tenant")?;
                if done == 0 {
                    return Ok(false);
                }
                append_event(conn, &event)?;
                Ok(true)
            })
            .await
    }

    /// [`crate::Store::set_quota_check`], on SQLite.
    pub async fn set_quota_check(
        &self,
        name: &str,
        quota_check: &str,
        event: NewEvent,
    ) -> Result<Option<TenantRecord>, StoreError> {
        let (name, quota_check) = (name.to_owned(), quota_check.to_owned());
        self.writer
            .run("update tenant", move |conn| {
                let done = conn
                    .execute("UPDATE tenants SET quota_check = ?1 WHERE name = ?2", [&quota_check, &name])
                    .op("update tenant")?;
                if done == 0 {
                    return Ok(None);
                }
                let tenant = conn
                    .query_row(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?1"), [&name], |r| {
                        Ok(tenant_from(r))
                    })
                    .op("update tenant")??;
                append_event(conn, &event)?;
                Ok(Some(tenant))
            })
            .await
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"))
            .fetch_all(&self.reader)
            .await
            .op("tenants")?;
        rows.iter().map(tenant_from).collect()
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .op("tenant")?;
        row.as_ref().map(tenant_from).transpose()
    }

    /// [`crate::Store::create_key`], on SQLite.
    pub async fn create_key(&self, k: &KeyRecord, event: NewEvent) -> Result<bool, StoreError> {
        let k = k.clone();
        self.writer
            .run("create key", move |conn| {
                if let Some(tenant) = k.scope.tenant() {
                    let exists = conn
                        .query_row("SELECT 1 FROM tenants WHERE name = ?1", [tenant], |_| Ok(()))
                        .optional()
                        .op("create key")?;
                    if exists.is_none() {
                        return Ok(false);
                    }
                }
                conn.execute(
                    "INSERT INTO api_keys (id, tenant, scope, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![k.id, k.scope.tenant(), k.scope.as_str(), k.hash, k.created_at],
                )
                .op("create key")?;
                append_event(conn, &event)?;
                Ok(true)
            })
            .await
    }

    /// [`crate::Store::key`], on SQLite.
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

    /// [`crate::Store::revoke_key`], on SQLite.
    pub async fn revoke_key(&self, id: &str, at: Millis, actor: &str) -> Result<Option<KeyScope>, StoreError> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.writer
            .run("revoke key", move |conn| {
                let row: Option<(String, Option<String>)> = conn
                    .query_row("SELECT scope, tenant FROM api_keys WHERE id = ?1", [&id], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()
                    .op("revoke key")?;
                let Some(scope) = row.and_then(|(scope, tenant)| KeyScope::from_columns(&scope, tenant)) else {
                    return Ok(None);
                };
                conn.execute(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2",
                    rusqlite::params![at, id],
                )
                .op("revoke key")?;
                let mut event =
                    NewEvent::of_tenant("", &actor, "revoke_key", "ok", format!("{} key {id}", scope.as_str()));
                event.tenant = scope.tenant().map(str::to_owned);
                append_event(conn, &event)?;
                Ok(Some(scope))
            })
            .await
    }
}

/// Environments of a tenant that hold resources: not deleted, not failed, not unclaimed pool
/// members; pending and provisioning ones count.
const USAGE: &str = "SELECT COUNT(*), \
     COALESCE(SUM(CAST(json_extract(spec, '$.resources.vcpu') AS REAL)), 0.0), \
     COALESCE(SUM(CAST(json_extract(spec, '$.resources.mem_mb') AS INTEGER)), 0), \
     COALESCE(SUM(CAST(json_extract(spec, '$.resources.disk_gb') AS INTEGER)), 0) \
     FROM environments WHERE tenant = ?1 AND desired != 'deleted' AND observed NOT IN ('deleted', 'failed') \
     AND pool IS NULL";

pub(crate) fn usage_of(environments: i64, vcpu: f64, mem_mb: i64, disk_gb: i64) -> Usage {
    Usage {
        environments: u32::try_from(environments).unwrap_or(u32::MAX),
        vcpu,
        mem_mb: u64::try_from(mem_mb).unwrap_or(0),
        disk_gb: u64::try_from(disk_gb).unwrap_or(0),
    }
}

/// What `tenant` holds, read on the writer's connection (inside its transaction).
pub(crate) fn usage(conn: &Connection, tenant: &str) -> Result<Usage, StoreError> {
    let mut st = conn.prepare_cached(USAGE).op("usage")?;
    st.query_row([tenant], |r| Ok(usage_of(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).op("usage")
}

pub(crate) const TENANT_COLUMNS: &str = "name, tier, quota, created_at, quota_check";

pub(crate) fn tenant_from<R: Cols>(r: &R) -> Result<TenantRecord, StoreError> {
    let corrupt = |column, message| StoreError::Corrupt { id: String::new(), column, message };
    let text =
        |column| r.opt_text(column).map_err(|m| corrupt(column, m))?.ok_or_else(|| corrupt(column, "NULL".into()));
    let name = text("name")?;
    Ok(TenantRecord {
        quota: json_column(&name, "quota", &text("quota")?)?,
        tier: text("tier")?,
        created_at: r.opt_int("created_at").map_err(|m| corrupt("created_at", m))?.unwrap_or(0),
        quota_check: text("quota_check")?,
        name,
    })
}
