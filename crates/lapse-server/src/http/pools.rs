//! `/v1/pools`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use lapse_core::wire::{ErrorBody, PoolList, PoolView, PutPool};

use super::{ApiError, ApiJson, ApiPath};
use crate::app::App;

pub fn router() -> Router<App> {
    Router::new().route("/v1/pools", get(list)).route("/v1/pools/{name}", get(show).put(put).delete(delete))
}

/// Every pool with its warm and starting members.
#[utoipa::path(get, path = "/v1/pools", tag = "pools", responses((status = 200, body = PoolList)))]
pub async fn list(State(app): State<App>) -> Result<Json<PoolList>, ApiError> {
    Ok(Json(PoolList { pools: app.list_pools().await? }))
}

/// One pool.
#[utoipa::path(get, path = "/v1/pools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 200, body = PoolView), (status = 404, body = ErrorBody)))]
pub async fn show(State(app): State<App>, ApiPath(name): ApiPath<String>) -> Result<Json<PoolView>, ApiError> {
    Ok(Json(app.get_pool(&name).await?))
}

/// Create or replace a pool. A new spec or version recycles the members made before.
#[utoipa::path(put, path = "/v1/pools/{name}", tag = "pools", params(("name" = String, Path)), request_body = PutPool,
    responses((status = 200, description = "Replaced", body = PoolView), (status = 201, description = "Created", body = PoolView),
        (status = 400, body = ErrorBody)))]
pub async fn put(
    State(app): State<App>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::auth::Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<PutPool>,
) -> Result<impl IntoResponse, ApiError> {
    let (pool, created) = app.put_pool(&name, req, &caller.actor()).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(pool)))
}

/// Delete a pool; its unclaimed members are removed, claimed ones are untouched.
#[utoipa::path(delete, path = "/v1/pools/{name}", tag = "pools", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::auth::Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_pool(&name, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}
