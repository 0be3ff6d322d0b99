//! The Firecracker control plane's HTTP surface (ndrean/microvm-control-planner@2ff3827,
//! the Elixir app `fc_ex_cp`; files `lib/router.ex`, `lib/pool_manager.ex`, `lib/vm.ex`,
//! `lib/spec_hash.ex`, `lib/reconciler.ex`, `lib/desiredStateStore.ex`), so that its users'
//! scripts work unchanged:
//!
//! - `POST /vms`: upsert by id ([`request`] reads the body as the seed does). `201` with the
//!   VM's info ([`views::VmInfo`]) when a warm pool member was claimed for it, or when the job
//!   already runs (the seed's `attach` is idempotent); else `202 {"job_id", "status":
//!   "accepted", "message": "VM scheduled, reconciler will provision when warm VM is ready"}`.
//!   Unlike the seed, a `202` job is provisioned even with no warm pool (the seed never starts
//!   it), and **an upsert with a new spec applies it**: the seed stores the new spec in its
//!   desired state but `attach` keeps the running VM on the old one, so its store and its VM
//!   disagree until a restart; Lapse's store is the desired state, so the environment is
//!   replaced (in the background; the answer is still `201`, showing the new spec).
//! - `GET /vms/:id`: `200` with the info, `404` with an empty body. Lapse answers for a job
//!   from its first moment (status `created`); the seed only once it has a VM.
//! - `DELETE /vms/:id`: `204` with an empty body, idempotent (an unknown id too).
//! - `GET /stats`: `stats`, with the seed's `spec_hash` (`phash2`).
//!
//! Errors are the seed's `{"error": "<text>"}`: `400` for a body it refuses (and for what
//! Lapse refuses besides: a key of the wrong type, a bad name, `kernel`/`rootfs` on a provider
//! that cannot boot one), Lapse's 4xx for quotas and conflicts, and `503` for every failure
//! of the server or a provider (the seed's "system error"); never another 5xx.
//!
//! Every change goes through [`App::upsert_job`] and [`App::delete_job`], the one admission
//! and store path. These routes are served on the main listener (admin key, when keys are
//! on) and, with `--seed-listen`, on their own listener without keys ([`seed_router`]), as the
//! seed serves them.

pub mod phash2;
pub mod request;
pub mod stats;
pub mod views;

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lapse_core::model::ObservedState;
use lapse_core::validate;
use lapse_core::wire::PutPool;
use lapse_store::ListFilter;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::app::{App, AppError, Job};
use crate::http::{BODY_TIMEOUT, MAX_BODY_BYTES};
use views::{SeedError, SeedErrorBody, VmInfo, vm_info};

/// The seed's message of a `202`.
pub const ACCEPTED_MESSAGE: &str = "VM scheduled, reconciler will provision when warm VM is ready";

/// The seed's routes, for the main listener.
pub fn router() -> Router<App> {
    Router::new()
        .route("/vms", post(create_vm))
        .route("/vms/{id}", get(show_vm).delete(delete_vm))
        .route("/stats", get(stats))
}

/// The seed's routes on their own listener (`--seed-listen`): no keys, as the seed; anything
/// else is the seed's `404 not found`.
pub fn seed_router(app: App) -> Router {
    router()
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(Extension(SeedListener))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            SeedError { status: StatusCode::SERVICE_UNAVAILABLE, message: "the server failed on this request".into() }
                .into_response()
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

/// Marks a request that came through the seed's own listener: its tenants are made on first
/// use even when the main listener has keys (the seed's tenants are free text).
#[derive(Clone, Copy, Debug)]
pub struct SeedListener;

/// The seed's `202`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub job_id: String,
    /// Always `accepted`.
    pub status: String,
    pub message: String,
}

/// Create or replace a VM by id (the seed's upsert).
#[utoipa::path(post, path = "/vms", tag = "seed",
    request_body(content = Object, description = "`{\"job_id\"|\"vm_id\"|\"tenant\", \"spec\"}`, each optional, as the seed reads it"),
    responses(
        (status = 201, description = "A warm VM was claimed, or the job already runs", body = VmInfo),
        (status = 202, description = "It will be provisioned", body = Accepted),
        (status = 400, description = "Refused", body = SeedErrorBody),
        (status = 408, description = "The body did not arrive in time", body = SeedErrorBody),
        (status = 413, description = "Body too large", body = SeedErrorBody),
        (status = 415, description = "Not JSON", body = SeedErrorBody),
        (status = 409, description = "The same new id was upserted at the same time; retry", body = SeedErrorBody),
        (status = 503, description = "A system error", body = SeedErrorBody),
    ))]
pub async fn create_vm(
    State(app): State<App>,
    seed_listener: Option<Extension<SeedListener>>,
    req: Request,
) -> Result<Response, SeedError> {
    let body = read_json(req).await?;
    let body = request::read_body(&body).map_err(|e| SeedError::bad_request(e.to_string()))?;
    let invalid = |e: validate::FieldError| SeedError::bad_request(e.to_string());
    validate::name("job_id", &body.job_id).map_err(invalid)?;
    validate::tenant("tenant", &body.tenant).map_err(invalid)?;
    let mut mapped = request::map_spec(&body.spec, &app.cx.config.vms_provider).map_err(invalid)?;
    if !mapped.resources_given && app.check_spec(&mapped.spec).is_err() {
        // The seed's default size, only where the provider can enforce it.
        let mut bare = mapped.spec.clone();
        bare.resources = None;
        if app.check_spec(&bare).is_ok() {
            mapped.spec = bare;
        }
    }
    if let Some(w) = mapped.warm_pool {
        validate::pool_size(w.min, w.max)
            .map_err(|e| invalid(validate::FieldError { field: "spec.warm_pool".into(), ..e }))?;
    }
    let job = Job {
        job_id: body.job_id.clone(),
        name: None,
        tenant: body.tenant,
        spec: mapped.spec.clone(),
        lifecycle: mapped.lifecycle,
        max_retries: 0,
        labels: BTreeMap::new(),
        ttl: None,
        on_expiry: Default::default(),
        idle_timeout: None,
        on_idle: Default::default(),
        warn_before: Vec::new(),
        source: "vms".into(),
        seed_spec: Some(mapped.seed_spec),
        make_tenant: seed_listener.is_some(),
    };
    let created = app.upsert_job(job, "vms").await?;
    if let Some(pool) = mapped.warm_pool {
        let put = PutPool {
            spec: mapped.spec.clone(),
            min: pool.min,
            max: pool.max,
            version: None,
            lifecycle: mapped.lifecycle,
            on_claim: None,
        };
        app.put_pool(&format!("vms-{}", mapped.spec.hash()), put, "vms").await?;
    }
    if created.claimed || created.env.observed == ObservedState::Running {
        return Ok((StatusCode::CREATED, Json(vm_info(&created.env))).into_response());
    }
    let accepted = Accepted { job_id: body.job_id, status: "accepted".into(), message: ACCEPTED_MESSAGE.into() };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// A VM's info by id.
#[utoipa::path(get, path = "/vms/{id}", tag = "seed", params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, body = VmInfo),
        (status = 404, description = "No such job (an empty body, as the seed)"),
        (status = 503, description = "A system error", body = SeedErrorBody),
    ))]
pub async fn show_vm(State(app): State<App>, id: Result<Path<String>, PathRejection>) -> Result<Response, SeedError> {
    let Ok(Path(id)) = id else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    Ok(match app.get_job(&id).await? {
        Some(env) => (StatusCode::OK, Json(vm_info(&env))).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

/// Delete a VM by id; idempotent.
#[utoipa::path(delete, path = "/vms/{id}", tag = "seed", params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 204, description = "Deleted, or there was none"),
        (status = 503, description = "A system error", body = SeedErrorBody),
    ))]
pub async fn delete_vm(State(app): State<App>, id: Result<Path<String>, PathRejection>) -> Result<Response, SeedError> {
    if let Ok(Path(id)) = id {
        app.delete_job(&id, "vms").await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Jobs and the warm pool, in the seed's shape.
#[utoipa::path(get, path = "/stats", tag = "seed",
    responses((status = 200, body = stats::Stats), (status = 503, description = "A system error", body = SeedErrorBody)))]
pub async fn stats(State(app): State<App>) -> Result<Json<stats::Stats>, SeedError> {
    // The jobs of every tenant: these routes are the admin's (or the seed listener's).
    let envs = app.list(ListFilter::default(), &crate::auth::Caller::Admin).await?;
    let members = app.cx.store.pool_members().await.map_err(AppError::Store)?;
    Ok(Json(stats::stats(&envs, &members)))
}

/// The body as JSON, read as the seed's `Plug.Parsers` does: no content type and no body is
/// `{}`; a body that is not JSON is refused.
async fn read_json(req: Request) -> Result<Value, SeedError> {
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)).await;
    let bytes = match read {
        Err(_) => {
            return Err(SeedError {
                status: StatusCode::REQUEST_TIMEOUT,
                message: format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            });
        }
        Ok(Err(_)) => {
            return Err(SeedError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("the body could not be read, or is larger than {MAX_BODY_BYTES} bytes"),
            });
        }
        Ok(Ok(bytes)) => bytes,
    };
    let is_json = content_type.as_deref().is_some_and(|t| {
        let essence = t.split(';').next().unwrap_or("").trim();
        essence == "application/json" || essence.ends_with("+json")
    });
    if bytes.iter().all(u8::is_ascii_whitespace) && (is_json || content_type.is_none()) {
        return Ok(Value::Object(Map::new()));
    }
    if !is_json {
        return Err(SeedError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "send the body as JSON with Content-Type: application/json".into(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| SeedError::bad_request(format!("the body is not valid JSON: {e}")))
}
