//! Queue messages applied at most once (the SWIM consumer's receipts and counters), and the
//! environments the queues made, for the mirror of their state keys.

use std::collections::BTreeMap;

use lapse_core::model::Environment;
use lapse_core::{Millis, now_millis};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use crate::{ENV_COLUMNS, ListFilter, NewEvent, Op, Store, StoreError};
use crate::{append_events, bind_environment, environment_from_row, filtered, write_row};

/// A queue message to apply once: the tag its consumer gave it, the environment it creates and
/// the event that records it.
#[derive(Clone, Debug)]
pub struct QueuedCreate {
    pub tag: String,
    pub env: Environment,
    pub event: NewEvent,
}

impl Store {
    /// Applies queue messages that create environments, each at most once: in one
    /// transaction, those whose tag has a receipt are skipped, the others are inserted with
    /// their events and receipts, and `queue`'s processed count grows by as many. Returns the tags
    /// applied now (the rest had been applied before).
    pub async fn apply_creates(&self, queue: &str, items: &[QueuedCreate]) -> Result<Vec<String>, StoreError> {
        let mut tx = self.writer.begin().await.op("apply queue")?;
        let mut seen = std::collections::HashSet::new();
        for chunk in items.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new("SELECT tag FROM queue_receipts WHERE tag IN (");
            let mut list = q.separated(", ");
            for item in chunk {
                list.push_bind(&item.tag);
            }
            q.push(")");
            let tags: Vec<String> = q.build_query_scalar().fetch_all(&mut *tx).await.op("apply queue")?;
            seen.extend(tags);
        }
        // A tag twice in one batch is one message.
        let fresh: Vec<&QueuedCreate> = items.iter().filter(|i| seen.insert(i.tag.clone())).collect();
        let now = now_millis();
        for chunk in fresh.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO environments ({ENV_COLUMNS}) "));
            q.push_values(chunk, |b, item| bind_environment(b, &item.env));
            q.build().execute(&mut *tx).await.op("apply queue")?;
            let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO queue_receipts (tag, queue, at) ");
            q.push_values(chunk, |mut b, item| {
                b.push_bind(&item.tag).push_bind(queue).push_bind(now);
            });
            q.build().execute(&mut *tx).await.op("apply queue")?;
        }
        let events: Vec<NewEvent> = fresh.iter().map(|i| i.event.clone()).collect();
        append_events(&mut tx, &events).await?;
        count_processed(&mut tx, queue, fresh.len()).await?;
        tx.commit().await.op("apply queue")?;
        for item in &fresh {
            self.published(&item.env);
        }
        Ok(fresh.iter().map(|i| i.tag.clone()).collect())
    }

    /// Applies one queue message that changes existing environments, at most once: in one
    /// transaction, unless `tag` has a receipt, `change` edits every environment `filter`
    /// selects (deleted ones are never selected) and names its events; the receipt is written
    /// with them. `None` when the message had been applied before.
    pub async fn apply_change(
        &self,
        queue: &str,
        tag: &str,
        filter: &ListFilter,
        mut change: impl FnMut(&mut Environment) -> Vec<NewEvent>,
    ) -> Result<Option<Vec<Environment>>, StoreError> {
        let mut tx = self.writer.begin().await.op("apply queue")?;
        let known = sqlx::query("SELECT 1 FROM queue_receipts WHERE tag = ?")
            .bind(tag)
            .fetch_optional(&mut *tx)
            .await
            .op("apply queue")?;
        if known.is_some() {
            return Ok(None);
        }
        let mut q = filtered(filter);
        q.push(" AND desired != 'deleted'");
        let rows = q.build().fetch_all(&mut *tx).await.op("apply queue")?;
        let mut changed = Vec::with_capacity(rows.len());
        let mut events = Vec::new();
        for row in &rows {
            let mut env = environment_from_row(row)?;
            events.extend(change(&mut env));
            env.updated_at = now_millis();
            write_row(&mut tx, &env).await?;
            changed.push(env);
        }
        append_events(&mut tx, &events).await?;
        sqlx::query("INSERT INTO queue_receipts (tag, queue, at) VALUES (?, ?, ?)")
            .bind(tag)
            .bind(queue)
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .op("apply queue")?;
        count_processed(&mut tx, queue, 1).await?;
        tx.commit().await.op("apply queue")?;
        for env in &changed {
            self.published(env);
        }
        Ok(Some(changed))
    }

    /// Which of `tags` have receipts (their messages were applied).
    pub async fn receipts(&self, tags: &[String]) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut out = std::collections::HashSet::new();
        for chunk in tags.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new("SELECT tag FROM queue_receipts WHERE tag IN (");
            let mut list = q.separated(", ");
            for tag in chunk {
                list.push_bind(tag);
            }
            q.push(")");
            let found: Vec<String> = q.build_query_scalar().fetch_all(self.writer.pool()).await.op("receipts")?;
            out.extend(found);
        }
        Ok(out)
    }

    /// Forgets receipts of `queue` older than `before`, except those in `keep` (messages still
    /// in a processing list). Returns how many went.
    pub async fn prune_receipts(
        &self,
        queue: &str,
        before: Millis,
        keep: &std::collections::HashSet<String>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await.op("prune receipts")?;
        let old: Vec<String> = sqlx::query_scalar("SELECT tag FROM queue_receipts WHERE queue = ? AND at < ?")
            .bind(queue)
            .bind(before)
            .fetch_all(&mut *tx)
            .await
            .op("prune receipts")?;
        let mut gone = 0;
        for tag in old.iter().filter(|t| !keep.contains(*t)) {
            gone += sqlx::query("DELETE FROM queue_receipts WHERE tag = ?")
                .bind(tag)
                .execute(&mut *tx)
                .await
                .op("prune receipts")?
                .rows_affected();
        }
        tx.commit().await.op("prune receipts")?;
        Ok(gone)
    }

    /// Messages applied per queue, ever.
    pub async fn queue_counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = sqlx::query("SELECT queue, processed FROM queue_counters")
            .fetch_all(&self.reader)
            .await
            .op("queue counters")?;
        Ok(rows.iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1).max(0) as u64)).collect())
    }

    /// Environments from `source` that are not deleted, or were changed after `since`: what
    /// a mirror of them (the SWIM cache keys) holds.
    pub async fn mirrored(&self, source: &str, since: Millis) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = ? AND (desired != 'deleted' OR updated_at > ?)"
        ))
        .bind(source)
        .bind(since)
        .fetch_all(&self.reader)
        .await
        .op("mirrored")?;
        rows.iter().map(environment_from_row).collect()
    }
}

async fn count_processed(conn: &mut SqliteConnection, queue: &str, n: usize) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO queue_counters (queue, processed) VALUES (?, ?) \
         ON CONFLICT (queue) DO UPDATE SET processed = processed + excluded.processed",
    )
    .bind(queue)
    .bind(n as i64)
    .execute(conn)
    .await
    .op("count processed")?;
    Ok(())
}
