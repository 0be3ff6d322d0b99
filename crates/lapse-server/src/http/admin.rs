//! `/v1/admin/*`: tenants and their API keys (admin key only), and the middleware that
//! authenticates every request.

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use lapse_core::format_millis;
use lapse_core::validate;
use lapse_core::wire::{
    CreateKey, CreateTenant, ErrorBody, KeyCreated, KeyRevoked, KeyScopeName, QuotaCheckName, QuotaInput, TenantList,
    TenantView, UpdateTenant,
};
use lapse_store::{KeyScope, NewEvent, TenantRecord};

use super::{ApiError, ApiJson, ApiPath};
use crate::app::{App, AppError};
use crate::auth::{AuthError, Caller};

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/admin/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/admin/tenants/{name}", patch(update_tenant))
        .route("/v1/admin/tenants/{name}/keys", post(create_key))
        .route("/v1/admin/keys", post(create_scoped_key))
        .route("/v1/admin/keys/{id}", delete(revoke_key))
        .route("/v1/whoami", get(whoami))
}

/// Routes only admins reach: tenant administration, warm pools (shared infrastructure whose
/// claimed members become the claimer's), the seed's `/vms` and `/stats` (whose `tenant` is
/// free text), and server-wide status and metrics.
fn admin_only(path: &str) -> bool {
    path.starts_with("/v1/admin/")
        || path == "/v1/pools"
        || path.starts_with("/v1/pools/")
        || matches!(path, "/vms" | "/stats" | "/metrics" | "/v1/status" | "/v1/queues")
        || path.starts_with("/vms/")
}

/// Finds the caller of every request (all but `/healthz`, `/readyz` and the dashboard's own
/// `/ui` routes, which check keys themselves, need a key or a dashboard session when keys are
/// on) and refuses tenants on admin routes.
pub async fn authenticate(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/healthz" || path == "/readyz" || crate::ui::is_ui_path(&path) {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let auth = &app.cx.auth;
    // An address flooding bad keys is refused before any key is hashed or looked up.
    if let Some(ip) = peer
        && let Err(wait) = auth.blocked(ip)
    {
        return rate_limited(wait, "too many requests without a valid key from this address");
    }
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // The dashboard's session cookie stands for a key when no `Authorization` is sent.
    let found = match crate::ui::session::caller_of_cookie(&app, req.method(), req.headers(), header.is_some()).await {
        Some(found) => found,
        None => auth.caller(&app.cx.store, header).await,
    };
    let caller = match found {
        Ok(caller) => caller,
        Err(AuthError::Store(e)) => return ApiError::from(AppError::Store(e)).into_response(),
        Err(AuthError::Forbidden(why)) => {
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response();
        }
        Err(e) => {
            if let Some(ip) = peer
                && let Err(wait) = auth.refused_from(ip)
            {
                return rate_limited(wait, "too many requests without a valid key from this address");
            }
            let mut answer = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()).into_response();
            answer.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return answer;
        }
    };
    if let Err(wait) = auth.admit(&caller) {
        return rate_limited(wait, "too many requests with this key");
    }
    if caller.is_metrics_only() {
        if path != "/metrics" {
            return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "a metrics key reads /metrics and nothing else")
                .into_response();
        }
    } else if admin_only(&path) && !caller.is_admin() {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("{path} is for the admin key only"))
            .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// `429 rate_limited` with `Retry-After` (whole seconds, at least 1).
fn rate_limited(wait: std::time::Duration, why: &str) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut answer =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("{why}; retry in {seconds} s"))
            .into_response();
    answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    answer
}

fn view(t: &TenantRecord) -> TenantView {
    TenantView {
        name: t.name.clone(),
        tier: t.tier.clone(),
        quota: serde_json::from_value(t.quota.clone()).unwrap_or_default(),
        // A value this version does not know shows as the default; admission refuses it.
        quota_check: lapse_core::quota::QuotaCheck::parse(&t.quota_check).map(Into::into).unwrap_or_default(),
        created_at: format_millis(t.created_at),
    }
}

/// Create a tenant.
#[utoipa::path(post, path = "/v1/admin/tenants", tag = "admin", request_body = CreateTenant,
    responses((status = 201, body = TenantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_tenant(
    State(app): State<App>,
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
    ApiJson(req): ApiJson<CreateTenant>,
) -> Result<impl IntoResponse, ApiError> {
    validate::tenant("name", &req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tier = req.tier.unwrap_or_else(|| "free".into());
    let tiers = app.cx.config.tier_names();
    if !tiers.contains(&tier) {
        return Err(ApiError::bad_request(format!("tier: unknown tier {tier:?}; known: {}", tiers.join(", "))));
    }
    let quota = req.quota.unwrap_or_default();
    check_quota(&quota, app.cx.config.max_ttl)?;
    let record = TenantRecord {
        name: req.name.clone(),
        tier: tier.clone(),
        quota: serde_json::to_value(&quota).unwrap_or_default(),
        quota_check: check_name(req.quota_check.unwrap_or_default()).to_owned(),
        created_at: app.cx.clock.now(),
    };
    let message = format!("tier {tier}, quota checked {}", record.quota_check);
    let event = NewEvent::of_tenant(&req.name, &caller.actor(), "create_tenant", "ok", message);
    if !app.cx.store.create_tenant(&record, event).await.map_err(AppError::Store)? {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("tenant {} exists", req.name)));
    }
    Ok((StatusCode::CREATED, Json(view(&record))))
}

fn check_name(c: QuotaCheckName) -> &'static str {
    lapse_core::quota::QuotaCheck::from(c).as_str()
}

/// Change a tenant's settings: `quota_check` (`summed` or `per_request`), applied from its
/// next request on.
#[utoipa::path(patch, path = "/v1/admin/tenants/{name}", tag = "admin", params(("name" = String, Path)),
    request_body = UpdateTenant,
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_tenant(
    State(app): State<App>,
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateTenant>,
) -> Result<Json<TenantView>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no tenant {name}"));
    let Some(check) = req.quota_check else {
        let tenant = app.cx.store.tenant(&name).await.map_err(AppError::Store)?.ok_or_else(not_found)?;
        return Ok(Json(view(&tenant)));
    };
    let check = check_name(check);
    let event = NewEvent::of_tenant(&name, &caller.actor(), "update_tenant", "ok", format!("quota checked {check}"));
    let tenant = app.cx.store.set_quota_check(&name, check, event).await.map_err(AppError::Store)?;
    Ok(Json(view(&tenant.ok_or_else(not_found)?)))
}

fn check_quota(q: &QuotaInput, max_ttl: std::time::Duration) -> Result<(), ApiError> {
    let bad = |field: &str, why: &str| Err(ApiError::bad_request(format!("quota.{field}: {why}")));
    if q.vcpu.is_some_and(|v| !(v.is_finite() && (0.0..=validate::MAX_VCPU * 1000.0).contains(&v))) {
        return bad("vcpu", "must be a number from 0");
    }
    if q.env_hours_per_month.is_some_and(|v| !(v.is_finite() && (0.0..=1e9).contains(&v))) {
        return bad("env_hours_per_month", "must be a number from 0");
    }
    if let Some(t) = &q.max_ttl {
        t.to_duration(max_ttl).map_err(|e| ApiError::bad_request(format!("quota.max_ttl: {e}")))?;
    }
    Ok(())
}

/// Every tenant.
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin",
    responses((status = 200, body = TenantList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_tenants(State(app): State<App>) -> Result<Json<TenantList>, ApiError> {
    let tenants = app.cx.store.tenants().await.map_err(AppError::Store)?;
    Ok(Json(TenantList { tenants: tenants.iter().map(view).collect() }))
}

/// Make an API key: a metrics-only key (`{"scope": "metrics"}`, reads `/metrics` and nothing
/// else) or a tenant's (`{"scope": "tenant", "tenant": "acme"}`). The key is in this answer only.
#[utoipa::path(post, path = "/v1/admin/keys", tag = "admin", request_body = CreateKey,
    responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_scoped_key(
    State(app): State<App>,
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
    ApiJson(req): ApiJson<CreateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let scope = match (req.scope, req.tenant) {
        (KeyScopeName::Metrics, None) => KeyScope::Metrics,
        (KeyScopeName::Tenant, Some(tenant)) => {
            validate::tenant("tenant", &tenant).map_err(|e| ApiError::bad_request(e.to_string()))?;
            KeyScope::Tenant(tenant)
        }
        (KeyScopeName::Metrics, Some(_)) => return Err(ApiError::bad_request("tenant: a metrics key has no tenant")),
        (KeyScopeName::Tenant, None) => return Err(ApiError::bad_request("tenant: a tenant key names its tenant")),
    };
    make_key(&app, &caller, scope).await
}

async fn make_key(app: &App, caller: &Caller, scope: KeyScope) -> Result<(StatusCode, Json<KeyCreated>), ApiError> {
    let (record, key) = crate::auth::new_key(scope.clone(), app.cx.clock.now());
    let message = format!("{} key {}", scope.as_str(), record.id);
    let mut event = NewEvent::of_tenant("", &caller.actor(), "create_key", "ok", message);
    event.tenant = scope.tenant().map(str::to_owned);
    if !app.cx.store.create_key(&record, event).await.map_err(AppError::Store)? {
        let tenant = scope.tenant().unwrap_or_default();
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no tenant {tenant}")));
    }
    let tenant = scope.tenant().map(str::to_owned);
    Ok((StatusCode::CREATED, Json(KeyCreated { id: record.id, tenant, scope: scope_name(&scope), key })))
}

fn scope_name(scope: &KeyScope) -> KeyScopeName {
    match scope {
        KeyScope::Tenant(_) => KeyScopeName::Tenant,
        KeyScope::Metrics => KeyScopeName::Metrics,
    }
}

/// Make an API key for a tenant. The key is in this answer only.
#[utoipa::path(post, path = "/v1/admin/tenants/{name}/keys", tag = "admin", params(("name" = String, Path)),
    responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_key(
    State(app): State<App>,
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    // No key for a reserved name, even if an older store holds such a tenant.
    if validate::RESERVED_TENANTS.contains(&name.as_str()) {
        return Err(ApiError::bad_request(format!("tenant: {name:?} is reserved; it can hold no key")));
    }
    make_key(&app, &caller, KeyScope::Tenant(name)).await
}

/// Revoke a key: it is refused from now on.
#[utoipa::path(delete, path = "/v1/admin/keys/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = KeyRevoked), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn revoke_key(
    State(app): State<App>,
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyRevoked>, ApiError> {
    let scope = app.cx.store.revoke_key(&id, app.cx.clock.now(), &caller.actor()).await.map_err(AppError::Store)?;
    let scope = scope.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no key {id}")))?;
    Ok(Json(KeyRevoked { id, tenant: scope.tenant().map(str::to_owned), scope: scope_name(&scope), revoked: true }))
}

/// Who the presented key is.
#[utoipa::path(get, path = "/v1/whoami", tag = "admin",
    responses((status = 200, body = lapse_core::wire::WhoAmI), (status = 401, body = ErrorBody)))]
pub async fn whoami(
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
) -> Json<lapse_core::wire::WhoAmI> {
    Json(lapse_core::wire::WhoAmI {
        actor: caller.actor(),
        tenant: caller.scope().map(str::to_owned),
        admin: caller.is_admin(),
    })
}
