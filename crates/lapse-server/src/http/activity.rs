//! `POST /v1/environments/{id}/activity`: "someone is using it" (see [`crate::activity`]).

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use lapse_core::wire::ErrorBody;

use super::{ApiError, ApiPath};
use crate::app::App;
use crate::auth::Caller;

/// Count activity of a running environment now: its idle deadline moves to now plus its
/// `idle_timeout`. Nothing is written at once; the activity reaches the store in a batch.
#[utoipa::path(post, path = "/v1/environments/{id}/activity", tag = "environments", params(("id" = String, Path)),
    responses((status = 204, description = "Counted"), (status = 404, body = ErrorBody),
        (status = 409, description = "Not running", body = ErrorBody)))]
pub async fn activity(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.touch(&id, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}
