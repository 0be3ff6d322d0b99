//! Queue messages applied at most once, and one lab per user, on PostgreSQL: the ports of
//! [`crate::Store`]'s `queues` and `labs` operations, with their contracts (see those
//! modules' docs and each method's).
//!
//! What PostgreSQL adds, since many replicas may consume one queue:
//! - **Receipts first.** A message's receipt is inserted (`ON CONFLICT DO NOTHING`) at the
//!   start of the transaction that applies it. If nothing was inserted, the message was
//!   applied already (a committed receipt), or another replica is applying it now (the insert
//!   waits for that transaction: if it commits, nothing is inserted here; if it rolls back,
//!   this one applies it), and this transaction applies nothing of it. So two replicas that
//!   consume the same message apply it exactly once. A message refused for its idempotency
//!   key leaves no receipt, as on SQLite (its receipt is taken back in the same transaction).
//! - **Idempotency keys** are inserted the same way, after the receipts: a key whose insert
//!   inserted nothing was applied (or is being applied) by another message.
//! - **One lab per user across replicas**: [`PgStore::apply_lab_messages`] first takes a
//!   transaction advisory lock per (source, owner) of its batch, in key order, so that two
//!   replicas' messages for one user are decided one after the other, each seeing what the
//!   other committed; the owner's labs are read `FOR UPDATE`.
//! - Lock order: owners' locks, receipts (sorted by tag), keys (sorted), rows (`ORDER BY id`
//!   where several are locked), the queue's counter, events last.

use std::collections::{BTreeMap, HashSet};

use lapse_core::model::{DesiredState, Environment};
use lapse_core::{Millis, now_millis};
use sqlx::{PgConnection, Row as _};

use super::PgStore;
use super::write::{append_events, insert_rows, write_row};
use crate::labs::{decommission_outcome, decommission_targets};
use crate::rows::environment_from;
use crate::{AppliedCreates, ChangeOutcome, ENV_COLUMNS, ListFilter, NewEvent, Op as _, QueuedChange, QueuedCreate};
use crate::{LabDecommissionOutcome, LabMessage, LabOutcome, LabProvisionOutcome, LabRequest, StoreError};

/// The first key of a lab owner's transaction advisory lock ("lapl"); the second is the hash
/// of the source and the owner.
const OWNER_LOCK_CLASS: i32 = 0x6c61_706c;

impl PgStore {
    /// [`crate::Store::apply_creates`].
    pub async fn apply_creates(&self, queue: &str, items: &[QueuedCreate]) -> Result<Vec<String>, StoreError> {
        let keyed: Vec<(&QueuedCreate, Option<&str>)> = items.iter().map(|i| (i, None)).collect();
        Ok(self.apply_keyed_creates(queue, &keyed).await?.fresh)
    }

    /// [`crate::Store::apply_keyed_creates`], receipts and keys inserted first (module docs).
    pub async fn apply_keyed_creates(
        &self,
        queue: &str,
        items: &[(&QueuedCreate, Option<&str>)],
    ) -> Result<AppliedCreates, StoreError> {
        let mut tx = self.begin("apply queue").await?;
        let now = now_millis();
        // A tag twice in one batch is one message: its first.
        let mut tags = HashSet::new();
        let firsts: Vec<(&QueuedCreate, Option<&str>)> =
            items.iter().filter(|(i, _)| tags.insert(i.tag.as_str())).copied().collect();
        let all: Vec<&str> = firsts.iter().map(|(i, _)| i.tag.as_str()).collect();
        let mine = insert_receipts(&mut tx, queue, &all, now).await?;
        // Ours to apply, in batch order; a key an earlier message of the batch has is a duplicate.
        let mut keys = HashSet::new();
        let mut candidates: Vec<(&QueuedCreate, Option<&str>, bool)> = Vec::new();
        for (item, key) in firsts.into_iter().filter(|(i, _)| mine.contains(&i.tag)) {
            let duplicate = key.is_some_and(|k| !keys.insert(k));
            candidates.push((item, key, duplicate));
        }
        let keyed: Vec<(&str, &str)> =
            candidates.iter().filter(|c| !c.2).filter_map(|(i, k, _)| k.map(|k| (k, i.tag.as_str()))).collect();
        let new_keys = insert_keys(&mut tx, queue, &keyed, now).await?;
        let mut out = AppliedCreates::default();
        let mut fresh: Vec<&QueuedCreate> = Vec::new();
        for (item, key, duplicate) in candidates {
            if duplicate || key.is_some_and(|k| !new_keys.contains(k)) {
                out.duplicate_keys.push(item.tag.clone());
            } else {
                fresh.push(item);
            }
        }
        if !out.duplicate_keys.is_empty() {
            sqlx::query("DELETE FROM queue_receipts WHERE tag = ANY($1)")
                .bind(&out.duplicate_keys)
                .execute(&mut *tx)
                .await
                .op("apply queue")?;
        }
        let made: Vec<Environment> = fresh.iter().map(|i| i.env.clone()).collect();
        insert_rows(&mut tx, &made).await?;
        count_processed(&mut tx, queue, fresh.len()).await?;
        let events: Vec<NewEvent> = fresh.iter().map(|i| i.event.clone()).collect();
        append_events(&mut tx, &events).await?;
        tx.commit().await.op("apply queue")?;
        out.fresh = fresh.iter().map(|i| i.tag.clone()).collect();
        for env in &made {
            self.published(env);
        }
        Ok(out)
    }

    /// [`crate::Store::apply_change`].
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

    /// [`crate::Store::apply_queued_change`]: the receipt and key first, then the selected
    /// rows, locked in id order.
    pub async fn apply_queued_change(
        &self,
        queue: &str,
        message: QueuedChange<'_>,
        mut change: impl FnMut(&mut Environment) -> Vec<NewEvent> + Send + 'static,
    ) -> Result<ChangeOutcome, StoreError> {
        let mut tx = self.begin("apply queue").await?;
        let now = now_millis();
        if insert_receipts(&mut tx, queue, &[message.tag], now).await?.is_empty() {
            tx.rollback().await.op("apply queue")?;
            return Ok(ChangeOutcome::AlreadyApplied);
        }
        if let Some(key) = message.idempotency_key
            && insert_keys(&mut tx, queue, &[(key, message.tag)], now).await?.is_empty()
        {
            // Taking the receipt back with the rest: none is left, as on SQLite.
            tx.rollback().await.op("apply queue")?;
            return Ok(ChangeOutcome::DuplicateKey);
        }
        let mut q = super::rows::select_filtered(message.filter);
        q.push(" AND desired <> 'deleted'");
        if let Some(source) = message.source {
            q.push(" AND source = ").push_bind(source.to_owned());
        }
        q.push(" ORDER BY id FOR UPDATE");
        let rows = q.build().fetch_all(&mut *tx).await.op("apply queue")?;
        let (mut changed, mut events) = (Vec::with_capacity(rows.len()), Vec::new());
        for row in &rows {
            let mut env = environment_from(row)?;
            events.extend(change(&mut env));
            env.updated_at = now_millis();
            write_row(&mut tx, &env).await?;
            changed.push(env);
        }
        count_processed(&mut tx, queue, 1).await?;
        append_events(&mut tx, &events).await?;
        tx.commit().await.op("apply queue")?;
        for env in &changed {
            self.published(env);
        }
        Ok(ChangeOutcome::Applied(changed))
    }

    /// [`crate::Store::prune_idempotency_keys`].
    pub async fn prune_idempotency_keys(
        &self,
        queue: &str,
        before: Millis,
        keep_at_most: u64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin("prune idempotency keys").await?;
        let old = sqlx::query("DELETE FROM queue_idempotency WHERE queue = $1 AND at < $2")
            .bind(queue)
            .bind(before)
            .execute(&mut *tx)
            .await
            .op("prune idempotency keys")?;
        // The newest beyond the limit and everything older; nothing when there are fewer.
        let over = sqlx::query(
            "DELETE FROM queue_idempotency WHERE queue = $1 AND (at, key) <= \
             (SELECT at, key FROM queue_idempotency WHERE queue = $1 ORDER BY at DESC, key DESC LIMIT 1 OFFSET $2)",
        )
        .bind(queue)
        .bind(i64::try_from(keep_at_most).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .op("prune idempotency keys")?;
        tx.commit().await.op("prune idempotency keys")?;
        Ok(old.rows_affected() + over.rows_affected())
    }

    /// [`crate::Store::receipts`].
    pub async fn receipts(&self, tags: &[String]) -> Result<HashSet<String>, StoreError> {
        let found: Vec<String> = sqlx::query_scalar("SELECT tag FROM queue_receipts WHERE tag = ANY($1)")
            .bind(tags)
            .fetch_all(self.pool())
            .await
            .op("receipts")?;
        Ok(found.into_iter().collect())
    }

    /// [`crate::Store::prune_receipts`].
    pub async fn prune_receipts(&self, queue: &str, before: Millis, keep: &HashSet<String>) -> Result<u64, StoreError> {
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        let gone = sqlx::query("DELETE FROM queue_receipts WHERE queue = $1 AND at < $2 AND NOT (tag = ANY($3))")
            .bind(queue)
            .bind(before)
            .bind(keep);
        self.write_one("prune receipts", gone).await
    }

    /// [`crate::Store::queue_counters`].
    pub async fn queue_counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = sqlx::query("SELECT queue, processed FROM queue_counters")
            .fetch_all(self.pool())
            .await
            .op("queue counters")?;
        let count = |r: &sqlx::postgres::PgRow| -> Result<(String, u64), sqlx::Error> {
            Ok((r.try_get(0)?, r.try_get::<i64, _>(1)?.max(0).unsigned_abs()))
        };
        rows.iter().map(count).collect::<Result<_, _>>().op("queue counters")
    }

    /// [`crate::Store::mirrored`].
    pub async fn mirrored(&self, source: &str, since: Millis) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = $1 AND (desired <> 'deleted' OR updated_at > $2)"
        ))
        .bind(source)
        .bind(since)
        .fetch_all(self.pool())
        .await
        .op("mirrored")?;
        rows.iter().map(environment_from).collect()
    }

    /// [`crate::Store::apply_lab_messages`], under the owners' locks (module docs).
    pub async fn apply_lab_messages(
        &self,
        items: &[(LabMessage<'_>, LabRequest<'_>)],
    ) -> Result<Vec<LabOutcome>, StoreError> {
        let mut tx = self.begin("apply lab").await?;
        lock_owners(&mut tx, items).await?;
        let (outcomes, changed) = apply_labs(&mut tx, items).await?;
        tx.commit().await.op("apply lab")?;
        for env in &changed {
            self.published(env);
        }
        Ok(outcomes)
    }

    /// [`crate::Store::lab_rows`].
    pub async fn lab_rows(&self, source: &str, owner: &str) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = $1 AND owner = $2 AND observed <> 'deleted' \
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(source)
        .bind(owner)
        .fetch_all(self.pool())
        .await
        .op("lab rows")?;
        rows.iter().map(environment_from).collect()
    }
}

/// Inserts the receipts of `tags` (in tag order) that are not there; the tags inserted now.
async fn insert_receipts(
    conn: &mut PgConnection,
    queue: &str,
    tags: &[&str],
    now: Millis,
) -> Result<HashSet<String>, StoreError> {
    if tags.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sorted = tags.to_vec();
    sorted.sort_unstable();
    let mine: Vec<String> = sqlx::query_scalar(
        "INSERT INTO queue_receipts (tag, queue, at) SELECT t, $1, $2 FROM unnest($3::text[]) AS t \
         ON CONFLICT DO NOTHING RETURNING tag",
    )
    .bind(queue)
    .bind(now)
    .bind(sorted)
    .fetch_all(&mut *conn)
    .await
    .op("apply queue")?;
    Ok(mine.into_iter().collect())
}

/// Inserts `queue`'s idempotency keys `(key, tag)` (in key order) that are not there; the
/// keys inserted now.
async fn insert_keys(
    conn: &mut PgConnection,
    queue: &str,
    keyed: &[(&str, &str)],
    now: Millis,
) -> Result<HashSet<String>, StoreError> {
    if keyed.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sorted = keyed.to_vec();
    sorted.sort_unstable();
    let (keys, tags): (Vec<&str>, Vec<&str>) = sorted.into_iter().unzip();
    let mine: Vec<String> = sqlx::query_scalar(
        "INSERT INTO queue_idempotency (queue, key, tag, at) SELECT $1, k, t, $2 FROM unnest($3::text[], $4::text[]) \
         AS u (k, t) ON CONFLICT DO NOTHING RETURNING key",
    )
    .bind(queue)
    .bind(now)
    .bind(keys)
    .bind(tags)
    .fetch_all(&mut *conn)
    .await
    .op("apply queue")?;
    Ok(mine.into_iter().collect())
}

async fn count_processed(conn: &mut PgConnection, queue: &str, n: usize) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO queue_counters (queue, processed) VALUES ($1, $2) \
         ON CONFLICT (queue) DO UPDATE SET processed = queue_counters.processed + excluded.processed",
    )
    .bind(queue)
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await
    .op("count processed")?;
    Ok(())
}

/// Takes the lock of every (source, owner) of `items`, in key order.
async fn lock_owners(conn: &mut PgConnection, items: &[(LabMessage<'_>, LabRequest<'_>)]) -> Result<(), StoreError> {
    let (sources, owners): (Vec<&str>, Vec<&str>) = items.iter().map(|(m, _)| (m.source, m.owner)).unzip();
    let keys: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT hashtext(s || chr(31) || o) AS k FROM unnest($1::text[], $2::text[]) AS u (s, o) ORDER BY k",
    )
    .bind(sources)
    .bind(owners)
    .fetch_all(&mut *conn)
    .await
    .op("apply lab")?;
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(OWNER_LOCK_CLASS)
            .bind(key)
            .execute(&mut *conn)
            .await
            .op("apply lab")?;
    }
    Ok(())
}

/// The messages' work, as SQLite's `labs::apply`: their outcomes and the rows changed.
async fn apply_labs(
    conn: &mut PgConnection,
    items: &[(LabMessage<'_>, LabRequest<'_>)],
) -> Result<(Vec<LabOutcome>, Vec<Environment>), StoreError> {
    let mut seen = HashSet::new();
    let mut outcomes = Vec::with_capacity(items.len());
    let (mut changed, mut events): (Vec<Environment>, Vec<NewEvent>) = (Vec::new(), Vec::new());
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (message, request) in items {
        let fresh = seen.insert(message.tag)
            && !insert_receipts(conn, message.queue, &[message.tag], now_millis()).await?.is_empty();
        if !fresh {
            outcomes.push(match request {
                LabRequest::Provision { .. } => LabOutcome::Provision(LabProvisionOutcome::AlreadyApplied),
                LabRequest::Decommission(_) => LabOutcome::Decommission(LabDecommissionOutcome::AlreadyApplied),
            });
            continue;
        }
        let labs = labs_of(conn, message.source, message.owner).await?;
        let current = crate::labs::current(&labs).cloned();
        let remove = |changed: &mut Vec<Environment>, events: &mut Vec<NewEvent>, env: &Environment| {
            let mut env = env.clone();
            env.desired = DesiredState::Deleted;
            env.restart_on_extend = false;
            env.updated_at = now_millis();
            events.push(NewEvent::new(&env.id, message.source, "delete", "ok", message.removal.clone()));
            changed.push(env.clone());
            env
        };
        let outcome = match request {
            LabRequest::Provision { lab, env, event } => match &current {
                Some(c) if c.labels.get(message.lab_label).map(String::as_str) == Some(*lab) => {
                    LabOutcome::Provision(LabProvisionOutcome::SameLab(Box::new(c.clone())))
                }
                _ => {
                    let mut replaced = Vec::with_capacity(labs.len());
                    for old in &labs {
                        let old = remove(&mut changed, &mut events, old);
                        write_row(conn, &old).await?;
                        replaced.push(old);
                    }
                    insert_rows(conn, std::slice::from_ref(*env)).await?;
                    events.push(event.clone());
                    changed.push((*env).clone());
                    LabOutcome::Provision(LabProvisionOutcome::Created { env: Box::new((*env).clone()), replaced })
                }
            },
            LabRequest::Decommission(asked) => {
                let (targets, fixed) = decommission_targets(&labs, message.lab_label, asked);
                let mut gone = Vec::with_capacity(targets.len());
                for env in &targets {
                    let env = remove(&mut changed, &mut events, env);
                    write_row(conn, &env).await?;
                    gone.push(env);
                }
                LabOutcome::Decommission(decommission_outcome(fixed, gone))
            }
        };
        outcomes.push(outcome);
        *counts.entry(message.queue).or_default() += 1;
    }
    for (queue, n) in counts {
        count_processed(conn, queue, n).await?;
    }
    append_events(conn, &events).await?;
    Ok((outcomes, changed))
}

/// The owner's labs, newest first, locked.
async fn labs_of(conn: &mut PgConnection, source: &str, owner: &str) -> Result<Vec<Environment>, StoreError> {
    static LABS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE source = $1 AND owner = $2 AND desired <> 'deleted' \
             AND observed <> 'deleted' ORDER BY created_at DESC, id DESC FOR UPDATE"
        )
    });
    let rows = sqlx::query(&LABS).bind(source).bind(owner).fetch_all(&mut *conn).await.op("apply lab")?;
    rows.iter().map(environment_from).collect()
}
