//! `/v1/webhooks`: register, list, show, delete and test lifecycle webhooks, and read their
//! deliveries (see [`crate::webhooks`]). Lists are paged like `/v1/environments`.

use axum::extract::{Extension, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{ApiError, ApiJson, ApiPath, number, only_keys, page, query_pairs};
use crate::app::App;
use crate::auth::Caller;
use crate::webhooks::api::{CreateWebhook, DeliveryList, DeliveryView, WebhookList, WebhookView};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/webhooks", get(list).post(create))
        .route("/v1/webhooks/{id}", get(show).delete(delete))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/webhooks/{id}/test", post(test))
}

/// A paged list's query pairs, `limit` and the id its `cursor` stands for.
type Paging = (Vec<(String, String)>, u32, Option<String>);

/// `limit` and `cursor` of a paged list.
fn paging(raw: Option<&str>) -> Result<Paging, ApiError> {
    let pairs = query_pairs(raw)?;
    only_keys(&pairs, &["limit", "cursor"])?;
    let mut limit = page::DEFAULT_LIMIT;
    let mut after = None;
    for (k, v) in &pairs {
        match k.as_str() {
            "limit" => limit = number("limit", v, 1u32, i32::MAX as u32)?.min(page::MAX_LIMIT),
            "cursor" => after = Some(page::decode(v)?),
            _ => {}
        }
    }
    Ok((pairs, limit, after))
}

/// The next page's headers when there is one (`items` holds one more than the page).
fn next_page<T>(
    items: &mut Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> &str,
    path: &str,
    pairs: &[(String, String)],
) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        if let Some(last) = items.last() {
            let cursor = page::encode(id(last));
            let link = page::next_link(path, pairs, &cursor);
            // Base64url and an urlencoded query are ASCII: both are valid header values.
            if let (Ok(c), Ok(l)) = (cursor.parse(), link.parse()) {
                headers.insert(page::NEXT_CURSOR, c);
                headers.insert(header::LINK, l);
            }
        }
    }
    headers
}

/// Register a webhook; its secret (given or generated) is in this answer only.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = WebhookView), (status = 400, body = lapse_core::wire::ErrorBody),
        (status = 409, description = "The tenant has as many webhooks as it may", body = lapse_core::wire::ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((StatusCode::CREATED, Json(app.create_webhook(req, &caller).await?)))
}

/// The caller's webhooks (the admin's: all), in id order.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", responses((status = 200, body = WebhookList)))]
pub async fn list(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let (pairs, limit, after) = paging(raw.as_deref())?;
    let mut hooks = app.list_webhooks(after.as_deref(), limit + 1, &caller).await?;
    let headers = next_page(&mut hooks, limit, |h| h.id.as_str(), "/v1/webhooks", &pairs);
    Ok((headers, Json(WebhookList { webhooks: hooks.iter().map(WebhookView::from).collect() })))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = WebhookView), (status = 404, body = lapse_core::wire::ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(WebhookView::from(&app.get_webhook(&id, &caller).await?)))
}

/// Remove a webhook and its deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = lapse_core::wire::ErrorBody),
        (status = 409, description = "The config file's webhook (remove it there)", body = lapse_core::wire::ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_webhook(&id, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A webhook's deliveries, in id order (oldest first).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = DeliveryList), (status = 404, body = lapse_core::wire::ErrorBody)))]
pub async fn deliveries(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let (pairs, limit, after) = paging(raw.as_deref())?;
    let mut list = app.webhook_deliveries(&id, after.as_deref(), limit + 1, &caller).await?;
    let path = format!("/v1/webhooks/{id}/deliveries");
    let headers = next_page(&mut list, limit, |d| d.id.as_str(), &path, &pairs);
    Ok((headers, Json(DeliveryList { deliveries: list.iter().map(DeliveryView::from).collect() })))
}

/// Send a `ping` delivery to the webhook.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 202, body = DeliveryView), (status = 404, body = lapse_core::wire::ErrorBody)))]
pub async fn test(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((StatusCode::ACCEPTED, Json(app.test_webhook(&id, &caller).await?)))
}
