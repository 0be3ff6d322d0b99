//! Activity and probes: the store's side of idle stop and health.
//!
//! **Activity reaches the store in batches.** The server keeps the latest activity of each
//! environment in memory and a flusher hands every touched id to
//! [`Store::record_activity`] every few seconds: one transaction for the whole batch, one
//! statement per id (prepared once), never a write per request. Such a write only moves `last_active_at`
//! forward (`MAX`), touches no other column (not `updated_at`: activity is not a change of
//! the environment) and records no event; it is not published on the change feed either,
//! since no mirror shows it.

use std::sync::atomic::Ordering;

use lapse_core::Millis;
use lapse_core::model::Environment;
use sqlx::Row;

use crate::{ENV_COLUMNS, Op, SqliteStore, StoreError, WriteOp, environment_from};

impl SqliteStore {
    /// [`crate::Store::record_activity`], on SQLite.
    pub async fn record_activity(&self, touched: &[(String, Millis)]) -> Result<u64, StoreError> {
        if touched.is_empty() {
            return Ok(0);
        }
        let touched = touched.to_vec();
        let moved = self
            .writer
            .run("record activity", move |conn| {
                // The revision grows, so a read-modify-write that read the row before does
                // not write the old time back.
                let mut st = conn
                    .prepare_cached(
                        "UPDATE environments SET last_active_at = ?2, rev = rev + 1 WHERE id = ?1 \
                         AND observed != 'deleted' AND (last_active_at IS NULL OR last_active_at < ?2)",
                    )
                    .op("record activity")?;
                let mut moved = 0;
                for (id, at) in &touched {
                    moved += st.execute(rusqlite::params![id, at]).op("record activity")? as u64;
                }
                Ok(moved)
            })
            .await?;
        self.activity_batches.fetch_add(1, Ordering::Relaxed);
        Ok(moved)
    }

    /// [`crate::Store::activity_batches`], on SQLite.
    pub fn activity_batches(&self) -> u64 {
        self.activity_batches.load(Ordering::Relaxed)
    }

    /// [`crate::Store::probed`], on SQLite.
    pub async fn probed(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE health IS NOT NULL AND observed = 'running' ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await
        .op("probed")?;
        rows.iter().map(environment_from).collect()
    }

    /// [`crate::Store::idle_deadlines`], on SQLite.
    pub async fn idle_deadlines(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, MAX(COALESCE(last_active_at, created_at), created_at) + idle_timeout FROM environments \
             WHERE idle_timeout IS NOT NULL AND desired = 'running' AND observed = 'running' AND pool IS NULL",
        )
        .fetch_all(&self.reader)
        .await
        .op("idle deadlines")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
