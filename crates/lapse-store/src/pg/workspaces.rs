//! The sync state of S3 workspaces (`workspace_sync`) on PostgreSQL: the port of
//! [`crate::workspaces`], with the same contracts. One row per environment with a
//! workspace, written only here, each write one statement (its own transaction); no event
//! and nothing on the change feed (no environment row changes).
//!
//! - A successful pull sets the token and the pull time; a push counts and sets the push
//!   time, and a final push (`last`) also forgets the token. Both clear the last error.
//! - A failed sync sets the error and its time, and nothing else.
//! - [`PgStore::forget_pull`] forgets the token of an existing row (none is made);
//!   [`PgStore::force_workspace`] marks the coming removal as forced.

use lapse_core::Millis;
use lapse_core::model::Environment;
use lapse_core::workspace::WorkspaceStatus;
use sqlx::Row as _;

use super::PgStore;
use crate::rows::environment_from;
use crate::{ENV_COLUMNS, Op as _, StoreError, SyncOutcome};

impl PgStore {
    /// [`crate::Store::workspaced`], on PostgreSQL.
    pub async fn workspaced(&self) -> Result<Vec<Environment>, StoreError> {
        // `->>` is NULL for a missing key and for JSON null alike, as json_extract is.
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE observed = 'running' AND desired = 'running' \
             AND spec::jsonb ->> 'workspace' IS NOT NULL ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .op("workspaced")?;
        rows.iter().map(environment_from).collect()
    }

    /// [`crate::Store::workspace_status`], on PostgreSQL.
    pub async fn workspace_status(&self, id: &str) -> Result<WorkspaceStatus, StoreError> {
        let row = sqlx::query(
            "SELECT pull_token, last_pull_at, last_push_at, last_error, last_error_at, pushes, force \
             FROM workspace_sync WHERE environment_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .op("workspace status")?;
        Ok(match row {
            None => WorkspaceStatus::default(),
            Some(r) => WorkspaceStatus {
                pull_token: r.get(0),
                last_pull_at: r.get(1),
                last_push_at: r.get(2),
                last_error: r.get(3),
                last_error_at: r.get(4),
                pushes: u64::try_from(r.get::<i64, _>(5)).unwrap_or(0),
                force: r.get(6),
            },
        })
    }

    /// [`crate::Store::record_sync`], on PostgreSQL.
    pub async fn record_sync(&self, id: &str, outcome: SyncOutcome<'_>, at: Millis) -> Result<(), StoreError> {
        let q = match outcome {
            SyncOutcome::Pulled { token } => sqlx::query(
                "INSERT INTO workspace_sync (environment_id, pull_token, last_pull_at) VALUES ($1, $3, $2) \
                 ON CONFLICT (environment_id) DO UPDATE SET pull_token = $3, last_pull_at = $2, last_error = NULL, \
                 last_error_at = NULL",
            )
            .bind(id)
            .bind(at)
            .bind(token),
            SyncOutcome::Pushed { last: true } => sqlx::query(
                "INSERT INTO workspace_sync (environment_id, last_push_at, pushes) VALUES ($1, $2, 1) \
                 ON CONFLICT (environment_id) DO UPDATE SET pull_token = NULL, last_push_at = $2, \
                 pushes = workspace_sync.pushes + 1, last_error = NULL, last_error_at = NULL",
            )
            .bind(id)
            .bind(at),
            SyncOutcome::Pushed { last: false } => sqlx::query(
                "INSERT INTO workspace_sync (environment_id, last_push_at, pushes) VALUES ($1, $2, 1) \
                 ON CONFLICT (environment_id) DO UPDATE SET last_push_at = $2, pushes = workspace_sync.pushes + 1, \
                 last_error = NULL, last_error_at = NULL",
            )
            .bind(id)
            .bind(at),
        };
        self.write_one("record sync", q).await.map(drop)
    }

    /// [`crate::Store::record_sync_error`], on PostgreSQL.
    pub async fn record_sync_error(&self, id: &str, error: &str, at: Millis) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO workspace_sync (environment_id, last_error, last_error_at) VALUES ($1, $2, $3) \
             ON CONFLICT (environment_id) DO UPDATE SET last_error = $2, last_error_at = $3",
        )
        .bind(id)
        .bind(error)
        .bind(at);
        self.write_one("record sync error", q).await.map(drop)
    }

    /// [`crate::Store::forget_pull`], on PostgreSQL.
    pub async fn forget_pull(&self, id: &str) -> Result<(), StoreError> {
        let q = sqlx::query("UPDATE workspace_sync SET pull_token = NULL WHERE environment_id = $1").bind(id);
        self.write_one("forget pull", q).await.map(drop)
    }

    /// [`crate::Store::force_workspace`], on PostgreSQL.
    pub async fn force_workspace(&self, id: &str) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO workspace_sync (environment_id, force) VALUES ($1, true) \
             ON CONFLICT (environment_id) DO UPDATE SET force = true",
        )
        .bind(id);
        self.write_one("force workspace", q).await.map(drop)
    }
}
