//! The seed's handlers (`src/routes/containers.ts`, `src/server.ts`), each a thin call into
//! [`App`]: `create`, `delete`, `list`.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lapse_core::claim::ClaimParams;
use lapse_core::model::{DesiredState, Environment, Lifecycle, ObservedState, OnIdle};
use lapse_core::wire::CreateEnvironment;
use lapse_store::{ListFilter, NewEvent};
use serde_json::{Map, Value, json};

use super::config::{LABEL_BUCKET, LABEL_SHUTDOWN, POOL, SOURCE};
use super::wire::{self, SeedError, seed_id, status, urls};
use super::{ClasslaState, authenticated};

use crate::app::AppError;
use crate::auth::Caller;

/// express.json()'s default limit.
pub const MAX_BODY: usize = 100 * 1024;

/// The routes under `prefix` (`/api/containers`, `/containers`) behind the key and the limit.
/// `POST …/:id/inactivity-shutdown` is [`open`]'s.
pub fn containers(prefix: &str, state: &ClasslaState) -> Router<ClasslaState> {
    Router::new()
        .route(
            &format!("{prefix}/start"),
            post(start).get(|s, p| show_named(s, p, "start")).delete(|s, p| delete_named(s, p, "start")),
        )
        .route(prefix, get(list))
        .route(&format!("{prefix}/"), get(list))
        .route(&format!("{prefix}/{{id}}"), get(show).delete(delete))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticated))
}

/// The routes without a key: health and the containers' own inactivity call.
pub fn open(prefix: &str) -> Router<ClasslaState> {
    Router::new()
        .route(&format!("{prefix}/health"), get(super::health::health))
        .route(&format!("{prefix}/health/"), get(super::health::health))
        .route(&format!("{prefix}/containers/{{id}}/inactivity-shutdown"), post(inactivity_shutdown))
}

/// `GET /`.
pub async fn root() -> Json<Value> {
    Json(json!({"name": "IDE Orchestration API", "version": "1.0.0", "status": "running"}))
}

/// The seed's `404` for a route it does not have.
pub fn not_found(path: &str) -> Response {
    SeedError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource was not found").into_response_at(path)
}

/// Anything else: under the containers' mounts a key is asked first (as the seed's
/// `app.use("/api/containers", authenticate, …)`), then the `404`.
pub async fn fallback(State(state): State<ClasslaState>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let guarded = ["/api/containers", "/containers"]
        .iter()
        .any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')));
    if guarded {
        return match super::admit(&state, req.headers(), &path) {
            Ok(window) => {
                let mut response = not_found(&path);
                super::guard::add_headers(&mut response, window);
                response
            }
            Err(refused) => *refused,
        };
    }
    not_found(&path)
}

/// The body as the seed's parsers read it: JSON (`application/json`, `+json`) or a form
/// (`application/x-www-form-urlencoded`); any other type, or none, is `{}`.
async fn read_body(req: Request) -> Result<Map<String, Value>, SeedError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let is_json = content_type == "application/json" || content_type.ends_with("+json");
    let is_form = content_type == "application/x-www-form-urlencoded";
    if !is_json && !is_form {
        return Ok(Map::new());
    }
    let read = tokio::time::timeout(crate::http::BODY_TIMEOUT, read_bounded(req.into_body())).await;
    let bytes = match read {
        Err(_) => return Err(SeedError::new(StatusCode::REQUEST_TIMEOUT, "INVALID_PARAMETER", "request timed out")),
        Ok(Err(())) => {
            return Err(SeedError::new(StatusCode::PAYLOAD_TOO_LARGE, "INVALID_PARAMETER", "request entity too large"));
        }
        Ok(Ok(b)) => b,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    if is_form {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| SeedError::invalid_parameter(format!("the body is not a valid form: {e}")))?;
        return Ok(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Array(_)) => Ok(Map::new()),
        Ok(_) => Err(SeedError::invalid_parameter("the body must be a JSON object")),
        Err(e) => Err(SeedError::invalid_parameter(format!("the body is not valid JSON: {e}"))),
    }
}

/// Most bytes of a refused body read and dropped before answering, so that a client still
/// sending gets the `413` rather than a reset connection.
const MAX_DRAINED: usize = 4 * 1024 * 1024;

/// The body if it is at most [`MAX_BODY`] bytes; a larger one is drained (up to
/// [`MAX_DRAINED`]) and refused.
async fn read_bounded(body: axum::body::Body) -> Result<Vec<u8>, ()> {
    use http_body_util::BodyExt;
    let mut body = body;
    let (mut kept, mut seen) = (Vec::new(), 0usize);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(()) };
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen > MAX_DRAINED {
            return Err(());
        }
        if seen <= MAX_BODY {
            kept.extend_from_slice(&data);
        }
    }
    if seen > MAX_BODY { Err(()) } else { Ok(kept) }
}

/// An optional string field, empty meaning absent (the seed's `||`); another type is refused.
fn text(body: &Map<String, Value>, key: &str) -> Result<Option<String>, SeedError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(SeedError::invalid_parameter(format!("{key} must be a string"))),
    }
}

/// The adapter's environments not deleted, oldest first.
async fn ours(state: &ClasslaState) -> Result<Vec<Environment>, SeedError> {
    let envs = state.app.cx.store.list(&ListFilter::default()).await.map_err(|e| SeedError::internal(e.into()))?;
    Ok(envs.into_iter().filter(super::alias::is_ours).collect())
}

/// The environment of seed id `id`, deleted ones included.
async fn find(state: &ClasslaState, id: &str) -> Result<Environment, SeedError> {
    let Some(full) = state.classla.aliases.id_of(id) else { return Err(SeedError::not_found(id)) };
    match state.app.cx.store.get(&full).await {
        Ok(Some(env)) => Ok(env),
        Ok(None) => Err(SeedError::not_found(id)),
        Err(e) => Err(SeedError::internal(e.into())),
    }
}

/// `POST /api/containers/start`.
pub async fn start(State(state): State<ClasslaState>, req: Request) -> Result<Response, SeedError> {
    let body = read_body(req).await?;
    let Some(Value::String(bucket)) =
        body.get("s3Bucket").filter(|v| v.as_str().is_some_and(|s| !s.is_empty())).cloned()
    else {
        return Err(SeedError::invalid_bucket("s3Bucket is required and must be a string"));
    };
    let bucket_id = text(&body, "s3BucketId")?;
    let region = text(&body, "s3Region")?;
    let key_id = text(&body, "awsAccessKeyId")?;
    let secret = text(&body, "awsSecretAccessKey")?;
    let vnc_password = text(&body, "vncPassword")?;
    let user_id = match body.get("userId") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let config = &state.classla.config;

    // (1) Reuse: a running container of this bucket.
    let reusable = ours(&state).await?.into_iter().find(|e| {
        e.labels.get(LABEL_BUCKET) == Some(&bucket) && wire::is_live(e) && e.observed == ObservedState::Running
    });
    if let Some(env) = reusable {
        state.app.cx.activity.touch(&env.id);
        let id = seed_id(&env);
        let answer = json!({
            "id": id,
            "serviceName": format!("ide-{id}"),
            "status": status(&env),
            "urls": urls(config, id),
            "message": "Container is already running. Reusing existing instance.",
            "isPreWarmed": false,
            "isReused": true,
        });
        return Ok((StatusCode::OK, Json(answer)).into_response());
    }

    // (2) The bucket.
    let region = region.unwrap_or_else(|| config.aws_region.clone());
    let request_credentials = key_id.as_deref().zip(secret.as_deref());
    let server_credentials = config.aws_access_key_id.as_deref().zip(config.aws_secret_access_key.as_deref());
    super::bucket::validate(state.classla.bucket.as_ref(), &bucket, &region, request_credentials, server_credentials)
        .await
        .map_err(SeedError::invalid_bucket)?;

    // (3, 4) A warm claim through the pool's hook, else a cold start under the memory limit.
    let warm = state.app.get_pool(POOL).await.map(|p| p.warm).unwrap_or(0);
    if warm == 0
        && let Some(used) = crate::host::memory_used_percent()
        && used >= config.max_memory_percent as f64
    {
        return Err(SeedError::resource_limit(format!(
            "Memory usage at {used:.1}% exceeds threshold of {}%",
            config.max_memory_percent
        )));
    }
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("S3_BUCKET".into(), bucket.clone());
    env.insert("S3_REGION".into(), region);
    let vars = [
        ("S3_BUCKET_ID", bucket_id),
        ("AWS_ACCESS_KEY_ID", key_id.or_else(|| config.aws_access_key_id.clone())),
        ("AWS_SECRET_ACCESS_KEY", secret.or_else(|| config.aws_secret_access_key.clone())),
        ("VNC_PASSWORD", vnc_password),
    ];
    env.extend(vars.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))));
    let owner = user_id.filter(|u| lapse_core::validate::owner(u).is_ok()).unwrap_or_else(|| SOURCE.to_owned());
    let request = CreateEnvironment {
        name: None,
        owner,
        labels: [(LABEL_BUCKET.to_owned(), bucket)].into(),
        spec: config.spec(),
        ttl: None,
        on_expiry: Default::default(),
        lifecycle: Lifecycle::Service,
        max_retries: None,
        params: Some(ClaimParams { env, files: BTreeMap::new() }),
        idle_timeout: Some(config.idle_timeout()),
        on_idle: OnIdle::Delete,
        warn_before: None,
    };
    let created = state.app.create(request, &Caller::Admin).await.map_err(SeedError::start_failed)?;
    state.classla.aliases.note(&created.env);
    let id = seed_id(&created.env);
    let (status, message) = if created.claimed {
        ("running", "Container is ready. Services are available.")
    } else {
        ("starting", "Container is starting. Services will be available shortly.")
    };
    let answer = json!({
        "id": id,
        "serviceName": format!("ide-{id}"),
        "status": status,
        "urls": urls(config, id),
        "message": message,
        "isPreWarmed": created.claimed,
    });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET /api/containers`: the live ones, with the seed's paging (its `total` is the page's
/// length, as the seed counts it after slicing).
pub async fn list(State(state): State<ClasslaState>, RawQuery(query): RawQuery) -> Result<Json<Value>, SeedError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let first = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let limit = first("limit").map(|v| config_int(&v));
    let offset = first("offset").map(|v| config_int(&v));
    if let Some(l) = limit
        && l.is_none_or(|l| l < 1)
    {
        return Err(SeedError::invalid_parameter("limit must be a positive integer"));
    }
    if let Some(o) = offset
        && o.is_none_or(|o| o < 0)
    {
        return Err(SeedError::invalid_parameter("offset must be a non-negative integer"));
    }
    let (limit, offset) = (limit.flatten(), offset.flatten().unwrap_or(0));
    let wanted = first("status");
    let config = &state.classla.config;
    let live: Vec<Environment> = ours(&state)
        .await?
        .into_iter()
        .filter(wire::is_live)
        .filter(|e| wanted.as_deref().is_none_or(|w| status(e) == w))
        .collect();
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    let take = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let rows: Vec<Value> = live.iter().skip(skip).take(take).map(|e| wire::list_row(config, e)).collect();
    let total = rows.len();
    Ok(Json(json!({"containers": rows, "total": total, "limit": limit.map_or(total as i64, |l| l), "offset": offset})))
}

fn config_int(v: &str) -> Option<i64> {
    super::config::parse_int(v)
}

/// `GET /api/containers/:id`.
pub async fn show(State(state): State<ClasslaState>, Path(id): Path<String>) -> Result<Json<Value>, SeedError> {
    let env = find(&state, &id).await?;
    Ok(Json(wire::detail(&state.classla.config, &env, state.app.cx.clock.now())))
}

async fn show_named(state: State<ClasslaState>, _: Request, id: &'static str) -> Result<Json<Value>, SeedError> {
    show(state, Path(id.to_owned())).await
}

/// Records why it stops, then deletes it through [`App::delete`] (one that is already gone
/// is tolerated, as the seed tolerates a missing service).
async fn shut_down(state: &ClasslaState, env: &Environment, reason: &str) -> Result<(), SeedError> {
    let actor = format!("classla:{reason}");
    state
        .app
        .cx
        .store
        .update(&env.id, |e| {
            e.labels.insert(LABEL_SHUTDOWN.into(), reason.into());
            Ok::<_, lapse_store::StoreError>(vec![NewEvent::new(
                &e.id,
                &actor,
                "classla_stop",
                "ok",
                format!("shutdownReason {reason}"),
            )])
        })
        .await
        .map_err(|e| SeedError::stop_failed(e.into()))?;
    if env.desired == DesiredState::Deleted {
        return Ok(());
    }
    match state.app.delete(&env.id, &Caller::Admin).await {
        Ok(_) | Err(AppError::NotFound(_) | AppError::Conflict(_)) => Ok(()),
        Err(e) => Err(SeedError::stop_failed(e)),
    }
}

/// `DELETE /api/containers/:id`.
pub async fn delete(State(state): State<ClasslaState>, Path(id): Path<String>) -> Result<Json<Value>, SeedError> {
    let env = find(&state, &id).await?;
    shut_down(&state, &env, "manual").await?;
    Ok(Json(json!({
        "message": format!("Container {id} stopped successfully"),
        "id": id,
        "status": "stopped",
        "stoppedAt": wire::now_iso(),
    })))
}

async fn delete_named(state: State<ClasslaState>, _: Request, id: &'static str) -> Result<Json<Value>, SeedError> {
    delete(state, Path(id.to_owned())).await
}

/// `POST /api/containers/:id/inactivity-shutdown`, without a key (the container calls it):
/// only the adapter's environments can be named.
pub async fn inactivity_shutdown(
    State(state): State<ClasslaState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Value>, SeedError> {
    let body = read_body(req).await?;
    let reason = text(&body, "reason").unwrap_or(None).unwrap_or_else(|| "inactivity".into());
    let env = find(&state, &id).await?;
    tracing::info!(container = %id, environment = %env.id, %reason, "the container reports its inactivity shutdown");
    shut_down(&state, &env, "inactivity").await?;
    Ok(Json(json!({
        "message": format!("Container {id} inactivity shutdown recorded"),
        "id": id,
        "status": "stopped",
        "shutdownReason": "inactivity",
        "stoppedAt": wire::now_iso(),
    })))
}
