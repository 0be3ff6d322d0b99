//! `/v1/environments`.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use lapse_core::model::ObservedState;
use lapse_core::validate;
use lapse_core::wire::{
    CreateEnvironment, EnvironmentList, EnvironmentView, ErrorBody, ExecRequest, ExecResult, ExtendRequest, LogsView,
};
use lapse_store::ListFilter;

use super::{ApiError, ApiJson, ApiPath, number, only_keys, page, query_pairs};
use crate::app::App;
use crate::auth::Caller;

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/environments", post(create).get(list))
        .route("/v1/environments/{id}", get(show).delete(delete))
        .route("/v1/environments/{id}/extend", post(extend))
        .route("/v1/environments/{id}/stop", post(stop))
        .route("/v1/environments/{id}/start", post(start))
        .route("/v1/environments/{id}/exec", post(exec))
        .route("/v1/environments/{id}/logs", get(logs))
        .route("/v1/environments/{id}/activity", post(super::activity::activity))
}

/// Create an environment: `201` with a running environment when a warm pool member of the same
/// spec was claimed; else `202` with state `pending`, and the reconciler provisions it.
#[utoipa::path(post, path = "/v1/environments", tag = "environments", request_body = CreateEnvironment,
    responses(
        (status = 201, description = "A warm pool member was claimed: it already runs", body = EnvironmentView),
        (status = 202, description = "Accepted; provisioning follows", body = EnvironmentView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Over the tenant's quota: the message names the limit, the usage and the request", body = ErrorBody),
        (status = 503, description = "host_capacity: the host guard (memory or the data dir's disk) takes no new local environments now", body = ErrorBody),
    ))]
pub async fn create(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateEnvironment>,
) -> Result<impl IntoResponse, ApiError> {
    let created = app.create(req, &caller).await?;
    let location = format!("/v1/environments/{}", created.env.id);
    let status = if created.claimed { StatusCode::CREATED } else { StatusCode::ACCEPTED };
    Ok((status, [(header::LOCATION, location)], Json(EnvironmentView::from(&created.env))))
}

/// List environments (deleted ones only when `state=deleted`), in pages: the next page's
/// cursor is in `Lapse-Next-Cursor` and `Link: <…>; rel="next"` (see [`super::page`]).
#[utoipa::path(get, path = "/v1/environments", tag = "environments",
    params(
        ("owner" = Option<String>, Query, description = "Only this owner's"),
        ("state" = Option<ObservedState>, Query, description = "Only in this observed state"),
        ("provider" = Option<String>, Query, description = "Only of this provider"),
        ("job_id" = Option<String>, Query, description = "Only the one with this job id (seed `job_id`, config file `id`)"),
        ("label" = Option<Vec<String>>, Query, description = "`key=value`; repeat for several (all must match)"),
        ("limit" = Option<u32>, Query, description = "At most this many per page (from 1; default 100; more than 1000 is taken as 1000)"),
        ("cursor" = Option<String>, Query, description = "The page after the one whose answer gave this cursor (Lapse-Next-Cursor)"),
    ),
    responses(
        (status = 200, body = EnvironmentList, headers(
            ("lapse-next-cursor" = String, description = "The next page's cursor; absent on the last page"),
            ("link" = String, description = "`<url of the next page>; rel=\"next\"`; absent on the last page"),
        )),
        (status = 400, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let pairs = query_pairs(raw.as_deref())?;
    only_keys(&pairs, &["owner", "state", "provider", "job_id", "label", "limit", "cursor"])?;
    let mut filter = ListFilter::default();
    let mut limit = page::DEFAULT_LIMIT;
    for (k, v) in &pairs {
        let v = v.clone();
        match k.as_str() {
            "owner" => filter.owner = Some(v),
            "provider" => filter.provider = Some(v),
            "job_id" => filter.job_id = Some(v),
            "state" => {
                filter.state = Some(v.parse::<ObservedState>().map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
            "label" => {
                filter.labels.push(validate::label_selector(&v).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
            // Up to the documented int32's top; above the largest page it is that page.
            "limit" => limit = number("limit", &v, 1u32, i32::MAX as u32)?.min(page::MAX_LIMIT),
            "cursor" => filter.after = Some(page::decode(&v)?),
            _ => {}
        }
    }
    // One more than the page: whether there is a next page, without an empty last one.
    filter.limit = Some(limit + 1);
    let mut envs = app.list(filter, &caller).await?;
    let mut headers = axum::http::HeaderMap::new();
    if envs.len() > limit as usize {
        envs.truncate(limit as usize);
        if let Some(last) = envs.last() {
            let cursor = page::encode(&last.id);
            let link = page::next_link("/v1/environments", &pairs, &cursor);
            // Base64url and an urlencoded query are ASCII: both are valid header values.
            if let (Ok(c), Ok(l)) = (cursor.parse(), link.parse()) {
                headers.insert(page::NEXT_CURSOR, c);
                headers.insert(header::LINK, l);
            }
        }
    }
    Ok((headers, Json(EnvironmentList { environments: envs.iter().map(EnvironmentView::from).collect() })))
}

/// One environment.
#[utoipa::path(get, path = "/v1/environments/{id}", tag = "environments", params(("id" = String, Path)),
    responses((status = 200, body = EnvironmentView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EnvironmentView>, ApiError> {
    Ok(Json(EnvironmentView::from(&app.get(&id, &caller).await?)))
}

/// Move the lease's end. An environment its expiry stopped is started again.
#[utoipa::path(post, path = "/v1/environments/{id}/extend", tag = "environments", params(("id" = String, Path)), request_body = ExtendRequest,
    responses((status = 202, description = "Accepted; an environment its expiry stopped is started again", body = EnvironmentView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn extend(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExtendRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((StatusCode::ACCEPTED, Json(EnvironmentView::from(&app.extend(&id, req, &caller).await?))))
}

/// Ask for the environment to be stopped.
#[utoipa::path(post, path = "/v1/environments/{id}/stop", tag = "environments", params(("id" = String, Path)),
    responses((status = 202, body = EnvironmentView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn stop(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((StatusCode::ACCEPTED, Json(EnvironmentView::from(&app.stop(&id, &caller).await?))))
}

/// Ask for the environment to run again (also after a failure).
#[utoipa::path(post, path = "/v1/environments/{id}/start", tag = "environments", params(("id" = String, Path)),
    responses((status = 202, body = EnvironmentView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn start(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((StatusCode::ACCEPTED, Json(EnvironmentView::from(&app.start(&id, &caller).await?))))
}

/// Ask for the environment and its resources to be removed. The record stays, `deleted`.
/// With a workspace, the removal waits for its final push; `force=true` skips that push
/// (also for an environment already waiting for it).
#[utoipa::path(delete, path = "/v1/environments/{id}", tag = "environments",
    params(("id" = String, Path), ("force" = Option<bool>, Query, description = "Skip the workspace's final push")),
    responses((status = 202, body = EnvironmentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let pairs = query_pairs(raw.as_deref())?;
    only_keys(&pairs, &["force"])?;
    let force = match pairs.iter().find(|(k, _)| k == "force").map(|(_, v)| v.as_str()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::bad_request(format!("force is true or false, not {other:?}"))),
    };
    let env = if force { app.delete_forced(&id, &caller).await? } else { app.delete(&id, &caller).await? };
    Ok((StatusCode::ACCEPTED, Json(EnvironmentView::from(&env))))
}

/// Run a command inside a running environment and return its output.
#[utoipa::path(post, path = "/v1/environments/{id}/exec", tag = "environments", params(("id" = String, Path)), request_body = ExecRequest,
    responses((status = 200, body = ExecResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, description = "The provider failed", body = ErrorBody), (status = 503, description = "The provider is unavailable", body = ErrorBody)))]
pub async fn exec(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Json<ExecResult>, ApiError> {
    Ok(Json(app.exec(&id, req, &caller).await?))
}

/// The tail of what the environment printed.
#[utoipa::path(get, path = "/v1/environments/{id}/logs", tag = "environments",
    params(("id" = String, Path), ("tail" = Option<usize>, Query, description = "Last lines per stream (1 to 10000; default 100)")),
    responses((status = 200, body = LogsView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn logs(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<LogsView>, ApiError> {
    let pairs = query_pairs(raw.as_deref())?;
    only_keys(&pairs, &["tail"])?;
    let tail = match pairs.iter().find(|(k, _)| k == "tail") {
        Some((_, v)) => number("tail", v, 1usize, 10_000)?,
        None => 100,
    };
    Ok(Json(app.logs(&id, tail, &caller).await?))
}
