//! `POST /v1/environments/{id}/links`: a short-lived signed link to one port or route of an
//! environment through the proxy.
//!
//! The caller must see the environment (another tenant's is a `404`); the port must be in its
//! spec, or the route in its `routes`. `ttl` defaults to 15 minutes, at most 24 hours. The link
//! works whatever the environment's state when it is made (the proxy answers `409` while it is
//! not running), for whoever holds it, until `expires_at`; it is an HMAC over environment, port
//! or route, and expiry (see [`super::token`]), so nothing is stored and only deleting the
//! proxy secret revokes it early. Each link made is an event (`link_created`).

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use lapse_core::wire::{DurationInput, ErrorBody};
use lapse_core::{Millis, format_millis};
use lapse_store::NewEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::token::{Kind, Principal, Scope, Token};
use crate::app::{App, AppError};
use crate::auth::Caller;
use crate::http::{ApiError, ApiJson, ApiPath};

/// A link's lifetime when the request gives none.
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// The longest a link may live.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// `POST /v1/environments/{id}/links`: exactly one of `port` and `route`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    /// A port of the environment's spec (`/e/<id>/<port>/`).
    #[serde(default)]
    pub port: Option<u16>,
    /// A route of the environment's spec (`/<route>/<id>/`).
    #[serde(default)]
    pub route: Option<String>,
    /// How long the link works: seconds, or text with a unit (`"30m"`); default 15 minutes,
    /// at most 24 hours.
    #[serde(default)]
    pub ttl: Option<DurationInput>,
}

/// A signed link.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LinkView {
    /// Open it in a browser: the proxy sets a session cookie and redirects to the route.
    pub url: String,
    /// RFC 3339.
    pub expires_at: String,
}

pub fn router() -> Router<App> {
    Router::new().route("/v1/environments/{id}/links", post(create_link))
}

/// Make a signed link to one port or route of an environment, through the proxy.
#[utoipa::path(post, path = "/v1/environments/{id}/links", tag = "environments", params(("id" = String, Path)),
    request_body = CreateLink,
    responses(
        (status = 201, description = "The link", body = LinkView),
        (status = 400, description = "No port or route, both, one the spec does not have, or a bad ttl", body = ErrorBody),
        (status = 404, description = "No such environment (or another tenant's)", body = ErrorBody),
        (status = 409, description = "This server runs no proxy (--proxy-listen)", body = ErrorBody),
    ))]
pub async fn create_link(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CreateLink>,
) -> Result<impl IntoResponse, ApiError> {
    let env = app.get(&id, &caller).await?;
    let Some(issuer) = app.cx.proxy_links.get() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "proxy_off",
            "this server runs no proxy: start it with --proxy-listen to make links",
        ));
    };
    let ttl = match &req.ttl {
        Some(t) => t.to_duration(MAX_TTL).map_err(|e| ApiError::bad_request(format!("ttl: {e}")))?,
        None => DEFAULT_TTL,
    };
    let (scope, path) = match (req.port, req.route) {
        (Some(port), None) if env.spec.ports.contains(&port) => (Scope::Port(port), format!("/e/{id}/{port}/")),
        (Some(port), None) => {
            return Err(ApiError::bad_request(format!("port: environment {id} does not expose port {port}")));
        }
        (None, Some(route)) if env.spec.routes.contains_key(&route) => {
            (Scope::Route(route.clone()), format!("/{route}/{id}/"))
        }
        (None, Some(route)) => {
            return Err(ApiError::bad_request(format!("route: environment {id} has no route {route:?}")));
        }
        _ => return Err(ApiError::bad_request("give exactly one of port and route")),
    };
    let now = app.cx.clock.now();
    let expires_at: Millis = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let token = Token { kind: Kind::Link, environment_id: id.clone(), scope, expires_at, principal: Principal::Link };
    let signed = issuer.signer.sign(&token);
    let event = NewEvent::new(
        &id,
        &caller.actor(),
        "link_created",
        "ok",
        format!("{path} until {}", format_millis(expires_at)),
    );
    app.cx.store.append_event(event).await.map_err(AppError::Store)?;
    let url = format!("{}{path}?lapse_link={signed}", issuer.base_url);
    Ok((StatusCode::CREATED, Json(LinkView { url, expires_at: format_millis(expires_at) })))
}
