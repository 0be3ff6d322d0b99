//! The seed's own HTTP surface (`firecracker-control-plane-config.md`), for users migrating
//! from it: `POST /vms` (upsert by `job_id`; `201` when a warm VM was claimed, `202` when it
//! will be provisioned, `503` only for a system error) and `GET /stats` in the seed's shape.
//!
//! The seed's spec maps onto Lapse's: `cmd`, `env`, `resources.vcpu`, `resources.mem_mb`,
//! `lifecycle` and `warm_pool` carry over; `provider` and `image` (Lapse's) may be added;
//! the provider defaults to `--vms-provider`. `rootfs` and `kernel` need a VM provider, which
//! this server does not have yet: they are refused with a 400, not ignored.

pub mod phash2;

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use lapse_core::model::{DesiredState, Lifecycle, ObservedState, Resources, Spec};
use lapse_core::validate::{self, FieldError};
use lapse_core::wire::{ErrorBody, PutPool, WarmPool};
use lapse_store::ListFilter;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::{App, AppError, Job};
use crate::http::{ApiError, ApiJson};

pub fn router() -> Router<App> {
    Router::new().route("/vms", post(create_vm)).route("/stats", get(stats))
}

/// `POST /vms`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmRequest {
    /// The key: an existing `job_id` has its spec replaced (not merged). Generated when absent.
    #[serde(default)]
    pub job_id: Option<String>,
    /// Defaults to the `job_id`.
    #[serde(default)]
    pub tenant: Option<String>,
    pub spec: SeedSpec,
}

/// The seed's spec, with Lapse's `provider`, `image` and `ports` allowed besides.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<SeedResources>,
    /// `service` (default), `daemon` or `job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedResources {
    #[serde(default)]
    pub vcpu: Option<f64>,
    #[serde(default)]
    pub mem_mb: Option<u64>,
}

/// One job as `/vms` answers it and `/stats` lists it.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct JobView {
    pub job_id: String,
    /// The environment that runs it.
    pub vm_id: String,
    pub tenant: String,
    pub status: ObservedState,
    pub spec: Spec,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct WarmView {
    pub spec_hash: String,
    pub vm_id: String,
    /// `warm` (claimable) or `starting`.
    pub status: String,
    pub spec: Spec,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct StatsSummary {
    pub total_jobs: usize,
    pub total_warm: usize,
}

/// `GET /stats`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct Stats {
    pub summary: StatsSummary,
    pub jobs: Vec<JobView>,
    pub warm_pool: Vec<WarmView>,
}

fn to_spec(seed: &SeedSpec, default_provider: &str) -> Result<Spec, FieldError> {
    let provider = seed.provider.clone().unwrap_or_else(|| default_provider.to_owned());
    for (field, given) in [("spec.rootfs", &seed.rootfs), ("spec.kernel", &seed.kernel)] {
        if given.is_some() {
            return Err(FieldError {
                field: field.into(),
                message: format!(
                    "the {provider} provider cannot boot a kernel and root filesystem (no VM provider on this server yet); \
                     leave rootfs and kernel out, and give an image for docker"
                ),
            });
        }
    }
    Ok(Spec {
        provider,
        image: seed.image.clone(),
        cmd: seed.cmd.clone(),
        env: seed.env.clone(),
        resources: seed.resources.map(|r| Resources { vcpu: r.vcpu, mem_mb: r.mem_mb, disk_gb: None }),
        ports: seed.ports.clone(),
        user_data: None,
        kernel: None,
        rootfs: None,
    })
}

fn seed_error(e: AppError) -> ApiError {
    match e {
        // The seed's contract: 503 for a system error.
        AppError::Store(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the store failed; see the server log")
        }
        other => other.into(),
    }
}

/// Create or replace a VM by `job_id`.
#[utoipa::path(post, path = "/vms", tag = "seed", request_body = VmRequest,
    responses(
        (status = 201, description = "A warm VM was claimed", body = JobView),
        (status = 202, description = "It will be provisioned (or its spec was replaced)", body = JobView),
        (status = 400, body = ErrorBody),
        (status = 503, description = "A system error", body = ErrorBody),
    ))]
pub async fn create_vm(
    State(app): State<App>,
    ApiJson(req): ApiJson<VmRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let job_id = req.job_id.unwrap_or_else(|| format!("job-{}", &lapse_core::model::new_environment_id()[20..]));
    validate::name("job_id", &job_id).map_err(|e| ApiError::from(AppError::Invalid(e)))?;
    let tenant = req.tenant.unwrap_or_else(|| job_id.clone());
    validate::tenant("tenant", &tenant).map_err(|e| ApiError::from(AppError::Invalid(e)))?;
    let spec = to_spec(&req.spec, &app.cx.config.vms_provider).map_err(|e| ApiError::from(AppError::Invalid(e)))?;
    let lifecycle = req.spec.lifecycle.unwrap_or(Lifecycle::Service);
    if let Some(pool) = req.spec.warm_pool {
        let put = PutPool { spec: spec.clone(), min: pool.min, max: pool.max, version: None, lifecycle };
        app.put_pool(&format!("vms-{}", spec.hash()), put, "vms").await.map_err(seed_error)?;
    }
    let job = Job {
        job_id: job_id.clone(),
        name: None,
        tenant,
        spec,
        lifecycle,
        max_retries: 0,
        labels: BTreeMap::new(),
        ttl: None,
        on_expiry: Default::default(),
        source: "vms".into(),
        seed_spec: None,
    };
    let created = app.upsert_job(job, "vms").await.map_err(seed_error)?;
    let view = JobView {
        job_id,
        vm_id: created.env.id.clone(),
        tenant: created.env.tenant.clone(),
        status: created.env.observed,
        spec: created.env.spec.clone(),
    };
    Ok((if created.claimed { StatusCode::CREATED } else { StatusCode::ACCEPTED }, Json(view)))
}

/// Jobs and the warm pool, in the seed's shape.
#[utoipa::path(get, path = "/stats", tag = "seed", responses((status = 200, body = Stats), (status = 503, body = ErrorBody)))]
pub async fn stats(State(app): State<App>) -> Result<Json<Stats>, ApiError> {
    // Admins only (see `auth`): the seed's jobs of every tenant.
    let envs = app.list(ListFilter::default(), &crate::auth::Caller::Admin).await.map_err(seed_error)?;
    let members = app.cx.store.pool_members().await.map_err(|e| seed_error(AppError::Store(e)))?;
    let jobs: Vec<JobView> = envs
        .iter()
        .filter(|e| e.pool.is_none() && e.desired != DesiredState::Deleted)
        .map(|e| JobView {
            job_id: e.job_id.clone().unwrap_or_else(|| e.id.clone()),
            vm_id: e.id.clone(),
            tenant: e.tenant.clone(),
            status: e.observed,
            spec: e.spec.clone(),
        })
        .collect();
    let warm_pool: Vec<WarmView> = members
        .iter()
        .filter(|m| m.desired == DesiredState::Running)
        .map(|m| WarmView {
            spec_hash: m.spec.hash(),
            vm_id: m.id.clone(),
            status: if m.observed == ObservedState::Running { "warm".into() } else { "starting".into() },
            spec: m.spec.clone(),
        })
        .collect();
    let total_warm = warm_pool.iter().filter(|w| w.status == "warm").count();
    Ok(Json(Stats { summary: StatsSummary { total_jobs: jobs.len(), total_warm }, jobs, warm_pool }))
}
