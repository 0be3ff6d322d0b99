//! Lifecycle webhooks on PostgreSQL: the ports of [`crate::Store`]'s `webhooks` operations,
//! with their contracts (the events table is the outbox; see that module's docs).
//!
//! What PostgreSQL adds, since many replicas may run the delivery worker:
//! - **A cursor never skips an event**: event appends are serialised until commit
//!   ([`super::EVENTS_LOCK`]), so `events.seq` commits in order and every event after a
//!   hook's cursor that a reader does not see yet has a higher `seq` than the ones it sees.
//! - **One fan-out per hook at a time**: [`PgStore::fan_out`] locks the hook's row
//!   (`FOR UPDATE SKIP LOCKED`) and moves its cursor in the transaction that writes the
//!   deliveries. A fan-out that finds the row locked (another replica is fanning it out, or
//!   recording an attempt) or the cursor moved writes nothing and is `stale`: two replicas
//!   fanning out at once never make a delivery twice.
//! - Lock order: a hook's row, then its deliveries' rows, then events (last). Deleting a hook
//!   locks it first, so that no fan-out adds deliveries to a hook being deleted;
//!   [`PgStore::record_attempt`] locks the hook before the delivery. The config file's hooks
//!   are replaced under a transaction advisory lock of their own ([`CONFIG_LOCK`]): replicas
//!   starting together apply the file one after the other, the later ones updating what the
//!   first added.
//! - [`PgStore::due_deliveries`] is a read, as on SQLite: it claims nothing. Two replicas'
//!   workers may both send a delivery that is due (deliveries are at least once; only a
//!   pending delivery takes an attempt).

use std::collections::HashMap;

use lapse_core::Millis;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Row as _};

use super::PgStore;
use super::write::append_events;
use crate::webhooks::{DELIVERY_COLUMNS, HOOK_COLUMNS};
use crate::{Attempt, DeliveryRecord, FanOut, NewDelivery, NewEvent, Op as _, StoreError, WebhookRecord};

/// The key of the transaction advisory lock held while the config file's hooks are replaced
/// ("lapse_wh").
pub const CONFIG_LOCK: i64 = 0x6c61_7073_655f_7768;

impl PgStore {
    /// [`crate::Store::create_webhook`].
    pub async fn create_webhook(&self, hook: &WebhookRecord, event: NewEvent) -> Result<WebhookRecord, StoreError> {
        let mut tx = self.begin("create webhook").await?;
        let cursor = latest_seq(&mut tx).await?;
        insert_hook(&mut tx, hook, cursor).await?;
        append_events(&mut tx, &[event]).await?;
        tx.commit().await.op("create webhook")?;
        Ok(WebhookRecord { cursor, ..hook.clone() })
    }

    /// [`crate::Store::set_config_webhooks`], under [`CONFIG_LOCK`].
    pub async fn set_config_webhooks(&self, hooks: &[WebhookRecord]) -> Result<(), StoreError> {
        let mut tx = self.begin("config webhooks").await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CONFIG_LOCK)
            .execute(&mut *tx)
            .await
            .op("config webhooks")?;
        let cursor = latest_seq(&mut tx).await?;
        let existing: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT id, name FROM webhooks WHERE source = 'config' ORDER BY id")
                .fetch_all(&mut *tx)
                .await
                .op("config webhooks")?;
        for (id, name) in &existing {
            if !hooks.iter().any(|h| h.name.is_some() && h.name == *name) {
                delete_hook(&mut tx, id).await?;
            }
        }
        for hook in hooks {
            let updated = sqlx::query(
                "UPDATE webhooks SET tenant = $1, url = $2, events = $3, secret = $4 \
                 WHERE source = 'config' AND name = $5",
            )
            .bind(&hook.tenant)
            .bind(&hook.url)
            .bind(crate::json(&hook.events))
            .bind(&hook.secret)
            .bind(&hook.name)
            .execute(&mut *tx)
            .await
            .op("config webhooks")?;
            if updated.rows_affected() == 0 {
                insert_hook(&mut tx, hook, cursor).await?;
            }
        }
        tx.commit().await.op("config webhooks")
    }

    /// [`crate::Store::get_webhook`].
    pub async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {HOOK_COLUMNS} FROM webhooks WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .op("get webhook")?;
        row.as_ref().map(hook_from).transpose()
    }

    /// [`crate::Store::list_webhooks`].
    pub async fn list_webhooks(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {HOOK_COLUMNS} FROM webhooks WHERE ($1::text IS NULL OR tenant = $1) \
             AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3"
        ))
        .bind(tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .op("list webhooks")?;
        rows.iter().map(hook_from).collect()
    }

    /// [`crate::Store::delete_webhook`]: the hook's row is locked first.
    pub async fn delete_webhook(&self, id: &str, tenant: Option<&str>, event: NewEvent) -> Result<bool, StoreError> {
        let mut tx = self.begin("delete webhook").await?;
        let found: Option<String> = sqlx::query_scalar(
            "SELECT id FROM webhooks WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await
        .op("delete webhook")?;
        if found.is_none() {
            tx.rollback().await.op("delete webhook")?;
            return Ok(false);
        }
        delete_hook(&mut tx, id).await?;
        append_events(&mut tx, &[event]).await?;
        tx.commit().await.op("delete webhook")?;
        Ok(true)
    }

    /// [`crate::Store::fan_out`]: the hook's row locked (`SKIP LOCKED`: a locked hook is
    /// `stale`), its cursor checked and moved, the deliveries written, in one transaction.
    pub async fn fan_out(
        &self,
        webhook_id: &str,
        from: i64,
        to: i64,
        deliveries: &[NewDelivery],
        max_pending: usize,
    ) -> Result<FanOut, StoreError> {
        let mut tx = self.begin("fan out").await?;
        let hook: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT cursor, tenant FROM webhooks WHERE id = $1 FOR UPDATE SKIP LOCKED")
                .bind(webhook_id)
                .fetch_optional(&mut *tx)
                .await
                .op("fan out")?;
        let tenant = match hook {
            Some((cursor, tenant)) if cursor == from => tenant,
            _ => {
                tx.rollback().await.op("fan out")?;
                return Ok(FanOut { stale: true, ..FanOut::default() });
            }
        };
        sqlx::query("UPDATE webhooks SET cursor = $1 WHERE id = $2")
            .bind(to)
            .bind(webhook_id)
            .execute(&mut *tx)
            .await
            .op("fan out")?;
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 AND status = 'pending'")
                .bind(webhook_id)
                .fetch_one(&mut *tx)
                .await
                .op("fan out")?;
        let room = max_pending.saturating_sub(usize::try_from(pending).unwrap_or(usize::MAX));
        let kept = &deliveries[..room.min(deliveries.len())];
        insert_deliveries(&mut tx, webhook_id, kept, lapse_core::now_millis()).await?;
        let out = FanOut { inserted: kept.len(), dropped: deliveries.len() - kept.len(), stale: false };
        if out.dropped > 0 {
            let event = NewEvent::of_tenant(
                tenant.as_deref().unwrap_or(""),
                "webhooks",
                "webhook_dropped",
                "dropped",
                format!("webhook {webhook_id}: {} deliveries dropped ({max_pending} already pending)", out.dropped),
            );
            append_events(&mut tx, &[event]).await?;
        }
        tx.commit().await.op("fan out")?;
        Ok(out)
    }

    /// [`crate::Store::add_delivery`].
    pub async fn add_delivery(&self, webhook_id: &str, delivery: &NewDelivery) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await.op("add delivery")?;
        insert_deliveries(&mut conn, webhook_id, std::slice::from_ref(delivery), lapse_core::now_millis()).await
    }

    /// [`crate::Store::due_deliveries`]: a read, as on SQLite (module docs).
    pub async fn due_deliveries(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<(DeliveryRecord, WebhookRecord)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.status = 'pending' \
             AND COALESCE(d.next_attempt_at, 0) <= $1 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p \
             WHERE p.status = 'pending' AND p.webhook_id = d.webhook_id \
             AND p.environment_id IS NOT DISTINCT FROM d.environment_id AND p.ord < d.ord) \
             ORDER BY COALESCE(d.next_attempt_at, 0), d.ord LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .op("due deliveries")?;
        let due: Vec<DeliveryRecord> = rows.iter().map(delivery_from).collect::<Result<_, _>>()?;
        let mut ids: Vec<&str> = due.iter().map(|d| d.webhook_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let hooks = sqlx::query(&format!("SELECT {HOOK_COLUMNS} FROM webhooks WHERE id = ANY($1)"))
            .bind(ids)
            .fetch_all(self.pool())
            .await
            .op("due deliveries")?;
        let hooks: HashMap<String, WebhookRecord> =
            hooks.iter().map(|r| hook_from(r).map(|h| (h.id.clone(), h))).collect::<Result<_, _>>()?;
        Ok(due.into_iter().filter_map(|d| hooks.get(&d.webhook_id).cloned().map(|h| (d, h))).collect())
    }

    /// [`crate::Store::next_delivery_due`].
    pub async fn next_delivery_due(&self) -> Result<Option<Millis>, StoreError> {
        sqlx::query_scalar("SELECT MIN(COALESCE(next_attempt_at, 0)) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(self.pool())
            .await
            .op("next delivery")
    }

    /// [`crate::Store::record_attempt`]: the hook's row locked before the delivery's.
    pub async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let now = lapse_core::now_millis();
        let (status, code, error, next_at, delivered_at) = match attempt {
            Attempt::Delivered { code } => ("delivered", Some(*code), None, None, Some(now)),
            Attempt::Retry { code, error, next_at } => ("pending", *code, Some(error.as_str()), Some(*next_at), None),
            Attempt::GaveUp { code, error } => ("failed", *code, Some(error.as_str()), None, None),
        };
        let mut tx = self.begin("record attempt").await?;
        let hook: Option<String> = sqlx::query_scalar(
            "SELECT h.id FROM webhooks h JOIN webhook_deliveries d ON d.webhook_id = h.id WHERE d.id = $1 \
             FOR UPDATE OF h",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .op("record attempt")?;
        let updated: Option<String> = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, response_code = $2, error = $3, \
             next_attempt_at = $4, delivered_at = $5 WHERE id = $6 AND status = 'pending' RETURNING webhook_id",
        )
        .bind(status)
        .bind(code.map(i64::from))
        .bind(error)
        .bind(next_at)
        .bind(delivered_at)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .op("record attempt")?;
        if let (Some(hook), Some(_)) = (hook, updated) {
            let sql = if matches!(attempt, Attempt::Delivered { .. }) {
                "UPDATE webhooks SET failures = 0 WHERE id = $1"
            } else {
                "UPDATE webhooks SET failures = failures + 1 WHERE id = $1"
            };
            sqlx::query(sql).bind(hook).execute(&mut *tx).await.op("record attempt")?;
        }
        tx.commit().await.op("record attempt")
    }

    /// [`crate::Store::list_deliveries`].
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND ($2::text IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        ))
        .bind(webhook_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .op("list deliveries")?;
        rows.iter().map(delivery_from).collect()
    }

    /// [`crate::Store::pending_deliveries`].
    pub async fn pending_deliveries(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(self.pool())
            .await
            .op("pending deliveries")
    }

    /// [`crate::Store::warning_ids`].
    pub async fn warning_ids(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM environments WHERE warn_before IS NOT NULL AND observed = 'running' \
             AND desired = 'running' AND expired_at IS NULL AND expires_at IS NOT NULL",
        )
        .fetch_all(self.pool())
        .await
        .op("warning ids")
    }

    /// [`crate::Store::last_event_seq`].
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        let mut conn = self.pool().acquire().await.op("last event")?;
        latest_seq(&mut conn).await
    }
}

/// The newest committed event's sequence number (0 when there is none).
async fn latest_seq(conn: &mut PgConnection) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::bigint FROM events")
        .fetch_one(&mut *conn)
        .await
        .op("latest event")
}

async fn insert_hook(conn: &mut PgConnection, hook: &WebhookRecord, cursor: i64) -> Result<(), StoreError> {
    sqlx::query(&format!("INSERT INTO webhooks ({HOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9)"))
        .bind(&hook.id)
        .bind(&hook.tenant)
        .bind(&hook.url)
        .bind(crate::json(&hook.events))
        .bind(&hook.secret)
        .bind(&hook.source)
        .bind(&hook.name)
        .bind(cursor)
        .bind(hook.created_at)
        .execute(&mut *conn)
        .await
        .op("insert webhook")?;
    Ok(())
}

/// Deletes a hook and its deliveries, the hook's row locked first.
async fn delete_hook(conn: &mut PgConnection, id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *conn)
        .await
        .op("delete webhook")?;
    sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .op("delete webhook")?;
    sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(&mut *conn).await.op("delete webhook")?;
    Ok(())
}

/// Inserts pending deliveries, their `ord`s drawn in the order given.
async fn insert_deliveries(
    conn: &mut PgConnection,
    webhook_id: &str,
    deliveries: &[NewDelivery],
    now: Millis,
) -> Result<(), StoreError> {
    // At most 1,000 deliveries (7,000 parameters) to a statement: PostgreSQL takes 65,535.
    for (n, chunk) in deliveries.chunks(1000).enumerate() {
        let mut q = sqlx::QueryBuilder::<Postgres>::new(
            "INSERT INTO webhook_deliveries (id, webhook_id, seq, event, environment_id, body, status, attempts, \
             next_attempt_at, created_at) SELECT v.id, v.webhook_id, v.seq, v.event, v.environment_id, v.body, \
             'pending', 0, v.at, v.at FROM (",
        );
        q.push_values(chunk.iter().enumerate(), |mut b, (i, d)| {
            b.push_bind(i64::try_from(n * 1000 + i).unwrap_or(i64::MAX))
                .push_bind(d.id.clone())
                .push_bind(webhook_id.to_owned())
                .push_bind(d.seq)
                .push_bind(d.event.clone())
                .push_bind(d.environment_id.clone())
                .push_bind(d.body.clone())
                .push_bind(now);
        });
        q.push(") AS v (ord, id, webhook_id, seq, event, environment_id, body, at) ORDER BY v.ord");
        q.build().execute(&mut *conn).await.op("insert delivery")?;
    }
    Ok(())
}

/// A column of a webhook row; a value of the wrong type is [`StoreError::Corrupt`].
fn col<'r, T>(r: &'r PgRow, id: &str, column: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    r.try_get(column).map_err(|e| StoreError::Corrupt { id: id.to_owned(), column, message: e.to_string() })
}

fn hook_from(r: &PgRow) -> Result<WebhookRecord, StoreError> {
    let id: String = col(r, "", "id")?;
    let events: String = col(r, &id, "events")?;
    Ok(WebhookRecord {
        tenant: col(r, &id, "tenant")?,
        url: col(r, &id, "url")?,
        events: crate::json_column(&id, "events", &events)?,
        secret: col(r, &id, "secret")?,
        source: col(r, &id, "source")?,
        name: col(r, &id, "name")?,
        cursor: col(r, &id, "cursor")?,
        failures: col::<i64>(r, &id, "failures")?.try_into().unwrap_or(u32::MAX),
        created_at: col(r, &id, "created_at")?,
        id,
    })
}

fn delivery_from(r: &PgRow) -> Result<DeliveryRecord, StoreError> {
    let id: String = col(r, "", "id")?;
    Ok(DeliveryRecord {
        webhook_id: col(r, &id, "webhook_id")?,
        seq: col(r, &id, "seq")?,
        event: col(r, &id, "event")?,
        environment_id: col(r, &id, "environment_id")?,
        body: col(r, &id, "body")?,
        status: col(r, &id, "status")?,
        attempts: col::<i64>(r, &id, "attempts")?.try_into().unwrap_or(u32::MAX),
        response_code: col::<Option<i64>>(r, &id, "response_code")?.and_then(|c| u16::try_from(c).ok()),
        error: col(r, &id, "error")?,
        next_attempt_at: col(r, &id, "next_attempt_at")?,
        delivered_at: col(r, &id, "delivered_at")?,
        created_at: col(r, &id, "created_at")?,
        id,
    })
}
