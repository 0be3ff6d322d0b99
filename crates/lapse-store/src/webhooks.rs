//! Lifecycle webhooks: the hooks, their cursor into the events table, and their deliveries.
//!
//! **The events table is the outbox.** Every change writes its event in the same transaction
//! as the row it reports, so the delivery worker only has to read events after a hook's
//! `cursor`; [`Store::fan_out`] writes the deliveries it made of them and advances the cursor
//! in one transaction (compare-and-set on the cursor), so a crash at any point loses none and
//! makes none twice. A delivery keeps its id (the `Lapse-Delivery` header) and body across
//! retries. Only this module writes these tables.
//!
//! **One environment's deliveries go in order**: [`Store::due_deliveries`] offers a pending
//! delivery only when no earlier pending delivery of the same hook and environment exists.

use lapse_core::Millis;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use rusqlite::{Connection, OptionalExtension as _};

use crate::{NewEvent, Op, SqliteStore, StoreError, WriteOp, append_event};

/// A webhook as stored (the secret included: it signs every delivery).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: String,
    /// `None`: the operator's hook, which sees every tenant's events.
    pub tenant: Option<String>,
    pub url: String,
    /// Event names, or `"*"`.
    pub events: Vec<String>,
    pub secret: String,
    /// `api` or `config`.
    pub source: String,
    /// A config file's key for it.
    pub name: Option<String>,
    pub cursor: i64,
    /// Consecutive failed attempts (reset by a success).
    pub failures: u32,
    pub created_at: Millis,
}

/// A delivery to make ([`Store::fan_out`], [`Store::add_delivery`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    pub id: String,
    pub seq: Option<i64>,
    pub event: String,
    pub environment_id: Option<String>,
    pub body: String,
}

/// A delivery as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: String,
    pub webhook_id: String,
    pub seq: Option<i64>,
    pub event: String,
    pub environment_id: Option<String>,
    pub body: String,
    pub status: String,
    pub attempts: u32,
    pub response_code: Option<u16>,
    pub error: Option<String>,
    pub next_attempt_at: Option<Millis>,
    pub delivered_at: Option<Millis>,
    pub created_at: Millis,
}

/// What one attempt came to ([`Store::record_attempt`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        code: u16,
    },
    /// Try again at `next_at`.
    Retry {
        code: Option<u16>,
        error: String,
        next_at: Millis,
    },
    /// No more attempts: `failed` with the last error.
    GaveUp {
        code: Option<u16>,
        error: String,
    },
}

/// What [`Store::fan_out`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanOut {
    pub inserted: usize,
    /// Left out because the hook had `max_pending` deliveries pending (the oldest are kept).
    pub dropped: usize,
    /// The cursor had moved (another writer): nothing was written.
    pub stale: bool,
}

pub(crate) const HOOK_COLUMNS: &str = "id, tenant, url, events, secret, source, name, cursor, failures, created_at";
pub(crate) const DELIVERY_COLUMNS: &str = "id, webhook_id, seq, event, environment_id, body, status, attempts, response_code, \
     error, next_attempt_at, delivered_at, created_at";

impl SqliteStore {
    /// [`crate::Store::create_webhook`], on SQLite.
    pub async fn create_webhook(&self, hook: &WebhookRecord, event: NewEvent) -> Result<WebhookRecord, StoreError> {
        let hook = hook.clone();
        self.writer
            .run("create webhook", move |conn| {
                let cursor = latest_seq(conn)?;
                insert_hook(conn, &hook, cursor)?;
                append_event(conn, &event)?;
                Ok(WebhookRecord { cursor, ..hook.clone() })
            })
            .await
    }

    /// [`crate::Store::set_config_webhooks`], on SQLite.
    pub async fn set_config_webhooks(&self, hooks: &[WebhookRecord]) -> Result<(), StoreError> {
        let hooks = hooks.to_vec();
        self.writer
            .run("config webhooks", move |conn| {
                let cursor = latest_seq(conn)?;
                let names: Vec<String> = conn
                    .prepare_cached("SELECT name FROM webhooks WHERE source = 'config'")
                    .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
                    .op("config webhooks")?;
                for gone in names.iter().filter(|n| !hooks.iter().any(|h| h.name.as_ref() == Some(*n))) {
                    let ids: Vec<String> = conn
                        .prepare_cached("SELECT id FROM webhooks WHERE source = 'config' AND name = ?1")
                        .and_then(|mut st| st.query_map([gone], |r| r.get(0))?.collect())
                        .op("config webhooks")?;
                    for id in ids {
                        delete_hook(conn, &id)?;
                    }
                }
                for hook in &hooks {
                    let updated = conn
                        .execute(
                            "UPDATE webhooks SET tenant = ?1, url = ?2, events = ?3, secret = ?4 \
                             WHERE source = 'config' AND name = ?5",
                            rusqlite::params![hook.tenant, hook.url, crate::json(&hook.events), hook.secret, hook.name],
                        )
                        .op("config webhooks")?;
                    if updated == 0 {
                        insert_hook(conn, hook, cursor)?;
                    }
                }
                Ok(())
            })
            .await
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {HOOK_COLUMNS} FROM webhooks WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .op("get webhook")?;
        row.map(|r| hook_from_row(&r)).transpose()
    }

    /// [`crate::Store::list_webhooks`], on SQLite.
    pub async fn list_webhooks(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {HOOK_COLUMNS} FROM webhooks WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR id > ?2) \
             ORDER BY id LIMIT ?3"
        ))
        .bind(tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .op("list webhooks")?;
        rows.iter().map(hook_from_row).collect()
    }

    /// [`crate::Store::delete_webhook`], on SQLite.
    pub async fn delete_webhook(&self, id: &str, tenant: Option<&str>, event: NewEvent) -> Result<bool, StoreError> {
        let (id, tenant) = (id.to_owned(), tenant.map(str::to_owned));
        self.writer
            .run("delete webhook", move |conn| {
                let found: Option<String> = conn
                    .query_row(
                        "SELECT id FROM webhooks WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
                        rusqlite::params![id, tenant],
                        |r| r.get(0),
                    )
                    .optional()
                    .op("delete webhook")?;
                if found.is_none() {
                    return Ok(false);
                }
                delete_hook(conn, &id)?;
                append_event(conn, &event)?;
                Ok(true)
            })
            .await
    }

    /// [`crate::Store::fan_out`], on SQLite.
    pub async fn fan_out(
        &self,
        webhook_id: &str,
        from: i64,
        to: i64,
        deliveries: &[NewDelivery],
        max_pending: usize,
    ) -> Result<FanOut, StoreError> {
        let (webhook_id, deliveries) = (webhook_id.to_owned(), deliveries.to_vec());
        self.writer
            .run("fan out", move |conn| {
                let moved = conn
                    .prepare_cached("UPDATE webhooks SET cursor = ?1 WHERE id = ?2 AND cursor = ?3")
                    .and_then(|mut st| st.execute(rusqlite::params![to, webhook_id, from]))
                    .op("fan out")?;
                if moved == 0 {
                    return Ok(FanOut { stale: true, ..FanOut::default() });
                }
                let pending: i64 = conn
                    .prepare_cached(
                        "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?1 AND status = 'pending'",
                    )
                    .and_then(|mut st| st.query_row([&webhook_id], |r| r.get(0)))
                    .op("fan out")?;
                let room = max_pending.saturating_sub(usize::try_from(pending).unwrap_or(usize::MAX));
                let now = lapse_core::now_millis();
                let mut out = FanOut::default();
                for d in &deliveries {
                    if out.inserted >= room {
                        out.dropped += 1;
                        continue;
                    }
                    insert_delivery(conn, &webhook_id, d, now)?;
                    out.inserted += 1;
                }
                if out.dropped > 0 {
                    let tenant: Option<String> = conn
                        .query_row("SELECT tenant FROM webhooks WHERE id = ?1", [&webhook_id], |r| r.get(0))
                        .op("fan out")?;
                    let event = NewEvent::of_tenant(
                        tenant.as_deref().unwrap_or(""),
                        "webhooks",
                        "webhook_dropped",
                        "dropped",
                        format!(
                            "webhook {webhook_id}: {} deliveries dropped ({max_pending} already pending)",
                            out.dropped
                        ),
                    );
                    append_event(conn, &event)?;
                }
                Ok(out)
            })
            .await
    }

    /// [`crate::Store::add_delivery`], on SQLite.
    pub async fn add_delivery(&self, webhook_id: &str, delivery: &NewDelivery) -> Result<(), StoreError> {
        let (webhook_id, delivery) = (webhook_id.to_owned(), delivery.clone());
        self.writer
            .run("add delivery", move |conn| insert_delivery(conn, &webhook_id, &delivery, lapse_core::now_millis()))
            .await
    }

    /// [`crate::Store::due_deliveries`], on SQLite.
    pub async fn due_deliveries(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<(DeliveryRecord, WebhookRecord)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.status = 'pending' \
             AND COALESCE(d.next_attempt_at, 0) <= ? AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p \
             WHERE p.status = 'pending' AND p.webhook_id = d.webhook_id AND p.environment_id IS d.environment_id \
             AND p.ord < d.ord) ORDER BY COALESCE(d.next_attempt_at, 0), d.ord LIMIT ?"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .op("due deliveries")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let d = delivery_from_row(row)?;
            if let Some(hook) = self.get_webhook(&d.webhook_id).await? {
                out.push((d, hook));
            }
        }
        Ok(out)
    }

    /// [`crate::Store::next_delivery_due`], on SQLite.
    pub async fn next_delivery_due(&self) -> Result<Option<Millis>, StoreError> {
        sqlx::query_scalar("SELECT MIN(COALESCE(next_attempt_at, 0)) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(&self.reader)
            .await
            .op("next delivery")
    }

    /// [`crate::Store::record_attempt`], on SQLite.
    pub async fn record_attempt(&self, id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let now = lapse_core::now_millis();
        let (status, code, error, next_at, delivered_at) = match attempt {
            Attempt::Delivered { code } => ("delivered", Some(*code), None, None, Some(now)),
            Attempt::Retry { code, error, next_at } => ("pending", *code, Some(error.as_str()), Some(*next_at), None),
            Attempt::GaveUp { code, error } => ("failed", *code, Some(error.as_str()), None, None),
        };
        let id = id.to_owned();
        let delivered = matches!(attempt, Attempt::Delivered { .. });
        let (code, error) = (code.map(i64::from), error.map(str::to_owned));
        self.writer
            .run("record attempt", move |conn| {
                let webhook_id: Option<String> = conn
                    .prepare_cached(
                        "UPDATE webhook_deliveries SET status = ?1, attempts = attempts + 1, response_code = ?2, \
                         error = ?3, next_attempt_at = ?4, delivered_at = ?5 WHERE id = ?6 AND status = 'pending' \
                         RETURNING webhook_id",
                    )
                    .and_then(|mut st| {
                        st.query_row(rusqlite::params![status, code, error, next_at, delivered_at, id], |r| r.get(0))
                            .optional()
                    })
                    .op("record attempt")?;
                if let Some(hook) = webhook_id {
                    let sql = if delivered {
                        "UPDATE webhooks SET failures = 0 WHERE id = ?1"
                    } else {
                        "UPDATE webhooks SET failures = failures + 1 WHERE id = ?1"
                    };
                    conn.prepare_cached(sql).and_then(|mut st| st.execute([hook])).op("record attempt")?;
                }
                Ok(())
            })
            .await
    }

    /// [`crate::Store::list_deliveries`], on SQLite.
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = ?1 AND (?2 IS NULL OR id > ?2) \
             ORDER BY id LIMIT ?3"
        ))
        .bind(webhook_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .op("list deliveries")?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// [`crate::Store::pending_deliveries`], on SQLite.
    pub async fn pending_deliveries(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(&self.reader)
            .await
            .op("pending deliveries")
    }

    /// [`crate::Store::warning_ids`], on SQLite.
    pub async fn warning_ids(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM environments WHERE warn_before IS NOT NULL AND observed = 'running' \
             AND desired = 'running' AND expired_at IS NULL AND expires_at IS NOT NULL",
        )
        .fetch_all(&self.reader)
        .await
        .op("warning ids")
    }

    /// [`crate::Store::last_event_seq`], on SQLite.
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events").fetch_one(&self.reader).await.op("last event")
    }
}

/// The newest event's sequence number (0 when there is none).
fn latest_seq(conn: &Connection) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .op("latest event")
}

fn insert_hook(conn: &Connection, hook: &WebhookRecord, cursor: i64) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO webhooks ({HOOK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9)"
    ))
    .and_then(|mut st| {
        st.execute(rusqlite::params![
            hook.id,
            hook.tenant,
            hook.url,
            crate::json(&hook.events),
            hook.secret,
            hook.source,
            hook.name,
            cursor,
            hook.created_at
        ])
    })
    .op("insert webhook")?;
    Ok(())
}

fn delete_hook(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?1", [id]).op("delete webhook")?;
    conn.execute("DELETE FROM webhooks WHERE id = ?1", [id]).op("delete webhook")?;
    Ok(())
}

fn insert_delivery(conn: &Connection, webhook_id: &str, d: &NewDelivery, now: Millis) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO webhook_deliveries (id, webhook_id, seq, event, environment_id, body, status, attempts, \
         next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7)",
    )
    .and_then(|mut st| st.execute(rusqlite::params![d.id, webhook_id, d.seq, d.event, d.environment_id, d.body, now]))
    .op("insert delivery")?;
    Ok(())
}

fn hook_from_row(r: &SqliteRow) -> Result<WebhookRecord, StoreError> {
    let id: String = r.get("id");
    Ok(WebhookRecord {
        tenant: r.get("tenant"),
        url: r.get("url"),
        events: crate::json_column(&id, "events", r.get("events"))?,
        secret: r.get("secret"),
        source: r.get("source"),
        name: r.get("name"),
        cursor: r.get("cursor"),
        failures: r.get::<i64, _>("failures").try_into().unwrap_or(u32::MAX),
        created_at: r.get("created_at"),
        id,
    })
}

fn delivery_from_row(r: &SqliteRow) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        id: r.get("id"),
        webhook_id: r.get("webhook_id"),
        seq: r.get("seq"),
        event: r.get("event"),
        environment_id: r.get("environment_id"),
        body: r.get("body"),
        status: r.get("status"),
        attempts: r.get::<i64, _>("attempts").try_into().unwrap_or(u32::MAX),
        response_code: r.get::<Option<i64>, _>("response_code").and_then(|c| u16::try_from(c).ok()),
        error: r.get("error"),
        next_attempt_at: r.get("next_attempt_at"),
        delivered_at: r.get("delivered_at"),
        created_at: r.get("created_at"),
    })
}
