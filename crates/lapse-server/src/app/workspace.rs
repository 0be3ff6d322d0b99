//! The API's side of S3 workspaces: their sync state, and a delete that skips the final push.

use lapse_core::model::DesiredState;
use lapse_core::workspace::WorkspaceView;
use lapse_store::NewEvent;

use super::{App, AppError};
use crate::auth::Caller;

impl App {
    /// The sync state of the environment's workspace; `409` when its spec has none.
    pub async fn workspace(&self, id: &str, caller: &Caller) -> Result<WorkspaceView, AppError> {
        let env = self.get(id, caller).await?;
        if env.spec.workspace.is_none() {
            return Err(AppError::Conflict(format!("environment {id} has no workspace")));
        }
        Ok(WorkspaceView::from(&self.cx.store.workspace_status(id).await?))
    }

    /// A delete whose final workspace push is skipped (`force=true`): also for an
    /// environment already being deleted, whose final push keeps failing. The mark is
    /// written first, so the reconciler's next try sees it.
    pub async fn delete_forced(&self, id: &str, caller: &Caller) -> Result<lapse_core::model::Environment, AppError> {
        let env = self.get(id, caller).await?;
        if env.spec.workspace.is_some() {
            self.cx.store.force_workspace(id).await?;
        }
        if env.desired != DesiredState::Deleted {
            return self.delete(id, caller).await;
        }
        if env.observed == lapse_core::model::ObservedState::Deleted {
            return Err(AppError::Conflict(format!("environment {id} is deleted")));
        }
        // Already deleting: retry now rather than at the end of the back-off.
        let actor = caller.actor();
        let updated = self
            .cx
            .store
            .update(id, |e| {
                e.next_attempt_at = None;
                Ok::<_, AppError>(vec![NewEvent::new(
                    &e.id,
                    &actor,
                    "delete",
                    "ok",
                    "forced: the workspace's final push is skipped",
                )])
            })
            .await?
            .ok_or_else(|| AppError::NotFound(id.to_owned()))?;
        self.reconciler.enqueue(id);
        Ok(updated)
    }
}
