//! `/healthz`, `/readyz`, `/metrics`, `/v1/providers`, `/v1/status`, `/v1/queues`, `/v1/events`, `/v1/openapi.json`.

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use lapse_core::model::is_environment_id;
use lapse_core::wire::{ErrorBody, EventList, EventView, ProviderList, QueuesView, ReadyView, StatusView, UsageView};
use utoipa::OpenApi;

use super::{ApiError, number, only_keys, query_pairs};
use crate::app::App;

pub fn router() -> Router<App> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/providers", get(providers))
        .route("/v1/status", get(status))
        .route("/v1/queues", get(queues))
        .route("/v1/usage", get(usage))
        .route("/v1/events", get(events))
        .route("/v1/openapi.json", get(openapi))
}

/// Liveness: the process serves HTTP. Constant time: it touches no store and no provider.
#[utoipa::path(get, path = "/healthz", tag = "system", security(()), responses((status = 200, description = "ok", content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: `200` when the store takes writes and every background loop ticked recently,
/// else `503` saying which is not (see `crate::health`).
#[utoipa::path(get, path = "/readyz", tag = "system", security(()),
    responses((status = 200, description = "Ready", body = ReadyView), (status = 503, description = "Not ready: `problems` says why", body = ReadyView)))]
pub async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let view = crate::health::readiness(&app).await;
    let status = if view.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(view))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(app): State<App>) -> Result<impl IntoResponse, ApiError> {
    let counts =
        app.cx.store.count_by_provider_and_state().await.map_err(|e| ApiError::from(crate::app::AppError::Store(e)))?;
    app.cx.metrics.set_environment_counts(&counts);
    let providers: Vec<_> = app.cx.providers.iter().cloned().collect();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.cx.metrics.encode_with(&providers)))
}

/// The providers of this server and whether each answers now.
#[utoipa::path(get, path = "/v1/providers", tag = "system", responses((status = 200, body = ProviderList)))]
pub async fn providers(State(app): State<App>) -> Json<ProviderList> {
    Json(ProviderList { providers: app.providers().await })
}

/// The SWIM Redis queues: depth, in flight, dead-lettered and processed counts.
#[utoipa::path(get, path = "/v1/queues", tag = "system", responses((status = 200, body = QueuesView), (status = 500, body = ErrorBody)))]
pub async fn queues(State(app): State<App>) -> Result<Json<QueuesView>, ApiError> {
    let links = app.cx.swim.iter().chain(app.cx.swim_v2.iter().map(|v2| &v2.link));
    let processed = app.cx.store.queue_counters().await.map_err(|e| ApiError::from(crate::app::AppError::Store(e)))?;
    let mut all: Option<QueuesView> = None;
    // Both contracts share one Redis: their queues are listed together.
    for link in links {
        let view = link.view(&processed).await;
        all = Some(match all {
            None => view,
            Some(mut both) => {
                both.connected &= view.connected;
                both.error = both.error.or(view.error);
                both.queues.extend(view.queues);
                both
            }
        });
    }
    Ok(Json(all.unwrap_or(QueuesView {
        enabled: false,
        redis: None,
        connected: false,
        error: None,
        provider: None,
        queues: vec![],
    })))
}

/// Time and cost per environment and per tenant in a period (default: this month so far). A
/// tenant's key sees its own; the admin key all, or one `tenant`'s.
#[utoipa::path(get, path = "/v1/usage", tag = "system",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339; default: the start of this month (UTC)"),
        ("to" = Option<String>, Query, description = "RFC 3339; default: now"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's (admins)"),
    ),
    responses((status = 200, body = UsageView), (status = 400, body = ErrorBody)))]
pub async fn usage(
    State(app): State<App>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::auth::Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<UsageView>, ApiError> {
    let pairs = query_pairs(raw.as_deref())?;
    only_keys(&pairs, &["from", "to", "tenant"])?;
    let now = app.cx.clock.now();
    let (mut from, mut to) = (crate::app::month_start(now), now);
    // A tenant's key sees its own, whatever it asks for; the admin key all, or one tenant's.
    let mut tenant = caller.scope().map(str::to_owned);
    for (k, v) in &pairs {
        let time = || {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.timestamp_millis())
                .map_err(|e| ApiError::bad_request(format!("{k}: {v:?} is not an RFC 3339 time: {e}")))
        };
        match k.as_str() {
            "from" => from = time()?,
            "to" => to = time()?,
            "tenant" if caller.is_admin() => {
                lapse_core::validate::name("tenant", v).map_err(|e| ApiError::bad_request(e.to_string()))?;
                tenant = Some(v.clone());
            }
            _ => {}
        }
    }
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    Ok(Json(app.usage(tenant.as_deref(), from, to).await?))
}

/// What this control plane is and how busy it is.
#[utoipa::path(get, path = "/v1/status", tag = "system", responses((status = 200, body = StatusView)))]
pub async fn status(State(app): State<App>) -> Json<StatusView> {
    let store = &app.cx.store;
    // A listing that fails (the database is gone) leaves the field out; the rest still answers.
    let replicas = match store.replicas().await {
        Ok(list) => list.map(|list| {
            list.into_iter()
                .map(|r| lapse_core::wire::ReplicaView {
                    id: r.id,
                    connections: r.connections,
                    holds: r.holds,
                    since: lapse_core::format_millis(r.since),
                })
                .collect()
        }),
        Err(e) => {
            tracing::warn!(error = %e, "listing the replicas failed");
            None
        }
    };
    Json(StatusView {
        store: store.backend().to_owned(),
        replica: store.replica_id().map(str::to_owned),
        replicas,
        role: if app.cx.role.leading() { "leader" } else { "follower" }.to_owned(),
        epoch: app.cx.role.epoch(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        controller_id: app.cx.controller_id.clone(),
        providers: app.cx.providers.names().into_iter().map(str::to_owned).collect(),
        timers: app.cx.timers.len(),
        backlog: app.reconciler.backlog(),
        config: app.cx.config_status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    })
}

/// The audit trail, oldest first, paged by `after`.
#[utoipa::path(get, path = "/v1/events", tag = "system",
    params(
        ("environment" = Option<String>, Query, description = "Only this environment's"),
        ("target" = Option<String>, Query, description = "Only those about this environment id or pool name"),
        ("actor" = Option<String>, Query, description = "Only by this actor (`key:<id>`, `admin`, `reconciler`, …)"),
        ("action" = Option<String>, Query, description = "Only of this action (`create`, `transition`, …)"),
        ("outcome" = Option<String>, Query, description = "Only with this outcome"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's (admins; a tenant key sees its own only)"),
        ("after" = Option<i64>, Query, description = "Only events after this seq"),
        ("limit" = Option<u32>, Query, description = "At most this many (1 to 1000; default 100)"),
    ),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody)))]
pub async fn events(
    State(app): State<App>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::auth::Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<EventList>, ApiError> {
    let pairs = query_pairs(raw.as_deref())?;
    only_keys(&pairs, &["environment", "target", "actor", "action", "outcome", "tenant", "after", "limit"])?;
    let mut filter = lapse_store::EventFilter { limit: 100, ..Default::default() };
    for (k, v) in &pairs {
        let text = |v: &str| -> Result<Option<String>, ApiError> {
            if v.is_empty() || v.len() > 255 || v.chars().any(char::is_control) {
                return Err(ApiError::bad_request(format!("{k} must be 1 to 255 characters")));
            }
            Ok(Some(v.to_owned()))
        };
        match k.as_str() {
            "environment" if is_environment_id(v) => filter.target = Some(v.clone()),
            "environment" => {
                return Err(ApiError::bad_request(format!("{v:?} is not an environment id")));
            }
            "target" => filter.target = text(v)?,
            "actor" => filter.actor = text(v)?,
            "action" => filter.action = text(v)?,
            "outcome" => filter.outcome = text(v)?,
            "tenant" => filter.tenant = text(v)?,
            "after" => filter.after = Some(number("after", v, 0i64, i64::MAX)?),
            "limit" => filter.limit = number("limit", v, 1u32, 1000)?,
            _ => {}
        }
    }
    // A tenant's key sees its own tenant's events, whatever it asks for.
    if let Some(tenant) = caller.scope() {
        filter.tenant = Some(tenant.to_owned());
    }
    let limit = filter.limit;
    let events = app.cx.store.events(&filter).await.map_err(|e| ApiError::from(crate::app::AppError::Store(e)))?;
    let next = (events.len() == limit as usize).then(|| events.last().map(|e| e.seq)).flatten();
    Ok(Json(EventList { events: events.iter().map(EventView::from).collect(), next }))
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi() -> impl IntoResponse {
    Json(super::openapi::ApiDoc::openapi())
}
