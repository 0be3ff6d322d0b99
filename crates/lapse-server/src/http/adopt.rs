//! `POST /v1/admin/adopt` (admin only, as every `/v1/admin/` route): adopts resources this
//! control plane did not make, such as instance-manager's EC2 instances. The contract is in
//! [`crate::adopt`]; the answer is `200` with what was adopted and skipped, a bad field a `400`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;

use super::{ApiError, ApiJson};
use crate::adopt::{AdoptReport, AdoptRequest};
use crate::app::App;

pub fn router() -> Router<App> {
    Router::new().route("/v1/admin/adopt", post(adopt))
}

/// Adopt resources (an EC2 instance by id, or every one instance-manager tagged) as
/// environments with their expiry.
#[utoipa::path(post, path = "/v1/admin/adopt", tag = "admin", request_body = AdoptRequest,
    responses((status = 200, body = AdoptReport), (status = 400, body = lapse_core::wire::ErrorBody)))]
pub async fn adopt(State(app): State<App>, ApiJson(req): ApiJson<AdoptRequest>) -> Result<Json<AdoptReport>, ApiError> {
    Ok(Json(app.adopt(req).await?))
}
