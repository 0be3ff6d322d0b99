//! The change feed across replicas.
//!
//! Each [`PgStore`] is one replica: its connections are named `lapse <replica id>`
//! (`application_name`). After each commit that publishes a row ([`PgStore::published`]),
//! the row's id is queued for a notifier task, which sends every id waiting in one statement
//! (`pg_notify` on channel [`CHANNEL`], payload `"lapse <replica id> <id>"`, at most
//! [`NOTIFY_BATCH`] ids a statement). Notifying inside the write transactions (a trigger)
//! was measured first: PostgreSQL commits notifying transactions one at a time, and pool
//! refill fell from 269 to 53 members/s; out of the transaction the write path is unchanged.
//! The price: a replica that dies between a commit and its notification does not announce
//! that change (the readers of [`Remote`] must also read the state now and then), and when
//! the queue is full ([`NOTIFY_QUEUE`]) the next notification is `*`: read everything again.
//!
//! Each store listens on a connection of its own: the ids another replica changed are read
//! back (a batch per wake-up, at most [`READ_BATCH`] ids a query) and published
//! - on [`PgStore::subscribe`], beside the store's own writes, so a change feed (the
//!   dashboard's live updates) shows every replica's changes;
//! - on [`PgStore::remote_changes`] as [`Remote::Changed`]: what a replica running the
//!   background work must look at (wake the reconciler, move a timer).
//!
//! The store's own notifications are skipped. Notifications are lost while the listening
//! connection is down: after it comes back, [`Remote::Missed`] says to read the state again
//! (as does a `*`). Both tasks end when the store's pool is closed. Activity batches are not
//! published, so they are not on the feed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lapse_core::model::Environment;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use super::PgStore;
use crate::ENV_COLUMNS;
use crate::rows::environment_from;

/// The channel replicas notify.
pub const CHANNEL: &str = "lapse_env";

/// Ids read back in one query at most.
pub const READ_BATCH: usize = 500;

/// Ids sent in one `pg_notify` statement at most.
pub const NOTIFY_BATCH: usize = 1000;

/// Ids waiting for the notifier at most.
pub const NOTIFY_QUEUE: usize = 8192;

/// What another replica did, as [`PgStore::remote_changes`] tells it.
#[derive(Clone, Debug)]
pub enum Remote {
    /// Another replica committed this row.
    Changed(Arc<Environment>),
    /// The feed was down for a while: changes may have been missed; read the state again.
    Missed,
}

impl PgStore {
    /// What other replicas change, from now on (see the module docs).
    pub fn remote_changes(&self) -> broadcast::Receiver<Remote> {
        self.remote.subscribe()
    }

    /// This replica's id (its connections' `application_name` is `lapse <id>`).
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// Queues `id` for the other replicas (see the module docs).
    pub(super) fn tell_replicas(&self, id: &str) {
        if let Some(queue) = &self.notify
            && queue.try_send(id.to_owned()).is_err()
        {
            self.notify_overflow.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Starts the notifier (see the module docs); its queue.
    pub(super) fn start_notifier(&self) -> tokio::sync::mpsc::Sender<String> {
        let (queue, mut rx) = tokio::sync::mpsc::channel::<String>(NOTIFY_QUEUE);
        let (pool, overflow) = (self.pool.clone(), self.notify_overflow.clone());
        let from = format!("lapse {}", self.replica);
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(NOTIFY_BATCH);
            while rx.recv_many(&mut ids, NOTIFY_BATCH).await > 0 {
                if overflow.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    ids.push("*".to_owned());
                }
                ids.sort_unstable();
                ids.dedup();
                let sent = sqlx::query("SELECT pg_notify($1, $2 || ' ' || id) FROM unnest($3::text[]) AS id")
                    .bind(CHANNEL)
                    .bind(&from)
                    .bind(&ids)
                    .execute(&pool)
                    .await;
                match sent {
                    Ok(_) => {}
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, ids = ids.len(), "notifying the other replicas failed");
                        overflow.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                ids.clear();
            }
        });
        queue
    }

    /// Starts listening (see the module docs).
    pub(super) fn start_feed(&self) {
        let store = self.clone();
        tokio::spawn(async move {
            let own = format!("lapse {}", store.replica);
            let mut backoff = Duration::from_millis(100);
            loop {
                if store.pool.is_closed() {
                    return;
                }
                let mut listener = match PgListener::connect_with(&store.pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(error = %e, "the change feed cannot connect; trying again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::debug!(error = %e, "the change feed cannot listen; trying again");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                backoff = Duration::from_millis(100);
                match store.follow(&mut listener, &own).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "the change feed was interrupted; changes may have been missed");
                        let _ = store.remote.send(Remote::Missed);
                    }
                }
            }
        });
    }

    /// Publishes what the listener hears until the pool closes (`Ok`) or the connection is
    /// lost (`Err`).
    async fn follow(&self, listener: &mut PgListener, own: &str) -> Result<(), sqlx::Error> {
        loop {
            let first = match listener.try_recv().await {
                Ok(Some(n)) => n,
                Ok(None) => return Err(sqlx::Error::Protocol("the listening connection was lost".into())),
                Err(sqlx::Error::PoolClosed) => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut ids = BTreeSet::new();
            let mut missed = false;
            let mut next = Some(first);
            while let Some(n) = next {
                match n.payload().rsplit_once(' ') {
                    Some((from, _)) if from == own => {}
                    Some((_, "*")) => missed = true,
                    Some((_, id)) => {
                        ids.insert(id.to_owned());
                    }
                    None => {}
                }
                next = if ids.len() < READ_BATCH { listener.next_buffered() } else { None };
            }
            if missed {
                let _ = self.remote.send(Remote::Missed);
            }
            if ids.is_empty() || (self.changes.receiver_count() == 0 && self.remote.receiver_count() == 0) {
                continue;
            }
            let ids: Vec<String> = ids.into_iter().collect();
            let rows = sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE id = ANY($1)"))
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?;
            for row in &rows {
                match environment_from(row) {
                    Ok(env) => {
                        let env = Arc::new(env);
                        if self.changes.receiver_count() > 0 {
                            let _ = self.changes.send(env.clone());
                        }
                        let _ = self.remote.send(Remote::Changed(env));
                    }
                    Err(e) => tracing::warn!(error = %e, "a changed row cannot be read; skipped"),
                }
            }
        }
    }
}
