//! What the seed answers, in its shapes: a VM's `VM.info` (`lib/vm.ex`, `handle_call(:info)`),
//! the seed's status vocabulary, and the `{"error": "..."}` of its router.
//!
//! `VM.info` fields, and what Lapse puts in them:
//!
//! | field | Lapse |
//! |---|---|
//! | `id` | the environment's id (32 hex) |
//! | `tenant` | the environment's tenant (the job's `tenant`) |
//! | `backend` | the provider (`process`, `docker`), where the seed says `firecracker` or `cloud_hypervisor` |
//! | `ip`, `port` | the first endpoint's host and port (where to connect from this host), else `null` |
//! | `tap`, `api_sock`, `metrics_path` | `null`: no VM, so no tap device, API socket or metrics file |
//! | `pid` | the process provider's pid, else `null` |
//! | `status` | [`seed_status`] |
//! | `specs` | the seed's spec as given (for an environment a TOML file declared: Lapse's spec) |
//! | `config` | `vcpus`, `memory_mb` as enforced (`null` when not), `kernel_path`, `rootfs_path` as given, `boot_args` `null` |

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lapse_core::model::{Environment, ObservedState};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::app::AppError;

/// A VM's info, as the seed's `VM.info/1` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct VmInfo {
    pub id: String,
    pub tenant: String,
    pub backend: String,
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub tap: Option<String>,
    pub api_sock: Option<String>,
    pub metrics_path: Option<String>,
    pub pid: Option<u32>,
    /// `created`, `booting`, `running`, `warm`, `failed` (the seed's), or Lapse's `stopping`,
    /// `stopped`, `deleting` (states the seed has no word for).
    pub status: String,
    /// The seed's spec as given.
    #[schema(value_type = Object)]
    pub specs: Value,
    pub config: VmConfig,
}

/// The seed's `config` of a VM.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct VmConfig {
    pub vcpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub kernel_path: Option<String>,
    pub rootfs_path: Option<String>,
    pub boot_args: Option<String>,
}

/// The seed's word for an environment's state (`VM` `status`): `created` before anything
/// ran, `booting` while it is made, `running` (or `warm` for an unclaimed pool member),
/// `failed`; states the seed has none for keep Lapse's name.
pub fn seed_status(env: &Environment) -> &'static str {
    match env.observed {
        ObservedState::Pending => "created",
        ObservedState::Provisioning => "booting",
        ObservedState::Running if env.pool.is_some() => "warm",
        ObservedState::Running => "running",
        ObservedState::Failed => "failed",
        other => other.as_str(),
    }
}

/// The seed's spec of an environment: as given, else Lapse's.
pub fn seed_spec(env: &Environment) -> Value {
    env.seed_spec
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_else(|| serde_json::to_value(&env.spec).unwrap_or(Value::Null))
}

/// `VM.info` of an environment.
pub fn vm_info(env: &Environment) -> VmInfo {
    let endpoint = env.endpoints.first();
    let resources = env.spec.resources.as_ref();
    VmInfo {
        id: env.id.clone(),
        tenant: env.tenant.clone(),
        backend: env.spec.provider.clone(),
        ip: endpoint.map(|e| e.host.clone()),
        port: endpoint.map(|e| e.port),
        tap: None,
        api_sock: None,
        metrics_path: None,
        pid: if env.spec.provider == "process" {
            env.provider_ref.as_deref().and_then(|r| r.parse().ok())
        } else {
            None
        },
        status: seed_status(env).to_owned(),
        specs: seed_spec(env),
        config: VmConfig {
            vcpus: resources.and_then(|r| r.vcpu),
            memory_mb: resources.and_then(|r| r.mem_mb),
            kernel_path: env.spec.kernel.clone(),
            rootfs_path: env.spec.rootfs.clone(),
            boot_args: None,
        },
    }
}

/// The seed's error answer: `{"error": "<text>"}` with its status.
#[derive(Debug)]
pub struct SeedError {
    pub status: StatusCode,
    pub message: String,
}

/// `{"error": "..."}`.
#[derive(Serialize, ToSchema)]
pub struct SeedErrorBody {
    pub error: String,
}

impl SeedError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        SeedError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl IntoResponse for SeedError {
    fn into_response(self) -> Response {
        (self.status, Json(SeedErrorBody { error: self.message })).into_response()
    }
}

impl From<AppError> for SeedError {
    /// Lapse's refusals keep their 4xx; every failure of the server or a provider is the
    /// seed's `503` for a system error (never another 5xx).
    fn from(e: AppError) -> Self {
        let lapse = crate::http::ApiError::from(e);
        let (status, message) = lapse.parts();
        let status = if status.is_server_error() { StatusCode::SERVICE_UNAVAILABLE } else { status };
        SeedError { status, message }
    }
}
