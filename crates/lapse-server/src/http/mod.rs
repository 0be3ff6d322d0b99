//! The HTTP API: one module per resource, each with its own `router()`; errors and
//! extractors here. Handlers are thin: they parse, call [`crate::app::App`], and shape the
//! answer.
//!
//! **No client input produces a 5xx**: malformed JSON, wrong types, unknown fields, oversized
//! or trickled bodies, bad path parameters, bad query strings, unknown routes and methods all
//! answer a JSON 4xx `{"error": {"code", "message"}}` ([`ApiJson`], [`ApiPath`],
//! [`query_pairs`], and [`extract::json_errors`] as the backstop for any other 4xx). A 5xx
//! means the server or a provider failed; `503 host_capacity` is the host guard.
//!
//! [`listener`] accepts connections with a cap and header and idle timeouts; [`page`] is the
//! cursor of paged lists.

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lapse_core::wire::{ErrorBody, ErrorDetail};
use lapse_providers::ProviderError;
use serde::de::DeserializeOwned;

use crate::app::{App, AppError};
pub use extract::ApiPath;

pub mod activity;
pub mod admin;
pub mod adopt;
pub mod environments;
pub mod extract;
pub mod floor;
pub mod listener;
pub mod openapi;
pub mod page;
pub mod pools;
pub mod sweep;
pub mod system;
pub mod terminal;
pub mod watch;
pub mod webhooks;
pub mod workspace;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Longest a request body may take to arrive.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub fn router(app: App) -> Router {
    let lapse = Router::new()
        .merge(admin::router())
        .merge(adopt::router())
        .merge(environments::router())
        .merge(floor::router())
        .merge(crate::proxy::links::router())
        .merge(pools::router())
        .merge(sweep::router())
        .merge(crate::compat::github_gg::router())
        .merge(system::router())
        .merge(terminal::router())
        .merge(webhooks::router())
        .merge(workspace::router())
        .merge(watch::router())
        .merge(crate::ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(extract::json_errors));
    // The seed's routes answer in the seed's shapes (a 404 with an empty body), so Lapse's
    // JSON backstop is not over them.
    Router::new()
        .merge(crate::compat::fc::router())
        .merge(lapse)
        .layer(axum::middleware::from_fn_with_state(app.clone(), admin::authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server failed on this request")
                .into_response()
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// The status and the message (for a surface with its own error shape).
    pub fn parts(self) -> (StatusCode, String) {
        (self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Invalid(f) => ApiError::bad_request(f.to_string()),
            AppError::NotFound(id) => ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no environment {id}")),
            AppError::NoPool(name) => ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no pool {name}")),
            AppError::NoWebhook(id) => ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no webhook {id}")),
            AppError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            AppError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            AppError::Quota(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", m),
            AppError::HostCapacity(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "host_capacity", m),
            AppError::Provider(p) => match p {
                ProviderError::Permanent { .. } => ApiError::bad_request(p.to_string()),
                ProviderError::Unsupported { .. } => {
                    ApiError::new(StatusCode::BAD_REQUEST, "unsupported", p.to_string())
                }
                ProviderError::NotFound { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", p.to_string()),
                ProviderError::Unavailable { .. } => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable", p.to_string())
                }
                ProviderError::Failed { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "provider_error", p.to_string()),
            },
            AppError::Store(s) if s.is_unwritable() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store cannot write now (is the data dir's disk full?); nothing was changed; retry later",
            ),
            AppError::Store(s) => {
                tracing::error!(error = %s, source = ?std::error::Error::source(&s), "store failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the store failed; see the server log")
            }
        }
    }
}

/// `Json<T>` whose rejections are JSON errors with the right 4xx.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A body trickled in byte by byte would hold its connection for ever.
        match tokio::time::timeout(BODY_TIMEOUT, axum::Json::<T>::from_request(req, state)).await {
            Ok(Ok(axum::Json(value))) => Ok(ApiJson(value)),
            Ok(Err(rejection)) => Err(json_rejection(rejection)),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            )),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {}", source_text(&e)),
        ),
        JsonRejection::JsonDataError(e) => ApiError::bad_request(format!("the body does not fit: {}", source_text(&e))),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        other => ApiError::bad_request(other.body_text()),
    }
}

/// The innermost message of an extractor error (serde's, with its path), not axum's wrapper.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Parses a query string into pairs, keeping repeated keys.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))
}

/// Refuses query keys not in `allowed`.
pub fn only_keys(pairs: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    match pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => {
            Err(ApiError::bad_request(format!("unknown query parameter {k:?}; known: {}", allowed.join(", "))))
        }
        None => Ok(()),
    }
}

/// Parses a numeric query value within `range`.
pub fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: &str,
    min: T,
    max: T,
) -> Result<T, ApiError> {
    match value.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(ApiError::bad_request(format!("{key} must be a whole number from {min} to {max}"))),
    }
}
