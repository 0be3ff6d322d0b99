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
use rusqlite::{Connection, OptionalExtension as _};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{ENV_COLUMNS, ListFilter, NewEvent, Op, SqliteStore, StoreError, WriteOp};
use crate::{append_event, append_events, environment_from, filtered, insert_row, write_row};

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

impl SqliteStore {
    /// [`crate::Store::apply_creates`], on SQLite.
    pub async fn apply_creates(&self, queue: &str, items: &[QueuedCreate]) -> Result<Vec<String>, StoreError> {
        let keyed: Vec<(&QueuedCreate, Option<&str>)> = items.iter().map(|i| (i, None)).collect();
        Ok(self.apply_keyed_creates(queue, &keyed).await?.fresh)
    }

    /// [`crate::Store::apply_keyed_creates`], on SQLite.
    pub async fn apply_keyed_creates(
        &self,
        queue: &str,
        items: &[(&QueuedCreate, Option<&str>)],
    ) -> Result<AppliedCreates, StoreError> {
        let owned: Vec<(QueuedCreate, Option<String>)> =
            items.iter().map(|(i, k)| ((*i).clone(), k.map(str::to_owned))).collect();
        let queue = queue.to_owned();
        let (out, fresh) = self
            .writer
            .run("apply queue", move |conn| {
                let tags: Vec<&str> = owned.iter().map(|(i, _)| i.tag.as_str()).collect();
                let mut seen = known(conn, "SELECT tag FROM queue_receipts WHERE tag = ?1", None, &tags)?;
                let keys: Vec<&str> = owned.iter().filter_map(|(_, k)| k.as_deref()).collect();
                let mut seen_keys = known_keys(conn, &queue, &keys)?;
                let mut out = AppliedCreates::default();
                let mut fresh: Vec<&(QueuedCreate, Option<String>)> = Vec::new();
                for item in &owned {
                    // A tag twice in one batch is one message.
                    if !seen.insert(item.0.tag.clone()) {
                        continue;
                    }
                    if let Some(key) = &item.1
                        && !seen_keys.insert(key.clone())
                    {
                        out.duplicate_keys.push(item.0.tag.clone());
                        continue;
                    }
                    fresh.push(item);
                }
                let now = now_millis();
                for (item, key) in &fresh {
                    insert_row(conn, &item.env)?;
                    receipt(conn, &item.tag, &queue, key.as_deref(), now)?;
                    append_event(conn, &item.event)?;
                }
                count_processed(conn, &queue, fresh.len())?;
                out.fresh = fresh.iter().map(|(i, _)| i.tag.clone()).collect();
                let made: Vec<Environment> = fresh.iter().map(|(i, _)| i.env.clone()).collect();
                Ok((out, made))
            })
            .await?;
        for env in &fresh {
            self.published(env);
        }
        Ok(out)
    }

    /// [`crate::Store::apply_change`], on SQLite.
    pub async fn apply_change(
        &self,
        queue: &str,
        tag: &str,
        filter: &ListFilter,
        change: impl FnMut(&mut Environment) -> Vec<NewEvent> + Send + 'static,
    ) -> Result<Option<Vec<Environment>>, StoreError> {
        let message = QueuedChange { tag, idempotency_key: None, source: None, filter };
        Ok(match self.apply_queued_change(queue, message, change).await? {
            ChangeOutcome::Applied(changed) => Some(changed),
            ChangeOutcome::AlreadyApplied | ChangeOutcome::DuplicateKey => None,
        })
    }

    /// [`crate::Store::apply_queued_change`], on SQLite.
    pub async fn apply_queued_change(
        &self,
        queue: &str,
        message: QueuedChange<'_>,
        mut change: impl FnMut(&mut Environment) -> Vec<NewEvent> + Send + 'static,
    ) -> Result<ChangeOutcome, StoreError> {
        let (mut sql, mut values) = filtered(message.filter);
        sql.push_str(" AND desired != 'deleted'");
        if let Some(source) = message.source {
            sql.push_str(" AND source = ?");
            values.push(rusqlite::types::Value::Text(source.to_owned()));
        }
        let (queue, tag, key) = (queue.to_owned(), message.tag.to_owned(), message.idempotency_key.map(str::to_owned));
        let outcome = self
            .writer
            .run("apply queue", move |conn| {
                if !known(conn, "SELECT tag FROM queue_receipts WHERE tag = ?1", None, &[&tag])?.is_empty() {
                    return Ok(ChangeOutcome::AlreadyApplied);
                }
                if let Some(key) = &key
                    && !known_keys(conn, &queue, &[key])?.is_empty()
                {
                    return Ok(ChangeOutcome::DuplicateKey);
                }
                let mut select = conn.prepare_cached(&sql).op("apply queue")?;
                let rows: Vec<Result<Environment, StoreError>> = select
                    .query_map(rusqlite::params_from_iter(values.iter()), |r| Ok(environment_from(r)))
                    .op("apply queue")?
                    .collect::<Result<_, _>>()
                    .op("apply queue")?;
                let mut changed = Vec::with_capacity(rows.len());
                for row in rows {
                    let mut env = row?;
                    let events = change(&mut env);
                    env.updated_at = now_millis();
                    write_row(conn, &env)?;
                    append_events(conn, &events)?;
                    changed.push(env);
                }
                receipt(conn, &tag, &queue, key.as_deref(), now_millis())?;
                count_processed(conn, &queue, 1)?;
                Ok(ChangeOutcome::Applied(changed))
            })
            .await?;
        if let ChangeOutcome::Applied(changed) = &outcome {
            for env in changed {
                self.published(env);
            }
        }
        Ok(outcome)
    }

    /// [`crate::Store::prune_idempotency_keys`], on SQLite.
    pub async fn prune_idempotency_keys(
        &self,
        queue: &str,
        before: Millis,
        keep_at_most: u64,
    ) -> Result<u64, StoreError> {
        let queue = queue.to_owned();
        self.writer
            .run("prune idempotency keys", move |conn| {
                let mut gone = conn
                    .execute(
                        "DELETE FROM queue_idempotency WHERE queue = ?1 AND at < ?2",
                        rusqlite::params![queue, before],
                    )
                    .op("prune idempotency keys")?;
                // The newest beyond the limit and everything older; nothing when there are fewer.
                gone += conn
                    .execute(
                        "DELETE FROM queue_idempotency WHERE queue = ?1 AND (at, key) <= \
                         (SELECT at, key FROM queue_idempotency WHERE queue = ?1 \
                         ORDER BY at DESC, key DESC LIMIT 1 OFFSET ?2)",
                        rusqlite::params![queue, keep_at_most.min(i64::MAX as u64) as i64],
                    )
                    .op("prune idempotency keys")?;
                Ok(gone as u64)
            })
            .await
    }

    /// [`crate::Store::receipts`], on SQLite.
    pub async fn receipts(&self, tags: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::new();
        for chunk in tags.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new("SELECT tag FROM queue_receipts WHERE tag IN (");
            let mut list = q.separated(", ");
            for tag in chunk {
                list.push_bind(tag);
            }
            q.push(")");
            let found: Vec<String> = q.build_query_scalar().fetch_all(&self.reader).await.op("receipts")?;
            out.extend(found);
        }
        Ok(out)
    }

    /// [`crate::Store::prune_receipts`], on SQLite.
    pub async fn prune_receipts(&self, queue: &str, before: Millis, keep: &HashSet<String>) -> Result<u64, StoreError> {
        let (queue, keep) = (queue.to_owned(), keep.clone());
        self.writer
            .run("prune receipts", move |conn| {
                let mut select = conn
                    .prepare_cached("SELECT tag FROM queue_receipts WHERE queue = ?1 AND at < ?2")
                    .op("prune receipts")?;
                let old: Vec<String> = select
                    .query_map(rusqlite::params![queue, before], |r| r.get(0))
                    .and_then(|rows| rows.collect())
                    .op("prune receipts")?;
                let mut delete =
                    conn.prepare_cached("DELETE FROM queue_receipts WHERE tag = ?1").op("prune receipts")?;
                let mut gone = 0;
                for tag in old.iter().filter(|t| !keep.contains(*t)) {
                    gone += delete.execute([tag]).op("prune receipts")? as u64;
                }
                Ok(gone)
            })
            .await
    }

    /// [`crate::Store::queue_counters`], on SQLite.
    pub async fn queue_counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = sqlx::query("SELECT queue, processed FROM queue_counters")
            .fetch_all(&self.reader)
            .await
            .op("queue counters")?;
        Ok(rows.iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1).max(0) as u64)).collect())
    }

    /// [`crate::Store::mirrored`], on SQLite.
    pub async fn mirrored(&self, source: &str, since: Millis) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = ? AND (desired != 'deleted' OR updated_at > ?)"
        ))
        .bind(source)
        .bind(since)
        .fetch_all(&self.reader)
        .await
        .op("mirrored")?;
        rows.iter().map(environment_from).collect()
    }
}

/// Which of `values` `query` finds (a statement of one column whose parameters are `?1` for
/// the value and, with `queue`, `?2` for it).
fn known(conn: &Connection, query: &str, queue: Option<&str>, values: &[&str]) -> Result<HashSet<String>, StoreError> {
    let mut st = conn.prepare_cached(query).op("apply queue")?;
    let mut found = HashSet::new();
    for value in values {
        let hit: Option<String> = match queue {
            Some(queue) => st.query_row(rusqlite::params![value, queue], |r| r.get(0)),
            None => st.query_row([value], |r| r.get(0)),
        }
        .optional()
        .op("apply queue")?;
        found.extend(hit);
    }
    Ok(found)
}

/// Which of `keys` `queue` has applied.
fn known_keys(conn: &Connection, queue: &str, keys: &[&str]) -> Result<HashSet<String>, StoreError> {
    known(conn, "SELECT key FROM queue_idempotency WHERE key = ?1 AND queue = ?2", Some(queue), keys)
}

/// The receipt of a message applied now, and its key's.
fn receipt(conn: &Connection, tag: &str, queue: &str, key: Option<&str>, now: Millis) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO queue_receipts (tag, queue, at) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(rusqlite::params![tag, queue, now]))
        .op("apply queue")?;
    if let Some(key) = key {
        conn.prepare_cached("INSERT INTO queue_idempotency (queue, key, tag, at) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut st| st.execute(rusqlite::params![queue, key, tag, now]))
            .op("apply queue")?;
    }
    Ok(())
}

fn count_processed(conn: &Connection, queue: &str, n: usize) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO queue_counters (queue, processed) VALUES (?1, ?2) \
         ON CONFLICT (queue) DO UPDATE SET processed = processed + excluded.processed",
    )
    .and_then(|mut st| st.execute(rusqlite::params![queue, n as i64]))
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
        let store = SqliteStore::open(&dir.path().join("lapse.db")).await.unwrap();
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
        let left = store.writer.run("test", |conn| known_keys(conn, "q", &["k1", "k2"])).await.unwrap();
        assert_eq!(left, HashSet::from(["k2".to_owned()]));
    }
}
