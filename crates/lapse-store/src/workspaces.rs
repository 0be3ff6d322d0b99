//! The sync state of S3 workspaces (`workspace_sync`): what the server's syncer and the
//! reconciler's final push read and write. One row per environment with a workspace, written
//! only here; no event and no change feed for a periodic push (it changes no environment),
//! an event for what a user must see (a failed final push is the reconciler's, a forced
//! delete the API's).

use lapse_core::Millis;
use lapse_core::workspace::WorkspaceStatus;
use sqlx::Row;

use lapse_core::model::Environment;

use crate::{ENV_COLUMNS, Op, SqliteStore, StoreError, WriteOp, environment_from};

/// What a sync attempt did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncOutcome<'a> {
    /// A pull succeeded and wrote this token into the directory: pushes may delete.
    Pulled { token: &'a str },
    /// A push succeeded; `last` when it was the final one (before a stop or delete): the
    /// directory is no longer trusted after it (a new start pulls again).
    Pushed { last: bool },
}

impl SqliteStore {
    /// [`crate::Store::workspaced`], on SQLite.
    pub async fn workspaced(&self) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE observed = 'running' AND desired = 'running' \
             AND json_extract(spec, '$.workspace') IS NOT NULL ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await
        .op("workspaced")?;
        rows.iter().map(environment_from).collect()
    }

    /// [`crate::Store::workspace_status`], on SQLite.
    pub async fn workspace_status(&self, id: &str) -> Result<WorkspaceStatus, StoreError> {
        let row = sqlx::query(
            "SELECT pull_token, last_pull_at, last_push_at, last_error, last_error_at, pushes, force \
             FROM workspace_sync WHERE environment_id = ?",
        )
        .bind(id)
        .fetch_optional(&self.reader)
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
                pushes: r.get::<i64, _>(5).max(0) as u64,
                force: r.get::<i64, _>(6) != 0,
            },
        })
    }

    /// [`crate::Store::record_sync`], on SQLite.
    pub async fn record_sync(&self, id: &str, outcome: SyncOutcome<'_>, at: Millis) -> Result<(), StoreError> {
        let (sql, token) = match outcome {
            SyncOutcome::Pulled { token } => (
                "INSERT INTO workspace_sync (environment_id, pull_token, last_pull_at) VALUES (?1, ?3, ?2) \
                 ON CONFLICT (environment_id) DO UPDATE SET pull_token = ?3, last_pull_at = ?2, last_error = NULL, \
                 last_error_at = NULL",
                Some(token),
            ),
            SyncOutcome::Pushed { last: true } => (
                "INSERT INTO workspace_sync (environment_id, last_push_at, pushes) VALUES (?1, ?2, 1) \
                 ON CONFLICT (environment_id) DO UPDATE SET pull_token = NULL, last_push_at = ?2, \
                 pushes = pushes + 1, last_error = NULL, last_error_at = NULL",
                None,
            ),
            SyncOutcome::Pushed { last: false } => (
                "INSERT INTO workspace_sync (environment_id, last_push_at, pushes) VALUES (?1, ?2, 1) \
                 ON CONFLICT (environment_id) DO UPDATE SET last_push_at = ?2, pushes = pushes + 1, \
                 last_error = NULL, last_error_at = NULL",
                None,
            ),
        };
        let (id, token) = (id.to_owned(), token.map(str::to_owned));
        self.writer
            .run("record sync", move |conn| {
                // A pull's statement takes its token (?3); a push's does not.
                conn.prepare_cached(sql)
                    .and_then(|mut st| match &token {
                        Some(token) => st.execute(rusqlite::params![id, at, token]),
                        None => st.execute(rusqlite::params![id, at]),
                    })
                    .op("record sync")
                    .map(drop)
            })
            .await
    }

    /// [`crate::Store::record_sync_error`], on SQLite.
    pub async fn record_sync_error(&self, id: &str, error: &str, at: Millis) -> Result<(), StoreError> {
        self.execute(
            "record sync error",
            "INSERT INTO workspace_sync (environment_id, last_error, last_error_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (environment_id) DO UPDATE SET last_error = ?2, last_error_at = ?3",
            vec![id.to_owned().into(), error.to_owned().into(), at.into()],
        )
        .await
    }

    /// [`crate::Store::forget_pull`], on SQLite.
    pub async fn forget_pull(&self, id: &str) -> Result<(), StoreError> {
        self.execute(
            "forget pull",
            "UPDATE workspace_sync SET pull_token = NULL WHERE environment_id = ?1",
            vec![id.to_owned().into()],
        )
        .await
    }

    /// [`crate::Store::force_workspace`], on SQLite.
    pub async fn force_workspace(&self, id: &str) -> Result<(), StoreError> {
        self.execute(
            "force workspace",
            "INSERT INTO workspace_sync (environment_id, force) VALUES (?1, 1) \
             ON CONFLICT (environment_id) DO UPDATE SET force = 1",
            vec![id.to_owned().into()],
        )
        .await
    }
}
