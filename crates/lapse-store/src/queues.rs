//! Queue messages applied at most once (the SWIM consumer's receipts, idempotency keys and
//! counters), and the environments the queues made, for the mirror of their state keys.
//!
//! Two guards, both checked and written in the transaction that applies a message:
//! - the **receipt** of its tag (given by the consumer when it moved the message to its
//!   processing list) stops a message found there again after a crash from applying twice;
//! - the optional **idempotency key** (the producer's, per queue) stops the same request
//!   delivered again under a new tag (a Redis restored from an older snapshot, a producer
//!   that retries) from applying twice, for as long as the key is kept
//!   ([`Store::prune_idempotency_keys`]).

use std::collections::{BTreeMap, HashSet};

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

/// What [`Store::apply_keyed_creates`] did with a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedCreates {
    /// Tags of the messages applied now.
    pub fresh: Vec<String>,
    /// Tags of messages not applied because their idempotency key had been applied (before, or
    /// earlier in the same batch).
    pub duplicate_keys: Vec<String>,
}

/// A queue message that changes existing environments (a SWIM decommission).
#[derive(Clone, Copy, Debug)]
pub struct QueuedChange<'a> {
    pub tag: &'a str,
    /// The producer's key, if the message has one.
    pub idempotency_key: Option<&'a str>,
    /// Only environments made by this source (`swim`) are selected; `None`: any.
    pub source: Option<&'a str>,
    pub filter: &'a ListFilter,
}

/// What [`Store::apply_queued_change`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum ChangeOutcome {
    /// Applied now, to these environments (perhaps none).
    Applied(Vec<Environment>),
    /// Its tag has a receipt: applied before (a crash before its removal).
    AlreadyApplied,
    /// Its idempotency key has been applied, by another message.
    DuplicateKey,
}

impl Store {
    /// Applies queue messages that create environments, each at most once: in one
    /// transaction, those whose tag has a receipt are skipped, the others are inserted with
    /// their events and receipts, and `queue`'s processed count grows by as many. Returns the tags
    /// applied now (the rest had been applied before).
    pub async fn apply_creates(&self, queue: &str, items: &[QueuedCreate]) -> Result<Vec<String>, StoreError> {
        let keyed: Vec<(&QueuedCreate, Option<&str>)> = items.iter().map(|i| (i, None)).collect();
        Ok(self.apply_keyed_creates(queue, &keyed).await?.fresh)
    }

    /// [`Store::apply_creates`], each message with its optional idempotency key: a message whose
    /// key `queue` has applied (or that an earlier message of the batch has) is skipped too;
    /// the keys of the messages applied are recorded in the same transaction.
    pub async fn apply_keyed_creates(
        &self,
        queue: &str,
        items: &[(&QueuedCreate, Option<&str>)],
    ) -> Result<AppliedCreates, StoreError> {
        let mut tx = self.writer.begin().await.op("apply queue")?;
        let tags: Vec<&str> = items.iter().map(|(i, _)| i.tag.as_str()).collect();
        let mut seen = known_tags(&mut tx, &tags).await?;
        let keys: Vec<&str> = items.iter().filter_map(|(_, k)| *k).collect();
        let mut seen_keys = known_keys(&mut tx, queue, &keys).await?;
        let mut out = AppliedCreates::default();
        let mut fresh: Vec<(&QueuedCreate, Option<&str>)> = Vec::new();
        for (item, key) in items {
            // A tag twice in one batch is one message.
            if !seen.insert(item.tag.clone()) {
                continue;
            }
            if let Some(key) = key
                && !seen_keys.insert((*key).to_owned())
            {
                out.duplicate_keys.push(item.tag.clone());
                continue;
            }
            fresh.push((item, *key));
        }
        let now = now_millis();
        for chunk in fresh.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO environments ({ENV_COLUMNS}) "));
            q.push_values(chunk, |b, (item, _)| bind_environment(b, &item.env));
            q.build().execute(&mut *tx).await.op("apply queue")?;
            let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO queue_receipts (tag, queue, at) ");
            q.push_values(chunk, |mut b, (item, _)| {
                b.push_bind(&item.tag).push_bind(queue).push_bind(now);
            });
            q.build().execute(&mut *tx).await.op("apply queue")?;
            let keyed: Vec<(&str, &str)> = chunk.iter().filter_map(|(i, k)| k.map(|k| (k, i.tag.as_str()))).collect();
            if !keyed.is_empty() {
                let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO queue_idempotency (queue, key, tag, at) ");
                q.push_values(keyed, |mut b, (key, tag)| {
                    b.push_bind(queue).push_bind(key).push_bind(tag).push_bind(now);
                });
                q.build().execute(&mut *tx).await.op("apply queue")?;
            }
        }
        let events: Vec<NewEvent> = fresh.iter().map(|(i, _)| i.event.clone()).collect();
        append_events(&mut tx, &events).await?;
        count_processed(&mut tx, queue, fresh.len()).await?;
        tx.commit().await.op("apply queue")?;
        for (item, _) in &fresh {
            self.published(&item.env);
        }
        out.fresh = fresh.iter().map(|(i, _)| i.tag.clone()).collect();
        Ok(out)
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
        change: impl FnMut(&mut Environment) -> Vec<NewEvent>,
    ) -> Result<Option<Vec<Environment>>, StoreError> {
        let message = QueuedChange { tag, idempotency_key: None, source: None, filter };
        Ok(match self.apply_queued_change(queue, message, change).await? {
            ChangeOutcome::Applied(changed) => Some(changed),
            ChangeOutcome::AlreadyApplied | ChangeOutcome::DuplicateKey => None,
        })
    }

    /// [`Store::apply_change`] for a message that may carry an idempotency key (applied at
    /// most once per queue, recorded with the receipt) and that selects only the environments
    /// of one source.
    pub async fn apply_queued_change(
        &self,
        queue: &str,
        message: QueuedChange<'_>,
        mut change: impl FnMut(&mut Environment) -> Vec<NewEvent>,
    ) -> Result<ChangeOutcome, StoreError> {
        let mut tx = self.writer.begin().await.op("apply queue")?;
        let known = sqlx::query("SELECT 1 FROM queue_receipts WHERE tag = ?")
            .bind(message.tag)
            .fetch_optional(&mut *tx)
            .await
            .op("apply queue")?;
        if known.is_some() {
            return Ok(ChangeOutcome::AlreadyApplied);
        }
        if let Some(key) = message.idempotency_key {
            let known = sqlx::query("SELECT 1 FROM queue_idempotency WHERE queue = ? AND key = ?")
                .bind(queue)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .op("apply queue")?;
            if known.is_some() {
                return Ok(ChangeOutcome::DuplicateKey);
            }
        }
        let mut q = filtered(message.filter);
        q.push(" AND desired != 'deleted'");
        if let Some(source) = message.source {
            q.push(" AND source = ").push_bind(source);
        }
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
        let now = now_millis();
        sqlx::query("INSERT INTO queue_receipts (tag, queue, at) VALUES (?, ?, ?)")
            .bind(message.tag)
            .bind(queue)
            .bind(now)
            .execute(&mut *tx)
            .await
            .op("apply queue")?;
        if let Some(key) = message.idempotency_key {
            sqlx::query("INSERT INTO queue_idempotency (queue, key, tag, at) VALUES (?, ?, ?, ?)")
                .bind(queue)
                .bind(key)
                .bind(message.tag)
                .bind(now)
                .execute(&mut *tx)
                .await
                .op("apply queue")?;
        }
        count_processed(&mut tx, queue, 1).await?;
        tx.commit().await.op("apply queue")?;
        for env in &changed {
            self.published(env);
        }
        Ok(ChangeOutcome::Applied(changed))
    }

    /// Forgets `queue`'s idempotency keys applied before `before`, and all but the newest
    /// `keep_at_most`. Returns how many went.
    pub async fn prune_idempotency_keys(
        &self,
        queue: &str,
        before: Millis,
        keep_at_most: u64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await.op("prune idempotency keys")?;
        let mut gone = sqlx::query("DELETE FROM queue_idempotency WHERE queue = ? AND at < ?")
            .bind(queue)
            .bind(before)
            .execute(&mut *tx)
            .await
            .op("prune idempotency keys")?
            .rows_affected();
        // The newest beyond the limit and everything older; nothing when there are fewer.
        gone += sqlx::query(
            "DELETE FROM queue_idempotency WHERE queue = ?1 AND (at, key) <= \
             (SELECT at, key FROM queue_idempotency WHERE queue = ?1 ORDER BY at DESC, key DESC LIMIT 1 OFFSET ?2)",
        )
        .bind(queue)
        .bind(keep_at_most.min(i64::MAX as u64) as i64)
        .execute(&mut *tx)
        .await
        .op("prune idempotency keys")?
        .rows_affected();
        tx.commit().await.op("prune idempotency keys")?;
        Ok(gone)
    }

    /// Which of `tags` have receipts (their messages were applied).
    pub async fn receipts(&self, tags: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::new();
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
    pub async fn prune_receipts(&self, queue: &str, before: Millis, keep: &HashSet<String>) -> Result<u64, StoreError> {
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

/// Which of `tags` have receipts.
async fn known_tags(conn: &mut SqliteConnection, tags: &[&str]) -> Result<HashSet<String>, StoreError> {
    let mut found = HashSet::new();
    for chunk in tags.chunks(500) {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT tag FROM queue_receipts WHERE tag IN ");
        q.push_tuples(chunk, |mut b, tag| {
            b.push_bind(*tag);
        });
        found.extend(q.build_query_scalar::<String>().fetch_all(&mut *conn).await.op("apply queue")?);
    }
    Ok(found)
}

/// Which of `keys` `queue` has applied.
async fn known_keys(conn: &mut SqliteConnection, queue: &str, keys: &[&str]) -> Result<HashSet<String>, StoreError> {
    let mut found = HashSet::new();
    for chunk in keys.chunks(500) {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT key FROM queue_idempotency WHERE queue = ");
        q.push_bind(queue).push(" AND key IN ");
        q.push_tuples(chunk, |mut b, key| {
            b.push_bind(*key);
        });
        found.extend(q.build_query_scalar::<String>().fetch_all(&mut *conn).await.op("apply queue")?);
    }
    Ok(found)
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

#[cfg(test)]
mod tests {
    use lapse_core::model::{DesiredState, Spec};

    use super::*;

    fn env(id: char, owner: &str, source: &str) -> Environment {
        let spec = Spec { provider: "process".into(), cmd: vec!["sleep".into(), "5".into()], ..Default::default() };
        let mut e = Environment::new(id.to_string().repeat(32), owner.to_owned(), spec, 1);
        e.source = source.to_owned();
        e
    }

    fn create(tag: &str, id: char) -> QueuedCreate {
        let env = env(id, "ann", "swim");
        let event = NewEvent::new(&env.id, "swim", "create", "ok", "");
        QueuedCreate { tag: tag.to_owned(), env, event }
    }

    #[tokio::test]
    async fn idempotency_keys_apply_a_request_once_whatever_its_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("lapse.db")).await.unwrap();
        let (a, b, c, d) = (create("t1", 'a'), create("t2", 'b'), create("t3", 'c'), create("t4", 'd'));
        let batch = [(&a, Some("k1")), (&b, Some("k1")), (&c, None)];
        let applied = store.apply_keyed_creates("q", &batch).await.unwrap();
        assert_eq!(
            applied,
            AppliedCreates { fresh: vec!["t1".into(), "t3".into()], duplicate_keys: vec!["t2".into()] }
        );
        // A re-delivery under a new tag (a Redis rolled back), and one under its own tag.
        let again = store.apply_keyed_creates("q", &[(&d, Some("k1")), (&a, Some("k1"))]).await.unwrap();
        assert_eq!(again, AppliedCreates { fresh: vec![], duplicate_keys: vec!["t4".into()] });
        assert_eq!(store.list(&ListFilter::default()).await.unwrap().len(), 2);
        // Keys are per queue.
        assert_eq!(store.apply_keyed_creates("other", &[(&d, Some("k1"))]).await.unwrap().fresh, ["t4"]);

        // A change selects only its source's environments, and its key applies once.
        store.insert(&env('e', "ann", "api"), NewEvent::new(&"e".repeat(32), "api", "create", "ok", "")).await.unwrap();
        let filter = ListFilter { owner: Some("ann".into()), ..Default::default() };
        let delete = |e: &mut Environment| {
            e.desired = DesiredState::Deleted;
            vec![]
        };
        let change = |tag| QueuedChange { tag, idempotency_key: Some("d1"), source: Some("swim"), filter: &filter };
        let ChangeOutcome::Applied(changed) = store.apply_queued_change("d", change("t5"), delete).await.unwrap()
        else {
            panic!("applied")
        };
        assert_eq!(changed.len(), 3, "the three swim environments, not the api one");
        assert!(changed.iter().all(|e| e.source == "swim"));
        assert_eq!(store.apply_queued_change("d", change("t5"), delete).await.unwrap(), ChangeOutcome::AlreadyApplied);
        assert_eq!(store.apply_queued_change("d", change("t6"), delete).await.unwrap(), ChangeOutcome::DuplicateKey);
        assert_eq!(store.get(&"e".repeat(32)).await.unwrap().unwrap().desired, DesiredState::Running);

        // Pruning: by age, then by count (the newest stay).
        assert_eq!(store.prune_idempotency_keys("q", 0, 10).await.unwrap(), 0);
        assert_eq!(store.prune_idempotency_keys("other", now_millis() + 1, 10).await.unwrap(), 1);
        store.apply_keyed_creates("q", &[(&create("t7", 'f'), Some("k2"))]).await.unwrap();
        assert_eq!(store.prune_idempotency_keys("q", 0, 1).await.unwrap(), 1);
        let left = known_keys(&mut store.writer.acquire().await.unwrap(), "q", &["k1", "k2"]).await.unwrap();
        assert_eq!(left, HashSet::from(["k2".to_owned()]));
    }
}
