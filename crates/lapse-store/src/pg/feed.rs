//! The change feed across replicas.
//!
//! Each [`PgStore`] is one replica: its connections are named `lapse <replica id>`
//! (`application_name`), and a trigger (migration `0003_change_feed.sql`) notifies channel
//! [`CHANNEL`] with `"<application_name> <id>"` for every committed insert or update of an
//! environment row, by any replica (activity batches excepted). Each store listens on a
//! connection of its own: the ids another replica changed are read back (a batch per wake-up,
//! at most [`READ_BATCH`] ids a query) and published
//! - on [`PgStore::subscribe`], beside the store's own writes, so a change feed (the
//!   dashboard's live updates) shows every replica's changes;
//! - on [`PgStore::remote_changes`] as [`Remote::Changed`]: what a replica running the
//!   background work must look at (wake the reconciler, move a timer).
//!
//! The store's own changes are skipped (it published them after its commit). Notifications
//! are lost while the listening connection is down: after it comes back, [`Remote::Missed`]
//! says to read the state again. The task ends when the store's pool is closed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lapse_core::model::Environment;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use super::PgStore;
use crate::ENV_COLUMNS;
use crate::rows::environment_from;

/// The channel the trigger notifies.
pub const CHANNEL: &str = "lapse_env";

/// Ids read back in one query at most.
pub const READ_BATCH: usize = 500;

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
            let mut next = Some(first);
            while let Some(n) = next {
                if let Some((from, id)) = n.payload().rsplit_once(' ')
                    && from != own
                {
                    ids.insert(id.to_owned());
                }
                next = if ids.len() < READ_BATCH { listener.next_buffered() } else { None };
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
