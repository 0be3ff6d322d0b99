//! The Classla IDE orchestration API (Classla/ClasslaV2@aef6eae,
//! `classla-ide-container/orchestration/`), exact, on a listener of its own
//! (`--classla-listen`, the seed's `PORT`), so the seed's backend and frontend work unchanged.
//! Files followed: `src/server.ts` (mounts, open routes, `GET /`, the 404), `src/routes/
//! containers.ts`, `src/routes/health.ts`, `src/middleware/{auth,rateLimit,errors,
//! errorHandler}.ts`, `src/config/index.ts`, `src/services/{containerService,traefikService,
//! s3ValidationService,resourceMonitor,queueManager}.ts`.
//!
//! | route (also without `/api`) | auth | answer |
//! |---|---|---|
//! | `POST /api/containers/start` | key | `200 isReused` (a running one has this `s3Bucket`), else `201` warm (`isPreWarmed`) or cold; `400 INVALID_S3_BUCKET`; `503 RESOURCE_LIMIT_EXCEEDED` |
//! | `GET /api/containers?status&limit&offset` | key | `{containers, total, limit, offset}`; `400 INVALID_PARAMETER` |
//! | `GET /api/containers/:id` | key | the container; `404 CONTAINER_NOT_FOUND` |
//! | `DELETE /api/containers/:id` | key | `{message, id, status:"stopped", stoppedAt}`; `shutdownReason` `manual` |
//! | `POST /api/containers/:id/inactivity-shutdown` | none | `{message, id, status, shutdownReason:"inactivity", stoppedAt}` |
//! | `GET /api/health` | none | `200`, or `503` when the engine does not answer |
//! | `GET /` | none | `{"name":"IDE Orchestration API","version":"1.0.0","status":"running"}` |
//!
//! **A thin adapter, one way in.** The pre-warmed queue is a Lapse warm pool ([`POOL`],
//! `PRE_WARMED_QUEUE_SIZE` members of the seed's image, limits, ports and environment, on
//! `swarm` when it is configured, else `docker`); a start is [`App::create`] with the bucket as
//! claim parameters, which the pool's `http` claim hook posts to the member's
//! `:3000/assign-s3-bucket` and then waits on `:3000/sync-status` (a member whose hook fails
//! is recycled and the start falls back to the next or a cold one, which gets the bucket in
//! its environment as the seed's cold start does); a stop is [`App::delete`]. Idle stop is
//! Lapse's (`idle_timeout` = `INACTIVITY_TIMEOUT_SECONDS`, `on_idle = delete`), and the
//! container's own inactivity call is the open route; either way `shutdownReason` is
//! `inactivity`. Ids are the environments' short ids ([`alias`]); the proxy serves the
//! `urls` (`/code/<id>`, `/vnc/<id>`, `/web/<id>`, `/terminal/<id>/`) from `spec.routes`.
//!
//! Where Lapse differs: no answer is a `5xx` but `503` (the seed's `500`s for bad JSON, a body
//! over 100 kB, a failing Docker call are `400`, `413`, and `503` with the seed's code); a
//! member whose `sync-status` never says `ready` within the hook's 40 s is recycled (the seed
//! used it anyway, half-synced); `GET /api/health`'s `withS3Bucket` counts the running
//! containers that have a bucket (the seed subtracted its own two services from all);
//! `health` in a container's view is Lapse's state (no HTTP health monitor); `GET
//! /api/containers`' `total` is, as in the seed, the length of the page; a start's body
//! fields other than `s3Bucket` must be strings when given (`400 INVALID_PARAMETER`); the
//! dashboard (`/api/dashboard/*`) and `/api/loadtest` are not served. The seed's CORS is
//! kept (every origin, with credentials); helmet's headers are not. The S3 `HeadBucket`
//! check is behind [`bucket::BucketCheck`]: [`bucket::S3Check`] (the AWS SDK's S3 client)
//! with the `s3` feature, else [`bucket::NoCheck`] (well-formed names pass).

pub mod alias;
pub mod bucket;
pub mod config;
pub mod guard;
pub mod health;
pub mod routes;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::app::App;
pub use config::{ClasslaConfig, POOL, SOURCE};
use wire::{PendingPath, SeedError};

/// `lapse serve --classla-listen`: where, and with what.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub config: ClasslaConfig,
}

/// The adapter's state.
pub struct Classla {
    pub config: ClasslaConfig,
    pub guard: guard::Guard,
    pub bucket: Arc<dyn bucket::BucketCheck>,
    pub aliases: Arc<alias::Aliases>,
}

impl std::fmt::Debug for Classla {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classla").field("config.domain", &self.config.domain).finish_non_exhaustive()
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ClasslaState {
    pub app: App,
    pub classla: Arc<Classla>,
}

/// Starts the adapter on `app`: the pool, the ids, the proxy's aliases; answers its router.
pub async fn start(app: &App, config: ClasslaConfig, check: Arc<dyn bucket::BucketCheck>) -> anyhow::Result<Router> {
    let aliases = alias::Aliases::follow(&app.cx.store, config.open_urls).await?;
    let _ = app.cx.route_alias.set(aliases.clone());
    let pool = lapse_core::wire::PutPool {
        spec: config.spec(),
        min: config.queue_size,
        max: None,
        version: None,
        lifecycle: lapse_core::model::Lifecycle::Service,
        on_claim: Some(ClasslaConfig::hook()),
    };
    app.put_pool(POOL, pool, SOURCE).await.map_err(|e| anyhow::anyhow!("the Classla pre-warmed pool: {e}"))?;
    let classla = Arc::new(Classla { guard: guard::Guard::new(&config.api_keys), bucket: check, aliases, config });
    Ok(router(ClasslaState { app: app.clone(), classla }))
}

/// The seed's routes, mounted with and without `/api`.
pub fn router(state: ClasslaState) -> Router {
    Router::new()
        .route("/", axum::routing::get(routes::root))
        .merge(routes::open("/api"))
        .merge(routes::open(""))
        .merge(routes::containers("/api/containers", &state))
        .merge(routes::containers("/containers", &state))
        .fallback(routes::fallback)
        .layer(middleware::from_fn(envelope))
        .layer(middleware::from_fn(cors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            SeedError::new(StatusCode::SERVICE_UNAVAILABLE, "INTERNAL_ERROR", "An internal error occurred")
                .into_response()
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The seed's `cors({origin: <every origin>, credentials: true, methods, allowedHeaders})`,
/// ahead of every route: an `OPTIONS` is answered `204` here (no key), and every answer
/// carries `Vary: Origin` and, for a request with an `Origin`, that origin and
/// `Access-Control-Allow-Credentials: true`.
async fn cors(req: Request, next: Next) -> Response {
    use axum::http::{HeaderValue, Method, header};
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET,POST,PUT,PATCH,DELETE,OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type,Authorization"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        r
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    response
}

/// Fills in the `path` of an error answered by a handler, and answers a method a route does
/// not have as the seed's `404 NOT_FOUND` (Express has no `405`).
async fn envelope(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        return routes::not_found(&path);
    }
    if response.extensions().get::<PendingPath>().is_none() {
        return response;
    }
    let (parts, body) = response.into_parts();
    // An error body is a few hundred bytes that this module made.
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    value["path"] = serde_json::Value::from(path);
    let mut parts = parts;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(value.to_string()))
}

/// Keys and the rate limit on the authenticated routes (`guard`).
pub async fn authenticated(State(state): State<ClasslaState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let window = match admit(&state, req.headers(), &path) {
        Ok(window) => window,
        Err(refused) => return *refused,
    };
    let mut response = next.run(req).await;
    guard::add_headers(&mut response, window);
    response
}

/// The request's key checked and counted: its window, or the refusal.
pub fn admit(
    state: &ClasslaState,
    headers: &axum::http::HeaderMap,
    path: &str,
) -> Result<guard::Window, Box<Response>> {
    let key = state.classla.guard.authenticate(headers).map_err(|e| Box::new(e.into_response_at(path)))?;
    let now = chrono::Utc::now().timestamp_millis();
    let window = state.classla.guard.count(key, now);
    if window.over {
        return Err(Box::new(guard::over_limit(window, now, path)));
    }
    Ok(window)
}
