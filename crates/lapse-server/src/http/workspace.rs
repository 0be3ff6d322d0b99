//! `GET /v1/environments/{id}/workspace`: the sync state of an environment's S3 workspace.

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::{Json, Router};
use lapse_core::wire::ErrorBody;
use lapse_core::workspace::WorkspaceView;

use super::{ApiError, ApiPath};
use crate::app::App;
use crate::auth::Caller;

pub fn router() -> Router<App> {
    Router::new().route("/v1/environments/{id}/workspace", get(show))
}

/// The workspace's last pull and push, and the last error (a final push that failed keeps
/// the stop or delete waiting).
#[utoipa::path(get, path = "/v1/environments/{id}/workspace", tag = "environments", params(("id" = String, Path)),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WorkspaceView>, ApiError> {
    Ok(Json(app.workspace(&id, &caller).await?))
}
