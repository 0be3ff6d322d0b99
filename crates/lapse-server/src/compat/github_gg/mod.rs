//! github.gg's personal-VM procedures over Lapse: one VM per user, got or created, and one
//! shell string executed in it.
//!
//! Seed: `lantos1618/github.gg` at `2745f5a` (the VM system was deleted the same day, in
//! `6594410`). Files followed: `src/lib/trpc/routes/vm.ts` (the procedures and their zod
//! bounds), `src/lib/vm/user-vm-service.ts` (`getOrCreateUserVm`, `executeCode`, the tier
//! sizes), `src/lib/dev-env/orchestrator.ts` (the per-request quota check, in
//! [`lapse_core::quota`]), `src/lib/vm/docker-provider.ts` (the container conventions, in
//! `lapse_providers::docker::conventions`), `src/db/schema/user-vms.ts` (`user_id` unique).
//!
//! Routes, under `/v1` with its keys (a tenant's key sees only its own tenant's VMs), one
//! per procedure, `{user}` being the seed's `ctx.user.id`:
//!
//! | route | seed procedure | answer |
//! |---|---|---|
//! | `GET /v1/github-gg/users/{user}/vm.getMyVm` | `vm.getMyVm` | the VM, or `null` |
//! | `POST …/vm.provisionMyVm` `{vcpus?, memoryMb?, diskGb?}?` | `vm.provisionMyVm` | `201` and the new VM, or `200` and the existing one whatever the size asked |
//! | `POST …/vm.startMyVm`, `…/vm.stopMyVm` | `vm.startMyVm`, `vm.stopMyVm` | the VM |
//! | `POST …/vm.destroyMyVm` | `vm.destroyMyVm` | `{"success": true}` |
//! | `POST …/vm.executeCode` `{code}` | `vm.executeCode` | `{stdout, stderr, exitCode}` |
//!
//! - **One way in.** A provision is [`App::create`]: admission (validation, provider
//!   permission, host guard, the tenant's quota, summed or per request as the tenant is set)
//!   and the one store transaction. Get-or-create holds the lock `job_id` upserts hold, so
//!   two concurrent calls for one user make one VM.
//! - **Sizes.** An input gets the seed's bounds and defaults (`vcpus 1–16 =2`, `memoryMb
//!   ≥1024 =4096`, `diskGb 10–500 =50`); no input gets the tenant's tier's limits (the
//!   seed's tier sizes: `free` 2/4096/10, `pro` 4/8192/50, `unlimited` 8/16384/100).
//! - **Disk.** Where the provider enforces `disk_gb` (docker on a storage driver that takes
//!   `storage-opt size`) it is enforced; elsewhere it is recorded, not enforced: labels
//!   `gh.gg/disk-gb` and `gh.gg/disk-enforced=false`, a `disk_not_enforced` event, and
//!   `diskEnforced: false` in the answer (the seed ignored it everywhere). It is still held
//!   to the tenant's disk limit per request; it is not charged to a summed usage.
//! - **Exec** runs `/bin/sh -c <code>` through `POST /v1/environments/{id}/exec`'s path. A
//!   pending or provisioning VM answers exit code 1 and the seed's "VM is still
//!   provisioning, please wait..."; a stopped one is started ([`App::start`], admitted
//!   again) and answers "VM is starting, please try again in a few seconds..."; any other
//!   state `"VM is <status>, cannot execute commands"`.
//!
//! Where Lapse differs: a missing VM is `404 not_found` "VM not found" (the seed threw a
//! 500); bad input is a `400` JSON error (the seed's zod gave tRPC's `BAD_REQUEST`); the VM
//! is a `service` environment (kept running, no expiry but the tenant's `max_ttl`) rather
//! than a 168 h lease nothing enforced; `status` is Lapse's state in the seed's words
//! (`error` for failed, `destroying` for deleting) plus `stopping`; exec needs no SSH key (it
//! goes through the provider); `totalRuntimeMinutes`, `sshPublicKey` and the `last*At`
//! fields are not kept (`GET /v1/usage` has the running time); `vm.listRegions`,
//! `vm.listFlavors` and `vm.getProvisionLogs` (OVH and its Redis log) have no counterpart
//! (`GET /v1/events` is the trail), nor the admin procedures (`GET /v1/environments`).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use lapse_core::model::{Environment, Spec};
use lapse_core::wire::ErrorBody;

use crate::app::App;
use crate::auth::Caller;
use crate::http::{ApiError, ApiJson, ApiPath};

pub mod service;
pub mod wire;

use wire::{CodeResult, ExecuteCode, ProvisionInput, Success, VmView};

const BASE: &str = "/v1/github-gg/users/{user}";

pub fn router() -> Router<App> {
    Router::new()
        .route(&format!("{BASE}/vm.getMyVm"), get(get_my_vm))
        .route(&format!("{BASE}/vm.provisionMyVm"), post(provision_my_vm))
        .route(&format!("{BASE}/vm.startMyVm"), post(start_my_vm))
        .route(&format!("{BASE}/vm.stopMyVm"), post(stop_my_vm))
        .route(&format!("{BASE}/vm.destroyMyVm"), post(destroy_my_vm))
        .route(&format!("{BASE}/vm.executeCode"), post(execute_code))
}

/// What a VM runs when its input names no spec: the seed's image with SSH published
/// (`docker-provider.ts`: `rastasheep/ubuntu-sshd:latest`, `-p <port>:22`).
pub fn default_spec() -> Spec {
    Spec {
        provider: "docker".into(),
        image: Some("docker.io/rastasheep/ubuntu-sshd:latest".into()),
        ports: vec![22],
        ..Default::default()
    }
}

fn vm_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "VM not found")
}

async fn my_vm(app: &App, caller: &Caller, user: &str) -> Result<Environment, ApiError> {
    service::find(app, caller, user).await?.ok_or_else(vm_not_found)
}

/// The user's VM, or `null`.
#[utoipa::path(get, path = "/v1/github-gg/users/{user}/vm.getMyVm", tag = "github.gg", params(("user" = String, Path)),
    responses((status = 200, body = Option<VmView>), (status = 400, body = ErrorBody)))]
pub async fn get_my_vm(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<Option<VmView>>, ApiError> {
    Ok(Json(service::find(&app, &caller, &user).await?.as_ref().map(VmView::of)))
}

/// Get or create the user's VM: the existing one whatever the size asked.
#[utoipa::path(post, path = "/v1/github-gg/users/{user}/vm.provisionMyVm", tag = "github.gg", params(("user" = String, Path)),
    request_body(content = Option<ProvisionInput>, description = "Optional, as in the seed"),
    responses((status = 201, description = "Made", body = VmView), (status = 200, description = "The user's existing VM", body = VmView),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn provision_my_vm(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(user): ApiPath<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
        match value {
            serde_json::Value::Null => None,
            v @ serde_json::Value::Object(_) => Some(
                serde_json::from_value::<ProvisionInput>(v).map_err(|e| ApiError::bad_request(format!("body: {e}")))?,
            ),
            _ => return Err(ApiError::bad_request("body: give an object {vcpus?, memoryMb?, diskGb?}, or nothing")),
        }
    };
    let (env, created) = service::get_or_create(&app, &caller, &user, input).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(VmView::of(&env))))
}

/// Start the user's VM.
#[utoipa::path(post, path = "/v1/github-gg/users/{user}/vm.startMyVm", tag = "github.gg", params(("user" = String, Path)),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn start_my_vm(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<VmView>, ApiError> {
    let env = my_vm(&app, &caller, &user).await?;
    Ok(Json(VmView::of(&app.start(&env.id, &caller).await?)))
}

/// Stop the user's VM.
#[utoipa::path(post, path = "/v1/github-gg/users/{user}/vm.stopMyVm", tag = "github.gg", params(("user" = String, Path)),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn stop_my_vm(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<VmView>, ApiError> {
    let env = my_vm(&app, &caller, &user).await?;
    Ok(Json(VmView::of(&app.stop(&env.id, &caller).await?)))
}

/// Destroy the user's VM; a next provision makes a new one.
#[utoipa::path(post, path = "/v1/github-gg/users/{user}/vm.destroyMyVm", tag = "github.gg", params(("user" = String, Path)),
    responses((status = 200, body = Success), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn destroy_my_vm(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<Success>, ApiError> {
    let env = my_vm(&app, &caller, &user).await?;
    app.delete(&env.id, &caller).await?;
    Ok(Json(Success { success: true }))
}

/// Run one shell string in the user's VM (a stopped VM is started instead).
#[utoipa::path(post, path = "/v1/github-gg/users/{user}/vm.executeCode", tag = "github.gg", params(("user" = String, Path)),
    request_body = ExecuteCode,
    responses((status = 200, body = CodeResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn execute_code(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    ApiPath(user): ApiPath<String>,
    ApiJson(req): ApiJson<ExecuteCode>,
) -> Result<Json<CodeResult>, ApiError> {
    if req.code.is_empty() {
        return Err(ApiError::bad_request("code: Code is required"));
    }
    let env = my_vm(&app, &caller, &user).await?;
    Ok(Json(service::execute(&app, &caller, &env, &req.code).await?))
}
